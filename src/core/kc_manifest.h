/* The vault manifest: what a reader without the vault's PIN relies on,
 * signed by the vault itself.
 *
 * On SoftHSM anyone who can open a read-write session (or write the token
 * directory) can create, change and destroy public objects, so nothing public
 * is believed for what it says. The vault keeps an EC P-256 key pair,
 * "keycustody-vault-key", generated on the token at vault init: its private
 * half private, sensitive, never extractable, sign only. It signs the
 * manifest, a public document that holds the vault metadata (subscription,
 * region, SKU, retention, purge protection, access policy, backup domain) and,
 * for each key, which version is current, whether it is deleted, and for each
 * version whether it is enabled, its operations and the SHA-256 of its public
 * key (SubjectPublicKeyInfo). Readers verify it with the public half, whose
 * fingerprint (SHA-256 of its SubjectPublicKeyInfo) `vault init` and
 * `vault show` print and a layout or the service store can pin: a public half
 * replaced by an attacker then fails the pin.
 *
 * The manifest is kept as the vault metadata document ("keycustody-vault"),
 * in generations like every document on a token; each one on the token must
 * verify (a public one that does not is tampering, never skipped). */
#ifndef KC_MANIFEST_H
#define KC_MANIFEST_H

#include "kc_gendoc.h"
#include "kc_vault.h"

#include <jansson.h>

#define KC_MANIFEST_KEY_LABEL "keycustody-vault-key"
#define KC_FINGERPRINT_HEX 64

/* The signed manifest of tok, verified: *manifest (caller json_decref's),
 * the signer's fingerprint in fp. expect_fp (may be NULL or "") is a pinned
 * fingerprint: another one is KC_INTEGRITY with a hint to compare out of band.
 * KC_NOT_FOUND when the token holds no manifest (not a vault). *next: the
 * generation the next write uses; *ref (may be NULL): the object it was
 * read from. */
KC_EXPORT kc_rc kc_manifest_read(kc_tok *tok, const char *expect_fp, json_t **manifest,
                                 char fp[KC_FINGERPRINT_HEX + 1], unsigned long *next,
                                 kc_gendoc_ref *ref, kc_error *err) KC_MUST_CHECK;

/* Writes the manifest of v (logged in) as the next generation: m as its
 * vault metadata (m->generation is set to it), the keys from the key state
 * and the token's key objects. Makes the vault key when the vault has none. */
KC_EXPORT kc_rc kc_manifest_write(kc_vault *v, kc_vault_meta *m, kc_error *err) KC_MUST_CHECK;

/* kc_manifest_write, as a generation newer than after. */
KC_EXPORT kc_rc kc_manifest_write_after(kc_vault *v, kc_vault_meta *m, unsigned long after,
                                        kc_error *err) KC_MUST_CHECK;

/* --- the private record of the current manifest (kc_current.c) ---
 *
 * With every manifest it writes, keycustody records in a private object
 * (KC_MANIFEST_CURRENT_LABEL) its generation, SHA-256 and vault metadata.
 * Someone without the PIN can put an older signed manifest back on the
 * token, but cannot touch the record: a command that logs in compares the
 * manifest it opened with it (kc_vault_login). */
#define KC_MANIFEST_CURRENT_LABEL "keycustody-vault.current"

/* SHA-256 (hex) of a manifest document as stored. */
KC_EXPORT void kc_manifest_digest(const char *doc, char out[KC_FINGERPRINT_HEX + 1]);

/* Records that generation (digest, metadata m) is v's current manifest and
 * removes older records. KC_TOKEN when the token would not store it (err
 * has the module's cause; the caller says what was written). */
KC_EXPORT kc_rc kc_manifest_record_current(kc_vault *v, const kc_vault_meta *m,
                                           unsigned long generation,
                                           const char digest[KC_FINGERPRINT_HEX + 1],
                                           kc_error *err) KC_MUST_CHECK;

