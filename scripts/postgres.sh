#!/usr/bin/env bash
# postgres.sh - a private PostgreSQL 15 server (Debian 12) for the tests and
# the benchmarks: the PostgreSQL service store's server, one throwaway
# cluster in DIR, reachable over a unix socket in DIR/sock and nothing else.
#
# Usage:
#   postgres.sh start  DIR   initdb DIR/data (the first time), start postgres, make
#                            the caller's role and its database keycustody; prints
#                            the connection URI as the last line on stdout
#   postgres.sh stop   DIR   stop the server by its recorded PID (DIR/postgres.pid);
#                            DIR stays, for post-mortem
#   postgres.sh status DIR   say whether it runs (exit 0) or not (exit 1)
#   postgres.sh uri    DIR   print the connection URI
#   postgres.sh clean  DIR   stop (if running) and remove DIR
#   postgres.sh fresh  DIR   clean, then start: a new, empty cluster
#
# The URI is postgresql:///keycustody?host=DIR/sock: peer authentication over
# the socket, as the OS user who ran start (its role has LOGIN CREATEDB, not
# SUPERUSER, and owns the database keycustody; it may CHECKPOINT, so that a
# test can read what reached the table files). No TCP: listen_addresses=''.
# The server runs as the caller, or, when the caller is root (PostgreSQL
# refuses to run as root), as the system user postgres of Debian's package.
#
# Environment: KC_PG_BINDIR (default /usr/lib/postgresql/15/bin),
# KC_PG_DB (default keycustody), KC_PG_START_TIMEOUT (seconds, default 30).
#
# Files in DIR: data/ (the cluster), sock/ (the socket, mode 0700, owned by
# the server's user), postgres.log (the server's log), postgres.pid (the
# postmaster's PID while it runs). When root runs it and the user postgres
# cannot reach DIR (say under /root, mode 0700), data/ and sock/ are links to
# a directory /tmp/keycustody-pg.XXXXXX of the server's own; clean removes it.

set -euo pipefail

BINDIR=${KC_PG_BINDIR:-/usr/lib/postgresql/15/bin}
DBNAME=${KC_PG_DB:-keycustody}
START_TIMEOUT=${KC_PG_START_TIMEOUT:-30}
PORT=5432
# sun_path is 108 bytes with its NUL
SUN_PATH_MAX=107

die() { echo "postgres.sh: error: $*" >&2; exit 1; }
log() { echo "postgres.sh: $*" >&2; }

usage() {
    sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

CMD=${1:-}
if [ $# -ne 2 ] || [ -z "$CMD" ] || [ -z "$2" ]; then usage; fi
case $CMD in start|stop|status|uri|clean|fresh) ;; *) usage ;; esac

# the caller's libpq settings must not steer the connections made here
while IFS= read -r _v; do
    case $_v in PG*) unset "$_v" ;; esac
done < <(compgen -e)

if [ "$CMD" = start ] || [ "$CMD" = fresh ]; then
    mkdir -p "$2" || die "cannot create $2"
fi
if [ -d "$2" ]; then
    DIR=$(cd "$2" && pwd -P) || die "bad DIR $2"
else
    DIR=$(realpath -m "$2")
fi
case $DIR in
    *,* | *[[:space:]]* | *\"* | *\'* | *\\*)
        die "DIR '$DIR' has a comma, a quote, a backslash or white space; postgres reads its socket directory as a list (choose another DIR)" ;;
esac

DATA=$DIR/data
SOCK=$DIR/sock
LOGFILE=$DIR/postgres.log
PIDFILE=$DIR/postgres.pid
INVOKER=$(id -un)

if [ "$(id -u)" = 0 ]; then
    SRVUSER=postgres
    AS_ROOT=1
else
    SRVUSER=$INVOKER
    AS_ROOT=0
fi

# run a command as the server's user, from / (the caller's cwd may be closed to it)
run_srv() {
    if [ "$AS_ROOT" = 1 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

uri_encode() {
    local s=$1 out='' c i
    local LC_ALL=C
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
            [A-Za-z0-9._~/-]) out+=$c ;;
            *) out+=$(printf '%%%02X' "'$c") ;;
        esac
    done
    printf '%s' "$out"
}

