/* policy graph: the layout as a DOT digraph, the rules it breaks drawn on
 * the elements they are about (contract in kc_graph.h). */
#include "kc_graph.h"
#include "kc_util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define NONE ((size_t)-1)
#define MARK_LISTED 8 /* diagnostics an element's tooltip lists; more are counted */

/* The diagnostics drawn on one element. */
typedef struct mark {
    size_t n, errors;
    size_t diag[MARK_LISTED]; /* indices into the diagnostics */
} mark;

/* What a source position of the layout belongs to. */
typedef enum place_kind {
    P_SUB,     /* a: subscription */
    P_VAULT,   /* a: vault (its fields and its access entries) */
    P_KEY,     /* a: vault, b: key */
    P_DEP,     /* a: DEP */
    P_DEPKEY,  /* a: DEP, b: 0 or 1, the key reference */
    P_SERVICE, /* service_vault: */
    P_ASSIGN,  /* a: assignment (tenant, then mailboxes, then geos) */
} place_kind;

typedef struct place {
    int line, col;
    place_kind kind;
    size_t a, b;
} place;

/* The vaults of one subscription in one region. */
typedef struct rcluster {
    size_t sub; /* subscription cluster */
    const char *region;
} rcluster;

typedef struct graph {
    const kc_layout *l;
    const kc_diags *d;
    /* subscription clusters: the declared ones, then ids vaults name that
     * are not declared */
    const char **sub_ids;
    size_t nsubc;
    rcluster *rc;
    size_t nrc;
    size_t *vault_sub, *vault_rc, *key_base;
    size_t nkeys;
    size_t (*pairs)[2]; /* region clusters whose regions are an Azure pair */
    size_t npairs;
    size_t nassign;
    size_t service; /* the service vault's index; NONE when none is declared */
    /* marks: subscription clusters, vaults, keys, DEPs (each: itself, its
     * two key edges), assignments, the missing service vault, pair edges */
    mark *m;
    size_t base_vault, base_key, base_dep, base_assign, base_service, base_pair, nm;
    size_t *unplaced; /* diagnostics that point at nothing drawn */
    size_t nunplaced;
    place *places;
    size_t nplaces, cap_places;
} graph;

/* --- escaping --- */

/* Writes s as the inside of a DOT quoted string that shows s as written:
 * a quote or backslash escaped (no \N, \G, \l of Graphviz's own), '&' as
 * an entity (Graphviz would read "&lt;" in a name as '<'), a control
 * character and a byte that is not UTF-8 as the text \xHH. */
static void esc(FILE *f, const char *s)
{
    char clean[4096];
    const unsigned char *p;

    snprintf(clean, sizeof(clean), "%s", s);
    kc_utf8_clean(clean, sizeof(clean));
    for (p = (const unsigned char *)clean; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\') {
            fputc('\\', f);
            fputc(*p, f);
        } else if (*p == '&') {
            fputs("&amp;", f);
        } else if (*p < 0x20 || *p == 0x7f) {
            fprintf(f, "\\\\x%02x", *p);
        } else {
            fputc(*p, f);
        }
    }
}

static void escf(FILE *f, const char *fmt, ...) KC_PRINTF(2, 3);
static void escf(FILE *f, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    esc(f, buf);
}

/* A line break inside a label or tooltip. */
static void br(FILE *f)
{
    fputs("\\n", f);
}

/* --- the model --- */

static size_t vault_named(const kc_layout *l, const char *name)
{
    size_t i;

    for (i = 0; i < l->nvaults; i++)
        if (strcmp(l->vaults[i].name, name) == 0)
            return i;
    return NONE;
}

static size_t dep_named(const kc_layout *l, const char *name)
{
    size_t i;

    for (i = 0; i < l->ndeps; i++)
        if (strcmp(l->deps[i].name, name) == 0)
            return i;
    return NONE;
}

