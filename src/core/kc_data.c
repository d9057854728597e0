#include "kc_data.h"
#include "kc_store_int.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_BYTES 32
#define WRAPPED_BYTES KC_DATA_WRAPPED_BYTES /* RFC 5649 of 32 bytes */
#define NONCE_BYTES 12
#define TAG_BYTES 16
#define MAGIC "KCI1"
/* header: magic | nonce | tag | DEP generation (8, big-endian) | DEP id (36) | wrapped item key */
#define HDR_BYTES (4 + NONCE_BYTES + TAG_BYTES + 8 + 36 + WRAPPED_BYTES)

struct cached {
    char id[37];
    long generation;
    kc_secret *key;
};

struct kc_data_session {
    kc_ctx *ctx;
    kc_store *st;
    const char *principal;
    unsigned flags;
    void (*warn)(void *, const char *);
    void *warn_arg;
    struct cached *deps;
    size_t ndeps, unwraps;
    /* AES key wrap with padding, fetched once, and one context for every
     * wrap and unwrap of the session (a re-wrap does two per scope) */
    EVP_CIPHER *kwp_cipher;
    EVP_CIPHER_CTX *kwp_ctx;
};

kc_rc kc_data_open(kc_ctx *ctx, kc_store *st, const char *principal, unsigned flags,
                   void (*warn)(void *, const char *), void *warn_arg, kc_data_session **out,
                   kc_error *err)
{
    kc_data_session *s;
    /* every row the session uses is checked: the row key first */
    kc_rc r = kc_store_authenticate(ctx, st, NULL, 0, err);

    *out = NULL;
    if (r != KC_OK)
        return r;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    s->ctx = ctx;
    s->st = st;
    s->principal = principal;
    s->flags = flags;
    s->warn = warn;
    s->warn_arg = warn_arg;
    s->kwp_cipher = EVP_CIPHER_fetch(NULL, "AES-256-WRAP-PAD", NULL);
    s->kwp_ctx = EVP_CIPHER_CTX_new();
    if (s->kwp_cipher == NULL || s->kwp_ctx == NULL) {
        kc_data_close(s);
        return kc_error_set(err, KC_ERR, "OpenSSL has no AES-256 key wrap with padding");
    }
    *out = s;
    return KC_OK;
}

void kc_data_close(kc_data_session *s)
{
    size_t i;

    if (s == NULL)
        return;
    for (i = 0; i < s->ndeps; i++)
        kc_secret_free(s->deps[i].key); /* wiped */
    free(s->deps);
    EVP_CIPHER_CTX_free(s->kwp_ctx); /* cleanses the key schedule */
    EVP_CIPHER_free(s->kwp_cipher);
    free(s);
}

size_t kc_data_unwraps(const kc_data_session *s)
{
    return s->unwraps;
}

/* RFC 5649 wrap (enc = 1) or unwrap (enc = 0) of in under a 32-byte key,
 * in the session's context. */
static int kwp(kc_data_session *s, const unsigned char *kek, int enc, const unsigned char *in,
               size_t in_len, unsigned char *out, size_t *out_len)
{
    EVP_CIPHER_CTX *c = s->kwp_ctx;
    int n = 0, m = 0, ok;

    ok = EVP_CipherInit_ex2(c, s->kwp_cipher, kek, NULL, enc, NULL) == 1 &&
         EVP_CipherUpdate(c, out, &n, in, (int)in_len) == 1 &&
         EVP_CipherFinal_ex(c, out + n, &m) == 1;
    *out_len = ok ? (size_t)(n + m) : 0;
    return ok;
}

