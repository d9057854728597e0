/* Custody: the subscription backup domain, backup and restore, import. */
#include "fixture.h"
#include "kc_backup.h"
#include "kc_domain.h"
#include "kc_keystate.h"
#include "kc_p11.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PIN "--pin-source", "env:TEST_PIN"
#define SOPIN "--so-pin-source", "env:TEST_SO_PIN"

static char P[8][1100]; /* paths, so several can be held at once */

static const char *path(int slot, const char *name)
{
    snprintf(P[slot], sizeof(P[slot]), "%s", kc_test_path(name));
    return P[slot];
}

static void dek(void)
{
    unsigned char b[32];
    size_t i;

    for (i = 0; i < sizeof(b); i++)
        b[i] = (unsigned char)(0xa5 ^ i * 29);
    kc_test_write(kc_test_path("dek"), b, sizeof(b), 0600);
}

static int same(const char *a, const char *b)
{
    size_t na, nb;
    unsigned char *x = kc_test_read(a, &na), *y = kc_test_read(b, &nb);
    int eq = x && y && na == nb && memcmp(x, y, na) == 0;

    free(x);
    free(y);
    return eq;
}

static int unwraps(const char *key, const char *wrapped)
{
    char out[1100];

    snprintf(out, sizeof(out), "%s.out", wrapped);
    unlink(out);
    return kc_test_run("key", "unwrap", key, "--in", wrapped, "--out", out, PIN, NULL)->rc == 0 &&
           same(out, kc_test_path("dek"));
}

/* --- the backup domain --- */

static void test_domain_init(void)
{
    const kc_test_out *r;
    char *out = NULL;
    unsigned char *doc;
    struct stat st;
    size_t n;
    json_t *j;

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    r = kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain"));
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "security-domain file");
    ASSERT_HAS(r->out, "2 of 3 custodians recover it");
    CU_ASSERT_EQUAL(stat(path(3, "a.domain"), &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    doc = kc_test_read(path(3, "a.domain"), &n);
    j = json_loads((char *)doc, 0, NULL);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "quorum")), 2);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "shares")), 3);
    json_decref(j);
    free(doc);
    r = kc_test_run("vault", "show", "VaultA1", NULL);
    ASSERT_HAS(r->out, "backup domain:     ");
    CU_ASSERT_PTR_NULL(strstr(r->out, "(none"));
    /* On the token: the wrap key public and trusted, the others private. */
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "p11tool --provider '%s' --list-all 'pkcs11:token=VaultA1;"
                               "object=keycustody-domain-wrap'",
                               KC_SOFTHSM_MODULE),
                    0);
    ASSERT_HAS(out, "CKA_TRUSTED");
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --token-label VaultA1 --login "
                               "--pin env:TEST_PIN -O",
                               KC_SOFTHSM_MODULE),
                    0);
    ASSERT_HAS(out, "label:      keycustody-domain-unwrap");
    ASSERT_HAS(out, "label:      keycustody-domain-mac");
    CU_ASSERT_EQUAL(
        kc_test_sh(&out, "pkcs11-tool --module '%s' --token-label VaultA1 -O", KC_SOFTHSM_MODULE),
        0);
    CU_ASSERT_PTR_NULL(strstr(out, "keycustody-domain-unwrap")); /* not without the PIN */
}

static void test_domain_init_errors(void)
{
    const kc_test_out *r;

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_vault("VaultB1", "contoso-b", "eastus2");
    r = kc_test_run("subscription", "init", "contoso-a", "--vault", "VaultA1", "--custodian",
                    path(0, "alice.pem"), "--quorum", "2", "--out", path(3, "a.domain"), SOPIN, PIN,
                    NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "a quorum of 2 from 1 custodians is impossible");
    r = kc_test_domain("contoso-a", "VaultB1", path(3, "a.domain"));
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "vault 'VaultB1' belongs to subscription 'contoso-b', not 'contoso-a'");
    CU_ASSERT_NOT_EQUAL(access(path(3, "a.domain"), F_OK), 0);
    r = kc_test_run("vault", "show", "VaultB1", NULL);
    ASSERT_HAS(r->out, "backup domain:     (none");
    r = kc_test_domain("contoso-a", "VaultA1", path(3, "a.dom"));
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "a security-domain file ends in .domain");
    r = kc_test_run("subscription", "init", "contoso-a", "--vault", "VaultA1", "--custodian",
                    path(0, "alice-key.pem"), "--quorum", "1", "--out", path(3, "a.domain"), SOPIN,
                    PIN, NULL);
    ASSERT_RC(r, 2); /* custodians hand over public keys only */
    ASSERT_HAS(r->err, "holds a private key");
    ASSERT_RC(kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain")), 0);
    r = kc_test_domain("contoso-a", "VaultA1", path(4, "b.domain"));
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "vault 'VaultA1' holds a backup domain already");
    r = kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain"));
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "exists already");
    kc_test_write(kc_test_path("junk.pem"), "not a key", 9, 0644);
    r = kc_test_run("subscription", "init", "contoso-b", "--vault", "VaultB1", "--custodian",
                    path(0, "junk.pem"), "--quorum", "1", "--out", path(4, "b.domain"), SOPIN, PIN,
                    NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "is not an RSA public key");
}

