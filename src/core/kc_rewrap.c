#include "kc_rewrap.h"
#include "kc_store_int.h"
#include "kc_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PENDING                                                                                    \
    "FROM scope_targets WHERE purged IS NULL AND target_id IS NOT NULL AND "                       \
    "target_purge_requested IS NULL AND (dep_id != target_id OR dep_generation != "                \
    "target_generation)"

static kc_rc db_error(kc_store *st, kc_error *err)
{
    return kc_error_set(err, KC_ERR, "the service store: %s", kc_store_errmsg(st));
}

static void text(kc_q *q, int col, char *out, size_t cap)
{
    const unsigned char *t = kc_q_text(q, col);

    snprintf(out, cap, "%s", t ? (const char *)t : "");
}

/* One number from a query with one text parameter (or none). */
static kc_rc count(kc_store *st, const char *sql, const char *param, long *n, kc_error *err)
{
    kc_q *q = NULL;
    int rc;

    *n = 0;
    if (kc_q_prepare(st, sql, &q) != KC_Q_OK)
        return db_error(st, err);
    if (param != NULL)
        kc_q_bind_text(q, 1, param);
    rc = kc_q_step(q);
    if (rc == KC_Q_ROW)
        *n = (long)kc_q_int(q, 0);
    kc_q_finish(q);
    return rc == KC_Q_ROW ? KC_OK : db_error(st, err);
}

/* --- status --- */

static kc_rc dep_state(kc_store *st, kc_dep_status *ds, kc_error *err)
{
    long assigned = 0, rolling = 0;
    kc_rc r;

    r = count(st, "SELECT count(*) FROM assignments WHERE dep_id = ?", ds->dep.id, &assigned, err);
    if (r == KC_OK)
        r = count(st, "SELECT count(*) FROM scope_targets WHERE purged IS NULL AND target_id = ?",
                  ds->dep.id, &ds->total, err);
    if (r == KC_OK)
        r = count(st,
                  "SELECT count(*) FROM scope_targets WHERE purged IS NULL AND target_id = ?1 AND "
                  "dep_id = ?1 AND dep_generation = target_generation",
                  ds->dep.id, &ds->done, err);
    if (r == KC_OK)
        r = count(st,
                  "SELECT count(*) FROM scope_targets WHERE purged IS NULL AND target_id = ?1 AND "
                  "dep_id = ?1 AND dep_generation < target_generation",
                  ds->dep.id, &rolling, err);
    if (r != KC_OK)
        return r;
    ds->percent = ds->total ? (int)(ds->done * 100 / ds->total) : 100;
    if (ds->dep.purged[0] != '\0')
        ds->state = "Purged";
    else if (assigned == 0)
        ds->state = "Unregistered";
    else if (ds->done == ds->total)
        ds->state = "Registered";
    else
        ds->state = rolling > 0 ? "Rolling" : "Registering";
    return KC_OK;
}

kc_rc kc_status_deps(kc_store *st, kc_dep_status **out, size_t *n, kc_error *err)
{
    kc_dep *deps = NULL;
    kc_dep_status *v;
    size_t nd = 0, i;
    kc_rc r;

    *out = NULL;
    *n = 0;
    r = kc_dep_list(st, &deps, &nd, err);
    if (r != KC_OK)
        return r;
    v = calloc(nd ? nd : 1, sizeof(*v));
    if (v == NULL) {
        free(deps);
        return kc_error_set(err, KC_ERR, "out of memory");
    }
    for (i = 0; r == KC_OK && i < nd; i++) {
        v[i].dep = deps[i];
        r = dep_state(st, &v[i], err);
    }
    free(deps);
    if (r != KC_OK) {
        free(v);
        return r;
    }
    *out = v;
    *n = nd;
    return KC_OK;
}

/* Scopes with data, then assigned scopes with none, by name. */
#define SCOPES_SQL                                                                                 \
    "SELECT t.scope, t.dep_id, t.dep_generation, t.target_id, t.purged, t.target_generation, "     \
    "  d.name, e.name, d.workload, (SELECT count(*) FROM items i WHERE i.scope = t.scope) "        \
    "FROM scope_targets t LEFT JOIN deps d ON d.id = t.dep_id LEFT JOIN deps e ON e.id = "         \
    "t.target_id WHERE CAST(?1 AS TEXT) IS NULL OR t.scope = ?1 "                                  \
    "UNION ALL SELECT a.scope, NULL, 0, a.dep_id, NULL, 0, NULL, e.name, NULL, 0 FROM "            \
    "assignments a JOIN deps e ON e.id = a.dep_id WHERE (CAST(?1 AS TEXT) IS NULL OR a.scope = "   \
    "?1) AND "                                                                                     \
    "a.scope NOT IN (SELECT scope FROM scopes) ORDER BY 1"

