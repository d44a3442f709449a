"""Messages waiting to be reconciled are part of the outbound queue.

A message whose send had an unknown outcome (status `unknown`, see
jobs/send.py) stays at the head of its conversation's outbound queue until a
status webhook names it or SEND_RECONCILE_SECONDS pass, so the lane's "next
message" and the cron sweep look for `queued` and `unknown` alike. The partial
index of 0002 is rebuilt to hold both.
"""
from peewee import SQL

NAME = "message_queued_by_conversation"


def up(migrator, db):
    migrator.migrate(migrator.drop_index("message", NAME))
    migrator.migrate(migrator.add_index("message", ("conversation_id", "id"),
                                        where=SQL("status IN ('queued', 'unknown')"), name=NAME))
