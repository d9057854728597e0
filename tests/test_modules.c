/* keycustody on a PKCS#11 implementation other than SoftHSM: openCryptoki
 * 3.8.1's soft token, its daemon run by scripts/opencryptoki.sh with slots
 * of this program's own (slots 0 and 1 initialised, slot 2 free). The
 * behaviour of the module that keycustody's choices rest on, as the probe
 * finds it and as pkcs11-tool sees it, and what keycustody does where the
 * module lacks what it needs. Needs root (pkcsslotd, /var/lib/opencryptoki). */
#include "fixture.h"
#include "kc_p11.h"

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

    /* slots 0, 1 and 3 initialised (ock0, ock1, ock3), slot 2 free */
    snprintf(cmd, sizeof(cmd),
             "OCK_SLOTS='0 1 2 3' OCK_INIT_SLOTS='0 1 3' '%s' %s '%s' >>'%s/script.log' 2>&1",
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
    /* the script changed the factory SO PIN: no flag asks for it */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "so_pin.own"), "yes");
    /* and C_CopyObject gives a copy usages its key was not made with */
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "copy.usage_locked"), "no");
    ASSERT_HAS(kc_test_feature_why(j, "hsm keys"), "the user PIN can copy a key with other usages");
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
    kc_error e;

    /* an init that stops after C_InitToken (C_SetPIN fails) leaves the
     * factory SO PIN and its flag; run again, it changes the PIN first */
    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm("C_SetPIN", "CKR_DEVICE_ERROR", 1, 0, &e), KC_OK);
    r = kc_test_run("vault", "init", "VaultO1", "--subscription", "s", "--region", "westus",
                    "--module", OCK_MODULE, "--so-pin-source", "env:OCK_NEW_SO_PIN",
                    "--pin-source", "env:OCK_USER_PIN", NULL);
    kc_p11_fault_disarm();
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "cannot change the factory SO PIN of 'VaultO1': C_SetPIN:");
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' -L 2>/dev/null | "
                               "sed -n '/^Slot 2 /,$p' | grep -E 'token (label|flags)'",
                               OCK_MODULE),
                    0);
    ASSERT_HAS(out, "VaultO1");
    ASSERT_HAS(out, "SO PIN to be changed");
    r = kc_test_run("module", "check", "VaultO1", "--module", OCK_MODULE, "--json", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "whoever knows it is its SO");
    r = kc_test_run("vault", "init", "VaultO1", "--subscription", "s", "--region", "westus",
                    "--module", OCK_MODULE, "--so-pin-source", "env:OCK_NEW_SO_PIN",
                    "--pin-source", "env:OCK_USER_PIN", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "adopted token as vault 'VaultO1'");
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

/* --- the custody story on two of its vaults --- */

#define OCK_PINS "--pin-source", "ock0=env:OCK_USER_PIN", "--pin-source", "ock1=env:OCK_USER_PIN"
#define OCK_SO "--so-pin-source", "ock0=env:OCK_SO_PIN", "--so-pin-source", "ock1=env:OCK_SO_PIN"


/* OpenSSL's OAEP of dek under pub.pem with md, unwrapped by the key on the
 * module; and the module's wrap of dek under key (the PEM key imp.pem's
 * twin) decrypted by OpenSSL. */
static void oaep_both_ways(const char *key_of_imp, const char *alg, const char *md)
{
    const kc_test_out *r;
    char *out = NULL;
    char wrapped[32], unwrapped[32];

    snprintf(wrapped, sizeof(wrapped), "o.%s", md);
    snprintf(unwrapped, sizeof(unwrapped), "u.%s", md);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "cd '%s' && openssl pkeyutl -encrypt -pubin -inkey pub.pem -pkeyopt "
                               "rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:%s -pkeyopt "
                               "rsa_mgf1_md:%s -in dek -out %s",
                               kc_test_dir(), md, md, wrapped),
                    0);
    r = kc_test_run("key", "unwrap", "ock0/Root2k", "--in", kc_test_path2(wrapped), "--out",
                    kc_test_path2(unwrapped), "--alg", alg, OCK_PINS, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out, "cmp '%s' '%s'", kc_test_path2("dek"), kc_test_path2(unwrapped)), 0);
    snprintf(wrapped, sizeof(wrapped), "w.%s", md);
    r = kc_test_run("key", "wrap", key_of_imp, "--in", kc_test_path2("dek"), "--out", kc_test_path2(wrapped),
                    "--raw", "--alg", alg, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "cd '%s' && openssl pkeyutl -decrypt -inkey imp.pem -pkeyopt "
                               "rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:%s -pkeyopt "
                               "rsa_mgf1_md:%s -in %s | cmp - dek",
                               kc_test_dir(), md, md, wrapped),
                    0);
}

