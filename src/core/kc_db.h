/* The statements the store's modules run, on either backend: SQLite (the
 * embedded default) or PostgreSQL (libpq). One SQL text serves both: it
 * uses '?' or '?N' for parameters (rewritten to '$N' for PostgreSQL),
 * CAST(?N AS TEXT) where a parameter's type is not otherwise known, and
 * ON CONFLICT for upserts. Integer columns are 64-bit on both.
 *
 * A statement is prepared once per store and kept: kc_q_prepare returns the
 * kept one, reset, for the same SQL text, so a job that runs a statement per
 * scope parses it once. A statement still in use (a nested call running the
 * same SQL) gets a fresh one, freed by kc_q_finish. Values bound are
 * copied. */
#ifndef KC_DB_H
#define KC_DB_H

#include "kc_error.h"

#include <stddef.h>

typedef struct kc_store kc_store;
typedef struct kc_q kc_q;

/* kc_q_prepare's and kc_q_step's results (SQLite's numbers) */
#define KC_Q_OK 0
#define KC_Q_ERROR 1
#define KC_Q_ROW 100
#define KC_Q_DONE 101

/* A column's type (kc_q_type) */
enum { KC_Q_INTEGER = 1, KC_Q_FLOAT = 2, KC_Q_TEXT = 3, KC_Q_BLOB = 4, KC_Q_NULL = 5 };

/* KC_Q_OK and *q, or KC_Q_ERROR (kc_store_errmsg says why). */
int kc_q_prepare(kc_store *st, const char *sql, kc_q **q);
/* Parameters count from 1. A NULL text or blob binds NULL. */
void kc_q_bind_text(kc_q *q, int i, const char *s);
void kc_q_bind_int(kc_q *q, int i, long long v);
void kc_q_bind_blob(kc_q *q, int i, const void *p, size_t n);
void kc_q_bind_null(kc_q *q, int i);
/* KC_Q_ROW for each row, then KC_Q_DONE; KC_Q_ERROR on failure. */
int kc_q_step(kc_q *q);
/* Columns count from 0; valid until the next step or finish. */
int kc_q_type(kc_q *q, int col);
const unsigned char *kc_q_text(kc_q *q, int col); /* NULL for NULL */
long long kc_q_int(kc_q *q, int col);
const void *kc_q_blob(kc_q *q, int col); /* NULL for NULL or empty */
int kc_q_bytes(kc_q *q, int col);
/* The number of parameters q takes. */
int kc_q_param_count(kc_q *q);
/* Done with q: reset and kept, or freed. NULL is ignored. */
void kc_q_finish(kc_q *q);

/* Rows the last INSERT, UPDATE or DELETE changed. */
long kc_store_changes(kc_store *st);
/* The backend's message for the last failure. */
const char *kc_store_errmsg(kc_store *st);
/* 1 when the last failure was a UNIQUE constraint. */
int kc_store_unique_violation(kc_store *st);
/* Whether the last statement failed on PostgreSQL's lock_timeout
 * (SQLSTATE 55P03): a row another session held stayed locked. */
int kc_store_lock_timeout(kc_store *st);
/* Whether it was cancelled as one side of a deadlock (SQLSTATE 40P01). */
int kc_store_deadlock(kc_store *st);
/* SQLite's count of the commits other connections made to the file
 * (PRAGMA data_version): two reads that agree mean none committed between
 * them. -1 on PostgreSQL, or when it cannot be read. */
long long kc_store_data_version(kc_store *st);
/* 1 for a PostgreSQL store. */
int kc_store_is_pg(const kc_store *st);

/* The kept statements' end (kc_store_close). */
void kc_q_free_all(kc_store *st);

#endif
