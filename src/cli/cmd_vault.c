/* keycustody vault init | show | list */
#include "cli.h"
#include "kc_util.h"
#include "kc_key.h"
#include "kc_layout.h"
#include "kc_manifest.h"
#include "kc_plan.h"
#include "kc_vault.h"

#include <jansson.h>

#include <stdlib.h>
#include <string.h>

static json_t *token_json(const kc_tok_info *t)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:b, s:b}", "label", t->label, "uri", t->uri,
                     "serial", t->serial, "model", t->model, "manufacturer", t->manufacturer,
                     "module", t->module, "initialized", t->initialized, "user_pin_initialized",
                     t->user_pin_initialized);
}

static json_t *meta_json(const kc_vault_meta *m)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:{s:b, s:I}, s:b, s:b, s:s, s:I, s:s, s:s, s:s*}",
                     "name", m->name, "subscription", m->subscription, "region", m->region, "sku",
                     kc_sku_name(m->sku), "soft_delete", "enabled", 1, "retention_days",
                     (json_int_t)m->retention_days, "purge_protection", m->purge_protection,
                     "retention_registered", m->retention_registered, "recovery_level",
                     kc_vault_recovery_level(m), "metadata_generation", (json_int_t)m->generation,
                     "created", m->created, "updated", m->updated, "backup_domain",
                     m->domain[0] ? m->domain : NULL);
}

/* The vault's arrangement in a reader's words. */
static void print_arrangement(FILE *f, const kc_arrangement *a)
{
    fprintf(f, "vault key type:    %s\n",
            a->signer == KC_SIGNER_RSA_PSS ? "RSA-3072 with PSS (no EC on the module)"
                                           : "EC P-256 (ECDSA)");
    fprintf(f, "hsm keys:          %s\n",
            a->hsm_non_extractable
                ? "never leave the token (the module the vault was made through keeps no "
                  "trusted-key arrangement): no backups of them"
                : "leave the token only wrapped under the backup domain's trusted key");
    fprintf(f, "backup key wrap:   %s%s\n",
            a->key_wrap == KC_WRAP_NONE ? "none (no backups)" : kc_wrap_mech_name(a->key_wrap),
            a->key_wrap == KC_WRAP_NONE ? ""
            : a->no_gcm                 ? ", not sealed again (no AES-GCM on the module)"
                                        : ", sealed with AES-GCM");
}

static void print_meta(FILE *f, const kc_vault_meta *m, const kc_tok_info *t)
{
    fprintf(f, "vault:             %s\n", m->name);
    fprintf(f, "subscription:      %s\n", m->subscription);
    fprintf(f, "region:            %s\n", m->region);
    fprintf(f, "sku:               %s%s\n", kc_sku_name(m->sku),
            m->sku == KC_SKU_STANDARD ? " (testing only)" : "");
    fprintf(f, "soft delete:       on, %u days retention\n", m->retention_days);
    fprintf(f, "purge protection:  %s\n", m->purge_protection ? "on" : "off");
    fprintf(f, "retention:         %s\n",
            m->retention_registered ? "registered for mandatory retention"
                                    : "not registered for mandatory retention");
    fprintf(f, "recovery level:    %s\n", kc_vault_recovery_level(m));
    fprintf(f, "backup domain:     %s\n",
            m->domain[0] ? m->domain : "(none: see 'keycustody subscription init')");
    fprintf(f, "created:           %s\n", m->created);
    fprintf(f, "token:             %s\n", t->uri);
    fprintf(f, "module:            %s\n", t->module);
}

/* --- vault init --- */

enum { O_SUB = 256, O_REGION, O_SKU, O_RETENTION, O_PURGE, O_TOKEN, O_REGISTERED, O_ANY_REGION };

struct init_state {
    kc_vault_meta m;
    const char *token;
    int have_sub, have_region, any_region;
};

