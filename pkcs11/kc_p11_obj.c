/* Objects on a token: key enumeration and attributes, RSA key pairs, secret keys, data. */
#include "kc_p11_int.h"

#include <openssl/crypto.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

CK_BBOOL kc_p11_true = CK_TRUE;
CK_BBOOL kc_p11_false = CK_FALSE;

kc_rc kc_p11_find_all(kc_tok *t, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE **out,
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
again:
    KC_TOK_CALL(t, rv, t->f->C_FindObjectsInit(t->session, tmpl, n));
    if (rv != CKR_OK) {
        free(v);
        return kc_p11_fail(err, "C_FindObjectsInit", rv, "cannot search vault '%s'", t->info.label);
    }
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
        /* the session went mid-search: search again, from the start, on a new one */
        if (kc_tok_session_lost(rv) && kc_tok_recover(t)) {
            len = 0;
            goto again;
        }
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

long kc_p11_get_attr(kc_tok *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, void *buf, size_t cap)
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

    return kc_p11_get_attr(t, h, type, &b, sizeof(b)) == (long)sizeof(b) && b == CK_TRUE;
}

/* 1 or 0, or -1 when the token did not answer: a boolean that decides
 * whether an object is believed must not read a failure as FALSE. */
static int get_bool3(kc_tok *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type)
{
    CK_BBOOL b = CK_FALSE;

    if (kc_p11_get_attr(t, h, type, &b, sizeof(b)) != (long)sizeof(b))
        return -1;
    return b == CK_TRUE;
}

int kc_p11_get_ulong(kc_tok *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, CK_ULONG *out)
{
    return kc_p11_get_attr(t, h, type, out, sizeof(*out)) == (long)sizeof(*out);
}

kc_rc kc_p11_get_alloc(kc_tok *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, const char *what,
                       unsigned char **out, size_t *len, kc_error *err)
{
    CK_ATTRIBUTE a = ATTR(type, NULL, 0);
    unsigned char *buf = NULL;
    CK_RV rv;

    *out = NULL;
    *len = 0;
    KC_TOK_CALL(t, rv, t->f->C_GetAttributeValue(t->session, h, &a, 1));
    if (rv != CKR_OK) {
        kc_rc r = kc_p11_fail(err, "C_GetAttributeValue", rv, "cannot read the %s", what);
        kc_tok_explain_lost(t, rv, err);
        return r;
    }
    buf = malloc(a.ulValueLen + 1);
    if (buf == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    a.pValue = buf;
    KC_TOK_CALL(t, rv, t->f->C_GetAttributeValue(t->session, h, &a, 1));
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
    n = kc_p11_get_attr(t, h, CKA_LABEL, k->label, sizeof(k->label) - 1);
    k->label[n > 0 ? n : 0] = '\0';
    n = kc_p11_get_attr(t, h, CKA_ID, k->id, sizeof(k->id));
    k->id_len = n > 0 ? (size_t)n : 0;
    if (kc_p11_get_ulong(t, h, CKA_KEY_TYPE, &kt))
        k->type = kt == CKK_RSA ? KC_KT_RSA : kt == CKK_EC ? KC_KT_EC : KC_KT_OTHER;
    else
        k->unreadable = 1;
    if (k->type == KC_KT_RSA) {
        n = kc_p11_get_attr(t, h, CKA_MODULUS, NULL, 0);
        k->no_key = n == 0;
        if (!k->is_private && kc_p11_get_ulong(t, h, CKA_MODULUS_BITS, &bits))
            k->bits = (unsigned)bits;
        else if (n > 0)
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
        n = kc_p11_get_attr(t, h, CKA_START_DATE, &d, sizeof(d));
        date_string(k->start_date, &d, n);
        n = kc_p11_get_attr(t, h, CKA_END_DATE, &d, sizeof(d));
        date_string(k->end_date, &d, n);
    }
    k->local = get_bool(t, h, CKA_LOCAL);
    k->modifiable = get_bool(t, h, CKA_MODIFIABLE);
    k->token_private = get_bool3(t, h, CKA_PRIVATE);
    /* SoftHSM 2.6.1 can fail a read while another process rewrites the
     * token (its integrity check): such an object is unreadable, not
     * planted */
    k->unreadable |= k->token_private < 0;
    if (k->token_private < 0)
        k->token_private = 0;
}

/* The class of each of h[0..count): CKO_PUBLIC_KEY or CKO_PRIVATE_KEY, 0
 * for other objects; -1 when the token would not say for one. */
/* An object whose class cannot be read -- destroyed by another process
 * since the search, or a file a process killed mid-write left that SoftHSM
 * cannot load -- is no key, as a search with the class in its template
 * would not have matched it. */
static void key_classes(kc_tok *t, const CK_OBJECT_HANDLE *h, size_t count, CK_OBJECT_CLASS *cls)
{
    size_t i;

    for (i = 0; i < count; i++)
        if (!kc_p11_get_ulong(t, h[i], CKA_CLASS, &cls[i]) ||
            (cls[i] != CKO_PUBLIC_KEY && cls[i] != CKO_PRIVATE_KEY))
            cls[i] = 0;
}

static kc_rc find_keys(kc_tok *t, const char *label, const unsigned char *id, size_t id_len,
                       size_t first, size_t last, kc_key_obj **out, size_t *n, kc_error *err)
{
    static const CK_OBJECT_CLASS classes[] = {CKO_PUBLIC_KEY, CKO_PRIVATE_KEY};
    CK_OBJECT_CLASS one = classes[first], *cls = NULL;
    CK_OBJECT_HANDLE *h = NULL;
    CK_ATTRIBUTE tmpl[3];
    CK_ULONG nt;
    kc_key_obj *v = NULL;
    size_t len = 0, count = 0, c, i;
    int recoveries, pass;
    kc_rc r = KC_ERR;

    *out = NULL;
    *n = 0;
    /* Both classes from one search, each object's class asked afterwards:
     * SoftHSM reads every object file at each C_FindObjects (SOFTHSM-NOTES,
     * performance), so a search per class costs a pass over the token each.
     * The session replaced during the search or the questions: the handles
     * died with it (SoftHSM drops them with the last session), so all are
     * found again on the new one (once: a handle recovers once). */
    for (pass = 0; pass < 2; pass++) {
        recoveries = t->recoveries;
        nt = 0;
        if (first == last)
            tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &one, sizeof(one));
        if (label != NULL)
            tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, label, strlen(label));
        if (id != NULL)
            tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_ID, id, id_len);
        free(h);
        free(cls);
        h = NULL;
        cls = NULL;
        r = kc_p11_find_all(t, tmpl, nt, &h, &count, err);
        if (r != KC_OK)
            goto cleanup;
        cls = calloc(count + 1, sizeof(*cls));
        if (cls == NULL) {
            r = kc_error_set(err, KC_ERR, "out of memory");
            goto cleanup;
        }
        if (first == last)
            for (i = 0; i < count; i++)
                cls[i] = one;
        else
            key_classes(t, h, count, cls);
        free(v);
        v = calloc(count + 1, sizeof(*v));
        if (v == NULL) {
            r = kc_error_set(err, KC_ERR, "out of memory");
            goto cleanup;
        }
        /* public keys first, then private ones, as one search per class gave */
        len = 0;
        for (c = first; c <= last; c++)
            for (i = 0; i < count; i++)
                if (cls[i] == classes[c])
                    read_key(t, h[i], cls[i], &v[len++]);
        if (t->recoveries == recoveries || last == first)
            break;
    }
    *out = v;
    *n = len;
    v = NULL;
    r = KC_OK;
