/* libkeycustody's public interface (include/keycustody/keycustody.h),
 * called as a program linked with libkeycustody.so calls it. The vaults are
 * made with the command, in-process. */
#include "fixture.h"
#include "keycustody/keycustody.h"

#include <stdlib.h>
#include <string.h>

struct seen {
    char text[4096];
    int calls, stop_at;
};

static int on_vault(void *arg, const keycustody_vault_info *v)
{
    struct seen *s = arg;
    size_t n = strlen(s->text);

    snprintf(s->text + n, sizeof(s->text) - n, "%s|%d|%s|%s|%s|%zu\n", v->token_label, v->is_vault,
             v->name, v->subscription, v->region, strlen(v->fingerprint));
    return ++s->calls == s->stop_at ? 42 : 0;
}

static int on_key(void *arg, const keycustody_key_info *k)
{
    struct seen *s = arg;
    size_t n = strlen(s->text);

    snprintf(s->text + n, sizeof(s->text) - n, "%s/%s/%s %u %s %d %d %s\n", k->vault, k->name,
             k->version, k->bits, k->ops, k->enabled, k->current, k->expires[0] ? k->expires : "-");
    return ++s->calls == s->stop_at ? 7 : 0;
}

static keycustody *open_api(const char *principal, const char *source, int want)
{
    const char *module = KC_SOFTHSM_MODULE;
    keycustody_config cfg;
    keycustody *kc = NULL;

    memset(&cfg, 0, sizeof(cfg));
    cfg.size = sizeof(cfg);
    cfg.modules = &module;
    cfg.nmodules = 1;
    cfg.pin_sources = &source;
    cfg.npin_sources = source != NULL;
    cfg.principal = principal;
    CU_ASSERT_EQUAL(keycustody_open(&cfg, &kc), want);
    CU_ASSERT_PTR_NOT_NULL_FATAL(kc);
    return kc;
}

/* The version of the key's current version, as 'key show --json' gives it. */
static char *current_version(const char *ref)
{
    const kc_test_out *r =
        kc_test_run("key", "show", ref, "--json", "--pin-source", "env:TEST_PIN", NULL);
    const char *at;
    char *v;

    ASSERT_RC(r, 0);
    at = strstr(r->out, "\"version\": \"");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    v = strndup(at + 12, 32);
    return v;
}

