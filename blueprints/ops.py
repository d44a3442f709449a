"""Health, readiness, metrics and the OpenAPI document (no token needed)."""
from __future__ import annotations

import hmac
import logging

import peewee
from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from models import PENDING_AGENT, Agent, CallbackRequest, Conversation, DeadLetter, Delivery, Media, Message, utcnow
from models.base import ensure_connection, parse_time
from models.media import STATUSES as MEDIA_STATUSES
from models.message import UNSENT, is_unsent
from routing import counters
from routing.bot_breaker import STATES as BOT_BREAKER_STATES
from routing.breaker import STATES as BREAKER_STATES
from routing.group_commit import group_commit
from routing.counters import COUNTERS
from routing.lanes import LANES

from .api import build_spec, errors, reply, responds
from .auth import failed_authentication, refuse_if_locked_out
from .errors import ApiError
from .schemas import HealthSchema, ReadinessSchema

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
@responds(200, HealthSchema, "The process is up")
def healthz():
    """Liveness."""
    return reply({"status": "ok"})


# Endpoints that answer while the database is down: app.py opens no connection
# before them (readiness and metrics open their own, and say when they cannot).
WITHOUT_DATABASE = frozenset({"ops.healthz", "ops.readyz", "ops.metrics", "ops.openapi"})


def _database_status() -> str:
    try:
        ensure_connection()
        return "ok"
    except Exception as exc:          # whatever it is, readiness answers with it rather than a 500
        return f"down: {type(exc).__name__}"


def _redis_status(rt) -> str:
    try:
        rt.redis.ping()
        return "ok"
    except Exception as exc:
        return f"down: {type(exc).__name__}"


def _storage_status(rt) -> str:
    try:
        rt.storage.ping()
        return "ok"
    except Exception as exc:          # the details (paths, bucket) go to the log, not to anyone asking
        log.warning("media storage is down: %s", exc)
        return f"down: {type(exc).__name__}"


@bp.get("/readyz")
@responds(200, ReadinessSchema, "Database, Redis and the media store answer")
@responds(503, ReadinessSchema, "A dependency is down")
def readyz():
    """Readiness: each dependency Baton needs (the database, Redis, the media store),
    `ok` or `down: <error>`; 503 when one is down, never a 500. Also this process's circuit
    breaker around the database and the webhooks waiting in the spool (while the database is
    down, webhooks are still answered 200: they are spooled)."""
    rt = current_app.extensions["baton"]
    status = {"database": _database_status(), "redis": _redis_status(rt), "storage": _storage_status(rt)}
    healthy = all(value == "ok" for value in status.values())
    status["breaker"] = rt.breaker.state
    try:
        status["spool"] = rt.spool.length()
    except Exception:
        status["spool"] = None
    if healthy:
        return reply(status)
    return reply(status, 503, headers={"Retry-After": "5"})


def _database_gauges(registry: CollectorRegistry) -> list[str] | None:
    """The gauges read from the database, registered only when every read
    succeeded (absent, not zero, while it is down); returns the agent ids."""
    try:
        ensure_connection()
        by_state = list(Conversation.select(Conversation.state, peewee.fn.COUNT(Conversation.id))
                        .group_by(Conversation.state).tuples())
        unrouted = Message.select().where(Message.routed_to.is_null()).count()
        unsent_counts = dict(Message.select(Message.status, peewee.fn.COUNT(Message.id))
                             .where(is_unsent()).group_by(Message.status).tuples())
        delivery_counts = list(Delivery.select(Delivery.status, peewee.fn.COUNT(Delivery.id))
                               .group_by(Delivery.status).tuples())
        media_counts = dict(Media.select(Media.status, peewee.fn.COUNT(Media.id)).group_by(Media.status).tuples())
        agent_ids = [a.id for a in Agent.select(Agent.id).where(Agent.deactivated_at.is_null())]
        unoffered = Conversation.select().where((Conversation.state == PENDING_AGENT)
                                                & Conversation.offered_agent_id.is_null()).count()
        oldest = (Conversation.select(peewee.fn.MIN(Conversation.pending_since))
                  .where(Conversation.state == PENDING_AGENT).scalar())
        callbacks = CallbackRequest.select().where(CallbackRequest.status == "open").count()
        dead = DeadLetter.select().where(DeadLetter.retried_at.is_null()).count()
    except Exception as exc:
        log.warning("metrics: the database could not be read (%s)", exc)
        return None
    gauge = Gauge("baton_conversations", "Conversations by state", ["state"], registry=registry)
    for state, count in by_state:
        gauge.labels(state).set(count)
    Gauge("baton_messages_unrouted", "Inbound messages recorded but not routed yet",
          registry=registry).set(unrouted)
    unsent = Gauge("baton_outbound_unsent", "Outbound messages not yet accepted by the provider: `queued`, or "
                   "`unknown` (a send whose outcome waits to be reconciled)", ["status"], registry=registry)
    for status in UNSENT:
        unsent.labels(status).set(unsent_counts.get(status, 0))
    deliveries = Gauge("baton_deliveries", "n8n deliveries by status", ["status"], registry=registry)
    for status, count in delivery_counts:
        deliveries.labels(status).set(count)
    media = Gauge("baton_media", "Customers' media files by status (pending: being fetched or retried)",
                  ["status"], registry=registry)
    for status in MEDIA_STATUSES:
        media.labels(status).set(media_counts.get(status, 0))
    Gauge("baton_pending_unoffered", "Conversations waiting for a human that no agent has been offered",
          registry=registry).set(unoffered)
    Gauge("baton_pending_oldest_seconds", "How long the longest-waiting customer has waited for a human",
          registry=registry).set((utcnow() - parse_time(oldest)).total_seconds() if oldest else 0)
    Gauge("baton_callback_requests_open", "Callback requests nobody has handled yet",
          registry=registry).set(callbacks)
    Gauge("baton_dead_letters", "Inbound messages set aside after ROUTE_MAX_ATTEMPTS failed routing attempts, "
          "not retried yet (GET /api/v1/admin/dead-letters)", registry=registry).set(dead)
    return agent_ids