/* The DEP key of DEP id at generation, unwrapped once per session. */
static kc_rc dep_key(kc_data_session *s, const char *id, long generation, const kc_secret **out,
                     kc_error *err)
{
    kc_dep_unwrap_info info;
    struct cached *nv;
    kc_secret *key = NULL;
    size_t i;
    kc_rc r;

    for (i = 0; i < s->ndeps; i++)
        if (strcmp(s->deps[i].id, id) == 0 && s->deps[i].generation == generation) {
            *out = s->deps[i].key;
            return KC_OK;
        }
    r = kc_dep_unwrap(s->ctx, s->st, id, generation, s->principal, s->flags, &key, &info, err);
    if (r != KC_OK)
        return r;
    s->unwraps++;
    for (i = 0; i < 2 && s->warn != NULL; i++)
        if (info.skipped[i][0] != '\0' && (int)i < info.slot)
            s->warn(s->warn_arg, info.skipped[i]);
    if (info.break_glass && s->warn != NULL)
        s->warn(s->warn_arg, "the DEP key was unwrapped by the availability key (break glass)");
    nv = realloc(s->deps, (s->ndeps + 1) * sizeof(*nv));
    if (nv == NULL) {
        kc_secret_free(key);
        return kc_error_set(err, KC_ERR, "out of memory");
    }
    s->deps = nv;
    snprintf(nv[s->ndeps].id, sizeof(nv[s->ndeps].id), "%s", id);
    nv[s->ndeps].generation = generation;
    nv[s->ndeps].key = key;
    *out = key;
    s->ndeps++;
    return KC_OK;
}

/* The scope's record: its DEP and wrapped key. KC_NOT_FOUND when none. */
static kc_rc scope_row(kc_store *st, const char *scope, char dep_id[37], long *generation,
                       unsigned char wrapped[WRAPPED_BYTES], int *purged, kc_error *err)
{
    kc_q *q = NULL;
    kc_rc r = KC_NOT_FOUND;
    const unsigned char *t;

    *purged = 0;
    if (kc_q_prepare(st,
                     "SELECT s.dep_id, s.dep_generation, s.wrapped_key, s.purged, d.name "
                     "FROM scopes s JOIN deps d ON d.id = s.dep_id WHERE s.scope = ?",
                     &q) != KC_Q_OK)
        return kc_error_set(err, KC_ERR, "the service store: %s", kc_store_errmsg(st));
    kc_q_bind_text(q, 1, scope);
    if (kc_q_step(q) == KC_Q_ROW) {
        t = kc_q_text(q, 0);
        snprintf(dep_id, 37, "%s", t ? (const char *)t : "");
        *generation = (long)kc_q_int(q, 1);
        if (kc_q_type(q, 3) != KC_Q_NULL) {
            *purged = 1;
            r = kc_error_set(err, KC_NOT_FOUND,
                             "scope '%s' was purged on %s with DEP '%s': its key was destroyed, "
                             "so its data can never be read again",
                             scope, (const char *)kc_q_text(q, 3), (const char *)kc_q_text(q, 4));
            kc_error_hint(err, "no key can open it: not the custodians', not the availability key");
        } else if (kc_q_bytes(q, 2) != WRAPPED_BYTES)
            r = kc_error_set(err, KC_INTEGRITY, "scope '%s': its wrapped key is damaged", scope);
        else {
            memcpy(wrapped, kc_q_blob(q, 2), WRAPPED_BYTES);
            r = KC_OK;
        }
    }
    kc_q_finish(q);
    if (r == KC_NOT_FOUND && !*purged)
        kc_error_set(err, KC_NOT_FOUND, "scope '%s' has no data", scope);
    return r;
}

/* Makes the scope's key under its effective DEP and records it (inside the
 * caller's transaction). */
