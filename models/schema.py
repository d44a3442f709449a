"""Create or migrate the schema; safe to re-run.

Tables are created when missing; columns a newer model has and the table
lacks are added (nullable or with the model default), so upgrading Baton is
`flask baton init-db` again. Nothing is ever dropped.
"""
from __future__ import annotations

from playhouse.migrate import PostgresqlMigrator, SqliteMigrator, migrate

import peewee

from . import ALL_MODELS
from .base import db


def init_schema() -> list[str]:
    """Returns a line per change made (empty when the schema was current)."""
    database = db.obj
    changes: list[str] = []
    existing = set(database.get_tables())
    with database.atomic():
        for model in ALL_MODELS:
            if model._meta.table_name not in existing:
                model.create_table(safe=True)
                changes.append(f"created table {model._meta.table_name}")
    migrator = (SqliteMigrator(database) if isinstance(database, peewee.SqliteDatabase)
                else PostgresqlMigrator(database))
    for model in ALL_MODELS:
        table = model._meta.table_name
        have = {column.name for column in database.get_columns(table)}
        for field in model._meta.sorted_fields:
            if field.column_name in have:
                continue
            if not field.null and field.default is None:
                field.null = True          # existing rows have no value for it
            migrate(migrator.add_column(table, field.column_name, field))
            changes.append(f"added column {table}.{field.column_name}")
    return changes
