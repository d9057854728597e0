/* keycustody key create | list | show | export-public | wrap | unwrap */
#include "cli.h"
#include "kc_backup.h"
#include "kc_key.h"
#include "kc_util.h"

#include <jansson.h>

#include <openssl/crypto.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define WRAPPED_MAX 65536

static const char *protection_name(kc_protection p)
{
    return p == KC_PROT_SOFTWARE ? "software" : "hsm";
}

static json_t *token_attrs_json(const kc_key_obj *o)
{
    if (o->is_private)
        return json_pack("{s:b, s:b, s:b, s:b, s:b, s:b, s:b}", "sensitive", o->sensitive,
                         "extractable", o->extractable, "always_sensitive", o->always_sensitive,
                         "never_extractable", o->never_extractable, "wrap_with_trusted",
                         o->wrap_with_trusted, "local", o->local, "modifiable", o->modifiable);
    return json_pack("{s:b, s:b, s:b}", "local", o->local, "trusted", o->trusted, "modifiable",
                     o->modifiable);
}

static json_t *version_json(const kc_key *k, const kc_key_version *ver)
{
    char ops[128];
    json_t *o;

    kc_key_ops_format(ver->ops, ops, sizeof(ops));
    o = json_pack(
        "{s:s, s:s, s:o, s:s, s:I, s:s, s:s, s:s?, s:s?, s:b}", "version", ver->version, "kid",
        ver->uri, "short_id", json_sprintf("%s/%s/%s", k->vault, k->name, ver->version), "kty",
        ver->type == KC_KT_RSA  ? "RSA"
        : ver->type == KC_KT_EC ? "EC"
                                : "other",
        "size", (json_int_t)ver->bits, "protection", protection_name(ver->protection), "key_ops",
        ops, "created", ver->created[0] ? ver->created : NULL, "expires",
        ver->expires[0] ? ver->expires : NULL, "current", ver == &k->versions[k->current]);
    if (o == NULL)
        return NULL;
    if (k->has_state) {
        kc_key_ops_format(ver->token_ops, ops, sizeof(ops));
        json_object_set_new(o, "enabled", json_boolean(ver->enabled));
        if (ver->origin[0])
            json_object_set_new(o, "origin", json_string(ver->origin));
        json_object_set_new(o, "token_ops", json_string(ops));
        if (ver->created_at[0])
            json_object_set_new(o, "created_at", json_string(ver->created_at));
    }
    if (ver->has_priv)
        json_object_set_new(o, "private_key", token_attrs_json(&ver->priv));
    if (ver->has_pub)
        json_object_set_new(o, "public_key", token_attrs_json(&ver->pub));
    return o;
}

static json_t *key_json(const kc_vault *v, const kc_key *k)
{
    json_t *o = json_pack("{s:s, s:s, s:s?, s:s}", "vault", k->vault, "name", k->name,
                          "current_version",
                          k->nversions > 0 ? k->versions[k->current].version : NULL,
                          "recovery_level", kc_vault_recovery_level(&v->meta));
    json_t *vs = json_array(), *tags = json_object(), *half;
    size_t i;

    if (k->nhalf > 0) {
        half = json_array();
        for (i = k->nversions; i < k->nversions + k->nhalf; i++)
            json_array_append_new(half, json_string(k->versions[i].version));
        json_object_set_new(o, "half_made_versions", half);
    }

    for (i = 0; i < k->ntags; i++)
        json_object_set_new(tags, k->tags[i].name, json_string(k->tags[i].value));
    json_object_set_new(o, "tags", tags);
    if (k->deleted)
        json_object_set_new(o, "deleted",
                            json_pack("{s:s, s:s}", "deleted_at", k->deleted_at, "scheduled_purge",
                                      k->purge_after));

    for (i = 0; i < k->nversions; i++)
        json_array_append_new(vs, version_json(k, &k->versions[i]));
    json_object_set_new(o, "versions", vs);
    return o;
}

static const char *yes(int b)
{
    return b ? "yes" : "no";
}

/* What the private key's attributes promise, not what was asked for: an
 * hsm key that any user-chosen key could wrap is not called unreadable. */
static const char *protection_text(const kc_key_version *ver)
{
    if (ver->protection != KC_PROT_HSM)
        return "software (private key readable: testing only)";
    if (!ver->priv.extractable)
        return "hsm (private key sensitive and not extractable: it never leaves the token)";
    if (ver->priv.wrap_with_trusted)
        return "hsm (private key sensitive, never readable in clear; it leaves the token only "
               "wrapped under a key the token's security officer marked trusted)";
    return "hsm in name only: the private key is sensitive but extractable under any wrapping "
           "key the user makes";
}

static void print_version(FILE *f, const kc_vault *v, const kc_key *k, const kc_key_version *ver)
{
    char ops[128], tops[128];
    unsigned want;
    size_t i;

    kc_key_ops_format(ver->ops, ops, sizeof(ops));
    fprintf(f, "key:          %s/%s\n", k->vault, k->name);
    fprintf(f, "version:      %s%s\n", ver->version,
            ver == &k->versions[k->current] ? " (current)" : "");
    fprintf(f, "key id:       %s\n", ver->uri);
    fprintf(f, "type:         %s-%u\n", ver->type == KC_KT_RSA ? "RSA" : "non-RSA", ver->bits);
    fprintf(f, "protection:   %s\n", protection_text(ver));
    fprintf(f, "ops:          %s\n", ops[0] ? ops : "(none)");
    if (k->has_state) {
        fprintf(f, "enabled:      %s\n", ver->enabled ? "yes" : "no");
        want = kc_key_token_ops(k, ver);
        if (want != ver->token_ops) {
            kc_key_ops_format(ver->token_ops, tops, sizeof(tops));
            fprintf(f,
                    "enforcement:  the token allows %s; keycustody refuses what is not "
                    "allowed above\n",
                    tops[0] ? tops : "(nothing)");
        }
    }
    fprintf(f, "created:      %s\n",
            ver->created_at[0] ? ver->created_at
            : ver->created[0]  ? ver->created
                               : "(unknown)");
    fprintf(f, "expires:      %s\n", ver->expires[0] ? ver->expires : "never");
    if (ver->origin[0])
        fprintf(f, "origin:       %s\n", ver->origin);
    fprintf(f, "recovery:     %s (soft delete, %u days)\n", kc_vault_recovery_level(&v->meta),
            v->meta.retention_days);
    for (i = 0; i < k->ntags; i++)
        fprintf(f, "tag:          %s=%s\n", k->tags[i].name, k->tags[i].value);
    if (ver->has_priv) {
        const kc_key_obj *p = &ver->priv;
        fprintf(f,
                "private key:  sensitive=%s extractable=%s wrap_with_trusted=%s "
                "always_sensitive=%s never_extractable=%s local=%s\n",
                yes(p->sensitive), yes(p->extractable), yes(p->wrap_with_trusted),
                yes(p->always_sensitive), yes(p->never_extractable), yes(p->local));
    } else {
        fprintf(f, "private key:  (not visible)\n");
    }
    if (ver->has_pub)
        fprintf(f, "public key:   local=%s trusted=%s\n", yes(ver->pub.local),
                yes(ver->pub.trusted));
}

