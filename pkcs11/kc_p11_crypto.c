/* Cryptographic operations on the token: RSA-OAEP, AES key wrap with
 * padding, HMAC-SHA256. Every key stays on the token; only wrapped blobs,
 * MACs and (for unwrap) the caller's own secret come back. */
#include "kc_p11_int.h"

#include <openssl/crypto.h>

#include <stdlib.h>
#include <string.h>

#define KC_P11_OAEP_MAX 512 /* bytes: the modulus of RSA-4096 */

static void oaep_params(CK_RSA_PKCS_OAEP_PARAMS *p, kc_oaep hash)
{
    memset(p, 0, sizeof(*p));
    p->hashAlg = hash == KC_OAEP_SHA256 ? CKM_SHA256 : CKM_SHA_1;
    p->mgf = hash == KC_OAEP_SHA256 ? CKG_MGF1_SHA256 : CKG_MGF1_SHA1;
    p->source = CKZ_DATA_SPECIFIED;
    p->pSourceData = NULL;
    p->ulSourceDataLen = 0;
}

/* A module that does not take the OAEP parameters says so with one of these;
 * SoftHSM 2.6.1 answers CKR_ARGUMENTS_BAD to anything but SHA-1/MGF1-SHA1. */
static int params_refused(CK_RV rv)
{
    return rv == CKR_ARGUMENTS_BAD || rv == CKR_MECHANISM_PARAM_INVALID;
}

static CK_RV wrap_once(kc_tok *t, kc_obj pub, CK_OBJECT_HANDLE sec, kc_oaep hash,
                       unsigned char **out, size_t *out_len, const char **func)
{
    CK_RSA_PKCS_OAEP_PARAMS params;
    CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &params, sizeof(params)};
    unsigned char *buf = NULL;
    CK_ULONG len = 0;
    CK_RV rv;

    oaep_params(&params, hash);
    *func = "C_WrapKey";
    rv = t->f->C_WrapKey(t->session, &mech, pub, sec, NULL, &len);
    if (rv != CKR_OK)
        return rv;
    buf = malloc(len);
    if (buf == NULL)
        return CKR_HOST_MEMORY;
    rv = t->f->C_WrapKey(t->session, &mech, pub, sec, buf, &len);
    if (rv != CKR_OK) {
        free(buf);
        return rv;
    }
    *out = buf;
    *out_len = len;
    return CKR_OK;
}

kc_rc kc_tok_oaep_wrap(kc_tok *t, kc_obj pub, kc_oaep hash, const kc_secret *secret,
                       unsigned char **out, size_t *out_len, kc_oaep *used, kc_error *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ATTRIBUTE tmpl[] = {
        ATTR(CKA_CLASS, &cls, sizeof(cls)),
        ATTR(CKA_KEY_TYPE, &kt, sizeof(kt)),
        ATTR_BOOL(CKA_TOKEN, 0),
        ATTR_BOOL(CKA_PRIVATE, 0),
        ATTR_BOOL(CKA_SENSITIVE, 1),
        ATTR_BOOL(CKA_EXTRACTABLE, 1),
        ATTR(CKA_VALUE, secret->data, secret->len),
    };
    CK_OBJECT_HANDLE sec = CK_INVALID_HANDLE;
    const char *func = "C_CreateObject";
    kc_oaep h = hash;
    CK_RV rv;
    kc_rc r;

    *out = NULL;
    *out_len = 0;
    r = kc_tok_session(t, err);
    if (r != KC_OK)
        return r;
    /* A public session object: wrapping under a public key needs no login. */
    /* a session object: made again on a new session if this one is gone */
    KC_TOK_CALL(t, rv,
                t->f->C_CreateObject(t->session, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &sec));
    if (rv != CKR_OK)
        return kc_p11_fail(err, func, rv, "cannot load the secret into a session object");
    if (h == KC_OAEP_AUTO)
        h = t->oaep_sha256 == 0 ? KC_OAEP_SHA1 : KC_OAEP_SHA256;
    rv = wrap_once(t, pub, sec, h, out, out_len, &func);
    if (rv != CKR_OK && params_refused(rv) && hash == KC_OAEP_AUTO && h == KC_OAEP_SHA256) {
        t->oaep_sha256 = 0;
        h = KC_OAEP_SHA1;
        rv = wrap_once(t, pub, sec, h, out, out_len, &func);
    } else if (rv == CKR_OK && h == KC_OAEP_SHA256) {
        t->oaep_sha256 = 1;
    }
    (void)t->f->C_DestroyObject(t->session, sec);
    if (rv != CKR_OK) {
        r = kc_p11_fail(err, func, rv, "RSA-OAEP%s wrap failed", h == KC_OAEP_SHA256 ? "-256" : "");
        if (h == KC_OAEP_SHA256 && params_refused(rv))
            kc_error_hint(err, "this module does not take RSA-OAEP-256 (SoftHSM 2.6.1 has "
                               "SHA-1 only); use --alg RSA-OAEP or leave --alg out");
        else if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
            kc_error_hint(err, "the key does not allow wrapKey; see its ops with 'key show'");
        return r;
    }
    if (used != NULL)
        *used = h;
    return KC_OK;
}

