"""Per-conversation lock with expiry.

The lock keeps two workers from draining one conversation at once; it is not
trusted for correctness on its own (a paused worker can outlive its lease), so
every state change also compare-and-sets `conversation.version` in the database.
"""
from __future__ import annotations

import time
import uuid

from redis import Redis

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class LockLost(Exception):
    """The lease expired and someone else may hold the lock now."""


class ConversationLock:
    def __init__(self, redis: Redis, key: str, ttl_seconds: float, token: str | None = None):
        """`token`: the lease of a lock already taken (by a Lua script) under that token."""
        self.redis = redis
        self.key = key
        self.ttl_ms = int(ttl_seconds * 1000)
        self.token = token or uuid.uuid4().hex
        self._release = redis.register_script(_RELEASE)
        self._extend = redis.register_script(_EXTEND)
        self.held = token is not None

    def acquire(self, wait_seconds: float = 0.0) -> bool:
        deadline = time.monotonic() + wait_seconds
        while True:
            if self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
                self.held = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def extend(self) -> None:
        if not self._extend(keys=[self.key], args=[self.token, self.ttl_ms]):
            self.held = False
            raise LockLost(self.key)

    def release(self) -> None:
        if self.held:
            self._release(keys=[self.key], args=[self.token])
            self.held = False
