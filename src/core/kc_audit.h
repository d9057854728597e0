/* The audit log: one JSON line per operation, hash-chained and sealed on a
 * token.
 *
 * Each record carries its sequence number, the log's id, the SHA-256 of the
 * line before it ("prev") and, when a vault was at hand with its user logged
 * in, an HMAC-SHA256 computed on that vault's token under its audit key
 * ("sealed_by", "mac"). The MAC covers the line up to the MAC itself, so a
 * sealed record vouches for every record before it through the chain. After
 * each sealed append the sealing vault's anchor (a private document on its
 * token: the latest sequence number and line hash per log) moves to the new
 * record, so cutting records off the end is noticed too.
 *
 * Line format: {"seq":N,"log":"…","time":"…",…fields…,"prev":"hex",
 * "sealed_by":"VAULT"|null,"mac":"hex"|null} — the MAC is computed over the
 * bytes before ',"mac":'. */
#ifndef KC_AUDIT_H
#define KC_AUDIT_H

#include "kc_ctx.h"

#include <jansson.h>

#define KC_AUDIT_KEY_LABEL "keycustody-audit"
#define KC_AUDIT_ANCHOR_LABEL "keycustody-audit-anchor"
#define KC_AUDIT_LINE_MAX 16384

/* The vault's audit key; generated on the token when missing and create is
 * set (then the user must be logged in). KC_NOT_FOUND when missing. */
KC_EXPORT kc_rc kc_audit_key(kc_tok *tok, int create, kc_obj *out, kc_error *err) KC_MUST_CHECK;

typedef struct kc_audit kc_audit;

/* Opens (creating, mode 0600) the log for appending. Refuses a symlink, a
 * file that is not the caller's or that others can read or write. */
KC_EXPORT kc_rc kc_audit_open(const char *path, kc_audit **out, kc_error *err) KC_MUST_CHECK;
KC_EXPORT void kc_audit_close(kc_audit *a);
KC_EXPORT const char *kc_audit_path(const kc_audit *a);

/* Appends one record made of fields (an object, not taken) under an
 * exclusive lock. sealer: a token with its user logged in, or NULL. When
 * sealing or moving the anchor fails the record is still written (unsealed,
 * or sealed without the anchor moved) and *seal_err says why; otherwise
 * seal_err->code is KC_OK. *line (optional): the line written, to free. */
KC_EXPORT kc_rc kc_audit_append(kc_audit *a, const json_t *fields, kc_tok *sealer,
                                kc_error *seal_err, char **line, kc_error *err) KC_MUST_CHECK;

/* One line checked on its own: JSON with the fields every record has and
 * the MAC last. Fills the parsed record (caller decrefs) and the MAC
 * (has_mac 0 when unsealed); the MAC covers line[0..*mac_off). */
KC_EXPORT kc_rc kc_audit_parse_line(const char *line, size_t len, json_t **rec,
                                    unsigned char mac[32], int *has_mac, size_t *mac_off,
                                    kc_error *err) KC_MUST_CHECK;

typedef struct kc_audit_summary {
    long records;
    long sealed;        /* of which unchecked were sealed by vaults not visible */
    long unchecked;
    long unsealed_tail; /* records after the last sealed one (only the chain covers them) */
    char vaults[512];   /* the vaults whose MACs were checked */
    char anchors[512];  /* the vaults that anchor this log at this path */
    char missing[256];  /* vaults that sealed records but are not visible; later records
                         * sealed by visible vaults vouch for theirs through the chain */
} kc_audit_summary;

/* Checks the whole log: sequence, chain, every MAC on its vault's token
 * (logging in through ctx) and the anchor on every vault visible. KC_OK
 * when intact; KC_INTEGRITY naming the first record modified, removed,
 * inserted or reordered, or the cut tail; other codes when a vault could
 * not be asked. */
KC_EXPORT kc_rc kc_audit_verify(kc_ctx *ctx, const char *path, kc_audit_summary *sum,
                                kc_error *err) KC_MUST_CHECK;

#endif
