/* Reading a layout: YAML tree -> typed structures, with every structural
 * problem a diagnostic at its place. Types are decided here: an integer is a
 * plain scalar of digits, a boolean is plain true or false; "90" in quotes
 * is a string, and yes/no/on/off are not booleans. */
#include "kc_layout.h"
#include "kc_util.h"
#include "kc_yaml.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct rd {
    kc_diags *d;
    int bad;
} rd;

static kc_lpos at(const kc_ynode *n)
{
    kc_lpos p = {n ? n->line : 0, n ? n->col : 0};
    return p;
}

static void problem(rd *r, const char *rule, kc_lpos p, const char *hint, const char *fmt, ...)
    KC_PRINTF(5, 6);
static void problem(rd *r, const char *rule, kc_lpos p, const char *hint, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    kc_diag_add(r->d, rule, KC_SEV_ERROR, p.line, p.col, hint, "%s", msg);
    r->bad = 1;
}

static const char *kind_name(kc_ykind k)
{
    return k == KC_Y_MAP ? "a mapping" : k == KC_Y_SEQ ? "a list" : "a value";
}

static int expect(rd *r, const kc_ynode *n, kc_ykind kind, const char *what)
{
    if (n->kind == kind)
        return 1;
    problem(r, "KC004", at(n), NULL, "%s must be %s, not %s", what, kind_name(kind),
            kind_name(n->kind));
    return 0;
}

static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), i, j, prev, cur, tmp;
    size_t row[64];

    if (la >= 63 || lb >= 63)
        return 99;
    for (j = 0; j <= lb; j++)
        row[j] = j;
    for (i = 1; i <= la; i++) {
        prev = row[0];
        row[0] = i;
        for (j = 1; j <= lb; j++) {
            cur = row[j];
            tmp = prev + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            if (row[j] + 1 < tmp)
                tmp = row[j] + 1;
            if (row[j - 1] + 1 < tmp)
                tmp = row[j - 1] + 1;
            row[j] = tmp;
            prev = cur;
        }
    }
    return row[lb];
}

/* Unknown keys are errors, with a suggestion for near misses. */
static void check_keys(rd *r, const kc_ynode *map, const char *const *allowed, const char *what)
{
    char hint[128];
    size_t i, j, best, bd;

    for (i = 0; i < map->n; i++) {
        for (j = 0; allowed[j] != NULL && strcmp(allowed[j], map->keys[i]) != 0; j++)
            ;
        if (allowed[j] != NULL)
            continue;
        best = 0;
        bd = 99;
        for (j = 0; allowed[j] != NULL; j++) {
            size_t dd = distance(map->keys[i], allowed[j]);
            if (dd < bd) {
                bd = dd;
                best = j;
            }
        }
        hint[0] = '\0';
        if (bd <= 2)
            snprintf(hint, sizeof(hint), "did you mean '%s'?", allowed[best]);
        problem(r, "KC002", (kc_lpos){map->key_line[i], map->key_col[i]}, hint[0] ? hint : NULL,
                "unknown key '%s' in %s", map->keys[i], what);
    }
}

static const kc_ynode *field(rd *r, const kc_ynode *map, const char *key, int required,
                             const char *what)
{
    const kc_ynode *n = kc_yaml_get(map, key, NULL);

    if (n == NULL && required)
        problem(r, "KC007", at(map), NULL, "%s needs '%s'", what, key);
    return n;
}

static int str_field(rd *r, const kc_ynode *map, const char *key, char *out, size_t cap,
                     int required, kc_lpos *pos, const char *what)
{
    const kc_ynode *n = field(r, map, key, required, what);

    if (n == NULL)
        return 0;
    if (pos != NULL)
        *pos = at(n);
    if (!expect(r, n, KC_Y_SCALAR, key))
        return 0;
    if (strlen(n->value) >= cap) {
        problem(r, "KC004", at(n), NULL, "'%s' is longer than %zu characters", key, cap - 1);
        return 0;
    }
    memcpy(out, n->value, strlen(n->value) + 1);
    return 1;
}

