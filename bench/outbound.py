#!/usr/bin/env python3
"""Outbound: how close Baton's sending gets to a number's rate limit, and how soon one message leaves.

Starts, with a private redis-server and a fresh SQLite database in a temp dir:
gunicorn (`wsgi:app`), --rq-workers x `flask --app app baton worker` and
`flask --app app baton cron`, exactly as the Procfile does, with the Cloud API
adapter pointed at the fake Graph API (tests/fakes/graph_api.py) running in a
process of its own: every send takes --latency s there, and it counts (and
answers 130429 to) any send beyond WHATSAPP_MPS in a sliding second of arrivals.

For each --mps value:
1. --customers customers ask for a human (signed webhooks); Baton sends each the
   handoff notice and offers them all to one agent (created with the CLI).
2. Idle latency: --probes single messages, one at a time, each from
   `POST /api/v1/conversations/{id}/messages` (clock read just before it) to the
   fake receiving it (its clock: one machine).
3. Throughput: the RQ workers are frozen (SIGSTOP), the agent queues --per-customer
   numbered texts to every customer over the API (16 threads), the workers go on
   (SIGCONT): the sending starts from a full queue, so what is measured is the
   sending and not how fast the API can queue. Rate = texts accepted by the fake
   from one second after the first to the first text of the last customer to
   start (the first second is a burst the moving window allows; after the last
   customer starts, only conversations under way are left, one send in flight
   each). Ratio = rate / WHATSAPP_MPS; goal >= 0.95.
4. The machine's ceiling, Baton frozen: a bare sender (threads, requests, the
   same body, paced at WHATSAPP_MPS, nothing else) against the same fake. On a
   small machine that ceiling can sit below WHATSAPP_MPS: then it, not the
   limit, is what Baton's rate is compared with ("Baton / bare").

    .venv/bin/python bench/outbound.py                        # --mps 80 1000
    .venv/bin/python bench/outbound.py --mps 80 --customers 200 --per-customer 5
"""
from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

TOKEN = "bench-graph-token"
ASK_FOR_A_HUMAN = "I want to talk to a human"


def start_fake(stack, args, mps: int, tmp: str):
    port = bl.free_port()
    program = ["-m", "tests.fakes.graph_api"] if args.fake == "suite" else [str(bl.ROOT / "bench" / "lean_graph.py")]
    proc = stack.spawn("fake-graph-api", [sys.executable, *program, "--port", str(port),
                                          "--token", TOKEN, "--latency", str(args.latency), str(args.latency),
                                          "--mps", str(mps)], env=bl.server_env(), log_dir=tmp)
    bl.wait_http(f"http://127.0.0.1:{port}/_fake/stats", proc)
    return f"http://127.0.0.1:{port}", proc


def start_baton(stack, args, mps: int, fake: str, tmp: str) -> dict:
    redis_url = bl.start_redis(stack)
    port = bl.free_port()
    env = bl.baton_env(tmp, redis_url, port, WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=TOKEN,
                       WHATSAPP_API_BASE=f"{fake}/v23.0", WHATSAPP_MPS=mps, SENTIMENT_LANGUAGES="",
                       OFFER_TIMEOUT=3600, PENDING_TIMEOUT=7200, AGENT_HEARTBEAT_TTL=3600,
                       AGENT_RESPONSE_TIMEOUT=7200, LOG_LEVEL="WARNING",
                       # the workers are frozen while the texts are queued (a minute on a busy machine):
                       # a pump's lease or a conversation's lock must not lapse meanwhile, or the pump
                       # frozen mid-send and the one started in its place both send for it
                       PUMP_LEASE=900, LOCK_TTL=900,
                       **dict(item.split("=", 1) for item in args.env))
    bl.init_db(env, tmp)
    web, port = bl.start_gunicorn(stack, "baton-web", "wsgi:app", bl.ROOT, args, env, tmp, port=port)
    flask = bl.tool("flask")
    workers = [stack.spawn(f"rq-worker-{n}", [flask, "--app", "app", "baton", "worker"], env=env, log_dir=tmp)
               for n in range(args.rq_workers)]
    cron = stack.spawn("cron", [flask, "--app", "app", "baton", "cron"], env=env, log_dir=tmp)
    return {"stack": stack, "url": f"http://127.0.0.1:{port}", "env": env, "db": f"{tmp}/baton.db", "workers": workers,
            "procs": {"web": web, **{f"rq{n}": w for n, w in enumerate(workers)}, "cron": cron}}


