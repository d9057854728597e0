/* The command-line front end. kc_cli_main runs one command in-process (tests
 * call it directly); only src/cli/main.c exits. */
#ifndef KC_CLI_H
#define KC_CLI_H

#include "kc_ctx.h"

#include <getopt.h>
#include <stdio.h>

#define KC_CLI_MAX_SOURCES 16

typedef struct kc_cli kc_cli;

typedef struct kc_cmd {
    const char *group;
    const char *verb;
    int (*fn)(kc_cli *cli, int argc, char **argv);
    const char *synopsis; /* arguments after "keycustody GROUP VERB" */
    const char *summary;  /* one line */
    const char *help;     /* the command's own options, examples, notes */
    int reads;            /* a read command: takes --json */
} kc_cmd;

struct kc_cli {
    FILE *out;
    FILE *err;
    const kc_cmd *cmd;
    int json;
    const char *module;   /* the first module named (the plan lock's identity) */
    kc_module_set modules; /* --module (repeatable, VAULT=MODULE) or the layout's */
    int module_given;      /* on the command line: the layout's module: is not used */
    char module_vaults[KC_P11_BINDS_MAX][64]; /* the vault names modules.binds point to */
    const char *principal;
    const char *store; /* --store or KEYCUSTODY_STORE */
    const char *pin_sources[KC_CLI_MAX_SOURCES];
    size_t npin;
    const char *so_pin_sources[KC_CLI_MAX_SOURCES];
    size_t nso;
    kc_ctx *ctx;
    kc_error error;
    /* PIN sources a layout declares, used when no --pin-source names the vault */
    const char *layout_pins[KC_CLI_MAX_SOURCES * 4];
    const char *layout_so_pins[KC_CLI_MAX_SOURCES * 4];
    size_t nlayout;
    /* the audit log (cmd_audit.c) */
    const char *audit_opt;      /* --audit or KEYCUSTODY_AUDIT */
    char audit_layout[1024];    /* the layout's audit: (resolved) */
    char store_layout[1024];    /* the layout's store: (resolved) */
    int audit_tampered; /* a vault refused to seal over a changed record */
    int audit_syslog;           /* --audit-syslog */
    struct kc_audit *audit;     /* opened before the command runs */
    int audited;                /* the command changes tokens or the store, or uses a key */
    int ran;                    /* its options parsed: it ran */
    char **operands;            /* its operands, after option parsing */
    int noperands;
    struct json_t *aud;         /* fields the command adds to its record */
    struct json_t *events;      /* failed logins, break-glass uses, in order */
    const char *service_vault;  /* --service-vault, KEYCUSTODY_SERVICE_VAULT or the layout's */
    char layout_service[64];    /* the layout's service vault */
    char store_service[64];     /* the service vault the store records */
    char layout_vault[64];      /* a vault of the layout, to seal apply's record */
    int no_prompt;              /* PINs only from sources (sealing after the command) */
    int list_options;           /* --commands: the parser prints the options, runs nothing */
    /* vaults first seen by this command, pinned in the service store after
     * it: during it, its own write transaction holds the store */
    struct {
        char vault[64], fingerprint[65];
    } seen[KC_P11_BINDS_MAX];
    size_t nseen;
};

/* The command groups (each a table ending in a zero entry) and their
 * one-line summaries; returns how many. For the man pages (man.c). */
size_t kc_cli_groups(const kc_cmd *const **cmds, const char *const **summaries);
/* The common options' and the exit codes' help, as --help prints them. */
const char *kc_cli_common_help(void);
const char *kc_cli_exit_help(void);

/* Writes man page page ("keycustody" or "keycustody-GROUP") as roff, its
 * text each command's --help output; KC_NOT_FOUND for another name. */
kc_rc kc_cli_man(FILE *f, const char *page, const char *date);

/* Runs "keycustody ARGS..." with output on out and diagnostics on err.
 * Returns the exit code (kc_rc). */
int kc_cli_main(int argc, char **argv, FILE *out, FILE *err);

/* Parses the command's options (own, terminated by a zero entry; their val
 * must be >= 256) together with the common ones. Calls on_opt for each own
 * option. Returns 0 to go on, -1 when --help was printed, else an exit code
 * (the error already recorded). *first is the index of the first operand. */
int kc_cli_parse(kc_cli *cli, int argc, char **argv, const struct option *own,
                 int (*on_opt)(kc_cli *cli, int opt, const char *arg, void *state), void *state,
                 int *first);