/* Slots 0 and 1 (ock0, ock1, initialised by the script) adopted as two
 * vaults of one subscription: a backup domain over both; an hsm key of
 * 2048 bits; OAEP with SHA-1 and SHA-256 both ways against OpenSSL; rotate,
 * update, delete, recover, purge; a PEM import; a software key backed up on
 * one (AES-CBC-PAD, as the backup says) and restored on the other, where an
 * hsm key's backup is refused; and the audit log. */
static void test_ock_custody_story(void)
{
    const kc_test_out *r;
    char *out = NULL;
    unsigned char *doc;
    size_t len;
    int k;

    setenv("KEYCUSTODY_MODULE", OCK_MODULE, 1);
    r = kc_test_run("vault", "init", "ock0", "--subscription", "ock-sub", "--region", "westus",
                    OCK_PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "adopted token as vault 'ock0'");
    ASSERT_RC(kc_test_run("vault", "init", "ock1", "--subscription", "ock-sub", "--region",
                          "eastus", OCK_PINS, NULL),
              0);
    r = kc_test_run("vault", "show", "ock0", NULL);
    ASSERT_HAS(r->out, "vault key type:    RSA-3072 with PSS");
    ASSERT_HAS(r->out, "hsm keys:          never leave the token");
    ASSERT_HAS(r->out, "backup key wrap:   CKM_AES_CBC_PAD, not sealed again");
    kc_test_custodians();
    r = kc_test_run("subscription", "init", "ock-sub", "--vault", "ock0", "--vault", "ock1",
                    "--custodian", kc_test_path2("alice.pem"), "--custodian", kc_test_path2("bob.pem"),
                    "--quorum", "1", "--out", kc_test_path2("ock.domain"), OCK_SO, OCK_PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "installed on 2 vaults");

    /* an hsm key of 2048 bits; OAEP both ways against OpenSSL, both hashes */
    ASSERT_RC(kc_test_run("key", "create", "ock0/Root2k", "--size", "2048", OCK_PINS, NULL), 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "cd '%s' && head -c 32 /dev/urandom >dek && openssl genpkey -quiet "
                               "-algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out imp.pem",
                               kc_test_dir()),
                    0);
    r = kc_test_run("key", "import", "ock0/Imported", "--pem", kc_test_path2("imp.pem"), OCK_PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "origin:       pem");
    ASSERT_HAS(r->out, "it never leaves the token");
    ASSERT_RC(kc_test_run("key", "export-public", "ock0/Root2k", "--out", kc_test_path2("pub.pem"), NULL),
              0);
    /* the PIN holder's raw PKCS#11 attack does not bring either root key
     * out; what the module lets through is copies of secret keys with new
     * usages (copy.usage_locked: no), never a key's value */
    for (k = 0; k < 2; k++) {
        CU_ASSERT_EQUAL(kc_test_sh(&out,
                                   "ATTACK_PIN=\"$OCK_USER_PIN\" '%s' extract '%s' ock0 %s; "
                                   "echo rc=$?",
                                   KC_ATTACK_P11, OCK_MODULE, k == 0 ? "Root2k" : "Imported"),
                        0);
        ASSERT_HAS(out, "rc=1");
        ASSERT_HAS(out, "BROKEN: secret key 'keycustody-audit' was copied with CKA_DERIVE=TRUE");
        CU_ASSERT_EQUAL(kc_test_sh(&out,
                                   "ATTACK_PIN=\"$OCK_USER_PIN\" '%s' extract '%s' ock0 %s | "
                                   "grep '^BROKEN' | grep -v \"^BROKEN: secret key '[a-z-]*' was "
                                   "copied with CKA_[A-Z]*=TRUE$\"",
                                   KC_ATTACK_P11, OCK_MODULE, k == 0 ? "Root2k" : "Imported"),
                        1); /* no other line */
        CU_ASSERT_STRING_EQUAL(out, "");
    }
    oaep_both_ways("ock0/Imported", "RSA-OAEP", "sha1");
    oaep_both_ways("ock0/Imported", "RSA-OAEP-256", "sha256");

    /* rotate: the new version wraps, the old one still unwraps; update */
    ASSERT_RC(kc_test_run("key", "wrap", "ock0/Root2k", "--in", kc_test_path2("dek"), "--out",
                          kc_test_path2("w1"), NULL),
              0);
    r = kc_test_run("key", "rotate", "ock0/Root2k", OCK_PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "the 1 older version still unwraps");
    ASSERT_RC(kc_test_run("key", "wrap", "ock0/Root2k", "--in", kc_test_path2("dek"), "--out",
                          kc_test_path2("w2"), NULL),
              0);
    r = kc_test_run("key", "update", "ock0/Root2k", "--tag", "owner=alice", OCK_PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "tag:          owner=alice");

    /* delete and recover: both versions unwrap again */
    ASSERT_RC(kc_test_run("key", "delete", "ock0/Root2k", OCK_PINS, NULL), 0);
    r = kc_test_run("key", "unwrap", "ock0/Root2k", "--in", kc_test_path2("w1"), "--out", kc_test_path2("x"),
                    OCK_PINS, NULL);
    CU_ASSERT_NOT_EQUAL(r->rc, 0);
    ASSERT_RC(kc_test_run("key", "recover", "ock0/Root2k", OCK_PINS, NULL), 0);
    ASSERT_RC(kc_test_run("key", "unwrap", "ock0/Root2k", "--in", kc_test_path2("w1"), "--out",
                          kc_test_path2("u1"), OCK_PINS, NULL),
              0);
    ASSERT_RC(kc_test_run("key", "unwrap", "ock0/Root2k", "--in", kc_test_path2("w2"), "--out",
                          kc_test_path2("u2"), OCK_PINS, NULL),
              0);
    CU_ASSERT_EQUAL(kc_test_sh(&out, "cd '%s' && cmp dek u1 && cmp dek u2", kc_test_dir()), 0);

    /* backups: an hsm key's is refused; a software key's restores on ock1 */
    r = kc_test_run("key", "backup", "ock0/Root2k", "--out", kc_test_path2("r.backup"), OCK_PINS, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "it is not extractable, so it never leaves the token");
    CU_ASSERT_NOT_EQUAL(access(kc_test_path2("r.backup"), F_OK), 0);
    ASSERT_RC(kc_test_run("key", "create", "ock0/Soft", "--size", "2048", "--protection",
                          "software", OCK_PINS, NULL),
              0);
    ASSERT_RC(kc_test_run("key", "wrap", "ock0/Soft", "--in", kc_test_path2("dek"), "--out", kc_test_path2("ws"),
                          NULL),
              0);
    r = kc_test_run("key", "backup", "ock0/Soft", "--out", kc_test_path2("s.backup"), OCK_PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "restores only into a vault of subscription 'ock-sub'");
    doc = kc_test_read(kc_test_path2("s.backup"), &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
    CU_ASSERT_PTR_NOT_NULL(memmem(doc, len, "\"wrap\":\"CKM_AES_CBC_PAD\"", 24));
    CU_ASSERT_PTR_NOT_NULL(memmem(doc, len, "\"sealed\":false", 14));
    free(doc);
    r = kc_test_run("key", "restore", "ock1", "--in", kc_test_path2("s.backup"), OCK_PINS, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "restored key 'ock1/Soft' with 1 version");
    ASSERT_RC(kc_test_run("key", "unwrap", "ock1/Soft", "--in", kc_test_path2("ws"), "--out",
                          kc_test_path2("us"), OCK_PINS, NULL),
              0);
    CU_ASSERT_EQUAL(kc_test_sh(&out, "cmp '%s' '%s'", kc_test_path2("dek"), kc_test_path2("us")), 0);

    /* purge: every object of the key is gone from the token */
    ASSERT_RC(kc_test_run("key", "delete", "ock1/Soft", OCK_PINS, NULL), 0);
    ASSERT_RC(kc_test_run("key", "purge", "ock1/Soft", OCK_PINS, NULL), 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --slot 1 --login --pin env:OCK_USER_PIN "
                               "-O 2>/dev/null | grep -c 'label: *Soft$'",
                               OCK_MODULE),
                    1); /* grep -c found none */
    ASSERT_HAS(out, "0");

    /* the audit log of all of it verifies through the module */
    /* (every visible vault's anchor is read: VaultO1's too) */
    r = kc_test_run("audit", "verify", "--audit", kc_test_path2("audit.jsonl"), OCK_PINS, "--pin-source",
                    "VaultO1=env:OCK_USER_PIN", NULL);
    ASSERT_RC(r, 0);
    unlink(kc_test_path2("audit.jsonl")); /* the fixture's own check sees SoftHSM only */
}

