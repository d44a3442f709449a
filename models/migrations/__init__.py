"""Baton's schema history, one numbered file per change, applied in order by
`models.schema.migrate()` (`flask --app app baton init-db`).

The files follow peewee's `playhouse.migrations` format: each defines
`up(migrator, db)` (`migrator` is playhouse.migrate's SqliteMigrator or
PostgresqlMigrator, `db` the database) and runs in one transaction with its
history row (so `atomic = False`, and with it PostgreSQL's CREATE INDEX
CONCURRENTLY, is refused). Migrations only go forward: no `down()`.

Rules:
- A file never changes once merged; a change to the schema is a new file with
  the next number. Migrations are frozen: they declare what they create
  themselves and never import application models or constants.
- A model change needs its migration in the same commit:
  tests/test_migrations.py checks that a migrated database is exactly what
  the models describe (plus the indexes migrations add for queries).
- peewee can draft one from the difference between a migrated database and
  the models: `.venv/bin/python -m playhouse.migrations instance/baton.db
  generate <name> models:ALL_MODELS -d models/migrations` (`diff` instead of
  `generate` only prints it). Review the draft: it leaves TODOs, and it
  proposes dropping the query indexes of 0002 and 0003, which the models do
  not declare; delete those lines.
- Write every statement so it works on SQLite and PostgreSQL.
"""