static int int_field(rd *r, const kc_ynode *map, const char *key, long *out, int required,
                     kc_lpos *pos, const char *what)
{
    const kc_ynode *n = field(r, map, key, required, what);
    const char *s;

    if (n == NULL)
        return 0;
    if (pos != NULL)
        *pos = at(n);
    if (!expect(r, n, KC_Y_SCALAR, key))
        return 0;
    s = n->value;
    if (!n->plain || *s == '\0' || strlen(s) > 9 || strspn(s, "0123456789") != strlen(s)) {
        problem(r, "KC004", at(n), n->plain ? NULL : "write the number without quotes",
                "'%s' must be a whole number, not '%.40s'", key, s);
        return 0;
    }
    *out = strtol(s, NULL, 10);
    return 1;
}

static int bool_field(rd *r, const kc_ynode *map, const char *key, int *out, kc_lpos *pos)
{
    const kc_ynode *n = kc_yaml_get(map, key, NULL);

    if (n == NULL)
        return 0;
    if (pos != NULL)
        *pos = at(n);
    if (!expect(r, n, KC_Y_SCALAR, key))
        return 0;
    if (n->plain && strcmp(n->value, "true") == 0)
        *out = 1;
    else if (n->plain && strcmp(n->value, "false") == 0)
        *out = 0;
    else {
        problem(r, "KC004", at(n), "write true or false, without quotes",
                "'%s' must be true or false, not '%.40s'", key, n->value);
        return 0;
    }
    return 1;
}

/* A list of plain names, each passed to each(). */
static void list_field(rd *r, const kc_ynode *n, const char *what,
                       void (*each)(rd *, const kc_ynode *, void *), void *arg)
{
    size_t i;

    if (!expect(r, n, KC_Y_SEQ, what))
        return;
    for (i = 0; i < n->n; i++)
        if (expect(r, n->items[i], KC_Y_SCALAR, what))
            each(r, n->items[i], arg);
}

/* A PIN source, never a PIN. */
static void pin_field(rd *r, const kc_ynode *map, const char *key, char *out, size_t cap,
                      int required, kc_lpos *pos, const char *what)
{
    if (!str_field(r, map, key, out, cap, required, pos, what))
        return;
    if (!kc_secret_source_is_valid(out)) {
        /* The value is not repeated: it may be a PIN. */
        problem(r, "KC008", *pos, "write env:NAME or file:PATH; a PIN never goes in a layout",
                "'%s' must be a PIN source, not a PIN", key);
        out[0] = '\0';
    }
}

static void add_perm(rd *r, const kc_ynode *n, void *arg)
{
    unsigned p;

    if (kc_perms_parse(n->value, &p) != 0)
        problem(r, "KC004", at(n),
                "permissions: get, list, create, import, update, delete, recover, backup, "
                "restore, purge, rotate, wrapKey, unwrapKey, encrypt, decrypt, sign, verify",
                "unknown key permission '%.40s'", n->value);
    else
        *(unsigned *)arg |= p;
}

static void add_op(rd *r, const kc_ynode *n, void *arg)
{
    unsigned op;
    kc_error e;

    if (kc_key_ops_parse(n->value, &op, &e) != KC_OK)
        problem(r, "KC004", at(n), e.hint, "%s", e.msg);
    else
        *(unsigned *)arg |= op;
}

/* --- sections --- */

static void read_principal(rd *r, const kc_ynode *n, kc_lprincipal *p)
{
    static const char *const allowed[] = {"principal", "role", "permissions", NULL};
    const kc_ynode *perms;

    p->pos = at(n);
    if (!expect(r, n, KC_Y_MAP, "an access entry"))
        return;
    check_keys(r, n, allowed, "an access entry");
    str_field(r, n, "principal", p->name, sizeof(p->name), 1, NULL, "an access entry");
    perms = kc_yaml_get(n, "permissions", NULL);
    if (str_field(r, n, "role", p->role, sizeof(p->role), 0, &p->perms_pos, "an access entry")) {
        if (strcmp(p->role, "administrator") == 0)
            p->perms = KC_ROLE_ADMINISTRATOR;
        else if (strcmp(p->role, "service") == 0)
            p->perms = KC_ROLE_SERVICE;
        else
            problem(r, "KC004", p->perms_pos, "roles are administrator and service",
                    "unknown role '%.40s'", p->role);
        if (perms != NULL)
            problem(r, "KC004", at(perms), NULL, "give a role or permissions, not both");
    } else if (perms != NULL) {
        p->perms_pos = at(perms);
        list_field(r, perms, "permissions", add_perm, &p->perms);
    } else {
        problem(r, "KC007", p->pos, NULL, "access entry '%s' needs a role or permissions", p->name);
    }
}

