#!/usr/bin/env python3
"""End to end on the path production takes: signed webhook → recorded → routed → built-in bot
answers → Cloud API adapter → a fake Graph API over HTTP receives the answer.

For each rate of --rates, a fresh stack (one per rate, so a backlog left by one rate cannot slow
the next): a private redis-server, a fresh database (SQLite with Baton's own production settings,
WAL + synchronous=FULL, or with --database postgres a database of its own on 127.0.0.1:5432,
created and dropped), bench/fake_graph.py in its own process (gevent; --graph-latency-ms before
it answers each send), and the Procfile's processes started the way ./run.sh starts them: the
Procfile's `web` line (gunicorn with the repository's gunicorn.conf.py: gevent, its default
WEB_CONCURRENCY), its `worker` line --workers times (run.sh: `honcho -c worker=2`; --workers 1
is the Procfile started as it is) and its `cron` line, with WHATSAPP_PROVIDER=cloud_api pointing
at the fake. Then signed Cloud API text webhooks ("hello", "hola", …: greetings the built-in rule
bot answers, one reply each) are sent OPEN LOOP at the rate for --warmup + --duration s from a
pool of customers, none of whom writes more often than every --min-gap s.

Latency of a message = the fake's arrival time of the bot's answer minus time.time() just before
the (first) webhook POST (one machine, one clock). The answer is found without guessing: the
adapter sends Baton's outbound message id as biz_opaque_callback_data; the fake records it, and
the database maps it to its bot turn and the inbound message (our provider message id).

--duplicates F --shuffle: each customer writes two messages back to back (payload timestamps one
second apart tell the true order); with --shuffle a pair is delivered swapped with probability
--swap-share; a share F of the webhooks is delivered again up to a second later. Counted:
answers out of order (and of those, the ones Baton had both messages recorded before it routed
the first: those are misrouted; an older message that arrives after the newer one was routed is
answered after it, as docs/architecture.md's invariant 4 says), duplicated answers and lost ones.

Baseline in the same run: the same sender at the same rate against bench/hello_app.py on the
same gunicorn (the repository's gunicorn.conf.py); the e2e / baseline-POST ratios are reported.

    .venv/bin/python bench/e2e.py --rates 100,300 --duration 15
    .venv/bin/python bench/e2e.py --rates 100 --graph-latency-ms 200 --workers 1
    .venv/bin/python bench/e2e.py --rates 1000 --duplicates 0.1 --shuffle
    .venv/bin/python bench/e2e.py --help

Goal (issue 13): e2e p99 < 150 ms with nothing unanswered at 1,000 msg/s for 60 s.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import re
import resource
import shlex
import sqlite3
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

GREETINGS = ["hello", "hi", "Hello!", "hola", "good morning", "bonjour", "hallo", "ciao", "oi", "hey",
             "Hi there", "hello 👋", "Buenos días", "Good evening"]
WEBHOOK_PATH = "/webhooks/whatsapp"
TOKEN = "bench-graph-token"
PROBES = 10


# -- the plan and the open-loop sender ------------------------------------------------------

def make_plan(args, start_wall: float, tag: str) -> list[dict]:
    """Who sends what when: offsets i/rate, customers never closer than min-gap (+ jitter).

    With args.pairs each pick of a customer is two messages, back to back, whose payload
    timestamps are a second apart; args.swap_share of the pairs are delivered swapped and
    args.duplicates of the webhooks are delivered again (1..rate slots later, i.e. within a
    second). Every delivery gets the next slot i/rate: the offered rate is webhooks a second."""
    rng = random.Random(11)
    pairs = getattr(args, "pairs", False)
    per_pick = 2 if pairs else 1
    share = getattr(args, "duplicates", 0.0)
    total = int(args.rate * (args.warmup + args.duration) / (1 + share))      # + the copies = rate x time
    available = list(range(args.customers))
    cooling: list[tuple[float, int]] = []          # (available again at offset, customer)
    slots: list[dict] = []
    while len(slots) < total:
        offset = len(slots) / args.rate
        cooling.sort()
        while cooling and cooling[0][0] <= offset:
            available.append(cooling.pop(0)[1])
        if not available:
            raise SystemExit(f"--customers {args.customers} is too few for --rate {args.rate} with "
                             f"--min-gap {args.min_gap} s (need > rate x 2 x min-gap)")
        pick = rng.randrange(len(available))
        available[pick], available[-1] = available[-1], available[pick]
        c = available.pop()
        cooling.append((offset + args.min_gap + rng.uniform(0, args.min_gap), c))
        wa_id, name = bl.customer(c)
        stamp = int(start_wall + offset)
        burst = []
        for k in range(per_pick):
            message_id = f"wamid.E2E{tag}{len(slots) + k:08d}{rng.getrandbits(40):010X}"
            body, sig = bl.signed_webhook(wa_id, rng.choice(GREETINGS), name, message_id, stamp + k)
            burst.append({"wa_id": wa_id, "id": message_id, "body": body, "sig": sig, "stamp": stamp + k,
                          "copy": False})
        if pairs and rng.random() < getattr(args, "swap_share", 0.0):
            burst.reverse()
        slots.extend(burst)
    if share:       # a copy goes 1..rate slots after its original (sorting keys, not list.insert: 60k items)
        keyed = [(i, item) for i, item in enumerate(slots)]
        keyed += [(i + rng.randint(1, max(2, int(args.rate))) + 0.5, {**item, "copy": True})
                  for i, item in enumerate(slots) if rng.random() < share]
        slots = [item for _, item in sorted(keyed, key=lambda pair: pair[0])]
    plan = []
    for i, item in enumerate(slots):
        offset = i / args.rate
        plan.append({**item, "offset": offset, "warmup": offset < args.warmup})
    return plan


def open_loop(port: int, plan: list[dict], threads: int, lead: float = 1.0, max_threads: int = 2000) -> float:
    """Send plan[i] at start + offset whatever earlier answers do (open loop): when every sender
    thread is waiting on a slow answer, another thread is started (up to max_threads), so a slow
    server cannot slow the offered rate down. Fills t_sched/t_post/t_ack/status; returns the start."""
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    lock = threading.Lock()
    idle = [0]

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                idle[0] += 1
            item = jobs.get()
            with lock:
                idle[0] -= 1
            if item is None:
                conn.close()
                return
            t_post = time.time()
            status = bl.post_signed(conn, WEBHOOK_PATH, item["body"], item["sig"])
            item["t_post"], item["t_ack"], item["status"] = t_post, time.time(), status

    pool: list[threading.Thread] = []

    def grow():
        t = threading.Thread(target=worker, daemon=True)
        t.start()
        pool.append(t)

    for _ in range(threads):
        grow()
    start_mono = time.monotonic() + lead
    start_wall = time.time() + lead
    for item in plan:          # on Ctrl-C the daemon threads are simply abandoned
        target = start_mono + item["offset"]
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with lock:
            busy = idle[0] == 0
        if busy and len(pool) < max_threads:
            grow()
        item["t_sched"] = start_wall + item["offset"]
        jobs.put(item)
    for _ in pool:
        jobs.put(None)
    deadline = time.monotonic() + 120            # the slowest answer (the HTTP timeout is 30 s)
    for t in pool:
        t.join(timeout=max(0.1, deadline - time.monotonic()))
    plan_threads[0] = max(plan_threads[0], len(pool))
    return start_wall


plan_threads = [0]      # the most sender threads one open_loop() needed (reported)


def pct_table(values_ms: list[float]) -> dict:
    v = sorted(values_ms)
    return {"n": len(v), "p50": bl.percentile(v, 50), "p90": bl.percentile(v, 90), "p95": bl.percentile(v, 95),
            "p99": bl.percentile(v, 99), "max": v[-1] if v else None}


def sender_stats(plan: list[dict]) -> dict:
    measured = [m for m in plan if not m["warmup"]]
    ok = [m for m in measured if m.get("status") == 200]
    posts = sorted(m["t_post"] for m in measured if "t_post" in m)
    span = posts[-1] - posts[0] if len(posts) > 1 else 0
    return {
        "sent": len(posts), "ok_200": len(ok), "errors": len(measured) - len(ok),
        "achieved_rate": (len(posts) - 1) / span if span else None,
        "post_ms": pct_table([(m["t_ack"] - m["t_post"]) * 1000 for m in ok]),
        "sender_lag_ms": pct_table([(m["t_post"] - m["t_sched"]) * 1000 for m in measured if "t_post" in m]),
    }


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# -- the processes: the Procfile as ./run.sh starts it -----------------------------------------

def procfile() -> dict[str, list[str]]:
    """{name: argv} of the repository's Procfile (argv[0] resolved in the venv)."""
    lines = {}
    for line in (bl.ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.startswith("#"):
            argv = shlex.split(command)
            lines[name.strip()] = [bl.tool(argv[0]), *argv[1:]]
    return lines


def gunicorn_env(port: int, base: dict | None = None) -> dict:
    """gunicorn.conf.py reads BATON_BIND; everything else stays at its defaults (bl.server_env
    removes WEB_CONCURRENCY, BATON_WORKER_CLASS … from the caller's environment)."""
    env = dict(base or bl.server_env())
    env["BATON_BIND"] = f"127.0.0.1:{port}"
    return env


def web_workers() -> int:
    """gunicorn.conf.py's default WEB_CONCURRENCY (the children keep it: bl.server_env drops the variable)."""
    found = re.search(r'"WEB_CONCURRENCY",\s*"(\d+)"', (bl.ROOT / "gunicorn.conf.py").read_text())
    return int(found.group(1)) if found else 1


def start_web(stack, name: str, argv: list[str], env: dict, port: int, log_dir: str):
    proc = stack.spawn(name, argv, env=env, log_dir=log_dir)
    bl.wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)
    deadline = time.time() + 30
    while len(bl.children(proc.pid)) < web_workers() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    return proc


