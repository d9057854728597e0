#include "kc_gendoc.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A private document's public look-alikes were made without the PIN: they are
 * tampering, never a generation to read or to skip quietly. */
static kc_rc no_lookalike(kc_tok *tok, const char *label, const char *what, size_t others,
                          kc_error *err)
{
    if (others == 0)
        return KC_OK;
    kc_error_set(err, KC_INTEGRITY,
                 "token '%s' holds %zu public data object(s) named like its %s ('%s'), which "
                 "is private: someone without the PIN planted them; nothing is read from them",
                 kc_tok_info_get(tok)->label, others, what, label);
    kc_error_hint(err, "keep a copy of the token for investigation, then remove them "
                       "(pkcs11-tool --list-objects --type data shows them)");
    return KC_INTEGRITY;
}

static kc_rc read_once(kc_tok *tok, const char *label, kc_where where, const char *what,
                       kc_gendoc_check check, void *arg, unsigned char **out, size_t *len,
                       unsigned long *next, kc_error *err)
{
    kc_data_obj *objs = NULL;
    unsigned long gen, top = 0, best_gen = 0;
    size_t n = 0, i, best = 0, others = 0;
    kc_error why;
    int found = 0;
    kc_rc r;

    *out = NULL;
    *len = 0;
    *next = 1;
    kc_error_clear(&why);
    r = kc_tok_find_data(tok, KC_GENDOC_APPLICATION, label, where, &objs, &n, &others, err);
    if (r == KC_OK && where == KC_WHERE_PRIVATE)
        r = no_lookalike(tok, label, what, others, err);
    if (r != KC_OK) {
        kc_p11_data_objs_free(objs, n);
        return r;
    }
    for (i = 0; i < n; i++) {
        if (check(objs[i].value, objs[i].len, &gen, arg, &why) != KC_OK) {
            /* anyone may have made a public one: one that is not valid is
             * tampering, never a generation to pass over */
            if (where == KC_WHERE_PUBLIC) {
                kc_p11_data_objs_free(objs, n);
                kc_error_set(err, KC_INTEGRITY,
                             "token '%s' holds a public %s ('%s') that is not valid: %s; it was "
                             "made or changed outside keycustody",
                             kc_tok_info_get(tok)->label, what, label, why.msg);
                kc_error_hint(err, "keep a copy of the token for investigation, then remove it "
                                   "(pkcs11-tool --list-objects --type data shows it)");
                return KC_INTEGRITY;
            }
            continue;
        }
        if (gen > top)
            top = gen;
        if (!found || gen > best_gen) {
            best = i;
            best_gen = gen;
            found = 1;
        }
    }
    *next = top + 1;
    if (!found) {
        kc_p11_data_objs_free(objs, n);
        if (n > 0)
            return kc_error_set(err, KC_INTEGRITY, "token '%s' has %s, but none is valid: %s",
                                kc_tok_info_get(tok)->label, what, why.msg);
        return kc_error_set(err, KC_NOT_FOUND, "token '%s' has no %s", kc_tok_info_get(tok)->label,
                            what);
    }
    *out = objs[best].value;
    *len = objs[best].len;
    objs[best].value = NULL;
    kc_p11_data_objs_free(objs, n);
    return KC_OK;
}

kc_rc kc_gendoc_read(kc_tok *tok, const char *label, kc_where where, const char *what,
                     kc_gendoc_check check, void *arg, unsigned char **out, size_t *len,
                     unsigned long *next, kc_error *err)
{
    kc_rc r = read_once(tok, label, where, what, check, arg, out, len, next, err);

    /* SoftHSM 2.6.1 can hand a reader an object another process is writing
     * (its token integrity check; SOFTHSM-NOTES, the race tests): an invalid
     * public document is read once more before it is called tampering. */
    if (r == KC_INTEGRITY && where == KC_WHERE_PUBLIC) {
        struct timespec pause = {0, 50 * 1000 * 1000};
        (void)nanosleep(&pause, NULL);
        kc_error_clear(err);
        r = read_once(tok, label, where, what, check, arg, out, len, next, err);
    }
    return r;
}

kc_rc kc_gendoc_write(kc_tok *tok, const char *label, int is_private, const char *doc,
                      kc_error *err)
{
    kc_data_obj *objs = NULL;
    kc_obj created = 0;
    kc_error ignored;
    size_t n = 0, i;
    kc_rc r;

    r = kc_tok_find_data(tok, KC_GENDOC_APPLICATION, label,
                         is_private ? KC_WHERE_PRIVATE : KC_WHERE_PUBLIC, &objs, &n, NULL, err);
    if (r != KC_OK)
        return r;
    r = kc_tok_create_data(tok, KC_GENDOC_APPLICATION, label, doc, strlen(doc), is_private,
                           &created, err);
    /* The new generation is the write: readers take the highest. An older
     * one this write cannot remove (the token failed) is harmless and the
     * next write removes it, so it does not fail a write that happened. */
    for (i = 0; r == KC_OK && i < n; i++)
        if (kc_tok_destroy(tok, objs[i].handle, &ignored) != KC_OK)
            continue;
    kc_p11_data_objs_free(objs, n);
    return r;
}

kc_rc kc_gendoc_tidy(kc_tok *tok, const char *label, kc_where where, kc_gendoc_check check,
                     void *arg, size_t *removed, kc_error *err)
{
    kc_data_obj *objs = NULL;
    unsigned long gen, best_gen = 0;
    size_t n = 0, i, best = 0;
    kc_error why;
    int found = 0;
    kc_rc r;

    *removed = 0;
    r = kc_tok_find_data(tok, KC_GENDOC_APPLICATION, label, where, &objs, &n, NULL, err);
    if (r != KC_OK)
        return r;
    for (i = 0; i < n; i++)
        if (check(objs[i].value, objs[i].len, &gen, arg, &why) == KC_OK &&
            (!found || gen > best_gen)) {
            best = i;
            best_gen = gen;
            found = 1;
        }
    /* with no valid one there is nothing to keep and nothing to judge by */
    for (i = 0; found && r == KC_OK && i < n; i++) {
        if (i == best)
            continue;
        r = kc_tok_destroy(tok, objs[i].handle, err);
        if (r == KC_OK)
            (*removed)++;
    }
    kc_p11_data_objs_free(objs, n);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot remove an older generation of '%s'", label);
    return KC_OK;
}
