"""Record a parsed webhook in ONE transaction; routing happens later.

The hot path: contact and conversation ids come from a per-process cache after
the first message of a customer, so a typical webhook costs one INSERT (plus
one forward-only UPDATE per status). Upserts are race-safe: INSERT … ON
CONFLICT DO NOTHING, then read the winner's row.

Statuses that changed a message are announced on the live stream
(`message.updated`) once the transaction has committed: one SELECT of the
changed messages with their conversations and one pipelined publish per
webhook, best effort. Webhooks that carry no status pay nothing for it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import peewee

from integrations.whatsapp.base import InboundMessage, ParsedWebhook, StatusUpdate
from models import (Channel, Contact, Conversation, Media, Message, UnsupportedUpdate, db, new_id,
                    write_transaction)
from models.base import as_naive_utc, epoch_seconds, utcnow
from models.message import ERROR_DETAILS_LIMIT, STATUS_RANK, UNSENT, numbered_insert, unnumber

from .fit import fit_webhook
from .identity import conversation_for
from .live import live_event, publish
from .media import media_values
from .retention import strip_secrets
from .visibility import snapshot

log = logging.getLogger(__name__)

ECHO_WINDOW = timedelta(minutes=10)
_RAW_TYPES = frozenset({"location", "contacts", "interactive", "button", "order", "system", "unsupported"})


@dataclass
class IngestResult:
    messages: int = 0
    statuses: int = 0
    duplicates: int = 0
    ignored: int = 0
    # (conversation_id, message_id, payload timestamp) for each newly stored message
    to_route: list[tuple[str, str, float]] = field(default_factory=list)
    # (channel_id, provider_message_id) of each outbound message a status changed
    updated: list[tuple[str, str]] = field(default_factory=list)
    # conversations whose send with an unknown outcome this webhook showed accepted:
    # their outbound queue may go on (the caller schedules the lane)
    reconciled: list[str] = field(default_factory=list)
    # media records written `pending`: the caller schedules their fetch after the commit
    media: list[str] = field(default_factory=list)
    media_grace: float = field(default=10.0, repr=False)

    def counts(self) -> dict:
        return {"messages": self.messages, "statuses": self.statuses,
                "duplicates": self.duplicates, "ignored": self.ignored}


class IngestCache:
    """Ids that never change once created: channels, and a customer's contact + conversation."""

    def __init__(self):
        self.channels: dict[tuple[str, str], str] = {}
        # (channel id, phone number, user id) -> (contact id, conversation id, {"name", "username"})
        self.contacts: dict[tuple, tuple[str, str, dict]] = {}

    def clear(self) -> None:
        self.channels.clear()
        self.contacts.clear()


def record_webhook(provider: str, parsed: ParsedWebhook, cache: IngestCache,
                   media_grace: float = 10.0) -> IngestResult:
    """Store every message and status of a webhook; duplicates are counted, not
    stored. `result.updated` names the messages a status changed, for the
    caller to announce after the commit (announce_updates); `result.media`
    the media records to fetch (the cron tick fetches them after
    `media_grace` seconds should the caller's hand-off be lost). What does not
    fit its columns is cut or recorded as unsupported first (routing.fit)."""
    parsed = fit_webhook(parsed)
    try:
        return _record(provider, parsed, cache, media_grace)
    except peewee.IntegrityError:
        # A cached id can point at a row that is gone (database reset under a
        # long-lived process): forget the cache and try once more.
        cache.clear()
        return _record(provider, parsed, cache, media_grace)


def _record(provider: str, parsed: ParsedWebhook, cache: IngestCache, media_grace: float) -> IngestResult:
    result = IngestResult(media_grace=media_grace)
    with write_transaction():
        # Numbering a message locks its conversation's row until the commit:
        # take those locks in one order (conversation id; a conversation's
        # messages keep the webhook's order) so two webhooks never wait on each other.
        customers = [(message, *_customer_of(provider, message, cache)) for message in parsed.messages]
        customers.sort(key=lambda item: item[2])
        for message, channel_id, conversation_id in customers:
            _record_message(provider, message, channel_id, conversation_id, result)
        for status in parsed.statuses:
            updated = _record_status(provider, status, cache, result)
            if updated is not None and updated not in result.updated:
                result.updated.append(updated)
            result.statuses += 1
        for item in parsed.ignored:
            UnsupportedUpdate.create(provider=provider, kind=item.kind[:80],
                                     phone_number_id=item.phone_number_id, payload=strip_secrets(item.raw))
            result.ignored += 1
    return result


