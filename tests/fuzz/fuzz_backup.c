/* libFuzzer: the backup-file parser (framing, then every body field). */
#include "kc_backup.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kc_error err;

    if (kc_backup_check(data, size, &err) == KC_OK)
        return 0;
    return 0;
}
