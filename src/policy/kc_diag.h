/* Diagnostics of the layout checker: each with a stable rule id, a
 * severity, the place in the file, a one-line message and a hint. */
#ifndef KC_DIAG_H
#define KC_DIAG_H

#include "kc_error.h"

#include <stddef.h>

typedef enum kc_severity { KC_SEV_ERROR = 0, KC_SEV_WARNING = 1 } kc_severity;

typedef struct kc_diag {
    char rule[8]; /* "KC012" */
    kc_severity severity;
    int line, col; /* 1-based; 0 when the rule concerns the whole file */
    char msg[512];
    char hint[256];
    size_t seq; /* order of addition, which sorting keeps among equal places */
} kc_diag;

typedef struct kc_diags {
    char file[512];
    kc_diag *v;
    size_t n, cap;
    size_t errors, warnings;
} kc_diags;

KC_EXPORT void kc_diags_init(kc_diags *d, const char *file);
KC_EXPORT void kc_diags_release(kc_diags *d);
/* Adds a diagnostic; hint may be NULL. */
KC_EXPORT void kc_diag_add(kc_diags *d, const char *rule, kc_severity sev, int line, int col,
                           const char *hint, const char *fmt, ...) KC_PRINTF(7, 8);
/* Sorts by line and column, keeping the order of equal places. */
KC_EXPORT void kc_diags_sort(kc_diags *d);

#endif
