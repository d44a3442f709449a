"""Fixtures of the chaos suite: a Redis of its own that the suite restarts (same port,
nothing persisted: a restart loses every key, as a real restart without persistence
does), the fake Graph API every send goes to, and its fault switch."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

import pytest

from tests.support import _answers, free_port, wait_until


class RestartableRedis:
    """A private redis-server on a free port that can be stopped and started again on
    the same port (nothing persisted)."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="baton-chaos-redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = None
        self.restarts = 0
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _answers(self.port), timeout=10, what="redis-server to start", interval=0.05)

    def kill(self) -> None:
        """SIGKILL: every key is gone, every connection reset."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self, down_for: float = 1.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def chaos_redis():
    server = RestartableRedis()
    yield server
    server.stop()


@pytest.fixture
def settings_overrides(settings_overrides, chaos_redis):
    """The test's Redis is the one the suite restarts."""
    return {**settings_overrides, "REDIS_URL": chaos_redis.url}