cleanup:
    free(h);
    free(cls);
    free(v);
    return r;
}

kc_rc kc_tok_find_keys(kc_tok *t, const char *label, const unsigned char *id, size_t id_len,
                       kc_key_obj **out, size_t *n, kc_error *err)
{
    return find_keys(t, label, id, id_len, 0, 1, out, n, err);
}

kc_rc kc_tok_read_keys(kc_tok *t, const kc_obj *handles, size_t count, kc_key_obj **out,
                       size_t *n, kc_error *err)
{
    CK_OBJECT_HANDLE *h = calloc(count + 1, sizeof(*h));
    CK_OBJECT_CLASS *cls = calloc(count + 1, sizeof(*cls));
    kc_key_obj *v = calloc(count + 1, sizeof(*v));
    CK_OBJECT_CLASS want;
    size_t i, len = 0;

    *out = NULL;
    *n = 0;
    if (h == NULL || cls == NULL || v == NULL) {
        free(h);
        free(cls);
        free(v);
        return kc_error_set(err, KC_ERR, "out of memory");
    }
    for (i = 0; i < count; i++)
        h[i] = (CK_OBJECT_HANDLE)handles[i];
    key_classes(t, h, count, cls);
    for (want = CKO_PUBLIC_KEY;; want = CKO_PRIVATE_KEY) {
        for (i = 0; i < count; i++)
            if (cls[i] == want)
                read_key(t, h[i], cls[i], &v[len++]);
        if (want == CKO_PRIVATE_KEY)
            break;
    }
    free(h);
    free(cls);
    *out = v;
    *n = len;
    return KC_OK;
}

kc_rc kc_tok_find_public_keys(kc_tok *t, const char *label, kc_key_obj **out, size_t *n,
                              kc_error *err)
{
    return find_keys(t, label, NULL, 0, 0, 0, out, n, err);
}

int kc_p11_date(CK_DATE *d, const char *s)
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
void kc_p11_remove_leftovers(kc_tok *t, const char *label, const CK_OBJECT_HANDLE *before,
                             size_t nbefore)
{
    CK_OBJECT_HANDLE *after = NULL;
    kc_error ignored;
    char lab[129];
    size_t nafter = 0, i;
    CK_OBJECT_CLASS cls;
    long n;

    if (kc_p11_find_all(t, NULL, 0, &after, &nafter, &ignored) != KC_OK)
        return;
    for (i = 0; i < nafter; i++) {
        if (handle_in(after[i], before, nbefore))
            continue;
        if (!kc_p11_get_ulong(t, after[i], CKA_CLASS, &cls) ||
            (cls != CKO_PUBLIC_KEY && cls != CKO_PRIVATE_KEY))
            continue;
        n = kc_p11_get_attr(t, after[i], CKA_LABEL, lab, sizeof(lab) - 1);
        lab[n > 0 ? n : 0] = '\0';
        if (n > 0 && strcmp(lab, label) != 0)
            continue;
        (void)t->f->C_DestroyObject(t->session, after[i]);
    }
    free(after);
}

/* The public half's template: class, type, label, id, public ops, dates.
 * Returns the count; the caller adds the key's size or material. */
static CK_ULONG rsa_public_template(const kc_rsa_spec *spec, CK_ATTRIBUTE *t, CK_OBJECT_CLASS *cls,
                                    CK_KEY_TYPE *kt, CK_DATE *start, CK_DATE *end)
{
    CK_ULONG n = 0;

    *cls = CKO_PUBLIC_KEY;
    *kt = CKK_RSA;
    t[n++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, cls, sizeof(*cls));
    t[n++] = (CK_ATTRIBUTE)ATTR(CKA_KEY_TYPE, kt, sizeof(*kt));
    t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_TOKEN, 1);
    t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_PRIVATE, 0);
    t[n++] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, spec->label, strlen(spec->label));
    t[n++] = (CK_ATTRIBUTE)ATTR(CKA_ID, spec->id, spec->id_len);
    t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_ENCRYPT, spec->ops & KC_OP_ENCRYPT);
    t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_VERIFY, spec->ops & KC_OP_VERIFY);
    t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_WRAP, spec->ops & KC_OP_WRAP);
    if (kc_p11_date(start, spec->start_date))
        t[n++] = (CK_ATTRIBUTE)ATTR(CKA_START_DATE, start, sizeof(*start));
    if (kc_p11_date(end, spec->end_date))
        t[n++] = (CK_ATTRIBUTE)ATTR(CKA_END_DATE, end, sizeof(*end));
    return n;
}

