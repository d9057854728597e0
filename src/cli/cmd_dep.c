/* keycustody dep create | list | show | set | refresh | purge-request | purge | assign |
 * assignment */
#include "cli.h"
#include "kc_dep.h"
#include "kc_plan.h"

#include <jansson.h>

#include <stdlib.h>
#include <string.h>

static json_t *dep_json(const kc_dep *d)
{
    static const char *slots[] = {"A", "B", "availability"};
    json_t *o = json_pack("{s:s, s:s, s:s, s:s*, s:s, s:b, s:s, s:I, s:[]}", "id", d->id, "name",
                          d->name, "workload", d->workload, "geo", d->geo[0] ? d->geo : NULL,
                          "description", d->description, "enabled", d->enabled, "created",
                          d->created, "generation", (json_int_t)d->generation, "keys");
    size_t i;

    json_object_set_new(o, "principal", d->principal[0] ? json_string(d->principal) : json_null());
    if (d->purge_requested[0])
        json_object_set_new(o, "purge_request",
                            json_pack("{s:s, s:s, s:s}", "requested", d->purge_requested, "reason",
                                      d->purge_reason, "contact", d->purge_contact));
    json_object_set_new(o, "purged", d->purged[0] ? json_string(d->purged) : json_null());
    json_object_set_new(o, "break_glass_uses", json_integer(d->break_glass));
    for (i = 0; i < KC_DEP_SLOTS; i++)
        if (d->keys[i].vault[0])
            json_array_append_new(json_object_get(o, "keys"),
                                  json_pack("{s:s, s:s, s:s, s:s, s:s}", "role", slots[i], "vault",
                                            d->keys[i].vault, "key", d->keys[i].key, "version",
                                            d->keys[i].version, "alg", d->keys[i].alg));
    return o;
}

static void print_dep(FILE *f, const kc_dep *d)
{
    static const char *slots[] = {"root key A", "root key B", "availability"};
    size_t i;

    fprintf(f, "dep:          %s\n", d->name);
    fprintf(f, "id:           %s\n", d->id);
    fprintf(f, "workload:     %s%s%s\n", d->workload, d->geo[0] ? ", geo " : "", d->geo);
    fprintf(f, "enabled:      %s\n", d->enabled ? "yes" : "no");
    if (d->description[0])
        fprintf(f, "description:  %s\n", d->description);
    fprintf(f, "created:      %s\n", d->created);
    fprintf(f, "key:          generation %ld\n", d->generation);
    if (d->principal[0])
        fprintf(f, "service:      %s\n", d->principal);
    if (d->purge_requested[0])
        fprintf(f, "purge asked:  %s by %s: %s\n", d->purge_requested, d->purge_contact,
                d->purge_reason);
    if (d->purged[0])
        fprintf(f, "PURGED:       %s (every wrapped copy of its key destroyed)\n", d->purged);
    if (d->break_glass > 0)
        fprintf(f, "break glass:  %ld use%s, the last at %s\n", d->break_glass,
                d->break_glass == 1 ? "" : "s", d->break_glass_last);
    for (i = 0; i < KC_DEP_SLOTS; i++)
        if (d->keys[i].vault[0])
            fprintf(f, "%-13s %s/%s/%s (%s)\n", slots[i], d->keys[i].vault, d->keys[i].key,
                    d->keys[i].version, d->keys[i].alg);
}

enum { O_KEYS = 256, O_WORKLOAD, O_GEO, O_DESC, O_SERVICE, O_ENABLED, O_NAME };

struct dep_state {
    char keys[2][200];
    size_t nkeys;
    const char *workload, *geo, *description, *service, *name;
    int enabled, set_enabled;
};

