#!/bin/sh
# tpm2-pkcs11.sh - tpm2-pkcs11 1.9 (Debian 12) on a software TPM (swtpm
# 0.7), for the test suite: a PKCS#11 module whose only token is free (not
# initialised), everything it keeps in a directory of the caller's.
#
# Usage:
#   tpm2-pkcs11.sh install      apt-get install what is needed (quiet when all is there)
#   tpm2-pkcs11.sh start DIR    start swtpm (state in DIR), TPM2_Startup, make the
#                               tpm2-pkcs11 store DIR/store with a primary object and
#                               no token; prints the VAR=value lines to export, and
#                               nothing else, on stdout
#   tpm2-pkcs11.sh stop DIR     stop the swtpm recorded in DIR/swtpm.pid
#   tpm2-pkcs11.sh module       print the path of the tpm2-pkcs11 module
#
# start prints TPM2_PKCS11_STORE (the store the module reads), TPM2_PKCS11_TCTI
# (how the module reaches the TPM) and TPM2TOOLS_TCTI (the same, for tpm2-tools
# and tpm2_ptool). DIR must be an absolute or relative path of letters, digits
# and . _ / - only: the lines are meant for eval and the TCTI configuration
# string has no quoting (',' and '=' separate its fields).
#
# Environment: TPM2_SWTPM_TRANSPORT=unix|tcp (default unix, or tcp when
# DIR/swtpm.sock.ctrl is too long for a unix socket address). No PIN or
# secret is ever needed or passed: a fresh swtpm has empty hierarchy
# authorisations and tpm2_ptool makes the primary object with an empty auth.
#
# Files in DIR: state/ (the TPM's NV state), store/ (tpm2_pkcs11.sqlite3),
# tmp/ (TMPDIR of tpm2_ptool and tpm2-tools), swtpm.sock + swtpm.sock.ctrl
# (unix transport), swtpm.pid, swtpm.log (swtpm's own log), tpm2.log (output
# of the steps of start). start removes these and only these first.
#
# What swtpm 0.7 and tpm2-pkcs11 1.9 do that the callers must know:
#   - swtpm serves one client connection at a time (a second one waits), but
#     tcti-swtpm opens a connection per TPM command and closes it after the
#     response, so processes that use the module, tpm2-tools and pkcs11-tool
#     can run side by side; their commands interleave on one TPM.
#   - There is no resource manager: TPM sessions and transient objects that a
#     client leaves loaded stay loaded. A process that exits after C_Login
#     without C_Logout/C_Finalize (pkcs11-tool does, on any error after its
#     login) leaves one auth session behind; swtpm holds 3, and then every
#     C_Login fails with TPM_RC_SESSION_MEMORY. With the printed variables
#     exported, `tpm2_flushcontext -l; tpm2_flushcontext -t` clears them (or
#     start again).
#   - The module always shows one more slot than there are tokens in the
#     store, with an uninitialised token in it: that is the free slot. Its
#     C_InitToken sets CKF_USER_PIN_INITIALIZED at once, before any C_InitPIN.
#   - libtpm2-pkcs11-1 registers the module with p11-kit
#     (/usr/share/p11-kit/modules/tpm2_pkcs11.module): programs that load the
#     p11-kit registry load it too. With this script's variables exported they
#     see its free token; without them it fails C_Initialize (no TPM device),
#     is skipped as non-critical, prints TCTI errors on stderr, tries
#     127.0.0.1:2321 and creates $HOME/.tpm2_pkcs11/tpm2_pkcs11.sqlite3.

set -u

ME=tpm2-pkcs11.sh
die() { echo "$ME: error: $*" >&2; exit 1; }
log() { echo "$ME: $*" >&2; }

