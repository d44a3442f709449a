"""Drain conversations' inboxes in payload-timestamp order, each under its lock,
several conversations at a time (group commit).

A pump hands over up to GROUP ready conversations. Each is opened (its lock
taken, its waiting messages read in the customer's order); then they are routed
in rounds: every conversation's next message, all of them planned and then
committed together in one write transaction (`Changes.run_group`, one
compare-and-set and savepoint each). One fsync on SQLite routes a round, not a
message, and a customer's messages still go strictly one after the other."""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from config import Settings
from models import Message

from .change import Changes
from .dead_letters import count_failure, describe, is_routing_failure, set_aside
from .decide import Policy
from .errors import NotFound
from .inbound import routing_plan
from .lanes import Lanes
from .locks import ConversationLock, LockLost
from .redis_wait import patiently

log = logging.getLogger(__name__)
BATCH = 50          # messages of one conversation read per opening of its inbox
GROUP = 32          # conversations a pump routes together


@dataclass
class _Inbox:
    conversation_id: str
    lease: ConversationLock
    ids: list[str]
    routed: list[str] = field(default_factory=list)


def drain_conversation(settings: Settings, changes: Changes, policy: Policy, lanes: Lanes,
                       conversation_id: str) -> int:
    """Route every message waiting in one conversation's inbox; returns how
    many were routed, or raises what stopped it."""
    routed, failures = drain_conversations(settings, changes, policy, lanes, [conversation_id])
    if failures:
        raise failures[conversation_id]
    return routed


def drain_conversations(settings: Settings, changes: Changes, policy: Policy, lanes: Lanes,
                        conversation_ids: list[str]) -> tuple[int, dict[str, Exception]]:
    """Route every message waiting in these conversations' inboxes; returns how
    many were routed and, by conversation, what stopped one (its later messages
    wait: the caller retries it). The others go on regardless.

    A conversation whose lock another worker holds is skipped at once: the
    holder looks at the inbox again after releasing, so nothing waits forever."""
    routed_total = 0
    failures: dict[str, Exception] = {}
    pending = list(dict.fromkeys(conversation_ids))
    while pending:
        inboxes = _open(settings, lanes, pending)
        try:
            _route_in_rounds(settings, changes, policy, inboxes, failures)
        finally:
            # Redis away (a restart) must not leave the locks to block these
            # conversations for LOCK_TTL after it is back: wait for it to let go.
            waiting = patiently(lambda: lanes.close_inboxes(
                [(inbox.conversation_id, inbox.lease.token, inbox.routed) for inbox in inboxes]), settings.LOCK_TTL)
            routed_total += sum(len(inbox.routed) for inbox in inboxes)
            # Messages may have landed meanwhile: go on while there are some.
            pending = [inbox.conversation_id for inbox, left in zip(inboxes, waiting)
                       if left and inbox.conversation_id not in failures]
    return routed_total, failures


def _open(settings: Settings, lanes: Lanes, conversation_ids: list[str]) -> list[_Inbox]:
    """Take each conversation's lock and read its waiting messages (one round trip
    for all); a conversation another worker holds is left out."""
    tokens = {conversation_id: uuid.uuid4().hex for conversation_id in conversation_ids}
    opened = lanes.open_inboxes(tokens, int(settings.LOCK_TTL * 1000), BATCH)
    return [_Inbox(conversation_id, ConversationLock(lanes.redis, lanes.lock_key(conversation_id),
                                                     settings.LOCK_TTL, token=tokens[conversation_id]),
                   in_writing_order(conversation_id, ids))
            for conversation_id, ids in opened.items() if ids is not None]


def _route_in_rounds(settings: Settings, changes: Changes, policy: Policy, inboxes: list[_Inbox],
                     failures: dict[str, Exception]) -> None:
    renewed = time.monotonic()
    position = 0
    while True:
        live = [inbox for inbox in inboxes
                if inbox.conversation_id not in failures and position < len(inbox.ids)]
        if not live:
            return
        # Renew the leases well before they run out; a worker that stalled past
        # one finds out here (LockLost) and stops routing that conversation.
        if time.monotonic() - renewed > settings.LOCK_TTL / 3:
            for inbox in live:
                try:
                    inbox.lease.extend()
                except LockLost as exc:
                    failures[inbox.conversation_id] = exc
            live = [inbox for inbox in live if inbox.conversation_id not in failures]
            renewed = time.monotonic()
        # Committed and dispatched before a message leaves the inbox: a crash in
        # between re-routes nothing (the row is marked routed) and loses nothing
        # (the sweep re-dispatches rows).
        outcomes = changes.run_group([(inbox.conversation_id, routing_plan(policy, inbox.ids[position]))
                                      for inbox in live])
        for inbox, outcome in zip(live, outcomes):
            message_id = inbox.ids[position]
            # NotFound: merged into another conversation (routing.identity), routed there.
            if isinstance(outcome, Exception) and not isinstance(outcome, NotFound):
                try:
                    _after_failure(settings, changes, inbox.conversation_id, message_id, outcome)
                except Exception as exc:
                    failures[inbox.conversation_id] = exc
                    continue
            inbox.routed.append(message_id)
        position += 1


def _after_failure(settings: Settings, changes: Changes, conversation_id: str, message_id: str,
                   exc: Exception) -> None:
    """A message failed to route: raise `exc` again (the conversation is retried
    later), unless it has failed ROUTE_MAX_ATTEMPTS times: then it is set aside
    as a dead letter (routing.dead_letters) and the customer's later messages go
    on, in order."""
    if not is_routing_failure(exc):
        raise exc
    attempts = count_failure(message_id)
    if attempts < settings.ROUTE_MAX_ATTEMPTS:
        raise exc
    log.error("message %s of %s failed to route %d times; set aside as a dead letter",
              message_id, conversation_id, attempts, exc_info=exc)
    set_aside(changes, conversation_id, message_id, attempts, describe(exc))


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
    # closing the inbox removes them; their routing plan skips them.
    return ordered + [message_id for message_id in inbox_ids if message_id not in known]
