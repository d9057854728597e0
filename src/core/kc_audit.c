/* The audit log (kc_audit.h): appending, sealing on a token, anchoring and
 * verification. */
#include "kc_audit.h"
#include "kc_gendoc.h"
#include "kc_util.h"
#include "kc_vault.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define LOG_ID_HEX 32
#define HASH_HEX 64
#define LOG_MAX ((size_t)1 << 30)
#define MAX_VAULTS 64

static const char SEAL[] = ",\"mac\":";
#define SEAL_LEN (sizeof(SEAL) - 1)

struct kc_audit {
    int fd;
    char path[PATH_MAX];
    char anchor_label[64]; /* the anchor document for this log's path */
};

/* --- the audit key --- */

kc_rc kc_audit_key(kc_tok *tok, int create, kc_obj *out, kc_error *err)
{
    kc_obj found[2];
    size_t n = 0, others = 0;
    kc_rc r;

    r = kc_tok_find_secrets(tok, KC_AUDIT_KEY_LABEL, NULL, 0, KC_WHERE_PRIVATE, found, 2, &n,
                            &others, err);
    if (r != KC_OK)
        return r;
    if (others > 0)
        return kc_error_set(err, KC_INTEGRITY,
                            "vault '%s' holds %zu public key(s) labelled '%s' that keycustody "
                            "did not make (its audit key is private): someone without the PIN "
                            "planted them; none is used",
                            kc_tok_info_get(tok)->label, others, KC_AUDIT_KEY_LABEL);
    if (n > 1)
        return kc_error_set(err, KC_INTEGRITY, "vault '%s' has %zu audit keys ('%s'); expected one",
                            kc_tok_info_get(tok)->label, n, KC_AUDIT_KEY_LABEL);
    if (n == 1) {
        *out = found[0];
        return KC_OK;
    }
    if (!create)
        return kc_error_set(err, KC_NOT_FOUND, "vault '%s' has no audit key ('%s')",
                            kc_tok_info_get(tok)->label, KC_AUDIT_KEY_LABEL);
    /* A generation killed half-way leaves an unlabelled secret key behind
     * (SoftHSM 2.6.1); it goes before the key is made again. */
    r = kc_tok_remove_unlabelled_secrets(tok, &n, err);
    if (r != KC_OK)
        return r;
    return kc_tok_generate_hmac_key(tok, KC_AUDIT_KEY_LABEL, out, err);
}

/* --- anchors --- */

/* The anchor of a log is named after the log's absolute path, so a log that
 * is deleted or replaced by a new one at the same place is still noticed. */
static kc_rc anchor_label_for(const char *path, char out[64], kc_error *err)
{
    char dir_buf[PATH_MAX], base_buf[PATH_MAX], real[PATH_MAX], full[PATH_MAX * 2];
    unsigned char digest[SHA256_DIGEST_LENGTH];
    char hex[2 * SHA256_DIGEST_LENGTH + 1];

    snprintf(dir_buf, sizeof(dir_buf), "%s", path);
    snprintf(base_buf, sizeof(base_buf), "%s", path);
    if (realpath(dirname(dir_buf), real) == NULL)
        return kc_error_set(err, KC_NOT_FOUND, "cannot resolve the directory of audit log '%s': %s",
                            path, strerror(errno));
    snprintf(full, sizeof(full), "%s/%s", real, basename(base_buf));
    SHA256((const unsigned char *)full, strlen(full), digest);
    kc_hex_encode(digest, 12, hex);
    snprintf(out, 64, "%s:%.24s", KC_AUDIT_ANCHOR_LABEL, hex);
    return KC_OK;
}

typedef struct anchor {
    char log[LOG_ID_HEX + 1];
    long seq;
    char hash[HASH_HEX + 1];
    unsigned long generation;
    char base[KC_GENDOC_DIGEST_HEX + 1]; /* the anchor it was written over */
    kc_gendoc_ref ref; /* the object it was read from */
} anchor;

