#include "kc_plan.h"
#include "kc_dep.h"
#include "kc_keystate.h"
#include "kc_util.h"

#include <jansson.h>
#include <openssl/evp.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

char kc_action_sign(kc_act_kind kind)
{
    switch (kind) {
    case KC_ACT_VAULT_INIT:
    case KC_ACT_VAULT_ADOPT:
    case KC_ACT_KEY_CREATE:
    case KC_ACT_DEP_CREATE:
    case KC_ACT_ACCESS_ADD:
        return '+';
    case KC_ACT_KEY_DELETE:
    case KC_ACT_ACCESS_REMOVE:
        return '-';
    case KC_ACT_BLOCKED:
        return '!';
    default:
        return '~';
    }
}

const char *kc_action_verb(kc_act_kind kind)
{
    switch (kc_action_sign(kind)) {
    case '+':
        return "create";
    case '-':
        return "delete";
    default:
        return "update";
    }
}

const char *kc_action_operation(kc_act_kind kind)
{
    static const char *const names[] = {
        [KC_ACT_VAULT_INIT] = "vault-init",   [KC_ACT_VAULT_ADOPT] = "vault-adopt",
        [KC_ACT_VAULT_META] = "vault-update", [KC_ACT_KEY_CREATE] = "key-create",
        [KC_ACT_KEY_RECOVER] = "key-recover", [KC_ACT_KEY_ROTATE] = "key-rotate",
        [KC_ACT_KEY_REPAIR] = "key-repair",   [KC_ACT_KEY_RECORD] = "key-record",
        [KC_ACT_KEY_UPDATE] = "key-update",   [KC_ACT_KEY_DELETE] = "key-delete",
        [KC_ACT_VAULT_TIDY] = "vault-tidy",   [KC_ACT_DEP_CREATE] = "dep-create",
        [KC_ACT_DEP_UPDATE] = "dep-update",   [KC_ACT_DEP_ASSIGN] = "dep-assign",
        [KC_ACT_BLOCKED] = "blocked",         [KC_ACT_ACCESS_ADD] = "access-add",
        [KC_ACT_ACCESS_SET] = "access-set",   [KC_ACT_ACCESS_REMOVE] = "access-remove",
    };

    return (size_t)kind < sizeof(names) / sizeof(names[0]) && names[kind] ? names[kind] : "?";
}

static kc_action *act(kc_plan *p, kc_act_kind kind, size_t vault, size_t key, const char *why,
                      const char *fmt, ...) KC_PRINTF(6, 7);
static kc_action *act(kc_plan *p, kc_act_kind kind, size_t vault, size_t key, const char *why,
                      const char *fmt, ...)
{
    kc_action *nv;
    va_list ap;

    if (p->n == p->cap) {
        nv = realloc(p->v, (p->cap * 2 + 8) * sizeof(*nv));
        if (nv == NULL) {
            p->incomplete = 1;
            return NULL;
        }
        p->v = nv;
        p->cap = p->cap * 2 + 8;
    }
    nv = &p->v[p->n];
    memset(nv, 0, sizeof(*nv));
    if ((nv->changes = json_array()) == NULL) {
        p->incomplete = 1;
        return NULL;
    }
    p->n++;
    nv->kind = kind;
    nv->vault = vault;
    nv->key = key;
    nv->type = "vault";
    snprintf(nv->why, sizeof(nv->why), "%s", why ? why : "");
    va_start(ap, fmt);
    vsnprintf(nv->what, sizeof(nv->what), fmt, ap);
    va_end(ap);
    switch (kc_action_sign(kind)) {
    case '+':
        p->add++;
        break;
    case '-':
        p->destroy++;
        break;
    case '!':
        p->blocked++;
        break;
    default:
        p->change++;
    }
    return nv;
}

/* The action's address and type (a NULL action: one that could not be
 * recorded, out of memory, which kc_plan_make reports). */
static void at(kc_action *a, const char *type, const char *fmt, ...) KC_PRINTF(3, 4);
static void at(kc_action *a, const char *type, const char *fmt, ...)
{
    va_list ap;

    if (a == NULL)
        return;
    a->type = type;
    va_start(ap, fmt);
    vsnprintf(a->address, sizeof(a->address), fmt, ap);
    va_end(ap);
}

/* Records that attribute goes from before to after (takes both references;
 * NULL is JSON null). */
static void change(kc_action *a, const char *attribute, json_t *before, json_t *after)
{
    json_t *c;

    if (a != NULL && (c = json_pack("{s:s, s:o, s:o}", "attribute", attribute, "before",
                                    before ? before : json_null(), "after",
                                    after ? after : json_null())) != NULL)
        json_array_append_new(a->changes, c);
    else if (a == NULL) {
        json_decref(before);
        json_decref(after);
    }
}

/* A comma-separated list ("wrapKey,unwrapKey") as a JSON list. */
static json_t *list_json(const char *csv)
{
    json_t *arr = json_array();
    const char *s = csv, *e;

    while (arr != NULL && *s) {
        e = strchr(s, ',');
        if (e == NULL)
            e = s + strlen(s);
        json_array_append_new(arr, json_stringn(s, (size_t)(e - s)));
        s = *e ? e + 1 : e;
    }
    return arr;
}

static json_t *ops_json(unsigned ops)
{
    char buf[256];

    kc_key_ops_format(ops, buf, sizeof(buf));
    return list_json(buf);
}

static json_t *perms_json(unsigned perms)
{
    char buf[512];

    kc_perms_format(perms, buf, sizeof(buf));
    return list_json(buf);
}

/* A date, or null for never. */
static json_t *date_json(const char *d)
{
    return d[0] ? json_string(d) : json_null();
}

static json_t *tags_json(const kc_tag *t, size_t n)
{
    json_t *o = json_object();
    size_t i;

    for (i = 0; o != NULL && i < n; i++)
        json_object_set_new(o, t[i].name, json_string(t[i].value));
    return o;
}

/* "owner=bob,env=prod", or "none". */
static void tags_text(const kc_tag *t, size_t n, char *buf, size_t len)
{
    size_t off = 0, i;

    buf[0] = '\0';
    for (i = 0; i < n && off < len; i++)
        off +=
            (size_t)snprintf(buf + off, len - off, "%s%s=%s", i ? "," : "", t[i].name, t[i].value);
    if (n == 0)
        snprintf(buf, len, "none");
}

/* "+ purge, - delete": what a principal gains and loses. */
static void perms_delta(unsigned have, unsigned want, char *buf, size_t len)
{
    char name[64];
    size_t off = 0;
    unsigned bit;
    int pass;

    buf[0] = '\0';
    for (pass = 0; pass < 2; pass++)
        for (bit = 1; bit != 0 && bit <= KC_PERM_VERIFY; bit <<= 1) {
            if (!((pass == 0 ? want & ~have : have & ~want) & bit) || off >= len)
                continue;
            kc_perms_format(bit, name, sizeof(name));
            off += (size_t)snprintf(buf + off, len - off, "%s%c %s", off ? ", " : "",
                                    pass == 0 ? '+' : '-', name);
        }
}

json_t *kc_action_json(const kc_action *a)
{
    char sign[2] = {kc_action_sign(a->kind), 0};

    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:O, s:s?}", "address", a->address,
                     "type", a->type ? a->type : "vault", "action", kc_action_verb(a->kind),
                     "operation", kc_action_operation(a->kind), "change", sign, "what", a->what,
                     "why", a->why, "changes", a->changes ? a->changes : json_null(), "blocked",
                     a->kind == KC_ACT_BLOCKED ? a->why : NULL);
}

