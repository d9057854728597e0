/* Modules, tokens, sessions and login. */
#include "kc_p11_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void module_name(CK_FUNCTION_LIST *m, char *buf, size_t len)
{
    char *name = p11_kit_module_get_filename(m);

    snprintf(buf, len, "%s", name != NULL ? name : "(unknown module)");
    free(name);
}

static int same_file(const char *a, const char *b);

/* The registered module named name_or_path (its p11-kit name) or whose file
 * it is, loaded as p11-kit's registry configures it: its module file's
 * options (x-init-reserved and the rest) come with it, which some modules
 * cannot initialise without (NSS softokn). NULL when none is. */
static CK_FUNCTION_LIST *registered_module(const char *name_or_path)
{
    CK_FUNCTION_LIST **mods = p11_kit_modules_load(NULL, 0), *m = NULL;
    char *name, *file;
    size_t i;

    for (i = 0; mods != NULL && mods[i] != NULL; i++) {
        name = p11_kit_module_get_name(mods[i]);
        file = p11_kit_module_get_filename(mods[i]);
        if (m == NULL &&
            ((name != NULL && strcmp(name, name_or_path) == 0) ||
             (file != NULL && strchr(name_or_path, '/') != NULL && same_file(file, name_or_path))))
            m = mods[i];
        else
            p11_kit_module_release(mods[i]);
        free(name);
        free(file);
    }
    free(mods);
    return m;
}

/* Whether st is something only its owner (this user or root) can change:
 * what chooses or receives the PINs must be. The directory that holds it
 * must not let others replace it either (writable by them without the
 * sticky bit). */
static kc_rc owned_here(const char *path, const struct stat *st, const char *what, kc_error *err)
{
    char dir[PATH_MAX], *slash;
    struct stat ds;

    if ((st->st_uid != geteuid() && st->st_uid != 0) || (st->st_mode & 022) != 0)
        return kc_error_set(err, KC_DENIED,
                            "%s '%s' can be changed by others than you and root (owner uid %lu, "
                            "mode %03o): it chooses or receives the PINs",
                            what, path, (unsigned long)st->st_uid, (unsigned)(st->st_mode & 0777));
    snprintf(dir, sizeof(dir), "%s", path);
    slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    if (stat(dir, &ds) != 0 || ((ds.st_mode & 002) != 0 && (ds.st_mode & S_ISVTX) == 0) ||
        (ds.st_mode & 020) != 0)
        return kc_error_set(err, KC_DENIED,
                            "%s '%s' is in a directory others can write to ('%s'): they could "
                            "replace it",
                            what, path, dir);
    return KC_OK;
}

/* A module's file (a path, not a registered module, which the operator
 * installed), as p11-kit finds it. */
static kc_rc trusted_library(const char *path, kc_error *err)
{
    char full[PATH_MAX + 128];
    struct stat st;

    if (strchr(path, '/') == NULL)
        snprintf(full, sizeof(full), "%s/%s", P11_KIT_MODULE_PATH, path);
    else
        snprintf(full, sizeof(full), "%s", path);
    if (stat(full, &st) != 0)
        return kc_error_set(err, KC_TOKEN, "cannot load PKCS#11 module '%s': %s", path,
                            strerror(errno));
    return owned_here(full, &st, "PKCS#11 module", err);
}

/* A p11-kit server's socket, before anything is sent to it: the PIN goes
 * over it in the clear, so it must be a socket only its owner (this user
 * or root) controls, not reached through a link, and someone must answer. */
static kc_rc trusted_socket(const char *address, kc_error *err)
{
    const char *path = address + strlen("unix:path=");
    struct sockaddr_un sa;
    struct stat st;
    int fd, ok;
    kc_rc r;

    if (path[0] != '/')
        return kc_error_set(err, KC_USAGE,
                            "remote '%s': give the server's socket as an absolute path", address);
    if (lstat(path, &st) != 0)
        return kc_error_set(err, KC_TOKEN, "cannot reach the p11-kit server at '%s': %s", path,
                            strerror(errno));
    if (S_ISLNK(st.st_mode) || !S_ISSOCK(st.st_mode))
        return kc_error_set(err, KC_DENIED, "'%s' is %s, not the p11-kit server's socket", path,
                            S_ISLNK(st.st_mode) ? "a link" : "not a socket");
    r = owned_here(path, &st, "the p11-kit server's socket", err);
    if (r != KC_OK)
        return r;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa.sun_path))
        return kc_error_set(err, KC_USAGE, "socket path '%s' is too long", path);
    memcpy(sa.sun_path, path, strlen(path));
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (!ok) {
        kc_error_set(err, KC_TOKEN, "cannot connect to the p11-kit server at '%s': %s", path,
                     strerror(errno));
        kc_error_hint(err, "is the server running? 'p11-kit server' prints its address");
    }
    if (fd >= 0)
        close(fd);
    return ok ? KC_OK : KC_TOKEN;
}

/* A p11-kit module file (p11-kit's pkcs11.conf(5) format, "key: value"
 * lines): the module it names and its x-init-reserved, which a module may
 * not initialise without (NSS softokn: its database directory). Only a
 * file nobody but its owner can write, as it chooses the code loaded. */
static kc_rc read_module_file(const char *path, char *module, size_t mcap, char *reserved,
                              size_t rcap, char *remote, size_t remcap, kc_error *err)
{
    char line[1024], *v, *end;
    struct stat st;
    FILE *f = fopen(path, "r");

    module[0] = reserved[0] = remote[0] = '\0';
    if (f == NULL)
        return kc_error_set(err, KC_NOT_FOUND, "cannot open module file '%s': %s", path,
                            strerror(errno));
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return kc_error_set(err, KC_USAGE, "module file '%s' is not a regular file", path);
    }
    if (owned_here(path, &st, "module file", err) != KC_OK) {
        fclose(f);
        return err->code;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        v = strchr(line, ':');
        if (line[0] == '#' || v == NULL)
            continue;
        *v++ = '\0';
        v += strspn(v, " \t");
        end = v + strcspn(v, "\r\n");
        while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        *end = '\0';
        if (strcmp(line, "module") == 0)
            snprintf(module, mcap, "%s", v);
        else if (strcmp(line, "x-init-reserved") == 0)
            snprintf(reserved, rcap, "%s", v);
        else if (strcmp(line, "remote") == 0)
            snprintf(remote, remcap, "%s", v);
    }
    fclose(f);
    if (remote[0] != '\0' && strncmp(remote, "unix:path=", 10) != 0)
        return kc_error_set(err, KC_USAGE,
                            "module file '%s': remote '%s' is not a unix socket (unix:path=...); "
                            "keycustody reaches remote modules through local sockets only",
                            path, remote);
    if (module[0] == '\0' && remote[0] == '\0')
        return kc_error_set(err, KC_USAGE, "module file '%s' has no 'module:' or 'remote:' line",
                            path);
    if (module[0] != '\0' && remote[0] != '\0')
        return kc_error_set(err, KC_USAGE,
                            "module file '%s' names both a module and a remote server: which "
                            "one is meant is not for keycustody to guess",
                            path);
    return KC_OK;
}

/* p11-kit's client to a 'p11-kit server' at address: its
 * C_GetFunctionList takes the server's address from P11_KIT_SERVER_ADDRESS
 * and makes a client of its own at each call (p11-kit 0.24.1, client.c),
 * which p11_kit_module_load makes for each load: several servers are
 * reached from one process. */
static CK_FUNCTION_LIST *remote_module(const char *address)
{
    CK_FUNCTION_LIST *m = NULL;
    char *was = getenv("P11_KIT_SERVER_ADDRESS");
    char *saved = was != NULL ? strdup(was) : NULL;

    if ((was == NULL || saved != NULL) && setenv("P11_KIT_SERVER_ADDRESS", address, 1) == 0)
        m = p11_kit_module_load(P11_KIT_CLIENT_MODULE, P11_KIT_MODULE_UNMANAGED);
    if (saved != NULL)
        setenv("P11_KIT_SERVER_ADDRESS", saved, 1);
    else
        unsetenv("P11_KIT_SERVER_ADDRESS");
    free(saved);
    return m;
}

static int ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), k = strlen(tail);

    return n >= k && strcmp(s + n - k, tail) == 0;
}

/* SoftHSM's token directory, from its configuration (SOFTHSM2_CONF, else
 * the packaged default); 0 when it names none. */