/* Opens the vault named by s and checks the acting principal holds perm. */
static int open_vault(kc_cli *cli, const char *name, unsigned perm, kc_vault **v)
{
    kc_ctx *ctx = NULL;
    kc_error err;

    *v = NULL;
    if (kc_cli_ctx(cli, &ctx) != KC_OK)
        return cli->error.code;
    kc_error_clear(&err);
    if (kc_vault_open(ctx, name, v, &err) != KC_OK ||
        kc_vault_authorize(*v, cli->principal, perm, &err) != KC_OK) {
        kc_vault_free(*v);
        *v = NULL;
        return kc_cli_fail(cli, &err);
    }
    return 0;
}

/* Opens the vault and key named by s, for an operation needing perm.
 * want_version: a VERSION part is allowed. */
static int open_key(kc_cli *cli, const char *s, unsigned perm, int login, int want_version,
                    kc_vault **v, kc_key **k, kc_key_ref *ref)
{
    kc_error err;

    *v = NULL;
    if (k != NULL)
        *k = NULL;
    kc_error_clear(&err);
    if (kc_key_ref_parse(s, ref, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if (!want_version && ref->id_len > 0)
        return kc_cli_usage(cli, "'%s': this command takes VAULT/KEY without a version", s);
    if (open_vault(cli, ref->vault, perm, v) != 0)
        return cli->error.code;
    if (k != NULL && kc_key_get(*v, ref->name, login, k, &err) != KC_OK) {
        kc_vault_free(*v);
        *v = NULL;
        return kc_cli_fail(cli, &err);
    }
    return 0;
}

/* --- key create --- */

enum { O_SIZE = 256, O_KTY, O_PROT, O_OPS, O_EXPIRES, O_IN, O_OUT, O_ALG, O_RAW, O_FORCE };

struct create_state {
    kc_key_create_opts o;
    const char *size;
};

static int create_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct create_state *s = st;
    kc_error err;

    kc_error_clear(&err);
    switch (opt) {
    case O_SIZE:
        s->size = arg;
        break;
    case O_KTY:
        if (strcmp(arg, "RSA") == 0 || strcmp(arg, "RSA-HSM") == 0)
            break;
        if (strncmp(arg, "EC", 2) == 0) {
            kc_error_set(&err, KC_USAGE, "--kty %s: root keys must be RSA", arg);
            kc_error_hint(&err, "Customer Key wraps and unwraps data keys with RSA-OAEP, which EC "
                                "keys cannot do");
            return kc_cli_fail(cli, &err);
        }
        return kc_cli_usage(cli, "--kty '%s': only RSA (or RSA-HSM) is supported", arg);
    case O_PROT:
        if (strcmp(arg, "hsm") == 0)
            s->o.protection = KC_PROT_HSM;
        else if (strcmp(arg, "software") == 0)
            s->o.protection = KC_PROT_SOFTWARE;
        else
            return kc_cli_usage(cli, "--protection '%s': choose hsm or software", arg);
        break;
    case O_OPS:
        if (kc_key_ops_parse(arg, &s->o.ops, &err) != KC_OK)
            return kc_cli_fail(cli, &err);
        break;
    case O_EXPIRES:
        s->o.expires = arg;
        break;
    }
    return 0;
}

static int cmd_create(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"size", required_argument, NULL, O_SIZE},       {"kty", required_argument, NULL, O_KTY},
        {"protection", required_argument, NULL, O_PROT}, {"ops", required_argument, NULL, O_OPS},
        {"expires", required_argument, NULL, O_EXPIRES}, {NULL, 0, NULL, 0},
    };
    struct create_state s;
    kc_key_ref ref;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    kc_error err;
    int first, rc;

    memset(&s, 0, sizeof(s));
    s.o.protection = KC_PROT_HSM;
    s.o.ops = KC_OP_WRAP | KC_OP_UNWRAP;
    rc = kc_cli_parse(cli, argc, argv, opts, create_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one key as VAULT/KEY");
    if (s.size == NULL)
        return kc_cli_usage(cli, "--size is required: 2048, 3072 or 4096");
    kc_error_clear(&err);
    if (kc_key_check_size(s.size, &s.o.bits, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    rc = open_key(cli, argv[first], KC_PERM_CREATE, 1, 0, &v, NULL, &ref);
    if (rc != 0)
        return rc;
    s.o.name = ref.name;
    if (kc_key_create(v, &s.o, &k, &err) != KC_OK) {
        kc_vault_free(v);
        return kc_cli_fail(cli, &err);
    }
    fprintf(cli->out, "created key '%s/%s'\n", k->vault, k->name);
    kc_cli_audit_note(cli, "version", k->versions[k->current].version);
    print_version(cli->out, v, k, &k->versions[k->current]);
    kc_key_free(k);
    kc_vault_free(v);
    return KC_OK;
}

/* --- key list --- */

static void print_active(FILE *f, const kc_vault *v, const kc_key *keys, size_t n)
{
    char ops[128];
    size_t i;

    if (n == 0) {
        fprintf(f, "vault '%s' has no keys\n", v->meta.name);
        return;
    }
    fprintf(f, "%-24s %-8s %-5s %-10s %-20s %-10s %s\n", "KEY", "VERSIONS", "SIZE", "PROTECTION",
            "OPS", "EXPIRES", "CURRENT VERSION");
    for (i = 0; i < n; i++) {
        const kc_key_version *cur = &keys[i].versions[keys[i].current];
        if (keys[i].nversions == 0) {
            fprintf(f, "%-24s %-8d half-made: an interrupted create left half a key pair "
                       "('keycustody vault validate %s --repair' removes it)\n",
                    keys[i].name, 0, v->meta.name);
            continue;
        }
        kc_key_ops_format(cur->ops, ops, sizeof(ops));
        fprintf(f, "%-24s %-8zu %-5u %-10s %-20s %-10s %s\n", keys[i].name, keys[i].nversions,
                cur->bits, protection_name(cur->protection), ops,
                cur->expires[0] ? cur->expires : "never", cur->version);
    }
}

static void print_deleted(FILE *f, const kc_vault *v, const kc_key *keys, size_t n)
{
    size_t i;

    if (n == 0) {
        fprintf(f, "vault '%s' has no deleted keys\n", v->meta.name);
        return;
    }
    fprintf(f, "%-24s %-8s %-21s %-21s %s\n", "KEY", "VERSIONS", "DELETED", "SCHEDULED PURGE",
            "RECOVERY LEVEL");
    for (i = 0; i < n; i++)
        fprintf(f, "%-24s %-8zu %-21s %-21s %s\n", keys[i].name, keys[i].nversions,
                keys[i].deleted_at, keys[i].purge_after, kc_vault_recovery_level(&v->meta));
}

/* key list and key list-deleted: one vault, its active or its deleted keys. */
static int list_keys(kc_cli *cli, int argc, char **argv, int deleted)
{
    kc_vault *v = NULL;
    kc_key *keys = NULL;
    kc_error err;
    json_t *arr;
    size_t n = 0, i;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one vault");
    if (open_vault(cli, argv[first], KC_PERM_LIST, &v) != 0)
        return cli->error.code;
    kc_error_clear(&err);
    rc = deleted ? kc_key_list_deleted(v, &keys, &n, &err) : kc_key_list(v, &keys, &n, &err);
    if (rc != KC_OK) {
        kc_vault_free(v);
        return kc_cli_fail(cli, &err);
    }
    if (cli->json) {
        arr = json_array();
        for (i = 0; i < n; i++)
            json_array_append_new(arr, key_json(v, &keys[i]));
        kc_cli_print_json(cli, arr);
    } else if (deleted) {
        print_deleted(cli->out, v, keys, n);
    } else {
        print_active(cli->out, v, keys, n);
    }
    kc_key_list_free(keys, n);
    kc_vault_free(v);
    return KC_OK;
}

static int cmd_list(kc_cli *cli, int argc, char **argv)
{
    return list_keys(cli, argc, argv, 0);
}

static int cmd_list_deleted(kc_cli *cli, int argc, char **argv)
{
    return list_keys(cli, argc, argv, 1);
}

/* --- key show --- */

static int show_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    (void)cli;
    (void)opt;
    (void)arg;
    *(int *)st = 1;
    return 0;
}

static void print_versions(FILE *f, const kc_key *k)
{
    char ops[128];
    size_t i;

    fprintf(f, "%-32s %-20s %-7s %-28s %-10s %s\n", "VERSION", "CREATED", "ENABLED", "OPS",
            "EXPIRES", "");
    for (i = 0; i < k->nversions; i++) {
        const kc_key_version *ver = &k->versions[i];
        kc_key_ops_format(ver->ops, ops, sizeof(ops));
        fprintf(f, "%-32s %-20s %-7s %-28s %-10s %s\n", ver->version,
                ver->created_at[0] ? ver->created_at : ver->created, ver->enabled ? "yes" : "no",
                ops, ver->expires[0] ? ver->expires : "never", i == k->current ? "current" : "");
    }
}

static int cmd_show(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"versions", no_argument, NULL, 256},
        {NULL, 0, NULL, 0},
    };
    const kc_key_version *ver = NULL;
    kc_key_ref ref;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    kc_error err;
    json_t *o;
    int first, rc, versions = 0;

    rc = kc_cli_parse(cli, argc, argv, opts, show_opt, &versions, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one key as VAULT/KEY[/VERSION]");
    rc = open_key(cli, argv[first], KC_PERM_GET, 1, 1, &v, &k, &ref);
    if (rc != 0)
        return rc;
    kc_error_clear(&err);
    if (kc_key_check_active(k, &err) != KC_OK ||
        kc_key_select(k, ref.id, ref.id_len, &ver, &err) != KC_OK) {
        rc = kc_cli_fail(cli, &err);
        goto cleanup;
    }
    if (cli->json) {
        o = key_json(v, k);
        if (ref.id_len > 0)
            json_object_set_new(o, "selected_version", json_string(ver->version));
        kc_cli_print_json(cli, o);
    } else if (versions) {
        print_versions(cli->out, k);
    } else {
        print_version(cli->out, v, k, ver);
        fprintf(cli->out, "versions:     %zu (see them with --versions)\n", k->nversions);
    }
    if (!cli->json && k->nhalf > 0)
        fprintf(cli->out,
                "half-made:    %zu version%s an interrupted create left (half a key pair, "
                "never usable; readers without the PIN refuse the key until it goes): "
                "'keycustody vault validate %s --repair' removes %s\n",
                k->nhalf, k->nhalf == 1 ? "" : "s", v->meta.name, k->nhalf == 1 ? "it" : "them");
    rc = KC_OK;
cleanup:
    kc_key_free(k);
    kc_vault_free(v);
    return rc;
}

