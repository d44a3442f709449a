"""Bot turns and bot replies, behind the turn guard.

A `bot.turn` records the `control_epoch` it was issued in. A reply is
accepted only while the bot still holds that control (`bot_may_speak`) and
the turn is not closed (it failed: routing.bot_failures), and the outbound
lane checks again just before sending (`outbound_allowed`), so a bot can
never talk over a human.

A turn for the AI branch carries a reply deadline (BOT_REPLY_TIMEOUT) and
goes through the circuit breaker on N8N_BOT_URL (routing.bot_breaker): while
it is open, new turns go to BOT_FALLBACK instead.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta

from models import BotTurn, Conversation, Message, isoformat, new_id, utcnow
from models.prepared import Prepared

from .bot_breaker import DELIVER, PROBE
from .bot_failures import FAILURE_REASON, failures_after_reply, limit_reached
from .change import Change, Changes, view_of
from .effects import TYPING_SECONDS
from .decide import Policy, bot_may_speak, decide_escalation
from .errors import CooldownActive, NotFound, StaleTurn
from .escalate import plan_escalation
from .live import live_event
from .notifications import turn_fields
from .visibility import snapshot

log = logging.getLogger(__name__)


AI_BRANCH, BUILTIN, AGENTS = "ai_branch", "builtin", "agents"


def issue_bot_turn(change: Change, policy: Policy, message: Message) -> None:
    """Ask the bot to answer `message`: the AI branch when N8N_BOT_URL is
    set (and its breaker lets the turn through), else the built-in bot, whose
    answer commits with the routing (a message is routed and answered together
    or not at all), or, with BOT_FALLBACK=agents while the breaker is open,
    the humans' queue."""
    settings, conv = change.settings, change.conv
    route = bot_route(change, policy, message)
    if route == AGENTS:
        reroute_to_agents(change, message)
        return
    mode = (conv.metadata or {}).get("mode", "normal")
    now = utcnow()
    deadline = now + timedelta(seconds=settings.BOT_REPLY_TIMEOUT) if route == AI_BRANCH else None
    turn = BotTurn(id=new_id("t"), conversation=conv.id, message_id=message.id,
                   control_epoch=conv.control_epoch, mode=mode, created_at=now, deadline_at=deadline)
    change.effects.insert(turn)
    fields = turn_fields(settings, conv, message, turn)
    if route == AI_BRANCH:
        change.deliver(settings.N8N_BOT_URL, "bot.turn", fields)
        if settings.BOT_TYPING_INDICATOR and message.direction == "in" and message.provider_message_id:
            show_bot_typing(change, message)
        return
    if policy.bot is None:
        return
    reply = policy.bot({"event": "bot.turn", **fields}, policy.phrases)
    try:
        apply_bot_reply(change, turn, reply, "builtin-bot")
    except CooldownActive:           # refused before anything was written
        log.info("built-in bot asked to escalate %s during its cooldown", conv.id)


def bot_route(change: Change, policy: Policy, message: Message) -> str:
    """Who answers this turn: the AI branch, the built-in bot, or (breaker open,
    BOT_FALLBACK=agents) the humans. Taking the half-open probe, and a turn sent
    elsewhere by the open breaker, are audit events and counted."""
    settings, conv = change.settings, change.conv
    if not settings.N8N_BOT_URL:
        return BUILTIN
    if policy.breaker is None:
        return AI_BRANCH
    decision, breaker = policy.breaker.admit(time.time())
    if decision == DELIVER:
        return AI_BRANCH
    if decision == PROBE:
        # If this change does not commit, the next turn may probe at once.
        change.on_rollback(lambda: policy.breaker.release_probe(breaker.since))
        change.audit("system", conv.state, conv.state, "bot_breaker_half_open",
                     {"message_id": message.id, "failures": breaker.failures})
        change.count("baton_bot_breaker_transitions", "half_open")
        return AI_BRANCH
    route = AGENTS if settings.BOT_FALLBACK == "agents" else BUILTIN
    change.audit("system", conv.state, conv.state, "bot_turn_rerouted",
                 {"message_id": message.id, "to": settings.BOT_FALLBACK, "breaker": breaker.state})
    change.count("baton_bot_turns_rerouted", settings.BOT_FALLBACK)
    return route


def reroute_to_agents(change: Change, message: Message) -> None:
    """The AI branch is unavailable and BOT_FALLBACK=agents: the message goes
    straight to the humans' queue (an escalation no cooldown suppresses: nobody
    else would answer it)."""
    plan_escalation(change, reason="bot_unavailable", actor="system", automatic=False,
                    note="the AI branch is unavailable (circuit breaker open)")
    change.effects.update(Message, {"routed_to": "queued_for_agent"}, {"id": message.id})
    message.routed_to = "queued_for_agent"


