/* Plan and apply: observe the live tokens, compare them with a layout,
 * and make ordered actions of the differences. The diff is read-only; apply
 * runs one action at a time, each of which converges when run again after
 * an interruption (vault init adopts, create finds the name taken and the
 * next plan no longer asks for it, orphans of a failed create are removed). */
#ifndef KC_PLAN_H
#define KC_PLAN_H

#include "kc_layout.h"

typedef enum kc_act_kind {
    KC_ACT_VAULT_INIT,    /* + initialise a free token as the vault */
    KC_ACT_VAULT_ADOPT,   /* + adopt an initialised token */
    KC_ACT_VAULT_META,    /* ~ SKU, retention, purge protection, registration */
    KC_ACT_KEY_CREATE,    /* + */
    KC_ACT_KEY_RECOVER,   /* ~ a soft-deleted key the layout wants */
    KC_ACT_KEY_ROTATE,    /* ~ size or protection: a new version */
    KC_ACT_KEY_REPAIR,    /* ~ remove a half-made version (a create killed mid-way), recreate */
    KC_ACT_KEY_RECORD,    /* ~ record versions an interrupted create left unrecorded */
    KC_ACT_KEY_UPDATE,    /* ~ ops, expiry, tags */
    KC_ACT_KEY_DELETE,    /* - soft delete (--allow-delete only) */
    KC_ACT_VAULT_TIDY,    /* ~ remove older generations an interrupted write left */
    KC_ACT_DEP_CREATE,    /* + a DEP, through kc_dep_create (after the keys it needs) */
    KC_ACT_DEP_UPDATE,    /* ~ description, enabled */
    KC_ACT_DEP_ASSIGN,    /* ~ a scope's DEP */
    KC_ACT_BLOCKED,       /* ! a difference no action can make */
    KC_ACT_ACCESS_ADD,    /* + a principal the vault's access policy lacks */
    KC_ACT_ACCESS_SET,    /* ~ a principal's permissions */
    KC_ACT_ACCESS_REMOVE, /* - a principal the layout no longer names */
} kc_act_kind;

struct json_t;

typedef struct kc_action {
    kc_act_kind kind;
    size_t vault;                       /* index into the layout's vaults */
    size_t key;                         /* index into that vault's keys (key actions) */
    char key_name[KC_KEY_NAME_MAX + 1]; /* for deletes, the live key's name */
    size_t dep;                         /* DEP actions: index into the layout's DEPs */
    char scope[80];                     /* assignments: tenant, mailbox:ID, geo:CODE */
    char dep_name[65];                  /* assignments: the DEP */
    char principal[128];                /* access actions */
    char what[320]; /* "create key VaultA1/K1 (RSA-3072, hsm, wrapKey,unwrapKey)" */
    char why[256];  /* the reason (for KC_ACT_BLOCKED, why it cannot be done) */
    /* What it is, as a path (docs/layout.md): vault.VaultA1,
     * vault.VaultA1.key.KeyA, vault.VaultA1.access.svc, dep.Dep1,
     * assignment.tenant; and its type: vault, key, access, dep, assignment. */
    char address[256];
    const char *type;
    /* Each attribute that changes, [{"attribute", "before", "after"}]:
     * before null for a create, after null for a delete. Owned. */
    struct json_t *changes;
} kc_action;

/* What a plan observed on one vault of the layout: a digest of its token
 * (label, serial), its metadata and access policy, its keys, their
 * versions and attributes, its deleted keys. Any write to the vault moves it. */
typedef struct kc_plan_seen {
    char vault[65];
    char digest[65];
} kc_plan_seen;

typedef struct kc_plan {
    kc_action *v;
    size_t n, cap;
    size_t add, change, destroy, blocked;
    char notes[8][256]; /* what plan saw but does not act on */
    size_t nnotes;
    kc_plan_seen *seen; /* one per layout vault, in layout order */
    size_t nseen;
    int store_read;        /* the DEP part read the service store (or found none) */
    char store_digest[65]; /* of the rows it read: the layout's DEPs, the assignments */
    int incomplete;        /* an action could not be recorded (out of memory) */
} kc_plan;