kc_rc kc_status_scopes(kc_store *st, const char *only, kc_scope_status **out, size_t *n,
                       kc_error *err)
{
    kc_q *q = NULL;
    kc_scope_status *v = NULL, *nv, *e;
    size_t len = 0;
    char workload[16];
    kc_rc r = KC_OK;

    *out = NULL;
    *n = 0;
    if (only != NULL) {
        r = kc_dep_scope_check(only, err);
        if (r != KC_OK)
            return r;
    }
    if (kc_q_prepare(st, SCOPES_SQL, &q) != KC_Q_OK)
        return db_error(st, err);
    if (only != NULL)
        kc_q_bind_text(q, 1, only);
    while (kc_q_step(q) == KC_Q_ROW) {
        nv = realloc(v, (len + 1) * sizeof(*v));
        if (nv == NULL) {
            r = kc_error_set(err, KC_ERR, "out of memory");
            break;
        }
        v = nv;
        e = &v[len++];
        memset(e, 0, sizeof(*e));
        text(q, 0, e->scope, sizeof(e->scope));
        text(q, 1, e->dep_id, sizeof(e->dep_id));
        e->generation = (long)kc_q_int(q, 2);
        text(q, 3, e->target_id, sizeof(e->target_id));
        text(q, 4, e->purged, sizeof(e->purged));
        text(q, 6, e->dep_name, sizeof(e->dep_name));
        text(q, 7, e->target_name, sizeof(e->target_name));
        text(q, 8, workload, sizeof(workload));
        e->items = (long)kc_q_int(q, 9);
        e->encrypted =
            e->dep_id[0] != '\0' && e->purged[0] == '\0' && strcmp(workload, "service") != 0;
        e->pending =
            e->dep_id[0] != '\0' && e->purged[0] == '\0' && e->target_id[0] != '\0' &&
            (strcmp(e->dep_id, e->target_id) != 0 || e->generation != (long)kc_q_int(q, 5));
    }
    kc_q_finish(q);
    if (r == KC_OK && only != NULL && len == 0) {
        kc_error_set(err, KC_NOT_FOUND, "scope '%s' has no data and no DEP assigned", only);
        r = KC_NOT_FOUND;
    }
    if (r != KC_OK) {
        free(v);
        return r;
    }
    *out = v;
    *n = len;
    return KC_OK;
}

/* --- the re-wrap job --- */

/* The job's record, with its MAC. */
static kc_rc job_write(kc_store *st, const char *started, long done, long total, kc_error *err)
{
    unsigned char mac[32];
    kc_q *q = NULL;
    int rc;
    kc_row row;
    kc_rc r;

    kc_row_init(&row, "rewrap_progress");
    kc_row_text(&row, "rewrap");
    kc_row_text(&row, started);
    kc_row_int(&row, done);
    kc_row_int(&row, total);
    r = kc_row_seal(st, &row, mac, err);
    if (r != KC_OK)
        return r;
    rc = kc_q_prepare(st,
                      "INSERT INTO rewrap_progress (job, started, done, total, mac) VALUES "
                      "('rewrap', ?, ?, ?, ?) ON CONFLICT (job) DO UPDATE SET started = "
                      "excluded.started, done = excluded.done, total = excluded.total, "
                      "mac = excluded.mac",
                      &q);
    if (rc == KC_Q_OK) {
        kc_q_bind_text(q, 1, started);
        kc_q_bind_int(q, 2, done);
        kc_q_bind_int(q, 3, total);
        kc_q_bind_blob(q, 4, mac, sizeof(mac));
        rc = kc_q_step(q) == KC_Q_DONE ? KC_Q_OK : KC_Q_ERROR;
    }
    kc_q_finish(q);
    return rc == KC_Q_OK ? KC_OK : db_error(st, err);
}

/* The job's checked record, if any (*found): when it started, how many
 * scopes are done of its total. lock: held until the commit (PostgreSQL's
 * FOR UPDATE; SQLite's writer holds the whole file). A record made outside
 * keycustody is refused. */
