#include "kc_backup.h"
#include "kc_domain.h"
#include "kc_key.h"
#include "kc_keystate.h"
#include "kc_util.h"

#include <jansson.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HEADER 16
#define MAC 32
/* 2: each private key is AES-KWP under the domain's wrap key (or its software
 * key), then AES-GCM under its seal key (kc_domain.h says why). */
#define BACKUP_VERSION 2

/* --- framing --- */

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Checks the frame; *body and *body_len point into buf. */
static kc_rc unframe(const unsigned char *buf, size_t len, const unsigned char **body,
                     size_t *body_len, kc_error *err)
{
    uint32_t l;

    if (len < HEADER + MAC || memcmp(buf, KC_BACKUP_MAGIC, 8) != 0)
        return kc_error_set(err, KC_INTEGRITY, "not a keycustody backup file");
    if (buf[8] == 1)
        return kc_error_set(err, KC_INTEGRITY,
                            "the backup is of format version 1, whose private keys open with "
                            "SoftHSM's token files alone; this keycustody restores only "
                            "version 2: back the key up again");
    if (buf[8] != BACKUP_VERSION || buf[9] != 0 || buf[10] != 0 || buf[11] != 0)
        return kc_error_set(err, KC_INTEGRITY,
                            "backup format version %u is not known to this "
                            "version of keycustody",
                            buf[8]);
    l = get32(buf + 12);
    if (l > KC_BACKUP_BODY_MAX || (size_t)l + HEADER + MAC != len)
        return kc_error_set(err, KC_INTEGRITY,
                            "the backup file is %zu bytes, but its header "
                            "says %lu: it is truncated or altered",
                            len, (unsigned long)l + HEADER + MAC);
    *body = buf + HEADER;
    *body_len = l;
    return KC_OK;
}

/* --- the body --- */

typedef struct bk_version {
    const char *version, *created, *ops, *protection, *start, *end, *pub, *priv;
    const char *wrap; /* the mechanism that wrapped priv; absent: CKM_AES_KEY_WRAP_PAD */
    json_int_t seq, bits;
    int enabled;
    int sealed; /* priv sealed again with AES-GCM; absent: yes */
    kc_wrap_mech mech;
} bk_version;

typedef struct bk_doc {
    json_t *root;
    const char *sub, *domain, *vault, *name, *current;
    json_t *tags;
    bk_version v[64];
    size_t nv;
} bk_doc;

