#include "kc_manifest.h"
#include "kc_gendoc.h"
#include "kc_keystate.h"
#include "kc_util.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MANIFEST_KIND "keycustody-manifest"
#define DOC_KIND "keycustody-signed-manifest"

/* --- the vault key --- */

static kc_rc ec_pkey(const unsigned char point[65], EVP_PKEY **out, kc_error *err)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    kc_rc r = KC_OK;

    *out = NULL;
    if (bld == NULL || pc == NULL ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 65) ||
        (params = OSSL_PARAM_BLD_to_param(bld)) == NULL || EVP_PKEY_fromdata_init(pc) <= 0 ||
        EVP_PKEY_fromdata(pc, out, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        r = kc_error_set(err, KC_INTEGRITY, "the vault key's public half is not a P-256 key");
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(pc);
    return r;
}

kc_rc kc_spki_fingerprint(void *pkey, char fp[KC_FINGERPRINT_HEX + 1], kc_error *err)
{
    unsigned char *der = NULL, md[32];
    int len = i2d_PUBKEY(pkey, &der);

    if (len <= 0)
        return kc_error_set(err, KC_ERR, "cannot encode a public key");
    SHA256(der, (size_t)len, md);
    OPENSSL_free(der);
    kc_hex_encode(md, sizeof(md), fp);
    return KC_OK;
}