static kc_rc job_read(kc_store *st, int lock, char started[21], long *done, long *total, int *found,
                      kc_error *err)
{
    kc_q *q = NULL;
    int rc;
    kc_rc r = KC_OK;
    kc_row row;

    *found = 0;
    *done = 0;
    *total = -1;
    if (kc_q_prepare(st,
                     lock && kc_store_is_pg(st)
                         ? "SELECT job, started, done, total, mac FROM rewrap_progress WHERE "
                           "job = 'rewrap' FOR UPDATE"
                         : "SELECT job, started, done, total, mac FROM rewrap_progress WHERE "
                           "job = 'rewrap'",
                     &q) != KC_Q_OK)
        return db_error(st, err);
    rc = kc_q_step(q);
    if (rc == KC_Q_ROW) {
        kc_row_init(&row, "rewrap_progress");
        kc_row_cols(&row, q, 0, 4);
        r = kc_row_check(st, &row, q, 4, "re-wrap job record", err);
        text(q, 1, started, 21);
        *done = (long)kc_q_int(q, 2);
        *total = (long)kc_q_int(q, 3);
        *found = 1;
    } else if (rc != KC_Q_DONE)
        r = db_error(st, err);
    kc_q_finish(q);
    return r;
}

/* The job's record: total is fixed when it starts, so a resumed run shows
 * progress of the whole job. */
static kc_rc job_start(kc_store *st, long pending, char started[21], long *total, int *resumed,
                       kc_error *err)
{
    time_t now;
    long done;
    int found;
    kc_rc r = job_read(st, 0, started, &done, total, &found, err);

    if (r != KC_OK)
        return r;
    *resumed = *total >= pending;
    if (*resumed)
        return KC_OK;
    *total = pending;
    if (kc_clock_now(&now, err) != KC_OK)
        return KC_ERR;
    kc_time_format_rfc3339(now, started);
    return job_write(st, started, 0, pending, err);
}

/* The job's record advanced by the n scopes this batch moved, in the
 * batch's transaction and last in it: the row is locked (PostgreSQL) until
 * the commit, so workers beside each other add up and report one progress. */
static kc_rc job_advance(kc_store *st, long n, long *done, long *total, kc_error *err)
{
    char started[21] = "";
    int found;
    kc_rc r = job_read(st, 1, started, done, total, &found, err);

    if (r != KC_OK)
        return r;
    if (!found) { /* a job another worker finished, begun again */
        time_t now;

        if (kc_clock_now(&now, err) != KC_OK)
            return KC_ERR;
        kc_time_format_rfc3339(now, started);
        *done = 0;
        *total = n;
    }
    /* scopes that fell behind the walk meanwhile are moved on top */
    *done = *done + n < *total ? *done + n : *total;
    return job_write(st, started, *done, *total, err);
}

/* The store's view chose scope's target; its checked assignment and DEP
 * rows (d) must say the same before anything moves. */
static kc_rc target_agrees(const char *scope, const char *to, long gen, const kc_dep *d,
                           kc_error *err)
{
    if (strcmp(d->id, to) != 0 || d->generation != gen)
        return kc_error_set(err, KC_INTEGRITY,
                            "scope '%s': the store's view names DEP %s generation %ld, its "
                            "checked assignment DEP %s generation %ld; nothing is moved",
                            scope, to, gen, d->id, d->generation);
    return KC_OK;
}

/* --- a batch: read with its rows, written in one statement on PostgreSQL --- */

enum { MV_SCOPE, MV_TO, MV_TO_GEN, MV_WRAPPED, MV_FROM, MV_FROM_GEN, MV_COLS };

/* The rows of one claim as PostgreSQL array literals, one per column, for
 * one UPDATE over unnest(...): a key costs no round trip of its own. */
typedef struct moves {
    char *col[MV_COLS];
    size_t len[MV_COLS], cap[MV_COLS];
    long n;
    int failed; /* out of memory */
} moves;

static void mv_put(moves *m, int c, const char *p, size_t n)
{
    char *grown;
    size_t cap;

    if (m->failed)
        return;
    if (m->len[c] + n + 2 > m->cap[c]) {
        cap = (m->len[c] + n + 2) * 2 + 256;
        grown = realloc(m->col[c], cap);
        if (grown == NULL) {
            m->failed = 1;
            return;
        }
        m->col[c] = grown;
        m->cap[c] = cap;
    }
    memcpy(m->col[c] + m->len[c], p, n);
    m->len[c] += n;
    m->col[c][m->len[c]] = '\0';
}

/* The next text element of column c: its separator, and the element
 * quoted, every '"' and '\\' in it escaped (numbers: mv_int). */
static void mv_text(moves *m, int c, const char *v)
{
    mv_put(m, c, m->len[c] == 0 ? "{\"" : ",\"", 2);
    for (; *v != '\0'; v++) {
        if (*v == '"' || *v == '\\')
            mv_put(m, c, "\\", 1);
        mv_put(m, c, v, 1);
    }
    mv_put(m, c, "\"", 1);
}

