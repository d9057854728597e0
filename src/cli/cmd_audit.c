/* The audit log from the command line: which commands are recorded, where
 * the log is, which vault seals a record, syslog; and `audit show` and
 * `audit verify`. */
#include "cli.h"
#include "kc_audit.h"
#include "kc_dep.h"
#include "kc_store.h"
#include "kc_util.h"

#include <jansson.h>

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* A record stays well under KC_AUDIT_LINE_MAX: so many arguments, so long. */
#define MAX_ARGS 32
#define MAX_ARG 256

/* What names the subject of an audited command. */
typedef enum subject {
    SUBJ_NONE = 0, /* nothing in the operands: the command notes what it can */
    SUBJ_VAULT,    /* first operand VAULT */
    SUBJ_KEY,      /* first operand VAULT/KEY */
    SUBJ_DEP,      /* first operand a DEP name or id */
    SUBJ_SCOPE,    /* SCOPE NAME: an item; the DEP is the scope's */
} subject;

/* Every command that changes a token or the store, or uses a key. */
static const struct {
    const char *name;
    subject subj;
} audited[] = {
    {"vault init", SUBJ_VAULT},
    {"key create", SUBJ_KEY},
    {"key rotate", SUBJ_KEY},
    {"key update", SUBJ_KEY},
    {"key delete", SUBJ_KEY},
    {"key recover", SUBJ_KEY},
    {"key purge", SUBJ_KEY},
    {"key backup", SUBJ_KEY},
    {"key restore", SUBJ_VAULT},
    {"key import", SUBJ_KEY},
    {"key wrap", SUBJ_KEY},
    {"key unwrap", SUBJ_KEY},
    {"access set", SUBJ_VAULT},
    {"access remove", SUBJ_VAULT},
    {"subscription init", SUBJ_NONE},
    {"subscription join", SUBJ_NONE},
    {"dep create", SUBJ_DEP},
    {"dep set", SUBJ_DEP},
    {"dep refresh", SUBJ_DEP},
    {"dep purge-request", SUBJ_DEP},
    {"dep purge", SUBJ_DEP},
    {"dep assign", SUBJ_DEP},
    {"data put", SUBJ_SCOPE},
    {"data get", SUBJ_SCOPE},
    {"rewrap", SUBJ_NONE},
    {"tenant offboard", SUBJ_NONE},
    {"policy apply", SUBJ_NONE},
};
#define N_AUDITED (sizeof(audited) / sizeof(audited[0]))

static int find_audited(const char *name, subject *subj)
{
    size_t i;

    for (i = 0; i < N_AUDITED; i++)
        if (strcmp(audited[i].name, name) == 0) {
            *subj = audited[i].subj;
            return 1;
        }
    return 0;
}

void kc_cli_audit_note(kc_cli *cli, const char *field, const char *value)
{
    if (cli->aud == NULL || value == NULL || value[0] == '\0')
        return;
    if (strlen(value) > MAX_ARG)
        json_object_set_new(cli->aud, field,
                            json_sprintf("%.*s...(%zu bytes)", MAX_ARG, value, strlen(value)));
    else
        json_object_set_new(cli->aud, field, json_string(value));
}

/* The log's path: --audit / KEYCUSTODY_AUDIT, the layout's audit:, else
 * audit.jsonl beside the service store. "" when none is known. */
static void audit_path(const kc_cli *cli, char *out, size_t cap)
{
    const char *store = cli->store != NULL && cli->store[0] ? cli->store : cli->store_layout;
    char dir[PATH_MAX];

    out[0] = '\0';
    if (cli->audit_opt != NULL && cli->audit_opt[0] != '\0') {
        snprintf(out, cap, "%s", cli->audit_opt);
    } else if (cli->audit_layout[0] != '\0') {
        snprintf(out, cap, "%s", cli->audit_layout);
    } else if (store[0] != '\0' && !kc_store_is_uri(store)) {
        snprintf(dir, sizeof(dir), "%s", store);
        snprintf(out, cap, "%s/audit.jsonl", dirname(dir));
    }
}

