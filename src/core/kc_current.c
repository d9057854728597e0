/* The vault's private record of its current manifest (kc_manifest.h).
 *
 * The manifest is public: someone without the PIN who kept a copy of an
 * older generation can remove the newer one (SoftHSM lets a public session
 * destroy public objects) and put the copy back. It is signed by the vault
 * key, so readers without the PIN cannot tell. The record is a private
 * object, which no session without the user PIN can create or destroy
 * (SoftHSM 2.6.1: test_attack "manifest rollback"); every command that logs
 * in to a vault compares the manifest it opened with it. */
#include "kc_manifest.h"
#include "kc_gendoc.h"
#include "kc_util.h"

#include <openssl/sha.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CURRENT_KIND "keycustody-manifest-current"

typedef struct current {
    unsigned long generation;
    char digest[65];
    kc_vault_meta meta; /* the vault metadata that generation holds */
} current;

void kc_manifest_digest(const char *doc, char out[KC_FINGERPRINT_HEX + 1])
{
    unsigned char d[SHA256_DIGEST_LENGTH];

    SHA256((const unsigned char *)doc, strlen(doc), d);
    kc_hex_encode(d, sizeof(d), out);
}

static int parse_current(const kc_data_obj *o, current *out)
{
    json_t *doc = json_loadb((const char *)o->value, o->len, 0, NULL), *g, *vault;
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    const char *digest = json_string_value(json_object_get(doc, "sha256"));
    char *text = NULL;
    kc_error ignored;
    int ok = 0;

    g = json_object_get(doc, "generation");
    vault = json_object_get(doc, "vault");
    if (kind != NULL && strcmp(kind, CURRENT_KIND) == 0 && json_is_integer(g) &&
        json_integer_value(g) > 0 && digest != NULL && strlen(digest) == KC_FINGERPRINT_HEX &&
        json_is_object(vault) && (text = json_dumps(vault, JSON_COMPACT)) != NULL &&
        kc_vault_meta_decode((const unsigned char *)text, strlen(text), &out->meta, &ignored) ==
            KC_OK) {
        out->generation = (unsigned long)json_integer_value(g);
        memcpy(out->digest, digest, sizeof(out->digest));
        ok = 1;
    }
    free(text);
    json_decref(doc);
    return ok;
}

/* The newest record on tok (logged in) in *out; KC_NOT_FOUND when there is
 * none. A record that does not parse is tampering: private objects are made
 * by PIN holders only. */
static kc_rc current_read(kc_tok *tok, current *out, kc_error *err)
{
    const char *vault = kc_tok_info_get(tok)->label;
    kc_data_obj *objs = NULL;
    size_t n = 0, i;
    current c;
    int tries, found = 0;
    kc_rc r = KC_OK;

    /* SoftHSM 2.6.1 now and then finds none of a token's data objects while
     * other processes write it (as for the manifest: kc_manifest.c) */
    for (tries = 0; tries < 4; tries++) {
        if (tries > 0) {
            struct timespec pause = {0, 100L * 1000 * 1000};
            (void)nanosleep(&pause, NULL);
        }
        kc_p11_data_objs_free(objs, n);
        objs = NULL;
        n = 0;
        r = kc_tok_find_data(tok, KC_GENDOC_APPLICATION, KC_MANIFEST_CURRENT_LABEL,
                             KC_WHERE_PRIVATE, &objs, &n, NULL, err);
        if (r != KC_OK || n > 0)
            break;
    }
    /* a public object with the label is not the vault's (records are
     * private): it is not read, and 'vault validate --repair' removes it */
    for (i = 0; r == KC_OK && i < n; i++) {
        if (!parse_current(&objs[i], &c)) {
            r = kc_error_set(err, KC_INTEGRITY,
                             "vault '%s': the private record of its current manifest does "
                             "not parse",
                             vault);
        } else if (!found || c.generation > out->generation) {
            *out = c;
            found = 1;
        }
    }
    kc_p11_data_objs_free(objs, n);
    if (r == KC_OK && !found)
        r = kc_error_set(err, KC_NOT_FOUND, "vault '%s' has no record of its current manifest",
                         vault);
    return r;
}

