/* Documents kept on a token as CKO_DATA objects of application "keycustody".
 *
 * SoftHSM cannot change a data object's value (CKR_ATTRIBUTE_READ_ONLY), so a
 * document is never updated in place: each write creates a new generation.
 *
 * A write commits by destroying the object it read. On one token, of two
 * processes that destroy the same object at once exactly one succeeds
 * (SoftHSM 2.6.1: test_softhsm facts, "destroy race"), so of two writers
 * that read one generation exactly one wins, on one host or on several that
 * share the token; the other removes what it made and is told KC_CONFLICT.
 * The winner then leaves a commit record ("<label>.commit": generation and
 * SHA-256 of the document) and removes the older generations.
 *
 * A first write has nothing to commit over: it stands when it sees no other
 * generation, which holds only where each writer sees what the other made
 * (SoftHSM 2.6.1 under parallel writers does not always). 'vault init'
 * therefore writes the key state's first generation; what is left are a
 * new vault's first manifest and the first anchor of an audit log.
 *
 * Each document names the one it was written over (its "base": that
 * document's SHA-256), so a candidate whose base is still there is known
 * not to be committed yet: its writer has not destroyed the base.
 *
 * A writer killed before its commit leaves a document nobody committed; one
 * killed after it leaves its document without a commit record. Readers take
 * the document the newest commit record names while it is there; when it is
 * gone (its generation was committed over), the newest generation after it
 * whose base is gone. Without the base rule a reader that came between a
 * commit and its record took a candidate written over the committed
 * document for the current one, and a write over that candidate removed the
 * next commit (test_softhsm docs "a candidate over an unrecorded commit").
 * A pick no record names is read again until two reads agree: a search
 * under parallel writers can leave out an object that is there (SoftHSM
 * 2.6.1), and what is left can look like a commit.
 * Two of that generation (a writer killed before its commit beside one
 * committing now) are waited for; if the winner's record never comes, the
 * one with the lowest digest is taken for reading: neither write was
 * reported done. A writer never commits over such a guess: the winner may
 * only be slow to leave its record, and a write over the loser's candidate
 * would then remove the winner's (test_misuse "writers on many hosts"). */
#ifndef KC_GENDOC_H
#define KC_GENDOC_H

#include "kc_p11.h"

#include <jansson.h>

#define KC_GENDOC_APPLICATION "keycustody"
/* A document's commit record is labelled like it, with this after. */
#define KC_GENDOC_COMMIT_SUFFIX ".commit"

#define KC_GENDOC_DIGEST_HEX 64

/* Validates a candidate document and gives its generation and base (the
 * digest of the document it was written over, kc_gendoc_base_get: "" for a
 * first write and for documents written before bases were kept); KC_OK or
 * why not. */
typedef kc_rc (*kc_gendoc_check)(const unsigned char *buf, size_t len, unsigned long *generation,
                                 char base[KC_GENDOC_DIGEST_HEX + 1], void *arg, kc_error *err);

/* A check's answer for the document buf, when the same check gave it for
 * the same bytes before in this process (1), else 0. A check is a function
 * of the bytes and of who signs them: signer is that key's fingerprint ("" for
 * a check of the bytes alone). Only valid answers are kept, by the SHA-256
 * of the bytes: a command that reads, writes and reads again a document of
 * some hundred KB parses each version once. Thread-safe. */
KC_EXPORT int kc_gendoc_memo_get(kc_gendoc_check check, const char *signer,
                                 const unsigned char *buf, size_t len, unsigned long *generation,
                                 char base[KC_GENDOC_DIGEST_HEX + 1]);

/* Keeps a valid answer of check for buf (see kc_gendoc_memo_get). */
KC_EXPORT void kc_gendoc_memo_put(kc_gendoc_check check, const char *signer,
                                  const unsigned char *buf, size_t len, unsigned long generation,
                                  const char base[KC_GENDOC_DIGEST_HEX + 1]);

