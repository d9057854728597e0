/* The PKCS#11 layer: the only code that includes pkcs11.h or calls C_*.
 *
 * Modules are loaded through p11-kit, tokens are found by RFC 7512 URI or by
 * label (never by slot number: SoftHSM renumbers slots after C_InitToken), and
 * every failing call is turned into a kc_error carrying the C_* function, the
 * CK_RV, p11-kit's sentence for it and the project code it maps to.
 *
 * Nothing in this header exposes a CK_* type, so the layers above stay free of
 * pkcs11.h. Object handles are plain numbers valid in the token's session. */
#ifndef KC_P11_H
#define KC_P11_H

#include "kc_error.h"
#include "kc_secret.h"

#include <stddef.h>

typedef struct kc_p11 kc_p11; /* the loaded module(s), initialised once per process */
typedef struct kc_tok kc_tok; /* one token with one reusable R/W session */
typedef unsigned long kc_obj; /* object handle within a token's session */

/* Key usages, named after Key Vault's key_ops. */
enum {
    KC_OP_ENCRYPT = 1u << 0,
    KC_OP_DECRYPT = 1u << 1,
    KC_OP_SIGN = 1u << 2,
    KC_OP_VERIFY = 1u << 3,
    KC_OP_WRAP = 1u << 4,
    KC_OP_UNWRAP = 1u << 5,
    /* No token attribute: a key-exchange key for BYOK import. Its private
     * key has CKA_UNWRAP for the transfer key; keycustody refuses it for
     * anything but import. */
    KC_OP_IMPORT = 1u << 6,
};

typedef enum kc_key_type { KC_KT_OTHER = 0, KC_KT_RSA, KC_KT_EC } kc_key_type;

/* RSA-OAEP hash (the MGF1 hash is the same, the label empty). */
typedef enum kc_oaep { KC_OAEP_AUTO = 0, KC_OAEP_SHA1 = 1, KC_OAEP_SHA256 = 2 } kc_oaep;

typedef struct kc_tok_info {
    char label[33];
    char manufacturer[33];
    char model[17];
    char serial[17];
    char uri[512];    /* RFC 7512 token URI */
    char module[256]; /* module file the token was found through */
    size_t module_index; /* which of kc_p11_modules' list (kc_p11_list_tokens) */
    unsigned long slot_id; /* its slot there (kc_p11_list_tokens) */
    int initialized;
    int user_pin_initialized;
    int login_required;
    int write_protected;
    int user_pin_count_low, user_pin_final_try, user_pin_locked, user_pin_to_be_changed;
    int so_pin_count_low, so_pin_final_try, so_pin_locked;
    int so_pin_to_be_changed; /* a free token so flagged still has its factory SO PIN */
    unsigned long min_pin, max_pin;
} kc_tok_info;

/* One key object as read back from the token. Dates are "YYYYMMDD" or "". */
typedef struct kc_key_obj {
    kc_obj handle;
    int is_private; /* CKO_PRIVATE_KEY, else CKO_PUBLIC_KEY */
    kc_key_type type;
    char label[129];
    unsigned char id[64];
    size_t id_len;
    unsigned bits;
    unsigned ops; /* KC_OP_* the token allows on this object */
    int sensitive, extractable, always_sensitive, never_extractable, local;
    int wrap_with_trusted, modifiable, trusted;
    int token_private; /* CKA_PRIVATE: only a PIN holder can have made it */
    int unreadable;    /* the token failed to give its type, label or CKA_PRIVATE */
    /* RSA with an empty CKA_MODULUS: SoftHSM 2.6.1 stores a generated key's
     * object from the template first and its key material after, so a
     * generation killed between the two leaves one (test_misuse "killed
     * while others write") */
    int no_key;
    char start_date[9], end_date[9]; /* read from public objects only (see kc_p11_obj.c) */
} kc_key_obj;

typedef struct kc_rsa_spec {
    const char *label;
    const unsigned char *id;
    size_t id_len;
    unsigned bits;
    unsigned ops;           /* KC_OP_*: ENCRYPT/VERIFY/WRAP go on the public key, the rest
                             * on the private key */
    int sensitive;          /* private key never readable in clear */
    int wrap_with_trusted;  /* extractable only under a trusted wrapping key */
    int non_extractable;    /* never leaves the token, not even wrapped: an "hsm" key on a
                             * module without the trusted-key arrangement */
    const char *start_date; /* "YYYYMMDD" or NULL; public key only */
    const char *end_date;   /* "YYYYMMDD" or NULL; public key only */
} kc_rsa_spec;

typedef struct kc_data_obj {
    kc_obj handle;
    char label[129];
    unsigned char *value; /* owned; free with kc_p11_data_objs_free */
    size_t len;
} kc_data_obj;

