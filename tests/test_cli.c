/* The command line, run in-process: exit codes and the messages users see. */
#include "fixture.h"
#include "cli.h"
#include "kc_p11.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PIN "--pin-source", "env:TEST_PIN"
#define SOPIN "--so-pin-source", "env:TEST_SO_PIN"

#define parse kc_test_json

static mode_t file_mode(const char *path)
{
    struct stat st;

    CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
    return st.st_mode & 07777;
}

/* --- vault --- */

static void test_vault_init_show_list(void)
{
    const kc_test_out *r;
    json_t *j, *t;
    size_t i;
    int found = 0;

    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "contoso-a", "--region", "westus",
                    "--retention-days", "30", "--purge-protection", SOPIN, PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "initialised vault 'VaultA1': subscription 'contoso-a', region 'westus', "
                       "premium, soft delete 30 days, purge protection on");
    ASSERT_HAS(r->out, "token: pkcs11:model=SoftHSM%20v2;");

    r = kc_test_run("vault", "show", "VaultA1", "--json", NULL);
    ASSERT_RC(r, 0);
    j = parse(r->out);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "subscription")), "contoso-a");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "region")), "westus");
    CU_ASSERT_EQUAL(
        json_integer_value(json_object_get(json_object_get(j, "soft_delete"), "retention_days")),
        30);
    CU_ASSERT_TRUE(json_is_true(json_object_get(j, "purge_protection")));
    json_decref(j);

    r = kc_test_run("vault", "show", "VaultA1", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "purge protection:  on");

    r = kc_test_run("vault", "list", "--json", NULL);
    ASSERT_RC(r, 0);
    j = parse(r->out);
    json_array_foreach(j, i, t)
    {
        if (json_is_true(json_object_get(t, "vault"))) {
            found++;
            CU_ASSERT_STRING_EQUAL(
                json_string_value(json_object_get(json_object_get(t, "token"), "label")),
                "VaultA1");
        }
    }
    CU_ASSERT_EQUAL(found, 1);
    CU_ASSERT_EQUAL(json_array_size(j), 2); /* the vault and the free token */
    json_decref(j);
    r = kc_test_run("vault", "list", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "free token, not initialised");
}

static void test_vault_init_errors(void)
{
    const kc_test_out *r;

    r = kc_test_run("vault", "init", "VaultA1", "--region", "westus", SOPIN, PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "error: --subscription and --region are required");
    ASSERT_HAS(r->err, "hint: see 'keycustody vault init --help'");
    r = kc_test_run("vault", "init", "V1", "--subscription", "s", "--region", "westus", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "must have 3 to 24");
    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "westus",
                    "--retention-days", "5", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "give a number of days from 7 to 90");
    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "WestUS", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "lower case");
    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "westus",
                    "--sku", "gold", NULL);
    ASSERT_RC(r, 2);
    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "westus",
                    "--json", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "has no --json output");
    /* No PIN source and no terminal (stdin is /dev/null here). */
    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "westus", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "no PIN source for vault 'VaultA1' (new security-officer PIN)");
    /* A PIN typed where a source belongs is refused and not repeated. */
    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "westus",
                    "--so-pin-source", "98765432", PIN, NULL);
    ASSERT_RC(r, 2);
    CU_ASSERT_PTR_NULL(strstr(r->err, "98765432"));
    /* A new user PIN the token will not take. */
    setenv("SHORT_PIN", "abc", 1);
    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "westus", SOPIN,
                    "--pin-source", "env:SHORT_PIN", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "the new user PIN has 3 characters; the token takes 4 to 255");
    /* That attempt initialised the token (C_InitToken ran): a corrected re-run finishes. */
    kc_test_vault("VaultA1", "s", "westus");
    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "westus", SOPIN,
                    PIN, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "error: vault 'VaultA1' is already initialised (subscription 's', "
                       "region 'westus')");
    r = kc_test_run("vault", "init", "VaultB1", "--subscription", "s", "--region", "westus",
                    "--token", "pkcs11:serial=0000000000000000", SOPIN, PIN, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "no free (uninitialised) token matches pkcs11:serial=0000000000000000");
}

static void test_vault_pin_file(void)
{
    const kc_test_out *r;
    char src[1100];
    const char *pin = getenv("TEST_PIN");

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_write(kc_test_path("a1.pin"), pin, strlen(pin), 0644);
    snprintf(src, sizeof(src), "VaultA1=file:%s", kc_test_path("a1.pin"));
    /* a PIN source that cannot serve is exit 2, whatever the reason */
    r = kc_test_run("key", "list", "VaultA1", "--pin-source", src, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "has mode 0644; it must be 0600 or stricter");
    r = kc_test_run("key", "list", "VaultA1", "--pin-source", "file:/nonexistent/a.pin", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "cannot open PIN file '/nonexistent/a.pin'");
    unsetenv("KC_NO_SUCH_PIN");
    r = kc_test_run("key", "list", "VaultA1", "--pin-source", "env:KC_NO_SUCH_PIN", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "environment variable 'KC_NO_SUCH_PIN' is not set");
    CU_ASSERT_EQUAL(chmod(kc_test_path("a1.pin"), 0600), 0);
    r = kc_test_run("key", "list", "VaultA1", "--pin-source", src, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "vault 'VaultA1' has no keys");
    /* a source for another vault does not count */
    r = kc_test_run("key", "list", "VaultA1", "--pin-source", "VaultZ9=env:TEST_PIN", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "no PIN source for vault 'VaultA1'");
    r = kc_test_run("key", "list", "VaultA1", "--pin-source", "env:TEST_PIN", "--pin-source",
                    "env:TEST_PIN", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "several --pin-source options without a vault name");
}

static void test_vault_not_found(void)
{
    const kc_test_out *r;

    kc_test_vault("VaultA1", "s", "westus");
    /* an empty name is no name, not the free token's empty label */
    r = kc_test_run("vault", "show", "", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "an empty name is not a vault's");
    r = kc_test_run("key", "list", "", "--pin-source", "env:TEST_PIN", NULL);
    ASSERT_RC(r, 2);
    r = kc_test_run("vault", "show", "Nope1", NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "error: cannot open vault 'Nope1': no token 'Nope1'; visible tokens: "
                       "'VaultA1', '(not initialised)'");
    r = kc_test_run("vault", "show", "pkcs11:token=VaultA1;pin-value=1234", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "pin-value is refused");
    r = kc_test_run("vault", "show", "pkcs11:token=VaultA1", NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("vault", "show", "--module", "/nonexistent/module.so", "VaultA1", NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "cannot load PKCS#11 module '/nonexistent/module.so'");
}

/* Without --module, p11-kit's registered modules are used (SoftHSM is
 * registered by its Debian package) and SoftHSM still reads SOFTHSM2_CONF. */
static void test_vault_registry_modules(void)
{
    const kc_test_out *r;

    kc_test_vault("VaultA1", "s", "westus");
    unsetenv("KEYCUSTODY_MODULE");
    r = kc_test_run("vault", "show", "VaultA1", NULL);
    setenv("KEYCUSTODY_MODULE", KC_SOFTHSM_MODULE, 1);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "libsofthsm2.so");
}

/* SoftHSM's free token has an empty serial until C_InitToken gives it one,
 * so a free SoftHSM token is selected by model or manufacturer. */
static void test_vault_init_by_token_uri(void)
{
    const kc_test_out *r;

    r = kc_test_run("vault", "init", "VaultT1", "--subscription", "s", "--region", "westus",
                    "--token", "pkcs11:model=Other%20HSM", SOPIN, PIN, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "no free (uninitialised) token matches pkcs11:model=Other%20HSM; visible "
                       "tokens: '(not initialised)'");
    r = kc_test_run("vault", "init", "VaultT1", "--subscription", "s", "--region", "westus",
                    "--token", "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project", SOPIN,
                    PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "initialised vault 'VaultT1'");
    r = kc_test_run("vault", "init", "VaultT1", "--subscription", "s", "--region", "westus",
                    "--token", "pkcs11:model=SoftHSM%20v2", SOPIN, PIN, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "a token labelled 'VaultT1' exists already");
    r = kc_test_run("vault", "init", "VaultT1", "--subscription", "s", "--region", "westus",
                    "--token", "VaultT1", SOPIN, PIN, NULL);
    ASSERT_RC(r, 5);
}

/* C_GetTokenInfo calls of one 'vault list' with n vaults. */
static unsigned token_info_calls(void)
{
    kc_error e;
    unsigned calls;

    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm("C_GetTokenInfo", "CKR_DEVICE_ERROR", 1000000, 0, &e),
                          KC_OK);
    ASSERT_RC(kc_test_run("vault", "list", NULL), 0);
    calls = kc_p11_fault_calls();
    kc_p11_fault_disarm();
    return calls;
}

/* 'vault list' reads each slot's token once, not once per token it opens:
 * its cost grows with the slots, not their square. */
