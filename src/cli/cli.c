/* Dispatch, common options, PIN sources and prompts, error rendering. */
#include "cli.h"
#include "kc_vault.h"
#include "kc_store.h"
#include "kc_util.h"

#include <jansson.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#define KC_VERSION KC_VERSION_STRING

static const kc_cmd *const groups[] = {kc_cmds_vault,        kc_cmds_key,    kc_cmds_access,
                                       kc_cmds_subscription, kc_cmds_dep,    kc_cmds_data,
                                       kc_cmds_status,       kc_cmds_rewrap, kc_cmds_tenant,
                                       kc_cmds_policy,       kc_cmds_audit,  kc_cmds_module};
static const char *const group_summary[] = {
    "initialise and inspect vaults (PKCS#11 tokens with keycustody metadata)",
    "RSA root keys: create, rotate, update, delete, recover, purge, back up, restore, wrap",
    "access policies: which principal may do what with a vault's keys",
    "the backup domain a subscription's vaults share, split among custodians",
    "data encryption policies: a DEP key either custodian vault can unwrap",
    "data under a DEP: items sealed in a scope (tenant, mailbox:ID, geo:CODE)",
    "encryption status per DEP and per scope",
    "the job that brings every scope key under its DEP's current key",
    "the tenant as a whole: leaving Customer Key",
    "the layout as code: check a YAML layout file, plan and apply it",
    "the audit log: every operation on keys, vaults and DEPs, chained and sealed on tokens",
    "PKCS#11 modules: which are loaded, and what each can do (probed, not assumed)",
};
#define N_GROUPS (sizeof(groups) / sizeof(groups[0]))
_Static_assert(sizeof(group_summary) / sizeof(group_summary[0]) == N_GROUPS,
               "one summary per command group");

static const char common_help[] =
    "Common options:\n"
    "  --module PATH|NAME      PKCS#11 module file, or a module registered with p11-kit by\n"
    "                          its name, or a p11-kit module file (FILE.module: its\n"
    "                          module: with its x-init-reserved:, or its remote:, a\n"
    "                          p11-kit server's unix socket) (or KEYCUSTODY_MODULE);\n"
    "                          default: every module registered with p11-kit. Repeatable,\n"
    "                          for several; and VAULT=MODULE: that vault's token is on\n"
    "                          that module only\n"
    "  --pin-source SOURCE     user PIN for the one vault the command uses; or VAULT=SOURCE,\n"
    "                          repeatable, for several. SOURCE is env:NAME or file:PATH\n"
    "                          (mode 0600, yours). Without one: a no-echo prompt on a terminal\n"
    "  --so-pin-source SOURCE  the same for security-officer PINs\n"
    "  --as PRINCIPAL          who acts (or KEYCUSTODY_PRINCIPAL)\n"
    "  --store PATH|URI        the service store (or KEYCUSTODY_STORE): DEPs and their\n"
    "                          wrapped keys, assignments; a file (SQLite), or a\n"
    "                          postgresql://... URI (a database). Its rows are checked on its\n"
    "                          service vault, whose PIN source KEYCUSTODY_SERVICE_PIN_SOURCE\n"
    "                          may name (every command that uses rows needs it)\n"
    "  --audit PATH            the audit log (or KEYCUSTODY_AUDIT; else the layout's audit:,\n"
    "                          else audit.jsonl beside the service store). A command that\n"
    "                          changes or uses keys is not run when its log cannot be written\n"
    "  --audit-syslog          also send each audit record to syslog (authpriv.notice)\n"
    "  --json                  machine-readable output on stdout (read commands)\n"
    "  -h, --help              this help\n"
    "A PIN is never taken from the command line.\n";

static const char exit_help[] =
    "Exit codes: 0 ok, 1 error, 2 usage, 3 layout invalid, 4 not found, 5 conflict,\n"
    "6 denied (login, PIN, key usage), 7 token or module failure, 8 integrity,\n"
    "10 plan has changes.\n";

size_t kc_cli_groups(const kc_cmd *const **cmds, const char *const **summaries)
{
    *cmds = groups;
    *summaries = group_summary;
    return N_GROUPS;
}

const char *kc_cli_common_help(void)
{
    return common_help;
}

const char *kc_cli_exit_help(void)
{
    return exit_help;
}

/* "group verb", or "group" for a command that is a group of its own. */
static const char *cmd_name(const kc_cmd *c, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s%s", c->group, c->verb[0] ? " " : "", c->verb);
    return buf;
}

static void print_top_help(FILE *f)
{
    size_t g;
    const kc_cmd *c;

    fprintf(f, "usage: keycustody [COMMON OPTIONS] GROUP COMMAND [OPTIONS] [ARGS]\n"
               "       keycustody --version\n\n"
               "Custody of HSM root keys through PKCS#11, modelled on Microsoft 365 Customer "
               "Key.\n\n");
    for (g = 0; g < N_GROUPS; g++) {
        fprintf(f, "%s: %s\n", groups[g][0].group, group_summary[g]);
        for (c = groups[g]; c->group != NULL; c++) {
            char name[48];
            fprintf(f, "  keycustody %-26s %s\n", cmd_name(c, name, sizeof(name)), c->summary);
        }
        fprintf(f, "\n");
    }
    fprintf(f,
            "Run 'keycustody GROUP COMMAND --help' for a command's options.\n"
            "'keycustody --commands' lists every command for shell completion, one a line:\n"
            "GROUP [VERB] [first operand of its usage] then its options, '=' after one that\n"
            "takes a value.\n\n%s\n%s",
            common_help, exit_help);
}

