"""Dead letters (issue 11): inbound messages set aside after ROUTE_MAX_ATTEMPTS
failed routing attempts, with their error, until an admin retries them.

A frozen copy of models/dead_letter.py as this migration created it;
`conversation` and `message` stand in for the existing tables its foreign
keys point at. The routing attempts themselves are counted in the existing
`message.attempts` column (unused by inbound messages until now).
"""
from datetime import UTC, datetime

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, Model, TextField


def _now():
    return datetime.now(UTC).replace(tzinfo=None)


class _Frozen(Model):
    class Meta:
        legacy_table_names = False


class Conversation(_Frozen):
    id = CharField(primary_key=True)

    class Meta:
        table_name = "conversation"


class Message(_Frozen):
    id = CharField(primary_key=True)

    class Meta:
        table_name = "message"


class DeadLetter(_Frozen):
    id = CharField(primary_key=True)
    message = ForeignKeyField(Message, on_delete="CASCADE")
    conversation = ForeignKeyField(Conversation, on_delete="CASCADE")
    attempts = IntegerField()
    error = TextField()
    created_at = DateTimeField(default=_now)
    retried_at = DateTimeField(null=True)

    class Meta:
        table_name = "dead_letter"
        indexes = (
            (("retried_at", "created_at"), False),
        )


def up(migrator, db):
    with db.bind_ctx([Conversation, Message, DeadLetter]):
        DeadLetter.create_table(safe=False)
