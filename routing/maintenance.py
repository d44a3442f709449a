"""The maintenance notice (MAINTENANCE_NOTICE): what a customer who writes while the
database is down is told, at most once per MAINTENANCE_NOTICE_WINDOW, without the database.

Everything lives in Redis:
- `<prefix>:maintenance:noticed:<phone_number_id>:<address>` (SET NX, expiring after the
  window): this customer has a notice in this window; a second one is never scheduled;
- `<prefix>:maintenance:due`, a sorted set of notices to send (member `<phone_number_id>
  <address>`, score: when). Whoever enqueues a notice's job first moves its score past
  a lease (`claim_due`), so a notice is in at most one job at a time, and one whose
  worker died is due again once the lease lapses;
- `<prefix>:maintenance:attempts`, tries per notice, for the backoff.

A send the provider did not take (it could not be reached, 429, 5xx; the sandbox,
whose outbox is in the database) is tried again with backoff until the window ends.
One whose outcome is unknown (the request went out, no answer came) is not sent
again: at most once matters more than a notice.
"""
from __future__ import annotations

import time

from integrations.whatsapp.base import UNKNOWN, InboundMessage, SendError

from .backoff import backoff_seconds

CLAIM_LEASE_SECONDS = 60.0
RETRY_CAP_SECONDS = 30.0

_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""


class MaintenanceNotices:
    def __init__(self, redis, prefix: str, window: int):
        self.redis = redis
        self.prefix = prefix
        self.window = window
        self.due_key = f"{prefix}:maintenance:due"
        self.attempts_key = f"{prefix}:maintenance:attempts"
        self._claim_due = redis.register_script(_CLAIM_DUE)

    def _noticed_key(self, phone_number_id: str, address: str) -> str:
        return f"{self.prefix}:maintenance:noticed:{phone_number_id}:{address}"

    def schedule(self, messages: list[InboundMessage]) -> list[tuple[str, str]]:
        """Schedule a notice for each customer among `messages` who has none in this
        window; returns the (phone_number_id, address) pairs the caller must enqueue
        (their claim is taken already)."""
        scheduled = []
        for message in messages:
            address = message.wa_id or message.user_id
            if message.from_me or not address or (message.phone_number_id, address) in scheduled:
                continue
            if self.redis.set(self._noticed_key(message.phone_number_id, address), "1", nx=True, ex=self.window):
                self.redis.zadd(self.due_key, {_member(message.phone_number_id, address):
                                               time.time() + CLAIM_LEASE_SECONDS})
                scheduled.append((message.phone_number_id, address))
        return scheduled

    def claim_due(self, limit: int = 100) -> list[tuple[str, str]]:
        """Notices due now (a retry, or one whose job was lost), claimed for a lease."""
        now = time.time()
        members = self._claim_due(keys=[self.due_key], args=[now, now + CLAIM_LEASE_SECONDS, limit])
        return [_pair(member) for member in members]

    def sent(self, phone_number_id: str, address: str) -> None:
        member = _member(phone_number_id, address)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.due_key, member)
        pipe.hdel(self.attempts_key, member)
        pipe.execute()

    def failed(self, phone_number_id: str, address: str, exc: Exception) -> float | None:
        """A try failed: seconds until the next one, or None when it is given up (the
        provider refused it for good, its outcome is unknown, or the window is over)."""
        member = _member(phone_number_id, address)
        retryable = not isinstance(exc, SendError) or (exc.retryable and exc.stage != UNKNOWN)
        window_left = self.redis.pttl(self._noticed_key(phone_number_id, address)) / 1000
        attempts = self.redis.hincrby(self.attempts_key, member, 1)
        delay = backoff_seconds(attempts, getattr(exc, "retry_after", None), base=1.0, cap=RETRY_CAP_SECONDS)
        if not retryable or window_left <= delay:
            self.sent(phone_number_id, address)     # nothing more to do for it
            return None
        self.redis.zadd(self.due_key, {member: time.time() + delay})
        return delay

    def waiting(self) -> int:
        return self.redis.zcard(self.due_key)


def _member(phone_number_id: str, address: str) -> str:
    return f"{phone_number_id}\n{address}"


def _pair(member) -> tuple[str, str]:
    text = member.decode() if isinstance(member, bytes) else member
    phone_number_id, _, address = text.partition("\n")
    return phone_number_id, address
