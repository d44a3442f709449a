#!/usr/bin/env python3
"""Media: fetch-and-store throughput of 1 MB images, and what a media burst does to text latency.

Everything runs as production runs it, on a private redis-server and a fresh
SQLite database: gunicorn `wsgi:app`, --rq-workers x `flask --app app baton
worker` and `flask --app app baton cron` (the Procfile), WHATSAPP_PROVIDER=cloud_api
pointed at a fake Graph API in its own process (bench/fake_graph.py: media by
id → lookaside URL → bytes; the replies' sends are timed there).

1. Throughput. --files signed Cloud API image webhooks are POSTed (4
   connections, as fast as gunicorn takes them); each makes a Media record and
   a fetch job on the `media` queue, which a worker runs: lookup + download from
   the fake, sha256 + size checks, put into storage. Time = first POST → the
   last record's stored_at. Backends: the filesystem (file://) and S3 (moto's
   standalone server on 127.0.0.1, started here). Images are 1 MB of random
   bytes, distinct per id ("distinct": nothing deduped) or all the same
   ("identical": every fetch but the first finds its content key stored).
   Baseline, same run, same bytes, same fake, as many threads as RQ workers:
   a plain `requests` loop (lookup, streamed download) writing each file to
   disk ("raw copy → disk"), and the same loop putting it into the same moto
   bucket with boto3 ("raw copy → S3"). Baseline and Baton runs are interleaved.

2. Text latency under media. The e2e measurement of bench/e2e.py (its plan
   and open-loop sender: greetings the built-in bot answers; latency = POST →
   the fake Graph API accepting the bot's reply) at --rate msg/s, once alone
   ("quiet") and once while image webhooks arrive at --burst-rate/s ("media
   burst"), interleaved --latency-repeats times, on the filesystem backend.

    .venv/bin/python bench/media.py
    .venv/bin/python bench/media.py --help
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402
import e2e  # noqa: E402
from fake_graph import IMAGE_SIZE, SAME_PREFIX, image_bytes  # noqa: E402

TOKEN = "bench-graph-token"
BUCKET = "baton-bench-media"
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
WEBHOOK_PATH = "/webhooks/whatsapp"
MEDIA_CUSTOMERS = 100_000          # media senders are customers 100000…, text senders 0…


# -- the outside world: fake Graph API, moto ------------------------------------------------------

def start_fake_graph(stack, tmp) -> str:
    port = bl.free_port()
    proc = stack.spawn("fake-graph", [sys.executable, str(bl.BENCH_DIR / "fake_graph.py"), "--port", str(port),
                                      "--token", TOKEN], log_dir=tmp)
    bl.wait_port(port, proc)
    return f"http://127.0.0.1:{port}"


def start_moto(stack, tmp) -> str:
    port = bl.free_port()
    env = {**bl.server_env(), **AWS_ENV}
    proc = stack.spawn("moto", [bl.tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)], env=env, log_dir=tmp)
    bl.wait_port(port, proc, timeout=30)
    url = f"http://127.0.0.1:{port}"
    s3_client(url).create_bucket(Bucket=BUCKET)
    return url


def s3_client(endpoint: str):
    import boto3

    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                 region_name="us-east-1").client("s3", endpoint_url=endpoint)


def aws_free_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")}
    return {**env, **AWS_ENV}


# -- Baton -----------------------------------------------------------------------------------------

def start_baton(stack, args, graph_url: str, storage_url: str, name: str, media_workers: int | None = None) -> dict:
    media_workers = args.media_workers if media_workers is None else media_workers
    tmp = stack.tempdir(f"baton-bench-media-{name}-")
    redis_url = bl.start_redis(stack)
    port = bl.free_port()
    saved = os.environ.copy()
    os.environ.clear()
    os.environ.update(aws_free_env())       # baton_env starts from os.environ (minus gunicorn's knobs)
    try:
        env = bl.baton_env(tmp, redis_url, port, WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=TOKEN,
                           WHATSAPP_API_BASE=f"{graph_url}/v23.0", MEDIA_STORAGE_URL=storage_url,
                           WHATSAPP_MPS=max(80, int(args.rate * 2)))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    bl.init_db(env, tmp)
    web, port = bl.start_gunicorn(stack, f"{name}-web", "wsgi:app", bl.ROOT, args, env, tmp, port=port)
    flask = bl.tool("flask")
    lanes = ["--queue", "inbound", "--queue", "outbound", "--queue", "events", "--queue", "default"] \
        if media_workers else []
    workers = [stack.spawn(f"{name}-rq-worker-{n}", [flask, "--app", "app", "baton", "worker", *lanes], env=env,
                           log_dir=tmp) for n in range(args.rq_workers)]
    workers += [stack.spawn(f"{name}-rq-media-worker-{n}", [flask, "--app", "app", "baton", "worker", "--queue",
                                                             "media"], env=env, log_dir=tmp)
                for n in range(media_workers)]
    cron = stack.spawn(f"{name}-cron", [flask, "--app", "app", "baton", "cron"], env=env, log_dir=tmp)
    baton = {"name": name, "stack": stack, "media_workers": media_workers, "port": port, "web": web, "workers": workers, "cron": cron, "db": f"{tmp}/baton.db",
             "tmp": tmp, "graph": graph_url}
    warm_up(baton, args)
    return baton


def tracebacks_in(baton) -> int:
    return sum(p.read_text(errors="replace").count("Traceback") for p in Path(baton["tmp"]).glob("*.log"))


def stop_baton(stack, baton) -> None:
    for proc in (baton["web"], baton["cron"], *baton["workers"]):
        stack.stop(proc)


def baton_pids(baton) -> list[int]:
    pids = bl.tree(baton["web"].pid)
    for proc in (baton["cron"], *baton["workers"]):
        pids += bl.tree(proc.pid)
    return pids


def warm_up(baton, args) -> None:
    """A few images and texts through the whole pipeline before any clock starts."""
    ids = [f"9{n:011d}" for n in range(4)]
    items = [media_item(media_id, MEDIA_CUSTOMERS - 1 - n) for n, media_id in enumerate(ids)]
    post_all(baton["port"], items, 2)
    if any(m["status"] != 200 for m in items):
        raise RuntimeError(f"warm-up webhooks refused: {[m['status'] for m in items]} (see {baton['tmp']})")
    done = wait_media(baton["db"], ids, time.time() + 60)
    if done["stored"] < len(ids):
        raise RuntimeError(f"warm-up media not stored within 60 s: {done} (see the logs in {baton['tmp']})")


# -- image webhooks --------------------------------------------------------------------------------

def image_webhook(wa_id: str, name: str, message_id: str, media_id: str, sha256_b64: str) -> tuple[bytes, str]:
    """A Cloud API image webhook (the shape of tests/fixtures/cloud_api/message_image.json), signed."""
    import orjson

    from integrations.signing import signature

    body = {"object": "whatsapp_business_account", "entry": [{"id": "bench-waba", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": bl.PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": message_id, "timestamp": str(int(time.time())), "type": "image",
                          "image": {"mime_type": "image/jpeg", "sha256": sha256_b64, "id": media_id,
                                    "caption": "the crack on the lid",
                                    "url": f"https://lookaside.fbsbx.com/whatsapp_business/attachments/"
                                           f"?mid={media_id}"}}]}}]}]}
    raw = orjson.dumps(body)
    return raw, signature(bl.BENCH_APP_SECRET, raw)


_sha_cache: dict[str, str] = {}


def media_item(media_id: str, customer_index: int) -> dict:
    if str(bl.ROOT) not in sys.path:
        sys.path.insert(0, str(bl.ROOT))
    seed = "same" if media_id.startswith(SAME_PREFIX) else media_id
    if seed not in _sha_cache:
        _sha_cache[seed] = base64.b64encode(hashlib.sha256(image_bytes(media_id)).digest()).decode()
    wa_id, name = bl.customer(customer_index)
    body, sig = image_webhook(wa_id, name, f"wamid.MEDIA{media_id}", media_id, _sha_cache[seed])
    return {"id": f"wamid.MEDIA{media_id}", "media_id": media_id, "body": body, "sig": sig, "offset": 0.0,
            "warmup": False}


def media_ids(kind: str, run: int, n: int) -> list[str]:
    first = SAME_PREFIX if kind == "identical" else "7"
    return [f"{first}{run:03d}{i:08d}" for i in range(n)]


def post_all(port: int, items: list[dict], connections: int) -> None:
    """POST every item as fast as `connections` keep-alive connections allow (closed loop)."""
    import http.client

    todo = iter(items)
    lock = threading.Lock()

    def run():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                conn.close()
                return
            item["t_post"] = time.time()
            try:
                conn.request("POST", WEBHOOK_PATH, body=item["body"],
                             headers={"Content-Type": "application/json", "X-Hub-Signature-256": item["sig"]})
                response = conn.getresponse()
                response.read()
                item["status"] = response.status
            except OSError as exc:
                item["status"] = f"error: {type(exc).__name__}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            item["t_ack"] = time.time()

    threads = [threading.Thread(target=run) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def wait_media(db: str, ids: list[str], deadline: float) -> dict:
    """Poll until every record of `ids` is stored or failed (or the deadline): counts and stored_at."""
    marks = ",".join("?" * len(ids))
    while True:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            rows = conn.execute(f"SELECT status, stored_at, size FROM media WHERE provider_media_id IN ({marks})",
                                ids).fetchall()
        stored = [r for r in rows if r[0] == "stored"]
        failed = [r for r in rows if r[0] == "failed"]
        if len(stored) + len(failed) >= len(ids) or time.time() > deadline:
            return {"records": len(rows), "stored": len(stored), "failed": len(failed),
                    "last_stored": max((bl.utc_ts(r[1]) for r in stored), default=None),
                    "bytes": sum(r[2] or 0 for r in stored)}
        time.sleep(0.05)


def baton_throughput(baton, args, kind: str, run: int) -> dict:
    ids = media_ids(kind, run, args.files)
    items = [media_item(media_id, MEDIA_CUSTOMERS + run * args.files + n) for n, media_id in enumerate(ids)]
    cpu0, sys0, wall0 = bl.cpu_seconds(baton_pids(baton)), bl.system_busy_seconds(), time.monotonic()
    load = bl.loadavg()
    if args.profile and not args.profiled:
        args.profiled = True
        targets = {f"rq{n}": w.pid for n, w in enumerate(baton["workers"])}
        bl.start_profiles(baton["stack"], targets, args.profile, bl.RESULTS_DIR / "profiles",
                          f"media-{baton['name']}-{kind}-{time.strftime('%Y%m%dT%H%M%S')}", idle=args.profile_idle)
    post_all(baton["port"], items, 4)
    refused = [m["status"] for m in items if m["status"] != 200]
    done = wait_media(baton["db"], ids, time.time() + args.timeout)
    wall = time.monotonic() - wall0
    if args.profile:
        bl.wait_profiles(baton["stack"])
    t0 = min(m["t_post"] for m in items)
    span = (done["last_stored"] - t0) if done["last_stored"] else None
    return {"kind": kind, "backend": baton["name"], "files": len(ids), "refused": len(refused), **done,
            "seconds": span, "files_per_s": done["stored"] / span if span else None,
            "mb_per_s": done["bytes"] / 1e6 / span if span else None,
            "post_s": max(m["t_ack"] for m in items) - t0,
            "baton_cpu_pct": 100 * (bl.cpu_seconds(baton_pids(baton)) - cpu0) / wall,
            "system_cpu_pct": 100 * (bl.system_busy_seconds() - sys0) / wall, "loadavg_before": load}


def raw_copy(args, graph_url: str, target: str, run: int, moto_url: str | None, tmp: str) -> dict:
    """The baseline: a plain requests loop per worker — lookup, streamed download, write to disk or put to S3."""
    import requests

    ids = media_ids("distinct", run, args.files)
    out_dir = Path(tmp, f"raw-{target}-{run}")
    out_dir.mkdir(parents=True, exist_ok=True)
    client = s3_client(moto_url) if target == "s3" else None
    lock = threading.Lock()
    todo = iter(ids)
    copied = [0]
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def loop():
        session = requests.Session()
        while True:
            with lock:
                media_id = next(todo, None)
            if media_id is None:
                return
            url = session.get(f"{graph_url}/v23.0/{media_id}", headers=auth, timeout=30).json()["url"]
            with session.get(url, headers=auth, stream=True, timeout=30) as response:
                response.raise_for_status()
                if client is None:
                    with open(out_dir / media_id, "wb") as f:
                        for chunk in response.iter_content(64 * 1024):
                            f.write(chunk)
                            n = len(chunk)
                            with lock:
                                copied[0] += n
                        if target == "disk-fsync":          # as durable as Baton's filesystem store
                            f.flush()
                            os.fsync(f.fileno())
                else:
                    data = response.content
                    client.put_object(Bucket=BUCKET, Key=f"raw/{run}/{media_id}", Body=data,
                                      ContentType="image/jpeg")
                    with lock:
                        copied[0] += len(data)

    load = bl.loadavg()
    sys0 = bl.system_busy_seconds()
    t0 = time.monotonic()
    threads = args.media_workers or args.rq_workers        # as many as the workers that fetch
    with cf.ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(loop) for _ in range(threads)]:
            f.result()
    span = time.monotonic() - t0
    import shutil
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"kind": "distinct", "backend": f"raw-{target}", "files": len(ids), "stored": len(ids), "seconds": span,
            "files_per_s": len(ids) / span, "mb_per_s": copied[0] / 1e6 / span,
            "system_cpu_pct": 100 * (bl.system_busy_seconds() - sys0) / span, "loadavg_before": load}


# -- text latency with and without a media burst --------------------------------------------------

ANSWERS_SQL = """
SELECT i.provider_message_id, om.provider_message_id, t.created_at
FROM message i
JOIN bot_turn t ON t.message_id = i.id
JOIN message om ON om.turn_id = t.id AND om.direction = 'out'
WHERE i.direction = 'in' AND om.provider_message_id IS NOT NULL
"""


def sent_at(graph_url: str) -> dict:
    with urllib.request.urlopen(f"{graph_url}/_bench/sent", timeout=30) as response:
        return json.loads(response.read())


def answered(baton, plan_ids: set, routed: dict | None = None) -> dict:
    """{inbound provider id: the earliest time the fake Graph API accepted a reply to it};
    fills `routed` with {inbound provider id: bot_turn.created_at} (the inbound lane's part)."""
    times = sent_at(baton["graph"])
    first: dict = {}
    with sqlite3.connect(f"file:{baton['db']}?mode=ro", uri=True, timeout=30) as conn:
        for inbound, wamid, turn_at in conn.execute(ANSWERS_SQL):
            if inbound in plan_ids and wamid in times:
                first[inbound] = min(first.get(inbound, float("inf")), times[wamid])
                if routed is not None:
                    routed[inbound] = bl.utc_ts(turn_at)
    return first


def latency_run(baton, args, burst: bool, run: int) -> dict:
    plan_args = SimpleNamespace(rate=args.rate, warmup=args.warmup, duration=args.duration,
                                customers=args.customers, min_gap=args.min_gap)
    plan = e2e.make_plan(plan_args, time.time() + 1, f"M{run:02d}{'B' if burst else 'Q'}")
    burst_plan, burst_ids = [], []
    if burst:
        n = int(args.burst_rate * (args.warmup + args.duration))
        burst_ids = media_ids("distinct", 500 + run, n)
        for i, media_id in enumerate(burst_ids):
            item = media_item(media_id, MEDIA_CUSTOMERS + 50_000 + run * n + i)
            item["offset"] = i / args.burst_rate
            burst_plan.append(item)
    load = bl.loadavg()
    cpu0, sys0, wall0 = bl.cpu_seconds(baton_pids(baton)), bl.system_busy_seconds(), time.monotonic()
    sender = None
    if burst_plan:
        sender = threading.Thread(target=e2e.open_loop, args=(baton["port"], burst_plan, 4))
        sender.start()
    e2e.open_loop(baton["port"], plan, args.sender_threads)
    if sender:
        sender.join()
    wall = time.monotonic() - wall0
    cpu = 100 * (bl.cpu_seconds(baton_pids(baton)) - cpu0) / wall
    system = 100 * (bl.system_busy_seconds() - sys0) / wall
    measured = [m for m in plan if not m["warmup"] and m.get("status") == 200]
    ids = {m["id"] for m in measured}
    last_post = max(m["t_post"] for m in plan if "t_post" in m)
    routed: dict = {}
    while True:
        first = answered(baton, ids, routed)
        if len(first) >= len(ids) or time.time() > last_post + args.answer_timeout + 1:
            break
        time.sleep(0.25)
    lat = [((first[m["id"]] - m["t_post"]) * 1000) if m["id"] in first else float("inf") for m in measured]
    late = sum(1 for v in lat if v > args.answer_timeout * 1000)
    stats = e2e.sender_stats(plan)
    media = None
    if burst_ids:
        media = wait_media(baton["db"], burst_ids, time.time() + args.timeout)
        t0 = min(m["t_post"] for m in burst_plan)
        media["seconds_to_store_all"] = (media["last_stored"] - t0) if media["last_stored"] else None
        media["offered"] = len(burst_ids)
    to_routed = [(routed[m["id"]] - m["t_post"]) * 1000 for m in measured if m["id"] in routed]
    return {"burst": burst, "e2e_ms": e2e.pct_table(lat), "routed_ms": e2e.pct_table(to_routed), "not_answered_within_timeout": late,
            "post_ms": stats["post_ms"], "sent": stats["sent"], "errors": stats["errors"],
            "achieved_rate": stats["achieved_rate"], "baton_cpu_pct": cpu, "system_cpu_pct": system,
            "loadavg_before": load, "media": media}


# -- main ------------------------------------------------------------------------------------------

def start_shared(stack, args, graph_url, tmp) -> dict:
    return start_baton(stack, args, graph_url, f"file://{tmp}/media-store-shared", "fs-shared", media_workers=0)


def workers_desc(args) -> str:
    if args.media_workers:
        return f"{args.rq_workers} RQ workers (no media) + {args.media_workers} media-only"
    return f"{args.rq_workers} RQ workers (every queue)"


def summary(runs: list[dict], key: str) -> tuple:
    values = [r[key] for r in runs if r.get(key) is not None]
    if not values:
        return None, None, None
    return bl.median(values), min(values), max(values)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=60, help="images per throughput run (default: 60 x 1 MB)")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per backend and kind (default: 3)")
    ap.add_argument("--backends", default="fs,s3", help="fs, s3 or both (default: fs,s3)")
    ap.add_argument("--rq-workers", type=int, default=2, help="`flask baton worker` processes (default: 2, "
                                                              "as run.sh's BATON_WORKERS)")
    ap.add_argument("--media-workers", type=int, default=0,
                    help="extra `baton worker --queue media` processes; with > 0 the --rq-workers listen on every "
                         "queue but `media` (default: 0: every worker takes every queue, as the Procfile does)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds to wait for a run's media (default: 180)")
    g = ap.add_argument_group("text latency under media")
    g.add_argument("--rate", type=float, default=50.0, help="text webhooks per second, open loop (default: 50)")
    g.add_argument("--duration", type=int, default=10, help="measured seconds (default: 10)")
    g.add_argument("--warmup", type=int, default=2, help="seconds sent first and not counted (default: 2)")
    g.add_argument("--burst-rate", type=float, default=10.0,
                   help="image webhooks per second during a burst run (default: 10, i.e. 10 MB/s offered)")
    g.add_argument("--latency-repeats", type=int, default=2, help="quiet/burst pairs (default: 2)")
    g.add_argument("--customers", type=int, default=3000)
    g.add_argument("--min-gap", type=float, default=8.0)
    g.add_argument("--sender-threads", type=int, default=16)
    g.add_argument("--answer-timeout", type=float, default=10.0)
    g.add_argument("--skip-latency", action="store_true")
    g.add_argument("--compare-split", action="store_true",
                   help="run the latency pairs on two Batons, interleaved: every worker on every queue (the "
                        "Procfile), and --rq-workers without `media` + max(1, --media-workers) media-only workers")
    bl.add_server_args(ap)
    bl.add_common_args(ap)
    ap.add_argument("--profile", type=int, default=0, metavar="S",
                    help="py-spy record the RQ workers for S s from the start of the first Baton throughput run "
                         "(collapsed stacks under bench/results/profiles/; needs py-spy; do not quote its figures)")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args(argv)
    args.profiled = False
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    print(f"media benchmark: {args.files} x {IMAGE_SIZE // 1024} KB images per run, {args.repeats} runs, "
          f"{bl.server_desc(args)}, {workers_desc(args)}, backends {backends}; load average "
          f"{bl.loadavg():.2f}", flush=True)
    quiet = bl.wait_quiet(args.wait_quiet)
    result = {"benchmark": "media", "machine": bl.machine_info(), "config": vars(args), "throughput": [],
              "latency": [], "cpu_before_start_pct": quiet}
    with bl.Stack(keep_tmp=args.keep_tmp) as stack:
        tmp = stack.tempdir("baton-bench-media-")
        graph_url = start_fake_graph(stack, tmp)
        moto_url = start_moto(stack, tmp) if "s3" in backends else None
        run = 0
        for backend in backends:
            storage = (f"file://{tmp}/media-store" if backend == "fs" else
                       f"s3://{BUCKET}/baton?endpoint_url={urllib.parse.quote(moto_url, safe='')}&region=us-east-1")
            baton = start_baton(stack, args, graph_url, storage, backend)
            print(f"{backend}: Baton web :{baton['port']}, {workers_desc(args)}, storage {storage}", flush=True)
            for r in range(args.repeats):
                run += 1
                for target in (("disk", "disk-fsync") if backend == "fs" else ("s3",)):
                    raw = raw_copy(args, graph_url, target, run, moto_url, tmp)
                    result["throughput"].append(raw)
                    print(f"  raw copy → {target}: {raw['files_per_s']:.1f} files/s "
                          f"{raw['mb_per_s']:.1f} MB/s (load {raw['loadavg_before']:.2f})", flush=True)
                for kind in ("distinct", "identical"):
                    run += 1
                    got = baton_throughput(baton, args, kind, run)
                    result["throughput"].append(got)
                    print(f"  Baton {backend} {kind}: {bl.fmt(got['files_per_s'])} files/s "
                          f"{bl.fmt(got['mb_per_s'])} MB/s, stored {got['stored']}/{got['files']} "
                          f"failed {got['failed']} (load {got['loadavg_before']:.2f})", flush=True)
            if backend == "fs" and not args.skip_latency:
                layouts = [("as configured", baton)]
                if args.compare_split:
                    split = start_baton(stack, args, graph_url, f"file://{tmp}/media-store-split", "fs-split",
                                        media_workers=max(1, args.media_workers))
                    layouts = [("every worker every queue", start_shared(stack, args, graph_url, tmp))
                               if args.media_workers else ("every worker every queue", baton),
                               (f"+{split['media_workers']} media-only worker", split)]
                    print(f"  latency: comparing {[name for name, _ in layouts]}", flush=True)
                for r in range(args.latency_repeats):
                    for (layout, target), burst in [(lay, b) for lay in layouts for b in (False, True)]:
                        run += 1
                        got = latency_run(target, args, burst, run)
                        got["layout"] = layout
                        result["latency"].append(got)
                        e = got["e2e_ms"]
                        media = got["media"] or {}
                        print(f"  [{layout}] text {args.rate:g}/s {'+ media burst' if burst else 'quiet'}: e2e p50 "
                              f"{bl.fmt(e['p50'])} p99 {bl.fmt(e['p99'])} ms, unanswered "
                              f"{got['not_answered_within_timeout']}"
                              + (f"; burst {media.get('stored')}/{media.get('offered')} stored in "
                                 f"{bl.fmt(media.get('seconds_to_store_all'))} s" if burst else "")
                              + f" (load {got['loadavg_before']:.2f})", flush=True)
                for _, target in layouts:
                    if target is not baton:
                        result.setdefault("tracebacks_in_logs", {})[target["name"]] = tracebacks_in(target)
                        stop_baton(stack, target)
            result.setdefault("tracebacks_in_logs", {})[backend] = tracebacks_in(baton)
            stop_baton(stack, baton)

    print()
    print(f"Media fetch-and-store — {args.files} x 1 MB per run, median [min–max] of {args.repeats} runs, "
          f"{workers_desc(args)}, {os.cpu_count()} CPUs")
    rows = []
    groups = [("raw-disk", "distinct", "raw copy → disk (baseline)"),
              ("raw-disk-fsync", "distinct", "raw copy → disk + fsync"), ("fs", "distinct", "Baton → filesystem"),
              ("fs", "identical", "Baton → filesystem, identical"),
              ("raw-s3", "distinct", "raw copy → S3/moto (baseline)"), ("s3", "distinct", "Baton → S3/moto"),
              ("s3", "identical", "Baton → S3/moto, identical")]
    medians = {}
    for backend, kind, label in groups:
        runs = [r for r in result["throughput"] if r["backend"] == backend and r["kind"] == kind]
        if not runs:
            continue
        fps, lo, hi = summary(runs, "files_per_s")
        mbps = summary(runs, "mb_per_s")[0]
        medians[(backend, kind)] = fps
        base = medians.get(("raw-s3" if backend in ("s3", "raw-s3") else "raw-disk", "distinct"))
        rows.append([label, fps, f"{bl.fmt(lo)}–{bl.fmt(hi)}", mbps,
                     f"{fps / base:.2f}" if fps and base else "-",
                     sum(r.get("failed", 0) for r in runs), summary(runs, "loadavg_before")[0]])
    print(bl.table(["path", "files/s", "range", "MB/s", "x baseline", "failed", "load avg"], rows))
    result["medians_files_per_s"] = {f"{b}/{k}": v for (b, k), v in medians.items()}

    if result["latency"]:
        print()
        print(f"Text e2e latency (POST → reply accepted by the fake Graph API), {args.rate:g} msg/s for "
              f"{args.duration} s; burst = {args.burst_rate:g} images/s (1 MB) at the same time")
        rows = []
        layouts = list(dict.fromkeys(r["layout"] for r in result["latency"]))
        for layout, burst in [(lay, b) for lay in layouts for b in (False, True)]:
            runs = [r for r in result["latency"] if r["burst"] == burst and r["layout"] == layout]
            p50 = [r["e2e_ms"]["p50"] for r in runs]
            p99 = [r["e2e_ms"]["p99"] for r in runs]
            label = "with media burst" if burst else "quiet"
            rows.append([f"{layout}: {label}" if len(layouts) > 1 else label, bl.median(p50), bl.median(p99),
                         " / ".join(bl.fmt(v) for v in p99),
                         bl.median([r["routed_ms"]["p99"] for r in runs]), max(r["e2e_ms"]["max"] for r in runs),
                         sum(r["not_answered_within_timeout"] for r in runs),
                         bl.median([r["baton_cpu_pct"] for r in runs]), bl.median([r["loadavg_before"] for r in runs])])
        print(bl.table(["text", "p50 ms", "p99 ms", "p99 each run", "routed p99", "max ms", "unanswered", "Baton CPU %",
                        "load avg"], rows))
        result["p99_ratio_burst_over_quiet"] = {}
        for layout in layouts:
            runs = [r for r in result["latency"] if r["layout"] == layout]
            q = bl.median([r["e2e_ms"]["p99"] for r in runs if not r["burst"]])
            b = bl.median([r["e2e_ms"]["p99"] for r in runs if r["burst"]])
            ratio = result["p99_ratio_burst_over_quiet"][layout] = b / q if q and b else None
            bursts = [r["media"] for r in runs if r["burst"]]
            print(f"{layout}: p99 with burst / quiet {bl.fmt(ratio, 2)}x;  burst media stored: "
                  + ", ".join(f"{m['stored']}/{m['offered']} in {bl.fmt(m['seconds_to_store_all'])} s"
                              for m in bursts))
    print(f"tracebacks in logs: {result.get('tracebacks_in_logs')}")
    print(f"load average now {bl.loadavg():.2f}")
    path = bl.write_result("media", result)
    print(f"\nresult written to {path.relative_to(bl.ROOT)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: everything started was stopped and removed", file=sys.stderr)
        sys.exit(130)
