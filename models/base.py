"""The unbound database, the base model, ids and time.

The database is declared here and bound in `app.create_app()` (or a job's
setup) from `DATABASE_URL`, so importing models never opens a connection.
"""
from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from calendar import timegm
from contextlib import contextmanager
from datetime import datetime, timezone

import orjson
import peewee
from playhouse.pool import PooledPostgresqlDatabase
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


def parse_time(value: datetime | str) -> datetime:
    """Naive UTC from a datetime or ISO 8601 text (`Z` or any offset; SQLite
    hands back text for raw queries and aggregates). Raises ValueError on
    text that is not a time, and OverflowError on one outside datetime's range."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return as_naive_utc(value)


def epoch_seconds(moment: datetime) -> float:
    """A naive-UTC datetime as seconds since the epoch."""
    return timegm(moment.timetuple()) + moment.microsecond / 1e6


def isoformat(moment: datetime | str | None) -> str | None:
    """ISO 8601 UTC with `Z`, as the contract wants."""
    if moment is None:
        return None
    return parse_time(moment).isoformat(timespec="milliseconds") + "Z"


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


# What psycopg2 and sqlite3 say when the connection, not the statement, is the
# trouble: the server restarted or is unreachable, or the file went away.
# peewee's ReconnectMixin ships MySQL's list only.
CONNECTION_LOST = (
    "server closed the connection", "connection already closed", "terminating connection",
    "could not connect", "connection refused", "connection reset", "connection timed out",
    "no connection to the server", "could not receive data", "could not send data",
    "ssl connection has been closed", "the database system is starting up",
    "the database system is shutting down", "the database system is in recovery mode",
    "cannot operate on a closed database", "unable to open database file", "disk i/o error",
    # libpq's words when connecting fails in other ways than a refusal (a reset during
    # the handshake: "connection to server at … failed: Broken pipe / Is the server running …")
    "is the server running", "broken pipe",
)


def connection_lost(exc: BaseException) -> bool:
    """Did `exc` come from a connection to the database that is gone (as opposed
    to a statement the database refused)? Such a failure heals by reconnecting."""
    if not isinstance(exc, (peewee.OperationalError, peewee.InterfaceError)):
        return False
    text = str(exc).lower()
    return any(fragment in text for fragment in CONNECTION_LOST)


class _Reconnecting(ReconnectMixin):
    """Outside a transaction, a statement that finds its connection gone
    reconnects and runs once more; inside one it raises (the caller's work
    is retried whole: a pump reschedules its key, a webhook answers 503)."""

    reconnect_errors = tuple((cls, fragment) for cls in (peewee.OperationalError, peewee.InterfaceError)
                             for fragment in CONNECTION_LOST)


class _PooledPostgres(_Reconnecting, PooledPostgresqlDatabase):
    """A bounded pool of PostgreSQL connections that survives a server restart
    under a long-lived process: the pool checks an idle connection before
    handing it out (and drops a dead one), a dead connection is never given
    back (`_can_reuse`), and a statement outside a transaction reconnects.

    Under gevent each request is its own greenlet, and peewee's per-thread
    connections become per-greenlet ones: without a bound, a burst of
    clients would open a connection each. Requests return theirs at teardown."""


class _Sqlite(_Reconnecting, peewee.SqliteDatabase):
    """SQLite, reconnecting like PostgreSQL when its file could not be read."""


def make_database(url: str, pool_size: int = 20) -> peewee.Database:
    """Build (not connect) the database for a `DATABASE_URL`."""
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # WAL lets readers run beside the one writer. FULL sync makes every
        # commit reach the disk before it returns, so what Baton answered 200
        # survives an OS crash or power loss too (NORMAL syncs only at
        # checkpoints: durable against a process crash, not the machine's).
        database = _Sqlite(path, pragmas={
            "journal_mode": "wal", "synchronous": "full", "busy_timeout": 10000,
            "foreign_keys": 1, "cache_size": -16000,
        }, timeout=10)
        if path != ":memory:":
            database._baton_write_gate = _SqliteWriteGate(os.path.abspath(path))
        return database
    from urllib.parse import urlparse, unquote

    parsed = urlparse(url)
    return _PooledPostgres(
        unquote(parsed.path.lstrip("/")), user=unquote(parsed.username or "") or None,
        password=unquote(parsed.password or "") or None, host=parsed.hostname or None,
        port=parsed.port or None, max_connections=pool_size, stale_timeout=300, timeout=10,
        connect_timeout=5,       # an unreachable server fails a connect in 5 s, not the kernel's minutes
    )


def is_pooled(database: peewee.Database | None = None) -> bool:
    return isinstance(database or db.obj, PooledPostgresqlDatabase)


def discard_connection(database: peewee.Database | None = None) -> None:
    """Drop this thread's connection, whatever state it is in; a pooled one is
    closed rather than given back. The next statement opens a fresh one."""
    database = database or db.obj
    if database.is_closed():
        return
    try:
        if database.in_transaction():
            database.rollback()
        if is_pooled(database):
            database.manual_close()
        else:
            database.close()
    except Exception:            # closing a dead connection may fail too: forget it regardless
        database._state.reset()


def ensure_connection(database: peewee.Database | None = None) -> None:
    """Open this thread's connection, or check the one it holds: a long-lived
    process (an RQ worker, cron, the live hub) that kept a connection across a
    database restart gets a fresh one instead of `connection already closed`
    on every later job. One round trip; raises when the database is down."""
    database = database or db.obj
    if database.in_transaction():
        return
    if not database.is_closed():
        try:
            if database.is_connection_usable():
                database.execute_sql("SELECT 1")
                return
        except Exception:            # whatever the driver says, a fresh connection is the cure
            pass
        discard_connection(database)
    database.connect(reuse_if_open=True)
    database.execute_sql("SELECT 1")


def bind(url: str, pool_size: int = 20) -> peewee.Database:
    """Point the shared proxy at the database for `url` (idempotent per url)."""
    current = getattr(db, "obj", None)
    if current is not None and getattr(current, "_baton_url", None) == url:
        return current
    database = make_database(url, pool_size)
    database._baton_url = url
    db.initialize(database)
    return database


class _SqliteWriteGate:
    """Queues SQLite writers of every thread and process on one machine.

    SQLite lets one writer in at a time and makes the others poll with
    growing sleeps (1, 2, 5 … 100 ms), which under a webhook burst costs far
    more than the writes. A kernel file lock (flock) wakes the next writer the
    moment the previous one commits; a thread lock does the same inside a
    process, since flock does not separate threads sharing a descriptor."""

    def __init__(self, db_path: str):
        self.path = db_path + "-writelock"
        self._thread_lock = threading.RLock()
        self._fd = None
        self._pid = None
        self._depth = 0

    @contextmanager
    def hold(self):
        with self._thread_lock:
            if self._depth == 0:
                if self._pid != os.getpid():      # a forked child needs its own descriptor
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                    self._pid = os.getpid()
                _lock_exclusive(self._fd)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)


def _lock_exclusive(fd: int) -> None:
    """flock(LOCK_EX) on `fd`. Under gevent a blocking flock would freeze the
    whole process (every request of a web worker) while another process
    writes, so there the wait happens in gevent's pool of real threads and the
    hub goes on serving; other processes simply block (the thread lock above
    has queued this process's own writers already)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)         # free: the usual case, no hand-off
        return
    except BlockingIOError:
        pass
    if _cooperative():
        import gevent

        gevent.get_hub().threadpool.apply(fcntl.flock, (fd, fcntl.LOCK_EX))
    else:
        fcntl.flock(fd, fcntl.LOCK_EX)


def _cooperative() -> bool:
    """Is this process gevent's (monkey-patched), as gunicorn's gevent workers are, and
    this the hub's thread (the process's main one)? A native thread of its own (the
    webhooks' group-commit writer, routing.group_commit) simply blocks."""
    monkey = sys.modules.get("gevent.monkey")
    return (monkey is not None and monkey.is_module_patched("socket")
            and threading.get_native_id() == threading.main_thread().native_id)


@contextmanager
def write_transaction():
    """A transaction for writes. On SQLite it queues behind other writers
    (see _SqliteWriteGate) and takes the write lock up front (no deadlock-prone
    read-then-upgrade); elsewhere it is a plain transaction."""
    database = db.obj
    gate = getattr(database, "_baton_write_gate", None)
    if gate is not None:
        with gate.hold(), database.atomic("IMMEDIATE"):
            yield
    else:
        with database.atomic():
            yield


def execute_write(sql: str, params) -> int:
    """Run one prepared UPDATE/INSERT as its own write transaction; returns the rowcount."""
    with write_transaction():
        return db.execute_sql(sql, params).rowcount
