#!/usr/bin/env bash
# The main job, on private SoftHSM tokens under ./var/demo (never the system
# token directory): two vaults in two subscriptions and non-paired regions, an
# RSA root key in each, the public key exported, a secret wrapped and
# unwrapped (checked against OpenSSL); then custody: a backup domain split
# among three custodians, rotation, backup, soft delete, the vault lost and
# rebuilt by a quorum, the key restored and old data unwrapped. Starts from
# scratch on every run.
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
# The layout names its PINs by environment variable (env:VAULTA1_PIN, ...).
for v in VaultA1 VaultA2 Service; do
  openssl rand -hex 16 >"$root/pins/$v.pin"
  openssl rand -hex 16 >"$root/pins/$v.so.pin"
  V=$(echo "$v" | tr a-z A-Z)
  export "${V}_PIN=$(cat "$root/pins/$v.pin")" "${V}_SO_PIN=$(cat "$root/pins/$v.so.pin")"
done
layout=policies/contoso-tenant.yaml
# The service store (SQLite) holds only wrapped keys and metadata; apply makes the
# layout's DEPs in it, acting as the layout's service principal.
export KEYCUSTODY_STORE=$root/service.db KEYCUSTODY_SERVICE_VAULT=Service
# the service vault checks the store's rows: the source of its PIN (not the PIN)
export KEYCUSTODY_SERVICE_PIN_SOURCE=file:$root/pins/Service.pin
# The layout splits duties: the administrator creates, lists and backs up; the service
# wraps and unwraps; the key officer rotates, deletes, recovers and purges.
export KEYCUSTODY_PRINCIPAL=contoso-admin
svc="--as m365-service"
officer="--as key-officer"

if [ -t 1 ]; then b=$'\033[1m' n=$'\033[0m'; else b= n=; fi
step() { printf '\n%s==> %s%s\n' "$b" "$*" "$n"; }
run() { printf '$ keycustody %s\n' "$*"; "$K" "$@"; }
pins() { echo "--pin-source" "$1=file:$root/pins/$1.pin"; }

step "the layout: two custodian vaults (contoso-a in westus, contoso-b in eastus2), a service vault, three DEPs"
run policy check "$layout"

step "what apply would do on fresh tokens"
run vault list
run policy plan "$layout"

step "apply it: vaults initialised, RSA-3072 root keys created, access policies set, DEPs made and assigned"
run policy apply "$layout" --yes
run vault show VaultA1
run key list VaultA1 $(pins VaultA1)
run dep list
run dep assignment

step "applying again changes nothing"
run policy plan "$layout" --detailed-exitcode

step "a name can be used once: a second create is a conflict (exit 5)"
set +e
run key create VaultA1/TenantKeyA --size 3072 $(pins VaultA1)
echo "exit code: $?"
set -e

step "export the public key (no PIN needed)"
run key export-public VaultA1/TenantKeyA --out "$root/out/VaultA1-TenantKeyA.pem"
openssl pkey -pubin -in "$root/out/VaultA1-TenantKeyA.pem" -noout -text | head -1

step "wrap a 32-byte data key under VaultA1/TenantKeyA, then unwrap it on the token"
openssl rand -out "$root/out/dek.bin" 32
run key wrap VaultA1/TenantKeyA $svc --in "$root/out/dek.bin" --out "$root/out/dek.wrapped"
cat "$root/out/dek.wrapped"; echo
run key unwrap VaultA1/TenantKeyA $svc --in "$root/out/dek.wrapped" --out "$root/out/dek.unwrapped" $(pins VaultA1)
cmp "$root/out/dek.bin" "$root/out/dek.unwrapped"
echo "the unwrapped key is byte-for-byte the original"

step "cross-check: OpenSSL wraps with the exported public key, the token unwraps"
openssl pkeyutl -encrypt -pubin -inkey "$root/out/VaultA1-TenantKeyA.pem" -in "$root/out/dek.bin" \
  -out "$root/out/dek.openssl" -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1
run key unwrap VaultA1/TenantKeyA $svc --in "$root/out/dek.openssl" --alg RSA-OAEP \
  --out "$root/out/dek.from-openssl" $(pins VaultA1)
cmp "$root/out/dek.bin" "$root/out/dek.from-openssl"
echo "OpenSSL and the token agree"

step "DEPs: each DEP key is wrapped under a root key in each custodian vault and under an availability key"
all_pins="--pin-source VaultA1=file:$root/pins/VaultA1.pin --pin-source VaultA2=file:$root/pins/VaultA2.pin"
run dep show Contoso-Mailboxes