static void mv_int(moves *m, int c, long v)
{
    char num[24];
    int len = snprintf(num, sizeof(num), "%s%ld", m->len[c] == 0 ? "{" : ",", v);

    mv_put(m, c, num, (size_t)len);
}

/* bytea as the hex form \x..., its backslash escaped for the array */
static void mv_bytes(moves *m, int c, const unsigned char *b, size_t n)
{
    char hex[2 * KC_DATA_WRAPPED_BYTES + 1];

    kc_hex_encode(b, n < KC_DATA_WRAPPED_BYTES ? n : KC_DATA_WRAPPED_BYTES, hex);
    mv_put(m, c, m->len[c] == 0 ? "{\"\\\\x" : ",\"\\\\x", 5);
    mv_put(m, c, hex, strlen(hex));
    mv_put(m, c, "\"", 1);
}

static void moves_free(moves *m)
{
    int c;

    for (c = 0; c < MV_COLS; c++)
        free(m->col[c]);
    memset(m, 0, sizeof(*m));
}

/* The claim's rows written: each only where it still is what the claim
 * read (its DEP and generation), all of them or the batch fails. The
 * range of the batch's scopes bounds the scan: on the join alone,
 * PostgreSQL 15 hashed every row of scopes for every batch (EXPLAIN
 * ANALYZE at 50 000 scopes: 16 of the statement's 22 ms), so a walk cost
 * grew with the square of the scopes; with it, an index range scan of the
 * batch's rows, whatever the table holds. */
static kc_rc moves_write(kc_store *st, moves *m, kc_error *err)
{
    kc_q *q = NULL;
    int c, rc;

    if (m->n == 0)
        return KC_OK;
    for (c = 0; c < MV_COLS; c++)
        mv_put(m, c, "}", 1);
    if (m->failed)
        return kc_error_set(err, KC_ERR, "out of memory");
    if (kc_q_prepare(st,
                     "UPDATE scopes s SET dep_id = u.to_id, dep_generation = u.to_gen, "
                     "wrapped_key = u.wrapped FROM unnest(?::text[], ?::text[], ?::bigint[], "
                     "?::bytea[], ?::text[], ?::bigint[]) AS u(scope, to_id, to_gen, wrapped, "
                     "from_id, from_gen) WHERE s.scope = u.scope AND s.dep_id = u.from_id AND "
                     "s.dep_generation = u.from_gen AND s.scope >= (SELECT min(x) FROM "
                     "unnest(?1::text[]) x) AND s.scope <= (SELECT max(x) FROM "
                     "unnest(?1::text[]) x)",
                     &q) != KC_Q_OK)
        return db_error(st, err);
    for (c = 0; c < MV_COLS; c++)
        kc_q_bind_text(q, c + 1, m->col[c]);
    rc = kc_q_step(q);
    kc_q_finish(q);
    if (rc != KC_Q_DONE)
        return db_error(st, err);
    if (kc_store_changes(st) != m->n)
        return kc_error_set(err, KC_ERR,
                            "the service store: %ld of the %ld scope keys of a claimed batch "
                            "moved (the rows changed under their lock); the batch is not "
                            "committed",
                            (long)kc_store_changes(st), m->n);
    return KC_OK;
}

/* A row of a batch re-wrapped: where it is read from, and where it goes. */
typedef struct claimed {
    char scope[80], to[37], from[37];
    long gen, from_gen;
    unsigned char out[KC_DATA_WRAPPED_BYTES];
} claimed;

/* The row q's batch read (CLAIM's columns: scope, target id and
 * generation, the scope row's DEP, generation and wrapped key, then its own
 * assignment's scope, dep_id and mac, NULL when it has none) re-wrapped
 * into c, once the checked assignment names the target; nothing is
 * written. */
static kc_rc rewrap_claimed(kc_data_session *s, kc_store *st, kc_q *q, kc_dep_tenant_cache *cache,
                            claimed *c, kc_error *err)
{
    kc_dep d;
    kc_rc r;

    text(q, 0, c->scope, sizeof(c->scope));
    text(q, 1, c->to, sizeof(c->to));
    c->gen = (long)kc_q_int(q, 2);
    text(q, 3, c->from, sizeof(c->from));
    c->from_gen = (long)kc_q_int(q, 4);
    r = kc_dep_effective_claimed(st, c->scope, q, 6, cache, &d, err);
    if (r == KC_OK)
        r = target_agrees(c->scope, c->to, c->gen, &d, err);
    if (r == KC_OK)
        r = kc_data_rewrap_row(s, c->scope, c->from, c->from_gen, kc_q_blob(q, 5),
                               (size_t)kc_q_bytes(q, 5), c->to, c->gen, c->out, err);
    return r;
}

