/* Small helpers with no domain knowledge: hex, base64url, dates and the
 * clock, names, and files written safely. */
#ifndef KC_UTIL_H
#define KC_UTIL_H

#include "kc_error.h"

#include <stddef.h>
#include <time.h>

/* Lower-case hex of len bytes into out (2*len+1 bytes). */
KC_EXPORT void kc_hex_encode(const unsigned char *in, size_t len, char *out);
/* Decodes hex (either case); -1 when s is not even-length hex or too long. */
KC_EXPORT int kc_hex_decode(const char *s, unsigned char *out, size_t cap, size_t *len);

/* base64url without padding (RFC 4648 section 5), as Key Vault writes values.
 * kc_b64url_encode returns a new string; kc_b64url_decode a new buffer, NULL
 * when s is not base64url. */
KC_EXPORT char *kc_b64url_encode(const unsigned char *in, size_t len);
KC_EXPORT unsigned char *kc_b64url_decode(const char *s, size_t *len);

/* The one clock: time(NULL), or KEYCUSTODY_NOW (RFC 3339, a test aid) when set. */
KC_EXPORT kc_rc kc_clock_now(time_t *out, kc_error *err) KC_MUST_CHECK;
/* Parses "YYYY-MM-DDTHH:MM:SSZ" (also with +HH:MM offsets). */
KC_EXPORT int kc_time_parse_rfc3339(const char *s, time_t *out);
/* "YYYY-MM-DDTHH:MM:SSZ" */
KC_EXPORT void kc_time_format_rfc3339(time_t t, char out[21]);

/* "YYYY-MM-DD" (a real calendar date) -> "YYYYMMDD"; -1 when invalid. */
KC_EXPORT int kc_date_parse(const char *s, char out[9]);
/* "YYYYMMDD" -> "YYYY-MM-DD" (empty stays empty). */
KC_EXPORT void kc_date_format(const char *yyyymmdd, char out[11]);
/* Today's date in UTC per kc_clock_now, as "YYYYMMDD". */
KC_EXPORT kc_rc kc_date_today(char out[9], kc_error *err) KC_MUST_CHECK;

/* Opens path for reading: it must be a regular file of at most max bytes.
 * *size is its size; the caller closes *fd. */
KC_EXPORT kc_rc kc_file_open_regular(const char *path, size_t max, int *fd, size_t *size,
                                     kc_error *err) KC_MUST_CHECK;
/* Reads until len bytes, end of file or an error (EINTR is retried); returns
 * how many bytes were read. */
KC_EXPORT size_t kc_read_full(int fd, void *buf, size_t len);

/* Reads a whole file of at most max bytes; the buffer has a trailing NUL. */
/* "a FIFO", "a directory", "a character device", ... for st_mode: messages. */
KC_EXPORT const char *kc_file_kind(unsigned mode);

/* Makes s (of capacity cap) valid UTF-8 in place: each byte that is not
 * part of a valid sequence becomes the four characters \xHH; what no longer
 * fits is cut at a character boundary. */
KC_EXPORT void kc_utf8_clean(char *s, size_t cap);

KC_EXPORT kc_rc kc_file_read(const char *path, size_t max, unsigned char **out, size_t *len,
                             kc_error *err) KC_MUST_CHECK;
/* Writes a file atomically: a new temporary file beside it (O_EXCL,
 * O_NOFOLLOW, created with mode), fsync, rename. Refuses to replace an
 * existing file unless overwrite. Secrets and wrapped keys use mode 0600. */
KC_EXPORT kc_rc kc_file_write(const char *path, const void *data, size_t len, unsigned mode,
                              int overwrite, kc_error *err) KC_MUST_CHECK;

#endif
