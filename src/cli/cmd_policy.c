/* keycustody policy check | plan | apply */
#include "cli.h"
#include "kc_p11.h"
#include "kc_layout.h"
#include "kc_plan.h"
#include "kc_planfile.h"
#include "kc_store.h"
#include "kc_util.h"
#include "kc_yaml.h"

#include <jansson.h>

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Parses and checks a layout's bytes, read from file. */
static void layout_from(const char *file, const unsigned char *buf, size_t len, kc_layout **layout,
                        kc_diags *d)
{
    kc_diags_init(d, file);
    *layout = kc_layout_read(file, buf, len, d);
    if (*layout != NULL)
        kc_layout_validate(*layout, d);
    kc_diags_sort(d);
}

/* Reads and checks FILE: structure, then the rules. *layout is NULL when
 * the structure is broken. */
kc_rc kc_cli_load_layout(kc_cli *cli, const char *file, kc_layout **layout, kc_diags *d)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    kc_error err;

    *layout = NULL;
    kc_diags_init(d, file);
    kc_error_clear(&err);
    if (kc_file_read(file, 2 * KC_YAML_MAX_BYTES, &buf, &len, &err) != KC_OK)
        return (kc_rc)kc_cli_fail(cli, &err);
    layout_from(file, buf, len, layout, d);
    free(buf);
    return KC_OK;
}

/* Text from a layout for a terminal: its control characters (an escape
 * sequence in a name, a newline that would split the line) as \xHH. */
static void put_clean(FILE *f, const char *s)
{
    const unsigned char *p;

    for (p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\x%02x", *p);
        else
            fputc(*p, f);
    }
}

void kc_cli_print_diags(kc_cli *cli, const kc_diags *d)
{
    json_t *arr;
    size_t i;

    if (cli->json) {
        arr = json_array();
        for (i = 0; i < d->n; i++)
            json_array_append_new(
                arr,
                json_pack("{s:s, s:i, s:i, s:s, s:s, s:s, s:s?}", "file", d->file, "line",
                          d->v[i].line, "column", d->v[i].col, "rule", d->v[i].rule, "severity",
                          d->v[i].severity == KC_SEV_ERROR ? "error" : "warning", "message",
                          d->v[i].msg, "hint", d->v[i].hint[0] ? d->v[i].hint : NULL));
        kc_cli_print_json(cli, arr);
        return;
    }
    for (i = 0; i < d->n; i++) {
        const kc_diag *x = &d->v[i];
        put_clean(cli->out, d->file);
        if (x->line > 0)
            fprintf(cli->out, ":%d:%d", x->line, x->col);
        fprintf(cli->out, ": %s[%s]: ", x->severity == KC_SEV_ERROR ? "error" : "warning",
                x->rule);
        put_clean(cli->out, x->msg);
        fputc('\n', cli->out);
        if (x->hint[0]) {
            fputs("    hint: ", cli->out);
            put_clean(cli->out, x->hint);
            fputc('\n', cli->out);
        }
    }
}

static int cmd_check(kc_cli *cli, int argc, char **argv)
{
    kc_layout *l = NULL;
    kc_diags d;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one layout file");
    if (kc_cli_load_layout(cli, argv[first], &l, &d) != KC_OK)
        return cli->error.code;
    kc_cli_print_diags(cli, &d);
    if (d.errors > 0) {
        kc_error_clear(&cli->error);
        cli->error.code = KC_LAYOUT;
        snprintf(cli->error.msg, sizeof(cli->error.msg),
                 "layout '%s' is invalid: %zu error%s, "
                 "%zu warning%s",
                 argv[first], d.errors, d.errors == 1 ? "" : "s", d.warnings,
                 d.warnings == 1 ? "" : "s");
        rc = KC_LAYOUT;
    } else {
        if (!cli->json)
            fprintf(cli->out, "%s: valid (%zu warning%s)\n", argv[first], d.warnings,
                    d.warnings == 1 ? "" : "s");
        rc = KC_OK;
    }
    kc_diags_release(&d);
    kc_layout_free(l);
    return rc;
}

