/* Data under a DEP: items per second through kc_data_put / kc_data_get
 * (AES-256-GCM per item, its key wrapped by the scope key, one durable store
 * transaction per put) next to OpenSSL's raw AES-256-GCM on the same item
 * size; and the re-wrap job over many scope keys next to OpenSSL's raw AES
 * key unwrap + wrap of as many keys. All in one run, on this machine. Not a
 * test: it reports, it does not judge.
 *
 *   build/bench_data [--seconds N] [--scopes N] [--worker-scopes N] [--rounds R]
 *
 * Then the re-wrap job with several workers: 1 on the SQLite store, 1, 2
 * and 4 on a PostgreSQL store (a private server, scripts/postgres.sh),
 * each worker a process of its own (this program again, --worker STORE),
 * against OpenSSL's raw unwrap + wrap; the figures measured in rounds, one
 * of each per round in turn, each after a roll, and the medians reported.
 *
 * Makes its own token directory, store and cluster under $TMPDIR and
 * removes them. */
#include "bench_common.h"
#include "kc_data.h"
#include "kc_key.h"
#include "kc_rewrap.h"
#include "kc_store_int.h"
#include "kc_vault.h"

#include <libpq-fe.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <stdio.h>
#include <stdlib.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static double seconds = 3.0;
static long nscopes = 100000, worker_scopes = 20000;
static int rounds = 3;

static char pg_dir[600]; /* the private server's, while it runs */

static void pg_stop(void);

static void die(const char *what, const kc_error *e)
{
    pg_stop();
    fprintf(stderr, "bench: %s: %s\n", what, e ? e->msg : "failed");
    exit(1);
}

/* --- OpenSSL baselines --- */

static int gcm_once(int enc, const unsigned char *in, size_t len, unsigned char *out,
                    unsigned char *tag)
{
    unsigned char key[32], nonce[12];
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, m = 0, ok;

    RAND_bytes(key, sizeof(key));
    RAND_bytes(nonce, sizeof(nonce));
    ok = EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce, enc) == 1 &&
         EVP_CipherUpdate(c, out, &n, in, (int)len) == 1 &&
         (enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1);
    /* a decryption under a random key fails its tag: the work is done all the same */
    (void)EVP_CipherFinal_ex(c, out + n, &m);
    if (enc)
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag);
    EVP_CIPHER_CTX_free(c);
    return ok;
}

static double openssl_gcm(int enc, size_t len)
{
    unsigned char *in = malloc(len), *out = malloc(len + 16), tag[16] = {0};
    double end, start = bench_now();
    long n = 0;

    RAND_bytes(in, (int)len);
    end = start + seconds;
    while (bench_now() < end && gcm_once(enc, in, len, out, tag))
        n++;
    free(in);
    free(out);
    return (double)n / (bench_now() - start);
}

static int kwp(const unsigned char *kek, int enc, const unsigned char *in, size_t len,
               unsigned char *out)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, m = 0, ok;

    ok = EVP_CipherInit_ex(c, EVP_aes_256_wrap_pad(), NULL, kek, NULL, enc) == 1 &&
         EVP_CipherUpdate(c, out, &n, in, (int)len) == 1 && EVP_CipherFinal_ex(c, out + n, &m) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok;
}

/* Unwrap under one key and wrap under another, for count keys. */
static double openssl_rewrap(long count)
{
    unsigned char a[32], b[32], key[32], w[40], x[40];
    double start;
    long i;

    RAND_bytes(a, 32);
    RAND_bytes(b, 32);
    RAND_bytes(key, 32);
    kwp(a, 1, key, 32, w);
    start = bench_now();
    for (i = 0; i < count; i++)
        if (!kwp(a, 0, w, 40, key) || !kwp(b, 1, key, 32, x))
            return 0;
    return (double)count / (bench_now() - start);
}

/* --- keycustody --- */

static void make_vault(kc_ctx *ctx, const char *name, const char *sub, const char *region)
{
    kc_vault_meta m;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    kc_error e;
    int adopted;
    kc_key_create_opts o = {"Root", 2048, KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL};

    memset(&m, 0, sizeof(m));
    snprintf(m.name, sizeof(m.name), "%s", name);
    snprintf(m.subscription, sizeof(m.subscription), "%s", sub);
    snprintf(m.region, sizeof(m.region), "%s", region);
    m.retention_days = 90;
    if (kc_vault_init(ctx, &m, NULL, &v, &adopted, &e) != KC_OK)
        die("vault init", &e);
    if (strcmp(name, "BenchS") != 0 && kc_key_create(v, &o, &k, &e) != KC_OK)
        die("key create", &e);
    kc_key_free(k);
    kc_vault_free(v);
}