static int open_log(kc_cli *cli)
{
    char path[PATH_MAX];
    kc_error err;

    if (cli->audit != NULL)
        return 0;
    audit_path(cli, path, sizeof(path));
    if (path[0] == '\0')
        return 0;
    kc_error_clear(&err);
    if (kc_audit_open(path, &cli->audit, &err) != KC_OK) {
        kc_error_prefix(&err, "the command was not run: its audit log cannot be written");
        if (err.hint[0] == '\0')
            kc_error_hint(&err, "fix the audit log, or name another with --audit PATH or "
                                "KEYCUSTODY_AUDIT");
        return kc_cli_fail(cli, &err);
    }
    return 0;
}

void kc_cli_audit_begin(kc_cli *cli, const char *name)
{
    subject subj;

    cli->audited = find_audited(name, &subj);
    cli->aud = cli->audited ? json_object() : NULL;
    /* every command keeps its events: a refused login is audited even
     * for a command that is not */
    cli->events = json_array();
}

/* Called when the command's options are parsed: a log that cannot be
 * written stops the command before it changes anything. */
int kc_cli_audit_prepare(kc_cli *cli)
{
    return cli->audited ? open_log(cli) : 0;
}

static void identity(json_t *rec, const kc_cli *cli)
{
    char host[256] = "";
    struct passwd *pw = getpwuid(geteuid());

    if (gethostname(host, sizeof(host) - 1) != 0)
        host[0] = '\0';
    json_object_set_new(rec, "principal",
                        cli->principal != NULL && cli->principal[0] ? json_string(cli->principal)
                                                                    : json_null());
    if (pw != NULL)
        json_object_set_new(rec, "user", json_string(pw->pw_name));
    else
        json_object_set_new(rec, "user", json_sprintf("uid %u", (unsigned)geteuid()));
    json_object_set_new(rec, "host", json_string(host));
}

void kc_cli_audit_event(void *arg, const char *event, const char *vault, const char *dep,
                        const kc_error *err)
{
    kc_cli *cli = arg;
    json_t *e;

    if (cli->events == NULL)
        return;
    e = json_object();
    json_object_set_new(e, "command", json_string(event));
    json_object_set_new(e, "vault", vault != NULL ? json_string(vault) : json_null());
    if (dep != NULL)
        json_object_set_new(e, "dep", json_string(dep));
    json_object_set_new(e, "result",
                        json_string(err == NULL              ? "ok"
                                    : err->code == KC_DENIED ? "denied"
                                                             : "failed"));
    json_object_set_new(e, "code", json_integer(err != NULL ? err->code : 0));
    if (err != NULL) {
        char msg[1200];
        kc_error_format(err, msg, sizeof(msg));
        json_object_set_new(e, "error", json_string(msg));
    }
    json_array_append_new(cli->events, e);
}

/* Fills vault, key, dep, scope and item from the operands, unless noted. */
static void subject_fields(kc_cli *cli, subject subj)
{
    const char *op = cli->noperands > 0 ? cli->operands[0] : NULL;
    const char *slash = op != NULL ? strchr(op, '/') : NULL;
    char vault[64];

    if (op == NULL)
        return;
    switch (subj) {
    case SUBJ_VAULT:
        if (json_object_get(cli->aud, "vault") == NULL)
            kc_cli_audit_note(cli, "vault", op);
        break;
    case SUBJ_KEY:
        if (slash != NULL && json_object_get(cli->aud, "vault") == NULL) {
            snprintf(vault, sizeof(vault), "%.*s", (int)(slash - op), op);
            kc_cli_audit_note(cli, "vault", vault);
            kc_cli_audit_note(cli, "key", slash + 1);
        }
        break;
    case SUBJ_DEP:
        if (op[0] != '-' && json_object_get(cli->aud, "dep") == NULL)
            kc_cli_audit_note(cli, "dep", op);
        break;
    case SUBJ_SCOPE:
        kc_cli_audit_note(cli, "scope", op);
        if (cli->noperands > 1)
            kc_cli_audit_note(cli, "item", cli->operands[1]);
        break;
    default:
        break;
    }
}

/* The DEP's vaults (A, B, availability) as sealing candidates, from the
 * store when it exists; also notes the DEP of a scope. */
