"""Media files: `GET /api/v1/media/{id}` redirects to the file; `POST /api/v1/media` uploads one.

The answer is a 302 to a signed storage URL valid MEDIA_URL_TTL seconds
(storage.signed_url, serving the file with its type and file name), for a
caller who may see the media's conversation. Media the caller may not see
answers 404, exactly like media that does not exist. A file not stored (yet)
answers 409 `media_not_ready` with its `status` in `details`: `pending`
(with Retry-After: try again shortly), `failed` (with the reason) or
`expired` (deleted by MEDIA_RETENTION_DAYS). `GET /api/v1/media/{id}/link`
answers the same signed URL as JSON (`{url, expires_at}`), for a browser that
cannot read a redirect's Location (the console).

An upload (multipart, part `file`, optional `type`) is checked before anything
is kept: its kind and MIME type must be ones WhatsApp sends and its first bytes
must say it is that type (routing.uploads), it must be within its kind's limit
(413) and the request within MEDIA_UPLOAD_MAX_BYTES (413 before it is read).
The bytes go to storage under their content key (identical files are stored
once); the answer is the new `out` media record, usable as `media_id` in
`POST /conversations/{id}/messages`. Until it is sent, only its uploader may
download it.
"""
from __future__ import annotations

import hashlib
import time

from flask import Blueprint, current_app, g, request
from peewee import JOIN
from redis.exceptions import RedisError

from integrations.storage import StorageError, content_key
from models import Conversation, Media, Message, utcnow
from models.base import isoformat
from models.media import KINDS, PENDING, STORED, media_view, message_media
from routing.errors import NotFound
from routing.media import display_name
from routing.uploads import SNIFF_BYTES, UploadRefused, check_size, classify
from routing.visibility import may_see

from .api import errors, raw_body, reply, responds
from .auth import current_viewer, require
from .errors import ApiError
from .idempotency import idempotent
from .schemas import MediaLinkSchema, MediaSchema

bp = Blueprint("media", __name__, url_prefix="/api/v1/media")
PENDING_RETRY_AFTER = 2


@bp.get("/<media_id>")
@responds(302, None, "a redirect (`Location`) to the file, signed and valid MEDIA_URL_TTL seconds")
@errors(401, 403, codes={404: ("not_found",), 409: ("media_not_ready",), 503: ("storage_unavailable",)})
@require("bot", "agent")
def get_media(media_id: str):
    """Download a media file: 302 to a short-lived signed URL."""
    rt = current_app.extensions["baton"]
    url, _ = _signed_url(media_id, rt.settings.PUBLIC_BASE_URL)
    return reply(None, 302, headers={"Location": url, "Cache-Control": "no-store"})


@bp.get("/<media_id>/link")
@responds(200, MediaLinkSchema, "the signed URL `GET /api/v1/media/{id}` redirects to, as JSON")
@errors(401, 403, codes={404: ("not_found",), 409: ("media_not_ready",), 503: ("storage_unavailable",)})
@require("bot", "agent")
def media_link(media_id: str):
    """The file's short-lived signed URL as JSON (for browsers, which cannot read a redirect's Location).
    With Baton's own store the URL is a path on this API's origin; with S3 an absolute presigned URL."""
    url, expires_at = _signed_url(media_id, "")
    return reply({"url": url, "expires_at": expires_at}, headers={"Cache-Control": "no-store"})


def _signed_url(media_id: str, public_base: str) -> tuple[str, str]:
    row = (Media.select(Media, Conversation.state, Conversation.group, Conversation.assigned_agent_id,
                        Conversation.offered_agent_id)
           .join(Message, JOIN.LEFT_OUTER, on=(Media.message == Message.id))
           .join(Conversation, JOIN.LEFT_OUTER, on=(Message.conversation == Conversation.id))
           .where(Media.id == media_id).objects().first())
    if row is None or not _may_see(row):
        raise NotFound("media")
    if row.status != STORED:
        details = {"status": row.status, "reason": row.error if row.status != PENDING else None}
        headers = {"Retry-After": str(PENDING_RETRY_AFTER)} if row.status == PENDING else None
        raise ApiError(409, "media_not_ready", f"This media file is {row.status}, not stored.", details, headers)
    rt = current_app.extensions["baton"]
    ttl = rt.settings.MEDIA_URL_TTL
    try:
        url = rt.storage.signed_url(row.storage_key, ttl=ttl,
                                    content_type=row.mime_type or "application/octet-stream",
                                    filename=row.filename, public_base=public_base)
    except StorageError:
        raise ApiError(503, "storage_unavailable", "Media storage cannot be reached; try again.", None,
                       {"Retry-After": "5"}) from None
    return url, _expiry(ttl)


