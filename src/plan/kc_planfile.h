/* Saved plans (policy plan --out PLAN, policy apply PLAN): one custodian
 * plans and reviews, another applies exactly that. The file is JSON
 * (docs/layout.md): a format marker and version, the layout as planned (its
 * bytes, path and SHA-256), what the plan was made against (a digest per
 * vault, one of the service store rows the DEP part read) and the actions as
 * kc_plan_json gives them. It holds no PIN and no key material: the
 * layout's pin: entries are sources (env:NAME, file:PATH), never values.
 * A saved plan is not signed: it is believed only from a file that is the
 * caller's and nobody else can write, and apply plans again from the
 * embedded layout and refuses when anything differs. */
#ifndef KC_PLANFILE_H
#define KC_PLANFILE_H

#include "kc_plan.h"

#define KC_PLANFILE_FORMAT "keycustody-plan"
#define KC_PLANFILE_VERSION 1
#define KC_PLANFILE_MAX (4u << 20)

typedef struct kc_planfile {
    char layout_path[1024];
    unsigned char *layout; /* the layout's bytes, NUL-terminated */
    size_t layout_len;
    char layout_sha256[65];
    int allow_delete;
    kc_plan_seen *seen;
    size_t nseen;
    int store_read;
    char store[1024];
    char store_digest[65];
    char created[21];
    struct json_t *plan; /* {"actions", "add", ...} as kc_plan_json */
} kc_planfile;

/* Whether buf is a saved plan, by its content: a JSON object that opens
 * with the format marker (what kc_planfile_encode writes first). A layout
 * is YAML and never starts so. */
KC_EXPORT int kc_planfile_is(const unsigned char *buf, size_t len);

/* Reads path (a regular file of at most KC_PLANFILE_MAX bytes). When it is
 * a saved plan (*is_plan), the file must be the caller's, not a symbolic
 * link, and writable by nobody else: else KC_DENIED. */
KC_EXPORT kc_rc kc_planfile_read(const char *path, unsigned char **buf, size_t *len, int *is_plan,
                                 kc_error *err) KC_MUST_CHECK;

/* The saved plan of p, made from the layout bytes read at layout_path
 * with --allow-delete or not, against store (NULL when the DEP part read
 * none). *out is the file's text (caller frees). */
KC_EXPORT kc_rc kc_planfile_encode(const kc_plan *p, const char *layout_path,
                                   const unsigned char *layout, size_t layout_len, int allow_delete,
                                   const char *store, char **out, kc_error *err) KC_MUST_CHECK;

/* Parses a saved plan read from path. A damaged or truncated file, another
 * format version, or an embedded layout that does not match its SHA-256:
 * KC_LAYOUT, saying which. */
KC_EXPORT kc_rc kc_planfile_decode(const char *path, const unsigned char *buf, size_t len,
                                   kc_planfile **out, kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_planfile_free(kc_planfile *f);

/* Compares the saved plan with now, the plan made again from its layout
 * (under apply's lock), store the service store now used (NULL: none).
 * KC_CONFLICT naming each vault whose digest moved, the store, or the
 * actions that differ; KC_OK when the saved actions are exactly now's. */
KC_EXPORT kc_rc kc_planfile_compare(const kc_planfile *f, const kc_plan *now, const char *store,
                                    kc_error *err) KC_MUST_CHECK;

#endif
