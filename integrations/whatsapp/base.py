"""The one interface every WhatsApp provider adapter implements.

Adapters turn a provider's webhook bytes into normalized events and send
normalized outbound messages. They never touch the database or Redis: the
webhook blueprint and the jobs do that with what the adapter returns.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Protocol

MESSAGE_TYPES = (
    "text", "image", "audio", "video", "document", "sticker", "location", "contacts",
    "interactive", "button", "reaction", "order", "system", "unsupported",
)
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")


@dataclass(frozen=True)
class InboundMessage:
    """A message a customer sent, or (from_me=True) an echo of one the business
    phone sent outside Baton (a human replying from the WhatsApp app)."""
    provider_message_id: str
    phone_number_id: str          # the business number (channel key)
    wa_id: str | None             # the customer's phone number (WASender: or its LID); None when hidden
    type: str                     # one of MESSAGE_TYPES
    sent_at: datetime             # payload timestamp, tz-aware UTC
    text: str | None = None       # body, caption, button/list title, reaction emoji, location name
    contact_name: str | None = None
    media: dict | None = None     # {"provider_media_id","mime_type","sha256","filename","url"} (keys optional)
    from_me: bool = False
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    user_id: str | None = None    # the customer's business-scoped user id (BSUID), when given
    username: str | None = None   # the customer's WhatsApp username, when given
    # A system message saying the customer is known by other ids from now on
    # (user_changed_user_id, user_changed_number): the new ones.
    new_wa_id: str | None = None
    new_user_id: str | None = None


@dataclass(frozen=True)
class StatusUpdate:
    """A delivery status of a message the business sent."""
    provider_message_id: str
    phone_number_id: str
    recipient_wa_id: str | None
    status: str                   # sent|delivered|read|played|failed
    timestamp: datetime
    error: dict | None = None     # {"code": int, "title": str, "details": str | None}
    reference: str | None = None  # the OutboundMessage.reference it was sent with, when echoed


_MALFORMED = (TypeError, ValueError, AttributeError, KeyError, IndexError)


def tolerant(what: str):
    """For an adapter's per-item parser `(self, item, ..., parsed)`: an item whose
    fields have types the provider never sends is kept as an unsupported update
    (`malformed:<what>`, with the reason) and the rest of the webhook is parsed
    as usual, instead of the whole signed webhook answering 500."""
    def wrap(method):
        @functools.wraps(method)
        def guarded(self, item, *args):
            parsed = args[-1]
            try:
                return method(self, item, *args)
            except _MALFORMED as exc:
                raw = item if isinstance(item, dict) else next(
                    (a for a in reversed(args[:-1]) if isinstance(a, dict)), {})
                logging.getLogger(method.__module__).warning("malformed %s kept as unsupported: %s", what, exc)
                parsed.ignored.append(IgnoredUpdate(f"malformed:{what}", None,
                                                    {"error": f"{type(exc).__name__}: {exc}"[:300], "item": raw}))
        return guarded
    return wrap


@dataclass(frozen=True)
class IgnoredUpdate:
    """Something valid but not routable (unknown field, account notice, group
    message...). Recorded as `unsupported` and counted in `ignored`."""
    kind: str                     # e.g. "field:account_update", "event:session.status"
    phone_number_id: str | None
    raw: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass
class ParsedWebhook:
    messages: list[InboundMessage] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    ignored: list[IgnoredUpdate] = field(default_factory=list)


@dataclass(frozen=True)
class OutboundMessage:
    """What Baton asks a provider to send."""
    to: str                       # the customer's phone number, or a business-scoped user id (see Contact.address)
    phone_number_id: str          # business number to send from
    text: str | None = None
    template: dict | None = None  # {"name","language","components"?}
    # {"type","link"|"id","caption"?,"filename"?}; a stored upload (routing.uploads.outbound_media)
    # gives {"type","mime_type","storage_key","media_id","caption"?,"filename"?,"id"?: a provider
    # media id still fit to reuse}: the adapter uploads the file or links to it (`media_files`).
    media: dict | None = None
    reply_to: str | None = None   # provider message id for context
    reference: str | None = None  # Baton's message id; the Cloud API echoes it in the message's statuses


def is_user_id(address: str | None) -> bool:
    """True for a business-scoped user id (`US.1349…`, a parent `US.ENT.1181…`):
    it has a dot, which a phone number never has."""
    return bool(address) and "." in address


@dataclass
class MediaDownload:
    """A media file the provider is handing over, not read yet: iterate
    `chunks()` (the caller caps how much it reads), then `close()`."""
    response: Any                          # a streamed requests.Response
    mime_type: str
    declared_size: int | None = None       # the provider's lookup, else Content-Length
    declared_sha256: str | None = None     # the provider's lookup (base64 or hex)
    resolved_url: str | None = None        # Cloud API: the short-lived URL, worth trying again for a while

    def chunks(self, size: int = 65536):
        return self.response.iter_content(size)

    def close(self) -> None:
        self.response.close()


def content_length(response) -> int | None:
    try:
        return int(response.headers.get("Content-Length"))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str
    # A stored file the adapter uploaded to the provider to send it: the id the
    # provider gave it (the outbound lane keeps it on the media record for reuse).
    uploaded_media_id: str | None = None


class MediaFiles(Protocol):
    """Stored files as an adapter may use them to send one (integrations.storage.outbound):
    read the bytes (to upload them) or a signed link the provider can fetch."""

    def open(self, key: str): ...

    def link(self, key: str, content_type: str, filename: str | None) -> str: ...


class WebhookRejected(Exception):
    """The request is not a valid webhook. `status` is 400 or 401."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# Where a failed call stopped. Only "unknown" can have reached the provider:
