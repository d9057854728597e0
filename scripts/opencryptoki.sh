#!/bin/sh
# opencryptoki.sh - openCryptoki 3.8.1 (Debian 12) with soft-token slots of
# its own, for the test suite: keycustody's second PKCS#11 implementation.
#
# Usage:
#   opencryptoki.sh start  DIR   configure + start pkcsslotd (state kept in DIR)
#   opencryptoki.sh init   DIR   initialise the slots in OCK_INIT_SLOTS (factory
#                                SO PIN -> OCK_SO_PIN, user PIN OCK_USER_PIN, no
#                                *_TO_BE_CHANGED flag, login checked)
#   opencryptoki.sh status DIR   show daemon + token state
#   opencryptoki.sh stop   DIR   stop pkcsslotd (by its recorded PID), undo system changes
#   opencryptoki.sh wipe   DIR   stop (if running) and delete all token state in DIR
#
# Environment: OCK_SO_PIN and OCK_USER_PIN (needed by init; 4..8 characters,
# the soft token's limit; they reach pkcs11-tool through the environment,
# never argv), OCK_SLOTS (default "0 1 2"), OCK_INIT_SLOTS (default
# OCK_SLOTS), OCK_LABEL_PREFIX (default "ock"), OCK_TOKNAME_PREFIX (default
# "keycustody-ock"), OCK_CONF_MODE=ns|replace (default: ns if unshare works).
#
# What openCryptoki 3.8.1 fixes in place (no variable or option moves it):
#   /etc/opencryptoki/opencryptoki.conf  read by pkcsslotd only: DIR's copy is
#       bind-mounted over it in a mount namespace of pkcsslotd's own ("ns",
#       the system file untouched), or it is backed up and replaced
#       ("replace", restored at stop).
#   /var/lib/opencryptoki/<tokname>      each slot's token data: a link to DIR/tokN.
#   /var/lock/opencryptoki/<tokname>     each slot's lock directory: a link to DIR/lockN.
#   /var/lock/opencryptoki/LCK..APIlock  the API lock file (left in place).
#   /var/run/pkcsslotd.socket, /var/run/pkcsslotd.pid, one SysV shm segment.
# One pkcsslotd per host. Each slot loads its own copy of the soft STDLL:
# 3.8.1 shares in-process state between slots that load the same file.

set -u

SYS_CONF=/etc/opencryptoki/opencryptoki.conf
SYS_LIB=/var/lib/opencryptoki
SYS_LOCK=/var/lock/opencryptoki
SOCK=/var/run/pkcsslotd.socket
SYS_PIDFILE=/var/run/pkcsslotd.pid
SLOTD=/usr/sbin/pkcsslotd
STDLL_SRC=/usr/lib/x86_64-linux-gnu/opencryptoki/stdll/libpkcs11_sw.so
MODULE=${OCK_MODULE:-/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so}
FACTORY_SO_PIN=87654321
SO_PIN=${OCK_SO_PIN:-}
USER_PIN=${OCK_USER_PIN:-}
LABEL_PREFIX=${OCK_LABEL_PREFIX:-ock}
TOKPREFIX=${OCK_TOKNAME_PREFIX:-keycustody-ock}
SLOTS=${OCK_SLOTS:-"0 1 2"}
INIT_SLOTS=${OCK_INIT_SLOTS:-$SLOTS}
# pkcs11-tool reads the PINs from these (env:NAME), never from argv
OCK_FACTORY_SO_PIN=$FACTORY_SO_PIN
export OCK_FACTORY_SO_PIN OCK_SO_PIN OCK_USER_PIN

die() { echo "opencryptoki.sh: error: $*" >&2; exit 1; }
log() { echo "opencryptoki.sh: $*" >&2; }

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

CMD=${1:-}
[ -n "$CMD" ] || usage
[ -n "${2:-}" ] || usage
mkdir -p "$2" 2>/dev/null || die "cannot create $2"
DIR=$(cd "$2" && pwd -P) || die "bad DIR $2"