def start_fake(stack, args, tmp: str) -> tuple[str, object]:
    port = bl.free_port()
    proc = stack.spawn("fake-graph", [sys.executable, str(bl.BENCH_DIR / "fake_graph.py"), "--port", str(port),
                                      "--token", TOKEN, "--latency-ms", str(args.graph_latency_ms)],
                       env=bl.server_env(), log_dir=tmp)
    bl.wait_port(port, proc)
    return f"http://127.0.0.1:{port}", proc


class Database:
    """The run's database: a fresh SQLite file, or a PostgreSQL database of its own."""

    def __init__(self, kind: str, tmp: str, admin_dsn: str):
        self.kind, self.admin_dsn = kind, admin_dsn
        if kind == "sqlite":
            self.path = f"{tmp}/baton.db"
            self.url = f"sqlite:///{self.path}"
        else:
            import psycopg2

            self.name = f"baton_bench_e2e_{os.getpid()}_{os.urandom(3).hex()}"
            admin = psycopg2.connect(admin_dsn)
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.name}"')
            admin.close()
            self.url = f"{admin_dsn.rsplit('/', 1)[0]}/{self.name}"

    def rows(self, sql: str) -> list[tuple]:
        if self.kind == "sqlite":
            with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30) as conn:
                return conn.execute(sql).fetchall()
        import psycopg2

        conn = psycopg2.connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()

    def backend_pids(self) -> list[int]:
        """PostgreSQL server processes serving this database (their CPU is Baton's too)."""
        if self.kind == "sqlite":
            return []
        import psycopg2

        conn = psycopg2.connect(self.admin_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,))
                return [r[0] for r in cur.fetchall()]
        finally:
            conn.close()

    def drop(self) -> None:
        if self.kind == "sqlite":
            return
        import psycopg2

        admin = psycopg2.connect(self.admin_dsn)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        admin.close()


