#include "kc_store_int.h"
#include "kc_util.h"

#include <openssl/crypto.h>
#include <openssl/hmac.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Schema version 1: the DEP side of Customer Key; 2: vault pins; 3: row MACs
 * (kc_store_int.h), the DEP key check value and the store's service vault.
 * Each entry of migrations[] takes the store from version i to i + 1. */
static const char *const migrations[] = {
    "CREATE TABLE deps ("
    "  id TEXT PRIMARY KEY," /* GUID */
    "  name TEXT NOT NULL UNIQUE,"
    /* service: the service-managed key that a tenant's scopes move to when it offboards */
    "  workload TEXT NOT NULL CHECK (workload IN ('tenant', 'exchange', 'sharepoint', 'service')),"
    "  principal TEXT," /* the service principal that wraps and unwraps its key */
    "  geo TEXT,"
    "  description TEXT NOT NULL DEFAULT '',"
    "  enabled INTEGER NOT NULL DEFAULT 1,"
    "  created TEXT NOT NULL,"
    "  generation INTEGER NOT NULL DEFAULT 1," /* of the DEP key: a roll makes a new one */
    "  purge_requested TEXT, purge_reason TEXT, purge_contact TEXT, purged TEXT);"
    "CREATE TABLE dep_keys (" /* the DEP key wrapped three ways */
    "  dep_id TEXT NOT NULL REFERENCES deps(id),"
    "  generation INTEGER NOT NULL,"
    "  slot INTEGER NOT NULL CHECK (slot IN (0, 1, 2))," /* 0: vault A, 1: vault B, 2: availability
                                                          */
    "  vault TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL, alg TEXT NOT NULL,"
    "  wrapped BLOB NOT NULL,"
    "  PRIMARY KEY (dep_id, generation, slot));"
    "CREATE TABLE assignments ("
    "  scope TEXT PRIMARY KEY," /* tenant | mailbox:ID | geo:CODE */
    "  dep_id TEXT NOT NULL REFERENCES deps(id));"
    "CREATE TABLE scopes ("
    "  scope TEXT PRIMARY KEY,"
    "  dep_id TEXT NOT NULL REFERENCES deps(id),"
    "  dep_generation INTEGER NOT NULL,"
    "  wrapped_key BLOB NOT NULL," /* the scope key under the DEP key (AES-KWP) */
    "  purged TEXT);"              /* when its DEP was purged: wrapped_key is then empty */
    "CREATE TABLE items ("
    "  scope TEXT NOT NULL REFERENCES scopes(scope),"
    "  name TEXT NOT NULL,"
    "  header BLOB NOT NULL," /* per-item key under the scope key, AAD */
    "  ciphertext BLOB NOT NULL,"
    "  PRIMARY KEY (scope, name));"
    "CREATE TABLE rewrap_progress ("
    "  job TEXT PRIMARY KEY, started TEXT NOT NULL, done INTEGER NOT NULL, total INTEGER NOT "
    "NULL);"
    "CREATE TABLE break_glass (" /* each use of an availability key */
    "  at TEXT NOT NULL, dep_id TEXT NOT NULL, principal TEXT);"
    /* Where each scope's key should be: under the current generation of its
     * effective DEP (its own assignment, else for a mailbox the tenant's). */
    "CREATE VIEW scope_targets AS SELECT s.scope, s.dep_id, s.dep_generation, s.purged, "
    "  e.id AS target_id, e.generation AS target_generation, e.purge_requested AS "
    "  target_purge_requested FROM scopes s LEFT JOIN deps e ON "
    "  e.id = coalesce((SELECT dep_id FROM assignments a WHERE a.scope = s.scope), "
    "    CASE WHEN s.scope LIKE 'mailbox:%' THEN "
    "      (SELECT dep_id FROM assignments a WHERE a.scope = 'tenant') END);",
    /* 2: the vault key fingerprint of each vault, as first seen (kc_manifest.h) */
    "CREATE TABLE vault_pins ("
    "  vault TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, first_seen TEXT NOT NULL);",
    /* 3: each row that decides what is wrapped or unwrapped carries a MAC
     * under the service vault's row key; each wrapped copy the check value
     * of the DEP key it wraps, the same in every slot */
    "ALTER TABLE deps ADD COLUMN mac BLOB;"
    "ALTER TABLE dep_keys ADD COLUMN kcv BLOB;"
    "ALTER TABLE dep_keys ADD COLUMN mac BLOB;"
    "ALTER TABLE assignments ADD COLUMN mac BLOB;"
    "ALTER TABLE break_glass ADD COLUMN mac BLOB;"
    "ALTER TABLE rewrap_progress ADD COLUMN mac BLOB;"
    "CREATE TABLE store_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);",
};
#define N_MIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

