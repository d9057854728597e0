/* keycustody policy graph: the layout drawn, its broken rules in red. The
 * DOT is kc_graph's; SVG is Graphviz's dot run on it. */
#include "cli.h"
#include "kc_graph.h"
#include "kc_layout.h"
#include "kc_util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SVG_MAX (64u << 20) /* more is not a picture of a layout */

enum { O_FORMAT = 256, O_OUT, O_FORCE };

struct graph_state {
    int svg;
    const char *out;
    int force;
};

static int graph_opt(kc_cli *cli, int opt, const char *arg, void *st)
{
    struct graph_state *s = st;

    switch (opt) {
    case O_FORMAT:
        if (strcmp(arg, "dot") == 0)
            s->svg = 0;
        else if (strcmp(arg, "svg") == 0)
            s->svg = 1;
        else
            return kc_cli_usage(cli, "--format '%s': choose dot or svg", arg);
        break;
    case O_OUT:
        s->out = arg;
        break;
    case O_FORCE:
        s->force = 1;
        break;
    }
    return 0;
}

/* The first regular executable file called name in an absolute directory
 * of PATH. An empty or relative entry (the current directory) is passed
 * over: which program runs must not depend on where the command runs. */
static int find_program(const char *name, char *out, size_t cap)
{
    const char *path = getenv("PATH"), *p, *end;
    struct stat st;
    size_t len;

    if (path == NULL)
        path = "/usr/local/bin:/usr/bin:/bin";
    for (p = path;; p = end + 1) {
        end = strchr(p, ':');
        if (end == NULL)
            end = p + strlen(p);
        len = (size_t)(end - p);
        if (len > 0 && p[0] == '/' &&
            (size_t)snprintf(out, cap, "%.*s/%s", (int)len, p, name) < cap && stat(out, &st) == 0 &&
            S_ISREG(st.st_mode) && access(out, X_OK) == 0)
            return 1;
        if (*end == '\0')
            return 0;
    }
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        (void)close(*fd);
    *fd = -1;
}

/* Runs prog with argv (no shell), in on its standard input; its standard
 * output in *out (malloc'd, NUL-terminated), the start of its standard
 * error in errbuf, its wait status in *status. Input and output go through
 * one poll loop, so neither pipe can fill while the other waits. SIGPIPE is
 * held off while writing (a program that exits early is an EPIPE, not the
 * end of this process). */
