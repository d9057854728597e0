#include "kc_plan.h"
#include "kc_dep.h"
#include "kc_keystate.h"
#include "kc_util.h"

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
        return '+';
    case KC_ACT_KEY_DELETE:
        return '-';
    case KC_ACT_BLOCKED:
        return '!';
    default:
        return '~';
    }
}

static void act(kc_plan *p, kc_act_kind kind, size_t vault, size_t key, const char *why,
                const char *fmt, ...) KC_PRINTF(6, 7);
static void act(kc_plan *p, kc_act_kind kind, size_t vault, size_t key, const char *why,
                const char *fmt, ...)
{
    kc_action *nv;
    va_list ap;

    if (p->n == p->cap) {
        nv = realloc(p->v, (p->cap * 2 + 8) * sizeof(*nv));
        if (nv == NULL)
            return;
        p->v = nv;
        p->cap = p->cap * 2 + 8;
    }
    nv = &p->v[p->n++];
    memset(nv, 0, sizeof(*nv));
    nv->kind = kind;
    nv->vault = vault;
    nv->key = key;
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
}

void kc_plan_release(kc_plan *p)
{
    free(p->v);
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

static int same_access(const kc_vault_meta *a, const kc_vault_meta *b)
{
    size_t i, j;

    if (a->naccess != b->naccess)
        return 0;
    for (i = 0; i < a->naccess; i++) {
        for (j = 0; j < b->naccess; j++)
            if (strcmp(a->access[i].principal, b->access[j].principal) == 0 &&
                a->access[i].perms == b->access[j].perms)
                break;
        if (j == b->naccess)
            return 0;
    }
    return 1;
}

/* What differs in the metadata: a description, or "" when nothing. */
static void meta_changes(const kc_vault_meta *have, const kc_vault_meta *want, char *buf,
                         size_t len)
{
    size_t off = 0;

#define CHANGE(...)                                                                                \
    off += (size_t)snprintf(buf + off, len > off ? len - off : 0, "%s", off ? "; " : ""),          \
        off += (size_t)snprintf(buf + off, len > off ? len - off : 0, __VA_ARGS__)
    buf[0] = '\0';
    if (have->sku != want->sku)
        CHANGE("sku %s -> %s", kc_sku_name(have->sku), kc_sku_name(want->sku));
    if (have->retention_days != want->retention_days)
        CHANGE("retention %u -> %u days", have->retention_days, want->retention_days);
    if (have->purge_protection != want->purge_protection)
        CHANGE("purge protection on");
    if (have->retention_registered != want->retention_registered)
        CHANGE("mandatory retention %s", want->retention_registered ? "registered" : "dropped");
    if (!same_access(have, want))
        CHANGE("access policy: %zu -> %zu principals", have->naccess, want->naccess);
#undef CHANGE
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
    char ops[128], have[128], changes[256];
    size_t off = 0, i;

    kc_key_ops_format(lk->ops, ops, sizeof(ops));
    if (live == NULL && deleted != NULL) {
        act(p, KC_ACT_KEY_RECOVER, vi, ki, "it is soft-deleted; the layout wants it",
            "recover key %s/%s", lv->name, lk->name);
        return;
    }
    if (live == NULL) {
        act(p, KC_ACT_KEY_CREATE, vi, ki, "not on the token", "create key %s/%s (RSA-%u, %s, %s)",
            lv->name, lk->name, lk->bits, prot_name(lk->protection), ops);
        return;
    }
    if (live->nhalf > 0) {
        act(p, KC_ACT_KEY_REPAIR, vi, ki, "an interrupted create left half a key pair, never usable",
            "repair key %s/%s: remove the half-made version %s", lv->name, lk->name,
            live->versions[live->nversions].version);
        return; /* the next plan compares it */
    }
    for (i = 0; i < live->nversions && live->versions[i].recorded; i++)
        ;
    if (i < live->nversions) {
        act(p, KC_ACT_KEY_RECORD, vi, ki, "a create or rotate was interrupted before its record",
            "record key %s/%s in the key state", lv->name, lk->name);
        return; /* the next plan compares it */
    }
    cur = &live->versions[live->current];
    if (cur->bits != lk->bits || cur->protection != lk->protection)
        act(p, KC_ACT_KEY_ROTATE, vi, ki,
            "a token cannot change a key's size or protection in place",
            "rotate key %s/%s: RSA-%u %s -> RSA-%u %s", lv->name, lk->name, cur->bits,
            prot_name(cur->protection), lk->bits, prot_name(lk->protection));
    if (cur->expires[0] && lk->expires[0] == '\0') {
        act(p, KC_ACT_BLOCKED, vi, ki, "an expiry once set can be moved, never removed",
            "key %s/%s expires on %s; the layout says never", lv->name, lk->name, cur->expires);
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
    if (!same_tags(live, lk) && off < sizeof(changes))
        off += (size_t)snprintf(changes + off, sizeof(changes) - off, "%stags", off ? "; " : "");
    if (off > 0)
        act(p, KC_ACT_KEY_UPDATE, vi, ki, "the token differs from the layout",
            "update key %s/%s: %s", lv->name, lk->name, changes);
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
            act(p, KC_ACT_KEY_DELETE, vi, 0, "not in the layout (--allow-delete: soft delete)",
                "delete key %s/%s", v->meta.name, keys[i].name);
            snprintf(p->v[p->n - 1].key_name, sizeof(p->v[0].key_name), "%s", keys[i].name);
        } else if (p->nnotes < sizeof(p->notes) / sizeof(p->notes[0])) {
            snprintf(p->notes[p->nnotes++], sizeof(p->notes[0]),
                     "key %s/%s is on the token but not in the layout: kept (--allow-delete "
                     "soft-deletes it)",
                     v->meta.name, keys[i].name);
        }
    }
}

