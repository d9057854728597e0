/* keycustody status [SCOPE] | rewrap | tenant offboard */
#include "cli.h"
#include "kc_rewrap.h"

#include <jansson.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *state_text(const kc_dep_status *s, char *buf, size_t cap)
{
    if (strcmp(s->state, "Registering") == 0 || strcmp(s->state, "Rolling") == 0)
        snprintf(buf, cap, "%s %d%%", s->state, s->percent);
    else
        snprintf(buf, cap, "%s", s->state);
    return buf;
}

static json_t *dep_status_json(const kc_dep_status *s)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:i, s:I, s:I, s:I, s:s*, s:s*}", "id", s->dep.id,
                     "name", s->dep.name, "workload", s->dep.workload, "state", s->state, "percent",
                     s->percent, "done", (json_int_t)s->done, "total", (json_int_t)s->total,
                     "generation", (json_int_t)s->dep.generation, "purge_requested",
                     s->dep.purge_requested[0] ? s->dep.purge_requested : NULL, "purged",
                     s->dep.purged[0] ? s->dep.purged : NULL);
}

static json_t *scope_status_json(const kc_scope_status *s)
{
    return json_pack("{s:s, s:s*, s:s*, s:I, s:s*, s:s*, s:b, s:b, s:s*, s:I}", "scope", s->scope,
                     "dep_id", s->dep_id[0] ? s->dep_id : NULL, "dep",
                     s->dep_name[0] ? s->dep_name : NULL, "generation", (json_int_t)s->generation,
                     "effective_dep_id", s->target_id[0] ? s->target_id : NULL, "effective_dep",
                     s->target_name[0] ? s->target_name : NULL, "is_encrypted", s->encrypted,
                     "pending", s->pending, "purged", s->purged[0] ? s->purged : NULL, "items",
                     (json_int_t)s->items);
}

static void print_scope(FILE *f, const kc_scope_status *s)
{
    char note[160] = "";

    if (s->purged[0])
        snprintf(note, sizeof(note), "purged %s", s->purged);
    else if (s->dep_id[0] == '\0')
        snprintf(note, sizeof(note), "no data yet");
    else if (s->pending && s->target_id[0])
        snprintf(note, sizeof(note), "pending re-wrap -> %s", s->target_name);
    else if (s->target_id[0] == '\0')
        snprintf(note, sizeof(note), "no DEP in force");
    fprintf(f, "%-28s %-24s %-9s %6ld  %s\n", s->scope, s->dep_name[0] ? s->dep_name : "-",
            s->encrypted ? "yes" : "no", s->items, note);
}

