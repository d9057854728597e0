/* keycustody access set | remove | show [Set-/Remove-AzKeyVaultAccessPolicy] */
#include "cli.h"
#include "kc_vault.h"

#include <jansson.h>

#include <stdlib.h>
#include <string.h>

enum { O_PRINCIPAL = 256, O_PERMISSIONS, O_ROLE };

struct access_state {
    const char *principal;
    unsigned perms;
    int have_perms, have_role;
};

static int access_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct access_state *s = st;
    kc_error err;

    kc_error_clear(&err);
    switch (opt) {
    case O_PRINCIPAL:
        if (strlen(arg) == 0 || strlen(arg) >= sizeof(((kc_access_entry *)0)->principal))
            return kc_cli_usage(cli, "--principal: give a name of 1 to 127 characters");
        s->principal = arg;
        break;
    case O_PERMISSIONS:
        if (kc_perms_parse_list(arg, &s->perms, &err) != KC_OK)
            return kc_cli_fail(cli, &err);
        s->have_perms = 1;
        break;
    case O_ROLE:
        if (strcmp(arg, "administrator") == 0)
            s->perms = KC_ROLE_ADMINISTRATOR;
        else if (strcmp(arg, "service") == 0)
            s->perms = KC_ROLE_SERVICE;
        else
            return kc_cli_usage(cli, "--role '%s': choose administrator or service", arg);
        s->have_role = 1;
        break;
    }
    return 0;
}

static const struct option access_opts[] = {
    {"principal", required_argument, NULL, O_PRINCIPAL},
    {"permissions", required_argument, NULL, O_PERMISSIONS},
    {"role", required_argument, NULL, O_ROLE},
    {NULL, 0, NULL, 0},
};