static kc_rc new_scope(kc_data_session *s, const char *scope, kc_secret *sk, char dep_id[37],
                       long *generation, kc_error *err)
{
    unsigned char wrapped[WRAPPED_BYTES];
    const kc_secret *dek = NULL;
    kc_q *q = NULL;
    size_t wl = 0;
    int inherited, rc;
    kc_dep d;
    kc_rc r;

    r = kc_dep_effective(s->st, scope, &d, &inherited, err);
    if (r == KC_NOT_FOUND)
        kc_error_hint(err, "assign one with 'keycustody dep assign'");
    if (r == KC_OK)
        r = dep_key(s, d.id, d.generation, &dek, err);
    if (r != KC_OK)
        return r;
    if (RAND_priv_bytes(sk->data, KEY_BYTES) != 1 ||
        !kwp(s, dek->data, 1, sk->data, KEY_BYTES, wrapped, &wl) || wl != WRAPPED_BYTES)
        return kc_error_set(err, KC_ERR, "cannot make the key of scope '%s'", scope);
    sk->len = KEY_BYTES;
    rc = kc_q_prepare(s->st,
                      "INSERT INTO scopes (scope, dep_id, dep_generation, wrapped_key) "
                      "VALUES (?, ?, ?, ?)",
                      &q);
    if (rc == KC_Q_OK) {
        kc_q_bind_text(q, 1, scope);
        kc_q_bind_text(q, 2, d.id);
        kc_q_bind_int(q, 3, d.generation);
        kc_q_bind_blob(q, 4, wrapped, WRAPPED_BYTES);
        rc = kc_q_step(q) == KC_Q_DONE ? KC_Q_OK : KC_Q_ERROR;
    }
    kc_q_finish(q);
    if (rc != KC_Q_OK)
        return kc_error_set(err, KC_ERR, "the service store: %s", kc_store_errmsg(s->st));
    snprintf(dep_id, 37, "%s", d.id);
    *generation = d.generation;
    return KC_OK;
}

/* The scope's key, unwrapped; made when create is set and it has none. */
static kc_rc row_key(kc_data_session *s, const char *scope, const char *dep_id, long generation,
                     const unsigned char *wrapped, size_t wrapped_len, kc_secret **out,
                     kc_error *err);

static kc_rc scope_key(kc_data_session *s, const char *scope, int create, kc_secret **out,
                       char dep_id[37], long *generation, kc_error *err)
{
    unsigned char wrapped[WRAPPED_BYTES];
    kc_secret *sk;
    int purged;
    kc_rc r;

    *out = NULL;
    r = scope_row(s->st, scope, dep_id, generation, wrapped, &purged, err);
    if (r == KC_OK)
        return row_key(s, scope, dep_id, *generation, wrapped, WRAPPED_BYTES, out, err);
    if (r != KC_NOT_FOUND || !create || purged)
        return r;
    kc_error_clear(err);
    sk = kc_secret_new(KEY_BYTES + 8);
    if (sk == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    r = new_scope(s, scope, sk, dep_id, generation, err);
    if (r != KC_OK) {
        kc_secret_free(sk);
        return r;
    }
    *out = sk;
    return KC_OK;
}

/* Associated data: what the item is, so it opens only as itself. */
static size_t item_aad(unsigned char *out, size_t cap, const char *scope, const char *name,
                       const char *dep_id, long generation)
{
    int n = snprintf((char *)out, cap, "keycustody-item-v1%c%s%c%s%c%s%c%ld", 0, scope, 0, name, 0,
                     dep_id, 0, generation);

    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static kc_rc check_name(const char *scope, const char *name, kc_error *err)
{
    size_t i, n = strlen(name);
    kc_rc r = kc_dep_scope_check(scope, err);

    if (r != KC_OK)
        return r;
    for (i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            break;
    if (n == 0 || n > 255 || i < n)
        return kc_error_set(err, KC_USAGE,
                            "an item name has 1 to 255 characters and no control characters");
    return KC_OK;
}

static void put_be64(unsigned char *p, uint64_t v)
{
    int i;

    for (i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)(v & 0xff);
}

static uint64_t get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* A DEP id as the store writes it: 8-4-4-4-12 lower-case hex digits. */
static int guid_ok(const char *s)
{
    size_t i;

    for (i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    }
    return s[36] == '\0';
}

kc_rc kc_data_item_parse(const unsigned char *buf, size_t len, kc_item_header *out, kc_error *err)
{
    const unsigned char *p = buf + 4;
    uint64_t gen;

    memset(out, 0, sizeof(*out));
    if (len != HDR_BYTES || memcmp(buf, MAGIC, 4) != 0)
        return kc_error_set(err, KC_INTEGRITY, "not an item header (%zu bytes)", len);
    memcpy(out->nonce, p, NONCE_BYTES);
    memcpy(out->tag, p + NONCE_BYTES, TAG_BYTES);
    gen = get_be64(p + NONCE_BYTES + TAG_BYTES);
    memcpy(out->dep_id, p + NONCE_BYTES + TAG_BYTES + 8, 36);
    out->dep_id[36] = '\0';
    memcpy(out->wrapped_key, p + NONCE_BYTES + TAG_BYTES + 8 + 36, WRAPPED_BYTES);
    if (gen < 1 || gen > (uint64_t)INT32_MAX || !guid_ok(out->dep_id))
        return kc_error_set(err, KC_INTEGRITY,
                            "an item header with a damaged DEP id or generation");
    out->generation = (long)gen;
    return KC_OK;
}

static int gcm(int enc, const unsigned char *key, const unsigned char *nonce,
               const unsigned char *aad, size_t aad_len, const unsigned char *in, size_t len,
               unsigned char *out, unsigned char *tag)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, m = 0, ok;

    ok = c != NULL && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce, enc) == 1 &&
         EVP_CipherUpdate(c, NULL, &n, aad, (int)aad_len) == 1 &&
         (len == 0 || EVP_CipherUpdate(c, out, &n, in, (int)len) == 1) &&
         (enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_BYTES, tag) == 1) &&
         EVP_CipherFinal_ex(c, out + (len ? n : 0), &m) == 1 &&
         (!enc || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_BYTES, tag) == 1);
    EVP_CIPHER_CTX_free(c);
    return ok;
}