static void print_group_help(FILE *f, const kc_cmd *cmds, size_t g)
{
    const kc_cmd *c;

    fprintf(f, "usage: keycustody %s COMMAND [OPTIONS]\n\n%s\n\n", cmds[0].group, group_summary[g]);
    for (c = cmds; c->group != NULL; c++)
        fprintf(f, "  %-14s %s\n", c->verb, c->summary);
    fprintf(f, "\nRun 'keycustody %s COMMAND --help' for a command's options.\n", cmds[0].group);
}

/* The help, then the command's own options as its parser takes them: a
 * test holds the text to that list, so the two cannot drift apart. */
static void print_cmd_help(FILE *f, const kc_cmd *c, const struct option *own)
{
    char name[48];
    size_t i;

    fprintf(f, "usage: keycustody %s %s\n\n%s\n\n%s\n", cmd_name(c, name, sizeof(name)),
            c->synopsis, c->summary, c->help);
    if (own != NULL && own[0].name != NULL) {
        fprintf(f, "This command's options:");
        for (i = 0; own[i].name != NULL; i++)
            fprintf(f, " --%s", own[i].name);
        fprintf(f, "\n\n");
    }
    fprintf(f, "%s\n%s", common_help, exit_help);
}

int kc_cli_usage(kc_cli *cli, const char *fmt, ...)
{
    va_list ap;

    kc_error_clear(&cli->error);
    cli->error.code = KC_USAGE;
    va_start(ap, fmt);
    vsnprintf(cli->error.msg, sizeof(cli->error.msg), fmt, ap);
    va_end(ap);
    char name[48];

    if (cli->cmd != NULL)
        kc_error_hint(&cli->error, "see 'keycustody %s --help'",
                      cmd_name(cli->cmd, name, sizeof(name)));
    return KC_USAGE;
}

int kc_cli_fail(kc_cli *cli, const kc_error *err)
{
    cli->error = *err;
    if (cli->error.code == KC_OK)
        cli->error.code = KC_ERR;
    return cli->error.code;
}

void kc_cli_print_json(kc_cli *cli, json_t *value)
{
    if (value == NULL)
        return;
    json_dumpf(value, cli->out, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fputc('\n', cli->out);
    json_decref(value);
}

enum {
    OPT_MODULE = 1,
    OPT_PIN_SOURCE,
    OPT_SO_PIN_SOURCE,
    OPT_AS,
    OPT_STORE,
    OPT_JSON,
    OPT_HELP,
    OPT_AUDIT,
    OPT_AUDIT_SYSLOG,
};

static const struct option common_opts[] = {
    {"module", required_argument, NULL, OPT_MODULE},
    {"pin-source", required_argument, NULL, OPT_PIN_SOURCE},
    {"so-pin-source", required_argument, NULL, OPT_SO_PIN_SOURCE},
    {"as", required_argument, NULL, OPT_AS},
    {"store", required_argument, NULL, OPT_STORE},
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, OPT_HELP},
    {"audit", required_argument, NULL, OPT_AUDIT},
    {"audit-syslog", no_argument, NULL, OPT_AUDIT_SYSLOG},
};
#define N_COMMON (sizeof(common_opts) / sizeof(common_opts[0]))

/* The vault a source names ("VAULT=SOURCE"), as its length; 0 for none. */
static size_t source_vault(const char *arg)
{
    size_t eq = strcspn(arg, "=");

    return arg[eq] == '=' && memchr(arg, ':', eq) == NULL ? eq : 0;
}

static int add_source(kc_cli *cli, const char **list, size_t *n, const char *arg)
{
    size_t i, v = source_vault(arg);

    if (*n == KC_CLI_MAX_SOURCES)
        return kc_cli_usage(cli, "at most %d PIN sources of one kind", KC_CLI_MAX_SOURCES);
    /* one source per vault: which of two would be meant is not for us to guess */
    for (i = 0; v > 0 && i < *n; i++)
        if (source_vault(list[i]) == v && strncmp(list[i], arg, v) == 0)
            return kc_cli_usage(cli, "two PIN sources of one kind for vault '%.*s'", (int)v, arg);
    list[(*n)++] = arg;
    return 0;
}

/* --module MODULE, or VAULT=MODULE: a vault name before '=' (a path has a
 * '/' or a '.' there, a registered module's name no '='). */
