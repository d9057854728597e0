/* The service store: one SQLite file (WAL) holding the service side of the
 * arrangement -- DEP records and their wrapped DEP keys, assignments, scopes
 * and wrapped scope keys, stored items, re-wrap progress, purge requests.
 * It never holds a key in clear: keys live on tokens; the store holds
 * wrapped material and metadata.
 *
 * The schema is versioned: each migration runs once, in order, in its own
 * transaction, and the version it reaches is recorded with it, so a store is
 * never left between two versions. A store made by a newer keycustody is
 * refused rather than read wrongly. */
#ifndef KC_STORE_H
#define KC_STORE_H

#include "kc_ctx.h"
#include "kc_error.h"

typedef struct kc_store kc_store;

/* The newest schema this keycustody writes. */
#define KC_STORE_SCHEMA 2

/* Opens (creating, mode 0600) the store at path and brings its schema up to
 * date. KC_INTEGRITY for a file that is not a keycustody store or is from a
 * newer version. */
KC_EXPORT kc_rc kc_store_open(const char *path, kc_store **out, kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_store_close(kc_store *s);

/* The schema version the store is at. */
KC_EXPORT int kc_store_schema(const kc_store *s);

/* A transaction for a multi-row change: begin (IMMEDIATE, so two writers
 * queue rather than deadlock), then commit or roll back. */
KC_EXPORT kc_rc kc_store_begin(kc_store *s, kc_error *err) KC_MUST_CHECK;
KC_EXPORT kc_rc kc_store_commit(kc_store *s, kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_store_rollback(kc_store *s);

/* Runs one SQL statement with no result rows (for the store's own modules
 * and tests). */
KC_EXPORT kc_rc kc_store_exec(kc_store *s, const char *sql, kc_error *err) KC_MUST_CHECK;

/* Empties the write-ahead log into the store file and truncates it, so
 * content deleted with secure_delete (which the store has on) is gone
 * from both files. */
KC_EXPORT kc_rc kc_store_scrub(kc_store *s, kc_error *err) KC_MUST_CHECK;

/* The vault key fingerprints the store pinned, into ctx (kc_ctx_pin_fingerprint). */
KC_EXPORT kc_rc kc_store_pins_load(kc_store *s, kc_ctx *ctx, kc_error *err) KC_MUST_CHECK;
/* Pins vault's fingerprint, unless one is pinned already (the first seen stays). */
KC_EXPORT kc_rc kc_store_pin_record(kc_store *s, const char *vault, const char *fingerprint,
                                    kc_error *err) KC_MUST_CHECK;

/* Counts the rows of a table (tests and status). */
KC_EXPORT kc_rc kc_store_count(kc_store *s, const char *table, long *n,
                               kc_error *err) KC_MUST_CHECK;

#endif
