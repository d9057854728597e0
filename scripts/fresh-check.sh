#!/usr/bin/env bash
# Proves the README's quick start on a really fresh Debian 12: makes a minbase
# bookworm root with debootstrap, copies a clean clone of this tree's HEAD in,
# installs only what the quick start says to install by hand, and runs the
# quick start's commands there as root. Everything it mounts is unmounted and
# the root removed afterwards, on failure and on a signal too.
#
# Usage: scripts/fresh-check.sh [MAKE-TARGET...]   (default: demo check)
#   FRESH_DIR     where the root is made (default: a new directory under /var/tmp)
#   FRESH_MIRROR  the Debian archive (default: the one this machine's apt uses)
#   FRESH_KEEP=1  keep the root afterwards (mounts are always undone)
# Needs root (debootstrap, chroot, mount). Only for the project's own tests.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

# The one line the README's quick start says to run by hand before the two
# commands. Keep the two in step: test_unit reads this line from the README.
quickstart_by_hand='apt-get update && apt-get install -y make git'

[ "$(id -u)" -eq 0 ] || { echo "fresh-check: needs root (debootstrap, chroot, mount)" >&2; exit 2; }
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(demo check)

# The archive this machine's apt already reaches: from deb822 sources first,
# then one-line sources.
mirror=${FRESH_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || { echo "fresh-check: no Debian archive found in /etc/apt; set FRESH_MIRROR" >&2; exit 2; }

if ! command -v debootstrap >/dev/null; then
  echo "fresh-check: installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
fi

base=${FRESH_DIR:-$(mktemp -d /var/tmp/keycustody-fresh.XXXXXX)}
root=$base/root
mounts=()

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  # unmount in reverse order; lazily if something still holds a mount
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}" 2>/dev/null || true
  done
  if grep -qF " $root" /proc/self/mounts; then
    echo "fresh-check: mounts left under $root:" >&2
    grep -F " $root" /proc/self/mounts >&2
    rc=1
  elif [ "${FRESH_KEEP:-0}" = 1 ]; then
    echo "fresh-check: root kept at $root"
  else
    rm -rf --one-file-system "$base"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mnt() { # mnt TARGET MOUNT-ARGS...: mount and remember it
  local target=$1
  shift
  mount "$@" "$target"
  mounts+=("$target")
}

step() { printf 'fresh-check: %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
t0=$(date +%s)

step "debootstrap --variant=minbase bookworm from $mirror"
mkdir -p "$base"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$base/debootstrap.log" 2>&1 \
  || { tail -20 "$base/debootstrap.log" >&2; exit 1; }

# What a booted machine has and a chroot does not: proc, a private /dev with
# the usual nodes, its own pty instance (the prompt tests use one), a tmpfs
# /dev/shm, and name resolution.
mnt "$root/proc" -t proc proc
mnt "$root/dev" -t tmpfs -o mode=0755,nosuid devtmp
for n in null zero full random urandom tty; do
  touch "$root/dev/$n"
  mnt "$root/dev/$n" --bind "/dev/$n"
done
mkdir -p "$root/dev/pts" "$root/dev/shm"
mnt "$root/dev/pts" -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mnt "$root/dev/shm" -t tmpfs -o mode=1777,nosuid,nodev shm
cp -L /etc/resolv.conf "$root/etc/resolv.conf"

step "clean clone of HEAD ($(git rev-parse --short HEAD)) into /root/keycustody"
git clone -q --no-local "$top" "$root/root/keycustody"
# shared/ sits beside the project, as it does here
[ -d "$top/../shared" ] && cp -r "$top/../shared" "$root/root/shared"

in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive /bin/bash -c "$1" </dev/null
}

step "by hand, as the quick start says: $quickstart_by_hand"
in_root "$quickstart_by_hand" >"$base/by-hand.log" 2>&1 || { tail -20 "$base/by-hand.log" >&2; exit 1; }

for t in "${targets[@]}"; do
  step "make $t"
  in_root "cd /root/keycustody && make $t"
done
step "done in $(($(date +%s) - t0)) s: ${targets[*]} passed on a fresh Debian 12"
