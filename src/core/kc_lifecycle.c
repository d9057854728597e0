/* Key lifecycle: rotation, updates, soft delete, recovery and purge. */
#include "kc_key.h"
#include "kc_manifest.h"
#include "kc_keystate.h"
#include "kc_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PUB_OPS (KC_OP_WRAP | KC_OP_ENCRYPT | KC_OP_VERIFY)
#define PRIV_OPS (KC_OP_UNWRAP | KC_OP_DECRYPT | KC_OP_SIGN)

/* Loads a key with its state (logs in); KC_NOT_FOUND when there is none. */
static kc_rc load(kc_vault *v, const char *name, kc_key **out, kc_error *err)
{
    return kc_key_get(v, name, 1, out, err);
}

/* Sets the token's attributes of one version to what its ops and state
 * call for. A token that refuses the change (KC_DENIED) leaves it to
 * keycustody to enforce; `key show` says so. */
static kc_rc apply_version(kc_vault *v, const kc_key *k, const kc_key_version *ver, kc_error *err)
{
    unsigned want = kc_key_token_ops(k, ver);
    kc_rc r = KC_OK;

    if (ver->has_pub && (ver->token_ops & PUB_OPS) != (want & PUB_OPS))
        r = kc_tok_set_ops(v->tok, ver->pub.handle, 0, want & PUB_OPS, err);
    if (r == KC_DENIED)
        r = KC_OK;
    if (r == KC_OK && ver->has_priv && (ver->token_ops & PRIV_OPS) != (want & PRIV_OPS))
        r = kc_tok_set_ops(v->tok, ver->priv.handle, 1, want & PRIV_OPS, err);
    if (r == KC_DENIED)
        r = KC_OK;
    return r;
}

static kc_rc apply_all(kc_vault *v, const kc_key *k, kc_error *err)
{
    size_t i;
    kc_rc r = KC_OK;

    for (i = 0; r == KC_OK && i < k->nversions; i++)
        r = apply_version(v, k, &k->versions[i], err);
    return r;
}

/* Reloads *k after a change, so the caller sees what the token now holds. */
static kc_rc reload(kc_vault *v, kc_key **k, kc_error *err)
{
    char name[KC_KEY_NAME_MAX + 1];

    snprintf(name, sizeof(name), "%s", (*k)->name);
    kc_key_free(*k);
    *k = NULL;
    return load(v, name, k, err);
}

/* Saves the key state, then brings the token's attributes in line with it
 * and reloads *k. The record is written first: a crash before the token
 * changes leaves a state the next update, delete or recover completes. */
static kc_rc commit(kc_vault *v, kc_key **k, kc_error *err)
{
    kc_rc r = kc_keystate_save(v, err);

    if (r == KC_OK)
        r = reload(v, k, err);
    if (r == KC_OK)
        r = apply_all(v, *k, err);
    if (r == KC_OK)
        r = reload(v, k, err);
    return r;
}

kc_rc kc_key_rotate(kc_vault *v, const char *name, kc_key **out, kc_error *err)
{
    return kc_key_rotate_to(v, name, 0, -1, out, err);
}

kc_rc kc_key_rotate_to(kc_vault *v, const char *name, unsigned bits, int protection, kc_key **out,
                       kc_error *err)
{
    unsigned char id[KC_VERSION_BYTES];
    const kc_key_version *cur;
    char today[9], expires[9];
    kc_rsa_spec spec;
    kc_obj pub, priv;
    kc_key *k = NULL;
    kc_rc r;

    *out = NULL;
    r = load(v, name, &k, err);
    if (r == KC_OK)
        r = kc_key_check_active(k, err);
    if (r == KC_OK)
        r = kc_date_today(today, err);
    if (r == KC_OK)
        r = kc_key_version_id(v, id, err);
    if (r != KC_OK)
        goto done;
    cur = &k->versions[k->current];
    if (cur->type != KC_KT_RSA || !cur->has_priv) {
        r = kc_error_set(err, KC_ERR, "the current version is not a complete RSA key pair");
        goto done;
    }
    expires[0] = '\0';
    if (cur->expires[0] && kc_date_parse(cur->expires, expires) != 0)
        expires[0] = '\0';
    memset(&spec, 0, sizeof(spec));
    spec.label = k->name;
    spec.id = id;
    spec.id_len = sizeof(id);
    spec.bits = bits ? bits : cur->bits;
    spec.ops = kc_key_ops_on_token(cur->ops);
    kc_key_protect(v, protection >= 0 ? (kc_protection)protection : cur->protection, &spec);
    spec.start_date = today;
    spec.end_date = expires[0] ? expires : NULL;
    r = kc_tok_generate_rsa(v->tok, &spec, &pub, &priv, err);
    if (r == KC_OK) {
        unsigned long saved = v->saved;
        r = kc_key_record_version(v, k->name, id, sizeof(id), cur->ops, "generated", 1, err);
        if (r != KC_OK)
            kc_key_drop_unrecorded(v, saved, pub, priv);
    }
    if (r == KC_OK)
        r = reload(v, &k, err);
done:
    if (r != KC_OK) {
        kc_key_free(k);
        return kc_error_prefix(err, "cannot rotate key '%s' in vault '%s'", name, v->meta.name);
    }
    *out = k;
    return KC_OK;
}

