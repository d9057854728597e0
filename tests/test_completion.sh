#!/usr/bin/env bash
# Bash completion (completion/keycustody.bash) run as bash runs it, on the
# built binary and two SoftHSM tokens in a private token directory: a vault
# and an initialised token that is not one.
# Usage: test_completion.sh KEYCUSTODY COMPLETION SOFTHSM_MODULE SOFTHSM2_CONF_IN
set -u
if (($# != 4)); then
    echo "usage: $0 KEYCUSTODY COMPLETION SOFTHSM_MODULE SOFTHSM2_CONF_IN" >&2
    exit 2
fi
bin=$1 script=$2 module=$3 conf_in=$4
failed=0 checks=0

dir=$(mktemp -d "${TMPDIR:-/tmp}/keycustody-completion-XXXXXX") || exit 1
trap 'rm -rf "$dir"' EXIT
mkdir "$dir/tokens" "$dir/run"
sed "s|@TOKENDIR@|$dir/tokens|" "$conf_in" >"$dir/softhsm2.conf"
export SOFTHSM2_CONF=$dir/softhsm2.conf XDG_RUNTIME_DIR=$dir KEYCUSTODY_AUDIT=$dir/audit.jsonl
export KEYCUSTODY_MODULE=$module
unset KEYCUSTODY_STORE KEYCUSTODY_PRINCIPAL KEYCUSTODY_SERVICE_VAULT KEYCUSTODY_SERVICE_PIN_SOURCE
pin() { od -An -N8 -tx1 /dev/urandom | tr -d ' \n'; }
KC_COMPL_SO_PIN=$(pin) KC_COMPL_PIN=$(pin)
export KC_COMPL_SO_PIN KC_COMPL_PIN

"$bin" vault init VaultCompl --subscription sub-c --region westus \
    --so-pin-source env:KC_COMPL_SO_PIN --pin-source env:KC_COMPL_PIN </dev/null >/dev/null ||
    { echo "FAIL: vault init VaultCompl" >&2; exit 1; }
# a token that is not a vault (softhsm2-util takes its throwaway PINs only on argv)
softhsm2-util --module "$module" --init-token --free --label Plain-Tok \
    --so-pin "$(pin)" --pin "$(pin)" >/dev/null ||
    { echo "FAIL: softhsm2-util --init-token Plain-Tok" >&2; exit 1; }

# shellcheck source=SCRIPTDIR/../completion/keycustody.bash
source "$script" || { echo "FAIL: cannot source $script" >&2; exit 1; }
COMP_WORDBREAKS=$' \t\n"\'><=;|&(:' # bash's default

# Completes LINE (the cursor at its end) as bash does: COMP_WORDS split on
# blanks and around '=' and ':'; COMPREPLY is left set, stderr checked.
complete_line()
{
    local line=$1 split
    COMP_LINE=$line
    COMP_POINT=${#line}
    split=${line//=/ = }
    read -r -a COMP_WORDS <<<"${split//:/ : }"
    [[ $line == *[[:blank:]=:] ]] && COMP_WORDS+=("")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMPREPLY=()
    _keycustody 2>"$dir/run/stderr"
    if [[ -s $dir/run/stderr ]]; then
        echo "FAIL: '$line': completion wrote to stderr: $(cat "$dir/run/stderr")" >&2
        failed=$((failed + 1))
    fi
}

has() { local x; for x in "${COMPREPLY[@]}"; do [[ $x == "$1" ]] && return 0; done; return 1; }

# expect LINE WORD...: each WORD is offered. expect_not LINE WORD...: none
# is. expect_only LINE WORD...: exactly these, in any order.
expect()
{
    local line=$1 w
    shift
    complete_line "$line"
    for w in "$@"; do
        checks=$((checks + 1))
        has "$w" && continue
        echo "FAIL: '$line': expected '$w' among [${COMPREPLY[*]}]" >&2
        failed=$((failed + 1))
    done
}
expect_not()
{
    local line=$1 w
    shift
    complete_line "$line"
    for w in "$@"; do
        checks=$((checks + 1))
        has "$w" || continue
        echo "FAIL: '$line': expected no '$w', got [${COMPREPLY[*]}]" >&2
        failed=$((failed + 1))
    done
}
expect_only()
{
    local line=$1 want got
    shift
    complete_line "$line"
    checks=$((checks + 1))
    want=$( (($#)) && printf '%s\n' "$@" | sort | tr '\n' ' ')
    got=$( ((${#COMPREPLY[@]})) && printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ')
    [[ $want == "$got" ]] && return 0
    echo "FAIL: '$line': expected [$want], got [$got]" >&2
    failed=$((failed + 1))
}

k="$bin "

# command groups, then a group's commands
expect_only "$k" vault key access subscription dep data status rewrap tenant policy audit module
expect_only "${k}va" vault
expect_only "${k}vault " init show list validate
expect "${k}key " create list-deleted export-public unwrap
expect_only "${k}status " # a command of its own: no commands under it
expect "${k}status --" --json --module

# options: the common ones and the command's own, --json only where taken
expect "${k}key create --" --module --pin-source --store --audit --size --protection --ops --expires
expect_not "${k}key create --" --json --versions
expect "${k}key create VaultCompl/K --size 2048 --pr" --protection
expect "${k}vault list --" --json --module
expect_only "${k}vault validate --la" --layout
expect_only "${k}key create --size" --size

# option values from a few words, after a space or '='
expect_only "${k}key create --protection " hsm software
expect_only "${k}key create --protection=s" software
expect_only "${k}vault init VaultNew --sku " premium standard
expect_only "${k}key create VaultCompl/K --size " 2048 3072 4096
expect_only "${k}access set VaultCompl --principal p --role " administrator service
# each list is what the usage or help of a command taking the option says
helps=$(while read -r g v _; do
    if [[ $v == [a-z]* ]]; then "$bin" "$g" "$v" --help; else "$bin" "$g" --help; fi
done < <("$bin" --commands) 2>&1)
for opt in "${!_keycustody_values[@]}"; do
    checks=$((checks + 1))
    found=0
    while read -r word; do
        word=${word#"$opt "}
        word="|${word//[][()]/}|"
        ok=1
        for v in ${_keycustody_values[$opt]}; do
            [[ $word == *"|$v|"* ]] || ok=0
        done
        ((ok)) && found=1
    done < <(grep -oE -- "$opt [^ ]+" <<<"$helps")
    ((found)) && continue
    echo "FAIL: no command's usage gives $opt the values '${_keycustody_values[$opt]}'" >&2
    failed=$((failed + 1))
done

# vault names, read without a PIN, where a vault is expected
expect "${k}vault show " VaultCompl
expect_not "${k}vault show " Plain-Tok
expect_only "${k}vault show Va" VaultCompl
expect "${k}key list " VaultCompl
expect "${k}access show " VaultCompl
expect_only "${k}key create " VaultCompl/
expect_only "${k}key create Vau" VaultCompl/
expect_only "${k}key create VaultCompl/" # key names need the PIN
expect_not "${k}key create VaultCompl/K1 --size 2048 " VaultCompl/ VaultCompl
expect_only "${k}audit show --vault " VaultCompl
expect_only "${k}audit show --vault=V" VaultCompl
expect_only "${k}tenant offboard --service-vault " VaultCompl
# vault init: a token to adopt is one that is not a vault yet
expect "${k}vault init " Plain-Tok
expect_not "${k}vault init " VaultCompl

# a --module on the line is what the token list is read with
KEYCUSTODY_MODULE=$dir/no-such-module.so
expect_only "${k}vault show "
expect_only "${k}vault show --module $module " VaultCompl
expect_only "${k}vault show --module=$module V" VaultCompl
expect_only "${k}key create --module $module --pin-source env:KC_COMPL_PIN " VaultCompl/
# common options before the command group, as the binary takes them
expect_only "${k}--module $module vault show " VaultCompl
expect_only "${k}--module=$module --json vault show V" VaultCompl
expect_only "${k}--json va" vault
expect_only "${k}--json vault " init show list validate
expect "${k}--as x key create --" --size --module
expect "${k}--mod" --module
expect_only "${k}--pin-source e" env:
KEYCUSTODY_MODULE=$module

# files, and files of a kind
mkdir "$dir/lay" "$dir/lay/sub" "$dir/mods"
touch "$dir/lay/a.yaml" "$dir/lay/b.yml" "$dir/lay/notes.txt" "$dir/mods/x.module" \
    "$dir/mods/libx.so" "$dir/mods/readme" "$dir/store.db"
expect_only "${k}policy check $dir/lay/" "$dir/lay/a.yaml" "$dir/lay/b.yml" "$dir/lay/sub"
expect_only "${k}policy plan $dir/lay/n" "$dir/lay/notes.txt" # no layout: any file
expect_only "${k}policy apply $dir/lay/a" "$dir/lay/a.yaml"
expect_only "${k}key list VaultCompl --module $dir/mods/" "$dir/mods/x.module" "$dir/mods/libx.so"
expect "${k}vault list --module ${module%/*}/" "$module"
expect_only "${k}dep list --store $dir/st" "$dir/store.db"
expect_only "${k}dep list --store=$dir/st" "$dir/store.db"
expect_only "${k}audit verify --audit $dir/aud" "$dir/audit.jsonl"
expect_only "${k}key backup VaultCompl/K --out $dir/st" "$dir/store.db"

# PIN sources: env: and file: (after bash's ':' break, what follows it)
expect_only "${k}key list VaultCompl --pin-source " env: file:
expect_only "${k}key list VaultCompl --pin-source env:KC_COMPL_P" KC_COMPL_PIN
expect_only "${k}vault init X --so-pin-source env:KC_COMPL_S" KC_COMPL_SO_PIN
expect_only "${k}key list VaultCompl --pin-source VaultCompl=env:KC_COMPL_P" KC_COMPL_PIN
expect_only "${k}key list VaultCompl --pin-source file:$dir/st" "$dir/store.db"
expect_only "${k}key list VaultCompl --pin-source=file:$dir/st" "$dir/store.db"
COMP_WORDBREAKS=$' \t\n' # without '=' and ':' the whole word is replaced
expect_only "${k}key list VaultCompl --pin-source env:KC_COMPL_P" env:KC_COMPL_PIN
expect_only "${k}key create --protection=s" --protection=software
COMP_WORDBREAKS=$' \t\n"\'><=;|&(:'

# the token list: no terminal to prompt on, no service store, silent, bounded
mkdir "$dir/stub"
cat >"$dir/stub/keycustody" <<EOF
#!/bin/sh
[ "\$1" = --commands ] && exec "$bin" --commands
{ echo "args: \$*"; [ -t 0 ] && echo "stdin: terminal" || echo "stdin: no terminal"
  echo "store: [\${KEYCUSTODY_STORE-unset}]"; } >"$dir/stub.log"
echo "a diagnostic" >&2
exec sleep 60
EOF
chmod +x "$dir/stub/keycustody"
export KEYCUSTODY_STORE=$dir/store.db
start=$SECONDS
expect_only "$dir/stub/keycustody vault show --module $module --as x "
checks=$((checks + 1))
if ((SECONDS - start > 10)) || ! grep -qx "args: vault list --json --module $module" "$dir/stub.log" ||
    ! grep -qx "stdin: no terminal" "$dir/stub.log" || ! grep -qx "store: \[\]" "$dir/stub.log"; then
    echo "FAIL: the token list ran $((SECONDS - start)) s, as: $(cat "$dir/stub.log" 2>&1)" >&2
    failed=$((failed + 1))
fi
unset KEYCUSTODY_STORE
# the same from a shell on a terminal (script(1) makes one): the list still
# runs without one, where nothing can prompt
if type -P script >/dev/null; then
    cat >"$dir/on-tty.sh" <<EOF
source "$script"
COMP_LINE="$dir/stub/keycustody vault show "
COMP_POINT=\${#COMP_LINE}
_keycustody
echo "replies: [\${COMPREPLY[*]}]"
EOF
    rm -f "$dir/stub.log"
    out=$(script -qec "bash --norc $dir/on-tty.sh" /dev/null </dev/null 2>&1)
    checks=$((checks + 1))
    if [[ $out != *"replies: []"* || $out == *"a diagnostic"* ]] ||
        ! grep -qx "stdin: no terminal" "$dir/stub.log"; then
        echo "FAIL: on a terminal: [$out], the list ran as: $(cat "$dir/stub.log" 2>&1)" >&2
        failed=$((failed + 1))
    fi
else
    echo "test_completion: no script(1): completing on a terminal not checked"
fi

if ((failed > 0)); then
    echo "test_completion: $failed of $checks checks failed" >&2
    exit 1
fi
echo "test_completion: $checks checks passed"