json_t *kc_plan_json(const kc_plan *p)
{
    json_t *arr = json_array(), *notes = json_array();
    size_t i;

    for (i = 0; arr != NULL && i < p->n; i++)
        json_array_append_new(arr, kc_action_json(&p->v[i]));
    for (i = 0; notes != NULL && i < p->nnotes; i++)
        json_array_append_new(notes, json_string(p->notes[i]));
    return json_pack("{s:o, s:I, s:I, s:I, s:I, s:o}", "actions", arr, "add", (json_int_t)p->add,
                     "change", (json_int_t)p->change, "delete", (json_int_t)p->destroy, "blocked",
                     (json_int_t)p->blocked, "notes", notes);
}

void kc_plan_release(kc_plan *p)
{
    size_t i;

    for (i = 0; i < p->n; i++)
        json_decref(p->v[i].changes);
    free(p->v);
    free(p->seen);
    memset(p, 0, sizeof(*p));
}

static const char *token_of(const kc_lvault *lv)
{
    return lv->token[0] ? lv->token : lv->name;
}

static int registered(const kc_layout *l, const char *sub)
{
    size_t i;

    for (i = 0; i < l->nsubs; i++)
        if (strcmp(l->subs[i].id, sub) == 0)
            return l->subs[i].mandatory_retention;
    return 0;
}

/* The vault metadata the layout asks for. */
static void want_meta(const kc_layout *l, const kc_lvault *lv, kc_vault_meta *m)
{
    size_t i;

    memset(m, 0, sizeof(*m));
    snprintf(m->name, sizeof(m->name), "%.24s", lv->name); /* names were checked (KC029) */
    snprintf(m->subscription, sizeof(m->subscription), "%s", lv->subscription);
    snprintf(m->region, sizeof(m->region), "%s", lv->region);
    m->sku = lv->sku;
    m->retention_days = lv->retention_days;
    m->purge_protection = lv->purge_protection;
    m->retention_registered = registered(l, lv->subscription);
    for (i = 0; i < lv->naccess && i < KC_ACCESS_MAX; i++) {
        snprintf(m->access[i].principal, sizeof(m->access[i].principal), "%s", lv->access[i].name);
        m->access[i].perms = lv->access[i].perms;
    }
    m->naccess = lv->naccess < KC_ACCESS_MAX ? lv->naccess : KC_ACCESS_MAX;
}

/* The vault metadata the layout changes, but the access policy (one action
 * per principal, plan_access): one action naming each attribute, or none. */
static void plan_meta(kc_plan *p, size_t vi, const kc_vault_meta *have, const kc_vault_meta *want)
{
    char buf[256];
    size_t off = 0;
    kc_action *a;

#define CHANGE(...)                                                                                \
    off += (size_t)snprintf(buf + off, sizeof(buf) > off ? sizeof(buf) - off : 0, "%s",            \
                            off ? "; " : ""),                                                      \
        off += (size_t)snprintf(buf + off, sizeof(buf) > off ? sizeof(buf) - off : 0, __VA_ARGS__)
    buf[0] = '\0';
    if (have->sku != want->sku)
        CHANGE("sku %s -> %s", kc_sku_name(have->sku), kc_sku_name(want->sku));
    if (have->retention_days != want->retention_days)
        CHANGE("retention %u -> %u days", have->retention_days, want->retention_days);
    if (have->purge_protection != want->purge_protection)
        CHANGE("purge protection off -> on");
    if (have->retention_registered != want->retention_registered)
        CHANGE("mandatory retention %s", want->retention_registered ? "registered" : "dropped");
#undef CHANGE
    if (off == 0)
        return;
    a = act(p, KC_ACT_VAULT_META, vi, 0, "the vault metadata differs from the layout",
            "update vault %s: %s", want->name, buf);
    at(a, "vault", "vault.%s", want->name);
    if (have->sku != want->sku)
        change(a, "sku", json_string(kc_sku_name(have->sku)), json_string(kc_sku_name(want->sku)));
    if (have->retention_days != want->retention_days)
        change(a, "retention_days", json_integer(have->retention_days),
               json_integer(want->retention_days));
    if (have->purge_protection != want->purge_protection)
        change(a, "purge_protection", json_boolean(have->purge_protection),
               json_boolean(want->purge_protection));
    if (have->retention_registered != want->retention_registered)
        change(a, "mandatory_retention", json_boolean(have->retention_registered),
               json_boolean(want->retention_registered));
}

static const kc_access_entry *find_principal(const kc_vault_meta *m, const char *name)
{
    size_t i;

    for (i = 0; i < m->naccess; i++)
        if (strcmp(m->access[i].principal, name) == 0)
            return &m->access[i];
    return NULL;
}

static void access_act(kc_plan *p, kc_act_kind kind, size_t vi, const char *vault,
                       const char *principal, const char *why, const kc_access_entry *have,
                       const kc_access_entry *want)
{
    char delta[512];
    kc_action *a;

    perms_delta(have ? have->perms : 0, want ? want->perms : 0, delta, sizeof(delta));
    a = act(p, kind, vi, 0, why, "access %s/%s: %s", vault, principal,
            delta[0] ? delta : "no permissions");
    at(a, "access", "vault.%s.access.%s", vault, principal);
    if (a != NULL)
        snprintf(a->principal, sizeof(a->principal), "%s", principal);
    change(a, "permissions", have ? perms_json(have->perms) : NULL,
           want ? perms_json(want->perms) : NULL);
}

/* One action per principal whose permissions differ, in the layout's
 * order, then those the layout no longer names. */
static void plan_access(kc_plan *p, size_t vi, const kc_vault_meta *have, const kc_vault_meta *want)
{
    const kc_access_entry *h;
    size_t i;

    for (i = 0; i < want->naccess; i++) {
        h = find_principal(have, want->access[i].principal);
        if (h == NULL)
            access_act(p, KC_ACT_ACCESS_ADD, vi, want->name, want->access[i].principal,
                       "the vault's access policy does not name it", NULL, &want->access[i]);
        else if (h->perms != want->access[i].perms)
            access_act(p, KC_ACT_ACCESS_SET, vi, want->name, want->access[i].principal,
                       "its permissions differ from the layout", h, &want->access[i]);
    }
    for (i = 0; i < have->naccess; i++)
        if (find_principal(want, have->access[i].principal) == NULL)
            access_act(p, KC_ACT_ACCESS_REMOVE, vi, want->name, have->access[i].principal,
                       "the layout no longer names it", &have->access[i], NULL);
}

static const char *prot_name(kc_protection p)
{
    return p == KC_PROT_SOFTWARE ? "software" : "hsm";
}

static int same_tags(const kc_key *k, const kc_lkey *lk)
{
    size_t i, j;

    if (k->ntags != lk->ntags)
        return 0;
    for (i = 0; i < lk->ntags; i++) {
        for (j = 0; j < k->ntags; j++)
            if (strcmp(lk->tags[i].name, k->tags[j].name) == 0 &&
                strcmp(lk->tags[i].value, k->tags[j].value) == 0)
                break;
        if (j == k->ntags)
            return 0;
    }
    return 1;
}

static const kc_key *find_key(const kc_key *keys, size_t n, const char *name)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    return NULL;
}

