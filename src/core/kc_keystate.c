#include "kc_keystate.h"
#include "kc_manifest.h"
#include "kc_gendoc.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

kc_rc kc_keystate_doc_check(const unsigned char *buf, size_t len, unsigned long *generation,
                            char base[KC_GENDOC_DIGEST_HEX + 1], void *arg, kc_error *err)
{
    json_t *o, *keys;
    const char *kind;
    kc_rc r = KC_INTEGRITY;

    (void)arg;
    /* a command reads, writes and reads again a document that names every
     * key (some hundred KB at 1000 keys): each version is parsed once */
    if (kc_gendoc_memo_get(kc_keystate_doc_check, "", buf, len, generation, base))
        return KC_OK;
    o = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, NULL);
    if (o == NULL)
        return kc_error_set(err, KC_INTEGRITY, "key state is not JSON");
    kind = json_string_value(json_object_get(o, "kind"));
    keys = json_object_get(o, "keys");
    if (kind == NULL || strcmp(kind, "keycustody-keys") != 0 ||
        json_integer_value(json_object_get(o, "schema")) != 1 ||
        !json_is_integer(json_object_get(o, "generation")) || !json_is_object(keys) ||
        !kc_gendoc_base_get(o, base)) {
        kc_error_set(err, KC_INTEGRITY, "key state does not have the expected fields");
    } else {
        *generation = (unsigned long)json_integer_value(json_object_get(o, "generation"));
        kc_gendoc_memo_put(kc_keystate_doc_check, "", buf, len, *generation, base);
        r = KC_OK;
    }
    json_decref(o);
    return r;
}

/* The key state; KC_NOT_FOUND only for a vault whose manifest names no key
 * ('vault init' writes its first generation before any key is made). */
static kc_rc read_state(kc_vault *v, unsigned char **buf, size_t *len, unsigned long *next,
                        kc_gendoc_ref *ref, kc_error *err)
{
    size_t named = json_object_size(json_object_get(v->manifest, "keys"));
    int tries;
    kc_rc r = KC_NOT_FOUND;

    /* SoftHSM 2.6.1 now and then finds none of a token's data objects while
     * other processes write it; asked a moment later, it does (as for the
     * manifest, kc_manifest_read) */
    for (tries = 0; r == KC_NOT_FOUND && tries < (named > 0 ? 4 : 1); tries++) {
        if (tries > 0) {
            struct timespec pause = {0, 100L * 1000 * 1000};
            (void)nanosleep(&pause, NULL);
            kc_error_clear(err);
        }
        r = kc_gendoc_read(v->tok, KC_KEYSTATE_LABEL, KC_WHERE_PRIVATE, "key state",
                           kc_keystate_doc_check, NULL, buf, len, next, ref, err);
    }
    if (r != KC_NOT_FOUND || named == 0)
        return r;
    if (kc_tok_still_answers(v->tok, err) != KC_OK)
        return err->code;
    kc_error_set(err, KC_INTEGRITY,
                 "vault '%s': its manifest names %zu key(s), but the token holds no key state "
                 "(what keeps their versions, tags and soft-delete records): it was removed "
                 "outside keycustody",
                 v->meta.name, named);
    kc_error_hint(err, "restore the token from a copy; 'pkcs11-tool --list-objects --type data "
                       "--login' shows its data objects");
    return KC_INTEGRITY;
}

kc_rc kc_keystate_load(kc_vault *v, kc_error *err)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    unsigned long next = 1;
    kc_gendoc_ref ref;
    kc_rc r;

    if (v->state != NULL)
        return KC_OK;
    r = kc_vault_login(v, err);
    if (r != KC_OK)
        return r;
    r = read_state(v, &buf, &len, &next, &ref, err);
    v->state_digest[0] = '\0';
    if (r == KC_OK)
        memcpy(v->state_digest, ref.digest, sizeof(v->state_digest));
    if (r == KC_NOT_FOUND) {
        v->state = json_pack("{s:s, s:i, s:I, s:s, s:{}}", "kind", "keycustody-keys", "schema", 1,
                             "generation", (json_int_t)0, "vault", v->meta.name, "keys");
        return v->state != NULL ? KC_OK : kc_error_set(err, KC_ERR, "out of memory");
    }
    if (r != KC_OK)
        return r;
    v->state = json_loadb((const char *)buf, len, 0, NULL);
    free(buf);
    return v->state != NULL ? KC_OK : kc_error_set(err, KC_ERR, "out of memory");
}

