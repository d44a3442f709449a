"""The degraded-mode spool (invariant 9): verified webhooks kept in a Redis stream
while the database cannot record them, replayed through the normal ingest path
when it can again.

- `append` adds one verified webhook (its provider and raw body, exactly as
  signed) to the stream `<prefix>:spool`; it refuses (None) once the stream holds
  SPOOL_MAX_ENTRIES, so an outage cannot fill Redis' memory: the webhook then
  answers 503 and the provider retries.
- `replay` takes the stream in arrival order under a Redis lock (one replayer
  at a time, across every process), records each entry with routing.ingest
  (duplicates by provider message id are stored once, statuses only move
  forward, so a replay that is cut off and run again stores nothing twice),
  hands what was recorded to the lanes, and deletes the entry only after its
  transaction committed. An entry that fails for another reason than the
  database being unreachable (a bug) moves to `<prefix>:spool:dead` with its
  error, so it cannot block the entries behind it.
- While entries wait, new webhooks join the end of the stream (`pending`), so
  a customer's messages are recorded in the order they arrived.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import replace

import peewee
from playhouse.pool import MaxConnectionsExceeded
from redis.exceptions import RedisError

from models.base import connection_lost, ensure_connection

log = logging.getLogger(__name__)

# Errors that mean "the database cannot record this now" (what a webhook answered 503 for).
DATABASE_UNAVAILABLE = (peewee.OperationalError, peewee.InterfaceError, MaxConnectionsExceeded)
PENDING_RECHECK_SECONDS = 1.0
REPLAY_BATCH = 50
REPLAY_LOCK_SECONDS = 30.0

_APPEND = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', 'provider', ARGV[2], 'body', ARGV[3], 'at', ARGV[4])
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def unavailable(exc: BaseException) -> bool:
    """Did the database fail to record (as opposed to refusing a statement for its content)?"""
    return isinstance(exc, DATABASE_UNAVAILABLE)


class Spool:
    def __init__(self, redis, prefix: str, max_entries: int):
        self.redis = redis
        self.key = f"{prefix}:spool"
        self.dead_key = f"{prefix}:spool:dead"
        self.lock_key = f"{prefix}:spool:replaying"
        self.max_entries = max_entries
        self._append = redis.register_script(_APPEND)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._known_pending = False
        self._next_check = 0.0

    # -- the webhook's side -------------------------------------------------------
    def append(self, provider: str, raw: bytes) -> str | None:
        """Add a verified webhook; its stream id, or None when the spool is full.
        Raises RedisError when Redis is unreachable."""
        entry_id = self._append(keys=[self.key], args=[self.max_entries, provider, raw, f"{time.time():.6f}"])
        if entry_id is None:
            return None
        self._known_pending = True
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    def pending(self) -> bool:
        """Whether webhooks wait in the spool (so a new one must queue behind them).
        Read from Redis on every call while this process knows of waiting entries,
        otherwise at most once a second (another process's spool is noticed within
        that second). An unreachable Redis counts as empty: nothing can be replayed
        from it, and the database path does not need it."""
        now = time.monotonic()
        if self._known_pending or now >= self._next_check:
            try:
                self._known_pending = self.length() > 0
            except RedisError:
                self._known_pending = False
            self._next_check = now + PENDING_RECHECK_SECONDS
        return self._known_pending

    def length(self) -> int:
        return self.redis.xlen(self.key)

    def dead_length(self) -> int:
        return self.redis.xlen(self.dead_key)

    # -- the replayer's side ------------------------------------------------------
    def lock(self) -> str | None:
        token = os.urandom(8).hex()
        if self.redis.set(self.lock_key, token, nx=True, px=int(REPLAY_LOCK_SECONDS * 1000)):
            return token
        return None

    def renew(self, token: str) -> bool:
        return bool(self._renew(keys=[self.lock_key], args=[token, int(REPLAY_LOCK_SECONDS * 1000)]))

    def unlock(self, token: str) -> None:
        self._release(keys=[self.lock_key], args=[token])

    def head(self, count: int) -> list[tuple[str, dict]]:
        """The oldest `count` entries: (id, {"provider", "body", "at"})."""
        entries = self.redis.xrange(self.key, "-", "+", count=count)
        return [(_text(entry_id), {_text(k): v for k, v in fields.items()}) for entry_id, fields in entries]

    def acknowledge(self, *entry_ids: str) -> None:
        if entry_ids:
            self.redis.xdel(self.key, *entry_ids)

    def forget_dead(self, older_than_seconds: float) -> int:
        """Drop dead entries set aside longer ago than that (stream ids are their times in ms)."""
        cutoff_ms = int((time.time() - older_than_seconds) * 1000)
        return self.redis.xtrim(self.dead_key, minid=f"{cutoff_ms}-0", approximate=False)

    def bury(self, entry_id: str, fields: dict, error: str) -> None:
        """Set aside an entry that cannot be recorded (kept, with its error, in the dead stream)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.dead_key, {**fields, "spool_id": entry_id, "error": error[:2000]})
        pipe.xdel(self.key, entry_id)
        pipe.execute()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def replay(rt, budget_seconds: float = 5.0) -> dict:
    """Record the spool's entries, oldest first, until it is empty or the budget is
    spent. Returns counts; `locked` when another process is replaying. Raises when
    the database is unreachable (the entries stay for the next try)."""
    from .ingest import IngestCache

    spool: Spool = rt.spool
    counts = {"replayed": 0, "buried": 0, "locked": False}
    if spool.length() == 0:
        return counts
    token = spool.lock()
    if token is None:
        counts["locked"] = True
        return counts
    try:
        ensure_connection()
        cache = rt.caches.setdefault("ingest", IngestCache())
        deadline = time.monotonic() + budget_seconds
        while time.monotonic() < deadline:
            entries = spool.head(REPLAY_BATCH)
            if not entries or not spool.renew(token):
                break
            committed: list[str] = []
            try:
                for entry_id, fields in entries:
                    if time.monotonic() >= deadline:
                        break
                    if _replay_entry(rt, spool, cache, entry_id, fields):
                        committed.append(entry_id)
                        counts["replayed"] += 1
                    else:
                        counts["buried"] += 1
            finally:
                # Forgotten only once committed (one call per batch: should this process
                # die before it, those entries are recorded again, which stores nothing twice).
                spool.acknowledge(*committed)
    finally:
        spool.unlock(token)
    if counts["replayed"] or counts["buried"]:
        log.info("spool replayed: %s", counts)
    return counts


def _replay_entry(rt, spool: Spool, cache, entry_id: str, fields: dict) -> bool:
    """Record one entry and hand it on; False when it was set aside. Raises when the
    database is unreachable (the entry stays)."""
    from .ingest import record_webhook

    provider = _text(fields.get("provider", b""))
    try:
        parsed = _adapter_for(rt, provider).parse(fields["body"])
        result = record_webhook(provider, parsed, cache, media_grace=rt.settings.REQUEUE_AFTER)
    except Exception as exc:
        if unavailable(exc) or connection_lost(exc):
            raise              # the database went away again: this entry waits
        log.exception("spool entry %s cannot be recorded; set aside in %s", entry_id, spool.dead_key)
        spool.bury(entry_id, fields, f"{type(exc).__name__}: {exc}")
        return False
    rt.after_ingest(result)       # committed: hand it to the lanes
    return True


def _adapter_for(rt, provider: str):
    """The adapter that parses `provider`'s webhooks: the running one, or (the provider was
    changed while entries waited) one built for it; parsing needs no credentials."""
    if rt.adapter.name == provider:
        return rt.adapter
    from integrations.whatsapp import make_adapter

    return make_adapter(replace(rt.settings, WHATSAPP_PROVIDER=provider))