/* --- modules --- */

/* Loads the module at module_path (NULL: every module registered with
 * p11-kit) and initialises it. One kc_p11 per process. A path or name is
 * what kc_p11_load_set takes. */
KC_EXPORT kc_rc kc_p11_load(const char *module_path, kc_p11 **out, kc_error *err) KC_MUST_CHECK;

#define KC_P11_MODULES_MAX 8
#define KC_P11_BINDS_MAX 32

/* Several modules in one run, and which vault is on which: a token labelled
 * with a bound vault's name is looked for on its module only (a token of
 * that label on another module is not it). Each module is a file or the
 * name of a module registered with p11-kit; either way a registered one is
 * loaded with its p11-kit options (x-init-reserved and the rest). A bound
 * module need not be listed in paths too. No paths and no binds: every
 * registered module. */
typedef struct kc_module_set {
    const char *paths[KC_P11_MODULES_MAX];
    size_t npaths;
    struct {
        const char *vault, *module;
    } binds[KC_P11_BINDS_MAX];
    size_t nbinds;
} kc_module_set;

KC_EXPORT kc_rc kc_p11_load_set(const kc_module_set *set, kc_p11 **out,
                                kc_error *err) KC_MUST_CHECK;

/* Where the operator lists the modules a layout may name, one absolute path
 * a line ('#' starts a comment). Believed only when root owns it and nobody
 * else can write it. KEYCUSTODY_MODULES_ALLOW names another such file. */
#define KC_P11_ALLOW_FILE "/etc/keycustody/modules.allow"

/* Whether a module a layout names may be loaded: it is the file of a module
 * registered with p11-kit (compared after resolving links), or it is in the
 * operator's allow-list file. Nothing of module is loaded to decide (the
 * registered modules are, which the operator installed). KC_DENIED, naming
 * the path and what would allow it, when not. */
KC_EXPORT kc_rc kc_p11_module_allowed(const char *module, kc_error *err) KC_MUST_CHECK;

/* Closes every session, finalises and releases the modules. NULL-safe. */
KC_EXPORT void kc_p11_free(kc_p11 *p);

/* Every token present in any loaded module. *out is an array the caller frees. */
KC_EXPORT kc_rc kc_p11_list_tokens(kc_p11 *p, kc_tok_info **out, size_t *n,
                                   kc_error *err) KC_MUST_CHECK;

/* The token of an entry kc_p11_list_tokens gave, without another pass over
 * the slots (a listing that opens each token stays linear in the slots). */
KC_EXPORT kc_rc kc_p11_token_listed(kc_p11 *p, const kc_tok_info *info, kc_tok **out,
                                    kc_error *err) KC_MUST_CHECK;

/* The token named by name_or_uri (matched, and refused, as by kc_p11_token)
 * among the n entries one kc_p11_list_tokens gave, without a pass over the
 * slots of its own: a caller that looks up many tokens lists them once. A
 * token the listing does not hold is looked up as kc_p11_token does (a
 * pass over the slots, and SoftHSM's listing race retried). */
KC_EXPORT kc_rc kc_p11_token_in_list(kc_p11 *p, const kc_tok_info *toks, size_t n,
                                     const char *name_or_uri, kc_tok **out,
                                     kc_error *err) KC_MUST_CHECK;

/* The token named by name_or_uri: a "pkcs11:" URI (token attributes are
 * matched; a PIN in the URI is refused) or a token label. Exactly one token
 * must match. The returned token is owned by p and reused by later calls with
 * the same token, so its session and login are shared. KC_NOT_FOUND lists the
 * visible tokens in the message. */
KC_EXPORT kc_rc kc_p11_token(kc_p11 *p, const char *name_or_uri, kc_tok **out,
                             kc_error *err) KC_MUST_CHECK;

/* Like kc_p11_token for a lookup whose "not found" is an ordinary answer
 * (vault init asking whether the vault exists): no second look. kc_p11_token
 * initialises the module once more before it says "not found", when
 * nothing was opened yet (SoftHSM can miss a token another process is
 * rewriting when it initialises; see kc_p11.c). */
KC_EXPORT kc_rc kc_p11_token_if_any(kc_p11 *p, const char *name_or_uri, kc_tok **out,
                                    kc_error *err) KC_MUST_CHECK;

/* Like kc_p11_token, but a new handle with its own session, owned by the
 * caller (kc_tok_free): for threads, which must not share a session. */
