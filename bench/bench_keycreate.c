/* What `key create` costs besides the key generation, on a vault with few
 * keys and with many: the command run in-process (kc_cli_main, as a user
 * runs it, audit log included) on a copy of a vault of 10 keys and on a copy
 * of one of 1000, in interleaved rounds. The time inside C_GenerateKeyPair
 * is taken by the PKCS#11 fault seam (armed with a call number never
 * reached, it only times the calls it passes through); the rest is the
 * command's own work, which should not grow with the number of keys. Not a
 * test: it reports.
 *
 *   build-rel/bench_keycreate [--rounds R] [--creates K] [--keys N]
 *
 * The filled vault is made once and kept under the build directory
 * (bench-cache/, named by BENCH_FILL_VERSION and N); a second run reuses it.
 * The last column counts one function's calls in one create (--count).
 * Everything else lives in a private directory under $TMPDIR, removed
 * afterwards. */
#include "bench_common.h"
#include "cli.h"
#include "kc_p11.h"

/* The token's own work, the baseline, speaks to the module itself. */
#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bump when what a filled vault holds changes (its layout on the token). */
#define BENCH_FILL_VERSION "1"
#define SMALL_KEYS 10

static int rounds = 5, creates = 5, big_keys = 1000;
static const char *counted = "C_FindObjectsInit";
static const char *module;
static char work[512];
static FILE *devnull;

static void die(const char *what)
{
    fprintf(stderr, "bench: %s\n", what);
    exit(1);
}

static void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    if (system(cmd) != 0) {
        fprintf(stderr, "bench: '%s' failed\n", cmd);
        exit(1);
    }
}