def query(db: str, sql: str, *params):
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute(sql, params).fetchall()


def wait_for(what: str, condition, timeout: float, interval: float = 0.25):
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def fake_get(fake: str, what: str):
    return requests.get(f"{fake}/_fake/{what}", timeout=60).json()


def customers_waiting(baton: dict, fake: str, args) -> tuple[str, dict[str, str]]:
    """Every customer asks for a human, is told so and offered to one agent; (agent token, wa_id -> conversation)."""
    done = subprocess.run([bl.tool("flask"), "--app", "app", "baton", "agent", "add", "--name", "ana",
                           "--groups", "support", "--max-concurrent", "1000"], env=baton["env"], cwd=str(bl.ROOT),
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(done.stdout + done.stderr)
    token = done.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    requests.patch(f"{baton['url']}/api/v1/agents/me", json={"status": "online"}, headers=headers,
                   timeout=30).raise_for_status()
    customers = [bl.customer(i) for i in range(args.customers)]

    def ask(item):
        n, (wa_id, name) = item
        raw, sig = bl.signed_webhook(wa_id, ASK_FOR_A_HUMAN, name, f"wamid.BENCH{n:06d}", int(time.time()))
        return requests.post(f"{baton['url']}/webhooks/whatsapp", data=raw, timeout=30,
                             headers={"Content-Type": "application/json", "X-Hub-Signature-256": sig}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(ask, enumerate(customers)))
    if codes != [200] * len(customers):
        raise RuntimeError(f"webhooks refused: {[c for c in codes if c != 200][:5]}")
    wait_for("every customer to be told and offered", lambda: (
        query(baton["db"], "SELECT COUNT(*) FROM conversation WHERE offered_agent_id IS NOT NULL")[0][0]
        == len(customers) and fake_get(fake, "stats")["accepted"] >= len(customers)), timeout=300)
    rows = query(baton["db"], "SELECT ct.wa_id, c.id FROM conversation c JOIN contact ct ON c.contact_id = ct.id")
    return token, dict(rows)


def idle_latency(baton: dict, fake: str, token: str, conversations: dict[str, str], probes: int) -> list[float]:
    """Milliseconds from the API call to the fake receiving the message, one message at a time."""
    headers = {"Authorization": f"Bearer {token}"}
    session = requests.Session()
    latencies = []
    for n, (wa_id, conversation_id) in enumerate(list(conversations.items())[:probes]):
        time.sleep(0.5)                 # idle: whatever the last one set going has settled
        text = f"probe {n} for {wa_id}"
        before = time.time()
        answer = session.post(f"{baton['url']}/api/v1/conversations/{conversation_id}/messages", json={"text": text},
                              headers=headers, timeout=30)
        answer.raise_for_status()

        def arrived():
            return next((a["at"] for a in fake_get(fake, "accepted") if a["text"] == text), None)
        latencies.append((wait_for(f"probe {n} to reach the fake", arrived, timeout=30, interval=0.1) - before)
                         * 1000)
    return latencies


def throughput(baton: dict, fake: str, token: str, conversations: dict[str, str], args, mps: int,
               fake_proc) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    for w in baton["workers"]:
        w.send_signal(signal.SIGSTOP)
    local = threading.local()

    def queue(item):
        wa_id, conversation_id = item
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        for j in range(1, args.per_customer + 1):
            session.post(f"{baton['url']}/api/v1/conversations/{conversation_id}/messages", headers=headers,
                         json={"text": f"#{j} for {wa_id}"}, timeout=60).raise_for_status()

    started = time.time()
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(queue, conversations.items()))
    finally:
        for w in baton["workers"]:
            w.send_signal(signal.SIGCONT)
    queued_in = time.time() - started
    expected = len(conversations) * args.per_customer
    print(f"  queued {expected} texts in {queued_in:.1f} s ({expected / queued_in:.0f}/s through the API); sending",
          flush=True)

    def texts():
        return [a for a in fake_get(fake, "accepted") if (a["text"] or "").startswith("#")]
    procs = {**baton["procs"], "fake": fake_proc}
    if args.profile:
        bl.start_profiles(baton["stack"], {n: p.pid for n, p in baton["procs"].items() if n.startswith("rq")},
                          args.profile, bl.ROOT / "bench" / "results" / "profiles", f"outbound-{mps}",
                          rate=20)      # hundreds of sending threads: py-spy falls behind at 100 Hz
    cpu0 = {name: bl.cpu_seconds(bl.tree(p.pid)) for name, p in procs.items()}
    wall0, busy0 = time.monotonic(), bl.system_busy_seconds()
    got = wait_for("every text to reach the fake", lambda: (t := texts()) and len(t) >= expected and t,
                   timeout=expected / mps * 4 + 120, interval=1.0)
    wall = time.monotonic() - wall0
    cpu = {name: round(100 * (bl.cpu_seconds(bl.tree(p.pid)) - cpu0[name]) / wall) for name, p in procs.items()}
    cpu["machine"] = round(100 * (bl.system_busy_seconds() - busy0) / wall)
    times = sorted(a["at"] for a in got)
    first: dict[str, float] = {}
    for a in sorted(got, key=lambda a: a["at"]):
        first.setdefault(a["to"], a["at"])
    start, end = times[0] + 1.0, max(first.values())
    steady = [t for t in times if start < t <= end]
    rate = len(steady) / (end - start) if end > start else None
    stats = fake_get(fake, "stats")
    twice = len(got) - len({(a["to"], a["text"]) for a in got})
    unsent = query(baton["db"], "SELECT status, COUNT(*) FROM message WHERE direction = 'out' GROUP BY status")
    return {"texts": expected, "accepted": len(got), "queue_api_rate": expected / queued_in,
            "steady_rate": rate, "steady_seconds": end - start, "ratio": rate / mps if rate else None,
            "overall_rate": (len(times) - 1) / (times[-1] - times[0]), "sending_seconds": times[-1] - times[0],
            "violations": stats["violations"], "refused": stats["refused"], "sent_twice": twice,
            "statuses": dict(unsent),
            "cpu_pct_while_sending": cpu}