def show_bot_typing(change: Change, message: Message) -> None:
    """The AI branch is thinking: after the commit, the outbound lane marks the
    customer's message read and shows the typing indicator (before anything
    else it sends the customer), and agents watching see the bot typing."""
    conv = change.conv
    change.effects.typing.append((conv.id, message.provider_message_id))
    change.effects.schedule("outbound", conv.id)
    change.effects.live.append(live_event("typing", conv.id, {
        "agent_id": None, "bot": True, "typing": True,
        "expires_at": isoformat(utcnow() + timedelta(seconds=TYPING_SECONDS))}, snapshot(conv)))


@dataclass
class BotReplyResult:
    status: str                      # queued | escalated
    conversation: Conversation
    message: Message | None


def accept_bot_reply(changes: Changes, reply: dict, actor: str = "bot") -> BotReplyResult:
    """Apply a bot's answer to a turn, refusing it (StaleTurn) when control
    changed. A bot may answer one turn with several messages."""
    def plan(change: Change) -> BotReplyResult:
        turn = BotTurn.get_or_none((BotTurn.id == reply["turn_id"]) & (BotTurn.conversation == change.conv.id))
        if turn is None:
            raise NotFound("turn")
        return apply_bot_reply(change, turn, reply, actor)
    return changes.run(reply["conversation_id"], plan)


def apply_bot_reply(change: Change, turn: BotTurn, reply: dict, actor: str) -> BotReplyResult:
    settings, conv = change.settings, change.conv
    if not bot_may_speak(conv.state, conv.control_epoch, turn.control_epoch):
        raise StaleTurn(turn.id)
    if turn.closed_at is not None:
        raise StaleTurn(turn.id, closed=turn.outcome)
    if reply.get("escalate") and not decide_escalation(view_of(conv), automatic=True).changed:
        raise CooldownActive(conv.cooldown_remaining)   # the turn guard passed: the bot holds it
    metadata = dict(conv.metadata or {})
    metadata.update(reply.get("metadata") or {})
    if reply.get("intent"):
        metadata["last_intent"] = reply["intent"]
    if reply.get("language"):
        metadata["preferred_language"] = reply["language"]
    failures = failures_after_reply(conv.bot_failures, reply.get("intent"))
    # Always compare-and-set, even with nothing to change: a handoff committed
    # after we read the conversation (or the turn's deadline failing it) then
    # makes this reply a clean 409.
    change.set({"metadata": metadata, "bot_failures": failures})
    change.effects.update(BotTurn, {"answered_at": utcnow(), "deadline_at": None}, {"id": turn.id})
    _answered_earlier_turns(change, turn)
    if failures:
        change.count("baton_bot_turn_failures", "fallback")
    if (not reply.get("escalate") and limit_reached(failures, settings.BOT_FAILURE_LIMIT)
            and decide_escalation(view_of(conv), automatic=True).changed):
        # The bot keeps failing: its answer goes out, then a human takes over.
        message = None
        if reply.get("text"):
            message = change.say(sender="bot", text=reply["text"], turn_id=turn.id)
        plan_escalation(change, reason=FAILURE_REASON, actor=actor, group=reply.get("group"),
                        note=f"{failures} bot failures in a row (the last: fallback)", automatic=True)
        change.count("baton_bot_failure_escalations")
        return BotReplyResult("escalated", conv, message)
    if reply.get("escalate"):
        plan_escalation(change, reason=reply.get("reason") or "bot", actor=actor, urgency=reply.get("urgency"),
                        group=reply.get("group"), automatic=True, notice_text=reply.get("text"))
        return BotReplyResult("escalated", conv, None)
    message = change.say(sender="bot", text=reply["text"], turn_id=turn.id, control_epoch=turn.control_epoch)
    return BotReplyResult("queued", conv, message)


def _answered_earlier_turns(change: Change, turn: BotTurn) -> None:
    """The bot answering a turn answers the conversation up to it: turns issued
    before it (the customer wrote twice, the AI branch answered the latest) keep
    no deadline, so no fallback notice follows a real answer. They stay open to
    a reply of their own; turns issued after it keep theirs."""
    sql, params = _EARLIER_TURNS.statement(turn.conversation_id, turn.id, turn.created_at)
    change.effects.writes.append((sql, tuple(params), False, None))


# Rendered once per database: peewee building it on every bot reply cost the
# inbound pump 12 % of its time (bench/profiles/e2e-300-sqlite-rq0.txt).
_EARLIER_TURNS = Prepared(lambda conversation_id, turn_id, created_at: (
    BotTurn.update(deadline_at=None)
    .where((BotTurn.conversation == conversation_id) & (BotTurn.id != turn_id)
           & (BotTurn.created_at <= created_at) & BotTurn.deadline_at.is_null(False))))


def outbound_allowed(message: Message, conv: Conversation) -> bool:
    """At send time: a bot reply (or a notice sent for the bot, BOT_FALLBACK_NOTICE)
    goes out only while the control it was queued under still holds."""
    if message.control_epoch is None:
        return True
    return bot_may_speak(conv.state, conv.control_epoch, message.control_epoch)
