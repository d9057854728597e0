/* policy plan and apply against SoftHSM. */
#include "fixture.h"
#include "kc_gendoc.h"
#include "kc_keystate.h"
#include "kc_p11.h"
#include "kc_plan.h"
#include "kc_store.h"

#include <jansson.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static json_t *plan_json(const char *file)
{
    const kc_test_out *r = kc_test_run("policy", "plan", file, "--json", NULL);
    json_t *j;

    ASSERT_RC(r, 0);
    j = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    return j;
}

static size_t actions(const char *file)
{
    json_t *j = plan_json(file);
    size_t n = json_array_size(json_object_get(j, "actions"));

    json_decref(j);
    return n;
}

/* The layout's state: plan empty, and on each vault one key pair per key
 * plus the vault metadata and the key state, each with one commit record: no
 * duplicate, no orphan. */
static void assert_converged(const char *file)
{
    CU_ASSERT_EQUAL(actions(file), 0);
    CU_ASSERT_EQUAL(kc_test_objects("VaultA1"), 4);
    CU_ASSERT_EQUAL(kc_test_objects("VaultB1"), 4);
    CU_ASSERT_EQUAL(kc_test_commit_records("VaultA1"), 2);
    CU_ASSERT_EQUAL(kc_test_commit_records("VaultB1"), 2);
}

/* The layout's audit: names the log, relative to the layout file. */
static void test_layout_audit_path(void)
{
    const char *file =
        kc_test_layout("service_principal: svc\n", "service_principal: svc\naudit: apply.jsonl\n");
    char log[1100];
    const kc_test_out *r;

    snprintf(log, sizeof(log), "%s", kc_test_path("apply.jsonl"));
    unsetenv("KEYCUSTODY_AUDIT");
    r = kc_test_run("policy", "apply", file, "--yes", NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("audit", "show", "--audit", log, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "policy apply");
    ASSERT_HAS(r->out, "VaultA1\n"); /* sealed by the layout's first vault */
    r = kc_test_run("audit", "verify", "--audit", log, "--pin-source", "env:TEST_PIN", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "1 records, 1 sealed");
    /* plan only reads: it writes no record */
    r = kc_test_run("policy", "plan", file, NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("audit", "verify", "--audit", log, "--pin-source", "env:TEST_PIN", NULL);
    ASSERT_HAS(r->out, "1 records, 1 sealed");
    setenv("KEYCUSTODY_AUDIT", kc_test_path("audit.jsonl"), 1);
}

static void test_plan_apply_plan(void)
{
    const char *file = kc_test_layout(NULL, NULL);
    const kc_test_out *r;
    json_t *j;

    r = kc_test_run("policy", "plan", file, "--detailed-exitcode", NULL);
    ASSERT_RC(r, 10);
    ASSERT_HAS(r->out, "  + initialise a free token as vault VaultA1 (subscription sub-a, westus");
    ASSERT_HAS(r->out, "  + create key VaultB1/KeyB (RSA-2048, hsm, wrapKey,unwrapKey)");
    ASSERT_HAS(r->out, "Plan: 4 to add, 0 to change, 0 to delete, 0 blocked.");
    CU_ASSERT_STRING_EQUAL(r->err, "");
    j = plan_json(file);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "add")), 4);
    json_decref(j);
    r = kc_test_run("policy", "apply", file, "--yes", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "+ create key VaultA1/KeyA (RSA-2048, hsm, wrapKey,unwrapKey) ... done");
    ASSERT_HAS(r->out, "Apply complete: 4 added, 0 changed, 0 deleted.");
    r = kc_test_run("policy", "plan", file, "--detailed-exitcode", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "No changes: the tokens match the layout.");
    r = kc_test_run("policy", "apply", file, "--yes", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "No changes");
    assert_converged(file);
    /* what apply made is what the commands see */
    r = kc_test_run("vault", "show", "VaultA1", NULL);
    ASSERT_HAS(r->out, "recovery level:    Recoverable+ProtectedSubscription");
}

static void test_edits_show_exactly_themselves(void)
{
    const char *file = kc_test_layout(NULL, NULL);
    const kc_test_out *r;

    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    file = kc_test_layout("      - name: KeyB\n        size: 2048\n",
                          "      - name: KeyB\n        size: 3072\n        tags: {owner: bob}\n"
                          "      - name: KeyC\n        size: 2048\n");
    r = kc_test_run("policy", "plan", file, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "  ~ rotate key VaultB1/KeyB: RSA-2048 hsm -> RSA-3072 hsm\n"
                       "      (a token cannot change a key's size or protection in place)");
    ASSERT_HAS(r->out, "  ~ update key VaultB1/KeyB: tags");
    ASSERT_HAS(r->out, "  + create key VaultB1/KeyC");
    ASSERT_HAS(r->out, "Plan: 1 to add, 2 to change, 0 to delete, 0 blocked.");
    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    CU_ASSERT_EQUAL(actions(file), 0);
    r = kc_test_run("key", "show", "VaultB1/KeyB", "--pin-source", "env:TEST_PIN", "--as",
                    "officer", NULL);
    ASSERT_HAS(r->out, "type:         RSA-3072");
    ASSERT_HAS(r->out, "tag:          owner=bob");
    ASSERT_HAS(r->out, "versions:     2");
    /* a key gone from the file is kept, unless --allow-delete, then soft-deleted */
    file = kc_test_layout(NULL, NULL);
    r = kc_test_run("policy", "plan", file, NULL);
    ASSERT_HAS(r->out, "note: key VaultB1/KeyC is on the token but not in the layout: kept");
    r = kc_test_run("policy", "apply", file, "--yes", "--allow-delete", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "- delete key VaultB1/KeyC ... done");
    r = kc_test_run("key", "list-deleted", "VaultB1", "--pin-source", "env:TEST_PIN", "--as",
                    "officer", NULL);
    ASSERT_HAS(r->out, "KeyC");
}

static void test_blocked_changes(void)
{
    const char *file = kc_test_layout(NULL, NULL);
    const kc_test_out *r;

    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    ASSERT_RC(kc_test_run("key", "update", "VaultA1/KeyA", "--expires", "9999-12-31",
                          "--pin-source", "env:TEST_PIN", "--as", "officer", NULL),
              0);
    file = kc_test_layout("    region: eastus2\n", "    region: northeurope\n");
    r = kc_test_run("policy", "apply", file, "--yes", NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->out,
               "  ! vault VaultB1 is in subscription sub-b, eastus2; the layout says sub-b, "
               "northeurope");
    ASSERT_HAS(r->out, "  ! key VaultA1/KeyA expires on 9999-12-31; the layout says never");
    ASSERT_HAS(r->err, "2 changes cannot be made (marked !); nothing was applied");
}

static void test_apply_needs_yes_without_terminal(void)
{
    const char *file = kc_test_layout(NULL, NULL);
    const kc_test_out *r = kc_test_run("policy", "apply", file, NULL);

    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "apply needs --yes when standard input is not a terminal");
    CU_ASSERT_EQUAL(actions(file), 4); /* nothing was done */
}

static void test_invalid_layout_is_not_planned(void)
{
    const kc_test_out *r =
        kc_test_run("policy", "plan", kc_test_layout("size: 2048", "size: 1024"), NULL);

    ASSERT_RC(r, 3);
    ASSERT_HAS(r->out, "error[KC016]");
    ASSERT_HAS(r->err, "nothing was planned");
}