static kc_rc db_fail(kc_store *s, const char *what, kc_error *err)
{
    return kc_error_set(err, KC_ERR, "the service store: cannot %s: %s", what, kc_store_errmsg(s));
}

kc_rc kc_store_exec(kc_store *s, const char *sql, kc_error *err)
{
    char *msg = NULL;

    if (s->pg != NULL)
        return kc_pg_exec(s, sql, err);
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        kc_error_set(err, KC_ERR, "the service store: %s", msg ? msg : "SQL error");
        sqlite3_free(msg);
        return KC_ERR;
    }
    return KC_OK;
}

/* IMMEDIATE, so two writers queue rather than deadlock. */
kc_rc kc_store_begin(kc_store *s, kc_error *err)
{
    return s->pg != NULL ? kc_pg_begin(s, 0, err) : kc_store_exec(s, "BEGIN IMMEDIATE", err);
}

/* On SQLite one writer at a time still; on PostgreSQL workers share. */
kc_rc kc_store_begin_shared(kc_store *s, kc_error *err)
{
    return s->pg != NULL ? kc_pg_begin(s, 1, err) : kc_store_exec(s, "BEGIN IMMEDIATE", err);
}

kc_rc kc_store_commit(kc_store *s, kc_error *err)
{
    return s->pg != NULL ? kc_pg_commit(s, err) : kc_store_exec(s, "COMMIT", err);
}

void kc_store_rollback(kc_store *s)
{
    kc_error ignored;

    if (kc_store_exec(s, "ROLLBACK", &ignored) != KC_OK)
        kc_error_clear(&ignored);
}

static kc_rc read_version(kc_store *s, int *version, kc_error *err)
{
    kc_q *st = NULL;
    int rc;

    if (s->pg != NULL)
        return kc_pg_version(s, version, err);
    *version = 0;
    if (kc_q_prepare(s, "PRAGMA user_version", &st) != KC_Q_OK)
        return db_fail(s, "read its schema version", err);
    rc = kc_q_step(st);
    if (rc == KC_Q_ROW)
        *version = (int)kc_q_int(st, 0);
    kc_q_finish(st);
    if (rc != KC_Q_ROW)
        return db_fail(s, "read its schema version", err);
    return KC_OK;
}

static kc_rc migrate_step(kc_store *s, kc_error *err)
{
    char sql[64];
    kc_rc r;

    if (s->pg != NULL)
        return kc_pg_migrate_step(s, migrations[s->schema], s->schema + 1, err);
    r = kc_store_exec(s, migrations[s->schema], err);

    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", s->schema + 1);
    return r == KC_OK ? kc_store_exec(s, sql, err) : r;
}

/* Each step in its own transaction with the version it reaches; the version
 * is read again in it, so two processes opening a new store migrate it once. */
static kc_rc migrate(kc_store *s, kc_error *err)
{
    kc_rc r;

    while (s->schema < N_MIGRATIONS) {
        r = kc_store_begin(s, err);
        if (r == KC_OK)
            r = read_version(s, &s->schema, err);
        if (r == KC_OK && s->schema < N_MIGRATIONS)
            r = migrate_step(s, err);
        if (r == KC_OK)
            r = kc_store_commit(s, err);
        if (r != KC_OK) {
            kc_store_rollback(s);
            return kc_error_prefix(err, "cannot bring the service store to schema %d",
                                   s->schema + 1);
        }
        r = read_version(s, &s->schema, err);
        if (r != KC_OK)
            return r;
    }
    return KC_OK;
}

/* The store file as keycustody made it: a regular file (no link), the
 * caller's, and nobody else may write it. Anyone who can write it could
 * plant rows, triggers or a schema of their own. */
static kc_rc check_file(int fd, const char *path, kc_error *err)
{
    struct stat st;

    if (fstat(fd, &st) != 0)
        return kc_error_set(err, KC_ERR, "cannot stat the service store '%s': %s", path,
                            strerror(errno));
    if (!S_ISREG(st.st_mode))
        return kc_error_set(err, KC_DENIED, "the service store '%s' is %s, not a regular file",
                            path, kc_file_kind(st.st_mode));
    if (st.st_uid != geteuid()) {
        kc_error_set(err, KC_DENIED,
                     "the service store '%s' is owned by uid %u, not by you (uid %u)", path,
                     (unsigned)st.st_uid, (unsigned)geteuid());
        kc_error_hint(err, "run keycustody as the user that owns the store");
        return KC_DENIED;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        kc_error_set(err, KC_DENIED,
                     "the service store '%s' has mode %04o: others can write it, so its content "
                     "is not believed",
                     path, (unsigned)(st.st_mode & 07777));
        kc_error_hint(err, "check it was not changed, then: chmod 600 '%s'", path);
        return KC_DENIED;
    }
    return KC_OK;
}

