"""Customers' media files: `GET /api/v1/media/{id}` redirects to the file.

The answer is a 302 to a signed storage URL valid MEDIA_URL_TTL seconds
(storage.signed_url, serving the file with its type and file name), for a
caller who may see the media's conversation. Media the caller may not see
answers 404, exactly like media that does not exist. A file not stored (yet)
answers 409 `media_not_ready` with its `status` in `details`: `pending`
(with Retry-After: try again shortly), `failed` (with the reason) or
`expired` (deleted by MEDIA_RETENTION_DAYS).
"""
from __future__ import annotations

from flask import Blueprint, current_app

from integrations.storage import StorageError
from models import Conversation, Media, Message
from models.media import PENDING, STORED
from routing.errors import NotFound
from routing.visibility import may_see

from .api import errors, reply, responds
from .auth import current_viewer, require
from .errors import ApiError

bp = Blueprint("media", __name__, url_prefix="/api/v1/media")
PENDING_RETRY_AFTER = 2


@bp.get("/<media_id>")
@responds(302, None, "a redirect (`Location`) to the file, signed and valid MEDIA_URL_TTL seconds")
@errors(401, 403, codes={404: ("not_found",), 409: ("media_not_ready",), 503: ("storage_unavailable",)})
@require("bot", "agent")
def get_media(media_id: str):
    """Download a customer's media file: 302 to a short-lived signed URL."""
    row = (Media.select(Media, Conversation.state, Conversation.group, Conversation.assigned_agent_id,
                        Conversation.offered_agent_id)
           .join(Message, on=(Media.message == Message.id))
           .join(Conversation, on=(Message.conversation == Conversation.id))
           .where(Media.id == media_id).objects().first())
    if row is None or not may_see(current_viewer(), state=row.state, group=row.group,
                                  assigned_agent_id=row.assigned_agent_id, offered_agent_id=row.offered_agent_id):
        raise NotFound("media")
    if row.status != STORED:
        details = {"status": row.status, "reason": row.error if row.status != PENDING else None}
        headers = {"Retry-After": str(PENDING_RETRY_AFTER)} if row.status == PENDING else None
        raise ApiError(409, "media_not_ready", f"This media file is {row.status}, not stored.", details, headers)
    rt = current_app.extensions["baton"]
    try:
        url = rt.storage.signed_url(row.storage_key, ttl=rt.settings.MEDIA_URL_TTL,
                                    content_type=row.mime_type or "application/octet-stream",
                                    filename=row.filename, public_base=rt.settings.PUBLIC_BASE_URL)
    except StorageError:
        raise ApiError(503, "storage_unavailable", "Media storage cannot be reached; try again.", None,
                       {"Retry-After": "5"}) from None
    return reply(None, 302, headers={"Location": url, "Cache-Control": "no-store"})