static void test_lock(void)
{
    const char *file = kc_test_layout(NULL, NULL);
    char path[512], want[128];
    const kc_test_out *r;
    kc_diags d;
    kc_layout *l;
    kc_error e;
    time_t t0;
    int fd = -1;
    unsigned char *text = NULL;
    size_t len = 0;

    kc_diags_init(&d, file);
    text = kc_test_read(file, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    l = kc_layout_read(file, text, len, &d);
    free(text);
    CU_ASSERT_PTR_NOT_NULL_FATAL(l);
    CU_ASSERT_EQUAL_FATAL(kc_plan_lock(l, KC_SOFTHSM_MODULE, 0, &fd, path, sizeof(path), &e),
                          KC_OK);
    r = kc_test_run("policy", "apply", file, "--yes", NULL);
    ASSERT_RC(r, 5);
    snprintf(want, sizeof(want), "another apply holds the lock on these vaults (pid %ld,",
             (long)getpid());
    ASSERT_HAS(r->err, want);
    t0 = time(NULL);
    r = kc_test_run("policy", "apply", file, "--yes", "--wait", "1", NULL);
    ASSERT_RC(r, 5);
    CU_ASSERT(time(NULL) - t0 >= 1);
    kc_plan_unlock(fd);
    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    kc_layout_free(l);
    kc_diags_release(&d);
}

/* An apply stopped at any C_* call converges when run again. */
static void test_converges_after_injected_failures(void)
{
    static const struct {
        const char *fn, *rv;
        int after;
    } faults[] = {
        {"C_InitToken", "CKR_DEVICE_ERROR", 0},       {"C_CreateObject", "CKR_DEVICE_MEMORY", 0},
        {"C_GenerateKeyPair", "CKR_DEVICE_ERROR", 1}, {"C_GenerateRandom", "CKR_DEVICE_ERROR", 0},
        {"C_Login", "CKR_DEVICE_ERROR", 0},
    };
    const char *file = kc_test_layout(NULL, NULL);
    const kc_test_out *r;
    char *out = NULL;
    size_t f;
    unsigned nth;
    kc_error e;
    int failed;

    for (f = 0; f < sizeof(faults) / sizeof(faults[0]); f++) {
        for (nth = 1; nth <= 3; nth++) {
            CU_ASSERT_EQUAL_FATAL(
                kc_p11_fault_arm(faults[f].fn, faults[f].rv, nth, faults[f].after, &e), KC_OK);
            r = kc_test_run("policy", "apply", file, "--yes", NULL);
            failed = r->rc != 0;
            kc_p11_fault_disarm();
            if (failed)
                ASSERT_HAS(r->err, "run 'keycustody policy apply' again");
            ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
            if (kc_test_objects("VaultA1") != 4 || kc_test_objects("VaultB1") != 4) {
                kc_test_sh(&out,
                           "pkcs11-tool --module '%s' --token-label VaultA1 --login --pin "
                           "env:TEST_PIN -O 2>/dev/null",
                           KC_SOFTHSM_MODULE);
                fprintf(stderr, "\n  after %s #%u (%s):\n%s", faults[f].fn, nth,
                        failed ? "it failed" : "not reached", out);
            }
            assert_converged(file);
            CU_ASSERT_EQUAL(kc_test_audit_verify(), 0);
            CU_ASSERT_EQUAL(kc_test_wipe_tokens(), 0);
        }
    }
}

/* Every shipped layout, applied to empty tokens (with a service store, so
 * its DEPs are made), then validated live against itself: exit 0. */
static void test_shipped_layouts_apply_and_validate(void)
{
    static const char *const layouts[] = {"contoso-tenant.yaml", "custody-only.yaml",
                                          "lab-single-dep.yaml"};
    static const char *const pins[] = {"FABVAULT1", "FABVAULT2", "SERVICE", "VAULTA1", "VAULTA2"};
    char file[1024], var[64];
    const kc_test_out *r;
    size_t i;

    for (i = 0; i < sizeof(pins) / sizeof(pins[0]); i++) {
        snprintf(var, sizeof(var), "%s_PIN", pins[i]);
        setenv(var, getenv("TEST_PIN"), 1);
        snprintf(var, sizeof(var), "%s_SO_PIN", pins[i]);
        setenv(var, getenv("TEST_SO_PIN"), 1);
    }
    for (i = 0; i < sizeof(layouts) / sizeof(layouts[0]); i++) {
        snprintf(file, sizeof(file), "%s/policies/%s", KC_SOURCE_DIR, layouts[i]);
        snprintf(var, sizeof(var), "store-%zu.db", i);
        setenv("KEYCUSTODY_STORE", kc_test_path(var), 1);
        /* the lab layout's PINs are files under /etc: given here instead */
        if (strncmp(layouts[i], "lab-", 4) == 0)
            r = kc_test_run("policy", "apply", file, "--yes", "--pin-source", "env:TEST_PIN",
                            "--so-pin-source", "env:TEST_SO_PIN", NULL);
        else
            r = kc_test_run("policy", "apply", file, "--yes", NULL);
        if (r->rc != 0)
            fprintf(stderr, "\n  apply %s: %s%s", layouts[i], r->out, r->err);
        ASSERT_RC(r, 0);
        if (strncmp(layouts[i], "lab-", 4) == 0)
            r = kc_test_run("vault", "validate", "--all", "--layout", file, "--pin-source",
                            "env:TEST_PIN", NULL);
        else
            r = kc_test_run("vault", "validate", "--all", "--layout", file, NULL);
        if (r->rc != 0)
            fprintf(stderr, "\n  validate %s: %s%s", layouts[i], r->out, r->err);
        ASSERT_RC(r, 0);
        CU_ASSERT_EQUAL(kc_test_wipe_tokens(), 0);
    }
    unsetenv("KEYCUSTODY_STORE");
}

/* Ctrl-C during a real apply: the action in hand finishes, apply stops
 * before the next, says so (exit 130), and a run again finishes. */
static void test_interrupted_apply(void)
{
    const char *file = kc_test_layout(NULL, NULL);
    char *out = NULL;

    CU_ASSERT_EQUAL(kc_test_sh(&out,
                               "cd '%s' || exit 1; '%s' policy apply '%s' --yes > a.out 2> a.err & "
                               "p=$!; i=0; while ! grep -q ' \\.\\.\\. ' a.out && [ $i -lt 2000 ]; "
                               "do i=$((i+1)); sleep 0.01; done; "
                               "kill -INT $p; wait $p; echo \"rc=$?\"; cat a.out a.err",
                               kc_test_dir(), KC_BINARY, file),
                    0);
    ASSERT_HAS(out, "rc=130");
    ASSERT_HAS(out, "error: policy apply stopped by a signal after 1 of ");
    ASSERT_HAS(out, "what is done is consistent");
    ASSERT_HAS(out, "hint: run 'keycustody policy apply' again");
    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    assert_converged(file);
}

/* A real apply killed with SIGKILL at several points converges. */
static void test_converges_after_kill(void)
{
    static const char *delays[] = {"0.05", "0.2", "0.4", "0.7"};
    const char *file = kc_test_layout(NULL, NULL);
    char *out = NULL;
    size_t i;

    for (i = 0; i < sizeof(delays) / sizeof(delays[0]); i++) {
        kc_test_snapshot_tokens();
        kc_test_sh(&out,
                   "'%s' policy apply '%s' --yes >/dev/null 2>&1 & p=$!; sleep %s; "
                   "kill -9 $p 2>/dev/null; wait $p; true",
                   KC_BINARY, file, delays[i]);
        (void)kc_test_mend_tokens();
        ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
        if (actions(file) != 0 || kc_test_objects("VaultA1") != 4 ||
            kc_test_objects("VaultB1") != 4) {
            const kc_test_out *r = kc_test_run("policy", "plan", file, NULL);
            fprintf(stderr, "\n  killed after %s s; plan:\n%s%s", delays[i], r->out, r->err);
            kc_test_sh(&out,
                       "pkcs11-tool --module '%s' -L; pkcs11-tool --module '%s' "
                       "--token-label VaultB1 --login --pin env:TEST_PIN -O 2>/dev/null",
                       KC_SOFTHSM_MODULE, KC_SOFTHSM_MODULE);
            fprintf(stderr, "%s\n", out);
        }
        assert_converged(file);
        CU_ASSERT_EQUAL(kc_test_audit_verify(), 0);
        CU_ASSERT_EQUAL(kc_test_wipe_tokens(), 0);
    }
}

/* A write killed between its new generation and removing the old one
 * leaves two: plan says so, apply tidies, and plan is empty again. */
static void test_tidies_stale_generations(void)
{
    const char *file = kc_test_layout(NULL, NULL);
    const kc_test_out *r;
    kc_vault_meta old;
    kc_ctx *ctx = NULL;
    kc_vault *v = NULL;
    char *json = NULL;
    kc_error err;

    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    CU_ASSERT_EQUAL_FATAL(kc_ctx_new(KC_SOFTHSM_MODULE, kc_test_env_pin, NULL, &ctx, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_vault_open(ctx, "VaultA1", &v, &err), KC_OK);
    /* a signed generation left beside the newest, as a killed write leaves
     * it: here a second copy of the one there */
    {
        kc_data_obj *docs = NULL;
        size_t n = 0;
        CU_ASSERT_EQUAL_FATAL(kc_tok_find_data(v->tok, KC_GENDOC_APPLICATION, KC_VAULT_META_LABEL,
                                               KC_WHERE_PUBLIC, &docs, &n, NULL, &err),
                              KC_OK);
        CU_ASSERT_EQUAL_FATAL(n, 1);
        CU_ASSERT_EQUAL_FATAL(kc_tok_create_data(v->tok, KC_GENDOC_APPLICATION, KC_VAULT_META_LABEL,
                                                 docs[0].value, docs[0].len, 0, NULL, &err),
                              KC_OK);
        kc_p11_data_objs_free(docs, n);
    }
    (void)old;
    (void)json;
    kc_vault_free(v);
    kc_ctx_free(ctx);
    CU_ASSERT_EQUAL(kc_test_objects("VaultA1"), 5);
    r = kc_test_run("policy", "plan", file, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "  ~ tidy vault VaultA1: remove 1 older generation of its metadata or key "
                       "state");
    r = kc_test_run("policy", "apply", file, "--yes", NULL);
    ASSERT_RC(r, 0);
    assert_converged(file);
    /* the vault kept its newest metadata */
    r = kc_test_run("vault", "show", "VaultA1", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "purge protection:  on");
}

/* Half a key pair where a create was killed: plan repairs it. */
static void test_repairs_half_made_key(void)
{
    const char *file = kc_test_layout(NULL, NULL);
    const kc_test_out *r;

    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    kc_test_public_half("VaultA1", "KeyQ", 1);
    file = kc_test_layout(
        "      - name: KeyA\n        size: 2048\n",
        "      - name: KeyA\n        size: 2048\n      - name: KeyQ\n        size: 2048\n");
    r = kc_test_run("policy", "plan", file, NULL);
    ASSERT_HAS(r->out, "  ~ repair key VaultA1/KeyQ: remove the half-made version 010203");
    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    CU_ASSERT_EQUAL(actions(file), 0);
    r = kc_test_run("key", "show", "VaultA1/KeyQ", "--pin-source", "env:TEST_PIN", "--as",
                    "officer", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "versions:     1");
    CU_ASSERT_PTR_NULL(strstr(r->out, "010203"));
}

static void test_vault_validate(void)
{
    const char *file = kc_test_layout(NULL, NULL);
    const kc_test_out *r;

    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    r = kc_test_run("vault", "validate", "--all", "--layout", file, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "2 vaults valid (0 warnings); no drift from the layout");
    /* drift: the file moved on, the tokens did not */
    file = kc_test_layout("      - name: KeyB\n        size: 2048\n",
                          "      - name: KeyB\n        size: 2048\n        tags: {owner: bob}\n");
    r = kc_test_run("vault", "validate", "--all", "--layout", file, NULL);
    ASSERT_RC(r, 10);
    ASSERT_HAS(r->out, "drift: ~ update key VaultB1/KeyB: tags");
    /* a vault made by hand that breaks the Customer Key rules */
    kc_test_vault("VaultC1", "sub-c", "westus");
    r = kc_test_run("key", "create", "VaultC1/Soft", "--size", "2048", "--protection", "software",
                    "--expires", "2040-01-01", "--pin-source", "env:TEST_PIN", NULL);
    ASSERT_RC(r, 0);
    r = kc_test_run("vault", "validate", "VaultC1", "--pin-source", "env:TEST_PIN", NULL);
    ASSERT_RC(r, 3);
    ASSERT_HAS(r->out, "live: error[KC019]: key 'VaultC1/Soft' expires on 2040-01-01");
    ASSERT_HAS(r->out, "live: error[KC021]: vault 'VaultC1' holds root keys and has recovery "
                       "level Recoverable+Purgeable");
    ASSERT_HAS(r->out, "live: error[KC022]");
    ASSERT_HAS(r->out, "live: warning[KC017]: key 'VaultC1/Soft' is software-protected");
    ASSERT_HAS(r->out, "live: warning[KC030]: vault 'VaultC1' has no access policy");
    ASSERT_HAS(r->err, "3 rules broken on the tokens (2 warnings)");
    r = kc_test_run("vault", "validate", NULL);
    ASSERT_RC(r, 2);
}

/* --- the plan as data, and saved plans --- */

/* The action at address in a plan's --json output (NULL when none). */
static json_t *action_at(json_t *plan, const char *address)
{
    json_t *a;
    size_t i;

    json_array_foreach(json_object_get(plan, "actions"), i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "address")), address) == 0)
            return a;
    }
    fprintf(stderr, "\n  no action at %s in %s\n", address, json_dumps(plan, JSON_INDENT(2)));
    return NULL;
}

