"""The circuit breaker on deliveries to the AI branch (N8N_BOT_URL).

While deliveries keep failing, a `bot.turn` sent there only makes the customer
wait for BOT_REPLY_TIMEOUT. After BOT_BREAKER_FAILURES failed deliveries in a
row the breaker opens: new turns go to BOT_FALLBACK (the built-in bot, or the
humans' queue). After BOT_BREAKER_COOLDOWN seconds the next turn is sent as a
probe (half-open) while the turns after it keep going to the fallback; any
delivery that succeeds closes the breaker, a failed one opens it again.

`admit` and `after_delivery` are the pure decisions (table-tested);
`BotBreaker` keeps the state in one Redis hash shared by every process and
applies them under WATCH, so two processes never both take the probe.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from redis.exceptions import RedisError, WatchError

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)
DELIVER, PROBE, REROUTE = "deliver", "probe", "reroute"


@dataclass(frozen=True)
class Breaker:
    state: str = CLOSED
    failures: int = 0          # failed deliveries in a row
    since: float = 0.0         # when it opened, or when the current probe was sent (Unix seconds)


def admit(b: Breaker, now: float, cooldown: float) -> tuple[str, Breaker]:
    """Where a new turn goes: `deliver` (closed), `probe` (the one turn sent to
    find out whether the AI branch is back), or `reroute` (to BOT_FALLBACK)."""
    if b.state == CLOSED:
        return DELIVER, b
    if now - b.since >= cooldown:    # open long enough, or the last probe was never heard of
        return PROBE, replace(b, state=HALF_OPEN, since=now)
    return REROUTE, b


def after_delivery(b: Breaker, delivered: bool, now: float, threshold: int) -> Breaker:
    """The breaker after one delivery attempt to the AI branch."""
    if delivered:
        return Breaker()
    failures = b.failures + 1
    if b.state == HALF_OPEN or (b.state == CLOSED and failures >= threshold):
        return Breaker(OPEN, failures, now)
    return replace(b, failures=failures)    # open: older deliveries' retries do not extend the cool-down


def transition(before: Breaker, after: Breaker) -> str | None:
    """The state entered, when it changed."""
    return after.state if after.state != before.state else None


class BotBreaker:
    """The breaker's state in Redis (`<prefix>:bot:breaker`), for every process."""

    def __init__(self, redis, prefix: str, threshold: int, cooldown: float):
        self.redis = redis
        self.key = f"{prefix}:bot:breaker"
        self.threshold = threshold
        self.cooldown = cooldown

    def read(self) -> Breaker:
        return _parse(self.redis.hgetall(self.key))

    def admit(self, now: float) -> tuple[str, Breaker]:
        """Where a new turn goes; a Redis that cannot be read lets it go to the AI branch
        (its delivery is durable and retried, and the reply deadline still holds)."""
        try:
            seen = self.read()
            if seen.state == CLOSED:          # the usual case: one read, no transaction
                return DELIVER, seen
            decision, _, after = self._apply(lambda b: admit(b, now, self.cooldown))
        except RedisError as exc:
            log.warning("bot breaker unreadable (%s): the turn goes to the AI branch", exc)
            return DELIVER, Breaker()
        return decision, after

    def release_probe(self, probe_since: float) -> None:
        """A probe taken by a change that did not commit: the next turn may probe at once."""
        def undo(b: Breaker):
            if b.state == HALF_OPEN and b.since == probe_since:
                return None, replace(b, since=probe_since - self.cooldown)
            return None, b
        self._apply(undo)

    def record(self, delivered: bool, now: float) -> tuple[Breaker, Breaker]:
        """One delivery attempt's outcome; returns the breaker (before, after)."""
        if delivered:
            seen = self.read()
            if seen == Breaker():             # the usual case: nothing to change
                return seen, seen
        _, before, after = self._apply(lambda b: (None, after_delivery(b, delivered, now, self.threshold)))
        return before, after

    def _apply(self, step) -> tuple:
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    before = _parse(pipe.hgetall(self.key))
                    result, after = step(before)
                    if after == before:
                        pipe.unwatch()
                    else:
                        pipe.multi()
                        pipe.hset(self.key, mapping={"state": after.state, "failures": after.failures,
                                                     "since": repr(after.since)})
                        pipe.execute()
                    return result, before, after
                except WatchError:
                    continue


def _parse(raw: dict) -> Breaker:
    if not raw:
        return Breaker()
    values = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
              for k, v in raw.items()}
    state = values.get("state", CLOSED)
    return Breaker(state if state in STATES else CLOSED, int(values.get("failures", 0)),
                   float(values.get("since", 0.0)))