static void plan_key(kc_plan *p, const kc_lvault *lv, size_t vi, size_t ki, const kc_key *live,
                     const kc_key *deleted)
{
    const kc_lkey *lk = &lv->keys[ki];
    const kc_key_version *cur;
    char ops[128], have[128], changes[256], expiry[24], tags_have[256], tags_want[256];
    size_t off = 0, i;
    kc_action *a;

    kc_key_ops_format(lk->ops, ops, sizeof(ops));
    if (live == NULL && deleted != NULL) {
        a = act(p, KC_ACT_KEY_RECOVER, vi, ki, "it is soft-deleted; the layout wants it",
                "recover key %s/%s", lv->name, lk->name);
        at(a, "key", "vault.%s.key.%s", lv->name, lk->name);
        change(a, "deleted", json_true(), json_false());
        return;
    }
    if (live == NULL) {
        expiry[0] = '\0';
        if (lk->expires[0])
            snprintf(expiry, sizeof(expiry), ", expires %s", lk->expires);
        a = act(p, KC_ACT_KEY_CREATE, vi, ki, "not on the token",
                "create key %s/%s (RSA-%u, %s, %s%s)", lv->name, lk->name, lk->bits,
                prot_name(lk->protection), ops, expiry);
        at(a, "key", "vault.%s.key.%s", lv->name, lk->name);
        change(a, "size", NULL, json_integer(lk->bits));
        change(a, "protection", NULL, json_string(prot_name(lk->protection)));
        change(a, "ops", NULL, ops_json(lk->ops));
        change(a, "expires", NULL, date_json(lk->expires));
        if (lk->ntags > 0)
            change(a, "tags", NULL, tags_json(lk->tags, lk->ntags));
        return;
    }
    if (live->nhalf > 0) {
        a = act(p, KC_ACT_KEY_REPAIR, vi, ki,
                "an interrupted create left half a key pair, never usable",
                "repair key %s/%s: remove the half-made version %s", lv->name, lk->name,
                live->versions[live->nversions].version);
        at(a, "key", "vault.%s.key.%s", lv->name, lk->name);
        change(a, "half_made_version", json_string(live->versions[live->nversions].version), NULL);
        return; /* the next plan compares it */
    }
    for (i = 0; i < live->nversions && live->versions[i].recorded; i++)
        ;
    if (i < live->nversions) {
        a = act(p, KC_ACT_KEY_RECORD, vi, ki,
                "a create or rotate was interrupted before its record",
                "record key %s/%s in the key state", lv->name, lk->name);
        at(a, "key", "vault.%s.key.%s", lv->name, lk->name);
        change(a, "recorded", json_false(), json_true());
        return; /* the next plan compares it */
    }
    cur = &live->versions[live->current];
    if (cur->bits != lk->bits || cur->protection != lk->protection) {
        a = act(p, KC_ACT_KEY_ROTATE, vi, ki,
                "a token cannot change a key's size or protection in place",
                "rotate key %s/%s: RSA-%u %s -> RSA-%u %s", lv->name, lk->name, cur->bits,
                prot_name(cur->protection), lk->bits, prot_name(lk->protection));
        at(a, "key", "vault.%s.key.%s", lv->name, lk->name);
        if (cur->bits != lk->bits)
            change(a, "size", json_integer(cur->bits), json_integer(lk->bits));
        if (cur->protection != lk->protection)
            change(a, "protection", json_string(prot_name(cur->protection)),
                   json_string(prot_name(lk->protection)));
    }
    if (cur->expires[0] && lk->expires[0] == '\0') {
        a = act(p, KC_ACT_BLOCKED, vi, ki, "an expiry once set can be moved, never removed",
                "key %s/%s expires on %s; the layout says never", lv->name, lk->name, cur->expires);
        at(a, "key", "vault.%s.key.%s", lv->name, lk->name);
        change(a, "expires", json_string(cur->expires), NULL);
        return;
    }
    changes[0] = '\0';
    if (cur->ops != lk->ops) {
        kc_key_ops_format(cur->ops, have, sizeof(have));
        off += (size_t)snprintf(changes + off, sizeof(changes) - off, "ops %s -> %s", have, ops);
    }
    if (strcmp(cur->expires, lk->expires) != 0 && off < sizeof(changes))
        off += (size_t)snprintf(changes + off, sizeof(changes) - off, "%sexpiry %s -> %s",
                                off ? "; " : "", cur->expires[0] ? cur->expires : "never",
                                lk->expires);
    if (!same_tags(live, lk) && off < sizeof(changes)) {
        tags_text(live->tags, live->ntags, tags_have, sizeof(tags_have));
        tags_text(lk->tags, lk->ntags, tags_want, sizeof(tags_want));
        off += (size_t)snprintf(changes + off, sizeof(changes) - off, "%stags %s -> %s",
                                off ? "; " : "", tags_have, tags_want);
    }
    if (off == 0)
        return;
    a = act(p, KC_ACT_KEY_UPDATE, vi, ki, "the token differs from the layout",
            "update key %s/%s: %s", lv->name, lk->name, changes);
    at(a, "key", "vault.%s.key.%s", lv->name, lk->name);
    if (cur->ops != lk->ops)
        change(a, "ops", ops_json(cur->ops), ops_json(lk->ops));
    if (strcmp(cur->expires, lk->expires) != 0)
        change(a, "expires", date_json(cur->expires), date_json(lk->expires));
    if (!same_tags(live, lk))
        change(a, "tags", tags_json(live->tags, live->ntags), tags_json(lk->tags, lk->ntags));
}

/* The DEPs' keys on the service vault (availability keys, the
 * service-managed key) belong to the service store, not the layout: never
 * noted, never deleted by an apply. */
static int service_owned(const kc_layout *l, const kc_lvault *lv, const char *name)
{
    return strcmp(lv->name, l->service_vault) == 0 &&
           ((strncmp(name, "avail-", 6) == 0 && strlen(name) == 14) ||
            strcmp(name, KC_DEP_SERVICE) == 0);
}

static void plan_keys(kc_plan *p, const kc_layout *l, const kc_lvault *lv, size_t vi, kc_vault *v,
                      int allow_delete, const kc_key *keys, size_t nkeys, const kc_key *del,
                      size_t ndel)
{
    size_t i, j;

    for (i = 0; i < lv->nkeys; i++)
        plan_key(p, lv, vi, i, find_key(keys, nkeys, lv->keys[i].name),
                 find_key(del, ndel, lv->keys[i].name));
    for (i = 0; i < nkeys; i++) {
        for (j = 0; j < lv->nkeys && strcmp(lv->keys[j].name, keys[i].name) != 0; j++)
            ;
        if (j < lv->nkeys || service_owned(l, lv, keys[i].name))
            continue;
        if (allow_delete) {
            kc_action *a =
                act(p, KC_ACT_KEY_DELETE, vi, 0, "not in the layout (--allow-delete: soft delete)",
                    "delete key %s/%s", v->meta.name, keys[i].name);

            at(a, "key", "vault.%s.key.%s", lv->name, keys[i].name);
            change(a, "deleted", json_false(), json_true());
            if (a != NULL)
                snprintf(a->key_name, sizeof(a->key_name), "%s", keys[i].name);
        } else if (p->nnotes < sizeof(p->notes) / sizeof(p->notes[0])) {
            snprintf(p->notes[p->nnotes++], sizeof(p->notes[0]),
                     "key %s/%s is on the token but not in the layout: kept (--allow-delete "
                     "soft-deletes it)",
                     v->meta.name, keys[i].name);
        }
    }
}

static json_t *access_json(const kc_vault_meta *m)
{
    json_t *o = json_object();
    size_t i;

    for (i = 0; o != NULL && i < m->naccess; i++)
        json_object_set_new(o, m->access[i].principal, perms_json(m->access[i].perms));
    return o;
}

static void plan_new_vault(kc_plan *p, const kc_layout *l, size_t vi, int adopt)
{
    const kc_lvault *lv = &l->vaults[vi];
    kc_vault_meta want;
    kc_action *a;
    size_t i;

    want_meta(l, lv, &want);
    a = act(
        p, adopt ? KC_ACT_VAULT_ADOPT : KC_ACT_VAULT_INIT, vi, 0,
        adopt ? "the token is initialised but not a keycustody vault" : "no token has this label",
        "%s vault %s (subscription %s, %s, %s, soft delete %u days, purge protection %s)",
        adopt ? "adopt the token as" : "initialise a free token as", lv->name, lv->subscription,
        lv->region, kc_sku_name(lv->sku), lv->retention_days, lv->purge_protection ? "on" : "off");
    at(a, "vault", "vault.%s", lv->name);
    change(a, "subscription", NULL, json_string(want.subscription));
    change(a, "region", NULL, json_string(want.region));
    change(a, "sku", NULL, json_string(kc_sku_name(want.sku)));
    change(a, "retention_days", NULL, json_integer(want.retention_days));
    change(a, "purge_protection", NULL, json_boolean(want.purge_protection));
    change(a, "mandatory_retention", NULL, json_boolean(want.retention_registered));
    change(a, "access", NULL, access_json(&want));
    for (i = 0; i < lv->nkeys; i++)
        plan_key(p, lv, vi, i, NULL, NULL);
}