/* The change of attribute in action, as compact JSON text
 * ({"attribute":..,"before":..,"after":..}), in a static buffer. */
static const char *change_of(json_t *action, const char *attribute)
{
    static char text[1024];
    json_t *c;
    char *s;
    size_t i;

    snprintf(text, sizeof(text), "(no change of %s)", attribute);
    json_array_foreach(json_object_get(action, "changes"), i, c)
    {
        if (strcmp(json_string_value(json_object_get(c, "attribute")), attribute) != 0)
            continue;
        s = json_dumps(c, JSON_COMPACT | JSON_PRESERVE_ORDER);
        snprintf(text, sizeof(text), "%s", s);
        free(s);
    }
    return text;
}

static const char *field(json_t *action, const char *name)
{
    const char *s = json_string_value(json_object_get(action, name));

    return s ? s : "(null)";
}

/* A create, an update of ops and expiry, an access change and a blocked
 * change, each as data with its address and the before and after of each
 * attribute, and in the text plan. */
static void test_plan_json_entries(void)
{
    const char *file = kc_test_layout(NULL, NULL);
    const kc_test_out *r;
    json_t *j, *a;

    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    file = kc_test_layout("      - name: KeyA\n        size: 2048\n",
                          "      - name: KeyA\n        size: 2048\n"
                          "        ops: [wrapKey, unwrapKey, encrypt]\n"
                          "        expires: 9999-12-31\n"
                          "      - name: KeyC\n        size: 3072\n"
                          "        expires: 9999-12-31\n        tags: {team: red}\n");
    kc_test_edit(file, "permissions: [get, list, update, delete, recover, purge, rotate]",
                 "permissions: [get, list, update, recover, purge, rotate, backup]");
    kc_test_edit(file, "    region: eastus2\n", "    region: northeurope\n");
    j = plan_json(file);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "add")), 1);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "change")), 2);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "blocked")), 1);
    /* a create: every attribute from null */
    a = action_at(j, "vault.VaultA1.key.KeyC");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_STRING_EQUAL(field(a, "type"), "key");
    CU_ASSERT_STRING_EQUAL(field(a, "action"), "create");
    CU_ASSERT_STRING_EQUAL(field(a, "change"), "+");
    CU_ASSERT_PTR_NULL(json_string_value(json_object_get(a, "blocked")));
    CU_ASSERT_STRING_EQUAL(change_of(a, "size"), "{\"attribute\":\"size\",\"before\":null,"
                                                 "\"after\":3072}");
    CU_ASSERT_STRING_EQUAL(change_of(a, "expires"), "{\"attribute\":\"expires\",\"before\":null,"
                                                    "\"after\":\"9999-12-31\"}");
    CU_ASSERT_STRING_EQUAL(change_of(a, "tags"), "{\"attribute\":\"tags\",\"before\":null,"
                                                 "\"after\":{\"team\":\"red\"}}");
    CU_ASSERT_STRING_EQUAL(change_of(a, "ops"), "{\"attribute\":\"ops\",\"before\":null,"
                                                "\"after\":[\"wrapKey\",\"unwrapKey\"]}");
    /* an update: ops and expiry, before and after */
    a = action_at(j, "vault.VaultA1.key.KeyA");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_STRING_EQUAL(field(a, "action"), "update");
    CU_ASSERT_STRING_EQUAL(field(a, "operation"), "key-update");
    CU_ASSERT_STRING_EQUAL(change_of(a, "ops"),
                           "{\"attribute\":\"ops\",\"before\":[\"wrapKey\",\"unwrapKey\"],"
                           "\"after\":[\"encrypt\",\"wrapKey\",\"unwrapKey\"]}");
    CU_ASSERT_STRING_EQUAL(change_of(a, "expires"), "{\"attribute\":\"expires\",\"before\":null,"
                                                    "\"after\":\"9999-12-31\"}");
    CU_ASSERT_EQUAL(json_array_size(json_object_get(a, "changes")), 2);
    /* an access entry: what the principal gains and loses */
    a = action_at(j, "vault.VaultA1.access.officer");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_STRING_EQUAL(field(a, "type"), "access");
    CU_ASSERT_STRING_EQUAL(field(a, "action"), "update");
    CU_ASSERT_STRING_EQUAL(change_of(a, "permissions"),
                           "{\"attribute\":\"permissions\",\"before\":[\"get\",\"list\","
                           "\"update\",\"delete\",\"recover\",\"purge\",\"rotate\"],\"after\":"
                           "[\"get\",\"list\",\"update\",\"recover\",\"backup\",\"purge\","
                           "\"rotate\"]}");
    /* blocked: why, and what the layout asks */
    a = action_at(j, "vault.VaultB1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_STRING_EQUAL(field(a, "blocked"),
                           "a vault cannot move between subscriptions or regions");
    CU_ASSERT_STRING_EQUAL(field(a, "change"), "!");
    CU_ASSERT_STRING_EQUAL(change_of(a, "region"), "{\"attribute\":\"region\",\"before\":"
                                                   "\"eastus2\",\"after\":\"northeurope\"}");
    /* VaultB1's officer is unchanged: no action at its address */
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "actions")), 4);
    json_decref(j);
    /* the same in the text plan */
    r = kc_test_run("policy", "plan", file, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "  ~ access VaultA1/officer: + backup, - delete\n");
    ASSERT_HAS(r->out, "  + create key VaultA1/KeyC (RSA-3072, hsm, wrapKey,unwrapKey, expires "
                       "9999-12-31)\n");
    ASSERT_HAS(r->out, "  ~ update key VaultA1/KeyA: ops wrapKey,unwrapKey -> "
                       "encrypt,wrapKey,unwrapKey; expiry never -> 9999-12-31\n");
    /* applied (without the blocked region), the access entry is as asked
     * and the other principal's is untouched */
    kc_test_edit(file, "    region: northeurope\n", "    region: eastus2\n");
    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    CU_ASSERT_EQUAL(actions(file), 0);
    r = kc_test_run("access", "show", "VaultA1", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "backup");
    ASSERT_HAS(r->out, "svc");
    /* a principal the layout drops: its permissions go to null */
    kc_test_edit(file,
                 "      - principal: officer\n"
                 "        permissions: [get, list, update, recover, purge, rotate, backup]\n"
                 "    keys:\n      - name: KeyA\n",
                 "    keys:\n      - name: KeyA\n");
    j = plan_json(file);
    a = action_at(j, "vault.VaultA1.access.officer");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_STRING_EQUAL(field(a, "action"), "delete");
    CU_ASSERT_STRING_EQUAL(change_of(a, "permissions"),
                           "{\"attribute\":\"permissions\",\"before\":[\"get\",\"list\","
                           "\"update\",\"recover\",\"backup\",\"purge\",\"rotate\"],\"after\":"
                           "null}");
    json_decref(j);
}

