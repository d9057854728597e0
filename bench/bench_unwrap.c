/* RSA-OAEP unwraps per second through libkeycustody on SoftHSM, next to
 * the same calls straight to the module and OpenSSL's raw RSA-OAEP
 * private-key operations, in the same run. The three are measured in rounds,
 * one after the other and in a rotating order within each round, and each
 * ratio is the median of the per-round ratios: drift of the machine between
 * rounds (another load, frequency changes) then falls on all three alike.
 * Not a test: it reports, it does not judge.
 *
 *   build/bench_unwrap [--seconds N] [--rounds R]
 *
 * Makes its own token directory under $TMPDIR and removes it afterwards. */
#include "bench_common.h"
#include "kc_key.h"
#include "kc_util.h"
#include "kc_vault.h"

/* The direct PKCS#11 baseline speaks to the module itself. */
#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

static double seconds = 1.0; /* per figure per round */
static int rounds = 7;

/* --- libkeycustody on the token --- */

struct tok_job {
    kc_p11 *p11;
    const char *label;
    const unsigned char *blob;
    size_t blob_len;
    long ops;
    int failed;
};

static void *tok_worker(void *arg)
{
    struct tok_job *j = arg;
    kc_secret *pin = kc_secret_dup(bench_user_pin, strlen(bench_user_pin)), *out = NULL;
    kc_key_obj *objs = NULL;
    kc_tok *tok = NULL;
    kc_obj priv = 0;
    size_t n = 0, i;
    kc_error e;
    double end;

    /* One session per thread: PKCS#11 sessions are not shared between threads. */
    if (kc_p11_token_new(j->p11, "Bench", &tok, &e) != KC_OK ||
        kc_tok_login(tok, pin, &e) != KC_OK ||
        kc_tok_find_keys(tok, j->label, NULL, 0, &objs, &n, &e) != KC_OK) {
        fprintf(stderr, "bench: %s\n", e.msg);
        j->failed = 1;
        goto done;
    }
    for (i = 0; i < n; i++)
        if (objs[i].is_private)
            priv = objs[i].handle;
    end = bench_now() + seconds;
    while (bench_now() < end) {
        if (kc_tok_oaep_unwrap(tok, priv, KC_OAEP_SHA1, j->blob, j->blob_len, &out, &e) != KC_OK) {
            fprintf(stderr, "bench: %s\n", e.msg);
            j->failed = 1;
            break;
        }
        kc_secret_free(out);
        j->ops++;
    }
done:
    free(objs);
    kc_tok_free(tok);
    kc_secret_free(pin);
    return NULL;
}

static double run_token(kc_p11 *p11, const char *label, const unsigned char *blob, size_t len,
                        int threads)
{
    struct tok_job jobs[2];
    pthread_t t[2];
    double start, took;
    long ops = 0;
    int i;

    start = bench_now();
    for (i = 0; i < threads; i++) {
        jobs[i] = (struct tok_job){p11, label, blob, len, 0, 0};
        pthread_create(&t[i], NULL, tok_worker, &jobs[i]);
    }
    for (i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        if (jobs[i].failed)
            exit(1);
        ops += jobs[i].ops;
    }
    took = bench_now() - start;
    return (double)ops / took;
}

/* --- the same three calls straight to the module: the direct PKCS#11 baseline --- */

struct raw_job {
    CK_FUNCTION_LIST *f;
    CK_SLOT_ID slot;
    const char *label;
    const unsigned char *blob;
    size_t blob_len;
    long ops;
};

