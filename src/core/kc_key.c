#include "kc_key.h"
#include "kc_manifest.h"
#include "kc_keystate.h"
#include "kc_util.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const struct {
    const char *name;
    unsigned op;
} op_names[] = {
    {"encrypt", KC_OP_ENCRYPT}, {"decrypt", KC_OP_DECRYPT}, {"sign", KC_OP_SIGN},
    {"verify", KC_OP_VERIFY},   {"wrapKey", KC_OP_WRAP},    {"unwrapKey", KC_OP_UNWRAP},
    {"import", KC_OP_IMPORT},
};
#define N_OPS (sizeof(op_names) / sizeof(op_names[0]))

kc_rc kc_key_ops_parse(const char *csv, unsigned *ops, kc_error *err)
{
    char word[32];
    const char *p = csv, *end;
    size_t n, i;

    *ops = 0;
    while (*p != '\0') {
        end = strchr(p, ',');
        n = end != NULL ? (size_t)(end - p) : strlen(p);
        if (n == 0 || n >= sizeof(word))
            return kc_error_set(err, KC_USAGE, "ops '%s': empty or overlong entry", csv);
        memcpy(word, p, n);
        word[n] = '\0';
        for (i = 0; i < N_OPS && strcmp(op_names[i].name, word) != 0; i++)
            ;
        if (i == N_OPS) {
            kc_error_set(err, KC_USAGE, "unknown key operation '%s'", word);
            kc_error_hint(err, "key operations are encrypt, decrypt, sign, verify, wrapKey, "
                               "unwrapKey and import (case matters, as in Key Vault)");
            return KC_USAGE;
        }
        *ops |= op_names[i].op;
        p += n;
        if (*p == ',')
            p++;
    }
    if (*ops == 0)
        return kc_error_set(err, KC_USAGE, "no key operations given");
    return KC_OK;
}

void kc_key_ops_format(unsigned ops, char *buf, size_t len)
{
    size_t off = 0, i;

    buf[0] = '\0';
    for (i = 0; i < N_OPS; i++)
        if (ops & op_names[i].op && off < len)
            off += (size_t)snprintf(buf + off, len - off, "%s%s", off ? "," : "", op_names[i].name);
}

const char *kc_oaep_name(kc_oaep alg)
{
    return alg == KC_OAEP_SHA256 ? "RSA-OAEP-256" : "RSA-OAEP";
}

int kc_oaep_parse(const char *s, kc_oaep *out)
{
    if (strcmp(s, "RSA-OAEP") == 0)
        *out = KC_OAEP_SHA1;
    else if (strcmp(s, "RSA-OAEP-256") == 0)
        *out = KC_OAEP_SHA256;
    else
        return -1;
    return 0;
}

kc_rc kc_key_check_name(const char *name, kc_error *err)
{
    size_t n = strlen(name), i;

    if (n == 0 || n > KC_KEY_NAME_MAX)
        return kc_error_set(err, KC_USAGE, "key name must have 1 to %d characters",
                            KC_KEY_NAME_MAX);
    /* keycustody's own objects (vault key, manifest, key state, audit and
     * domain keys, store key) carry labels with this prefix */
    if (strncasecmp(name, "keycustody-", 11) == 0) {
        kc_error_set(err, KC_USAGE, "key name '%s' starts with 'keycustody-', which is reserved",
                     name);
        kc_error_hint(err, "keycustody names its own objects so; choose another name");
        return KC_USAGE;
    }
    for (i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && name[i] != '-')
            return kc_error_set(err, KC_USAGE,
                                "key name '%s' has '%c'; only letters, digits and '-' are allowed",
                                name, name[i]);
    return KC_OK;
}

kc_rc kc_key_check_size(const char *size, unsigned *bits, kc_error *err)
{
    if (strcmp(size, "2048") == 0 || strcmp(size, "3072") == 0 || strcmp(size, "4096") == 0) {
        *bits = (unsigned)atoi(size);
        return KC_OK;
    }
    if (strncmp(size, "P-", 2) == 0 || strncmp(size, "EC", 2) == 0 ||
        strncmp(size, "secp", 4) == 0) {
        kc_error_set(err, KC_USAGE, "'%s' is an elliptic-curve key; root keys must be RSA", size);
        kc_error_hint(err, "Customer Key wraps and unwraps data keys with RSA-OAEP, which EC keys "
                           "cannot do; use --size 2048, 3072 or 4096");
        return KC_USAGE;
    }
    kc_error_set(err, KC_USAGE, "RSA key size '%s' is not allowed", size);
    kc_error_hint(err, "Key Vault RSA keys are 2048, 3072 or 4096 bits");
    return KC_USAGE;
}

kc_rc kc_key_ref_parse(const char *s, kc_key_ref *ref, kc_error *err)
{
    const char *slash, *slash2;
    char version[160];
    size_t n;
    kc_rc r;

    memset(ref, 0, sizeof(*ref));
    if (kc_p11_is_uri(s)) {
        if (strlen(s) >= sizeof(ref->vault))
            return kc_error_set(err, KC_USAGE, "the key URI is too long");
        r = kc_p11_uri_object(s, ref->name, sizeof(ref->name), ref->id, sizeof(ref->id),
                              &ref->id_len, err);
        if (r != KC_OK)
            return r;
        if (ref->name[0] == '\0')
            return kc_error_set(err, KC_USAGE, "the key URI names no object (object=KEY)");
        memcpy(ref->vault, s, strlen(s) + 1);
        return kc_key_check_name(ref->name, err);
    }
    slash = strchr(s, '/');
    if (slash == NULL || slash == s) {
        kc_error_set(err, KC_USAGE, "'%s' does not name a key", s);
        kc_error_hint(err, "name a key as VAULT/KEY, VAULT/KEY/VERSION or by pkcs11: URI");
        return KC_USAGE;
    }
    n = (size_t)(slash - s);
    if (n >= sizeof(ref->vault))
        return kc_error_set(err, KC_USAGE, "vault name too long");
    memcpy(ref->vault, s, n);
    slash2 = strchr(slash + 1, '/');
    n = slash2 != NULL ? (size_t)(slash2 - slash - 1) : strlen(slash + 1);
    if (n > KC_KEY_NAME_MAX)
        return kc_error_set(err, KC_USAGE, "key name too long");
    memcpy(ref->name, slash + 1, n);
    r = kc_key_check_name(ref->name, err);
    if (r != KC_OK)
        return r;
    if (slash2 != NULL) {
        if (strlen(slash2 + 1) >= sizeof(version) ||
            kc_hex_decode(slash2 + 1, ref->id, sizeof(ref->id), &ref->id_len) != 0 ||
            ref->id_len == 0)
            return kc_error_set(err, KC_USAGE, "version '%.40s' is not a hex version id",
                                slash2 + 1);
        memcpy(version, slash2 + 1, strlen(slash2 + 1) + 1);
    }
    return KC_OK;
}

