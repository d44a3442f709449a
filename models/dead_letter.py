"""An inbound message set aside because routing it kept failing.

After ROUTE_MAX_ATTEMPTS failed attempts the drain marks the message routed
to `dead_letter` (so its conversation moves on to the next message) and
records one of these rows with the last error. Retrying puts the message back
to routing and stamps `retried_at`; should it fail again, a new row is made."""
from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, TextField

from .base import BaseModel, isoformat, new_id, utcnow
from .conversation import Conversation
from .message import Message

ERROR_LIMIT = 4000                       # characters of the error (type, text and traceback's end) kept


class DeadLetter(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("dlq"))
    message = ForeignKeyField(Message, on_delete="CASCADE")
    conversation = ForeignKeyField(Conversation, on_delete="CASCADE")
    attempts = IntegerField()
    error = TextField()
    created_at = DateTimeField(default=utcnow)
    retried_at = DateTimeField(null=True)

    class Meta:
        indexes = (
            (("retried_at", "created_at"), False),
        )

    def to_dict(self) -> dict:
        return {"id": self.id, "message_id": self.message_id, "conversation_id": self.conversation_id,
                "attempts": self.attempts, "error": self.error, "created_at": isoformat(self.created_at),
                "retried_at": isoformat(self.retried_at)}
