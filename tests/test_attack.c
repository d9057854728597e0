/* The attacks of docs/security.md, each performed the way its attacker
 * would: raw PKCS#11 from tests/attack_p11.c (with the user PIN, or with no
 * PIN at all on a read-write session), reading SoftHSM's object files with
 * softhsm2-dump-file, editing files. Each test fails without its defence. */
#include "fixture.h"
#include "kc_secret.h"
#include "kc_store_int.h"
#include "kc_manifest.h"
#include "kc_util.h"

#include <jansson.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <fcntl.h>

#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PIN "--pin-source", "env:TEST_PIN"
#define SOPIN "--so-pin-source", "env:TEST_SO_PIN"

static char P[8][1100];

static const char *path(int slot, const char *name)
{
    snprintf(P[slot], sizeof(P[slot]), "%s", kc_test_path(name));
    return P[slot];
}

/* attack_p11 plant-data / plant-secret: no PIN, a read-write session. */
static int plant(const char *kind, const char *vault, const char *label, const char *arg)
{
    char *out = NULL;
    int rc = kc_test_sh(&out, "'%s' plant-%s '%s' '%s' '%s' '%s'", KC_ATTACK_P11, kind,
                        KC_SOFTHSM_MODULE, vault, label, arg);

    if (rc != 0)
        fprintf(stderr, "\n%s\n", out);
    return rc;
}

/* --- attacker 3: the user PIN and another PKCS#11 tool; attacker 1: token files --- */

/* Attacker 3 (docs/security.md): the user PIN and any PKCS#11 tool. The
 * helper tries every way the module offers to bring the root key out in
 * clear; a software key (testing only, readable by design) shows that it
 * does notice a key that comes out. */
static void test_attack_user_pin_holder(void)
{
    char *out = NULL;
    int rc;

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    ASSERT_RC(kc_test_run("key", "create", "VaultA1/Soft", "--size", "2048", "--protection",
                          "software", PIN, NULL),
              0);
    ASSERT_RC(kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain")), 0);
    ASSERT_RC(
        kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL), 0);
    rc = kc_test_sh(&out, "ATTACK_PIN=\"$TEST_PIN\" '%s' extract '%s' VaultA1 Key001",
                    KC_ATTACK_P11, KC_SOFTHSM_MODULE);
    if (rc != 0)
        fprintf(stderr, "\n%s\n", out);
    CU_ASSERT_EQUAL(rc, 0);
    ASSERT_HAS(out, "held: ");
    /* it did wrap the key under the domain's trusted key, and got nowhere */
    ASSERT_HAS(out, "under 'keycustody-domain-wrap'");
    ASSERT_HAS(out, "6 secret keys on the token");
    rc = kc_test_sh(&out, "ATTACK_PIN=\"$TEST_PIN\" '%s' extract '%s' VaultA1 Soft", KC_ATTACK_P11,
                    KC_SOFTHSM_MODULE);
    CU_ASSERT_EQUAL(rc, 1);
    ASSERT_HAS(out, "BROKEN: the private exponent of 'Soft' is readable");
    /* and the vault still works after all that poking */
    ASSERT_RC(
        kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k2.backup"), PIN, NULL),
        0);
}

/* Every CKA_VALUE in the token's object files as softhsm2-dump-file shows
 * it (private ones are ciphertext to the attacker, public ones are clear),
 * with the label of its object. */
typedef struct file_value {
    char label[64];
    unsigned char v[4096];
    size_t len;
} file_value;