static int dep_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct dep_state *s = st;
    const char *comma;

    switch (opt) {
    case O_KEYS:
        comma = strchr(arg, ',');
        if (comma == NULL || strchr(comma + 1, ',') != NULL || comma == arg || comma[1] == '\0' ||
            (size_t)(comma - arg) >= sizeof(s->keys[0]) || strlen(comma + 1) >= sizeof(s->keys[1]))
            return kc_cli_usage(cli, "--keys: give two root keys, VAULT/KEY,VAULT/KEY");
        snprintf(s->keys[0], sizeof(s->keys[0]), "%.*s", (int)(comma - arg), arg);
        snprintf(s->keys[1], sizeof(s->keys[1]), "%s", comma + 1);
        s->nkeys = 2;
        break;
    case O_WORKLOAD:
        if (strcmp(arg, "tenant") != 0 && strcmp(arg, "exchange") != 0 &&
            strcmp(arg, "sharepoint") != 0)
            return kc_cli_usage(cli, "--workload '%s': choose tenant, exchange or sharepoint", arg);
        s->workload = arg;
        break;
    case O_GEO:
        s->geo = arg;
        break;
    case O_DESC:
        s->description = arg;
        break;
    case O_SERVICE:
        s->service = cli->service_vault = arg;
        break;
    case O_ENABLED:
        if (strcmp(arg, "true") != 0 && strcmp(arg, "false") != 0)
            return kc_cli_usage(cli, "--enabled '%s': give true or false", arg);
        s->set_enabled = 1;
        s->enabled = strcmp(arg, "true") == 0;
        break;
    case O_NAME:
        s->name = arg;
        break;
    }
    return 0;
}

