"""What the sandbox provider "sent": recorded instead of calling Meta."""
from peewee import CharField, DateTimeField

from .base import BaseModel, JSONField, isoformat, new_id, utcnow


class OutboxEntry(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("ob"))
    phone_number_id = CharField(max_length=64)
    to = CharField(max_length=256, index=True)
    provider_message_id = CharField(max_length=200, unique=True)
    payload = JSONField()
    created_at = DateTimeField(default=utcnow, index=True)

    def to_dict(self) -> dict:
        return {"id": self.id, "phone_number_id": self.phone_number_id, "to": self.to,
                "provider_message_id": self.provider_message_id, "payload": self.payload,
                "created_at": isoformat(self.created_at)}
