/* The layout's validation rules. Ids are stable; docs/rules.md lists each
 * with a failing and a passing snippet. KC001-KC008 are the reader's. */
#include "kc_dep.h"
#include "kc_layout.h"
#include "kc_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ERR KC_SEV_ERROR
#define WARN KC_SEV_WARNING
#define EXCHANGE_DEPS_MAX 50

static void add(kc_diags *d, const char *rule, kc_severity sev, kc_lpos p, const char *hint,
                const char *fmt, ...) KC_PRINTF(6, 7);
static void add(kc_diags *d, const char *rule, kc_severity sev, kc_lpos p, const char *hint,
                const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    kc_diag_add(d, rule, sev, p.line, p.col, hint, "%s", msg);
}

static const kc_lvault *vault_named(const kc_layout *l, const char *name)
{
    size_t i;

    for (i = 0; i < l->nvaults; i++)
        if (strcmp(l->vaults[i].name, name) == 0)
            return &l->vaults[i];
    return NULL;
}

static const kc_lsub *sub_named(const kc_layout *l, const char *id)
{
    size_t i;

    for (i = 0; i < l->nsubs; i++)
        if (strcmp(l->subs[i].id, id) == 0)
            return &l->subs[i];
    return NULL;
}

static const kc_ldep *dep_named(const kc_layout *l, const char *name)
{
    size_t i;

    for (i = 0; i < l->ndeps; i++)
        if (strcmp(l->deps[i].name, name) == 0)
            return &l->deps[i];
    return NULL;
}

/* VAULT/KEY of a DEP -> the layout's vault and key. */
static const kc_lkey *key_ref(const kc_layout *l, const char *ref, const kc_lvault **vault)
{
    char vname[64];
    const char *slash = strchr(ref, '/');
    size_t i;

    *vault = NULL;
    if (slash == NULL || (size_t)(slash - ref) >= sizeof(vname))
        return NULL;
    memcpy(vname, ref, (size_t)(slash - ref));
    vname[slash - ref] = '\0';
    *vault = vault_named(l, vname);
    for (i = 0; *vault != NULL && i < (*vault)->nkeys; i++)
        if (strcmp((*vault)->keys[i].name, slash + 1) == 0)
            return &(*vault)->keys[i];
    return NULL;
}

/* KC009 names unique; KC029 names well formed. */
static void names(const kc_layout *l, kc_diags *d)
{
    kc_error e;
    size_t i, j, k;

    for (i = 0; i < l->nsubs; i++)
        for (j = 0; j < i; j++)
            if (strcmp(l->subs[i].id, l->subs[j].id) == 0)
                add(d, "KC009", ERR, l->subs[i].pos, NULL,
                    "subscription '%s' is declared twice (first at line %d)", l->subs[i].id,
                    l->subs[j].pos.line);
    for (i = 0; i < l->nvaults; i++) {
        const kc_lvault *v = &l->vaults[i];
        kc_error_clear(&e);
        if (kc_vault_check_name(v->name, &e) != KC_OK)
            add(d, "KC029", ERR, v->name_pos,
                "3-24 letters, digits and '-', starting with a "
                "letter",
                "%s", e.msg);
        for (j = 0; j < i; j++)
            if (strcmp(v->name, l->vaults[j].name) == 0)
                add(d, "KC009", ERR, v->name_pos, NULL,
                    "vault '%s' is declared twice (first at line %d)", v->name,
                    l->vaults[j].name_pos.line);
        for (j = 0; j < v->nkeys; j++) {
            kc_error_clear(&e);
            if (kc_key_check_name(v->keys[j].name, &e) != KC_OK)
                add(d, "KC029", ERR, v->keys[j].pos, NULL, "%s", e.msg);
            for (k = 0; k < j; k++)
                if (strcmp(v->keys[j].name, v->keys[k].name) == 0)
                    add(d, "KC009", ERR, v->keys[j].pos, NULL,
                        "key '%s' is declared twice in vault '%s'", v->keys[j].name, v->name);
        }
        for (j = 0; j < v->naccess; j++)
            for (k = 0; k < j; k++)
                if (strcmp(v->access[j].name, v->access[k].name) == 0)
                    add(d, "KC009", ERR, v->access[j].pos, NULL,
                        "principal '%s' has two entries in vault '%s'", v->access[j].name, v->name);
    }
    for (i = 0; i < l->ndeps; i++) {
        kc_error_clear(&e);
        if (kc_dep_check_name(l->deps[i].name, &e) != KC_OK)
            add(d, "KC029", ERR, l->deps[i].pos, e.hint, "%s", e.msg);
        for (j = 0; j < i; j++)
            if (strcmp(l->deps[i].name, l->deps[j].name) == 0)
                add(d, "KC009", ERR, l->deps[i].pos, NULL, "DEP '%s' is declared twice",
                    l->deps[i].name);
    }
}

