"""API tokens, for admins: list them (never their secrets) and revoke one."""
from __future__ import annotations

from flask import Blueprint, current_app, g

from models import ApiToken
from routing.errors import NotFound
from routing.live import end_streams_of

from .api import errors, query, reply, responds
from .auth import require
from .errors import ApiError
from .idempotency import idempotent
from .schemas import TokenListSchema, TokenQueryArgsSchema, TokenSchema

bp = Blueprint("tokens", __name__, url_prefix="/api/v1/tokens")


@bp.get("")
@responds(200, TokenListSchema)
@errors(401, 403, 422)
@require("admin")
@query(TokenQueryArgsSchema)
def list_tokens(args):
    """API tokens, oldest first (working ones only, unless `revoked=true`)."""
    rows = ApiToken.select()
    if "role" in args:
        rows = rows.where(ApiToken.role == args["role"])
    if not args["revoked"]:
        rows = rows.where(ApiToken.revoked_at.is_null())
    rows = rows.order_by(ApiToken.created_at, ApiToken.id).limit(args["limit"])
    return reply({"items": [row.to_dict() for row in rows], "next_cursor": None})


@bp.delete("/<token_id>")
@responds(200, TokenSchema, "Revoked (already revoked: unchanged); it stops working at once")
@errors(401, 403, codes={404: ("not_found",), 409: ("own_token",)})
@require("admin")
@idempotent
def revoke_token(token_id):
    """Revoke a token: every call made with it from now on is a 401. Not the caller's own: an
    admin cannot lock themselves out by mistake (another admin, or `flask baton token revoke`, can)."""
    if token_id == g.token.id:
        raise ApiError(409, "own_token", "This is the token you are calling with; revoke it with another admin "
                                         "token or `flask --app app baton token revoke ID`.")
    row = ApiToken.revoke(token_id)
    if row is None:
        raise NotFound("token")
    rt = current_app.extensions["baton"]
    end_streams_of(rt.redis, rt.settings.REDIS_PREFIX, [row.id])
    return reply(row.to_dict())

