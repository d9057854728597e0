/* RSA root keys in a vault.
 *
 * A key is every key object with one CKA_LABEL (the key name); each version
 * is one RSA key pair with its own CKA_ID (16 random bytes from the token,
 * shown as 32 hex digits, as Key Vault shows versions). The key id is the
 * RFC 7512 URI of the version's key pair; the short form is
 * VAULT/KEY[/VERSION]. Creation date and expiry are CKA_START_DATE and
 * CKA_END_DATE of the public key, where SoftHSM can read them back. */
#ifndef KC_KEY_H
#define KC_KEY_H

#include "kc_vault.h"

#define KC_KEY_NAME_MAX 127
#define KC_VERSION_BYTES 16
#define KC_WRAP_SECRET_MIN 16
#define KC_WRAP_SECRET_MAX 64

typedef enum kc_protection { KC_PROT_HSM = 0, KC_PROT_SOFTWARE = 1 } kc_protection;

typedef struct kc_key_version {
    char version[129]; /* hex of CKA_ID */
    unsigned char id[64];
    size_t id_len;
    char uri[768]; /* key id: URI of the key pair (no type=) */
    kc_key_type type;
    unsigned bits;
    unsigned ops;       /* KC_OP_* the version is meant to allow (Key Vault's key_ops) */
    unsigned token_ops; /* KC_OP_* the token's attributes allow now */
    int enabled;
    int recorded;      /* the key state has a record of this version */
    char origin[16];   /* "generated", "byok", "pem" or "restored"; "" when unknown */
    unsigned long seq; /* order of creation within the key (key state), 0 when unknown */
    kc_protection protection;
    char created[11];    /* YYYY-MM-DD, "" when unknown */
    char created_at[21]; /* RFC 3339, from the key state; "" when unknown */
    char expires[11];    /* YYYY-MM-DD, "" for never */
    int has_pub, has_priv;
    kc_key_obj pub, priv; /* the token's own attributes */
} kc_key_version;

#define KC_KEY_TAGS_MAX 15 /* Key Vault's limit */

typedef struct kc_tag {
    char name[64];
    char value[256];
} kc_tag;

typedef struct kc_key {
    char vault[25];
    char name[KC_KEY_NAME_MAX + 1];
    kc_key_version *versions; /* oldest first */
    size_t nversions;
    /* With the PIN: after the versions, nhalf half-made ones (unrecorded,
     * one half of the pair on the token: a create killed inside
     * C_GenerateKeyPair), never usable and not counted in nversions. */
    size_t nhalf;
    size_t current; /* index of the current version */
    int has_state;  /* the key state was read (needs the PIN) */
    int deleted;
    char deleted_at[21]; /* RFC 3339 */
    char purge_after[21];
    kc_tag tags[KC_KEY_TAGS_MAX];
    size_t ntags;
} kc_key;

/* The token attributes that ops need: the same, except that a key-exchange
 * key (import) has CKA_UNWRAP for the transfer key of a BYOK import. */
KC_EXPORT unsigned kc_key_ops_on_token(unsigned ops);

/* What protection prot is made as on v's module (its arrangement): hsm is
 * sensitive and extractable only under a trusted key, or, where the module
 * has no such arrangement, not extractable at all; software is neither. */
KC_EXPORT void kc_key_protect(const kc_vault *v, kc_protection prot, kc_rsa_spec *spec);

/* The token attributes a version's ops and state call for. */
KC_EXPORT unsigned kc_key_token_ops(const kc_key *k, const kc_key_version *ver);

typedef struct kc_key_create_opts {
    const char *name;
    unsigned bits; /* 2048, 3072 or 4096 */
    kc_protection protection;
    unsigned ops;        /* KC_OP_* */
    const char *expires; /* "YYYY-MM-DD", or NULL / "never" */
} kc_key_create_opts;

/* A key named on the command line: VAULT/KEY[/VERSION] or a pkcs11: URI with
 * object= (and optionally id=). */
typedef struct kc_key_ref {
    char vault[512]; /* vault name, or the URI (its token part selects the token) */
    char name[KC_KEY_NAME_MAX + 1];
    unsigned char id[64];
    size_t id_len; /* 0: the current version */
} kc_key_ref;

