"""Acknowledged is durable: a webhook answered 200 (or a write answered 2xx)
has its commit on disk, so an OS crash or power loss right after cannot take
it back. On SQLite that takes `synchronous=FULL` in WAL mode: every commit
syncs the WAL before it returns (NORMAL syncs only at checkpoints, so a crash
of the machine could lose commits already answered). PostgreSQL flushes its
WAL on commit as long as `synchronous_commit` is on, its default, which Baton
leaves alone."""
from __future__ import annotations

import threading

import pytest

from models import db
from models.base import make_database
from tests.support import customer_says, using_postgres

FULL = 2


@pytest.mark.skipif(using_postgres(), reason="SQLite's pragma")
def test_every_sqlite_connection_syncs_each_commit_to_disk(app, tmp_path):
    assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == FULL
    assert db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    seen = []

    def other_thread():                   # peewee opens one connection per thread: each gets the pragma
        db.connect(reuse_if_open=True)
        seen.append(db.execute_sql("PRAGMA synchronous").fetchone()[0])
        db.close()
    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert seen == [FULL]
    fresh = make_database(f"sqlite:///{tmp_path / 'fresh.db'}")
    fresh.connect()
    try:
        assert fresh.execute_sql("PRAGMA synchronous").fetchone()[0] == FULL
    finally:
        fresh.close()


@pytest.mark.skipif(not using_postgres(), reason="PostgreSQL's setting")
def test_postgresql_commits_are_flushed_before_they_return(app):
    customer_says(app, "hello")
    assert db.execute_sql("SHOW synchronous_commit").fetchone()[0] in ("on", "remote_write", "remote_apply")
