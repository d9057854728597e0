/* Statements on SQLite or PostgreSQL (kc_db.h). */
#include "kc_db.h"
#include "kc_store_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* PostgreSQL type OIDs (server/catalog/pg_type_d.h, stable since 7.x) */
#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_FLOAT4 700
#define OID_FLOAT8 701

typedef struct pg_param {
    char *val; /* NULL: SQL NULL */
    int len, fmt;
    Oid type;
} pg_param;

struct kc_q {
    kc_store *st;
    kc_q *next; /* the store's kept statements */
    char *sql;
    const char *from; /* the caller's text it was prepared from */
    int kept, busy;
    sqlite3_stmt *lite;
    /* PostgreSQL: the text with $N, its server-side name once prepared */
    char *pgsql, name[16];
    int nparams, prepared;
    pg_param *params;
    PGresult *res;
    int row, nrows, ran;
    char num[24]; /* an integer column read as text */
};

static void pg_note(kc_store *st, const char *msg)
{
    size_t n;

    snprintf(st->pg_err, sizeof(st->pg_err), "%s", msg ? msg : "out of memory");
    n = strlen(st->pg_err);
    while (n > 0 && (st->pg_err[n - 1] == '\n' || st->pg_err[n - 1] == ' '))
        st->pg_err[--n] = '\0';
}

/* '?' and '?N' outside quotes become '$N'; *n is the highest N. Each '?'
 * grows to at most '$' and 10 digits. */
static char *pg_text(const char *sql, int *n)
{
    size_t cap = strlen(sql) * 11 + 1, o = 0;
    char *out = malloc(cap), *end, quote = 0;
    long v, next = 0;

    *n = 0;
    if (out == NULL)
        return NULL;
    while (*sql != '\0') {
        if (quote == 0 && *sql == '?') {
            v = isdigit((unsigned char)sql[1]) ? strtol(sql + 1, &end, 10) : ++next;
            sql = isdigit((unsigned char)sql[1]) ? end : sql + 1;
            if (v > next)
                next = v;
            o += (size_t)snprintf(out + o, cap - o, "$%ld", v);
            continue;
        }
        if (quote != 0 && *sql == quote)
            quote = 0;
        else if (quote == 0 && (*sql == '\'' || *sql == '"'))
            quote = *sql;
        out[o++] = *sql++;
    }
    out[o] = '\0';
    *n = (int)next;
    return out;
}

static kc_q *q_new(kc_store *st, const char *sql)
{
    kc_q *q = calloc(1, sizeof(*q));

    if (q == NULL)
        return NULL;
    q->st = st;
    q->from = sql;
    q->sql = strdup(sql);
    if (q->sql == NULL)
        goto fail;
    if (st->pg == NULL) {
        if (sqlite3_prepare_v2(st->db, sql, -1, &q->lite, NULL) != SQLITE_OK)
            goto fail;
        return q;
    }
    q->pgsql = pg_text(sql, &q->nparams);
    q->params = calloc((size_t)q->nparams + 1, sizeof(*q->params));
    if (q->pgsql == NULL || q->params == NULL) {
        pg_note(st, NULL);
        goto fail;
    }
    return q;
fail:
    kc_q_finish(q);
    return NULL;
}

static void pg_clear(kc_q *q)
{
    int i;

    PQclear(q->res);
    q->res = NULL;
    q->row = q->nrows = q->ran = 0;
    for (i = 0; q->params != NULL && i < q->nparams; i++) {
        free(q->params[i].val);
        q->params[i].val = NULL;
    }
}

static void q_free(kc_q *q)
{
    if (q == NULL)
        return;
    sqlite3_finalize(q->lite);
    pg_clear(q);
    if (q->prepared && q->st->pg != NULL) {
        char sql[32];

        snprintf(sql, sizeof(sql), "DEALLOCATE %s", q->name);
        PQclear(PQexec(q->st->pg, sql));
    }
    free(q->params);
    free(q->pgsql);
    free(q->sql);
    free(q);
}

int kc_q_prepare(kc_store *st, const char *sql, kc_q **out)
{
    kc_q *q;

    /* the same literal first (the usual case), then the same text; a
     * caller's buffer may hold another text at the same address */
    for (q = st->kept; q != NULL; q = q->next)
        if (!q->busy && q->from == sql && strcmp(q->sql, sql) == 0)
            break;
    for (kc_q *k = st->kept; q == NULL && k != NULL; k = k->next)
        if (!k->busy && strcmp(k->sql, sql) == 0)
            q = k;
    if (q == NULL) {
        q = q_new(st, sql);
        if (q == NULL)
            return KC_Q_ERROR;
        /* kept unless the same text is in use already */
        for (kc_q *k = st->kept; k != NULL; k = k->next)
            if (strcmp(k->sql, sql) == 0)
                goto fresh;
        q->kept = 1;
        q->next = st->kept;
        st->kept = q;
    }
fresh:
    q->busy = 1;
    *out = q;
    return KC_Q_OK;
}

