/* Importing RSA keys: Key Vault's BYOK flow through a key-exchange key, and
 * plain PEM. */
#include "kc_key.h"
#include "kc_keystate.h"
#include "kc_util.h"

#include <jansson.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <stdlib.h>
#include <string.h>

#define BYOK_MAX (64 * 1024)

/* The new key's version id and token template. */
static kc_rc new_spec(kc_vault *v, const kc_import_opts *o, unsigned char id[KC_VERSION_BYTES],
                      char today[9], kc_rsa_spec *spec, kc_error *err)
{
    kc_rc r = kc_key_check_name(o->name, err);

    if (r == KC_OK)
        r = kc_key_check_free_name(v, o->name, err);
    if (r == KC_OK)
        r = kc_date_today(today, err);
    if (r == KC_OK)
        r = kc_key_version_id(v, id, err);
    if (r != KC_OK)
        return r;
    memset(spec, 0, sizeof(*spec));
    spec->label = o->name;
    spec->id = id;
    spec->id_len = KC_VERSION_BYTES;
    spec->ops = kc_key_ops_on_token(o->ops ? o->ops : KC_OP_WRAP | KC_OP_UNWRAP);
    kc_key_protect(v, KC_PROT_HSM, spec);
    spec->start_date = today;
    return KC_OK;
}

/* With the private key on the token: its size is checked, the public half
 * made from its modulus and exponent, and the version recorded. On failure
 * the private key goes too. */
static kc_rc finish_import(kc_vault *v, const kc_import_opts *o, const kc_rsa_spec *spec,
                           kc_obj priv, const char *origin, kc_key **out, kc_error *err)
{
    unsigned char *n = NULL, *e = NULL;
    size_t n_len = 0, e_len = 0;
    kc_rsa_spec pub_spec = *spec;
    kc_error ignored;
    kc_obj pub = 0;
    int made_pub = 0;
    kc_rc r;

    r = kc_tok_rsa_public(v->tok, priv, &n, &n_len, &e, &e_len, err);
    if (r == KC_OK && n_len * 8 != 2048 && n_len * 8 != 3072 && n_len * 8 != 4096)
        r = kc_error_set(err, KC_USAGE,
                         "the imported key is RSA-%zu; root keys are RSA 2048, "
                         "3072 or 4096",
                         n_len * 8);
    if (r == KC_OK) {
        pub_spec.bits = (unsigned)(n_len * 8);
        r = kc_tok_create_rsa_public(v->tok, &pub_spec, n, n_len, e, e_len, &pub, err);
        made_pub = r == KC_OK;
    }
    if (r == KC_OK)
        r = kc_key_record_version(v, o->name, spec->id, spec->id_len,
                                  o->ops ? o->ops : KC_OP_WRAP | KC_OP_UNWRAP, origin, 1, err);
    if (r == KC_OK)
        r = kc_key_get(v, o->name, 1, out, err);
    if (r != KC_OK) {
        if (made_pub && kc_tok_destroy(v->tok, pub, &ignored) != KC_OK)
            kc_error_hint(err, "remove the public key labelled '%s' by hand", o->name);
        if (kc_tok_destroy(v->tok, priv, &ignored) != KC_OK)
            kc_error_hint(err, "remove the private key labelled '%s' by hand", o->name);
    }
    free(n);
    free(e);
    return r;
}

/* The KEK named by the file's kid (a key id URI or VAULT/KEY[/VERSION]) or
 * by opts, in this vault. */
static kc_rc find_kek(kc_vault *v, const char *kid, const char *kek_name, kc_key **kek,
                      const kc_key_version **ver, kc_error *err)
{
    kc_key_ref ref;
    kc_rc r;

    memset(&ref, 0, sizeof(ref));
    if (kid != NULL) {
        r = kc_key_ref_parse(kid, &ref, err);
        if (r != KC_OK)
            return kc_error_prefix(err, "the BYOK file's kid");
    } else if (kek_name == NULL) {
        kc_error_set(err, KC_USAGE, "the BYOK file does not say which key-exchange key it is for");
        kc_error_hint(err, "name it with --kek KEK");
        return KC_USAGE;
    } else {
        snprintf(ref.name, sizeof(ref.name), "%s", kek_name);
    }
    r = kc_key_get(v, ref.name, 1, kek, err);
    if (r == KC_OK)
        r = kc_key_check_active(*kek, err);
    if (r == KC_OK)
        r = kc_key_select(*kek, ref.id, ref.id_len, ver, err);
    if (r == KC_OK && !((*ver)->ops & KC_OP_IMPORT)) {
        kc_error_set(err, KC_DENIED, "key '%s' is not a key-exchange key (its ops lack import)",
                     ref.name);
        kc_error_hint(err, "make one with 'keycustody key create %s/KEK --size 4096 --ops import'",
                      v->meta.name);
        r = KC_DENIED;
    }
    if (r == KC_OK && (!(*ver)->enabled || !(*ver)->has_priv))
        r = kc_error_set(err, KC_DENIED, "the key-exchange key version is disabled");
    return r;
}

