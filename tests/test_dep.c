/* DEPs, scopes and data against SoftHSM: create, assign, unwrap fallback,
 * refresh and roll, status, re-wrap (killed mid-way), offboarding and the
 * data purge path. */
#include "fixture.h"
#include "cli.h"
#include "kc_data.h"
#include "kc_dep.h"
#include "kc_p11.h"
#include "kc_rewrap.h"
#include "kc_store.h"
#include "kc_store_int.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void make_dep(const char *name, const char *keys, const char *workload)
{
    ASSERT_RC(kc_test_run("dep", "create", name, "--keys", keys, "--workload", workload,
                          "--pin-source", "Service=env:TEST_PIN", "--as", "svc", NULL),
              0);
}

/* The layout applied (VaultA1 also holds Other), a service vault with no
 * access policy, and the store and service vault named by environment. */
static void dep_setup(void)
{
    const char *file = kc_test_layout("      - name: KeyA\n        size: 2048\n",
                                      "      - name: KeyA\n        size: 2048\n"
                                      "      - name: Other\n        size: 2048\n");
    const kc_test_out *r;

    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    kc_test_vault("Service", "sub-svc", "centralus");
    r = kc_test_run("dep", "list", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "--store");
    setenv("KEYCUSTODY_STORE", kc_test_store(), 1);
    setenv("KEYCUSTODY_SERVICE_VAULT", "Service", 1);
    /* the service's PIN source: the store's rows are checked on its vault */
    setenv("KEYCUSTODY_SERVICE_PIN_SOURCE", "env:TEST_PIN", 1);
}

/* The key officer takes unwrapKey from the service principal on vault. */
static void revoke_unwrap(const char *vault)
{
    ASSERT_RC(kc_test_run("access", "remove", vault, "--principal", "svc", "--permissions",
                          "unwrapKey", "--so-pin-source", "env:TEST_SO_PIN", "--pin-source",
                          "env:TEST_PIN", "--as", "officer", NULL),
              0);
}

/* Unwraps DEP 'Mbx' as principal; the copy used, or -1 and the error. */
static int dep_unwrap(const char *principal, unsigned flags, unsigned char key[32],
                      kc_dep_unwrap_info *info, kc_error *err)
{
    kc_ctx *ctx = NULL;
    kc_store *st = NULL;
    kc_secret *dek = NULL;
    int slot = -1;

    kc_error_clear(err);
    CU_ASSERT_EQUAL_FATAL(kc_ctx_new(KC_SOFTHSM_MODULE, kc_test_env_pin, NULL, &ctx, err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_store_open(kc_test_store(), &st, err), KC_OK);
    if (kc_dep_unwrap(ctx, st, "Mbx", 0, principal, flags, &dek, info, err) == KC_OK) {
        CU_ASSERT_EQUAL(dek->len, 32);
        memcpy(key, dek->data, 32);
        slot = info->slot;
    }
    kc_secret_free(dek);
    kc_store_close(st);
    kc_ctx_free(ctx);
    return slot;
}

/* Either custodian vault unwraps the DEP key, the availability key only
 * on request, and all three give the same key. */
static void test_dep_unwrap_fallback(void)
{
    unsigned char a[32], b[32], avail[32];
    kc_dep_unwrap_info info;
    kc_error err;

    dep_setup();
    make_dep("Mbx", "VaultA1/KeyA,VaultB1/KeyB", "exchange");
    CU_ASSERT_EQUAL(dep_unwrap("svc", 0, a, &info, &err), 0);
    CU_ASSERT_STRING_EQUAL(info.skipped[0], "");
    /* vault A revokes the service principal: B unwraps, A is named */
    revoke_unwrap("VaultA1");
    CU_ASSERT_EQUAL(dep_unwrap("svc", 0, b, &info, &err), 1);
    CU_ASSERT(kc_test_contains(info.skipped[0], "VaultA1: principal 'svc' lacks 'unwrapKey'"));
    CU_ASSERT_EQUAL(memcmp(a, b, 32), 0);
    /* both refuse: the availability key only when asked for */
    revoke_unwrap("VaultB1");
    CU_ASSERT_EQUAL(dep_unwrap("svc", 0, avail, &info, &err), -1);
    CU_ASSERT_EQUAL(err.code, KC_TOKEN);
    CU_ASSERT(kc_test_contains(err.msg, "neither custodian vault can unwrap the key of DEP 'Mbx'"));
    CU_ASSERT(kc_test_contains(err.msg, "VaultB1: principal 'svc' lacks 'unwrapKey'"));
    CU_ASSERT_EQUAL(dep_unwrap("svc", KC_DEP_USE_AVAILABILITY, avail, &info, &err), 2);
    CU_ASSERT_EQUAL(memcmp(a, avail, 32), 0);
}

/* Every read command's --json, over the command tables: a read command
 * added without a case here fails. Each prints one JSON document and
 * nothing else on stdout; a command that does not read refuses --json. */
static void test_json_everywhere(void)
{
    static const struct {
        const char *name, *args[4];
        int rc; /* vault validate: exit 3, its findings in the JSON */
    } cases[] = {
        {"vault list", {NULL}, 0},
        {"vault show", {"VaultA1"}, 0},
        {"vault validate", {"VaultA1"}, 3},
        {"key list", {"VaultA1"}, 0},
        {"key list-deleted", {"VaultA1"}, 0},
        {"key show", {"VaultA1/KeyA"}, 0},
        {"access show", {"VaultA1"}, 0},
        {"dep list", {NULL}, 0},
        {"dep show", {"Mbx"}, 0},
        {"dep assignment", {NULL}, 0},
        {"status", {NULL}, 0},
        {"rewrap", {NULL}, 0},
        {"policy check", {"@layout"}, 0},
        {"policy plan", {"@layout"}, 0},
        {"audit show", {NULL}, 0},
        {"audit verify", {NULL}, 0},
        {"module list", {NULL}, 0},
        {"module check", {NULL}, 0},
    };
    const kc_cmd *const *groups;
    const char *const *summaries;
    const char *layout, *argv[12];
    const kc_test_out *r;
    size_t ngroups = kc_cli_groups(&groups, &summaries), g, i, j, n, seen = 0;
    const kc_cmd *c;
    char name[64];
    json_t *doc;

    dep_setup();
    layout = kc_test_layout(NULL, NULL);
    make_dep("Mbx", "VaultA1/KeyA,VaultB1/KeyB", "exchange");
    ASSERT_RC(kc_test_run("dep", "assign", "Mbx", "--mailbox", "m1", NULL), 0);
    setenv("KEYCUSTODY_PRINCIPAL", "officer", 1);
    for (g = 0; g < ngroups; g++)
        for (c = groups[g]; c->group != NULL; c++) {
            snprintf(name, sizeof(name), "%s%s%s", c->group, c->verb[0] ? " " : "", c->verb);
            n = 0;
            argv[n++] = c->group;
            if (c->verb[0] != '\0')
                argv[n++] = c->verb;
            for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
                if (strcmp(cases[i].name, name) == 0)
                    break;
            if (!c->reads) {
                /* any operands: --json is refused before they are read */
                argv[n++] = "--json";
                argv[n] = NULL;
                r = kc_test_run(argv[0], argv[1], argv[2], NULL);
                ASSERT_RC(r, 2);
                ASSERT_HAS(r->err, "has no --json output");
                CU_ASSERT_EQUAL(i, sizeof(cases) / sizeof(cases[0]));
                continue;
            }
            if (i == sizeof(cases) / sizeof(cases[0])) {
                fprintf(stderr, "read command '%s' has no --json case\n", name);
                CU_FAIL("a read command without a --json case");
                continue;
            }
            seen++;
            for (j = 0; j < 4 && cases[i].args[j] != NULL; j++)
                argv[n++] = strcmp(cases[i].args[j], "@layout") == 0 ? layout : cases[i].args[j];
            argv[n++] = "--pin-source";
            argv[n++] = "env:TEST_PIN";
            argv[n++] = "--json";
            while (n < 12)
                argv[n++] = NULL;
            r = kc_test_run(argv[0], argv[1], argv[2], argv[3], argv[4], argv[5], argv[6], argv[7],
                            argv[8], argv[9], argv[10], argv[11], NULL);
            if (r->rc != cases[i].rc)
                fprintf(stderr, "%s --json: exit %d: %s\n", name, r->rc, r->err);
            CU_ASSERT_EQUAL(r->rc, cases[i].rc);
            doc = json_loads(r->out, 0, NULL); /* one document, nothing after it */
            if (doc == NULL)
                fprintf(stderr, "%s --json printed no JSON document:\n%s\n", name, r->out);
            CU_ASSERT_PTR_NOT_NULL(doc);
            CU_ASSERT(json_is_object(doc) || json_is_array(doc));
            json_decref(doc);
        }
    CU_ASSERT_EQUAL(seen, sizeof(cases) / sizeof(cases[0]));
    unsetenv("KEYCUSTODY_PRINCIPAL");
}

static void test_dep_create(void)
{
    const kc_test_out *r;
    json_t *j, *keys;

    dep_setup();
    /* the custodian vaults' policies give wrapKey to the service principal only */
    r = kc_test_run("dep", "create", "Mbx", "--keys", "VaultA1/KeyA,VaultB1/KeyB", "--workload",
                    "exchange", "--pin-source", "Service=env:TEST_PIN", "--as", "officer", NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "principal 'officer' lacks 'wrapKey' on vault 'VaultA1'");
    ASSERT_RC(kc_test_run("dep", "list", "--json", NULL), 0);
    CU_ASSERT_STRING_EQUAL(kc_test_run("dep", "list", "--json", NULL)->out, "[]\n");
    r = kc_test_run("dep", "create", "Mbx", "--keys", "VaultA1/KeyA,VaultB1/KeyB", "--workload",
                    "exchange", "--pin-source", "Service=env:TEST_PIN", "--as", "svc", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "created DEP 'Mbx'");
    r = kc_test_run("dep", "show", "Mbx", "--json", NULL);
    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    keys = json_object_get(j, "keys");
    CU_ASSERT_EQUAL(json_array_size(keys), 3);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(keys, 0), "vault")),
                           "VaultA1");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(keys, 1), "vault")),
                           "VaultB1");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(keys, 2), "vault")),
                           "Service");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_array_get(keys, 2), "alg")),
                           "RSA-OAEP");
    CU_ASSERT(json_is_true(json_object_get(j, "enabled")));
    json_decref(j);
    CU_ASSERT_EQUAL(kc_test_avail_keys(), 1);
    /* the same name again */
    r = kc_test_run("dep", "create", "Mbx", "--keys", "VaultA1/KeyA,VaultB1/KeyB", "--workload",
                    "exchange", "--pin-source", "Service=env:TEST_PIN", "--as", "svc", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "a DEP named 'Mbx' exists already");
    /* both keys in one vault: refused, nothing stored, no key left behind */
    r = kc_test_run("dep", "create", "Bad", "--keys", "VaultA1/KeyA,VaultA1/Other", "--workload",
                    "exchange", "--pin-source", "Service=env:TEST_PIN", "--as", "svc", NULL);
    ASSERT_RC(r, 3);
    ASSERT_HAS(r->out, "error[KC011]");
    ASSERT_HAS(r->err, "nothing was made");
    r = kc_test_run("dep", "show", "Bad", NULL);
    ASSERT_RC(r, 4);
    CU_ASSERT_EQUAL(kc_test_avail_keys(), 1);
    /* a root key that does not exist */
    r = kc_test_run("dep", "create", "Gone", "--keys", "VaultA1/KeyA,VaultB1/Nope", "--workload",
                    "exchange", "--pin-source", "Service=env:TEST_PIN", "--as", "svc", NULL);
    ASSERT_RC(r, 4);
    CU_ASSERT_EQUAL(kc_test_avail_keys(), 1);
    /* disable */
    ASSERT_RC(kc_test_run("dep", "set", "Mbx", "--enabled", "false", NULL), 0);
    r = kc_test_run("dep", "list", "--json", NULL);
    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_EQUAL(json_array_size(j), 1);
    CU_ASSERT(json_is_false(json_object_get(json_array_get(j, 0), "enabled")));
    json_decref(j);
    unsetenv("KEYCUSTODY_STORE");
    unsetenv("KEYCUSTODY_SERVICE_VAULT");
}

