#include "kc_dep.h"
#include "kc_key.h"
#include "kc_store_int.h"
#include "kc_util.h"

#include <openssl/crypto.h>
#include <openssl/hmac.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEP_KEY_BYTES 32
#define KCV_BYTES 16

/* The DEP key's check value: HMAC-SHA256 under it of a fixed label, cut to
 * 16 bytes. Kept with each wrapped copy, so a copy that unwraps to another
 * key is found at once, whichever vault unwrapped it. */
static kc_rc dep_kcv(const kc_secret *dek, unsigned char kcv[KCV_BYTES], kc_error *err)
{
    static const char label[] = "keycustody DEP key check value v1";
    unsigned char md[32];
    unsigned int len = 0;

    if (HMAC(EVP_sha256(), dek->data, (int)dek->len, (const unsigned char *)label,
             sizeof(label) - 1, md, &len) == NULL)
        return kc_error_set(err, KC_ERR, "cannot compute a DEP key check value");
    memcpy(kcv, md, KCV_BYTES);
    OPENSSL_cleanse(md, sizeof(md));
    return KC_OK;
}

/* --- the MACs of the rows (kc_store_int.h) --- */

static kc_rc dep_mac(kc_store *st, const kc_dep *d, unsigned char mac[32], kc_error *err)
{
    kc_row r;

    kc_row_init(&r, "deps");
    kc_row_text(&r, d->id);
    kc_row_text(&r, d->name);
    kc_row_text(&r, d->workload);
    kc_row_text_opt(&r, d->geo);
    kc_row_text(&r, d->description);
    kc_row_int(&r, d->enabled);
    kc_row_text(&r, d->created);
    kc_row_int(&r, d->generation);
    kc_row_text_opt(&r, d->purge_requested);
    kc_row_text_opt(&r, d->principal);
    kc_row_text_opt(&r, d->purged);
    kc_row_text_opt(&r, d->purge_reason);
    kc_row_text_opt(&r, d->purge_contact);
    return kc_row_seal(st, &r, mac, err);
}

static kc_rc dep_key_mac(kc_store *st, const char *dep_id, long generation, int slot,
                         const kc_dep_key *dk, const unsigned char *blob, size_t len,
                         unsigned char mac[32], kc_error *err)
{
    kc_row r;

    kc_row_init(&r, "dep_keys");
    kc_row_text(&r, dep_id);
    kc_row_int(&r, generation);
    kc_row_int(&r, slot);
    kc_row_text(&r, dk->vault);
    kc_row_text(&r, dk->key);
    kc_row_text(&r, dk->version);
    kc_row_text(&r, dk->alg);
    kc_row_blob(&r, blob, len);
    kc_row_blob(&r, dk->kcv, KCV_BYTES);
    return kc_row_seal(st, &r, mac, err);
}

static kc_rc assignment_mac(kc_store *st, const char *scope, const char *dep_id,
                            unsigned char mac[32], kc_error *err)
{
    kc_row r;

    kc_row_init(&r, "assignments");
    kc_row_text(&r, scope);
    kc_row_text(&r, dep_id);
    return kc_row_seal(st, &r, mac, err);
}

/* Checks a result row whose first n columns are the covered ones, in the
 * table's order, and whose column n is the MAC. */
/* The row of table in columns first .. first + n - 1 of s, its MAC after them. */
static kc_rc check_cols_at(kc_store *st, kc_q *s, const char *table, int first, int n,
                           const char *what, kc_error *err)
{
    kc_row r;

    kc_row_init(&r, table);
    kc_row_cols(&r, s, first, n);
    return kc_row_check(st, &r, s, first + n, what, err);
}

static kc_rc check_cols(kc_store *st, kc_q *s, const char *table, int n, const char *what,
                        kc_error *err)
{
    return check_cols_at(st, s, table, 0, n, what, err);
}

static kc_rc store_error(kc_store *st, kc_error *err)
{
    return kc_error_set(err, kc_store_unique_violation(st) ? KC_CONFLICT : KC_ERR,
                        "the service store: %s", kc_store_errmsg(st));
}

static void bind_opt(kc_q *s, int i, const char *v)
{
    if (v[0] != '\0')
        kc_q_bind_text(s, i, v);
}

/* The whole DEP row, with its MAC: a new one, or over the one there. */
static kc_rc dep_write(kc_store *st, const kc_dep *d, int insert, kc_error *err)
{
    static const char ins[] =
        "INSERT INTO deps (id, name, workload, geo, description, enabled, created, generation, "
        "purge_requested, principal, purged, purge_reason, purge_contact, mac) VALUES (?1, ?2, "
        "?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";
    static const char upd[] =
        "UPDATE deps SET name = ?2, workload = ?3, geo = ?4, description = ?5, enabled = ?6, "
        "created = ?7, generation = ?8, purge_requested = ?9, principal = ?10, purged = ?11, "
        "purge_reason = ?12, purge_contact = ?13, mac = ?14 WHERE id = ?1";
    unsigned char mac[32];
    kc_q *s = NULL;
    int rc;
    kc_rc r = dep_mac(st, d, mac, err);

    if (r != KC_OK)
        return r;
    if (kc_q_prepare(st, insert ? ins : upd, &s) != KC_Q_OK)
        return store_error(st, err);
    kc_q_bind_text(s, 1, d->id);
    kc_q_bind_text(s, 2, d->name);
    kc_q_bind_text(s, 3, d->workload);
    bind_opt(s, 4, d->geo);
    kc_q_bind_text(s, 5, d->description);
    kc_q_bind_int(s, 6, d->enabled);
    kc_q_bind_text(s, 7, d->created);
    kc_q_bind_int(s, 8, d->generation);
    bind_opt(s, 9, d->purge_requested);
    bind_opt(s, 10, d->principal);
    bind_opt(s, 11, d->purged);
    bind_opt(s, 12, d->purge_reason);
    bind_opt(s, 13, d->purge_contact);
    kc_q_bind_blob(s, 14, mac, sizeof(mac));
    rc = kc_q_step(s) == KC_Q_DONE && kc_store_changes(st) == 1 ? KC_Q_OK : KC_Q_ERROR;
    r = rc == KC_Q_OK ? KC_OK : store_error(st, err);
    kc_q_finish(s);
    return r;
}

kc_rc kc_assignment_write(kc_store *st, const char *scope, const char *dep_id, kc_error *err)
{
    unsigned char mac[32];
    kc_q *s = NULL;
    int rc;
    kc_rc r = assignment_mac(st, scope, dep_id, mac, err);

    if (r != KC_OK)
        return r;
    rc = kc_q_prepare(st,
                      "INSERT INTO assignments (scope, dep_id, mac) VALUES (?, ?, ?) ON "
                      "CONFLICT (scope) DO UPDATE SET dep_id = excluded.dep_id, mac = "
                      "excluded.mac",
                      &s);
    if (rc == KC_Q_OK) {
        kc_q_bind_text(s, 1, scope);
        kc_q_bind_text(s, 2, dep_id);
        kc_q_bind_blob(s, 3, mac, sizeof(mac));
        rc = kc_q_step(s) == KC_Q_DONE ? KC_Q_OK : KC_Q_ERROR;
    }
    r = rc == KC_Q_OK ? KC_OK : store_error(st, err);
    kc_q_finish(s);
    return r;
}