static size_t dump_values(const char *tokens, file_value *vals, size_t cap)
{
    char cmd[1300], line[512], hexline[64];
    unsigned char label[64];
    size_t n = 0, want = 0, got = 0, label_len = 0, label_want = 0;
    int in_value = 0, in_label = 0, next_is_len = 0, which = 0;
    unsigned b[8];
    FILE *p;
    int k, i;

    snprintf(cmd, sizeof(cmd),
             "for f in '%s'/*/*.object; do echo \"== $f\"; softhsm2-dump-file \"$f\"; done",
             tokens);
    p = popen(cmd, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    while (fgets(line, sizeof(line), p) != NULL) {
        if (strncmp(line, "== ", 3) == 0) {
            label_len = 0;
            continue;
        }
        if (strstr(line, " CKA_VALUE\n") != NULL || strstr(line, " CKA_LABEL\n") != NULL) {
            which = strstr(line, "CKA_VALUE") != NULL ? 1 : 2;
            next_is_len = 2; /* the type line, then the length line */
            continue;
        }
        if (next_is_len > 0) {
            unsigned long l;
            const char *at = strstr(line, "(length ");
            if (--next_is_len == 0 && at != NULL && sscanf(at, "(length %lu)", &l) == 1) {
                if (which == 1 && n < cap && l <= sizeof(vals[0].v)) {
                    in_value = 1;
                    want = l;
                    got = 0;
                    memcpy(vals[n].label, label, label_len < 63 ? label_len : 63);
                    vals[n].label[label_len < 63 ? label_len : 63] = '\0';
                } else if (which == 2 && l < sizeof(label)) {
                    in_label = 1;
                    label_want = l;
                    label_len = 0;
                }
            }
            continue;
        }
        if (in_value || in_label) {
            snprintf(hexline, sizeof(hexline), "%.23s", line);
            k = sscanf(hexline, "%x %x %x %x %x %x %x %x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
                       &b[6], &b[7]);
            for (i = 0; i < k; i++) {
                if (in_value && got < want)
                    vals[n].v[got++] = (unsigned char)b[i];
                else if (in_label && label_len < label_want)
                    label[label_len++] = (unsigned char)b[i];
            }
            if (in_value && got >= want) {
                vals[n++].len = want;
                in_value = 0;
            }
            if (in_label && label_len >= label_want)
                in_label = 0;
        }
    }
    pclose(p);
    return n;
}

/* Whether key opens blob as RFC 5649 or RFC 3394 key wrap. */
static int aes_unwraps(const unsigned char *key, size_t klen, const unsigned char *blob,
                       size_t blen)
{
    static const char *ciphers[3][2] = {{"id-aes128-wrap-pad", "id-aes128-wrap"},
                                        {"id-aes192-wrap-pad", "id-aes192-wrap"},
                                        {"id-aes256-wrap-pad", "id-aes256-wrap"}};
    unsigned char out[8192];
    int len = 0, fin = 0, ok = 0, c;

    if ((klen != 16 && klen != 24 && klen != 32) || blen > sizeof(out))
        return 0;
    for (c = 0; c < 2 && !ok; c++) {
        EVP_CIPHER *ciph = EVP_CIPHER_fetch(NULL, ciphers[klen / 8 - 2][c], NULL);
        EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
        ok = ciph != NULL && x != NULL && EVP_DecryptInit_ex(x, ciph, NULL, key, NULL) == 1 &&
             EVP_DecryptUpdate(x, out, &len, blob, (int)blen) == 1 &&
             EVP_DecryptFinal_ex(x, out + len, &fin) == 1 && len > 0;
        EVP_CIPHER_CTX_free(x);
        EVP_CIPHER_free(ciph);
    }
    return ok;
}

/* Attacker 1: the token directory and a backup, no PIN. */
static void test_attack_token_files_and_backup(void)
{
    static file_value vals[64];
    unsigned char *file, *blob;
    size_t len, nvals, i, j, k, blen, tried = 0, wrap_values = 0;
    json_t *doc, *ver;
    char tokens[1100];

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    ASSERT_RC(kc_test_run("key", "create", "VaultA1/Soft", "--size", "2048", "--protection",
                          "software", PIN, NULL),
              0);
    ASSERT_RC(kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain")), 0);
    ASSERT_RC(kc_test_run("key", "rotate", "VaultA1/Key001", PIN, NULL), 0);
    ASSERT_RC(
        kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL), 0);
    ASSERT_RC(kc_test_run("key", "backup", "VaultA1/Soft", "--out", path(5, "s.backup"), PIN, NULL),
              0);
    snprintf(tokens, sizeof(tokens), "%s", kc_test_path("tokens"));
    nvals = dump_values(tokens, vals, sizeof(vals) / sizeof(vals[0]));
    /* the attacker does see the trusted wrap key's value: it is public */
    for (i = 0; i < nvals; i++)
        if (strcmp(vals[i].label, "keycustody-domain-wrap") == 0 && vals[i].len == 32)
            wrap_values++;
    CU_ASSERT_EQUAL(wrap_values, 1);
    for (k = 4; k <= 5; k++) {
        file = kc_test_read(P[k], &len);
        CU_ASSERT_PTR_NOT_NULL_FATAL(file);
        doc = json_loadb((const char *)file + 16, len - 48, 0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(doc);
        json_array_foreach(json_object_get(json_object_get(doc, "key"), "versions"), j, ver)
        {
            blob = kc_b64url_decode(json_string_value(json_object_get(ver, "private_key")), &blen);
            CU_ASSERT_PTR_NOT_NULL_FATAL(blob);
            for (i = 0; i < nvals; i++) {
                /* the blob as it is, and with a 12-byte IV and 16-byte tag taken off */
                tried += 2;
                CU_ASSERT_FALSE(aes_unwraps(vals[i].v, vals[i].len, blob, blen));
                CU_ASSERT_FALSE(blen > 28 &&
                                aes_unwraps(vals[i].v, vals[i].len, blob + 12, blen - 28));
            }
            free(blob);
        }
        json_decref(doc);
        free(file);
    }
    CU_ASSERT(tried > 0);
}

/* --- attacker 2: a read-write session, no PIN: planted public objects --- */

/* A public copy of the key state, of a higher generation, would bring a
 * soft-deleted key back (and could change any key's record). */
static void test_planted_key_state(void)
{
    static const char forged[] = "{\"kind\":\"keycustody-keys\",\"schema\":1,\"generation\":999,"
                                 "\"vault\":\"VaultA1\",\"keys\":{}}";
    const kc_test_out *r;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    ASSERT_RC(kc_test_run("key", "delete", "VaultA1/Key001", PIN, NULL), 0);
    kc_test_write(path(0, "forged.json"), forged, strlen(forged), 0600);
    CU_ASSERT_EQUAL_FATAL(plant("data", "VaultA1", "keycustody-keys", P[0]), 0);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "public data object(s) named like its key state ('keycustody-keys')");
    ASSERT_HAS(r->err, "planted");
    r = kc_test_run("key", "create", "VaultA1/Key002", "--size", "2048", PIN, NULL);
    ASSERT_RC(r, 8);
    r = kc_test_run("key", "recover", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 8);
}

/* Public secret keys with the domain's labels and id, planted on a new vault
 * before it joins: taken for the domain, they would let a forged backup
 * (MAC and wrap under the attacker's value) restore an attacker-known key. */
static void test_planted_domain_keys_before_join(void)
{
    static const char *labels[] = {"keycustody-domain-wrap", "keycustody-domain-unwrap",
                                   "keycustody-domain-seal", "keycustody-domain-software",
                                   "keycustody-domain-mac"};
    const kc_test_out *r;
    unsigned char *file;
    const char *id;
    json_t *doc;
    size_t len, i;
    char idhex[40];

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_vault("VaultA3", "contoso-a", "westus");
    ASSERT_RC(kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain")), 0);
    file = kc_test_read(P[3], &len);
    doc = json_loadb((const char *)file, len, 0, NULL);
    id = json_string_value(json_object_get(doc, "domain_id"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    snprintf(idhex, sizeof(idhex), "%s", id);
    json_decref(doc);
    free(file);
    for (i = 0; i < sizeof(labels) / sizeof(labels[0]); i++)
        CU_ASSERT_EQUAL_FATAL(plant("secret", "VaultA3", labels[i], idhex), 0);
    r = kc_test_run("subscription", "join", "contoso-a", "--vault", "VaultA3", "--domain", P[3],
                    "--share-key", path(4, "alice-key.pem"), "--share-key", path(5, "bob-key.pem"),
                    SOPIN, PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "labelled 'keycustody-domain-wrap' that keycustody did not make there (not "
                       "trusted by the security officer)");
    r = kc_test_run("vault", "show", "VaultA3", NULL);
    ASSERT_HAS(r->out, "backup domain:     (none");
}

/* The same planted after the domain is installed: backup and restore refuse
 * to run rather than pick one. */
static void test_planted_domain_key_after_install(void)
{
    const kc_test_out *r;

    kc_test_custodians();
    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    ASSERT_RC(kc_test_domain("contoso-a", "VaultA1", path(3, "a.domain")), 0);
    ASSERT_RC(
        kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(4, "k.backup"), PIN, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(plant("secret", "VaultA1", "keycustody-domain-mac", "00"), 0);
    r = kc_test_run("key", "backup", "VaultA1/Key001", "--out", path(5, "k2.backup"), PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "labelled 'keycustody-domain-mac' that keycustody did not make there "
                       "(public, or a second copy)");
}

/* A public audit key: records sealed under a key the attacker knows. */
static void test_planted_audit_key(void)
{
    const kc_test_out *r;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    CU_ASSERT_EQUAL_FATAL(plant("secret", "VaultA1", "keycustody-audit", "00"), 0);
    r = kc_test_run("key", "create", "VaultA1/Key001", "--size", "2048", PIN, NULL);
    /* the command's record is not sealed under the planted key, and the
     * command fails saying why */
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "public key(s) labelled 'keycustody-audit' that keycustody did not make");
    r = kc_test_run("audit", "verify", PIN, NULL);
    ASSERT_RC(r, 8);
    setenv("KC_TEST_AUDIT_TAMPERED", "1", 1); /* teardown: this log cannot verify */
}

/* --- attacker 6: the layout author --- */

/* A layout's module: is code keycustody would load and hand the PINs to. */
static void test_layout_module_not_allowed(void)
{
    const char *layout;
    const kc_test_out *r;
    char line[1200], mark[1100];

    snprintf(mark, sizeof(mark), "%s", kc_test_path("evil-ran"));
    setenv("KC_EVIL_MARK", mark, 1);
    unsetenv("KEYCUSTODY_MODULE");
    snprintf(line, sizeof(line), "    module: %s\n    purge_protection: true\n", KC_EVIL_MODULE);
    layout = kc_test_layout("    purge_protection: true\n", line);
    r = kc_test_run("policy", "plan", layout, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, KC_EVIL_MODULE);
    ASSERT_HAS(r->err, "is not allowed: it is not registered with p11-kit");
    ASSERT_HAS(r->err, "nothing was loaded");
    CU_ASSERT_NOT_EQUAL(access(mark, F_OK), 0);
    /* an allow-list others can write is not believed */
    snprintf(line, sizeof(line), "%s\n", KC_EVIL_MODULE);
    kc_test_write(path(0, "modules.allow"), line, strlen(line), 0666);
    CU_ASSERT_EQUAL(chmod(P[0], 0666), 0);
    setenv("KEYCUSTODY_MODULES_ALLOW", P[0], 1);
    r = kc_test_run("policy", "plan", layout, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "which is not believed: others can write it");
    CU_ASSERT_NOT_EQUAL(access(mark, F_OK), 0);
    /* the operator's own list is: then it is loaded (and is no module) */
    CU_ASSERT_EQUAL(chmod(P[0], 0644), 0);
    r = kc_test_run("policy", "plan", layout, NULL);
    CU_ASSERT_NOT_EQUAL(r->rc, 6);
    CU_ASSERT_EQUAL(access(mark, F_OK), 0);
    unsetenv("KEYCUSTODY_MODULES_ALLOW");
    unsetenv("KC_EVIL_MARK");
}

/* A registered module (SoftHSM's, through its /usr/lib/softhsm link) and
 * the operator's --module are loaded as before. */
static void test_layout_module_registered(void)
{
    const char *layout;
    char line[1200];

    unsetenv("KEYCUSTODY_MODULE");
    snprintf(line, sizeof(line), "    module: %s\n    purge_protection: true\n", KC_SOFTHSM_MODULE);
    layout = kc_test_layout("    purge_protection: true\n", line);
    ASSERT_RC(kc_test_run("policy", "apply", layout, "--yes", NULL), 0);
    snprintf(line, sizeof(line), "    module: %s\n    purge_protection: true\n", KC_EVIL_MODULE);
    layout = kc_test_layout("    purge_protection: true\n", line);
    ASSERT_RC(kc_test_run("policy", "plan", layout, "--module", KC_SOFTHSM_MODULE, NULL), 0);
}

/* --- attacker 4: writes the service store file, no PIN --- */

/* The layout applied, a service vault, and a DEP in the store named by
 * store (a path or a URI). */
static void store_setup_at(const char *store)
{
    char at[1400]; /* store may be a fixture's static buffer */
    const char *file;

    snprintf(at, sizeof(at), "%s", store);
    file = kc_test_layout(NULL, NULL);
    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    kc_test_vault("Service", "sub-svc", "centralus");
    setenv("KEYCUSTODY_STORE", at, 1);
    setenv("KEYCUSTODY_SERVICE_VAULT", "Service", 1);
    /* the service's PIN source: the store's rows are checked on its vault */
    setenv("KEYCUSTODY_SERVICE_PIN_SOURCE", "env:TEST_PIN", 1);
    ASSERT_RC(kc_test_run("dep", "create", "Ten", "--keys", "VaultA1/KeyA,VaultB1/KeyB",
                          "--workload", "tenant", "--pin-source", "Service=env:TEST_PIN", "--as",
                          "svc", NULL),
              0);
}

static void store_setup(void)
{
    store_setup_at(kc_test_store());
}

static int sql(const char *fmt, ...) KC_PRINTF(1, 2);

/* A trigger planted with sqlite3 (or psql) would run inside keycustody on
 * its own writes (here: every new assignment quietly moved to another DEP). */
static void test_store_trigger(void)
{
    const kc_test_out *r;

    store_setup();
    CU_ASSERT_EQUAL_FATAL(
        sql("%s", kc_test_on_pg()
                      ? "CREATE FUNCTION steer() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN "
                        "UPDATE assignments SET dep_id = NEW.dep_id; RETURN NULL; END'; CREATE "
                        "TRIGGER steer AFTER INSERT ON assignments FOR EACH ROW EXECUTE FUNCTION "
                        "steer()"
                      : "CREATE TRIGGER steer AFTER INSERT ON assignments BEGIN UPDATE "
                        "assignments SET dep_id = NEW.dep_id; END;"),
        0);
    r = kc_test_run("dep", "assign", "Ten", "--tenant", NULL);
    ASSERT_RC(r, 8);
    /* on PostgreSQL the function comes first in the comparison */
    ASSERT_HAS(r->err, kc_test_on_pg() ? "does not have the schema keycustody made: function "
                                         "'steer()' was added"
                                       : "does not have the schema keycustody made: trigger "
                                         "'steer' was added");
    r = kc_test_run("dep", "list", NULL);
    ASSERT_RC(r, 8);
    unsetenv("KEYCUSTODY_STORE"); /* the teardown verifies the log, not this store */
}

/* A table redefined (here: the CHECK on a DEP key's slot dropped), an index
 * or a table added. */
static void test_store_schema_changed(void)
{
    const kc_test_out *r;

    store_setup();
    CU_ASSERT_EQUAL_FATAL(sql("CREATE INDEX planted ON deps (name)"), 0);
    r = kc_test_run("dep", "list", NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "index 'planted' was added");
    /* a table with its key's index and columns is named as the table */
    CU_ASSERT_EQUAL_FATAL(sql("DROP INDEX planted; CREATE TABLE extra (x INTEGER PRIMARY KEY, y "
                              "TEXT); CREATE INDEX extra_y ON extra (y)"),
                          0);
    r = kc_test_run("dep", "list", NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, kc_test_on_pg() ? "relation 'extra' was added" : "table 'extra' was added");
    unsetenv("KEYCUSTODY_STORE");
}

/* A user's search_path that puts another schema before pg_catalog (here
 * the role's own: kc, public, pg_catalog) lets whoever can create in that
 * schema shadow the functions keycustody calls. The one planted here is the
 * writers' lock: chosen, it would take no lock (two writers no longer
 * queue) and record each call. keycustody resolves names in pg_catalog
 * first and in the store's schema alone, so it is never called. */
static void test_store_shadowed_function(void)
{
    char uri[1400];
    const kc_test_out *r;

    if (!kc_test_on_pg())
        return; /* SQLite has no schemas of other users to search */
    CU_ASSERT_EQUAL_FATAL(
        sql("CREATE SCHEMA kc; CREATE TABLE public.seen (n int); CREATE FUNCTION "
            "public.pg_advisory_xact_lock(bigint) RETURNS void LANGUAGE sql AS "
            "'INSERT INTO public.seen VALUES (1)'; CREATE FUNCTION "
            "public.pg_advisory_xact_lock_shared(bigint) RETURNS void LANGUAGE sql AS "
            "'INSERT INTO public.seen VALUES (2)'"),
        0);
    snprintf(uri, sizeof(uri), "%s&options=-csearch_path%%3Dkc,public,pg_catalog", kc_test_store());
    store_setup_at(uri);
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    r = kc_test_run("dep", "list", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "Ten");
    /* the store is in kc, as the search_path named it first */
    CU_ASSERT_EQUAL(sql("SELECT 1/count(*) FROM kc.deps"), 0);
    /* and the planted lock was never called */
    CU_ASSERT_EQUAL(sql("SELECT 1/(1 - sign(count(*))::int) FROM public.seen"), 0);
    unsetenv("KEYCUSTODY_STORE");
}

/* A store others can write, or a link to one, is not believed. */
static void test_store_file_rights(void)
{
    const kc_test_out *r;
    char link[1100];

    if (kc_test_on_pg())
        return; /* a database's rights are the server's: no file of the store's to open */
    store_setup();
    CU_ASSERT_EQUAL(chmod(kc_test_path("service.db"), 0666), 0);
    r = kc_test_run("dep", "list", NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "has mode 0666: others can write it");
    CU_ASSERT_EQUAL(chmod(kc_test_path("service.db"), 0600), 0);
    snprintf(link, sizeof(link), "%s", kc_test_path("link.db"));
    CU_ASSERT_EQUAL(symlink(kc_test_path("service.db"), link), 0);
    r = kc_test_run("dep", "list", "--store", link, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "is a symbolic link");
    ASSERT_RC(kc_test_run("dep", "list", NULL), 0);
}

/* --- attacker 4: rows written with sqlite3 --- */

/* Runs SQL on the service store with the sqlite3 CLI (psql for a
 * PostgreSQL store), as the attacker does. */
static int sql(const char *fmt, ...)
{
    char stmt[4096], *out = NULL;
    va_list ap;
    int rc;

    va_start(ap, fmt);
    vsnprintf(stmt, sizeof(stmt), fmt, ap);
    va_end(ap);
    if (kc_test_on_pg())
        rc = kc_test_sh(&out, "psql -X -q -v ON_ERROR_STOP=1 -d '%s' -c \"%s\"", kc_test_store(),
                        stmt);
    else
        rc = kc_test_sh(&out, "sqlite3 '%s' \"%s\"", kc_test_store(), stmt);
    if (rc != 0)
        fprintf(stderr, "\n%s: %s\n", stmt, out);
    return rc;
}

/* The bytes of file as an SQL blob the store's backend reads. */
static const char *blob_of(const char *file)
{
    static char lit[4096];
    unsigned char *b;
    size_t len = 0, i, o;

    if (!kc_test_on_pg()) {
        snprintf(lit, sizeof(lit), "readfile('%s')", file);
        return lit;
    }
    b = kc_test_read(file, &len);
    o = (size_t)snprintf(lit, sizeof(lit), "decode('");
    for (i = 0; b != NULL && i < len && o + 16 < sizeof(lit); i++)
        o += (size_t)snprintf(lit + o, sizeof(lit) - o, "%02x", b[i]);
    snprintf(lit + o, sizeof(lit) - o, "', 'hex')");
    free(b);
    return lit;
}

/* data put of a small item into scope, as the service does it. */
static const kc_test_out *put_item(const char *scope, const char *name)
{
    kc_test_write(kc_test_path("item.txt"), "mail", 4, 0600);
    return kc_test_run("data", "put", scope, name, "--in", kc_test_path("item.txt"), "--as", "svc",
                       PIN, NULL);
}

/* The attack of the trust issue: slot 0 of the tenant DEP replaced by an
 * RSA-OAEP encryption, under vault A's public key (no PIN needed), of a key
 * the attacker knows. Unrefused, every new scope key would be wrapped under
 * it, and the attacker could read each item put there. */
static void test_store_wrapped_key_replaced(void)
{
    const kc_test_out *r;
    char *out = NULL;

    store_setup();
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    ASSERT_RC(put_item("tenant", "before"), 0);
    ASSERT_RC(kc_test_run("key", "export-public", "VaultA1/KeyA", "--out", path(0, "a.pem"), "--as",
                          "svc", NULL),
              0);
    CU_ASSERT_EQUAL_FATAL(
        kc_test_sh(&out,
                   "head -c 32 /dev/urandom > '%s' && openssl pkeyutl -encrypt -pubin -inkey '%s' "
                   "-in '%s' -out '%s' -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 "
                   "-pkeyopt rsa_mgf1_md:sha256",
                   path(1, "attacker.key"), path(0, "a.pem"), path(1, "attacker.key"),
                   path(2, "attacker.oaep")),
        0);
    CU_ASSERT_EQUAL_FATAL(
        sql("UPDATE dep_keys SET wrapped = %s, alg = 'RSA-OAEP-256' WHERE slot = 0",
            blob_of(path(2, "attacker.oaep"))),
        0);
    r = put_item("mailbox:new", "steered");
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "wrapped key of DEP 'Ten' (generation 1, slot 0) fails its MAC");
    ASSERT_HAS(r->err, "made or changed outside keycustody, and is not used");
    r = kc_test_run("data", "get", "tenant", "before", "--out", path(3, "before.out"), "--as",
                    "svc", PIN, NULL);
    ASSERT_RC(r, 8);
    r = kc_test_run("dep", "refresh", "Ten", "--roll", "--as", "svc", PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "slot 0) fails its MAC");
    unsetenv("KEYCUSTODY_STORE");
}

/* Assignments steered: the tenant moved to another DEP, a mailbox given
 * the tenant row's MAC, a disabled DEP enabled, a DEP row planted. */
static void test_store_rows_steered(void)
{
    const kc_test_out *r;

    store_setup();
    ASSERT_RC(kc_test_run("dep", "create", "Ten2", "--keys", "VaultA1/KeyA,VaultB1/KeyB",
                          "--workload", "tenant", "--as", "svc", NULL),
              0);
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    ASSERT_RC(put_item("tenant", "t"), 0);
    /* the tenant's assignment moved to Ten2 */
    CU_ASSERT_EQUAL_FATAL(sql("UPDATE assignments SET dep_id = (SELECT id FROM deps WHERE name = "
                              "'Ten2') WHERE scope = 'tenant'"),
                          0);
    r = put_item("mailbox:m1", "x");
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "assignment of scope 'tenant' fails its MAC");
    r = kc_test_run("rewrap", "--as", "svc", PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "assignment of scope 'tenant' fails its MAC");
    CU_ASSERT_EQUAL_FATAL(sql("UPDATE assignments SET dep_id = (SELECT id FROM deps WHERE name = "
                              "'Ten') WHERE scope = 'tenant'"),
                          0);
    ASSERT_RC(put_item("mailbox:m1", "x"), 0); /* the row as keycustody wrote it */
    /* a row of its own for another scope, with the tenant row's MAC */
    CU_ASSERT_EQUAL_FATAL(sql("INSERT INTO assignments SELECT 'mailbox:m2', dep_id, mac FROM "
                              "assignments WHERE scope = 'tenant'"),
                          0);
    r = put_item("mailbox:m2", "x");
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "assignment of scope 'mailbox:m2' fails its MAC");
    CU_ASSERT_EQUAL_FATAL(sql("DELETE FROM assignments WHERE scope = 'mailbox:m2'"), 0);
    /* a disabled DEP enabled again */
    ASSERT_RC(kc_test_run("dep", "set", "Ten2", "--enabled", "false", NULL), 0);
    CU_ASSERT_EQUAL_FATAL(sql("UPDATE deps SET enabled = 1 WHERE name = 'Ten2'"), 0);
    r = kc_test_run("dep", "assign", "Ten2", "--tenant", NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "record of DEP 'Ten2' fails its MAC");
    CU_ASSERT_EQUAL_FATAL(sql("UPDATE deps SET enabled = 0 WHERE name = 'Ten2'"), 0);
    /* a DEP planted: Ten's row and keys under a new id and name */
    CU_ASSERT_EQUAL_FATAL(
        sql("INSERT INTO deps SELECT 'f0000000-0000-4000-8000-000000000000', 'Planted', workload, "
            "principal, geo, description, enabled, created, generation, purge_requested, "
            "purge_reason, purge_contact, purged, mac FROM deps WHERE name = 'Ten'; INSERT INTO "
            "dep_keys SELECT 'f0000000-0000-4000-8000-000000000000', generation, slot, vault, "
            "key, version, alg, wrapped, kcv, mac FROM dep_keys WHERE dep_id = (SELECT id FROM "
            "deps WHERE name = 'Ten')"),
        0);
    r = kc_test_run("dep", "assign", "Planted", "--tenant", NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "record of DEP 'Planted' fails its MAC");
    /* shown, unchecked, by the commands that only show; checked by any that use it */
    ASSERT_RC(kc_test_run("dep", "list", NULL), 0);
    r = kc_test_run("dep", "list", "--pin-source", "Service=env:TEST_PIN", NULL);
    ASSERT_RC(r, 0);
    unsetenv("KEYCUSTODY_STORE");
}

/* The store's record of its service vault, a re-wrap job and a break-glass
 * use, each written with sqlite3. */
static void test_store_records_forged(void)
{
    const kc_test_out *r;

    store_setup();
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    CU_ASSERT_EQUAL_FATAL(sql("INSERT INTO rewrap_progress VALUES ('rewrap', "
                              "'2026-01-01T00:00:00Z', 0, 5, NULL)"),
                          0);
    r = kc_test_run("rewrap", "--as", "svc", PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "re-wrap job record has no MAC");
    CU_ASSERT_EQUAL_FATAL(sql("DELETE FROM rewrap_progress"), 0);
    CU_ASSERT_EQUAL_FATAL(sql("INSERT INTO break_glass SELECT '2026-01-01T00:00:00Z', id, 'svc', "
                              "NULL FROM deps WHERE name = 'Ten'"),
                          0);
    r = put_item("tenant", "x");
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "break-glass record of DEP 'Ten' has no MAC");
    CU_ASSERT_EQUAL_FATAL(sql("DELETE FROM break_glass"), 0);
    ASSERT_RC(put_item("tenant", "x"), 0);
    /* the service vault named by the store: another vault, then none */
    CU_ASSERT_EQUAL_FATAL(sql("UPDATE store_meta SET value = 'VaultA1'"), 0);
    r = put_item("tenant", "y");
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "the service store belongs to service vault 'VaultA1', not 'Service'");
    unsetenv("KEYCUSTODY_SERVICE_VAULT");
    r = put_item("tenant", "y");
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "service vault 'VaultA1' holds no store key");
    CU_ASSERT_EQUAL_FATAL(sql("DELETE FROM store_meta"), 0);
    r = put_item("tenant", "y");
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "holds 1 DEP(s) but records no service vault");
    unsetenv("KEYCUSTODY_STORE");
}