/* A module that will not be asked for CKA_SENSITIVE or CKA_EXTRACTABLE in
 * an unwrap template answers so (openCryptoki 3.8.1: CKR_ATTRIBUTE_READ_ONLY;
 * test_modules facts). */
static int unwrap_template_refused(CK_RV rv)
{
    return rv == CKR_ATTRIBUTE_READ_ONLY || rv == CKR_TEMPLATE_INCONSISTENT;
}

/* The template without CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED. */
static CK_ULONG without_protection(CK_ATTRIBUTE *tmpl, CK_ULONG n)
{
    CK_ULONG i, k = 0;

    for (i = 0; i < n; i++)
        if (tmpl[i].type != CKA_SENSITIVE && tmpl[i].type != CKA_EXTRACTABLE &&
            tmpl[i].type != CKA_WRAP_WITH_TRUSTED)
            tmpl[k++] = tmpl[i];
    return k;
}

kc_rc kc_tok_oaep_unwrap(kc_tok *t, kc_obj priv, kc_oaep hash, const unsigned char *in,
                         size_t in_len, kc_secret **out, kc_error *err)
{
    CK_RSA_PKCS_OAEP_PARAMS params;
    CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &params, sizeof(params)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    /* No CKA_VALUE_LEN: SoftHSM 2.6.1 refuses it in an unwrap template
     * (CKR_ATTRIBUTE_READ_ONLY) and takes the length from the plaintext. */
    CK_ATTRIBUTE tmpl[] = {
        ATTR(CKA_CLASS, &cls, sizeof(cls)),
        ATTR(CKA_KEY_TYPE, &kt, sizeof(kt)),
        ATTR_BOOL(CKA_TOKEN, 0),
        ATTR_BOOL(CKA_PRIVATE, 1),
        ATTR_BOOL(CKA_SENSITIVE, 0),
        ATTR_BOOL(CKA_EXTRACTABLE, 1),
    };
    CK_OBJECT_HANDLE sec = CK_INVALID_HANDLE;
    CK_ATTRIBUTE val = ATTR(CKA_VALUE, NULL, 0);
    kc_secret *s = NULL;
    CK_RV rv;
    kc_rc r;

    *out = NULL;
    r = kc_tok_session(t, err);
    if (r != KC_OK)
        return r;
    oaep_params(&params, hash == KC_OAEP_SHA256 ? KC_OAEP_SHA256 : KC_OAEP_SHA1);
    rv = t->f->C_UnwrapKey(t->session, &mech, priv, (CK_BYTE_PTR)in, in_len, tmpl,
                           sizeof(tmpl) / sizeof(tmpl[0]), &sec);
    /* a module that will not be told the secret is readable (openCryptoki
     * 3.8.1) makes it readable by default: the session object is read and
     * destroyed at once either way, and a module whose default is sensitive
     * fails the read below */
    if (unwrap_template_refused(rv))
        rv = t->f->C_UnwrapKey(t->session, &mech, priv, (CK_BYTE_PTR)in, in_len, tmpl,
                               without_protection(tmpl, sizeof(tmpl) / sizeof(tmpl[0])), &sec);
    if (rv != CKR_OK) {
        r = kc_p11_fail(err, "C_UnwrapKey", rv, "RSA-OAEP%s unwrap failed",
                        hash == KC_OAEP_SHA256 ? "-256" : "");
        kc_tok_explain_lost(t, rv, err);
        if (hash == KC_OAEP_SHA256 && params_refused(rv))
            kc_error_hint(err, "this module does not take RSA-OAEP-256 (SoftHSM 2.6.1 has "
                               "SHA-1 only); the blob cannot be unwrapped on this token");
        else if (rv == CKR_GENERAL_ERROR || rv == CKR_ENCRYPTED_DATA_INVALID ||
                 rv == CKR_WRAPPED_KEY_INVALID)
            kc_error_hint(err, "the blob was not wrapped under this key version with this "
                               "algorithm, or it was altered");
        else if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
            kc_error_hint(err, "the key does not allow unwrapKey; see its ops with 'key show'");
        return r;
    }
    /* An RSA-OAEP plaintext is shorter than the modulus, so one read into a
     * buffer of the largest modulus (RSA-4096) always fits: no size query. */
    s = kc_secret_new(KC_P11_OAEP_MAX);
    if (s == NULL) {
        rv = CKR_HOST_MEMORY;
    } else {
        val.pValue = s->data;
        val.ulValueLen = KC_P11_OAEP_MAX;
        rv = t->f->C_GetAttributeValue(t->session, sec, &val, 1);
        s->len = rv == CKR_OK ? val.ulValueLen : 0;
    }
    (void)t->f->C_DestroyObject(t->session, sec);
    if (rv != CKR_OK) {
        kc_secret_free(s);
        return kc_p11_fail(err, "C_GetAttributeValue", rv, "cannot read the unwrapped secret");
    }
    *out = s;
    return KC_OK;
}