static void test_vault_list_one_pass(void)
{
    char name[16];
    unsigned four = 0, eight;
    int i;

    for (i = 0; i < 8; i++) {
        snprintf(name, sizeof(name), "Vault%02d", i);
        kc_test_vault(name, "s", "westus");
        if (i == 3)
            four = token_info_calls(); /* 4 vaults, 5 slots */
    }
    eight = token_info_calls(); /* 8 vaults, 9 slots */
    fprintf(stderr, "C_GetTokenInfo calls of vault list: %u with 5 slots, %u with 9\n", four,
            eight);
    CU_ASSERT(four <= 5 * 2);
    CU_ASSERT(eight <= 9 * 2);
}

static const kc_test_case vault_cases[] = {
    {"init by token URI", test_vault_init_by_token_uri},
    {"init, show, list", test_vault_init_show_list},
    {"init errors", test_vault_init_errors},
    {"PIN files and sources", test_vault_pin_file},
    {"not found", test_vault_not_found},
    {"registered modules", test_vault_registry_modules},
    {"vault list: one pass over the slots", test_vault_list_one_pass},
    {NULL, NULL},
};

/* --- key --- */

static void test_key_create_show_list(void)
{
    const kc_test_out *r;
    json_t *j, *v;
    char ref[200];

    kc_test_vault("VaultA1", "s", "westus");
    r = kc_test_run("key", "create", "VaultA1/Key001", "--size", "2048", PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "created key 'VaultA1/Key001'");
    ASSERT_HAS(r->out, "protection:   hsm (private key sensitive, never readable in clear; it "
                       "leaves the token only wrapped under a key the token's security "
                       "officer marked trusted)");
    ASSERT_HAS(r->out, "ops:          wrapKey,unwrapKey");
    ASSERT_HAS(r->out, "expires:      never");

    r = kc_test_run("key", "show", "VaultA1/Key001", "--json", PIN, NULL);
    ASSERT_RC(r, 0);
    j = parse(r->out);
    v = json_array_get(json_object_get(j, "versions"), 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(v, "size")), 2048);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(v, "protection")), "hsm");
    CU_ASSERT_TRUE(json_is_true(json_object_get(json_object_get(v, "private_key"), "sensitive")));
    CU_ASSERT_TRUE(json_is_true(json_object_get(json_object_get(v, "private_key"), "local")));
    CU_ASSERT_TRUE(json_is_null(json_object_get(v, "expires")));
    snprintf(ref, sizeof(ref), "VaultA1/Key001/%s",
             json_string_value(json_object_get(v, "version")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(v, "short_id")), ref);
    json_decref(j);

    r = kc_test_run("key", "show", ref, PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "(current)");
    r = kc_test_run("key", "show", "VaultA1/Key001/00112233445566778899aabbccddeeff", PIN, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "key 'VaultA1/Key001' has no version 00112233445566778899aabbccddeeff");

    r = kc_test_run("key", "create", "VaultA1/Key002", "--size", "3072", "--protection", "software",
                    "--ops", "wrapKey,unwrapKey,sign", "--expires", "9999-12-31", PIN, NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("key", "list", "VaultA1", "--json", PIN, NULL);
    ASSERT_RC(r, 0);
    j = parse(r->out);
    CU_ASSERT_EQUAL(json_array_size(j), 2);
    json_decref(j);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "Key002                   1        3072  software   sign,wrapKey,unwrapKey "
                       "9999-12-31");
}

static void test_key_create_errors(void)
{
    const kc_test_out *r;

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    r = kc_test_run("key", "create", "VaultA1/Key001", "--size", "2048", PIN, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "error: cannot create key 'Key001' in vault 'VaultA1': a key with this "
                       "name already exists");
    r = kc_test_run("key", "create", "VaultA1/Key002", "--size", "1024", PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "RSA key size '1024' is not allowed");
    r = kc_test_run("key", "create", "VaultA1/Key002", "--kty", "EC", "--size", "2048", PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "root keys must be RSA");
    ASSERT_HAS(r->err, "wraps and unwraps data keys with RSA-OAEP");
    r = kc_test_run("key", "create", "VaultA1/Key002", PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "--size is required");
    r = kc_test_run("key", "create", "VaultA1/Key002", "--size", "2048", "--ops", "wrap", PIN,
                    NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "unknown key operation 'wrap'");
    r = kc_test_run("key", "create", "VaultA1/Key002", "--size", "2048", "--expires", "2020-01-01",
                    PIN, NULL);
    ASSERT_RC(r, 2);
    r = kc_test_run("key", "create", "VaultA1/Key002/0011", "--size", "2048", PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "without a version");
    r = kc_test_run("key", "create", "NoVault/Key002", "--size", "2048", PIN, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "cannot open vault 'NoVault': no token 'NoVault'");
    setenv("BAD_PIN", "not-the-pin", 1);
    r = kc_test_run("key", "create", "VaultA1/Key002", "--size", "2048", "--pin-source",
                    "env:BAD_PIN", NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "cannot log in to vault 'VaultA1': C_Login: The password or PIN is "
                       "incorrect (CKR_PIN_INCORRECT, 0xa0)");
    ASSERT_HAS(r->err, "CKF_USER_PIN_COUNT_LOW");
    r = kc_test_run("key", "show", "VaultA1/Key002", PIN, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "no key 'Key002' in vault 'VaultA1'");
}

static void test_key_export_public(void)
{
    const kc_test_out *r;
    char *stdout_pem;
    unsigned char *file_pem;
    size_t n;

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    /* No PIN needed: the public key is a public object. */
    r = kc_test_run("key", "export-public", "VaultA1/Key001", NULL);
    ASSERT_RC(r, 0);
    stdout_pem = strdup(r->out);
    ASSERT_HAS(stdout_pem, "-----BEGIN PUBLIC KEY-----");
    r = kc_test_run("key", "export-public", "VaultA1/Key001", "--out", kc_test_path("pub.pem"),
                    NULL);
    ASSERT_RC(r, 0);
    file_pem = kc_test_read(kc_test_path("pub.pem"), &n);
    CU_ASSERT_STRING_EQUAL((char *)file_pem, stdout_pem);
    CU_ASSERT_EQUAL(file_mode(kc_test_path("pub.pem")), 0644);
    r = kc_test_run("key", "export-public", "VaultA1/Key001", "--out", kc_test_path("pub.pem"),
                    NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "already exists; not overwriting it");
    r = kc_test_run("key", "export-public", "VaultA1/Key001", "--out", kc_test_path("pub.pem"),
                    "--force", NULL);
    ASSERT_RC(r, 0);
    free(file_pem);
    free(stdout_pem);
}

/* C_FindObjectsInit calls of one 'key create VaultA1/name'. */
static unsigned create_finds(const char *name)
{
    char ref[64];
    kc_error e;
    unsigned calls;

    snprintf(ref, sizeof(ref), "VaultA1/%s", name);
    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm("C_FindObjectsInit", "CKR_DEVICE_ERROR", 1000000, 0, &e),
                          KC_OK);
    ASSERT_RC(kc_test_run("key", "create", ref, "--size", "2048", PIN, NULL), 0);
    calls = kc_p11_fault_calls();
    kc_p11_fault_disarm();
    return calls;
}

/* SoftHSM reads every object file at each search (SOFTHSM-NOTES,
 * performance), so what a create costs beyond its key generation is its
 * searches times the vault's objects: their number must not grow with the
 * keys the vault holds (none may walk the keys one by one), and stays at
 * most 16 (a create made 32 before the searches were merged: one per
 * document and its commit records, one per key kind, the manifest's keys
 * from its previous signed copy rather than a search of every key). */
static void test_key_create_searches_flat(void)
{
    char name[16];
    unsigned few, many;
    int i;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    for (i = 0; i < 2; i++) {
        snprintf(name, sizeof(name), "Few%02d", i);
        create_finds(name);
    }
    few = create_finds("FewLast");
    for (i = 0; i < 6; i++) {
        snprintf(name, sizeof(name), "Many%02d", i);
        create_finds(name);
    }
    many = create_finds("ManyLast");
    CU_ASSERT_EQUAL(many, few);
    CU_ASSERT(few <= 16);
    if (many != few || few > 16)
        fprintf(stderr, "key create searched %u times at 3 keys, %u at 9\n", few, many);
}

static const kc_test_case key_cases[] = {
    {"create, show, list", test_key_create_show_list},
    {"create errors", test_key_create_errors},
    {"export public", test_key_export_public},
    {"create searches do not grow with the keys", test_key_create_searches_flat},
    {NULL, NULL},
};

/* --- wrap / unwrap --- */

static void secret_file(const char *name, size_t len)
{
    unsigned char buf[128];
    size_t i;

    for (i = 0; i < len; i++)
        buf[i] = (unsigned char)(i * 13 + 5 + (unsigned char)name[0]); /* its own per name */
    kc_test_write(kc_test_path(name), buf, len, 0600);
    kc_test_secret(buf, len);
}

