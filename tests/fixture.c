#include "fixture.h"
#include "cli.h"
#include "kc_p11.h"
#include "kc_vault.h"

#include <CUnit/Basic.h>
#include <ctype.h>
#include <libpq-fe.h>
#include <jansson.h>

#include <openssl/rand.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void forget_secrets(void);
static char dir[512];
static char pathbuf[1024];
static kc_test_out last;

const char *kc_test_dir(void)
{
    return dir;
}

const char *kc_test_path(const char *name)
{
    snprintf(pathbuf, sizeof(pathbuf), "%s/%s", dir, name);
    return pathbuf;
}

/* KC_TEST_STORE=postgresql: each test's service store is a database of
 * its own on the private server (KC_TEST_PG_HOST), made by setup and
 * dropped by teardown; else the file service.db in the test's directory. */
static char store_uri[1024], store_db[64];

static int pg_admin(const char *sql)
{
    char conn[600];
    PGconn *c;
    PGresult *res;
    int ok;

    snprintf(conn, sizeof(conn), "postgresql:///keycustody?host=%s", getenv("KC_TEST_PG_HOST"));
    c = PQconnectdb(conn);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "test setup: %s: %s", conn, PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    res = PQexec(c, sql);
    ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "test setup: %s: %s", sql, PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(c);
    return ok ? 0 : -1;
}

int kc_test_on_pg(void)
{
    const char *s = getenv("KC_TEST_STORE");

    return s != NULL && strcmp(s, "postgresql") == 0;
}

const char *kc_test_store(void)
{
    if (store_uri[0] == '\0')
        snprintf(store_uri, sizeof(store_uri), "%s/service.db", dir);
    return store_uri;
}

const char *kc_test_store_db(void)
{
    return store_db;
}

