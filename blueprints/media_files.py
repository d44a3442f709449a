"""`GET /media/files/<key>?t=<token>`: the filesystem store's objects, to whoever holds a signed link.

Only links `integrations.storage.links` signed open anything: the token names the key (it must
be the one in the path), the expiry, and the Content-Type and file name to answer with. The
answer supports range requests (206, 416), so audio and video can seek, and carries
`X-Content-Type-Options: nosniff` and a sandboxing Content-Security-Policy, so nothing a
customer sent ever runs as a page of Baton's origin. With an S3 store this route serves
nothing: its links point at S3.
"""
from __future__ import annotations

from flask import Blueprint, current_app, request, send_file
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from integrations.storage import StorageError, StorageUnavailable, content_disposition, links
from integrations.storage.filesystem import FilesystemStorage

from .errors import ApiError

bp = Blueprint("media_files", __name__)

SANDBOX_POLICY = "default-src 'none'; media-src 'self'; img-src 'self'; sandbox"


def _not_here() -> ApiError:
    return ApiError(404, "not_found", "No such media file.", {"resource": "media_file"})


@bp.get(f"{links.PATH}<path:key>")
def media_file(key: str):
    """A stored media object, through a signed, expiring link."""
    storage = current_app.extensions["baton"].storage
    if not isinstance(storage, FilesystemStorage):
        raise _not_here()
    try:
        link = links.verify(storage.secret, key, request.args.get("t", ""))
    except links.LinkRefused as refused:
        raise ApiError(403, refused.code, refused.message) from None
    try:
        path = storage.path(link.key)
        size = storage.size(link.key)
    except StorageUnavailable as exc:
        raise ApiError(503, "storage_unavailable", "The media store is unavailable; retry shortly.",
                       headers={"Retry-After": "5"}) from exc
    except StorageError:              # missing, or a key no store would take
        raise _not_here() from None
    try:
        response = send_file(path, mimetype=link.content_type, conditional=True, etag=path.name, max_age=None)
    except RequestedRangeNotSatisfiable:
        raise ApiError(416, "range_not_satisfiable", "The requested range lies outside the file.",
                       {"size": size}, headers={"Content-Range": f"bytes */{size}"}) from None
    except FileNotFoundError:         # deleted since we looked
        raise _not_here() from None
    except OSError as exc:
        raise ApiError(503, "storage_unavailable", "The media store is unavailable; retry shortly.",
                       headers={"Retry-After": "5"}) from exc
    remaining = max(0, link.expires - int(links.now()))
    response.headers["Content-Disposition"] = content_disposition(link.content_type, link.filename)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = SANDBOX_POLICY
    response.headers["Cache-Control"] = f"private, max-age={remaining}"
    return response
