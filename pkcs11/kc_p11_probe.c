/* What a module can do, asked of it rather than assumed (kc_p11.h,
 * "probing"). Every probe works on session objects (CKA_TOKEN=FALSE), which
 * go with the session: nothing on the token changes. What needs a key is
 * checked against OpenSSL, not believed by mechanism number: a module's
 * CKM_AES_KEY_WRAP_PAD is RFC 5649 on SoftHSM and RFC 3394 over PKCS#7
 * padding on NSS. */
#include "kc_p11_int.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#define M(m) {m, #m}
static const struct {
    CK_MECHANISM_TYPE type;
    const char *name;
} mech_names[] = {
    M(CKM_RSA_PKCS_KEY_PAIR_GEN),
    M(CKM_RSA_PKCS),
    M(CKM_RSA_X_509),
    M(CKM_RSA_PKCS_OAEP),
    M(CKM_RSA_PKCS_PSS),
    M(CKM_MD5_RSA_PKCS),
    M(CKM_SHA1_RSA_PKCS),
    M(CKM_SHA224_RSA_PKCS),
    M(CKM_SHA256_RSA_PKCS),
    M(CKM_SHA384_RSA_PKCS),
    M(CKM_SHA512_RSA_PKCS),
    M(CKM_SHA1_RSA_PKCS_PSS),
    M(CKM_SHA224_RSA_PKCS_PSS),
    M(CKM_SHA256_RSA_PKCS_PSS),
    M(CKM_SHA384_RSA_PKCS_PSS),
    M(CKM_SHA512_RSA_PKCS_PSS),
    M(CKM_EC_KEY_PAIR_GEN),
    M(CKM_ECDSA),
    M(CKM_ECDSA_SHA1),
    M(CKM_ECDSA_SHA224),
    M(CKM_ECDSA_SHA256),
    M(CKM_ECDH1_DERIVE),
    M(CKM_EC_EDWARDS_KEY_PAIR_GEN),
    M(CKM_EDDSA),
    M(CKM_DSA_KEY_PAIR_GEN),
    M(CKM_DSA),
    M(CKM_DSA_PARAMETER_GEN),
    M(CKM_DSA_SHA1),
    M(CKM_DSA_SHA224),
    M(CKM_DSA_SHA256),
    M(CKM_DSA_SHA384),
    M(CKM_DSA_SHA512),
    M(CKM_DH_PKCS_KEY_PAIR_GEN),
    M(CKM_DH_PKCS_DERIVE),
    M(CKM_DH_PKCS_PARAMETER_GEN),
    M(CKM_AES_KEY_GEN),
    M(CKM_AES_ECB),
    M(CKM_AES_CBC),
    M(CKM_AES_CBC_PAD),
    M(CKM_AES_CTR),
    M(CKM_AES_CTS),
    M(CKM_AES_GCM),
    M(CKM_AES_CCM),
    M(CKM_AES_MAC),
    M(CKM_AES_MAC_GENERAL),
    M(CKM_AES_CMAC),
    M(CKM_AES_CMAC_GENERAL),
    M(CKM_AES_ECB_ENCRYPT_DATA),
    M(CKM_AES_CBC_ENCRYPT_DATA),
    M(CKM_AES_KEY_WRAP),
    M(CKM_AES_KEY_WRAP_PAD),
    M(CKM_AES_KEY_WRAP_KWP),
    M(CKM_DES_KEY_GEN),
    M(CKM_DES_ECB),
    M(CKM_DES_CBC),
    M(CKM_DES_CBC_PAD),
    M(CKM_DES_ECB_ENCRYPT_DATA),
    M(CKM_DES_CBC_ENCRYPT_DATA),
    M(CKM_DES2_KEY_GEN),
    M(CKM_DES3_KEY_GEN),
    M(CKM_DES3_ECB),
    M(CKM_DES3_CBC),
    M(CKM_DES3_CBC_PAD),
    M(CKM_DES3_CMAC),
    M(CKM_DES3_ECB_ENCRYPT_DATA),
    M(CKM_DES3_CBC_ENCRYPT_DATA),
    M(CKM_BLOWFISH_KEY_GEN),
    M(CKM_GENERIC_SECRET_KEY_GEN),
    M(CKM_MD5),
    M(CKM_MD5_HMAC),
    M(CKM_SHA_1),
    M(CKM_SHA_1_HMAC),
    M(CKM_SHA224),
    M(CKM_SHA224_HMAC),
    M(CKM_SHA256),
    M(CKM_SHA256_HMAC),
    M(CKM_SHA384),
    M(CKM_SHA384_HMAC),
    M(CKM_SHA512),
    M(CKM_SHA512_HMAC),
};
#undef M

static void mech_name(CK_MECHANISM_TYPE type, char *out, size_t cap)
{
    size_t i;

    for (i = 0; i < sizeof(mech_names) / sizeof(mech_names[0]); i++) {
        if (mech_names[i].type == type) {
            snprintf(out, cap, "%s", mech_names[i].name);
            return;
        }
    }
    snprintf(out, cap, "%s0x%lx", type >= CKM_VENDOR_DEFINED ? "CKM_VENDOR_DEFINED+" : "CKM_",
             (unsigned long)(type >= CKM_VENDOR_DEFINED ? type - CKM_VENDOR_DEFINED : type));
}

static void mech_flags(CK_FLAGS f, char *out, size_t cap)
{
    static const struct {
        CK_FLAGS flag;
        const char *name;
    } names[] = {
        {CKF_HW, "hw"},           {CKF_ENCRYPT, "encrypt"},   {CKF_DECRYPT, "decrypt"},
        {CKF_DIGEST, "digest"},   {CKF_SIGN, "sign"},         {CKF_VERIFY, "verify"},
        {CKF_GENERATE, "generate"}, {CKF_GENERATE_KEY_PAIR, "generate_key_pair"},
        {CKF_WRAP, "wrap"},       {CKF_UNWRAP, "unwrap"},     {CKF_DERIVE, "derive"},
    };
    size_t i, off = 0;

    out[0] = '\0';
    for (i = 0; i < sizeof(names) / sizeof(names[0]) && off < cap; i++)
        if (f & names[i].flag)
            off += (size_t)snprintf(out + off, cap - off, "%s%s", off ? "," : "", names[i].name);
}