static double kc_items(kc_data_session *ds, int put, size_t len, long *made)
{
    unsigned char *buf = malloc(len);
    kc_secret *got = NULL;
    char name[32];
    double end, start = bench_now();
    long n = 0;
    kc_error e;

    RAND_bytes(buf, (int)len);
    end = start + seconds;
    while (bench_now() < end) {
        snprintf(name, sizeof(name), "item-%zu-%ld", len, put ? n : n % *made);
        if (put ? kc_data_put(ds, "tenant", name, buf, len, &e)
                : kc_data_get(ds, "tenant", name, &got, &e))
            die(put ? "data put" : "data get", &e);
        kc_secret_free(got);
        got = NULL;
        n++;
    }
    free(buf);
    if (put)
        *made = n;
    return (double)n / (bench_now() - start);
}

/* The benchmark's DEP: tenant, over the root keys of BenchA and BenchB,
 * its availability key on BenchS. */
static void bench_spec(kc_dep_spec *spec)
{
    static const char *const keys[2] = {"BenchA/Root", "BenchB/Root"};

    memset(spec, 0, sizeof(*spec));
    spec->name = "Bench";
    spec->workload = "tenant";
    spec->keys[0] = keys[0];
    spec->keys[1] = keys[1];
    spec->service_vault = "BenchS";
}

/* count scopes, each with a scope key under the DEP key (as kc_data makes
 * them), written in one transaction, on either backend. */
static void fill_scopes(kc_ctx *ctx, kc_store *st, const kc_dep *dep, long count)
{
    unsigned char key[32], wrapped[40];
    kc_dep_unwrap_info info;
    kc_secret *dek = NULL;
    kc_q *q = NULL;
    char scope[32];
    kc_error e;
    long i;

    if (kc_dep_unwrap(ctx, st, dep->id, dep->generation, NULL, 0, &dek, &info, &e) != KC_OK)
        die("DEP unwrap", &e);
    if (kc_store_begin(st, &e) != KC_OK)
        die("store", &e);
    for (i = 0; i < count; i++) {
        snprintf(scope, sizeof(scope), "mailbox:u%07ld", i);
        RAND_bytes(key, 32);
        if (!kwp(dek->data, 1, key, 32, wrapped))
            die("key wrap", NULL);
        if (kc_q_prepare(st,
                         "INSERT INTO scopes (scope, dep_id, dep_generation, wrapped_key) "
                         "VALUES (?, ?, ?, ?)",
                         &q) != KC_Q_OK)
            die("store", NULL);
        kc_q_bind_text(q, 1, scope);
        kc_q_bind_text(q, 2, dep->id);
        kc_q_bind_int(q, 3, dep->generation);
        kc_q_bind_blob(q, 4, wrapped, 40);
        if (kc_q_step(q) != KC_Q_DONE)
            die("store insert", NULL);
        kc_q_finish(q);
    }
    if (kc_store_commit(st, &e) != KC_OK)
        die("store commit", &e);
    kc_secret_free(dek);
}

/* --- several workers --- */

/* A worker: this program again, given the store; the PINs in its
 * environment (BENCH_SO_PIN, BENCH_PIN), as bench_pin reads them. */
static int worker_main(const char *store)
{
    kc_data_session *ds = NULL;
    kc_store *st = NULL;
    kc_ctx *ctx = NULL;
    const char *so = getenv("BENCH_SO_PIN"), *user = getenv("BENCH_PIN");
    long moved = 0;
    kc_error e;

    if (so == NULL || user == NULL)
        return 2;
    snprintf(bench_so_pin, sizeof(bench_so_pin), "%s", so);
    snprintf(bench_user_pin, sizeof(bench_user_pin), "%s", user);
    if (kc_ctx_new(getenv("KEYCUSTODY_MODULE"), bench_pin, NULL, &ctx, &e) != KC_OK ||
        kc_store_open(store, &st, &e) != KC_OK ||
        kc_data_open(ctx, st, NULL, 0, NULL, NULL, &ds, &e) != KC_OK ||
        kc_rewrap(ds, st, 1000, NULL, NULL, &moved, &e) != KC_OK)
        die("worker", &e);
    kc_data_close(ds);
    kc_store_close(st);
    kc_ctx_free(ctx);
    return 0;
}

