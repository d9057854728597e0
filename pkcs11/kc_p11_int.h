/* Internal to pkcs11/: the structures behind the opaque handles. */
#ifndef KC_P11_INT_H
#define KC_P11_INT_H

#include "kc_p11.h"

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

/* PKCS#11 3.0's RFC 5649 mechanism (NSS softokn's), not in p11-kit 0.24.1 */
#ifndef CKM_AES_KEY_WRAP_KWP
#define CKM_AES_KEY_WRAP_KWP 0x0000210BUL
#endif

#define KC_P11_UNREACHABLE ((size_t)-1)

struct kc_p11 {
    CK_FUNCTION_LIST **modules; /* NULL-terminated, as p11-kit gave them */
    CK_FUNCTION_LIST **calls;   /* the same, or fault-injecting copies */
    int from_registry;          /* loaded with p11_kit_modules_load_and_initialize */
    struct {
        char label[33];
        size_t module;  /* index into modules; KC_P11_UNREACHABLE when it would not load */
        char why[400];  /* then, why (a p11-kit server not answering, say) */
    } binds[KC_P11_BINDS_MAX];
    size_t nbinds;
    /* what each module loaded by kc_p11_load_set is (its file and options,
     * or a server's address), so that one asked for twice is loaded once */
    char keys[KC_P11_MODULES_MAX][1200];
    /* started with options of a module file (or a server's client): not
     * started again by p11-kit's default arguments (reload_module) */
    int own_init[KC_P11_MODULES_MAX];
    kc_tok **cache;             /* tokens handed out by kc_p11_token, owned here */
    size_t ncache;
};

struct kc_tok {
    kc_p11 *p;
    CK_FUNCTION_LIST *f; /* what we call through */
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE session;
    int has_session;
    int logged_in;
    int oaep_sha256; /* -1 unknown, 0 refused by the module, 1 accepted */
    /* whether the module takes CKA_COPYABLE, CKA_UNWRAP_TEMPLATE in a
     * template: -1 not asked yet (kc_p11_takes_attr) */
    int takes_copyable, takes_unwrap_template;
    kc_secret *pin;  /* while logged in: to log in again on a new session (locked, wiped) */
    int recoveries;  /* sessions lost and replaced: at most one per handle */
    kc_tok_info info;
};

/* Records a failed C_* call: the project code follows from rv. Returns it. */
kc_rc kc_p11_fail(kc_error *err, const char *func, CK_RV rv, const char *fmt, ...) KC_PRINTF(4, 5);
kc_rc kc_p11_rv_code(CK_RV rv);
int kc_p11_rv_broken(CK_RV rv);
/* The SO PIN a module's free tokens come with, where the module's own
 * documentation gives one (openCryptoki's); NULL elsewhere. */
const char *kc_p11_factory_so_pin(const kc_tok_info *ti);
int kc_p11_rv_from_name(const char *name, CK_RV *rv);

/* A copy of f with the armed function replaced, or f itself when nothing is
 * armed for it. kc_p11_fault_release frees what kc_p11_fault_wrap made. */
CK_FUNCTION_LIST *kc_p11_fault_wrap(CK_FUNCTION_LIST *f);
void kc_p11_fault_release(CK_FUNCTION_LIST *wrapped, CK_FUNCTION_LIST *orig);

/* Opens the session if needed (R/W, serial). */
kc_rc kc_tok_session(kc_tok *t, kc_error *err) KC_MUST_CHECK;

/* Whether rv says the session is gone (closed or its handle invalid). */
int kc_tok_session_lost(CK_RV rv);
/* Replaces a lost session: closes it, opens a new one and, when the
 * handle was logged in, logs in again with the PIN it used. Once per
 * handle: a session that keeps getting lost is a token to report, not to
 * retry. 1 when a new session is ready. */
int kc_tok_recover(kc_tok *t);

/* After a failed call on a handle: when the session was replaced during
 * this operation, says so in the hint (the handle died with it). */
