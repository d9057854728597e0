/* A strict YAML reader for layout files: libyaml's events into a tree with
 * the line and column of every node and key. Refused, as diagnostics:
 * syntax errors, duplicate keys, anchors and aliases (which could smuggle a
 * duplicate past a reader), more than one document, tags, non-scalar keys,
 * documents over KC_YAML_MAX_BYTES or nested deeper than KC_YAML_MAX_DEPTH.
 * Scalars stay text: the layout reader decides their types. */
#ifndef KC_YAML_H
#define KC_YAML_H

#include "kc_diag.h"

#define KC_YAML_MAX_BYTES (1u << 20)
#define KC_YAML_MAX_DEPTH 16
#define KC_YAML_MAX_NODES 100000

typedef enum kc_ykind { KC_Y_SCALAR = 0, KC_Y_MAP, KC_Y_SEQ } kc_ykind;

typedef struct kc_ynode {
    kc_ykind kind;
    int line, col; /* 1-based */
    char *value;   /* scalar text */
    int plain;     /* a plain (unquoted) scalar */
    size_t n;      /* entries of a map or items of a sequence */
    char **keys;   /* map keys */
    int *key_line, *key_col;
    struct kc_ynode **items; /* map values or sequence items */
} kc_ynode;

/* Parses buf; NULL with diagnostics (KC001-KC006) when it is not a layout's
 * YAML. An empty document gives an empty map. */
KC_EXPORT kc_ynode *kc_yaml_parse(const unsigned char *buf, size_t len, kc_diags *d);
KC_EXPORT void kc_yaml_free(kc_ynode *n);

/* The value of key in a map (NULL when absent); *index receives its entry. */
KC_EXPORT const kc_ynode *kc_yaml_get(const kc_ynode *map, const char *key, size_t *index);

#endif