KC_EXPORT char kc_action_sign(kc_act_kind kind);
/* "create", "update" or "delete": what happens at the action's address. A
 * rotate is an update (a new version under the same name; nothing is
 * destroyed); a blocked change is the update the layout asks for. */
KC_EXPORT const char *kc_action_verb(kc_act_kind kind);
/* The action kind as a word: "key-rotate", "access-set", "dep-assign", ... */
KC_EXPORT const char *kc_action_operation(kc_act_kind kind);

/* One action as data: {"address", "type", "action", "operation",
 * "change" (+ ~ - !), "what", "why", "changes", "blocked" (the reason, or
 * null)}. The plan's: {"actions", "add", "change", "delete", "blocked",
 * "notes"}. New references; NULL when out of memory. */
KC_EXPORT struct json_t *kc_action_json(const kc_action *a);
KC_EXPORT struct json_t *kc_plan_json(const kc_plan *p);

/* Compares the tokens with the layout. Logs in to each existing vault with
 * its PIN to read its keys. */
KC_EXPORT kc_rc kc_plan_make(kc_ctx *ctx, const kc_layout *l, int allow_delete, kc_plan *out,
                             kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_plan_release(kc_plan *p);

/* The live state of vaults (names[], or every visible vault when n is 0)
 * as a layout without DEPs, for kc_layout_validate_live. Logs in to each to
 * read its keys. */
KC_EXPORT kc_rc kc_plan_observe(kc_ctx *ctx, const char *const *names, size_t n, kc_layout **out,
                                kc_error *err) KC_MUST_CHECK;

/* The layout rules for a new DEP over its two live root keys (vault
 * metadata and public keys: no custodian PIN), and the limits: at most 50
 * Exchange DEPs and one SharePoint DEP per geo among those in the store. */
struct kc_store;
struct kc_dep_spec;
KC_EXPORT kc_rc kc_plan_check_dep(kc_ctx *ctx, struct kc_store *st, const struct kc_dep_spec *spec,
                                  kc_diags *d, kc_error *err) KC_MUST_CHECK;

/* The DEP actions (appended to p, after the vault and key actions): each
 * layout DEP missing from the store is created, a changed description or
 * enabled flag updated, each assignment the layout names made. A DEP whose
 * workload, geo or root keys differ from the store's is blocked: a DEP's
 * keys never change (make a new DEP and assign it). st NULL: an empty
 * store (plan before the store exists). */
KC_EXPORT kc_rc kc_plan_deps(const kc_layout *l, struct kc_store *st, kc_plan *p,
                             kc_error *err) KC_MUST_CHECK;

/* Carries out one DEP action: DEPs are made on the layout's service vault
 * by its service principal, after the live rules are checked. */
KC_EXPORT kc_rc kc_plan_apply_dep(kc_ctx *ctx, const kc_layout *l, struct kc_store *st,
                                  const kc_action *a, kc_error *err) KC_MUST_CHECK;

/* Carries out one vault or key action. */
KC_EXPORT kc_rc kc_plan_apply(kc_ctx *ctx, const kc_layout *l, const kc_action *a,
                              kc_error *err) KC_MUST_CHECK;

/* The exclusive lock of an apply over one set of tokens: a file under
 * $XDG_RUNTIME_DIR (or /tmp) named after the module, the SoftHSM
 * configuration and the layout's vaults, holding who has it. wait_s: how
 * long to wait for another holder; then KC_CONFLICT naming the holder. */
KC_EXPORT kc_rc kc_plan_lock(const kc_layout *l, const char *module, unsigned wait_s, int *fd,
                             char *path, size_t path_len, kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_plan_unlock(int fd);

#endif