static int hexlen(const char *s, size_t max)
{
    size_t n = strlen(s), i;

    if (n == 0 || n % 2 || n > max)
        return 0;
    for (i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static int date_or_empty(const char *s)
{
    char d[9], f[11];

    if (s[0] == '\0')
        return 1;
    if (strlen(s) != 8)
        return 0;
    kc_date_format(s, f);
    return kc_date_parse(f, d) == 0;
}

static kc_rc parse_body(const unsigned char *body, size_t len, bk_doc *d, kc_error *err)
{
    const char *format = NULL, *created = NULL, *tag;
    json_t *key = NULL, *versions = NULL, *ver, *val;
    json_int_t version = 0;
    json_error_t je;
    unsigned ops;
    kc_error ignored;
    size_t i, j;

    memset(d, 0, sizeof(*d));
    d->root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &je);
    if (d->root == NULL)
        return kc_error_set(err, KC_INTEGRITY, "the backup body is not JSON: %s", je.text);
    if (json_unpack_ex(d->root, &je, JSON_STRICT, "{s:s, s:I, s:s, s:s, s:s, s:s, s:o}", "format",
                       &format, "version", &version, "subscription", &d->sub, "domain_id",
                       &d->domain, "vault", &d->vault, "created", &created, "key", &key) != 0 ||
        strcmp(format, "keycustody-backup") != 0 || version != BACKUP_VERSION ||
        json_unpack_ex(key, &je, JSON_STRICT, "{s:s, s:s, s:o, s:o}", "name", &d->name, "current",
                       &d->current, "tags", &d->tags, "versions", &versions) != 0)
        goto bad;
    if (kc_key_check_name(d->name, &ignored) != KC_OK || !hexlen(d->domain, 32) ||
        !json_is_object(d->tags) || json_object_size(d->tags) > KC_KEY_TAGS_MAX ||
        !json_is_array(versions) || json_array_size(versions) == 0 ||
        json_array_size(versions) > sizeof(d->v) / sizeof(d->v[0]))
        goto bad;
    json_object_foreach(d->tags, tag, val) if (strlen(tag) >= sizeof(((kc_tag *)0)->name) ||
                                               !json_is_string(val) ||
                                               strlen(json_string_value(val)) >=
                                                   sizeof(((kc_tag *)0)->value)) goto bad;
    json_array_foreach(versions, i, ver)
    {
        bk_version *b = &d->v[d->nv];
        b->wrap = kc_wrap_mech_name(KC_WRAP_KWP);
        b->sealed = 1;
        if (json_unpack_ex(ver, &je, JSON_STRICT,
                           "{s:s, s:I, s:s, s:b, s:s, s:s, s:I, s:s, s:s, s:s, s:s, s?s, s?b}",
                           "version", &b->version, "seq", &b->seq, "created", &b->created,
                           "enabled", &b->enabled, "ops", &b->ops, "protection", &b->protection,
                           "bits", &b->bits, "start_date", &b->start, "end_date", &b->end,
                           "public_key", &b->pub, "private_key", &b->priv, "wrap", &b->wrap,
                           "sealed", &b->sealed) != 0 ||
            kc_wrap_mech_parse(b->wrap, &b->mech) != 0 || b->mech == KC_WRAP_NONE ||
            !hexlen(b->version, 128) || b->seq < 0 ||
            (b->bits != 2048 && b->bits != 3072 && b->bits != 4096) ||
            kc_key_ops_parse(b->ops, &ops, &ignored) != KC_OK ||
            (strcmp(b->protection, "hsm") != 0 && strcmp(b->protection, "software") != 0) ||
            !date_or_empty(b->start) || !date_or_empty(b->end) || strlen(b->pub) > 4096 ||
            strlen(b->priv) > 8192)
            goto bad;
        for (j = 0; j < d->nv; j++)
            if (strcmp(d->v[j].version, b->version) == 0)
                goto bad;
        d->nv++;
    }
    return KC_OK;
bad:
    json_decref(d->root);
    d->root = NULL;
    return kc_error_set(err, KC_INTEGRITY, "the backup body does not have the expected fields");
}

kc_rc kc_backup_check(const unsigned char *buf, size_t len, kc_error *err)
{
    const unsigned char *body;
    size_t body_len;
    bk_doc d;
    kc_rc r = unframe(buf, len, &body, &body_len, err);

    if (r == KC_OK)
        r = parse_body(body, body_len, &d, err);
    if (r == KC_OK)
        json_decref(d.root);
    return r;
}

/* --- backup --- */

static char *spki_b64(const unsigned char *n, size_t n_len, const unsigned char *e, size_t e_len)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    BIGNUM *bn = BN_bin2bn(n, (int)n_len, NULL), *be = BN_bin2bn(e, (int)e_len, NULL);
    EVP_PKEY *pk = NULL;
    unsigned char *der = NULL;
    char *b64 = NULL;
    int len;

    if (bld != NULL && pc != NULL && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) &&
        (params = OSSL_PARAM_BLD_to_param(bld)) != NULL && EVP_PKEY_fromdata_init(pc) > 0 &&
        EVP_PKEY_fromdata(pc, &pk, EVP_PKEY_PUBLIC_KEY, params) > 0 &&
        (len = i2d_PUBKEY(pk, &der)) > 0)
        b64 = kc_b64url_encode(der, (size_t)len);
    OPENSSL_free(der);
    EVP_PKEY_free(pk);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(pc);
    BN_free(bn);
    BN_free(be);
    return b64;
}

/* What the seal of one version's private key authenticates with it. */
static void seal_aad(const char *version, char *aad, size_t cap)
{
    snprintf(aad, cap, "keycustody-backup-v%d private key %s", BACKUP_VERSION, version);
}

