"""POST /webhooks/<provider>: verify → parse → record in one transaction →
hand the new messages to the inbound lane → answer. No routing happens here."""
from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, request

from integrations.whatsapp.base import WebhookRejected
from routing.ingest import IngestCache, announce_updates, record_webhook

from .api import errors, reply, responds
from .errors import ApiError
from .schemas import WebhookAckSchema

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

_PATH_PROVIDERS = {"whatsapp": ("cloud_api", "sandbox"), "wasender": ("wasender",)}
WEBHOOK_ERRORS = {400: ("malformed_payload", "wrong_envelope"), 401: ("invalid_signature",),
                  404: ("provider_not_enabled",), 413: ("payload_too_large",)}


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
@responds(200, WebhookAckSchema, "Recorded durably")
@errors(503, codes=WEBHOOK_ERRORS)
def receive_cloud_api():
    """Cloud API (or sandbox) webhook."""
    return _receive("whatsapp")


@bp.post("/wasender")
@responds(200, WebhookAckSchema, "Recorded durably")
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
    cache = rt.caches.setdefault("ingest", IngestCache())
    result = record_webhook(adapter.name, parsed, cache, media_grace=rt.settings.REQUEUE_AFTER)
    announce_updates(rt.redis, rt.settings.REDIS_PREFIX, result.updated)
    for conversation_id in result.reconciled:
        try:
            rt.schedule("outbound", conversation_id)      # its next message no longer waits
        except Exception:       # recorded: the sweep schedules the lane (a 503 now would undo nothing)
            log.warning("could not schedule the outbound lane of %s; the sweep will", conversation_id,
                        exc_info=True)
    # Durable from here on; the hand-off to the inbound lane happens in the
    # background (and, should it fail, through the cron sweep).
    rt.feeder.submit(result.to_route)
    rt.fetch_media(result.media)           # routing never waits for media
    return reply(result.counts())
