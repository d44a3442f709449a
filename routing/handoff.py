"""What agents do to a conversation: claim, reply, type, release, transfer, close.

Each action is a plan run by `routing.change`: it checks that the caller may
do it (raising a `routing.errors` refusal before anything is written), then
describes the change, committed under the conversation's compare-and-set.
Capacity is reserved in Redis before a commit that gives an agent a
conversation (and given back if it does not commit), and freed after one
that takes it away.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from models import AGENT_CONTROLLED, BOT_CONTROLLED, CLOSED, PENDING_AGENT, Agent, Conversation, Message, isoformat, utcnow

from . import uploads
from .assignment import Reservations, plan_offer
from .change import Change, Changes
from .decide import cleared_handoff
from .errors import Conflict, Forbidden, NotFound, Unprocessable
from .live import live_event
from .notices import NO_SERVICE_WINDOW, window_open
from .visibility import snapshot


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

    @property
    def by(self) -> dict:
        """Who acted, as `conversation.released` / `conversation.closed` name them."""
        if self.agent is not None:
            return {"type": "agent", "agent": self.agent.to_dict()}
        return {"type": self.role}

    def require_agent(self) -> Agent:
        if self.agent is None:
            raise Forbidden("This token belongs to no agent; create one with `flask baton agent add` or "
                            "POST /api/v1/agents.", code="not_an_agent")
        return self.agent


@dataclass
class ActionResult:
    conversation: Conversation
    changed: bool = True
    message: Message | None = None


def _wrong_state(conv: Conversation, action: str) -> Conflict:
    return Conflict(f"A conversation in state {conv.state} cannot be {action}.", {"state": conv.state},
                    code="wrong_state")


def _not_assigned() -> Forbidden:
    return Forbidden("This conversation is assigned to another agent.", code="not_assigned")


def _bot_conversation() -> Forbidden:
    return Forbidden("Only supervisors take conversations over from the bot.")


def _require_owner_or_supervisor(conv: Conversation, actor: Actor, action: str) -> None:
    if actor.supervises:
        return
    if conv.state == AGENT_CONTROLLED and actor.agent and conv.assigned_agent_id == actor.agent.id:
        return
    raise Forbidden(f"Only the assigned agent or a supervisor may {action} this conversation.",
                    {"assigned_agent_id": conv.assigned_agent_id}, code="not_assigned")


# -- claim (and claim by replying) ---------------------------------------------------------

def _check_claimable(conv: Conversation, actor: Actor) -> None:
    agent = actor.require_agent()
    if conv.state == AGENT_CONTROLLED and conv.assigned_agent_id not in (None, agent.id):
        raise Conflict("Another agent already holds this conversation.",
                       {"assigned_agent_id": conv.assigned_agent_id}, code="already_assigned")
    if conv.state == CLOSED:
        raise _wrong_state(conv, "claimed")
    if conv.state == BOT_CONTROLLED and not (actor.supervises or conv.typing_agent_id == agent.id):
        raise _bot_conversation()
    if (conv.state == PENDING_AGENT and not actor.supervises and conv.offered_agent_id != agent.id
            and not agent.in_group(conv.group)):
        raise Forbidden("This conversation waits for another group.", {"group": conv.group})


def _plan_claim(change: Change, reservations: Reservations, actor: Actor, columns: dict) -> bool:
    """Add the claim to `columns` (the caller compare-and-sets them); False
    when the caller already holds the conversation."""
    conv, agent = change.conv, actor.agent
    if conv.state == AGENT_CONTROLLED and conv.assigned_agent_id == agent.id:
        return False
    holder = conv.capacity_holder
    if not reservations.reserve_for(agent, conv.id, force=actor.supervises):
        raise Conflict(f"You already hold {agent.max_concurrent} conversations (your max_concurrent).",
                       {"max_concurrent": agent.max_concurrent}, code="at_capacity")
    if holder != agent.id:
        change.on_rollback(lambda: reservations.release(agent.id, conv.id))
        change.free_seat(holder)
    now = utcnow()
    columns.update(state=AGENT_CONTROLLED, control_epoch=conv.control_epoch + 1, assigned_agent_id=agent.id,
                   offered_agent_id=None, offer_expires_at=None, offers_lapsed=[], pending_since=None,
                   last_agent_id=agent.id, awaiting_agent_since=now, last_activity_at=now)
    if conv.state in (BOT_CONTROLLED, CLOSED, AGENT_CONTROLLED):
        columns.update(escalation_reason="agent_takeover", escalation_requested_at=now, escalation_urgency=None,
                       group=conv.group or change.settings.DEFAULT_GROUP)
    change.settle_held("agent", columns)
    return True


def _after_claim(change: Change, actor: Actor, before: str) -> None:
    change.audit(actor.label, before, AGENT_CONTROLLED, "claimed", {"agent_id": actor.agent.id})
    change.notify("handoff.accepted", reason=change.conv.escalation_reason, agent=actor.agent)


def claim(changes: Changes, reservations: Reservations, conversation_id: str, actor: Actor) -> ActionResult:
    def plan(change: Change) -> ActionResult:
        conv = change.conv
        _check_claimable(conv, actor)
        before, columns = conv.state, {}
        if not _plan_claim(change, reservations, actor, columns):
            return ActionResult(conv, changed=False)
        change.set(columns)
        _after_claim(change, actor, before)
        return ActionResult(conv)
    return changes.run(conversation_id, plan)


# -- an agent's message ----------------------------------------------------------------------

def send(changes: Changes, reservations: Reservations, conversation_id: str, actor: Actor, *,
         text: str | None = None, template: dict | None = None, media_id: str | None = None) -> ActionResult:
    """Queue an agent's message; replying to a conversation you may claim claims it.
    `media_id`: a stored upload of this agent's (routing.uploads), `text` its caption."""
    def plan(change: Change) -> ActionResult:
        conv = change.conv
        agent = actor.require_agent()
        if conv.state == AGENT_CONTROLLED and conv.assigned_agent_id not in (None, agent.id):
            if actor.supervises:
                raise Conflict("Another agent holds this conversation; transfer it to yourself first.",
                               {"assigned_agent_id": conv.assigned_agent_id}, code="already_assigned")
            raise _not_assigned()
        _check_claimable(conv, actor)
        if template is not None and conv.channel.provider in NO_SERVICE_WINDOW:
            raise Unprocessable("WASender sends no message templates: send text (it has no 24-hour window).",
                                {"provider": conv.channel.provider}, code="templates_unsupported")
        if template is None and not window_open(conv):
            raise Unprocessable("The customer last wrote more than 24 hours ago: only a template may be sent.",
                                {"window_expires_at": conv.to_dict()["window_expires_at"]},
                                code="outside_customer_service_window")
        before, columns = conv.state, {}
        claimed = _plan_claim(change, reservations, actor, columns)
        now = utcnow()
        columns.update(awaiting_agent_since=None, last_activity_at=now)
        change.set(columns)
        if claimed:
            _after_claim(change, actor, before)
        if media_id is None:
            message = change.say(sender="agent", agent_id=agent.id, text=text, template=template)
        else:
            message = uploads.attach(change, media_id, agent.id,
                                     lambda media: change.say(sender="agent", agent_id=agent.id, text=text,
                                                              media=media), caption=text)
        return ActionResult(conv, message=message)
    return changes.run(conversation_id, plan)