PIDFILE=$DIR/pkcsslotd.pid
CONF=$DIR/opencryptoki.conf
BACKUP=$DIR/opencryptoki.conf.system-backup
MODEFILE=$DIR/conf-mode
SHMFILE=$DIR/shm-key
LOGFILE=$DIR/pkcsslotd.log

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (pkcsslotd + system paths)"; }

# alive PID: process exists, is not a zombie, and is pkcsslotd
alive() {
    _p=$1
    [ -n "$_p" ] && [ -r "/proc/$_p/stat" ] || return 1
    _st=$(sed 's/^.*) //' "/proc/$_p/stat" | cut -d' ' -f1)
    [ "$_st" != Z ] || return 1
    [ "$(cat "/proc/$_p/comm" 2>/dev/null)" = pkcsslotd ]
}

our_pid() { [ -f "$PIDFILE" ] && cat "$PIDFILE"; }

ensure_group() {
    if ! getent group pkcs11 >/dev/null; then
        log "creating system group pkcs11"
        groupadd --system pkcs11 || die "groupadd pkcs11 failed"
    fi
    _u=$(id -un)
    if ! id -nG "$_u" | tr ' ' '\n' | grep -qx pkcs11; then
        log "adding $_u to group pkcs11 (takes effect for new logins; root needs no membership)"
        usermod -a -G pkcs11 "$_u" || die "usermod failed"
    fi
}

write_conf() {
    {
        echo "version opencryptoki-3.1"
        for i in $SLOTS; do
            cat <<EOF
slot $i
{
stdll = $DIR/lib/libpkcs11_sw$i.so
tokname = $TOKPREFIX$i
description = "keycustody test soft token $i"
manufacturer = "keycustody tests"
}
EOF
        done
    } >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"
}

# link LINK -> TARGET, refusing to clobber a real directory/file
make_link() {
    _link=$1 _target=$2
    if [ -L "$_link" ]; then
        rm -f "$_link"
    elif [ -e "$_link" ]; then
        die "$_link exists and is not a symlink; refusing to replace it (choose another OCK_TOKNAME_PREFIX)"
    fi
    ln -s "$_target" "$_link" || die "ln -s $_target $_link failed"
}