/* Tables (PostgreSQL: relations) come first in both listings
 * (KC_SCHEMA_ORDER_SQLITE, KC_SCHEMA_ORDER_PG), so an added table is named
 * as one, not by its first column or index. */
static int table_rank(const char *type)
{
    return strcmp(type, "table") == 0 || strcmp(type, "relation") == 0 ? 0 : 1;
}

/* Compares two (type, name, definition) lists, each in the order above
 * (tables first, then type and name): the first difference says which
 * side has an object the other lacks, or whose definition differs. a is
 * the store's, b the reference's. */
kc_rc kc_store_schema_compare(kc_store *s, kc_q *a, kc_q *b, kc_error *err)
{
    const char *ta, *na, *tb, *nb, *what, *name, *how;
    int c, ra, rb;

    for (;;) {
        what = name = how = NULL;
        ra = kc_q_step(a);
        rb = kc_q_step(b);
        if (ra == KC_Q_ERROR || rb == KC_Q_ERROR)
            return db_fail(s, "read its schema", err);
        if (ra != KC_Q_ROW && rb != KC_Q_ROW)
            return KC_OK;
        ta = ra == KC_Q_ROW ? (const char *)kc_q_text(a, 0) : NULL;
        na = ra == KC_Q_ROW ? (const char *)kc_q_text(a, 1) : NULL;
        tb = rb == KC_Q_ROW ? (const char *)kc_q_text(b, 0) : NULL;
        nb = rb == KC_Q_ROW ? (const char *)kc_q_text(b, 1) : NULL;
        c = ta == NULL                         ? 1
            : tb == NULL                       ? -1
            : table_rank(ta) != table_rank(tb) ? table_rank(ta) - table_rank(tb)
            : strcmp(ta, tb) != 0              ? strcmp(ta, tb)
                                               : strcmp(na, nb);
        if (c < 0)
            what = ta, name = na, how = "was added";
        else if (c > 0)
            what = tb, name = nb, how = "is missing";
        else if (strcmp((const char *)kc_q_text(a, 2), (const char *)kc_q_text(b, 2)) != 0)
            what = ta, name = na, how = "differs";
        if (what != NULL)
            return kc_error_set(err, KC_INTEGRITY,
                                "the service store %s does not have the schema keycustody "
                                "made: %s '%s' %s; it was changed outside keycustody",
                                s->shown, what, name, how);
    }
}

/* The schema is exactly what the migrations made: no table, index, view or
 * trigger of anyone else's (a trigger would run inside keycustody on its own
 * writes). Compared against the migrations run on an empty in-memory store. */
