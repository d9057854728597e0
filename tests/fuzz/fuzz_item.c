/* libFuzzer: stored item headers, read back from the service store (a file
 * anyone with access to it can change). */
#include "kc_data.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kc_item_header h;
    kc_error err;
    size_t i;

    if (kc_data_item_parse(data, size, &h, &err) != KC_OK)
        return 0;
    /* what parses is what the reader relies on */
    if (h.generation < 1 || strlen(h.dep_id) != 36)
        abort();
    for (i = 0; i < 36; i++)
        if (h.dep_id[i] != '-' && strchr("0123456789abcdef", h.dep_id[i]) == NULL)
            abort();
    return 0;
}
