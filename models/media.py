"""A copy of a customer's media file, kept in Baton's storage (issue 9).

One row per media message: the webhook writes it `pending` in the transaction
that records the message; `jobs.media.fetch_media` downloads it from the
provider, checks its size and sha256 and stores it under its content key
(`storage_key`, the same for identical files: they are stored once). A fetch
that cannot succeed leaves it `failed` with the reason in `error`; retention
(MEDIA_RETENTION_DAYS) turns old ones `expired` once their object is deleted.

`source` holds what the provider needs to hand the file over again (WASender:
the encrypted URL, media key and message kind; Cloud API: the last download
URL its lookup gave). It is never shown to clients.
"""
from peewee import BooleanField, CharField, DateTimeField, ForeignKeyField, IntegerField, TextField

from .base import BaseModel, JSONField, new_id, utcnow
from .channel import Channel
from .message import Message

PENDING, STORED, FAILED, EXPIRED = "pending", "stored", "failed", "expired"
STATUSES = (PENDING, STORED, FAILED, EXPIRED)
KINDS = ("image", "audio", "video", "document", "sticker")


class Media(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("md"))
    channel = ForeignKeyField(Channel, null=True, on_delete="CASCADE")
    message = ForeignKeyField(Message, null=True, on_delete="SET NULL")
    direction = CharField(max_length=3)                  # in | out
    kind = CharField(max_length=10)                      # image | audio | video | document | sticker
    animated = BooleanField(null=True)                   # stickers: the provider's flag
    provider_media_id = CharField(max_length=256, null=True)
    mime_type = CharField(max_length=255, null=True)
    size = IntegerField(null=True)
    declared_sha256 = CharField(max_length=64, null=True)    # hex, as the provider declared it
    sha256 = CharField(max_length=64, null=True)             # hex, of the bytes Baton stored
    filename = CharField(max_length=255, null=True)
    storage_key = CharField(max_length=100, null=True)
    status = CharField(max_length=8, default=PENDING)
    error = TextField(null=True)
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow)
    stored_at = DateTimeField(null=True)
    source = JSONField(null=True)

    class Meta:
        indexes = (
            (("status", "next_attempt_at"), False),
            (("storage_key", "stored_at"), False),
            (("status", "stored_at"), False),
        )


# Where `url` in a message's media points: PUBLIC_BASE_URL, set once per
# process by runtime.Runtime (models know no settings).
_public_base = {"url": ""}


def set_public_base(url: str) -> None:
    _public_base["url"] = (url or "").rstrip("/")


def media_url(media_id: str) -> str:
    """The API address of a stored media file (`GET /api/v1/media/{id}` answers 302 to the file)."""
    return f"{_public_base['url']}/api/v1/media/{media_id}"


def media_view(media: dict | None, kind: str | None = None, *, always_url: bool = False) -> dict | None:
    """A message's `media` as clients see it: {id, type, mime_type, size,
    filename, status, url}. `url` is null until the file is stored, except
    `always_url` (n8n events): there it is the API address whatever the status
    but failed/expired, because routing does not wait for the download (the
    API answers 409 `media_not_ready` until it is stored). `kind`: the
    message's type, for media recorded before media records existed."""
    if media is None:
        return None
    status = media.get("status") or PENDING
    media_id = media.get("id")
    shown = status == STORED or (always_url and status == PENDING)
    return {"id": media_id, "type": media.get("type") or (kind if kind in KINDS else None), "mime_type": media.get("mime_type"),
            "size": media.get("size"), "filename": media.get("filename"), "status": status,
            "url": media_url(media_id) if media_id and shown else None}


def message_media(record: "Media") -> dict:
    """What a message row keeps of its media record (Message.media)."""
    return {"id": record.id, "type": record.kind, "mime_type": record.mime_type, "size": record.size,
            "filename": record.filename, "status": record.status}
