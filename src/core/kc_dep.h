/* Data encryption policies: a DEP key (AES-256, made by the service token's
 * RNG) that either custodian vault can unwrap, wrapped with RSA-OAEP under
 * the current version of each of its two root keys and under an
 * availability key of its own on the service vault. The record and the
 * three wrapped copies live in the service store; the DEP key itself is
 * never stored and is wiped after use. */
#ifndef KC_DEP_H
#define KC_DEP_H

#include "kc_db.h"
#include "kc_store.h"
#include "kc_vault.h"

#define KC_DEP_SLOTS 3 /* root key A, root key B, availability key */

typedef struct kc_dep_key {
    char vault[64];
    char key[127 + 1];
    char version[129];
    char alg[16];
    unsigned char kcv[16]; /* the check value of the DEP key it wraps (the same in each slot) */
} kc_dep_key;

typedef struct kc_dep {
    char id[37]; /* GUID */
    char name[65];
    char workload[16]; /* tenant | exchange | sharepoint */
    char geo[16];
    char description[256];
    int enabled;
    char created[21];
    long generation;
    kc_dep_key keys[KC_DEP_SLOTS];
    char principal[128]; /* the service principal that wraps and unwraps its key */
    char purge_requested[21], purge_reason[256], purge_contact[256];
    char purged[21];           /* when it was crypto-shredded; "" if not */
    long break_glass;          /* uses of the availability key */
    char break_glass_last[21]; /* the last one */
} kc_dep;

/* The service-managed key's DEP (workload "service"): only an availability
 * key on the service vault, no custodian keys. A tenant that offboards has
 * its scope keys moved under it. */
#define KC_DEP_SERVICE "service-managed"

typedef struct kc_dep_spec {
    const char *name, *workload, *geo, *description;
    const char *keys[2]; /* VAULT/KEY of the two root keys */
    const char *service_vault;
    const char *principal; /* who acts: needs wrapKey on both custodian vaults and
                            * create on the service vault, where they have a policy */
} kc_dep_spec;

/* KC_USAGE unless name is 1 to 64 letters, digits and '-' (a key name's rule). */
KC_EXPORT kc_rc kc_dep_check_name(const char *name, kc_error *err) KC_MUST_CHECK;

/* Makes the DEP: its key from the service vault's RNG, wrapped under the
 * root keys' current versions (public-key operations: no custodian PIN)
 * and under a new availability key on the service vault (its PIN), and
 * the record in the store, in one transaction. On failure nothing stays:
 * neither the availability key nor a record. */
KC_EXPORT kc_rc kc_dep_create(kc_ctx *ctx, kc_store *st, const kc_dep_spec *spec, kc_dep *out,
                              kc_error *err) KC_MUST_CHECK;

/* Every DEP, by name. *out is freed by the caller. */
KC_EXPORT kc_rc kc_dep_list(kc_store *st, kc_dep **out, size_t *n, kc_error *err) KC_MUST_CHECK;

/* One DEP by name or id; KC_NOT_FOUND otherwise. */
KC_EXPORT kc_rc kc_dep_get(kc_store *st, const char *name_or_id, kc_dep *out,
                           kc_error *err) KC_MUST_CHECK;

/* Changes enabled (when enabled != NULL), the name and the description
 * (when not NULL). Disabling an assigned DEP is refused (KC_CONFLICT). */
KC_EXPORT kc_rc kc_dep_set(kc_store *st, const char *name_or_id, const int *enabled,
                           const char *new_name, const char *description,
                           kc_error *err) KC_MUST_CHECK;

/* Assignments. A scope is "tenant", "mailbox:ID" or "geo:CODE". */
typedef struct kc_dep_assignment {
    char scope[80];
    char dep_id[37];
    char dep_name[65];
} kc_dep_assignment;

/* KC_USAGE unless scope is well formed. */
KC_EXPORT kc_rc kc_dep_scope_check(const char *scope, kc_error *err) KC_MUST_CHECK;

/* Assigns the DEP to scope, replacing any DEP it had (returned in *prev,
 * zeroed if none); name_or_id NULL removes the assignment. The workload
 * must match (tenant, exchange for mailbox:, sharepoint for geo:); a
 * disabled or purge-requested DEP is refused (KC_CONFLICT). */
KC_EXPORT kc_rc kc_dep_assign(kc_store *st, const char *name_or_id, const char *scope, kc_dep *prev,
                              kc_error *err) KC_MUST_CHECK;

/* The DEP in force for scope: its own, or for a mailbox without one the
 * tenant DEP (*inherited = 1). KC_NOT_FOUND when none. */
