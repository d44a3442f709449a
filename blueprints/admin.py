"""Admin views: the sandbox outbox and n8n deliveries (list and replay)."""
from __future__ import annotations

from flask import Blueprint, current_app

from models import Delivery, OutboxEntry
from routing.errors import NotFound

from .api import errors, query, reply, responds
from .auth import require
from .errors import ApiError
from .idempotency import idempotent
from .schemas import DeliveryListSchema, DeliveryQueryArgsSchema, DeliverySchema, OutboxListSchema, \
    OutboxQueryArgsSchema

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