static kc_rc list_mechanisms(kc_tok *t, kc_probe *p, kc_error *err)
{
    CK_MECHANISM_TYPE *types = NULL;
    CK_MECHANISM_INFO info;
    CK_ULONG n = 0, i;
    CK_RV rv = t->f->C_GetMechanismList(t->slot, NULL, &n);

    if (rv == CKR_OK && n > 0) {
        /* one more than asked for: p11-kit 0.24.1's client, dropping the
         * mechanisms its RPC does not carry, reads one entry past the list
         * (rpc-client.c, mechanism_list_purge; ASan sees it, test_remote) */
        types = calloc(n + 1, sizeof(*types));
        p->mechs = calloc(n, sizeof(*p->mechs));
        if (types == NULL || p->mechs == NULL) {
            free(types);
            return kc_error_set(err, KC_ERR, "out of memory");
        }
        rv = t->f->C_GetMechanismList(t->slot, types, &n);
    }
    if (rv != CKR_OK) {
        free(types);
        return kc_p11_fail(err, "C_GetMechanismList", rv,
                           "cannot list the mechanisms of token '%s'", t->info.label);
    }
    for (i = 0; i < n; i++) {
        kc_mech *m = &p->mechs[p->nmechs++];
        m->type = types[i];
        mech_name(types[i], m->name, sizeof(m->name));
        if (t->f->C_GetMechanismInfo(t->slot, types[i], &info) == CKR_OK) {
            m->min_bits = info.ulMinKeySize;
            m->max_bits = info.ulMaxKeySize;
            m->flags_raw = info.flags;
            mech_flags(info.flags, m->flags, sizeof(m->flags));
        }
    }
    free(types);
    return KC_OK;
}

static int has_mech(const kc_probe *p, CK_MECHANISM_TYPE type, CK_FLAGS need)
{
    size_t i;

    for (i = 0; i < p->nmechs; i++)
        if (p->mechs[i].type == type)
            return (p->mechs[i].flags_raw & need) == need;
    return 0;
}

static void fact(kc_probe *p, const char *id, kc_cap cap, const char *fmt, ...) KC_PRINTF(4, 5);

static void fact(kc_probe *p, const char *id, kc_cap cap, const char *fmt, ...)
{
    va_list ap;
    kc_probe_fact *f;

    if (p->nfacts == KC_PROBE_MAX)
        return;
    f = &p->facts[p->nfacts++];
    f->id = id;
    f->cap = cap;
    va_start(ap, fmt);
    vsnprintf(f->detail, sizeof(f->detail), fmt, ap);
    va_end(ap);
}

/* rv of fn, kept where it broke the probe rather than answered it. */
static CK_RV seen(kc_probe *p, const char *fn, CK_RV rv)
{
    /* without a login, "no user has logged in" is the module's answer */
    if (rv == CKR_USER_NOT_LOGGED_IN && !p->logged_in)
        return rv;
    if (kc_p11_rv_broken(rv) && p->broken_rv == 0) {
        p->broken_rv = rv;
        snprintf(p->broken_at, sizeof(p->broken_at), "%s", fn);
    }
    return rv;
}

/* Whether rv says the object could not be made in this session at all (no
 * login, a session the module keeps read-only: tpm2-pkcs11 on a free
 * token), which answers nothing about what was asked. */
static int not_here(CK_RV rv)
{
    return rv == CKR_SESSION_READ_ONLY || rv == CKR_USER_NOT_LOGGED_IN ||
           rv == CKR_TOKEN_WRITE_PROTECTED;
}

/* --- session objects --- */

static void drop(kc_tok *t, CK_OBJECT_HANDLE h)
{
    if (h != CK_INVALID_HANDLE)
        (void)t->f->C_DestroyObject(t->session, h);
}

/* A session secret key of the given value; extra attributes after the
 * usual ones. CKA_PRIVATE follows the login: a session without it cannot
 * make private objects. */
static CK_RV secret(kc_tok *t, kc_probe *p, CK_KEY_TYPE kt, const unsigned char *value, CK_ULONG len,
                    const CK_ATTRIBUTE *extra, CK_ULONG nextra, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_BBOOL priv = t->logged_in ? CK_TRUE : CK_FALSE;
    CK_ATTRIBUTE tmpl[20] = {
        ATTR(CKA_CLASS, &cls, sizeof(cls)),
        ATTR(CKA_KEY_TYPE, &kt, sizeof(kt)),
        ATTR_BOOL(CKA_TOKEN, 0),
        ATTR(CKA_PRIVATE, &priv, sizeof(priv)),
        ATTR(CKA_VALUE, (void *)value, len),
    };
    CK_ULONG n = 5, i;

    for (i = 0; i < nextra && n < 20; i++)
        tmpl[n++] = extra[i];
    *out = CK_INVALID_HANDLE;
    return seen(p, "C_CreateObject", t->f->C_CreateObject(t->session, tmpl, n, out));
}

static const unsigned char KEK[32] = {0x60, 0x3d, 0xeb, 0x10, 0x15, 0xca, 0x71, 0xbe,
                                      0x2b, 0x73, 0xae, 0xf0, 0x85, 0x7d, 0x77, 0x81,
                                      0x1f, 0x35, 0x2c, 0x07, 0x3b, 0x61, 0x08, 0xd7,
                                      0x2d, 0x98, 0x10, 0xa3, 0x09, 0x14, 0xdf, 0xf4};
/* 20 bytes: not a multiple of 8, so that padding shows which wrap it is */
static const unsigned char SECRET[20] = {0xc3, 0x7b, 0x7e, 0x64, 0x92, 0x58, 0x43, 0x40,
                                         0xbe, 0xd1, 0x22, 0x07, 0x80, 0x89, 0x41, 0x15,
                                         0x50, 0x68, 0xf7, 0x38};

/* 24 bytes: a multiple of 8, so that a module that pads to 8 first does
 * not change it, and RFC 5649 and RFC 3394 still differ (their IVs) */
static const unsigned char SECRET24[24] = {0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6,
                                           0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f, 0x3c,
                                           0xa0, 0xfa, 0xfe, 0x17, 0x88, 0x54, 0x2c, 0xb1};

/* RFC 5649 of in under KEK, by OpenSSL. */
static int openssl_kwp(const unsigned char *in, int in_len, unsigned char *out, int *len)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, fin = 0, ok;

    ok = c != NULL && EVP_EncryptInit_ex(c, EVP_aes_256_wrap_pad(), NULL, KEK, NULL) == 1 &&
         EVP_EncryptUpdate(c, out, &n, in, in_len) == 1 &&
         EVP_EncryptFinal_ex(c, out + n, &fin) == 1;
    EVP_CIPHER_CTX_free(c);
    *len = n + fin;
    return ok;
}

