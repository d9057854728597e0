/* The layout file: the desired state of a Customer Key arrangement, read
 * from YAML into typed structures. Every field remembers where it was
 * written, so every diagnostic can point at file:line:col. The schema is in
 * docs/layout.md. */
#ifndef KC_LAYOUT_H
#define KC_LAYOUT_H

#include "kc_diag.h"
#include "kc_access.h"
#include "kc_key.h"

typedef struct kc_lpos {
    int line, col;
} kc_lpos;

typedef struct kc_lsub {
    char id[65], name[128];
    int mandatory_retention;
    kc_lpos pos;
} kc_lsub;

typedef struct kc_lprincipal {
    char name[128];
    char role[16];  /* "" when permissions are listed */
    unsigned perms; /* expanded */
    kc_lpos pos, perms_pos;
} kc_lprincipal;

typedef struct kc_lkey {
    char name[KC_KEY_NAME_MAX + 1];
    char kty[8]; /* "RSA" or "EC" */
    unsigned bits;
    kc_protection protection;
    unsigned ops;
    char expires[11]; /* "" for never */
    kc_tag tags[KC_KEY_TAGS_MAX];
    size_t ntags;
    kc_lpos pos, kty_pos, size_pos, protection_pos, ops_pos, expires_pos;
} kc_lkey;

typedef struct kc_lvault {
    char name[64];
    char subscription[65];
    char region[33];
    kc_sku sku;
    char token[512]; /* URI or label; "" = the name */
    char module[256];
    char fingerprint[80]; /* the vault key's, 64 hex digits once read ("" = not pinned) */
    kc_lpos fingerprint_pos;
    char pin[300], so_pin[300];
    unsigned retention_days;
    int soft_delete, purge_protection;
    kc_lprincipal *access;
    size_t naccess;
    kc_lkey *keys;
    size_t nkeys;
    /* live only: what interrupted writes left (half-made key versions,
     * older generations of the vault's documents) */
    size_t half_made, stale;
    kc_lpos pos, name_pos, subscription_pos, region_pos, sku_pos, pin_pos, so_pin_pos,
        retention_pos, soft_delete_pos, purge_pos, access_pos;
} kc_lvault;

typedef struct kc_ldep {
    char name[65];
    char workload[16]; /* tenant | exchange | sharepoint */
    char geo[16];
    char keys[2][KC_KEY_NAME_MAX + 64]; /* VAULT/KEY */
    size_t nkeys;
    char description[256];
    int enabled;
    char waiver[256]; /* reason the region-pair rule is waived, "" when not */
    kc_lpos pos, workload_pos, geo_pos, keys_pos, key_pos[2], waiver_pos;
} kc_ldep;

typedef struct kc_lassign {
    char target[256]; /* mailbox id or geo code; "" for the tenant */
    char dep[65];
    kc_lpos pos, dep_pos;
} kc_lassign;

typedef struct kc_layout {
    char file[512];
    kc_lsub *subs;
    size_t nsubs;
    kc_lvault *vaults;
    size_t nvaults;
    char service_vault[64];
    kc_lpos service_vault_pos;
    char service_principal[128];
    kc_lpos service_principal_pos;
    char store[512]; /* the service store; relative to the layout file's directory */
    kc_lpos store_pos;
    char audit[512]; /* the audit log; relative to the layout file's directory */
    kc_lpos audit_pos;
    kc_ldep *deps;
    size_t ndeps;
    kc_lassign tenant; /* dep "" when unassigned */
    kc_lassign *mailboxes, *geos;
    size_t nmailboxes, ngeos;
} kc_layout;

/* Reads a layout; on a structural error (syntax, unknown or duplicate key,
 * wrong type, missing field) returns NULL and the diagnostics say where. */
KC_EXPORT kc_layout *kc_layout_read(const char *file, const unsigned char *buf, size_t len,
                                    kc_diags *d);
KC_EXPORT void kc_layout_free(kc_layout *l);

/* The layout's validation rules (KC010 and up) as diagnostics. */
KC_EXPORT void kc_layout_validate(const kc_layout *l, kc_diags *d);

/* The same rules for what is live on tokens (vault validate), given as a
 * layout with no DEPs: every RSA key that is not a key-exchange key is
 * held to the root-key rules. */
KC_EXPORT void kc_layout_validate_live(const kc_layout *l, kc_diags *d);

/* Whether two Azure regions are a pair (either way), and whether a region
 * is known at all; the table is policies/regions.yaml, built in. */
KC_EXPORT int kc_region_known(const char *region);
KC_EXPORT int kc_region_paired(const char *a, const char *b);
KC_EXPORT const char *kc_region_table_date(void);

#endif