static int same_files(const char *a, const char *b)
{
    size_t na, nb;
    unsigned char *x = kc_test_read(kc_test_path(a), &na), *y = kc_test_read(kc_test_path(b), &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;

    free(x);
    free(y);
    return same;
}

static void test_wrap_unwrap_round_trip(void)
{
    const kc_test_out *r;
    char path_in[1100], path_w[1100], path_out[1100];
    unsigned char *doc;
    size_t n;
    json_t *j;

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    secret_file("dek", 32);
    snprintf(path_in, sizeof(path_in), "%s", kc_test_path("dek"));
    snprintf(path_w, sizeof(path_w), "%s", kc_test_path("dek.json"));
    snprintf(path_out, sizeof(path_out), "%s", kc_test_path("dek.out"));
    /* wrap needs no PIN */
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", path_in, "--out", path_w, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->err, "wrapped 32 bytes with 'VaultA1/Key001/");
    doc = kc_test_read(path_w, &n);
    j = parse((char *)doc);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "alg")), "RSA-OAEP");
    ASSERT_HAS(json_string_value(json_object_get(j, "kid")), "object=Key001");
    json_decref(j);
    free(doc);
    CU_ASSERT_EQUAL(file_mode(path_w), 0600);

    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", path_w, "--out", path_out, PIN,
                    NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_TRUE(same_files("dek", "dek.out"));
    CU_ASSERT_EQUAL(file_mode(path_out), 0600);
    /* an existing output is never replaced without --force */
    kc_test_write(path_out, "keep", 4, 0600);
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", path_w, "--out", path_out, PIN,
                    NULL);
    ASSERT_RC(r, 5);
    doc = kc_test_read(path_out, &n);
    CU_ASSERT_EQUAL(n, 4);
    free(doc);
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", path_w, "--out", path_out, PIN,
                    "--force", NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_TRUE(same_files("dek", "dek.out"));
}

static void test_wrap_errors(void)
{
    const kc_test_out *r;
    char in[1100], w[1100], out[1100], raw[1100];

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    kc_test_key("VaultA1/Key002", NULL);
    kc_test_key("VaultA1/WrapOnly", "wrapKey");
    secret_file("dek", 32);
    secret_file("short", 8);
    secret_file("long", 65);
    snprintf(in, sizeof(in), "%s", kc_test_path("dek"));
    snprintf(w, sizeof(w), "%s", kc_test_path("w.json"));
    snprintf(raw, sizeof(raw), "%s", kc_test_path("w.raw"));
    snprintf(out, sizeof(out), "%s", kc_test_path("out"));

    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", kc_test_path("short"), "--out", w,
                    NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "the secret is 8 bytes; wrap takes 16 to 64 bytes");
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", kc_test_path("long"), "--out", w,
                    NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "holds 65 bytes; at most 64 are accepted");
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", kc_test_path("missing"), "--out", w,
                    NULL);
    ASSERT_RC(r, 4);
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", in, NULL);
    ASSERT_RC(r, 2);
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", in, "--out", w, "--alg",
                    "RSA-OAEP-256", NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "CKR_ARGUMENTS_BAD");
    ASSERT_HAS(r->err, "does not take RSA-OAEP-256");
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", in, "--out", w, "--alg", "RSA1_5",
                    NULL);
    ASSERT_RC(r, 2);

    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", in, "--out", w, NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", in, "--out", raw, "--raw", NULL);
    ASSERT_RC(r, 0);
    /* the JSON names its key: another key is refused before the token is asked */
    r = kc_test_run("key", "unwrap", "VaultA1/Key002", "--in", w, "--out", out, PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "was wrapped by key 'Key001', not 'Key002'");
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", w, "--out", out, "--alg",
                    "RSA-OAEP-256", PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "says RSA-OAEP but --alg says RSA-OAEP-256");
    /* raw ciphertext needs --alg; under the wrong key the token refuses */
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", raw, "--out", out, PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "is raw ciphertext: say which algorithm made it");
    {
        /* one raw ciphertext in 256 begins with '{': it is still raw, not bad JSON */
        unsigned char brace[256];
        char braced[1100];
        memset(brace, 0xd8, sizeof brace);
        brace[0] = '{';
        snprintf(braced, sizeof braced, "%s", kc_test_path("brace.raw"));
        kc_test_write(braced, brace, sizeof brace, 0600);
        r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", braced, "--out", out, PIN, NULL);
        ASSERT_RC(r, 2);
        ASSERT_HAS(r->err, "is raw ciphertext: say which algorithm made it");
    }
    r = kc_test_run("key", "unwrap", "VaultA1/Key002", "--in", raw, "--out", out, "--alg",
                    "RSA-OAEP", PIN, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "C_UnwrapKey");
    CU_ASSERT_NOT_EQUAL(access(out, F_OK), 0); /* nothing written */
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", in, "--out", out, "--alg",
                    "RSA-OAEP", PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "the wrapped value is 32 bytes; RSA-2048 gives 256");
    /* a key without unwrapKey */
    r = kc_test_run("key", "wrap", "VaultA1/WrapOnly", "--in", in, "--out", kc_test_path("wo"),
                    NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("key", "unwrap", "VaultA1/WrapOnly", "--in", kc_test_path("wo"), "--out", out,
                    PIN, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "the key does not allow unwrapKey");
    /* garbage where JSON is expected */
    kc_test_write(kc_test_path("bad.json"), "{\"kid\": 3}", 10, 0600);
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", kc_test_path("bad.json"), "--out",
                    out, PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "is not a wrapped key written by 'key wrap'");
}

static void test_wrap_expired_key(void)
{
    const kc_test_out *r;
    char in[1100];

    kc_test_vault("VaultA1", "s", "westus");
    r = kc_test_run("key", "create", "VaultA1/Key001", "--size", "2048", "--expires", "2040-01-01",
                    PIN, NULL);
    ASSERT_RC(r, 0);
    secret_file("dek", 32);
    snprintf(in, sizeof(in), "%s", kc_test_path("dek"));
    setenv("KEYCUSTODY_NOW", "2040-01-02T00:00:00Z", 1);
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", in, "--out", kc_test_path("w"), NULL);
    unsetenv("KEYCUSTODY_NOW");
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "the key expired on 2040-01-01");
}

static const kc_test_case wrap_cases[] = {
    {"round trip", test_wrap_unwrap_round_trip},
    {"errors", test_wrap_errors},
    {"expired key", test_wrap_expired_key},
    {NULL, NULL},
};

/* --- lifecycle: rotate, update, delete, recover, purge --- */

static void wrap_to(const char *ref, const char *in, const char *out)
{
    const kc_test_out *r = kc_test_run("key", "wrap", ref, "--in", in, "--out", out, NULL);

    ASSERT_RC(r, 0);
}

static int unwraps_to(const char *ref, const char *in, const char *expect)
{
    char out[1100];
    unsigned char *a, *b;
    size_t na, nb;
    int same;

    snprintf(out, sizeof(out), "%s.out", in);
    unlink(out);
    if (kc_test_run("key", "unwrap", ref, "--in", in, "--out", out, PIN, NULL)->rc != 0)
        return 0;
    a = kc_test_read(out, &na);
    b = kc_test_read(expect, &nb);
    same = a && b && na == nb && memcmp(a, b, na) == 0;
    free(a);
    free(b);
    return same;
}

static void test_rotate(void)
{
    const kc_test_out *r;
    char dek[1100], w1[1100], w2[1100];
    json_t *j;

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    secret_file("dek", 32);
    snprintf(dek, sizeof(dek), "%s", kc_test_path("dek"));
    snprintf(w1, sizeof(w1), "%s", kc_test_path("w1.json"));
    snprintf(w2, sizeof(w2), "%s", kc_test_path("w2.json"));
    wrap_to("VaultA1/Key001", dek, w1);
    r = kc_test_run("key", "rotate", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "rotated key 'VaultA1/Key001': version ");
    ASSERT_HAS(r->out, "the 1 older version still unwraps");
    wrap_to("VaultA1/Key001", dek, w2);
    /* old and new ciphertexts both come back, each through its own version */
    CU_ASSERT_TRUE(unwraps_to("VaultA1/Key001", w1, dek));
    CU_ASSERT_TRUE(unwraps_to("VaultA1/Key001", w2, dek));
    r = kc_test_run("key", "show", "VaultA1/Key001", "--json", PIN, NULL);
    ASSERT_RC(r, 0);
    j = parse(r->out);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "versions")), 2);
    CU_ASSERT_TRUE(json_is_true(
        json_object_get(json_array_get(json_object_get(j, "versions"), 1), "current")));
    json_decref(j);
    r = kc_test_run("key", "show", "VaultA1/Key001", "--versions", PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "VERSION ");
    ASSERT_HAS(r->out, " current\n");
    r = kc_test_run("key", "rotate", "VaultA1/Nope", PIN, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "no key 'Nope' in vault 'VaultA1'");
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    ASSERT_HAS(r->out, "Key001                   2 ");
}