def _channel_id(provider: str, phone_number_id: str, cache: IngestCache) -> str:
    key = (provider, phone_number_id)
    channel_id = cache.channels.get(key)
    if channel_id is None:
        (Channel.insert(id=new_id("ch"), provider=provider, phone_number_id=phone_number_id, created_at=utcnow())
         .on_conflict_ignore()
         .execute())
        channel_id = (Channel.select(Channel.id)
                      .where((Channel.provider == provider) & (Channel.phone_number_id == phone_number_id))
                      .scalar())
        cache.channels[key] = channel_id
    return channel_id


def _customer_of(provider: str, message: InboundMessage, cache: IngestCache) -> tuple[str, str]:
    """(channel id, conversation id) of a message's customer, created (or linked) on first sight."""
    channel_id = _channel_id(provider, message.phone_number_id, cache)
    return channel_id, conversation_for(channel_id, message, cache)


def _record_message(provider: str, message: InboundMessage, channel_id: str, conversation_id: str,
                    result: IngestResult) -> None:
    if message.from_me and _is_our_own_echo(provider, channel_id, conversation_id, message, result):
        result.duplicates += 1
        return
    message_id = new_id("m")
    sent_at = as_naive_utc(message.sent_at)
    direction = "out" if message.from_me else "in"
    media = record = None
    if message.media:
        # Every media message gets its record (whatever the conversation's
        # state); the message keeps what clients are shown of it.
        record = media_values(message.media, message.type, channel_id, message_id, direction, result.media_grace)
        media = {"id": record["id"], "type": record["kind"], "mime_type": record["mime_type"], "size": None,
                 "filename": record["filename"], "status": record["status"]}
    inserted = _insert_message({
        "id": message_id, "conversation": conversation_id, "channel": channel_id,
        "direction": direction,
        "sender": "agent" if message.from_me else "user",
        "type": message.type, "text": message.text, "media": media,
        "extra": message.raw if message.type in _RAW_TYPES else None,
        "provider_message_id": message.provider_message_id, "sent_at": sent_at, "received_at": utcnow(),
        "status": "sent" if message.from_me else None, "attempts": 0})
    if not inserted:
        result.duplicates += 1
        return
    if record is not None:
        Media.insert(record).execute()
        result.media.append(record["id"])
    if message.type == "unsupported":
        result.ignored += 1
    else:
        result.messages += 1
    result.to_route.append((conversation_id, message_id, epoch_seconds(sent_at)))


_INSERT_FIELDS = ("id", "conversation", "channel", "direction", "sender", "type", "text", "media", "extra",
                  "provider_message_id", "sent_at", "received_at", "status", "attempts")


def _insert_message(values: dict) -> bool:
    """INSERT … ON CONFLICT DO NOTHING, numbered with the conversation's next
    `seq` (models.message.numbered_insert: SQL built once per database, since
    peewee's query builder costs more than the insert itself on this path).
    True when the row is new."""
    params = [Message._meta.fields[name].db_value(values[name]) for name in _INSERT_FIELDS]
    cursor = None
    for sql, bound in numbered_insert(_INSERT_FIELDS, params, values["conversation"], skip_duplicate=True):
        cursor = db.execute_sql(sql, bound)
    if cursor.rowcount == 1:
        return True
    db.execute_sql(*unnumber(values["conversation"]))
    return False


