/* The backup domain of a subscription, modelled on the security domain of
 * Azure Managed HSM.
 *
 * A subscription's vaults share two secrets (64 bytes in all): an AES-256 key
 * that wraps and unwraps backups and an HMAC-SHA256 key that authenticates
 * them. On each vault they are three token objects with the domain id as
 * CKA_ID:
 *   keycustody-domain-wrap    public AES key, CKA_TRUSTED, wrap only. On
 *                             SoftHSM only the SO can mark a key trusted, only
 *                             at creation and only on a public object; an
 *                             HSM-protected key (CKA_WRAP_WITH_TRUSTED)
 *                             leaves the token only under such a key.
 *   keycustody-domain-unwrap  private AES key (same value), unwrap only
 *   keycustody-domain-mac     private HMAC key, sign/verify
 * so anyone may wrap (and the result is useless to them), but restoring or
 * forging a backup needs the vault's PIN.
 *
 * The security-domain file holds the secrets split M-of-N (Shamir over
 * GF(256), libgfshare), each share encrypted with RSA-OAEP to one
 * custodian's public key, and a key check value. */
#ifndef KC_DOMAIN_H
#define KC_DOMAIN_H

#include "kc_vault.h"

#define KC_DOMAIN_SECRET_BYTES 64 /* AES-256 wrap key, then HMAC key */
#define KC_DOMAIN_ID_BYTES 16
#define KC_DOMAIN_MAX_CUSTODIANS 16
#define KC_DOMAIN_FILE_MAX (1 << 20)

#define KC_DOMAIN_WRAP_LABEL "keycustody-domain-wrap"
#define KC_DOMAIN_UNWRAP_LABEL "keycustody-domain-unwrap"
#define KC_DOMAIN_MAC_LABEL "keycustody-domain-mac"

/* A custodian's key for joining: a PEM private key file, or a key on the
 * custodian's own token named by pkcs11: URI or VAULT/KEY. */
typedef struct kc_share_key {
    const char *ref;
} kc_share_key;

/* Generates the domain secrets, installs them on every vault of vaults[]
 * (all of subscription sub; the SO PIN and user PIN of each are asked for),
 * and returns the security-domain file (JSON, caller frees) with the
 * secrets split quorum-of-ncustodians among the custodians' RSA public keys
 * (PEM files). The secrets are wiped before returning. */
KC_EXPORT kc_rc kc_domain_init(kc_ctx *ctx, const char *sub, const char *const *vaults,
                               size_t nvaults, const char *const *custodian_pems,
                               size_t ncustodians, unsigned quorum, char **domain_file,
                               kc_error *err) KC_MUST_CHECK;

/* Recombines the secrets from a quorum of share keys, checks them against
 * the file's key check value, and installs them on vault (of subscription
 * sub). Fewer shares than the quorum, a key that is not a custodian's, a
 * wrong share or a vault of another subscription: an error and nothing
 * installed. */
KC_EXPORT kc_rc kc_domain_join(kc_ctx *ctx, const char *sub, const char *vault,
                               const unsigned char *file, size_t file_len, const kc_share_key *keys,
                               size_t nkeys, kc_error *err) KC_MUST_CHECK;

/* The token-free check of a security-domain file (for the fuzzer and tests):
 * every field checked for type, range and size. */
KC_EXPORT kc_rc kc_domain_check_file(const unsigned char *buf, size_t len,
                                     kc_error *err) KC_MUST_CHECK;

/* The domain objects of a vault, for backup and restore: found by the
 * vault's recorded domain id. KC_NOT_FOUND (exit 4) when the vault holds
 * none; wrap is the public trusted key, unwrap and mac need the login. */
typedef struct kc_domain_keys {
    unsigned char id[KC_DOMAIN_ID_BYTES];
    kc_obj wrap, unwrap, mac;
} kc_domain_keys;

KC_EXPORT kc_rc kc_domain_keys_get(kc_vault *v, kc_domain_keys *out, kc_error *err) KC_MUST_CHECK;

#endif
