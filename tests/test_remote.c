/* Remote vaults: each region's custodian vault served by a 'p11-kit server'
 * of its own (a unix socket in the test's directory, the server started
 * and stopped by its PID here) and reached through p11-kit's client, named
 * by a module file's remote:. What p11-kit 0.24.1's client carries, as the
 * probe finds it; a DEP made and its data read through the servers; a
 * region's server gone, the data read through the other; and what the
 * client does not carry refused up front. */
#include "fixture.h"
#include "kc_p11.h"

#include <jansson.h>

#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PINS                                                                                       \
    "--pin-source", "VaultA1=env:TEST_PIN", "--pin-source", "VaultB1=env:TEST_PIN",                \
        "--pin-source", "Service=env:TEST_PIN"

static char sock[2][2300], modfile[2][2300], bind_a[2400], bind_b[2400];

#define REMOTE "--module", bind_a, "--module", bind_b, "--module", "Service=" KC_SOFTHSM_MODULE

/* The servers running, stopped by their PIDs whatever becomes of a test
 * (a failed assertion ends it early): at the next test and at exit. */
static pid_t running[4];

static void unserve(pid_t pid, int sig)
{
    size_t i;

    if (pid <= 0)
        return;
    kill(pid, sig);
    waitpid(pid, NULL, 0);
    for (i = 0; i < sizeof(running) / sizeof(running[0]); i++)
        if (running[i] == pid)
            running[i] = 0;
}

static void unserve_all(void)
{
    size_t i;

    for (i = 0; i < sizeof(running) / sizeof(running[0]); i++)
        unserve(running[i], SIGTERM);
}

/* 'p11-kit server' in the foreground for the token labelled token, its
 * socket at path, its output in a log beside it (never the test's own
 * pipes); its PID once the socket is there. */
static pid_t serve_uri(const char *uri, const char *path);

static pid_t serve(const char *token, const char *path)
{
    char uri[100];

    snprintf(uri, sizeof(uri), "pkcs11:token=%s", token);
    return serve_uri(uri, path);
}

/* The same for every token uri matches. */
static pid_t serve_uri(const char *uri, const char *path)
{
    struct timespec pause = {0, 50 * 1000 * 1000};
    struct stat st;
    pid_t pid;
    int i;

    unlink(path);
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        char log[2400];
        /* and gone with the test, whatever ends it (an abort under ASan) */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0)
            _exit(127);
        snprintf(log, sizeof(log), "%.2200s.log", path);
        if (freopen(log, "w", stdout) == NULL || freopen(log, "a", stderr) == NULL)
            _exit(127);
        execlp("p11-kit", "p11-kit", "server", "-f", "--provider", KC_SOFTHSM_MODULE, "-n", path,
               uri, (char *)NULL);
        _exit(127);
    }
    for (i = 0; pid > 0 && i < 4; i++)
        if (running[i] == 0) {
            running[i] = pid;
            break;
        }
    for (i = 0; pid > 0 && i < 100 && stat(path, &st) != 0; i++)
        nanosleep(&pause, NULL);
    CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
    return pid;
}

/* The layout made where the tokens are (each region's own administration),
 * then VaultA1 and VaultB1 each served by a server of its own. */