step "a DEP whose keys share a vault breaks the rules: refused, nothing made (exit 3)"
set +e
run dep create Bad --keys VaultA1/TenantKeyA,VaultA1/MailboxKeyA --workload exchange $svc $(pins Service)
echo "exit code: $?"
set -e

step "a mailbox DEP for alice (the layout assigned the CEO's and CFO's); seal mail under them"
# dep assign changes only the store; the service vault's PIN lets it seal its audit record
run dep assign Contoso-Mailboxes --mailbox alice@contoso.com $(pins Service)
run dep assignment --mailbox bob@contoso.com
printf 'Quarterly figures, draft 3\n' >"$root/out/mail.txt"
run data put mailbox:alice@contoso.com inbox/1 --in "$root/out/mail.txt" $svc $all_pins
run data put mailbox:bob@contoso.com inbox/1 --in "$root/out/mail.txt" $svc $all_pins
run data get mailbox:alice@contoso.com inbox/1 --out "$root/out/alice-1.txt" $svc $all_pins
cmp "$root/out/mail.txt" "$root/out/alice-1.txt" && echo "alice's mail reads back"

step "rotate a root key, refresh the DEP: the DEP key is wrapped under the new version"
run key rotate VaultA1/MailboxKeyA $officer $(pins VaultA1)
run dep refresh Contoso-Mailboxes $svc $all_pins
run data get mailbox:alice@contoso.com inbox/1 --out "$root/out/alice-2.txt" $svc $all_pins
cmp "$root/out/mail.txt" "$root/out/alice-2.txt" && echo "the same mail, the same DEP key"

step "encryption status: every scope key is under its DEP's current key"
for u in carol dave erin; do
  run data put mailbox:$u@contoso.com inbox/1 --in "$root/out/mail.txt" $svc $all_pins
done
run status

step "roll the tenant DEP: a new DEP key; its scope keys move under it with rewrap"
run dep refresh Contoso-Tenant --roll $svc $all_pins $(pins Service)
run status tenant
run rewrap --batch 2 $svc $all_pins $(pins Service)
run status
run data get mailbox:bob@contoso.com inbox/1 --out "$root/out/bob-0.txt" $svc $all_pins
cmp "$root/out/mail.txt" "$root/out/bob-0.txt" && echo "bob's mail reads under the new DEP key"

step "the data purge path: a legal-hold mailbox DEP is crypto-shredded"
run dep create Contoso-Legal --keys VaultA1/MailboxKeyA,VaultA2/MailboxKeyB --workload exchange \
  --description "legal hold, to be purged" $svc $(pins Service)
run dep assign Contoso-Legal --mailbox legal@contoso.com $(pins Service)
printf 'Privileged and confidential\n' >"$root/out/legal.txt"
run data put mailbox:legal@contoso.com memo/1 --in "$root/out/legal.txt" $svc $all_pins
echo "a purge request is refused while the service can still unwrap (exit 5):"
set +e
run dep purge-request Contoso-Legal --reason "contract ended" --contact "ciso@contoso.com" $(pins Service)
echo "exit code: $?"
set -e
echo "the custodians revoke the service's wrapKey/unwrapKey on both vaults:"
for v in VaultA1 VaultA2; do
  run access remove $v --principal m365-service --permissions wrapKey,unwrapKey \
    --so-pin-source "$v=file:$root/pins/$v.so.pin" $(pins $v)
done
run dep purge-request Contoso-Legal --reason "contract ended" --contact "ciso@contoso.com" $(pins Service)
run dep purge Contoso-Legal --confirm Contoso-Legal $(pins Service)
echo "the custodians give the service its access back, for the other DEPs:"
for v in VaultA1 VaultA2; do
  run access set $v --principal m365-service --role service \
    --so-pin-source "$v=file:$root/pins/$v.so.pin" $(pins $v)
done
echo "the purged mailbox stays unreadable, even with the availability key (exit 4):"
set +e
run data get mailbox:legal@contoso.com memo/1 --out "$root/out/legal-1.txt" --use-availability-key \
  $svc $all_pins $(pins Service)
echo "exit code: $?"
set -e
run data get mailbox:alice@contoso.com inbox/1 --out "$root/out/alice-3.txt" $svc $all_pins
cmp "$root/out/mail.txt" "$root/out/alice-3.txt" && echo "other DEPs' data is untouched"
run status mailbox:legal@contoso.com

step "custody: three custodians hold a 2-of-3 split of subscription contoso-a's backup domain"
mkdir -p "$root/custodians"
for c in alice bob carol; do
  openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$root/custodians/$c-key.pem"
  openssl pkey -in "$root/custodians/$c-key.pem" -pubout -out "$root/custodians/$c.pem"