/* The version slot role of DEP 'Mbx' is wrapped under, from 'dep show'. */
static char *dep_version(int role)
{
    static char v[2][130];
    const kc_test_out *r = kc_test_run("dep", "show", "Mbx", "--json", NULL);
    json_t *j = json_loads(r->out, 0, NULL);

    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    snprintf(v[role], sizeof(v[role]), "%s",
             json_string_value(
                 json_object_get(json_array_get(json_object_get(j, "keys"), role), "version")));
    json_decref(j);
    return v[role];
}

/* The current version of key ref, as 'key show --json' names it. */
static const char *current_version(const char *ref)
{
    static char v[130];
    const kc_test_out *r = kc_test_run("key", "show", ref, "--json", "--as", "svc", "--pin-source",
                                       "env:TEST_PIN", NULL);
    json_t *j = json_loads(r->out, 0, NULL);

    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    snprintf(v, sizeof(v), "%s", json_string_value(json_object_get(j, "current_version")));
    json_decref(j);
    return v;
}

/* After a rotation, refresh wraps the same DEP key under the new version. */
static void test_dep_refresh(void)
{
    unsigned char before[32], after[32];
    char old_a[130], old_b[130], want[300];
    kc_dep_unwrap_info info;
    const kc_test_out *r;
    kc_error err;

    dep_setup();
    make_dep("Mbx", "VaultA1/KeyA,VaultB1/KeyB", "exchange");
    CU_ASSERT_EQUAL(dep_unwrap("svc", 0, before, &info, &err), 0);
    snprintf(old_a, sizeof(old_a), "%s", dep_version(0));
    snprintf(old_b, sizeof(old_b), "%s", dep_version(1));
    ASSERT_RC(kc_test_run("key", "rotate", "VaultA1/KeyA", "--as", "officer", "--pin-source",
                          "env:TEST_PIN", NULL),
              0);
    /* a principal without unwrapKey: refused, nothing changes */
    r = kc_test_run("dep", "refresh", "Mbx", "--as", "officer", "--pin-source",
                    "VaultA1=env:TEST_PIN", "--pin-source", "VaultB1=env:TEST_PIN", NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "cannot refresh DEP 'Mbx'");
    CU_ASSERT_STRING_EQUAL(dep_version(0), old_a);
    r = kc_test_run("dep", "refresh", "Mbx", "--as", "svc", "--pin-source", "VaultA1=env:TEST_PIN",
                    "--pin-source", "VaultB1=env:TEST_PIN", NULL);
    ASSERT_RC(r, 0);
    snprintf(want, sizeof(want), "VaultB1/KeyB: already under version %s", old_b);
    ASSERT_HAS(r->out, want);
    snprintf(want, sizeof(want), "VaultA1/KeyA: version %s -> ", old_a);
    ASSERT_HAS(r->out, want);
    /* now under the key's current version, which 'key show' names */
    CU_ASSERT_STRING_EQUAL(current_version("VaultA1/KeyA"), dep_version(0));
    CU_ASSERT_STRING_NOT_EQUAL(dep_version(0), old_a);
    CU_ASSERT_EQUAL(dep_unwrap("svc", 0, after, &info, &err), 0);
    CU_ASSERT_EQUAL(memcmp(before, after, 32), 0);
}

/* Puts file in scope/name; reads it back; both through the CLI. */
static const kc_test_out *data_roundtrip(const char *scope, const char *name, const char *extra)
{
    const kc_test_out *r;
    char out[1024];

    r = kc_test_run("data", "put", scope, name, "--in", kc_test_path("item.bin"), "--as", "svc",
                    "--pin-source", "VaultA1=env:TEST_PIN", "--pin-source", "VaultB1=env:TEST_PIN",
                    NULL);
    if (r->rc != 0)
        return r;
    snprintf(out, sizeof(out), "%s", kc_test_path("item.out"));
    unlink(out);
    return kc_test_run("data", "get", scope, name, "--out", out, "--as", "svc", "--pin-source",
                       "VaultA1=env:TEST_PIN", "--pin-source", "VaultB1=env:TEST_PIN",
                       "--pin-source", "Service=env:TEST_PIN", extra, NULL);
}

static int item_matches(void)
{
    size_t a = 0, b = 0;
    unsigned char *x = kc_test_read(kc_test_path("item.bin"), &a);
    unsigned char *y = kc_test_read(kc_test_path("item.out"), &b);
    int same = x != NULL && y != NULL && a == b && memcmp(x, y, a) == 0;

    free(x);
    free(y);
    return same;
}

static void test_data(void)
{
    unsigned char item[5000];
    kc_data_session *ds = NULL;
    kc_secret *got = NULL;
    kc_ctx *ctx = NULL;
    kc_store *st = NULL;
    const kc_test_out *r;
    char name[32];
    kc_error err;
    int i;

    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    make_dep("Mbx", "VaultA1/Other,VaultB1/KeyB", "exchange");
    for (i = 0; i < (int)sizeof(item); i++)
        item[i] = (unsigned char)(i * 7 + 3);
    kc_test_write(kc_test_path("item.bin"), item, sizeof(item), 0600);
    kc_test_secret(item, sizeof(item));
    /* a bad command line opens nothing: no store is created */
    setenv("KEYCUSTODY_STORE", kc_test_path("other.db"), 1);
    r = kc_test_run("data", "put", "tenant", "t1", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "--in FILE is required");
    ASSERT_RC(kc_test_run("data", "get", "tenant", "t1", NULL), 2);
    CU_ASSERT_NOT_EQUAL(access(kc_test_path("other.db"), F_OK), 0);
    setenv("KEYCUSTODY_STORE", kc_test_store(), 1);
    /* no DEP yet: nothing to seal under */
    r = data_roundtrip("tenant", "t1", NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "scope 'tenant' has no DEP assigned");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    ASSERT_RC(kc_test_run("dep", "assign", "Mbx", "--mailbox", "u1", NULL), 0);
    ASSERT_RC(data_roundtrip("tenant", "t1", NULL), 0);
    CU_ASSERT(item_matches());
    ASSERT_RC(data_roundtrip("mailbox:u1", "m1", NULL), 0);
    CU_ASSERT(item_matches());
    ASSERT_RC(data_roundtrip("mailbox:u2", "m1", NULL), 0); /* under the tenant DEP */
    CU_ASSERT(item_matches());
    /* many items in one session: one RSA unwrap */
    CU_ASSERT_EQUAL_FATAL(kc_ctx_new(KC_SOFTHSM_MODULE, kc_test_env_pin, NULL, &ctx, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_store_open(kc_test_store(), &st, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_data_open(ctx, st, "svc", 0, NULL, NULL, &ds, &err), KC_OK);
    for (i = 0; i < 20; i++) {
        snprintf(name, sizeof(name), "bulk-%d", i);
        item[0] = (unsigned char)i;
        CU_ASSERT_EQUAL(kc_data_put(ds, "mailbox:u1", name, item, sizeof(item), &err), KC_OK);
    }
    CU_ASSERT_EQUAL(kc_data_get(ds, "mailbox:u1", "bulk-7", &got, &err), KC_OK);
    item[0] = 7;
    CU_ASSERT(got != NULL && got->len == sizeof(item) && memcmp(got->data, item, 5000) == 0);
    CU_ASSERT_EQUAL(kc_data_unwraps(ds), 1);
    kc_secret_free(got);
    kc_data_close(ds);
    /* an item moved to another name, or altered, does not open */
    CU_ASSERT_EQUAL(kc_store_exec(st,
                                  "UPDATE items SET name = 'moved' WHERE scope = 'mailbox:u1' "
                                  "AND name = 'bulk-3'",
                                  &err),
                    KC_OK);
    /* one byte more: a blob literal in each backend's syntax */
    CU_ASSERT_EQUAL(
        kc_store_exec(st,
                      kc_test_on_pg()
                          ? "UPDATE items SET ciphertext = ciphertext || '\\x00'::bytea "
                            "WHERE scope = 'mailbox:u1' AND name = 'bulk-4'"
                          : "UPDATE items SET ciphertext = ciphertext || x'00' WHERE "
                            "scope = 'mailbox:u1' AND name = 'bulk-4'",
                      &err),
        KC_OK);
    kc_store_close(st);
    kc_ctx_free(ctx);
    r = kc_test_run("data", "get", "mailbox:u1", "moved", "--out", kc_test_path("x"), "--as", "svc",
                    "--pin-source", "VaultA1=env:TEST_PIN", NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "item 'moved' of scope 'mailbox:u1' fails authentication");
    r = kc_test_run("data", "get", "mailbox:u1", "bulk-4", "--out", kc_test_path("x"), "--as",
                    "svc", "--pin-source", "VaultA1=env:TEST_PIN", NULL);
    ASSERT_RC(r, 8);
    /* vault A revokes the service: vault B unwraps, with a warning */
    revoke_unwrap("VaultA1");
    r = data_roundtrip("mailbox:u1", "m2", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->err, "warning: VaultA1: principal 'svc' lacks 'unwrapKey'");
    CU_ASSERT(item_matches());
    /* both revoke: only break glass reads the data */
    revoke_unwrap("VaultB1");
    unlink(kc_test_path("item.out"));
    r = kc_test_run("data", "get", "mailbox:u1", "m1", "--out", kc_test_path("item.out"), "--as",
                    "svc", "--pin-source", "VaultA1=env:TEST_PIN", "--pin-source",
                    "VaultB1=env:TEST_PIN", NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "neither custodian vault can unwrap the key of DEP 'Mbx'");
    r = kc_test_run("data", "get", "mailbox:u1", "m1", "--out", kc_test_path("item.out"), "--as",
                    "svc", "--pin-source", "VaultA1=env:TEST_PIN", "--pin-source",
                    "VaultB1=env:TEST_PIN", "--pin-source", "Service=env:TEST_PIN",
                    "--use-availability-key", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->err, "unwrapped by the availability key (break glass)");
    CU_ASSERT(item_matches());
    /* the audit log has the break-glass use on its own, then the read, both sealed */
    r = kc_test_run("audit", "show", "--json", NULL);
    ASSERT_RC(r, 0);
    {
        json_t *j = json_loads(r->out, 0, NULL), *bg, *get;
        size_t n = json_array_size(j);

        CU_ASSERT_FATAL(n >= 2);
        bg = json_array_get(j, n - 2);
        get = json_array_get(j, n - 1);
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(bg, "command")), "break-glass");
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(bg, "dep")), "Mbx");
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(bg, "vault")), "Service");
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(bg, "principal")), "svc");
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(get, "command")), "data get");
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(get, "scope")), "mailbox:u1");
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(get, "dep")), "Mbx");
        CU_ASSERT_PTR_NOT_NULL(json_string_value(json_object_get(get, "sealed_by")));
        json_decref(j);
    }
}

