#include "kc_ctx.h"

#include <stdlib.h>

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
