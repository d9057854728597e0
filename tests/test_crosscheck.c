/* Cross-checks with tools nobody here wrote: pkcs11-tool (OpenSC), p11tool
 * (GnuTLS) and openssl. PINs reach them through the environment, never argv.
 * And a module that cannot hold a vault: NSS softokn. */
#include "fixture.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PIN "--pin-source", "env:TEST_PIN"
#define SOPIN "--so-pin-source", "env:TEST_SO_PIN"

static char version[80];
static char kid[800];

/* A vault with one HSM key (wrapKey, unwrapKey, decrypt); remembers its
 * version and key id. */
static void setup_key(const char *ops)
{
    const kc_test_out *r;
    json_t *j, *v;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", ops);
    r = kc_test_run("key", "show", "VaultA1/Key001", "--json", PIN, NULL);
    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    v = json_array_get(json_object_get(j, "versions"), 0);
    snprintf(version, sizeof(version), "%s", json_string_value(json_object_get(v, "version")));
    snprintf(kid, sizeof(kid), "%s", json_string_value(json_object_get(v, "kid")));
    json_decref(j);
}

static void test_pkcs11_tool_lists_keys(void)
{
    char *out = NULL, want[512];

    setup_key(NULL);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --token-label VaultA1 --login "
                               "--pin env:TEST_PIN --list-objects",
                               KC_SOFTHSM_MODULE),
                    0);
    snprintf(want, sizeof(want),
             "Private Key Object; RSA \n  label:      Key001\n  ID:         %s\n"
             "  Usage:      unwrap\n  Access:     sensitive, always sensitive, "
             "extractable, local",
             version);
    ASSERT_HAS(out, want);
    snprintf(want, sizeof(want),
             "Public Key Object; RSA 2048 bits\n  label:      Key001\n"
             "  ID:         %s\n  Usage:      wrap\n  Access:     local",
             version);
    ASSERT_HAS(out, want);
    /* the vault metadata, and nothing else of ours */
    ASSERT_HAS(out, "label:          'keycustody-vault'\n  application:    'keycustody'");
}

static void test_p11tool_lists_keys(void)
{
    char *out = NULL;

    setup_key(NULL);
    /* The key id keycustody prints is a URI p11tool resolves to both halves. */
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "GNUTLS_PIN=\"$TEST_PIN\" p11tool --provider '%s' --login "
                               "--list-all '%s'",
                               KC_SOFTHSM_MODULE, kid),
                    0);
    ASSERT_HAS(out, "Type: Public key (RSA-2048)");
    ASSERT_HAS(out, "Type: Private key (RSA-2048)");
    ASSERT_HAS(out, "Flags: CKA_WRAP/UNWRAP; CKA_PRIVATE; CKA_EXTRACTABLE; CKA_SENSITIVE;");
    ASSERT_HAS(out, "object=Key001;type=private");
    ASSERT_HAS(out, "Label: Key001");
}

static void test_public_key_matches_pkcs11_tool(void)
{
    char *out = NULL, cmd[2048];
    const kc_test_out *r;

    setup_key(NULL);
    r = kc_test_run("key", "export-public", "VaultA1/Key001", "--out", kc_test_path("kc.pem"),
                    NULL);
    ASSERT_RC(r, 0);
    snprintf(cmd, sizeof(cmd),
             "pkcs11-tool --module '%s' --token-label VaultA1 --read-object "
             "--type pubkey --id %s -o '%s/p11.der' && openssl pkey -pubin "
             "-inform DER -in '%s/p11.der' -out '%s/p11.pem' && cmp '%s/p11.pem' "
             "'%s/kc.pem'",
             KC_SOFTHSM_MODULE, version, kc_test_dir(), kc_test_dir(), kc_test_dir(), kc_test_dir(),
             kc_test_dir());
    CU_ASSERT_EQUAL(kc_test_sh(&out, "%s", cmd), 0);
    if (strlen(out) > 0)
        fprintf(stderr, "\n  %s\n", out);
    CU_ASSERT_EQUAL(
        kc_test_sh(&out, "openssl pkey -pubin -in '%s/kc.pem' -noout -text", kc_test_dir()), 0);
    ASSERT_HAS(out, "Public-Key: (2048 bit)");
    ASSERT_HAS(out, "Exponent: 65537 (0x10001)");
}

