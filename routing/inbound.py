"""Route one recorded inbound message: decide, then write the decision
through the conversation's one change path (`routing.change`)."""
from __future__ import annotations

from typing import Callable

from models import Agent, Message, utcnow
from models.prepared import PreparedSelect

from .bot_turns import issue_bot_turn
from .change import Change, view_of
from .decide import Decision, InboundView, Policy, decide, needs_sentiment
from .notices import say_notice

_MESSAGE = PreparedSelect(lambda message_id: Message.select().where(Message.id == message_id))


def routing_plan(policy: Policy, message_id: str) -> Callable[[Change], str | None]:
    """The plan that routes one recorded inbound message exactly once (a routed
    message is skipped): for `Changes.run` and `Changes.run_group`. Its result
    is where the message went, or None when it had been routed already; a
    conversation merged into another (routing.identity) raises NotFound: the
    message was routed there."""
    return lambda change: _route(change, policy, message_id)


def _route(change: Change, policy: Policy, message_id: str) -> str | None:
    message = _MESSAGE.first(message_id)
    if message is None or message.routed_to is not None or message.conversation_id != change.conv.id:
        return None       # routed already, or moved to the conversation it was merged into
    conv = change.conv
    now = utcnow()
    from_me = message.direction == "out"
    view = view_of(conv, now)
    urgency = None
    if needs_sentiment(view, message.type, message.text, from_me, policy):
        urgency = policy.sentiment.urgency(message.text, (conv.metadata or {}).get("preferred_language"))
    decision = decide(view, InboundView(message.type, message.text, from_me, urgency, message.sent_at),
                      policy, now)
    change.set(decision.columns)
    if decision.held_messages_to:
        change.hand_held_messages_to(decision.held_messages_to)
    change.free_seat(decision.free_seat_of)
    change.mark_routed(message, decision.routed_to)
    if decision.offer:
        change.offer()
    for from_state, to_state, reason in decision.audits:
        change.audit("system", from_state, to_state, reason, {"message_id": message.id})
    _follow_up(change, policy, message, decision)
    return decision.routed_to


def _follow_up(change: Change, policy: Policy, message: Message, decision: Decision) -> None:
    conv = change.conv
    if decision.send_handoff_notice:
        say_notice(change, "HANDOFF_NOTICE")
    if decision.send_pending_notice:
        say_notice(change, "PENDING_NOTICE")
    agent_id = conv.assigned_agent_id or conv.offered_agent_id
    agent = Agent.get_or_none(Agent.id == agent_id) if agent_id and decision.notify else None
    for event_type in decision.notify:
        change.notify(event_type, message=message, reason=conv.escalation_reason, agent=agent)
    if decision.bot_turn:
        issue_bot_turn(change, policy, message)