/* Points SoftHSM, the audit log and the locks at the vault copy in dir. */
static void use_dir(const char *dir)
{
    char path[1400];
    FILE *f;

    snprintf(path, sizeof(path), "%s/softhsm2.conf", dir);
    f = fopen(path, "w");
    if (f == NULL)
        die("cannot write softhsm2.conf");
    fprintf(f, "directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir);
    fclose(f);
    setenv("SOFTHSM2_CONF", path, 1);
    snprintf(path, sizeof(path), "%s/audit.jsonl", dir);
    setenv("KEYCUSTODY_AUDIT", path, 1);
    setenv("XDG_RUNTIME_DIR", dir, 1);
}

static int run(const char *first, ...)
{
    char *argv[32];
    va_list ap;
    int argc = 1;

    argv[0] = "keycustody";
    va_start(ap, first);
    for (const char *a = first; a != NULL && argc < 31; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    return kc_cli_main(argc, argv, devnull, stderr);
}

static void create_key(const char *name)
{
    char ref[200];

    snprintf(ref, sizeof(ref), "BenchV/%s", name);
    if (run("key", "create", ref, "--size", "2048", "--pin-source", "env:BENCH_PIN", NULL) != 0)
        die("key create failed");
}

static void fill(int from, int to)
{
    char name[64];

    for (int i = from; i < to; i++) {
        snprintf(name, sizeof(name), "Fill%04d", i);
        create_key(name);
        if ((i + 1) % 100 == 0)
            fprintf(stderr, "bench: filled %d keys\n", i + 1);
    }
}

static void save_pins(const char *dir)
{
    char path[1400];
    FILE *f;

    snprintf(path, sizeof(path), "%s/pins", dir);
    f = fopen(path, "w");
    if (f == NULL)
        die("cannot write the PINs");
    fprintf(f, "%s %s\n", bench_so_pin, bench_user_pin);
    fclose(f);
}

static int load_pins(const char *dir)
{
    char path[1400];
    FILE *f;
    int ok;

    snprintf(path, sizeof(path), "%s/pins", dir);
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    ok = fscanf(f, "%32s %32s", bench_so_pin, bench_user_pin) == 2;
    fclose(f);
    return ok;
}

typedef struct figures {
    double total, keygen; /* seconds per create, this round */
    double in_module;     /* seconds inside the module, keygen aside */
    unsigned calls;       /* calls of the counted function in one create */
    double in_counted;    /* seconds inside them */
} figures;

/* A fresh copy of the vault directory base at work/sub, used from now on. */
static void fresh_copy(const char *base, const char *sub)
{
    char dir[1200];

    snprintf(dir, sizeof(dir), "%s/%s", work, sub);
    sh("rm -rf '%s' && cp -a '%s' '%s'", dir, base, dir);
    use_dir(dir);
}

/* One round at one size: on a fresh copy of base, creates with every
 * PKCS#11 call timed (the seam armed as "*": C_GenerateKeyPair's time is
 * the key generation, the others' the module's share of the rest). */
static figures measure(const char *base, int round)
{
    char name[64];
    figures f = {0, 0, 0, 0, 0};
    kc_error e;
    double t0, keygen;
    int i;

    fresh_copy(base, "run");
    for (i = 0; i < creates; i++) {
        snprintf(name, sizeof(name), "New%02d-%02d", round, i);
        if (kc_p11_fault_arm("*", "CKR_OK", 1, 0, &e) != KC_OK)
            die("cannot arm the timers");
        t0 = bench_now();
        create_key(name);
        f.total += bench_now() - t0;
        keygen = kc_p11_fault_seconds_of("C_GenerateKeyPair");
        f.keygen += keygen;
        f.in_module += kc_p11_fault_seconds() - keygen;
        f.in_counted += kc_p11_fault_seconds_of(counted);
        if (kc_p11_fault_calls_of(counted) > f.calls)
            f.calls = kc_p11_fault_calls_of(counted);
        kc_p11_fault_disarm();
    }
    f.total /= creates;
    f.keygen /= creates;
    f.in_module /= creates;
    f.in_counted /= creates;
    return f;
}

/* --- the token's own work: the direct PKCS#11 calls any create makes --- */

static void check_rv(CK_RV rv, const char *what)
{
    if (rv != CKR_OK) {
        fprintf(stderr, "bench: %s failed: 0x%lx\n", what, (unsigned long)rv);
        exit(1);
    }
}

static CK_SLOT_ID slot_of(CK_FUNCTION_LIST *f, const char *label)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64, i;
    CK_TOKEN_INFO ti;
    size_t len = strlen(label);

    check_rv(f->C_GetSlotList(CK_TRUE, slots, &n), "C_GetSlotList");
    for (i = 0; i < n; i++)
        if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, label, len) == 0 &&
            (len == sizeof(ti.label) || ti.label[len] == ' '))
            return slots[i];
    die("the bench vault's token is not there");
    return 0;
}

/* What one create cannot do without, straight to the module as a command
 * would (loaded, initialized and finalized each time): find the token by
 * label, log in, one search for the new key's label (is the name free?),
 * the key pair, log out. */