static void guid(const unsigned char r[16], char out[37])
{
    unsigned char b[16];

    memcpy(b, r, 16);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* Wraps the DEP key under the current version of VAULT/KEY. */
static kc_rc wrap_under(kc_ctx *ctx, const char *principal, const char *ref, const kc_secret *dek,
                        kc_dep_key *dk, unsigned char **blob, size_t *len, kc_error *err)
{
    const kc_key_version *ver = NULL;
    kc_key_ref kr;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    kc_oaep used = KC_OAEP_AUTO;
    kc_rc r;

    r = kc_key_ref_parse(ref, &kr, err);
    if (r == KC_OK)
        r = kc_vault_open(ctx, kr.vault, &v, err);
    if (r == KC_OK)
        r = kc_vault_authorize(v, principal, KC_PERM_WRAP, err);
    if (r == KC_OK)
        r = kc_key_get(v, kr.name, 0, &k, err);
    if (r == KC_OK)
        r = kc_key_select(k, NULL, 0, &ver, err);
    if (r == KC_OK)
        r = kc_key_wrap(v, k, ver, KC_OAEP_AUTO, dek, blob, len, &used, err);
    if (r == KC_OK) {
        snprintf(dk->vault, sizeof(dk->vault), "%s", v->meta.name);
        snprintf(dk->key, sizeof(dk->key), "%s", k->name);
        snprintf(dk->version, sizeof(dk->version), "%s", ver->version);
        snprintf(dk->alg, sizeof(dk->alg), "%s", kc_oaep_name(used));
    }
    kc_key_free(k);
    kc_vault_free(v);
    return r;
}

/* Removes an availability key that was made for a DEP that failed, on the
 * service vault already open (opening it again could fail for the same
 * reason the create did). */
static void drop_key(kc_vault *sv, const char *name)
{
    kc_error ignored;

    /* best effort: a key left behind shows in 'key list' and wraps nothing */
    if (kc_key_destroy_now(sv, name, &ignored) != KC_OK)
        return;
}

/* The wrapped copies of d's key at d->generation (a NULL blob: no copy in
 * that slot), with their MACs, inside the caller's transaction. */
static kc_rc insert_keys(kc_store *st, const kc_dep *d, unsigned char *const blobs[3],
                         const size_t lens[3], kc_error *err)
{
    unsigned char mac[32];
    kc_q *s = NULL;
    int i, rc = KC_Q_OK;
    kc_rc r = KC_OK;

    for (i = 0; r == KC_OK && i < KC_DEP_SLOTS; i++) {
        if (blobs[i] == NULL)
            continue;
        r = dep_key_mac(st, d->id, d->generation, i, &d->keys[i], blobs[i], lens[i], mac, err);
        if (r != KC_OK)
            break;
        rc = kc_q_prepare(st,
                          "INSERT INTO dep_keys (dep_id, generation, slot, vault, key, "
                          "version, alg, wrapped, kcv, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
                          "?, ?)",
                          &s);
        if (rc != KC_Q_OK)
            return store_error(st, err);
        kc_q_bind_text(s, 1, d->id);
        kc_q_bind_int(s, 2, d->generation);
        kc_q_bind_int(s, 3, i);
        kc_q_bind_text(s, 4, d->keys[i].vault);
        kc_q_bind_text(s, 5, d->keys[i].key);
        kc_q_bind_text(s, 6, d->keys[i].version);
        kc_q_bind_text(s, 7, d->keys[i].alg);
        kc_q_bind_blob(s, 8, blobs[i], (int)lens[i]);
        kc_q_bind_blob(s, 9, d->keys[i].kcv, KCV_BYTES);
        kc_q_bind_blob(s, 10, mac, sizeof(mac));
        rc = kc_q_step(s) == KC_Q_DONE ? KC_Q_OK : KC_Q_ERROR;
        if (rc != KC_Q_OK)
            r = store_error(st, err);
        kc_q_finish(s);
    }
    return r;
}

static kc_rc insert(kc_store *st, const kc_dep *d, unsigned char *const blobs[3],
                    const size_t lens[3], kc_error *err)
{
    kc_rc r = kc_store_begin(st, err);

    if (r != KC_OK)
        return r;
    r = dep_write(st, d, 1, err);
    if (r == KC_OK)
        r = insert_keys(st, d, blobs, lens, err);
    if (r != KC_OK) {
        kc_store_rollback(st);
        return r;
    }
    return kc_store_commit(st, err);
}

kc_rc kc_dep_check_name(const char *name, kc_error *err)
{
    size_t n = strlen(name), i;

    for (i = 0; i < n && n <= 64; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
              (name[i] >= '0' && name[i] <= '9') || name[i] == '-'))
            break;
    if (n >= 1 && n <= 64 && i == n)
        return KC_OK;
    kc_error_set(err, KC_USAGE, "'%s' is not a DEP name", name);
    kc_error_hint(err, "a DEP name has 1 to 64 letters, digits and '-', as a key name has");
    return KC_USAGE;
}

kc_rc kc_dep_create(kc_ctx *ctx, kc_store *st, const kc_dep_spec *spec, kc_dep *out, kc_error *err)
{
    unsigned char rnd[16], *blobs[KC_DEP_SLOTS] = {NULL};
    size_t lens[KC_DEP_SLOTS] = {0};
    char avail[64], ref[128];
    kc_key_create_opts ko;
    kc_secret *dek = NULL;
    kc_vault *sv = NULL;
    kc_key *ak = NULL;
    kc_dep probe;
    time_t now;
    int made_avail = 0, i, service = strcmp(spec->workload, "service") == 0;
    kc_rc r;

    memset(out, 0, sizeof(*out));
    r = kc_dep_check_name(spec->name, err);
    if (r != KC_OK)
        return r;
    /* the store's row key, made on the service vault with the first DEP */
    r = kc_store_authenticate(ctx, st, spec->service_vault, 1, err);
    if (r != KC_OK)
        return r;
    if (service != (strcmp(spec->name, KC_DEP_SERVICE) == 0)) {
        kc_error_set(err, KC_CONFLICT, "the name '%s' is the service-managed key's",
                     KC_DEP_SERVICE);
        return KC_CONFLICT;
    }
    if (kc_dep_get(st, spec->name, &probe, err) == KC_OK) {
        kc_error_set(err, KC_CONFLICT, "a DEP named '%s' exists already (%s)", spec->name,
                     probe.id);
        return KC_CONFLICT;
    }
    r = kc_clock_now(&now, err);
    if (r == KC_OK)
        r = kc_vault_open(ctx, spec->service_vault, &sv, err);
    if (r == KC_OK)
        r = kc_vault_authorize(sv, spec->principal, KC_PERM_CREATE, err);
    dek = kc_secret_new(DEP_KEY_BYTES);
    if (r == KC_OK && dek == NULL)
        r = kc_error_set(err, KC_ERR, "out of memory");
    /* The DEP key and its id come from the service token's RNG. */
    if (r == KC_OK)
        r = kc_tok_random(sv->tok, dek->data, DEP_KEY_BYTES, err);
    if (r == KC_OK)
        r = kc_tok_random(sv->tok, rnd, sizeof(rnd), err);
    if (r != KC_OK)
        goto done;
    dek->len = DEP_KEY_BYTES;
    guid(rnd, out->id);
    snprintf(out->name, sizeof(out->name), "%s", spec->name);
    snprintf(out->workload, sizeof(out->workload), "%s", spec->workload);
    snprintf(out->geo, sizeof(out->geo), "%s", spec->geo ? spec->geo : "");
    snprintf(out->description, sizeof(out->description), "%s",
             spec->description ? spec->description : "");
    kc_time_format_rfc3339(now, out->created);
    snprintf(out->principal, sizeof(out->principal), "%s", spec->principal ? spec->principal : "");
    out->enabled = 1;
    out->generation = 1;
    if (r == KC_OK)
        r = dep_kcv(dek, out->keys[0].kcv, err);
    for (i = 1; i < KC_DEP_SLOTS; i++)
        memcpy(out->keys[i].kcv, out->keys[0].kcv, KCV_BYTES);
    for (i = 0; r == KC_OK && i < 2 && !service; i++)
        r = wrap_under(ctx, spec->principal, spec->keys[i], dek, &out->keys[i], &blobs[i], &lens[i],
                       err);
    /* Its own availability key on the service vault (the service's PIN);
     * the service-managed key has only that one. */
    if (service)
        snprintf(avail, sizeof(avail), "%s", KC_DEP_SERVICE);
    else
        snprintf(avail, sizeof(avail), "avail-%.8s", out->id);
    memset(&ko, 0, sizeof(ko));
    ko.name = avail;
    ko.bits = 3072;
    ko.protection = KC_PROT_HSM;
    ko.ops = KC_OP_WRAP | KC_OP_UNWRAP;
    if (r == KC_OK) {
        /* a create that fails after the key pair was made leaves it: drop it too */
        r = kc_key_create(sv, &ko, &ak, err);
        made_avail = 1;
    }
    snprintf(ref, sizeof(ref), "%s/%s", sv ? sv->meta.name : "", avail);
    if (r == KC_OK)
        r = wrap_under(ctx, spec->principal, ref, dek, &out->keys[2], &blobs[2], &lens[2], err);
    if (r == KC_OK)
        r = insert(st, out, blobs, lens, err);
    if (r != KC_OK && made_avail)
        drop_key(sv, avail);
done:
    for (i = 0; i < KC_DEP_SLOTS; i++)
        free(blobs[i]);
    kc_secret_free(dek); /* wiped */
    kc_key_free(ak);
    kc_vault_free(sv);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot create DEP '%s'", spec->name);
    return KC_OK;
}

