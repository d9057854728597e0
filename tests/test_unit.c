/* Unit tests: no token needed. */
#include "fixture.h"
#include "kc_data.h"
#include "kc_key.h"
#include "kc_store.h"
#include "kc_util.h"
#include "kc_vault.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* --- errors --- */

static void test_error_chain(void)
{
    kc_error e;
    char line[2048];

    kc_error_clear(&e);
    CU_ASSERT_EQUAL(kc_error_set(&e, KC_NOT_FOUND, "no key '%s'", "K"), KC_NOT_FOUND);
    CU_ASSERT_EQUAL(kc_error_prefix(&e, "cannot show '%s'", "V/K"), KC_NOT_FOUND);
    kc_error_format(&e, line, sizeof(line));
    CU_ASSERT_STRING_EQUAL(line, "cannot show 'V/K': no key 'K'");
}

static void test_error_prefix_keeps_context_when_long(void)
{
    kc_error e;
    char big[2000];

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    kc_error_clear(&e);
    kc_error_set(&e, KC_TOKEN, "%s", big);
    kc_error_prefix(&e, "cannot create key 'A'");
    CU_ASSERT_EQUAL(strncmp(e.msg, "cannot create key 'A': xxx", 26), 0);
    CU_ASSERT_EQUAL(strlen(e.msg), sizeof(e.msg) - 1);
}

static void test_rv_names(void)
{
    CU_ASSERT_STRING_EQUAL(kc_p11_rv_name(0xa0), "CKR_PIN_INCORRECT");
    CU_ASSERT_STRING_EQUAL(kc_p11_rv_name(0x30), "CKR_DEVICE_ERROR");
    CU_ASSERT_STRING_EQUAL(kc_p11_rv_name(0x5555), "CKR_0x5555");
}

static void test_fault_arm_checks(void)
{
    kc_error e;

    kc_error_clear(&e);
    CU_ASSERT_EQUAL(kc_p11_fault_arm("C_Login", "CKR_NOPE", 1, 0, &e), KC_USAGE);
    CU_ASSERT_EQUAL(kc_p11_fault_arm("C_Bogus", "CKR_DEVICE_ERROR", 1, 0, &e), KC_USAGE);
    CU_ASSERT_EQUAL(kc_p11_fault_arm("C_Login", "CKR_DEVICE_ERROR", 0, 0, &e), KC_USAGE);
    CU_ASSERT_EQUAL(kc_p11_fault_arm("C_Login", "CKR_DEVICE_ERROR", 1, 0, &e), KC_OK);
    kc_p11_fault_disarm();
}

static const kc_test_case error_cases[] = {
    {"chain", test_error_chain},
    {"long context", test_error_prefix_keeps_context_when_long},
    {"rv names", test_rv_names},
    {"fault arm checks", test_fault_arm_checks},
    {NULL, NULL},
};

/* --- PIN sources --- */

static char tmpd[256];

static const char *tmp_path(const char *name)
{
    static char p[512];

    if (tmpd[0] == '\0') {
        snprintf(tmpd, sizeof(tmpd), "/tmp/kc-unit-XXXXXX");
        CU_ASSERT_FATAL(mkdtemp(tmpd) != NULL);
    }
    snprintf(p, sizeof(p), "%s/%s", tmpd, name);
    return p;
}

