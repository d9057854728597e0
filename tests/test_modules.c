/* keycustody on a PKCS#11 implementation other than SoftHSM: openCryptoki
 * 3.8.1's soft token, its daemon run by scripts/opencryptoki.sh with slots
 * of this program's own (slots 0 and 1 initialised, slot 2 free). The
 * behaviour of the module that keycustody's choices rest on, as the probe
 * finds it and as pkcs11-tool sees it, and what keycustody does where the
 * module lacks what it needs. Needs root (pkcsslotd, /var/lib/opencryptoki). */
#include "fixture.h"

#include <jansson.h>

#include <openssl/rand.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define OCK_MODULE "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so"
#define OCK_SCRIPT KC_SOURCE_DIR "/scripts/opencryptoki.sh"

static char ock_dir[64];

/* 8 random digits: the soft token takes PINs of 4 to 8 characters */
static void ock_pin(const char *var)
{
    unsigned char r[8];
    char pin[9];
    size_t i;

    if (RAND_bytes(r, sizeof(r)) != 1)
        abort();
    for (i = 0; i < 8; i++)
        pin[i] = (char)('0' + r[i] % 10);
    pin[8] = '\0';
    setenv(var, pin, 1);
}

static int ock(const char *what)
{
    char cmd[512];

    snprintf(cmd, sizeof(cmd), "OCK_INIT_SLOTS='0 1' '%s' %s '%s' >>'%s/script.log' 2>&1",
             OCK_SCRIPT, what, ock_dir, ock_dir);
    return system(cmd);
}

static void ock_stop(void)
{
    if (ock_dir[0] != '\0' && ock("wipe") == 0 && getenv("KC_TEST_KEEP") == NULL) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", ock_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", ock_dir);
    }
}

/* The commands of a test reach the module by --module and find the user
 * PIN of slot 0's token (ock0) in OCK_USER_PIN. */
static const kc_test_out *ock_run_check(int with_pin)
{
    return with_pin ? kc_test_run("module", "check", "ock0", "--module", OCK_MODULE, "--json",
                                  "--pin-source", "ock0=env:OCK_USER_PIN", NULL)
                    : kc_test_run("module", "check", "ock0", "--module", OCK_MODULE, "--json",
                                  NULL);
}

/* The openCryptoki 3.8.1 soft token as keycustody meets it (measured here;
 * the README's support matrix comes from these answers). */
static void test_ock_facts(void)
{
    const kc_test_out *r = ock_run_check(1);
    json_t *j;

    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_TRUE(json_is_true(json_object_get(j, "logged_in")));
    /* no EC at all: no vault key to sign a manifest */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "mech.ec_keygen"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "mech.ecdsa"), "no");
    /* no AES key wrap of any kind; AES-CBC-PAD wraps and unwraps */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "aes_key_wrap.rfc5649"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "mech.aes_cbc_pad_wrap"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "mech.aes_gcm"), "no");
    /* the trusted-key arrangement does not exist there */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "wrap_with_trusted.accepted"), "no");
    ASSERT_HAS(kc_test_fact_detail(j, "wrap_with_trusted.accepted"), "CKR_ATTRIBUTE_TYPE_INVALID");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "trusted.supported"), "no");
    ASSERT_HAS(kc_test_fact_detail(j, "trusted.supported"), "CKR_TEMPLATE_INCONSISTENT");
    /* an unwrap template may not ask for a readable key; what it unwraps is */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "unwrap.readable_template"), "no");
    ASSERT_HAS(kc_test_fact_detail(j, "unwrap.readable_template"), "CKR_ATTRIBUTE_READ_ONLY");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "unwrap.value_readable"), "yes");
    /* data objects, private ones too, and their values can change */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "data.public"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "data.private"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "data.mutable"), "yes");
    /* OAEP with SHA-1 and SHA-256, both against OpenSSL */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "rsa_oaep.sha1"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "rsa_oaep.sha256"), "yes");
    /* templates keycustody leaves these out of there */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "attr.copyable"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "attr.unwrap_template"), "no");
    /* the vault key signs with RSA-PSS */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "mech.rsa_pss"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "vault"), "works differently");
    ASSERT_HAS(kc_test_feature_why(j, "vault"), "RSA-3072 signing with PSS");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "hsm keys"), "works differently");
    ASSERT_HAS(kc_test_feature_why(j, "hsm keys"), "non-extractable, so never backed up");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "wrap/unwrap RSA-OAEP SHA-256"), "works");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "backup/restore"), "works differently");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "BYOK"), "not possible");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "audit seal"), "works");
    json_decref(j);
}