static void test_dep_assign(void)
{
    const kc_test_out *r;
    json_t *j;

    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    make_dep("Mbx", "VaultA1/Other,VaultB1/KeyB", "exchange");
    r = kc_test_run("dep", "assignment", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "no DEP is assigned");
    r = kc_test_run("dep", "assign", "Mbx", "--tenant", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "DEP 'Mbx' is for workload exchange; scope 'tenant' takes a tenant DEP");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    /* a mailbox without its own DEP is under the tenant DEP */
    r = kc_test_run("dep", "assignment", "--mailbox", "u1@contoso.com", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "mailbox:u1@contoso.com: DEP 'Ten'");
    ASSERT_HAS(r->out, "from the tenant");
    r = kc_test_run("dep", "assign", "Mbx", "--mailbox", "u1@contoso.com", NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("dep", "assignment", "--mailbox", "u1@contoso.com", "--json", NULL);
    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "dep")), "Mbx");
    CU_ASSERT(json_is_false(json_object_get(j, "inherited")));
    json_decref(j);
    r = kc_test_run("dep", "assignment", "--json", NULL);
    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_EQUAL(json_array_size(j), 2);
    json_decref(j);
    /* assigned: cannot be disabled */
    r = kc_test_run("dep", "set", "Mbx", "--enabled", "false", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "DEP 'Mbx' is assigned; it cannot be disabled");
    r = kc_test_run("dep", "assign", "--none", "--mailbox", "u1@contoso.com", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "scope 'mailbox:u1@contoso.com' no longer has DEP 'Mbx'");
    ASSERT_RC(kc_test_run("dep", "set", "Mbx", "--enabled", "false", NULL), 0);
    r = kc_test_run("dep", "assign", "Mbx", "--mailbox", "u2@contoso.com", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "DEP 'Mbx' is disabled; it cannot be assigned");
    /* a SharePoint DEP serves the one geo it names */
    r = kc_test_run("dep", "create", "Spo", "--keys", "VaultA1/KeyA,VaultB1/KeyB", "--workload",
                    "sharepoint", "--pin-source", "Service=env:TEST_PIN", "--as", "svc", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "a SharePoint DEP needs --geo CODE");
    ASSERT_RC(kc_test_run("dep", "create", "Spo", "--keys", "VaultA1/KeyA,VaultB1/KeyB",
                          "--workload", "tenant", "--geo", "NAM", "--pin-source",
                          "Service=env:TEST_PIN", "--as", "svc", NULL),
              2);
    ASSERT_RC(kc_test_run("dep", "create", "Spo", "--keys", "VaultA1/KeyA,VaultB1/KeyB",
                          "--workload", "sharepoint", "--geo", "NAM", "--pin-source",
                          "Service=env:TEST_PIN", "--as", "svc", NULL),
              0);
    r = kc_test_run("dep", "assign", "Spo", "--geo", "EUR", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "DEP 'Spo' is for geo 'NAM', not 'EUR'");
    ASSERT_RC(kc_test_run("dep", "assign", "Spo", "--geo", "NAM", NULL), 0);
    ASSERT_RC(kc_test_run("dep", "assign", "--none", "--geo", "NAM", NULL), 0);
    /* bad input */
    r = kc_test_run("dep", "assign", "Mbx", "--mailbox", "u 1", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "'mailbox:u 1' is not a scope");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", "--geo", "NAM", NULL), 2);
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", NULL), 2);
    ASSERT_RC(kc_test_run("dep", "assign", "Nope", "--tenant", NULL), 4);
    r = kc_test_run("dep", "assignment", "--geo", "NAM", NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "scope 'geo:NAM' has no DEP assigned");
    r = kc_test_run("dep", "assign", "--none", "--geo", "NAM", NULL);
    ASSERT_RC(r, 4);
    /* the tenant assignment is untouched by all that */
    r = kc_test_run("dep", "assignment", "--tenant", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "tenant: DEP 'Ten'");
}

/* --- the lifecycle: roll, status, re-wrap, offboarding, purge --- */

#define PINS                                                                                       \
    "--pin-source", "VaultA1=env:TEST_PIN", "--pin-source", "VaultB1=env:TEST_PIN",                \
        "--pin-source", "Service=env:TEST_PIN"

/* The item every test seals: its bytes depend on scope and name. */
static void item_bytes(const char *scope, const char *name, unsigned char out[64])
{
    size_t i;

    memset(out, 0, 64);
    snprintf((char *)out, 64, "%s|%s|", scope, name);
    for (i = strlen((char *)out); i < 64; i++)
        out[i] = (unsigned char)(i * 31);
}

struct lib {
    kc_ctx *ctx;
    kc_store *st;
    kc_data_session *ds;
};

static void lib_open(struct lib *l, unsigned flags)
{
    kc_error err;

    memset(l, 0, sizeof(*l));
    CU_ASSERT_EQUAL_FATAL(kc_ctx_new(KC_SOFTHSM_MODULE, kc_test_env_pin, NULL, &l->ctx, &err),
                          KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_store_open(kc_test_store(), &l->st, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_data_open(l->ctx, l->st, "svc", flags, NULL, NULL, &l->ds, &err),
                          KC_OK);
}

static void lib_close(struct lib *l)
{
    kc_data_close(l->ds);
    kc_store_close(l->st);
    kc_ctx_free(l->ctx);
}

/* Seals item "doc" in mailbox:<prefix><i> for i < n (one session: one
 * RSA unwrap per DEP). */
static void put_mailboxes(const char *prefix, int n)
{
    unsigned char item[64];
    char scope[80];
    struct lib l;
    kc_error err;
    int i;

    lib_open(&l, 0);
    for (i = 0; i < n; i++) {
        snprintf(scope, sizeof(scope), "mailbox:%s%d", prefix, i);
        item_bytes(scope, "doc", item);
        CU_ASSERT_EQUAL_FATAL(kc_data_put(l.ds, scope, "doc", item, sizeof(item), &err), KC_OK);
    }
    CU_ASSERT(kc_data_unwraps(l.ds) <= 2);
    lib_close(&l);
}

/* How many of mailbox:<prefix><i> (i < n) read back as sealed. */
static int readable(const char *prefix, int n, unsigned flags)
{
    unsigned char item[64];
    kc_secret *got = NULL;
    char scope[80];
    struct lib l;
    kc_error err;
    int i, ok = 0;

    lib_open(&l, flags);
    for (i = 0; i < n; i++) {
        snprintf(scope, sizeof(scope), "mailbox:%s%d", prefix, i);
        item_bytes(scope, "doc", item);
        if (kc_data_get(l.ds, scope, "doc", &got, &err) == KC_OK && got->len == sizeof(item) &&
            memcmp(got->data, item, sizeof(item)) == 0)
            ok++;
        kc_secret_free(got);
        got = NULL;
    }
    lib_close(&l);
    return ok;
}

/* The status JSON; the caller frees it. */
static json_t *status_json(const char *scope)
{
    const kc_test_out *r = kc_test_run("status", "--json", scope, NULL);
    json_t *j;

    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    return j;
}

/* "STATE done/total" of DEP name, from status --json. */
static const char *dep_state(const char *name)
{
    static char buf[64];
    json_t *j = status_json(NULL), *d;
    size_t i;

    snprintf(buf, sizeof(buf), "no DEP %s", name);
    json_array_foreach(json_object_get(j, "deps"), i, d)
    {
        if (strcmp(json_string_value(json_object_get(d, "name")), name) == 0)
            snprintf(buf, sizeof(buf), "%s %lld/%lld",
                     json_string_value(json_object_get(d, "state")),
                     json_integer_value(json_object_get(d, "done")),
                     json_integer_value(json_object_get(d, "total")));
    }
    json_decref(j);
    return buf;
}

/* A field of one scope's status. */
static json_t *scope_field(const char *scope, const char *field)
{
    static json_t *keep;
    json_t *j = status_json(scope);

    json_decref(keep);
    CU_ASSERT_EQUAL_FATAL(json_array_size(json_object_get(j, "scopes")), 1);
    keep = json_incref(json_object_get(json_array_get(json_object_get(j, "scopes"), 0), field));
    json_decref(j);
    return keep;
}

/* A tenant DEP and an Exchange DEP, 40 mailboxes under the tenant one and
 * one (x0) under its own. */
static void lifecycle_setup(void)
{
    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    make_dep("Mbx", "VaultA1/Other,VaultB1/KeyB", "exchange");
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Unregistered 0/0");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    /* assigned before any data: nothing to move, so registered */
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 0/0");
    ASSERT_RC(kc_test_run("dep", "assign", "Mbx", "--mailbox", "x0", NULL), 0);
    put_mailboxes("m", 40);
    put_mailboxes("x", 1);
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 40/40");
    CU_ASSERT_STRING_EQUAL(dep_state("Mbx"), "Registered 1/1");
}

static void test_roll_status_rewrap(void)
{
    const kc_test_out *r;
    unsigned char key[32];
    kc_dep_unwrap_info info;
    kc_secret *dek = NULL;
    struct lib l;
    kc_error err;

    lifecycle_setup();
    CU_ASSERT(json_is_true(scope_field("mailbox:m3", "is_encrypted")));
    CU_ASSERT_STRING_EQUAL(json_string_value(scope_field("mailbox:m3", "dep")), "Ten");
    r = kc_test_run("status", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "Ten                      tenant     Registered       40/40");
    ASSERT_HAS(r->out, "mailbox:x0                   Mbx                      yes            1");
    /* roll: a new DEP key; the scope keys stay under the old one until rewrap */
    r = kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "rolled DEP 'Ten': a new DEP key (generation 2)");
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Rolling 0/40");
    r = kc_test_run("status", "mailbox:m3", NULL);
    ASSERT_HAS(r->out, "Rolling 0%");
    ASSERT_HAS(r->out, "pending re-wrap -> Ten");
    r = kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "DEP 'Ten' is still rolling: 40 scope key(s) are under its previous key");
    CU_ASSERT_EQUAL(readable("m", 40, 0), 40); /* old generation still opens */
    /* data put in a rolling scope keeps working; a new scope starts under generation 2 */
    put_mailboxes("n", 1);
    CU_ASSERT_EQUAL(json_integer_value(scope_field("mailbox:n0", "generation")), 2);
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Rolling 1/41");
    r = kc_test_run("rewrap", "--batch", "15", "--json", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "{\"done\":0,\"total\":40,\"resumed\":false}\n"
                       "{\"done\":15,\"total\":40,\"resumed\":false}\n"
                       "{\"done\":30,\"total\":40,\"resumed\":false}\n"
                       "{\"done\":40,\"total\":40,\"resumed\":false}\n"
                       "{\"moved\":40,\"pending\":0}\n");
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 41/41");
    /* nothing left to do: still one valid JSON line */
    r = kc_test_run("rewrap", "--json", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_STRING_EQUAL(r->out, "{\"moved\":0,\"pending\":0}\n");
    CU_ASSERT_STRING_EQUAL(dep_state("Mbx"), "Registered 1/1");
    CU_ASSERT_EQUAL(readable("m", 40, 0), 40);
    CU_ASSERT_EQUAL(readable("x", 1, 0), 1);
    /* the old generation's wrapped copies are gone with the last scope under it */
    lib_open(&l, 0);
    CU_ASSERT_EQUAL(
        kc_dep_unwrap(l.ctx, l.st, "Ten", 1, "svc", KC_DEP_USE_AVAILABILITY, &dek, &info, &err),
        KC_INTEGRITY);
    CU_ASSERT(kc_test_contains(err.msg, "DEP 'Ten' has no key of generation 1"));
    CU_ASSERT_EQUAL(kc_dep_unwrap(l.ctx, l.st, "Ten", 2, "svc", 0, &dek, &info, &err), KC_OK);
    memcpy(key, dek->data, 32);
    kc_secret_free(dek);
    lib_close(&l);
    /* a mailbox moved to the other DEP: Registering until rewrap */
    ASSERT_RC(kc_test_run("dep", "assign", "Mbx", "--mailbox", "m7", NULL), 0);
    CU_ASSERT_STRING_EQUAL(dep_state("Mbx"), "Registering 1/2");
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 40/40");
    r = kc_test_run("rewrap", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "re-wrapped 1 scope key(s)");
    ASSERT_HAS(r->err, "{\"done\":1,\"total\":1,\"resumed\":false}"); /* not a terminal */
    CU_ASSERT_STRING_EQUAL(dep_state("Mbx"), "Registered 2/2");
    CU_ASSERT_STRING_EQUAL(json_string_value(scope_field("mailbox:m7", "dep")), "Mbx");
    CU_ASSERT_EQUAL(readable("m", 40, 0), 40);
    /* nothing left: a no-op */
    r = kc_test_run("rewrap", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "re-wrapped 0 scope key(s)");
    /* bad input */
    ASSERT_RC(kc_test_run("rewrap", "--batch", "0", NULL), 2);
    ASSERT_RC(kc_test_run("rewrap", "extra", NULL), 2);
    r = kc_test_run("status", "mailbox:nobody", NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "scope 'mailbox:nobody' has no data and no DEP assigned");
    ASSERT_RC(kc_test_run("status", "inbox", NULL), 2);
}