static void dep_vaults(kc_cli *cli, char vaults[3][64])
{
    const char *store = cli->store != NULL && cli->store[0] ? cli->store : cli->store_layout;
    const char *dep = json_string_value(json_object_get(cli->aud, "dep"));
    const char *scope = json_string_value(json_object_get(cli->aud, "scope"));
    kc_store *st = NULL;
    kc_error err;
    kc_dep d;
    int inherited, i, found = 0;

    memset(vaults, 0, 3 * 64);
    if (store[0] == '\0' || (!kc_store_is_uri(store) && access(store, F_OK) != 0) ||
        (dep == NULL && scope == NULL))
        return;
    kc_error_clear(&err);
    if (kc_store_open(store, &st, &err) != KC_OK)
        return;
    kc_store_allow_unchecked(st); /* only names the vaults that seal the record */
    if (dep != NULL)
        found = kc_dep_get(st, dep, &d, &err) == KC_OK;
    else if (kc_dep_scope_check(scope, &err) == KC_OK)
        found = kc_dep_effective(st, scope, &d, &inherited, &err) == KC_OK;
    if (found) {
        if (dep == NULL)
            kc_cli_audit_note(cli, "dep", d.name);
        for (i = 0; i < 3; i++)
            snprintf(vaults[i], 64, "%s", d.keys[i].vault);
    }
    kc_store_close(st);
}

/* A token of this process with its user logged in; with login, logs in
 * from a PIN source (never a prompt) when it is not. */
static kc_tok *logged_in(kc_cli *cli, const char *vault, int login, kc_error *why)
{
    kc_ctx *ctx = cli->ctx;
    kc_tok *tok = NULL;
    kc_error err;
    kc_rc r;

    if (vault == NULL || vault[0] == '\0')
        return NULL;
    kc_error_clear(&err);
    if (ctx == NULL) {
        if (!login || kc_cli_ctx(cli, &ctx) != KC_OK)
            return NULL;
    }
    if (kc_p11_token(ctx->p11, vault, &tok, &err) != KC_OK) {
        if (login && err.code != KC_NOT_FOUND && why->code == KC_OK)
            *why = err;
        return NULL;
    }
    if (kc_tok_is_logged_in(tok))
        return tok;
    if (!login)
        return NULL;
    cli->no_prompt = 1;
    r = kc_ctx_login(ctx, tok, &err);
    cli->no_prompt = 0;
    if (r != KC_OK && r != KC_USAGE && why->code == KC_OK)
        *why = err; /* worth saying; a vault without a PIN source is not */
    return r == KC_OK ? tok : NULL;
}

/* Whether the command's login to vault was refused (an event says so). */
static int login_refused(const kc_cli *cli, const char *vault)
{
    size_t i;
    const json_t *e;

    for (i = 0; vault != NULL && i < json_array_size(cli->events); i++) {
        e = json_array_get(cli->events, i);
        if (strncmp(json_string_value(json_object_get(e, "command")), "login", 5) == 0 &&
            json_is_string(json_object_get(e, "vault")) &&
            strcmp(json_string_value(json_object_get(e, "vault")), vault) == 0)
            return 1;
    }
    return 0;
}

/* The vault the command concerns, else one of its DEP, else the service
 * vault (logging in to it from a PIN source if needed); NULL: unsealed. */
static kc_tok *choose_sealer(kc_cli *cli, kc_error *why)
{
    const char *cands[7];
    char dv[3][64];
    size_t n = 0, i;
    kc_tok *tok;

    dep_vaults(cli, dv);
    cands[n++] = json_string_value(json_object_get(cli->aud, "vault"));
    cands[n++] = dv[0];
    cands[n++] = dv[1];
    cands[n++] = dv[2];
    cands[n++] = cli->service_vault;
    cands[n++] = cli->layout_service;
    cands[n++] = cli->layout_vault;
    for (i = 0; i < n; i++)
        if ((tok = logged_in(cli, cands[i], 0, why)) != NULL)
            return tok;
    /* Nobody logged in (a public-key wrap, a store-only command): log in
     * from a PIN source, never a prompt, and never again where this
     * command's login was refused. */
    for (i = 0; i < n; i++)
        if (!login_refused(cli, cands[i]) && (tok = logged_in(cli, cands[i], 1, why)) != NULL)
            return tok;
    return NULL;
}

/* Sends the line to syslog (authpriv.notice) on KEYCUSTODY_SYSLOG_SOCKET or
 * /dev/log. */
