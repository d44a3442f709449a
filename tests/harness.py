"""Run Baton as real processes for tests: gunicorn (wsgi:app), N RQ workers
(`flask --app app baton worker`) and optionally RQ cron (`flask --app app baton cron`),
configured through environment variables exactly like production.

    with BatonProcesses(settings_overrides, web_workers=2, rq_workers=2, cron=True,
                        log_dir=tmp_path / "logs") as baton:      # returns once /readyz is 200
        requests.post(f"{baton.url}/webhooks/whatsapp", ...)
        baton.kill_worker(0)           # SIGKILL, no goodbye
        baton.start_worker()           # -> index of the new worker
        baton.pause_worker(1); baton.resume_worker(1)   # SIGSTOP / SIGCONT
        baton.kill_all(); baton.restart_all()            # SIGKILL web, workers and cron; start them again
        baton.kill_web(); baton.start_web()              # likewise kill_cron(); start_cron()

`init_db=True` runs `flask --app app baton init-db` first (tests using the `app`
fixture already have the schema). Every process writes its stdout+stderr to its own
file under `log_dir`; `logs()` returns their tails (attach it to assertion messages);
`wait_until()` / `settle()` poll against a deadline and fail with the logs
(`settle_quiet(rt)`: until no work is left anywhere); `stop()` sends SIGTERM, waits,
and SIGKILLs whatever is left. Tests get BatonProcesses from conftest's `start_baton`.

Below the class: talking to the processes over HTTP (`post_all`, `customers_say`,
`agent_add_with_cli`) and reading whether work is left (`quiet`, `state_summary`).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import requests

from tests.support import env_for, free_port, text_webhook, wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")
LANE_NAMES = ("inbound", "outbound", "events")
# Short leases and locks, so a killed or frozen process's claims free up fast.
SHORT_LEASES = {"PUMP_LEASE": "2", "LOCK_TTL": "2", "REQUEUE_AFTER": "1", "PUMP_LINGER": "0.1"}


def _command(tool: str) -> list[str]:
    """The venv's console script when it exists, else `python -m tool`."""
    script = BIN / tool
    return [str(script)] if script.exists() else [sys.executable, "-m", tool]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    log_file: object = field(repr=False)
    killed: bool = False

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


class ProcessesFailed(AssertionError):
    pass