/* --- what the plan observed --- */

static void sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;

    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    kc_hex_encode(md, 32, out);
}

/* A canonical form of what was observed, digested; takes obs. "" when out
 * of memory, which never matches a digest. */
static void digest_json(json_t *obs, char out[65])
{
    char *text = obs ? json_dumps(obs, JSON_COMPACT | JSON_SORT_KEYS) : NULL;

    out[0] = '\0';
    if (text != NULL)
        sha256_hex(text, strlen(text), out);
    free(text);
    json_decref(obs);
}

static json_t *token_json(const kc_tok *tok)
{
    const kc_tok_info *ti = tok ? kc_tok_info_get(tok) : NULL;

    if (ti == NULL)
        return json_null();
    return json_pack("{s:s, s:s, s:s, s:s, s:b, s:b}", "label", ti->label, "serial", ti->serial,
                     "manufacturer", ti->manufacturer, "model", ti->model, "initialized",
                     ti->initialized, "user_pin_initialized", ti->user_pin_initialized);
}

/* Everything about a key the plan (and apply) can act on. */
static json_t *key_json(const kc_key *k)
{
    json_t *vers = json_array(), *o;
    size_t i;

    /* the half-made versions follow the recorded ones (kc_key.h) */
    for (i = 0; vers != NULL && i < k->nversions + k->nhalf; i++) {
        const kc_key_version *v = &k->versions[i];

        json_array_append_new(
            vers, json_pack("{s:s, s:i, s:i, s:i, s:i, s:b, s:b, s:s, s:I, s:i, s:s, s:s, s:s, "
                            "s:b, s:b}",
                            "version", v->version, "type", (int)v->type, "bits", (int)v->bits,
                            "ops", (int)v->ops, "token_ops", (int)v->token_ops, "enabled",
                            v->enabled, "recorded", v->recorded, "origin", v->origin, "seq",
                            (json_int_t)v->seq, "protection", (int)v->protection, "created",
                            v->created, "created_at", v->created_at, "expires", v->expires,
                            "has_pub", v->has_pub, "has_priv", v->has_priv));
    }
    o = json_pack("{s:s, s:o, s:I, s:I, s:I, s:b, s:b, s:s, s:s, s:o}", "name", k->name, "versions",
                  vers, "nversions", (json_int_t)k->nversions, "half", (json_int_t)k->nhalf,
                  "current", (json_int_t)k->current, "has_state", k->has_state, "deleted",
                  k->deleted, "deleted_at", k->deleted_at, "purge_after", k->purge_after, "tags",
                  tags_json(k->tags, k->ntags));
    return o;
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(const kc_key *const *)a)->name, (*(const kc_key *const *)b)->name);
}

/* By name: a token lists its objects in no order it promises. */
static json_t *keys_json(const kc_key *keys, size_t n)
{
    const kc_key **sorted = calloc(n + 1, sizeof(*sorted));
    json_t *arr = sorted ? json_array() : NULL;
    size_t i;

    for (i = 0; sorted != NULL && i < n; i++)
        sorted[i] = &keys[i];
    if (sorted != NULL && n > 1)
        qsort(sorted, n, sizeof(*sorted), by_name);
    for (i = 0; arr != NULL && i < n; i++)
        json_array_append_new(arr, key_json(sorted[i]));
    free(sorted);
    return arr;
}

/* The vault as observed: its token, its signed metadata (by the digest of
 * the manifest and the metadata itself), its keys and deleted keys, and
 * how many stale generations it has. */
static json_t *vault_json(const kc_vault *v, const kc_key *keys, size_t nkeys, const kc_key *del,
                          size_t ndel, size_t stale)
{
    char *meta = NULL;
    kc_error err;
    json_t *o;

    if (kc_vault_meta_encode(&v->meta, &meta, &err) != KC_OK)
        return NULL;
    o = json_pack("{s:o, s:s, s:s, s:s, s:o, s:o, s:I}", "token", token_json(v->tok), "meta", meta,
                  "manifest", v->manifest_digest, "fingerprint", v->fingerprint, "keys",
                  keys_json(keys, nkeys), "deleted", keys_json(del, ndel), "stale",
                  (json_int_t)stale);
    free(meta);
    return o;
}

static int key_order(const void *a, const void *b)
{
    return strcmp(((const kc_key *)a)->name, ((const kc_key *)b)->name);
}

static void seen(kc_plan *p, const char *vault, json_t *obs)
{
    kc_plan_seen *s = &p->seen[p->nseen++];

    snprintf(s->vault, sizeof(s->vault), "%s", vault);
    digest_json(json_pack("{s:s, s:o}", "vault", vault, "observed", obs ? obs : json_null()),
                s->digest);
}