static void copy_col(kc_q *s, int col, char *out, size_t cap)
{
    const unsigned char *t = kc_q_text(s, col);

    snprintf(out, cap, "%s", t ? (const char *)t : "");
}

/* The uses of d's availability key, each row checked. */
static kc_rc load_break_glass(kc_store *st, kc_dep *d, kc_error *err)
{
    kc_q *s = NULL;
    char what[96];
    kc_rc r = KC_OK;

    d->break_glass = 0;
    d->break_glass_last[0] = '\0';
    if (kc_q_prepare(st,
                     "SELECT at, dep_id, principal, mac FROM break_glass WHERE dep_id = ? "
                     "ORDER BY at",
                     &s) != KC_Q_OK)
        return store_error(st, err);
    kc_q_bind_text(s, 1, d->id);
    snprintf(what, sizeof(what), "break-glass record of DEP '%s'", d->name);
    while (r == KC_OK && kc_q_step(s) == KC_Q_ROW) {
        r = check_cols(st, s, "break_glass", 3, what, err);
        d->break_glass++;
        copy_col(s, 0, d->break_glass_last, sizeof(d->break_glass_last));
    }
    kc_q_finish(s);
    return r;
}

#define KEY_COLUMNS                                                                                \
    "SELECT dep_id, generation, slot, vault, key, version, alg, wrapped, kcv, mac FROM dep_keys "
#define KEY_COVERED 9 /* the columns before mac */

/* One wrapped copy's row, checked: its slot's record into d (the blob is
 * left in the statement). A purged DEP's rows are not checked: its wrapped
 * copies are gone, and its own (checked) row says so. */
static kc_rc key_row(kc_store *st, kc_q *s, kc_dep *d, int *slot, kc_error *err)
{
    char what[128];
    kc_dep_key *dk;
    kc_rc r = KC_OK;

    *slot = kc_q_int(s, 2);
    snprintf(what, sizeof(what), "wrapped key of DEP '%s' (generation %ld, slot %d)", d->name,
             d->generation, *slot);
    if (d->purged[0] == '\0')
        r = check_cols(st, s, "dep_keys", KEY_COVERED, what, err);
    if (r == KC_OK && (*slot < 0 || *slot >= KC_DEP_SLOTS))
        r = kc_error_set(err, KC_INTEGRITY, "the service store's %s is damaged", what);
    if (r != KC_OK)
        return r;
    dk = &d->keys[*slot];
    copy_col(s, 3, dk->vault, sizeof(dk->vault));
    copy_col(s, 4, dk->key, sizeof(dk->key));
    copy_col(s, 5, dk->version, sizeof(dk->version));
    copy_col(s, 6, dk->alg, sizeof(dk->alg));
    memset(dk->kcv, 0, KCV_BYTES);
    if (kc_q_bytes(s, 8) == KCV_BYTES)
        memcpy(dk->kcv, kc_q_blob(s, 8), KCV_BYTES);
    return KC_OK;
}

static kc_rc load_keys(kc_store *st, kc_dep *d, kc_error *err)
{
    kc_q *s = NULL;
    int slot;
    kc_rc r = KC_OK;

    if (kc_q_prepare(st, KEY_COLUMNS "WHERE dep_id = ? AND generation = ?", &s) != KC_Q_OK)
        return store_error(st, err);
    kc_q_bind_text(s, 1, d->id);
    kc_q_bind_int(s, 2, d->generation);
    while (r == KC_OK && kc_q_step(s) == KC_Q_ROW)
        r = key_row(st, s, d, &slot, err);
    kc_q_finish(s);
    return r;
}

/* A DEP's row, checked. */
static kc_rc row(kc_store *st, kc_q *s, kc_dep *d, kc_error *err)
{
    char what[96];
    kc_row mr;

    memset(d, 0, sizeof(*d));
    copy_col(s, 0, d->id, sizeof(d->id));
    copy_col(s, 1, d->name, sizeof(d->name));
    copy_col(s, 2, d->workload, sizeof(d->workload));
    copy_col(s, 3, d->geo, sizeof(d->geo));
    copy_col(s, 4, d->description, sizeof(d->description));
    d->enabled = kc_q_int(s, 5);
    copy_col(s, 6, d->created, sizeof(d->created));
    d->generation = (long)kc_q_int(s, 7);
    copy_col(s, 8, d->purge_requested, sizeof(d->purge_requested));
    copy_col(s, 9, d->principal, sizeof(d->principal));
    copy_col(s, 10, d->purged, sizeof(d->purged));
    copy_col(s, 11, d->purge_reason, sizeof(d->purge_reason));
    copy_col(s, 12, d->purge_contact, sizeof(d->purge_contact));
    kc_row_init(&mr, "deps"); /* DEP_COLUMNS are dep_mac's, in its order */
    kc_row_cols(&mr, s, 0, 13);
    snprintf(what, sizeof(what), "record of DEP '%s'", d->name);
    return kc_row_check(st, &mr, s, 13, what, err);
}

#define DEP_COLUMNS                                                                                \
    "SELECT id, name, workload, geo, description, enabled, created, generation, "                  \
    "purge_requested, principal, purged, purge_reason, purge_contact, mac FROM deps "

/* The DEP's own row, checked; its keys and break-glass uses not read. */
static kc_rc dep_row_get(kc_store *st, const char *name_or_id, kc_dep *out, kc_error *err)
{
    kc_q *s = NULL;
    int rc;
    kc_rc r;

    if (kc_q_prepare(st, DEP_COLUMNS "WHERE name = ?1 OR id = ?1", &s) != KC_Q_OK)
        return kc_error_set(err, KC_ERR, "the service store: %s", kc_store_errmsg(st));
    kc_q_bind_text(s, 1, name_or_id);
    rc = kc_q_step(s);
    r = rc == KC_Q_ROW ? row(st, s, out, err) : KC_OK;
    kc_q_finish(s);
    if (rc != KC_Q_ROW) {
        kc_error_set(err, KC_NOT_FOUND, "no DEP '%s'", name_or_id);
        kc_error_hint(err, "see them with 'keycustody dep list'");
        return KC_NOT_FOUND;
    }
    return r;
}