def start_baton(stack, args, tmp: str, rate: float, db: Database, graph: str) -> dict:
    redis_url = bl.start_redis(stack)
    redis_proc = stack.procs[-1][1]
    port = bl.free_port()
    extra = {"WHATSAPP_PROVIDER": "cloud_api", "WHATSAPP_ACCESS_TOKEN": TOKEN,
             "WHATSAPP_API_BASE": f"{graph}/v23.0", "WHATSAPP_MPS": args.mps or max(80, int(rate * 2))}
    if args.log_level:
        extra["LOG_LEVEL"] = args.log_level
    env = gunicorn_env(port, bl.baton_env(tmp, redis_url, port, **extra))
    env["DATABASE_URL"] = db.url
    bl.init_db(env, tmp)
    lines = procfile()
    web = start_web(stack, "baton-web", lines["web"], env, port, tmp)
    workers = [stack.spawn(f"rq-worker-{n}", lines["worker"], env=env, log_dir=tmp) for n in range(args.workers)]
    cron = stack.spawn("cron", lines["cron"], env=env, log_dir=tmp)
    return {"port": port, "redis_url": redis_url, "redis": redis_proc, "web": web, "workers": workers,
            "cron": cron, "env": env}


# -- the fake's record and the database's map ---------------------------------------------------

class Sends:
    """The fake's accepted sends, fetched incrementally: [(at, to, reference, wamid)] in order."""

    def __init__(self, graph: str):
        self.graph, self.rows = graph, []

    def fetch(self) -> list:
        with urllib.request.urlopen(f"{self.graph}/_bench/sends?since={len(self.rows)}", timeout=60) as r:
            self.rows.extend(json.loads(r.read()))
        return self.rows


ANSWERS_SQL = """
SELECT i.provider_message_id, i.received_at, t.created_at, om.id, om.received_at, om.status
FROM message i
LEFT JOIN bot_turn t ON t.message_id = i.id
LEFT JOIN message om ON om.turn_id = t.id AND om.direction = 'out'
WHERE i.direction = 'in'
"""


def wait_answers(sends: Sends, expected: int, deadline: float) -> int:
    """Until the fake has `expected` sends (or the deadline): how many it has."""
    while True:
        got = len(sends.fetch())
        if got >= expected or time.time() > deadline:
            return got
        time.sleep(0.25)