kc_rc kc_plan_make(kc_ctx *ctx, const kc_layout *l, int allow_delete, kc_plan *p, kc_error *err)
{
    kc_vault_meta want;
    kc_key *keys = NULL, *del = NULL;
    kc_tok_info *toks = NULL;
    size_t nkeys = 0, ndel = 0, ntoks = 0, i, stale = 0;
    kc_vault *v = NULL;
    kc_tok *tok = NULL;
    kc_action *a;
    kc_rc r = KC_OK;

    memset(p, 0, sizeof(*p));
    if ((p->seen = calloc(l->nvaults + 1, sizeof(*p->seen))) == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    /* one pass over the slots for all the vaults, not one per vault */
    r = kc_p11_list_tokens(ctx->p11, &toks, &ntoks, err);
    for (i = 0; r == KC_OK && i < l->nvaults; i++) {
        const kc_lvault *lv = &l->vaults[i];
        r = kc_p11_token_in_list(ctx->p11, toks, ntoks, token_of(lv), &tok, err);
        if (r == KC_NOT_FOUND) {
            seen(p, lv->name, json_pack("{s:n}", "token"));
            plan_new_vault(p, l, i, 0);
            r = KC_OK;
            continue;
        }
        if (r == KC_OK)
            r = kc_vault_open_listed(ctx, toks, ntoks, token_of(lv), &v, err);
        if (r == KC_NOT_FOUND) {
            seen(p, lv->name, json_pack("{s:o, s:n}", "token", token_json(tok), "meta"));
            plan_new_vault(p, l, i, 1);
            r = KC_OK;
            continue;
        }
        if (r != KC_OK)
            break;
        want_meta(l, lv, &want);
        if (strcmp(v->meta.subscription, want.subscription) != 0 ||
            strcmp(v->meta.region, want.region) != 0) {
            a = act(p, KC_ACT_BLOCKED, i, 0, "a vault cannot move between subscriptions or regions",
                    "vault %s is in subscription %s, %s; the layout says %s, %s", lv->name,
                    v->meta.subscription, v->meta.region, want.subscription, want.region);
            at(a, "vault", "vault.%s", lv->name);
            if (strcmp(v->meta.subscription, want.subscription) != 0)
                change(a, "subscription", json_string(v->meta.subscription),
                       json_string(want.subscription));
            if (strcmp(v->meta.region, want.region) != 0)
                change(a, "region", json_string(v->meta.region), json_string(want.region));
        }
        if (v->meta.purge_protection && !want.purge_protection) {
            a = act(p, KC_ACT_BLOCKED, i, 0, "purge protection cannot be turned off once on",
                    "vault %s has purge protection; the layout turns it off", lv->name);
            at(a, "vault", "vault.%s", lv->name);
            change(a, "purge_protection", json_true(), json_false());
        } else {
            plan_meta(p, i, &v->meta, &want);
        }
        plan_access(p, i, &v->meta, &want);
        r = kc_key_list_all(v, &keys, &nkeys, &del, &ndel, err);
        if (r == KC_OK) {
            /* in one order every time: a saved plan is compared action by action */
            if (nkeys > 1)
                qsort(keys, nkeys, sizeof(*keys), key_order);
            if (ndel > 1)
                qsort(del, ndel, sizeof(*del), key_order);
            plan_keys(p, l, lv, i, v, allow_delete, keys, nkeys, del, ndel);
        }
        if (r == KC_OK)
            r = kc_keystate_stale(v, 0, &stale, err);
        if (r == KC_OK && stale > 0) {
            a = act(p, KC_ACT_VAULT_TIDY, i, 0, "a write of the vault's documents was interrupted",
                    "tidy vault %s: remove %zu older generation%s of its metadata or key state",
                    lv->name, stale, stale == 1 ? "" : "s");
            at(a, "vault", "vault.%s", lv->name);
            change(a, "stale_generations", json_integer((json_int_t)stale), json_integer(0));
        }
        if (r == KC_OK)
            seen(p, lv->name, vault_json(v, keys, nkeys, del, ndel, stale));
        kc_key_list_free(keys, nkeys);
        kc_key_list_free(del, ndel);
        keys = del = NULL;
        nkeys = ndel = 0;
        kc_vault_free(v);
        v = NULL;
    }
    free(toks);
    /* an action that could not be recorded would make a plan that is not the diff */
    if (r == KC_OK && (p->incomplete || p->nseen != l->nvaults))
        r = kc_error_set(err, KC_ERR, "out of memory");
    if (r != KC_OK) {
        kc_plan_release(p);
        return kc_error_prefix(err, "cannot read the tokens to plan");
    }
    return KC_OK;
}

/* --- observe --- */

/* The vault's settings and access policy as the layout would declare them
 * (lv->access has room for KC_ACCESS_MAX entries). */
static void live_vault_meta(kc_lvault *lv, const kc_vault *v)
{
    size_t i;

    snprintf(lv->name, sizeof(lv->name), "%s", v->meta.name);
    snprintf(lv->subscription, sizeof(lv->subscription), "%s", v->meta.subscription);
    snprintf(lv->region, sizeof(lv->region), "%s", v->meta.region);
    lv->sku = v->meta.sku;
    lv->retention_days = v->meta.retention_days;
    lv->soft_delete = 1;
    lv->purge_protection = v->meta.purge_protection;
    for (i = 0; i < v->meta.naccess; i++) {
        kc_lprincipal *p = &lv->access[lv->naccess++];
        snprintf(p->name, sizeof(p->name), "%s", v->meta.access[i].principal);
        p->perms = v->meta.access[i].perms;
    }
}

/* The live layout's subscription of v: declared once, however many of its
 * vaults there are (each vault records whether it is registered). */
static void live_sub(kc_layout *l, const kc_vault *v)
{
    kc_lsub *sub;
    size_t i;

    for (i = 0; i < l->nsubs; i++)
        if (strcmp(l->subs[i].id, v->meta.subscription) == 0)
            return;
    sub = &l->subs[l->nsubs++];
    snprintf(sub->id, sizeof(sub->id), "%s", v->meta.subscription);
    sub->mandatory_retention = v->meta.retention_registered;
}

static void live_vault(kc_layout *l, const kc_vault *v, const kc_key *keys, size_t nkeys,
                       size_t stale)
{
    kc_lvault *lv = &l->vaults[l->nvaults++];
    size_t i;

    live_sub(l, v);
    live_vault_meta(lv, v);
    lv->stale = stale;
    for (i = 0; i < nkeys; i++) {
        const kc_key_version *cur = &keys[i].versions[keys[i].current];
        kc_lkey *k;

        lv->half_made += keys[i].nhalf;
        if (keys[i].nversions == 0)
            continue; /* only what an interrupted create left */
        k = &lv->keys[lv->nkeys++];
        snprintf(k->name, sizeof(k->name), "%s", keys[i].name);
        snprintf(k->kty, sizeof(k->kty), "%s",
                 cur->type == KC_KT_RSA  ? "RSA"
                 : cur->type == KC_KT_EC ? "EC"
                                         : "other");
        k->bits = cur->bits;
        k->protection = cur->protection;
        k->ops = cur->ops;
        snprintf(k->expires, sizeof(k->expires), "%s", cur->expires);
    }
}

kc_rc kc_plan_observe(kc_ctx *ctx, const char *const *names, size_t n, kc_layout **out,
                      kc_error *err)
{
    kc_vault_entry *ents = NULL;
    kc_tok_info *toks = NULL;
    const char **list = NULL;
    kc_layout *l = NULL;
    kc_vault *v = NULL;
    kc_key *keys = NULL;
    size_t nkeys = 0, nents = 0, ntoks = 0, i, stale = 0;
    kc_rc r = KC_OK;

    *out = NULL;
    /* one pass over the slots, each vault opened from it */
    if (n == 0) {
        r = kc_vault_list(ctx, &ents, &nents, err);
        list = calloc(nents + 1, sizeof(*list));
        toks = calloc(nents + 1, sizeof(*toks));
        if (r == KC_OK && (list == NULL || toks == NULL))
            r = kc_error_set(err, KC_ERR, "out of memory");
        for (i = 0; r == KC_OK && i < nents; i++) {
            toks[ntoks++] = ents[i].token;
            if (ents[i].is_vault)
                list[n++] = ents[i].token.label;
        }
        names = list;
    } else {
        r = kc_p11_list_tokens(ctx->p11, &toks, &ntoks, err);
    }
    l = calloc(1, sizeof(*l));
    if (r == KC_OK && (l == NULL || (l->vaults = calloc(n + 1, sizeof(*l->vaults))) == NULL ||
                       (l->subs = calloc(n + 1, sizeof(*l->subs))) == NULL))
        r = kc_error_set(err, KC_ERR, "out of memory");
    for (i = 0; r == KC_OK && i < n; i++) {
        r = kc_vault_open_listed(ctx, toks, ntoks, names[i], &v, err);
        if (r == KC_OK)
            r = kc_key_list(v, &keys, &nkeys, err);
        if (r == KC_OK)
            r = kc_keystate_stale(v, 0, &stale, err);
        if (r == KC_OK) {
            l->vaults[l->nvaults].access = calloc(KC_ACCESS_MAX, sizeof(kc_lprincipal));
            l->vaults[l->nvaults].keys = calloc(nkeys + 1, sizeof(kc_lkey));
            if (l->vaults[l->nvaults].access == NULL || l->vaults[l->nvaults].keys == NULL) {
                free(l->vaults[l->nvaults].access);
                free(l->vaults[l->nvaults].keys);
                r = kc_error_set(err, KC_ERR, "out of memory");
            } else {
                live_vault(l, v, keys, nkeys, stale);
            }
        }
        kc_key_list_free(keys, nkeys);
        keys = NULL;
        nkeys = 0;
        kc_vault_free(v);
        v = NULL;
    }
    free(list);
    free(ents);
    free(toks);
    if (r != KC_OK) {
        kc_layout_free(l);
        return r;
    }
    *out = l;
    return KC_OK;
}

/* --- a new DEP --- */

static kc_rc live_root(kc_ctx *ctx, const char *ref, kc_layout *l, char *out, size_t outlen,
                       kc_error *err)
{
    const kc_key_version *ver = NULL;
    kc_lvault *lv = &l->vaults[l->nvaults];
    kc_lkey *lk;
    kc_key_ref kr;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    size_t i;
    kc_rc r;

    r = kc_key_ref_parse(ref, &kr, err);
    if (r == KC_OK)
        r = kc_vault_open(ctx, kr.vault, &v, err);
    if (r == KC_OK)
        r = kc_key_get(v, kr.name, 0, &k, err);
    if (r == KC_OK)
        r = kc_key_select(k, NULL, 0, &ver, err);
    if (r != KC_OK)
        goto done;
    /* Both keys may name one vault or one subscription: that is a rule to
     * report (KC020/KC021), so the synthetic layout declares each only once. */
    for (i = 0; i < l->nvaults; i++)
        if (strcmp(l->vaults[i].name, v->meta.name) == 0) {
            lv = &l->vaults[i];
            goto add_key;
        }
    lv->keys = calloc(2, sizeof(*lv->keys));
    lv->access = calloc(KC_ACCESS_MAX, sizeof(*lv->access));
    if (lv->keys == NULL || lv->access == NULL) {
        r = kc_error_set(err, KC_ERR, "out of memory");
        goto done;
    }
    l->nvaults++;
    live_sub(l, v);
    live_vault_meta(lv, v);
add_key:
    lk = &lv->keys[lv->nkeys++];
    snprintf(lk->name, sizeof(lk->name), "%s", k->name);
    snprintf(lk->kty, sizeof(lk->kty), "%s", ver->type == KC_KT_RSA ? "RSA" : "EC");
    lk->bits = ver->bits;
    lk->protection = KC_PROT_HSM;
    /* unwrapKey belongs to the private half, which only the custodian's PIN
     * shows; a DEP is made without it, so only wrapKey is checked here
     * ('vault validate' checks both with the PIN). */
    lk->ops = ver->token_ops | KC_OP_UNWRAP;
    snprintf(out, outlen, "%.62s/%s", lv->name, lk->name);
    snprintf(lk->expires, sizeof(lk->expires), "%s", ver->expires);
done:
    kc_key_free(k);
    kc_vault_free(v);
    return r;
}

kc_rc kc_plan_check_dep(kc_ctx *ctx, struct kc_store *st, const struct kc_dep_spec *spec,
                        kc_diags *d, kc_error *err)
{
    kc_layout *l = calloc(1, sizeof(*l));
    kc_dep *deps = NULL;
    size_t ndeps = 0, i, exchange = 0;
    kc_ldep *dp;
    kc_rc r = KC_OK;

    if (l == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    if ((l->vaults = calloc(2, sizeof(*l->vaults))) == NULL ||
        (l->subs = calloc(2, sizeof(*l->subs))) == NULL ||
        (l->deps = calloc(1, sizeof(*l->deps))) == NULL)
        r = kc_error_set(err, KC_ERR, "out of memory");
    dp = l->deps;
    for (i = 0; r == KC_OK && i < 2; i++)
        r = live_root(ctx, spec->keys[i], l, dp->keys[i], sizeof(dp->keys[i]), err);
    if (r == KC_OK) {
        l->ndeps++;
        snprintf(dp->name, sizeof(dp->name), "%s", spec->name);
        snprintf(dp->workload, sizeof(dp->workload), "%s", spec->workload);
        snprintf(dp->geo, sizeof(dp->geo), "%s", spec->geo ? spec->geo : "");
        dp->enabled = 1;
        dp->nkeys = 2;
        kc_layout_validate(l, d);
        r = kc_dep_list(st, &deps, &ndeps, err);
    }
    for (i = 0; r == KC_OK && i < ndeps; i++) {
        /* a purged DEP can never be used again: it holds no place */
        if (strcmp(deps[i].workload, "exchange") == 0 && deps[i].purged[0] == '\0')
            exchange++;
        if (strcmp(spec->workload, "sharepoint") == 0 &&
            strcmp(deps[i].workload, "sharepoint") == 0 && spec->geo != NULL &&
            strcmp(deps[i].geo, spec->geo) == 0)
            kc_diag_add(d, "KC025", KC_SEV_ERROR, 0, 0, NULL,
                        "geo '%s' has a SharePoint DEP already ('%s'); one per geo", spec->geo,
                        deps[i].name);
    }
    if (r == KC_OK && strcmp(spec->workload, "exchange") == 0 && exchange >= 50)
        kc_diag_add(d, "KC024", KC_SEV_ERROR, 0, 0, NULL,
                    "the store has %zu Exchange DEPs; at most 50", exchange);
    free(deps);
    kc_layout_free(l);
    return r;
}

/* --- apply --- */

static kc_rc apply_key_update(kc_vault *v, const kc_lkey *lk, kc_error *err)
{
    kc_key_update_opts o;
    kc_tag tags[2 * KC_KEY_TAGS_MAX];
    kc_key *k = NULL, *after = NULL;
    size_t i, j, n = 0;
    kc_rc r;

    r = kc_key_get(v, lk->name, 1, &k, err);
    if (r != KC_OK)
        return r;
    memset(&o, 0, sizeof(o));
    o.set_ops = 1;
    o.ops = lk->ops;
    o.expires = lk->expires[0] ? lk->expires : NULL;
    for (i = 0; i < lk->ntags; i++)
        tags[n++] = lk->tags[i];
    for (i = 0; i < k->ntags; i++) { /* tags the layout no longer has go */
        for (j = 0; j < lk->ntags && strcmp(lk->tags[j].name, k->tags[i].name) != 0; j++)
            ;
        if (j == lk->ntags) {
            tags[n] = k->tags[i];
            tags[n++].value[0] = '\0';
        }
    }
    o.tags = tags;
    o.ntags = n;
    kc_key_free(k);
    r = kc_key_update(v, lk->name, NULL, 0, &o, &after, err);
    kc_key_free(after);
    return r;
}

/* One principal's entry in the vault's access policy, as the layout has it
 * (or gone): the rest of the policy stays as the token has it. */
static kc_rc apply_access(const kc_layout *l, const kc_lvault *lv, kc_vault *v, const kc_action *a,
                          kc_error *err)
{
    const kc_access_entry *w;
    kc_vault_meta want;
    size_t i;
    kc_rc r;

    want_meta(l, lv, &want);
    w = find_principal(&want, a->principal);
    r = kc_vault_login(v, err);
    if (r != KC_OK)
        return r;
    for (i = 0; i < v->meta.naccess && strcmp(v->meta.access[i].principal, a->principal) != 0; i++)
        ;
    if (w == NULL && i < v->meta.naccess) {
        memmove(&v->meta.access[i], &v->meta.access[i + 1],
                (v->meta.naccess - i - 1) * sizeof(v->meta.access[0]));
        v->meta.naccess--;
    } else if (w != NULL && i < v->meta.naccess) {
        v->meta.access[i].perms = w->perms;
    } else if (w != NULL) {
        if (v->meta.naccess == KC_ACCESS_MAX)
            return kc_error_set(err, KC_CONFLICT,
                                "vault '%s' has %d principals already; cannot add '%s'",
                                v->meta.name, KC_ACCESS_MAX, a->principal);
        v->meta.access[v->meta.naccess++] = *w;
    } else {
        return KC_OK; /* gone already: an interrupted apply removed it */
    }
    return kc_vault_save_meta(v, err);
}

static kc_rc create_key(kc_vault *v, const kc_lkey *lk, kc_key **k, kc_error *err)
{
    kc_key_create_opts co;
    kc_rc r;

    memset(&co, 0, sizeof(co));
    co.name = lk->name;
    co.bits = lk->bits;
    co.protection = lk->protection;
    co.ops = lk->ops;
    co.expires = lk->expires[0] ? lk->expires : NULL;
    r = kc_key_create(v, &co, k, err);
    if (r == KC_OK && lk->ntags > 0)
        r = apply_key_update(v, lk, err);
    return r;
}

kc_rc kc_plan_apply(kc_ctx *ctx, const kc_layout *l, const kc_action *a, kc_error *err)
{
    const kc_lvault *lv = &l->vaults[a->vault];
    const kc_lkey *lk = a->key < lv->nkeys ? &lv->keys[a->key] : NULL;
    kc_vault_meta want;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    int adopted, emptied = 0;
    kc_rc r;

    switch (a->kind) {
    case KC_ACT_BLOCKED:
        return kc_error_set(err, KC_CONFLICT, "%s (%s)", a->what, a->why);
    case KC_ACT_VAULT_INIT:
    case KC_ACT_VAULT_ADOPT:
        want_meta(l, lv, &want);
        r = kc_vault_init(ctx, &want, kc_p11_is_uri(lv->token) ? lv->token : NULL, &v, &adopted,
                          err);
        kc_vault_free(v);
        return r;
    default:
        break;
    }
    r = kc_vault_open(ctx, token_of(lv), &v, err);
    if (r != KC_OK)
        return r;
    switch (a->kind) {
    case KC_ACT_VAULT_META:
        want_meta(l, lv, &want);
        v->meta.sku = want.sku;
        v->meta.retention_days = want.retention_days;
        v->meta.purge_protection = want.purge_protection;
        v->meta.retention_registered = want.retention_registered;
        r = kc_vault_login(v, err);
        if (r == KC_OK)
            r = kc_vault_save_meta(v, err);
        break;
    case KC_ACT_ACCESS_ADD:
    case KC_ACT_ACCESS_SET:
    case KC_ACT_ACCESS_REMOVE:
        r = apply_access(l, lv, v, a, err);
        break;
    case KC_ACT_KEY_CREATE:
        r = create_key(v, lk, &k, err);
        break;
    case KC_ACT_KEY_RECOVER:
        r = kc_key_recover(v, lk->name, &k, err);
        break;
    case KC_ACT_KEY_RECORD:
        r = kc_key_record_missing(v, lk->name, err);
        break;
    case KC_ACT_KEY_REPAIR:
        r = kc_key_remove_half_made(v, lk->name, &emptied, err);
        if (r == KC_OK && emptied)
            r = create_key(v, lk, &k, err);
        else if (r == KC_OK)
            r = kc_key_record_missing(v, lk->name, err);
        break;
    case KC_ACT_KEY_ROTATE:
        r = kc_key_rotate_to(v, lk->name, lk->bits, (int)lk->protection, &k, err);
        break;
    case KC_ACT_KEY_UPDATE:
        r = apply_key_update(v, lk, err);
        break;
    case KC_ACT_VAULT_TIDY: {
        size_t removed = 0;

        r = kc_keystate_tidy(v, 0, &removed, err);
        break;
    }
    case KC_ACT_KEY_DELETE:
        r = kc_key_delete(v, a->key_name, &k, err);
        break;
    default:
        r = kc_error_set(err, KC_ERR, "unknown action");
    }
    kc_key_free(k);
    kc_vault_free(v);
    return r;
}

/* --- the lock --- */

kc_rc kc_plan_lock(const kc_layout *l, const char *module, unsigned wait_s, int *fd, char *path,
                   size_t path_len, kc_error *err)
{
    const char *dir = getenv("XDG_RUNTIME_DIR"), *conf = getenv("SOFTHSM2_CONF");
    unsigned char md[EVP_MAX_MD_SIZE];
    char hex[17], holder[256], now_s[21], host[64];
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    time_t start = time(NULL), now;
    ssize_t n;
    size_t i;

    /* One token set: the module, SoftHSM's configuration and the vaults. */
    if (c == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    EVP_DigestUpdate(c, module ? module : "", module ? strlen(module) + 1 : 1);
    EVP_DigestUpdate(c, conf ? conf : "", conf ? strlen(conf) + 1 : 1);
    for (i = 0; i < l->nvaults; i++)
        EVP_DigestUpdate(c, l->vaults[i].name, strlen(l->vaults[i].name) + 1);
    EVP_DigestFinal_ex(c, md, NULL);
    EVP_MD_CTX_free(c);
    kc_hex_encode(md, 8, hex);
    snprintf(path, path_len, "%s/keycustody-apply-%s.lock", dir && *dir ? dir : "/tmp", hex);
    *fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (*fd < 0)
        return kc_error_set(err, KC_ERR, "cannot open the apply lock '%s': %s", path,
                            strerror(errno));
    while (flock(*fd, LOCK_EX | LOCK_NB) != 0) {
        now = time(NULL);
        if (errno != EWOULDBLOCK || (unsigned)(now - start) >= wait_s) {
            n = pread(*fd, holder, sizeof(holder) - 1, 0);
            holder[n > 0 ? n : 0] = '\0';
            holder[strcspn(holder, "\n")] = '\0';
            close(*fd);
            *fd = -1;
            kc_error_set(err, KC_CONFLICT, "another apply holds the lock on these vaults (%s)",
                         holder[0] ? holder : "holder unknown");
            kc_error_hint(err, "wait for it to finish, or give --wait SECONDS");
            return KC_CONFLICT;
        }
        usleep(100 * 1000);
    }
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "?");
    host[sizeof(host) - 1] = '\0';
    kc_time_format_rfc3339(time(NULL), now_s);
    n = snprintf(holder, sizeof(holder), "pid %ld, uid %u on %s, since %s\n", (long)getpid(),
                 (unsigned)getuid(), host, now_s);
    if (ftruncate(*fd, 0) != 0 || pwrite(*fd, holder, (size_t)n, 0) != n)
        holder[0] = '\0'; /* the lock holds even when the note cannot be written */
    return KC_OK;
}

void kc_plan_unlock(int fd)
{
    if (fd >= 0)
        close(fd);
}

/* --- DEPs and assignments --- */

/* The layout's scope for an assignment and the DEP it names, against the
 * assignments read from the store. */
static void plan_assign(kc_plan *p, const kc_dep_assignment *v, size_t n, const char *scope,
                        const char *dep)
{
    const char *had = NULL;
    kc_action *a;
    size_t i;

    for (i = 0; i < n; i++)
        if (strcmp(v[i].scope, scope) == 0)
            had = v[i].dep_name;
    if (had != NULL && strcmp(had, dep) == 0)
        return;
    a = act(p, KC_ACT_DEP_ASSIGN, 0, 0, "the layout assigns it", "assign DEP %s to %s%s%s%s", dep,
            scope, had ? " (now " : "", had ? had : "", had ? ")" : "");
    at(a, "assignment", "assignment.%s", scope);
    change(a, "dep", had ? json_string(had) : NULL, json_string(dep));
    if (a != NULL) {
        snprintf(a->scope, sizeof(a->scope), "%s", scope);
        snprintf(a->dep_name, sizeof(a->dep_name), "%s", dep);
    }
}

/* A store row as read, for the digest of what the plan saw. */
static json_t *dep_json(const kc_dep *d)
{
    json_t *keys = json_array();
    size_t k;

    for (k = 0; keys != NULL && k < KC_DEP_SLOTS; k++)
        json_array_append_new(keys, json_pack("{s:s, s:s, s:s}", "vault", d->keys[k].vault, "key",
                                              d->keys[k].key, "version", d->keys[k].version));
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:b, s:s, s:I, s:o, s:s, s:s, s:s, s:s, s:s, "
                     "s:I}",
                     "id", d->id, "name", d->name, "workload", d->workload, "geo", d->geo,
                     "description", d->description, "enabled", d->enabled, "created", d->created,
                     "generation", (json_int_t)d->generation, "keys", keys, "principal",
                     d->principal, "purge_requested", d->purge_requested, "purge_reason",
                     d->purge_reason, "purge_contact", d->purge_contact, "purged", d->purged,
                     "break_glass", (json_int_t)d->break_glass);
}

static json_t *dep_keys_json(const char *a, const char *b)
{
    return json_pack("[s, s]", a, b);
}

kc_rc kc_plan_deps(const kc_layout *l, kc_store *st, kc_plan *p, kc_error *err)
{
    kc_dep_assignment *asg = NULL;
    json_t *rows = json_object(), *arr;
    char scope[80], ref[2][sizeof(((kc_dep *)0)->keys[0].vault) + KC_KEY_NAME_MAX + 2];
    size_t i, k, nasg = 0;
    kc_action *a;
    kc_dep d;
    int diff;
    kc_rc r = KC_OK;

    if (rows == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    for (i = 0; i < l->ndeps; i++) {
        const kc_ldep *ld = &l->deps[i];

        r = st != NULL ? kc_dep_get(st, ld->name, &d, err) : KC_NOT_FOUND;
        if (r == KC_NOT_FOUND) {
            kc_error_clear(err);
            r = KC_OK;
            json_object_set_new(rows, ld->name, json_null());
            a = act(p, KC_ACT_DEP_CREATE, 0, 0, "not in the service store",
                    "create DEP %s (%s%s%s, keys %s and %s)", ld->name, ld->workload,
                    ld->geo[0] ? " " : "", ld->geo, ld->keys[0], ld->keys[1]);
            at(a, "dep", "dep.%s", ld->name);
            change(a, "workload", NULL, json_string(ld->workload));
            if (ld->geo[0])
                change(a, "geo", NULL, json_string(ld->geo));
            change(a, "keys", NULL, dep_keys_json(ld->keys[0], ld->keys[1]));
            change(a, "description", NULL, json_string(ld->description));
            change(a, "enabled", NULL, json_boolean(ld->enabled));
            if (a != NULL)
                a->dep = i;
            continue;
        }
        if (r != KC_OK)
            goto done;
        json_object_set_new(rows, ld->name, dep_json(&d));
        diff = strcmp(d.workload, ld->workload) != 0 || strcmp(d.geo, ld->geo) != 0;
        for (k = 0; k < 2; k++) {
            snprintf(ref[k], sizeof(ref[k]), "%s/%s", d.keys[k].vault, d.keys[k].key);
            diff |= strcmp(ref[k], ld->keys[k]) != 0;
        }
        a = NULL;
        if (diff) {
            a = act(p, KC_ACT_BLOCKED, 0, 0,
                    "a DEP's workload and root keys never change: create a new DEP and assign it",
                    "DEP %s is %s over %s/%s and %s/%s in the store; the layout differs", d.name,
                    d.workload, d.keys[0].vault, d.keys[0].key, d.keys[1].vault, d.keys[1].key);
            at(a, "dep", "dep.%s", ld->name);
            if (strcmp(d.workload, ld->workload) != 0)
                change(a, "workload", json_string(d.workload), json_string(ld->workload));
            if (strcmp(d.geo, ld->geo) != 0)
                change(a, "geo", json_string(d.geo), json_string(ld->geo));
            if (strcmp(ref[0], ld->keys[0]) != 0 || strcmp(ref[1], ld->keys[1]) != 0)
                change(a, "keys", dep_keys_json(ref[0], ref[1]),
                       dep_keys_json(ld->keys[0], ld->keys[1]));
        } else if (strcmp(d.description, ld->description) != 0 || d.enabled != ld->enabled) {
            int desc = strcmp(d.description, ld->description) != 0;

            a = act(p, KC_ACT_DEP_UPDATE, 0, 0, "the layout changes it",
                    "update DEP %s: %s%.100s%s%.100s%s%s%s", d.name, desc ? "description '" : "",
                    desc ? d.description : "", desc ? "' -> '" : "", desc ? ld->description : "",
                    desc ? "'" : "", desc && d.enabled != ld->enabled ? ", " : "",
                    d.enabled != ld->enabled ? (ld->enabled ? "enable" : "disable") : "");
            at(a, "dep", "dep.%s", ld->name);
            if (desc)
                change(a, "description", json_string(d.description), json_string(ld->description));
            if (d.enabled != ld->enabled)
                change(a, "enabled", json_boolean(d.enabled), json_boolean(ld->enabled));
        }
        if (a != NULL)
            a->dep = i;
    }
    if (st != NULL && (r = kc_dep_assignments(st, &asg, &nasg, err)) != KC_OK)
        goto done;
    if (l->tenant.dep[0])
        plan_assign(p, asg, nasg, "tenant", l->tenant.dep);
    for (i = 0; i < l->nmailboxes; i++) {
        snprintf(scope, sizeof(scope), "mailbox:%.64s", l->mailboxes[i].target);
        plan_assign(p, asg, nasg, scope, l->mailboxes[i].dep);
    }
    for (i = 0; i < l->ngeos; i++) {
        snprintf(scope, sizeof(scope), "geo:%.64s", l->geos[i].target);
        plan_assign(p, asg, nasg, scope, l->geos[i].dep);
    }
    /* what was read: the layout's DEPs (null: not there) and every assignment */
    arr = json_array();
    for (i = 0; arr != NULL && i < nasg; i++)
        json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "scope", asg[i].scope, "dep_id",
                                             asg[i].dep_id, "dep", asg[i].dep_name));
    digest_json(json_pack("{s:O, s:o}", "deps", rows, "assignments", arr ? arr : json_null()),
                p->store_digest);
    p->store_read = 1;
    if (p->store_digest[0] == '\0' || p->incomplete)
        r = kc_error_set(err, KC_ERR, "out of memory");
done:
    free(asg);
    json_decref(rows);
    return r;
}