kc_rc kc_dep_get(kc_store *st, const char *name_or_id, kc_dep *out, kc_error *err)
{
    kc_rc r = dep_row_get(st, name_or_id, out, err);

    if (r == KC_OK)
        r = load_break_glass(st, out, err);
    return r == KC_OK ? load_keys(st, out, err) : r;
}

kc_rc kc_dep_list(kc_store *st, kc_dep **out, size_t *n, kc_error *err)
{
    kc_q *s = NULL;
    kc_dep *v = NULL, *nv;
    size_t len = 0, i;
    kc_rc r = KC_OK;

    *out = NULL;
    *n = 0;
    if (kc_q_prepare(st, DEP_COLUMNS "ORDER BY name", &s) != KC_Q_OK)
        return kc_error_set(err, KC_ERR, "the service store: %s", kc_store_errmsg(st));
    while (r == KC_OK && kc_q_step(s) == KC_Q_ROW) {
        nv = realloc(v, (len + 1) * sizeof(*v));
        if (nv == NULL) {
            r = kc_error_set(err, KC_ERR, "out of memory");
            break;
        }
        v = nv;
        r = row(st, s, &v[len++], err);
    }
    kc_q_finish(s);
    for (i = 0; r == KC_OK && i < len; i++) {
        r = load_break_glass(st, &v[i], err);
        if (r == KC_OK)
            r = load_keys(st, &v[i], err);
    }
    if (r != KC_OK) {
        free(v);
        return r;
    }
    *out = v;
    *n = len;
    return KC_OK;
}

static int assigned(kc_store *st, const char *id)
{
    kc_q *s = NULL;
    int found = 0;

    if (kc_q_prepare(st, "SELECT 1 FROM assignments WHERE dep_id = ?", &s) == KC_Q_OK) {
        kc_q_bind_text(s, 1, id);
        found = kc_q_step(s) == KC_Q_ROW;
    }
    kc_q_finish(s);
    return found;
}

