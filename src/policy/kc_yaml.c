#include "kc_yaml.h"

#include <yaml.h>

#include <stdlib.h>
#include <string.h>

typedef struct parser {
    yaml_parser_t p;
    kc_diags *d;
    size_t nodes;
    int failed;
} parser;

static kc_ynode *node_new(kc_ykind kind, const yaml_mark_t *m)
{
    kc_ynode *n = calloc(1, sizeof(*n));

    if (n != NULL) {
        n->kind = kind;
        n->line = (int)m->line + 1;
        n->col = (int)m->column + 1;
    }
    return n;
}

void kc_yaml_free(kc_ynode *n)
{
    size_t i;

    if (n == NULL)
        return;
    for (i = 0; i < n->n; i++) {
        if (n->keys != NULL)
            free(n->keys[i]);
        kc_yaml_free(n->items[i]);
    }
    free(n->keys);
    free(n->key_line);
    free(n->key_col);
    free(n->items);
    free(n->value);
    free(n);
}

static int append(kc_ynode *n, char *key, int kl, int kc, kc_ynode *item)
{
    kc_ynode **items = realloc(n->items, (n->n + 1) * sizeof(*items));

    if (items == NULL)
        return -1;
    n->items = items;
    if (n->kind == KC_Y_MAP) {
        char **keys = realloc(n->keys, (n->n + 1) * sizeof(*keys));
        int *l = realloc(n->key_line, (n->n + 1) * sizeof(*l));
        int *c = NULL;
        if (keys != NULL)
            n->keys = keys;
        if (l != NULL)
            n->key_line = l;
        c = realloc(n->key_col, (n->n + 1) * sizeof(*c));
        if (c != NULL)
            n->key_col = c;
        if (keys == NULL || l == NULL || c == NULL)
            return -1;
        n->keys[n->n] = key;
        n->key_line[n->n] = kl;
        n->key_col[n->n] = kc;
    }
    n->items[n->n++] = item;
    return 0;
}

static void fail(parser *ps, const char *rule, const yaml_mark_t *m, const char *hint,
                 const char *msg)
{
    kc_diag_add(ps->d, rule, KC_SEV_ERROR, (int)m->line + 1, (int)m->column + 1, hint, "%s", msg);
    ps->failed = 1;
}

static int next(parser *ps, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&ps->p, ev)) {
        kc_diag_add(ps->d, "KC001", KC_SEV_ERROR, (int)ps->p.problem_mark.line + 1,
                    (int)ps->p.problem_mark.column + 1, NULL, "YAML syntax error: %s%s%s",
                    ps->p.problem ? ps->p.problem : "unknown", ps->p.context ? " " : "",
                    ps->p.context ? ps->p.context : "");
        ps->failed = 1;
        return -1;
    }
    return 0;
}

/* Checks an event that starts a node: no anchors, aliases or tags. */
static int plain_node(parser *ps, const yaml_event_t *ev)
{
    const yaml_char_t *anchor = NULL, *tag = NULL;

    if (ev->type == YAML_ALIAS_EVENT) {
        fail(ps, "KC005", &ev->start_mark, "write the value out where it is needed",
             "aliases (*name) are not allowed in a layout");
        return -1;
    }
    if (ev->type == YAML_SCALAR_EVENT) {
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
    } else if (ev->type == YAML_MAPPING_START_EVENT) {
        anchor = ev->data.mapping_start.anchor;
        tag = ev->data.mapping_start.tag;
    } else if (ev->type == YAML_SEQUENCE_START_EVENT) {
        anchor = ev->data.sequence_start.anchor;
        tag = ev->data.sequence_start.tag;
    }
    if (anchor != NULL) {
        fail(ps, "KC005", &ev->start_mark, "remove the anchor; aliases are not allowed either",
             "anchors (&name) are not allowed in a layout");
        return -1;
    }
    if (tag != NULL) {
        fail(ps, "KC004", &ev->start_mark, "remove the tag; keycustody decides types itself",
             "YAML tags (!name) are not allowed in a layout");
        return -1;
    }
    return 0;
}

static kc_ynode *parse_node(parser *ps, yaml_event_t *ev, int depth);