/* A re-wrap killed with SIGKILL mid-way: the next run resumes it and no
 * item becomes unreadable. */
static void test_rewrap_killed(void)
{
    char *out = NULL, *line;
    const kc_test_out *r;
    long lines = 0;
    size_t len = 0;
    int n = 300;

    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    put_mailboxes("m", n);
    ASSERT_RC(kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL), 0);
    /* one scope per transaction; killed once 40 batches have been reported */
    kc_test_snapshot_tokens();
    CU_ASSERT_EQUAL(
        kc_test_sh(
            &out,
            "cd '%s' && : > progress.log && ('%s' rewrap --batch 1 --json --as svc --pin-source "
            "VaultA1=env:TEST_PIN --pin-source VaultB1=env:TEST_PIN > "
            "progress.log 2>&1 & p=$!; i=0; while [ $(wc -l < progress.log) "
            "-lt 40 ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done; "
            "kill -9 $p; wait $p; echo killed=$?)",
            kc_test_dir(), KC_BINARY),
        0);
    CU_ASSERT(kc_test_contains(out, "killed=137"));
    (void)kc_test_mend_tokens();
    /* out is kc_test_sh's buffer: it keeps it */
    out = (char *)kc_test_read(kc_test_path("progress.log"), &len);
    for (line = out; line != NULL && (line = strchr(line, '\n')) != NULL; line++)
        lines++;
    free(out);
    CU_ASSERT(lines >= 40 && lines < n);
    /* part done, part not, every item readable */
    CU_ASSERT(kc_test_contains(dep_state("Ten"), "Rolling"));
    CU_ASSERT_EQUAL(readable("m", n, 0), n);
    r = kc_test_run("rewrap", "--json", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT(kc_test_contains(r->out, "\"resumed\":true"));
    {
        char want[64];

        snprintf(want, sizeof(want), "{\"done\":%d,\"total\":%d,\"resumed\":true}\n", n, n);
        CU_ASSERT(kc_test_contains(r->out, want));
    }
    CU_ASSERT(kc_test_contains(dep_state("Ten"), "Registered"));
    CU_ASSERT_EQUAL(readable("m", n, 0), n);
}

/* A progress callback: once ten scopes are moved, another command assigns
 * mailbox:m0, which the walk has passed, to DEP Mbx. */
static void assign_behind(void *arg, long done, long total, int resumed)
{
    int *acted = arg;

    (void)total;
    (void)resumed;
    if (*acted || done < 10)
        return;
    *acted = 1;
    ASSERT_RC(kc_test_run("dep", "assign", "Mbx", "--mailbox", "m0", NULL), 0);
}

/* A scope that falls behind the walk while a re-wrap runs (another
 * command changes the assignment of one it has moved already) is moved by
 * the same job before it ends; the job does not end with it pending. */
static void test_rewrap_scope_behind(void)
{
    long moved = 0;
    int acted = 0;
    struct lib l;
    kc_error err;

    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    make_dep("Mbx", "VaultA1/Other,VaultB1/KeyB", "exchange");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    put_mailboxes("m", 20);
    ASSERT_RC(kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL), 0);
    lib_open(&l, 0);
    CU_ASSERT_EQUAL(kc_rewrap(l.ds, l.st, 1, assign_behind, &acted, &moved, &err), KC_OK);
    lib_close(&l);
    CU_ASSERT(acted);
    /* the 20 under Ten's new key, then m0 again, under Mbx */
    CU_ASSERT_EQUAL(moved, 21);
    CU_ASSERT_STRING_EQUAL(dep_state("Mbx"), "Registered 1/1");
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 19/19");
    CU_ASSERT_STRING_EQUAL(json_string_value(scope_field("mailbox:m0", "dep")), "Mbx");
    CU_ASSERT_EQUAL(readable("m", 20, 0), 20);
}

/* Every wrapped copy of DEP name's key and of its scope keys, from the store. */
static size_t wrapped_copies(const char *name, unsigned char blobs[][512], size_t lens[],
                             size_t cap)
{
    struct lib l;
    kc_q *q = NULL;
    size_t n = 0;

    lib_open(&l, 0);
    CU_ASSERT_EQUAL_FATAL(kc_q_prepare(l.st,
                                       "SELECT wrapped FROM dep_keys k JOIN deps d ON d.id "
                                       "= k.dep_id WHERE d.name = ?1 UNION ALL SELECT "
                                       "wrapped_key FROM scopes s JOIN deps d ON d.id = "
                                       "s.dep_id WHERE d.name = ?1",
                                       &q),
                          KC_Q_OK);
    kc_q_bind_text(q, 1, name);
    while (n < cap && kc_q_step(q) == KC_Q_ROW) {
        lens[n] = (size_t)kc_q_bytes(q, 0);
        if (lens[n] > 0 && lens[n] <= 512) {
            memcpy(blobs[n], kc_q_blob(q, 0), lens[n]);
            n++;
        }
    }
    kc_q_finish(q);
    lib_close(&l);
    return n;
}

/* The files that hold the store's tables, their indexes and TOAST, after
 * a CHECKPOINT wrote every changed page to them (PostgreSQL). */
