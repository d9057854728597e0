/* The two-vault layout the plan and DEP tests start from. */
#include "fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char base[] =
    "version: 1\n"
    "subscriptions:\n"
    "  - id: sub-a\n"
    "    mandatory_retention: true\n"
    "  - id: sub-b\n"
    "    mandatory_retention: true\n"
    "service_principal: svc\n"
    "vaults:\n"
    "  - name: VaultA1\n"
    "    subscription: sub-a\n"
    "    region: westus\n"
    "    pin: env:TEST_PIN\n"
    "    so_pin: env:TEST_SO_PIN\n"
    "    purge_protection: true\n"
    "    access:\n"
    "      - principal: svc\n"
    "        role: service\n"
    "      - principal: officer\n"
    "        permissions: [get, list, update, delete, recover, purge, rotate]\n"
    "    keys:\n"
    "      - name: KeyA\n"
    "        size: 2048\n"
    "  - name: VaultB1\n"
    "    subscription: sub-b\n"
    "    region: eastus2\n"
    "    pin: env:TEST_PIN\n"
    "    so_pin: env:TEST_SO_PIN\n"
    "    purge_protection: true\n"
    "    access:\n"
    "      - principal: svc\n"
    "        role: service\n"
    "      - principal: officer\n"
    "        permissions: [get, list, update, delete, recover, purge, rotate]\n"
    "    keys:\n"
    "      - name: KeyB\n"
    "        size: 2048\n"
    "deps:\n"
    "  - name: Dep1\n"
    "    workload: tenant\n"
    "    keys: [VaultA1/KeyA, VaultB1/KeyB]\n";

const char *kc_test_layout(const char *old, const char *new)
{
    static char layout_path[1024];
    char text[4096];
    const char *at;

    snprintf(text, sizeof(text), "%s", base);
    if (old != NULL) {
        at = strstr(base, old);
        CU_ASSERT_PTR_NOT_NULL_FATAL(at);
        snprintf(text, sizeof(text), "%.*s%s%s", (int)(at - base), base, new, at + strlen(old));
    }
    snprintf(layout_path, sizeof(layout_path), "%s", kc_test_path("layout.yaml"));
    kc_test_write(layout_path, text, strlen(text), 0644);
    return layout_path;
}

void kc_test_edit(const char *file, const char *old, const char *new)
{
    unsigned char *buf;
    char *text, *at;
    size_t len = 0;

    buf = kc_test_read(file, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    at = strstr((char *)buf, old);
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    text = malloc(len + strlen(new) + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    sprintf(text, "%.*s%s%s", (int)(at - (char *)buf), (char *)buf, new, at + strlen(old));
    kc_test_write(file, text, strlen(text), 0644);
    free(text);
    free(buf);
}

/* The test layout with a service vault and the store beside it; deps goes
 * after its "deps:" line (the layout's Dep1 follows). */
const char *kc_test_layout_with_service(const char *deps)
{
    const char *file = kc_test_layout(NULL, NULL);
    char with[4096];

    kc_test_edit(file, "  - id: sub-b\n", "  - id: sub-svc\n  - id: sub-b\n");
    kc_test_edit(file, "vaults:\n",
              "vaults:\n  - name: Service\n    subscription: sub-svc\n    region: "
              "centralus\n    pin: env:TEST_PIN\n    so_pin: env:TEST_SO_PIN\n");
    snprintf(with, sizeof(with), "service_vault: Service\nstore: %s\n%sdeps:\n",
             kc_test_on_pg() ? kc_test_store() : "service.db", deps);
    kc_test_edit(file, "deps:\n", with);
    return file;
}

kc_rc kc_test_env_pin(void *arg, const char *vault, kc_pin_kind kind, kc_secret **out,
                      kc_error *err)
{
    const char *v = getenv(kind == KC_PIN_SO || kind == KC_PIN_NEW_SO ? "TEST_SO_PIN" : "TEST_PIN");

    (void)arg;
    (void)vault;
    *out = kc_secret_dup(v, strlen(v));
    return *out ? KC_OK : kc_error_set(err, KC_ERR, "oom");
}

/* Objects as pkcs11-tool lists them, each with its label; the audit key
 * and anchors (labels keycustody-audit...) and the vault key that signs the
 * manifest (keycustody-vault-key, made with every vault) are left out unless
 * audit, and each document's commit record (label ending ".commit") unless
 * commits, which counts only those; the vault's private record of its
 * current manifest (keycustody-vault.current) never. */
static int count_labelled(const char *vault, const char *types, int audit, int commits)
{
    char *out = NULL; /* kc_test_sh's buffer, kept by it */

    if (kc_test_sh(&out,
                   "pkcs11-tool --module '%s' --token-label %s --login --pin env:TEST_PIN "
                   "-O 2>/dev/null | awk -v audit=%d -v commits=%d '"
                   "function done() { if (!t || l ~ /keycustody-vault[.]current/) return; "
                   "  if (l ~ /keycustody-(audit|vault-key)/) { if (audit && !commits) n++; return } "
                   "  if ((l ~ /[.]commit[^a-z]*$/) == commits) n++ } "
                   "/^[A-Z]/ { done(); t = 0; l = \"\" } /^(%s)/ { t = 1 } "
                   "/^ *label:/ { l = $0 } END { done(); print n + 0 }'",
                   KC_SOFTHSM_MODULE, vault, audit, commits, types) > 1)
        return -1;
    return atoi(out);
}

static int count_objects(const char *vault, const char *types, int audit)
{
    return count_labelled(vault, types, audit, 0);
}

int kc_test_commit_records(const char *vault)
{
    return count_labelled(vault, "Data", 0, 1);
}

int kc_test_objects(const char *vault)
{
    return count_objects(vault, "Public|Private|Secret|Data", 0);
}

int kc_test_audit_objects(const char *vault)
{
    return count_objects(vault, "Public|Private|Secret|Data", 1) -
           count_objects(vault, "Public|Private|Secret|Data", 0);
}

int kc_test_secret_keys(const char *vault)
{
    return count_objects(vault, "Secret Key", 0);
}
