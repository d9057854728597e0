#include "kc_ctx.h"
#include "kc_util.h"

#include <openssl/sha.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

kc_rc kc_ctx_new_set(const kc_module_set *set, kc_pin_fn pin_fn, void *pin_arg, kc_ctx **out,
                     kc_error *err)
{
    kc_ctx *ctx = NULL;
    kc_rc r;

    *out = NULL;
    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    r = kc_p11_load_set(set, &ctx->p11, err);
    if (r != KC_OK) {
        free(ctx);
        return r;
    }
    ctx->pin_fn = pin_fn;
    ctx->pin_arg = pin_arg;
    *out = ctx;
    return KC_OK;
}

kc_rc kc_ctx_new(const char *module_path, kc_pin_fn pin_fn, void *pin_arg, kc_ctx **out,
                 kc_error *err)
{
    kc_module_set set;

    memset(&set, 0, sizeof(set));
    if (module_path != NULL)
        set.paths[set.npaths++] = module_path;
    return kc_ctx_new_set(&set, pin_fn, pin_arg, out, err);
}

void kc_ctx_free(kc_ctx *ctx)
{
    size_t i;

    if (ctx == NULL)
        return;
    kc_p11_free(ctx->p11);
    for (i = 0; i < ctx->nlocks; i++)
        close(ctx->locks[i].fd); /* lets go of the lock */
    free(ctx);
}

kc_rc kc_ctx_pin(kc_ctx *ctx, const char *vault, kc_pin_kind kind, kc_secret **out, kc_error *err)
{
    *out = NULL;
    if (ctx->pin_fn == NULL) {
        kc_error_set(err, KC_USAGE, "no PIN source for vault '%s'", vault);
        return KC_USAGE;
    }
    return ctx->pin_fn(ctx->pin_arg, vault, kind, out, err);
}

const char *kc_ctx_pinned_fingerprint(const kc_ctx *ctx, const char *vault)
{
    size_t i;

    for (i = 0; ctx != NULL && i < ctx->npins; i++)
        if (strcmp(ctx->pins[i].vault, vault) == 0)
            return ctx->pins[i].fingerprint;
    return NULL;
}

kc_rc kc_ctx_pin_fingerprint(kc_ctx *ctx, const char *vault, const char *fingerprint,
                             kc_error *err)
{
    const char *have = kc_ctx_pinned_fingerprint(ctx, vault);
    size_t i;

    for (i = 0; fingerprint[i] != '\0'; i++)
        if (!((fingerprint[i] >= '0' && fingerprint[i] <= '9') ||
              (fingerprint[i] >= 'a' && fingerprint[i] <= 'f')))
            break;
    if (i != 64 || fingerprint[i] != '\0' || strlen(vault) >= sizeof(ctx->pins[0].vault))
        return kc_error_set(err, KC_USAGE,
                            "the fingerprint given for vault '%s' is not 64 lowercase hex digits",
                            vault);
    if (have != NULL && strcmp(have, fingerprint) != 0)
        return kc_error_set(err, KC_CONFLICT, "two fingerprints are pinned for vault '%s'", vault);
    if (have != NULL)
        return KC_OK;
    if (ctx->npins == KC_CTX_MAX_PINS)
        return kc_error_set(err, KC_USAGE, "at most %d vaults can be pinned", KC_CTX_MAX_PINS);
    snprintf(ctx->pins[ctx->npins].vault, sizeof(ctx->pins[0].vault), "%s", vault);
    memcpy(ctx->pins[ctx->npins].fingerprint, fingerprint, 65);
    ctx->npins++;
    return KC_OK;
}

kc_rc kc_ctx_login(kc_ctx *ctx, kc_tok *tok, kc_error *err)
{
    kc_secret *pin = NULL;
    const char *vault = kc_tok_info_get(tok)->label;
    kc_rc r;

    if (kc_tok_is_logged_in(tok))
        return KC_OK;
    r = kc_ctx_pin(ctx, vault, KC_PIN_USER, &pin, err);
    if (r != KC_OK)
        return r;
    r = kc_tok_login(tok, pin, err);
    kc_secret_free(pin);
    if (r != KC_OK)
        kc_ctx_event(ctx, "login", vault, NULL, err);
    return r;
}

void kc_ctx_event(kc_ctx *ctx, const char *event, const char *vault, const char *dep,
                  const kc_error *err)
{
    if (ctx != NULL && ctx->event_fn != NULL)
        ctx->event_fn(ctx->event_arg, event, vault, dep, err);
}

/* --- this host's vault locks --- */

/* The lock directory: made 0700 if missing; refused unless it is a real
 * directory of the caller's that nobody else can write. */