static kc_rc version_json(kc_vault *v, const kc_domain_keys *dk, const kc_key_version *ver,
                          json_t **out, kc_error *err)
{
    unsigned char *n = NULL, *e = NULL, *wrapped = NULL, *sealed = NULL;
    size_t n_len = 0, e_len = 0, w_len = 0, s_len = 0;
    char ops[128], aad[200], *pub = NULL, *priv = NULL;
    kc_rc r;

    *out = NULL;
    if (!ver->has_pub || !ver->has_priv || ver->type != KC_KT_RSA)
        return kc_error_set(err, KC_ERR, "version %s is not a complete RSA key pair", ver->version);
    /* The private key leaves the token only wrapped under a domain key: an
     * hsm key under the trusted wrap key (the only kind of key it can leave
     * under), a software key under the private software key. The trusted key
     * is public, and SoftHSM keeps public values in clear in its token files
     * (SOFTHSM-NOTES Q5): the blob is sealed again under the private seal key
     * before it leaves the process. */
    /* Where the module has no AES-GCM (openCryptoki 3.8.1) there is no
     * trusted wrap key either (hsm keys never leave it): the software key
     * is private, and the file's HMAC on the token authenticates it. */
    r = kc_tok_key_wrap(v->tok, v->meta.arr.key_wrap,
                        ver->protection == KC_PROT_HSM ? dk->wrap : dk->soft, ver->priv.handle,
                        &wrapped, &w_len, err);
    seal_aad(ver->version, aad, sizeof(aad));
    if (r == KC_OK && !v->meta.arr.no_gcm)
        r = kc_tok_gcm_seal(v->tok, dk->seal, (const unsigned char *)aad, strlen(aad), wrapped,
                            w_len, &sealed, &s_len, err);
    if (r == KC_OK)
        r = kc_tok_rsa_public(v->tok, ver->pub.handle, &n, &n_len, &e, &e_len, err);
    if (r == KC_OK) {
        pub = spki_b64(n, n_len, e, e_len);
        priv = v->meta.arr.no_gcm ? kc_b64url_encode(wrapped, w_len)
                                  : kc_b64url_encode(sealed, s_len);
        kc_key_ops_format(ver->ops, ops, sizeof(ops));
        if (pub == NULL || priv == NULL)
            r = kc_error_set(err, KC_ERR, "out of memory");
        else
            *out = json_pack("{s:s, s:I, s:s, s:b, s:s, s:s, s:I, s:s, s:s, s:s, s:s}", "version",
                             ver->version, "seq", (json_int_t)ver->seq, "created",
                             ver->created_at[0] ? ver->created_at : ver->created, "enabled",
                             ver->enabled, "ops", ops, "protection",
                             ver->protection == KC_PROT_HSM ? "hsm" : "software", "bits",
                             (json_int_t)ver->bits, "start_date", ver->pub.start_date, "end_date",
                             ver->pub.end_date, "public_key", pub, "private_key", priv);
        /* said only where it is not what a version-2 backup always was */
        if (*out != NULL && (v->meta.arr.key_wrap != KC_WRAP_KWP || v->meta.arr.no_gcm)) {
            json_object_set_new(*out, "wrap", json_string(kc_wrap_mech_name(v->meta.arr.key_wrap)));
            json_object_set_new(*out, "sealed", json_boolean(!v->meta.arr.no_gcm));
        }
    }
    free(n);
    free(e);
    free(wrapped);
    free(sealed);
    free(pub);
    free(priv);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot back up version %s", ver->version);
    return KC_OK;
}