/* OpenSSL wraps with the exported public key; keycustody unwraps on the token. */
static void test_openssl_wraps_keycustody_unwraps(void)
{
    const kc_test_out *r;
    char *out = NULL;
    unsigned char *a, *b;
    size_t na, nb;
    char in[1100], outp[1100];

    setup_key(NULL);
    r = kc_test_run("key", "export-public", "VaultA1/Key001", "--out", kc_test_path("pub.pem"),
                    NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "cd '%s' && openssl rand -out dek 32 && openssl "
                                     "pkeyutl -encrypt -pubin -inkey pub.pem -in dek -out "
                                     "dek.oaep -pkeyopt rsa_padding_mode:oaep -pkeyopt "
                                     "rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1",
                                     kc_test_dir()),
                          0);
    snprintf(in, sizeof(in), "%s", kc_test_path("dek.oaep"));
    snprintf(outp, sizeof(outp), "%s", kc_test_path("dek.out"));
    r = kc_test_run("key", "unwrap", "VaultA1/Key001", "--in", in, "--out", outp, "--alg",
                    "RSA-OAEP", PIN, NULL);
    ASSERT_RC(r, 0);
    a = kc_test_read(kc_test_path("dek"), &na);
    b = kc_test_read(kc_test_path("dek.out"), &nb);
    CU_ASSERT_EQUAL(na, 32);
    CU_ASSERT_TRUE(na == nb && memcmp(a, b, na) == 0);
    free(a);
    free(b);
}

/* keycustody wraps; pkcs11-tool's own RSA-OAEP decryption gets the secret back. */
static void test_keycustody_wraps_pkcs11_tool_decrypts(void)
{
    const kc_test_out *r;
    char *out = NULL;
    char in[1100], w[1100];

    setup_key("wrapKey,unwrapKey,decrypt");
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out, "openssl rand -out '%s/dek' 48", kc_test_dir()), 0);
    snprintf(in, sizeof(in), "%s", kc_test_path("dek"));
    snprintf(w, sizeof(w), "%s", kc_test_path("dek.raw"));
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", in, "--out", w, "--raw", NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --token-label VaultA1 --login "
                               "--pin env:TEST_PIN --decrypt -m RSA-PKCS-OAEP "
                               "--hash-algorithm SHA-1 --mgf MGF1-SHA1 --id %s -i '%s' -o "
                               "'%s/dek.p11' && cmp '%s/dek' '%s/dek.p11'",
                               KC_SOFTHSM_MODULE, version, w, kc_test_dir(), kc_test_dir(),
                               kc_test_dir()),
                    0);
}

/* --- module check: what SoftHSM answers, against what others see --- */

static json_t *module_check(int with_pin)
{
    const kc_test_out *r = with_pin ? kc_test_run("module", "check", "VaultA1", "--json",
                                                  "--pin-source", "VaultA1=env:TEST_PIN", NULL)
                                    : kc_test_run("module", "check", "VaultA1", "--json", NULL);
    json_t *j;

    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    return j;
}

/* The SoftHSM 2.6.1 behaviour keycustody's code relies on, as the probe
 * finds it; a SoftHSM that changed would fail here first. */
static void test_module_check_softhsm_facts(void)
{
    json_t *j;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    j = module_check(1);
    CU_ASSERT_TRUE(json_is_true(json_object_get(j, "logged_in")));
    /* backups and BYOK: CKM_AES_KEY_WRAP_PAD is RFC 5649 (kc_p11_crypto.c) */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "aes_key_wrap.rfc5649"), "yes");
    ASSERT_HAS(kc_test_fact_detail(j, "aes_key_wrap.rfc5649"), "CKM_AES_KEY_WRAP_PAD (0x210a) is RFC 5649");
    /* SoftHSM::WrapKeySym pads a key to 8 bytes with zeros before RFC 5649 */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "aes_key_wrap.exact_length"), "no");
    /* the root key template (kc_p11_obj.c) and the domain's trusted keys */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "wrap_with_trusted.accepted"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "wrap_with_trusted.enforced"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "trusted.user_refused"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "trusted.supported"), "unknown");
    /* documents are written as generations (kc_gendoc.h) */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "data.mutable"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "data.public"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "data.private"), "yes");
    /* OAEP: SHA-1 only (kc_p11_crypto.c params_refused) */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "rsa_oaep.sha1"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "rsa_oaep.sha256"), "no");
    ASSERT_HAS(kc_test_fact_detail(j, "rsa_oaep.sha256"), "CKR_ARGUMENTS_BAD");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "unwrap.readable_template"), "yes");
    /* its SO PIN is the one vault init gave (kc_tok_init_token) */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "so_pin.own"), "yes");
    /* CKA_COPYABLE=FALSE stops a copy with new usages (kc_p11_obj.c) */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "attr.copyable"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "copy.usage_locked"), "yes");
    ASSERT_HAS(kc_test_fact_detail(j, "copy.usage_locked"), "CKR_ACTION_PROHIBITED");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "vault"), "works");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "hsm keys"), "works");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "wrap/unwrap RSA-OAEP SHA-1"), "works");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "wrap/unwrap RSA-OAEP SHA-256"), "not possible");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "DEPs"), "works differently");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "audit seal"), "works");
    json_decref(j);
}