static void add_tag(rd *r, const kc_ynode *tags, kc_lkey *k)
{
    size_t i;

    if (!expect(r, tags, KC_Y_MAP, "tags"))
        return;
    for (i = 0; i < tags->n; i++) {
        if (k->ntags == KC_KEY_TAGS_MAX) {
            problem(r, "KC004", at(tags), NULL, "a key has at most %d tags", KC_KEY_TAGS_MAX);
            return;
        }
        if (!expect(r, tags->items[i], KC_Y_SCALAR, "a tag value"))
            continue;
        if (strlen(tags->keys[i]) >= sizeof(k->tags[0].name) ||
            strlen(tags->items[i]->value) >= sizeof(k->tags[0].value)) {
            problem(r, "KC004", at(tags->items[i]), NULL, "tag '%.40s' is too long", tags->keys[i]);
            continue;
        }
        snprintf(k->tags[k->ntags].name, sizeof(k->tags[0].name), "%s", tags->keys[i]);
        snprintf(k->tags[k->ntags].value, sizeof(k->tags[0].value), "%s", tags->items[i]->value);
        k->ntags++;
    }
}

static void read_key(rd *r, const kc_ynode *n, kc_lkey *k)
{
    static const char *const allowed[] = {"name", "kty",     "size", "protection",
                                          "ops",  "expires", "tags", NULL};
    const kc_ynode *ops, *tags;
    char prot[16] = "hsm", exp[16] = "never", d8[9];
    long size = 0;

    k->pos = at(n);
    snprintf(k->kty, sizeof(k->kty), "RSA");
    k->ops = KC_OP_WRAP | KC_OP_UNWRAP;
    if (!expect(r, n, KC_Y_MAP, "a key"))
        return;
    check_keys(r, n, allowed, "a key");
    str_field(r, n, "name", k->name, sizeof(k->name), 1, NULL, "a key");
    str_field(r, n, "kty", k->kty, sizeof(k->kty), 0, &k->kty_pos, "a key");
    if (int_field(r, n, "size", &size, 1, &k->size_pos, "a key"))
        k->bits = (unsigned)size;
    if (str_field(r, n, "protection", prot, sizeof(prot), 0, &k->protection_pos, "a key")) {
        if (strcmp(prot, "hsm") == 0)
            k->protection = KC_PROT_HSM;
        else if (strcmp(prot, "software") == 0)
            k->protection = KC_PROT_SOFTWARE;
        else
            problem(r, "KC004", k->protection_pos, NULL, "protection must be hsm or software");
    }
    ops = kc_yaml_get(n, "ops", NULL);
    if (ops != NULL) {
        k->ops = 0;
        k->ops_pos = at(ops);
        list_field(r, ops, "ops", add_op, &k->ops);
    } else {
        k->ops_pos = k->pos;
    }
    k->expires_pos = k->pos;
    if (str_field(r, n, "expires", exp, sizeof(exp), 0, &k->expires_pos, "a key") &&
        strcmp(exp, "never") != 0) {
        if (kc_date_parse(exp, d8) != 0)
            problem(r, "KC004", k->expires_pos, NULL,
                    "expires must be a date (YYYY-MM-DD) or never");
        else
            snprintf(k->expires, sizeof(k->expires), "%.10s", exp); /* a date, checked */
    }
    tags = kc_yaml_get(n, "tags", NULL);
    if (tags != NULL)
        add_tag(r, tags, k);
}