/* VAULT/KEY -> the vault's index (NONE when there is none) and the key's. */
static size_t key_ref(const kc_layout *l, const char *ref, size_t *key)
{
    char vname[sizeof(l->vaults[0].name)];
    const char *slash = strchr(ref, '/');
    size_t v, j;

    *key = NONE;
    if (slash == NULL || (size_t)(slash - ref) >= sizeof(vname))
        return NONE;
    memcpy(vname, ref, (size_t)(slash - ref));
    vname[slash - ref] = '\0';
    v = vault_named(l, vname);
    for (j = 0; v != NONE && j < l->vaults[v].nkeys; j++)
        if (strcmp(l->vaults[v].keys[j].name, slash + 1) == 0) {
            *key = j;
            break;
        }
    return v;
}

/* The i-th assignment and its scope (tenant, mailbox:ID, geo:CODE). */
static const kc_lassign *assignment(const kc_layout *l, size_t i, char *scope, size_t cap)
{
    if (l->tenant.dep[0] != '\0') {
        if (i == 0) {
            snprintf(scope, cap, "tenant");
            return &l->tenant;
        }
        i--;
    }
    if (i < l->nmailboxes) {
        snprintf(scope, cap, "mailbox:%s", l->mailboxes[i].target);
        return &l->mailboxes[i];
    }
    i -= l->nmailboxes;
    snprintf(scope, cap, "geo:%s", l->geos[i].target);
    return &l->geos[i];
}

static int add_place(graph *g, kc_lpos p, place_kind kind, size_t a, size_t b)
{
    place *nv;

    if (p.line <= 0) /* a field the layout leaves out */
        return 0;
    if (g->nplaces == g->cap_places) {
        nv = realloc(g->places, (g->cap_places * 2 + 64) * sizeof(*nv));
        if (nv == NULL)
            return -1;
        g->places = nv;
        g->cap_places = g->cap_places * 2 + 64;
    }
    g->places[g->nplaces++] = (place){p.line, p.col, kind, a, b};
    return 0;
}

/* Every source position the reader recorded, with the element it is of. */
static int index_places(graph *g)
{
    const kc_layout *l = g->l;
    size_t i, j;
    int r = 0;

    for (i = 0; i < l->nsubs; i++)
        r |= add_place(g, l->subs[i].pos, P_SUB, i, 0);
    for (i = 0; i < l->nvaults; i++) {
        const kc_lvault *v = &l->vaults[i];
        const kc_lpos own[] = {
            v->pos,           v->name_pos,        v->subscription_pos, v->region_pos,
            v->sku_pos,       v->fingerprint_pos, v->pin_pos,          v->so_pin_pos,
            v->retention_pos, v->soft_delete_pos, v->purge_pos,        v->access_pos};
        for (j = 0; j < sizeof(own) / sizeof(own[0]); j++)
            r |= add_place(g, own[j], P_VAULT, i, 0);
        /* access entries are drawn as their vault */
        for (j = 0; j < v->naccess; j++) {
            r |= add_place(g, v->access[j].pos, P_VAULT, i, 0);
            r |= add_place(g, v->access[j].perms_pos, P_VAULT, i, 0);
        }
        for (j = 0; j < v->nkeys; j++) {
            const kc_lkey *k = &v->keys[j];
            const kc_lpos kown[] = {k->pos,     k->kty_pos,    k->size_pos, k->protection_pos,
                                    k->ops_pos, k->expires_pos};
            size_t n;
            for (n = 0; n < sizeof(kown) / sizeof(kown[0]); n++)
                r |= add_place(g, kown[n], P_KEY, i, j);
        }
    }
    for (i = 0; i < l->ndeps; i++) {
        const kc_ldep *dp = &l->deps[i];
        const kc_lpos own[] = {dp->pos, dp->workload_pos, dp->geo_pos, dp->keys_pos,
                               dp->waiver_pos};
        for (j = 0; j < sizeof(own) / sizeof(own[0]); j++)
            r |= add_place(g, own[j], P_DEP, i, 0);
        for (j = 0; j < dp->nkeys && j < 2; j++)
            r |= add_place(g, dp->key_pos[j], P_DEPKEY, i, j);
    }
    r |= add_place(g, l->service_vault_pos, P_SERVICE, 0, 0);
    for (i = 0; i < g->nassign; i++) {
        char scope[300];
        const kc_lassign *a = assignment(l, i, scope, sizeof(scope));
        r |= add_place(g, a->pos, P_ASSIGN, i, 0);
        r |= add_place(g, a->dep_pos, P_ASSIGN, i, 0);
    }
    return r;
}

