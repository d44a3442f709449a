"""Failed authentications, counted per client address in Redis (every process
shares the count): past AUTH_FAILURE_LIMIT within AUTH_FAILURE_WINDOW seconds,
the address is refused with Retry-After until its window ends, so a token
cannot be guessed by brute force.

Key (P = REDIS_PREFIX): P:authfail:<address>, an integer that expires
AUTH_FAILURE_WINDOW seconds after the address's first failure.
"""
from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# KEYS: counter; ARGV: window -> the count after this failure
_RECORD = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class AuthFailures:
    def __init__(self, redis: Redis, prefix: str, limit: int, window: int):
        self.redis = redis
        self.prefix = prefix
        self.limit = limit
        self.window = window
        self._record = redis.register_script(_RECORD)

    def key(self, address: str) -> str:
        return f"{self.prefix}:authfail:{address}"

    def retry_after(self, address: str) -> int:
        """Seconds this address must wait (0: it may try). Fails open while Redis
        is down: an outage must not lock every client out."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(self.key(address))
            pipe.ttl(self.key(address))
            count, ttl = pipe.execute()
        except RedisError:
            log.warning("could not read the failed-authentication count; letting the request through")
            return 0
        if count is None or int(count) < self.limit:
            return 0
        return max(int(ttl), 1)

    def record(self, address: str) -> int:
        """Count one failure; the address's count so far (0 when Redis is down)."""
        try:
            count = int(self._record(keys=[self.key(address)], args=[self.window]))
        except RedisError:
            log.warning("could not count a failed authentication")
            return 0
        if count == self.limit:
            log.warning("client %s reached %d failed authentications; refused for %d s", address, count,
                        self.window)
        return count