static kc_rc check_schema(kc_store *s, kc_error *err)
{
    static const char q[] = "SELECT type, name, coalesce(sql, '') FROM sqlite_master "
                            "WHERE name NOT LIKE 'sqlite_%' ORDER BY " KC_SCHEMA_ORDER_SQLITE;
    kc_store ref = {0};
    kc_q *a = NULL, *b = NULL;
    int i;
    kc_rc r = KC_OK;

    if (s->pg != NULL)
        return kc_pg_check_schema(s, migrations, s->schema, err);
    if (sqlite3_open_v2(":memory:", &ref.db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
        r = kc_error_set(err, KC_ERR, "out of memory");
    for (i = 0; r == KC_OK && i < s->schema; i++)
        if (sqlite3_exec(ref.db, migrations[i], NULL, NULL, NULL) != SQLITE_OK)
            r = kc_error_set(err, KC_ERR, "cannot build the reference schema");
    if (r == KC_OK && (kc_q_prepare(s, q, &a) != KC_Q_OK || kc_q_prepare(&ref, q, &b) != KC_Q_OK))
        r = db_fail(s, "read its schema", err);
    if (r == KC_OK)
        r = kc_store_schema_compare(s, a, b, err);
    kc_q_finish(a);
    kc_q_finish(b);
    kc_q_free_all(&ref);
    sqlite3_close(ref.db);
    return r;
}

/* The SQLite file: made 0600, checked, opened so that nothing in it can
 * make SQLite do more than read and write rows. */
static kc_rc open_sqlite(kc_store *s, const char *path, kc_error *err)
{
    int fd;
    kc_rc r;

    /* Created 0600 before SQLite sees it: the store names every DEP and scope. */
    fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
    if (fd < 0 && errno == ELOOP) {
        kc_error_set(err, KC_DENIED, "the service store '%s' is a symbolic link", path);
        kc_error_hint(err, "name the file itself, not a link to it");
        return KC_DENIED;
    }
    if (fd < 0)
        return kc_error_set(err, errno == ENOENT ? KC_NOT_FOUND : KC_ERR,
                            "cannot open the service store '%s': %s", path, strerror(errno));
    r = check_file(fd, path, err);
    close(fd);
    if (r != KC_OK)
        return r;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW, NULL) !=
        SQLITE_OK)
        return db_fail(s, "open it", err);
    /* Nothing in the file may make SQLite do more than read and write rows:
     * defensive mode (no writes to the schema or to shadow tables), functions
     * and virtual tables in the schema not trusted, no triggers. */
    if (sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL) != SQLITE_OK ||
        sqlite3_db_config(s->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL) != SQLITE_OK ||
        sqlite3_db_config(s->db, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, NULL) != SQLITE_OK)
        return db_fail(s, "make it safe to open", err);
    sqlite3_busy_timeout(s->db, 10000);
    r = kc_store_exec(s,
                      "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; "
                      "PRAGMA synchronous = FULL; PRAGMA secure_delete = ON",
                      err);
    if (r != KC_OK) {
        /* SQLite's own words, not err's (which this call overwrites) */
        r = kc_error_set(err, KC_INTEGRITY, "'%s' is not a keycustody service store (SQLite: %s)",
                         path, kc_store_errmsg(s));
        kc_error_hint(err, "name the store keycustody made (--store, KEYCUSTODY_STORE, the "
                           "layout's store:), or restore it from a backup");
    }
    return r;
}

int kc_store_is_uri(const char *path)
{
    return strncmp(path, "postgresql://", 13) == 0 || strncmp(path, "postgres://", 11) == 0;
}

kc_rc kc_store_open(const char *path, kc_store **out, kc_error *err)
{
    kc_store *s = NULL;
    kc_rc r;

    *out = NULL;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    if (kc_store_is_uri(path)) {
        kc_pg_shown(path, s->shown, sizeof(s->shown));
        r = kc_pg_open(s, path, err);
    } else {
        snprintf(s->shown, sizeof(s->shown), "'%s'", path);
        r = open_sqlite(s, path, err);
    }
    if (r == KC_OK)
        r = read_version(s, &s->schema, err);
    if (r == KC_OK && s->schema > N_MIGRATIONS) {
        r = kc_error_set(err, KC_INTEGRITY,
                         "the service store %s has schema %d; this "
                         "keycustody knows up to %d",
                         s->shown, s->schema, N_MIGRATIONS);
        kc_error_hint(err, "use the keycustody that wrote it, or a newer one");
    }
    if (r == KC_OK)
        r = check_schema(s, err);
    if (r == KC_OK)
        r = migrate(s, err);
    if (r == KC_OK)
        r = kc_store_meta_get(s, "service_vault", s->service_vault, sizeof(s->service_vault), err);
    if (r != KC_OK) {
        kc_store_close(s);
        return r;
    }
    *out = s;
    return KC_OK;
}

void kc_store_close(kc_store *s)
{
    if (s == NULL)
        return;
    kc_q_free_all(s);
    sqlite3_close(s->db);
    if (s->pg != NULL)
        PQfinish(s->pg);
    kc_secret_free(s->mac);
    free(s);
}

int kc_store_schema(const kc_store *s)
{
    return s->schema;
}

kc_rc kc_store_count(kc_store *s, const char *table, long *n, kc_error *err)
{
    kc_q *st = NULL;
    char sql[128];
    int rc;

    *n = 0;
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM \"%s\"", table);
    if (strchr(table, '"') != NULL || kc_q_prepare(s, sql, &st) != KC_Q_OK)
        return db_fail(s, "count rows", err);
    rc = kc_q_step(st);
    if (rc == KC_Q_ROW)
        *n = kc_q_int(st, 0);
    kc_q_finish(st);
    return rc == KC_Q_ROW ? KC_OK : db_fail(s, "count rows", err);
}

