"""Customer ids long enough for business-scoped user ids.

Since 2026 a customer may be known only by a BSUID: a country code, a dot and
up to 128 characters, 131 in all. `contact.wa_id` and `outbox_entry.to` were
128 characters, so on PostgreSQL the longest ones failed to insert (the
webhook answered 500 and the message was never stored). 256 leaves room.
"""


def up(migrator, db):
    from peewee import CharField

    migrator.migrate(
        migrator.alter_column_type("contact", "wa_id", CharField(max_length=256)),
        migrator.alter_column_type("outbox_entry", "to", CharField(max_length=256)),
    )