static kc_rc update_tags(kc_vault *v, const char *name, const kc_key_update_opts *o, kc_error *err)
{
    json_t *tags = json_object_get(kc_keystate_key(v, name, 1), "tags");
    size_t i;

    if (tags == NULL) {
        tags = json_object();
        json_object_set_new(kc_keystate_key(v, name, 1), "tags", tags);
    }
    for (i = 0; i < o->ntags; i++) {
        if (o->tags[i].value[0] == '\0')
            json_object_del(tags, o->tags[i].name);
        else
            json_object_set_new(tags, o->tags[i].name, json_string(o->tags[i].value));
    }
    if (json_object_size(tags) > KC_KEY_TAGS_MAX)
        return kc_error_set(err, KC_USAGE, "a key has at most %d tags", KC_KEY_TAGS_MAX);
    return KC_OK;
}

kc_rc kc_key_update(kc_vault *v, const char *name, const unsigned char *id, size_t id_len,
                    const kc_key_update_opts *o, kc_key **out, kc_error *err)
{
    const kc_key_version *ver = NULL;
    char expires[9], today[9], opstr[128];
    json_t *rec;
    kc_key *k = NULL;
    kc_rc r;

    *out = NULL;
    r = load(v, name, &k, err);
    if (r == KC_OK)
        r = kc_key_check_active(k, err);
    if (r == KC_OK)
        r = kc_key_select(k, id, id_len, &ver, err);
    if (r == KC_OK)
        r = kc_date_today(today, err);
    if (r != KC_OK)
        goto done;
    if (o->expires != NULL) {
        if (strcmp(o->expires, "never") == 0) {
            if (ver->expires[0]) {
                r = kc_error_set(err, KC_USAGE,
                                 "version %s expires on %s; an expiry once set "
                                 "cannot be removed, only moved (Key Vault's rule)",
                                 ver->version, ver->expires);
                kc_error_hint(err, "give --expires 9999-12-31 for the latest date there is");
                goto done;
            }
        } else if (kc_date_parse(o->expires, expires) != 0) {
            r = kc_error_set(err, KC_USAGE, "expiry '%s' is not a date (YYYY-MM-DD)", o->expires);
            goto done;
        } else if (strcmp(expires, today) < 0) {
            r = kc_error_set(err, KC_USAGE, "expiry %s is in the past", o->expires);
            goto done;
        } else if (!ver->has_pub) {
            r = kc_error_set(err, KC_ERR, "version %s has no public key to carry the expiry",
                             ver->version);
            goto done;
        } else {
            r = kc_tok_set_end_date(v->tok, ver->pub.handle, expires, err);
            if (r != KC_OK)
                goto done;
        }
    }
    rec = kc_keystate_version(kc_keystate_key(v, name, 1), ver->version, 1);
    if (o->set_enabled)
        json_object_set_new(rec, "enabled", json_boolean(o->enabled));
    if (o->set_ops) {
        kc_key_ops_format(o->ops, opstr, sizeof(opstr));
        json_object_set_new(rec, "ops", json_string(opstr));
    } else if (json_object_get(rec, "ops") == NULL) {
        kc_key_ops_format(ver->ops, opstr, sizeof(opstr));
        json_object_set_new(rec, "ops", json_string(opstr));
    }
    r = update_tags(v, name, o, err);
    if (r == KC_OK)
        r = commit(v, &k, err);
done:
    if (r != KC_OK) {
        kc_key_free(k);
        return kc_error_prefix(err, "cannot update key '%s' in vault '%s'", name, v->meta.name);
    }
    *out = k;
    return KC_OK;
}

