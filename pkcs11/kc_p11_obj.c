/* Objects on a token: keys, RSA key generation, RSA-OAEP wrap/unwrap, data. */
#include "kc_p11_int.h"

#include <openssl/crypto.h>

#include <stdlib.h>
#include <string.h>

#define KC_P11_OAEP_MAX 512 /* bytes: the modulus of RSA-4096 */

static CK_BBOOL ck_true = CK_TRUE;
static CK_BBOOL ck_false = CK_FALSE;

#define ATTR(t, p, n)                                                                              \
    {                                                                                              \
        (t), (void *)(p), (n)                                                                      \
    }
#define ATTR_BOOL(t, b)                                                                            \
    {                                                                                              \
        (t), (b) ? &ck_true : &ck_false, sizeof(CK_BBOOL)                                          \
    }

/* Collects every handle matching tmpl. *out is freed by the caller. */
static kc_rc find_all(kc_tok *t, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE **out,
                      size_t *count, kc_error *err)
{
    CK_OBJECT_HANDLE *v = NULL, *nv;
    CK_ULONG got = 0;
    size_t cap = 0, len = 0;
    CK_RV rv;
    kc_rc r;

    *out = NULL;
    *count = 0;
    r = kc_tok_session(t, err);
    if (r != KC_OK)
        return r;
    rv = t->f->C_FindObjectsInit(t->session, tmpl, n);
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_FindObjectsInit", rv, "cannot search vault '%s'", t->info.label);
    for (;;) {
        if (len == cap) {
            cap = cap * 2 + 16;
            nv = realloc(v, cap * sizeof(*v));
            if (nv == NULL) {
                r = kc_error_set(err, KC_ERR, "out of memory");
                goto cleanup;
            }
            v = nv;
        }
        rv = t->f->C_FindObjects(t->session, v + len, cap - len, &got);
        if (rv != CKR_OK) {
            r = kc_p11_fail(err, "C_FindObjects", rv, "cannot search vault '%s'", t->info.label);
            goto cleanup;
        }
        if (got == 0)
            break;
        len += got;
    }
    *out = v;
    *count = len;
    v = NULL;
    r = KC_OK;
cleanup:
    (void)t->f->C_FindObjectsFinal(t->session);
    free(v);
    return r;
}

/* Reads one attribute; returns its length, or -1 when the token will not say. */
static long get_attr(kc_tok *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, void *buf, size_t cap)
{
    CK_ATTRIBUTE a = ATTR(type, buf, cap);

    if (t->f->C_GetAttributeValue(t->session, h, &a, 1) != CKR_OK)
        return -1;
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
        return -1;
    return (long)a.ulValueLen;
}

static int get_bool(kc_tok *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type)
{
    CK_BBOOL b = CK_FALSE;

    return get_attr(t, h, type, &b, sizeof(b)) == (long)sizeof(b) && b == CK_TRUE;
}

static int get_ulong(kc_tok *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, CK_ULONG *out)
{
    return get_attr(t, h, type, out, sizeof(*out)) == (long)sizeof(*out);
}