/* --- plan and apply --- */

enum { O_DETAILED = 256, O_YES, O_ALLOW_DELETE, O_WAIT, O_OUT, O_FORCE };

struct plan_state {
    int detailed, yes, allow_delete, force;
    unsigned wait;
    int apply;        /* apply opens (makes) the service store; plan only reads one */
    char store[1024]; /* the service store: --store, KEYCUSTODY_STORE or the layout's */
    kc_store *st;
    const char *file;        /* the operand: a layout file or a saved plan */
    const char *out;         /* plan --out PLAN */
    unsigned char *layout;   /* the layout's bytes, as planned */
    size_t layout_len;
    char layout_path[512];   /* where they were read (absolute when a plan is saved) */
    kc_planfile *saved;      /* apply PLAN: the saved plan */
};

/* path with its directory made absolute (the file itself need not exist
 * yet: a store apply makes), so that plan and apply name it alike. */
static void canonical(const char *path, char *out, size_t cap)
{
    char dir[4096], real[4096];
    const char *slash = strrchr(path, '/');
    int n;

    snprintf(out, cap, "%s", path);
    if (path[0] == '\0')
        return;
    snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    if (slash == path)
        snprintf(dir, sizeof(dir), "/");
    if (realpath(dir, real) == NULL)
        return;
    n = snprintf(out, cap, "%s%s%s", real, strcmp(real, "/") == 0 ? "" : "/",
                 slash ? slash + 1 : path);
    if (n < 0 || (size_t)n >= cap) /* too long to be made absolute: as given */
        snprintf(out, cap, "%s", path);
}

/* A path the layout gives, relative to the layout file's directory. */
static void layout_relative(const kc_layout *l, const char *value, char *out, size_t cap)
{
    const char *slash = strrchr(l->file, '/');

    out[0] = '\0';
    /* a PostgreSQL store's URI is not a path */
    if (value[0] == '/' || (value[0] != '\0' && slash == NULL) || kc_store_is_uri(value))
        snprintf(out, cap, "%s", value);
    else if (value[0] != '\0')
        snprintf(out, cap, "%.*s/%s", (int)(slash - l->file), l->file, value);
}


/* Adds the DEP actions: against the store when there is one (apply makes
 * it), as against an empty one when plan finds no file yet. */
static kc_rc plan_deps(kc_cli *cli, const kc_layout *l, struct plan_state *s, kc_plan *p,
                       kc_error *err)
{
    if (l->ndeps == 0 && l->tenant.dep[0] == '\0' && l->nmailboxes == 0 && l->ngeos == 0)
        return KC_OK;
    /* --store / KEYCUSTODY_STORE, else the layout's (kc_cli_use_layout resolved it) */
    snprintf(s->store, sizeof(s->store), "%s",
             cli->store != NULL && cli->store[0] != '\0' ? cli->store : cli->store_layout);
    if (s->store[0] == '\0') {
        if (p->nnotes < sizeof(p->notes) / sizeof(p->notes[0]))
            snprintf(p->notes[p->nnotes++], sizeof(p->notes[0]),
                     "DEPs and assignments are not planned: no service store (--store, "
                     "KEYCUSTODY_STORE or store: in the layout)");
        return KC_OK;
    }
    /* a DEP is made on the service vault: without one the layout's DEPs
     * are for the rules alone (policy check), as without a store */
    if (l->service_vault[0] == '\0') {
        if (p->nnotes < sizeof(p->notes) / sizeof(p->notes[0]))
            snprintf(p->notes[p->nnotes++], sizeof(p->notes[0]),
                     "DEPs and assignments are not planned: the layout names no service_vault");
        return KC_OK;
    }
    if (s->st == NULL && (s->apply || kc_store_is_uri(s->store) || access(s->store, F_OK) == 0)) {
        kc_rc r = kc_store_open(s->store, &s->st, err);

        if (r != KC_OK)
            return r;
        /* the plan only shows the rows; each DEP action of apply checks
         * them first (kc_plan_apply_dep) */
        kc_store_allow_unchecked(s->st);
    }
    return kc_plan_deps(l, s->st, p, err);
}