static int softhsm_tokendir(char *dir, size_t cap)
{
    const char *conf = getenv("SOFTHSM2_CONF");
    char line[PATH_MAX + 64];
    FILE *f = fopen(conf != NULL && conf[0] != '\0' ? conf : "/etc/softhsm/softhsm2.conf", "r");
    int found = 0;

    if (f == NULL)
        return 0;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        char *p = line, *end;
        if (strncmp(p, "directories.tokendir", 20) != 0)
            continue;
        p += 20;
        p += strspn(p, " \t");
        if (*p++ != '=')
            continue;
        p += strspn(p, " \t");
        end = p + strcspn(p, "\r\n");
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        *end = '\0';
        found = *p != '\0' && snprintf(dir, cap, "%s", p) < (int)cap;
    }
    fclose(f);
    return found;
}

/* How many tokens SoftHSM keeps in dir: its directories with a token file
 * (file backend) or database (db backend). */
static size_t softhsm_tokens_on_disk(const char *dir)
{
    char path[PATH_MAX * 2];
    struct dirent *e;
    struct stat st;
    size_t n = 0;
    DIR *d = opendir(dir);

    if (d == NULL)
        return 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s/token.object", dir, e->d_name);
        if (stat(path, &st) == 0) {
            n++;
            continue;
        }
        snprintf(path, sizeof(path), "%s/%s/sqlite3.db", dir, e->d_name);
        n += stat(path, &st) == 0;
    }
    closedir(d);
    return n;
}

/* SoftHSM 2.6.1 reads every token at C_Initialize; one whose token.object
 * another process is rewriting at that moment fails to open and is left
 * out for the whole process (test_softhsm docs "a token rewritten while the
 * module starts" shows it with pkcs11-tool). It lists one slot per token it
 * opened plus one free one, so fewer slots than tokens on disk plus one is
 * a token it missed: the module is initialised again, a moment later,
 * before anything is opened (a token that never opens costs each command
 * three tries, 0.3 s). Only for a module loaded here from its file: one
 * behind a p11-kit module file may not use this host's token directory. */
static CK_RV softhsm_all_tokens(CK_FUNCTION_LIST *m)
{
    struct timespec pause = {0, 100 * 1000 * 1000};
    char dir[PATH_MAX];
    CK_INFO info;
    CK_ULONG slots = 0;
    CK_RV rv;
    int attempt;

    if (m->C_GetInfo(&info) != CKR_OK || memcmp(info.manufacturerID, "SoftHSM", 7) != 0 ||
        !softhsm_tokendir(dir, sizeof(dir)))
        return CKR_OK;
    for (attempt = 0; attempt < 3; attempt++) {
        if (m->C_GetSlotList(CK_TRUE, NULL, &slots) != CKR_OK ||
            slots >= softhsm_tokens_on_disk(dir) + 1)
            return CKR_OK;
        (void)nanosleep(&pause, NULL);
        (void)p11_kit_module_finalize(m);
        rv = p11_kit_module_initialize(m);
        if (rv != CKR_OK)
            return rv;
    }
    return CKR_OK;
}

/* The module a p11-kit module file names, initialised with its options
 * (C_Initialize's pReserved: what p11-kit passes from x-init-reserved). */
static kc_rc load_module_file(const char *path, CK_FUNCTION_LIST **out, kc_error *err)
{
    char module[PATH_MAX], reserved[1024], remote[PATH_MAX];
    CK_C_INITIALIZE_ARGS args;
    CK_FUNCTION_LIST *m;
    CK_RV rv;
    kc_rc r = read_module_file(path, module, sizeof(module), reserved, sizeof(reserved), remote,
                               sizeof(remote), err);

    if (r != KC_OK)
        return r;
    if (remote[0] != '\0') {
        r = trusted_socket(remote, err);
        if (r != KC_OK)
            return r;
        m = remote_module(remote);
        if (m == NULL)
            return kc_error_set(err, KC_TOKEN,
                                "cannot make a p11-kit client to '%s' (named by '%s')", remote,
                                path);
        rv = m->C_Initialize(NULL);
        if (rv != CKR_OK) {
            p11_kit_module_release(m);
            r = kc_p11_fail(err, "C_Initialize", rv,
                            "cannot reach the p11-kit server at '%s' (named by '%s')", remote,
                            path);
            kc_error_hint(err, "is the server running? 'p11-kit server' prints its address");
            return r;
        }
        *out = m;
        return KC_OK;
    }
    r = trusted_library(module, err);
    if (r != KC_OK)
        return kc_error_prefix(err, "module file '%s'", path);
    m = p11_kit_module_load(module, P11_KIT_MODULE_UNMANAGED);
    if (m == NULL)
        return kc_error_set(err, KC_TOKEN, "cannot load PKCS#11 module '%s' (named by '%s'): %s",
                            module, path,
                            p11_kit_message() ? p11_kit_message() : "no reason given");
    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = reserved[0] ? reserved : NULL;
    rv = m->C_Initialize(&args);
    if (rv != CKR_OK) {
        p11_kit_module_release(m);
        return kc_p11_fail(err, "C_Initialize", rv,
                           "cannot initialise PKCS#11 module '%s' with the options of '%s'", module,
                           path);
    }
    *out = m;
    return KC_OK;
}

/* One module by file, p11-kit module file or registered name, initialised. */
static kc_rc load_one(const char *module_path, CK_FUNCTION_LIST **out, kc_error *err)
{
    CK_FUNCTION_LIST *m;
    CK_RV rv;

    *out = NULL;
    if (ends_with(module_path, ".module"))
        return load_module_file(module_path, out, err);
    m = registered_module(module_path);
    /* else a file: a bare name is looked for in p11-kit's module directory */
    if (m == NULL) {
        kc_error ignored;
        kc_rc r = trusted_library(module_path, strchr(module_path, '/') ? err : &ignored);
        if (r != KC_OK && strchr(module_path, '/') != NULL)
            return r;
        if (r == KC_OK)
            m = p11_kit_module_load(module_path, 0);
    }
    if (m == NULL && strchr(module_path, '/') == NULL) {
        kc_error_set(err, KC_NOT_FOUND,
                     "no PKCS#11 module named '%s' is registered with p11-kit, and no module "
                     "file has that name",
                     module_path);
        kc_error_hint(err, "give the module's file, or see the registered ones with "
                           "'keycustody module list' (without --module)");
        return KC_NOT_FOUND;
    }
    if (m == NULL) {
        kc_error_set(err, KC_TOKEN, "cannot load PKCS#11 module '%s': %s", module_path,
                     p11_kit_message() ? p11_kit_message() : "no reason given");
        kc_error_hint(err, "check the path given with --module or KEYCUSTODY_MODULE "
                           "(SoftHSM: /usr/lib/softhsm/libsofthsm2.so)");
        return KC_TOKEN;
    }
    /* p11-kit initialises with CKF_OS_LOCKING_OK, which SoftHSM needs for
     * threads (it crashes with two threads under C_Initialize(NULL)). */
    rv = p11_kit_module_initialize(m);
    if (rv != CKR_OK) {
        kc_rc r;

        p11_kit_module_release(m);
        r = kc_p11_fail(err, "C_Initialize", rv, "cannot initialise PKCS#11 module '%s'",
                        module_path);
        if (rv == CKR_ARGUMENTS_BAD)
            kc_error_hint(err, "the module may need options to start (NSS softokn: its database "
                               "directory): give a p11-kit module file that names it with them "
                               "(x-init-reserved:), --module FILE.module");
        return r;
    }
    rv = softhsm_all_tokens(m);
    if (rv != CKR_OK) {
        p11_kit_module_release(m);
        return kc_p11_fail(err, "C_Initialize", rv, "cannot initialise PKCS#11 module '%s' again",
                           module_path);
    }
    *out = m;
    return KC_OK;
}

/* The file of the registered module named name_or_path, or whose file it
 * is, into file; 0 when none is. Nothing is initialised. */
static int registered_file(const char *name_or_path, char *file, size_t cap)
{
    CK_FUNCTION_LIST *m = registered_module(name_or_path);
    char *f;

    if (m == NULL)
        return 0;
    f = p11_kit_module_get_filename(m);
    snprintf(file, cap, "%s", f != NULL ? f : name_or_path);
    free(f);
    p11_kit_module_release(m);
    return 1;
}

/* What loading path would give, without loading it, in words: the module
 * file (links resolved) and the options it is started with, or the server
 * a module file's remote: names. A path that cannot be read keeps its own
 * name: loading it says why. Two requests with one key are one module. */