/* Scope keys per second of n workers on store, after a roll of Bench. */
static double workers_rate(kc_ctx *ctx, kc_store *st, const char *store, int n)
{
    kc_dep before, after;
    pid_t pids[8];
    double t;
    int i, status, failed = 0;
    kc_error e;

    if (kc_dep_refresh(ctx, st, "Bench", NULL, 1, &before, &after, &e) != KC_OK)
        die("roll", &e);
    fflush(NULL);
    t = bench_now();
    for (i = 0; i < n; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            execl("/proc/self/exe", "bench_data", "--worker", store, (char *)NULL);
            _exit(127);
        }
    }
    for (i = 0; i < n; i++)
        if (waitpid(pids[i], &status, 0) != pids[i] || !WIFEXITED(status) ||
            WEXITSTATUS(status) != 0)
            failed = 1;
    t = bench_now() - t;
    if (failed)
        die("a worker failed", NULL);
    return (double)worker_scopes / t;
}

/* A private PostgreSQL server in dir/pg; its URI into uri. */
static int pg_start(const char *dir, char *uri, size_t cap)
{
    char cmd[1200];
    FILE *p;

    snprintf(cmd, sizeof(cmd), "'%s/scripts/postgres.sh' fresh '%s/pg' 2>/dev/null | tail -n1",
             KC_SOURCE_DIR, dir);
    snprintf(pg_dir, sizeof(pg_dir), "%s/pg", dir); /* pg_stop's, from here on */
    p = popen(cmd, "r");
    if (p == NULL || fgets(uri, (int)cap, p) == NULL) {
        if (p != NULL)
            pclose(p);
        return -1;
    }
    uri[strcspn(uri, "\n")] = '\0';
    return pclose(p) == 0 && strncmp(uri, "postgresql://", 13) == 0 ? 0 : -1;
}

/* Stops the server by its PID (postgres.sh) and removes its cluster; also
 * when the benchmark dies. */