static size_t pg_table_files(char files[][1024], size_t cap)
{
    PGconn *c = PQconnectdb(kc_test_store());
    PGresult *res;
    char data[512];
    size_t n = 0;
    int i;

    CU_ASSERT_EQUAL_FATAL(PQstatus(c), CONNECTION_OK);
    res = PQexec(c, "CHECKPOINT");
    CU_ASSERT_EQUAL(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    res = PQexec(c, "SELECT pg_relation_filepath(oid) FROM pg_class WHERE oid IN (SELECT oid "
                    "FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND "
                    "relkind IN ('r', 'i') UNION SELECT reltoastrelid FROM pg_class WHERE "
                    "relnamespace = current_schema()::regnamespace AND reltoastrelid <> 0)");
    CU_ASSERT_EQUAL_FATAL(PQresultStatus(res), PGRES_TUPLES_OK);
    /* the cluster is beside the socket directory (scripts/postgres.sh) */
    snprintf(data, sizeof(data), "%s", getenv("KC_TEST_PG_HOST"));
    *strrchr(data, '/') = '\0';
    for (i = 0; i < PQntuples(res) && n < cap; i++)
        snprintf(files[n++], 1024, "%s/data/%s", data, PQgetvalue(res, i, 0));
    CU_ASSERT(n >= 8); /* the tables with blobs, and their keys, at least */
    PQclear(res);
    PQfinish(c);
    return n;
}

/* Whether any of the blobs is still in the store's files: the SQLite file
 * and its log, or the PostgreSQL tables' files. */
static int store_holds_any(unsigned char blobs[][512], const size_t lens[], size_t n)
{
    static char files[64][1024];
    unsigned char *buf;
    size_t len, i, f, nfiles = 2;
    int found = 0;

    if (kc_test_on_pg()) {
        nfiles = pg_table_files(files, 64);
    } else {
        snprintf(files[0], 1024, "%s", kc_test_path("service.db"));
        snprintf(files[1], 1024, "%s", kc_test_path("service.db-wal"));
    }
    for (f = 0; f < nfiles; f++) {
        buf = kc_test_read(files[f], &len);
        for (i = 0; buf != NULL && i < n; i++)
            if (memmem(buf, len, blobs[i], lens[i]) != NULL)
                found = 1;
        free(buf);
    }
    return found;
}

static void set_service(const char *verb, const char *vault)
{
    ASSERT_RC(kc_test_run("access", verb, vault, "--principal", "svc", "--permissions",
                          "wrapKey,unwrapKey", "--so-pin-source", "env:TEST_SO_PIN", "--pin-source",
                          "env:TEST_PIN", NULL),
              0);
}

static void test_purge(void)
{
    unsigned char blobs[8][512];
    size_t lens[8], n;
    const kc_test_out *r;
    char out[1024];
    int before;

    lifecycle_setup();
    make_dep("Mbx2", "VaultA1/Other,VaultB1/KeyB", "exchange");
    ASSERT_RC(kc_test_run("dep", "assign", "Mbx2", "--mailbox", "y0", NULL), 0);
    put_mailboxes("y", 1);
    /* the refusals */
    r = kc_test_run("dep", "purge-request", "Ten", "--reason", "r", "--contact", "c", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "DEP 'Ten' is a tenant DEP; only Exchange and SharePoint DEPs take a data "
                       "purge");
    ASSERT_HAS(r->err, "hint: a tenant leaves with 'keycustody tenant offboard'");
    ASSERT_RC(kc_test_run("dep", "purge-request", "Mbx", "--contact", "c", NULL), 2);
    ASSERT_RC(kc_test_run("dep", "purge-request", "Mbx", "--reason", "r", NULL), 2);
    ASSERT_RC(kc_test_run("dep", "purge-request", "Nope", "--reason", "r", "--contact", "c", NULL),
              4);
    r = kc_test_run("dep", "purge-request", "Mbx", "--reason", "r", "--contact", "c", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "the service principal 'svc' still holds wrapKey,unwrapKey on vault "
                       "'VaultA1'");
    set_service("remove", "VaultA1");
    r = kc_test_run("dep", "purge-request", "Mbx", "--reason", "r", "--contact", "c", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "still holds wrapKey,unwrapKey on vault 'VaultB1'");
    r = kc_test_run("dep", "purge", "Mbx", "--confirm", "Mbx", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "DEP 'Mbx' has no data purge requested");
    set_service("remove", "VaultB1");
    r = kc_test_run("dep", "purge-request", "Mbx", "--reason", "contract ended", "--contact",
                    "ciso@example.com", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "recorded a data purge request for DEP 'Mbx'");
    r = kc_test_run("dep", "show", "Mbx", NULL);
    ASSERT_HAS(r->out, "by ciso@example.com: contract ended");
    r = kc_test_run("dep", "purge-request", "Mbx", "--reason", "r", "--contact", "c", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "DEP 'Mbx' has had a data purge requested since");
    r = kc_test_run("dep", "assign", "Mbx", "--mailbox", "z9", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "it can never be assigned again");
    /* the service gets its access back (for the other DEPs) before the purge */
    set_service("set", "VaultA1");
    set_service("set", "VaultB1");
    CU_ASSERT_EQUAL(readable("x", 1, 0), 1); /* not purged yet */
    r = kc_test_run("dep", "purge", "Mbx", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "confirm it with --confirm Mbx");
    ASSERT_RC(kc_test_run("dep", "purge", "Mbx", "--confirm", "Mbx2", NULL), 2);
    n = wrapped_copies("Mbx", blobs, lens, 8);
    CU_ASSERT_EQUAL(n, 4); /* A, B, availability, one scope key */
    CU_ASSERT(store_holds_any(blobs, lens, n));
    /* without the service vault's PIN nothing is purged: it is needed first */
    unsetenv("KEYCUSTODY_SERVICE_PIN_SOURCE");
    r = kc_test_run("dep", "purge", "Mbx", "--confirm", "Mbx", NULL);
    setenv("KEYCUSTODY_SERVICE_PIN_SOURCE", "env:TEST_PIN", 1);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "no PIN source for vault 'Service'");
    CU_ASSERT(store_holds_any(blobs, lens, n));
    CU_ASSERT_EQUAL(readable("x", 1, 0), 1);
    before = kc_test_avail_keys();
    r = kc_test_run("dep", "purge", "Mbx", "--confirm", "Mbx", "--pin-source",
                    "Service=env:TEST_PIN", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "purged DEP 'Mbx': its availability key Service/avail-");
    ASSERT_HAS(r->out, "of 1 scope key(s) destroyed");
    /* crypto-shredded: no copy in the store file or its log, no availability key */
    CU_ASSERT_FALSE(store_holds_any(blobs, lens, n));
    CU_ASSERT_EQUAL(kc_test_avail_keys(), before - 1);
    /* unreadable whatever is offered, with the custodian keys in place */
    snprintf(out, sizeof(out), "%s", kc_test_path("x0.out"));
    r = kc_test_run("data", "get", "mailbox:x0", "doc", "--out", out, "--use-availability-key",
                    "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "scope 'mailbox:x0' was purged on");
    ASSERT_HAS(r->err, "its data can never be read again");
    CU_ASSERT_NOT_EQUAL(access(out, F_OK), 0);
    CU_ASSERT_EQUAL(readable("x", 1, KC_DEP_USE_AVAILABILITY), 0);
    kc_test_write(kc_test_path("new.bin"), "new", 3, 0600);
    r = kc_test_run("data", "put", "mailbox:x0", "new", "--in", kc_test_path("new.bin"), "--as",
                    "svc", PINS, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "was purged");
    r = kc_test_run("dep", "refresh", "Mbx", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "DEP 'Mbx' was purged on");
    /* the others are untouched */
    CU_ASSERT_EQUAL(readable("m", 40, 0), 40);
    CU_ASSERT_EQUAL(readable("y", 1, 0), 1);
    CU_ASSERT_STRING_EQUAL(dep_state("Mbx"), "Purged 0/0");
    CU_ASSERT_STRING_EQUAL(json_string_value(scope_field("mailbox:x0", "purged")) ? "purged" : "",
                           "purged");
    CU_ASSERT(json_is_false(scope_field("mailbox:x0", "is_encrypted")));
    /* again: nothing left to do */
    r = kc_test_run("dep", "purge", "Mbx", "--confirm", "Mbx", "--pin-source",
                    "Service=env:TEST_PIN", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "DEP 'Mbx' was purged already");
    /* the re-wrap job leaves purged scopes alone */
    ASSERT_RC(kc_test_run("rewrap", "--as", "svc", PINS, NULL), 0);
}

/* Offboarding moves the tenant's scopes under the service-managed key:
 * readable without the custodians; mailboxes with their own DEP stay. */
static void test_offboard(void)
{
    const kc_test_out *r;

    lifecycle_setup();
    r = kc_test_run("tenant", "offboard", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->err, "tenant DEP 'Ten' unassigned");
    ASSERT_HAS(r->out, "offboarded the tenant: 40 scope key(s) moved under the service-managed "
                       "key on vault 'Service'");
    /* the service-managed key's only copy is its own: not break glass */
    CU_ASSERT_PTR_NULL(strstr(r->err, "break glass"));
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Unregistered 0/0");
    CU_ASSERT_STRING_EQUAL(dep_state("service-managed"), "Registered 40/40");
    CU_ASSERT(json_is_false(scope_field("mailbox:m1", "is_encrypted")));
    CU_ASSERT(json_is_true(scope_field("mailbox:x0", "is_encrypted")));
    /* the custodians' keys are no longer needed for the tenant's data */
    revoke_unwrap("VaultA1");
    revoke_unwrap("VaultB1");
    CU_ASSERT_EQUAL(readable("m", 40, 0), 40);
    CU_ASSERT_EQUAL(readable("x", 1, 0), 0); /* its own DEP: the custodians' */
    r = kc_test_run("tenant", "offboard", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->err, "the tenant is offboarded already");
    ASSERT_HAS(r->out, "0 scope key(s) moved");
    /* a tenant DEP cannot be purged: offboarding is its way out */
    r = kc_test_run("dep", "assign", "service-managed", "--mailbox", "q", NULL);
    ASSERT_RC(r, 5);
    r = kc_test_run("dep", "set", "service-managed", "--enabled", "false", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "the service-managed key's DEP is not changed by hand");
    r = kc_test_run("dep", "set", "Mbx", "--name", "service-managed", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "the name 'service-managed' is reserved for the service-managed key's DEP");
    r = kc_test_run("dep", "set", "Mbx", "--name", "Ten", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "a DEP named 'Ten' exists already");
    CU_ASSERT_PTR_NULL(strstr(r->err, "UNIQUE"));
    r = kc_test_run("dep", "purge-request", "service-managed", "--reason", "r", "--contact", "c",
                    NULL);
    ASSERT_RC(r, 5);
    /* the tenant comes back: a tenant DEP again, and the scope keys move back under it */
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "svc", "--permissions",
                          "unwrapKey", "--so-pin-source", "env:TEST_SO_PIN", "--pin-source",
                          "env:TEST_PIN", NULL),
              0);
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registering 0/40");
    r = kc_test_run("rewrap", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_PTR_NULL(strstr(r->err, "break glass"));
    r = kc_test_run("dep", "show", "service-managed", "--json", NULL);
    ASSERT_HAS(r->out, "\"break_glass_uses\": 0");
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 40/40");
    CU_ASSERT(json_is_true(scope_field("mailbox:m1", "is_encrypted")));
    CU_ASSERT_EQUAL(readable("m", 40, 0), 40);
    r = kc_test_run("dep", "create", "service-managed", "--keys", "VaultA1/KeyA,VaultB1/KeyB",
                    "--pin-source", "Service=env:TEST_PIN", "--as", "svc", NULL);
    ASSERT_RC(r, 5);
    unsetenv("KEYCUSTODY_SERVICE_VAULT");
    r = kc_test_run("tenant", "offboard", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "--service-vault NAME (or KEYCUSTODY_SERVICE_VAULT) is required");
}

/* Offboarding hands the tenant's scopes to the service-managed key only
 * when its custodian vaults can unwrap the tenant DEP's key: without their
 * PIN sources, or with PINs the tokens refuse, nothing changes. */