static void test_update(void)
{
    const kc_test_out *r;
    char dek[1100], w[1100];

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    secret_file("dek", 32);
    snprintf(dek, sizeof(dek), "%s", kc_test_path("dek"));
    snprintf(w, sizeof(w), "%s", kc_test_path("w.json"));
    wrap_to("VaultA1/Key001", dek, w);
    r = kc_test_run("key", "update", "VaultA1/Key001", "--enabled", "false", "--tag", "owner=alice",
                    "--tag", "cost=42", PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "enabled:      no");
    ASSERT_HAS(r->out, "tag:          owner=alice");
    /* disabled: refused by the token (wrap, no PIN) and by keycustody (unwrap) */
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", dek, "--out", kc_test_path("x"), NULL);
    ASSERT_RC(r, 6);
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", w, "--out", kc_test_path("y"), PIN,
                    NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "is disabled");
    r = kc_test_run("key", "update", "VaultA1/Key001", "--enabled", "true", "--tag", "cost=", PIN,
                    NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_PTR_NULL(strstr(r->out, "cost="));
    CU_ASSERT_TRUE(unwraps_to("VaultA1/Key001", w, dek));
    /* ops: dropping wrapKey makes the token refuse wrap */
    r = kc_test_run("key", "update", "VaultA1/Key001", "--ops", "unwrapKey", PIN, NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", dek, "--out", kc_test_path("x"), NULL);
    ASSERT_RC(r, 6);
    /* expiry: moved, never removed */
    r = kc_test_run("key", "update", "VaultA1/Key001", "--expires", "2040-01-01", PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "expires:      2040-01-01");
    r = kc_test_run("key", "update", "VaultA1/Key001", "--expires", "9999-12-31", PIN, NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("key", "update", "VaultA1/Key001", "--expires", "never", PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "an expiry once set cannot be removed, only moved");
    r = kc_test_run("key", "update", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "nothing to change");
    r = kc_test_run("key", "update", "VaultA1/Key001", "--enabled", "maybe", PIN, NULL);
    ASSERT_RC(r, 2);
    r = kc_test_run("key", "update", "VaultA1/Key001", "--tag", "novalue", PIN, NULL);
    ASSERT_RC(r, 2);
}

static void test_delete_recover_purge(void)
{
    const kc_test_out *r;
    char dek[1100], w[1100], *out = NULL;
    json_t *j;

    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "westus",
                    "--purge-protection", "--retention-registered", SOPIN, PIN, NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("vault", "show", "VaultA1", NULL);
    ASSERT_HAS(r->out, "recovery level:    Recoverable+ProtectedSubscription");
    setenv("KEYCUSTODY_NOW", "2030-01-01T00:00:00Z", 1);
    kc_test_key("VaultA1/Key001", NULL);
    secret_file("dek", 32);
    snprintf(dek, sizeof(dek), "%s", kc_test_path("dek"));
    snprintf(w, sizeof(w), "%s", kc_test_path("w.json"));
    wrap_to("VaultA1/Key001", dek, w);

    r = kc_test_run("key", "delete", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "purge possible from 2030-04-01T00:00:00Z");
    r = kc_test_run("key", "delete", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "it was deleted on 2030-01-01T00:00:00Z already");
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    ASSERT_HAS(r->out, "has no keys");
    r = kc_test_run("key", "list-deleted", "VaultA1", "--json", PIN, NULL);
    ASSERT_RC(r, 0);
    j = parse(r->out);
    CU_ASSERT_STRING_EQUAL(
        json_string_value(
            json_object_get(json_object_get(json_array_get(j, 0), "deleted"), "scheduled_purge")),
        "2030-04-01T00:00:00Z");
    json_decref(j);
    /* unusable, by the tool and on the token itself */
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", w, "--out", kc_test_path("o"), PIN,
                    NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "is deleted");
    /* its public key is not given out either, and without the PIN the
     * message has no dates to give rather than empty ones */
    r = kc_test_run("key", "export-public", "VaultA1/Key001", NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "key 'VaultA1/Key001' is deleted\n");
    CU_ASSERT_STRING_EQUAL(r->out, "");
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --token-label VaultA1 --login "
                               "--pin env:TEST_PIN -O | grep -c 'Usage:      none'",
                               KC_SOFTHSM_MODULE),
                    0);
    CU_ASSERT_EQUAL(atoi(out), 2);
    /* the name stays reserved */
    r = kc_test_run("key", "create", "VaultA1/Key001", "--size", "2048", PIN, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "a deleted key keeps its name until it is purged");
    ASSERT_HAS(r->err, "hint: recover it with 'keycustody key recover VaultA1/Key001', or purge");
    /* purge protection: refused during retention, with the date */
    setenv("KEYCUSTODY_NOW", "2030-03-31T23:59:59Z", 1);
    r = kc_test_run("key", "purge", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "the key can be purged from 2030-04-01T00:00:00Z");
    /* recover brings it back whole */
    r = kc_test_run("key", "recover", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_TRUE(unwraps_to("VaultA1/Key001", w, dek));
    r = kc_test_run("key", "recover", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 5);
    r = kc_test_run("key", "purge", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "only a deleted key can be purged");
    /* after the retention period the purge destroys every object */
    r = kc_test_run("key", "delete", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 0);
    setenv("KEYCUSTODY_NOW", "2030-07-01T00:00:00Z", 1);
    r = kc_test_run("key", "purge", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --token-label VaultA1 --login "
                               "--pin env:TEST_PIN -O | grep -c Key001",
                               KC_SOFTHSM_MODULE),
                    1);
    CU_ASSERT_EQUAL(atoi(out), 0);
    r = kc_test_run("key", "create", "VaultA1/Key001", "--size", "2048", PIN, NULL);
    ASSERT_RC(r, 0);
    unsetenv("KEYCUSTODY_NOW");
}

static void test_purge_without_protection(void)
{
    const kc_test_out *r;

    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "westus",
                    "--retention-days", "7", SOPIN, PIN, NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("vault", "show", "VaultA1", "--json", NULL);
    ASSERT_HAS(r->out, "\"recovery_level\": \"CustomizedRecoverable+Purgeable\"");
    kc_test_key("VaultA1/Key001", NULL);
    r = kc_test_run("key", "delete", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("key", "purge", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "purged key 'VaultA1/Key001'");
}

static void test_recovery_levels(void)
{
    static const struct {
        const char *days, *pp, *reg, *want;
    } cases[] = {
        {"90", NULL, NULL, "Recoverable+Purgeable"},
        {"90", "--purge-protection", NULL, "Recoverable"},
        {"30", "--purge-protection", NULL, "CustomizedRecoverable"},
        {"30", "--purge-protection", "--retention-registered",
         "CustomizedRecoverable+ProtectedSubscription"},
    };
    const kc_test_out *r;
    char name[16], want[100];
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(name, sizeof(name), "Vault%zu", i);
        r = kc_test_run("vault", "init", name, "--subscription", "s", "--region", "westus",
                        "--retention-days", cases[i].days, SOPIN, PIN,
                        cases[i].pp ? cases[i].pp : "--sku", cases[i].pp ? "--sku" : "premium",
                        cases[i].pp ? "premium" : NULL, cases[i].reg, NULL);
        ASSERT_RC(r, 0);
        r = kc_test_run("vault", "show", name, NULL);
        snprintf(want, sizeof(want), "recovery level:    %s\n", cases[i].want);
        ASSERT_HAS(r->out, want);
    }
}

static const kc_test_case lifecycle_cases[] = {
    {"rotate", test_rotate},
    {"update", test_update},
    {"delete, recover, purge over 90 days", test_delete_recover_purge},
    {"purge without protection", test_purge_without_protection},
    {"recovery levels", test_recovery_levels},
    {NULL, NULL},
};

/* --- access policies --- */

static void test_access_policy(void)
{
    const kc_test_out *r;
    json_t *j;

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    r = kc_test_run("access", "show", "VaultA1", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "has no access policy");
    /* no policy: no principal needed */
    ASSERT_RC(kc_test_run("key", "show", "VaultA1/Key001", PIN, NULL), 0);
    r = kc_test_run("access", "set", "VaultA1", "--principal", "admin", "--role", "administrator",
                    PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "granted to principal 'admin' on vault 'VaultA1'; it now holds: "
                       "get,list,create,import,backup,"
                       "restore");
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "officer", "--permissions",
                          "get,delete,recover", PIN, NULL),
              0);
    r = kc_test_run("access", "show", "VaultA1", "--json", NULL);
    j = parse(r->out);
    CU_ASSERT_EQUAL(json_array_size(j), 2);
    json_decref(j);
    /* a policy: who acts must be said, and must hold the permission */
    r = kc_test_run("key", "delete", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "vault 'VaultA1' has an access policy; 'delete' needs a principal");
    r = kc_test_run("key", "delete", "VaultA1/Key001", "--as", "admin", PIN, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "error: principal 'admin' lacks 'delete' on vault 'VaultA1'");
    r = kc_test_run("key", "delete", "VaultA1/Key001", "--as", "nobody", PIN, NULL);
    ASSERT_RC(r, 6);
    setenv("KEYCUSTODY_PRINCIPAL", "officer", 1);
    r = kc_test_run("key", "delete", "VaultA1/Key001", PIN, NULL);
    unsetenv("KEYCUSTODY_PRINCIPAL");
    ASSERT_RC(r, 0);
    ASSERT_RC(kc_test_run("key", "recover", "VaultA1/Key001", "--as", "officer", PIN, NULL), 0);
    /* taking permissions back, and whole entries */
    ASSERT_RC(kc_test_run("access", "remove", "VaultA1", "--principal", "officer", "--permissions",
                          "delete", PIN, NULL),
              0);
    r = kc_test_run("key", "delete", "VaultA1/Key001", "--as", "officer", PIN, NULL);
    ASSERT_RC(r, 6);
    ASSERT_RC(kc_test_run("access", "remove", "VaultA1", "--principal", "officer", PIN, NULL), 0);
    r = kc_test_run("access", "show", "VaultA1", NULL);
    CU_ASSERT_PTR_NULL(strstr(r->out, "officer"));
    r = kc_test_run("access", "remove", "VaultA1", "--principal", "ghost", PIN, NULL);
    ASSERT_RC(r, 4);
    r = kc_test_run("access", "set", "VaultA1", "--principal", "x", PIN, NULL);
    ASSERT_RC(r, 2);
    r = kc_test_run("access", "set", "VaultA1", "--principal", "x", "--role", "service",
                    "--permissions", "get", PIN, NULL);
    ASSERT_RC(r, 2);
    r = kc_test_run("access", "set", "VaultA1", "--principal", "x", "--permissions", "getKey", PIN,
                    NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "unknown key permission 'getKey'");
}