def probe(baton, sends: Sends, args) -> None:
    """A few messages through the whole pipeline before the clock starts (imports, caches, pumps)."""
    plan = []
    for n in range(PROBES):
        wa_id, name = bl.customer(args.customers + n)
        body, sig = bl.signed_webhook(wa_id, "hello", name, f"wamid.PROBE{n:04d}", int(time.time()))
        plan.append({"offset": n * 0.05, "warmup": True, "id": f"wamid.PROBE{n:04d}", "body": body, "sig": sig})
    open_loop(baton["port"], plan, 4, lead=0.1)
    bad = [m.get("status") for m in plan if m.get("status") != 200]
    if bad:
        raise RuntimeError(f"probe webhooks were refused: {bad[:3]} (see the baton-web log)")
    got = wait_answers(sends, len(plan), time.time() + 60)
    if got < len(plan):
        for proc in [baton["web"], *baton["workers"], baton["cron"]]:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        raise RuntimeError(f"only {got}/{len(plan)} probe messages were answered within 60 s")


def order_check(plan: list[dict], answers: dict, rows: dict) -> dict:
    """Per customer, answers (the fake's order of arrival) must follow the messages' true order
    (payload timestamps). An inversion is *misrouted* when the older message's webhook had been
    acknowledged (so it was committed and in its inbox) before the newer one was routed
    (bot_turn.created_at); otherwise it is a late arrival, answered under the state of now
    (docs/architecture.md, invariant 4). bot_turn.created_at is stamped after the pump took the
    message from the inbox, so an inversion within a few ms of that boundary may be a race of
    the measurement: the examples give the gap."""
    firsts = {}
    for m in plan:
        if m.get("status") == 200 and m["id"] not in firsts:
            firsts[m["id"]] = m          # the first acknowledged delivery
    by_customer: dict[str, list[dict]] = {}
    for m in firsts.values():
        by_customer.setdefault(m["wa_id"], []).append(m)
    inversions = misrouted = 0
    examples = []
    for messages in by_customer.values():
        messages.sort(key=lambda m: m["stamp"])
        for older, newer in zip(messages, messages[1:]):
            a, b = answers.get(older["id"]), answers.get(newer["id"])
            if not a or not b or a[0][1] < b[0][1]:
                continue
            inversions += 1
            newer_routed = rows.get(newer["id"], {}).get("routed")
            if newer_routed is not None and older["t_ack"] < newer_routed:
                misrouted += 1
                if len(examples) < 5:
                    examples.append({"older": older["id"], "newer": newer["id"],
                                     "older_acked_before_newer_routed_ms": (newer_routed - older["t_ack"]) * 1000,
                                     "older_posted_after_newer_ms": (older["t_post"] - newer["t_post"]) * 1000})
    return {"answers_out_of_order": inversions, "misrouted": misrouted,
            "late_arrival_answered_later": inversions - misrouted, "misrouted_examples": examples}


# -- one rate ------------------------------------------------------------------------------------

def baseline(stack, args, rate: float, tmp: str) -> dict:
    port = bl.free_port()
    argv = [*procfile()["web"][:-1], "bench.hello_app:app"]       # the same gunicorn, the same config
    proc = start_web(stack, "hello", argv, gunicorn_env(port), port, tmp)
    plan = make_plan(plan_args(args, rate, pairs=False), time.time() + 1, "HELLO")
    print(f"  baseline: hello_app on :{port} (the same gunicorn.conf.py), {len(plan)} POSTs at {rate:g}/s",
          flush=True)
    sys0, cpu0, wall0 = bl.system_busy_seconds(), bl.cpu_seconds(bl.tree(proc.pid)), time.monotonic()
    self0 = own_cpu()
    open_loop(port, plan, args.sender_threads)
    stats = sender_stats(plan)
    wall = time.monotonic() - wall0
    stats["server_cpu_pct"] = 100 * (bl.cpu_seconds(bl.tree(proc.pid)) - cpu0) / wall
    stats["sender_cpu_pct"] = 100 * (own_cpu() - self0) / wall
    stats["system_cpu_pct"] = 100 * (bl.system_busy_seconds() - sys0) / wall
    stats["other_cpu_pct"] = max(0.0, stats["system_cpu_pct"] - stats["server_cpu_pct"] - stats["sender_cpu_pct"])
    stack.stop(proc)
    return stats


def plan_args(args, rate: float, pairs: bool):
    return argparse.Namespace(rate=rate, warmup=args.warmup, duration=args.duration, customers=args.customers,
                              min_gap=args.min_gap, pairs=pairs, swap_share=args.swap_share if args.shuffle else 0.0,
                              duplicates=args.duplicates if pairs else 0.0)