int kc_p11_takes_attr(kc_tok *t, const CK_ATTRIBUTE *a, int *cache, CK_RV *asked)
{
    static const unsigned char value[16] = {0};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE tmpl[] = {
        ATTR(CKA_CLASS, &cls, sizeof(cls)),
        ATTR(CKA_KEY_TYPE, &kt, sizeof(kt)),
        ATTR_BOOL(CKA_TOKEN, 0),
        ATTR_BOOL(CKA_PRIVATE, 0),
        ATTR_BOOL(CKA_UNWRAP, 1),
        ATTR(CKA_VALUE, (void *)value, sizeof(value)),
        *a,
    };
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv;

    if (asked != NULL)
        *asked = CKR_OK;
    if (*cache >= 0)
        return *cache;
    rv = t->f->C_CreateObject(t->session, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &h);
    if (rv == CKR_OK)
        (void)t->f->C_DestroyObject(t->session, h);
    /* p11-kit 0.24.1's RPC cannot carry some attributes (CKA_UNWRAP_TEMPLATE)
     * and answers CKR_DEVICE_ERROR: where the same object without it is
     * made, the attribute is what failed, and it is not taken */
    if (rv == CKR_DEVICE_ERROR) {
        CK_RV plain =
            t->f->C_CreateObject(t->session, tmpl, sizeof(tmpl) / sizeof(tmpl[0]) - 1, &h);
        if (plain == CKR_OK) {
            (void)t->f->C_DestroyObject(t->session, h);
            rv = CKR_ATTRIBUTE_TYPE_INVALID;
        }
    }
    if (asked != NULL)
        *asked = rv;
    /* anything else (a lost session, say) is not an answer to keep */
    if (rv == CKR_OK || rv == CKR_ATTRIBUTE_TYPE_INVALID)
        *cache = rv == CKR_OK;
    return rv != CKR_ATTRIBUTE_TYPE_INVALID;
}

/* CKA_COPYABLE=FALSE, where the module takes it. */
static int takes_copyable(kc_tok *t)
{
    CK_ATTRIBUTE a = ATTR_BOOL(CKA_COPYABLE, 0);

    return kc_p11_takes_attr(t, &a, &t->takes_copyable, NULL);
}

kc_rc kc_p11_rsa_private_template(kc_tok *t, const kc_rsa_spec *spec, CK_ATTRIBUTE *tmpl,
                                  CK_OBJECT_CLASS *cls, CK_KEY_TYPE *kt, CK_ULONG *count,
                                  kc_error *err)
{
    CK_ULONG n = 0;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    *cls = CKO_PRIVATE_KEY;
    *kt = CKK_RSA;
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, cls, sizeof(*cls));
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_KEY_TYPE, kt, sizeof(*kt));
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_TOKEN, 1);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_PRIVATE, 1);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, spec->label, strlen(spec->label));
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_ID, spec->id, spec->id_len);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_SENSITIVE, spec->sensitive);
    /* Extractable so a backup can wrap it; with CKA_WRAP_WITH_TRUSTED only
     * under a key the security officer marked trusted. On a module without
     * that arrangement an hsm key is not extractable at all. The attribute
     * is named only when set: a module that does not know it (openCryptoki
     * 3.8.1) takes the rest. */
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_EXTRACTABLE, !spec->non_extractable);
    if (spec->wrap_with_trusted)
        tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_WRAP_WITH_TRUSTED, 1);
    /* never copied: a copy is one more object whose protection must hold */
    if (takes_copyable(t))
        tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_COPYABLE, 0);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_DERIVE, 0);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_DECRYPT, spec->ops & KC_OP_DECRYPT);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_SIGN, spec->ops & KC_OP_SIGN);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_UNWRAP, spec->ops & KC_OP_UNWRAP);
    *count = n;
    return KC_OK;
}

/* After a failed generation of a pair whose CKA_ID is new (a root key's
 * version id: its time and 10 random bytes, kc_key_version_id), the key
 * objects with that label and id are what the failure left: nothing else
 * can carry an id nobody knew before. */
static void remove_pair_with_id(kc_tok *t, const char *label, const unsigned char *id,
                                size_t id_len)
{
    CK_ATTRIBUTE tmpl[2] = {ATTR(CKA_LABEL, label, strlen(label)), ATTR(CKA_ID, id, id_len)};
    CK_OBJECT_HANDLE *h = NULL;
    CK_OBJECT_CLASS cls;
    kc_error ignored;
    size_t n = 0, i;

    if (kc_p11_find_all(t, tmpl, 2, &h, &n, &ignored) != KC_OK)
        return;
    for (i = 0; i < n; i++)
        if (kc_p11_get_ulong(t, h[i], CKA_CLASS, &cls) &&
            (cls == CKO_PUBLIC_KEY || cls == CKO_PRIVATE_KEY))
            (void)t->f->C_DestroyObject(t->session, h[i]);
    free(h);
}

/* C_GenerateKeyPair with the leftovers of a failed generation removed;
 * what names the pair in the error. With a new id (id_len > 0) the
 * leftovers are found by it after a failure; without one, every object is
 * listed before and the new ones of the label removed after: a pass over
 * the token's objects on every generation (SOFTHSM-NOTES, performance),
 * which a root key's creation, whose cost should not grow with the vault,
 * does not pay. */
static kc_rc generate_pair(kc_tok *t, CK_MECHANISM_TYPE type, CK_ATTRIBUTE *pt, CK_ULONG np,
                           CK_ATTRIBUTE *vt, CK_ULONG nv, const char *label,
                           const unsigned char *id, size_t id_len, const char *what, kc_obj *pub,
                           kc_obj *priv, kc_error *err)
{
    CK_MECHANISM mech = {type, NULL, 0};
    CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE, *before = NULL;
    size_t nbefore = 0;
    CK_RV rv;
    kc_rc r;

    if (id_len == 0) {
        r = kc_p11_find_all(t, NULL, 0, &before, &nbefore, err);
        if (r != KC_OK)
            return r;
    }
    rv = t->f->C_GenerateKeyPair(t->session, &mech, pt, np, vt, nv, &hpub, &hpriv);
    if (rv != CKR_OK) {
        if (id_len > 0)
            remove_pair_with_id(t, label, id, id_len);
        else
            kc_p11_remove_leftovers(t, label, before, nbefore);
        free(before);
        return kc_p11_fail(err, "C_GenerateKeyPair", rv, "cannot create %s", what);
    }
    free(before);
    *pub = hpub;
    *priv = hpriv;
    return KC_OK;
}