static void to_syslog(kc_cli *cli, const char *line)
{
    const char *path = getenv("KEYCUSTODY_SYSLOG_SOCKET");
    struct sockaddr_un sa;
    char stamp[32], *msg = NULL;
    time_t now = time(NULL);
    struct tm tm;
    int fd, n;

    if (path == NULL || path[0] == '\0')
        path = "/dev/log";
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof(stamp), "%b %e %H:%M:%S", &tm);
    /* facility authpriv (10), severity notice (5) */
    n = asprintf(&msg, "<85>%s keycustody[%ld]: %s", stamp, (long)getpid(), line);
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (n < 0 || fd < 0 ||
        sendto(fd, msg, (size_t)n, 0, (struct sockaddr *)&sa, sizeof(sa)) != (ssize_t)n)
        fprintf(cli->err, "warning: audit record not sent to syslog (%s): %s\n", path,
                strerror(errno));
    if (fd >= 0)
        close(fd);
    free(msg);
}

/* Whether s names a PIN source ([VAULT=]env:NAME or [VAULT=]file:PATH). */
static int is_source(const char *s)
{
    const char *eq = strchr(s, '='), *colon = strchr(s, ':');

    if (eq != NULL && (colon == NULL || eq < colon))
        s = eq + 1;
    return (strncmp(s, "env:", 4) == 0 && s[4] != '\0') ||
           (strncmp(s, "file:", 5) == 0 && s[5] != '\0');
}

/* Whether arg is --pin-source or --so-pin-source, or a prefix getopt takes
 * for one; *value: what follows '=' when given so. */
static int is_pin_option(const char *arg, const char **value)
{
    static const char *const names[] = {"pin-source", "so-pin-source"};
    size_t len, i;

    *value = NULL;
    if (strncmp(arg, "--", 2) != 0)
        return 0;
    arg += 2;
    len = strcspn(arg, "=");
    if (arg[len] == '=')
        *value = arg + len + 1;
    for (i = 0; i < 2; i++)
        if (len >= 3 && strncmp(arg, names[i], len) == 0)
            return 1;
    return 0;
}

/* The command line as recorded. A PIN typed where a source belongs (the
 * command refuses it) or inside a pkcs11: URI is withheld. */
static json_t *recorded_args(int argc, char **argv)
{
    static const char withheld[] = "(withheld: not a PIN source)";
    json_t *args = json_array();
    const char *value;
    int a, pin_next = 0;

    for (a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (pin_next) {
            pin_next = 0;
            if (!is_source(arg))
                arg = withheld;
        } else if (is_pin_option(arg, &value)) {
            if (value == NULL)
                pin_next = 1;
            else if (!is_source(value))
                arg = withheld;
        } else if (strstr(arg, "pin-value") != NULL || strstr(arg, "pin-source=") != NULL) {
            arg = withheld;
        }
        if (a > MAX_ARGS) {
            json_array_append_new(args, json_sprintf("(%d more arguments)", argc - a));
            break;
        }
        if (strlen(arg) > MAX_ARG)
            json_array_append_new(args,
                                  json_sprintf("%.*s...(%zu bytes)", MAX_ARG, arg, strlen(arg)));
        else
            json_array_append_new(args, json_string(arg));
    }
    return args;
}

static void add_common(json_t *rec, const kc_cli *cli, const char *during)
{
    json_object_set_new(rec, "during", json_string(during));
    identity(rec, cli);
}

static kc_rc append(kc_cli *cli, json_t *rec, kc_tok *sealer, kc_error *err)
{
    kc_error seal_err;
    char *line = NULL;
    kc_rc r;

    r = kc_audit_append(cli->audit, rec, sealer, &seal_err, &line, err);
    if (r != KC_OK)
        return r;
    if (seal_err.code == KC_INTEGRITY) {
        /* the log was tampered with: written, unsealed, and the command fails */
        char msg[1200];
        kc_error_format(&seal_err, msg, sizeof(msg));
        fprintf(cli->err, "error: %s\n", msg);
        if (seal_err.hint[0] != '\0')
            fprintf(cli->err, "hint: %s\n", seal_err.hint);
        cli->audit_tampered = 1;
    } else if (seal_err.code != KC_OK) {
        char msg[1200];
        kc_error_format(&seal_err, msg, sizeof(msg));
        fprintf(cli->err, "warning: audit record written unsealed or unanchored: %s\n", msg);
    }
    if (cli->audit_syslog)
        to_syslog(cli, line);
    free(line);
    return KC_OK;
}