/* --- one layout over two modules --- */

/* The test layout with vault A on openCryptoki's slot 3 (ock3) and
 * vault B and the service vault on SoftHSM, each naming its module. */
static const char *dep_layout(void)
{
    const char *file = kc_test_layout_with_service("assignments:\n  tenant: Dep1\n");

    kc_test_edit(file,
                 "  - name: VaultA1\n    subscription: sub-a\n    region: westus\n"
                 "    pin: env:TEST_PIN\n    so_pin: env:TEST_SO_PIN\n",
                 "  - name: ock3\n    subscription: sub-a\n    region: westus\n"
                 "    module: " OCK_MODULE "\n"
                 "    pin: env:OCK_USER_PIN\n    so_pin: env:OCK_SO_PIN\n");
    kc_test_edit(file, "keys: [VaultA1/KeyA, VaultB1/KeyB]", "keys: [ock3/KeyA, VaultB1/KeyB]");
    kc_test_edit(file, "  - name: VaultB1\n",
                 "  - name: VaultB1\n    module: " KC_SOFTHSM_MODULE "\n");
    kc_test_edit(file, "  - name: Service\n",
                 "  - name: Service\n    module: " KC_SOFTHSM_MODULE "\n");
    return file;
}

#define BOTH "--module", "ock3=" OCK_MODULE, "--module", KC_SOFTHSM_MODULE
#define DATA_PINS                                                                                  \
    "--pin-source", "ock3=env:OCK_USER_PIN", "--pin-source", "VaultB1=env:TEST_PIN",              \
        "--pin-source", "Service=env:TEST_PIN"