kc_rc kc_tok_generate_rsa(kc_tok *t, const kc_rsa_spec *spec, kc_obj *pub, kc_obj *priv,
                          kc_error *err)
{
    static CK_BYTE exponent[] = {0x01, 0x00, 0x01};
    CK_OBJECT_CLASS pub_cls, priv_cls;
    CK_KEY_TYPE pub_kt, priv_kt;
    CK_ULONG bits = spec->bits;
    CK_DATE start, end;
    CK_ATTRIBUTE pt[16], vt[16];
    CK_ULONG np, nv;
    char what[40];
    kc_rc r;

    np = rsa_public_template(spec, pt, &pub_cls, &pub_kt, &start, &end);
    pt[np++] = (CK_ATTRIBUTE)ATTR(CKA_MODULUS_BITS, &bits, sizeof(bits));
    pt[np++] = (CK_ATTRIBUTE)ATTR(CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent));
    r = kc_p11_rsa_private_template(t, spec, vt, &priv_cls, &priv_kt, &nv, err);
    if (r != KC_OK)
        return r;
    snprintf(what, sizeof(what), "RSA-%u key pair", spec->bits);
    r = generate_pair(t, CKM_RSA_PKCS_KEY_PAIR_GEN, pt, np, vt, nv, spec->label, spec->id,
                      spec->id_len, what, pub, priv, err);
    /* a module without the attribute (openCryptoki 3.8.1) cannot give the
     * protection 'hsm' promises: it is not quietly left out */
    if (r != KC_OK && spec->wrap_with_trusted && err->rv == CKR_ATTRIBUTE_TYPE_INVALID)
        kc_error_hint(err, "the module does not take CKA_WRAP_WITH_TRUSTED, so it cannot keep an "
                           "hsm key extractable only under a trusted key; nothing was made. See "
                           "'keycustody module check'");
    return r;
}

/* DER of the OID prime256v1 (1.2.840.10045.3.1.7), as CKA_EC_PARAMS holds it. */
static const CK_BYTE p256_params[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};

/* A vault key pair: the public half public and verifying only, the
 * private half sensitive, never extractable, signing only, not modifiable
 * and (where the module knows the attribute) not copyable. kind holds what
 * the key type needs in the public template (at most 2 entries). */
static kc_rc generate_signer(kc_tok *t, CK_MECHANISM_TYPE mech, const CK_ATTRIBUTE *kind,
                             CK_ULONG nkind, const char *label, const char *what, kc_obj *pub,
                             kc_obj *priv, kc_error *err)
{
    CK_ATTRIBUTE pt[10] = {
        ATTR_BOOL(CKA_TOKEN, 1),
        ATTR_BOOL(CKA_PRIVATE, 0),
        ATTR(CKA_LABEL, label, strlen(label)),
        ATTR_BOOL(CKA_VERIFY, 1),
        ATTR_BOOL(CKA_ENCRYPT, 0),
        ATTR_BOOL(CKA_WRAP, 0),
        ATTR_BOOL(CKA_DERIVE, 0),
        ATTR_BOOL(CKA_MODIFIABLE, 0),
    };
    CK_ATTRIBUTE vt[] = {
        ATTR_BOOL(CKA_TOKEN, 1),
        ATTR_BOOL(CKA_PRIVATE, 1),
        ATTR(CKA_LABEL, label, strlen(label)),
        ATTR_BOOL(CKA_SENSITIVE, 1),
        ATTR_BOOL(CKA_EXTRACTABLE, 0),
        ATTR_BOOL(CKA_SIGN, 1),
        ATTR_BOOL(CKA_DECRYPT, 0),
        ATTR_BOOL(CKA_UNWRAP, 0),
        ATTR_BOOL(CKA_DERIVE, 0),
        ATTR_BOOL(CKA_MODIFIABLE, 0),
        ATTR_BOOL(CKA_COPYABLE, 0),
    };
    CK_ULONG np = 8, nv = sizeof(vt) / sizeof(vt[0]), i;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    for (i = 0; i < nkind && np < sizeof(pt) / sizeof(pt[0]); i++)
        pt[np++] = kind[i];
    if (!takes_copyable(t))
        nv--;
    return generate_pair(t, mech, pt, np, vt, nv, label, NULL, 0, what, pub, priv, err);
}

kc_rc kc_tok_generate_ec_signer(kc_tok *t, const char *label, kc_obj *pub, kc_obj *priv,
                                kc_error *err)
{
    CK_ATTRIBUTE kind[] = {ATTR(CKA_EC_PARAMS, p256_params, sizeof(p256_params))};

    return generate_signer(t, CKM_EC_KEY_PAIR_GEN, kind, 1, label, "the EC P-256 vault key", pub,
                           priv, err);
}

kc_rc kc_tok_generate_rsa_signer(kc_tok *t, const char *label, kc_obj *pub, kc_obj *priv,
                                 kc_error *err)
{
    static CK_BYTE exponent[] = {0x01, 0x00, 0x01};
    CK_ULONG bits = 3072;
    CK_ATTRIBUTE kind[] = {ATTR(CKA_MODULUS_BITS, &bits, sizeof(bits)),
                           ATTR(CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent))};

    return generate_signer(t, CKM_RSA_PKCS_KEY_PAIR_GEN, kind, 2, label, "the RSA-3072 vault key",
                           pub, priv, err);
}

kc_rc kc_tok_ec_point(kc_tok *t, kc_obj pub, unsigned char point[65], kc_error *err)
{
    unsigned char *params = NULL, *raw = NULL;
    size_t len = 0, plen = 0;
    kc_rc r = kc_tok_session(t, err);

    if (r == KC_OK)
        r = kc_p11_get_alloc(t, pub, CKA_EC_PARAMS, "EC parameters", &params, &plen, err);
    if (r != KC_OK)
        return r;
    if (plen != sizeof(p256_params) || memcmp(params, p256_params, sizeof(p256_params)) != 0)
        r = kc_error_set(err, KC_INTEGRITY, "the EC key in vault '%s' is not on curve P-256",
                         t->info.label);
    free(params);
    if (r != KC_OK)
        return r;
    r = kc_p11_get_alloc(t, pub, CKA_EC_POINT, "EC point", &raw, &len, err);
    if (r != KC_OK)
        return r;
    /* PKCS#11 says DER OCTET STRING (SoftHSM gives 04 41 04 X Y); take the
     * bare point too, as some modules give it */
    if (len == 67 && raw[0] == 0x04 && raw[1] == 0x41 && raw[2] == 0x04)
        memcpy(point, raw + 2, 65);
    else if (len == 65 && raw[0] == 0x04)
        memcpy(point, raw, 65);
    else
        r = kc_error_set(err, KC_INTEGRITY,
                         "the EC point in vault '%s' is not an uncompressed "
                         "P-256 point",
                         t->info.label);
    free(raw);
    return r;
}

