/* keycustody policy check | plan | apply */
#include "cli.h"
#include "kc_layout.h"
#include "kc_util.h"
#include "kc_yaml.h"

#include <jansson.h>

#include <stdlib.h>
#include <string.h>

/* Reads and checks FILE: structure, then the rules. *layout is NULL when
 * the structure is broken. */
static kc_rc load_layout(kc_cli *cli, const char *file, kc_layout **layout, kc_diags *d)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    kc_error err;

    *layout = NULL;
    kc_diags_init(d, file);
    kc_error_clear(&err);
    if (kc_file_read(file, 2 * KC_YAML_MAX_BYTES, &buf, &len, &err) != KC_OK)
        return (kc_rc)kc_cli_fail(cli, &err);
    *layout = kc_layout_read(file, buf, len, d);
    free(buf);
    if (*layout != NULL)
        kc_layout_validate(*layout, d);
    kc_diags_sort(d);
    return KC_OK;
}

static void print_diags(kc_cli *cli, const kc_diags *d)
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
        fprintf(cli->out, "%s:%d:%d: %s[%s]: %s\n", d->file, x->line, x->col,
                x->severity == KC_SEV_ERROR ? "error" : "warning", x->rule, x->msg);
        if (x->hint[0])
            fprintf(cli->out, "    hint: %s\n", x->hint);
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
    if (load_layout(cli, argv[first], &l, &d) != KC_OK)
        return cli->error.code;
    print_diags(cli, &d);
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

const kc_cmd kc_cmds_policy[] = {
    {"policy", "check", cmd_check, "FILE [--json]",
     "validate a layout file offline: structure and every rule, with file:line:col",
     "Reads the YAML layout (docs/layout.md) and checks it against every rule\n"
     "(docs/rules.md). No token is needed. Exit 3 when there is any error; warnings\n"
     "alone exit 0. --json prints the diagnostics as a list.\n",
     1},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
