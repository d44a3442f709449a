"""Which contact, and so which conversation, a message belongs to.

A customer is known by a phone number (`Contact.wa_id`), a business-scoped
user id (`Contact.user_id`, a BSUID), or both, and Meta may start or stop
sending the phone number at any time. Either id finds the same contact:

- a webhook with both ids for a contact known by only one fills in the other
  (link), and one that names a different phone number or user id for a known
  customer takes the new one;
- when the two ids turn out to belong to two contacts (one known by phone, the
  other by user id: made before Baton stored both), they are merged into one
  (`merge`): one conversation survives, the other's messages, audit trail, bot
  turns, callbacks and metadata (where the survivor has none) move to it, and an
  audit event `contact_merged` says so.
  A person never keeps two conversations;
- a system message that re-identifies the customer (`user_changed_user_id`,
  `user_changed_number`: `InboundMessage.new_user_id` / `new_wa_id`) moves the
  contact to its new ids (`contact_relinked`), merging when another contact
  already holds them.

The hot path stays cheap: a customer seen by this process before costs no
query (the ingest cache is keyed by the ids the message carries), one seen by
another process one SELECT. All of it runs inside the webhook's transaction.

Dropping the merged conversation is safe for the pumps: a message moved away
is not routed under its old conversation (routing.inbound skips it and the
sweep re-dispatches it under its new one), and a conversation that is gone
routes nothing. An agent seat the merged conversation held is returned by the
sweep's capacity reconcile.
"""
from __future__ import annotations

import logging
import operator
from functools import reduce
from typing import TYPE_CHECKING

from integrations.whatsapp.base import InboundMessage
from models import (AGENT_CONTROLLED, CLOSED, PENDING_AGENT, BotTurn, CallbackRequest, Contact, Conversation,
                    DeadLetter, Delivery, Event, Message, new_id)
from models.base import utcnow
from models.message import move_messages
from models.prepared import PreparedSelect

if TYPE_CHECKING:
    from .ingest import IngestCache

log = logging.getLogger(__name__)

_CACHE_LIMIT = 50_000
# Which of two conversations of one person survives a merge: the one a human
# holds, then one waiting for a human, then an open one, then the latest.
_KEEP_RANK = {AGENT_CONTROLLED: 3, PENDING_AGENT: 2, CLOSED: 0}

_CUSTOMER = PreparedSelect(lambda channel_id, wa_id, user_id: (
    Contact.select(Contact.id, Contact.wa_id, Contact.user_id, Contact.name, Contact.username, Conversation.id)
    .join(Conversation, on=(Conversation.contact == Contact.id), attr="conversation")
    .where((Contact.channel == channel_id) & ((Contact.wa_id == wa_id) | (Contact.user_id == user_id)))))


def conversation_for(channel_id: str, message: InboundMessage, cache: IngestCache) -> str:
    """The conversation id of the message's customer on the channel, creating
    contact and conversation once, linking, merging and re-linking ids."""
    name = None if message.from_me else message.contact_name
    username = None if message.from_me else message.username
    key = (channel_id, message.wa_id, message.user_id)
    cached = cache.contacts.get(key)
    if cached is not None and not (message.new_wa_id or message.new_user_id):
        contact_id, conversation_id, known = cached
        fresh = _profile_changes(known, name, username)
        if fresh:
            Contact.update(fresh).where(Contact.id == contact_id).execute()
            cache.contacts[key] = (contact_id, conversation_id, {**known, **fresh})
        return conversation_id
    contact_id, conversation_id, profile = _resolve(channel_id, message.wa_id, message.user_id, name, username,
                                                    cache)
    if message.new_wa_id or message.new_user_id:
        contact_id, conversation_id, profile = _relink(channel_id, contact_id, conversation_id, message, cache)
    if len(cache.contacts) > _CACHE_LIMIT:
        cache.contacts.clear()
    cache.contacts[key] = (contact_id, conversation_id, profile)
    return conversation_id