static int cmd_status(kc_cli *cli, int argc, char **argv)
{
    kc_dep_status *deps = NULL;
    kc_scope_status *scopes = NULL;
    size_t nd = 0, ns = 0, i;
    const char *only;
    kc_store *st = NULL;
    char buf[32];
    json_t *o;
    kc_error err;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (argc - first > 1)
        return kc_cli_usage(cli, "give at most one SCOPE (tenant, mailbox:ID, geo:CODE)");
    only = argc - first == 1 ? argv[first] : NULL;
    kc_error_clear(&err);
    if (only != NULL && kc_dep_scope_check(only, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if ((rc = kc_cli_store(cli, &st)) != 0)
        return rc;
    if (kc_status_deps(st, &deps, &nd, &err) != KC_OK ||
        kc_status_scopes(st, only, &scopes, &ns, &err) != KC_OK) {
        rc = kc_cli_fail(cli, &err);
        goto done;
    }
    if (cli->json) {
        o = json_pack("{s:[], s:[]}", "deps", "scopes");
        for (i = 0; i < nd; i++)
            if (only == NULL || strcmp(deps[i].dep.id, scopes[0].target_id) == 0)
                json_array_append_new(json_object_get(o, "deps"), dep_status_json(&deps[i]));
        for (i = 0; i < ns; i++)
            json_array_append_new(json_object_get(o, "scopes"), scope_status_json(&scopes[i]));
        kc_cli_print_json(cli, o);
        goto done;
    }
    fprintf(cli->out, "%-24s %-10s %-16s %-13s %s\n", "DEP", "WORKLOAD", "STATUS", "SCOPE KEYS",
            "ID");
    for (i = 0; i < nd; i++) {
        char keys[32];

        if (only != NULL && strcmp(deps[i].dep.id, scopes[0].target_id) != 0)
            continue;
        snprintf(keys, sizeof(keys), "%ld/%ld", deps[i].done, deps[i].total);
        fprintf(cli->out, "%-24s %-10s %-16s %-13s %s\n", deps[i].dep.name, deps[i].dep.workload,
                state_text(&deps[i], buf, sizeof(buf)), keys, deps[i].dep.id);
    }
    fprintf(cli->out, "\n%-28s %-24s %-9s %6s  %s\n", "SCOPE", "DEP", "ENCRYPTED", "ITEMS", "");
    for (i = 0; i < ns; i++)
        print_scope(cli->out, &scopes[i]);
done:
    free(deps);
    free(scopes);
    kc_store_close(st);
    return rc;
}

/* --- the re-wrap job --- */

enum { O_BATCH = 256, O_SERVICE };

struct job_state {
    long batch;
    const char *service;
    kc_cli *cli;
    int bar; /* a progress bar on the terminal, else JSON lines */
    int shown;
};

static int job_opt(kc_cli *cli, int opt, const char *arg, void *state)
{
    struct job_state *s = state;
    char *end = NULL;

    if (opt == O_SERVICE) {
        s->service = arg;
        return 0;
    }
    s->batch = strtol(arg, &end, 10);
    if (end == arg || *end != '\0' || s->batch < 1 || s->batch > 100000)
        return kc_cli_usage(cli, "--batch '%s': give a number of scopes from 1 to 100000", arg);
    return 0;
}

static void progress(void *arg, long done, long total, int resumed)
{
    struct job_state *s = arg;
    FILE *f = s->cli->json ? s->cli->out : s->cli->err;
    int width = 40, fill = total ? (int)(done * width / total) : width;

    if (s->bar) {
        fprintf(s->cli->err, "\r%s[%-*.*s] %ld/%ld scope keys", resumed ? "resuming " : "", width,
                fill, "########################################", done, total);
        s->shown = 1;
    } else {
        fprintf(f, "{\"done\":%ld,\"total\":%ld,\"resumed\":%s}\n", done, total,
                resumed ? "true" : "false");
    }
    fflush(f);
}

static void warn(void *arg, const char *msg)
{
    kc_cli *cli = arg;

    fprintf(cli->err, "warning: %s\n", msg);
}

/* Runs the job on an open store; prints the summary line. */
static int run_job(kc_cli *cli, kc_ctx *ctx, kc_store *st, struct job_state *s, long *moved)
{
    kc_data_session *ds = NULL;
    kc_error err;
    kc_rc r;

    kc_error_clear(&err);
    s->cli = cli;
    s->bar = !cli->json && isatty(fileno(cli->err));
    r = kc_data_open(ctx, st, cli->principal, 0, warn, cli, &ds, &err);
    if (r == KC_OK)
        r = kc_rewrap(ds, st, s->batch, progress, s, moved, &err);
    if (s->shown)
        fprintf(cli->err, "\n");
    kc_data_close(ds);
    if (r != KC_OK)
        return kc_cli_fail(cli, &err);
    return 0;
}

static int cmd_rewrap(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"batch", required_argument, NULL, O_BATCH},
        {NULL, 0, NULL, 0},
    };
    struct job_state s = {500, NULL, NULL, 0, 0};
    kc_store *st = NULL;
    kc_ctx *ctx = NULL;
    long moved = 0;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, opts, job_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 0)
        return kc_cli_usage(cli, "rewrap takes no operands");
    if ((rc = kc_cli_ctx_store(cli, &ctx, &st)) != 0)
        return rc;
    rc = run_job(cli, ctx, st, &s, &moved);
    if (rc == 0 && !cli->json)
        fprintf(cli->out,
                "re-wrapped %ld scope key(s); every scope key is under its DEP's "
                "current key\n",
                moved);
    /* the last JSON line, also when there was nothing to do */
    if (rc == 0 && cli->json)
        fprintf(cli->out, "{\"moved\":%ld,\"pending\":0}\n", moved);
    kc_store_close(st);
    return rc;
}

