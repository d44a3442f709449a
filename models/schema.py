"""Versioned schema migrations: `init_schema()` migrates to the latest version.

The migrations are the numbered files in `models/migrations/` (`0001_initial.py`,
`0002_….py` …), in the format of peewee's own runner (`playhouse.migrations`):
each defines `up(migrator, db)`, where `migrator` is playhouse.migrate's
SqliteMigrator or PostgresqlMigrator. This module drives peewee's runner with
what Baton needs on top of it:

- history in `schema_migrations` (version, name, applied_at), keyed by version;
- one lock for the whole run, so two processes starting at once apply each
  migration exactly once: `pg_advisory_lock` on PostgreSQL; on SQLite the
  write gate and a `BEGIN IMMEDIATE` transaction per migration, inside which
  the history is read again;
- each migration and its history row commit in one transaction;
- adoption: a database created before migrations existed (Baton's tables, no
  history) is brought to 0001's shape by 0001's `adopt()` and marked 0001,
  never created again; later migrations then apply as usual.

`schema_migrations` is not one of `ALL_MODELS`: it describes the schema, it is
not application data (the test suite truncates `ALL_MODELS` between tests).
"""
from __future__ import annotations

import contextlib
import os

import peewee
from playhouse.migrations import Migration, MigrationError, Runner

from .base import db, utcnow

MIGRATIONS_DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
HISTORY_TABLE = "schema_migrations"
# pg_advisory_lock key: the bytes of "batonmig" as a positive bigint.
POSTGRES_LOCK_KEY = int.from_bytes(b"batonmig", "big")


class MigrationRunner(Runner):
    """peewee's runner with Baton's history table, locking and adoption."""

    def __init__(self, database: peewee.Database, directory: str = MIGRATIONS_DIRECTORY):
        super().__init__(database, directory, table_name=HISTORY_TABLE)

        class SchemaMigration(peewee.Model):
            version = peewee.IntegerField(primary_key=True)
            name = peewee.CharField(max_length=255)
            applied_at = peewee.DateTimeField(default=utcnow)

            class Meta:
                table_name = HISTORY_TABLE

        SchemaMigration.bind(database)
        self.History = SchemaMigration

    # -- what there is -----------------------------------------------------

    def migrations(self) -> list[Migration]:
        found = super().migrations()
        versions = [m.idx for m in found]
        duplicates = sorted({v for v in versions if versions.count(v) > 1})
        if duplicates:
            raise MigrationError(f"two migration files share version {duplicates[0]:04d} in {self.directory}")
        return found

    def status(self) -> list[Migration]:
        """Files and history merged, by version: `applied` is None while
        pending; `path` is None for a version recorded by a newer Baton."""
        history = {row.version: row for row in self.History.select()} if self.History.table_exists() else {}
        rows = [m._replace(applied=history[m.idx].applied_at) if m.idx in history else m
                for m in self.migrations()]
        known = {m.idx for m in rows}
        rows += [Migration(v, row.name, None, row.applied_at) for v, row in history.items() if v not in known]
        return sorted(rows)

    # -- applying ------------------------------------------------------------

    def up(self, target=None, fake=False) -> list[str]:
        """Apply every pending migration in order; returns a line per change."""
        if target is not None or fake:
            raise MigrationError("Baton applies every pending migration; no target, no fake")
        database = self.database
        opened = database.is_closed()
        if opened:
            database.connect()
        try:
            with self._exclusive():
                with self._transaction():
                    self.History.create_table(safe=True)
                changes = self._adopt_pre_migration_schema()
                for migration in self.status():
                    pending = migration.applied is None and migration.path is not None
                    if pending and self._apply(migration):
                        changes.append(f"applied {migration.name}")
            return changes
        finally:
            if opened:
                database.close()

    def _apply(self, migration: Migration) -> bool:
        module = migration.load()
        if getattr(module, "up", None) is None:
            raise MigrationError(f"{migration.name} does not define up()")
        if getattr(module, "atomic", True) is not True:
            raise MigrationError(f"{migration.name}: every Baton migration runs in one transaction")
        # SQLite: foreign keys off for the change (a table rebuild must not cascade).
        with self.migrator.migration_context(atomic=False), self._transaction():
            if self._recorded(migration.idx):              # another process applied it first
                return False
            module.up(self.migrator, self.database)
            self.History.create(version=migration.idx, name=migration.name)
        return True

    def _adopt_pre_migration_schema(self) -> list[str]:
        """A database whose tables predate versioning (no history yet) is
        brought to the first migration's shape by its `adopt()` and recorded
        as that migration."""
        files = self.migrations()
        if not files or self.History.select().exists():
            return []
        first = files[0]
        module = first.load()
        adopt = getattr(module, "adopt", None)
        owned = {model._meta.table_name for model in getattr(module, "MODELS", ())}
        if adopt is None or not owned & set(self.database.get_tables()):
            return []
        with self.migrator.migration_context(atomic=False), self._transaction():
            if self.History.select().exists():
                return []
            repairs = adopt(self.migrator, self.database)
            self.History.create(version=first.idx, name=first.name)
        return [f"adopted the existing schema as {first.name}", *repairs]

    def _recorded(self, version: int) -> bool:
        return self.History.select().where(self.History.version == version).exists()

    def _transaction(self):
        """A write transaction: on SQLite it takes the write lock up front."""
        if isinstance(self.database, peewee.SqliteDatabase):
            return self.database.atomic("IMMEDIATE")
        return self.database.atomic()

    @contextlib.contextmanager
    def _exclusive(self):
        """One migrating process at a time, across processes."""
        database = self.database
        if isinstance(database, peewee.PostgresqlDatabase):
            database.execute_sql("SELECT pg_advisory_lock(%s)", (POSTGRES_LOCK_KEY,))
            try:
                yield
            finally:
                database.execute_sql("SELECT pg_advisory_unlock(%s)", (POSTGRES_LOCK_KEY,))
            return
        gate = getattr(database, "_baton_write_gate", None)
        with gate.hold() if gate is not None else contextlib.nullcontext():
            yield


def migrate(database: peewee.Database | None = None) -> list[str]:
    """Apply pending migrations (default: to the bound database); returns a
    line per change, empty when the schema was already current."""
    return MigrationRunner(database or db.obj).up()


def migration_status(database: peewee.Database | None = None) -> list[Migration]:
    """Every migration with its `applied` time (None: pending)."""
    runner = MigrationRunner(database or db.obj)
    return runner.status()


def missing_from_schema(database: peewee.Database | None = None) -> list[str]:
    """Tables and columns the models use that the database lacks: a model
    changed without its migration (or the schema was edited by hand)."""
    from playhouse.schema_diff import diff_models

    from . import ALL_MODELS

    diff = diff_models(database or db.obj, ALL_MODELS)
    return ([f"table {model._meta.table_name}" for model in diff.create_tables]
            + [f"column {field.model._meta.table_name}.{field.column_name}" for field in diff.add_columns])


def init_schema() -> list[str]:
    """Create or upgrade the schema to the latest migration; safe to re-run."""
    return migrate()