static const kc_test_case access_cases[] = {
    {"set, show, remove, enforce", test_access_policy},
    {NULL, NULL},
};

/* --- injected token failures --- */

static void arm(const char *fn, const char *rv, unsigned nth, int after)
{
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm(fn, rv, nth, after, &e), KC_OK);
}

static void test_fault_generate(void)
{
    const kc_test_out *r;
    int after;

    kc_test_vault("VaultA1", "s", "westus");
    for (after = 0; after <= 1; after++) {
        arm("C_GenerateKeyPair", "CKR_DEVICE_ERROR", 1, after);
        r = kc_test_run("key", "create", "VaultA1/Key001", "--size", "2048", PIN, NULL);
        kc_p11_fault_disarm();
        ASSERT_RC(r, 7);
        ASSERT_HAS(r->err, "error: cannot create key 'Key001' in vault 'VaultA1': cannot create "
                           "RSA-2048 key pair: C_GenerateKeyPair: ");
        ASSERT_HAS(r->err, "(CKR_DEVICE_ERROR, 0x30)");
        r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
        ASSERT_RC(r, 0);
        ASSERT_HAS(r->out, "vault 'VaultA1' has no keys");
    }
    /* a module that does not know CKA_WRAP_WITH_TRUSTED (openCryptoki
     * 3.8.1 answers so: test_modules) cannot give the hsm protection */
    arm("C_GenerateKeyPair", "CKR_ATTRIBUTE_TYPE_INVALID", 1, 0);
    r = kc_test_run("key", "create", "VaultA1/Key001", "--size", "2048", PIN, NULL);
    kc_p11_fault_disarm();
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "hint: the module does not take CKA_WRAP_WITH_TRUSTED, so it cannot keep "
                       "an hsm key extractable only under a trusted key; nothing was made");
    ASSERT_HAS(kc_test_run("key", "list", "VaultA1", PIN, NULL)->out,
               "vault 'VaultA1' has no keys");
    /* and the name is free for a good attempt */
    kc_test_key("VaultA1/Key001", NULL);
}

static void test_fault_login(void)
{
    const kc_test_out *r;

    kc_test_vault("VaultA1", "s", "westus");
    arm("C_Login", "CKR_PIN_INCORRECT", 1, 0);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "C_Login: The password or PIN is incorrect (CKR_PIN_INCORRECT, 0xa0)");
    arm("C_Login", "CKR_PIN_LOCKED", 1, 0);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "(CKR_PIN_LOCKED, 0xa4)");
    ASSERT_HAS(r->err, "hint: the user PIN of 'VaultA1' is locked; its security officer must set "
                       "a new one");
}

static void test_fault_create_object_in_init(void)
{
    const kc_test_out *r;

    /* the first 11 are the session objects of the probes (test_fault_probe_in_init),
     * the 12th asks whether the module takes CKA_COPYABLE for the audit key */
    arm("C_CreateObject", "CKR_DEVICE_MEMORY", 13, 0);
    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "westus", SOPIN,
                    PIN, NULL);
    kc_p11_fault_disarm();
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "error: cannot write the metadata of vault 'VaultA1': cannot sign the "
                       "manifest of vault 'VaultA1': cannot store data object 'keycustody-vault': "
                       "C_CreateObject:");
    r = kc_test_run("vault", "show", "VaultA1", NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "has a vault key but no manifest: 'vault init' did not finish");
    /* running it again finishes the job */
    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "s", "--region", "westus", SOPIN,
                    PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "adopted token as vault 'VaultA1'");
}

/* A call of the arrangement's probe that breaks (not a refusal) must not
 * be taken for the module's answer: had a lost CKA_UNWRAP_TEMPLATE probe
 * counted as "not taken", the vault would keep hsm keys non-extractable
 * for good. Each of the probes' session objects fails once in turn; the
 * command stops, and run again it makes the vault SoftHSM's arrangement. */
static void test_fault_probe_in_init(void)
{
    const kc_test_out *r;
    char name[16];
    unsigned nth;

    for (nth = 1; nth <= 11; nth++) {
        snprintf(name, sizeof(name), "Vault%02u", nth);
        arm("C_CreateObject", nth % 2 ? "CKR_DEVICE_MEMORY" : "CKR_SESSION_HANDLE_INVALID", nth, 0);
        r = kc_test_run("vault", "init", name, "--subscription", "s", "--region", "westus", SOPIN,
                        PIN, NULL);
        kc_p11_fault_disarm();
        ASSERT_RC(r, 7);
        ASSERT_HAS(r->err, "what it can do broke off: C_CreateObject:");
        ASSERT_HAS(r->err, nth % 2 ? "(CKR_DEVICE_MEMORY, 0x31)" : "(CKR_SESSION_HANDLE_INVALID");
        ASSERT_HAS(r->err, "hint: the probe changed nothing on the token; run the command again");
        r = kc_test_run("vault", "show", name, NULL);
        CU_ASSERT_NOT_EQUAL(r->rc, 0);
        r = kc_test_run("vault", "init", name, "--subscription", "s", "--region", "westus", SOPIN,
                        PIN, NULL);
        ASSERT_RC(r, 0);
        r = kc_test_run("vault", "show", name, "--json", NULL);
        ASSERT_RC(r, 0);
        ASSERT_HAS(r->out, "\"signer\": \"ecdsa-p256-sha256\"");
        ASSERT_HAS(r->out, "\"hsm_keys\": \"wrap-with-trusted\"");
        ASSERT_HAS(r->out, "\"key_wrap\": \"CKM_AES_KEY_WRAP_PAD\"");
        ASSERT_HAS(r->out, "\"seal\": \"aes-gcm\"");
    }
    r = kc_test_run("vault", "show", "Vault11", NULL);
    ASSERT_HAS(r->out, "hsm keys:          leave the token only wrapped under the backup domain's "
                       "trusted key\n");
    ASSERT_HAS(r->out, "backup key wrap:   CKM_AES_KEY_WRAP_PAD, sealed with AES-GCM\n");
}

static void test_fault_find_and_list(void)
{
    const kc_test_out *r;

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    /* the first calls read the vault key's public half and the manifest (its
     * generations and its commit record, one search); after login, the 5th
     * and 6th read the private record of the current manifest; from the 7th
     * on, the listing */
    arm("C_FindObjects", "CKR_DEVICE_ERROR", 1, 0);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "error: cannot open vault 'VaultA1': cannot search vault 'VaultA1': "
                       "C_FindObjects: An error occurred on the device (CKR_DEVICE_ERROR, 0x30)");
    arm("C_FindObjects", "CKR_DEVICE_ERROR", 5, 0);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "error: cannot list the keys of vault 'VaultA1': cannot check the manifest "
                       "of vault 'VaultA1': cannot search vault 'VaultA1': C_FindObjects:");
    arm("C_FindObjects", "CKR_DEVICE_ERROR", 7, 0);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "error: cannot list the keys of vault 'VaultA1': cannot search vault "
                       "'VaultA1': C_FindObjects:");
    arm("C_GetSlotList", "CKR_DEVICE_ERROR", 1, 0);
    r = kc_test_run("vault", "list", NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "C_GetSlotList");
    arm("C_InitToken", "CKR_DEVICE_ERROR", 1, 0);
    r = kc_test_run("vault", "init", "VaultA2", "--subscription", "s", "--region", "eastus2", SOPIN,
                    PIN, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "error: cannot initialise vault 'VaultA2': cannot initialise token as "
                       "'VaultA2': C_InitToken:");
    kc_p11_fault_disarm();
    r = kc_test_run("vault", "list", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "free token, not initialised"); /* still free */
}

/* A change whose manifest was committed, but whose private record of that
 * manifest SoftHSM failed to make: exit 7 saying the change was made and
 * why the record is not, and the change is there. */
