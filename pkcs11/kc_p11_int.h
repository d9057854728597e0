/* Internal to pkcs11/: the structures behind the opaque handles. */
#ifndef KC_P11_INT_H
#define KC_P11_INT_H

#include "kc_p11.h"

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

struct kc_p11 {
    CK_FUNCTION_LIST **modules; /* NULL-terminated, as p11-kit gave them */
    CK_FUNCTION_LIST **calls;   /* the same, or fault-injecting copies */
    int from_registry;          /* loaded with p11_kit_modules_load_and_initialize */
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
    kc_tok_info info;
};

/* Records a failed C_* call: the project code follows from rv. Returns it. */
kc_rc kc_p11_fail(kc_error *err, const char *func, CK_RV rv, const char *fmt, ...) KC_PRINTF(4, 5);
kc_rc kc_p11_rv_code(CK_RV rv);
int kc_p11_rv_from_name(const char *name, CK_RV *rv);

/* A copy of f with the armed function replaced, or f itself when nothing is
 * armed for it. kc_p11_fault_release frees what kc_p11_fault_wrap made. */
CK_FUNCTION_LIST *kc_p11_fault_wrap(CK_FUNCTION_LIST *f);
void kc_p11_fault_release(CK_FUNCTION_LIST *wrapped, CK_FUNCTION_LIST *orig);

/* Opens the session if needed (R/W, serial). */
kc_rc kc_tok_session(kc_tok *t, kc_error *err) KC_MUST_CHECK;

/* Copies a blank-padded PKCS#11 string into a NUL-terminated C string. */
void kc_p11_copy_padded(char *dst, size_t dst_len, const unsigned char *src, size_t src_len);

#endif
