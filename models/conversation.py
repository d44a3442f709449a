"""One customer's conversation on one channel, and who may speak in it.

There is one row per contact: a closed conversation reopens on the next
inbound message. `version` is the fencing token every state change
compare-and-sets; `control_epoch` changes whenever control leaves the bot, so
a bot turn issued before that can be recognised as stale.
"""
from datetime import timedelta

from peewee import (CharField, DateTimeField, FloatField, ForeignKeyField, IntegerField)

from .base import BaseModel, JSONField, isoformat, new_id, utcnow
from .channel import Channel
from .contact import Contact

BOT_CONTROLLED = "BOT_CONTROLLED"
PENDING_AGENT = "PENDING_AGENT"
AGENT_CONTROLLED = "AGENT_CONTROLLED"
CLOSED = "CLOSED"
STATES = (BOT_CONTROLLED, PENDING_AGENT, AGENT_CONTROLLED, CLOSED)

CUSTOMER_SERVICE_WINDOW = timedelta(hours=24)


def holder_of(state: str, offered_agent_id: str | None, assigned_agent_id: str | None) -> str | None:
    if state == PENDING_AGENT:
        return offered_agent_id
    if state == AGENT_CONTROLLED:
        return assigned_agent_id
    return None


class Conversation(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("c"))
    channel = ForeignKeyField(Channel, backref="conversations", on_delete="CASCADE")
    contact = ForeignKeyField(Contact, unique=True, on_delete="CASCADE")
    state = CharField(max_length=20, default=BOT_CONTROLLED, index=True)
    version = IntegerField(default=1)
    control_epoch = IntegerField(default=1)
    assigned_agent_id = CharField(max_length=40, null=True, index=True)
    offered_agent_id = CharField(max_length=40, null=True)
    group = CharField(max_length=64, null=True)
    escalation_reason = CharField(max_length=32, null=True)
    escalation_urgency = FloatField(null=True)
    escalation_requested_at = DateTimeField(null=True)
    cooldown_remaining = IntegerField(default=0)
    bot_failures = IntegerField(default=0)
    pending_since = DateTimeField(null=True)
    last_pending_notice_at = DateTimeField(null=True)
    last_inbound_at = DateTimeField(null=True)
    # Handoff bookkeeping: the live offer, who let offers lapse since the
    # last assignment, since when the customer waits for the assigned agent,
    # and an agent's typing hold on a bot conversation.
    offer_expires_at = DateTimeField(null=True)
    offers_lapsed = JSONField(default=list)
    awaiting_agent_since = DateTimeField(null=True)
    last_agent_id = CharField(max_length=40, null=True)
    typing_agent_id = CharField(max_length=40, null=True)
    typing_until = DateTimeField(null=True)
    held_since = DateTimeField(null=True)
    last_activity_at = DateTimeField(null=True, index=True)
    metadata = JSONField(default=dict)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow, index=True)
    # The `seq` of the last message stored in this conversation (0006). Only
    # models.message.numbered_insert writes it, never a plan's compare-and-set.
    message_seq = IntegerField(default=0)

    @property
    def capacity_holder(self) -> str | None:
        """The agent whose capacity this conversation uses: the one it is
        offered to while it waits, the one it is assigned to while a human
        holds it, nobody otherwise."""
        return holder_of(self.state, self.offered_agent_id, self.assigned_agent_id)

    @property
    def window_expires_at(self):
        if self.last_inbound_at is None:
            return None
        return self.last_inbound_at + CUSTOMER_SERVICE_WINDOW

    def to_dict(self) -> dict:
        escalation = None
        if self.escalation_reason:
            escalation = {"reason": self.escalation_reason, "urgency": self.escalation_urgency,
                          "requested_at": isoformat(self.escalation_requested_at)}
        return {
            "id": self.id, "state": self.state, "version": self.version,
            "channel": self.channel.to_dict(), "contact": self.contact.to_dict(),
            "assigned_agent_id": self.assigned_agent_id, "offered_agent_id": self.offered_agent_id,
            "group": self.group, "escalation": escalation,
            "cooldown_remaining": self.cooldown_remaining,
            "pending_since": isoformat(self.pending_since),
            "last_inbound_at": isoformat(self.last_inbound_at),
            "window_expires_at": isoformat(self.window_expires_at),
            "metadata": self.metadata or {}, "updated_at": isoformat(self.updated_at),
        }
