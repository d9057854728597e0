/* keycustody subscription init | join */
#include "cli.h"
#include "kc_domain.h"
#include "kc_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAXN KC_DOMAIN_MAX_CUSTODIANS

enum { O_VAULT = 256, O_CUSTODIAN, O_QUORUM, O_OUT, O_DOMAIN, O_SHARE_KEY, O_FORCE };

struct sub_state {
    const char *vaults[MAXN], *custodians[MAXN], *out, *domain;
    kc_share_key keys[MAXN];
    size_t nvaults, ncustodians, nkeys;
    unsigned quorum;
    int force;
};

static int add(kc_cli *cli, const char **list, size_t *n, const char *arg, const char *what)
{
    if (*n == MAXN)
        return kc_cli_usage(cli, "at most %d %s", MAXN, what);
    list[(*n)++] = arg;
    return 0;
}

static int sub_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct sub_state *s = st;
    char *end;
    long q;

    switch (opt) {
    case O_VAULT:
        if (s->nvaults == 0)
            kc_cli_audit_note(cli, "vault", arg); /* the record is sealed there */
        return add(cli, s->vaults, &s->nvaults, arg, "vaults");
    case O_CUSTODIAN:
        return add(cli, s->custodians, &s->ncustodians, arg, "custodians");
    case O_SHARE_KEY:
        if (s->nkeys == MAXN)
            return kc_cli_usage(cli, "at most %d share keys", MAXN);
        s->keys[s->nkeys++].ref = arg;
        return 0;
    case O_QUORUM:
        q = strtol(arg, &end, 10);
        if (*arg == '\0' || *end != '\0' || q < 1 || q > MAXN)
            return kc_cli_usage(cli, "--quorum '%s': give a number from 1 to %d", arg, MAXN);
        s->quorum = (unsigned)q;
        return 0;
    case O_OUT:
        s->out = arg;
        return 0;
    case O_DOMAIN:
        s->domain = arg;
        return 0;
    case O_FORCE:
        s->force = 1;
        return 0;
    }
    return 0;
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);

    return n > m && strcmp(s + n - m, suffix) == 0;
}