/* The object a document was read from: what a write commits over. */
typedef struct kc_gendoc_ref {
    kc_obj handle; /* 0: no document was read (the first write) */
    unsigned long generation;
    /* SHA-256 of its value, hex: what it is after a replaced session */
    char digest[KC_GENDOC_DIGEST_HEX + 1];
    /* chosen by digest among candidates of one generation after waiting
     * for a commit record that did not come: not known to be committed, so
     * never written over (kc_gendoc_write refuses) */
    int guessed;
    /* no commit record names it: committed by a writer that has not left its
     * record yet (or was killed first), or the only candidate a search
     * showed; a write over it waits for the record (kc_gendoc_write) */
    int unrecorded;
} kc_gendoc_ref;

/* The current generation with this label among the objects where says
 * (what names it in messages): a copy in *out (caller frees, NUL-terminated),
 * and in *ref (may be NULL) the object it came from, for kc_gendoc_write.
 * For a private document (KC_WHERE_PRIVATE), a public object with its label is
 * tampering: KC_INTEGRITY, naming it. KC_NOT_FOUND when there is no such
 * object (*ref is then zero), KC_INTEGRITY when there are some but none is
 * valid (err says why). *next is the generation a writer uses next (1 when
 * there is none). */
KC_EXPORT kc_rc kc_gendoc_read(kc_tok *tok, const char *label, kc_where where,
                               const char *what, kc_gendoc_check check, void *arg, unsigned char **out, size_t *len,
                               unsigned long *next, kc_gendoc_ref *ref, kc_error *err) KC_MUST_CHECK;

/* The base member of a document object (see kc_gendoc_check): 1 with it in
 * base ("" when there is none), 0 when it is there but not a digest. */
KC_EXPORT int kc_gendoc_base_get(const json_t *doc, char base[KC_GENDOC_DIGEST_HEX + 1]);

/* Names base (what a kc_gendoc_read gave) as what doc is written over, or
 * removes the name when there is none (a first write). KC_ERR when out of
 * memory. */
KC_EXPORT kc_rc kc_gendoc_base_set(json_t *doc, const kc_gendoc_ref *base, kc_error *err);

/* Stores doc (of generation, validated by check) as the generation after
 * base and commits it by destroying base's object. KC_CONFLICT, with
 * nothing written, when another writer committed over base first (what
 * names the document in the message), or took this write over before it
 * finished. base NULL or zero: the first write, nothing to commit over.
 * Older generations are removed after; one the token will not remove stays
 * for the next write, and the write still succeeds. Over a base no commit
 * record names (base->unrecorded) it first waits up to 2 s for the record;
 * a destroy of base whose reply the module lost is taken for this write's
 * commit when no other writer's record or candidate shows within 2 s. */
KC_EXPORT kc_rc kc_gendoc_write(kc_tok *tok, const char *label, int is_private, const char *what,
                                const char *doc, unsigned long generation,
                                const kc_gendoc_ref *base, kc_gendoc_check check, void *arg,
                                kc_error *err) KC_MUST_CHECK;

/* Removes what a write killed before it finished leaves. all: every
 * generation but the current one and every commit record but its own (for
 * 'vault validate --repair', with no other writer about). Otherwise only
 * what no writer can still need while others write: nothing unless the
 * current one is recorded; then the older generations and records and the
 * other candidates of its generation, never a newer generation (another
 * writer's before its commit) or one that is not valid (maybe still being
 * written). *removed: how many went. Needs a session that sees the objects
 * (logged in for private ones). */
KC_EXPORT kc_rc kc_gendoc_tidy(kc_tok *tok, const char *label, kc_where where,
                               kc_gendoc_check check, void *arg, int all, size_t *removed,
                               kc_error *err) KC_MUST_CHECK;

/* How many objects of this document tidy would remove. */
KC_EXPORT kc_rc kc_gendoc_stale(kc_tok *tok, const char *label, kc_where where,
                                kc_gendoc_check check, void *arg, int all, size_t *stale,
                                kc_error *err) KC_MUST_CHECK;

#endif
