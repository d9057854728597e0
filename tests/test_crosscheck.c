/* Cross-checks with tools nobody here wrote: pkcs11-tool (OpenSC), p11tool
 * (GnuTLS) and openssl. PINs reach them through the environment, never argv. */
#include "fixture.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PIN "--pin-source", "env:TEST_PIN"

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

static const kc_test_case cases[] = {
    {"pkcs11-tool lists keys", test_pkcs11_tool_lists_keys},
    {"p11tool lists keys by key id", test_p11tool_lists_keys},
    {"public key matches pkcs11-tool's", test_public_key_matches_pkcs11_tool},
    {"openssl wraps, keycustody unwraps", test_openssl_wraps_keycustody_unwraps},
    {"keycustody wraps, pkcs11-tool decrypts", test_keycustody_wraps_pkcs11_tool_decrypts},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {{"crosscheck", 1, cases}, {NULL, 0, NULL}};

int main(int argc, char **argv)
{
    if (freopen("/dev/null", "r", stdin) == NULL)
        return 2;
    return kc_test_main(argc, argv, suites);
}
