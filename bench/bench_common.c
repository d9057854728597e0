#include "bench_common.h"

#include <openssl/rand.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

char bench_so_pin[33], bench_user_pin[33];

double bench_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

kc_rc bench_pin(void *arg, const char *vault, kc_pin_kind kind, kc_secret **out, kc_error *err)
{
    const char *p = kind == KC_PIN_SO || kind == KC_PIN_NEW_SO ? bench_so_pin : bench_user_pin;

    (void)arg;
    (void)vault;
    *out = kc_secret_dup(p, strlen(p));
    return *out ? KC_OK : kc_error_set(err, KC_ERR, "out of memory");
}

static void random_hex(char *out, size_t bytes)
{
    unsigned char b[16];

    RAND_bytes(b, (int)bytes);
    kc_hex_encode(b, bytes, out);
}

void bench_pins(void)
{
    random_hex(bench_so_pin, 16);
    random_hex(bench_user_pin, 16);
}

int bench_token_dir(char *dir, size_t len)
{
    const char *tmp = getenv("TMPDIR");
    char path[600];
    FILE *f;

    snprintf(dir, len, "%s/keycustody-bench-XXXXXX", tmp ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(path, sizeof(path), "%s/tokens", dir);
    if (mkdir(path, 0700) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/softhsm2.conf", dir);
    f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir);
    fclose(f);
    setenv("SOFTHSM2_CONF", path, 1);
    return 0;
}

int bench_remove_dir(const char *dir)
{
    char cmd[600];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : 1;
}

const char *bench_setup(char *dir, size_t len)
{
    const char *module = getenv("KEYCUSTODY_MODULE");

    bench_pins();
    if (bench_token_dir(dir, len) != 0) {
        perror("bench: token directory");
        return NULL;
    }
    return module != NULL && module[0] != '\0' ? module : "/usr/lib/softhsm/libsofthsm2.so";
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