def _is_our_own_echo(provider: str, channel_id: str, conversation_id: str, message: InboundMessage,
                     result: IngestResult) -> bool:
    """Is this `fromMe` message Baton's own send coming back? Decided by provider
    ids, never by text alone: a person replying from the business phone with
    the very words Baton sent a minute ago is a person replying.

    An id Baton already knows is its own (the insert would skip it anyway).
    Cloud API reports as echoes only what was sent from the WhatsApp Business
    app, never Baton's API sends, so any other Cloud API echo is a person. A
    WASender echo carries the WhatsApp key id while Baton's send holds
    WASender's msgId (nothing ties the two): it is Baton's only while one of
    this conversation's sends still waits for its key id (msgId not yet
    exchanged, or an outcome not yet known); the oldest such send with the same
    content takes the echo's id, so each send is matched at most once and a
    send whose id is known can never swallow a later message."""
    if _known_id(channel_id, message.provider_message_id):
        return True
    if provider != WASENDER:
        return False
    waiting = (Message.select(Message.id, Message.provider_message_id, Message.status, Message.conversation,
                              Message.text, Message.type, Message.media)
               .where((Message.conversation == conversation_id) & (Message.direction == "out")
                      & (Message.provider_message_id.is_null() & Message.status.in_(UNSENT)
                         | Message.provider_message_id.is_null(False))
                      & (Message.received_at >= utcnow() - ECHO_WINDOW))
               .order_by(Message.sent_at, Message.id))
    head_seen = False
    for row in waiting:
        if row.provider_message_id is None:
            # Not accepted yet: only the head of the outbound queue can be in
            # flight (one send per conversation at a time); the rest never left.
            if head_seen:
                continue
            head_seen = True
        elif not _is_wasender_send_id(row.provider_message_id):
            continue                    # its key id is known: its echo came (or cannot come) already
        if not _same_content(row, message):
            continue
        if row.provider_message_id is not None:
            return _adopt_id(row.id, row.provider_message_id, message.provider_message_id)
        if _reconcile(row.id, message.provider_message_id, {Message.status: "sent"}):
            result.reconciled.append(row.conversation_id)
            return True
    return False


def _same_content(row: Message, message: InboundMessage) -> bool:
    """Does the echo show what this send said (its text, or its media's kind and caption)?"""
    if (row.media or {}).get("type") or row.type not in ("text", "template"):
        kind = (row.media or {}).get("type") or row.type
        return message.type == kind and (message.text or None) == (row.text or None)
    return bool(message.text) and message.text == row.text


def _record_status(provider: str, status: StatusUpdate, cache: IngestCache,
                   result: IngestResult) -> tuple[str, str] | None:
    """Statuses only move forward (models.message.STATUS_RANK): an older status
    arriving late changes nothing. Returns (channel_id, provider_message_id)
    when the message changed. A status naming Baton's own message id (Cloud
    API `biz_opaque_callback_data`) of a send not yet known as accepted
    reconciles it: the message takes the provider's id and the status."""
    rank = STATUS_RANK.get(status.status)
    if rank is None:
        return None
    channel_id = _channel_id(provider, status.phone_number_id, cache)
    lower = [name for name, r in STATUS_RANK.items() if r < rank]
    changes = {Message.status: status.status}
    if status.error:
        changes[Message.error_code] = _error_code(status.error.get("code"))
        changes[Message.error_title] = _bounded(status.error.get("title"), 400) or ""
        changes[Message.error_details] = _bounded(status.error.get("details"), ERROR_DETAILS_LIMIT)
    update = (Message.update(changes)
              .where((Message.channel == channel_id)
                     & (Message.provider_message_id == status.provider_message_id)
                     & (Message.direction == "out")
                     & (Message.status.is_null() | Message.status.in_(lower))))
    changed = update.execute()
    if not changed and status.reference:
        reconciled = _reconcile(status.reference, status.provider_message_id, changes, channel_id)
        if reconciled:
            result.reconciled.append(reconciled)
            changed = 1
    if not changed and provider == WASENDER and _adopt_wasender_id(channel_id, status):
        changed = update.execute()
    return (channel_id, status.provider_message_id) if changed else None


def _reconcile(message_id: str, provider_message_id: str, changes: dict, channel_id: str | None = None) -> str | None:
    """A send not yet known as accepted was: it takes the provider's id and
    `changes`; returns its conversation id (None when nothing matched)."""
    where = ((Message.id == message_id) & (Message.direction == "out") & Message.provider_message_id.is_null()
             & Message.status.in_(UNSENT))
    if channel_id is not None:
        where &= Message.channel == channel_id
    row = Message.select(Message.conversation, Message.channel).where(where).first()
    if row is None or _known_id(row.channel_id if channel_id is None else channel_id, provider_message_id):
        return None
    updated = (Message.update({**changes, Message.provider_message_id: provider_message_id,
                               Message.next_attempt_at: None})
               .where(where).execute())
    if updated:
        log.info("message %s reconciled: the provider took it as %s", message_id, provider_message_id)
    return row.conversation_id if updated else None


