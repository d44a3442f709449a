"""Counters of the bot's outcomes, kept in Redis (`<prefix>:counters`, one hash)
so that `/metrics`, scraped from any web process, reports the total of every
process, as its gauges do. A change counts its outcomes after it commits
(`Change.count`, incremented by routing.dispatch); the breaker counts its
transitions when it makes them. Best effort: a count lost with Redis is a
counter reset to Prometheus, never a wrong state."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# name: (help, label, the label's values); each is exposed as a Prometheus counter.
COUNTERS = {
    "baton_bot_turn_failures": ("Bot turns that failed: no reply within BOT_REPLY_TIMEOUT (`timeout`), the "
                                "`bot.turn` delivery failed for good (`delivery_failed`), or the bot answered "
                                "`intent: fallback` (`fallback`); each counts towards BOT_FAILURE_LIMIT",
                                "kind", ("timeout", "delivery_failed", "fallback")),
    "baton_bot_fallback_notices": ("BOT_FALLBACK_NOTICE messages queued for customers (`queued`), or not sent "
                                   "because the 24-hour window was closed and no template was set (`not_sent`)",
                                   "outcome", ("queued", "not_sent")),
    "baton_bot_failure_escalations": ("Conversations handed to the humans after BOT_FAILURE_LIMIT bot failures "
                                      "in a row", None, ()),
    "baton_bot_turns_rerouted": ("New turns sent to BOT_FALLBACK while the breaker on N8N_BOT_URL was open: the "
                                 "built-in bot (`builtin`) or the humans' queue (`agents`)",
                                 "to", ("builtin", "agents")),
    "baton_bot_breaker_transitions": ("Times the breaker on N8N_BOT_URL entered a state", "to",
                                      ("open", "half_open", "closed")),
    "baton_bot_deadlines_cancelled": ("Reply deadlines dropped without a failure because control left the bot "
                                      "(a human took over) before they passed", None, ()),
}


def counters_key(prefix: str) -> str:
    return f"{prefix}:counters"


def field(name: str, label: str | None = None) -> str:
    """The hash field of one counter series: `name` or `name|label value`."""
    if name not in COUNTERS:
        raise KeyError(name)
    return f"{name}|{label}" if label is not None else name


def increment(redis, prefix: str, fields: list[str]) -> None:
    if not fields:
        return
    try:
        with redis.pipeline(transaction=False) as pipe:
            for name in fields:
                pipe.hincrby(counters_key(prefix), name, 1)
            pipe.execute()
    except Exception:
        log.warning("could not count %s", fields, exc_info=True)


def read(redis, prefix: str) -> dict[str, int]:
    raw = redis.hgetall(counters_key(prefix))
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
