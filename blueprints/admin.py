"""Admin views: the sandbox outbox, n8n deliveries (list and replay) and dead letters (list and retry)."""
from __future__ import annotations

from flask import Blueprint, current_app

from models import DeadLetter, Delivery, Message, OutboxEntry
from routing import dead_letters
from routing.errors import NotFound

from .api import errors, query, reply, responds
from .auth import require
from .errors import ApiError
from .idempotency import idempotent
from .schemas import (DeadLetterListSchema, DeadLetterQueryArgsSchema, DeadLetterSchema, DeliveryListSchema,
                      DeliveryQueryArgsSchema, DeliverySchema, OutboxListSchema, OutboxQueryArgsSchema)

bp = Blueprint("admin", __name__, url_prefix="/api/v1/admin")


@bp.get("/outbox")
@responds(200, OutboxListSchema)
@errors(401, 403, 422)
@require("admin")
@query(OutboxQueryArgsSchema)
def outbox(args):
    """What the sandbox provider "sent", newest last."""
    rows = list(OutboxEntry.select().order_by(OutboxEntry.created_at.desc(), OutboxEntry.id.desc())
                .limit(args["limit"]))
    return reply({"items": [r.to_dict() for r in reversed(rows)], "next_cursor": None})


@bp.get("/deliveries")
@responds(200, DeliveryListSchema)
@errors(401, 403, 422)
@require("admin")
@query(DeliveryQueryArgsSchema)
def deliveries(args):
    """n8n event deliveries, newest first (`?status=failed` for the failed list)."""
    rows = Delivery.select()
    if "status" in args:
        rows = rows.where(Delivery.status == args["status"])
    rows = rows.order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(args["limit"])
    return reply({"items": [r.to_dict() for r in rows], "next_cursor": None})


@bp.post("/deliveries/<delivery_id>/replay")
@responds(200, DeliverySchema, "Queued again with a fresh retry budget")
@errors(401, 403, codes={404: ("not_found",), 409: ("already_pending",)})
@require("admin")
@idempotent
def replay(delivery_id):
    """Send a delivery again (normally one from the failed list)."""
    from jobs.deliver import replay_delivery

    delivery = Delivery.get_or_none(Delivery.id == delivery_id)
    if delivery is None:
        raise NotFound("delivery")
    if delivery.status == "pending":
        raise ApiError(409, "already_pending", "This delivery is already waiting to be sent.")
    return reply(replay_delivery(delivery_id, current_app.extensions["baton"]).to_dict())


def dead_letter_view(letter: DeadLetter, messages: dict[str, Message]) -> dict:
    message = messages.get(letter.message_id)
    return {**letter.to_dict(), "message": message.to_dict() if message is not None else None}


@bp.get("/dead-letters")
@responds(200, DeadLetterListSchema)
@errors(401, 403, 422)
@require("admin")
@query(DeadLetterQueryArgsSchema)
def dead_letter_list(args):
    """Inbound messages set aside after ROUTE_MAX_ATTEMPTS failed routing attempts, newest first."""
    rows = DeadLetter.select()
    if args["status"] == "waiting":
        rows = rows.where(DeadLetter.retried_at.is_null())
    elif args["status"] == "retried":
        rows = rows.where(DeadLetter.retried_at.is_null(False))
    rows = list(rows.order_by(DeadLetter.created_at.desc(), DeadLetter.id.desc()).limit(args["limit"]))
    messages = {m.id: m for m in Message.select().where(Message.id.in_([r.message_id for r in rows]))} if rows else {}
    return reply({"items": [dead_letter_view(r, messages) for r in rows], "next_cursor": None})


@bp.post("/dead-letters/<dead_letter_id>/retry")
@responds(200, DeadLetterSchema, "Sent back to routing as its conversation's next message")
@errors(401, 403, codes={404: ("not_found",), 409: ("already_retried",)})
@require("admin")
@idempotent
def dead_letter_retry(dead_letter_id):
    """Route a dead letter's message again, with a fresh attempt budget."""
    letter = dead_letters.retry(current_app.extensions["baton"].changes, dead_letter_id)
    message = Message.get_or_none(Message.id == letter.message_id)
    return reply(dead_letter_view(letter, {message.id: message} if message else {}))
