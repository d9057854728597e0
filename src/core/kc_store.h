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
#define KC_STORE_SCHEMA 3

/* Opens (creating, mode 0600) the store at path and brings its schema up to
 * date. KC_INTEGRITY for a file that is not a keycustody store or is from a
 * newer version. */
KC_EXPORT kc_rc kc_store_open(const char *path, kc_store **out, kc_error *err) KC_MUST_CHECK;
/* 1 when path is a PostgreSQL URI (postgresql:// or postgres://): the
 * store is then kept in that database (libpq), in the schema its
 * search_path names first, with the same schema, migrations and row MACs. */
KC_EXPORT int kc_store_is_uri(const char *path);
KC_EXPORT void kc_store_close(kc_store *s);

/* The schema version the store is at. */
KC_EXPORT int kc_store_schema(const kc_store *s);

/* A transaction for a multi-row change: begin (IMMEDIATE, so two writers
 * queue rather than deadlock), then commit or roll back. */
KC_EXPORT kc_rc kc_store_begin(kc_store *s, kc_error *err) KC_MUST_CHECK;
/* A transaction that other re-wrap workers may run beside (PostgreSQL:
 * they claim rows with FOR UPDATE SKIP LOCKED); on SQLite kc_store_begin. */
KC_EXPORT kc_rc kc_store_begin_shared(kc_store *s, kc_error *err) KC_MUST_CHECK;
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

/* --- authenticated rows ---
 * Every row whose content decides what is wrapped or unwrapped (a DEP, its
 * wrapped keys per generation and slot, an assignment, a break-glass use,
 * the re-wrap job) carries an HMAC-SHA256 under the row key. The row key is
 * HMAC-SHA256 on the token, under a private, sensitive, never-extractable
 * key of the store's service vault ("keycustody-store-key"), of a fixed
 * label: so only a holder of that vault's PIN can make or check a row, and
 * a row written with sqlite3 is refused (KC_INTEGRITY) before it is used.
 *
 * kc_store_authenticate opens the store's service vault (recorded in the
 * store at the first DEP; service_vault, when given, must be it), logs in
 * and derives the row key; with create, on a store that records none, it
 * makes the key on service_vault and records the vault. A store with no
 * service vault and no DEP needs nothing: KC_OK without a row key. */
KC_EXPORT kc_rc kc_store_authenticate(kc_ctx *ctx, kc_store *st, const char *service_vault,
                                      int create, kc_error *err) KC_MUST_CHECK;

/* Rows are then shown without their MAC checked (dep list, dep show,
 * status): nothing read this way is used to wrap or unwrap. */
KC_EXPORT void kc_store_allow_unchecked(kc_store *st);
/* 1 once the row key is loaded. */
KC_EXPORT int kc_store_checked(const kc_store *st);

/* The service vault the store records ("" if none yet). */
KC_EXPORT kc_rc kc_store_service_vault(kc_store *st, char out[64], kc_error *err) KC_MUST_CHECK;

/* Counts the rows of a table (tests and status). */
KC_EXPORT kc_rc kc_store_count(kc_store *s, const char *table, long *n,
                               kc_error *err) KC_MUST_CHECK;

#endif
