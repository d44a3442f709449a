#!/usr/bin/env python3
"""Webhook ingest throughput: Baton's POST /webhooks/whatsapp against a bare Flask baseline.

In one run, with identical gunicorn settings and the same load generator:
  (a) bench/hello_app.py — a POST endpoint that reads the body and returns a small JSON;
  (b) Baton (`wsgi:app`) with a private redis-server, a fresh SQLite database in a temp
      dir, WHATSAPP_PROVIDER=sandbox and a known app secret. No RQ worker runs: this
      measures verify + record + hand-off to the inbound lane, not routing.

Each request is a signed Cloud API text webhook with a unique message id from a
spread of customers (most hit an existing conversation, a few create one), signed
before the timed window. Load: --connections closed-loop connections for
--duration s after a --warmup, --repeats times (median reported).

    .venv/bin/python bench/ingest.py              # defaults: -w 2 -k gevent, 8 connections, 3 x 10 s
    .venv/bin/python bench/ingest.py --help

Both servers run on production's web settings by default: gunicorn.conf.py's worker class
(gevent) and worker count (WEB_CONCURRENCY=2), gunicorn's default 1,000 connections per gevent
worker (as gunicorn.conf.py), keep-alive 5 s. `--workers 4 --worker-class sync` gives the older
figures.

Goal: baton_rps / hello_rps >= 0.5 and Baton p99 < 25 ms at 8 connections.
"""
from __future__ import annotations

import argparse
import array
import json
import multiprocessing
import os
import random
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

TEXTS = [
    "Hi, is my order 48213 on its way?", "hello", "Do you deliver on Saturdays?",
    "I need to change the delivery address for my last order, can someone help?",
    "Thanks!", "What are your opening hours?", "2", "The package arrived damaged 😞",
    "Can I pay by bank transfer?", "ok", "Hola, ¿tienen envío a Valencia?", "menu",
    "I was charged twice for the same order, please check", "Bonjour, une question sur ma commande",
    "Where can I find my invoice?", "👍",
]
WEBHOOK_PATH = "/webhooks/whatsapp"


# -- load generators ----------------------------------------------------------------

def ensure_wrk(mode: str, allow_install: bool) -> str | None:
    """Path of wrk, installing it with apt-get when allowed; None means: use Python."""
    if mode == "python":
        return None
    found = shutil.which("wrk")
    if found is None and allow_install and shutil.which("apt-get"):
        print("wrk is not installed; trying `apt-get install -y wrk` …", flush=True)
        cmd = ["apt-get", "install", "-y", "-q", "wrk"]
        if os.geteuid() != 0:
            cmd = ["sudo", "-n", *cmd] if shutil.which("sudo") else None
        if cmd:
            try:
                subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
                               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            except (OSError, subprocess.TimeoutExpired):
                pass
        found = shutil.which("wrk")
    if found is None:
        if mode == "wrk":
            raise SystemExit("wrk is not installed and could not be installed (use --generator python)")
        print("wrk unavailable: falling back to the Python load generator", flush=True)
    return found


def write_bodies(prefix: str, per_thread: list[list[tuple[str, bytes]]]) -> None:
    for n, rows in enumerate(per_thread, start=1):
        with open(f"{prefix}.{n}", "wb") as out:
            for sig, body in rows:
                out.write(sig.encode() + b"\t" + body + b"\n")


