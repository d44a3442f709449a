"""Work lanes: the cheap Redis hand-off between the web tier and the workers.

A lane (inbound, outbound, events) holds *keys* (a conversation id, a delivery
id) that have work waiting. Scheduling a key is one Lua call; it also claims a
pump slot when fewer than `max_pumps` pumps run, and only then does the caller
pay for an RQ enqueue. A pump job drains many keys, so under load the web tier
enqueues almost nothing and the workers never fork per message.

Keys (P = settings.REDIS_PREFIX):
  P:inbox:<conversation>     ZSET message id -> payload timestamp (inbound order)
  P:lane:<lane>:ready        LIST keys ready to work on
  P:lane:<lane>:queued       SET  keys in `ready` (so a key is listed once)
  P:lane:<lane>:delayed      ZSET key -> due time (retries with backoff)
  P:lane:<lane>:pumps        ZSET pump token -> lease expiry
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable

from redis import Redis

LANES = ("inbound", "outbound", "events")
POP_SLICE_SECONDS = 1.0

# KEYS: ready, queued, pumps; ARGV: key, now, lease, max_pumps, token
_SCHEDULE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then redis.call('RPUSH', KEYS[1], ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[3]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[5])
  return 1
end
return 0
"""

# KEYS: ready, queued, pumps, inbox1..inboxN; ARGV: now, lease, max_pumps, token,
#       then (conversation, message, score) for each inbox -> 1 when the caller must start a pump
_SCHEDULE_INBOUND_MANY = """
for i = 4, #KEYS do
  local a = 5 + (i - 4) * 3
  redis.call('ZADD', KEYS[i], ARGV[a + 2], ARGV[a + 1])
  if redis.call('SADD', KEYS[2], ARGV[a]) == 1 then redis.call('RPUSH', KEYS[1], ARGV[a]) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[3]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
  return 1
end
return 0
"""

# KEYS: ready, queued, delayed; ARGV: now, limit -> number promoted
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, key in ipairs(due) do
  redis.call('ZREM', KEYS[3], key)
  if redis.call('SADD', KEYS[2], key) == 1 then redis.call('RPUSH', KEYS[1], key) end
end
return #due
"""

# KEYS: ready, queued; -> key or nil
_POP = """
local key = redis.call('LPOP', KEYS[1])
if key then redis.call('SREM', KEYS[2], key) end
return key
"""

# KEYS: ready, queued; ARGV: count -> up to `count` keys
_POP_MANY = """
local keys = redis.call('LPOP', KEYS[1], tonumber(ARGV[1]))
if keys then redis.call('SREM', KEYS[2], unpack(keys)) return keys end
return {}
"""

# KEYS: pumps, ready; ARGV: token, now, lease, max_pumps -> 1 when the caller keeps/gets a slot
_HAND_OVER = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('LLEN', KEYS[2]) == 0 then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
  return 1
end
return 0
"""