remove_link() {
    _link=$1
    if [ -L "$_link" ]; then
        case $(readlink "$_link") in
            "$DIR"/*) rm -f "$_link" ;;
        esac
    fi
}

prepare_dirs() {
    mkdir -p "$DIR/lib" "$SYS_LIB" "$SYS_LOCK" || die mkdir
    chgrp pkcs11 "$SYS_LIB" "$SYS_LOCK" && chmod 0770 "$SYS_LOCK"
    _src=$(readlink -f "$STDLL_SRC") || die "no $STDLL_SRC"
    for i in $SLOTS; do
        # one private copy per slot: 3.8.1 shares in-process state between
        # slots that dlopen() the same STDLL file
        if ! cmp -s "$_src" "$DIR/lib/libpkcs11_sw$i.so"; then
            cp "$_src" "$DIR/lib/libpkcs11_sw$i.so" || die "copy STDLL"
        fi
        mkdir -p "$DIR/tok$i/TOK_OBJ" "$DIR/lock$i"
        chgrp -R pkcs11 "$DIR/tok$i" "$DIR/lock$i"
        chmod 0770 "$DIR/tok$i" "$DIR/tok$i/TOK_OBJ" "$DIR/lock$i"
        make_link "$SYS_LIB/$TOKPREFIX$i" "$DIR/tok$i"
        make_link "$SYS_LOCK/$TOKPREFIX$i" "$DIR/lock$i"
    done
    chmod 0755 "$DIR" "$DIR/lib"
}

ns_works() {
    unshare -m sh -c "mount --bind '$CONF' '$SYS_CONF' && cmp -s '$CONF' '$SYS_CONF'" 2>/dev/null
}

cmd_start() {
    need_root
    _p=$(our_pid || true)
    if alive "$_p"; then log "pkcsslotd already running (pid $_p)"; return 0; fi
    if [ -S "$SOCK" ] && alive "$(cat "$SYS_PIDFILE" 2>/dev/null)"; then
        die "another pkcsslotd (pid $(cat "$SYS_PIDFILE")) is running; only one per host"
    fi
    ensure_group
    prepare_dirs
    write_conf
    rm -f "$SOCK"            # stale socket from a killed daemon
    cleanup_shm
    _mode=${OCK_CONF_MODE:-}
    if [ -z "$_mode" ]; then
        if ns_works; then _mode=ns; else _mode=replace; fi
    fi
    echo "$_mode" >"$MODEFILE"
    : >>"$LOGFILE"
    case $_mode in
        ns)
            unshare -m sh -c 'mount --bind "$1" "$2" && exec "$3" -f' sh \
                "$CONF" "$SYS_CONF" "$SLOTD" >>"$LOGFILE" 2>&1 </dev/null &
            _p=$! ;;
        replace)
            if [ ! -e "$BACKUP" ]; then
                cp -p "$SYS_CONF" "$BACKUP" || die "backup of $SYS_CONF failed"
            fi
            cp "$CONF" "$SYS_CONF" || die "cannot write $SYS_CONF"
            "$SLOTD" -f >>"$LOGFILE" 2>&1 </dev/null &
            _p=$! ;;
        *) die "bad OCK_CONF_MODE $_mode" ;;
    esac
    echo "$_p" >"$PIDFILE"
    _n=0
    while :; do
        sleep 0.2
        if ! kill -0 "$_p" 2>/dev/null; then
            cat "$LOGFILE" >&2; restore_conf; die "pkcsslotd exited at startup"
        fi
        if [ -S "$SOCK" ] && pkcs11-tool --module "$MODULE" -L >/dev/null 2>&1; then break; fi
        _n=$((_n + 1))
        [ $_n -lt 100 ] || { cmd_stop; die "pkcsslotd not ready after 20s"; }
    done
    # remember the shm segment it created, to remove it if it is left behind
    _id=$(ipcs -m -p 2>/dev/null | awk -v p="$_p" '$3 == p {print $1}' | head -n1)
    if [ -n "$_id" ]; then
        ipcs -m 2>/dev/null | awk -v i="$_id" '$2 == i {print $1}' >"$SHMFILE"
    fi
    log "pkcsslotd started (pid $_p, conf mode $_mode), module $MODULE, slots: $SLOTS"
}

cleanup_shm() {
    [ -s "$SHMFILE" ] || return 0
    _key=$(cat "$SHMFILE")
    _att=$(ipcs -m 2>/dev/null | awk -v k="$_key" '$1 == k {print $6}')
    if [ -n "$_att" ] && [ "$_att" = 0 ]; then
        ipcrm -M "$_key" 2>/dev/null && log "removed stale shm segment $_key"
    fi
    rm -f "$SHMFILE"
}

restore_conf() {
    if [ "$(cat "$MODEFILE" 2>/dev/null)" = replace ] && [ -e "$BACKUP" ]; then
        cp -p "$BACKUP" "$SYS_CONF" && rm -f "$BACKUP" && log "restored $SYS_CONF"
    fi
}

cmd_stop() {
    need_root
    _p=$(our_pid || true)
    if [ -n "$_p" ] && alive "$_p"; then
        kill -TERM "$_p"
        _n=0
        while alive "$_p" && [ $_n -lt 50 ]; do sleep 0.2; _n=$((_n + 1)); done
        if alive "$_p"; then log "pkcsslotd $_p ignored SIGTERM, sending SIGKILL"; kill -KILL "$_p"; sleep 0.5; fi
        log "pkcsslotd $_p stopped"
    else
        log "pkcsslotd not running (pid file: ${_p:-none})"
    fi
    if [ -n "$_p" ] && [ "$(cat "$SYS_PIDFILE" 2>/dev/null)" = "$_p" ]; then rm -f "$SYS_PIDFILE"; fi
    if [ -S "$SOCK" ] && ! alive "$(cat "$SYS_PIDFILE" 2>/dev/null)"; then rm -f "$SOCK"; fi
    cleanup_shm
    rm -f "$PIDFILE"
    for i in $SLOTS; do
        remove_link "$SYS_LIB/$TOKPREFIX$i"
        remove_link "$SYS_LOCK/$TOKPREFIX$i"
    done
    restore_conf
    rm -f "$MODEFILE"
    return 0
}

token_flags() { pkcsconf -t -c "$1" 2>/dev/null | sed -n 's/^[[:space:]]*Flags: //p'; }

check_pin() {
    _l=$(printf %s "$2" | wc -c)
    [ "$_l" -ge 4 ] && [ "$_l" -le 8 ] || die "$1 must be 4..8 characters (soft token limit)"
}

cmd_init() {
    _p=$(our_pid || true)
    alive "$_p" || die "pkcsslotd not running; run: $0 start $DIR"
    check_pin OCK_SO_PIN "$SO_PIN"; check_pin OCK_USER_PIN "$USER_PIN"
    [ "$SO_PIN" != "$FACTORY_SO_PIN" ] || die "OCK_SO_PIN must differ from the factory SO PIN"
    M=$MODULE
    for i in $INIT_SLOTS; do
        _f=$(token_flags "$i")
        case $_f in
            *TOKEN_INITIALIZED*)
                case $_f in
                    *TO_BE_CHANGED*) die "slot $i initialised but flags '$_f'; run: $0 wipe $DIR; then start+init" ;;
                esac
                if pkcs11-tool --module "$M" --slot "$i" --login --pin env:OCK_USER_PIN -O >/dev/null 2>&1; then
                    log "slot $i already initialised, user login OK"; continue
                fi
                die "slot $i already initialised with other PINs; run: $0 wipe $DIR" ;;
        esac
        # C_InitToken(factory SO PIN, label)
        pkcs11-tool --module "$M" --slot "$i" --init-token --so-pin env:OCK_FACTORY_SO_PIN \
            --label "$LABEL_PREFIX$i" >&2 || die "slot $i: C_InitToken failed"
        # C_Login(CKU_SO, factory) + C_SetPIN(factory -> new): clears SO_PIN_TO_BE_CHANGED
        pkcs11-tool --module "$M" --slot "$i" --login --login-type so --so-pin env:OCK_FACTORY_SO_PIN \
            --change-pin --new-pin env:OCK_SO_PIN >&2 || die "slot $i: SO C_SetPIN failed"
        # C_Login(CKU_SO, new) + C_InitPIN(user): clears USER_PIN_TO_BE_CHANGED
        pkcs11-tool --module "$M" --slot "$i" --login --login-type so --so-pin env:OCK_SO_PIN \
            --init-pin --pin env:OCK_USER_PIN >&2 || die "slot $i: C_InitPIN failed"
        _f=$(token_flags "$i")
        case $_f in
            *TO_BE_CHANGED*) die "slot $i: flags still '$_f'" ;;
            *USER_PIN_INITIALIZED*) ;;
            *) die "slot $i: unexpected flags '$_f'" ;;
        esac
        pkcs11-tool --module "$M" --slot "$i" --login --pin env:OCK_USER_PIN -O >/dev/null 2>&1 \
            || die "slot $i: user login failed"
        log "slot $i initialised: label $LABEL_PREFIX$i, flags $_f, user login OK"
    done
}

cmd_status() {
    _p=$(our_pid || true)
    if alive "$_p"; then echo "pkcsslotd running, pid $_p, conf mode $(cat "$MODEFILE" 2>/dev/null)"
    else echo "pkcsslotd not running"; return 1; fi
    for i in $SLOTS; do echo "slot $i: $(token_flags "$i")"; done
}

cmd_wipe() {
    need_root
    _p=$(our_pid || true)
    if alive "$_p"; then cmd_stop; fi
    for i in $SLOTS; do rm -rf "$DIR/tok$i" "$DIR/lock$i"; done
    log "token state in $DIR removed (run start + init again)"
}

case $CMD in
    start) cmd_start ;;
    stop) cmd_stop ;;
    init) cmd_init ;;
    status) cmd_status ;;
    wipe) cmd_wipe ;;
    *) usage ;;
esac