static const kc_test_out *join(const char *vault, const char *domain, const char *k1,
                               const char *k2)
{
    if (k2 == NULL)
        return kc_test_run("subscription", "join", "contoso-a", "--vault", vault, "--domain",
                           domain, "--share-key", k1, SOPIN, PIN, NULL);
    return kc_test_run("subscription", "join", "contoso-a", "--vault", vault, "--domain", domain,
                       "--share-key", k1, "--share-key", k2, SOPIN, PIN, NULL);
}

static void test_domain_join_errors(void)
{
    const kc_test_out *r;
    unsigned char *doc;
    char *s, *v;
    size_t n;

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_vault("VaultA2", "contoso-a", "westus");
    kc_test_vault("VaultB1", "contoso-b", "eastus2");
    ASSERT_RC(kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain")), 0);
    /* below the quorum */
    r = join("VaultA2", path(3, "a.domain"), path(0, "alice-key.pem"), NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "the domain needs 2 custodians' shares; 1 given");
    /* the same custodian twice counts once */
    r = join("VaultA2", path(3, "a.domain"), path(0, "alice-key.pem"), path(1, "alice-key.pem"));
    ASSERT_RC(r, 6);
    /* a key that is no custodian's */
    CU_ASSERT_EQUAL(
        kc_test_sh(NULL,
                   "openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 "
                   "-out '%s/mallory-key.pem'",
                   kc_test_dir()),
        0);
    r = join("VaultA2", path(3, "a.domain"), path(0, "alice-key.pem"), path(1, "mallory-key.pem"));
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "is not the key of any custodian of this domain");
    /* a vault of another subscription */
    r = join("VaultB1", path(3, "a.domain"), path(0, "alice-key.pem"), path(1, "bob-key.pem"));
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "vault 'VaultB1' belongs to subscription 'contoso-b', not 'contoso-a'");
    /* a share altered in the file */
    doc = kc_test_read(path(3, "a.domain"), &n);
    s = strstr((char *)doc, "\"value\": \"");
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    v = s + 20;
    *v = *v == 'A' ? 'B' : 'A';
    kc_test_write(kc_test_path("bad.domain"), doc, n, 0600);
    free(doc);
    r = join("VaultA2", path(3, "bad.domain"), path(0, "alice-key.pem"), path(1, "bob-key.pem"));
    CU_ASSERT(r->rc == 8);
    /* nothing was installed by any of these */
    r = kc_test_run("vault", "show", "VaultA2", NULL);
    ASSERT_HAS(r->out, "backup domain:     (none");
    r = kc_test_run("vault", "show", "VaultB1", NULL);
    ASSERT_HAS(r->out, "backup domain:     (none");
    /* and a quorum does it */
    r = join("VaultA2", path(3, "a.domain"), path(0, "carol-key.pem"), path(1, "alice-key.pem"));
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "vault 'VaultA2' joined the backup domain of subscription 'contoso-a'");
}