void kc_tok_explain_lost(const kc_tok *t, CK_RV rv, kc_error *err);

/* Runs a C_* call that uses t->session; when the module answers that the
 * session is gone, replaces the session (kc_tok_recover) and runs the call
 * once more. Only for calls that may be repeated and hold no handle the lost
 * session made invalid: a new session object is gone with the old session,
 * and SoftHSM drops the handles of private objects when the login ends, so
 * a call on a handle found before goes no further than reporting the error
 * (the recovery still serves the next search). */
/* SoftHSM 2.6.1 answers C_GetTokenInfo and C_Login with CKR_GENERAL_ERROR
 * while other processes rewrite the token's files (test_misuse "writers on
 * many hosts" meets it under nine writers on two cores); asked again a
 * moment later, it answers. Whether to ask again after rv: pauses first,
 * longer each time, about 2 s in all. */
int kc_p11_busy(CK_RV rv, int *tries);

#define KC_TOK_CALL(t, rv, call)                                                                   \
    do {                                                                                           \
        (rv) = (call);                                                                             \
        if (kc_tok_session_lost(rv) && kc_tok_recover(t))                                          \
            (rv) = (call);                                                                         \
    } while (0)

/* Template helpers shared by the object files. */
extern CK_BBOOL kc_p11_true, kc_p11_false;
#define ATTR(t, p, n)                                                                              \
    {                                                                                              \
        (t), (void *)(p), (n)                                                                      \
    }
#define ATTR_BOOL(t, b)                                                                            \
    {                                                                                              \
        (t), (b) ? &kc_p11_true : &kc_p11_false, sizeof(CK_BBOOL)                                  \
    }

/* Every handle matching tmpl (n attributes); *out is freed by the caller. */
kc_rc kc_p11_find_all(kc_tok *t, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE **out,
                      size_t *count, kc_error *err) KC_MUST_CHECK;
/* One attribute into buf; its length, or -1 when the token will not say. */
long kc_p11_get_attr(kc_tok *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, void *buf, size_t cap);
int kc_p11_get_ulong(kc_tok *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, CK_ULONG *out);
/* A variable-length attribute into a new buffer (with a trailing NUL). */
kc_rc kc_p11_get_alloc(kc_tok *t, CK_OBJECT_HANDLE h, CK_ATTRIBUTE_TYPE type, const char *what,
                       unsigned char **out, size_t *len, kc_error *err) KC_MUST_CHECK;
/* "YYYYMMDD" -> CK_DATE; 0 when s is not such a string. */
int kc_p11_date(CK_DATE *d, const char *s);
/* After a failed object creation: destroys key objects that were not in
 * before[] and carry label or none. */
void kc_p11_remove_leftovers(kc_tok *t, const char *label, const CK_OBJECT_HANDLE *before,
                             size_t nbefore);
/* Whether the module takes attribute a in an object's template, asked once
 * per handle (*cache) on a public session AES key. Only "the module does
 * not know the attribute" (CKR_ATTRIBUTE_TYPE_INVALID) counts as no;
 * *asked (if not NULL) is what the module answered, CKR_OK if cached. */
int kc_p11_takes_attr(kc_tok *t, const CK_ATTRIBUTE *a, int *cache, CK_RV *asked);

/* The RSA private-key template for spec into tmpl (at least 16 entries),
 * *n the count; what the module does not take is left out (CKA_COPYABLE on
 * openCryptoki 3.8.1). kt and cls must outlive the call that uses tmpl. */
kc_rc kc_p11_rsa_private_template(kc_tok *t, const kc_rsa_spec *spec, CK_ATTRIBUTE *tmpl,
                                  CK_OBJECT_CLASS *cls, CK_KEY_TYPE *kt, CK_ULONG *n,
                                  kc_error *err) KC_MUST_CHECK;

/* Copies a blank-padded PKCS#11 string into a NUL-terminated C string. */
void kc_p11_copy_padded(char *dst, size_t dst_len, const unsigned char *src, size_t src_len);

#endif
