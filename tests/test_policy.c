/* The layout: every rule's fixture in tests/policy, checked against the
 * diagnostics it declares ("# expect: LINE:COL SEVERITY RULE"), and the
 * YAML reader's refusals. */
#include "fixture.h"
#include "kc_layout.h"
#include "kc_yaml.h"

#include <jansson.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIXTURES KC_SOURCE_DIR "/tests/policy"

/* Each expectation and each diagnostic as "LINE:COL SEVERITY RULE" (or
 * "SEVERITY RULE" where the fixture leaves the place to the YAML parser). */
static int compare(const char *file)
{
    char path[1024], line[512], expect[64][64], got[64][64];
    size_t ne = 0, ng = 0, i, j;
    const kc_test_out *r;
    json_t *arr, *d;
    FILE *f;
    int ok = 1;

    snprintf(path, sizeof(path), "%s/%s", FIXTURES, file);
    f = fopen(path, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    while (fgets(line, sizeof(line), f) != NULL && strncmp(line, "# expect: ", 10) == 0)
        if (strcmp(line + 10, "nothing\n") != 0 && ne < 64)
            snprintf(expect[ne++], sizeof(expect[0]), "%.*s", (int)strcspn(line + 10, "\n"),
                     line + 10);
    fclose(f);
    r = kc_test_run("policy", "check", path, "--json", NULL);
    arr = json_loads(r->out, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(arr);
    json_array_foreach(arr, i, d)
    {
        if (ng < 64)
            snprintf(got[ng++], sizeof(got[0]), "%lld:%lld %s %s",
                     (long long)json_integer_value(json_object_get(d, "line")),
                     (long long)json_integer_value(json_object_get(d, "column")),
                     json_string_value(json_object_get(d, "severity")),
                     json_string_value(json_object_get(d, "rule")));
    }
    json_decref(arr);
    for (i = 0; i < ne; i++) {
        int found = 0;
        for (j = 0; j < ng && !found; j++)
            found = strcmp(expect[i], got[j]) == 0 ||
                    (strchr(expect[i], ':') == NULL && strstr(got[j], expect[i]) != NULL);
        if (!found) {
            fprintf(stderr, "\n  %s: expected '%s', not reported", file, expect[i]);
            ok = 0;
        }
    }
    if (ng != ne) {
        fprintf(stderr, "\n  %s: %zu diagnostics, expected %zu:\n%s", file, ng, ne, r->out);
        ok = 0;
    }
    /* the exit code follows the severities */
    CU_ASSERT_EQUAL(r->rc, strstr(r->out, "\"error\"") ? 3 : 0);
    return ok;
}

static void test_fixtures(void)
{
    DIR *dir = opendir(FIXTURES);
    struct dirent *e;
    int fixtures = 0, pass = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(dir);
    while ((e = readdir(dir)) != NULL) {
        if (strstr(e->d_name, ".yaml") == NULL)
            continue;
        fixtures++;
        pass += compare(e->d_name);
    }
    closedir(dir);
    CU_ASSERT(fixtures >= 30);
    CU_ASSERT_EQUAL(pass, fixtures);
}

static void test_shipped_layouts_are_valid(void)
{
    static const char *layouts[] = {"contoso-tenant.yaml", "lab-single-dep.yaml",
                                    "custody-only.yaml"};
    const kc_test_out *r;
    char path[1024];
    size_t i;

    for (i = 0; i < sizeof(layouts) / sizeof(layouts[0]); i++) {
        snprintf(path, sizeof(path), "%s/policies/%s", KC_SOURCE_DIR, layouts[i]);
        r = kc_test_run("policy", "check", path, NULL);
        ASSERT_RC(r, 0);
        ASSERT_HAS(r->out, ": valid (");
    }
    r = kc_test_run("policy", "check", KC_SOURCE_DIR "/policies/contoso-tenant.yaml", NULL);
    ASSERT_HAS(r->out, "contoso-tenant.yaml: valid (0 warnings)");
}

/* A broken copy of the demo's layout fails at the right lines and columns. */
static void test_broken_copy(void)
{
    char path[1024], *out = NULL;
    const kc_test_out *r;

    CU_ASSERT_FATAL(kc_test_setup() == 0);
    snprintf(path, sizeof(path), "%s", kc_test_path("broken.yaml"));
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out,
                                     "sed -e 's/region: eastus2/region: eastus/' -e "
                                     "'s/pin: env:VAULTA2_PIN/pin: 1234-5678/' '%s' > '%s'",
                                     KC_SOURCE_DIR "/policies/contoso-tenant.yaml", path),
                          0);
    r = kc_test_run("policy", "check", path, NULL);
    ASSERT_RC(r, 3);
    /* the literal PIN is a structural error: the reader stops there */
    ASSERT_HAS(r->out, "broken.yaml:54:10: error[KC008]: 'pin' must be a PIN source, not a PIN");
    CU_ASSERT_PTR_NULL(strstr(r->out, "1234-5678"));
    CU_ASSERT_EQUAL_FATAL(
        kc_test_sh(&out, "sed -i 's/pin: 1234-5678/pin: env:VAULTA2_PIN/' '%s'", path), 0);
    r = kc_test_run("policy", "check", path, NULL);
    ASSERT_RC(r, 3);
    ASSERT_HAS(r->out, "broken.yaml:90:32: error[KC012]: vaults 'VaultA1' (westus) and 'VaultA2' "
                       "(eastus) are an Azure region pair");
    CU_ASSERT(kc_test_teardown() == 0);
}

