#include "kc_planfile.h"
#include "kc_util.h"

#include <jansson.h>
#include <openssl/evp.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;

    EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
    kc_hex_encode(md, 32, out);
}

int kc_planfile_is(const unsigned char *buf, size_t len)
{
    static const char marker[] = "\"format\": \"" KC_PLANFILE_FORMAT "\"";
    size_t i = 0;

    while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r'))
        i++;
    if (i == len || buf[i] != '{')
        return 0;
    for (i++; i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r'); i++)
        ;
    return len - i >= sizeof(marker) - 1 && memcmp(buf + i, marker, sizeof(marker) - 1) == 0;
}

kc_rc kc_planfile_read(const char *path, unsigned char **buf, size_t *len, int *is_plan,
                       kc_error *err)
{
    struct stat st, lst;
    kc_rc r;

    *is_plan = 0;
    r = kc_file_read(path, KC_PLANFILE_MAX, buf, len, err);
    if (r != KC_OK || !kc_planfile_is(*buf, *len))
        return r;
    *is_plan = 1;
    /* what apply carries out without asking: only from a file nobody else
     * could have written (as the service store and PIN files) */
    if (lstat(path, &lst) != 0 || stat(path, &st) != 0)
        r = kc_error_set(err, KC_ERR, "cannot stat saved plan '%s': %s", path, strerror(errno));
    else if (S_ISLNK(lst.st_mode)) {
        r = kc_error_set(err, KC_DENIED, "saved plan '%s' is a symbolic link", path);
        kc_error_hint(err, "name the plan file itself, not a link to it");
    } else if (st.st_uid != geteuid()) {
        r = kc_error_set(err, KC_DENIED, "saved plan '%s' is owned by uid %u, not by you (uid %u)",
                         path, (unsigned)st.st_uid, (unsigned)geteuid());
        kc_error_hint(err, "apply only a plan you hold; copy it and check it was not changed");
    } else if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
        r = kc_error_set(err, KC_DENIED,
                         "saved plan '%s' has mode %04o: others can write it, so it is not "
                         "believed",
                         path, (unsigned)(st.st_mode & 07777));
        kc_error_hint(err, "check it was not changed (policy plan shows it), then: chmod 600 '%s'",
                      path);
    }
    if (r != KC_OK) {
        free(*buf);
        *buf = NULL;
        *len = 0;
    }
    return r;
}