/* The service takes unwrapKey away on vault (its officer's PINs in pin/so). */
static void revoke_unwrap(const char *vault, const char *pin, const char *so)
{
    ASSERT_RC(kc_test_exec("access", "remove", vault, "--principal", "svc", "--permissions",
                          "unwrapKey", "--so-pin-source", so, "--pin-source", pin, "--as",
                          "officer", BOTH, NULL),
              0);
}

static const kc_test_out *data_get(const char *name)
{
    unlink(kc_test_path2("item.out"));
    return kc_test_exec("data", "get", "tenant", name, "--out", kc_test_path2("item.out"), "--as", "svc",
                       DATA_PINS, BOTH, NULL);
}

/* A layout whose vault A is on openCryptoki and whose vault B and service
 * vault are on SoftHSM, each vault naming its module (allowed by the
 * operator's list): one apply makes all of it, DEP included; data written
 * under the DEP reads back through either custodian vault, and --module
 * VAULT=MODULE reaches the same vaults from the command line. Each command
 * in a process of its own, as users run them: run in this test's process,
 * openCryptoki 3.8.1's soft token crashed (SIGSEGV in ST_Initialize's
 * Fork_Initializer) when initialised again after the commands before. */
static void test_dep_over_two_modules(void)
{
    char allow[600], *out = NULL;
    const char *layout;
    const kc_test_out *r;

    snprintf(allow, sizeof(allow), "%s\n", OCK_MODULE);
    kc_test_write(kc_test_path2("modules.allow"), allow, strlen(allow), 0644);
    setenv("KEYCUSTODY_MODULES_ALLOW", kc_test_path2("modules.allow"), 1);
    unsetenv("KEYCUSTODY_MODULE"); /* the layout's modules, not the fixture's */
    layout = dep_layout();
    r = kc_test_exec("policy", "apply", layout, "--yes", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "create DEP Dep1 (tenant, keys ock3/KeyA and VaultB1/KeyB) ... done");
    r = kc_test_exec("vault", "show", "ock3", BOTH, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "module:            " OCK_MODULE);
    r = kc_test_exec("vault", "show", "VaultB1", BOTH, NULL);
    ASSERT_HAS(r->out, "libsofthsm2.so\n");
    /* again: nothing to do */
    r = kc_test_exec("policy", "plan", layout, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_STRING_EQUAL(r->out, "No changes: the tokens match the layout.\n");

    setenv("KEYCUSTODY_STORE", kc_test_path2("service.db"), 1);
    setenv("KEYCUSTODY_SERVICE_VAULT", "Service", 1);
    setenv("KEYCUSTODY_SERVICE_PIN_SOURCE", "env:TEST_PIN", 1);
    CU_ASSERT_EQUAL(kc_test_sh(&out, "head -c 3000 /dev/urandom >'%s'", kc_test_path2("item.bin")), 0);
    r = kc_test_exec("data", "put", "tenant", "t1", "--in", kc_test_path2("item.bin"), "--as", "svc",
                    DATA_PINS, BOTH, NULL);
    ASSERT_RC(r, 0);
    /* the vaults it saw first are pinned after its write, not refused by it */
    CU_ASSERT_PTR_NULL(strstr(r->err, "not pinned"));
    CU_ASSERT_EQUAL(kc_test_sh(&out, "sqlite3 '%s' 'SELECT vault FROM vault_pins ORDER BY vault'",
                               kc_test_path2("service.db")),
                    0);
    ASSERT_HAS(out, "ock3\n");
    /* through vault A on openCryptoki */
    ASSERT_RC(data_get("t1"), 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out, "cmp '%s' '%s'", kc_test_path2("item.bin"), kc_test_path2("item.out")), 0);
    /* vault A takes unwrapKey away: vault B on SoftHSM reads it */
    revoke_unwrap("ock3", "env:OCK_USER_PIN", "env:OCK_SO_PIN");
    r = data_get("t1");
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->err, "warning: ock3: principal 'svc' lacks 'unwrapKey'");
    CU_ASSERT_EQUAL(kc_test_sh(&out, "cmp '%s' '%s'", kc_test_path2("item.bin"), kc_test_path2("item.out")), 0);
    /* and with both taken away, neither reads it */
    revoke_unwrap("VaultB1", "env:TEST_PIN", "env:TEST_SO_PIN");
    r = data_get("t1");
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "neither custodian vault can unwrap the key of DEP 'Dep1'");

    /* a vault bound to a module is looked for there only */
    r = kc_test_exec("vault", "show", "VaultB1", "--module", "VaultB1=" OCK_MODULE, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "no token 'VaultB1' on the module it is bound to (/usr/lib/");
    ASSERT_HAS(r->err, "libopencryptoki.so");
    r = kc_test_exec("vault", "show", "ock3", "--module", "ock3=" OCK_MODULE, "--module",
                    "ock3=" KC_SOFTHSM_MODULE, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "vault 'ock3' is given two modules");

    r = kc_test_exec("audit", "verify", "--audit", kc_test_path2("audit.jsonl"), BOTH, DATA_PINS,
                    "--pin-source", "ock0=env:OCK_USER_PIN", "--pin-source",
                    "ock1=env:OCK_USER_PIN", "--pin-source", "VaultO1=env:OCK_USER_PIN", NULL);
    ASSERT_RC(r, 0);
    unlink(kc_test_path2("audit.jsonl")); /* the fixture's own check sees SoftHSM only */
    unsetenv("KEYCUSTODY_MODULES_ALLOW");
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