kc_rc kc_keystate_commit(kc_vault *v, kc_error *err)
{
    unsigned long read = (unsigned long)json_integer_value(json_object_get(v->state, "generation"));
    unsigned long next = 1;
    unsigned char *cur = NULL;
    kc_gendoc_ref base;
    size_t len = 0;
    char *doc;
    kc_rc r;

    /* still the generation this command read (see kc_vault_changed_meanwhile);
     * the write commits over exactly that object (kc_gendoc.h) */
    r = kc_gendoc_read(v->tok, KC_KEYSTATE_LABEL, KC_WHERE_PRIVATE, "key state",
                       kc_keystate_doc_check, NULL, &cur, &len, &next, &base, err);
    free(cur);
    if (r == KC_NOT_FOUND) {
        kc_error_clear(err);
        r = KC_OK;
    }
    if (r == KC_OK && next != read + 1)
        r = kc_vault_changed_meanwhile(v, "key state", read, next - 1, err);
    /* and the very document it read: a search that left out the committed
     * one of two candidates of that generation gave the other (kc_gendoc.h),
     * and a write over what is committed now would drop that one's change */
    if (r == KC_OK && base.handle != 0 && strcmp(base.digest, v->state_digest) != 0)
        r = kc_vault_changed_meanwhile(v, "key state", read, read, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot save the key state of vault '%s'", v->meta.name);
    json_object_set_new(v->state, "generation", json_integer((json_int_t)read + 1));
    r = kc_gendoc_base_set(v->state, &base, err);
    if (r != KC_OK)
        return r;
    doc = json_dumps(v->state, JSON_COMPACT | JSON_SORT_KEYS);
    if (doc == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    r = kc_gendoc_write(v->tok, KC_KEYSTATE_LABEL, 1, "key state", doc, read + 1, &base,
                        kc_keystate_doc_check, NULL, err);
    if (r == KC_OK)
        kc_manifest_digest(doc, v->state_digest);
    free(doc);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot save the key state of vault '%s'", v->meta.name);
    v->saved++;
    return KC_OK;
}

kc_rc kc_keystate_sign(kc_vault *v, kc_error *err)
{
    int tries;
    kc_rc r;

    /* What readers without the PIN see of it, signed. The key state is
     * committed now; when another writer (another host) committed a
     * manifest meanwhile, the metadata is taken from it: this command
     * changed none (those changes are kc_vault_save_meta's, which writes the
     * manifest alone). */
    r = kc_manifest_write(v, &v->meta, err);
    for (tries = 0; r == KC_CONFLICT && tries < 3; tries++) {
        /* and the key state as committed now: another host's commit after
         * this one is in it, and the manifest must name its keys too */
        kc_error_clear(err);
        json_decref(v->state);
        v->state = NULL;
        r = kc_vault_meta_reread(v, err);
        if (r == KC_OK)
            r = kc_keystate_load(v, err);
        if (r == KC_OK)
            r = kc_manifest_write(v, &v->meta, err);
    }
    if (r != KC_OK)
        kc_error_hint(err,
                      "the key state of vault '%s' was saved, its signed manifest was not: "
                      "the vault's next change signs it again ('keycustody key list' shows "
                      "the keys)",
                      v->meta.name);
    return r;
}

kc_rc kc_keystate_save(kc_vault *v, kc_error *err)
{
    kc_rc r = kc_keystate_commit(v, err);

    return r == KC_OK ? kc_keystate_sign(v, err) : r;
}

json_t *kc_keystate_key(kc_vault *v, const char *name, int create)
{
    json_t *keys = json_object_get(v->state, "keys");
    json_t *k = json_object_get(keys, name);

    if (k == NULL && create) {
        k = json_pack("{s:{}, s:{}}", "tags", "versions");
        json_object_set_new(keys, name, k);
    }
    return k;
}

json_t *kc_keystate_version(json_t *key, const char *version, int create)
{
    json_t *vs = json_object_get(key, "versions");
    json_t *ver = json_object_get(vs, version);

    if (ver == NULL && create && vs != NULL) {
        ver = json_object();
        json_object_set_new(vs, version, ver);
    }
    return ver;
}

void kc_keystate_drop(kc_vault *v, const char *name)
{
    json_object_del(json_object_get(v->state, "keys"), name);
}

const char *kc_keystate_str(json_t *o, const char *field, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, field));

    return s != NULL ? s : dflt;
}

int kc_keystate_bool(json_t *o, const char *field, int dflt)
{
    json_t *b = json_object_get(o, field);

    return json_is_boolean(b) ? json_is_true(b) : dflt;
}

kc_rc kc_keystate_stale(kc_vault *v, int all, size_t *stale, kc_error *err)
{
    char fp[KC_FINGERPRINT_HEX + 1];
    void *signer = NULL;
    size_t a = 0, b = 0;
    kc_rc r = kc_vault_login(v, err);

    *stale = 0;
    if (r == KC_OK)
        r = kc_gendoc_stale(v->tok, KC_KEYSTATE_LABEL, KC_WHERE_PRIVATE, kc_keystate_doc_check,
                            NULL, all, &a, err);
    if (r == KC_OK)
        r = kc_manifest_signer(v->tok, &signer, fp, err);
    if (r == KC_OK)
        r = kc_gendoc_stale(v->tok, KC_VAULT_META_LABEL, KC_WHERE_PUBLIC, kc_manifest_doc_check,
                            signer, all, &b, err);
    kc_manifest_signer_free(signer);
    *stale = a + b;
    if (r == KC_OK) {
        size_t orphans = 0;
        r = kc_tok_unlabelled_data(v->tok, 0, &orphans, err);
        *stale += orphans;
    }
    return r;
}

kc_rc kc_keystate_tidy(kc_vault *v, int all, size_t *removed, kc_error *err)
{
    size_t a = 0, b = 0;
    char fp[KC_FINGERPRINT_HEX + 1];
    void *signer = NULL;
    kc_rc r = kc_vault_login(v, err);

    if (r == KC_OK)
        r = kc_gendoc_tidy(v->tok, KC_KEYSTATE_LABEL, KC_WHERE_PRIVATE, kc_keystate_doc_check, NULL,
                           all, &a, err);
    if (r == KC_OK)
        r = kc_manifest_signer(v->tok, &signer, fp, err);
    if (r == KC_OK)
        r = kc_gendoc_tidy(v->tok, KC_VAULT_META_LABEL, KC_WHERE_PUBLIC, kc_manifest_doc_check,
                           signer, all, &b, err);
    kc_manifest_signer_free(signer);
    /* and what a killed write of one of them left without a label */
    if (r == KC_OK) {
        size_t c = 0;
        r = kc_tok_unlabelled_data(v->tok, 1, &c, err);
        b += c;
    }
    *removed = a + b;
    return r;
}