static kc_ynode *parse_map(parser *ps, const yaml_event_t *start, int depth)
{
    kc_ynode *n = node_new(KC_Y_MAP, &start->start_mark), *val;
    yaml_event_t ev;
    size_t i;

    if (n == NULL)
        return NULL;
    for (;;) {
        char *key;
        int kl, kc;

        if (next(ps, &ev) != 0)
            goto fail;
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return n;
        }
        if (plain_node(ps, &ev) != 0 || ev.type != YAML_SCALAR_EVENT) {
            if (!ps->failed)
                fail(ps, "KC004", &ev.start_mark, NULL, "a key must be a plain name");
            yaml_event_delete(&ev);
            goto fail;
        }
        key = strdup((const char *)ev.data.scalar.value);
        kl = (int)ev.start_mark.line + 1;
        kc = (int)ev.start_mark.column + 1;
        for (i = 0; key != NULL && i < n->n; i++) {
            if (strcmp(n->keys[i], key) == 0) {
                kc_diag_add(ps->d, "KC003", KC_SEV_ERROR, kl, kc, NULL,
                            "duplicate key '%s' (first at line %d, column %d)", key, n->key_line[i],
                            n->key_col[i]);
                ps->failed = 1;
                break;
            }
        }
        yaml_event_delete(&ev);
        if (key == NULL || ps->failed) {
            free(key);
            goto fail;
        }
        if (next(ps, &ev) != 0) {
            free(key);
            goto fail;
        }
        val = parse_node(ps, &ev, depth + 1);
        yaml_event_delete(&ev);
        if (val == NULL || append(n, key, kl, kc, val) != 0) {
            free(key);
            kc_yaml_free(val);
            goto fail;
        }
    }
fail:
    kc_yaml_free(n);
    return NULL;
}

static kc_ynode *parse_seq(parser *ps, const yaml_event_t *start, int depth)
{
    kc_ynode *n = node_new(KC_Y_SEQ, &start->start_mark), *item;
    yaml_event_t ev;

    if (n == NULL)
        return NULL;
    for (;;) {
        if (next(ps, &ev) != 0)
            goto fail;
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            return n;
        }
        item = parse_node(ps, &ev, depth + 1);
        yaml_event_delete(&ev);
        if (item == NULL || append(n, NULL, 0, 0, item) != 0) {
            kc_yaml_free(item);
            goto fail;
        }
    }
fail:
    kc_yaml_free(n);
    return NULL;
}

static kc_ynode *parse_node(parser *ps, yaml_event_t *ev, int depth)
{
    kc_ynode *n;

    if (++ps->nodes > KC_YAML_MAX_NODES) {
        fail(ps, "KC006", &ev->start_mark, NULL, "the layout has too many entries");
        return NULL;
    }
    if (depth > KC_YAML_MAX_DEPTH) {
        fail(ps, "KC006", &ev->start_mark, NULL, "the layout is nested too deeply");
        return NULL;
    }
    if (plain_node(ps, ev) != 0)
        return NULL;
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        n = node_new(KC_Y_SCALAR, &ev->start_mark);
        if (n == NULL)
            return NULL;
        n->value = strdup((const char *)ev->data.scalar.value);
        n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (n->value == NULL) {
            free(n);
            return NULL;
        }
        return n;
    case YAML_MAPPING_START_EVENT:
        return parse_map(ps, ev, depth);
    case YAML_SEQUENCE_START_EVENT:
        return parse_seq(ps, ev, depth);
    default:
        fail(ps, "KC001", &ev->start_mark, NULL, "unexpected YAML structure");
        return NULL;
    }
}

kc_ynode *kc_yaml_parse(const unsigned char *buf, size_t len, kc_diags *d)
{
    parser ps;
    yaml_event_t ev;
    yaml_mark_t zero = {0, 0, 0};
    kc_ynode *root = NULL;
    int docs = 0;

    if (len > KC_YAML_MAX_BYTES) {
        kc_diag_add(d, "KC006", KC_SEV_ERROR, 0, 0, NULL,
                    "the layout is %zu bytes; at most %u are read", len, KC_YAML_MAX_BYTES);
        return NULL;
    }
    memset(&ps, 0, sizeof(ps));
    ps.d = d;
    if (!yaml_parser_initialize(&ps.p))
        return NULL;
    yaml_parser_set_input_string(&ps.p, buf, len);
    for (;;) {
        if (next(&ps, &ev) != 0)
            break;
        if (ev.type == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type == YAML_DOCUMENT_START_EVENT && ++docs > 1) {
            fail(&ps, "KC001", &ev.start_mark, NULL, "a layout is one YAML document");
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type == YAML_SCALAR_EVENT || ev.type == YAML_MAPPING_START_EVENT ||
            ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_ALIAS_EVENT) {
            if (root != NULL) { /* libyaml gives one root per document; never trust it twice */
                fail(&ps, "KC001", &ev.start_mark, NULL, "a layout is one YAML document");
                yaml_event_delete(&ev);
                break;
            }
            root = parse_node(&ps, &ev, 0);
            yaml_event_delete(&ev);
            if (root == NULL)
                break;
            continue;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&ps.p);
    if (ps.failed) {
        kc_yaml_free(root);
        return NULL;
    }
    if (root == NULL)
        root = node_new(KC_Y_MAP, &zero);
    return root;
}

const kc_ynode *kc_yaml_get(const kc_ynode *map, const char *key, size_t *index)
{
    size_t i;

    if (map == NULL || map->kind != KC_Y_MAP)
        return NULL;
    for (i = 0; i < map->n; i++) {
        if (strcmp(map->keys[i], key) == 0) {
            if (index != NULL)
                *index = i;
            return map->items[i];
        }
    }
    return NULL;
}