/* --- AES key wrap --- */

#define CBC_IV 16

const char *kc_wrap_mech_name(kc_wrap_mech m)
{
    switch (m) {
    case KC_WRAP_KWP:
        return "CKM_AES_KEY_WRAP_PAD";
    case KC_WRAP_KWP_KWP:
        return "CKM_AES_KEY_WRAP_KWP";
    case KC_WRAP_CBC_PAD:
        return "CKM_AES_CBC_PAD";
    default:
        return "none";
    }
}

int kc_wrap_mech_parse(const char *name, kc_wrap_mech *out)
{
    kc_wrap_mech m;

    for (m = KC_WRAP_KWP; m <= KC_WRAP_NONE; m++)
        if (name != NULL && strcmp(name, kc_wrap_mech_name(m)) == 0) {
            *out = m;
            return 0;
        }
    return -1;
}

static CK_MECHANISM_TYPE wrap_type(kc_wrap_mech m)
{
    return m == KC_WRAP_KWP_KWP ? CKM_AES_KEY_WRAP_KWP
           : m == KC_WRAP_CBC_PAD ? CKM_AES_CBC_PAD
                                  : CKM_AES_KEY_WRAP_PAD;
}

static kc_rc offers(kc_tok *t, CK_MECHANISM_TYPE type, const char *name, CK_FLAGS need,
                    const char *for_, kc_error *err)
{
    CK_MECHANISM_INFO info;
    CK_RV rv = t->f->C_GetMechanismInfo(t->slot, type, &info);

    if (rv == CKR_OK && (info.flags & need) == need)
        return KC_OK;
    kc_error_set(err, KC_TOKEN,
                 "token '%s' does not offer %s%s through module '%s' (%s), which %s needs; "
                 "nothing was done",
                 t->info.label, name, need & CKF_UNWRAP ? " unwrap" : need & CKF_WRAP ? " wrap" : "",
                 t->info.module, rv == CKR_OK ? "listed without the flag" : kc_p11_rv_name(rv),
                 for_);
    kc_error_hint(err, "a p11-kit server's client does not carry AES key wrap or AES-GCM: run "
                       "this where the module is loaded directly; see 'keycustody module check'");
    return KC_TOKEN;
}

