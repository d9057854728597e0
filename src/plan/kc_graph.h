/* A layout drawn as a Graphviz DOT digraph, with the rules it breaks drawn
 * on the elements they are about (policy graph). Pure: the text depends on
 * the layout and the diagnostics alone; running Graphviz is the caller's. */
#ifndef KC_GRAPH_H
#define KC_GRAPH_H

#include "kc_layout.h"

#include <stdio.h>

/* Writes l as a DOT digraph to f:
 * - each subscription a cluster, in it a cluster per region it has vaults
 *   in, in that a cluster per vault, in that its keys; the service vault
 *   holds one availability key per DEP;
 * - a dashed edge between two region clusters whose regions are an Azure
 *   region pair;
 * - each DEP a node with an edge to each of its two root keys and a dotted
 *   one to its availability key; each assignment (tenant, mailbox:ID,
 *   geo:CODE) a node with an edge to its DEP;
 * - each diagnostic of d drawn on the element whose source position it
 *   points at (a vault's, a key's, a DEP's, an assignment's field): errors
 *   red, warnings orange, the rule ids in the label and the messages in the
 *   tooltip. The rules about a DEP's pair of vaults (KC011 one vault, KC012
 *   paired or equal regions, KC013 one subscription), which point at the
 *   DEP's second key, are drawn on the DEP, both vaults and the pair edge.
 *   A diagnostic that points at nothing drawn goes in the caption.
 * Every text from the layout is escaped: no name can end a DOT string or
 * add to the graph (node ids are made of indices only). d may be NULL.
 * KC_ERR when writing to f fails. */
KC_EXPORT kc_rc kc_graph_write(const kc_layout *l, const kc_diags *d, FILE *f,
                               kc_error *err) KC_MUST_CHECK;

/* The same text in a new NUL-terminated buffer (*len without the NUL);
 * the caller frees *out. */
KC_EXPORT kc_rc kc_graph_dot(const kc_layout *l, const kc_diags *d, char **out, size_t *len,
                             kc_error *err) KC_MUST_CHECK;

#endif