/* With the RFC 5649 mechanism known: does the module wrap a key whose
 * length is not a multiple of 8 as it is? SoftHSM 2.6.1 pads it with zeros
 * to a multiple of 8 first (SoftHSM::WrapKeySym, PKCS#11 2.40 §2.14.3 read
 * for KWP too), so that a standard unwrap of its output gives the key with
 * zeros after it. And does it unwrap OpenSSL's RFC 5649 of such a key? */
static void probe_kwp_lengths(kc_tok *t, kc_probe *p, CK_OBJECT_HANDLE kek)
{
    CK_ATTRIBUTE sec_extra[] = {ATTR_BOOL(CKA_EXTRACTABLE, 1), ATTR_BOOL(CKA_SENSITIVE, 0)};
    CK_MECHANISM m = {p->kwp_mech, NULL, 0};
    CK_OBJECT_HANDLE sec = CK_INVALID_HANDLE;
    unsigned char got[64], exact[64], padded[64], zeros[24] = {0};
    int exact_len = 0, padded_len = 0;
    CK_ULONG len = sizeof(got);
    CK_RV rv;

    memcpy(zeros, SECRET, sizeof(SECRET));
    rv = secret(t, p, CKK_GENERIC_SECRET, SECRET, sizeof(SECRET), sec_extra, 2, &sec);
    if (rv == CKR_OK)
        rv = seen(p, "C_WrapKey", t->f->C_WrapKey(t->session, &m, kek, sec, got, &len));
    if (rv != CKR_OK || !openssl_kwp(SECRET, sizeof(SECRET), exact, &exact_len) ||
        !openssl_kwp(zeros, sizeof(zeros), padded, &padded_len))
        fact(p, "aes_key_wrap.exact_length", KC_CAP_UNKNOWN, "could not wrap a 20-byte key (%s)",
             kc_p11_rv_name(rv));
    else if (len == (CK_ULONG)exact_len && memcmp(got, exact, len) == 0)
        fact(p, "aes_key_wrap.exact_length", KC_CAP_YES, "a 20-byte key is wrapped as it is");
    else if (len == (CK_ULONG)padded_len && memcmp(got, padded, len) == 0)
        fact(p, "aes_key_wrap.exact_length", KC_CAP_NO,
             "a 20-byte key is padded with zeros to 24 bytes before RFC 5649: a standard "
             "unwrap of what it wraps gives the key with zeros after it");
    else
        fact(p, "aes_key_wrap.exact_length", KC_CAP_NO,
             "a 20-byte key wraps as neither RFC 5649 of it nor of it padded with zeros");
    drop(t, sec);
}

static void probe_key_wrap(kc_tok *t, kc_probe *p)
{
    static const CK_MECHANISM_TYPE candidates[] = {CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP_KWP};
    CK_ATTRIBUTE kek_extra[] = {ATTR_BOOL(CKA_WRAP, 1), ATTR_BOOL(CKA_UNWRAP, 1)};
    CK_ATTRIBUTE sec_extra[] = {ATTR_BOOL(CKA_EXTRACTABLE, 1), ATTR_BOOL(CKA_SENSITIVE, 0)};
    CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE, sec = CK_INVALID_HANDLE;
    unsigned char want[64], got[64];
    char name[40], tried[160] = "";
    CK_ULONG len;
    size_t i, off = 0;
    int want_len = 0;
    CK_RV rv;

    rv = secret(t, p, CKK_AES, KEK, sizeof(KEK), kek_extra, 2, &kek);
    if (rv == CKR_OK)
        rv = secret(t, p, CKK_GENERIC_SECRET, SECRET24, sizeof(SECRET24), sec_extra, 2, &sec);
    if (rv != CKR_OK || !openssl_kwp(SECRET24, sizeof(SECRET24), want, &want_len)) {
        fact(p, "aes_key_wrap.rfc5649", KC_CAP_UNKNOWN,
             "no session secret key to try it with (C_CreateObject: %s)", kc_p11_rv_name(rv));
        drop(t, kek);
        drop(t, sec);
        return;
    }
    for (i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
        CK_MECHANISM m = {candidates[i], NULL, 0};
        mech_name(candidates[i], name, sizeof(name));
        if (!has_mech(p, candidates[i], CKF_WRAP))
            continue;
        len = sizeof(got);
        rv = seen(p, "C_WrapKey", t->f->C_WrapKey(t->session, &m, kek, sec, got, &len));
        if (rv == CKR_OK && len == (CK_ULONG)want_len && memcmp(got, want, len) == 0) {
            p->kwp_mech = candidates[i];
            fact(p, "aes_key_wrap.rfc5649", KC_CAP_YES, "%s (0x%lx) is RFC 5649: it matches OpenSSL",
                 name, (unsigned long)candidates[i]);
            break;
        }
        off += (size_t)snprintf(tried + off, sizeof(tried) - off, "%s%s %s", off ? "; " : "",
                                name, rv == CKR_OK ? "is not RFC 5649 (differs from OpenSSL)"
                                                   : kc_p11_rv_name(rv));
    }
    if (p->kwp_mech == 0)
        fact(p, "aes_key_wrap.rfc5649", KC_CAP_NO, "no mechanism wraps as RFC 5649%s%s",
             tried[0] ? ": " : "", tried);
    else
        probe_kwp_lengths(t, p, kek);
    drop(t, kek);
    drop(t, sec);
}

/* CKA_WRAP_WITH_TRUSTED: accepted on a key, and enforced (a key that is not
 * trusted cannot wrap it). CKA_TRUSTED set by a user, which only the SO
 * should be able to. */