static int is_hex(const char *s, size_t len)
{
    size_t i;

    if (s == NULL || strlen(s) != len)
        return 0;
    for (i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static kc_rc anchor_decode(const unsigned char *buf, size_t len, anchor *a, kc_error *err)
{
    json_t *o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, NULL);
    const char *kind, *log, *hash;
    json_int_t seq, gen;
    kc_rc r = KC_OK;

    if (o == NULL)
        return kc_error_set(err, KC_INTEGRITY, "audit anchor is not JSON");
    kind = json_string_value(json_object_get(o, "kind"));
    log = json_string_value(json_object_get(o, "log"));
    hash = json_string_value(json_object_get(o, "hash"));
    seq = json_integer_value(json_object_get(o, "seq"));
    gen = json_integer_value(json_object_get(o, "generation"));
    if (kind == NULL || strcmp(kind, "keycustody-audit-anchor") != 0 ||
        json_integer_value(json_object_get(o, "schema")) != 1 || !is_hex(log, LOG_ID_HEX) ||
        !is_hex(hash, HASH_HEX) || seq < 1 || gen < 1 || !kc_gendoc_base_get(o, a->base)) {
        r = kc_error_set(err, KC_INTEGRITY, "audit anchor does not have the expected fields");
    } else {
        memcpy(a->log, log, LOG_ID_HEX + 1);
        memcpy(a->hash, hash, HASH_HEX + 1);
        a->seq = (long)seq;
        a->generation = (unsigned long)gen;
    }
    json_decref(o);
    return r;
}

static kc_rc anchor_check(const unsigned char *buf, size_t len, unsigned long *generation,
                          char base[KC_GENDOC_DIGEST_HEX + 1], void *arg, kc_error *err)
{
    anchor a;
    kc_rc r = anchor_decode(buf, len, &a, err);

    (void)arg;
    if (r == KC_OK) {
        *generation = a.generation;
        memcpy(base, a.base, sizeof(a.base));
    }
    return r;
}

/* The vault's anchor for this log path; KC_NOT_FOUND when it has none. */
static kc_rc anchor_read(kc_tok *tok, const char *label, anchor *a, kc_error *err)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    unsigned long next = 1;
    kc_rc r;

    r = kc_gendoc_read(tok, label, KC_WHERE_PRIVATE, "audit anchor", anchor_check, NULL, &buf,
                       &len, &next, &a->ref, err);
    if (r != KC_OK)
        return r;
    r = anchor_decode(buf, len, a, err);
    free(buf);
    return r;
}

