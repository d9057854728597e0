/* The context every core operation runs in: the loaded PKCS#11 modules, and
 * how to get a PIN for a vault when one is needed (supplied by the front end,
 * which knows about sources and prompts). PINs are asked for lazily, used for
 * one C_Login and wiped. */
#ifndef KC_CTX_H
#define KC_CTX_H

#include "kc_p11.h"

typedef enum kc_pin_kind {
    KC_PIN_USER = 0, /* the vault custodian's PIN, to log in */
    KC_PIN_SO,       /* the token's security officer PIN */
    KC_PIN_NEW_USER, /* a user PIN to set (vault init) */
    KC_PIN_NEW_SO,   /* an SO PIN to set (vault init of a free token) */
} kc_pin_kind;

/* Fills *out with a new secret holding the PIN of kind for vault, or fails. */
typedef kc_rc (*kc_pin_fn)(void *arg, const char *vault, kc_pin_kind kind, kc_secret **out,
                           kc_error *err);

/* Told of events the audit log records on their own: "login" (a login the
 * token refused; err says why) and "break-glass" (an availability key used;
 * err NULL). vault and dep may be NULL. */
typedef void (*kc_event_fn)(void *arg, const char *event, const char *vault, const char *dep,
                            const kc_error *err);

#define KC_CTX_MAX_PINS 32
#define KC_CTX_MAX_LOCKS 16

/* A vault key fingerprint the caller pins for a vault (a layout's
 * fingerprint:, the service store's record of the first one seen). */
typedef struct kc_ctx_pin_entry {
    char vault[25];
    char fingerprint[65];
} kc_ctx_pin_entry;

typedef struct kc_ctx {
    kc_p11 *p11;
    kc_pin_fn pin_fn;
    void *pin_arg;
    kc_event_fn event_fn; /* optional */
    void *event_arg;
    kc_ctx_pin_entry pins[KC_CTX_MAX_PINS];
    size_t npins;
    /* told of a vault opened with no fingerprint pinned, so that the caller
     * can pin it at first use (the service store does); optional */
    void (*seen_fn)(void *arg, const char *vault, const char *fingerprint);
    void *seen_arg;
    /* Set by a command that changes vaults: each vault it opens is locked
     * against every other keycustody process on this host until the context
     * is freed, so its read and its write of the vault's state are one step
     * (kc_ctx_lock_token). */
    int lock_vaults;
    unsigned lock_timeout_ms; /* 0: 60 s */
    struct {
        char uri[512];
        int fd;
    } locks[KC_CTX_MAX_LOCKS];
    size_t nlocks;
} kc_ctx;

/* Loads module_path (NULL: p11-kit's registered modules). */
KC_EXPORT kc_rc kc_ctx_new(const char *module_path, kc_pin_fn pin_fn, void *pin_arg, kc_ctx **out,
                           kc_error *err) KC_MUST_CHECK;
/* Loads the modules of set (kc_p11_load_set). */
KC_EXPORT kc_rc kc_ctx_new_set(const kc_module_set *set, kc_pin_fn pin_fn, void *pin_arg,
                               kc_ctx **out, kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_ctx_free(kc_ctx *ctx);

/* Asks pin_fn for a PIN; KC_USAGE naming the vault when there is no way to. */
KC_EXPORT kc_rc kc_ctx_pin(kc_ctx *ctx, const char *vault, kc_pin_kind kind, kc_secret **out,
                           kc_error *err) KC_MUST_CHECK;

/* Passes an event to ctx->event_fn, when there is one. */
KC_EXPORT void kc_ctx_event(kc_ctx *ctx, const char *event, const char *vault, const char *dep,
                            const kc_error *err);

/* Pins the vault key fingerprint of vault (64 hex digits): opening the vault
 * with another key is an integrity error. KC_CONFLICT when another
 * fingerprint is pinned for it already. */
KC_EXPORT kc_rc kc_ctx_pin_fingerprint(kc_ctx *ctx, const char *vault, const char *fingerprint,
                                       kc_error *err) KC_MUST_CHECK;
/* The fingerprint pinned for vault, or NULL. */
KC_EXPORT const char *kc_ctx_pinned_fingerprint(const kc_ctx *ctx, const char *vault);

/* Logs in to tok as the user (asking for the PIN) unless already logged in. */
KC_EXPORT kc_rc kc_ctx_login(kc_ctx *ctx, kc_tok *tok, kc_error *err) KC_MUST_CHECK;

/* Takes this host's lock on tok (once per context; held until kc_ctx_free):
 * an flock on a file named after the token's URI in KEYCUSTODY_LOCK_DIR,
 * else $XDG_RUNTIME_DIR/keycustody, else /tmp/keycustody-UID (the caller's,
 * mode 0700). Waits up to the context's timeout, then KC_CONFLICT naming
 * the vault. A process that dies lets go of it. */
KC_EXPORT kc_rc kc_ctx_lock_token(kc_ctx *ctx, kc_tok *tok, kc_error *err) KC_MUST_CHECK;
/* Waits (as long) until no command on this host holds tok's lock, without
 * keeping it: a reader that saw a change half made waits for its end. */
KC_EXPORT kc_rc kc_ctx_wait_token(kc_ctx *ctx, kc_tok *tok, kc_error *err) KC_MUST_CHECK;

#endif
