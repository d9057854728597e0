#include "kc_access.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    unsigned perm;
} perm_names[] = {
    {"get", KC_PERM_GET},          {"list", KC_PERM_LIST},       {"create", KC_PERM_CREATE},
    {"import", KC_PERM_IMPORT},    {"update", KC_PERM_UPDATE},   {"delete", KC_PERM_DELETE},
    {"recover", KC_PERM_RECOVER},  {"backup", KC_PERM_BACKUP},   {"restore", KC_PERM_RESTORE},
    {"purge", KC_PERM_PURGE},      {"rotate", KC_PERM_ROTATE},   {"wrapKey", KC_PERM_WRAP},
    {"unwrapKey", KC_PERM_UNWRAP}, {"encrypt", KC_PERM_ENCRYPT}, {"decrypt", KC_PERM_DECRYPT},
    {"sign", KC_PERM_SIGN},        {"verify", KC_PERM_VERIFY},
};
#define N_PERMS (sizeof(perm_names) / sizeof(perm_names[0]))

int kc_perms_parse(const char *name, unsigned *perm)
{
    size_t i;

    for (i = 0; i < N_PERMS; i++) {
        if (strcmp(perm_names[i].name, name) == 0) {
            *perm = perm_names[i].perm;
            return 0;
        }
    }
    return -1;
}

kc_rc kc_perms_parse_list(const char *csv, unsigned *perms, kc_error *err)
{
    char word[32];
    const char *p = csv;
    unsigned one;
    size_t n;

    *perms = 0;
    while (*p) {
        n = strcspn(p, ",");
        if (n == 0 || n >= sizeof(word))
            return kc_error_set(err, KC_USAGE, "permissions '%.60s': empty or overlong entry", csv);
        memcpy(word, p, n);
        word[n] = '\0';
        if (kc_perms_parse(word, &one) != 0) {
            kc_error_set(err, KC_USAGE, "unknown key permission '%s'", word);
            kc_error_hint(err, "permissions: get, list, create, import, update, delete, recover, "
                               "backup, restore, purge, rotate, wrapKey, unwrapKey, encrypt, "
                               "decrypt, sign, verify");
            return KC_USAGE;
        }
        *perms |= one;
        p += n;
        if (*p == ',')
            p++;
    }
    if (*perms == 0)
        return kc_error_set(err, KC_USAGE, "no permissions given");
    return KC_OK;
}

void kc_perms_format(unsigned perms, char *buf, size_t len)
{
    size_t off = 0, i;

    buf[0] = '\0';
    for (i = 0; i < N_PERMS; i++)
        if ((perms & perm_names[i].perm) && off < len)
            off +=
                (size_t)snprintf(buf + off, len - off, "%s%s", off ? "," : "", perm_names[i].name);
}