static int add_module(kc_cli *cli, const char *arg)
{
    kc_module_set *m = &cli->modules;
    const char *sep = strchr(arg, '=');
    size_t eq = sep != NULL ? (size_t)(sep - arg) : 0, i;
    char *vault;
    kc_error e;

    if (arg[0] == '\0')
        return kc_cli_usage(cli, "--module '': give a module's file, its p11-kit name or a "
                                 "module file");
    if (!cli->module_given) /* the command line replaces KEYCUSTODY_MODULE */
        memset(m, 0, sizeof(*m));
    cli->module_given = 1;
    if (sep != NULL && eq < sizeof(cli->module_vaults[0]) && memchr(arg, '/', eq) == NULL) {
        if (m->nbinds == KC_P11_BINDS_MAX)
            return kc_cli_usage(cli, "--module: at most %d vaults", KC_P11_BINDS_MAX);
        vault = cli->module_vaults[m->nbinds];
        snprintf(vault, sizeof(cli->module_vaults[0]), "%.*s", (int)eq, arg);
        if (kc_vault_check_name(vault, &e) != KC_OK)
            return kc_cli_usage(cli, "--module '%s': %s", arg, e.msg);
        if (arg[eq + 1] == '\0')
            return kc_cli_usage(cli, "--module '%s': give the module after '='", arg);
        for (i = 0; i < m->nbinds; i++)
            if (strlen(m->binds[i].vault) == eq && strncmp(m->binds[i].vault, arg, eq) == 0)
                return kc_cli_usage(cli, "--module: vault '%s' is given two modules", vault);
        m->binds[m->nbinds].vault = vault;
        m->binds[m->nbinds++].module = arg + eq + 1;
    } else {
        if (m->npaths == KC_P11_MODULES_MAX)
            return kc_cli_usage(cli, "--module: at most %d modules", KC_P11_MODULES_MAX);
        m->paths[m->npaths++] = arg;
    }
    if (cli->module == NULL || m->npaths + m->nbinds == 1)
        cli->module = m->npaths > 0 ? m->paths[0] : m->binds[0].module;
    return 0;
}

/* Options a command may take more than once; every other one once. */
static int repeatable(const char *name)
{
    static const char *const names[] = {
        "module", "pin-source", "so-pin-source", "vault", "custodian", "share-key", "tag"};
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(name, names[i]) == 0)
            return 1;
    return 0;
}

/* getopt_long takes any unambiguous abbreviation ("--pi" for "--pin-source"),
 * and then nothing that reads argv for what an option means (the audit
 * record's copy of the command line withholds what follows a PIN option) can
 * tell. One rule for every command: long options are written in full. Walks
 * argv as GNU getopt does (options anywhere, "--" ends them, a required value
 * may be the next word). */
static int refuse_abbreviations(kc_cli *cli, int argc, char **argv, const struct option *opts)
{
    const struct option *o, *prefix_of;
    size_t len;
    int i;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strncmp(argv[i], "--", 2) != 0 || argv[i][2] == '\0')
            continue;
        len = strcspn(argv[i] + 2, "=");
        prefix_of = NULL;
        for (o = opts; o->name != NULL; o++) {
            if (strlen(o->name) == len && strncmp(o->name, argv[i] + 2, len) == 0)
                break;
            if (prefix_of == NULL && strncmp(o->name, argv[i] + 2, len) == 0)
                prefix_of = o;
        }
        if (o->name != NULL) {
            if (o->has_arg == required_argument && argv[i][2 + len] != '=')
                i++; /* its value */
            continue;
        }
        if (prefix_of != NULL)
            return kc_cli_usage(cli, "option '--%.*s' is short for '--%s': write options in full",
                                (int)len, argv[i] + 2, prefix_of->name);
    }
    return 0;
}