/* Destroys the half-made versions of keys (every key when name is NULL):
 * *removed counts them, *emptied whether the named key has none left. */
static kc_rc remove_half_made(kc_vault *v, const char *name, size_t *removed, int *emptied,
                              kc_error *err)
{
    kc_key *keys = NULL;
    size_t n = 0, i, j;
    kc_rc r;

    *removed = 0;
    *emptied = 0;
    /* the whole list: kc_key_get refuses a key that is only half-made */
    r = kc_key_list(v, &keys, &n, err);
    for (i = 0; r == KC_OK && i < n; i++) {
        const kc_key *k = &keys[i];
        if (name != NULL && strcmp(k->name, name) != 0)
            continue;
        for (j = k->nversions; r == KC_OK && j < k->nversions + k->nhalf; j++) {
            const kc_key_version *ver = &k->versions[j];
            /* one half, or both when one has no key material (kc_key_obj.no_key) */
            if (ver->has_pub)
                r = kc_tok_destroy(v->tok, ver->pub.handle, err);
            if (r == KC_OK && ver->has_priv)
                r = kc_tok_destroy(v->tok, ver->priv.handle, err);
            if (r == KC_OK)
                (*removed)++;
        }
        *emptied = k->nversions == 0;
    }
    kc_key_list_free(keys, n);
    return r;
}

kc_rc kc_vault_remove_leftovers(kc_vault *v, size_t *halves, size_t *stale, kc_error *err)
{
    size_t planted = 0;
    int emptied;
    kc_rc r = remove_half_made(v, NULL, halves, &emptied, err);

    *stale = 0;
    if (r == KC_OK)
        r = kc_keystate_tidy(v, 1, stale, err);
    /* public look-alikes of the private record count with the stale */
    if (r == KC_OK)
        r = kc_manifest_remove_planted(v, &planted, err);
    *stale += planted;
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot remove what interrupted writes left in vault '%s'",
                               v->meta.name);
    return KC_OK;
}

kc_rc kc_key_remove_half_made(kc_vault *v, const char *name, int *emptied, kc_error *err)
{
    size_t removed;
    kc_rc r = remove_half_made(v, name, &removed, emptied, err);

    if (r != KC_OK)
        return kc_error_prefix(err, "cannot repair key '%s' in vault '%s'", name, v->meta.name);
    return KC_OK;
}

kc_rc kc_key_record_missing(kc_vault *v, const char *name, kc_error *err)
{
    char now_s[21], ops[128];
    json_t *rec, *ver;
    kc_key *k = NULL;
    size_t i, seq;
    time_t now;
    kc_rc r;

    r = load(v, name, &k, err);
    if (r == KC_OK)
        r = kc_clock_now(&now, err);
    if (r != KC_OK)
        goto done;
    kc_time_format_rfc3339(now, now_s);
    rec = kc_keystate_key(v, name, 1);
    for (i = 0; i < k->nversions; i++) {
        if (k->versions[i].recorded)
            continue;
        seq = json_object_size(json_object_get(rec, "versions")) + 1;
        ver = kc_keystate_version(rec, k->versions[i].version, 1);
        kc_key_ops_format(k->versions[i].token_ops, ops, sizeof(ops));
        json_object_set_new(ver, "seq", json_integer((json_int_t)seq));
        json_object_set_new(ver, "created", json_string(now_s));
        json_object_set_new(ver, "enabled", json_true());
        json_object_set_new(ver, "ops", json_string(ops));
        json_object_set_new(ver, "origin", json_string("found"));
    }
    if (json_object_get(rec, "current") == NULL)
        json_object_set_new(rec, "current", json_string(k->versions[k->current].version));
    r = kc_keystate_save(v, err);
done:
    kc_key_free(k);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot record key '%s' in vault '%s'", name, v->meta.name);
    return KC_OK;
}