static void moves_add(moves *m, const claimed *c)
{
    mv_text(m, MV_SCOPE, c->scope);
    mv_text(m, MV_TO, c->to);
    mv_int(m, MV_TO_GEN, c->gen);
    mv_bytes(m, MV_WRAPPED, c->out, sizeof(c->out));
    mv_text(m, MV_FROM, c->from);
    mv_int(m, MV_FROM_GEN, c->from_gen);
    m->n++;
}

/* A batch: the pending scopes after ?1, each with its row and its own
 * assignment. On PostgreSQL, a worker's claim of a range: the pending test
 * is on the scope row's own columns as well, so a row another worker moved
 * and committed since this one looked is checked again in its new version
 * when locked (PostgreSQL's EvalPlanQual), against the target this look
 * saw, and so left out. The range is on the view's scope, which PostgreSQL
 * 15 applies inside the view: on the outer table's alone it evaluated
 * every scope's target for every batch. */
#define CLAIM_COLS                                                                                 \
    "SELECT s.scope, t.target_id, t.target_generation, s.dep_id, s.dep_generation, "               \
    "s.wrapped_key, a.scope, a.dep_id, a.mac"
#define CLAIM_FROM                                                                                 \
    " FROM scopes s JOIN scope_targets t ON t.scope = s.scope LEFT JOIN assignments a ON "         \
    "a.scope = s.scope WHERE t.purged IS NULL AND t.target_id IS NOT NULL AND "                    \
    "t.target_purge_requested IS NULL AND s.purged IS NULL AND (s.dep_id <> t.target_id OR "       \
    "s.dep_generation <> t.target_generation) AND t.scope > ?1 "
#define CLAIM CLAIM_COLS CLAIM_FROM
#define CLAIM_END " ORDER BY s.scope FOR UPDATE OF s SKIP LOCKED"

/* The batch-th scope after last, in *upper ("" when fewer are left): the
 * range a claim takes, found in the primary key's order. */
static kc_rc range_end(kc_store *st, const char *last, long batch, char upper[80], kc_error *err)
{
    kc_q *q = NULL;
    int rc;

    upper[0] = '\0';
    if (kc_q_prepare(st, "SELECT scope FROM scopes WHERE scope > ? ORDER BY scope LIMIT 1 OFFSET ?",
                     &q) != KC_Q_OK)
        return db_error(st, err);
    kc_q_bind_text(q, 1, last);
    kc_q_bind_int(q, 2, batch - 1);
    rc = kc_q_step(q);
    if (rc == KC_Q_ROW)
        text(q, 0, upper, 80);
    kc_q_finish(q);
    return rc == KC_Q_ROW || rc == KC_Q_DONE ? KC_OK : db_error(st, err);
}

/* Whether another worker is claiming the range that starts after last:
 * each claim holds, until its commit, a lock named by its range's start,
 * so a range held is passed over for one round trip instead of a claim
 * (which reads and filters the range's rows before it finds them locked:
 * 9 ms at 1 000 scopes, four workers each walking every range). It is
 * only a hint: two starts whose hashes collide, or a range whose end
 * moved as scopes were added, may pass over a range no one holds; the
 * row locks decide what a claim takes, and the walk's end takes what was
 * passed over. The two-key form is a space apart from the store's
 * one-key lock. */
static kc_rc range_taken(kc_store *st, const char *last, int *taken, kc_error *err)
{
    long n = 0;
    kc_rc r = count(st,
                    "SELECT CASE WHEN pg_try_advisory_xact_lock(1801679479, hashtext(?)) THEN 0 "
                    "ELSE 1 END",
                    last, &n, err);

    *taken = n != 0;
    return r;
}

/* One batch of a worker on PostgreSQL, in the caller's (shared)
 * transaction: the pending scopes of the next batch scopes after last that
 * no other worker holds, locked until the commit (a worker killed lets go
 * of its batch, which the others take when their walk begins again); last
 * moves to the range's end, and *more says whether scopes follow it. So a
 * walk costs each scope's target once, not once per batch. The claim reads
 * each scope's row and its own assignment with it, and the batch's new
 * rows are written in one statement: a batch costs a few round trips,
 * whatever its size (the store's other writers wait for it:
 * kc_store_begin_shared). */