static void test_api(void)
{
    struct seen s;
    keycustody *kc;
    char *pem = NULL, want[256], *v1;
    const kc_test_out *r;

    kc_test_vault("VaultA1", "sub-a", "westus");
    kc_test_key("VaultA1/KeyA", "wrapKey,unwrapKey");
    v1 = current_version("VaultA1/KeyA");
    CU_ASSERT_STRING_EQUAL(keycustody_version(), KC_VERSION_STRING);

    /* tokens and vaults, with no PIN at all */
    kc = open_api(NULL, NULL, 0);
    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(keycustody_vault_foreach(kc, on_vault, &s), 0);
    ASSERT_HAS(s.text, "VaultA1|1|VaultA1|sub-a|westus|64\n");
    /* a callback's non-zero stops the walk and is returned */
    memset(&s, 0, sizeof(s));
    s.stop_at = 1;
    CU_ASSERT_EQUAL(keycustody_vault_foreach(kc, on_vault, &s), 42);
    CU_ASSERT_EQUAL(s.calls, 1);
    /* keys need the vault's PIN source */
    CU_ASSERT_EQUAL(keycustody_key_foreach(kc, "VaultA1", on_key, &s), KEYCUSTODY_E_USAGE);
    ASSERT_HAS(keycustody_errmsg(kc), "no PIN source for vault 'VaultA1'");
    ASSERT_HAS(keycustody_errhint(kc), "VaultA1=env:NAME");
    keycustody_close(kc);

    kc = open_api(NULL, "VaultA1=env:TEST_PIN", 0);
    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(keycustody_key_foreach(kc, "VaultA1", on_key, &s), 0);
    CU_ASSERT_STRING_EQUAL(keycustody_errmsg(kc), "");
    snprintf(want, sizeof(want), "VaultA1/KeyA/%s 2048 wrapKey,unwrapKey 1 1 -\n", v1);
    CU_ASSERT_STRING_EQUAL(s.text, want);
    /* after a rotation: two versions, the new one current */
    ASSERT_RC(kc_test_run("key", "rotate", "VaultA1/KeyA", "--pin-source", "env:TEST_PIN", NULL),
              0);
    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(keycustody_key_foreach(kc, "VaultA1", on_key, &s), 0);
    CU_ASSERT_EQUAL(s.calls, 2);
    ASSERT_HAS(s.text, " 1 0 -\n");
    ASSERT_HAS(s.text, " 1 1 -\n");
    /* the public key is the one the command exports */
    CU_ASSERT_EQUAL(keycustody_public_key(kc, "VaultA1/KeyA", &pem), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pem);
    r = kc_test_run("key", "export-public", "VaultA1/KeyA", "--out", "-", NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_STRING_EQUAL(pem, r->out);
    keycustody_free(pem);
    snprintf(want, sizeof(want), "VaultA1/KeyA/%s", v1);
    CU_ASSERT_EQUAL(keycustody_public_key(kc, want, &pem), 0);
    CU_ASSERT(pem != NULL && strncmp(pem, "-----BEGIN PUBLIC KEY-----\n", 27) == 0);
    keycustody_free(pem);
    /* a public key needs no PIN */
    {
        keycustody *nopin = open_api(NULL, NULL, 0);
        CU_ASSERT_EQUAL(keycustody_public_key(nopin, "VaultA1/KeyA", &pem), 0);
        keycustody_free(pem);
        keycustody_close(nopin);
    }
    /* what is not there */
    CU_ASSERT_EQUAL(keycustody_key_foreach(kc, "Nope1", on_key, &s), KEYCUSTODY_E_NOT_FOUND);
    ASSERT_HAS(keycustody_errmsg(kc), "Nope1");
    CU_ASSERT_EQUAL(keycustody_public_key(kc, "VaultA1/Missing", &pem), KEYCUSTODY_E_NOT_FOUND);
    CU_ASSERT_PTR_NULL(pem);
    CU_ASSERT_EQUAL(keycustody_public_key(kc, "not a ref", &pem), KEYCUSTODY_E_USAGE);
    keycustody_close(kc);

    /* a wrong PIN is the token's refusal */
    setenv("API_BAD_PIN", "00000000", 1);
    kc = open_api(NULL, "env:API_BAD_PIN", 0);
    CU_ASSERT_EQUAL(keycustody_key_foreach(kc, "VaultA1", on_key, &s), KEYCUSTODY_E_DENIED);
    ASSERT_HAS(keycustody_errmsg(kc), "CKR_PIN_INCORRECT");
    keycustody_close(kc);
    free(v1);
}

/* The vault's access policy holds for the library's principal too. */
static void test_api_access(void)
{
    struct seen s;
    keycustody *kc;
    char *pem = NULL;

    kc_test_vault("VaultA1", "sub-a", "westus");
    kc_test_key("VaultA1/KeyA", "wrapKey,unwrapKey");
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "svc", "--permissions", "get",
                          "--so-pin-source", "env:TEST_SO_PIN", "--pin-source", "env:TEST_PIN",
                          NULL),
              0);
    kc = open_api("svc", "env:TEST_PIN", 0);
    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(keycustody_key_foreach(kc, "VaultA1", on_key, &s), KEYCUSTODY_E_DENIED);
    ASSERT_HAS(keycustody_errmsg(kc), "principal 'svc' lacks 'list'");
    CU_ASSERT_EQUAL(s.calls, 0);
    CU_ASSERT_EQUAL(keycustody_public_key(kc, "VaultA1/KeyA", &pem), 0);
    keycustody_free(pem);
    keycustody_close(kc);
    kc = open_api(NULL, "env:TEST_PIN", 0);
    CU_ASSERT_EQUAL(keycustody_key_foreach(kc, "VaultA1", on_key, &s), KEYCUSTODY_E_DENIED);
    ASSERT_HAS(keycustody_errhint(kc), "keycustody_config.principal");
    CU_ASSERT_PTR_NULL(strstr(keycustody_errhint(kc), "--as"));
    keycustody_close(kc);
}