/* Records a usage error (exit 2) with a pointer to --help. */
int kc_cli_usage(kc_cli *cli, const char *fmt, ...) KC_PRINTF(2, 3);

/* The context, made on first use (loads the PKCS#11 module). */
kc_rc kc_cli_ctx(kc_cli *cli, kc_ctx **out);

/* Writes a command's output data to path (kc_file_write: never over a
 * file that is not regular; over an existing one only with force), or to
 * standard output when path is "-". */
kc_rc kc_cli_write(kc_cli *cli, const char *path, const void *data, size_t len, unsigned mode,
                   int force, kc_error *err) KC_MUST_CHECK;
/* Where the command says what it wrote: stderr when the data went to stdout. */
FILE *kc_cli_report(kc_cli *cli, const char *path);

/* Records err as the command's failure and returns its code. */
int kc_cli_fail(kc_cli *cli, const kc_error *err);

struct kc_store;
/* Opens the service store named by --store / KEYCUSTODY_STORE, for a
 * command that only shows what it holds: its rows are shown unchecked
 * (they are checked when the service vault is open anyway). 0 or the exit
 * code (usage when none is named). */
int kc_cli_store(kc_cli *cli, struct kc_store **st);

/* The context, then the store with its rows checked under its service
 * vault's row key (that vault's PIN: --pin-source, the layout's, or
 * KEYCUSTODY_SERVICE_PIN_SOURCE); 0 or the exit code. */
int kc_cli_ctx_store(kc_cli *cli, kc_ctx **ctx, struct kc_store **st);

/* The row key of st; with create, made on the service vault the command
 * names when the store has none yet (the first DEP). 0 or the exit code. */
int kc_cli_store_auth(kc_cli *cli, struct kc_store *st, int create);

/* Writes a JSON value (takes the reference) to out. */

struct json_t;
void kc_cli_print_json(kc_cli *cli, struct json_t *value);

/* Layout helpers shared by policy and vault validate (cmd_policy.c). */
#define LAYOUT_PINS (KC_CLI_MAX_SOURCES * 4)
struct kc_layout;
struct kc_diags;
/* Reads FILE and runs the layout rules; *layout is NULL when its structure is broken. */
kc_rc kc_cli_load_layout(kc_cli *cli, const char *file, struct kc_layout **layout,
                         struct kc_diags *d);
/* Text (file:line:col: severity[id]: message) or --json. */
void kc_cli_print_diags(kc_cli *cli, const struct kc_diags *d);
/* The layout's PIN sources and module for this command, kept in buf/sobuf. */
kc_rc kc_cli_use_layout(kc_cli *cli, const struct kc_layout *l, char (*buf)[400],
                        char (*sobuf)[400]);
/* policy graph (cmd_graph.c), an entry of kc_cmds_policy */
int kc_cli_policy_graph(kc_cli *cli, int argc, char **argv);

/* --- audit (cmd_audit.c) --- */
/* Adds a field (vault, key, version, dep, scope, ...) to the command's audit record. */
void kc_cli_audit_note(kc_cli *cli, const char *field, const char *value);
/* Before the command: whether it is audited (its record is made after). */
void kc_cli_audit_begin(kc_cli *cli, const char *name);
/* After it: its record (and the events before it) appended and sealed;
 * returns rc, or an error code when the record could not be written. */
int kc_cli_audit_end(kc_cli *cli, const char *name, int argc, char **argv, int rc);
/* After option parsing: opens the log of an audited command; 0 or the exit code. */
int kc_cli_audit_prepare(kc_cli *cli);
/* The ctx event hook. */
void kc_cli_audit_event(void *arg, const char *event, const char *vault, const char *dep,
                        const kc_error *err);

extern const kc_cmd kc_cmds_audit[];
extern const kc_cmd kc_cmds_vault[];
extern const kc_cmd kc_cmds_key[];
extern const kc_cmd kc_cmds_subscription[];
extern const kc_cmd kc_cmds_policy[];
extern const kc_cmd kc_cmds_access[];
extern const kc_cmd kc_cmds_dep[];
extern const kc_cmd kc_cmds_data[];
extern const kc_cmd kc_cmds_status[]; /* verb "": a group that is one command */
extern const kc_cmd kc_cmds_rewrap[];
extern const kc_cmd kc_cmds_tenant[];
extern const kc_cmd kc_cmds_module[];

#endif
