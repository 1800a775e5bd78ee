#!/usr/bin/env python3
"""What the slowest requests waited for: one harness run whose requests are
timed one by one (`--latency-log`), beside the server's threads' CPU time
(/proc/PID/task/*/schedstat, read every millisecond).

    scripts/tail-timeline.py [HARNESS ARGS...]

Runs `target/release/keysmith-bench --scenario throughput --runs 1
--duration 15 --no-build` plus HARNESS ARGS (e.g. `--licenses 10000`,
`--server-bin PATH`; build the harness and the server first). Prints the
share of the slowest 1% of requests (latency >= p99) that were sent while
the SQLite writer was copying the usage journal (a burst of writer CPU,
+-100 ms), the p50/p99 inside and outside those bursts, and the slow share
while the checkpointer ran. Linux only; the sampler costs a few percent
of one core.
"""
import atexit
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

WINDOW = 0.005  # seconds per bucket
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
bench = os.path.join(target, "release", "keysmith-bench")
if not os.access(bench, os.X_OK):
    sys.exit("build the harness first: cargo build --release -p keysmith-bench")

work = tempfile.mkdtemp()
atexit.register(shutil.rmtree, work, ignore_errors=True)
log = os.path.join(work, "latency.csv")
args = [bench, "--scenario", "throughput", "--runs", "1", "--duration", "15",
        "--no-build", "--latency-log", log] + sys.argv[1:]
harness = subprocess.Popen(args, cwd=root, stdout=subprocess.DEVNULL)


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


# The server is the harness's child that has a `sqlite-writer` thread.
server = None
while server is None and harness.poll() is None:
    for child in children(harness.pid):
        try:
            names = [open(f"/proc/{child}/task/{t}/comm").read().strip()
                     for t in os.listdir(f"/proc/{child}/task")]
        except OSError:
            continue
        if "sqlite-writer" in names:
            server = child
    time.sleep(0.05)
if server is None:
    sys.exit("the harness ended before a server with a SQLite writer started")

stats = {}
for tid in os.listdir(f"/proc/{server}/task"):
    name = open(f"/proc/{server}/task/{tid}/comm").read().strip()
    stats[f"{name}:{tid}"] = open(f"/proc/{server}/task/{tid}/schedstat")
samples = []  # (unix time, {thread: ns on a CPU})
while harness.poll() is None:
    now = time.time()
    row = {}
    try:
        for name, f in stats.items():
            f.seek(0)
            row[name] = int(f.read().split()[0])
    except (OSError, ValueError):
        break  # the server exited
    samples.append((now, row))
    time.sleep(0.001)
if harness.wait() != 0:
    sys.exit(f"the harness failed (exit {harness.returncode})")

lines = open(log).read().split("\n")
start = int(lines[0].split(",")[0]) / 1e6
requests = [tuple(map(int, l.split(","))) for l in lines[1:] if l]
latencies = sorted(r[1] for r in requests)
p99 = latencies[int(len(latencies) * 0.99)]
total, slow = collections.Counter(), collections.Counter()
for sent, latency, _ in requests:
    k = int((start + sent / 1e6) // WINDOW)
    total[k] += 1
    slow[k] += latency >= p99


def cpu_of(prefix):
    per = collections.Counter()
    for (_, a), (t, b) in zip(samples, samples[1:]):
        per[int(t // WINDOW)] += sum(b[n] - a[n] for n in b if n.startswith(prefix) and n in a)
    return per


writer, checkpointer = cpu_of("sqlite-writer"), cpu_of("sqlite-checkpoi")
lo, hi = min(total), max(total)
# A burst: windows where the writer ran > 0.5 ms, gaps of up to 20 ms
# bridged, 20 ms long at least.
bursts = []
for k in range(lo, hi + 1):
    if writer[k] > 0.5e6:
        if bursts and k - bursts[-1][1] <= 4:
            bursts[-1][1] = k
        else:
            bursts.append([k, k])
bursts = [b for b in bursts if b[1] - b[0] >= 4]
near = {k for b0, b1 in bursts for k in range(b0 - 20, b1 + 21)}


def pct(part, whole):
    return f"{100 * part / whole:.1f}%" if whole else "-"


def summary(name, keys):
    lat = sorted(l for s, l, _ in requests if int((start + s / 1e6) // WINDOW) in keys)
    if not lat:
        return f"{name}: no requests"
    n = len(lat)
    return (f"{name}: {n} requests, p50 {lat[n // 2] / 1000:.2f} ms, "
            f"p99 {lat[int(n * 0.99)] / 1000:.2f} ms")


slow_total = sum(slow.values())
print(f"{len(requests)} requests, p50 {latencies[len(latencies) // 2] / 1000:.2f} ms, "
      f"p99 {p99 / 1000:.2f} ms; slowest 1%: {slow_total}")
lengths = [(b1 - b0 + 1) * WINDOW * 1000 for b0, b1 in bursts]
print(f"writer bursts: {len(bursts)}, {sum(lengths) / max(len(lengths), 1):.0f} ms long on average")
print(f"slowest 1% sent within 100 ms of a burst: {pct(sum(slow[k] for k in near), slow_total)} "
      f"(those stretches: {pct(len(near & set(total)), len(total))} of the time)")
print(summary("  near a burst", near))
print(summary("  elsewhere   ", set(total) - near))
busy = {k for k in total if checkpointer[k] > 0.3e6}
print(f"slowest 1% sent while the checkpointer ran: {pct(sum(slow[k] for k in busy), slow_total)} "
      f"({pct(len(busy), len(total))} of the time)")