static void setup(pid_t pid[2])
{
    static const char *const vault[2] = {"VaultA1", "VaultB1"};
    const char *file;
    char text[2600];
    int i;

    unserve_all(); /* what an earlier test's failure left */
    file = kc_test_layout_with_service("assignments:\n  tenant: Dep1\n");
    /* VaultA1's officer backs keys up */
    kc_test_edit(file, "permissions: [get, list, update, delete, recover, purge, rotate]",
                 "permissions: [get, list, backup, restore, import]");
    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    setenv("KEYCUSTODY_STORE", kc_test_path2("service.db"), 1);
    setenv("KEYCUSTODY_SERVICE_VAULT", "Service", 1);
    setenv("KEYCUSTODY_SERVICE_PIN_SOURCE", "env:TEST_PIN", 1);
    for (i = 0; i < 2; i++) {
        snprintf(sock[i], sizeof(sock[i]), "%s/region%d.sock", kc_test_dir(), i);
        snprintf(modfile[i], sizeof(modfile[i]), "%s/region%d.module", kc_test_dir(), i);
        snprintf(text, sizeof(text),
                 "# %s, through its region's server\nremote: unix:path=%.2200s\n", vault[i],
                 sock[i]);
        kc_test_write(modfile[i], text, strlen(text), 0644);
        pid[i] = serve(vault[i], sock[i]);
    }
    snprintf(bind_a, sizeof(bind_a), "VaultA1=%s", modfile[0]);
    snprintf(bind_b, sizeof(bind_b), "VaultB1=%s", modfile[1]);
}

static const kc_test_out *get(const char *name)
{
    unlink(kc_test_path2("item.out"));
    return kc_test_run("data", "get", "tenant", name, "--out", kc_test_path2("item.out"), "--as",
                       "svc", PINS, REMOTE, NULL);
}

static int item_matches(void)
{
    char *out = NULL;

    return kc_test_sh(&out, "cd '%s' && cmp item.bin item.out", kc_test_dir()) == 0;
}

/* What p11-kit 0.24.1's client carries of SoftHSM, as module check asks it
 * through a server: no AES key wrap, no AES-GCM, no AES-CBC-PAD listed;
 * CKA_UNWRAP_TEMPLATE fails as CKR_DEVICE_ERROR (keycustody's templates
 * leave it out there); RSA-OAEP and HMAC are carried. */
static void test_remote_facts(void)
{
    const kc_test_out *r;
    pid_t pid[2];
    json_t *j;

    setup(pid);
    r = kc_test_run("module", "check", "VaultA1", "--module", modfile[0], "--json", "--pin-source",
                    "VaultA1=env:TEST_PIN", NULL);
    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    ASSERT_HAS(json_string_value(json_object_get(j, "module")), "p11-kit-client.so");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "aes_key_wrap.rfc5649"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "mech.aes_gcm"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "mech.aes_cbc_pad_wrap"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "attr.unwrap_template"), "no");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "rsa_oaep.sha1"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_fact_answer(j, "mech.hmac_sha256"), "yes");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "backup/restore"), "not possible");
    CU_ASSERT_STRING_EQUAL(kc_test_feature_support(j, "DEPs"), "works differently");
    json_decref(j);
    unserve(pid[0], SIGTERM);
    unserve(pid[1], SIGTERM);
}

/* Data under a DEP whose custodian vaults are each behind their region's
 * server: written and read through them; a new DEP made through them; one
 * server killed, the data read through the other vault, and a DEP that
 * needs the lost vault refused with nothing made. */
