/* Vaults: a PKCS#11 token that carries keycustody's vault metadata.
 *
 * The vault name is the token label. The metadata (subscription, region, SKU,
 * soft-delete retention, purge protection) is part of the vault's signed
 * manifest (kc_manifest.h), a public CKO_DATA object of application
 * "keycustody", so that `vault list` can tell vaults from other tokens
 * without any PIN, and believe what it reads. SoftHSM cannot change a
 * CKO_DATA value in place, so every update writes a new generation first and
 * then removes the older ones; readers take the newest generation, and every
 * one on the token must verify. */
#ifndef KC_VAULT_H
#define KC_VAULT_H

#include "kc_access.h"
#include "kc_ctx.h"

#define KC_VAULT_META_LABEL "keycustody-vault"
#define KC_VAULT_SCHEMA 1

typedef enum kc_sku { KC_SKU_PREMIUM = 0, KC_SKU_STANDARD = 1 } kc_sku;

typedef struct kc_vault_meta {
    unsigned schema;
    unsigned long generation;
    char name[25];
    char subscription[65];
    char region[33];
    kc_sku sku;
    unsigned retention_days; /* soft-delete retention, 7..90 */
    int purge_protection;
    int retention_registered; /* the subscription is registered for mandatory retention */
    char domain[33];          /* id of the backup domain installed, "" when none */
    kc_arrangement arr;       /* how the vault's module keeps it, chosen at init */
    kc_access_entry access[KC_ACCESS_MAX]; /* the access policy; none: no policy */
    size_t naccess;
    char created[21]; /* RFC 3339 UTC */
    char updated[21];
} kc_vault_meta;

typedef struct kc_vault {
    kc_ctx *ctx;
    kc_tok *tok; /* owned by ctx->p11 */
    kc_vault_meta meta;
    struct json_t *state;    /* the key state, once loaded (kc_keystate.h) */
    char state_digest[65];   /* SHA-256 of the key state document loaded; "" none */
    struct json_t *manifest; /* the signed manifest it was opened with (kc_manifest.h) */
    char fingerprint[65];    /* of the vault key that signs it */
    char manifest_digest[65]; /* SHA-256 of the manifest document at meta.generation */
    int current_checked;      /* the manifest was checked against its private record */
    unsigned long saved;     /* key state generations this handle committed (kc_keystate_save) */
} kc_vault;

/* One token as `vault list` sees it. */
typedef struct kc_vault_entry {
    kc_tok_info token;
    int is_vault; /* metadata found and valid */
    kc_vault_meta meta;
    char fingerprint[65]; /* of its vault key, when it is a vault */
    char note[256];       /* why a token is not a vault, when it is interesting */
} kc_vault_entry;

/* Vault names: 3-24 characters, letters, digits and '-', starting with a
 * letter, ending with a letter or digit, no "--" (Key Vault's rule). */
KC_EXPORT kc_rc kc_vault_check_name(const char *name, kc_error *err) KC_MUST_CHECK;
/* Subscription ids and regions as the metadata accepts them. */
KC_EXPORT kc_rc kc_vault_check_meta(const kc_vault_meta *m, kc_error *err) KC_MUST_CHECK;

KC_EXPORT const char *kc_sku_name(kc_sku sku);

/* Azure's name for what can be recovered and when it can be purged:
 * Recoverable+Purgeable, Recoverable, Recoverable+ProtectedSubscription and
 * the CustomizedRecoverable... forms for retention under 90 days. Soft
 * delete is always on in keycustody, so never plain Purgeable. */
KC_EXPORT const char *kc_vault_recovery_level(const kc_vault_meta *m);
/* How the vault keeps what keycustody promises (kc_arrangement), as its
 * metadata records it: {"signer", "hsm_keys", "key_wrap", "seal"}. */
KC_EXPORT struct json_t *kc_vault_arrangement_json(const kc_arrangement *a);
KC_EXPORT int kc_sku_parse(const char *s, kc_sku *out);

/* Makes the vault want->name: adopts an initialised token labelled so (after
 * logging in), or initialises a free token (token_uri selects one; NULL: the
 * first free token) with a new SO PIN and user PIN. Writes the metadata.
 * *adopted tells which happened. A token that already is a vault: KC_CONFLICT. */
