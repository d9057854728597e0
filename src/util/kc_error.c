#include "kc_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void kc_error_clear(kc_error *err)
{
    if (err == NULL)
        return;
    memset(err, 0, sizeof(*err));
}

static void set_msg(kc_error *err, const char *fmt, va_list ap)
{
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
}

kc_rc kc_error_set(kc_error *err, kc_rc code, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return code;
    kc_error_clear(err);
    err->code = code;
    va_start(ap, fmt);
    set_msg(err, fmt, ap);
    va_end(ap);
    return code;
}

kc_rc kc_error_prefix(kc_error *err, const char *fmt, ...)
{
    char buf[sizeof(err->msg)];
    size_t n, old;
    va_list ap;

    if (err == NULL)
        return KC_ERR;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    n = strlen(buf);
    old = strnlen(err->msg, sizeof(err->msg) - 1);
    if (old > 0 && n + 2 < sizeof(buf)) {
        memcpy(buf + n, ": ", 2);
        n += 2;
        if (old > sizeof(buf) - 1 - n)
            old = sizeof(buf) - 1 - n; /* the innermost detail is cut, never the context */
        memcpy(buf + n, err->msg, old);
        n += old;
    }
    buf[n] = '\0';
    memcpy(err->msg, buf, n + 1);
    if (err->code == KC_OK)
        err->code = KC_ERR;
    return err->code;
}

void kc_error_hint(kc_error *err, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(err->hint, sizeof(err->hint), fmt, ap);
    va_end(ap);
}

void kc_error_format(const kc_error *err, char *buf, size_t len)
{
    if (err->func[0] == '\0') {
        snprintf(buf, len, "%s", err->msg);
        return;
    }
    snprintf(buf, len, "%s%s%s: %s", err->msg, err->msg[0] ? ": " : "", err->func, err->detail);
}

const char *kc_rc_name(kc_rc rc)
{
    switch (rc) {
    case KC_OK:
        return "ok";
    case KC_ERR:
        return "error";
    case KC_USAGE:
        return "usage";
    case KC_LAYOUT:
        return "layout invalid";
    case KC_NOT_FOUND:
        return "not found";
    case KC_CONFLICT:
        return "conflict";
    case KC_DENIED:
        return "denied";
    case KC_TOKEN:
        return "token or module failure";
    case KC_INTEGRITY:
        return "integrity";
    case KC_CHANGES:
        return "changes pending";
    }
    return "error";
}
