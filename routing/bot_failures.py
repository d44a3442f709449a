"""A bot turn that failed, and what the customer gets instead of silence.

A turn sent to the AI branch fails when no reply came within BOT_REPLY_TIMEOUT
(its `deadline_at`, a durable timer: the cron's `handoff_timers` finds due turns
every second) or when its `bot.turn` delivery failed for good (jobs/deliver.py).
Either way, once per turn, under the conversation's compare-and-set
(routing.change):

- the turn is closed, so a late reply is refused (409 `stale_turn`);
- it counts as a bot failure (`bot_failures`, the same count an
  `intent: "fallback"` reply adds to; any other reply starts it again);
- the customer gets BOT_FALLBACK_NOTICE (routing.notices: text in the 24-hour
  window, else its template, else not sent and the audit trail says so);
- at BOT_FAILURE_LIMIT failures in a row the conversation escalates (reason
  `bot_failures`), unless the cooldown after a release holds automatic triggers.

A turn whose control was lost before its deadline (a human took over, or the
conversation closed) is closed quietly, and one whose conversation a person is
typing on waits for them: the bot never talks over a human.
`decide_turn_failure` is the pure decision; every outcome is an audit event
and a counter (routing.counters).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from models import BotTurn, utcnow
from models.bot_turn import DELIVERY_FAILED, SUPERSEDED, TIMEOUT

from .change import Change, Changes, typing_held, view_of
from .decide import bot_may_speak, decide_escalation
from .errors import NotFound
from .escalate import plan_escalation
from .notices import say_notice

log = logging.getLogger(__name__)
BATCH = 200
FAILURE_REASON = "bot_failures"        # the escalation reason, for every kind of bot failure
AUDIT_REASONS = {TIMEOUT: "bot_timeout", DELIVERY_FAILED: "bot_delivery_failed"}

IGNORE, SUPERSEDE, FALLBACK, ESCALATE = "ignore", "supersede", "fallback", "escalate"


@dataclass(frozen=True)
class TurnFailure:
    action: str          # ignore | supersede | fallback | escalate
    failures: int        # the conversation's bot failures in a row afterwards


def decide_turn_failure(*, open_turn: bool, due: bool, bot_holds: bool, failures: int, limit: int,
                        may_escalate: bool) -> TurnFailure:
    """What a failed turn (`open_turn`: neither answered nor closed yet; `due`: its
    deadline passed, or its delivery failed for good) does to its conversation."""
    if not open_turn or not due:
        return TurnFailure(IGNORE, failures)
    if not bot_holds:
        return TurnFailure(SUPERSEDE, failures)
    failures += 1
    if limit_reached(failures, limit) and may_escalate:
        return TurnFailure(ESCALATE, failures)
    return TurnFailure(FALLBACK, failures)


def limit_reached(failures: int, limit: int) -> bool:
    return failures >= limit


def failures_after_reply(failures: int, intent: str | None) -> int:
    """A reply `intent: "fallback"` is one more failure in a row; any other reply ends the run."""
    return failures + 1 if intent == "fallback" else 0


def due_turns(now: datetime) -> list[str]:
    """Turns whose reply deadline has passed (answered and closed turns have none)."""
    rows = (BotTurn.select(BotTurn.id).where(BotTurn.deadline_at < now)
            .order_by(BotTurn.deadline_at).limit(BATCH))
    return [row.id for row in rows]


def turn_timed_out(changes: Changes, turn_id: str) -> bool:
    """The timer of one turn fired; True when it failed the turn now."""
    return fail_turn(changes, turn_id, TIMEOUT)


def fail_turn(changes: Changes, turn_id: str, kind: str, details: dict | None = None) -> bool:
    """The turn failed (`kind`: timeout or delivery_failed); True when this call
    failed it (False: answered, closed, not due, or a human has the conversation)."""
    row = BotTurn.select(BotTurn.conversation).where(BotTurn.id == turn_id).first()
    if row is None:
        return False

    def plan(change: Change) -> bool:
        turn = BotTurn.get_or_none(BotTurn.id == turn_id)
        if turn is None:
            return False
        if turn.conversation_id != change.conv.id:
            raise NotFound("turn")       # moved by a merge (routing.identity) since we looked
        return plan_turn_failure(change, turn, kind, details or {})
    try:
        return changes.run(row.conversation_id, plan)
    except NotFound:       # the conversation was merged into another: the next tick finds the turn there
        log.info("bot turn %s moved to another conversation; its %s is handled there", turn_id, kind)
        return False


def plan_turn_failure(change: Change, turn: BotTurn, kind: str, details: dict) -> bool:
    conv, settings = change.conv, change.settings
    now = utcnow()
    due = kind != TIMEOUT or (turn.deadline_at is not None and turn.deadline_at <= now)
    # A person typing on the conversation is about to answer: the turn waits (its
    # deadline stays) until they send (a claim: superseded) or their lock expires.
    due = due and not typing_held(conv, now)
    decision = decide_turn_failure(
        open_turn=turn.answered_at is None and turn.closed_at is None, due=due,
        bot_holds=bot_may_speak(conv.state, conv.control_epoch, turn.control_epoch),
        failures=conv.bot_failures, limit=settings.BOT_FAILURE_LIMIT,
        may_escalate=decide_escalation(view_of(conv, now), automatic=True).changed)
    if decision.action == IGNORE:
        return False
    closed_as = SUPERSEDED if decision.action == SUPERSEDE else kind
    change.effects.update(BotTurn, {"closed_at": now, "deadline_at": None, "outcome": closed_as},
                          {"id": turn.id, "closed_at": None, "answered_at": None}, must_change_one=True)
    if decision.action == SUPERSEDE:
        change.count("baton_bot_deadlines_cancelled")
        return False
    escalating = decision.action == ESCALATE
    change.set({"bot_failures": decision.failures})
    waited = int((now - turn.created_at).total_seconds())
    change.audit("system", conv.state, conv.state, AUDIT_REASONS[kind], {
        **details, "turn_id": turn.id, "waited_seconds": waited, "failures": decision.failures,
        "limit": settings.BOT_FAILURE_LIMIT})
    change.count("baton_bot_turn_failures", kind)
    # The notice speaks for the bot: while the bot keeps the conversation it is sent only
    # if the bot still holds it then (a person who claims it first cancels it).
    notice = say_notice(change, "BOT_FALLBACK_NOTICE",
                        control_epoch=None if escalating else turn.control_epoch)
    if notice is not None:
        change.audit("system", conv.state, conv.state, "bot_fallback_notice",
                     {"turn_id": turn.id, "message_id": notice.id})
    change.count("baton_bot_fallback_notices", "queued" if notice is not None else "not_sent")
    if escalating:
        plan_escalation(change, reason=FAILURE_REASON, actor="system", automatic=True,
                        note=f"{decision.failures} bot failures in a row (the last: {kind})")
        change.count("baton_bot_failure_escalations")
    log.info("bot turn %s of %s failed (%s): %s", turn.id, conv.id, kind, decision.action)
    return True
