/* What keycustody can do on a module, feature by feature, from what the
 * module answered when probed (kc_p11.h, kc_tok_probe): 'module check'. */
#ifndef KC_MODULE_H
#define KC_MODULE_H

#include "kc_p11.h"

typedef enum kc_support {
    KC_WORKS = 0,
    KC_WORKS_DIFFERENTLY, /* works, otherwise than on SoftHSM: how says why */
    KC_NOT_POSSIBLE,      /* why says what the module lacks */
    KC_NOT_ASKED,         /* the probe could not ask (no PIN): why says what */
} kc_support;

typedef struct kc_feature {
    const char *name; /* "vault", "hsm keys", "wrap/unwrap RSA-OAEP SHA-256", ... */
    kc_support support;
    char why[320];
} kc_feature;

#define KC_FEATURES_MAX 12

/* The features, in a fixed order, judged from p. */
KC_EXPORT size_t kc_module_features(const kc_probe *p, kc_feature out[KC_FEATURES_MAX]);

/* "works", "works differently", "not possible", "not asked". */
KC_EXPORT const char *kc_support_name(kc_support s);

#endif