static kc_rc claim_step(kc_data_session *s, kc_store *st, long batch, char last[80], long *n,
                        int *more, kc_error *err)
{
    kc_dep_tenant_cache cache = {0};
    char upper[80];
    claimed c;
    moves m;
    kc_q *q = NULL;
    int rc, taken;
    kc_rc r = range_end(st, last, batch, upper, err);

    if (r != KC_OK)
        return r;
    *more = upper[0] != '\0';
    r = range_taken(st, last, &taken, err);
    if (r != KC_OK || taken) {
        if (r == KC_OK && *more)
            snprintf(last, 80, "%s", upper);
        return r;
    }
    if (kc_q_prepare(st, *more ? CLAIM "AND t.scope <= ?2" CLAIM_END : CLAIM CLAIM_END, &q) !=
        KC_Q_OK)
        return db_error(st, err);
    kc_q_bind_text(q, 1, last);
    if (*more)
        kc_q_bind_text(q, 2, upper);
    memset(&m, 0, sizeof(m));
    while (r == KC_OK && (rc = kc_q_step(q)) == KC_Q_ROW) {
        r = rewrap_claimed(s, st, q, &cache, &c, err);
        if (r == KC_OK) {
            moves_add(&m, &c);
            memcpy(last, c.scope, sizeof(c.scope));
        }
    }
    if (r == KC_OK && *more)
        snprintf(last, 80, "%s", upper);
    if (r == KC_OK && rc == KC_Q_ERROR)
        r = db_error(st, err);
    kc_q_finish(q);
    if (r == KC_OK)
        r = moves_write(st, &m, err);
    if (r == KC_OK)
        *n += m.n;
    moves_free(&m);
    return r;
}

/* c's row written (SQLite), only where it still is what the batch read.
 * A roll keeps the scope under its DEP: then dep_id is left out of the SET,
 * so SQLite does not look its DEP up again for the foreign key (a quarter
 * of the write's cost). */
static kc_rc row_write(kc_store *st, const claimed *c, long long rowid, kc_error *err)
{
    int same = strcmp(c->to, c->from) == 0, p = 1, rc;
    kc_q *q = NULL;

    if (kc_q_prepare(st,
                     same ? "UPDATE scopes SET dep_generation = ?, wrapped_key = ? WHERE rowid = ? "
                            "AND scope = ? AND dep_id = ? AND dep_generation = ?"
                          : "UPDATE scopes SET dep_id = ?, dep_generation = ?, wrapped_key = ? "
                            "WHERE rowid = ? AND scope = ? AND dep_id = ? AND dep_generation = ?",
                     &q) != KC_Q_OK)
        return db_error(st, err);
    if (!same)
        kc_q_bind_text(q, p++, c->to);
    kc_q_bind_int(q, p++, c->gen);
    kc_q_bind_blob(q, p++, c->out, sizeof(c->out));
    kc_q_bind_int(q, p++, rowid);
    kc_q_bind_text(q, p++, c->scope);
    kc_q_bind_text(q, p++, c->from);
    kc_q_bind_int(q, p, c->from_gen);
    rc = kc_q_step(q);
    kc_q_finish(q);
    if (rc != KC_Q_DONE)
        return db_error(st, err);
    if (kc_store_changes(st) != 1)
        return kc_error_set(err, KC_ERR,
                            "the service store: cannot move the key of scope '%s' (its row "
                            "changed since the batch read it)",
                            c->scope);
    return KC_OK;
}

/* One batch, in the caller's transaction: *n scopes moved, the pending
 * scopes after last (in scope order, which the primary key gives, so a
 * job walks the table once); last becomes the last one moved (on
 * PostgreSQL the end of the range claimed, *more whether scopes follow). */
static kc_rc batch_step(kc_data_session *s, kc_store *st, long batch, char last[80], long *n,
                        int *more, kc_error *err)
{
    /* the batch is one transaction: the tenant DEP is checked once in it */
    kc_dep_tenant_cache cache = {0};
    kc_q *q = NULL;
    claimed c;
    int rc = KC_Q_DONE;
    kc_rc r = KC_OK;

    *n = 0;
    *more = 0;
    if (kc_store_is_pg(st))
        return claim_step(s, st, batch, last, n, more, err);
    /* one writer holds the store (BEGIN IMMEDIATE): nothing to lock; the
     * batch reads each scope's row and assignment with its target */
    if (kc_q_prepare(st, CLAIM_COLS ", s.rowid" CLAIM_FROM "ORDER BY s.scope LIMIT ?2", &q) !=
        KC_Q_OK)
        return db_error(st, err);
    kc_q_bind_text(q, 1, last);
    kc_q_bind_int(q, 2, batch);
    while (r == KC_OK && (rc = kc_q_step(q)) == KC_Q_ROW) {
        r = rewrap_claimed(s, st, q, &cache, &c, err);
        if (r == KC_OK)
            r = row_write(st, &c, kc_q_int(q, 9), err);
        if (r == KC_OK) {
            (*n)++;
            memcpy(last, c.scope, sizeof(c.scope));
        }
    }
    if (r == KC_OK && rc == KC_Q_ERROR)
        r = db_error(st, err);
    kc_q_finish(q);
    return r;
}