/* Whether file holds text. */
static int file_has(const char *file, const char *text)
{
    size_t len = 0;
    unsigned char *buf = kc_test_read(file, &len);
    int has = buf != NULL && strstr((const char *)buf, text) != NULL;

    free(buf);
    return has;
}

static void test_saved_plan_applies(void)
{
    const char *file = kc_test_layout(NULL, NULL), *plan = kc_test_path2("a.plan");
    const kc_test_out *r;
    struct stat st;
    unsigned char *text;
    json_t *j;

    r = kc_test_run("policy", "plan", file, "--out", plan, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "Saved the plan to '");
    CU_ASSERT_EQUAL_FATAL(stat(plan, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    /* what it holds: the marker, the layout, the actions; no PIN */
    text = kc_test_read(plan, &(size_t){0});
    j = kc_test_json((const char *)text);
    free(text);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "format")), "keycustody-plan");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "version")), 1);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(json_object_get(j, "observed"), "vaults")), 2);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(json_object_get(j, "plan"), "actions")), 4);
    json_decref(j);
    CU_ASSERT_TRUE(file_has(plan, "pin: env:TEST_PIN"));
    CU_ASSERT_FALSE(file_has(plan, getenv("TEST_PIN")));
    CU_ASSERT_FALSE(file_has(plan, getenv("TEST_SO_PIN")));
    /* not over an existing file, unless --force */
    r = kc_test_run("policy", "plan", file, "--out", plan, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "already exists; not overwriting it");
    ASSERT_RC(kc_test_run("policy", "plan", file, "--out", plan, "--force", NULL), 0);
    /* into a directory that is not there: not found, naming the file */
    r = kc_test_run("policy", "plan", file, "--out", kc_test_path("no-such-dir/a.plan"), NULL);
    ASSERT_RC(r, 4);
    ASSERT_HAS(r->err, "no-such-dir/a.plan' (a new file beside it): No such file or directory");
    ASSERT_HAS(r->err, "its directory must exist");
    /* the second custodian reads it without any token */
    r = kc_test_run("policy", "plan", plan, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "  + create key VaultB1/KeyB (RSA-2048, hsm, wrapKey,unwrapKey)");
    ASSERT_HAS(r->out, "Plan: 4 to add, 0 to change, 0 to delete, 0 blocked.");
    /* and applies it without being asked (no terminal, no --yes) */
    r = kc_test_run("policy", "apply", plan, "--wait", "1", NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "a.plan' (made ");
    ASSERT_HAS(r->out, "are as it saw them; its actions are carried out without asking");
    ASSERT_HAS(r->out, "Apply complete: 4 added, 0 changed, 0 deleted.");
    assert_converged(file);
    /* once applied it is stale */
    r = kc_test_run("policy", "apply", plan, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "vault VaultA1 changed; vault VaultB1 changed");
    /* a layout given to apply works as before */
    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
}

/* The layout file edited after planning: apply carries out what was
 * planned, from the layout the plan holds. */
static void test_saved_plan_keeps_its_layout(void)
{
    const char *file = kc_test_layout(NULL, NULL), *plan = kc_test_path2("a.plan");
    const kc_test_out *r;

    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    kc_test_edit(
        file, "      - name: KeyB\n        size: 2048\n",
        "      - name: KeyB\n        size: 2048\n      - name: KeyC\n        size: 2048\n");
    ASSERT_RC(kc_test_run("policy", "plan", file, "--out", plan, NULL), 0);
    kc_test_edit(file, "      - name: KeyC\n", "      - name: KeyD\n");
    r = kc_test_run("policy", "apply", plan, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "+ create key VaultB1/KeyC (RSA-2048, hsm, wrapKey,unwrapKey) ... done");
    r = kc_test_run("key", "list", "VaultB1", "--pin-source", "env:TEST_PIN", "--as", "officer",
                    NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "KeyC");
    CU_ASSERT_PTR_NULL(strstr(r->out, "KeyD"));
    /* --allow-delete belongs to the plan */
    ASSERT_RC(kc_test_run("policy", "plan", file, "--out", plan, "--force", NULL), 0);
    r = kc_test_run("policy", "apply", plan, "--allow-delete", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "is a saved plan, made without --allow-delete");
}

/* A refused saved plan: exit 5, err names what changed, the tokens are as
 * they were (n objects on each of the two vaults). */
static void assert_stale(const char *plan, const char *what, int a1, int b1)
{
    const kc_test_out *r = kc_test_run("policy", "apply", plan, NULL);

    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "the saved plan (made ");
    ASSERT_HAS(r->err, what);
    ASSERT_HAS(r->err, "nothing was applied");
    ASSERT_HAS(r->err, "hint: make a new plan");
    CU_ASSERT_PTR_NULL(strstr(r->out, "... done"));
    CU_ASSERT_EQUAL(kc_test_objects("VaultA1"), a1);
    CU_ASSERT_EQUAL(kc_test_objects("VaultB1"), b1);
}

/* A key created or updated directly on one vault after the plan. */
static void test_saved_plan_stale_key(void)
{
    const char *file = kc_test_layout(NULL, NULL), *plan = kc_test_path2("a.plan");

    /* VaultA1's officer may create keys */
    kc_test_edit(file, "permissions: [get, list, update, delete, recover, purge, rotate]",
                 "permissions: [get, list, create, update, delete, recover, purge, rotate]");
    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    kc_test_edit(
        file, "      - name: KeyB\n        size: 2048\n",
        "      - name: KeyB\n        size: 2048\n      - name: KeyC\n        size: 2048\n");
    ASSERT_RC(kc_test_run("policy", "plan", file, "--out", plan, NULL), 0);
    /* a key made by hand on VaultA1: the plan (about VaultB1) did not see it */
    ASSERT_RC(kc_test_run("key", "create", "VaultA1/Manual", "--size", "2048", "--pin-source",
                          "env:TEST_PIN", "--as", "officer", NULL),
              0);
    assert_stale(plan, "vault VaultA1 changed;", 6, 4);
    ASSERT_RC(kc_test_run("policy", "plan", file, "--out", plan, "--force", NULL), 0);
    /* the key the plan is about, updated by hand */
    ASSERT_RC(kc_test_run("key", "update", "VaultB1/KeyB", "--tag", "owner=bob", "--pin-source",
                          "env:TEST_PIN", "--as", "officer", NULL),
              0);
    assert_stale(plan, "vault VaultB1 changed;", 6, 4);
    /* planned again, it applies */
    ASSERT_RC(kc_test_run("policy", "plan", file, "--out", plan, "--force", NULL), 0);
    ASSERT_RC(kc_test_run("policy", "apply", plan, NULL), 0);
    CU_ASSERT_EQUAL(kc_test_objects("VaultB1"), 6);
}

/* Another apply between the plan and its apply: the saved actions are
 * what the other one did, and the plan made now differs. */
static void test_saved_plan_stale_after_another_apply(void)
{
    const char *file = kc_test_layout(NULL, NULL), *plan = kc_test_path2("a.plan");

    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    kc_test_edit(file, "      - name: KeyB\n        size: 2048\n",
                 "      - name: KeyB\n        size: 3072\n");
    ASSERT_RC(kc_test_run("policy", "plan", file, "--out", plan, NULL), 0);
    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    assert_stale(plan,
                 "vault VaultB1 changed; the plan made now no longer has 'rotate key "
                 "VaultB1/KeyB: RSA-2048 hsm -> RSA-3072 hsm'; 1 of its 1 action differs now",
                 4, 6);
}