int kc_cli_parse(kc_cli *cli, int argc, char **argv, const struct option *own,
                 int (*on_opt)(kc_cli *cli, int opt, const char *arg, void *state), void *state,
                 int *first)
{
    struct option opts[64];
    unsigned char seen[64] = {0};
    char name[48];
    size_t n = 0, i;
    int c, r, idx;

    for (i = 0; own != NULL && own[i].name != NULL && n < 40; i++)
        opts[n++] = own[i];
    for (i = 0; i < N_COMMON; i++)
        opts[n++] = common_opts[i];
    memset(&opts[n], 0, sizeof(opts[n]));

    if (cli->list_options) {
        for (i = 0; i < n; i++)
            if (strcmp(opts[i].name, "json") != 0 || cli->cmd->reads)
                fprintf(cli->out, " --%s%s", opts[i].name,
                        opts[i].has_arg == no_argument ? "" : "=");
        return -1;
    }
    r = refuse_abbreviations(cli, argc, argv, opts);
    if (r != 0)
        return r;
    optind = 0; /* GNU: start over, so commands can run many times in one process */
    opterr = 0;
    while ((idx = -1, c = getopt_long(argc, argv, ":h", opts, &idx)) != -1) {
        /* the same rule for every command: an option given twice is refused,
         * rather than the last (or the first) silently winning */
        if (idx >= 0 && idx < (int)n && seen[idx]++ && !repeatable(opts[idx].name))
            return kc_cli_usage(cli, "--%s is given more than once; give it once", opts[idx].name);
        switch (c) {
        case OPT_MODULE:
            if ((r = add_module(cli, optarg)) != 0)
                return r;
            break;
        case OPT_PIN_SOURCE:
            if ((r = add_source(cli, cli->pin_sources, &cli->npin, optarg)) != 0)
                return r;
            break;
        case OPT_SO_PIN_SOURCE:
            if ((r = add_source(cli, cli->so_pin_sources, &cli->nso, optarg)) != 0)
                return r;
            break;
        case OPT_AS:
            cli->principal = optarg;
            break;
        case OPT_STORE:
            cli->store = optarg;
            break;
        case OPT_AUDIT:
            cli->audit_opt = optarg;
            break;
        case OPT_AUDIT_SYSLOG:
            cli->audit_syslog = 1;
            break;
        case OPT_JSON:
            if (!cli->cmd->reads)
                return kc_cli_usage(cli, "'%s' has no --json output",
                                    cmd_name(cli->cmd, name, sizeof(name)));
            cli->json = 1;
            break;
        case 'h':
        case OPT_HELP:
            print_cmd_help(cli->out, cli->cmd, own);
            return -1;
        case ':':
            return kc_cli_usage(cli, "option '%s' needs a value", argv[optind - 1]);
        case '?':
            if (optopt != 0)
                return kc_cli_usage(cli, "unknown option '-%c'", optopt);
            return kc_cli_usage(cli, "unknown option '%s'", argv[optind - 1]);
        default:
            if (on_opt == NULL)
                return kc_cli_usage(cli, "unexpected option");
            r = on_opt(cli, c, optarg, state);
            if (r != 0)
                return r;
        }
    }
    *first = optind;
    cli->ran = 1;
    cli->operands = argv + optind;
    cli->noperands = argc - optind;
    r = kc_cli_audit_prepare(cli);
    if (r != 0)
        cli->ran = 0; /* refused before it did anything */
    return r;
}

/* --- PINs --- */

/* While a prompt has echo off: the terminal it must give back. A signal that
 * ends or stops the process restores it first (the handler uses only
 * async-signal-safe calls), then lets the signal do what it would have done;
 * after a stop the prompt turns echo off again. */
static const int prompt_signals[] = {SIGINT, SIGTERM, SIGQUIT, SIGHUP, SIGTSTP};
#define N_PROMPT_SIGNALS (sizeof(prompt_signals) / sizeof(prompt_signals[0]))
static volatile sig_atomic_t prompt_fd = -1;
static struct termios prompt_old, prompt_quiet;
static struct sigaction prompt_prev[N_PROMPT_SIGNALS];

static void prompt_on_signal(int sig)
{
    int saved = errno, fd = prompt_fd;
    struct sigaction dfl;
    sigset_t unblock;

    if (fd >= 0)
        (void)tcsetattr(fd, TCSAFLUSH, &prompt_old);
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    (void)sigaction(sig, &dfl, NULL);
    sigemptyset(&unblock);
    sigaddset(&unblock, sig);
    (void)sigprocmask(SIG_UNBLOCK, &unblock, NULL);
    (void)raise(sig); /* ends the process, or stops it until SIGCONT */
    if (sig == SIGTSTP && fd >= 0) {
        struct sigaction again;
        memset(&again, 0, sizeof(again));
        again.sa_handler = prompt_on_signal;
        (void)sigaction(SIGTSTP, &again, NULL);
        (void)tcsetattr(fd, TCSAFLUSH, &prompt_quiet);
    }
    errno = saved;
}

static void prompt_guard(int fd)
{
    struct sigaction sa;
    size_t i;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = prompt_on_signal;
    prompt_fd = fd;
    for (i = 0; i < N_PROMPT_SIGNALS; i++)
        (void)sigaction(prompt_signals[i], &sa, &prompt_prev[i]);
}

static void prompt_unguard(void)
{
    size_t i;

    for (i = 0; i < N_PROMPT_SIGNALS; i++)
        (void)sigaction(prompt_signals[i], &prompt_prev[i], NULL);
    prompt_fd = -1;
}