/* Key Vault's .byok document, or raw bytes. */
static kc_rc byok_parts(const unsigned char *buf, size_t len, char **kid, unsigned char **blob,
                        size_t *blob_len, kc_error *err)
{
    const char *k = NULL, *enc = NULL, *ct = NULL;
    json_t *o = NULL;
    json_error_t je;

    *kid = NULL;
    if (len == 0 || buf[0] != '{') {
        *blob = malloc(len ? len : 1);
        if (*blob == NULL)
            return kc_error_set(err, KC_ERR, "out of memory");
        memcpy(*blob, buf, len);
        *blob_len = len;
        return KC_OK;
    }
    o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
    if (o == NULL ||
        json_unpack_ex(o, &je, 0, "{s:{s:s, s:s}, s:s}", "header", "kid", &k, "enc", &enc,
                       "ciphertext", &ct) != 0 ||
        strcmp(enc, "CKM_RSA_AES_KEY_WRAP") != 0 ||
        (*blob = kc_b64url_decode(ct, blob_len)) == NULL) {
        json_decref(o);
        return kc_error_set(err, KC_USAGE,
                            "not a BYOK file: expected {\"header\": {\"kid\": ..., "
                            "\"enc\": \"CKM_RSA_AES_KEY_WRAP\"}, \"ciphertext\": base64url}");
    }
    *kid = strdup(k);
    json_decref(o);
    return KC_OK;
}

kc_rc kc_key_import_byok(kc_vault *v, const kc_import_opts *o, const unsigned char *buf, size_t len,
                         kc_key **out, kc_error *err)
{
    unsigned char id[KC_VERSION_BYTES], *blob = NULL;
    const kc_key_version *kver = NULL;
    char today[9], *kid = NULL;
    kc_key *kek = NULL;
    kc_rsa_spec spec;
    kc_obj aes = 0, priv = 0;
    size_t blob_len = 0, k;
    kc_error ignored;
    kc_rc r;

    *out = NULL;
    /* The transfer blob is RSA-OAEP then RFC 5649 (CKM_RSA_AES_KEY_WRAP), as
     * Key Vault's BYOK tools make it: nothing else opens it. */
    if (v->meta.arr.key_wrap != KC_WRAP_KWP && v->meta.arr.key_wrap != KC_WRAP_KWP_KWP) {
        kc_error_set(err, KC_TOKEN,
                     "vault '%s' cannot import a BYOK blob: its module has no RFC 5649 AES key "
                     "unwrap (CKM_AES_KEY_WRAP_PAD or CKM_AES_KEY_WRAP_KWP), which the blob's "
                     "second step needs; nothing was read or made",
                     v->meta.name);
        kc_error_hint(err, "import the key as PEM instead ('key import --pem'), or use a vault "
                           "on another module; see 'keycustody module check'");
        return KC_TOKEN;
    }
    r = kc_tok_offers_key_wrap(v->tok, v->meta.arr.key_wrap, 1, "a BYOK import", err);
    if (r != KC_OK)
        return r;
    if (len > BYOK_MAX)
        return kc_error_set(err, KC_USAGE, "the BYOK file is larger than %d bytes", BYOK_MAX);
    r = byok_parts(buf, len, &kid, &blob, &blob_len, err);
    if (r == KC_OK)
        r = find_kek(v, kid, o->kek, &kek, &kver, err);
    if (r == KC_OK)
        r = new_spec(v, o, id, today, &spec, err);
    if (r != KC_OK)
        goto done;
    k = kver->bits / 8;
    if (blob_len < k + 24 || (blob_len - k) % 8 != 0) {
        r = kc_error_set(err, KC_USAGE,
                         "the transfer blob is %zu bytes: expected %zu bytes of "
                         "RSA-OAEP for RSA-%u, then an AES-KWP blob",
                         blob_len, k, kver->bits);
        goto done;
    }
    /* Step one: the transfer key, into a session object that can only unwrap. */
    r = kc_tok_oaep_unwrap_aes(v->tok, kver->priv.handle, blob, k, &aes, err);
    /* Step two: the key itself, under the transfer key, into a token object. */
    if (r == KC_OK)
        r = kc_tok_key_unwrap_rsa(v->tok, v->meta.arr.key_wrap, aes, blob + k, blob_len - k, &spec,
                                  &priv, err);
    if (aes != 0 && kc_tok_destroy(v->tok, aes, &ignored) != KC_OK)
        kc_error_hint(err, "the session's transfer key is removed when the session ends");
    if (r == KC_OK)
        r = finish_import(v, o, &spec, priv, "byok", out, err);
done:
    if (blob != NULL)
        OPENSSL_cleanse(blob, blob_len);
    free(blob);
    free(kid);
    kc_key_free(kek);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot import key '%s' into vault '%s'", o->name,
                               v->meta.name);
    return KC_OK;
}

