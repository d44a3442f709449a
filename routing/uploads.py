"""What Baton accepts of an agent's or a bot's upload (`POST /api/v1/media`), and what a sender needs.

A file is accepted only as a type WhatsApp sends, and only when its first bytes
say it is that type: the client's Content-Type is a claim, the magic bytes decide.
Its kind's limit is WhatsApp's, the same as for customers' files (routing.media).

`outbound_media(message, number)` is what the outbound lane hands an adapter for a
media message: the stored file's key and type, the caption (the message's text),
and the provider media id an earlier upload from that business number gave, while
it is young enough to reuse (Meta keeps uploaded media 30 days).
"""
from __future__ import annotations

from datetime import timedelta

from models import Media, new_id, utcnow
from models.base import isoformat, parse_time
from models.media import STORED, message_media

from .errors import Unprocessable
from .media import limit_for

# The MIME types WhatsApp sends, by kind.
IMAGE = ("image/jpeg", "image/png")
STICKER = ("image/webp",)
AUDIO = ("audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg")
VIDEO = ("video/mp4", "video/3gpp")
OFFICE_ZIP = ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",
              "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
              "application/vnd.openxmlformats-officedocument.presentationml.presentation")
OFFICE_OLE = ("application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint")
DOCUMENT = ("application/pdf", "text/plain", *OFFICE_ZIP, *OFFICE_OLE)
ACCEPTED = {"image": IMAGE, "sticker": STICKER, "audio": AUDIO, "video": VIDEO,
            "document": (*DOCUMENT, *IMAGE, *AUDIO, *VIDEO)}     # anything may go as a document
GENERIC = ("", "application/octet-stream", "binary/octet-stream")
SNIFF_BYTES = 4096
CAPTIONED = ("image", "video", "document")          # the kinds WhatsApp sends with a caption
# Meta's uploaded media ids last 30 days; one is not reused in its last day.
PROVIDER_UPLOAD_LIFETIME = timedelta(days=29)


