/* The backup domain of a subscription, modelled on the security domain of
 * Azure Managed HSM.
 *
 * A subscription's vaults share one 64-byte secret. From it come (HMAC-SHA256
 * under the secret, one label each) the keys that are token objects on each
 * vault, with the domain id as CKA_ID:
 *   keycustody-domain-wrap       public AES key, CKA_TRUSTED, wrap only. On
 *                                SoftHSM only the SO can mark a key trusted,
 *                                only at creation and only on a public object;
 *                                an HSM-protected key (CKA_WRAP_WITH_TRUSTED)
 *                                leaves the token only under such a key. Being
 *                                public, its value is in clear in SoftHSM's
 *                                token files: what it wraps is sealed again.
 *   keycustody-domain-unwrap     private AES key (the wrap key's value), unwrap
 *                                only, and its CKA_UNWRAP_TEMPLATE makes every
 *                                key it unwraps a sensitive, wrap-with-trusted
 *                                private token key: no user-PIN holder can
 *                                unwrap a root key out in clear through it.
 *   keycustody-domain-seal       private AES key, encrypt/decrypt: the AES-KWP
 *                                blob of each version is sealed under it with
 *                                AES-GCM, so token files plus a backup open
 *                                nothing.
 *   keycustody-domain-software   private AES key, wrap/unwrap of "software"
 *                                keys (not sensitive, not wrap-with-trusted);
 *                                its unwrap template makes only such keys.
 *   keycustody-domain-mac        private HMAC key, sign/verify
 * Every one is made not modifiable and not copyable: no usage can be added.
 * Only private objects (the wrap key: public and trusted) are believed; a
 * look-alike someone without the PIN planted is tampering (KC_INTEGRITY).
 *
 * The security-domain file holds the secret split M-of-N (Shamir over
 * GF(256), libgfshare), each share encrypted with RSA-OAEP to one
 * custodian's public key, and a key check value that binds the secret to the
 * subscription's name. */
#ifndef KC_DOMAIN_H
#define KC_DOMAIN_H

#include "kc_vault.h"

#define KC_DOMAIN_SECRET_BYTES 64 /* the keys below are derived from it */
#define KC_DOMAIN_ID_BYTES 16
#define KC_DOMAIN_MAX_CUSTODIANS 16
#define KC_DOMAIN_FILE_MAX (1 << 20)

#define KC_DOMAIN_WRAP_LABEL "keycustody-domain-wrap"
#define KC_DOMAIN_UNWRAP_LABEL "keycustody-domain-unwrap"
#define KC_DOMAIN_MAC_LABEL "keycustody-domain-mac"
#define KC_DOMAIN_SEAL_LABEL "keycustody-domain-seal"
#define KC_DOMAIN_SOFT_LABEL "keycustody-domain-software"

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
 * none; KC_INTEGRITY when one is missing or a look-alike was planted. wrap
 * is the public trusted key; the others are private (needs the login). */
typedef struct kc_domain_keys {
    unsigned char id[KC_DOMAIN_ID_BYTES];
    kc_obj wrap, unwrap, mac, seal, soft;
} kc_domain_keys;

KC_EXPORT kc_rc kc_domain_keys_get(kc_vault *v, kc_domain_keys *out, kc_error *err) KC_MUST_CHECK;

#endif