/* What the probe lists is what pkcs11-tool lists, and every token reports
 * serial "123" (so keycustody tells them apart by label, never serial). */
static void test_ock_as_pkcs11_tool_sees_it(void)
{
    const kc_test_out *r = ock_run_check(0);
    char *out = NULL;
    json_t *j;

    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --slot 0 -M 2>/dev/null | grep -c '^  '",
                               OCK_MODULE),
                    0);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "mechanisms")), (size_t)atoi(out));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "serial")), "123");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "data.private"), "unknown");
    json_decref(j);
    r = kc_test_run("module", "list", "--module", OCK_MODULE, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "  - ock0                     serial 123");
    ASSERT_HAS(r->out, "  - ock1                     serial 123");
    ASSERT_HAS(r->out, "  - (free)                   serial 123: not initialised");
    /* a bare file name is looked for in p11-kit's module directory */
    r = kc_test_run("module", "list", "--module", "libopencryptoki.so", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "  - ock0 ");
}

/* vault init on the free token: the factory SO PIN is changed to the one
 * given and no flag is left asking for a change; the vault key is RSA, and
 * an hsm key is made non-extractable, as pkcs11-tool sees it. BYOK is
 * refused before the file is read. */
static void test_ock_vault_and_hsm_key(void)
{
    const kc_test_out *r;
    char *out = NULL;

    r = kc_test_run("vault", "init", "VaultO1", "--subscription", "s", "--region", "westus",
                    "--module", OCK_MODULE, "--so-pin-source", "env:OCK_NEW_SO_PIN",
                    "--pin-source", "env:OCK_USER_PIN", NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' -L 2>/dev/null | "
                               "sed -n '/^Slot 2 /,$p' | grep -E 'token (state|flags)'",
                               OCK_MODULE),
                    0);
    ASSERT_HAS(out, "token initialized");
    CU_ASSERT_PTR_NULL(strstr(out, "change"));
    /* the SO logs in with the new PIN, not the factory one */
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --slot 2 --login --login-type so "
                               "--so-pin env:OCK_NEW_SO_PIN --session-rw -O >/dev/null 2>&1; "
                               "echo so=$?; OCK_FACTORY=87654321 pkcs11-tool --module '%s' "
                               "--slot 2 --login --login-type so --so-pin env:OCK_FACTORY "
                               "--session-rw -O >/dev/null 2>&1; echo factory=$?",
                               OCK_MODULE,
                               OCK_MODULE),
                    0);
    ASSERT_HAS(out, "so=0");
    ASSERT_HAS(out, "factory=1"); /* the factory PIN no longer opens it */
    r = kc_test_run("key", "create", "VaultO1/RootO", "--size", "3072", "--module", OCK_MODULE,
                    "--pin-source", "VaultO1=env:OCK_USER_PIN", NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("key", "show", "VaultO1/RootO", "--module", OCK_MODULE, "--pin-source",
                    "VaultO1=env:OCK_USER_PIN", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "hsm (private key sensitive and not extractable: it never leaves the token)");
    ASSERT_HAS(r->out, "type:         RSA-3072");
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --slot 2 --login --pin env:OCK_USER_PIN "
                               "-O --type privkey 2>/dev/null | grep -A8 'label: *RootO'",
                               OCK_MODULE),
                    0);
    ASSERT_HAS(out, "never extractable");
    kc_test_write(kc_test_path("empty.byok"), "", 0, 0600);
    r = kc_test_run("key", "import", "VaultO1/Byok", "--byok", kc_test_path("empty.byok"), "--module", OCK_MODULE,
                    "--pin-source", "VaultO1=env:OCK_USER_PIN", NULL);
    CU_ASSERT_NOT_EQUAL(r->rc, 0);
    ASSERT_HAS(r->err, "no RFC 5649 AES key unwrap");
    /* the audit log sealed on this module verifies through it */
    r = kc_test_run("audit", "verify", "--audit", kc_test_path("audit.jsonl"), "--module",
                    OCK_MODULE, "--pin-source", "VaultO1=env:OCK_USER_PIN", NULL);
    ASSERT_RC(r, 0);
    unlink(kc_test_path("audit.jsonl")); /* the fixture's own check sees SoftHSM only */
}

/* --- the README's support matrix --- */

#define MATRIX_BEGIN "<!-- support matrix: made by test_modules, do not edit -->\n"
#define MATRIX_END "<!-- end of support matrix -->\n"

