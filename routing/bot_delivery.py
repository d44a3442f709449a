"""What the outcome of a `bot.turn` delivery to the AI branch means for the bot
(jobs/deliver.py calls these after each attempt).

Every attempt tells the circuit breaker (routing.bot_breaker) whether the AI
branch took the turn; the breaker opening (or closing) is an audit event on
the conversation whose delivery made it so, and counted. A delivery that
failed for good fails its turn exactly as a missed deadline does
(routing.bot_failures): the customer is not left waiting for a reply that
cannot come."""
from __future__ import annotations

import logging
import time

import orjson
from redis.exceptions import RedisError

from models import Delivery
from models.bot_turn import DELIVERY_FAILED

from .bot_breaker import CLOSED, OPEN, BotBreaker, transition
from .bot_failures import fail_turn
from .change import Change, Changes
from .errors import ContendedConversation, NotFound

log = logging.getLogger(__name__)
AUDIT_REASONS = {OPEN: "bot_breaker_opened", CLOSED: "bot_breaker_closed"}


def delivery_attempted(changes: Changes, breaker: BotBreaker | None, delivery: Delivery, delivered: bool,
                       error: str | None = None) -> str | None:
    """Tell the breaker; returns the state it entered, if it changed."""
    if breaker is None:
        return None
    try:
        before, after = breaker.record(delivered, time.time())
    except RedisError as exc:
        log.warning("bot breaker not told of delivery %s (%s)", delivery.id, exc)
        return None
    entered = transition(before, after)
    if entered in AUDIT_REASONS and delivery.conversation_id:
        details = {"delivery_id": delivery.id, "failures": after.failures if entered == OPEN else before.failures,
                   "from": before.state}
        if error:
            details["error"] = error[:200]
        _audit(changes, delivery.conversation_id, entered, details)
    if entered:
        log.warning("bot breaker on %s: %s -> %s", delivery.url, before.state, entered)
    return entered


def _audit(changes: Changes, conversation_id: str, entered: str, details: dict) -> None:
    def plan(change: Change) -> None:
        conv = change.conv
        change.audit("system", conv.state, conv.state, AUDIT_REASONS[entered], details)
        change.count("baton_bot_breaker_transitions", entered)
    try:
        changes.run(conversation_id, plan)
    except (NotFound, ContendedConversation) as exc:
        # The breaker's state is in Redis already; only this audit entry is lost.
        log.warning("breaker %s not audited on conversation %s: %s", entered, conversation_id, exc.code)


def delivery_failed_for_good(changes: Changes, delivery: Delivery) -> bool:
    """The `bot.turn` will never reach the AI branch: its turn fails now (once)."""
    turn_id = (orjson.loads(delivery.body) or {}).get("turn_id")
    if not turn_id:
        return False
    return fail_turn(changes, turn_id, DELIVERY_FAILED,
                     {"delivery_id": delivery.id, "attempts": delivery.attempts,
                      "error": (delivery.last_error or "")[:200]})
