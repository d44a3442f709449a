"""Media records (issue 9): one row per media message, the copy Baton keeps.

A frozen copy of models/media.py as this migration created it; `channel` and
`message` stand in for the existing tables its foreign keys point at.
"""
from datetime import UTC, datetime

from peewee import BooleanField, CharField, DateTimeField, ForeignKeyField, IntegerField, Model, TextField


def _now():
    return datetime.now(UTC).replace(tzinfo=None)


class _Frozen(Model):
    class Meta:
        legacy_table_names = False


class Channel(_Frozen):
    id = CharField(primary_key=True)

    class Meta:
        table_name = "channel"


class Message(_Frozen):
    id = CharField(primary_key=True)

    class Meta:
        table_name = "message"


class Media(_Frozen):
    id = CharField(primary_key=True)
    channel = ForeignKeyField(Channel, null=True, on_delete="CASCADE")
    message = ForeignKeyField(Message, null=True, on_delete="SET NULL")
    direction = CharField(max_length=3)
    kind = CharField(max_length=10)
    animated = BooleanField(null=True)
    provider_media_id = CharField(max_length=256, null=True)
    mime_type = CharField(max_length=255, null=True)
    size = IntegerField(null=True)
    declared_sha256 = CharField(max_length=64, null=True)
    sha256 = CharField(max_length=64, null=True)
    filename = CharField(max_length=255, null=True)
    storage_key = CharField(max_length=100, null=True)
    status = CharField(max_length=8, default="pending")
    error = TextField(null=True)
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(null=True)
    created_at = DateTimeField(default=_now)
    stored_at = DateTimeField(null=True)
    source = TextField(null=True)

    class Meta:
        table_name = "media"
        indexes = (
            (("status", "next_attempt_at"), False),
            (("storage_key", "stored_at"), False),
            (("status", "stored_at"), False),
        )


def up(migrator, db):
    with db.bind_ctx([Channel, Message, Media]):
        Media.create_table(safe=False)