/* C_CreateObject with the leftovers of a failed creation removed. */
static kc_rc create_clean(kc_tok *t, CK_ATTRIBUTE *tmpl, CK_ULONG n, const char *label,
                          const char *what, kc_obj *out, kc_error *err)
{
    CK_OBJECT_HANDLE *before = NULL, h = CK_INVALID_HANDLE;
    size_t nbefore = 0;
    CK_RV rv;
    kc_rc r;

    r = kc_p11_find_all(t, NULL, 0, &before, &nbefore, err);
    if (r != KC_OK)
        return r;
    rv = t->f->C_CreateObject(t->session, tmpl, n, &h);
    if (rv != CKR_OK) {
        kc_p11_remove_leftovers(t, label, before, nbefore);
        free(before);
        return kc_p11_fail(err, "C_CreateObject", rv, "cannot create the %s", what);
    }
    free(before);
    *out = h;
    return KC_OK;
}

kc_rc kc_tok_create_rsa_public(kc_tok *t, const kc_rsa_spec *spec, const unsigned char *n,
                               size_t n_len, const unsigned char *e, size_t e_len, kc_obj *out,
                               kc_error *err)
{
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE kt;
    CK_DATE start, end;
    CK_ATTRIBUTE tmpl[16];
    CK_ULONG nt = rsa_public_template(spec, tmpl, &cls, &kt, &start, &end);

    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_MODULUS, n, n_len);
    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_PUBLIC_EXPONENT, e, e_len);
    return create_clean(t, tmpl, nt, spec->label, "public key", out, err);
}

kc_rc kc_tok_create_rsa_private(kc_tok *t, const kc_rsa_spec *spec, const kc_rsa_parts *k,
                                kc_obj *out, kc_error *err)
{
    CK_OBJECT_CLASS cls;
    CK_KEY_TYPE kt;
    CK_ATTRIBUTE tmpl[24];
    CK_ULONG nt = 0;
    kc_rc r = kc_p11_rsa_private_template(t, spec, tmpl, &cls, &kt, &nt, err);

    if (r != KC_OK)
        return r;
    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_MODULUS, k->n, k->n_len);
    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_PUBLIC_EXPONENT, k->e, k->e_len);
    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_PRIVATE_EXPONENT, k->d, k->d_len);
    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_PRIME_1, k->p, k->p_len);
    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_PRIME_2, k->q, k->q_len);
    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_EXPONENT_1, k->dp, k->dp_len);
    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_EXPONENT_2, k->dq, k->dq_len);
    tmpl[nt++] = (CK_ATTRIBUTE)ATTR(CKA_COEFFICIENT, k->qinv, k->qinv_len);
    return create_clean(t, tmpl, nt, spec->label, "private key", out, err);
}

kc_rc kc_tok_set_ops(kc_tok *t, kc_obj obj, int is_private, unsigned ops, kc_error *err)
{
    CK_ATTRIBUTE priv[] = {
        ATTR_BOOL(CKA_UNWRAP, ops & KC_OP_UNWRAP),
        ATTR_BOOL(CKA_DECRYPT, ops & KC_OP_DECRYPT),
        ATTR_BOOL(CKA_SIGN, ops & KC_OP_SIGN),
    };
    CK_ATTRIBUTE pub[] = {
        ATTR_BOOL(CKA_WRAP, ops & KC_OP_WRAP),
        ATTR_BOOL(CKA_ENCRYPT, ops & KC_OP_ENCRYPT),
        ATTR_BOOL(CKA_VERIFY, ops & KC_OP_VERIFY),
    };
    CK_RV rv;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    KC_TOK_CALL(t, rv, t->f->C_SetAttributeValue(t->session, obj, is_private ? priv : pub, 3));
    if (rv != CKR_OK) {
        r = kc_p11_fail(err, "C_SetAttributeValue", rv, "cannot change the usage of a %s key",
                        is_private ? "private" : "public");
        if (rv == CKR_ATTRIBUTE_READ_ONLY || rv == CKR_ACTION_PROHIBITED)
            err->code = r = KC_DENIED;
        return r;
    }
    return KC_OK;
}

kc_rc kc_tok_set_end_date(kc_tok *t, kc_obj obj, const char *yyyymmdd, kc_error *err)
{
    CK_DATE d;
    CK_ATTRIBUTE a = ATTR(CKA_END_DATE, &d, sizeof(d));
    CK_RV rv;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    if (!kc_p11_date(&d, yyyymmdd))
        a.ulValueLen = 0;
    KC_TOK_CALL(t, rv, t->f->C_SetAttributeValue(t->session, obj, &a, 1));
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_SetAttributeValue", rv, "cannot set the expiry date");
    return KC_OK;
}

/* Whether object h is where says a genuine one is; -1 when the token did
 * not say. */
static int is_where(kc_tok *t, CK_OBJECT_HANDLE h, kc_where where)
{
    int priv = where == KC_WHERE_ANY ? 0 : get_bool3(t, h, CKA_PRIVATE), trusted;

    if (priv < 0)
        return -1;
    switch (where) {
    case KC_WHERE_PRIVATE:
        return priv;
    case KC_WHERE_TRUSTED:
        trusted = get_bool3(t, h, CKA_TRUSTED);
        return trusted < 0 ? -1 : !priv && trusted;
    case KC_WHERE_PUBLIC:
        return !priv;
    case KC_WHERE_ANY:
        break;
    }
    return 1;
}

/* One search by template; the handles that are where says go to the front
 * of *out (*n of them), and *others counts those that are not. One search,
 * not two: SoftHSM reads every object file at each C_FindObjects
 * (SOFTHSM-NOTES, performance), and a session lost between two searches
 * costs the handles found before it. */
static kc_rc find_where(kc_tok *t, CK_ATTRIBUTE *tmpl, CK_ULONG nt, kc_where where,
                        CK_OBJECT_HANDLE **out, size_t *n, size_t *others, kc_error *err)
{
    size_t count = 0, i, k;
    int attempt, w = 0;
    kc_rc r;

    /* An object another process destroys between the search and the
     * question is gone from the next search: one more, then it is the
     * token's failure. */
    for (attempt = 0; attempt < 2; attempt++) {
        r = kc_p11_find_all(t, tmpl, nt, out, &count, err);
        if (r != KC_OK)
            return r;
        for (i = 0, k = 0; i < count; i++) {
            w = is_where(t, (*out)[i], where);
            if (w < 0)
                break;
            if (w)
                (*out)[k++] = (*out)[i];
        }
        if (w >= 0)
            break;
        free(*out);
        *out = NULL;
    }
    if (w < 0)
        return kc_error_set(err, KC_TOKEN,
                            "vault '%s' did not say whether an object is private (the token "
                            "failed, perhaps while another process wrote it); run the "
                            "command again",
                            t->info.label);
    *n = k;
    if (others != NULL)
        *others = count - k;
    return KC_OK;
}