static void probe_trusted(kc_tok *t, kc_probe *p)
{
    CK_ATTRIBUTE kek_extra[] = {ATTR_BOOL(CKA_WRAP, 1), ATTR_BOOL(CKA_UNWRAP, 1)};
    CK_ATTRIBUTE wwt_extra[] = {ATTR_BOOL(CKA_EXTRACTABLE, 1), ATTR_BOOL(CKA_SENSITIVE, 1),
                                ATTR_BOOL(CKA_WRAP_WITH_TRUSTED, 1)};
    CK_ATTRIBUTE trusted_extra[] = {ATTR_BOOL(CKA_WRAP, 1), ATTR_BOOL(CKA_TRUSTED, 1)};
    CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE, key = CK_INVALID_HANDLE, tr = CK_INVALID_HANDLE;
    unsigned char buf[128];
    CK_ULONG len = sizeof(buf);
    CK_RV rv = secret(t, p, CKK_AES, KEK, sizeof(KEK), kek_extra, 2, &kek);
    CK_RV rw = secret(t, p, CKK_GENERIC_SECRET, SECRET, sizeof(SECRET), wwt_extra, 3, &key);

    if (rw == CKR_OK)
        fact(p, "wrap_with_trusted.accepted", KC_CAP_YES, "a key with CKA_WRAP_WITH_TRUSTED=TRUE was made");
    else if (not_here(rw))
        fact(p, "wrap_with_trusted.accepted", KC_CAP_UNKNOWN, "no key can be made here (%s)",
             kc_p11_rv_name(rw));
    else
        fact(p, "wrap_with_trusted.accepted", KC_CAP_NO, "a key with CKA_WRAP_WITH_TRUSTED=TRUE: %s",
             kc_p11_rv_name(rw));
    if (rw == CKR_OK && rv == CKR_OK && p->kwp_mech != 0) {
        CK_MECHANISM m = {p->kwp_mech, NULL, 0};
        rv = seen(p, "C_WrapKey", t->f->C_WrapKey(t->session, &m, kek, key, buf, &len));
        /* the same key without the attribute wraps (aes_key_wrap.exact_length
         * wrapped it), so only the refusal that names it counts */
        if (rv == CKR_OK)
            fact(p, "wrap_with_trusted.enforced", KC_CAP_NO,
                 "a key that is not trusted wrapped it: the module ignores the attribute");
        else if (rv == CKR_KEY_NOT_WRAPPABLE)
            fact(p, "wrap_with_trusted.enforced", KC_CAP_YES,
                 "a key that is not trusted could not wrap it (%s)", kc_p11_rv_name(rv));
        else
            fact(p, "wrap_with_trusted.enforced", KC_CAP_UNKNOWN,
                 "the wrap failed otherwise (%s)", kc_p11_rv_name(rv));
    } else {
        fact(p, "wrap_with_trusted.enforced", KC_CAP_UNKNOWN,
             rw != CKR_OK ? "the attribute is refused"
             : rv != CKR_OK ? "no wrapping key to try it with"
                            : "no RFC 5649 wrap to try it with");
    }
    rv = secret(t, p, CKK_AES, KEK, sizeof(KEK), trusted_extra, 2, &tr);
    /* refused as an attribute only the SO may set (SoftHSM 2.6.1:
     * CKR_ATTRIBUTE_READ_ONLY), or as one the module does not know
     * (openCryptoki 3.8.1: CKR_TEMPLATE_INCONSISTENT, for the SO too) */
    if (not_here(rv))
        fact(p, "trusted.user_refused", KC_CAP_UNKNOWN, "no key can be made here (%s)",
             kc_p11_rv_name(rv));
    else if (rv == CKR_OK)
        fact(p, "trusted.user_refused", KC_CAP_NO,
             "%s made a key with CKA_TRUSTED=TRUE: the trusted-key arrangement is not a "
             "boundary on this module",
             t->logged_in ? "the user" : "a session without login");
    else
        fact(p, "trusted.user_refused", KC_CAP_YES, "CKA_TRUSTED=TRUE refused %s (%s)",
             t->logged_in ? "to the user" : "without login", kc_p11_rv_name(rv));
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_TEMPLATE_INCONSISTENT)
        fact(p, "trusted.supported", KC_CAP_NO,
             "CKA_TRUSTED is refused as an attribute the module does not take (%s)",
             kc_p11_rv_name(rv));
    else
        fact(p, "trusted.supported", KC_CAP_UNKNOWN,
             rv == CKR_OK ? "taken from anyone (trusted.user_refused), so it marks nothing"
                          : "whether the SO can set it needs the SO PIN");
    drop(t, kek);
    drop(t, key);
    drop(t, tr);
}

/* What keycustody's unwrap template asks (a secret it reads: not sensitive,
 * extractable), and whether the value can be read without asking. */
static void probe_unwrap_template(kc_tok *t, kc_probe *p)
{
    CK_ATTRIBUTE kek_extra[] = {ATTR_BOOL(CKA_WRAP, 1), ATTR_BOOL(CKA_UNWRAP, 1)};
    CK_ATTRIBUTE sec_extra[] = {ATTR_BOOL(CKA_EXTRACTABLE, 1), ATTR_BOOL(CKA_SENSITIVE, 0)};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL priv = t->logged_in ? CK_TRUE : CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {
        ATTR(CKA_CLASS, &cls, sizeof(cls)),
        ATTR(CKA_KEY_TYPE, &kt, sizeof(kt)),
        ATTR_BOOL(CKA_TOKEN, 0),
        ATTR(CKA_PRIVATE, &priv, sizeof(priv)),
        ATTR_BOOL(CKA_SENSITIVE, 0),
        ATTR_BOOL(CKA_EXTRACTABLE, 1),
    };
    CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE, sec = CK_INVALID_HANDLE, out = CK_INVALID_HANDLE;
    static unsigned char iv[16];
    /* any wrap the module has: RFC 5649, else AES-CBC-PAD (openCryptoki) */
    CK_MECHANISM m = {p->kwp_mech, NULL, 0};
    unsigned char blob[64], value[64];
    CK_ULONG len = sizeof(blob);
    CK_ATTRIBUTE get = ATTR(CKA_VALUE, value, sizeof(value));
    CK_RV rv;

    if (p->kwp_mech == 0 && has_mech(p, CKM_AES_CBC_PAD, CKF_WRAP | CKF_UNWRAP)) {
        m.mechanism = CKM_AES_CBC_PAD;
        m.pParameter = iv;
        m.ulParameterLen = sizeof(iv);
    }
    if (m.mechanism == 0) {
        fact(p, "unwrap.readable_template", KC_CAP_UNKNOWN, "no key wrap to try it with");
        return;
    }
    rv = secret(t, p, CKK_AES, KEK, sizeof(KEK), kek_extra, 2, &kek);
    if (rv == CKR_OK)
        rv = secret(t, p, CKK_GENERIC_SECRET, SECRET24, sizeof(SECRET24), sec_extra, 2, &sec);
    if (rv == CKR_OK)
        rv = seen(p, "C_WrapKey", t->f->C_WrapKey(t->session, &m, kek, sec, blob, &len));
    if (rv == CKR_OK) {
        CK_RV ru = seen(p, "C_UnwrapKey", t->f->C_UnwrapKey(t->session, &m, kek, blob, len, tmpl, 6, &out));
        if (ru == CKR_OK)
            fact(p, "unwrap.readable_template", KC_CAP_YES,
                 "C_UnwrapKey takes CKA_SENSITIVE=FALSE, CKA_EXTRACTABLE=TRUE");
        else
            fact(p, "unwrap.readable_template", KC_CAP_NO,
                 "C_UnwrapKey with CKA_SENSITIVE=FALSE, CKA_EXTRACTABLE=TRUE: %s",
                 kc_p11_rv_name(ru));
        if (ru != CKR_OK)
            ru = seen(p, "C_UnwrapKey", t->f->C_UnwrapKey(t->session, &m, kek, blob, len, tmpl, 4, &out));
        if (ru == CKR_OK && t->f->C_GetAttributeValue(t->session, out, &get, 1) == CKR_OK &&
            get.ulValueLen == sizeof(SECRET24) && memcmp(value, SECRET24, sizeof(SECRET24)) == 0)
            fact(p, "unwrap.value_readable", KC_CAP_YES, "the unwrapped value reads back");
        else
            fact(p, "unwrap.value_readable", KC_CAP_NO, "the unwrapped value does not read back");
    } else {
        fact(p, "unwrap.readable_template", KC_CAP_UNKNOWN, "could not wrap a secret to try (%s)",
             kc_p11_rv_name(rv));
    }
    drop(t, kek);
    drop(t, sec);
    drop(t, out);
}