/* The end of a job, in its last transaction: the DEP key generations no
 * scope needs lose their wrapped copies, and the job's record goes;
 * *ended says whether this run removed it (of workers that end a job side
 * by side, one does). */
static kc_rc finish_job(kc_store *st, int *ended, kc_error *err)
{
    kc_q *q = NULL;
    int rc;
    kc_rc r = kc_store_exec(st,
                            "DELETE FROM dep_keys WHERE generation < (SELECT generation FROM "
                            "deps WHERE id = dep_keys.dep_id) AND NOT EXISTS (SELECT 1 FROM "
                            "scopes s WHERE s.dep_id = dep_keys.dep_id AND s.dep_generation = "
                            "dep_keys.generation)",
                            err);

    if (r != KC_OK)
        return r;
    if (kc_q_prepare(st, "DELETE FROM rewrap_progress", &q) != KC_Q_OK)
        return db_error(st, err);
    rc = kc_q_step(q);
    kc_q_finish(q);
    if (rc != KC_Q_DONE)
        return db_error(st, err);
    *ended = kc_store_changes(st) > 0;
    return KC_OK;
}

/* The end of a walk on PostgreSQL: whether a scope is still pending,
 * after the ones other workers hold are waited for. The look locks the
 * first pending scope, so it waits for the worker that holds it to commit
 * (its rows, moved, no longer match and are passed over) or to be killed
 * (they are then free, and the walk begins again to take them). No walk
 * or poll while the last batches are held: four workers on two cores
 * spent about a quarter of their time walking again (50 000 scopes), and
 * a look that skipped locked rows was a pass over every scope per poll.
 * A worker waiting holds no scope of a batch, so no claim waits for it;
 * the moved rows its look waited for stay locked until it commits, so
 * looks side by side queue behind each other (walk_end: a deadlock). */
#define PENDING_LEFT                                                                               \
    "WITH p AS (SELECT 1" CLAIM_FROM "LIMIT 1 FOR UPDATE OF s) SELECT count(*) FROM p"

/* The end of a walk: *left whether a scope is still pending. On SQLite,
 * when no other connection committed since the last look (seen), the walk
 * saw every scope pending and moved it: no look is needed. The look asks
 * whether one scope is pending, not how many: a count is a pass over
 * every scope's target, and the answer used is only none or some. */
static kc_rc walk_end(kc_store *st, long long *seen, long *left, kc_error *err)
{
    long long now;
    kc_rc r;

    if (kc_store_is_pg(st)) {
        /* two looks that meet rows in different orders (their plans
         * differ, or a synchronized scan) can deadlock on the moved rows
         * each keeps locked: the one PostgreSQL cancels is rolled back to
         * before its look and walks again */
        r = kc_store_exec(st, "SAVEPOINT walk_end", err);
        if (r == KC_OK)
            r = count(st, PENDING_LEFT, "", left, err);
        if (r != KC_OK && kc_store_deadlock(st)) {
            kc_error_clear(err);
            *left = 1;
            return kc_store_exec(st, "ROLLBACK TO SAVEPOINT walk_end", err);
        }
        if (r != KC_OK && kc_store_lock_timeout(st))
            return kc_error_set(err, KC_CONFLICT,
                                "waiting for the scopes other workers hold (or for a table lock, "
                                "such as a purge's): none was free within the store's lock "
                                "timeout (10 s)");
        if (r != KC_OK)
            kc_error_prefix(err, "waiting for the scopes other workers hold");
        return r;
    }
    now = kc_store_data_version(st);
    *left = 0;
    r = KC_OK;
    if (now < 0 || now != *seen)
        r = count(st, "SELECT count(*) FROM (SELECT 1 " PENDING " LIMIT 1) AS p", NULL, left, err);
    *seen = now;
    return r;
}