/* The CKA_UNWRAP_TEMPLATE of a key that unwraps root keys: what the
 * unwrapped key must be, whatever template the caller gives. SoftHSM 2.6.1
 * enforces it: a caller's template that differs from it, or leaves one of its
 * attributes out, is CKR_TEMPLATE_INCONSISTENT (test_softhsm facts), so the
 * restore template names every one of them. Without it, a user-PIN
 * holder wraps a root key under the trusted wrap key and unwraps it here
 * into a key that is not sensitive (tests/attack_p11.c). */
static CK_ULONG unwrap_template(kc_unwrap_into into, CK_ATTRIBUTE *t)
{
    static CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    static CK_KEY_TYPE kt = CKK_RSA;
    CK_ULONG n = 0;

    t[n++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &cls, sizeof(cls));
    t[n++] = (CK_ATTRIBUTE)ATTR(CKA_KEY_TYPE, &kt, sizeof(kt));
    t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_TOKEN, 1);
    t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_PRIVATE, 1);
    t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_DERIVE, 0);
    if (into == KC_UNWRAP_HSM_RSA) {
        t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_SENSITIVE, 1);
        t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_WRAP_WITH_TRUSTED, 1);
    } else {
        t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_SENSITIVE, 0);
        t[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_WRAP_WITH_TRUSTED, 0);
    }
    return n;
}

kc_rc kc_tok_create_secret(kc_tok *t, const kc_secret_spec *spec, const kc_secret *value,
                           kc_obj *out, kc_error *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = spec->kind == KC_SECRET_AES ? CKK_AES : CKK_GENERIC_SECRET;
    CK_ATTRIBUTE tmpl[20], into[8];
    CK_ULONG n = 0;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &cls, sizeof(cls));
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_KEY_TYPE, &kt, sizeof(kt));
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_TOKEN, 1);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_PRIVATE, spec->is_private);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, spec->label, strlen(spec->label));
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_ID, spec->id, spec->id_len);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_SENSITIVE, 1);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_EXTRACTABLE, 0);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_WRAP, spec->wrap);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_UNWRAP, spec->unwrap);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_ENCRYPT, spec->encrypt);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_DECRYPT, spec->encrypt);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_SIGN, spec->sign);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_VERIFY, spec->sign);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_DERIVE, 0);
    /* No usage can be added later: SoftHSM 2.6.1 refuses every change to an
     * object made CKA_MODIFIABLE=FALSE (CKR_ACTION_PROHIBITED) and every copy
     * of one made CKA_COPYABLE=FALSE (test_softhsm facts). */
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_MODIFIABLE, 0);
    if (takes_copyable(t))
        tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_COPYABLE, 0);
    if (spec->unwrap && spec->unwrap_into != KC_UNWRAP_ANY) {
        CK_ATTRIBUTE a = ATTR(CKA_UNWRAP_TEMPLATE, into,
                              unwrap_template(spec->unwrap_into, into) * sizeof(into[0]));
        /* A module without unwrap templates (openCryptoki 3.8.1) cannot
         * hold a key that unwraps hsm keys: what it unwraps could be made
         * readable. A software key is readable by its owner anyway. */
        if (kc_p11_takes_attr(t, &a, &t->takes_unwrap_template, NULL))
            tmpl[n++] = a;
        else if (spec->unwrap_into == KC_UNWRAP_HSM_RSA)
            return kc_error_set(err, KC_TOKEN,
                                "token '%s' does not take CKA_UNWRAP_TEMPLATE, so it cannot "
                                "hold '%s', which may unwrap only hsm keys",
                                t->info.label, spec->label);
    }
    /* SoftHSM takes CKA_TRUSTED only from the SO, only at creation and only
     * on a public object; asking for it otherwise fails and leaves an
     * orphan behind, which create_clean removes. */
    if (spec->trusted)
        tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_TRUSTED, 1);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_VALUE, value->data, value->len);
    return create_clean(t, tmpl, n, spec->label, spec->label, out, err);
}

kc_rc kc_tok_generate_hmac_key(kc_tok *t, const char *label, kc_obj *out, kc_error *err)
{
    CK_MECHANISM mech = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ULONG value_len = 32;
    CK_OBJECT_HANDLE *before = NULL, h = CK_INVALID_HANDLE;
    size_t nbefore = 0;
    CK_ATTRIBUTE tmpl[18];
    CK_ULONG n = 0;
    CK_RV rv;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &cls, sizeof(cls));
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_KEY_TYPE, &kt, sizeof(kt));
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_VALUE_LEN, &value_len, sizeof(value_len));
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_TOKEN, 1);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_PRIVATE, 1);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, label, strlen(label));
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_SENSITIVE, 1);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_EXTRACTABLE, 0);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_SIGN, 1);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_VERIFY, 1);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_ENCRYPT, 0);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_DECRYPT, 0);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_WRAP, 0);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_UNWRAP, 0);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_DERIVE, 0);
    tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_MODIFIABLE, 0);
    if (takes_copyable(t))
        tmpl[n++] = (CK_ATTRIBUTE)ATTR_BOOL(CKA_COPYABLE, 0);
    r = kc_p11_find_all(t, NULL, 0, &before, &nbefore, err);
    if (r != KC_OK)
        return r;
    rv = t->f->C_GenerateKey(t->session, &mech, tmpl, n, &h);
    if (rv != CKR_OK) {
        /* SoftHSM 2.6.1 can leave a half-made object after a failed create */
        kc_p11_remove_leftovers(t, label, before, nbefore);
        free(before);
        r = kc_p11_fail(err, "C_GenerateKey", rv, "cannot generate the HMAC key '%s'", label);
        kc_tok_explain_lost(t, rv, err);
        return r;
    }
    free(before);
    *out = h;
    return KC_OK;
}