/* KC014 regions known, KC015 SKU, KC020 soft delete, KC023 administrators,
 * KC028 the vault's subscription is declared, KC016/KC017 keys. */
static void vaults(const kc_layout *l, kc_diags *d)
{
    size_t i, j;

    for (i = 0; i < l->nvaults; i++) {
        const kc_lvault *v = &l->vaults[i];
        if (!kc_region_known(v->region))
            add(d, "KC014", ERR, v->region_pos,
                "Azure region names are lower case, e.g. westus, eastus2, northeurope",
                "region '%s' of vault '%s' is not an Azure region keycustody knows (table of %s)",
                v->region, v->name, kc_region_table_date());
        if (v->sku == KC_SKU_STANDARD)
            add(d, "KC015", WARN, v->sku_pos, "Customer Key needs Premium vaults in production",
                "vault '%s' is Standard: testing only", v->name);
        if (!v->soft_delete)
            add(d, "KC020", ERR, v->soft_delete_pos, NULL,
                "vault '%s' turns soft delete off; Customer Key requires it", v->name);
        else if (v->retention_days < 7 || v->retention_days > 90)
            add(d, "KC020", ERR, v->retention_pos, "give 7 to 90 days (90 for Customer Key)",
                "soft-delete retention of %u days in vault '%s' is outside 7 to 90",
                v->retention_days, v->name);
        if (l->nsubs > 0 && sub_named(l, v->subscription) == NULL)
            add(d, "KC028", ERR, v->subscription_pos, "declare it under subscriptions",
                "vault '%s' names subscription '%s', which the layout does not declare", v->name,
                v->subscription);
        for (j = 0; j < v->naccess; j++) {
            const kc_lprincipal *p = &v->access[j];
            if ((p->perms & (KC_PERM_DELETE | KC_PERM_PURGE)) &&
                ((p->perms & KC_PERM_CREATE) || strcmp(p->role, "administrator") == 0))
                add(d, "KC023", WARN, p->perms_pos,
                    "Customer Key's administrators have create, import, list, get, backup and "
                    "restore, deliberately no delete",
                    "administrator '%s' of vault '%s' may delete or purge keys", p->name, v->name);
        }
        for (j = 0; j < v->nkeys; j++) {
            const kc_lkey *k = &v->keys[j];
            if (strcmp(k->kty, "RSA") != 0)
                add(d, "KC016", ERR, k->kty_pos,
                    "Customer Key wraps and unwraps with RSA-OAEP; EC keys cannot",
                    "key '%s/%s' is %s; root keys must be RSA", v->name, k->name, k->kty);
            else if (k->bits != 2048 && k->bits != 3072 && k->bits != 4096)
                add(d, "KC016", ERR, k->size_pos, "RSA keys are 2048, 3072 or 4096 bits",
                    "key '%s/%s' has size %u", v->name, k->name, k->bits);
            if (k->protection == KC_PROT_SOFTWARE)
                add(d, "KC017", WARN, k->protection_pos,
                    "Customer Key keys are HSM-protected; software keys are for testing",
                    "key '%s/%s' is software-protected", v->name, k->name);
        }
    }
    if (l->service_vault[0] && vault_named(l, l->service_vault) == NULL)
        add(d, "KC028", ERR, l->service_vault_pos, NULL,
            "service_vault '%s' is not one of the layout's vaults", l->service_vault);
}

