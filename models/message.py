"""Every message in and out of a conversation.

Inbound rows are written by the webhook (routed_to NULL until the drain routes
them); outbound rows are written with status `queued` and sent by the outbound
lane. `(channel, provider_message_id)` is unique: a webhook retried by the
provider inserts nothing the second time.
"""
from peewee import (CharField, DateTimeField, ForeignKeyField, IntegerField, IntegrityError, PostgresqlDatabase,
                    TextField)

from .base import BaseModel, JSONField, db, isoformat, new_id, utcnow
from .channel import Channel
from .conversation import Conversation

# Delivery statuses of an outbound message only move up this ladder, whatever
# order the provider's webhooks arrive in. `played` (a voice or video message
# was played) implies `read`, so it ranks above it; `failed` is final and ranks
# above everything: a late `sent` or `read` never hides a failure.
STATUS_RANK = {"queued": 0, "sent": 1, "delivered": 2, "read": 3, "played": 4, "failed": 5}
# Not yet accepted by the provider: `queued`, or `unknown` (a send whose outcome
# waits to be reconciled, see jobs/send.py). Written as literals, not bound
# parameters, so SQLite can prove a query fits the partial index holding them
# (migration 0008).
UNSENT = ("queued", "unknown")
ERROR_DETAILS_LIMIT = 1000                               # characters of the provider's explanation kept


def is_unsent():
    """`message.status IN ('queued', 'unknown')`, with the values inline."""
    from peewee import OP, SQL, Expression

    return Expression(Message.status, OP.IN, SQL("(%s)" % ", ".join(f"'{s}'" for s in UNSENT)))


class Message(BaseModel):
    id = CharField(primary_key=True, default=lambda: new_id("m"))
    conversation = ForeignKeyField(Conversation, backref="messages", on_delete="CASCADE")
    channel = ForeignKeyField(Channel, on_delete="CASCADE")
    direction = CharField(max_length=3)                 # in | out
    sender = CharField(max_length=8)                    # user | bot | agent | system
    agent_id = CharField(max_length=40, null=True)
    type = CharField(max_length=16, default="text")
    text = TextField(null=True)
    media = JSONField(null=True)
    template = JSONField(null=True)
    extra = JSONField(null=True)                        # location, contacts, interactive… as sent
    provider_message_id = CharField(max_length=200, null=True)
    sent_at = DateTimeField()                           # payload timestamp (inbound) / creation (outbound)
    received_at = DateTimeField(default=utcnow)
    routed_to = CharField(max_length=20, null=True)     # NULL = not routed yet
    status = CharField(max_length=10, null=True)
    error_code = IntegerField(null=True)
    error_title = CharField(max_length=400, null=True)
    turn_id = CharField(max_length=40, null=True)
    control_epoch = IntegerField(null=True)             # bot replies: epoch they were allowed in
    attempts = IntegerField(default=0)
    next_attempt_at = DateTimeField(null=True)
    error_details = TextField(null=True)                # why a send failed, at length (0005 adds it last)
    # Its place in the conversation, in the order Baton stored the messages
    # (0006): strictly increasing per conversation, handed out from
    # conversation.message_seq in the inserting transaction (numbered_insert).
    seq = IntegerField()

    class Meta:
        indexes = (
            (("channel", "provider_message_id"), True),
            (("conversation", "sent_at"), False),
            (("conversation", "seq"), True),
            (("routed_to", "received_at"), False),
        )

    def save(self, force_insert: bool = False, only=None):
        """Inserting a message through the ORM (`Message.create`: scripts, tests)
        numbers it like the hot paths do (they use numbered_insert directly)."""
        if not force_insert or self.seq is not None:
            return super().save(force_insert, only)
        with db.atomic():
            (sql, params), = _bump_statements(self.conversation_id)
            row = db.execute_sql(sql, params).fetchone()
            if row is None:
                raise IntegrityError(f"no conversation {self.conversation_id} to number the message in")
            self.seq = row[0]
            return super().save(force_insert, only)

    def to_dict(self, *, media_url_always: bool = False) -> dict:
        """The message as the API, the live stream and (`media_url_always`: a
        media `url` even before the file is stored) n8n events show it."""
        from .media import media_view

        error = None
        if self.error_code is not None or self.error_title or self.error_details:
            error = {"code": self.error_code, "title": self.error_title, "details": self.error_details}
        return {
            "id": self.id, "conversation_id": self.conversation_id, "seq": self.seq, "direction": self.direction,
            "sender": self.sender, "agent_id": self.agent_id, "type": self.type, "text": self.text,
            "media": media_view(self.media, self.type, always_url=media_url_always), "provider_message_id": self.provider_message_id,
            "sent_at": isoformat(self.sent_at), "received_at": isoformat(self.received_at),
            "routed_to": self.routed_to, "status": self.status, "error": error,
        }


# -- numbering ----------------------------------------------------------------------------
# A message's `seq` comes from a counter on its conversation row, bumped in the
# transaction that inserts the message. The bump locks the conversation row
# until that transaction ends, so on PostgreSQL two transactions adding to one
# conversation number their messages in the order they commit; SQLite admits
# one writer at a time anyway. On PostgreSQL bump and insert are one statement
# (a data-modifying WITH), so numbering costs no extra round trip; on SQLite
# they are two statements in the same in-process transaction. When the
# INSERT skips a duplicate (ON CONFLICT DO NOTHING), `unnumber` gives the
# number back while the row lock is still held, so `conversation.message_seq`
# is always the seq of the conversation's last message (the console list
# reads last messages by it). Nobody relies on seq being dense.

