"""Agents can be deactivated: `agent.deactivated_at` (null while active).

A deactivated agent keeps its row (conversations, audit events and deliveries
name it), leaves the rotation for good and its tokens are revoked with it.
"""


def up(migrator, db):
    from peewee import DateTimeField

    migrator.migrate(
        migrator.add_column("agent", "deactivated_at", DateTimeField(null=True)),
    )