static int plan_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct plan_state *s = st;
    char *end;
    long w;

    switch (opt) {
    case O_DETAILED:
        s->detailed = 1;
        break;
    case O_YES:
        s->yes = 1;
        break;
    case O_ALLOW_DELETE:
        s->allow_delete = 1;
        break;
    case O_OUT:
        if (strcmp(arg, "-") == 0 || arg[0] == '\0')
            return kc_cli_usage(cli, "--out: give the file to save the plan in");
        s->out = arg;
        break;
    case O_FORCE:
        s->force = 1;
        break;
    case O_WAIT:
        w = strtol(arg, &end, 10);
        if (*arg == '\0' || *end != '\0' || w < 0 || w > 3600)
            return kc_cli_usage(cli, "--wait '%s': give 0 to 3600 seconds", arg);
        s->wait = (unsigned)w;
        break;
    }
    return 0;
}

/* The layout's PIN sources as "VAULT=SOURCE" for the PIN callback, and its
 * module when the command line names none. */
kc_rc kc_cli_use_layout(kc_cli *cli, const kc_layout *l, char (*buf)[400], char (*sobuf)[400])
{
    /* The operator's --module (or KEYCUSTODY_MODULE) wins; a layout's own
     * are loaded only when the operator allowed them (whoever edits a
     * layout must not choose the code that receives the PINs). */
    int use_layout = cli->modules.npaths == 0 && cli->modules.nbinds == 0;
    kc_module_set *m = &cli->modules;
    size_t i, n = 0;

    for (i = 0; i < l->nvaults && n < LAYOUT_PINS; i++, n++) {
        snprintf(buf[n], sizeof(buf[0]), "%s=%s", l->vaults[i].name, l->vaults[i].pin);
        /* a vault without so_pin: no source, so the callback says which is missing */
        snprintf(sobuf[n], sizeof(sobuf[0]), "%s=%s",
                 l->vaults[i].so_pin[0] ? l->vaults[i].name : "", l->vaults[i].so_pin);
        cli->layout_pins[n] = buf[n];
        cli->layout_so_pins[n] = sobuf[n];
        if (!use_layout || l->vaults[i].module[0] == '\0')
            continue;
        if (kc_p11_module_allowed(l->vaults[i].module, &cli->error) != KC_OK)
            return KC_DENIED;
        if (m->nbinds == KC_P11_BINDS_MAX) {
            kc_error_set(&cli->error, KC_USAGE, "the layout names modules for more than %d vaults",
                         KC_P11_BINDS_MAX);
            return KC_USAGE;
        }
        /* each vault on its own module: several modules in one run */
        m->binds[m->nbinds].vault = l->vaults[i].name;
        m->binds[m->nbinds++].module = l->vaults[i].module;
        if (cli->module == NULL)
            cli->module = l->vaults[i].module;
    }
    cli->nlayout = n;
    for (i = 0; i < l->nvaults; i++) {
        kc_ctx *ctx = NULL;
        if (l->vaults[i].fingerprint[0] == '\0')
            continue;
        /* the vaults are to be the ones the layout's author saw */
        if (kc_cli_ctx(cli, &ctx) != KC_OK)
            return cli->error.code;
        if (kc_ctx_pin_fingerprint(ctx, l->vaults[i].name, l->vaults[i].fingerprint,
                                   &cli->error) != KC_OK)
            return cli->error.code;
    }

    /* where the audit log is and which vault seals apply's record */
    layout_relative(l, l->audit, cli->audit_layout, sizeof(cli->audit_layout));
    layout_relative(l, l->store, cli->store_layout, sizeof(cli->store_layout));
    snprintf(cli->layout_service, sizeof(cli->layout_service), "%s", l->service_vault);
    if (l->nvaults > 0)
        snprintf(cli->layout_vault, sizeof(cli->layout_vault), "%s", l->vaults[0].name);
    return kc_cli_audit_prepare(cli);
}

