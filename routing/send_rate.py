"""The send rate of each business number, shared by every process.

Meta accepts WHATSAPP_MPS messages a second from one number and answers
130429 beyond it. Baton never provokes that: before each provider call the
sender takes a place in a moving window kept in Redis (a list of the number's
last send times, checked and appended in one Lua call), so every worker
together stays under the rate in every window, not only on average.

Meta counts when a request *arrives*, Baton when it takes the place: between
the two lie a thread hand-off, a connection and the network, a few to some
tens of milliseconds that vary from send to send. Two sends a whole second
apart when they took their places can arrive less than a second apart. So the
window Baton keeps is a second plus JITTER_MARGIN (the rate it reaches is
WHATSAPP_MPS / (1 + margin), 95 %; 30 ms proved too thin on a loaded 2-core
machine: CI counted sends over the rate), and within it no more than a tenth of the
rate goes in any tenth of that window: a full window's places freeing at once
would otherwise go out as one burst of simultaneous requests, and a burst is
what spreads arrival times the most (tests/test_send_discipline.py measures
it against a fake that counts arrivals in a strict sliding second).
"""
from __future__ import annotations

import math
import time

from redis import Redis

JITTER_MARGIN = 0.05        # seconds added to the one-second window
SLICES = 10                 # at most 1/SLICES of the rate in any 1/SLICES of the window

# KEYS[1]: the number's send times, newest first. ARGV: now, limit, window, burst, wanted.
# Takes up to `wanted` places, one after another, as `wanted` calls at this instant would.
# Returns {places taken, "0" or the seconds until the next place frees}.
_ACQUIRE = """
local now, limit, window, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local slice = window / math.floor(limit / burst)
local taken, wait = 0, 0
while taken < tonumber(ARGV[5]) do
  local oldest = redis.call('LINDEX', KEYS[1], limit - 1)
  if oldest and tonumber(oldest) > now - window then
    wait = tonumber(oldest) + window - now
  end
  local recent = redis.call('LINDEX', KEYS[1], burst - 1)
  if recent and tonumber(recent) > now - slice then
    wait = math.max(wait, tonumber(recent) + slice - now)
  end
  if wait > 0 then
    break
  end
  redis.call('LPUSH', KEYS[1], ARGV[1])
  taken = taken + 1
end
if taken > 0 then
  redis.call('LTRIM', KEYS[1], 0, limit - 1)
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
end
return {taken, tostring(wait)}
"""


class SendRate:
    def __init__(self, redis: Redis, prefix: str, per_second: int):
        self._redis = redis
        self._prefix = f"{prefix}:sendrate"
        self._limit = per_second
        self._window = 1.0 + JITTER_MARGIN
        self._burst = max(1, math.ceil(per_second / SLICES))
        self._acquire = redis.register_script(_ACQUIRE)

    def acquire(self, number: str) -> float:
        """Take a send from `number`'s budget: 0 when the call may go now
        (counted), else the seconds until a place frees (nothing counted)."""
        return self.acquire_many(number, 1)[1]

    def acquire_many(self, number: str, wanted: int) -> tuple[int, float]:
        """Take up to `wanted` sends from `number`'s budget in one round trip:
        (how many may go now, counted; 0 or the seconds until the next place frees)."""
        taken, wait = self._acquire(keys=[f"{self._prefix}:{number}"],
                                    args=[repr(time.time()), self._limit, self._window, self._burst, wanted])
        wait = float(wait)
        return int(taken), min(max(wait, 0.001), 1.0) if wait > 0 else 0.0
