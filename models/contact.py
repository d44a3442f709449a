"""A WhatsApp user as seen on one channel."""
from peewee import CharField, DateTimeField, ForeignKeyField

from .base import BaseModel, new_id, utcnow
from .channel import Channel


class Contact(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("ct"))
    channel = ForeignKeyField(Channel, backref="contacts", on_delete="CASCADE")
    wa_id = CharField(max_length=256)   # a phone number, or a business-scoped user id (up to 131)
    name = CharField(max_length=256, null=True)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("channel", "wa_id"), True),)

    def to_dict(self) -> dict:
        return {"wa_id": self.wa_id, "name": self.name}