/* A custodian whose key lives on their own token joins by pkcs11: URI. */
static void test_domain_join_with_token_key(void)
{
    const kc_test_out *r;

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_vault("Custody1", "custodians", "westus");
    kc_test_key("Custody1/Share1", NULL);
    r = kc_test_run("key", "export-public", "Custody1/Share1", "--out", path(5, "dave.pem"), NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("subscription", "init", "contoso-a", "--vault", "VaultA1", "--custodian",
                    path(0, "alice.pem"), "--custodian", path(5, "dave.pem"), "--quorum", "2",
                    "--out", path(3, "a.domain"), SOPIN, PIN, NULL);
    ASSERT_RC(r, 0);
    kc_test_vault("VaultA2", "contoso-a", "westus");
    r = join("VaultA2", path(3, "a.domain"), path(0, "alice-key.pem"),
             "pkcs11:token=Custody1;object=Share1");
    ASSERT_RC(r, 0);
}

/* A domain is on every vault of the init, or on none: a wrong SO PIN on
 * the second vault stops the command before the first is changed, and a
 * run with the right one then succeeds. */
static void test_domain_init_all_or_none(void)
{
    const kc_test_out *r;

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_vault("VaultA2", "contoso-a", "westus");
    setenv("KC_WRONG_SO", "not-the-so-pin", 1);
    r = kc_test_run("subscription", "init", "contoso-a", "--vault", "VaultA1", "--vault",
                    "VaultA2", "--custodian", path(0, "alice.pem"), "--quorum", "1", "--out",
                    path(3, "a.domain"), "--so-pin-source", "VaultA1=env:TEST_SO_PIN",
                    "--so-pin-source", "VaultA2=env:KC_WRONG_SO", PIN, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "vault 'VaultA2'");
    CU_ASSERT_NOT_EQUAL(access(path(3, "a.domain"), F_OK), 0);
    r = kc_test_run("vault", "show", "VaultA1", "--json", NULL);
    CU_ASSERT_PTR_NULL(strstr(r->out, "\"backup_domain\": \""));
    CU_ASSERT_EQUAL(kc_test_secret_keys("VaultA1"), 0);
    r = kc_test_run("subscription", "init", "contoso-a", "--vault", "VaultA1", "--vault",
                    "VaultA2", "--custodian", path(0, "alice.pem"), "--quorum", "1", "--out",
                    path(3, "a.domain"), SOPIN, PIN, NULL);
    ASSERT_RC(r, 0);
}

static const kc_test_case domain_cases[] = {
    {"init on every vault or none", test_domain_init_all_or_none},
    {"init", test_domain_init},
    {"init errors", test_domain_init_errors},
    {"join errors, then a quorum", test_domain_join_errors},
    {"join with a custodian's token key", test_domain_join_with_token_key},
    {NULL, NULL},
};

/* --- backup and restore --- */

/* VaultA1 of contoso-a with its domain and a key with two versions and a
 * tag; w1 and w2 wrapped under each version. */
static void setup_backup(void)
{
    const kc_test_out *r;

    kc_test_custodians();
    dek();
    r = kc_test_run("vault", "init", "VaultA1", "--subscription", "contoso-a", "--region", "westus",
                    "--purge-protection", SOPIN, PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_RC(kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain")), 0);
    kc_test_key("VaultA1/Key001", NULL);
    ASSERT_RC(kc_test_run("key", "wrap", "VaultA1/Key001", "--in", path(0, "dek"), "--out",
                          path(1, "w1"), NULL),
              0);
    ASSERT_RC(kc_test_run("key", "rotate", "VaultA1/Key001", PIN, NULL), 0);
    ASSERT_RC(kc_test_run("key", "wrap", "VaultA1/Key001", "--in", path(0, "dek"), "--out",
                          path(1, "w2"), NULL),
              0);
    ASSERT_RC(kc_test_run("key", "update", "VaultA1/Key001", "--tag", "owner=alice", PIN, NULL), 0);
}

/* Deletes ref and, the retention waited out, purges it: gone from the token. */
static void delete_and_purge(const char *ref)
{
    ASSERT_RC(kc_test_run("key", "delete", ref, PIN, NULL), 0);
    setenv("KEYCUSTODY_NOW", "2099-01-01T00:00:00Z", 1);
    ASSERT_RC(kc_test_run("key", "purge", ref, PIN, NULL), 0);
    unsetenv("KEYCUSTODY_NOW");
}

static void test_backup_purge_restore(void)
{
    const kc_test_out *r;
    char versions[2][512];
    struct stat st;

    setup_backup();
    r = kc_test_run("key", "show", "VaultA1/Key001", "--versions", PIN, NULL);
    snprintf(versions[0], sizeof(versions[0]), "%.500s", r->out);
    r = kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "restores only into a vault of subscription 'contoso-a'");
    CU_ASSERT_EQUAL(stat(path(4, "k.backup"), &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    /* delete, wait out the retention, purge: the key is gone from the token */
    delete_and_purge("VaultA1/Key001");
    r = kc_test_run("key", "restore", "VaultA1", "--in", path(4, "k.backup"), PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "restored key 'VaultA1/Key001' with 2 versions");
    /* same versions, same order, same tag; old ciphertexts of both versions unwrap */
    r = kc_test_run("key", "show", "VaultA1/Key001", "--versions", PIN, NULL);
    snprintf(versions[1], sizeof(versions[1]), "%.500s", r->out);
    CU_ASSERT_STRING_EQUAL(versions[0], versions[1]);
    r = kc_test_run("key", "show", "VaultA1/Key001", PIN, NULL);
    ASSERT_HAS(r->out, "tag:          owner=alice");
    ASSERT_HAS(r->out, "origin:       restored");
    CU_ASSERT_TRUE(unwraps("VaultA1/Key001", path(1, "w1")));
    CU_ASSERT_TRUE(unwraps("VaultA1/Key001", path(1, "w2")));
    /* restore fails when the name exists */
    r = kc_test_run("key", "restore", "VaultA1", "--in", path(4, "k.backup"), PIN, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "vault 'VaultA1' has a key 'Key001' already");
    ASSERT_RC(kc_test_run("key", "delete", "VaultA1/Key001", PIN, NULL), 0);
    r = kc_test_run("key", "restore", "VaultA1", "--in", path(4, "k.backup"), PIN, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "(deleted, not yet purged)");
}

/* The vault is lost; a new one joins with a quorum and gets the key back. */
static void test_restore_into_joined_vault(void)
{
    const kc_test_out *r;

    setup_backup();
    ASSERT_RC(
        kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL), 0);
    /* every token gone */
    CU_ASSERT_EQUAL(kc_test_wipe_tokens(), 0);
    kc_test_vault("VaultA9", "contoso-a", "westus");
    r = kc_test_run("key", "restore", "VaultA9", "--in", path(4, "k.backup"), PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "vault 'VaultA9' (subscription 'contoso-a') holds no backup domain");
    ASSERT_RC(
        join("VaultA9", path(3, "a.domain"), path(0, "bob-key.pem"), path(1, "carol-key.pem")), 0);
    r = kc_test_run("key", "restore", "VaultA9", "--in", path(4, "k.backup"), PIN, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_TRUE(unwraps("VaultA9/Key001", path(1, "w1")));
    CU_ASSERT_TRUE(unwraps("VaultA9/Key001", path(1, "w2")));
}

/* subscription join killed with SIGKILL at several points: running it
 * again finishes it, and the vault restores the backup. */
static void test_join_killed(void)
{
    static const char *delays[] = {"0.03", "0.1", "0.2", "0.4"};
    const kc_test_out *r;
    char *out = NULL, vault[16], ref[32];
    size_t i;

    setup_backup();
    ASSERT_RC(
        kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL), 0);
    for (i = 0; i < sizeof(delays) / sizeof(delays[0]); i++) {
        snprintf(vault, sizeof(vault), "VaultJ%zu", i);
        kc_test_vault(vault, "contoso-a", "westus");
        kc_test_snapshot_tokens();
        kc_test_sh(&out,
                   "'%s' subscription join contoso-a --vault %s --domain '%s' --share-key '%s' "
                   "--share-key '%s' --so-pin-source env:TEST_SO_PIN --pin-source env:TEST_PIN "
                   ">/dev/null 2>&1 & p=$!; sleep %s; kill -9 $p 2>/dev/null; wait $p; true",
                   KC_BINARY, vault, path(3, "a.domain"), path(0, "bob-key.pem"),
                   path(1, "carol-key.pem"), delays[i]);
        (void)kc_test_mend_tokens();
        r = join(vault, path(3, "a.domain"), path(0, "bob-key.pem"), path(1, "carol-key.pem"));
        if (r->rc != 0)
            fprintf(stderr, "\n  join after a kill at %s s: %s", delays[i], r->err);
        CU_ASSERT(r->rc == 0 || (r->rc == 5 && kc_test_contains(r->err, "already")));
        r = kc_test_run("key", "restore", vault, "--in", path(4, "k.backup"), PIN, NULL);
        ASSERT_RC(r, 0);
        snprintf(ref, sizeof(ref), "%s/Key001", vault);
        CU_ASSERT_TRUE(unwraps(ref, path(1, "w1")));
        CU_ASSERT_TRUE(unwraps(ref, path(1, "w2")));
    }
}

static void test_restore_foreign_subscription(void)
{
    const kc_test_out *r;

    setup_backup();
    ASSERT_RC(
        kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL), 0);
    kc_test_vault("VaultB1", "contoso-b", "eastus2");
    r = kc_test_run("key", "restore", "VaultB1", "--in", path(4, "k.backup"), PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "subscription 'contoso-b'");
    ASSERT_HAS(r->err, "'contoso-a'");
    /* with a domain of its own, the MAC tells it apart */
    ASSERT_RC(kc_test_domain("contoso-b", "VaultB1", path(5, "b.domain")), 0);
    r = kc_test_run("key", "restore", "VaultB1", "--in", path(4, "k.backup"), PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "the backup is of subscription 'contoso-a' and vault 'VaultB1' is in "
                       "subscription 'contoso-b'");
    r = kc_test_run("key", "list", "VaultB1", PIN, NULL);
    ASSERT_HAS(r->out, "has no keys");
}

static void test_backup_errors(void)
{
    const kc_test_out *r;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    r = kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.bak"), PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "the name ends in .backup");
    r = kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "vault 'VaultA1' holds no backup domain");
    r = kc_test_run("key", "restore", "VaultA1", "--in", path(4, "missing.backup"), PIN, NULL);
    ASSERT_RC(r, 4);
}

/* A restore that fails part-way leaves nothing behind. */
static void test_restore_rolls_back(void)
{
    const kc_test_out *r;
    char *out = NULL;
    kc_error e;

    setup_backup();
    ASSERT_RC(
        kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL), 0);
    delete_and_purge("VaultA1/Key001");
    /* the second version's private key fails to unwrap */
    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm("C_UnwrapKey", "CKR_DEVICE_ERROR", 2, 0, &e), KC_OK);
    r = kc_test_run("key", "restore", "VaultA1", "--in", path(4, "k.backup"), PIN, NULL);
    kc_p11_fault_disarm();
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "C_UnwrapKey");
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --token-label VaultA1 --login "
                               "--pin env:TEST_PIN -O | grep -c Key001",
                               KC_SOFTHSM_MODULE),
                    1);
    CU_ASSERT_EQUAL(atoi(out), 0);
    r = kc_test_run("key", "list-deleted", "VaultA1", PIN, NULL);
    ASSERT_HAS(r->out, "has no deleted keys");
    /* and the next try goes through */
    r = kc_test_run("key", "restore", "VaultA1", "--in", path(4, "k.backup"), PIN, NULL);
    ASSERT_RC(r, 0);
}