# -- typing ---------------------------------------------------------------------------------

def typing(changes: Changes, conversation_id: str, actor: Actor, is_typing: bool) -> ActionResult:
    """Tell watchers an agent is typing. On a bot conversation it also holds
    the customer's next messages for that agent until AGENT_TYPING_TTL passes."""
    def plan(change: Change) -> ActionResult:
        conv = change.conv
        agent = actor.require_agent()
        if conv.state == CLOSED:
            raise _wrong_state(conv, "typed into")
        if conv.state == AGENT_CONTROLLED and conv.assigned_agent_id not in (None, agent.id) \
                and not actor.supervises:
            raise _not_assigned()
        if conv.state == BOT_CONTROLLED and not actor.supervises:
            raise _bot_conversation()
        expires = utcnow() + timedelta(seconds=change.settings.AGENT_TYPING_TTL)
        if conv.state == BOT_CONTROLLED:
            if is_typing:
                change.set({"typing_agent_id": agent.id, "typing_until": expires})
            elif conv.typing_agent_id == agent.id:
                change.route_held_again()
        change.effects.live.append(live_event("typing", conv.id, {
            "agent_id": agent.id, "typing": is_typing, "expires_at": isoformat(expires) if is_typing else None},
            snapshot(conv)))
        return ActionResult(conv, changed=change.changed)
    return changes.run(conversation_id, plan)


# -- release, transfer, close --------------------------------------------------------------------

