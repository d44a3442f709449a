"""Make a parsed webhook fit the columns it is stored in, before ingest touches
the database. A signed webhook is the provider's word, so nothing in it earns a
5xx (the provider would retry the whole batch forever):

- NUL bytes go from every string (PostgreSQL text cannot hold them; SQLite
  would keep a string that other tools cut short);
- a message or status whose identifiers are longer than their columns cannot be
  told apart from others by what fits, so it is recorded as unsupported
  (`oversized:message`, `oversized:status`) and the rest of the batch goes on;
- a display name longer than its column is cut, and one that is not a string
  is dropped.
"""
from __future__ import annotations

from dataclasses import replace

from integrations.whatsapp.base import IgnoredUpdate, InboundMessage, ParsedWebhook, StatusUpdate
from models import Channel, Contact, Message

_ID_LIMIT = Message.provider_message_id.max_length          # 200
_NUMBER_LIMIT = Channel.phone_number_id.max_length          # 64
_CUSTOMER_LIMIT = Contact.wa_id.max_length                  # 256
_NAME_LIMIT = Contact.name.max_length                       # 256


def fit_webhook(parsed: ParsedWebhook) -> ParsedWebhook:
    fitted = ParsedWebhook(ignored=[_fit_ignored(item) for item in parsed.ignored])
    for message in parsed.messages:
        message = _fit_message(message)
        if _oversized_message(message):
            fitted.ignored.append(_ignored("oversized:message", message.phone_number_id, message.raw))
        else:
            fitted.messages.append(message)
    for status in parsed.statuses:
        status = _fit_status(status)
        if len(status.provider_message_id) > _ID_LIMIT or len(status.phone_number_id) > _NUMBER_LIMIT:
            fitted.ignored.append(_ignored("oversized:status", status.phone_number_id, {}))
        else:
            fitted.statuses.append(status)
    return fitted


def clean(value):
    """`value` without NUL bytes, through dicts and lists; other values as they are."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def _cut(value, limit: int) -> str | None:
    """A display string cut to its column; anything but a string (a provider
    never sends one, and its text form could be any length) is dropped."""
    return value[:limit] if isinstance(value, str) else None


def _fit_message(message: InboundMessage) -> InboundMessage:
    return replace(
        message, provider_message_id=clean(message.provider_message_id), phone_number_id=clean(message.phone_number_id),
        wa_id=clean(message.wa_id), text=clean(message.text), media=clean(message.media),
        contact_name=_cut(clean(message.contact_name), _NAME_LIMIT), username=_cut(clean(message.username), _NAME_LIMIT),
        user_id=clean(message.user_id), new_wa_id=clean(message.new_wa_id), new_user_id=clean(message.new_user_id),
        raw=clean(message.raw))


def _oversized_message(message: InboundMessage) -> bool:
    return (len(message.provider_message_id) > _ID_LIMIT or len(message.phone_number_id) > _NUMBER_LIMIT
            or any(value is not None and len(value) > _CUSTOMER_LIMIT
                   for value in (message.wa_id, message.user_id, message.new_wa_id, message.new_user_id)))


def _fit_status(status: StatusUpdate) -> StatusUpdate:
    return replace(status, provider_message_id=clean(status.provider_message_id),
                   phone_number_id=clean(status.phone_number_id), recipient_wa_id=clean(status.recipient_wa_id),
                   error=clean(status.error), reference=clean(status.reference))


def _fit_ignored(item: IgnoredUpdate) -> IgnoredUpdate:
    return _ignored(item.kind, item.phone_number_id, item.raw)


def _ignored(kind: str, phone_number_id: str | None, raw: dict) -> IgnoredUpdate:
    phone_number_id = clean(phone_number_id)
    if not isinstance(phone_number_id, str) or len(phone_number_id) > _NUMBER_LIMIT:
        phone_number_id = None
    return IgnoredUpdate(kind=clean(kind), phone_number_id=phone_number_id, raw=clean(raw))