def _expiry(ttl: int) -> str:
    from datetime import datetime, timezone

    return isoformat(datetime.fromtimestamp(int(time.time()) + ttl, timezone.utc))


def _may_see(row) -> bool:
    if row.message_id is None:          # an upload not sent yet: its uploader's
        source = row.source or {}
        return row.direction == "out" and (source.get("uploaded_by_token") == g.token.id
                                           or (g.token.agent_id is not None
                                               and source.get("uploaded_by_agent") == g.token.agent_id))
    if getattr(row, "state", None) is None:
        return False
    return may_see(current_viewer(), state=row.state, group=row.group, assigned_agent_id=row.assigned_agent_id,
                   offered_agent_id=row.offered_agent_id)


@bp.post("")
@raw_body("multipart/form-data", {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "format": "binary", "description": "the file; its part's Content-Type names its type"},
    "type": {"type": "string", "enum": [*KINDS, ""],
             "description": "the kind to send it as; empty or absent: read from the file"}}})
@responds(201, MediaSchema, "Stored; use its `id` as `media_id` in `POST /conversations/{id}/messages`")
@errors(401, 403, codes={413: ("payload_too_large",), 415: ("unsupported_media_type",),
                         422: ("validation_failed",), 503: ("storage_unavailable",)})
@require("bot", "agent")
@idempotent
def upload_media():
    """Upload a file to send (multipart/form-data: `file`, and optionally `type`: image, audio, video,
    document or sticker). Its type is read from its first bytes and must match the part's Content-Type."""
    rt = current_app.extensions["baton"]
    most = rt.settings.MEDIA_UPLOAD_MAX_BYTES
    if request.content_length is not None and request.content_length > most:
        raise ApiError(413, "payload_too_large", f"Uploads are limited to {most} bytes.", {"limit": most})
    request.max_content_length = most           # a body without Content-Length is cut off there too
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "Send the file as multipart/form-data, in a part named `file`.")
    upload = request.files.get("file")
    if upload is None or not upload.filename and not upload.mimetype:
        raise ApiError(422, "validation_failed", "No part named `file`.", {"file": ["Missing data for required field."]})
    asked = request.form.get("type") or None
    if asked is not None and asked not in KINDS:
        raise ApiError(422, "validation_failed", f"`type` is one of {', '.join(KINDS)}.",
                       {"type": [f"Must be one of: {', '.join(KINDS)}."]})
    stream = upload.stream
    try:
        head = stream.read(SNIFF_BYTES)
        kind, mime, animated = classify(head, upload.mimetype, asked)
        stream.seek(0)
        digest, size = _hash(stream, kind, animated)
    except UploadRefused as refused:
        raise ApiError(refused.status, "payload_too_large" if refused.status == 413 else refused.code,
                       refused.message, refused.details) from None
    stream.seek(0)
    key = content_key(digest)
    record = _store(rt, key, digest, stream, mime, lambda: Media.create(
        direction="out", kind=kind, animated=animated, mime_type=mime, size=size, sha256=digest,
        filename=display_name(upload.filename), storage_key=key, status=STORED, stored_at=utcnow(), attempts=0,
        source={"uploaded_by_token": g.token.id, "uploaded_by_agent": g.token.agent_id}))
    return reply(media_view(message_media(record)), 201)


def _hash(stream, kind: str, animated: bool | None) -> tuple[str, int]:
    """sha256 and size of the upload, counted as it is read: past its kind's limit is a 413."""
    hasher, size = hashlib.sha256(), 0
    while True:
        block = stream.read(1024 * 1024)
        if not block:
            return hasher.hexdigest(), size
        size += len(block)
        check_size(kind, animated, size)
        hasher.update(block)


def _store(rt, key: str, digest: str, stream, mime: str, record):
    """Put the bytes under their key unless they are there already, and write the
    `record()` holding them, under the key's lock (shared with the fetch job and
    retention, which never deletes an object between the two)."""
    try:
        lock = rt.redis.lock(f"{rt.settings.REDIS_PREFIX}:media:key:{digest}", timeout=120, blocking_timeout=30)
        if not lock.acquire():
            raise StorageError("the content key is busy")
        try:
            if not rt.storage.exists(key):
                rt.storage.put(key, stream, mime)
            return record()
        finally:
            try:
                lock.release()
            except Exception:
                pass
    except (StorageError, OSError, RedisError):
        raise ApiError(503, "storage_unavailable", "Media storage cannot be reached; try again.", None,
                       {"Retry-After": "5"}) from None