kc_rc kc_tok_offers_key_wrap(kc_tok *t, kc_wrap_mech wm, int unwrap, const char *for_,
                             kc_error *err)
{
    if (wm == KC_WRAP_NONE)
        return kc_error_set(err, KC_TOKEN, "token '%s' has no AES key wrap, which %s needs",
                            t->info.label, for_);
    return offers(t, wrap_type(wm), kc_wrap_mech_name(wm), unwrap ? CKF_UNWRAP : CKF_WRAP, for_,
                  err);
}

kc_rc kc_tok_offers_gcm(kc_tok *t, const char *for_, kc_error *err)
{
    return offers(t, CKM_AES_GCM, "CKM_AES_GCM", CKF_ENCRYPT | CKF_DECRYPT, for_, err);
}

kc_rc kc_tok_key_wrap(kc_tok *t, kc_wrap_mech wm, kc_obj kek, kc_obj key, unsigned char **out,
                      size_t *out_len, kc_error *err)
{
    CK_MECHANISM mech = {wrap_type(wm), NULL, 0};
    unsigned char *buf = NULL, ivb[CBC_IV];
    size_t iv = wm == KC_WRAP_CBC_PAD ? CBC_IV : 0;
    CK_ULONG len = 0;
    CK_RV rv = CKR_OK;
    kc_rc r = kc_tok_session(t, err);

    *out = NULL;
    if (r != KC_OK)
        return r;
    if (wm == KC_WRAP_NONE)
        return kc_error_set(err, KC_TOKEN, "token '%s' has no AES key wrap", t->info.label);
    /* AES-CBC-PAD: a fresh IV for each key, sent with it; the size query
     * needs it too (openCryptoki 3.8.1 answers a query without it with
     * CKR_MECHANISM_PARAM_INVALID) */
    if (iv > 0) {
        rv = t->f->C_GenerateRandom(t->session, ivb, iv);
        mech.pParameter = ivb;
        mech.ulParameterLen = iv;
    }
    if (rv == CKR_OK)
        rv = t->f->C_WrapKey(t->session, &mech, kek, key, NULL, &len);
    if (rv == CKR_OK) {
        buf = malloc(iv + len);
        if (buf == NULL)
            return kc_error_set(err, KC_ERR, "out of memory");
        memcpy(buf, ivb, iv);
        rv = t->f->C_WrapKey(t->session, &mech, kek, key, buf + iv, &len);
    }
    if (rv != CKR_OK) {
        free(buf);
        r = kc_p11_fail(err, "C_WrapKey", rv, "AES key wrap (%s) failed", kc_wrap_mech_name(wm));
        kc_tok_explain_lost(t, rv, err);
        if (rv == CKR_KEY_NOT_WRAPPABLE)
            kc_error_hint(err, "the key can be wrapped only under a key the token's security "
                               "officer marked trusted (CKA_WRAP_WITH_TRUSTED)");
        else if (rv == CKR_KEY_UNEXTRACTABLE)
            kc_error_hint(err, "the key is not extractable: it never leaves the token");
        return r;
    }
    *out = buf;
    *out_len = iv + len;
    return KC_OK;
}

