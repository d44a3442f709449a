"""Conversations for bots and agents: list, read, history, escalate."""
from __future__ import annotations

import base64
from datetime import datetime

import orjson
from flask import Blueprint, current_app, g
from peewee import NodeList

from models import PENDING_AGENT, Channel, Contact, Conversation, Message
from models.base import isoformat, parse_time
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
    # Field by field: every part Baton hands out is a short string without NUL (a time, an id).
    if (not isinstance(parts, list) or len(parts) != size
            or not all(isinstance(p, str) and 0 < len(p) <= 64 and "\x00" not in p for p in parts)):
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
        try:
            moment = parse_time(updated)
        except (ValueError, OverflowError):
            raise ApiError(400, "bad_cursor", "The cursor is not one this API handed out.") from None
        rows = rows.where((Conversation.updated_at < moment)
                          | ((Conversation.updated_at == moment) & (Conversation.id < last_id)))
    limit = args["limit"]
    page = list(rows.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit + 1))
    next_cursor = None
    if len(page) > limit:
        page = page[:limit]
        next_cursor = encode_cursor(page[-1].updated_at.isoformat(), page[-1].id)
    last = last_messages(page)
    return reply({"items": [{**c.to_dict(), "last_message": last.get(c.id)} for c in page],
                  "next_cursor": next_cursor})


PREVIEW_CHARS = 200


def last_messages(conversations: list[Conversation]) -> dict[str, dict]:
    """The last message of each conversation, for the list's preview, in one
    query: `conversation.message_seq` is the seq of a conversation's last
    message, so each is one lookup in the (conversation, seq) unique index."""
    wanted = [c for c in conversations if c.message_seq]
    if not wanted:
        return {}
    # A flat OR of (conversation, seq) pairs: both databases answer it with one
    # index probe per pair (a nested one would be as deep as the page is long).
    condition = NodeList([(Message.conversation == c.id) & (Message.seq == c.message_seq) for c in wanted],
                         glue=" OR ", parens=True)
    rows = Message.select(Message.id, Message.conversation, Message.seq, Message.direction, Message.sender,
                          Message.agent_id, Message.type, Message.text, Message.sent_at).where(condition)
    return {m.conversation_id: preview(m) for m in rows}


def preview(message: Message) -> dict:
    text = message.text
    if text is not None and len(text) > PREVIEW_CHARS:
        text = text[:PREVIEW_CHARS - 1] + "…"
    return {"id": message.id, "seq": message.seq, "direction": message.direction, "sender": message.sender,
            "agent_id": message.agent_id, "type": message.type, "text": text,
            "sent_at": isoformat(message.sent_at)}


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
    """History in `seq` order (the order Baton stored the messages); `after`/`before`
    take a message id, a `seq` or an ISO time."""
    conv = visible_conversation(conversation_id)
    rows = Message.select().where(Message.conversation == conv.id)
    if "after" in args:
        rows = rows.where(_bound(conv.id, args["after"], after=True))
    if "before" in args:
        rows = rows.where(_bound(conv.id, args["before"], after=False))
    limit = args["limit"]
    page = list(rows.order_by(Message.seq).limit(limit + 1))
    next_cursor = None
    if len(page) > limit:
        page = page[:limit]
        next_cursor = page[-1].id
    return reply({"items": [m.to_dict() for m in page], "next_cursor": next_cursor})


def _bound(conversation_id: str, value: str, after: bool):
    """The condition `after`/`before` puts on the history: past a message (by
    id or seq) in seq order, or, for a bare time, everything written at that
    instant or since (before it)."""
    if value.startswith("m_"):
        seq = (Message.select(Message.seq)
               .where((Message.id == value) & (Message.conversation == conversation_id)).scalar())
        if seq is None:
            raise NotFound("message", f"No message {value} in this conversation.")
        return Message.seq > seq if after else Message.seq < seq
    if value.isascii() and value.isdigit():
        seq = min(int(value), 2**31 - 1)
        return Message.seq > seq if after else Message.seq < seq
    moment = _parse_time(value)
    return Message.sent_at >= moment if after else Message.sent_at <= moment


def _parse_time(value: str) -> datetime:
    """An ISO 8601 time as naive UTC; one whose offset carries it past year 1 or
    9999 (`0001-01-01T00:00:00+14:00`) is clamped to the nearest representable instant."""
    try:
        return parse_time(value)
    except OverflowError:
        return datetime.min if datetime.fromisoformat(_plain(value)).year < 5000 else datetime.max
    except ValueError:
        raise ApiError(400, "bad_time", f"{value!r} is neither a message id nor an ISO 8601 time.") from None


def _plain(value: str) -> str:
    return value.strip().replace("Z", "+00:00").replace("z", "+00:00")


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