KC_EXPORT kc_rc kc_p11_token_new(kc_p11 *p, const char *name_or_uri, kc_tok **out,
                                 kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_tok_free(kc_tok *t);

/* The first token that is not initialised and matches uri (NULL: any).
 * Owned by p. */
KC_EXPORT kc_rc kc_p11_free_token(kc_p11 *p, const char *uri, kc_tok **out,
                                  kc_error *err) KC_MUST_CHECK;
/* The same for vault: on its module, where it is bound to one
 * (kc_module_set). */
KC_EXPORT kc_rc kc_p11_free_token_for(kc_p11 *p, const char *vault, const char *uri,
                                      kc_tok **out, kc_error *err) KC_MUST_CHECK;

/* Whether s parses as a pkcs11: URI. */
KC_EXPORT int kc_p11_is_uri(const char *s);

/* The RFC 7512 URI of a key pair on the token: token attributes, object=label
 * and id, without type=, so that it names both halves of the pair. */
KC_EXPORT kc_rc kc_p11_object_uri(const kc_tok_info *ti, const char *label, const unsigned char *id,
                                  size_t id_len, char *out, size_t len,
                                  kc_error *err) KC_MUST_CHECK;

/* The object part of a pkcs11: URI: its label ("" when absent) and id
 * (*id_len 0 when absent). A pin-value in the URI is refused. */
KC_EXPORT kc_rc kc_p11_uri_object(const char *uri, char *label, size_t label_cap, unsigned char *id,
                                  size_t id_cap, size_t *id_len, kc_error *err) KC_MUST_CHECK;

/* --- tokens and login --- */

KC_EXPORT const kc_tok_info *kc_tok_info_get(const kc_tok *t);

/* Re-reads the token info (PIN flags change after a failed login). */
KC_EXPORT kc_rc kc_tok_refresh(kc_tok *t, kc_error *err) KC_MUST_CHECK;

/* C_InitToken with label and a new SO PIN. Only for a token that is not
 * initialised. A free token whose SO PIN is still the factory one
 * (CKF_SO_PIN_TO_BE_CHANGED; openCryptoki 3.8.1 takes C_InitToken only with
 * it) is initialised with that PIN, which the SO then changes to so_pin
 * (C_SetPIN), so that no flag is left asking for it. */
KC_EXPORT kc_rc kc_tok_init_token(kc_tok *t, const char *label, const kc_secret *so_pin,
                                  kc_error *err) KC_MUST_CHECK;

/* On an initialised token that still has its factory SO PIN
 * (CKF_SO_PIN_TO_BE_CHANGED: an earlier kc_tok_init_token stopped after
 * C_InitToken, or the module's own tool initialised it): changes it to
 * so_pin, so that nobody who knows the factory PIN is its SO. A no-op on
 * any other token; KC_TOKEN naming the flag where the factory PIN of the
 * module is not known. */
KC_EXPORT kc_rc kc_tok_finish_so_pin(kc_tok *t, const kc_secret *so_pin,
                                     kc_error *err) KC_MUST_CHECK;

/* Logs in as SO, sets the user PIN (C_InitPIN), logs out, and logs the user
 * in with the new PIN. */
KC_EXPORT kc_rc kc_tok_init_pin(kc_tok *t, const kc_secret *so_pin, const kc_secret *user_pin,
                                kc_error *err) KC_MUST_CHECK;

/* Logs the user in (a no-op when already logged in). A refused PIN is
 * KC_DENIED and the message explains the token's PIN-count flags. */
KC_EXPORT kc_rc kc_tok_login(kc_tok *t, const kc_secret *pin, kc_error *err) KC_MUST_CHECK;
KC_EXPORT int kc_tok_is_logged_in(const kc_tok *t);

/* count random bytes from the token's RNG. */
KC_EXPORT kc_rc kc_tok_random(kc_tok *t, unsigned char *buf, size_t count,
                              kc_error *err) KC_MUST_CHECK;

/* --- key objects --- */

/* Public and private keys, optionally restricted to one label and/or one id.
 * Private keys are seen only after login. *out is freed by the caller. */
KC_EXPORT kc_rc kc_tok_find_keys(kc_tok *t, const char *label, const unsigned char *id,
                                 size_t id_len, kc_key_obj **out, size_t *n,
                                 kc_error *err) KC_MUST_CHECK;

/* The key objects of known handles (a pair just generated, say), read as a
 * search would give them, without one: public keys first; a handle that is
 * no key, or whose class the token will not give, is left out. */
KC_EXPORT kc_rc kc_tok_read_keys(kc_tok *t, const kc_obj *handles, size_t count, kc_key_obj **out,
                                 size_t *n, kc_error *err) KC_MUST_CHECK;

/* Public keys only, with this label: one search, for readers without the PIN. */
KC_EXPORT kc_rc kc_tok_find_public_keys(kc_tok *t, const char *label, kc_key_obj **out, size_t *n,
                                        kc_error *err) KC_MUST_CHECK;

/* Generates an RSA key pair as token objects. On failure nothing of it is
 * left on the token, even where the module leaves half-built objects. */
KC_EXPORT kc_rc kc_tok_generate_rsa(kc_tok *t, const kc_rsa_spec *spec, kc_obj *pub, kc_obj *priv,
                                    kc_error *err) KC_MUST_CHECK;

/* Modulus and public exponent of an RSA key (big-endian, caller frees). */
KC_EXPORT kc_rc kc_tok_rsa_public(kc_tok *t, kc_obj key, unsigned char **n, size_t *n_len,
                                  unsigned char **e, size_t *e_len, kc_error *err) KC_MUST_CHECK;

KC_EXPORT kc_rc kc_tok_destroy(kc_tok *t, kc_obj obj, kc_error *err) KC_MUST_CHECK;

/* Whether two RSA key objects (a public and a private half, say) carry the
 * same modulus and public exponent. */
KC_EXPORT kc_rc kc_tok_same_rsa_key(kc_tok *t, kc_obj a, kc_obj b, int *same,
                                    kc_error *err) KC_MUST_CHECK;


/* Sets what the token allows on one half of a key pair: CKA_UNWRAP,
 * CKA_DECRYPT, CKA_SIGN on a private key, CKA_WRAP, CKA_ENCRYPT, CKA_VERIFY
 * on a public key. A token that will not change them answers KC_DENIED. */
KC_EXPORT kc_rc kc_tok_set_ops(kc_tok *t, kc_obj obj, int is_private, unsigned ops,
                               kc_error *err) KC_MUST_CHECK;

/* Sets CKA_END_DATE ("YYYYMMDD", or NULL for none) on a public object. */
KC_EXPORT kc_rc kc_tok_set_end_date(kc_tok *t, kc_obj obj, const char *yyyymmdd,
                                    kc_error *err) KC_MUST_CHECK;

/* An RSA public key object from its modulus and exponent, for restore and
 * import (spec's label, id, public ops and dates are used). */
KC_EXPORT kc_rc kc_tok_create_rsa_public(kc_tok *t, const kc_rsa_spec *spec, const unsigned char *n,
                                         size_t n_len, const unsigned char *e, size_t e_len,
                                         kc_obj *out, kc_error *err) KC_MUST_CHECK;

/* The components of an RSA private key, big-endian, for import. */
typedef struct kc_rsa_parts {
    const unsigned char *n, *e, *d, *p, *q, *dp, *dq, *qinv;
    size_t n_len, e_len, d_len, p_len, q_len, dp_len, dq_len, qinv_len;
} kc_rsa_parts;

/* An RSA private key object from its components (spec's private ops,
 * sensitive, wrap_with_trusted). The token marks it CKA_LOCAL=false. */
KC_EXPORT kc_rc kc_tok_create_rsa_private(kc_tok *t, const kc_rsa_spec *spec,
                                          const kc_rsa_parts *parts, kc_obj *out,
                                          kc_error *err) KC_MUST_CHECK;

/* --- the vault's signing key: EC P-256, or RSA-3072 with PSS where the
 * module has no EC (openCryptoki 3.8.1's soft token) --- */

typedef enum kc_signer_kind {
    KC_SIGNER_ECDSA_P256 = 0, /* ECDSA over SHA-256, r || s */
    KC_SIGNER_RSA_PSS,        /* RSASSA-PSS, SHA-256, MGF1-SHA-256, 32-byte salt */
    KC_SIGNER_NONE,
} kc_signer_kind;

/* Generates an RSA-3072 key pair as kc_tok_generate_ec_signer does an EC
 * one (the private half sign only, sensitive, never extractable). */
KC_EXPORT kc_rc kc_tok_generate_rsa_signer(kc_tok *t, const char *label, kc_obj *pub, kc_obj *priv,
                                           kc_error *err) KC_MUST_CHECK;

/* RSASSA-PSS (SHA-256) over a 32-byte digest with the private key; *sig_len
 * holds the size of sig on entry (512 is enough). */
KC_EXPORT kc_rc kc_tok_rsa_pss_sign(kc_tok *t, kc_obj priv, const unsigned char digest[32],
                                    unsigned char *sig, size_t *sig_len,
                                    kc_error *err) KC_MUST_CHECK;

/* Generates an EC P-256 key pair as token objects labelled label: the
 * private half private, sensitive, never extractable, sign only, not
 * modifiable, not copyable; the public half public, verify only, not
 * modifiable. Needs the user. On failure nothing of it stays. */
KC_EXPORT kc_rc kc_tok_generate_ec_signer(kc_tok *t, const char *label, kc_obj *pub, kc_obj *priv,
                                          kc_error *err) KC_MUST_CHECK;

/* The uncompressed point (0x04 || X || Y, 65 bytes for P-256) of an EC public
 * key, and whether its curve is P-256. */
KC_EXPORT kc_rc kc_tok_ec_point(kc_tok *t, kc_obj pub, unsigned char point[65],
                                kc_error *err) KC_MUST_CHECK;

/* ECDSA over a 32-byte digest with the private key: r || s, 64 bytes. */
KC_EXPORT kc_rc kc_tok_ecdsa_sign(kc_tok *t, kc_obj priv, const unsigned char digest[32],
                                  unsigned char sig[64], kc_error *err) KC_MUST_CHECK;

/* --- secret keys of the backup domain --- */

typedef enum kc_secret_kind { KC_SECRET_AES = 0, KC_SECRET_HMAC = 1 } kc_secret_kind;

/* What a key that unwraps may make: its CKA_UNWRAP_TEMPLATE. */
typedef enum kc_unwrap_into {
    KC_UNWRAP_ANY = 0,  /* no template (the key unwraps nothing private) */
    KC_UNWRAP_HSM_RSA,  /* an RSA private token key, private, sensitive, extractable only
                         * under a trusted key: what an "hsm" root key is */
    KC_UNWRAP_SOFT_RSA, /* an RSA private token key, private (a "software" key, which is
                         * readable in clear where it was made) */
} kc_unwrap_into;

typedef struct kc_secret_spec {
    kc_secret_kind kind;
    const char *label;
    const unsigned char *id;
    size_t id_len;
    int is_private; /* a user object; else public (and then SO-made when trusted) */
    int trusted;    /* CKA_TRUSTED: only the SO can set it, only at creation */
    int wrap, unwrap, sign, encrypt; /* encrypt: CKA_ENCRYPT and CKA_DECRYPT */
    kc_unwrap_into unwrap_into;      /* with unwrap */
} kc_secret_spec;

/* Creates a token secret key with the given value: sensitive, not
 * extractable, not modifiable and not copyable, so no usage can be added to
 * it later, in place or on a copy. A trusted key needs the SO logged in
 * (kc_tok_login_so). */
KC_EXPORT kc_rc kc_tok_create_secret(kc_tok *t, const kc_secret_spec *spec, const kc_secret *value,
                                     kc_obj *out, kc_error *err) KC_MUST_CHECK;

/* Generates on the token a 256-bit generic secret for HMAC-SHA256: private,
 * sensitive, never extractable, sign and verify only. Needs the user. */
KC_EXPORT kc_rc kc_tok_generate_hmac_key(kc_tok *t, const char *label, kc_obj *out,
                                         kc_error *err) KC_MUST_CHECK;

/* Destroys generic secret keys without a label: what SoftHSM 2.6.1 leaves of
 * a C_GenerateKey killed before it set the template's label (keycustody
 * never makes one). *removed: how many. Needs the user. */
KC_EXPORT kc_rc kc_tok_remove_unlabelled_secrets(kc_tok *t, size_t *removed,
                                                 kc_error *err) KC_MUST_CHECK;

/* Which objects a search believes (see DESIGN.md, the trust rule). */
typedef enum kc_where {
    KC_WHERE_ANY = 0,     /* every object the session sees: to find look-alikes */
    KC_WHERE_PRIVATE,     /* CKA_PRIVATE=TRUE: only a PIN holder can have made it */
    KC_WHERE_TRUSTED,     /* CKA_TRUSTED=TRUE (public): only the SO can have made it */
    KC_WHERE_PUBLIC,      /* CKA_PRIVATE=FALSE: anyone with a R/W session may have made it */
} kc_where;

/* Data objects with neither label nor application: what SoftHSM 2.6.1
 * leaves of a C_CreateObject killed before it set the template (keycustody
 * never makes one). Counts them, and removes them when remove is set (those
 * still unlabelled a second later: one being made now is unlabelled for a
 * moment). Needs the user for private ones. */
KC_EXPORT kc_rc kc_tok_unlabelled_data(kc_tok *t, int remove, size_t *n,
                                       kc_error *err) KC_MUST_CHECK;

/* The secret keys with this label (and id, when id != NULL) that are where
 * says; *n counts them, out[] holds the first cap. *others (when not NULL)
 * counts the keys with the label, of any id, that are not where a genuine
 * one is: look-alikes, for the caller to report. */
KC_EXPORT kc_rc kc_tok_find_secrets(kc_tok *t, const char *label, const unsigned char *id,
                                    size_t id_len, kc_where where, kc_obj *out, size_t cap,
                                    size_t *n, size_t *others, kc_error *err) KC_MUST_CHECK;

/* Security-officer session: logs the user out (closing the session), logs
 * the SO in; kc_tok_logout ends it. */
KC_EXPORT kc_rc kc_tok_login_so(kc_tok *t, const kc_secret *so_pin, kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_tok_logout(kc_tok *t);

/* --- AES key wrap (RFC 5649, or AES-CBC-PAD) and HMAC-SHA256, on the token --- */

/* How a key is wrapped under an AES key. */
typedef enum kc_wrap_mech {
    KC_WRAP_KWP = 0,  /* RFC 5649 as CKM_AES_KEY_WRAP_PAD (SoftHSM 2.6.1) */
    KC_WRAP_KWP_KWP,  /* RFC 5649 as CKM_AES_KEY_WRAP_KWP (NSS softokn) */
    KC_WRAP_CBC_PAD,  /* CKM_AES_CBC_PAD: a 16-byte IV from the token's RNG, then the
                       * wrapped key (openCryptoki 3.8.1) */
    KC_WRAP_NONE,
} kc_wrap_mech;

/* "CKM_AES_KEY_WRAP_PAD" and so on; "none". */
KC_EXPORT const char *kc_wrap_mech_name(kc_wrap_mech m);
/* 0 when name is one of kc_wrap_mech_name's. */
KC_EXPORT int kc_wrap_mech_parse(const char *name, kc_wrap_mech *out);

/* What a vault's arrangement needs, asked of the module it is reached
 * through now (the arrangement was chosen where the vault was made; a
 * p11-kit server's client, say, carries no AES key wrap and no AES-GCM):
 * KC_TOKEN naming the mechanism, what needs it (for, e.g. "a backup") and
 * the module, when the token does not list it with the flag. */
KC_EXPORT kc_rc kc_tok_offers_key_wrap(kc_tok *t, kc_wrap_mech mech, int unwrap, const char *for_,
                                       kc_error *err) KC_MUST_CHECK;
KC_EXPORT kc_rc kc_tok_offers_gcm(kc_tok *t, const char *for_, kc_error *err) KC_MUST_CHECK;

/* Wraps key (a private key) under kek with mech. */
KC_EXPORT kc_rc kc_tok_key_wrap(kc_tok *t, kc_wrap_mech mech, kc_obj kek, kc_obj key,
                                unsigned char **out, size_t *out_len, kc_error *err) KC_MUST_CHECK;

/* Unwraps an RSA private key (PKCS#8) under kek into a token object made
 * after spec. On failure nothing of it stays on the token. A module that
 * takes no CKA_SENSITIVE or CKA_EXTRACTABLE in an unwrap template
 * (openCryptoki 3.8.1) unwraps a software key (spec not sensitive) without
 * them; a sensitive key is never made readable there, even for a moment:
 * refused. */
KC_EXPORT kc_rc kc_tok_key_unwrap_rsa(kc_tok *t, kc_wrap_mech mech, kc_obj kek,
                                      const unsigned char *in, size_t in_len,
                                      const kc_rsa_spec *spec, kc_obj *out,
                                      kc_error *err) KC_MUST_CHECK;

/* RSA-OAEP (SHA-1) unwrap of an AES key into a session object that can only
 * unwrap (the first step of CKM_RSA_AES_KEY_WRAP). Destroy it after use. */
KC_EXPORT kc_rc kc_tok_oaep_unwrap_aes(kc_tok *t, kc_obj priv, const unsigned char *in,
                                       size_t in_len, kc_obj *out, kc_error *err) KC_MUST_CHECK;

/* AES-256-GCM on the token under key (which must allow CKA_ENCRYPT /
 * CKA_DECRYPT): sealed = 12-byte IV from the token's RNG || ciphertext ||
 * 16-byte tag, with aad authenticated. Open fails with KC_INTEGRITY when the
 * tag does not verify. */
KC_EXPORT kc_rc kc_tok_gcm_seal(kc_tok *t, kc_obj key, const unsigned char *aad, size_t aad_len,
                                const unsigned char *in, size_t in_len, unsigned char **sealed,
                                size_t *sealed_len, kc_error *err) KC_MUST_CHECK;
KC_EXPORT kc_rc kc_tok_gcm_open(kc_tok *t, kc_obj key, const unsigned char *aad, size_t aad_len,
                                const unsigned char *sealed, size_t sealed_len, unsigned char **out,
                                size_t *out_len, kc_error *err) KC_MUST_CHECK;

/* HMAC-SHA256 of data under key, computed on the token. */
KC_EXPORT kc_rc kc_tok_hmac(kc_tok *t, kc_obj key, const unsigned char *data, size_t len,
                            unsigned char mac[32], kc_error *err) KC_MUST_CHECK;
/* Verifies on the token; a wrong MAC is KC_INTEGRITY. */
KC_EXPORT kc_rc kc_tok_hmac_verify(kc_tok *t, kc_obj key, const unsigned char *data, size_t len,
                                   const unsigned char mac[32], kc_error *err) KC_MUST_CHECK;

/* --- RSA-OAEP wrap and unwrap of a short secret --- */

/* Wraps secret (loaded as a session generic-secret object and destroyed
 * again) with C_WrapKey under the public key pub. With KC_OAEP_AUTO the hash
 * is SHA-256 where the module accepts it, else SHA-1; *used says which. */
KC_EXPORT kc_rc kc_tok_oaep_wrap(kc_tok *t, kc_obj pub, kc_oaep hash, const kc_secret *secret,
                                 unsigned char **out, size_t *out_len, kc_oaep *used,
                                 kc_error *err) KC_MUST_CHECK;

/* C_UnwrapKey under priv into a session generic-secret object, reads the
 * value into a new secret and destroys the object. */
KC_EXPORT kc_rc kc_tok_oaep_unwrap(kc_tok *t, kc_obj priv, kc_oaep hash, const unsigned char *in,
                                   size_t in_len, kc_secret **out, kc_error *err) KC_MUST_CHECK;

/* --- data objects --- */

/* CKO_DATA objects of the given application (and label, when not NULL)
 * that are where says (KC_WHERE_TRUSTED means public for data objects);
 * *others (when not NULL) counts those that are not. */
KC_EXPORT kc_rc kc_tok_find_data(kc_tok *t, const char *application, const char *label,
                                 kc_where where, kc_data_obj **out, size_t *n, size_t *others,
                                 kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_p11_data_objs_free(kc_data_obj *objs, size_t n);
/* The same for two labels at once, from one search: those labelled la in
 * *a (*others_a counting the ones that are not where says), those
 * labelled lb in *b. */
KC_EXPORT kc_rc kc_tok_find_data_two(kc_tok *t, const char *application, const char *la,
                                     const char *lb, kc_where where, kc_data_obj **a, size_t *na,
                                     size_t *others_a, kc_data_obj **b, size_t *nb,
                                     kc_error *err) KC_MUST_CHECK;
/* Whether obj is still one of the data objects of (application, label) the
 * session sees: a search, so that an object another process destroyed is
 * seen gone, and, when the search leaves it out, the object itself (gone
 * only when its handle is no longer valid: a search under parallel writers
 * can leave out an object that is there). */
KC_EXPORT kc_rc kc_tok_data_present(kc_tok *t, const char *application, const char *label,
                                    kc_obj obj, int *present, kc_error *err) KC_MUST_CHECK;

KC_EXPORT kc_rc kc_tok_create_data(kc_tok *t, const char *application, const char *label,
                                   const void *value, size_t len, int is_private, kc_obj *out,
                                   kc_error *err) KC_MUST_CHECK;

/* --- errors --- */

/* "CKR_PIN_INCORRECT" for rv, or "CKR_0x..." when unknown. */
KC_EXPORT const char *kc_p11_rv_name(unsigned long rv);

/* --- fault injection (test seam) ---
 * After kc_p11_fault_arm("C_Login", "CKR_PIN_INCORRECT", 2, 0), the next
 * module loaded with an explicit path gets a copy of its function list in
 * which the 2nd call of C_Login returns CKR_PIN_INCORRECT without reaching the
 * module (after != 0: it reaches the module first, then reports the error,
 * like a module that did the work and lost the reply; C_FindObjects armed
 * after with CKR_OK leaves out of its reply what it found). Process-wide. */
KC_EXPORT kc_rc kc_p11_fault_arm(const char *func, const char *rv_name, unsigned nth, int after,
                                 kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_p11_fault_disarm(void);
/* How many times the armed function has been called so far. */
KC_EXPORT unsigned kc_p11_fault_calls(void);
/* Seconds spent inside the module by the armed function's calls that were
 * passed through (a benchmark arms it with a call number never reached to
 * time one function). */
KC_EXPORT double kc_p11_fault_seconds(void);
/* Armed as "*" (every function of the seam passed through, none failed,
 * e.g. kc_p11_fault_arm("*", "CKR_OK", 1, 0)): one function's calls and
 * seconds inside the module since the module was loaded. */
KC_EXPORT unsigned kc_p11_fault_calls_of(const char *func);
KC_EXPORT double kc_p11_fault_seconds_of(const char *func);

/* --- what a module can do (kc_p11_probe.c) ---
 *
 * Asked of the module on session objects, which go with the session:
 * nothing on the token changes. Facts that need a key are checked against
 * OpenSSL (which AES key-wrap mechanism is RFC 5649, OAEP both ways), not
 * believed by mechanism number. Without the user PIN, only what a public
 * session can ask is asked; the rest is KC_CAP_UNKNOWN. */

typedef enum kc_cap { KC_CAP_UNKNOWN = 0, KC_CAP_YES, KC_CAP_NO } kc_cap;

typedef struct kc_probe_fact {
    const char *id; /* e.g. "aes_key_wrap.rfc5649", "wrap_with_trusted.enforced" */
    kc_cap cap;
    char detail[240]; /* how the module answered: the mechanism, the CKR_ name */
} kc_probe_fact;

typedef struct kc_mech {
    unsigned long type;
    char name[48]; /* "CKM_..." */
    unsigned long min_bits, max_bits;
    unsigned long flags_raw;
    char flags[128]; /* "encrypt,decrypt,wrap,..." */
} kc_mech;

#define KC_PROBE_MAX 32

typedef struct kc_probe {
    kc_tok_info token;
    int logged_in;
    kc_mech *mechs;
    size_t nmechs;
    kc_probe_fact facts[KC_PROBE_MAX];
    size_t nfacts;
    unsigned long kwp_mech; /* the mechanism that wraps as RFC 5649; 0: none */
    /* The first call that failed for a reason that says nothing of what the
     * module can do (a lost session, a full device; kc_p11_rv_broken):
     * kc_tok_probe then fails, as its facts would not be answers. */
    unsigned long broken_rv; /* 0: none */
    char broken_at[32];      /* the C_ function */
} kc_probe;

/* How much kc_tok_probe asks. */
enum {
    KC_PROBE_CHEAP = 0, /* mechanisms and data objects: no key is made */
    KC_PROBE_VAULT = 1, /* and what a vault's arrangement rests on: AES session keys only
                         * (key wrap, the trusted-key arrangement, the attributes taken) */
    KC_PROBE_FULL = 2,  /* and unwrap templates and OAEP, on an RSA session key pair */
};

/* Probes t (logged in or not) to the given level (KC_PROBE_*).
 * kc_probe_release frees what it holds. Fails (and holds nothing) where a
 * call broke rather than being answered (broken_rv). */
KC_EXPORT kc_rc kc_tok_probe(kc_tok *t, int level, kc_probe *out, kc_error *err) KC_MUST_CHECK;

/* How a vault on a module keeps what keycustody promises, chosen from what
 * the module can do (a KC_PROBE_VAULT probe, logged in) at 'vault init' and
 * recorded in the vault's signed metadata; a vault made before keycustody
 * recorded it has SoftHSM's (all members 0). */
typedef struct kc_arrangement {
    kc_signer_kind signer;
    /* hsm keys: 0, extractable only under a key the SO marked trusted
     * (CKA_WRAP_WITH_TRUSTED enforced, CKA_TRUSTED the SO's alone); 1,
     * non-extractable, so never backed up */
    int hsm_non_extractable;
    kc_wrap_mech key_wrap; /* for backups: RFC 5649 where the module has it */
    int no_gcm;            /* no AES-GCM: a backup's wrapped keys are not sealed again */
} kc_arrangement;

/* The arrangement the probe p (KC_PROBE_VAULT or more) allows, or KC_TOKEN
 * naming what the module lacks for a vault. */
KC_EXPORT kc_rc kc_probe_arrangement(const kc_probe *p, kc_arrangement *out,
                                     kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_probe_release(kc_probe *p);
KC_EXPORT const kc_probe_fact *kc_probe_get(const kc_probe *p, const char *id);
KC_EXPORT kc_cap kc_probe_cap(const kc_probe *p, const char *id);

/* One loaded module. */
typedef struct kc_module_info {
    char name[64];      /* its p11-kit registry name; "" when given by path */
    char path[256];     /* the file */
    char manufacturer[33];
    char description[33];
    char version[16];   /* the library's */
    char cryptoki[16];  /* the PKCS#11 version it implements */
    size_t ntokens;     /* slots with a token present */
    char source[400];   /* what was asked for, where it says more than path (the p11-kit
                         * server a module file's remote: names, a module file's options) */
} kc_module_info;

/* The loaded modules; *out is an array the caller frees. */
KC_EXPORT kc_rc kc_p11_modules(kc_p11 *p, kc_module_info **out, size_t *n,
                               kc_error *err) KC_MUST_CHECK;

#endif
