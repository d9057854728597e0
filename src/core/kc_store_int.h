/* Internal to the core modules that keep records in the service store. */
#ifndef KC_STORE_INT_H
#define KC_STORE_INT_H

#include "kc_secret.h"
#include "kc_store.h"

#include "kc_db.h"

#include <libpq-fe.h>
#include <sqlite3.h>

struct kc_store {
    sqlite3 *db;  /* SQLite, or */
    PGconn *pg;   /* PostgreSQL */
    kc_q *kept;   /* statements prepared once (kc_db.c) */
    long changes; /* rows the last statement changed */
    unsigned pg_names;
    char pg_err[512], pg_state[6];
    char pg_schema[64]; /* PostgreSQL: the schema the store is in */
    char shown[256];    /* the store as messages name it (no password) */
    int schema;
    /* The row key (kc_store_authenticate): every row that decides what is
     * wrapped or unwrapped carries HMAC-SHA256 under it. NULL until then. */
    kc_secret *mac;
    char service_vault[64]; /* the vault it comes from */
    int unchecked_ok;       /* kc_store_allow_unchecked */
};

/* --- row authentication --- *
 * A row's MAC covers the table name and each covered column in order, each
 * as a type byte and its bytes (NULL 'n'; integer 'i' + 8 bytes big-endian;
 * text 't' and blob 'b' + 4-byte length + bytes), so a value moved between
 * columns, a text stored where an integer was, or NULL turned into '' all
 * change it. Writers give C values; readers give the result columns. */
typedef struct kc_row {
    unsigned char *buf;
    size_t len, cap;
    int oom;
} kc_row;

void kc_row_init(kc_row *r, const char *table);
void kc_row_null(kc_row *r);
void kc_row_int(kc_row *r, long long v);
void kc_row_text(kc_row *r, const char *s);     /* NULL for NULL */
void kc_row_text_opt(kc_row *r, const char *s); /* "" is written (and covered) as NULL */
void kc_row_blob(kc_row *r, const void *p, size_t n);
void kc_row_col(kc_row *r, kc_q *s, int col);
void kc_row_cols(kc_row *r, kc_q *s, int first, int n);

/* The MAC of the row under the store's row key; frees the row. KC_USAGE
 * when the store was not authenticated. */
kc_rc kc_row_seal(kc_store *st, kc_row *r, unsigned char mac[32], kc_error *err) KC_MUST_CHECK;

/* Compares the row's MAC with the one in column mac_col of s; frees the
 * row. A missing or different MAC is KC_INTEGRITY naming what; without the
 * row key it is KC_USAGE, unless the store allows unchecked reads (then
 * KC_OK: the caller only shows the row). */
kc_rc kc_row_check(kc_store *st, kc_row *r, kc_q *s, int mac_col, const char *what,
                   kc_error *err) KC_MUST_CHECK;

/* Compares the store's schema (a) with the reference (b), each a query of
 * (type, name, definition) rows in (type, name) order (kc_store.c). */
/* The order both listings of a schema are in, which the comparison walks:
 * tables (PostgreSQL: relations) first, then by type and name, bytewise
 * (SQLite's BINARY, PostgreSQL's "C"). */
#define KC_SCHEMA_ORDER_SQLITE "type NOT IN ('table', 'relation'), type, name"
#define KC_SCHEMA_ORDER_PG                                                                         \
    "type NOT IN ('table', 'relation'), type COLLATE \"C\", name COLLATE \"C\""
kc_rc kc_store_schema_compare(kc_store *s, kc_q *a, kc_q *b, kc_error *err) KC_MUST_CHECK;

/* --- PostgreSQL (kc_store_pg.c) --- */
void kc_pg_shown(const char *uri, char *out, size_t cap);
kc_rc kc_pg_open(kc_store *s, const char *uri, kc_error *err) KC_MUST_CHECK;
kc_rc kc_pg_exec(kc_store *s, const char *sql, kc_error *err) KC_MUST_CHECK;
kc_rc kc_pg_begin(kc_store *s, int shared, kc_error *err) KC_MUST_CHECK;
kc_rc kc_pg_commit(kc_store *s, kc_error *err) KC_MUST_CHECK;
kc_rc kc_pg_version(kc_store *s, int *version, kc_error *err) KC_MUST_CHECK;
kc_rc kc_pg_migrate_step(kc_store *s, const char *migration, int to, kc_error *err) KC_MUST_CHECK;
kc_rc kc_pg_check_schema(kc_store *s, const char *const *migrations, int n,
                         kc_error *err) KC_MUST_CHECK;
kc_rc kc_pg_scrub(kc_store *s, kc_error *err) KC_MUST_CHECK;

/* The store's record of its service vault ("" if none). */
kc_rc kc_store_meta_get(kc_store *st, const char *name, char *out, size_t cap,
                        kc_error *err) KC_MUST_CHECK;
kc_rc kc_store_meta_set(kc_store *st, const char *name, const char *value,
                        kc_error *err) KC_MUST_CHECK;

/* Writes scope's assignment to dep_id with its MAC (kc_dep.c). */
kc_rc kc_assignment_write(kc_store *st, const char *scope, const char *dep_id,
                          kc_error *err) KC_MUST_CHECK;

#endif