/* Reads a line from the terminal with echo off. */
static kc_rc prompt_secret(const char *prompt, kc_secret **out, kc_error *err)
{
    struct termios old, quiet;
    kc_secret *s = NULL;
    int fd, restored = 0;
    char c;
    ssize_t n;
    kc_rc r = KC_ERR;

    *out = NULL;
    fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return kc_error_set(err, KC_USAGE, "no terminal to ask for a PIN on");
    if (tcgetattr(fd, &old) != 0) {
        close(fd);
        return kc_error_set(err, KC_USAGE, "no terminal to ask for a PIN on");
    }
    quiet = old;
    quiet.c_lflag &= (tcflag_t) ~(ECHO | ECHONL);
    quiet.c_lflag |= ICANON;
    prompt_old = old;
    prompt_quiet = quiet;
    prompt_guard(fd);
    (void)tcsetattr(fd, TCSAFLUSH, &quiet);
    if (write(fd, prompt, strlen(prompt)) < 0)
        goto cleanup;
    s = kc_secret_new(KC_SECRET_PIN_MAX + 1);
    if (s == NULL) {
        r = kc_error_set(err, KC_ERR, "out of memory");
        goto cleanup;
    }
    for (;;) {
        n = read(fd, &c, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || c == '\n' || c == '\r')
            break;
        if (s->len == s->cap) {
            r = kc_error_set(err, KC_USAGE, "PIN longer than %d characters", KC_SECRET_PIN_MAX);
            goto cleanup;
        }
        s->data[s->len++] = (unsigned char)c;
    }
    c = 0;
    (void)tcsetattr(fd, TCSAFLUSH, &old);
    restored = 1;
    if (write(fd, "\n", 1) < 0)
        goto cleanup;
    if (s->len == 0) {
        r = kc_error_set(err, KC_USAGE, "empty PIN");
        goto cleanup;
    }
    *out = s;
    s = NULL;
    r = KC_OK;
cleanup:
    if (!restored)
        (void)tcsetattr(fd, TCSAFLUSH, &old);
    prompt_unguard();
    kc_secret_free(s);
    close(fd);
    return r;
}

static const char *kind_name(kc_pin_kind kind)
{
    switch (kind) {
    case KC_PIN_SO:
        return "security-officer PIN";
    case KC_PIN_NEW_USER:
        return "new user PIN";
    case KC_PIN_NEW_SO:
        return "new security-officer PIN";
    default:
        return "user PIN";
    }
}

static kc_rc pin_cb(void *arg, const char *vault, kc_pin_kind kind, kc_secret **out, kc_error *err)
{
    kc_cli *cli = arg;
    int so = kind == KC_PIN_SO || kind == KC_PIN_NEW_SO, ambiguous;
    const char *src = so ? kc_secret_source_for(cli->so_pin_sources, cli->nso, vault, &ambiguous)
                         : kc_secret_source_for(cli->pin_sources, cli->npin, vault, &ambiguous);
    const char *opt = so ? "--so-pin-source" : "--pin-source";
    kc_secret *again = NULL;
    char prompt[128];
    kc_rc r;

    *out = NULL;
    if (ambiguous) {
        kc_error_set(err, KC_USAGE, "several %s options without a vault name", opt);
        kc_error_hint(err, "with several vaults, write %s VAULT=SOURCE for each", opt);
        return KC_USAGE;
    }
    if (src == NULL && !ambiguous) {
        /* Then the layout's pin: for that vault ("VAULT=SOURCE" entries). */
        src = kc_secret_source_for(so ? cli->layout_so_pins : cli->layout_pins, cli->nlayout, vault,
                                   &ambiguous);
    }
    /* Then the service's own: the vault that checks the store's rows. */
    if (src == NULL && !so && cli->store_service[0] != '\0' &&
        strcmp(vault, cli->store_service) == 0) {
        src = getenv("KEYCUSTODY_SERVICE_PIN_SOURCE");
        if (src != NULL && src[0] == '\0')
            src = NULL;
    }
    if (src != NULL) {
        r = kc_secret_from_source(src, out, err);
        if (r != KC_OK)
            return kc_error_prefix(err, "cannot read the %s of vault '%s'", kind_name(kind), vault);
        return KC_OK;
    }
    if (!isatty(STDIN_FILENO) || cli->no_prompt) {
        kc_error_set(err, KC_USAGE, "no PIN source for vault '%s' (%s)", vault, kind_name(kind));
        kc_error_hint(err, "give %s %s=env:NAME or %s=file:PATH (mode 0600)", opt, vault, vault);
        return KC_USAGE;
    }
    snprintf(prompt, sizeof(prompt), "Enter the %s for vault '%s': ", kind_name(kind), vault);
    r = prompt_secret(prompt, out, err);
    if (r != KC_OK || (kind != KC_PIN_NEW_USER && kind != KC_PIN_NEW_SO))
        return r;
    r = prompt_secret("Repeat it: ", &again, err);
    if (r == KC_OK &&
        (again->len != (*out)->len || memcmp(again->data, (*out)->data, again->len) != 0))
        r = kc_error_set(err, KC_USAGE, "the two PINs differ");
    kc_secret_free(again);
    if (r != KC_OK) {
        kc_secret_free(*out);
        *out = NULL;
    }
    return r;
}

/* A vault first seen: the service store pins its vault key from now on,
 * once the command is over (pin_flush). A vault seen twice, with another
 * key, is not pinned at all: which one is genuine is not for first use to
 * decide. */
static void pin_seen(void *arg, const char *vault, const char *fingerprint)
{
    kc_cli *cli = arg;
    size_t i;

    for (i = 0; i < cli->nseen; i++)
        if (strcmp(cli->seen[i].vault, vault) == 0) {
            if (strcmp(cli->seen[i].fingerprint, fingerprint) != 0)
                cli->seen[i].fingerprint[0] = '\0';
            return;
        }
    if (cli->nseen == KC_P11_BINDS_MAX) {
        fprintf(cli->err,
                "warning: vault '%s' was not pinned in the service store: more than %d "
                "vaults first seen by one command\n",
                vault, KC_P11_BINDS_MAX);
        return;
    }
    snprintf(cli->seen[cli->nseen].vault, sizeof(cli->seen[0].vault), "%s", vault);
    snprintf(cli->seen[cli->nseen++].fingerprint, sizeof(cli->seen[0].fingerprint), "%s",
             fingerprint);
}

