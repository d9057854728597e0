/* What a layout author would like keycustody to load: a shared object that
 * runs code the moment it is loaded (and would receive the PINs at C_Login
 * if it went on to pose as a PKCS#11 module). It leaves a mark so that a test
 * can tell whether it ever ran. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((constructor)) static void ran(void)
{
    const char *mark = getenv("KC_EVIL_MARK");
    int fd;

    if (mark == NULL)
        return;
    fd = open(mark, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd >= 0)
        close(fd);
}