/* Slot 0 of Ten made to hold Ten2's wrapped key, with a valid MAC: what a
 * writer holding the row key could do by mistake. Both copies unwrap under
 * vault A's key, so only the check value tells them apart. */
static void test_store_copy_of_another_key(void)
{
    static const char q[] =
        "SELECT d.dep_id, d.generation, d.vault, d.key, d.version, d.alg, d.kcv, o.wrapped FROM "
        "dep_keys d, dep_keys o WHERE d.slot = 0 AND o.slot = 0 AND d.dep_id = (SELECT id FROM "
        "deps WHERE name = 'Ten') AND o.dep_id = (SELECT id FROM deps WHERE name = 'Ten2')";
    unsigned char mac[32];
    kc_q *s = NULL, *u = NULL;
    kc_store *st = NULL;
    kc_ctx *ctx = NULL;
    const kc_test_out *r;
    kc_error err;
    kc_row row;

    store_setup();
    ASSERT_RC(kc_test_run("dep", "create", "Ten2", "--keys", "VaultA1/KeyA,VaultB1/KeyB",
                          "--workload", "tenant", "--as", "svc", NULL),
              0);
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    CU_ASSERT_EQUAL_FATAL(kc_ctx_new(KC_SOFTHSM_MODULE, kc_test_env_pin, NULL, &ctx, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_store_open(kc_test_store(), &st, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_store_authenticate(ctx, st, "Service", 0, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_q_prepare(st, q, &s), KC_Q_OK);
    CU_ASSERT_EQUAL_FATAL(kc_q_step(s), KC_Q_ROW);
    kc_row_init(&row, "dep_keys");
    kc_row_cols(&row, s, 0, 2);
    kc_row_int(&row, 0);
    kc_row_cols(&row, s, 2, 4);
    kc_row_col(&row, s, 7); /* Ten2's copy */
    kc_row_col(&row, s, 6); /* Ten's check value */
    CU_ASSERT_EQUAL_FATAL(kc_row_seal(st, &row, mac, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_q_prepare(st,
                                       "UPDATE dep_keys SET wrapped = ?, mac = ? WHERE "
                                       "dep_id = ? AND slot = 0",
                                       &u),
                          KC_Q_OK);
    kc_q_bind_blob(u, 1, kc_q_blob(s, 7), kc_q_bytes(s, 7));
    kc_q_bind_blob(u, 2, mac, sizeof(mac));
    kc_q_bind_text(u, 3, (const char *)kc_q_text(s, 0));
    CU_ASSERT_EQUAL(kc_q_step(u), KC_Q_DONE);
    kc_q_finish(u);
    kc_q_finish(s);
    kc_store_close(st);
    kc_ctx_free(ctx);
    r = put_item("mailbox:new", "x");
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "DEP 'Ten': the copy in slot 0 (vault 'VaultA1') unwraps to another key "
                       "than the DEP's check value names");
    unsetenv("KEYCUSTODY_STORE");
}

/* Without the service vault's PIN no row can be checked, so a command that
 * uses them stops before reading one, and says which PIN it needs. */
static void test_store_needs_service_pin(void)
{
    const kc_test_out *r;

    store_setup();
    unsetenv("KEYCUSTODY_SERVICE_PIN_SOURCE");
    r = kc_test_run("dep", "assign", "Ten", "--tenant", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "no PIN source for vault 'Service'");
    kc_test_write(kc_test_path("item.txt"), "mail", 4, 0600);
    r = kc_test_run("data", "put", "tenant", "x", "--in", kc_test_path("item.txt"), "--as", "svc",
                    "--pin-source", "VaultA1=env:TEST_PIN", "--pin-source", "VaultB1=env:TEST_PIN",
                    NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "no PIN source for vault 'Service'");
    ASSERT_RC(kc_test_run("dep", "show", "Ten", NULL), 0); /* shows, checks nothing */
    unsetenv("KEYCUSTODY_STORE");
}

static const kc_test_case store_cases[] = {
    {"a wrapped DEP key replaced", test_store_wrapped_key_replaced},
    {"assignments and DEP rows steered", test_store_rows_steered},
    {"the service vault, job and break-glass records", test_store_records_forged},
    {"a copy that unwraps to another DEP key", test_store_copy_of_another_key},
    {"no service vault PIN", test_store_needs_service_pin},
    {"a planted trigger", test_store_trigger},
    {"a changed schema", test_store_schema_changed},
    {"a function shadowed in another schema", test_store_shadowed_function},
    {"a store others can write, or a link", test_store_file_rights},
    {NULL, NULL},
};

/* --- attacker 5: writes the audit log file, no PIN --- */

/* The log's lines as the log writer rewrites them: every seal stripped,
 * record `change` given another result, and the hash chain recomputed. */
static void rewrite_log(const char *where, long change)
{
    unsigned char *buf, digest[32];
    char prev[65], log[1100], *line, *next, *text;
    size_t len = 0, k;
    FILE *out;
    json_t *rec;

    snprintf(log, sizeof(log), "%s", where); /* path() reuses the fixture's buffer */
    buf = kc_test_read(log, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    out = fopen(path(7, "rewritten.jsonl"), "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    memset(prev, '0', 64);
    prev[64] = '\0';
    for (line = (char *)buf; (next = strchr(line, '\n')) != NULL; line = next + 1) {
        *next = '\0';
        rec = json_loads(line, JSON_PRESERVE_ORDER, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
        json_object_set_new(rec, "prev", json_string(prev));
        json_object_set_new(rec, "sealed_by", json_null());
        json_object_set_new(rec, "mac", json_null());
        if (json_integer_value(json_object_get(rec, "seq")) == change)
            json_object_set_new(rec, "result", json_string("never happened"));
        text = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
        fprintf(out, "%s\n", text);
        SHA256((unsigned char *)text, strlen(text), digest);
        for (k = 0; k < 32; k++)
            snprintf(prev + 2 * k, 3, "%02x", digest[k]);
        free(text);
        json_decref(rec);
    }
    fclose(out);
    free(buf);
    CU_ASSERT_EQUAL(chmod(P[7], 0600), 0);
    CU_ASSERT_EQUAL(rename(P[7], log), 0);
}

/* Sealing must not bless a chain the log writer rebuilt: the vault checks
 * the record it anchored before it seals again. */
static void test_log_rewritten_then_sealed(void)
{
    const kc_test_out *r;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    kc_test_key("VaultA1/Key002", NULL);
    ASSERT_RC(kc_test_run("audit", "verify", PIN, NULL), 0);
    rewrite_log(kc_test_path("audit.jsonl"), 2);
    r = kc_test_run("key", "create", "VaultA1/Key003", "--size", "2048", PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "was modified or replaced since vault 'VaultA1' sealed and anchored it");
    r = kc_test_run("audit", "verify", PIN, NULL);
    ASSERT_RC(r, 8);
    setenv("KC_TEST_AUDIT_TAMPERED", "1", 1);
}

/* A record that claims a sealer nobody can see, with nothing after it. */
static void test_log_unknown_sealer(void)
{
    unsigned char *buf, digest[32];
    char prev[65], *last, *text;
    size_t len = 0, k;
    json_t *rec;
    FILE *out;
    const kc_test_out *r;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    buf = kc_test_read(kc_test_path("audit.jsonl"), &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    buf[len - 1] = '\0';
    last = strrchr((char *)buf, '\n');
    last = last != NULL ? last + 1 : (char *)buf;
    SHA256((unsigned char *)last, strlen(last), digest);
    for (k = 0; k < 32; k++)
        snprintf(prev + 2 * k, 3, "%02x", digest[k]);
    rec = json_loads(last, JSON_PRESERVE_ORDER, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
    json_object_set_new(rec, "seq",
                        json_integer(json_integer_value(json_object_get(rec, "seq")) + 1));
    json_object_set_new(rec, "command", json_string("key purge"));
    json_object_set_new(rec, "prev", json_string(prev));
    json_object_set_new(rec, "sealed_by", json_string("Ghost"));
    json_object_set_new(rec, "mac",
                        json_string("00000000000000000000000000000000000000000000000000"
                                    "00000000000000"));
    text = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
    out = fopen(kc_test_path("audit.jsonl"), "a");
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    fprintf(out, "%s\n", text);
    fclose(out);
    free(text);
    json_decref(rec);
    free(buf);
    r = kc_test_run("audit", "verify", PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "claims to be sealed by vault Ghost, which is not visible");
    ASSERT_HAS(r->err, "may be forged");
    setenv("KC_TEST_AUDIT_TAMPERED", "1", 1);
}

static const kc_test_case log_cases[] = {
    {"seals stripped, chain rebuilt, then sealed", test_log_rewritten_then_sealed},
    {"a record from a sealer nobody sees", test_log_unknown_sealer},
    {NULL, NULL},
};

/* --- PIN hygiene, and secrets in the process --- */

/* getopt would take '--pi' for '--pin-source'; the PIN typed after it must
 * not reach the audit log, so abbreviations are refused outright. */
static void test_pin_option_abbreviated(void)
{
    const kc_test_out *r;
    unsigned char *log;
    size_t len = 0;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    r = kc_test_run("key", "list", "VaultA1", "--pi", "typed-pin-4711", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "option '--pi' is short for '--pin-source': write options in full");
    r = kc_test_run("vault", "show", "VaultA1", "--so", "typed-pin-4711", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "option '--so' is short for '--so-pin-source'");
    r = kc_test_run("key", "list", "VaultA1", "--pin-source=typed-pin-4711", NULL);
    CU_ASSERT_NOT_EQUAL(r->rc, 0);
    log = kc_test_read(kc_test_path("audit.jsonl"), &len);
    CU_ASSERT_TRUE(log == NULL || strstr((const char *)log, "typed-pin-4711") == NULL);
    free(log);
    /* a value that merely looks like an option is a value */
    kc_test_key("VaultA1/Key001", NULL);
    ASSERT_RC(kc_test_run("key", "update", "VaultA1/Key001", "--tag", "note=--pi", PIN, NULL), 0);
}

/* A FIFO as a PIN file would block the open until someone writes to it; a
 * directory or a device is no PIN file either. Refused at once, saying what
 * the path is. */
static void test_pin_file_not_regular(void)
{
    char *out = NULL;
    int rc;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out, "mkfifo '%s'", path(0, "fifo.pin")), 0);
    rc = kc_test_sh(&out, "timeout 20 '%s' key list VaultA1 --pin-source 'file:%s'", KC_BINARY,
                    P[0]);
    CU_ASSERT_EQUAL(rc, 2);
    ASSERT_HAS(out, "is a FIFO, not a regular file");
    rc = kc_test_sh(&out, "timeout 20 '%s' key list VaultA1 --pin-source 'file:%s'", KC_BINARY,
                    kc_test_dir());
    CU_ASSERT_EQUAL(rc, 2);
    ASSERT_HAS(out, "is a directory, not a regular file");
    rc =
        kc_test_sh(&out, "timeout 20 '%s' key list VaultA1 --pin-source file:/dev/zero", KC_BINARY);
    CU_ASSERT_EQUAL(rc, 2);
    ASSERT_HAS(out, "is a character device, not a regular file");
}

/* A signal while the prompt has echo off gives the terminal back first. */
static void prompt_interrupted(const char *sig)
{
    char *out = NULL;
    int rc;

    rc = kc_test_sh(&out,
                    "script -qec 'sh -c \"(sleep 1; kill -%s \\$\\$) & exec %s key list "
                    "VaultA1\"; stty -a' /dev/null </dev/null",
                    sig, KC_BINARY);
    (void)rc;
    ASSERT_HAS(out, "Enter the user PIN for vault 'VaultA1': ");
    ASSERT_HAS(out, " echo ");
    CU_ASSERT_PTR_NULL(strstr(out, " -echo "));
}

/* SIGTSTP (Ctrl-Z) stops the command: it must give the terminal back with
 * echo on first. A job-control shell in its own pty runs it as a foreground
 * job (a process group of its own, not orphaned, so the stop really stops
 * it) and, once it has stopped, reads the terminal's modes. The stop comes
 * 2 s in: on a loaded machine the command may take a second to reach its
 * prompt. */
static void prompt_stopped(void)
{
    char *out = NULL, *after;

    (void)kc_test_sh(&out,
                     "script -qec 'bash -c \"set -m; (sleep 2; kill -TSTP \\$(cat %s)) & sh -c "
                     "\\\"echo \\\\$\\\\$ > %s; exec %s key list VaultA1\\\"; echo; echo "
                     "after-stop; ps -o stat= -p \\$(cat %s); stty -a; kill -9 \\$(cat %s)\"' "
                     "/dev/null </dev/null",
                     path(0, "kc.pid"), path(0, "kc.pid"), KC_BINARY, path(0, "kc.pid"),
                     path(0, "kc.pid"));
    ASSERT_HAS(out, "Enter the user PIN for vault 'VaultA1': ");
    after = out != NULL ? strstr(out, "after-stop") : NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(after);
    ASSERT_HAS(after, "\nT"); /* stopped, not ended */
    ASSERT_HAS(after, " echo ");
    CU_ASSERT_PTR_NULL(strstr(after, " -echo "));
}

static void test_prompt_signals(void)
{
    kc_test_vault("VaultA1", "contoso-a", "westus");
    prompt_interrupted("INT");
    prompt_interrupted("TERM");
    prompt_interrupted("HUP");
    prompt_stopped();
}

/* The item data put reads never goes through the ordinary heap unwiped:
 * free_probe, preloaded, watches every block handed back to malloc for a
 * marker the item is made of. (Not under AddressSanitizer, whose own malloc
 * must come first.) */
static void test_data_put_plaintext_wiped(void)
{
#if defined(__SANITIZE_ADDRESS__)
    CU_PASS("the probe replaces malloc's free, which AddressSanitizer owns");
#else
    unsigned char rnd[8];
    char marker[64], hex[17], item[8192], *out = NULL;
    size_t i;

    store_setup();
    ASSERT_RC(kc_test_run("dep", "assign", "Ten", "--tenant", NULL), 0);
    CU_ASSERT_EQUAL_FATAL(RAND_bytes(rnd, sizeof(rnd)), 1);
    kc_hex_encode(rnd, sizeof(rnd), hex);
    snprintf(marker, sizeof(marker), "plaintext-%s", hex);
    for (i = 0; i + strlen(marker) <= sizeof(item); i += strlen(marker))
        memcpy(item + i, marker, strlen(marker));
    kc_test_write(path(0, "item.bin"), item, i, 0600);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "LD_PRELOAD='%s' KC_PROBE_MARKER='%s' KC_PROBE_OUT='%s' '%s' data "
                               "put tenant probed --in '%s' --as svc --pin-source env:TEST_PIN",
                               KC_FREE_PROBE, marker, path(1, "probe.out"), KC_BINARY,
                               path(0, "item.bin")),
                    0);
    ASSERT_HAS(out, "put 'probed' in scope 'tenant'");
    CU_ASSERT_NOT_EQUAL(access(path(1, "probe.out"), F_OK), 0);
    /* and data get, which decrypts it into a secret and writes the file from there */
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "LD_PRELOAD='%s' KC_PROBE_MARKER='%s' KC_PROBE_OUT='%s' '%s' data "
                               "get tenant probed --out '%s' --as svc --pin-source env:TEST_PIN "
                               "&& cmp '%s' '%s'",
                               KC_FREE_PROBE, marker, path(1, "probe.out"), KC_BINARY,
                               path(2, "item.out"), path(0, "item.bin"), path(2, "item.out")),
                    0);
    CU_ASSERT_NOT_EQUAL(access(path(1, "probe.out"), F_OK), 0);
    unsetenv("KEYCUSTODY_STORE");
#endif
}

/* Two secrets; releasing one leaves the other locked. */
static void test_secrets_locked_pool(void)
{
    kc_secret *a = kc_secret_dup("first secret", 12), *b = kc_secret_dup("second secret", 13);

    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_TRUE(kc_secret_is_locked_pool(a));
    CU_ASSERT_TRUE(kc_secret_is_locked_pool(b));
    kc_secret_free(a);
    CU_ASSERT_TRUE(kc_secret_is_locked_pool(b));
    CU_ASSERT_EQUAL(memcmp(b->data, "second secret", 13), 0);
    kc_secret_free(b);
}

static const kc_test_case pins_cases[] = {
    {"an abbreviated PIN option", test_pin_option_abbreviated},
    {"a PIN file that is not a regular file", test_pin_file_not_regular},
    {"signals during the prompt", test_prompt_signals},
    {"secrets in a locked pool", test_secrets_locked_pool},
    {"data put's plaintext wiped", test_data_put_plaintext_wiped},
    {NULL, NULL},
};

static const kc_test_case layout_cases[] = {
    {"a module the operator did not allow", test_layout_module_not_allowed},
    {"a registered module, or --module", test_layout_module_registered},
    {NULL, NULL},
};

/* --- attacker 2 against readers without the PIN: the signed manifest --- */

/* A public RSA key with a root key's label and an id that sorts after every
 * version: without the manifest it became the current version, and DEPs
 * were wrapped under it (the attacker then reads every item). */
static void test_planted_root_version(void)
{
    const kc_test_out *r;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    ASSERT_RC(
        kc_test_run("key", "export-public", "VaultA1/Key001", "--out", path(0, "a.pem"), NULL), 0);
    CU_ASSERT_EQUAL_FATAL(plant("rsa", "VaultA1", "Key001", "ffffffffffffffffffffffffffffffff"), 0);
    r = kc_test_run("key", "export-public", "VaultA1/Key001", "--out", path(1, "b.pem"), NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "version ffffffffffffffffffffffffffffffff of key 'Key001' in vault "
                       "'VaultA1' is not in the vault's signed manifest: it was planted");
    kc_test_write(path(3, "dek"), "0123456789abcdef0123456789abcdef", 32, 0600);
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", P[3], "--out", path(2, "w.bin"), NULL);
    ASSERT_RC(r, 8);
}

/* The usage attributes of a public key, changed without the PIN. */
static void test_loosened_public_key(void)
{
    const kc_test_out *r;
    char *out = NULL;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out, "'%s' loosen-public '%s' VaultA1 Key001", KC_ATTACK_P11,
                                     KC_SOFTHSM_MODULE),
                          0);
    r = kc_test_run("key", "export-public", "VaultA1/Key001", "--out", path(0, "a.pem"), NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "allows more than the vault's signed manifest says");
}

