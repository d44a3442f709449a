"""POST /webhooks/<provider>: verify → parse → record (in the next group commit) →
hand the new messages to the inbound lane → answer. No routing happens here.

Fail open (invariant 9): when the database cannot record a verified webhook (or
the circuit breaker around it is open, or earlier webhooks still wait in the
spool), the webhook is appended to the spool (routing.spool) and answered 200
with `"spooled": true`; a customer who wrote gets MAINTENANCE_NOTICE (at most
once per window). Only when the spool cannot take it either (Redis down, or
full) does it answer 503 with Retry-After, so the provider retries."""
from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, request

from integrations.whatsapp.base import ParsedWebhook, WebhookRejected
from models.base import connection_lost, discard_connection, ensure_connection
from routing.breaker import PASS, PROBE, REJECT
from routing.group_commit import group_commit
from routing.ingest import IngestCache, record_webhook
from routing.spool import unavailable

from .api import errors, reply, responds
from .errors import ApiError
from .schemas import WebhookAckSchema

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

_PATH_PROVIDERS = {"whatsapp": ("cloud_api", "sandbox"), "wasender": ("wasender",)}
WEBHOOK_ERRORS = {400: ("malformed_payload", "wrong_envelope"), 401: ("invalid_signature",),
                  404: ("provider_not_enabled",), 413: ("payload_too_large",),
                  503: ("database_unavailable",)}
# These views open the database connection themselves (app.py opens none before them):
# while the breaker is open they never touch it.
CONNECTS_ITSELF = frozenset({"webhooks.receive_cloud_api", "webhooks.receive_wasender"})
SPOOL_RETRY_AFTER = "5"


def _runtime():
    return current_app.extensions["baton"]


def _adapter_for(path_provider: str):
    rt = _runtime()
    if rt.settings.WHATSAPP_PROVIDER not in _PATH_PROVIDERS[path_provider]:
        raise ApiError(404, "provider_not_enabled",
                       f"This Baton runs WHATSAPP_PROVIDER={rt.settings.WHATSAPP_PROVIDER}; "
                       f"/webhooks/{path_provider} is not in use.")
    return rt.adapter


@bp.get("/whatsapp")
@responds(200, description="The hub.challenge, verbatim", content_type="text/plain")
@errors(codes={403: ("verification_failed",), 404: ("provider_not_enabled",)})
def verify_subscription():
    """Meta's subscription handshake."""
    adapter = _adapter_for("whatsapp")
    challenge = request.args.get("hub.challenge")
    if challenge is None or not adapter.check_handshake(request.args.get("hub.mode"),
                                                        request.args.get("hub.verify_token"), challenge):
        raise ApiError(403, "verification_failed", "hub.mode or hub.verify_token is wrong.")
    return Response(challenge, status=200, mimetype="text/plain")


@bp.post("/whatsapp")
@responds(200, WebhookAckSchema, "Recorded durably (in the database, or in the spool while it is down)")
@errors(503, codes=WEBHOOK_ERRORS)
def receive_cloud_api():
    """Cloud API (or sandbox) webhook."""
    return _receive("whatsapp")


@bp.post("/wasender")
@responds(200, WebhookAckSchema, "Recorded durably (in the database, or in the spool while it is down)")
@errors(503, codes=WEBHOOK_ERRORS)
def receive_wasender():
    """WASender webhook."""
    return _receive("wasender")