/* A string field of a plan's action ("?" when a saved plan lacks it). */
static const char *action_text(json_t *a, const char *field)
{
    const char *s = json_string_value(json_object_get(a, field));

    return s ? s : "?";
}

static void print_actions(kc_cli *cli, json_t *actions)
{
    json_t *a;
    size_t i;

    json_array_foreach(actions, i, a)
    {
        fprintf(cli->out, "  %s %s\n      (%s)\n", action_text(a, "change"),
                action_text(a, "what"), action_text(a, "why"));
    }
}

static void print_plan(kc_cli *cli, const kc_plan *p)
{
    json_t *j;
    size_t i;

    if (cli->json) {
        kc_cli_print_json(cli, kc_plan_json(p));
        return;
    }
    for (i = 0; i < p->nnotes; i++)
        fprintf(cli->out, "note: %s\n", p->notes[i]);
    if (p->n == 0) {
        fprintf(cli->out, "No changes: the tokens match the layout.\n");
        return;
    }
    fprintf(cli->out, "keycustody will:\n");
    j = kc_plan_json(p);
    print_actions(cli, json_object_get(j, "actions"));
    json_decref(j);
    fprintf(cli->out, "Plan: %zu to add, %zu to change, %zu to delete, %zu blocked.\n", p->add,
            p->change, p->destroy, p->blocked);
}

/* policy plan PLAN: what a saved plan will do, read from it alone. */
static void print_saved(kc_cli *cli, const char *file, const kc_planfile *f)
{
    json_t *notes = json_object_get(f->plan, "notes"), *n;
    json_int_t add = json_integer_value(json_object_get(f->plan, "add")),
               change = json_integer_value(json_object_get(f->plan, "change")),
               del = json_integer_value(json_object_get(f->plan, "delete")),
               blocked = json_integer_value(json_object_get(f->plan, "blocked"));
    size_t i;

    if (cli->json) {
        kc_cli_print_json(cli, json_pack("{s:s, s:{s:s, s:s}, s:s, s:b, s:O}", "saved_plan", file,
                                         "layout", "path", f->layout_path, "sha256",
                                         f->layout_sha256, "created", f->created, "allow_delete",
                                         f->allow_delete, "plan", f->plan));
        return;
    }
    fprintf(cli->out, "Saved plan '%s', made %s from layout '%s'\n  (SHA-256 %s)%s:\n", file,
            f->created, f->layout_path, f->layout_sha256,
            f->allow_delete ? " with --allow-delete" : "");
    json_array_foreach(notes, i, n)
    {
        fprintf(cli->out, "note: %s\n", json_string_value(n));
    }
    if (json_array_size(json_object_get(f->plan, "actions")) == 0)
        fprintf(cli->out, "No changes: the tokens matched the layout.\n");
    print_actions(cli, json_object_get(f->plan, "actions"));
    fprintf(cli->out,
            "Plan: %lld to add, %lld to change, %lld to delete, %lld blocked.\n"
            "'keycustody policy apply %s' carries out exactly these actions, without asking,\n"
            "if the vaults and the service store are still as the plan saw them.\n",
            (long long)add, (long long)change, (long long)del, (long long)blocked, file);
}

/* Shared by plan and apply: read, check, observe, diff. A saved plan given
 * to apply: its layout is read and checked, nothing is observed yet (apply
 * does it under the lock); given to plan: s->saved, and nothing else. */