kc_rc kc_backup_key(kc_vault *v, const char *name, unsigned char **out, size_t *len, kc_error *err)
{
    kc_domain_keys dk;
    kc_key *k = NULL;
    json_t *doc = NULL, *versions, *tags, *vj;
    unsigned char *buf = NULL;
    char *body = NULL, now_s[21];
    size_t body_len, i;
    time_t now;
    kc_rc r;

    *out = NULL;
    r = kc_key_get(v, name, 1, &k, err);
    if (r == KC_OK)
        r = kc_key_check_active(k, err);
    for (i = 0; r == KC_OK && i < k->nversions; i++)
        if (k->versions[i].protection == KC_PROT_HSM && v->meta.arr.hsm_non_extractable) {
            r = kc_error_set(err, KC_TOKEN,
                             "key '%s' of vault '%s' is an hsm key on a module without the "
                             "trusted-key arrangement: it is not extractable, so it never "
                             "leaves the token, not even wrapped, and cannot be backed up",
                             name, v->meta.name);
            kc_error_hint(err, "on this module only software keys can be backed up; keep the "
                               "DEPs of an hsm key available through the other vault");
        }
    if (r == KC_OK && v->meta.arr.key_wrap == KC_WRAP_NONE)
        r = kc_error_set(err, KC_TOKEN, "vault '%s' has no AES key wrap to back a key up with",
                         v->meta.name);
    /* up front: the module it is reached through now may not carry them */
    if (r == KC_OK)
        r = kc_tok_offers_key_wrap(v->tok, v->meta.arr.key_wrap, 0, "a backup", err);
    if (r == KC_OK && !v->meta.arr.no_gcm)
        r = kc_tok_offers_gcm(v->tok, "a backup", err);
    if (r == KC_OK)
        r = kc_domain_keys_get(v, &dk, err);
    if (r == KC_OK)
        r = kc_clock_now(&now, err);
    if (r != KC_OK)
        goto done;
    kc_time_format_rfc3339(now, now_s);
    tags = json_object();
    for (i = 0; i < k->ntags; i++)
        json_object_set_new(tags, k->tags[i].name, json_string(k->tags[i].value));
    doc = json_pack("{s:s, s:i, s:s, s:s, s:s, s:s, s:{s:s, s:s, s:o, s:[]}}", "format",
                    "keycustody-backup", "version", BACKUP_VERSION, "subscription", v->meta.subscription,
                    "domain_id", v->meta.domain, "vault", v->meta.name, "created", now_s, "key",
                    "name", k->name, "current", k->versions[k->current].version, "tags", tags,
                    "versions");
    versions = json_object_get(json_object_get(doc, "key"), "versions");
    for (i = 0; r == KC_OK && i < k->nversions; i++) {
        r = version_json(v, &dk, &k->versions[i], &vj, err);
        if (r == KC_OK)
            json_array_append_new(versions, vj);
    }
    if (r != KC_OK)
        goto done;
    body = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
    body_len = body != NULL ? strlen(body) : 0;
    if (body == NULL || body_len > KC_BACKUP_BODY_MAX) {
        r = kc_error_set(err, KC_ERR, "the backup is too large");
        goto done;
    }
    buf = malloc(HEADER + body_len + MAC);
    if (buf == NULL) {
        r = kc_error_set(err, KC_ERR, "out of memory");
        goto done;
    }
    memcpy(buf, KC_BACKUP_MAGIC, 8);
    buf[8] = BACKUP_VERSION;
    buf[9] = buf[10] = buf[11] = 0;
    put32(buf + 12, (uint32_t)body_len);
    memcpy(buf + HEADER, body, body_len);
    r = kc_tok_hmac(v->tok, dk.mac, buf, HEADER + body_len, buf + HEADER + body_len, err);
    if (r != KC_OK)
        goto done;
    *out = buf;
    *len = HEADER + body_len + MAC;
    buf = NULL;
done:
    free(buf);
    free(body);
    json_decref(doc);
    kc_key_free(k);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot back up key '%s' of vault '%s'", name, v->meta.name);
    return KC_OK;
}

/* --- restore --- */

/* What the file claims before anything is verified: for messages only. */
static void claimed_subscription(const unsigned char *body, size_t len, char *out, size_t cap)
{
    json_t *o = json_loadb((const char *)body, len, 0, NULL);
    const char *s = json_string_value(json_object_get(o, "subscription"));
    size_t i;

    snprintf(out, cap, "%s", s != NULL && strlen(s) < cap ? s : "?");
    for (i = 0; out[i]; i++)
        if ((unsigned char)out[i] < 0x20 || (unsigned char)out[i] > 0x7e)
            out[i] = '?';
    json_decref(o);
}