/* --- reading keys back --- */

static kc_key_version *version_for(kc_key *k, const kc_key_obj *o)
{
    kc_key_version *nv;
    size_t i;

    for (i = 0; i < k->nversions; i++)
        if (k->versions[i].id_len == o->id_len && memcmp(k->versions[i].id, o->id, o->id_len) == 0)
            return &k->versions[i];
    nv = realloc(k->versions, (k->nversions + 1) * sizeof(*nv));
    if (nv == NULL)
        return NULL;
    k->versions = nv;
    nv = &k->versions[k->nversions++];
    memset(nv, 0, sizeof(*nv));
    memcpy(nv->id, o->id, o->id_len);
    nv->id_len = o->id_len;
    kc_hex_encode(o->id, o->id_len, nv->version);
    return nv;
}

/* Derives the Key Vault view of a version from its two objects. */
static kc_rc finish_version(kc_vault *v, kc_key *k, kc_key_version *ver, kc_error *err)
{
    const kc_key_obj *any = ver->has_priv ? &ver->priv : &ver->pub;

    ver->type = any->type;
    ver->bits = ver->has_pub && ver->pub.bits ? ver->pub.bits : any->bits;
    ver->token_ops = (ver->has_pub ? ver->pub.ops : 0) | (ver->has_priv ? ver->priv.ops : 0);
    ver->ops = ver->token_ops; /* until the key state says otherwise */
    ver->enabled = 1;
    ver->protection = ver->has_priv && !ver->priv.sensitive ? KC_PROT_SOFTWARE : KC_PROT_HSM;
    if (ver->has_pub) {
        kc_date_format(ver->pub.start_date, ver->created);
        kc_date_format(ver->pub.end_date, ver->expires);
    }
    return kc_p11_object_uri(kc_tok_info_get(v->tok), k->name, ver->id, ver->id_len, ver->uri,
                             sizeof(ver->uri), err);
}

kc_rc kc_key_version_id(kc_vault *v, unsigned char id[KC_VERSION_BYTES], kc_error *err)
{
    struct timespec ts;
    uint64_t ms;
    time_t now;
    int i;
    kc_rc r = kc_clock_now(&now, err);

    if (r == KC_OK)
        r = kc_tok_random(v->tok, id + 6, KC_VERSION_BYTES - 6, err);
    if (r != KC_OK)
        return r;
    clock_gettime(CLOCK_REALTIME, &ts);
    /* The real clock, unless a test set KEYCUSTODY_NOW (then its seconds):
     * reading time() and the clock separately could straddle a second. */
    if (now - ts.tv_sec <= 1 && ts.tv_sec - now <= 1)
        now = ts.tv_sec;
    ms = (uint64_t)now * 1000 + (uint64_t)(ts.tv_nsec / 1000000);
    for (i = 5; i >= 0; i--, ms >>= 8)
        id[i] = (unsigned char)(ms & 0xff);
    return KC_OK;
}

/* Without the key state (no PIN), the current version is the newest by
 * creation date (CKA_START_DATE, a day); among versions made the same day,
 * the one whose id is greatest: version ids begin with the time they were
 * made (kc_key_version_id). */
static void pick_current(kc_key *k)
{
    const kc_key_version *a, *b;
    size_t i;
    int c;

    k->current = 0;
    for (i = 1; i < k->nversions; i++) {
        a = &k->versions[i];
        b = &k->versions[k->current];
        c = strcmp(a->created, b->created);
        if (c == 0 && a->id_len == b->id_len)
            c = memcmp(a->id, b->id, a->id_len);
        if (c >= 0)
            k->current = i;
    }
}

void kc_key_protect(const kc_vault *v, kc_protection prot, kc_rsa_spec *spec)
{
    spec->sensitive = prot == KC_PROT_HSM;
    spec->wrap_with_trusted = prot == KC_PROT_HSM && !v->meta.arr.hsm_non_extractable;
    spec->non_extractable = prot == KC_PROT_HSM && v->meta.arr.hsm_non_extractable;
}

unsigned kc_key_ops_on_token(unsigned ops)
{
    return (ops & ~(unsigned)KC_OP_IMPORT) | (ops & KC_OP_IMPORT ? KC_OP_UNWRAP : 0);
}

unsigned kc_key_token_ops(const kc_key *k, const kc_key_version *ver)
{
    if (!ver->enabled || k->deleted)
        return 0;
    return kc_key_ops_on_token(ver->ops);
}

/* Oldest first: by the order recorded in the key state, then by date. */
static int version_order(const void *a, const void *b)
{
    const kc_key_version *x = a, *y = b;
    int c;

    if (x->seq != y->seq && x->seq != 0 && y->seq != 0)
        return x->seq < y->seq ? -1 : 1;
    c = strcmp(x->created_at[0] ? x->created_at : x->created,
               y->created_at[0] ? y->created_at : y->created);
    return c != 0 ? c : strcmp(x->version, y->version);
}