kc_rc kc_rsa_public_pkey(const unsigned char *n, size_t n_len, const unsigned char *e,
                         size_t e_len, void **out, kc_error *err)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    BIGNUM *bn = BN_bin2bn(n, (int)n_len, NULL), *be = BN_bin2bn(e, (int)e_len, NULL);
    EVP_PKEY *pk = NULL;
    kc_rc r = KC_OK;

    *out = NULL;
    if (bld == NULL || pc == NULL || bn == NULL || be == NULL ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
        (params = OSSL_PARAM_BLD_to_param(bld)) == NULL || EVP_PKEY_fromdata_init(pc) <= 0 ||
        EVP_PKEY_fromdata(pc, &pk, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        r = kc_error_set(err, KC_ERR, "OpenSSL cannot build the RSA public key");
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(pc);
    BN_free(bn);
    BN_free(be);
    *out = pk;
    return r;
}

/* The vault key's halves: the public one (public, as made), and the private
 * one (private; seen only after login). A second public half, or a private
 * key with the label that is not private, was planted without the PIN. */
static kc_rc find_signer(kc_tok *tok, int with_private, kc_obj *pub, int *has_pub, kc_obj *priv,
                         int *has_priv, kc_key_type *pub_type, kc_error *err)
{
    kc_key_obj *objs = NULL;
    size_t n = 0, i, npub = 0, bad = 0;
    /* a reader needs the public half alone: one search */
    kc_rc r = with_private ? kc_tok_find_keys(tok, KC_MANIFEST_KEY_LABEL, NULL, 0, &objs, &n, err)
                           : kc_tok_find_public_keys(tok, KC_MANIFEST_KEY_LABEL, &objs, &n, err);

    *has_pub = *has_priv = 0;
    if (r != KC_OK)
        return r;
    for (i = 0; i < n; i++) {
        if (objs[i].unreadable) {
            free(objs);
            return kc_error_set(err, KC_TOKEN,
                                "vault '%s' did not give the attributes of its vault key (the "
                                "token failed, perhaps while another process wrote it); run the "
                                "command again",
                                kc_tok_info_get(tok)->label);
        }
        if ((objs[i].type != KC_KT_EC && objs[i].type != KC_KT_RSA) || (objs[i].is_private && !objs[i].token_private) ||
            (!objs[i].is_private && objs[i].token_private)) {
            bad++;
        } else if (objs[i].is_private) {
            if (*has_priv)
                bad++;
            *priv = objs[i].handle;
            *has_priv = 1;
        } else {
            npub++;
            *pub = objs[i].handle;
            *has_pub = 1;
            if (pub_type != NULL)
                *pub_type = objs[i].type;
        }
    }
    free(objs);
    if (bad > 0 || npub > 1) {
        kc_error_set(err, KC_INTEGRITY,
                     "vault '%s' holds %zu key object(s) labelled '%s' that keycustody did not "
                     "make: its vault key was tampered with, and nothing it would sign is "
                     "believed",
                     kc_tok_info_get(tok)->label, bad + (npub > 1 ? npub - 1 : 0),
                     KC_MANIFEST_KEY_LABEL);
        kc_error_hint(err, "keep a copy of the token for investigation; compare the vault "
                           "key's fingerprint with the one recorded at 'vault init'");
        return KC_INTEGRITY;
    }
    return KC_OK;
}

/* The vault key's public half as OpenSSL's: EC P-256, or RSA (a module
 * without EC, kc_arrangement). */
static kc_rc public_pkey(kc_tok *tok, kc_obj pub, kc_key_type type, unsigned char point[65],
                         EVP_PKEY **pk, kc_error *err)
{
    unsigned char *n = NULL, *e = NULL;
    size_t n_len = 0, e_len = 0;
    kc_rc r;

    if (type == KC_KT_RSA) {
        r = kc_tok_rsa_public(tok, pub, &n, &n_len, &e, &e_len, err);
        if (r == KC_OK && n_len < 384)
            r = kc_error_set(err, KC_INTEGRITY, "the vault key of vault '%s' is RSA of fewer "
                             "than 3072 bits: keycustody did not make it",
                             kc_tok_info_get(tok)->label);
        if (r == KC_OK)
            r = kc_rsa_public_pkey(n, n_len, e, e_len, (void **)pk, err);
        free(n);
        free(e);
        return r;
    }
    r = kc_tok_ec_point(tok, pub, point, err);
    if (r == KC_OK)
        r = ec_pkey(point, pk, err);
    return r;
}

kc_rc kc_manifest_signer(kc_tok *tok, void **pkey, char fp[KC_FINGERPRINT_HEX + 1], kc_error *err)
{
    unsigned char point[65];
    kc_obj pub = 0, priv = 0;
    int has_pub = 0, has_priv = 0;
    kc_key_type pub_type = KC_KT_OTHER;
    EVP_PKEY *pk = NULL;
    kc_rc r = find_signer(tok, 0, &pub, &has_pub, &priv, &has_priv, &pub_type, err);

    *pkey = NULL;
    if (r != KC_OK)
        return r;
    if (!has_pub)
        return kc_error_set(err, KC_NOT_FOUND, "vault '%s' has no vault key ('%s')",
                            kc_tok_info_get(tok)->label, KC_MANIFEST_KEY_LABEL);
    r = public_pkey(tok, pub, pub_type, point, &pk, err);
    if (r == KC_OK)
        r = kc_spki_fingerprint(pk, fp, err);
    if (r != KC_OK) {
        EVP_PKEY_free(pk);
        return r;
    }
    *pkey = pk;
    return KC_OK;
}

void kc_manifest_signer_free(void *pkey)
{
    EVP_PKEY_free(pkey);
}

kc_rc kc_manifest_fingerprint(kc_tok *tok, char fp[KC_FINGERPRINT_HEX + 1], kc_error *err)
{
    void *pk = NULL;
    kc_rc r = kc_manifest_signer(tok, &pk, fp, err);

    EVP_PKEY_free(pk);
    return r;
}

kc_rc kc_manifest_rsa_spki_hash(const unsigned char *n, size_t n_len, const unsigned char *e,
                                size_t e_len, char out[KC_FINGERPRINT_HEX + 1], kc_error *err)
{
    void *pk = NULL;
    kc_rc r = kc_rsa_public_pkey(n, n_len, e, e_len, &pk, err);

    if (r == KC_OK)
        r = kc_spki_fingerprint(pk, out, err);
    EVP_PKEY_free(pk);
    return r;
}

/* --- the signed document --- */

static char *canonical(const json_t *manifest)
{
    return json_dumps(manifest, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
}

/* An RSA vault key signs with PSS, SHA-256, MGF1-SHA-256, a 32-byte salt
 * (kc_tok_rsa_pss_sign); an EC one needs nothing set. */
static int pss_params(EVP_PKEY *pk, EVP_PKEY_CTX *vc)
{
    if (EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA)
        return 1;
    return EVP_PKEY_CTX_set_rsa_padding(vc, RSA_PKCS1_PSS_PADDING) > 0 &&
           EVP_PKEY_CTX_set_signature_md(vc, EVP_sha256()) > 0 &&
           EVP_PKEY_CTX_set_rsa_mgf1_md(vc, EVP_sha256()) > 0 &&
           EVP_PKEY_CTX_set_rsa_pss_saltlen(vc, 32) > 0;
}

kc_rc kc_manifest_doc_check(const unsigned char *buf, size_t len, unsigned long *generation,
                            char base[KC_GENDOC_DIGEST_HEX + 1], void *arg, kc_error *err)
{
    EVP_PKEY *pk = arg;
    EVP_PKEY_CTX *vc = NULL;
    json_t *doc, *m;
    unsigned char md[32], *sig = NULL;
    const char *kind, *sig64, *mkind;
    char *text = NULL, signer[KC_FINGERPRINT_HEX + 1];
    size_t sig_len = 0;
    kc_error ignored;
    kc_rc r = KC_INTEGRITY;

    /* these bytes verified under this key before in this process: the same
     * answer (a command reads, writes and reads again its manifest) */
    kc_error_clear(&ignored);
    if (pk == NULL || kc_spki_fingerprint(pk, signer, &ignored) != KC_OK)
        signer[0] = '\0';
    if (signer[0] != '\0' && kc_gendoc_memo_get(kc_manifest_doc_check, signer, buf, len,
                                                generation, base))
        return KC_OK;
    doc = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, NULL);
    kind = json_string_value(json_object_get(doc, "kind"));
    sig64 = json_string_value(json_object_get(doc, "sig"));
    m = json_object_get(doc, "manifest");
    mkind = json_string_value(json_object_get(m, "kind"));
    if (doc == NULL || kind == NULL || strcmp(kind, DOC_KIND) != 0 || sig64 == NULL ||
        !json_is_object(m) || mkind == NULL || strcmp(mkind, MANIFEST_KIND) != 0 ||
        json_integer_value(json_object_get(m, "schema")) != 1 ||
        !json_is_integer(json_object_get(m, "generation")) ||
        !json_is_object(json_object_get(m, "vault")) ||
        !json_is_object(json_object_get(m, "keys")) || !kc_gendoc_base_get(m, base)) {
        kc_error_set(err, KC_INTEGRITY, "it is not a signed vault manifest");
        goto done;
    }
    text = canonical(m);
    sig = kc_b64url_decode(sig64, &sig_len);
    if (text == NULL || sig == NULL) {
        kc_error_set(err, KC_INTEGRITY, "its signature is not base64url");
        goto done;
    }
    SHA256((const unsigned char *)text, strlen(text), md);
    vc = EVP_PKEY_CTX_new(pk, NULL);
    if (vc == NULL || EVP_PKEY_verify_init(vc) <= 0 || pss_params(pk, vc) != 1 ||
        EVP_PKEY_verify(vc, sig, sig_len, md, sizeof(md)) != 1) {
        kc_error_set(err, KC_INTEGRITY, "its signature does not verify under the vault key");
        goto done;
    }
    *generation = (unsigned long)json_integer_value(json_object_get(m, "generation"));
    if (signer[0] != '\0')
        kc_gendoc_memo_put(kc_manifest_doc_check, signer, buf, len, *generation, base);
    r = KC_OK;
done:
    EVP_PKEY_CTX_free(vc);
    free(sig);
    free(text);
    json_decref(doc);
    return r;
}

kc_rc kc_tok_still_answers(kc_tok *tok, kc_error *err)
{
    kc_error e;

    kc_error_clear(&e);
    if (kc_tok_refresh(tok, &e) == KC_OK)
        return KC_OK;
    *err = e;
    kc_error_hint(err, "the module stopped answering for '%s' while other processes wrote it "
                       "(SoftHSM does so until it is started again): run the command again",
                  kc_tok_info_get(tok)->label);
    return e.code;
}

/* signer (may be NULL): the vault key's public half it checked the
 * manifest with, for a writer to check its own write with (caller frees).
 * given (may be NULL): that half as the caller found it already, used
 * instead of finding it again (the caller keeps it). */
static kc_rc manifest_read(kc_tok *tok, const char *expect_fp, json_t **manifest,
                           char fp[KC_FINGERPRINT_HEX + 1], unsigned long *next,
                           kc_gendoc_ref *ref, void *given, void **signer, kc_error *err)
{
    const char *vault = kc_tok_info_get(tok)->label;
    kc_data_obj *objs = NULL;
    unsigned char *buf = NULL;
    size_t len = 0, n = 0;
    void *pk = NULL;
    json_t *doc;
    int tries;
    kc_rc r;

    *manifest = NULL;
    *next = 1;
    if (given != NULL) {
        r = kc_spki_fingerprint(given, fp, err);
        if (r == KC_OK && EVP_PKEY_up_ref(given) == 1)
            pk = given;
        else if (r == KC_OK)
            r = kc_error_set(err, KC_ERR, "out of memory");
    } else {
        r = kc_manifest_signer(tok, &pk, fp, err);
    }
    if (r == KC_NOT_FOUND) {
        /* no vault key: a token that is no vault, unless it holds metadata,
         * which unsigned is not believed */
        kc_error clear;
        kc_error_clear(&clear);
        if (kc_tok_find_data(tok, KC_GENDOC_APPLICATION, KC_VAULT_META_LABEL, KC_WHERE_ANY, &objs,
                             &n, NULL, &clear) == KC_OK &&
            n > 0) {
            kc_p11_data_objs_free(objs, n);
            kc_error_set(err, KC_INTEGRITY,
                         "token '%s' holds vault metadata but no vault key to vouch for it: "
                         "unsigned metadata is not believed",
                         vault);
            kc_error_hint(err, "a vault made by keycustody has its key ('%s'); was it "
                               "destroyed, or the metadata planted?",
                          KC_MANIFEST_KEY_LABEL);
            return KC_INTEGRITY;
        }
        kc_p11_data_objs_free(objs, n);
        return kc_error_set(err, KC_NOT_FOUND, "token '%s' is not a keycustody vault", vault);
    }
    if (r != KC_OK)
        return r;
    if (expect_fp != NULL && expect_fp[0] != '\0' && strcmp(expect_fp, fp) != 0) {
        EVP_PKEY_free(pk);
        kc_error_set(err, KC_INTEGRITY,
                     "vault '%s' signs with key sha256:%s, but sha256:%s is pinned for it: the "
                     "vault key was replaced, or this is another token with the same label",
                     vault, fp, expect_fp);
        kc_error_hint(err, "compare the fingerprint 'vault show %s' prints with the one recorded "
                           "when the vault was made, out of band, before trusting it",
                      vault);
        return KC_INTEGRITY;
    }
    /* A vault key and no manifest: SoftHSM 2.6.1 now and then finds none of
     * a token's data objects while other processes write it (test_misuse
     * "writers on many hosts"); asked a moment later, it does. */
    for (tries = 0; tries < 4; tries++) {
        if (tries > 0) {
            struct timespec pause = {0, 100L * 1000 * 1000};
            (void)nanosleep(&pause, NULL);
            kc_error_clear(err);
        }
        r = kc_gendoc_read(tok, KC_VAULT_META_LABEL, KC_WHERE_PUBLIC, "vault manifest",
                           kc_manifest_doc_check, pk, &buf, &len, next, ref, err);
        if (r != KC_NOT_FOUND)
            break;
    }
    /* SoftHSM 2.6.1 stops re-reading a token for the rest of the process
     * once it read token.object while another process rewrote it (OSToken
     * "integrity check failed"); from then on C_GetTokenInfo fails and new
     * objects stay unseen. That is the token failing, not a vault without
     * its manifest. */
    if (r == KC_NOT_FOUND && kc_tok_still_answers(tok, err) != KC_OK) {
        EVP_PKEY_free(pk);
        return err->code;
    }
    if (r == KC_OK && signer != NULL) {
        *signer = pk;
        pk = NULL;
    }
    EVP_PKEY_free(pk);
    if (r == KC_NOT_FOUND)
        return kc_error_set(err, KC_NOT_FOUND,
                            "token '%s' has a vault key but no manifest: 'vault init' did not "
                            "finish, or the manifest was removed",
                            vault);
    if (r != KC_OK)
        return r;
    doc = json_loadb((const char *)buf, len, 0, NULL);
    free(buf);
    *manifest = json_incref(json_object_get(doc, "manifest"));
    json_decref(doc);
    return *manifest != NULL ? KC_OK : kc_error_set(err, KC_ERR, "out of memory");
}

kc_rc kc_manifest_read(kc_tok *tok, const char *expect_fp, json_t **manifest,
                       char fp[KC_FINGERPRINT_HEX + 1], unsigned long *next, kc_gendoc_ref *ref,
                       kc_error *err)
{
    return manifest_read(tok, expect_fp, manifest, fp, next, ref, NULL, NULL, err);
}

/* --- writing --- */

/* The signed view of each key the key state knows: current, deleted, and per
 * version enabled, ops and the hash of its public key on the token. */
/* The public-key hash of each version of a key that old (the signed
 * manifest this write replaces, when it was checked against the vault's
 * private record) names, copied into versions; *missing is set when a
 * version of ks has none there and must be read from the token. */
static void reuse_versions(const json_t *old, const char *name, json_t *ks, json_t *versions,
                           int *missing)
{
    json_t *ov = json_object_get(json_object_get(json_object_get(old, "keys"), name), "versions");
    json_t *vs, *mv;
    const char *hex, *spki;

    *missing = 0;
    json_object_foreach(json_object_get(ks, "versions"), hex, vs)
    {
        spki = json_string_value(json_object_get(json_object_get(ov, hex), "spki"));
        if (spki == NULL) {
            *missing = 1;
            continue;
        }
        mv = json_pack("{s:s, s:b, s:s}", "spki", spki, "enabled",
                       kc_keystate_bool(vs, "enabled", 1), "ops", kc_keystate_str(vs, "ops", ""));
        json_object_set_new(versions, hex, mv);
    }
}

/* The versions of key name that versions lacks, from the token: the public
 * key of a version as its private half has it (only a PIN holder made that
 * object, while anyone can plant a public one with the version's label and
 * id). Found by the key's label, so the cost is one key's objects. */
static kc_rc token_versions(kc_vault *v, const char *name, json_t *ks, json_t *versions,
                            kc_error *err)
{
    kc_key_obj *objs = NULL;
    size_t nobjs = 0, i;
    unsigned char *n = NULL, *e = NULL;
    size_t n_len = 0, e_len = 0;
    char hex[129], spki[KC_FINGERPRINT_HEX + 1];
    json_t *vs, *mv;
    kc_rc r;

    r = kc_tok_find_keys(v->tok, name, NULL, 0, &objs, &nobjs, err);
    for (i = 0; r == KC_OK && i < nobjs; i++) {
        if (!objs[i].is_private || !objs[i].token_private || strcmp(objs[i].label, name) != 0)
            continue;
        kc_hex_encode(objs[i].id, objs[i].id_len, hex);
        vs = kc_keystate_version(ks, hex, 0);
        if (vs == NULL || json_object_get(versions, hex) != NULL)
            continue; /* not a version keycustody recorded, or known already */
        r = kc_tok_rsa_public(v->tok, objs[i].handle, &n, &n_len, &e, &e_len, err);
        if (r == KC_OK)
            r = kc_manifest_rsa_spki_hash(n, n_len, e, e_len, spki, err);
        free(n);
        free(e);
        n = e = NULL;
        if (r != KC_OK)
            break;
        mv = json_pack("{s:s, s:b, s:s}", "spki", spki, "enabled",
                       kc_keystate_bool(vs, "enabled", 1), "ops", kc_keystate_str(vs, "ops", ""));
        json_object_set_new(versions, hex, mv);
    }
    free(objs);
    return r;
}

/* The keys of the manifest, from the key state. A version the previous
 * signed manifest already binds to its public key keeps that binding (the
 * vault key signed it, and a version's key pair never changes): only new
 * versions are read from the token, so a write costs what changed, not what
 * the vault holds. old is NULL when the previous manifest is not to be
 * believed for this (a repair, or none checked): then every key is read. */
static kc_rc keys_section(kc_vault *v, const json_t *old, json_t *keys, kc_error *err)
{
    json_t *ks, *mk, *versions;
    const char *name;
    int missing;
    kc_rc r = KC_OK;

    json_object_foreach(json_object_get(v->state, "keys"), name, ks)
    {
        mk = json_pack("{s:s, s:b, s:{}}", "current", kc_keystate_str(ks, "current", ""),
                       "deleted", json_is_object(json_object_get(ks, "deleted")), "versions");
        versions = json_object_get(mk, "versions");
        missing = 1;
        if (old != NULL)
            reuse_versions(old, name, ks, versions, &missing);
        if (missing)
            r = token_versions(v, name, ks, versions, err);
        json_object_set_new(keys, name, mk);
        if (r != KC_OK)
            break;
    }
    return r;
}

/* The vault key's private half, made when the vault has none, and its
 * public half as OpenSSL's in *pk (caller frees): one search finds both. */
static kc_rc signing_key(kc_vault *v, kc_obj *priv, EVP_PKEY **pk, kc_error *err)
{
    unsigned char point[65];
    kc_obj pub = 0;
    int has_pub = 0, has_priv = 0;
    kc_key_type type = KC_KT_OTHER;
    kc_rc r = find_signer(v->tok, 1, &pub, &has_pub, priv, &has_priv, &type, err);

    *pk = NULL;
    if (r == KC_OK && has_priv && !has_pub)
        return kc_error_set(err, KC_INTEGRITY,
                            "vault '%s' has the private half of its vault key but not its "
                            "public half: it was destroyed outside keycustody",
                            v->meta.name);
    if (r != KC_OK || has_priv)
        return r == KC_OK ? public_pkey(v->tok, pub, type, point, pk, err) : r;
    if (has_pub) {
        kc_data_obj *docs = NULL;
        size_t n = 0;

        /* SoftHSM writes the public half first: a generation killed in
         * between leaves it alone. Before any manifest was signed that is
         * all it can be, and it goes; after, it is not ours. */
        r = kc_tok_find_data(v->tok, KC_GENDOC_APPLICATION, KC_VAULT_META_LABEL, KC_WHERE_ANY,
                             &docs, &n, NULL, err);
        kc_p11_data_objs_free(docs, n);
        if (r == KC_OK && n > 0)
            return kc_error_set(err, KC_INTEGRITY,
                                "vault '%s' has the public half of a vault key but not its "
                                "private half: the public one was planted, or the private one "
                                "destroyed",
                                v->meta.name);
        if (r == KC_OK)
            r = kc_tok_destroy(v->tok, pub, err);
        if (r != KC_OK)
            return r;
    }
    if (v->meta.arr.signer == KC_SIGNER_RSA_PSS) {
        type = KC_KT_RSA;
        r = kc_tok_generate_rsa_signer(v->tok, KC_MANIFEST_KEY_LABEL, &pub, priv, err);
    } else {
        type = KC_KT_EC;
        r = kc_tok_generate_ec_signer(v->tok, KC_MANIFEST_KEY_LABEL, &pub, priv, err);
    }
    return r == KC_OK ? public_pkey(v->tok, pub, type, point, pk, err) : r;
}

/* The signature of md by the vault key priv, as OpenSSL verifies it:
 * DER ECDSA-Sig-Value, or the RSA-PSS signature as it is. */
static kc_rc sign_digest(kc_vault *v, kc_obj priv, const unsigned char md[32], char **sig64,
                         kc_error *err)
{
    unsigned char raw[512], *der = NULL;
    size_t raw_len = sizeof(raw);
    ECDSA_SIG *sig = NULL;
    BIGNUM *br = NULL, *bs = NULL;
    int der_len = 0;
    kc_rc r;

    *sig64 = NULL;
    if (v->meta.arr.signer == KC_SIGNER_RSA_PSS) {
        r = kc_tok_rsa_pss_sign(v->tok, priv, md, raw, &raw_len, err);
        if (r == KC_OK && (*sig64 = kc_b64url_encode(raw, raw_len)) == NULL)
            r = kc_error_set(err, KC_ERR, "out of memory");
        return r;
    }
    r = kc_tok_ecdsa_sign(v->tok, priv, md, raw, err);
    if (r != KC_OK)
        return r;
    /* PKCS#11 gives r || s; OpenSSL verifies the DER form */
    sig = ECDSA_SIG_new();
    br = BN_bin2bn(raw, 32, NULL);
    bs = BN_bin2bn(raw + 32, 32, NULL);
    if (sig == NULL || br == NULL || bs == NULL || ECDSA_SIG_set0(sig, br, bs) != 1) {
        BN_free(br);
        BN_free(bs);
        r = kc_error_set(err, KC_ERR, "out of memory");
    } else if ((der_len = i2d_ECDSA_SIG(sig, &der)) <= 0 ||
               (*sig64 = kc_b64url_encode(der, (size_t)der_len)) == NULL) {
        r = kc_error_set(err, KC_ERR, "cannot encode the signature");
    }
    ECDSA_SIG_free(sig);
    OPENSSL_free(der);
    return r;
}

static kc_rc sign_doc(kc_vault *v, kc_obj priv, json_t *manifest, char **out, kc_error *err)
{
    unsigned char md[32];
    char *text = canonical(manifest), *sig64 = NULL;
    json_t *doc = NULL;
    kc_rc r = KC_OK;

    *out = NULL;
    if (text == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    SHA256((const unsigned char *)text, strlen(text), md);
    free(text);
    r = sign_digest(v, priv, md, &sig64, err);
    if (r == KC_OK) {
        doc = json_pack("{s:s, s:O, s:s}", "kind", DOC_KIND, "manifest", manifest, "sig", sig64);
        *out = doc != NULL ? json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        if (*out == NULL)
            r = kc_error_set(err, KC_ERR, "out of memory");
    }
    free(sig64);
    json_decref(doc);
    return r;
}

kc_rc kc_vault_changed_meanwhile(const kc_vault *v, const char *what, unsigned long read,
                                 unsigned long now, kc_error *err)
{
    if (now == read)
        kc_error_set(err, KC_CONFLICT,
                     "vault '%s' changed while this command ran: its %s of generation %lu is "
                     "not the one this command read (another write of that generation was "
                     "committed); nothing was written",
                     v->meta.name, what, read);
    else
        kc_error_set(err, KC_CONFLICT,
                     "vault '%s' changed while this command ran: its %s is at generation %lu, "
                     "this command read generation %lu; nothing was written",
                     v->meta.name, what, now, read);
    kc_error_hint(err, "another keycustody (on another host?) changed it: run the command again");
    return KC_CONFLICT;
}

kc_rc kc_manifest_write(kc_vault *v, kc_vault_meta *m, kc_error *err)
{
    return kc_manifest_write_after(v, m, 0, err);
}

kc_rc kc_manifest_write_after(kc_vault *v, kc_vault_meta *m, unsigned long after, kc_error *err)
{
    char fp[KC_FINGERPRINT_HEX + 1], *meta = NULL, *doc = NULL;
    unsigned long next = 1;
    json_t *old = NULL, *manifest = NULL, *keys;
    kc_gendoc_ref base = {0, 0, "", 0, 0};
    EVP_PKEY *signer = NULL;
    kc_obj priv = 0;
    kc_rc r;

    r = kc_vault_login(v, err);
    if (r == KC_OK)
        r = signing_key(v, &priv, &signer, err);
    /* a tampered manifest on the token stops the write: writing over it
     * would remove what shows the tampering */
    if (r == KC_OK) {
        r = manifest_read(v->tok, NULL, &old, fp, &next, &base, signer, NULL, err);
        /* none yet: the first write ('vault init'); once read, never gone */
        if (r == KC_NOT_FOUND && m->generation > 0)
            r = kc_vault_lost_sight(v, err);
        if (r == KC_NOT_FOUND) {
            kc_error_clear(err);
            r = KC_OK;
        }
    }
    /* and it must be the one the vault's private record names, or newer:
     * after is a repair's, which writes over a rollback on purpose */
    /* (a guessed base is refused by the write itself, as a conflict) */
    if (r == KC_OK && base.handle != 0 && !base.guessed && after == 0)
        r = kc_manifest_check_base(v, &base, err);
    /* only a manifest checked that way lends its versions to this one */
    if (base.handle == 0 || base.guessed || after != 0) {
        json_decref(old);
        old = NULL;
    }
    /* The vault as this command read it must still be the newest: another
     * writer (on another host: this host's lock keeps its own out) makes
     * this one stop with nothing written, rather than write over it. */
    if (r == KC_OK && next != m->generation + 1)
        r = kc_vault_changed_meanwhile(v, "manifest", m->generation, next - 1, err);
    /* the very manifest it read, not another candidate of its generation
     * (as for the key state: kc_keystate_commit); a repair (after) writes
     * over what is there on purpose */
    if (r == KC_OK && base.handle != 0 && after == 0 && m == &v->meta &&
        strcmp(base.digest, v->manifest_digest) != 0)
        r = kc_vault_changed_meanwhile(v, "manifest", m->generation, m->generation, err);
    if (r == KC_OK)
        r = kc_keystate_load(v, err);
    if (r != KC_OK) {
        kc_manifest_signer_free(signer);
        json_decref(old);
        return kc_error_prefix(err, "cannot sign the manifest of vault '%s'", v->meta.name);
    }
    if (next <= after)
        next = after + 1;
    m->generation = next;
    r = kc_vault_meta_encode(m, &meta, err);
    if (r == KC_OK) {
        manifest = json_pack("{s:s, s:i, s:I, s:o, s:{}}", "kind", MANIFEST_KIND, "schema", 1,
                             "generation", (json_int_t)next, "vault",
                             json_loads(meta, 0, NULL), "keys");
        keys = json_object_get(manifest, "keys");
        r = manifest != NULL ? keys_section(v, old, keys, err)
                             : kc_error_set(err, KC_ERR, "out of memory");
    }
    if (r == KC_OK)
        r = kc_gendoc_base_set(manifest, &base, err);
    if (r == KC_OK)
        r = sign_doc(v, priv, manifest, &doc, err);
    if (r == KC_OK)
        r = kc_gendoc_write(v->tok, KC_VAULT_META_LABEL, 0, "vault manifest", doc, next, &base,
                            kc_manifest_doc_check, signer, err);
    if (r == KC_OK)
        kc_manifest_digest(doc, v->manifest_digest);
    kc_manifest_signer_free(signer);
    json_decref(old);
    free(meta);
    free(doc);
    json_decref(manifest);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot sign the manifest of vault '%s'", v->meta.name);
    /* committed: this is the vault's manifest now, and its private record
     * says so (kc_current.c) */
    r = kc_manifest_record_current(v, m, next, v->manifest_digest, err);
    if (r != KC_OK) {
        /* the cause (the module's CKR_, say) is kept after what was written */
        kc_error_prefix(err,
                        "vault '%s': manifest generation %lu was written, but not the vault's "
                        "private record of it",
                        v->meta.name, next);
        kc_error_hint(err, "the change was made; until a later write records the manifest, a "
                           "copy of the previous one put back on the token is not noticed");
    }
    return r;
}
