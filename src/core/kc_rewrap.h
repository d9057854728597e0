/* Encryption status and the re-wrap job. Status is computed from the scope
 * keys: a scope's key should be wrapped by the current DEP key of its
 * effective DEP; the re-wrap job moves the ones that are not, a batch per
 * transaction, so a job that is killed loses at most the batch in hand and
 * the next run finishes it. */
#ifndef KC_REWRAP_H
#define KC_REWRAP_H

#include "kc_data.h"

typedef struct kc_dep_status {
    kc_dep dep;
    const char *state; /* Unregistered | Registering | Registered | Rolling | Purged */
    long done, total;  /* scope keys under its current key / scopes it is in force for */
    int percent;
} kc_dep_status;

typedef struct kc_scope_status {
    char scope[80];
    char dep_id[37]; /* the DEP its key is wrapped under ("" for a scope with no data) */
    char dep_name[65];
    long generation;    /* of that DEP's key */
    char target_id[37]; /* its effective DEP ("" when none) */
    char target_name[65];
    int encrypted;   /* IsEncrypted: under a customer DEP (not the service-managed key) */
    int pending;     /* the re-wrap job would move it */
    char purged[21]; /* when its key was destroyed; "" if not */
    long items;
} kc_scope_status;

/* Every DEP with its state. *out is freed by the caller. */
KC_EXPORT kc_rc kc_status_deps(kc_store *st, kc_dep_status **out, size_t *n,
                               kc_error *err) KC_MUST_CHECK;

/* Every scope that has data or an assignment (only == NULL), or just
 * scope only (KC_NOT_FOUND when it has neither). *out is freed by the caller. */
KC_EXPORT kc_rc kc_status_scopes(kc_store *st, const char *only, kc_scope_status **out, size_t *n,
                                 kc_error *err) KC_MUST_CHECK;

/* How far a re-wrap job has gone: done of total, resumed when a run before
 * this one was interrupted. */
typedef void (*kc_rewrap_progress)(void *arg, long done, long total, int resumed);

/* Moves every pending scope key (batch per transaction, batch >= 1),
 * calling progress after each batch; *moved: how many this run moved.
 * When none is left, the wrapped copies of DEP keys no scope needs any
 * more (older generations after a roll) are destroyed. */
KC_EXPORT kc_rc kc_rewrap(kc_data_session *s, kc_store *st, long batch, kc_rewrap_progress progress,
                          void *arg, long *moved, kc_error *err) KC_MUST_CHECK;

/* Offboarding, first step: the tenant scope is assigned to the
 * service-managed key (made on service_vault the first time), so the
 * tenant's scope keys are moved under it by kc_rewrap; *was is the tenant
 * DEP it had. Already offboarded: KC_OK with was->name "" (the caller
 * finishes the re-wrap). No tenant DEP: KC_NOT_FOUND. */
KC_EXPORT kc_rc kc_tenant_offboard(kc_ctx *ctx, kc_store *st, const char *service_vault,
                                   const char *principal, kc_dep *was, kc_dep *service,
                                   kc_error *err) KC_MUST_CHECK;

#endif