/* A public copy of the vault metadata of a higher generation, purge
 * protection off and no access policy: it opened the purge path. */
static void test_planted_vault_metadata(void)
{
    static const char forged[] =
        "{\"kind\":\"keycustody-vault\",\"schema\":1,\"generation\":99,\"name\":"
        "\"VaultA1\",\"subscription\":\"contoso-a\",\"region\":\"westus\",\"sku\":"
        "\"premium\",\"soft_delete\":{\"enabled\":true,\"retention_days\":90},"
        "\"purge_protection\":false,\"retention_registered\":false,\"created\":"
        "\"2026-01-01T00:00:00Z\",\"updated\":\"2026-01-01T00:00:00Z\"}";
    const kc_test_out *r;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "officer", "--permissions",
                          "get,list,create", SOPIN, PIN, NULL),
              0);
    kc_test_write(path(0, "meta.json"), forged, strlen(forged), 0600);
    CU_ASSERT_EQUAL_FATAL(plant("data", "VaultA1", "keycustody-vault", P[0]), 0);
    r = kc_test_run("vault", "show", "VaultA1", NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "holds a public vault manifest ('keycustody-vault') that is not valid");
    r = kc_test_run("access", "show", "VaultA1", NULL);
    ASSERT_RC(r, 8);
}