static void test_offboard_checks_first(void)
{
    const kc_test_out *r;

    lifecycle_setup();
    setenv("WRONG_PIN", "99999999", 1);
    r = kc_test_run("tenant", "offboard", "--as", "svc", "--pin-source", "Service=env:TEST_PIN",
                    NULL);
    CU_ASSERT_NOT_EQUAL(r->rc, 0);
    ASSERT_HAS(r->err, "nothing was changed: the tenant's scope keys move from DEP 'Ten' only "
                       "through vault VaultA1 or VaultB1");
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 40/40");
    ASSERT_RC(kc_test_run("dep", "show", "service-managed", NULL), 4);
    r = kc_test_run("tenant", "offboard", "--as", "svc", "--pin-source", "VaultA1=env:WRONG_PIN",
                    "--pin-source", "VaultB1=env:WRONG_PIN", "--pin-source", "Service=env:TEST_PIN",
                    NULL);
    CU_ASSERT_NOT_EQUAL(r->rc, 0);
    ASSERT_HAS(r->err, "nothing was changed");
    ASSERT_HAS(r->err, "CKR_PIN_INCORRECT");
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 40/40");
    ASSERT_RC(kc_test_run("dep", "show", "service-managed", NULL), 4);
    r = kc_test_run("tenant", "offboard", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_STRING_EQUAL(dep_state("service-managed"), "Registered 40/40");
}

/* Replaces the first old in file with new. */
/* policy apply makes the layout's DEPs through kc_dep_create and assigns
 * them; the store is named by the layout, relative to it. */
static void test_policy_apply_deps(void)
{
    const char *file;
    const kc_test_out *r;

    file = kc_test_layout_with_service("assignments:\n  tenant: Dep1\n"
                                       "  mailboxes:\n    - mailbox: ceo\n      dep: Mbx1\n");
    kc_test_edit(file, "deps:\n",
                 "deps:\n  - name: Mbx1\n    workload: exchange\n"
                 "    keys: [VaultA1/KeyA, VaultB1/KeyB]\n"
                 "    description: executives\n");
    /* plan with no store yet: everything to make, and no file made */
    r = kc_test_run("policy", "plan", file, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "  + create DEP Mbx1 (exchange, keys VaultA1/KeyA and VaultB1/KeyB)");
    ASSERT_HAS(r->out, "  + create DEP Dep1 (tenant, keys VaultA1/KeyA and VaultB1/KeyB)");
    ASSERT_HAS(r->out, "  ~ assign DEP Dep1 to tenant");
    ASSERT_HAS(r->out, "  ~ assign DEP Mbx1 to mailbox:ceo");
    CU_ASSERT_NOT_EQUAL(access(kc_test_store(), F_OK), 0);
    r = kc_test_run("policy", "apply", file, "--yes", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "+ create DEP Dep1 (tenant, keys VaultA1/KeyA and VaultB1/KeyB) ... done");
    setenv("KEYCUSTODY_STORE", kc_test_store(), 1);
    r = kc_test_run("dep", "show", "Mbx1", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "description:  executives");
    ASSERT_HAS(r->out, "service:      svc");
    r = kc_test_run("dep", "assignment", "--mailbox", "ceo", NULL);
    ASSERT_HAS(r->out, "DEP 'Mbx1'");
    CU_ASSERT_STRING_EQUAL(dep_state("Dep1"), "Registered 0/0");
    /* again: nothing to do; the availability keys belong to the store, not the layout */
    r = kc_test_run("policy", "plan", file, "--detailed-exitcode", "--allow-delete", NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_STRING_EQUAL(r->out, "No changes: the tokens match the layout.\n");
    /* a description changes in place; a DEP's keys do not */
    file = kc_test_layout_with_service("");
    kc_test_edit(file, "deps:\n",
                 "deps:\n  - name: Mbx1\n    workload: exchange\n"
                 "    keys: [VaultA1/KeyA, VaultB1/KeyB]\n"
                 "    description: board\n");
    r = kc_test_run("policy", "apply", file, "--yes", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "~ update DEP Mbx1: description 'executives' -> 'board' ... done");
    file = kc_test_layout_with_service("");
    kc_test_edit(file, "keys: [VaultA1/KeyA, VaultB1/KeyB]", "keys: [VaultB1/KeyB, VaultA1/KeyA]");
    r = kc_test_run("policy", "plan", file, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "! DEP Dep1 is tenant over VaultA1/KeyA and VaultB1/KeyB in the store");
    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 5);
}

/* Moves the token directory of vault out of SoftHSM's sight (gone != 0),
 * or back. */
static void token_dir(const char *vault, int gone)
{
    char *out = NULL;
    int rc;

    if (gone)
        rc = kc_test_sh(&out,
                        "cd '%s' && mkdir -p gone && for d in tokens/*/; do "
                        "grep -q '%s' \"$d/token.object\" && mv \"$d\" gone/%s; "
                        "done; test -d gone/%s",
                        kc_test_dir(), vault, vault, vault);
    else
        rc = kc_test_sh(&out, "cd '%s' && mv gone/%s tokens/", kc_test_dir(), vault);
    CU_ASSERT_EQUAL(rc, 0);
}

/* The DEP key through A only, B only (the other token's directory
 * removed), and the availability key only (both removed), each use of the
 * last one recorded; every item reads each way. */
static void test_tokens_gone(void)
{
    const kc_test_out *r;
    char out[1024];

    lifecycle_setup();
    snprintf(out, sizeof(out), "%s", kc_test_path("m1.out"));
    token_dir("VaultA1", 1);
    CU_ASSERT_EQUAL(readable("m", 40, 0), 40);
    r = kc_test_run("data", "get", "mailbox:m1", "doc", "--out", out, "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->err, "warning: VaultA1: ");
    token_dir("VaultA1", 0);
    /* vault A refuses the login (a wrong PIN): B, and A named */
    setenv("WRONG_PIN", "000000", 1);
    r = kc_test_run("data", "get", "mailbox:m2", "doc", "--out", out, "--force", "--as", "svc",
                    "--pin-source", "VaultA1=env:WRONG_PIN", "--pin-source", "VaultB1=env:TEST_PIN",
                    NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->err, "warning: VaultA1: ");
    ASSERT_HAS(r->err, "CKR_PIN_INCORRECT");
    token_dir("VaultB1", 1);
    CU_ASSERT_EQUAL(readable("m", 40, 0), 40);
    CU_ASSERT_EQUAL(readable("x", 1, 0), 1);
    token_dir("VaultA1", 1);
    CU_ASSERT_EQUAL(readable("m", 40, 0), 0);
    r = kc_test_run("data", "get", "mailbox:m1", "doc", "--out", out, "--force", "--as", "svc",
                    PINS, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "neither custodian vault can unwrap the key of DEP 'Ten'");
    CU_ASSERT_EQUAL(readable("m", 40, KC_DEP_USE_AVAILABILITY), 40);
    r = kc_test_run("data", "get", "mailbox:m1", "doc", "--out", out, "--force",
                    "--use-availability-key", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->err, "the DEP key was unwrapped by the availability key (break glass)");
    r = kc_test_run("dep", "show", "Ten", NULL);
    ASSERT_HAS(r->out, "break glass:  2 uses, the last at ");
    /* a roll needs the custodians: refused while both are gone, nothing changed */
    r = kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL);
    CU_ASSERT_NOT_EQUAL(r->rc, 0);
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 40/40");
    token_dir("VaultA1", 0);
    token_dir("VaultB1", 0);
    CU_ASSERT_EQUAL(readable("m", 40, 0), 40);
}

static void purge_ready(unsigned round);

/* --- two processes at once, and kills --- */

/* data put (new scopes, and items replaced in scopes being moved) while a
 * rewrap runs in another process: both finish, nothing is lost. */
static void test_put_during_rewrap(void)
{
    unsigned char *rc_text;
    char *out = NULL;
    size_t len = 0;
    int i;

    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    put_mailboxes("m", 200);
    ASSERT_RC(kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL), 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "cd '%s' && ( '%s' rewrap --batch 1 --as svc --pin-source "
                               "VaultA1=env:TEST_PIN --pin-source VaultB1=env:TEST_PIN; echo $? "
                               "> rewrap.tmp; mv rewrap.tmp rewrap.rc ) > rewrap.log 2>&1 &",
                               kc_test_dir(), KC_BINARY),
                    0);
    put_mailboxes("n", 60); /* new scopes, under the new generation */
    put_mailboxes("m", 60); /* items replaced in scopes the rewrap is moving */
    /* rewrap.rc appears whole (a rename), not empty before its status */
    for (i = 0; i < 3000 && access(kc_test_path("rewrap.rc"), F_OK) != 0; i++)
        usleep(10000);
    rc_text = kc_test_read(kc_test_path("rewrap.rc"), &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rc_text);
    CU_ASSERT_STRING_EQUAL((char *)rc_text, "0\n");
    free(rc_text);
    ASSERT_RC(kc_test_run("rewrap", "--as", "svc", PINS, NULL), 0);
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 260/260");
    CU_ASSERT_EQUAL(readable("m", 200, 0), 200);
    CU_ASSERT_EQUAL(readable("n", 60, 0), 60);
}

/* Two rewrap workers at once on one SQLite store: their batches queue on
 * the store's write lock, each scope key is moved by exactly one of them
 * (the moved counts add up to the scopes), both succeed, nothing is lost. */
static void test_two_rewraps(void)
{
    long moved[2] = {-1, -1}, total = 0;
    char *out = NULL;
    int i, n = 240;

    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    put_mailboxes("m", n);
    ASSERT_RC(kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL), 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "cd '%s' && for w in 0 1; do ( '%s' rewrap --batch 3 --json --as "
                               "svc --pin-source VaultA1=env:TEST_PIN --pin-source "
                               "VaultB1=env:TEST_PIN > w$w.log 2> w$w.err; echo rc$w=$? >> "
                               "rcs ) & done; wait; cat rcs; tail -qn1 w0.log w1.log",
                               kc_test_dir(), KC_BINARY),
                    0);
    CU_ASSERT(kc_test_contains(out, "rc0=0"));
    CU_ASSERT(kc_test_contains(out, "rc1=0"));
    for (i = 0; i < 2; i++) {
        const char *m = strstr(out, "{\"moved\":");
        long v;

        CU_ASSERT_PTR_NOT_NULL_FATAL(m);
        v = strtol(m + strlen("{\"moved\":"), NULL, 10);
        moved[i] = v;
        total += v;
        out = (char *)m + 1;
    }
    CU_ASSERT_EQUAL(total, n);
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 240/240");
    CU_ASSERT_EQUAL(readable("m", n, 0), n);
    if (total != n)
        fprintf(stderr, "\nmoved %ld + %ld of %d\n", moved[0], moved[1], n);
}

/* Three rewrap workers at once on PostgreSQL, one killed with SIGKILL
 * mid-way. They run side by side, each claiming batches no other holds
 * (FOR UPDATE SKIP LOCKED), and the killed one's batch goes back to the
 * others. The two left finish the whole job with no run after them, every scope key is
 * moved once (what they moved and what the killed one committed add up),
 * and their progress is the job's, not each worker's. */
static void test_workers_one_killed(void)
{
    static const char worker[] =
        "( exec '%s' rewrap --batch 2 --json --as svc --pin-source VaultA1=env:TEST_PIN "
        "--pin-source VaultB1=env:TEST_PIN > w$w.log 2> w$w.err ) & eval p$w=$!; ";
    char *out = NULL, *m, cmd[4096], one[512];
    long moved = 0, each[2] = {0, 0}, w0_batches, w0_lines;
    int i, n = 2000;

    /* SQLite lets one worker in at a time, and the one waiting may get
     * no turn at all: "two rewraps at once" is its test */
    CU_ASSERT_FATAL(kc_test_on_pg());
    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    put_mailboxes("m", n);
    ASSERT_RC(kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL), 0);
    /* w0 alone until it has moved two batches, then w1 and w2 beside it
     * until each has moved one; then w0 is killed, mid-job */
    snprintf(one, sizeof(one), worker, KC_BINARY);
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && : > w0.log && : > w1.log && : > w2.log && w=0; %s"
             "i=0; while [ $(wc -l < w0.log) -lt 3 ] && [ $i -lt 3000 ]; do sleep 0.01; "
             "i=$((i+1)); done; for w in 1 2; do %s done; i=0; while { [ $(wc -l < w1.log) "
             "-lt 2 ] || [ $(wc -l < w2.log) -lt 2 ]; } && [ $i -lt 3000 ]; do sleep 0.01; "
             "i=$((i+1)); done; kill -9 $p0; wait $p0; echo killed=$?; wait $p1; echo rc1=$?; "
             "wait $p2; echo rc2=$?; tail -qn1 w1.log w2.log; echo w0=$(grep -c done w0.log)",
             kc_test_dir(), one, one);
    CU_ASSERT_EQUAL(kc_test_sh(&out, "%s", cmd), 0);
    CU_ASSERT(kc_test_contains(out, "killed=137"));
    CU_ASSERT(kc_test_contains(out, "rc1=0"));
    CU_ASSERT(kc_test_contains(out, "rc2=0"));
    for (i = 0, m = out; i < 2; i++) {
        m = strstr(m, "{\"moved\":");
        CU_ASSERT_PTR_NOT_NULL_FATAL(m);
        m += strlen("{\"moved\":");
        each[i] = strtol(m, NULL, 10);
        moved += each[i];
    }
    /* side by side: each of the two had batches of its own */
    CU_ASSERT(each[0] > 0 && each[1] > 0);
    /* every key moved once: what the two moved is what the killed one did
     * not commit; it reported each batch it committed (the first line is
     * the job's start), and at most its last one was committed unreported */
    m = strstr(m, "w0=");
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    w0_lines = strtol(m + 3, NULL, 10);
    w0_batches = n - moved;
    CU_ASSERT(w0_lines >= 3);
    CU_ASSERT(w0_batches >= 2 * (w0_lines - 1) && w0_batches <= 2 * w0_lines);
    if (w0_batches < 2 * (w0_lines - 1) || w0_batches > 2 * w0_lines)
        fprintf(stderr, "\nworkers said:\n%s\n", out);
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 2000/2000");
    CU_ASSERT_EQUAL(readable("m", n, 0), n);
    ASSERT_HAS(kc_test_run("rewrap", "--as", "svc", PINS, NULL)->out, "re-wrapped 0 scope key(s)");
}