static void sort_versions(kc_key *k)
{
    char current[129];
    size_t i;

    snprintf(current, sizeof(current), "%s", k->versions[k->current].version);
    qsort(k->versions, k->nversions, sizeof(k->versions[0]), version_order);
    for (i = 0; i < k->nversions; i++)
        if (strcmp(k->versions[i].version, current) == 0)
            k->current = i;
}

static void copy_field(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src != NULL ? src : "");
}

/* Decorates a key read from the token with what the key state records. */
static void apply_state(kc_vault *v, kc_key *k)
{
    json_t *ks = kc_keystate_key(v, k->name, 0), *vs, *tags, *del, *val;
    const char *current, *tag, *ops;
    kc_error ignored;
    size_t i;

    k->has_state = 1;
    if (ks == NULL)
        return;
    tags = json_object_get(ks, "tags");
    json_object_foreach(tags, tag, val)
    {
        if (k->ntags == KC_KEY_TAGS_MAX)
            break;
        copy_field(k->tags[k->ntags].name, sizeof(k->tags[0].name), tag);
        copy_field(k->tags[k->ntags].value, sizeof(k->tags[0].value), json_string_value(val));
        k->ntags++;
    }
    del = json_object_get(ks, "deleted");
    if (json_is_object(del)) {
        k->deleted = 1;
        copy_field(k->deleted_at, sizeof(k->deleted_at), kc_keystate_str(del, "at", ""));
        copy_field(k->purge_after, sizeof(k->purge_after), kc_keystate_str(del, "purge_after", ""));
    }
    for (i = 0; i < k->nversions; i++) {
        kc_key_version *ver = &k->versions[i];
        vs = kc_keystate_version(ks, ver->version, 0);
        if (vs == NULL)
            continue;
        ver->recorded = 1;
        copy_field(ver->created_at, sizeof(ver->created_at), kc_keystate_str(vs, "created", ""));
        ver->enabled = kc_keystate_bool(vs, "enabled", 1);
        ver->seq = (unsigned long)json_integer_value(json_object_get(vs, "seq"));
        copy_field(ver->origin, sizeof(ver->origin), kc_keystate_str(vs, "origin", ""));
        ops = kc_keystate_str(vs, "ops", NULL);
        if (ops != NULL && kc_key_ops_parse(ops, &ver->ops, &ignored) != KC_OK)
            ver->ops = ver->token_ops;
    }
    current = kc_keystate_str(ks, "current", "");
    sort_versions(k);
    for (i = 0; i < k->nversions; i++)
        if (strcmp(k->versions[i].version, current) == 0)
            k->current = i;
}

void kc_key_free(kc_key *k)
{
    if (k == NULL)
        return;
    free(k->versions);
    free(k);
}

void kc_key_list_free(kc_key *keys, size_t n)
{
    size_t i;

    if (keys == NULL)
        return;
    for (i = 0; i < n; i++)
        free(keys[i].versions);
    free(keys);
}

/* Groups key objects into keys (by label) and versions (by id). */
static kc_rc group_keys(kc_vault *v, const kc_key_obj *objs, size_t nobjs, kc_key **out,
                        size_t *nkeys, kc_error *err)
{
    kc_key *keys = NULL, *nk;
    kc_key_version *ver;
    size_t n = 0, i, j;
    kc_rc r = KC_OK;

    for (i = 0; i < nobjs; i++) {
        /* Unnamed objects, and labels no key name can have, are not keys of
         * ours; truncating a label would merge it with another key. The
         * vault's own objects ("keycustody-...") are not keys either. */
        if (objs[i].label[0] == '\0' || strlen(objs[i].label) > KC_KEY_NAME_MAX ||
            strncmp(objs[i].label, "keycustody-", 11) == 0)
            continue;
        if (objs[i].unreadable) {
            r = kc_error_set(err, KC_TOKEN,
                             "vault '%s' did not give the attributes of key '%s' (the token "
                             "failed, perhaps while another process wrote it); run the command "
                             "again",
                             v->meta.name, objs[i].label);
            goto fail;
        }
        /* a private key anyone could have made (CKA_PRIVATE=FALSE) */
        if (objs[i].is_private && !objs[i].token_private) {
            r = kc_error_set(err, KC_INTEGRITY,
                             "vault '%s' holds a private key labelled '%s' that is not a private "
                             "object: someone without the PIN planted it; it is not used",
                             v->meta.name, objs[i].label);
            goto fail;
        }
        for (j = 0; j < n && strcmp(keys[j].name, objs[i].label) != 0; j++)
            ;
        if (j == n) {
            nk = realloc(keys, (n + 1) * sizeof(*nk));
            if (nk == NULL) {
                r = kc_error_set(err, KC_ERR, "out of memory");
                goto fail;
            }
            keys = nk;
            memset(&keys[n], 0, sizeof(keys[n]));
            snprintf(keys[n].vault, sizeof(keys[n].vault), "%s", v->meta.name);
            memcpy(keys[n].name, objs[i].label, strlen(objs[i].label) + 1);
            n++;
        }
        ver = version_for(&keys[j], &objs[i]);
        if (ver == NULL) {
            r = kc_error_set(err, KC_ERR, "out of memory");
            goto fail;
        }
        /* one version, one pair: a second half of one kind was planted (a
         * public key with a version's label and id would otherwise be the
         * one found last) */
        if ((objs[i].is_private && ver->has_priv) || (!objs[i].is_private && ver->has_pub)) {
            r = kc_error_set(err, KC_INTEGRITY,
                             "version %s of key '%s' in vault '%s' has two %s halves: one was "
                             "planted; neither is used",
                             ver->version, objs[i].label, v->meta.name,
                             objs[i].is_private ? "private" : "public");
            kc_error_hint(err, "keep a copy of the token for investigation; 'pkcs11-tool "
                               "--list-objects --type pubkey' shows them");
            goto fail;
        }
        if (objs[i].is_private) {
            ver->priv = objs[i];
            ver->has_priv = 1;
        } else {
            ver->pub = objs[i];
            ver->has_pub = 1;
        }
    }
    for (i = 0; i < n; i++) {
        for (j = 0; j < keys[i].nversions; j++) {
            r = finish_version(v, &keys[i], &keys[i].versions[j], err);
            if (r != KC_OK)
                goto fail;
        }
        pick_current(&keys[i]);
        sort_versions(&keys[i]);
    }
    *out = keys;
    *nkeys = n;
    return KC_OK;
fail:
    kc_key_list_free(keys, n);
    return r;
}