/* Another token under the vault's name (or its vault key replaced): a
 * pinned fingerprint does not match. */
static void test_fingerprint_pinned(void)
{
    const char *file;
    const kc_test_out *r;
    char line[200];
    const char *at;

    ASSERT_RC(kc_test_run("policy", "apply", kc_test_layout(NULL, NULL), "--yes", NULL), 0);
    r = kc_test_run("vault", "show", "VaultA1", NULL);
    ASSERT_RC(r, 0);
    at = strstr(r->out, "vault key:         sha256:");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    snprintf(line, sizeof(line), "    fingerprint: sha256:%.64s\n    purge_protection: true\n",
             at + strlen("vault key:         sha256:"));
    file = kc_test_layout("    purge_protection: true\n", line);
    ASSERT_RC(kc_test_run("policy", "plan", file, NULL), 0);
    /* the vault made again under the same name: another vault key */
    CU_ASSERT_EQUAL_FATAL(kc_test_wipe_tokens(), 0);
    kc_test_vault("VaultA1", "sub-a", "westus");
    r = kc_test_run("policy", "plan", file, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "is pinned for it: the vault key was replaced, or this is another token");
    ASSERT_HAS(r->err, "compare the fingerprint 'vault show VaultA1' prints");
}

/* The service store pins each vault's key at first use. */
static void test_fingerprint_pinned_by_store(void)
{
    const kc_test_out *r;
    char *out = NULL;

    store_setup(); /* dep create opened VaultA1, VaultB1 and Service */
    CU_ASSERT_EQUAL(kc_test_sh(&out, "sqlite3 '%s' 'SELECT vault FROM vault_pins ORDER BY vault'",
                               kc_test_path("service.db")),
                    0);
    ASSERT_HAS(out, "Service\nVaultA1\nVaultB1\n");
    ASSERT_RC(kc_test_run("vault", "show", "VaultA1", NULL), 0);
    /* VaultA1's token made again: same name, another vault key */
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "for d in '%s'/tokens/*/; do grep -q VaultA1 "
                                     "\"$d/token.object\" && rm -rf \"$d\"; done; true",
                                     kc_test_dir()),
                          0);
    kc_test_vault("VaultA1", "sub-a", "westus");
    r = kc_test_run("vault", "show", "VaultA1", NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "is pinned for it");
    r = kc_test_run("dep", "show", "Ten", NULL);
    ASSERT_RC(r, 0);                          /* the store itself is fine */
    setenv("KC_TEST_AUDIT_TAMPERED", "1", 1); /* the log's VaultA1 records are the old vault's */
    unsetenv("KEYCUSTODY_STORE");
}