static void pg_stop(void)
{
    char cmd[1300];

    if (pg_dir[0] == '\0')
        return;
    snprintf(cmd, sizeof(cmd), "'%s/scripts/postgres.sh' clean '%s' >/dev/null 2>&1", KC_SOURCE_DIR,
             pg_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench: could not stop the PostgreSQL server in %s\n", pg_dir);
    pg_dir[0] = '\0';
}

#define OPENS 20

/* Milliseconds per kc_store_open + close of where (what every command
 * pays: the connection, the schema version, on PostgreSQL the schema
 * check), over OPENS opens. */
static double kc_open_ms(const char *where)
{
    kc_store *st = NULL;
    double t = bench_now();
    kc_error e;
    int i;

    for (i = 0; i < OPENS; i++) {
        if (kc_store_open(where, &st, &e) != KC_OK)
            die("store open", &e);
        kc_store_close(st);
    }
    return (bench_now() - t) * 1000 / OPENS;
}

/* The same for the backend's own open and one query: libpq's connection,
 * or sqlite3_open_v2 of the file; the baseline. */
static double raw_open_ms(const char *where, int pg)
{
    double t = bench_now();
    sqlite3 *db = NULL;
    PGresult *res;
    PGconn *c;
    int i;

    for (i = 0; i < OPENS; i++) {
        if (pg) {
            c = PQconnectdb(where);
            res = PQexec(c, "SELECT current_schema()");
            if (PQresultStatus(res) != PGRES_TUPLES_OK)
                die("PostgreSQL connection", NULL);
            PQclear(res);
            PQfinish(c);
        } else {
            if (sqlite3_open_v2(where, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK ||
                sqlite3_exec(db, "PRAGMA user_version", NULL, NULL, NULL) != SQLITE_OK)
                die("SQLite open", NULL);
            sqlite3_close(db);
        }
    }
    return (bench_now() - t) * 1000 / OPENS;
}

/* Opening the store on each backend next to its own open, in rounds. */
static void bench_opens(const char *const where[2])
{
    double kc[2][16], raw[2][16], ratio[2][16];
    int r, k;

    printf("\nOpening the service store, ms per open (%d opens a figure, %d rounds, each "
           "figure once\nper round, medians; each ratio within its round). keycustody: "
           "kc_store_open + close (the\nconnection, the schema version; on PostgreSQL the "
           "schema check); backend: its own\nopen and one query (sqlite3_open_v2; libpq's "
           "PQconnectdb over the unix socket)\n",
           OPENS, rounds);
    for (r = 0; r < rounds && r < 16; r++)
        for (k = 0; k < 2; k++) {
            kc[k][r] = kc_open_ms(where[k]);
            raw[k][r] = raw_open_ms(where[k], k);
            ratio[k][r] = kc[k][r] / raw[k][r];
        }
    printf("%-12s %12s %12s %12s\n", "store", "keycustody", "backend", "kc/backend");
    for (k = 0; k < 2; k++)
        printf("%-12s %12.1f %12.1f %12.2f\n", k ? "PostgreSQL" : "SQLite", bench_median(kc[k], r),
               bench_median(raw[k], r), bench_median(ratio[k], r));
}

/* The worker table: SQLite 1, PostgreSQL 1, 2, 4, OpenSSL, in rounds. */
static void bench_workers(kc_ctx *ctx, const char *module, const char *dir, const char *lite_path)
{
    static const int counts[] = {1, 1, 2, 4};
    enum { NFIG = 5 };
    double rate[NFIG][16], ratio[NFIG][16];
    kc_store *stores[2] = {NULL, NULL};
    char uri[1024];
    const char *where[2];
    kc_dep_spec spec;
    kc_dep dep, before;
    kc_error e;
    int r, f, k;

    if (pg_start(dir, uri, sizeof(uri)) != 0) {
        pg_stop();
        fprintf(stderr, "bench: cannot start PostgreSQL (scripts/postgres.sh; scripts/deps.sh "
                        "installs it): no worker table\n");
        return;
    }
    where[0] = lite_path;
    where[1] = uri;
    setenv("KEYCUSTODY_MODULE", module, 1);
    setenv("BENCH_SO_PIN", bench_so_pin, 1);
    setenv("BENCH_PIN", bench_user_pin, 1);
    bench_spec(&spec);
    /* the SQLite store of the figures above, its scopes replaced */
    for (k = 0; k < 2; k++) {
        if (kc_store_open(where[k], &stores[k], &e) != KC_OK)
            die("store", &e);
        if (k == 0) {
            if (kc_store_authenticate(ctx, stores[0], NULL, 0, &e) != KC_OK ||
                kc_store_exec(stores[0], "DELETE FROM items; DELETE FROM scopes", &e) != KC_OK ||
                kc_dep_get(stores[0], "Bench", &dep, &e) != KC_OK)
                die("store", &e);
        } else if (kc_dep_create(ctx, stores[1], &spec, &dep, &e) != KC_OK ||
                   kc_dep_assign(stores[1], "Bench", "tenant", &before, &e) != KC_OK)
            die("PostgreSQL store set-up", &e);
        fill_scopes(ctx, stores[k], &dep, worker_scopes);
    }
    printf("\nRe-wrap of %ld scope keys by several workers (processes, kc_rewrap in batches of "
           "1000),\n%d rounds, each figure once per round after a roll; medians\n",
           worker_scopes, rounds);
    for (r = 0; r < rounds && r < 16; r++) {
        for (f = 0; f < NFIG; f++) {
            if (f == NFIG - 1)
                rate[f][r] = openssl_rewrap(worker_scopes);
            else
                rate[f][r] = workers_rate(ctx, stores[f > 0], where[f > 0], counts[f]);
        }
        fprintf(stderr, "round %d of %d done\n", r + 1, rounds);
    }
    /* each ratio within its round, then the median of the rounds' */
    for (f = 0; f < NFIG - 1; f++)
        for (k = 0; k < r; k++)
            ratio[f][k] = rate[f][k] / rate[NFIG - 1][k];
    printf("%-12s %8s %16s %12s\n", "store", "workers", "keys per second", "vs openssl");
    for (f = 0; f < NFIG - 1; f++)
        printf("%-12s %8d %16.0f %12.4f\n", f == 0 ? "SQLite" : "PostgreSQL", counts[f],
               bench_median(rate[f], r), bench_median(ratio[f], r));
    printf("%-12s %8d %16.0f %12s\n", "openssl", 1, bench_median(rate[NFIG - 1], r), "1");
    kc_store_close(stores[0]);
    kc_store_close(stores[1]);
    bench_opens(where);
    pg_stop();
}

int main(int argc, char **argv)
{
    static const size_t sizes[] = {4096, 1024 * 1024};
    const char *module;
    kc_dep_spec spec;
    kc_data_session *ds = NULL;
    kc_dep dep, before, after;
    kc_store *st = NULL;
    kc_ctx *ctx = NULL;
    char dir[512], path[600];
    double t, kc_rate, raw_rate, kc_r[16], raw_r[16], ratio_r[16];
    long made = 0, moved = 0;
    kc_error e;
    size_t s;
    int i, r;

    if (argc == 3 && strcmp(argv[1], "--worker") == 0)
        return worker_main(argv[2]);
    for (i = 1; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--scopes") == 0)
            nscopes = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--worker-scopes") == 0)
            worker_scopes = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else
            break;
    if (seconds <= 0 || nscopes < 1 || worker_scopes < 1 || rounds < 1 || rounds > 16 ||
        i != argc) {
        fprintf(stderr, "usage: bench_data [--seconds N] [--scopes N] [--worker-scopes N] "
                        "[--rounds R (1-16)]\n");
        return 2;
    }
    if ((module = bench_setup(dir, sizeof(dir))) == NULL)
        return 1;
    if (kc_ctx_new(module, bench_pin, NULL, &ctx, &e) != KC_OK)
        die("module", &e);
    make_vault(ctx, "BenchA", "sub-a", "westus");
    make_vault(ctx, "BenchB", "sub-b", "eastus2");
    make_vault(ctx, "BenchS", "sub-s", "centralus");
    snprintf(path, sizeof(path), "%s/service.db", dir);
    bench_spec(&spec);
    if (kc_store_open(path, &st, &e) != KC_OK || kc_dep_create(ctx, st, &spec, &dep, &e) != KC_OK ||
        kc_dep_assign(st, "Bench", "tenant", &before, &e) != KC_OK ||
        kc_data_open(ctx, st, NULL, 0, NULL, NULL, &ds, &e) != KC_OK)
        die("set-up", &e);

    printf("Items per second under a DEP, %.0f s per figure, 1 thread, %ld CPUs\n"
           "keycustody: kc_data_put / kc_data_get (AES-256-GCM, a per-item key wrapped by the\n"
           "scope key; put commits one store transaction with fsync); openssl: EVP AES-256-GCM\n"
           "of the same size with a fresh key and nonce per item\n",
           seconds, sysconf(_SC_NPROCESSORS_ONLN));
    printf("%-5s %-8s %12s %12s %12s\n", "op", "size", "keycustody", "openssl", "kc/openssl");
    for (s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        for (i = 1; i >= 0; i--) {
            kc_rate = kc_items(ds, i, sizes[s], &made);
            raw_rate = openssl_gcm(i, sizes[s]);
            printf("%-5s %-8s %12.0f %12.0f %12.4f\n", i ? "put" : "get",
                   sizes[s] == 4096 ? "4 KiB" : "1 MiB", kc_rate, raw_rate, kc_rate / raw_rate);
            fflush(stdout);
        }
    }
    printf("(DEP keys unwrapped by RSA for all of that: %zu)\n\n", kc_data_unwraps(ds));

    printf("Re-wrap of %ld scope keys after 'dep refresh --roll' (kc_rewrap, batches of 1000),\n"
           "%d rounds of a roll, the job and OpenSSL's figure; medians, each ratio within its\n"
           "round. openssl: AES key unwrap + wrap (RFC 5649) of as many 32-byte keys, no store\n",
           nscopes, rounds);
    fill_scopes(ctx, st, &dep, nscopes);
    for (r = 0; r < rounds; r++) {
        if (kc_dep_refresh(ctx, st, "Bench", NULL, 1, &before, &after, &e) != KC_OK)
            die("roll", &e);
        t = bench_now();
        if (kc_rewrap(ds, st, 1000, NULL, NULL, &moved, &e) != KC_OK)
            die("rewrap", &e);
        t = bench_now() - t;
        kc_r[r] = (double)moved / t;
        raw_r[r] = openssl_rewrap(nscopes);
        ratio_r[r] = kc_r[r] / raw_r[r];
    }
    printf("%-22s %12s %12s %12s\n", "", "keycustody", "openssl", "kc/openssl");
    printf("%-22s %12.0f %12.0f %12.4f\n", "scope keys per second", bench_median(kc_r, rounds),
           bench_median(raw_r, rounds), bench_median(ratio_r, rounds));
    printf("(%ld scope keys moved per round)\n", moved);

    kc_data_close(ds);
    kc_store_close(st);
    st = NULL;
    bench_workers(ctx, module, dir, path);
    kc_ctx_free(ctx);
    return bench_remove_dir(dir);
}
