#include "kc_gendoc.h"

#include "kc_util.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COMMIT_KIND "keycustody-commit 1"
#define DIGEST_HEX KC_GENDOC_DIGEST_HEX

/* How long a reader waits for the winner of a write to leave its commit
 * record before it takes the lowest digest (see kc_gendoc.h). */
#define AMBIGUOUS_POLLS 20
#define POLL_NS (100L * 1000 * 1000)
/* The pause before a document no record names is read again. */
#define SETTLE_NS (30L * 1000 * 1000)

typedef struct doc_info {
    unsigned long gen;
    char digest[DIGEST_HEX + 1];
    char base[DIGEST_HEX + 1]; /* what it was written over; "" none named */
    int valid;
} doc_info;

typedef struct commit_info {
    unsigned long gen;
    char digest[DIGEST_HEX + 1];
    int valid;
} commit_info;

/* The objects of one document: its generations and its commit records. */
typedef struct doc_set {
    kc_data_obj *docs;
    doc_info *info;
    size_t n;
    kc_data_obj *commits;
    commit_info *cinfo;
    size_t nc;
} doc_set;

static void digest_hex(const void *buf, size_t len, char out[DIGEST_HEX + 1])
{
    unsigned char d[SHA256_DIGEST_LENGTH];

    SHA256(buf, len, d);
    kc_hex_encode(d, sizeof(d), out);
}

/* --- answers of checks, by what the document holds --- */

#define MEMO_ENTRIES 16

typedef struct memo_entry {
    kc_gendoc_check check; /* NULL: unused */
    char signer[DIGEST_HEX + 1];
    unsigned char digest[SHA256_DIGEST_LENGTH];
    unsigned long generation;
    char base[DIGEST_HEX + 1];
} memo_entry;

static memo_entry memo[MEMO_ENTRIES];
static size_t memo_next; /* the slot the next answer takes, oldest first */
static pthread_mutex_t memo_lock = PTHREAD_MUTEX_INITIALIZER;

static int memo_same(const memo_entry *m, kc_gendoc_check check, const char *signer,
                     const unsigned char d[SHA256_DIGEST_LENGTH])
{
    return m->check == check && strcmp(m->signer, signer) == 0 &&
           memcmp(m->digest, d, SHA256_DIGEST_LENGTH) == 0;
}

int kc_gendoc_memo_get(kc_gendoc_check check, const char *signer, const unsigned char *buf,
                       size_t len, unsigned long *generation, char base[DIGEST_HEX + 1])
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    int found = 0;
    size_t i;

    if (strlen(signer) > DIGEST_HEX)
        return 0;
    SHA256(buf, len, d);
    pthread_mutex_lock(&memo_lock);
    for (i = 0; i < MEMO_ENTRIES && !found; i++) {
        if (!memo_same(&memo[i], check, signer, d))
            continue;
        *generation = memo[i].generation;
        memcpy(base, memo[i].base, DIGEST_HEX + 1);
        found = 1;
    }
    pthread_mutex_unlock(&memo_lock);
    return found;
}

void kc_gendoc_memo_put(kc_gendoc_check check, const char *signer, const unsigned char *buf,
                        size_t len, unsigned long generation, const char base[DIGEST_HEX + 1])
{
    size_t signer_len = strlen(signer), base_len = strlen(base), i;
    memo_entry m;

    if (signer_len > DIGEST_HEX || base_len > DIGEST_HEX)
        return;
    memset(&m, 0, sizeof(m));
    m.check = check;
    memcpy(m.signer, signer, signer_len + 1);
    SHA256(buf, len, m.digest);
    m.generation = generation;
    memcpy(m.base, base, base_len + 1);
    pthread_mutex_lock(&memo_lock);
    for (i = 0; i < MEMO_ENTRIES && !memo_same(&memo[i], check, signer, m.digest); i++)
        ;
    if (i == MEMO_ENTRIES) {
        memo[memo_next] = m;
        memo_next = (memo_next + 1) % MEMO_ENTRIES;
    }
    pthread_mutex_unlock(&memo_lock);
}