/* Whether some principal (the service principal, when one is named) has
 * get, wrapKey and unwrapKey on v. */
static int service_can_unwrap(const kc_layout *l, const kc_lvault *v)
{
    size_t i;

    for (i = 0; i < v->naccess; i++) {
        if (l->service_principal[0] && strcmp(v->access[i].name, l->service_principal) != 0)
            continue;
        if ((v->access[i].perms & KC_ROLE_SERVICE) == KC_ROLE_SERVICE)
            return 1;
    }
    return 0;
}

/* KC018, KC019: a root key wraps and unwraps, and never expires. of names
 * the DEP it serves, or is NULL for a live key (vault validate). */
static void root_key(const kc_lvault *v, const kc_lkey *k, const char *of, kc_diags *d)
{
    char role[96];

    snprintf(role, sizeof(role), "%s%s%s", of ? " of DEP '" : "", of ? of : "", of ? "'" : "");
    if (!(k->ops & KC_OP_WRAP) || !(k->ops & KC_OP_UNWRAP))
        add(d, "KC018", ERR, k->ops_pos, "give ops: [wrapKey, unwrapKey]",
            "key '%s/%s'%s lacks wrapKey or unwrapKey", v->name, k->name, role);
    if (k->expires[0] && strcmp(k->expires, "9999-12-31") != 0)
        add(d, "KC019", ERR, k->expires_pos, "leave the expiry out, or write 9999-12-31",
            "key '%s/%s'%s expires on %s; Customer Key accepts only never or 9999-12-31", v->name,
            k->name, role, k->expires);
}

/* KC021, KC022: a vault holding root keys is Recoverable+ProtectedSubscription
 * and lets the service principal get, wrap and unwrap. */
static void root_vault(const kc_layout *l, const kc_lvault *v, kc_diags *d)
{
    const kc_lsub *s = sub_named(l, v->subscription);
    kc_vault_meta m;

    memset(&m, 0, sizeof(m));
    m.retention_days = v->retention_days;
    m.purge_protection = v->purge_protection;
    m.retention_registered = s != NULL && s->mandatory_retention;
    if (strcmp(kc_vault_recovery_level(&m), "Recoverable+ProtectedSubscription") != 0)
        add(d, "KC021", ERR, v->purge_pos,
            "turn on purge_protection, keep 90 days of retention, and register the "
            "subscription's mandatory retention (mandatory_retention: true)",
            "vault '%s' holds root keys and has recovery level %s; Customer Key requires "
            "Recoverable+ProtectedSubscription",
            v->name, kc_vault_recovery_level(&m));
    if (!service_can_unwrap(l, v))
        add(d, "KC022", ERR, v->access_pos, "add an access entry with role: service",
            "%s%s%s has get, wrapKey and unwrapKey on vault '%s', which holds root keys",
            l->service_principal[0] ? "service principal '" : "no principal", l->service_principal,
            l->service_principal[0] ? "' nowhere" : "", v->name);
}