static void module_key(const char *path, char *key, size_t cap)
{
    char module[PATH_MAX], reserved[1024], remote[PATH_MAX], real[PATH_MAX], file[PATH_MAX],
        full[PATH_MAX + 128];
    kc_error ignored;
    int registered = 0;

    snprintf(file, sizeof(file), "%s", path);
    reserved[0] = '\0';
    if (ends_with(path, ".module")) {
        if (read_module_file(path, module, sizeof(module), reserved, sizeof(reserved), remote,
                             sizeof(remote), &ignored) != KC_OK) {
            snprintf(key, cap, "module file %.1000s (not read)", path);
            return;
        }
        if (remote[0] != '\0') {
            snprintf(key, cap, "the p11-kit server at %.1000s", remote);
            return;
        }
        snprintf(file, sizeof(file), "%s", module);
    } else {
        registered = registered_file(path, file, sizeof(file));
    }
    /* a bare name is looked for where p11-kit looks for it */
    if (strchr(file, '/') == NULL)
        snprintf(full, sizeof(full), "%s/%s", P11_KIT_MODULE_PATH, file);
    else
        snprintf(full, sizeof(full), "%s", file);
    if (realpath(full, real) == NULL)
        snprintf(real, sizeof(real), "%.*s", (int)sizeof(real) - 1, full);
    snprintf(key, cap, "%.700s%s%s%.400s%s", real, registered ? " (registered with p11-kit)" : "",
             reserved[0] ? " with x-init-reserved '" : "", reserved, reserved[0] ? "'" : "");
}

/* The index of the module of path in p (loading it if it is new). */
static kc_rc add_module(kc_p11 *p, const char *path, size_t *n, size_t *at, kc_error *err)
{
    CK_FUNCTION_LIST *m = NULL;
    char key[sizeof(p->keys[0])];
    size_t i;
    kc_rc r;

    /* the same module twice (a path and its registered name, a link) is
     * loaded once: twice, its tokens would each show twice */
    module_key(path, key, sizeof(key));
    for (i = 0; i < *n; i++)
        if (strcmp(p->keys[i], key) == 0) {
            *at = i;
            return KC_OK;
        }
    if (*n == KC_P11_MODULES_MAX)
        return kc_error_set(err, KC_USAGE, "more than %d PKCS#11 modules in one run",
                            KC_P11_MODULES_MAX);
    r = load_one(path, &m, err);
    if (r != KC_OK)
        return r;
    snprintf(p->keys[*n], sizeof(p->keys[0]), "%s", key);
    p->own_init[*n] = ends_with(path, ".module");
    p->modules[*n] = m;
    *at = (*n)++;
    return KC_OK;
}

static kc_rc load_registry(kc_p11 *p, size_t *n, kc_error *err)
{
    p->modules = p11_kit_modules_load_and_initialize(0);
    if (p->modules == NULL) {
        kc_error_set(err, KC_TOKEN, "cannot load the PKCS#11 modules registered with p11-kit");
        kc_error_hint(err, "name a module with --module PATH or KEYCUSTODY_MODULE");
        return KC_TOKEN;
    }
    p->from_registry = 1;
    while (p->modules[*n] != NULL)
        (*n)++;
    return KC_OK;
}

/* vault on module (KC_P11_UNREACHABLE: why says why it would not load). */
static kc_rc bind_vault(kc_p11 *p, const char *vault, size_t module, const kc_error *why,
                        kc_error *err)
{
    size_t i;

    if (strlen(vault) > 32)
        return kc_error_set(err, KC_USAGE, "vault name '%s' is longer than a token label", vault);
    for (i = 0; i < p->nbinds; i++)
        if (strcmp(p->binds[i].label, vault) == 0) {
            if (p->binds[i].module == module)
                return KC_OK;
            kc_error_set(err, KC_USAGE, "vault '%s' is given two modules", vault);
            kc_error_hint(err, "give each vault one --module VAULT=MODULE");
            return KC_USAGE;
        }
    snprintf(p->binds[p->nbinds].label, sizeof(p->binds[0].label), "%s", vault);
    p->binds[p->nbinds].why[0] = '\0';
    if (module == KC_P11_UNREACHABLE)
        kc_error_format(why, p->binds[p->nbinds].why, sizeof(p->binds[0].why));
    p->binds[p->nbinds++].module = module;
    return KC_OK;
}

kc_rc kc_p11_load_set(const kc_module_set *set, kc_p11 **out, kc_error *err)
{
    kc_p11 *p = NULL;
    size_t n = 0, i, at;
    kc_rc r = KC_OK;

    *out = NULL;
    if (set->npaths > KC_P11_MODULES_MAX || set->nbinds > KC_P11_BINDS_MAX)
        return kc_error_set(err, KC_USAGE, "too many modules or vaults bound to modules");
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    if (set->npaths == 0 && set->nbinds == 0) {
        r = load_registry(p, &n, err);
    } else {
        p->modules = calloc(KC_P11_MODULES_MAX + 1, sizeof(*p->modules));
        if (p->modules == NULL)
            r = kc_error_set(err, KC_ERR, "out of memory");
        for (i = 0; r == KC_OK && i < set->npaths; i++)
            r = add_module(p, set->paths[i], &n, &at, err);
        for (i = 0; r == KC_OK && i < set->nbinds; i++) {
            kc_error why;
            kc_error_clear(&why);
            r = add_module(p, set->binds[i].module, &n, &at, &why);
            /* a vault's module that cannot be reached (its region's server
             * down) fails that vault alone: a DEP's data stays readable
             * through its other vault */
            if (r == KC_TOKEN) {
                at = KC_P11_UNREACHABLE;
                r = KC_OK;
            } else if (r != KC_OK) {
                *err = why;
            }
            if (r == KC_OK)
                r = bind_vault(p, set->binds[i].vault, at, &why, err);
        }
    }
    if (r == KC_OK) {
        p->calls = calloc(n + 1, sizeof(*p->calls));
        if (p->calls == NULL)
            r = kc_error_set(err, KC_ERR, "out of memory");
    }
    if (r != KC_OK) {
        kc_p11_free(p);
        return r;
    }
    /* faults (kc_p11_fault_arm) are injected into the first module only:
     * the wrapper keeps one module's functions */
    for (i = 0; i < n; i++)
        p->calls[i] = p->from_registry || i > 0 ? p->modules[i] : kc_p11_fault_wrap(p->modules[i]);
    *out = p;
    return KC_OK;
}

kc_rc kc_p11_load(const char *module_path, kc_p11 **out, kc_error *err)
{
    kc_module_set set;

    memset(&set, 0, sizeof(set));
    if (module_path != NULL)
        set.paths[set.npaths++] = module_path;
    return kc_p11_load_set(&set, out, err);
}

/* --- which modules a layout may name --- */

static int same_file(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];

    return realpath(a, ra) != NULL && realpath(b, rb) != NULL && strcmp(ra, rb) == 0;
}

static int is_registered(const char *module)
{
    CK_FUNCTION_LIST **mods = p11_kit_modules_load(NULL, 0);
    char *file;
    int found = 0;
    size_t i;

    for (i = 0; mods != NULL && mods[i] != NULL && !found; i++) {
        file = p11_kit_module_get_filename(mods[i]);
        found = file != NULL && same_file(file, module);
        free(file);
    }
    if (mods != NULL)
        p11_kit_modules_release(mods);
    return found;
}

/* Whether the allow-list file lists module; *why says why the file itself
 * is not believed, when it is not. */
static int is_listed(const char *module, const char *file, const char **why)
{
    char line[PATH_MAX + 2];
    struct stat st;
    size_t len;
    int fd, found = 0;
    FILE *f;

    *why = NULL;
    fd = open(file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        *why = errno == ENOENT ? NULL : "it cannot be opened (or is a symbolic link)";
        return 0;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        *why = "it is not a regular file";
    } else if (st.st_uid != 0) {
        *why = "root does not own it";
    } else if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        *why = "others can write it";
    }
    if (*why != NULL || (f = fdopen(fd, "r")) == NULL) {
        close(fd);
        return 0;
    }
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        len = strcspn(line, "#\n");
        while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
            len--;
        line[len] = '\0';
        found = line[0] == '/' && same_file(line, module);
    }
    fclose(f);
    return found;
}

kc_rc kc_p11_module_allowed(const char *module, kc_error *err)
{
    const char *file = getenv("KEYCUSTODY_MODULES_ALLOW"), *why = NULL;

    if (file == NULL || file[0] == '\0')
        file = KC_P11_ALLOW_FILE;
    if (module[0] != '/')
        return kc_error_set(err, KC_DENIED,
                            "module '%s' named by the layout is not an absolute path; nothing "
                            "was loaded",
                            module);
    if (is_registered(module) || is_listed(module, file, &why))
        return KC_OK;
    kc_error_set(err, KC_DENIED,
                 "module '%s' named by the layout is not allowed: it is not registered with "
                 "p11-kit and not listed in %s%s%s; nothing was loaded",
                 module, file, why != NULL ? ", which is not believed: " : "",
                 why != NULL ? why : "");
    kc_error_hint(err,
                  "a layout may name only modules the operator allowed: register it with "
                  "p11-kit (a .module file), list it in %s (owned by root, not writable by "
                  "others), or name it with --module",
                  file);
    return KC_DENIED;
}

