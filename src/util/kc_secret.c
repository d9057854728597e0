#include "kc_secret.h"
#include "kc_util.h"

#include <openssl/crypto.h>

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* Secrets come from OpenSSL's secure heap: one arena, mlocked and kept out of
 * core dumps (MADV_DONTDUMP) as a whole for the life of the process, so that
 * releasing one secret never unlocks a page another secret still lives on
 * (munlock of a malloc'd secret did). A secret too large for the arena, or a
 * process where the arena cannot be made (RLIMIT_MEMLOCK), falls back to the
 * heap, mlocked and never munlocked: a page another secret shares stays
 * locked until the process ends. */
#define SECURE_HEAP_SIZE (1u << 20)
#define SECURE_HEAP_MIN 32

static pthread_once_t heap_once = PTHREAD_ONCE_INIT;

static void heap_init(void)
{
    (void)CRYPTO_secure_malloc_init(SECURE_HEAP_SIZE, SECURE_HEAP_MIN);
}

int kc_secret_is_locked_pool(const kc_secret *s)
{
    return s != NULL && s->data != NULL && CRYPTO_secure_allocated(s->data);
}

kc_secret *kc_secret_new(size_t cap)
{
    kc_secret *s = NULL;

    (void)pthread_once(&heap_once, heap_init);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    if (CRYPTO_secure_malloc_initialized() && cap + 1 <= SECURE_HEAP_SIZE / 4)
        s->data = OPENSSL_secure_zalloc(cap + 1);
    if (s->data == NULL) {
        s->data = calloc(1, cap + 1);
        if (s->data == NULL) {
            free(s);
            return NULL;
        }
        /* Locking can fail under RLIMIT_MEMLOCK; the wipe on release still holds. */
        (void)mlock(s->data, cap + 1);
    }
    s->cap = cap;
    return s;
}

kc_secret *kc_secret_dup(const void *p, size_t len)
{
    kc_secret *s = kc_secret_new(len);

    if (s == NULL)
        return NULL;
    memcpy(s->data, p, len);
    s->len = len;
    return s;
}

void kc_secret_free(kc_secret *s)
{
    if (s == NULL)
        return;
    if (s->data != NULL && CRYPTO_secure_allocated(s->data)) {
        OPENSSL_secure_clear_free(s->data, s->cap + 1);
    } else if (s->data != NULL) {
        OPENSSL_cleanse(s->data, s->cap + 1);
        free(s->data); /* not munlocked: see kc_secret_new */
    }
    OPENSSL_cleanse(s, sizeof(*s));
    free(s);
}

int kc_secret_source_is_valid(const char *source)
{
    if (source == NULL)
        return 0;
    if (strncmp(source, "env:", 4) == 0)
        return source[4] != '\0';
    if (strncmp(source, "file:", 5) == 0)
        return source[5] != '\0';
    return 0;
}

static void trim_newline(kc_secret *s)
{
    while (s->len > 0 && (s->data[s->len - 1] == '\n' || s->data[s->len - 1] == '\r')) {
        s->len--;
        s->data[s->len] = '\0';
    }
}

static kc_rc from_env(const char *name, kc_secret **out, kc_error *err)
{
    const char *v = getenv(name);
    size_t n;

    if (v == NULL)
        return kc_error_set(err, KC_USAGE, "environment variable '%s' is not set", name);
    n = strlen(v);
    if (n == 0)
        return kc_error_set(err, KC_USAGE, "environment variable '%s' is empty", name);
    if (n > KC_SECRET_PIN_MAX)
        return kc_error_set(err, KC_USAGE,
                            "environment variable '%s' holds %zu characters; a PIN has at most %d",
                            name, n, KC_SECRET_PIN_MAX);
    *out = kc_secret_dup(v, n);
    if (*out == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    return KC_OK;
}

/* Every way a PIN file cannot serve (missing, not a regular file, a link,
 * another owner, readable by others, empty, too long) is one exit code:
 * KC_USAGE (2), the source named is not usable. */
static kc_rc from_file(const char *path, kc_secret **out, kc_error *err)
{
    kc_secret *s = NULL;
    struct stat st;
    int fd = -1;
    kc_rc r = KC_ERR;

    /* What the path is, before opening it: opening a FIFO waits for a writer,
     * and opening a device can act on it. */
    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISLNK(st.st_mode)) {
        r = kc_error_set(err, KC_USAGE, "PIN file '%s' is %s, not a regular file", path,
                         kc_file_kind(st.st_mode));
        goto cleanup;
    }
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ELOOP) {
            r = kc_error_set(err, KC_USAGE, "PIN file '%s' is a symbolic link", path);
            kc_error_hint(err, "name the file itself, not a link to it");
        } else {
            r = kc_error_set(err, KC_USAGE, "cannot open PIN file '%s': %s", path, strerror(errno));
        }
        goto cleanup;
    }
    if (fstat(fd, &st) != 0) {
        r = kc_error_set(err, KC_USAGE, "cannot stat PIN file '%s': %s", path, strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(st.st_mode)) {
        r = kc_error_set(err, KC_USAGE, "PIN file '%s' is %s, not a regular file", path,
                         kc_file_kind(st.st_mode));
        goto cleanup;
    }
    if (st.st_uid != geteuid()) {
        r = kc_error_set(err, KC_USAGE, "PIN file '%s' is owned by uid %u, not by you (uid %u)",
                         path, (unsigned)st.st_uid, (unsigned)geteuid());
        kc_error_hint(err, "a PIN file must belong to the user who runs keycustody");
        goto cleanup;
    }
    if ((st.st_mode & 077) != 0) {
        r = kc_error_set(err, KC_USAGE, "PIN file '%s' has mode %04o; it must be 0600 or stricter",
                         path, (unsigned)(st.st_mode & 07777));
        kc_error_hint(err, "run: chmod 600 '%s'", path);
        goto cleanup;
    }
    s = kc_secret_new(KC_SECRET_PIN_MAX + 2);
    if (s == NULL) {
        r = kc_error_set(err, KC_ERR, "out of memory");
        goto cleanup;
    }
    s->len = kc_read_full(fd, s->data, s->cap);
    trim_newline(s);
    if (s->len > KC_SECRET_PIN_MAX) {
        r = kc_error_set(err, KC_USAGE, "PIN file '%s' holds more than %d characters", path,
                         KC_SECRET_PIN_MAX);
        goto cleanup;
    }
    if (s->len == 0) {
        r = kc_error_set(err, KC_USAGE, "PIN file '%s' is empty", path);
        goto cleanup;
    }
    *out = s;
    s = NULL;
    r = KC_OK;
cleanup:
    kc_secret_free(s);
    if (fd >= 0)
        close(fd);
    return r;
}

