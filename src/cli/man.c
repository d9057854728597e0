/* The man pages keycustody(1) and keycustody-GROUP(1), written as roff
 * from the command tables: each command's section is its --help output,
 * captured by running it, so the page and --help cannot say different
 * things (test_cli "man" renders the pages and holds them to --help). */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name, *text;
} environment[] = {
    {"KEYCUSTODY_MODULE", "the PKCS#11 module, as --module takes it (one)"},
    {"KEYCUSTODY_PRINCIPAL", "who acts, as --as"},
    {"KEYCUSTODY_STORE", "the service store, as --store"},
    {"KEYCUSTODY_SERVICE_VAULT", "the service vault, whose key checks the store's rows"},
    {"KEYCUSTODY_SERVICE_PIN_SOURCE",
     "the PIN source (env:NAME or file:PATH) of the service vault"},
    {"KEYCUSTODY_AUDIT", "the audit log, as --audit"},
    {"KEYCUSTODY_SYSLOG_SOCKET", "the socket --audit-syslog sends to (default /dev/log)"},
    {"KEYCUSTODY_LOCK_DIR", "where the per-vault lock files are made"},
    {"KEYCUSTODY_MODULES_ALLOW", "the list of modules a layout may name (default "
                                 "/etc/keycustody/modules.allow)"},
    {"KEYCUSTODY_NOW", "a fixed time (RFC 3339) for key dates, for tests; audit records keep the "
                       "real time and note it"},
    {"SOFTHSM2_CONF", "SoftHSMv2's configuration: which token directory it serves"},
    {"XDG_RUNTIME_DIR",
     "where locks go when KEYCUSTODY_LOCK_DIR is not set (else /tmp/keycustody-UID)"},
};

static const struct {
    const char *name, *text;
} files[] = {
    {"/etc/keycustody/modules.allow",
     "absolute paths of the PKCS#11 modules a layout's module: may name, one per line, besides "
     "those registered with p11-kit"},
    {"/etc/pkcs11/modules/*.module, /usr/share/p11-kit/modules/*.module",
     "p11-kit's registry: the modules keycustody loads when no --module is given"},
    {"audit.jsonl", "the audit log beside the service store, when no --audit, KEYCUSTODY_AUDIT or "
                    "layout audit: names one"},
    {"/usr/share/doc/keycustody/layout.md, rules.md, security.md",
     "the layout format, every rule the layout and the vaults are checked against, and the "
     "threat model (layout.md, rules.md and security.md under the installed documentation "
     "directory)"},
    {"$XDG_RUNTIME_DIR/keycustody/, /tmp/keycustody-UID/",
     "lock files: one per vault, held while a command changes it"},
};

/* Text as roff: every character that roff would read as markup escaped,
 * '-' as a minus (so that options are typed as they are shown). */
static void roff_text(FILE *f, const char *s, size_t n)
{
    size_t i;

    if (n > 0 && (s[0] == '.' || s[0] == '\''))
        fputs("\\&", f);
    for (i = 0; i < n; i++) {
        switch (s[i]) {
        case '\\':
            fputs("\\e", f);
            break;
        case '-':
            fputs("\\-", f);
            break;
        case '\'':
            fputs("\\(aq", f);
            break;
        case '`':
            fputs("\\(ga", f);
            break;
        default:
            fputc(s[i], f);
        }
    }
}

static void roff_str(FILE *f, const char *s)
{
    roff_text(f, s, strlen(s));
}

/* Lines kept as they are (no fill, no adjusting); a blank line is .sp. */
static void roff_verbatim(FILE *f, const char *text, size_t len)
{
    const char *p = text, *end = text + len, *nl;

    fputs(".nf\n", f);
    while (p < end) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            nl = end;
        if (nl == p) {
            fputs(".sp\n", f);
        } else {
            roff_text(f, p, (size_t)(nl - p));
            fputc('\n', f);
        }
        p = nl + 1;
    }
    fputs(".fi\n", f);
}