void kc_q_finish(kc_q *q)
{
    if (q == NULL)
        return;
    if (!q->kept) {
        q_free(q);
        return;
    }
    if (q->lite != NULL) {
        sqlite3_reset(q->lite);
        sqlite3_clear_bindings(q->lite);
    }
    pg_clear(q);
    q->busy = 0;
}

void kc_q_free_all(kc_store *st)
{
    kc_q *q, *next;

    for (q = st->kept; q != NULL; q = next) {
        next = q->next;
        q_free(q);
    }
    st->kept = NULL;
}

/* --- binding --- */

static void pg_bind(kc_q *q, int i, const void *p, size_t n, int fmt, Oid type)
{
    pg_param *v;

    if (i < 1 || i > q->nparams)
        return;
    v = &q->params[i - 1];
    free(v->val);
    v->val = NULL;
    v->len = 0;
    v->fmt = fmt;
    if (v->type == 0)
        v->type = type;
    if (p == NULL)
        return;
    v->val = malloc(n + 1);
    if (v->val == NULL)
        return;
    if (n > 0)
        memcpy(v->val, p, n);
    v->val[n] = '\0';
    v->len = (int)n;
}

void kc_q_bind_text(kc_q *q, int i, const char *s)
{
    if (q->lite != NULL)
        sqlite3_bind_text(q->lite, i, s, -1, SQLITE_TRANSIENT);
    else
        pg_bind(q, i, s, s ? strlen(s) : 0, 0, 0);
}

void kc_q_bind_int(kc_q *q, int i, long long v)
{
    char num[24];

    if (q->lite != NULL) {
        sqlite3_bind_int64(q->lite, i, v);
        return;
    }
    snprintf(num, sizeof(num), "%lld", v);
    pg_bind(q, i, num, strlen(num), 0, OID_INT8);
}

void kc_q_bind_blob(kc_q *q, int i, const void *p, size_t n)
{
    static const unsigned char empty;

    /* an empty blob (p != NULL, n == 0) is still a blob, not NULL */
    if (q->lite != NULL) {
        if (p == NULL)
            sqlite3_bind_null(q->lite, i);
        else
            sqlite3_bind_blob(q->lite, i, n ? p : &empty, (int)n, SQLITE_TRANSIENT);
        return;
    }
    pg_bind(q, i, p, n, 1, OID_BYTEA);
}

void kc_q_bind_null(kc_q *q, int i)
{
    if (q->lite != NULL)
        sqlite3_bind_null(q->lite, i);
    else
        pg_bind(q, i, NULL, 0, 0, 0);
}

/* --- running --- */

static PGresult *pg_run(kc_q *q)
{
    const char **vals = calloc((size_t)q->nparams + 1, sizeof(*vals));
    int *lens = calloc((size_t)q->nparams + 1, sizeof(*lens));
    int *fmts = calloc((size_t)q->nparams + 1, sizeof(*fmts));
    Oid *types = calloc((size_t)q->nparams + 1, sizeof(*types));
    PGresult *res = NULL;
    int i;

    if (vals == NULL || lens == NULL || fmts == NULL || types == NULL)
        goto out;
    for (i = 0; i < q->nparams; i++) {
        vals[i] = q->params[i].val;
        lens[i] = q->params[i].len;
        fmts[i] = q->params[i].fmt;
        types[i] = q->params[i].type;
    }
    if (!q->kept) {
        res = PQexecParams(q->st->pg, q->pgsql, q->nparams, types, vals, lens, fmts, 1);
        goto out;
    }
    if (!q->prepared) {
        snprintf(q->name, sizeof(q->name), "kc%u", ++q->st->pg_names);
        res = PQprepare(q->st->pg, q->name, q->pgsql, q->nparams, types);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            goto out;
        PQclear(res);
        q->prepared = 1;
    }
    res = PQexecPrepared(q->st->pg, q->name, q->nparams, vals, lens, fmts, 1);
out:
    free(vals);
    free(lens);
    free(fmts);
    free(types);
    return res;
}

static int pg_step(kc_q *q)
{
    kc_store *st = q->st;
    ExecStatusType s;

    if (!q->ran) {
        q->ran = 1;
        q->res = pg_run(q);
        s = PQresultStatus(q->res);
        if (s == PGRES_TUPLES_OK) {
            q->nrows = PQntuples(q->res);
            q->row = -1;
        } else if (s == PGRES_COMMAND_OK) {
            const char *n = PQcmdTuples(q->res);

            st->changes = n && *n ? strtol(n, NULL, 10) : 0;
            q->nrows = 0;
            q->row = -1;
        } else {
            const char *state = PQresultErrorField(q->res, PG_DIAG_SQLSTATE);

            snprintf(st->pg_state, sizeof(st->pg_state), "%s", state ? state : "");
            pg_note(st, q->res ? PQresultErrorMessage(q->res) : PQerrorMessage(st->pg));
            q->nrows = -1;
            return KC_Q_ERROR;
        }
    }
    if (q->nrows < 0)
        return KC_Q_ERROR;
    if (q->row + 1 < q->nrows) {
        q->row++;
        return KC_Q_ROW;
    }
    return KC_Q_DONE;
}

