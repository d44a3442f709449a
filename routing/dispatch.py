"""After a transaction commits: schedule the lanes it asked for and answer
bot turns with the built-in rule bot when no n8n bot is configured."""
from __future__ import annotations

import logging

from bot.rules import reply as rule_bot_reply

from .apply import StaleTurn, accept_bot_reply
from .effects import Effects

log = logging.getLogger(__name__)


def dispatch(rt, effects: Effects) -> None:
    for lane, key in effects.schedules:
        rt.schedule(lane, key)
    for turn in effects.builtin_turns:
        reply = rule_bot_reply(turn)
        try:
            result = accept_bot_reply(rt.settings, reply, actor="builtin-bot")
        except StaleTurn:
            log.info("built-in bot turn %s went stale before it answered", turn["turn_id"])
            continue
        dispatch(rt, result.effects)