usage() {
    sed -n '5,13p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Debian 12 packages. libtss2-tcti-swtpm0 is the TCTI that speaks swtpm's
# socket protocol (a dependency of libtss2-tctildr0 anyway, named for
# clarity); libtpm2-pkcs11-tools brings tpm2_ptool (python3-tpm2-pkcs11-tools,
# python3-tpm2-pytss). swtpm-tools (swtpm_setup, swtpm_ioctl) is not used by
# this script, which lets swtpm make its state on first start, but is there
# to look at a TPM by hand.
PKGS="swtpm swtpm-tools libtpms0 libtss2-tcti-swtpm0 tpm2-tools libtpm2-pkcs11-1 libtpm2-pkcs11-tools"

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

cmd_install() {
    _missing=
    for _p in $PKGS; do installed "$_p" || _missing="$_missing $_p"; done
    [ -n "$_missing" ] || return 0
    [ "$(id -u)" = 0 ] || die "not installed:$_missing; install them with: sudo apt-get install -y --no-install-recommends$_missing"
    # The libtss2 packages depend on tpm-udev, which depends on udev, which
    # must be the exact version of the installed libudev1: left to itself apt
    # takes the newest udev and upgrades libudev1 and systemd with it. Ask for
    # the udev that matches what is installed when the archive has it.
    _pin=
    if ! installed udev; then
        _v=$(dpkg-query -W -f='${Version}' libudev1 2>/dev/null)
        if [ -n "$_v" ] && apt-cache madison udev 2>/dev/null \
            | awk -F' *[|] *' '{print $2}' | grep -qxF "$_v"; then
            _pin="udev=$_v"
        fi
    fi
    # apt-get update only when apt does not know a package (fresh or stale lists)
    for _p in $_missing; do
        if ! apt-cache policy "$_p" 2>/dev/null | grep -q 'Candidate: [^(]'; then
            log "apt does not know $_p: running apt-get update"
            apt-get update -qq >&2 || die "apt-get update failed"
            break
        fi
    done
    log "installing:$_missing${_pin:+ ($_pin)}"
    _log=$(mktemp) || die mktemp
    # shellcheck disable=SC2086 # word splitting of the package list is meant
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $_missing $_pin >"$_log" 2>&1; then
        cat "$_log" >&2; rm -f "$_log"; die "apt-get install failed"
    fi
    rm -f "$_log"
}

cmd_module() {
    # the path pkcs11-tool and p11-kit take; the Debian package puts this link
    # (to ../libtpm2_pkcs11.so.1) in the multiarch pkcs11/ directory
    for _m in "${TPM2_PKCS11_MODULE:-}" /usr/lib/*-linux-gnu/pkcs11/libtpm2_pkcs11.so \
        /usr/lib/*-linux-gnu/libtpm2_pkcs11.so.1 /usr/lib/pkcs11/libtpm2_pkcs11.so; do
        if [ -n "$_m" ] && [ -f "$_m" ]; then echo "$_m"; return 0; fi
    done
    die "tpm2-pkcs11 module not found; run: $0 install"
}

# DIR: made absolute, restricted to characters that need no quoting in the
# printed lines or in a TCTI configuration string; start creates it if
# missing, stop does not (nothing to stop there)
set_dir() {
    [ -n "${1:-}" ] || usage
    case $1 in *[!A-Za-z0-9._/-]*) die "DIR '$1' has characters other than A-Za-z0-9._/-" ;; esac
    if [ "$CMD" = stop ] && [ ! -d "$1" ]; then log "no directory $1: nothing to stop"; exit 0; fi
    mkdir -p "$1" 2>/dev/null || die "cannot create $1"
    DIR=$(cd "$1" && pwd -P) || die "bad DIR $1"
    case $DIR in *[!A-Za-z0-9._/-]*) die "DIR '$DIR' has characters other than A-Za-z0-9._/-" ;; esac
    PIDFILE=$DIR/swtpm.pid
    STATE=$DIR/state
    STORE=$DIR/store
    SOCK=$DIR/swtpm.sock
    LOG=$DIR/tpm2.log
}

# The swtpm serving this DIR: alive (not a zombie), named swtpm, and with
# DIR's state directory on its command line, so that a PID reused by another
# process since is never signalled.
is_ours() {
    _p=$1
    case $_p in '' | *[!0-9]*) return 1 ;; esac
    [ -r "/proc/$_p/stat" ] || return 1
    _st=$(sed 's/^.*) //' "/proc/$_p/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$_st" ] && [ "$_st" != Z ] || return 1
    [ "$(cat "/proc/$_p/comm" 2>/dev/null)" = swtpm ] || return 1
    tr '\0' ' ' <"/proc/$_p/cmdline" 2>/dev/null | grep -qF "dir=$STATE,"
}

recorded_pid() { [ -f "$PIDFILE" ] && tr -dc 0-9 <"$PIDFILE"; }

# SIGTERM, then SIGKILL after 5 s (swtpm exits on SIGTERM in some 20 ms).
# Once it has exited it is a zombie until its parent (init, since --daemon)
# reaps it: is_ours takes a zombie for gone.
kill_wait() {
    kill -TERM "$1" 2>/dev/null
    _n=0
    while is_ours "$1" && [ $_n -lt 50 ]; do sleep 0.1; _n=$((_n + 1)); done
    if is_ours "$1"; then
        log "swtpm $1 ignored SIGTERM for 5 s, sending SIGKILL"
        kill -KILL "$1" 2>/dev/null
        _n=0
        while is_ours "$1" && [ $_n -lt 20 ]; do sleep 0.1; _n=$((_n + 1)); done
    fi
    ! is_ours "$1" || die "swtpm $1 still running"
}

# Another swtpm with DIR's state on its command line but not in the pid file:
# not ours to signal (we only ever kill the recorded PID), so start refuses.
other_swtpm() {
    _rec=$1
    for _c in /proc/[0-9]*/comm; do
        [ "$(cat "$_c" 2>/dev/null)" = swtpm ] || continue
        _p=${_c#/proc/}; _p=${_p%/comm}
        [ "$_p" != "$_rec" ] || continue
        if is_ours "$_p"; then echo "$_p"; return 0; fi
    done
    return 1
}

# a free TCP port P on 127.0.0.1 with P+1 free too (tcti-swtpm takes the
# control channel at port+1); nothing may be listening on either, v4 or v6
pick_ports() {
    _r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
    _p=$((20000 + (_r % 20000) * 2))
    for _h in $(printf '%04X %04X' "$_p" $((_p + 1))); do
        if cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v h=":$_h" \
            '$4 == "0A" && substr($2, length($2) - 4) == h {f = 1} END {exit !f}'; then
            return 1
        fi
    done
    echo "$_p"
}

cmd_start() {
    for _t in swtpm tpm2_startup tpm2_ptool; do
        command -v "$_t" >/dev/null || die "$_t missing; run: $0 install"
    done

    # A previous run's leftovers: its swtpm (recorded in the pid file) is
    # stopped, then everything this script makes in DIR is removed.
    _old=$(recorded_pid || true)
    if is_ours "$_old"; then
        log "stopping swtpm $_old left running by a previous start in $DIR"
        kill_wait "$_old"
    fi
    _other=$(other_swtpm "$_old") && die "swtpm $_other (not in $PIDFILE) uses $STATE; stop it first"
    rm -rf "$STATE" "$STORE" "$DIR/tmp" "$SOCK" "$SOCK.ctrl" "$PIDFILE" "$DIR/swtpm.log" "$LOG"

    # the TPM's state and the store hold key material (wrapped): owner only
    umask 077
    mkdir -p "$STATE" "$STORE" "$DIR/tmp" || die "mkdir in $DIR"
    : >"$LOG"

    _tr=${TPM2_SWTPM_TRANSPORT:-}
    if [ -z "$_tr" ]; then
        # sun_path holds 107 bytes and a NUL
        if [ "$(printf %s "$SOCK.ctrl" | wc -c)" -le 107 ]; then _tr=unix; else _tr=tcp; fi
    fi

    # swtpm 0.7 (socket mode):
    #   --tpm2 --tpmstate dir=     a TPM 2.0 whose NV state (tpm2-00.permall)
    #                              swtpm creates in DIR/state on first start;
    #                              no swtpm_setup is needed (no EK certificate
    #                              is, either)
    #   --flags not-need-init      commands accepted without the CMD_INIT of the
    #                              control channel (as a powered-on TPM); the
    #                              TPM2_Startup is ours, below
    #   --daemon --pid file=       forks after its sockets are bound (so they
    #                              accept connections once it returns) and the
    #                              child writes its PID
    #   --server/--ctrl unixio     unix sockets: tcti-swtpm of tpm2-tss 3.2.1
    #                              takes path=P for the data socket and P.ctrl
    #                              for the control one
    #   --server/--ctrl tcp        bindaddr=127.0.0.1 (also swtpm's default);
    #                              tcti-swtpm takes port=P and P+1
    # Its stdio goes to the log, never to the caller's stdout: a daemon
    # holding a $(...) pipe open would hang the caller.
    _try=0
    while :; do
        _try=$((_try + 1))
        case $_tr in
            unix)
                set -- --server "type=unixio,path=$SOCK,mode=0600" --ctrl "type=unixio,path=$SOCK.ctrl,mode=0600"
                TCTI="swtpm:path=$SOCK" ;;
            tcp)
                _port=$(pick_ports) || { [ $_try -lt 20 ] && continue; die "no free TCP port pair on 127.0.0.1"; }
                set -- --server "type=tcp,port=$_port,bindaddr=127.0.0.1" --ctrl "type=tcp,port=$((_port + 1)),bindaddr=127.0.0.1"
                TCTI="swtpm:host=127.0.0.1,port=$_port" ;;
            *) die "bad TPM2_SWTPM_TRANSPORT '$_tr' (unix or tcp)" ;;
        esac
        if swtpm socket --tpm2 --tpmstate "dir=$STATE,mode=0600" --flags not-need-init \
            "$@" --daemon --pid "file=$PIDFILE" --log "file=$DIR/swtpm.log,level=1" \
            >>"$LOG" 2>&1 </dev/null; then
            break
        fi
        # a TCP port taken between the check and the bind: try another pair
        [ "$_tr" = tcp ] && [ $_try -lt 5 ] && continue
        cat "$DIR/swtpm.log" "$LOG" >&2 2>/dev/null
        die "swtpm did not start"
    done
    _n=0
    while ! is_ours "$(recorded_pid || true)"; do
        _n=$((_n + 1))
        [ $_n -lt 50 ] || { cat "$DIR/swtpm.log" >&2; die "swtpm wrote no PID to $PIDFILE or died"; }
        sleep 0.1
    done
    _pid=$(recorded_pid)

    # From here on a failure stops the swtpm just started.
    fail() { cat "$LOG" >&2; kill_wait "$_pid"; rm -f "$PIDFILE"; die "$*"; }

    # tpm2-tools, tpm2_ptool (through TPM2TOOLS_TCTI, which it passes on to
    # the tpm2-tools it runs) and the module (TPM2_PKCS11_TCTI) all reach the
    # TPM by the same TCTI string; tpm2_ptool's temporary files go to DIR/tmp.
    TPM2TOOLS_TCTI=$TCTI TPM2_PKCS11_TCTI=$TCTI TPM2_PKCS11_STORE=$STORE TMPDIR=$DIR/tmp
    export TPM2TOOLS_TCTI TPM2_PKCS11_TCTI TPM2_PKCS11_STORE TMPDIR

    # TPM2_Startup(SU_CLEAR): the TPM refuses every other command before it
    tpm2_startup -c >>"$LOG" 2>&1 || fail "tpm2_startup failed"

    # The store: tpm2_ptool init makes tpm2_pkcs11.sqlite3 and a primary key
    # (RSA 2048, the tpm2-tools default template, empty auth) under the owner
    # hierarchy, made persistent at 0x81000001 (the first free persistent
    # handle) in the TPM's NV, i.e. in DIR/state. No token is added: the
    # module shows the free slot by itself. (The module would also make a DB
    # and a primary on the first C_InitToken without this; made here, the
    # store is whole before any module loads and the module prints no
    # "Cannot prepare version query" warning on an empty DB.)
    tpm2_ptool init --path "$STORE" >>"$LOG" 2>&1 || fail "tpm2_ptool init failed"
    # There is no resource manager between the clients and swtpm, so what a
    # client loads stays loaded after it disconnects: tpm2_ptool init (the
    # tpm2-tools it runs) leaves two transient objects, and swtpm has room
    # for three. Left there, the module's first C_InitToken fails in
    # Esys_StartAuthSession with TPM_RC_OBJECT_MEMORY.
    tpm2_flushcontext --transient-object >>"$LOG" 2>&1 || fail "tpm2_flushcontext -t failed"
    tpm2_flushcontext --loaded-session >>"$LOG" 2>&1 || fail "tpm2_flushcontext -l failed"
    [ -z "$(tpm2_getcap handles-transient 2>>"$LOG")" ] || fail "transient objects left in the TPM"

    # Check: one slot, its token not initialised (pkcs11-tool, from opensc,
    # only if present: the suite has it through scripts/deps.sh)
    if command -v pkcs11-tool >/dev/null; then
        _l=$(pkcs11-tool --module "$(cmd_module)" -L 2>>"$LOG") || { echo "$_l" >>"$LOG"; fail "pkcs11-tool -L failed"; }
        echo "$_l" >>"$LOG"
        echo "$_l" | grep -q 'token state: *uninitialized' || fail "the module shows no free slot"
    fi
    log "swtpm $_pid ($_tr, $TCTI), store $STORE: one free token slot"

    echo "TPM2_PKCS11_STORE=$STORE"
    echo "TPM2_PKCS11_TCTI=$TCTI"
    echo "TPM2TOOLS_TCTI=$TCTI"
}

cmd_stop() {
    _p=$(recorded_pid || true)
    if is_ours "$_p"; then
        kill_wait "$_p"
        log "swtpm $_p stopped"
    else
        log "swtpm not running (pid file: ${_p:-none})"
    fi
    # swtpm removes its sockets and pid file itself on SIGTERM; after a
    # SIGKILL (or a crash) they are left behind
    rm -f "$PIDFILE" "$SOCK" "$SOCK.ctrl"
    return 0
}

CMD=${1:-}
case $CMD in
    install) cmd_install ;;
    module) cmd_module ;;
    start) set_dir "${2:-}"; cmd_start ;;
    stop) set_dir "${2:-}"; cmd_stop ;;
    *) usage ;;
esac
