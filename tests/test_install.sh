#!/usr/bin/env bash
# The install, as a user or a package build does it: `cmake --install` into
# DESTDIR with prefix /usr; then examples/list-keys.c built against the
# installed library with pkg-config alone, and run against a SoftHSM vault
# that the installed keycustody made.
#   tests/test_install.sh BUILD_DIR SOURCE_DIR SOFTHSM_MODULE
set -euo pipefail
build=$1 src=$2 softhsm=$3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kc-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

dest=$tmp/root
DESTDIR=$dest cmake --install "$build" --prefix /usr >"$tmp/install.log"
pc=$(find "$dest/usr" -name keycustody.pc -path '*/pkgconfig/*' | head -1)
[ -n "$pc" ] || fail "no keycustody.pc installed under $dest/usr"
grep -qx 'prefix=/usr' "$pc" || fail "keycustody.pc does not say prefix=/usr: $(head -1 "$pc")"
libdir=$(sed -n 's|^libdir=\${exec_prefix}/||p' "$pc")
[ -n "$libdir" ] || fail "keycustody.pc has no libdir under its prefix"
echo "libdir: /usr/$libdir"

# what is installed, and where
for f in usr/bin/keycustody "usr/$libdir/libkeycustody.so.0" "usr/$libdir/libkeycustody.so" \
         usr/include/keycustody/keycustody.h "usr/$libdir/pkgconfig/keycustody.pc" \
         usr/share/man/man1/keycustody.1 usr/share/man/man5/keycustody-layout.5 \
         usr/share/doc/keycustody/examples/contoso-tenant.yaml \
         usr/share/bash-completion/completions/keycustody; do
  [ -e "$dest/$f" ] || fail "not installed: /$f"
done
for g in vault key access subscription dep data status rewrap tenant policy audit module; do
  [ -e "$dest/usr/share/man/man1/keycustody-$g.1" ] || fail "no man page keycustody-$g(1)"
done
[ -L "$dest/usr/$libdir/libkeycustody.so" ] || fail "libkeycustody.so is not the dev symlink"
soname=$(readelf -d "$dest/usr/$libdir/libkeycustody.so.0" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = libkeycustody.so.0 ] || fail "soname is '$soname', not libkeycustody.so.0"
# exported: the public interface, nothing else
others=$(nm -D --defined-only "$dest/usr/$libdir/libkeycustody.so.0" | awk '{print $3}' |
  grep -v -e '^keycustody_' -e '^KEYCUSTODY_0$' || true)
[ -z "$others" ] || fail "libkeycustody exports more than keycustody_*: $others"
# every exported function is declared, with its contract, in the header
for sym in $(nm -D --defined-only "$dest/usr/$libdir/libkeycustody.so.0" | awk '$3 ~ /^keycustody_/ {sub(/@.*/, "", $3); print $3}'); do
  grep -q "KEYCUSTODY_API .*\b$sym(" "$dest/usr/include/keycustody/keycustody.h" ||
    fail "$sym is exported but not declared in keycustody/keycustody.h"
done

# the example, against the installed library only
export PKG_CONFIG_SYSROOT_DIR=$dest PKG_CONFIG_LIBDIR=$dest/usr/$libdir/pkgconfig
flags=$(pkg-config --cflags --libs keycustody)
echo "pkg-config: $flags"
# shellcheck disable=SC2086 # flags are words
cc -std=c11 -Wall -Wextra -Werror ${KC_EXAMPLE_CFLAGS-} "$src/examples/list-keys.c" $flags \
  -o "$tmp/list-keys"
unset PKG_CONFIG_SYSROOT_DIR PKG_CONFIG_LIBDIR
export LD_LIBRARY_PATH=$dest/usr/$libdir
ldd "$tmp/list-keys" | grep "libkeycustody.so.0 => $dest/usr/$libdir/" >/dev/null ||
  fail "list-keys does not load the installed libkeycustody"

# a vault with one key, made by the installed keycustody
mkdir -p "$tmp/tokens"
sed -e "s|@TOKENDIR@|$tmp/tokens|" "$src/softhsm-conf/softhsm2.conf.in" >"$tmp/softhsm2.conf"
export SOFTHSM2_CONF=$tmp/softhsm2.conf KEYCUSTODY_MODULE=$softhsm XDG_RUNTIME_DIR=$tmp
export KEYCUSTODY_AUDIT=$tmp/audit.jsonl KC_SO=87654321 KC_PIN=12345678
kc=$dest/usr/bin/keycustody
# (whole outputs compared: 'cmd | grep -q' under pipefail fails when grep
# stops reading first)
[ "$("$kc" --version)" = "keycustody $(sed -n 's/^Version: //p' "$pc")" ] ||
  fail "keycustody --version and keycustody.pc disagree"
"$kc" vault init VaultX1 --subscription sub-x --region westus \
  --so-pin-source env:KC_SO --pin-source env:KC_PIN >/dev/null
"$kc" key create VaultX1/RootKey --size 2048 --pin-source env:KC_PIN >/dev/null
version=$("$kc" key show VaultX1/RootKey --json --pin-source env:KC_PIN |
  sed -n 's/.*"version": "\([0-9a-f]\{32\}\)".*/\1/p' | head -1)
[ -n "$version" ] || fail "key show gave no version"
KC_PIN_SOURCE=env:KC_PIN "$tmp/list-keys" --module "$softhsm" VaultX1 >"$tmp/out" 2>"$tmp/err" ||
  fail "list-keys failed: $(cat "$tmp/err")"
cat "$tmp/out"
grep -q "^libkeycustody $("$kc" --version | cut -d' ' -f2)\$" "$tmp/out" || fail "library version"
grep -q "^vault VaultX1 .*subscription sub-x .*region westus" "$tmp/out" || fail "vault not listed"
grep -q "^  VaultX1/RootKey/$version RSA-2048 wrapKey,unwrapKey current expires never" \
  "$tmp/out" || fail "key version $version not listed as key show has it"
# its errors: no PIN source names the vault
if "$tmp/list-keys" --module "$softhsm" VaultX1 >/dev/null 2>"$tmp/err"; then
  fail "list-keys listed keys without a PIN source"
fi
grep -q "no PIN source for vault 'VaultX1'" "$tmp/err" || fail "no-PIN error: $(cat "$tmp/err")"
echo "install: ok"
