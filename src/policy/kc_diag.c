#include "kc_diag.h"
#include "kc_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kc_diags_init(kc_diags *d, const char *file)
{
    memset(d, 0, sizeof(*d));
    snprintf(d->file, sizeof(d->file), "%s", file);
    kc_utf8_clean(d->file, sizeof(d->file));
}

void kc_diags_release(kc_diags *d)
{
    free(d->v);
    memset(d, 0, sizeof(*d));
}

void kc_diag_add(kc_diags *d, const char *rule, kc_severity sev, int line, int col,
                 const char *hint, const char *fmt, ...)
{
    kc_diag *nv, *x;
    char msg[sizeof(x->msg)];
    size_t i;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* a layout's bytes quoted in a message may be anything: text and JSON
     * output get valid UTF-8 */
    kc_utf8_clean(msg, sizeof(msg));
    /* A rule about one place says it once, however many paths lead there. */
    for (i = 0; i < d->n; i++)
        if (d->v[i].line == line && d->v[i].col == col && strcmp(d->v[i].rule, rule) == 0 &&
            strcmp(d->v[i].msg, msg) == 0)
            return;

    if (d->n == d->cap) {
        nv = realloc(d->v, (d->cap * 2 + 16) * sizeof(*nv));
        if (nv == NULL)
            return;
        d->v = nv;
        d->cap = d->cap * 2 + 16;
    }
    x = &d->v[d->n++];
    memset(x, 0, sizeof(*x));
    x->seq = d->n - 1;
    snprintf(x->rule, sizeof(x->rule), "%s", rule);
    x->severity = sev;
    x->line = line;
    x->col = col;
    snprintf(x->hint, sizeof(x->hint), "%s", hint != NULL ? hint : "");
    kc_utf8_clean(x->hint, sizeof(x->hint));
    memcpy(x->msg, msg, sizeof(msg));
    if (sev == KC_SEV_ERROR)
        d->errors++;
    else
        d->warnings++;
}

static int by_place(const void *a, const void *b)
{
    const kc_diag *x = a, *y = b;

    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->col != y->col)
        return x->col < y->col ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

void kc_diags_sort(kc_diags *d)
{
    if (d->n > 1)
        qsort(d->v, d->n, sizeof(d->v[0]), by_place);
}