kc_rc kc_tok_remove_unlabelled_secrets(kc_tok *t, size_t *removed, kc_error *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_ATTRIBUTE tmpl[3];
    CK_OBJECT_HANDLE *h = NULL;
    size_t count = 0, i;
    kc_rc r;

    *removed = 0;
    tmpl[0] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &cls, sizeof(cls));
    tmpl[1] = (CK_ATTRIBUTE)ATTR(CKA_KEY_TYPE, &kt, sizeof(kt));
    tmpl[2] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, "", 0);
    r = kc_p11_find_all(t, tmpl, 3, &h, &count, err);
    for (i = 0; r == KC_OK && i < count; i++) {
        r = kc_tok_destroy(t, h[i], err);
        if (r == KC_OK)
            (*removed)++;
    }
    free(h);
    return r;
}

kc_rc kc_tok_unlabelled_data(kc_tok *t, int remove, size_t *n, kc_error *err)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE tmpl[3];
    CK_OBJECT_HANDLE *h = NULL;
    size_t count = 0, i;
    kc_rc r;

    *n = 0;
    tmpl[0] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &cls, sizeof(cls));
    tmpl[1] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, "", 0);
    tmpl[2] = (CK_ATTRIBUTE)ATTR(CKA_APPLICATION, "", 0);
    r = kc_p11_find_all(t, tmpl, 3, &h, &count, err);
    /* One another process is making now is unlabelled too until SoftHSM
     * writes its template: only what is still unlabelled a moment later
     * goes (a create takes milliseconds). */
    if (r == KC_OK && remove && count > 0) {
        struct timespec pause = {1, 0};
        CK_OBJECT_HANDLE *again = NULL;
        size_t nagain = 0, j, k = 0;

        (void)nanosleep(&pause, NULL);
        r = kc_p11_find_all(t, tmpl, 3, &again, &nagain, err);
        for (i = 0; r == KC_OK && i < count; i++)
            for (j = 0; j < nagain; j++)
                if (again[j] == h[i]) {
                    h[k++] = h[i];
                    break;
                }
        count = k;
        free(again);
    }
    for (i = 0; r == KC_OK && i < count; i++) {
        if (remove)
            r = kc_tok_destroy(t, h[i], err);
        if (r == KC_OK)
            (*n)++;
    }
    free(h);
    return r;
}

kc_rc kc_tok_find_secrets(kc_tok *t, const char *label, const unsigned char *id, size_t id_len,
                          kc_where where, kc_obj *out, size_t cap, size_t *n, size_t *others,
                          kc_error *err)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE tmpl[2];
    CK_OBJECT_HANDLE *h = NULL;
    unsigned char hid[64];
    size_t count = 0, i, k = 0;
    long len;
    kc_rc r;

    tmpl[0] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &cls, sizeof(cls));
    tmpl[1] = (CK_ATTRIBUTE)ATTR(CKA_LABEL, label, strlen(label));
    /* by label alone, so that a look-alike of another id is counted too */
    r = find_where(t, tmpl, 2, where, &h, &count, others, err);
    if (r != KC_OK)
        return r;
    for (i = 0; i < count; i++) {
        if (id != NULL) {
            len = kc_p11_get_attr(t, h[i], CKA_ID, hid, sizeof(hid));
            if (len != (long)id_len || memcmp(hid, id, id_len) != 0)
                continue;
        }
        if (k < cap)
            out[k] = h[i];
        k++;
    }
    *n = k;
    free(h);
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
    r = kc_p11_get_alloc(t, key, CKA_MODULUS, "RSA modulus", n, n_len, err);
    if (r != KC_OK)
        return r;
    r = kc_p11_get_alloc(t, key, CKA_PUBLIC_EXPONENT, "RSA public exponent", e, e_len, err);
    if (r != KC_OK) {
        free(*n);
        *n = NULL;
    }
    return r;
}

kc_rc kc_tok_same_rsa_key(kc_tok *t, kc_obj a, kc_obj b, int *same, kc_error *err)
{
    unsigned char *na = NULL, *ea = NULL, *nb = NULL, *eb = NULL;
    size_t na_len = 0, ea_len = 0, nb_len = 0, eb_len = 0;
    kc_rc r = kc_tok_rsa_public(t, a, &na, &na_len, &ea, &ea_len, err);

    if (r == KC_OK)
        r = kc_tok_rsa_public(t, b, &nb, &nb_len, &eb, &eb_len, err);
    *same = r == KC_OK && na_len == nb_len && ea_len == eb_len && memcmp(na, nb, na_len) == 0 &&
            memcmp(ea, eb, ea_len) == 0;
    free(na);
    free(ea);
    free(nb);
    free(eb);
    return r;
}

kc_rc kc_tok_destroy(kc_tok *t, kc_obj obj, kc_error *err)
{
    CK_RV rv;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    KC_TOK_CALL(t, rv, t->f->C_DestroyObject(t->session, obj));
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_DestroyObject", rv, "cannot destroy object in vault '%s'",
                           t->info.label);
    return KC_OK;
}