int kc_gendoc_base_get(const json_t *doc, char base[DIGEST_HEX + 1])
{
    const json_t *b = json_object_get(doc, "base");
    const char *hex = json_string_value(b);
    size_t i;

    base[0] = '\0';
    if (b == NULL)
        return 1;
    if (hex == NULL || strlen(hex) != DIGEST_HEX)
        return 0;
    for (i = 0; i < DIGEST_HEX; i++)
        if (!((hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f')))
            return 0;
    memcpy(base, hex, DIGEST_HEX + 1);
    return 1;
}

kc_rc kc_gendoc_base_set(json_t *doc, const kc_gendoc_ref *base, kc_error *err)
{
    if (base == NULL || base->handle == 0) {
        (void)json_object_del(doc, "base");
        return KC_OK;
    }
    if (json_object_set_new(doc, "base", json_string(base->digest)) != 0)
        return kc_error_set(err, KC_ERR, "out of memory");
    return KC_OK;
}

static void commit_label(const char *label, char *out, size_t cap)
{
    snprintf(out, cap, "%s%s", label, KC_GENDOC_COMMIT_SUFFIX);
}

/* SoftHSM 2.6.1 fails a destroy now and then while other processes write
 * the token (CKR_FUNCTION_FAILED, test "parallel writers"): a few tries.
 * Returns whether the object is gone. */
static int destroy_tries(kc_tok *tok, const char *label, kc_obj obj)
{
    struct timespec pause = {0, 20L * 1000 * 1000};
    kc_error ignored;
    int attempt, present = 1;

    for (attempt = 0; attempt < 5; attempt++) {
        if (kc_tok_destroy(tok, obj, &ignored) == KC_OK)
            return 1;
        if (kc_tok_data_present(tok, KC_GENDOC_APPLICATION, label, obj, &present, &ignored) ==
                KC_OK &&
            !present)
            return 1;
        (void)nanosleep(&pause, NULL);
    }
    return 0;
}

static void set_free(doc_set *s)
{
    kc_p11_data_objs_free(s->docs, s->n);
    kc_p11_data_objs_free(s->commits, s->nc);
    free(s->info);
    free(s->cinfo);
    memset(s, 0, sizeof(*s));
}

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

static void parse_commits(doc_set *s)
{
    char text[160];
    size_t i, len;

    for (i = 0; i < s->nc; i++) {
        commit_info *c = &s->cinfo[i];

        len = s->commits[i].len < sizeof(text) - 1 ? s->commits[i].len : sizeof(text) - 1;
        memcpy(text, s->commits[i].value, len);
        text[len] = '\0';
        c->valid = sscanf(text, COMMIT_KIND " generation=%lu sha256=%64[0-9a-f]", &c->gen,
                          c->digest) == 2 &&
                   strlen(c->digest) == DIGEST_HEX;
    }
}

/* Finds and checks every object of the document. A public one that is not
 * valid is tampering (anyone may make one), never a generation to pass over;
 * *why gets the reason the last invalid private one failed. */
static kc_rc set_load(kc_tok *tok, const char *label, kc_where where, const char *what,
                      kc_gendoc_check check, void *arg, doc_set *s, kc_error *why, kc_error *err)
{
    char clabel[300];
    size_t others = 0, i;
    kc_error e;
    kc_rc r;

    memset(s, 0, sizeof(*s));
    commit_label(label, clabel, sizeof(clabel));
    /* the generations and their commit records from one search */
    r = kc_tok_find_data_two(tok, KC_GENDOC_APPLICATION, label, clabel, where, &s->docs, &s->n,
                             &others, &s->commits, &s->nc, err);
    if (r == KC_OK && where == KC_WHERE_PRIVATE)
        r = no_lookalike(tok, label, what, others, err);
    if (r == KC_OK) {
        s->info = calloc(s->n + 1, sizeof(*s->info));
        s->cinfo = calloc(s->nc + 1, sizeof(*s->cinfo));
        if (s->info == NULL || s->cinfo == NULL)
            r = kc_error_set(err, KC_ERR, "out of memory");
    }
    for (i = 0; r == KC_OK && i < s->n; i++) {
        kc_error_clear(&e);
        s->info[i].valid = check(s->docs[i].value, s->docs[i].len, &s->info[i].gen,
                                 s->info[i].base, arg, &e) == KC_OK;
        if (s->info[i].valid) {
            digest_hex(s->docs[i].value, s->docs[i].len, s->info[i].digest);
            continue;
        }
        *why = e;
        if (where == KC_WHERE_PUBLIC) {
            kc_error_set(err, KC_INTEGRITY,
                         "token '%s' holds a public %s ('%s') that is not valid: %s; it was "
                         "made or changed outside keycustody",
                         kc_tok_info_get(tok)->label, what, label, e.msg);
            kc_error_hint(err, "keep a copy of the token for investigation, then remove it "
                               "(pkcs11-tool --list-objects --type data shows it)");
            r = KC_INTEGRITY;
        }
    }
    if (r != KC_OK) {
        set_free(s);
        return r;
    }
    parse_commits(s);
    return KC_OK;
}

/* Whether document i names as its base a document that is still there: a
 * candidate whose writer has not committed it (kc_gendoc.h). */
static int base_present(const doc_set *s, size_t i)
{
    size_t j;

    if (s->info[i].base[0] == '\0')
        return 0;
    for (j = 0; j < s->n; j++)
        if (j != i && s->info[j].valid && strcmp(s->info[j].digest, s->info[i].base) == 0)
            return 1;
    return 0;
}

/* Whether document i may be the current one in this pass: after the newest
 * commit record's generation and not over a document still there; then
 * any not over one still there; then (nothing else) any valid one. */
static int may_be_current(const doc_set *s, size_t i, int pass, unsigned long floor)
{
    if (!s->info[i].valid)
        return 0;
    if (pass == 0)
        return s->info[i].gen > floor && !base_present(s, i);
    return pass == 2 || !base_present(s, i);
}

/* The current generation (see kc_gendoc.h): its index, or -1 when no object
 * is valid. *ambiguous: it was chosen among several by digest alone;
 * *unrecorded: no commit record names it. */
static long set_pick(const doc_set *s, int *ambiguous, int *unrecorded)
{
    unsigned long floor = 0, top = 0;
    size_t i, j;
    long best = -1, committed = -1;
    int any = 0, pass;

    *ambiguous = 0;
    for (j = 0; j < s->nc; j++) {
        if (!s->cinfo[j].valid)
            continue;
        if (s->cinfo[j].gen > floor)
            floor = s->cinfo[j].gen;
        for (i = 0; i < s->n; i++)
            if (s->info[i].valid && s->info[i].gen == s->cinfo[j].gen &&
                strcmp(s->info[i].digest, s->cinfo[j].digest) == 0 &&
                (committed < 0 || s->info[i].gen > s->info[committed].gen))
                committed = (long)i;
    }
    *unrecorded = committed < 0;
    if (committed >= 0)
        return committed;
    /* its record's document was committed over: what came after it, else
     * (records removed, or none written yet) the newest there is; never a
     * candidate over a document still there */
    for (pass = 0; pass < 3 && !any; pass++)
        for (i = 0; i < s->n; i++) {
            if (!may_be_current(s, i, pass, floor))
                continue;
            if (!any || s->info[i].gen > top)
                top = s->info[i].gen;
            any = 1;
        }
    if (!any)
        return -1;
    pass--;
    for (i = 0; i < s->n; i++) {
        if (!may_be_current(s, i, pass, floor) || s->info[i].gen != top)
            continue;
        if (best < 0) {
            best = (long)i;
            continue;
        }
        if (strcmp(s->info[i].digest, s->info[best].digest) != 0)
            *ambiguous = 1;
        if (strcmp(s->info[i].digest, s->info[best].digest) < 0)
            best = (long)i;
    }
    return best;
}

/* What one read found: *ambiguous, *missing (a record and no document),
 * *unrecorded and the digest picked ("" when none). */
typedef struct read_seen {
    int ambiguous, missing, unrecorded;
    char picked[DIGEST_HEX + 1];
} read_seen;

static kc_rc read_once(kc_tok *tok, const char *label, kc_where where, const char *what,
                       kc_gendoc_check check, void *arg, unsigned char **out, size_t *len,
                       unsigned long *next, kc_gendoc_ref *ref, read_seen *seen, kc_error *err)
{
    doc_set s;
    kc_error why;
    long best;
    kc_rc r;

    *out = NULL;
    *len = 0;
    *next = 1;
    if (ref != NULL)
        memset(ref, 0, sizeof(*ref));
    kc_error_clear(&why);
    r = set_load(tok, label, where, what, check, arg, &s, &why, err);
    if (r != KC_OK)
        return r;
    memset(seen, 0, sizeof(*seen));
    best = set_pick(&s, &seen->ambiguous, &seen->unrecorded);
    seen->missing = s.n == 0 && s.nc > 0;
    if (best < 0) {
        size_t n = s.n;
        set_free(&s);
        if (n > 0)
            return kc_error_set(err, KC_INTEGRITY, "token '%s' has %s, but none is valid: %s",
                                kc_tok_info_get(tok)->label, what, why.msg);
        return kc_error_set(err, KC_NOT_FOUND, "token '%s' has no %s", kc_tok_info_get(tok)->label,
                            what);
    }
    *next = s.info[best].gen + 1;
    memcpy(seen->picked, s.info[best].digest, sizeof(seen->picked));
    if (ref != NULL) {
        ref->handle = s.docs[best].handle;
        ref->generation = s.info[best].gen;
        memcpy(ref->digest, s.info[best].digest, sizeof(ref->digest));
        ref->unrecorded = seen->unrecorded;
    }
    *out = s.docs[best].value;
    *len = s.docs[best].len;
    s.docs[best].value = NULL;
    set_free(&s);
    return KC_OK;
}

kc_rc kc_gendoc_read(kc_tok *tok, const char *label, kc_where where, const char *what,
                     kc_gendoc_check check, void *arg, unsigned char **out, size_t *len,
                     unsigned long *next, kc_gendoc_ref *ref, kc_error *err)
{
    struct timespec pause = {0, POLL_NS}, settle_pause = {0, SETTLE_NS};
    char last[DIGEST_HEX + 1] = "";
    int polls = 0, settle = 0;
    read_seen seen;
    kc_rc r = read_once(tok, label, where, what, check, arg, out, len, next, ref, &seen, err);

    /* SoftHSM 2.6.1 can hand a reader an object another process is writing
     * (its token integrity check; SOFTHSM-NOTES, the race tests): an invalid
     * public document is read once more before it is called tampering. */
    if (r == KC_INTEGRITY && where == KC_WHERE_PUBLIC) {
        (void)nanosleep(&pause, NULL);
        kc_error_clear(err);
        r = read_once(tok, label, where, what, check, arg, out, len, next, ref, &seen, err);
    }
    /* Two candidates and no commit record: a winner is writing it now. A
     * commit record and no document: SoftHSM 2.6.1 now and then finds none
     * of a token's objects while other processes write it (test_misuse
     * "writers on many hosts"); a moment later it does. A document no
     * record names is read again until two reads agree: SoftHSM 2.6.1 under
     * parallel writers now and then leaves out of a search an object that is
     * there (one just committed, or the base a candidate names), and what is
     * left can look like a commit (test_misuse "writers on many hosts": a
     * write over such a candidate lost the commit it hid). */
    for (;;) {
        int wait = (r == KC_OK && seen.ambiguous) || (r == KC_NOT_FOUND && seen.missing);

        settle = r == KC_OK && !wait && seen.unrecorded && strcmp(seen.picked, last) != 0;
        if ((!wait && !settle) || polls++ >= AMBIGUOUS_POLLS)
            break;
        memcpy(last, seen.picked, sizeof(last));
        free(*out);
        *out = NULL;
        (void)nanosleep(wait ? &pause : &settle_pause, NULL);
        kc_error_clear(err);
        r = read_once(tok, label, where, what, check, arg, out, len, next, ref, &seen, err);
    }
    /* a pick that never held still is no better known than a guess */
    if (r == KC_OK && (seen.ambiguous || settle) && ref != NULL)
        ref->guessed = 1;
    if (r == KC_NOT_FOUND && seen.missing) {
        kc_error_set(err, KC_INTEGRITY,
                     "token '%s' has the commit record of its %s ('%s') but not the %s: it was "
                     "removed outside keycustody",
                     kc_tok_info_get(tok)->label, what, label, what);
        kc_error_hint(err, "restore the token from a copy, or look for who removed it "
                           "(pkcs11-tool --list-objects --type data)");
        r = KC_INTEGRITY;
    }
    return r;
}

/* The index in s of the valid document of generation gen and digest, or -1.
 * Documents are told apart by what they hold, not by handle: a session the
 * token lost and keycustody replaced (kc_tok_recover) gives new handles. */
static long set_find(const doc_set *s, unsigned long gen, const char *digest)
{
    size_t i;

    for (i = 0; i < s->n; i++)
        if (s->info[i].valid && s->info[i].gen == gen && strcmp(s->info[i].digest, digest) == 0)
            return (long)i;
    return -1;
}

/* After a commit: older generations, other candidates of this one, and older
 * commit records go. Newer ones stay: they are another writer's. What the
 * token will not remove stays for the next write. Returns whether this
 * write's own generation is still there, or one written over it (1), neither
 * (0), or the token did not say (-1). */
static int sweep(kc_tok *tok, const char *label, kc_where where, kc_gendoc_check check, void *arg,
                 unsigned long generation, const char *digest, kc_obj created)
{
    char clabel[300];
    kc_error ignored, why;
    doc_set s;
    size_t i;
    int own, recorded = 0;

    kc_error_clear(&ignored);
    commit_label(label, clabel, sizeof(clabel));
    if (set_load(tok, label, where, "document", check, arg, &s, &why, &ignored) != KC_OK)
        return -1;
    own = set_find(&s, generation, digest) >= 0;
    /* gone, but a later writer read this one and wrote over it (one that
     * could not tell which candidate was committed would not write:
     * kc_gendoc_ref.guessed), so the write is in */
    for (i = 0; !own && i < s.n; i++)
        own = s.info[i].valid && (strcmp(s.info[i].base, digest) == 0 ||
                                  (s.info[i].base[0] == '\0' && s.info[i].gen > generation));
    /* left out of the search is not gone (SoftHSM 2.6.1 under parallel
     * writers): only its handle no longer valid says so */
    if (!own) {
        int present = 1;
        if (kc_tok_data_present(tok, KC_GENDOC_APPLICATION, label, created, &present, &ignored) !=
            KC_OK) {
            set_free(&s);
            return -1;
        }
        own = present;
    }
    for (i = 0; i < s.nc; i++)
        recorded |= s.cinfo[i].valid && s.cinfo[i].gen == generation &&
                    strcmp(s.cinfo[i].digest, digest) == 0;
    for (i = 0; i < s.n; i++)
        if (s.info[i].valid && s.info[i].gen <= generation &&
            !(s.info[i].gen == generation && strcmp(s.info[i].digest, digest) == 0))
            (void)destroy_tries(tok, label, s.docs[i].handle);
    /* the older records are what readers go by until this one is there */
    for (i = 0; recorded && i < s.nc; i++)
        if (s.cinfo[i].valid && s.cinfo[i].gen <= generation &&
            !(s.cinfo[i].gen == generation && strcmp(s.cinfo[i].digest, digest) == 0))
            (void)destroy_tries(tok, clabel, s.commits[i].handle);
    set_free(&s);
    return own;
}

static kc_rc lost(kc_tok *tok, const char *what, const char *how, const char *outcome,
                  kc_error *err)
{
    kc_error_set(err, KC_CONFLICT,
                 "vault '%s' changed while this command ran: another keycustody (on another "
                 "host?) %s its %s; %s",
                 kc_tok_info_get(tok)->label, how, what, outcome);
    kc_error_hint(err, "run the command again: it reads the vault afresh");
    return KC_CONFLICT;
}

/* base is gone, and a destroy of it by this writer failed with a reply
 * other than "no such object": the module may have done it and lost the
 * reply (a remote module; the fault seam armed after). A writer that won
 * instead left evidence that stays while it is current and after: its
 * candidate over base or its record, and every later writer's generation
 * above. Any of these in any read over 2 s: lost. A document written over
 * this one: won. Nothing of either: the destroy was this writer's, KC_OK. */
static kc_rc won_without_reply(kc_tok *tok, const char *label, kc_where where, const char *what,
                               const kc_gendoc_ref *base, kc_gendoc_check check, void *arg,
                               unsigned long generation, const char *digest, kc_error *err)
{
    struct timespec pause = {0, POLL_NS};
    kc_error ignored, why;
    doc_set s;
    size_t i;
    int polls, other = 0, over_ours = 0;

    for (polls = 0; polls <= AMBIGUOUS_POLLS && !other && !over_ours; polls++) {
        if (polls > 0)
            (void)nanosleep(&pause, NULL);
        kc_error_clear(&ignored);
        if (set_load(tok, label, where, what, check, arg, &s, &why, &ignored) != KC_OK)
            continue;
        for (i = 0; i < s.nc; i++)
            other |= s.cinfo[i].valid && s.cinfo[i].gen >= generation &&
                     strcmp(s.cinfo[i].digest, digest) != 0;
        for (i = 0; i < s.n; i++) {
            if (!s.info[i].valid || strcmp(s.info[i].digest, digest) == 0)
                continue;
            if (strcmp(s.info[i].base, digest) == 0)
                over_ours = 1;
            else if (s.info[i].gen >= generation || strcmp(s.info[i].base, base->digest) == 0)
                other = 1;
        }
        set_free(&s);
    }
    kc_error_clear(err);
    if (other && !over_ours)
        return lost(tok, what, "wrote a newer generation of", "nothing was written", err);
    return KC_OK;
}

/* The commit: of writers that read base, the one whose destroy of it
 * succeeds. KC_CONFLICT when another's did (base is no longer there). A
 * destroy that fails while base is still there (SoftHSM under other
 * writers; a replaced session) is tried again on base as found afresh. */
static kc_rc commit_over(kc_tok *tok, const char *label, kc_where where, const char *what,
                         const kc_gendoc_ref *base, kc_gendoc_check check, void *arg,
                         unsigned long generation, const char *digest, kc_error *err)
{
    struct timespec pause = {0, 20L * 1000 * 1000};
    kc_obj handle = base->handle;
    kc_error ignored, why;
    doc_set s;
    long at;
    int attempt, maybe_ours = 0;
    kc_rc r = KC_OK;

    for (attempt = 0; attempt < 5; attempt++) {
        r = kc_tok_destroy(tok, handle, err);
        if (r == KC_OK)
            return KC_OK;
        maybe_ours |= !(err->func[0] != '\0' &&
                        strcmp(kc_p11_rv_name(err->rv), "CKR_OBJECT_HANDLE_INVALID") == 0);
        kc_error_clear(&ignored);
        if (set_load(tok, label, where, what, check, arg, &s, &why, &ignored) != KC_OK) {
            (void)nanosleep(&pause, NULL);
            continue;
        }
        at = set_find(&s, base->generation, base->digest);
        if (at >= 0)
            handle = s.docs[at].handle;
        set_free(&s);
        /* a search that leaves base out does not show it gone (SoftHSM
         * 2.6.1 under parallel writers): its handle no longer valid does */
        if (at < 0) {
            int present = 1;
            if (kc_tok_data_present(tok, KC_GENDOC_APPLICATION, label, handle, &present,
                                    &ignored) == KC_OK &&
                !present) {
                if (maybe_ours)
                    return won_without_reply(tok, label, where, what, base, check, arg,
                                             generation, digest, err);
                kc_error_clear(err);
                return lost(tok, what, "wrote a newer generation of", "nothing was written", err);
            }
        }
        (void)nanosleep(&pause, NULL);
    }
    return r;
}

/* KC_OK when the document of generation and digest is the only valid
 * generation there is. */
static kc_rc first_alone(kc_tok *tok, const char *label, kc_where where, const char *what,
                         kc_gendoc_check check, void *arg, unsigned long generation,
                         const char *digest, kc_error *err)
{
    kc_error why;
    doc_set s;
    size_t i, others = 0;
    kc_rc r = set_load(tok, label, where, what, check, arg, &s, &why, err);

    for (i = 0; r == KC_OK && i < s.n; i++)
        others += s.info[i].valid &&
                  !(s.info[i].gen == generation && strcmp(s.info[i].digest, digest) == 0);
    set_free(&s);
    if (r == KC_OK && others > 0)
        r = lost(tok, what, "wrote the first generation of", "nothing was written", err);
    return r;
}

/* Before a write over a document no commit record names: its writer's
 * record is waited for (AMBIGUOUS_POLLS). A search under parallel writers
 * can show a losing candidate alone (the winner's left out); written over,
 * it would bury the winner's change. KC_CONFLICT when another document is
 * current meanwhile; KC_OK when base is recorded, or still the current one
 * when the wait is over (its writer was killed before its record). */
static kc_rc record_of_base(kc_tok *tok, const char *label, kc_where where, const char *what,
                            const kc_gendoc_ref *base, kc_gendoc_check check, void *arg,
                            kc_error *err)
{
    struct timespec pause = {0, POLL_NS};
    unsigned char *buf = NULL;
    unsigned long next = 1;
    kc_gendoc_ref now;
    read_seen seen;
    size_t len = 0;
    int polls;
    kc_rc r;

    memset(&seen, 0, sizeof(seen));
    for (polls = 0; polls < AMBIGUOUS_POLLS; polls++) {
        (void)nanosleep(&pause, NULL);
        kc_error_clear(err);
        r = read_once(tok, label, where, what, check, arg, &buf, &len, &next, &now, &seen, err);
        free(buf);
        buf = NULL;
        /* a public candidate another process is still writing reads as not
         * valid for a moment (as in kc_gendoc_read): read again */
        if (r == KC_INTEGRITY && where == KC_WHERE_PUBLIC && polls + 1 < AMBIGUOUS_POLLS)
            continue;
        if (r == KC_NOT_FOUND || (r == KC_OK && strcmp(now.digest, base->digest) != 0)) {
            kc_error_clear(err);
            return lost(tok, what, "wrote another generation of", "nothing was written", err);
        }
        if (r != KC_OK || !seen.unrecorded)
            return r;
    }
    /* still beside another candidate of its generation, and no record: a
     * guess, never written over (kc_gendoc_ref.guessed) */
    if (seen.ambiguous) {
        kc_error_clear(err);
        return lost(tok, what, "is writing a generation of", "nothing was written", err);
    }
    return KC_OK;
}

kc_rc kc_gendoc_write(kc_tok *tok, const char *label, int is_private, const char *what,
                      const char *doc, unsigned long generation, const kc_gendoc_ref *base,
                      kc_gendoc_check check, void *arg, kc_error *err)
{
    kc_where where = is_private ? KC_WHERE_PRIVATE : KC_WHERE_PUBLIC;
    struct timespec pause = {0, 20L * 1000 * 1000};
    char clabel[300], record[160], digest[DIGEST_HEX + 1];
    kc_obj created = 0;
    kc_error ignored;
    int tries;
    kc_rc r;

    kc_error_clear(&ignored);
    if (base != NULL && base->guessed) {
        kc_error_set(err, KC_CONFLICT,
                     "vault '%s': its %s has two candidates of generation %lu and no record of "
                     "which was committed: another write is finishing, or one was interrupted; "
                     "nothing was written",
                     kc_tok_info_get(tok)->label, what, base->generation);
        kc_error_hint(err, "run the command again; if it says so again, 'keycustody vault "
                           "validate %s --repair' keeps the candidate readers take",
                      kc_tok_info_get(tok)->label);
        return KC_CONFLICT;
    }
    /* it must name what it is written over: readers tell a candidate from a
     * commit by that (kc_gendoc.h) */
    {
        char named[DIGEST_HEX + 1];
        unsigned long g = 0;
        const char *want = base != NULL && base->handle != 0 ? base->digest : "";

        kc_error_clear(&ignored);
        if (check((const unsigned char *)doc, strlen(doc), &g, named, arg, &ignored) != KC_OK ||
            g != generation || strcmp(named, want) != 0)
            return kc_error_set(err, KC_ERR,
                                "internal error: the %s to write is not valid, or does not name "
                                "generation %lu and the document it is written over: %s",
                                what, generation, ignored.msg[0] ? ignored.msg : "they differ");
    }
    if (base != NULL && base->handle != 0 && base->unrecorded) {
        r = record_of_base(tok, label, where, what, base, check, arg, err);
        if (r != KC_OK)
            return r;
    }
    digest_hex(doc, strlen(doc), digest);
    r = kc_tok_create_data(tok, KC_GENDOC_APPLICATION, label, doc, strlen(doc), is_private,
                           &created, err);
    if (r != KC_OK) {
        /* SoftHSM 2.6.1 can store an object whose C_CreateObject failed
         * (test_softhsm facts): one that is there goes, so that a write
         * reported failed leaves no candidate behind */
        doc_set s;
        kc_error why;
        long at;

        kc_error_clear(&ignored);
        if (set_load(tok, label, where, what, check, arg, &s, &why, &ignored) == KC_OK) {
            while ((at = set_find(&s, generation, digest)) >= 0) {
                (void)destroy_tries(tok, label, s.docs[at].handle);
                s.info[at].valid = 0;
            }
            set_free(&s);
        }
        return r;
    }
    if (base != NULL && base->handle != 0)
        r = commit_over(tok, label, where, what, base, check, arg, generation, digest, err);
    else
        /* nothing to commit over: of first writes at once, each sees the
         * other's, and none stands but one that saw no other */
        r = first_alone(tok, label, where, what, check, arg, generation, digest, err);
    if (r != KC_OK) {
        if (!destroy_tries(tok, label, created))
            kc_error_hint(err, "the token kept the generation this command made, and readers "
                               "may take it: check the vault before running the command again "
                               "('policy apply' of its layout removes stale generations)");
        return r;
    }
    /* Which candidate won, for readers; without it (the token failed) the
     * write still stands: readers take the newest generation. */
    snprintf(record, sizeof(record), COMMIT_KIND " generation=%lu sha256=%s", generation, digest);
    commit_label(label, clabel, sizeof(clabel));
    for (tries = 0; tries < 3; tries++) {
        if (kc_tok_create_data(tok, KC_GENDOC_APPLICATION, clabel, record, strlen(record),
                               is_private, NULL, &ignored) == KC_OK)
            break;
        kc_error_clear(&ignored);
        (void)nanosleep(&pause, NULL);
    }
    /* a reader that waited past AMBIGUOUS_POLLS for this commit record may
     * have written over another candidate and removed this one; committed,
     * only seeing it gone says otherwise */
    if (sweep(tok, label, where, check, arg, generation, digest, created) == 0)
        return lost(tok, what, "took this write over and wrote after it",
                    "check the result before running it again", err);
    return KC_OK;
}

/* all: everything but the current generation and its record ('vault
 * validate --repair', which the operator runs with no other writer about).
 * Otherwise ('policy apply', while other hosts may write): only what no
 * writer can still need, and only when the current one is recorded: older
 * generations and records, and the losing candidates of its generation. A
 * newer generation may be another writer's candidate before its commit,
 * and one that is not valid may be one SoftHSM is still writing: removing
 * either under a writer would leave no document once it commits (the next
 * write removes what a killed writer left). */
static kc_rc set_prune(kc_tok *tok, const char *label, kc_where where, kc_gendoc_check check,
                       void *arg, int all, int remove, size_t *count, kc_error *err)
{
    char clabel[300];
    kc_error why;
    doc_set s;
    long keep;
    size_t i;
    int ambiguous, unrecorded;
    unsigned long kept_gen;
    kc_rc r = set_load(tok, label, where, "document", check, arg, &s, &why, err);

    *count = 0;
    if (r != KC_OK)
        return r;
    keep = set_pick(&s, &ambiguous, &unrecorded);
    /* with no valid one there is nothing to keep and nothing to judge by */
    if (keep < 0 || (!all && (ambiguous || unrecorded))) {
        set_free(&s);
        return KC_OK;
    }
    kept_gen = s.info[keep].gen;
    commit_label(label, clabel, sizeof(clabel));
    /* a writer's sweep may remove the same object at once: gone is removed */
    for (i = 0; r == KC_OK && i < s.n; i++) {
        if ((long)i == keep || (!all && (!s.info[i].valid || s.info[i].gen > kept_gen)))
            continue;
        if (remove && !destroy_tries(tok, label, s.docs[i].handle))
            r = KC_TOKEN;
        if (r == KC_OK)
            (*count)++;
    }
    for (i = 0; r == KC_OK && i < s.nc; i++) {
        if (s.cinfo[i].valid && s.cinfo[i].gen == kept_gen &&
            strcmp(s.cinfo[i].digest, s.info[keep].digest) == 0)
            continue;
        if (!all && (!s.cinfo[i].valid || s.cinfo[i].gen >= kept_gen))
            continue;
        if (remove && !destroy_tries(tok, clabel, s.commits[i].handle))
            r = KC_TOKEN;
        if (r == KC_OK)
            (*count)++;
    }
    /* a repair records what it kept: writers then need not wait for a
     * record that will not come (record_of_base) */
    if (r == KC_OK && remove && all && (unrecorded || ambiguous)) {
        char record[160];
        kc_rc rr;
        snprintf(record, sizeof(record), COMMIT_KIND " generation=%lu sha256=%s", kept_gen,
                 s.info[keep].digest);
        rr = kc_tok_create_data(tok, KC_GENDOC_APPLICATION, clabel, record, strlen(record),
                                where == KC_WHERE_PRIVATE, NULL, err);
        if (rr != KC_OK) {
            set_free(&s);
            return kc_error_prefix(err, "cannot record the generation of '%s' kept", label);
        }
    }
    set_free(&s);
    if (r != KC_OK) {
        kc_error_set(err, r,
                     "cannot remove an older generation of '%s': token '%s' refused it five "
                     "times",
                     label, kc_tok_info_get(tok)->label);
        kc_error_hint(err, "it stays until the next write removes it; run the command again");
        return r;
    }
    return KC_OK;
}

kc_rc kc_gendoc_tidy(kc_tok *tok, const char *label, kc_where where, kc_gendoc_check check,
                     void *arg, int all, size_t *removed, kc_error *err)
{
    return set_prune(tok, label, where, check, arg, all, 1, removed, err);
}

kc_rc kc_gendoc_stale(kc_tok *tok, const char *label, kc_where where, kc_gendoc_check check,
                      void *arg, int all, size_t *stale, kc_error *err)
{
    return set_prune(tok, label, where, check, arg, all, 0, stale, err);
}