static void raw_create(const char *name, double *keygen, double *init)
{
    CK_FUNCTION_LIST *f = p11_kit_module_load(module, 0);
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE found[4], pub, priv;
    CK_ULONG got = 0, bits = 2048;
    CK_BYTE e[] = {1, 0, 1};
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE label = {CKA_LABEL, (void *)name, strlen(name)};
    CK_ATTRIBUTE pub_t[] = {{CKA_TOKEN, &yes, 1},       {CKA_LABEL, (void *)name, strlen(name)},
                            {CKA_WRAP, &yes, 1},        {CKA_ENCRYPT, &no, 1},
                            {CKA_VERIFY, &no, 1},       {CKA_MODULUS_BITS, &bits, sizeof(bits)},
                            {CKA_PUBLIC_EXPONENT, e, 3}};
    CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &yes, 1},      {CKA_LABEL, (void *)name, strlen(name)},
                             {CKA_PRIVATE, &yes, 1},    {CKA_SENSITIVE, &yes, 1},
                             {CKA_EXTRACTABLE, &no, 1}, {CKA_UNWRAP, &yes, 1},
                             {CKA_DECRYPT, &no, 1},     {CKA_SIGN, &no, 1}};
    double t0 = bench_now();

    if (f == NULL)
        die("cannot load the module");
    check_rv(p11_kit_module_initialize(f), "C_Initialize");
    *init += bench_now() - t0;
    check_rv(
        f->C_OpenSession(slot_of(f, "BenchV"), CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s),
        "C_OpenSession");
    check_rv(f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)bench_user_pin, strlen(bench_user_pin)),
             "C_Login");
    check_rv(f->C_FindObjectsInit(s, &label, 1), "C_FindObjectsInit");
    check_rv(f->C_FindObjects(s, found, 4, &got), "C_FindObjects");
    check_rv(f->C_FindObjectsFinal(s), "C_FindObjectsFinal");
    if (got != 0)
        die("the baseline's key name is taken");
    t0 = bench_now();
    check_rv(f->C_GenerateKeyPair(s, &mech, pub_t, sizeof(pub_t) / sizeof(pub_t[0]), priv_t,
                                  sizeof(priv_t) / sizeof(priv_t[0]), &pub, &priv),
             "C_GenerateKeyPair");
    *keygen += bench_now() - t0;
    check_rv(f->C_Logout(s), "C_Logout");
    check_rv(f->C_CloseSession(s), "C_CloseSession");
    t0 = bench_now();
    check_rv(p11_kit_module_finalize(f), "C_Finalize");
    p11_kit_module_release(f);
    *init += bench_now() - t0;
}

/* One round of the baseline at one size, on a fresh copy of base: its
 * work outside key generation, and of that the module's load, C_Initialize
 * and C_Finalize (*init), per create. */
static double measure_raw(const char *base, int round, double *init)
{
    char name[64];
    double other = 0, keygen, t0;
    int i;

    *init = 0;
    fresh_copy(base, "raw");
    for (i = 0; i < creates; i++) {
        snprintf(name, sizeof(name), "Raw%02d-%02d", round, i);
        keygen = 0;
        t0 = bench_now();
        raw_create(name, &keygen, init);
        other += bench_now() - t0 - keygen;
    }
    *init /= creates;
    return other / creates;
}