kc_rc kc_secret_from_source(const char *source, kc_secret **out, kc_error *err)
{
    *out = NULL;
    if (!kc_secret_source_is_valid(source)) {
        /* Never echo the value: a user who typed a PIN here must not see it in a log. */
        kc_error_set(err, KC_USAGE, "the PIN source given is neither env:NAME nor file:PATH");
        kc_error_hint(err, "use env:NAME or file:PATH; a PIN itself is never accepted on the "
                           "command line");
        return KC_USAGE;
    }
    if (strncmp(source, "env:", 4) == 0)
        return from_env(source + 4, out, err);
    return from_file(source + 5, out, err);
}

kc_rc kc_secret_read_file(const char *path, size_t max, kc_secret **out, kc_error *err)
{
    kc_secret *s = NULL;
    size_t size = 0;
    int fd = -1;
    kc_rc r;

    *out = NULL;
    r = kc_file_open_regular(path, max, &fd, &size, err);
    if (r != KC_OK)
        return r;
    if (size == 0) {
        close(fd);
        return kc_error_set(err, KC_USAGE, "'%s' is empty", path);
    }
    s = kc_secret_new(size);
    if (s == NULL) {
        close(fd);
        return kc_error_set(err, KC_ERR, "out of memory");
    }
    s->len = kc_read_full(fd, s->data, size);
    close(fd);
    if (s->len != size) {
        kc_secret_free(s);
        return kc_error_set(err, KC_ERR, "'%s' changed while it was read", path);
    }
    *out = s;
    return KC_OK;
}

int kc_secret_harden_process(void)
{
    struct rlimit rl = {0, 0};
    int r = 0;

    if (setrlimit(RLIMIT_CORE, &rl) != 0)
        r = -1;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        r = -1;
    return r;
}

const char *kc_secret_source_for(const char *const *list, size_t n, const char *vault,
                                 int *ambiguous)
{
    const char *bare = NULL, *eq, *colon;
    size_t i, vl = strlen(vault);
    int nbare = 0;

    *ambiguous = 0;
    for (i = 0; i < n; i++) {
        eq = strchr(list[i], '=');
        colon = strchr(list[i], ':');
        if (eq != NULL && (colon == NULL || eq < colon)) {
            if ((size_t)(eq - list[i]) == vl && strncmp(list[i], vault, vl) == 0)
                return eq + 1;
        } else {
            bare = list[i];
            nbare++;
        }
    }
    if (nbare > 1)
        *ambiguous = 1;
    return bare;
}
