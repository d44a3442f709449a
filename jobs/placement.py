"""Where pump jobs run: spread over the worker processes.

A worker process runs several RQ workers as threads (jobs/worker.py), and any
of them may take a pump job. With two processes, the inbound and the outbound
pump often landed in the same one and shared its GIL while the other process
idled (bench/README.md: rq0 / rq1 CPU 59 / 17 % at 300 msg/s). So each
process says in Redis how many pumps it runs (refreshed at every poll of its
threads, lapsing after ALIVE_SECONDS), and a thread of a process that already
runs a pump leaves the lanes' queues to the others while another live process
runs none. A thread already waiting may still take one (its wait began before
the pump started), so a pump job starting in such a process moves on: it is
queued again, a few times at most (jobs/pump.py). A process alone takes
everything, as before; a process killed stops counting after ALIVE_SECONDS.

It only decides who takes a pump job first: a pump is correct wherever it
runs (leases and locks in Redis, state in the database).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)

ALIVE_SECONDS = 3.0
MAX_MOVES = 3               # times a pump job starting in a busy process is queued again
LANES = ("inbound", "outbound", "events")

_lock = threading.Lock()
_running = 0


def process_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _key(rt) -> str:
    return f"{rt.settings.REDIS_PREFIX}:pump-placement"


@contextmanager
def running_pump(rt):
    """Count a pump job of this process while it runs."""
    global _running
    with _lock:
        _running += 1
    _announce_quietly(rt)
    try:
        yield
    finally:
        with _lock:
            _running -= 1
        _announce_quietly(rt)


def _announce_quietly(rt) -> None:
    try:
        rt.redis.hset(_key(rt), process_id(), f"{_running} {time.time() + ALIVE_SECONDS}")
    except Exception:
        log.debug("could not announce this process's pumps", exc_info=True)


def leave_lanes_to_others(rt) -> bool:
    """Announce this process (it is alive) and say whether its threads should
    leave the lanes' queues for now: it runs a pump, and another live process
    runs none. Redis unreachable: False (take what comes, as before)."""
    me, now = process_id(), time.time()
    try:
        pipe = rt.redis.pipeline(transaction=False)
        pipe.hset(_key(rt), me, f"{_running} {now + ALIVE_SECONDS}")
        pipe.hgetall(_key(rt))
        _, entries = pipe.execute()
    except Exception:
        return False
    if not _running:
        return False
    lapsed = []
    idle_elsewhere = False
    for field, value in entries.items():
        field = field.decode() if isinstance(field, bytes) else field
        if field == me:
            continue
        try:
            count, alive_until = (value.decode() if isinstance(value, bytes) else value).split()
            count, alive_until = int(count), float(alive_until)
        except ValueError:
            lapsed.append(field)
            continue
        if alive_until <= now:
            if alive_until < now - 60:
                lapsed.append(field)           # long gone: tidy up
            continue
        idle_elsewhere = idle_elsewhere or count == 0
    if lapsed:
        try:
            rt.redis.hdel(_key(rt), *lapsed)
        except Exception:
            pass
    return idle_elsewhere


def queues_to_listen(rt, queues: list) -> list:
    """`queues`, without the lanes' when this process leaves them to others."""
    if not leave_lanes_to_others(rt):
        return queues
    lane_queues = {rt.queues[lane].name for lane in LANES}
    others = [queue for queue in queues if queue.name not in lane_queues]
    return others or queues         # a worker of the lanes only takes them all the same
