"""Live events for consoles and agent tools (`GET /api/v1/events`).

Published on one Redis pub/sub channel after the change they describe has
committed; each carries an `audience` (see routing.visibility) that the
stream uses to filter, and that is never sent to clients. Pub/sub is
fire-and-forget by design: a console that reconnects re-reads state over REST.
"""
from __future__ import annotations

import orjson
from redis import Redis

from models.base import isoformat, utcnow

from .visibility import audience as audience_of

KINDS = ("conversation.updated", "message.created", "message.updated", "typing")


def channel(prefix: str) -> str:
    return f"{prefix}:live"


def live_event(kind: str, conversation_id: str, data: dict, *snapshots: dict) -> dict:
    """An event of `kind` about a conversation; `snapshots` (the conversation
    before and/or after, as dicts) decide who hears it."""
    assert kind in KINDS, kind
    return {"type": kind, "conversation_id": conversation_id, "occurred_at": isoformat(utcnow()),
            "data": data, "audience": audience_of(*snapshots)}


def publish(redis: Redis, prefix: str, events: list[dict]) -> None:
    if not events:
        return
    pipe = redis.pipeline(transaction=False)
    for event in events:
        pipe.publish(channel(prefix), orjson.dumps(event))
    pipe.execute()