/* key restore killed with SIGKILL at several points: running it again
 * finishes it, with no object twice and none left over. */
static void test_restore_killed(void)
{
    static const char *delays[] = {"0.03", "0.1", "0.2", "0.4"};
    const kc_test_out *r;
    char *out = NULL;
    size_t i;

    setup_backup();
    ASSERT_RC(
        kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL), 0);
    for (i = 0; i < sizeof(delays) / sizeof(delays[0]); i++) {
        delete_and_purge("VaultA1/Key001");
        kc_test_snapshot_tokens();
        kc_test_sh(&out,
                   "'%s' key restore VaultA1 --in '%s' --pin-source env:TEST_PIN >/dev/null 2>&1 "
                   "& p=$!; sleep %s; kill -9 $p 2>/dev/null; wait $p; true",
                   KC_BINARY, path(4, "k.backup"), delays[i]);
        (void)kc_test_mend_tokens();
        r = kc_test_run("key", "restore", "VaultA1", "--in", path(4, "k.backup"), PIN, NULL);
        if (r->rc != 0) {
            ASSERT_RC(r, 5); /* the killed run had finished */
            ASSERT_HAS(r->err, "has a key 'Key001' already");
        }
        CU_ASSERT_TRUE(unwraps("VaultA1/Key001", path(1, "w1")));
        CU_ASSERT_TRUE(unwraps("VaultA1/Key001", path(1, "w2")));
        /* two versions, each a key pair: nothing twice, nothing left over */
        CU_ASSERT_EQUAL(kc_test_sh(&out,
                                   "pkcs11-tool --module '%s' --token-label VaultA1 --login "
                                   "--pin env:TEST_PIN -O | grep -c 'label: *Key001$'",
                                   KC_SOFTHSM_MODULE),
                        0);
        if (atoi(out) != 4)
            fprintf(stderr, "\n  killed after %s s: %d Key001 objects\n", delays[i], atoi(out));
        CU_ASSERT_EQUAL(atoi(out), 4);
    }
}