static void test_fault_current_record(void)
{
    const kc_test_out *r;
    char principal[16];
    unsigned nth;
    int found = 0;

    kc_test_vault("VaultA1", "s", "westus");
    /* which C_CreateObject of an access set makes the record: the one whose
     * failure is reported so (the manifest's objects come before it) */
    for (nth = 1; nth <= 8 && !found; nth++) {
        snprintf(principal, sizeof(principal), "p%u", nth);
        arm("C_CreateObject", "CKR_DEVICE_ERROR", nth, 0);
        r = kc_test_run("access", "set", "VaultA1", "--principal", principal, "--permissions",
                        "get", SOPIN, PIN, NULL);
        kc_p11_fault_disarm();
        if (strstr(r->err, "was written, but not the vault's private record of it") == NULL)
            continue;
        found = 1;
        ASSERT_RC(r, 7);
        ASSERT_HAS(r->err, "private record of it: ");
        ASSERT_HAS(r->err, "C_CreateObject: An error occurred on the device (CKR_DEVICE_ERROR");
        ASSERT_HAS(r->err, "the change was made");
        r = kc_test_run("access", "show", "VaultA1", NULL);
        ASSERT_RC(r, 0);
        ASSERT_HAS(r->out, principal);
    }
    CU_ASSERT_TRUE(found);
    /* the next change goes on from it */
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "after", "--permissions",
                          "get", SOPIN, PIN, NULL),
              0);
    r = kc_test_run("access", "show", "VaultA1", NULL);
    ASSERT_HAS(r->out, "after");
    /* A vault whose record is not found gets one at the login, before any
     * change; when the token will not store it, the command says that and
     * that nothing was changed, never that a manifest was written (a
     * process SoftHSM failed under parallel writers was once counted as a
     * lost change for that) */
    for (nth = 1, found = 0; nth <= 4 && !found; nth++) {
        char *out = NULL;

        snprintf(principal, sizeof(principal), "q%u", nth);
        CU_ASSERT_EQUAL(kc_test_sh(&out,
                                   "pkcs11-tool --module '%s' --token-label VaultA1 --login "
                                   "--pin env:TEST_PIN --delete-object --type data --label "
                                   "keycustody-vault.current",
                                   KC_SOFTHSM_MODULE),
                        0);
        arm("C_CreateObject", "CKR_DEVICE_ERROR", nth, 0);
        r = kc_test_run("access", "set", "VaultA1", "--principal", principal, "--permissions",
                        "get", SOPIN, PIN, NULL);
        kc_p11_fault_disarm();
        if (strstr(r->err, "shows no private record of its manifest") == NULL)
            continue;
        found = 1;
        ASSERT_RC(r, 7);
        ASSERT_HAS(r->err, "and the record of it could not be made; nothing was changed: ");
        ASSERT_HAS(r->err, "(CKR_DEVICE_ERROR");
        CU_ASSERT_PTR_NULL(strstr(r->err, "was written"));
        r = kc_test_run("access", "show", "VaultA1", NULL);
        ASSERT_RC(r, 0);
        CU_ASSERT_PTR_NULL(strstr(r->out, principal));
    }
    CU_ASSERT_TRUE(found);
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "last", "--permissions", "get",
                          SOPIN, PIN, NULL),
              0);
}

/* Every other call on the paths of key create, wrap and unwrap. */
static void test_fault_more_calls(void)
{
    const kc_test_out *r;
    char in[1100], w[1100], out[1100];
    unsigned char dek[32] = {1, 2, 3};

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    kc_test_write(kc_test_path("dek"), dek, sizeof(dek), 0600);
    snprintf(in, sizeof(in), "%s", kc_test_path("dek"));
    snprintf(w, sizeof(w), "%s", kc_test_path("w.json"));
    snprintf(out, sizeof(out), "%s", kc_test_path("out"));

    arm("C_GenerateRandom", "CKR_DEVICE_ERROR", 1, 0);
    r = kc_test_run("key", "create", "VaultA1/Key002", "--size", "2048", PIN, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "error: cannot create key 'Key002' in vault 'VaultA1': cannot draw random "
                       "bytes from 'VaultA1': C_GenerateRandom:");
    arm("C_OpenSession", "CKR_SESSION_COUNT", 1, 0);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "cannot open a session on token 'VaultA1': C_OpenSession:");
    ASSERT_HAS(r->err, "(CKR_SESSION_COUNT, 0xb1)");
    arm("C_CreateObject", "CKR_DEVICE_MEMORY", 1, 0);
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", in, "--out", w, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "cannot load the secret into a session object: C_CreateObject:");
    arm("C_WrapKey", "CKR_DEVICE_REMOVED", 1, 0);
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", in, "--out", w, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "error: cannot wrap with key 'VaultA1/Key001/");
    ASSERT_HAS(r->err, "C_WrapKey:");
    CU_ASSERT_NOT_EQUAL(access(w, F_OK), 0); /* no output on failure */
    kc_p11_fault_disarm();
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", in, "--out", w, NULL);
    ASSERT_RC(r, 0);
    arm("C_UnwrapKey", "CKR_DEVICE_REMOVED", 1, 0);
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", w, "--out", out, PIN, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "C_UnwrapKey: ");
    ASSERT_HAS(r->err, "(CKR_DEVICE_REMOVED, 0x32)");
    CU_ASSERT_NOT_EQUAL(access(out, F_OK), 0);
    kc_p11_fault_disarm();
    /* an output directory that is not there: exit 4, the secret is not written anywhere */
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", w, "--out",
                    kc_test_path("no/such/dir/out"), PIN, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "No such file or directory");
}

/* A token that will not change a usage attribute: keycustody records the
 * change, enforces it itself, and key show says so. */
static void test_fault_token_refuses_attribute(void)
{
    const kc_test_out *r;
    char dek[1100], w[1100], o[1100];

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    secret_file("dek", 32);
    snprintf(dek, sizeof(dek), "%s", kc_test_path("dek"));
    snprintf(w, sizeof(w), "%s", kc_test_path("w"));
    snprintf(o, sizeof(o), "%s", kc_test_path("o"));
    ASSERT_RC(kc_test_run("key", "wrap", "VaultA1/Key001", "--in", dek, "--out", w, NULL), 0);
    /* the public key's change goes through, the private key's is refused */
    arm("C_SetAttributeValue", "CKR_ATTRIBUTE_READ_ONLY", 2, 0);
    r = kc_test_run("key", "update", "VaultA1/Key001", "--enabled", "false", PIN, NULL);
    kc_p11_fault_disarm();
    ASSERT_RC(r, 0);
    r = kc_test_run("key", "show", "VaultA1/Key001", PIN, NULL);
    ASSERT_HAS(r->out, "enabled:      no");
    ASSERT_HAS(r->out, "enforcement:  the token allows unwrapKey; keycustody refuses");
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", w, "--out", o, PIN, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "is disabled");
}

/* A session the module says is gone is replaced once (logged in again
 * where it was), and the command carries on; a token that is gone is
 * reported with the vault named. */
static void test_fault_lost_session(void)
{
    const kc_test_out *r;
    char in[1100], w[1100], out[1100];
    unsigned char dek[32] = {9, 8, 7}, *back;
    size_t len = 0;
    unsigned nth, calls, recovered = 0;

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    kc_test_write(kc_test_path("dek"), dek, sizeof(dek), 0600);
    snprintf(in, sizeof(in), "%s", kc_test_path("dek"));
    snprintf(w, sizeof(w), "%s", kc_test_path("w.json"));
    snprintf(out, sizeof(out), "%s", kc_test_path("out"));
    ASSERT_RC(kc_test_run("key", "wrap", "VaultA1/Key001", "--in", in, "--out", w, NULL), 0);
    /* a search, started again on a new session */
    arm("C_FindObjectsInit", "CKR_SESSION_HANDLE_INVALID", 3, 0);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    kc_p11_fault_disarm();
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "Key001");
    arm("C_FindObjects", "CKR_SESSION_CLOSED", 2, 0);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    kc_p11_fault_disarm();
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "Key001");
    /* a session lost at any search of an unwrap, before or after the login:
     * the new session is logged in again and the search done on it. Where
     * the private key was found before the loss, its handle died with the
     * login (SoftHSM), and the error says so rather than retrying blind. */
    arm("C_FindObjectsInit", "CKR_SESSION_HANDLE_INVALID", 1000, 0);
    ASSERT_RC(kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", w, "--out", out, PIN, NULL),
              0);
    calls = kc_p11_fault_calls();
    kc_p11_fault_disarm();
    CU_ASSERT(calls >= 3);
    for (nth = 1; nth <= calls; nth++) {
        unlink(out);
        arm("C_FindObjectsInit", "CKR_SESSION_HANDLE_INVALID", nth, 0);
        r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", w, "--out", out, PIN, NULL);
        CU_ASSERT(kc_p11_fault_calls() >= nth); /* the failure was met */
        kc_p11_fault_disarm();
        if (r->rc != 0) {
            ASSERT_RC(r, 7);
            ASSERT_HAS(r->err, "the session to 'VaultA1' was lost and replaced during this "
                               "operation");
            continue;
        }
        recovered++;
        back = kc_test_read(out, &len);
        CU_ASSERT(back != NULL && len == sizeof(dek) && memcmp(back, dek, len) == 0);
        free(back);
    }
    /* all but the searches made between finding the key and using it: the
     * key state's two (its generations and its commit record) */
    CU_ASSERT(recovered >= calls - 2);
    /* the token itself gone: reported, vault named */
    arm("C_FindObjectsInit", "CKR_TOKEN_NOT_PRESENT", 3, 0);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    kc_p11_fault_disarm();
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "cannot search vault 'VaultA1'");
    ASSERT_HAS(r->err, "CKR_TOKEN_NOT_PRESENT");
}