static void test_env_source(void)
{
    kc_secret *s = NULL;
    kc_error e;

    setenv("KC_UNIT_PIN", "1234abcd", 1);
    CU_ASSERT_EQUAL_FATAL(kc_secret_from_source("env:KC_UNIT_PIN", &s, &e), KC_OK);
    CU_ASSERT_EQUAL(s->len, 8);
    CU_ASSERT_STRING_EQUAL((char *)s->data, "1234abcd");
    kc_secret_free(s);
    unsetenv("KC_UNIT_PIN");
    CU_ASSERT_EQUAL(kc_secret_from_source("env:KC_UNIT_PIN", &s, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "'KC_UNIT_PIN' is not set");
    setenv("KC_UNIT_PIN", "", 1);
    CU_ASSERT_EQUAL(kc_secret_from_source("env:KC_UNIT_PIN", &s, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "is empty");
}

static void test_file_source(void)
{
    kc_secret *s = NULL;
    kc_error e;
    char src[600];

    kc_test_write(tmp_path("pin"), "s3cret-pin\n", 11, 0600);
    snprintf(src, sizeof(src), "file:%s", tmp_path("pin"));
    CU_ASSERT_EQUAL_FATAL(kc_secret_from_source(src, &s, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL((char *)s->data, "s3cret-pin"); /* newline dropped */
    kc_secret_free(s);

    CU_ASSERT_EQUAL(chmod(tmp_path("pin"), 0640), 0);
    CU_ASSERT_EQUAL(kc_secret_from_source(src, &s, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "has mode 0640; it must be 0600 or stricter");
    ASSERT_HAS(e.hint, "chmod 600");

    CU_ASSERT_EQUAL(chmod(tmp_path("pin"), 0400), 0);
    CU_ASSERT_EQUAL(kc_secret_from_source(src, &s, &e), KC_OK);
    kc_secret_free(s);

    {
        char target[600];
        snprintf(target, sizeof(target), "%s", tmp_path("pin"));
        unlink(tmp_path("link"));
        CU_ASSERT_EQUAL(symlink(target, tmp_path("link")), 0);
    }
    snprintf(src, sizeof(src), "file:%s", tmp_path("link"));
    CU_ASSERT_EQUAL(kc_secret_from_source(src, &s, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "symbolic link");

    snprintf(src, sizeof(src), "file:%s", tmp_path("missing"));
    CU_ASSERT_EQUAL(kc_secret_from_source(src, &s, &e), KC_USAGE);

    kc_test_write(tmp_path("empty"), "\n", 1, 0600);
    snprintf(src, sizeof(src), "file:%s", tmp_path("empty"));
    CU_ASSERT_EQUAL(kc_secret_from_source(src, &s, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "is empty");
}

static void test_file_source_owner(void)
{
    kc_secret *s = NULL;
    kc_error e;
    char src[600];

    if (geteuid() != 0)
        return; /* only root can give a file away; CI runs as root */
    kc_test_write(tmp_path("other"), "1234", 4, 0600);
    CU_ASSERT_EQUAL_FATAL(chown(tmp_path("other"), 65534, 65534), 0);
    snprintf(src, sizeof(src), "file:%s", tmp_path("other"));
    CU_ASSERT_EQUAL(kc_secret_from_source(src, &s, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "is owned by uid 65534, not by you");
}

static void test_literal_pin_refused_and_not_echoed(void)
{
    kc_secret *s = NULL;
    kc_error e;

    CU_ASSERT_EQUAL(kc_secret_from_source("123456", &s, &e), KC_USAGE);
    CU_ASSERT_PTR_NULL(strstr(e.msg, "123456"));
    CU_ASSERT_PTR_NULL(strstr(e.hint, "123456"));
    CU_ASSERT_EQUAL(kc_secret_from_source("pass:123456", &s, &e), KC_USAGE);
    CU_ASSERT_PTR_NULL(strstr(e.msg, "123456"));
}

static void test_secret_read_file_limits(void)
{
    kc_secret *s = NULL;
    kc_error e;

    kc_test_write(tmp_path("big"), "0123456789", 10, 0644);
    CU_ASSERT_EQUAL(kc_secret_read_file(tmp_path("big"), 8, &s, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "holds 10 bytes; at most 8 are accepted");
    CU_ASSERT_EQUAL_FATAL(kc_secret_read_file(tmp_path("big"), 64, &s, &e), KC_OK);
    CU_ASSERT_EQUAL(s->len, 10);
    kc_secret_free(s);
}

static const kc_test_case secret_cases[] = {
    {"env source", test_env_source},
    {"file source", test_file_source},
    {"file owner", test_file_source_owner},
    {"literal refused", test_literal_pin_refused_and_not_echoed},
    {"read file limits", test_secret_read_file_limits},
    {NULL, NULL},
};

/* --- util --- */

static void test_hex_b64(void)
{
    unsigned char in[] = {0x00, 0xff, 0x10, 0xab}, out[8];
    char hex[9];
    size_t n;
    char *b;
    unsigned char *d;

    kc_hex_encode(in, 4, hex);
    CU_ASSERT_STRING_EQUAL(hex, "00ff10ab");
    CU_ASSERT_EQUAL(kc_hex_decode("00FF10ab", out, sizeof(out), &n), 0);
    CU_ASSERT_EQUAL(n, 4);
    CU_ASSERT_EQUAL(memcmp(in, out, 4), 0);
    CU_ASSERT_EQUAL(kc_hex_decode("0g", out, sizeof(out), &n), -1);
    CU_ASSERT_EQUAL(kc_hex_decode("abc", out, sizeof(out), &n), -1);
    b = kc_b64url_encode(in, 4);
    CU_ASSERT_STRING_EQUAL(b, "AP8Qqw");
    d = kc_b64url_decode(b, &n);
    CU_ASSERT_EQUAL(n, 4);
    CU_ASSERT_EQUAL(memcmp(d, in, 4), 0);
    free(b);
    free(d);
    CU_ASSERT_PTR_NULL(kc_b64url_decode("AP8Q+w", &n)); /* '+' is not base64url */
    CU_ASSERT_PTR_NULL(kc_b64url_decode("A", &n));
}

static void test_dates_and_clock(void)
{
    char d[9], f[11];
    time_t t;
    kc_error e;

    CU_ASSERT_EQUAL(kc_date_parse("9999-12-31", d), 0);
    CU_ASSERT_STRING_EQUAL(d, "99991231");
    kc_date_format(d, f);
    CU_ASSERT_STRING_EQUAL(f, "9999-12-31");
    CU_ASSERT_EQUAL(kc_date_parse("2026-02-30", d), -1);
    CU_ASSERT_EQUAL(kc_date_parse("2026-2-3", d), -1);
    CU_ASSERT_EQUAL(kc_date_parse("tomorrow", d), -1);
    setenv("KEYCUSTODY_NOW", "2030-06-01T10:00:00Z", 1);
    CU_ASSERT_EQUAL(kc_date_today(d, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(d, "20300601");
    setenv("KEYCUSTODY_NOW", "2030-06-01T01:00:00+02:00", 1);
    CU_ASSERT_EQUAL(kc_clock_now(&t, &e), KC_OK);
    CU_ASSERT_EQUAL(kc_date_today(d, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(d, "20300531");
    setenv("KEYCUSTODY_NOW", "June 1st", 1);
    CU_ASSERT_EQUAL(kc_clock_now(&t, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "not an RFC 3339 time");
    unsetenv("KEYCUSTODY_NOW");
}

static void test_file_write(void)
{
    struct stat st;
    kc_error e;

    unlink(tmp_path("w"));
    CU_ASSERT_EQUAL(kc_file_write(tmp_path("w"), "abc", 3, 0600, 0, &e), KC_OK);
    CU_ASSERT_EQUAL(stat(tmp_path("w"), &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    CU_ASSERT_EQUAL(kc_file_write(tmp_path("w"), "xyz", 3, 0600, 0, &e), KC_CONFLICT);
    CU_ASSERT_EQUAL(kc_file_write(tmp_path("w"), "xyz", 3, 0600, 1, &e), KC_OK);
    CU_ASSERT_EQUAL(kc_file_write("/nonexistent-dir/x", "xyz", 3, 0600, 1, &e), KC_NOT_FOUND);
    ASSERT_HAS(e.msg, "cannot write '/nonexistent-dir/x' (a new file beside it)");
}

/* scripts/fresh-check.sh installs by hand exactly what the README's quick
 * start says to, so the fresh-machine run proves the README. */
static void test_quick_start_by_hand(void)
{
    char *out = NULL;

    CU_ASSERT_EQUAL(
        kc_test_sh(&out,
                   "cd '%s' && line=$(sed -n \"s/^quickstart_by_hand='\\(.*\\)'$/\\1/p\" "
                   "scripts/fresh-check.sh) && test -n \"$line\" && grep -qF \"$line\" README.md",
                   KC_SOURCE_DIR),
        0);
}

/* Invalid UTF-8 becomes \xHH; valid sequences (2, 3, 4 bytes) stay; a cut
 * falls at a character boundary. */
static void test_utf8_clean(void)
{
    char s[64];

    snprintf(s, sizeof(s), "%s",
             "a\xc3\xa9"
             "b\xe2\x82\xac\xf0\x9f\x94\x91");
    kc_utf8_clean(s, sizeof(s));
    CU_ASSERT_STRING_EQUAL(s, "a\xc3\xa9"
                              "b\xe2\x82\xac\xf0\x9f\x94\x91");
    snprintf(s, sizeof(s), "%s",
             "x\xc3"
             "y\xff\xc0\xaf\xed\xa0\x80"
             "z");
    kc_utf8_clean(s, sizeof(s));
    CU_ASSERT_STRING_EQUAL(s, "x\\xc3y\\xff\\xc0\\xaf\\xed\\xa0\\x80z");
    snprintf(s, sizeof(s), "%s", "ab\xc3\xa9");
    kc_utf8_clean(s, 4); /* room for "ab" and the NUL, not for a 2-byte character */
    CU_ASSERT_STRING_EQUAL(s, "ab");
}

static const kc_test_case util_cases[] = {
    {"UTF-8 made valid", test_utf8_clean},
    {"the quick start's line by hand", test_quick_start_by_hand},
    {"hex and base64url", test_hex_b64},
    {"dates and clock", test_dates_and_clock},
    {"file write", test_file_write},
    {NULL, NULL},
};

/* --- names and references --- */

static void test_vault_names(void)
{
    kc_error e;

    CU_ASSERT_EQUAL(kc_vault_check_name("VaultA1", &e), KC_OK);
    CU_ASSERT_EQUAL(kc_vault_check_name("a-b-c", &e), KC_OK);
    CU_ASSERT_EQUAL(kc_vault_check_name("ab", &e), KC_USAGE);
    CU_ASSERT_EQUAL(kc_vault_check_name("abcdefghijklmnopqrstuvwxy", &e), KC_USAGE);
    CU_ASSERT_EQUAL(kc_vault_check_name("1vault", &e), KC_USAGE);
    CU_ASSERT_EQUAL(kc_vault_check_name("vault-", &e), KC_USAGE);
    CU_ASSERT_EQUAL(kc_vault_check_name("va--ult", &e), KC_USAGE);
    CU_ASSERT_EQUAL(kc_vault_check_name("va_ult", &e), KC_USAGE);
    ASSERT_HAS(e.msg, "has '_'");
}

static void test_key_refs(void)
{
    kc_key_ref r;
    kc_error e;

    CU_ASSERT_EQUAL(kc_key_ref_parse("VaultA1/Key001", &r, &e), KC_OK);
    CU_ASSERT_STRING_EQUAL(r.vault, "VaultA1");
    CU_ASSERT_STRING_EQUAL(r.name, "Key001");
    CU_ASSERT_EQUAL(r.id_len, 0);
    CU_ASSERT_EQUAL(kc_key_ref_parse("VaultA1/Key001/00ff10ab", &r, &e), KC_OK);
    CU_ASSERT_EQUAL(r.id_len, 4);
    CU_ASSERT_EQUAL(r.id[1], 0xff);
    CU_ASSERT_EQUAL(kc_key_ref_parse("VaultA1/Key001/xyz", &r, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "not a hex version id");
    CU_ASSERT_EQUAL(kc_key_ref_parse("VaultA1", &r, &e), KC_USAGE);
    ASSERT_HAS(e.hint, "VAULT/KEY");
    CU_ASSERT_EQUAL(kc_key_ref_parse("VaultA1/Key_1", &r, &e), KC_USAGE);
    CU_ASSERT_EQUAL(kc_key_ref_parse("pkcs11:token=VaultA1;object=Key001;id=%01%02", &r, &e),
                    KC_OK);
    CU_ASSERT_STRING_EQUAL(r.name, "Key001");
    CU_ASSERT_EQUAL(r.id_len, 2);
    CU_ASSERT_EQUAL(kc_key_ref_parse("pkcs11:token=VaultA1", &r, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "names no object");
    CU_ASSERT_EQUAL(kc_key_ref_parse("pkcs11:token=VaultA1;object=K?pin-value=1234", &r, &e),
                    KC_USAGE);
    ASSERT_HAS(e.msg, "pin-value is refused");
    CU_ASSERT_PTR_NULL(strstr(e.msg, "1234"));
    CU_ASSERT_EQUAL(kc_key_ref_parse("pkcs11:id=%zz", &r, &e), KC_USAGE);
}

static void test_ops_and_sizes(void)
{
    unsigned ops, bits;
    char buf[128];
    kc_error e;

    CU_ASSERT_EQUAL(kc_key_ops_parse("wrapKey,unwrapKey", &ops, &e), KC_OK);
    CU_ASSERT_EQUAL(ops, KC_OP_WRAP | KC_OP_UNWRAP);
    kc_key_ops_format(ops | KC_OP_SIGN, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "sign,wrapKey,unwrapKey");
    CU_ASSERT_EQUAL(kc_key_ops_parse("wrapkey", &ops, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "unknown key operation 'wrapkey'");
    CU_ASSERT_EQUAL(kc_key_ops_parse("wrapKey,", &ops, &e), KC_OK);
    CU_ASSERT_EQUAL(kc_key_ops_parse(",", &ops, &e), KC_USAGE);
    CU_ASSERT_EQUAL(kc_key_check_size("3072", &bits, &e), KC_OK);
    CU_ASSERT_EQUAL(bits, 3072);
    CU_ASSERT_EQUAL(kc_key_check_size("1024", &bits, &e), KC_USAGE);
    CU_ASSERT_EQUAL(kc_key_check_size("P-256", &bits, &e), KC_USAGE);
    ASSERT_HAS(e.msg, "elliptic-curve");
    ASSERT_HAS(e.hint, "RSA-OAEP");
}

static const kc_test_case ref_cases[] = {
    {"vault names", test_vault_names},
    {"key references", test_key_refs},
    {"ops and sizes", test_ops_and_sizes},
    {NULL, NULL},
};

/* --- vault metadata format --- */

static kc_vault_meta sample(void)
{
    kc_vault_meta m;

    memset(&m, 0, sizeof(m));
    m.schema = 1;
    m.generation = 3;
    strcpy(m.name, "VaultA1");
    strcpy(m.subscription, "contoso-a");
    strcpy(m.region, "westus");
    m.sku = KC_SKU_STANDARD;
    m.retention_days = 30;
    m.purge_protection = 1;
    m.retention_registered = 1;
    strcpy(m.domain, "0123456789abcdef0123456789abcdef");
    strcpy(m.created, "2026-01-01T00:00:00Z");
    strcpy(m.updated, "2026-01-02T00:00:00Z");
    return m;
}

static void test_meta_round_trip(void)
{
    kc_vault_meta m = sample(), back;
    char *json = NULL;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_vault_meta_encode(&m, &json, &e), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_vault_meta_decode((unsigned char *)json, strlen(json), &back, &e),
                          KC_OK);
    CU_ASSERT_EQUAL(memcmp(&m, &back, sizeof(m)), 0);
    free(json);
}

static kc_rc decode_str(const char *s, kc_error *e)
{
    kc_vault_meta m;

    return kc_vault_meta_decode((const unsigned char *)s, strlen(s), &m, e);
}

static void test_meta_rejects(void)
{
    kc_vault_meta m = sample();
    char *json = NULL, *bad;
    kc_error e;

    CU_ASSERT_EQUAL_FATAL(kc_vault_meta_encode(&m, &json, &e), KC_OK);
    CU_ASSERT_EQUAL(decode_str("not json", &e), KC_INTEGRITY);
    /* an unknown field */
    bad = malloc(strlen(json) + 32);
    sprintf(bad, "{\"extra\":1,%s", json + 1);
    CU_ASSERT_EQUAL(decode_str(bad, &e), KC_INTEGRITY);
    /* a duplicate field */
    sprintf(bad, "{\"name\":\"X\",%s", json + 1);
    CU_ASSERT_EQUAL(decode_str(bad, &e), KC_INTEGRITY);
    free(bad);
    free(json);
    m.retention_days = 5;
    CU_ASSERT_EQUAL_FATAL(kc_vault_meta_encode(&m, &json, &e), KC_OK);
    CU_ASSERT_EQUAL(decode_str(json, &e), KC_INTEGRITY);
    ASSERT_HAS(e.msg, "outside 7 to 90 days");
    free(json);
    m = sample();
    m.schema = 2;
    CU_ASSERT_EQUAL_FATAL(kc_vault_meta_encode(&m, &json, &e), KC_OK);
    CU_ASSERT_EQUAL(decode_str(json, &e), KC_INTEGRITY);
    ASSERT_HAS(e.msg, "schema 2 is not known");
    free(json);
}

static const kc_test_case meta_cases[] = {
    {"round trip", test_meta_round_trip},
    {"rejects", test_meta_rejects},
    {NULL, NULL},
};

/* --- the service store --- */

static void test_store_create_and_reopen(void)
{
    kc_store *st = NULL;
    struct stat sb;
    kc_error e;
    long n = -1;
    char path[600];

    snprintf(path, sizeof(path), "%s", tmp_path("store.db"));
    unlink(path);
    CU_ASSERT_EQUAL_FATAL(kc_store_open(path, &st, &e), KC_OK);
    CU_ASSERT_EQUAL(kc_store_schema(st), KC_STORE_SCHEMA);
    CU_ASSERT_EQUAL(stat(path, &sb), 0);
    CU_ASSERT_EQUAL(sb.st_mode & 0777, 0600);
    CU_ASSERT_EQUAL(kc_store_count(st, "deps", &n, &e), KC_OK);
    CU_ASSERT_EQUAL(n, 0);
    /* a multi-row change is all or nothing */
    CU_ASSERT_EQUAL(kc_store_begin(st, &e), KC_OK);
    CU_ASSERT_EQUAL(kc_store_exec(st,
                                  "INSERT INTO deps (id, name, workload, created) VALUES "
                                  "('g1', 'Dep1', 'tenant', 'now')",
                                  &e),
                    KC_OK);
    kc_store_rollback(st);
    CU_ASSERT_EQUAL(kc_store_count(st, "deps", &n, &e), KC_OK);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_EQUAL(kc_store_begin(st, &e), KC_OK);
    CU_ASSERT_EQUAL(kc_store_exec(st,
                                  "INSERT INTO deps (id, name, workload, created) VALUES "
                                  "('g1', 'Dep1', 'tenant', 'now')",
                                  &e),
                    KC_OK);
    CU_ASSERT_EQUAL(kc_store_commit(st, &e), KC_OK);
    /* SQLite gives its log the store's mode: wrapped keys pass through it */
    CU_ASSERT_EQUAL(stat(tmp_path("store.db-wal"), &sb), 0);
    CU_ASSERT_EQUAL(sb.st_mode & 0777, 0600);
    /* the schema holds its rules */
    CU_ASSERT_EQUAL(kc_store_exec(st,
                                  "INSERT INTO deps (id, name, workload, created) VALUES "
                                  "('g2', 'Dep2', 'sql', 'now')",
                                  &e),
                    KC_ERR);
    CU_ASSERT_EQUAL(kc_store_exec(st, "INSERT INTO assignments VALUES ('tenant', 'nope')", &e),
                    KC_ERR);
    CU_ASSERT_EQUAL(kc_store_exec(st,
                                  "INSERT INTO deps (id, name, workload, created) VALUES "
                                  "('g3', 'Dep1', 'exchange', 'now')",
                                  &e),
                    KC_ERR);
    kc_store_close(st);
    /* reopened: the same schema, the same data, in WAL mode */
    CU_ASSERT_EQUAL_FATAL(kc_store_open(path, &st, &e), KC_OK);
    CU_ASSERT_EQUAL(kc_store_count(st, "deps", &n, &e), KC_OK);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_EQUAL(access(tmp_path("store.db-wal"), F_OK), 0);
    kc_store_close(st);
}

static void test_store_refusals(void)
{
    kc_store *st = NULL;
    kc_error e;
    char path[600];

    /* a PostgreSQL server that is not there: said, and neither password
     * (in the user part or as a parameter) repeated */
    CU_ASSERT_EQUAL(kc_store_open("postgresql://u:pw-1234@/store?host=/nonexistent-kc&"
                                  "password=pw-5678",
                                  &st, &e),
                    KC_ERR);
    CU_ASSERT_PTR_NULL(st);
    CU_ASSERT_PTR_NULL(strstr(e.msg, "pw-1234"));
    CU_ASSERT_PTR_NULL(strstr(e.msg, "pw-5678"));
    CU_ASSERT_PTR_NULL(strstr(e.hint, "pw-"));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "cannot connect"));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "postgresql://u:***@/store?host=/nonexistent-kc&"
                                         "password=***"));
    snprintf(path, sizeof(path), "%s", tmp_path("newer.db"));
    unlink(path);
    CU_ASSERT_EQUAL_FATAL(kc_store_open(path, &st, &e), KC_OK);
    CU_ASSERT_EQUAL(kc_store_exec(st, "PRAGMA user_version = 99", &e), KC_OK);
    kc_store_close(st);
    CU_ASSERT_EQUAL(kc_store_open(path, &st, &e), KC_INTEGRITY);
    {
        char want[64];

        snprintf(want, sizeof(want), "has schema 99; this keycustody knows up to %d",
                 KC_STORE_SCHEMA);
        ASSERT_HAS(e.msg, want);
    }
    kc_test_write(tmp_path("text.db"), "not a database at all, not even close....", 41, 0600);
    snprintf(path, sizeof(path), "%s", tmp_path("text.db"));
    CU_ASSERT_EQUAL(kc_store_open(path, &st, &e), KC_INTEGRITY);
    ASSERT_HAS(e.msg,
               "text.db' is not a keycustody service store (SQLite: file is not a database)");
    CU_ASSERT_PTR_NULL(strstr(strstr(e.msg, "service store") + 1, "service store")); /* once */
    CU_ASSERT_EQUAL(kc_store_open("/nonexistent-dir/store.db", &st, &e), KC_NOT_FOUND);
}

/* A stored item header: only a well-formed one parses. */
static void test_item_header(void)
{
    static const char guid[] = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";
    unsigned char h[116];
    kc_item_header out;
    kc_error e;

    memset(h, 0x5a, sizeof(h));
    memcpy(h, "KCI1", 4);
    memset(h + 32, 0, 8);
    h[39] = 7; /* generation 7, big-endian */
    memcpy(h + 40, guid, 36);
    CU_ASSERT_EQUAL_FATAL(kc_data_item_parse(h, sizeof(h), &out, &e), KC_OK);
    CU_ASSERT_EQUAL(out.generation, 7);
    CU_ASSERT_STRING_EQUAL(out.dep_id, guid);
    CU_ASSERT_EQUAL(out.nonce[0], 0x5a);
    CU_ASSERT_EQUAL(kc_data_item_parse(h, sizeof(h) - 1, &out, &e), KC_INTEGRITY);
    h[0] = 'X';
    CU_ASSERT_EQUAL(kc_data_item_parse(h, sizeof(h), &out, &e), KC_INTEGRITY);
    h[0] = 'K';
    h[39] = 0; /* generation 0 */
    CU_ASSERT_EQUAL(kc_data_item_parse(h, sizeof(h), &out, &e), KC_INTEGRITY);
    h[39] = 1;
    h[40 + 8] = 'x'; /* not a GUID */
    CU_ASSERT_EQUAL(kc_data_item_parse(h, sizeof(h), &out, &e), KC_INTEGRITY);
    ASSERT_HAS(e.msg, "damaged DEP id or generation");
    h[40 + 8] = '-';
    h[40] = 'A'; /* upper case is not what the store writes */
    CU_ASSERT_EQUAL(kc_data_item_parse(h, sizeof(h), &out, &e), KC_INTEGRITY);
}

static const kc_test_case store_cases[] = {
    {"create and reopen", test_store_create_and_reopen},
    {"refusals", test_store_refusals},
    {"item headers", test_item_header},
    {NULL, NULL},
};

static const kc_test_suite suites[] = {
    {"errors", 0, error_cases},
    {"secrets", 0, secret_cases},
    {"util", 0, util_cases},
    {"refs", 0, ref_cases},
    {"meta", 0, meta_cases},
    {"store", 0, store_cases},
    {NULL, 0, NULL},
};

int main(int argc, char **argv)
{
    int rc = kc_test_main(argc, argv, suites);
    char cmd[300];

    if (tmpd[0] != '\0') {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpd);
        if (system(cmd) != 0)
            rc = rc ? rc : 1;
    }
    return rc;
}
