#include "kc_domain.h"
#include "kc_key.h"
#include "kc_manifest.h"
#include "kc_util.h"

#include <jansson.h>
#include <libgfshare.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SHARE_ALG "RSA-OAEP" /* SHA-1: what SoftHSM custodian tokens can unwrap */

/* libgfshare draws its polynomial coefficients through this hook, and
 * gfshare_ctx_free overwrites its buffers with it before freeing them: it
 * must be set before any context is made, for splitting and joining alike. */
static void gf_rand(unsigned char *buf, unsigned int n)
{
    if (RAND_priv_bytes(buf, (int)n) != 1)
        abort(); /* no randomness: never split a secret with a guessable polynomial */
}

static void derive_id(const kc_secret *s, unsigned char id[KC_DOMAIN_ID_BYTES])
{
    static const char tag[] = "keycustody-domain-id";
    unsigned char md[32];
    EVP_MD_CTX *c = EVP_MD_CTX_new();

    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    EVP_DigestUpdate(c, tag, sizeof(tag));
    EVP_DigestUpdate(c, s->data, s->len);
    EVP_DigestFinal_ex(c, md, NULL);
    EVP_MD_CTX_free(c);
    memcpy(id, md, KC_DOMAIN_ID_BYTES);
}

/* The key check value binds the secret to the subscription's name, so a
 * file edited to name another subscription does not join there. */
static void derive_kcv(const kc_secret *s, const char *sub, char hex[33])
{
    static const char tag[] = "keycustody-domain-check"; /* its NUL separates the name */
    unsigned char msg[sizeof(tag) + 64], md[32];
    unsigned int len = sizeof(md);
    size_t sub_len = strnlen(sub, 64);

    memcpy(msg, tag, sizeof(tag));
    memcpy(msg + sizeof(tag), sub, sub_len);
    HMAC(EVP_sha256(), s->data, (int)s->len, msg, sizeof(tag) + sub_len, md, &len);
    kc_hex_encode(md, 16, hex);
}

/* One domain key's value: HMAC-SHA256(secret, label). */
static kc_secret *derive_key(const kc_secret *s, const char *label)
{
    kc_secret *k = kc_secret_new(32);
    unsigned int len = 32;

    if (k == NULL)
        return NULL;
    if (HMAC(EVP_sha256(), s->data, (int)s->len, (const unsigned char *)label, strlen(label),
             k->data, &len) == NULL) {
        kc_secret_free(k);
        return NULL;
    }
    k->len = 32;
    return k;
}

/* SHA-256 of the DER SubjectPublicKeyInfo: how a custodian is named. */
static kc_rc fingerprint(EVP_PKEY *pk, char hex[65], kc_error *err)
{
    return kc_spki_fingerprint(pk, hex, err);
}

static kc_rc load_public(const char *path, EVP_PKEY **out, kc_error *err)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    BIO *bio = NULL;
    X509 *cert = NULL;
    kc_rc r;

    *out = NULL;
    r = kc_file_read(path, 1 << 16, &buf, &len, err);
    if (r != KC_OK)
        return r;
    bio = BIO_new_mem_buf(buf, (int)len);
    *out = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    if (*out == NULL) {
        (void)BIO_reset(bio);
        cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (cert != NULL)
            *out = X509_get_pubkey(cert);
    }
    if (*out == NULL) {
        EVP_PKEY *priv;
        (void)BIO_reset(bio);
        priv = PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"");
        if (priv != NULL) {
            EVP_PKEY_free(priv);
            X509_free(cert);
            BIO_free(bio);
            OPENSSL_cleanse(buf, len);
            free(buf);
            kc_error_set(err, KC_USAGE, "custodian key '%s' holds a private key", path);
            kc_error_hint(err, "give the custodian's public key: openssl pkey -in KEY -pubout");
            return KC_USAGE;
        }
    }
    X509_free(cert);
    BIO_free(bio);
    free(buf);
    if (*out == NULL || EVP_PKEY_get_base_id(*out) != EVP_PKEY_RSA ||
        EVP_PKEY_get_bits(*out) < 2048) {
        EVP_PKEY_free(*out);
        *out = NULL;
        return kc_error_set(err, KC_USAGE,
                            "custodian key '%s' is not an RSA public key of 2048 "
                            "bits or more (PEM public key or certificate)",
                            path);
    }
    return KC_OK;
}