int kc_p11_busy(CK_RV rv, int *tries)
{
    long ms;
    struct timespec pause;

    if (rv != CKR_GENERAL_ERROR || *tries >= 12)
        return 0;
    ms = *tries < 4 ? 20L << *tries : 200;
    pause.tv_sec = 0;
    pause.tv_nsec = ms * 1000 * 1000;
    (void)nanosleep(&pause, NULL);
    (*tries)++;
    return 1;
}

static void tok_close(kc_tok *t)
{
    if (t == NULL)
        return;
    kc_secret_free(t->pin); /* wiped */
    t->pin = NULL;
    if (!t->has_session)
        return;
    /* Closing the last session logs the user out; an explicit C_Logout
     * would log out other handles that share this login. */
    (void)t->f->C_CloseSession(t->session);
    t->has_session = 0;
    t->logged_in = 0;
}

int kc_tok_session_lost(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED;
}

void kc_tok_explain_lost(const kc_tok *t, CK_RV rv, kc_error *err)
{
    if (t->recoveries == 0 || !(rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID ||
                                rv == CKR_UNWRAPPING_KEY_HANDLE_INVALID ||
                                rv == CKR_WRAPPING_KEY_HANDLE_INVALID || kc_tok_session_lost(rv)))
        return;
    kc_error_hint(err,
                  "the session to '%s' was lost and replaced during this operation, which "
                  "invalidated the key it held; run the command again",
                  t->info.label);
}

int kc_tok_recover(kc_tok *t)
{
    int was_logged_in = t->logged_in;
    kc_error ignored;
    CK_RV rv;

    if (t->recoveries > 0)
        return 0;
    t->recoveries++;
    if (t->has_session)
        (void)t->f->C_CloseSession(t->session);
    t->has_session = 0;
    t->logged_in = 0;
    if (kc_tok_session(t, &ignored) != KC_OK)
        return 0;
    if (!was_logged_in || t->pin == NULL)
        return 1;
    rv = t->f->C_Login(t->session, CKU_USER, t->pin->data, t->pin->len);
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
        return 0;
    t->logged_in = 1;
    return 1;
}

void kc_tok_free(kc_tok *t)
{
    if (t == NULL)
        return;
    tok_close(t);
    free(t);
}

void kc_p11_free(kc_p11 *p)
{
    size_t i;

    if (p == NULL)
        return;
    for (i = 0; i < p->ncache; i++)
        kc_tok_free(p->cache[i]);
    free(p->cache);
    if (p->modules != NULL) {
        if (p->calls != NULL)
            for (i = 0; p->modules[i] != NULL && p->calls[i] != NULL; i++)
                kc_p11_fault_release(p->calls[i], p->modules[i]);
        if (p->from_registry) {
            p11_kit_modules_finalize_and_release(p->modules);
        } else {
            for (i = 0; p->modules[i] != NULL; i++) {
                p11_kit_module_finalize(p->modules[i]);
                p11_kit_module_release(p->modules[i]);
            }
            free(p->modules);
        }
    }
    free(p->calls);
    free(p);
}

static void fill_info(kc_tok_info *ti, const CK_TOKEN_INFO *info, const char *module)
{
    P11KitUri *uri = NULL;
    char *s = NULL;
    CK_FLAGS fl = info->flags;

    memset(ti, 0, sizeof(*ti));
    kc_p11_copy_padded(ti->label, sizeof(ti->label), info->label, sizeof(info->label));
    kc_p11_copy_padded(ti->manufacturer, sizeof(ti->manufacturer), info->manufacturerID,
                       sizeof(info->manufacturerID));
    kc_p11_copy_padded(ti->model, sizeof(ti->model), info->model, sizeof(info->model));
    kc_p11_copy_padded(ti->serial, sizeof(ti->serial), info->serialNumber,
                       sizeof(info->serialNumber));
    snprintf(ti->module, sizeof(ti->module), "%s", module);
    ti->initialized = (fl & CKF_TOKEN_INITIALIZED) != 0;
    ti->user_pin_initialized = (fl & CKF_USER_PIN_INITIALIZED) != 0;
    ti->login_required = (fl & CKF_LOGIN_REQUIRED) != 0;
    ti->write_protected = (fl & CKF_WRITE_PROTECTED) != 0;
    ti->user_pin_count_low = (fl & CKF_USER_PIN_COUNT_LOW) != 0;
    ti->user_pin_final_try = (fl & CKF_USER_PIN_FINAL_TRY) != 0;
    ti->user_pin_locked = (fl & CKF_USER_PIN_LOCKED) != 0;
    ti->user_pin_to_be_changed = (fl & CKF_USER_PIN_TO_BE_CHANGED) != 0;
    ti->so_pin_count_low = (fl & CKF_SO_PIN_COUNT_LOW) != 0;
    ti->so_pin_final_try = (fl & CKF_SO_PIN_FINAL_TRY) != 0;
    ti->so_pin_locked = (fl & CKF_SO_PIN_LOCKED) != 0;
    ti->so_pin_to_be_changed = (fl & CKF_SO_PIN_TO_BE_CHANGED) != 0;
    ti->min_pin = info->ulMinPinLen;
    ti->max_pin = info->ulMaxPinLen;
    uri = p11_kit_uri_new();
    if (uri != NULL) {
        memcpy(p11_kit_uri_get_token_info(uri), info, sizeof(*info));
        if (p11_kit_uri_format(uri, P11_KIT_URI_FOR_TOKEN, &s) == P11_KIT_URI_OK && s != NULL)
            snprintf(ti->uri, sizeof(ti->uri), "%s", s);
        free(s);
        p11_kit_uri_free(uri);
    }
}

/* Calls fn for every slot with a token, in every module (mod indexes
 * p->modules and p->calls), until fn returns non-zero. */
typedef int (*slot_fn)(kc_p11 *p, size_t mod, CK_SLOT_ID slot, const CK_TOKEN_INFO *info,
                       void *arg);

static kc_rc each_token(kc_p11 *p, slot_fn fn, void *arg, int *stopped, kc_error *err)
{
    CK_SLOT_ID *slots = NULL;
    CK_TOKEN_INFO info;
    CK_ULONG count, j;
    CK_RV rv;
    size_t i;
    kc_rc r = KC_ERR;

    *stopped = 0;
    for (i = 0; p->calls[i] != NULL; i++) {
        CK_FUNCTION_LIST *f = p->calls[i];

        /* A slot can appear between the size query and the real call. */
        do {
            rv = f->C_GetSlotList(CK_TRUE, NULL, &count);
            if (rv == CKR_OK) {
                free(slots);
                slots = calloc(count + 1, sizeof(*slots));
                if (slots == NULL) {
                    r = kc_error_set(err, KC_ERR, "out of memory");
                    goto cleanup;
                }
                rv = f->C_GetSlotList(CK_TRUE, slots, &count);
            }
        } while (rv == CKR_BUFFER_TOO_SMALL);
        if (rv != CKR_OK) {
            char module[256];
            module_name(p->modules[i], module, sizeof(module));
            r = kc_p11_fail(err, "C_GetSlotList", rv, "cannot list the slots of module '%s'",
                            module);
            goto cleanup;
        }
        for (j = 0; j < count; j++) {
            int tries = 0;

            do {
                memset(&info, 0, sizeof(info));
                rv = f->C_GetTokenInfo(slots[j], &info);
            } while (kc_p11_busy(rv, &tries));
            if (rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_TOKEN_NOT_RECOGNIZED)
                continue;
            if (rv != CKR_OK) {
                r = kc_p11_fail(err, "C_GetTokenInfo", rv, "cannot read token information");
                goto cleanup;
            }
            *stopped = fn(p, i, slots[j], &info, arg);
            if (*stopped)
                goto done;
        }
    }
done:
    r = KC_OK;
cleanup:
    free(slots);
    return r;
}

struct list_arg {
    kc_tok_info *v;
    size_t n, cap;
    int oom;
};

/* Whether label is bound to a module other than mod. */
static int bound_elsewhere(const kc_p11 *p, const char *label, size_t mod)
{
    size_t i;

    for (i = 0; label != NULL && i < p->nbinds; i++)
        if (strcmp(p->binds[i].label, label) == 0)
            return p->binds[i].module != mod;
    return 0;
}