int kc_q_step(kc_q *q)
{
    int rc;

    if (q->lite == NULL)
        return pg_step(q);
    rc = sqlite3_step(q->lite);
    if (rc == SQLITE_DONE)
        q->st->changes = sqlite3_changes(q->st->db);
    return rc == SQLITE_ROW ? KC_Q_ROW : rc == SQLITE_DONE ? KC_Q_DONE : KC_Q_ERROR;
}

/* --- columns --- */

static int pg_null(kc_q *q, int col)
{
    return q->res == NULL || q->row < 0 || q->row >= q->nrows || col >= PQnfields(q->res) ||
           PQgetisnull(q->res, q->row, col);
}

static long long be(const unsigned char *p, int n)
{
    unsigned long long v = (p[0] & 0x80) ? ~0ULL : 0;
    int i;

    for (i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return (long long)v;
}

int kc_q_type(kc_q *q, int col)
{
    static const int lite[] = {0, KC_Q_INTEGER, KC_Q_FLOAT, KC_Q_TEXT, KC_Q_BLOB, KC_Q_NULL};
    Oid t;

    if (q->lite != NULL) {
        int c = sqlite3_column_type(q->lite, col);

        return c >= 1 && c <= 5 ? lite[c] : KC_Q_NULL;
    }
    if (pg_null(q, col))
        return KC_Q_NULL;
    t = PQftype(q->res, col);
    if (t == OID_INT8 || t == OID_INT4 || t == OID_INT2 || t == OID_BOOL)
        return KC_Q_INTEGER;
    if (t == OID_FLOAT4 || t == OID_FLOAT8)
        return KC_Q_FLOAT;
    return t == OID_BYTEA ? KC_Q_BLOB : KC_Q_TEXT;
}

long long kc_q_int(kc_q *q, int col)
{
    const unsigned char *p;
    int n;

    if (q->lite != NULL)
        return sqlite3_column_int64(q->lite, col);
    if (kc_q_type(q, col) != KC_Q_INTEGER)
        return kc_q_type(q, col) == KC_Q_TEXT ? strtoll(PQgetvalue(q->res, q->row, col), NULL, 10)
                                              : 0;
    p = (const unsigned char *)PQgetvalue(q->res, q->row, col);
    n = PQgetlength(q->res, q->row, col);
    return n >= 1 && n <= 8 ? be(p, n) : 0;
}

const unsigned char *kc_q_text(kc_q *q, int col)
{
    if (q->lite != NULL)
        return sqlite3_column_text(q->lite, col);
    switch (kc_q_type(q, col)) {
    case KC_Q_NULL:
        return NULL;
    case KC_Q_INTEGER:
        snprintf(q->num, sizeof(q->num), "%lld", kc_q_int(q, col));
        return (const unsigned char *)q->num;
    default: /* libpq ends every value with a NUL, binary ones too */
        return (const unsigned char *)PQgetvalue(q->res, q->row, col);
    }
}

const void *kc_q_blob(kc_q *q, int col)
{
    if (q->lite != NULL)
        return sqlite3_column_blob(q->lite, col);
    if (pg_null(q, col) || PQgetlength(q->res, q->row, col) == 0)
        return NULL;
    return PQgetvalue(q->res, q->row, col);
}

int kc_q_bytes(kc_q *q, int col)
{
    if (q->lite != NULL)
        return sqlite3_column_bytes(q->lite, col);
    if (pg_null(q, col))
        return 0;
    if (kc_q_type(q, col) == KC_Q_INTEGER)
        return (int)strlen((const char *)kc_q_text(q, col));
    return PQgetlength(q->res, q->row, col);
}

int kc_q_param_count(kc_q *q)
{
    return q->lite != NULL ? sqlite3_bind_parameter_count(q->lite) : q->nparams;
}

long kc_store_changes(kc_store *st)
{
    return st->changes;
}

long long kc_store_data_version(kc_store *st)
{
    long long v = -1;
    kc_q *q = NULL;

    if (st->pg != NULL || kc_q_prepare(st, "PRAGMA data_version", &q) != KC_Q_OK)
        return -1;
    if (kc_q_step(q) == KC_Q_ROW)
        v = kc_q_int(q, 0);
    kc_q_finish(q);
    return v;
}

const char *kc_store_errmsg(kc_store *st)
{
    if (st->pg != NULL)
        return st->pg_err[0] ? st->pg_err : PQerrorMessage(st->pg);
    return st->db ? sqlite3_errmsg(st->db) : "out of memory";
}

int kc_store_unique_violation(kc_store *st)
{
    if (st->pg != NULL)
        return strcmp(st->pg_state, "23505") == 0;
    return st->db && sqlite3_extended_errcode(st->db) == SQLITE_CONSTRAINT_UNIQUE;
}

int kc_store_lock_timeout(kc_store *st)
{
    return st->pg != NULL && strcmp(st->pg_state, "55P03") == 0;
}

int kc_store_deadlock(kc_store *st)
{
    return st->pg != NULL && strcmp(st->pg_state, "40P01") == 0;
}

int kc_store_is_pg(const kc_store *st)
{
    return st->pg != NULL;
}
