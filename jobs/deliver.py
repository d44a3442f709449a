"""deliver_event(delivery_id): one attempt to hand an event to n8n, with retries.

A `bot.turn` attempt also tells the circuit breaker on the AI branch, and one
that failed for good fails its turn (routing.bot_delivery)."""
from __future__ import annotations

import time
from datetime import timedelta

import requests

from integrations.n8n import DeliveryFailed, post_event
from models import Delivery, execute_write, utcnow
from models.prepared import update_statement
from models.delivery import DELIVERED, FAILED, PENDING
from routing.bot_delivery import delivery_attempted, delivery_failed_for_good

from .context import job_logger, runtime
from routing.backoff import backoff_seconds

log = job_logger(__name__)
_session = requests.Session()


def deliver_event(delivery_id: str) -> str:
    rt = runtime()
    delivery = Delivery.get_or_none(Delivery.id == delivery_id)
    if delivery is None or delivery.status != PENDING:
        return "skipped"
    if delivery.next_attempt_at and delivery.next_attempt_at > utcnow():
        wait = (delivery.next_attempt_at - utcnow()).total_seconds()
        rt.lanes.schedule_at("events", delivery.id, time.time() + wait)
        return "not_due"
    attempt = delivery.attempts + 1
    bot_turn = delivery.event_type == "bot.turn"
    try:
        post_event(_session, delivery.url, delivery.body.encode(), event_type=delivery.event_type,
                   delivery_id=delivery.id, secret=rt.settings.BATON_EVENT_SECRET,
                   timeout=rt.settings.EVENT_TIMEOUT)
    except DeliveryFailed as exc:
        error = str(exc)[:500]
        if attempt >= rt.settings.EVENT_MAX_ATTEMPTS:
            _update(delivery.id, status=FAILED, attempts=attempt, last_error=error, next_attempt_at=None)
            log.warning("delivery %s (%s) failed for good after %d attempts: %s",
                        delivery.id, delivery.event_type, attempt, exc)
            if bot_turn:
                delivery.attempts, delivery.last_error = attempt, error
                delivery_attempted(rt.changes, rt.policy.breaker, delivery, False, error)
                delivery_failed_for_good(rt.changes, delivery)
            return "failed"
        delay = backoff_seconds(attempt)
        _update(delivery.id, attempts=attempt, last_error=error,
                next_attempt_at=utcnow() + timedelta(seconds=delay))
        rt.lanes.schedule_at("events", delivery.id, time.time() + delay)
        log.info("delivery %s attempt %d failed (%s); retry in %.1f s", delivery.id, attempt, exc, delay)
        if bot_turn:
            delivery_attempted(rt.changes, rt.policy.breaker, delivery, False, error)
        return "retrying"
    _update(delivery.id, status=DELIVERED, attempts=attempt, delivered_at=utcnow(), next_attempt_at=None)
    if bot_turn:
        delivery_attempted(rt.changes, rt.policy.breaker, delivery, True)
    return "delivered"


def _update(delivery_id: str, **changes) -> None:
    execute_write(*update_statement(Delivery, changes, {"id": delivery_id}))


def replay_delivery(delivery_id: str, rt) -> Delivery:
    """Put a delivery back in line with a fresh retry budget (not a job: the
    admin API and CLI call it)."""
    _update(delivery_id, status=PENDING, attempts=0, next_attempt_at=None)
    try:
        rt.schedule("events", delivery_id)
    except Exception:           # committed: the sweep schedules pending deliveries
        log.warning("could not schedule delivery %s; the sweep will", delivery_id, exc_info=True)
    return Delivery.get_by_id(delivery_id)
