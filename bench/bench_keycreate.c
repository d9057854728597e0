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
    unsigned finds;       /* C_FindObjectsInit in one create */
} figures;

/* One round at one size: a fresh copy of base, creates timed, then one more
 * create counting its C_FindObjectsInit. */
static figures measure(const char *base, int round)
{
    char dir[1200], name[64];
    figures f = {0, 0, 0};
    kc_error e;
    double t0;
    int i;

    snprintf(dir, sizeof(dir), "%s/run", work);
    sh("rm -rf '%s' && cp -a '%s' '%s'", dir, base, dir);
    use_dir(dir);
    for (i = 0; i < creates; i++) {
        snprintf(name, sizeof(name), "New%02d-%02d", round, i);
        if (kc_p11_fault_arm("C_GenerateKeyPair", "CKR_DEVICE_ERROR", 1000000, 0, &e) != KC_OK)
            die("cannot arm the timer");
        t0 = bench_now();
        create_key(name);
        f.total += bench_now() - t0;
        f.keygen += kc_p11_fault_seconds();
        kc_p11_fault_disarm();
    }
    f.total /= creates;
    f.keygen /= creates;
    snprintf(name, sizeof(name), "Count%02d", round);
    if (kc_p11_fault_arm(counted, "CKR_DEVICE_ERROR", 1000000, 0, &e) != KC_OK)
        die("cannot arm the counter");
    create_key(name);
    f.finds = kc_p11_fault_calls();
    kc_p11_fault_disarm();
    return f;
}

int main(int argc, char **argv)
{
    char small[1200], big[1200], cache[1200], tmp[1300], conf[1300];
    double tot[2][64], gen[2][64], non[2][64], ratio[64];
    unsigned finds[2] = {0, 0};
    const char *module;
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
            s = (i + k) % 2; /* alternate which size goes first */
            figures f = measure(s == 0 ? small : big, i);
            tot[s][i] = f.total * 1000;
            gen[s][i] = f.keygen * 1000;
            non[s][i] = (f.total - f.keygen) * 1000;
            if (f.finds > finds[s])
                finds[s] = f.finds;
        }
        ratio[i] = non[1][i] / non[0][i];
    }
    printf("key create (RSA-2048, in-process kc_cli_main with its audit log), %d rounds of %d "
           "creates per size, %ld CPUs\n",
           rounds, creates, sysconf(_SC_NPROCESSORS_ONLN));
    printf("keygen: time inside C_GenerateKeyPair; other: total - keygen. Medians over the rounds "
           "(the ratio within each round).\n");
    printf("%-8s %12s %12s %12s %20s\n", "keys", "total ms", "keygen ms", "other ms", counted);
    printf("%-8d %12.1f %12.1f %12.1f %20u\n", SMALL_KEYS, bench_median(tot[0], rounds),
           bench_median(gen[0], rounds), bench_median(non[0], rounds), finds[0]);
    printf("%-8d %12.1f %12.1f %12.1f %20u\n", big_keys, bench_median(tot[1], rounds),
           bench_median(gen[1], rounds), bench_median(non[1], rounds), finds[1]);
    printf("other(%d)/other(%d): %.2f\n", big_keys, SMALL_KEYS, bench_median(ratio, rounds));
    fclose(devnull);
    return bench_remove_dir(work);
}
