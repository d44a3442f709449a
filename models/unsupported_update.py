"""Valid provider updates Baton does not route (account notices, unknown
fields, group chats…), kept so an admin can see them."""
from peewee import CharField, DateTimeField

from .base import BaseModel, JSONField, new_id, utcnow


class UnsupportedUpdate(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("uu"))
    provider = CharField(max_length=20)
    kind = CharField(max_length=80)
    phone_number_id = CharField(max_length=64, null=True)
    payload = JSONField(null=True)
    created_at = DateTimeField(default=utcnow)