kc_rc kc_dep_set(kc_store *st, const char *name_or_id, const int *enabled, const char *new_name,
                 const char *description, kc_error *err)
{
    kc_dep d;
    kc_rc r;

    r = kc_dep_get(st, name_or_id, &d, err);
    if (r != KC_OK)
        return r;
    if (new_name != NULL && kc_dep_check_name(new_name, err) != KC_OK)
        return KC_USAGE;
    if (strcmp(d.workload, "service") == 0)
        return kc_error_set(err, KC_CONFLICT,
                            "the service-managed key's DEP is not changed by hand");
    if (new_name != NULL && strcmp(new_name, KC_DEP_SERVICE) == 0) {
        kc_error_set(err, KC_CONFLICT,
                     "the name '%s' is reserved for the service-managed key's DEP", KC_DEP_SERVICE);
        kc_error_hint(err, "choose another name");
        return KC_CONFLICT;
    }
    if (new_name != NULL && strcmp(new_name, d.name) != 0) {
        kc_dep other;

        if (kc_dep_get(st, new_name, &other, err) == KC_OK) {
            kc_error_set(err, KC_CONFLICT, "a DEP named '%s' exists already (%s)", new_name,
                         other.id);
            kc_error_hint(err, "choose another name");
            return KC_CONFLICT;
        }
        kc_error_clear(err);
    }
    if (enabled != NULL && !*enabled && assigned(st, d.id)) {
        kc_error_set(err, KC_CONFLICT, "DEP '%s' is assigned; it cannot be disabled", d.name);
        kc_error_hint(err, "unassign it first");
        return KC_CONFLICT;
    }
    if (enabled != NULL)
        d.enabled = *enabled ? 1 : 0;
    if (new_name != NULL)
        snprintf(d.name, sizeof(d.name), "%s", new_name);
    if (description != NULL)
        snprintf(d.description, sizeof(d.description), "%s", description);
    r = dep_write(st, &d, 0, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot change DEP '%s'", name_or_id);
    return KC_OK;
}

/* --- unwrapping the DEP key --- */

/* The wrapped copy in slot, its row checked again (with the record, as
 * one read): *dk is what the row says of it. */
static kc_rc load_blob(kc_store *st, const kc_dep *d, int slot, kc_dep_key *dk,
                       unsigned char **blob, size_t *len, kc_error *err)
{
    kc_q *s = NULL;
    kc_dep row_of = *d;
    const void *b;
    int n, got;
    kc_rc r = KC_OK;

    *blob = NULL;
    if (kc_q_prepare(st, KEY_COLUMNS "WHERE dep_id = ? AND generation = ? AND slot = ?", &s) !=
        KC_Q_OK)
        return store_error(st, err);
    kc_q_bind_text(s, 1, d->id);
    kc_q_bind_int(s, 2, d->generation);
    kc_q_bind_int(s, 3, slot);
    if (kc_q_step(s) != KC_Q_ROW)
        r = kc_error_set(err, KC_INTEGRITY, "DEP '%s' has no wrapped key in slot %d", d->name,
                         slot);
    else if ((r = key_row(st, s, &row_of, &got, err)) == KC_OK) {
        *dk = row_of.keys[slot];
        b = kc_q_blob(s, 7);
        n = kc_q_bytes(s, 7);
        *blob = malloc(n > 0 ? (size_t)n : 1);
        if (*blob == NULL)
            r = kc_error_set(err, KC_ERR, "out of memory");
        else {
            memcpy(*blob, b, (size_t)n);
            *len = (size_t)n;
        }
    }
    kc_q_finish(s);
    return r;
}

/* Unwraps one wrapped copy under the key version recorded for it. */
static kc_rc unwrap_slot(kc_ctx *ctx, kc_store *st, const kc_dep *d, int slot,
                         const char *principal, kc_secret **out, kc_error *err)
{
    const kc_key_version *ver = NULL;
    unsigned char id[64], kcv[KCV_BYTES], *blob = NULL;
    size_t id_len = 0, len = 0;
    kc_oaep alg = KC_OAEP_AUTO;
    kc_dep_key dkv, *dk = &dkv;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    kc_rc r;

    r = load_blob(st, d, slot, dk, &blob, &len, err);
    if (r == KC_OK && (kc_hex_decode(dk->version, id, sizeof(id), &id_len) != 0 ||
                       kc_oaep_parse(dk->alg, &alg) != 0))
        r = kc_error_set(err, KC_INTEGRITY, "DEP '%s': the store's record of slot %d is damaged",
                         d->name, slot);
    if (r == KC_OK)
        r = kc_vault_open(ctx, dk->vault, &v, err);
    if (r == KC_OK)
        r = kc_vault_authorize(v, principal, KC_PERM_UNWRAP, err);
    if (r == KC_OK)
        r = kc_key_get(v, dk->key, 1, &k, err);
    if (r == KC_OK)
        r = kc_key_select(k, id, id_len, &ver, err);
    if (r == KC_OK)
        r = kc_key_unwrap(v, k, ver, alg, blob, len, out, err);
    if (r == KC_OK && (*out)->len != DEP_KEY_BYTES) {
        r = kc_error_set(err, KC_INTEGRITY, "DEP '%s': slot %d unwraps to %zu bytes, not %d",
                         d->name, slot, (*out)->len, DEP_KEY_BYTES);
    }
    /* every copy wraps one key: the one its check value names */
    if (r == KC_OK)
        r = dep_kcv(*out, kcv, err);
    if (r == KC_OK && CRYPTO_memcmp(kcv, dk->kcv, KCV_BYTES) != 0) {
        r = kc_error_set(err, KC_INTEGRITY,
                         "DEP '%s': the copy in slot %d (vault '%s') unwraps to another key than "
                         "the DEP's check value names; it is not used",
                         d->name, slot, dk->vault);
        kc_error_hint(err, "the copies of a DEP key must all wrap the same key: keep a copy of "
                           "the store for investigation");
    }
    if (r != KC_OK && *out != NULL) {
        kc_secret_free(*out);
        *out = NULL;
    }
    free(blob);
    kc_key_free(k);
    kc_vault_free(v);
    return r;
}

static kc_rc purged_error(const kc_dep *d, kc_error *err)
{
    kc_error_set(err, KC_NOT_FOUND,
                 "DEP '%s' was purged on %s: its key and every scope key under it were destroyed, "
                 "so its data can never be read again",
                 d->name, d->purged);
    return KC_NOT_FOUND;
}

/* The DEP with the wrapped copies of its key at generation (0: current). */
static kc_rc dep_at(kc_store *st, const char *name_or_id, long generation, kc_dep *d, kc_error *err)
{
    kc_rc r = kc_dep_get(st, name_or_id, d, err);

    if (r != KC_OK)
        return r;
    if (d->purged[0] != '\0')
        return purged_error(d, err);
    if (generation == 0 || generation == d->generation)
        return KC_OK;
    memset(d->keys, 0, sizeof(d->keys));
    d->generation = generation;
    r = load_keys(st, d, err);
    if (r == KC_OK && d->keys[2].vault[0] == '\0')
        r = kc_error_set(err, KC_INTEGRITY, "DEP '%s' has no key of generation %ld", d->name,
                         generation);
    return r;
}

/* A use of the availability key, kept in the store (the audit log has it
 * too: a record the store loses is still there). */
static void record_break_glass(kc_store *st, const kc_dep *d, const char *principal)
{
    char at[21] = "";
    unsigned char mac[32];
    kc_q *s = NULL;
    time_t now;
    kc_error ignored;
    kc_row r;

    if (kc_clock_now(&now, &ignored) == KC_OK)
        kc_time_format_rfc3339(now, at);
    if (principal != NULL && principal[0] == '\0')
        principal = NULL;
    kc_row_init(&r, "break_glass");
    kc_row_text(&r, at);
    kc_row_text(&r, d->id);
    kc_row_text(&r, principal);
    if (kc_row_seal(st, &r, mac, &ignored) != KC_OK)
        return;
    if (kc_q_prepare(st,
                     "INSERT INTO break_glass (at, dep_id, principal, mac) VALUES (?, ?, ?, "
                     "?)",
                     &s) == KC_Q_OK) {
        kc_q_bind_text(s, 1, at);
        kc_q_bind_text(s, 2, d->id);
        if (principal != NULL)
            kc_q_bind_text(s, 3, principal);
        kc_q_bind_blob(s, 4, mac, sizeof(mac));
        (void)kc_q_step(s);
    }
    kc_q_finish(s);
}

kc_rc kc_dep_unwrap(kc_ctx *ctx, kc_store *st, const char *name_or_id, long generation,
                    const char *principal, unsigned flags, kc_secret **out,
                    kc_dep_unwrap_info *info, kc_error *err)
{
    kc_error tried[2];
    char why[1400];
    kc_dep d;
    int slot;
    kc_rc r;

    *out = NULL;
    memset(info, 0, sizeof(*info));
    info->slot = -1;
    r = kc_store_authenticate(ctx, st, NULL, 0, err);
    if (r == KC_OK)
        r = dep_at(st, name_or_id, generation, &d, err);
    if (r != KC_OK)
        return r;
    /* The service-managed key has no custodian copies. */
    if (strcmp(d.workload, "service") == 0) {
        r = unwrap_slot(ctx, st, &d, 2, principal, out, err);
        info->slot = r == KC_OK ? 2 : -1;
        return r;
    }
    /* Custodian vault A, then B: a vault that is missing, refuses the login
     * or has revoked the principal's unwrapKey is skipped and reported. */
    for (slot = 0; slot < 2; slot++) {
        kc_error_clear(&tried[slot]);
        r = unwrap_slot(ctx, st, &d, slot, principal, out, &tried[slot]);
        if (r == KC_OK) {
            info->slot = slot;
            return KC_OK;
        }
        /* a copy that fails its MAC or unwraps to another key is tampering,
         * not a vault to skip: nothing is unwrapped from this DEP */
        if (r == KC_INTEGRITY) {
            *err = tried[slot];
            return r;
        }
        /* a long reason is cut: the warning names the vault first */
        kc_error_format(&tried[slot], why, sizeof(why));
        snprintf(info->skipped[slot], sizeof(info->skipped[slot]), "%.63s: %.440s",
                 d.keys[slot].vault, why);
    }
    if (flags & KC_DEP_USE_AVAILABILITY) {
        r = unwrap_slot(ctx, st, &d, 2, principal, out, err);
        if (r == KC_OK) {
            info->slot = 2;
            info->break_glass = 1;
            record_break_glass(st, &d, principal);
            kc_ctx_event(ctx, "break-glass", d.keys[2].vault, d.name, NULL);
        }
        return r;
    }
    return kc_error_set(err, KC_TOKEN,
                        "neither custodian vault can unwrap the key of DEP '%s' (%s; %s); the "
                        "availability key is for break glass only (--use-availability-key)",
                        d.name, info->skipped[0], info->skipped[1]);
}

/* --- assignments --- */

kc_rc kc_dep_scope_check(const char *scope, kc_error *err)
{
    const char *p = NULL;
    size_t n;

    if (strcmp(scope, "tenant") == 0)
        return KC_OK;
    if (strncmp(scope, "mailbox:", 8) == 0)
        p = scope + 8;
    else if (strncmp(scope, "geo:", 4) == 0)
        p = scope + 4;
    n = p ? strlen(p) : 0;
    if (p != NULL && n >= 1 && n <= 64 &&
        strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                  "0123456789@._-") == n)
        return KC_OK;
    kc_error_set(err, KC_USAGE, "'%s' is not a scope", scope);
    kc_error_hint(err, "a scope is tenant, mailbox:ID or geo:CODE (ID and CODE: 1 to 64 of "
                       "letters, digits, @ . _ -)");
    return KC_USAGE;
}

/* The workload a DEP needs to be assigned to scope. */
static const char *scope_workload(const char *scope)
{
    if (strncmp(scope, "mailbox:", 8) == 0)
        return "exchange";
    if (strncmp(scope, "geo:", 4) == 0)
        return "sharepoint";
    return "tenant";
}

static kc_rc assigned_to(kc_store *st, const char *scope, char dep_id[37], kc_error *err)
{
    kc_q *s = NULL;
    char what[112];
    kc_rc r = KC_NOT_FOUND;

    dep_id[0] = '\0';
    if (kc_q_prepare(st, "SELECT scope, dep_id, mac FROM assignments WHERE scope = ?", &s) !=
        KC_Q_OK)
        return store_error(st, err);
    kc_q_bind_text(s, 1, scope);
    if (kc_q_step(s) == KC_Q_ROW) {
        snprintf(what, sizeof(what), "assignment of scope '%s'", scope);
        r = check_cols(st, s, "assignments", 2, what, err);
        if (r == KC_OK)
            copy_col(s, 1, dep_id, 37);
    }
    kc_q_finish(s);
    return r;
}