/* Flipping any one byte of a backup file is detected, and nothing is written. */
static void test_every_byte_flip_is_detected(void)
{
    char name[KC_KEY_NAME_MAX + 1];
    unsigned char *buf;
    size_t len = 0, i, nv, undetected = 0, other = 0;
    kc_ctx *ctx = NULL;
    kc_vault *v = NULL;
    kc_key_obj *objs = NULL;
    size_t nobjs = 0;
    kc_error e;
    kc_rc r;

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    ASSERT_RC(kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain")), 0);
    kc_test_key("VaultA1/Small", NULL);
    ASSERT_RC(
        kc_test_run("key", "backup", "VaultA1/Small", "--out", path(4, "s.backup"), PIN, NULL), 0);
    ASSERT_RC(kc_test_run("key", "delete", "VaultA1/Small", PIN, NULL), 0);
    ASSERT_RC(kc_test_run("key", "purge", "VaultA1/Small", PIN, NULL), 0);
    buf = kc_test_read(path(4, "s.backup"), &len);
    CU_ASSERT_FATAL(buf != NULL && len > 48);
    CU_ASSERT_EQUAL_FATAL(kc_ctx_new(KC_SOFTHSM_MODULE, kc_test_env_pin, NULL, &ctx, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_vault_open(ctx, "VaultA1", &v, &e), KC_OK);
    for (i = 0; i < len; i++) {
        buf[i] ^= 0x01;
        r = kc_restore_key(v, buf, len, name, &nv, &e);
        buf[i] ^= 0x01;
        if (r == KC_OK)
            undetected++;
        else if (r != KC_INTEGRITY)
            other++;
    }
    CU_ASSERT_EQUAL(undetected, 0);
    CU_ASSERT_EQUAL(other, 0);
    /* truncated anywhere */
    for (i = 0; i < len; i += len / 7 + 1)
        CU_ASSERT_EQUAL(kc_restore_key(v, buf, i, name, &nv, &e), KC_INTEGRITY);
    CU_ASSERT_EQUAL(kc_tok_find_keys(v->tok, "Small", NULL, 0, &objs, &nobjs, &e), KC_OK);
    free(objs);
    CU_ASSERT_EQUAL(nobjs, 0);
    /* the untouched file still restores */
    CU_ASSERT_EQUAL(kc_restore_key(v, buf, len, name, &nv, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(name, "Small");
    kc_vault_free(v);
    kc_ctx_free(ctx);
    free(buf);
}

/* The MAC is made on the token; when that fails no file is written. */
static void test_backup_mac_failure(void)
{
    const kc_test_out *r;
    kc_error e;

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    ASSERT_RC(kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain")), 0);
    kc_test_key("VaultA1/Key001", NULL);
    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm("C_Sign", "CKR_DEVICE_ERROR", 1, 0, &e), KC_OK);
    r = kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL);
    kc_p11_fault_disarm();
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "cannot compute the HMAC-SHA256 on the token: C_Sign:");
    CU_ASSERT_NOT_EQUAL(access(path(4, "k.backup"), F_OK), 0);
    ASSERT_RC(
        kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm("C_Verify", "CKR_DEVICE_ERROR", 1, 0, &e), KC_OK);
    ASSERT_RC(kc_test_run("key", "delete", "VaultA1/Key001", PIN, NULL), 0);
    r = kc_test_run("key", "restore", "VaultA1", "--in", path(4, "k.backup"), PIN, NULL);
    kc_p11_fault_disarm();
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "cannot verify the HMAC on the token: C_Verify:");
}

/* Whether VaultA1 lists Key001 among its deleted keys. */
static int key001_deleted(void)
{
    const kc_test_out *r = kc_test_run("key", "list-deleted", "VaultA1", PIN, NULL);

    return r->rc == 0 && kc_test_contains(r->out, "Key001");
}

/* key purge and key restore cannot be undone: a PIN source that gives
 * nothing, a PIN the token refuses, an audit log that cannot be written,
 * each stops them before the first object is destroyed or made. */
static void test_irreversible_checked_first(void)
{
    const kc_test_out *r;
    char dir[sizeof(P[0])];
    int objects;

    setup_backup();
    ASSERT_RC(kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN,
                          NULL),
              0);
    ASSERT_RC(kc_test_run("key", "delete", "VaultA1/Key001", PIN, NULL), 0);
    setenv("KEYCUSTODY_NOW", "2099-01-01T00:00:00Z", 1);
    setenv("WRONG_PIN", "99999999", 1);
    snprintf(dir, sizeof(dir), "%s", path(5, "audit-dir"));
    CU_ASSERT_EQUAL(mkdir(dir, 0700), 0);
    r = kc_test_run("key", "purge", "VaultA1/Key001", "--pin-source", "env:NO_SUCH_VAR", NULL);
    ASSERT_RC(r, 2);
    CU_ASSERT_TRUE(key001_deleted());
    r = kc_test_run("key", "purge", "VaultA1/Key001", "--pin-source", "env:WRONG_PIN", NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "CKR_PIN_INCORRECT");
    CU_ASSERT_TRUE(key001_deleted());
    r = kc_test_run("key", "purge", "VaultA1/Key001", "--audit", dir, PIN, NULL);
    CU_ASSERT_NOT_EQUAL(r->rc, 0);
    ASSERT_HAS(r->err, "audit-dir");
    CU_ASSERT_TRUE(key001_deleted());
    ASSERT_RC(kc_test_run("key", "purge", "VaultA1/Key001", PIN, NULL), 0);
    CU_ASSERT_FALSE(key001_deleted());
    /* the restore: nothing made on the token by one that is refused */
    objects = kc_test_objects("VaultA1");
    r = kc_test_run("key", "restore", "VaultA1", "--in", path(4, "k.backup"), "--pin-source",
                    "env:NO_SUCH_VAR", NULL);
    ASSERT_RC(r, 2);
    r = kc_test_run("key", "restore", "VaultA1", "--in", path(4, "k.backup"), "--pin-source",
                    "env:WRONG_PIN", NULL);
    ASSERT_RC(r, 6);
    r = kc_test_run("key", "restore", "VaultA1", "--in", path(4, "k.backup"), "--audit",
                    dir, PIN, NULL);
    CU_ASSERT_NOT_EQUAL(r->rc, 0);
    ASSERT_HAS(r->err, "audit-dir");
    CU_ASSERT_EQUAL(kc_test_objects("VaultA1"), objects);
    ASSERT_RC(kc_test_run("key", "show", "VaultA1/Key001", PIN, NULL), 4);
    ASSERT_RC(kc_test_run("key", "restore", "VaultA1", "--in", path(4, "k.backup"), PIN, NULL), 0);
    ASSERT_RC(kc_test_run("key", "show", "VaultA1/Key001", PIN, NULL), 0);
    unsetenv("KEYCUSTODY_NOW");
}