kc_rc kc_tok_key_unwrap_rsa(kc_tok *t, kc_wrap_mech wm, kc_obj kek, const unsigned char *in,
                            size_t in_len, const kc_rsa_spec *spec, kc_obj *out, kc_error *err)
{
    CK_MECHANISM mech = {wrap_type(wm), NULL, 0};
    CK_OBJECT_HANDLE *before = NULL, h = CK_INVALID_HANDLE;
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE kt;
    CK_ATTRIBUTE tmpl[16];
    CK_ULONG nt;
    size_t nbefore = 0, iv = wm == KC_WRAP_CBC_PAD ? CBC_IV : 0;
    CK_RV rv;
    kc_rc r;

    if (wm == KC_WRAP_NONE)
        return kc_error_set(err, KC_TOKEN, "token '%s' has no AES key unwrap", t->info.label);
    if (in_len <= iv)
        return kc_error_set(err, KC_INTEGRITY, "the wrapped key is too short");
    if (iv > 0) {
        mech.pParameter = (void *)in;
        mech.ulParameterLen = iv;
    }
    r = kc_p11_rsa_private_template(t, spec, tmpl, &cls, &kt, &nt, err);
    if (r == KC_OK)
        r = kc_p11_find_all(t, NULL, 0, &before, &nbefore, err);
    if (r != KC_OK)
        return r;
    /* SoftHSM 2.6.1 zero-pads the plaintext to a multiple of 8 before KWP,
     * so its blobs of PKCS#8 keys of 1217/1218 bytes carry trailing zeros;
     * the DER parser ignores them, so the key comes back whole. */
    rv = t->f->C_UnwrapKey(t->session, &mech, kek, (CK_BYTE_PTR)in + iv, in_len - iv, tmpl, nt,
                           &h);
    if (unwrap_template_refused(rv) && !spec->sensitive && !spec->wrap_with_trusted &&
        !spec->non_extractable) {
        /* a software key is readable anyway: made with the module's own
         * choice (openCryptoki 3.8.1: not sensitive, extractable) */
        nt = without_protection(tmpl, nt);
        rv = t->f->C_UnwrapKey(t->session, &mech, kek, (CK_BYTE_PTR)in + iv, in_len - iv, tmpl,
                               nt, &h);
    }
    if (rv != CKR_OK) {
        kc_p11_remove_leftovers(t, spec->label, before, nbefore);
        free(before);
        r = kc_p11_fail(err, "C_UnwrapKey", rv, "AES key unwrap (%s) of the private key failed",
                        kc_wrap_mech_name(wm));
        kc_tok_explain_lost(t, rv, err);
        /* SoftHSM answers a damaged KWP blob with CKR_GENERAL_ERROR. */
        if (rv == CKR_GENERAL_ERROR || rv == CKR_WRAPPED_KEY_INVALID ||
            rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_WRAPPED_KEY_LEN_RANGE)
            kc_error_hint(err, "the wrapped key was not made under this key, or it was altered");
        else if (unwrap_template_refused(rv))
            kc_error_hint(err, "the module does not let an unwrap say the key is sensitive; "
                               "keycustody does not make a key readable, not even for a moment");
        return r;
    }
    free(before);
    *out = h;
    return KC_OK;
}

kc_rc kc_tok_oaep_unwrap_aes(kc_tok *t, kc_obj priv, const unsigned char *in, size_t in_len,
                             kc_obj *out, kc_error *err)
{
    CK_RSA_PKCS_OAEP_PARAMS params;
    CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &params, sizeof(params)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE tmpl[] = {
        ATTR(CKA_CLASS, &cls, sizeof(cls)),
        ATTR(CKA_KEY_TYPE, &kt, sizeof(kt)),
        ATTR_BOOL(CKA_TOKEN, 0),
        ATTR_BOOL(CKA_PRIVATE, 1),
        ATTR_BOOL(CKA_SENSITIVE, 1),
        ATTR_BOOL(CKA_EXTRACTABLE, 0),
        ATTR_BOOL(CKA_UNWRAP, 1),
        ATTR_BOOL(CKA_WRAP, 0),
        ATTR_BOOL(CKA_ENCRYPT, 0),
        ATTR_BOOL(CKA_DECRYPT, 0),
    };
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    oaep_params(&params, KC_OAEP_SHA1);
    rv = t->f->C_UnwrapKey(t->session, &mech, priv, (CK_BYTE_PTR)in, in_len, tmpl,
                           sizeof(tmpl) / sizeof(tmpl[0]), &h);
    if (rv != CKR_OK) {
        r = kc_p11_fail(err, "C_UnwrapKey", rv, "RSA-OAEP unwrap of the transfer key failed");
        kc_error_hint(err, "the file was not made for this key-exchange key, or it was altered");
        kc_tok_explain_lost(t, rv, err);
        return r;
    }
    *out = h;
    return KC_OK;
}