/* The matrix from 'module check' on each module (with the PIN where a
 * vault can be made there). */
static char *matrix(json_t *const *checks, const char *const *heads, size_t n)
{
    static char m[24576];
    size_t off = 0, i, k;
    json_t *f;
    char c[400];

    off += (size_t)snprintf(m + off, sizeof(m) - off, "%s| feature |", MATRIX_BEGIN);
    for (k = 0; k < n; k++)
        off += (size_t)snprintf(m + off, sizeof(m) - off, " %s |", heads[k]);
    off += (size_t)snprintf(m + off, sizeof(m) - off, "\n|---|");
    for (k = 0; k < n; k++)
        off += (size_t)snprintf(m + off, sizeof(m) - off, "---|");
    off += (size_t)snprintf(m + off, sizeof(m) - off, "\n");
    json_array_foreach(json_object_get(checks[0], "features"), i, f)
    {
        const char *name = json_string_value(json_object_get(f, "feature"));
        off += (size_t)snprintf(m + off, sizeof(m) - off, "| %s |", name);
        for (k = 0; k < n; k++) {
            cell(c, sizeof(c), checks[k], name);
            off += (size_t)snprintf(m + off, sizeof(m) - off, " %s |", c);
        }
        off += (size_t)snprintf(m + off, sizeof(m) - off, "\n");
    }
    snprintf(m + off, sizeof(m) - off, "%s", MATRIX_END);
    return m;
}

