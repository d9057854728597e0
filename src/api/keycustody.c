/* libkeycustody's public interface (include/keycustody/keycustody.h) over
 * the core: a read-only view of vaults and keys. The linker's version
 * script (keycustody.map) exports keycustody_* and nothing else. */
#include "keycustody/keycustody.h"

#include "kc_access.h"
#include "kc_ctx.h"
#include "kc_key.h"
#include "kc_secret.h"
#include "kc_vault.h"

#include <stdlib.h>
#include <string.h>

#define API_MAX_SOURCES 16

struct keycustody {
    kc_ctx *ctx;
    kc_error err;
    char formatted[2048]; /* err as keycustody_errmsg gives it */
    char *principal;
    char *sources[API_MAX_SOURCES];
    size_t nsources;
};

const char *keycustody_version(void)
{
    return KC_VERSION_STRING;
}

static kc_rc api_pin(void *arg, const char *vault, kc_pin_kind kind, kc_secret **out, kc_error *err)
{
    const keycustody *kc = arg;
    int ambiguous = 0;
    const char *src = kind == KC_PIN_USER ? kc_secret_source_for((const char *const *)kc->sources,
                                                                 kc->nsources, vault, &ambiguous)
                                          : NULL;

    *out = NULL;
    if (ambiguous) {
        kc_error_set(err, KC_USAGE, "several PIN sources without a vault name");
        kc_error_hint(err, "with several vaults, give \"VAULT=SOURCE\" for each");
        return KC_USAGE;
    }
    if (src == NULL) {
        kc_error_set(err, KC_USAGE, "no PIN source for vault '%s'", vault);
        kc_error_hint(err,
                      "give keycustody_config.pin_sources \"%s=env:NAME\" or "
                      "\"%s=file:PATH\" (mode 0600)",
                      vault, vault);
        return KC_USAGE;
    }
    if (kc_secret_from_source(src, out, err) != KC_OK)
        return kc_error_prefix(err, "cannot read the user PIN of vault '%s'", vault);
    return KC_OK;
}

static int fail(keycustody *kc, kc_rc code, const char *msg)
{
    kc_error_set(&kc->err, code, "%s", msg);
    return code;
}

/* "[VAULT=]SOURCE": a vault's has an '=' before the source's ':'. */
static int source_ok(const char *s)
{
    const char *eq = strchr(s, '='), *colon = strchr(s, ':');

    return kc_secret_source_is_valid(eq != NULL && (colon == NULL || eq < colon) ? eq + 1 : s);
}