int main(int argc, char **argv)
{
    char small[1200], big[1200], cache[1200], tmp[1300], conf[1300];
    double tot[2][64], gen[2][64], non[2][64], raw[2][64], mod[2][64], init[2][64], own[2][64];
    double inside[2][64], ratio[3][64];
    unsigned calls[2] = {0, 0};
    struct stat st;
    int i, s;

    for (i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--creates") == 0)
            creates = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--keys") == 0)
            big_keys = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--count") == 0)
            counted = argv[i + 1];
        else
            break;
    }
    if (i != argc || rounds < 1 || rounds > 64 || creates < 1 || big_keys <= SMALL_KEYS) {
        fprintf(stderr, "usage: bench_keycreate [--rounds R (1-64)] [--creates K] [--keys N] "
                        "[--count C_Function]\n");
        return 2;
    }
    devnull = fopen("/dev/null", "w");
    if ((module = bench_setup(work, sizeof(work))) == NULL || devnull == NULL)
        return 1;
    setenv("KEYCUSTODY_MODULE", module, 1);
    unsetenv("KEYCUSTODY_STORE");
    snprintf(cache, sizeof(cache), "%s/bench-cache/keycreate-v%s-%d", KC_BENCH_CACHE_DIR,
             BENCH_FILL_VERSION, big_keys);
    /* the filled vault's PINs, when there is one, serve the small one too */
    if (stat(cache, &st) == 0 && !load_pins(cache))
        die("the cached vault has no PINs; remove bench-cache/ and run again");
    setenv("BENCH_PIN", bench_user_pin, 1);
    setenv("BENCH_SO_PIN", bench_so_pin, 1);

    snprintf(small, sizeof(small), "%s/small", work);
    snprintf(conf, sizeof(conf), "mkdir -p '%s/tokens'", small);
    sh("%s", conf);
    use_dir(small);
    if (run("vault", "init", "BenchV", "--subscription", "bench", "--region", "westus",
            "--so-pin-source", "env:BENCH_SO_PIN", "--pin-source", "env:BENCH_PIN", NULL) != 0)
        die("vault init failed");
    fill(0, SMALL_KEYS);

    if (stat(cache, &st) != 0) {
        fprintf(stderr, "bench: filling a vault to %d keys once (kept in %s)\n", big_keys, cache);
        snprintf(tmp, sizeof(tmp), "%s.tmp", cache);
        sh("mkdir -p '%s/bench-cache' && rm -rf '%s' && cp -a '%s' '%s'", KC_BENCH_CACHE_DIR, tmp,
           small, tmp);
        use_dir(tmp);
        fill(SMALL_KEYS, big_keys);
        save_pins(tmp);
        sh("rm -f '%s/softhsm2.conf' && mv '%s' '%s'", tmp, tmp, cache);
    }
    snprintf(big, sizeof(big), "%s/big", work);
    sh("cp -a '%s' '%s'", cache, big);

    for (i = 0; i < rounds; i++) {
        for (int k = 0; k < 2; k++) {
            double in;

            s = (i + k) % 2; /* alternate which size goes first */
            figures f = measure(s == 0 ? small : big, i);
            tot[s][i] = f.total * 1000;
            gen[s][i] = f.keygen * 1000;
            non[s][i] = (f.total - f.keygen) * 1000;
            mod[s][i] = f.in_module * 1000;
            if (f.calls > calls[s])
                calls[s] = f.calls;
            inside[s][i] = f.in_counted * 1000;
            raw[s][i] = measure_raw(s == 0 ? small : big, i, &in) * 1000;
            init[s][i] = in * 1000;
            own[s][i] = non[s][i] - mod[s][i] - init[s][i];
        }
        ratio[0][i] = non[1][i] / non[0][i];
        ratio[1][i] = raw[1][i] / raw[0][i];
        ratio[2][i] = own[1][i] / own[0][i];
    }
    printf("key create (RSA-2048, in-process kc_cli_main with its audit log), %d rounds of %d "
           "creates per size, %ld CPUs; medians over the rounds (ratios within each round)\n",
           rounds, creates, sysconf(_SC_NPROCESSORS_ONLN));
    printf("  other: total - time inside C_GenerateKeyPair\n"
           "  in module: of other, the time inside the module's other calls\n"
           "  init: the module's load, C_Initialize and C_Finalize (timed in the baseline)\n"
           "  own: other - in module - init, keycustody's own work\n"
           "  token: the baseline, the direct PKCS#11 calls a create cannot do without outside "
           "key generation\n"
           "    (load, C_Initialize, token by label, C_Login, one search by label, C_Logout, "
           "C_Finalize), interleaved\n"
           "  %s: its calls in one create, and ms inside them\n",
           counted);
    printf("%-6s %9s %9s %9s %10s %7s %7s %8s %7s %8s\n", "keys", "total ms", "keygen", "other",
           "in module", "init", "own", "token", "calls", "ms in");
    for (s = 0; s < 2; s++)
        printf("%-6d %9.1f %9.1f %9.1f %10.1f %7.1f %7.1f %8.1f %7u %8.1f\n",
               s == 0 ? SMALL_KEYS : big_keys, bench_median(tot[s], rounds),
               bench_median(gen[s], rounds), bench_median(non[s], rounds),
               bench_median(mod[s], rounds), bench_median(init[s], rounds),
               bench_median(own[s], rounds), bench_median(raw[s], rounds), calls[s],
               bench_median(inside[s], rounds));
    printf("at %d keys / at %d: other %.2f, token %.2f, own %.2f\n", big_keys, SMALL_KEYS,
           bench_median(ratio[0], rounds), bench_median(ratio[1], rounds),
           bench_median(ratio[2], rounds));
    fclose(devnull);
    return bench_remove_dir(work);
}
