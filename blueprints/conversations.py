"""Conversations for bots and agents: list, read, history, escalate."""
from __future__ import annotations

import base64
from datetime import datetime

import orjson
from flask import Blueprint, current_app, g

from models import PENDING_AGENT, Channel, Contact, Conversation, Message
from models.base import parse_time
from routing.change import load_conversation
from routing.errors import NotFound
from routing.escalate import escalate as escalate_conversation
from routing.visibility import may_see

from .api import body, errors, query, reply, responds
from .auth import current_viewer, require
from .errors import ApiError
from .idempotency import idempotent
from .schemas import (ConversationListSchema, ConversationQueryArgsSchema, ConversationSchema,
                      EscalatedConversationSchema, EscalateSchema, MessageListSchema, MessageQueryArgsSchema)

bp = Blueprint("conversations", __name__, url_prefix="/api/v1/conversations")


def encode_cursor(*parts) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list:
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except Exception:
        parts = None
    if not isinstance(parts, list) or len(parts) != size:
        raise ApiError(400, "bad_cursor", "The cursor is not one this API handed out.")
    return parts


def _visible(conv: Conversation) -> bool:
    return may_see(current_viewer(), state=conv.state, group=conv.group,
                   assigned_agent_id=conv.assigned_agent_id, offered_agent_id=conv.offered_agent_id)


def visible_conversation(conversation_id: str) -> Conversation:
    conv = load_conversation(conversation_id)
    if conv is None:
        raise NotFound("conversation")
    if not _visible(conv):
        raise ApiError(403, "forbidden", "This conversation belongs to another agent.")
    return conv


@bp.get("")
@responds(200, ConversationListSchema)
@errors(401, 403, 422, codes={400: ("bad_cursor", "bad_time")})
@require("bot", "agent")
@query(ConversationQueryArgsSchema)
def list_conversations(args):
    """Conversations, newest activity first."""
    rows = (Conversation.select(Conversation, Channel, Contact)
            .join(Channel, on=(Conversation.channel == Channel.id))
            .switch(Conversation)
            .join(Contact, on=(Conversation.contact == Contact.id)))
    if "state" in args:
        rows = rows.where(Conversation.state == args["state"])
    if "group" in args:
        rows = rows.where(Conversation.group == args["group"])
    if "contact" in args:
        rows = rows.where((Contact.wa_id == args["contact"]) | (Contact.user_id == args["contact"]))
    assigned = args.get("assigned")
    if assigned == "none":
        rows = rows.where(Conversation.assigned_agent_id.is_null())
    elif assigned == "me":
        rows = rows.where(Conversation.assigned_agent_id == (g.token.agent_id or ""))
    elif assigned:
        rows = rows.where(Conversation.assigned_agent_id == assigned)
    viewer = current_viewer()
    if not viewer.sees_all:
        mine = viewer.agent_id or ""
        rows = rows.where(((Conversation.state == PENDING_AGENT) & Conversation.group.in_(list(viewer.groups) or [""]))
                          | (Conversation.assigned_agent_id == mine) | (Conversation.offered_agent_id == mine))
    if "cursor" in args:
        updated, last_id = decode_cursor(args["cursor"], 2)
        moment = _parse_time(updated)
        rows = rows.where((Conversation.updated_at < moment)
                          | ((Conversation.updated_at == moment) & (Conversation.id < last_id)))
    limit = args["limit"]
    page = list(rows.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit + 1))
    next_cursor = None
    if len(page) > limit:
        page = page[:limit]
        next_cursor = encode_cursor(page[-1].updated_at.isoformat(), page[-1].id)
    return reply({"items": [c.to_dict() for c in page], "next_cursor": next_cursor})


@bp.get("/<conversation_id>")
@responds(200, ConversationSchema)
@errors(401, 403, codes={404: ("not_found",)})
@require("bot", "agent")
def get_conversation(conversation_id):
    """One conversation."""
    return reply(visible_conversation(conversation_id).to_dict())


@bp.get("/<conversation_id>/messages")
@responds(200, MessageListSchema)
@errors(401, 403, 422, codes={400: ("bad_time",), 404: ("not_found",)})
@require("bot", "agent")
@query(MessageQueryArgsSchema)
def list_messages(conversation_id, args):
    """History in `sent_at` order; `after`/`before` take a message id or an ISO time."""
    conv = visible_conversation(conversation_id)
    rows = Message.select().where(Message.conversation == conv.id)
    if "after" in args:
        moment, mid = _position(conv.id, args["after"])
        rows = rows.where((Message.sent_at > moment) | ((Message.sent_at == moment) & (Message.id > mid)))
    if "before" in args:
        moment, mid = _position(conv.id, args["before"], before=True)
        rows = rows.where((Message.sent_at < moment) | ((Message.sent_at == moment) & (Message.id < mid)))
    limit = args["limit"]
    page = list(rows.order_by(Message.sent_at, Message.id).limit(limit + 1))
    next_cursor = None
    if len(page) > limit:
        page = page[:limit]
        next_cursor = page[-1].id
    return reply({"items": [m.to_dict() for m in page], "next_cursor": next_cursor})


def _position(conversation_id: str, value: str, before: bool = False) -> tuple[datetime, str]:
    if value.startswith("m_"):
        message = Message.get_or_none((Message.id == value) & (Message.conversation == conversation_id))
        if message is None:
            raise NotFound("message", f"No message {value} in this conversation.")
        return message.sent_at, message.id
    # A bare time: everything at that instant counts as after it (or before it).
    return _parse_time(value), ("" if not before else "\uffff")


def _parse_time(value: str) -> datetime:
    try:
        return parse_time(value)
    except ValueError:
        raise ApiError(400, "bad_time", f"{value!r} is neither a message id nor an ISO 8601 time.") from None


@bp.post("/<conversation_id>/escalate")
@responds(200, EscalatedConversationSchema, "The conversation (changed: false when a human already had it)")
@errors(400, 401, 403, 422, codes={404: ("not_found",), 503: ("conversation_busy",)})
@require("bot", "agent")
@idempotent
@body(EscalateSchema)
def escalate(conversation_id, data):
    """Hand the conversation to the humans (→ PENDING_AGENT)."""
    visible_conversation(conversation_id)
    rt = current_app.extensions["baton"]
    result = escalate_conversation(rt.changes, conversation_id, reason=data["reason"],
                                   actor=f"{g.token.role}:{g.token.name}", urgency=data.get("urgency"),
                                   group=data.get("group"), note=data.get("note"))
    return reply({**result.conversation.to_dict(), "changed": result.changed})