static int store_setup(void)
{
    const char *host = getenv("KC_TEST_PG_HOST");
    char sql[128];

    store_uri[0] = store_db[0] = '\0';
    if (!kc_test_on_pg())
        return 0;
    if (host == NULL) {
        fprintf(stderr, "test setup: KC_TEST_STORE=postgresql needs KC_TEST_PG_HOST\n");
        return -1;
    }
    /* the directory's random part names the database */
    snprintf(store_db, sizeof(store_db), "kc_%s", strrchr(dir, '-') + 1);
    for (char *p = store_db; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    snprintf(store_uri, sizeof(store_uri), "postgresql:///%s?host=%s", store_db, host);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", store_db);
    return pg_admin(sql);
}

static void store_teardown(void)
{
    char sql[128];

    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", store_db);
    if (store_db[0] != '\0' && getenv("KC_TEST_KEEP") == NULL)
        (void)pg_admin(sql);
    store_uri[0] = store_db[0] = '\0';
}

static void random_pin(const char *var)
{
    unsigned char b[8];
    char pin[32];

    RAND_bytes(b, sizeof(b));
    snprintf(pin, sizeof(pin), "t%02x%02x%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4],
             b[5], b[6], b[7]);
    setenv(var, pin, 1);
}

int kc_test_setup(void)
{
    const char *tmp = getenv("TMPDIR");
    char conf[1024], tokens[1024], line[1024];
    FILE *in = NULL, *out = NULL;
    char *at;

    snprintf(dir, sizeof(dir), "%s/keycustody-test-XXXXXX", tmp ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(tokens, sizeof(tokens), "%s/tokens", dir);
    if (mkdir(tokens, 0700) != 0)
        return -1;
    snprintf(conf, sizeof(conf), "%s/softhsm2.conf", dir);
    in = fopen(KC_SOFTHSM_CONF_IN, "r");
    out = fopen(conf, "w");
    if (in == NULL || out == NULL)
        return -1;
    while (fgets(line, sizeof(line), in) != NULL) {
        at = strstr(line, "@TOKENDIR@");
        if (at != NULL) {
            *at = '\0';
            fprintf(out, "%s%s%s", line, tokens, at + strlen("@TOKENDIR@"));
        } else {
            fputs(line, out);
        }
    }
    fclose(in);
    fclose(out);
    setenv("SOFTHSM2_CONF", conf, 1);
    setenv("KEYCUSTODY_MODULE", KC_SOFTHSM_MODULE, 1);
    /* this host's locks (vaults, applies) in the test's own directory, gone
     * with it, never in the system's /tmp */
    setenv("XDG_RUNTIME_DIR", dir, 1);
    random_pin("TEST_SO_PIN");
    random_pin("TEST_PIN");
    unsetenv("KEYCUSTODY_NOW");
    unsetenv("KEYCUSTODY_PRINCIPAL");
    unsetenv("KEYCUSTODY_STORE");
    unsetenv("KEYCUSTODY_SERVICE_VAULT");
    unsetenv("KEYCUSTODY_SERVICE_PIN_SOURCE");
    unsetenv("KEYCUSTODY_SYSLOG_SOCKET");
    unsetenv("KC_TEST_AUDIT_TAMPERED");
    forget_secrets();
    /* every test keeps an audit log; teardown verifies it */
    snprintf(conf, sizeof(conf), "%s/audit.jsonl", dir);
    setenv("KEYCUSTODY_AUDIT", conf, 1);
    return store_setup();
}

int kc_test_teardown(void)
{
    char cmd[1100];

    kc_p11_fault_disarm();
    unsetenv("KEYCUSTODY_NOW");
    store_teardown();
    if (dir[0] != '\0' && getenv("KC_TEST_KEEP") == NULL) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            return -1;
    }
    dir[0] = '\0';
    return 0;
}

static char *slurp(FILE *f)
{
    long n;
    char *s;

    fflush(f);
    n = ftell(f);
    s = calloc(1, (size_t)(n > 0 ? n : 0) + 1);
    rewind(f);
    if (n > 0 && fread(s, 1, (size_t)n, f) != (size_t)n)
        s[0] = '\0';
    return s;
}

static void no_secret_in(const char *text)
{
    static const char *vars[] = {"TEST_PIN", "TEST_SO_PIN"};
    const char *pin;
    size_t i;

    for (i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        pin = getenv(vars[i]);
        if (pin != NULL && *pin != '\0' && strstr(text, pin) != NULL) {
            fprintf(stderr, "\n  %s appears in a command's output:\n%s\n", vars[i], text);
            CU_FAIL("a PIN appears in a command's output");
        }
    }
}

/* The command in a process of its own, as a user runs it. */
static int run_binary(char **argv, FILE *out, FILE *err)
{
    pid_t pid;
    int st;

    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        dup2(fileno(out), 1);
        dup2(fileno(err), 2);
        execv(KC_BINARY, argv);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static const kc_test_out *run(int own_process, const char *first, va_list ap)
{
    char *argv[64];
    int argc = 0;
    const char *a;
    FILE *out = tmpfile(), *err = tmpfile();

    free(last.out);
    free(last.err);
    argv[argc++] = (char *)"keycustody";
    for (a = first; a != NULL && argc < 63; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    argv[argc] = NULL;
    last.rc = own_process ? run_binary(argv, out, err) : kc_cli_main(argc, argv, out, err);
    last.out = slurp(out);
    last.err = slurp(err);
    fclose(out);
    fclose(err);
    /* No command may ever print a PIN, whatever else a test checks. */
    no_secret_in(last.out);
    no_secret_in(last.err);
    return &last;
}

const kc_test_out *kc_test_run(const char *first, ...)
{
    const kc_test_out *r;
    va_list ap;

    va_start(ap, first);
    r = run(0, first, ap);
    va_end(ap);
    return r;
}

const kc_test_out *kc_test_exec(const char *first, ...)
{
    const kc_test_out *r;
    va_list ap;

    va_start(ap, first);
    r = run(1, first, ap);
    va_end(ap);
    return r;
}

int kc_test_sh(char **output, const char *fmt, ...)
{
    static char *buf;
    char cmd[4096];
    size_t cap = 1 << 16, n = 0;
    va_list ap;
    FILE *p;
    int st;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    strncat(cmd, " 2>&1", sizeof(cmd) - strlen(cmd) - 1);
    free(buf);
    buf = calloc(1, cap);
    p = popen(cmd, "r");
    if (p == NULL)
        return -1;
    while (n + 1 < cap && (st = (int)fread(buf + n, 1, cap - n - 1, p)) > 0)
        n += (size_t)st;
    buf[n] = '\0';
    st = pclose(p);
    if (output != NULL)
        *output = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void kc_test_custodians(void)
{
    char *out = NULL;

    CU_ASSERT_EQUAL_FATAL(
        kc_test_sh(&out,
                   "cd '%s' && for c in alice bob carol; do openssl genpkey -quiet -algorithm RSA "
                   "-pkeyopt rsa_keygen_bits:2048 -out $c-key.pem && openssl pkey -in "
                   "$c-key.pem -pubout -out $c.pem || exit 1; done",
                   kc_test_dir()),
        0);
}

const kc_test_out *kc_test_domain(const char *sub, const char *vault, const char *out)
{
    char pem[3][1100];
    int i;

    for (i = 0; i < 3; i++)
        snprintf(pem[i], sizeof(pem[i]), "%s/%s.pem", dir,
                 i == 0   ? "alice"
                 : i == 1 ? "bob"
                          : "carol");
    return kc_test_run("subscription", "init", sub, "--vault", vault, "--custodian", pem[0],
                       "--custodian", pem[1], "--custodian", pem[2], "--quorum", "2", "--out", out,
                       "--so-pin-source", "env:TEST_SO_PIN", "--pin-source", "env:TEST_PIN", NULL);
}

void kc_test_vault(const char *name, const char *subscription, const char *region)
{
    const kc_test_out *r =
        kc_test_run("vault", "init", name, "--subscription", subscription, "--region", region,
                    "--so-pin-source", "env:TEST_SO_PIN", "--pin-source", "env:TEST_PIN", NULL);
    ASSERT_RC(r, 0);
}

void kc_test_public_half(const char *vault, const char *name, unsigned char id0)
{
    unsigned char id[16] = {id0, 2, 3}, n[256], e[3] = {1, 0, 1};
    kc_rsa_spec spec = {.id = id, .id_len = sizeof(id), .bits = 2048, .ops = KC_OP_WRAP};
    kc_ctx *ctx = NULL;
    kc_vault *v = NULL;
    kc_error err;
    kc_obj obj;

    memset(n, 0xc5, sizeof(n));
    spec.label = name;
    CU_ASSERT_EQUAL_FATAL(kc_ctx_new(KC_SOFTHSM_MODULE, kc_test_env_pin, NULL, &ctx, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_vault_open(ctx, vault, &v, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(kc_ctx_login(ctx, v->tok, &err), KC_OK);
    CU_ASSERT_EQUAL_FATAL(
        kc_tok_create_rsa_public(v->tok, &spec, n, sizeof(n), e, sizeof(e), &obj, &err), KC_OK);
    kc_vault_free(v);
    kc_ctx_free(ctx);
}

void kc_test_key(const char *ref, const char *ops)
{
    const kc_test_out *r;

    if (ops != NULL)
        r = kc_test_run("key", "create", ref, "--size", "2048", "--ops", ops, "--pin-source",
                        "env:TEST_PIN", NULL);
    else
        r = kc_test_run("key", "create", ref, "--size", "2048", "--pin-source", "env:TEST_PIN",
                        NULL);
    ASSERT_RC(r, 0);
}

void kc_test_write(const char *path, const void *data, size_t len, unsigned mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, data, len) == (ssize_t)len);
    CU_ASSERT_FATAL(fchmod(fd, mode) == 0);
    close(fd);
}

unsigned char *kc_test_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long n;

    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    buf = malloc((size_t)n + 1);
    *len = fread(buf, 1, (size_t)n, f);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

json_t *kc_test_json(const char *s)
{
    json_error_t je;
    json_t *j = json_loads(s, 0, &je);

    if (j == NULL)
        fprintf(stderr, "\n  not JSON (%s): %s\n", je.text, s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    return j;
}

int kc_test_contains(const char *haystack, const char *needle)
{
    if (haystack != NULL && strstr(haystack, needle) != NULL)
        return 1;
    fprintf(stderr, "\n  expected to find: %s\n  in: %s\n", needle, haystack ? haystack : "(null)");
    return 0;
}

static void setup_each(void)
{
    if (kc_test_setup() != 0) {
        perror("test setup: cannot make a token directory");
        abort();
    }
}

/* Whether file holds a PIN other than as a PIN file (the PIN alone, with
 * an optional newline): every output, log, store, backup and token file a
 * test leaves is read. */
static const char *const pin_vars[] = {"TEST_PIN", "TEST_SO_PIN"};

/* Secrets a test used (kc_test_secret): no file may hold one but a file
 * that is that secret alone (the input the test wrote, an output it
 * asked for). */
#define MAX_SECRETS 8
static struct {
    unsigned char *data;
    size_t len;
} secrets[MAX_SECRETS];
static size_t nsecrets;

void kc_test_secret(const void *data, size_t len)
{
    size_t i;

    CU_ASSERT_FATAL(len >= 8);
    for (i = 0; i < nsecrets; i++)
        if (secrets[i].len == len && memcmp(secrets[i].data, data, len) == 0)
            return;
    CU_ASSERT_FATAL(nsecrets < MAX_SECRETS);
    secrets[nsecrets].data = malloc(len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(secrets[nsecrets].data);
    memcpy(secrets[nsecrets].data, data, len);
    secrets[nsecrets++].len = len;
}

static void forget_secrets(void)
{
    while (nsecrets > 0)
        free(secrets[--nsecrets].data);
}

static int holds_pin(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    size_t len = 0, plen, i;
    unsigned char *buf;
    const char *pin;

    (void)ftw;
    if (type != FTW_F || !S_ISREG(st->st_mode) || st->st_size > 256 * 1024 * 1024)
        return 0;
    buf = kc_test_read(path, &len);
    for (i = 0; buf != NULL && i < sizeof(pin_vars) / sizeof(pin_vars[0]); i++) {
        pin = getenv(pin_vars[i]);
        plen = pin ? strlen(pin) : 0;
        if (plen == 0 || (len >= plen && len <= plen + 1 && memcmp(buf, pin, plen) == 0))
            continue; /* a PIN source file */
        if (memmem(buf, len, pin, plen) != NULL) {
            fprintf(stderr, "\n  %s appears in %s\n", pin_vars[i], path);
            CU_FAIL("a PIN appears in a file the test left");
        }
    }
    for (i = 0; buf != NULL && i < nsecrets; i++) {
        if (len == secrets[i].len && memcmp(buf, secrets[i].data, len) == 0)
            continue; /* the secret's own file */
        if (memmem(buf, len, secrets[i].data, secrets[i].len) != NULL) {
            fprintf(stderr, "\n  a %zu-byte secret the test used appears in %s\n", secrets[i].len,
                    path);
            CU_FAIL("a secret appears in a file the test left");
        }
    }
    free(buf);
    return 0;
}

/* Every test's audit log verifies at its end (all MACs, all anchors),
 * unless the test tampered with it on purpose. */
int kc_test_audit_verify(void)
{
    const kc_test_out *r;

    kc_p11_fault_disarm();
    r = kc_test_run("audit", "verify", "--pin-source", "env:TEST_PIN", NULL);
    if (r->rc != 0)
        fprintf(stderr, "\n  audit verify: rc=%d\n  %s\n", r->rc, r->err);
    return r->rc;
}

int kc_test_wipe_tokens(void)
{
    char *out = NULL;

    return kc_test_sh(&out, "rm -rf '%s/tokens' '%s/audit.jsonl' && mkdir '%s/tokens'", dir, dir,
                      dir);
}

static void verify_audit(void)
{
    if (getenv("KC_TEST_AUDIT_TAMPERED") != NULL || access(kc_test_path("audit.jsonl"), F_OK) != 0)
        return;
    if (kc_test_audit_verify() != 0)
        CU_FAIL("the test's audit log does not verify");
}

static void teardown_each(void)
{
    if (dir[0] != '\0') {
        verify_audit();
        (void)nftw(dir, holds_pin, 16, FTW_PHYS);
    }
    (void)kc_test_teardown();
    forget_secrets();
}

int kc_test_main(int argc, char **argv, const kc_test_suite *suites)
{
    /* KC_TEST_ONLY=TEXT: only the tests whose name holds TEXT (to run one
     * again and again) */
    const char *only = getenv("KC_TEST_ONLY");
    const kc_test_suite *s;
    const kc_test_case *c;
    CU_pSuite suite;
    unsigned failed;
    int matched = 0;

#ifdef KC_TPM2_KEEP_MAPPED
    /* lsan.supp names tpm2-pkcs11's leak by its library: kept mapped after
     * p11-kit unloads it, LeakSanitizer can say whose it is */
    (void)dlopen(KC_TPM2_KEEP_MAPPED, RTLD_LAZY | RTLD_NODELETE);
#endif
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    for (s = suites; s->name != NULL; s++) {
        if (argc > 1 && strcmp(argv[1], s->name) != 0)
            continue;
        matched = 1;
        suite = s->tokens ? CU_add_suite_with_setup_and_teardown(s->name, NULL, NULL, setup_each,
                                                                 teardown_each)
                          : CU_add_suite(s->name, NULL, NULL);
        for (c = s->cases; c->name != NULL; c++)
            if (only == NULL || strstr(c->name, only) != NULL)
                CU_add_test(suite, c->name, c->fn);
    }
    if (!matched) {
        fprintf(stderr, "no suite named '%s'\n", argv[1]);
        CU_cleanup_registry();
        return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    /* CU_basic_run_tests() returns success even when tests failed. */
    failed = CU_get_number_of_tests_failed() + CU_get_number_of_suites_failed();
    CU_cleanup_registry();
    return failed != 0 ? 1 : 0;
}

void kc_test_snapshot_tokens(void)
{
    char *out = NULL;

    (void)kc_test_sh(&out,
                     "cd '%s' && rm -rf .snap && mkdir .snap && for d in tokens/*/; do "
                     "[ -f \"$d/token.object\" ] && cp -p \"$d/token.object\" "
                     "\".snap/$(basename \"$d\").object\"; done; true",
                     dir);
}

int kc_test_mend_tokens(void)
{
    char *out = NULL;
    int n;

    (void)kc_test_sh(
        &out,
        "cd '%s' && n=0; for f in .snap/*.object; do [ -f \"$f\" ] || continue; "
        "t=\"tokens/$(basename \"$f\" .object)/token.object\"; "
        "if [ -d \"$(dirname \"$t\")\" ] && [ \"$(stat -c %%s \"$t\" 2>/dev/null)\" != "
        "\"$(stat -c %%s \"$f\")\" ]; then cp -p \"$f\" \"$t\"; n=$((n+1)); fi; done; "
        "echo $n",
        dir);
    n = out != NULL ? atoi(out) : 0;
    if (n > 0)
        fprintf(stderr, "\n  note: SoftHSM lost %d token.object file(s) to the kill; put back\n",
                n);
    return n;
}

static const char *fact_field(json_t *check, const char *fact, const char *field)
{
    const char *v = json_string_value(
        json_object_get(json_object_get(json_object_get(check, "facts"), fact), field));
    return v != NULL ? v : "(none)";
}

const char *kc_test_fact_answer(json_t *check, const char *fact)
{
    return fact_field(check, fact, "answer");
}

const char *kc_test_fact_detail(json_t *check, const char *fact)
{
    return fact_field(check, fact, "detail");
}

static const char *feature_field(json_t *check, const char *feature, const char *field)
{
    json_t *f;
    size_t i;

    json_array_foreach(json_object_get(check, "features"), i,
                       f) if (strcmp(json_string_value(json_object_get(f, "feature")), feature) ==
                              0) return json_string_value(json_object_get(f, field));
    return "(none)";
}

const char *kc_test_feature_support(json_t *check, const char *feature)
{
    return feature_field(check, feature, "support");
}

const char *kc_test_feature_why(json_t *check, const char *feature)
{
    return feature_field(check, feature, "why");
}

/* --- other modules --- */

const char *kc_test_nss_module(void)
{
    static char file[1100];
    char text[1400], *out = NULL;

    snprintf(file, sizeof(file), "%s", kc_test_path("nss.module"));
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out, "mkdir -p '%s'", kc_test_path("nssdb")), 0);
    snprintf(text, sizeof(text),
             "# NSS softokn, as p11-kit would load it\n"
             "module: " KC_SOFTOKN_MODULE "\n"
             "x-init-reserved: configdir='sql:%s' certPrefix='' keyPrefix='' "
             "secmod='secmod.db' flags=\n",
             kc_test_path("nssdb"));
    kc_test_write(file, text, strlen(text), 0644);
    return file;
}

#define TPM2_SCRIPT KC_SOURCE_DIR "/scripts/tpm2-pkcs11.sh"

static char tpm_dir[1100];

void kc_test_tpm2_stop(void)
{
    char *out = NULL;

    if (tpm_dir[0] != '\0' && kc_test_sh(&out, "'%s' stop '%s'", TPM2_SCRIPT, tpm_dir) != 0)
        fprintf(stderr, "tpm2-pkcs11.sh stop: %s\n", out);
    tpm_dir[0] = '\0';
}

const char *kc_test_tpm2_start(void)
{
    static char module[512];
    char *out = NULL, *line, *eq, *save = NULL;

    kc_test_tpm2_stop();
    snprintf(tpm_dir, sizeof(tpm_dir), "%s", kc_test_path("tpm"));
    CU_ASSERT_EQUAL_FATAL(
        kc_test_sh(&out, "{ '%s' start '%s' 2>'%s.err'; }", TPM2_SCRIPT, tpm_dir, tpm_dir), 0);
    for (line = strtok_r(out, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        eq = strchr(line, '=');
        if (eq == NULL)
            continue;
        *eq = '\0';
        setenv(line, eq + 1, 1);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(getenv("TPM2_PKCS11_TCTI"));
    CU_ASSERT_EQUAL_FATAL(kc_test_sh(&out, "'%s' module", TPM2_SCRIPT), 0);
    snprintf(module, sizeof(module), "%.*s", (int)strcspn(out, "\n"), out);
    return module;
}

const char *kc_test_path2(const char *name)
{
    static char buf[4][2300];
    static int i;

    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%.2200s", kc_test_path(name));
    return buf[i];
}

int kc_test_avail_keys(void)
{
    const kc_test_out *r = kc_test_run("key", "list", "Service", "--pin-source", "env:TEST_PIN",
                                       "--module", KC_SOFTHSM_MODULE, NULL);
    const char *at = r->out;
    int n = 0;

    CU_ASSERT_EQUAL(r->rc, 0);
    while ((at = strstr(at, "avail-")) != NULL) {
        n++;
        at++;
    }
    return n;
}