static kc_rc anchor_write(kc_tok *tok, const char *label, const char *log, long seq,
                          const char *hash, unsigned long generation, const kc_gendoc_ref *base,
                          kc_error *err)
{
    json_t *o = json_pack("{s:s, s:i, s:I, s:s, s:I, s:s}", "kind", "keycustody-audit-anchor",
                          "schema", 1, "generation", (json_int_t)generation, "log", log, "seq",
                          (json_int_t)seq, "hash", hash);
    char *doc = NULL;
    kc_rc r = o != NULL ? kc_gendoc_base_set(o, base, err) : KC_OK;

    if (o != NULL && r == KC_OK)
        doc = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (doc == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    r = kc_gendoc_write(tok, label, 1, "audit anchor", doc, generation, base, anchor_check, NULL,
                        err);
    free(doc);
    return r;
}

/* --- lines --- */

static void hash_hex(const char *line, size_t len, char out[HASH_HEX + 1])
{
    unsigned char digest[SHA256_DIGEST_LENGTH];

    SHA256((const unsigned char *)line, len, digest);
    kc_hex_encode(digest, sizeof(digest), out);
}

static const char *find_seal(const char *line, size_t len)
{
    const char *p, *last = NULL;

    for (p = line; p + SEAL_LEN <= line + len; p++)
        if (memcmp(p, SEAL, SEAL_LEN) == 0)
            last = p;
    return last;
}

kc_rc kc_audit_parse_line(const char *line, size_t len, json_t **rec, unsigned char mac[32],
                          int *has_mac, size_t *mac_off, kc_error *err)
{
    const char *seal = find_seal(line, len), *tail, *log, *prev, *time, *by;
    size_t tail_len, got = 0;
    json_t *o, *sb;
    json_error_t je;
    json_int_t seq;

    *rec = NULL;
    *has_mac = 0;
    if (seal == NULL)
        return kc_error_set(err, KC_INTEGRITY, "no MAC field at its end");
    tail = seal + SEAL_LEN;
    tail_len = len - (size_t)(tail - line);
    if (tail_len == 5 && memcmp(tail, "null}", 5) == 0) {
        *has_mac = 0;
    } else if (tail_len == HASH_HEX + 3 && tail[0] == '"' && tail[HASH_HEX + 1] == '"' &&
               tail[HASH_HEX + 2] == '}') {
        char hex[HASH_HEX + 1];
        memcpy(hex, tail + 1, HASH_HEX);
        hex[HASH_HEX] = '\0';
        if (!is_hex(hex, HASH_HEX) || kc_hex_decode(hex, mac, 32, &got) != 0 || got != 32)
            return kc_error_set(err, KC_INTEGRITY, "the MAC is not 64 hex digits");
        *has_mac = 1;
    } else {
        return kc_error_set(err, KC_INTEGRITY, "the MAC field is not last or not well formed");
    }
    *mac_off = (size_t)(seal - line);
    o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    if (o == NULL || !json_is_object(o)) {
        json_decref(o);
        return kc_error_set(err, KC_INTEGRITY, "not a JSON object (%s)", je.text);
    }
    seq = json_integer_value(json_object_get(o, "seq"));
    log = json_string_value(json_object_get(o, "log"));
    prev = json_string_value(json_object_get(o, "prev"));
    time = json_string_value(json_object_get(o, "time"));
    sb = json_object_get(o, "sealed_by");
    by = json_string_value(sb);
    if (!json_is_integer(json_object_get(o, "seq")) || seq < 1 || !is_hex(log, LOG_ID_HEX) ||
        !is_hex(prev, HASH_HEX) || time == NULL || sb == NULL ||
        (!json_is_null(sb) && (by == NULL || by[0] == '\0'))) {
        json_decref(o);
        return kc_error_set(err, KC_INTEGRITY, "a field every record has is missing or malformed");
    }
    if ((by != NULL) != (*has_mac != 0)) {
        json_decref(o);
        return kc_error_set(err, KC_INTEGRITY, "sealed_by and mac disagree");
    }
    *rec = o;
    return KC_OK;
}

/* --- appending --- */

static kc_rc last_record(kc_audit *a, long *seq, char log[LOG_ID_HEX + 1],
                         char hash[HASH_HEX + 1], kc_error *err);

kc_rc kc_audit_open(const char *path, kc_audit **out, kc_error *err)
{
    kc_audit *a;
    struct stat st;
    kc_rc r;

    *out = NULL;
    a = calloc(1, sizeof(*a));
    if (a == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    snprintf(a->path, sizeof(a->path), "%s", path);
    r = anchor_label_for(path, a->anchor_label, err);
    if (r != KC_OK) {
        free(a);
        return r;
    }
    a->fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (a->fd < 0) {
        r = kc_error_set(err, errno == ELOOP ? KC_DENIED : KC_ERR,
                         "cannot open audit log '%s': %s", path,
                         errno == ELOOP ? "it is a symbolic link" : strerror(errno));
        free(a);
        return r;
    }
    if (fstat(a->fd, &st) != 0 || !S_ISREG(st.st_mode))
        r = kc_error_set(err, KC_DENIED, "audit log '%s' is not a regular file", path);
    else if (st.st_uid != geteuid())
        r = kc_error_set(err, KC_DENIED, "audit log '%s' belongs to another user (uid %u)", path,
                         (unsigned)st.st_uid);
    else if ((st.st_mode & 077) != 0)
        r = kc_error_set(err, KC_DENIED, "audit log '%s' has mode %03o; it must be 0600", path,
                         (unsigned)(st.st_mode & 0777));
    if (r == KC_OK) {
        /* a damaged log stops the command before it does anything */
        long seq;
        char log[LOG_ID_HEX + 1], hash[HASH_HEX + 1];

        while (flock(a->fd, LOCK_SH) != 0 && errno == EINTR)
            ;
        r = last_record(a, &seq, log, hash, err);
        (void)flock(a->fd, LOCK_UN);
    }
    if (r != KC_OK) {
        close(a->fd);
        free(a);
        return r;
    }
    *out = a;
    return KC_OK;
}

void kc_audit_close(kc_audit *a)
{
    if (a == NULL)
        return;
    close(a->fd);
    free(a);
}

const char *kc_audit_path(const kc_audit *a)
{
    return a->path;
}

/* The last record: its seq, log id and line hash; seq 0 for an empty log. */
static kc_rc last_record(kc_audit *a, long *seq, char log[LOG_ID_HEX + 1],
                         char hash[HASH_HEX + 1], kc_error *err)
{
    struct stat st;
    size_t want, start, off;
    char *buf;
    json_t *rec = NULL;
    unsigned char mac[32];
    int has_mac;
    size_t mac_off;
    ssize_t n;
    kc_rc r;

    *seq = 0;
    if (fstat(a->fd, &st) != 0)
        return kc_error_set(err, KC_ERR, "cannot read audit log '%s': %s", a->path,
                            strerror(errno));
    if (st.st_size == 0)
        return KC_OK;
    want = (size_t)st.st_size < KC_AUDIT_LINE_MAX + 1 ? (size_t)st.st_size : KC_AUDIT_LINE_MAX + 1;
    buf = malloc(want + 1);
    if (buf == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    n = pread(a->fd, buf, want, st.st_size - (off_t)want);
    if (n != (ssize_t)want) {
        free(buf);
        return kc_error_set(err, KC_ERR, "cannot read audit log '%s': %s", a->path,
                            n < 0 ? strerror(errno) : "short read");
    }
    buf[want] = '\0';
    if (buf[want - 1] != '\n') {
        free(buf);
        kc_error_set(err, KC_INTEGRITY, "audit log '%s' ends in an incomplete line", a->path);
        kc_error_hint(err, "a write was cut short (a crash?) or the file was edited: keep a copy "
                           "as evidence, remove the incomplete last line, and run 'keycustody "
                           "audit verify'; nothing is appended to a damaged log");
        return KC_INTEGRITY;
    }
    for (start = want - 1; start > 0 && buf[start - 1] != '\n'; start--)
        ;
    if (start == 0 && (size_t)st.st_size > want) {
        free(buf);
        return kc_error_set(err, KC_INTEGRITY, "the last line of audit log '%s' is too long",
                            a->path);
    }
    off = want - 1 - start;
    r = kc_audit_parse_line(buf + start, off, &rec, mac, &has_mac, &mac_off, err);
    if (r != KC_OK) {
        free(buf);
        kc_error_prefix(err, "the last line of audit log '%s' is not a record", a->path);
        kc_error_hint(err, "run 'keycustody audit verify' and keep the file as evidence; "
                           "nothing is appended to a damaged log");
        return KC_INTEGRITY;
    }
    *seq = (long)json_integer_value(json_object_get(rec, "seq"));
    snprintf(log, LOG_ID_HEX + 1, "%s", json_string_value(json_object_get(rec, "log")));
    hash_hex(buf + start, off, hash);
    json_decref(rec);
    free(buf);
    return KC_OK;
}

static kc_rc write_all(int fd, const char *buf, size_t len)
{
    ssize_t n;

    while (len > 0) {
        n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return KC_ERR;
        buf += n;
        len -= (size_t)n;
    }
    return KC_OK;
}

/* The record's text up to the MAC field (no closing brace). */
static char *record_prefix(const json_t *fields, long seq, const char *log, const char *prev,
                           const char *sealed_by)
{
    json_t *o = json_object(), *v;
    const char *k, *override = getenv("KEYCUSTODY_NOW");
    char now[21], *text;

    if (o == NULL)
        return NULL;
    /* The wall clock, never the test aid KEYCUSTODY_NOW: a record's time is
     * not the caller's to choose. An override in force is recorded. */
    kc_time_format_rfc3339(time(NULL), now);
    json_object_set_new(o, "seq", json_integer(seq));
    json_object_set_new(o, "log", json_string(log));
    json_object_set_new(o, "time", json_string(now));
    if (override != NULL && override[0] != '\0')
        json_object_set_new(o, "clock_override", json_string(override));
    json_object_foreach ((json_t *)fields, k, v) {
        if (json_object_get(o, k) == NULL && strcmp(k, "prev") != 0 &&
            strcmp(k, "sealed_by") != 0 && strcmp(k, "mac") != 0)
            json_object_set(o, k, v);
    }
    json_object_set_new(o, "prev", json_string(prev));
    json_object_set_new(o, "sealed_by", sealed_by != NULL ? json_string(sealed_by) : json_null());
    text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    json_decref(o);
    if (text != NULL)
        text[strlen(text) - 1] = '\0'; /* the MAC field follows */
    return text;
}

/* Seals prefix on tok: the audit key (made when missing) and the HMAC. */
static kc_rc seal(kc_tok *tok, const char *prefix, char mac_hex[HASH_HEX + 1], kc_error *err)
{
    unsigned char mac[32];
    kc_obj key;
    kc_rc r;

    if (!kc_tok_is_logged_in(tok))
        return kc_error_set(err, KC_DENIED, "the user of vault '%s' is not logged in",
                            kc_tok_info_get(tok)->label);
    r = kc_audit_key(tok, 1, &key, err);
    if (r == KC_OK)
        r = kc_tok_hmac(tok, key, (const unsigned char *)prefix, strlen(prefix), mac, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot seal the audit record on vault '%s'",
                               kc_tok_info_get(tok)->label);
    kc_hex_encode(mac, sizeof(mac), mac_hex);
    return KC_OK;
}

/* The hash of record seq of the log at fd (its line, without the newline).
 * KC_NOT_FOUND when the file holds no such line where it belongs. */
static kc_rc record_hash(int fd, long seq, char hash[HASH_HEX + 1], kc_error *err)
{
    struct stat st;
    char *buf, *line, *nl;
    size_t len, left;
    long at = 1;
    ssize_t n;
    kc_rc r = KC_NOT_FOUND;

    if (fstat(fd, &st) != 0 || (size_t)st.st_size > LOG_MAX)
        return kc_error_set(err, KC_ERR, "cannot read the audit log to check an anchor");
    len = (size_t)st.st_size;
    buf = malloc(len + 1);
    if (buf == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    n = pread(fd, buf, len, 0);
    if (n != (ssize_t)len) {
        free(buf);
        return kc_error_set(err, KC_ERR, "cannot read the audit log to check an anchor");
    }
    for (line = buf, left = len; left > 0 && at <= seq; at++) {
        nl = memchr(line, '\n', left);
        if (nl == NULL)
            break;
        if (at == seq) {
            hash_hex(line, (size_t)(nl - line), hash);
            r = KC_OK;
            break;
        }
        left -= (size_t)(nl - line) + 1;
        line = nl + 1;
    }
    free(buf);
    return r;
}

/* The vault's anchor for this log, checked against the file before the
 * vault seals again: the record it anchors must still be the one it sealed.
 * Without this, a log writer strips every seal, rewrites records and the
 * chain, and the next sealed record of each vault blesses the lot (its MAC
 * covers the rewritten link). *old gets the anchor (generation 0: none). */
static kc_rc anchor_holds(kc_audit *a, kc_tok *tok, const char *log, long last, anchor *old,
                          kc_error *err)
{
    char hash[HASH_HEX + 1];
    const char *vault = kc_tok_info_get(tok)->label;
    kc_error e;
    kc_rc r;

    kc_error_clear(&e);
    memset(old, 0, sizeof(*old));
    r = anchor_read(tok, a->anchor_label, old, &e);
    if (r == KC_NOT_FOUND) {
        old->generation = 0;
        return KC_OK;
    }
    if (r != KC_OK) {
        *err = e;
        return r;
    }
    if (strcmp(old->log, log) != 0 || old->seq > last)
        return kc_error_set(err, KC_INTEGRITY,
                            "vault '%s' anchors record %ld of log %s at '%s', which the file no "
                            "longer holds: records were removed or the log replaced",
                            vault, old->seq, old->log, a->path);
    r = record_hash(a->fd, old->seq, hash, err);
    if (r == KC_OK && strcmp(hash, old->hash) != 0)
        r = kc_error_set(err, KC_INTEGRITY,
                         "audit log '%s': record %ld was modified or replaced since vault '%s' "
                         "sealed and anchored it; the vault does not seal over it",
                         a->path, old->seq, vault);
    else if (r == KC_NOT_FOUND)
        r = kc_error_set(err, KC_INTEGRITY,
                         "audit log '%s' no longer holds record %ld, which vault '%s' anchored",
                         a->path, old->seq, vault);
    if (r == KC_INTEGRITY)
        kc_error_hint(err, "keep the log as evidence and run 'keycustody audit verify'; this "
                           "command's record is written unsealed");
    return r;
}

/* Moves the vault's anchor for this log to (seq, hash), from the anchor
 * anchor_holds checked. */
static kc_rc anchor_move(kc_audit *a, kc_tok *tok, const anchor *old, const char *log, long seq,
                         const char *hash, kc_error *err)
{
    return anchor_write(tok, a->anchor_label, log, seq, hash, old->generation + 1, &old->ref, err);
}

/* A new log must not start where a vault still anchors an older one. */
static kc_rc check_fresh(kc_audit *a, kc_tok *tok, kc_error *err)
{
    anchor old;
    kc_error e;
    kc_rc r;

    kc_error_clear(&e);
    r = anchor_read(tok, a->anchor_label, &old, &e);
    if (r == KC_NOT_FOUND)
        return KC_OK;
    if (r != KC_OK) {
        *err = e;
        return r;
    }
    kc_error_set(err, KC_INTEGRITY,
                 "audit log '%s' is empty, but vault '%s' anchors record %ld of log %s there: "
                 "the log was deleted or replaced",
                 a->path, kc_tok_info_get(tok)->label, old.seq, old.log);
    kc_error_hint(err, "put the original log back, or give another --audit path");
    return KC_INTEGRITY;
}

kc_rc kc_audit_append(kc_audit *a, const json_t *fields, kc_tok *sealer, kc_error *seal_err,
                      char **line_out, kc_error *err)
{
    char log[LOG_ID_HEX + 1], prev[HASH_HEX + 1], mac_hex[HASH_HEX + 1], hash[HASH_HEX + 1];
    unsigned char id[LOG_ID_HEX / 2];
    char *prefix = NULL, *line = NULL;
    anchor old;
    size_t len;
    long seq;
    int sealed = 0;
    kc_rc r;

    memset(&old, 0, sizeof(old));
    kc_error_clear(seal_err);
    if (line_out != NULL)
        *line_out = NULL;
    while (flock(a->fd, LOCK_EX) != 0)
        if (errno != EINTR)
            return kc_error_set(err, KC_ERR, "cannot lock audit log '%s': %s", a->path,
                                strerror(errno));
    r = last_record(a, &seq, log, prev, err);
    if (r != KC_OK)
        goto cleanup;
    if (seq == 0) {
        if (RAND_bytes(id, sizeof(id)) != 1) {
            r = kc_error_set(err, KC_ERR, "no random bytes for the audit log id");
            goto cleanup;
        }
        kc_hex_encode(id, sizeof(id), log);
        memset(prev, '0', HASH_HEX);
        prev[HASH_HEX] = '\0';
        if (sealer != NULL && kc_tok_is_logged_in(sealer)) {
            r = check_fresh(a, sealer, err);
            if (r != KC_OK)
                goto cleanup;
        }
    }
    if (sealer != NULL && kc_tok_is_logged_in(sealer) &&
        anchor_holds(a, sealer, log, seq, &old, seal_err) != KC_OK)
        sealer = NULL; /* written unsealed; seal_err says why */
    seq++;
    if (sealer != NULL) {
        prefix = record_prefix(fields, seq, log, prev, kc_tok_info_get(sealer)->label);
        if (prefix == NULL) {
            r = kc_error_set(err, KC_ERR, "out of memory");
            goto cleanup;
        }
        sealed = seal(sealer, prefix, mac_hex, seal_err) == KC_OK;
    }
    if (!sealed) {
        free(prefix);
        prefix = record_prefix(fields, seq, log, prev, NULL);
        if (prefix == NULL) {
            r = kc_error_set(err, KC_ERR, "out of memory");
            goto cleanup;
        }
    }
    len = strlen(prefix) + SEAL_LEN + HASH_HEX + 4;
    line = malloc(len + 1);
    if (line == NULL) {
        r = kc_error_set(err, KC_ERR, "out of memory");
        goto cleanup;
    }
    if (sealed)
        snprintf(line, len + 1, "%s%s\"%s\"}\n", prefix, SEAL, mac_hex);
    else
        snprintf(line, len + 1, "%s%snull}\n", prefix, SEAL);
    len = strlen(line);
    if (len > KC_AUDIT_LINE_MAX) {
        r = kc_error_set(err, KC_USAGE, "audit record of %zu bytes is longer than %d", len,
                         KC_AUDIT_LINE_MAX);
        goto cleanup;
    }
    if (write_all(a->fd, line, len) != KC_OK || fsync(a->fd) != 0) {
        r = kc_error_set(err, KC_ERR, "cannot write audit log '%s': %s", a->path,
                         strerror(errno));
        goto cleanup;
    }
    /* The anchor moves after the line is safely written: a crash in between
     * leaves the anchor one record behind, which verify accepts. */
    if (sealed) {
        hash_hex(line, len - 1, hash);
        if (anchor_move(a, sealer, &old, log, seq, hash, seal_err) != KC_OK)
            kc_error_prefix(seal_err, "record %ld is sealed but its anchor did not move", seq);
    }
    if (line_out != NULL) {
        line[len - 1] = '\0';
        *line_out = line;
        line = NULL;
    }
    r = KC_OK;
cleanup:
    (void)flock(a->fd, LOCK_UN);
    free(prefix);
    free(line);
    return r;
}

/* --- verification --- */

typedef struct vtok {
    char name[64];
    kc_tok *tok;
    kc_obj key;
    int missing; /* the token is not visible: its MACs cannot be checked */
} vtok;

typedef struct verifier {
    kc_ctx *ctx;
    vtok v[MAX_VAULTS];
    size_t n;
} verifier;

static kc_rc vault_key(verifier *vf, const char *name, vtok **out, kc_error *err)
{
    vtok *t;
    kc_rc r;
    size_t i;

    for (i = 0; i < vf->n; i++)
        if (strcmp(vf->v[i].name, name) == 0) {
            *out = &vf->v[i];
            return KC_OK;
        }
    if (vf->n == MAX_VAULTS)
        return kc_error_set(err, KC_ERR, "more than %d vaults seal this log", MAX_VAULTS);
    t = &vf->v[vf->n];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    r = kc_p11_token(vf->ctx->p11, name, &t->tok, err);
    if (r == KC_NOT_FOUND) {
        /* a lost vault: later records sealed elsewhere may vouch for its own */
        kc_error_clear(err);
        t->missing = 1;
        vf->n++;
        *out = t;
        return KC_OK;
    }
    if (r == KC_OK)
        r = kc_ctx_login(vf->ctx, t->tok, err);
    if (r == KC_OK) {
        r = kc_audit_key(t->tok, 0, &t->key, err);
        if (r == KC_NOT_FOUND)
            r = kc_error_set(err, KC_INTEGRITY,
                             "vault '%s' has no audit key: it is not the vault that sealed these "
                             "records (was its token initialised again?)",
                             name);
    }
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot check the records vault '%s' sealed", name);
    vf->n++;
    *out = t;
    return KC_OK;
}

typedef struct line_ref {
    const char *text;
    size_t len;
    long seq; /* 0 when the line does not parse */
} line_ref;

/* Splits buf into lines; the last must end with a newline. */
static kc_rc split_lines(char *buf, size_t len, const char *path, line_ref **out, size_t *n,
                         kc_error *err)
{
    size_t cap = 64, count = 0, start = 0, i;
    line_ref *v = malloc(cap * sizeof(*v)), *nv;

    if (v == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    for (i = 0; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        if (count == cap) {
            cap *= 2;
            nv = realloc(v, cap * sizeof(*v));
            if (nv == NULL) {
                free(v);
                return kc_error_set(err, KC_ERR, "out of memory");
            }
            v = nv;
        }
        v[count].text = buf + start;
        v[count].len = i - start;
        v[count].seq = 0;
        count++;
        start = i + 1;
    }
    if (start != len) {
        free(v);
        return kc_error_set(err, KC_INTEGRITY,
                            "audit log '%s': line %zu is incomplete (no newline at the end): a "
                            "record was cut short",
                            path, count + 1);
    }
    *out = v;
    *n = count;
    return KC_OK;
}

static long seq_of(const line_ref *l)
{
    json_t *rec = json_loadb(l->text, l->len, 0, NULL);
    long s = (long)json_integer_value(json_object_get(rec, "seq"));

    json_decref(rec);
    return s;
}

/* Says what an out-of-place sequence number means. */
/* Lines before i were read by the verifier and carry their seq; the ones
 * after it are read here, on this error path only. */
static kc_rc misplaced(line_ref *lines, size_t n, size_t i, long expect, const char *path,
                       kc_error *err)
{
    long s = lines[i].seq;
    size_t j;

    for (j = i + 1; j < n; j++)
        lines[j].seq = seq_of(&lines[j]);

    if (s < expect) {
        for (j = 0; j < i; j++)
            if (lines[j].seq == s)
                return kc_error_set(
                    err, KC_INTEGRITY,
                    "audit log '%s': lines %zu and %zu both carry sequence number %ld: a record "
                    "was inserted%s",
                    path, j + 1, i + 1, s,
                    lines[j].len == lines[i].len &&
                            memcmp(lines[j].text, lines[i].text, lines[i].len) == 0
                        ? " (a copy of another)"
                        : "");
        return kc_error_set(err, KC_INTEGRITY,
                            "audit log '%s': record %ld (line %zu) comes after record %ld: records "
                            "were reordered",
                            path, s, i + 1, expect - 1);
    }
    for (j = i + 1; j < n; j++)
        if (lines[j].seq == expect)
            return kc_error_set(err, KC_INTEGRITY,
                                "audit log '%s': record %ld (line %zu) comes before record %ld "
                                "(line %zu): records were reordered",
                                path, s, i + 1, expect, j + 1);
    if (expect == s - 1)
        return kc_error_set(err, KC_INTEGRITY,
                            "audit log '%s': record %ld was removed (before line %zu)", path,
                            expect, i + 1);
    return kc_error_set(err, KC_INTEGRITY,
                        "audit log '%s': records %ld to %ld were removed (before line %zu)", path,
                        expect, s - 1, i + 1);
}

/* Adds name to a ", "-separated list of cap bytes, once. */
static void note_vault(char *list, size_t cap, const char *name)
{
    size_t used = strlen(list);
    char *p = strstr(list, name);

    if (p != NULL && (p == list || p[-1] == ' ') &&
        (p[strlen(name)] == '\0' || p[strlen(name)] == ','))
        return;
    snprintf(list + used, cap - used, "%s%s", used ? ", " : "", name);
}

/* Each record in order: sequence, chain, MAC. */
static kc_rc verify_records(verifier *vf, const char *path, line_ref *lines, size_t n,
                            char log[LOG_ID_HEX + 1], kc_audit_summary *sum, kc_error *err)
{
    char prev[HASH_HEX + 1];
    long expect = 1, last_verified = 0, last_unchecked = 0;
    unsigned char mac[32];
    int has_mac;
    size_t i, mac_off;
    json_t *rec;
    vtok *vt = NULL;
    kc_error e;
    kc_rc r;

    memset(prev, '0', HASH_HEX);
    prev[HASH_HEX] = '\0';
    log[0] = '\0';
    /* each record is parsed once, in order (audit verify stays linear) */
    for (i = 0; i < n; i++) {
        kc_error_clear(&e);
        r = kc_audit_parse_line(lines[i].text, lines[i].len, &rec, mac, &has_mac, &mac_off, &e);
        if (r != KC_OK)
            return kc_error_set(err, KC_INTEGRITY,
                                "audit log '%s': line %zu is not an audit record (%s): it was "
                                "modified or inserted",
                                path, i + 1, e.msg);
        lines[i].seq = (long)json_integer_value(json_object_get(rec, "seq"));
        const char *rlog = json_string_value(json_object_get(rec, "log"));
        const char *rprev = json_string_value(json_object_get(rec, "prev"));
        const char *by = json_string_value(json_object_get(rec, "sealed_by"));
        if (i == 0) {
            snprintf(log, LOG_ID_HEX + 1, "%s", rlog);
            if (lines[0].seq != 1) {
                json_decref(rec);
                return kc_error_set(err, KC_INTEGRITY,
                                    "audit log '%s': it starts at record %ld: records 1 to %ld "
                                    "were removed",
                                    path, lines[0].seq, lines[0].seq - 1);
            }
        } else if (strcmp(rlog, log) != 0) {
            json_decref(rec);
            return kc_error_set(err, KC_INTEGRITY,
                                "audit log '%s': line %zu belongs to another log (%s): it was "
                                "inserted",
                                path, i + 1, rlog);
        }
        if (lines[i].seq != expect) {
            json_decref(rec);
            return misplaced(lines, n, i, expect, path, err);
        }
        if (strcmp(rprev, prev) != 0) {
            json_decref(rec);
            if (expect == 1)
                return kc_error_set(err, KC_INTEGRITY,
                                    "audit log '%s': record 1 was modified (its link is not the "
                                    "start of a log)",
                                    path);
            return kc_error_set(err, KC_INTEGRITY,
                                "audit log '%s': record %ld (line %zu) was modified: record %ld "
                                "holds another hash of it",
                                path, expect - 1, i, expect);
        }
        if (has_mac) {
            r = vault_key(vf, by, &vt, err);
            if (r == KC_OK && vt->missing) {
                last_unchecked = expect;
                sum->sealed++;
                sum->unchecked++;
                note_vault(sum->missing, sizeof(sum->missing), by);
                json_decref(rec);
                hash_hex(lines[i].text, lines[i].len, prev);
                expect++;
                continue;
            }
            if (r == KC_OK)
                r = kc_tok_hmac_verify(vt->tok, vt->key, (const unsigned char *)lines[i].text,
                                       mac_off, mac, err);
            if (r == KC_INTEGRITY) {
                /* The chain up to here holds, so this record's own bytes
                 * changed, or the chain before it was rewritten with it. */
                char since[64] = "before it";
                if (last_verified > 0)
                    snprintf(since, sizeof(since), "after record %ld (the last whose MAC verified)",
                             last_verified);
                kc_error_clear(err);
                kc_error_set(err, KC_INTEGRITY,
                             "audit log '%s': record %ld (line %zu) was modified, or records %s "
                             "were rewritten: its MAC does not verify under vault '%s''s audit key "
                             "(or that key was replaced)",
                             path, expect, i + 1, since, by);
            }
            if (r != KC_OK) {
                json_decref(rec);
                return r;
            }
            last_verified = expect;
            sum->sealed++;
            note_vault(sum->vaults, sizeof(sum->vaults), by);
        }
        json_decref(rec);
        hash_hex(lines[i].text, lines[i].len, prev);
        expect++;
    }
    sum->records = (long)n;
    sum->unsealed_tail = (long)n - (last_verified > last_unchecked ? last_verified : last_unchecked);
    if (last_unchecked > last_verified) {
        /* Nothing vouches for it: a record that names a sealer nobody can
         * see is what a forger writes as well as what a lost vault leaves. */
        kc_error_set(err, KC_INTEGRITY,
                     "audit log '%s': record %ld claims to be sealed by vault %s, which is not "
                     "visible, and no later record sealed by a visible vault vouches for it: "
                     "it is unproven, and may be forged",
                     path, last_unchecked, sum->missing);
        kc_error_hint(err, "if that vault is only out of sight, make its token visible "
                           "(--module, SOFTHSM2_CONF); if it is lost, seal a new record with "
                           "another vault and verify again");
        return KC_INTEGRITY;
    }
    return KC_OK;
}

/* Every visible vault's anchor for this log path against the records. */
static kc_rc verify_anchors(verifier *vf, const char *path, const char *label,
                            const line_ref *lines, size_t n, const char *log,
                            kc_audit_summary *sum, kc_error *err)
{
    kc_vault_entry *vs = NULL;
    size_t nv = 0, i;
    char hash[HASH_HEX + 1];
    anchor an;
    kc_tok *tok;
    kc_rc r;

    r = kc_vault_list(vf->ctx, &vs, &nv, err);
    if (r != KC_OK)
        return r;
    for (i = 0; i < nv && r == KC_OK; i++) {
        if (!vs[i].is_vault)
            continue;
        /* by the listing's slot: no pass over every slot per vault */
        r = kc_p11_token_listed(vf->ctx->p11, &vs[i].token, &tok, err);
        if (r == KC_OK)
            r = kc_ctx_login(vf->ctx, tok, err);
        if (r != KC_OK) {
            kc_error_prefix(err, "cannot read the audit anchor of vault '%s'", vs[i].meta.name);
            break;
        }
        r = anchor_read(tok, label, &an, err);
        if (r == KC_NOT_FOUND) {
            kc_error_clear(err);
            r = KC_OK;
            continue;
        }
        if (r != KC_OK)
            break;
        note_vault(sum->anchors, sizeof(sum->anchors), vs[i].meta.name);
        if (n == 0 || strcmp(an.log, log) != 0) {
            r = kc_error_set(err, KC_INTEGRITY,
                             "audit log '%s' %s, but vault '%s' anchors record %ld of log %s "
                             "there: the log was deleted or replaced",
                             path, n == 0 ? "is empty" : "is another log", vs[i].meta.name,
                             an.seq, an.log);
        } else if (an.seq > (long)n) {
            r = kc_error_set(err, KC_INTEGRITY,
                             "audit log '%s' ends at record %zu, but vault '%s' anchors record "
                             "%ld: %s removed from the end",
                             path, n, vs[i].meta.name, an.seq,
                             an.seq == (long)n + 1 ? "a record was" : "records were");
        } else {
            hash_hex(lines[an.seq - 1].text, lines[an.seq - 1].len, hash);
            if (strcmp(hash, an.hash) != 0)
                r = kc_error_set(err, KC_INTEGRITY,
                                 "audit log '%s': record %ld was modified or replaced (vault "
                                 "'%s' anchored another hash of it)",
                                 path, an.seq, vs[i].meta.name);
        }
    }
    free(vs);
    return r;
}

kc_rc kc_audit_verify(kc_ctx *ctx, const char *path, kc_audit_summary *sum, kc_error *err)
{
    verifier vf;
    unsigned char *buf = NULL;
    line_ref *lines = NULL;
    char log[LOG_ID_HEX + 1] = "", label[64];
    size_t len = 0, n = 0;
    int missing = 0;
    kc_rc r;

    memset(sum, 0, sizeof(*sum));
    memset(&vf, 0, sizeof(vf));
    vf.ctx = ctx;
    r = anchor_label_for(path, label, err);
    if (r != KC_OK)
        return r;
    r = kc_file_read(path, LOG_MAX, &buf, &len, err);
    if (r == KC_NOT_FOUND) {
        /* A missing log is checked like an empty one: its anchors say
         * whether there was one (then it was removed: exit 8). */
        kc_error_clear(err);
        len = 0;
        missing = 1;
        r = KC_OK;
    } else if (r != KC_OK) {
        return r;
    }
    if (buf != NULL)
        r = split_lines((char *)buf, len, path, &lines, &n, err);
    if (r == KC_OK)
        r = verify_records(&vf, path, lines, n, log, sum, err);
    if (r == KC_OK)
        r = verify_anchors(&vf, path, label, lines, n, log, sum, err);
    /* no file, and no vault anchors one there: there never was a log */
    if (r == KC_OK && missing) {
        kc_error_set(err, KC_NOT_FOUND, "no audit log at '%s', and no vault anchors one there",
                     path);
        kc_error_hint(err, "check --audit, KEYCUSTODY_AUDIT or the layout's audit:");
        r = KC_NOT_FOUND;
    }
    free(lines);
    free(buf);
    return r;
}
