/* Key backups: every version of a key, each private key wrapped on the
 * token under the subscription's backup domain, authenticated as a whole by
 * an HMAC computed on the token.
 *
 * File format, version 1 (all integers big-endian):
 *   0   8 bytes  magic "KCBACKUP"
 *   8   1 byte   format version (1)
 *   9   3 bytes  zero
 *   12  4 bytes  body length L (at most KC_BACKUP_BODY_MAX)
 *   16  L bytes  body: JSON (see docs in README), names, versions, ops,
 *                dates, tags, public keys (DER SubjectPublicKeyInfo) and
 *                private keys (AES key wrap with padding, RFC 5649, under the
 *                domain key), all base64url
 *   16+L 32 bytes HMAC-SHA256 over bytes [0, 16+L) under the domain MAC key
 * The file is exactly 48 + L bytes. Nothing in the body is acted on before
 * the MAC verifies on the restoring vault's token. */
#ifndef KC_BACKUP_H
#define KC_BACKUP_H

#include "kc_key.h"

#define KC_BACKUP_MAGIC "KCBACKUP"
#define KC_BACKUP_BODY_MAX (4u << 20)
#define KC_BACKUP_FILE_MAX (KC_BACKUP_BODY_MAX + 48u)

/* The backup of key name (all versions), as the bytes of a .backup file. */
KC_EXPORT kc_rc kc_backup_key(kc_vault *v, const char *name, unsigned char **out, size_t *len,
                              kc_error *err) KC_MUST_CHECK;

/* Restores a backup into v. KC_INTEGRITY for a truncated, altered or foreign
 * file (naming both subscriptions when they differ), KC_CONFLICT when the
 * name exists (active or deleted). On any failure nothing stays on the
 * token. *name receives the key's name. */
KC_EXPORT kc_rc kc_restore_key(kc_vault *v, const unsigned char *buf, size_t len,
                               char name[KC_KEY_NAME_MAX + 1], size_t *nversions,
                               kc_error *err) KC_MUST_CHECK;

/* The token-free part of reading a backup: framing, then the body parsed and
 * checked field by field. For the fuzzer and for tests; restore runs it
 * only after the MAC verifies. */
KC_EXPORT kc_rc kc_backup_check(const unsigned char *buf, size_t len, kc_error *err) KC_MUST_CHECK;

#endif