/* What keycustody_open refuses, each with a message on the handle. */
static void test_api_open(void)
{
    const char *sources[] = {"env:A", "env:B"};
    keycustody_config cfg;
    keycustody *kc;

    kc = open_api(NULL, "12345678", KEYCUSTODY_E_USAGE); /* a PIN is never a value */
    ASSERT_HAS(keycustody_errmsg(kc), "is not [VAULT=]env:NAME or [VAULT=]file:PATH");
    CU_ASSERT_NOT_EQUAL(keycustody_errmsg(kc)[0], '\0');
    CU_ASSERT(strstr(keycustody_errmsg(kc), "12345678") == NULL);
    /* a handle that did not open refuses every call */
    CU_ASSERT_EQUAL(keycustody_vault_foreach(kc, on_vault, NULL), KEYCUSTODY_E_USAGE);
    keycustody_close(kc);
    kc = open_api(NULL, "VaultA1=secret", KEYCUSTODY_E_USAGE);
    keycustody_close(kc);
    memset(&cfg, 0, sizeof(cfg));
    cfg.size = sizeof(cfg);
    cfg.pin_sources = sources;
    cfg.npin_sources = 2;
    {
        const char *module = "/nonexistent/libnothing.so";
        cfg.modules = &module;
        cfg.nmodules = 1;
        cfg.npin_sources = 1;
        CU_ASSERT_NOT_EQUAL(keycustody_open(&cfg, &kc), 0);
        CU_ASSERT_PTR_NOT_NULL_FATAL(kc);
        ASSERT_HAS(keycustody_errmsg(kc), "/nonexistent/libnothing.so");
        keycustody_close(kc);
    }
    /* two bare sources: which vault each is for is not guessed */
    {
        const char *module = KC_SOFTHSM_MODULE;
        cfg.modules = &module;
        cfg.npin_sources = 2;
        CU_ASSERT_EQUAL(keycustody_open(&cfg, &kc), KEYCUSTODY_E_USAGE);
        ASSERT_HAS(keycustody_errmsg(kc), "several PIN sources without a vault name");
        keycustody_close(kc);
    }
    /* a vault bound to a module is the command's, not the library's */
    {
        const char *module = "VaultA1=" KC_SOFTHSM_MODULE;
        memset(&cfg, 0, sizeof(cfg));
        cfg.size = sizeof(cfg);
        cfg.modules = &module;
        cfg.nmodules = 1;
        CU_ASSERT_EQUAL(keycustody_open(&cfg, &kc), KEYCUSTODY_E_USAGE);
        ASSERT_HAS(keycustody_errmsg(kc), "binds a vault (VAULT=MODULE)");
        keycustody_close(kc);
    }
    /* a config of no size (compiled against nothing this library knows) */
    memset(&cfg, 0, sizeof(cfg));
    CU_ASSERT_EQUAL(keycustody_open(&cfg, &kc), KEYCUSTODY_E_USAGE);
    ASSERT_HAS(keycustody_errmsg(kc), "config.size");
    keycustody_close(kc);
    CU_ASSERT_EQUAL(keycustody_open(&cfg, NULL), KEYCUSTODY_E_USAGE);
    keycustody_close(NULL);
    CU_ASSERT_STRING_EQUAL(keycustody_errmsg(NULL), "out of memory");
}

static const kc_test_case api_cases[] = {
    {"vaults, keys and public keys", test_api},
    {"the access policy", test_api_access},
    {"what open refuses", test_api_open},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {{"api", 1, api_cases}, {NULL, 0, NULL}};

int main(int argc, char **argv)
{
    return kc_test_main(argc, argv, suites);
}
