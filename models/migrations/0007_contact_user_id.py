"""A customer is known by a phone number, a business-scoped user id, or both.

`contact.user_id` holds the BSUID (unique per channel, like `wa_id`),
`contact.username` the customer's WhatsApp username, and `contact.wa_id`
becomes the phone number only, empty for a customer who hides it.

Until now a customer without a phone number was keyed on the BSUID in
`wa_id`: those rows (a BSUID has a dot, a phone number never does) move it to
`user_id`.
"""


def up(migrator, db):
    from peewee import CharField, Table

    migrator.migrate(
        migrator.add_column("contact", "user_id", CharField(max_length=256, null=True)),
        migrator.add_column("contact", "username", CharField(max_length=256, null=True)),
        migrator.drop_not_null("contact", "wa_id"),
        migrator.add_index("contact", ("channel_id", "user_id"), unique=True),
    )
    contact = Table("contact").bind(db)
    (contact.update({contact.c.user_id: contact.c.wa_id, contact.c.wa_id: None})
     .where(contact.c.wa_id.contains("."))
     .execute())
