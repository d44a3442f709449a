"""Plumbing for tests: real services on free ports, webhooks signed like Meta's,
Baton's jobs run in this process, and waiting on a condition instead of the clock."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from rq import SimpleWorker

TEST_APP_SECRET = "test-app-secret"          # WHATSAPP_APP_SECRET: signs the webhooks
TEST_EVENT_SECRET = "event-secret"            # BATON_EVENT_SECRET: signs Baton's events to n8n
PHONE_NUMBER_ID = "sandbox-1"
PG_ADMIN_DSN = os.environ.get("BATON_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
T = TypeVar("T")


def using_postgres() -> bool:
    """BATON_TEST_DATABASE=postgres runs the suite on PostgreSQL; SQLite otherwise."""
    return os.environ.get("BATON_TEST_DATABASE", "sqlite") == "postgres"


@contextmanager
def throwaway_postgres_database(name: str) -> Iterator[str]:
    """CREATE DATABASE `name` on the test PostgreSQL (BATON_TEST_PG), yield its URL,
    and drop it afterwards, whoever is still connected."""
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN_DSN)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def wait_until(condition: Callable[[], T], timeout: float = 5.0, what: str = "the condition",
               interval: float = 0.01, describe: Callable[[], str] | None = None) -> T:
    """Poll `condition` every `interval` seconds until it returns something truthy,
    and return that; after `timeout` seconds fail, naming `what` was awaited (and
    `describe()`, when given, for the state of things)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            state = f"; {describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{state}")
        time.sleep(interval)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# -- services on free ports ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class RedisServer:
    """A private redis-server on a free port (nothing persisted)."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="baton-redis-")
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _answers(self.port), timeout=10, what="redis-server to start", interval=0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class ServedApp:
    """A WSGI app over real HTTP on 127.0.0.1: a free port, a thread per request,
    and a stop() that returns at once (the accept loop polls every 20 ms)."""

    def __init__(self, wsgi_app, name: str = "served-app"):
        self.wsgi_app = wsgi_app
        self.name = name
        self.url = ""
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ServedApp":
        from werkzeug.serving import make_server

        self._server = make_server("127.0.0.1", 0, self.wsgi_app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"{self.name}-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self) -> "ServedApp":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def env_for(settings_overrides: dict) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in settings_overrides.items()})
    return env


# -- webhooks and jobs --------------------------------------------------------------------------

def text_webhook(wa_id: str, text: str, *, message_id: str | None = None, timestamp: int | None = None,
                 name: str = "Test Customer", secret: str = TEST_APP_SECRET) -> tuple[bytes, dict]:
    from types import SimpleNamespace

    from cli import signed_text_webhook

    settings = SimpleNamespace(SANDBOX_PHONE_NUMBER_ID=PHONE_NUMBER_ID, WHATSAPP_APP_SECRET=secret)
    return signed_text_webhook(settings, wa_id, text, name, message_id=message_id, timestamp=timestamp)


class InProcessWorker(SimpleWorker):
    """SimpleWorker without the pub/sub command channel (whose teardown waits
    a second per burst): the same job execution, fast enough for every test."""

    def subscribe(self):
        pass

    def unsubscribe(self):
        pass


def run_jobs(rt, rounds: int = 50) -> None:
    """Run every queued job in this process (SimpleWorker, burst) until the
    lanes are quiet: the production job code, minus the separate process."""
    from jobs import timers
    from jobs.context import set_runtime

    set_runtime(rt)
    rt.feeder.flush()
    queues = [rt.queues[name] for name in ("inbound", "outbound", "events", "default")]
    for _ in range(rounds):
        timers.tick()
        InProcessWorker(queues, connection=rt.redis).work(burst=True, logging_level="WARNING")
        busy = any(rt.lanes.depth(lane) for lane in ("inbound", "outbound", "events")) or \
            any(q.count for q in queues)
        delayed_due = any(rt.redis.zrangebyscore(f"{rt.settings.REDIS_PREFIX}:lane:{lane}:delayed",
                                                 "-inf", time.time())
                          for lane in ("inbound", "outbound", "events"))
        if not busy and not delayed_due:
            return
    raise AssertionError("jobs did not settle")


def settle(app) -> None:
    """Run the app's queued jobs in this process until its lanes are quiet."""
    run_jobs(app.extensions["baton"])


def settle_until(app, done: Callable[[], T], timeout: float = 10.0, what: str = "the work to finish") -> T:
    """Run the app's jobs until `done()` holds: for work that waits out a short
    retry backoff (a job scheduled a moment ahead is not run before it is due)."""
    def settled():
        settle(app)
        return done()
    return wait_until(settled, timeout, what, interval=0.02)
