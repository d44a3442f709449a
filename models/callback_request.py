"""A customer nobody could take in time, waiting to be called back.

Recorded by the `collect_callback` pending-timeout policy; the bot collects
the details in mode `collect_callback`, agents see the open requests.
"""
from peewee import CharField, DateTimeField, ForeignKeyField, TextField

from .base import BaseModel, isoformat, new_id, utcnow
from .conversation import Conversation


class CallbackRequest(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("cb"))
    conversation = ForeignKeyField(Conversation, backref="callbacks", on_delete="CASCADE")
    group = CharField(max_length=64, null=True)
    reason = CharField(max_length=64)
    status = CharField(max_length=12, default="open", index=True)     # open | done
    note = TextField(null=True)
    created_at = DateTimeField(default=utcnow)
    done_at = DateTimeField(null=True)
    done_by = CharField(max_length=40, null=True)

    def to_dict(self) -> dict:
        return {"id": self.id, "conversation_id": self.conversation_id, "group": self.group,
                "reason": self.reason, "status": self.status, "note": self.note,
                "created_at": isoformat(self.created_at), "done_at": isoformat(self.done_at),
                "done_by": self.done_by}