static int cmd_create(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"keys", required_argument, NULL, O_KEYS},
        {"workload", required_argument, NULL, O_WORKLOAD},
        {"geo", required_argument, NULL, O_GEO},
        {"description", required_argument, NULL, O_DESC},
        {"service-vault", required_argument, NULL, O_SERVICE},
        {NULL, 0, NULL, 0},
    };
    struct dep_state s;
    kc_dep_spec spec;
    kc_store *st = NULL;
    kc_ctx *ctx = NULL;
    kc_diags d;
    kc_dep dep;
    kc_error err;
    int first, rc;

    memset(&s, 0, sizeof(s));
    s.workload = "tenant";
    s.service = getenv("KEYCUSTODY_SERVICE_VAULT");
    rc = kc_cli_parse(cli, argc, argv, opts, dep_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one DEP name");
    kc_error_clear(&err);
    if (kc_dep_check_name(argv[first], &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if (strcmp(argv[first], KC_DEP_SERVICE) == 0) {
        kc_error_set(&cli->error, KC_CONFLICT, "the name '%s' is the service-managed key's",
                     KC_DEP_SERVICE);
        return KC_CONFLICT;
    }
    if (s.nkeys != 2)
        return kc_cli_usage(cli, "--keys VAULT/KEY,VAULT/KEY is required");
    if (s.service == NULL)
        return kc_cli_usage(cli, "--service-vault NAME (or KEYCUSTODY_SERVICE_VAULT) is required");
    /* A SharePoint DEP serves one geo; the others serve none. */
    if (strcmp(s.workload, "sharepoint") == 0 && s.geo == NULL)
        return kc_cli_usage(cli, "a SharePoint DEP needs --geo CODE");
    if (strcmp(s.workload, "sharepoint") != 0 && s.geo != NULL)
        return kc_cli_usage(cli, "--geo is for SharePoint DEPs (--workload sharepoint)");
    if (s.geo != NULL && (strlen(s.geo) == 0 || strlen(s.geo) >= sizeof(dep.geo) ||
                          strspn(s.geo, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                        "0123456789") != strlen(s.geo)))
        return kc_cli_usage(cli, "--geo '%s': a geo code is 1 to 15 letters or digits", s.geo);
    memset(&spec, 0, sizeof(spec));
    spec.name = argv[first];
    spec.workload = s.workload;
    spec.geo = s.geo;
    spec.description = s.description;
    spec.keys[0] = s.keys[0];
    spec.keys[1] = s.keys[1];
    spec.service_vault = s.service;
    spec.principal = cli->principal;
    if ((rc = kc_cli_ctx_store(cli, &ctx, &st)) != 0)
        return rc;
    kc_diags_init(&d, "live");
    kc_error_clear(&err);
    if (kc_plan_check_dep(ctx, st, &spec, &d, &err) != KC_OK)
        rc = kc_cli_fail(cli, &err);
    if (rc == KC_OK && d.errors > 0) {
        kc_cli_print_diags(cli, &d);
        kc_error_set(&cli->error, KC_LAYOUT, "DEP '%s' would break %zu rule%s; nothing was made",
                     spec.name, d.errors, d.errors == 1 ? "" : "s");
        rc = KC_LAYOUT;
    }
    /* the first DEP makes the store's row key on its service vault */
    if (rc == KC_OK && !kc_store_checked(st))
        rc = kc_cli_store_auth(cli, st, 1);
    if (rc == KC_OK && kc_dep_create(ctx, st, &spec, &dep, &err) != KC_OK)
        rc = kc_cli_fail(cli, &err);
    if (rc == KC_OK) {
        kc_cli_print_diags(cli, &d); /* warnings */
        fprintf(cli->out, "created DEP '%s'\n", dep.name);
        print_dep(cli->out, &dep);
    }
    kc_diags_release(&d);
    kc_store_close(st);
    return rc;
}

static int cmd_list(kc_cli *cli, int argc, char **argv)
{
    kc_store *st = NULL;
    kc_dep *deps = NULL;
    kc_error err;
    json_t *arr;
    size_t n = 0, i;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (argc != first)
        return kc_cli_usage(cli, "'dep list' takes no arguments");
    if ((rc = kc_cli_store(cli, &st)) != 0)
        return rc;
    kc_error_clear(&err);
    if (kc_dep_list(st, &deps, &n, &err) != KC_OK) {
        kc_store_close(st);
        return kc_cli_fail(cli, &err);
    }
    if (cli->json) {
        arr = json_array();
        for (i = 0; i < n; i++)
            json_array_append_new(arr, dep_json(&deps[i]));
        kc_cli_print_json(cli, arr);
    } else if (n == 0) {
        fprintf(cli->out, "the store has no DEPs\n");
    } else {
        fprintf(cli->out, "%-24s %-36s %-11s %-6s %s\n", "DEP", "ID", "WORKLOAD", "GEO", "ENABLED");
        for (i = 0; i < n; i++)
            fprintf(cli->out, "%-24s %-36s %-11s %-6s %s\n", deps[i].name, deps[i].id,
                    deps[i].workload, deps[i].geo[0] ? deps[i].geo : "-",
                    deps[i].enabled ? "yes" : "no");
    }
    free(deps);
    kc_store_close(st);
    return KC_OK;
}

static int cmd_show(kc_cli *cli, int argc, char **argv)
{
    kc_store *st = NULL;
    kc_error err;
    kc_dep d;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one DEP name or id");
    if ((rc = kc_cli_store(cli, &st)) != 0)
        return rc;
    kc_error_clear(&err);
    rc = kc_dep_get(st, argv[first], &d, &err);
    if (rc != KC_OK)
        rc = kc_cli_fail(cli, &err);
    else if (cli->json)
        kc_cli_print_json(cli, dep_json(&d));
    else
        print_dep(cli->out, &d);
    kc_store_close(st);
    return rc;
}

static int cmd_set(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"enabled", required_argument, NULL, O_ENABLED},
        {"name", required_argument, NULL, O_NAME},
        {"description", required_argument, NULL, O_DESC},
        {NULL, 0, NULL, 0},
    };
    struct dep_state s;
    kc_store *st = NULL;
    kc_ctx *ctx = NULL;
    kc_error err;
    int first, rc;

    memset(&s, 0, sizeof(s));
    rc = kc_cli_parse(cli, argc, argv, opts, dep_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one DEP name or id");
    if (!s.set_enabled && s.name == NULL && s.description == NULL)
        return kc_cli_usage(cli, "nothing to change: give --enabled, --name or --description");
    kc_error_clear(&err);
    if (s.name != NULL && kc_dep_check_name(s.name, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if ((rc = kc_cli_ctx_store(cli, &ctx, &st)) != 0)
        return rc;
    kc_error_clear(&err);
    rc =
        kc_dep_set(st, argv[first], s.set_enabled ? &s.enabled : NULL, s.name, s.description, &err);
    if (rc != KC_OK)
        rc = kc_cli_fail(cli, &err);
    else
        fprintf(cli->out, "changed DEP '%s'\n", s.name ? s.name : argv[first]);
    kc_store_close(st);
    return rc;
}

enum { O_ROLL = 400, O_REASON, O_CONTACT, O_CONFIRM };

struct purge_state {
    const char *reason, *contact, *confirm;
    int roll;
};

static int purge_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct purge_state *s = st;

    (void)cli;
    if (opt == O_ROLL)
        s->roll = 1;
    else if (opt == O_REASON)
        s->reason = arg;
    else if (opt == O_CONTACT)
        s->contact = arg;
    else if (opt == O_CONFIRM)
        s->confirm = arg;
    return 0;
}

static int cmd_refresh(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"roll", no_argument, NULL, O_ROLL},
        {NULL, 0, NULL, 0},
    };
    struct purge_state s = {NULL, NULL, NULL, 0};
    kc_store *st = NULL;
    kc_ctx *ctx = NULL;
    kc_dep before, after;
    kc_error err;
    int first, rc, i;

    rc = kc_cli_parse(cli, argc, argv, opts, purge_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one DEP name or id");
    if ((rc = kc_cli_ctx_store(cli, &ctx, &st)) != 0)
        return rc;
    kc_error_clear(&err);
    rc = kc_dep_refresh(ctx, st, argv[first], cli->principal, s.roll, &before, &after, &err);
    if (rc != KC_OK) {
        rc = kc_cli_fail(cli, &err);
    } else if (s.roll) {
        fprintf(cli->out,
                "rolled DEP '%s': a new DEP key (generation %ld) wrapped under %s/%s/%s, "
                "%s/%s/%s and the availability key\n",
                after.name, after.generation, after.keys[0].vault, after.keys[0].key,
                after.keys[0].version, after.keys[1].vault, after.keys[1].key,
                after.keys[1].version);
        fprintf(cli->out,
                "its scope keys are still under generation %ld (status Rolling); move "
                "them with 'keycustody rewrap'\n",
                before.generation);
    } else {
        for (i = 0; i < 2; i++)
            if (strcmp(before.keys[i].version, after.keys[i].version) == 0)
                fprintf(cli->out, "%s/%s: already under version %s\n", after.keys[i].vault,
                        after.keys[i].key, after.keys[i].version);
            else
                fprintf(cli->out, "%s/%s: version %s -> %s\n", after.keys[i].vault,
                        after.keys[i].key, before.keys[i].version, after.keys[i].version);
        fprintf(cli->out, "refreshed DEP '%s'\n", after.name);
    }
    kc_store_close(st);
    return rc;
}

/* --- the data purge path --- */

static int cmd_purge_request(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"reason", required_argument, NULL, O_REASON},
        {"contact", required_argument, NULL, O_CONTACT},
        {NULL, 0, NULL, 0},
    };
    struct purge_state s = {NULL, NULL, NULL, 0};
    kc_store *st = NULL;
    kc_ctx *ctx = NULL;
    kc_dep d;
    kc_error err;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, opts, purge_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one DEP name or id");
    if (s.reason == NULL || s.reason[0] == '\0' || strlen(s.reason) > 255)
        return kc_cli_usage(cli, "--reason TEXT (1 to 255 characters) is required");
    if (s.contact == NULL || s.contact[0] == '\0' || strlen(s.contact) > 255)
        return kc_cli_usage(cli, "--contact TEXT (1 to 255 characters) is required");
    if ((rc = kc_cli_ctx_store(cli, &ctx, &st)) != 0)
        return rc;
    kc_error_clear(&err);
    if (kc_dep_purge_request(ctx, st, argv[first], s.reason, s.contact, &d, &err) != KC_OK)
        rc = kc_cli_fail(cli, &err);
    else
        fprintf(cli->out,
                "recorded a data purge request for DEP '%s' (%s); it can never be assigned "
                "again.\nCrypto-shred it with 'keycustody dep purge %s --confirm %s'\n",
                d.name, d.purge_requested, d.name, d.name);
    kc_store_close(st);
    return rc;
}