static size_t pair_of(const graph *g, size_t a, size_t b)
{
    size_t i;

    for (i = 0; i < g->npairs; i++)
        if ((g->pairs[i][0] == a && g->pairs[i][1] == b) ||
            (g->pairs[i][0] == b && g->pairs[i][1] == a))
            return i;
    return NONE;
}

static void mark_add(graph *g, size_t m, size_t k)
{
    mark *x = &g->m[m];
    size_t i;

    for (i = 0; i < x->n && i < MARK_LISTED; i++)
        if (x->diag[i] == k)
            return; /* one element reached twice by one diagnostic */
    if (x->n < MARK_LISTED)
        x->diag[x->n] = k;
    x->n++;
    if (g->d->v[k].severity == KC_SEV_ERROR)
        x->errors++;
}

/* The rules about a DEP's pair of vaults, reported at its second key. */
static int is_pair_rule(const char *rule)
{
    return strcmp(rule, "KC011") == 0 || strcmp(rule, "KC012") == 0 || strcmp(rule, "KC013") == 0;
}

/* Puts diagnostic k on the element its position belongs to. */
static void place_diag(graph *g, size_t k)
{
    const kc_diag *x = &g->d->v[k];
    const place *p = NULL;
    size_t i, key, v0, v1, pr;

    for (i = 0; i < g->nplaces && x->line > 0; i++)
        if (g->places[i].line == x->line && g->places[i].col == x->col) {
            p = &g->places[i];
            break;
        }
    if (p == NULL) {
        g->unplaced[g->nunplaced++] = k;
        return;
    }
    switch (p->kind) {
    case P_SUB:
        mark_add(g, p->a, k);
        break;
    case P_VAULT:
        mark_add(g, g->base_vault + p->a, k);
        break;
    case P_KEY:
        mark_add(g, g->base_key + g->key_base[p->a] + p->b, k);
        break;
    case P_DEP:
        mark_add(g, g->base_dep + 3 * p->a, k);
        break;
    case P_DEPKEY:
        v0 = g->l->deps[p->a].nkeys >= 2 ? key_ref(g->l, g->l->deps[p->a].keys[0], &key) : NONE;
        v1 = g->l->deps[p->a].nkeys >= 2 ? key_ref(g->l, g->l->deps[p->a].keys[1], &key) : NONE;
        if (!is_pair_rule(x->rule) || v0 == NONE || v1 == NONE) {
            mark_add(g, g->base_dep + 3 * p->a + 1 + p->b, k);
            break;
        }
        mark_add(g, g->base_dep + 3 * p->a, k);
        mark_add(g, g->base_vault + v0, k);
        mark_add(g, g->base_vault + v1, k);
        pr = pair_of(g, g->vault_rc[v0], g->vault_rc[v1]);
        if (strcmp(x->rule, "KC012") == 0 && pr != NONE)
            mark_add(g, g->base_pair + pr, k);
        break;
    case P_SERVICE:
        mark_add(g, g->service != NONE ? g->base_vault + g->service : g->base_service, k);
        break;
    case P_ASSIGN:
        mark_add(g, g->base_assign + p->a, k);
        break;
    }
}

static void graph_release(graph *g)
{
    free(g->sub_ids);
    free(g->rc);
    free(g->vault_sub);
    free(g->vault_rc);
    free(g->key_base);
    free(g->pairs);
    free(g->m);
    free(g->unplaced);
    free(g->places);
    memset(g, 0, sizeof(*g));
}