kc_rc kc_manifest_record_current(kc_vault *v, const kc_vault_meta *m, unsigned long generation,
                                 const char digest[KC_FINGERPRINT_HEX + 1], kc_error *err)
{
    kc_data_obj *objs = NULL;
    char *meta = NULL, *text = NULL;
    json_t *doc = NULL;
    size_t n = 0, i;
    current c;
    kc_rc r = kc_vault_meta_encode(m, &meta, err);

    if (r == KC_OK) {
        doc =
            json_pack("{s:s, s:I, s:s, s:o}", "kind", CURRENT_KIND, "generation",
                      (json_int_t)generation, "sha256", digest, "vault", json_loads(meta, 0, NULL));
        text = doc != NULL ? json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        if (text == NULL)
            r = kc_error_set(err, KC_ERR, "out of memory");
    }
    if (r == KC_OK)
        r = kc_tok_create_data(v->tok, KC_GENDOC_APPLICATION, KC_MANIFEST_CURRENT_LABEL, text,
                               strlen(text), 1, NULL, err);
    /* older records go; one the token keeps is older, and readers take the
     * newest (a failure to remove one is not this write's) */
    if (r == KC_OK) {
        kc_error ignored;

        if (kc_tok_find_data(v->tok, KC_GENDOC_APPLICATION, KC_MANIFEST_CURRENT_LABEL,
                             KC_WHERE_PRIVATE, &objs, &n, NULL, &ignored) == KC_OK)
            for (i = 0; i < n; i++)
                if (parse_current(&objs[i], &c) && c.generation < generation &&
                    kc_tok_destroy(v->tok, objs[i].handle, &ignored) != KC_OK)
                    kc_error_clear(&ignored);
    }
    kc_p11_data_objs_free(objs, n);
    free(meta);
    free(text);
    json_decref(doc);
    if (r != KC_OK) {
        err->code = KC_TOKEN;
        return KC_TOKEN;
    }
    return KC_OK;
}

/* Whether a manifest (generation, digest) is older than the record says,
 * or another document of the recorded generation. */
static int behind(const current *rec, unsigned long generation, const char *digest)
{
    return rec->generation > generation ||
           (rec->generation == generation && strcmp(rec->digest, digest) != 0);
}

/* Whether the token's manifest now is rec or newer: another writer moved the
 * vault on since this command opened it, which its own write will notice. */
static kc_rc token_moved_on(kc_vault *v, const current *rec, int *yes, kc_error *err)
{
    kc_gendoc_ref now;
    json_t *m = NULL;
    char fp[KC_FINGERPRINT_HEX + 1];
    unsigned long next;
    kc_rc r = kc_manifest_read(v->tok, v->fingerprint, &m, fp, &next, &now, err);

    json_decref(m);
    /* a reader's guess between two candidates is a write still finishing:
     * this command conflicts with it, whatever the guess */
    *yes = r == KC_OK && (now.guessed || !behind(rec, now.generation, now.digest));
    return r;
}

static kc_rc rolled_back(const kc_vault *v, const current *rec, kc_error *err)
{
    kc_error_set(err, KC_INTEGRITY,
                 "vault '%s': its manifest was rolled back: the token holds generation %lu, but "
                 "the vault's private record names generation %lu (sha256:%.16s...) as its "
                 "current one; someone who can write the token's public objects removed it and "
                 "put an older signed copy back",
                 v->meta.name, v->meta.generation, rec->generation, rec->digest);
    kc_error_hint(err,
                  "nothing was changed, and no command that logs in uses the vault until it is "
                  "repaired: 'keycustody vault validate %s --repair' signs the recorded state "
                  "again; find out who could write the token (its files, its module, a p11-kit "
                  "server)",
                  v->meta.name);
    return KC_INTEGRITY;
}