static int init_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct init_state *s = st;
    char *end;
    long days;

    switch (opt) {
    case O_SUB:
        if (strlen(arg) >= sizeof(s->m.subscription))
            return kc_cli_usage(cli, "subscription id longer than %zu characters",
                                sizeof(s->m.subscription) - 1);
        snprintf(s->m.subscription, sizeof(s->m.subscription), "%s", arg);
        s->have_sub = 1;
        break;
    case O_REGION:
        if (strlen(arg) >= sizeof(s->m.region))
            return kc_cli_usage(cli, "region name too long");
        snprintf(s->m.region, sizeof(s->m.region), "%s", arg);
        s->have_region = 1;
        break;
    case O_SKU:
        if (kc_sku_parse(arg, &s->m.sku) != 0)
            return kc_cli_usage(cli, "--sku '%s': choose premium or standard", arg);
        break;
    case O_RETENTION:
        days = strtol(arg, &end, 10);
        if (*arg == '\0' || *end != '\0' || days < 7 || days > 90)
            return kc_cli_usage(cli, "--retention-days '%s': give a number of days from 7 to 90",
                                arg);
        s->m.retention_days = (unsigned)days;
        break;
    case O_PURGE:
        s->m.purge_protection = 1;
        break;
    case O_TOKEN:
        s->token = arg;
        break;
    case O_REGISTERED:
        s->m.retention_registered = 1;
        break;
    case O_ANY_REGION:
        s->any_region = 1;
        break;
    }
    return 0;
}