def _forget(cache: IngestCache | None, conversation_ids: set[str]) -> None:
    """Drop this process's cached customers whose conversation was merged away
    (other processes find out when their insert fails, and start afresh)."""
    if cache is not None and conversation_ids:
        for key in [k for k, (_, conv_id, _) in cache.contacts.items() if conv_id in conversation_ids]:
            del cache.contacts[key]


def _profile_changes(known: dict, name: str | None, username: str | None) -> dict:
    return {field: value for field, value in (("name", name), ("username", username))
            if value and value != known.get(field)}


def _resolve(channel_id: str, wa_id: str | None, user_id: str | None, name: str | None,
             username: str | None, cache: IngestCache | None = None) -> tuple[str, str, dict]:
    rows = _CUSTOMER.rows(channel_id, wa_id, user_id)
    if not rows:
        _create(channel_id, wa_id, user_id, name, username)
        rows = _CUSTOMER.rows(channel_id, wa_id, user_id)
        if not rows:       # the contact row of a concurrent insert, whose conversation is not committed yet
            rows = [_contact_with_conversation(channel_id, wa_id, user_id)]
    if len(rows) > 1:
        return merge(channel_id, rows, wa_id, user_id, name, username, cache=cache)
    row = rows[0]
    changes = {field: value for field, value in (("wa_id", wa_id), ("user_id", user_id))
               if value and value != getattr(row, field)}
    changes.update(_profile_changes({"name": row.name, "username": row.username}, name, username))
    if changes:
        Contact.update(changes).where(Contact.id == row.id).execute()
    profile = {"name": changes.get("name", row.name), "username": changes.get("username", row.username)}
    return row.id, row.conversation.id, profile


def _create(channel_id: str, wa_id: str | None, user_id: str | None, name: str | None,
            username: str | None) -> None:
    """Contact and conversation, race-safe: a concurrent insert of the same
    customer wins quietly (INSERT … ON CONFLICT DO NOTHING)."""
    now = utcnow()
    (Contact.insert(id=new_id("ct"), channel=channel_id, wa_id=wa_id, user_id=user_id, name=name,
                    username=username, created_at=now)
     .on_conflict_ignore()
     .execute())
    for contact in Contact.select(Contact.id).where(_named_by(channel_id, wa_id, user_id)):
        (Conversation.insert(id=new_id("c"), channel=channel_id, contact=contact.id, created_at=now,
                             updated_at=now, metadata={})
         .on_conflict_ignore()
         .execute())


def _named_by(channel_id: str, wa_id: str | None, user_id: str | None):
    """Contacts of the channel with either id (a missing id matches nothing: peewee
    would turn `== None` into IS NULL)."""
    either = [field == value for field, value in ((Contact.wa_id, wa_id), (Contact.user_id, user_id)) if value]
    return (Contact.channel == channel_id) & reduce(operator.or_, either)


def _contact_with_conversation(channel_id: str, wa_id: str | None, user_id: str | None) -> Contact:
    contact = (Contact.select(Contact.id, Contact.wa_id, Contact.user_id, Contact.name, Contact.username)
               .where(_named_by(channel_id, wa_id, user_id))
               .get())
    contact.conversation = Conversation.get(Conversation.contact == contact.id)
    return contact


# -- merging and re-linking --------------------------------------------------------------------------