int kc_cli_audit_end(kc_cli *cli, const char *name, int argc, char **argv, int rc)
{
    subject subj = SUBJ_NONE;
    json_t *rec = NULL, *e;
    kc_tok *sealer;
    void *it;
    kc_error err;
    size_t i;

    /* a read command is audited too when a login it tried was refused */
    if ((!cli->audited && json_array_size(cli->events) == 0) || !cli->ran ||
        (rc == KC_USAGE && cli->ctx == NULL)) {
        /* nothing was done: a usage error before any token was touched */
        goto done;
    }
    if (cli->audit == NULL && open_log(cli) != 0) {
        fprintf(cli->err, "error: the command %s, but its audit record cannot be written\n",
                rc == KC_OK ? "succeeded" : "failed");
        rc = rc == KC_OK ? KC_ERR : rc;
        goto done;
    }
    if (cli->audit == NULL) {
        fprintf(cli->err,
                "warning: '%s' was not audited: no audit log (give --audit PATH, set "
                "KEYCUSTODY_AUDIT, audit: in the layout, or a service store)\n",
                name);
        goto done;
    }
    (void)find_audited(name, &subj);
    subject_fields(cli, subj);
    kc_error_clear(&err);
    sealer = choose_sealer(cli, &err);
    if (sealer == NULL && err.code != KC_OK) {
        char msg[1200];
        kc_error_format(&err, msg, sizeof(msg));
        fprintf(cli->err, "warning: audit record written unsealed: %s\n", msg);
    }
    kc_error_clear(&err);
    /* events first, in the order they happened */
    for (i = 0; i < json_array_size(cli->events); i++) {
        e = json_array_get(cli->events, i);
        add_common(e, cli, name);
        if (append(cli, e, sealer, &err) != KC_OK)
            break;
    }
    if (err.code == KC_OK) {
        rec = json_object();
        json_object_set_new(rec, "command", json_string(name));
        identity(rec, cli);
        json_object_set_new(rec, "args", recorded_args(argc, argv));
        for (it = json_object_iter(cli->aud); it != NULL; it = json_object_iter_next(cli->aud, it))
            json_object_set(rec, json_object_iter_key(it), json_object_iter_value(it));
        json_object_set_new(rec, "result", json_string(rc == KC_OK ? "ok" : "failed"));
        json_object_set_new(rec, "code", json_integer(rc));
        if (rc != KC_OK && cli->error.msg[0] != '\0') {
            char msg[1200];
            kc_error_format(&cli->error, msg, sizeof(msg));
            json_object_set_new(rec, "error", json_string(msg));
        }
        (void)append(cli, rec, sealer, &err);
    }
    if (err.code != KC_OK) {
        char msg[1200];
        kc_error_format(&err, msg, sizeof(msg));
        fprintf(cli->err, "error: the command %s, but its audit record was not written: %s\n",
                rc == KC_OK ? "succeeded" : "failed", msg);
        if (err.hint[0] != '\0')
            fprintf(cli->err, "hint: %s\n", err.hint);
        if (rc == KC_OK)
            rc = err.code;
    }
    if (cli->audit_tampered && (rc == KC_OK || rc == KC_ERR))
        rc = KC_INTEGRITY;
done:
    json_decref(rec);
    json_decref(cli->aud);
    json_decref(cli->events);
    cli->aud = cli->events = NULL;
    kc_audit_close(cli->audit);
    cli->audit = NULL;
    return rc;
}

/* --- audit show / audit verify --- */

enum { O_SINCE = 256, O_VAULT, O_KEY };

struct show_state {
    const char *since, *vault, *key;
    time_t since_t;
};

static int show_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct show_state *s = st;
    char day[9];

    switch (opt) {
    case O_SINCE:
        s->since = arg;
        if (kc_time_parse_rfc3339(arg, &s->since_t) == 0)
            break;
        if (kc_date_parse(arg, day) == 0) {
            char t[32];
            snprintf(t, sizeof(t), "%.4s-%.2s-%.2sT00:00:00Z", day, day + 4, day + 6);
            if (kc_time_parse_rfc3339(t, &s->since_t) == 0)
                break;
        }
        return kc_cli_usage(cli,
                            "--since '%s': give a date (2026-11-24) or a UTC time "
                            "(2026-11-24T10:00:00Z)",
                            arg);
    case O_VAULT:
        s->vault = arg;
        break;
    case O_KEY:
        s->key = arg;
        break;
    }
    return 0;
}