/* Data objects: public, private (with the PIN), and whether a value can be
 * changed. On session objects: whether the module keeps token CKO_DATA
 * objects is not asked, as that would write the token. */
static void probe_data(kc_tok *t, kc_probe *p)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    static const char app[] = "keycustody-probe", v1[] = "one", v2[] = "two";
    CK_ATTRIBUTE tmpl[] = {
        ATTR(CKA_CLASS, &cls, sizeof(cls)),
        ATTR_BOOL(CKA_TOKEN, 0),
        ATTR_BOOL(CKA_PRIVATE, 0),
        ATTR(CKA_APPLICATION, (void *)app, sizeof(app) - 1),
        ATTR(CKA_VALUE, (void *)v1, sizeof(v1) - 1),
    };
    CK_ATTRIBUTE set = ATTR(CKA_VALUE, (void *)v2, sizeof(v2) - 1);
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv = seen(p, "C_CreateObject", t->f->C_CreateObject(t->session, tmpl, 5, &h));

    if (rv == CKR_OK)
        fact(p, "data.public", KC_CAP_YES, "a public CKO_DATA session object was made");
    else
        fact(p, "data.public", not_here(rv) ? KC_CAP_UNKNOWN : KC_CAP_NO,
             "a public CKO_DATA object: %s", kc_p11_rv_name(rv));
    if (rv == CKR_OK) {
        rv = seen(p, "C_SetAttributeValue", t->f->C_SetAttributeValue(t->session, h, &set, 1));
        fact(p, "data.mutable", rv == CKR_OK ? KC_CAP_YES : KC_CAP_NO,
             rv == CKR_OK ? "CKA_VALUE of a data object can be changed"
                          : "CKA_VALUE of a data object cannot be changed (%s)",
             kc_p11_rv_name(rv));
        drop(t, h);
    }
    if (!t->logged_in) {
        fact(p, "data.private", KC_CAP_UNKNOWN, "needs the user PIN to ask");
        return;
    }
    tmpl[2] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_PRIVATE, 1);
    h = CK_INVALID_HANDLE;
    rv = seen(p, "C_CreateObject", t->f->C_CreateObject(t->session, tmpl, 5, &h));
    fact(p, "data.private", rv == CKR_OK ? KC_CAP_YES : not_here(rv) ? KC_CAP_UNKNOWN : KC_CAP_NO,
         rv == CKR_OK ? "a private CKO_DATA session object was made"
                      : "a private CKO_DATA object: %s",
         kc_p11_rv_name(rv));
    drop(t, h);
}

/* Whether the token keeps CKO_DATA objects (a vault is made of them): a
 * public one is made and destroyed at once, on a free token only, which
 * holds nothing and whose C_InitToken is next; elsewhere it is not asked,
 * as that would write the token. NSS softokn refuses them
 * (CKR_ATTRIBUTE_VALUE_INVALID), before any login. */
static void probe_token_data(kc_tok *t, kc_probe *p)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    static const char label[] = "keycustody-probe", v[] = "x";
    CK_ATTRIBUTE tmpl[] = {
        ATTR(CKA_CLASS, &cls, sizeof(cls)),
        ATTR_BOOL(CKA_TOKEN, 1),
        ATTR_BOOL(CKA_PRIVATE, 0),
        ATTR(CKA_LABEL, (void *)label, sizeof(label) - 1),
        ATTR(CKA_VALUE, (void *)v, sizeof(v) - 1),
    };
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv;

    if (t->info.initialized) {
        fact(p, "data.token", KC_CAP_UNKNOWN,
             "asked on a free token only: asking writes the token");
        return;
    }
    rv = seen(p, "C_CreateObject", t->f->C_CreateObject(t->session, tmpl, 5, &h));
    if (rv == CKR_OK) {
        fact(p, "data.token", KC_CAP_YES, "a public token CKO_DATA object was made (and destroyed)");
        (void)seen(p, "C_DestroyObject", t->f->C_DestroyObject(t->session, h));
    } else if (rv == CKR_ATTRIBUTE_VALUE_INVALID || rv == CKR_TEMPLATE_INCONSISTENT ||
               rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_FUNCTION_NOT_SUPPORTED) {
        fact(p, "data.token", KC_CAP_NO, "the module does not keep token CKO_DATA objects (%s)",
             kc_p11_rv_name(rv));
    } else {
        fact(p, "data.token", KC_CAP_UNKNOWN, "a token CKO_DATA object on a free token: %s",
             kc_p11_rv_name(rv));
    }
}

/* The module's RSA public key (n, e big-endian) for OpenSSL. */
static EVP_PKEY *rsa_pkey(const unsigned char *n, size_t n_len, const unsigned char *e,
                          size_t e_len)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    BIGNUM *bn = BN_bin2bn(n, (int)n_len, NULL), *be = BN_bin2bn(e, (int)e_len, NULL);
    EVP_PKEY *pk = NULL;

    if (bld != NULL && pc != NULL && bn != NULL && be != NULL &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) &&
        (params = OSSL_PARAM_BLD_to_param(bld)) != NULL && EVP_PKEY_fromdata_init(pc) == 1 &&
        EVP_PKEY_fromdata(pc, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pk = NULL;
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    EVP_PKEY_CTX_free(pc);
    BN_free(bn);
    BN_free(be);
    return pk;
}

/* RSA-OAEP both ways against OpenSSL: a secret OpenSSL wraps under the
 * module's public key unwraps on the module, per hash. */