/* Reads a variable-length attribute into a new buffer. */
static kc_rc get_alloc(kc_tok *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, const char *what,
                       unsigned char **out, size_t *len, kc_error *err)
{
    CK_ATTRIBUTE a = ATTR(type, NULL, 0);
    unsigned char *buf = NULL;
    CK_RV rv;

    *out = NULL;
    *len = 0;
    rv = t->f->C_GetAttributeValue(t->session, h, &a, 1);
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_GetAttributeValue", rv, "cannot read the %s", what);
    buf = malloc(a.ulValueLen + 1);
    if (buf == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    a.pValue = buf;
    rv = t->f->C_GetAttributeValue(t->session, h, &a, 1);
    if (rv != CKR_OK) {
        free(buf);
        return kc_p11_fail(err, "C_GetAttributeValue", rv, "cannot read the %s", what);
    }
    buf[a.ulValueLen] = 0;
    *out = buf;
    *len = a.ulValueLen;
    return KC_OK;
}

static void date_string(char out[9], const CK_DATE *d, long len)
{
    out[0] = '\0';
    if (len != (long)sizeof(*d))
        return;
    memcpy(out, d->year, 4);
    memcpy(out + 4, d->month, 2);
    memcpy(out + 6, d->day, 2);
    out[8] = '\0';
}

static void read_key(kc_tok *t, CK_OBJECT_HANDLE h, CK_OBJECT_CLASS cls, kc_key_obj *k)
{
    CK_KEY_TYPE kt = 0;
    CK_ULONG bits = 0;
    CK_DATE d;
    long n;

    memset(k, 0, sizeof(*k));
    k->handle = h;
    k->is_private = cls == CKO_PRIVATE_KEY;
    n = get_attr(t, h, CKA_LABEL, k->label, sizeof(k->label) - 1);
    k->label[n > 0 ? n : 0] = '\0';
    n = get_attr(t, h, CKA_ID, k->id, sizeof(k->id));
    k->id_len = n > 0 ? (size_t)n : 0;
    if (get_ulong(t, h, CKA_KEY_TYPE, &kt))
        k->type = kt == CKK_RSA ? KC_KT_RSA : kt == CKK_EC ? KC_KT_EC : KC_KT_OTHER;
    if (k->type == KC_KT_RSA) {
        if (!k->is_private && get_ulong(t, h, CKA_MODULUS_BITS, &bits))
            k->bits = (unsigned)bits;
        else if ((n = get_attr(t, h, CKA_MODULUS, NULL, 0)) > 0)
            k->bits = (unsigned)n * 8;
    }
    if (k->is_private) {
        k->ops |= get_bool(t, h, CKA_DECRYPT) ? KC_OP_DECRYPT : 0;
        k->ops |= get_bool(t, h, CKA_SIGN) ? KC_OP_SIGN : 0;
        k->ops |= get_bool(t, h, CKA_UNWRAP) ? KC_OP_UNWRAP : 0;
        k->sensitive = get_bool(t, h, CKA_SENSITIVE);
        k->extractable = get_bool(t, h, CKA_EXTRACTABLE);
        k->always_sensitive = get_bool(t, h, CKA_ALWAYS_SENSITIVE);
        k->never_extractable = get_bool(t, h, CKA_NEVER_EXTRACTABLE);
        k->wrap_with_trusted = get_bool(t, h, CKA_WRAP_WITH_TRUSTED);
        /* SoftHSM 2.6.1 cannot read back a non-empty CKA_START_DATE or
         * CKA_END_DATE of a CKA_PRIVATE object (CKR_GENERAL_ERROR): dates are
         * kept on the public key only and never asked of a private one. */
    } else {
        k->ops |= get_bool(t, h, CKA_ENCRYPT) ? KC_OP_ENCRYPT : 0;
        k->ops |= get_bool(t, h, CKA_VERIFY) ? KC_OP_VERIFY : 0;
        k->ops |= get_bool(t, h, CKA_WRAP) ? KC_OP_WRAP : 0;
        k->trusted = get_bool(t, h, CKA_TRUSTED);
        n = get_attr(t, h, CKA_START_DATE, &d, sizeof(d));
        date_string(k->start_date, &d, n);
        n = get_attr(t, h, CKA_END_DATE, &d, sizeof(d));
        date_string(k->end_date, &d, n);
    }
    k->local = get_bool(t, h, CKA_LOCAL);
    k->modifiable = get_bool(t, h, CKA_MODIFIABLE);
}

kc_rc kc_tok_find_keys(kc_tok *t, const char *label, const unsigned char *id, size_t id_len,
                       kc_key_obj **out, size_t *n, kc_error *err)
{
    static const CK_OBJECT_CLASS classes[] = {CKO_PUBLIC_KEY, CKO_PRIVATE_KEY};
    CK_OBJECT_HANDLE *h = NULL;
    kc_key_obj *v = NULL, *nv;
    size_t len = 0, count, c, i;
    kc_rc r = KC_ERR;

    *out = NULL;
    *n = 0;
    for (c = 0; c < 2; c++) {
        CK_OBJECT_CLASS cls = classes[c];
        CK_ATTRIBUTE tmpl[3];
        CK_ULONG nt = 0;

        tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &cls, sizeof(cls));
        if (label != NULL)
            tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, label, strlen(label));
        if (id != NULL)
            tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_ID, id, id_len);
        free(h);
        h = NULL;
        r = find_all(t, tmpl, nt, &h, &count, err);
        if (r != KC_OK)
            goto cleanup;
        if (count == 0)
            continue;
        nv = realloc(v, (len + count) * sizeof(*v));
        if (nv == NULL) {
            r = kc_error_set(err, KC_ERR, "out of memory");
            goto cleanup;
        }
        v = nv;
        for (i = 0; i < count; i++)
            read_key(t, h[i], cls, &v[len++]);
    }
    *out = v;
    *n = len;
    v = NULL;
    r = KC_OK;
cleanup:
    free(h);
    free(v);
    return r;
}

static int date_attr(CK_DATE *d, const char *s)
{
    if (s == NULL || strlen(s) != 8)
        return 0;
    memcpy(d->year, s, 4);
    memcpy(d->month, s + 4, 2);
    memcpy(d->day, s + 6, 2);
    return 1;
}

