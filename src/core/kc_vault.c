#include "kc_vault.h"
#include "kc_manifest.h"
#include "kc_module.h"
#include "kc_audit.h"
#include "kc_gendoc.h"
#include "kc_keystate.h"
#include "kc_util.h"

#include <jansson.h>

#include <ctype.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

kc_rc kc_vault_check_name(const char *name, kc_error *err)
{
    size_t n = strlen(name), i;

    if (n < 3 || n > 24) {
        kc_error_set(err, KC_USAGE, "vault name '%.40s' has %zu characters; it must have 3 to 24",
                     name, n);
        return KC_USAGE;
    }
    for (i = 0; i < n; i++) {
        if (!isalnum((unsigned char)name[i]) && name[i] != '-')
            return kc_error_set(err, KC_USAGE,
                                "vault name '%s' has '%c'; only letters, digits and '-' are "
                                "allowed",
                                name, name[i]);
    }
    if (!isalpha((unsigned char)name[0]))
        return kc_error_set(err, KC_USAGE, "vault name '%s' must start with a letter", name);
    if (name[n - 1] == '-')
        return kc_error_set(err, KC_USAGE, "vault name '%s' must end with a letter or digit", name);
    if (strstr(name, "--") != NULL)
        return kc_error_set(err, KC_USAGE, "vault name '%s' must not contain '--'", name);
    return KC_OK;
}

static int token_chars(const char *s, const char *extra)
{
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && strchr(extra, *s) == NULL)
            return 0;
    return 1;
}

kc_rc kc_vault_check_meta(const kc_vault_meta *m, kc_error *err)
{
    kc_rc r = kc_vault_check_name(m->name, err);
    size_t n;

    if (r != KC_OK)
        return r;
    n = strlen(m->subscription);
    if (n == 0 || n > 64 || !token_chars(m->subscription, "-_."))
        return kc_error_set(err, KC_USAGE,
                            "subscription '%.70s' must be 1 to 64 letters, digits, '-', '_' or '.'",
                            m->subscription);
    n = strlen(m->region);
    if (n < 2 || n > 32 || !token_chars(m->region, "")) {
        kc_error_set(err, KC_USAGE, "region '%.40s' must be an Azure region name such as westus",
                     m->region);
        return KC_USAGE;
    }
    for (n = 0; m->region[n]; n++)
        if (isupper((unsigned char)m->region[n]))
            return kc_error_set(err, KC_USAGE,
                                "region '%s' must be written in lower case, as Azure does",
                                m->region);
    if (m->retention_days < 7 || m->retention_days > 90)
        return kc_error_set(err, KC_USAGE,
                            "soft-delete retention of %u days is outside 7 to 90 days",
                            m->retention_days);
    return KC_OK;
}

const char *kc_vault_recovery_level(const kc_vault_meta *m)
{
    int custom = m->retention_days < 90;

    if (!m->purge_protection)
        return custom ? "CustomizedRecoverable+Purgeable" : "Recoverable+Purgeable";
    if (m->retention_registered)
        return custom ? "CustomizedRecoverable+ProtectedSubscription"
                      : "Recoverable+ProtectedSubscription";
    return custom ? "CustomizedRecoverable" : "Recoverable";
}

const char *kc_sku_name(kc_sku sku)
{
    return sku == KC_SKU_STANDARD ? "standard" : "premium";
}

int kc_sku_parse(const char *s, kc_sku *out)
{
    if (strcmp(s, "premium") == 0)
        *out = KC_SKU_PREMIUM;
    else if (strcmp(s, "standard") == 0)
        *out = KC_SKU_STANDARD;
    else
        return -1;
    return 0;
}

/* --- the arrangement (kc_p11.h) --- */

static const char *const signer_names[] = {"ecdsa-p256-sha256", "rsa-pss-sha256"};

json_t *kc_vault_arrangement_json(const kc_arrangement *a)
{
    return json_pack("{s:s, s:s, s:s, s:s}", "signer", signer_names[a->signer == KC_SIGNER_RSA_PSS],
                     "hsm_keys", a->hsm_non_extractable ? "non-extractable" : "wrap-with-trusted",
                     "key_wrap", kc_wrap_mech_name(a->key_wrap), "seal",
                     a->no_gcm ? "none" : "aes-gcm");
}