def merge(channel_id: str, rows: list[Contact], wa_id: str | None, user_id: str | None,
          name: str | None, username: str | None, cache: IngestCache | None = None) -> tuple[str, str, dict]:
    """Make the contacts of `rows` (with their conversations) one contact
    known by `wa_id` and `user_id`. Returns (contact id, conversation id, profile)."""
    conversations = {c.id: c for c in Conversation.select().where(
        Conversation.id.in_([row.conversation.id for row in rows]))}
    rows = sorted(rows, key=lambda row: _keep_order(conversations[row.conversation.id]), reverse=True)
    keep, gone = rows[0], rows[1:]
    keep_conv = conversations[keep.conversation.id]
    ids = {"wa_id": wa_id or keep.wa_id or next((r.wa_id for r in gone if r.wa_id), None),
           "user_id": user_id or keep.user_id or next((r.user_id for r in gone if r.user_id), None)}
    profile = {"name": name or keep.name or next((r.name for r in gone if r.name), None),
               "username": username or keep.username or next((r.username for r in gone if r.username), None)}
    metadata = {}
    for row in gone:
        old = conversations[row.conversation.id]
        # Held for an agent typing on the merged conversation: that hold ends here,
        # so they go back to routing (in the survivor, in the customer's order).
        Message.update(routed_to=None).where((Message.conversation == old.id) & (Message.routed_to == "held")) \
            .execute()
        moved = move_messages(old.id, keep_conv.id)      # renumbers the survivor's history (seq)
        Event.update(conversation=keep_conv.id).where(Event.conversation == old.id).execute()
        BotTurn.update(conversation=keep_conv.id).where(BotTurn.conversation == old.id).execute()
        CallbackRequest.update(conversation=keep_conv.id).where(CallbackRequest.conversation == old.id).execute()
        Delivery.update(conversation_id=keep_conv.id).where(Delivery.conversation_id == old.id).execute()
        DeadLetter.update(conversation=keep_conv.id).where(DeadLetter.conversation == old.id).execute()
        metadata.update(old.metadata or {})
        Conversation.delete().where(Conversation.id == old.id).execute()
        Contact.delete().where(Contact.id == row.id).execute()
        Event.create(conversation=keep_conv.id, actor="system", from_state=keep_conv.state, to_state=keep_conv.state,
                     reason="contact_merged", details={
                         "merged_contact_id": row.id, "merged_conversation_id": old.id,
                         "merged_state": old.state, "merged_wa_id": row.wa_id, "merged_user_id": row.user_id,
                         "moved_messages": moved,
                         "wa_id": ids["wa_id"], "user_id": ids["user_id"]})
        log.info("contact %s merged into %s (conversation %s into %s, %s)", row.id, keep.id, old.id,
                 keep_conv.id, old.state)
    Contact.update({**ids, **profile}).where(Contact.id == keep.id).execute()
    _forget(cache, {row.conversation.id for row in gone})
    # Moved messages change what the conversation holds: a plan read before this replans.
    latest = [conversations[r.conversation.id].last_inbound_at for r in rows]
    latest = max((t for t in latest if t is not None), default=None)
    Conversation.update(version=Conversation.version + 1, last_inbound_at=latest, updated_at=utcnow(),
                        metadata={**metadata, **(keep_conv.metadata or {})}) \
        .where(Conversation.id == keep_conv.id).execute()
    return keep.id, keep_conv.id, profile


def _keep_order(conv: Conversation) -> tuple:
    return (_KEEP_RANK.get(conv.state, 1), conv.last_activity_at or conv.created_at, conv.created_at)


def _relink(channel_id: str, contact_id: str, conversation_id: str, message: InboundMessage,
            cache: IngestCache | None = None) -> tuple[str, str, dict]:
    """The customer is known by new ids from now on (a system message said so)."""
    contact = Contact.get_by_id(contact_id)
    new = {"wa_id": message.new_wa_id or contact.wa_id, "user_id": message.new_user_id or contact.user_id}
    before = {"wa_id": contact.wa_id, "user_id": contact.user_id}
    if new == before:
        return contact.id, conversation_id, {"name": contact.name, "username": contact.username}
    others = [row for row in _CUSTOMER.rows(channel_id, message.new_wa_id, message.new_user_id)
              if row.id != contact.id]
    conv = Conversation.get_by_id(conversation_id)
    Event.create(conversation=conversation_id, actor="system", from_state=conv.state, to_state=conv.state,
                 reason="contact_relinked", details={"before": before, "after": new, "message_id":
                                                     message.provider_message_id})
    if others:
        contact.conversation = conv
        return merge(channel_id, [contact, *others], new["wa_id"], new["user_id"], contact.name,
                     contact.username, cache=cache)
    Contact.update(new).where(Contact.id == contact.id).execute()
    return contact.id, conversation_id, {"name": contact.name, "username": contact.username}