static const kc_test_case fault_cases[] = {
    {"a lost session is replaced once", test_fault_lost_session},
    {"a token that refuses an attribute change", test_fault_token_refuses_attribute},
    {"C_GenerateRandom, C_OpenSession, C_WrapKey, C_UnwrapKey", test_fault_more_calls},
    {"C_GenerateKeyPair", test_fault_generate},
    {"C_Login", test_fault_login},
    {"C_CreateObject in vault init", test_fault_create_object_in_init},
    {"a call of the probe breaks in vault init", test_fault_probe_in_init},
    {"C_FindObjects, C_GetSlotList, C_InitToken", test_fault_find_and_list},
    {"the private record of a committed manifest", test_fault_current_record},
    {NULL, NULL},
};

/* --- help and usage --- */

static void test_help(void)
{
    static const char *cmds[][2] = {
        {"vault", "init"},        {"vault", "show"},        {"vault", "list"},
        {"key", "create"},        {"key", "list"},          {"key", "show"},
        {"key", "export-public"}, {"key", "wrap"},          {"key", "unwrap"},
        {"key", "rotate"},        {"key", "update"},        {"key", "delete"},
        {"key", "recover"},       {"key", "purge"},         {"key", "list-deleted"},
        {"key", "backup"},        {"key", "restore"},       {"key", "import"},
        {"subscription", "init"}, {"subscription", "join"}, {"access", "set"},
        {"access", "remove"},     {"access", "show"},       {"policy", "check"},
        {"policy", "plan"},       {"policy", "apply"},      {"dep", "create"},
        {"dep", "list"},          {"dep", "show"},          {"dep", "set"},
        {"dep", "assign"},        {"dep", "assignment"},    {"dep", "refresh"},
        {"dep", "purge-request"}, {"dep", "purge"},         {"data", "put"},
        {"data", "get"},          {"tenant", "offboard"},   {"policy", "graph"},
    };
    const kc_test_out *r;
    char want[100];
    size_t i;

    r = kc_test_run("--help", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "keycustody vault init");
    ASSERT_HAS(r->out, "keycustody key unwrap");
    ASSERT_HAS(r->out, "Exit codes: 0 ok, 1 error, 2 usage");
    for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        r = kc_test_run(cmds[i][0], cmds[i][1], "--help", NULL);
        ASSERT_RC(r, 0);
        snprintf(want, sizeof(want), "usage: keycustody %s %s ", cmds[i][0], cmds[i][1]);
        ASSERT_HAS(r->out, want);
        ASSERT_HAS(r->out, "Common options:");
    }
    r = kc_test_run("vault", "--help", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "init");
    /* commands without a verb */
    r = kc_test_run("status", "--help", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "usage: keycustody status [SCOPE] [--json]");
    ASSERT_HAS(r->out, "Rolling");
    r = kc_test_run("rewrap", "--help", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "usage: keycustody rewrap [--batch N] [--json]");
    r = kc_test_run("rewrap", "--bogus", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "hint: see 'keycustody rewrap --help'");
    r = kc_test_run("--help", NULL);
    ASSERT_HAS(r->out, "keycustody status ");
    ASSERT_HAS(r->out, "keycustody tenant offboard");
    /* help for a command named after it, as git help takes it */
    r = kc_test_run("--help", "vault", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "usage: keycustody vault COMMAND");
    r = kc_test_run("help", "vault", "init", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "usage: keycustody vault init NAME");
    r = kc_test_run("help", "status", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "usage: keycustody status [SCOPE]");
    r = kc_test_run("help", "vault", "nosuch", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "unknown command 'vault nosuch'");
    r = kc_test_run("--version", NULL);
    ASSERT_RC(r, 0);
}

static void test_usage_errors(void)
{
    const kc_test_out *r;

    r = kc_test_run(NULL);
    ASSERT_RC(r, 2);
    r = kc_test_run("vault", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "usage: keycustody vault COMMAND");
    r = kc_test_run("vualt", "list", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "error: unknown command 'vualt'");
    r = kc_test_run("key", "destroy", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "error: unknown command 'key destroy'");
    r = kc_test_run("key", "list", "--bogus", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "error: unknown option '--bogus'");
    ASSERT_HAS(r->err, "hint: see 'keycustody key list --help'");
    r = kc_test_run("key", "list", "VaultA1", "--pin-source", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "option '--pin-source' needs a value");
    r = kc_test_run("key", "list", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "give exactly one vault");
}

/* Whether each line of text (trimmed, blank lines aside) is a line of page. */
static int lines_in(const char *text, size_t len, const char *page, const char *what)
{
    const char *p = text, *end = text + len, *nl;
    char line[512], *at, *q;
    size_t n;
    int ok = 1;

    for (; p < end; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL)
            nl = end;
        while (p < nl && *p == ' ')
            p++;
        n = (size_t)(nl - p);
        while (n > 0 && p[n - 1] == ' ')
            n--;
        if (n == 0)
            continue;
        snprintf(line, sizeof(line), "%.*s", (int)n, p);
        /* a rendered line: the same words, indented, alone on its line */
        for (at = strstr(page, line); at != NULL; at = strstr(at + 1, line)) {
            for (q = at; q > page && q[-1] == ' '; q--)
                ;
            if ((q == page || q[-1] == '\n') && (at[n] == '\n' || at[n] == '\0'))
                break;
        }
        if (at == NULL) {
            fprintf(stderr, "%s: the man page lacks the line '%s'\n", what, line);
            ok = 0;
        }
    }
    return ok;
}

/* A man page rendered as man(1) shows it, wide enough that no line of the
 * help is broken; and rendered again with every groff warning on, which
 * must print none. */
static char *render(const char *page)
{
    char *out;
    int st;

    st = kc_test_sh(&out,
                    "LANG=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l '%s' 2>&1 "
                    ">/dev/null",
                    page);
    CU_ASSERT_EQUAL(st, 0);
    if (out[0] != '\0')
        fprintf(stderr, "man --warnings %s:\n%s\n", page, out);
    CU_ASSERT_STRING_EQUAL(out, "");
    st = kc_test_sh(&out, "LANG=C.UTF-8 MANWIDTH=250 man -E UTF-8 -l '%s' 2>/dev/null", page);
    CU_ASSERT_EQUAL(st, 0);
    return strdup(out);
}

/* The man pages and --help say the same: every line each command's --help
 * prints is a line of its group's page, and the common options and exit
 * codes are in keycustody(1). */
static void test_man(void)
{
    const kc_cmd *const *groups;
    const char *const *summaries;
    size_t ngroups = kc_cli_groups(&groups, &summaries), g, len;
    const kc_test_out *r;
    const kc_cmd *c;
    char path[1024], what[96], *page;
    const char *common;

    snprintf(path, sizeof(path), "%s/keycustody.1", KC_MAN_DIR);
    page = render(path);
    CU_ASSERT(lines_in(kc_cli_common_help(), strlen(kc_cli_common_help()), page, "keycustody(1)"));
    CU_ASSERT(lines_in(kc_cli_exit_help(), strlen(kc_cli_exit_help()), page, "keycustody(1)"));
    for (g = 0; g < ngroups; g++) {
        snprintf(what, sizeof(what), "keycustody-%s(1)", groups[g][0].group);
        CU_ASSERT(kc_test_contains(page, what));
    }
    ASSERT_HAS(page, "ENVIRONMENT");
    ASSERT_HAS(page, "KEYCUSTODY_SERVICE_PIN_SOURCE");
    ASSERT_HAS(page, "FILES");
    free(page);
    for (g = 0; g < ngroups; g++) {
        snprintf(path, sizeof(path), "%s/keycustody-%s.1", KC_MAN_DIR, groups[g][0].group);
        page = render(path);
        ASSERT_HAS(page, "EXIT STATUS");
        ASSERT_HAS(page, "ENVIRONMENT");
        ASSERT_HAS(page, "FILES");
        for (c = groups[g]; c->group != NULL; c++) {
            r = c->verb[0] ? kc_test_run(c->group, c->verb, "--help", NULL)
                           : kc_test_run(c->group, "--help", NULL);
            ASSERT_RC(r, 0);
            common = strstr(r->out, "Common options:");
            CU_ASSERT_PTR_NOT_NULL_FATAL(common);
            len = (size_t)(common - r->out);
            snprintf(what, sizeof(what), "%s %s", c->group, c->verb);
            CU_ASSERT(lines_in(r->out, len, page, what));
        }
        free(page);
    }
    snprintf(path, sizeof(path), "%s/man/keycustody-layout.5", KC_SOURCE_DIR);
    page = render(path);
    ASSERT_HAS(page, "paired_regions_waiver");
    free(page);
}

/* A layout's text never reaches the terminal raw: an escape sequence in a
 * name cannot clear the screen, a newline cannot split a diagnostic. */