static int arrangement_parse(json_t *o, kc_arrangement *a)
{
    const char *signer = NULL, *hsm = NULL, *wrap = NULL, *seal = NULL;

    memset(a, 0, sizeof(*a));
    if (o == NULL) /* made before keycustody recorded it: on SoftHSM */
        return 0;
    if (json_unpack(o, "{s:s, s:s, s:s, s:s !}", "signer", &signer, "hsm_keys", &hsm, "key_wrap",
                    &wrap, "seal", &seal) != 0 ||
        kc_wrap_mech_parse(wrap, &a->key_wrap) != 0)
        return -1;
    if (strcmp(signer, signer_names[1]) == 0)
        a->signer = KC_SIGNER_RSA_PSS;
    else if (strcmp(signer, signer_names[0]) != 0)
        return -1;
    if (strcmp(hsm, "non-extractable") == 0)
        a->hsm_non_extractable = 1;
    else if (strcmp(hsm, "wrap-with-trusted") != 0)
        return -1;
    if (strcmp(seal, "none") == 0)
        a->no_gcm = 1;
    else if (strcmp(seal, "aes-gcm") != 0)
        return -1;
    return 0;
}

kc_rc kc_vault_meta_encode(const kc_vault_meta *m, char **out, kc_error *err)
{
    json_t *o = NULL;
    char *s = NULL;

    *out = NULL;
    o = json_pack("{s:s, s:I, s:I, s:s, s:s, s:s, s:s, s:{s:b, s:I}, s:b, s:b, s:s, s:s}", "kind",
                  "keycustody-vault", "schema", (json_int_t)m->schema, "generation",
                  (json_int_t)m->generation, "name", m->name, "subscription", m->subscription,
                  "region", m->region, "sku", kc_sku_name(m->sku), "soft_delete", "enabled", 1,
                  "retention_days", (json_int_t)m->retention_days, "purge_protection",
                  m->purge_protection, "retention_registered", m->retention_registered, "created",
                  m->created, "updated", m->updated);
    if (o != NULL && m->domain[0])
        json_object_set_new(o, "backup_domain", json_string(m->domain));
    if (o != NULL)
        json_object_set_new(o, "arrangement", kc_vault_arrangement_json(&m->arr));
    if (o != NULL && m->naccess > 0) {
        json_t *acc = json_array();
        char perms[256];
        size_t i;
        for (i = 0; i < m->naccess; i++) {
            kc_perms_format(m->access[i].perms, perms, sizeof(perms));
            json_array_append_new(acc, json_pack("{s:s, s:s}", "principal", m->access[i].principal,
                                                 "permissions", perms));
        }
        json_object_set_new(o, "access", acc);
    }
    if (o != NULL)
        s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    if (s == NULL)
        return kc_error_set(err, KC_ERR, "cannot encode vault metadata");
    *out = s;
    return KC_OK;
}