int keycustody_open(const keycustody_config *cfg, keycustody **out)
{
    keycustody *kc = calloc(1, sizeof(*kc));
    kc_module_set set;
    size_t i, bare = 0;

    if (out == NULL) {
        free(kc);
        return KEYCUSTODY_E_USAGE;
    }
    *out = kc;
    if (kc == NULL)
        return KEYCUSTODY_E_ERROR;
    if (cfg == NULL)
        return fail(kc, KC_USAGE, "keycustody_open: no config");
    if (cfg->size == 0 || cfg->size > sizeof(*cfg))
        return fail(kc, KC_USAGE,
                    "keycustody_open: config.size is not "
                    "sizeof(keycustody_config)");
    memset(&set, 0, sizeof(set));
    if (cfg->nmodules > KC_P11_MODULES_MAX || (cfg->nmodules > 0 && cfg->modules == NULL))
        return fail(kc, KC_USAGE, "keycustody_open: at most 8 modules, in config.modules");
    if (cfg->npin_sources > API_MAX_SOURCES || (cfg->npin_sources > 0 && cfg->pin_sources == NULL))
        return fail(kc, KC_USAGE, "keycustody_open: at most 16 PIN sources, in config.pin_sources");
    for (i = 0; i < cfg->nmodules; i++) {
        if (cfg->modules[i] == NULL || cfg->modules[i][0] == '\0')
            return fail(kc, KC_USAGE, "keycustody_open: an empty module name");
        const char *eq = strchr(cfg->modules[i], '='), *slash = strchr(cfg->modules[i], '/');
        if (eq != NULL && (slash == NULL || slash > eq)) {
            kc_error_set(&kc->err, KC_USAGE,
                         "keycustody_open: module '%s' binds a vault "
                         "(VAULT=MODULE), which the library does not take",
                         cfg->modules[i]);
            kc_error_hint(&kc->err, "name the module alone: every vault is looked for on it");
            return KC_USAGE;
        }
        set.paths[set.npaths++] = cfg->modules[i];
    }
    for (i = 0; i < cfg->npin_sources; i++) {
        if (cfg->pin_sources[i] == NULL || !source_ok(cfg->pin_sources[i])) {
            kc_error_set(&kc->err, KC_USAGE,
                         "keycustody_open: PIN source %zu is not "
                         "[VAULT=]env:NAME or [VAULT=]file:PATH",
                         i);
            kc_error_hint(&kc->err, "a PIN is named by where it is, never given as a value");
            return KC_USAGE;
        }
        if (strchr(cfg->pin_sources[i], '=') == NULL ||
            strchr(cfg->pin_sources[i], '=') > strchr(cfg->pin_sources[i], ':'))
            bare++;
        if (bare > 1) {
            kc_error_set(&kc->err, KC_USAGE,
                         "keycustody_open: several PIN sources without a "
                         "vault name");
            kc_error_hint(&kc->err, "give \"VAULT=SOURCE\" for each vault but one");
            return KC_USAGE;
        }
        kc->sources[i] = strdup(cfg->pin_sources[i]);
        if (kc->sources[i] == NULL)
            return fail(kc, KC_ERR, "out of memory");
        kc->nsources++;
    }
    if (cfg->principal != NULL && (kc->principal = strdup(cfg->principal)) == NULL)
        return fail(kc, KC_ERR, "out of memory");
    if (kc_ctx_new_set(&set, api_pin, kc, &kc->ctx, &kc->err) != KC_OK)
        return kc->err.code;
    return KEYCUSTODY_OK;
}

void keycustody_close(keycustody *kc)
{
    size_t i;

    if (kc == NULL)
        return;
    kc_ctx_free(kc->ctx);
    for (i = 0; i < kc->nsources; i++)
        free(kc->sources[i]);
    free(kc->principal);
    free(kc);
}

const char *keycustody_errmsg(const keycustody *kc)
{
    keycustody *own = (keycustody *)kc; /* the handle is the caller's, never const itself */

    if (kc == NULL)
        return "out of memory";
    if (kc->err.msg[0] == '\0')
        return "";
    /* the message with its PKCS#11 detail, as the command prints it */
    kc_error_format(&kc->err, own->formatted, sizeof(own->formatted));
    return own->formatted;
}

const char *keycustody_errhint(const keycustody *kc)
{
    return kc == NULL ? "" : kc->err.hint;
}

/* Every call starts with no error, and needs a handle that opened. */
static int begin(keycustody *kc)
{
    if (kc == NULL)
        return KEYCUSTODY_E_ERROR;
    kc_error_clear(&kc->err);
    if (kc->ctx == NULL)
        return fail(kc, KC_USAGE, "this handle did not open (see keycustody_open's error)");
    return KEYCUSTODY_OK;
}

int keycustody_vault_foreach(keycustody *kc, keycustody_vault_fn fn, void *arg)
{
    kc_vault_entry *e = NULL;
    keycustody_vault_info info;
    size_t n = 0, i;
    int rc = begin(kc);

    if (rc != KEYCUSTODY_OK)
        return rc;
    if (fn == NULL)
        return fail(kc, KC_USAGE, "keycustody_vault_foreach: no callback");
    if (kc_vault_list(kc->ctx, &e, &n, &kc->err) != KC_OK)
        return kc->err.code;
    for (i = 0; i < n && rc == 0; i++) {
        info.token_label = e[i].token.label;
        info.token_uri = e[i].token.uri;
        info.is_vault = e[i].is_vault;
        info.name = e[i].is_vault ? e[i].meta.name : "";
        info.subscription = e[i].is_vault ? e[i].meta.subscription : "";
        info.region = e[i].is_vault ? e[i].meta.region : "";
        info.fingerprint = e[i].is_vault ? e[i].fingerprint : "";
        rc = fn(arg, &info);
    }
    free(e);
    return rc;
}

