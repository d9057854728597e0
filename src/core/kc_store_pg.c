/* The service store in PostgreSQL (libpq): the same tables, migrations and
 * row MACs as the SQLite file, in the schema the connection's search_path
 * names first (current_schema()). kc_store.c calls these for a store opened
 * from a postgresql:// URI. */
#include "kc_store_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Every writer of one database takes this advisory lock, exclusive for a
 * change (so two commands queue as on SQLite's BEGIN IMMEDIATE), shared for
 * a re-wrap worker, which claims its rows with FOR UPDATE SKIP LOCKED. */
#define KC_PG_LOCK "7738474128651445553" /* "kcstore1" as a bigint */

/* The URI as shown in messages: a password in it (user:PASSWORD@ or
 * password=...) becomes "***". */
void kc_pg_shown(const char *uri, char *out, size_t cap)
{
    const char *at, *colon, *p, *scheme_end = strstr(uri, "://");
    size_t o = 0;

    out[0] = '\0';
    if (cap == 0)
        return;
    at = scheme_end ? strchr(scheme_end + 3, '@') : NULL;
    colon = at ? memchr(scheme_end + 3, ':', (size_t)(at - scheme_end - 3)) : NULL;
    for (p = uri; *p != '\0' && o + 4 < cap; p++) {
        if (colon != NULL && p == colon + 1) {
            o += (size_t)snprintf(out + o, cap - o, "***");
            p = at - 1;
            continue;
        }
        if (strncmp(p, "password=", 9) == 0 && (p == uri || p[-1] == '?' || p[-1] == '&')) {
            o += (size_t)snprintf(out + o, cap - o, "password=***");
            while (p[1] != '\0' && p[1] != '&')
                p++;
            continue;
        }
        out[o++] = *p;
    }
    out[o] = '\0';
}

/* A notice (CREATE TABLE IF NOT EXISTS, VACUUM) is not the user's business. */
static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static kc_rc pg_fail(kc_store *s, const char *what, PGresult *res, kc_error *err)
{
    char msg[512];
    size_t n;

    snprintf(msg, sizeof(msg), "%s",
             res != NULL && PQresultErrorMessage(res)[0] != '\0' ? PQresultErrorMessage(res)
                                                                 : PQerrorMessage(s->pg));
    n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    return kc_error_set(err, KC_ERR, "the service store %s: cannot %s: %s", s->shown, what, msg);
}

kc_rc kc_pg_exec(kc_store *s, const char *sql, kc_error *err)
{
    PGresult *res = PQexec(s->pg, sql);
    ExecStatusType st = PQresultStatus(res);
    kc_rc r = KC_OK;

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        r = pg_fail(s, "run a statement", res, err);
    PQclear(res);
    return r;
}

/* COMMIT of a transaction that failed is answered ROLLBACK, not an error. */
kc_rc kc_pg_commit(kc_store *s, kc_error *err)
{
    PGresult *res = PQexec(s->pg, "COMMIT");
    kc_rc r = KC_OK;

    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        r = pg_fail(s, "commit", res, err);
    else if (strcmp(PQcmdStatus(res), "COMMIT") != 0)
        r = kc_error_set(err, KC_ERR,
                         "the service store %s: the transaction failed and was rolled back",
                         s->shown);
    PQclear(res);
    return r;
}

kc_rc kc_pg_begin(kc_store *s, int shared, kc_error *err)
{
    return kc_pg_exec(s,
                      shared ? "BEGIN; SELECT pg_advisory_xact_lock_shared(" KC_PG_LOCK ")"
                             : "BEGIN; SELECT pg_advisory_xact_lock(" KC_PG_LOCK ")",
                      err);
}

/* Sets search_path to pg_catalog, then the store's schema (local: for the
 * transaction, the store's schema alone, where the migrations create). So
 * names resolve in pg_catalog first and in no other schema of the user's
 * search_path (public, say): a function or operator made there is never
 * chosen for keycustody's SQL; one in the store's schema is refused by the
 * schema check. */
static kc_rc set_search_path(kc_store *s, int local, kc_error *err)
{
    char *id = PQescapeIdentifier(s->pg, s->pg_schema, strlen(s->pg_schema)), sql[200];

    if (id == NULL)
        return pg_fail(s, "name its schema", NULL, err);
    snprintf(sql, sizeof(sql),
             local ? "SET LOCAL search_path = %s" : "SET search_path = pg_catalog, %s", id);
    PQfreemem(id);
    return kc_pg_exec(s, sql, err);
}

kc_rc kc_pg_open(kc_store *s, const char *uri, kc_error *err)
{
    const char *keys[] = {"dbname", "fallback_application_name", NULL};
    const char *vals[] = {uri, "keycustody", NULL};
    PGresult *res;
    kc_rc r = KC_OK;

    s->pg = PQconnectdbParams(keys, vals, 1);
    if (s->pg == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    if (PQstatus(s->pg) != CONNECTION_OK) {
        r = pg_fail(s, "connect", NULL, err);
        kc_error_hint(err, "check the URI (as PostgreSQL documents it: "
                           "postgresql://[user@]host[:port]/dbname[?param=value...]) and that "
                           "the server runs and lets this user in");
        return r;
    }
    PQsetNoticeProcessor(s->pg, quiet, NULL);
    /* a lock another command holds is waited for as long as SQLite's busy
     * timeout; the store's text is UTF-8 either way. Every transaction is
     * READ COMMITTED, whatever the server, database, role or URI options
     * default to: the re-wrap workers' claims and their wait at the end
     * of a walk rely on a row another worker moved being re-checked in its
     * new version (EvalPlanQual), where REPEATABLE READ fails with a
     * serialization error */
    r = kc_pg_exec(s,
                   "SET lock_timeout = '10s'; SET client_encoding = 'UTF8'; SET "
                   "default_transaction_isolation = 'read committed'",
                   err);
    if (r != KC_OK)
        return r;
    res = PQexec(s->pg, "SELECT current_schema()");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        r = pg_fail(s, "read its schema", res, err);
    else if (PQgetisnull(res, 0, 0)) {
        r = kc_error_set(err, KC_NOT_FOUND,
                         "the service store %s: no schema of its search_path exists to keep "
                         "the store in",
                         s->shown);
        kc_error_hint(err, "create the schema, or name one with options=-csearch_path%%3DNAME");
    } else
        snprintf(s->pg_schema, sizeof(s->pg_schema), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return r == KC_OK ? set_search_path(s, 0, err) : r;
}

kc_rc kc_pg_version(kc_store *s, int *version, kc_error *err)
{
    PGresult *res = PQexec(s->pg, "SELECT to_regclass('kc_schema') IS NOT NULL");
    kc_rc r = KC_OK;

    *version = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        r = pg_fail(s, "read its schema version", res, err);
        PQclear(res);
        return r;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        PQclear(res);
        return KC_OK;
    }
    PQclear(res);
    res = PQexec(s->pg, "SELECT coalesce(max(version), 0) FROM kc_schema");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
        r = pg_fail(s, "read its schema version", res, err);
    else
        *version = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    return r;
}

/* The SQLite DDL in PostgreSQL's types: INTEGER is 64-bit there, BLOB is
 * bytea. Whole words only, outside quotes. */
static char *pg_ddl(const char *sql)
{
    static const struct {
        const char *from, *to;
    } words[] = {{"INTEGER", "BIGINT"}, {"BLOB", "BYTEA"}};
    size_t cap = strlen(sql) * 2 + 1, o = 0, i, n;
    char *out = malloc(cap), quote = 0;

    if (out == NULL)
        return NULL;
    while (*sql != '\0') {
        for (i = 0; quote == 0 && i < sizeof(words) / sizeof(words[0]); i++) {
            n = strlen(words[i].from);
            if (strncmp(sql, words[i].from, n) == 0 && !isalnum((unsigned char)sql[n]) &&
                sql[n] != '_' &&
                (o == 0 || (!isalnum((unsigned char)out[o - 1]) && out[o - 1] != '_')))
                break;
        }
        if (quote == 0 && i < sizeof(words) / sizeof(words[0])) {
            o += (size_t)snprintf(out + o, cap - o, "%s", words[i].to);
            sql += strlen(words[i].from);
            continue;
        }
        if (quote != 0 && *sql == quote)
            quote = 0;
        else if (quote == 0 && *sql == '\'')
            quote = *sql;
        out[o++] = *sql++;
    }
    out[o] = '\0';
    return out;
}

/* Migration to (1-based) in the caller's transaction, with the version it
 * reaches recorded in kc_schema. */
kc_rc kc_pg_migrate_step(kc_store *s, const char *migration, int to, kc_error *err)
{
    char *ddl = pg_ddl(migration), sql[160];
    kc_rc r;

    if (ddl == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    r = set_search_path(s, 1, err);
    if (r == KC_OK)
        r = kc_pg_exec(s, "CREATE TABLE IF NOT EXISTS kc_schema (version BIGINT NOT NULL)", err);
    if (r == KC_OK)
        r = kc_pg_exec(s, ddl, err);
    snprintf(sql, sizeof(sql), "DELETE FROM kc_schema; INSERT INTO kc_schema VALUES (%d)", to);
    if (r == KC_OK)
        r = kc_pg_exec(s, sql, err);
    free(ddl);
    return r;
}

/* Every object of schema $1 that could change what keycustody reads or
 * writes -- relations, columns, constraints, indexes, views, triggers,
 * rules, row policies, functions, types -- as (type, name, definition), in
 * one order. Names the definitions give schema-qualified are shown without
 * the schema, so the store's schema and the reference's compare equal. */
static const char schema_sql[] =
    "WITH n AS (SELECT oid, nspname FROM pg_namespace WHERE nspname = ?1),"
    " o(type, name, def) AS ("
    "  SELECT 'relation', c.relname, c.relkind::text || CASE WHEN c.relrowsecurity THEN ' rls' "
    "    ELSE '' END || coalesce(' ' || pg_get_viewdef(c.oid), '') FROM pg_class c, n"
    "    WHERE c.relnamespace = n.oid AND c.relkind NOT IN ('i', 'I')"
    "  UNION ALL SELECT 'column', c.relname || '.' || a.attname, a.attnum || ' ' ||"
    "    format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE"
    "    '' END || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')"
    "    FROM pg_class c JOIN n ON c.relnamespace = n.oid JOIN pg_attribute a ON a.attrelid ="
    "    c.oid LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum"
    "    WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind NOT IN ('i', 'I')"
    "  UNION ALL SELECT 'index', c.relname, pg_get_indexdef(c.oid) FROM pg_class c, n"
    "    WHERE c.relnamespace = n.oid AND c.relkind IN ('i', 'I')"
    "  UNION ALL SELECT 'constraint', c.relname || '.' || k.conname, pg_get_constraintdef(k.oid)"
    "    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN n ON c.relnamespace ="
    "    n.oid"
    "  UNION ALL SELECT 'trigger', c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid)"
    "    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN n ON c.relnamespace = n.oid"
    "    WHERE NOT t.tgisinternal"
    "  UNION ALL SELECT 'rule', c.relname || '.' || r.rulename, pg_get_ruledef(r.oid)"
    "    FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class JOIN n ON c.relnamespace = n.oid"
    "    WHERE r.rulename <> '_RETURN'"
    "  UNION ALL SELECT 'policy', c.relname || '.' || p.polname, ''"
    "    FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN n ON c.relnamespace = n.oid"
    "  UNION ALL SELECT 'function', p.proname || '(' ||"
    "    pg_get_function_identity_arguments(p.oid) || ')', '' FROM pg_proc p, n"
    "    WHERE p.pronamespace = n.oid"
    "  UNION ALL SELECT 'type', t.typname, t.typtype::text FROM pg_type t, n"
    "    WHERE t.typnamespace = n.oid AND t.typrelid = 0 AND (t.typelem = 0 OR"
    "    (SELECT e.typrelid FROM pg_type e WHERE e.oid = t.typelem) = 0))"
    " SELECT type, name, replace(def, quote_ident(?1) || '.', '') FROM o"
    " ORDER BY " KC_SCHEMA_ORDER_PG;

/* The store's schema is exactly what the migrations make: compared with
 * the migrations run in a schema of their own, in a transaction rolled
 * back. */
kc_rc kc_pg_check_schema(kc_store *s, const char *const *migrations, int n, kc_error *err)
{
    char ref[64], sql[256];
    kc_q *a = NULL, *b = NULL;
    int i;
    kc_rc r;

    snprintf(ref, sizeof(ref), "kc_reference_%ld_%ld", (long)getpid(), (long)time(NULL));
    snprintf(sql, sizeof(sql), "BEGIN; CREATE SCHEMA %s; SET LOCAL search_path = %s", ref, ref);
    r = kc_pg_exec(s, sql, err);
    if (r != KC_OK) {
        kc_store_rollback(s);
        kc_error_hint(err, "keycustody checks the store's schema against one it makes for the "
                           "check: its role needs CREATE on the database");
        return r;
    }
    if (n > 0)
        r = kc_pg_exec(s, "CREATE TABLE kc_schema (version BIGINT NOT NULL)", err);
    for (i = 0; r == KC_OK && i < n; i++) {
        char *ddl = pg_ddl(migrations[i]);

        r = ddl ? kc_pg_exec(s, ddl, err) : kc_error_set(err, KC_ERR, "out of memory");
        free(ddl);
    }
    if (r == KC_OK &&
        (kc_q_prepare(s, schema_sql, &a) != KC_Q_OK || kc_q_prepare(s, schema_sql, &b) != KC_Q_OK))
        r = pg_fail(s, "read its schema", NULL, err);
    if (r == KC_OK) {
        kc_q_bind_text(a, 1, s->pg_schema);
        kc_q_bind_text(b, 1, ref);
        r = kc_store_schema_compare(s, a, b, err);
    }
    kc_q_finish(a);
    kc_q_finish(b);
    kc_store_rollback(s);
    return r;
}

/* A transaction of another session that began before t and holds a
 * snapshot or an xid: its pid and start, or 0. */
static int old_snapshot(kc_store *s, const char *t, char since[40])
{
    const char *vals[1] = {t};
    PGresult *res = PQexecParams(
        s->pg,
        "SELECT pid, to_char(xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL) AND xact_start < "
        "$1::timestamptz ORDER BY xact_start LIMIT 1",
        1, NULL, vals, NULL, NULL, 0);
    int pid = 0;

    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        pid = atoi(PQgetvalue(res, 0, 0));
        snprintf(since, 40, "%s", PQgetvalue(res, 0, 1));
    }
    PQclear(res);
    return pid;
}

/* VACUUM VERBOSE's report of a table: its DETAIL starts with the dead row
 * versions it could not remove yet (an open snapshot may see them). In a
 * language whose message does not start with the number, none is read. */
static void count_kept(void *arg, const PGresult *res)
{
    const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    long *kept = arg;
    char *end;
    double n;

    if (detail == NULL)
        return;
    n = strtod(detail, &end);
    if (end != detail && strstr(end, "cannot be removed") != NULL && n > 0)
        *kept += (long)n;
}

/* What a purge emptied is rewritten into new files: the old row versions,
 * which still hold the wrapped keys, are not left in the tables' files.
 * VACUUM FULL copies a row version some open snapshot may still see, so it
 * waits first (up to 30 s) until no transaction that began before it holds
 * one; sessions of other roles are seen with pg_read_all_stats. */
kc_rc kc_pg_scrub(kc_store *s, kc_error *err)
{
    struct timespec pause = {0, 100 * 1000 * 1000};
    char now[64] = "", since[40] = "";
    PGresult *res = PQexec(s->pg, "SELECT statement_timestamp()::text");
    int pid = 0, i;
    kc_rc r;

    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        snprintf(now, sizeof(now), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (now[0] == '\0')
        return pg_fail(s, "read the time", NULL, err);
    for (i = 0; i < 300 && (pid = old_snapshot(s, now, since)) != 0; i++)
        (void)nanosleep(&pause, NULL);
    if (pid != 0) {
        kc_error_set(err, KC_CONFLICT,
                     "the service store %s: session %d has had a transaction open since %s, "
                     "which may still see the old rows",
                     s->shown, pid, since);
        kc_error_hint(err, "run the purge again when that transaction has ended");
        return KC_CONFLICT;
    }
    /* sessions this role cannot see (autovacuum's ANALYZE, other roles)
     * hold snapshots too: VACUUM FULL says how many dead row versions it
     * had to keep, and is run again until it kept none */
    for (i = 0; i < 150; i++) {
        long kept = 0;

        PQsetNoticeReceiver(s->pg, count_kept, &kept);
        r = kc_pg_exec(s, "VACUUM (FULL, VERBOSE) dep_keys, scopes, assignments", err);
        PQsetNoticeProcessor(s->pg, quiet, NULL);
        if (r != KC_OK)
            return kc_error_prefix(err, "cannot rewrite the tables that held wrapped keys");
        if (kept == 0)
            return KC_OK;
        (void)nanosleep(&pause, NULL);
        (void)nanosleep(&pause, NULL);
    }
    kc_error_set(err, KC_CONFLICT,
                 "the service store %s: another transaction can still see old rows of the "
                 "tables that held wrapped keys, so they could not all be removed",
                 s->shown);
    kc_error_hint(err, "run the purge again when the database's long transactions have ended");
    return KC_CONFLICT;
}
