/* Test fixture: a private SoftHSM token directory per test, commands run
 * in-process with captured output, and a CUnit main that exits non-zero when
 * any test failed. */
#ifndef KC_TEST_FIXTURE_H
#define KC_TEST_FIXTURE_H

#include "kc_ctx.h"

#include <CUnit/CUnit.h>

#include <stddef.h>

typedef struct kc_test_out {
    int rc;
    char *out; /* captured stdout (NUL-terminated) */
    char *err; /* captured stderr */
} kc_test_out;

/* A new private token directory and softhsm2.conf, SOFTHSM2_CONF and
 * KEYCUSTODY_MODULE set, and random PINs in TEST_SO_PIN and TEST_PIN. */
int kc_test_setup(void);
/* Removes the directory; disarms fault injection; unsets KEYCUSTODY_NOW. */
int kc_test_teardown(void);
/* The test's directory, and a path inside it. */
const char *kc_test_dir(void);
const char *kc_test_path(const char *name);
/* The test's service store: the file service.db in its directory, or with
 * KC_TEST_STORE=postgresql (the suites registered a second time, as
 * NAME.SUITE.pg) a URI of a database of its own on the tests' PostgreSQL
 * server, dropped after the test; kc_test_store_db() names it. */
const char *kc_test_store(void);
const char *kc_test_store_db(void);
int kc_test_on_pg(void);
/* The same in one of four buffers of its own: up to four in one call. */
const char *kc_test_path2(const char *name);
/* How many availability keys the vault 'Service' (on SoftHSM) holds. */
int kc_test_avail_keys(void);

/* Runs "keycustody ARGS... NULL" in-process. The result is valid until the
 * next call. */
const kc_test_out *kc_test_run(const char *first, ...);
/* The same in a process of its own (the built keycustody binary): for a
 * module that cannot be initialised again in one process (openCryptoki
 * 3.8.1 after other modules, test_modules). */
const kc_test_out *kc_test_exec(const char *first, ...);

/* Runs a shell command; returns its exit status, output (stdout+stderr) in a
 * static buffer. */
int kc_test_sh(char **output, const char *fmt, ...);

/* Makes a vault (free token initialised with TEST_SO_PIN / TEST_PIN). */
void kc_test_vault(const char *name, const char *subscription, const char *region);
/* Writes the test layout (VaultA1 in sub-a/westus and VaultB1 in
 * sub-b/eastus2, access policies for svc and officer, KeyA, KeyB, a tenant
 * DEP) to layout.yaml with the text old replaced by new (old may be NULL);
 * returns its path. */
const char *kc_test_layout(const char *old, const char *new);
/* Replaces the first old in file with new (the test fails if there is none). */
void kc_test_edit(const char *file, const char *old, const char *new);
/* The test layout with a service vault (Service, sub-svc, centralus) and the
 * store beside it (service.db); deps goes before its "deps:" line. */
const char *kc_test_layout_with_service(const char *deps);
/* How many objects the token of vault holds, as pkcs11-tool counts them
 * (logged in with TEST_PIN); -1 when it cannot tell. */
int kc_test_objects(const char *vault);
/* Runs 'audit verify' on the test's log (faults disarmed); its exit code,
 * the output on stderr when not 0. Teardown runs it after every test. */
int kc_test_audit_verify(void);
/* Removes every token and the audit log that spoke of them. */
int kc_test_wipe_tokens(void);
/* The commit records of the vault's documents, but the audit anchors'
 * (left out of kc_test_objects): one per document when nothing is stale. */
int kc_test_commit_records(const char *vault);
/* The audit key and anchors on the vault (left out of kc_test_objects). */
int kc_test_audit_objects(const char *vault);
/* Secret keys on the vault other than its audit key. */
int kc_test_secret_keys(const char *vault);
/* Around a kill -9 of a command: SoftHSM 2.6.1 rewrites a token's
 * token.object in place at every login (its mtime changes on C_Login), so
 * a kill at that moment can leave the token unreadable -- a failure of
 * SoftHSM's file store that an HSM does not have. snapshot copies each
 * token.object before the kill; mend puts back the ones whose size changed
 * (a torn write) and returns how many. Objects are never touched. */
