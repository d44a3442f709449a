"""Drain a conversation's inbox in payload-timestamp order, under its lock."""
from __future__ import annotations

import logging
import time
import uuid
from config import Settings
from models import Message

from .change import Changes
from .dead_letters import count_failure, describe, is_routing_failure, set_aside
from .decide import Policy
from .inbound import route_message
from .lanes import Lanes
from .locks import ConversationLock
from .redis_wait import patiently

log = logging.getLogger(__name__)
BATCH = 50


def drain_conversation(settings: Settings, changes: Changes, policy: Policy, lanes: Lanes,
                       conversation_id: str) -> int:
    """Route every message waiting in the inbox; returns how many were routed.

    When another worker holds the lock this returns at once: the holder looks
    at the inbox again after releasing, so nothing waits forever."""
    routed_total = 0
    ttl_ms = int(settings.LOCK_TTL * 1000)
    while True:
        token = uuid.uuid4().hex
        ids = lanes.open_inbox(conversation_id, token, ttl_ms, BATCH)
        if ids is None:
            return routed_total
        ids = in_writing_order(conversation_id, ids)
        lease = ConversationLock(lanes.redis, lanes.lock_key(conversation_id), settings.LOCK_TTL, token=token)
        renewed = time.monotonic()
        routed: list[str] = []
        try:
            for message_id in ids:
                # Renew the lease well before it runs out; a worker that
                # stalled past it finds out here (LockLost) and stops routing.
                if time.monotonic() - renewed > settings.LOCK_TTL / 3:
                    lease.extend()
                    renewed = time.monotonic()
                # Committed and dispatched before the message leaves the inbox:
                # a crash in between re-routes nothing (the row is marked
                # routed) and loses nothing (the sweep re-dispatches rows).
                try:
                    route_message(changes, policy, conversation_id, message_id)
                except Exception as exc:
                    if not is_routing_failure(exc):
                        raise
                    # Counted; past ROUTE_MAX_ATTEMPTS it is set aside (routing.dead_letters)
                    # and the customer's later messages go on, in order.
                    attempts = count_failure(message_id)
                    if attempts < settings.ROUTE_MAX_ATTEMPTS:
                        raise
                    log.error("message %s of %s failed to route %d times; set aside as a dead letter",
                              message_id, conversation_id, attempts, exc_info=exc)
                    set_aside(changes, conversation_id, message_id, attempts, describe(exc))
                routed.append(message_id)
        finally:
            # Redis away (a restart) must not leave the lock to block this
            # conversation for LOCK_TTL after it is back: wait for it to let go.
            waiting = patiently(lambda: lanes.close_inbox(conversation_id, token, routed), settings.LOCK_TTL)
        routed_total += len(routed)
        # Messages may have landed meanwhile: go on while there are some.
        if not waiting:
            return routed_total


def in_writing_order(conversation_id: str, inbox_ids: list[str]) -> list[str]:
    """The inbox's messages together with the conversation's recorded messages that
    never reached the inbox (the hand-off to Redis was lost: Redis was down when the
    webhook recorded them, or the web process died), in the customer's order.

    Without this a message written after such a gap would be routed at once and
    the gap only later, by the sweep: out of order. One query per batch, on the
    (routed_to, received_at) index: unrouted rows are the ones in flight."""
    waiting = (Message.select(Message.id)
               .where(Message.routed_to.is_null() & (Message.conversation == conversation_id))
               .order_by(Message.sent_at, Message.seq)
               .limit(BATCH * 4).tuples())
    ordered = [message_id for message_id, in waiting]
    known = set(ordered)
    # Inbox entries already routed (or moved by a merge) stay listed, so that
    # closing the inbox removes them; route_message skips them.
    return ordered + [message_id for message_id in inbox_ids if message_id not in known]