def _redis_gauges(registry: CollectorRegistry, rt, agent_ids: list[str] | None) -> bool:
    """The gauges read from Redis (agents online needs the database's agents too)."""
    try:
        depths = {lane: rt.lanes.depth(lane) for lane in LANES}
        online = rt.presence.online(agent_ids) if agent_ids is not None else None
        counts = counters.read(rt.redis, rt.settings.REDIS_PREFIX)
        breaker = rt.policy.breaker.read() if rt.policy.breaker is not None else None
        spooled, dead, notices = rt.spool.length(), rt.spool.dead_length(), rt.notices.waiting()
    except Exception as exc:
        log.warning("metrics: Redis could not be read (%s)", exc)
        return False
    Gauge("baton_spool_entries", "Webhooks kept in the spool while the database was down, not yet recorded",
          registry=registry).set(spooled)
    Gauge("baton_spool_dead_entries", "Spooled webhooks that could not be recorded (set aside with their error)",
          registry=registry).set(dead)
    Gauge("baton_maintenance_notices_waiting", "Maintenance notices scheduled or waiting for a retry",
          registry=registry).set(notices)
    depth = Gauge("baton_lane_ready", "Keys waiting in a work lane", ["lane"], registry=registry)
    for lane, value in depths.items():
        depth.labels(lane).set(value)
    if online is not None:
        Gauge("baton_agents_online", "Agents online for assignment (status online and a live heartbeat)",
              registry=registry).set(sum(online.values()))
    _bot_metrics(registry, counts, breaker)
    return True


def _bot_metrics(registry: CollectorRegistry, counts: dict[str, int], breaker) -> None:
    """The bot's outcome counters (routing.counters, summed over every process) and the
    state of the circuit breaker on N8N_BOT_URL."""
    for name, (meaning, label, values) in COUNTERS.items():
        counter = Counter(name, meaning, [label] if label else [], registry=registry)
        if label is None:
            counter.inc(counts.get(name, 0))
            continue
        for value in values:
            counter.labels(value).inc(counts.get(f"{name}|{value}", 0))
    if breaker is None:
        return
    state = Gauge("baton_bot_breaker_state", "The circuit breaker on deliveries to N8N_BOT_URL: 1 for the state "
                  "it is in (`closed`: turns go to the AI branch; `open`: new turns go to BOT_FALLBACK; "
                  "`half_open`: one probe turn is out)", ["state"], registry=registry)
    for name in BOT_BREAKER_STATES:
        state.labels(name).set(1 if breaker.state == name else 0)
    Gauge("baton_bot_breaker_failures", "Deliveries to N8N_BOT_URL that failed in a row",
          registry=registry).set(breaker.failures)


@bp.get("/metrics")
@responds(200, description="Prometheus text format", content_type=CONTENT_TYPE_LATEST)
@errors(codes={401: ("unauthorized",), 429: ("too_many_auth_failures",)})
def metrics():
    """Gauges read at scrape time, so every web process reports the same truth. While the
    database (or Redis) cannot be read its gauges are absent and `baton_dependency_up`
    says so; the answer is 200 all the same."""
    rt = current_app.extensions["baton"]
    token = rt.settings.METRICS_TOKEN
    # compare_digest takes str only when both are ASCII; compare bytes so a non-ASCII header is a 401.
    sent = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    if token and sent:          # a presented credential: refused while its address is locked out
        refuse_if_locked_out()
    if token and not hmac.compare_digest(sent, f"Bearer {token}".encode()):
        message = "Metrics need `Authorization: Bearer <METRICS_TOKEN>`."
        raise failed_authentication(message) if sent else ApiError(401, "unauthorized", message)
    registry = CollectorRegistry()
    agent_ids = _database_gauges(registry)
    redis_ok = _redis_gauges(registry, rt, agent_ids)
    up = Gauge("baton_dependency_up", "1 when this scrape could read the dependency, 0 when it could not "
               "(its gauges are then absent)", ["dependency"], registry=registry)
    up.labels("database").set(agent_ids is not None)
    up.labels("redis").set(redis_ok)
    breaker = Gauge("baton_database_breaker", "This process's circuit breaker around the database on the webhook "
                    "path: 1 for its current state (closed, half_open, open), 0 for the others", ["state"],
                    registry=registry)
    current = rt.breaker.state
    for state in BREAKER_STATES:
        breaker.labels(state).set(state == current)
    writer = group_commit()
    Counter("baton_webhook_commits", "This process's group commits of webhooks (routing.group_commit)",
            registry=registry).inc(writer.batches)
    Counter("baton_webhooks_committed", "Webhooks this process's group commits recorded (more than "
            "baton_webhook_commits_total when webhooks shared commits)", registry=registry).inc(writer.committed)
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