static int cmd_init(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"subscription", required_argument, NULL, O_SUB},
        {"region", required_argument, NULL, O_REGION},
        {"sku", required_argument, NULL, O_SKU},
        {"retention-days", required_argument, NULL, O_RETENTION},
        {"purge-protection", no_argument, NULL, O_PURGE},
        {"token", required_argument, NULL, O_TOKEN},
        {"retention-registered", no_argument, NULL, O_REGISTERED},
        {"any-region", no_argument, NULL, O_ANY_REGION},
        {NULL, 0, NULL, 0},
    };
    struct init_state s;
    kc_vault *v = NULL;
    kc_ctx *ctx = NULL;
    kc_error err;
    int first, rc, adopted = 0;

    memset(&s, 0, sizeof(s));
    s.m.sku = KC_SKU_PREMIUM;
    s.m.retention_days = 90;
    rc = kc_cli_parse(cli, argc, argv, opts, init_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one vault name");
    if (!s.have_sub || !s.have_region)
        return kc_cli_usage(cli, "--subscription and --region are required");
    /* checked here, not first by a later 'vault validate' (KC014); a name
     * not written as Azure writes them is told so by the vault's own check */
    if (!s.any_region && !kc_region_known(s.m.region) &&
        strpbrk(s.m.region, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == NULL)
        return kc_cli_usage(cli,
                            "region '%s' is not in keycustody's region table (of %s); give "
                            "--any-region to use a region the table does not know yet",
                            s.m.region, kc_region_table_date());
    if (strlen(argv[first]) >= sizeof(s.m.name)) {
        kc_error_clear(&err);
        if (kc_vault_check_name(argv[first], &err) != KC_OK)
            return kc_cli_fail(cli, &err);
        return kc_cli_usage(cli, "vault name too long");
    }
    snprintf(s.m.name, sizeof(s.m.name), "%s", argv[first]);
    kc_error_clear(&err);
    if (kc_vault_check_meta(&s.m, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    if (kc_vault_init(ctx, &s.m, s.token, &v, &adopted, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    fprintf(cli->out,
            "%s vault '%s': subscription '%s', region '%s', %s, soft delete %u days, "
            "purge protection %s\n",
            adopted ? "adopted token as" : "initialised", v->meta.name, v->meta.subscription,
            v->meta.region, kc_sku_name(v->meta.sku), v->meta.retention_days,
            v->meta.purge_protection ? "on" : "off");
    fprintf(cli->out, "token: %s\n", kc_tok_info_get(v->tok)->uri);
    fprintf(cli->out,
            "vault key: sha256:%s\n"
            "  record this fingerprint where the vault's readers can compare it (the layout's\n"
            "  fingerprint:); it signs everything a reader without the PIN relies on\n",
            v->fingerprint);
    kc_vault_free(v);
    return KC_OK;
}

/* --- vault show --- */

static int cmd_show(kc_cli *cli, int argc, char **argv)
{
    kc_vault *v = NULL;
    kc_ctx *ctx = NULL;
    kc_error err;
    json_t *o;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one vault name or token URI");
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    kc_error_clear(&err);
    if (kc_vault_open(ctx, argv[first], &v, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if (cli->json) {
        o = meta_json(&v->meta);
        json_object_set_new(o, "token", token_json(kc_tok_info_get(v->tok)));
        json_object_set_new(o, "fingerprint", json_string(v->fingerprint));
        json_object_set_new(o, "arrangement", kc_vault_arrangement_json(&v->meta.arr));
        kc_cli_print_json(cli, o);
    } else {
        print_meta(cli->out, &v->meta, kc_tok_info_get(v->tok));
        print_arrangement(cli->out, &v->meta.arr);
        fprintf(cli->out, "vault key:         sha256:%s (signs the metadata and key list)\n",
                v->fingerprint);
    }
    kc_vault_free(v);
    return KC_OK;
}

/* --- vault list --- */

static int cmd_list(kc_cli *cli, int argc, char **argv)
{
    kc_vault_entry *e = NULL;
    kc_ctx *ctx = NULL;
    kc_error err;
    json_t *arr, *o;
    size_t n = 0, i;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (argc != first)
        return kc_cli_usage(cli, "'vault list' takes no arguments");
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    kc_error_clear(&err);
    if (kc_vault_list(ctx, &e, &n, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if (cli->json) {
        arr = json_array();
        for (i = 0; i < n; i++) {
            o = json_pack("{s:b, s:o}", "vault", e[i].is_vault, "token", token_json(&e[i].token));
            if (e[i].is_vault)
                json_object_set_new(o, "metadata", meta_json(&e[i].meta));
            if (e[i].note[0])
                json_object_set_new(o, "note", json_string(e[i].note));
            json_array_append_new(arr, o);
        }
        kc_cli_print_json(cli, arr);
    } else {
        fprintf(cli->out, "%-24s %-16s %-12s %-9s %-17s %s\n", "TOKEN", "SUBSCRIPTION", "REGION",
                "SKU", "SERIAL", "STATUS");
        for (i = 0; i < n; i++) {
            const kc_tok_info *t = &e[i].token;
            if (e[i].is_vault)
                fprintf(cli->out, "%-24s %-16s %-12s %-9s %-17s vault\n", t->label,
                        e[i].meta.subscription, e[i].meta.region, kc_sku_name(e[i].meta.sku),
                        t->serial);
            else
                fprintf(cli->out, "%-24s %-16s %-12s %-9s %-17s %s\n",
                        t->initialized ? t->label : "-", "-", "-", "-", t->serial,
                        e[i].note[0] ? e[i].note : "not a keycustody vault");
        }
    }
    free(e);
    return KC_OK;
}

/* --- vault validate --- */

enum { O_ALL = 300, O_LAYOUT, O_REPAIR };

struct validate_state {
    int all;
    int repair;
    const char *layout;
};

static int validate_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct validate_state *s = st;

    (void)cli;
    if (opt == O_ALL)
        s->all = 1;
    else if (opt == O_LAYOUT)
        s->layout = arg;
    else if (opt == O_REPAIR)
        s->repair = 1;
    return 0;
}

/* vault validate --repair: a rolled-back manifest signed again from the
 * vault's private record of its current one, then what interrupted writes
 * left removed. */
static int repair(kc_cli *cli, kc_ctx *ctx, const char *name)
{
    kc_vault *v = NULL;
    unsigned long generation = 0;
    size_t halves = 0, stale = 0;
    kc_error err;

    kc_error_clear(&err);
    /* a change: under this host's lock, like every command that writes */
    ctx->lock_vaults = 1;
    if (kc_vault_open(ctx, name, &v, &err) != KC_OK ||
        kc_manifest_restore_current(v, &generation, &err) != KC_OK ||
        kc_vault_remove_leftovers(v, &halves, &stale, &err) != KC_OK) {
        kc_vault_free(v);
        return kc_cli_fail(cli, &err);
    }
    if (!cli->json && halves + stale > 0)
        fprintf(cli->out,
                "vault '%s': removed what interrupted writes left: %zu half-made key "
                "version%s, %zu older generation%s of its documents\n",
                v->meta.name, halves, halves == 1 ? "" : "s", stale, stale == 1 ? "" : "s");
    if (!cli->json && generation > 0)
        fprintf(cli->out,
                "vault '%s': manifest signed again from the vault's private record, as "
                "generation %lu\n",
                v->meta.name, generation);
    else if (!cli->json)
        fprintf(cli->out, "vault '%s': its manifest is the recorded one; nothing to repair\n",
                v->meta.name);
    kc_vault_free(v);
    return KC_OK;
}

static int cmd_validate(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"all", no_argument, NULL, O_ALL},
        {"layout", required_argument, NULL, O_LAYOUT},
        {"repair", no_argument, NULL, O_REPAIR},
        {NULL, 0, NULL, 0},
    };
    static char buf[LAYOUT_PINS][400], sobuf[LAYOUT_PINS][400];
    struct validate_state s;
    kc_layout *live = NULL, *want = NULL;
    kc_diags d, ld;
    kc_plan p;
    kc_ctx *ctx = NULL;
    kc_error err;
    size_t i;
    int first, rc;

    memset(&s, 0, sizeof(s));
    memset(&p, 0, sizeof(p));
    kc_diags_init(&d, "live");
    rc = kc_cli_parse(cli, argc, argv, opts, validate_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (s.all == (argc - first == 1))
        return kc_cli_usage(cli, "give one vault name, or --all");
    if (s.all && s.repair)
        return kc_cli_usage(cli, "--repair takes one vault name, not --all");
    if (s.layout != NULL) {
        rc = kc_cli_load_layout(cli, s.layout, &want, &ld);
        if (rc == KC_OK && ld.errors > 0) {
            kc_cli_print_diags(cli, &ld);
            kc_error_set(&cli->error, KC_LAYOUT, "layout '%s' is invalid", s.layout);
            rc = KC_LAYOUT;
        }
        kc_diags_release(&ld);
        if (rc == KC_OK)
            rc = kc_cli_use_layout(cli, want, buf, sobuf);
        if (rc != KC_OK)
            goto done;
    }
    if ((rc = kc_cli_ctx(cli, &ctx)) != KC_OK)
        goto done;
    if (s.repair && (rc = repair(cli, ctx, argv[first])) != KC_OK)
        goto done;
    kc_error_clear(&err);
    if (kc_plan_observe(ctx, s.all ? NULL : (const char *const *)&argv[first], s.all ? 0 : 1, &live,
                        &err) != KC_OK) {
        rc = kc_cli_fail(cli, &err);
        goto done;
    }
    /* the service vault, as the layout, the environment or the store name it */
    snprintf(live->service_vault, sizeof(live->service_vault), "%s",
             want != NULL && want->service_vault[0] ? want->service_vault
             : cli->service_vault != NULL           ? cli->service_vault
                                                    : "");
    kc_layout_validate_live(live, &d);
    if (want != NULL && kc_plan_make(ctx, want, 0, &p, &err) != KC_OK) {
        rc = kc_cli_fail(cli, &err);
        goto done;
    }
    kc_cli_print_diags(cli, &d);
    for (i = 0; i < p.n && !cli->json; i++)
        fprintf(cli->out, "drift: %c %s (%s)\n", kc_action_sign(p.v[i].kind), p.v[i].what,
                p.v[i].why);
    if (d.errors > 0) {
        kc_error_set(&cli->error, KC_LAYOUT, "%zu rule%s broken on the tokens (%zu warning%s)",
                     d.errors, d.errors == 1 ? "" : "s", d.warnings, d.warnings == 1 ? "" : "s");
        rc = KC_LAYOUT;
    } else if (p.n > 0) {
        kc_error_set(&cli->error, KC_CHANGES, "the tokens differ from the layout in %zu way%s", p.n,
                     p.n == 1 ? "" : "s");
        kc_error_hint(&cli->error, "see 'keycustody policy plan %s'", s.layout);
        rc = KC_CHANGES;
    } else {
        if (!cli->json)
            fprintf(cli->out, "%zu vault%s valid (%zu warning%s)%s\n", live->nvaults,
                    live->nvaults == 1 ? "" : "s", d.warnings, d.warnings == 1 ? "" : "s",
                    want ? "; no drift from the layout" : "");
        rc = KC_OK;
    }
done:
    kc_plan_release(&p);
    kc_diags_release(&d);
    kc_layout_free(live);
    kc_layout_free(want);
    return rc;
}

const kc_cmd kc_cmds_vault[] = {
    {"vault", "init", cmd_init,
     "NAME --subscription ID --region REGION [--sku premium|standard]\n"
     "                            [--retention-days 7..90] [--purge-protection]\n"
     "                            [--retention-registered] [--token URI] [--any-region]",
     "make a token a vault: initialise a free token, or adopt an initialised one",
     "NAME is the vault name and token label: 3-24 letters, digits and '-'.\n"
     "If a token labelled NAME exists, it is adopted (its user PIN is needed).\n"
     "Otherwise the first free token (or the one --token URI selects) is\n"
     "initialised: C_InitToken with a new security-officer PIN (--so-pin-source),\n"
     "then C_InitPIN with a new user PIN (--pin-source).\n"
     "The vault metadata is written to the token as a public CKO_DATA object.\n\n"
     "Options:\n"
     "  --subscription ID       the subscription (backup domain) the vault belongs to\n"
     "  --region REGION         Azure region name, e.g. westus; one the region table\n"
     "                          does not know is refused, unless --any-region\n"
     "  --any-region            take a region the table does not know yet\n"
     "  --sku premium|standard  premium (default); standard is for testing only\n"
     "  --retention-days N      soft-delete retention, 7 to 90 days (default 90)\n"
     "  --purge-protection      refuse purges during the retention period\n"
     "  --retention-registered  the subscription is registered for mandatory retention\n"
     "                          (with purge protection: Recoverable+ProtectedSubscription)\n"
     "  --token URI             the free token to initialise (pkcs11: URI)\n\n"
     "Example:\n"
     "  keycustody vault init VaultA1 --subscription contoso-a --region westus \\\n"
     "      --so-pin-source env:SO_PIN --pin-source file:/secure/VaultA1.pin\n",
     0},
    {"vault", "show", cmd_show, "NAME|URI [--json]", "show a vault's metadata and token",
     "Reads the vault metadata (no PIN needed).\n", 1},
    {"vault", "list", cmd_list, "[--json]", "list every visible token and which are vaults",
     "Lists the tokens of every loaded module; free tokens and tokens that are not\n"
     "keycustody vaults are listed too. No PIN needed.\n",
     1},
    {"vault", "validate", cmd_validate, "NAME|--all [--layout FILE] [--repair] [--json]",
     "check live vaults against the Customer Key rules, and for drift from a layout",
     "Reads each vault's metadata, access policy and keys (its PIN is needed) and\n"
     "runs the layout rules on them (see rules.md): recovery level, the service\n"
     "principal's access, administrators without delete, SKU, and for every RSA key\n"
     "that is not a key-exchange key: wrapKey and unwrapKey, no expiry but 9999-12-31,\n"
     "HSM protection, RSA 2048-4096. With --layout, what 'policy plan' would change is\n"
     "reported as drift. Exit 3 when a rule is broken, 10 on drift, 0 otherwise.\n\n"
     "Every command that logs in to a vault also compares its public manifest with\n"
     "the vault's private record of the current one: an older signed manifest put\n"
     "back on the token (by someone without the PIN) is exit 8, 'rolled back'.\n\n"
     "Options:\n"
     "  --all            every vault the modules show\n"
     "  --layout FILE    report drift from this layout\n"
     "  --repair         first repair the vault (its PIN is needed): after a rollback,\n"
     "                   sign its recorded metadata and key state again as its newest\n"
     "                   manifest; remove the half-made key versions and older document\n"
     "                   generations that interrupted commands left (rule KC031)\n",
     1},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