/* Each domain key: its label, where a genuine one is, what it is made as. */
typedef struct domain_key {
    const char *label;
    kc_where where;
    kc_secret_spec spec; /* label and id filled in by install */
    size_t slot;         /* offset of its handle in kc_domain_keys */
} domain_key;

#define SLOT(f) offsetof(kc_domain_keys, f)
static const domain_key domain_keys[] = {
    {KC_DOMAIN_WRAP_LABEL, KC_WHERE_TRUSTED, {.kind = KC_SECRET_AES, .trusted = 1, .wrap = 1},
     SLOT(wrap)},
    {KC_DOMAIN_UNWRAP_LABEL,
     KC_WHERE_PRIVATE,
     {.kind = KC_SECRET_AES, .is_private = 1, .unwrap = 1, .unwrap_into = KC_UNWRAP_HSM_RSA},
     SLOT(unwrap)},
    {KC_DOMAIN_SEAL_LABEL, KC_WHERE_PRIVATE, {.kind = KC_SECRET_AES, .is_private = 1, .encrypt = 1},
     SLOT(seal)},
    {KC_DOMAIN_SOFT_LABEL,
     KC_WHERE_PRIVATE,
     {.kind = KC_SECRET_AES,
      .is_private = 1,
      .wrap = 1,
      .unwrap = 1,
      .unwrap_into = KC_UNWRAP_SOFT_RSA},
     SLOT(soft)},
    {KC_DOMAIN_MAC_LABEL, KC_WHERE_PRIVATE, {.kind = KC_SECRET_HMAC, .is_private = 1, .sign = 1},
     SLOT(mac)},
};
#define NKEYS (sizeof(domain_keys) / sizeof(domain_keys[0]))

/* Whether v's arrangement has domain key k: the trusted wrap key and the
 * unwrap key that makes hsm keys only where hsm keys are extractable under
 * a trusted key; the seal key only with AES-GCM. */
static int key_needed(const kc_vault *v, const domain_key *k)
{
    if (k->spec.trusted || k->spec.unwrap_into == KC_UNWRAP_HSM_RSA)
        return !v->meta.arr.hsm_non_extractable;
    if (k->spec.encrypt)
        return !v->meta.arr.no_gcm;
    return 1;
}

/* The value of a domain key: the wrap and unwrap keys share one. */
static const char *value_label(const domain_key *k)
{
    return k->spec.unwrap_into == KC_UNWRAP_HSM_RSA ? KC_DOMAIN_WRAP_LABEL : k->label;
}

/* The genuine key k of domain id on v, if any (*n: how many). Objects with
 * its label that are not where a genuine one is (a public look-alike of a
 * private key, an untrusted wrap key) were planted by someone without the
 * PIN: tampering, and nothing is used. Needs the user logged in. */
static kc_rc find_key(kc_vault *v, const domain_key *k, const unsigned char *id, kc_obj *out,
                      size_t *n, kc_error *err)
{
    return kc_vault_own_secret(v, k->label, id, KC_DOMAIN_ID_BYTES, k->where, out, n, err);
}

/* Creates the domain objects the vault lacks; a re-run after a crash
 * finishes the job. */
static kc_rc install(kc_ctx *ctx, kc_vault *v, const kc_secret *secret, kc_error *err)
{
    unsigned char id[KC_DOMAIN_ID_BYTES];
    char idhex[33];
    kc_secret *value = NULL, *so = NULL;
    kc_secret_spec spec;
    kc_obj obj;
    size_t n = 0, i;
    kc_rc r;

    derive_id(secret, id);
    kc_hex_encode(id, sizeof(id), idhex);
    if (v->meta.domain[0] && strcmp(v->meta.domain, idhex) != 0) {
        kc_error_set(err, KC_CONFLICT, "vault '%s' holds another backup domain (%s)", v->meta.name,
                     v->meta.domain);
        return KC_CONFLICT;
    }
    r = kc_vault_login(v, err);
    for (i = 0; r == KC_OK && i < NKEYS; i++) {
        const domain_key *k = &domain_keys[i];
        if (!key_needed(v, k))
            continue;
        r = find_key(v, k, id, &obj, &n, err);
        if (r != KC_OK || n == 1)
            continue;
        value = derive_key(secret, value_label(k));
        if (value == NULL) {
            r = kc_error_set(err, KC_ERR, "out of memory");
            break;
        }
        spec = k->spec;
        spec.label = k->label;
        spec.id = id;
        spec.id_len = sizeof(id);
        if (spec.trusted) {
            /* only the SO makes a trusted key; the user logs in again after */
            r = kc_ctx_pin(ctx, v->meta.name, KC_PIN_SO, &so, err);
            if (r == KC_OK) {
                r = kc_tok_login_so(v->tok, so, err);
                if (r != KC_OK)
                    kc_ctx_event(ctx, "login-so", v->meta.name, NULL, err);
            }
            if (r == KC_OK)
                r = kc_tok_create_secret(v->tok, &spec, value, &obj, err);
            kc_tok_logout(v->tok);
            if (r == KC_OK)
                r = kc_vault_login(v, err);
        } else {
            r = kc_tok_create_secret(v->tok, &spec, value, &obj, err);
        }
        kc_secret_free(value);
        value = NULL;
    }
    if (r == KC_OK && strcmp(v->meta.domain, idhex) != 0) {
        memcpy(v->meta.domain, idhex, sizeof(idhex));
        r = kc_vault_save_meta(v, err);
    }
    kc_secret_free(so);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot install the backup domain on vault '%s'", v->meta.name);
    return KC_OK;
}