kc_rc kc_dep_assign(kc_store *st, const char *name_or_id, const char *scope, kc_dep *prev,
                    kc_error *err)
{
    kc_q *s = NULL;
    char prev_id[37];
    kc_dep d;
    kc_rc r;
    int rc;

    memset(prev, 0, sizeof(*prev));
    r = kc_dep_scope_check(scope, err);
    if (r != KC_OK)
        return r;
    r = assigned_to(st, scope, prev_id, err);
    if (r == KC_OK)
        r = kc_dep_get(st, prev_id, prev, err);
    if (r == KC_NOT_FOUND)
        kc_error_clear(err);
    if (r != KC_OK && r != KC_NOT_FOUND)
        return r;
    if (name_or_id == NULL) { /* unassign */
        if (prev_id[0] == '\0')
            return kc_error_set(err, KC_NOT_FOUND, "scope '%s' has no DEP assigned", scope);
        rc = kc_q_prepare(st, "DELETE FROM assignments WHERE scope = ?", &s);
        if (rc == KC_Q_OK) {
            kc_q_bind_text(s, 1, scope);
            rc = kc_q_step(s) == KC_Q_DONE ? KC_Q_OK : KC_Q_ERROR;
        }
        kc_q_finish(s);
        if (rc != KC_Q_OK)
            return kc_error_set(err, KC_ERR, "the service store: %s", kc_store_errmsg(st));
        return KC_OK;
    }
    r = kc_dep_get(st, name_or_id, &d, err);
    if (r != KC_OK)
        return r;
    if (strcmp(d.workload, scope_workload(scope)) != 0) {
        kc_error_set(err, KC_CONFLICT, "DEP '%s' is for workload %s; scope '%s' takes a %s DEP",
                     d.name, d.workload, scope, scope_workload(scope));
        return KC_CONFLICT;
    }
    if (strncmp(scope, "geo:", 4) == 0 && d.geo[0] != '\0' && strcmp(d.geo, scope + 4) != 0) {
        kc_error_set(err, KC_CONFLICT, "DEP '%s' is for geo '%s', not '%s'", d.name, d.geo,
                     scope + 4);
        return KC_CONFLICT;
    }
    if (d.purge_requested[0] != '\0') {
        kc_error_set(err, KC_CONFLICT,
                     "DEP '%s' has a data purge requested (%s); it can never be "
                     "assigned again",
                     d.name, d.purge_requested);
        return KC_CONFLICT;
    }
    if (!d.enabled) {
        kc_error_set(err, KC_CONFLICT, "DEP '%s' is disabled; it cannot be assigned", d.name);
        kc_error_hint(err, "enable it with 'keycustody dep set %s --enabled true'", d.name);
        return KC_CONFLICT;
    }
    return kc_assignment_write(st, scope, d.id, err);
}

/* The id of scope's effective DEP, from its checked assignment. */
static kc_rc effective_id(kc_store *st, const char *scope, char id[37], int *inherited,
                          kc_error *err)
{
    kc_rc r;

    *inherited = 0;
    r = kc_dep_scope_check(scope, err);
    if (r == KC_OK)
        r = assigned_to(st, scope, id, err);
    /* A mailbox without a DEP of its own is under the tenant DEP. */
    if (r == KC_NOT_FOUND && strncmp(scope, "mailbox:", 8) == 0) {
        r = assigned_to(st, "tenant", id, err);
        *inherited = r == KC_OK;
    }
    if (r == KC_NOT_FOUND)
        return kc_error_set(err, KC_NOT_FOUND, "scope '%s' has no DEP assigned", scope);
    return r;
}

kc_rc kc_dep_effective(kc_store *st, const char *scope, kc_dep *out, int *inherited, kc_error *err)
{
    char id[37];
    kc_rc r = effective_id(st, scope, id, inherited, err);

    return r == KC_OK ? kc_dep_get(st, id, out, err) : r;
}

/* A mailbox without a DEP of its own is under the tenant DEP, checked
 * once per cache. */
static kc_rc tenant_dep(kc_store *st, const char *scope, kc_dep_tenant_cache *cache, kc_dep *out,
                        kc_error *err)
{
    char id[37];
    kc_rc r;

    if (cache != NULL && cache->known) {
        *out = cache->dep;
        return KC_OK;
    }
    r = assigned_to(st, "tenant", id, err);
    if (r == KC_NOT_FOUND)
        return kc_error_set(err, KC_NOT_FOUND, "scope '%s' has no DEP assigned", scope);
    if (r == KC_OK)
        r = dep_row_get(st, id, out, err);
    if (r == KC_OK && cache != NULL) {
        cache->dep = *out;
        cache->known = 1;
    }
    return r;
}

kc_rc kc_dep_effective_claimed(kc_store *st, const char *scope, kc_q *q, int col,
                               kc_dep_tenant_cache *cache, kc_dep *out, kc_error *err)
{
    char id[37], what[112];
    kc_rc r = kc_dep_scope_check(scope, err);

    memset(out, 0, sizeof(*out));
    if (r != KC_OK)
        return r;
    if (kc_q_type(q, col) == KC_Q_NULL)
        return strncmp(scope, "mailbox:", 8) == 0
                   ? tenant_dep(st, scope, cache, out, err)
                   : kc_error_set(err, KC_NOT_FOUND, "scope '%s' has no DEP assigned", scope);
    /* as assigned_to: the row read with the claim, checked the same way */
    snprintf(what, sizeof(what), "assignment of scope '%s'", scope);
    r = check_cols_at(st, q, "assignments", col, 2, what, err);
    if (r != KC_OK)
        return r;
    copy_col(q, col + 1, id, sizeof(id));
    if (cache->last_known && strcmp(cache->last.id, id) == 0) {
        *out = cache->last;
        return KC_OK;
    }
    r = dep_row_get(st, id, out, err);
    if (r == KC_OK) {
        cache->last = *out;
        cache->last_known = 1;
    }
    return r;
}

kc_rc kc_dep_assignments(kc_store *st, kc_dep_assignment **out, size_t *n, kc_error *err)
{
    kc_q *s = NULL;
    kc_dep_assignment *v = NULL, *nv;
    size_t len = 0;
    kc_rc r = KC_OK;

    *out = NULL;
    *n = 0;
    if (kc_q_prepare(st,
                     "SELECT a.scope, a.dep_id, a.mac, d.name FROM assignments a JOIN deps d "
                     "ON d.id = a.dep_id ORDER BY a.scope",
                     &s) != KC_Q_OK)
        return store_error(st, err);
    while (r == KC_OK && kc_q_step(s) == KC_Q_ROW) {
        char what[112];

        snprintf(what, sizeof(what), "assignment of scope '%s'", kc_q_text(s, 0));
        r = check_cols(st, s, "assignments", 2, what, err);
        if (r != KC_OK)
            break;
        nv = realloc(v, (len + 1) * sizeof(*v));
        if (nv == NULL) {
            r = kc_error_set(err, KC_ERR, "out of memory");
            break;
        }
        v = nv;
        copy_col(s, 0, v[len].scope, sizeof(v[len].scope));
        copy_col(s, 1, v[len].dep_id, sizeof(v[len].dep_id));
        copy_col(s, 3, v[len].dep_name, sizeof(v[len].dep_name));
        len++;
    }
    kc_q_finish(s);
    if (r != KC_OK) {
        free(v);
        return r;
    }
    *out = v;
    *n = len;
    return KC_OK;
}

/* --- refresh --- */

