/* libFuzzer: the security-domain file parser. */
#include "kc_domain.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kc_error err;

    if (kc_domain_check_file(data, size, &err) == KC_OK)
        return 0;
    return 0;
}
