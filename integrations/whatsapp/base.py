"""The one interface every WhatsApp provider adapter implements.

Adapters turn a provider's webhook bytes into normalized events and send
normalized outbound messages. They never touch the database or Redis: the
webhook blueprint and the jobs do that with what the adapter returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping, Protocol

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
    media: dict | None = None     # {"type","link"|"id","caption"?,"filename"?}
    reply_to: str | None = None   # provider message id for context


def is_user_id(address: str | None) -> bool:
    """True for a business-scoped user id (`US.1349…`, a parent `US.ENT.1181…`):
    it has a dot, which a phone number never has."""
    return bool(address) and "." in address


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str


class WebhookRejected(Exception):
    """The request is not a valid webhook. `status` is 400 or 401."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class SendError(Exception):
    """A send the provider refused. `retryable` says whether trying later may work."""

    def __init__(self, code: int | str, title: str, retryable: bool, retry_after: float | None = None):
        super().__init__(f"{code}: {title}")
        self.code = code
        self.title = title
        self.retryable = retryable
        self.retry_after = retry_after


class WhatsAppAdapter(Protocol):
    name: str

    def verify(self, headers: Mapping[str, str], raw_body: bytes) -> None:
        """Raise WebhookRejected(401) unless the request is signed by the provider."""

    def parse(self, raw_body: bytes) -> ParsedWebhook:
        """Normalize a webhook body. Raise WebhookRejected(400) for a body that is
        not JSON or not this provider's envelope."""

    def send(self, message: OutboundMessage) -> SendResult:
        """Send one message; raise SendError on refusal or transport failure."""

    def fetch_media(self, media: dict) -> tuple[bytes, str]:
        """Download inbound media; returns (content, mime_type)."""
