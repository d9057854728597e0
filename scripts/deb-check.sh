#!/usr/bin/env bash
# make deb: builds the Debian packages from the committed tree
# (dpkg-buildpackage -us -uc -b), checks them with lintian (no error
# allowed), then, as root, installs them, runs what they installed
# (keycustody --version, man keycustody, an example built with pkg-config
# against libkeycustody-dev) and purges them again. The packages are left in
# var/deb/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
version=$(dpkg-parsechangelog -l debian/changelog -S Version)
out=$root/var/deb
rm -rf "$out" && mkdir -p "$out/src"
step() { printf -- '-- %s\n' "$*"; }

step "source tree (git ls-files) in $out/src/keycustody-$version"
mkdir "$out/src/keycustody-$version"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$out/src/keycustody-$version"

step "dpkg-buildpackage -us -uc -b"
(cd "$out/src/keycustody-$version" &&
  DEB_BUILD_OPTIONS="parallel=${JOBS:-2}" dpkg-buildpackage -us -uc -b >"$out/build.log" 2>&1) ||
  { tail -40 "$out/build.log"; echo "dpkg-buildpackage failed: $out/build.log" >&2; exit 1; }
mv "$out"/src/*.deb "$out"/src/*.changes "$out"/src/*.buildinfo "$out"/
ls "$out"/*.deb

step "lintian"
lintian --fail-on error --info --pedantic --display-level '>=pedantic' "$out"/*.changes | tee "$out/lintian.log"

[ "$(id -u)" -eq 0 ] || { echo "not root: the packages are built and checked, not installed"; exit 0; }
step "install, run, purge"
pkgs=(keycustody libkeycustody0 libkeycustody-dev)
for p in "${pkgs[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null; then
    echo "$p is installed already: not installing over it" >&2
    exit 1
  fi
done
trap 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${pkgs[@]}" >/dev/null 2>&1 || true' EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  "$out"/keycustody_"$version"_*.deb "$out"/libkeycustody0_"$version"_*.deb \
  "$out"/libkeycustody-dev_"$version"_*.deb >/dev/null
[ "$(command -v keycustody)" = /usr/bin/keycustody ] || { echo "keycustody not in /usr/bin" >&2; exit 1; }
keycustody --version | grep -x "keycustody ${version%%-*}" >/dev/null
keycustody --version
MANWIDTH=80 man keycustody 2>&1 | grep "custody of HSM root keys through PKCS#11" >/dev/null
MANWIDTH=80 man 5 keycustody-layout 2>&1 | grep "paired_regions_waiver" >/dev/null
MANWIDTH=80 man keycustody-policy 2>&1 | grep "usage: keycustody policy plan" >/dev/null
echo "man keycustody, man keycustody-policy, man 5 keycustody-layout: ok"
[ -f /usr/share/bash-completion/completions/keycustody ]
bash --norc -c 'source /usr/share/bash-completion/completions/keycustody &&
  COMP_LINE="keycustody vau" COMP_POINT=14 COMP_WORDS=(keycustody vau) COMP_CWORD=1 &&
  _keycustody && [ "${COMPREPLY[*]}" = vault ]'
echo "bash completion installed and completing: ok"
[ "$(pkg-config --modversion keycustody)" = "${version%%-*}" ]
# shellcheck disable=SC2046 # pkg-config's words
cc -Wall -Werror /usr/share/doc/keycustody/examples/list-keys.c \
  $(pkg-config --cflags --libs keycustody) -o "$out/list-keys"
ldd "$out/list-keys" | grep -E "libkeycustody.so.0 => (/usr)?/lib/" >/dev/null
"$out/list-keys" --help >/dev/null 2>&1 || [ $? -eq 2 ]
echo "the example builds against libkeycustody-dev and loads libkeycustody0: ok"
echo "deb: ok"