/* A DEP made with 'dep create' after the plan: the store changed. */
static void test_saved_plan_stale_store(void)
{
    const char *file = kc_test_layout_with_service(""), *plan = kc_test_path2("a.plan");
    const kc_test_out *r;

    ASSERT_RC(kc_test_run("policy", "apply", file, "--yes", NULL), 0);
    kc_test_edit(file, "deps:\n",
                 "deps:\n  - name: Mbx1\n    workload: exchange\n"
                 "    keys: [VaultA1/KeyA, VaultB1/KeyB]\n");
    r = kc_test_run("policy", "plan", file, "--out", plan, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "  + create DEP Mbx1 (exchange, keys VaultA1/KeyA and VaultB1/KeyB)");
    setenv("KEYCUSTODY_STORE", kc_test_path("service.db"), 1);
    ASSERT_RC(kc_test_run("dep", "create", "Mbx1", "--keys", "VaultA1/KeyA,VaultB1/KeyB",
                          "--workload", "exchange", "--service-vault", "Service", "--pin-source",
                          "Service=env:TEST_PIN", "--as", "svc", NULL),
              0);
    unsetenv("KEYCUSTODY_STORE");
    r = kc_test_run("policy", "apply", plan, NULL);
    ASSERT_RC(r, 5);
    ASSERT_HAS(r->err, "the service store '");
    ASSERT_HAS(r->err, "service.db' changed");
    ASSERT_HAS(r->err, "nothing was applied");
    CU_ASSERT_PTR_NULL(strstr(r->err, "vault VaultA1 changed"));
    CU_ASSERT_PTR_NULL(strstr(r->out, "... done"));
    /* planned again: nothing to do */
    ASSERT_RC(kc_test_run("policy", "plan", file, "--out", plan, "--force", NULL), 0);
    r = kc_test_run("policy", "apply", plan, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "No changes");
}

/* Damaged, other-version, altered and others-writable plan files. */
static void test_saved_plan_refused(void)
{
    const char *file = kc_test_layout(NULL, NULL), *plan = kc_test_path2("a.plan"),
               *bad = kc_test_path2("bad.plan");
    const kc_test_out *r;
    unsigned char *text;
    char *edited, *at;
    size_t len = 0;

    ASSERT_RC(kc_test_run("policy", "plan", file, "--out", plan, NULL), 0);
    text = kc_test_read(plan, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    /* truncated */
    kc_test_write(bad, text, len / 2, 0600);
    r = kc_test_run("policy", "apply", bad, NULL);
    ASSERT_RC(r, 3);
    ASSERT_HAS(r->err, "cannot be used: it is damaged or truncated");
    ASSERT_HAS(r->err, "hint: make the plan again");
    /* another version */
    edited = strdup((const char *)text);
    at = strstr(edited, "\"version\": 1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    at[strlen("\"version\": ")] = '7';
    kc_test_write(bad, edited, strlen(edited), 0600);
    r = kc_test_run("policy", "apply", bad, NULL);
    ASSERT_RC(r, 3);
    ASSERT_HAS(r->err, "it is format version 7; this keycustody reads version 1");
    free(edited);
    /* the layout it holds changed without its digest */
    edited = strdup((const char *)text);
    at = strstr(edited, "size: 2048");
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    at[strlen("size: ")] = '4';
    kc_test_write(bad, edited, strlen(edited), 0600);
    r = kc_test_run("policy", "apply", bad, NULL);
    ASSERT_RC(r, 3);
    ASSERT_HAS(r->err, "the layout it holds does not match its SHA-256");
    free(edited);
    /* writable by others */
    kc_test_write(bad, text, len, 0620);
    r = kc_test_run("policy", "apply", bad, NULL);
    ASSERT_RC(r, 6);
    ASSERT_HAS(r->err, "has mode 0620: others can write it, so it is not believed");
    free(text);
    /* nothing was done by any of them */
    CU_ASSERT_EQUAL(actions(file), 4);
}

/* A layout of the vaults PlanV00.. (made by kc_test_vault: subscription s,
 * westus); each declares no key, so the keys made on them are left alone. */
static const char *layout_of(int nvaults)
{
    char text[8192];
    size_t off;
    int i;

    off = (size_t)snprintf(text, sizeof(text),
                           "version: 1\nsubscriptions:\n  - id: s\nservice_principal: svc\n"
                           "vaults:\n");
    for (i = 0; i < nvaults && off < sizeof(text); i++)
        off += (size_t)snprintf(text + off, sizeof(text) - off,
                                "  - name: PlanV%02d\n    subscription: s\n    region: westus\n"
                                "    pin: env:TEST_PIN\n    so_pin: env:TEST_SO_PIN\n",
                                i);
    CU_ASSERT_FATAL(off < sizeof(text));
    kc_test_write(kc_test_path("many.yaml"), text, strlen(text), 0644);
    return kc_test_path("many.yaml");
}

/* How many times one 'policy plan' of file (or, file NULL, one 'vault
 * validate --all') calls func (armed to fail on a call it never reaches:
 * it only counts). */
static unsigned plan_calls(const char *file, const char *func)
{
    kc_error e;
    unsigned calls;

    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm(func, "CKR_DEVICE_ERROR", 1000000, 0, &e), KC_OK);
    if (file == NULL)
        /* 3: these vaults break the layout rules, which it reports */
        ASSERT_RC(kc_test_run("vault", "validate", "--all", "--pin-source", "env:TEST_PIN", NULL),
                  3);
    else
        ASSERT_RC(kc_test_run("policy", "plan", file, NULL), 0);
    calls = kc_p11_fault_calls();
    kc_p11_fault_disarm();
    return calls;
}

/* The token searches (C_FindObjectsInit) of what plan does on a vault, in
 * plan's order, in-process: the open, one listing of all its keys, the
 * check for stale generations (*per_vault: the three); and *list, a
 * kc_key_list after a second open. */
static void vault_searches(const char *vault, unsigned *per_vault, unsigned *list_all,
                           unsigned *list)
{
    kc_key *keys = NULL, *del = NULL;
    size_t nkeys = 0, ndel = 0, stale = 0;
    kc_ctx *ctx = NULL;
    kc_vault *v = NULL;
    unsigned opened, listed, reopened;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_p11_fault_arm("C_FindObjectsInit", "CKR_DEVICE_ERROR", 1000000, 0, &e),
                          KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_ctx_new(KC_SOFTHSM_MODULE, kc_test_env_pin, NULL, &ctx, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_vault_open(ctx, vault, &v, &e), KC_OK);
    opened = kc_p11_fault_calls();
    CU_ASSERT_EQUAL_FATAL(kc_key_list_all(v, &keys, &nkeys, &del, &ndel, &e), KC_OK);
    listed = kc_p11_fault_calls();
    CU_ASSERT_EQUAL_FATAL(kc_keystate_stale(v, 0, &stale, &e), KC_OK);
    *per_vault = kc_p11_fault_calls();
    *list_all = listed - opened;
    CU_ASSERT(nkeys > 0 && ndel > 0); /* both kinds, from the one listing */
    kc_key_list_free(keys, nkeys);
    kc_key_list_free(del, ndel);
    kc_vault_free(v);
    CU_ASSERT_EQUAL_FATAL(kc_vault_open(ctx, vault, &v, &e), KC_OK);
    reopened = kc_p11_fault_calls();
    CU_ASSERT_EQUAL_FATAL(kc_key_list(v, &keys, &nkeys, &e), KC_OK);
    *list = kc_p11_fault_calls() - reopened;
    kc_key_list_free(keys, nkeys);
    kc_vault_free(v);
    kc_ctx_free(ctx);
    kc_p11_fault_disarm();
}

static void add_vaults(int from, int to, int keys)
{
    char name[32], ref[48];
    int i, k;

    for (i = from; i < to; i++) {
        snprintf(name, sizeof(name), "PlanV%02d", i);
        kc_test_vault(name, "s", "westus");
        for (k = 0; k < keys; k++) {
            snprintf(ref, sizeof(ref), "%s/Key%d", name, k);
            kc_test_key(ref, NULL);
        }
    }
}

/* 'policy plan' searches each vault's key objects once (one enumeration
 * gives both the keys and the deleted keys), whatever the number of keys,
 * and finds every vault's token in one pass over the slots: its cost grows
 * with the vaults, not with their square. */