static void cell(char *out, size_t cap, json_t *check, const char *feature)
{
    json_t *f;
    size_t i;

    snprintf(out, cap, "?");
    json_array_foreach(json_object_get(check, "features"), i, f)
    {
        const char *why = json_string_value(json_object_get(f, "why"));
        if (strcmp(json_string_value(json_object_get(f, "feature")), feature) != 0)
            continue;
        snprintf(out, cap, "%s%s%s", json_string_value(json_object_get(f, "support")),
                 why != NULL && why[0] ? ": " : "", why != NULL ? why : "");
    }
}

/* The matrix from 'module check' on both modules, with the PIN. */
static char *matrix(json_t *softhsm, json_t *ock_j)
{
    static char m[16384];
    size_t off = 0, i;
    json_t *f;
    char a[400], b[400];

    off += (size_t)snprintf(m + off, sizeof(m) - off,
                            "%s| feature | SoftHSM 2.6.1 | openCryptoki 3.8.1 soft token |\n"
                            "|---|---|---|\n",
                            MATRIX_BEGIN);
    json_array_foreach(json_object_get(softhsm, "features"), i, f)
    {
        const char *name = json_string_value(json_object_get(f, "feature"));
        cell(a, sizeof(a), softhsm, name);
        cell(b, sizeof(b), ock_j, name);
        off += (size_t)snprintf(m + off, sizeof(m) - off, "| %s | %s | %s |\n", name, a, b);
    }
    snprintf(m + off, sizeof(m) - off, "%s", MATRIX_END);
    return m;
}

/* The README's matrix is the one module check gives today: a change in a
 * module or in keycustody's judgement shows here first. On a difference,
 * the matrix to paste is in support-matrix.md in the build directory. */
static void test_readme_support_matrix(void)
{
    const kc_test_out *r;
    json_t *soft, *o;
    char *readme, *at, *want;
    size_t len;
    FILE *f;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    r = kc_test_run("module", "check", "VaultA1", "--json", "--pin-source", "VaultA1=env:TEST_PIN",
                    NULL);
    ASSERT_RC(r, 0);
    soft = json_loads(r->out, 0, NULL);
    r = ock_run_check(1);
    ASSERT_RC(r, 0);
    o = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(soft);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    want = matrix(soft, o);
    f = fopen("support-matrix.md", "w");
    if (f != NULL) {
        fputs(want, f);
        fclose(f);
    }
    readme = (char *)kc_test_read(KC_SOURCE_DIR "/README.md", &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(readme);
    at = strstr(readme, MATRIX_BEGIN);
    CU_ASSERT_PTR_NOT_NULL(at);
    if (at != NULL && strncmp(at, want, strlen(want)) != 0)
        fprintf(stderr, "\n  the README's support matrix differs from module check's:\n%s", want);
    CU_ASSERT(at != NULL && strncmp(at, want, strlen(want)) == 0);
    free(readme);
    json_decref(soft);
    json_decref(o);
}

static const kc_test_case ock_cases[] = {
    {"the openCryptoki facts keycustody relies on", test_ock_facts},
    {"as pkcs11-tool sees it", test_ock_as_pkcs11_tool_sees_it},
    {"a vault and an hsm key on the free token", test_ock_vault_and_hsm_key},
    {"the README's support matrix", test_readme_support_matrix},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {{"opencryptoki", 1, ock_cases}, {NULL, 0, NULL}};

int main(int argc, char **argv)
{
    pid_t child;
    int rc, status = 0;

    if (geteuid() != 0) {
        fprintf(stderr, "test_modules: openCryptoki's daemon needs root (pkcsslotd, "
                        "/var/lib/opencryptoki); run make check as root\n");
        return 1;
    }
    snprintf(ock_dir, sizeof(ock_dir), "/tmp/keycustody-ock-XXXXXX");
    if (mkdtemp(ock_dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    ock_pin("OCK_SO_PIN");
    ock_pin("OCK_USER_PIN");
    ock_pin("OCK_NEW_SO_PIN");
    if (ock("start") != 0 || ock("init") != 0) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "cat '%s/script.log' >&2", ock_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "no log\n");
        ock_stop();
        return 1;
    }
    /* the suite in a child, so that the daemon is stopped whatever becomes
     * of it (an abort under ASan, a crash) */
    fflush(NULL);
    child = fork();
    if (child == 0)
        _exit(kc_test_main(argc, argv, suites));
    rc = 1;
    if (child > 0 && waitpid(child, &status, 0) == child)
        rc = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    ock_stop();
    return rc;
}