/* --- AES-GCM under a token key --- */

#define GCM_IV 12
#define GCM_TAG 16

static void gcm_params(CK_GCM_PARAMS *p, unsigned char *iv, const unsigned char *aad,
                       size_t aad_len)
{
    memset(p, 0, sizeof(*p));
    p->pIv = iv;
    p->ulIvLen = GCM_IV;
    p->ulIvBits = GCM_IV * 8;
    p->pAAD = (CK_BYTE_PTR)aad;
    p->ulAADLen = aad_len;
    p->ulTagBits = GCM_TAG * 8;
}

kc_rc kc_tok_gcm_seal(kc_tok *t, kc_obj key, const unsigned char *aad, size_t aad_len,
                      const unsigned char *in, size_t in_len, unsigned char **sealed,
                      size_t *sealed_len, kc_error *err)
{
    CK_GCM_PARAMS params;
    CK_MECHANISM mech = {CKM_AES_GCM, &params, sizeof(params)};
    unsigned char *buf = NULL;
    CK_ULONG len;
    CK_RV rv;
    kc_rc r;

    *sealed = NULL;
    buf = malloc(GCM_IV + in_len + GCM_TAG);
    if (buf == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    r = kc_tok_random(t, buf, GCM_IV, err);
    if (r != KC_OK) {
        free(buf);
        return r;
    }
    gcm_params(&params, buf, aad, aad_len);
    len = in_len + GCM_TAG;
    /* SoftHSM 2.6.1: ciphertext || 128-bit tag, as OpenSSL's (SOFTHSM-NOTES Q1) */
    rv = t->f->C_EncryptInit(t->session, &mech, key);
    if (rv == CKR_OK)
        rv = t->f->C_Encrypt(t->session, (CK_BYTE_PTR)in, in_len, buf + GCM_IV, &len);
    if (rv != CKR_OK || len != in_len + GCM_TAG) {
        OPENSSL_cleanse(buf, GCM_IV + in_len + GCM_TAG);
        free(buf);
        if (rv == CKR_OK)
            return kc_error_set(err, KC_TOKEN, "the token's AES-GCM gave %lu bytes for %zu",
                                (unsigned long)len, in_len);
        r = kc_p11_fail(err, "C_Encrypt", rv, "AES-GCM on the token failed");
        kc_tok_explain_lost(t, rv, err);
        return r;
    }
    *sealed = buf;
    *sealed_len = GCM_IV + len;
    return KC_OK;
}

kc_rc kc_tok_gcm_open(kc_tok *t, kc_obj key, const unsigned char *aad, size_t aad_len,
                      const unsigned char *sealed, size_t sealed_len, unsigned char **out,
                      size_t *out_len, kc_error *err)
{
    unsigned char iv[GCM_IV], *buf = NULL;
    CK_GCM_PARAMS params;
    CK_MECHANISM mech = {CKM_AES_GCM, &params, sizeof(params)};
    CK_ULONG len;
    CK_RV rv;
    kc_rc r;

    *out = NULL;
    if (sealed_len < GCM_IV + GCM_TAG)
        return kc_error_set(err, KC_INTEGRITY, "a sealed value is too short");
    r = kc_tok_session(t, err);
    if (r != KC_OK)
        return r;
    memcpy(iv, sealed, GCM_IV);
    gcm_params(&params, iv, aad, aad_len);
    len = sealed_len - GCM_IV;
    buf = malloc(len + 1);
    if (buf == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    rv = t->f->C_DecryptInit(t->session, &mech, key);
    if (rv == CKR_OK)
        rv = t->f->C_Decrypt(t->session, (CK_BYTE_PTR)sealed + GCM_IV, sealed_len - GCM_IV, buf,
                             &len);
    if (rv != CKR_OK) {
        free(buf);
        /* SoftHSM 2.6.1 answers a tag that does not verify with
         * CKR_GENERAL_ERROR (SOFTHSM-NOTES Q1; test_softhsm facts) */
        if (rv == CKR_GENERAL_ERROR || rv == CKR_ENCRYPTED_DATA_INVALID)
            return kc_error_set(err, KC_INTEGRITY,
                                "a sealed value does not open under the vault's key: it was "
                                "altered, or sealed under another key (%s)",
                                kc_p11_rv_name(rv));
        r = kc_p11_fail(err, "C_Decrypt", rv, "AES-GCM on the token failed");
        kc_tok_explain_lost(t, rv, err);
        return r;
    }
    *out = buf;
    *out_len = len;
    return KC_OK;
}

/* --- HMAC-SHA256 --- */

/* A one-part C_Sign into out (*got: its room, then the size given). */
static kc_rc sign_once(kc_tok *t, CK_MECHANISM *mech, kc_obj key, const unsigned char *data,
                       size_t len, unsigned char *out, CK_ULONG *got, const char *what,
                       kc_error *err)
{
    CK_RV rv;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    rv = t->f->C_SignInit(t->session, mech, key);
    if (rv == CKR_OK)
        rv = t->f->C_Sign(t->session, (CK_BYTE_PTR)data, len, out, got);
    if (rv != CKR_OK) {
        r = kc_p11_fail(err, "C_Sign", rv, "cannot compute the %s on the token", what);
        kc_tok_explain_lost(t, rv, err);
        return r;
    }
    return KC_OK;
}

/* A one-part C_Sign whose output has a fixed size. */
static kc_rc sign_fixed(kc_tok *t, CK_MECHANISM_TYPE type, kc_obj key, const unsigned char *data,
                        size_t len, unsigned char *out, CK_ULONG want, const char *what,
                        kc_error *err)
{
    CK_MECHANISM mech = {type, NULL, 0};
    CK_ULONG got = want;
    kc_rc r = sign_once(t, &mech, key, data, len, out, &got, what, err);

    if (r == KC_OK && got != want)
        return kc_error_set(err, KC_TOKEN, "the token gave a %lu-byte %s", (unsigned long)got,
                            what);
    return r;
}

kc_rc kc_tok_hmac(kc_tok *t, kc_obj key, const unsigned char *data, size_t len,
                  unsigned char mac[32], kc_error *err)
{
    return sign_fixed(t, CKM_SHA256_HMAC, key, data, len, mac, 32, "HMAC-SHA256", err);
}

kc_rc kc_tok_ecdsa_sign(kc_tok *t, kc_obj priv, const unsigned char digest[32],
                        unsigned char sig[64], kc_error *err)
{
    return sign_fixed(t, CKM_ECDSA, priv, digest, 32, sig, 64, "P-256 signature", err);
}

kc_rc kc_tok_rsa_pss_sign(kc_tok *t, kc_obj priv, const unsigned char digest[32],
                          unsigned char *sig, size_t *sig_len, kc_error *err)
{
    CK_RSA_PKCS_PSS_PARAMS params = {CKM_SHA256, CKG_MGF1_SHA256, 32};
    CK_MECHANISM mech = {CKM_RSA_PKCS_PSS, &params, sizeof(params)};
    CK_ULONG got = *sig_len;
    kc_rc r = sign_once(t, &mech, priv, digest, 32, sig, &got, "RSA-PSS signature", err);

    if (r == KC_OK)
        *sig_len = got;
    return r;
}

kc_rc kc_tok_hmac_verify(kc_tok *t, kc_obj key, const unsigned char *data, size_t len,
                         const unsigned char mac[32], kc_error *err)
{
    CK_MECHANISM mech = {CKM_SHA256_HMAC, NULL, 0};
    CK_RV rv;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    rv = t->f->C_VerifyInit(t->session, &mech, key);
    if (rv == CKR_OK)
        rv = t->f->C_Verify(t->session, (CK_BYTE_PTR)data, len, (CK_BYTE_PTR)mac, 32);
    if (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE)
        return kc_error_set(err, KC_INTEGRITY, "the MAC does not verify");
    if (rv != CKR_OK) {
        r = kc_p11_fail(err, "C_Verify", rv, "cannot verify the HMAC on the token");
        kc_tok_explain_lost(t, rv, err);
        return r;
    }
    return KC_OK;
}
