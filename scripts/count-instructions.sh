#!/usr/bin/env bash
# Counts the instructions a validation costs the server, with callgrind:
# the same count for the same binary and load whatever else the machine
# does, so two builds compare in one run of each even on a noisy VM (the
# harness's rates drift by 10-20% between sets there). Kernel time is not
# counted, and rep-prefixed memset/memcpy count each repetition.
#
#   scripts/count-instructions.sh [SERVER_BIN] [LICENSES]
#
# SERVER_BIN defaults to target/release/keysmith-server, LICENSES to 10000
# (a data set the harness seeds and caches). The harness drives the server
# under valgrind with 4 connections for 8 s (~5,000 answers). Prints the
# instructions per signed answer of the connection tasks (HTTP, routing,
# JSON, the look-up, the journal append), of the signature alone, and of
# the SQLite writer thread. Needs valgrind and python3; the harness must be
# built (cargo build --release -p keysmith-bench).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(realpath "${1:-target/release/keysmith-server}")
licenses=${2:-10000}
bench=${CARGO_TARGET_DIR:-target}/release/keysmith-bench
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
[ -x "$bench" ] || { echo "build the harness first: cargo build --release -p keysmith-bench" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/server.sh" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$work/callgrind.%p "$bin" "\$@"
EOF
chmod +x "$work/server.sh"

"$bench" --scenario single --licenses "$licenses" --connections 4 --duration 8 --warmup 1 \
    --no-build --server-bin "$work/server.sh" >"$work/bench.json" 2>"$work/bench.log" || {
    cat "$work/bench.log" >&2
    exit 1
}
# The serving process wrote the largest profile (a data set from an older
# schema also gets a short migration run first).
profile=$(ls -S "$work"/callgrind.* | head -1)
callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$profile" >"$work/inclusive.txt" 2>/dev/null
callgrind_annotate --auto=no --tree=calling --threshold=100 "$profile" >"$work/tree.txt" 2>/dev/null

python3 - "$work/inclusive.txt" "$work/tree.txt" <<'EOF'
import re
import sys

inclusive = open(sys.argv[1]).read().splitlines()
tree = open(sys.argv[2]).read()

def largest(pattern):
    """The largest inclusive count of the lines naming `pattern`."""
    best = 0
    for line in inclusive:
        if re.search(pattern, line):
            m = re.match(r"\s*([\d,]+)", line)
            if m:
                best = max(best, int(m.group(1).replace(",", "")))
    return best

signed = [int(n.replace(",", "")) for n in re.findall(r"ED25519_sign_no_self_test \(([\d,]+)x\)", tree)]
if not signed:
    sys.exit("no signature in the profile: did the server answer any validation?")
answers = max(signed)
connections = largest(r"http\.rs:keysmith_server::http::serve::\{\{closure\}\}::\{\{closure\}\}(\s|$)")
signature = largest(r"_ED25519_sign(\s|$)")
writer = largest(r"sqlite::run_writer(\s|$)")
print(f"signed answers:                              {answers:>9,}")
print(f"connection tasks, per answer, no signature:  {(connections - signature) // answers:>9,}")
print(f"the signature, per answer:                   {signature // answers:>9,}")
print(f"the SQLite writer, per answer:               {writer // answers:>9,}")
EOF
