"""The one path by which a conversation changes.

Every change of a conversation (inbound routing, agent actions, assignment,
timer outcomes, bot replies, the escalate API) is a *plan*: a function that
receives a `Change` holding a freshly read conversation, refuses (raising a
`routing.errors.DomainError`) or describes what to write through the
`Change`'s methods, and returns its result. `Changes.run()` then

1. commits the plan in one short write transaction whose first statement is
   the compare-and-set on the conversation's `version`;
2. on a conflict (someone changed the conversation since it was read) undoes
   what the plan reserved outside the database and plans again from a fresh
   read, up to MAX_ATTEMPTS times, then raises `ContendedConversation`;
3. after the commit, dispatches the effects (frees reservations, schedules
   lanes, publishes live events, offers newly waiting conversations).

Plans only read; nothing is written until the commit, so a refusal changes
nothing and a rollback leaves no trace.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Callable, TypeVar

from config import Settings
from models import (BOT_CONTROLLED, Agent, CallbackRequest, Channel, Contact, Conversation, Event, Message, db, new_id,
                    utcnow, write_transaction)
from models.base import epoch_seconds
from models.prepared import PreparedSelect

from . import counters
from .decide import ConversationView
from .effects import Effects, queue_event, queue_outbound
from .errors import ContendedConversation, NotFound, VersionConflict
from .live import live_event
from .notifications import notification_fields
from .visibility import snapshot

MAX_ATTEMPTS = 8
log = logging.getLogger(__name__)
T = TypeVar("T")

_CONVERSATION = PreparedSelect(lambda conversation_id: (
    Conversation.select(Conversation, Channel, Contact)
    .join(Channel, on=(Conversation.channel == Channel.id))
    .switch(Conversation)
    .join(Contact, on=(Conversation.contact == Contact.id))
    .where(Conversation.id == conversation_id)))


def load_conversation(conversation_id: str) -> Conversation | None:
    """A conversation with its channel and contact, in one query."""
    return _CONVERSATION.first(conversation_id)


class Change:
    """What one plan writes about one conversation, and what follows it."""

    def __init__(self, settings: Settings, conv: Conversation):
        self.settings = settings
        self.conv = conv
        self.effects = Effects()
        self._undo: list[Callable[[], None]] = []

    @property
    def changed(self) -> bool:
        return bool(self.effects.writes)

    # -- the conversation row --------------------------------------------------------------

    def set(self, columns: dict) -> None:
        """Compare-and-set `columns` on the conversation: they apply only if
        nobody moved it since it was read. Mirrored on `conv` (and its
        version) at once, so later steps of the plan see the new values."""
        conv = self.conv
        columns = {**columns, "updated_at": utcnow()}
        self.effects.update(Conversation, columns, {"id": conv.id, "version": conv.version},
                            increment="version", must_change_one=True)
        before = snapshot(conv)
        for key, value in columns.items():
            setattr(conv, key, value)
        conv.version += 1
        self.effects.live.append(live_event("conversation.updated", conv.id, conv.to_dict(), before,
                                            snapshot(conv)))

    # -- what goes with it -----------------------------------------------------------------

    def audit(self, actor: str, from_state: str | None, to_state: str, reason: str,
              details: dict | None = None) -> None:
        self.effects.insert(Event(id=new_id("ev"), conversation=self.conv.id, actor=actor, from_state=from_state,
                                  to_state=to_state, reason=reason, details=details, created_at=utcnow()))

    def count(self, name: str, label: str | None = None) -> None:
        """Count an outcome (routing.counters) once this change commits."""
        self.effects.counts.append(counters.field(name, label))

    def notify(self, event_type: str, *, message: Message | None = None, reason: str | None = None,
               by: dict | None = None, agent: Agent | None = None, callback: CallbackRequest | None = None,
               waiting_since: str | None = None) -> None:
        """An event for the notification branch (N8N_NOTIFY_URL)."""
        fields = notification_fields(self.settings, self.conv, event_type, message=message, reason=reason,
                                     by=by, agent=agent, callback=callback, waiting_since=waiting_since)
        queue_event(self.settings.N8N_NOTIFY_URL, fields, event_type, self.effects, self.conv.id)

    def deliver(self, url: str, event_type: str, fields: dict) -> None:
        """An event for any n8n branch (the AI branch's `bot.turn`)."""
        queue_event(url, fields, event_type, self.effects, self.conv.id)

    def say(self, *, sender: str, text: str | None = None, template: dict | None = None,
            media: dict | None = None, turn_id: str | None = None, control_epoch: int | None = None,
            agent_id: str | None = None) -> Message:
        """A message to the customer, sent in order by the outbound lane
        (`media`: a stored upload, routing.uploads.attach; `text` is then its caption)."""
        return queue_outbound(self.conv, self.effects, sender=sender, text=text, template=template, media=media,
                              turn_id=turn_id, control_epoch=control_epoch, agent_id=agent_id)

    def mark_routed(self, message: Message, routed_to: str) -> None:
        """Record where an inbound message went (exactly once: a routed message is never routed again)."""
        self.effects.update(Message, {"routed_to": routed_to}, {"id": message.id, "routed_to": None},
                            must_change_one=True)
        message.routed_to = routed_to
        self.effects.live.append(live_event("message.created", self.conv.id, message.to_dict(),
                                            snapshot(self.conv)))

    def settle_held(self, routed_to: str | None, columns: dict) -> None:
        """End a typing hold (in `columns`). Its messages belong to whoever now
        answers (`agent`, `queued_for_agent`); with `routed_to` None nobody took
        them (the conversation is closed, released, transferred or timed out):
        they go back to routing, in the customer's order, under the state this
        change leaves (routing.decide: a closed conversation reopens to the bot).
        A held message is never left unanswered."""
        if self.conv.held_since is None:
            return
        if routed_to is None:
            self._route_held_messages_again()
        else:
            self.hand_held_messages_to(routed_to)
        columns.update(held_since=None, typing_agent_id=None, typing_until=None)

    def hand_held_messages_to(self, routed_to: str) -> None:
        """The messages held for a typing agent are now routed to `routed_to`."""
        self.effects.update(Message, {"routed_to": routed_to}, {"conversation": self.conv.id, "routed_to": "held"})

    def route_held_again(self) -> int:
        """The typing agent stopped (or the lock expired) without answering:
        the held messages go back to routing, in the customer's order, under
        whatever state the conversation has then. Returns how many."""
        count = self._route_held_messages_again()
        self.set({"typing_agent_id": None, "typing_until": None, "held_since": None})
        return count

    def _route_held_messages_again(self) -> int:
        conv = self.conv
        held = list(Message.select(Message.id, Message.sent_at)
                    .where((Message.conversation == conv.id) & (Message.routed_to == "held"))
                    .order_by(Message.seq))
        self.effects.update(Message, {"routed_to": None}, {"conversation": conv.id, "routed_to": "held"})
        self.effects.inbox.extend((conv.id, m.id, epoch_seconds(m.sent_at)) for m in held)
        return len(held)

    # -- outside the database -------------------------------------------------------------

    def free_seat(self, agent_id: str | None) -> None:
        """After the commit, give back the capacity `agent_id` reserved for this conversation."""
        self.effects.release_reservation(agent_id, self.conv.id)

    def offer(self) -> None:
        """After the commit, offer the (now waiting) conversation to the next agent."""
        self.effects.offer(self.conv.id)

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Undo something the plan did outside the database (a capacity
        reservation) if its change does not commit."""
        self._undo.append(undo)

    def rolled_back(self) -> None:
        for undo in reversed(self._undo):
            try:
                undo()
            except Exception:       # the sweep repairs reservations from the database
                log.warning("could not undo a reservation of %s", self.conv.id, exc_info=True)
        self._undo.clear()


def view_of(conv: Conversation, now: datetime | None = None) -> ConversationView:
    """What the pure decision functions see of a conversation."""
    now = now or utcnow()
    return ConversationView(state=conv.state, cooldown_remaining=conv.cooldown_remaining,
                            last_pending_notice_at=conv.last_pending_notice_at, group=conv.group,
                            typing_held=typing_held(conv, now), control_epoch=conv.control_epoch,
                            last_inbound_at=conv.last_inbound_at, held_since=conv.held_since,
                            assigned_agent_id=conv.assigned_agent_id, offered_agent_id=conv.offered_agent_id,
                            awaiting_agent_since=conv.awaiting_agent_since)


def typing_held(conv: Conversation, now: datetime) -> bool:
    return conv.state == BOT_CONTROLLED and conv.typing_until is not None and conv.typing_until > now


class Changes:
    """Runs plans under the compare-and-set and dispatches what they commit.

    `dispatch(effects)` runs after each commit (the runtime's, which needs
    Redis); without one (pure database use) nothing is dispatched."""

    def __init__(self, settings: Settings, dispatch: Callable[[Effects], None] | None = None):
        self.settings = settings
        self._dispatch = dispatch

    def run(self, conversation_id: str, plan: Callable[[Change], T]) -> T:
        """Plan against a fresh read and commit; again on a conflict."""
        for _ in range(MAX_ATTEMPTS):
            conv = load_conversation(conversation_id)
            if conv is None:
                raise NotFound("conversation")
            change = Change(self.settings, conv)
            try:
                result = plan(change)
                change.effects.commit()
            except VersionConflict:
                change.rolled_back()
                continue
            except BaseException:
                change.rolled_back()
                raise
            self.dispatch(change.effects)
            return result
        raise ContendedConversation(conversation_id, MAX_ATTEMPTS)

    def run_group(self, items: list[tuple[str, Callable[[Change], T]]]) -> list:
        """Run several plans, each for a different conversation, and commit
        them together (`_commit_together`): one write transaction
        for the group, a compare-and-set and a savepoint for each. A plan that
        conflicts is planned again alone (`run`). Returns, item by item, the
        plan's result or the exception it ended with (a refusal, NotFound, ...):
        one item failing never undoes another."""
        outcomes: list = [None] * len(items)
        staged: list[tuple[int, Change]] = []
        for index, (conversation_id, plan) in enumerate(items):
            conv = load_conversation(conversation_id)
            if conv is None:
                outcomes[index] = NotFound("conversation")
                continue
            change = Change(self.settings, conv)
            try:
                outcomes[index] = plan(change)
            except Exception as exc:
                change.rolled_back()
                outcomes[index] = exc
                continue
            staged.append((index, change))
        try:
            committed = _commit_together([change.effects for _, change in staged])
        except Exception:
            # The group's transaction failed as a whole (the database went away,
            # a statement broke): nothing of it was written. Each plan goes
            # again alone, so a failure lands on the item it belongs to.
            for _, change in staged:
                change.rolled_back()
            committed = [False] * len(staged)
        self.dispatch(Effects.together([change.effects for (_, change), done in zip(staged, committed) if done]))
        for (index, change), done in zip(staged, committed):
            if done:
                continue
            change.rolled_back()
            conversation_id, plan = items[index]
            try:
                outcomes[index] = self.run(conversation_id, plan)
            except Exception as exc:
                outcomes[index] = exc
        return outcomes

    def dispatch(self, effects: Effects) -> None:
        if self._dispatch is not None:
            self._dispatch(effects)


def _commit_together(group: list[Effects]) -> list[bool]:
    """Group commit: the statements of several changes (of different
    conversations) in ONE write transaction, so they share its commit (one
    fsync on SQLite instead of one each). Each change runs in a savepoint of its
    own: a compare-and-set that finds its conversation moved undoes that change
    alone (False in the answer), the others commit. Any other error rolls the
    whole transaction back and is raised."""
    committed = []
    with write_transaction():
        for effects in group:
            if not effects.writes:
                committed.append(True)
                continue
            try:
                with db.atomic():               # a savepoint inside the transaction
                    effects.execute()
            except VersionConflict:
                committed.append(False)
            else:
                committed.append(True)
    return committed