/* Parses, opens the vault and logs in (the policy changes with the PIN). */
static int open_for_change(kc_cli *cli, int argc, char **argv, struct access_state *s, kc_vault **v)
{
    kc_ctx *ctx = NULL;
    kc_error err;
    int first, rc;

    memset(s, 0, sizeof(*s));
    *v = NULL;
    rc = kc_cli_parse(cli, argc, argv, access_opts, access_opt, s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one vault");
    if (s->principal == NULL)
        return kc_cli_usage(cli, "--principal is required");
    if (s->have_perms && s->have_role)
        return kc_cli_usage(cli, "give --permissions or --role, not both");
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    kc_error_clear(&err);
    if (kc_vault_open(ctx, argv[first], v, &err) != KC_OK ||
        kc_vault_login(*v, &err) != KC_OK) {
        kc_vault_free(*v);
        *v = NULL;
        return kc_cli_fail(cli, &err);
    }
    return 0;
}

static size_t find(const kc_vault_meta *m, const char *principal)
{
    size_t i;

    for (i = 0; i < m->naccess && strcmp(m->access[i].principal, principal) != 0; i++)
        ;
    return i;
}

static int save(kc_cli *cli, kc_vault *v, const char *what, const char *principal)
{
    kc_error err;
    char perms[256];
    size_t i = find(&v->meta, principal);

    kc_error_clear(&err);
    if (kc_vault_save_meta(v, &err) != KC_OK) {
        kc_vault_free(v);
        return kc_cli_fail(cli, &err);
    }
    perms[0] = '\0';
    if (i < v->meta.naccess)
        kc_perms_format(v->meta.access[i].perms, perms, sizeof(perms));
    fprintf(cli->out, "%s principal '%s' on vault '%s'; it now holds: %s\n", what, principal,
            v->meta.name, perms[0] ? perms : "nothing (no entry)");
    kc_vault_free(v);
    return KC_OK;
}

static int cmd_set(kc_cli *cli, int argc, char **argv)
{
    struct access_state s;
    kc_vault *v = NULL;
    size_t i;
    int rc = open_for_change(cli, argc, argv, &s, &v);

    if (rc != 0)
        return rc;
    if (!s.have_perms && !s.have_role) {
        kc_vault_free(v);
        return kc_cli_usage(cli, "give --permissions LIST or --role administrator|service");
    }
    i = find(&v->meta, s.principal);
    if (i == v->meta.naccess) {
        if (i == KC_ACCESS_MAX) {
            kc_vault_free(v);
            return kc_cli_usage(cli, "a vault's policy has at most %d principals", KC_ACCESS_MAX);
        }
        snprintf(v->meta.access[i].principal, sizeof(v->meta.access[i].principal), "%s",
                 s.principal);
        v->meta.naccess++;
    }
    /* As Set-AzKeyVaultAccessPolicy: permissions are added to what it has. */
    v->meta.access[i].perms |= s.perms;
    return save(cli, v, "granted to", s.principal);
}

static int cmd_remove(kc_cli *cli, int argc, char **argv)
{
    struct access_state s;
    kc_vault *v = NULL;
    kc_error err;
    size_t i;
    int rc = open_for_change(cli, argc, argv, &s, &v);

    if (rc != 0)
        return rc;
    i = find(&v->meta, s.principal);
    if (i == v->meta.naccess) {
        kc_error_set(&err, KC_NOT_FOUND, "vault '%s' has no access entry for '%s'", v->meta.name,
                     s.principal);
        kc_vault_free(v);
        return kc_cli_fail(cli, &err);
    }
    if (s.have_perms || s.have_role)
        v->meta.access[i].perms &= ~s.perms;
    /* With no entry a vault has no policy, and every principal may act: the
     * last entry never goes (Key Vault's empty policy lets nobody act). */
    if ((!(s.have_perms || s.have_role) || v->meta.access[i].perms == 0) && v->meta.naccess == 1) {
        kc_error_set(&err, KC_CONFLICT,
                     "'%s' holds vault '%s''s last access entry; without one every principal "
                     "may act, so it is not removed",
                     s.principal, v->meta.name);
        kc_error_hint(&err, "grant whoever should remain first ('keycustody access set'), or "
                            "remove only some permissions with --permissions");
        kc_vault_free(v);
        return kc_cli_fail(cli, &err);
    }
    if (!(s.have_perms || s.have_role) || v->meta.access[i].perms == 0) {
        memmove(&v->meta.access[i], &v->meta.access[i + 1],
                (v->meta.naccess - i - 1) * sizeof(v->meta.access[0]));
        v->meta.naccess--;
    }
    return save(cli, v, "revoked from", s.principal);
}

static int cmd_show(kc_cli *cli, int argc, char **argv)
{
    kc_ctx *ctx = NULL;
    kc_vault *v = NULL;
    kc_error err;
    json_t *arr;
    char perms[256];
    size_t i;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one vault");
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    kc_error_clear(&err);
    if (kc_vault_open(ctx, argv[first], &v, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if (cli->json) {
        arr = json_array();
        for (i = 0; i < v->meta.naccess; i++) {
            kc_perms_format(v->meta.access[i].perms, perms, sizeof(perms));
            json_array_append_new(arr,
                                  json_pack("{s:s, s:s}", "principal", v->meta.access[i].principal,
                                            "permissions", perms));
        }
        kc_cli_print_json(cli, arr);
    } else if (v->meta.naccess == 0) {
        fprintf(cli->out,
                "vault '%s' has no access policy: every principal may act (the PIN "
                "is the boundary)\n",
                v->meta.name);
    } else {
        fprintf(cli->out, "%-32s %s\n", "PRINCIPAL", "PERMISSIONS");
        for (i = 0; i < v->meta.naccess; i++) {
            kc_perms_format(v->meta.access[i].perms, perms, sizeof(perms));
            fprintf(cli->out, "%-32s %s\n", v->meta.access[i].principal, perms);
        }
    }
    kc_vault_free(v);
    return KC_OK;
}

const kc_cmd kc_cmds_access[] = {
    {"access", "set", cmd_set,
     "VAULT --principal P (--permissions LIST | --role administrator|service)",
     "grant a principal key permissions on a vault",
     "Adds the permissions to the principal's entry in the vault's access policy\n"
     "(stored in the vault metadata; the vault's PIN is needed). Key Vault's names:\n"
     "get, list, create, import, update, delete, recover, backup, restore, purge,\n"
     "rotate, wrapKey, unwrapKey, encrypt, decrypt, sign, verify. Roles: administrator\n"
     "(create, import, list, get, backup, restore: deliberately no delete) and service\n"
     "(get, wrapKey, unwrapKey).\n"
     "Once a vault has a policy, every key command names who acts (--as or\n"
     "KEYCUSTODY_PRINCIPAL) and is refused (exit 6) without the permission it needs.\n"
     "Access policies prevent mistakes and are recorded; the security boundary is each\n"
     "vault's PIN.\n",
     0},
    {"access", "remove", cmd_remove, "VAULT --principal P [--permissions LIST | --role R]",
     "take permissions from a principal, or remove its entry",
     "Without --permissions or --role the principal's whole entry goes.\n", 0},
    {"access", "show", cmd_show, "VAULT [--json]", "show a vault's access policy",
     "No PIN is needed.\n", 1},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
