"""A WhatsApp user as seen on one channel.

Since 2026 WhatsApp names a customer by a phone number (`wa_id`), by a
business-scoped user id (`user_id`, a BSUID such as `US.1349…`), or by both: a
customer with a username may come without a phone number at all. Either id
finds the same contact (each is unique per channel); routing/identity.py links
the two when a webhook carries both and merges two contacts that turn out to be
one person. On WASender `user_id` holds WhatsApp Web's LID (`<digits>@lid`),
linked to the phone number when an event gives both.
"""
from peewee import CharField, DateTimeField, ForeignKeyField

from .base import BaseModel, new_id, utcnow
from .channel import Channel


class Contact(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("ct"))
    channel = ForeignKeyField(Channel, backref="contacts", on_delete="CASCADE")
    wa_id = CharField(max_length=256, null=True)     # the phone number, when WhatsApp shares it
    name = CharField(max_length=256, null=True)
    created_at = DateTimeField(default=utcnow)
    user_id = CharField(max_length=256, null=True)   # the business-scoped user id (BSUID, up to 131)
    username = CharField(max_length=256, null=True)  # the customer's WhatsApp username, e.g. @maria.rios

    class Meta:
        indexes = ((("channel", "wa_id"), True), (("channel", "user_id"), True))

    @property
    def address(self) -> str:
        """Where to send: the phone number when Baton has one, else the user id."""
        return self.wa_id or self.user_id

    def to_dict(self) -> dict:
        return {"wa_id": self.wa_id, "user_id": self.user_id, "username": self.username, "name": self.name}
