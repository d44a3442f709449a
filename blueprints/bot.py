"""POST /api/v1/bot/replies: the AI branch answers a turn, behind the turn guard."""
from __future__ import annotations

from flask import Blueprint, current_app

from routing.bot_turns import accept_bot_reply

from .api import body, errors, reply, responds
from .auth import require
from .idempotency import idempotent
from .schemas import BotReplyResultSchema, BotReplySchema

bp = Blueprint("bot", __name__, url_prefix="/api/v1/bot")


@bp.post("/replies")
@responds(202, BotReplyResultSchema, "Reply queued for sending")
@responds(200, BotReplyResultSchema, "The bot escalated; a human takes over")
@errors(400, 401, 403, 422, codes={404: ("not_found",), 409: ("stale_turn", "cooldown_active"),
                                   503: ("conversation_busy",)})
@require("bot")
@idempotent
@body(BotReplySchema)
def post_reply(data):
    """Answer a bot turn (refused with 409 stale_turn once control changed)."""
    rt = current_app.extensions["baton"]
    result = accept_bot_reply(rt.changes, data, actor="bot")
    payload = {"status": result.status,
               "message": result.message.to_dict() if result.message else None}
    return reply(payload, 202 if result.status == "queued" else 200)