static kc_rc store_item(kc_store *st, const char *scope, const char *name, const unsigned char *hdr,
                        const unsigned char *ct, size_t len, kc_error *err)
{
    kc_q *q = NULL;
    int rc;

    rc = kc_q_prepare(st,
                      "INSERT INTO items (scope, name, header, ciphertext) VALUES (?, ?, ?, "
                      "?) ON CONFLICT (scope, name) DO UPDATE SET header = excluded.header, "
                      "ciphertext = excluded.ciphertext",
                      &q);
    if (rc == KC_Q_OK) {
        kc_q_bind_text(q, 1, scope);
        kc_q_bind_text(q, 2, name);
        kc_q_bind_blob(q, 3, hdr, HDR_BYTES);
        kc_q_bind_blob(q, 4, len ? (const void *)ct : "", (int)len);
        rc = kc_q_step(q) == KC_Q_DONE ? KC_Q_OK : KC_Q_ERROR;
    }
    kc_q_finish(q);
    if (rc != KC_Q_OK)
        return kc_error_set(err, KC_ERR, "the service store: %s", kc_store_errmsg(st));
    return KC_OK;
}

kc_rc kc_data_put(kc_data_session *s, const char *scope, const char *name,
                  const unsigned char *data, size_t len, kc_error *err)
{
    unsigned char hdr[HDR_BYTES], aad[600], *ct = NULL, *p;
    kc_secret *sk = NULL, *ik = kc_secret_new(KEY_BYTES);
    char dep_id[37];
    long generation = 0;
    size_t aad_len, wl = 0;
    kc_rc r;

    r = check_name(scope, name, err);
    if (r == KC_OK && len > KC_DATA_MAX)
        r = kc_error_set(err, KC_USAGE, "an item holds at most %u bytes", KC_DATA_MAX);
    if (r == KC_OK && (ik == NULL || (ct = malloc(len ? len : 1)) == NULL))
        r = kc_error_set(err, KC_ERR, "out of memory");
    if (r == KC_OK)
        r = kc_store_begin(s->st, err);
    if (r != KC_OK)
        goto done;
    r = scope_key(s, scope, 1, &sk, dep_id, &generation, err);
    aad_len = item_aad(aad, sizeof(aad), scope, name, dep_id, generation);
    memcpy(hdr, MAGIC, 4);
    p = hdr + 4;
    if (r == KC_OK &&
        (RAND_priv_bytes(ik->data, KEY_BYTES) != 1 || RAND_bytes(p, NONCE_BYTES) != 1 ||
         aad_len == 0 || !gcm(1, ik->data, p, aad, aad_len, data, len, ct, p + NONCE_BYTES) ||
         !kwp(s, sk->data, 1, ik->data, KEY_BYTES, p + NONCE_BYTES + TAG_BYTES + 8 + 36, &wl) ||
         wl != WRAPPED_BYTES))
        r = kc_error_set(err, KC_ERR, "cannot seal item '%s'", name);
    if (r == KC_OK) {
        put_be64(p + NONCE_BYTES + TAG_BYTES, (uint64_t)generation);
        memcpy(p + NONCE_BYTES + TAG_BYTES + 8, dep_id, 36);
        r = store_item(s->st, scope, name, hdr, ct, len, err);
    }
    if (r == KC_OK)
        r = kc_store_commit(s->st, err);
    else
        kc_store_rollback(s->st);
done:
    kc_secret_free(sk);
    kc_secret_free(ik);
    if (ct != NULL)
        OPENSSL_cleanse(ct, len);
    free(ct);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot put '%s' in scope '%s'", name, scope);
    return KC_OK;
}