static int handle_in(CK_OBJECT_HANDLE h, const CK_OBJECT_HANDLE *v, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (v[i] == h)
            return 1;
    return 0;
}

/* After a failed C_GenerateKeyPair: destroys key objects that were not there
 * before and that carry our label or none. SoftHSM 2.6.1 leaves half-built
 * objects (with an empty label) behind when object creation fails on a
 * template attribute; a module may also fail after it stored the pair. The
 * label test keeps us off objects another process is making at the same time. */
static void remove_leftovers(kc_tok *t, const char *label, const CK_OBJECT_HANDLE *before,
                             size_t nbefore)
{
    CK_OBJECT_HANDLE *after = NULL;
    kc_error ignored;
    char lab[129];
    size_t nafter = 0, i;
    CK_OBJECT_CLASS cls;
    long n;

    if (find_all(t, NULL, 0, &after, &nafter, &ignored) != KC_OK)
        return;
    for (i = 0; i < nafter; i++) {
        if (handle_in(after[i], before, nbefore))
            continue;
        if (!get_ulong(t, after[i], CKA_CLASS, &cls) ||
            (cls != CKO_PUBLIC_KEY && cls != CKO_PRIVATE_KEY))
            continue;
        n = get_attr(t, after[i], CKA_LABEL, lab, sizeof(lab) - 1);
        lab[n > 0 ? n : 0] = '\0';
        if (n > 0 && strcmp(lab, label) != 0)
            continue;
        (void)t->f->C_DestroyObject(t->session, after[i]);
    }
    free(after);
}

kc_rc kc_tok_generate_rsa(kc_tok *t, const kc_rsa_spec *spec, kc_obj *pub, kc_obj *priv,
                          kc_error *err)
{
    static CK_BYTE exponent[] = {0x01, 0x00, 0x01};
    CK_OBJECT_CLASS pub_cls = CKO_PUBLIC_KEY, priv_cls = CKO_PRIVATE_KEY;
    CK_KEY_TYPE kt = CKK_RSA;
    CK_ULONG bits = spec->bits;
    CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE *before = NULL;
    CK_DATE start, end;
    size_t nbefore = 0;
    size_t label_len = strlen(spec->label);
    CK_ATTRIBUTE pt[14], vt[14];
    CK_ULONG np = 0, nv = 0;
    CK_RV rv;
    kc_rc r;

    pt[np++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &pub_cls, sizeof(pub_cls));
    pt[np++] = (CK_ATTRIBUTE)ATTR(CKA_KEY_TYPE, &kt, sizeof(kt));
    pt[np++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_TOKEN, 1);
    pt[np++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_PRIVATE, 0);
    pt[np++] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, spec->label, label_len);
    pt[np++] = (CK_ATTRIBUTE)ATTR(CKA_ID, spec->id, spec->id_len);
    pt[np++] = (CK_ATTRIBUTE)ATTR(CKA_MODULUS_BITS, &bits, sizeof(bits));
    pt[np++] = (CK_ATTRIBUTE)ATTR(CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent));
    pt[np++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_ENCRYPT, spec->ops & KC_OP_ENCRYPT);
    pt[np++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_VERIFY, spec->ops & KC_OP_VERIFY);
    pt[np++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_WRAP, spec->ops & KC_OP_WRAP);
    if (date_attr(&start, spec->start_date))
        pt[np++] = (CK_ATTRIBUTE)ATTR(CKA_START_DATE, &start, sizeof(start));
    if (date_attr(&end, spec->end_date))
        pt[np++] = (CK_ATTRIBUTE)ATTR(CKA_END_DATE, &end, sizeof(end));

    vt[nv++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &priv_cls, sizeof(priv_cls));
    vt[nv++] = (CK_ATTRIBUTE)ATTR(CKA_KEY_TYPE, &kt, sizeof(kt));
    vt[nv++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_TOKEN, 1);
    vt[nv++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_PRIVATE, 1);
    vt[nv++] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, spec->label, label_len);
    vt[nv++] = (CK_ATTRIBUTE)ATTR(CKA_ID, spec->id, spec->id_len);
    vt[nv++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_SENSITIVE, spec->sensitive);
    /* Extractable so a backup can wrap it; with CKA_WRAP_WITH_TRUSTED only
     * under a key the security officer marked trusted. */
    vt[nv++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_EXTRACTABLE, 1);
    vt[nv++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_WRAP_WITH_TRUSTED, spec->wrap_with_trusted);
    vt[nv++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_DECRYPT, spec->ops & KC_OP_DECRYPT);
    vt[nv++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_SIGN, spec->ops & KC_OP_SIGN);
    vt[nv++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_UNWRAP, spec->ops & KC_OP_UNWRAP);

    r = find_all(t, NULL, 0, &before, &nbefore, err);
    if (r != KC_OK)
        return r;
    rv = t->f->C_GenerateKeyPair(t->session, &mech, pt, np, vt, nv, &hpub, &hpriv);
    if (rv != CKR_OK) {
        remove_leftovers(t, spec->label, before, nbefore);
        free(before);
        return kc_p11_fail(err, "C_GenerateKeyPair", rv, "cannot create RSA-%u key pair",
                           spec->bits);
    }
    free(before);
    *pub = hpub;
    *priv = hpriv;
    return KC_OK;
}