KC_EXPORT kc_rc kc_vault_init(kc_ctx *ctx, const kc_vault_meta *want, const char *token_uri,
                              kc_vault **out, int *adopted, kc_error *err) KC_MUST_CHECK;

/* Opens the vault by name or token URI; KC_NOT_FOUND when the token is not a
 * keycustody vault. Does not log in. */
KC_EXPORT kc_rc kc_vault_open(kc_ctx *ctx, const char *name_or_uri, kc_vault **out,
                              kc_error *err) KC_MUST_CHECK;
/* The same, its token found among the n entries of one kc_p11_list_tokens
 * (kc_p11_token_in_list): a caller that opens many vaults passes over the
 * slots once, not once per vault. */
KC_EXPORT kc_rc kc_vault_open_listed(kc_ctx *ctx, const kc_tok_info *toks, size_t n,
                                     const char *name_or_uri, kc_vault **out,
                                     kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_vault_free(kc_vault *v);

/* Checks principal against the vault's access policy, when it has one:
 * KC_DENIED naming the missing permission (or asking who acts). Guard
 * rails against mistakes; the PIN is the security boundary. */
KC_EXPORT kc_rc kc_vault_authorize(const kc_vault *v, const char *principal, unsigned perm,
                                   kc_error *err) KC_MUST_CHECK;

/* keycustody's own secret key with this label (and id, when id != NULL)
 * on v, found where a genuine one is (*n: 0 or 1). One found elsewhere (a
 * public look-alike of a private key, an untrusted wrap key) or a second
 * copy was planted by someone without the PIN: KC_INTEGRITY naming it, and
 * none is used. Needs the user logged in. */
KC_EXPORT kc_rc kc_vault_own_secret(kc_vault *v, const char *label, const unsigned char *id,
                                    size_t id_len, kc_where where, kc_obj *out, size_t *n,
                                    kc_error *err) KC_MUST_CHECK;

/* Writes v->meta as the next generation of the metadata (login needed). */
/* v->meta as the token holds it now (another writer may have changed it
 * since v was opened), from the manifest signed by the same vault key. */
KC_EXPORT kc_rc kc_vault_meta_reread(kc_vault *v, kc_error *err) KC_MUST_CHECK;

/* Logs in to v's token (kc_ctx_login) and, the first time, checks the
 * manifest v was opened with against the vault's private record of its
 * current one (kc_manifest_check_current): KC_INTEGRITY when it was rolled
 * back. What every command that logs in to a vault it opened calls. */
KC_EXPORT kc_rc kc_vault_login(kc_vault *v, kc_error *err) KC_MUST_CHECK;

/* Waits for a command on this host that changes v to end, then reads v's
 * signed manifest again: a reader that met a key its manifest did not name
 * yet (a create or rotate half done) looks once more. */
KC_EXPORT kc_rc kc_vault_reread(kc_vault *v, kc_error *err) KC_MUST_CHECK;

/* KC_TOKEN: the manifest v was opened with is not found any more (the
 * module failed; a vault's manifest is never removed by keycustody). */
KC_EXPORT kc_rc kc_vault_lost_sight(const kc_vault *v, kc_error *err) KC_MUST_CHECK;
KC_EXPORT kc_rc kc_vault_save_meta(kc_vault *v, kc_error *err) KC_MUST_CHECK;

/* Every visible token, with its vault metadata where it has some. */
KC_EXPORT kc_rc kc_vault_list(kc_ctx *ctx, kc_vault_entry **out, size_t *n,
                              kc_error *err) KC_MUST_CHECK;

/* Metadata <-> JSON text (the on-token format). decode checks every field. */
KC_EXPORT kc_rc kc_vault_meta_encode(const kc_vault_meta *m, char **out,
                                     kc_error *err) KC_MUST_CHECK;
KC_EXPORT kc_rc kc_vault_meta_decode(const unsigned char *buf, size_t len, kc_vault_meta *m,
                                     kc_error *err) KC_MUST_CHECK;

#endif