/* The mechanisms as pkcs11-tool lists them: as many, and the same sizes. */
static void test_module_check_mechanisms_match_pkcs11_tool(void)
{
    char *out = NULL, line[160];
    json_t *j, *m;
    size_t i, n;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    j = module_check(0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --token-label VaultA1 -M 2>/dev/null | "
                               "grep -c '^  '",
                               KC_SOFTHSM_MODULE),
                    0);
    n = (size_t)atoi(out);
    CU_ASSERT(n > 10);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "mechanisms")), n);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --token-label VaultA1 -M 2>/dev/null | "
                               "grep '^  RSA-PKCS-OAEP,'",
                               KC_SOFTHSM_MODULE),
                    0);
    json_array_foreach(json_object_get(j, "mechanisms"), i, m)
    {
        if (strcmp(json_string_value(json_object_get(m, "name")), "CKM_RSA_PKCS_OAEP") != 0)
            continue;
        snprintf(line, sizeof(line), "keySize={%lld,%lld}",
                 (long long)json_integer_value(json_object_get(m, "min_bits")),
                 (long long)json_integer_value(json_object_get(m, "max_bits")));
        ASSERT_HAS(out, line);
        ASSERT_HAS(json_string_value(json_object_get(m, "flags")), "wrap,unwrap");
    }
    json_decref(j);
}

/* The probe works on session objects: the token is as it was, and without
 * a PIN what needs one is not asked. */
static void test_module_check_changes_nothing(void)
{
    char *out = NULL, before[16384];
    const kc_test_out *r;
    json_t *j;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "pkcs11-tool --module '%s' --token-label VaultA1 --login "
                                     "--pin env:TEST_PIN -O 2>/dev/null",
                                     KC_SOFTHSM_MODULE),
                          0);
    snprintf(before, sizeof(before), "%s", out);
    j = module_check(1);
    json_decref(j);
    j = module_check(0);
    CU_ASSERT_FALSE(json_is_true(json_object_get(j, "logged_in")));
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "data.private"), "unknown");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "vault"), "not asked");
    json_decref(j);
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "pkcs11-tool --module '%s' --token-label VaultA1 --login "
                                     "--pin env:TEST_PIN -O 2>/dev/null",
                                     KC_SOFTHSM_MODULE),
                          0);
    CU_ASSERT_STRING_EQUAL(out, before);
    r = kc_test_run("module", "check", "NoSuchVault", NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "NoSuchVault");
    r = kc_test_run("module", "check", "VaultA1", "VaultB1", NULL);
    ASSERT_RC(r, 2);
}

