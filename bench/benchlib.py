"""Shared plumbing for the benchmarks in bench/ (not a test module).

Everything a benchmark starts (redis-server, gunicorn, RQ workers, the cron,
wrk) runs in its own session/process group and is registered with a `Stack`,
which stops each group by its id, and removes its temp dirs, on normal exit,
on an exception, on Ctrl-C and on SIGTERM. Nothing here talks to the shared
Redis on 6379 or to instance/baton.db: every child gets an explicit
REDIS_URL / DATABASE_URL pointing at private, temporary ones.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = ROOT / ".venv" / "bin"
PHONE_NUMBER_ID = "sandbox-1"
BENCH_APP_SECRET = "bench-app-secret-0123456789abcdef"


# -- processes ------------------------------------------------------------------

def tool(name: str) -> str:
    """A console script from the project's venv (else from PATH)."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found (create the venv: python -m venv .venv && "
                         f".venv/bin/pip install -r requirements.txt)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raise_system_exit(signum, frame):
    raise SystemExit(128 + signum)


class Stack:
    """Processes and temp dirs of one benchmark run, torn down in reverse order."""

    def __init__(self, keep_tmp: bool = False):
        self.keep_tmp = keep_tmp
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.dirs: list[str] = []
        self._closed = False

    def __enter__(self):
        # Explicitly: a shell starts background jobs with SIGINT ignored, and Python keeps that.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _raise_system_exit)
        return self

    def __exit__(self, *exc):
        # Ctrl-C during teardown must not leave anything behind.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.close()
        finally:
            signal.signal(signal.SIGINT, previous)
        return False

    def tempdir(self, prefix: str) -> str:
        path = tempfile.mkdtemp(prefix=prefix)
        self.dirs.append(path)
        return path

    def spawn(self, name: str, argv: list[str], *, env: dict | None = None, cwd: str | Path = ROOT,
              log_dir: str | None = None) -> subprocess.Popen:
        """Start argv in a new session (its own process group: we stop it by its pgid)."""
        if log_dir:
            out = open(os.path.join(log_dir, f"{name}.log"), "ab")
        else:
            out = subprocess.DEVNULL
        proc = subprocess.Popen(argv, env=env, cwd=str(cwd), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        if log_dir:
            out.close()
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 15.0) -> None:
        """SIGTERM the process group we started, SIGKILL it if it lingers."""
        if proc.poll() is None:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        # Children of a master (gunicorn workers) share its group; make sure none survive.
        _killpg(proc.pid, signal.SIGKILL)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def close(self, timeout: float = 15.0) -> None:
        """SIGTERM every process group at once, wait for all (≤ timeout), SIGKILL the rest."""
        if self._closed:
            return
        self._closed = True
        procs = list(reversed(self.procs))
        for _, proc in procs:
            if proc.poll() is None:
                _killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + timeout
        for name, proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                print(f"  ({name} [{proc.pid}] ignored SIGTERM; killing it)", file=sys.stderr)
            _killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                print(f"  (could not stop {name} [{proc.pid}])", file=sys.stderr)
        self.procs = []
        for path in reversed(self.dirs):
            if self.keep_tmp:
                print(f"  kept {path}", file=sys.stderr)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[0]} exited with {proc.returncode} while starting")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s ({last})")


