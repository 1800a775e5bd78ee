#!/usr/bin/env bash
# Contract fuzz: starts a real keysmith-server on 127.0.0.1 with a fresh data
# dir, seeds a plan and a license, and runs schemathesis (from PyPI, in
# .venv-ci/) against the server's own /api/v1/openapi.json. Fails on any 5xx,
# any answer whose status, content type, headers or body the document does not
# allow, a schema-violating request that is accepted, and a management route
# that ignores its admin token.
#
#   scripts/schemathesis.sh                 # the bounded CI run
#   ST_MAX_EXAMPLES=500 ST_MAX_TIME=1800 scripts/schemathesis.sh   # longer
#   KEYSMITH_SERVER_BIN=target/release/keysmith-server scripts/schemathesis.sh
#   ST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/schemathesis.sh
#
# With ST_DATABASE_URL the server runs on a fresh PostgreSQL database made
# there (and dropped after) instead of SQLite: PostgreSQL refuses input that
# SQLite takes (a NUL in text, `jsonb` numbers), and only a run on it finds
# the 500s that makes. The server binary is built on its own, with its own
# features, as users build it (a workspace test build adds test crates'
# features).
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=$PWD/.venv-ci
MAX_EXAMPLES=${ST_MAX_EXAMPLES:-40}
MAX_TIME=${ST_MAX_TIME:-150}
SEED=${ST_SEED:-}
TOKEN=schemathesis-admin-token-0123456789

if [ "$("$VENV/bin/st" --version 2>/dev/null)" != "st, version $SCHEMATHESIS_VERSION" ]; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

BIN=${KEYSMITH_SERVER_BIN:-}
if [ -z "$BIN" ]; then
    cargo build --quiet -p keysmith-server
    target=${CARGO_TARGET_DIR:-target}
    case $target in /*) ;; *) target=$PWD/$target ;; esac
    BIN=$target/debug/keysmith-server
fi

work=$(mktemp -d)
server_pid=
db_admin=${ST_DATABASE_URL:-}
db_name=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    if [ -n "$db_name" ]; then psql -q "$db_admin" -c "DROP DATABASE IF EXISTS $db_name WITH (FORCE)" || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

database_args=()
if [ -n "$db_admin" ]; then
    db_name=ks_schemathesis_$$_$RANDOM
    psql -q "$db_admin" -c "CREATE DATABASE $db_name"
    base=${db_admin%%\?*}
    query=
    case $db_admin in *\?*) query="?${db_admin#*\?}" ;; esac
    database_args=(--database "${base%/*}/$db_name$query")
    echo "== on PostgreSQL, database $db_name"
fi

# Rate limits off: the fuzzer is one client sending thousands of requests,
# and the limiter has tests of its own (tests/tests/server_hardening.rs).
KEYSMITH_ADMIN_TOKEN=$TOKEN "$BIN" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
    --rate-limit 0 --failed-lookup-limit 0 "${database_args[@]}" >"$work/stdout" 2>"$work/server.log" &
server_pid=$!
url=
for _ in $(seq 1 300); do
    url=$(sed -n 's/^keysmith-server listening on //p' "$work/stdout")
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; echo "server exited at start"; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { cat "$work/server.log"; echo "server did not start"; exit 1; }
echo "== keysmith-server at $url"

# Seed a plan, a license that has taken seats, and a webhook registered
# first, so the license's events give it delivery attempts (port 9 refuses
# them) for the deliveries and redeliver routes to list and resend.
"$VENV/bin/python" - "$url" "$TOKEN" <<'PY'
import json, sys, urllib.request

url, token = sys.argv[1], sys.argv[2]

def call(method, path, body, admin=True):
    req = urllib.request.Request(url + "/api/v1" + path, method=method, data=json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if admin:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)

call("POST", "/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["license.created", "license.activated"]})
call("PUT", "/plans/pro", {"features": ["sso", "audit-log"], "max_domains": 2, "max_machines": 2, "offline_grace_days": 7})
license = call("POST", "/licenses", {"plan": "pro", "customer_email": "dev@example.com", "metadata": {"order": "1"}})
call("POST", "/validate", {"key": license["key"], "domain": "example.com", "fingerprint": "m-1"}, admin=False)
PY

echo "== schemathesis: at most $MAX_EXAMPLES examples per operation, $MAX_TIME s"
start=$SECONDS
status=0
# From the temp dir, so schemathesis's own state (.schemathesis/) stays there.
(cd "$work" && "$VENV/bin/st" --no-color run "$url/api/v1/openapi.json" \
    --url "$url" \
    -H "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,ignored_auth \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_TIME" \
    --workers 2 \
    --request-timeout 10 \
    --generation-database none \
    ${SEED:+--seed "$SEED"} \
    --report junit --report-dir "$work/report") || status=$?
echo "== schemathesis finished in $((SECONDS - start)) s with exit code $status"
if grep -q ' status=5[0-9][0-9] ' "$work/server.log"; then
    echo "server errors logged:"
    grep ' status=5[0-9][0-9] ' "$work/server.log" | head -20
    grep 'storage failure' "$work/server.log" | head -10 || true
fi
exit "$status"