def run_wrk(stack: bl.Stack, wrk: str, port: int, bodies: list[list[tuple[str, bytes]]], duration: int,
            connections: int, tmp: str, label: str) -> dict:
    prefix = os.path.join(tmp, f"bodies-{label}")
    write_bodies(prefix, bodies)
    argv = [wrk, "-t", str(len(bodies)), "-c", str(connections), "-d", f"{duration}s", "--timeout", "5s",
            "-s", str(bl.BENCH_DIR / "wrk_post.lua"), f"http://127.0.0.1:{port}{WEBHOOK_PATH}"]
    log = os.path.join(tmp, f"wrk-{label}.log")
    if os.path.exists(log):
        os.remove(log)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = stack.spawn(f"wrk-{label}", argv, env={**os.environ, "BENCH_BODIES": prefix}, log_dir=tmp)
    try:
        proc.wait(timeout=duration + 120)
    finally:
        stack.stop(proc)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for n in range(1, len(bodies) + 1):
        os.remove(f"{prefix}.{n}")
    text = Path(log).read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{text}")
    r = json.loads(line[len("BENCH_JSON "):])
    wall = r["duration_us"] / 1e6
    socket_errors = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
    return {
        "requests": r["requests"], "sent": r["sent"], "wall_s": wall, "rps": r["requests"] / wall,
        "p50_ms": r["lat_p50_us"] / 1000, "p90_ms": r["lat_p90_us"] / 1000, "p99_ms": r["lat_p99_us"] / 1000,
        "p999_ms": r["lat_p999_us"] / 1000, "max_ms": r["lat_max_us"] / 1000,
        "ok_200": r["requests"] - r["non200"], "non200": r["non200"], "socket_errors": socket_errors,
        "errors": r["non200"] + socket_errors, "wrapped": r["wrapped"],
        "gen_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def _raw_request(port: int, sig: str, body: bytes) -> bytes:
    head = (f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-Hub-Signature-256: {sig}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _roundtrip(sock: socket.socket, req: bytes) -> tuple[int, bool]:
    sock.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, close = 0, False
    for ln in lines[1:]:
        key, _, value = ln.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"connection" and value.strip().lower() == b"close":
            close = True
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    return status, close


def _py_slot(port, reqs, start, stop, out):
    lat = array.array("d")
    sent = ok = non200 = errors = wrapped = 0
    sock = None
    i = 0
    while time.time() < start:
        time.sleep(0.001)
    while time.time() < stop:
        if sock is None:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                errors += 1
                time.sleep(0.01)
                continue
        if i >= len(reqs):
            i, wrapped = 0, wrapped + 1
        req = reqs[i]
        i += 1
        sent += 1
        t0 = time.perf_counter()
        try:
            status, close = _roundtrip(sock, req)
        except OSError:
            errors += 1
            sock.close()
            sock = None
            continue
        t1 = time.perf_counter()
        if time.time() <= stop:
            lat.append(t1 - t0)
            if status == 200:
                ok += 1
            else:
                non200 += 1
        if close:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    out.append((lat, sent, ok, non200, errors, wrapped))


def _py_proc(port, slots, start, stop, queue):
    out: list = []
    threads = [threading.Thread(target=_py_slot, args=(port, reqs, start, stop, out)) for reqs in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = array.array("d")
    totals = [0, 0, 0, 0, 0]
    for slot_lat, *counts in out:
        lat.extend(slot_lat)
        totals = [a + b for a, b in zip(totals, counts)]
    queue.put((lat.tobytes(), totals))


def run_python(port: int, bodies: list[list[tuple[str, bytes]]], duration: int, connections: int) -> dict:
    """Closed loop: `connections` sockets spread over one process per CPU, threads inside."""
    flat = [b for rows in bodies for b in rows]
    per_conn = [[_raw_request(port, sig, body) for sig, body in flat[c::connections]]
                for c in range(connections)]
    nprocs = max(1, min(connections, os.cpu_count() or 1))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start = time.time() + 0.5
    stop = start + duration
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [ctx.Process(target=_py_proc, args=(port, per_conn[p::nprocs], start, stop, queue))
             for p in range(nprocs)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=duration + 60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lat = array.array("d")
    totals = [0, 0, 0, 0, 0]
    for raw, counts in results:
        part = array.array("d")
        part.frombytes(raw)
        lat.extend(part)
        totals = [a + b for a, b in zip(totals, counts)]
    sent, ok, non200, errors, wrapped = totals
    values = sorted(lat)
    requests = len(values)

    def p(q):
        v = bl.percentile(values, q)
        return None if v is None else v * 1000

    return {
        "requests": requests, "sent": sent, "wall_s": float(duration), "rps": requests / duration,
        "p50_ms": p(50), "p90_ms": p(90), "p99_ms": p(99), "p999_ms": p(99.9),
        "max_ms": values[-1] * 1000 if values else None,
        "ok_200": ok, "non200": non200, "socket_errors": errors, "errors": non200 + errors, "wrapped": wrapped,
        "gen_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


# -- payloads ------------------------------------------------------------------------

class Payloads:
    """Signed bodies with unique message ids; `customers` stable wa_ids plus a share of new ones."""

    def __init__(self, customers: int, new_share: float, seed: int = 7):
        self.customers = customers
        self.new_share = new_share
        self.rng = random.Random(seed)
        self.seq = 0
        self.fresh = 0
        self.tag = os.urandom(3).hex().upper()

    def make(self, count: int, threads: int) -> list[list[tuple[str, bytes]]]:
        rows: list[list[tuple[str, bytes]]] = [[] for _ in range(threads)]
        now = int(time.time())
        for n in range(count):
            if self.rng.random() < self.new_share:
                self.fresh += 1
                wa_id, name = f"1666{self.fresh:07d}", f"New Customer {self.fresh}"
            else:
                wa_id, name = bl.customer(self.rng.randrange(self.customers))
            self.seq += 1
            message_id = f"wamid.BENCH{self.tag}{self.seq:010d}{self.rng.getrandbits(48):012X}"
            body, sig = bl.signed_webhook(wa_id, self.rng.choice(TEXTS), name, message_id, now)
            rows[n % threads].append((sig, body))
        return rows


# -- the phases ------------------------------------------------------------------------

def gunicorn_cpu(proc) -> float:
    return bl.cpu_seconds(bl.tree(proc.pid))


def measure(stack, args, wrk, port, bodies, duration, tmp, label, server_proc, extra_pids=(), profile_tag=None):
    profiles = []
    if profile_tag:
        workers = {f"web{n}": pid for n, pid in enumerate(bl.children(server_proc.pid))}
        profiles = bl.start_profiles(stack, workers, duration, bl.RESULTS_DIR / "profiles", profile_tag,
                                     idle=args.profile_idle)
    cpu0 = gunicorn_cpu(server_proc)
    extra0 = bl.cpu_seconds(list(extra_pids))
    sys0, load0 = bl.system_busy_seconds(), bl.loadavg()
    if wrk:
        r = run_wrk(stack, wrk, port, bodies, duration, args.connections, tmp, label)
    else:
        r = run_python(port, bodies, duration, args.connections)
    system = bl.system_busy_seconds() - sys0
    r["server_cpu_s"] = gunicorn_cpu(server_proc) - cpu0
    ours = r["server_cpu_s"] + r["gen_cpu_s"]
    if extra_pids:
        r["redis_cpu_s"] = bl.cpu_seconds(list(extra_pids)) - extra0
        ours += r["redis_cpu_s"]
    r["system_cpu_s"] = system
    r["foreign_cpu_pct"] = max(0.0, 100 * (system - ours) / r["wall_s"])
    r["loadavg_before"], r["loadavg_after"] = load0, bl.loadavg()
    if profiles:
        bl.wait_profiles(stack)
        r["profiles"] = [str(p.relative_to(bl.ROOT)) for p in profiles if p.exists()]
    return r


def count_inbound(db: str) -> int:
    """Inbound message rows in the bench's database (a SQLite path or a PostgreSQL URL)."""
    if db.startswith("postgresql://"):
        import psycopg2

        with psycopg2.connect(db) as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM message WHERE direction = 'in'")
            return cur.fetchone()[0]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute("SELECT COUNT(*) FROM message WHERE direction = 'in'").fetchone()[0]


@contextmanager
def postgres_database(admin_url: str | None):
    """A fresh PostgreSQL database for one run (dropped afterwards); None: SQLite."""
    if not admin_url:
        yield None
        return
    import psycopg2

    name = f"baton_bench_ingest_{os.getpid()}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class Hello:
    """The baseline server and its bodies (ids do not matter to it, so one set may wrap)."""

    def __init__(self, stack, args, wrk, tmp):
        self.stack, self.args, self.wrk, self.tmp = stack, args, wrk, tmp
        self.proc, self.port = bl.start_gunicorn(stack, "hello", "hello_app:app", bl.BENCH_DIR, args,
                                                 bl.server_env(), tmp)
        threads = args.wrk_threads if wrk else 1
        self.bodies = Payloads(args.customers, args.new_share, seed=1).make(8000 * threads, threads)
        print(f"baseline: hello_app on :{self.port}", flush=True)

    def run(self, seconds: int, label: str) -> dict:
        return measure(self.stack, self.args, self.wrk, self.port, self.bodies, seconds, self.tmp, label,
                       self.proc)


class Baton:
    """Baton's web tier on a private Redis and a fresh SQLite database; no RQ worker."""

    def __init__(self, stack, args, wrk, tmp, database_url: str | None = None):
        self.stack, self.args, self.wrk, self.tmp = stack, args, wrk, tmp
        self.redis_url = bl.start_redis(stack)
        self.redis_proc = stack.procs[-1][1]
        port = bl.free_port()
        env = bl.baton_env(tmp, self.redis_url, port)
        if database_url:
            env["DATABASE_URL"] = database_url
        if args.log_level:
            env["LOG_LEVEL"] = args.log_level
        bl.init_db(env, tmp)
        self.proc, self.port = bl.start_gunicorn(stack, "baton-web", "wsgi:app", bl.ROOT, args, env, tmp, port=port)
        self.db = database_url or f"{tmp}/baton.db"
        self.threads = args.wrk_threads if wrk else 1
        self.payloads = Payloads(args.customers, args.new_share, seed=2)
        print(f"Baton: wsgi:app on :{self.port}, redis {self.redis_url}, db {self.db}", flush=True)

    def bodies_for(self, seconds: int, ref_rps: float):
        # Enough unique ids that no thread wraps (a repeated id is a duplicate, not a new row).
        count = int(max(20000, self.args.bodies_factor * max(ref_rps, 1000) * seconds))
        return self.payloads.make(count, self.threads)

    def warmup(self, seconds: int, ref_rps: float) -> dict:
        return measure(self.stack, self.args, self.wrk, self.port, self.bodies_for(seconds, ref_rps), seconds,
                       self.tmp, "baton-warmup", self.proc)

    def run(self, n: int, ref_rps: float, profile_tag: str | None) -> dict:
        args = self.args
        bodies = self.bodies_for(args.duration, ref_rps)      # signed before the timed window
        rows0 = count_inbound(self.db)
        r = measure(self.stack, args, self.wrk, self.port, bodies, args.duration, self.tmp, f"baton-{n}",
                    self.proc, extra_pids=[self.redis_proc.pid], profile_tag=profile_tag)
        time.sleep(1.0)                                     # requests in flight at the cut-off finish
        rows = count_inbound(self.db) - rows0
        r["rows_recorded"] = rows
        # A request cut off by the end of the window may be recorded without its 200 being counted,
        # so the check is: every 200 has its row (nothing acknowledged lost) and rows <= sent.
        r["acked_lost"] = max(0, r["ok_200"] - rows)
        r["recorded_unacked"] = max(0, rows - r["ok_200"])
        r["rows_check"] = r["ok_200"] <= rows <= r["sent"] and not r["wrapped"]
        return r


def summarize(runs: list[dict]) -> dict:
    keys = ["rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "server_cpu_s", "gen_cpu_s",
            "foreign_cpu_pct"]
    s = {k: bl.median([r.get(k) for r in runs]) for k in keys}
    s["errors"] = sum(r["errors"] for r in runs)
    s["requests"] = sum(r["requests"] for r in runs)
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per timed run (default: 10)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before the runs (default: 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per server; the median counts (default: 3)")
    ap.add_argument("--connections", type=int, default=8, help="concurrent connections (default: 8)")
    bl.add_server_args(ap)
    # What production's web runs (gunicorn.conf.py: gevent, WEB_CONCURRENCY=2), for both servers.
    ap.set_defaults(workers=2, worker_class="gevent")
    ap.add_argument("--customers", type=int, default=1000, help="distinct returning customers (default: 1000)")
    ap.add_argument("--new-share", type=float, default=0.02,
                    help="share of requests from a brand-new customer (default: 0.02)")
    ap.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                    help="load generator: wrk (+Lua) when available, else Python (default: auto)")
    ap.add_argument("--no-install", action="store_true", help="do not try `apt-get install wrk`")
    ap.add_argument("--wrk-threads", type=int, default=2, help="wrk -t (default: 2)")
    ap.add_argument("--bodies-factor", type=float, default=1.5,
                    help="unique bodies per run = factor x baseline req/s x duration (default: 1.5)")
    ap.add_argument("--postgres", nargs="?", const="postgresql://postgres@127.0.0.1:5432/postgres", default=None,
                    metavar="ADMIN_URL", help="run Baton on a fresh PostgreSQL database created (and dropped) "
                    "through ADMIN_URL (default: postgresql://postgres@127.0.0.1:5432/postgres) instead of SQLite")
    ap.add_argument("--log-level", default=None, help="Baton LOG_LEVEL (default: Baton's own)")
    ap.add_argument("--ratio-goal", type=float, default=0.5)
    ap.add_argument("--p99-goal-ms", type=float, default=25.0)
    ap.add_argument("--profile", action="store_true",
                    help="py-spy record every Baton web worker during the first timed run "
                         "(collapsed stacks under bench/results/profiles/; needs py-spy)")
    bl.add_common_args(ap)
    ap.add_argument("--hold", type=int, default=0, help="keep Baton up N s after the runs (for profiling)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (database, logs)")
    args = ap.parse_args(argv)
    if args.wrk_threads > args.connections:
        args.wrk_threads = args.connections

    wrk = ensure_wrk(args.generator, not args.no_install)
    quiet = bl.wait_quiet(args.wait_quiet)
    generator = "wrk+lua" if wrk else "python"
    print(f"ingest benchmark: {bl.server_desc(args)}, {args.connections} connections, "
          f"{args.repeats} x {args.duration} s (+{args.warmup} s warm-up), generator {generator}, "
          f"{'PostgreSQL' if args.postgres else 'SQLite'}", flush=True)
    with postgres_database(args.postgres) as database_url, bl.Stack(keep_tmp=args.keep_tmp) as stack:
        tmp = stack.tempdir("baton-bench-ingest-")
        hello_srv = Hello(stack, args, wrk, tmp)
        baton_srv = Baton(stack, args, wrk, tmp, database_url)
        print(f"warm-up {args.warmup} s each; then {args.repeats} pairs of timed runs (baseline, Baton)", flush=True)
        ref = hello_srv.run(args.warmup, "hello-warmup")["rps"]
        baton_srv.warmup(args.warmup, ref)
        hello_runs, baton_runs = [], []
        for n in range(args.repeats):
            h = hello_srv.run(args.duration, f"hello-{n}")
            hello_runs.append(h)
            ref = max(ref, h["rps"])
            tag = f"ingest-{time.strftime('%Y%m%dT%H%M%S')}" if args.profile and n == 0 else None
            r = baton_srv.run(n, ref, tag)
            r["ratio"] = r["rps"] / h["rps"] if h["rps"] else None
            baton_runs.append(r)
            print(f"  pair {n + 1}/{args.repeats}: hello {h['rps']:,.0f} req/s p99 {h['p99_ms']:.2f} ms | "
                  f"Baton {r['rps']:,.0f} req/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms "
                  f"errors {r['errors']} rows {r['rows_recorded']:,} vs 200s {r['ok_200']:,}"
                  f"{'' if r['rows_check'] else '  <-- ROW CHECK FAILED'}", flush=True)
        baton_info = {"port": baton_srv.port, "redis_url": baton_srv.redis_url, "db": baton_srv.db,
                      "total_rows": count_inbound(baton_srv.db)}
        if args.hold:
            print(f"--hold: both servers stay up for {args.hold} s (hello :{hello_srv.port}, "
                  f"Baton :{baton_srv.port})", flush=True)
            time.sleep(args.hold)
        hello = summarize(hello_runs)
        baton = summarize(baton_runs)

    # Is the generator fast enough? requests per generator-CPU-second is what it could do with a
    # whole core to itself; it should be >= 2x the baseline rate.
    gen_capacity = bl.median([r["requests"] / r["gen_cpu_s"] for r in hello_runs if r["gen_cpu_s"] > 0])
    gen_ok = gen_capacity is not None and gen_capacity >= 2 * hello["rps"]
    ratio = baton["rps"] / hello["rps"] if hello["rps"] else None       # of the medians
    pair_ratio = bl.median([r["ratio"] for r in baton_runs])
    rows_ok = all(r["rows_check"] for r in baton_runs)
    goal_ratio = ratio is not None and ratio >= args.ratio_goal
    goal_p99 = baton["p99_ms"] is not None and baton["p99_ms"] < args.p99_goal_ms
    cpus = os.cpu_count() or 1

    print()
    print(f"Webhook ingest — median of {args.repeats} x {args.duration} s, {args.connections} connections, "
          f"{bl.server_desc(args)}, {generator}, {cpus} CPUs")
    print(bl.table(
        ["server", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "server CPU %", "gen CPU %",
         "other CPU %"],
        [[name, s["rps"], s["p50_ms"], s["p90_ms"], s["p99_ms"], s["max_ms"], s["errors"],
          100 * s["server_cpu_s"] / args.duration, 100 * s["gen_cpu_s"] / args.duration, s["foreign_cpu_pct"]]
         for name, s in (("hello (baseline)", hello), ("Baton /webhooks/whatsapp", baton))]))
    print()
    print("Baton runs (ratio: against the baseline run just before; rows: inbound message rows written):")
    print(bl.table(["run", "req/s", "p99 ms", "ratio", "200s", "sent", "rows", "acked lost", "recorded unacked",
                    "redis CPU %", "other CPU %", "check"],
                   [[n + 1, r["rps"], r["p99_ms"], fmt_ratio(r["ratio"]), r["ok_200"], r["sent"], r["rows_recorded"],
                     r["acked_lost"], r["recorded_unacked"], 100 * r["redis_cpu_s"] / args.duration,
                     r["foreign_cpu_pct"], r["rows_check"]]
                    for n, r in enumerate(baton_runs)]))
    print()
    print(f"ratio baton/hello req/s   {fmt_ratio(ratio)}   (median of per-pair ratios {fmt_ratio(pair_ratio)}; "
          f"goal >= {args.ratio_goal})  "
          f"{'MET' if goal_ratio else 'MISSED'}")
    print(f"Baton p99                 {bl.fmt(baton['p99_ms'], 2)} ms   (goal < {args.p99_goal_ms} ms)  "
          f"{'MET' if goal_p99 else 'MISSED'}")
    print(f"nothing acknowledged lost {'yes' if rows_ok else 'NO'}")
    print(f"generator capacity        {bl.fmt(gen_capacity, 0)} req/s per CPU-second "
          f"({'>=' if gen_ok else '<'} 2 x baseline: {'ok' if gen_ok else 'THE GENERATOR MAY BE THE LIMIT'})")
    goal = goal_ratio and goal_p99 and rows_ok
    warning = bl.busy_warning(max(hello["foreign_cpu_pct"] or 0, baton["foreign_cpu_pct"] or 0))
    if warning:
        print(warning)
    print(f"GOAL {'MET' if goal else 'MISSED'}")

    path = bl.write_result("ingest", {
        "benchmark": "ingest", "machine": bl.machine_info(), "generator": generator,
        "config": {k: v for k, v in vars(args).items()},
        "hello": {"median": hello, "runs": hello_runs},
        "baton": {"median": baton, "runs": baton_runs, "info": baton_info},
        "busy_warning": warning, "cpu_before_start_pct": quiet, "ratio": ratio, "ratio_median_of_pairs": pair_ratio, "generator_capacity_rps": gen_capacity, "generator_ok": gen_ok,
        "goals": {"ratio": args.ratio_goal, "p99_ms": args.p99_goal_ms, "ratio_met": goal_ratio,
                  "p99_met": goal_p99, "nothing_acked_lost": rows_ok, "met": goal},
    })
    print(f"\nresult written to {path.relative_to(bl.ROOT)}")
    return 0


def fmt_ratio(ratio):
    return "-" if ratio is None else f"{ratio:.3f}"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped and removed", file=sys.stderr)
        sys.exit(130)
