#!/usr/bin/env python3
"""The same routing job done two ways on this machine, in one run, under the same load:

  (a) Baton: signed Cloud API webhook → gunicorn (`wsgi:app`) → inbound lane →
      RQ workers (`flask baton worker`, as the Procfile runs them) → routed
      (bot or the humans' queue), on SQLite, with the built-in bot;
  (b) an n8n-only router built the way the public n8n handoff templates do it
      (Webhook → extract → Redis lookup → IF → record → answer; see
      bench/n8n_router_workflow.py), on real n8n with a real Redis as its store.

The load is identical for both: the same list of requests, in the same order,
over the same number of closed-loop keep-alive connections. Each customer
writes a burst of five messages (hello, "1", a request for a person, two more);
a share of them is delivered twice and adjacent messages of a customer are
swapped, as providers do. The truth: the first two go to the bot, the request
for a person and everything after it go to a person, each exactly once.

Reported per system: requests/s and p50/p99 of the HTTP round trip, and for
Baton (which answers before it routes) the time until the last message was
routed; misrouted messages (a message meant for a person that reached the bot,
and the harmless converse), messages routed twice
and messages never routed.

    .venv/bin/python bench/n8n_router.py                 # 200 customers × 5 (+ duplicates), 8 connections
    .venv/bin/python bench/n8n_router.py --help

Needs n8n: `bash -c '. scripts/lib.sh; ensure_n8n'` installs n8n 2.8.4 into
~/.cache/baton (or set BATON_N8N_BIN).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402
import n8n_router_workflow as router  # noqa: E402

BURST = ["hello", "1", "Can I talk to a human please?", "my order number is 1234", "thanks"]
ESCALATES_AT = 2                                 # BURST[2] asks for a person
AGENT_SIDE = {"queued_for_agent", "agent", "held"}


def n8n_binary() -> str:
    explicit = os.environ.get("BATON_N8N_BIN")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "baton"
    candidates = [Path(explicit)] if explicit else sorted(cache.glob("n8n-*/node_modules/.bin/n8n"))
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    raise SystemExit("n8n is not installed: run  bash -c '. scripts/lib.sh; ensure_n8n'  (or set BATON_N8N_BIN)")


# -- the load ----------------------------------------------------------------------------

def make_plan(args) -> tuple[list[dict], dict[str, str]]:
    """(requests in delivery order, truth: message id → 'bot' | 'agent')."""
    rng = random.Random(args.seed)
    truth, plan = {}, []
    base = int(time.time()) - 60
    for c in range(args.customers):
        wa_id, name = bl.customer(50_000 + c)
        burst = []
        for k, text in enumerate(BURST):
            message_id = f"wamid.ROUTER{args.seed:03d}C{c:05d}K{k}"
            body, sig = bl.signed_webhook(wa_id, text, name, message_id, base + c // 10 + k)
            truth[message_id] = "agent" if k >= ESCALATES_AT else "bot"
            burst.append({"id": message_id, "body": body, "sig": sig})
        for k in range(len(burst) - 1):              # the provider delivers some out of order
            if rng.random() < args.swap_share:
                burst[k], burst[k + 1] = burst[k + 1], burst[k]
        for item in list(burst):                     # …and some twice
            if rng.random() < args.duplicate_share:
                burst.insert(min(len(burst), burst.index(item) + rng.randint(1, 3)), dict(item))
        plan.extend(burst)
    return plan, truth


def closed_loop(port: int, path: str, plan: list[dict], connections: int) -> dict:
    """Every request of the plan, in order, over `connections` keep-alive connections."""
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    for item in plan:
        jobs.put(item)
    results: list[tuple[float, int | str]] = []
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        while True:
            try:
                item = jobs.get_nowait()
            except queue.Empty:
                break
            t0 = time.perf_counter()
            status = bl.post_signed(conn, path, item["body"], item["sig"])
            mine.append(((time.perf_counter() - t0) * 1000, status))
        conn.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies = sorted(ms for ms, status in results if status == 200)
    statuses: dict[str, int] = {}
    for _, status in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"requests": len(results), "statuses": statuses, "wall_s": wall, "req_per_s": len(results) / wall,
            "p50_ms": bl.percentile(latencies, 50), "p99_ms": bl.percentile(latencies, 99),
            "max_ms": latencies[-1] if latencies else None}


def score(routes: dict[str, list[str]], truth: dict[str, str]) -> dict:
    """routes: message id → every side it was routed to (in any order).

    A message meant for a person that reached the bot is the harmful mistake
    (the bot answers a customer who asked for a human). A message meant for the
    bot that reached a person (it arrived after the request for a person) is
    the harmless one. Both count as misrouted."""
    to_bot = to_person = twice = never = 0
    for message_id, expected in truth.items():
        sides = routes.get(message_id, [])
        if not sides:
            never += 1
            continue
        if len(sides) > 1:
            twice += 1
        if expected == "agent" and "bot" in sides:
            to_bot += 1
        elif expected == "bot" and any(side != "bot" for side in sides):
            to_person += 1
    return {"messages": len(truth), "misrouted": to_bot + to_person, "meant_for_a_person_reached_the_bot": to_bot,
            "meant_for_the_bot_reached_a_person": to_person, "routed_twice": twice, "never_routed": never}


# -- Baton ---------------------------------------------------------------------------------

def run_baton(stack, args, plan, truth) -> dict:
    tmp = stack.tempdir("baton-bench-router-")
    redis_url = bl.start_redis(stack)
    port = bl.free_port()
    env = bl.baton_env(tmp, redis_url, port, WHATSAPP_MPS=1000)
    bl.init_db(env, tmp)
    web, port = bl.start_gunicorn(stack, "baton-web", "wsgi:app", bl.ROOT, args, env, tmp, port=port)
    flask = bl.tool("flask")
    workers = [stack.spawn(f"rq-worker-{n}", [flask, "--app", "app", "baton", "worker"], env=env, log_dir=tmp)
               for n in range(args.rq_workers)]
    stack.spawn("cron", [flask, "--app", "app", "baton", "cron"], env=env, log_dir=tmp)
    warm = [{"id": f"wamid.ROUTERWARM{n}", **dict(zip(("body", "sig"), bl.signed_webhook(
        bl.customer(90_000 + n)[0], "hello", "Warm Up", f"wamid.ROUTERWARM{n}", int(time.time()))))}
        for n in range(20)]
    closed_loop(port, "/webhooks/whatsapp", warm, args.connections)
    db = f"{tmp}/baton.db"
    wait_routed(db, len(warm), time.time() + 60)
    print(f"Baton: web :{port} ({bl.server_desc(args)}), {args.rq_workers} RQ workers, cron; "
          f"sending {len(plan)} webhooks over {args.connections} connections", flush=True)
    started = time.time()
    load = closed_loop(port, "/webhooks/whatsapp", plan, args.connections)
    routed = wait_routed(db, len(warm) + len(truth), time.time() + args.route_timeout)
    load["all_routed_after_s"] = (routed - started) if routed else None
    load["routed_per_s"] = len(truth) / (routed - started) if routed else None
    routes: dict[str, list[str]] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        for message_id, routed_to in conn.execute(
                "SELECT provider_message_id, routed_to FROM message WHERE direction = 'in' AND routed_to IS NOT NULL"):
            routes.setdefault(message_id, []).append("bot" if routed_to == "bot" else
                                                     "agent" if routed_to in AGENT_SIDE else routed_to)
    load["routing"] = score(routes, truth)
    for proc in workers + [web]:
        stack.stop(proc)
    return load


def wait_routed(db: str, expected: int, deadline: float) -> float | None:
    """The time the expected number of inbound messages were all routed (None: not by the deadline)."""
    while time.time() < deadline:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            done = conn.execute("SELECT COUNT(*) FROM message WHERE direction = 'in' AND routed_to IS NOT NULL"
                                ).fetchone()[0]
        if done >= expected:
            return time.time()
        time.sleep(0.05)
    return None


# -- n8n -----------------------------------------------------------------------------------

def n8n_env(home: str, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("N8N_")}
    env.update({
        "N8N_USER_FOLDER": home, "N8N_ENCRYPTION_KEY": "baton-bench-n8n-key", "N8N_LISTEN_ADDRESS": "127.0.0.1",
        "N8N_PORT": str(port), "N8N_RUNNERS_BROKER_PORT": str(bl.free_port()),
        "N8N_DIAGNOSTICS_ENABLED": "false", "N8N_PERSONALIZATION_ENABLED": "false",
        "N8N_VERSION_NOTIFICATIONS_ENABLED": "false", "N8N_TEMPLATES_ENABLED": "false",
        "N8N_SECURE_COOKIE": "false", "EXECUTIONS_DATA_SAVE_ON_SUCCESS": "none",
        "EXECUTIONS_DATA_SAVE_ON_PROGRESS": "false", "N8N_BLOCK_ENV_ACCESS_IN_NODE": "true",
    })
    return env


def run_n8n(stack, args, plan, truth) -> dict:
    binary = n8n_binary()
    home = stack.tempdir("baton-bench-n8n-")
    store_url = bl.start_redis(stack)
    store_port = int(store_url.rsplit(":", 1)[1].split("/")[0])
    port = bl.free_port()
    env = n8n_env(home, port)
    Path(home, "credentials.json").write_text(json.dumps(router.credentials("127.0.0.1", store_port)))
    Path(home, "workflow.json").write_text(json.dumps(router.workflow()))
    for argv in (["import:credentials", f"--input={home}/credentials.json"],
                 ["import:workflow", f"--input={home}/workflow.json"],
                 ["publish:workflow", f"--id={router.workflow()['id']}"]):
        done = subprocess.run([binary, *argv], env=env, cwd=home, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"n8n {argv[0]} failed:\n{done.stdout}\n{done.stderr}")
    proc = stack.spawn("n8n", [binary, "start"], env=env, cwd=home, log_dir=home)
    log = Path(home, "n8n.log")
    deadline = time.time() + 120
    while "Editor is now accessible" not in (log.read_text(errors="replace") if log.exists() else ""):
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"n8n did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    path = f"/webhook/{router.WEBHOOK_PATH}"
    warm = [{"id": "warm", "body": json.dumps({"entry": [{"changes": [{"value": {"messages": [
        {"from": "warm", "id": f"warm{n}", "text": {"body": "hello"}}]}}]}]}).encode(), "sig": ""} for n in range(20)]
    warmed = closed_loop(port, path, warm, args.connections)
    if warmed["statuses"].get("200") != len(warm):
        raise RuntimeError(f"n8n's router did not answer: {warmed['statuses']}\n"
                           f"{log.read_text(errors='replace')[-3000:]}")
    import redis
    store = redis.Redis.from_url(store_url)
    store.flushdb()
    print(f"n8n {n8n_version(binary)}: :{port}, store {store_url}; "
          f"sending {len(plan)} webhooks over {args.connections} connections", flush=True)
    load = closed_loop(port, path, plan, args.connections)
    routes: dict[str, list[str]] = {}
    for entry in store.lrange("routed", 0, -1):
        message_id, side = entry.decode().rsplit(" ", 1)
        routes.setdefault(message_id, []).append(side)
    load["routing"] = score(routes, truth)
    load["all_routed_after_s"] = load["wall_s"]          # n8n answers after it routed
    load["routed_per_s"] = len(truth) / load["wall_s"]
    stack.stop(proc)
    return load


def n8n_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "?"


# -- main ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--duplicate-share", type=float, default=0.2, help="share of messages delivered twice")
    parser.add_argument("--swap-share", type=float, default=0.25,
                        help="chance that two adjacent messages of a customer arrive swapped")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rq-workers", type=int, default=2)
    parser.add_argument("--route-timeout", type=float, default=120)
    parser.add_argument("--keep-tmp", action="store_true")
    bl.add_server_args(parser)
    bl.add_common_args(parser)
    parser.set_defaults(workers=2, worker_class="gevent")
    args = parser.parse_args()
    if args.wait_quiet:
        bl.wait_quiet(args.wait_quiet)
    plan, truth = make_plan(args)
    with bl.Stack(keep_tmp=args.keep_tmp) as stack:
        sys0, wall0 = bl.system_busy_seconds(), time.monotonic()
        baton = run_baton(stack, args, plan, truth)
        n8n = run_n8n(stack, args, plan, truth)
        system_pct = 100 * (bl.system_busy_seconds() - sys0) / (time.monotonic() - wall0)
    rows = []
    for name, r in (("Baton (webhook → lanes → workers)", baton), ("n8n-only router (Webhook → Redis → IF)", n8n)):
        rows.append([name, r["requests"], bl.fmt(r["req_per_s"]), bl.fmt(r["p50_ms"]), bl.fmt(r["p99_ms"]),
                     bl.fmt(r["routed_per_s"]), r["routing"]["meant_for_a_person_reached_the_bot"],
                     r["routing"]["meant_for_the_bot_reached_a_person"], r["routing"]["routed_twice"],
                     r["routing"]["never_routed"]])
    print()
    print(bl.table(["router", "requests", "req/s", "p50 ms", "p99 ms", "routed msg/s", "person's → bot", "bot's → person",
                    "routed twice", "never routed"], rows))
    ratio = baton["req_per_s"] / n8n["req_per_s"]
    routed_ratio = (baton["routed_per_s"] / n8n["routed_per_s"]) if baton["routed_per_s"] else None
    print(f"\nratio Baton / n8n: req/s {ratio:.2f}, routed msg/s {bl.fmt(routed_ratio, 2)}; "
          f"{len(truth)} messages, {len(plan)} requests "
          f"({len(plan) - len(truth)} duplicates); machine busy {system_pct:.0f}% of one core on average")
    path = bl.write_result("n8n_router", {"args": vars(args), "machine": bl.machine_info(), "baton": baton,
                                          "n8n": n8n, "ratio_req_per_s": ratio,
                                          "ratio_routed_per_s": routed_ratio})
    print(f"full result: {path}")


if __name__ == "__main__":
    main()
