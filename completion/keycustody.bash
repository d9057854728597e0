# bash completion for keycustody                           -*- shell-script -*-
#
# Installed as share/bash-completion/completions/keycustody; from a build
# tree, 'source completion/keycustody.bash' (it completes the binary named
# first on the line, whichever it is: keycustody, build/keycustody, ...).
#
# Commands, their first operand and their options come from that binary
# ('keycustody --commands'), read once per shell and binary, so they are
# those of the version installed. Vault names come from 'keycustody vault
# list --json', which needs no PIN; it runs with the --module options of the
# line, no terminal to prompt on, no service store (completing does not pin
# vaults in it), stderr discarded and a time limit.

# Values of the options that take one of a few words (test_completion.sh
# holds each list to the usage of the commands that take the option).
declare -gA _keycustody_values=(
    [--sku]="premium standard"
    [--size]="2048 3072 4096"
    [--protection]="hsm software"
    [--kty]="RSA RSA-HSM"
    [--alg]="RSA-OAEP RSA-OAEP-256"
    [--enabled]="true false"
    [--expires]="never"
    [--role]="administrator service"
    [--workload]="tenant exchange sharepoint"
    [--format]="dot svg"
)

# Runs the binary, bounded in time, silent, never on a terminal.
# $1: seconds, $2: binary, then its arguments.
_keycustody_run()
{
    local secs=$1
    shift
    if type -P timeout >/dev/null 2>&1; then
        timeout -k 1 "$secs" "$@" </dev/null 2>/dev/null
    else
        "$@" </dev/null 2>/dev/null
    fi
}