static kc_rc graph_init(graph *g, const kc_layout *l, const kc_diags *d, kc_error *err)
{
    static const kc_diags none;
    size_t i, j, n;

    memset(g, 0, sizeof(*g));
    g->l = l;
    g->d = d != NULL ? d : &none;
    g->sub_ids = calloc(l->nsubs + l->nvaults + 1, sizeof(*g->sub_ids));
    g->rc = calloc(l->nvaults + 1, sizeof(*g->rc));
    g->vault_sub = calloc(l->nvaults + 1, sizeof(size_t));
    g->vault_rc = calloc(l->nvaults + 1, sizeof(size_t));
    g->key_base = calloc(l->nvaults + 1, sizeof(size_t));
    g->unplaced = calloc(g->d->n + 1, sizeof(size_t));
    if (g->sub_ids == NULL || g->rc == NULL || g->vault_sub == NULL || g->vault_rc == NULL ||
        g->key_base == NULL || g->unplaced == NULL)
        goto oom;
    for (i = 0; i < l->nsubs; i++)
        g->sub_ids[i] = l->subs[i].id;
    g->nsubc = l->nsubs;
    for (i = 0; i < l->nvaults; i++) {
        const kc_lvault *v = &l->vaults[i];
        for (j = 0; j < g->nsubc && strcmp(g->sub_ids[j], v->subscription) != 0; j++)
            ;
        if (j == g->nsubc)
            g->sub_ids[g->nsubc++] = v->subscription;
        g->vault_sub[i] = j;
        for (n = 0; n < g->nrc && (g->rc[n].sub != j || strcmp(g->rc[n].region, v->region) != 0);
             n++)
            ;
        if (n == g->nrc)
            g->rc[g->nrc++] = (rcluster){j, v->region};
        g->vault_rc[i] = n;
        g->key_base[i] = g->nkeys;
        g->nkeys += v->nkeys;
    }
    for (i = 0; i < g->nrc; i++)
        for (j = i + 1; j < g->nrc; j++) {
            size_t(*nv)[2];
            if (!kc_region_paired(g->rc[i].region, g->rc[j].region))
                continue;
            nv = realloc(g->pairs, (g->npairs + 1) * sizeof(*nv));
            if (nv == NULL)
                goto oom;
            g->pairs = nv;
            g->pairs[g->npairs][0] = i;
            g->pairs[g->npairs++][1] = j;
        }
    g->nassign = (l->tenant.dep[0] != '\0') + l->nmailboxes + l->ngeos;
    g->service = l->service_vault[0] != '\0' ? vault_named(l, l->service_vault) : NONE;
    g->base_vault = g->nsubc;
    g->base_key = g->base_vault + l->nvaults;
    g->base_dep = g->base_key + g->nkeys;
    g->base_assign = g->base_dep + 3 * l->ndeps;
    g->base_service = g->base_assign + g->nassign;
    g->base_pair = g->base_service + 1;
    g->nm = g->base_pair + g->npairs;
    g->m = calloc(g->nm, sizeof(*g->m));
    if (g->m == NULL || index_places(g) != 0)
        goto oom;
    for (i = 0; i < g->d->n; i++)
        place_diag(g, i);
    return KC_OK;
oom:
    graph_release(g);
    kc_error_set(err, KC_ERR, "cannot draw layout '%s': out of memory", l->file);
    return KC_ERR;
}

/* --- output --- */

/* The colour, tooltip (each diagnostic's severity, rule and message) and
 * pen of an element with diagnostics; sep goes before each attribute. */
static void mark_attrs(FILE *f, const graph *g, const mark *m, const char *sep)
{
    const char *colour;
    size_t i;

    if (m == NULL || m->n == 0)
        return;
    colour = m->errors > 0 ? "red" : "darkorange";
    fprintf(f, "%scolor=\"%s\"%sfontcolor=\"%s\"%spenwidth=2%stooltip=\"", sep, colour, sep, colour,
            sep, sep);
    for (i = 0; i < m->n && i < MARK_LISTED; i++) {
        const kc_diag *x = &g->d->v[m->diag[i]];
        if (i > 0)
            br(f);
        escf(f, "%s[%s]: %s", x->severity == KC_SEV_ERROR ? "error" : "warning", x->rule, x->msg);
    }
    if (m->n > MARK_LISTED) {
        br(f);
        escf(f, "and %zu more", m->n - MARK_LISTED);
    }
    fputc('"', f);
}

/* Inside a label: the rule ids of an element's diagnostics, "[KC012 KC013]". */
static void mark_rules(FILE *f, const graph *g, const mark *m, int newline)
{
    size_t i, j;

    if (m == NULL || m->n == 0)
        return;
    if (newline)
        br(f);
    fputc('[', f);
    for (i = 0; i < m->n && i < MARK_LISTED; i++) {
        const char *rule = g->d->v[m->diag[i]].rule;
        for (j = 0; j < i && strcmp(g->d->v[m->diag[j]].rule, rule) != 0; j++)
            ;
        if (j < i)
            continue;
        if (i > 0)
            fputc(' ', f);
        esc(f, rule);
    }
    if (m->n > MARK_LISTED)
        fputs(" ...", f);
    fputc(']', f);
}

