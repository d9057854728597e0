/* libFuzzer: key references (VAULT/KEY/VERSION and pkcs11: URIs) and PIN
 * source names, as typed on a command line. */
#include "kc_key.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    kc_key_ref ref;
    kc_error err;
    unsigned ops;

    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    if (kc_key_ref_parse(s, &ref, &err) == KC_OK && ref.name[0] == '\0')
        abort(); /* a parsed reference always names a key */
    if (kc_key_ops_parse(s, &ops, &err) == KC_OK && ops == 0)
        abort();
    (void)kc_secret_source_is_valid(s);
    free(s);
    return 0;
}
