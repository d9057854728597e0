/* libkeycustody: the public C interface.
 *
 * This is the whole of what the shared library exports (every symbol
 * begins with keycustody_; everything else is hidden). It reads what the
 * keycustody tool keeps on PKCS#11 tokens: which tokens are vaults, a
 * vault's keys and their versions, a version's public key. It never changes
 * a token, and never uses a private key: operations that change vaults or
 * use keys are carried out by the keycustody command, which writes and
 * seals the audit log for each of them.
 *
 * Conventions, for every function below:
 *   - The return value is 0 on success, else one of the KEYCUSTODY_E_*
 *     codes (the keycustody command's exit codes, keycustody(1)).
 *   - On failure, keycustody_errmsg() and keycustody_errhint() say what
 *     failed and what to do, until the next call on the same handle.
 *   - Strings passed to callbacks are valid during the callback only.
 *   - A callback that returns non-zero stops the walk; the function then
 *     returns that value.
 *   - A handle is used by one thread at a time; distinct handles are
 *     independent, except that a PKCS#11 module is initialised once per
 *     process.
 *   - PINs are named by source (env:NAME or file:PATH, the file mode 0600
 *     and owned by the caller), never passed as values: the library reads
 *     one when a login needs it, uses it for that C_Login and wipes it.
 *
 * Compile and link with: pkg-config --cflags --libs keycustody
 */
#ifndef KEYCUSTODY_H
#define KEYCUSTODY_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define KEYCUSTODY_API __attribute__((visibility("default")))
#else
#define KEYCUSTODY_API
#endif

/* The library's version, as "MAJOR.MINOR.PATCH"; the same as the
 * keycustody command's --version. Never NULL. */
KEYCUSTODY_API const char *keycustody_version(void);

/* Return codes (equal to the keycustody command's exit codes). */
enum {
    KEYCUSTODY_OK = 0,
    KEYCUSTODY_E_ERROR = 1,     /* any other error (out of memory, I/O) */
    KEYCUSTODY_E_USAGE = 2,     /* a bad argument, or no PIN source for a vault */
    KEYCUSTODY_E_NOT_FOUND = 4, /* no such vault, key or version */
    KEYCUSTODY_E_DENIED = 6,    /* login refused, PIN locked, the access policy */
    KEYCUSTODY_E_TOKEN = 7,     /* the token or module failed */
    KEYCUSTODY_E_INTEGRITY = 8  /* a vault's metadata or key state does not check */
};

/* What keycustody_open needs. Zero-initialise it, set size, then fill in
 * what you need; every other field may be left NULL/0. Fields are only ever
 * added at the end, and size says which ones a caller knows of. */
typedef struct keycustody_config {
    size_t size; /* sizeof(keycustody_config), as the caller was compiled */
    /* PKCS#11 modules: library paths, p11-kit module names or p11-kit module
     * files (FILE.module), as the command's --module takes them (not its
     * VAULT=MODULE form). nmodules 0: every module registered with p11-kit.
     * At most 8. */
    const char *const *modules;
    size_t nmodules;
    /* User PIN sources, as --pin-source takes them: "VAULT=env:NAME",
     * "VAULT=file:PATH", and at most one bare "env:NAME" / "file:PATH" for
     * any other vault. At most 16. A vault with no source cannot be logged
     * in to (KEYCUSTODY_E_USAGE naming it). */
    const char *const *pin_sources;
    size_t npin_sources;
    /* Who acts, checked against each vault's access policy (as --as);
     * NULL: no principal (a vault with an access policy refuses). */
    const char *principal;
} keycustody_config;

typedef struct keycustody keycustody;

/* Loads the modules cfg names. out must not be NULL (else
 * KEYCUSTODY_E_USAGE). Always sets *out unless memory runs out (then *out
 * is NULL and the return KEYCUSTODY_E_ERROR): on failure the handle carries
 * the error; in both cases close it with keycustody_close. A cfg whose size
 * is 0 or larger than this library's keycustody_config is refused. */
KEYCUSTODY_API int keycustody_open(const keycustody_config *cfg, keycustody **out);

/* Unloads the modules (each session logged out) and frees the handle.
 * NULL is allowed. */
KEYCUSTODY_API void keycustody_close(keycustody *kc);

/* The last failure on kc: its message ("cannot x 'a': cannot y (CKR_...)")
 * and what to do about it ("" when there is no advice). "" after success;
 * never NULL (for a NULL kc: "out of memory"). */
KEYCUSTODY_API const char *keycustody_errmsg(const keycustody *kc);
KEYCUSTODY_API const char *keycustody_errhint(const keycustody *kc);

/* A token as keycustody_vault_foreach shows it. */
typedef struct keycustody_vault_info {
    const char *token_label;  /* CKA label of the token */
    const char *token_uri;    /* RFC 7512 URI of the token */
    int is_vault;             /* 1: it carries valid vault metadata; else the rest is "" */
    const char *name;         /* the vault's name */
    const char *subscription; /* its subscription id */
    const char *region;       /* its region */
    const char *fingerprint;  /* SHA-256 of its vault key, 64 hex digits */
} keycustody_vault_info;

typedef int (*keycustody_vault_fn)(void *arg, const keycustody_vault_info *v);

/* Calls fn for every visible token, in slot order, vaults or not. Needs no
 * PIN: a vault's metadata is public and signed by its vault key, and is
 * checked before it is shown. */
KEYCUSTODY_API int keycustody_vault_foreach(keycustody *kc, keycustody_vault_fn fn, void *arg);

/* A key version as keycustody_key_foreach shows it. */
typedef struct keycustody_key_info {
    const char *vault;   /* the vault */
    const char *name;    /* the key's name */
    const char *version; /* this version: 32 hex digits */
    const char *uri;     /* its key id: RFC 7512 URI of the key pair */
    unsigned bits;       /* RSA modulus size */
    const char *ops;     /* the operations it allows: "wrapKey,unwrapKey" */
    int enabled;
    int current;         /* 1 for the key's current version */
    const char *created; /* RFC 3339 or YYYY-MM-DD; "" when unknown */
    const char *expires; /* YYYY-MM-DD; "" for never */
} keycustody_key_info;

typedef int (*keycustody_key_fn)(void *arg, const keycustody_key_info *k);

/* Calls fn for each version of each active (not deleted) key of vault,
 * oldest version first. Logs in with the vault's PIN source; the access
 * policy must give the principal the list permission. */
KEYCUSTODY_API int keycustody_key_foreach(keycustody *kc, const char *vault, keycustody_key_fn fn,
                                          void *arg);

/* The public key of VAULT/KEY (its current version) or VAULT/KEY/VERSION as
 * PEM (SubjectPublicKeyInfo), NUL-terminated, in *pem (free it with
 * keycustody_free). Needs no PIN (public key objects, the vault's metadata
 * checked against its vault key); the access policy must give the
 * principal the get permission. A deleted key is KEYCUSTODY_E_NOT_FOUND. */
KEYCUSTODY_API int keycustody_public_key(keycustody *kc, const char *ref, char **pem);

/* Frees what the library returned. NULL is allowed. */
KEYCUSTODY_API void keycustody_free(void *p);

#ifdef __cplusplus
}
#endif

#endif