/* KC010-KC013, KC018-KC022, KC025 for each DEP; KC024 overall. */
static void deps(const kc_layout *l, kc_diags *d)
{
    const kc_lvault *v[2];
    const kc_lkey *k[2];
    size_t i, j, exchange = 0;

    for (i = 0; i < l->ndeps; i++) {
        const kc_ldep *dp = &l->deps[i];
        if (strcmp(dp->workload, "exchange") == 0 && ++exchange == EXCHANGE_DEPS_MAX + 1)
            add(d, "KC024", ERR, dp->pos, NULL, "more than %d Exchange DEPs (DEP '%s')",
                EXCHANGE_DEPS_MAX, dp->name);
        if (strcmp(dp->workload, "sharepoint") == 0) {
            if (dp->geo[0] == '\0')
                add(d, "KC025", ERR, dp->pos, "add geo: CODE", "SharePoint DEP '%s' needs a geo",
                    dp->name);
            for (j = 0; j < i; j++)
                if (strcmp(l->deps[j].workload, "sharepoint") == 0 &&
                    strcmp(l->deps[j].geo, dp->geo) == 0 && dp->geo[0])
                    add(d, "KC025", ERR, dp->geo_pos, NULL,
                        "geo '%s' has a SharePoint DEP already ('%s'); one per geo", dp->geo,
                        l->deps[j].name);
        } else if (dp->geo[0]) {
            add(d, "KC025", ERR, dp->geo_pos, NULL, "only SharePoint DEPs have a geo (DEP '%s')",
                dp->name);
        }
        if (dp->nkeys != 2) {
            add(d, "KC010", ERR, dp->keys_pos, "a DEP has one key in each of two vaults",
                "DEP '%s' has %zu keys; it needs exactly two", dp->name, dp->nkeys);
            continue;
        }
        for (j = 0; j < 2; j++) {
            k[j] = key_ref(l, dp->keys[j], &v[j]);
            if (k[j] == NULL)
                add(d, "KC028", ERR, dp->key_pos[j], "write VAULT/KEY of a key in the layout",
                    "DEP '%s' names key '%s', which the layout does not declare", dp->name,
                    dp->keys[j]);
        }
        if (k[0] == NULL || k[1] == NULL)
            continue;
        if (v[0] == v[1]) {
            add(d, "KC011", ERR, dp->key_pos[1], NULL,
                "both keys of DEP '%s' are in vault '%s'; they must be in two vaults", dp->name,
                v[0]->name);
            continue;
        }
        if (strcmp(v[0]->subscription, v[1]->subscription) == 0)
            add(d, "KC013", ERR, dp->key_pos[1], NULL,
                "vaults '%s' and '%s' of DEP '%s' are both in subscription '%s'; they must be "
                "in two subscriptions",
                v[0]->name, v[1]->name, dp->name, v[0]->subscription);
        if (strcmp(v[0]->region, v[1]->region) == 0)
            add(d, "KC012", dp->waiver[0] ? WARN : ERR, dp->key_pos[1],
                dp->waiver[0] ? dp->waiver : "put the vaults in two non-paired regions",
                "vaults '%s' and '%s' of DEP '%s' are both in %s; a DEP's two vaults must be in "
                "non-paired regions",
                v[0]->name, v[1]->name, dp->name, v[0]->region);
        else if (kc_region_paired(v[0]->region, v[1]->region))
            add(d, "KC012", dp->waiver[0] ? WARN : ERR, dp->key_pos[1],
                dp->waiver[0] ? "waived by paired_regions_waiver"
                              : "choose non-paired regions, or give paired_regions_waiver: "
                                "REASON",
                "vaults '%s' (%s) and '%s' (%s) are an Azure region pair; a DEP's two vaults "
                "must be in non-paired regions%s%s%s",
                v[0]->name, v[0]->region, v[1]->name, v[1]->region,
                dp->waiver[0] ? " (waived: " : "", dp->waiver[0] ? dp->waiver : "",
                dp->waiver[0] ? ")" : "");
        for (j = 0; j < 2; j++) {
            root_key(v[j], k[j], dp->name, d);
            root_vault(l, v[j], d);
        }
    }
}

/* KC026 assignments fit their DEPs, KC027 no disabled DEP assigned, KC028
 * the DEP exists. */