static void pin_flush(kc_cli *cli)
{
    kc_store *st = NULL;
    kc_error err;
    size_t i;

    if (cli->nseen == 0)
        return;
    kc_error_clear(&err);
    if (kc_store_open(cli->store, &st, &err) != KC_OK) {
        fprintf(cli->err, "warning: %zu vault%s not pinned in the service store: %s\n", cli->nseen,
                cli->nseen == 1 ? " was" : "s were", err.msg);
        return;
    }
    for (i = 0; i < cli->nseen; i++) {
        if (cli->seen[i].fingerprint[0] == '\0')
            fprintf(cli->err,
                    "warning: vault '%s' was not pinned in the service store: this command "
                    "saw two vault keys for it\n",
                    cli->seen[i].vault);
        else if (kc_store_pin_record(st, cli->seen[i].vault, cli->seen[i].fingerprint, &err) !=
                 KC_OK)
            fprintf(cli->err, "warning: vault '%s' was not pinned in the service store: %s\n",
                    cli->seen[i].vault, err.msg);
    }
    kc_store_close(st);
    cli->nseen = 0;
}

/* With a service store that exists: the vault keys it pinned hold for
 * every vault this command opens, and new ones are pinned at first use. */
static kc_rc use_store_pins(kc_cli *cli)
{
    kc_store *st = NULL;
    kc_rc r;

    if (cli->store == NULL || cli->store[0] == '\0' ||
        (!kc_store_is_uri(cli->store) && access(cli->store, F_OK) != 0))
        return KC_OK;
    r = kc_store_open(cli->store, &st, &cli->error);
    if (r == KC_OK)
        r = kc_store_pins_load(st, cli->ctx, &cli->error);
    kc_store_close(st);
    if (r == KC_OK) {
        cli->ctx->seen_fn = pin_seen;
        cli->ctx->seen_arg = cli;
    }
    return r;
}

/* The commands that change a vault's state (its metadata, access policy,
 * keys): each vault they open is locked on this host until they end. */
static int changes_vaults(const kc_cmd *c)
{
    static const char *const verbs[] = {
        "access set",   "access remove",   "dep create",        "dep purge",
        "key create",   "key rotate",      "key update",        "key delete",
        "key recover",  "key purge",       "key restore",       "key import",
        "policy apply", "tenant offboard", "subscription init", "subscription join",
        "vault init",
    };
    char name[64];
    size_t i;

    if (c == NULL)
        return 0;
    snprintf(name, sizeof(name), "%s %s", c->group, c->verb);
    for (i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
        if (strcmp(name, verbs[i]) == 0)
            return 1;
    return 0;
}

kc_rc kc_cli_ctx(kc_cli *cli, kc_ctx **out)
{
    kc_rc r;

    if (cli->ctx == NULL) {
        r = kc_ctx_new_set(&cli->modules, pin_cb, cli, &cli->ctx, &cli->error);
        if (r != KC_OK)
            return r;
        cli->ctx->event_fn = kc_cli_audit_event;
        cli->ctx->event_arg = cli;
        cli->ctx->lock_vaults = changes_vaults(cli->cmd);
        r = use_store_pins(cli);
        if (r != KC_OK)
            return r;
    }
    *out = cli->ctx;
    return KC_OK;
}

/* --- dispatch --- */

static void print_error(kc_cli *cli)
{
    char line[2048];

    kc_error_format(&cli->error, line, sizeof(line));
    fprintf(cli->err, "error: %s\n", line);
    if (cli->error.hint[0] != '\0')
        fprintf(cli->err, "hint: %s\n", cli->error.hint);
}

static int find_group(const char *name, size_t *g)
{
    for (*g = 0; *g < N_GROUPS; (*g)++)
        if (strcmp(groups[*g][0].group, name) == 0)
            return 1;
    return 0;
}

/* keycustody --commands: each command on a line, for shell completion
 * (completion/keycustody.bash). Its options are printed by its own parser,
 * so the list is what the command takes; the command itself does not run. */
static int print_commands(FILE *out, FILE *err)
{
    const kc_cmd *c;
    const char *syn;
    char name[48], *args[2] = {name, NULL};
    size_t g, len;
    int rc = KC_OK;
    kc_cli cli;

    for (g = 0; g < N_GROUPS; g++)
        for (c = groups[g]; c->group != NULL; c++) {
            fputs(cmd_name(c, name, sizeof(name)), out);
            /* the first word of the usage, when it is an operand */
            syn = c->synopsis + strspn(c->synopsis, " ");
            len = strcspn(syn, " \n");
            if (len > 0 && syn[0] != '-' && strncmp(syn, "[-", 2) != 0)
                fprintf(out, " %.*s", (int)len, syn);
            memset(&cli, 0, sizeof(cli));
            cli.out = out;
            cli.err = err;
            cli.cmd = c;
            cli.list_options = 1;
            if (c->fn(&cli, 1, args) != -1) {
                fprintf(err, "error: '%s' did not list its options\n", name);
                rc = KC_ERR;
            }
            kc_ctx_free(cli.ctx);
            fputc('\n', out);
        }
    return rc;
}

static int is_help(const char *s)
{
    return strcmp(s, "--help") == 0 || strcmp(s, "-h") == 0 || strcmp(s, "help") == 0;
}

/* Common options written before the command group ("keycustody --module M
 * vault list", as git and kubectl take them) are moved after the command,
 * where its parser reads them with the rest. *lead is how many argv words
 * they take; KC_USAGE for an option that is not a common one. */
static int leading_options(int argc, char **argv, int *lead, FILE *err)
{
    const struct option *o;
    size_t len;
    int i;

    for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0 && argv[i][2] != '\0'; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "--version") == 0 ||
            strcmp(argv[i], "--commands") == 0)
            break;
        len = strcspn(argv[i] + 2, "=");
        for (o = common_opts; o < common_opts + N_COMMON; o++)
            if (strlen(o->name) == len && strncmp(o->name, argv[i] + 2, len) == 0)
                break;
        if (o == common_opts + N_COMMON) {
            fprintf(err,
                    "error: option '%s' before the command: only the common options go "
                    "there\nhint: write a command's own options after it; see "
                    "'keycustody --help'\n",
                    argv[i]);
            return KC_USAGE;
        }
        if (o->has_arg == required_argument && argv[i][2 + len] != '=' && ++i == argc) {
            fprintf(err, "error: option '%s' needs a value\n", argv[i - 1]);
            return KC_USAGE;
        }
    }
    *lead = i - 1;
    return KC_OK;
}