def run_rate(args, rate: float) -> dict:
    with bl.Stack(keep_tmp=args.keep_tmp) as stack:
        tmp = stack.tempdir(f"baton-bench-e2e-{rate:g}-")
        hello = baseline(stack, args, rate, tmp) if not args.no_baseline else None
        if hello:
            print(f"  baseline POST p50 {bl.fmt(hello['post_ms']['p50'], 2)} ms  p99 "
                  f"{bl.fmt(hello['post_ms']['p99'], 2)} ms  errors {hello['errors']}", flush=True)
        db = Database(args.database, tmp, args.pg_admin_dsn)
        try:
            return {"rate": rate, "baseline": hello, **run_baton(stack, args, rate, tmp, db)}
        finally:
            stack.close()
            db.drop()


def run_baton(stack, args, rate: float, tmp: str, db: Database) -> dict:
    graph, fake = start_fake(stack, args, tmp)
    sends = Sends(graph)
    baton = start_baton(stack, args, tmp, rate, db, graph)
    print(f"  Baton: web :{baton['port']} (Procfile web: gunicorn -c gunicorn.conf.py, "
          f"{len(bl.children(baton['web'].pid))} gevent workers), {args.workers} x Procfile worker, cron, "
          f"redis {baton['redis_url']}, {args.database}; fake Graph API {graph} "
          f"({args.graph_latency_ms:g} ms a send)", flush=True)
    probe(baton, sends, args)
    pairs = bool(args.duplicates or args.shuffle)
    plan = make_plan(plan_args(args, rate, pairs), time.time() + 1, os.urandom(2).hex().upper())
    unique = {m["id"] for m in plan}
    print(f"  sending {len(plan)} webhooks ({len(unique)} messages) at {rate:g}/s "
          f"({args.warmup} s warm-up + {args.duration} s)", flush=True)
    procs = {"web": baton["web"], **{f"rq{n}": w for n, w in enumerate(baton["workers"])},
             "cron": baton["cron"], "redis": baton["redis"]}
    pg0 = {pid: bl.cpu_seconds([pid]) for pid in db.backend_pids()}
    cpu0 = {name: bl.cpu_seconds(bl.tree(p.pid)) for name, p in procs.items()}
    fake0, sys0, wall0, self0 = bl.cpu_seconds([fake.pid]), bl.system_busy_seconds(), time.monotonic(), own_cpu()
    profile_files = []
    if args.profile:
        targets = {f"web{n}": pid for n, pid in enumerate(bl.children(baton["web"].pid))}
        targets.update({f"rq{n}": w.pid for n, w in enumerate(baton["workers"])})
        profile_files = bl.start_profiles(stack, targets, int(args.warmup + args.duration),
                                          bl.RESULTS_DIR / "profiles",
                                          f"e2e-{rate:g}-{time.strftime('%Y%m%dT%H%M%S')}", idle=args.profile_idle)
    open_loop(baton["port"], plan, args.sender_threads)
    send_wall = time.monotonic() - wall0
    last_post = max(m.get("t_post", 0) for m in plan)
    acked = {m["id"] for m in plan if m.get("status") == 200}
    # Answers later than --answer-timeout count as unanswered; waiting on (--drain) tells late from lost.
    got = wait_answers(sends, PROBES + len(acked), last_post + args.answer_timeout + args.drain)
    wall = time.monotonic() - wall0           # the sends and the answers to them
    cpu_s = {name: bl.cpu_seconds(bl.tree(p.pid)) - cpu0[name] for name, p in procs.items()}
    if db.kind == "postgres":
        cpu_s["postgres"] = sum(bl.cpu_seconds([pid]) - pg0.get(pid, 0.0) for pid in db.backend_pids())
    fake_s, sender_s = bl.cpu_seconds([fake.pid]) - fake0, own_cpu() - self0
    system_s = bl.system_busy_seconds() - sys0
    time.sleep(args.settle)                                    # a duplicated answer may follow
    sends.fetch()
    rss = {"web master": rss_mb(baton["web"].pid),
           **{f"web worker {n}": rss_mb(pid) for n, pid in enumerate(bl.children(baton["web"].pid))},
           **{f"rq{n}": rss_mb(w.pid) for n, w in enumerate(baton["workers"])},
           "cron": rss_mb(baton["cron"].pid), "redis": rss_mb(baton["redis"].pid), "fake": rss_mb(fake.pid)}
    if args.profile:
        bl.wait_profiles(stack)

    # The map: reference (outbound message id) → inbound provider id, and each inbound's stages.
    rows: dict[str, dict] = {}
    by_reference: dict[str, str] = {}
    for pid, received, turn_at, out_id, reply_at, reply_status in db.rows(ANSWERS_SQL):
        row = rows.setdefault(pid, {"received": bl.utc_ts(received), "routed": bl.utc_ts(turn_at),
                                    "queued": bl.utc_ts(reply_at), "replies": 0, "status": reply_status})
        if out_id is not None:
            row["replies"] += 1
            by_reference[str(out_id)] = pid
    answers: dict[str, list[tuple[float, int]]] = {}      # inbound id → [(fake arrival, its index)]
    per_reference: dict[str, int] = {}
    for index, (at, _to, reference, _wamid) in enumerate(sends.rows):
        per_reference[reference] = per_reference.get(reference, 0) + 1
        inbound = by_reference.get(reference)
        if inbound is not None:
            answers.setdefault(inbound, []).append((at, index))
    leftovers = {
        "unrouted_in": db.rows("SELECT COUNT(*) FROM message WHERE direction='in' AND routed_to IS NULL")[0][0],
        "queued_out": db.rows("SELECT COUNT(*) FROM message WHERE direction='out' AND status='queued'")[0][0],
        "failed_out": db.rows("SELECT COUNT(*) FROM message WHERE direction='out' AND status='failed'")[0][0],
        "states": dict(db.rows("SELECT state, COUNT(*) FROM conversation GROUP BY state")),
    }
    tracebacks = {name: Path(tmp, f"{name}.log").read_text(errors="replace").count("Traceback")
                  for name in ["baton-web", *[f"rq-worker-{n}" for n in range(args.workers)], "cron"]}

    first_post: dict[str, dict] = {}
    for m in plan:
        if "t_post" in m and m["id"] not in first_post:
            first_post[m["id"]] = m
    measured_ids = [i for i, m in first_post.items() if not m["warmup"] and i in acked]
    e2e, stages = [], {"recorded": [], "routed": [], "reply_queued": []}
    unanswered = late = 0
    for message_id in measured_ids:
        m, row = first_post[message_id], rows.get(message_id, {})
        for key, stage in (("recorded", "received"), ("routed", "routed"), ("reply_queued", "queued")):
            if row.get(stage) is not None:
                stages[key].append((row[stage] - m["t_post"]) * 1000)
        mine = answers.get(message_id)
        if not mine:
            unanswered += 1
            e2e.append(float("inf"))             # counts in the percentiles as "never"
            continue
        latency = min(at for at, _ in mine) - m["t_post"]
        if latency > args.answer_timeout:
            late += 1
        e2e.append(latency * 1000)
    answered_all = sum(1 for i in acked if i in answers)
    stats = sender_stats(plan)
    baton_cpu_s = sum(cpu_s.values())
    stats.update({
        "messages": len(unique), "webhooks": len(plan), "measured_messages": len(measured_ids),
        "e2e_ms": pct_table(e2e), "stages_ms": {k: pct_table(v) for k, v in stages.items()},
        "answered": len(measured_ids) - unanswered, "unanswered": unanswered, "answered_late": late,
        "not_answered_within_timeout": unanswered + late,
        # Lost only once Baton has nothing left to do: while inbound messages wait unrouted or
        # replies wait queued, a missing answer may still come (the table says "backlog").
        "missing_at_end": sum(1 for i in acked if i not in answers),
        "drained": leftovers["unrouted_in"] == 0 and leftovers["queued_out"] == 0,
        "lost": sum(1 for i in acked if i not in answers)
        if leftovers["unrouted_in"] == 0 and leftovers["queued_out"] == 0 else None,
        "duplicated_answers": sum(len(v) - 1 for v in answers.values() if len(v) > 1),
        "references_sent_twice": sum(1 for n in per_reference.values() if n > 1),
        "turns_answered_twice": sum(1 for r in rows.values() if r["replies"] > 1),
        "fake_sends": len(sends.rows), "fake_sends_at_end_of_wait": got,
        "leftovers": leftovers, "tracebacks_in_logs": tracebacks,
        "wall_s": wall, "send_wall_s": send_wall,
        "cpu_s": cpu_s, "cpu_pct": {k: 100 * v / wall for k, v in cpu_s.items()},
        "baton_cpu_pct": 100 * baton_cpu_s / wall,
        "cpu_ms_per_message": 1000 * baton_cpu_s / answered_all if answered_all else None,
        "answered_in_cpu_window": answered_all,
        "fake_cpu_pct": 100 * fake_s / wall, "sender_cpu_pct": 100 * sender_s / wall,
        "fake_cpu_ms_per_send": 1000 * fake_s / len(sends.rows) if sends.rows else None,
        "system_cpu_pct": 100 * system_s / wall,
        "other_cpu_pct": max(0.0, 100 * (system_s - baton_cpu_s - fake_s - sender_s) / wall),
        "rss_mb": rss, "profiles": [str(p.relative_to(bl.ROOT)) for p in profile_files if p.exists()],
    })
    if pairs:
        stats["order"] = order_check(plan, answers, rows)
    return {"baton": stats}