kc_rc kc_store_scrub(kc_store *s, kc_error *err)
{
    int log = 0, done = 0;

    if (s->pg != NULL)
        return kc_pg_scrub(s, err);
    if (sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, &log, &done) !=
            SQLITE_OK ||
        log != 0)
        return db_fail(s, "empty its write-ahead log (another process has it open?)", err);
    return KC_OK;
}

kc_rc kc_store_pins_load(kc_store *s, kc_ctx *ctx, kc_error *err)
{
    kc_q *st = NULL;
    kc_rc r = KC_OK;

    if (kc_q_prepare(s, "SELECT vault, fingerprint FROM vault_pins", &st) != KC_Q_OK)
        return db_fail(s, "read its vault pins", err);
    while (r == KC_OK && kc_q_step(st) == KC_Q_ROW)
        r = kc_ctx_pin_fingerprint(ctx, (const char *)kc_q_text(st, 0),
                                   (const char *)kc_q_text(st, 1), err);
    kc_q_finish(st);
    if (r == KC_CONFLICT)
        kc_error_hint(err, "the layout and the service store pin different vault keys: compare "
                           "both with 'vault show' out of band");
    return r;
}

kc_rc kc_store_pin_record(kc_store *s, const char *vault, const char *fingerprint, kc_error *err)
{
    kc_q *st = NULL;
    char now[21];
    int rc;

    kc_time_format_rfc3339(time(NULL), now);
    if (kc_q_prepare(s,
                     "INSERT INTO vault_pins (vault, fingerprint, first_seen) VALUES (?, ?, "
                     "?) ON CONFLICT (vault) DO NOTHING",
                     &st) != KC_Q_OK)
        return db_fail(s, "record a vault pin", err);
    kc_q_bind_text(st, 1, vault);
    kc_q_bind_text(st, 2, fingerprint);
    kc_q_bind_text(st, 3, now);
    rc = kc_q_step(st);
    kc_q_finish(st);
    return rc == KC_Q_DONE ? KC_OK : db_fail(s, "record a vault pin", err);
}

/* --- row authentication --- */

static void row_put(kc_row *r, const void *p, size_t n)
{
    unsigned char *nb;
    size_t cap;

    if (r->oom)
        return;
    if (r->len + n > r->cap) {
        cap = (r->len + n) * 2 + 64;
        nb = realloc(r->buf, cap);
        if (nb == NULL) {
            r->oom = 1;
            return;
        }
        r->buf = nb;
        r->cap = cap;
    }
    if (n > 0)
        memcpy(r->buf + r->len, p, n);
    r->len += n;
}

static void row_tagged(kc_row *r, char tag, const void *p, size_t n)
{
    unsigned char h[5] = {(unsigned char)tag, (unsigned char)(n >> 24), (unsigned char)(n >> 16),
                          (unsigned char)(n >> 8), (unsigned char)n};

    row_put(r, h, sizeof(h));
    row_put(r, p, n);
}

void kc_row_init(kc_row *r, const char *table)
{
    memset(r, 0, sizeof(*r));
    row_tagged(r, 't', table, strlen(table));
}

void kc_row_null(kc_row *r)
{
    row_put(r, "n", 1);
}

void kc_row_int(kc_row *r, long long v)
{
    unsigned char b[9] = {'i'};
    int i;

    for (i = 0; i < 8; i++)
        b[1 + i] = (unsigned char)((unsigned long long)v >> (56 - 8 * i));
    row_put(r, b, sizeof(b));
}

void kc_row_text(kc_row *r, const char *s)
{
    if (s == NULL)
        kc_row_null(r);
    else
        row_tagged(r, 't', s, strlen(s));
}

void kc_row_text_opt(kc_row *r, const char *s)
{
    kc_row_text(r, s != NULL && s[0] != '\0' ? s : NULL);
}

void kc_row_blob(kc_row *r, const void *p, size_t n)
{
    if (p == NULL)
        kc_row_null(r);
    else
        row_tagged(r, 'b', p, n);
}

void kc_row_col(kc_row *r, kc_q *s, int col)
{
    switch (kc_q_type(s, col)) {
    case KC_Q_INTEGER:
        kc_row_int(r, kc_q_int(s, col));
        break;
    case KC_Q_TEXT:
        row_tagged(r, 't', kc_q_text(s, col), (size_t)kc_q_bytes(s, col));
        break;
    case KC_Q_BLOB:
        /* a zero-length blob has no pointer, and is still a blob */
        row_tagged(r, 'b', kc_q_blob(s, col), (size_t)kc_q_bytes(s, col));
        break;
    case KC_Q_NULL:
        kc_row_null(r);
        break;
    default: /* a float: keycustody writes none */
        row_put(r, "f", 1);
        break;
    }
}

