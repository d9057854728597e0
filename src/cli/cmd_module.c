/* keycustody module list | check */
#include "cli.h"
#include "kc_module.h"

#include <jansson.h>

#include <stdlib.h>
#include <string.h>

static const char *cap_name(kc_cap c)
{
    return c == KC_CAP_YES ? "yes" : c == KC_CAP_NO ? "no" : "unknown";
}

/* --- module list --- */

static int cmd_list(kc_cli *cli, int argc, char **argv)
{
    kc_module_info *m = NULL;
    kc_tok_info *toks = NULL;
    size_t nm = 0, nt = 0, i, j;
    kc_ctx *ctx = NULL;
    kc_error err;
    json_t *arr, *o, *ta;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (argc != first)
        return kc_cli_usage(cli, "'module list' takes no arguments");
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    kc_error_clear(&err);
    if (kc_p11_modules(ctx->p11, &m, &nm, &err) != KC_OK ||
        kc_p11_list_tokens(ctx->p11, &toks, &nt, &err) != KC_OK) {
        free(m);
        return kc_cli_fail(cli, &err);
    }
    arr = json_array();
    for (i = 0; i < nm; i++) {
        if (cli->json) {
            o = json_pack("{s:s?, s:s, s:s?, s:s, s:s, s:s, s:s}", "name",
                          m[i].name[0] ? m[i].name : NULL, "path", m[i].path, "source",
                          m[i].source[0] ? m[i].source : NULL, "manufacturer", m[i].manufacturer,
                          "description", m[i].description, "version", m[i].version, "cryptoki",
                          m[i].cryptoki);
            ta = json_array();
            for (j = 0; j < nt; j++)
                if (toks[j].module_index == i)
                    json_array_append_new(
                        ta, json_pack("{s:s, s:s, s:b}", "label", toks[j].label, "uri",
                                      toks[j].uri, "initialized", toks[j].initialized));
            json_object_set_new(o, "tokens", ta);
            json_array_append_new(arr, o);
            continue;
        }
        fprintf(cli->out, "%s%s%s%s%s%s%s\n  %s %s (PKCS#11 %s), %zu token%s\n", m[i].path,
                m[i].name[0] ? " (p11-kit: " : "", m[i].name, m[i].name[0] ? ")" : "",
                m[i].source[0] ? " (" : "", m[i].source, m[i].source[0] ? ")" : "",
                m[i].description, m[i].version, m[i].cryptoki, m[i].ntokens,
                m[i].ntokens == 1 ? "" : "s");
        for (j = 0; j < nt; j++)
            if (toks[j].module_index == i)
                fprintf(cli->out, "  - %-24s serial %s%s\n",
                        toks[j].initialized ? toks[j].label : "(free)", toks[j].serial,
                        toks[j].initialized ? "" : ": not initialised");
    }
    if (cli->json)
        kc_cli_print_json(cli, arr); /* takes it */
    else
        json_decref(arr);
    free(m);
    free(toks);
    return KC_OK;
}

/* --- module check --- */

/* The token to probe: the one named, else the first initialised one, else
 * the first free one (a module whose only token is free: tpm2-pkcs11's). */
static kc_rc probe_token(kc_ctx *ctx, const char *name, kc_tok **out, kc_error *err)
{
    kc_tok_info *toks = NULL;
    size_t n = 0, i;
    kc_rc r;

    if (name != NULL)
        return kc_p11_token(ctx->p11, name, out, err);
    r = kc_p11_list_tokens(ctx->p11, &toks, &n, err);
    /* a write-protected token (NSS's crypto services, p11-kit's trust
     * store) can hold nothing: it is not the one meant */
    for (i = 0; r == KC_OK && i < n && (!toks[i].initialized || toks[i].write_protected); i++)
        ;
    if (r == KC_OK && i == n && n == 0) {
        r = kc_error_set(err, KC_NOT_FOUND, "the module shows no token to probe");
        kc_error_hint(err, "see what it shows with 'keycustody module list'");
    } else if (r == KC_OK && i == n) {
        r = kc_p11_free_token(ctx->p11, NULL, out, err);
    } else if (r == KC_OK) {
        r = kc_p11_token(ctx->p11, toks[i].uri, out, err);
    }
    free(toks);
    return r;
}