static void read_vault(rd *r, const kc_ynode *n, kc_lvault *v)
{
    static const char *const allowed[] = {
        "name",   "subscription", "region",           "sku",    "token",       "module",
        "pin",    "so_pin",       "soft_delete",      "access", "purge_protection",
        "keys",   "fingerprint",  NULL};
    static const char *const sd_allowed[] = {"enabled", "retention_days", NULL};
    const kc_ynode *sd, *access, *keys;
    char sku[16] = "premium";
    long days;
    size_t i;

    v->pos = at(n);
    v->retention_days = 90;
    v->soft_delete = 1;
    if (!expect(r, n, KC_Y_MAP, "a vault"))
        return;
    check_keys(r, n, allowed, "a vault");
    str_field(r, n, "name", v->name, sizeof(v->name), 1, &v->name_pos, "a vault");
    str_field(r, n, "subscription", v->subscription, sizeof(v->subscription), 1,
              &v->subscription_pos, "a vault");
    str_field(r, n, "region", v->region, sizeof(v->region), 1, &v->region_pos, "a vault");
    if (str_field(r, n, "sku", sku, sizeof(sku), 0, &v->sku_pos, "a vault") &&
        kc_sku_parse(sku, &v->sku) != 0)
        problem(r, "KC004", v->sku_pos, NULL, "sku must be premium or standard");
    str_field(r, n, "token", v->token, sizeof(v->token), 0, NULL, "a vault");
    str_field(r, n, "module", v->module, sizeof(v->module), 0, NULL, "a vault");
    if (str_field(r, n, "fingerprint", v->fingerprint, sizeof(v->fingerprint), 0,
                  &v->fingerprint_pos, "a vault")) {
        /* as 'vault init' and 'vault show' print it: sha256:<64 hex> */
        const char *hex = strncmp(v->fingerprint, "sha256:", 7) == 0 ? v->fingerprint + 7 : "";
        size_t k;
        for (k = 0; hex[k] != '\0' && strchr("0123456789abcdef", hex[k]) != NULL; k++)
            ;
        if (k != 64 || hex[k] != '\0')
            problem(r, "KC004", v->fingerprint_pos, NULL,
                    "fingerprint must be sha256: and 64 lowercase hex digits, as 'vault show' "
                    "prints it");
        else
            memmove(v->fingerprint, hex, 65);
    }
    pin_field(r, n, "pin", v->pin, sizeof(v->pin), 1, &v->pin_pos, "a vault");
    pin_field(r, n, "so_pin", v->so_pin, sizeof(v->so_pin), 0, &v->so_pin_pos, "a vault");
    v->soft_delete_pos = v->retention_pos = v->pos;
    sd = kc_yaml_get(n, "soft_delete", NULL);
    if (sd != NULL && expect(r, sd, KC_Y_MAP, "soft_delete")) {
        check_keys(r, sd, sd_allowed, "soft_delete");
        bool_field(r, sd, "enabled", &v->soft_delete, &v->soft_delete_pos);
        if (int_field(r, sd, "retention_days", &days, 0, &v->retention_pos, "soft_delete"))
            v->retention_days = (unsigned)days;
    }
    v->purge_pos = v->pos;
    bool_field(r, n, "purge_protection", &v->purge_protection, &v->purge_pos);
    access = kc_yaml_get(n, "access", NULL);
    v->access_pos = access ? at(access) : v->pos;
    if (access != NULL && expect(r, access, KC_Y_SEQ, "access")) {
        v->access = calloc(access->n + 1, sizeof(*v->access));
        for (i = 0; v->access != NULL && i < access->n; i++)
            read_principal(r, access->items[i], &v->access[v->naccess++]);
    }
    keys = kc_yaml_get(n, "keys", NULL);
    if (keys != NULL && expect(r, keys, KC_Y_SEQ, "keys")) {
        v->keys = calloc(keys->n + 1, sizeof(*v->keys));
        for (i = 0; v->keys != NULL && i < keys->n; i++)
            read_key(r, keys->items[i], &v->keys[v->nkeys++]);
    }
}

