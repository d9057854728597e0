/* Secret buffers and PIN sources.
 *
 * A PIN or unwrapped key byte lives only in a kc_secret: OpenSSL's secure
 * heap (one locked arena, kept out of core dumps) where it fits, else heap
 * memory locked against swapping (best effort); wiped before it is released. PINs come from "env:NAME" or "file:PATH" sources here; the no-echo
 * prompt is the command-line front end's business. */
#ifndef KC_SECRET_H
#define KC_SECRET_H

#include "kc_error.h"

#include <stddef.h>

typedef struct kc_secret {
    unsigned char *data; /* len bytes of secret, then a NUL so PINs read as C strings */
    size_t len;
    size_t cap; /* usable bytes, excluding the trailing NUL */
} kc_secret;

/* Longest secret a PIN source may hold; PKCS#11 PINs on SoftHSM are 4..255. */
#define KC_SECRET_PIN_MAX 255

/* Allocates a zeroed secret of capacity cap (len 0). NULL when out of memory. */
KC_EXPORT kc_secret *kc_secret_new(size_t cap);

/* A secret holding a copy of len bytes at p. NULL when out of memory. */
KC_EXPORT kc_secret *kc_secret_dup(const void *p, size_t len);

/* Whether s lives in the locked pool (OpenSSL's secure heap), for tests. */
KC_EXPORT int kc_secret_is_locked_pool(const kc_secret *s);

/* Wipes and releases; NULL-safe. */
KC_EXPORT void kc_secret_free(kc_secret *s);

/* Whether source is syntactically a PIN source this module reads
 * ("env:NAME" or "file:PATH"). */
KC_EXPORT int kc_secret_source_is_valid(const char *source);

/* The source a list of "VAULT=SOURCE" and bare "SOURCE" entries (as
 * --pin-source takes them) gives vault: its own, else the bare one; NULL
 * for none. *ambiguous is set when there are several bare ones. */
KC_EXPORT const char *kc_secret_source_for(const char *const *list, size_t n, const char *vault,
                                           int *ambiguous);

/* Reads a PIN from source. "file:" sources are refused unless the file is a
 * regular file (not a symlink), owned by the caller and not readable or
 * writable by group or others. Trailing CR/LF is dropped. An empty PIN is an
 * error. On success *out is a new secret the caller frees. */
KC_EXPORT kc_rc kc_secret_from_source(const char *source, kc_secret **out,
                                      kc_error *err) KC_MUST_CHECK;

/* Reads a file of 1..max bytes into a new secret (no mode requirement: for
 * secrets the user hands to wrap). */
KC_EXPORT kc_rc kc_secret_read_file(const char *path, size_t max, kc_secret **out,
                                    kc_error *err) KC_MUST_CHECK;

/* Turns off core dumps and ptrace attach for this process, so a crash cannot
 * write PINs or key bytes to disk. Best effort; returns 0 on success. */
KC_EXPORT int kc_secret_harden_process(void);

#endif
