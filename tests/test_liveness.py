"""Liveness, readiness and metrics say what they mean while a dependency is down, and a
process holding a connection the database dropped gets a fresh one on its own.
(The same under real outages, with real processes: tests/test_outages.py.)"""
from __future__ import annotations

import psycopg2
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from models import BotTurn, Message, db
from tests.support import text_webhook, using_postgres

NO_DATABASE = "postgresql://baton@127.0.0.1:1/nowhere"      # nothing listens on port 1
NO_REDIS = "redis://127.0.0.1:1/0"


def gauges(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_while_the_database_is_down_liveness_metrics_and_the_api_document_answer(app_factory):
    client = app_factory(DATABASE_URL=NO_DATABASE).test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["Retry-After"]
    assert ready.json["database"].startswith("down: ") and ready.json["redis"] == "ok", ready.json
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.get_data(as_text=True)
    assert 'baton_dependency_up{dependency="database"} 0.0' in text
    assert 'baton_dependency_up{dependency="redis"} 1.0' in text
    # Database-backed gauges are absent (not zero); Redis-backed ones are still there.
    assert not gauges(text) & {"baton_conversations", "baton_messages_unrouted", "baton_pending_unoffered",
                               "baton_agents_online"}, text
    assert "baton_lane_ready" in gauges(text)
    # A webhook fails open: it is spooled (Redis) and answered 200 (tests/test_fail_open.py).
    raw, headers = text_webhook("15551230001", "hello")
    answer = client.post("/webhooks/whatsapp", data=raw, headers=headers)
    assert answer.status_code == 200 and answer.json["spooled"] is True
    # Everything else still needs the database, and says so.
    answer = client.get("/api/v1/conversations", headers={"Authorization": "Bearer bt_whatever"})
    assert answer.status_code == 503 and answer.json["error"] == "database_unavailable"


def test_while_redis_is_down_readiness_names_it_and_metrics_keep_the_database_gauges(app_factory):
    client = app_factory(REDIS_URL=NO_REDIS).test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["redis"].startswith("down: ") and ready.json["database"] == "ok", ready.json
    text = client.get("/metrics").get_data(as_text=True)
    assert 'baton_dependency_up{dependency="database"} 1.0' in text
    assert 'baton_dependency_up{dependency="redis"} 0.0' in text
    assert "baton_messages_unrouted" in gauges(text) and "baton_lane_ready" not in gauges(text)


def test_readiness_answers_503_not_500_whatever_a_dependency_raises(client, rt, monkeypatch):
    def broken():
        raise ValueError("a driver bug, not a RedisError")

    monkeypatch.setattr(rt.redis, "ping", broken)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["redis"] == "down: ValueError"


def test_health_touches_neither_database_nor_redis(app_factory):
    client = app_factory(DATABASE_URL=NO_DATABASE, REDIS_URL=NO_REDIS).test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz").json == {"status": "ok"}


def terminate_backends(database_url: str) -> int:
    """What a PostgreSQL restart does to every connection of ours: the server ends it."""
    name = database_url.rsplit("/", 1)[1]
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            return cur.fetchone()[0]
    finally:
        admin.close()


@pytest.mark.skipif(not using_postgres(), reason="the server ends connections on PostgreSQL only")
def test_a_worker_whose_connection_the_server_ended_gets_a_fresh_one_for_its_next_job(app, rt, database_url):
    """The issue: after a restart each later job failed with `connection already closed`."""
    from jobs import timers
    from jobs.context import set_runtime

    set_runtime(rt)
    with pytest.raises(Exception):
        with db.atomic():
            db.execute_sql("SELECT 1")
            assert terminate_backends(database_url) >= 1
            db.execute_sql("SELECT 1")     # mid-transaction: no silent retry, the job fails…
    assert db.is_closed() or not db.is_connection_usable()
    assert timers.sweep() is not None      # …and the next job reconnects
    assert terminate_backends(database_url) >= 1
    db.execute_sql("SELECT 1")             # outside a transaction a statement reconnects by itself


def test_messages_whose_hand_off_to_redis_was_lost_are_routed_before_later_ones(client, rt, work, monkeypatch):
    """Redis was down when the first two were recorded; the third reaches the inbox. The
    conversation is routed in the order the customer wrote, not the gap after."""
    def down(*args, **kwargs):
        raise RedisConnectionError("down")

    monkeypatch.setattr(rt.lanes, "schedule_inbound_many", down)
    for n in range(2):
        raw, headers = text_webhook("15551230009", f"question {n}", message_id=f"wamid.GAP{n}", timestamp=1_700_000_000 + n)
        assert client.post("/webhooks/whatsapp", data=raw, headers=headers).status_code == 200
    rt.feeder.flush()
    monkeypatch.undo()
    raw, headers = text_webhook("15551230009", "question 2", message_id="wamid.GAP2", timestamp=1_700_000_002)
    assert client.post("/webhooks/whatsapp", data=raw, headers=headers).status_code == 200
    work()
    turns = list(BotTurn.select().order_by(BotTurn.created_at, BotTurn.id))
    texts = [Message.get_by_id(t.message_id).text for t in turns]
    assert texts == ["question 0", "question 1", "question 2"]


def test_a_worker_whose_connection_was_closed_under_it_gets_a_fresh_one(app, rt):
    """On either database: the driver's connection is gone (closed behind peewee's back,
    as a dropped file handle or socket leaves it); the next job opens another."""
    from jobs import timers
    from jobs.context import set_runtime

    set_runtime(rt)
    db.execute_sql("SELECT 1")
    db.connection().close()
    assert timers.sweep() is not None
    assert db.execute_sql("SELECT 1").fetchone()[0] == 1
