"""What agents do to a conversation: claim, reply, type, release, transfer, close.

Each action reads the conversation, checks that the caller may do it, plans
the change and commits it under the conversation's compare-and-set (retried
from a fresh read on a conflict). A refused action raises `Refused` before
anything is written. Capacity is reserved in Redis before a commit that
gives an agent a conversation and freed after one that takes it away.
"""
from __future__ import annotations

from calendar import timegm
from dataclasses import dataclass, field
from datetime import timedelta

from config import Settings
from models import (AGENT_CONTROLLED, BOT_CONTROLLED, CLOSED, PENDING_AGENT, Agent, Conversation, Message,
                    isoformat, utcnow)

from .apply import (MAX_CAS_ATTEMPTS, NotFound, _audit, _cas, _cleared_handoff, _notify, load_conversation,
                    settle_held)
from .assignment import Reservations, plan_offer
from .effects import Effects, VersionConflict, queue_outbound
from .live import live_event
from .visibility import snapshot


class Refused(Exception):
    """The caller may not do this now; nothing was changed.
    `kind`: forbidden (403), conflict (409) or unprocessable (422)."""

    def __init__(self, kind: str, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.kind, self.code, self.message, self.details = kind, code, message, details or {}


@dataclass(frozen=True)
class Actor:
    agent: Agent | None
    role: str                 # agent | supervisor | admin

    @property
    def supervises(self) -> bool:
        return self.role in ("supervisor", "admin")

    @property
    def label(self) -> str:
        return f"agent:{self.agent.id}" if self.agent else f"{self.role}"

    def require_agent(self) -> Agent:
        if self.agent is None:
            raise Refused("forbidden", "not_an_agent", "This token belongs to no agent; create one with "
                          "`flask baton agent add` or POST /api/v1/agents.")
        return self.agent


@dataclass
class ActionResult:
    conversation: Conversation
    effects: Effects = field(default_factory=Effects)
    changed: bool = True
    message: Message | None = None


def _run(step) -> ActionResult:
    """Plan (reads only) and commit; from a fresh read again on a conflict.
    `step()` returns (result, undo) where undo frees Redis reservations made
    for a commit that did not happen."""
    for attempt in range(MAX_CAS_ATTEMPTS):
        result, undo = step()
        try:
            result.effects.commit()
            return result
        except VersionConflict:
            undo()
            if attempt == MAX_CAS_ATTEMPTS - 1:
                raise
        except Exception:
            undo()
            raise


def _nothing() -> None:
    return None


def _load(conversation_id: str) -> Conversation:
    conv = load_conversation(conversation_id)
    if conv is None:
        raise NotFound("conversation")
    return conv


def _owner(conv: Conversation) -> str | None:
    """The agent whose capacity this conversation uses."""
    if conv.state == PENDING_AGENT:
        return conv.offered_agent_id
    if conv.state == AGENT_CONTROLLED:
        return conv.assigned_agent_id
    return None


def _wrong_state(conv: Conversation, action: str) -> Refused:
    return Refused("conflict", "wrong_state", f"A conversation in state {conv.state} cannot be {action}.",
                   {"state": conv.state})


def _require_owner_or_supervisor(conv: Conversation, actor: Actor, action: str) -> None:
    if actor.supervises:
        return
    if conv.state == AGENT_CONTROLLED and actor.agent and conv.assigned_agent_id == actor.agent.id:
        return
    raise Refused("forbidden", "not_assigned", f"Only the assigned agent or a supervisor may {action} "
                  "this conversation.", {"assigned_agent_id": conv.assigned_agent_id})


# -- claim (and claim by replying) ---------------------------------------------------------

def _check_claimable(conv: Conversation, actor: Actor) -> None:
    agent = actor.require_agent()
    if conv.state == AGENT_CONTROLLED and conv.assigned_agent_id not in (None, agent.id):
        raise Refused("conflict", "already_assigned", "Another agent already holds this conversation.",
                      {"assigned_agent_id": conv.assigned_agent_id})
    if conv.state == CLOSED:
        raise _wrong_state(conv, "claimed")
    if conv.state == BOT_CONTROLLED and not (actor.supervises or conv.typing_agent_id == agent.id):
        raise Refused("forbidden", "forbidden", "Only supervisors take conversations over from the bot.")
    if (conv.state == PENDING_AGENT and not actor.supervises and conv.offered_agent_id != agent.id
            and not agent.in_group(conv.group)):
        raise Refused("forbidden", "forbidden", "This conversation waits for another group.",
                      {"group": conv.group})


def _plan_claim(settings: Settings, reservations: Reservations, conv: Conversation, actor: Actor,
                effects: Effects, changes: dict) -> tuple[bool, callable]:
    """Add the claim to `changes` (committed by the caller's compare-and-set);
    returns (whether control changed, how to undo the reservation)."""
    agent = actor.agent
    if conv.state == AGENT_CONTROLLED and conv.assigned_agent_id == agent.id:
        return False, _nothing
    already_reserved = _owner(conv) == agent.id
    if not reservations.reserve_for(agent, conv.id, force=actor.supervises):
        raise Refused("conflict", "at_capacity", f"You already hold {agent.max_concurrent} conversations "
                      "(your max_concurrent).", {"max_concurrent": agent.max_concurrent})
    undo = _nothing if already_reserved else (lambda: reservations.release(agent.id, conv.id))
    now = utcnow()
    before = conv.state
    effects.release_reservation(_owner(conv) if _owner(conv) != agent.id else None, conv.id)
    changes.update(state=AGENT_CONTROLLED, control_epoch=conv.control_epoch + 1, assigned_agent_id=agent.id,
                   offered_agent_id=None, offer_expires_at=None, offers_lapsed=[], pending_since=None,
                   last_agent_id=agent.id, awaiting_agent_since=now, last_activity_at=now)
    if before in (BOT_CONTROLLED, CLOSED) or conv.state == AGENT_CONTROLLED:
        changes.update(escalation_reason="agent_takeover", escalation_requested_at=now, escalation_urgency=None,
                       group=conv.group or settings.DEFAULT_GROUP)
    settle_held(conv, effects, "agent", changes)
    return True, undo


def _after_claim(settings: Settings, conv: Conversation, actor: Actor, before: str, effects: Effects) -> None:
    _audit(conv, effects, actor.label, before, AGENT_CONTROLLED, "claimed", {"agent_id": actor.agent.id})
    _notify(settings, conv, "handoff.accepted", effects, reason=conv.escalation_reason, agent=actor.agent)


def claim(settings: Settings, reservations: Reservations, conversation_id: str, actor: Actor) -> ActionResult:
    def step():
        conv = _load(conversation_id)
        _check_claimable(conv, actor)
        effects, changes = Effects(), {}
        before = conv.state
        changed, undo = _plan_claim(settings, reservations, conv, actor, effects, changes)
        if not changed:
            return ActionResult(conv, effects, changed=False), undo
        _cas(conv, changes, effects)
        _after_claim(settings, conv, actor, before, effects)
        return ActionResult(conv, effects), undo
    return _run(step)


# -- an agent's message ----------------------------------------------------------------------

def send(settings: Settings, reservations: Reservations, conversation_id: str, actor: Actor, *,
         text: str | None = None, template: dict | None = None) -> ActionResult:
    """Queue an agent's message; replying to a conversation you may claim claims it."""
    def step():
        conv = _load(conversation_id)
        agent = actor.require_agent()
        if conv.state == AGENT_CONTROLLED and conv.assigned_agent_id not in (None, agent.id):
            if actor.supervises:
                raise Refused("conflict", "already_assigned", "Another agent holds this conversation; "
                              "transfer it to yourself first.", {"assigned_agent_id": conv.assigned_agent_id})
            raise Refused("forbidden", "not_assigned", "This conversation is assigned to another agent.")
        _check_claimable(conv, actor)
        if template is None and (conv.window_expires_at is None or conv.window_expires_at < utcnow()):
            raise Refused("unprocessable", "outside_customer_service_window",
                          "The customer last wrote more than 24 hours ago: only a template may be sent.",
                          {"window_expires_at": conv.to_dict()["window_expires_at"]})
        effects, changes = Effects(), {}
        before = conv.state
        claimed, undo = _plan_claim(settings, reservations, conv, actor, effects, changes)
        now = utcnow()
        changes.update(awaiting_agent_since=None, last_activity_at=now)
        _cas(conv, changes, effects)
        if claimed:
            _after_claim(settings, conv, actor, before, effects)
        message = queue_outbound(conv, effects, sender="agent", agent_id=agent.id, text=text, template=template)
        return ActionResult(conv, effects, message=message), undo
    return _run(step)


# -- typing ---------------------------------------------------------------------------------

def typing(settings: Settings, conversation_id: str, actor: Actor, is_typing: bool) -> ActionResult:
    """Tell watchers an agent is typing. On a bot conversation it also holds
    the customer's next messages for that agent until AGENT_TYPING_TTL passes."""
    def step():
        conv = _load(conversation_id)
        agent = actor.require_agent()
        if conv.state == CLOSED:
            raise _wrong_state(conv, "typed into")
        if conv.state == AGENT_CONTROLLED and conv.assigned_agent_id not in (None, agent.id) \
                and not actor.supervises:
            raise Refused("forbidden", "not_assigned", "This conversation is assigned to another agent.")
        if conv.state == BOT_CONTROLLED and not actor.supervises:
            raise Refused("forbidden", "forbidden", "Only supervisors take conversations over from the bot.")
        effects = Effects()
        now = utcnow()
        expires = now + timedelta(seconds=settings.AGENT_TYPING_TTL)
        if conv.state == BOT_CONTROLLED:
            if is_typing:
                _cas(conv, {"typing_agent_id": agent.id, "typing_until": expires}, effects)
            elif conv.typing_agent_id == agent.id:
                plan_end_of_hold(conv, effects)
        effects.live.append(live_event("typing", conv.id, {
            "agent_id": agent.id, "typing": is_typing, "expires_at": isoformat(expires) if is_typing else None},
            snapshot(conv)))
        return ActionResult(conv, effects, changed=bool(effects.writes)), _nothing
    return _run(step)


def plan_end_of_hold(conv: Conversation, effects: Effects) -> None:
    """The typing agent stopped (or the lock expired) without answering: the
    held messages go back to routing, in order, under the current state."""
    held = list(Message.select(Message.id, Message.sent_at)
                .where((Message.conversation == conv.id) & (Message.routed_to == "held"))
                .order_by(Message.sent_at, Message.id))
    effects.update(Message, {"routed_to": None}, {"conversation": conv.id, "routed_to": "held"})
    _cas(conv, {"typing_agent_id": None, "typing_until": None, "held_since": None}, effects)
    effects.inbox.extend((conv.id, m.id, timegm(m.sent_at.timetuple()) + m.sent_at.microsecond / 1e6)
                         for m in held)


# -- release, transfer, close --------------------------------------------------------------------

def release(settings: Settings, conversation_id: str, actor: Actor, note: str | None = None) -> ActionResult:
    """Hand the conversation back to the bot, with a cooldown against re-escalating at once."""
    def step():
        conv = _load(conversation_id)
        if conv.state not in (AGENT_CONTROLLED, PENDING_AGENT):
            raise _wrong_state(conv, "released")
        _require_owner_or_supervisor(conv, actor, "release")
        effects = Effects()
        before = conv.state
        effects.release_reservation(_owner(conv), conv.id)
        metadata = {**(conv.metadata or {}), "mode": "normal"}
        _cas(conv, {**_cleared_handoff(), "state": BOT_CONTROLLED, "control_epoch": conv.control_epoch + 1,
                    "cooldown_remaining": settings.COOLDOWN_INTERACTIONS, "metadata": metadata,
                    "last_activity_at": utcnow()}, effects)
        _audit(conv, effects, actor.label, before, BOT_CONTROLLED, "released", {"note": note})
        _notify(settings, conv, "conversation.released", effects, by=_by(actor))
        return ActionResult(conv, effects), _nothing
    return _run(step)


def transfer(settings: Settings, reservations: Reservations, conversation_id: str, actor: Actor, *,
             agent_id: str | None = None, group: str | None = None) -> ActionResult:
    """Re-offer the conversation to one agent, or to a group's rotation."""
    def step():
        conv = _load(conversation_id)
        if conv.state not in (AGENT_CONTROLLED, PENDING_AGENT):
            raise _wrong_state(conv, "transferred")
        _require_owner_or_supervisor(conv, actor, "transfer")
        effects = Effects()
        before, previous = conv.state, _owner(conv)
        now = utcnow()
        base = {"state": PENDING_AGENT, "assigned_agent_id": None, "offered_agent_id": None,
                "offer_expires_at": None, "pending_since": now, "awaiting_agent_since": None,
                "last_activity_at": now, "control_epoch": conv.control_epoch + 1}
        if agent_id is not None:
            target = Agent.get_or_none(Agent.id == agent_id)
            if target is None:
                raise NotFound("agent")
            if target.id == previous:
                raise Refused("conflict", "wrong_state", "The conversation is already with that agent.")
            if not reservations.presence.online([target.id])[target.id]:
                raise Refused("conflict", "agent_unavailable", "That agent is not online.", {"agent_id": target.id})
            if not reservations.reserve_for(target, conv.id):
                raise Refused("conflict", "agent_at_capacity", "That agent has no free capacity.",
                              {"agent_id": target.id, "max_concurrent": target.max_concurrent})
            effects.release_reservation(previous, conv.id)
            if target.in_group(conv.group) or not target.groups:
                new_group = conv.group
            else:
                new_group = target.groups[0]
            _cas(conv, {**base, "group": new_group}, effects)
            _audit(conv, effects, actor.label, before, PENDING_AGENT, "transferred",
                   {"from_agent_id": previous, "to_agent_id": target.id})
            offer = plan_offer(settings, conv, target, [], actor=actor.label, reason="offered")
            effects.writes.extend(offer.writes)
            effects.schedules.extend(s for s in offer.schedules if s not in effects.schedules)
            effects.live.extend(offer.live)
            return ActionResult(conv, effects), lambda: reservations.release(target.id, conv.id)
        effects.release_reservation(previous, conv.id)
        _cas(conv, {**base, "group": group, "offers_lapsed": [previous] if previous else []}, effects)
        _audit(conv, effects, actor.label, before, PENDING_AGENT, "transferred",
               {"from_agent_id": previous, "to_group": group})
        _notify(settings, conv, "handoff.requested", effects, reason=conv.escalation_reason)
        effects.offer(conv.id)
        return ActionResult(conv, effects), _nothing
    return _run(step)


def close(settings: Settings, conversation_id: str, actor: Actor, reason: str | None = None) -> ActionResult:
    def step():
        conv = _load(conversation_id)
        if conv.state == CLOSED:
            raise _wrong_state(conv, "closed")
        _require_owner_or_supervisor(conv, actor, "close")
        effects = Effects()
        effects.release_reservation(_owner(conv), conv.id)
        plan_close(settings, conv, effects, actor=actor.label, reason=reason or "closed_by_agent",
                   by=_by(actor))
        return ActionResult(conv, effects), _nothing
    return _run(step)


def plan_close(settings: Settings, conv: Conversation, effects: Effects, *, actor: str, reason: str,
               by: dict) -> None:
    before = conv.state
    if conv.held_since is not None:    # nobody will answer held messages now
        effects.update(Message, {"routed_to": "none"}, {"conversation": conv.id, "routed_to": "held"})
    metadata = {**(conv.metadata or {}), "mode": "normal"}
    _cas(conv, {**_cleared_handoff(), "state": CLOSED, "control_epoch": conv.control_epoch + 1,
                "cooldown_remaining": 0, "metadata": metadata}, effects)
    _audit(conv, effects, actor, before, CLOSED, reason)
    _notify(settings, conv, "conversation.closed", effects, by=by)


def _by(actor: Actor) -> dict:
    if actor.agent is not None:
        return {"type": "agent", "agent": actor.agent.to_dict()}
    return {"type": actor.role}