static void test_plan_reads_each_token_once(void)
{
    const char *file;
    unsigned find_empty, find_keys, find_four, info_two, info_four, per_vault, list_all, list;
    unsigned valid_two, valid_four;

    add_vaults(0, 2, 0);
    file = layout_of(2);
    find_empty = plan_calls(file, "C_FindObjectsInit");
    kc_test_key("PlanV00/Key0", NULL);
    kc_test_key("PlanV00/Key1", NULL);
    kc_test_key("PlanV01/Key0", NULL);
    kc_test_key("PlanV01/Key1", NULL);
    /* a deleted key too: plan lists those beside the others */
    ASSERT_RC(kc_test_run("key", "delete", "PlanV00/Key1", "--pin-source", "env:TEST_PIN", NULL),
              0);
    find_keys = plan_calls(file, "C_FindObjectsInit");
    info_two = plan_calls(file, "C_GetTokenInfo");
    valid_two = plan_calls(NULL, "C_GetTokenInfo");
    add_vaults(2, 4, 2);
    file = layout_of(4);
    find_four = plan_calls(file, "C_FindObjectsInit");
    info_four = plan_calls(file, "C_GetTokenInfo");
    valid_four = plan_calls(NULL, "C_GetTokenInfo");
    vault_searches("PlanV00", &per_vault, &list_all, &list);
    fprintf(stderr,
            "policy plan: C_FindObjectsInit %u (2 vaults, no keys), %u (2 vaults, 4 keys), %u (4 "
            "vaults, 8 keys); a vault's open + one listing + stale check %u, of it the listing "
            "%u (kc_key_list %u); C_GetTokenInfo %u (2 vaults), %u (4); vault validate --all "
            "C_GetTokenInfo %u (2), %u (4)\n",
            find_empty, find_keys, find_four, per_vault, list_all, list, info_two, info_four,
            valid_two, valid_four);
    /* the searches per vault do not grow with its keys ... */
    CU_ASSERT_EQUAL(find_keys, find_empty);
    CU_ASSERT_EQUAL(find_four, 2 * find_keys);
    /* ... and are one enumeration of them: the one listing that gives the
     * keys and the deleted keys costs what listing the keys costs, and plan
     * reads a vault with nothing more than it (no second listing) */
    CU_ASSERT_EQUAL(list_all, list);
    CU_ASSERT_EQUAL(find_keys, 2 * per_vault);
    /* one pass over the slots, then each vault's own token; so for
     * 'vault validate --all', which observes every vault */
    CU_ASSERT(info_four <= 2 * info_two + 4);
    CU_ASSERT(valid_four <= 2 * valid_two + 4);
}

static const kc_test_case cases[] = {
    {"vault validate", test_vault_validate},
    {"plan reads each token once", test_plan_reads_each_token_once},
    {"repairs a half-made key", test_repairs_half_made_key},
    {"tidies generations an interrupted write left", test_tidies_stale_generations},
    {"plan, apply, plan again", test_plan_apply_plan},
    {"the layout names the audit log", test_layout_audit_path},
    {"edits show exactly themselves", test_edits_show_exactly_themselves},
    {"blocked changes", test_blocked_changes},
    {"apply needs --yes without a terminal", test_apply_needs_yes_without_terminal},
    {"an invalid layout is not planned", test_invalid_layout_is_not_planned},
    {"one apply at a time", test_lock},
    {"converges after injected failures", test_converges_after_injected_failures},
    {"converges after kill -9", test_converges_after_kill},
    {"Ctrl-C stops between actions", test_interrupted_apply},
    {"shipped layouts apply and validate", test_shipped_layouts_apply_and_validate},
    {NULL, NULL},
};

/* --- policy graph --- */

#define CONTOSO KC_SOURCE_DIR "/policies/contoso-tenant.yaml"
#define CONTOSO_SVG KC_SOURCE_DIR "/docs/contoso-tenant.svg"

/* Runs a Graphviz tool on DOT text (written to the test's graph.dot); its
 * exit status, its output in *out. */
static int graphviz(const char *dot, const char *tool, char **out)
{
    char file[1100];

    snprintf(file, sizeof(file), "%s", kc_test_path("graph.dot"));
    kc_test_write(file, dot, strlen(dot), 0644);
    return kc_test_sh(out, "%s '%s'", tool, file);
}

/* The edges of DOT text as Graphviz reads them, "tail label -> head label"
 * per line (labels raw: \n for a line break). */
static char *edges_of(const char *dot)
{
    char *out = NULL;

    CU_ASSERT_EQUAL_FATAL(
        graphviz(dot, "gvpr 'E{print($.tail.label, \" -> \", $.head.label)}'", &out), 0);
    return strdup(out);
}

/* The part of DOT text from the line that labels a cluster to the line
 * that closes it. */
static char *cluster_of(const char *dot, const char *label)
{
    const char *at = strstr(dot, label), *start, *end;
    char *s;

    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    for (start = at; start > dot && start[-1] != '\n'; start--)
        ;
    for (start--; start > dot && start[-1] != '\n'; start--) /* the "subgraph" line */
        ;
    end = strstr(at, "\n      }\n");
    CU_ASSERT_PTR_NOT_NULL_FATAL(end);
    s = strndup(start, (size_t)(end - start));
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    return s;
}

/* The line of DOT text that has needle. */
static char *line_of(const char *dot, const char *needle)
{
    const char *at = strstr(dot, needle), *start;

    if (at == NULL)
        fprintf(stderr, "\n  no line with %s in:\n%s\n", needle, dot);
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    for (start = at; start > dot && start[-1] != '\n'; start--)
        ;
    return strndup(start, strcspn(start, "\n"));
}

static size_t count_of(const char *text, const char *needle)
{
    size_t n = 0;

    for (; (text = strstr(text, needle)) != NULL; text += strlen(needle))
        n++;
    return n;
}

