"""The audit trail: every state change of a conversation, who made it and why."""
from peewee import CharField, DateTimeField, ForeignKeyField

from .base import BaseModel, JSONField, isoformat, new_id, utcnow
from .conversation import Conversation


class Event(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("ev"))
    conversation = ForeignKeyField(Conversation, backref="events", on_delete="CASCADE")
    actor = CharField(max_length=80)                    # system | bot | token:<name> | agent:<id>
    from_state = CharField(max_length=20, null=True)
    to_state = CharField(max_length=20)
    reason = CharField(max_length=64)
    details = JSONField(null=True)
    created_at = DateTimeField(default=utcnow, index=True)

    def to_dict(self) -> dict:
        return {"id": self.id, "conversation_id": self.conversation_id, "actor": self.actor,
                "from": self.from_state, "to": self.to_state, "reason": self.reason,
                "details": self.details, "at": isoformat(self.created_at)}
