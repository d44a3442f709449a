"""What Baton accepts of a customer's media, and the record the webhook writes.

WhatsApp's own limits: a file over its type's limit is refused (the record
fails with the reason, the message is routed all the same). Checksums are
compared as hex; providers declare them in base64 (Cloud API, WASender's
`fileSha256`) or hex.
"""
from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from datetime import timedelta

from models import new_id, utcnow
from models.media import PENDING

MB = 1024 * 1024
LIMITS = {"image": 5 * MB, "audio": 16 * MB, "video": 16 * MB, "document": 100 * MB}
STICKER_LIMITS = {False: 100 * 1024, True: 500 * 1024}
# What the fetch needs to ask the provider for the file again; never shown to clients.
SOURCE_KEYS = ("url", "media_key", "message_type")


def limit_for(kind: str, animated: bool | None) -> int:
    """The largest file of this kind Baton keeps, in bytes (a sticker not flagged animated is static)."""
    if kind == "sticker":
        return STICKER_LIMITS[bool(animated)]
    return LIMITS.get(kind, LIMITS["document"])


def sha256_hex(declared) -> str | None:
    """A declared sha256 as 64 lowercase hex digits: given as hex or base64; None when it is neither."""
    if not isinstance(declared, str) or not declared.strip():
        return None
    text = declared.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return text.lower()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if "-" in text or "_" in text else None,
                               validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def display_name(filename) -> str | None:
    """A file name safe to show and to put in Content-Disposition: no path, no control characters."""
    if not isinstance(filename, str):
        return None
    name = re.split(r"[\\/]", filename)[-1]
    name = "".join(c for c in unicodedata.normalize("NFC", name) if unicodedata.category(c)[0] != "C")
    name = name.strip().lstrip(".").strip()
    return name[:255] or None


def media_values(media: dict, kind: str, channel_id: str, message_id: str, direction: str,
                 handoff_grace: float) -> dict:
    """The columns of a new `pending` media record for an inbound media message.
    `next_attempt_at` is when the cron tick takes the fetch over, should the
    webhook's hand-off after its commit be lost."""
    now = utcnow()
    animated = media.get("animated")
    return {
        "id": new_id("md"), "channel": channel_id, "message": message_id, "direction": direction,
        "kind": kind, "animated": bool(animated) if animated is not None else None,
        "provider_media_id": str(media["provider_media_id"])[:256] if media.get("provider_media_id") else None,
        "mime_type": str(media["mime_type"])[:255] if media.get("mime_type") else None,
        "declared_sha256": sha256_hex(media.get("sha256")),
        "filename": display_name(media.get("filename")),
        "status": PENDING, "attempts": 0, "created_at": now,
        "next_attempt_at": now + timedelta(seconds=handoff_grace),
        "source": {k: media[k] for k in SOURCE_KEYS if isinstance(media.get(k), str)} or None,
    }