static kc_rc update_slot(kc_store *st, const kc_dep *d, int slot, const kc_dep_key *dk,
                         const unsigned char *blob, size_t len, kc_error *err)
{
    unsigned char mac[32];
    kc_q *s = NULL;
    int rc;
    kc_rc r = dep_key_mac(st, d->id, d->generation, slot, dk, blob, len, mac, err);

    if (r != KC_OK)
        return r;
    rc = kc_q_prepare(st,
                      "UPDATE dep_keys SET vault = ?, key = ?, version = ?, alg = ?, wrapped "
                      "= ?, kcv = ?, mac = ? WHERE dep_id = ? AND generation = ? AND slot = ?",
                      &s);
    if (rc == KC_Q_OK) {
        kc_q_bind_text(s, 1, dk->vault);
        kc_q_bind_text(s, 2, dk->key);
        kc_q_bind_text(s, 3, dk->version);
        kc_q_bind_text(s, 4, dk->alg);
        kc_q_bind_blob(s, 5, blob, (int)len);
        kc_q_bind_blob(s, 6, dk->kcv, KCV_BYTES);
        kc_q_bind_blob(s, 7, mac, sizeof(mac));
        kc_q_bind_text(s, 8, d->id);
        kc_q_bind_int(s, 9, d->generation);
        kc_q_bind_int(s, 10, slot);
        rc = kc_q_step(s) == KC_Q_DONE && kc_store_changes(st) == 1 ? KC_Q_OK : KC_Q_ERROR;
    }
    kc_q_finish(s);
    if (rc != KC_Q_OK)
        return kc_error_set(err, KC_ERR, "the service store: cannot update slot %d of DEP '%s'",
                            slot, d->name);
    return KC_OK;
}

/* Scopes still under an older generation of d's key: a roll in progress. */
static long behind(kc_store *st, const kc_dep *d)
{
    kc_q *s = NULL;
    long n = -1;

    if (kc_q_prepare(st,
                     "SELECT count(*) FROM scopes WHERE dep_id = ? AND dep_generation < ? "
                     "AND purged IS NULL",
                     &s) == KC_Q_OK) {
        kc_q_bind_text(s, 1, d->id);
        kc_q_bind_int(s, 2, d->generation);
        if (kc_q_step(s) == KC_Q_ROW)
            n = (long)kc_q_int(s, 0);
    }
    kc_q_finish(s);
    return n;
}

