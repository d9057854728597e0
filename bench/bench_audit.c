/* What an audit record costs: appends per second to a log on disk, sealed
 * on a SoftHSM token (HMAC on the token, then the vault's anchor moved) and
 * unsealed (chain only), next to the bare on-token HMAC (C_SignInit +
 * C_Sign straight through libkeycustody's token layer) and OpenSSL's
 * HMAC-SHA256 of the same bytes, in the same run. Then what `audit verify`
 * costs (kc_audit_verify: parse, chain, MAC on the token, anchors) over logs
 * of N and 2N records, and a sealed append onto the longer one. Not a test:
 * it reports.
 *
 *   build/bench_audit [--seconds N] [--records N]
 *
 * Makes its own token directory under $TMPDIR and removes it afterwards. */
#include "bench_common.h"
#include "kc_audit.h"
#include "kc_vault.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static double seconds = 3.0;
static long records = 2000;
/* one record in SEAL_EVERY of a verify log is sealed: verify checks its MAC
 * on the token; the rest cost the parse and the chain */
#define SEAL_EVERY 10

static void die(const char *what, const kc_error *e)
{
    fprintf(stderr, "bench: %s: %s\n", what, e ? e->msg : "failed");
    exit(1);
}

/* A record like the one `key create` writes. */
static json_t *sample_fields(void)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:[s,s,s,s,s], s:s, s:s, s:s, s:s, s:i}", "command",
                     "key create", "principal", "contoso-admin", "user", "custodian", "host",
                     "hsm-admin-01", "args", "--size", "3072", "--pin-source",
                     "file:/secure/VaultA1.pin", "VaultA1/TenantKeyA", "vault", "VaultA1", "key",
                     "TenantKeyA", "version", "01a20b0256b73450526259ced2b8b18a", "result", "ok",
                     "code", 0);
}

static double appends(kc_audit *a, const json_t *fields, kc_tok *sealer)
{
    kc_error e, seal;
    double t0 = bench_now(), t;
    long n = 0;

    do {
        if (kc_audit_append(a, fields, sealer, &seal, NULL, &e) != KC_OK)
            die("append", &e);
        if (sealer != NULL && seal.code != KC_OK)
            die("seal", &seal);
        n++;
        t = bench_now() - t0;
    } while (t < seconds);
    return (double)n / t;
}

/* A log of n records at path, one in SEAL_EVERY sealed (the first too). */
static void make_log(const char *path, long n, const json_t *fields, kc_tok *sealer)
{
    kc_audit *a = NULL;
    kc_error e, seal;
    long i;

    if (kc_audit_open(path, &a, &e) != KC_OK)
        die("verify log", &e);
    for (i = 0; i < n; i++) {
        kc_tok *by = i % SEAL_EVERY == 0 ? sealer : NULL;
        if (kc_audit_append(a, fields, by, &seal, NULL, &e) != KC_OK)
            die("verify log", &e);
        if (by != NULL && seal.code != KC_OK)
            die("seal", &seal);
    }
    kc_audit_close(a);
}

/* Records verified per second by kc_audit_verify over the log at path (n
 * records): whole verifications, at least three, for the set time. */
static double verifies(kc_ctx *ctx, const char *path, long n)
{
    kc_audit_summary sum;
    double t0 = bench_now(), t;
    kc_error e;
    long runs = 0;

    do {
        if (kc_audit_verify(ctx, path, &sum, &e) != KC_OK)
            die("verify", &e);
        if (sum.records != n || sum.sealed != (n + SEAL_EVERY - 1) / SEAL_EVERY)
            die("verify: not every record was read", NULL);
        runs++;
        t = bench_now() - t0;
    } while (t < seconds || runs < 3);
    return (double)(n * runs) / t;
}

static double token_hmac(kc_tok *tok, kc_obj key, const char *text)
{
    unsigned char mac[32];
    double t0 = bench_now(), t;
    kc_error e;
    long n = 0;

    do {
        if (kc_tok_hmac(tok, key, (const unsigned char *)text, strlen(text), mac, &e) != KC_OK)
            die("C_Sign", &e);
        n++;
        t = bench_now() - t0;
    } while (t < seconds);
    return (double)n / t;
}

static double openssl_hmac(const char *text)
{
    unsigned char key[32] = {1}, mac[32];
    unsigned int len;
    double t0 = bench_now(), t;
    long n = 0;

    do {
        for (int i = 0; i < 1000; i++)
            HMAC(EVP_sha256(), key, sizeof(key), (const unsigned char *)text, strlen(text), mac,
                 &len);
        n += 1000;
        t = bench_now() - t0;
    } while (t < seconds);
    return (double)n / t;
}

