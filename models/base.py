"""The unbound database, the base model, ids and time.

The database is declared here and bound in `app.create_app()` (or a job's
setup) from `DATABASE_URL`, so importing models never opens a connection.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone

import orjson
import peewee
from playhouse.shortcuts import ReconnectMixin

db = peewee.DatabaseProxy()

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


_last_id = [0]
_id_lock = threading.Lock()


def new_id(prefix: str) -> str:
    """A unique id that sorts by creation time: `<prefix>_` + 26 base32 chars
    (48 bits of milliseconds, 80 random bits), like a ULID. Within a process
    ids are strictly increasing, so rows created in one step keep their order."""
    with _id_lock:
        value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
        if value <= _last_id[0]:
            value = _last_id[0] + 1
        _last_id[0] = value
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(_CROCKFORD[rem])
    return f"{prefix}_{''.join(reversed(chars))}"


def utcnow() -> datetime:
    """Naive UTC: what every DateTimeField stores, on SQLite and PostgreSQL alike."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def as_naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def isoformat(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with `Z`, as the contract wants."""
    if moment is None:
        return None
    if isinstance(moment, str):  # SQLite may hand back text for raw queries
        moment = datetime.fromisoformat(moment)
    return as_naive_utc(moment).isoformat(timespec="milliseconds") + "Z"


class JSONField(peewee.TextField):
    """JSON stored as text (portable across SQLite and PostgreSQL)."""

    def db_value(self, value):
        return None if value is None else orjson.dumps(value).decode()

    def python_value(self, value):
        return None if value is None else orjson.loads(value)


class BaseModel(peewee.Model):
    class Meta:
        database = db
        legacy_table_names = False


class _ReconnectingPostgres(ReconnectMixin, peewee.PostgresqlDatabase):
    """Reconnects once when PostgreSQL restarts under a long-lived worker."""


def make_database(url: str) -> peewee.Database:
    """Build (not connect) the database for a `DATABASE_URL`."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # WAL lets readers run beside the one writer; NORMAL sync is durable
        # against process crashes (an OS crash may lose the last commits).
        return peewee.SqliteDatabase(path, pragmas={
            "journal_mode": "wal", "synchronous": "normal", "busy_timeout": 10000,
            "foreign_keys": 1, "cache_size": -16000,
        }, timeout=10)
    from urllib.parse import urlparse, unquote

    parsed = urlparse(url)
    return _ReconnectingPostgres(
        unquote(parsed.path.lstrip("/")), user=unquote(parsed.username or "") or None,
        password=unquote(parsed.password or "") or None, host=parsed.hostname or None,
        port=parsed.port or None,
    )


def bind(url: str) -> peewee.Database:
    """Point the shared proxy at the database for `url` (idempotent per url)."""
    current = getattr(db, "obj", None)
    if current is not None and getattr(current, "_baton_url", None) == url:
        return current
    database = make_database(url)
    database._baton_url = url
    db.initialize(database)
    return database


@contextmanager
def write_transaction():
    """A transaction that takes the write lock up front on SQLite (avoids the
    deadlock-prone read-then-upgrade) and is a plain transaction elsewhere."""
    database = db.obj
    if isinstance(database, peewee.SqliteDatabase):
        with database.atomic("IMMEDIATE"):
            yield
    else:
        with database.atomic():
            yield