/* --- key export-public --- */

struct io_state {
    const char *in, *out, *alg;
    int raw, force;
};

static int io_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct io_state *s = st;
    kc_oaep alg;

    switch (opt) {
    case O_IN:
        s->in = arg;
        break;
    case O_OUT:
        s->out = arg;
        break;
    case O_ALG:
        if (kc_oaep_parse(arg, &alg) != 0)
            return kc_cli_usage(cli, "--alg '%s': choose RSA-OAEP or RSA-OAEP-256", arg);
        s->alg = arg;
        break;
    case O_RAW:
        s->raw = 1;
        break;
    case O_FORCE:
        s->force = 1;
        break;
    }
    return 0;
}

static int cmd_export_public(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"out", required_argument, NULL, O_OUT},
        {"force", no_argument, NULL, O_FORCE},
        {NULL, 0, NULL, 0},
    };
    const kc_key_version *ver = NULL;
    struct io_state s;
    kc_key_ref ref;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    char *pem = NULL;
    kc_error err;
    int first, rc;

    memset(&s, 0, sizeof(s));
    rc = kc_cli_parse(cli, argc, argv, opts, io_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one key as VAULT/KEY[/VERSION]");
    /* The public key is a public object: no PIN. */
    rc = open_key(cli, argv[first], KC_PERM_GET, 0, 1, &v, &k, &ref);
    if (rc != 0)
        return rc;
    kc_error_clear(&err);
    rc = KC_OK;
    if (kc_key_check_active(k, &err) != KC_OK ||
        kc_key_select(k, ref.id, ref.id_len, &ver, &err) != KC_OK ||
        kc_key_public_pem(v, k, ver, &pem, &err) != KC_OK)
        rc = kc_cli_fail(cli, &err);
    else if (s.out == NULL)
        fputs(pem, cli->out);
    else if (kc_cli_write(cli, s.out, pem, strlen(pem), 0644, s.force, &err) != KC_OK)
        rc = kc_cli_fail(cli, &err);
    else
        fprintf(cli->err, "wrote the public key of '%s/%s/%s' to %s\n", k->vault, k->name,
                ver->version, s.out);
    free(pem);
    kc_key_free(k);
    kc_vault_free(v);
    return rc;
}