static void read_dep(rd *r, const kc_ynode *n, kc_ldep *dp)
{
    static const char *const allowed[] = {
        "name", "workload", "geo", "keys", "description", "enabled", "paired_regions_waiver", NULL};
    const kc_ynode *keys;
    size_t i;

    dp->pos = at(n);
    dp->enabled = 1;
    if (!expect(r, n, KC_Y_MAP, "a DEP"))
        return;
    check_keys(r, n, allowed, "a DEP");
    str_field(r, n, "name", dp->name, sizeof(dp->name), 1, NULL, "a DEP");
    if (str_field(r, n, "workload", dp->workload, sizeof(dp->workload), 1, &dp->workload_pos,
                  "a DEP") &&
        strcmp(dp->workload, "tenant") != 0 && strcmp(dp->workload, "exchange") != 0 &&
        strcmp(dp->workload, "sharepoint") != 0)
        problem(r, "KC004", dp->workload_pos, NULL,
                "workload must be tenant, exchange or sharepoint");
    dp->geo_pos = dp->pos;
    str_field(r, n, "geo", dp->geo, sizeof(dp->geo), 0, &dp->geo_pos, "a DEP");
    str_field(r, n, "description", dp->description, sizeof(dp->description), 0, NULL, "a DEP");
    bool_field(r, n, "enabled", &dp->enabled, NULL);
    dp->waiver_pos = dp->pos;
    str_field(r, n, "paired_regions_waiver", dp->waiver, sizeof(dp->waiver), 0, &dp->waiver_pos,
              "a DEP");
    keys = field(r, n, "keys", 1, "a DEP");
    if (keys == NULL)
        return;
    dp->keys_pos = at(keys);
    if (!expect(r, keys, KC_Y_SEQ, "keys"))
        return;
    for (i = 0; i < keys->n; i++) {
        if (!expect(r, keys->items[i], KC_Y_SCALAR, "a key reference"))
            continue;
        if (dp->nkeys < 2 && strlen(keys->items[i]->value) < sizeof(dp->keys[0])) {
            snprintf(dp->keys[dp->nkeys], sizeof(dp->keys[0]), "%s", keys->items[i]->value);
            dp->key_pos[dp->nkeys] = at(keys->items[i]);
        }
        dp->nkeys++;
    }
}

static void read_assignment(rd *r, const kc_ynode *n, const char *target_key, kc_lassign *a)
{
    const char *const allowed[] = {target_key, "dep", NULL};

    a->pos = at(n);
    if (!expect(r, n, KC_Y_MAP, "an assignment"))
        return;
    check_keys(r, n, allowed, "an assignment");
    str_field(r, n, target_key, a->target, sizeof(a->target), 1, NULL, "an assignment");
    str_field(r, n, "dep", a->dep, sizeof(a->dep), 1, &a->dep_pos, "an assignment");
}

static kc_lassign *read_assignments(rd *r, const kc_ynode *n, const char *target_key, size_t *count)
{
    kc_lassign *v;
    size_t i;

    *count = 0;
    if (!expect(r, n, KC_Y_SEQ, target_key))
        return NULL;
    v = calloc(n->n + 1, sizeof(*v));
    for (i = 0; v != NULL && i < n->n; i++)
        read_assignment(r, n->items[i], target_key, &v[(*count)++]);
    return v;
}

static void read_sub(rd *r, const kc_ynode *n, kc_lsub *s)
{
    static const char *const allowed[] = {"id", "name", "mandatory_retention", NULL};

    s->pos = at(n);
    if (!expect(r, n, KC_Y_MAP, "a subscription"))
        return;
    check_keys(r, n, allowed, "a subscription");
    str_field(r, n, "id", s->id, sizeof(s->id), 1, NULL, "a subscription");
    str_field(r, n, "name", s->name, sizeof(s->name), 0, NULL, "a subscription");
    bool_field(r, n, "mandatory_retention", &s->mandatory_retention, NULL);
}