static void probe_oaep(kc_tok *t, kc_probe *p)
{
    CK_ULONG bits = 2048;
    CK_BYTE e[] = {1, 0, 1};
    CK_BBOOL priv = t->logged_in ? CK_TRUE : CK_FALSE;
    CK_ATTRIBUTE pub_t[] = {ATTR_BOOL(CKA_TOKEN, 0), ATTR(CKA_MODULUS_BITS, &bits, sizeof(bits)),
                            ATTR(CKA_PUBLIC_EXPONENT, e, sizeof(e)), ATTR_BOOL(CKA_WRAP, 1),
                            ATTR_BOOL(CKA_ENCRYPT, 1)};
    CK_ATTRIBUTE priv_t[] = {ATTR_BOOL(CKA_TOKEN, 0), ATTR(CKA_PRIVATE, &priv, sizeof(priv)),
                             ATTR_BOOL(CKA_SENSITIVE, 1), ATTR_BOOL(CKA_UNWRAP, 1),
                             ATTR_BOOL(CKA_DECRYPT, 1)};
    CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, prv = CK_INVALID_HANDLE;
    static const CK_MECHANISM_TYPE hashes[] = {CKM_SHA_1, CKM_SHA256};
    static const char *const ids[] = {"rsa_oaep.sha1", "rsa_oaep.sha256"};
    unsigned char n[512], ct[512];
    CK_ATTRIBUTE getn = ATTR(CKA_MODULUS, n, sizeof(n));
    size_t i;
    CK_RV rv;

    if (!has_mech(p, CKM_RSA_PKCS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR) ||
        !has_mech(p, CKM_RSA_PKCS_OAEP, 0)) {
        fact(p, "rsa_oaep.sha1", KC_CAP_NO, "no CKM_RSA_PKCS_KEY_PAIR_GEN or CKM_RSA_PKCS_OAEP");
        fact(p, "rsa_oaep.sha256", KC_CAP_NO, "no CKM_RSA_PKCS_KEY_PAIR_GEN or CKM_RSA_PKCS_OAEP");
        return;
    }
    rv = seen(p, "C_GenerateKeyPair", t->f->C_GenerateKeyPair(t->session, &gen, pub_t, 5, priv_t, 5, &pub, &prv));
    if (rv == CKR_OK)
        rv = seen(p, "C_GetAttributeValue", t->f->C_GetAttributeValue(t->session, pub, &getn, 1));
    for (i = 0; i < 2; i++) {
        CK_RSA_PKCS_OAEP_PARAMS prm = {hashes[i], hashes[i] == CKM_SHA256 ? CKG_MGF1_SHA256
                                                                          : CKG_MGF1_SHA1,
                                       CKZ_DATA_SPECIFIED, NULL, 0};
        CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &prm, sizeof(prm)};
        CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
        CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
        CK_ATTRIBUTE tmpl[] = {ATTR(CKA_CLASS, &cls, sizeof(cls)), ATTR(CKA_KEY_TYPE, &kt, sizeof(kt)),
                               ATTR_BOOL(CKA_TOKEN, 0), ATTR(CKA_PRIVATE, &priv, sizeof(priv)),
                               ATTR_BOOL(CKA_SENSITIVE, 0), ATTR_BOOL(CKA_EXTRACTABLE, 1)};
        CK_OBJECT_HANDLE out = CK_INVALID_HANDLE;
        unsigned char value[64];
        CK_ATTRIBUTE get = ATTR(CKA_VALUE, value, sizeof(value));
        EVP_PKEY *pk = NULL;
        EVP_PKEY_CTX *c = NULL;
        size_t ct_len = sizeof(ct);
        int ok;

        if (rv != CKR_OK) {
            fact(p, ids[i], KC_CAP_NO, "no RSA-2048 session key pair (%s)", kc_p11_rv_name(rv));
            continue;
        }
        pk = rsa_pkey(n, getn.ulValueLen, e, sizeof(e));
        c = pk != NULL ? EVP_PKEY_CTX_new(pk, NULL) : NULL;
        ok = c != NULL && EVP_PKEY_encrypt_init(c) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_oaep_md(c, hashes[i] == CKM_SHA256 ? EVP_sha256() : EVP_sha1()) ==
                 1 &&
             EVP_PKEY_CTX_set_rsa_mgf1_md(c, hashes[i] == CKM_SHA256 ? EVP_sha256() : EVP_sha1()) ==
                 1 &&
             EVP_PKEY_encrypt(c, ct, &ct_len, SECRET, sizeof(SECRET)) == 1;
        EVP_PKEY_CTX_free(c);
        EVP_PKEY_free(pk);
        if (!ok) {
            fact(p, ids[i], KC_CAP_UNKNOWN, "OpenSSL could not encrypt under the module's key");
            continue;
        }
        rv = seen(p, "C_UnwrapKey", t->f->C_UnwrapKey(t->session, &m, prv, ct, ct_len, tmpl, 6, &out));
        /* a module that will not be asked for a readable key (openCryptoki) */
        if (rv == CKR_ATTRIBUTE_READ_ONLY || rv == CKR_TEMPLATE_INCONSISTENT)
            rv = seen(p, "C_UnwrapKey", t->f->C_UnwrapKey(t->session, &m, prv, ct, ct_len, tmpl, 4, &out));
        if (rv == CKR_OK && t->f->C_GetAttributeValue(t->session, out, &get, 1) == CKR_OK &&
            get.ulValueLen == sizeof(SECRET) && memcmp(value, SECRET, sizeof(SECRET)) == 0)
            fact(p, ids[i], KC_CAP_YES, "OpenSSL's OAEP wrap unwraps on the module");
        else if (rv == CKR_OK)
            fact(p, ids[i], KC_CAP_UNKNOWN,
                 "unwrapped, but the value does not read back to compare");
        else
            fact(p, ids[i], KC_CAP_NO, "C_UnwrapKey of OpenSSL's OAEP wrap: %s",
                 kc_p11_rv_name(rv));
        drop(t, out);
        rv = CKR_OK;
    }
    drop(t, pub);
    drop(t, prv);
}

/* Whether the module takes a (kc_p11_takes_attr), as fact id. */
static void probe_attribute(kc_tok *t, kc_probe *p, const char *id, const char *name,
                            const CK_ATTRIBUTE *a, int *cache)
{
    CK_RV rv;
    int takes = kc_p11_takes_attr(t, a, cache, &rv);

    (void)seen(p, "C_CreateObject", rv);
    if (!takes)
        fact(p, id, KC_CAP_NO, "%s is not known (CKR_ATTRIBUTE_TYPE_INVALID): keys are made "
             "without it", name);
    else if (*cache == 1)
        fact(p, id, KC_CAP_YES, "%s is taken", name);
    else
        fact(p, id, KC_CAP_UNKNOWN, "could not ask (%s)", kc_p11_rv_name(rv));
}