/* What the module label is bound to is (its file or server); NULL when
 * label is not bound. */
static const char *bound_to(const kc_p11 *p, const char *label)
{
    size_t i;

    for (i = 0; i < p->nbinds; i++)
        if (strcmp(p->binds[i].label, label) == 0 && p->binds[i].module != KC_P11_UNREACHABLE)
            return p->keys[p->binds[i].module];
    return NULL;
}

/* Why the module label is bound to could not be loaded; NULL when it was. */
static const char *unreachable(const kc_p11 *p, const char *label)
{
    size_t i;

    for (i = 0; i < p->nbinds; i++)
        if (strcmp(p->binds[i].label, label) == 0)
            return p->binds[i].module == KC_P11_UNREACHABLE ? p->binds[i].why : NULL;
    return NULL;
}

/* A token labelled as a vault bound to another module is not that vault,
 * whichever way it is looked for (by label, by URI, in a list): it is not
 * seen at all (kc_module_set). */
static int shadowed(const kc_p11 *p, size_t mod, const CK_TOKEN_INFO *info)
{
    char label[33];

    if (p->nbinds == 0 || !(info->flags & CKF_TOKEN_INITIALIZED))
        return 0;
    kc_p11_copy_padded(label, sizeof(label), info->label, sizeof(info->label));
    return bound_elsewhere(p, label, mod);
}

static int list_one(kc_p11 *p, size_t mod, CK_SLOT_ID slot, const CK_TOKEN_INFO *info, void *arg)
{
    struct list_arg *a = arg;
    char module[256];

    if (shadowed(p, mod, info))
        return 0;
    if (a->n == a->cap) {
        kc_tok_info *nv = realloc(a->v, (a->cap * 2 + 4) * sizeof(*nv));
        if (nv == NULL) {
            a->oom = 1;
            return 1;
        }
        a->v = nv;
        a->cap = a->cap * 2 + 4;
    }
    /* Name the module by its real file, not the fault-injecting copy. */
    module_name(p->modules[mod], module, sizeof(module));
    fill_info(&a->v[a->n], info, module);
    a->v[a->n].slot_id = slot;
    a->v[a->n++].module_index = mod;
    return 0;
}

kc_rc kc_p11_list_tokens(kc_p11 *p, kc_tok_info **out, size_t *n, kc_error *err)
{
    struct list_arg a = {NULL, 0, 0, 0};
    int stopped;
    kc_rc r;

    *out = NULL;
    *n = 0;
    r = each_token(p, list_one, &a, &stopped, err);
    if (r == KC_OK && a.oom)
        r = kc_error_set(err, KC_ERR, "out of memory");
    if (r != KC_OK) {
        free(a.v);
        return r;
    }
    *out = a.v;
    *n = a.n;
    return KC_OK;
}

