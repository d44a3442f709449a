"""The routing decision: who gets an inbound message, and does control change?

Everything here is pure: plain data in, a `Decision` out, no I/O and no clock
reads (the caller passes `now`). A decision is the complete change: the new
state, every column of the conversation that changes, and the effects that
follow (notices, notifications, a bot turn, an offer, audit entries).
`routing.inbound` writes it through `routing.change` under the
conversation's compare-and-set.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Callable

from models.conversation import AGENT_CONTROLLED, BOT_CONTROLLED, CLOSED, PENDING_AGENT

from .escalation import is_explicit_request

# Messages the bot cannot act on: routed nowhere while the bot is in control.
NOT_FOR_BOT = frozenset({"reaction", "system", "unsupported"})
# Messages whose text the customer typed or chose (a button or list title).
READABLE = frozenset({"text", "button", "interactive"})


@dataclass(frozen=True)
class ConversationView:
    state: str
    cooldown_remaining: int = 0
    last_pending_notice_at: datetime | None = None
    group: str | None = None
    typing_held: bool = False               # an agent is typing on this bot conversation
    control_epoch: int = 1
    last_inbound_at: datetime | None = None
    held_since: datetime | None = None
    assigned_agent_id: str | None = None
    offered_agent_id: str | None = None
    awaiting_agent_since: datetime | None = None


@dataclass(frozen=True)
class InboundView:
    type: str
    text: str | None = None
    from_me: bool = False
    sentiment_urgency: float | None = None  # set when the text reads angry enough to escalate
    sent_at: datetime | None = None


@dataclass(frozen=True)
class Policy:
    phrases: tuple[str, ...] = ()
    sentiment: object | None = None         # routing.sentiment.SentimentAnalyser, or None (off)
    pending_notice_interval: timedelta = timedelta(minutes=10)
    default_group: str = "support"
    # The built-in bot, handed in from outside routing (runtime.py):
    # (bot.turn event body, escalation phrases) -> reply, as POST /api/v1/bot/replies takes it.
    bot: Callable[[dict, tuple[str, ...]], dict] | None = None
    # The circuit breaker on N8N_BOT_URL (routing.bot_breaker.BotBreaker), or None (always closed).
    breaker: object | None = None


@dataclass(frozen=True)
class Escalation:
    reason: str
    urgency: float | None = None
    group: str | None = None


@dataclass(frozen=True)
class Decision:
    new_state: str
    routed_to: str                          # bot | queued_for_agent | agent | held | none
    reason: str                             # why the state is what it is, for the audit trail
    escalation: Escalation | None = None
    bot_turn: bool = False
    send_handoff_notice: bool = False
    send_pending_notice: bool = False
    notify: tuple[str, ...] = ()            # n8n notify-branch events
    cooldown_remaining: int = 0
    reopened: bool = False
    # The complete change (filled in by `decide`):
    columns: dict = field(default_factory=dict)       # conversation columns to compare-and-set
    held_messages_to: str | None = None               # held messages now belong here
    free_seat_of: str | None = None                   # agent whose reserved seat is given back
    offer: bool = False                               # offer the conversation to an agent
    audits: tuple[tuple[str, str, str], ...] = ()     # (from_state, to_state, reason)


def cleared_handoff() -> dict:
    """Columns that forget a handoff: back to the bot, or closed."""
    return {"assigned_agent_id": None, "offered_agent_id": None, "pending_since": None,
            "escalation_reason": None, "escalation_urgency": None, "escalation_requested_at": None,
            "bot_failures": 0, "offer_expires_at": None, "offers_lapsed": [], "awaiting_agent_since": None,
            "typing_agent_id": None, "typing_until": None, "held_since": None}


def escalation_columns(reason: str, urgency: float | None, group: str | None, now: datetime) -> dict:
    """Columns of a conversation that starts waiting for a human."""
    return {"escalation_reason": reason, "escalation_urgency": urgency, "escalation_requested_at": now,
            "group": group, "pending_since": now, "last_pending_notice_at": now,
            "assigned_agent_id": None, "offered_agent_id": None, "offer_expires_at": None,
            "offers_lapsed": [], "awaiting_agent_since": None, "typing_agent_id": None,
            "typing_until": None, "last_activity_at": now}


def sentiment_applies(conv: ConversationView, msg_type: str, text: str | None, from_me: bool) -> bool:
    """The sentiment gate: is the customer's mood worth reading for this
    message? Only readable customer text, only while the bot holds the
    conversation (or it is closed) outside a release cooldown and a typing hold."""
    if from_me or not text or msg_type not in READABLE:
        return False
    if conv.state == CLOSED:
        return True
    return conv.state == BOT_CONTROLLED and not conv.typing_held and conv.cooldown_remaining <= 0


def needs_sentiment(conv: ConversationView, msg_type: str, text: str | None, from_me: bool,
                    policy: Policy) -> bool:
    """Is it worth asking the analyser about this message? Only past the gate,
    and not when the customer asks for a human in words (that rule comes first)."""
    return (policy.sentiment is not None and sentiment_applies(conv, msg_type, text, from_me)
            and not is_explicit_request(text, policy.phrases))


def decide(conv: ConversationView, msg: InboundView, policy: Policy, now: datetime) -> Decision:
    """Route one inbound message given the conversation's current state: the complete change."""
    return _complete(conv, msg, _route(conv, msg, policy, now), now)