/* A node of its own id; label, the rest of the attributes and mark follow. */
static void node_open(FILE *f, const char *indent, const char *id)
{
    fprintf(f, "%s%s [label=\"", indent, id);
}

static void node_close(FILE *f, const graph *g, const mark *m, const char *attrs)
{
    mark_rules(f, g, m, 1);
    fprintf(f, "\", %s", attrs);
    mark_attrs(f, g, m, ", ");
    fputs("];\n", f);
}

/* An edge; its label is text (may be NULL) and the rule ids of m. */
static void edge(FILE *f, const graph *g, const char *from, const char *to, const char *attrs,
                 const char *text, const mark *m)
{
    fprintf(f, "  %s -> %s [%s", from, to, attrs);
    if (text != NULL || (m != NULL && m->n > 0)) {
        fputs(", label=\"", f);
        if (text != NULL)
            esc(f, text);
        mark_rules(f, g, m, text != NULL);
        fputc('"', f);
    }
    mark_attrs(f, g, m, ", ");
    fputs("];\n", f);
}

/* A node inside vault v, for edges that end at its region cluster. */
static void vault_anchor(const graph *g, size_t v, char *buf, size_t cap)
{
    if (g->l->vaults[v].nkeys > 0)
        snprintf(buf, cap, "v%zu_k0", v);
    else if (v == g->service && g->l->ndeps > 0)
        snprintf(buf, cap, "d0_avail");
    else
        snprintf(buf, cap, "v%zu_none", v);
}

static void write_vault(FILE *f, const graph *g, size_t i)
{
    const kc_lvault *v = &g->l->vaults[i];
    const mark *m = &g->m[g->base_vault + i];
    const char *in = "        ";
    char id[64];
    size_t j;

    fprintf(f, "      subgraph cluster_v%zu {\n        label=\"", i);
    escf(f, "%s %s", i == g->service ? "service vault" : "vault", v->name);
    br(f);
    esc(f, kc_sku_name(v->sku));
    mark_rules(f, g, m, 1);
    fprintf(f, "\";\n        labelloc=\"t\"; style=\"filled\"; fillcolor=\"%s\"",
            i == g->service ? "#eeeeee" : "white");
    mark_attrs(f, g, m, "; ");
    fputs(";\n", f);
    for (j = 0; j < v->nkeys; j++) {
        const kc_lkey *k = &v->keys[j];
        snprintf(id, sizeof(id), "v%zu_k%zu", i, j);
        node_open(f, in, id);
        esc(f, k->name);
        br(f);
        escf(f, "%s-%u %s", k->kty, k->bits,
             k->protection == KC_PROT_SOFTWARE ? "software" : "hsm");
        if (k->expires[0] != '\0') {
            br(f);
            escf(f, "expires %s", k->expires);
        }
        node_close(f, g, &g->m[g->base_key + g->key_base[i] + j],
                   "shape=box, style=\"rounded,filled\", fillcolor=\"white\"");
    }
    if (i == g->service)
        for (j = 0; j < g->l->ndeps; j++) {
            snprintf(id, sizeof(id), "d%zu_avail", j);
            node_open(f, in, id);
            fputs("availability key", f);
            br(f);
            escf(f, "of %s", g->l->deps[j].name);
            node_close(f, g, NULL, "shape=box, style=\"rounded,filled\", fillcolor=\"#dddddd\"");
        }
    if (v->nkeys == 0 && !(i == g->service && g->l->ndeps > 0))
        fprintf(f, "%sv%zu_none [label=\"(no keys)\", shape=plaintext];\n", in, i);
    fputs("      }\n", f);
}

