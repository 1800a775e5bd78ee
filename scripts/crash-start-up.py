#!/usr/bin/env python3
"""Start-up after a crash that left the usage journal full: how long until
the server listens, and until the journal's backlog is copied in.

    scripts/crash-start-up.py [--records N] [--runs N] [--licenses N]
                              [--server-bin PATH ...]

Copies the harness's cached data set (`target/bench-data/<licenses>/seed`,
made by `keysmith-bench --seed-only`), writes a journal of N records
(default 350,000: ~64 MiB, about the most the journal holds before appends
move to a new file) past its watermark, as a `kill -9` under load would
leave it with nothing copied, then starts each server binary (default
`target/release/keysmith-server`) on it and times, from the spawn:
"listening" (the line on stdout), `/healthz` answering, a validation
that takes no seat answered `VALID` (the data set's first key, on a
domain it holds), and a read that waits for the usage journal to be
copied (`GET /api/v1/licenses/:id`).
With several binaries the runs alternate. Prints one line per run and the
medians. Linux only.
"""
import argparse
import json
import os
import shutil
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib

ADMIN_TOKEN = "crash-start-up-admin-token"
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--records", type=int, default=350_000)
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--licenses", type=int, default=1_000_000)
parser.add_argument("--server-bin", action="append", default=[])
args = parser.parse_args()
binaries = args.server_bin or [os.path.join(target, "release", "keysmith-server")]
seed = os.path.join(target, "bench-data", str(args.licenses), "seed")
if not os.path.exists(os.path.join(seed, "keysmith.db")):
    sys.exit(f"no data set at {seed}: run keysmith-bench --seed-only "
             f"--licenses {args.licenses} first")
for binary in binaries:
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} is not an executable: cargo build --release -p keysmith-server")


def journal(db, records):
    """The journal bytes: a header, then `records` records past the watermark."""
    conn = sqlite3.connect(db)
    (through,) = conn.execute("SELECT ingested_through FROM usage_journal").fetchone()
    low, high = conn.execute("SELECT MIN(seq), MAX(seq) FROM licenses").fetchone()
    (license_id,) = conn.execute("SELECT id FROM licenses WHERE seq = ?", (low,)).fetchone()
    conn.close()
    out = [b"KSUSAGE2", struct.pack("<Q", through)]
    now = int(time.time())
    step = max(1, (high - low) // records)
    for n in range(records):
        seq = low + (n * step) % (high - low + 1)
        payload = json.dumps({
            "license_seq": seq, "at": now, "code": "VALID",
            "domain": f"app{seq % 7}.example.com", "fingerprint": None,
            "ip": "127.0.0.1", "user_agent": "keysmith-sdk/0.1 (crash-start-up)",
            "country": None,
        }, separators=(",", ":")).encode()
        out.append(struct.pack("<II", len(payload), zlib.crc32(payload)))
        out.append(payload)
    return b"".join(out), license_id


# Straight to the server on loopback, whatever proxy the environment names.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with opener.open(request, timeout=60) as answer:
        return answer.status


def validate(base, key):
    """Validates `key` on the first domain the harness's seeding gave it."""
    body = json.dumps({"key": key, "domain": "app0.customer0.example.com"}).encode()
    request = urllib.request.Request(base + "/api/v1/validate", data=body,
                                     headers={"Content-Type": "application/json"})
    with opener.open(request, timeout=60) as answer:
        code = json.load(answer).get("code")
    if code != "VALID":
        sys.exit(f"the first key of the data set validated as {code}")


def run(binary, journal_bytes, license_id):
    work = tempfile.mkdtemp(prefix="crash-start-up-")
    try:
        data = os.path.join(work, "data")
        shutil.copytree(seed, data)
        with open(os.path.join(data, "keysmith.db-usage"), "wb") as f:
            f.write(journal_bytes)
            os.fsync(f.fileno())
        env = dict(os.environ, KEYSMITH_ADMIN_TOKEN=ADMIN_TOKEN)
        spawned = time.monotonic()
        server = subprocess.Popen(
            [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        try:
            base = None
            for line in server.stdout:
                prefix = "keysmith-server listening on "
                if line.startswith(prefix):
                    base = line[len(prefix):].strip()
                    break
            if base is None:
                sys.exit(f"{binary} did not listen")
            listening = time.monotonic() - spawned
            while True:
                try:
                    get(base + "/healthz")
                    break
                except OSError:
                    time.sleep(0.001)
            healthy = time.monotonic() - spawned
            validate(base, first_key)
            validated = time.monotonic() - spawned
            get(f"{base}/api/v1/licenses/{license_id}")
            copied = time.monotonic() - spawned
            return listening, healthy, validated, copied
        finally:
            server.kill()
            server.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


journal_bytes, license_id = journal(os.path.join(seed, "keysmith.db"), args.records)
with open(os.path.join(seed, "..", "keys.txt")) as f:
    first_key = f.readline().strip()
print(f"{args.records} records, {len(journal_bytes) / 2**20:.1f} MiB of journal, "
      f"{args.licenses} licenses")
results = {binary: [] for binary in binaries}
for i in range(args.runs):
    for binary in binaries:
        timings = run(binary, journal_bytes, license_id)
        results[binary].append(timings)
        ms = [f"{t * 1000:.0f}" for t in timings]
        print(f"run {i + 1} {binary}: listening {ms[0]} ms, /healthz {ms[1]} ms, "
              f"validated {ms[2]} ms, journal copied {ms[3]} ms")
for binary, runs in results.items():
    ms = [f"{statistics.median(r[k] for r in runs) * 1000:.0f}" for k in range(4)]
    print(f"median {binary}: listening {ms[0]} ms, /healthz {ms[1]} ms, "
          f"validated {ms[2]} ms, journal copied {ms[3]} ms")
