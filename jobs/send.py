"""send_pending(conversation_id): send a conversation's queued outbound
messages in order through the provider adapter."""
from __future__ import annotations

import time
from datetime import timedelta

from integrations.whatsapp.base import OutboundMessage, SendError
from models import Message, execute_write, utcnow
from models.prepared import PreparedSelect, update_statement
from routing.bot_turns import outbound_allowed
from routing.change import load_conversation
from routing.locks import ConversationLock

from .context import job_logger, runtime
from .retry import backoff_seconds

log = job_logger(__name__)
WINDOW_CLOSED = (131047, "Re-engagement message: more than 24 hours since the customer last wrote; send a template")
CANCELLED = (None, "cancelled: control of the conversation changed before the bot reply was sent")


def send_pending(conversation_id: str) -> int:
    rt = runtime()
    sent = 0
    while True:
        lock = ConversationLock(rt.redis, f"{rt.settings.REDIS_PREFIX}:outlock:{conversation_id}",
                                rt.settings.LOCK_TTL)
        if not lock.acquire():
            return sent
        try:
            blocked, count = _send_in_order(rt, conversation_id, lock)
            sent += count
        finally:
            lock.release()
        if blocked or not _next_queued(conversation_id):
            return sent


_NEXT_QUEUED = PreparedSelect(lambda conversation_id: (
    Message.select()
    .where((Message.conversation == conversation_id) & (Message.direction == "out")
           & (Message.status == "queued"))
    .order_by(Message.id)
    .limit(1)))


def _next_queued(conversation_id: str) -> Message | None:
    return _NEXT_QUEUED.first(conversation_id)


def _update_message(message_id: str, changes: dict, only_if_queued: bool = True) -> int:
    where = {"id": message_id, "status": "queued"} if only_if_queued else {"id": message_id}
    return execute_write(*update_statement(Message, changes, where))


def _fail(message: Message, code, title: str) -> None:
    _update_message(message.id, {"status": "failed", "error_code": code, "error_title": title[:400],
                                 "next_attempt_at": None})


def _send_in_order(rt, conversation_id: str, lock) -> tuple[bool, int]:
    """Returns (blocked, sent): blocked when the head message waits for a retry."""
    sent = 0
    renewed = time.monotonic()
    while True:
        message = _next_queued(conversation_id)
        if message is None:
            return False, sent
        if message.next_attempt_at and message.next_attempt_at > utcnow():
            delay = (message.next_attempt_at - utcnow()).total_seconds()
            rt.lanes.schedule_at("outbound", conversation_id, time.time() + max(delay, 0.05))
            return True, sent
        conv = load_conversation(conversation_id)
        if not outbound_allowed(message, conv):
            _fail(message, *CANCELLED)
            continue
        if not message.template and (conv.window_expires_at is None or conv.window_expires_at < utcnow()):
            _fail(message, *WINDOW_CLOSED)
            continue
        attempt = message.attempts + 1
        try:
            result = rt.adapter.send(OutboundMessage(
                to=conv.contact.address, phone_number_id=conv.channel.phone_number_id, text=message.text,
                template=message.template, media=message.media))
        except SendError as exc:
            if exc.retryable and attempt < rt.settings.SEND_MAX_ATTEMPTS:
                delay = backoff_seconds(attempt, exc.retry_after)
                _update_message(message.id, {"attempts": attempt,
                                             "next_attempt_at": utcnow() + timedelta(seconds=delay),
                                             "error_code": _int_or_none(exc.code),
                                             "error_title": exc.title[:400]})
                rt.lanes.schedule_at("outbound", conversation_id, time.time() + delay)
                log.info("send %s attempt %d refused (%s); retry in %.1f s", message.id, attempt, exc, delay)
                return True, sent
            _fail(message, _int_or_none(exc.code), exc.title)
            log.warning("send %s failed for good: %s", message.id, exc)
            continue
        _update_message(message.id, {"status": "sent", "provider_message_id": result.provider_message_id,
                                     "attempts": attempt, "next_attempt_at": None, "error_code": None,
                                     "error_title": None})
        sent += 1
        if time.monotonic() - renewed > rt.settings.LOCK_TTL / 3:
            lock.extend()
            renewed = time.monotonic()


def _int_or_none(code):
    try:
        return int(code)
    except (TypeError, ValueError):
        return None
