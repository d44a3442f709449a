"""Live events for consoles and agent tools (`GET /api/v1/events`).

Published on one Redis pub/sub channel after the change they describe has
committed; each carries an `audience` (see routing.visibility) that the
stream uses to filter, and that is never sent to clients. Pub/sub is
fire-and-forget by design: a console that reconnects re-reads state over REST.
"""
from __future__ import annotations

import logging

import orjson
from redis import Redis

from models.base import isoformat, utcnow

from .visibility import audience as audience_of

log = logging.getLogger(__name__)
KINDS = ("conversation.updated", "message.created", "message.updated", "typing")


def channel(prefix: str) -> str:
    return f"{prefix}:live"


def live_event(kind: str, conversation_id: str, data: dict, *snapshots: dict) -> dict:
    """An event of `kind` about a conversation; `snapshots` (the conversation
    before and/or after, as dicts) decide who hears it."""
    assert kind in KINDS, kind
    return {"type": kind, "conversation_id": conversation_id, "occurred_at": isoformat(utcnow()),
            "data": data, "audience": audience_of(*snapshots)}


# Not an event for clients (sse_frame drops it): the streams opened with these
# tokens end at once, so a revoked token (or a deactivated agent) hears nothing more.
TOKENS_REVOKED = "tokens.revoked"


def end_streams_of(redis: Redis, prefix: str, token_ids: list[str]) -> None:
    """Tell every process's open live streams that these tokens no longer work.
    Best effort: with Redis down, nothing is streamed anyway."""
    if not token_ids:
        return
    try:
        publish(redis, prefix, [{"type": TOKENS_REVOKED, "token_ids": list(token_ids)}])
    except Exception:
        log.warning("could not tell live streams that %d token(s) were revoked", len(token_ids), exc_info=True)


def publish(redis: Redis, prefix: str, events: list[dict]) -> None:
    if not events:
        return
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.publish(channel(prefix), orjson.dumps(event))
    pipe.execute()