static int copy_str(char *dst, size_t cap, const char *src)
{
    if (src == NULL || strlen(src) >= cap)
        return -1;
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

kc_rc kc_vault_meta_decode(const unsigned char *buf, size_t len, kc_vault_meta *m, kc_error *err)
{
    json_t *o = NULL;
    json_error_t je;
    const char *kind = NULL, *name = NULL, *sub = NULL, *region = NULL, *sku = NULL;
    const char *created = NULL, *updated = NULL, *domain = "";
    json_t *access = NULL, *entry, *arr = NULL;
    size_t i;
    json_int_t schema = 0, gen = 0, days = 0;
    int sd = 0, pp = 0, rr = 0;
    kc_rc r = KC_INTEGRITY;

    memset(m, 0, sizeof(*m));
    o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
    if (o == NULL)
        return kc_error_set(err, KC_INTEGRITY, "vault metadata is not JSON: %s", je.text);
    if (json_unpack_ex(o, &je, JSON_STRICT,
                       "{s:s, s:I, s:I, s:s, s:s, s:s, s:s, s:{s:b, s:I}, s:b, s?b, s?s, s?o, "
                       "s?o, s:s, s:s}",
                       "kind", &kind, "schema", &schema, "generation", &gen, "name", &name,
                       "subscription", &sub, "region", &region, "sku", &sku, "soft_delete",
                       "enabled", &sd, "retention_days", &days, "purge_protection", &pp,
                       "retention_registered", &rr, "backup_domain", &domain, "access", &access,
                       "arrangement", &arr, "created", &created, "updated", &updated) != 0) {
        kc_error_set(err, KC_INTEGRITY, "vault metadata does not have the expected fields: %s",
                     je.text);
        goto cleanup;
    }
    if (strcmp(kind, "keycustody-vault") != 0 || schema != KC_VAULT_SCHEMA) {
        kc_error_set(err, KC_INTEGRITY,
                     "vault metadata of kind '%s' schema %lld is not known to "
                     "this version of keycustody",
                     kind, (long long)schema);
        goto cleanup;
    }
    m->schema = (unsigned)schema;
    m->generation = gen < 0 ? 0 : (unsigned long)gen;
    m->retention_days = days < 0 || days > 1000 ? 0 : (unsigned)days;
    m->purge_protection = pp;
    m->retention_registered = rr;
    if (arrangement_parse(arr, &m->arr) != 0) {
        kc_error_set(err, KC_INTEGRITY, "vault metadata has a malformed arrangement");
        goto cleanup;
    }
    if (access != NULL && (!json_is_array(access) || json_array_size(access) > KC_ACCESS_MAX)) {
        kc_error_set(err, KC_INTEGRITY, "vault metadata has a malformed access policy");
        goto cleanup;
    }
    json_array_foreach(access, i, entry)
    {
        const char *principal = NULL, *perms = NULL;
        kc_error why;
        if (json_unpack(entry, "{s:s, s:s}", "principal", &principal, "permissions", &perms) != 0 ||
            copy_str(m->access[i].principal, sizeof(m->access[i].principal), principal) ||
            kc_perms_parse_list(perms, &m->access[i].perms, &why) != KC_OK) {
            kc_error_set(err, KC_INTEGRITY, "vault metadata has a malformed access entry");
            goto cleanup;
        }
        m->naccess++;
    }
    if (copy_str(m->name, sizeof(m->name), name) ||
        copy_str(m->subscription, sizeof(m->subscription), sub) ||
        copy_str(m->region, sizeof(m->region), region) ||
        copy_str(m->created, sizeof(m->created), created) ||
        copy_str(m->updated, sizeof(m->updated), updated) ||
        copy_str(m->domain, sizeof(m->domain), domain) || kc_sku_parse(sku, &m->sku) != 0 || !sd) {
        kc_error_set(err, KC_INTEGRITY, "vault metadata has a field out of range");
        goto cleanup;
    }
    r = kc_vault_check_meta(m, err);
    if (r != KC_OK) {
        kc_error_prefix(err, "vault metadata is invalid");
        err->code = r = KC_INTEGRITY;
        goto cleanup;
    }
    r = KC_OK;
cleanup:
    json_decref(o);
    return r;
}

/* The vault metadata of tok, from its signed manifest (kept in *manifest
 * when not NULL; fp gets the vault key's fingerprint). expect_fp: a pinned
 * fingerprint, or NULL. */
static kc_rc read_meta(kc_tok *tok, const char *expect_fp, kc_vault_meta *out, json_t **manifest,
                       char fp[65], char digest[65], kc_error *err)
{
    json_t *m = NULL;
    unsigned long next = 1;
    kc_gendoc_ref ref;
    char *text;
    kc_rc r;

    if (manifest != NULL)
        *manifest = NULL;
    r = kc_manifest_read(tok, expect_fp, &m, fp, &next, &ref, err);
    if (r == KC_OK && digest != NULL)
        memcpy(digest, ref.digest, sizeof(ref.digest));
    if (r != KC_OK)
        return r;
    text = json_dumps(json_object_get(m, "vault"), JSON_COMPACT);
    r = text != NULL ? kc_vault_meta_decode((const unsigned char *)text, strlen(text), out, err)
                     : kc_error_set(err, KC_ERR, "out of memory");
    free(text);
    if (r == KC_OK && manifest != NULL)
        *manifest = m;
    else
        json_decref(m);
    return r;
}

kc_rc kc_vault_meta_reread(kc_vault *v, kc_error *err)
{
    char fp[65], digest[65];
    kc_vault_meta m;
    json_t *manifest = NULL;
    kc_rc r = read_meta(v->tok, v->fingerprint, &m, &manifest, fp, digest, err);

    if (r == KC_NOT_FOUND)
        return kc_vault_lost_sight(v, err);
    if (r == KC_OK) {
        v->meta = m;
        memcpy(v->manifest_digest, digest, sizeof(digest));
        json_decref(v->manifest);
        v->manifest = manifest;
    }
    return r;
}

kc_rc kc_vault_login(kc_vault *v, kc_error *err)
{
    kc_rc r = kc_ctx_login(v->ctx, v->tok, err);

    if (r == KC_OK && !v->current_checked) {
        r = kc_manifest_check_current(v, err);
        v->current_checked = r == KC_OK;
    }
    return r;
}

kc_rc kc_vault_lost_sight(const kc_vault *v, kc_error *err)
{
    kc_error_set(err, KC_TOKEN,
                 "vault '%s': the module no longer finds the manifest this command opened the "
                 "vault with (generation %lu): it failed while other processes wrote the token",
                 v->meta.name, v->meta.generation);
    kc_error_hint(err, "SoftHSM 2.6.1 does so now and then under parallel writers, until the "
                       "process starts again: run the command again");
    return KC_TOKEN;
}

/* Writes v->meta as the next generation of the signed manifest. */
static kc_rc write_meta(kc_vault *v, kc_error *err)
{
    kc_rc r = kc_manifest_write(v, &v->meta, err);
    char fp[sizeof(v->fingerprint)];

    if (r != KC_OK)
        return r;
    /* written: a vault key this command knew already does not change with
     * it, and a token failing now does not undo the write */
    r = kc_manifest_fingerprint(v->tok, fp, err);
    if (r == KC_OK)
        memcpy(v->fingerprint, fp, sizeof(fp));
    else if (v->fingerprint[0] != '\0') {
        kc_error_clear(err);
        r = KC_OK;
    }
    return r;
}

kc_rc kc_vault_authorize(const kc_vault *v, const char *principal, unsigned perm, kc_error *err)
{
    char name[32];
    size_t i;

    if (v->meta.naccess == 0)
        return KC_OK;
    kc_perms_format(perm, name, sizeof(name));
    if (principal == NULL || *principal == '\0') {
        kc_error_set(err, KC_DENIED,
                     "vault '%s' has an access policy; '%s' needs a principal "
                     "that holds it",
                     v->meta.name, name);
        kc_error_hint(err,
                      "say who acts with --as PRINCIPAL (or KEYCUSTODY_PRINCIPAL); see "
                      "'keycustody access show %s'",
                      v->meta.name);
        return KC_DENIED;
    }
    for (i = 0; i < v->meta.naccess; i++) {
        if (strcmp(v->meta.access[i].principal, principal) != 0)
            continue;
        if ((v->meta.access[i].perms & perm) == perm)
            return KC_OK;
        break;
    }
    kc_error_set(err, KC_DENIED, "principal '%s' lacks '%s' on vault '%s'", principal, name,
                 v->meta.name);
    kc_error_hint(err,
                  "grant it with 'keycustody access set %s --principal %s --permissions "
                  "%s', or act as a principal that holds it",
                  v->meta.name, principal, name);
    return KC_DENIED;
}

kc_rc kc_vault_save_meta(kc_vault *v, kc_error *err)
{
    time_t now;
    kc_rc r = kc_clock_now(&now, err);

    if (r != KC_OK)
        return r;
    kc_time_format_rfc3339(now, v->meta.updated);
    r = write_meta(v, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot write the metadata of vault '%s'", v->meta.name);
    return KC_OK;
}

static kc_rc vault_new(kc_ctx *ctx, kc_tok *tok, const kc_vault_meta *m, kc_vault **out,
                       kc_error *err)
{
    kc_vault *v = calloc(1, sizeof(*v));

    if (v == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    v->ctx = ctx;
    v->tok = tok;
    v->meta = *m;
    *out = v;
    return KC_OK;
}

void kc_vault_free(kc_vault *v)
{
    if (v == NULL)
        return;
    json_decref(v->state);
    json_decref(v->manifest);
    free(v);
}

/* An empty name would match a free token's empty label. */
static kc_rc check_named(const char *name_or_uri, kc_error *err)
{
    if (name_or_uri != NULL && name_or_uri[0] != '\0')
        return KC_OK;
    kc_error_set(err, KC_USAGE, "no vault named: an empty name is not a vault's");
    kc_error_hint(err, "give the vault's name (its token label) or a pkcs11: URI");
    return KC_USAGE;
}

/* The vault on tok, which the lookup of name_or_uri gave with r. */
static kc_rc open_on(kc_ctx *ctx, const char *name_or_uri, kc_tok *tok, kc_rc r, kc_vault **out,
                     kc_error *err)
{
    kc_vault_meta m;
    json_t *manifest = NULL;
    char fp[65] = "", digest[65] = "";

    /* a command that changes vaults reads their state under this host's lock */
    if (r == KC_OK && ctx->lock_vaults)
        r = kc_ctx_lock_token(ctx, tok, err);
    if (r == KC_OK)
        r = read_meta(tok, kc_ctx_pinned_fingerprint(ctx, kc_tok_info_get(tok)->label), &m,
                      &manifest, fp, digest, err);
    if (r == KC_NOT_FOUND && tok != NULL)
        kc_error_hint(err,
                      "make it one with 'keycustody vault init %s --subscription ID "
                      "--region REGION'",
                      kc_tok_info_get(tok)->label);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot open vault '%s'", name_or_uri);
    if (strcmp(m.name, kc_tok_info_get(tok)->label) != 0) {
        json_decref(manifest);
        return kc_error_set(err, KC_INTEGRITY, "token '%s' holds the metadata of vault '%s'",
                            kc_tok_info_get(tok)->label, m.name);
    }
    r = vault_new(ctx, tok, &m, out, err);
    if (r == KC_OK) {
        (*out)->manifest = manifest;
        memcpy((*out)->fingerprint, fp, sizeof(fp));
        memcpy((*out)->manifest_digest, digest, sizeof(digest));
        /* first use: pinned from now on, in this process and by the caller */
        if (kc_ctx_pinned_fingerprint(ctx, m.name) == NULL) {
            kc_error ignored;
            if (kc_ctx_pin_fingerprint(ctx, m.name, fp, &ignored) == KC_OK && ctx->seen_fn != NULL)
                ctx->seen_fn(ctx->seen_arg, m.name, fp);
        }
    } else {
        json_decref(manifest);
    }
    return r;
}

kc_rc kc_vault_reread(kc_vault *v, kc_error *err)
{
    kc_vault_meta m;
    json_t *manifest = NULL;
    char fp[65] = "", digest[65] = "";
    kc_rc r = kc_ctx_wait_token(v->ctx, v->tok, err);

    if (r == KC_OK)
        r = read_meta(v->tok, kc_ctx_pinned_fingerprint(v->ctx, v->meta.name), &m, &manifest, fp,
                      digest, err);
    if (r == KC_OK && strcmp(m.name, v->meta.name) != 0)
        r = kc_error_set(err, KC_INTEGRITY, "token '%s' holds the metadata of vault '%s'",
                         v->meta.name, m.name);
    if (r != KC_OK) {
        json_decref(manifest);
        return r;
    }
    json_decref(v->manifest);
    v->manifest = manifest;
    v->meta = m;
    memcpy(v->fingerprint, fp, sizeof(fp));
    memcpy(v->manifest_digest, digest, sizeof(digest));
    v->current_checked = 0;
    return KC_OK;
}

kc_rc kc_vault_open(kc_ctx *ctx, const char *name_or_uri, kc_vault **out, kc_error *err)
{
    kc_tok *tok = NULL;
    kc_rc r;

    *out = NULL;
    r = check_named(name_or_uri, err);
    if (r != KC_OK)
        return r;
    r = kc_p11_token(ctx->p11, name_or_uri, &tok, err);
    return open_on(ctx, name_or_uri, tok, r, out, err);
}

kc_rc kc_vault_open_listed(kc_ctx *ctx, const kc_tok_info *toks, size_t n, const char *name_or_uri,
                           kc_vault **out, kc_error *err)
{
    kc_tok *tok = NULL;
    kc_rc r;

    *out = NULL;
    r = check_named(name_or_uri, err);
    if (r != KC_OK)
        return r;
    r = kc_p11_token_in_list(ctx->p11, toks, n, name_or_uri, &tok, err);
    return open_on(ctx, name_or_uri, tok, r, out, err);
}

/* A token whose module cannot hold a vault (no EC P-256 or RSA-PSS to sign
 * the manifest, no data objects, no HMAC for the audit seal) is refused before
 * anything is made on it: asked of the module, on session objects
 * (kc_tok_probe), not assumed. */
static kc_rc can_hold_vault(kc_tok *tok, kc_error *err)
{
    const char *module = kc_tok_info_get(tok)->module;
    size_t n = strlen(module);
    kc_feature f[KC_FEATURES_MAX];
    kc_probe p;
    kc_rc r;

    /* Through a p11-kit server the arrangement would be what its client
     * carries (no AES key wrap, no AES-GCM), signed into the vault for
     * good, whatever the module behind it can do. */
    if (n >= 17 && strcmp(module + n - 17, "p11-kit-client.so") == 0) {
        kc_error_set(err, KC_TOKEN,
                     "a vault is not made through a p11-kit server: its client carries no AES "
                     "key wrap or AES-GCM, and the vault would keep hsm keys non-extractable "
                     "and without backups for good, whatever the module behind it can do; "
                     "nothing was made");
        kc_error_hint(err, "run 'vault init' where the token's module is loaded directly, then "
                           "reach the vault through the server");
        return KC_TOKEN;
    }
    r = kc_tok_probe(tok, 0, &p, err);

    if (r != KC_OK)
        return r;
    (void)kc_module_features(&p, f);
    kc_probe_release(&p);
    if (f[0].support != KC_NOT_POSSIBLE)
        return KC_OK;
    kc_error_set(err, KC_TOKEN,
                 "module '%s' cannot hold a vault: %s; nothing was made on token '%s'",
                 kc_tok_info_get(tok)->module, f[0].why,
                 kc_tok_info_get(tok)->initialized ? kc_tok_info_get(tok)->label : "(free)");
    kc_error_hint(err, "see what the module can do with 'keycustody module check' and the same "
                       "--module");
    return KC_TOKEN;
}

static kc_rc choose_arrangement(kc_tok *tok, kc_arrangement *a, kc_error *err)
{
    kc_probe p;
    kc_rc r;

    r = kc_tok_probe(tok, KC_PROBE_VAULT, &p, err);

    if (r != KC_OK) /* a call broke: not an answer about the module */
        return r;
    r = kc_probe_arrangement(&p, a, err);
    kc_probe_release(&p);
    if (r != KC_OK) {
        kc_error_prefix(err, "module '%s' cannot hold a vault", kc_tok_info_get(tok)->module);
        kc_error_hint(err, "see what the module can do with 'keycustody module check' and the "
                           "same --module");
    }
    return r;
}

static kc_rc init_free_token(kc_ctx *ctx, const kc_vault_meta *want, const char *token_uri,
                             kc_tok **out, kc_error *err)
{
    kc_secret *so = NULL, *user = NULL;
    kc_tok *tok = NULL;
    kc_rc r;

    r = kc_p11_free_token_for(ctx->p11, want->name, token_uri, &tok, err);
    if (r == KC_OK)
        r = can_hold_vault(tok, err);
    if (r != KC_OK)
        goto cleanup;
    r = kc_ctx_pin(ctx, want->name, KC_PIN_NEW_SO, &so, err);
    if (r == KC_OK)
        r = kc_ctx_pin(ctx, want->name, KC_PIN_NEW_USER, &user, err);
    if (r != KC_OK)
        goto cleanup;
    r = kc_tok_init_token(tok, want->name, so, err);
    if (r == KC_OK)
        r = kc_tok_init_pin(tok, so, user, err);
    if (r != KC_OK)
        goto cleanup;
    *out = tok;
cleanup:
    kc_secret_free(so);
    kc_secret_free(user);
    return r;
}

/* A token to adopt: logged in as the user. One that an earlier init left
 * part-made has its SO finish it: a factory SO PIN still to be changed
 * (CKF_SO_PIN_TO_BE_CHANGED: openCryptoki after C_InitToken) becomes the
 * one given, and a missing user PIN is set. */
static kc_rc adopt_token(kc_ctx *ctx, kc_tok *tok, kc_error *err)
{
    const kc_tok_info *ti = kc_tok_info_get(tok);
    const char *name = ti->label;
    kc_secret *so = NULL, *user = NULL;
    kc_rc r;

    if (ti->user_pin_initialized && !ti->so_pin_to_be_changed)
        return kc_ctx_login(ctx, tok, err);
    r = kc_ctx_pin(ctx, name, KC_PIN_SO, &so, err);
    if (r == KC_OK)
        r = kc_tok_finish_so_pin(tok, so, err);
    if (r == KC_OK && !ti->user_pin_initialized) {
        r = kc_ctx_pin(ctx, name, KC_PIN_NEW_USER, &user, err);
        if (r == KC_OK)
            r = kc_tok_init_pin(tok, so, user, err);
    } else if (r == KC_OK) {
        r = kc_ctx_login(ctx, tok, err);
    }
    kc_secret_free(so);
    kc_secret_free(user);
    return r;
}

kc_rc kc_vault_init(kc_ctx *ctx, const kc_vault_meta *want, const char *token_uri, kc_vault **out,
                    int *adopted, kc_error *err)
{
    kc_vault_meta m = *want, existing;
    kc_tok *tok = NULL;
    kc_vault *v = NULL;
    kc_obj audit_key;
    char fp[65];
    time_t now;
    kc_error lookup;
    kc_rc r;

    *out = NULL;
    *adopted = 0;
    r = kc_vault_check_meta(want, err);
    if (r != KC_OK)
        return r;
    r = kc_clock_now(&now, err);
    if (r != KC_OK)
        return r;
    kc_time_format_rfc3339(now, m.created);
    memcpy(m.updated, m.created, sizeof(m.updated));
    m.schema = KC_VAULT_SCHEMA;

    r = kc_p11_token_if_any(ctx->p11, want->name, &tok, &lookup);
    if (r == KC_OK) {
        if (token_uri != NULL)
            return kc_error_set(err, KC_CONFLICT,
                                "a token labelled '%s' exists already; "
                                "--token selects a free token to initialise",
                                want->name);
        r = read_meta(tok, NULL, &existing, NULL, fp, NULL, err);
        if (r == KC_OK) {
            kc_error_set(err, KC_CONFLICT,
                         "vault '%s' is already initialised (subscription "
                         "'%s', region '%s')",
                         want->name, existing.subscription, existing.region);
            kc_error_hint(err, "see it with 'keycustody vault show %s'", want->name);
            return KC_CONFLICT;
        }
        if (r != KC_NOT_FOUND)
            return kc_error_prefix(err, "cannot adopt token '%s'", want->name);
        kc_error_clear(err);
        r = can_hold_vault(tok, err);
        if (r == KC_OK)
            r = adopt_token(ctx, tok, err);
        if (r != KC_OK)
            return kc_error_prefix(err, "cannot adopt token '%s'", want->name);
        *adopted = 1;
    } else if (r == KC_NOT_FOUND) {
        r = init_free_token(ctx, want, token_uri, &tok, err);
        if (r != KC_OK)
            return kc_error_prefix(err, "cannot initialise vault '%s'", want->name);
    } else {
        *err = lookup;
        return r;
    }
    /* How this module will keep the vault, asked of it now that the user
     * is logged in (private session objects), and signed into the vault's
     * metadata: every later command does as the vault says. */
    r = choose_arrangement(tok, &m.arr, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot initialise vault '%s'", want->name);
    /* The audit key first: a token becomes a vault only with one (a rerun
     * after a failure here adopts the token and finds or makes it). */
    r = kc_audit_key(tok, 1, &audit_key, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot make the audit key of vault '%s'", want->name);
    r = vault_new(ctx, tok, &m, &v, err);
    if (r == KC_OK)
        r = write_meta(v, err);
    /* The key state's first generation now, with no key in it: every later
     * write of it then commits over the one it read (kc_gendoc.h), which
     * holds across hosts; a first write has nothing to commit over. */
    if (r == KC_OK)
        r = kc_keystate_load(v, err);
    if (r == KC_OK && json_integer_value(json_object_get(v->state, "generation")) == 0)
        r = kc_keystate_save(v, err);
    if (r != KC_OK) {
        kc_vault_free(v);
        return kc_error_prefix(err, "cannot write the metadata of vault '%s'", want->name);
    }
    *out = v;
    return KC_OK;
}

kc_rc kc_vault_list(kc_ctx *ctx, kc_vault_entry **out, size_t *n, kc_error *err)
{
    kc_tok_info *toks = NULL;
    kc_vault_entry *v = NULL;
    kc_tok *tok = NULL;
    kc_error why;
    size_t count = 0, i;
    kc_rc r;

    *out = NULL;
    *n = 0;
    r = kc_p11_list_tokens(ctx->p11, &toks, &count, err);
    if (r != KC_OK)
        return r;
    v = calloc(count + 1, sizeof(*v));
    if (v == NULL) {
        free(toks);
        return kc_error_set(err, KC_ERR, "out of memory");
    }
    for (i = 0; i < count; i++) {
        v[i].token = toks[i];
        if (!toks[i].initialized) {
            snprintf(v[i].note, sizeof(v[i].note), "free token, not initialised");
            continue;
        }
        /* a read-only token (p11-kit's trust module) cannot hold a vault,
         * and keycustody's read-write session is refused there: not an error */
        if (toks[i].write_protected) {
            snprintf(v[i].note, sizeof(v[i].note), "write-protected token: not a vault");
            continue;
        }
        kc_error_clear(&why);
        /* By its slot, so two tokens with one label are still told apart,
         * and without another pass over every slot per token */
        if (kc_p11_token_listed(ctx->p11, &toks[i], &tok, &why) == KC_OK &&
            read_meta(tok, kc_ctx_pinned_fingerprint(ctx, toks[i].label), &v[i].meta, NULL,
                      v[i].fingerprint, NULL, &why) == KC_OK) {
            v[i].is_vault = strcmp(v[i].meta.name, toks[i].label) == 0;
            if (!v[i].is_vault)
                snprintf(v[i].note, sizeof(v[i].note), "holds the metadata of vault '%s'",
                         v[i].meta.name);
        } else if (why.code != KC_NOT_FOUND) {
            kc_error_format(&why, v[i].note, sizeof(v[i].note));
        }
    }
    free(toks);
    *out = v;
    *n = count;
    return KC_OK;
}

kc_rc kc_vault_own_secret(kc_vault *v, const char *label, const unsigned char *id, size_t id_len,
                          kc_where where, kc_obj *out, size_t *n, kc_error *err)
{
    kc_obj found[2];
    size_t others = 0;
    kc_rc r = kc_tok_find_secrets(v->tok, label, id, id_len, where, found, 2, n, &others, err);

    if (r != KC_OK)
        return r;
    if (others > 0 || *n > 1) {
        kc_error_set(err, KC_INTEGRITY,
                     "vault '%s' holds %zu secret key(s) labelled '%s' that keycustody did not "
                     "make there (%s): the token was tampered with, and none of them is used",
                     v->meta.name, others > 0 ? others : *n - 1, label,
                     where == KC_WHERE_TRUSTED ? "not trusted by the security officer"
                                               : "public, or a second copy");
        kc_error_hint(err, "keep a copy of the token for investigation, then remove them "
                           "(pkcs11-tool --list-objects shows them)");
        return KC_INTEGRITY;
    }
    if (*n == 1)
        *out = found[0];
    return KC_OK;
}