static void test_remote_dep(void)
{
    const kc_test_out *r;
    char *out = NULL;
    pid_t pid[2];

    setup(pid);
    r = kc_test_run("vault", "show", "VaultA1", REMOTE, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "p11-kit-client.so\n");
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "cd '%s' && head -c 3000 /dev/urandom >item.bin && head -c 32 "
                               "/dev/urandom >dek",
                               kc_test_dir()),
                    0);
    r = kc_test_run("data", "put", "tenant", "t1", "--in", kc_test_path2("item.bin"), "--as", "svc",
                    PINS, REMOTE, NULL);
    ASSERT_RC(r, 0);
    ASSERT_RC(get("t1"), 0);
    CU_ASSERT_TRUE(item_matches());
    /* wrap and unwrap through the server, and OpenSSL agrees */
    ASSERT_RC(kc_test_run("key", "wrap", "VaultA1/KeyA", "--in", kc_test_path2("dek"), "--out",
                          kc_test_path2("w"), "--as", "svc", REMOTE, NULL),
              0);
    ASSERT_RC(kc_test_run("key", "unwrap", "VaultA1/KeyA", "--in", kc_test_path2("w"), "--out",
                          kc_test_path2("u"), "--as", "svc", PINS, REMOTE, NULL),
              0);
    CU_ASSERT_EQUAL(kc_test_sh(&out, "cd '%s' && cmp dek u", kc_test_dir()), 0);
    ASSERT_RC(kc_test_run("key", "export-public", "VaultA1/KeyA", "--out", kc_test_path2("a.pem"),
                          "--as", "svc", REMOTE, NULL),
              0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "cd '%s' && openssl pkeyutl -encrypt -pubin -inkey a.pem -pkeyopt "
                               "rsa_padding_mode:oaep -in dek -out o",
                               kc_test_dir()),
                    0);
    ASSERT_RC(kc_test_run("key", "unwrap", "VaultA1/KeyA", "--in", kc_test_path2("o"), "--out",
                          kc_test_path2("u2"), "--alg", "RSA-OAEP", "--as", "svc", PINS, REMOTE,
                          NULL),
              0);
    CU_ASSERT_EQUAL(kc_test_sh(&out, "cd '%s' && cmp dek u2", kc_test_dir()), 0);
    r = kc_test_run("dep", "create", "Dep2", "--keys", "VaultA1/KeyA,VaultB1/KeyB", "--workload",
                    "exchange", "--as", "svc", PINS, REMOTE, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "root key A    VaultA1/KeyA/");

    /* region A's server dies: vault B reads the data */
    unserve(pid[0], SIGKILL);
    r = get("t1");
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->err, "warning: VaultA1: ");
    ASSERT_HAS(r->err, "cannot connect to the p11-kit server at '");
    CU_ASSERT_TRUE(item_matches());
    /* and a DEP that needs vault A is refused, nothing made */
    r = kc_test_run("dep", "create", "Dep3", "--keys", "VaultA1/KeyA,VaultB1/KeyB", "--workload",
                    "exchange", "--as", "svc", PINS, REMOTE, NULL);
    CU_ASSERT_NOT_EQUAL(r->rc, 0);
    ASSERT_HAS(r->err, "VaultA1");
    r = kc_test_run("dep", "list", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "Dep2 ");
    CU_ASSERT_PTR_NULL(strstr(r->out, "Dep3"));
    r = kc_test_run("key", "list", "Service", "--pin-source", "env:TEST_PIN", NULL);
    CU_ASSERT_EQUAL(r->rc, 0);
    CU_ASSERT_PTR_NULL(strstr(r->out, "Dep3"));
    unserve(pid[1], SIGTERM);
}

/* Region A's server lost in the middle of 'dep create': each of the
 * object searches the command makes through it fails in turn, as calls
 * through a lost server fail (CKR_DEVICE_REMOVED), and each time nothing is
 * left half-made: no DEP, no availability key, the name free for the next
 * attempt. Faults reach the first module loaded, here VaultA1's client. */
static void test_remote_lost_mid_command(void)
{
    const kc_test_out *r;
    unsigned nth, calls = 0;
    pid_t pid[2];
    kc_error e;
    int before;

    setup(pid);
    before = kc_test_avail_keys();
    for (nth = 1; nth <= 400; nth++) {
        CU_ASSERT_EQUAL_FATAL(
            kc_p11_fault_arm("C_FindObjectsInit", "CKR_DEVICE_REMOVED", nth, 0, &e), KC_OK);
        r = kc_test_run("dep", "create", "Dep2", "--keys", "VaultA1/KeyA,VaultB1/KeyB",
                        "--workload", "exchange", "--as", "svc", PINS, REMOTE, NULL);
        calls = kc_p11_fault_calls();
        kc_p11_fault_disarm();
        if (r->rc == 0)
            break;
        ASSERT_HAS(r->err, "CKR_DEVICE_REMOVED");
        CU_ASSERT_EQUAL(kc_test_avail_keys(), before);
        r = kc_test_run("dep", "list", NULL);
        CU_ASSERT_PTR_NULL(strstr(r->out, "Dep2"));
    }
    CU_ASSERT(nth > 1 && nth <= 400); /* it failed at least once, and then made it */
    CU_ASSERT(calls < nth);           /* the last run met no fault */
    CU_ASSERT_EQUAL(kc_test_avail_keys(), before + 1);
    unserve_all();
}