/* Takes back what install put on v for domain id (every domain key of that
 * id, and the vault's record of it), after a later vault failed: a domain
 * is on every vault of the command, or on none. Best effort: what stays is
 * reported by the caller's error and tidied by a later init. */
static void uninstall(kc_vault *v, const unsigned char id[KC_DOMAIN_ID_BYTES])
{
    char idhex[33];
    kc_error ignored;
    kc_obj obj;
    size_t n, i;

    kc_hex_encode(id, KC_DOMAIN_ID_BYTES, idhex);
    for (i = 0; i < NKEYS; i++) {
        n = 0;
        kc_error_clear(&ignored);
        if (kc_tok_find_secrets(v->tok, domain_keys[i].label, id, KC_DOMAIN_ID_BYTES,
                                domain_keys[i].where, &obj, 1, &n, NULL, &ignored) == KC_OK &&
            n == 1 && kc_tok_destroy(v->tok, obj, &ignored) != KC_OK)
            kc_error_clear(&ignored);
    }
    if (strcmp(v->meta.domain, idhex) == 0) {
        v->meta.domain[0] = '\0';
        if (kc_vault_save_meta(v, &ignored) != KC_OK)
            kc_error_clear(&ignored);
    }
}

/* Before anything is installed: the user and the security officer of v
 * can log in (install needs both), so a wrong PIN on the last vault stops
 * the command before the first is changed. */
static kc_rc logins_hold(kc_ctx *ctx, kc_vault *v, kc_error *err)
{
    kc_secret *so = NULL;
    kc_rc r = kc_vault_login(v, err);

    if (r == KC_OK)
        r = kc_ctx_pin(ctx, v->meta.name, KC_PIN_SO, &so, err);
    if (r == KC_OK) {
        r = kc_tok_login_so(v->tok, so, err);
        if (r != KC_OK)
            kc_ctx_event(ctx, "login-so", v->meta.name, NULL, err);
        kc_tok_logout(v->tok);
    }
    kc_secret_free(so);
    if (r == KC_OK)
        r = kc_vault_login(v, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "vault '%s'", v->meta.name);
    return KC_OK;
}

/* Opens vault and checks it belongs to sub. */
static kc_rc open_member(kc_ctx *ctx, const char *sub, const char *name, kc_vault **out,
                         kc_error *err)
{
    kc_rc r = kc_vault_open(ctx, name, out, err);

    if (r != KC_OK)
        return r;
    if (strcmp((*out)->meta.subscription, sub) != 0) {
        kc_error_set(err, KC_INTEGRITY, "vault '%s' belongs to subscription '%s', not '%s'", name,
                     (*out)->meta.subscription, sub);
        kc_error_hint(err, "a backup domain is shared only by the vaults of one subscription");
        kc_vault_free(*out);
        *out = NULL;
        return KC_INTEGRITY;
    }
    return KC_OK;
}

static kc_rc encrypt_share(EVP_PKEY *pk, const unsigned char *share, size_t len, char **b64,
                           kc_error *err)
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(pk, NULL);
    unsigned char out[1024];
    size_t outlen = sizeof(out);
    kc_rc r = KC_OK;

    if (c == NULL || EVP_PKEY_encrypt_init(c) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(c, EVP_sha1()) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(c, EVP_sha1()) <= 0 ||
        EVP_PKEY_encrypt(c, out, &outlen, share, len) <= 0 ||
        (*b64 = kc_b64url_encode(out, outlen)) == NULL)
        r = kc_error_set(err, KC_ERR, "cannot encrypt a share to its custodian");
    EVP_PKEY_CTX_free(c);
    return r;
}