static int cmd_purge(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"confirm", required_argument, NULL, O_CONFIRM},
        {NULL, 0, NULL, 0},
    };
    struct purge_state s = {NULL, NULL, NULL, 0};
    kc_store *st = NULL;
    kc_ctx *ctx = NULL;
    long scopes = 0;
    kc_dep d;
    kc_error err;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, opts, purge_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one DEP name");
    /* The name typed twice: a purge cannot be undone. */
    if (s.confirm == NULL || strcmp(s.confirm, argv[first]) != 0)
        return kc_cli_usage(cli, "a purge destroys data for ever: confirm it with --confirm %s",
                            argv[first]);
    if ((rc = kc_cli_ctx_store(cli, &ctx, &st)) != 0)
        return rc;
    kc_error_clear(&err);
    if (kc_dep_purge(ctx, st, argv[first], &d, &scopes, &err) != KC_OK)
        rc = kc_cli_fail(cli, &err);
    else
        fprintf(cli->out,
                "purged DEP '%s': its availability key %s/%s destroyed, every wrapped copy of "
                "its key and of %ld scope key(s) destroyed; that data can never be read again\n",
                d.name, d.keys[2].vault, d.keys[2].key, scopes);
    kc_store_close(st);
    return rc;
}

/* --- assign, assignment --- */