static int cmd_init(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"vault", required_argument, NULL, O_VAULT},
        {"custodian", required_argument, NULL, O_CUSTODIAN},
        {"quorum", required_argument, NULL, O_QUORUM},
        {"out", required_argument, NULL, O_OUT},
        {"force", no_argument, NULL, O_FORCE},
        {NULL, 0, NULL, 0},
    };
    struct sub_state s;
    kc_ctx *ctx = NULL;
    char *file = NULL;
    kc_error err;
    int first, rc;

    memset(&s, 0, sizeof(s));
    rc = kc_cli_parse(cli, argc, argv, opts, sub_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one subscription id");
    if (s.nvaults == 0 || s.ncustodians == 0 || s.quorum == 0 || s.out == NULL)
        return kc_cli_usage(cli, "--vault, --custodian, --quorum and --out are required");
    if (!has_suffix(s.out, ".domain"))
        return kc_cli_usage(cli, "--out '%s': a security-domain file ends in .domain", s.out);
    if (!s.force && access(s.out, F_OK) == 0)
        return kc_cli_usage(cli,
                            "'%s' exists already; a domain file is never overwritten "
                            "without --force",
                            s.out);
    /* where the shares go is checked before any vault is changed */
    {
        char dir[4096];
        const char *slash;

        snprintf(dir, sizeof(dir), "%s", s.out);
        slash = strrchr(dir, '/');
        if (slash == NULL)
            snprintf(dir, sizeof(dir), ".");
        else
            dir[slash == dir ? 1 : slash - dir] = '\0';
        if (access(dir, W_OK | X_OK) != 0)
            return kc_cli_usage(cli, "cannot write the domain file in '%s': %s", dir,
                                strerror(errno));
    }
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    kc_error_clear(&err);
    if (kc_domain_init(ctx, argv[first], s.vaults, s.nvaults, s.custodians, s.ncustodians, s.quorum,
                       &file, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if (kc_cli_write(cli, s.out, file, strlen(file), 0600, s.force, &err) != KC_OK) {
        free(file);
        kc_error_hint(&err, "the domain is installed on the vaults, but its shares were not "
                            "written: run subscription init again with another --out");
        return kc_cli_fail(cli, &err);
    }
    free(file);
    fprintf(kc_cli_report(cli, s.out),
            "backup domain of subscription '%s' installed on %zu vault%s; security-"
            "domain file %s: %u of %zu custodians recover it\n",
            argv[first], s.nvaults, s.nvaults == 1 ? "" : "s", s.out, s.quorum, s.ncustodians);
    return KC_OK;
}

static int cmd_join(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"vault", required_argument, NULL, O_VAULT},
        {"domain", required_argument, NULL, O_DOMAIN},
        {"share-key", required_argument, NULL, O_SHARE_KEY},
        {NULL, 0, NULL, 0},
    };
    struct sub_state s;
    kc_ctx *ctx = NULL;
    unsigned char *file = NULL;
    size_t len = 0;
    kc_error err;
    int first, rc;

    memset(&s, 0, sizeof(s));
    rc = kc_cli_parse(cli, argc, argv, opts, sub_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one subscription id");
    if (s.nvaults != 1 || s.domain == NULL || s.nkeys == 0)
        return kc_cli_usage(cli, "give one --vault, --domain FILE and a --share-key for each "
                                 "custodian of the quorum");
    kc_error_clear(&err);
    if (kc_file_read(s.domain, KC_DOMAIN_FILE_MAX, &file, &len, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if (kc_cli_ctx(cli, &ctx) != KC_OK) {
        free(file);
        return cli->error.code;
    }
    rc = kc_domain_join(ctx, argv[first], s.vaults[0], file, len, s.keys, s.nkeys, &err);
    free(file);
    if (rc != KC_OK)
        return kc_cli_fail(cli, &err);
    fprintf(cli->out, "vault '%s' joined the backup domain of subscription '%s'\n", s.vaults[0],
            argv[first]);
    return KC_OK;
}

const kc_cmd kc_cmds_subscription[] = {
    {"subscription", "init", cmd_init,
     "SUB --vault V... --custodian PEM... --quorum M --out FILE.domain",
     "create a subscription's backup domain, install it, split it among custodians",
     "Generates the backup-domain secrets (an AES-256 wrap key and an HMAC key) in\n"
     "locked memory and installs them on each --vault of subscription SUB: a trusted\n"
     "public wrap key made by the security officer (--so-pin-source V=...), and\n"
     "private unwrap and MAC keys (--pin-source V=...). Writes FILE.domain: the\n"
     "secrets split M-of-N (Shamir), each share encrypted with RSA-OAEP to one\n"
     "custodian's public key (PEM public key or certificate). Then wipes them.\n\n"
     "Options:\n"
     "  --vault V        a vault of SUB (repeatable)\n"
     "  --custodian PEM  a custodian's RSA public key, 2048 bits or more (repeatable)\n"
     "  --quorum M       how many custodians it takes to join a new vault\n"
     "  --out FILE       the security-domain file (.domain, mode 0600)\n"
     "  --force          replace an existing regular --out FILE\n\n"
     "Example:\n"
     "  keycustody subscription init contoso-a --vault VaultA1 --custodian alice.pem \\\n"
     "      --custodian bob.pem --custodian carol.pem --quorum 2 --out contoso-a.domain \\\n"
     "      --so-pin-source VaultA1=file:so.pin --pin-source VaultA1=file:a1.pin\n",
     0},
    {"subscription", "join", cmd_join, "SUB --vault NEW --domain FILE.domain --share-key KEY...",
     "install a subscription's backup domain on a new vault, with a quorum of custodians",
     "Each --share-key is a custodian's RSA private key: an unencrypted PEM file, or a\n"
     "key on the custodian's own token named by pkcs11: URI (its PIN by\n"
     "--pin-source TOKEN=...). The shares are recombined, checked against the\n"
     "domain's key check value, and installed on NEW (SO PIN and user PIN). Fewer\n"
     "shares than the quorum, a key that is no custodian's, a wrong share or a vault\n"
     "of another subscription: an error, and nothing is installed.\n\n"
     "Example:\n"
     "  keycustody subscription join contoso-a --vault VaultA3 --domain contoso-a.domain \\\n"
     "      --share-key alice-key.pem --share-key 'pkcs11:token=Bob;object=BobShare' ...\n",
     0},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
