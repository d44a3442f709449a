"""Forget what is older than its kind's RETENTION_DAYS_* setting, in small
batches (one short write transaction each, so the webhook path never waits
long behind it), and strip secrets from provider payloads Baton keeps raw.

Nothing in flight is ever deleted: an inbound message not yet routed, an
outbound one not yet sent (or whose fate is unknown), a delivery still pending.
Stored media files have their own rule (MEDIA_RETENTION_DAYS, jobs/media.py)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from peewee import Expression

from models import BotTurn, Delivery, Event, Message, OutboxEntry, UnsupportedUpdate, utcnow
from models.base import write_transaction
from models.delivery import PENDING
from models.message import UNSENT

log = logging.getLogger(__name__)

BATCH = 500                      # rows per delete transaction
BUDGET_SECONDS = 60.0            # one run stops here; the next run goes on

REDACTED = "[redacted]"
# Keys whose values are credentials in the providers' payloads (WASender puts its
# session id, which can act as an API key, in webhook bodies), compared casefolded
# with "-" and "_" removed.
SECRET_KEYS = frozenset({"sessionid", "apikey", "accesstoken", "token", "secret", "password", "authorization",
                         "personalaccesstoken", "webhooksecret", "mediakey"})


@dataclass(frozen=True)
class Rule:
    kind: str
    setting: str
    model: type
    timestamp: object
    finished: Callable[[], Expression] | None = None     # rows that may go (None: all)


RULES = (
    Rule("messages", "RETENTION_DAYS_MESSAGES", Message, Message.received_at,
         lambda: Message.routed_to.is_null(False) & (Message.status.is_null() | Message.status.not_in(UNSENT))),
    Rule("events", "RETENTION_DAYS_EVENTS", Event, Event.created_at),
    Rule("deliveries", "RETENTION_DAYS_DELIVERIES", Delivery, Delivery.created_at, lambda: Delivery.status != PENDING),
    Rule("bot_turns", "RETENTION_DAYS_BOT_TURNS", BotTurn, BotTurn.created_at),
    Rule("outbox", "RETENTION_DAYS_OUTBOX", OutboxEntry, OutboxEntry.created_at),
    Rule("unsupported_updates", "RETENTION_DAYS_UNSUPPORTED", UnsupportedUpdate, UnsupportedUpdate.created_at),
)


def forget_old_records(settings, now=None, budget: float = BUDGET_SECONDS, batch: int = BATCH) -> dict[str, int]:
    """Delete, kind by kind, what its setting no longer keeps. Returns the rows deleted per kind."""
    now = now or utcnow()
    stop_at = time.monotonic() + budget
    deleted: dict[str, int] = {}
    for rule in RULES:
        days = getattr(settings, rule.setting)
        if days <= 0:
            continue
        cutoff = now - timedelta(days=days)
        condition = rule.timestamp < cutoff
        if rule.finished is not None:
            condition &= rule.finished()
        count = 0
        while time.monotonic() < stop_at:
            key = rule.model._meta.primary_key
            with write_transaction():
                ids = [row[0] for row in rule.model.select(key).where(condition).limit(batch).tuples()]
                if ids:
                    rule.model.delete().where(key.in_(ids)).execute()
            count += len(ids)
            if len(ids) < batch:
                break
        if count:
            log.info("retention: deleted %d %s older than %d days", count, rule.kind, days)
        deleted[rule.kind] = count
    return deleted


def strip_secrets(payload):
    """A copy of a provider payload with every credential-like value replaced."""
    if isinstance(payload, dict):
        return {key: (REDACTED if _is_secret(key) and value not in (None, "") else strip_secrets(value))
                for key, value in payload.items()}
    if isinstance(payload, list):
        return [strip_secrets(item) for item in payload]
    return payload


def _is_secret(key) -> bool:
    return isinstance(key, str) and key.casefold().replace("_", "").replace("-", "") in SECRET_KEYS

