/* kc_mangen OUTDIR DATE: writes keycustody.1 and keycustody-GROUP.1 for
 * every command group into OUTDIR (the build runs it; the pages are
 * installed, never kept in the source tree). */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static int write_page(const char *dir, const char *page, const char *date)
{
    char path[4096];
    FILE *f;
    kc_rc r;

    snprintf(path, sizeof(path), "%s/%s.1", dir, page);
    f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        return 1;
    }
    r = kc_cli_man(f, page, date);
    if (fclose(f) != 0 || r != KC_OK) {
        fprintf(stderr, "kc_mangen: cannot write %s\n", path);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const kc_cmd *const *groups;
    const char *const *summaries;
    size_t n, g;
    char page[64];

    if (argc != 3) {
        fprintf(stderr, "usage: kc_mangen OUTDIR DATE\n");
        return 2;
    }
    n = kc_cli_groups(&groups, &summaries);
    if (write_page(argv[1], "keycustody", argv[2]) != 0)
        return 1;
    for (g = 0; g < n; g++) {
        snprintf(page, sizeof(page), "keycustody-%s", groups[g][0].group);
        if (write_page(argv[1], page, argv[2]) != 0)
            return 1;
    }
    return 0;
}