def _route(conv: ConversationView, msg: InboundView, policy: Policy, now: datetime) -> Decision:
    reopened = conv.state == CLOSED
    state = BOT_CONTROLLED if reopened else conv.state

    if msg.from_me:
        # A human answered from the business phone outside Baton: the bot must go quiet.
        if state == AGENT_CONTROLLED:
            return Decision(AGENT_CONTROLLED, "none", "human_echo", cooldown_remaining=conv.cooldown_remaining)
        return Decision(AGENT_CONTROLLED, "none", "agent_takeover", reopened=reopened,
                        escalation=Escalation("agent_takeover", group=conv.group or policy.default_group),
                        notify=("handoff.accepted",))

    if state == AGENT_CONTROLLED:
        return Decision(AGENT_CONTROLLED, "agent", "inbound", notify=("message.for_agent",),
                        cooldown_remaining=conv.cooldown_remaining)

    if state == PENDING_AGENT:
        due = (conv.last_pending_notice_at is None
               or now - conv.last_pending_notice_at >= policy.pending_notice_interval)
        return Decision(PENDING_AGENT, "queued_for_agent", "inbound", send_pending_notice=due,
                        notify=("message.for_agent",), cooldown_remaining=conv.cooldown_remaining)

    # BOT_CONTROLLED (possibly just reopened)
    cooldown = 0 if reopened else conv.cooldown_remaining
    in_cooldown = cooldown > 0
    remaining = max(cooldown - 1, 0)
    if conv.typing_held and not reopened:
        # An agent is about to answer: hold the message for them, in order.
        return Decision(BOT_CONTROLLED, "held", "held", cooldown_remaining=remaining)
    if not in_cooldown and msg.type in READABLE and is_explicit_request(msg.text, policy.phrases):
        return Decision(PENDING_AGENT, "queued_for_agent", "explicit_request", reopened=reopened,
                        escalation=Escalation("explicit_request", group=policy.default_group),
                        send_handoff_notice=True, notify=("handoff.requested",))
    if msg.sentiment_urgency is not None and sentiment_applies(conv, msg.type, msg.text, msg.from_me):
        return Decision(PENDING_AGENT, "queued_for_agent", "sentiment", reopened=reopened,
                        escalation=Escalation("sentiment", urgency=msg.sentiment_urgency,
                                              group=policy.default_group),
                        send_handoff_notice=True, notify=("handoff.requested",))
    if msg.type in NOT_FOR_BOT:
        return Decision(BOT_CONTROLLED, "none", "reopened" if reopened else "inbound",
                        reopened=reopened, cooldown_remaining=remaining)
    return Decision(BOT_CONTROLLED, "bot", "reopened" if reopened else "inbound", bot_turn=True,
                    reopened=reopened, cooldown_remaining=remaining)


