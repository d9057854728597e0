/* libFuzzer: the vault metadata read back from tokens. */
#include "kc_vault.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kc_vault_meta m;
    kc_error err;

    if (kc_vault_meta_decode(data, size, &m, &err) == KC_OK)
        return 0;
    return 0;
}