/* The exact text a user reads. */
static void test_golden_text(void)
{
    const kc_test_out *r;

    r = kc_test_run("policy", "check", FIXTURES "/fail-KC012-region-pair.yaml", NULL);
    ASSERT_RC(r, 3);
    CU_ASSERT_STRING_EQUAL(
        r->out,
        FIXTURES "/fail-KC012-region-pair.yaml:35:26: error[KC012]: vaults 'VaultA1' (westus) "
                 "and 'VaultB1' (eastus) are an Azure region pair; a DEP's two vaults must be in "
                 "non-paired regions\n"
                 "    hint: choose non-paired regions, or give paired_regions_waiver: REASON\n");
    ASSERT_HAS(r->err, "error: layout '" FIXTURES "/fail-KC012-region-pair.yaml' is invalid: 1 "
                       "error, 0 warnings");
    r = kc_test_run("policy", "check", FIXTURES "/fail-KC008-literal-pin.yaml", NULL);
    CU_ASSERT_PTR_NULL(strstr(r->out, "s3cret-pin")); /* a PIN is never repeated */
    r = kc_test_run("policy", "check", KC_SOURCE_DIR "/no/such.yaml", NULL);
    ASSERT_RC(r, 4);
}

static const kc_test_case rule_cases[] = {
    {"every rule's fixture", test_fixtures},
    {"shipped layouts are valid", test_shipped_layouts_are_valid},
    {"golden text", test_golden_text},
    {"a broken copy of the demo's layout", test_broken_copy},
    {NULL, NULL},
};

/* --- the YAML reader --- */

static size_t parse_rules(const char *text, const char *rule)
{
    kc_diags d;
    kc_ynode *n;
    size_t i, hits = 0;

    kc_diags_init(&d, "t.yaml");
    n = kc_yaml_parse((const unsigned char *)text, strlen(text), &d);
    for (i = 0; i < d.n; i++)
        hits += strcmp(d.v[i].rule, rule) == 0;
    if (hits == 0 && d.n > 0)
        fprintf(stderr, "\n  got %s: %s", d.v[0].rule, d.v[0].msg);
    kc_yaml_free(n);
    kc_diags_release(&d);
    return hits;
}

static void test_yaml_refusals(void)
{
    char *deep, *big;
    size_t i;

    /* an alias merging a map into another could hide a duplicate key */
    CU_ASSERT(parse_rules("a: &x {k: 1}\nb:\n  <<: *x\n  k: 2\n", "KC005") > 0);
    CU_ASSERT(parse_rules("a: 1\na: 2\n", "KC003") == 1);
    CU_ASSERT(parse_rules("a: !!str 1\n", "KC004") == 1);
    CU_ASSERT(parse_rules("a: 1\n---\nb: 2\n", "KC001") == 1);
    CU_ASSERT(parse_rules("? [a, b]\n: 1\n", "KC004") == 1);
    CU_ASSERT(parse_rules("a: [1, 2\n", "KC001") == 1);
    deep = malloc(4096);
    strcpy(deep, "a: ");
    for (i = 0; i < 40; i++)
        strcat(deep, "[");
    for (i = 0; i < 40; i++)
        strcat(deep, "]");
    CU_ASSERT(parse_rules(deep, "KC006") == 1);
    free(deep);
    big = malloc(KC_YAML_MAX_BYTES + 16);
    memset(big, '#', KC_YAML_MAX_BYTES + 8);
    big[KC_YAML_MAX_BYTES + 8] = '\0';
    CU_ASSERT(parse_rules(big, "KC006") == 1);
    free(big);
    CU_ASSERT(parse_rules("", "KC001") == 0); /* empty is an empty map */
}

static void test_yaml_positions(void)
{
    const char *text = "top:\n  inner: value\n  list:\n    - x\n";
    kc_diags d;
    kc_ynode *n;
    const kc_ynode *top, *list;

    kc_diags_init(&d, "t.yaml");
    n = kc_yaml_parse((const unsigned char *)text, strlen(text), &d);
    CU_ASSERT_PTR_NOT_NULL_FATAL(n);
    top = kc_yaml_get(n, "top", NULL);
    CU_ASSERT_EQUAL(kc_yaml_get(top, "inner", NULL)->line, 2);
    CU_ASSERT_EQUAL(kc_yaml_get(top, "inner", NULL)->col, 10);
    list = kc_yaml_get(top, "list", NULL);
    CU_ASSERT_EQUAL(list->items[0]->line, 4);
    CU_ASSERT_EQUAL(list->items[0]->col, 7);
    kc_yaml_free(n);
    kc_diags_release(&d);
}

static const kc_test_case yaml_cases[] = {
    {"refusals", test_yaml_refusals},
    {"positions", test_yaml_positions},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {
    {"rules", 0, rule_cases},
    {"yaml", 0, yaml_cases},
    {NULL, 0, NULL},
};

int main(int argc, char **argv)
{
    if (freopen("/dev/null", "r", stdin) == NULL)
        return 2;
    return kc_test_main(argc, argv, suites);
}