/* The version id of VaultA1/Key001's current version, hex. */
static const char *key001_version(void)
{
    static char v[129];
    const kc_test_out *r = kc_test_run("key", "show", "VaultA1/Key001", "--json", PIN, NULL);
    json_t *j = json_loads(r->out, 0, NULL);

    snprintf(v, sizeof(v), "%s", json_string_value(json_object_get(j, "current_version")));
    json_decref(j);
    return v;
}

/* The attacker's copy of VaultA1's public manifest, read without a PIN
 * (pkcs11-tool, no login) into file. */
static void save_manifest(const char *file)
{
    char *out = NULL;

    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "pkcs11-tool --module '%s' --token-label VaultA1 "
                                     "--read-object --type data --label keycustody-vault -o '%s' "
                                     "2>&1",
                                     KC_SOFTHSM_MODULE, file),
                          0);
}

/* The newer manifest and its commit record removed, the copy in file put
 * back in their place: pkcs11-tool without login. */
static void put_back_manifest(const char *file)
{
    char *out = NULL;

    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "p='pkcs11-tool --module %s --token-label VaultA1'; "
                                     "$p --delete-object --type data --label keycustody-vault && "
                                     "$p --delete-object --type data --label "
                                     "keycustody-vault.commit && "
                                     "$p --write-object '%s' --type data --label keycustody-vault "
                                     "--application-label keycustody 2>&1",
                                     KC_SOFTHSM_MODULE, file),
                          0);
}