void kc_test_snapshot_tokens(void);
int kc_test_mend_tokens(void);
/* A PIN callback for kc_ctx_new: TEST_SO_PIN or TEST_PIN for every vault. */
kc_rc kc_test_env_pin(void *arg, const char *vault, kc_pin_kind kind, kc_secret **out,
                      kc_error *err);
/* Three custodians' key pairs in the test directory: NAME-key.pem and
 * NAME.pem for alice, bob and carol. */
void kc_test_custodians(void);
/* 'subscription init SUB --vault VAULT' for the three custodians, quorum 2,
 * the security-domain file written to out. */
const kc_test_out *kc_test_domain(const char *sub, const char *vault, const char *out);
/* Makes an RSA-2048 key with the given extra options (may be NULL). */
void kc_test_key(const char *ref, const char *ops);
/* The public half of an RSA pair labelled name, CKA_ID id0 02 03 00...,
 * on vault's token: what a create killed inside C_GenerateKeyPair leaves
 * (SoftHSM writes the public half first). */
void kc_test_public_half(const char *vault, const char *name, unsigned char id0);

/* Registers a secret the test uses (8 bytes or more): after the test, every
 * file it left is read for it, and only a file holding exactly it may. */
void kc_test_secret(const void *data, size_t len);

/* Writes a file with the given bytes. */
void kc_test_write(const char *path, const void *data, size_t len, unsigned mode);
/* Reads a file; returns a malloc'd buffer (caller frees) or NULL. */
unsigned char *kc_test_read(const char *path, size_t *len);

/* Parses JSON text (a command's --json output); fails the test when it is not. */
struct json_t;
struct json_t *kc_test_json(const char *s);
/* In 'module check --json' output: a fact's answer ("yes", "no", "unknown";
 * "(none)" when absent) and detail, and a feature's support. */
const char *kc_test_fact_answer(struct json_t *check, const char *fact);
const char *kc_test_fact_detail(struct json_t *check, const char *fact);
const char *kc_test_feature_support(struct json_t *check, const char *feature);
/* Why module check judged the feature so. */
const char *kc_test_feature_why(struct json_t *check, const char *feature);

/* Whether haystack contains needle; prints both when it does not. */
int kc_test_contains(const char *haystack, const char *needle);

/* Evaluates res once: it is often the command itself. */
#define ASSERT_RC(res, want)                                                                       \
    do {                                                                                           \
        const kc_test_out *res_ = (res);                                                           \
        if (res_->rc != (want))                                                                    \
            fprintf(stderr, "\n  rc=%d, want %d\n  stdout: %s\n  stderr: %s\n", res_->rc, (want),  \
                    res_->out, res_->err);                                                         \
        CU_ASSERT_EQUAL_FATAL(res_->rc, (want));                                                   \
    } while (0)

#define ASSERT_HAS(text, needle) CU_ASSERT_TRUE(kc_test_contains((text), (needle)))

typedef struct kc_test_case {
    const char *name;
    void (*fn)(void);
} kc_test_case;

typedef struct kc_test_suite {
    const char *name;
    int tokens;                /* needs a token directory per test */
    const kc_test_case *cases; /* terminated by {NULL, NULL} */
} kc_test_suite;

/* Runs the suites (all, or the one named by argv[1]); returns the exit code. */
int kc_test_main(int argc, char **argv, const kc_test_suite *suites);

/* NSS softokn through a p11-kit module file with a database in the test's
 * directory: the file's path. */
const char *kc_test_nss_module(void);
/* swtpm (unix sockets in the test's directory, scripts/tpm2-pkcs11.sh) and
 * a tpm2-pkcs11 store with one free token, its variables exported: the
 * module's path. kc_test_tpm2_stop stops it by its PID (at the next start
 * too). */
const char *kc_test_tpm2_start(void);
void kc_test_tpm2_stop(void);

#endif
