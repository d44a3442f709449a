"""The send rate of each business number, shared by every process.

Meta accepts WHATSAPP_MPS messages a second from one number and answers
130429 beyond it. Baton never provokes that: before each provider call the
sender takes a place in a moving one-second window kept in Redis (the
`limits` library's moving window: a list of the last N send times per number,
checked and appended in one Lua call), so every worker together stays at or
under the rate, in every one-second window, not only on average.
"""
from __future__ import annotations

import time

from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis


class SendRate:
    def __init__(self, redis: Redis, prefix: str, per_second: int):
        storage = RedisStorage("redis://", connection_pool=redis.connection_pool, key_prefix=f"{prefix}:sendrate")
        self._limiter = MovingWindowRateLimiter(storage)
        self._item = RateLimitItemPerSecond(per_second)

    def acquire(self, number: str) -> float:
        """Take a send from `number`'s budget: 0 when the call may go now
        (counted), else the seconds until a place frees (nothing counted)."""
        if self._limiter.hit(self._item, number):
            return 0.0
        reset_at, _ = self._limiter.get_window_stats(self._item, number)
        return min(max(reset_at - time.time(), 0.001), 1.0)
