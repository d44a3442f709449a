"""A business WhatsApp number Baton answers on, per provider."""
from peewee import CharField, DateTimeField

from .base import BaseModel, new_id, utcnow


class Channel(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("ch"))
    provider = CharField(max_length=20)
    phone_number_id = CharField(max_length=64)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("provider", "phone_number_id"), True),)

    def to_dict(self) -> dict:
        return {"id": self.id, "provider": self.provider, "phone_number_id": self.phone_number_id}
