/* Internal to the core modules that keep records in the service store. */
#ifndef KC_STORE_INT_H
#define KC_STORE_INT_H

#include "kc_store.h"

#include <sqlite3.h>

struct kc_store {
    sqlite3 *db;
    int schema;
};

#endif