class UploadRefused(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def sniff(head: bytes) -> tuple[str, ...]:
    """The MIME types these first bytes may be (empty: none Baton sends)."""
    if head.startswith(b"\xff\xd8\xff"):
        return ("image/jpeg",)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ("image/png",)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ("image/webp",)
    if head.startswith(b"OggS"):
        return ("audio/ogg",)
    if head.startswith(b"#!AMR"):
        return ("audio/amr",)
    if head.startswith(b"ID3"):
        return ("audio/mpeg",)
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:      # ADTS (AAC)
        return ("audio/aac",)
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:      # an MPEG audio frame
        return ("audio/mpeg",)
    if head[4:8] == b"ftyp":                                                 # ISO BMFF: mp4, m4a, 3gp
        return ("video/3gpp",) if head[8:11] == b"3gp" else ("video/mp4", "audio/mp4", "video/3gpp")
    if head.startswith(b"%PDF-"):
        return ("application/pdf",)
    if head.startswith(b"PK\x03\x04"):
        return OFFICE_ZIP
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return OFFICE_OLE
    if _is_text(head):
        return ("text/plain",)
    return ()


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:       # a character cut at the end of the sample is fine
        return exc.start >= len(head) - 3
    return True


def animated_webp(head: bytes) -> bool:
    """An extended WebP (VP8X) with its animation flag set."""
    return head[12:16] == b"VP8X" and len(head) > 20 and bool(head[20] & 0x02)


def classify(head: bytes, declared_mime: str | None, kind: str | None) -> tuple[str, str, bool | None]:
    """(kind, mime type, animated) of an upload whose file starts with `head`, or
    UploadRefused(415). `declared_mime` is the part's Content-Type; `kind` the
    one asked for (default: the type's own kind)."""
    declared = (declared_mime or "").split(";")[0].strip().lower()
    possible = sniff(head)
    if declared in GENERIC:
        if not possible:
            raise UploadRefused(415, "unsupported_media_type", "This file is of no type WhatsApp sends.")
        mime = possible[0]
    elif declared in possible:
        mime = declared
    else:
        raise UploadRefused(415, "unsupported_media_type",
                            f"The file is not the {declared} it is declared as." if possible or _known(declared)
                            else f"{declared} is no type WhatsApp sends.",
                            {"declared": declared[:100], "detected": possible[0] if possible else None})
    kind = kind or next(k for k in ("image", "sticker", "audio", "video", "document") if mime in ACCEPTED[k])
    if mime not in ACCEPTED.get(kind, ()):
        raise UploadRefused(415, "unsupported_media_type", f"WhatsApp sends no {mime} as {kind}.",
                            {"type": kind, "mime_type": mime, "accepted": list(ACCEPTED.get(kind, ()))})
    animated = animated_webp(head) if kind == "sticker" else None
    return kind, mime, animated


def _known(mime: str) -> bool:
    return any(mime in accepted for accepted in ACCEPTED.values())


def check_size(kind: str, animated: bool | None, size: int) -> None:
    limit = limit_for(kind, animated)
    if size > limit:
        raise UploadRefused(413, "file_too_large", f"A {kind} may be at most {limit} bytes; this one has {size}.",
                            {"type": kind, "limit": limit, "size": size})


# -- sending -----------------------------------------------------------------------------------

def sendable(media_id: str, agent_id: str | None) -> Media | None:
    """The stored upload `media_id`, if this agent may send it: uploaded (direction
    `out`), stored, and by this agent (or by a bot or an admin token, for anyone)."""
    record = Media.get_or_none((Media.id == media_id) & (Media.direction == "out") & (Media.status == STORED))
    if record is None:
        return None
    uploader = (record.source or {}).get("uploaded_by_agent")
    return record if uploader in (None, agent_id) else None


def attach(change, media_id: str, agent_id: str | None, say, caption: str | None = None):
    """Queue `say(media)` (Change.say with the file's media dict) for the upload
    `media_id`, and tie a media record to the new message: the upload's own
    record the first time it is sent, a copy of it (same stored file, same
    provider uploads) each time after, so every media message has its record
    and `GET /api/v1/media/{id}` knows whose conversation it belongs to."""
    record = sendable(media_id, agent_id)
    if record is None:
        raise Unprocessable("No stored media of yours has this id.", {"media_id": media_id}, code="unknown_media")
    if caption and record.kind not in CAPTIONED:
        raise Unprocessable(f"WhatsApp sends no caption with {record.kind} messages: send the text on its own.",
                            {"type": record.kind}, code="caption_not_supported")
    conv = change.conv
    if record.message_id is not None:
        record = Media(**{**record.__data__, "id": new_id("md"), "message": None, "created_at": utcnow()})
        copy = True
    else:
        copy = False
    message = say({**message_media(record), "storage_key": record.storage_key})
    if copy:
        record.message = message.id
        record.channel = conv.channel_id
        change.effects.insert(record)
    else:       # a send of the same upload meanwhile took it: this plan runs again and copies it
        change.effects.update(Media, {"message": message.id, "channel": conv.channel_id},
                              {"id": record.id, "message": None}, must_change_one=True)
    return message


def provider_upload(record_source: dict | None, number: str, now=None) -> str | None:
    """The provider media id an upload of this file from `number` gave, while young enough to reuse."""
    upload = ((record_source or {}).get("provider_uploads") or {}).get(number)
    if not isinstance(upload, dict) or not upload.get("id"):
        return None
    try:
        at = parse_time(str(upload.get("at")))
    except (ValueError, OverflowError):
        return None
    return upload["id"] if (now or utcnow()) - at < PROVIDER_UPLOAD_LIFETIME else None


def remember_provider_upload(media_id: str, number: str, provider_media_id: str) -> None:
    """Keep the id the provider gave the file uploaded from `number` on its record."""
    record = Media.get_or_none(Media.id == media_id)
    if record is None:
        return
    source = dict(record.source or {})
    source["provider_uploads"] = {**(source.get("provider_uploads") or {}),
                                  number: {"id": provider_media_id, "at": isoformat(utcnow())}}
    Media.update(source=source, provider_media_id=provider_media_id[:256]).where(Media.id == media_id).execute()


def outbound_media(message, number: str) -> dict | None:
    """The `media` of the OutboundMessage for `message` (None for a message without a stored file):
    {type, caption?, filename?, mime_type, media_id, storage_key, provider_id?}."""
    media = message.media
    if not media or message.direction != "out" or not media.get("storage_key"):
        return media
    record = Media.get_or_none(Media.id == media.get("id"))
    out = {"type": media.get("type"), "mime_type": media.get("mime_type"), "filename": media.get("filename"),
           "media_id": media.get("id"), "storage_key": media["storage_key"], "caption": message.text}
    provider_id = provider_upload(record.source if record else None, number)
    if provider_id:
        out["id"] = provider_id
    return {k: v for k, v in out.items() if v is not None}
