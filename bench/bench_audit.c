/* What an audit record costs: appends per second to a log on disk, sealed
 * on a SoftHSM token (HMAC on the token, then the vault's anchor moved) and
 * unsealed (chain only), next to the bare on-token HMAC (C_SignInit +
 * C_Sign straight through libkeycustody's token layer) and OpenSSL's
 * HMAC-SHA256 of the same bytes, in the same run. Not a test: it reports.
 *
 *   build/bench_audit [--seconds N]
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
    char dir[512], path[600], *line = NULL;
    double sealed, unsealed, tok_rate, ssl_rate;
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
    if (seconds <= 0 || i != argc) {
        fprintf(stderr, "usage: bench_audit [--seconds N]\n");
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

    json_decref(fields);
    free(line);
    kc_audit_close(a);
    kc_vault_free(v);
    kc_ctx_free(ctx);
    return bench_remove_dir(dir);
}