static void test_diags_escaped(void)
{
    static const char text[] = "version: 1\nvaults:\n  - name: \"V\\e[2Jx\\nzz\"\n"
                               "    subscription: s\n    region: westus\n    pin: env:X\n";
    const kc_test_out *r;
    const char *p;

    kc_test_write(kc_test_path("esc.yaml"), text, strlen(text), 0644);
    r = kc_test_run("policy", "check", kc_test_path("esc.yaml"), NULL);
    ASSERT_RC(r, 3);
    ASSERT_HAS(r->out, "vault name 'V\\x1b[2Jx\\x0azz'");
    for (p = r->out; *p != '\0'; p++)
        CU_ASSERT(*p == '\n' || ((unsigned char)*p >= 0x20 && *p != 0x7f));
    CU_ASSERT_EQUAL(kc_test_contains(r->out, "\x1b"), 0);
}

/* Common options before the command group, as git and kubectl take them. */
static void test_leading_options(void)
{
    const kc_test_out *r;
    char *after;

    r = kc_test_run("vault", "list", "--module", KC_SOFTHSM_MODULE, "--json", NULL);
    ASSERT_RC(r, 0);
    after = strdup(r->out);
    r = kc_test_run("--module", KC_SOFTHSM_MODULE, "--json", "vault", "list", NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_STRING_EQUAL(r->out, after);
    free(after);
    r = kc_test_run("--module=" KC_SOFTHSM_MODULE, "status", "--help", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "usage: keycustody status");
    /* the same rules as after the command */
    r = kc_test_run("--module", KC_SOFTHSM_MODULE, "vault", "list", "--json", "--json", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "--json is given more than once");
    r = kc_test_run("--json", "key", "create", "VaultA1/K", "--size", "2048", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "'key create' has no --json output");
    /* a command's own option is not a common one */
    r = kc_test_run("--size", "2048", "key", "create", "VaultA1/K", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "option '--size' before the command: only the common options go there");
    r = kc_test_run("--module", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "option '--module' needs a value");
    r = kc_test_run("--json", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "no command after the options");
    r = kc_test_run("--module", KC_SOFTHSM_MODULE, "--version", NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_STRING_EQUAL(r->out, "keycustody " KC_VERSION_STRING "\n");
    r = kc_test_run("--module", KC_SOFTHSM_MODULE, "--help", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "usage: keycustody [COMMON OPTIONS] GROUP COMMAND");
}

/* 'keycustody --commands', which shell completion reads: every command of
 * the top help, with the first operand of its usage and exactly the options
 * its parser takes, '=' after those that need a value. */
static void test_commands_listing(void)
{
    static const char *const common[] = {"module", "pin-source",   "so-pin-source", "as",  "store",
                                         "audit",  "audit-syslog", "json",          "help"};
    char *list, *line, *save = NULL, *word, *wsave, *help;
    char group[32], verb[32], own[1024], name[64];
    const kc_test_out *r;
    size_t k, lines = 0;
    int single;

    r = kc_test_run("--commands", NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_STRING_EQUAL(r->err, "");
    ASSERT_HAS(r->out, "\nvault show NAME|URI --module= ");
    ASSERT_HAS(r->out, "\nkey create VAULT/KEY --size= --kty= --protection= --ops= --expires= ");
    ASSERT_HAS(r->out, "\npolicy check FILE ");
    ASSERT_HAS(r->out, "\nrewrap --batch= ");
    CU_ASSERT_EQUAL(strncmp(r->out, "vault init NAME ", 16), 0);
    list = strdup(r->out);
    CU_ASSERT_PTR_NOT_NULL_FATAL(list);
    for (line = strtok_r(list, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        lines++;
        wsave = NULL;
        word = strtok_r(line, " ", &wsave);
        snprintf(group, sizeof(group), "%s", word);
        word = strtok_r(NULL, " ", &wsave);
        single = word == NULL || word[0] < 'a' || word[0] > 'z';
        verb[0] = '\0';
        if (!single) {
            snprintf(verb, sizeof(verb), "%s", word);
            word = strtok_r(NULL, " ", &wsave);
        }
        r = single ? kc_test_run(group, "--help", NULL) : kc_test_run(group, verb, "--help", NULL);
        CU_ASSERT_EQUAL_FATAL(r->rc, 0);
        help = strdup(r->out);
        CU_ASSERT_PTR_NOT_NULL_FATAL(help);
        own[0] = '\0';
        for (; word != NULL; word = strtok_r(NULL, " ", &wsave)) {
            if (strncmp(word, "--", 2) != 0)
                continue; /* the operand */
            snprintf(name, sizeof(name), "%.*s", (int)strcspn(word, "="), word);
            for (k = 0; k < sizeof(common) / sizeof(common[0]); k++)
                if (strcmp(name + 2, common[k]) == 0)
                    break;
            if (k == sizeof(common) / sizeof(common[0]))
                snprintf(own + strlen(own), sizeof(own) - strlen(own), " %s", name);
            /* '=': without its value the option is refused; else it is a flag */
            r = single ? kc_test_run(group, name, word[strlen(name)] ? NULL : "--help", NULL)
                       : kc_test_run(group, verb, name, word[strlen(name)] ? NULL : "--help", NULL);
            if (word[strlen(name)] == '=') {
                ASSERT_RC(r, 2);
                ASSERT_HAS(r->err, "needs a value");
            } else {
                ASSERT_RC(r, 0);
            }
        }
        /* the command's own options are those its --help lists */
        if (own[0] == '\0') {
            CU_ASSERT_PTR_NULL(strstr(help, "This command's options:"));
        } else {
            snprintf(name, sizeof(name), "This command's options:");
            CU_ASSERT_PTR_NOT_NULL_FATAL(strstr(help, name));
            CU_ASSERT_EQUAL(strncmp(strstr(help, name) + strlen(name), own, strlen(own)), 0);
            CU_ASSERT_EQUAL(strstr(help, name)[strlen(name) + strlen(own)], '\n');
        }
        free(help);
    }
    free(list);
    /* as many as the top help lists */
    r = kc_test_run("--help", NULL);
    for (k = 0, line = strstr(r->out, "\n  keycustody "); line != NULL;
         line = strstr(line + 1, "\n  keycustody "))
        k++;
    CU_ASSERT_EQUAL(lines, k);
    CU_ASSERT(lines > 40);
    /* --json only where the command takes it (listed ones pass above) */
    r = kc_test_run("--commands", NULL);
    line = strstr(r->out, "\nkey create ");
    CU_ASSERT_PTR_NOT_NULL_FATAL(line);
    snprintf(own, sizeof(own), "%.*s ", (int)strcspn(line + 1, "\n"), line + 1);
    CU_ASSERT_PTR_NULL(strstr(own, " --json "));
    ASSERT_RC(kc_test_run("key", "create", "--json", "--help", NULL), 2);
}

static const kc_test_case help_cases[] = {
    {"help", test_help},
    {"commands for completion", test_commands_listing},
    {"usage errors", test_usage_errors},
    {"man pages say what --help says", test_man},
    {"common options before the command group", test_leading_options},
    {"layout text escaped in diagnostics", test_diags_escaped},
    {NULL, NULL},
};

/* --- the no-echo prompt, on a real terminal made by script(1) --- */

static void test_prompt(void)
{
    char *out = NULL;
    int rc;

    kc_test_vault("VaultA1", "s", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    /* Typed after the prompt appears, as a person would: the prompt flushes
     * anything typed ahead (TCSAFLUSH). */
    rc = kc_test_sh(&out,
                    "(sleep 1; printf '%%s\\n' \"$TEST_PIN\") | script -qec '%s key list "
                    "VaultA1' /dev/null",
                    KC_BINARY);
    CU_ASSERT_EQUAL(rc, 0);
    ASSERT_HAS(out, "Enter the user PIN for vault 'VaultA1': ");
    ASSERT_HAS(out, "Key001");
    CU_ASSERT_PTR_NULL(strstr(out, getenv("TEST_PIN"))); /* not echoed */
}

static void test_prompt_new_pins_must_match(void)
{
    char *out = NULL;
    int rc;

    rc = kc_test_sh(&out,
                    "(sleep 1; printf 'so-pin-1\\n'; sleep 1; printf 'so-pin-2\\n') | "
                    "script -qec '%s vault init VaultA1 --subscription s --region westus' "
                    "/dev/null; echo \"rc=$?\"",
                    KC_BINARY);
    CU_ASSERT_EQUAL(rc, 0);
    ASSERT_HAS(out, "Enter the new security-officer PIN for vault 'VaultA1': ");
    ASSERT_HAS(out, "Repeat it: ");
    ASSERT_HAS(out, "the two PINs differ");
    CU_ASSERT_PTR_NULL(strstr(out, "so-pin-1"));
}

static const kc_test_case prompt_cases[] = {
    {"user PIN", test_prompt},
    {"new PINs must match", test_prompt_new_pins_must_match},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {
    {"vault", 1, vault_cases},         {"key", 1, key_cases},       {"wrap", 1, wrap_cases},
    {"faults", 1, fault_cases},        {"help", 0, help_cases},     {"prompt", 1, prompt_cases},
    {"lifecycle", 1, lifecycle_cases}, {"access", 1, access_cases}, {NULL, 0, NULL},
};

int main(int argc, char **argv)
{
    /* Never a terminal for in-process runs: PIN prompts must not block. */
    if (freopen("/dev/null", "r", stdin) == NULL)
        return 2;
    return kc_test_main(argc, argv, suites);
}
