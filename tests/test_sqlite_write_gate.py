"""SQLite's write gate (models.base._SqliteWriteGate) under gevent: a web
worker waiting for another process's write lock keeps serving its other
requests (the wait runs in gevent's thread pool, not on the hub)."""
from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WAITER = r"""
from gevent import monkey
monkey.patch_all()
import sys, time, gevent
from models.base import _SqliteWriteGate

gate = _SqliteWriteGate(sys.argv[1])
acquired = []

def write():
    with gate.hold():
        acquired.append(time.monotonic())

def serve():                       # the worker's other requests, meanwhile
    ticks = 0
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        gevent.sleep(0.01)
        ticks += 1
    return ticks

writer = gevent.spawn(write)
ticks = gevent.spawn(serve).get()
print("waiting" if not acquired else "acquired-early", ticks, flush=True)
sys.stdin.readline()               # the other process lets go
writer.join(timeout=10)
print("acquired" if acquired else "never", flush=True)
"""


def line(process, timeout: float = 10.0) -> str:
    poll = select.poll()                    # (select() refuses descriptors above 1,024)
    poll.register(process.stdout, select.POLLIN)
    assert poll.poll(timeout * 1000), f"no answer in {timeout} s: the process froze"
    return process.stdout.readline()


def test_a_gevent_worker_waiting_for_the_write_lock_keeps_serving(tmp_path):
    db_path = str(tmp_path / "baton.db")
    fd = os.open(db_path + "-writelock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)                 # another process is writing
    waiter = subprocess.Popen([sys.executable, "-c", WAITER, db_path], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        state, ticks = line(waiter).split()
        assert state == "waiting"
        assert int(ticks) >= 10, f"the hub froze while waiting for the lock: {ticks} ticks in 0.5 s"
        time.sleep(0.05)
        fcntl.flock(fd, fcntl.LOCK_UN)
        waiter.stdin.write("\n")
        waiter.stdin.flush()
        assert line(waiter).strip() == "acquired"
    finally:
        os.close(fd)
        waiter.kill()
        waiter.wait()
