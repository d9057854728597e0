/* libFuzzer: the layout reader and its rules, and the picture policy graph
 * draws of what the reader takes: every DOT string it writes must end on
 * the line it began (a name that could end its string could add to the
 * graph). */
#include "kc_graph.h"
#include "kc_layout.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts unless every quoted string of dot is closed, with no raw control
 * character in it; an escape takes the next character as it is. */
static void check_strings(const char *dot, size_t len)
{
    size_t i;
    int in = 0;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)dot[i];
        if (in && (c < 0x20 || c == 0x7f))
            abort();
        if (in && c == '\\') {
            if (++i == len || (unsigned char)dot[i] < 0x20)
                abort();
        } else if (c == '"') {
            in = !in;
        }
    }
    if (in)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kc_layout *l;
    kc_diags d;
    kc_error err;
    char *dot = NULL;
    size_t len = 0;

    kc_diags_init(&d, "fuzz.yaml");
    l = kc_layout_read("fuzz.yaml", data, size, &d);
    if (l != NULL) {
        kc_layout_validate(l, &d);
        if (kc_graph_dot(l, &d, &dot, &len, &err) == KC_OK)
            check_strings(dot, len);
        free(dot);
    }
    kc_layout_free(l);
    kc_diags_release(&d);
    return 0;
}
