"""Messages are numbered per conversation in the order Baton stored them.

WhatsApp's timestamps are whole seconds, so `sent_at` cannot order a customer
message and an agent reply of the same second. `message.seq` does: strictly
increasing per conversation, handed out from `conversation.message_seq` (the
seq of the conversation's last message) in the transaction that inserts the
message, and unique per conversation.

Existing messages are numbered in id order per conversation (ids sort by
creation time), and each conversation's counter starts at its last number.
"""


def up(migrator, db):
    from peewee import IntegerField

    migrator.migrate(
        migrator.add_column("conversation", "message_seq", IntegerField(default=0)),
        migrator.add_column("message", "seq", IntegerField(null=True)),
    )
    db.execute_sql(
        'UPDATE "message" SET "seq" = numbered.n FROM ('
        'SELECT "id", ROW_NUMBER() OVER (PARTITION BY "conversation_id" ORDER BY "id") AS n FROM "message"'
        ') AS numbered WHERE numbered."id" = "message"."id"')
    db.execute_sql(
        'UPDATE "conversation" SET "message_seq" = COALESCE('
        '(SELECT MAX("seq") FROM "message" WHERE "message"."conversation_id" = "conversation"."id"), 0)')
    migrator.migrate(
        migrator.add_not_null("message", "seq"),
        migrator.add_index("message", ("conversation_id", "seq"), True),
    )