static kc_rc public_parts(const char *b64, unsigned char **n, size_t *n_len, unsigned char **e,
                          size_t *e_len, kc_error *err)
{
    size_t der_len = 0;
    unsigned char *der = kc_b64url_decode(b64, &der_len);
    const unsigned char *p = der;
    EVP_PKEY *pk = der ? d2i_PUBKEY(NULL, &p, (long)der_len) : NULL;
    BIGNUM *bn = NULL, *be = NULL;
    kc_rc r = KC_INTEGRITY;

    *n = *e = NULL;
    if (pk != NULL && EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA &&
        EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &bn) &&
        EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &be)) {
        *n_len = (size_t)BN_num_bytes(bn);
        *e_len = (size_t)BN_num_bytes(be);
        *n = malloc(*n_len);
        *e = malloc(*e_len);
        if (*n != NULL && *e != NULL) {
            BN_bn2bin(bn, *n);
            BN_bn2bin(be, *e);
            r = KC_OK;
        }
    }
    if (r != KC_OK) {
        free(*n);
        free(*e);
        *n = *e = NULL;
        kc_error_set(err, KC_INTEGRITY, "a public key in the backup is not an RSA key");
    }
    BN_free(bn);
    BN_free(be);
    EVP_PKEY_free(pk);
    free(der);
    return r;
}

/* Whether v's module can take version b back as it was made: an hsm key
 * only where hsm keys are extractable under a trusted key (it came from
 * such a vault), a sealed one only with AES-GCM, and its wrap mechanism (an
 * RFC 5649 blob is one whichever of the two mechanisms made it). */
static kc_rc restorable(const kc_vault *v, const bk_version *b, kc_error *err)
{
    const kc_arrangement *a = &v->meta.arr;
    int rfc5649 = b->mech == KC_WRAP_KWP || b->mech == KC_WRAP_KWP_KWP;

    if (strcmp(b->protection, "hsm") == 0 && a->hsm_non_extractable)
        return kc_error_set(err, KC_TOKEN,
                            "version %s is an hsm key, and vault '%s' is on a module without "
                            "the trusted-key arrangement, which could not keep it as it was "
                            "kept: restore it into a vault on a module that has it",
                            b->version, v->meta.name);
    if (b->sealed && a->no_gcm)
        return kc_error_set(err, KC_TOKEN,
                            "version %s was sealed with AES-GCM, which the module of vault '%s' "
                            "does not have",
                            b->version, v->meta.name);
    if (rfc5649 ? (a->key_wrap != KC_WRAP_KWP && a->key_wrap != KC_WRAP_KWP_KWP)
                : a->key_wrap != b->mech)
        return kc_error_set(err, KC_TOKEN,
                            "version %s was wrapped with %s, which the module of vault '%s' "
                            "does not have (it has %s)",
                            b->version, b->wrap, v->meta.name, kc_wrap_mech_name(a->key_wrap));
    return KC_OK;
}

/* Creates both halves of one version; their handles go to made[]. */
static kc_rc restore_version(kc_vault *v, const kc_domain_keys *dk, const char *name,
                             const bk_version *b, kc_obj *made, size_t *nmade, kc_error *err)
{
    unsigned char id[64], *n = NULL, *e = NULL, *sealed = NULL, *wrapped = NULL, *mod = NULL,
                          *exp = NULL;
    size_t id_len = 0, n_len = 0, e_len = 0, s_len = 0, w_len = 0, m_len = 0, x_len = 0;
    char aad[200];
    kc_rsa_spec spec;
    unsigned ops = 0, token_ops;
    kc_error ignored;
    kc_obj obj;
    kc_rc r;

    if (kc_key_ops_parse(b->ops, &ops, &ignored) != KC_OK)
        return kc_error_set(err, KC_INTEGRITY, "version %s has unknown ops", b->version);
    token_ops = b->enabled ? kc_key_ops_on_token(ops) : 0;
    (void)kc_hex_decode(b->version, id, sizeof(id), &id_len);
    memset(&spec, 0, sizeof(spec));
    spec.label = name;
    spec.id = id;
    spec.id_len = id_len;
    spec.bits = (unsigned)b->bits;
    spec.ops = token_ops;
    kc_key_protect(v, strcmp(b->protection, "hsm") == 0 ? KC_PROT_HSM : KC_PROT_SOFTWARE, &spec);
    spec.start_date = b->start[0] ? b->start : NULL;
    spec.end_date = b->end[0] ? b->end : NULL;
    r = public_parts(b->pub, &n, &n_len, &e, &e_len, err);
    if (r == KC_OK)
        r = kc_tok_create_rsa_public(v->tok, &spec, n, n_len, e, e_len, &obj, err);
    if (r == KC_OK)
        made[(*nmade)++] = obj;
    if (r == KC_OK && (sealed = kc_b64url_decode(b->priv, &s_len)) == NULL)
        r = kc_error_set(err, KC_INTEGRITY, "a private key in the backup is not base64url");
    seal_aad(b->version, aad, sizeof(aad));
    if (r == KC_OK && b->sealed) {
        r = kc_tok_gcm_open(v->tok, dk->seal, (const unsigned char *)aad, strlen(aad), sealed,
                            s_len, &wrapped, &w_len, err);
    } else if (r == KC_OK) {
        wrapped = sealed;
        w_len = s_len;
        sealed = NULL;
    }
    /* the unwrap templates of the two keys hold what the key may become */
    if (r == KC_OK)
        r = kc_tok_key_unwrap_rsa(v->tok, b->mech == KC_WRAP_KWP_KWP || b->mech == KC_WRAP_KWP
                                              ? v->meta.arr.key_wrap
                                              : b->mech,
                                  spec.sensitive ? dk->unwrap : dk->soft, wrapped, w_len, &spec,
                                  &obj, err);
    if (r == KC_OK)
        made[(*nmade)++] = obj;
    /* The unwrapped private key must be the public key's other half. */
    if (r == KC_OK)
        r = kc_tok_rsa_public(v->tok, obj, &mod, &m_len, &exp, &x_len, err);
    if (r == KC_OK && (m_len != n_len || memcmp(mod, n, n_len) != 0))
        r = kc_error_set(err, KC_INTEGRITY,
                         "version %s: the private key does not match the "
                         "public key",
                         b->version);
    free(n);
    free(e);
    free(mod);
    free(exp);
    free(sealed);
    if (wrapped != NULL)
        OPENSSL_cleanse(wrapped, w_len);
    free(wrapped);
    return r;
}

