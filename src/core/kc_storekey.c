/* The service store's row key (kc_store.h, authenticated rows): derived on
 * the store's service vault, so a store writer without its PIN can neither
 * make a row keycustody believes nor change one unnoticed. */
#include "kc_store_int.h"
#include "kc_util.h"
#include "kc_vault.h"

#include <stdio.h>
#include <string.h>

#define STORE_KEY_LABEL "keycustody-store-key"
/* What the token key signs to give the row key: a fixed label, so every
 * process that logs in to the service vault derives the same key. */
static const char ROW_KEY_INFO[] = "keycustody service store row key v1";

kc_rc kc_store_service_vault(kc_store *st, char out[64], kc_error *err)
{
    return kc_store_meta_get(st, "service_vault", out, 64, err);
}

/* A store that names no service vault has no DEP: one with DEP rows was
 * changed outside keycustody. */
static kc_rc no_vault_recorded(kc_store *st, kc_error *err)
{
    long n = 0;
    kc_rc r = kc_store_count(st, "deps", &n, err);

    if (r == KC_OK && n > 0) {
        kc_error_set(err, KC_INTEGRITY,
                     "the service store holds %ld DEP(s) but records no service vault: its "
                     "record was removed outside keycustody",
                     n);
        kc_error_hint(err, "keep a copy of the store for investigation; restore it from a backup "
                           "made by keycustody");
        return KC_INTEGRITY;
    }
    return r;
}

kc_rc kc_store_authenticate(kc_ctx *ctx, kc_store *st, const char *service_vault, int create,
                            kc_error *err)
{
    char rec[64];
    const char *name;
    kc_vault *v = NULL;
    kc_secret *key = NULL;
    kc_obj obj;
    size_t n = 0;
    kc_rc r;

    if (st->mac != NULL)
        return KC_OK;
    r = kc_store_service_vault(st, rec, err);
    if (r != KC_OK)
        return r;
    if (rec[0] && service_vault != NULL && service_vault[0] && strcmp(rec, service_vault) != 0) {
        kc_error_set(err, KC_CONFLICT,
                     "the service store belongs to service vault '%s', not '%s'", rec,
                     service_vault);
        kc_error_hint(err, "name the store's own service vault, or use another store");
        return KC_CONFLICT;
    }
    name = rec[0] ? rec : service_vault;
    if (rec[0] == '\0' && (!create || name == NULL || name[0] == '\0'))
        return no_vault_recorded(st, err);
    snprintf(st->service_vault, sizeof(st->service_vault), "%s", name);
    r = kc_vault_open(ctx, name, &v, err);
    if (r == KC_OK)
        r = kc_vault_login(v, err);
    if (r == KC_OK)
        r = kc_vault_own_secret(v, STORE_KEY_LABEL, NULL, 0, KC_WHERE_PRIVATE, &obj, &n, err);
    if (r == KC_OK && n == 0 && rec[0]) {
        r = kc_error_set(err, KC_INTEGRITY,
                         "service vault '%s' holds no store key ('%s'), yet the store records it "
                         "as its service vault: the store's record or the vault was changed",
                         name, STORE_KEY_LABEL);
        kc_error_hint(err, "compare the vault with 'keycustody vault show %s' and the store with "
                           "a backup made by keycustody",
                      name);
    }
    if (r == KC_OK && n == 0)
        r = kc_tok_generate_hmac_key(v->tok, STORE_KEY_LABEL, &obj, err);
    key = kc_secret_new(32);
    if (r == KC_OK && key == NULL)
        r = kc_error_set(err, KC_ERR, "out of memory");
    if (r == KC_OK)
        r = kc_tok_hmac(v->tok, obj, (const unsigned char *)ROW_KEY_INFO, sizeof(ROW_KEY_INFO) - 1,
                        key->data, err);
    if (r == KC_OK && rec[0] == '\0')
        r = kc_store_meta_set(st, "service_vault", name, err);
    kc_vault_free(v);
    if (r != KC_OK) {
        kc_secret_free(key);
        return kc_error_prefix(err, "cannot check the service store's rows on vault '%s'", name);
    }
    key->len = 32;
    st->mac = key;
    return KC_OK;
}