static kc_rc lock_dir(char *out, size_t cap, kc_error *err)
{
    const char *env = getenv("KEYCUSTODY_LOCK_DIR"), *run = getenv("XDG_RUNTIME_DIR");
    struct stat st;

    if (env != NULL && env[0] != '\0')
        snprintf(out, cap, "%s", env);
    else if (run != NULL && run[0] == '/' && access(run, W_OK) == 0)
        snprintf(out, cap, "%s/keycustody", run);
    else
        snprintf(out, cap, "/tmp/keycustody-%u", (unsigned)geteuid());
    if (mkdir(out, 0700) != 0 && errno != EEXIST)
        return kc_error_set(err, KC_ERR, "cannot make the lock directory '%s': %s", out,
                            strerror(errno));
    if (lstat(out, &st) != 0)
        return kc_error_set(err, KC_ERR, "cannot read the lock directory '%s': %s", out,
                            strerror(errno));
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022) != 0) {
        kc_error_set(err, KC_DENIED,
                     "the lock directory '%s' is not a directory of yours that only you can "
                     "write, so its locks are not believed",
                     out);
        kc_error_hint(err, "remove it, or name another with KEYCUSTODY_LOCK_DIR");
        return KC_DENIED;
    }
    return KC_OK;
}

/* The lock file of tok on this host, open; -1 with err set. */
static int lock_file(const kc_tok_info *ti, kc_error *err)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    char dir[400], path[512], hex[2 * 16 + 1];
    int fd;

    if (lock_dir(dir, sizeof(dir), err) != KC_OK) {
        kc_error_prefix(err, "cannot lock vault '%s'", ti->label);
        return -1;
    }
    /* the token's URI names its module's manufacturer, model, serial and label */
    SHA256((const unsigned char *)ti->uri, strlen(ti->uri), md);
    kc_hex_encode(md, 16, hex);
    snprintf(path, sizeof(path), "%s/%s.lock", dir, hex);
    fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        kc_error_set(err, KC_ERR, "cannot lock vault '%s': %s: %s", ti->label, path,
                     strerror(errno));
    return fd;
}

/* flock(how) on fd, retried every 20 ms up to the context's timeout. */
static kc_rc lock_wait(kc_ctx *ctx, int fd, int how, const char *label, kc_error *err)
{
    unsigned waited = 0, limit = ctx->lock_timeout_ms ? ctx->lock_timeout_ms : 60000;
    struct timespec pause = {0, 20 * 1000 * 1000};

    while (flock(fd, how | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK && errno != EINTR)
            return kc_error_set(err, KC_ERR, "cannot lock vault '%s': %s", label,
                                strerror(errno));
        if (waited >= limit) {
            kc_error_set(err, KC_CONFLICT,
                         "vault '%s' is being changed by another keycustody command on this "
                         "host (waited %u s)",
                         label, limit / 1000);
            kc_error_hint(err, "run this command again when that one is done");
            return KC_CONFLICT;
        }
        (void)nanosleep(&pause, NULL);
        waited += 20;
    }
    return KC_OK;
}

static int holds_lock(const kc_ctx *ctx, const kc_tok_info *ti)
{
    size_t i;

    for (i = 0; i < ctx->nlocks; i++)
        if (strcmp(ctx->locks[i].uri, ti->uri) == 0)
            return 1;
    return 0;
}

kc_rc kc_ctx_lock_token(kc_ctx *ctx, kc_tok *tok, kc_error *err)
{
    const kc_tok_info *ti = kc_tok_info_get(tok);
    int fd;

    if (holds_lock(ctx, ti))
        return KC_OK;
    if (ctx->nlocks == KC_CTX_MAX_LOCKS)
        return kc_error_set(err, KC_ERR, "a command changes at most %d vaults",
                            KC_CTX_MAX_LOCKS);
    fd = lock_file(ti, err);
    if (fd < 0)
        return KC_ERR;
    if (lock_wait(ctx, fd, LOCK_EX, ti->label, err) != KC_OK) {
        close(fd);
        return err->code;
    }
    snprintf(ctx->locks[ctx->nlocks].uri, sizeof(ctx->locks[0].uri), "%s", ti->uri);
    ctx->locks[ctx->nlocks++].fd = fd;
    return KC_OK;
}

kc_rc kc_ctx_wait_token(kc_ctx *ctx, kc_tok *tok, kc_error *err)
{
    const kc_tok_info *ti = kc_tok_info_get(tok);
    kc_rc r;
    int fd;

    if (holds_lock(ctx, ti))
        return KC_OK;
    fd = lock_file(ti, err);
    if (fd < 0)
        return KC_ERR;
    r = lock_wait(ctx, fd, LOCK_SH, ti->label, err);
    close(fd); /* and with it the shared lock */
    return r;
}