static kc_rc load_item(kc_store *st, const char *scope, const char *name, kc_item_header *hdr,
                       unsigned char **ct, size_t *len, kc_error *err)
{
    kc_q *q = NULL;
    kc_rc r;
    int n;

    *ct = NULL;
    if (kc_q_prepare(st, "SELECT header, ciphertext FROM items WHERE scope = ? AND name = ?", &q) !=
        KC_Q_OK)
        return kc_error_set(err, KC_ERR, "the service store: %s", kc_store_errmsg(st));
    kc_q_bind_text(q, 1, scope);
    kc_q_bind_text(q, 2, name);
    if (kc_q_step(q) != KC_Q_ROW) {
        r = kc_error_set(err, KC_NOT_FOUND, "scope '%s' has no item '%s'", scope, name);
    } else if (kc_data_item_parse(kc_q_blob(q, 0), (size_t)kc_q_bytes(q, 0), hdr, err) != KC_OK) {
        r = kc_error_prefix(err, "item '%s' of scope '%s' has a damaged header", name, scope);
    } else {
        n = kc_q_bytes(q, 1);
        *ct = malloc(n > 0 ? (size_t)n : 1);
        r = *ct ? KC_OK : kc_error_set(err, KC_ERR, "out of memory");
        if (r == KC_OK) {
            if (n > 0)
                memcpy(*ct, kc_q_blob(q, 1), (size_t)n);
            *len = (size_t)n;
        }
    }
    kc_q_finish(q);
    return r;
}