static int make_plan(kc_cli *cli, int argc, char **argv, struct plan_state *s, kc_layout **l,
                     kc_plan *p, char (*buf)[400], char (*sobuf)[400])
{
    static const struct option plan_opts[] = {
        {"detailed-exitcode", no_argument, NULL, O_DETAILED},
        {"allow-delete", no_argument, NULL, O_ALLOW_DELETE},
        {"out", required_argument, NULL, O_OUT},
        {"force", no_argument, NULL, O_FORCE},
        {NULL, 0, NULL, 0},
    };
    static const struct option apply_opts[] = {
        {"yes", no_argument, NULL, O_YES},
        {"allow-delete", no_argument, NULL, O_ALLOW_DELETE},
        {"wait", required_argument, NULL, O_WAIT},
        {NULL, 0, NULL, 0},
    };
    const struct option *opts = s->apply ? apply_opts : plan_opts;
    const char *file;
    char real[4096];
    kc_ctx *ctx = NULL;
    kc_diags d;
    kc_error err;
    int first, rc, is_plan = 0;

    memset(p, 0, sizeof(*p));
    rc = kc_cli_parse(cli, argc, argv, opts, plan_opt, s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, s->apply ? "give exactly one layout file or saved plan"
                                          : "give exactly one layout file");
    if (s->force && s->out == NULL)
        return kc_cli_usage(cli, "--force replaces the file --out names: give --out PLAN");
    file = s->file = argv[first];
    kc_error_clear(&err);
    if (kc_planfile_read(file, &s->layout, &s->layout_len, &is_plan, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if (is_plan) {
        if (kc_planfile_decode(file, s->layout, s->layout_len, &s->saved, &err) != KC_OK)
            return kc_cli_fail(cli, &err);
        free(s->layout);
        s->layout = NULL;
        if (!s->apply) {
            if (s->out != NULL || s->allow_delete)
                return kc_cli_usage(cli, "'%s' is a saved plan: --out and --allow-delete plan a "
                                         "layout file", file);
            return 0;
        }
        if (s->allow_delete)
            return kc_cli_usage(cli, "'%s' is a saved plan, made %s --allow-delete: it decides",
                                file, s->saved->allow_delete ? "with" : "without");
        s->allow_delete = s->saved->allow_delete;
        kc_cli_audit_note(cli, "saved_plan", file);
        kc_cli_audit_note(cli, "layout_sha256", s->saved->layout_sha256);
        /* the layout as it was reviewed, not as the file is now */
        s->layout = s->saved->layout;
        s->layout_len = s->saved->layout_len;
        s->saved->layout = NULL;
        snprintf(s->layout_path, sizeof(s->layout_path), "%.511s", s->saved->layout_path);
    } else if (s->layout_len > 2 * KC_YAML_MAX_BYTES) {
        kc_error_set(&cli->error, KC_USAGE, "'%s' holds %zu bytes; at most %u are accepted", file,
                     s->layout_len, 2 * KC_YAML_MAX_BYTES);
        return KC_USAGE;
    } else if (s->out != NULL && realpath(file, real) != NULL &&
               strlen(real) < sizeof(s->layout_path)) {
        /* a saved plan names its layout so that apply, from anywhere, finds
         * the store and audit log the layout names relative to itself */
        snprintf(s->layout_path, sizeof(s->layout_path), "%.511s", real);
    } else {
        snprintf(s->layout_path, sizeof(s->layout_path), "%.511s", file);
    }
    layout_from(s->layout_path, s->layout, s->layout_len, l, &d);
    if (*l == NULL || d.errors > 0) {
        kc_cli_print_diags(cli, &d);
        kc_diags_release(&d);
        kc_error_set(&cli->error, KC_LAYOUT, "layout '%s'%s is invalid; nothing was planned",
                     s->layout_path, s->saved ? " (in the saved plan)" : "");
        kc_error_hint(&cli->error, "see 'keycustody policy check %s'", s->layout_path);
        return KC_LAYOUT;
    }
    kc_diags_release(&d);
    if (kc_cli_use_layout(cli, *l, buf, sobuf) != KC_OK)
        return cli->error.code;
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    if (s->saved != NULL)
        return 0;
    kc_error_clear(&err);
    if (kc_plan_make(ctx, *l, s->allow_delete, p, &err) != KC_OK ||
        plan_deps(cli, *l, s, p, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    return 0;
}

static void plan_state_release(struct plan_state *s)
{
    kc_store_close(s->st);
    free(s->layout);
    kc_planfile_free(s->saved);
}

/* plan --out PLAN: the plan, its layout and what it observed, mode 0600. */
static int save_plan(kc_cli *cli, const struct plan_state *s, const kc_plan *p)
{
    char store[1024], *text = NULL;
    kc_error err;
    kc_rc r;

    kc_error_clear(&err);
    canonical(s->store, store, sizeof(store));
    r = kc_planfile_encode(p, s->layout_path, s->layout, s->layout_len, s->allow_delete,
                           p->store_read ? store : NULL, &text, &err);
    if (r == KC_OK)
        r = kc_cli_write(cli, s->out, text, strlen(text), 0600, s->force, &err);
    free(text);
    if (r != KC_OK) {
        kc_error_prefix(&err, "cannot save the plan");
        return kc_cli_fail(cli, &err);
    }
    fprintf(cli->json ? cli->err : cli->out,
            "Saved the plan to '%s'. 'keycustody policy apply %s' carries out exactly these "
            "actions.\n",
            s->out, s->out);
    return 0;
}

static int cmd_plan(kc_cli *cli, int argc, char **argv)
{
    static char buf[LAYOUT_PINS][400], sobuf[LAYOUT_PINS][400];
    struct plan_state s;
    kc_layout *l = NULL;
    kc_plan p;
    int rc;

    memset(&s, 0, sizeof(s));
    rc = make_plan(cli, argc, argv, &s, &l, &p, buf, sobuf);
    if (rc == 0 && s.saved != NULL) {
        print_saved(cli, s.file, s.saved);
        rc = s.detailed && json_array_size(json_object_get(s.saved->plan, "actions")) > 0
                 ? KC_CHANGES
                 : KC_OK;
    } else if (rc == 0) {
        print_plan(cli, &p);
        if (s.out != NULL)
            rc = save_plan(cli, &s, &p);
        if (rc == 0)
            rc = s.detailed && p.n > 0 ? KC_CHANGES : KC_OK;
    }
    kc_plan_release(&p);
    kc_layout_free(l);
    plan_state_release(&s);
    return rc;
}

static int confirm(kc_cli *cli)
{
    char answer[16];

    if (!isatty(STDIN_FILENO)) {
        kc_error_set(&cli->error, KC_USAGE,
                     "apply needs --yes when standard input is not a terminal");
        return KC_USAGE;
    }
    fprintf(cli->out, "Apply these changes? Only 'yes' is accepted: ");
    fflush(cli->out);
    if (fgets(answer, sizeof(answer), stdin) == NULL || strcmp(answer, "yes\n") != 0) {
        kc_error_set(&cli->error, KC_ERR, "apply cancelled; nothing was changed");
        return KC_ERR;
    }
    return KC_OK;
}

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig)
{
    stop_requested = sig;
}

/* While apply runs its actions: a signal asks it to stop between them. */
static void apply_signals(int on)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    static struct sigaction prev[3];
    struct sigaction sa;
    size_t i;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        if (on)
            (void)sigaction(sigs[i], &sa, &prev[i]);
        else
            (void)sigaction(sigs[i], &prev[i], NULL);
    }
}

static int cmd_apply(kc_cli *cli, int argc, char **argv)
{
    static char buf[LAYOUT_PINS][400], sobuf[LAYOUT_PINS][400];
    char lock_path[512];
    struct plan_state s;
    kc_layout *l = NULL;
    kc_plan p;
    kc_error err;
    size_t i;
    int rc, fd = -1;

    memset(&s, 0, sizeof(s));
    memset(&p, 0, sizeof(p));
    s.apply = 1;
    rc = make_plan(cli, argc, argv, &s, &l, &p, buf, sobuf);
    if (rc != 0)
        goto done;
    kc_plan_release(&p);
    /* Two applies must not interleave: lock, then plan again under the lock. */
    kc_error_clear(&err);
    if (kc_plan_lock(l, cli->module, s.wait, &fd, lock_path, sizeof(lock_path), &err) != KC_OK ||
        kc_plan_make(cli->ctx, l, s.allow_delete, &p, &err) != KC_OK ||
        plan_deps(cli, l, &s, &p, &err) != KC_OK) {
        rc = kc_cli_fail(cli, &err);
        goto done;
    }
    /* a saved plan: only what was reviewed, against what it saw */
    if (s.saved != NULL) {
        char store[1024];

        canonical(s.store, store, sizeof(store));
        if (kc_planfile_compare(s.saved, &p, p.store_read ? store : NULL, &err) != KC_OK) {
            rc = kc_cli_fail(cli, &err);
            goto done;
        }
        fprintf(cli->out,
                "Saved plan '%s' (made %s): the vaults%s are as it saw them; its actions are "
                "carried out without asking.\n",
                s.file, s.saved->created, p.store_read ? " and the service store" : "");
    }
    print_plan(cli, &p);
    if (p.n == 0) {
        rc = KC_OK;
        goto done;
    }
    if (p.blocked > 0) {
        kc_error_set(&cli->error, KC_CONFLICT,
                     "%zu change%s cannot be made (marked !); nothing was applied", p.blocked,
                     p.blocked == 1 ? "" : "s");
        kc_error_hint(&cli->error, "change the layout to what the tokens can do");
        rc = KC_CONFLICT;
        goto done;
    }
    if (!s.yes && s.saved == NULL && (rc = confirm(cli)) != KC_OK)
        goto done;
    /* Ctrl-C (or SIGTERM, SIGHUP) lets the action in hand finish, then
     * stops between actions and says so: every action leaves the tokens
     * consistent, and a run again continues */
    stop_requested = 0;
    apply_signals(1);
    for (i = 0; i < p.n; i++) {
        if (stop_requested) {
            kc_error_set(&cli->error, KC_ERR,
                         "policy apply stopped by a signal after %zu of %zu actions; what is "
                         "done is consistent",
                         i, p.n);
            kc_error_hint(&cli->error,
                          "run 'keycustody policy apply' again: it continues from what is done");
            rc = 128 + stop_requested;
            goto done;
        }
        fprintf(cli->out, "%c %s ... ", kc_action_sign(p.v[i].kind), p.v[i].what);
        fflush(cli->out);
        kc_error_clear(&err);
        if ((p.v[i].kind == KC_ACT_DEP_CREATE || p.v[i].kind == KC_ACT_DEP_UPDATE ||
                     p.v[i].kind == KC_ACT_DEP_ASSIGN
                 ? kc_plan_apply_dep(cli->ctx, l, s.st, &p.v[i], &err)
                 : kc_plan_apply(cli->ctx, l, &p.v[i], &err)) != KC_OK) {
            fprintf(cli->out, "failed\n");
            kc_error_hint(&err, "run 'keycustody policy apply' again: it continues from what "
                                "is done");
            rc = kc_cli_fail(cli, &err);
            goto done;
        }
        fprintf(cli->out, "done\n");
    }
    fprintf(cli->out, "Apply complete: %zu added, %zu changed, %zu deleted.\n", p.add, p.change,
            p.destroy);
    rc = KC_OK;
done:
    apply_signals(0);
    kc_plan_unlock(fd);
    kc_plan_release(&p);
    kc_layout_free(l);
    plan_state_release(&s);
    return rc;
}

const kc_cmd kc_cmds_policy[] = {
    {"policy", "check", cmd_check, "FILE [--json]",
     "validate a layout file offline: structure and every rule, with file:line:col",
     "Reads the YAML layout (keycustody-layout(5)) and checks it against every rule\n"
     "(see rules.md). No token is needed. Exit 3 when there is any error; warnings\n"
     "alone exit 0. --json prints the diagnostics as a list.\n",
     1},
    {"policy", "plan", cmd_plan,
     "FILE [--detailed-exitcode] [--allow-delete] [--out PLAN [--force]] [--json]",
     "show what apply would change on the tokens to match the layout",
     "Reads the live tokens (vault metadata, access policies, keys and versions; PINs\n"
     "come from the layout's pin: sources unless --pin-source names them) and prints\n"
     "ordered actions: + add, ~ change, - delete, ! cannot be done, each naming the\n"
     "attributes that change (before -> after) and its reason. A change a token cannot\n"
     "make in place (a key's size) is a rotate. --json gives each action as data: its\n"
     "address (vault.V, vault.V.key.K, vault.V.access.P, dep.D, assignment.SCOPE),\n"
     "type, action (create, update, delete), changes and, when blocked, why\n"
     "(see layout.md).\n"
     "  --detailed-exitcode  exit 10 when there are changes\n"
     "  --allow-delete       plan soft deletes of keys the layout no longer has\n"
     "  --out PLAN           also save the plan in PLAN (JSON, mode 0600): the layout's\n"
     "                       bytes, a digest of what was observed on each vault and in\n"
     "                       the service store, and the actions. No PIN is saved.\n"
     "                       'policy apply PLAN' carries out exactly these actions\n"
     "  --force              replace PLAN if it exists\n"
     "Given a saved plan instead of a layout, prints what it will do (no token is read).\n",
     1},
    {"policy", "apply", cmd_apply, "FILE|PLAN [--yes] [--allow-delete] [--wait SECONDS]",
     "make the tokens match the layout, or carry out a saved plan",
     "Shows the plan, asks (only 'yes' goes on) unless --yes, then carries out the\n"
     "actions in order, printing each. Without a terminal, --yes is required. An apply\n"
     "that stops part-way is finished by running it again. Keys are deleted only with\n"
     "--allow-delete, and then only soft-deleted. With a service store, the layout's\n"
     "DEPs are made (as 'dep create' makes them) and its assignments set. One apply at a\n"
     "time per set of tokens: a second one fails naming the holder, or waits --wait\n"
     "SECONDS. Ctrl-C stops it between two actions (exit 130); run it again to finish.\n"
     "PLAN, a file 'policy plan --out' saved (told from a layout by its content), is\n"
     "applied without asking, as reviewed: its own layout (not the file as it is now),\n"
     "its --allow-delete. Under the lock the tokens and the store are observed again; if\n"
     "a vault or the store changed since the plan was made, or the plan made now differs\n"
     "from the saved actions, nothing is done (exit 5, naming what changed): plan again.\n"
     "A damaged, truncated or other-version plan exits 3; a plan file that is not yours\n"
     "or that others can write is refused (exit 6).\n"
     "  --yes           carry the plan out without asking\n"
     "  --allow-delete  soft-delete keys the layout no longer has (not with PLAN)\n"
     "  --wait SECONDS  wait this long for another apply to finish\n",
     0},
    {"policy", "graph", kc_cli_policy_graph, "FILE [--format dot|svg] [--out PATH] [--force]",
     "draw the layout as a graph, with the rules it breaks in red",
     "Reads the layout and runs every rule, as 'policy check' does (no token is\n"
     "needed), and draws it: subscriptions, and in them regions (a dashed edge joins\n"
     "two regions that are an Azure region pair), vaults and their keys; the service\n"
     "vault with each DEP's availability key; each DEP with an edge to its two root\n"
     "keys and a dotted one to its availability key; each assignment (tenant,\n"
     "mailbox:ID, geo:CODE) with an edge to its DEP. What a diagnostic points at is\n"
     "drawn red (an error) or orange (a warning), with the rule ids in its label and\n"
     "the messages in its tooltip; the diagnostics are printed on standard error too.\n"
     "A layout with errors is drawn all the same, then exits 3 (CI keeps the picture\n"
     "and fails); one whose structure is broken (syntax, unknown keys) is not drawn\n"
     "and exits 3.\n"
     "  --format dot|svg  DOT text, written by keycustody (the default), or SVG drawn\n"
     "                    from it by Graphviz's 'dot -Tsvg' (apt-get install graphviz)\n"
     "  --out PATH        write it to PATH (mode 0644; - for standard output, the\n"
     "                    default)\n"
     "  --force           replace an existing regular PATH (anything else is never\n"
     "                    replaced)\n"
     "Example: keycustody policy graph policies/contoso-tenant.yaml --format svg \\\n"
     "           --out docs/contoso-tenant.svg --force\n",
     0},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
