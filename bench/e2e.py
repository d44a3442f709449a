#!/usr/bin/env python3
"""End to end: signed webhook → recorded → routed → built-in bot answers → sandbox outbox row.

Starts, with a private redis-server and a fresh SQLite database in a temp dir:
gunicorn (`wsgi:app`), --rq-workers × `flask --app app baton worker` and
`flask --app app baton cron`, exactly as the Procfile does. Then sends signed
Cloud API text webhooks ("hello", "hola", …: greetings the built-in rule bot
answers) at a fixed OPEN-LOOP rate (--rate msg/s for --duration s, after
--warmup s that are not counted) from a pool of customers, none of whom writes
more often than every --min-gap s.

For every message: latency = outbox_entry.created_at of the bot's reply minus
time.time() just before the POST (one machine, one clock; the database stores
naive UTC). The reply is found through inbound message (our provider id) →
bot_turn.message_id → outbound message.turn_id → outbox_entry.provider_message_id.

Baseline in the same run: the same sender at the same rate against
bench/hello_app.py (same gunicorn settings); its POST round trip is the
denominator of the reported ratios.

    .venv/bin/python bench/e2e.py                 # 100 msg/s for 20 s (+3 s warm-up)
    .venv/bin/python bench/e2e.py --help

Goal: end-to-end p99 < 150 ms at 100 msg/s, nothing left unanswered after 10 s.
"""
from __future__ import annotations

import argparse
import http.client
import os
import queue
import random
import resource
import sqlite3
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

GREETINGS = ["hello", "hi", "Hello!", "hola", "good morning", "bonjour", "hallo", "ciao", "oi", "hey",
             "Hi there", "hello 👋", "Buenos días", "Good evening"]
WEBHOOK_PATH = "/webhooks/whatsapp"


# -- the plan and the open-loop sender ------------------------------------------------------

def make_plan(args, start_wall: float, tag: str) -> list[dict]:
    """Who sends what when: offsets i/rate, customers never closer than min-gap (+ jitter)."""
    rng = random.Random(11)
    total = int(args.rate * (args.warmup + args.duration))
    available = list(range(args.customers))
    cooling: list[tuple[float, int]] = []          # (available again at offset, customer)
    plan = []
    for i in range(total):
        offset = i / args.rate
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
        message_id = f"wamid.E2E{tag}{i:08d}{rng.getrandbits(40):010X}"
        body, sig = bl.signed_webhook(wa_id, rng.choice(GREETINGS), name, message_id, int(start_wall + offset))
        plan.append({"offset": offset, "wa_id": wa_id, "id": message_id, "body": body, "sig": sig,
                     "warmup": offset < args.warmup})
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


# -- phases -----------------------------------------------------------------------------

def baseline(stack, args, tmp) -> dict:
    proc, port = bl.start_gunicorn(stack, "hello", "hello_app:app", bl.BENCH_DIR, args, bl.server_env(), tmp)
    plan = make_plan(args, time.time() + 1, "HELLO")
    print(f"baseline: hello_app on :{port}, {len(plan)} POSTs at {args.rate:g}/s", flush=True)
    sys0, cpu0, wall0 = bl.system_busy_seconds(), bl.cpu_seconds(bl.tree(proc.pid)), time.monotonic()
    self0 = own_cpu()
    open_loop(port, plan, args.sender_threads)
    stats = sender_stats(plan)
    wall = time.monotonic() - wall0
    stats["server_cpu_pct"] = 100 * (bl.cpu_seconds(bl.tree(proc.pid)) - cpu0) / wall
    stats["sender_cpu_pct"] = 100 * (own_cpu() - self0) / wall
    stats["system_cpu_pct"] = 100 * (bl.system_busy_seconds() - sys0) / wall
    stats["foreign_cpu_pct"] = max(0.0, stats["system_cpu_pct"] - stats["server_cpu_pct"] - stats["sender_cpu_pct"])
    stack.stop(proc)
    return stats


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def count(db_path: str, sql: str) -> int:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(sql).fetchone()[0]


ANSWERS_SQL = """
SELECT i.provider_message_id, i.received_at, i.routed_to, t.created_at, om.received_at, om.status,
       o.created_at
FROM message i
LEFT JOIN bot_turn t ON t.message_id = i.id
LEFT JOIN message om ON om.turn_id = t.id AND om.direction = 'out'
LEFT JOIN outbox_entry o ON o.provider_message_id = om.provider_message_id
WHERE i.direction = 'in'
"""


def wait_answers(db_path: str, expected: int, deadline: float) -> int:
    while True:
        got = count(db_path, "SELECT COUNT(*) FROM outbox_entry")
        if got >= expected or time.time() > deadline:
            return got
        time.sleep(0.25)


