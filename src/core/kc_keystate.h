/* The key state of a vault: what the token's attributes cannot hold.
 *
 * Per key: the current version, tags, and the soft-delete record; per
 * version: its creation time, whether it is enabled, and the operations it
 * is meant to allow (Key Vault's key_ops, including ones the token has no
 * attribute for). It is a private CKO_DATA document (label "keycustody-keys")
 * kept in generations like the vault metadata: private, so that nobody
 * without the vault's PIN can read it, undelete a key or re-enable one. */
#ifndef KC_KEYSTATE_H
#define KC_KEYSTATE_H

#include "kc_vault.h"

#include <jansson.h>

#define KC_KEYSTATE_LABEL "keycustody-keys"

/* Whether buf is a key state document (a kc_gendoc_check). */
KC_EXPORT kc_rc kc_keystate_doc_check(const unsigned char *buf, size_t len,
                                      unsigned long *generation, char base[65], void *arg,
                                      kc_error *err) KC_MUST_CHECK;
/* Loads the state into v->state (logs in first). A vault without one gets
 * an empty state. Cached: a second call does nothing. */
KC_EXPORT kc_rc kc_keystate_load(kc_vault *v, kc_error *err) KC_MUST_CHECK;

/* Writes v->state as a new generation. */
KC_EXPORT kc_rc kc_keystate_save(kc_vault *v, kc_error *err) KC_MUST_CHECK;

/* kc_keystate_save's two steps: commit v->state as the next generation
 * (KC_CONFLICT, nothing written, when another writer committed since it was
 * read), then sign the manifest over it; when another writer (another host)
 * committed a manifest meanwhile, the metadata and the key state are read
 * again, so the manifest names that writer's keys too. */
KC_EXPORT kc_rc kc_keystate_commit(kc_vault *v, kc_error *err) KC_MUST_CHECK;
KC_EXPORT kc_rc kc_keystate_sign(kc_vault *v, kc_error *err) KC_MUST_CHECK;
/* The generations an interrupted write left of the key state and of the
 * vault metadata: counts them or removes them (logs in). all: as
 * kc_gendoc_tidy's (everything stale, for a repair); 0: what is safe to
 * remove while other hosts write. */
KC_EXPORT kc_rc kc_keystate_stale(kc_vault *v, int all, size_t *stale, kc_error *err) KC_MUST_CHECK;
KC_EXPORT kc_rc kc_keystate_tidy(kc_vault *v, int all, size_t *removed, kc_error *err) KC_MUST_CHECK;

/* keys[name], created empty when create is set (NULL when absent). */
KC_EXPORT json_t *kc_keystate_key(kc_vault *v, const char *name, int create);
/* versions[version] of a key record, created when create is set. */
KC_EXPORT json_t *kc_keystate_version(json_t *key, const char *version, int create);
KC_EXPORT void kc_keystate_drop(kc_vault *v, const char *name);

/* Field helpers; absent fields read as the given default. */
KC_EXPORT const char *kc_keystate_str(json_t *o, const char *field, const char *dflt);
KC_EXPORT int kc_keystate_bool(json_t *o, const char *field, int dflt);

#endif