static void test_module_list(void)
{
    const kc_test_out *r;
    char real[4096], shown[4096], *out = NULL;
    json_t *j, *t;
    size_t i;
    int seen = 0;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    r = kc_test_run("module", "list", "--json", NULL);
    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_EQUAL_FATAL(json_array_size(j), 1);
    /* the module file as p11-kit's registry names it (links resolved) */
    CU_ASSERT_PTR_NOT_NULL_FATAL(realpath(KC_SOFTHSM_MODULE, real));
    CU_ASSERT_PTR_NOT_NULL_FATAL(realpath(json_string_value(json_object_get(
                                              json_array_get(j, 0), "path")),
                                          shown));
    CU_ASSERT_STRING_EQUAL(shown, real);
    ASSERT_HAS(json_string_value(json_object_get(json_array_get(j, 0), "description")),
               "PKCS11");
    json_array_foreach(json_object_get(json_array_get(j, 0), "tokens"), i, t)
        seen |= strcmp(json_string_value(json_object_get(t, "label")), "VaultA1") == 0;
    CU_ASSERT_TRUE(seen);
    json_decref(j);
    r = kc_test_run("module", "list", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "  - VaultA1 ");
    /* --module takes a registered module's p11-kit name too (Debian's
     * softhsm2 package registers it as 'softhsm2'), and then loads it as
     * the registry configures it */
    r = kc_test_run("module", "list", "--module", "softhsm2", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "(p11-kit: softhsm2)");
    ASSERT_HAS(r->out, "  - VaultA1 ");
    ASSERT_RC(kc_test_run("vault", "show", "VaultA1", "--module", "softhsm2", NULL), 0);
    r = kc_test_run("module", "list", "--module", "no-such-module", NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "no PKCS#11 module named 'no-such-module' is registered with p11-kit");
    /* one module named three ways (its file, a link to it, its p11-kit
     * name) is loaded once: each token shows once */
    CU_ASSERT_PTR_NOT_NULL_FATAL(realpath(KC_SOFTHSM_MODULE, real));
    r = kc_test_run("vault", "list", "--module", "VaultA1=softhsm2", "--module", real,
                    "--module", KC_SOFTHSM_MODULE, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "VaultA1 ");
    CU_ASSERT_PTR_NULL(strstr(strstr(r->out, "VaultA1 ") + 1, "VaultA1 "));
    /* a module file others could change would choose the code that gets
     * the PINs; so would a module file naming it */
    CU_ASSERT_EQUAL(kc_test_sh(&out, "cp '%s' '%s/copy.so' && chmod 0666 '%s/copy.so'", real,
                               kc_test_dir(), kc_test_dir()),
                    0);
    snprintf(shown, sizeof(shown), "%.3000s/copy.so", kc_test_dir());
    r = kc_test_run("module", "list", "--module", shown, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "PKCS#11 module '");
    ASSERT_HAS(r->err, "can be changed by others than you and root");
    snprintf(shown, sizeof(shown), "module: %.3000s/copy.so\n", kc_test_dir());
    kc_test_write(kc_test_path("copy.module"), shown, strlen(shown), 0644);
    r = kc_test_run("module", "list", "--module", kc_test_path("copy.module"), NULL);
    ASSERT_RC(r, 6);
    snprintf(shown, sizeof(shown), "module: %.3000s\nremote: unix:path=/nowhere\n", real);
    kc_test_write(kc_test_path("both.module"), shown, strlen(shown), 0644);
    r = kc_test_run("module", "list", "--module", kc_test_path("both.module"), NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "names both a module and a remote server");
    /* every registered module: p11-kit's trust module has a read-only
     * token, which is listed as what it is, not as an error */
    unsetenv("KEYCUSTODY_MODULE");
    r = kc_test_run("vault", "list", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "VaultA1 ");
    ASSERT_HAS(r->out, "System Trust ");
    ASSERT_HAS(r->out, "write-protected token: not a vault\n");
    CU_ASSERT_PTR_NULL(strstr(r->out, "C_OpenSession"));
}

/* --- NSS softokn: a module that cannot hold a vault --- */

#define NSS_FREE "NSS Certificate DB" /* its key database's token, free until a PIN is set */

/* What keycustody relies on of NSS 3.87's softokn (Debian 12), as the
 * probe finds it on its free key-database token. */
static void test_nss_facts(void)
{
    const char *file = kc_test_nss_module();
    const kc_test_out *r = kc_test_run("module", "check", NSS_FREE, "--module", file, "--json",
                                       NULL);
    json_t *j;

    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    /* no token CKO_DATA objects, so no vault */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "data.token"), "no");
    ASSERT_HAS(kc_test_fact_detail(j, "data.token"), "CKR_ATTRIBUTE_VALUE_INVALID");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "vault"), "not possible");
    /* RFC 5649 is CKM_AES_KEY_WRAP_KWP there, not _PAD (checked against OpenSSL) */
    ASSERT_HAS(kc_test_fact_detail(j, "aes_key_wrap.rfc5649"), "CKM_AES_KEY_WRAP_KWP (0x210b)");
    /* CKA_WRAP_WITH_TRUSTED taken and not enforced; CKA_TRUSTED for anyone;
     * CKA_COPYABLE=FALSE taken and a copy with new usages made anyway */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "wrap_with_trusted.accepted"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "wrap_with_trusted.enforced"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "trusted.user_refused"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "attr.copyable"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "copy.usage_locked"), "no");
    json_decref(j);
    /* the token is still free: the probe object went with the probe */
    r = kc_test_run("module", "list", "--module", file, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "  - (free)                   serial 0000000000000000: not initialised");
}

/* vault init refuses it before anything is made; the module file is what
 * makes softokn start at all. */