/* What a reader without the PIN may believe of k: the vault's signed
 * manifest says which versions it has (each bound to the hash of its public
 * key), which is current, whether it is deleted, and what each version may
 * do. A public key the manifest does not name, or whose key is not the one
 * it names, was planted or replaced; a public key allowing more than its
 * version may was changed. */
static void half_made_hint(const kc_vault *v, const kc_key *k, kc_error *err)
{
    kc_error_hint(err,
                  "or a create killed on another host left it: a PIN holder sees which with "
                  "'keycustody key show %s/%s', and 'keycustody vault validate %s --repair' "
                  "removes a half-made one; otherwise keep a copy of the token for "
                  "investigation",
                  v->meta.name, k->name, v->meta.name);
}

static kc_rc apply_manifest(kc_vault *v, kc_key *k, kc_error *err)
{
    json_t *mk = json_object_get(json_object_get(v->manifest, "keys"), k->name), *mv;
    unsigned char *n = NULL, *e = NULL;
    size_t n_len = 0, e_len = 0, i;
    char spki[KC_FINGERPRINT_HEX + 1];
    const char *current, *ops;
    unsigned want;
    kc_error ignored;
    kc_rc r = KC_OK;

    if (mk == NULL) {
        kc_error_set(err, KC_INTEGRITY,
                     "vault '%s' holds key objects labelled '%s' that its signed manifest does "
                     "not name: they were planted (or made outside keycustody)",
                     v->meta.name, k->name);
        half_made_hint(v, k, err);
        return KC_INTEGRITY;
    }
    for (i = 0; r == KC_OK && i < k->nversions; i++) {
        kc_key_version *ver = &k->versions[i];
        mv = json_object_get(json_object_get(mk, "versions"), ver->version);
        if (mv == NULL) {
            r = kc_error_set(err, KC_INTEGRITY,
                             "version %s of key '%s' in vault '%s' is not in the vault's signed "
                             "manifest: it was planted",
                             ver->version, k->name, v->meta.name);
            half_made_hint(v, k, err);
            break;
        }
        if (ver->has_pub) {
            r = kc_tok_rsa_public(v->tok, ver->pub.handle, &n, &n_len, &e, &e_len, err);
            if (r == KC_OK)
                r = kc_manifest_rsa_spki_hash(n, n_len, e, e_len, spki, err);
            free(n);
            free(e);
            n = e = NULL;
            if (r == KC_OK && strcmp(spki, json_string_value(json_object_get(mv, "spki"))) != 0)
                r = kc_error_set(err, KC_INTEGRITY,
                                 "the public key of version %s of key '%s' in vault '%s' is not "
                                 "the one the vault's signed manifest names: it was replaced",
                                 ver->version, k->name, v->meta.name);
        }
        if (r != KC_OK)
            break;
        ver->recorded = 1;
        ver->enabled = json_is_true(json_object_get(mv, "enabled"));
        ops = json_string_value(json_object_get(mv, "ops"));
        if (ops != NULL && ops[0] != '\0' && kc_key_ops_parse(ops, &ver->ops, &ignored) != KC_OK)
            ver->ops = 0;
        /* the public half allows no more than its version may do */
        want = ver->enabled && !json_is_true(json_object_get(mk, "deleted"))
                   ? kc_key_ops_on_token(ver->ops)
                   : 0;
        if (ver->has_pub && (ver->pub.ops & ~want) != 0)
            r = kc_error_set(err, KC_INTEGRITY,
                             "the public key of version %s of key '%s' in vault '%s' allows "
                             "more than the vault's signed manifest says: its attributes were "
                             "changed without the PIN",
                             ver->version, k->name, v->meta.name);
    }
    if (r != KC_OK)
        return r;
    k->deleted = json_is_true(json_object_get(mk, "deleted"));
    current = json_string_value(json_object_get(mk, "current"));
    for (i = 0; current != NULL && i < k->nversions; i++)
        if (strcmp(k->versions[i].version, current) == 0)
            k->current = i;
    return KC_OK;
}

/* Moves the half-made versions of k behind the others (kc_key.nhalf): with
 * the PIN, a version neither recorded nor whole (both halves, each with its
 * key material) is what a create killed in C_GenerateKeyPair left, never a
 * version of the key. */
static void set_half_made_aside(kc_key *k)
{
    kc_key_version tmp;
    char current[129] = "";
    size_t i, kept = 0;

    if (k->nversions > 0)
        snprintf(current, sizeof(current), "%s", k->versions[k->current].version);
    for (i = 0; i < k->nversions; i++) {
        const kc_key_version *ver = &k->versions[i];
        if (!ver->recorded && (!(ver->has_pub && ver->has_priv) || ver->pub.no_key ||
                               ver->priv.no_key))
            continue;
        if (i != kept) {
            tmp = k->versions[kept];
            k->versions[kept] = k->versions[i];
            k->versions[i] = tmp;
        }
        kept++;
    }
    k->nhalf = k->nversions - kept;
    k->nversions = kept;
    k->current = 0;
    for (i = 0; i < kept; i++)
        if (strcmp(k->versions[i].version, current) == 0)
            k->current = i;
}

/* With the PIN: each version's public half carries its private half's
 * public key. The private half only a PIN holder can have made; a public
 * half anyone can replace or change. */