enum { O_TENANT = 300, O_MAILBOX, O_AGEO, O_NONE };

struct scope_state {
    char scope[80];
    int nscopes, none;
};

static int scope_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct scope_state *s = st;

    switch (opt) {
    case O_TENANT:
        snprintf(s->scope, sizeof(s->scope), "tenant");
        s->nscopes++;
        break;
    case O_MAILBOX:
        snprintf(s->scope, sizeof(s->scope), "mailbox:%.70s", arg);
        s->nscopes++;
        break;
    case O_AGEO:
        snprintf(s->scope, sizeof(s->scope), "geo:%.70s", arg);
        s->nscopes++;
        break;
    case O_NONE:
        s->none = 1;
        break;
    }
    if (s->nscopes > 1)
        return kc_cli_usage(cli, "give one scope: --tenant, --mailbox ID or --geo CODE");
    return 0;
}

static const struct option scope_opts[] = {
    {"tenant", no_argument, NULL, O_TENANT},
    {"mailbox", required_argument, NULL, O_MAILBOX},
    {"geo", required_argument, NULL, O_AGEO},
    {"none", no_argument, NULL, O_NONE}, /* assign only */
    {NULL, 0, NULL, 0},
};
/* dep assignment: the scopes, without --none */
static const struct option scope_read_opts[] = {
    {"tenant", no_argument, NULL, O_TENANT},
    {"mailbox", required_argument, NULL, O_MAILBOX},
    {"geo", required_argument, NULL, O_AGEO},
    {NULL, 0, NULL, 0},
};

