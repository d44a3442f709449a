"""The bot's reply deadline (issue 10): a turn sent to the AI branch carries
`deadline_at` (durable: the cron's timers find due turns by it, indexed), and
a turn that failed or was overtaken by a human is closed (`closed_at`, with
its `outcome`), so a late reply is refused."""


def up(migrator, db):
    from peewee import CharField, DateTimeField

    migrator.migrate(
        migrator.add_column("bot_turn", "deadline_at", DateTimeField(null=True)),
        migrator.add_column("bot_turn", "closed_at", DateTimeField(null=True)),
        migrator.add_column("bot_turn", "outcome", CharField(max_length=20, null=True)),
        migrator.add_index("bot_turn", ("deadline_at",)),
    )
