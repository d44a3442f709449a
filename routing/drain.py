"""Drain a conversation's inbox in payload-timestamp order, under its lock."""
from __future__ import annotations

import logging
from typing import Callable

from config import Settings

from .apply import route_message
from .decide import Policy
from .effects import Effects
from .lanes import Lanes
from .locks import ConversationLock

log = logging.getLogger(__name__)
BATCH = 50


def lock_for(lanes: Lanes, conversation_id: str, ttl: float) -> ConversationLock:
    return ConversationLock(lanes.redis, f"{lanes.prefix}:lock:{conversation_id}", ttl)


def drain_conversation(settings: Settings, policy: Policy, lanes: Lanes, conversation_id: str,
                       after_commit: Callable[[Effects], None]) -> int:
    """Route every message waiting in the inbox; returns how many were routed.

    When another worker holds the lock this returns 0 at once: the holder looks
    at the inbox again after releasing, so nothing waits forever."""
    routed = 0
    while True:
        lock = lock_for(lanes, conversation_id, settings.LOCK_TTL)
        if not lock.acquire():
            return routed
        try:
            while True:
                ids = lanes.peek_inbox(conversation_id, BATCH)
                if not ids:
                    break
                for message_id in ids:
                    # Renew (or find we lost) the lease before each message, not
                    # after: a worker that stalled past its lease stops here.
                    lock.extend()
                    effects = route_message(settings, policy, conversation_id, message_id)
                    # Effects are dispatched before the message leaves the inbox:
                    # a crash in between re-routes nothing (the row is marked
                    # routed) and loses nothing (the sweep re-dispatches rows).
                    after_commit(effects)
                    lanes.remove_from_inbox(conversation_id, message_id)
                    routed += 1
        finally:
            lock.release()
        # A message may have landed between our last peek and the release.
        if not lanes.inbox_size(conversation_id):
            return routed