static int cmd_assign(kc_cli *cli, int argc, char **argv)
{
    struct scope_state s;
    kc_store *st = NULL;
    kc_ctx *ctx = NULL;
    kc_error err;
    kc_dep prev;
    int first, rc;

    memset(&s, 0, sizeof(s));
    rc = kc_cli_parse(cli, argc, argv, scope_opts, scope_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (s.nscopes != 1)
        return kc_cli_usage(cli, "give the scope: --tenant, --mailbox ID or --geo CODE");
    if (s.none ? argc != first : argc - first != 1)
        return kc_cli_usage(cli, "give one DEP name or id, or --none to unassign");
    kc_error_clear(&err);
    if (kc_dep_scope_check(s.scope, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if ((rc = kc_cli_ctx_store(cli, &ctx, &st)) != 0)
        return rc;
    rc = kc_dep_assign(st, s.none ? NULL : argv[first], s.scope, &prev, &err);
    if (rc != KC_OK)
        rc = kc_cli_fail(cli, &err);
    else if (s.none)
        fprintf(cli->out, "scope '%s' no longer has DEP '%s'\n", s.scope, prev.name);
    else if (prev.id[0] != '\0' && strcmp(prev.name, argv[first]) != 0 &&
             strcmp(prev.id, argv[first]) != 0)
        fprintf(cli->out,
                "assigned DEP '%s' to scope '%s' (was '%s'); 'keycustody rewrap' moves its "
                "scope key\n",
                argv[first], s.scope, prev.name);
    else
        fprintf(cli->out, "assigned DEP '%s' to scope '%s'\n", argv[first], s.scope);
    kc_store_close(st);
    return rc;
}

static int cmd_assignment(kc_cli *cli, int argc, char **argv)
{
    struct scope_state s;
    kc_dep_assignment *v = NULL;
    kc_store *st = NULL;
    kc_error err;
    kc_dep d;
    json_t *arr;
    size_t n = 0, i;
    int first, rc, inherited = 0;

    memset(&s, 0, sizeof(s));
    rc = kc_cli_parse(cli, argc, argv, scope_read_opts, scope_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc != first || s.none)
        return kc_cli_usage(cli, "'dep assignment' takes only a scope option");
    kc_error_clear(&err);
    if (s.nscopes == 1 && kc_dep_scope_check(s.scope, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if ((rc = kc_cli_store(cli, &st)) != 0)
        return rc;
    if (s.nscopes == 1) {
        rc = kc_dep_effective(st, s.scope, &d, &inherited, &err);
        if (rc != KC_OK)
            rc = kc_cli_fail(cli, &err);
        else if (cli->json)
            kc_cli_print_json(cli, json_pack("{s:s, s:s, s:s, s:b}", "scope", s.scope, "dep_id",
                                             d.id, "dep", d.name, "inherited", inherited));
        else
            fprintf(cli->out, "%s: DEP '%s' (%s)%s\n", s.scope, d.name, d.id,
                    inherited ? ", from the tenant" : "");
        kc_store_close(st);
        return rc;
    }
    rc = kc_dep_assignments(st, &v, &n, &err);
    if (rc != KC_OK) {
        rc = kc_cli_fail(cli, &err);
    } else if (cli->json) {
        arr = json_array();
        for (i = 0; i < n; i++)
            json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "scope", v[i].scope, "dep_id",
                                                 v[i].dep_id, "dep", v[i].dep_name));
        kc_cli_print_json(cli, arr);
    } else if (n == 0) {
        fprintf(cli->out, "no DEP is assigned\n");
    } else {
        fprintf(cli->out, "%-30s %-24s %s\n", "SCOPE", "DEP", "ID");
        for (i = 0; i < n; i++)
            fprintf(cli->out, "%-30s %-24s %s\n", v[i].scope, v[i].dep_name, v[i].dep_id);
    }
    free(v);
    kc_store_close(st);
    return rc;
}

const kc_cmd kc_cmds_dep[] = {
    {"dep", "create", cmd_create,
     "NAME --keys VAULT/KEY,VAULT/KEY [--workload tenant|exchange|sharepoint]\n"
     "                            [--geo CODE] [--description TEXT] --service-vault NAME",
     "create a data encryption policy [New-M365DataAtRestEncryptionPolicy]",
     "Checks the layout rules on the two live root keys (two vaults, two subscriptions,\n"
     "non-paired regions, RSA, wrapKey, expiry, recovery level, the service principal's\n"
     "access) and the limits (50 Exchange DEPs, one SharePoint DEP per geo); makes a\n"
     "DEP key (AES-256) from the service vault's RNG; wraps it with RSA-OAEP under the\n"
     "current version of each root key (no custodian PIN: public-key operations) and\n"
     "under a new availability key on the service vault (its PIN); stores the record in\n"
     "the service store (--store). The DEP key is wiped; the store holds only wrapped\n"
     "copies.\n"
     "  --service-vault NAME  the service vault (or KEYCUSTODY_SERVICE_VAULT)\n",
     0},
    {"dep", "list", cmd_list, "[--json]", "list the DEPs [Get-M365DataAtRestEncryptionPolicy]", "",
     1},
    {"dep", "show", cmd_show, "NAME|ID [--json]", "show a DEP and its three wrapped DEP keys", "",
     1},
    {"dep", "set", cmd_set, "NAME|ID [--enabled true|false] [--name NEW] [--description TEXT]",
     "change a DEP [Set-M365DataAtRestEncryptionPolicy]",
     "Disabling an assigned DEP is refused: unassign it first. The service vault's PIN\n"
     "checks the DEP's row and writes the changed one under its row key.\n",
     0},
    {"dep", "refresh", cmd_refresh, "NAME|ID [--roll]",
     "re-wrap the DEP key under the root keys' current versions [-Refresh]",
     "After 'keycustody key rotate', the DEP key is still wrapped under the old versions.\n"
     "refresh unwraps it (vault A, else B: the acting principal needs unwrapKey there and\n"
     "that vault's PIN; the service vault's PIN checks the store's rows), wraps it under\n"
     "the current version of both root keys (wrapKey) and replaces both wrapped copies\n"
     "in one store transaction. The DEP key does not change, so no data needs re-wrapping.\n"
     "  --roll  make a new DEP key instead (the next generation, from the service vault's\n"
     "          RNG, wrapped under both root keys and the availability key). The scope keys\n"
     "          stay under the old one (status Rolling n%) until 'keycustody rewrap' moves\n"
     "          them; then the old generation's wrapped copies are destroyed. A second roll\n"
     "          waits until the first is finished.\n",
     0},
    {"dep", "purge-request", cmd_purge_request, "NAME|ID --reason TEXT --contact TEXT",
     "record a data purge request [-PermanentDataPurgeRequested]",
     "For an Exchange or SharePoint DEP (a tenant leaves with 'keycustody tenant offboard').\n"
     "Refused until the custodians have removed the DEP's service principal's wrapKey and\n"
     "unwrapKey from the access policy of both custodian vaults. Afterwards the DEP can\n"
     "never be assigned again, and 'dep purge' may crypto-shred it.\n"
     "  --reason TEXT   why (kept with the request)\n"
     "  --contact TEXT  who asked, to be reached about it\n",
     0},
    {"dep", "purge", cmd_purge, "NAME --confirm NAME",
     "crypto-shred a DEP whose purge was requested",
     "Destroys every wrapped copy of the DEP key (every generation) and of the scope keys\n"
     "under it in one store transaction, scrubs them from the store file and its log, and\n"
     "destroys the DEP's availability key on the service vault (its PIN). Afterwards\n"
     "'data get' on those scopes fails with a 'purged' error whatever key is offered:\n"
     "the custodians' root keys, restored from backup or not, have nothing left to\n"
     "unwrap. Other DEPs' data is untouched. Interrupted, run it again.\n"
     "  --confirm NAME  the DEP's name again\n",
     0},
    {"dep", "assign", cmd_assign, "NAME|ID|--none --tenant | --mailbox ID | --geo CODE",
     "assign a DEP to the tenant, a mailbox or a geo [Set-...Assignment]",
     "Cmdlets: Set-M365DataAtRestEncryptionPolicyAssignment (tenant), Set-Mailbox\n"
     "-DataEncryptionPolicy (mailbox), Register-SPODataEncryptionPolicy (geo).\n"
     "A tenant DEP goes on the tenant, an Exchange DEP on a mailbox (it overrides the\n"
     "tenant DEP there), a SharePoint DEP on a geo. A scope holds one DEP: assigning\n"
     "another replaces it. Assigning before a mailbox has data is allowed. A disabled or\n"
     "purge-requested DEP cannot be assigned. --none removes the scope's assignment.\n"
     "The service vault's PIN checks the rows and writes the new one under its row key.\n",
     0},
    {"dep", "assignment", cmd_assignment, "[--tenant | --mailbox ID | --geo CODE] [--json]",
     "show assignments [Get-M365DataAtRestEncryptionPolicyAssignment]",
     "Without a scope: every assignment. With one: the DEP in force there (a mailbox\n"
     "without its own DEP is under the tenant DEP).\n",
     1},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