static void record_restored(kc_vault *v, const bk_doc *d)
{
    json_t *k, *ver, *tags;
    size_t i;

    kc_keystate_drop(v, d->name);
    k = kc_keystate_key(v, d->name, 1);
    json_object_set_new(k, "current", json_string(d->current));
    tags = json_deep_copy(d->tags);
    json_object_set_new(k, "tags", tags);
    for (i = 0; i < d->nv; i++) {
        ver = kc_keystate_version(k, d->v[i].version, 1);
        json_object_set_new(ver, "seq", json_integer(d->v[i].seq));
        json_object_set_new(ver, "created", json_string(d->v[i].created));
        json_object_set_new(ver, "enabled", json_boolean(d->v[i].enabled));
        json_object_set_new(ver, "ops", json_string(d->v[i].ops));
        json_object_set_new(ver, "origin", json_string("restored"));
    }
}

/* Whether every object is a version the backup holds (by id). */
static int leftovers_of(const kc_key_obj *objs, size_t n, const bk_doc *d)
{
    char hex[2 * sizeof(objs[0].id) + 1];
    size_t i, j;

    for (i = 0; i < n; i++) {
        kc_hex_encode(objs[i].id, objs[i].id_len, hex);
        for (j = 0; j < d->nv && strcmp(d->v[j].version, hex) != 0; j++)
            ;
        if (j == d->nv)
            return 0;
    }
    return 1;
}