static void *raw_worker(void *arg)
{
    struct raw_job *j = arg;
    CK_OBJECT_CLASS priv_cls = CKO_PRIVATE_KEY, sec_cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL t = CK_TRUE, fa = CK_FALSE;
    CK_ATTRIBUTE find[] = {{CKA_CLASS, &priv_cls, sizeof(priv_cls)},
                           {CKA_LABEL, (void *)j->label, strlen(j->label)}};
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &sec_cls, sizeof(sec_cls)},
                           {CKA_KEY_TYPE, &kt, sizeof(kt)},
                           {CKA_TOKEN, &fa, 1},
                           {CKA_PRIVATE, &t, 1},
                           {CKA_SENSITIVE, &fa, 1},
                           {CKA_EXTRACTABLE, &t, 1}};
    CK_RSA_PKCS_OAEP_PARAMS p = {CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &p, sizeof(p)};
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE key, sec;
    CK_ULONG n = 0;
    unsigned char value[64];
    CK_ATTRIBUTE val = {CKA_VALUE, value, sizeof(value)};
    double end;

    if (j->f->C_OpenSession(j->slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK)
        exit(1);
    (void)j->f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)bench_user_pin, strlen(bench_user_pin));
    j->f->C_FindObjectsInit(s, find, 2);
    j->f->C_FindObjects(s, &key, 1, &n);
    j->f->C_FindObjectsFinal(s);
    if (n != 1)
        exit(1);
    end = bench_now() + seconds;
    while (bench_now() < end) {
        val.ulValueLen = sizeof(value);
        if (j->f->C_UnwrapKey(s, &m, key, (CK_BYTE *)j->blob, j->blob_len, tmpl, 6, &sec) !=
                CKR_OK ||
            j->f->C_GetAttributeValue(s, sec, &val, 1) != CKR_OK ||
            j->f->C_DestroyObject(s, sec) != CKR_OK) {
            fprintf(stderr, "bench: direct PKCS#11 unwrap failed\n");
            exit(1);
        }
        j->ops++;
    }
    j->f->C_CloseSession(s);
    return NULL;
}

static double run_raw(const char *module, const char *label, const unsigned char *blob, size_t len,
                      int threads)
{
    CK_FUNCTION_LIST *f = p11_kit_module_load(module, 0);
    CK_SLOT_ID slots[8];
    CK_ULONG ns = 8, i;
    CK_TOKEN_INFO ti;
    struct raw_job jobs[2];
    pthread_t t[2];
    double start, took;
    long ops = 0;
    int k;

    if (f == NULL || p11_kit_module_initialize(f) != CKR_OK ||
        f->C_GetSlotList(CK_TRUE, slots, &ns) != CKR_OK)
        exit(1);
    for (i = 0; i < ns; i++)
        if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, "Bench ", 6) == 0)
            break;
    if (i == ns)
        exit(1);
    start = bench_now();
    for (k = 0; k < threads; k++) {
        jobs[k] = (struct raw_job){f, slots[i], label, blob, len, 0};
        pthread_create(&t[k], NULL, raw_worker, &jobs[k]);
    }
    for (k = 0; k < threads; k++) {
        pthread_join(t[k], NULL);
        ops += jobs[k].ops;
    }
    took = bench_now() - start;
    p11_kit_module_finalize(f);
    p11_kit_module_release(f);
    return (double)ops / took;
}

/* --- OpenSSL, raw --- */

struct ossl_job {
    EVP_PKEY *key;
    const unsigned char *blob;
    size_t blob_len;
    long ops;
};

static void *ossl_worker(void *arg)
{
    struct ossl_job *j = arg;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(j->key, NULL);
    unsigned char out[512];
    size_t outlen;
    double end;

    EVP_PKEY_decrypt_init(ctx);
    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING);
    EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1());
    end = bench_now() + seconds;
    while (bench_now() < end) {
        outlen = sizeof(out);
        if (EVP_PKEY_decrypt(ctx, out, &outlen, j->blob, j->blob_len) <= 0) {
            fprintf(stderr, "bench: OpenSSL decrypt failed\n");
            exit(1);
        }
        j->ops++;
    }
    EVP_PKEY_CTX_free(ctx);
    return NULL;
}

/* A key of bits and an OAEP blob of 32 random bytes under it. */
static EVP_PKEY *openssl_key(unsigned bits, unsigned char *blob, size_t *blob_len)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(key, NULL);
    unsigned char secret[32];

    RAND_bytes(secret, sizeof(secret));
    EVP_PKEY_encrypt_init(ctx);
    EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING);
    EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1());
    EVP_PKEY_encrypt(ctx, blob, blob_len, secret, sizeof(secret));
    EVP_PKEY_CTX_free(ctx);
    return key;
}

static double run_openssl(EVP_PKEY *key, const unsigned char *blob, size_t blob_len, int threads)
{
    struct ossl_job jobs[2];
    pthread_t t[2];
    double start, took;
    long ops = 0;
    int i;

    start = bench_now();
    for (i = 0; i < threads; i++) {
        jobs[i] = (struct ossl_job){key, blob, blob_len, 0};
        pthread_create(&t[i], NULL, ossl_worker, &jobs[i]);
    }
    for (i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        ops += jobs[i].ops;
    }
    took = bench_now() - start;
    return (double)ops / took;
}