kc_rc kc_domain_init(kc_ctx *ctx, const char *sub, const char *const *vaults, size_t nvaults,
                     const char *const *pems, size_t ncust, unsigned quorum, char **file,
                     kc_error *err)
{
    EVP_PKEY *pub[KC_DOMAIN_MAX_CUSTODIANS] = {NULL};
    kc_vault *v[KC_DOMAIN_MAX_CUSTODIANS] = {NULL};
    unsigned char sharenrs[KC_DOMAIN_MAX_CUSTODIANS], id[KC_DOMAIN_ID_BYTES];
    char fp[65], idhex[33], kcv[33], now_s[21], *b64 = NULL;
    kc_secret *secret = NULL, *share = NULL;
    gfshare_ctx *gf = NULL;
    json_t *doc = NULL, *shares;
    time_t now;
    size_t i, j;
    kc_rc r = KC_OK;

    *file = NULL;
    if (nvaults == 0 || nvaults > KC_DOMAIN_MAX_CUSTODIANS)
        return kc_error_set(err, KC_USAGE, "give 1 to %d vaults", KC_DOMAIN_MAX_CUSTODIANS);
    if (ncust == 0 || ncust > KC_DOMAIN_MAX_CUSTODIANS)
        return kc_error_set(err, KC_USAGE, "give 1 to %d custodians", KC_DOMAIN_MAX_CUSTODIANS);
    if (quorum < 1 || quorum > ncust)
        return kc_error_set(err, KC_USAGE,
                            "a quorum of %u from %zu custodians is impossible; "
                            "give --quorum 1 to %zu",
                            quorum, ncust, ncust);
    r = kc_clock_now(&now, err);
    /* Everything that can be checked is checked before a secret exists. */
    for (i = 0; r == KC_OK && i < ncust; i++) {
        r = load_public(pems[i], &pub[i], err);
        for (j = 0; r == KC_OK && j < i; j++)
            if (EVP_PKEY_eq(pub[i], pub[j]) == 1)
                r = kc_error_set(err, KC_USAGE, "custodians '%s' and '%s' are the same key",
                                 pems[j], pems[i]);
    }
    for (i = 0; r == KC_OK && i < nvaults; i++) {
        r = open_member(ctx, sub, vaults[i], &v[i], err);
        if (r == KC_OK && v[i]->meta.domain[0]) {
            kc_error_set(err, KC_CONFLICT, "vault '%s' holds a backup domain already (%s)",
                         vaults[i], v[i]->meta.domain);
            kc_error_hint(err, "new vaults join it with 'keycustody subscription join'");
            r = KC_CONFLICT;
        }
    }
    for (i = 0; r == KC_OK && i < nvaults; i++)
        r = logins_hold(ctx, v[i], err);
    if (r != KC_OK)
        goto done;

    secret = kc_secret_new(KC_DOMAIN_SECRET_BYTES);
    share = kc_secret_new(KC_DOMAIN_SECRET_BYTES);
    if (secret == NULL || share == NULL ||
        RAND_priv_bytes(secret->data, KC_DOMAIN_SECRET_BYTES) != 1) {
        r = kc_error_set(err, KC_ERR, "cannot make the domain secrets");
        goto done;
    }
    secret->len = KC_DOMAIN_SECRET_BYTES;
    derive_id(secret, id);
    kc_hex_encode(id, sizeof(id), idhex);
    derive_kcv(secret, sub, kcv);
    kc_time_format_rfc3339(now, now_s);

    /* The file first, in memory: a domain must never be installed without
     * the shares that can bring it back. */
    gfshare_fill_rand = gf_rand;
    for (i = 0; i < ncust; i++)
        sharenrs[i] = (unsigned char)(i + 1);
    gf = gfshare_ctx_init_enc(sharenrs, (unsigned)ncust, (unsigned char)quorum,
                              KC_DOMAIN_SECRET_BYTES);
    if (gf == NULL) {
        r = kc_error_set(err, KC_ERR, "cannot split the domain secrets");
        goto done;
    }
    gfshare_ctx_enc_setsecret(gf, secret->data);
    doc = json_pack("{s:s, s:i, s:s, s:s, s:i, s:s, s:s, s:[]}", "format",
                    "keycustody-security-domain", "version", 2, "subscription", sub, "domain_id",
                    idhex, "quorum", (int)quorum, "kcv", kcv, "created", now_s, "shares");
    shares = json_object_get(doc, "shares");
    for (i = 0; r == KC_OK && i < ncust; i++) {
        gfshare_ctx_enc_getshare(gf, (unsigned char)i, share->data);
        r = fingerprint(pub[i], fp, err);
        if (r == KC_OK)
            r = encrypt_share(pub[i], share->data, KC_DOMAIN_SECRET_BYTES, &b64, err);
        if (r == KC_OK)
            json_array_append_new(shares,
                                  json_pack("{s:i, s:s, s:s, s:s}", "index", (int)(i + 1),
                                            "custodian", fp, "alg", SHARE_ALG, "value", b64));
        free(b64);
        b64 = NULL;
    }
    OPENSSL_cleanse(share->data, KC_DOMAIN_SECRET_BYTES);
    if (r != KC_OK)
        goto done;
    *file = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    for (i = 0; r == KC_OK && i < nvaults; i++)
        r = install(ctx, v[i], secret, err);
    if (r != KC_OK) {
        /* every vault so far, the one that failed included, gives it back */
        for (j = 0; j < i && j < nvaults; j++)
            uninstall(v[j], id);
        free(*file);
        *file = NULL;
    }
done:
    if (gf != NULL)
        gfshare_ctx_free(gf); /* overwrites its buffers through gf_rand */
    kc_secret_free(secret);
    kc_secret_free(share);
    json_decref(doc);
    for (i = 0; i < KC_DOMAIN_MAX_CUSTODIANS; i++) {
        EVP_PKEY_free(pub[i]);
        kc_vault_free(v[i]);
    }
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot create the backup domain of subscription '%s'", sub);
    return KC_OK;
}