static void roff_line(FILE *f, const char *macro, const char *text)
{
    fprintf(f, "%s ", macro);
    roff_str(f, text);
    fputc('\n', f);
}

static void roff_title(FILE *f, const char *name, int section, const char *date)
{
    char up[64];
    size_t i;

    for (i = 0; name[i] != '\0' && i + 1 < sizeof(up); i++)
        up[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 'a' + 'A' : name[i]);
    up[i] = '\0';
    fprintf(f, ".TH \"");
    roff_str(f, up);
    fprintf(f, "\" %d \"%s\" \"keycustody %s\" \"keycustody manual\"\n.nh\n.ad l\n", section, date,
            KC_VERSION_STRING);
}

/* A command's --help, without the common options and exit codes that
 * every command's help ends with (the pages have sections for those). */
static char *command_help(const kc_cmd *c, size_t *len)
{
    char *argv[] = {"keycustody", (char *)c->group, (char *)c->verb, "--help", NULL};
    int single = c->verb[0] == '\0';
    char *text = NULL, *errtext = NULL;
    size_t n = 0, en = 0, tail;
    FILE *out = open_memstream(&text, &n), *err = open_memstream(&errtext, &en);

    if (out == NULL || err == NULL) {
        if (out != NULL)
            fclose(out);
        if (err != NULL)
            fclose(err);
        free(text);
        free(errtext);
        return NULL;
    }
    if (single)
        argv[2] = "--help", argv[3] = NULL;
    (void)kc_cli_main(single ? 3 : 4, argv, out, err);
    fclose(out);
    fclose(err);
    free(errtext);
    tail = strlen(kc_cli_common_help()) + 1 + strlen(kc_cli_exit_help());
    *len = n >= tail ? n - tail : n;
    return text;
}

static void common_sections(FILE *f, int top)
{
    const char *exit_help = kc_cli_exit_help();
    size_t i;

    if (top) {
        fputs(".SH COMMON OPTIONS\nEvery command takes these, before the command group or "
              "after the command.\n",
              f);
        roff_verbatim(f, kc_cli_common_help(), strlen(kc_cli_common_help()));
    } else {
        fputs(
            ".SH COMMON OPTIONS\nEvery command also takes the common options of\n.BR "
            "keycustody (1):\n.BR \\-\\-module ,\n.BR \\-\\-pin\\-source ,\n"
            ".BR \\-\\-so\\-pin\\-source ,\n.BR \\-\\-as ,\n.BR \\-\\-store ,\n.BR \\-\\-audit ,\n"
            ".BR \\-\\-audit\\-syslog ,\n.B \\-\\-json\n(read commands) and\n.BR \\-\\-help .\n",
            f);
    }
    fputs(".SH EXIT STATUS\n", f);
    roff_verbatim(f, exit_help, strlen(exit_help));
    fputs(".SH ENVIRONMENT\n", f);
    for (i = 0; i < sizeof(environment) / sizeof(environment[0]); i++) {
        fputs(".TP\n", f);
        roff_line(f, ".B", environment[i].name);
        roff_str(f, environment[i].text);
        fputc('\n', f);
    }
    fputs(".SH FILES\n", f);
    for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        fputs(".TP\n", f);
        roff_line(f, ".I", files[i].name);
        roff_str(f, files[i].text);
        fputc('\n', f);
    }
}

static void see_also(FILE *f, const kc_cmd *const *groups, size_t ngroups, const char *self)
{
    size_t g;
    int first = 1;

    fputs(".SH SEE ALSO\n", f);
    if (strcmp(self, "keycustody") != 0) {
        fputs(".BR keycustody (1)", f);
        first = 0;
    }
    for (g = 0; g < ngroups; g++) {
        char name[48];
        snprintf(name, sizeof(name), "keycustody-%s", groups[g][0].group);
        if (strcmp(name, self) == 0)
            continue;
        fprintf(f, "%s.BR ", first ? "" : ",\n");
        roff_str(f, name);
        fputs(" (1)", f);
        first = 0;
    }
    fputs(",\n.BR keycustody\\-layout (5),\n.BR pkcs11\\-tool (1),\n.BR p11\\-kit (8),\n"
          ".BR softhsm2\\-util (1)\n",
          f);
}