kc_rc kc_planfile_encode(const kc_plan *p, const char *layout_path, const unsigned char *layout,
                         size_t layout_len, int allow_delete, const char *store, char **out,
                         kc_error *err)
{
    json_t *doc = NULL, *vaults = NULL, *text = NULL;
    char sha[65], now[21];
    time_t t;
    size_t i;
    kc_rc r;

    *out = NULL;
    r = kc_clock_now(&t, err);
    if (r != KC_OK)
        return r;
    kc_time_format_rfc3339(t, now);
    sha256_hex(layout, layout_len, sha);
    text = json_stringn((const char *)layout, layout_len);
    if (text == NULL) {
        kc_error_set(err, KC_LAYOUT, "layout '%s' is not UTF-8 text; it cannot be saved in a plan",
                     layout_path);
        kc_error_hint(err, "save the layout as UTF-8");
        return KC_LAYOUT;
    }
    vaults = json_array();
    for (i = 0; vaults != NULL && i < p->nseen; i++)
        json_array_append_new(vaults, json_pack("{s:s, s:s}", "vault", p->seen[i].vault, "digest",
                                                p->seen[i].digest));
    /* the marker first: kc_planfile_is tells a plan by it */
    doc = json_pack("{s:s, s:i, s:s, s:{s:s, s:s, s:o}, s:b, s:{s:o, s:o}, s:o}", "format",
                    KC_PLANFILE_FORMAT, "version", KC_PLANFILE_VERSION, "created", now, "layout",
                    "path", layout_path, "sha256", sha, "text", text, "allow_delete", allow_delete,
                    "observed", "vaults", vaults, "store",
                    p->store_read && store != NULL
                        ? json_pack("{s:s, s:s}", "path", store, "digest", p->store_digest)
                        : json_null(),
                    "plan", kc_plan_json(p));
    if (doc != NULL)
        *out = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(doc);
    if (*out == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    return KC_OK;
}

void kc_planfile_free(kc_planfile *f)
{
    if (f == NULL)
        return;
    free(f->layout);
    free(f->seen);
    json_decref(f->plan);
    free(f);
}

static kc_rc damaged(kc_error *err, const char *path, const char *why)
{
    kc_error_set(err, KC_LAYOUT, "saved plan '%s' cannot be used: %s", path, why);
    kc_error_hint(err, "make the plan again: keycustody policy plan LAYOUT --out PLAN");
    return KC_LAYOUT;
}

/* A 64-digit lower-case hex digest. */
static int is_digest(const char *s)
{
    size_t i;

    for (i = 0; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return i == 64;
}

kc_rc kc_planfile_decode(const char *path, const unsigned char *buf, size_t len, kc_planfile **out,
                         kc_error *err)
{
    const char *format = NULL, *created = NULL, *lpath = NULL, *lsha = NULL, *ltext = NULL;
    json_t *doc, *vaults = NULL, *store = NULL, *plan = NULL, *v;
    json_int_t version = 0;
    kc_planfile *f = NULL;
    json_error_t je;
    char why[400], sha[65];
    size_t i, ltext_len = 0;
    int allow_delete = 0;
    kc_rc r = KC_OK;

    *out = NULL;
    doc = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, &je);
    if (doc == NULL) {
        snprintf(why, sizeof(why), "it is damaged or truncated (%s, line %d, column %d)", je.text,
                 je.line, je.column);
        return damaged(err, path, why);
    }
    if (json_unpack_ex(doc, &je, 0, "{s:s, s:I}", "format", &format, "version", &version) != 0 ||
        strcmp(format, KC_PLANFILE_FORMAT) != 0) {
        r = damaged(err, path, "it has no format marker and version");
        goto done;
    }
    if (version != KC_PLANFILE_VERSION) {
        snprintf(why, sizeof(why), "it is format version %lld; this keycustody reads version %d",
                 (long long)version, KC_PLANFILE_VERSION);
        r = damaged(err, path, why);
        goto done;
    }
    if (json_unpack_ex(doc, &je, JSON_STRICT,
                       "{s:s, s:I, s:s, s:{s:s, s:s, s:s%}, s:b, s:{s:o, s:o}, s:o}", "format",
                       &format, "version", &version, "created", &created, "layout", "path", &lpath,
                       "sha256", &lsha, "text", &ltext, &ltext_len, "allow_delete", &allow_delete,
                       "observed", "vaults", &vaults, "store", &store, "plan", &plan) != 0 ||
        !json_is_array(vaults) || !json_is_object(plan) ||
        !json_is_array(json_object_get(plan, "actions")) || !is_digest(lsha)) {
        snprintf(why, sizeof(why), "it is not a complete plan (%s)",
                 je.text[0] ? je.text : "a field has the wrong type");
        r = damaged(err, path, why);
        goto done;
    }
    sha256_hex(ltext, ltext_len, sha);
    if (strcmp(sha, lsha) != 0) {
        r = damaged(err, path, "the layout it holds does not match its SHA-256 (it was changed)");
        goto done;
    }
    f = calloc(1, sizeof(*f));
    if (f == NULL || (f->layout = malloc(ltext_len + 1)) == NULL ||
        (f->seen = calloc(json_array_size(vaults) + 1, sizeof(*f->seen))) == NULL) {
        r = kc_error_set(err, KC_ERR, "out of memory");
        goto done;
    }
    memcpy(f->layout, ltext, ltext_len);
    f->layout[ltext_len] = '\0';
    f->layout_len = ltext_len;
    snprintf(f->layout_path, sizeof(f->layout_path), "%s", lpath);
    snprintf(f->layout_sha256, sizeof(f->layout_sha256), "%s", lsha);
    snprintf(f->created, sizeof(f->created), "%s", created);
    f->allow_delete = allow_delete;
    json_array_foreach(vaults, i, v)
    {
        const char *name = NULL, *digest = NULL;

        if (json_unpack(v, "{s:s, s:s}", "vault", &name, "digest", &digest) != 0 ||
            !is_digest(digest)) {
            r = damaged(err, path, "an entry of observed.vaults is not a vault and its digest");
            goto done;
        }
        snprintf(f->seen[f->nseen].vault, sizeof(f->seen[0].vault), "%s", name);
        snprintf(f->seen[f->nseen++].digest, sizeof(f->seen[0].digest), "%s", digest);
    }
    if (!json_is_null(store)) {
        const char *spath = NULL, *digest = NULL;

        if (json_unpack(store, "{s:s, s:s}", "path", &spath, "digest", &digest) != 0 ||
            !is_digest(digest)) {
            r = damaged(err, path, "observed.store is not a path and its digest");
            goto done;
        }
        f->store_read = 1;
        snprintf(f->store, sizeof(f->store), "%s", spath);
        snprintf(f->store_digest, sizeof(f->store_digest), "%s", digest);
    }
    f->plan = json_incref(plan);
    *out = f;
    f = NULL;
done:
    kc_planfile_free(f);
    json_decref(doc);
    return r;
}

/* Appends "; "-separated text to buf. */
static void say(char *buf, size_t cap, const char *fmt, ...) KC_PRINTF(3, 4);
static void say(char *buf, size_t cap, const char *fmt, ...)
{
    size_t off = strlen(buf);
    va_list ap;

    if (off > 0 && off + 2 < cap) {
        memcpy(buf + off, "; ", 3);
        off += 2;
    }
    if (off >= cap)
        return;
    va_start(ap, fmt);
    vsnprintf(buf + off, cap - off, fmt, ap);
    va_end(ap);
}

static const char *what_of(json_t *action)
{
    const char *s = json_string_value(json_object_get(action, "what"));

    return s ? s : "?";
}

kc_rc kc_planfile_compare(const kc_planfile *f, const kc_plan *now, const char *store,
                          kc_error *err)
{
    json_t *mine = kc_plan_json(now), *saved_acts, *now_acts;
    char changed[900] = "";
    size_t i, j, n, ndiff = 0;

    if (mine == NULL)
        return kc_error_set(err, KC_ERR, "out of memory");
    for (i = 0; i < f->nseen; i++) {
        for (j = 0; j < now->nseen && strcmp(now->seen[j].vault, f->seen[i].vault) != 0; j++)
            ;
        if (j == now->nseen || strcmp(now->seen[j].digest, f->seen[i].digest) != 0)
            say(changed, sizeof(changed), "vault %s changed", f->seen[i].vault);
    }
    if (f->nseen != now->nseen)
        say(changed, sizeof(changed), "the layout's vaults are not the ones planned");
    if (f->store_read != now->store_read)
        say(changed, sizeof(changed), "the service store %s",
            f->store_read ? "is no longer read" : "is read now, and was not when planned");
    else if (f->store_read && store != NULL && strcmp(f->store, store) != 0)
        say(changed, sizeof(changed),
            "the plan was made against service store '%s', this apply uses '%s'", f->store, store);
    else if (f->store_read && strcmp(f->store_digest, now->store_digest) != 0)
        say(changed, sizeof(changed), "the service store '%s' changed", f->store);
    saved_acts = json_object_get(f->plan, "actions");
    now_acts = json_object_get(mine, "actions");
    n = json_array_size(saved_acts) > json_array_size(now_acts) ? json_array_size(saved_acts)
                                                                : json_array_size(now_acts);
    for (i = 0; i < n; i++) {
        json_t *a = json_array_get(saved_acts, i), *b = json_array_get(now_acts, i);

        if (a != NULL && b != NULL && json_equal(a, b))
            continue;
        if (ndiff++ > 0)
            continue;
        if (a == NULL)
            say(changed, sizeof(changed), "the plan made now also has '%s'", what_of(b));
        else if (b == NULL)
            say(changed, sizeof(changed), "the plan made now no longer has '%s'", what_of(a));
        else
            say(changed, sizeof(changed),
                "the saved plan has '%s' where the plan made now has '%s'", what_of(a), what_of(b));
    }
    json_decref(mine);
    if (changed[0] == '\0')
        return KC_OK;
    kc_error_set(err, KC_CONFLICT,
                 "the saved plan (made %s) is stale: %s; %zu of its %zu action%s differ%s now; "
                 "nothing was applied",
                 f->created, changed, ndiff, json_array_size(saved_acts),
                 json_array_size(saved_acts) == 1 ? "" : "s", ndiff == 1 ? "s" : "");
    kc_error_hint(err, "make a new plan (keycustody policy plan LAYOUT --out PLAN), review it, "
                       "and apply that");
    return KC_CONFLICT;
}
