"""A circuit breaker around the database on the webhook path (invariant 9: fail open).

closed     webhooks go to the database. A failure that means the database is
           unreachable (models.base.connection_lost) counts; DATABASE_BREAKER_FAILURES of
           them in a row open the breaker. A success resets the count.
open       webhooks skip the database (no connect timeout paid per request) and
           go to the spool. After DATABASE_BREAKER_OPEN_SECONDS one caller is let through
           as a probe:
half_open  that caller checks the database with one round trip (`SELECT 1`);
           success closes the breaker (and the caller starts the spool's replay),
           failure opens it again for DATABASE_BREAKER_OPEN_SECONDS. Everyone else
           keeps spooling meanwhile.

One breaker per process, in memory: each process finds out for itself, and a
restarted process starts closed (its first failures open it again).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, HALF_OPEN, OPEN)

# What `attempt()` tells its caller to do.
PASS, PROBE, REJECT = "pass", "probe", "reject"


class CircuitBreaker:
    def __init__(self, failures: int, open_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.threshold = failures
        self.open_seconds = open_seconds
        self.clock = clock      # injectable: tests move time on without sleeping
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        """closed, open, or half_open (open long enough that the next caller probes, or probing)."""
        with self._lock:
            if self._state == OPEN and (self._probing or self.clock() >= self._opened_at + self.open_seconds):
                return HALF_OPEN
            return self._state

    def attempt(self) -> str:
        """PASS: use the database. PROBE: check it (then call succeeded() or failed()).
        REJECT: do not touch it."""
        with self._lock:
            if self._state == CLOSED:
                return PASS
            if self._probing or self.clock() < self._opened_at + self.open_seconds:
                return REJECT
            self._probing = True
            return PROBE

    def succeeded(self) -> bool:
        """The database answered. Returns True when this closed an open breaker."""
        with self._lock:
            reopened = self._state != CLOSED
            self._state, self._failures, self._probing = CLOSED, 0, False
            return reopened

    def failed(self) -> bool:
        """The database could not be reached. Returns True when this opened the breaker."""
        with self._lock:
            if self._state == OPEN:
                self._opened_at, self._probing = self.clock(), False
                return False
            self._failures += 1
            if self._failures < self.threshold:
                return False
            self._state, self._opened_at, self._probing = OPEN, self.clock(), False
            return True