int main(int argc, char **argv)
{
    const char *module;
    char dir[512], path[600], path1[600], path2[600], *line = NULL;
    double sealed, unsealed, tok_rate, ssl_rate, rate1, rate2, sealed2;
    kc_vault_meta m;
    kc_vault *v = NULL;
    kc_audit *a = NULL;
    kc_ctx *ctx = NULL;
    json_t *fields;
    kc_error e, seal;
    kc_obj key;
    int i, adopted;

    for (i = 1; i + 1 < argc; i += 2)
        if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--records") == 0)
            records = atol(argv[i + 1]);
        else
            break;
    if (seconds <= 0 || records < 1 || i != argc) {
        fprintf(stderr, "usage: bench_audit [--seconds N] [--records N]\n");
        return 2;
    }
    if ((module = bench_setup(dir, sizeof(dir))) == NULL)
        return 1;
    memset(&m, 0, sizeof(m));
    snprintf(m.name, sizeof(m.name), "BenchA");
    snprintf(m.subscription, sizeof(m.subscription), "sub-a");
    snprintf(m.region, sizeof(m.region), "westus");
    m.retention_days = 90;
    if (kc_ctx_new(module, bench_pin, NULL, &ctx, &e) != KC_OK ||
        kc_vault_init(ctx, &m, NULL, &v, &adopted, &e) != KC_OK ||
        kc_ctx_login(ctx, v->tok, &e) != KC_OK || kc_audit_key(v->tok, 0, &key, &e) != KC_OK)
        die("set-up", &e);
    snprintf(path, sizeof(path), "%s/audit.jsonl", dir);
    fields = sample_fields();
    if (kc_audit_open(path, &a, &e) != KC_OK ||
        kc_audit_append(a, fields, v->tok, &seal, &line, &e) != KC_OK)
        die("log", &e);

    sealed = appends(a, fields, v->tok);
    unsealed = appends(a, fields, NULL);
    tok_rate = token_hmac(v->tok, key, line);
    ssl_rate = openssl_hmac(line);
    printf("Audit records per second, %.0f s per figure, 1 thread, %ld CPUs; a record of %zu "
           "bytes\n"
           "sealed: kc_audit_append with the vault's audit key (lock, read the last line, check "
           "the\nanchored record, HMAC on the token, write + fsync, move the anchor: a new data "
           "object,\nthe old one destroyed);\nunsealed: the same without the token; token HMAC: kc_tok_hmac alone "
           "(C_SignInit + C_Sign);\nopenssl: HMAC-SHA256 of the same bytes\n",
           seconds, sysconf(_SC_NPROCESSORS_ONLN), strlen(line) + 1);
    printf("%-12s %12s %12s %14s %12s\n", "", "sealed", "unsealed", "token HMAC", "openssl");
    printf("%-12s %12.0f %12.0f %14.0f %12.0f\n", "per second", sealed, unsealed, tok_rate,
           ssl_rate);
    printf("%-12s %12.4f %12.4f %14s %12s\n", "vs token", sealed / tok_rate, unsealed / tok_rate,
           "1", "");
    printf("(a sealed record costs %.2f ms; the HMAC on the token %.3f ms of it)\n",
           1000.0 / sealed, 1000.0 / tok_rate);

    snprintf(path1, sizeof(path1), "%s/verify-n.jsonl", dir);
    snprintf(path2, sizeof(path2), "%s/verify-2n.jsonl", dir);
    make_log(path1, records, fields, v->tok);
    make_log(path2, 2 * records, fields, v->tok);
    rate1 = verifies(ctx, path1, records);
    rate2 = verifies(ctx, path2, 2 * records);
    kc_audit_close(a);
    a = NULL;
    if (kc_audit_open(path2, &a, &e) != KC_OK)
        die("log", &e);
    sealed2 = appends(a, fields, v->tok);
    printf("\naudit verify (kc_audit_verify: parse each record, check the chain, one record in %d "
           "sealed\nwith its MAC checked on the token, then the anchors), at least 3 runs and %.0f "
           "s per figure\n",
           SEAL_EVERY, seconds);
    printf("%-12s %12s %12s %14s\n", "records", "verified/s", "ms per run", "per-record cost");
    printf("%-12ld %12.0f %12.1f %14s\n", records, rate1, 1000.0 * (double)records / rate1, "1");
    printf("%-12ld %12.0f %12.1f %14.2f\n", 2 * records, rate2,
           1000.0 * (double)(2 * records) / rate2, rate1 / rate2);
    printf("(per-record cost: at 2N over at N; linear is 1.00)\n");
    printf("sealed appends per second onto the log of %ld records: %.0f (%.2f ms each; %.0f, "
           "%.2f ms, on the short log above)\n",
           2 * records, sealed2, 1000.0 / sealed2, sealed, 1000.0 / sealed);

    json_decref(fields);
    free(line);
    kc_audit_close(a);
    kc_vault_free(v);
    kc_ctx_free(ctx);
    return bench_remove_dir(dir);
}