/* Attributes keycustody names in templates where the module takes them. */
static void probe_attributes(kc_tok *t, kc_probe *p)
{
    CK_ATTRIBUTE copyable = ATTR_BOOL(CKA_COPYABLE, 0);
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE into[] = {ATTR(CKA_CLASS, &cls, sizeof(cls))};
    CK_ATTRIBUTE tmpl = ATTR(CKA_UNWRAP_TEMPLATE, into, sizeof(into));
    int c1 = -1, c2 = -1;

    probe_attribute(t, p, "attr.copyable", "CKA_COPYABLE", &copyable, &c1);
    probe_attribute(t, p, "attr.unwrap_template", "CKA_UNWRAP_TEMPLATE", &tmpl, &c2);
}

/* Whether a copy can carry usages its key was not made with. PKCS#11 lets
 * C_CopyObject change CKA_DERIVE and the rest unless the key says
 * CKA_COPYABLE=FALSE; a module that does not know CKA_COPYABLE (openCryptoki
 * 3.8.1) copies any key with new usages, and keycustody cannot stop it:
 * it says so instead of claiming the usages hold. */
static void probe_copy(kc_tok *t, kc_probe *p)
{
    CK_ATTRIBUTE extra[] = {ATTR_BOOL(CKA_ENCRYPT, 1), ATTR_BOOL(CKA_DERIVE, 0),
                            ATTR_BOOL(CKA_SENSITIVE, 1), ATTR_BOOL(CKA_EXTRACTABLE, 0),
                            ATTR_BOOL(CKA_COPYABLE, 0)};
    CK_ATTRIBUTE derive = ATTR_BOOL(CKA_DERIVE, 1);
    CK_OBJECT_HANDLE key = CK_INVALID_HANDLE, copy = CK_INVALID_HANDLE;
    int copyable_known = kc_probe_cap(p, "attr.copyable") == KC_CAP_YES;
    CK_RV rv = secret(t, p, CKK_AES, KEK, sizeof(KEK), extra, copyable_known ? 5 : 4, &key);

    if (rv != CKR_OK) {
        fact(p, "copy.usage_locked", KC_CAP_UNKNOWN, "no session key to try it with (%s)",
             kc_p11_rv_name(rv));
        return;
    }
    rv = seen(p, "C_CopyObject", t->f->C_CopyObject(t->session, key, &derive, 1, &copy));
    if (rv == CKR_OK)
        fact(p, "copy.usage_locked", KC_CAP_NO,
             "a key made with CKA_DERIVE=FALSE%s was copied with CKA_DERIVE=TRUE: whoever has "
             "the user PIN can give a copy of any key usages it was not made with",
             copyable_known ? " and CKA_COPYABLE=FALSE" : " (the module has no CKA_COPYABLE)");
    else
        fact(p, "copy.usage_locked", KC_CAP_YES, "a copy with CKA_DERIVE=TRUE was refused (%s)",
             kc_p11_rv_name(rv));
    drop(t, copy);
    drop(t, key);
}

/* The SO PIN rules, from the token's flags: a module whose tokens come
 * with a factory SO PIN (CKF_SO_PIN_TO_BE_CHANGED) needs it to initialise
 * one, and its SO is whoever knows it until it is changed. */
static void probe_so_pin(const kc_tok_info *ti, kc_probe *p)
{
    int factory = kc_p11_factory_so_pin(ti) != NULL;

    if (!ti->so_pin_to_be_changed)
        fact(p, "so_pin.own", KC_CAP_YES, "%s",
             ti->initialized ? "the SO PIN is the token's own (no flag asks for a change)"
                             : "C_InitToken sets the SO PIN given");
    else if (!ti->initialized && factory)
        fact(p, "so_pin.own", KC_CAP_YES,
             "the free token has the module's factory SO PIN (CKF_SO_PIN_TO_BE_CHANGED): vault "
             "init initialises it with that PIN and changes it to the one given");
    else if (factory)
        fact(p, "so_pin.own", KC_CAP_NO,
             "the token still has the module's factory SO PIN (CKF_SO_PIN_TO_BE_CHANGED): "
             "whoever knows it is its SO; vault init changes it when it adopts the token");
    else if (!ti->initialized)
        fact(p, "so_pin.own", KC_CAP_UNKNOWN,
             "the free token asks for its SO PIN to be changed (CKF_SO_PIN_TO_BE_CHANGED): "
             "vault init gives C_InitToken the PIN given, which a module that wants a factory "
             "PIN refuses");
    else
        fact(p, "so_pin.own", KC_CAP_NO,
             "the token asks for its SO PIN to be changed (CKF_SO_PIN_TO_BE_CHANGED), and "
             "keycustody does not know this module's factory PIN: change it with the module's "
             "own tool");
}

static void probe_mechanisms(kc_probe *p)
{
    static const struct {
        const char *id;
        CK_MECHANISM_TYPE type;
        CK_FLAGS need;
        const char *what;
    } need[] = {
        {"mech.rsa_keygen", CKM_RSA_PKCS_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, "RSA key pairs"},
        {"mech.ec_keygen", CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, "EC key pairs"},
        {"mech.ecdsa", CKM_ECDSA, CKF_SIGN, "ECDSA signatures"},
        {"mech.aes_keygen", CKM_AES_KEY_GEN, CKF_GENERATE, "AES keys"},
        {"mech.aes_gcm", CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, "AES-GCM"},
        {"mech.hmac_sha256", CKM_SHA256_HMAC, CKF_SIGN, "HMAC-SHA256"},
        {"mech.generic_keygen", CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE, "generic secrets"},
        {"mech.aes_cbc_pad_wrap", CKM_AES_CBC_PAD, CKF_WRAP | CKF_UNWRAP,
         "AES-CBC-PAD key wrap"},
        {"mech.rsa_pss", CKM_RSA_PKCS_PSS, CKF_SIGN, "RSA-PSS signatures"},
    };
    size_t i;

    for (i = 0; i < sizeof(need) / sizeof(need[0]); i++)
        fact(p, need[i].id, has_mech(p, need[i].type, need[i].need) ? KC_CAP_YES : KC_CAP_NO,
             "%s (%s)", need[i].what,
             has_mech(p, need[i].type, 0) ? (has_mech(p, need[i].type, need[i].need)
                                                 ? "listed"
                                                 : "listed without the flag")
                                          : "not listed");
}