done
run subscription init contoso-a --vault VaultA1 --quorum 2 --out "$root/out/contoso-a.domain" \
  --custodian "$root/custodians/alice.pem" --custodian "$root/custodians/bob.pem" \
  --custodian "$root/custodians/carol.pem" \
  --so-pin-source "VaultA1=file:$root/pins/VaultA1.so.pin" $(pins VaultA1)

step "rotate the key; data wrapped under the old version still unwraps"
run key rotate VaultA1/TenantKeyA $officer $(pins VaultA1)
run key wrap VaultA1/TenantKeyA $svc --in "$root/out/dek.bin" --out "$root/out/dek.wrapped-v2"
run key show VaultA1/TenantKeyA --versions $(pins VaultA1)

step "back up the key: every version, wrapped on the token, MAC made on the token"
run key backup VaultA1/TenantKeyA --out "$root/out/TenantKeyA.backup" $(pins VaultA1)

step "access policy: the administrator may not delete (exit 6); the key officer may"
run access show VaultA1
set +e
run key delete VaultA1/TenantKeyA $(pins VaultA1)
echo "exit code: $?"
set -e

step "soft delete: unusable, name reserved; purge protection refuses an early purge (exit 6)"
run key delete VaultA1/TenantKeyA $officer $(pins VaultA1)
set +e
run key purge VaultA1/TenantKeyA $officer $(pins VaultA1)
echo "exit code: $?"
set -e
run key recover VaultA1/TenantKeyA $officer $(pins VaultA1)

step "lose VaultA1 entirely: its token directory is deleted from disk"
for d in "$root"/tokens/*/; do
  if grep -q VaultA1 "$d/token.object" 2>/dev/null; then rm -rf "$d"; fi
done
run vault list

step "with VaultA1 gone, VaultA2 unwraps the DEP key: bob's mail still reads"
run data get mailbox:bob@contoso.com inbox/1 --out "$root/out/bob-1.txt" $svc $all_pins
cmp "$root/out/mail.txt" "$root/out/bob-1.txt" && echo "read through the other custodian vault"

step "a new vault in the same subscription joins the domain with 2 of the 3 custodians"
openssl rand -hex 16 >"$root/pins/VaultA3.pin"
openssl rand -hex 16 >"$root/pins/VaultA3.so.pin"
run vault init VaultA3 --subscription contoso-a --region westus --purge-protection \
  --so-pin-source "file:$root/pins/VaultA3.so.pin" $(pins VaultA3)
run subscription join contoso-a --vault VaultA3 --domain "$root/out/contoso-a.domain" \
  --share-key "$root/custodians/bob-key.pem" --share-key "$root/custodians/carol-key.pem" \
  --so-pin-source "VaultA3=file:$root/pins/VaultA3.so.pin" $(pins VaultA3)

step "restore the key there, and unwrap data made under both versions"
run key restore VaultA3 --in "$root/out/TenantKeyA.backup" $(pins VaultA3)
run key unwrap VaultA3/TenantKeyA --in "$root/out/dek.wrapped" --out "$root/out/dek.v1" $(pins VaultA3)
run key unwrap VaultA3/TenantKeyA --in "$root/out/dek.wrapped-v2" --out "$root/out/dek.v2" $(pins VaultA3)
cmp "$root/out/dek.bin" "$root/out/dek.v1" && cmp "$root/out/dek.bin" "$root/out/dek.v2"
echo "both versions of the restored key give back the original data key"

step "a backup restores only in its own subscription: VaultA2 (contoso-b) refuses it (exit 8)"
set +e
run key restore VaultA2 --in "$root/out/TenantKeyA.backup" $(pins VaultA2)
echo "exit code: $?"
set -e

step "the audit log: every command above that changed or used a key, hash-chained and sealed on a token"
run audit show --since 2000-01-01 | tail -8
echo "(VaultA1 is gone: later records sealed on the other vaults vouch for the ones it sealed)"
run audit verify --pin-source VaultA2=file:$root/pins/VaultA2.pin \
  --pin-source VaultA3=file:$root/pins/VaultA3.pin --pin-source Service=file:$root/pins/Service.pin

step "tampering is found: a copy of the log with record 5 taken out (exit 8)"
sed 5d "$root/audit.jsonl" >"$root/out/audit-edited.jsonl"
set +e
run audit verify --audit "$root/out/audit-edited.jsonl" \
  --pin-source VaultA2=file:$root/pins/VaultA2.pin --pin-source VaultA3=file:$root/pins/VaultA3.pin \
  --pin-source Service=file:$root/pins/Service.pin
echo "exit code: $?"
set -e

step "done: tokens, PINs, outputs and the audit log are under $root"