static int cmd_offboard(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"service-vault", required_argument, NULL, O_SERVICE},
        {"batch", required_argument, NULL, O_BATCH},
        {NULL, 0, NULL, 0},
    };
    struct job_state s = {500, NULL, NULL, 0, 0};
    kc_dep was, service;
    kc_store *st = NULL;
    kc_ctx *ctx = NULL;
    kc_error err;
    long moved = 0;
    int first, rc;

    s.service = getenv("KEYCUSTODY_SERVICE_VAULT");
    rc = kc_cli_parse(cli, argc, argv, opts, job_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 0)
        return kc_cli_usage(cli, "tenant offboard takes no operands");
    if (s.service == NULL || s.service[0] == '\0')
        return kc_cli_usage(cli, "--service-vault NAME (or KEYCUSTODY_SERVICE_VAULT) is required");
    cli->service_vault = s.service;
    kc_cli_audit_note(cli, "vault", s.service);
    if ((rc = kc_cli_ctx_store(cli, &ctx, &st)) != 0)
        return rc;
    kc_error_clear(&err);
    if (kc_tenant_offboard(ctx, st, s.service, cli->principal, &was, &service, &err) != KC_OK)
        rc = kc_cli_fail(cli, &err);
    else if (was.name[0] != '\0')
        fprintf(cli->err,
                "tenant DEP '%s' unassigned; the tenant is under the service-managed "
                "key now\n",
                was.name);
    else
        fprintf(cli->err, "the tenant is offboarded already; finishing the re-wrap\n");
    if (rc == 0)
        rc = run_job(cli, ctx, st, &s, &moved);
    if (rc == 0)
        fprintf(cli->out,
                "offboarded the tenant: %ld scope key(s) moved under the "
                "service-managed key on vault '%s'\n",
                moved, service.keys[2].vault);
    kc_store_close(st);
    return rc;
}

const kc_cmd kc_cmds_status[] = {
    {"status", "", cmd_status, "[SCOPE] [--json]",
     "encryption status per DEP and per scope [Get-MailboxStatistics IsEncrypted]",
     "Per DEP: Unregistered (assigned nowhere), Registering n% (scope keys moving under\n"
     "it), Registered (every scope it is in force for is under its current key), Rolling\n"
     "n% (after 'dep refresh --roll', scope keys still under the previous DEP key), or\n"
     "Purged; SCOPE KEYS counts done/in force. Per scope: the DEP its key is wrapped\n"
     "under, IsEncrypted (under a customer DEP, not the service-managed key), its items,\n"
     "and whether 'keycustody rewrap' would move it. With SCOPE (tenant, mailbox:ID,\n"
     "geo:CODE): that scope and the DEP in force there.\n",
     1},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};

const kc_cmd kc_cmds_rewrap[] = {
    {"rewrap", "", cmd_rewrap, "[--batch N] [--json]",
     "bring every scope key under its effective DEP's current key",
     "Moves each scope key whose wrapping differs from its effective DEP (after an\n"
     "assignment changed, 'dep refresh --roll' or 'tenant offboard'): unwraps it with\n"
     "the old DEP key and wraps it with the new one. The items are untouched. Each batch\n"
     "of N scopes (default 500) is one store transaction, so a run that is killed loses\n"
     "at most the batch in hand; run it again and it resumes. Progress: a bar on a\n"
     "terminal, else one JSON line per batch ({\"done\":N,\"total\":T,\"resumed\":B}), on\n"
     "stdout with --json and on stderr without; with --json a last line\n"
     "{\"moved\":N,\"pending\":0} follows, also when there was nothing to do. Each DEP\n"
     "key costs one RSA unwrap (vault A, else B: the acting principal needs unwrapKey\n"
     "and that vault's PIN). When none is left, the wrapped copies of DEP keys that no\n"
     "scope needs any more are destroyed.\n"
     "Several runs at once: on a PostgreSQL store they share the job (on one host or\n"
     "several), each taking batches no other holds, and one killed lets go of its\n"
     "batch for the others; a run whose walk is done waits for the batches others\n"
     "hold, at most the store's lock timeout (10 s) for each, else it stops (exit 5):\n"
     "run it again. On SQLite a second run waits for the first's batches.\n"
     "  --batch N  scopes per transaction (1 to 100000)\n",
     1},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};

const kc_cmd kc_cmds_tenant[] = {
    {"tenant", "offboard", cmd_offboard, "--service-vault NAME [--batch N]",
     "leave Customer Key: move the tenant's data under a service-managed key",
     "Unassigns the tenant DEP and puts the tenant (and every mailbox without a DEP of\n"
     "its own) under the service-managed key, an RSA key on the service vault, then\n"
     "re-wraps those scope keys as 'keycustody rewrap' does. The data stays readable and\n"
     "the custodians' root keys are no longer needed for it. Interrupted, run it again.\n"
     "Mailboxes with their own Exchange DEP keep it.\n"
     "  --service-vault NAME  the service vault (or KEYCUSTODY_SERVICE_VAULT)\n"
     "  --batch N             scopes per transaction, as for rewrap\n",
     0},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
