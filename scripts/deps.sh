#!/usr/bin/env bash
# Makes sure the Debian 12 packages keycustody needs are installed: installs
# the missing ones when run as root, else prints the one apt-get line needed
# and fails.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config          # toolchain
  libp11-kit-dev p11-kit                    # PKCS#11 modules and URIs
  libssl-dev openssl                        # OpenSSL 3
  libyaml-dev                               # layout files
  libjansson-dev                            # JSON
  libgfshare-dev                            # Shamir secret sharing (backup domain)
  libsqlite3-dev                            # the service store
  libpq-dev                                 # the PostgreSQL service store (libpq, pkg-config libpq)
  postgresql                                # a private PostgreSQL 15 server in tests and benchmarks
                                            # (scripts/postgres.sh: initdb, postgres, pg_ctl)
  libcunit1-dev                             # tests
  softhsm2                                  # the HSM in tests and the demo
  opencryptoki                              # the second PKCS#11 implementation in tests
  libnss3                                   # NSS softokn: a module refused a vault, in tests
  opensc gnutls-bin                         # pkcs11-tool and p11tool, for cross-checks
  bsdutils                                  # script(1): PIN prompt tests on a pty
  xxd                                       # hex to bytes in the backup tests
  strace                                    # kills at a chosen file write (test_misuse)
  sqlite3                                   # the store attacks in test_attack edit it with it
  graphviz                                  # dot: policy graph --format svg, and its tests
  clang libclang-rt-14-dev                  # the fuzz targets (libFuzzer; its runtime is only
                                            # a Recommends of clang, which deps are installed without)
  cppcheck clang-tidy                       # make lint
  man-db groff-base                         # the man page tests render every page
  debhelper dpkg-dev fakeroot lintian       # make deb: the Debian package, checked
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
# tpm2-pkcs11 on swtpm (a module refused a vault, in tests) needs udev pinned
# to the installed libudev1, which its own script sees to
tpm2() { "$(dirname "$0")/tpm2-pkcs11.sh" install; }
[ "${#missing[@]}" -eq 0 ] && { tpm2; exit $?; }

if [ "$(id -u)" -ne 0 ]; then
  echo "keycustody needs these Debian packages, which are not installed: ${missing[*]}" >&2
  echo "Install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
tpm2
