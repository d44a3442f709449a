"""Group commit: webhooks that arrive while a commit is in flight are written
together in the next transaction, one commit (one fsync on SQLite) for many.

Each caller still returns only once ITS rows are committed (durable before the
200), and sees what it would see alone: its own result, or its own exception.
Every piece of work runs in a savepoint of the batch's transaction, so a
webhook that fails undoes only its own rows; the others commit. When the
transaction itself cannot go on (the database went away, SQLite rolled the
whole transaction back on a full disk or an I/O error) or the commit fails,
every webhook of the batch gets that exception, as each would alone.

One writer per process takes the batches: a thread, or under gevent a
greenlet (the `threading` gevent patched), so the hub keeps accepting
requests and queuing their work while a batch commits. On SQLite under gevent
the batch itself runs on one native thread (sqlite3 releases the GIL while it
writes and syncs, and would otherwise stop the hub); PostgreSQL's calls yield
to the hub already (psycogreen), so there the writer greenlet runs the batch
itself. With a sync worker (one request at a time) every batch holds one
webhook: the same transaction as before, run by the writer.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque

from models import db, write_transaction
from models.base import discard_connection, is_pooled

log = logging.getLogger(__name__)

# A batch holds at most this many webhooks, so that one transaction (which holds
# SQLite's write lock) stays short; the rest wait for the next one.
MAX_BATCH = 64


class _Work:
    __slots__ = ("call", "done", "result", "error")

    def __init__(self, call):
        self.call = call
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None


class GroupCommit:
    """`run(call)`: `call()` inside the next batch's write transaction; returns its
    result once that transaction committed, or raises its (or the batch's) exception.
    `call` writes in a `write_transaction()` of its own (routing.ingest.record_webhook
    does), which inside the batch is a savepoint."""

    def __init__(self, max_batch: int = MAX_BATCH):
        self.max_batch = max_batch
        # Since this process's writer started: committed batches, the webhooks they held, the largest.
        self.batches = self.committed = self.largest = 0
        self._pid = None
        self._start_lock = threading.Lock()
        self._database = None     # the database the writer's connection belongs to
        self._drop = False

    def run(self, call):
        if self._pid != os.getpid():
            self._start()
        work = _Work(call)
        self._queue.append(work)        # deque.append is atomic (GIL), from any thread or greenlet
        self._wakeup.set()
        work.done.wait()
        if work.error is not None:
            raise work.error
        return work.result

    def _start(self) -> None:
        """A writer for this process (a forked child starts its own)."""
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._queue: deque[_Work] = deque()
            self._wakeup = threading.Event()
            self._native = _native_pool()
            self.batches = self.committed = self.largest = 0
            threading.Thread(target=self._writer, name="baton-group-commit", daemon=True).start()
            self._pid = os.getpid()

    def _writer(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = []
                while self._queue and len(batch) < self.max_batch:
                    batch.append(self._queue.popleft())
                try:
                    if self._native is not None and not is_pooled():
                        self._native.apply(self._commit, (batch,))
                    else:
                        self._commit(batch)
                except BaseException as exc:        # never leave a caller waiting
                    for work in batch:
                        if work.error is None:
                            work.error, work.result = exc, None
                finally:
                    for work in batch:
                        work.done.set()

    def drop_connection(self) -> None:
        """Have the writer close its connection before its next batch (as a database
        restart would): the next batch connects afresh, or fails to."""
        self._drop = True

    def _commit(self, batch: list[_Work]) -> None:
        database = db.obj
        if self._drop or self._database is not database:
            # A connection to a database no longer in use (rebound) is closed, not kept.
            if self._database is not None:
                discard_connection(self._database)
            self._database, self._drop = database, False
        try:
            with write_transaction():
                for work in batch:
                    try:
                        # Its own write_transaction is a savepoint here: a failure undoes it only.
                        work.result = work.call()
                    except Exception as exc:
                        work.error = exc
                        if not _in_transaction():
                            raise
        except Exception as exc:
            # Nothing of this batch was committed: each webhook gets this exception (unless
            # it failed on its own before), and the next batch starts on a fresh connection.
            for work in batch:
                if work.error is None:
                    work.error, work.result = exc, None
            discard_connection()
            return
        self.batches += 1
        self.committed += sum(work.error is None for work in batch)
        self.largest = max(self.largest, len(batch))


def _in_transaction() -> bool:
    """Is the batch's transaction still open after a webhook failed inside it?"""
    try:
        conn = db.connection()
    except Exception:
        return False
    if hasattr(conn, "get_transaction_status"):           # psycopg2
        import psycopg2.extensions as ext

        return conn.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS
    return bool(getattr(conn, "in_transaction", False))   # sqlite3


def _native_pool():
    """Under gevent, one native thread to run SQLite batches on (None otherwise)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return None
    from gevent.threadpool import ThreadPool

    return ThreadPool(1)


_group_commit = GroupCommit()


def group_commit() -> GroupCommit:
    """This process's group commit for webhooks."""
    return _group_commit