static void test_graph_shipped_layout(void)
{
    static const char *const vaults[] = {"vault VaultA1\\npremium", "vault VaultA2\\npremium",
                                         "service vault Service\\npremium"};
    static const char *const deps[][3] = {
        {"Contoso-Tenant\\ntenant", "TenantKeyA", "TenantKeyB"},
        {"Contoso-Mailboxes\\nexchange", "MailboxKeyA", "MailboxKeyB"},
        {"Contoso-SPO-NAM\\nsharepoint, geo NAM", "SharePointKeyA", "SharePointKeyB"},
    };
    char want[300], *dot, *edges, *v, *line;
    const kc_test_out *r;
    size_t i, j;

    r = kc_test_run("policy", "graph", CONTOSO, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_STRING_EQUAL(r->err, "");
    dot = strdup(r->out);
    CU_ASSERT_EQUAL(count_of(dot, "red"), 0);
    CU_ASSERT_EQUAL(count_of(dot, "subgraph cluster_v"), 3);
    for (i = 0; i < 3; i++)
        ASSERT_HAS(dot, vaults[i]);
    /* each vault holds its own keys: VaultA1 the A keys, VaultA2 the B keys */
    for (j = 0; j < 2; j++) {
        v = cluster_of(dot, vaults[j]);
        for (i = 0; i < 3; i++) {
            snprintf(want, sizeof(want), "[label=\"%s\\nRSA-3072 hsm\"", deps[i][1 + j]);
            ASSERT_HAS(v, want);
            CU_ASSERT_PTR_NULL(strstr(v, deps[i][2 - j]));
        }
        free(v);
    }
    /* each vault in the cluster of its subscription and region */
    ASSERT_HAS(dot,
               "label=\"subscription contoso-a\\nContoso Customer Key A\\nmandatory retention\"");
    ASSERT_HAS(dot, "label=\"region eastus2\"");
    /* eastus2 and centralus are an Azure pair: the dashed edge, not red (no
     * DEP has vaults in both) */
    line = line_of(dot, "label=\"Azure region pair");
    ASSERT_HAS(line, "ltail=cluster_r1, lhead=cluster_r2");
    ASSERT_HAS(line, "style=dashed");
    free(line);
    CU_ASSERT_EQUAL(count_of(dot, "Azure region pair"), 1);
    /* the edges as Graphviz reads them: each DEP to its two root keys and to
     * its availability key, each assignment to its DEP */
    edges = edges_of(dot);
    for (i = 0; i < 3; i++) {
        for (j = 1; j < 3; j++) {
            snprintf(want, sizeof(want), "DEP %s -> %s\\nRSA-3072 hsm\n", deps[i][0], deps[i][j]);
            ASSERT_HAS(edges, want);
        }
        snprintf(want, sizeof(want), "DEP %s -> availability key\\nof %.*s\n", deps[i][0],
                 (int)strcspn(deps[i][0], "\\"), deps[i][0]);
        ASSERT_HAS(edges, want);
    }
    ASSERT_HAS(edges, "tenant -> DEP Contoso-Tenant\\ntenant\n");
    ASSERT_HAS(edges, "mailbox:ceo@contoso.com -> DEP Contoso-Mailboxes\\nexchange\n");
    ASSERT_HAS(edges, "mailbox:cfo@contoso.com -> DEP Contoso-Mailboxes\\nexchange\n");
    ASSERT_HAS(edges, "geo:NAM -> DEP Contoso-SPO-NAM\\nsharepoint, geo NAM\n");
    /* 6 root keys, 3 availability keys, 4 assignments, the pair */
    CU_ASSERT_EQUAL(count_of(edges, "\n"), 6 + 3 + 4 + 1);
    free(edges);
    free(dot);
}

/* Two vaults of a DEP in an Azure region pair (westus, eastus): the pair
 * edge, both vaults and the DEP red with the rule, nothing else; drawn, and
 * exit 3. */
static void test_graph_paired_regions_red(void)
{
    const char *file = kc_test_layout_with_service("");
    const kc_test_out *r;
    char *dot, *line, *v;

    r = kc_test_run("policy", "graph", file, NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_EQUAL(count_of(r->out, "red"), 0);
    kc_test_edit(file, "    region: eastus2\n", "    region: eastus\n");
    r = kc_test_run("policy", "graph", file, NULL);
    ASSERT_RC(r, 3);
    ASSERT_HAS(r->err, "error[KC012]: vaults 'VaultA1' (westus) and 'VaultB1' (eastus) are an "
                       "Azure region pair");
    ASSERT_HAS(r->err, "is invalid: 1 error, 0 warnings (drawn in red)");
    dot = strdup(r->out);
    /* the pair edge between the two region clusters */
    line = line_of(dot, "label=\"Azure region pair");
    ASSERT_HAS(line, "label=\"Azure region pair\\n[KC012]\", color=\"red\"");
    ASSERT_HAS(line, "tooltip=\"error[KC012]: vaults 'VaultA1' (westus) and 'VaultB1' (eastus)");
    free(line);
    v = cluster_of(dot, "label=\"vault VaultA1\\npremium\\n[KC012]\"");
    ASSERT_HAS(v, "color=\"red\"");
    free(v);
    v = cluster_of(dot, "label=\"vault VaultB1\\npremium\\n[KC012]\"");
    ASSERT_HAS(v, "color=\"red\"");
    free(v);
    line = line_of(dot, "[label=\"DEP Dep1\\ntenant\\n[KC012]\"");
    ASSERT_HAS(line, "color=\"red\"");
    free(line);
    /* nothing else: the keys, the service vault, the subscriptions */
    CU_ASSERT_EQUAL(count_of(dot, " color=\"red\""), 4);
    CU_ASSERT_EQUAL(count_of(dot, "\\n[KC012]\""), 4); /* in labels */
    v = cluster_of(dot, "label=\"service vault Service\\npremium\"");
    CU_ASSERT_PTR_NULL(strstr(v, "red"));
    free(v);
    free(dot);
    /* waived: a warning, orange */
    kc_test_edit(file, "    workload: tenant\n",
                 "    workload: tenant\n    paired_regions_waiver: the lab has two regions\n");
    r = kc_test_run("policy", "graph", file, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->err, "warning[KC012]");
    CU_ASSERT_EQUAL(count_of(r->out, " color=\"red\""), 0);
    CU_ASSERT_EQUAL(count_of(r->out, " color=\"darkorange\""), 4);
}

/* A rule about one key marks that key (by its source position), not its
 * vault; a reference to an undeclared key marks that edge. */
static void test_graph_key_rules_red(void)
{
    const char *file = kc_test_layout("      - name: KeyB\n        size: 2048\n",
                                      "      - name: KeyB\n        size: 1024\n");
    const kc_test_out *r;
    char *dot, *line, *v;

    kc_test_edit(file, "    keys: [VaultA1/KeyA, VaultB1/KeyB]\n",
                 "    keys: [VaultA1/KeyA, VaultB1/KeyB]\n  - name: Dep2\n    workload: exchange\n"
                 "    keys: [VaultA1/KeyA, VaultB1/Nope]\n");
    r = kc_test_run("policy", "graph", file, NULL);
    ASSERT_RC(r, 3);
    ASSERT_HAS(r->err, "error[KC016]: key 'VaultB1/KeyB' has size 1024");
    ASSERT_HAS(r->err, "error[KC028]: DEP 'Dep2' names key 'VaultB1/Nope'");
    dot = strdup(r->out);
    line = line_of(dot, "[label=\"KeyB\\nRSA-1024 hsm\\n[KC016]\"");
    ASSERT_HAS(line, "color=\"red\"");
    ASSERT_HAS(line, "tooltip=\"error[KC016]: key 'VaultB1/KeyB' has size 1024\"");
    free(line);
    v = cluster_of(dot, "label=\"vault VaultB1\\npremium\"");
    ASSERT_HAS(v, "labelloc=\"t\"; style=\"filled\"; fillcolor=\"white\";\n");
    free(v);
    /* the edge to the key that is not there, and the stand-in it ends at */
    line = line_of(dot, " -> d1_missing1 ");
    ASSERT_HAS(line, "label=\"[KC028]\", color=\"red\"");
    free(line);
    ASSERT_HAS(dot, "[label=\"VaultB1/Nope\\n(not declared)\\n[KC028]\"");
    if (count_of(dot, " color=\"red\"") != 3)
        fprintf(stderr, "\n  3 red elements expected in:\n%s\n", dot);
    CU_ASSERT_EQUAL(count_of(dot, " color=\"red\""), 3);
    free(dot);
}

/* Names come from the user's YAML: a quote, a backslash, a newline, an
 * entity, a control character stay inside their DOT strings and show as
 * written. */
static void test_graph_escaping(void)
{
    const char *evil = "\"Ev\\\" ]; pwn [label=\\\"x\\\\\\n&lt;\\x01\"";
    char old[200], new[200], *out = NULL, *dot, *line, *save = NULL;
    const char *file;
    const kc_test_out *r;

    snprintf(new, sizeof(new), "  - name: %s\n", evil);
    file = kc_test_layout("  - name: VaultA1\n", new);
    snprintf(old, sizeof(old), "[VaultA1/KeyA,");
    snprintf(new, sizeof(new), "[%.*s/KeyA\",", (int)strlen(evil) - 1, evil);
    kc_test_edit(file, old, new);
    r = kc_test_run("policy", "graph", file, NULL);
    ASSERT_RC(r, 3); /* KC029: not a vault name */
    ASSERT_HAS(r->err, "error[KC029]");
    dot = strdup(r->out);
    /* Graphviz reads it, and finds only the nodes keycustody made */
    CU_ASSERT_EQUAL(graphviz(dot, "dot -Tcanon", &out), 0);
    CU_ASSERT_EQUAL(graphviz(dot, "gvpr 'N{print($.name)}'", &out), 0);
    for (line = strtok_r(out, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        if (strspn(line, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(line))
            fprintf(stderr, "\n  a node id keycustody did not make: %s\n", line);
        CU_ASSERT_EQUAL(strspn(line, "abcdefghijklmnopqrstuvwxyz0123456789_"), strlen(line));
    }
    CU_ASSERT_PTR_NULL(strstr(dot, "\npwn"));
    /* the DEP's edge still reaches the key in that vault */
    line = edges_of(dot);
    ASSERT_HAS(line, "DEP Dep1\\ntenant -> KeyA\\nRSA-2048 hsm\n");
    free(line);
    /* as written, in the SVG text: the quote, the backslash, the newline and
     * the control character as \x0a and \x01, "&lt;" as those four
     * characters */
    CU_ASSERT_EQUAL(graphviz(dot, "dot -Tsvg", &out), 0);
    ASSERT_HAS(out, ">vault Ev&quot; ]; pwn [label=&quot;x\\\\x0a&amp;lt;\\x01</text>");
    free(dot);
}

/* The SVG, Graphviz's, without its geometry (coordinates, sizes, paths),
 * which depends on the fonts it finds, and without its version comment: what
 * it shows and how (every element, text, colour, style and tooltip). */
static char *svg_content(const char *svg)
{
    static const char *const geometry[] = {"x",       "y",         "cx", "cy",    "rx",
                                           "ry",      "points",    "d",  "width", "height",
                                           "viewBox", "transform", NULL};
    const char *p = svg, *skip;
    char *out = calloc(1, strlen(svg) + 1), *o = out;
    int in_tag = 0;
    size_t i, n;

    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    while (*p != '\0') {
        if (strncmp(p, "<!-- Generated by graphviz", 26) == 0 && (skip = strstr(p, "-->"))) {
            p = skip + 3;
            continue;
        }
        if (*p == '<')
            in_tag = 1;
        else if (*p == '>')
            in_tag = 0;
        if (in_tag && *p == ' ') {
            n = strspn(p + 1, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ");
            for (i = 0; geometry[i] != NULL; i++)
                if (strlen(geometry[i]) == n && strncmp(p + 1, geometry[i], n) == 0 &&
                    strncmp(p + 1 + n, "=\"", 2) == 0)
                    break;
            if (geometry[i] != NULL && (skip = strchr(p + n + 3, '"')) != NULL) {
                p = skip + 1;
                continue;
            }
        }
        *o++ = *p++;
    }
    return out;
}

/* --format svg: Graphviz's SVG of our DOT, to stdout or --out; as a
 * user runs it (its own process). */
static void test_graph_svg(void)
{
    char out[1100];
    unsigned char *svg;
    size_t len = 0;
    const kc_test_out *r;

    snprintf(out, sizeof(out), "%s", kc_test_path("contoso.svg"));
    r = kc_test_exec("policy", "graph", CONTOSO, "--format", "svg", "--out", out, NULL);
    ASSERT_RC(r, 0);
    ASSERT_HAS(r->out, "drew layout '" CONTOSO "' to ");
    CU_ASSERT_STRING_EQUAL(r->err, "");
    svg = kc_test_read(out, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(svg);
    CU_ASSERT_EQUAL(strncmp((char *)svg, "<?xml", 5), 0);
    ASSERT_HAS((char *)svg, "\n<svg ");
    ASSERT_HAS((char *)svg, ">DEP Contoso&#45;Tenant</text>");
    CU_ASSERT_EQUAL(strcmp((char *)svg + len - 7, "</svg>\n"), 0);
    /* an existing file is kept unless --force */
    r = kc_test_exec("policy", "graph", CONTOSO, "--format", "svg", "--out", out, NULL);
    ASSERT_RC(r, 5);
    r = kc_test_exec("policy", "graph", CONTOSO, "--format", "svg", "--out", out, "--force", NULL);
    ASSERT_RC(r, 0);
    /* on standard output, the same picture */
    r = kc_test_run("policy", "graph", CONTOSO, "--format", "svg", NULL);
    ASSERT_RC(r, 0);
    CU_ASSERT_STRING_EQUAL(r->out, (char *)svg);
    free(svg);
}

/* docs/contoso-tenant.svg, shown in the README, is what the command draws
 * of the shipped layout now (geometry aside, see svg_content). */
static void test_graph_committed_picture(void)
{
    unsigned char *committed;
    char *want, *got;
    size_t len = 0;
    const kc_test_out *r;

    committed = kc_test_read(CONTOSO_SVG, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(committed);
    r = kc_test_run("policy", "graph", CONTOSO, "--format", "svg", NULL);
    ASSERT_RC(r, 0);
    want = svg_content(r->out);
    got = svg_content((char *)committed);
    if (strcmp(want, got) != 0)
        fprintf(stderr, "\n  docs/contoso-tenant.svg is not the shipped layout's picture; make it "
                        "again with\n  keycustody policy graph policies/contoso-tenant.yaml "
                        "--format svg --out docs/contoso-tenant.svg --force\n");
    CU_ASSERT_STRING_EQUAL(got, want);
    /* the comparison sees what the picture shows */
    CU_ASSERT_PTR_NOT_NULL(strstr(got, ">TenantKeyA</text>"));
    CU_ASSERT_PTR_NULL(strstr(got, " x=\"1"));
    free(want);
    free(got);
    free(committed);
}

/* Without Graphviz: exit 1 and the package to install; a dot that fails:
 * its message; one that closes its input with more DOT to come: its status
 * and message too (the writer sees the pipe go, and SIGPIPE, which a write
 * racing that close would raise, is held off). */
static void test_graph_dot_missing_or_failing(void)
{
    const char *path = getenv("PATH");
    char *saved = strdup(path != NULL ? path : "/usr/bin:/bin"), *out = NULL, bin[1100];
    char empty[1200], big[80000];
    int rc;
    const char *file;
    const kc_test_out *r;
    size_t i, n;

    /* the dot that fails, made now: the PATH below has nothing else */
    snprintf(bin, sizeof(bin), "%s", kc_test_path("bin"));
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out, "mkdir '%s' '%s.empty'", bin, bin), 0);
    CU_ASSERT_EQUAL_FATAL(
        kc_test_sh(&out,
                   "printf '#!/bin/sh\\nexec 0<&-\\necho \"syntax error in line 1\" >&2\\n"
                   "exit 3\\n' > '%s/dot' && chmod 755 '%s/dot'",
                   bin, bin),
        0);
    n = (size_t)snprintf(big, sizeof(big), "%s",
                         "version: 1\nvaults:\n  - name: VaultA1\n    subscription: s\n"
                         "    region: westus\n    pin: env:TEST_PIN\n    keys:\n");
    for (i = 0; n + 40 < sizeof(big); i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n,
                              "      - name: Key%zu\n        size: 2048\n", i);
    file = kc_test_path("big.yaml");
    kc_test_write(file, big, n, 0644);

    /* no dot at all: PATH an empty directory (no FATAL asserts until PATH
     * is back) */
    snprintf(empty, sizeof(empty), "%s.empty", bin);
    setenv("PATH", empty, 1);
    r = kc_test_run("policy", "graph", CONTOSO, "--format", "svg", NULL);
    CU_ASSERT_EQUAL(r->rc, 1);
    ASSERT_HAS(r->err, "error: cannot draw layout '" CONTOSO "' as SVG: Graphviz's 'dot' is not "
                       "in any directory of PATH");
    ASSERT_HAS(r->err, "hint: install Graphviz (apt-get install graphviz)");
    CU_ASSERT_STRING_EQUAL(r->out, "");
    /* DOT needs no Graphviz */
    CU_ASSERT_EQUAL(kc_test_run("policy", "graph", CONTOSO, NULL)->rc, 0);
    /* a dot that refuses its input */
    setenv("PATH", bin, 1);
    r = kc_test_run("policy", "graph", CONTOSO, "--format", "svg", NULL);
    CU_ASSERT_EQUAL(r->rc, 1);
    ASSERT_HAS(r->err, "-Tsvg' exited 3: syntax error in line 1");
    /* more DOT than a pipe holds (64 KiB), to a dot that has gone */
    r = kc_test_run("policy", "graph", file, NULL);
    rc = r->rc;
    CU_ASSERT(strlen(r->out) > 70000);
    r = kc_test_run("policy", "graph", file, "--format", "svg", NULL);
    setenv("PATH", saved, 1);
    free(saved);
    CU_ASSERT_EQUAL(rc, 0);
    ASSERT_RC(r, 1);
    ASSERT_HAS(r->err, "-Tsvg' exited 3: syntax error in line 1");
}

static void test_graph_usage(void)
{
    const char *file = kc_test_layout("deps:\n", "depz:\n");
    const kc_test_out *r;

    r = kc_test_run("policy", "graph", CONTOSO, "--format", "png", NULL);
    ASSERT_RC(r, 2);
    ASSERT_HAS(r->err, "error: --format 'png': choose dot or svg");
    ASSERT_RC(kc_test_run("policy", "graph", NULL), 2);
    ASSERT_RC(kc_test_run("policy", "graph", CONTOSO, CONTOSO, NULL), 2);
    ASSERT_RC(kc_test_run("policy", "graph", CONTOSO, "--json", NULL), 2);
    /* a broken structure cannot be drawn */
    r = kc_test_run("policy", "graph", file, NULL);
    ASSERT_RC(r, 3);
    CU_ASSERT_STRING_EQUAL(r->out, "");
    ASSERT_HAS(r->err, "error[KC002]");
    ASSERT_HAS(r->err, "its structure is broken");
    r = kc_test_run("policy", "graph", kc_test_path("none.yaml"), NULL);
    CU_ASSERT_NOT_EQUAL(r->rc, 0);
    CU_ASSERT_STRING_EQUAL(r->out, "");
}

static const kc_test_case graph_cases[] = {
    {"the shipped layout", test_graph_shipped_layout},
    {"paired regions drawn red", test_graph_paired_regions_red},
    {"a key's rule drawn on the key", test_graph_key_rules_red},
    {"names cannot leave their DOT strings", test_graph_escaping},
    {"SVG through Graphviz", test_graph_svg},
    {"the committed picture is the shipped layout's", test_graph_committed_picture},
    {"Graphviz missing or failing", test_graph_dot_missing_or_failing},
    {"usage and broken structure", test_graph_usage},
    {NULL, NULL},
};

static const kc_test_case saved_cases[] = {
    {"plan --json: addresses, attributes before and after", test_plan_json_entries},
    {"a saved plan applies", test_saved_plan_applies},
    {"a saved plan keeps its layout", test_saved_plan_keeps_its_layout},
    {"stale: a key made or updated by hand", test_saved_plan_stale_key},
    {"stale: another apply", test_saved_plan_stale_after_another_apply},
    {"stale: a DEP made in the store", test_saved_plan_stale_store},
    {"damaged, other-version and others-writable plans", test_saved_plan_refused},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {
    {"plan", 1, cases},
    {"saved", 1, saved_cases},
    {"graph", 1, graph_cases},
    {NULL, 0, NULL},
};

int main(int argc, char **argv)
{
    if (freopen("/dev/null", "r", stdin) == NULL)
        return 2;
    return kc_test_main(argc, argv, suites);
}