static void write_subscription(FILE *f, const graph *g, size_t s)
{
    const kc_lsub *sub = s < g->l->nsubs ? &g->l->subs[s] : NULL;
    const mark *m = &g->m[s];
    size_t r, i, nvaults = 0;

    fprintf(f, "  subgraph cluster_s%zu {\n    label=\"", s);
    escf(f, "subscription %s", g->sub_ids[s]);
    if (sub == NULL) {
        br(f);
        fputs("(not declared)", f);
    } else {
        if (sub->name[0] != '\0') {
            br(f);
            esc(f, sub->name);
        }
        if (sub->mandatory_retention) {
            br(f);
            fputs("mandatory retention", f);
        }
    }
    mark_rules(f, g, m, 1);
    fprintf(f, "\";\n    labelloc=\"t\"; style=\"rounded\"");
    mark_attrs(f, g, m, "; ");
    fputs(";\n", f);
    for (r = 0; r < g->nrc; r++) {
        if (g->rc[r].sub != s)
            continue;
        fprintf(f, "    subgraph cluster_r%zu {\n      label=\"", r);
        escf(f, "region %s", g->rc[r].region);
        fputs("\";\n      labelloc=\"t\"; style=\"filled\"; fillcolor=\"#eef3fa\"; "
              "color=\"#9fb3cc\";\n",
              f);
        for (i = 0; i < g->l->nvaults; i++)
            if (g->vault_rc[i] == r) {
                write_vault(f, g, i);
                nvaults++;
            }
        fputs("    }\n", f);
    }
    /* Graphviz does not draw an empty cluster */
    if (nvaults == 0)
        fprintf(f, "    s%zu_none [label=\"(no vaults)\", shape=plaintext];\n", s);
    fputs("  }\n", f);
}

static void write_pairs(FILE *f, const graph *g)
{
    char from[32], to[32], attrs[160];
    size_t p, i, first[2];

    for (p = 0; p < g->npairs; p++) {
        for (i = 0; i < 2; i++)
            for (first[i] = 0; g->vault_rc[first[i]] != g->pairs[p][i]; first[i]++)
                ;
        vault_anchor(g, first[0], from, sizeof(from));
        vault_anchor(g, first[1], to, sizeof(to));
        snprintf(attrs, sizeof(attrs),
                 "ltail=cluster_r%zu, lhead=cluster_r%zu, dir=none, style=dashed, "
                 "constraint=false",
                 g->pairs[p][0], g->pairs[p][1]);
        edge(f, g, from, to, attrs, "Azure region pair", &g->m[g->base_pair + p]);
    }
}

static void write_deps(FILE *f, const graph *g)
{
    const kc_layout *l = g->l;
    char id[32], to[32];
    size_t i, j, v, key;

    for (i = 0; i < l->ndeps; i++) {
        const kc_ldep *dp = &l->deps[i];
        const mark *m = &g->m[g->base_dep + 3 * i];
        snprintf(id, sizeof(id), "d%zu", i);
        node_open(f, "  ", id);
        escf(f, "DEP %s", dp->name);
        br(f);
        esc(f, dp->workload);
        if (dp->geo[0] != '\0')
            escf(f, ", geo %s", dp->geo);
        if (!dp->enabled) {
            br(f);
            fputs("(disabled)", f);
        }
        if (dp->waiver[0] != '\0') {
            br(f);
            fputs("(region pair waived)", f);
        }
        node_close(f, g, m, "shape=box, style=\"filled\", fillcolor=\"lightyellow\"");
        for (j = 0; j < dp->nkeys && j < 2; j++) {
            const mark *km = &g->m[g->base_dep + 3 * i + 1 + j];
            v = key_ref(l, dp->keys[j], &key);
            if (key != NONE) {
                snprintf(to, sizeof(to), "v%zu_k%zu", v, key);
            } else {
                /* a reference to a key the layout does not declare (KC028) */
                snprintf(to, sizeof(to), "d%zu_missing%zu", i, j);
                node_open(f, "  ", to);
                esc(f, dp->keys[j]);
                br(f);
                fputs("(not declared)", f);
                node_close(f, g, km, "shape=box, style=\"rounded,dashed\"");
            }
            edge(f, g, id, to, "arrowsize=0.8", NULL, km);
        }
        if (g->service != NONE) {
            snprintf(to, sizeof(to), "d%zu_avail", i);
            edge(f, g, id, to, "arrowsize=0.8, style=dotted", NULL, NULL);
        } else if (l->service_vault[0] != '\0') {
            edge(f, g, id, "service_missing", "arrowsize=0.8, style=dotted", NULL, NULL);
        }
    }
    if (g->service == NONE && l->service_vault[0] != '\0') {
        node_open(f, "  ", "service_missing");
        escf(f, "service vault %s", l->service_vault);
        br(f);
        fputs("(not declared)", f);
        node_close(f, g, &g->m[g->base_service], "shape=box, style=\"rounded,dashed\"");
    }
}

