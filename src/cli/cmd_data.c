/* keycustody data put | get */
#include "cli.h"
#include "kc_data.h"
#include "kc_util.h"

#include <stdlib.h>
#include <string.h>

enum { O_IN = 256, O_OUT, O_FORCE, O_AVAIL };

struct data_state {
    const char *in, *out;
    int force, avail;
};

static int data_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct data_state *s = st;

    (void)cli;
    switch (opt) {
    case O_IN:
        s->in = arg;
        break;
    case O_OUT:
        s->out = arg;
        break;
    case O_FORCE:
        s->force = 1;
        break;
    case O_AVAIL:
        s->avail = 1;
        break;
    }
    return 0;
}

static void warn(void *arg, const char *msg)
{
    kc_cli *cli = arg;

    fprintf(cli->err, "warning: %s\n", msg);
}

/* Parses the command line (opts[0] is the command's --in or --out, which
 * it requires) and opens a session on the store. */
static int open_session(kc_cli *cli, int argc, char **argv, const struct option *opts,
                        struct data_state *s, int *first, kc_store **st, kc_data_session **ds)
{
    kc_ctx *ctx = NULL;
    kc_error err;
    int rc;

    memset(s, 0, sizeof(*s));
    *st = NULL;
    *ds = NULL;
    rc = kc_cli_parse(cli, argc, argv, opts, data_opt, s, first);
    if (rc != 0)
        return rc;
    if (argc - *first != 2)
        return kc_cli_usage(cli, "give a SCOPE (tenant, mailbox:ID, geo:CODE) and an item NAME");
    /* usage first: nothing is opened (or the store created) for a bad command line */
    if (opts[0].val == O_IN && s->in == NULL)
        return kc_cli_usage(cli, "--in FILE is required");
    if (opts[0].val == O_OUT && s->out == NULL)
        return kc_cli_usage(cli, "--out FILE is required");
    kc_error_clear(&err);
    if (kc_dep_scope_check(argv[*first], &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if ((rc = kc_cli_ctx_store(cli, &ctx, st)) != 0)
        return rc;
    if (kc_data_open(ctx, *st, cli->principal, s->avail ? KC_DEP_USE_AVAILABILITY : 0, warn, cli,
                     ds, &err) != KC_OK) {
        kc_store_close(*st);
        *st = NULL;
        return kc_cli_fail(cli, &err);
    }
    if (s->avail)
        fprintf(cli->err, "warning: break glass: the availability key may unwrap the DEP key\n");
    return 0;
}

static int cmd_put(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"in", required_argument, NULL, O_IN},
        {"use-availability-key", no_argument, NULL, O_AVAIL},
        {NULL, 0, NULL, 0},
    };
    struct data_state s;
    kc_data_session *ds = NULL;
    kc_store *st = NULL;
    kc_secret *plain = NULL;
    kc_error err;
    int first, rc;

    rc = open_session(cli, argc, argv, opts, &s, &first, &st, &ds);
    kc_error_clear(&err);
    /* the plaintext lives in a secret: locked, and wiped when it goes */
    if (rc == 0 && kc_secret_read_file(s.in, KC_DATA_MAX, &plain, &err) != KC_OK)
        rc = kc_cli_fail(cli, &err);
    if (rc == 0 &&
        kc_data_put(ds, argv[first], argv[first + 1], plain->data, plain->len, &err) != KC_OK)
        rc = kc_cli_fail(cli, &err);
    if (rc == 0)
        fprintf(cli->out, "put '%s' in scope '%s' (%zu bytes)\n", argv[first + 1], argv[first],
                plain->len);
    kc_secret_free(plain);
    kc_data_close(ds);
    kc_store_close(st);
    return rc;
}

static int cmd_get(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"out", required_argument, NULL, O_OUT},
        {"force", no_argument, NULL, O_FORCE},
        {"use-availability-key", no_argument, NULL, O_AVAIL},
        {NULL, 0, NULL, 0},
    };
    struct data_state s;
    kc_data_session *ds = NULL;
    kc_store *st = NULL;
    kc_secret *data = NULL;
    kc_error err;
    int first, rc;

    rc = open_session(cli, argc, argv, opts, &s, &first, &st, &ds);
    kc_error_clear(&err);
    if (rc == 0 && (kc_data_get(ds, argv[first], argv[first + 1], &data, &err) != KC_OK ||
                    kc_cli_write(cli, s.out, data->data, data->len, 0600, s.force, &err) != KC_OK))
        rc = kc_cli_fail(cli, &err);
    if (rc == 0)
        fprintf(kc_cli_report(cli, s.out), "wrote '%s' of scope '%s' to %s (%zu bytes)\n",
                argv[first + 1],
                argv[first], s.out, data->len);
    kc_secret_free(data);
    kc_data_close(ds);
    kc_store_close(st);
    return rc;
}

const kc_cmd kc_cmds_data[] = {
    {"data", "put", cmd_put, "SCOPE NAME --in FILE [--use-availability-key]",
     "seal an item in a scope under its DEP",
     "SCOPE is tenant, mailbox:ID or geo:CODE. On the scope's first item its key is made\n"
     "and wrapped by the DEP key of the scope's DEP (a mailbox without its own DEP uses\n"
     "the tenant's). The item is sealed with AES-256-GCM under a key of its own, which\n"
     "the scope key wraps; scope, name, DEP id and DEP key generation are bound to it.\n"
     "Unwrapping the DEP key takes vault A, else vault B (that vault's PIN; the acting\n"
     "principal needs unwrapKey); a vault skipped is named in a warning.\n"
     "  --in FILE               the item (at most 64 MiB)\n"
     "  --use-availability-key  break glass: if neither custodian vault can unwrap the DEP\n"
     "                          key, use the availability key on the service vault\n",
     0},
    {"data", "get", cmd_get, "SCOPE NAME --out FILE [--force] [--use-availability-key]",
     "open an item of a scope",
     "Writes the item to FILE (mode 0600; --force to replace it). An item that was altered\n"
     "or moved to another scope or name fails authentication (exit 8).\n"
     "  --out FILE              where the item goes (- for standard output; never over a\n"
     "                          device, FIFO, socket or link, even with --force)\n"
     "  --use-availability-key  break glass, as for 'data put'\n",
     0},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