# -- WASender ids ---------------------------------------------------------------------------------
# WASender's send API answers with its own numeric `msgId`; the message's
# webhooks (its echo, message.sent, messages.update, receipts) carry the
# WhatsApp key id instead, and nothing in either ties one to the other. A
# message Baton sent keeps the msgId until the first of them arrives, then
# adopts the key id: the echo goes to the oldest of the conversation's sends
# still holding a msgId (or waiting on an unknown outcome) with its content;
# a status that matches no message goes to the oldest message to that
# customer still waiting for its key id (sends to one customer are made, and
# acknowledged, in order).

WASENDER = "wasender"


def _is_wasender_send_id(provider_message_id: str | None) -> bool:
    return bool(provider_message_id) and provider_message_id.isdigit()


def _known_id(channel_id: str, provider_message_id: str) -> bool:
    return (Message.select(Message.id)
            .where((Message.channel == channel_id) & (Message.provider_message_id == provider_message_id))
            .exists())


def _adopt_id(message_id: str, send_id: str, key_id: str) -> bool:
    return bool(Message.update(provider_message_id=key_id)
                .where((Message.id == message_id) & (Message.provider_message_id == send_id))
                .execute())


def _adopt_wasender_id(channel_id: str, status: StatusUpdate) -> bool:
    """Give the status's key id to the oldest recent message to its recipient that
    still has WASender's msgId; False when there is none (or the id is taken)."""
    if not status.recipient_wa_id or _known_id(channel_id, status.provider_message_id):
        return False
    waiting = (Message.select(Message.id, Message.provider_message_id)
               .join(Conversation, on=(Message.conversation == Conversation.id))
               .join(Contact, on=(Conversation.contact == Contact.id))
               .where((Contact.channel == channel_id)
                      & ((Contact.wa_id == status.recipient_wa_id) | (Contact.user_id == status.recipient_wa_id))
                      & (Message.channel == channel_id) & (Message.direction == "out")
                      & Message.provider_message_id.is_null(False)
                      & (Message.received_at >= utcnow() - ECHO_WINDOW))
               .order_by(Message.sent_at, Message.id))
    for row in waiting:
        if _is_wasender_send_id(row.provider_message_id):
            return _adopt_id(row.id, row.provider_message_id, status.provider_message_id)
    return False


def _error_code(code) -> int | None:
    """The provider's numeric code, when it is one the INTEGER column holds."""
    try:
        code = int(code)
    except (TypeError, ValueError, OverflowError):
        return None
    return code if -2**31 <= code < 2**31 else None


def _bounded(text, limit: int) -> str | None:
    text = str(text).strip() if text is not None else ""
    if len(text) > limit:
        text = text[:limit - 1] + "…"
    return text or None


def announce_updates(redis, prefix: str, updated: list[tuple[str, str]]) -> None:
    """Publish `message.updated` for messages whose status changed, after the
    commit, to whoever may see their conversation. Best effort: the status is
    recorded either way, and a console that missed the event re-reads it over REST."""
    if not updated:
        return
    try:
        publish(redis, prefix, updated_message_events(updated))
    except Exception:
        log.warning("could not announce %d status change(s)", len(updated), exc_info=True)


def updated_message_events(updated: list[tuple[str, str]]) -> list[dict]:
    """One `message.updated` event per changed message, in the order given; one query."""
    channels = {channel_id for channel_id, _ in updated}
    provider_ids = {provider_message_id for _, provider_message_id in updated}
    rows = _with_conversation(Message.channel.in_(list(channels)) & Message.provider_message_id.in_(list(provider_ids)))
    by_key = {(row.channel_id, row.provider_message_id): row for row in rows}
    return [_updated_event(by_key[key]) for key in updated if key in by_key]


def announce_message_ids(redis, prefix: str, message_ids: list[str]) -> None:
    """`message.updated` for outbound messages Baton changed itself (a send that failed)."""
    if not message_ids:
        return
    try:
        rows = {row.id: row for row in _with_conversation(Message.id.in_(message_ids))}
        publish(redis, prefix, [_updated_event(rows[i]) for i in message_ids if i in rows])
    except Exception:
        log.warning("could not announce %d message change(s)", len(message_ids), exc_info=True)


def _with_conversation(where) -> list[Message]:
    return list(Message.select(Message, Conversation.id, Conversation.state, Conversation.group,
                               Conversation.assigned_agent_id, Conversation.offered_agent_id)
                .join(Conversation, on=(Message.conversation == Conversation.id), attr="conv")
                .where(where & (Message.direction == "out")))


def _updated_event(message: Message) -> dict:
    return live_event("message.updated", message.conversation_id, message.to_dict(), snapshot(message.conv))