/* One RSA component into a locked buffer. */
static kc_secret *component(EVP_PKEY *pk, const char *param)
{
    BIGNUM *bn = NULL;
    kc_secret *s = NULL;

    if (EVP_PKEY_get_bn_param(pk, param, &bn) && bn != NULL) {
        s = kc_secret_new((size_t)BN_num_bytes(bn));
        if (s != NULL)
            s->len = (size_t)BN_bn2bin(bn, s->data);
    }
    BN_clear_free(bn);
    return s;
}

kc_rc kc_key_import_pem(kc_vault *v, const kc_import_opts *o, const unsigned char *pem, size_t len,
                        kc_key **out, kc_error *err)
{
    static const char *names[8] = {
        OSSL_PKEY_PARAM_RSA_N,         OSSL_PKEY_PARAM_RSA_E,
        OSSL_PKEY_PARAM_RSA_D,         OSSL_PKEY_PARAM_RSA_FACTOR1,
        OSSL_PKEY_PARAM_RSA_FACTOR2,   OSSL_PKEY_PARAM_RSA_EXPONENT1,
        OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
    };
    unsigned char id[KC_VERSION_BYTES];
    kc_secret *c[8] = {NULL};
    kc_rsa_parts parts;
    kc_rsa_spec spec;
    EVP_PKEY *pk = NULL;
    BIO *bio = NULL;
    char today[9];
    kc_obj priv = 0;
    size_t i;
    int bits;
    kc_rc r;

    *out = NULL;
    bio = BIO_new_mem_buf(pem, (int)len);
    pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"") : NULL;
    BIO_free(bio);
    if (pk == NULL || EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA) {
        r = kc_error_set(err, KC_USAGE, "not an unencrypted RSA private key in PEM");
        goto done;
    }
    bits = EVP_PKEY_get_bits(pk);
    if (bits != 2048 && bits != 3072 && bits != 4096) {
        r = kc_error_set(err, KC_USAGE, "the key is RSA-%d; root keys are RSA 2048, 3072 or 4096",
                         bits);
        goto done;
    }
    for (i = 0; i < 8; i++) {
        c[i] = component(pk, names[i]);
        if (c[i] == NULL) {
            r = kc_error_set(err, KC_USAGE, "the RSA key lacks its CRT components");
            goto done;
        }
    }
    r = new_spec(v, o, id, today, &spec, err);
    if (r != KC_OK)
        goto done;
    spec.bits = (unsigned)bits;
    memset(&parts, 0, sizeof(parts));
    parts.n = c[0]->data, parts.n_len = c[0]->len;
    parts.e = c[1]->data, parts.e_len = c[1]->len;
    parts.d = c[2]->data, parts.d_len = c[2]->len;
    parts.p = c[3]->data, parts.p_len = c[3]->len;
    parts.q = c[4]->data, parts.q_len = c[4]->len;
    parts.dp = c[5]->data, parts.dp_len = c[5]->len;
    parts.dq = c[6]->data, parts.dq_len = c[6]->len;
    parts.qinv = c[7]->data, parts.qinv_len = c[7]->len;
    r = kc_tok_create_rsa_private(v->tok, &spec, &parts, &priv, err);
    if (r == KC_OK)
        r = finish_import(v, o, &spec, priv, "pem", out, err);
done:
    for (i = 0; i < 8; i++)
        kc_secret_free(c[i]);
    EVP_PKEY_free(pk);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot import key '%s' into vault '%s'", o->name,
                               v->meta.name);
    return KC_OK;
}
