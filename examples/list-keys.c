/* list-keys: every vault visible through the PKCS#11 modules, and the keys
 * of one of them, through the installed libkeycustody.
 *
 *   cc list-keys.c $(pkg-config --cflags --libs keycustody) -o list-keys
 *   KC_PIN_SOURCE=env:VAULT_PIN VAULT_PIN=... ./list-keys [--module M] [VAULT]
 *
 * The vault's user PIN is named by a source in KC_PIN_SOURCE (env:NAME or
 * file:PATH), never given on the command line. */
#include <keycustody/keycustody.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int show_vault(void *arg, const keycustody_vault_info *v)
{
    (void)arg;
    if (v->is_vault)
        printf("vault %-24s subscription %-16s region %-12s key %.16s...\n", v->name,
               v->subscription, v->region, v->fingerprint);
    else
        printf("token %-24s (not a vault)\n", v->token_label);
    return 0;
}

static int show_key(void *arg, const keycustody_key_info *k)
{
    (void)arg;
    printf("  %s/%s/%s RSA-%u %s%s%s expires %s\n", k->vault, k->name, k->version, k->bits, k->ops,
           k->enabled ? "" : " disabled", k->current ? " current" : "",
           k->expires[0] ? k->expires : "never");
    return 0;
}

static int fail(keycustody *kc, int rc)
{
    fprintf(stderr, "list-keys: %s\n", keycustody_errmsg(kc));
    if (keycustody_errhint(kc)[0] != '\0')
        fprintf(stderr, "hint: %s\n", keycustody_errhint(kc));
    keycustody_close(kc);
    return rc;
}

int main(int argc, char **argv)
{
    keycustody_config cfg;
    keycustody *kc;
    const char *module = NULL, *vault = NULL, *source = getenv("KC_PIN_SOURCE");
    int i, rc;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--module") == 0 && i + 1 < argc)
            module = argv[++i];
        else if (argv[i][0] != '-' && vault == NULL)
            vault = argv[i];
        else {
            fprintf(stderr, "usage: list-keys [--module MODULE] [VAULT]\n");
            return 2;
        }
    }
    memset(&cfg, 0, sizeof(cfg));
    cfg.size = sizeof(cfg);
    cfg.modules = &module;
    cfg.nmodules = module != NULL;
    cfg.pin_sources = &source;
    cfg.npin_sources = source != NULL;
    cfg.principal = getenv("KC_PRINCIPAL");
    printf("libkeycustody %s\n", keycustody_version());
    if ((rc = keycustody_open(&cfg, &kc)) != 0)
        return fail(kc, rc);
    if ((rc = keycustody_vault_foreach(kc, show_vault, NULL)) != 0)
        return fail(kc, rc);
    if (vault != NULL && (rc = keycustody_key_foreach(kc, vault, show_key, NULL)) != 0)
        return fail(kc, rc);
    keycustody_close(kc);
    return 0;
}