def _complete(conv: ConversationView, msg: InboundView, d: Decision, now: datetime) -> Decision:
    """Add the columns and effects that follow from a routing decision."""
    columns: dict = {"cooldown_remaining": d.cooldown_remaining, "last_activity_at": now}
    if not msg.from_me and msg.sent_at is not None and (conv.last_inbound_at is None
                                                        or msg.sent_at > conv.last_inbound_at):
        columns["last_inbound_at"] = msg.sent_at
    if d.routed_to == "held" and conv.held_since is None:
        columns["held_since"] = now
    if d.routed_to == "agent" and conv.assigned_agent_id and conv.awaiting_agent_since is None:
        columns["awaiting_agent_since"] = now      # the assigned agent owes the customer an answer
    if d.new_state != conv.state:
        columns.update(state=d.new_state, control_epoch=conv.control_epoch + 1)
    if d.new_state == BOT_CONTROLLED and d.reopened:
        columns.update(cleared_handoff())
    if d.escalation is not None and d.new_state == PENDING_AGENT:
        columns.update(escalation_columns(d.escalation.reason, d.escalation.urgency, d.escalation.group, now))
    held_to = free_seat = None
    if d.reason == "agent_takeover":
        columns.update(pending_since=None, offered_agent_id=None, offer_expires_at=None,
                       escalation_reason="agent_takeover", escalation_requested_at=now,
                       group=d.escalation.group, typing_agent_id=None, typing_until=None)
        free_seat = conv.offered_agent_id if conv.state == PENDING_AGENT else None
        if conv.held_since is not None:
            held_to = "agent"
            columns.update(held_since=None, typing_agent_id=None, typing_until=None)
    elif d.new_state == PENDING_AGENT and conv.state != PENDING_AGENT and conv.held_since is not None:
        # The hold lapsed (its timer not run yet) and the customer now asks for a
        # human: what was held goes to the humans' queue with this message.
        held_to = "queued_for_agent"
        columns["held_since"] = None
    if d.send_pending_notice:
        columns["last_pending_notice_at"] = now
    audits = []
    start = conv.state
    if d.reopened:
        audits.append((CLOSED, BOT_CONTROLLED, "reopened"))
        start = BOT_CONTROLLED
    if d.new_state != start:
        audits.append((start, d.new_state, d.reason))
    return replace(d, columns=columns, held_messages_to=held_to, free_seat_of=free_seat,
                   offer=d.new_state == PENDING_AGENT and conv.state != PENDING_AGENT, audits=tuple(audits))


@dataclass(frozen=True)
class EscalationDecision:
    changed: bool
    new_state: str
    send_handoff_notice: bool = False
    notify: tuple[str, ...] = field(default=())


def decide_escalation(conv: ConversationView, *, automatic: bool) -> EscalationDecision:
    """An escalation asked for through the API (`automatic=False`) or by a
    trigger such as the bot's `escalate: true` (`automatic=True`, which the
    cooldown after a release suppresses)."""
    if conv.state in (PENDING_AGENT, AGENT_CONTROLLED):
        return EscalationDecision(False, conv.state)
    if automatic and conv.state == BOT_CONTROLLED and conv.cooldown_remaining > 0:
        return EscalationDecision(False, conv.state)
    return EscalationDecision(True, PENDING_AGENT, send_handoff_notice=True, notify=("handoff.requested",))


def bot_may_speak(state: str, control_epoch: int, turn_epoch: int) -> bool:
    """A bot reply is allowed only while the bot still holds the control it
    held when the turn was issued."""
    return state == BOT_CONTROLLED and control_epoch == turn_epoch