/* VaultA1 with Key001; its version in ver. */
static void vault_with_key001(char ver[129])
{
    kc_test_vault("VaultA1", "contoso-a", "westus");
    kc_test_key("VaultA1/Key001", NULL);
    snprintf(ver, 129, "%s", key001_version());
}

/* Whether VaultA1's access policy, as a reader without the PIN sees it,
 * names principal. */
static int access_has(const char *principal)
{
    const kc_test_out *r = kc_test_run("access", "show", "VaultA1", "--json", NULL);
    json_t *j = json_loads(r->out, 0, NULL), *list, *e;
    size_t i;
    int found = 0;

    CU_ASSERT_EQUAL(r->rc, 0);
    list = json_is_array(j) ? j : json_object_get(j, "access");
    json_array_foreach(list, i, e)
    {
        const char *p = json_string_value(json_object_get(e, "principal"));
        found |= p != NULL && strcmp(p, principal) == 0;
    }
    json_decref(j);
    return found;
}

/* Someone without the PIN keeps a copy of the public manifest, and after an
 * access entry is removed puts it back in place of the newer one with
 * pkcs11-tool, no login: signed by the vault key, it passes every check a
 * reader without the PIN can make. The vault's private record of its
 * current manifest, which no session without the PIN can reach, shows the
 * rollback to every command that logs in; --repair signs the recorded
 * state again. */
static void test_manifest_rolled_back(void)
{
    const kc_test_out *r;
    char *out = NULL;
    char p11[600];

    kc_test_vault("VaultA1", "contoso-a", "westus");
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "admin", "--permissions",
                          "create,get,list", SOPIN, PIN, NULL),
              0);
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "mallory", "--permissions",
                          "get,list,create", SOPIN, PIN, NULL),
              0);
    snprintf(p11, sizeof(p11), "pkcs11-tool --module '%s' --token-label VaultA1",
             KC_SOFTHSM_MODULE);
    /* the attacker's copy, read without a PIN */
    save_manifest(path(0, "old.json"));
    ASSERT_RC(
        kc_test_run("access", "remove", "VaultA1", "--principal", "mallory", SOPIN, PIN, NULL), 0);
    CU_ASSERT_EQUAL(access_has("mallory"), 0);
    /* the newer manifest and its commit record removed, the copy put back */
    put_back_manifest(P[0]);
    /* readers without the PIN are fooled: nothing public tells them */
    CU_ASSERT_EQUAL(access_has("mallory"), 1);
    /* the record is out of reach without the PIN */
    CU_ASSERT_NOT_EQUAL(kc_test_sh(&out,
                                   "%s --delete-object --type data --label "
                                   "keycustody-vault.current 2>&1",
                                   p11),
                        0);
    /* every command that logs in refuses the vault, and writes nothing */
    r = kc_test_run("key", "create", "VaultA1/Key001", "--size", "2048", "--as", "mallory", PIN,
                    NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "vault 'VaultA1': its manifest was rolled back: the token holds generation");
    ASSERT_HAS(r->err, "'keycustody vault validate VaultA1 --repair'");
    r = kc_test_run("access", "set", "VaultA1", "--principal", "eve", "--permissions", "get", SOPIN,
                    PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "its manifest was rolled back");
    r = kc_test_run("vault", "validate", "VaultA1", PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "its manifest was rolled back");
    CU_ASSERT_EQUAL(access_has("mallory"), 1);
    CU_ASSERT_EQUAL(access_has("eve"), 0);
    /* the repair signs the recorded metadata again: mallory is gone */
    r = kc_test_run("vault", "validate", "VaultA1", "--repair", SOPIN, PIN, NULL);
    ASSERT_HAS(r->out, "vault 'VaultA1': manifest signed again from the vault's private record");
    CU_ASSERT(r->rc == 0 || r->rc == 3);
    CU_ASSERT_EQUAL(access_has("mallory"), 0);
    CU_ASSERT_EQUAL(access_has("admin"), 1);
    r = kc_test_run("key", "create", "VaultA1/Key001", "--size", "2048", "--as", "mallory", PIN,
                    NULL);
    ASSERT_RC(r, 6);
    ASSERT_RC(kc_test_run("key", "create", "VaultA1/Key001", "--size", "2048", "--as", "admin", PIN,
                          NULL),
              0);
    r = kc_test_run("vault", "validate", "VaultA1", "--repair", SOPIN, PIN, NULL);
    ASSERT_HAS(r->out, "vault 'VaultA1': its manifest is the recorded one; nothing to repair");
    /* a vault without a record (made before keycustody kept them) gets one
     * at the first login, for the manifest it has */
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "%s --login --pin env:TEST_PIN --delete-object --type data "
                                     "--label keycustody-vault.current 2>&1",
                                     p11),
                          0);
    ASSERT_RC(kc_test_run("key", "show", "VaultA1/Key001", "--as", "admin", PIN, NULL), 0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "%s --login --pin env:TEST_PIN -O --type data 2>/dev/null | "
                               "grep -c \"label: *'keycustody-vault.current'\"",
                               p11),
                    0);
}

/* The key state removed (by a PIN holder, or a search that misses it): a
 * vault whose manifest names keys is never read as one with an empty state,
 * which would forget soft-deletes and disabled versions and let the next
 * write start the state afresh. */
static void test_key_state_removed(void)
{
    const kc_test_out *r;
    char *out = NULL, ver[129], p11[600];

    vault_with_key001(ver);
    kc_test_key("VaultA1/Key002", NULL);
    ASSERT_RC(kc_test_run("key", "delete", "VaultA1/Key001", PIN, NULL), 0);
    snprintf(p11, sizeof(p11),
             "pkcs11-tool --module '%s' --token-label VaultA1 --login --pin env:TEST_PIN",
             KC_SOFTHSM_MODULE);
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "for l in keycustody-keys keycustody-keys.commit; do "
                                     "while %s --delete-object --type data --label $l "
                                     ">/dev/null 2>&1; do :; done; done; "
                                     "%s -O --type data 2>/dev/null | grep -c \"keycustody-keys\"",
                                     p11, p11),
                          1);
    r = kc_test_run("key", "list", "VaultA1", PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "its manifest names 2 key(s), but the token holds no key state");
    r = kc_test_run("key", "create", "VaultA1/Key003", "--size", "2048", PIN, NULL);
    ASSERT_RC(r, 8);
    r = kc_test_run("key", "recover", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 8);
    /* nothing was written over it */
    CU_ASSERT_EQUAL(kc_test_sh(&out, "%s -O --type data 2>/dev/null | grep -c \"keycustody-keys\"",
                               p11),
                    1);
}

