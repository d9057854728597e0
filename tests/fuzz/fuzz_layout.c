/* libFuzzer: the layout reader and its rules. */
#include "kc_layout.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kc_layout *l;
    kc_diags d;

    kc_diags_init(&d, "fuzz.yaml");
    l = kc_layout_read("fuzz.yaml", data, size, &d);
    if (l != NULL)
        kc_layout_validate(l, &d);
    kc_layout_free(l);
    kc_diags_release(&d);
    return 0;
}