kc_rc kc_p11_modules(kc_p11 *p, kc_module_info **out, size_t *n, kc_error *err)
{
    kc_module_info *v;
    CK_INFO info;
    CK_ULONG slots;
    size_t count = 0, i;
    char *s;
    CK_RV rv;

    *out = NULL;
    *n = 0;
    while (p->modules[count] != NULL)
        count++;
    v = calloc(count + 1, sizeof(*v));
    if (v == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    for (i = 0; i < count; i++) {
        s = p11_kit_module_get_name(p->modules[i]);
        snprintf(v[i].name, sizeof(v[i].name), "%s", s != NULL ? s : "");
        free(s);
        s = p11_kit_module_get_filename(p->modules[i]);
        snprintf(v[i].path, sizeof(v[i].path), "%s", s != NULL ? s : "");
        free(s);
        if (!p->from_registry && p->own_init[i])
            snprintf(v[i].source, sizeof(v[i].source), "%.399s", p->keys[i]);
        rv = p->calls[i]->C_GetInfo(&info);
        if (rv != CKR_OK) {
            kc_p11_fail(err, "C_GetInfo", rv, "cannot ask module '%s' what it is", v[i].path);
            free(v);
            return err->code;
        }
        kc_p11_copy_padded(v[i].manufacturer, sizeof(v[i].manufacturer), info.manufacturerID,
                           sizeof(info.manufacturerID));
        kc_p11_copy_padded(v[i].description, sizeof(v[i].description), info.libraryDescription,
                           sizeof(info.libraryDescription));
        snprintf(v[i].version, sizeof(v[i].version), "%u.%u", info.libraryVersion.major,
                 info.libraryVersion.minor);
        snprintf(v[i].cryptoki, sizeof(v[i].cryptoki), "%u.%u", info.cryptokiVersion.major,
                 info.cryptokiVersion.minor);
        slots = 0;
        if (p->calls[i]->C_GetSlotList(CK_TRUE, NULL, &slots) == CKR_OK)
            v[i].ntokens = slots;
    }
    *out = v;
    *n = count;
    return KC_OK;
}

int kc_p11_is_uri(const char *s)
{
    return s != NULL && strncmp(s, "pkcs11:", 7) == 0;
}

struct find_arg {
    P11KitUri *uri;    /* match by URI, or */
    const char *label; /* by label */
    const char *vault; /* the vault it is for: on its module, where bound */
    int want_free;     /* only tokens that are not initialised */
    int matches;
    CK_FUNCTION_LIST *f;
    CK_FUNCTION_LIST *module;
    CK_SLOT_ID slot;
    CK_TOKEN_INFO info;
};

static int find_one(kc_p11 *p, size_t mod, CK_SLOT_ID slot, const CK_TOKEN_INFO *info, void *arg)
{
    struct find_arg *a = arg;
    char label[33];

    /* a vault bound to a module is on that one (kc_module_set) */
    if (bound_elsewhere(p, a->vault, mod) || shadowed(p, mod, info))
        return 0;

    if (a->want_free && (info->flags & CKF_TOKEN_INITIALIZED))
        return 0;
    if (a->uri != NULL) {
        if (!p11_kit_uri_match_token_info(a->uri, info))
            return 0;
    } else if (a->label != NULL) {
        kc_p11_copy_padded(label, sizeof(label), info->label, sizeof(info->label));
        if (strcmp(label, a->label) != 0)
            return 0;
    }
    if (a->matches++ == 0) {
        a->f = p->calls[mod];
        a->module = p->modules[mod];
        a->slot = slot;
        a->info = *info;
    }
    /* A free token is any one; a named token must be unique, so keep counting. */
    return a->want_free;
}

/* A sentence listing the n tokens v, for "not found" messages. */
static void name_tokens(const kc_tok_info *v, size_t n, char *buf, size_t len)
{
    size_t i, off = 0;

    buf[0] = '\0';
    if (n == 0) {
        snprintf(buf, len, "no token is visible");
        return;
    }
    off = (size_t)snprintf(buf, len, "visible tokens:");
    for (i = 0; i < n && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s '%s'", i ? "," : "",
                                v[i].initialized ? v[i].label : "(not initialised)");
}

/* The same of the tokens visible now. */
static void visible_tokens(kc_p11 *p, char *buf, size_t len)
{
    kc_tok_info *v = NULL;
    kc_error ignored;
    size_t n = 0;

    if (kc_p11_list_tokens(p, &v, &n, &ignored) != KC_OK)
        n = 0;
    name_tokens(v, n, buf, len);
    free(v);
}

static kc_rc parse_token_uri(const char *s, P11KitUri **out, kc_error *err)
{
    P11KitUri *uri = p11_kit_uri_new();
    int ur;

    *out = NULL;
    if (uri == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    ur = p11_kit_uri_parse(s, P11_KIT_URI_FOR_ANY, uri);
    if (ur != P11_KIT_URI_OK) {
        p11_kit_uri_free(uri);
        /* The URI is not echoed: it could carry a pin-value. */
        return kc_error_set(err, KC_USAGE, "invalid PKCS#11 URI: %s", p11_kit_uri_message(ur));
    }
    if (p11_kit_uri_get_pin_value(uri) != NULL) {
        p11_kit_uri_free(uri);
        kc_error_set(err, KC_USAGE, "a PKCS#11 URI with pin-value is refused");
        kc_error_hint(err, "remove pin-value from the URI; give the PIN with --pin-source");
        return KC_USAGE;
    }
    *out = uri;
    return KC_OK;
}

/* A token handle on slot of f, nothing asked of the token yet. */
static kc_tok *tok_alloc(kc_p11 *p, CK_FUNCTION_LIST *f, CK_SLOT_ID slot)
{
    kc_tok *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return NULL;
    t->p = p;
    t->f = f;
    t->slot = slot;
    t->oaep_sha256 = -1;
    t->takes_copyable = t->takes_unwrap_template = -1;
    return t;
}

static kc_rc tok_new(kc_p11 *p, const struct find_arg *a, kc_tok **out, kc_error *err)
{
    kc_tok *t = tok_alloc(p, a->f, a->slot);
    char module[256];

    *out = NULL;
    if (t == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    module_name(a->module, module, sizeof(module));
    fill_info(&t->info, &a->info, module);
    *out = t;
    return KC_OK;
}

/* SoftHSM 2.6.1 reads every token directory at C_Initialize; a token whose
 * token.object another process is rewriting at that moment (every login
 * rewrites it) is then listed as an uninitialised token for the life of the
 * process, and a vault that exists is "not found". Before anything was
 * opened, initialising the module again (0.1 s later) sees it. 1 when it
 * was done. */
static int reload_module(kc_p11 *p)
{
    struct timespec pause = {0, 100 * 1000 * 1000};

    size_t i;
    int ok = 1;

    if (p->ncache != 0 || p->from_registry || p->modules == NULL || p->modules[0] == NULL)
        return 0;
    (void)nanosleep(&pause, NULL);
    for (i = 0; p->modules[i] != NULL; i++) {
        if (p->own_init[i])
            continue;
        (void)p11_kit_module_finalize(p->modules[i]);
        ok &= p11_kit_module_initialize(p->modules[i]) == CKR_OK;
    }
    return ok;
}

static kc_rc one_match(kc_p11 *p, const char *name_or_uri, int want_free, const struct find_arg *a,
                       const kc_tok_info *toks, size_t n, kc_error *err);

static kc_rc find_token(kc_p11 *p, const char *name_or_uri, const char *vault, int want_free,
                        int reload, struct find_arg *a, kc_error *err)
{
    int stopped, attempt;
    kc_rc r;

    memset(a, 0, sizeof(*a));
    a->want_free = want_free;
    a->vault = vault;
    if (kc_p11_is_uri(name_or_uri)) {
        r = parse_token_uri(name_or_uri, &a->uri, err);
        if (r != KC_OK)
            return r;
    } else {
        a->label = name_or_uri;
        a->vault = name_or_uri;
    }
    r = each_token(p, find_one, a, &stopped, err);
    /* under parallel writers one reload is not always enough
     * (test_misuse.concurrent): up to three, before "not found" */
    for (attempt = 0; r == KC_OK && a->matches == 0 && reload && attempt < 3 && reload_module(p);
         attempt++)
        r = each_token(p, find_one, a, &stopped, err);
    p11_kit_uri_free(a->uri);
    a->uri = NULL;
    if (r != KC_OK)
        return r;
    return one_match(p, name_or_uri, want_free, a, NULL, 0, err);
}

/* What a search that counted a->matches tokens for name_or_uri answers:
 * KC_OK for exactly one (for a free token, at least one). A "not found"
 * names the tokens toks (NULL: those visible now). */
static kc_rc one_match(kc_p11 *p, const char *name_or_uri, int want_free, const struct find_arg *a,
                       const kc_tok_info *toks, size_t n, kc_error *err)
{
    char seen[512];
    kc_rc r;

    if (a->matches == 0 && a->vault != NULL && unreachable(p, a->vault) != NULL) {
        kc_error_set(err, KC_TOKEN, "vault '%s' is bound to a module that could not be loaded: %s",
                     a->vault, unreachable(p, a->vault));
        return KC_TOKEN;
    }
    if (a->matches == 0 && a->vault != NULL && bound_to(p, a->vault) != NULL) {
        kc_error_set(err, KC_NOT_FOUND, "no token '%s' on the module it is bound to (%s)", a->vault,
                     bound_to(p, a->vault));
        kc_error_hint(err, "see that module's tokens with 'keycustody module list --module "
                           "MODULE'; a token of that label on another module is not this vault");
        return KC_NOT_FOUND;
    }
    if (a->matches == 0) {
        if (toks != NULL)
            name_tokens(toks, n, seen, sizeof(seen));
        else
            visible_tokens(p, seen, sizeof(seen));
        if (want_free)
            r = kc_error_set(err, KC_NOT_FOUND, "no free (uninitialised) token%s%s; %s",
                             name_or_uri ? " matches " : "", name_or_uri ? name_or_uri : "", seen);
        else
            r = kc_error_set(err, KC_NOT_FOUND, "no token '%s'; %s", name_or_uri, seen);
        return r;
    }
    if (a->matches > 1 && !want_free) {
        kc_error_set(err, KC_CONFLICT, "%d tokens match '%s'", a->matches, name_or_uri);
        kc_error_hint(err,
                      "name the token by a URI with its serial, e.g. "
                      "'pkcs11:token=%s;serial=...'",
                      a->label ? a->label : "NAME");
        return KC_CONFLICT;
    }
    return KC_OK;
}

kc_rc kc_p11_token_new(kc_p11 *p, const char *name_or_uri, kc_tok **out, kc_error *err)
{
    struct find_arg a;
    kc_rc r;

    *out = NULL;
    r = find_token(p, name_or_uri, NULL, 0, 0, &a, err);
    if (r != KC_OK)
        return r;
    return tok_new(p, &a, out, err);
}

/* Keeps t for later lookups of its token (p owns it from now on). */
static kc_rc cache_add(kc_p11 *p, kc_tok *t, kc_tok **out, kc_error *err)
{
    kc_tok **nc = realloc(p->cache, (p->ncache + 1) * sizeof(*nc));

    if (nc == NULL) {
        kc_tok_free(t);
        return kc_error_set(err, KC_ERR, "out of memory");
    }
    p->cache = nc;
    p->cache[p->ncache++] = t;
    *out = t;
    return KC_OK;
}

static kc_rc cache_token(kc_p11 *p, const struct find_arg *a, kc_tok **out, kc_error *err)
{
    kc_tok *t = NULL;
    size_t i;
    kc_rc r;

    for (i = 0; i < p->ncache; i++) {
        if (p->cache[i]->f == a->f && p->cache[i]->slot == a->slot) {
            *out = p->cache[i];
            return KC_OK;
        }
    }
    r = tok_new(p, a, &t, err);
    if (r != KC_OK)
        return r;
    return cache_add(p, t, out, err);
}

kc_rc kc_p11_token(kc_p11 *p, const char *name_or_uri, kc_tok **out, kc_error *err)
{
    struct find_arg a;
    kc_rc r;

    *out = NULL;
    r = find_token(p, name_or_uri, NULL, 0, 1, &a, err);
    if (r != KC_OK)
        return r;
    return cache_token(p, &a, out, err);
}

kc_rc kc_p11_token_listed(kc_p11 *p, const kc_tok_info *info, kc_tok **out, kc_error *err)
{
    kc_tok *t;
    size_t i, n;

    *out = NULL;
    for (n = 0; p->calls[n] != NULL; n++)
        ;
    if (info->module_index >= n)
        return kc_error_set(err, KC_ERR, "token '%s' is not of a loaded module", info->label);
    for (i = 0; i < p->ncache; i++)
        if (p->cache[i]->f == p->calls[info->module_index] && p->cache[i]->slot == info->slot_id) {
            *out = p->cache[i];
            return KC_OK;
        }
    t = tok_alloc(p, p->calls[info->module_index], info->slot_id);
    if (t == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    t->info = *info; /* as the listing read it, its module named as there */
    return cache_add(p, t, out, err);
}

/* Whether the listed token info is the one a token URI names: the URI's
 * token attributes (label, manufacturer, model, serial) against those the
 * listing read, which its own URI carries. */
static int listed_matches_uri(P11KitUri *want, const kc_tok_info *info)
{
    P11KitUri *have = p11_kit_uri_new();
    int match = 0;

    if (have != NULL && p11_kit_uri_parse(info->uri, P11_KIT_URI_FOR_TOKEN, have) == P11_KIT_URI_OK)
        match = p11_kit_uri_match_token_info(want, p11_kit_uri_get_token_info(have));
    p11_kit_uri_free(have);
    return match;
}

kc_rc kc_p11_token_in_list(kc_p11 *p, const kc_tok_info *toks, size_t n, const char *name_or_uri,
                           kc_tok **out, kc_error *err)
{
    struct find_arg a;
    size_t i, first = 0;
    kc_rc r;

    *out = NULL;
    memset(&a, 0, sizeof(a));
    if (kc_p11_is_uri(name_or_uri)) {
        r = parse_token_uri(name_or_uri, &a.uri, err);
        if (r != KC_OK)
            return r;
    } else {
        a.label = a.vault = name_or_uri;
    }
    /* the listing left out the tokens a binding hides (shadowed) */
    for (i = 0; i < n; i++) {
        if (a.uri != NULL ? !listed_matches_uri(a.uri, &toks[i])
                          : strcmp(toks[i].label, a.label) != 0 ||
                                bound_elsewhere(p, a.label, toks[i].module_index))
            continue;
        if (a.matches++ == 0)
            first = i;
    }
    p11_kit_uri_free(a.uri);
    a.uri = NULL;
    /* not listed: looked up as kc_p11_token does, which initialises the
     * module again when SoftHSM listed a vault being rewritten as a free
     * token (reload_module); a pass over the slots for a token missing */
    if (a.matches == 0)
        return kc_p11_token(p, name_or_uri, out, err);
    r = one_match(p, name_or_uri, 0, &a, toks, n, err);
    if (r != KC_OK)
        return r;
    return kc_p11_token_listed(p, &toks[first], out, err);
}

kc_rc kc_p11_token_if_any(kc_p11 *p, const char *name_or_uri, kc_tok **out, kc_error *err)
{
    struct find_arg a;
    kc_rc r;

    *out = NULL;
    r = find_token(p, name_or_uri, NULL, 0, 0, &a, err);
    if (r != KC_OK)
        return r;
    return cache_token(p, &a, out, err);
}

kc_rc kc_p11_free_token(kc_p11 *p, const char *uri, kc_tok **out, kc_error *err)
{
    return kc_p11_free_token_for(p, NULL, uri, out, err);
}

kc_rc kc_p11_free_token_for(kc_p11 *p, const char *vault, const char *uri, kc_tok **out,
                            kc_error *err)
{
    struct find_arg a;
    kc_rc r;

    *out = NULL;
    if (uri != NULL && !kc_p11_is_uri(uri))
        return kc_error_set(err, KC_USAGE, "'%s' is not a pkcs11: URI", uri);
    r = find_token(p, uri, vault, 1, 0, &a, err);
    if (r != KC_OK)
        return r;
    return cache_token(p, &a, out, err);
}

const kc_tok_info *kc_tok_info_get(const kc_tok *t)
{
    return &t->info;
}

kc_rc kc_tok_refresh(kc_tok *t, kc_error *err)
{
    CK_TOKEN_INFO info;
    char module[sizeof(t->info.module)];
    CK_RV rv;

    int tries = 0;

    do {
        memset(&info, 0, sizeof(info));
        rv = t->f->C_GetTokenInfo(t->slot, &info);
    } while (kc_p11_busy(rv, &tries));
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_GetTokenInfo", rv, "cannot read token '%s'", t->info.label);
    memcpy(module, t->info.module, sizeof(module));
    fill_info(&t->info, &info, module);
    return KC_OK;
}

kc_rc kc_tok_session(kc_tok *t, kc_error *err)
{
    CK_RV rv;

    if (t->has_session)
        return KC_OK;
    rv = t->f->C_OpenSession(t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &t->session);
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_OpenSession", rv, "cannot open a session on token '%s'",
                           t->info.label);
    t->has_session = 1;
    return KC_OK;
}

int kc_tok_is_logged_in(const kc_tok *t)
{
    return t->logged_in;
}

/* Explains the PIN-count flags the token set after a refused login. */
static void explain_pin_flags(kc_tok *t, kc_error *err)
{
    kc_error ignored;
    const kc_tok_info *ti = &t->info;

    if (kc_tok_refresh(t, &ignored) != KC_OK)
        return;
    if (ti->user_pin_locked)
        kc_error_hint(err, "the token reports the user PIN locked; its security officer must "
                           "set a new one");
    else if (ti->user_pin_final_try)
        kc_error_hint(err, "the token reports that one more wrong PIN locks the user PIN");
    else if (ti->user_pin_count_low)
        kc_error_hint(err, "the token reports that wrong PINs have been entered since the last "
                           "good login (CKF_USER_PIN_COUNT_LOW); check the PIN source");
    else
        kc_error_hint(err, "check the PIN source given for vault '%s'", ti->label);
}

kc_rc kc_tok_login(kc_tok *t, const kc_secret *pin, kc_error *err)
{
    int tries = 0, busy;
    CK_RV rv;
    kc_rc r;

    if (t->logged_in)
        return KC_OK;
    r = kc_tok_session(t, err);
    if (r != KC_OK)
        return r;
    /* as kc_p11_busy says; SoftHSM counts no failed logins (test_softhsm
     * facts), so asking again costs nothing. Under that load it also says
     * now and then that a token whose info shows a user PIN has none. */
    do {
        KC_TOK_CALL(t, rv, t->f->C_Login(t->session, CKU_USER, pin->data, pin->len));
        busy = rv == CKR_GENERAL_ERROR ||
               (rv == CKR_USER_PIN_NOT_INITIALIZED && t->info.user_pin_initialized);
    } while (kc_p11_busy(busy ? CKR_GENERAL_ERROR : rv, &tries));
    if (rv == CKR_USER_ALREADY_LOGGED_IN)
        rv = CKR_OK; /* another handle of this process holds the login */
    if (rv != CKR_OK) {
        r = kc_p11_fail(err, "C_Login", rv, "cannot log in to vault '%s'", t->info.label);
        if (busy) {
            /* the token said it has a user PIN when it was opened */
            err->code = r = KC_TOKEN;
            kc_error_hint(err, "the module failed while other processes wrote the token "
                               "(SoftHSM 2.6.1 does so under parallel writers): run the command "
                               "again");
            return r;
        }
        if (rv == CKR_PIN_INCORRECT)
            explain_pin_flags(t, err);
        if (rv == CKR_PIN_LOCKED)
            kc_error_hint(err,
                          "the user PIN of '%s' is locked; its security officer must set "
                          "a new one (C_InitPIN)",
                          t->info.label);
        if (rv == CKR_USER_PIN_NOT_INITIALIZED)
            kc_error_hint(err, "the token has no user PIN yet; run 'keycustody vault init %s'",
                          t->info.label);
        return r;
    }
    t->logged_in = 1;
    kc_secret_free(t->pin);
    t->pin = kc_secret_dup(pin->data, pin->len); /* for a lost session; NULL: no recovery */
    return KC_OK;
}

static void pad_label(unsigned char out[32], const char *label)
{
    size_t n = strlen(label);

    memset(out, ' ', 32);
    memcpy(out, label, n > 32 ? 32 : n);
}

/* The SO PIN a module's free tokens come with, where the module's own
 * documentation gives one: openCryptoki's (pkcsconf(1), "87654321"). */
const char *kc_p11_factory_so_pin(const kc_tok_info *ti)
{
    if (strncmp(ti->manufacturer, "IBM", 3) == 0 && strncmp(ti->model, "IBM SoftTok", 11) == 0)
        return "87654321";
    return NULL;
}

/* C_Login as SO with the factory PIN, C_SetPIN to so_pin, C_Logout. */
static kc_rc change_factory_so_pin(kc_tok *t, const char *factory, const kc_secret *so_pin,
                                   kc_error *err)
{
    CK_RV rv;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    rv = t->f->C_Login(t->session, CKU_SO, (CK_UTF8CHAR_PTR)factory, strlen(factory));
    if (rv == CKR_OK) {
        rv = t->f->C_SetPIN(t->session, (CK_UTF8CHAR_PTR)factory, strlen(factory), so_pin->data,
                            so_pin->len);
        if (rv != CKR_OK)
            r = kc_p11_fail(err, "C_SetPIN", rv, "cannot change the factory SO PIN of '%s'",
                            t->info.label);
        (void)t->f->C_Logout(t->session);
    } else {
        r = kc_p11_fail(err, "C_Login", rv, "cannot log in to '%s' as SO with its factory PIN",
                        t->info.label);
    }
    tok_close(t);
    if (r == KC_OK)
        r = kc_tok_refresh(t, err);
    if (r == KC_OK && t->info.so_pin_to_be_changed)
        r = kc_error_set(err, KC_TOKEN, "token '%s' still asks for its SO PIN to be changed",
                         t->info.label);
    return r;
}

/* The factory PIN must not become the PIN keycustody sets. */
static kc_rc not_factory(const char *factory, const kc_secret *so_pin, kc_error *err)
{
    if (factory != NULL && so_pin->len == strlen(factory) &&
        memcmp(so_pin->data, factory, so_pin->len) == 0)
        return kc_error_set(err, KC_USAGE,
                            "the new security-officer PIN is the module's factory PIN, which "
                            "everyone knows: choose another");
    return KC_OK;
}

kc_rc kc_tok_finish_so_pin(kc_tok *t, const kc_secret *so_pin, kc_error *err)
{
    const char *factory = kc_p11_factory_so_pin(&t->info);
    kc_rc r;

    if (!t->info.initialized || !t->info.so_pin_to_be_changed)
        return KC_OK;
    if (factory == NULL) {
        kc_error_set(err, KC_TOKEN,
                     "token '%s' asks for its SO PIN to be changed (CKF_SO_PIN_TO_BE_CHANGED), "
                     "and keycustody does not know this module's factory PIN",
                     t->info.label);
        kc_error_hint(err, "change it with the module's own tool, then run the command again");
        return KC_TOKEN;
    }
    r = not_factory(factory, so_pin, err);
    if (r == KC_OK)
        r = change_factory_so_pin(t, factory, so_pin, err);
    return r;
}

kc_rc kc_tok_init_token(kc_tok *t, const char *label, const kc_secret *so_pin, kc_error *err)
{
    const char *factory = t->info.so_pin_to_be_changed ? kc_p11_factory_so_pin(&t->info) : NULL;
    unsigned char lab[32];
    CK_RV rv;
    kc_rc r;

    if (t->info.initialized)
        return kc_error_set(err, KC_CONFLICT, "token '%s' is already initialised", t->info.label);
    if (so_pin->len < t->info.min_pin || so_pin->len > t->info.max_pin) {
        /* SoftHSM answers a short SO PIN with CKR_PIN_INCORRECT, which misleads. */
        kc_error_set(err, KC_USAGE,
                     "the new security-officer PIN has %zu characters; the token "
                     "takes %lu to %lu",
                     so_pin->len, t->info.min_pin, t->info.max_pin);
        return KC_USAGE;
    }
    r = not_factory(factory, so_pin, err);
    if (r != KC_OK)
        return r;
    pad_label(lab, label);
    rv = factory != NULL
             ? t->f->C_InitToken(t->slot, (CK_UTF8CHAR_PTR)factory, strlen(factory), lab)
             : t->f->C_InitToken(t->slot, so_pin->data, so_pin->len, lab);
    if (rv != CKR_OK) {
        r = kc_p11_fail(err, "C_InitToken", rv, "cannot initialise token as '%s'", label);
        if (rv == CKR_PIN_INCORRECT && t->info.so_pin_to_be_changed)
            kc_error_hint(err, "the token still has its factory SO PIN, which keycustody does "
                               "not know for this module: initialise it with the module's "
                               "own tool, then run 'vault init' to adopt it");
        return r;
    }
    /* SoftHSM keeps the slot id of a token it initialises for the life of the
     * process, so t->slot stays valid until the next C_Initialize. */
    r = kc_tok_refresh(t, err);
    /* C_InitToken is never run again on this token from here: its SO PIN
     * is about to be one the module's own tool cannot guess */
    if (r == KC_OK && factory != NULL)
        r = change_factory_so_pin(t, factory, so_pin, err);
    return r;
}

kc_rc kc_tok_init_pin(kc_tok *t, const kc_secret *so_pin, const kc_secret *user_pin, kc_error *err)
{
    const char *label = t->info.label;
    CK_RV rv;
    kc_rc r;

    if (user_pin->len < t->info.min_pin || user_pin->len > t->info.max_pin) {
        kc_error_set(err, KC_USAGE,
                     "the new user PIN has %zu characters; the token takes %lu "
                     "to %lu",
                     user_pin->len, t->info.min_pin, t->info.max_pin);
        return KC_USAGE;
    }
    r = kc_tok_session(t, err);
    if (r != KC_OK)
        return r;
    rv = t->f->C_Login(t->session, CKU_SO, so_pin->data, so_pin->len);
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_Login", rv, "cannot log in to '%s' as security officer", label);
    rv = t->f->C_InitPIN(t->session, user_pin->data, user_pin->len);
    if (rv != CKR_OK) {
        r = kc_p11_fail(err, "C_InitPIN", rv, "cannot set the user PIN of '%s'", label);
        (void)t->f->C_Logout(t->session);
        return r;
    }
    rv = t->f->C_Logout(t->session);
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_Logout", rv, "cannot log the security officer out of '%s'",
                           label);
    r = kc_tok_refresh(t, err);
    if (r != KC_OK)
        return r;
    return kc_tok_login(t, user_pin, err);
}

kc_rc kc_tok_login_so(kc_tok *t, const kc_secret *so_pin, kc_error *err)
{
    CK_RV rv;
    kc_rc r;

    /* The SO cannot log in while the user is: close our session, which
     * logs the user out, and open a new one. */
    tok_close(t);
    r = kc_tok_session(t, err);
    if (r != KC_OK)
        return r;
    rv = t->f->C_Login(t->session, CKU_SO, so_pin->data, so_pin->len);
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_Login", rv, "cannot log in to '%s' as security officer",
                           t->info.label);
    return KC_OK;
}

void kc_tok_logout(kc_tok *t)
{
    tok_close(t);
}

kc_rc kc_tok_random(kc_tok *t, unsigned char *buf, size_t count, kc_error *err)
{
    CK_RV rv;
    kc_rc r = kc_tok_session(t, err);

    if (r != KC_OK)
        return r;
    KC_TOK_CALL(t, rv, t->f->C_GenerateRandom(t->session, buf, count));
    if (rv != CKR_OK)
        return kc_p11_fail(err, "C_GenerateRandom", rv, "cannot draw random bytes from '%s'",
                           t->info.label);
    return KC_OK;
}

kc_rc kc_p11_object_uri(const kc_tok_info *ti, const char *label, const unsigned char *id,
                        size_t id_len, char *out, size_t len, kc_error *err)
{
    CK_ATTRIBUTE a;
    CK_TOKEN_INFO *tinfo;
    P11KitUri *uri = NULL;
    char *s = NULL;
    kc_rc r = KC_ERR;

    uri = p11_kit_uri_new();
    if (uri == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    tinfo = p11_kit_uri_get_token_info(uri);
    /* Blank-padded fields, as the token reports them. */
    memset(tinfo->label, ' ', sizeof(tinfo->label));
    memcpy(tinfo->label, ti->label, strlen(ti->label));
    memset(tinfo->manufacturerID, ' ', sizeof(tinfo->manufacturerID));
    memcpy(tinfo->manufacturerID, ti->manufacturer, strlen(ti->manufacturer));
    memset(tinfo->model, ' ', sizeof(tinfo->model));
    memcpy(tinfo->model, ti->model, strlen(ti->model));
    memset(tinfo->serialNumber, ' ', sizeof(tinfo->serialNumber));
    memcpy(tinfo->serialNumber, ti->serial, strlen(ti->serial));
    a.type = CKA_LABEL;
    a.pValue = (void *)label;
    a.ulValueLen = strlen(label);
    p11_kit_uri_set_attribute(uri, &a);
    a.type = CKA_ID;
    a.pValue = (void *)id;
    a.ulValueLen = id_len;
    if (id_len > 0)
        p11_kit_uri_set_attribute(uri, &a);
    if (p11_kit_uri_format(uri, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, &s) != P11_KIT_URI_OK ||
        s == NULL) {
        r = kc_error_set(err, KC_ERR, "cannot format the URI of '%s'", label);
        goto cleanup;
    }
    if (strlen(s) >= len) {
        r = kc_error_set(err, KC_ERR, "the URI of '%s' is too long", label);
        goto cleanup;
    }
    memcpy(out, s, strlen(s) + 1);
    r = KC_OK;
cleanup:
    free(s);
    p11_kit_uri_free(uri);
    return r;
}

kc_rc kc_p11_uri_object(const char *s, char *label, size_t label_cap, unsigned char *id,
                        size_t id_cap, size_t *id_len, kc_error *err)
{
    P11KitUri *uri = NULL;
    CK_ATTRIBUTE *a;
    kc_rc r;

    label[0] = '\0';
    *id_len = 0;
    r = parse_token_uri(s, &uri, err);
    if (r != KC_OK)
        return r;
    a = p11_kit_uri_get_attribute(uri, CKA_LABEL);
    if (a != NULL) {
        if (a->ulValueLen >= label_cap) {
            p11_kit_uri_free(uri);
            return kc_error_set(err, KC_USAGE, "the object name in the URI is too long");
        }
        memcpy(label, a->pValue, a->ulValueLen);
        label[a->ulValueLen] = '\0';
    }
    a = p11_kit_uri_get_attribute(uri, CKA_ID);
    if (a != NULL) {
        if (a->ulValueLen > id_cap) {
            p11_kit_uri_free(uri);
            return kc_error_set(err, KC_USAGE, "the id in the URI is too long");
        }
        memcpy(id, a->pValue, a->ulValueLen);
        *id_len = a->ulValueLen;
    }
    p11_kit_uri_free(uri);
    return KC_OK;
}
