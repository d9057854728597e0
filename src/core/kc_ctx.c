#include "kc_ctx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

kc_rc kc_ctx_new(const char *module_path, kc_pin_fn pin_fn, void *pin_arg, kc_ctx **out,
                 kc_error *err)
{
    kc_ctx *ctx = NULL;
    kc_rc r;

    *out = NULL;
    ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    r = kc_p11_load(module_path, &ctx->p11, err);
    if (r != KC_OK) {
        free(ctx);
        return r;
    }
    ctx->pin_fn = pin_fn;
    ctx->pin_arg = pin_arg;
    *out = ctx;
    return KC_OK;
}

void kc_ctx_free(kc_ctx *ctx)
{
    if (ctx == NULL)
        return;
    kc_p11_free(ctx->p11);
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