uri() { printf 'postgresql:///%s?host=%s\n' "$(uri_encode "$DBNAME")" "$(uri_encode "$SOCK")"; }

# the cluster's real directory (DIR/data may be a link, see the header)
data_real() { readlink -f "$DATA" 2>/dev/null || printf '%s' "$DATA"; }
sock_real() { readlink -f "$SOCK" 2>/dev/null || printf '%s' "$SOCK"; }

# alive PID: a live process (not a zombie) named postgres whose working
# directory, where a postmaster sits, is this cluster's (when readable)
alive() {
    local p=${1:-} st cwd
    [[ $p =~ ^[0-9]+$ ]] && [ -r "/proc/$p/stat" ] || return 1
    st=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ "$st" != Z ] || return 1
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = postgres ] || return 1
    if cwd=$(readlink "/proc/$p/cwd" 2>/dev/null); then
        [ "$cwd" = "$(data_real)" ] || return 1
    fi
    return 0
}

# the running postmaster's PID, from DIR/postgres.pid or else from the
# cluster's own postmaster.pid (a start killed before it wrote ours)
running_pid() {
    local p
    p=$(cat "$PIDFILE" 2>/dev/null || true)
    if alive "$p"; then echo "$p"; return 0; fi
    p=$(head -n1 "$DATA/postmaster.pid" 2>/dev/null || true)
    if alive "$p"; then echo "$p"; return 0; fi
    return 1
}

need_binaries() {
    local b
    for b in "$BINDIR/initdb" "$BINDIR/postgres" "$BINDIR/pg_ctl"; do
        [ -x "$b" ] || die "PostgreSQL server program $b not found: install the Debian package postgresql (scripts/deps.sh installs it as root), or set KC_PG_BINDIR"
    done
    for b in psql pg_isready; do
        command -v "$b" >/dev/null || die "$b not found: install the Debian package postgresql (scripts/deps.sh installs it as root)"
    done
    if [ "$AS_ROOT" = 1 ]; then
        getent passwd postgres >/dev/null \
            || die "running as root, but there is no system user postgres to run the server as (the Debian package postgresql makes it: scripts/deps.sh)"
    fi
}

# can the server's user search DIRECTORY (and every directory above it)?
srv_reaches() { run_srv test -x "$1" -a -r "$1" 2>/dev/null; }

# make DIR/data and DIR/sock, owned by the server's user, mode 0700
prepare_dirs() {
    local d real base
    if [ "$AS_ROOT" = 1 ] && [ ! -e "$DATA" ] && ! srv_reaches "$DIR"; then
        base=$(mktemp -d /tmp/keycustody-pg.XXXXXX) || die "mktemp in /tmp failed"
        chmod 0711 "$base"
        mkdir -m 0700 "$base/data" "$base/sock"
        chown postgres: "$base/data" "$base/sock"
        srv_reaches "$base/data" || die "user postgres cannot reach $base/data either"
        ln -s "$base/data" "$DATA" || die "cannot link $DATA to $base/data"
        ln -s "$base/sock" "$SOCK" || die "cannot link $SOCK to $base/sock"
        log "user postgres cannot reach $DIR: the cluster is in $base (DIR/data and DIR/sock link there)"
    fi
    for d in "$DATA" "$SOCK"; do
        if [ -L "$d" ]; then
            real=$(readlink -f "$d" || true)
            [ -d "$real" ] || die "$d links to a missing directory; run: $0 clean $DIR"
        else
            mkdir -p "$d" || die "cannot create $d"
            real=$d
        fi
        if [ "$AS_ROOT" = 1 ]; then chown postgres: "$real" || die "chown postgres $real failed"; fi
        chmod 0700 "$real" || die "chmod 0700 $real failed"
    done
    if [ "$AS_ROOT" = 1 ]; then
        srv_reaches "$(data_real)" || die "user postgres cannot reach $(data_real): a directory above it is closed to other users; choose a DIR under /tmp, or run: $0 clean $DIR (then start makes a directory in /tmp)"
    fi
}