/* --- set-up --- */

int main(int argc, char **argv)
{
    static const unsigned sizes[] = {2048, 3072};
    const char *module;
    kc_vault_meta m;
    kc_ctx *ctx = NULL;
    kc_vault *v = NULL;
    kc_error e;
    char dir[512];
    int adopted, threads, i, r;
    size_t s;

    for (i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else
            break;
    }
    if (i != argc || seconds <= 0 || rounds < 1 || rounds > 99) {
        fprintf(stderr, "usage: bench_unwrap [--seconds N] [--rounds 1..99]\n");
        return 2;
    }
    if ((module = bench_setup(dir, sizeof(dir))) == NULL)
        return 1;
    memset(&m, 0, sizeof(m));
    strcpy(m.name, "Bench");
    strcpy(m.subscription, "bench");
    strcpy(m.region, "westus");
    m.retention_days = 90;
    if (kc_ctx_new(module, bench_pin, NULL, &ctx, &e) != KC_OK ||
        kc_vault_init(ctx, &m, NULL, &v, &adopted, &e) != KC_OK) {
        fprintf(stderr, "bench: %s\n", e.msg);
        return 1;
    }
    printf("RSA-OAEP (SHA-1) unwraps of a 32-byte key per second, %d rounds of %.1f s per figure,"
           " %ld CPUs\n"
           "keycustody: kc_tok_oaep_unwrap; pkcs11: the same C_UnwrapKey, C_GetAttributeValue,\n"
           "C_DestroyObject straight to the module; openssl: EVP_PKEY_decrypt, same key size.\n"
           "Rates and ratios are medians over the rounds (each ratio within its round).\n",
           rounds, seconds, sysconf(_SC_NPROCESSORS_ONLN));
    printf("%-5s %-8s %11s %11s %11s %12s %14s\n", "bits", "threads", "keycustody", "pkcs11",
           "openssl", "kc/pkcs11", "kc/openssl");
    for (s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        kc_key_create_opts o = {NULL, sizes[s], KC_PROT_HSM, KC_OP_WRAP | KC_OP_UNWRAP, NULL};
        char label[16];
        kc_secret *secret = kc_secret_new(32);
        unsigned char *blob = NULL;
        size_t blob_len = 0;
        kc_key *k = NULL;

        snprintf(label, sizeof(label), "Rsa%u", sizes[s]);
        o.name = label;
        RAND_bytes(secret->data, 32);
        secret->len = 32;
        if (kc_key_create(v, &o, &k, &e) != KC_OK ||
            kc_key_wrap(v, k, &k->versions[0], KC_OAEP_SHA1, secret, &blob, &blob_len, NULL, &e) !=
                KC_OK) {
            fprintf(stderr, "bench: %s\n", e.msg);
            return 1;
        }
        unsigned char oblob[512];
        size_t oblob_len = sizeof(oblob);
        EVP_PKEY *okey = openssl_key(sizes[s], oblob, &oblob_len);

        for (threads = 1; threads <= 2; threads++) {
            double tok[99] = {0}, raw[99] = {0}, ossl[99] = {0}, kr[99] = {0}, ko[99] = {0};
            double f[3] = {0};
            int which;

            for (r = 0; r < rounds; r++) {
                /* the order turns each round, so that none is always first */
                for (i = 0; i < 3; i++) {
                    which = (i + r) % 3;
                    f[which] = which == 0   ? run_token(ctx->p11, label, blob, blob_len, threads)
                               : which == 1 ? run_raw(module, label, blob, blob_len, threads)
                                            : run_openssl(okey, oblob, oblob_len, threads);
                }
                tok[r] = f[0];
                raw[r] = f[1];
                ossl[r] = f[2];
                kr[r] = f[0] / f[1];
                ko[r] = f[0] / f[2];
            }
            printf("%-5u %-8d %11.0f %11.0f %11.0f %12.2f %14.2f\n", sizes[s], threads,
                   bench_median(tok, rounds), bench_median(raw, rounds), bench_median(ossl, rounds),
                   bench_median(kr, rounds), bench_median(ko, rounds));
            fflush(stdout);
        }
        EVP_PKEY_free(okey);
        free(blob);
        kc_secret_free(secret);
        kc_key_free(k);
    }
    kc_vault_free(v);
    kc_ctx_free(ctx);
    return bench_remove_dir(dir);
}
