"""What agents do to a conversation: claim, messages, typing, release, transfer, close."""
from __future__ import annotations

from flask import Blueprint, current_app, g

from routing import handoff

from .api import body, errors, reply, responds
from .auth import current_viewer, require
from .conversations import visible_conversation
from .idempotency import idempotent
from .schemas import (AgentMessageSchema, CloseSchema, ConversationSchema, QueuedMessageSchema, ReleaseSchema,
                      TransferSchema, TypingSchema)
from .templates import check_template

bp = Blueprint("handoff", __name__, url_prefix="/api/v1/conversations")


def _actor() -> handoff.Actor:
    current_viewer()
    return handoff.Actor(agent=g.agent, role=g.token.role)


def _rt():
    return current_app.extensions["baton"]


@bp.post("/<conversation_id>/claim")
@responds(200, ConversationSchema, "Assigned to the caller (AGENT_CONTROLLED)")
@errors(401, codes={403: ("forbidden", "not_an_agent"), 404: ("not_found",),
                    409: ("wrong_state", "already_assigned", "at_capacity"), 503: ("conversation_busy",)})
@require("agent")
@idempotent
def claim(conversation_id):
    """Take a waiting conversation (→ AGENT_CONTROLLED, assigned to the caller)."""
    visible_conversation(conversation_id)
    rt = _rt()
    result = handoff.claim(rt.changes, rt.reservations, conversation_id, _actor())
    return reply(result.conversation.to_dict())


@bp.post("/<conversation_id>/messages")
@responds(202, QueuedMessageSchema, "Queued for sending, in order")
@errors(400, 401, codes={403: ("forbidden", "not_an_agent", "not_assigned"), 404: ("not_found",),
                         409: ("wrong_state", "already_assigned", "at_capacity"),
                         422: ("unknown_media", "caption_not_supported", "outside_customer_service_window", "unknown_template",
                               "bad_template_components"),
                         503: ("conversation_busy",)})
@require("agent")
@idempotent
@body(AgentMessageSchema)
def send_message(conversation_id, data):
    """Send the customer a message as the agent (replying to an offer claims it)."""
    visible_conversation(conversation_id)
    if "template" in data:
        check_template(data["template"])
    rt = _rt()
    result = handoff.send(rt.changes, rt.reservations, conversation_id, _actor(),
                                text=data.get("text") or data.get("caption"), template=data.get("template"),
                                media_id=data.get("media_id"))
    return reply({"message": result.message.to_dict()}, 202)


@bp.post("/<conversation_id>/typing")
@responds(204, None, "Typing noted (expires after AGENT_TYPING_TTL seconds)")
@errors(400, 401, 422, codes={403: ("forbidden", "not_an_agent", "not_assigned"), 404: ("not_found",),
                              409: ("wrong_state",), 503: ("conversation_busy",)})
@require("agent")
@idempotent
@body(TypingSchema)
def typing(conversation_id, data):
    """Show the customer's watchers that you are typing; on a bot conversation it holds the bot."""
    visible_conversation(conversation_id)
    handoff.typing(_rt().changes, conversation_id, _actor(), data["typing"])
    return reply(None, 204)


@bp.post("/<conversation_id>/release")
@responds(200, ConversationSchema, "Back with the bot (BOT_CONTROLLED, cooldown set)")
@errors(400, 401, 422, codes={403: ("forbidden", "not_assigned"), 404: ("not_found",),
                              409: ("wrong_state",), 503: ("conversation_busy",)})
@require("agent")
@idempotent
@body(ReleaseSchema, optional=True)
def release(conversation_id, data):
    """Hand the conversation back to the bot."""
    visible_conversation(conversation_id)
    result = handoff.release(_rt().changes, conversation_id, _actor(), note=data.get("note"))
    return reply(result.conversation.to_dict())


@bp.post("/<conversation_id>/transfer")
@responds(200, ConversationSchema, "Re-offered (PENDING_AGENT)")
@errors(400, 401, 422, codes={403: ("forbidden", "not_assigned"), 404: ("not_found",),
                              409: ("wrong_state", "agent_unavailable", "agent_at_capacity"),
                              503: ("conversation_busy",)})
@require("agent")
@idempotent
@body(TransferSchema)
def transfer(conversation_id, data):
    """Re-offer the conversation to another agent or group."""
    visible_conversation(conversation_id)
    rt = _rt()
    result = handoff.transfer(rt.changes, rt.reservations, conversation_id, _actor(),
                                    agent_id=data.get("agent_id"), group=data.get("group"))
    return reply(result.conversation.to_dict())


@bp.post("/<conversation_id>/close")
@responds(200, ConversationSchema, "Closed")
@errors(400, 401, 422, codes={403: ("forbidden", "not_assigned"), 404: ("not_found",),
                              409: ("wrong_state",), 503: ("conversation_busy",)})
@require("agent")
@idempotent
@body(CloseSchema, optional=True)
def close(conversation_id, data):
    """Close the conversation (a new customer message reopens it with the bot)."""
    visible_conversation(conversation_id)
    result = handoff.close(_rt().changes, conversation_id, _actor(), reason=data.get("reason"))
    return reply(result.conversation.to_dict())