static double mono_now(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Another session holds one pending scope's row for hold seconds, as a
 * worker mid-batch does; it is locked when this returns. */
static void hold_scope(const char *scope, int hold)
{
    char *out = NULL;

    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "cd '%s' && ( PGAPPNAME=kc-hold psql -X -q -d '%s' -c \"BEGIN; "
                               "SELECT 1 FROM scopes WHERE scope = '%s' FOR UPDATE; SELECT "
                               "pg_sleep(%d); COMMIT\" > hold.log 2>&1 & ); i=0; until psql -X "
                               "-qAt -d '%s' -c \"SELECT count(*) FROM pg_locks l JOIN "
                               "pg_stat_activity a ON a.pid = l.pid JOIN pg_class c ON c.oid = "
                               "l.relation WHERE a.application_name = 'kc-hold' AND c.relname = "
                               "'scopes' AND l.mode = 'RowShareLock'\" | grep -qx 1; do [ $i -ge "
                               "500 ] && exit 1; sleep 0.02; i=$((i+1)); done",
                               kc_test_dir(), kc_test_store(), scope, hold, kc_test_store()),
                    0);
}

/* Every transaction of the store is READ COMMITTED, whatever the URI's
 * options (or the server, database or role) default to: the workers'
 * claims and their wait at the end of a walk re-check a row another
 * worker moved, where REPEATABLE READ or SERIALIZABLE fail instead. The
 * URI's option does take effect (psql shows it); the store's sessions
 * set it back. */
static void test_store_read_committed(void)
{
    char uri[1200], *out = NULL;
    kc_store *st = NULL;
    kc_q *q = NULL;
    kc_error err;

    CU_ASSERT_FATAL(kc_test_on_pg());
    dep_setup();
    snprintf(uri, sizeof(uri), "%s&options=-c%%20default_transaction_isolation%%3Dserializable",
             kc_test_store());
    CU_ASSERT_EQUAL(kc_test_sh(&out, "psql -X -qAt -d '%s' -c 'SHOW transaction_isolation'", uri),
                    0);
    ASSERT_HAS(out, "serializable");
    CU_ASSERT_EQUAL_FATAL(kc_store_open(uri, &st, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_store_begin_shared(st, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_q_prepare(st, "SHOW transaction_isolation", &q), KC_Q_OK);
    CU_ASSERT_EQUAL_FATAL(kc_q_step(q), KC_Q_ROW);
    CU_ASSERT_STRING_EQUAL((const char *)kc_q_text(q, 0), "read committed");
    kc_q_finish(q);
    kc_store_rollback(st);
    kc_store_close(st);
}

/* A worker whose walk ends while another holds a pending scope waits for
 * it, without failing or ending the job short: when the holder lets go
 * (here without moving it), the worker takes the scope and finishes the
 * job. One held past the store's lock timeout (10 s) stops the worker
 * (exit 5) with an error that says what it waited for; nothing is lost,
 * and a run after it finishes. */
static void test_worker_waits_for_held(void)
{
    const kc_test_out *r;
    double t;

    CU_ASSERT_FATAL(kc_test_on_pg());
    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    put_mailboxes("m", 40);
    ASSERT_RC(kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL), 0);
    hold_scope("mailbox:m17", 3);
    t = mono_now();
    r = kc_test_run("rewrap", "--batch", "5", "--as", "svc", PINS, NULL);
    t = mono_now() - t;
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "re-wrapped 40 scope key(s)");
    CU_ASSERT(t >= 1.5); /* it waited for the holder */
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 40/40");
    CU_ASSERT_EQUAL(readable("m", 40, 0), 40);

    ASSERT_RC(kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL), 0);
    /* held well past the 10 s, so that the look times out however late
     * a slow build reaches it; the run after it waits out the rest */
    hold_scope("mailbox:m3", 19);
    r = kc_test_run("rewrap", "--batch", "5", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "the re-wrap stopped after 39 scope key(s); run it again to finish");
    ASSERT_HAS(r->err, "waiting for the scopes other workers hold (or for a table lock, such "
                       "as a purge's): none was free within the store's lock timeout (10 s)");
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Rolling 39/40");
    /* it waits again, for what is left of the hold */
    r = kc_test_run("rewrap", "--as", "svc", PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "re-wrapped 1 scope key(s)");
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 40/40");
    CU_ASSERT_EQUAL(readable("m", 40, 0), 40);
}

/* key rotate in one process while dep refresh runs in another, five
 * times: whichever wins, the DEP key stays the same and both vaults
 * unwrap it; a last refresh puts it under the newest versions. SoftHSM
 * 2.6.1 lets a process that reads a token while another rewrites one fail
 * now and then with CKR_GENERAL_ERROR (its token integrity check; upstream
 * issue 757): the loser must then fail cleanly, naming the vault, and
 * succeed when run again. */
static void test_rotate_during_refresh(void)
{
    unsigned char first[32], now[32];
    kc_dep_unwrap_info info;
    const kc_test_out *r;
    unsigned char *rc_text;
    char *out = NULL;
    size_t len = 0;
    kc_error err;
    int i, j;

    dep_setup();
    make_dep("Mbx", "VaultA1/KeyA,VaultB1/KeyB", "exchange");
    CU_ASSERT_EQUAL_FATAL(dep_unwrap("svc", 0, first, &info, &err), 0);
    for (i = 0; i < 5; i++) {
        unlink(kc_test_path("rotate.rc"));
        CU_ASSERT_EQUAL(kc_test_sh(&out,
                                   "cd '%s' && ( '%s' key rotate VaultA1/KeyA --as officer "
                                   "--pin-source env:TEST_PIN; echo $? > rotate.rc ) > rotate.log "
                                   "2>&1 &",
                                   kc_test_dir(), KC_BINARY),
                        0);
        r = kc_test_run("dep", "refresh", "Mbx", "--as", "svc", PINS, NULL);
        if (r->rc != 0) {
            ASSERT_RC(r, 7);
            ASSERT_HAS(r->err, "vault '");
        }
        /* the shell makes rotate.rc before it writes the status into it */
        for (j = 0; j < 3000; j++) {
            struct stat st;
            if (stat(kc_test_path("rotate.rc"), &st) == 0 && st.st_size > 0)
                break;
            usleep(10000);
        }
        rc_text = kc_test_read(kc_test_path("rotate.rc"), &len);
        if (rc_text == NULL ||
            (strcmp((char *)rc_text, "0\n") != 0 && strcmp((char *)rc_text, "7\n") != 0)) {
            unsigned char *log = kc_test_read(kc_test_path("rotate.log"), &len);
            fprintf(stderr, "\n  key rotate exited %s: %s\n", rc_text ? (char *)rc_text : "?",
                    log ? (char *)log : "");
            free(log);
        }
        CU_ASSERT(rc_text != NULL &&
                  (strcmp((char *)rc_text, "0\n") == 0 || strcmp((char *)rc_text, "7\n") == 0));
        free(rc_text);
        ASSERT_RC(kc_test_run("dep", "refresh", "Mbx", "--as", "svc", PINS, NULL), 0);
        CU_ASSERT_EQUAL(dep_unwrap("svc", 0, now, &info, &err), 0);
        CU_ASSERT_EQUAL(memcmp(first, now, 32), 0);
    }
    ASSERT_RC(kc_test_run("dep", "refresh", "Mbx", "--as", "svc", PINS, NULL), 0);
    CU_ASSERT_STRING_EQUAL(dep_version(0), current_version("VaultA1/KeyA"));
    revoke_unwrap("VaultA1"); /* and through B alone */
    CU_ASSERT_EQUAL(dep_unwrap("svc", 0, now, &info, &err), 1);
    CU_ASSERT_EQUAL(memcmp(first, now, 32), 0);
}

/* dep purge killed with SIGKILL at several points: running it again
 * finishes it, and the outcome is the same as an uninterrupted purge. */
static void test_purge_killed(void)
{
    static const char *delays[] = {"0.02", "0.1", "0.25", "0.5"};
    unsigned char blobs[8][512];
    size_t lens[8], n, i;
    char name[32], scope[32], *out = NULL;
    const kc_test_out *r;

    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    put_mailboxes("m", 3);
    for (i = 0; i < sizeof(delays) / sizeof(delays[0]); i++) {
        snprintf(name, sizeof(name), "P%zu", i);
        snprintf(scope, sizeof(scope), "p%zu-", i);
        purge_ready((unsigned)i);
        n = wrapped_copies(name, blobs, lens, 8);
        kc_test_snapshot_tokens();
        CU_ASSERT_EQUAL(kc_test_sh(&out,
                                   "'%s' dep purge %s --confirm %s --pin-source "
                                   "Service=env:TEST_PIN >/dev/null 2>&1 & p=$!; sleep %s; "
                                   "kill -9 $p 2>/dev/null; wait $p; true",
                                   KC_BINARY, name, name, delays[i]),
                        0);
        (void)kc_test_mend_tokens();
        r = kc_test_run("dep", "purge", name, "--confirm", name, "--pin-source",
                        "Service=env:TEST_PIN", NULL);
        CU_ASSERT(r->rc == 0 || (r->rc == 5 && kc_test_contains(r->err, "purged already")));
        CU_ASSERT_STRING_EQUAL(dep_state(name), "Purged 0/0");
        CU_ASSERT_EQUAL(readable(scope, 1, KC_DEP_USE_AVAILABILITY), 0);
        CU_ASSERT_FALSE(store_holds_any(blobs, lens, n));
        CU_ASSERT_EQUAL(kc_test_avail_keys(), 1); /* the tenant DEP's only */
        CU_ASSERT_EQUAL(readable("m", 3, 0), 3);
    }
}

/* --- injected token failures --- */

static const char *const fault_fns[] = {
    "C_OpenSession",       "C_Login",           "C_FindObjects",     "C_GetAttributeValue",
    "C_GenerateRandom",    "C_GenerateKeyPair", "C_CreateObject",    "C_DestroyObject",
    "C_WrapKey",           "C_UnwrapKey",       "C_FindObjectsInit", "C_Sign",
    "C_SetAttributeValue",
};
#define N_FAULT_FNS (sizeof(fault_fns) / sizeof(fault_fns[0]))

/* The calls to fail: every one of the first four, then fewer and fewer
 * (a create makes ~120 C_GetAttributeValue calls). */
static const unsigned fault_nths[] = {1, 2, 3, 4, 6, 9, 13, 19, 28, 42, 63, 94, 141};
#define N_FAULT_NTHS (sizeof(fault_nths) / sizeof(fault_nths[0]))

/* Runs step() with fn failing at its nth call, for every fn and nth the
 * step reaches; check(failed) then says whether the store and the tokens
 * are as they must be. */