init_cluster() {
    if [ -f "$DATA/PG_VERSION" ]; then return 0; fi
    if [ -n "$(ls -A "$DATA" 2>/dev/null)" ]; then
        die "$DATA is neither empty nor a cluster (an initdb that failed?); run: $0 clean $DIR"
    fi
    log "initdb $DATA (server user $SRVUSER)"
    # --no-sync: a throwaway test cluster
    if ! run_srv "$BINDIR/initdb" -D "$(data_real)" -U postgres --locale=C --encoding=UTF8 \
            --auth-local=peer --auth-host=reject --no-sync --no-instructions >>"$LOGFILE" 2>&1; then
        tail -n 20 "$LOGFILE" >&2
        die "initdb failed (log: $LOGFILE); run: $0 clean $DIR, then start again"
    fi
    # Peer authentication only, over the socket: the server's OS user is the
    # superuser postgres (so that a caller who is not root can make roles),
    # every other OS user the role of its own name. TCP is off anyway.
    run_srv tee "$(data_real)/pg_hba.conf" >/dev/null <<'EOF'
# keycustody test cluster (scripts/postgres.sh): unix socket, peer only
# TYPE  DATABASE  USER  ADDRESS  METHOD
local   all       all            peer map=keycustody
host    all       all   all      reject
EOF
    run_srv tee "$(data_real)/pg_ident.conf" >/dev/null <<EOF
# keycustody test cluster (scripts/postgres.sh)
# MAPNAME    SYSTEM-USERNAME  PG-USERNAME
keycustody   $SRVUSER         postgres
keycustody   /^(.*)\$          \\1
EOF
}