def start_baton(stack, args, tmp) -> dict:
    redis_url = bl.start_redis(stack)
    redis_proc = stack.procs[-1][1]
    port = bl.free_port()
    extra = {"WHATSAPP_MPS": args.mps or max(80, int(args.rate * 2))}
    if args.log_level:
        extra["LOG_LEVEL"] = args.log_level
    env = bl.baton_env(tmp, redis_url, port, **extra)
    bl.init_db(env, tmp)
    web, port = bl.start_gunicorn(stack, "baton-web", "wsgi:app", bl.ROOT, args, env, tmp, port=port)
    flask = bl.tool("flask")
    workers = [stack.spawn(f"rq-worker-{n}", [flask, "--app", "app", "baton", "worker"], env=env, log_dir=tmp)
               for n in range(args.rq_workers)]
    cron = stack.spawn("cron", [flask, "--app", "app", "baton", "cron"], env=env, log_dir=tmp)
    return {"port": port, "redis_url": redis_url, "redis": redis_proc, "web": web, "workers": workers,
            "cron": cron, "db": f"{tmp}/baton.db", "env": env}


def probe(baton, args) -> None:
    """A few messages through the whole pipeline before the clock starts (imports, caches, pumps)."""
    plan = []
    for n in range(10):
        wa_id, name = bl.customer(args.customers + n)
        body, sig = bl.signed_webhook(wa_id, "hello", name, f"wamid.PROBE{n:04d}", int(time.time()))
        plan.append({"offset": n * 0.05, "warmup": True, "id": f"wamid.PROBE{n:04d}", "body": body, "sig": sig})
    open_loop(baton["port"], plan, 4, lead=0.1)
    bad = [m.get("status") for m in plan if m.get("status") != 200]
    if bad:
        raise RuntimeError(f"probe webhooks were refused: {bad[:3]} (see the baton-web log)")
    got = wait_answers(baton["db"], len(plan), time.time() + 60)
    if got < len(plan):
        for proc in [baton["web"], *baton["workers"], baton["cron"]]:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        raise RuntimeError(f"only {got}/{len(plan)} probe messages were answered within 60 s")