/* A new DEP key for a roll, from the service token's RNG. */
static kc_rc new_dep_key(kc_ctx *ctx, const kc_dep *d, kc_secret **out, kc_error *err)
{
    kc_vault *sv = NULL;
    kc_rc r;

    *out = kc_secret_new(DEP_KEY_BYTES);
    if (*out == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    r = kc_vault_open(ctx, d->keys[2].vault, &sv, err);
    if (r == KC_OK)
        r = kc_tok_random(sv->tok, (*out)->data, DEP_KEY_BYTES, err);
    kc_vault_free(sv);
    if (r != KC_OK) {
        kc_secret_free(*out);
        *out = NULL;
        return r;
    }
    (*out)->len = DEP_KEY_BYTES;
    return KC_OK;
}

static kc_rc save_generation(kc_store *st, const kc_dep *d, unsigned char *const blobs[3],
                             const size_t lens[3], kc_error *err)
{
    kc_rc r = insert_keys(st, d, blobs, lens, err);

    return r == KC_OK ? dep_write(st, d, 0, err) : r;
}

kc_rc kc_dep_refresh(kc_ctx *ctx, kc_store *st, const char *name_or_id, const char *principal,
                     int roll, kc_dep *before, kc_dep *after, kc_error *err)
{
    unsigned char *blobs[KC_DEP_SLOTS] = {NULL, NULL, NULL};
    size_t lens[KC_DEP_SLOTS] = {0, 0, 0};
    char ref[256];
    kc_dep_unwrap_info info;
    kc_secret *dek = NULL;
    long late;
    int i, slots = roll ? KC_DEP_SLOTS : 2;
    kc_rc r;

    r = kc_store_authenticate(ctx, st, NULL, 0, err);
    if (r == KC_OK)
        r = kc_dep_get(st, name_or_id, before, err);
    if (r != KC_OK)
        return r;
    *after = *before;
    if (before->purged[0] != '\0')
        return purged_error(before, err);
    if (strcmp(before->workload, "service") == 0)
        return kc_error_set(err, KC_CONFLICT,
                            "the service-managed key has no root keys to refresh");
    late = roll ? behind(st, before) : 0;
    if (late < 0)
        return kc_error_set(err, KC_ERR, "the service store: cannot count DEP '%s''s scope keys",
                            before->name);
    if (late > 0) {
        kc_error_set(err, KC_CONFLICT,
                     "DEP '%s' is still rolling: %ld scope key(s) are under its previous key",
                     before->name, late);
        kc_error_hint(err, "finish the roll with 'keycustody rewrap' first");
        return KC_CONFLICT;
    }
    /* A refresh re-wraps the same DEP key; a roll makes a new one, which
     * 'rewrap' then moves every scope key under. */
    if (roll) {
        r = new_dep_key(ctx, before, &dek, err);
        after->generation = before->generation + 1;
        if (r == KC_OK)
            r = dep_kcv(dek, after->keys[0].kcv, err);
        for (i = 1; i < KC_DEP_SLOTS; i++)
            memcpy(after->keys[i].kcv, after->keys[0].kcv, KCV_BYTES);
    } else
        r = kc_dep_unwrap(ctx, st, before->id, 0, principal, 0, &dek, &info, err);
    for (i = 0; r == KC_OK && i < slots; i++) {
        snprintf(ref, sizeof(ref), "%s/%s", before->keys[i].vault, before->keys[i].key);
        r = wrap_under(ctx, principal, ref, dek, &after->keys[i], &blobs[i], &lens[i], err);
    }
    kc_secret_free(dek); /* wiped */
    if (r == KC_OK)
        r = kc_store_begin(st, err);
    if (r == KC_OK) {
        if (roll)
            r = save_generation(st, after, blobs, lens, err);
        for (i = 0; !roll && r == KC_OK && i < 2; i++)
            r = update_slot(st, before, i, &after->keys[i], blobs[i], lens[i], err);
        if (r == KC_OK)
            r = kc_store_commit(st, err);
        else
            kc_store_rollback(st);
    }
    for (i = 0; i < KC_DEP_SLOTS; i++)
        free(blobs[i]);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot %s DEP '%s'", roll ? "roll" : "refresh", before->name);
    return KC_OK;
}

/* --- the service-managed key --- */

kc_rc kc_dep_service(kc_ctx *ctx, kc_store *st, const char *service_vault, const char *principal,
                     kc_dep *out, kc_error *err)
{
    kc_dep_spec spec;
    kc_rc r = kc_dep_get(st, KC_DEP_SERVICE, out, err);

    if (r != KC_NOT_FOUND)
        return r;
    kc_error_clear(err);
    memset(&spec, 0, sizeof(spec));
    spec.name = KC_DEP_SERVICE;
    spec.workload = "service";
    spec.description = "service-managed key: the scopes of an offboarded tenant";
    spec.service_vault = service_vault;
    spec.principal = principal;
    return kc_dep_create(ctx, st, &spec, out, err);
}

/* --- the data purge path --- */

/* KC_OK when principal holds neither wrapKey nor unwrapKey on vault;
 * a vault without an access policy lets everyone, so it is refused. */
static kc_rc revoked_on(kc_ctx *ctx, const char *vault, const char *principal, kc_error *err)
{
    char held[64];
    kc_vault *v = NULL;
    size_t i;
    kc_rc r = kc_vault_open(ctx, vault, &v, err);

    if (r != KC_OK)
        return kc_error_prefix(err, "cannot check the access policy of vault '%s'", vault);
    if (v->meta.naccess == 0) {
        kc_error_set(err, KC_CONFLICT,
                     "vault '%s' has no access policy, so nothing stops the service from "
                     "unwrapping",
                     vault);
        kc_error_hint(err,
                      "give it a policy without wrapKey/unwrapKey for '%s' ('keycustody "
                      "access set')",
                      principal[0] ? principal : "the service principal");
        r = KC_CONFLICT;
    }
    for (i = 0; r == KC_OK && i < v->meta.naccess; i++) {
        if (strcmp(v->meta.access[i].principal, principal) != 0 ||
            (v->meta.access[i].perms & (KC_PERM_WRAP | KC_PERM_UNWRAP)) == 0)
            continue;
        kc_perms_format(v->meta.access[i].perms & (KC_PERM_WRAP | KC_PERM_UNWRAP), held,
                        sizeof(held));
        kc_error_set(err, KC_CONFLICT, "the service principal '%s' still holds %s on vault '%s'",
                     principal, held, vault);
        kc_error_hint(err,
                      "the custodian revokes it first: 'keycustody access remove %s --principal "
                      "%s --permissions wrapKey,unwrapKey'",
                      vault, principal);
        r = KC_CONFLICT;
    }
    kc_vault_free(v);
    return r;
}

kc_rc kc_dep_purge_request(kc_ctx *ctx, kc_store *st, const char *name_or_id, const char *reason,
                           const char *contact, kc_dep *out, kc_error *err)
{
    time_t now;
    int i;
    kc_rc r = kc_store_authenticate(ctx, st, NULL, 0, err);

    if (r == KC_OK)
        r = kc_dep_get(st, name_or_id, out, err);
    if (r != KC_OK)
        return r;
    if (out->purged[0] != '\0')
        return purged_error(out, err);
    if (out->purge_requested[0] != '\0')
        return kc_error_set(err, KC_CONFLICT, "DEP '%s' has had a data purge requested since %s",
                            out->name, out->purge_requested);
    if (strcmp(out->workload, "exchange") != 0 && strcmp(out->workload, "sharepoint") != 0) {
        kc_error_set(err, KC_CONFLICT,
                     "DEP '%s' is a %s DEP; only Exchange and SharePoint DEPs take a data purge",
                     out->name, out->workload);
        if (strcmp(out->workload, "tenant") == 0)
            kc_error_hint(err, "a tenant leaves with 'keycustody tenant offboard'");
        return KC_CONFLICT;
    }
    /* The customer shows intent by revoking the service on both vaults. */
    for (i = 0; i < 2; i++) {
        r = revoked_on(ctx, out->keys[i].vault, out->principal, err);
        if (r != KC_OK)
            return kc_error_prefix(err, "cannot request a data purge of DEP '%s'", out->name);
    }
    r = kc_clock_now(&now, err);
    if (r != KC_OK)
        return r;
    kc_time_format_rfc3339(now, out->purge_requested);
    snprintf(out->purge_reason, sizeof(out->purge_reason), "%s", reason);
    snprintf(out->purge_contact, sizeof(out->purge_contact), "%s", contact);
    r = dep_write(st, out, 0, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot record the purge request of DEP '%s'", out->name);
    return KC_OK;
}

/* Every wrapped copy of the DEP key and of its scope keys goes, in one
 * transaction; the store overwrites what it frees (secure_delete), and the
 * caller then empties the write-ahead log, so no copy stays in either file. */
static kc_rc shred_store(kc_store *st, const kc_dep *d, const char *now, long *scopes,
                         kc_error *err)
{
    static const char *const sql[] = {
        /* the record keeps naming the keys; the wrapped copies go */
        /* substr(x, 1, 0): an empty blob on both backends */
        "UPDATE dep_keys SET wrapped = substr(wrapped, 1, 0) WHERE dep_id = ?1",
        "UPDATE scopes SET wrapped_key = substr(wrapped_key, 1, 0), purged = ?2 WHERE dep_id = ?1",
        "DELETE FROM assignments WHERE dep_id = ?1",
    };
    kc_dep done = *d;
    kc_q *s = NULL;
    size_t i;
    int rc = KC_Q_OK;
    kc_rc r = kc_store_begin(st, err);

    if (r != KC_OK)
        return r;
    for (i = 0; rc == KC_Q_OK && i < sizeof(sql) / sizeof(sql[0]); i++) {
        rc = kc_q_prepare(st, sql[i], &s);
        if (rc != KC_Q_OK)
            break;
        kc_q_bind_text(s, 1, d->id);
        if (kc_q_param_count(s) > 1)
            kc_q_bind_text(s, 2, now);
        rc = kc_q_step(s) == KC_Q_DONE ? KC_Q_OK : KC_Q_ERROR;
        if (i == 1)
            *scopes = kc_store_changes(st);
        kc_q_finish(s);
    }
    r = rc == KC_Q_OK ? KC_OK : store_error(st, err);
    /* the record last, with its MAC: purged, never to be enabled again */
    snprintf(done.purged, sizeof(done.purged), "%s", now);
    done.enabled = 0;
    if (r == KC_OK)
        r = dep_write(st, &done, 0, err);
    if (r != KC_OK) {
        kc_store_rollback(st);
        return r;
    }
    return kc_store_commit(st, err);
}

kc_rc kc_dep_purge(kc_ctx *ctx, kc_store *st, const char *name_or_id, kc_dep *out, long *scopes,
                   kc_error *err)
{
    char now_s[21];
    kc_vault *sv = NULL;
    time_t now;
    int again;
    kc_rc r = kc_store_authenticate(ctx, st, NULL, 0, err);

    *scopes = 0;
    if (r == KC_OK)
        r = kc_dep_get(st, name_or_id, out, err);
    if (r != KC_OK)
        return r;
    if (out->purge_requested[0] == '\0') {
        kc_error_set(err, KC_CONFLICT, "DEP '%s' has no data purge requested", out->name);
        kc_error_hint(err,
                      "request it with 'keycustody dep purge-request %s --reason ... "
                      "--contact ...'",
                      out->name);
        return KC_CONFLICT;
    }
    r = kc_clock_now(&now, err);
    if (r != KC_OK)
        return r;
    kc_time_format_rfc3339(now, now_s);
    /* The store first: once it commits no wrapped copy is left anywhere,
     * and a crash before the availability key is destroyed is finished by
     * running the purge again. */
    again = out->purged[0] != '\0';
    if (!again) {
        r = shred_store(st, out, now_s, scopes, err);
        if (r != KC_OK)
            return kc_error_prefix(err, "cannot purge DEP '%s'", out->name);
        snprintf(out->purged, sizeof(out->purged), "%s", now_s);
    }
    /* every run: a scrub another reader held up is finished by the next */
    r = kc_store_scrub(st, err);
    if (r != KC_OK)
        return kc_error_prefix(err,
                               "DEP '%s' is purged in the store, but old copies may remain in its "
                               "write-ahead log; run the purge again when no other keycustody "
                               "has the store open",
                               out->name);
    /* The first run destroys the key it made with the DEP: not finding it
     * is an error to report, never taken for done. Only a run after the
     * store was shredded may find it gone, and then the purge was finished. */
    r = kc_vault_open(ctx, out->keys[2].vault, &sv, err);
    if (r == KC_OK) {
        r = kc_key_destroy_now(sv, out->keys[2].key, err);
        if (r == KC_NOT_FOUND && again)
            r = kc_error_set(err, KC_CONFLICT, "DEP '%s' was purged already, on %s", out->name,
                             out->purged);
    }
    kc_vault_free(sv);
    if (r != KC_OK && r != KC_CONFLICT)
        return kc_error_prefix(err,
                               "DEP '%s' is purged in the store, but its availability key "
                               "%s/%s is not yet destroyed; run the purge again",
                               out->name, out->keys[2].vault, out->keys[2].key);
    return r;
}