kc_rc kc_plan_apply_dep(kc_ctx *ctx, const kc_layout *l, kc_store *st, const kc_action *a,
                        kc_error *err)
{
    const kc_ldep *ld = a->kind == KC_ACT_DEP_ASSIGN ? NULL : &l->deps[a->dep];
    kc_dep_spec spec;
    kc_dep made;
    kc_diags d;
    size_t i;
    kc_rc r;

    /* the store's rows are checked (and with the first DEP, its row key
     * made) on the layout's service vault, made by now if the layout has it */
    r = kc_store_authenticate(ctx, st, l->service_vault[0] ? l->service_vault : NULL, 1, err);
    if (r != KC_OK)
        return r;
    switch (a->kind) {
    case KC_ACT_DEP_ASSIGN:
        return kc_dep_assign(st, a->dep_name, a->scope, &made, err);
    case KC_ACT_DEP_UPDATE:
        return kc_dep_set(st, ld->name, &ld->enabled, NULL, ld->description, err);
    case KC_ACT_DEP_CREATE:
        break;
    default:
        return kc_error_set(err, KC_ERR, "not a DEP action");
    }
    if (l->service_vault[0] == '\0')
        return kc_error_set(err, KC_LAYOUT, "the layout names no service_vault to make DEP '%s' on",
                            ld->name);
    memset(&spec, 0, sizeof(spec));
    spec.name = ld->name;
    spec.workload = ld->workload;
    spec.geo = ld->geo[0] ? ld->geo : NULL;
    spec.description = ld->description;
    spec.keys[0] = ld->keys[0];
    spec.keys[1] = ld->keys[1];
    spec.service_vault = l->service_vault;
    spec.principal = l->service_principal[0] ? l->service_principal : NULL;
    /* the live rules, as 'dep create' checks them */
    kc_diags_init(&d, "live");
    r = kc_plan_check_dep(ctx, st, &spec, &d, err);
    for (i = 0; r == KC_OK && i < d.n; i++)
        if (d.v[i].severity == KC_SEV_ERROR)
            r = kc_error_set(err, KC_LAYOUT, "DEP '%s' would break rule %s: %s", ld->name,
                             d.v[i].rule, d.v[i].msg);
    kc_diags_release(&d);
    if (r == KC_OK)
        r = kc_dep_create(ctx, st, &spec, &made, err);
    if (r == KC_OK && !ld->enabled)
        r = kc_dep_set(st, ld->name, &ld->enabled, NULL, NULL, err);
    return r;
}