/* A public RSA key with a real version's label and id beside its own
 * public half (the one found last was signed into the manifest by the next
 * write of a PIN holder, and wrapped under), or in its place. */
static void test_public_half_beside_or_instead(void)
{
    const kc_test_out *r;
    char *out = NULL, ver[129];

    vault_with_key001(ver);
    kc_test_write(path(3, "dek"), "0123456789abcdef0123456789abcdef", 32, 0600);
    CU_ASSERT_EQUAL_FATAL(plant("rsa", "VaultA1", "Key001", ver), 0);
    /* a PIN holder's write signs the manifest again */
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "svc", "--permissions",
                          "get,list,wrapKey,unwrapKey", SOPIN, PIN, NULL),
              0);
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", P[3], "--out", path(2, "w.bin"),
                    "--as", "svc", NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "has two public halves: one was planted; neither is used");
    r = kc_test_run("key", "show", "VaultA1/Key001", "--as", "svc", PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "has two public halves");
    /* both removed (no PIN), the planted one made again: alone */
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "for i in 1 2; do pkcs11-tool --module '%s' --token-label "
                                     "VaultA1 --delete-object --type pubkey --id %s >/dev/null "
                                     "2>&1 || exit 1; done",
                                     KC_SOFTHSM_MODULE, ver),
                          0);
    CU_ASSERT_EQUAL_FATAL(plant("rsa", "VaultA1", "Key001", ver), 0);
    r = kc_test_run("key", "show", "VaultA1/Key001", "--as", "svc", PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "is not its private half's public key: it was replaced");
    /* a PIN holder's write signs the private half's key, not the planted one */
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "svc2", "--permissions", "get",
                          SOPIN, PIN, NULL),
              0);
    r = kc_test_run("key", "wrap", "VaultA1/Key001", "--in", P[3], "--out", P[2], "--force", "--as",
                    "svc", NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "is not the one the vault's signed manifest names: it was replaced");
}

/* The race an attacker without the PIN can win: the check at login sees
 * the recorded manifest for a moment, and the write then reads the copy put
 * back. Standing in for the won race, the check is passed over; the write
 * itself still refuses to commit over a manifest behind the record. */
static void test_write_over_a_rollback(void)
{
    kc_ctx *ctx = NULL;
    kc_vault *v = NULL;
    kc_error e;

    kc_test_vault("VaultA1", "contoso-a", "westus");
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "admin", "--permissions",
                          "get,list,create", SOPIN, PIN, NULL),
              0);
    ASSERT_RC(kc_test_run("access", "set", "VaultA1", "--principal", "mallory", "--permissions",
                          "get,list", SOPIN, PIN, NULL),
              0);
    save_manifest(path(0, "old.json"));
    ASSERT_RC(
        kc_test_run("access", "remove", "VaultA1", "--principal", "mallory", SOPIN, PIN, NULL), 0);
    put_back_manifest(P[0]);
    CU_ASSERT_EQUAL_FATAL(kc_ctx_new(KC_SOFTHSM_MODULE, kc_test_env_pin, NULL, &ctx, &e), KC_OK);
    ctx->lock_vaults = 1;
    CU_ASSERT_EQUAL_FATAL(kc_vault_open(ctx, "VaultA1", &v, &e), KC_OK);
    CU_ASSERT_EQUAL(v->meta.naccess, 2); /* the copy: mallory is back */
    CU_ASSERT_EQUAL_FATAL(kc_ctx_login(ctx, v->tok, &e), KC_OK);
    v->current_checked = 1; /* the race won */
    snprintf(v->meta.access[v->meta.naccess].principal, sizeof(v->meta.access[0].principal), "%s",
             "bob");
    v->meta.access[v->meta.naccess++].perms = KC_PERM_GET;
    CU_ASSERT_EQUAL(kc_vault_save_meta(v, &e), KC_INTEGRITY);
    ASSERT_HAS(e.msg, "its manifest was rolled back");
    kc_vault_free(v);
    kc_ctx_free(ctx);
    /* nothing was written: the repair brings back the recorded state */
    CU_ASSERT_EQUAL(access_has("bob"), 0);
    ASSERT_HAS(kc_test_run("vault", "validate", "VaultA1", "--repair", SOPIN, PIN, NULL)->out,
               "signed again from the vault's private record");
    CU_ASSERT_EQUAL(access_has("mallory"), 0);
}

/* A real public half moved to another id (CKA_ID changed, no PIN): not a
 * half-made version to remove, but tampering to report. A public look-alike
 * of the private record is not read, and --repair removes it. */
static void test_moved_public_half_and_planted_record(void)
{
    const kc_test_out *r;
    char *out = NULL, ver[129];

    vault_with_key001(ver);
    kc_test_write(path(0, "rec.json"), "{\"kind\":\"keycustody-manifest-current\"}", 39, 0600);
    CU_ASSERT_EQUAL_FATAL(plant("data", "VaultA1", "keycustody-vault.current", P[0]), 0);
    ASSERT_RC(kc_test_run("key", "show", "VaultA1/Key001", PIN, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "pkcs11-tool --module '%s' --token-label VaultA1 --type "
                                     "pubkey --id %s --set-id 01a20000000000000000000000000001 "
                                     "2>&1",
                                     KC_SOFTHSM_MODULE, ver),
                          0);
    r = kc_test_run("key", "show", "VaultA1/Key001", PIN, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "carries the id 01a20000000000000000000000000001: its CKA_ID was changed");
    r = kc_test_run("vault", "validate", "VaultA1", "--repair", PIN, NULL);
    ASSERT_RC(r, 8);
    /* the moved half is still there */
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "pkcs11-tool --module '%s' --token-label VaultA1 -O --type pubkey "
                               "2>/dev/null | grep -c 01a20000000000000000000000000001",
                               KC_SOFTHSM_MODULE),
                    0);
    /* put back, the planted record goes with --repair */
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "pkcs11-tool --module '%s' --token-label VaultA1 --type "
                                     "pubkey --id 01a20000000000000000000000000001 --set-id %s "
                                     "2>&1",
                                     KC_SOFTHSM_MODULE, ver),
                          0);
    r = kc_test_run("vault", "validate", "VaultA1", "--repair", PIN, NULL);
    ASSERT_HAS(r->out, "removed what interrupted writes left: 0 half-made key versions, 1 older");
    CU_ASSERT_NOT_EQUAL(kc_test_sh(&out,
                                   "pkcs11-tool --module '%s' --token-label VaultA1 -O --type data "
                                   "2>/dev/null | grep -c \"keycustody-vault.current\"",
                                   KC_SOFTHSM_MODULE),
                        0);
}

static const kc_test_case manifest_cases[] = {
    {"a vault key pinned by the store", test_fingerprint_pinned_by_store},
    {"a planted root key version", test_planted_root_version},
    {"a public key's usage loosened", test_loosened_public_key},
    {"planted vault metadata", test_planted_vault_metadata},
    {"manifest rollback", test_manifest_rolled_back},
    {"the key state removed", test_key_state_removed},
    {"a public half beside a version's, or instead", test_public_half_beside_or_instead},
    {"a write over a rollback, the race won", test_write_over_a_rollback},
    {"a moved public half, a planted record", test_moved_public_half_and_planted_record},
    {"a pinned fingerprint", test_fingerprint_pinned},
    {NULL, NULL},
};

static const kc_test_case pinholder_cases[] = {
    {"a user-PIN holder with raw PKCS#11", test_attack_user_pin_holder},
    {NULL, NULL},
};

static const kc_test_case files_cases[] = {
    {"token files and a backup, no PIN", test_attack_token_files_and_backup},
    {NULL, NULL},
};

static const kc_test_case planted_cases[] = {
    {"a public key state", test_planted_key_state},
    {"public domain keys before a join", test_planted_domain_keys_before_join},
    {"a public domain key after install", test_planted_domain_key_after_install},
    {"a public audit key", test_planted_audit_key},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {
    {"pinholder", 1, pinholder_cases},
    {"files", 1, files_cases},
    {"planted", 1, planted_cases},
    {"layout", 1, layout_cases},
    {"pins", 1, pins_cases},
    {"log", 1, log_cases},
    {"store", 1, store_cases},
    {"manifest", 1, manifest_cases},
    {NULL, 0, NULL},
};

int main(int argc, char **argv)
{
    if (freopen("/dev/null", "r", stdin) == NULL)
        return 2;
    return kc_test_main(argc, argv, suites);
}