static kc_rc top_page(FILE *f, const kc_cmd *const *groups, const char *const *summaries,
                      size_t ngroups, const char *date)
{
    size_t g;

    roff_title(f, "keycustody", 1, date);
    fputs(".SH NAME\nkeycustody \\- custody of HSM root keys through PKCS#11\n"
          ".SH SYNOPSIS\n.B keycustody\n[\\fICOMMON OPTIONS\\fR]\n\\fIGROUP COMMAND\\fR\n"
          "[\\fIOPTIONS\\fR] [\\fIARGS\\fR]\n.br\n.B keycustody \\-\\-version\n.br\n"
          ".B keycustody \\-\\-help\n"
          ".SH DESCRIPTION\nkeycustody keeps RSA root keys on PKCS#11 tokens the way Microsoft 365 "
          "Customer Key keeps them in Azure Key Vault: two vaults in two subscriptions and "
          "non-paired regions, keys that only wrap and unwrap, soft delete, backups only their "
          "own subscription can restore, data encryption policies whose key either vault can "
          "unwrap, and a purge that crypto-shreds. Each command group has its own page.\n"
          ".SH COMMAND GROUPS\n",
          f);
    for (g = 0; g < ngroups; g++) {
        char name[48];
        fputs(".TP\n", f);
        snprintf(name, sizeof(name), "keycustody-%s", groups[g][0].group);
        fputs(".BR ", f);
        roff_str(f, name);
        fputs(" (1)\n", f);
        roff_str(f, summaries[g]);
        fputc('\n', f);
    }
    common_sections(f, 1);
    see_also(f, groups, ngroups, "keycustody");
    return KC_OK;
}

static kc_rc group_page(FILE *f, const kc_cmd *cmds, const char *summary,
                        const kc_cmd *const *groups, size_t ngroups, const char *date)
{
    char page[48], *help;
    const kc_cmd *c;
    size_t len;

    snprintf(page, sizeof(page), "keycustody-%s", cmds[0].group);
    roff_title(f, page, 1, date);
    fputs(".SH NAME\n", f);
    roff_str(f, page);
    fputs(" \\- ", f);
    roff_str(f, summary);
    fputs("\n.SH SYNOPSIS\n.nf\n", f);
    for (c = cmds; c->group != NULL; c++) {
        fprintf(f, "\\fBkeycustody %s%s", c->group, c->verb[0] ? " " : "");
        roff_str(f, c->verb);
        fputs("\\fR ", f);
        roff_str(f, c->synopsis);
        fputc('\n', f);
    }
    fputs(".fi\n.SH DESCRIPTION\n", f);
    roff_str(f, summary);
    fputs(".\n.SH COMMANDS\n", f);
    for (c = cmds; c->group != NULL; c++) {
        fprintf(f, ".SS \"%s%s", c->group, c->verb[0] ? " " : "");
        roff_str(f, c->verb);
        fputs("\"\n", f);
        help = command_help(c, &len);
        if (help == NULL)
            return KC_ERR;
        roff_verbatim(f, help, len);
        free(help);
    }
    common_sections(f, 0);
    see_also(f, groups, ngroups, page);
    return KC_OK;
}

kc_rc kc_cli_man(FILE *f, const char *page, const char *date)
{
    const kc_cmd *const *groups;
    const char *const *summaries;
    size_t n = kc_cli_groups(&groups, &summaries), g;

    if (strcmp(page, "keycustody") == 0)
        return top_page(f, groups, summaries, n, date);
    for (g = 0; g < n; g++)
        if (strncmp(page, "keycustody-", 11) == 0 && strcmp(page + 11, groups[g][0].group) == 0)
            return group_page(f, groups[g], summaries[g], groups, n, date);
    return KC_NOT_FOUND;
}