static void assignment(const kc_layout *l, const kc_lassign *a, const char *workload,
                       const char *what, kc_diags *d)
{
    const kc_ldep *dp = dep_named(l, a->dep);

    if (dp == NULL) {
        add(d, "KC028", ERR, a->dep_pos, NULL,
            "%s names DEP '%s', which the layout does not "
            "declare",
            what, a->dep);
        return;
    }
    if (strcmp(dp->workload, workload) != 0)
        add(d, "KC026", ERR, a->dep_pos, NULL, "%s needs a %s DEP; '%s' is a %s DEP", what,
            workload, dp->name, dp->workload);
    else if (strcmp(workload, "sharepoint") == 0 && strcmp(dp->geo, a->target) != 0)
        add(d, "KC026", ERR, a->dep_pos, NULL, "geo '%s' is assigned DEP '%s' of geo '%s'",
            a->target, dp->name, dp->geo);
    if (!dp->enabled)
        add(d, "KC027", ERR, a->dep_pos, "enable the DEP, or unassign it first",
            "DEP '%s' is disabled and cannot be assigned", dp->name);
}

static void assignments(const kc_layout *l, kc_diags *d)
{
    char what[300];
    size_t i, j;

    if (l->tenant.dep[0])
        assignment(l, &l->tenant, "tenant", "the tenant assignment", d);
    for (i = 0; i < l->nmailboxes; i++) {
        snprintf(what, sizeof(what), "mailbox '%s'", l->mailboxes[i].target);
        assignment(l, &l->mailboxes[i], "exchange", what, d);
        for (j = 0; j < i; j++)
            if (strcmp(l->mailboxes[i].target, l->mailboxes[j].target) == 0)
                add(d, "KC026", ERR, l->mailboxes[i].pos, NULL, "mailbox '%s' is assigned twice",
                    l->mailboxes[i].target);
    }
    for (i = 0; i < l->ngeos; i++) {
        snprintf(what, sizeof(what), "geo '%s'", l->geos[i].target);
        assignment(l, &l->geos[i], "sharepoint", what, d);
        for (j = 0; j < i; j++)
            if (strcmp(l->geos[i].target, l->geos[j].target) == 0)
                add(d, "KC026", ERR, l->geos[i].pos, NULL, "geo '%s' is assigned twice",
                    l->geos[i].target);
    }
}

void kc_layout_validate_live(const kc_layout *l, kc_diags *d)
{
    size_t i, j, roots;

    names(l, d);
    vaults(l, d);
    for (i = 0; i < l->nvaults; i++) {
        const kc_lvault *v = &l->vaults[i];
        /* The service vault holds the service's own keys (each DEP's
         * availability key, the service-managed key), never a customer's
         * root key: the root-key rules are not for it, live as offline,
         * where only the keys a DEP names are root keys. */
        /* KC030: no access policy, and so every principal may act (the
         * last entry is never removed; a vault made without one has none) */
        if (v->naccess == 0)
            add(d, "KC030", WARN, v->name_pos,
                "give it an access policy: 'keycustody access set VAULT --principal P "
                "--permissions ...'",
                "vault '%s' has no access policy: every principal may act on it", v->name);
        /* KC031: what interrupted writes left; readers without the PIN
         * refuse a key with a half-made version as planted */
        if (v->half_made > 0 || v->stale > 0)
            add(d, "KC031", WARN, v->name_pos,
                "remove it with 'keycustody vault validate VAULT --repair' (or 'policy apply' "
                "of the vault's layout)",
                "vault '%s' holds what interrupted writes left: %zu half-made key version%s, "
                "%zu older generation%s of its documents",
                v->name, v->half_made, v->half_made == 1 ? "" : "s", v->stale,
                v->stale == 1 ? "" : "s");
        if (l->service_vault[0] != '\0' && strcmp(v->name, l->service_vault) == 0)
            continue;
        for (j = roots = 0; j < v->nkeys; j++) {
            /* a key-exchange key is no root key */
            if (strcmp(v->keys[j].kty, "RSA") != 0 || (v->keys[j].ops & KC_OP_IMPORT))
                continue;
            root_key(v, &v->keys[j], NULL, d);
            roots++;
        }
        if (roots > 0)
            root_vault(l, v, d);
    }
}

void kc_layout_validate(const kc_layout *l, kc_diags *d)
{
    names(l, d);
    vaults(l, d);
    deps(l, d);
    assignments(l, d);
    kc_diags_sort(d);
}
