"""Every message in and out of a conversation.

Inbound rows are written by the webhook (routed_to NULL until the drain routes
them); outbound rows are written with status `queued` and sent by the outbound
lane. `(channel, provider_message_id)` is unique: a webhook retried by the
provider inserts nothing the second time.
"""
from peewee import (CharField, DateTimeField, ForeignKeyField, IntegerField, TextField)

from .base import BaseModel, JSONField, isoformat, new_id, utcnow
from .channel import Channel
from .conversation import Conversation

# Delivery statuses of an outbound message only move up this ladder, whatever
# order the provider's webhooks arrive in. `played` (a voice or video message
# was played) implies `read`, so it ranks above it; `failed` is final and ranks
# above everything: a late `sent` or `read` never hides a failure.
STATUS_RANK = {"queued": 0, "sent": 1, "delivered": 2, "read": 3, "played": 4, "failed": 5}
# Not yet accepted by the provider: `queued`, or `unknown` (a send whose outcome
# waits to be reconciled, see jobs/send.py). Written as literals, not bound
# parameters, so SQLite can prove a query fits the partial index holding them
# (migration 0008).
UNSENT = ("queued", "unknown")
ERROR_DETAILS_LIMIT = 1000                               # characters of the provider's explanation kept


def is_unsent():
    """`message.status IN ('queued', 'unknown')`, with the values inline."""
    from peewee import OP, SQL, Expression

    return Expression(Message.status, OP.IN, SQL("(%s)" % ", ".join(f"'{s}'" for s in UNSENT)))


class Message(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("m"))
    conversation = ForeignKeyField(Conversation, backref="messages", on_delete="CASCADE")
    channel = ForeignKeyField(Channel, on_delete="CASCADE")
    direction = CharField(max_length=3)                 # in | out
    sender = CharField(max_length=8)                    # user | bot | agent | system
    agent_id = CharField(max_length=40, null=True)
    type = CharField(max_length=16, default="text")
    text = TextField(null=True)
    media = JSONField(null=True)
    template = JSONField(null=True)
    extra = JSONField(null=True)                        # location, contacts, interactive… as sent
    provider_message_id = CharField(max_length=200, null=True)
    sent_at = DateTimeField()                           # payload timestamp (inbound) / creation (outbound)
    received_at = DateTimeField(default=utcnow)
    routed_to = CharField(max_length=20, null=True)     # NULL = not routed yet
    status = CharField(max_length=10, null=True)
    error_code = IntegerField(null=True)
    error_title = CharField(max_length=400, null=True)
    turn_id = CharField(max_length=40, null=True)
    control_epoch = IntegerField(null=True)             # bot replies: epoch they were allowed in
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(null=True)
    error_details = TextField(null=True)                # why a send failed, at length (0005 adds it last)

    class Meta:
        indexes = (
            (("channel", "provider_message_id"), True),
            (("conversation", "sent_at"), False),
            (("routed_to", "received_at"), False),
        )

    def to_dict(self) -> dict:
        error = None
        if self.error_code is not None or self.error_title or self.error_details:
            error = {"code": self.error_code, "title": self.error_title, "details": self.error_details}
        return {
            "id": self.id, "conversation_id": self.conversation_id, "direction": self.direction,
            "sender": self.sender, "agent_id": self.agent_id, "type": self.type, "text": self.text,
            "media": self.media, "provider_message_id": self.provider_message_id,
            "sent_at": isoformat(self.sent_at), "received_at": isoformat(self.received_at),
            "routed_to": self.routed_to, "status": self.status, "error": error,
        }
