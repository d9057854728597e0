/* Preloaded into a keycustody run (LD_PRELOAD): notes whether a block handed
 * back to malloc still holds a marker (KC_PROBE_MARKER), that is, whether a
 * plaintext the command read went through the ordinary heap and was freed
 * without being wiped. The note is one line in KC_PROBE_OUT. */

#include <fcntl.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void __libc_free(void *p);
extern void *__libc_realloc(void *p, size_t n);

static const char *marker;
static size_t marker_len;
static int noted;

__attribute__((constructor)) static void probe_init(void)
{
    marker = getenv("KC_PROBE_MARKER");
    marker_len = marker != NULL ? strlen(marker) : 0;
}

static void look(void *p)
{
    const char *out;
    int fd;

    if (p == NULL || marker_len == 0 || noted ||
        memmem(p, malloc_usable_size(p), marker, marker_len) == NULL)
        return;
    noted = 1;
    out = getenv("KC_PROBE_OUT");
    fd = out != NULL ? open(out, O_WRONLY | O_CREAT | O_APPEND, 0600) : -1;
    if (fd >= 0) {
        (void)!write(fd, "freed unwiped\n", 14);
        close(fd);
    }
}

__attribute__((visibility("default"))) void free(void *p)
{
    look(p);
    __libc_free(p);
}

__attribute__((visibility("default"))) void *realloc(void *p, size_t n)
{
    look(p); /* a moved block is freed as it is */
    return __libc_realloc(p, n);
}
