/* The project's error record and exit-code enum.
 *
 * Every layer reports failure by returning a kc_rc and filling a caller-owned
 * kc_error. The lowest layer that sees a failure says what happened (and, for a
 * PKCS#11 failure, which C_* function and CK_RV); each layer above puts its own
 * context in front with kc_error_prefix(). Nothing below src/cli prints. */
#ifndef KC_ERROR_H
#define KC_ERROR_H

#include <stddef.h>

#define KC_EXPORT __attribute__((visibility("default")))
#define KC_MUST_CHECK __attribute__((warn_unused_result))
#define KC_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Doubles as the process exit code; documented in README.md. Keep stable. */
typedef enum kc_rc {
    KC_OK = 0,
    KC_ERR = 1,       /* any other error */
    KC_USAGE = 2,     /* bad command line */
    KC_LAYOUT = 3,    /* layout file invalid */
    KC_NOT_FOUND = 4, /* token, vault, key or version not found */
    KC_CONFLICT = 5,  /* exists, name reserved, assigned */
    KC_DENIED = 6,    /* login refused, PIN locked, access policy */
    KC_TOKEN = 7,     /* token or module failure */
    KC_INTEGRITY = 8, /* bad MAC, foreign subscription, broken chain */
    KC_CHANGES = 10,  /* policy plan --detailed-exitcode: changes pending */
} kc_rc;

typedef struct kc_error {
    kc_rc code;
    char func[32];    /* failing C_* function, "" when the failure is not PKCS#11 */
    unsigned long rv; /* its CK_RV; meaningful only when func[0] != '\0' */
    char detail[256]; /* "<sentence> (CKR_NAME, 0x..)", filled by the PKCS#11 layer */
    char msg[1024];   /* context chain, outermost first: "cannot x 'a': cannot y" */
    char hint[512];   /* what to do about it; may be empty */
} kc_error;

/* Clears an error record to "no error". */
KC_EXPORT void kc_error_clear(kc_error *err);

/* Sets code and message (replacing any earlier one) and returns code, so that
 * `return kc_error_set(err, KC_NOT_FOUND, "...")` reads naturally. */
KC_EXPORT kc_rc kc_error_set(kc_error *err, kc_rc code, const char *fmt, ...) KC_PRINTF(3, 4);

/* Puts "context: " in front of the message; keeps code, func and rv. Returns
 * err->code so it can end a failing path. */
KC_EXPORT kc_rc kc_error_prefix(kc_error *err, const char *fmt, ...) KC_PRINTF(2, 3);

/* Sets the hint (replacing any earlier one). */
KC_EXPORT void kc_error_hint(kc_error *err, const char *fmt, ...) KC_PRINTF(2, 3);

/* Formats the one-line user message without the "error: " lead-in:
 * "<msg>: C_Func: <sentence> (CKR_NAME, 0x...)" for PKCS#11 failures. */
KC_EXPORT void kc_error_format(const kc_error *err, char *buf, size_t len);

/* The name of an exit code, e.g. "not found". */
KC_EXPORT const char *kc_rc_name(kc_rc rc);

#endif
