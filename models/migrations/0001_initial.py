"""The schema as Baton created it before versioned migrations (commit dadd7ee).

Frozen copies of the models of that day, not the application models: this file
must create the same tables whatever the models become. Defaults matter only
to `adopt()`, which fills a column it adds to existing rows with them.
"""
from datetime import UTC, datetime

from peewee import CharField, DateTimeField, FloatField, ForeignKeyField, IntegerField, Model, TextField
from playhouse.migrate import migrate


def _now():
    return datetime.now(UTC).replace(tzinfo=None)


class _Frozen(Model):
    class Meta:
        legacy_table_names = False     # index names start with the table name, as Baton's did


class Channel(_Frozen):
    id = CharField(primary_key=True)
    provider = CharField(max_length=20)
    phone_number_id = CharField(max_length=64)
    created_at = DateTimeField(default=_now)

    class Meta:
        table_name = "channel"
        indexes = ((("provider", "phone_number_id"), True),)


class Contact(_Frozen):
    id = CharField(primary_key=True)
    channel = ForeignKeyField(Channel, on_delete="CASCADE")
    wa_id = CharField(max_length=128)
    name = CharField(max_length=256, null=True)
    created_at = DateTimeField(default=_now)

    class Meta:
        table_name = "contact"
        indexes = ((("channel", "wa_id"), True),)


class Conversation(_Frozen):
    id = CharField(primary_key=True)
    channel = ForeignKeyField(Channel, on_delete="CASCADE")
    contact = ForeignKeyField(Contact, unique=True, on_delete="CASCADE")
    state = CharField(max_length=20, default="BOT_CONTROLLED", index=True)
    version = IntegerField(default=1)
    control_epoch = IntegerField(default=1)
    assigned_agent_id = CharField(max_length=40, null=True, index=True)
    offered_agent_id = CharField(max_length=40, null=True)
    group = CharField(max_length=64, null=True)
    escalation_reason = CharField(max_length=32, null=True)
    escalation_urgency = FloatField(null=True)
    escalation_requested_at = DateTimeField(null=True)
    cooldown_remaining = IntegerField(default=0)
    bot_failures = IntegerField(default=0)
    pending_since = DateTimeField(null=True)
    last_pending_notice_at = DateTimeField(null=True)
    last_inbound_at = DateTimeField(null=True)
    offer_expires_at = DateTimeField(null=True)
    offers_lapsed = TextField(default="[]")
    awaiting_agent_since = DateTimeField(null=True)
    last_agent_id = CharField(max_length=40, null=True)
    typing_agent_id = CharField(max_length=40, null=True)
    typing_until = DateTimeField(null=True)
    held_since = DateTimeField(null=True)
    last_activity_at = DateTimeField(null=True, index=True)
    metadata = TextField(default="{}")
    created_at = DateTimeField(default=_now)
    updated_at = DateTimeField(default=_now, index=True)

    class Meta:
        table_name = "conversation"


class Message(_Frozen):
    id = CharField(primary_key=True)
    conversation = ForeignKeyField(Conversation, on_delete="CASCADE")
    channel = ForeignKeyField(Channel, on_delete="CASCADE")
    direction = CharField(max_length=3)
    sender = CharField(max_length=8)
    agent_id = CharField(max_length=40, null=True)
    type = CharField(max_length=16, default="text")
    text = TextField(null=True)
    media = TextField(null=True)
    template = TextField(null=True)
    extra = TextField(null=True)
    provider_message_id = CharField(max_length=200, null=True)
    sent_at = DateTimeField()
    received_at = DateTimeField(default=_now)
    routed_to = CharField(max_length=20, null=True)
    status = CharField(max_length=10, null=True)
    error_code = IntegerField(null=True)
    error_title = CharField(max_length=400, null=True)
    turn_id = CharField(max_length=40, null=True)
    control_epoch = IntegerField(null=True)
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(null=True)

    class Meta:
        table_name = "message"
        indexes = (
            (("channel", "provider_message_id"), True),
            (("conversation", "sent_at"), False),
            (("routed_to", "received_at"), False),
        )


class Event(_Frozen):
    id = CharField(primary_key=True)
    conversation = ForeignKeyField(Conversation, on_delete="CASCADE")
    actor = CharField(max_length=80)
    from_state = CharField(max_length=20, null=True)
    to_state = CharField(max_length=20)
    reason = CharField(max_length=64)
    details = TextField(null=True)
    created_at = DateTimeField(default=_now, index=True)

    class Meta:
        table_name = "event"