/* A backup needs AES key wrap and AES-GCM, which the client does not
 * carry: refused up front, naming them, no file made; where the token is
 * loaded directly the same backup is made. */
static void test_remote_refused_up_front(void)
{
    const kc_test_out *r;
    pid_t pid[2];

    setup(pid);
    kc_test_custodians();
    ASSERT_RC(kc_test_domain("sub-a", "VaultA1", kc_test_path2("a.domain")), 0);
    r = kc_test_run("key", "backup", "VaultA1/KeyA", "--out", kc_test_path2("k.backup"), "--as",
                    "officer", "--pin-source", "env:TEST_PIN", "--module", modfile[0], NULL);
    ASSERT_RC(r, 7);
    ASSERT_HAS(r->err, "token 'VaultA1' does not offer CKM_AES_KEY_WRAP_PAD wrap through module");
    ASSERT_HAS(r->err, "which a backup needs; nothing was done");
    CU_ASSERT_NOT_EQUAL(access(kc_test_path2("k.backup"), F_OK), 0);
    r = kc_test_run("key", "backup", "VaultA1/KeyA", "--out", kc_test_path2("k.backup"), "--as",
                    "officer", "--pin-source", "env:TEST_PIN", NULL);
    ASSERT_RC(r, 0);
    /* the PIN goes over the socket in the clear: one others could be
     * listening on, or a link to one, is refused before anything is sent */
    CU_ASSERT_EQUAL(chmod(sock[0], 0777), 0);
    r = kc_test_run("key", "list", "VaultA1", "--pin-source", "env:TEST_PIN", "--module", bind_a,
                    NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "the p11-kit server's socket '");
    ASSERT_HAS(r->err, "can be changed by others than you and root");
    CU_ASSERT_EQUAL(chmod(sock[0], 0700), 0);
    CU_ASSERT_EQUAL(symlink(sock[0], kc_test_path2("link.sock")), 0);
    {
        char text[2500];
        snprintf(text, sizeof(text), "remote: unix:path=%.2200s\n", kc_test_path2("link.sock"));
        kc_test_write(kc_test_path2("link.module"), text, strlen(text), 0644);
    }
    r = kc_test_run("module", "list", "--module", kc_test_path2("link.module"), NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "is a link, not the p11-kit server's socket");
    /* no vault is made through a server: it would keep what the client
     * carries for good; the free token stays free */
    {
        char text[2500];
        pid_t all = serve_uri("pkcs11:model=SoftHSM%20v2", kc_test_path2("all.sock"));
        snprintf(text, sizeof(text), "remote: unix:path=%.2200s\n", kc_test_path2("all.sock"));
        kc_test_write(kc_test_path2("all.module"), text, strlen(text), 0644);
        r = kc_test_run("vault", "init", "VaultC1", "--subscription", "sub-c", "--region",
                        "northeurope", "--module", kc_test_path2("all.module"), "--so-pin-source",
                        "env:TEST_SO_PIN", "--pin-source", "env:TEST_PIN", NULL);
        ASSERT_RC(r, 7);
        ASSERT_HAS(r->err, "a vault is not made through a p11-kit server");
        ASSERT_HAS(r->err, "nothing was made");
        unserve(all, SIGTERM);
        r = kc_test_run("module", "list", NULL);
        ASSERT_HAS(r->out, "  - (free) ");
        CU_ASSERT_PTR_NULL(strstr(r->out, "VaultC1"));
    }
    unserve(pid[0], SIGTERM);
    unserve(pid[1], SIGTERM);
}