cmd_start() {
    local p launched deadline n
    if p=$(running_pid); then
        echo "$p" >"$PIDFILE"
        log "postgres already running (pid $p), socket $SOCK"
        uri
        return 0
    fi
    need_binaries
    if [ $((${#SOCK} + ${#PORT} + 10)) -gt $SUN_PATH_MAX ]; then
        die "socket path $SOCK/.s.PGSQL.$PORT is longer than a unix socket address ($SUN_PATH_MAX bytes); choose a shorter DIR"
    fi
    rm -f "$PIDFILE"
    prepare_dirs
    : >>"$LOGFILE"
    init_cluster
    log "starting postgres: data $DATA, socket $SOCK, no TCP, log $LOGFILE"
    # its own session, stdin/stdout/stderr away from the caller: a test
    # runner waiting for our output must not wait for the server
    # shellcheck disable=SC2016  # $1, $@: the inner shell's arguments
    setsid "$BASH" -c '
        if [ "$1" = 1 ]; then shift; cd / && exec runuser -u postgres -- "$@"; fi
        shift; cd / && exec "$@"' sh "$AS_ROOT" \
        "$BINDIR/postgres" -D "$(data_real)" -k "$(sock_real)" -p "$PORT" \
        -c listen_addresses= \
        -c unix_socket_permissions=0700 \
        -c log_line_prefix='%m [%p] %q%u@%d ' \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
        </dev/null >>"$LOGFILE" 2>&1 &
    # (fsync, synchronous_commit, full_page_writes off: test-only, a
    # throwaway cluster that need not survive a machine crash)
    launched=$!
    deadline=$((SECONDS + START_TIMEOUT))
    n=0
    until pg_isready -q -h "$SOCK" -p "$PORT" -t 1 >/dev/null 2>&1; do
        if ! kill -0 "$launched" 2>/dev/null; then
            wait "$launched" 2>/dev/null || true
            tail -n 30 "$LOGFILE" >&2
            die "postgres exited at startup (log above, in $LOGFILE)"
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -n 30 "$LOGFILE" >&2
            p=$(head -n1 "$DATA/postmaster.pid" 2>/dev/null || true)
            if alive "$p"; then echo "$p" >"$PIDFILE"; cmd_stop; else kill -TERM "$launched" 2>/dev/null || true; fi
            die "postgres not accepting connections on $SOCK after ${START_TIMEOUT}s (log above, in $LOGFILE); KC_PG_START_TIMEOUT sets the wait"
        fi
        sleep 0.2
        n=$((n + 1))
    done
    p=$(head -n1 "$DATA/postmaster.pid" 2>/dev/null || true)
    alive "$p" || die "postgres accepts connections but $DATA/postmaster.pid names no postmaster of this cluster (pid '${p}')"
    echo "$p" >"$PIDFILE"
    log "postgres running (pid $p)"

    # the caller's role (peer: OS user = role) and its database
    if ! run_srv psql -X -q -v ON_ERROR_STOP=1 -h "$(sock_real)" -p "$PORT" -U postgres -d postgres \
            -v kc_user="$INVOKER" -v kc_db="$DBNAME" >>"$LOGFILE" 2>&1 <<'EOF'
SELECT format('CREATE ROLE %I LOGIN CREATEDB', :'kc_user')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'kc_user') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'kc_db', :'kc_user')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'kc_db') \gexec
SELECT format('GRANT pg_checkpoint TO %I', :'kc_user') \gexec
EOF
    then
        tail -n 20 "$LOGFILE" >&2
        die "could not create role $INVOKER or database $DBNAME (log: $LOGFILE); the server still runs: $0 stop $DIR"
    fi
    p=$(psql -X -At -d "$(uri)" -c 'SELECT current_user' 2>>"$LOGFILE") \
        || die "cannot connect as $INVOKER to $(uri) (log: $LOGFILE); the server still runs: $0 stop $DIR"
    [ "$p" = "$INVOKER" ] || die "connected as role '$p', expected '$INVOKER'"
    log "role $INVOKER (LOGIN CREATEDB) owns database $DBNAME"
    uri
}

# wait up to $2 tenths of a second for PID $1 to go
wait_gone() {
    local n=0
    while alive "$1" && [ $n -lt "$2" ]; do sleep 0.1; n=$((n + 1)); done
    ! alive "$1"
}

cmd_stop() {
    local p
    if ! p=$(running_pid); then
        log "postgres not running (DIR $DIR)"
        rm -f "$PIDFILE"
        return 0
    fi
    # SIGTERM: smart shutdown, it waits for sessions to end
    kill -TERM "$p" 2>/dev/null || true
    if ! wait_gone "$p" 200; then
        # SIGINT: fast shutdown, sessions are ended, still a clean checkpoint
        log "postgres $p still running 20 s after SIGTERM (sessions open?): sending SIGINT (fast shutdown)"
        kill -INT "$p" 2>/dev/null || true
        if ! wait_gone "$p" 50; then
            log "postgres $p still running: sending SIGQUIT (immediate shutdown, crash recovery at next start)"
            kill -QUIT "$p" 2>/dev/null || true
            if ! wait_gone "$p" 50; then
                log "postgres $p still running: sending SIGKILL"
                kill -KILL "$p" 2>/dev/null || true
                wait_gone "$p" 50 || die "postgres $p survived SIGKILL"
            fi
        fi
    fi
    rm -f "$PIDFILE"
    log "postgres $p stopped (data kept in $DATA; $0 clean $DIR removes it)"
}

cmd_status() {
    local p
    if p=$(running_pid); then
        echo "postgres running, pid $p, socket $SOCK, data $(data_real)"
        echo "uri: $(uri)"
    else
        echo "postgres not running (DIR $DIR)"
        return 1
    fi
}

cmd_uri() {
    running_pid >/dev/null || log "warning: postgres is not running in $DIR"
    uri
}

cmd_clean() {
    local d real
    [ -e "$DIR" ] || { log "$DIR does not exist"; return 0; }
    # refuse to remove a directory this script did not make
    for d in "$DIR"/* "$DIR"/.[!.]*; do
        [ -e "$d" ] || [ -L "$d" ] || continue
        case ${d##*/} in data|sock|postgres.log|postgres.pid) ;;
            *) die "$DIR holds ${d##*/}, which is not this script's; not removing it" ;;
        esac
    done
    cmd_stop
    for d in "$DATA" "$SOCK"; do
        if [ -L "$d" ]; then
            real=$(readlink "$d")
            case $real in
                /tmp/keycustody-pg.*/data | /tmp/keycustody-pg.*/sock)
                    rm -rf "$real"
                    rmdir "${real%/*}" 2>/dev/null || true ;;   # empty once both are gone
            esac
        fi
    done
    rm -rf "$DIR" || die "cannot remove $DIR"
    log "removed $DIR"
}

case $CMD in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    uri) cmd_uri ;;
    clean) cmd_clean ;;
    fresh) cmd_clean; mkdir -p "$DIR" || die "cannot create $DIR"; cmd_start ;;
esac
