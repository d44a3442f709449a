"""The faults the chaos suite injects into a running Baton (tests/harness.py processes).

- kill -9 of an RQ worker (a new one is started) and of gunicorn's workers (the
  master forks new ones), and of gunicorn as a whole (started again);
- Redis killed and started again on the same port (every key lost);
- the database gone for OUTAGE seconds: PostgreSQL behind a SwitchableProxy
  (tests/tcp_proxy.py) that resets every connection and refuses new ones; on SQLite
  (a file, no server to stop) another process holds the database's write lock for as
  long, so every write waits and those that wait past busy_timeout fail;
- the fake Graph API failing: 5xx answers, dropped connections, answers held past
  the client's timeout after the message was accepted.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from tests.fakes.graph_api import Realism


def children(pid: int) -> list[int]:
    """The process ids whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid …: comm may hold spaces, so split after its ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def kill_gunicorn_workers(procs) -> int:
    """SIGKILL every gunicorn worker (not the master, which forks new ones); returns how many."""
    workers = children(procs.web.popen.pid)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(workers)


def kill_and_replace_worker(procs, i: int) -> int:
    """SIGKILL RQ worker `i` and start another in its place; returns the new index."""
    procs.kill_worker(i)
    return procs.start_worker()


def restart_web(procs) -> None:
    """SIGKILL gunicorn's master and workers together, then start it again."""
    procs.kill_web()
    procs.start_web()


@contextmanager
def graph_api_failing(fake, seed: int = 42):
    """The fake Graph API answers 30 % of sends with a 5xx, drops 5 % of connections,
    and accepts 10 % of the others only to hold the answer past Baton's 10 s timeout.
    With seed 42 the first ten sends already meet every fault (four 5xx, a drop,
    three held answers), however few go while it fails."""
    normal = fake.realism
    fake.set_realism(Realism(p_5xx=0.3, p_drop=0.05, p_timeout_after_accept=0.1, hold_seconds=10.5, seed=seed))
    try:
        yield
    finally:
        fake.set_realism(normal)


class DatabaseOutage:
    """`down()` / `up()` for the database Baton's processes use."""

    def __init__(self, proxy=None, sqlite_path: str | None = None):
        self.proxy = proxy
        self.sqlite_path = sqlite_path
        self._holder = None

    @property
    def kind(self) -> str:
        return "PostgreSQL stopped (TCP proxy cut)" if self.proxy else "SQLite write lock held by another process"

    def down(self) -> None:
        if self.proxy is not None:
            self.proxy.down()
        else:
            holder = sqlite3.connect(self.sqlite_path, timeout=30, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            self._holder = holder

    def up(self) -> None:
        if self.proxy is not None:
            self.proxy.up()
        elif self._holder is not None:
            self._holder.execute("ROLLBACK")
            self._holder.close()
            self._holder = None


def outage(database: DatabaseOutage, seconds: float) -> None:
    database.down()
    try:
        time.sleep(seconds)
    finally:
        database.up()