static void print_check(kc_cli *cli, const kc_probe *p, const kc_feature *f, size_t nf)
{
    size_t i;

    fprintf(cli->out, "module:  %s\ntoken:   %s (serial %s, %s)\n", p->token.module,
            p->token.label, p->token.serial,
            p->logged_in ? "logged in"
                         : "not logged in: what needs the user PIN was not asked; give a PIN "
                           "source to ask it");
    fprintf(cli->out, "\nfeatures:\n");
    for (i = 0; i < nf; i++)
        fprintf(cli->out, "  %-18s %-30s%s%s\n", kc_support_name(f[i].support), f[i].name,
                f[i].why[0] ? " " : "", f[i].why);
    fprintf(cli->out, "\nfacts:\n");
    for (i = 0; i < p->nfacts; i++)
        fprintf(cli->out, "  %-8s %-28s %s\n", cap_name(p->facts[i].cap), p->facts[i].id,
                p->facts[i].detail);
    fprintf(cli->out, "\nmechanisms (%zu):\n", p->nmechs);
    for (i = 0; i < p->nmechs; i++)
        fprintf(cli->out, "  %-28s %6lu-%-6lu %s\n", p->mechs[i].name, p->mechs[i].min_bits,
                p->mechs[i].max_bits, p->mechs[i].flags);
}

static json_t *check_json(const kc_probe *p, const kc_feature *f, size_t nf)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:b}", "module", p->token.module, "token",
                          p->token.label, "serial", p->token.serial, "logged_in", p->logged_in);
    json_t *facts = json_object(), *feats = json_array(), *mechs = json_array();
    size_t i;

    for (i = 0; i < nf; i++)
        json_array_append_new(feats, json_pack("{s:s, s:s, s:s}", "feature", f[i].name,
                                               "support", kc_support_name(f[i].support), "why",
                                               f[i].why));
    for (i = 0; i < p->nfacts; i++)
        json_object_set_new(facts, p->facts[i].id,
                            json_pack("{s:s, s:s}", "answer", cap_name(p->facts[i].cap),
                                      "detail", p->facts[i].detail));
    for (i = 0; i < p->nmechs; i++)
        json_array_append_new(mechs, json_pack("{s:s, s:I, s:I, s:I, s:s}", "name",
                                               p->mechs[i].name, "type",
                                               (json_int_t)p->mechs[i].type, "min_bits",
                                               (json_int_t)p->mechs[i].min_bits, "max_bits",
                                               (json_int_t)p->mechs[i].max_bits, "flags",
                                               p->mechs[i].flags));
    json_object_set_new(o, "features", feats);
    json_object_set_new(o, "facts", facts);
    json_object_set_new(o, "mechanisms", mechs);
    return o;
}

static int cmd_check(kc_cli *cli, int argc, char **argv)
{
    kc_feature f[KC_FEATURES_MAX];
    kc_ctx *ctx = NULL;
    kc_tok *tok = NULL;
    kc_probe p;
    kc_error err;
    size_t nf;
    int first, rc;
    kc_rc r;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (argc - first > 1)
        return kc_cli_usage(cli, "give at most one token (label or pkcs11: URI)");
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    kc_error_clear(&err);
    if (probe_token(ctx, argc > first ? argv[first] : NULL, &tok, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    /* with a PIN source, the facts that need a login too; never a prompt */
    if (kc_tok_info_get(tok)->user_pin_initialized) {
        cli->no_prompt = 1;
        r = kc_ctx_login(ctx, tok, &err);
        cli->no_prompt = 0;
        if (r != KC_OK && r != KC_USAGE)
            return kc_cli_fail(cli, &err);
        kc_error_clear(&err);
    }
    if (kc_tok_probe(tok, KC_PROBE_FULL, &p, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    nf = kc_module_features(&p, f);
    if (cli->json) {
        kc_cli_print_json(cli, check_json(&p, f, nf));
    } else {
        print_check(cli, &p, f, nf);
    }
    kc_probe_release(&p);
    return KC_OK;
}

const kc_cmd kc_cmds_module[] = {
    {"module", "list", cmd_list, "[--json]", "list the PKCS#11 modules keycustody loads, with their tokens",
     "Without --module (or KEYCUSTODY_MODULE), every module registered with p11-kit;\n"
     "with it, that module. No PIN needed.\n",
     1},
    {"module", "check", cmd_check, "[TOKEN] [--json]",
     "probe what a module can do, and which keycustody features work on it",
     "Asks the module (on session objects, which go with the session: nothing on the\n"
     "token changes) for its mechanisms and flags; which attributes it accepts and\n"
     "enforces (CKA_WRAP_WITH_TRUSTED, CKA_TRUSTED, keycustody's unwrap template);\n"
     "data objects; which AES key-wrap mechanism really is RFC 5649 (compared with\n"
     "OpenSSL, not trusted by number); RSA-OAEP with SHA-1 and SHA-256 against\n"
     "OpenSSL. Then, feature by feature: works, works differently, not possible (why),\n"
     "or not asked.\n\n"
     "TOKEN is a label or pkcs11: URI; without it, the first initialised token that is\n"
     "not write-protected, or the first free one. With a\n"
     "PIN source for the token (--pin-source), the facts that need a login are asked\n"
     "too; there is never a prompt.\n\n"
     "Example:\n"
     "  keycustody module check --module /usr/lib/softhsm/libsofthsm2.so VaultA1 \\\n"
     "      --pin-source VaultA1=file:/secure/VaultA1.pin\n",
     1},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
