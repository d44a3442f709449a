"""Health, readiness, metrics and the OpenAPI document (no token needed)."""
from __future__ import annotations

import hmac
import logging

import peewee
from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from models import PENDING_AGENT, Agent, CallbackRequest, Conversation, Delivery, Media, Message, db, utcnow
from models.base import parse_time
from models.media import STATUSES as MEDIA_STATUSES
from models.message import UNSENT, is_unsent
from routing.lanes import LANES

from .api import build_spec, errors, reply, responds
from .errors import ApiError
from .schemas import HealthSchema, ReadinessSchema

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
@responds(200, HealthSchema, "The process is up")
def healthz():
    """Liveness."""
    return reply({"status": "ok"})


@bp.get("/readyz")
@responds(200, ReadinessSchema, "Database, Redis and the media store answer")
@responds(503, ReadinessSchema, "A dependency is down")
def readyz():
    """Readiness: the database, Redis and the media store all answer."""
    from integrations.storage import StorageError

    rt = current_app.extensions["baton"]
    status = {"database": "ok", "redis": "ok", "storage": "ok"}
    try:
        db.execute_sql("SELECT 1")
    except peewee.PeeweeException as exc:
        status["database"] = f"down: {type(exc).__name__}"
    try:
        rt.redis.ping()
    except RedisError as exc:
        status["redis"] = f"down: {type(exc).__name__}"
    try:
        rt.storage.ping()
    except StorageError as exc:          # the details (paths, bucket) go to the log, not to anyone asking
        log.warning("media storage is down: %s", exc)
        status["storage"] = f"down: {type(exc).__name__}"
    if all(value == "ok" for value in status.values()):
        return reply(status)
    return reply(status, 503, headers={"Retry-After": "5"})


@bp.get("/metrics")
@responds(200, description="Prometheus text format", content_type=CONTENT_TYPE_LATEST)
@errors(codes={401: ("unauthorized",)})
def metrics():
    """Gauges read at scrape time, so every web process reports the same truth."""
    rt = current_app.extensions["baton"]
    token = rt.settings.METRICS_TOKEN
    if token and not hmac.compare_digest(request.headers.get("Authorization", ""), f"Bearer {token}"):
        raise ApiError(401, "unauthorized", "Metrics need `Authorization: Bearer <METRICS_TOKEN>`.")
    registry = CollectorRegistry()
    by_state = Gauge("baton_conversations", "Conversations by state", ["state"], registry=registry)
    for state, count in (Conversation.select(Conversation.state, peewee.fn.COUNT(Conversation.id))
                         .group_by(Conversation.state).tuples()):
        by_state.labels(state).set(count)
    Gauge("baton_messages_unrouted", "Inbound messages recorded but not routed yet",
          registry=registry).set(Message.select().where(Message.routed_to.is_null()).count())
    unsent = Gauge("baton_outbound_unsent", "Outbound messages not yet accepted by the provider: `queued`, or "
                   "`unknown` (a send whose outcome waits to be reconciled)", ["status"], registry=registry)
    counts = dict(Message.select(Message.status, peewee.fn.COUNT(Message.id))
                  .where(is_unsent()).group_by(Message.status).tuples())
    for status in UNSENT:
        unsent.labels(status).set(counts.get(status, 0))
    deliveries = Gauge("baton_deliveries", "n8n deliveries by status", ["status"], registry=registry)
    for status, count in (Delivery.select(Delivery.status, peewee.fn.COUNT(Delivery.id))
                          .group_by(Delivery.status).tuples()):
        deliveries.labels(status).set(count)
    media = Gauge("baton_media", "Customers' media files by status (pending: being fetched or retried)",
                  ["status"], registry=registry)
    media_counts = dict(Media.select(Media.status, peewee.fn.COUNT(Media.id)).group_by(Media.status).tuples())
    for status in MEDIA_STATUSES:
        media.labels(status).set(media_counts.get(status, 0))
    depth = Gauge("baton_lane_ready", "Keys waiting in a work lane", ["lane"], registry=registry)
    for lane in LANES:
        depth.labels(lane).set(rt.lanes.depth(lane))
    agents = list(Agent.select(Agent.id))
    online = rt.presence.online([a.id for a in agents])
    Gauge("baton_agents_online", "Agents online for assignment (status online and a live heartbeat)",
          registry=registry).set(sum(online.values()))
    Gauge("baton_pending_unoffered", "Conversations waiting for a human that no agent has been offered",
          registry=registry).set(Conversation.select().where((Conversation.state == PENDING_AGENT)
                                                             & Conversation.offered_agent_id.is_null()).count())
    oldest = (Conversation.select(peewee.fn.MIN(Conversation.pending_since))
              .where(Conversation.state == PENDING_AGENT).scalar())
    Gauge("baton_pending_oldest_seconds", "How long the longest-waiting customer has waited for a human",
          registry=registry).set((utcnow() - parse_time(oldest)).total_seconds() if oldest else 0)
    Gauge("baton_callback_requests_open", "Callback requests nobody has handled yet",
          registry=registry).set(CallbackRequest.select().where(CallbackRequest.status == "open").count())
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)




@bp.get("/openapi.json")
@responds(200, {"type": "object", "description": "an OpenAPI 3.0.3 document"}, "This document")
def openapi():
    """This API, generated from the schemas that validate it.

    The one answer not dumped through a marshmallow schema: it is the documentation itself."""
    spec = current_app.extensions.get("baton_openapi")
    if spec is None:
        spec = current_app.extensions["baton_openapi"] = build_spec(current_app)
    return jsonify(spec)
