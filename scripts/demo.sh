#!/usr/bin/env bash
# The main job, on private SoftHSM tokens under ./var/demo (never the system
# token directory): two vaults in two subscriptions and non-paired regions, an
# RSA root key in each, the public key exported, and a secret wrapped and
# unwrapped, checked against OpenSSL. Starts from scratch on every run.
set -euo pipefail
K=$(realpath "${1:-build/keycustody}")
cd "$(dirname "$0")/.."
root=$PWD/var/demo

module=
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
  [ -e "$m" ] && module=$m && break
done
[ -n "$module" ] || { echo "SoftHSM's module libsofthsm2.so not found (apt-get install softhsm2)" >&2; exit 1; }

rm -rf "$root"
umask 077
mkdir -p "$root/tokens" "$root/pins" "$root/out"
sed "s|@TOKENDIR@|$root/tokens|" softhsm-conf/softhsm2.conf.in >"$root/softhsm2.conf"
export SOFTHSM2_CONF=$root/softhsm2.conf
export KEYCUSTODY_MODULE=$module
# Each vault's custodian holds their own PIN; here they are random files (0600).
for v in VaultA1 VaultA2; do
  openssl rand -hex 16 >"$root/pins/$v.pin"
  openssl rand -hex 16 >"$root/pins/$v.so.pin"
done

if [ -t 1 ]; then b=$'\033[1m' n=$'\033[0m'; else b= n=; fi
step() { printf '\n%s==> %s%s\n' "$b" "$*" "$n"; }
run() { printf '$ keycustody %s\n' "$*"; "$K" "$@"; }
pins() { echo "--pin-source" "$1=file:$root/pins/$1.pin"; }

step "the tokens SoftHSM offers (a free one, not initialised)"
run vault list

step "two vaults: two subscriptions, westus and eastus2 (not an Azure region pair)"
run vault init VaultA1 --subscription contoso-a --region westus --purge-protection \
  --so-pin-source "file:$root/pins/VaultA1.so.pin" $(pins VaultA1)
run vault init VaultA2 --subscription contoso-b --region eastus2 --purge-protection \
  --so-pin-source "file:$root/pins/VaultA2.so.pin" $(pins VaultA2)
run vault list
run vault show VaultA1

step "an RSA-3072 root key in each vault, HSM-protected, wrapKey and unwrapKey only"
run key create VaultA1/Key001 --size 3072 $(pins VaultA1)
run key create VaultA2/Key002 --size 3072 $(pins VaultA2)
run key list VaultA1 $(pins VaultA1)

step "a name can be used once: a second create is a conflict (exit 5)"
set +e
run key create VaultA1/Key001 --size 3072 $(pins VaultA1)
echo "exit code: $?"
set -e

step "export the public key (no PIN needed)"
run key export-public VaultA1/Key001 --out "$root/out/VaultA1-Key001.pem"
openssl pkey -pubin -in "$root/out/VaultA1-Key001.pem" -noout -text | head -1

step "wrap a 32-byte data key under VaultA1/Key001, then unwrap it on the token"
openssl rand -out "$root/out/dek.bin" 32
run key wrap VaultA1/Key001 --in "$root/out/dek.bin" --out "$root/out/dek.wrapped"
cat "$root/out/dek.wrapped"; echo
run key unwrap VaultA1/Key001 --in "$root/out/dek.wrapped" --out "$root/out/dek.unwrapped" $(pins VaultA1)
cmp "$root/out/dek.bin" "$root/out/dek.unwrapped"
echo "the unwrapped key is byte-for-byte the original"

step "cross-check: OpenSSL wraps with the exported public key, the token unwraps"
openssl pkeyutl -encrypt -pubin -inkey "$root/out/VaultA1-Key001.pem" -in "$root/out/dek.bin" \
  -out "$root/out/dek.openssl" -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1
run key unwrap VaultA1/Key001 --in "$root/out/dek.openssl" --alg RSA-OAEP \
  --out "$root/out/dek.from-openssl" $(pins VaultA1)
cmp "$root/out/dek.bin" "$root/out/dek.from-openssl"
echo "OpenSSL and the token agree"

step "done: tokens, PINs and outputs are under $root"