/* --- key wrap / unwrap --- */

/* The options and operands wrap and unwrap share. */
static int parse_io(kc_cli *cli, int argc, char **argv, struct io_state *s, int *first,
                    const char *in_what)
{
    static const struct option io_opts[] = {
        {"in", required_argument, NULL, O_IN},   {"out", required_argument, NULL, O_OUT},
        {"alg", required_argument, NULL, O_ALG}, {"raw", no_argument, NULL, O_RAW},
        {"force", no_argument, NULL, O_FORCE},   {NULL, 0, NULL, 0},
    };
    int rc;

    memset(s, 0, sizeof(*s));
    rc = kc_cli_parse(cli, argc, argv, io_opts, io_opt, s, first);
    if (rc != 0)
        return rc;
    if (argc - *first != 1)
        return kc_cli_usage(cli, "give exactly one key as VAULT/KEY[/VERSION]");
    if (s->in == NULL || s->out == NULL)
        return kc_cli_usage(cli, "--in FILE (%s) and --out FILE are required", in_what);
    return 0;
}

static int cmd_wrap(kc_cli *cli, int argc, char **argv)
{
    const kc_key_version *ver = NULL;
    struct io_state s;
    kc_key_ref ref;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    kc_secret *secret = NULL;
    unsigned char *wrapped = NULL;
    size_t wrapped_len = 0;
    kc_oaep alg = KC_OAEP_AUTO, used = KC_OAEP_AUTO;
    char *b64 = NULL, *doc = NULL;
    json_t *o = NULL;
    kc_error err;
    int first, rc;

    rc = parse_io(cli, argc, argv, &s, &first, "the secret");
    if (rc != 0)
        return rc;
    if (s.alg != NULL && kc_oaep_parse(s.alg, &alg) != 0)
        return kc_cli_usage(cli, "bad --alg");
    kc_error_clear(&err);
    if (kc_secret_read_file(s.in, KC_WRAP_SECRET_MAX, &secret, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    /* Wrapping uses the public key: no PIN. */
    rc = open_key(cli, argv[first], KC_PERM_WRAP, 0, 1, &v, &k, &ref);
    if (rc != 0)
        goto cleanup;
    if (kc_key_select(k, ref.id, ref.id_len, &ver, &err) != KC_OK ||
        kc_key_wrap(v, k, ver, alg, secret, &wrapped, &wrapped_len, &used, &err) != KC_OK) {
        rc = kc_cli_fail(cli, &err);
        goto cleanup;
    }
    if (s.raw) {
        rc = kc_cli_write(cli, s.out, wrapped, wrapped_len, 0600, s.force, &err);
    } else {
        b64 = kc_b64url_encode(wrapped, wrapped_len);
        o = json_pack("{s:s, s:s, s:s}", "kid", ver->uri, "alg", kc_oaep_name(used), "value",
                      b64 != NULL ? b64 : "");
        doc = o != NULL ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        if (doc == NULL)
            rc = kc_error_set(&err, KC_ERR, "out of memory");
        else
            rc = kc_cli_write(cli, s.out, doc, strlen(doc), 0600, s.force, &err);
    }
    if (rc != KC_OK) {
        rc = kc_cli_fail(cli, &err);
        goto cleanup;
    }
    kc_cli_audit_note(cli, "version", ver->version);
    fprintf(cli->err, "wrapped %zu bytes with '%s/%s/%s' (%s) into %s\n", secret->len, k->vault,
            k->name, ver->version, kc_oaep_name(used), s.out);
    rc = KC_OK;
cleanup:
    free(doc);
    free(b64);
    json_decref(o);
    free(wrapped);
    kc_secret_free(secret);
    kc_key_free(k);
    kc_vault_free(v);
    return rc;
}

/* The JSON that wrap writes is printable ASCII (the value is base64); raw
 * RSA-OAEP output is random bytes, and one file in 256 begins with '{', so
 * the first byte alone cannot tell them apart. */
static bool looks_like_json(const unsigned char *buf, size_t len)
{
    if (len == 0 || buf[0] != '{')
        return false;
    for (size_t i = 0; i < len; i++)
        if ((buf[i] < 0x20 || buf[i] > 0x7e) && buf[i] != '\n' && buf[i] != '\r' &&
            buf[i] != '\t')
            return false;
    return true;
}

/* The wrapped value and algorithm from --in: the JSON that wrap writes, or
 * the raw RSA-OAEP output of another tool (then --alg says which). */
static kc_rc read_wrapped(const char *path, const char *alg_opt, kc_key_ref *ref,
                          unsigned char **value, size_t *len, kc_oaep *alg, kc_error *err)
{
    unsigned char *buf = NULL, kid_id[64];
    const char *kid = NULL, *jalg = NULL, *jvalue = NULL;
    char kid_name[KC_KEY_NAME_MAX + 1];
    size_t buf_len = 0, kid_id_len = 0;
    json_t *o = NULL;
    json_error_t je;
    kc_oaep a;
    kc_rc r;

    *value = NULL;
    r = kc_file_read(path, WRAPPED_MAX, &buf, &buf_len, err);
    if (r != KC_OK)
        return r;
    if (!looks_like_json(buf, buf_len)) {
        if (alg_opt == NULL) {
            free(buf);
            kc_error_set(err, KC_USAGE, "'%s' is raw ciphertext: say which algorithm made it",
                         path);
            kc_error_hint(err, "add --alg RSA-OAEP (OAEP with SHA-1) or --alg RSA-OAEP-256");
            return KC_USAGE;
        }
        (void)kc_oaep_parse(alg_opt, alg);
        *value = buf;
        *len = buf_len;
        return KC_OK;
    }
    o = json_loadb((const char *)buf, buf_len, JSON_REJECT_DUPLICATES, &je);
    free(buf);
    if (o == NULL || json_unpack_ex(o, &je, JSON_STRICT, "{s:s, s:s, s:s}", "kid", &kid, "alg",
                                    &jalg, "value", &jvalue) != 0) {
        r = kc_error_set(err, KC_USAGE, "'%s' is not a wrapped key written by 'key wrap': %s", path,
                         je.text);
        goto cleanup;
    }
    if (kc_oaep_parse(jalg, &a) != 0) {
        r = kc_error_set(err, KC_USAGE, "'%s': unknown algorithm '%.32s'", path, jalg);
        goto cleanup;
    }
    if (alg_opt != NULL && strcmp(alg_opt, jalg) != 0) {
        r = kc_error_set(err, KC_USAGE, "'%s' says %s but --alg says %s", path, jalg, alg_opt);
        goto cleanup;
    }
    r = kc_p11_uri_object(kid, kid_name, sizeof(kid_name), kid_id, sizeof(kid_id), &kid_id_len,
                          err);
    if (r != KC_OK) {
        kc_error_prefix(err, "'%s' has a bad kid", path);
        goto cleanup;
    }
    if (strcmp(kid_name, ref->name) != 0) {
        r = kc_error_set(err, KC_USAGE, "'%s' was wrapped by key '%s', not '%s'", path, kid_name,
                         ref->name);
        goto cleanup;
    }
    if (ref->id_len > 0 &&
        (ref->id_len != kid_id_len || memcmp(ref->id, kid_id, kid_id_len) != 0)) {
        r = kc_error_set(err, KC_USAGE, "'%s' was wrapped by another version of '%s'", path,
                         ref->name);
        goto cleanup;
    }
    memcpy(ref->id, kid_id, kid_id_len);
    ref->id_len = kid_id_len;
    *value = kc_b64url_decode(jvalue, len);
    if (*value == NULL) {
        r = kc_error_set(err, KC_USAGE, "'%s': the value is not base64url", path);
        goto cleanup;
    }
    *alg = a;
    r = KC_OK;
cleanup:
    json_decref(o);
    return r;
}

static int cmd_unwrap(kc_cli *cli, int argc, char **argv)
{
    const kc_key_version *ver = NULL;
    struct io_state s;
    kc_key_ref ref;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    kc_secret *secret = NULL;
    unsigned char *wrapped = NULL;
    size_t wrapped_len = 0;
    kc_oaep alg = KC_OAEP_SHA1;
    kc_error err;
    int first, rc;

    rc = parse_io(cli, argc, argv, &s, &first, "the wrapped key");
    if (rc != 0)
        return rc;
    if (s.raw)
        return kc_cli_usage(cli, "--raw is for wrap; unwrap reads either form");
    kc_error_clear(&err);
    if (kc_key_ref_parse(argv[first], &ref, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    if (read_wrapped(s.in, s.alg, &ref, &wrapped, &wrapped_len, &alg, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    rc = open_key(cli, argv[first], KC_PERM_UNWRAP, 1, 1, &v, &k, &(kc_key_ref){0});
    if (rc != 0)
        goto cleanup;
    if (kc_key_select(k, ref.id, ref.id_len, &ver, &err) != KC_OK ||
        kc_key_unwrap(v, k, ver, alg, wrapped, wrapped_len, &secret, &err) != KC_OK ||
        kc_cli_write(cli, s.out, secret->data, secret->len, 0600, s.force, &err) != KC_OK) {
        rc = kc_cli_fail(cli, &err);
        goto cleanup;
    }
    kc_cli_audit_note(cli, "version", ver->version);
    fprintf(cli->err, "unwrapped %zu bytes with '%s/%s/%s' (%s) into %s (mode 0600)\n", secret->len,
            k->vault, k->name, ver->version, kc_oaep_name(alg), s.out);
    rc = KC_OK;
cleanup:
    kc_secret_free(secret);
    free(wrapped);
    kc_key_free(k);
    kc_vault_free(v);
    return rc;
}

/* --- lifecycle --- */

/* The shape of rotate, delete, recover and purge: one VAULT/KEY, no options. */
static int one_key(kc_cli *cli, int argc, char **argv, unsigned perm, kc_vault **v, kc_key_ref *ref)
{
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, NULL, NULL, NULL, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one key as VAULT/KEY");
    return open_key(cli, argv[first], perm, 1, 0, v, NULL, ref);
}

/* rotate, delete, recover and purge: one key, one operation, one report. */
typedef kc_rc (*key_op)(kc_vault *v, const char *name, kc_key **out, kc_error *err);
typedef void (*key_report)(kc_cli *cli, const kc_vault *v, const char *name, const kc_key *k);

static int run_key_op(kc_cli *cli, int argc, char **argv, unsigned perm, key_op op,
                      key_report report)
{
    kc_key_ref ref;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    kc_error err;
    int rc = one_key(cli, argc, argv, perm, &v, &ref);

    if (rc != 0)
        return rc;
    kc_error_clear(&err);
    if (op(v, ref.name, &k, &err) != KC_OK) {
        rc = kc_cli_fail(cli, &err);
    } else {
        report(cli, v, ref.name, k);
        rc = KC_OK;
    }
    kc_key_free(k);
    kc_vault_free(v);
    return rc;
}

static void report_rotate(kc_cli *cli, const kc_vault *v, const char *name, const kc_key *k)
{
    (void)v;
    (void)name;
    kc_cli_audit_note(cli, "version", k->versions[k->current].version);
    fprintf(cli->out,
            "rotated key '%s/%s': version %s is current; the %zu older version%s still unwrap%s\n",
            k->vault, k->name, k->versions[k->current].version, k->nversions - 1,
            k->nversions == 2 ? "" : "s", k->nversions == 2 ? "s" : "");
}

static void report_delete(kc_cli *cli, const kc_vault *v, const char *name, const kc_key *k)
{
    (void)name;
    fprintf(cli->out,
            "deleted key '%s/%s' (%zu version%s): unusable, name reserved; recoverable with "
            "'keycustody key recover'; purge %s from %s\n",
            k->vault, k->name, k->nversions, k->nversions == 1 ? "" : "s",
            v->meta.purge_protection ? "possible" : "possible now, or scheduled", k->purge_after);
}

static void report_recover(kc_cli *cli, const kc_vault *v, const char *name, const kc_key *k)
{
    (void)v;
    (void)name;
    fprintf(cli->out, "recovered key '%s/%s' with its %zu version%s\n", k->vault, k->name,
            k->nversions, k->nversions == 1 ? "" : "s");
}

static void report_purge(kc_cli *cli, const kc_vault *v, const char *name, const kc_key *k)
{
    (void)k;
    fprintf(cli->out, "purged key '%s/%s': every version destroyed on the token\n", v->meta.name,
            name);
}

static kc_rc purge_op(kc_vault *v, const char *name, kc_key **out, kc_error *err)
{
    *out = NULL;
    return kc_key_purge(v, name, err);
}

static int cmd_rotate(kc_cli *cli, int argc, char **argv)
{
    return run_key_op(cli, argc, argv, KC_PERM_ROTATE, kc_key_rotate, report_rotate);
}

static int cmd_delete(kc_cli *cli, int argc, char **argv)
{
    return run_key_op(cli, argc, argv, KC_PERM_DELETE, kc_key_delete, report_delete);
}

static int cmd_recover(kc_cli *cli, int argc, char **argv)
{
    return run_key_op(cli, argc, argv, KC_PERM_RECOVER, kc_key_recover, report_recover);
}

static int cmd_purge(kc_cli *cli, int argc, char **argv)
{
    return run_key_op(cli, argc, argv, KC_PERM_PURGE, purge_op, report_purge);
}

/* --- key update --- */

enum { O_ENABLED = 300, O_UOPS, O_UEXPIRES, O_TAG };

struct update_state {
    kc_key_update_opts o;
    kc_tag tags[KC_KEY_TAGS_MAX];
};

static int update_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct update_state *s = st;
    const char *eq;
    kc_error err;

    kc_error_clear(&err);
    switch (opt) {
    case O_ENABLED:
        if (strcmp(arg, "true") != 0 && strcmp(arg, "false") != 0)
            return kc_cli_usage(cli, "--enabled '%s': give true or false", arg);
        s->o.set_enabled = 1;
        s->o.enabled = strcmp(arg, "true") == 0;
        break;
    case O_UOPS:
        if (kc_key_ops_parse(arg, &s->o.ops, &err) != KC_OK)
            return kc_cli_fail(cli, &err);
        s->o.set_ops = 1;
        break;
    case O_UEXPIRES:
        s->o.expires = arg;
        break;
    case O_TAG:
        eq = strchr(arg, '=');
        if (eq == NULL || eq == arg || (size_t)(eq - arg) >= sizeof(s->tags[0].name) ||
            strlen(eq + 1) >= sizeof(s->tags[0].value))
            return kc_cli_usage(cli,
                                "--tag '%.80s': give NAME=VALUE (NAME= removes the tag; "
                                "names up to 63, values up to 255 characters)",
                                arg);
        if (s->o.ntags == KC_KEY_TAGS_MAX)
            return kc_cli_usage(cli, "at most %d --tag options", KC_KEY_TAGS_MAX);
        memcpy(s->tags[s->o.ntags].name, arg, (size_t)(eq - arg));
        s->tags[s->o.ntags].name[eq - arg] = '\0';
        snprintf(s->tags[s->o.ntags].value, sizeof(s->tags[0].value), "%s", eq + 1);
        s->o.ntags++;
        break;
    }
    return 0;
}

static int cmd_update(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"enabled", required_argument, NULL, O_ENABLED},
        {"ops", required_argument, NULL, O_UOPS},
        {"expires", required_argument, NULL, O_UEXPIRES},
        {"tag", required_argument, NULL, O_TAG},
        {NULL, 0, NULL, 0},
    };
    struct update_state s;
    kc_key_ref ref;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    kc_error err;
    int first, rc;

    memset(&s, 0, sizeof(s));
    s.o.tags = s.tags;
    rc = kc_cli_parse(cli, argc, argv, opts, update_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one key as VAULT/KEY[/VERSION]");
    if (!s.o.set_enabled && !s.o.set_ops && s.o.expires == NULL && s.o.ntags == 0)
        return kc_cli_usage(cli, "nothing to change: give --enabled, --ops, --expires or --tag");
    rc = open_key(cli, argv[first], KC_PERM_UPDATE, 1, 1, &v, NULL, &ref);
    if (rc != 0)
        return rc;
    kc_error_clear(&err);
    if (kc_key_update(v, ref.name, ref.id, ref.id_len, &s.o, &k, &err) != KC_OK) {
        kc_vault_free(v);
        return kc_cli_fail(cli, &err);
    }
    fprintf(cli->out, "updated key '%s/%s'\n", k->vault, k->name);
    {
        const kc_key_version *ver = NULL;
        if (kc_key_select(k, ref.id, ref.id_len, &ver, &err) == KC_OK) {
            kc_cli_audit_note(cli, "version", ver->version);
            print_version(cli->out, v, k, ver);
        }
    }
    kc_key_free(k);
    kc_vault_free(v);
    return KC_OK;
}

/* --- backup and restore --- */

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);

    return n > m && strcmp(s + n - m, suffix) == 0;
}

static int cmd_backup(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"out", required_argument, NULL, O_OUT},
        {"force", no_argument, NULL, O_FORCE},
        {NULL, 0, NULL, 0},
    };
    struct io_state s;
    kc_key_ref ref;
    kc_vault *v = NULL;
    unsigned char *blob = NULL;
    size_t len = 0;
    kc_error err;
    int first, rc;

    memset(&s, 0, sizeof(s));
    rc = kc_cli_parse(cli, argc, argv, opts, io_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one key as VAULT/KEY");
    if (s.out == NULL || !ends_with(s.out, ".backup"))
        return kc_cli_usage(cli, "--out FILE.backup is required (the name ends in .backup)");
    rc = open_key(cli, argv[first], KC_PERM_BACKUP, 1, 0, &v, NULL, &ref);
    if (rc != 0)
        return rc;
    kc_error_clear(&err);
    rc = KC_OK;
    if (kc_backup_key(v, ref.name, &blob, &len, &err) != KC_OK ||
        kc_cli_write(cli, s.out, blob, len, 0600, s.force, &err) != KC_OK)
        rc = kc_cli_fail(cli, &err);
    else
        fprintf(kc_cli_report(cli, s.out),
                "backed up key '%s/%s' to %s (%zu bytes; restores only into a vault "
                "of subscription '%s')\n",
                v->meta.name, ref.name, s.out, len, v->meta.subscription);
    free(blob);
    kc_vault_free(v);
    return rc;
}

static int cmd_restore(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"in", required_argument, NULL, O_IN},
        {NULL, 0, NULL, 0},
    };
    struct io_state s;
    char name[KC_KEY_NAME_MAX + 1];
    unsigned char *blob = NULL;
    kc_vault *v = NULL;
    size_t len = 0, nversions = 0;
    kc_error err;
    int first, rc;

    memset(&s, 0, sizeof(s));
    rc = kc_cli_parse(cli, argc, argv, opts, io_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one vault");
    if (s.in == NULL)
        return kc_cli_usage(cli, "--in FILE.backup is required");
    kc_error_clear(&err);
    if (kc_file_read(s.in, KC_BACKUP_FILE_MAX, &blob, &len, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    rc = KC_OK;
    if (open_vault(cli, argv[first], KC_PERM_RESTORE, &v) != 0)
        rc = cli->error.code;
    else if (kc_restore_key(v, blob, len, name, &nversions, &err) != KC_OK)
        rc = kc_cli_fail(cli, &err);
    else
        fprintf(cli->out, "restored key '%s/%s' with %zu version%s\n", v->meta.name, name,
                nversions, nversions == 1 ? "" : "s");
    free(blob);
    kc_vault_free(v);
    return rc;
}

/* --- key import --- */

enum { O_BYOK = 320, O_PEM, O_KEK, O_IOPS };

struct import_state {
    kc_import_opts o;
    const char *byok, *pem;
};

static int import_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct import_state *s = st;
    kc_error err;

    kc_error_clear(&err);
    switch (opt) {
    case O_BYOK:
        s->byok = arg;
        break;
    case O_PEM:
        s->pem = arg;
        break;
    case O_KEK:
        s->o.kek = arg;
        break;
    case O_IOPS:
        if (kc_key_ops_parse(arg, &s->o.ops, &err) != KC_OK)
            return kc_cli_fail(cli, &err);
        break;
    }
    return 0;
}

static int cmd_import(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"byok", required_argument, NULL, O_BYOK},
        {"pem", required_argument, NULL, O_PEM},
        {"kek", required_argument, NULL, O_KEK},
        {"ops", required_argument, NULL, O_IOPS},
        {NULL, 0, NULL, 0},
    };
    struct import_state s;
    unsigned char *buf = NULL;
    kc_key_ref ref;
    kc_vault *v = NULL;
    kc_key *k = NULL;
    size_t len = 0;
    kc_error err;
    int first, rc;

    memset(&s, 0, sizeof(s));
    rc = kc_cli_parse(cli, argc, argv, opts, import_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one key as VAULT/KEY");
    if ((s.byok == NULL) == (s.pem == NULL))
        return kc_cli_usage(cli, "give either --byok FILE or --pem FILE");
    kc_error_clear(&err);
    if (kc_file_read(s.byok ? s.byok : s.pem, 1 << 16, &buf, &len, &err) != KC_OK)
        return kc_cli_fail(cli, &err);
    rc = open_key(cli, argv[first], KC_PERM_IMPORT, 1, 0, &v, NULL, &ref);
    if (rc == 0) {
        s.o.name = ref.name;
        rc = s.byok ? kc_key_import_byok(v, &s.o, buf, len, &k, &err)
                    : kc_key_import_pem(v, &s.o, buf, len, &k, &err);
        if (rc != KC_OK)
            rc = kc_cli_fail(cli, &err);
    }
    OPENSSL_cleanse(buf, len); /* a PEM file holds the key in clear */
    free(buf);
    if (rc == KC_OK) {
        fprintf(cli->out, "imported key '%s/%s'\n", k->vault, k->name);
        kc_cli_audit_note(cli, "version", k->versions[k->current].version);
        print_version(cli->out, v, k, &k->versions[k->current]);
        if (s.pem != NULL)
            fprintf(cli->err,
                    "warning: key '%s/%s' existed outside an HSM before this import "
                    "(CKA_LOCAL=false); delete '%s' safely, and prefer BYOK (--byok)\n",
                    k->vault, k->name, s.pem);
    }
    kc_key_free(k);
    kc_vault_free(v);
    return rc;
}