kc_rc kc_tok_rsa_public(kc_tok *t, kc_obj key, unsigned char **n, size_t *n_len, unsigned char **e,
                        size_t *e_len, kc_error *err)
{
    kc_rc r;

    *e = NULL;
    r = kc_tok_session(t, err);
    if (r != KC_OK)
        return r;
    r = get_alloc(t, key, CKA_MODULUS, "RSA modulus", n, n_len, err);
    if (r != KC_OK)
        return r;
    r = get_alloc(t, key, CKA_PUBLIC_EXPONENT, "RSA public exponent", e, e_len, err);
    if (r != KC_OK) {
        free(*n);
        *n = NULL;
    }
    return r;
}

kc_rc kc_tok_destroy(kc_tok *t, kc_obj obj, kc_error *err)
{
    CK_RV rv;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    rv = t->f->C_DestroyObject(t->session, obj);
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_DestroyObject", rv, "cannot destroy object in vault '%s'",
                           t->info.label);
    return KC_OK;
}

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
    rv = t->f->C_CreateObject(t->session, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &sec);
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
    if (rv != CKR_OK) {
        r = kc_p11_fail(err, "C_UnwrapKey", rv, "RSA-OAEP%s unwrap failed",
                        hash == KC_OAEP_SHA256 ? "-256" : "");
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

kc_rc kc_tok_find_data(kc_tok *t, const char *application, const char *label, kc_data_obj **out,
                       size_t *n, kc_error *err)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE tmpl[3];
    CK_OBJECT_HANDLE *h = NULL;
    kc_data_obj *v = NULL;
    CK_ULONG nt = 0;
    size_t count = 0, i;
    long len;
    kc_rc r;

    *out = NULL;
    *n = 0;
    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &cls, sizeof(cls));
    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_APPLICATION, application, strlen(application));
    if (label != NULL)
        tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, label, strlen(label));
    r = find_all(t, tmpl, nt, &h, &count, err);
    if (r != KC_OK)
        return r;
    v = calloc(count + 1, sizeof(*v));
    if (v == NULL) {
        free(h);
        return kc_error_set(err, KC_ERR, "out of memory");
    }
    for (i = 0; i < count; i++) {
        v[i].handle = h[i];
        len = get_attr(t, h[i], CKA_LABEL, v[i].label, sizeof(v[i].label) - 1);
        v[i].label[len > 0 ? len : 0] = '\0';
        r = get_alloc(t, h[i], CKA_VALUE, "value of a data object", &v[i].value, &v[i].len, err);
        if (r != KC_OK) {
            kc_p11_data_objs_free(v, count);
            free(h);
            return r;
        }
    }
    free(h);
    *out = v;
    *n = count;
    return KC_OK;
}

void kc_p11_data_objs_free(kc_data_obj *objs, size_t n)
{
    size_t i;

    if (objs == NULL)
        return;
    for (i = 0; i < n; i++) {
        if (objs[i].value != NULL)
            OPENSSL_cleanse(objs[i].value, objs[i].len);
        free(objs[i].value);
    }
    free(objs);
}

kc_rc kc_tok_create_data(kc_tok *t, const char *application, const char *label, const void *value,
                         size_t len, int is_private, kc_obj *out, kc_error *err)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE tmpl[] = {
        ATTR(CKA_CLASS, &cls, sizeof(cls)),
        ATTR_BOOL(CKA_TOKEN, 1),
        ATTR_BOOL(CKA_PRIVATE, is_private),
        ATTR(CKA_APPLICATION, application, strlen(application)),
        ATTR(CKA_LABEL, label, strlen(label)),
        ATTR(CKA_VALUE, value, len),
    };
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    rv = t->f->C_CreateObject(t->session, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &h);
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_CreateObject", rv, "cannot store data object '%s'", label);
    if (out != NULL)
        *out = h;
    return KC_OK;
}
