/* Documents kept on a token as CKO_DATA objects of application "keycustody".
 *
 * SoftHSM cannot change a data object's value (CKR_ATTRIBUTE_READ_ONLY), so a
 * document is never updated in place: a new generation is created first and
 * the older objects are removed after. A crash in between leaves two
 * generations, and readers take the newest one that is valid. */
#ifndef KC_GENDOC_H
#define KC_GENDOC_H

#include "kc_p11.h"

#define KC_GENDOC_APPLICATION "keycustody"

/* Validates a candidate document and gives its generation; KC_OK or why not. */
typedef kc_rc (*kc_gendoc_check)(const unsigned char *buf, size_t len, unsigned long *generation,
                                 void *arg, kc_error *err);

/* The newest valid generation with this label among the objects where says
 * (what names it in messages): a copy in *out (caller frees, NUL-terminated).
 * For a private document (KC_WHERE_PRIVATE), a public object with its label is
 * tampering: KC_INTEGRITY, naming it. KC_NOT_FOUND when there is no such object, KC_INTEGRITY when there are
 * some but none is valid (err says why). *next is the generation a writer uses next (1 when there
 * is none). */
KC_EXPORT kc_rc kc_gendoc_read(kc_tok *tok, const char *label, kc_where where,
                               const char *what, kc_gendoc_check check, void *arg, unsigned char **out, size_t *len,
                               unsigned long *next, kc_error *err) KC_MUST_CHECK;

/* Stores doc as a new object, then removes every older object with the
 * label; one it cannot remove stays for the next write to remove (readers
 * take the highest generation), and the write still succeeds. */
KC_EXPORT kc_rc kc_gendoc_write(kc_tok *tok, const char *label, int is_private, const char *doc,
                                kc_error *err) KC_MUST_CHECK;

/* Removes every generation but the newest valid one: what a write killed
 * between creating the new one and removing the old ones leaves. *removed:
 * how many went. Needs a session that sees the objects (logged in for
 * private ones). */
KC_EXPORT kc_rc kc_gendoc_tidy(kc_tok *tok, const char *label, kc_where where,
                               kc_gendoc_check check, void *arg, size_t *removed,
                               kc_error *err) KC_MUST_CHECK;

#endif
