#include "kc_util.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void kc_hex_encode(const unsigned char *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * len] = '\0';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int kc_hex_decode(const char *s, unsigned char *out, size_t cap, size_t *len)
{
    size_t n = strlen(s), i;

    if (n % 2 != 0 || n / 2 > cap)
        return -1;
    for (i = 0; i < n / 2; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    *len = n / 2;
    return 0;
}

char *kc_b64url_encode(const unsigned char *in, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    size_t n, i;

    if (out == NULL)
        return NULL;
    n = (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (i = 0; i < n; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    return out;
}

unsigned char *kc_b64url_decode(const char *s, size_t *len)
{
    size_t n = strlen(s), i, pad;
    char *std = NULL;
    unsigned char *out = NULL;
    int got;

    if (n % 4 == 1)
        return NULL;
    pad = (4 - n % 4) % 4;
    std = malloc(n + pad + 1);
    out = malloc(n + 3);
    if (std == NULL || out == NULL)
        goto fail;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (c == '-')
            c = '+';
        else if (c == '_')
            c = '/';
        else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
            goto fail;
        std[i] = c;
    }
    memset(std + n, '=', pad);
    std[n + pad] = '\0';
    got = EVP_DecodeBlock(out, (unsigned char *)std, (int)(n + pad));
    if (got < 0)
        goto fail;
    free(std);
    *len = (size_t)got - pad;
    return out;
fail:
    free(std);
    free(out);
    return NULL;
}

int kc_time_parse_rfc3339(const char *s, time_t *out)
{
    struct tm tm;
    const char *rest;
    long off = 0;

    memset(&tm, 0, sizeof(tm));
    rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (rest == NULL)
        return -1;
    if (*rest == '.') { /* fractional seconds are accepted and dropped */
        rest++;
        while (*rest >= '0' && *rest <= '9')
            rest++;
    }
    if (strcmp(rest, "Z") == 0 || strcmp(rest, "z") == 0) {
        off = 0;
    } else if ((rest[0] == '+' || rest[0] == '-') && strlen(rest) == 6 && rest[3] == ':') {
        int hh = atoi(rest + 1), mm = atoi(rest + 4);
        off = (hh * 60L + mm) * 60L * (rest[0] == '-' ? -1 : 1);
    } else {
        return -1;
    }
    *out = timegm(&tm) - off;
    return 0;
}

void kc_time_format_rfc3339(time_t t, char out[21])
{
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

kc_rc kc_clock_now(time_t *out, kc_error *err)
{
    const char *v = getenv("KEYCUSTODY_NOW");

    if (v == NULL || *v == '\0') {
        *out = time(NULL);
        return KC_OK;
    }
    if (kc_time_parse_rfc3339(v, out) != 0)
        return kc_error_set(err, KC_USAGE,
                            "KEYCUSTODY_NOW='%s' is not an RFC 3339 time "
                            "(e.g. 2027-01-31T12:00:00Z)",
                            v);
    return KC_OK;
}

int kc_date_parse(const char *s, char out[9])
{
    struct tm tm, back;
    const char *end;
    time_t t;

    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return -1;
    memset(&tm, 0, sizeof(tm));
    end = strptime(s, "%Y-%m-%d", &tm);
    if (end == NULL || *end != '\0')
        return -1;
    back = tm;
    back.tm_hour = 12;
    /* strptime takes 2026-02-30; timegm (which normalises its argument in
     * place) turns it into March 2nd, which tells us. */
    t = timegm(&back);
    gmtime_r(&t, &back);
    if (back.tm_mday != tm.tm_mday || back.tm_mon != tm.tm_mon || back.tm_year != tm.tm_year)
        return -1;
    memcpy(out, s, 4);
    memcpy(out + 4, s + 5, 2);
    memcpy(out + 6, s + 8, 2);
    out[8] = '\0';
    return 0;
}

void kc_date_format(const char *d, char out[11])
{
    if (d == NULL || strlen(d) != 8) {
        out[0] = '\0';
        return;
    }
    snprintf(out, 11, "%.4s-%.2s-%.2s", d, d + 4, d + 6);
}

kc_rc kc_date_today(char out[9], kc_error *err)
{
    struct tm tm;
    time_t now;
    kc_rc r = kc_clock_now(&now, err);

    if (r != KC_OK)
        return r;
    gmtime_r(&now, &tm);
    strftime(out, 9, "%Y%m%d", &tm);
    return KC_OK;
}

const char *kc_file_kind(unsigned mode)
{
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISFIFO(mode))
        return "a FIFO";
    if (S_ISSOCK(mode))
        return "a socket";
    if (S_ISCHR(mode))
        return "a character device";
    if (S_ISBLK(mode))
        return "a block device";
    if (S_ISLNK(mode))
        return "a symbolic link";
    return S_ISREG(mode) ? "a regular file" : "not a regular file";
}

kc_rc kc_file_open_regular(const char *path, size_t max, int *fd, size_t *size, kc_error *err)
{
    struct stat st;

    /* a FIFO would block the open, a device could act on it */
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return kc_error_set(err, KC_USAGE, "'%s' is %s, not a regular file", path,
                            kc_file_kind(st.st_mode));
    *fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (*fd < 0)
        return kc_error_set(err, errno == ENOENT ? KC_NOT_FOUND : KC_ERR, "cannot open '%s': %s",
                            path, strerror(errno));
    if (fstat(*fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(*fd);
        *fd = -1;
        return kc_error_set(err, KC_USAGE, "'%s' is not a regular file", path);
    }
    if ((size_t)st.st_size > max) {
        close(*fd);
        *fd = -1;
        return kc_error_set(err, KC_USAGE, "'%s' holds %lld bytes; at most %zu are accepted", path,
                            (long long)st.st_size, max);
    }
    *size = (size_t)st.st_size;
    return KC_OK;
}

size_t kc_read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    ssize_t n;

    while (got < len) {
        n = read(fd, (unsigned char *)buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    return got;
}

kc_rc kc_file_read(const char *path, size_t max, unsigned char **out, size_t *len, kc_error *err)
{
    unsigned char *buf = NULL;
    size_t size = 0;
    int fd = -1;
    kc_rc r;

    *out = NULL;
    *len = 0;
    r = kc_file_open_regular(path, max, &fd, &size, err);
    if (r != KC_OK)
        return r;
    buf = malloc(size + 1);
    if (buf == NULL) {
        close(fd);
        return kc_error_set(err, KC_ERR, "out of memory");
    }
    *len = kc_read_full(fd, buf, size);
    buf[*len] = 0;
    close(fd);
    *out = buf;
    return KC_OK;
}

kc_rc kc_file_write(const char *path, const void *data, size_t len, unsigned mode, int overwrite,
                    kc_error *err)
{
    char tmp[4096];
    const unsigned char *p = data;
    size_t done = 0;
    ssize_t n;
    int fd = -1;
    kc_rc r = KC_ERR;
    struct stat st;

    if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        /* never replaced, even with overwrite: a device node, FIFO, socket,
         * directory or link is not an output file a command made */
        kc_error_set(err, KC_DENIED, "'%s' is %s, not a regular file; not replacing it", path,
                     kc_file_kind(st.st_mode));
        kc_error_hint(err, "name a regular file (or - for standard output)");
        return KC_DENIED;
    }
    if (!overwrite && lstat(path, &st) == 0) {
        kc_error_set(err, KC_CONFLICT, "'%s' already exists; not overwriting it", path);
        kc_error_hint(err, "choose another file, or give --force to replace it");
        return KC_CONFLICT;
    }
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
        return kc_error_set(err, KC_USAGE, "path too long: '%s'", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
    if (fd < 0) {
        int e = errno;
        kc_rc code = e == ENOENT || e == ENOTDIR ? KC_NOT_FOUND
                     : e == EACCES || e == EPERM || e == EROFS ? KC_DENIED
                                                               : KC_ERR;
        kc_error_set(err, code, "cannot write '%s' (a new file beside it): %s", path,
                     strerror(e));
        if (code == KC_NOT_FOUND)
            kc_error_hint(err, "its directory must exist");
        return code;
    }
    while (done < len) {
        n = write(fd, p + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = kc_error_set(err, KC_ERR, "cannot write '%s': %s", tmp, strerror(errno));
            goto fail;
        }
        done += (size_t)n;
    }
    if (fsync(fd) != 0) {
        r = kc_error_set(err, KC_ERR, "cannot sync '%s': %s", tmp, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    if (!overwrite && lstat(path, &st) == 0) {
        r = kc_error_set(err, KC_CONFLICT, "'%s' already exists; not overwriting it", path);
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        r = kc_error_set(err, KC_ERR, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
        goto fail;
    }
    return KC_OK;
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return r;
}

/* The length of the valid UTF-8 sequence at p (1 to 4), or 0. */
static size_t utf8_seq(const unsigned char *p)
{
    size_t n, i;
    unsigned char lo = 0x80, hi = 0xbf;

    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xc2 && p[0] <= 0xdf)
        n = 2;
    else if (p[0] >= 0xe0 && p[0] <= 0xef)
        n = 3;
    else if (p[0] >= 0xf0 && p[0] <= 0xf4)
        n = 4;
    else
        return 0;
    /* no overlong forms, no surrogates, nothing past U+10FFFF */
    if (p[0] == 0xe0)
        lo = 0xa0;
    else if (p[0] == 0xed)
        hi = 0x9f;
    else if (p[0] == 0xf0)
        lo = 0x90;
    else if (p[0] == 0xf4)
        hi = 0x8f;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    return n;
}

void kc_utf8_clean(char *s, size_t cap)
{
    char out[4096];
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0, n, limit = cap < sizeof(out) ? cap : sizeof(out);

    if (limit == 0)
        return;
    while (*p != '\0') {
        n = utf8_seq(p);
        if (n == 0) {
            if (o + 4 >= limit)
                break;
            snprintf(out + o, limit - o, "\\x%02x", *p);
            o += 4;
            p++;
            continue;
        }
        if (o + n >= limit)
            break;
        memcpy(out + o, p, n);
        o += n;
        p += n;
    }
    out[o] = '\0';
    memcpy(s, out, o + 1);
}