kc_rc kc_rewrap(kc_data_session *s, kc_store *st, long batch, kc_rewrap_progress progress,
                void *arg, long *moved, kc_error *err)
{
    long pending = 0, total = 0, n = 0, done = 0;
    long long seen;
    char last[80] = "", started[21] = "";
    kc_error ignored;
    int resumed = 0, more = 0, ended = 0;
    kc_rc r;

    *moved = 0;
    if (batch < 1)
        return kc_error_set(err, KC_USAGE, "a batch has at least one scope");
    /* before the count: a commit by another connection after it shows */
    seen = kc_store_data_version(st);
    r = count(st, "SELECT count(*) " PENDING, NULL, &pending, err);
    if (r == KC_OK)
        r = job_start(st, pending, started, &total, &resumed, err);
    if (r != KC_OK)
        return r;
    if (progress != NULL && total > 0)
        progress(arg, total - pending, total, resumed);
    do {
        r = kc_store_begin_shared(st, err);
        if (r != KC_OK)
            break;
        r = batch_step(s, st, batch, last, &n, &more, err);
        /* a range whose scopes were moved, or are held by other workers:
         * the walk goes on */
        if (r == KC_OK && n == 0 && more)
            n = -1;
        /* at the end of the walk: scopes that fell behind it meanwhile (an
         * assignment changed; on PostgreSQL, a killed worker's batch) are
         * walked again, once those other workers hold are done; else the
         * job is done */
        if (r == KC_OK && n == 0 && (last[0] != '\0' || kc_store_is_pg(st)))
            r = walk_end(st, &seen, &pending, err);
        if (r == KC_OK && n == 0 && pending > 0 && (last[0] != '\0' || kc_store_is_pg(st))) {
            last[0] = '\0';
            n = -1;
        } else if (r == KC_OK && n == 0)
            r = finish_job(st, &ended, err);
        if (r == KC_OK && n > 0)
            r = job_advance(st, n, &done, &total, err);
        if (r != KC_OK) {
            kc_store_rollback(st);
            break;
        }
        r = kc_store_commit(st, err);
        if (r != KC_OK)
            break;
        if (n > 0)
            *moved += n;
        if (n > 0 && progress != NULL)
            progress(arg, done, total, resumed);
    } while (n != 0);
    if (r != KC_OK)
        return kc_error_prefix(err,
                               "the re-wrap stopped after %ld scope key(s); run it again to "
                               "finish",
                               *moved);
    /* best effort, after the commit: a reader elsewhere keeps the log
     * until it is done. On PostgreSQL the worker that ended the job
     * rewrites the tables, once: it waits for the snapshots older than it
     * (other workers' included), and every row version a worker made
     * dead is older than the end. A VACUUM FULL per worker made four in
     * a row at the end of a four-worker job, each waiting its turn at an
     * exclusive lock. */
    if ((ended || !kc_store_is_pg(st)) && kc_store_scrub(st, &ignored) != KC_OK)
        kc_error_clear(&ignored);
    return KC_OK;
}

/* --- offboarding --- */

kc_rc kc_tenant_offboard(kc_ctx *ctx, kc_store *st, const char *service_vault,
                         const char *principal, kc_dep *was, kc_dep *service, kc_error *err)
{
    int inherited;
    kc_rc r;

    memset(was, 0, sizeof(*was));
    r = kc_store_authenticate(ctx, st, service_vault, 0, err);
    if (r == KC_OK)
        r = kc_dep_effective(st, "tenant", was, &inherited, err);
    if (r == KC_NOT_FOUND)
        kc_error_hint(err, "a tenant offboards from the tenant DEP it has");
    if (r != KC_OK)
        return r;
    if (strcmp(was->workload, "service") == 0) {
        *service = *was;
        memset(was, 0, sizeof(*was));
        return KC_OK;
    }
    /* The re-wrap that follows unwraps the tenant DEP's key with a
     * custodian vault: its PIN source and login are checked before the
     * tenant's scopes are handed to the service-managed key. */
    {
        kc_dep_unwrap_info info;
        kc_secret *key = NULL;

        r = kc_dep_unwrap(ctx, st, was->id, 0, principal, 0, &key, &info, err);
        kc_secret_free(key);
        if (r != KC_OK)
            return kc_error_prefix(err,
                                   "nothing was changed: the tenant's scope keys move from "
                                   "DEP '%s' only through vault %s or %s",
                                   was->name, was->keys[0].vault, was->keys[1].vault);
    }
    r = kc_dep_service(ctx, st, service_vault, principal, service, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot make the service-managed key");
    return kc_assignment_write(st, "tenant", service->id, err);
}
