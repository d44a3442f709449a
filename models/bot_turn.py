"""A turn handed to the bot: the reply must quote its id, and is refused when
control changed (the conversation's `control_epoch` moved) since it was issued,
or once the turn is closed (`closed_at`: it failed, or a human took over
before its deadline).

`deadline_at` is the durable reply deadline of a turn sent to the AI branch
(issued + BOT_REPLY_TIMEOUT); it is cleared when the bot answers or the turn
closes, so the cron's timers find due turns by that column alone."""
from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField

from .base import BaseModel, new_id, utcnow
from .conversation import Conversation

# How a turn closed without an answer (`outcome`).
TIMEOUT, DELIVERY_FAILED, SUPERSEDED = "timeout", "delivery_failed", "superseded"


class BotTurn(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("t"))
    conversation = ForeignKeyField(Conversation, on_delete="CASCADE")
    message_id = CharField(max_length=40)
    control_epoch = IntegerField()
    mode = CharField(max_length=20, default="normal")
    created_at = DateTimeField(default=utcnow)
    answered_at = DateTimeField(null=True)
    deadline_at = DateTimeField(null=True, index=True)
    closed_at = DateTimeField(null=True)
    outcome = CharField(max_length=20, null=True)