KC_EXPORT kc_rc kc_key_ref_parse(const char *s, kc_key_ref *out, kc_error *err) KC_MUST_CHECK;
/* Key names: 1-127 letters, digits and '-' (Key Vault's rule). */
KC_EXPORT kc_rc kc_key_check_name(const char *name, kc_error *err) KC_MUST_CHECK;
/* Allowed RSA sizes; anything else (and EC) is refused with the reason. */
KC_EXPORT kc_rc kc_key_check_size(const char *size, unsigned *bits, kc_error *err) KC_MUST_CHECK;
/* "wrapKey,unwrapKey,..." (Key Vault's key_ops names) <-> KC_OP_* bits. */
KC_EXPORT kc_rc kc_key_ops_parse(const char *csv, unsigned *ops, kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_key_ops_format(unsigned ops, char *buf, size_t len);

KC_EXPORT const char *kc_oaep_name(kc_oaep alg); /* "RSA-OAEP" / "RSA-OAEP-256" */
KC_EXPORT int kc_oaep_parse(const char *s, kc_oaep *out);

/* Creates version one of a new key (logs in). KC_CONFLICT if the name is taken. */
KC_EXPORT kc_rc kc_key_create(kc_vault *v, const kc_key_create_opts *o, kc_key **out,
                              kc_error *err) KC_MUST_CHECK;

/* Every key of the vault (logs in). */
KC_EXPORT kc_rc kc_key_list(kc_vault *v, kc_key **out, size_t *n, kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_key_list_free(kc_key *keys, size_t n);

/* One key with all its versions. login: also see the private keys (needed
 * for protection, unwrap and the token's private-key attributes). */
KC_EXPORT kc_rc kc_key_get(kc_vault *v, const char *name, int login, kc_key **out,
                           kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_key_free(kc_key *k);

/* A new version id: 6 bytes of the time in milliseconds (big-endian, so
 * later versions sort higher even where only public objects can be read),
 * then 10 bytes from the token's RNG. */
KC_EXPORT kc_rc kc_key_version_id(kc_vault *v, unsigned char id[KC_VERSION_BYTES],
                                  kc_error *err) KC_MUST_CHECK;

/* The version with that id, or the current one when id_len is 0. */
KC_EXPORT kc_rc kc_key_select(const kc_key *k, const unsigned char *id, size_t id_len,
                              const kc_key_version **out, kc_error *err) KC_MUST_CHECK;

/* PEM SubjectPublicKeyInfo of a version (caller frees). */
KC_EXPORT kc_rc kc_key_public_pem(kc_vault *v, const kc_key *k, const kc_key_version *ver,
                                  char **pem, kc_error *err) KC_MUST_CHECK;

/* RSA-OAEP wrap of a 16-64 byte secret under the version's public key on the
 * token (no login needed). Refused before the key's start date, after its
 * expiry and when its ops lack wrapKey. */
KC_EXPORT kc_rc kc_key_wrap(kc_vault *v, const kc_key *k, const kc_key_version *ver, kc_oaep alg,
                            const kc_secret *secret, unsigned char **out, size_t *out_len,
                            kc_oaep *used, kc_error *err) KC_MUST_CHECK;

/* After a failed kc_key_record_version of a pair just made: destroys the
 * pair unless the key state was committed since v->saved was saved. */
KC_EXPORT void kc_key_drop_unrecorded(kc_vault *v, unsigned long saved, kc_obj pub, kc_obj priv);

/* Records a new version in the key state (created now, enabled, ops) and
 * saves it; make_current makes it the current version. */
KC_EXPORT kc_rc kc_key_record_version(kc_vault *v, const char *name, const unsigned char *id,
                                      size_t id_len, unsigned ops, const char *origin,
                                      int make_current, kc_error *err) KC_MUST_CHECK;

/* KC_CONFLICT when the vault has a key (active or deleted) of this name
 * (logs in and loads the key state). */
KC_EXPORT kc_rc kc_key_check_free_name(kc_vault *v, const char *name, kc_error *err) KC_MUST_CHECK;

/* KC_NOT_FOUND, with the hint to recover, when the key is soft-deleted. */
KC_EXPORT kc_rc kc_key_check_active(const kc_key *k, kc_error *err) KC_MUST_CHECK;

/* --- lifecycle (kc_lifecycle.c) --- */

/* A new version (new key pair, same label, new CKA_ID, the current
 * version's size, protection, ops and expiry) becomes current. */
KC_EXPORT kc_rc kc_key_rotate(kc_vault *v, const char *name, kc_key **out,
                              kc_error *err) KC_MUST_CHECK;
/* The same, with a new size (0: keep) and protection (-1: keep): what a
 * token cannot change in place becomes a new version. */
KC_EXPORT kc_rc kc_key_rotate_to(kc_vault *v, const char *name, unsigned bits, int protection,
                                 kc_key **out, kc_error *err) KC_MUST_CHECK;

typedef struct kc_key_update_opts {
    int set_enabled, enabled;
    int set_ops;
    unsigned ops;
    const char *expires; /* NULL: unchanged; "YYYY-MM-DD"; "never" is refused once set */
    const kc_tag *tags;  /* an empty value removes the tag */
    size_t ntags;
} kc_key_update_opts;

/* Changes a version (id_len 0: the current one) and the key's tags. What
 * the token will not change is recorded and enforced by keycustody. */
KC_EXPORT kc_rc kc_key_update(kc_vault *v, const char *name, const unsigned char *id, size_t id_len,
                              const kc_key_update_opts *o, kc_key **out,
                              kc_error *err) KC_MUST_CHECK;

/* Destroys the half-made versions of a key (kc_key.nhalf). *emptied tells
 * whether no version is left. */
KC_EXPORT kc_rc kc_key_remove_half_made(kc_vault *v, const char *name, int *emptied,
                                        kc_error *err) KC_MUST_CHECK;

/* Removes what interrupted writes left in v: every key's half-made
 * versions (*halves) and the older generations of its documents (*stale;
 * kc_keystate_tidy). */
KC_EXPORT kc_rc kc_vault_remove_leftovers(kc_vault *v, size_t *halves, size_t *stale,
                                          kc_error *err) KC_MUST_CHECK;

/* Records the versions the key state does not know (a create or rotate
 * interrupted between the token and the record): created now, enabled,
 * with the ops the token allows; the newest becomes current if none is. */
KC_EXPORT kc_rc kc_key_record_missing(kc_vault *v, const char *name, kc_error *err) KC_MUST_CHECK;

/* Soft delete: every version becomes unusable on the token, the name stays
 * reserved, and the key can be purged after the retention period. */
KC_EXPORT kc_rc kc_key_delete(kc_vault *v, const char *name, kc_key **out,
                              kc_error *err) KC_MUST_CHECK;
KC_EXPORT kc_rc kc_key_recover(kc_vault *v, const char *name, kc_key **out,
                               kc_error *err) KC_MUST_CHECK;
/* Destroys every object of a deleted key; refused (KC_DENIED) during the
 * retention period when the vault has purge protection. */
KC_EXPORT kc_rc kc_key_purge(kc_vault *v, const char *name, kc_error *err) KC_MUST_CHECK;
/* Destroys every object of the key at once, with no soft delete: for a
 * service key whose end its owner decides (an availability key at the
 * end of a data purge). Logs in. KC_NOT_FOUND when there is nothing:
 * no object with its label and no record. */
KC_EXPORT kc_rc kc_key_destroy_now(kc_vault *v, const char *name, kc_error *err) KC_MUST_CHECK;
/* The deleted keys of a vault (logs in). */
KC_EXPORT kc_rc kc_key_list_deleted(kc_vault *v, kc_key **out, size_t *n,
                                    kc_error *err) KC_MUST_CHECK;
/* Both lists from one search of the vault's key objects (logs in): the
 * keys in *active, the deleted keys in *deleted, each in token order and
 * freed by kc_key_list_free. On failure both are NULL and empty. */
KC_EXPORT kc_rc kc_key_list_all(kc_vault *v, kc_key **active, size_t *nactive, kc_key **deleted,
                                size_t *ndeleted, kc_error *err) KC_MUST_CHECK;

/* --- import (kc_import.c) --- */

typedef struct kc_import_opts {
    const char *name; /* the new key */
    unsigned ops;     /* its ops (0: wrapKey,unwrapKey) */
    const char *kek;  /* BYOK: the key-exchange key's name, when the file does not say */
} kc_import_opts;

/* Key Vault's BYOK flow. buf is the transfer blob: Key Vault's .byok JSON
 * ({"header": {"kid": KEK}, "ciphertext": base64url}) or the raw bytes: an
 * AES-256 key under RSA-OAEP (SHA-1) with the KEK's public key, then the
 * PKCS#8 key under AES key wrap with padding. SoftHSM 2.6.1 has no
 * CKM_RSA_AES_KEY_WRAP, so this runs in two token steps through a session
 * AES key that is destroyed after. The KEK must have the import op. */
KC_EXPORT kc_rc kc_key_import_byok(kc_vault *v, const kc_import_opts *o, const unsigned char *buf,
                                   size_t len, kc_key **out, kc_error *err) KC_MUST_CHECK;

/* Plain import of an RSA private key in PEM (PKCS#8 or PKCS#1, unencrypted).
 * The key existed outside an HSM; the token marks it CKA_LOCAL=false and
 * keycustody records its origin. */
KC_EXPORT kc_rc kc_key_import_pem(kc_vault *v, const kc_import_opts *o, const unsigned char *pem,
                                  size_t len, kc_key **out, kc_error *err) KC_MUST_CHECK;

/* RSA-OAEP unwrap under the version's private key (logs in). */
KC_EXPORT kc_rc kc_key_unwrap(kc_vault *v, const kc_key *k, const kc_key_version *ver, kc_oaep alg,
                              const unsigned char *in, size_t in_len, kc_secret **out,
                              kc_error *err) KC_MUST_CHECK;

#endif