# Reads 'BIN --commands' into _keycustody_groups (in order), _keycustody_verbs
# (group -> its verbs; none for status, rewrap), _keycustody_operand and
# _keycustody_opts ("group verb" -> first operand of its usage; its options,
# '=' after those that take a value). Kept while BIN is the same file.
_keycustody_load()
{
    local bin=$1 id key verb i IFS=$' \t\n'
    local -a w
    id="$bin $(stat -L -c '%Y %s' -- "$bin" 2>/dev/null)"
    [[ $id == "${_keycustody_loaded-}" ]] && return 0
    _keycustody_groups=()
    declare -gA _keycustody_verbs=() _keycustody_operand=() _keycustody_opts=()
    while read -r -a w; do
        ((${#w[@]} > 0)) || continue
        i=1
        verb=
        if [[ ${w[1]-} == [a-z]* ]]; then
            verb=${w[1]}
            i=2
        fi
        key=${w[0]}${verb:+ $verb}
        [[ -n ${_keycustody_verbs[${w[0]}]+set} ]] || _keycustody_groups+=("${w[0]}")
        _keycustody_verbs[${w[0]}]+=${verb:+$verb }
        if [[ -n ${w[i]-} && ${w[i]} != -* ]]; then
            _keycustody_operand[$key]=${w[i]}
            ((i++))
        fi
        _keycustody_opts[$key]="${w[*]:i}"
    done < <(_keycustody_run 5 "$bin" --commands)
    ((${#_keycustody_groups[@]} > 0)) && _keycustody_loaded=$id
}

# Token labels from 'vault list --json' that are vault names, one a line.
# $1: binary, $2: vaults (keycustody vaults), others (initialised tokens that
# are not vaults yet) or all; then the --module options to pass on.
# In each entry of the list "vault" comes before its token's "label".
_keycustody_tokens()
{
    local bin=$1 which=$2 t vault=''
    shift 2
    while read -r t; do
        case $t in
        '"vault"'*true) vault=1 ;;
        '"vault"'*false) vault=0 ;;
        '"label"'*)
            t=${t#*:}
            t=${t#*\"}
            t=${t%\"}
            [[ $t =~ ^[A-Za-z0-9-]{3,24}$ ]] || continue
            case $which in
            vaults) [[ $vault == 1 ]] || continue ;;
            others) [[ $vault == 0 ]] || continue ;;
            esac
            printf '%s\n' "$t"
            ;;
        esac
    done < <(KEYCUSTODY_STORE='' _keycustody_run 3 "$bin" vault list --json "$@" |
        grep -oE '"(vault|label)"[[:space:]]*:[[:space:]]*(true|false|"[^"\\]*")')
}

# Adds each line of stdin to COMPREPLY, after the prefix $1.
_keycustody_reply()
{
    local c
    while IFS= read -r c; do
        COMPREPLY+=("$1$c")
    done
}

# File names starting with $2, after the prefix $1; with patterns after it,
# directories and the files matching one, else (none matches) every file.
_keycustody_files()
{
    local pre=$1 cur=$2 p n
    shift 2
    compopt -o filenames 2>/dev/null
    if (($# > 0)); then
        n=${#COMPREPLY[@]}
        for p in "$@"; do
            _keycustody_reply "$pre" < <(compgen -f -X "!$p" -- "$cur")
        done
        if ((${#COMPREPLY[@]} > n)); then
            _keycustody_reply "$pre" < <(compgen -d -- "$cur")
            return
        fi
    fi
    _keycustody_reply "$pre" < <(compgen -f -- "$cur")
}

# The value of option $1, typed so far as $2, after the prefix $3 (the
# "--opt=" of the same word); $4: binary, then the --module options.
_keycustody_value()
{
    local opt=$1 cur=$2 pre=$3 bin=$4
    shift 4
    case $opt in
    --store | --audit | --out | --in | --layout | --domain | --custodian | --byok | --pem)
        _keycustody_files "$pre" "$cur"
        ;;
    --module)
        # VAULT=MODULE: a vault name before '=' (a path has a '/' there)
        if [[ $cur == *=* && ${cur%%=*} != */* ]]; then
            pre+=${cur%%=*}=
            cur=${cur#*=}
        fi
        _keycustody_files "$pre" "$cur" '*.so' '*.so.*' '*.module'
        ;;
    --pin-source | --so-pin-source)
        # VAULT=SOURCE: a vault name before '=' (no ':' there)
        if [[ $cur == *=* && ${cur%%=*} != *:* ]]; then
            pre+=${cur%%=*}=
            cur=${cur#*=}
        fi
        case $cur in
        env:*) _keycustody_reply "${pre}env:" < <(compgen -e -- "${cur#env:}") ;;
        file:*) _keycustody_files "${pre}file:" "${cur#file:}" ;;
        *) _keycustody_reply "$pre" < <(compgen -W 'env: file:' -- "$cur") ;;
        esac
        ;;
    --vault | --service-vault)
        _keycustody_reply "$pre" < <(compgen -W "$(_keycustody_tokens "$bin" vaults "$@")" -- "$cur")
        ;;
    *)
        [[ -n ${_keycustody_values[$opt]-} ]] &&
            _keycustody_reply "$pre" < <(compgen -W "${_keycustody_values[$opt]}" -- "$cur")
        ;;
    esac
}

# The first operand of command $1 ("group verb"), typed so far as $2;
# $3: binary, then the --module options.
_keycustody_operand()
{
    local key=$1 cur=$2 bin=$3 what=${_keycustody_operand[$1]-}
    shift 3
    case $key:$what in
    "vault init":*)
        # a token labelled NAME is adopted
        _keycustody_reply "" < <(compgen -W "$(_keycustody_tokens "$bin" others "$@")" -- "$cur")
        ;;
    *:VAULT/* | *:\[VAULT/*)
        [[ $cur == */* ]] && return # key names need the vault's PIN
        _keycustody_reply "" < <(compgen -S / -W "$(_keycustody_tokens "$bin" vaults "$@")" -- "$cur")
        ;;
    *:VAULT* | vault\ *:NAME*)
        _keycustody_reply "" < <(compgen -W "$(_keycustody_tokens "$bin" vaults "$@")" -- "$cur")
        ;;
    *:TOKEN* | *:\[TOKEN*)
        _keycustody_reply "" < <(compgen -W "$(_keycustody_tokens "$bin" all "$@")" -- "$cur")
        ;;
    *:FILE*)
        _keycustody_files "" "$cur" '*.yaml' '*.yml'
        ;;
    esac
}

_keycustody()
{
    local line bin group verb='' verbs key opts cur w o expect='' brk pre IFS=$' \t\n'
    local -a words modules=()
    local n i first operands=0 dashdash=0
    COMPREPLY=()

    # The words up to the cursor, split on blanks only: '=' and ':' stay
    # inside the word ("--store=PATH", "file:PATH").
    if [[ -n ${COMP_LINE-} ]]; then
        line=${COMP_LINE:0:${COMP_POINT:-${#COMP_LINE}}}
        read -r -a words <<<"$line"
        [[ $line == *[[:blank:]] ]] && words+=("")
    else
        words=("${COMP_WORDS[@]:0:COMP_CWORD+1}")
    fi
    n=${#words[@]}
    ((n >= 2)) || return 0
    cur=${words[n - 1]}

    bin=${words[0]/#\~/$HOME}
    bin=$(type -P -- "$bin") || return 0
    _keycustody_load "$bin" || return 0

    # Common options before the command group ("keycustody --module M vault
    # list"): their --module values are kept, then they are set aside, as
    # the binary moves them after the command. 'vault list' takes exactly
    # the common options.
    local common=" ${_keycustody_opts[vault list]-} " lead=1
    while ((lead < n - 1)) && [[ ${words[lead]} == --?* ]]; do
        w=${words[lead]}
        if [[ $w == --*=* ]]; then
            [[ ${w%%=*} == --module ]] && modules+=("$w")
        elif [[ $common == *" $w= "* ]]; then
            if ((lead + 1 == n - 1)); then
                _keycustody_value "$w" "$cur" "" "$bin" "${modules[@]}"
                lead=-1 # completed: only what follows below is left to do
                break
            fi
            [[ $w == --module ]] && modules+=(--module "${words[lead + 1]}")
            ((lead++))
        fi
        ((lead++))
    done
    if ((lead > 0)); then
        words=("${words[0]}" "${words[@]:lead}")
        n=${#words[@]}
    fi

    if ((lead < 0)); then
        :
    elif ((n == 2)); then
        if [[ $cur == --*=* ]]; then
            o=${cur%%=*}
            [[ $common == *" $o= "* ]] &&
                _keycustody_value "$o" "${cur#*=}" "$o=" "$bin" "${modules[@]}"
        elif [[ $cur == -* ]]; then
            _keycustody_reply "" < <(compgen -W "--version ${common//=/}" -- "$cur")
        else
            _keycustody_reply "" < <(compgen -W "${_keycustody_groups[*]}" -- "$cur")
        fi
    else
        group=${words[1]}
        [[ -n ${_keycustody_verbs[$group]+set} ]] || return 0
        verbs=${_keycustody_verbs[$group]}
        first=2
        if [[ -n $verbs ]]; then
            if ((n == 3)); then
                if [[ $cur == -* ]]; then
                    _keycustody_reply "" < <(compgen -W '--help' -- "$cur")
                else
                    _keycustody_reply "" < <(compgen -W "$verbs" -- "$cur")
                fi
                return 0
            fi
            verb=${words[2]}
            [[ " $verbs " == *" $verb "* ]] || return 0
            first=3
        fi
        key=$group${verb:+ $verb}
        opts=" ${_keycustody_opts[$key]} "

        # What is before the cursor: operands, the --module options, and
        # whether the word under it is an option's value.
        for ((i = first; i < n - 1; i++)); do
            w=${words[i]}
            if [[ -n $expect ]]; then
                [[ $expect == --module ]] && modules+=(--module "$w")
                expect=
            elif ((dashdash)) || [[ $w != -?* ]]; then
                ((operands++))
            elif [[ $w == -- ]]; then
                dashdash=1
            elif [[ $w == --*=* ]]; then
                [[ ${w%%=*} == --module ]] && modules+=("$w")
            elif [[ $opts == *" $w= "* ]]; then
                expect=$w
            fi
        done

        if [[ -n $expect ]]; then
            _keycustody_value "$expect" "$cur" "" "$bin" "${modules[@]}"
        elif ((dashdash == 0)) && [[ $cur == --*=* ]]; then
            o=${cur%%=*}
            [[ $opts == *" $o= "* ]] &&
                _keycustody_value "$o" "${cur#*=}" "$o=" "$bin" "${modules[@]}"
        elif ((dashdash == 0)) && [[ $cur == -* ]]; then
            _keycustody_reply "" < <(compgen -W "${opts//=/}" -- "$cur")
        elif ((operands == 0)); then
            _keycustody_operand "$key" "$cur" "$bin" "${modules[@]}"
        fi
    fi

    # Readline replaces only what follows the last '=' or ':' of the word
    # when COMP_WORDBREAKS has them: each reply loses what goes before.
    brk=
    [[ ${COMP_WORDBREAKS-} == *=* ]] && brk+='='
    [[ ${COMP_WORDBREAKS-} == *:* ]] && brk+=':'
    if [[ -n $brk && $cur == *["$brk"]* ]]; then
        pre=${cur%"${cur##*["$brk"]}"}
        COMPREPLY=("${COMPREPLY[@]#"$pre"}")
    fi
    for w in "${COMPREPLY[@]}"; do
        if [[ $w == *[/:=] ]]; then
            compopt -o nospace 2>/dev/null
            break
        fi
    done
    return 0
}

complete -F _keycustody keycustody