kc_rc kc_data_get(kc_data_session *s, const char *scope, const char *name, kc_secret **out,
                  kc_error *err)
{
    unsigned char aad[600], *ct = NULL;
    kc_item_header hdr;
    kc_secret *sk = NULL, *ik = kc_secret_new(KEY_BYTES + 8), *pt = NULL;
    char dep_id[37];
    long generation = 0;
    size_t len = 0, aad_len, kl = 0;
    kc_rc r;

    *out = NULL;
    r = check_name(scope, name, err);
    if (r == KC_OK && ik == NULL)
        r = kc_error_set(err, KC_ERR, "out of memory");
    if (r == KC_OK)
        r = load_item(s->st, scope, name, &hdr, &ct, &len, err);
    if (r == KC_OK)
        r = scope_key(s, scope, 0, &sk, dep_id, &generation, err);
    if (r == KC_OK && (pt = kc_secret_new(len ? len : 1)) == NULL)
        r = kc_error_set(err, KC_ERR, "out of memory");
    if (r != KC_OK)
        goto done;
    /* The item is bound to the DEP and generation it was sealed under. */
    aad_len = item_aad(aad, sizeof(aad), scope, name, hdr.dep_id, hdr.generation);
    if (!kwp(s, sk->data, 0, hdr.wrapped_key, WRAPPED_BYTES, ik->data, &kl) || kl != KEY_BYTES ||
        aad_len == 0 || !gcm(0, ik->data, hdr.nonce, aad, aad_len, ct, len, pt->data, hdr.tag)) {
        r = kc_error_set(err, KC_INTEGRITY, "item '%s' of scope '%s' fails authentication", name,
                         scope);
        goto done;
    }
    pt->len = len;
    *out = pt;
    pt = NULL;
done:
    kc_secret_free(pt);
    kc_secret_free(sk);
    kc_secret_free(ik);
    free(ct);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot get '%s' from scope '%s'", name, scope);
    return KC_OK;
}

/* The scope's key from its row's wrapped copy. */
static kc_rc row_key(kc_data_session *s, const char *scope, const char *dep_id, long generation,
                     const unsigned char *wrapped, size_t wrapped_len, kc_secret **out,
                     kc_error *err)
{
    const kc_secret *dek = NULL;
    kc_secret *sk;
    size_t len = 0;
    kc_rc r;

    *out = NULL;
    if (wrapped_len != WRAPPED_BYTES)
        return kc_error_set(err, KC_INTEGRITY, "scope '%s': its wrapped key is damaged", scope);
    sk = kc_secret_new(KEY_BYTES + 8);
    if (sk == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    r = dep_key(s, dep_id, generation, &dek, err);
    if (r == KC_OK &&
        (!kwp(s, dek->data, 0, wrapped, WRAPPED_BYTES, sk->data, &len) || len != KEY_BYTES))
        r = kc_error_set(err, KC_INTEGRITY,
                         "the key of scope '%s' does not unwrap under its DEP key", scope);
    sk->len = len;
    if (r != KC_OK) {
        kc_secret_free(sk);
        return r;
    }
    *out = sk;
    return KC_OK;
}

static kc_rc wrap_for(kc_data_session *s, const char *scope, kc_secret *sk, const char *to_id,
                      long to_gen, unsigned char wrapped[WRAPPED_BYTES], kc_error *err);

kc_rc kc_data_rewrap_row(kc_data_session *s, const char *scope, const char *from_id,
                         long from_gen, const unsigned char *wrapped, size_t wrapped_len,
                         const char *to_id, long to_gen,
                         unsigned char out[KC_DATA_WRAPPED_BYTES], kc_error *err)
{
    kc_secret *sk = NULL;
    kc_rc r = row_key(s, scope, from_id, from_gen, wrapped, wrapped_len, &sk, err);

    return r == KC_OK ? wrap_for(s, scope, sk, to_id, to_gen, out, err) : r;
}

/* sk (freed here) wrapped under the DEP key of to_id at to_gen. */
static kc_rc wrap_for(kc_data_session *s, const char *scope, kc_secret *sk, const char *to_id,
                      long to_gen, unsigned char wrapped[WRAPPED_BYTES], kc_error *err)
{
    const kc_secret *dek = NULL;
    size_t wl = 0;
    kc_rc r = dep_key(s, to_id, to_gen, &dek, err);

    if (r == KC_OK &&
        (!kwp(s, dek->data, 1, sk->data, KEY_BYTES, wrapped, &wl) || wl != WRAPPED_BYTES))
        r = kc_error_set(err, KC_ERR, "cannot wrap the key of scope '%s'", scope);
    kc_secret_free(sk);
    return r;
}
