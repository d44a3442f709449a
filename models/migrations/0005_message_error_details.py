"""A failed message keeps the provider's explanation, not only its code and title.

Meta's status webhooks say why a message failed in `errors[].error_data.details`
(or `message`); `message.error_details` holds that text, bounded in length by
the code that writes it.
"""


def up(migrator, db):
    from peewee import TextField

    migrator.migrate(
        migrator.add_column("message", "error_details", TextField(null=True)),
    )