/* --- join --- */

struct parsed_share {
    unsigned index;
    char custodian[65];
    unsigned char *value;
    size_t len;
};

struct parsed_file {
    char sub[65];
    char domain_id[33];
    char kcv[33];
    unsigned quorum;
    struct parsed_share shares[KC_DOMAIN_MAX_CUSTODIANS];
    size_t nshares;
};

static int is_hex(const char *s, size_t len)
{
    size_t i;

    if (strlen(s) != len)
        return 0;
    for (i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static void file_release(struct parsed_file *f)
{
    size_t i;

    for (i = 0; i < f->nshares; i++)
        free(f->shares[i].value);
}

/* Every field checked for type, range and size before use. */
static kc_rc parse_file(const unsigned char *buf, size_t len, struct parsed_file *f, kc_error *err)
{
    const char *format = NULL, *sub = NULL, *id = NULL, *kcv = NULL, *created = NULL;
    const char *cust = NULL, *alg = NULL, *value = NULL;
    json_t *doc = NULL, *shares = NULL, *sh;
    json_int_t version = 0, quorum = 0, index = 0;
    json_error_t je;
    size_t i;
    kc_rc r = KC_INTEGRITY;

    memset(f, 0, sizeof(*f));
    doc = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
    if (doc == NULL)
        return kc_error_set(err, KC_INTEGRITY, "the domain file is not JSON: %s (line %d)", je.text,
                            je.line);
    if (json_unpack_ex(doc, &je, JSON_STRICT, "{s:s, s:I, s:s, s:s, s:I, s:s, s:s, s:o}", "format",
                       &format, "version", &version, "subscription", &sub, "domain_id", &id,
                       "quorum", &quorum, "kcv", &kcv, "created", &created, "shares",
                       &shares) != 0) {
        kc_error_set(err, KC_INTEGRITY, "the domain file does not have the expected fields: %s",
                     je.text);
        goto done;
    }
    if (strcmp(format, "keycustody-security-domain") != 0) {
        kc_error_set(err, KC_INTEGRITY, "not a keycustody security-domain file");
        goto done;
    }
    if (version != 2) {
        kc_error_set(err, KC_INTEGRITY,
                     "security-domain file version %lld is not one this keycustody reads%s",
                     (long long)version,
                     version == 1 ? " (version 1 did not bind the subscription's name; make a "
                                    "new domain with 'subscription init')"
                                  : "");
        goto done;
    }
    if (strlen(sub) >= sizeof(f->sub) || !is_hex(id, 32) || !is_hex(kcv, 32) ||
        !json_is_array(shares) || json_array_size(shares) == 0 ||
        json_array_size(shares) > KC_DOMAIN_MAX_CUSTODIANS || quorum < 1 ||
        quorum > (json_int_t)json_array_size(shares)) {
        kc_error_set(err, KC_INTEGRITY, "the domain file has a field out of range");
        goto done;
    }
    memcpy(f->sub, sub, strlen(sub) + 1);
    memcpy(f->domain_id, id, 33);
    memcpy(f->kcv, kcv, 33);
    f->quorum = (unsigned)quorum;
    json_array_foreach(shares, i, sh)
    {
        struct parsed_share *p = &f->shares[f->nshares];
        if (json_unpack_ex(sh, &je, JSON_STRICT, "{s:I, s:s, s:s, s:s}", "index", &index,
                           "custodian", &cust, "alg", &alg, "value", &value) != 0 ||
            index < 1 || index > 255 || !is_hex(cust, 64) || strcmp(alg, SHARE_ALG) != 0 ||
            strlen(value) > 2048) {
            kc_error_set(err, KC_INTEGRITY, "share %zu of the domain file is malformed", i + 1);
            goto done;
        }
        p->value = kc_b64url_decode(value, &p->len);
        if (p->value == NULL) {
            kc_error_set(err, KC_INTEGRITY, "share %zu of the domain file is not base64url", i + 1);
            goto done;
        }
        p->index = (unsigned)index;
        memcpy(p->custodian, cust, 65);
        f->nshares++;
    }
    r = KC_OK;
done:
    json_decref(doc);
    if (r != KC_OK)
        file_release(f);
    return r;
}

kc_rc kc_domain_check_file(const unsigned char *buf, size_t len, kc_error *err)
{
    struct parsed_file f;
    kc_rc r = parse_file(buf, len, &f, err);

    if (r == KC_OK)
        file_release(&f);
    return r;
}

static struct parsed_share *share_for(struct parsed_file *f, const char *fp)
{
    size_t i;

    for (i = 0; i < f->nshares; i++)
        if (strcmp(f->shares[i].custodian, fp) == 0)
            return &f->shares[i];
    return NULL;
}

/* A PEM private key file: its fingerprint and the share it decrypts. */
static kc_rc open_share_pem(const char *path, struct parsed_file *f, struct parsed_share **which,
                            kc_secret **out, kc_error *err)
{
    unsigned char *buf = NULL;
    EVP_PKEY *pk = NULL;
    EVP_PKEY_CTX *c = NULL;
    BIO *bio = NULL;
    char fp[65];
    size_t len = 0;
    kc_rc r;

    *out = NULL;
    r = kc_file_read(path, 1 << 16, &buf, &len, err);
    if (r != KC_OK)
        return r;
    bio = BIO_new_mem_buf(buf, (int)len);
    /* No passphrase callback: an encrypted key fails here rather than
     * prompting from inside the library. */
    pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"");
    BIO_free(bio);
    OPENSSL_cleanse(buf, len);
    free(buf);
    if (pk == NULL || EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA) {
        EVP_PKEY_free(pk);
        kc_error_set(err, KC_USAGE, "'%s' is not an unencrypted RSA private key in PEM", path);
        kc_error_hint(err, "keep the custodian key on a token and name it by pkcs11: URI, or "
                           "give an unencrypted PEM");
        return KC_USAGE;
    }
    r = fingerprint(pk, fp, err);
    if (r == KC_OK && (*which = share_for(f, fp)) == NULL)
        r = kc_error_set(err, KC_DENIED, "'%s' is not the key of any custodian of this domain",
                         path);
    if (r == KC_OK) {
        size_t outlen = 1024;
        *out = kc_secret_new(outlen);
        c = EVP_PKEY_CTX_new(pk, NULL);
        if (*out == NULL || c == NULL || EVP_PKEY_decrypt_init(c) <= 0 ||
            EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) <= 0 ||
            EVP_PKEY_CTX_set_rsa_oaep_md(c, EVP_sha1()) <= 0 ||
            EVP_PKEY_CTX_set_rsa_mgf1_md(c, EVP_sha1()) <= 0 ||
            EVP_PKEY_decrypt(c, (*out)->data, &outlen, (*which)->value, (*which)->len) <= 0) {
            r = kc_error_set(err, KC_INTEGRITY, "the share of '%s' does not decrypt with it", path);
            kc_secret_free(*out);
            *out = NULL;
        } else {
            (*out)->len = outlen;
        }
    }
    EVP_PKEY_CTX_free(c);
    EVP_PKEY_free(pk);
    return r;
}