KC_EXPORT kc_rc kc_dep_effective(kc_store *st, const char *scope, kc_dep *out, int *inherited,
                                 kc_error *err) KC_MUST_CHECK;
/* The tenant DEP that mailboxes without their own inherit, and the last
 * DEP row read by id, each read and checked once per cache (zeroed by the
 * caller): valid while no assignment can change, i.e. within one store
 * transaction (a re-wrap batch). */
typedef struct kc_dep_tenant_cache {
    int known;
    kc_dep dep;
    int last_known;
    kc_dep last;
} kc_dep_tenant_cache;
/* The DEP in force for scope, with the DEP's own checked row only (id,
 * generation, state: its keys and break-glass uses are not read), and the
 * scope's own assignment row read in q already (a re-wrap batch or a
 * worker's claim): columns col, col + 1 and col + 2 are its scope, dep_id
 * and mac, all NULL when it has none. The row's MAC is checked. */
KC_EXPORT kc_rc kc_dep_effective_claimed(kc_store *st, const char *scope, kc_q *q, int col,
                                         kc_dep_tenant_cache *cache, kc_dep *out,
                                         kc_error *err) KC_MUST_CHECK;

/* Every assignment, by scope. *out is freed by the caller. */
KC_EXPORT kc_rc kc_dep_assignments(kc_store *st, kc_dep_assignment **out, size_t *n,
                                   kc_error *err) KC_MUST_CHECK;

#define KC_DEP_USE_AVAILABILITY 1u /* break glass: both custodian vaults unavailable */

typedef struct kc_dep_unwrap_info {
    int slot;             /* which copy unwrapped: 0 A, 1 B, 2 availability; -1 none */
    int break_glass;      /* the availability key stood in for both custodian vaults (not
                           * the service-managed key's own, which has only that copy) */
    char skipped[2][512]; /* why vault A / B was skipped ("" if not tried or used) */
} kc_dep_unwrap_info;

/* The DEP key of generation (0: the current one; an older one while a
 * roll is under way), unwrapped by custodian vault A, else B (each skipped vault
 * is named in info->skipped), else, only with KC_DEP_USE_AVAILABILITY, by
 * the availability key; KC_TOKEN when none could. principal needs
 * unwrapKey where a vault has an access policy. *out is wiped on free. */
KC_EXPORT kc_rc kc_dep_unwrap(kc_ctx *ctx, kc_store *st, const char *name_or_id, long generation,
                              const char *principal, unsigned flags, kc_secret **out,
                              kc_dep_unwrap_info *info, kc_error *err) KC_MUST_CHECK;

/* Re-wraps the DEP key under the current version of each root key (after
 * a rotation): unwraps it as kc_dep_unwrap does (no availability key),
 * wraps it again, and replaces both wrapped copies in one transaction.
 * With roll, makes a new DEP key instead (the next generation, wrapped
 * three ways); the scope keys stay under the old one until kc_rewrap
 * moves them (status Rolling), and a second roll waits for that
 * (KC_CONFLICT). *before and *after are the records either side. */
KC_EXPORT kc_rc kc_dep_refresh(kc_ctx *ctx, kc_store *st, const char *name_or_id,
                               const char *principal, int roll, kc_dep *before, kc_dep *after,
                               kc_error *err) KC_MUST_CHECK;

/* The service-managed DEP, made on service_vault the first time. */
KC_EXPORT kc_rc kc_dep_service(kc_ctx *ctx, kc_store *st, const char *service_vault,
                               const char *principal, kc_dep *out, kc_error *err) KC_MUST_CHECK;

/* Records PermanentDataPurgeRequested (reason, contact) on an Exchange or
 * SharePoint DEP; refused (KC_CONFLICT) for a tenant DEP, and while the
 * DEP's service principal still holds wrapKey or unwrapKey on either
 * custodian vault (or a vault has no access policy). The DEP can never be
 * assigned again. */
KC_EXPORT kc_rc kc_dep_purge_request(kc_ctx *ctx, kc_store *st, const char *name_or_id,
                                     const char *reason, const char *contact, kc_dep *out,
                                     kc_error *err) KC_MUST_CHECK;

/* Crypto-shreds a DEP whose purge was requested: in one transaction every
 * wrapped copy of its key (all generations) and of its scope keys is
 * destroyed and its assignments removed, the store is scrubbed, then its
 * availability key is destroyed on the service vault. *scopes: how many
 * scope keys went. Running it again finishes an interrupted purge; on a
 * finished one it is KC_CONFLICT. */
KC_EXPORT kc_rc kc_dep_purge(kc_ctx *ctx, kc_store *st, const char *name_or_id, kc_dep *out,
                             long *scopes, kc_error *err) KC_MUST_CHECK;

#endif
