"""A turn handed to the bot: the reply must quote its id, and is refused when
control changed (the conversation's `control_epoch` moved) since it was issued."""
from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField

from .base import BaseModel, new_id, utcnow
from .conversation import Conversation


class BotTurn(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("t"))
    conversation = ForeignKeyField(Conversation, on_delete="CASCADE")
    message_id = CharField(max_length=40)
    control_epoch = IntegerField()
    mode = CharField(max_length=20, default="normal")
    created_at = DateTimeField(default=utcnow)
    answered_at = DateTimeField(null=True)
