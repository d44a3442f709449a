"""Fixtures: a private redis-server, a real database (SQLite by default,
PostgreSQL with BATON_TEST_DATABASE=postgres), the app, and fakes at the
network edge."""
from __future__ import annotations

import os
import shutil
import uuid

import pytest

from tests.support import (TEST_APP_SECRET, TEST_EVENT_SECRET, TEST_SECRET_KEY, RedisServer, ServedApp, run_jobs,
                           throwaway_postgres_database, using_postgres)

pytest_plugins = ["tests.fakes.fixtures",     # graph_api, wasender_api, n8n
                  "tests.n8n_support"]        # real_n8n, fake_model, model (tests/test_n8n_real.py)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_database():
    """A PostgreSQL database of our own for the whole run (dropped afterwards)."""
    with throwaway_postgres_database(f"baton_test_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_schema(tmp_path_factory):
    """A SQLite file holding Baton's schema, migrated once for the run: each test's
    database starts as a copy of it (a file copy, not a dozen CREATEs per test)."""
    from models.base import make_database
    from models.schema import migrate

    path = tmp_path_factory.mktemp("schema") / "baton.db"
    database = make_database(f"sqlite:///{path}")
    migrate(database)
    database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")      # everything in the one file
    database.close()
    return path


@pytest.fixture
def database_url(request, tmp_path):
    """The test's own database: a copy of the migrated SQLite file, or (PostgreSQL)
    the run's database, emptied by the `app` fixture."""
    if using_postgres():
        return request.getfixturevalue("postgres_database")
    path = tmp_path / "baton.db"
    shutil.copyfile(request.getfixturevalue("sqlite_schema"), path)
    return f"sqlite:///{path}"


@pytest.fixture
def settings_overrides(database_url, redis_server, tmp_path):
    """Everything a test app needs; each test gets its own Redis key prefix."""
    return {
        "DATABASE_URL": database_url, "REDIS_URL": redis_server.url,
        "REDIS_PREFIX": f"bt{uuid.uuid4().hex[:10]}", "WHATSAPP_PROVIDER": "sandbox",
        "WHATSAPP_APP_SECRET": TEST_APP_SECRET, "WHATSAPP_VERIFY_TOKEN": "verify-me",
        "BATON_EVENT_SECRET": TEST_EVENT_SECRET, "PUBLIC_BASE_URL": "http://baton.test",
        "TESTING": "true", "LOG_LEVEL": "WARNING", "REQUEUE_AFTER": "1",
        # In-process tests run pumps to completion; the real processes in
        # test_processes.py keep the default linger.
        "PUMP_LINGER": "0",
        # Media goes to the test's own directory, its links signed with a test key.
        "MEDIA_STORAGE_URL": f"file://{tmp_path / 'media'}", "SECRET_KEY": TEST_SECRET_KEY,
    }


@pytest.fixture
def app(settings_overrides):
    from app import create_app
    from models import ALL_MODELS, db
    from models.schema import init_schema

    application = create_app(settings_overrides)
    db.connect(reuse_if_open=True)
    init_schema()
    if using_postgres():                 # one database for the whole run: empty it for this test
        tables = ", ".join(f'"{m._meta.table_name}"' for m in ALL_MODELS)
        db.execute_sql(f"TRUNCATE {tables} CASCADE")
    yield application
    from jobs.context import set_runtime

    set_runtime(None)
    if not db.is_closed():
        db.close()


@pytest.fixture
def rt(app):
    return app.extensions["baton"]


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def work(rt):
    """Call to run queued jobs until the lanes are quiet."""
    return lambda: run_jobs(rt)


@pytest.fixture
def bot_token(app):
    from models import ApiToken

    return ApiToken.issue("n8n", "bot")[1]


@pytest.fixture
def admin_token(app):
    from models import ApiToken

    return ApiToken.issue("root", "admin")[1]


@pytest.fixture
def fast_retries(monkeypatch):
    """Every retry (a provider send, an n8n delivery) is due at once: the backoff the
    jobs would wait is taken as already passed, so a test never waits it out."""
    no_wait = lambda attempt, retry_after=None, **_: 0.0      # noqa: E731
    monkeypatch.setattr("routing.send_policy.backoff_seconds", no_wait)
    monkeypatch.setattr("routing.send_policy.PAIR_LIMIT_SECONDS", 0.0)
    monkeypatch.setattr("jobs.deliver.backoff_seconds", no_wait)


@pytest.fixture
def app_factory(settings_overrides, app):
    """Another app on the same database and Redis prefix, with some settings changed."""
    from app import create_app

    def make(**changes):
        return create_app({**settings_overrides, **{k: str(v) for k, v in changes.items()}})
    return make


@pytest.fixture
def live_server(app, monkeypatch):
    """The test app over real HTTP on 127.0.0.1 (a thread per request). Live
    streams send keep-alives often, so one whose client has gone notices it
    (its next write fails) and the server stops without waiting out 15 s."""
    from blueprints import events

    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0.2)
    with ServedApp(app, "baton") as served:
        yield served.url


@pytest.fixture
def make_desk(app_factory, n8n):
    """Factory: make_desk(**settings) is a test app for the human side, set as the
    jobs' runtime: notifications go to the fake n8n (`notify`), and the sentiment
    trigger is off (stories escalate by asking). A setting given as None keeps its
    default (make_desk(SENTIMENT_LANGUAGES=None): sentiment on)."""
    from jobs.context import set_runtime

    def make(**settings):
        chosen = {"N8N_NOTIFY_URL": n8n.url_for("notify"), "SENTIMENT_LANGUAGES": "", **settings}
        app = app_factory(**{k: v for k, v in chosen.items() if v is not None})
        set_runtime(app.extensions["baton"])
        return app
    return make


@pytest.fixture
def desk(make_desk):
    """The human side's test app with the default settings (see make_desk)."""
    return make_desk()


@pytest.fixture
def team(desk):
    """The desk's agents (tests.support.Team); none until added."""
    from tests.support import Team

    return Team(desk)


@pytest.fixture
def start_baton(app, settings_overrides, tmp_path, request):
    """Factory: start_baton(web_workers=2, rq_workers=2, cron=True, **extra_settings) runs
    Baton as real processes (tests/harness.py) on the test's database and Redis, with
    short leases (a killed or frozen process's claims free up fast). All are stopped
    after the test; their logs are printed when it failed."""
    from tests.harness import SHORT_LEASES, BatonProcesses

    started: list = []
    failed_before = request.session.testsfailed

    def start(web_workers: int = 2, rq_workers: int = 2, cron: bool = True, **extra_settings):
        procs = BatonProcesses({**settings_overrides, **SHORT_LEASES, **extra_settings}, web_workers=web_workers,
                               rq_workers=rq_workers, cron=cron, log_dir=tmp_path / f"processes{len(started)}")
        started.append(procs)
        return procs

    yield start
    for procs in started:
        procs.stop()
    if request.session.testsfailed > failed_before:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            for procs in started:
                print(f"\n===== Baton process logs ({procs.log_dir}) =====\n{procs.logs()}")