static kc_rc run_filter(const char *prog, char *const argv[], const char *in, size_t inlen,
                        char **out, size_t *outlen, char *errbuf, size_t errcap, int *status,
                        kc_error *err)
{
    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1}, pexec[2] = {-1, -1};
    sigset_t pipe_set, old_mask, pending;
    struct timespec zero = {0, 0};
    size_t off = 0, cap = 0, nerr = 0;
    int child_errno = 0, was_pending = 0, masked = 0;
    char *buf = NULL, *nb;
    pid_t pid = -1;
    ssize_t n;
    kc_rc rc = KC_ERR;

    *out = NULL;
    *outlen = 0;
    errbuf[0] = '\0';
    if (pipe2(pin, O_CLOEXEC) != 0 || pipe2(pout, O_CLOEXEC) != 0 || pipe2(perr, O_CLOEXEC) != 0 ||
        pipe2(pexec, O_CLOEXEC) != 0) {
        kc_error_set(err, KC_ERR, "cannot run '%s': pipe: %s", prog, strerror(errno));
        goto cleanup;
    }
    pid = fork();
    if (pid < 0) {
        kc_error_set(err, KC_ERR, "cannot run '%s': fork: %s", prog, strerror(errno));
        goto cleanup;
    }
    if (pid == 0) {
        sigset_t none;
        int e;
        sigemptyset(&none);
        (void)sigprocmask(SIG_SETMASK, &none, NULL);
        (void)signal(SIGPIPE, SIG_DFL);
        if (dup2(pin[0], 0) >= 0 && dup2(pout[1], 1) >= 0 && dup2(perr[1], 2) >= 0)
            execv(prog, argv);
        e = errno;
        /* the parent reads why; the pipe closes on a successful exec */
        if (write(pexec[1], &e, sizeof(e)) < 0)
            _exit(126);
        _exit(127);
    }
    close_fd(&pin[0]);
    close_fd(&pout[1]);
    close_fd(&perr[1]);
    close_fd(&pexec[1]);
    do
        n = read(pexec[0], &child_errno, sizeof(child_errno));
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(child_errno)) {
        kc_error_set(err, KC_ERR, "cannot run '%s': %s", prog, strerror(child_errno));
        goto cleanup;
    }

    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    if (sigpending(&pending) == 0)
        was_pending = sigismember(&pending, SIGPIPE);
    (void)pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);
    masked = 1;
    (void)fcntl(pin[1], F_SETFL, fcntl(pin[1], F_GETFL) | O_NONBLOCK);
    if (inlen == 0)
        close_fd(&pin[1]);
    while (pout[0] >= 0 || perr[0] >= 0) {
        struct pollfd fds[3] = {{pin[1], POLLOUT, 0}, {pout[0], POLLIN, 0}, {perr[0], POLLIN, 0}};
        if (poll(fds, 3, -1) < 0) {
            if (errno == EINTR)
                continue;
            kc_error_set(err, KC_ERR, "cannot run '%s': poll: %s", prog, strerror(errno));
            goto cleanup;
        }
        if (pin[1] >= 0 && (fds[0].revents & (POLLERR | POLLHUP))) {
            close_fd(&pin[1]); /* it stopped reading: its status says why */
        } else if (pin[1] >= 0 && (fds[0].revents & POLLOUT)) {
            n = write(pin[1], in + off, inlen - off);
            if (n > 0)
                off += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EINTR)
                close_fd(&pin[1]); /* EPIPE: as above */
            if (off == inlen)
                close_fd(&pin[1]);
        }
        if (pout[0] >= 0 && fds[1].revents != 0) {
            if (cap - *outlen < 4096) {
                if (cap >= SVG_MAX) {
                    kc_error_set(err, KC_ERR, "'%s' wrote more than %u MiB", prog, SVG_MAX >> 20);
                    goto cleanup;
                }
                nb = realloc(buf, cap * 2 + 65536);
                if (nb == NULL) {
                    kc_error_set(err, KC_ERR, "cannot run '%s': out of memory", prog);
                    goto cleanup;
                }
                buf = nb;
                cap = cap * 2 + 65536;
            }
            n = read(pout[0], buf + *outlen, cap - *outlen - 1);
            if (n > 0)
                *outlen += (size_t)n;
            else if (n == 0 || (errno != EINTR && errno != EAGAIN))
                close_fd(&pout[0]);
        }
        if (perr[0] >= 0 && fds[2].revents != 0) {
            char chunk[1024];
            n = read(perr[0], chunk, sizeof(chunk));
            if (n > 0) {
                size_t take = nerr + (size_t)n < errcap ? (size_t)n : errcap - 1 - nerr;
                memcpy(errbuf + nerr, chunk, take);
                nerr += take;
                errbuf[nerr] = '\0';
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                close_fd(&perr[0]);
            }
        }
    }
    close_fd(&pin[1]);
    while (waitpid(pid, status, 0) < 0)
        if (errno != EINTR) {
            kc_error_set(err, KC_ERR, "cannot run '%s': waitpid: %s", prog, strerror(errno));
            pid = -1;
            goto cleanup;
        }
    pid = -1;
    if (buf == NULL && (buf = malloc(1)) == NULL) {
        kc_error_set(err, KC_ERR, "cannot run '%s': out of memory", prog);
        goto cleanup;
    }
    buf[*outlen] = '\0';
    *out = buf;
    buf = NULL;
    rc = KC_OK;
cleanup:
    close_fd(&pin[0]);
    close_fd(&pin[1]);
    close_fd(&pout[0]);
    close_fd(&pout[1]);
    close_fd(&perr[0]);
    close_fd(&perr[1]);
    close_fd(&pexec[0]);
    close_fd(&pexec[1]);
    if (pid > 0) { /* ours, stopped on an error of this side */
        (void)kill(pid, SIGKILL);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    if (masked) {
        /* a SIGPIPE the writes raised is taken here, not left for later */
        if (!was_pending && sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE))
            (void)sigtimedwait(&pipe_set, NULL, &zero);
        (void)pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    }
    if (rc != KC_OK)
        *outlen = 0;
    free(buf);
    return rc;
}