class BatonProcesses:
    """gunicorn + RQ workers + RQ cron, sharing the test's database, Redis and prefix."""

    READY_TIMEOUT = 30.0
    STOP_TIMEOUT = 10.0

    def __init__(self, settings_overrides: dict, web_workers: int = 2, rq_workers: int = 2, cron: bool = True,
                 *, log_dir: Path | str | None = None, init_db: bool = False, extra_env: dict | None = None,
                 web_threads: int | None = None, access_log: bool = False, start: bool = True):
        self.settings = {k: str(v) for k, v in settings_overrides.items()}
        self.web_workers = web_workers
        self.rq_workers = rq_workers
        self.cron = cron
        self.init_db = init_db
        # Tests pass their tmp_path; elsewhere a fresh temporary directory.
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="baton-processes-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env_for(self.settings)
        self.env.update({"PYTHONUNBUFFERED": "1", "FLASK_APP": "app",
                         "BATON_BIND": f"127.0.0.1:{self.port}", "WEB_CONCURRENCY": str(web_workers)})
        if access_log:
            self.env["BATON_ACCESS_LOG"] = "-"
        if web_threads is not None:
            self.env["BATON_THREADS"] = str(web_threads)
        self.env.update({k: str(v) for k, v in (extra_env or {}).items()})
        self.web: Proc | None = None
        self.cron_proc: Proc | None = None
        self.workers: list[Proc] = []
        self._counter = 0
        self._stopped = False
        if start:
            self.start()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "BatonProcesses":
        # A second start would spawn a second set and lose the first one's handles: nothing
        # would stop those processes (the fuzz test once called it twice and left a gunicorn
        # running after the suite).
        if self.web is not None or self.workers:
            raise RuntimeError("these processes are started already (BatonProcesses starts them itself "
                               "unless start=False)")
        try:
            if self.init_db:
                self._run_once("init-db", [*_command("flask"), "--app", "app", "baton", "init-db"])
            self._start_all()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> "BatonProcesses":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        self._counter += 1
        log_path = self.log_dir / f"{self._counter:02d}-{name}.log"
        log_file = open(log_path, "ab", buffering=0)
        log_file.write(f"$ {' '.join(argv)}\n".encode())
        # A session of its own: gunicorn's worker children can be signalled as a group.
        popen = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        return Proc(name, popen, log_path, log_file)

    def _run_once(self, name: str, argv: list[str]) -> None:
        proc = self._spawn(name, argv)
        try:
            code = proc.popen.wait(timeout=60)
        finally:
            proc.log_file.close()
        if code != 0:
            raise ProcessesFailed(f"{name} exited with {code}\n{self._tail(proc.log_path)}")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until GET /readyz answers 200 (gunicorn up, database and Redis reachable)."""
        last: list[str] = ["nothing yet"]

        def ready() -> bool:
            try:
                response = requests.get(f"{self.url}/readyz", timeout=2)
            except requests.RequestException as exc:
                last[0] = repr(exc)
                return False
            last[0] = f"{response.status_code} {response.text.strip()}"
            return response.status_code == 200
        self.wait_until(ready, timeout or self.READY_TIMEOUT, interval=0.1, what=f"{self.url}/readyz to answer 200",
                        describe=lambda: f"last answer: {last[0]}")

    def check_alive(self) -> None:
        """Fail when a process we did not kill on purpose has exited."""
        for proc in self.processes():
            if not proc.killed and not proc.alive:
                raise ProcessesFailed(f"{proc.name} exited unexpectedly with {proc.popen.returncode}\n"
                                      f"{self.logs()}")

    def processes(self) -> list[Proc]:
        return [p for p in (self.web, *self.workers, self.cron_proc) if p is not None]

    # -- RQ workers -----------------------------------------------------------------
    def start_worker(self) -> int:
        """Start one more `flask --app app baton worker`; returns its index."""
        self.workers.append(self._spawn(f"worker{len(self.workers)}",
                                        [*_command("flask"), "--app", "app", "baton", "worker"]))
        return len(self.workers) - 1

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker `i`: no cleanup, its job and leases are abandoned mid-flight."""
        proc = self.workers[i]
        proc.killed = True
        if proc.alive:
            proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(timeout=self.STOP_TIMEOUT)

    def pause_worker(self, i: int) -> None:
        """SIGSTOP worker `i`: frozen wherever it is (a long GC pause, a VM steal), leases
        and locks running out while it sleeps."""
        self.workers[i].popen.send_signal(signal.SIGSTOP)

    def resume_worker(self, i: int) -> None:
        """SIGCONT worker `i`: it carries on from exactly where it was frozen."""
        self.workers[i].popen.send_signal(signal.SIGCONT)

    def stop_worker(self, i: int) -> None:
        """A polite stop (SIGTERM: RQ's warm shutdown finishes the current job)."""
        proc = self.workers[i]
        proc.killed = True
        self._terminate([proc])

    @property
    def live_workers(self) -> list[int]:
        return [i for i, p in enumerate(self.workers) if p.alive]

    # -- web and cron, and everything at once -----------------------------------------------
    def start_web(self) -> None:
        """Start gunicorn (again, after kill_web/kill_all); returns without waiting for /readyz.
        No control socket: its default path (~/.gunicorn/gunicorn.ctl) is shared by every
        gunicorn of the user, so parallel test runs (or a dev server) would fight over it."""
        self.web = self._spawn("web", [*_command("gunicorn"), "-c", "gunicorn.conf.py",
                                       "--no-control-socket", "wsgi:app"])

    def kill_web(self) -> None:
        """SIGKILL gunicorn's master and its workers together: requests in flight are cut off."""
        self._kill_now([self.web])

    def start_cron(self) -> None:
        """Start `flask --app app baton cron` (again, after kill_cron/kill_all)."""
        self.cron_proc = self._spawn("cron", [*_command("flask"), "--app", "app", "baton", "cron"])

    def kill_cron(self) -> None:
        """SIGKILL the RQ cron scheduler: no timer is enqueued until another one starts."""
        self._kill_now([self.cron_proc])

    def kill_all(self) -> None:
        """SIGKILL every process at once (web, RQ workers, cron), like a power cut:
        nothing gets to finish a job, flush a buffer or say goodbye."""
        self._kill_now([*self.processes()])

    def restart_all(self) -> None:
        """After kill_all(): gunicorn, as many RQ workers as at start and the cron again,
        on the same port, database and Redis; returns once /readyz is 200."""
        self._start_all()

    def _start_all(self) -> None:
        self.start_web()
        for _ in range(self.rq_workers):
            self.start_worker()
        if self.cron:
            self.start_cron()
        self.wait_ready()

    def _kill_now(self, procs: list[Proc | None]) -> None:
        procs = [p for p in procs if p is not None]
        for proc in procs:
            proc.killed = True
            self._kill_group(proc)
        for proc in procs:
            proc.popen.wait(timeout=self.STOP_TIMEOUT)
            if not proc.log_file.closed:
                proc.log_file.close()

    # -- shutdown -------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM everything, wait, SIGKILL what is still there after STOP_TIMEOUT."""
        if self._stopped:
            return
        self._stopped = True
        procs = self.processes()
        for proc in procs:
            proc.killed = True
        self._terminate(procs)

    def _terminate(self, procs: list[Proc]) -> None:
        for proc in procs:
            if proc.alive:
                try:
                    proc.popen.send_signal(signal.SIGTERM)
                    proc.popen.send_signal(signal.SIGCONT)   # a paused process acts on it only when woken
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.STOP_TIMEOUT
        for proc in procs:
            try:
                proc.popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
                proc.popen.wait(timeout=self.STOP_TIMEOUT)
            # gunicorn workers (or anything else left in the session) go with it.
            self._kill_group(proc)
            if not proc.log_file.closed:
                proc.log_file.close()

    @staticmethod
    def _kill_group(proc: Proc) -> None:
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    # -- logs and waiting --------------------------------------------------------------------
    @staticmethod
    def _tail(path: Path, max_chars: int = 6000) -> str:
        try:
            data = path.read_bytes()
        except OSError:
            return "(no log)"
        text = data.decode("utf-8", "replace")
        return text if len(text) <= max_chars else "…" + text[-max_chars:]

    def logs(self, max_chars: int = 6000) -> str:
        """The tail of every process's log, labelled, for assertion messages."""
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"----- {path.name} -----\n{self._tail(path, max_chars)}")
        return "\n".join(parts)

    def wait_until(self, condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05,
                   what: str = "condition", describe: Callable[[], str] | None = None) -> T:
        """Poll `condition` until it returns a truthy value (which is returned);
        on timeout fail with `describe()` and the logs."""
        def alive_and_done() -> T:
            self.check_alive()
            return condition()
        try:
            return wait_until(alive_and_done, timeout, what, interval, describe)
        except ProcessesFailed:
            raise
        except AssertionError as failure:
            raise ProcessesFailed(f"{failure}\n{self.logs()}") from None

    def settle(self, quiet: Callable[[], bool], timeout: float = 60.0, hold: float = 1.0,
               what: str = "the system to settle", describe: Callable[[], str] | None = None) -> None:
        """Until `quiet()` has been true continuously for `hold` seconds (so that
        "exactly one" is asserted after work has stopped, not while it runs)."""
        quiet_since: list[float] = []

        def quiet_long_enough() -> bool:
            if not quiet():
                quiet_since.clear()
                return False
            quiet_since[:] = quiet_since or [time.monotonic()]
            return time.monotonic() - quiet_since[0] >= hold
        self.wait_until(quiet_long_enough, timeout, interval=0.05, what=what, describe=describe)

    def settle_quiet(self, rt, timeout: float = 60.0, hold: float = 1.0) -> None:
        """Until nothing recorded waits for routing, sending or delivery (see `quiet`),
        continuously for `hold` seconds."""
        self.settle(lambda: quiet(rt), timeout=timeout, hold=hold, what="no work to be left",
                    describe=lambda: f"state: {state_summary(rt)}")


