#!/usr/bin/env bash
# test_postgres.sh - CTest postgres.smoke: the private PostgreSQL server of
# scripts/postgres.sh (fixture "postgres") is reachable over its socket
# KC_TEST_PG_HOST as the invoking OS user, lets that user make and drop a
# database (the C tests make one per test), and listens on no TCP address.
set -euo pipefail

fail() { echo "test_postgres: FAIL: $*" >&2; exit 1; }

[ -n "${KC_TEST_PG_HOST:-}" ] || fail "KC_TEST_PG_HOST is not set (the test needs FIXTURES_REQUIRED postgres)"
[ -S "$KC_TEST_PG_HOST/.s.PGSQL.5432" ] || fail "no server socket in $KC_TEST_PG_HOST (did postgres.start run?)"
# only the server's user (and root) may reach the socket
mode=$(stat -L -c %a "$KC_TEST_PG_HOST")
[ "$mode" = 700 ] || fail "socket directory $KC_TEST_PG_HOST has mode $mode, not 700"

me=$(id -un)
uri="postgresql:///keycustody?host=$KC_TEST_PG_HOST"
q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }

who=$(q -d "$uri" -c 'SELECT current_user') || fail "cannot connect to $uri"
[ "$who" = "$me" ] || fail "connected as role '$who', expected '$me' (peer authentication)"

la=$(q -d "$uri" -c 'SHOW listen_addresses')
[ -z "$la" ] || fail "listen_addresses is '$la': the server listens on TCP"
super=$(q -d "$uri" -c 'SELECT rolsuper FROM pg_roles WHERE rolname = current_user')
[ "$super" = f ] || fail "role $me is a superuser"

db=kc_smoke_$$
q -d "$uri" -c "CREATE DATABASE $db" || fail "CREATE DATABASE $db as $me"
got=$(q -d "postgresql:///$db?host=$KC_TEST_PG_HOST" \
        -c 'CREATE TABLE t (k text PRIMARY KEY, v bytea)' \
        -c "INSERT INTO t VALUES ('a', '\\x00ff')" \
        -c 'SELECT encode(v, '"'hex'"') FROM t') || fail "using database $db"
[ "$got" = 00ff ] || fail "read back '$got' from $db"
q -d "$uri" -c "DROP DATABASE $db" || fail "DROP DATABASE $db"
left=$(q -d "$uri" -c "SELECT count(*) FROM pg_database WHERE datname = '$db'")
[ "$left" = 0 ] || fail "database $db still there after DROP"

# and no TCP listener of the postmaster's, where ss can tell
pid=$(cat "$(dirname "$KC_TEST_PG_HOST")/postgres.pid" 2>/dev/null || true)
if [ -n "$pid" ] && command -v ss >/dev/null; then
    if ss -Hltnp 2>/dev/null | grep -F "pid=$pid," >/dev/null; then
        fail "postgres (pid $pid) has a TCP listener: $(ss -Hltnp | grep -F "pid=$pid,")"
    fi
fi
echo "test_postgres: OK (role $me, socket $KC_TEST_PG_HOST, no TCP)"