def release(changes: Changes, conversation_id: str, actor: Actor, note: str | None = None) -> ActionResult:
    """Hand the conversation back to the bot, with a cooldown against re-escalating at once."""
    def plan(change: Change) -> ActionResult:
        conv = change.conv
        if conv.state not in (AGENT_CONTROLLED, PENDING_AGENT):
            raise _wrong_state(conv, "released")
        _require_owner_or_supervisor(conv, actor, "release")
        before = conv.state
        change.free_seat(conv.capacity_holder)
        metadata = {**(conv.metadata or {}), "mode": "normal"}
        columns = {**cleared_handoff(), "state": BOT_CONTROLLED, "control_epoch": conv.control_epoch + 1,
                   "cooldown_remaining": change.settings.COOLDOWN_INTERACTIONS, "metadata": metadata,
                   "last_activity_at": utcnow()}
        change.settle_held(None, columns)
        change.set(columns)
        change.audit(actor.label, before, BOT_CONTROLLED, "released", {"note": note})
        change.notify("conversation.released", by=actor.by)
        return ActionResult(conv)
    return changes.run(conversation_id, plan)


def transfer(changes: Changes, reservations: Reservations, conversation_id: str, actor: Actor, *,
             agent_id: str | None = None, group: str | None = None) -> ActionResult:
    """Re-offer the conversation to one agent, or to a group's rotation."""
    def plan(change: Change) -> ActionResult:
        conv = change.conv
        if conv.state not in (AGENT_CONTROLLED, PENDING_AGENT):
            raise _wrong_state(conv, "transferred")
        _require_owner_or_supervisor(conv, actor, "transfer")
        before, previous = conv.state, conv.capacity_holder
        now = utcnow()
        base = {"state": PENDING_AGENT, "assigned_agent_id": None, "offered_agent_id": None,
                "offer_expires_at": None, "pending_since": now, "awaiting_agent_since": None,
                "last_activity_at": now, "control_epoch": conv.control_epoch + 1}
        change.settle_held(None, base)
        if agent_id is None:
            change.free_seat(previous)
            change.set({**base, "group": group, "offers_lapsed": [previous] if previous else []})
            change.audit(actor.label, before, PENDING_AGENT, "transferred",
                         {"from_agent_id": previous, "to_group": group})
            change.notify("handoff.requested", reason=conv.escalation_reason)
            change.offer()
            return ActionResult(conv)
        target = Agent.get_or_none(Agent.id == agent_id)
        if target is None:
            raise NotFound("agent")
        if target.id == previous:
            raise Conflict("The conversation is already with that agent.", code="wrong_state")
        if target.deactivated_at is not None:
            raise Conflict("That agent is deactivated.", {"agent_id": target.id}, code="agent_unavailable")
        if not reservations.presence.online([target.id])[target.id]:
            raise Conflict("That agent is not online.", {"agent_id": target.id}, code="agent_unavailable")
        if not reservations.reserve_for(target, conv.id):
            raise Conflict("That agent has no free capacity.",
                           {"agent_id": target.id, "max_concurrent": target.max_concurrent},
                           code="agent_at_capacity")
        change.on_rollback(lambda: reservations.release(target.id, conv.id))
        change.free_seat(previous)
        new_group = conv.group if target.in_group(conv.group) or not target.groups else target.groups[0]
        change.set({**base, "group": new_group})
        change.audit(actor.label, before, PENDING_AGENT, "transferred",
                     {"from_agent_id": previous, "to_agent_id": target.id})
        plan_offer(change, target, [], actor=actor.label)
        return ActionResult(conv)
    return changes.run(conversation_id, plan)


def close(changes: Changes, conversation_id: str, actor: Actor, reason: str | None = None) -> ActionResult:
    def plan(change: Change) -> ActionResult:
        conv = change.conv
        if conv.state == CLOSED:
            raise _wrong_state(conv, "closed")
        _require_owner_or_supervisor(conv, actor, "close")
        plan_close(change, actor=actor.label, reason=reason or "closed_by_agent", by=actor.by)
        return ActionResult(conv)
    return changes.run(conversation_id, plan)


def plan_close(change: Change, *, actor: str, reason: str, by: dict) -> None:
    """Close the conversation: nobody holds it. Messages held for a typing
    agent go back to routing after the close (they reopen it to the bot)."""
    conv = change.conv
    before = conv.state
    change.free_seat(conv.capacity_holder)
    columns = {**cleared_handoff(), "state": CLOSED, "control_epoch": conv.control_epoch + 1,
               "cooldown_remaining": 0, "metadata": {**(conv.metadata or {}), "mode": "normal"}}
    change.settle_held(None, columns)
    change.set(columns)
    change.audit(actor, before, CLOSED, reason)
    change.notify("conversation.closed", by=by)