static const kc_test_case backup_cases[] = {
    {"purge and restore check everything first", test_irreversible_checked_first},
    {"a MAC failure on the token", test_backup_mac_failure},
    {"backup, purge, restore, unwrap old data", test_backup_purge_restore},
    {"restore into a joined vault", test_restore_into_joined_vault},
    {"restore into another subscription", test_restore_foreign_subscription},
    {"backup errors", test_backup_errors},
    {"a failed restore rolls back", test_restore_rolls_back},
    {"a restore killed with kill -9", test_restore_killed},
    {"a join killed with kill -9", test_join_killed},
    {"every flipped byte is detected", test_every_byte_flip_is_detected},
    {NULL, NULL},
};

/* --- import --- */

/* The README's openssl commands: a transfer blob for VaultA1/KEK. */
static void make_byok(const char *kek_pem)
{
    char *out = NULL;

    CU_ASSERT_EQUAL_FATAL(
        kc_test_sh(&out,
                   "cd '%s' && openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:3072 "
                   "-out target.pem && openssl rand -out aes.key 32 && "
                   "openssl pkeyutl -encrypt -pubin -inkey '%s' -in aes.key -out part1.bin "
                   "-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 "
                   "-pkeyopt rsa_mgf1_md:sha1 && "
                   "openssl pkcs8 -topk8 -nocrypt -in target.pem -outform DER -out target.p8 && "
                   "openssl enc -id-aes256-wrap-pad -iv A65959A6 "
                   "-K $(od -An -tx1 -v aes.key | tr -d ' \\n') -in target.p8 -out part2.bin && "
                   "cat part1.bin part2.bin > target.byok.bin && "
                   "openssl pkey -in target.pem -pubout -out target.pub.pem",
                   kc_test_dir(), kek_pem),
        0);
}