def _receive(path_provider: str):
    adapter = _adapter_for(path_provider)
    rt = _runtime()
    limit = rt.settings.MAX_WEBHOOK_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"Webhook bodies are limited to {limit} bytes.")
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"Webhook bodies are limited to {limit} bytes.")
    try:
        adapter.verify(request.headers, raw)
        parsed = adapter.parse(raw)
    except WebhookRejected as rejected:
        raise ApiError(rejected.status, rejected.code, rejected.message) from None
    breaker = rt.breaker
    verdict = breaker.attempt()
    if verdict == PROBE:
        verdict = _probe(rt)
    if verdict != PASS:
        return _spool(rt, adapter.name, raw, parsed, database_down=True)
    if rt.spool.pending():
        # Earlier webhooks wait in the spool: this one queues behind them (arrival order
        # is kept). Whether the customer is told depends on the database answering now.
        try:
            ensure_connection()
        except Exception as exc:
            _database_failed(rt, exc)
            return _spool(rt, adapter.name, raw, parsed, database_down=True, cause=exc)
        breaker.succeeded()
        if _append(rt, adapter.name, raw, cause=None) is not None:
            return _spooled(rt, parsed, database_down=False)
        # The spool cannot take it (Redis just went away) but the database can: record it now.
    cache = rt.caches.setdefault("ingest", IngestCache())
    grace = rt.settings.REQUEUE_AFTER
    try:
        # Committed with the webhooks that arrive meanwhile (routing.group_commit): one
        # commit for many, and this request returns only once its own rows are on disk.
        result = group_commit().run(lambda: record_webhook(adapter.name, parsed, cache, media_grace=grace))
    except Exception as exc:
        if not unavailable(exc):
            raise
        _database_failed(rt, exc)
        # Spooled either way; the customer is told only when the database is unreachable
        # (not for a lock timeout or a full pool, which pass within seconds).
        return _spool(rt, adapter.name, raw, parsed, database_down=connection_lost(exc), cause=exc)
    breaker.succeeded()
    # Durable from here on; the hand-off to the inbound lane happens in the
    # background (and, should it fail, through the cron sweep).
    rt.after_ingest(result)
    return reply(result.counts())


def _database_failed(rt, exc: Exception) -> None:
    """The database could not record: count it against the breaker when it is unreachable
    (not when it refused, e.g. a lock timeout), and drop this thread's connection."""
    if connection_lost(exc) and rt.breaker.failed():
        log.error("database unreachable (%s): circuit breaker open, webhooks go to the spool", exc)
    discard_connection()


def _probe(rt) -> str:
    """The breaker's half-open probe: one round trip to the database. When it answers,
    the breaker closes and the spool's replay starts."""
    try:
        ensure_connection()
    except Exception as exc:
        rt.breaker.failed()
        log.warning("database probe failed (%s): the breaker stays open", exc)
        discard_connection()
        return REJECT
    rt.breaker.succeeded()
    log.warning("database probe answered: circuit breaker closed, replaying the spool")
    try:
        rt.replay_spool_soon()
    except Exception:           # the cron tick replays it within a second anyway
        log.warning("could not queue the spool's replay; the cron tick will", exc_info=True)
    return PASS


def _spool(rt, provider: str, raw: bytes, parsed: ParsedWebhook, *, database_down: bool, cause=None):
    """Keep a verified webhook in the spool and answer 200; 503 when the spool cannot take it."""
    if _append(rt, provider, raw, cause) is None:
        raise ApiError(503, "database_unavailable", "The database is unavailable and the webhook could not be "
                       "spooled; retry shortly.", headers={"Retry-After": SPOOL_RETRY_AFTER})
    return _spooled(rt, parsed, database_down)


def _append(rt, provider: str, raw: bytes, cause) -> str | None:
    """The spool entry's id; None when Redis is unreachable or the spool is full."""
    try:
        entry_id = rt.spool.append(provider, raw)
    except Exception as exc:
        log.error("the spool (Redis) cannot take a webhook (%s); the database: %s", exc, cause or "not tried")
        return None
    if entry_id is None:
        log.error("the spool is full (SPOOL_MAX_ENTRIES=%d)", rt.settings.SPOOL_MAX_ENTRIES)
    return entry_id


def _spooled(rt, parsed: ParsedWebhook, database_down: bool):
    if database_down and rt.settings.MAINTENANCE_NOTICE:
        _notify_customers(rt, parsed)
    return reply({"messages": sum(m.type != "unsupported" for m in parsed.messages),
                  "statuses": len(parsed.statuses), "duplicates": 0,
                  "ignored": len(parsed.ignored) + sum(m.type == "unsupported" for m in parsed.messages),
                  "spooled": True})


def _notify_customers(rt, parsed: ParsedWebhook) -> None:
    """Schedule the maintenance notice for whoever wrote (best effort: the webhook is safe already)."""
    try:
        for phone_number_id, address in rt.notices.schedule(parsed.messages):
            rt.enqueue_notice(phone_number_id, address)
    except Exception:
        log.warning("could not schedule the maintenance notice; the cron tick retries a scheduled one",
                    exc_info=True)