static int open_vault(keycustody *kc, const char *name, unsigned perm, kc_vault **v)
{
    *v = NULL;
    if (kc_vault_open(kc->ctx, name, v, &kc->err) != KC_OK)
        return kc->err.code;
    if (kc_vault_authorize(*v, kc->principal, perm, &kc->err) != KC_OK) {
        /* the command's hint names --as; here it is the config's field */
        if (kc->principal == NULL)
            kc_error_hint(&kc->err, "set keycustody_config.principal to who acts");
        kc_vault_free(*v);
        *v = NULL;
        return kc->err.code;
    }
    return KEYCUSTODY_OK;
}

static int each_version(const kc_key *k, keycustody_key_fn fn, void *arg)
{
    keycustody_key_info info;
    char ops[128];
    size_t i;
    int rc = 0;

    for (i = 0; i < k->nversions && rc == 0; i++) {
        const kc_key_version *ver = &k->versions[i];
        kc_key_ops_format(ver->ops, ops, sizeof(ops));
        info.vault = k->vault;
        info.name = k->name;
        info.version = ver->version;
        info.uri = ver->uri;
        info.bits = ver->bits;
        info.ops = ops;
        info.enabled = ver->enabled;
        info.current = i == k->current;
        info.created = ver->created_at[0] ? ver->created_at : ver->created;
        info.expires = ver->expires;
        rc = fn(arg, &info);
    }
    return rc;
}

int keycustody_key_foreach(keycustody *kc, const char *vault, keycustody_key_fn fn, void *arg)
{
    kc_vault *v = NULL;
    kc_key *keys = NULL;
    size_t n = 0, i;
    int rc = begin(kc);

    if (rc != KEYCUSTODY_OK)
        return rc;
    if (vault == NULL || fn == NULL)
        return fail(kc, KC_USAGE, "keycustody_key_foreach: give a vault and a callback");
    if ((rc = open_vault(kc, vault, KC_PERM_LIST, &v)) != KEYCUSTODY_OK)
        return rc;
    if (kc_key_list(v, &keys, &n, &kc->err) != KC_OK) {
        kc_vault_free(v);
        return kc->err.code;
    }
    for (i = 0; i < n && rc == 0; i++)
        rc = each_version(&keys[i], fn, arg);
    kc_key_list_free(keys, n);
    kc_vault_free(v);
    return rc;
}

int keycustody_public_key(keycustody *kc, const char *ref, char **pem)
{
    const kc_key_version *ver;
    kc_key_ref r;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    int rc = begin(kc);

    if (rc != KEYCUSTODY_OK)
        return rc;
    if (pem == NULL || ref == NULL)
        return fail(kc, KC_USAGE, "keycustody_public_key: give a key and where to put its PEM");
    *pem = NULL;
    if (kc_key_ref_parse(ref, &r, &kc->err) != KC_OK)
        return kc->err.code;
    if ((rc = open_vault(kc, r.vault, KC_PERM_GET, &v)) != KEYCUSTODY_OK)
        return rc;
    if (kc_key_get(v, r.name, 0, &k, &kc->err) != KC_OK ||
        kc_key_check_active(k, &kc->err) != KC_OK ||
        kc_key_select(k, r.id, r.id_len, &ver, &kc->err) != KC_OK ||
        kc_key_public_pem(v, k, ver, pem, &kc->err) != KC_OK)
        rc = kc->err.code;
    kc_key_free(k);
    kc_vault_free(v);
    return rc;
}

void keycustody_free(void *p)
{
    free(p);
}