# KEYS: lock, inbox; ARGV: token, ttl_ms, count -> message ids, or false when the lock is taken
_OPEN_INBOX = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[3]) - 1)
"""

# KEYS: lock, inbox; ARGV: token, routed ids... -> messages still waiting
_CLOSE_INBOX = """
if #ARGV > 1 then redis.call('ZREM', KEYS[2], unpack(ARGV, 2)) end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return redis.call('ZCARD', KEYS[2])
"""


@dataclass(frozen=True)
class PumpClaim:
    lane: str
    token: str


class Lanes:
    """Scheduling and popping keys in lanes; pure Redis, no RQ."""

    def __init__(self, redis: Redis, prefix: str, max_pumps: int, lease_seconds: float = 30.0):
        self.redis = redis
        self.prefix = prefix
        self.max_pumps = max_pumps
        self.lease = lease_seconds
        self._schedule = redis.register_script(_SCHEDULE)
        self._schedule_inbound_many = redis.register_script(_SCHEDULE_INBOUND_MANY)
        self._promote = redis.register_script(_PROMOTE)
        self._pop = redis.register_script(_POP)
        self._pop_many = redis.register_script(_POP_MANY)
        self._hand_over = redis.register_script(_HAND_OVER)
        self._open_inbox = redis.register_script(_OPEN_INBOX)
        self._close_inbox = redis.register_script(_CLOSE_INBOX)

    # -- key names -------------------------------------------------------
    def inbox_key(self, conversation_id: str) -> str:
        return f"{self.prefix}:inbox:{conversation_id}"

    def _k(self, lane: str, part: str) -> str:
        return f"{self.prefix}:lane:{lane}:{part}"

    # -- scheduling --------------------------------------------------------
    def schedule(self, lane: str, key: str) -> PumpClaim | None:
        """Mark `key` ready; returns a PumpClaim when the caller must start a pump."""
        token = uuid.uuid4().hex
        keys = [self._k(lane, "ready"), self._k(lane, "queued"), self._k(lane, "pumps")]
        granted = self._schedule(keys=keys, args=[key, time.time(), self.lease, self.max_pumps, token])
        return PumpClaim(lane, token) if granted else None

    def schedule_many(self, lane: str, keys: list[str]) -> list[PumpClaim]:
        """`schedule` for several keys in one round trip; the claims of the pumps
        the caller must start (at most one per free slot)."""
        if not keys:
            return []
        lane_keys = [self._k(lane, "ready"), self._k(lane, "queued"), self._k(lane, "pumps")]
        tokens = [uuid.uuid4().hex for _ in keys]
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for key, token in zip(keys, tokens):
            self._schedule(keys=lane_keys, args=[key, now, self.lease, self.max_pumps, token], client=pipe)
        return [PumpClaim(lane, token) for token, granted in zip(tokens, pipe.execute()) if granted]

    def schedule_inbound_many(self, items: list[tuple[str, str, float]]) -> PumpClaim | None:
        """Add each (conversation, message, score) to its conversation's ordered
        inbox and mark the conversation ready, in one round trip; returns a
        PumpClaim when the caller must start a pump."""
        token = uuid.uuid4().hex
        keys = [self._k("inbound", "ready"), self._k("inbound", "queued"), self._k("inbound", "pumps")]
        args: list = [time.time(), self.lease, self.max_pumps, token]
        for conversation_id, message_id, score in items:
            keys.append(self.inbox_key(conversation_id))
            args += [conversation_id, message_id, score]
        return PumpClaim("inbound", token) if self._schedule_inbound_many(keys=keys, args=args) else None

    def schedule_at(self, lane: str, key: str, due: float) -> None:
        """Make `key` ready at unix time `due` (promoted by a pump or the cron tick)."""
        self.redis.zadd(self._k(lane, "delayed"), {key: due})

    def promote_due(self, lane: str, limit: int = 500) -> int:
        return int(self._promote(keys=[self._k(lane, "ready"), self._k(lane, "queued"),
                                       self._k(lane, "delayed")], args=[time.time(), limit]))

    def claim_pump(self, lane: str) -> PumpClaim | None:
        """Claim a pump slot if the lane has work and a slot is free."""
        if not self.redis.llen(self._k(lane, "ready")):
            return None
        token = uuid.uuid4().hex
        got = self._hand_over(keys=[self._k(lane, "pumps"), self._k(lane, "ready")],
                              args=[token, time.time(), self.lease, self.max_pumps])
        return PumpClaim(lane, token) if got else None

    # -- pumping -------------------------------------------------------------
    def pop(self, lane: str, wait: float = 0.0, give_up: Callable[[], bool] = lambda: False) -> str | None:
        """The next ready key, waiting up to `wait` seconds for one to arrive, a
        second at a time: None as soon as `give_up()` says so (a stopping worker)."""
        until = time.monotonic() + wait
        while True:
            left = until - time.monotonic()
            if left <= 0:
                key = self._pop(keys=[self._k(lane, "ready"), self._k(lane, "queued")])
            else:
                popped = self.redis.blpop([self._k(lane, "ready")], timeout=min(left, POP_SLICE_SECONDS))
                key = popped[1] if popped else None
                if key is not None:
                    # Between BLPOP and SREM a new message for this key finds it
                    # still listed and does not list it again: harmless, because
                    # the caller reads the key's work only after this SREM.
                    self.redis.srem(self._k(lane, "queued"), key)
            if key is not None or left <= POP_SLICE_SECONDS or give_up():
                return key.decode() if isinstance(key, bytes) else key

    def pop_many(self, lane: str, count: int) -> list[str]:
        """Up to `count` more ready keys, without waiting."""
        if count <= 0:
            return []
        keys = self._pop_many(keys=[self._k(lane, "ready"), self._k(lane, "queued")], args=[count])
        return [key.decode() if isinstance(key, bytes) else key for key in keys]

    def renew(self, claim: PumpClaim) -> None:
        self.redis.zadd(self._k(claim.lane, "pumps"), {claim.token: time.time() + self.lease})

    def finish(self, claim: PumpClaim) -> bool:
        """Give the pump slot back; True when work arrived meanwhile and the
        caller keeps its slot (it should go on pumping)."""
        return bool(self._hand_over(keys=[self._k(claim.lane, "pumps"), self._k(claim.lane, "ready")],
                                    args=[claim.token, time.time(), self.lease, self.max_pumps]))

    def release(self, claim: PumpClaim) -> None:
        """Give the pump slot back without looking for more work (a pump that
        cannot run now): the cron tick claims a fresh one when it can."""
        self.redis.zrem(self._k(claim.lane, "pumps"), claim.token)

    def depth(self, lane: str) -> int:
        return int(self.redis.llen(self._k(lane, "ready")))

    # -- inbox (one round trip to open, one to close) -------------------------------
    def lock_key(self, conversation_id: str) -> str:
        return f"{self.prefix}:lock:{conversation_id}"

    def open_inbox(self, conversation_id: str, token: str, ttl_ms: int, count: int) -> list[str] | None:
        """Take the conversation lock and read the oldest `count` waiting
        message ids; None when another worker holds the lock."""
        ids = self._open_inbox(keys=[self.lock_key(conversation_id), self.inbox_key(conversation_id)],
                               args=[token, ttl_ms, count])
        if ids is None:
            return None
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def open_inboxes(self, tokens: dict[str, str], ttl_ms: int, count: int) -> dict[str, list[str] | None]:
        """`open_inbox` for several conversations (conversation -> token) in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for conversation_id, token in tokens.items():
            self._open_inbox(keys=[self.lock_key(conversation_id), self.inbox_key(conversation_id)],
                             args=[token, ttl_ms, count], client=pipe)
        return {conversation_id: None if ids is None else [i.decode() if isinstance(i, bytes) else i for i in ids]
                for conversation_id, ids in zip(tokens, pipe.execute())}

    def close_inboxes(self, items: list[tuple[str, str, list[str]]]) -> list[int]:
        """`close_inbox` for several (conversation, token, routed ids) in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for conversation_id, token, routed in items:
            self._close_inbox(keys=[self.lock_key(conversation_id), self.inbox_key(conversation_id)],
                              args=[token, *routed], client=pipe)
        return [int(waiting) for waiting in pipe.execute()]

    def close_inbox(self, conversation_id: str, token: str, routed: list[str]) -> int:
        """Drop routed ids from the inbox, release the lock (if still ours);
        returns how many messages wait now."""
        return int(self._close_inbox(keys=[self.lock_key(conversation_id), self.inbox_key(conversation_id)],
                                     args=[token, *routed]))
