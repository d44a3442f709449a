"""Signed links to objects of the filesystem store, which Baton serves itself (`/media/files/<key>`).

A link is `/media/files/<key>?t=<token>`; the token is an itsdangerous signature, keyed by
SECRET_KEY (with a salt of its own, so it is no cookie key), over the key, the expiry (Unix
seconds) and the Content-Type and file name the answer must carry. Changing any of them, or
the key in the path, breaks the signature; a link past its expiry is refused.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote

from itsdangerous import BadSignature, URLSafeSerializer

from .base import check_key

SALT = "baton.media-files"
PATH = "/media/files/"
now = time.time          # tests move the clock by replacing this


class LinkRefused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Link:
    key: str
    expires: int
    content_type: str
    filename: str | None


def _serializer(secret: str) -> URLSafeSerializer:
    if not secret:
        raise ValueError("signing media links needs a SECRET_KEY")
    return URLSafeSerializer(secret, salt=SALT)


def sign(secret: str, key: str, ttl: int, content_type: str, filename: str | None, public_base: str = "") -> str:
    check_key(key)
    expires = int(now()) + int(ttl)
    token = _serializer(secret).dumps({"k": key, "e": expires, "t": content_type, "f": filename})
    return f"{public_base.rstrip('/')}{PATH}{key}?t={quote(token, safe='')}"


def verify(secret: str, key: str, token: str) -> Link:
    """The link `token` grants for `key`, or LinkRefused (`media_link_invalid`, `media_link_expired`)."""
    try:
        claims = _serializer(secret).loads(token or "")
    except BadSignature:
        raise LinkRefused("media_link_invalid", "This media link is not one Baton signed.") from None
    if not isinstance(claims, dict) or claims.get("k") != key:
        raise LinkRefused("media_link_invalid", "This media link is not one Baton signed for this object.")
    if not isinstance(claims.get("e"), int) or now() > claims["e"]:
        raise LinkRefused("media_link_expired", "This media link has expired; ask the API for a fresh one.")
    return Link(key=key, expires=claims["e"], content_type=str(claims.get("t") or "application/octet-stream"),
                filename=claims.get("f") if isinstance(claims.get("f"), str) else None)