/* dot's DOT drawn as SVG by Graphviz; what dot said on stderr in warn. */
static kc_rc render_svg(const char *file, const char *dot, size_t len, char **svg, size_t *svglen,
                        char *warn, size_t warncap, kc_error *err)
{
    char prog[4096];
    char *argv[] = {(char *)"dot", (char *)"-Tsvg", NULL};
    int status = 0;

    if (!find_program("dot", prog, sizeof(prog))) {
        kc_error_set(err, KC_ERR,
                     "cannot draw layout '%s' as SVG: Graphviz's 'dot' is not in any "
                     "directory of PATH",
                     file);
        kc_error_hint(err, "install Graphviz (apt-get install graphviz), or write DOT with "
                           "--format dot");
        return KC_ERR;
    }
    if (run_filter(prog, argv, dot, len, svg, svglen, warn, warncap, &status, err) != KC_OK)
        return kc_error_prefix(err, "cannot draw layout '%s' as SVG", file);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        free(*svg);
        *svg = NULL;
        warn[strcspn(warn, "\n")] = '\0';
        if (WIFEXITED(status))
            kc_error_set(err, KC_ERR, "cannot draw layout '%s' as SVG: '%s -Tsvg' exited %d: %s",
                         file, prog, WEXITSTATUS(status), warn[0] ? warn : "(no message)");
        else
            kc_error_set(err, KC_ERR,
                         "cannot draw layout '%s' as SVG: '%s -Tsvg' was killed by "
                         "signal %d",
                         file, prog, WTERMSIG(status));
        kc_error_hint(err, "'keycustody policy graph %s --format dot' shows what it was given",
                      file);
        return KC_ERR;
    }
    return KC_OK;
}

int kc_cli_policy_graph(kc_cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"format", required_argument, NULL, O_FORMAT},
        {"out", required_argument, NULL, O_OUT},
        {"force", no_argument, NULL, O_FORCE},
        {NULL, 0, NULL, 0},
    };
    struct graph_state s = {0, "-", 0};
    kc_layout *l = NULL;
    char *dot = NULL, *svg = NULL, warn[1024];
    const char *file;
    size_t dotlen = 0, svglen = 0;
    kc_diags d;
    kc_error err;
    FILE *out;
    int first, rc;

    rc = kc_cli_parse(cli, argc, argv, opts, graph_opt, &s, &first);
    if (rc != 0)
        return rc;
    if (argc - first != 1)
        return kc_cli_usage(cli, "give exactly one layout file");
    file = argv[first];
    if (kc_cli_load_layout(cli, file, &l, &d) != KC_OK)
        return cli->error.code;
    /* the picture is on standard output; diagnostics always on stderr */
    out = cli->out;
    cli->out = cli->err;
    kc_cli_print_diags(cli, &d);
    cli->out = out;
    kc_error_clear(&err);
    if (l == NULL) {
        kc_error_set(&cli->error, KC_LAYOUT,
                     "cannot draw layout '%s': its structure is broken (%zu error%s)", file,
                     d.errors, d.errors == 1 ? "" : "s");
        kc_error_hint(&cli->error,
                      "fix what is shown above; 'keycustody policy check %s' shows "
                      "it too",
                      file);
        rc = KC_LAYOUT;
        goto cleanup;
    }
    warn[0] = '\0';
    if (kc_graph_dot(l, &d, &dot, &dotlen, &err) != KC_OK ||
        (s.svg &&
         render_svg(file, dot, dotlen, &svg, &svglen, warn, sizeof(warn), &err) != KC_OK) ||
        kc_cli_write(cli, s.out, s.svg ? svg : dot, s.svg ? svglen : dotlen, 0644, s.force, &err) !=
            KC_OK) {
        rc = kc_cli_fail(cli, &err);
        goto cleanup;
    }
    if (warn[0] != '\0')
        fprintf(cli->err, "warning: dot: %s%s", warn, warn[strlen(warn) - 1] == '\n' ? "" : "\n");
    if (strcmp(s.out, "-") != 0)
        fprintf(cli->out, "drew layout '%s' to %s (%s)\n", file, s.out, s.svg ? "SVG" : "DOT");
    rc = KC_OK;
    if (d.errors > 0) {
        kc_error_set(&cli->error, KC_LAYOUT,
                     "layout '%s' is invalid: %zu error%s, %zu warning%s (drawn in red)", file,
                     d.errors, d.errors == 1 ? "" : "s", d.warnings, d.warnings == 1 ? "" : "s");
        rc = KC_LAYOUT;
    }
cleanup:
    free(svg);
    free(dot);
    kc_diags_release(&d);
    kc_layout_free(l);
    return rc;
}
