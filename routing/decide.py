"""The routing decision: who gets an inbound message, and does control change?

Everything here is pure: plain data in, a `Decision` out, no I/O and no clock
reads (the caller passes `now`). `routing.apply` turns a decision into rows and
side effects under the conversation's compare-and-set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

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


@dataclass(frozen=True)
class InboundView:
    type: str
    text: str | None = None
    from_me: bool = False
    sentiment_urgency: float | None = None  # set when the text reads angry enough to escalate


@dataclass(frozen=True)
class Policy:
    phrases: tuple[str, ...] = ()
    sentiment: object | None = None         # routing.sentiment.SentimentAnalyser, or None (off)
    pending_notice_interval: timedelta = timedelta(minutes=10)
    default_group: str = "support"


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

    @property
    def changes_state(self) -> bool:
        return self.reopened or self.escalation is not None or self.reason == "agent_takeover"


def decide(conv: ConversationView, msg: InboundView, policy: Policy, now: datetime) -> Decision:
    """Route one inbound message given the conversation's current state."""
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
    if not in_cooldown and msg.type in READABLE and msg.sentiment_urgency is not None:
        return Decision(PENDING_AGENT, "queued_for_agent", "sentiment", reopened=reopened,
                        escalation=Escalation("sentiment", urgency=msg.sentiment_urgency,
                                              group=policy.default_group),
                        send_handoff_notice=True, notify=("handoff.requested",))
    if msg.type in NOT_FOR_BOT:
        return Decision(BOT_CONTROLLED, "none", "reopened" if reopened else "inbound",
                        reopened=reopened, cooldown_remaining=remaining)
    return Decision(BOT_CONTROLLED, "bot", "reopened" if reopened else "inbound", bot_turn=True,
                    reopened=reopened, cooldown_remaining=remaining)


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
