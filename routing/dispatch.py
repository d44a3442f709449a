"""After a transaction commits: schedule the lanes it asked for and answer
bot turns with the built-in rule bot when no n8n bot is configured."""
from __future__ import annotations

import logging

from bot.rules import reply as rule_bot_reply

from models import BotTurn, Message, utcnow

from .apply import CooldownActive, StaleTurn, TurnAnswered, accept_bot_reply, load_conversation, turn_body
from .effects import Effects

log = logging.getLogger(__name__)


def dispatch(rt, effects: Effects) -> None:
    for lane, key in effects.schedules:
        rt.schedule(lane, key)
    for turn in effects.builtin_turns:
        reply = rule_bot_reply(turn, rt.policy.phrases)
        try:
            result = accept_bot_reply(rt.settings, reply, actor="builtin-bot", single_answer=True)
        except TurnAnswered:
            log.info("built-in bot turn %s was already answered", turn["turn_id"])
            continue
        except (StaleTurn, CooldownActive):
            log.info("built-in bot turn %s went stale before it answered", turn["turn_id"])
            BotTurn.update(answered_at=utcnow()).where(BotTurn.id == turn["turn_id"]).execute()
            continue
        dispatch(rt, result.effects)


def answer_lost_builtin_turn(rt, turn_id: str) -> None:
    """Answer a built-in-bot turn whose answer was lost with a crashed worker
    (the turn row is durable; the in-memory hand-off to the rule bot is not)."""
    turn = BotTurn.get_by_id(turn_id)
    conv = load_conversation(turn.conversation_id)
    message = Message.get_or_none(Message.id == turn.message_id)
    if message is None:
        BotTurn.update(answered_at=utcnow()).where(BotTurn.id == turn.id).execute()
        return
    body = {"event": "bot.turn", **turn_body(rt.settings, conv, message, turn)}
    dispatch(rt, Effects(builtin_turns=[body]))
    # A turn that went stale is closed too, so the sweep does not retry it forever.
    BotTurn.update(answered_at=utcnow()).where((BotTurn.id == turn.id) & BotTurn.answered_at.is_null()).execute()