static kc_rc halves_match(kc_vault *v, const kc_key *k, kc_error *err)
{
    size_t i;
    int same = 0;
    kc_rc r = KC_OK;

    for (i = 0; r == KC_OK && i < k->nversions; i++) {
        const kc_key_version *ver = &k->versions[i];
        /* a half without key material is a generation killed half-way
         * (kc_key_obj.no_key), set aside with the state; not a replacement */
        if (!ver->has_pub || !ver->has_priv || ver->type != KC_KT_RSA || ver->pub.no_key ||
            ver->priv.no_key)
            continue;
        r = kc_tok_same_rsa_key(v->tok, ver->pub.handle, ver->priv.handle, &same, err);
        if (r == KC_OK && !same)
            r = kc_error_set(err, KC_INTEGRITY,
                             "the public half of version %s of key '%s' in vault '%s' is not "
                             "its private half's public key: it was replaced",
                             ver->version, k->name, v->meta.name);
    }
    return r;
}

/* A recorded version is whole: one of its halves without key material was
 * replaced (a public one needs no PIN), never a generation killed half-way,
 * which is recorded only after it ends. */
static kc_rc recorded_whole(kc_vault *v, const kc_key *k, kc_error *err)
{
    size_t i;

    for (i = 0; i < k->nversions; i++) {
        const kc_key_version *ver = &k->versions[i];
        if (ver->recorded && (ver->pub.no_key || ver->priv.no_key))
            return kc_error_set(err, KC_INTEGRITY,
                                "the %s half of version %s of key '%s' in vault '%s' holds no "
                                "key material: it was replaced",
                                ver->pub.no_key ? "public" : "private", ver->version, k->name,
                                v->meta.name);
    }
    return KC_OK;
}

/* A half-made public half that is a version's own, under another id: its
 * CKA_ID was changed (anyone can, on a public object), and removing it as
 * half-made would take the version's public half away. */
static kc_rc moved_half(kc_vault *v, const kc_key *k, kc_error *err)
{
    size_t i, j;
    int same = 0;
    kc_rc r = KC_OK;

    for (i = k->nversions; r == KC_OK && i < k->nversions + k->nhalf; i++) {
        const kc_key_version *half = &k->versions[i];
        for (j = 0; r == KC_OK && half->has_pub && half->type == KC_KT_RSA && j < k->nversions;
             j++) {
            if (!k->versions[j].has_priv)
                continue;
            r = kc_tok_same_rsa_key(v->tok, half->pub.handle, k->versions[j].priv.handle, &same,
                                    err);
            if (r == KC_OK && same)
                r = kc_error_set(err, KC_INTEGRITY,
                                 "the public half of version %s of key '%s' in vault '%s' "
                                 "carries the id %s: its CKA_ID was changed without the PIN",
                                 k->versions[j].version, k->name, v->meta.name, half->version);
        }
    }
    return r;
}

/* The keys objs make, checked as a reader must: against what the vault
 * signed (login 0) or its private record (login 1). */
static kc_rc keys_of_objs(kc_vault *v, const kc_key_obj *objs, size_t nobjs, int login,
                          kc_key **out, size_t *n, kc_error *err)
{
    size_t i;
    kc_rc r = group_keys(v, objs, nobjs, out, n, err);

    /* without the PIN, what the vault signed; with it, its private record */
    for (i = 0; r == KC_OK && !login && i < *n; i++)
        r = apply_manifest(v, &(*out)[i], err);
    /* the pairs first, while the handles are fresh from the search */
    for (i = 0; r == KC_OK && login && i < *n; i++)
        r = halves_match(v, &(*out)[i], err);
    if (r == KC_OK && login) {
        r = kc_keystate_load(v, err);
        for (i = 0; r == KC_OK && i < *n; i++) {
            apply_state(v, &(*out)[i]);
            set_half_made_aside(&(*out)[i]);
            r = recorded_whole(v, &(*out)[i], err);
            if (r == KC_OK)
                r = moved_half(v, &(*out)[i], err);
        }
    }
    if (r != KC_OK) {
        kc_key_list_free(*out, *n);
        *out = NULL;
        *n = 0;
    }
    return r;
}

static kc_rc load_keys_once(kc_vault *v, const char *name, int login, kc_key **out, size_t *n,
                            kc_error *err)
{
    kc_key_obj *objs = NULL;
    size_t nobjs = 0;
    kc_rc r;

    *out = NULL;
    *n = 0;
    if (login) {
        r = kc_vault_login(v, err);
        if (r != KC_OK)
            return r;
    }
    r = kc_tok_find_keys(v->tok, name, NULL, 0, &objs, &nobjs, err);
    if (r == KC_OK)
        r = keys_of_objs(v, objs, nobjs, login, out, n, err);
    free(objs);
    return r;
}

/* Without the PIN, a key the manifest does not name may be a create or a
 * rotate on this host half done: after it ends, with its manifest, once
 * more. A planted object fails the second time too. */
static kc_rc load_keys(kc_vault *v, const char *name, int login, kc_key **out, size_t *n,
                       kc_error *err)
{
    kc_error first;
    kc_rc r = load_keys_once(v, name, login, out, n, err);

    if (r != KC_INTEGRITY || login)
        return r;
    first = *err;
    if (kc_vault_reread(v, err) != KC_OK) {
        *err = first;
        return r;
    }
    return load_keys_once(v, name, login, out, n, err);
}

/* Moves the keys whose deleted flag is set from keys (kept in order) to a
 * new array *deleted; on KC_ERR (out of memory) nothing is moved. */
