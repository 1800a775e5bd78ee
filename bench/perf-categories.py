"""Buckets perf samples of keysmith-server by what the stack is doing.

Usage (see docs/performance.md):
    perf script -i perf.data -F comm,tid,ip,sym > perf.txt
    python3 bench/perf-categories.py perf.txt

Reads `perf script -F comm,tid,ip,sym` output. Each sample goes to the first
rule (in order) whose pattern matches any frame of its stack, leaf first."""
import re, sys, collections

RULES = [
    # writer thread
    ("writer: WAL checkpoint (auto, in commit)", "sqlite-writer", r"sqlite3WalCheckpoint|sqlite3Checkpoint"),
    ("writer: expiry sweep query (full index scan)", "sqlite-writer", r"expire_due"),
    ("writer: fsync of commit", "sqlite-writer", r"__x64_sys_fsync|fdatasync"),
    ("writer: pread (SQLite page-cache miss)", "sqlite-writer", r"__x64_sys_pread64"),
    ("writer: pwrite (WAL append)", "sqlite-writer", r"__x64_sys_pwrite64"),
    ("writer: event JSON / load_license (first activation)", "sqlite-writer", r"record_event|load_license"),
    ("writer: SQLite b-tree/VDBE (queries, inserts, update)", "sqlite-writer", r"sqlite3|rusqlite"),
    ("writer: malloc/free", "sqlite-writer", r"malloc|_int_free|cfree|realloc"),
    ("writer: channel/wake-ups", "sqlite-writer", r"futex|mpsc|oneshot|schedule"),
    ("writer: other", "sqlite-writer", r"."),
    # workers
    ("workers: Ed25519 signature (SHA-512 + scalar mult)", "tokio", r"curve25519|ed25519|sha512|Sha512"),
    ("workers: rest of token::sign (claims JSON, base64, key_id)", "tokio", r"token::sign"),
    ("workers: request log line (tracing fmt + write to stderr)", "tokio", r"tracing_subscriber|tracing_core::event|ksys_write"),
    ("workers: JSON (request parse, answer, claims)", "tokio", r"serde_json|IntoResponse.*Json|Json.*into_response"),
    ("workers: key check / domain / sha256", "tokio", r"keysmith_core::key|normalize_domain|idna|sha256|Sha256|validate::check"),
    ("workers: socket send/recv syscalls (loopback TCP)", "tokio", r"writev|__libc_recv|sys_recvfrom|sys_sendto|tcp_|__x64_sys_read|__x64_sys_write"),
    ("workers: epoll / scheduler / wake-ups", "tokio", r"epoll|futex|tokio::runtime|schedule|park"),
    ("workers: HTTP parsing/encoding (hyper)", "tokio", r"hyper::proto|httparse|http::header"),
    ("workers: malloc/free", "tokio", r"malloc|_int_free|cfree|realloc"),
    ("workers: other (axum/tower/hyper plumbing)", "tokio", r"."),
    ("other threads", "", r"."),
]
compiled = [(name, comm, re.compile(pat)) for name, comm, pat in RULES]

def samples(lines):
    comm, stack = None, []
    for line in lines:
        if not line.strip():
            if comm is not None:
                yield comm, stack
            comm, stack = None, []
        elif not line.startswith(("\t", " ")):
            comm, stack = line.split()[0], []
        else:
            parts = line.strip().split(None, 1)
            stack.append(parts[1] if len(parts) > 1 else "")
    if comm is not None:
        yield comm, stack

counts = collections.Counter()
total = 0
for comm, stack in samples(open(sys.argv[1])):
    total += 1
    for name, want, pattern in compiled:
        if want and not comm.startswith(want):
            continue
        if any(pattern.search(f) for f in stack):
            counts[name] += 1
            break
for name, _, _ in RULES:
    if counts[name]:
        print(f"{100*counts[name]/total:5.1f}%  {name}")
print(f"{total} samples")