def start_redis(stack: Stack) -> str:
    """A private redis-server on a free port, nothing persisted (cf. tests/support.RedisServer)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    data = stack.tempdir("baton-bench-redis-")
    proc = stack.spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", data], log_dir=data)
    wait_port(port, proc, timeout=10)
    return f"redis://127.0.0.1:{port}/0"


def server_env() -> dict:
    """The caller's environment minus what would silently change gunicorn's settings."""
    return {k: v for k, v in os.environ.items()
            if k not in ("GUNICORN_CMD_ARGS", "WEB_CONCURRENCY", "BATON_BIND", "BATON_WORKER_CLASS",
                         "BATON_THREADS", "BATON_ACCESS_LOG")}


def baton_env(tmp: str, redis_url: str, port: int, **extra) -> dict:
    """The environment of every Baton process of a run: private DB + Redis, sandbox provider,
    built-in bot (n8n URLs blanked even if the caller's shell sets them)."""
    env = server_env()
    env.update({
        "DATABASE_URL": f"sqlite:///{tmp}/baton.db",
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": "benchbaton",
        "WHATSAPP_PROVIDER": "sandbox",
        "WHATSAPP_APP_SECRET": BENCH_APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": "bench-verify",
        "SANDBOX_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "N8N_BOT_URL": "", "N8N_NOTIFY_URL": "",
        "BATON_EVENT_SECRET": "bench-event-secret-0123456789abcdef",
        "SECRET_KEY": "bench-secret-key-0123456789abcdef",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "MEDIA_STORAGE_URL": f"file://{tmp}/media",
        "FLASK_APP": "app",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def init_db(env: dict, log_dir: str) -> None:
    with open(os.path.join(log_dir, "init-db.log"), "wb") as out:
        done = subprocess.run([tool("flask"), "--app", "app", "baton", "init-db"], env=env, cwd=str(ROOT),
                              stdout=out, stderr=subprocess.STDOUT, timeout=120)
    if done.returncode != 0:
        raise RuntimeError("flask baton init-db failed:\n" + Path(log_dir, "init-db.log").read_text())


def gunicorn_argv(app_spec: str, port: int, args, chdir: Path) -> list[str]:
    """The same server settings for the baseline and for Baton (no config file, no access log)."""
    # Note: gunicorn turns `-k sync` into gthread when threads > 1.
    return [tool("gunicorn"), "--config", str(BENCH_DIR / "gunicorn_bench.conf.py"), "--chdir", str(chdir),
            "--bind", f"127.0.0.1:{port}", "--workers", str(args.workers), "--worker-class", args.worker_class,
            "--threads", str(args.threads), "--timeout", "30", "--graceful-timeout", "10", "--keep-alive", "5",
            "--log-level", "warning", app_spec]


def start_gunicorn(stack: Stack, name: str, app_spec: str, chdir: Path, args, env: dict, log_dir: str,
                   health_path: str = "/healthz", port: int | None = None) -> tuple[subprocess.Popen, int]:
    port = port or free_port()
    proc = stack.spawn(name, gunicorn_argv(app_spec, port, args, chdir), env=env, log_dir=log_dir)
    wait_http(f"http://127.0.0.1:{port}{health_path}", proc)
    # Every worker has to have imported the app before we measure anything.
    deadline = time.time() + 30
    while len(children(proc.pid)) < args.workers and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    return proc, port


def server_desc(args) -> str:
    kind = "gthread" if args.worker_class == "sync" and args.threads > 1 else args.worker_class
    return f"gunicorn -w {args.workers} -k {kind}" + (f" --threads {args.threads}" if args.threads > 1 else "")


def add_server_args(parser) -> None:
    g = parser.add_argument_group("gunicorn (identical for the baseline and Baton)")
    g.add_argument("--workers", type=int, default=4, help="gunicorn -w (default: %(default)s)")
    g.add_argument("--worker-class", default="sync", help="gunicorn -k (default: %(default)s)")
    g.add_argument("--threads", type=int, default=1,
                   help="gunicorn --threads (default: 1; > 1 makes gunicorn use gthread)")


# -- CPU accounting through /proc ---------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])      # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / _TICK


def post_signed(conn, path: str, body: bytes, signature: str) -> int | str:
    """POST one signed webhook on a kept-alive http.client connection: its status, or
    "error: <kind>" (the connection is then closed; http.client reopens it next time)."""
    import http.client

    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return f"error: {type(exc).__name__}"


# -- payloads ----------------------------------------------------------------------

def signed_webhook(wa_id: str, text: str, name: str, message_id: str, timestamp: int,
                   secret: str = BENCH_APP_SECRET) -> tuple[bytes, str]:
    """(raw body, X-Hub-Signature-256 value) of a Cloud API text webhook, built by
    the app's own simulator (cli.signed_text_webhook) so payloads track the real shape."""
    from types import SimpleNamespace

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from cli import signed_text_webhook

    settings = SimpleNamespace(SANDBOX_PHONE_NUMBER_ID=PHONE_NUMBER_ID, WHATSAPP_APP_SECRET=secret)
    raw, headers = signed_text_webhook(settings, wa_id, text, name, message_id=message_id, timestamp=timestamp)
    return raw, headers["X-Hub-Signature-256"]



FIRST_NAMES = ["Ana", "Bruno", "Chloé", "Dmitri", "Emeka", "Fatima", "Giulia", "Hiroshi", "Inés", "Jonas",
               "Kwame", "Lucía", "Mateo", "Nadia", "Olga", "Pedro", "Qiu", "Rania", "Sven", "Tomás"]
LAST_NAMES = ["Silva", "Müller", "García", "Okafor", "Rossi", "Dubois", "Nakamura", "Kowalski", "Haddad",
              "Smith", "Santos", "Jensen"]


def customer(i: int) -> tuple[str, str]:
    """(wa_id, profile name) of synthetic customer i: stable across a run."""
    return f"1555{i:07d}", f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {LAST_NAMES[(i // 7) % len(LAST_NAMES)]}"


# -- statistics and output ------------------------------------------------------------

def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: list[float]) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "never" if value == float("inf") else f"{value:,.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_info() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=str(ROOT), capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except Exception:
            return None

    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def _finite(value):
    """Strict JSON: an infinite latency (never answered) is written as the string "never"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "never"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_result(kind: str, data: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{kind}-{stamp}.json"
    path.write_text(json.dumps(_finite(data), indent=2, default=str, allow_nan=False) + "\n")
    return path


def utc_ts(text: str | None) -> float | None:
    """A naive-UTC timestamp as peewee stores it in SQLite → unix seconds."""
    if text is None:
        return None
    return datetime.fromisoformat(str(text)).replace(tzinfo=timezone.utc).timestamp()


def system_busy_seconds() -> float:
    """CPU-seconds all CPUs spent busy since boot (/proc/stat): to see what else ran meanwhile."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICK


def wait_quiet(max_wait: float, threshold_pct: float = 30.0, sample: float = 3.0) -> float | None:
    """Wait (at most max_wait s) until the machine's CPU use, before we start anything, is below
    threshold_pct of one core. Returns the last sample (percent)."""
    if max_wait <= 0:
        return None
    deadline = time.time() + max_wait
    while True:
        before = system_busy_seconds()
        time.sleep(sample)
        busy = 100 * (system_busy_seconds() - before) / sample
        if busy < threshold_pct or time.time() > deadline:
            print(f"machine CPU use before starting: {busy:.0f}% of a core"
                  f"{'' if busy < threshold_pct else ' (still busy; going ahead)'}", flush=True)
            return busy
        print(f"  waiting for a quieter machine: other processes use {busy:.0f}% of a core …", flush=True)


def add_common_args(parser) -> None:
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                        help="first wait up to S s until other processes use < 30%% of a core (default: 0)")
    parser.add_argument("--profile-idle", action="store_true",
                        help="with --profile: sample idle threads too (wall-clock view: lock and I/O waits)")


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def busy_warning(foreign_cpu_pct: float | None, threshold: float = 25.0) -> str | None:
    if foreign_cpu_pct is not None and foreign_cpu_pct > threshold:
        return (f"WARNING: other processes on this machine used ~{foreign_cpu_pct:.0f}% of a CPU during the "
                f"timed runs; figures are depressed/noisy (the ratio, measured in the same run, less so).")
    return None


# -- optional profiling with py-spy (not a project dependency) ----------------------------

def find_pyspy() -> str | None:
    candidate = VENV_BIN / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def start_profiles(stack: Stack, targets: dict[str, int], seconds: int, out_dir: Path, tag: str,
                   idle: bool = False, rate: int = 100) -> list[Path]:
    """`py-spy record` (collapsed stacks) on each pid for `seconds`; returns the output files."""
    pyspy = find_pyspy()
    if pyspy is None:
        print("  --profile: py-spy not found (.venv/bin/pip install py-spy); not profiling", flush=True)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, pid in targets.items():
        path = out_dir / f"{tag}-{name}-{pid}.collapsed"
        stack.spawn(f"py-spy-{name}", [pyspy, "record", "--pid", str(pid), "--duration", str(seconds),
                                        "--rate", str(rate), "--nonblocking", "--full-filenames", "--format", "raw",
                                        "--output", str(path), *(["--idle"] if idle else [])],
                    log_dir=str(out_dir))
        files.append(path)
    return files


def wait_profiles(stack: Stack, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    for name, proc in list(stack.procs):
        if name.startswith("py-spy-"):
            try:
                proc.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            stack.stop(proc)