static void test_nss_vault_refused(void)
{
    const char *file = kc_test_nss_module();
    const kc_test_out *r;
    char *out = NULL;

    r = kc_test_run("vault", "init", "VaultN1", "--subscription", "s", "--region", "westus",
                    "--module", file, SOPIN, PIN, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "cannot hold a vault: data.token: the module does not keep token CKO_DATA "
                       "objects (CKR_ATTRIBUTE_VALUE_INVALID); nothing was made on token '(free)'");
    r = kc_test_run("module", "list", "--module", file, NULL);
    ASSERT_HAS(r->out, "  - (free) ");
    CU_ASSERT_PTR_NULL(strstr(r->out, "VaultN1"));
    /* and its key database holds no object */
    CU_ASSERT_EQUAL(kc_test_sh(&out, "sqlite3 '%s/key4.db' 'SELECT COUNT(*) FROM nssPrivate'",
                               kc_test_path("nssdb")),
                    0);
    CU_ASSERT_STRING_EQUAL(out, "0\n");
    /* without its options softokn does not start; the hint says what to give */
    r = kc_test_run("module", "list", "--module", KC_SOFTOKN_MODULE, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "C_Initialize: ");
    ASSERT_HAS(r->err, "(CKR_ARGUMENTS_BAD, 0x7)");
    ASSERT_HAS(r->err, "--module FILE.module");
    /* a module file others can write would choose the code that gets the PINs */
    CU_ASSERT_EQUAL(chmod(file, 0666), 0);
    r = kc_test_run("module", "list", "--module", file, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "can be changed by others than you and root");
}

static const kc_test_case nss_cases[] = {
    {"the NSS softokn facts keycustody relies on", test_nss_facts},
    {"vault init refuses it before anything is made", test_nss_vault_refused},
    {NULL, NULL},
};

/* --- tpm2-pkcs11 over swtpm: no secret keys, no public data objects --- */

/* What keycustody relies on of tpm2-pkcs11 1.9, as the probe finds it on
 * its free token: no CKM_GENERIC_SECRET_KEY_GEN (and no C_GenerateKey at
 * all), no key wrap; RSA and EC key pairs there are. */
static void test_tpm2_facts(void)
{
    const char *module = kc_test_tpm2_start();
    const kc_test_out *r = kc_test_run("module", "check", "--module", module, "--json", NULL);
    json_t *j;

    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "mech.generic_keygen"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "mech.rsa_keygen"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "mech.aes_cbc_pad_wrap"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "vault"), "not possible");
    ASSERT_HAS(kc_test_feature_why(j, "vault"), "mech.generic_keygen");
    /* a session on the free token makes nothing: not taken as a refusal */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "data.public"), "unknown");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "trusted.user_refused"), "unknown");
    json_decref(j);
    kc_test_tpm2_stop();
}

/* vault init refuses it before C_InitToken: the token stays free. */
static void test_tpm2_vault_refused(void)
{
    const char *module = kc_test_tpm2_start();
    const kc_test_out *r;

    r = kc_test_run("vault", "init", "VaultT1", "--subscription", "s", "--region", "westus",
                    "--module", module, SOPIN, PIN, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "cannot hold a vault: mech.generic_keygen: generic secrets (not listed); "
                       "nothing was made on token '(free)'");
    r = kc_test_run("module", "list", "--module", module, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "1 token\n");
    ASSERT_HAS(r->out, "  - (free) ");
    kc_test_tpm2_stop();
}

static const kc_test_case tpm2_cases[] = {
    {"the tpm2-pkcs11 facts keycustody relies on", test_tpm2_facts},
    {"vault init refuses it before anything is made", test_tpm2_vault_refused},
    {NULL, NULL},
};

static const kc_test_case module_cases[] = {
    {"the SoftHSM facts keycustody relies on", test_module_check_softhsm_facts},
    {"mechanisms as pkcs11-tool lists them", test_module_check_mechanisms_match_pkcs11_tool},
    {"the probe changes nothing", test_module_check_changes_nothing},
    {"module list", test_module_list},
    {NULL, NULL},
};

static const kc_test_case cases[] = {
    {"pkcs11-tool lists keys", test_pkcs11_tool_lists_keys},
    {"p11tool lists keys by key id", test_p11tool_lists_keys},
    {"public key matches pkcs11-tool's", test_public_key_matches_pkcs11_tool},
    {"openssl wraps, keycustody unwraps", test_openssl_wraps_keycustody_unwraps},
    {"keycustody wraps, pkcs11-tool decrypts", test_keycustody_wraps_pkcs11_tool_decrypts},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {
    {"crosscheck", 1, cases}, {"module", 1, module_cases}, {"nss", 1, nss_cases},
    {"tpm2", 1, tpm2_cases}, {NULL, 0, NULL}};

int main(int argc, char **argv)
{
    int rc;

    if (freopen("/dev/null", "r", stdin) == NULL)
        return 2;
    rc = kc_test_main(argc, argv, suites);
    kc_test_tpm2_stop(); /* whatever became of a tpm2 test */
    return rc;
}