/* module check's JSON of token (NULL: the one module check chooses, the
 * free one where none is initialised), without a PIN. */
static json_t *check_of(const char *module, const char *token)
{
    const kc_test_out *r =
        token != NULL
            ? kc_test_run("module", "check", token, "--module", module, "--json", NULL)
            : kc_test_run("module", "check", "--module", module, "--json", NULL);

    ASSERT_RC(r, 0);
    return json_loads(r->out, 0, NULL);
}

/* The README's matrix is the one module check gives today: a change in a
 * module or in keycustody's judgement shows here first. On a difference,
 * the matrix to paste is in support-matrix.md in the build directory. */
static void test_readme_support_matrix(void)
{
    static const char *const heads[] = {"SoftHSM 2.6.1", "openCryptoki 3.8.1 soft token",
                                        "NSS softokn 3.87 (free token, no PIN)",
                                        "tpm2-pkcs11 1.9 on swtpm (free token, no PIN)"};
    const kc_test_out *r;
    json_t *checks[4];
    char *readme, *at, *want;
    size_t len, k;
    FILE *f;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    r = kc_test_run("module", "check", "VaultA1", "--json", "--pin-source", "VaultA1=env:TEST_PIN",
                    NULL);
    ASSERT_RC(r, 0);
    checks[0] = json_loads(r->out, 0, NULL);
    r = ock_run_check(1);
    ASSERT_RC(r, 0);
    checks[1] = json_loads(r->out, 0, NULL);
    checks[2] = check_of(kc_test_nss_module(), "NSS Certificate DB");
    checks[3] = check_of(kc_test_tpm2_start(), NULL);
    kc_test_tpm2_stop();
    for (k = 0; k < 4; k++)
        CU_ASSERT_PTR_NOT_NULL_FATAL(checks[k]);
    want = matrix(checks, heads, 4);
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
    for (k = 0; k < 4; k++)
        json_decref(checks[k]);
}

static const kc_test_case ock_cases[] = {
    {"the openCryptoki facts keycustody relies on", test_ock_facts},
    {"as pkcs11-tool sees it", test_ock_as_pkcs11_tool_sees_it},
    {"a vault and an hsm key on the free token", test_ock_vault_and_hsm_key},
    {"the README's support matrix", test_readme_support_matrix},
    {"the custody story on two of its vaults", test_ock_custody_story},
    {"a DEP over openCryptoki and SoftHSM", test_dep_over_two_modules},
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
    if (child > 0 && waitpid(child, &status, 0) == child) {
        rc = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        if (WIFSIGNALED(status))
            fprintf(stderr, "\ntest_modules: the suite died of signal %d\n", WTERMSIG(status));
    }
    ock_stop();
    return rc;
}