static int run_main(int argc, char **argv, FILE *out, FILE *err);

int kc_cli_main(int argc, char **argv, FILE *out, FILE *err)
{
    char **moved;
    size_t g;
    int lead = 0, words, rc;

    if (leading_options(argc, argv, &lead, err) != KC_OK)
        return KC_USAGE;
    if (lead == 0)
        return run_main(argc, argv, out, err);
    if (lead + 1 == argc) {
        fprintf(err, "error: no command after the options\nhint: see 'keycustody --help'\n");
        return KC_USAGE;
    }
    /* the group and its verb (a group that is one command has none) */
    words =
        find_group(argv[lead + 1], &g) && groups[g][0].verb[0] != '\0' && lead + 2 < argc ? 2 : 1;
    moved = calloc((size_t)argc + 1, sizeof(*moved));
    if (moved == NULL) {
        fprintf(err, "error: out of memory\n");
        return KC_ERR;
    }
    moved[0] = argv[0];
    memcpy(moved + 1, argv + 1 + lead, (size_t)words * sizeof(*moved));
    memcpy(moved + 1 + words, argv + 1, (size_t)lead * sizeof(*moved));
    memcpy(moved + 1 + words + lead, argv + 1 + lead + words,
           (size_t)(argc - 1 - lead - words) * sizeof(*moved));
    rc = run_main(argc, moved, out, err);
    free(moved);
    return rc;
}

static int run_main(int argc, char **argv, FILE *out, FILE *err)
{
    kc_cli cli;
    const kc_cmd *c;
    char name[48];
    size_t g;
    int rc, single;

    memset(&cli, 0, sizeof(cli));
    cli.out = out;
    cli.err = err;
    if (argc < 2) {
        print_top_help(err);
        return KC_USAGE;
    }
    /* "keycustody help vault [init]", "--help vault": that command's help,
     * as git help takes it */
    if (is_help(argv[1]) && argc > 2 && argc <= 4 && argv[2][0] != '-' && !is_help(argv[2])) {
        char *again[5] = {argv[0], argv[2], NULL, NULL, NULL};
        int n = 2;

        if (argc == 4)
            again[n++] = argv[3];
        again[n++] = "--help";
        return run_main(n, again, out, err);
    }
    if (is_help(argv[1])) {
        print_top_help(out);
        return KC_OK;
    }
    if (strcmp(argv[1], "--commands") == 0)
        return print_commands(out, err);
    if (strcmp(argv[1], "--version") == 0) {
        fprintf(out, "keycustody %s\n", KC_VERSION);
        return KC_OK;
    }
    if (!find_group(argv[1], &g)) {
        fprintf(err, "error: unknown command '%s'\nhint: see 'keycustody --help'\n", argv[1]);
        return KC_USAGE;
    }
    single = groups[g][0].verb[0] == '\0'; /* a command without a verb: status, rewrap */
    if (!single && (argc < 3 || is_help(argv[2]))) {
        print_group_help(argc < 3 ? err : out, groups[g], g);
        return argc < 3 ? KC_USAGE : KC_OK;
    }
    for (c = groups[g]; !single && c->group != NULL && strcmp(c->verb, argv[2]) != 0; c++)
        ;
    if (c->group == NULL) {
        fprintf(err, "error: unknown command '%s %s'\nhint: see 'keycustody %s --help'\n", argv[1],
                argv[2], argv[1]);
        return KC_USAGE;
    }
    cli.cmd = c;
    cli.module = getenv("KEYCUSTODY_MODULE");
    if (cli.module != NULL && cli.module[0] == '\0')
        cli.module = NULL;
    if (cli.module != NULL)
        cli.modules.paths[cli.modules.npaths++] = cli.module;
    cli.principal = getenv("KEYCUSTODY_PRINCIPAL");
    cli.store = getenv("KEYCUSTODY_STORE");
    cli.audit_opt = getenv("KEYCUSTODY_AUDIT");
    cli.service_vault = getenv("KEYCUSTODY_SERVICE_VAULT");
    cmd_name(c, name, sizeof(name));
    kc_cli_audit_begin(&cli, name);
    rc = c->fn(&cli, argc - 2 + single, argv + 2 - single);
    pin_flush(&cli);
    if (rc == -1) {
        rc = KC_OK;
        cli.ran = 0; /* --help */
    }
    fflush(out);
    /* Exit 10 (plan --detailed-exitcode) reports changes, not an error. */
    if (rc != KC_OK && !(rc == KC_CHANGES && cli.error.msg[0] == '\0'))
        print_error(&cli);
    rc = kc_cli_audit_end(&cli, name, argc - 2 + single, argv + 2 - single, rc);
    kc_ctx_free(cli.ctx);
    return rc;
}