# -- output -----------------------------------------------------------------------------------

def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(bl.fmt(c) if not isinstance(c, str) else c for c in row) + " |")
    return "\n".join(lines)


def ratio(a, b):
    return a / b if a is not None and b else None


def report(args, results: list[dict]) -> str:
    out = []
    head = ["rate", "e2e p50 ms", "e2e p99 ms", "e2e max ms", "sent", "non-200", "answered in time",
            "unanswered", "lost", "achieved msg/s", "CPU-ms/msg", "Baton CPU %", "fake CPU %", "sender CPU %", "other load %",
            "hello POST p50/p99 ms", "ratio p50", "ratio p99"]
    rows = []
    for r in results:
        b, h = r["baton"], r["baseline"]
        e = b["e2e_ms"]
        rows.append([f"{r['rate']:g}", e["p50"], e["p99"], e["max"], b["sent"], b["errors"],
                     b["measured_messages"] - b["not_answered_within_timeout"], b["not_answered_within_timeout"],
                     lost(b), b["achieved_rate"], b["cpu_ms_per_message"],
                     b["baton_cpu_pct"], b["fake_cpu_pct"], b["sender_cpu_pct"], b["other_cpu_pct"],
                     f"{bl.fmt(h['post_ms']['p50'], 2)} / {bl.fmt(h['post_ms']['p99'], 2)}" if h else "-",
                     fmt_x(ratio(e["p50"], h["post_ms"]["p50"])) if h else "-",
                     fmt_x(ratio(e["p99"], h["post_ms"]["p99"])) if h else "-"])
    out.append(md_table(head, rows))
    names = list(dict.fromkeys(k for r in results for k in r["baton"]["cpu_pct"]))
    rss_names = list(dict.fromkeys(k for r in results for k in r["baton"]["rss_mb"]))
    out.append("")
    out.append("Per process: CPU % of one core over the run (sends + answers), RSS MB at the end")
    out.append(md_table(["rate", *[f"{n} CPU %" for n in names], *[f"{n} RSS" for n in rss_names]],
                        [[f"{r['rate']:g}", *[r["baton"]["cpu_pct"].get(n) for n in names],
                          *[r["baton"]["rss_mb"].get(n) for n in rss_names]] for r in results]))
    if any("order" in r["baton"] for r in results):
        out.append("")
        out.append(f"Duplicates {args.duplicates:g}, shuffle {'on' if args.shuffle else 'off'} "
                   f"(swap share {args.swap_share:g})")
        out.append(md_table(["rate", "messages", "webhooks", "misrouted", "late arrival answered later",
                             "duplicated answers", "lost"],
                            [[f"{r['rate']:g}", r["baton"]["messages"], r["baton"]["webhooks"],
                              r["baton"]["order"]["misrouted"], r["baton"]["order"]["late_arrival_answered_later"],
                              r["baton"]["duplicated_answers"], lost(r["baton"])] for r in results]))
    out.append("")
    for r in results:
        b = r["baton"]
        out.append(f"{r['rate']:g} msg/s: stages p99 ms recorded {bl.fmt(b['stages_ms']['recorded']['p99'])}, "
                   f"routed {bl.fmt(b['stages_ms']['routed']['p99'])}, reply queued "
                   f"{bl.fmt(b['stages_ms']['reply_queued']['p99'])}; webhook POST p99 "
                   f"{bl.fmt(b['post_ms']['p99'])} ms, errors {b['errors']}; sender lag p99 "
                   f"{bl.fmt(b['sender_lag_ms']['p99'])} ms; fake {bl.fmt(b['fake_cpu_ms_per_send'], 2)} CPU-ms "
                   f"a send; leftovers {b['leftovers']}; tracebacks {sum(b['tracebacks_in_logs'].values())}")
    return "\n".join(out)


