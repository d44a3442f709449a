"""An event delivered (or to be delivered) to n8n, with its retry history.

The body is stored exactly as signed so a replay sends the same bytes."""
from peewee import CharField, DateTimeField, IntegerField, TextField

from .base import BaseModel, isoformat, new_id, utcnow

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


class Delivery(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("dl"))
    event_type = CharField(max_length=40)
    url = CharField(max_length=1000)
    body = TextField()
    conversation_id = CharField(max_length=40, null=True, index=True)
    status = CharField(max_length=10, default=PENDING, index=True)
    attempts = IntegerField(default=0)
    last_error = CharField(max_length=500, null=True)
    next_attempt_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow)
    delivered_at = DateTimeField(null=True)

    def to_dict(self) -> dict:
        return {"id": self.id, "event": self.event_type, "url": self.url, "status": self.status,
                "attempts": self.attempts, "last_error": self.last_error,
                "conversation_id": self.conversation_id,
                "next_attempt_at": isoformat(self.next_attempt_at),
                "created_at": isoformat(self.created_at), "delivered_at": isoformat(self.delivered_at)}
