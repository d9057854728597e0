/* libFuzzer: audit log lines, which anyone who can write the log file can
 * change: `audit verify` and every append read them. */
#include "kc_audit.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char mac[32];
    json_t *rec = NULL;
    size_t mac_off = 0;
    int has_mac = 0;
    kc_error err;

    if (kc_audit_parse_line((const char *)data, size, &rec, mac, &has_mac, &mac_off, &err) !=
        KC_OK) {
        if (rec != NULL)
            abort(); /* a refused line leaves nothing behind */
        return 0;
    }
    /* what parses is what verify relies on */
    if (mac_off >= size || json_integer_value(json_object_get(rec, "seq")) < 1 ||
        (json_is_string(json_object_get(rec, "sealed_by")) != (has_mac != 0)) ||
        strlen(json_string_value(json_object_get(rec, "prev"))) != 64)
        abort();
    json_decref(rec);
    return 0;
}