class BotTurn(_Frozen):
    id = CharField(primary_key=True)
    conversation = ForeignKeyField(Conversation, on_delete="CASCADE")
    message_id = CharField(max_length=40)
    control_epoch = IntegerField()
    mode = CharField(max_length=20, default="normal")
    created_at = DateTimeField(default=_now)
    answered_at = DateTimeField(null=True)

    class Meta:
        table_name = "bot_turn"


class Delivery(_Frozen):
    id = CharField(primary_key=True)
    event_type = CharField(max_length=40)
    url = CharField(max_length=1000)
    body = TextField()
    conversation_id = CharField(max_length=40, null=True, index=True)
    status = CharField(max_length=10, default="pending", index=True)
    attempts = IntegerField(default=0)
    last_error = CharField(max_length=500, null=True)
    next_attempt_at = DateTimeField(null=True)
    created_at = DateTimeField(default=_now)
    delivered_at = DateTimeField(null=True)

    class Meta:
        table_name = "delivery"


class OutboxEntry(_Frozen):
    id = CharField(primary_key=True)
    phone_number_id = CharField(max_length=64)
    to = CharField(max_length=128, index=True)
    provider_message_id = CharField(max_length=200, unique=True)
    payload = TextField()
    created_at = DateTimeField(default=_now, index=True)

    class Meta:
        table_name = "outbox_entry"


class ApiToken(_Frozen):
    id = CharField(primary_key=True)
    name = CharField(max_length=120)
    role = CharField(max_length=12)
    token_hash = CharField(max_length=64, unique=True)
    agent_id = CharField(max_length=40, null=True)
    created_at = DateTimeField(default=_now)
    revoked_at = DateTimeField(null=True)

    class Meta:
        table_name = "api_token"


class UnsupportedUpdate(_Frozen):
    id = CharField(primary_key=True)
    provider = CharField(max_length=20)
    kind = CharField(max_length=80)
    phone_number_id = CharField(max_length=64, null=True)
    payload = TextField(null=True)
    created_at = DateTimeField(default=_now)

    class Meta:
        table_name = "unsupported_update"


class Agent(_Frozen):
    id = CharField(primary_key=True)
    name = CharField(max_length=120)
    role = CharField(max_length=12, default="agent")
    groups = TextField(default="[]")
    max_concurrent = IntegerField(default=5)
    status = CharField(max_length=12, default="offline")
    last_assigned_at = DateTimeField(null=True)
    created_at = DateTimeField(default=_now)

    class Meta:
        table_name = "agent"


class CallbackRequest(_Frozen):
    id = CharField(primary_key=True)
    conversation = ForeignKeyField(Conversation, on_delete="CASCADE")
    group = CharField(max_length=64, null=True)
    reason = CharField(max_length=64)
    status = CharField(max_length=12, default="open", index=True)
    note = TextField(null=True)
    created_at = DateTimeField(default=_now)
    done_at = DateTimeField(null=True)
    done_by = CharField(max_length=40, null=True)

    class Meta:
        table_name = "callback_request"


# In the order Baton used to create them.
MODELS = [Channel, Contact, Conversation, Message, Event, BotTurn, Delivery, OutboxEntry, ApiToken,
          UnsupportedUpdate, Agent, CallbackRequest]


def up(migrator, db):
    with db.bind_ctx(MODELS):
        for model in MODELS:
            model.create_table(safe=False)


def adopt(migrator, db) -> list[str]:
    """Bring a database made by Baton's unversioned `init_schema()` to this
    shape, as that function did on every start: missing tables are created,
    missing columns added (nullable, or filled with the default), missing
    indexes created. A database made by the last unversioned Baton already has
    it all and is left untouched. Returns a line per change."""
    changes = []
    existing = set(db.get_tables())
    with db.bind_ctx(MODELS):
        for model in MODELS:
            table = model._meta.table_name
            if table not in existing:
                model.create_table(safe=False)
                changes.append(f"created table {table}")
                continue
            have = {column.name for column in db.get_columns(table)}
            for field in model._meta.sorted_fields:
                if field.column_name in have:
                    continue
                field = field.clone()
                if not field.null and field.default is None:
                    field.null = True          # existing rows have no value for it
                migrate(migrator.add_column(table, field.column_name, field))
                changes.append(f"added column {table}.{field.column_name}")
            have_indexes = {index.name for index in db.get_indexes(table)}
            for index in model._meta.fields_to_index():
                if index._name not in have_indexes:
                    db.execute(index)
                    changes.append(f"created index {index._name}")
    return changes