/* A key on a custodian's token (pkcs11: URI): the same, on the token. */
static kc_rc open_share_token(kc_ctx *ctx, const char *uri, struct parsed_file *f,
                              struct parsed_share **which, kc_secret **out, kc_error *err)
{
    unsigned char id[64], *n = NULL, *e = NULL;
    char label[KC_KEY_NAME_MAX + 1], fp[65];
    size_t id_len = 0, nobjs = 0, n_len = 0, e_len = 0, i;
    kc_key_obj *objs = NULL;
    const kc_key_obj *pub = NULL, *priv = NULL;
    EVP_PKEY *pk = NULL;
    kc_tok *tok = NULL;
    kc_rc r;

    *out = NULL;
    r = kc_p11_uri_object(uri, label, sizeof(label), id, sizeof(id), &id_len, err);
    if (r == KC_OK && label[0] == '\0' && id_len == 0)
        r = kc_error_set(err, KC_USAGE, "the share key URI names no object (object= or id=)");
    if (r == KC_OK)
        r = kc_p11_token(ctx->p11, uri, &tok, err);
    if (r == KC_OK)
        r = kc_ctx_login(ctx, tok, err);
    if (r == KC_OK)
        r = kc_tok_find_keys(tok, label[0] ? label : NULL, id_len ? id : NULL, id_len, &objs,
                             &nobjs, err);
    for (i = 0; r == KC_OK && i < nobjs; i++) {
        if (objs[i].is_private && priv == NULL)
            priv = &objs[i];
        else if (!objs[i].is_private && pub == NULL)
            pub = &objs[i];
    }
    if (r == KC_OK && (pub == NULL || priv == NULL))
        r = kc_error_set(err, KC_NOT_FOUND, "the share key URI does not name one RSA key pair");
    if (r == KC_OK)
        r = kc_tok_rsa_public(tok, pub->handle, &n, &n_len, &e, &e_len, err);
    if (r == KC_OK) {
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        OSSL_PARAM *params = NULL;
        EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
        BIGNUM *bn = BN_bin2bn(n, (int)n_len, NULL), *be = BN_bin2bn(e, (int)e_len, NULL);
        if (bld == NULL || pc == NULL || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
            !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
            (params = OSSL_PARAM_BLD_to_param(bld)) == NULL || EVP_PKEY_fromdata_init(pc) <= 0 ||
            EVP_PKEY_fromdata(pc, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0)
            r = kc_error_set(err, KC_ERR, "cannot read the share key's public key");
        OSSL_PARAM_free(params);
        OSSL_PARAM_BLD_free(bld);
        EVP_PKEY_CTX_free(pc);
        BN_free(bn);
        BN_free(be);
    }
    if (r == KC_OK)
        r = fingerprint(pk, fp, err);
    if (r == KC_OK && (*which = share_for(f, fp)) == NULL)
        r = kc_error_set(err, KC_DENIED,
                         "the token key is not the key of any custodian of this "
                         "domain");
    if (r == KC_OK) {
        r = kc_tok_oaep_unwrap(tok, priv->handle, KC_OAEP_SHA1, (*which)->value, (*which)->len, out,
                               err);
        if (r != KC_OK)
            kc_error_prefix(err, "the share does not decrypt with the token key");
    }
    EVP_PKEY_free(pk);
    free(n);
    free(e);
    free(objs);
    return r;
}

kc_rc kc_domain_join(kc_ctx *ctx, const char *sub, const char *vault, const unsigned char *file,
                     size_t file_len, const kc_share_key *keys, size_t nkeys, kc_error *err)
{
    unsigned char sharenrs[KC_DOMAIN_MAX_CUSTODIANS], id[KC_DOMAIN_ID_BYTES];
    kc_secret *shares[KC_DOMAIN_MAX_CUSTODIANS] = {NULL}, *secret = NULL, *one = NULL;
    struct parsed_share *which = NULL;
    struct parsed_file f;
    char kcv[33], idhex[33];
    gfshare_ctx *gf = NULL;
    kc_vault *v = NULL;
    size_t have = 0, i, j;
    kc_rc r;

    r = parse_file(file, file_len, &f, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot read the security-domain file");
    if (strcmp(f.sub, sub) != 0) {
        r = kc_error_set(err, KC_INTEGRITY, "the domain file is of subscription '%s', not '%s'",
                         f.sub, sub);
        goto done;
    }
    r = open_member(ctx, sub, vault, &v, err);
    if (r != KC_OK)
        goto done;
    for (i = 0; r == KC_OK && i < nkeys; i++) {
        r = kc_p11_is_uri(keys[i].ref) ? open_share_token(ctx, keys[i].ref, &f, &which, &one, err)
                                       : open_share_pem(keys[i].ref, &f, &which, &one, err);
        if (r != KC_OK) {
            kc_error_prefix(err, "share key %zu", i + 1);
            break;
        }
        for (j = 0; j < have && sharenrs[j] != which->index; j++)
            ;
        if (j < have || one->len != KC_DOMAIN_SECRET_BYTES) {
            if (one->len != KC_DOMAIN_SECRET_BYTES)
                r = kc_error_set(err, KC_INTEGRITY,
                                 "share key %zu decrypts to a share of the "
                                 "wrong size",
                                 i + 1);
            kc_secret_free(one);
            one = NULL;
            continue; /* the same custodian twice counts once */
        }
        sharenrs[have] = (unsigned char)which->index;
        shares[have++] = one;
        one = NULL;
    }
    if (r != KC_OK)
        goto done;
    if (have < f.quorum) {
        r = kc_error_set(err, KC_DENIED, "the domain needs %u custodians' shares; %zu given",
                         f.quorum, have);
        kc_error_hint(err, "give --share-key once for each of %u custodians", f.quorum);
        goto done;
    }
    secret = kc_secret_new(KC_DOMAIN_SECRET_BYTES);
    gfshare_fill_rand = gf_rand;
    gf = gfshare_ctx_init_dec(sharenrs, (unsigned)have, KC_DOMAIN_SECRET_BYTES);
    if (secret == NULL || gf == NULL) {
        r = kc_error_set(err, KC_ERR, "out of memory");
        goto done;
    }
    for (i = 0; i < have; i++)
        gfshare_ctx_dec_giveshare(gf, (unsigned char)i, shares[i]->data);
    gfshare_ctx_dec_extract(gf, secret->data);
    secret->len = KC_DOMAIN_SECRET_BYTES;
    derive_kcv(secret, f.sub, kcv);
    derive_id(secret, id);
    kc_hex_encode(id, sizeof(id), idhex);
    if (CRYPTO_memcmp(kcv, f.kcv, 32) != 0 || strcmp(idhex, f.domain_id) != 0) {
        r = kc_error_set(err, KC_INTEGRITY,
                         "the shares do not recombine to the domain of subscription '%s' (the key "
                         "check value differs): a share is wrong, or the file was altered (its "
                         "subscription, domain id or check value)",
                         f.sub);
        goto done;
    }
    r = install(ctx, v, secret, err);
done:
    if (gf != NULL)
        gfshare_ctx_free(gf);
    for (i = 0; i < have; i++)
        kc_secret_free(shares[i]);
    kc_secret_free(one);
    kc_secret_free(secret);
    file_release(&f);
    kc_vault_free(v);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot join vault '%s' to the backup domain of '%s'", vault,
                               sub);
    return KC_OK;
}

kc_rc kc_domain_keys_get(kc_vault *v, kc_domain_keys *out, kc_error *err)
{
    size_t id_len = 0, n = 0, i;
    kc_rc r;

    memset(out, 0, sizeof(*out));
    if (v->meta.domain[0] == '\0' ||
        kc_hex_decode(v->meta.domain, out->id, sizeof(out->id), &id_len) != 0 ||
        id_len != KC_DOMAIN_ID_BYTES) {
        kc_error_set(err, KC_NOT_FOUND, "vault '%s' holds no backup domain", v->meta.name);
        kc_error_hint(err, "install one with 'keycustody subscription init' or 'subscription "
                           "join'");
        return KC_NOT_FOUND;
    }
    r = kc_vault_login(v, err);
    for (i = 0; r == KC_OK && i < NKEYS; i++) {
        kc_obj *slot = (kc_obj *)(void *)((unsigned char *)out + domain_keys[i].slot);
        if (!key_needed(v, &domain_keys[i]))
            continue;
        r = find_key(v, &domain_keys[i], out->id, slot, &n, err);
        if (r == KC_OK && n != 1) {
            kc_error_set(err, KC_INTEGRITY,
                         "vault '%s' records backup domain %s but its key '%s' is not on the "
                         "token",
                         v->meta.name, v->meta.domain, domain_keys[i].label);
            kc_error_hint(err, "join the vault to the domain again to reinstall it");
            return KC_INTEGRITY;
        }
    }
    return r;
}