const kc_cmd kc_cmds_key[] = {
    {"key", "create", cmd_create,
     "VAULT/KEY --size 2048|3072|4096 [--protection hsm|software]\n"
     "                            [--ops wrapKey,unwrapKey,...] [--expires YYYY-MM-DD|never]",
     "create an RSA root key (version one) on the vault's token",
     "Generates an RSA key pair on the token (C_GenerateKeyPair). The version id\n"
     "is 16 random bytes from the token, stored as CKA_ID.\n\n"
     "Options:\n"
     "  --size N             RSA modulus size: 2048, 3072 or 4096 (required)\n"
     "  --kty RSA|RSA-HSM    key type; EC is refused: Customer Key needs RSA wrap/unwrap\n"
     "  --protection P       hsm (default): the private key is CKA_SENSITIVE and\n"
     "                       extractable only under a trusted wrapping key, or, on a\n"
     "                       module without trusted keys, not extractable at all\n"
     "                       ('vault show' says which);\n"
     "                       software: readable private key, for testing only\n"
     "  --ops LIST           Key Vault key operations: encrypt, decrypt, sign, verify,\n"
     "                       wrapKey, unwrapKey, import (a key-exchange key for BYOK)\n"
     "                       (default wrapKey,unwrapKey)\n"
     "  --expires DATE       expiry date, or never (default). Customer Key accepts only\n"
     "                       never or 9999-12-31\n\n"
     "Example:\n"
     "  keycustody key create VaultA1/Key001 --size 3072 --pin-source env:VAULTA1_PIN\n",
     0},
    {"key", "rotate", cmd_rotate, "VAULT/KEY",
     "make a new version of a key current; older versions still unwrap",
     "Generates a new key pair on the token with the same name (CKA_LABEL) and a new\n"
     "version id (CKA_ID), with the current version's size, protection, ops and\n"
     "expiry, and makes it current. Older versions stay usable for unwrap.\n",
     0},
    {"key", "update", cmd_update,
     "VAULT/KEY[/VERSION] [--enabled true|false] [--ops LIST] [--expires DATE]\n"
     "                            [--tag NAME=VALUE]...",
     "change a version's enabled state, ops or expiry, and the key's tags",
     "Without VERSION the current version changes; tags belong to the key.\n"
     "The token's attributes (CKA_WRAP, CKA_UNWRAP, ...) are changed where the token\n"
     "allows it; what it refuses is recorded and enforced by keycustody, and 'key show'\n"
     "says so. A disabled version refuses wrap and unwrap. An expiry once set cannot be\n"
     "removed, only moved (Key Vault's rule). --tag NAME= removes a tag; at most 15.\n",
     0},
    {"key", "delete", cmd_delete, "VAULT/KEY",
     "soft-delete a key: all versions unusable, name reserved, recoverable",
     "The token's usage attributes of every version are switched off and the\n"
     "deletion is recorded; the key is listed by 'key list-deleted' with its\n"
     "scheduled purge date (deletion + the vault's retention days).\n",
     0},
    {"key", "recover", cmd_recover, "VAULT/KEY", "bring a deleted key back whole",
     "Every version gets back the usage it had before the deletion.\n", 0},
    {"key", "purge", cmd_purge, "VAULT/KEY", "destroy every object of a deleted key",
     "Crypto-shreds the key: every version is destroyed on the token. Refused (exit 6)\n"
     "while the retention period runs when the vault has purge protection.\n",
     0},
    {"key", "list-deleted", cmd_list_deleted, "VAULT [--json]",
     "list soft-deleted keys with their deletion and scheduled purge dates", "", 1},
    {"key", "backup", cmd_backup, "VAULT/KEY --out FILE.backup [--force]",
     "back up every version of a key; only its own subscription can restore it",
     "Each private key is wrapped on the token (C_WrapKey, AES key wrap with padding)\n"
     "under the subscription's backup-domain key, with the public keys and all\n"
     "metadata; the whole file is authenticated by an HMAC computed on the token. Key\n"
     "material never appears in clear in the file or in this process. The vault must\n"
     "hold its subscription's backup domain ('keycustody subscription init').\n"
     "  --out FILE  the backup (mode 0600; - for standard output); an existing regular\n"
     "              FILE needs --force\n",
     0},
    {"key", "restore", cmd_restore, "VAULT --in FILE.backup",
     "restore a backed-up key, all versions, into a vault of the same subscription",
     "Only into a vault holding the backup's domain (else exit 8, naming both\n"
     "subscriptions); exit 5 if a key of that name exists, active or deleted. A\n"
     "truncated, altered or foreign file is exit 8 and nothing is written; a restore\n"
     "that fails part-way is rolled back. Version ids and metadata come back as they\n"
     "were; restored private keys are CKA_LOCAL=false, as every unwrapped key.\n",
     0},
    {"key", "import", cmd_import, "VAULT/KEY (--byok FILE [--kek KEK] | --pem FILE) [--ops LIST]",
     "import an RSA key: Key Vault's BYOK flow, or a plain PEM key",
     "--byok: the key travels wrapped for a key-exchange key (KEK) of this vault, made\n"
     "with 'key create VAULT/KEK --size 4096 --ops import': an AES-256 transfer key\n"
     "under RSA-OAEP (SHA-1) with the KEK's public key, then the PKCS#8 key under AES\n"
     "key wrap with padding (CKM_RSA_AES_KEY_WRAP). FILE is Key Vault's .byok JSON\n"
     "(its header.kid names the KEK) or the raw bytes (then --kek names it). The\n"
     "README shows the openssl commands that make one. The key is unwrapped on the\n"
     "token in two steps; it is never in clear outside the HSM.\n"
     "--pem: an unencrypted PEM RSA private key, imported as is and marked as having\n"
     "existed outside an HSM (CKA_LOCAL=false). Prefer --byok.\n"
     "  --ops LIST   the new key's operations (default wrapKey,unwrapKey)\n",
     0},
    {"key", "list", cmd_list, "VAULT [--json]", "list a vault's keys",
     "Logs in to the vault to see its private keys.\n", 1},
    {"key", "show", cmd_show, "VAULT/KEY[/VERSION] [--json]",
     "show a key: id, versions, size, ops, protection, dates, token attributes",
     "Without VERSION, shows the current version. The token's own attributes\n"
     "(CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_LOCAL, ...) are read back and shown.\n"
     "  --versions  list every version (id, created, enabled, ops, expiry; the current\n"
     "              one marked) instead of one version's details\n",
     1},
    {"key", "export-public", cmd_export_public, "VAULT/KEY[/VERSION] [--out FILE] [--force]",
     "write the public key as PEM (SubjectPublicKeyInfo)",
     "Without --out the PEM goes to standard output. No PIN is needed.\n"
     "  --out FILE   write it to FILE (mode 0644; - for standard output); an existing\n"
     "               regular FILE needs --force, anything else is never replaced\n",
     0},
    {"key", "wrap", cmd_wrap,
     "VAULT/KEY[/VERSION] --in SECRET --out FILE [--alg RSA-OAEP|RSA-OAEP-256] [--raw]",
     "wrap a 16-64 byte secret with RSA-OAEP under the key's public key",
     "Runs C_WrapKey on the token; no PIN is needed (public-key operation).\n"
     "The OAEP hash is SHA-256 where the module takes it and SHA-1 where it does\n"
     "not (SoftHSM 2.6.1), unless --alg says which. The output is JSON, as Key\n"
     "Vault's wrapKey returns it: {\"kid\": key id, \"alg\": ..., \"value\": base64url}.\n\n"
     "Options:\n"
     "  --in FILE    the secret (16 to 64 bytes)\n"
     "  --out FILE   where to write the wrapped key (mode 0600; - for standard output);\n"
     "               an existing regular FILE needs --force\n"
     "  --alg A      RSA-OAEP (SHA-1) or RSA-OAEP-256\n"
     "  --raw        write only the RSA-OAEP ciphertext (for OpenSSL and others)\n\n"
     "Example (checked by OpenSSL):\n"
     "  keycustody key wrap VaultA1/Key001 --in dek.bin --out dek.wrapped --raw\n"
     "  openssl pkeyutl -decrypt ... -pkeyopt rsa_padding_mode:oaep -in dek.wrapped\n",
     0},
    {"key", "unwrap", cmd_unwrap,
     "VAULT/KEY[/VERSION] --in FILE --out SECRET [--alg RSA-OAEP|RSA-OAEP-256]",
     "unwrap a wrapped secret with the key's private key on the token",
     "Runs C_UnwrapKey on the token (needs the vault's user PIN). --in is either\n"
     "the JSON that 'key wrap' writes (its kid chooses the version) or raw\n"
     "RSA-OAEP ciphertext, e.g. from 'openssl pkeyutl -encrypt'; then --alg is\n"
     "required. The secret is written with mode 0600 and wiped from memory.\n\n"
     "Options:\n"
     "  --in FILE    the wrapped key\n"
     "  --out FILE   where to write the secret (mode 0600; - for standard output);\n"
     "               an existing regular FILE needs --force\n"
     "  --alg A      RSA-OAEP (SHA-1) or RSA-OAEP-256\n"
     "  --raw        refused: it is for 'key wrap'; unwrap reads either form\n",
     0},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0},
};