static void each_fault(int (*step)(unsigned round), void (*check)(unsigned round, int failed))
{
    unsigned round = 0, calls;
    size_t f, k;
    kc_error e;
    int rc;

    for (f = 0; f < N_FAULT_FNS; f++)
        for (k = 0; k < N_FAULT_NTHS; k++) {
            CU_ASSERT_EQUAL_FATAL(
                kc_p11_fault_arm(fault_fns[f], "CKR_DEVICE_ERROR", fault_nths[k], 0, &e), KC_OK);
            rc = step(round);
            calls = kc_p11_fault_calls();
            kc_p11_fault_disarm();
            check(round++, rc != 0);
            if (calls < fault_nths[k])
                break; /* not reached: the command made fewer calls */
        }
}

static int fault_baseline_avail, fault_baseline_objects;
static char fault_said[2048]; /* what the faulted command said, shown when a check fails */

static int create_step(unsigned round)
{
    char name[32];
    const kc_test_out *r;

    snprintf(name, sizeof(name), "D%u", round);
    r = kc_test_run("dep", "create", name, "--keys", "VaultA1/KeyA,VaultB1/KeyB", "--workload",
                    "exchange", "--pin-source", "Service=env:TEST_PIN", "--as", "svc", NULL);
    snprintf(fault_said, sizeof(fault_said), "%s", r->err);
    return r->rc;
}

/* A failed create leaves neither a record nor a key on the service vault. */
static void create_check(unsigned round, int failed)
{
    char name[32];
    const kc_test_out *r;

    snprintf(name, sizeof(name), "D%u", round);
    r = kc_test_run("dep", "show", name, NULL);
    CU_ASSERT_EQUAL(r->rc, failed ? 4 : 0);
    if (!failed) {
        fault_baseline_avail++;
        fault_baseline_objects = kc_test_objects("Service");
    }
    if (kc_test_avail_keys() != fault_baseline_avail ||
        kc_test_objects("Service") != fault_baseline_objects)
        fprintf(stderr, "\n  round %u left %d availability keys, %d objects (want %d, %d): %s",
                round, kc_test_avail_keys(), kc_test_objects("Service"), fault_baseline_avail,
                fault_baseline_objects, fault_said);
    CU_ASSERT_EQUAL(kc_test_avail_keys(), fault_baseline_avail);
    CU_ASSERT_EQUAL(kc_test_objects("Service"), fault_baseline_objects);
}

static void test_faults_create(void)
{
    dep_setup();
    fault_baseline_avail = 0;
    fault_baseline_objects = kc_test_objects("Service");
    each_fault(create_step, create_check);
    /* and a clean create still works */
    make_dep("Clean", "VaultA1/KeyA,VaultB1/KeyB", "exchange");
}

static int rewrap_step(unsigned round)
{
    (void)round;
    return kc_test_run("rewrap", "--batch", "4", "--as", "svc", PINS, NULL)->rc;
}

/* Whatever failed: every item reads; a clean run finishes the job. */
static void rewrap_check(unsigned round, int failed)
{
    (void)round;
    (void)failed;
    CU_ASSERT_EQUAL(readable("m", 12, 0), 12);
    ASSERT_RC(kc_test_run("rewrap", "--as", "svc", PINS, NULL), 0);
    CU_ASSERT_STRING_EQUAL(dep_state("Ten"), "Registered 12/12");
    CU_ASSERT_EQUAL(readable("m", 12, 0), 12);
    ASSERT_RC(kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL), 0);
}

static void test_faults_rewrap(void)
{
    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    put_mailboxes("m", 12);
    ASSERT_RC(kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PINS, NULL), 0);
    each_fault(rewrap_step, rewrap_check);
}

/* A DEP with one item, purge requested; the service keeps its access to
 * the vaults for the DEPs still to come. */
static void purge_ready(unsigned round)
{
    char name[32], scope[48];

    snprintf(name, sizeof(name), "P%u", round);
    snprintf(scope, sizeof(scope), "p%u-", round);
    make_dep(name, "VaultA1/KeyA,VaultB1/KeyB", "exchange");
    snprintf(scope, sizeof(scope), "p%u-0", round);
    ASSERT_RC(kc_test_run("dep", "assign", name, "--mailbox", scope, NULL), 0);
    snprintf(scope, sizeof(scope), "p%u-", round);
    put_mailboxes(scope, 1);
    set_service("remove", "VaultA1");
    set_service("remove", "VaultB1");
    ASSERT_RC(kc_test_run("dep", "purge-request", name, "--reason", "r", "--contact", "c", NULL),
              0);
    set_service("set", "VaultA1");
    set_service("set", "VaultB1");
}

static int purge_step(unsigned round)
{
    char name[32];
    const kc_test_out *r;

    snprintf(name, sizeof(name), "P%u", round);
    r = kc_test_run("dep", "purge", name, "--confirm", name, "--pin-source", "Service=env:TEST_PIN",
                    NULL);
    snprintf(fault_said + strlen(fault_said), sizeof(fault_said) - strlen(fault_said),
             "[%s rc %d: %s]", name, r->rc, r->err);
    return r->rc;
}

/* Purged in the store whatever failed once the rows were checked; running
 * it again finishes it: no availability key left, the other data readable.
 * The next DEP is made
 * before objects are counted, since its key-state write is what removes a
 * key-state generation a failed destroy left behind. */
static void purge_check(unsigned round, int failed)
{
    char name[32], scope[48];
    int again;

    snprintf(name, sizeof(name), "P%u", round);
    snprintf(scope, sizeof(scope), "p%u-", round);
    /* the store's rows are checked on the service vault before anything
     * changes: a token call failing there leaves the DEP as it was */
    if (failed && strcmp(dep_state(name), "Purged 0/0") != 0) {
        CU_ASSERT(kc_test_contains(fault_said, "cannot check the service store's rows"));
        CU_ASSERT_EQUAL(readable(scope, 1, KC_DEP_USE_AVAILABILITY), 1);
        CU_ASSERT_EQUAL(purge_step(round), 0);
    }
    CU_ASSERT_EQUAL(readable(scope, 1, KC_DEP_USE_AVAILABILITY), 0);
    CU_ASSERT_STRING_EQUAL(dep_state(name), "Purged 0/0");
    if (failed) {
        again = purge_step(round);
        /* 0, or 5 when the failed run had destroyed it all but said so too late */
        CU_ASSERT(again == 0 || (again == 5 && kc_test_contains(fault_said, "purged already")));
    }
    CU_ASSERT_EQUAL(readable("m", 3, 0), 3);
    purge_ready(round + 1);
    if (kc_test_avail_keys() != 2 || kc_test_objects("Service") != fault_baseline_objects)
        fprintf(stderr, "\n  round %u left %d availability keys, %d objects (want 2, %d): %s",
                round, kc_test_avail_keys(), kc_test_objects("Service"), fault_baseline_objects,
                fault_said);
    fault_said[0] = '\0';
    CU_ASSERT_EQUAL(kc_test_avail_keys(), 2); /* the tenant DEP's and the next one's */
    CU_ASSERT_EQUAL(kc_test_objects("Service"), fault_baseline_objects);
}

static void test_faults_purge(void)
{
    dep_setup();
    make_dep("Ten", "VaultA1/KeyA,VaultB1/KeyB", "tenant");
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    put_mailboxes("m", 3);
    purge_ready(0);
    /* the service vault's objects with two availability keys */
    fault_baseline_objects = kc_test_objects("Service");
    each_fault(purge_step, purge_check);
}

static const kc_test_case dep_cases[] = {
    {"dep create, show, set", test_dep_create},
    {"--json on every read command", test_json_everywhere},
    {"DEP key: A, else B, else availability", test_dep_unwrap_fallback},
    {"dep assign and assignment", test_dep_assign},
    {"dep refresh after a rotation", test_dep_refresh},
    {"data put and get under a DEP", test_data},
    {"policy apply makes and assigns DEPs", test_policy_apply_deps},
    {NULL, NULL},
};

static const kc_test_case lifecycle_cases[] = {
    {"roll, status and rewrap", test_roll_status_rewrap},
    {"rewrap killed with kill -9 resumes", test_rewrap_killed},
    {"a scope that falls behind the walk is moved", test_rewrap_scope_behind},
    {"the data purge path", test_purge},
    {"tenant offboard", test_offboard},
    {"tenant offboard checks first", test_offboard_checks_first},
    {"custodian tokens gone: A only, B only, availability only", test_tokens_gone},
    {NULL, NULL},
};

static const kc_test_case fault_cases[] = {
    {"a token call failing in dep create", test_faults_create},
    {"a token call failing in rewrap", test_faults_rewrap},
    {"a token call failing in dep purge", test_faults_purge},
    {NULL, NULL},
};

static const kc_test_case race_cases[] = {
    {"data put while a rewrap runs", test_put_during_rewrap},
    {"two rewraps at once", test_two_rewraps},
    {"dep purge killed with kill -9", test_purge_killed},
    {"key rotate while dep refresh runs", test_rotate_during_refresh},
    {NULL, NULL},
};

/* A purge on PostgreSQL while another session's transaction, begun
 * before it, still holds a snapshot: VACUUM FULL would copy the old row
 * versions that snapshot may see, wrapped keys and all, into the new
 * files. The purge waits for it to end, then rewrites: no copy is left. */
static void test_purge_waits_for_old_snapshot(void)
{
    unsigned char blobs[8][512];
    size_t lens[8], n;
    const kc_test_out *r;
    char *out = NULL;
    double t;

    CU_ASSERT_FATAL(kc_test_on_pg());
    dep_setup();
    purge_ready(0);
    n = wrapped_copies("P0", blobs, lens, 8);
    CU_ASSERT_FATAL(n > 0);
    /* a reader's statement holding its snapshot for 3 s */
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "psql -X -q -d '%s' -c 'SELECT count(*), pg_sleep(3) FROM "
                               "scopes' > /dev/null 2>&1 & sleep 0.5",
                               kc_test_store()),
                    0);
    t = (double)time(NULL);
    r = kc_test_run("dep", "purge", "P0", "--confirm", "P0", "--pin-source", "Service=env:TEST_PIN",
                    NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT((double)time(NULL) - t >= 1); /* it waited for the reader */
    CU_ASSERT_FALSE(store_holds_any(blobs, lens, n));
    CU_ASSERT_STRING_EQUAL(dep_state("P0"), "Purged 0/0");
}

/* PostgreSQL's alone (test_dep.workers.pg): workers side by side, and
 * what a purge needs of the other sessions */
static const kc_test_case worker_cases[] = {
    {"three rewrap workers, one killed", test_workers_one_killed},
    {"a worker waits for a scope another session holds", test_worker_waits_for_held},
    {"the store's transactions are READ COMMITTED", test_store_read_committed},
    {"a purge waits for an old snapshot", test_purge_waits_for_old_snapshot},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {
    {"dep", 1, dep_cases},        {"races", 1, race_cases},
    {"workers", 1, worker_cases}, {"lifecycle", 1, lifecycle_cases},
    {"faults", 1, fault_cases},   {NULL, 0, NULL}};

int main(int argc, char **argv)
{
    if (freopen("/dev/null", "r", stdin) == NULL)
        return 2;
    return kc_test_main(argc, argv, suites);
}