/* Opens the store named by --store or KEYCUSTODY_STORE; its rows are
 * believed only once checked. */
static int open_store(kc_cli *cli, kc_store **st)
{
    kc_error err;

    *st = NULL;
    if (cli->store == NULL || cli->store[0] == '\0') {
        kc_error_set(&cli->error, KC_USAGE, "no service store");
        kc_error_hint(&cli->error, "give --store PATH or set KEYCUSTODY_STORE");
        return KC_USAGE;
    }
    /* only the first DEP makes a store: a command that reads one, or
     * changes what is in it, never makes an empty one from a typo */
    if (!kc_store_is_uri(cli->store) && access(cli->store, F_OK) != 0 && errno == ENOENT &&
        !(cli->cmd != NULL && strcmp(cli->cmd->group, "dep") == 0 &&
          strcmp(cli->cmd->verb, "create") == 0)) {
        kc_error_set(&cli->error, KC_NOT_FOUND, "no service store at '%s'", cli->store);
        kc_error_hint(&cli->error, "check --store or KEYCUSTODY_STORE; 'keycustody dep create' "
                                   "makes the store with the first DEP");
        return KC_NOT_FOUND;
    }
    kc_error_clear(&err);
    if (kc_store_open(cli->store, st, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    return 0;
}

int kc_cli_store(kc_cli *cli, kc_store **st)
{
    int rc = open_store(cli, st);

    if (rc == 0)
        kc_store_allow_unchecked(*st); /* shown, never used */
    return rc;
}

kc_rc kc_cli_write(kc_cli *cli, const char *path, const void *data, size_t len, unsigned mode,
                   int force, kc_error *err)
{
    if (strcmp(path, "-") != 0)
        return kc_file_write(path, data, len, mode, force, err);
    if (len > 0 && fwrite(data, 1, len, cli->out) != len)
        return kc_error_set(err, KC_ERR, "cannot write to standard output: %s", strerror(errno));
    return fflush(cli->out) == 0
               ? KC_OK
               : kc_error_set(err, KC_ERR, "cannot write to standard output: %s", strerror(errno));
}

FILE *kc_cli_report(kc_cli *cli, const char *path)
{
    return strcmp(path, "-") == 0 ? cli->err : cli->out;
}

int kc_cli_store_auth(kc_cli *cli, kc_store *st, int create)
{
    const char *named = cli->service_vault != NULL && cli->service_vault[0] != '\0'
                            ? cli->service_vault
                            : (cli->layout_service[0] != '\0' ? cli->layout_service : NULL);
    kc_ctx *ctx = NULL;
    kc_error err;

    kc_error_clear(&err);
    /* the PIN callback serves KEYCUSTODY_SERVICE_PIN_SOURCE to this vault */
    if (kc_store_service_vault(st, cli->store_service, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if (cli->store_service[0] == '\0' && named != NULL)
        snprintf(cli->store_service, sizeof(cli->store_service), "%s", named);
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    if (kc_store_authenticate(ctx, st, named, create, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    return 0;
}

int kc_cli_ctx_store(kc_cli *cli, kc_ctx **ctx, kc_store **st)
{
    int rc;

    /* the store first: a store made now pins the vaults the context opens */
    rc = open_store(cli, st);
    if (rc == 0 && kc_cli_ctx(cli, ctx) != KC_OK)
        rc = cli->error.code;
    if (rc == 0)
        rc = kc_cli_store_auth(cli, *st, 0);
    if (rc != 0) {
        kc_store_close(*st);
        *st = NULL;
    }
    return rc;
}
