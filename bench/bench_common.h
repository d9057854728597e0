/* What the benchmarks share: a clock, a private SoftHSM token directory
 * under $TMPDIR (SOFTHSM2_CONF points at it), and random PINs for its
 * tokens. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include "kc_ctx.h"
#include "kc_util.h"

extern char bench_so_pin[33], bench_user_pin[33];

double bench_now(void);
/* The median of v[0..n) (sorts v). */
double bench_median(double *v, int n);
/* Fills bench_so_pin and bench_user_pin with random hex. */
void bench_pins(void);
/* A PIN callback giving those PINs to every vault. */
kc_rc bench_pin(void *arg, const char *vault, kc_pin_kind kind, kc_secret **out, kc_error *err);
/* Makes dir (a new directory under $TMPDIR) with tokens/ and softhsm2.conf. */
int bench_token_dir(char *dir, size_t len);
/* What every benchmark starts with: random PINs, a token directory in dir,
 * and the module (KEYCUSTODY_MODULE, else Debian's SoftHSM). NULL after
 * saying why when the directory cannot be made. */
const char *bench_setup(char *dir, size_t len);
/* Removes it again; 0 when done. */
int bench_remove_dir(const char *dir);

#endif