static int log_path_or_fail(kc_cli *cli, char *path, size_t cap)
{
    audit_path(cli, path, cap);
    if (path[0] != '\0')
        return 0;
    kc_error_set(&cli->error, KC_USAGE, "no audit log named");
    kc_error_hint(&cli->error, "give --audit PATH, set KEYCUSTODY_AUDIT, or name the service store "
                               "(--store) the log sits beside");
    return KC_USAGE;
}

static int matches(const json_t *rec, const struct show_state *s)
{
    const char *vault = json_string_value(json_object_get(rec, "vault"));
    const char *key = json_string_value(json_object_get(rec, "key"));
    const char *t = json_string_value(json_object_get(rec, "time"));
    const char *slash;
    time_t when;

    if (s->since != NULL &&
        (t == NULL || kc_time_parse_rfc3339(t, &when) != 0 || when < s->since_t))
        return 0;
    if (s->vault != NULL && (vault == NULL || strcmp(vault, s->vault) != 0))
        return 0;
    if (s->key != NULL) {
        slash = strchr(s->key, '/');
        if (key == NULL)
            return 0;
        if (slash != NULL)
            return vault != NULL && strlen(vault) == (size_t)(slash - s->key) &&
                   strncmp(vault, s->key, (size_t)(slash - s->key)) == 0 &&
                   strcmp(key, slash + 1) == 0;
        return strcmp(key, s->key) == 0;
    }
    return 1;
}

static void print_record(kc_cli *cli, const json_t *rec)
{
    const char *vault = json_string_value(json_object_get(rec, "vault"));
    const char *key = json_string_value(json_object_get(rec, "key"));
    const char *dep = json_string_value(json_object_get(rec, "dep"));
    const char *principal = json_string_value(json_object_get(rec, "principal"));
    const char *result = json_string_value(json_object_get(rec, "result"));
    const char *by = json_string_value(json_object_get(rec, "sealed_by"));
    char what[256];

    if (vault != NULL && key != NULL)
        snprintf(what, sizeof(what), "%s/%s", vault, key);
    else
        snprintf(what, sizeof(what), "%s", vault != NULL ? vault : "-");
    if (dep != NULL) {
        size_t used = strlen(what);
        snprintf(what + used, sizeof(what) - used, " dep:%s", dep);
    }
    fprintf(cli->out, "%-6lld %-20s %-18s %-18s %-30s %-7s %s\n",
            (long long)json_integer_value(json_object_get(rec, "seq")),
            json_string_value(json_object_get(rec, "time")),
            json_string_value(json_object_get(rec, "command")), principal != NULL ? principal : "-",
            what, result != NULL ? result : "-", by != NULL ? by : "(unsealed)");
}

static int cmd_show(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"since", required_argument, NULL, O_SINCE},
        {"vault", required_argument, NULL, O_VAULT},
        {"key", required_argument, NULL, O_KEY},
        {NULL, 0, NULL, 0},
    };
    struct show_state s = {0};
    char path[PATH_MAX], *line = NULL;
    size_t cap = 0, lineno = 0, shown = 0;
    json_t *arr = NULL, *rec;
    ssize_t n;
    FILE *f;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, opts, show_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (first != argc)
        return kc_cli_usage(cli, "unexpected argument '%s'", argv[first]);
    if ((rc = log_path_or_fail(cli, path, sizeof(path))) != 0)
        return rc;
    f = fopen(path, "re");
    if (f == NULL) {
        kc_error_set(&cli->error, errno == ENOENT ? KC_NOT_FOUND : KC_ERR,
                     "cannot read audit log '%s': %s", path, strerror(errno));
        return cli->error.code;
    }
    if (cli->json)
        arr = json_array();
    else
        fprintf(cli->out, "%-6s %-20s %-18s %-18s %-30s %-7s %s\n", "SEQ", "TIME", "COMMAND",
                "PRINCIPAL", "VAULT/KEY", "RESULT", "SEALED BY");
    while ((n = getline(&line, &cap, f)) > 0) {
        lineno++;
        rec = json_loadb(line, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(rec)) {
            fprintf(cli->err,
                    "warning: line %zu of '%s' is not a record (run 'keycustody audit "
                    "verify')\n",
                    lineno, path);
            json_decref(rec);
            continue;
        }
        if (matches(rec, &s)) {
            shown++;
            if (cli->json)
                json_array_append(arr, rec);
            else
                print_record(cli, rec);
        }
        json_decref(rec);
    }
    free(line);
    fclose(f);
    if (cli->json)
        kc_cli_print_json(cli, arr);
    else if (shown == 0)
        fprintf(cli->out, "(no records%s)\n", s.since || s.vault || s.key ? " match" : "");
    return 0;
}

