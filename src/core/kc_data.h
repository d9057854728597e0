/* Scopes and their data. A scope (tenant, mailbox:ID, geo:CODE) has a scope
 * key (AES-256) wrapped with AES key wrap with padding (RFC 5649) by the DEP
 * key of the DEP in force when it was made. Each item is sealed with
 * AES-256-GCM under a key of its own, which the scope key wraps; the scope,
 * the item's name, the DEP id and the DEP key generation are bound as
 * associated data, so an item moved to another scope or name does not open.
 *
 * A session keeps each DEP key it unwraps (locked memory, wiped on close),
 * so many items cost one RSA unwrap, not one each. */
#ifndef KC_DATA_H
#define KC_DATA_H

#include "kc_dep.h"

#define KC_DATA_MAX (64u * 1024 * 1024) /* largest item */

typedef struct kc_data_session kc_data_session;

/* flags: KC_DEP_USE_AVAILABILITY to allow the availability key. Warnings
 * (a vault skipped while unwrapping) go to warn when it is not NULL. */
KC_EXPORT kc_rc kc_data_open(kc_ctx *ctx, kc_store *st, const char *principal, unsigned flags,
                             void (*warn)(void *arg, const char *msg), void *warn_arg,
                             kc_data_session **out, kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_data_close(kc_data_session *s);

/* Stores (or replaces) item name in scope. The scope gets its key on first
 * use, under its effective DEP (KC_NOT_FOUND when it has none). */
KC_EXPORT kc_rc kc_data_put(kc_data_session *s, const char *scope, const char *name,
                            const unsigned char *data, size_t len, kc_error *err) KC_MUST_CHECK;

/* Reads item name of scope into a new secret (the caller frees it). */
KC_EXPORT kc_rc kc_data_get(kc_data_session *s, const char *scope, const char *name,
                            kc_secret **out, kc_error *err) KC_MUST_CHECK;

/* The size of a scope key wrapped by its DEP key (RFC 5649 of 32 bytes). */
#define KC_DATA_WRAPPED_BYTES 40

/* The scope's key from its row (its DEP, generation and wrapped key, read
 * already by a re-wrap batch, in the caller's transaction) wrapped under
 * the DEP key of to_id at to_gen, in out; nothing is written. */
KC_EXPORT kc_rc kc_data_rewrap_row(kc_data_session *s, const char *scope, const char *from_id,
                                   long from_gen, const unsigned char *wrapped,
                                   size_t wrapped_len, const char *to_id, long to_gen,
                                   unsigned char out[KC_DATA_WRAPPED_BYTES],
                                   kc_error *err) KC_MUST_CHECK;

/* An item's header as stored: what opens it, and what it is bound to. */
typedef struct kc_item_header {
    unsigned char nonce[12], tag[16];
    long generation;               /* of the DEP key it was sealed under (>= 1) */
    char dep_id[37];               /* that DEP (a GUID) */
    unsigned char wrapped_key[40]; /* the item key under the scope key (RFC 5649) */
} kc_item_header;

/* Reads a stored header; KC_INTEGRITY for anything but a well-formed one
 * (the store's bytes are input like any other). */
KC_EXPORT kc_rc kc_data_item_parse(const unsigned char *buf, size_t len, kc_item_header *out,
                                   kc_error *err) KC_MUST_CHECK;

/* How many DEP keys the session has unwrapped (RSA operations). */
KC_EXPORT size_t kc_data_unwraps(const kc_data_session *s);

#endif
