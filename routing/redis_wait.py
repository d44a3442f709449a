"""Riding out a Redis outage in work that holds leases and locks.

A pump or drain cut off by a Redis restart cannot give back its pump slot or
its conversation lock: both would block the lane or the conversation until
their lease runs out (30 s by default), long after Redis is back. Work that
meets an unreachable Redis therefore waits for it (up to the lease it holds)
and lets go properly."""
from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)
T = TypeVar("T")
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
DELAYS = (0.1, 0.2, 0.5, 1.0)


def unreachable(exc: BaseException) -> bool:
    """Is `exc` Redis being unreachable (as opposed to a command it refused)?"""
    return isinstance(exc, UNREACHABLE)


def patiently(call: Callable[[], T], patience: float) -> T:
    """`call()`, tried again while Redis cannot be reached, for up to `patience` seconds."""
    deadline = time.monotonic() + patience
    attempt = 0
    while True:
        try:
            return call()
        except UNREACHABLE:
            if time.monotonic() >= deadline:
                raise
            time.sleep(DELAYS[min(attempt, len(DELAYS) - 1)])
            attempt += 1


def wait_for_redis(redis: Redis, patience: float) -> bool:
    """Until Redis answers a PING (True) or `patience` seconds pass (False)."""
    try:
        patiently(redis.ping, patience)
        return True
    except UNREACHABLE:
        log.warning("Redis still unreachable after %.0f s", patience)
        return False
