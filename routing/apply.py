"""Apply routing decisions to the database under compare-and-set.

Each public function reads the conversation, asks a pure function in
`routing.decide` what to do, plans the state change, the audit event and the
side-effect rows (see `routing.effects`), and commits them in one transaction.
A concurrent writer makes the version check fail; the whole step is then
retried from a fresh read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from bot.rules import reply as rule_bot_reply

from config import Settings
from models import (BOT_CONTROLLED, CLOSED, PENDING_AGENT, Agent, BotTurn, Channel, Contact,
                    Conversation, Event, Message, new_id, utcnow)

from models.prepared import PreparedSelect

from .decide import (READABLE, ConversationView, Decision, InboundView, Policy, bot_may_speak, decide,
                     decide_escalation)
from .effects import Effects, VersionConflict, queue_event, queue_outbound
from .live import live_event
from .visibility import snapshot

MAX_CAS_ATTEMPTS = 8
log = logging.getLogger(__name__)


class NotFound(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class StaleTurn(Exception):
    """Control changed after the bot turn was issued."""


class CooldownActive(Exception):
    """The bot asked to escalate right after an agent released the conversation."""

    def __init__(self, remaining: int):
        super().__init__(remaining)
        self.remaining = remaining


_CONVERSATION = PreparedSelect(lambda conversation_id: (
    Conversation.select(Conversation, Channel, Contact)
    .join(Channel, on=(Conversation.channel == Channel.id))
    .switch(Conversation)
    .join(Contact, on=(Conversation.contact == Contact.id))
    .where(Conversation.id == conversation_id)))
_MESSAGE = PreparedSelect(lambda message_id: Message.select().where(Message.id == message_id))
_HISTORY = PreparedSelect(lambda conversation_id, limit: (
    Message.select()
    .where(Message.conversation == conversation_id)
    .order_by(Message.sent_at.desc(), Message.id.desc())
    .limit(limit)))


def load_conversation(conversation_id: str) -> Conversation | None:
    """A conversation with its channel and contact, in one query."""
    return _CONVERSATION.first(conversation_id)


def _view(conv: Conversation, now: datetime | None = None) -> ConversationView:
    now = now or utcnow()
    return ConversationView(state=conv.state, cooldown_remaining=conv.cooldown_remaining,
                            last_pending_notice_at=conv.last_pending_notice_at, group=conv.group,
                            typing_held=typing_held(conv, now))


def typing_held(conv: Conversation, now: datetime) -> bool:
    return (conv.state == BOT_CONTROLLED and conv.typing_until is not None and conv.typing_until > now)


def _cas(conv: Conversation, changes: dict, effects: Effects) -> None:
    """Plan `changes` so they apply only if nobody moved the conversation
    since it was read; mirror them on `conv` (and its version) at once."""
    changes = {**changes, "updated_at": utcnow()}
    effects.update(Conversation, changes, {"id": conv.id, "version": conv.version}, increment="version",
                   must_change_one=True)
    before = snapshot(conv)
    for key, value in changes.items():
        setattr(conv, key, value)
    conv.version += 1
    effects.live.append(live_event("conversation.updated", conv.id, conv.to_dict(), before, snapshot(conv)))


def _audit(conv: Conversation, effects: Effects, actor: str, from_state: str | None, to_state: str,
           reason: str, details: dict | None = None) -> None:
    effects.insert(Event(id=new_id("ev"), conversation=conv.id, actor=actor, from_state=from_state,
                         to_state=to_state, reason=reason, details=details, created_at=utcnow()))


def _with_retries(step):
    """Plan (reads only), then commit; from a fresh read again on a conflict."""
    for attempt in range(MAX_CAS_ATTEMPTS):
        result, effects = step()
        try:
            effects.commit()
            return result
        except VersionConflict:
            if attempt == MAX_CAS_ATTEMPTS - 1:
                raise


# -- inbound ---------------------------------------------------------------------

def route_message(settings: Settings, policy: Policy, conversation_id: str, message_id: str) -> Effects:
    """Route one recorded inbound message exactly once (a routed message is skipped)."""
    return _with_retries(lambda: _route(settings, policy, conversation_id, message_id))


def _route(settings: Settings, policy: Policy, conversation_id: str, message_id: str) -> tuple[Effects, Effects]:
    effects = Effects()
    message = _MESSAGE.first(message_id)
    if message is None or message.routed_to is not None:
        return effects, effects
    conv = load_conversation(conversation_id)
    now = utcnow()
    from_me = message.direction == "out"
    view = _view(conv, now)
    decision = decide(view, InboundView(message.type, message.text, from_me,
                                        _sentiment(policy, conv, message, view)), policy, now)
    before = conv.state
    offered_before = conv.offered_agent_id if before == PENDING_AGENT else None
    changes: dict = {"cooldown_remaining": decision.cooldown_remaining, "last_activity_at": now}
    if not from_me and (conv.last_inbound_at is None or message.sent_at > conv.last_inbound_at):
        changes["last_inbound_at"] = message.sent_at
    if decision.routed_to == "held" and conv.held_since is None:
        changes["held_since"] = now
    if (decision.routed_to == "agent" and conv.assigned_agent_id and conv.awaiting_agent_since is None):
        changes["awaiting_agent_since"] = now      # the assigned agent owes the customer an answer
    if decision.new_state != before:
        changes.update(state=decision.new_state, control_epoch=conv.control_epoch + 1)
    if decision.new_state == BOT_CONTROLLED and decision.reopened:
        changes.update(_cleared_handoff())
    if decision.escalation is not None and decision.new_state == PENDING_AGENT:
        changes.update(_escalation_fields(decision.escalation.reason, decision.escalation.urgency,
                                          decision.escalation.group, now))
    if decision.reason == "agent_takeover":
        changes.update(pending_since=None, offered_agent_id=None, offer_expires_at=None,
                       escalation_reason="agent_takeover", escalation_requested_at=now,
                       group=decision.escalation.group, typing_agent_id=None, typing_until=None)
        effects.release_reservation(offered_before, conv.id)
        settle_held(conv, effects, "agent", changes)
    if decision.send_pending_notice:
        changes["last_pending_notice_at"] = now
    _cas(conv, changes, effects)
    effects.update(Message, {"routed_to": decision.routed_to}, {"id": message.id, "routed_to": None},
                   must_change_one=True)
    message.routed_to = decision.routed_to
    effects.live.append(live_event("message.created", conv.id, message.to_dict(), snapshot(conv)))
    if conv.state == PENDING_AGENT and before != PENDING_AGENT:
        effects.offer(conv.id)

    if decision.reopened:
        _audit(conv, effects, "system", "CLOSED", BOT_CONTROLLED, "reopened", {"message_id": message.id})
    if conv.state != (BOT_CONTROLLED if decision.reopened else before):
        _audit(conv, effects, "system", BOT_CONTROLLED if decision.reopened else before, conv.state,
               decision.reason, {"message_id": message.id})
    _effects_of(settings, policy, conv, message, decision, effects)
    return effects, effects


def _effects_of(settings: Settings, policy: Policy, conv: Conversation, message: Message,
                decision: Decision, effects: Effects) -> None:
    if decision.send_handoff_notice:
        queue_outbound(conv, effects, sender="system", text=settings.HANDOFF_NOTICE)
    if decision.send_pending_notice:
        queue_outbound(conv, effects, sender="system", text=settings.PENDING_NOTICE)
    agent_id = conv.assigned_agent_id or conv.offered_agent_id
    agent = Agent.get_or_none(Agent.id == agent_id) if agent_id and decision.notify else None
    for event_type in decision.notify:
        _notify(settings, conv, event_type, effects, message=message, reason=conv.escalation_reason,
                agent=agent)
    if decision.bot_turn:
        _issue_bot_turn(settings, policy, conv, message, effects)


def _notify(settings: Settings, conv: Conversation, event_type: str, effects: Effects, *,
            message: Message | None = None, reason: str | None = None, by: str | None = None,
            agent: Agent | None = None) -> None:
    fields: dict = {"conversation": conv.to_dict()}
    agent_dict = agent.to_dict() if agent is not None else None
    if event_type == "message.for_agent":
        fields.update(message=message.to_dict(), agent=agent_dict)
    elif event_type.startswith("handoff."):
        fields.update(agent=agent_dict, reason=reason,
                      console_url=f"{settings.PUBLIC_BASE_URL}/console/conversations/{conv.id}")
    else:
        fields["by"] = by
    queue_event(settings.N8N_NOTIFY_URL, fields, event_type, effects, conv.id)


def _issue_bot_turn(settings: Settings, policy: Policy, conv: Conversation, message: Message,
                    effects: Effects) -> None:
    mode = (conv.metadata or {}).get("mode", "normal")
    turn = BotTurn(id=new_id("t"), conversation=conv.id, message_id=message.id,
                   control_epoch=conv.control_epoch, mode=mode, created_at=utcnow())
    effects.insert(turn)
    body = _turn_body(settings, conv, message, turn)
    if settings.N8N_BOT_URL:
        queue_event(settings.N8N_BOT_URL, body, "bot.turn", effects, conv.id)
        return
    # The built-in bot is a pure function: its answer commits with the
    # routing, so a message is routed and answered together or not at all.
    reply = rule_bot_reply({"event": "bot.turn", **body}, policy.phrases)
    try:
        _apply_bot_reply(settings, conv, turn, reply, "builtin-bot", effects)
    except CooldownActive:           # refused before anything was written
        log.info("built-in bot asked to escalate %s during its cooldown", conv.id)


def _turn_body(settings: Settings, conv: Conversation, message: Message, turn: BotTurn) -> dict:
    """The `bot.turn` event body (without event/delivery_id/occurred_at)."""
    return {"conversation": conv.to_dict(), "message": message.to_dict(), "turn_id": turn.id,
            "history": history(conv.id, settings.BOT_HISTORY), "mode": turn.mode,
            "reply_url": f"{settings.PUBLIC_BASE_URL}/api/v1/bot/replies"}


def history(conversation_id: str, limit: int) -> list[dict]:
    return [m.to_dict() for m in reversed(_HISTORY.rows(conversation_id, limit))]


def _sentiment(policy: Policy, conv: Conversation, message: Message, view: ConversationView) -> float | None:
    """Urgency when the customer's text reads angry enough to escalate (only
    worth computing while the bot holds the conversation outside cooldown)."""
    if (policy.sentiment is None or message.direction != "in" or not message.text
            or message.type not in READABLE or view.state not in (BOT_CONTROLLED, CLOSED) or view.typing_held
            or (view.state == BOT_CONTROLLED and view.cooldown_remaining > 0)):
        return None
    return policy.sentiment.urgency(message.text, (conv.metadata or {}).get("preferred_language"))


def settle_held(conv: Conversation, effects: Effects, routed_to: str, changes: dict) -> None:
    """Messages held for a typing agent belong to whoever now answers
    (`agent`, `queued_for_agent`); plan that, and end the hold in `changes`."""
    if conv.held_since is None:
        return
    effects.update(Message, {"routed_to": routed_to}, {"conversation": conv.id, "routed_to": "held"})
    changes.update(held_since=None, typing_agent_id=None, typing_until=None)


def _cleared_handoff() -> dict:
    return {"assigned_agent_id": None, "offered_agent_id": None, "pending_since": None,
            "escalation_reason": None, "escalation_urgency": None, "escalation_requested_at": None,
            "bot_failures": 0, "offer_expires_at": None, "offers_lapsed": [], "awaiting_agent_since": None,
            "typing_agent_id": None, "typing_until": None, "held_since": None}


def _escalation_fields(reason: str, urgency: float | None, group: str | None, now: datetime) -> dict:
    return {"escalation_reason": reason, "escalation_urgency": urgency, "escalation_requested_at": now,
            "group": group, "pending_since": now, "last_pending_notice_at": now,
            "assigned_agent_id": None, "offered_agent_id": None, "offer_expires_at": None,
            "offers_lapsed": [], "awaiting_agent_since": None, "typing_agent_id": None,
            "typing_until": None, "last_activity_at": now}


# -- escalation through the API or the bot ------------------------------------------

@dataclass
class EscalationResult:
    conversation: Conversation
    changed: bool
    effects: Effects


def escalate(settings: Settings, conversation_id: str, *, reason: str, actor: str,
             urgency: float | None = None, group: str | None = None, note: str | None = None,
             automatic: bool = False, notice_text: str | None = None) -> EscalationResult:
    """Move a conversation to PENDING_AGENT unless it already is (or has) a human."""
    def step():
        conv = load_conversation(conversation_id)
        if conv is None:
            raise NotFound("conversation")
        effects = Effects()
        changed = _plan_escalation(settings, conv, effects, reason=reason, actor=actor, urgency=urgency,
                                   group=group, note=note, automatic=automatic, notice_text=notice_text)
        return EscalationResult(conv, changed, effects), effects
    return _with_retries(step)


def _plan_escalation(settings: Settings, conv: Conversation, effects: Effects, *, reason: str, actor: str,
                    urgency: float | None, group: str | None, note: str | None, automatic: bool,
                    notice_text: str | None) -> bool:
    verdict = decide_escalation(_view(conv), automatic=automatic)
    if not verdict.changed:
        return False
    before = conv.state
    now = utcnow()
    changes = {"state": PENDING_AGENT, "control_epoch": conv.control_epoch + 1,
               **_escalation_fields(reason, urgency, group or settings.DEFAULT_GROUP, now)}
    if before != BOT_CONTROLLED:      # escalating a CLOSED conversation reopens its handoff fields
        changes["cooldown_remaining"] = 0
    settle_held(conv, effects, "queued_for_agent", changes)
    _cas(conv, changes, effects)
    _audit(conv, effects, actor, before, PENDING_AGENT, reason,
           {"urgency": urgency, "group": conv.group, "note": note})
    queue_outbound(conv, effects, sender="bot" if notice_text else "system",
                   text=notice_text or settings.HANDOFF_NOTICE)
    _notify(settings, conv, "handoff.requested", effects, reason=reason)
    effects.offer(conv.id)
    return True


# -- bot replies ------------------------------------------------------------------------

@dataclass
class BotReplyResult:
    status: str                      # queued | escalated
    conversation: Conversation
    message: Message | None
    effects: Effects


def accept_bot_reply(settings: Settings, reply: dict, actor: str = "bot") -> BotReplyResult:
    """Apply a bot's answer to a turn, refusing it (StaleTurn) when control
    changed. A bot may answer one turn with several messages."""
    return _with_retries(lambda: _accept_bot_reply(settings, reply, actor))


def _accept_bot_reply(settings: Settings, reply: dict, actor: str) -> BotReplyResult:
    conv = load_conversation(reply["conversation_id"])
    if conv is None:
        raise NotFound("conversation")
    turn = BotTurn.get_or_none((BotTurn.id == reply["turn_id"]) & (BotTurn.conversation == conv.id))
    if turn is None:
        raise NotFound("turn")
    effects = Effects()
    return _apply_bot_reply(settings, conv, turn, reply, actor, effects), effects


def _apply_bot_reply(settings: Settings, conv: Conversation, turn: BotTurn, reply: dict, actor: str,
                     effects: Effects) -> BotReplyResult:
    if not bot_may_speak(conv.state, conv.control_epoch, turn.control_epoch):
        raise StaleTurn(turn.id)
    if reply.get("escalate") and not decide_escalation(_view(conv), automatic=True).changed:
        raise CooldownActive(conv.cooldown_remaining)   # the turn guard passed: the bot holds it
    metadata = dict(conv.metadata or {})
    metadata.update(reply.get("metadata") or {})
    if reply.get("intent"):
        metadata["last_intent"] = reply["intent"]
    if reply.get("language"):
        metadata["preferred_language"] = reply["language"]
    failures = conv.bot_failures + 1 if reply.get("intent") == "fallback" else 0
    # Always compare-and-set, even with nothing to change: a handoff committed
    # after we read the conversation then makes this reply a clean 409.
    _cas(conv, {"metadata": metadata, "bot_failures": failures}, effects)
    effects.update(BotTurn, {"answered_at": utcnow()}, {"id": turn.id})
    if (not reply.get("escalate") and failures >= settings.BOT_FAILURE_LIMIT
            and decide_escalation(_view(conv), automatic=True).changed):
        # The bot keeps not understanding: its answer goes out, then a human takes over.
        message = None
        if reply.get("text"):
            message = queue_outbound(conv, effects, sender="bot", text=reply["text"], turn_id=turn.id)
        _plan_escalation(settings, conv, effects, reason="bot_failures", actor=actor, urgency=None,
                         group=reply.get("group"), note=f"{failures} fallback answers in a row",
                         automatic=True, notice_text=None)
        return BotReplyResult("escalated", conv, message, effects)
    if reply.get("escalate"):
        _plan_escalation(settings, conv, effects, reason=reply.get("reason") or "bot", actor=actor,
                        urgency=reply.get("urgency"), group=reply.get("group"), note=None,
                        automatic=True, notice_text=reply.get("text"))
        return BotReplyResult("escalated", conv, None, effects)
    message = queue_outbound(conv, effects, sender="bot", text=reply["text"], turn_id=turn.id,
                             control_epoch=turn.control_epoch)
    return BotReplyResult("queued", conv, message, effects)


def outbound_allowed(message: Message, conv: Conversation) -> bool:
    """At send time: a bot reply goes out only while its turn's control still holds."""
    if message.sender != "bot" or message.control_epoch is None:
        return True
    return bot_may_speak(conv.state, conv.control_epoch, message.control_epoch)