def ceiling(fake: str, fake_proc, mps: int, args, seconds: float = 8.0) -> dict:
    """The machine's own ceiling, measured against the same fake right after Baton:
    the least a sender can do — one process, a thread per send in flight, a kept-alive
    session each, the same JSON body, paced at WHATSAPP_MPS, no database, no Redis.
    Baton cannot beat it; Baton's rate over it says what Baton's own work costs."""
    url = f"{fake}/v23.0/{bl.PHONE_NUMBER_ID}/messages"
    in_flight = max(4, int(mps * args.latency * 1.5))
    total = int(mps * seconds)
    start = time.monotonic() + 0.5
    local = threading.local()
    results: list[tuple[float, int]] = []
    lock = threading.Lock()

    def send(i: int):
        delay = start + i / mps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        response = session.post(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60, json={
            "messaging_product": "whatsapp", "to": f"1666{i % 1000:07d}", "type": "text",
            "text": {"body": f"ceiling {i}"}})
        with lock:
            results.append((time.monotonic(), response.status_code))

    cpu0 = {"fake": bl.cpu_seconds(bl.tree(fake_proc.pid)), "bare sender": bl.cpu_seconds([os.getpid()])}
    wall0, busy0 = time.monotonic(), bl.system_busy_seconds()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(send, range(total)))
    wall = time.monotonic() - wall0
    cpu = {"fake": bl.cpu_seconds(bl.tree(fake_proc.pid)), "bare sender": bl.cpu_seconds([os.getpid()])}
    cpu = {name: round(100 * (cpu[name] - cpu0[name]) / wall) for name in cpu}
    cpu["machine"] = round(100 * (bl.system_busy_seconds() - busy0) / wall)
    ok = sorted(at for at, status in results if status == 200)
    rate = (len(ok) - 1) / (ok[-1] - ok[0]) if len(ok) > 1 else None
    return {"sent": total, "accepted": len(ok), "rate": rate, "threads": in_flight,
            "ratio": rate / mps if rate else None, "cpu_pct": cpu}