kc_rc kc_manifest_check_current(kc_vault *v, kc_error *err)
{
    current rec;
    int moved = 0;
    kc_rc r;

    /* nothing opened yet: 'vault init' writes the first one */
    if (v->meta.generation == 0)
        return KC_OK;
    r = current_read(v->tok, &rec, err);
    /* No record: a vault made before keycustody kept them (or 'vault init'
     * stopped between its manifest and the record) gets one now, for the
     * manifest it has: trust on first use. Removing a private record takes
     * the token's files, and whoever has those can put back an older copy
     * of the record as well (docs/security.md). */
    if (r == KC_NOT_FOUND) {
        kc_error_clear(err);
        r = kc_manifest_record_current(v, &v->meta, v->meta.generation, v->manifest_digest, err);
        /* this command wrote nothing (a write's own record failing says so
         * in kc_manifest_write_after); the module's cause is kept */
        if (r != KC_OK)
            kc_error_prefix(err,
                            "vault '%s' shows no private record of its manifest (generation "
                            "%lu), and the record of it could not be made; nothing was changed",
                            v->meta.name, v->meta.generation);
        return r;
    }
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot check the manifest of vault '%s'", v->meta.name);
    /* a record behind the manifest: its writer was stopped between the two */
    if (!behind(&rec, v->meta.generation, v->manifest_digest))
        return KC_OK;
    /* another writer moved the vault on since this command opened it: the
     * command stops, as its write would (it may have changed what it
     * opened already); never does it go on with what it opened */
    r = token_moved_on(v, &rec, &moved, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot check the manifest of vault '%s'", v->meta.name);
    if (moved)
        return kc_vault_changed_meanwhile(v, "manifest", v->meta.generation, rec.generation, err);
    return rolled_back(v, &rec, err);
}

kc_rc kc_manifest_check_base(kc_vault *v, const kc_gendoc_ref *base, kc_error *err)
{
    current rec;
    int moved = 0;
    kc_rc r = current_read(v->tok, &rec, err);

    /* none yet: this write makes the first (kc_manifest_check_current) */
    if (r == KC_NOT_FOUND) {
        kc_error_clear(err);
        return KC_OK;
    }
    if (r != KC_OK)
        return r;
    if (!behind(&rec, base->generation, base->digest))
        return KC_OK;
    /* another writer committed and recorded since base was read: this
     * write conflicts, nothing is written */
    r = token_moved_on(v, &rec, &moved, err);
    if (r != KC_OK)
        return r;
    if (moved)
        return kc_vault_changed_meanwhile(v, "manifest", base->generation, rec.generation, err);
    rolled_back(v, &rec, err);
    kc_error_prefix(err, "the manifest this write would replace is generation %lu",
                    base->generation);
    return KC_INTEGRITY;
}

kc_rc kc_manifest_restore_current(kc_vault *v, unsigned long *restored, kc_error *err)
{
    kc_gendoc_ref now;
    kc_vault_meta meta;
    json_t *m = NULL;
    char fp[KC_FINGERPRINT_HEX + 1];
    unsigned long next;
    current rec;
    int moved = 0;
    kc_rc r;

    *restored = 0;
    r = kc_ctx_login(v->ctx, v->tok, err);
    if (r == KC_OK)
        r = current_read(v->tok, &rec, err);
    if (r == KC_NOT_FOUND)
        return kc_manifest_check_current(v, err);
    if (r == KC_OK)
        r = token_moved_on(v, &rec, &moved, err);
    if (r != KC_OK || moved)
        return r;
    /* sign the recorded metadata as a generation newer than the record */
    r = kc_manifest_read(v->tok, v->fingerprint, &m, fp, &next, &now, err);
    json_decref(m);
    if (r != KC_OK)
        return r;
    meta = rec.meta;
    meta.generation = now.generation;
    v->meta = meta;
    /* the rollback is known and this is its repair: the write's own login
     * must not refuse it again */
    v->current_checked = 1;
    r = kc_manifest_write_after(v, &v->meta, rec.generation, err);
    if (r == KC_OK)
        *restored = v->meta.generation;
    else
        v->current_checked = 0; /* still rolled back: checked again at the next login */
    return r;
}

kc_rc kc_manifest_remove_planted(kc_vault *v, size_t *removed, kc_error *err)
{
    kc_data_obj *objs = NULL;
    size_t n = 0, i;
    kc_rc r = kc_tok_find_data(v->tok, KC_GENDOC_APPLICATION, KC_MANIFEST_CURRENT_LABEL,
                               KC_WHERE_PUBLIC, &objs, &n, NULL, err);

    *removed = 0;
    for (i = 0; r == KC_OK && i < n; i++) {
        r = kc_tok_destroy(v->tok, objs[i].handle, err);
        if (r == KC_OK)
            (*removed)++;
    }
    kc_p11_data_objs_free(objs, n);
    return r;
}