_numbered_sql: dict[tuple, list[str]] = {}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _bump_sql(param: str) -> str:
    column = _quote(Conversation.message_seq.column_name)
    return (f"UPDATE {_quote(Conversation._meta.table_name)} SET {column} = {column} + 1 "
            f"WHERE {_quote(Conversation.id.column_name)} = {param} RETURNING {column}")


def _bump_statements(conversation_id: str) -> list[tuple[str, list]]:
    return [(_bump_sql(db.obj.param), [conversation_id])]


def numbered_insert(names: tuple[str, ...], values: list, conversation_id: str, *,
                    skip_duplicate: bool = False, returning_seq: bool = False) -> list[tuple[str, list]]:
    """The statements (SQL, params) that insert a message whose columns `names`
    hold `values` (already db values, `seq` not among them) with the next seq
    of `conversation_id`, to run in order in one write transaction. The last
    one is the INSERT: its rowcount says whether the row is new
    (`skip_duplicate` adds ON CONFLICT DO NOTHING) and with `returning_seq`
    it returns the row's seq."""
    database = db.obj
    postgres = isinstance(database, PostgresqlDatabase)
    key = (id(database), names, skip_duplicate, returning_seq)
    sqls = _numbered_sql.get(key)
    if sqls is None:
        param = database.param
        fields = [Message._meta.fields[name] for name in names]
        columns = ", ".join(_quote(f.column_name) for f in fields) + ", " + _quote(Message.seq.column_name)
        placeholders = ", ".join([param] * len(fields))
        tail = (" ON CONFLICT DO NOTHING" if skip_duplicate else "") + (
            f" RETURNING {_quote(Message.seq.column_name)}" if returning_seq else "")
        counter = _quote(Conversation.message_seq.column_name)
        insert = f"INSERT INTO {_quote(Message._meta.table_name)} ({columns}) VALUES ({placeholders}, "
        if postgres:
            sqls = [f"WITH bumped AS ({_bump_sql(param)}) {insert}(SELECT {counter} FROM bumped)){tail}"]
        else:
            sqls = [_bump_sql(param).rsplit(" RETURNING ", 1)[0],
                    f"{insert}(SELECT {counter} FROM {_quote(Conversation._meta.table_name)} "
                    f"WHERE {_quote(Conversation.id.column_name)} = {param})){tail}"]
        _numbered_sql[key] = sqls
    if postgres:
        return [(sqls[0], [conversation_id, *values])]
    return [(sqls[0], [conversation_id]), (sqls[1], [*values, conversation_id])]


def unnumber(conversation_id: str) -> tuple[str, list]:
    """The statement that takes back the number a skipped INSERT was given
    (run in the same transaction, right after it)."""
    column = _quote(Conversation.message_seq.column_name)
    return (f"UPDATE {_quote(Conversation._meta.table_name)} SET {column} = {column} - 1 "
            f"WHERE {_quote(Conversation.id.column_name)} = {db.obj.param}", [conversation_id])


def move_messages(from_id: str, to_id: str) -> int:
    """Move every message of conversation `from_id` into `to_id` (a contact
    merge) and number the survivor's whole history again in id order (ids
    sort by the time Baton stored them), its counter ending at its last seq.
    Returns how many moved. Run it inside the merge's write transaction: a
    plain `UPDATE message SET conversation_id` would break the unique
    (conversation, seq) index."""
    param = db.obj.param
    conversation, message = _quote(Conversation._meta.table_name), _quote(Message._meta.table_name)
    counter, seq = _quote(Conversation.message_seq.column_name), _quote(Message.seq.column_name)
    conv_id, owner, key = (_quote(Conversation.id.column_name), _quote(Message.conversation.column_name),
                           _quote(Message.id.column_name))
    # Lock both counters (numbering waits), in id order, then read the survivor's.
    for locked in sorted((from_id, to_id)):
        db.execute_sql(f"UPDATE {conversation} SET {counter} = {counter} WHERE {conv_id} = {param}", [locked])
    top = db.execute_sql(f"SELECT {counter} FROM {conversation} WHERE {conv_id} = {param}", [to_id]).fetchone()
    top = (top[0] if top else 0) or 0
    # Out of the way first (negative numbers, distinct across both), then 1..n in id order.
    db.execute_sql(f"UPDATE {message} SET {seq} = -{seq} WHERE {owner} = {param}", [to_id])
    moved = db.execute_sql(f"UPDATE {message} SET {owner} = {param}, {seq} = -{seq} - {param} "
                           f"WHERE {owner} = {param}", [to_id, top, from_id]).rowcount
    db.execute_sql(f"UPDATE {message} SET {seq} = numbered.n FROM (SELECT {key}, ROW_NUMBER() OVER "
                   f"(ORDER BY {key}) AS n FROM {message} WHERE {owner} = {param}) AS numbered "
                   f"WHERE numbered.{key} = {message}.{key}", [to_id])
    db.execute_sql(f"UPDATE {conversation} SET {counter} = (SELECT COUNT(*) FROM {message} "
                   f"WHERE {owner} = {param}) WHERE {conv_id} = {param}", [to_id, to_id])
    db.execute_sql(f"UPDATE {conversation} SET {counter} = 0 WHERE {conv_id} = {param}", [from_id])
    return moved