static int cmd_verify(kc_cli *cli, int argc, char **argv)
{
    char path[PATH_MAX];
    kc_audit_summary sum;
    kc_ctx *ctx;
    kc_error err;
    kc_rc r;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (first != argc)
        return kc_cli_usage(cli, "unexpected argument '%s'", argv[first]);
    if ((rc = log_path_or_fail(cli, path, sizeof(path))) != 0)
        return rc;
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    kc_error_clear(&err);
    r = kc_audit_verify(ctx, path, &sum, &err);
    if (cli->json) {
        kc_cli_print_json(cli, json_pack("{s:s, s:b, s:I, s:I, s:I, s:s, s:s, s:s, s:s?}", "path",
                                         path, "intact", r == KC_OK, "records",
                                         (json_int_t)sum.records, "sealed", (json_int_t)sum.sealed,
                                         "unsealed_tail", (json_int_t)sum.unsealed_tail, "vaults",
                                         sum.vaults, "anchored_on", sum.anchors, "not_visible",
                                         sum.missing, "problem", r == KC_OK ? NULL : err.msg));
    }
    if (r != KC_OK)
        return kc_cli_fail(cli, &err);
    if (cli->json)
        return 0;
    fprintf(cli->out,
            "audit log '%s' is intact: %ld records, %ld sealed; MACs checked on %s; "
            "anchored on %s\n",
            path, sum.records, sum.sealed, sum.vaults[0] ? sum.vaults : "no vault",
            sum.anchors[0] ? sum.anchors : "no vault");
    if (sum.anchors[0] == '\0' && sum.sealed > 0)
        fprintf(cli->out, "note: no visible vault anchors a log at this path (a copy, or a moved "
                          "log?): records cut off its end would not be noticed\n");
    if (sum.missing[0] != '\0')
        fprintf(cli->out,
                "note: %s sealed %ld of them but %s not visible; later records sealed on other "
                "vaults vouch for those through the chain\n",
                sum.missing, sum.unchecked, strchr(sum.missing, ',') ? "are" : "is");
    if (sum.unsealed_tail > 0)
        fprintf(cli->out,
                "note: the last %ld record%s not sealed: only the hash chain covers %s until a "
                "sealed record follows\n",
                sum.unsealed_tail, sum.unsealed_tail == 1 ? " is" : "s are",
                sum.unsealed_tail == 1 ? "it" : "them");
    return 0;
}

const kc_cmd kc_cmds_audit[] = {
    {"audit", "show", cmd_show, "[--since DATE|TIME] [--vault V] [--key [VAULT/]KEY] [--json]",
     "list audit records, oldest first",
     "Options:\n"
     "  --since WHEN     records from this UTC date (2026-11-24) or time\n"
     "                   (2026-11-24T10:00:00Z) on\n"
     "  --vault V        records about vault V\n"
     "  --key [V/]KEY    records about the key\n"
     "  --audit PATH     the log (or KEYCUSTODY_AUDIT; default: audit.jsonl beside the\n"
     "                   service store)\n"
     "Show does not check the log: run 'keycustody audit verify' for that.\n",
     1},
    {"audit", "verify", cmd_verify, "[--audit PATH] [--json]",
     "check that no record was modified, removed, inserted or reordered",
     "Checks every record's sequence number and its link to the one before (SHA-256),\n"
     "every MAC on the token of the vault that sealed it (that vault's user PIN), and\n"
     "the anchor each visible vault keeps of the log's last record it sealed, so a cut\n"
     "tail or a deleted and restarted log is found too. Give a PIN source for every\n"
     "vault (--pin-source VAULT=SOURCE, or one for all).\n"
     "Exit 0 when intact; 8 naming the first record modified, removed, inserted or\n"
     "reordered. Records after the last sealed one are covered by the chain only, and\n"
     "verify says how many there are. A vault that sealed records but is gone (a lost\n"
     "token) is skipped when a later record sealed on a visible vault vouches for its\n"
     "records through the chain; otherwise verify fails with exit 4, naming it.\n"
     "Example:\n"
     "  keycustody audit verify --audit var/audit.jsonl --pin-source env:KC_PIN\n",
     1},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