static void test_import_byok(void)
{
    const kc_test_out *r;
    char *out = NULL;

    dek();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    r = kc_test_run("key", "create", "VaultA1/KEK", "--size", "3072", "--ops", "import", PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_RC(kc_test_run("key", "export-public", "VaultA1/KEK", "--out", path(0, "kek.pem"), NULL),
              0);
    make_byok(path(0, "kek.pem"));
    r = kc_test_run("key", "import", "VaultA1/Imported", "--byok", path(1, "target.byok.bin"),
                    "--kek", "KEK", PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "origin:       byok");
    ASSERT_HAS(r->out, "sensitive=yes");
    ASSERT_HAS(r->out, "local=no");
    /* it is the key openssl made: same public key; openssl decrypts its wraps */
    r = kc_test_run("key", "export-public", "VaultA1/Imported", "--out", path(2, "imp.pem"), NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_TRUE(same(path(2, "imp.pem"), path(3, "target.pub.pem")));
    ASSERT_RC(kc_test_run("key", "wrap", "VaultA1/Imported", "--in", path(4, "dek"), "--out",
                          path(5, "w.raw"), "--raw", NULL),
              0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "cd '%s' && openssl pkeyutl -decrypt -inkey target.pem -in "
                               "w.raw -pkeyopt rsa_padding_mode:oaep -pkeyopt "
                               "rsa_oaep_md:sha1 | cmp - dek",
                               kc_test_dir()),
                    0);
    /* the transfer key is gone; the KEK does nothing but import */
    CU_ASSERT_EQUAL(kc_test_secret_keys("VaultA1"), 0);
    r = kc_test_run("key", "unwrap", "VaultA1/KEK", "--in", path(5, "w.raw"), "--alg", "RSA-OAEP",
                    "--out", path(6, "x"), PIN, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "the key does not allow unwrapKey");
}

static void test_import_byok_json_and_errors(void)
{
    const kc_test_out *r;
    char *out = NULL;
    unsigned char *blob;
    size_t n;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    ASSERT_RC(
        kc_test_run("key", "create", "VaultA1/KEK", "--size", "2048", "--ops", "import", PIN, NULL),
        0);
    kc_test_key("VaultA1/Plain", NULL);
    ASSERT_RC(kc_test_run("key", "export-public", "VaultA1/KEK", "--out", path(0, "kek.pem"), NULL),
              0);
    make_byok(path(0, "kek.pem"));
    /* Key Vault's .byok JSON: the kid names the KEK */
    CU_ASSERT_EQUAL_FATAL(
        kc_test_sh(&out,
                   "cd '%s' && printf '{\"schema_version\":\"1.0.0\",\"header\":{\"kid\":"
                   "\"VaultA1/KEK\",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\"},"
                   "\"ciphertext\":\"%%s\",\"generator\":\"openssl\"}' \"$(base64 -w0 "
                   "target.byok.bin | tr '+/' '-_' | tr -d '=')\" > target.byok",
                   kc_test_dir()),
        0);
    r = kc_test_run("key", "import", "VaultA1/FromJson", "--byok", path(1, "target.byok"), PIN,
                    NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("key", "import", "VaultA1/NoKek", "--byok", path(1, "target.byok.bin"), PIN,
                    NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "does not say which key-exchange key");
    r = kc_test_run("key", "import", "VaultA1/NotKek", "--byok", path(1, "target.byok.bin"),
                    "--kek", "Plain", PIN, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "key 'Plain' is not a key-exchange key (its ops lack import)");
    r = kc_test_run("key", "import", "VaultA1/FromJson", "--byok", path(1, "target.byok.bin"),
                    "--kek", "KEK", PIN, NULL);
    ASSERT_RC(r, 5);
    /* an altered blob: refused by the token, nothing left */
    blob = kc_test_read(path(1, "target.byok.bin"), &n);
    blob[n - 20] ^= 0x40;
    kc_test_write(kc_test_path("bad.byok.bin"), blob, n, 0600);
    free(blob);
    r = kc_test_run("key", "import", "VaultA1/Bad", "--byok", path(1, "bad.byok.bin"), "--kek",
                    "KEK", PIN, NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "the wrapped key was not made under this key, or it was altered");
    CU_ASSERT_EQUAL(kc_test_secret_keys("VaultA1"), 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --token-label VaultA1 --login "
                               "--pin env:TEST_PIN -O | grep -c 'Bad'",
                               KC_SOFTHSM_MODULE),
                    1);
    CU_ASSERT_EQUAL(atoi(out), 0);
}

static void test_import_pem(void)
{
    const kc_test_out *r;
    char *out = NULL;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "cd '%s' && openssl genpkey -quiet -algorithm RSA -pkeyopt "
                                     "rsa_keygen_bits:2048 -out soft.pem && openssl genpkey "
                                     "-algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out "
                                     "small.pem && openssl genpkey -quiet -algorithm EC -pkeyopt "
                                     "ec_paramgen_curve:P-256 -out ec.pem",
                                     kc_test_dir()),
                          0);
    r = kc_test_run("key", "import", "VaultA1/Soft", "--pem", path(0, "soft.pem"), PIN, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "origin:       pem");
    ASSERT_HAS(r->out, "local=no");
    ASSERT_HAS(r->err, "warning: key 'VaultA1/Soft' existed outside an HSM");
    r = kc_test_run("key", "import", "VaultA1/Small", "--pem", path(0, "small.pem"), PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "the key is RSA-1024");
    r = kc_test_run("key", "import", "VaultA1/Ec", "--pem", path(0, "ec.pem"), PIN, NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "not an unencrypted RSA private key");
    r = kc_test_run("key", "import", "VaultA1/Both", "--pem", path(0, "soft.pem"), "--byok",
                    path(0, "soft.pem"), PIN, NULL);
    ASSERT_RC(r, 2);
}