# the request was written and no answer came (a read timeout, a connection
# dropped mid-response), so the message may have been accepted.
REFUSED, NOT_SENT, UNKNOWN = "refused", "not_sent", "unknown"


class SendError(Exception):
    """A call the provider refused (`stage` "refused", `code` its error code),
    or one that failed on the way ("not_sent": never reached it; "unknown":
    it may have been accepted). `retryable` says whether trying later may work."""

    def __init__(self, code: int | str, title: str, retryable: bool, retry_after: float | None = None,
                 stage: str = REFUSED):
        super().__init__(f"{code}: {title}")
        self.code = code
        self.title = title
        self.retryable = retryable
        self.retry_after = retry_after
        self.stage = stage


def pooled_session(connections: int):
    """A requests session keeping up to `connections` connections to the
    provider alive, one per send that can be in flight at once."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    pool = HTTPAdapter(pool_connections=4, pool_maxsize=max(connections, 1))
    session.mount("https://", pool)
    session.mount("http://", pool)
    return session


def sending_pool(connections: int):
    """A urllib3 pool keeping up to `connections` connections to each provider host
    alive, for the calls made once per message (no requests.Session around it)."""
    import urllib3

    return urllib3.PoolManager(num_pools=4, maxsize=max(connections, 1))


def transport_error(exc: Exception) -> SendError:
    """A requests (or urllib3, called with retries=False) exception as a SendError:
    failing to connect means the request was never written (NOT_SENT); anything
    later (a read timeout, a connection reset or closed before the answer) leaves
    the outcome UNKNOWN."""
    import requests
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    title = f"{type(exc).__name__}: {exc}"[:400]
    cause = exc.args[0] if exc.args else None
    reason = getattr(cause, "reason", cause)
    if isinstance(exc, (requests.ConnectTimeout, ConnectTimeoutError)) or isinstance(reason, NewConnectionError):
        return SendError("network", title, retryable=True, stage=NOT_SENT)
    return SendError("network", title, retryable=True, stage=UNKNOWN)


class WhatsAppAdapter(Protocol):
    name: str

    def verify(self, headers: Mapping[str, str], raw_body: bytes) -> None:
        """Raise WebhookRejected(401) unless the request is signed by the provider."""

    def parse(self, raw_body: bytes) -> ParsedWebhook:
        """Normalize a webhook body. Raise WebhookRejected(400) for a body that is
        not JSON or not this provider's envelope."""

    def send(self, message: OutboundMessage) -> SendResult:
        """Send one message; raise SendError on refusal or transport failure."""

    def show_typing(self, phone_number_id: str, to: str, provider_message_id: str) -> None:
        """Mark the customer's message read and show that a reply is being written."""

    def open_media(self, media: dict) -> "MediaDownload":
        """Start downloading inbound media from the provider's own media endpoints
        (never from a URL merely found in a payload); raise SendError. `media`
        holds `provider_media_id`, `mime_type` and the record's `source`."""