static void plan_new_vault(kc_plan *p, const kc_layout *l, size_t vi, int adopt)
{
    const kc_lvault *lv = &l->vaults[vi];
    size_t i;

    act(p, adopt ? KC_ACT_VAULT_ADOPT : KC_ACT_VAULT_INIT, vi, 0,
        adopt ? "the token is initialised but not a keycustody vault" : "no token has this label",
        "%s vault %s (subscription %s, %s, %s, soft delete %u days, purge protection %s)",
        adopt ? "adopt the token as" : "initialise a free token as", lv->name, lv->subscription,
        lv->region, kc_sku_name(lv->sku), lv->retention_days, lv->purge_protection ? "on" : "off");
    for (i = 0; i < lv->nkeys; i++)
        plan_key(p, lv, vi, i, NULL, NULL);
}

kc_rc kc_plan_make(kc_ctx *ctx, const kc_layout *l, int allow_delete, kc_plan *p, kc_error *err)
{
    kc_vault_meta want;
    char changes[256];
    kc_key *keys = NULL, *del = NULL;
    size_t nkeys = 0, ndel = 0, i, stale = 0;
    kc_vault *v = NULL;
    kc_tok *tok = NULL;
    kc_rc r = KC_OK;

    memset(p, 0, sizeof(*p));
    for (i = 0; r == KC_OK && i < l->nvaults; i++) {
        const kc_lvault *lv = &l->vaults[i];
        r = kc_p11_token(ctx->p11, token_of(lv), &tok, err);
        if (r == KC_NOT_FOUND) {
            plan_new_vault(p, l, i, 0);
            r = KC_OK;
            continue;
        }
        if (r == KC_OK)
            r = kc_vault_open(ctx, token_of(lv), &v, err);
        if (r == KC_NOT_FOUND) {
            plan_new_vault(p, l, i, 1);
            r = KC_OK;
            continue;
        }
        if (r != KC_OK)
            break;
        want_meta(l, lv, &want);
        if (strcmp(v->meta.subscription, want.subscription) != 0 ||
            strcmp(v->meta.region, want.region) != 0)
            act(p, KC_ACT_BLOCKED, i, 0, "a vault cannot move between subscriptions or regions",
                "vault %s is in subscription %s, %s; the layout says %s, %s", lv->name,
                v->meta.subscription, v->meta.region, want.subscription, want.region);
        else if (v->meta.purge_protection && !want.purge_protection)
            act(p, KC_ACT_BLOCKED, i, 0, "purge protection cannot be turned off once on",
                "vault %s has purge protection; the layout turns it off", lv->name);
        meta_changes(&v->meta, &want, changes, sizeof(changes));
        if (changes[0] && !(v->meta.purge_protection && !want.purge_protection))
            act(p, KC_ACT_VAULT_META, i, 0, "the vault metadata differs from the layout",
                "update vault %s: %s", lv->name, changes);
        r = kc_key_list(v, &keys, &nkeys, err);
        if (r == KC_OK)
            r = kc_key_list_deleted(v, &del, &ndel, err);
        if (r == KC_OK)
            plan_keys(p, l, lv, i, v, allow_delete, keys, nkeys, del, ndel);
        if (r == KC_OK)
            r = kc_keystate_stale(v, &stale, err);
        if (r == KC_OK && stale > 0)
            act(p, KC_ACT_VAULT_TIDY, i, 0, "a write of the vault's documents was interrupted",
                "tidy vault %s: remove %zu older generation%s of its metadata or key state",
                lv->name, stale, stale == 1 ? "" : "s");
        kc_key_list_free(keys, nkeys);
        kc_key_list_free(del, ndel);
        keys = del = NULL;
        nkeys = ndel = 0;
        kc_vault_free(v);
        v = NULL;
    }
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
    const char **list = NULL;
    kc_layout *l = NULL;
    kc_vault *v = NULL;
    kc_key *keys = NULL;
    size_t nkeys = 0, nents = 0, i, stale = 0;
    kc_rc r = KC_OK;

    *out = NULL;
    if (n == 0) {
        r = kc_vault_list(ctx, &ents, &nents, err);
        list = calloc(nents + 1, sizeof(*list));
        for (i = 0; r == KC_OK && list != NULL && i < nents; i++)
            if (ents[i].is_vault)
                list[n++] = ents[i].token.label;
        names = list;
    }
    l = calloc(1, sizeof(*l));
    if (r == KC_OK && (l == NULL || (l->vaults = calloc(n + 1, sizeof(*l->vaults))) == NULL ||
                       (l->subs = calloc(n + 1, sizeof(*l->subs))) == NULL))
        r = kc_error_set(err, KC_ERR, "out of memory");
    for (i = 0; r == KC_OK && i < n; i++) {
        r = kc_vault_open(ctx, names[i], &v, err);
        if (r == KC_OK)
            r = kc_key_list(v, &keys, &nkeys, err);
        if (r == KC_OK)
            r = kc_keystate_stale(v, &stale, err);
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
        memcpy(v->meta.access, want.access, sizeof(want.access));
        v->meta.naccess = want.naccess;
        r = kc_vault_login(v, err);
        if (r == KC_OK)
            r = kc_vault_save_meta(v, err);
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

        r = kc_keystate_tidy(v, &removed, err);
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

/* The layout's scope for an assignment and the DEP it names. */
static void plan_assign(kc_plan *p, kc_store *st, const char *scope, const char *dep, kc_error *err)
{
    kc_dep_assignment *v = NULL;
    size_t n = 0, i;
    kc_action *a;

    if (st != NULL && kc_dep_assignments(st, &v, &n, err) != KC_OK)
        return;
    for (i = 0; i < n; i++)
        if (strcmp(v[i].scope, scope) == 0 && strcmp(v[i].dep_name, dep) == 0)
            break;
    if (i == n) {
        act(p, KC_ACT_DEP_ASSIGN, 0, 0, "the layout assigns it", "assign DEP %s to %s", dep, scope);
        a = &p->v[p->n - 1];
        snprintf(a->scope, sizeof(a->scope), "%s", scope);
        snprintf(a->dep_name, sizeof(a->dep_name), "%s", dep);
    }
    free(v);
}

kc_rc kc_plan_deps(const kc_layout *l, kc_store *st, kc_plan *p, kc_error *err)
{
    char scope[80];
    kc_dep d;
    size_t i, k;
    int diff;
    kc_rc r;

    for (i = 0; i < l->ndeps; i++) {
        const kc_ldep *ld = &l->deps[i];

        r = st != NULL ? kc_dep_get(st, ld->name, &d, err) : KC_NOT_FOUND;
        if (r == KC_NOT_FOUND) {
            kc_error_clear(err);
            act(p, KC_ACT_DEP_CREATE, 0, 0, "not in the service store",
                "create DEP %s (%s%s%s, keys %s and %s)", ld->name, ld->workload,
                ld->geo[0] ? " " : "", ld->geo, ld->keys[0], ld->keys[1]);
            p->v[p->n - 1].dep = i;
            continue;
        }
        if (r != KC_OK)
            return r;
        diff = strcmp(d.workload, ld->workload) != 0 || strcmp(d.geo, ld->geo) != 0;
        for (k = 0; k < 2; k++) {
            char ref[sizeof(d.keys[0].vault) + sizeof(d.keys[0].key) + 1];

            snprintf(ref, sizeof(ref), "%s/%s", d.keys[k].vault, d.keys[k].key);
            diff |= strcmp(ref, ld->keys[k]) != 0;
        }
        if (diff)
            act(p, KC_ACT_BLOCKED, 0, 0,
                "a DEP's workload and root keys never change: create a new DEP and assign it",
                "DEP %s is %s over %s/%s and %s/%s in the store; the layout differs", d.name,
                d.workload, d.keys[0].vault, d.keys[0].key, d.keys[1].vault, d.keys[1].key);
        else if (strcmp(d.description, ld->description) != 0 || d.enabled != ld->enabled)
            act(p, KC_ACT_DEP_UPDATE, 0, 0, "the layout changes it", "update DEP %s: %s%s%s",
                d.name, strcmp(d.description, ld->description) != 0 ? "description" : "",
                strcmp(d.description, ld->description) != 0 && d.enabled != ld->enabled ? ", " : "",
                d.enabled != ld->enabled ? (ld->enabled ? "enable" : "disable") : "");
        if (p->n > 0 && p->v[p->n - 1].kind == KC_ACT_DEP_UPDATE)
            p->v[p->n - 1].dep = i;
    }
    kc_error_clear(err);
    if (l->tenant.dep[0])
        plan_assign(p, st, "tenant", l->tenant.dep, err);
    for (i = 0; i < l->nmailboxes; i++) {
        snprintf(scope, sizeof(scope), "mailbox:%.64s", l->mailboxes[i].target);
        plan_assign(p, st, scope, l->mailboxes[i].dep, err);
    }
    for (i = 0; i < l->ngeos; i++) {
        snprintf(scope, sizeof(scope), "geo:%.64s", l->geos[i].target);
        plan_assign(p, st, scope, l->geos[i].dep, err);
    }
    return err->code == KC_OK ? KC_OK : err->code;
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