void kc_row_cols(kc_row *r, kc_q *s, int first, int n)
{
    int i;

    for (i = 0; i < n; i++)
        kc_row_col(r, s, first + i);
}

static void row_free(kc_row *r)
{
    free(r->buf);
    memset(r, 0, sizeof(*r));
}

static kc_rc no_row_key(kc_store *st, kc_error *err)
{
    kc_error_set(err, KC_USAGE,
                 "the service store's rows are authenticated by service vault '%s', and this "
                 "command has not opened it",
                 st->service_vault[0] ? st->service_vault : "(none recorded)");
    kc_error_hint(err,
                  "give the service vault's PIN source: --pin-source %s=file:PATH (or "
                  "KEYCUSTODY_SERVICE_PIN_SOURCE)",
                  st->service_vault[0] ? st->service_vault : "SERVICE");
    return KC_USAGE;
}

kc_rc kc_row_seal(kc_store *st, kc_row *r, unsigned char mac[32], kc_error *err)
{
    unsigned int len = 0;
    kc_rc rc = KC_OK;

    if (st->mac == NULL)
        rc = no_row_key(st, err);
    else if (r->oom)
        rc = kc_error_set(err, KC_ERR, "out of memory");
    else if (HMAC(EVP_sha256(), st->mac->data, (int)st->mac->len, r->buf, r->len, mac, &len) ==
                 NULL ||
             len != 32)
        rc = kc_error_set(err, KC_ERR, "cannot compute a row MAC");
    row_free(r);
    return rc;
}

kc_rc kc_row_check(kc_store *st, kc_row *r, kc_q *s, int mac_col, const char *what, kc_error *err)
{
    unsigned char want[32];
    const void *have;
    kc_rc rc;

    if (st->mac == NULL && st->unchecked_ok) {
        row_free(r);
        return KC_OK;
    }
    rc = kc_row_seal(st, r, want, err);
    if (rc != KC_OK)
        return rc;
    have = kc_q_blob(s, mac_col);
    if (kc_q_type(s, mac_col) != KC_Q_BLOB || kc_q_bytes(s, mac_col) != 32 ||
        CRYPTO_memcmp(have, want, 32) != 0) {
        kc_error_set(err, KC_INTEGRITY,
                     "the service store's %s %s: it was made or changed outside keycustody, "
                     "and is not used",
                     what, kc_q_type(s, mac_col) == KC_Q_NULL ? "has no MAC" : "fails its MAC");
        kc_error_hint(err, "keep a copy of the store for investigation; restore it from a "
                           "backup made by keycustody");
        return KC_INTEGRITY;
    }
    return KC_OK;
}

void kc_store_allow_unchecked(kc_store *st)
{
    st->unchecked_ok = 1;
}

int kc_store_checked(const kc_store *st)
{
    return st->mac != NULL;
}

kc_rc kc_store_meta_get(kc_store *st, const char *name, char *out, size_t cap, kc_error *err)
{
    kc_q *q = NULL;
    int rc;

    out[0] = '\0';
    if (kc_q_prepare(st, "SELECT value FROM store_meta WHERE name = ?", &q) != KC_Q_OK)
        return db_fail(st, "read its own record", err);
    kc_q_bind_text(q, 1, name);
    rc = kc_q_step(q);
    if (rc == KC_Q_ROW)
        snprintf(out, cap, "%s", (const char *)kc_q_text(q, 0));
    kc_q_finish(q);
    return rc == KC_Q_ROW || rc == KC_Q_DONE ? KC_OK : db_fail(st, "read its own record", err);
}

kc_rc kc_store_meta_set(kc_store *st, const char *name, const char *value, kc_error *err)
{
    kc_q *q = NULL;
    int rc;

    if (kc_q_prepare(st,
                     "INSERT INTO store_meta (name, value) VALUES (?, ?) ON CONFLICT (name) "
                     "DO UPDATE SET value = excluded.value",
                     &q) != KC_Q_OK)
        return db_fail(st, "write its own record", err);
    kc_q_bind_text(q, 1, name);
    kc_q_bind_text(q, 2, value);
    rc = kc_q_step(q);
    kc_q_finish(q);
    return rc == KC_Q_DONE ? KC_OK : db_fail(st, "write its own record", err);
}