/* v logged in: KC_OK when the manifest v was opened with is the recorded
 * one, or newer (its writer stopped before recording it), or when there is
 * no record (one is made for it: a vault from before records). KC_CONFLICT
 * when the token holds the recorded one or a newer one by now (another
 * writer since v was opened). KC_INTEGRITY when it was rolled back (an
 * older generation put back). */
KC_EXPORT kc_rc kc_manifest_check_current(kc_vault *v, kc_error *err) KC_MUST_CHECK;

/* Before a write over base (logged in): KC_INTEGRITY when base is older
 * than the record or another document of its generation, so that no write
 * commits over a manifest put back (and its sweep removes the real one). */
KC_EXPORT kc_rc kc_manifest_check_base(kc_vault *v, const kc_gendoc_ref *base,
                                       kc_error *err) KC_MUST_CHECK;

/* Destroys public objects labelled like the private record (not the
 * vault's: planted). */
KC_EXPORT kc_rc kc_manifest_remove_planted(kc_vault *v, size_t *removed,
                                           kc_error *err) KC_MUST_CHECK;

/* After a rollback: signs the recorded metadata (and the key state) again
 * as a generation newer than the record; *restored is that generation, 0
 * when the token's manifest was current and nothing was written. */
KC_EXPORT kc_rc kc_manifest_restore_current(kc_vault *v, unsigned long *restored,
                                            kc_error *err) KC_MUST_CHECK;

/* After a document the token should have was not found: KC_OK when the
 * token still answers (the document is missing), else why not, with a hint
 * (SoftHSM 2.6.1 stops answering for a token a process read while another
 * rewrote it). */
KC_EXPORT kc_rc kc_tok_still_answers(kc_tok *tok, kc_error *err) KC_MUST_CHECK;

/* KC_CONFLICT: v's document what is at generation now on the token, not at
 * the generation read that this command changed (now == read: another
 * document of that generation). */
KC_EXPORT kc_rc kc_vault_changed_meanwhile(const kc_vault *v, const char *what, unsigned long read,
                                           unsigned long now, kc_error *err) KC_MUST_CHECK;

/* The vault key's fingerprint (SHA-256 of its SubjectPublicKeyInfo, hex).
 * KC_NOT_FOUND when there is none. */
KC_EXPORT kc_rc kc_manifest_fingerprint(kc_tok *tok, char fp[KC_FINGERPRINT_HEX + 1],
                                        kc_error *err) KC_MUST_CHECK;

/* SHA-256 (hex) of the DER SubjectPublicKeyInfo of an OpenSSL EVP_PKEY:
 * how keycustody names a vault key, a key version or a custodian. */
KC_EXPORT kc_rc kc_spki_fingerprint(void *pkey, char fp[KC_FINGERPRINT_HEX + 1],
                                    kc_error *err) KC_MUST_CHECK;

/* An OpenSSL EVP_PKEY (caller EVP_PKEY_free's) of the RSA public key n, e
 * (big-endian). */
KC_EXPORT kc_rc kc_rsa_public_pkey(const unsigned char *n, size_t n_len, const unsigned char *e,
                                   size_t e_len, void **pkey, kc_error *err) KC_MUST_CHECK;

/* SHA-256 (hex) of the SubjectPublicKeyInfo of an RSA public key. */
KC_EXPORT kc_rc kc_manifest_rsa_spki_hash(const unsigned char *n, size_t n_len,
                                          const unsigned char *e, size_t e_len,
                                          char out[KC_FINGERPRINT_HEX + 1],
                                          kc_error *err) KC_MUST_CHECK;

/* A kc_gendoc_check for manifest documents; arg is the signer's EVP_PKEY. */
KC_EXPORT kc_rc kc_manifest_doc_check(const unsigned char *buf, size_t len,
                                      unsigned long *generation,
                                      char base[KC_GENDOC_DIGEST_HEX + 1], void *arg,
                                      kc_error *err);

/* The signer's public key on tok (release with kc_manifest_signer_free),
 * for kc_manifest_doc_check. */
KC_EXPORT kc_rc kc_manifest_signer(kc_tok *tok, void **pkey, char fp[KC_FINGERPRINT_HEX + 1],
                                   kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_manifest_signer_free(void *pkey);

#endif
