"""Queued outbound messages, found without scanning every message.

The outbound lane looks for a conversation's next queued message on every send
(conversation, direction out, status queued, oldest id first), the cron sweep
every 5 s for queued messages whose hand-off was lost, and /metrics counts
them. Queued messages are a handful among all the messages ever sent, so the
index holds only them: a partial index, on SQLite and PostgreSQL alike.
"""
from peewee import Table


def up(migrator, db):
    message = Table("message")
    migrator.migrate(migrator.add_index("message", ("conversation_id", "id"),
                                        where=message.c.status == "queued",
                                        name="message_queued_by_conversation"))
