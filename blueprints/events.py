"""Live events for consoles and agent tools: `GET /api/v1/events` (Server-Sent Events).

Each stream is a subscriber of the process's LiveHub (routing.live_hub) and
passes on what routing.visibility says its caller may hear, without the
`audience` it decided that by. Nothing is replayed: a client that reconnects
re-reads state over REST.
"""
from __future__ import annotations

import queue
import time

import orjson
from flask import Blueprint, Response, current_app, g
from marshmallow import fields, validate

from models import db
from routing.live import KINDS, TOKENS_REVOKED
from routing.live_hub import Subscription, hub_for, shutting_down
from routing.visibility import Viewer, may_hear

from .api import errors, query, responds
from .auth import current_viewer, require
from .errors import ApiError
from .schemas import StrictSchema

bp = Blueprint("events", __name__, url_prefix="/api/v1/events")

# Seconds of silence before a `: keep-alive` comment, so proxies keep the
# connection open and a vanished client is noticed (the write fails).
KEEPALIVE_SECONDS = 15.0
# What EventSource waits before reconnecting after the stream ends.
RETRY_MILLISECONDS = 3000
# How long a new stream waits for the process's Redis subscription.
CONNECT_TIMEOUT = 2.0
STREAMED_KEYS = ("type", "conversation_id", "occurred_at", "data")


class EventStreamQueryArgsSchema(StrictSchema):
    conversation_id = fields.String(validate=validate.Length(min=1, max=40),
                                    metadata={"description": "only events about this conversation"})


@bp.get("")
@responds(200, None, "A text/event-stream of `message.created`, `message.updated` (a delivery status "
                     "changed; data: the message), `conversation.updated` and `typing` (an agent's; or the "
                     "bot's, with `bot: true`, while the AI branch prepares an answer) events the caller "
                     "may see", content_type="text/event-stream")
@errors(401, 403, 422, codes={503: ("redis_unavailable",)})
@require("agent")
@query(EventStreamQueryArgsSchema)
def stream_events(args):
    """Live events about the conversations the caller may see."""
    viewer = current_viewer()
    if shutting_down():
        # Not a 503: EventSource gives up on an error status, while a stream
        # that ends makes it reconnect (on a new connection, to another worker).
        return event_stream_response([f"retry: {RETRY_MILLISECONDS}\n: restarting\n\n".encode()])
    subscription = hub_for(current_app.extensions["baton"]).subscribe()
    if not subscription.wait_connected(CONNECT_TIMEOUT):
        subscription.close()
        raise ApiError(503, "redis_unavailable", "Live events are unavailable right now; retry shortly.",
                       headers={"Retry-After": "5"})
    # A stream may stay open for hours: it must not keep a database connection.
    if not db.is_closed():
        db.close()
    response = event_stream_response(event_stream(subscription, viewer, args.get("conversation_id"),
                                                  token_id=g.token.id))
    # A stream closed before its first chunk never runs the generator's `finally`.
    response.call_on_close(subscription.close)
    return response


def event_stream_response(chunks) -> Response:
    # X-Accel-Buffering: nginx passes each event on as it comes.
    return Response(chunks, mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def event_stream(subscription: Subscription, viewer: Viewer, conversation_id: str | None,
                 token_id: str | None = None):
    """SSE chunks: a greeting, then every event `viewer` may hear, with a
    keep-alive comment after KEEPALIVE_SECONDS of nothing sent. The stream
    ends as soon as its token is revoked (routing.live.end_streams_of)."""
    try:
        yield f"retry: {RETRY_MILLISECONDS}\n: connected\n\n".encode()
        quiet_until = time.monotonic() + KEEPALIVE_SECONDS
        while True:
            try:
                item = subscription.get(timeout=max(quiet_until - time.monotonic(), 0.0))
            except queue.Empty:
                yield b": keep-alive\n\n"
                quiet_until = time.monotonic() + KEEPALIVE_SECONDS
                continue
            if item is None:          # the hub lost events or the process is stopping
                return
            if item[1].get("type") == TOKENS_REVOKED and token_id in (item[1].get("token_ids") or ()):
                return
            frame = sse_frame(*item, viewer=viewer, conversation_id=conversation_id)
            if frame is not None:
                yield frame
                quiet_until = time.monotonic() + KEEPALIVE_SECONDS
    finally:
        subscription.close()


def sse_frame(event_id: str, event: dict, *, viewer: Viewer, conversation_id: str | None) -> bytes | None:
    """The SSE frame for `event`, or None when this stream must not carry it."""
    if event.get("type") not in KINDS:
        return None
    if conversation_id is not None and event.get("conversation_id") != conversation_id:
        return None
    audience = event.get("audience")
    if not may_hear(viewer, audience if isinstance(audience, dict) else {}):
        return None
    data = orjson.dumps({key: event.get(key) for key in STREAMED_KEYS})
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), event["type"].encode(), data)