/* Whether t's session is read-write: a module may give only read-only ones
 * (tpm2-pkcs11 on a free token), where every object made is refused
 * (CKR_SESSION_READ_ONLY) for that reason alone. */
static int rw_session(kc_tok *t, kc_error *why)
{
    CK_SESSION_INFO info;
    CK_RV rv = t->f->C_GetSessionInfo(t->session, &info);

    if (rv == CKR_OK && (info.flags & CKF_RW_SESSION))
        return 1;
    kc_error_set(why, KC_TOKEN, "%s", rv == CKR_OK ? "the session the token gives is read-only"
                                                   : kc_p11_rv_name(rv));
    return 0;
}

kc_rc kc_tok_probe(kc_tok *t, int level, kc_probe *p, kc_error *err)
{
    static const char *const need_session[] = {
        "data.public",          "data.private",       "aes_key_wrap.rfc5649",
        "wrap_with_trusted.accepted", "wrap_with_trusted.enforced", "trusted.user_refused",
        "unwrap.readable_template", "rsa_oaep.sha1",  "rsa_oaep.sha256", "attr.copyable",
        "attr.unwrap_template", "copy.usage_locked", "data.token",
    };
    kc_error why;
    size_t i;
    int had_session = t->has_session;
    kc_rc r;

    memset(p, 0, sizeof(*p));
    p->token = t->info;
    p->logged_in = t->logged_in;
    r = list_mechanisms(t, p, err);
    if (r != KC_OK) {
        kc_probe_release(p);
        return r;
    }
    probe_mechanisms(p);
    probe_so_pin(&t->info, p);
    /* a token not initialised yet may have no sessions: its mechanisms
     * still say much */
    kc_error_clear(&why);
    if (kc_tok_session(t, &why) != KC_OK || !rw_session(t, &why)) {
        for (i = 0; i < sizeof(need_session) / sizeof(need_session[0]); i++)
            fact(p, need_session[i], KC_CAP_UNKNOWN, "no read-write session on this token to "
                 "ask it (%s)", why.msg);
        return KC_OK;
    }
    probe_data(t, p);
    probe_token_data(t, p);
    if (level >= KC_PROBE_VAULT) {
        probe_attributes(t, p);
        probe_key_wrap(t, p);
        probe_trusted(t, p);
        probe_copy(t, p);
    }
    if (level >= KC_PROBE_FULL) {
        probe_unwrap_template(t, p);
        probe_oaep(t, p);
    }
    /* a session left open on a token not initialised yet would make its
     * C_InitToken fail (CKR_SESSION_EXISTS) */
    if (!had_session && !t->info.initialized) {
        (void)t->f->C_CloseSession(t->session);
        t->has_session = 0;
    }
    /* a fact from a call that broke would be kept as the module's answer
     * (an arrangement recorded for good): no facts rather than wrong ones */
    if (p->broken_rv != 0) {
        r = kc_p11_fail(err, p->broken_at, p->broken_rv,
                        "asking token '%s' what it can do broke off",
                        t->info.initialized ? t->info.label : "(free)");
        kc_error_hint(err, "the probe changed nothing on the token; run the command again");
        kc_probe_release(p);
        return r;
    }
    return KC_OK;
}

kc_rc kc_probe_arrangement(const kc_probe *p, kc_arrangement *a, kc_error *err)
{
    static const char *const vault[] = {"data.public", "data.private", "mech.hmac_sha256",
                                        "mech.generic_keygen", "mech.rsa_keygen", NULL};
    size_t i;

    memset(a, 0, sizeof(*a));
    for (i = 0; vault[i] != NULL; i++)
        if (kc_probe_cap(p, vault[i]) != KC_CAP_YES)
            return kc_error_set(err, KC_TOKEN, "%s: %s", vault[i],
                                kc_probe_get(p, vault[i]) != NULL ? kc_probe_get(p, vault[i])->detail
                                                                  : "not asked");
    /* the vault key: EC P-256 where the module has it, else RSA-PSS */
    if (kc_probe_cap(p, "mech.ec_keygen") == KC_CAP_YES && kc_probe_cap(p, "mech.ecdsa") == KC_CAP_YES)
        a->signer = KC_SIGNER_ECDSA_P256;
    else if (kc_probe_cap(p, "mech.rsa_pss") == KC_CAP_YES)
        a->signer = KC_SIGNER_RSA_PSS;
    else
        return kc_error_set(err, KC_TOKEN,
                            "mech.ec_keygen: %s, and mech.rsa_pss: %s: no signature for the "
                            "vault's manifest",
                            kc_probe_get(p, "mech.ec_keygen")->detail,
                            kc_probe_get(p, "mech.rsa_pss")->detail);
    /* An hsm key may be extractable only where the module keeps the
     * trusted-key arrangement: CKA_WRAP_WITH_TRUSTED enforced, CKA_TRUSTED
     * refused to the user, a key that unwraps only hsm keys. Elsewhere it
     * never leaves the token. */
    a->hsm_non_extractable = !(kc_probe_cap(p, "wrap_with_trusted.enforced") == KC_CAP_YES &&
                               kc_probe_cap(p, "trusted.user_refused") == KC_CAP_YES &&
                               kc_probe_cap(p, "trusted.supported") != KC_CAP_NO &&
                               kc_probe_cap(p, "attr.unwrap_template") == KC_CAP_YES);
    if (p->kwp_mech == CKM_AES_KEY_WRAP_PAD)
        a->key_wrap = KC_WRAP_KWP;
    else if (p->kwp_mech == CKM_AES_KEY_WRAP_KWP)
        a->key_wrap = KC_WRAP_KWP_KWP;
    else if (kc_probe_cap(p, "mech.aes_cbc_pad_wrap") == KC_CAP_YES)
        a->key_wrap = KC_WRAP_CBC_PAD;
    else
        a->key_wrap = KC_WRAP_NONE;
    a->no_gcm = kc_probe_cap(p, "mech.aes_gcm") != KC_CAP_YES;
    return KC_OK;
}

const kc_probe_fact *kc_probe_get(const kc_probe *p, const char *id)
{
    size_t i;

    for (i = 0; i < p->nfacts; i++)
        if (strcmp(p->facts[i].id, id) == 0)
            return &p->facts[i];
    return NULL;
}

kc_cap kc_probe_cap(const kc_probe *p, const char *id)
{
    const kc_probe_fact *f = kc_probe_get(p, id);

    return f != NULL ? f->cap : KC_CAP_UNKNOWN;
}

void kc_probe_release(kc_probe *p)
{
    if (p == NULL)
        return;
    free(p->mechs);
    p->mechs = NULL;
    p->nmechs = 0;
}