static kc_rc split_deleted(kc_key *keys, size_t *n, kc_key **deleted, size_t *ndeleted,
                           kc_error *err)
{
    kc_key *del = NULL;
    size_t i, j = 0, k = 0;

    *deleted = NULL;
    *ndeleted = 0;
    if ((del = calloc(*n + 1, sizeof(*del))) == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    for (i = 0; i < *n; i++) {
        if (keys[i].deleted)
            del[k++] = keys[i];
        else
            keys[j++] = keys[i];
    }
    *n = j;
    *deleted = del;
    *ndeleted = k;
    return KC_OK;
}

/* All the vault's keys from one search, split by their deleted flag. */
static kc_rc load_split(kc_vault *v, kc_key **active, size_t *nactive, kc_key **deleted,
                        size_t *ndeleted, kc_error *err)
{
    kc_rc r;

    *deleted = NULL;
    *ndeleted = 0;
    r = load_keys(v, NULL, 1, active, nactive, err);
    if (r == KC_OK)
        r = split_deleted(*active, nactive, deleted, ndeleted, err);
    if (r != KC_OK) {
        kc_key_list_free(*active, *nactive);
        *active = NULL;
        *nactive = 0;
    }
    return r;
}

kc_rc kc_key_list_all(kc_vault *v, kc_key **active, size_t *nactive, kc_key **deleted,
                      size_t *ndeleted, kc_error *err)
{
    kc_rc r = load_split(v, active, nactive, deleted, ndeleted, err);

    if (r != KC_OK)
        return kc_error_prefix(err, "cannot list the keys of vault '%s'", v->meta.name);
    return KC_OK;
}

kc_rc kc_key_list(kc_vault *v, kc_key **out, size_t *n, kc_error *err)
{
    kc_key *del = NULL;
    size_t ndel = 0;
    kc_rc r = kc_key_list_all(v, out, n, &del, &ndel, err);

    kc_key_list_free(del, ndel);
    return r;
}

kc_rc kc_key_list_deleted(kc_vault *v, kc_key **out, size_t *n, kc_error *err)
{
    kc_key *active = NULL;
    size_t nactive = 0;
    kc_rc r = load_split(v, &active, &nactive, out, n, err);

    if (r != KC_OK)
        return kc_error_prefix(err, "cannot list the deleted keys of vault '%s'", v->meta.name);
    kc_key_list_free(active, nactive);
    return KC_OK;
}

kc_rc kc_key_check_active(const kc_key *k, kc_error *err)
{
    if (!k->deleted)
        return KC_OK;
    /* the dates are in the key state, which only a login reads */
    if (k->deleted_at[0] != '\0')
        kc_error_set(err, KC_NOT_FOUND,
                     "key '%s/%s' is deleted (since %s; it can be purged from %s)", k->vault,
                     k->name, k->deleted_at, k->purge_after);
    else
        kc_error_set(err, KC_NOT_FOUND, "key '%s/%s' is deleted", k->vault, k->name);
    kc_error_hint(err, "bring it back with 'keycustody key recover %s/%s'", k->vault, k->name);
    return KC_NOT_FOUND;
}

kc_rc kc_key_get(kc_vault *v, const char *name, int login, kc_key **out, kc_error *err)
{
    kc_key *keys = NULL;
    size_t n = 0;
    kc_rc r;

    *out = NULL;
    r = load_keys(v, name, login, &keys, &n, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot read key '%s' in vault '%s'", name, v->meta.name);
    if (n == 0) {
        kc_key_list_free(keys, n);
        kc_error_set(err, KC_NOT_FOUND, "no key '%s' in vault '%s'", name, v->meta.name);
        kc_error_hint(err, "see the vault's keys with 'keycustody key list %s'", v->meta.name);
        return KC_NOT_FOUND;
    }
    if (keys[0].nversions == 0) {
        kc_error_set(err, KC_NOT_FOUND,
                     "key '%s' in vault '%s' has no usable version: an interrupted create left "
                     "half a key pair",
                     name, v->meta.name);
        kc_error_hint(err, "'keycustody vault validate %s --repair' removes it", v->meta.name);
        kc_key_list_free(keys, n);
        return KC_NOT_FOUND;
    }
    *out = keys; /* n == 1: one label asked for */
    return KC_OK;
}

kc_rc kc_key_select(const kc_key *k, const unsigned char *id, size_t id_len,
                    const kc_key_version **out, kc_error *err)
{
    char hex[129];
    size_t i;

    *out = NULL;
    if (id_len == 0) {
        *out = &k->versions[k->current];
        return KC_OK;
    }
    for (i = 0; i < k->nversions; i++) {
        if (k->versions[i].id_len == id_len && memcmp(k->versions[i].id, id, id_len) == 0) {
            *out = &k->versions[i];
            return KC_OK;
        }
    }
    kc_hex_encode(id, id_len > 64 ? 64 : id_len, hex);
    kc_error_set(err, KC_NOT_FOUND, "key '%s/%s' has no version %s", k->vault, k->name, hex);
    kc_error_hint(err, "see its versions with 'keycustody key show %s/%s'", k->vault, k->name);
    return KC_NOT_FOUND;
}

/* --- create --- */

kc_rc kc_key_check_free_name(kc_vault *v, const char *name, kc_error *err)
{
    kc_key_obj *objs = NULL;
    size_t nobjs = 0;
    json_t *rec;
    kc_rc r;

    r = kc_vault_login(v, err);
    if (r == KC_OK)
        r = kc_tok_find_keys(v->tok, name, NULL, 0, &objs, &nobjs, err);
    free(objs);
    if (r == KC_OK)
        r = kc_keystate_load(v, err);
    if (r != KC_OK)
        return r;
    rec = kc_keystate_key(v, name, 0);
    if (nobjs == 0 && rec == NULL)
        return KC_OK;
    if (json_is_object(json_object_get(rec, "deleted"))) {
        kc_error_set(err, KC_CONFLICT, "a deleted key keeps its name until it is purged");
        kc_error_hint(err,
                      "recover it with 'keycustody key recover %s/%s', or purge it with "
                      "'keycustody key purge %s/%s'",
                      v->meta.name, name, v->meta.name, name);
    } else {
        kc_error_set(err, KC_CONFLICT, "a key with this name already exists");
        kc_error_hint(err, "choose another name; see the key with 'keycustody key show %s/%s'",
                      v->meta.name, name);
    }
    return KC_CONFLICT;
}

void kc_key_drop_unrecorded(kc_vault *v, unsigned long saved, kc_obj pub, kc_obj priv)
{
    kc_error ignored;

    /* The record failed before the key state was committed (the vault
     * changed meanwhile, or the token failed): the pair goes too, so the
     * command leaves nothing. Once committed, the pair is the key's. */
    if (v->saved != saved)
        return;
    if (kc_tok_destroy(v->tok, priv, &ignored) != KC_OK ||
        kc_tok_destroy(v->tok, pub, &ignored) != KC_OK)
        kc_error_clear(&ignored);
}

kc_rc kc_key_record_version(kc_vault *v, const char *name, const unsigned char *id, size_t id_len,
                            unsigned ops, const char *origin, int make_current, kc_error *err)
{
    char hex[129], opstr[128], now_s[21];
    json_t *k, *ver;
    size_t seq;
    time_t now;
    kc_rc r;

    r = kc_clock_now(&now, err);
    if (r != KC_OK)
        return r;
    kc_time_format_rfc3339(now, now_s);
    kc_hex_encode(id, id_len, hex);
    kc_key_ops_format(ops, opstr, sizeof(opstr));
    k = kc_keystate_key(v, name, 1);
    seq = json_object_size(json_object_get(k, "versions")) + 1;
    ver = kc_keystate_version(k, hex, 1);
    json_object_set_new(ver, "seq", json_integer((json_int_t)seq));
    json_object_set_new(ver, "created", json_string(now_s));
    json_object_set_new(ver, "enabled", json_true());
    json_object_set_new(ver, "ops", json_string(opstr));
    json_object_set_new(ver, "origin", json_string(origin));
    if (make_current)
        json_object_set_new(k, "current", json_string(hex));
    return kc_keystate_save(v, err);
}

/* The key just made of the pair pub, priv, read as kc_key_get reads it
 * but from the pair's handles, not a search for its label (a pass over the
 * token's objects on SoftHSM). KC_NOT_FOUND when they do not read back as
 * that key alone (a session replaced meanwhile has new handles). */
static kc_rc key_of_pair(kc_vault *v, const char *name, kc_obj pub, kc_obj priv, kc_key **out,
                         kc_error *err)
{
    kc_obj pair[2] = {pub, priv};
    kc_key_obj *objs = NULL;
    kc_key *keys = NULL;
    size_t nobjs = 0, n = 0;
    kc_rc r = kc_tok_read_keys(v->tok, pair, 2, &objs, &nobjs, err);

    if (r == KC_OK && nobjs != 2)
        r = kc_error_set(err, KC_NOT_FOUND, "the new key pair does not read back");
    if (r == KC_OK)
        r = keys_of_objs(v, objs, nobjs, 1, &keys, &n, err);
    free(objs);
    if (r == KC_OK && (n != 1 || keys[0].nversions != 1 || strcmp(keys[0].name, name) != 0))
        r = kc_error_set(err, KC_NOT_FOUND, "the new key pair does not read back as one key");
    if (r != KC_OK) {
        kc_key_list_free(keys, n);
        return r;
    }
    *out = keys;
    return KC_OK;
}

kc_rc kc_key_create(kc_vault *v, const kc_key_create_opts *o, kc_key **out, kc_error *err)
{
    unsigned char id[KC_VERSION_BYTES];
    char today[9], expires[9];
    unsigned long saved;
    kc_rsa_spec spec;
    kc_obj pub, priv;
    kc_rc r;

    *out = NULL;
    r = kc_key_check_name(o->name, err);
    if (r != KC_OK)
        return r;
    if (o->bits != 2048 && o->bits != 3072 && o->bits != 4096)
        return kc_error_set(err, KC_USAGE, "RSA key size %u is not allowed", o->bits);
    if (o->ops == 0)
        return kc_error_set(err, KC_USAGE, "a key needs at least one operation");
    r = kc_date_today(today, err);
    if (r != KC_OK)
        return r;
    expires[0] = '\0';
    if (o->expires != NULL && strcmp(o->expires, "never") != 0) {
        if (kc_date_parse(o->expires, expires) != 0) {
            kc_error_set(err, KC_USAGE, "expiry '%s' is not a date", o->expires);
            kc_error_hint(err, "give --expires YYYY-MM-DD or --expires never");
            return KC_USAGE;
        }
        if (strcmp(expires, today) < 0)
            return kc_error_set(err, KC_USAGE, "expiry %s is in the past", o->expires);
    }
    r = kc_vault_login(v, err);
    if (r != KC_OK)
        goto fail;
    r = kc_key_check_free_name(v, o->name, err);
    if (r != KC_OK)
        goto fail;
    r = kc_key_version_id(v, id, err);
    if (r != KC_OK)
        goto fail;
    memset(&spec, 0, sizeof(spec));
    spec.label = o->name;
    spec.id = id;
    spec.id_len = sizeof(id);
    spec.bits = o->bits;
    spec.ops = kc_key_ops_on_token(o->ops);
    kc_key_protect(v, o->protection, &spec);
    spec.start_date = today;
    spec.end_date = expires[0] ? expires : NULL;
    r = kc_tok_generate_rsa(v->tok, &spec, &pub, &priv, err);
    if (r != KC_OK)
        goto fail;
    saved = v->saved;
    r = kc_key_record_version(v, o->name, id, sizeof(id), o->ops, "generated", 1, err);
    if (r != KC_OK)
        kc_key_drop_unrecorded(v, saved, pub, priv);
    if (r != KC_OK)
        goto fail;
    if (key_of_pair(v, o->name, pub, priv, out, err) == KC_OK)
        return KC_OK;
    kc_error_clear(err);
    r = kc_key_get(v, o->name, 1, out, err);
    if (r != KC_OK) {
        kc_error_hint(err, "the key was created and recorded; only reading it back failed: "
                           "'keycustody key show %s/%s' shows it",
                      v->meta.name, o->name);
        goto fail;
    }
    return KC_OK;
fail:
    return kc_error_prefix(err, "cannot create key '%s' in vault '%s'", o->name, v->meta.name);
}

/* --- public key, wrap, unwrap --- */

kc_rc kc_key_public_pem(kc_vault *v, const kc_key *k, const kc_key_version *ver, char **pem,
                        kc_error *err)
{
    unsigned char *n = NULL, *e = NULL;
    size_t n_len = 0, e_len = 0;
    EVP_PKEY *pkey = NULL;
    BIO *bio = NULL;
    char *data = NULL;
    long len;
    kc_rc r;

    *pem = NULL;
    if (ver->type != KC_KT_RSA)
        return kc_error_set(err, KC_ERR, "key '%s/%s' is not an RSA key", k->vault, k->name);
    r = kc_tok_rsa_public(v->tok, ver->has_pub ? ver->pub.handle : ver->priv.handle, &n, &n_len, &e,
                          &e_len, err);
    if (r != KC_OK)
        goto cleanup;
    r = kc_rsa_public_pkey(n, n_len, e, e_len, (void **)&pkey, err);
    if (r != KC_OK)
        goto cleanup;
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL || !PEM_write_bio_PUBKEY(bio, pkey)) {
        r = kc_error_set(err, KC_ERR, "OpenSSL cannot write the public key as PEM");
        goto cleanup;
    }
    len = BIO_get_mem_data(bio, &data);
    *pem = malloc((size_t)len + 1);
    if (*pem == NULL) {
        r = kc_error_set(err, KC_ERR, "out of memory");
        goto cleanup;
    }
    memcpy(*pem, data, (size_t)len);
    (*pem)[len] = '\0';
    r = KC_OK;
cleanup:
    BIO_free(bio);
    EVP_PKEY_free(pkey);
    free(n);
    free(e);
    if (r != KC_OK)
        kc_error_prefix(err, "cannot export the public key of '%s/%s'", k->vault, k->name);
    return r;
}

/* Whether the version may do op: not deleted, enabled, and op among its
 * ops. Without the key state (no PIN) only the token's attributes are
 * known, and they are off for disabled and deleted versions. */
static kc_rc check_op(const kc_key *k, const kc_key_version *ver, unsigned op, const char *name,
                      kc_error *err)
{
    kc_rc r = kc_key_check_active(k, err);

    if (r != KC_OK)
        return r;
    if (!ver->enabled) {
        kc_error_set(err, KC_DENIED, "version %s is disabled", ver->version);
        kc_error_hint(err, "enable it with 'keycustody key update %s/%s/%s --enabled true'",
                      k->vault, k->name, ver->version);
        return KC_DENIED;
    }
    if (!(ver->ops & op)) {
        if (k->has_state)
            kc_error_set(err, KC_DENIED, "the key does not allow %s", name);
        else
            kc_error_set(err, KC_DENIED,
                         "the token does not allow %s with this version (its "
                         "ops lack %s, or it is disabled or deleted)",
                         name, name);
        kc_error_hint(err, "see its operations with 'keycustody key show %s/%s'", k->vault,
                      k->name);
        return KC_DENIED;
    }
    return KC_OK;
}

/* Key Vault's rule: before its start date and after its expiry a key does
 * not encrypt or wrap; unwrap and decrypt stay possible. SoftHSM does not
 * enforce CKA_START_DATE / CKA_END_DATE, so the tool does. */
static kc_rc check_usable_for_wrap(const kc_key *k, const kc_key_version *ver, kc_error *err)
{
    char today[9], created[9], expires[9];
    kc_rc r = kc_date_today(today, err);

    if (r != KC_OK)
        return r;
    if (!ver->has_pub)
        return kc_error_set(err, KC_NOT_FOUND, "version %s has no public key on the token",
                            ver->version);
    r = check_op(k, ver, KC_OP_WRAP, "wrapKey", err);
    if (r != KC_OK)
        return r;
    if (ver->created[0] && kc_date_parse(ver->created, created) == 0 && strcmp(today, created) < 0)
        return kc_error_set(err, KC_DENIED, "the key is not valid before %s", ver->created);
    if (ver->expires[0] && kc_date_parse(ver->expires, expires) == 0 &&
        strcmp(today, expires) > 0) {
        kc_error_set(err, KC_DENIED, "the key expired on %s", ver->expires);
        kc_error_hint(err, "an expired key still unwraps, but wraps nothing new; rotate it");
        return KC_DENIED;
    }
    return KC_OK;
}

kc_rc kc_key_wrap(kc_vault *v, const kc_key *k, const kc_key_version *ver, kc_oaep alg,
                  const kc_secret *secret, unsigned char **out, size_t *out_len, kc_oaep *used,
                  kc_error *err)
{
    kc_rc r;

    *out = NULL;
    if (secret->len < KC_WRAP_SECRET_MIN || secret->len > KC_WRAP_SECRET_MAX)
        return kc_error_set(err, KC_USAGE, "the secret is %zu bytes; wrap takes %d to %d bytes",
                            secret->len, KC_WRAP_SECRET_MIN, KC_WRAP_SECRET_MAX);
    r = check_usable_for_wrap(k, ver, err);
    if (r == KC_OK)
        r = kc_tok_oaep_wrap(v->tok, ver->pub.handle, alg, secret, out, out_len, used, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot wrap with key '%s/%s/%s'", k->vault, k->name,
                               ver->version);
    return KC_OK;
}

kc_rc kc_key_unwrap(kc_vault *v, const kc_key *k, const kc_key_version *ver, kc_oaep alg,
                    const unsigned char *in, size_t in_len, kc_secret **out, kc_error *err)
{
    kc_rc r = KC_OK;

    *out = NULL;
    if (!ver->has_priv)
        r = kc_error_set(err, KC_NOT_FOUND, "version %s has no private key on the token",
                         ver->version);
    if (r == KC_OK)
        r = check_op(k, ver, KC_OP_UNWRAP, "unwrapKey", err);
    if (r == KC_OK && ver->bits != 0 && in_len != ver->bits / 8)
        r = kc_error_set(err, KC_USAGE, "the wrapped value is %zu bytes; RSA-%u gives %u", in_len,
                         ver->bits, ver->bits / 8);
    if (r == KC_OK)
        r = kc_tok_oaep_unwrap(v->tok, ver->priv.handle, alg, in, in_len, out, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "cannot unwrap with key '%s/%s/%s'", k->vault, k->name,
                               ver->version);
    return KC_OK;
}
