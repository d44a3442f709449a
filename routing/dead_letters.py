"""Dead letters: an inbound message whose routing keeps raising is set aside.

Each failed attempt to route a message is counted on the message
(`message.attempts`, which inbound messages use for nothing else). After
ROUTE_MAX_ATTEMPTS the drain sets it aside: the message is marked routed to
`dead_letter` (so its conversation's inbox moves on to the next message, in
order), a `dead_letter` row keeps the last error, the conversation's audit
trail says so, and the notification branch hears `message.dead_lettered`.
An admin retries it (API or CLI): it goes back to routing as the
conversation's next message, with a fresh attempt budget.

Failures that heal by themselves (the database or Redis unreachable, the
lock's lease lost, a conversation that kept changing) are not the message's
fault and are never counted.
"""
from __future__ import annotations

import logging
import traceback

import peewee

from models import DeadLetter, Message, db, utcnow, write_transaction
from models.base import connection_lost, epoch_seconds
from models.dead_letter import ERROR_LIMIT
from models.prepared import insert_statement, update_statement

from .change import Change, Changes
from .errors import Conflict, ContendedConversation, NotFound
from .locks import LockLost
from .notifications import dead_letter_fields
from .redis_wait import unreachable

DEAD_LETTER = "dead_letter"          # message.routed_to of a message set aside
log = logging.getLogger(__name__)


def is_routing_failure(exc: BaseException) -> bool:
    """Is `exc` the message's routing failing (counted), as opposed to something
    around it that heals by itself (not counted)?"""
    if unreachable(exc) or connection_lost(exc) or isinstance(exc, (LockLost, ContendedConversation)):
        return False
    if isinstance(exc, peewee.OperationalError) and "locked" in str(exc).lower():
        return False
    return isinstance(exc, Exception)


def count_failure(message_id: str) -> int:
    """One more failed attempt at routing `message_id`; returns the attempts so
    far (0 when it is no longer waiting to be routed)."""
    with write_transaction():
        changed = (Message.update(attempts=Message.attempts + 1)
                   .where((Message.id == message_id) & Message.routed_to.is_null())
                   .execute())
        if not changed:
            return 0
        return Message.select(Message.attempts).where(Message.id == message_id).scalar() or 0


def describe(exc: BaseException) -> str:
    """The error as kept with the dead letter: its type and text, then the end of its traceback."""
    head = f"{type(exc).__name__}: {exc}"
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = f"{head}\n\n{trace}" if trace.strip() else head
    if len(text) > ERROR_LIMIT:
        text = head[:ERROR_LIMIT // 2] + "\n…\n" + trace[-(ERROR_LIMIT // 2 - 3):]
    return text[:ERROR_LIMIT]


def set_aside(changes: Changes, conversation_id: str, message_id: str, attempts: int,
              error: str) -> DeadLetter | None:
    """Set the message aside with `error`; None when it is no longer waiting to
    be routed. Goes through the conversation's change path (audit, live event,
    `message.dead_lettered`); should that path itself fail (the conversation
    cannot even be read), the message is set aside alone, so its customer's
    later messages are never blocked by it."""
    def plan(change: Change) -> DeadLetter | None:
        message = Message.get_or_none(Message.id == message_id)
        if message is None or message.routed_to is not None or message.conversation_id != change.conv.id:
            return None
        letter = DeadLetter(message=message.id, conversation=change.conv.id, attempts=attempts, error=error,
                            created_at=utcnow())
        change.mark_routed(message, DEAD_LETTER)
        change.effects.insert(letter)
        state = change.conv.state
        change.audit("system", state, state, "dead_lettered",
                     {"message_id": message.id, "dead_letter_id": letter.id, "attempts": attempts})
        change.deliver(change.settings.N8N_NOTIFY_URL, "message.dead_lettered",
                       dead_letter_fields(change.settings, change.conv, message, letter))
        return letter
    try:
        return changes.run(conversation_id, plan)
    except Exception as exc:
        if not is_routing_failure(exc):
            raise
        log.warning("setting %s aside through its conversation failed (%s); setting it aside alone",
                    message_id, exc)
        return _set_aside_alone(conversation_id, message_id, attempts, error)


def _set_aside_alone(conversation_id: str, message_id: str, attempts: int, error: str) -> DeadLetter | None:
    letter = DeadLetter(id=DeadLetter.id.default(), message=message_id, conversation=conversation_id,
                        attempts=attempts, error=error, created_at=utcnow())
    with write_transaction():
        sql, params = update_statement(Message, {"routed_to": DEAD_LETTER}, {"id": message_id, "routed_to": None})
        if db.execute_sql(sql, params).rowcount != 1:
            return None
        db.execute_sql(*insert_statement(letter))
    return letter


def retry(changes: Changes, dead_letter_id: str) -> DeadLetter:
    """Put a dead letter's message back to routing (as its conversation's next
    message, with a fresh attempt budget). 404 unknown, 409 already retried."""
    letter = DeadLetter.get_or_none(DeadLetter.id == dead_letter_id)
    if letter is None:
        raise NotFound("dead letter")
    # The message's own conversation (a contact merge may have moved it since).
    conversation_id = Message.select(Message.conversation).where(Message.id == letter.message_id).scalar()

    def plan(change: Change) -> DeadLetter:
        current = DeadLetter.get_by_id(dead_letter_id)
        if current.retried_at is not None:
            raise Conflict("This dead letter was retried already.", {"retried_at": current.to_dict()["retried_at"]},
                           code="already_retried")
        message = Message.get_by_id(current.message_id)
        now = utcnow()
        change.effects.update(DeadLetter, {"retried_at": now}, {"id": current.id, "retried_at": None},
                              must_change_one=True)
        change.effects.update(Message, {"routed_to": None, "attempts": 0},
                              {"id": message.id, "routed_to": DEAD_LETTER}, must_change_one=True)
        change.effects.inbox.append((change.conv.id, message.id, epoch_seconds(message.sent_at)))
        state = change.conv.state
        change.audit("system", state, state, "dead_letter_retried",
                     {"message_id": message.id, "dead_letter_id": current.id})
        current.retried_at = now
        return current
    return changes.run(conversation_id, plan)
