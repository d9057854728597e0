/* Features from probed facts (kc_module.h). Each judgement names the facts
 * it rests on, so that 'module check' says why, in the module's own answer. */
#include "kc_module.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *kc_support_name(kc_support s)
{
    switch (s) {
    case KC_WORKS:
        return "works";
    case KC_WORKS_DIFFERENTLY:
        return "works differently";
    case KC_NOT_POSSIBLE:
        return "not possible";
    default:
        return "not asked";
    }
}

/* Judges a feature that needs every fact in ids[]: the first that is NO
 * makes it not possible (its detail says why), then the first UNKNOWN makes
 * it not asked; else it works. */
static void need(kc_feature *f, const kc_probe *p, const char *name, const char *const *ids)
{
    const kc_probe_fact *unknown = NULL, *fact;
    const char *unasked = NULL; /* the first fact not asked at all */
    size_t i;

    f->name = name;
    f->support = KC_WORKS;
    snprintf(f->why, sizeof(f->why), "%s", "");
    for (i = 0; ids[i] != NULL; i++) {
        fact = kc_probe_get(p, ids[i]);
        if (fact == NULL) {
            if (unasked == NULL)
                unasked = ids[i];
            continue;
        }
        if (fact->cap == KC_CAP_UNKNOWN) {
            if (unknown == NULL)
                unknown = fact;
            continue;
        }
        if (fact->cap == KC_CAP_NO) {
            f->support = KC_NOT_POSSIBLE;
            snprintf(f->why, sizeof(f->why), "%s: %s", fact->id, fact->detail);
            return;
        }
    }
    if (unknown != NULL) {
        f->support = KC_NOT_ASKED;
        snprintf(f->why, sizeof(f->why), "%s: %s", unknown->id, unknown->detail);
    } else if (unasked != NULL || ids[0] == NULL) {
        f->support = KC_NOT_ASKED;
        snprintf(f->why, sizeof(f->why), "%s: not asked by this probe", unasked ? unasked : "");
    }
}

static void note(kc_feature *f, kc_support s, const char *fmt, ...) KC_PRINTF(3, 4);

static void note(kc_feature *f, kc_support s, const char *fmt, ...)
{
    va_list ap;

    f->support = s;
    va_start(ap, fmt);
    vsnprintf(f->why, sizeof(f->why), fmt, ap);
    va_end(ap);
}

/* Features judged on OAEP SHA-256 (domain, BYOK, DEPs) also work with
 * SHA-1: differently, saying so. */
static void oaep_either(const kc_probe *p, kc_feature *f, size_t n)
{
    size_t i;

    if (kc_probe_cap(p, "rsa_oaep.sha256") != KC_CAP_NO ||
        kc_probe_cap(p, "rsa_oaep.sha1") != KC_CAP_YES)
        return;
    for (i = 0; i < n; i++) {
        if (f[i].support != KC_NOT_POSSIBLE || strncmp(f[i].why, "rsa_oaep.sha256", 15) != 0 ||
            strstr(f[i].name, "SHA-256") != NULL)
            continue;
        note(&f[i], KC_WORKS_DIFFERENTLY,
             "RSA-OAEP with SHA-1 only: the module refuses SHA-256 (%s)",
             kc_probe_get(p, "rsa_oaep.sha256")->detail);
    }
}

/* The vault key: EC P-256 where the module has it, else RSA-PSS
 * (kc_probe_arrangement chooses the same way). */
static void vault_signer(const kc_probe *p, kc_feature *f)
{
    if (f->support == KC_NOT_POSSIBLE)
        return;
    if (kc_probe_cap(p, "mech.ec_keygen") == KC_CAP_YES && kc_probe_cap(p, "mech.ecdsa") == KC_CAP_YES)
        return;
    if (kc_probe_cap(p, "mech.rsa_pss") == KC_CAP_YES && kc_probe_cap(p, "mech.rsa_keygen") == KC_CAP_YES) {
        if (f->support == KC_WORKS)
            note(f, KC_WORKS_DIFFERENTLY,
                 "the vault key is RSA-3072 signing with PSS: mech.ec_keygen: %s",
                 kc_probe_get(p, "mech.ec_keygen")->detail);
        return;
    }
    note(f, KC_NOT_POSSIBLE, "no key to sign the manifest: mech.ec_keygen: %s; mech.rsa_pss: %s",
         kc_probe_get(p, "mech.ec_keygen")->detail, kc_probe_get(p, "mech.rsa_pss")->detail);
}