static kc_rc find_data_once(kc_tok *t, const char *application, const char *label, kc_where where,
                            kc_data_obj **out, size_t *n, size_t *others, kc_error *err)
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
    r = find_where(t, tmpl, nt, where == KC_WHERE_TRUSTED ? KC_WHERE_PUBLIC : where, &h, &count,
                   others, err);
    if (r != KC_OK)
        return r;
    v = calloc(count + 1, sizeof(*v));
    if (v == NULL) {
        free(h);
        return kc_error_set(err, KC_ERR, "out of memory");
    }
    for (i = 0; i < count; i++) {
        v[i].handle = h[i];
        len = kc_p11_get_attr(t, h[i], CKA_LABEL, v[i].label, sizeof(v[i].label) - 1);
        v[i].label[len > 0 ? len : 0] = '\0';
        r = kc_p11_get_alloc(t, h[i], CKA_VALUE, "value of a data object", &v[i].value, &v[i].len,
                             err);
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

kc_rc kc_tok_find_data(kc_tok *t, const char *application, const char *label, kc_where where,
                       kc_data_obj **out, size_t *n, size_t *others, kc_error *err)
{
    kc_rc r = find_data_once(t, application, label, where, out, n, others, err);

    /* one another process destroyed between the search and reading it is
     * gone from the next search (find_where's own failure has no rv) */
    if (r != KC_OK && (err->rv == CKR_OBJECT_HANDLE_INVALID || err->rv == CKR_GENERAL_ERROR ||
                       err->rv == CKR_FUNCTION_FAILED || (err->rv == 0 && r == KC_TOKEN))) {
        kc_error_clear(err);
        r = find_data_once(t, application, label, where, out, n, others, err);
    }
    return r;
}

/* One search for the data objects of application labelled la or lb: each
 * found object's label is asked and compared here, so two documents cost
 * one pass over the token's object files, not two (SOFTHSM-NOTES). */
static kc_rc find_data_two_once(kc_tok *t, const char *application, const char *la, const char *lb,
                                kc_where where, kc_data_obj **a, size_t *na, size_t *others_a,
                                kc_data_obj **b, size_t *nb, kc_error *err)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE tmpl[2];
    CK_OBJECT_HANDLE *h = NULL;
    kc_data_obj *v[2] = {NULL, NULL}, *o;
    size_t count = 0, i, got[2] = {0, 0};
    char label[129];
    long len;
    int which, w;
    kc_rc r;

    *a = *b = NULL;
    *na = *nb = 0;
    if (others_a != NULL)
        *others_a = 0;
    tmpl[0] = (CK_ATTRIBUTE)ATTR(CKA_CLASS, &cls, sizeof(cls));
    tmpl[1] = (CK_ATTRIBUTE)ATTR(CKA_APPLICATION, application, strlen(application));
    r = kc_p11_find_all(t, tmpl, 2, &h, &count, err);
    if (r != KC_OK)
        return r;
    v[0] = calloc(count + 1, sizeof(*v[0]));
    v[1] = calloc(count + 1, sizeof(*v[1]));
    if (v[0] == NULL || v[1] == NULL) {
        r = kc_error_set(err, KC_ERR, "out of memory");
        goto cleanup;
    }
    for (i = 0; i < count; i++) {
        len = kc_p11_get_attr(t, h[i], CKA_LABEL, label, sizeof(label) - 1);
        /* longer than the buffer: neither la nor lb (kc_tok_find_data_two) */
        if (len < 0 && kc_p11_get_attr(t, h[i], CKA_LABEL, NULL, 0) >= (long)sizeof(label) - 1)
            continue;
        /* one whose label cannot be read (destroyed since the search, or
         * a file a killed process left half written) matches neither, as a
         * search with the label in its template would not have matched it */
        if (len < 0)
            continue;
        label[len] = '\0';
        which = strcmp(label, la) == 0 ? 0 : strcmp(label, lb) == 0 ? 1 : -1;
        if (which < 0)
            continue;
        w = is_where(t, h[i], where == KC_WHERE_TRUSTED ? KC_WHERE_PUBLIC : where);
        if (w < 0) {
            r = kc_error_set(err, KC_TOKEN,
                             "vault '%s' did not say whether an object is private (the token "
                             "failed, perhaps while another process wrote it); run the "
                             "command again",
                             t->info.label);
            goto cleanup;
        }
        if (!w) {
            if (which == 0 && others_a != NULL)
                (*others_a)++;
            continue;
        }
        o = &v[which][got[which]++];
        o->handle = h[i];
        memcpy(o->label, label, (size_t)len + 1);
        r = kc_p11_get_alloc(t, h[i], CKA_VALUE, "value of a data object", &o->value, &o->len, err);
        if (r != KC_OK)
            goto cleanup;
    }
    *a = v[0];
    *na = got[0];
    *b = v[1];
    *nb = got[1];
    v[0] = v[1] = NULL;
cleanup:
    kc_p11_data_objs_free(v[0], got[0]);
    kc_p11_data_objs_free(v[1], got[1]);
    free(h);
    return r;
}

kc_rc kc_tok_find_data_two(kc_tok *t, const char *application, const char *la, const char *lb,
                           kc_where where, kc_data_obj **a, size_t *na, size_t *others_a,
                           kc_data_obj **b, size_t *nb, kc_error *err)
{
    kc_rc r;

    /* labels the one search could not tell apart: a search each */
    if (strlen(la) >= sizeof(((kc_data_obj *)NULL)->label) - 1 ||
        strlen(lb) >= sizeof(((kc_data_obj *)NULL)->label) - 1) {
        *b = NULL;
        *nb = 0;
        r = kc_tok_find_data(t, application, la, where, a, na, others_a, err);
        if (r == KC_OK)
            r = kc_tok_find_data(t, application, lb, where, b, nb, NULL, err);
        if (r != KC_OK) {
            kc_p11_data_objs_free(*a, *na);
            *a = NULL;
            *na = 0;
        }
        return r;
    }
    r = find_data_two_once(t, application, la, lb, where, a, na, others_a, b, nb, err);
    /* as kc_tok_find_data: one another process destroyed between the
     * search and reading it is gone from the next search */
    if (r != KC_OK && (err->rv == CKR_OBJECT_HANDLE_INVALID || err->rv == CKR_GENERAL_ERROR ||
                       err->rv == CKR_FUNCTION_FAILED || (err->rv == 0 && r == KC_TOKEN))) {
        kc_error_clear(err);
        r = find_data_two_once(t, application, la, lb, where, a, na, others_a, b, nb, err);
    }
    return r;
}

kc_rc kc_tok_data_present(kc_tok *t, const char *application, const char *label, kc_obj obj,
                          int *present, kc_error *err)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ATTRIBUTE tmpl[] = {
        ATTR(CKA_CLASS, &cls, sizeof(cls)),
        ATTR(CKA_APPLICATION, application, strlen(application)),
        ATTR(CKA_LABEL, label, strlen(label)),
    };
    CK_OBJECT_HANDLE *h = NULL;
    size_t count = 0, i;
    /* the handles alone: asking each whether it is private (find_where)
     * fails on one another process is destroying */
    kc_rc r = kc_p11_find_all(t, tmpl, 3, &h, &count, err);

    *present = 0;
    for (i = 0; r == KC_OK && i < count; i++)
        if (h[i] == obj)
            *present = 1;
    free(h);
    /* SoftHSM 2.6.1 under parallel writers now and then leaves an object
     * that is there out of a search (test_misuse "writers on many hosts"):
     * gone only when the object itself says so */
    if (r == KC_OK && !*present) {
        CK_OBJECT_CLASS got = 0;
        CK_ATTRIBUTE a = ATTR(CKA_CLASS, &got, sizeof(got));

        *present = t->f->C_GetAttributeValue(t->session, obj, &a, 1) != CKR_OBJECT_HANDLE_INVALID;
    }
    return r;
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