/* The key material of an imported key is nowhere in its backup file. */
static void test_backup_holds_no_key_material(void)
{
    const kc_test_out *r;
    char *out = NULL;

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    ASSERT_RC(kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain")), 0);
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "cd '%s' && openssl genpkey -quiet -algorithm RSA -pkeyopt "
                                     "rsa_keygen_bits:2048 -out soft.pem",
                                     kc_test_dir()),
                          0);
    ASSERT_RC(kc_test_run("key", "import", "VaultA1/Soft", "--pem", path(0, "soft.pem"), PIN, NULL),
              0);
    r = kc_test_run("key", "backup", "VaultA1/Soft", "--out", path(1, "s.backup"), PIN, NULL);
    ASSERT_RC(r, 0);
    /* prime1 of the key, as raw bytes and as hex, is not in the file */
    CU_ASSERT_EQUAL(
        kc_test_sh(&out,
                   "cd '%s' && openssl rsa -in soft.pem -noout -text | awk '/^prime1:/{f=1;"
                   "next} /^prime2:/{f=0} f' | tr -d ' :\\n' | sed 's/^00//' > p.hex && "
                   "test -s p.hex && ! grep -qF -f p.hex s.backup && xxd -p s.backup | tr -d "
                   "'\\n' > b.hex && ! grep -qF \"$(head -c 48 p.hex)\" b.hex",
                   kc_test_dir()),
        0);
}

static const kc_test_case import_cases[] = {
    {"BYOK made with openssl", test_import_byok},
    {"BYOK JSON and errors", test_import_byok_json_and_errors},
    {"PEM", test_import_pem},
    {"a backup holds no key material", test_backup_holds_no_key_material},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {
    {"domain", 1, domain_cases},
    {"backup", 1, backup_cases},
    {"import", 1, import_cases},
    {NULL, 0, NULL},
};

int main(int argc, char **argv)
{
    if (freopen("/dev/null", "r", stdin) == NULL)
        return 2;
    return kc_test_main(argc, argv, suites);
}