def run(args, mps: int) -> dict:
    with bl.Stack(keep_tmp=args.keep_tmp) as stack:
        tmp = stack.tempdir(f"baton-bench-outbound-{mps}-")
        fake, fake_proc = start_fake(stack, args, mps, tmp)
        baton = start_baton(stack, args, mps, fake, tmp)
        print(f"WHATSAPP_MPS={mps}: web {baton['url']} ({bl.server_desc(args)}), {args.rq_workers} RQ workers, "
              f"cron; fake Graph API {fake} ({args.latency * 1000:.0f} ms a send)", flush=True)
        token, conversations = customers_waiting(baton, fake, args)
        print(f"  {len(conversations)} customers waiting; measuring idle latency", flush=True)
        latencies = sorted(idle_latency(baton, fake, token, conversations, args.probes))
        result = throughput(baton, fake, token, conversations, args, mps, fake_proc)
        for proc in baton["procs"].values():
            proc.send_signal(signal.SIGSTOP)            # the ceiling runs alone
        print("  measuring the machine's ceiling: a bare sender against the same fake", flush=True)
        result["ceiling"] = ceiling(fake, fake_proc, mps, args)
        for proc in baton["procs"].values():
            proc.send_signal(signal.SIGCONT)
        result.update({"mps": mps, "customers": len(conversations),
                       "idle_ms": {"n": len(latencies), "p50": bl.percentile(latencies, 50),
                                   "p99": bl.percentile(latencies, 99), "max": latencies[-1]}})
        return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mps", type=int, nargs="+", default=[80, 1000], help="WHATSAPP_MPS values (default: 80 1000)")
    ap.add_argument("--customers", type=int, default=0,
                    help="customers (default: 400 at 80 mps, 1000 above; at most 1000, one agent holds them)")
    ap.add_argument("--per-customer", type=int, default=5, help="texts queued per customer (default: 5)")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the fake takes per send (default: 0.2)")
    ap.add_argument("--probes", type=int, default=20, help="single messages timed at idle (default: 20)")
    ap.add_argument("--rq-workers", type=int, default=2, help="`flask baton worker` processes (default: 2)")
    bl.add_server_args(ap)
    ap.add_argument("--fake", choices=("lean", "suite"), default="lean",
                    help="lean: bench/lean_graph.py (asyncio, cheap); suite: tests/fakes/graph_api.py (Flask)")
    ap.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                    help="py-spy the RQ workers this long while sending (bench/results/profiles/)")
    ap.add_argument("--env", action="append", default=[], metavar="SETTING=VALUE",
                    help="a Baton setting for this run (repeatable), e.g. --env SEND_CONCURRENCY=300")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dirs (databases, logs)")
    ap.set_defaults(workers=2, threads=4, worker_class="gthread")
    args = ap.parse_args(argv)
    customers_given = args.customers

    results = []
    for mps in args.mps:
        args.customers = min(customers_given or (400 if mps <= 80 else 1000), 1000)
        results.append(run(args, mps))

    print()
    print(f"Outbound — fake Graph API at {args.latency * 1000:.0f} ms a send in its own process, "
          f"{args.rq_workers} RQ workers, {os.cpu_count()} CPUs")
    print(bl.table(["WHATSAPP_MPS", "texts", "customers", "steady msg/s", "ratio", "overall msg/s", "130429s",
                    "idle p50 ms", "idle p99 ms", "API queued/s", "bare sender msg/s", "Baton / bare"],
                   [[r["mps"], r["texts"], r["customers"], r["steady_rate"], bl.fmt(r["ratio"], 3), r["overall_rate"],
                     r["violations"], r["idle_ms"]["p50"], r["idle_ms"]["p99"], r["queue_api_rate"],
                     r["ceiling"]["rate"], bl.fmt(r["steady_rate"] / r["ceiling"]["rate"], 3)
                     if r["steady_rate"] and r["ceiling"]["rate"] else None]
                    for r in results]))
    for r in results:
        goal = r["ratio"] is not None and r["ratio"] >= 0.95
        print(f"WHATSAPP_MPS={r['mps']}: ratio {bl.fmt(r['ratio'], 3)} (goal >= 0.95): {'MET' if goal else 'MISSED'}; "
              f"sent {r['accepted']}/{r['texts']} in {r['sending_seconds']:.1f} s ({r['sent_twice']} twice); "
              f"refused {r['refused']}; "
              f"Baton statuses {r['statuses']}")
        print(f"  CPU while sending (% of one core): {r['cpu_pct_while_sending']}")
        print(f"  CPU of the bare sender's run (% of one core): {r['ceiling']['cpu_pct']}")
    path = bl.write_result("outbound", {"benchmark": "outbound", "machine": bl.machine_info(), "config": vars(args),
                                        "results": results})
    print(f"\nresult written to {path.relative_to(bl.ROOT)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped and removed", file=sys.stderr)
        sys.exit(130)
