"""Helpers for tests: real services on free ports, webhooks signed like Meta's,
and an in-process RQ worker loop."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from rq import SimpleWorker

TEST_APP_SECRET = "test-app-secret"
PHONE_NUMBER_ID = "sandbox-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


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


def env_for(settings_overrides: dict) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in settings_overrides.items()})
    return env