kc_rc kc_restore_key(kc_vault *v, const unsigned char *buf, size_t len,
                     char name[KC_KEY_NAME_MAX + 1], size_t *nversions, kc_error *err)
{
    const unsigned char *body = NULL;
    kc_obj made[130];
    size_t body_len = 0, nmade = 0, nobjs = 0, i;
    kc_key_obj *objs = NULL;
    kc_domain_keys dk;
    char claimed[65];
    kc_error ignored;
    bk_doc d;
    kc_rc r;

    memset(&d, 0, sizeof(d));
    name[0] = '\0';
    r = unframe(buf, len, &body, &body_len, err);
    if (r != KC_OK)
        goto done;
    claimed_subscription(body, body_len, claimed, sizeof(claimed));
    r = kc_domain_keys_get(v, &dk, err);
    if (r == KC_NOT_FOUND) {
        r = kc_error_set(err, KC_INTEGRITY,
                         "vault '%s' (subscription '%s') holds no backup "
                         "domain; the backup says it is of subscription '%s'",
                         v->meta.name, v->meta.subscription, claimed);
        kc_error_hint(err, "a backup restores only into a vault that joined its subscription's "
                           "backup domain ('keycustody subscription join')");
    }
    if (r != KC_OK)
        goto done;
    r = kc_tok_hmac_verify(v->tok, dk.mac, buf, len - MAC, buf + len - MAC, err);
    if (r == KC_INTEGRITY) {
        if (strcmp(claimed, v->meta.subscription) != 0)
            kc_error_set(err, KC_INTEGRITY,
                         "the backup is of subscription '%s' and vault '%s' "
                         "is in subscription '%s'; a backup restores only within its own "
                         "subscription",
                         claimed, v->meta.name, v->meta.subscription);
        else
            kc_error_set(err, KC_INTEGRITY,
                         "the backup's MAC does not verify: the file was "
                         "altered, or made under another backup domain of subscription '%s'",
                         v->meta.subscription);
    }
    if (r != KC_OK)
        goto done;
    /* Verified: from here on the body is the backup-maker's word. */
    r = parse_body(body, body_len, &d, err);
    if (r == KC_OK &&
        (strcmp(d.sub, v->meta.subscription) != 0 || strcmp(d.domain, v->meta.domain) != 0))
        r = kc_error_set(err, KC_INTEGRITY,
                         "the backup is of subscription '%s', vault '%s' of "
                         "subscription '%s'",
                         d.sub, v->meta.name, v->meta.subscription);
    if (r != KC_OK)
        goto done;
    snprintf(name, KC_KEY_NAME_MAX + 1, "%s", d.name);
    for (i = 0; r == KC_OK && i < d.nv; i++)
        r = restorable(v, &d.v[i], err);
    if (r == KC_OK)
        r = kc_tok_offers_key_wrap(v->tok, v->meta.arr.key_wrap, 1, "a restore", err);
    for (i = 0; r == KC_OK && i < d.nv; i++)
        if (d.v[i].sealed)
            r = kc_tok_offers_gcm(v->tok, "a restore", err);
    if (r == KC_OK)
        r = kc_keystate_load(v, err);
    if (r == KC_OK)
        r = kc_tok_find_keys(v->tok, d.name, NULL, 0, &objs, &nobjs, err);
    /* Objects of this name with no record, every one a version of this
     * backup: an earlier run of this restore was killed before its record.
     * They go, and the restore runs again. */
    if (r == KC_OK && nobjs > 0 && kc_keystate_key(v, d.name, 0) == NULL &&
        leftovers_of(objs, nobjs, &d)) {
        for (i = 0; r == KC_OK && i < nobjs; i++)
            r = kc_tok_destroy(v->tok, objs[i].handle, err);
        nobjs = 0;
    }
    free(objs);
    if (r == KC_OK && (nobjs > 0 || kc_keystate_key(v, d.name, 0) != NULL)) {
        r = kc_error_set(err, KC_CONFLICT, "vault '%s' has a key '%s' already%s", v->meta.name,
                         d.name,
                         json_is_object(json_object_get(kc_keystate_key(v, d.name, 0), "deleted"))
                             ? " (deleted, not yet purged)"
                             : "");
        kc_error_hint(err, "restore fails when the name exists, as in Key Vault: purge that key "
                           "first, or restore into another vault of the subscription");
    }
    for (i = 0; r == KC_OK && i < d.nv; i++)
        r = restore_version(v, &dk, d.name, &d.v[i], made, &nmade, err);
    if (r == KC_OK) {
        record_restored(v, &d);
        r = kc_keystate_save(v, err);
    }
    if (r != KC_OK) {
        /* Roll back: a half-restored key is worse than none. */
        for (i = 0; i < nmade; i++)
            if (kc_tok_destroy(v->tok, made[i], &ignored) != KC_OK)
                kc_error_hint(err,
                              "not every object of the half-restored key could be removed; "
                              "list them with 'pkcs11-tool -O' (label '%s')",
                              d.name);
        json_decref(v->state); /* drop the unsaved record */
        v->state = NULL;
        goto done;
    }
    *nversions = d.nv;
done:
    json_decref(d.root);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot restore into vault '%s'", v->meta.name);
    return KC_OK;
}
