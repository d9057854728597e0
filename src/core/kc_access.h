/* Access policies: principals with Key Vault's key permissions, stored in
 * the vault metadata. They are guard rails that prevent mistakes and are
 * recorded; the security boundary is each vault's PIN (split custody). */
#ifndef KC_ACCESS_H
#define KC_ACCESS_H

#include "kc_error.h"

#include <stddef.h>

enum {
    KC_PERM_GET = 1u << 0,
    KC_PERM_LIST = 1u << 1,
    KC_PERM_CREATE = 1u << 2,
    KC_PERM_IMPORT = 1u << 3,
    KC_PERM_UPDATE = 1u << 4,
    KC_PERM_DELETE = 1u << 5,
    KC_PERM_RECOVER = 1u << 6,
    KC_PERM_BACKUP = 1u << 7,
    KC_PERM_RESTORE = 1u << 8,
    KC_PERM_PURGE = 1u << 9,
    KC_PERM_ROTATE = 1u << 10,
    KC_PERM_WRAP = 1u << 11,
    KC_PERM_UNWRAP = 1u << 12,
    KC_PERM_ENCRYPT = 1u << 13,
    KC_PERM_DECRYPT = 1u << 14,
    KC_PERM_SIGN = 1u << 15,
    KC_PERM_VERIFY = 1u << 16,
};
/* Customer Key's roles: administrators deliberately cannot delete. */
#define KC_ROLE_ADMINISTRATOR                                                                      \
    (KC_PERM_CREATE | KC_PERM_IMPORT | KC_PERM_LIST | KC_PERM_GET | KC_PERM_BACKUP |               \
     KC_PERM_RESTORE)
#define KC_ROLE_SERVICE (KC_PERM_GET | KC_PERM_WRAP | KC_PERM_UNWRAP)

#define KC_ACCESS_MAX 32

typedef struct kc_access_entry {
    char principal[128];
    unsigned perms;
} kc_access_entry;

/* One permission name -> its bit; -1 when unknown. */
KC_EXPORT int kc_perms_parse(const char *name, unsigned *perm);
/* "get,wrapKey,..." -> bits, KC_USAGE naming an unknown one. */
KC_EXPORT kc_rc kc_perms_parse_list(const char *csv, unsigned *perms, kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_perms_format(unsigned perms, char *buf, size_t len);

#endif
