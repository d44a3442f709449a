"""Due timers, found without scanning every conversation.

RQ cron asks every second which conversations have a timer due
(routing/timeouts.py): an offer or a pending wait that expired (state
PENDING_AGENT + offer_expires_at / pending_since), an agent who left the
customer waiting (state AGENT_CONTROLLED + awaiting_agent_since), a typing hold
that ran out (held_since set + typing_until); and every 5 s which open
conversations went idle (state not CLOSED + last_activity_at).

The state + deadline pairs get composite indexes. The two queries without a
state to seek on get partial indexes over the few rows they can match, in id
order (the queries take the first 200 by id), carrying the deadline so the
scan never reads the table for a row that is not due: SQLite plans them without
statistics, PostgreSQL picks them from its own.
"""
from peewee import Table


def up(migrator, db):
    conversation = Table("conversation")
    migrator.migrate(
        migrator.add_index("conversation", ("state", "offer_expires_at")),
        migrator.add_index("conversation", ("state", "pending_since")),
        migrator.add_index("conversation", ("state", "awaiting_agent_since")),
        migrator.add_index("conversation", ("id", "typing_until"),
                           where=conversation.c.held_since.is_null(False),
                           name="conversation_held_by_id"),
        migrator.add_index("conversation", ("id", "last_activity_at"),
                           where=conversation.c.state != "CLOSED",
                           name="conversation_open_by_id"),
    )