void kc_layout_free(kc_layout *l)
{
    size_t i;

    if (l == NULL)
        return;
    for (i = 0; i < l->nvaults; i++) {
        free(l->vaults[i].access);
        free(l->vaults[i].keys);
    }
    free(l->vaults);
    free(l->subs);
    free(l->deps);
    free(l->mailboxes);
    free(l->geos);
    free(l);
}

kc_layout *kc_layout_read(const char *file, const unsigned char *buf, size_t len, kc_diags *d)
{
    static const char *const allowed[] = {"version",       "subscriptions",     "vaults",
                                          "service_vault", "service_principal", "store",
                                          "audit",         "deps",              "assignments",
                                          NULL};
    static const char *const assign_allowed[] = {"tenant", "mailboxes", "geos", NULL};
    kc_ynode *root = kc_yaml_parse(buf, len, d);
    const kc_ynode *n, *a;
    kc_layout *l = NULL;
    rd r = {d, 0};
    long version = 0;
    size_t i;

    if (root == NULL)
        return NULL;
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        goto done;
    snprintf(l->file, sizeof(l->file), "%s", file);
    if (!expect(&r, root, KC_Y_MAP, "a layout"))
        goto done;
    check_keys(&r, root, allowed, "the layout");
    if (int_field(&r, root, "version", &version, 1, NULL, "the layout") && version != 1)
        problem(&r, "KC004", at(kc_yaml_get(root, "version", NULL)), NULL,
                "layout version %ld is not known; this keycustody reads version 1", version);
    n = kc_yaml_get(root, "subscriptions", NULL);
    if (n != NULL && expect(&r, n, KC_Y_SEQ, "subscriptions")) {
        l->subs = calloc(n->n + 1, sizeof(*l->subs));
        for (i = 0; l->subs != NULL && i < n->n; i++)
            read_sub(&r, n->items[i], &l->subs[l->nsubs++]);
    }
    n = field(&r, root, "vaults", 1, "the layout");
    if (n != NULL && expect(&r, n, KC_Y_SEQ, "vaults")) {
        l->vaults = calloc(n->n + 1, sizeof(*l->vaults));
        for (i = 0; l->vaults != NULL && i < n->n; i++)
            read_vault(&r, n->items[i], &l->vaults[l->nvaults++]);
    }
    str_field(&r, root, "service_vault", l->service_vault, sizeof(l->service_vault), 0,
              &l->service_vault_pos, "the layout");
    str_field(&r, root, "service_principal", l->service_principal, sizeof(l->service_principal), 0,
              &l->service_principal_pos, "the layout");
    str_field(&r, root, "store", l->store, sizeof(l->store), 0, &l->store_pos, "the layout");
    str_field(&r, root, "audit", l->audit, sizeof(l->audit), 0, &l->audit_pos, "the layout");
    n = kc_yaml_get(root, "deps", NULL);
    if (n != NULL && expect(&r, n, KC_Y_SEQ, "deps")) {
        l->deps = calloc(n->n + 1, sizeof(*l->deps));
        for (i = 0; l->deps != NULL && i < n->n; i++)
            read_dep(&r, n->items[i], &l->deps[l->ndeps++]);
    }
    n = kc_yaml_get(root, "assignments", NULL);
    if (n != NULL && expect(&r, n, KC_Y_MAP, "assignments")) {
        check_keys(&r, n, assign_allowed, "assignments");
        if (str_field(&r, n, "tenant", l->tenant.dep, sizeof(l->tenant.dep), 0, &l->tenant.dep_pos,
                      "assignments"))
            l->tenant.pos = l->tenant.dep_pos;
        a = kc_yaml_get(n, "mailboxes", NULL);
        if (a != NULL)
            l->mailboxes = read_assignments(&r, a, "mailbox", &l->nmailboxes);
        a = kc_yaml_get(n, "geos", NULL);
        if (a != NULL)
            l->geos = read_assignments(&r, a, "geo", &l->ngeos);
    }
done:
    kc_yaml_free(root);
    if (l == NULL || r.bad) {
        kc_layout_free(l);
        return NULL;
    }
    return l;
}