kc_rc kc_key_delete(kc_vault *v, const char *name, kc_key **out, kc_error *err)
{
    char at[21], purge[21];
    kc_key *k = NULL;
    time_t now;
    kc_rc r;

    *out = NULL;
    r = load(v, name, &k, err);
    if (r == KC_OK && k->deleted) {
        r = kc_error_set(err, KC_CONFLICT, "it was deleted on %s already", k->deleted_at);
        kc_error_hint(err, "recover it with 'keycustody key recover %s/%s'", v->meta.name, name);
    }
    if (r == KC_OK)
        r = kc_clock_now(&now, err);
    if (r != KC_OK)
        goto done;
    kc_time_format_rfc3339(now, at);
    kc_time_format_rfc3339(now + (time_t)v->meta.retention_days * 86400, purge);
    json_object_set_new(kc_keystate_key(v, name, 1), "deleted",
                        json_pack("{s:s, s:s}", "at", at, "purge_after", purge));
    r = commit(v, &k, err);
done:
    if (r != KC_OK) {
        kc_key_free(k);
        return kc_error_prefix(err, "cannot delete key '%s' in vault '%s'", name, v->meta.name);
    }
    *out = k;
    return KC_OK;
}

kc_rc kc_key_recover(kc_vault *v, const char *name, kc_key **out, kc_error *err)
{
    kc_key *k = NULL;
    kc_rc r;

    *out = NULL;
    r = load(v, name, &k, err);
    if (r == KC_OK && !k->deleted)
        r = kc_error_set(err, KC_CONFLICT, "it is not deleted");
    if (r != KC_OK)
        goto done;
    json_object_del(kc_keystate_key(v, name, 1), "deleted");
    r = commit(v, &k, err);
done:
    if (r != KC_OK) {
        kc_key_free(k);
        return kc_error_prefix(err, "cannot recover key '%s' in vault '%s'", name, v->meta.name);
    }
    *out = k;
    return KC_OK;
}

/* Crypto-shred: every public and private key object with the key's label
 * (its versions' pairs; never a data object or secret key that shares the
 * label), then the record. A crash in between leaves a record with no
 * objects; doing it again finishes. */
static kc_rc shred(kc_vault *v, const char *name, kc_error *err)
{
    kc_key_obj *objs = NULL;
    size_t n = 0, i;
    kc_rc r;

    r = kc_tok_find_keys(v->tok, name, NULL, 0, &objs, &n, err);
    for (i = 0; r == KC_OK && i < n; i++)
        r = kc_tok_destroy(v->tok, objs[i].handle, err);
    free(objs);
    if (r == KC_OK) {
        kc_keystate_drop(v, name);
        r = kc_keystate_save(v, err);
    }
    return r;
}

kc_rc kc_key_purge(kc_vault *v, const char *name, kc_error *err)
{
    json_t *del = NULL;
    time_t now, after;
    kc_rc r;

    r = kc_keystate_load(v, err);
    if (r == KC_OK)
        del = json_object_get(kc_keystate_key(v, name, 0), "deleted");
    if (r == KC_OK && !json_is_object(del)) {
        r = kc_error_set(err, KC_CONFLICT, "only a deleted key can be purged");
        kc_error_hint(err, "delete it first with 'keycustody key delete %s/%s'", v->meta.name,
                      name);
    }
    if (r == KC_OK)
        r = kc_clock_now(&now, err);
    if (r != KC_OK)
        goto done;
    if (kc_time_parse_rfc3339(kc_keystate_str(del, "purge_after", ""), &after) != 0)
        after = 0;
    if (v->meta.purge_protection && now < after) {
        r = kc_error_set(err, KC_DENIED,
                         "vault '%s' has purge protection; the key can be purged "
                         "from %s",
                         v->meta.name, kc_keystate_str(del, "purge_after", "?"));
        kc_error_hint(err, "until then it can be recovered with 'keycustody key recover %s/%s'",
                      v->meta.name, name);
        goto done;
    }
    r = shred(v, name, err);
done:
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot purge key '%s' in vault '%s'", name, v->meta.name);
    return KC_OK;
}

kc_rc kc_key_destroy_now(kc_vault *v, const char *name, kc_error *err)
{
    kc_key_obj *objs = NULL;
    size_t n = 0;
    kc_rc r = kc_vault_login(v, err);

    if (r == KC_OK)
        r = kc_keystate_load(v, err);
    /* logged in: private halves are found too */
    if (r == KC_OK)
        r = kc_tok_find_keys(v->tok, name, NULL, 0, &objs, &n, err);
    free(objs);
    if (r == KC_OK && n == 0 && kc_keystate_key(v, name, 0) == NULL)
        return kc_error_set(err, KC_NOT_FOUND, "vault '%s' has no key '%s'", v->meta.name, name);
    if (r == KC_OK)
        r = shred(v, name, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot destroy key '%s' in vault '%s'", name, v->meta.name);
    return KC_OK;
}