/* Without the trusted-key arrangement an hsm key is made non-extractable,
 * and what needs it extractable says so. */
static int trusted_arrangement(const kc_probe *p)
{
    return kc_probe_cap(p, "wrap_with_trusted.enforced") == KC_CAP_YES &&
           kc_probe_cap(p, "trusted.user_refused") == KC_CAP_YES &&
           kc_probe_cap(p, "trusted.supported") != KC_CAP_NO &&
           kc_probe_cap(p, "attr.unwrap_template") == KC_CAP_YES;
}

static const char *first_missing(const kc_probe *p, const char *const *ids, char *buf, size_t cap)
{
    size_t i;

    for (i = 0; ids[i] != NULL; i++)
        if (kc_probe_cap(p, ids[i]) == KC_CAP_NO) {
            snprintf(buf, cap, "%s: %s", ids[i], kc_probe_get(p, ids[i])->detail);
            return buf;
        }
    return NULL;
}

size_t kc_module_features(const kc_probe *p, kc_feature out[KC_FEATURES_MAX])
{
    static const char *const vault[] = {"data.public", "data.private", "mech.hmac_sha256",
                                        "mech.generic_keygen", NULL};
    static const char *const hsm[] = {"mech.rsa_keygen", "wrap_with_trusted.accepted",
                                      "wrap_with_trusted.enforced", "trusted.user_refused",
                                      "attr.unwrap_template", NULL};
    static const char *const trusted[] = {"wrap_with_trusted.accepted",
                                          "wrap_with_trusted.enforced", "trusted.user_refused",
                                          "trusted.supported", "attr.unwrap_template", NULL};
    static const char *const sha1[] = {"rsa_oaep.sha1", NULL};
    static const char *const sha256[] = {"rsa_oaep.sha256", NULL};
    static const char *const domain[] = {"aes_key_wrap.rfc5649", "wrap_with_trusted.enforced",
                                         "trusted.user_refused", "trusted.supported", "rsa_oaep.sha256", NULL};
    static const char *const backup[] = {"aes_key_wrap.rfc5649", "wrap_with_trusted.enforced",
                                         "mech.aes_gcm", "mech.hmac_sha256", NULL};
    static const char *const soft_backup[] = {"mech.aes_cbc_pad_wrap", "mech.hmac_sha256",
                                              "rsa_oaep.sha256", NULL};
    /* rsa_oaep.sha256 last: SHA-1 does instead (oaep_either), so a want of
     * it must not hide another that nothing does instead */
    static const char *const byok[] = {"aes_key_wrap.rfc5649", "rsa_oaep.sha256", NULL};
    static const char *const dep[] = {"unwrap.readable_template", "mech.hmac_sha256",
                                      "rsa_oaep.sha256", NULL};
    static const char *const audit[] = {"mech.hmac_sha256", "mech.generic_keygen", NULL};
    char why[sizeof(out[0].why)];
    size_t n = 0;

    need(&out[n++], p, "vault", vault);
    /* asked on free tokens only (kc_tok_probe): unknown elsewhere */
    if (out[n - 1].support != KC_NOT_POSSIBLE && kc_probe_cap(p, "data.token") == KC_CAP_NO)
        note(&out[n - 1], KC_NOT_POSSIBLE, "data.token: %s", kc_probe_get(p, "data.token")->detail);
    vault_signer(p, &out[n - 1]);
    if (kc_probe_cap(p, "data.mutable") == KC_CAP_YES && out[n - 1].support == KC_WORKS)
        note(&out[n - 1], KC_WORKS,
             "data objects can change in place; keycustody still writes generations");
    need(&out[n++], p, "hsm keys", hsm);
    if (out[n - 1].support == KC_NOT_POSSIBLE &&
        kc_probe_cap(p, "mech.rsa_keygen") == KC_CAP_YES) {
        snprintf(why, sizeof(why), "%s", out[n - 1].why);
        note(&out[n - 1], KC_WORKS_DIFFERENTLY,
             "made non-extractable, so never backed up: %s", why);
    }
    if (out[n - 1].support != KC_NOT_POSSIBLE &&
        kc_probe_cap(p, "copy.usage_locked") == KC_CAP_NO) {
        snprintf(why, sizeof(why), "%s", out[n - 1].why);
        note(&out[n - 1], KC_WORKS_DIFFERENTLY,
             "%s%sthe user PIN can copy a key with other usages (sign, decrypt, derive), "
             "though never out of the token: copy.usage_locked",
             why, why[0] ? "; " : "");
    }
    need(&out[n++], p, "wrap/unwrap RSA-OAEP SHA-1", sha1);
    need(&out[n++], p, "wrap/unwrap RSA-OAEP SHA-256", sha256);
    need(&out[n++], p, "backup domain", domain);
    need(&out[n++], p, "backup/restore", backup);
    /* no trusted-key arrangement or no RFC 5649: software keys only,
     * wrapped with what the module has, the file authenticated by HMAC */
    if (out[n - 2].support == KC_NOT_POSSIBLE && first_missing(p, soft_backup, why, sizeof(why)) == NULL &&
        (!trusted_arrangement(p) || kc_probe_cap(p, "aes_key_wrap.rfc5649") == KC_CAP_NO)) {
        const char *lack = first_missing(p, trusted, why, sizeof(why));
        char cause[sizeof(out[0].why)];
        snprintf(cause, sizeof(cause), "%s",
                 lack != NULL ? lack : kc_probe_get(p, "aes_key_wrap.rfc5649")->detail);
        note(&out[n - 2], KC_WORKS_DIFFERENTLY,
             "for software keys only, wrapped with %s: %s",
             kc_probe_cap(p, "aes_key_wrap.rfc5649") == KC_CAP_YES ? "RFC 5649" : "AES-CBC-PAD",
             cause);
        note(&out[n - 1], KC_WORKS_DIFFERENTLY,
             "software keys only (hsm keys never leave this module), wrapped with %s%s",
             kc_probe_cap(p, "aes_key_wrap.rfc5649") == KC_CAP_YES ? "RFC 5649" : "AES-CBC-PAD",
             kc_probe_cap(p, "mech.aes_gcm") == KC_CAP_YES ? " and sealed with AES-GCM"
                                                            : "; the file is authenticated "
                                                              "with HMAC-SHA256 on the token");
    }
    if (out[n - 1].support == KC_WORKS &&
        kc_probe_cap(p, "aes_key_wrap.exact_length") == KC_CAP_NO)
        note(&out[n - 1], KC_WORKS_DIFFERENTLY,
             "aes_key_wrap.exact_length: %s; a backup made here restores here, and its "
             "wrapped key needs the zeros ignored elsewhere",
             kc_probe_get(p, "aes_key_wrap.exact_length")->detail);
    need(&out[n++], p, "BYOK", byok);
    need(&out[n++], p, "DEPs", dep);
    if (out[n - 1].support == KC_NOT_POSSIBLE &&
        strncmp(out[n - 1].why, "unwrap.readable_template", 24) == 0 &&
        kc_probe_cap(p, "unwrap.value_readable") == KC_CAP_YES)
        note(&out[n - 1], KC_WORKS_DIFFERENTLY,
             "a DEP key unwraps without CKA_SENSITIVE=FALSE in the template, and its value "
             "is read: %s",
             kc_probe_get(p, "unwrap.value_readable")->detail);
    need(&out[n++], p, "audit seal", audit);
    /* keycustody takes RSA-OAEP with SHA-256 where the module has it, else
     * SHA-1 (kc_oaep KC_OAEP_AUTO): what needs OAEP works with either */
    oaep_either(p, out, n);
    /* everything keycustody does lives in a vault */
    if (out[0].support == KC_NOT_POSSIBLE) {
        size_t i;
        for (i = 1; i < n; i++)
            note(&out[i], KC_NOT_POSSIBLE, "no vault on this module (%.280s)", out[0].why);
    }
    return n;
}