static void write_assignments(FILE *f, const graph *g)
{
    char scope[300], id[32], to[32];
    size_t i, dep;

    for (i = 0; i < g->nassign; i++) {
        const kc_lassign *a = assignment(g->l, i, scope, sizeof(scope));
        const mark *m = &g->m[g->base_assign + i];
        snprintf(id, sizeof(id), "a%zu", i);
        node_open(f, "  ", id);
        esc(f, scope);
        node_close(f, g, m, "shape=ellipse");
        dep = dep_named(g->l, a->dep);
        if (dep != NONE) {
            snprintf(to, sizeof(to), "d%zu", dep);
        } else {
            snprintf(to, sizeof(to), "a%zu_missing", i);
            node_open(f, "  ", to);
            escf(f, "DEP %s", a->dep);
            br(f);
            fputs("(not declared)", f);
            node_close(f, g, m, "shape=box, style=\"dashed\"");
        }
        edge(f, g, id, to, "arrowsize=0.8", NULL, m);
    }
}

/* The caption: the file, the count, and what points at nothing drawn. */
static void write_caption(FILE *f, const graph *g)
{
    const char *slash = strrchr(g->l->file, '/');
    const kc_diags *d = g->d;
    size_t i;

    fputs("  label=\"", f);
    esc(f, slash != NULL ? slash + 1 : g->l->file);
    fputs("\\l", f);
    if (d->n == 0)
        fputs("valid\\l", f);
    else
        escf(f,
             "%zu error%s, %zu warning%s (errors red, warnings orange; the messages in "
             "tooltips)",
             d->errors, d->errors == 1 ? "" : "s", d->warnings, d->warnings == 1 ? "" : "s");
    if (d->n > 0)
        fputs("\\l", f);
    for (i = 0; i < g->nunplaced; i++) {
        const kc_diag *x = &d->v[g->unplaced[i]];
        if (x->line > 0)
            escf(f, "line %d: ", x->line);
        escf(f, "%s[%s]: %s", x->severity == KC_SEV_ERROR ? "error" : "warning", x->rule, x->msg);
        fputs("\\l", f);
    }
    fputs("\";\n", f);
}

kc_rc kc_graph_write(const kc_layout *l, const kc_diags *d, FILE *f, kc_error *err)
{
    graph g;
    size_t s;
    kc_rc rc;

    rc = graph_init(&g, l, d, err);
    if (rc != KC_OK)
        return rc;
    fputs("digraph keycustody {\n"
          "  graph [compound=true, rankdir=TB, nodesep=0.3, ranksep=0.6, fontsize=12, "
          "labelloc=b, labeljust=l];\n"
          "  node [fontsize=11];\n"
          "  edge [fontsize=9];\n",
          f);
    write_caption(f, &g);
    for (s = 0; s < g.nsubc; s++)
        write_subscription(f, &g, s);
    write_pairs(f, &g);
    write_deps(f, &g);
    write_assignments(f, &g);
    fputs("}\n", f);
    graph_release(&g);
    if (fflush(f) != 0 || ferror(f))
        return kc_error_set(err, KC_ERR, "cannot write the graph of layout '%s': %s", l->file,
                            strerror(errno));
    return KC_OK;
}

kc_rc kc_graph_dot(const kc_layout *l, const kc_diags *d, char **out, size_t *len, kc_error *err)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f;
    kc_rc rc;

    *out = NULL;
    *len = 0;
    f = open_memstream(&buf, &n);
    if (f == NULL)
        return kc_error_set(err, KC_ERR, "cannot draw layout '%s': %s", l->file, strerror(errno));
    rc = kc_graph_write(l, d, f, err);
    if (fclose(f) != 0 && rc == KC_OK)
        rc = kc_error_set(err, KC_ERR, "cannot draw layout '%s': %s", l->file, strerror(errno));
    if (rc != KC_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    *len = n;
    return KC_OK;
}
