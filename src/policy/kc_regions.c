/* The Azure region-pair table, policies/regions.yaml, compiled in (see
 * CMakeLists.txt) and read once with the layout's own YAML reader. */
#include "kc_layout.h"
#include "kc_yaml.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kc_regions_data.h" /* generated: kc_regions_yaml[], kc_regions_yaml_len */

static kc_ynode *table;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void)
{
    kc_diags d;

    kc_diags_init(&d, "policies/regions.yaml");
    table = kc_yaml_parse(kc_regions_yaml, kc_regions_yaml_len, &d);
    kc_diags_release(&d);
}

static const kc_ynode *section(const char *name)
{
    pthread_once(&once, load);
    return kc_yaml_get(table, name, NULL);
}

int kc_region_known(const char *region)
{
    const kc_ynode *pairs = section("pairs"), *unpaired = section("unpaired");
    size_t i, j;

    for (i = 0; pairs != NULL && i < pairs->n; i++)
        for (j = 0; j < pairs->items[i]->n; j++)
            if (strcmp(pairs->items[i]->items[j]->value, region) == 0)
                return 1;
    for (i = 0; unpaired != NULL && i < unpaired->n; i++)
        if (strcmp(unpaired->items[i]->value, region) == 0)
            return 1;
    return 0;
}

int kc_region_paired(const char *a, const char *b)
{
    const kc_ynode *pairs = section("pairs");
    size_t i;

    for (i = 0; pairs != NULL && i < pairs->n; i++) {
        const kc_ynode *p = pairs->items[i];
        if (p->kind != KC_Y_SEQ || p->n != 2)
            continue;
        if ((strcmp(p->items[0]->value, a) == 0 && strcmp(p->items[1]->value, b) == 0) ||
            (strcmp(p->items[0]->value, b) == 0 && strcmp(p->items[1]->value, a) == 0))
            return 1;
    }
    return 0;
}

const char *kc_region_table_date(void)
{
    const kc_ynode *taken = section("taken");

    return taken != NULL && taken->kind == KC_Y_SCALAR ? taken->value : "?";
}