# -- talking to the processes ------------------------------------------------------------------

def post_all(url: str, bodies: list[tuple[bytes, dict]], threads: int = 8) -> list[requests.Response]:
    """POST every (raw, headers) webhook over real HTTP from `threads` threads."""
    local = threading.local()

    def post(item):
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        raw, headers = item
        return session.post(f"{url}/webhooks/whatsapp", data=raw, headers=headers, timeout=30)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, bodies))


def customers_say(url: str, wa_ids: list[str], text: str, **webhook) -> None:
    """Each customer in `wa_ids` writes `text` at once (signed webhooks over HTTP)."""
    answers = post_all(url, [text_webhook(wa, text, **webhook) for wa in wa_ids])
    assert [a.status_code for a in answers] == [200] * len(wa_ids), [a.text for a in answers]


def agent_add_with_cli(procs: BatonProcesses, name: str, *, groups=("support",), max_concurrent: int = 5,
                       role: str = "agent") -> str:
    """`flask --app app baton agent add` in the processes' environment; returns the
    agent's token (the last line it prints)."""
    done = subprocess.run([*_command("flask"), "--app", "app", "baton", "agent", "add", "--name", name,
                           "--groups", ",".join(groups), "--max-concurrent", str(max_concurrent),
                           "--role", role], cwd=ROOT, env=procs.env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


# -- is any work left? ---------------------------------------------------------------------------

def state_summary(rt) -> dict:
    from models import BotTurn, Delivery, Message, OutboxEntry

    return {
        "inbound": Message.select().where(Message.direction == "in").count(),
        "unrouted": Message.select().where((Message.direction == "in") & Message.routed_to.is_null()).count(),
        "outbound_queued": Message.select().where(Message.status == "queued").count(),
        "deliveries_pending": Delivery.select().where(Delivery.status == "pending").count(),
        "bot_turns": BotTurn.select().count(),
        "outbox": OutboxEntry.select().count(),
        "lanes_ready": {lane: rt.lanes.depth(lane) for lane in LANE_NAMES},
        "inboxes": sum(1 for _ in rt.redis.scan_iter(f"{rt.settings.REDIS_PREFIX}:inbox:*")),
        "spooled": rt.redis.xlen(f"{rt.settings.REDIS_PREFIX}:spool"),
        "rq_queued": {lane: rt.queues[lane].count for lane in LANE_NAMES},
        "delayed": {lane: rt.redis.zrange(f"{rt.settings.REDIS_PREFIX}:lane:{lane}:delayed", 0, -1, withscores=True)
                    for lane in LANE_NAMES},
        "pumps": {lane: rt.redis.zrange(f"{rt.settings.REDIS_PREFIX}:lane:{lane}:pumps", 0, -1, withscores=True)
                  for lane in LANE_NAMES},
        "pending_deliveries": [(d.id, d.event_type, d.attempts, str(d.created_at), str(d.next_attempt_at))
                               for d in Delivery.select().where(Delivery.status == "pending").limit(5)],
        "now": time.time(),
    }


def quiet(rt) -> bool:
    """Nothing recorded waits for routing, sending or delivery, and no lane has work."""
    s = state_summary(rt)
    return (s["unrouted"] == 0 and s["outbound_queued"] == 0 and s["deliveries_pending"] == 0
            and not any(s["lanes_ready"].values()) and s["inboxes"] == 0 and s["spooled"] == 0
            and not any(s["rq_queued"].values())
            and not any(rt.redis.zcard(f"{rt.settings.REDIS_PREFIX}:lane:{lane}:delayed")
                        for lane in LANE_NAMES))