/* A vault bound to its server is the one every command sees, listings and
 * audit verify included: its anchor is read through the binding, so a log
 * cut after a record it sealed is caught (not skipped as "2 tokens"). */
static void test_remote_bound_everywhere(void)
{
    const kc_test_out *r;
    char *out = NULL;
    pid_t pid[2];

    setup(pid);
    /* module list says which server each client reaches, and each shows
     * its own server's token only */
    r = kc_test_run("module", "list", "--json", REMOTE, NULL);
    ASSERT_RC(r, 0);
    {
        json_t *j = json_loads(r->out, 0, NULL), *m, *t;
        size_t i, k, seen = 0;
        CU_ASSERT_PTR_NOT_NULL_FATAL(j);
        json_array_foreach(j, i, m)
        {
            const char *src = json_string_value(json_object_get(m, "source"));
            const char *want = src == NULL                           ? NULL
                               : strstr(src, "region0.sock") != NULL ? "VaultA1"
                               : strstr(src, "region1.sock") != NULL ? "VaultB1"
                                                                     : NULL;
            if (want == NULL)
                continue;
            ASSERT_HAS(src, "the p11-kit server at unix:path=");
            CU_ASSERT_EQUAL(json_array_size(json_object_get(m, "tokens")), 1);
            for (k = 0; k < json_array_size(json_object_get(m, "tokens")); k++) {
                t = json_array_get(json_object_get(m, "tokens"), k);
                CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(t, "label")), want);
            }
            seen++;
        }
        CU_ASSERT_EQUAL(seen, 2);
        json_decref(j);
    }
    r = kc_test_run("vault", "list", REMOTE, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_PTR_NULL(strstr(r->out, "tokens match"));
    ASSERT_HAS(r->out, "VaultB1 ");
    CU_ASSERT_PTR_NULL(strstr(strstr(r->out, "VaultB1 ") + 1, "VaultB1 "));
    /* a record VaultB1 seals, through its server */
    CU_ASSERT_EQUAL(kc_test_sh(&out, "head -c 32 /dev/urandom >'%s'", kc_test_path2("dek")), 0);
    ASSERT_RC(kc_test_run("key", "wrap", "VaultB1/KeyB", "--in", kc_test_path2("dek"), "--out",
                          kc_test_path2("w"), "--as", "svc", REMOTE, NULL),
              0);
    ASSERT_RC(kc_test_run("key", "unwrap", "VaultB1/KeyB", "--in", kc_test_path2("w"), "--out",
                          kc_test_path2("u"), "--as", "svc", PINS, REMOTE, NULL),
              0);
    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "cd '%s' && cp -p audit.jsonl audit.full && head -n -1 "
                               "audit.full >audit.jsonl",
                               kc_test_dir()),
                    0);
    r = kc_test_run("audit", "verify", PINS, REMOTE, NULL);
    ASSERT_RC(r, 8);
    ASSERT_HAS(r->err, "vault 'VaultB1' anchors record");
    CU_ASSERT_EQUAL(kc_test_sh(&out, "cd '%s' && mv audit.full audit.jsonl", kc_test_dir()), 0);
    ASSERT_RC(kc_test_run("audit", "verify", PINS, REMOTE, NULL), 0);
    unserve_all();
}

static const kc_test_case cases[] = {
    {"what p11-kit's client carries", test_remote_facts},
    {"a DEP through two regions' servers", test_remote_dep},
    {"what the client does not carry is refused up front", test_remote_refused_up_front},
    {"a region's server lost in the middle of a command", test_remote_lost_mid_command},
    {"a bound vault is the one every command sees", test_remote_bound_everywhere},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {{"remote", 1, cases}, {NULL, 0, NULL}};

int main(int argc, char **argv)
{
    int rc = kc_test_main(argc, argv, suites);

    unserve_all();
    return rc;
}