def lost(b: dict) -> str:
    return bl.fmt(b["lost"]) if b["drained"] else f"{b['missing_at_end']:,} missing, backlog left"


def fmt_x(value):
    if value is None:
        return "-"
    return "never" if value == float("inf") else f"{value:.1f}x"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="100,300,500,1000",
                    help="webhooks per second, open loop, each in turn on a fresh stack (default: 100,300,500,1000)")
    ap.add_argument("--duration", type=int, default=60, help="measured seconds per rate (default: 60)")
    ap.add_argument("--warmup", type=int, default=3, help="seconds sent first and not counted (default: 3)")
    ap.add_argument("--workers", type=int, default=2,
                    help="Procfile `worker` processes (default: 2, as ./run.sh; 1 = the Procfile started as it is)")
    ap.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--pg-admin-dsn", default=os.environ.get("BATON_TEST_PG",
                                                             "postgresql://postgres@127.0.0.1:5432/postgres"),
                    help="where --database postgres creates (and drops) its database")
    ap.add_argument("--graph-latency-ms", type=float, default=0.0,
                    help="the fake Graph API answers each send this late (default: 0; try 200)")
    ap.add_argument("--customers", type=int, default=0,
                    help="customer pool (default: enough for the highest rate: 25 x rate)")
    ap.add_argument("--min-gap", type=float, default=8.0,
                    help="a customer writes at most once per min-gap..2*min-gap s (default: 8)")
    ap.add_argument("--duplicates", type=float, default=0.0, metavar="F",
                    help="share of webhooks delivered twice (turns on pairs: two messages per customer)")
    ap.add_argument("--shuffle", action="store_true",
                    help="deliver a customer's pair swapped with probability --swap-share (turns on pairs)")
    ap.add_argument("--swap-share", type=float, default=0.3)
    ap.add_argument("--sender-threads", type=int, default=16,
                    help="sender threads to start with; more are added while all wait on answers (default: 16)")
    ap.add_argument("--answer-timeout", type=float, default=10.0,
                    help="an answer later than this counts as unanswered (default: 10 s)")
    ap.add_argument("--drain", type=float, default=60.0,
                    help="s to wait on after --answer-timeout for late answers: what is still missing is lost")
    ap.add_argument("--settle", type=float, default=1.0, help="s to wait after the last answer for duplicates")
    ap.add_argument("--mps", type=int, default=0,
                    help="WHATSAPP_MPS (default: max(80, 2 x rate), so the number's cap is not what is measured)")
    ap.add_argument("--log-level", default=None, help="Baton LOG_LEVEL (default: Baton's own)")
    ap.add_argument("--p99-goal-ms", type=float, default=150.0)
    ap.add_argument("--no-baseline", action="store_true", help="skip the hello-world baseline")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy record the web and RQ workers for the whole send window "
                         "(collapsed stacks under bench/results/profiles/; needs py-spy in the venv)")
    bl.add_common_args(ap)
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dirs (database, logs)")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    args.customers = args.customers or int(max(rates) * 25)

    print(f"e2e benchmark: {', '.join(f'{r:g}' for r in rates)} msg/s for {args.duration} s each "
          f"(+{args.warmup} s warm-up), {args.customers} customers (min gap {args.min_gap:g} s), "
          f"{args.workers} x Procfile worker, {args.database}, fake Graph API {args.graph_latency_ms:g} ms a send"
          + (f", duplicates {args.duplicates:g}, shuffle {args.shuffle}" if args.duplicates or args.shuffle else ""),
          flush=True)
    quiet = bl.wait_quiet(args.wait_quiet)
    results = []
    for rate in rates:
        print(f"\n== {rate:g} msg/s", flush=True)
        results.append(run_rate(args, rate))
    text = report(args, results)
    print()
    print(f"End to end (POST → the fake Graph API has the answer): {args.workers} x Procfile worker, "
          f"{args.database}, {args.graph_latency_ms:g} ms a send, {args.duration} s per rate, {os.cpu_count()} CPUs")
    print(text)
    goals = {}
    for r in results:
        b = r["baton"]
        goals[f"{r['rate']:g}"] = {
            "p99_met": b["e2e_ms"]["p99"] is not None and b["e2e_ms"]["p99"] < args.p99_goal_ms,
            "all_answered": b["not_answered_within_timeout"] == 0 and b["errors"] == 0,
            "rate_held": b["achieved_rate"] is not None and b["achieved_rate"] >= 0.95 * r["rate"]}
        g = goals[f"{r['rate']:g}"]
        print(f"{r['rate']:g} msg/s: p99 < {args.p99_goal_ms:g} ms {'MET' if g['p99_met'] else 'MISSED'}, "
              f"all answered {'yes' if g['all_answered'] else 'NO'}, rate held {'yes' if g['rate_held'] else 'NO'}")
    warning = bl.busy_warning(max(r["baton"]["other_cpu_pct"] for r in results))
    if warning:
        print(warning)
    path = bl.write_result("e2e", {"benchmark": "e2e", "machine": bl.machine_info(), "config": vars(args),
                                   "cpu_before_start_pct": quiet, "results": results, "goals": goals,
                                   "busy_warning": warning, "markdown": text,
                                   "sender_threads_max": plan_threads[0]})
    print(f"\nresult written to {path.relative_to(bl.ROOT)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped and removed", file=sys.stderr)
        sys.exit(130)