def run_baton(stack, args, tmp) -> tuple[dict, dict]:
    baton = start_baton(stack, args, tmp)
    print(f"Baton: web :{baton['port']} ({bl.server_desc(args)}), "
          f"{args.rq_workers} RQ workers, cron, redis {baton['redis_url']}, db {baton['db']}", flush=True)
    probe(baton, args)
    plan = make_plan(args, time.time() + 1, os.urandom(2).hex().upper())
    print(f"  sending {len(plan)} webhooks at {args.rate:g}/s ({args.warmup} s warm-up + {args.duration} s)",
          flush=True)
    procs = {"web": baton["web"], "redis": baton["redis"], "cron": baton["cron"],
             **{f"rq{n}": w for n, w in enumerate(baton["workers"])}}
    cpu0 = {name: bl.cpu_seconds(bl.tree(p.pid)) for name, p in procs.items()}
    sys0, wall0, self0 = bl.system_busy_seconds(), time.monotonic(), own_cpu()
    if args.profile:
        targets = {f"web{n}": pid for n, pid in enumerate(bl.children(baton["web"].pid))}
        targets.update({f"rq{n}": w.pid for n, w in enumerate(baton["workers"])})
        profile_files = bl.start_profiles(stack, targets, int(args.warmup + args.duration),
                                          bl.RESULTS_DIR / "profiles", f"e2e-{time.strftime('%Y%m%dT%H%M%S')}",
                                          idle=args.profile_idle)
    open_loop(baton["port"], plan, args.sender_threads)
    last_post = max(m.get("t_post", 0) for m in plan)
    wall = time.monotonic() - wall0           # the sends and their answers (not the reply wait)
    cpu = {name: 100 * (bl.cpu_seconds(bl.tree(p.pid)) - cpu0[name]) / wall for name, p in procs.items()}
    cpu["sender"] = 100 * (own_cpu() - self0) / wall
    system_pct = 100 * (bl.system_busy_seconds() - sys0) / wall
    acked = sum(1 for m in plan if m.get("status") == 200)
    expected = acked + 10                                      # + the probes
    got = wait_answers(baton["db"], expected, last_post + args.answer_timeout + 1)
    if args.profile:
        bl.wait_profiles(stack)

    rows = {}
    with sqlite3.connect(f"file:{baton['db']}?mode=ro", uri=True, timeout=30) as conn:
        for pid, received, routed_to, turn_at, reply_at, reply_status, outbox_at in conn.execute(ANSWERS_SQL):
            rows[pid] = (bl.utc_ts(received), routed_to, bl.utc_ts(turn_at), bl.utc_ts(reply_at), reply_status,
                         bl.utc_ts(outbox_at))
        leftovers = {
            "unrouted_in": conn.execute("SELECT COUNT(*) FROM message WHERE direction='in' AND routed_to IS NULL")
            .fetchone()[0],
            "queued_out": conn.execute("SELECT COUNT(*) FROM message WHERE direction='out' AND status='queued'")
            .fetchone()[0],
            "failed_out": conn.execute("SELECT COUNT(*) FROM message WHERE direction='out' AND status='failed'")
            .fetchone()[0],
            "states": dict(conn.execute("SELECT state, COUNT(*) FROM conversation GROUP BY state").fetchall()),
        }
    tracebacks = {}
    for name in ["baton-web", *[f"rq-worker-{n}" for n in range(args.rq_workers)], "cron"]:
        text = Path(tmp, f"{name}.log").read_text(errors="replace")
        tracebacks[name] = text.count("Traceback")
    if args.hold:
        print(f"--hold: Baton stays up on :{baton['port']} for {args.hold} s", flush=True)
        time.sleep(args.hold)

    measured = [m for m in plan if not m["warmup"]]
    e2e, stages = [], {"recorded": [], "routed": [], "reply_queued": [], "sent": []}
    unanswered = late = 0
    for m in measured:
        if m.get("status") != 200:
            continue
        received, routed_to, turn_at, reply_at, reply_status, outbox_at = rows.get(m["id"], (None,) * 6)
        for key, at in (("recorded", received), ("routed", turn_at), ("reply_queued", reply_at),
                        ("sent", outbox_at)):
            if at is not None:
                stages[key].append((at - m["t_post"]) * 1000)
        if outbox_at is None:
            unanswered += 1
            e2e.append(float("inf"))             # counts in the percentiles as "never"
            continue
        latency = outbox_at - m["t_post"]
        if latency > args.answer_timeout:
            late += 1
        e2e.append(latency * 1000)
    stats = sender_stats(plan)
    stats.update({
        "e2e_ms": pct_table(e2e), "stages_ms": {k: pct_table(v) for k, v in stages.items()},
        "unanswered": unanswered, "answered_late": late, "not_answered_within_timeout": unanswered + late,
        "outbox_rows": got, "leftovers": leftovers, "tracebacks_in_logs": tracebacks,
        "cpu_pct": cpu, "system_cpu_pct": system_pct,
        "foreign_cpu_pct": max(0.0, system_pct - sum(cpu.values())),
    })
    if args.profile:
        stats["profiles"] = [str(p.relative_to(bl.ROOT)) for p in profile_files if p.exists()]
    for name in ("web", "cron", *[f"rq{n}" for n in range(args.rq_workers)]):
        stack.stop(procs[name])
    return stats, {"port": baton["port"], "redis_url": baton["redis_url"], "db": baton["db"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=100.0, help="webhooks per second, open loop (default: 100)")
    ap.add_argument("--duration", type=int, default=20, help="measured seconds (default: 20)")
    ap.add_argument("--warmup", type=int, default=3, help="seconds sent first and not counted (default: 3)")
    ap.add_argument("--customers", type=int, default=3000, help="customer pool (default: 3000)")
    ap.add_argument("--min-gap", type=float, default=8.0,
                    help="a customer writes at most once per min-gap..2*min-gap s (default: 8)")
    ap.add_argument("--rq-workers", type=int, default=2, help="`flask baton worker` processes (default: 2)")
    bl.add_server_args(ap)
    ap.add_argument("--sender-threads", type=int, default=16,
                    help="sender threads to start with; more are added while all wait on answers (default: 16)")
    ap.add_argument("--answer-timeout", type=float, default=10.0,
                    help="a reply later than this counts as never answered (default: 10 s)")
    ap.add_argument("--mps", type=int, default=0,
                    help="WHATSAPP_MPS for the sandbox (default: max(80, 2 x rate), so a throughput cap "
                         "of the phone number is not what is measured)")
    ap.add_argument("--log-level", default=None, help="Baton LOG_LEVEL (default: Baton's own)")
    ap.add_argument("--p99-goal-ms", type=float, default=150.0)
    ap.add_argument("--profile", action="store_true",
                    help="py-spy record the web and RQ workers for the whole send window "
                         "(collapsed stacks under bench/results/profiles/; needs py-spy)")
    bl.add_common_args(ap)
    ap.add_argument("--hold", type=int, default=0, help="keep Baton up N s after the run")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (database, logs)")
    args = ap.parse_args(argv)

    print(f"e2e benchmark: {args.rate:g} msg/s for {args.duration} s (+{args.warmup} s warm-up), "
          f"{args.customers} customers (min gap {args.min_gap:g} s), {bl.server_desc(args)}, "
          f"{args.rq_workers} RQ workers", flush=True)
    quiet = bl.wait_quiet(args.wait_quiet)
    with bl.Stack(keep_tmp=args.keep_tmp) as stack:
        tmp = stack.tempdir("baton-bench-e2e-")
        hello = baseline(stack, args, tmp)
        print(f"  baseline POST p50 {hello['post_ms']['p50']:.2f} ms  p99 {hello['post_ms']['p99']:.2f} ms  "
              f"errors {hello['errors']}", flush=True)
        baton, info = run_baton(stack, args, tmp)

    e, post, hp = baton["e2e_ms"], baton["post_ms"], hello["post_ms"]

    def ratio(a, b):
        return a / b if a is not None and b else None

    def fmt_x(value):
        return "never" if value == float("inf") else f"{bl.fmt(value, 1)}x"

    print()
    print(f"End to end — {args.rate:g} msg/s open loop, {args.duration} s measured, {bl.server_desc(args)}, "
          f"{args.rq_workers} RQ workers, {os.cpu_count()} CPUs")
    print(bl.table(["latency (ms)", "n", "p50", "p90", "p95", "p99", "max"],
                   [["hello POST round trip (baseline)", hp["n"], hp["p50"], hp["p90"], hp["p95"], hp["p99"], hp["max"]],
                    ["Baton webhook POST (ack)", post["n"], post["p50"], post["p90"], post["p95"], post["p99"],
                     post["max"]],
                    *[[f"Baton  POST → {label}", s["n"], s["p50"], s["p90"], s["p95"], s["p99"], s["max"]]
                      for label, s in (("recorded (message.received_at)", baton["stages_ms"]["recorded"]),
                                       ("routed (bot_turn.created_at)", baton["stages_ms"]["routed"]),
                                       ("reply queued (out message)", baton["stages_ms"]["reply_queued"]))],
                    ["Baton  POST → outbox (END TO END)", e["n"], e["p50"], e["p90"], e["p95"], e["p99"], e["max"]]]))
    print()
    print(bl.table(["", "baseline", "Baton"],
                   [["achieved rate msg/s", hello["achieved_rate"], baton["achieved_rate"]],
                    ["sent (measured window)", hello["sent"], baton["sent"]],
                    ["non-200 / errors", hello["errors"], baton["errors"]],
                    ["sender lag p99 ms", hello["sender_lag_ms"]["p99"], baton["sender_lag_ms"]["p99"]]]))
    print(f"(sender threads needed to keep the rate open-loop: up to {plan_threads[0]})")
    print()
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in baton["cpu_pct"].items())
    print(f"baseline CPU (% of one core): server {hello['server_cpu_pct']:.0f}%, sender {hello['sender_cpu_pct']:.0f}%;"
          f" other processes {hello['foreign_cpu_pct']:.0f}%")
    print(f"Baton CPU (% of one core): {cpu}; other processes {baton['foreign_cpu_pct']:.0f}%")
    print(f"never answered within {args.answer_timeout:g} s: {baton['not_answered_within_timeout']} "
          f"(no reply {baton['unanswered']}, late {baton['answered_late']});  leftovers {baton['leftovers']};  "
          f"tracebacks in logs {sum(baton['tracebacks_in_logs'].values())}")
    r50, r99 = ratio(e["p50"], hp["p50"]), ratio(e["p99"], hp["p99"])
    print(f"ratio e2e / baseline POST: p50 {fmt_x(r50)}, p99 {fmt_x(r99)}")
    goal_p99 = e["p99"] is not None and e["p99"] < args.p99_goal_ms
    goal_answered = baton["not_answered_within_timeout"] == 0 and baton["errors"] == 0
    rate_ok = baton["achieved_rate"] is not None and baton["achieved_rate"] >= 0.95 * args.rate
    goal = goal_p99 and goal_answered and rate_ok
    print(f"e2e p99 {bl.fmt(e['p99'], 1)} ms (goal < {args.p99_goal_ms:g} ms at {args.rate:g} msg/s): "
          f"{'MET' if goal_p99 else 'MISSED'};  all answered: {'yes' if goal_answered else 'NO'};  "
          f"rate held: {'yes' if rate_ok else 'NO'}")
    warning = bl.busy_warning(max(baton["foreign_cpu_pct"], hello["foreign_cpu_pct"]))
    if warning:
        print(warning)
    print(f"GOAL {'MET' if goal else 'MISSED'}")
    path = bl.write_result("e2e", {
        "benchmark": "e2e", "machine": bl.machine_info(), "config": vars(args), "baseline": hello,
        "baton": baton, "baton_info": info, "ratio_p50": r50, "ratio_p99": r99, "busy_warning": warning,
        "cpu_before_start_pct": quiet,
        "goals": {"p99_ms": args.p99_goal_ms, "p99_met": goal_p99, "all_answered": goal_answered,
                  "rate_held": rate_ok, "met": goal},
    })
    print(f"\nresult written to {path.relative_to(bl.ROOT)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped and removed", file=sys.stderr)
        sys.exit(130)
