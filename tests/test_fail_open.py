"""Fail open when the database is down (invariant 9), in process, on both databases.

On PostgreSQL the app reaches the server through a switchable TCP proxy
(tests/tcp_proxy.py) that the test cuts, as a restart looks from the client's
side. On SQLite an unreachable database is a connect that fails the way a file
that cannot be opened does (`unable to open database file`). Redis, the Graph
API and WasenderAPI fakes are real servers.

While the database is down: a verified webhook (Cloud API or WASender, messages
or statuses) is kept in the spool and answered 200; each customer who wrote gets
MAINTENANCE_NOTICE once per window, through the provider directly, and again
later when the provider could not take it. When the database is back the spool
is replayed in arrival order through the normal ingest path, stored once and
routed once, even when replayed twice. Database and Redis both down: 503 with
Retry-After. /readyz and /metrics show the breaker.
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from urllib.parse import urlparse

import orjson
import pytest

from integrations.signing import signature
from models import BotTurn, Contact, Conversation, Message, db
from routing.group_commit import group_commit
from tests.support import InProcessWorker, TEST_APP_SECRET, run_jobs, text_webhook, using_postgres, wait_until
from tests.tcp_proxy import SwitchableProxy

NOTICE = "We're doing maintenance; we have your message and will answer soon."
WASENDER_SECRET = "wasender-hook-secret"


def through(url: str, proxy: SwitchableProxy) -> str:
    from tests.test_outages import through as proxied

    return proxied(url, proxy)


class Outage:
    """Switches the test app's database off and on: the proxy on PostgreSQL, the
    connect on SQLite."""

    def __init__(self, monkeypatch, proxy: SwitchableProxy | None):
        self.monkeypatch = monkeypatch
        self.proxy = proxy

    def down(self) -> None:
        if self.proxy is not None:
            self.proxy.down()
        else:
            def unopenable(*args, **kwargs):
                raise sqlite3.OperationalError("unable to open database file")
            self.monkeypatch.setattr(db.obj, "_connect", unopenable)
        if not db.is_closed():
            db.close()
        group_commit().drop_connection()      # the webhooks' writer holds one too

    def up(self) -> None:
        if self.proxy is not None:
            self.proxy.up()
        else:
            self.monkeypatch.undo()

    @contextmanager
    def during(self):
        self.down()
        try:
            yield
        finally:
            self.up()


@pytest.fixture
def proxy(database_url):
    if not using_postgres():
        yield None
        return
    target = urlparse(database_url)
    with SwitchableProxy(target.port or 5432, target.hostname or "127.0.0.1") as switch:
        yield switch


@pytest.fixture
def outage(monkeypatch, proxy):
    return Outage(monkeypatch, proxy)


def make_app(app_factory, database_url, proxy, **settings):
    from jobs.context import set_runtime

    url = through(database_url, proxy) if proxy is not None else database_url
    app = app_factory(DATABASE_URL=url, MAINTENANCE_NOTICE=NOTICE, SENTIMENT_LANGUAGES="", BOT_FAILURE_LIMIT="1000",
                      DATABASE_BREAKER_OPEN_SECONDS="0.2", **settings)
    set_runtime(app.extensions["baton"])
    return app


@pytest.fixture
def cloud(app_factory, database_url, proxy, graph_api):
    return make_app(app_factory, database_url, proxy, WHATSAPP_PROVIDER="cloud_api",
                    WHATSAPP_ACCESS_TOKEN=graph_api.access_token, WHATSAPP_API_BASE=graph_api.api_base)


@pytest.fixture
def wasender(app_factory, database_url, proxy, wasender_api):
    return make_app(app_factory, database_url, proxy, WHATSAPP_PROVIDER="wasender",
                    WASENDER_WEBHOOK_SECRET=WASENDER_SECRET, WASENDER_API_KEY=wasender_api.api_key,
                    WASENDER_API_BASE=wasender_api.url)


def post_cloud(app, wa_id: str, text: str, message_id: str, timestamp: int):
    raw, headers = text_webhook(wa_id, text, message_id=message_id, timestamp=timestamp)
    return app.test_client().post("/webhooks/whatsapp", data=raw, headers=headers)


def post_wasender(app, wa_id: str, text: str, message_id: str, timestamp: int):
    body = {"event": "messages.upsert", "timestamp": timestamp, "data": {"messages": [{
        "key": {"id": message_id, "fromMe": False, "remoteJid": f"{wa_id}@s.whatsapp.net", "cleanedSenderPn": wa_id},
        "messageTimestamp": timestamp, "messageBody": text, "message": {"conversation": text}, "pushName": "Rita"}]}}
    return app.test_client().post("/webhooks/wasender", data=orjson.dumps(body),
                                  headers={"Content-Type": "application/json", "X-Webhook-Signature": WASENDER_SECRET})


def cloud_status(wamid: str, to: str, status: str) -> tuple[bytes, dict]:
    body = {"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": "sandbox-1"},
            "statuses": [{"id": wamid, "status": status, "timestamp": str(int(time.time())),
                          "recipient_id": to}]}}]}]}
    raw = orjson.dumps(body)
    return raw, {"Content-Type": "application/json", "X-Hub-Signature-256": signature(TEST_APP_SECRET, raw)}


def run_default_queue(rt) -> None:
    """The jobs on the default queue (notices, replays), as a worker runs them, without
    the cron tick (which needs the database)."""
    InProcessWorker([rt.queues["default"]], connection=rt.redis).work(burst=True, logging_level="CRITICAL")


def notices_to(fake, address: str) -> list:
    return [body for _, path, _, body in fake.requests
            if body and body.get("to") in (address, f"+{address}")
            and NOTICE in str(body.get("text"))]


def inbound_of(wa_id: str) -> list[Message]:
    return list(Message.select().join(Conversation).join(Contact)
                .where((Contact.wa_id == wa_id) & (Message.direction == "in")).order_by(Message.seq))


def replay_now(rt) -> dict:
    from jobs import fail_open

    return fail_open.tick()


def assert_routed_once(wa_id: str, message_ids: list[str]) -> None:
    """Each message stored once, in the order written, with one bot turn."""
    stored = inbound_of(wa_id)
    assert [m.provider_message_id for m in stored] == message_ids
    for message in stored:
        assert message.routed_to is not None, f"{message.provider_message_id} was never routed"
        assert BotTurn.select().where(BotTurn.message_id == message.id).count() == 1


# -- the stories ---------------------------------------------------------------------------------

def test_cloud_api_webhooks_are_spooled_answered_200_noticed_once_and_replayed_in_order(cloud, graph_api, outage):
    rt = cloud.extensions["baton"]
    base = int(time.time()) - 60
    with outage.during():
        answers = [post_cloud(cloud, "15550001111", f"question {n}", f"wamid.DOWN{n}", base + n) for n in range(3)]
        other = post_cloud(cloud, "15550002222", "hello?", "wamid.OTHER0", base + 1)
        for answer in (*answers, other):
            assert answer.status_code == 200, answer.get_json()
            assert answer.get_json() == {"messages": 1, "statuses": 0, "duplicates": 0, "ignored": 0,
                                         "spooled": True}
        assert rt.spool.length() == 4
        run_default_queue(rt)
        # One notice per customer, however many messages they wrote, sent while the database is down.
        assert len(notices_to(graph_api, "15550001111")) == 1
        assert len(notices_to(graph_api, "15550002222")) == 1
        assert rt.breaker.state in ("open", "half_open")
    assert Message.select().count() == 0                 # nothing reached the database during the outage

    assert replay_now(rt)["replayed"] == 4
    run_jobs(rt)
    assert rt.spool.length() == 0
    assert_routed_once("15550001111", ["wamid.DOWN0", "wamid.DOWN1", "wamid.DOWN2"])
    assert_routed_once("15550002222", ["wamid.OTHER0"])
    # The notice was not sent again by the replay, nor by the bot's answers.
    assert len(notices_to(graph_api, "15550001111")) == 1


def test_wasender_webhooks_are_spooled_noticed_and_replayed(wasender, wasender_api, outage):
    rt = wasender.extensions["baton"]
    base = int(time.time()) - 60
    with outage.during():
        for n in range(2):
            answer = post_wasender(wasender, "5551234567", f"hello {n}", f"3EB0DOWN{n}", base + n)
            assert answer.status_code == 200 and answer.get_json()["spooled"] is True, answer.get_json()
        run_default_queue(rt)
        assert len(notices_to(wasender_api, "5551234567")) == 1
    replay_now(rt)
    run_jobs(rt)
    assert_routed_once("5551234567", ["3EB0DOWN0", "3EB0DOWN1"])


def test_a_notice_the_provider_cannot_take_is_sent_later_once(cloud, graph_api, outage):
    rt = cloud.extensions["baton"]
    with outage.during():
        graph_api.fail_next(1, 503, {"error": {"code": 2, "message": "Service temporarily unavailable"}})
        assert post_cloud(cloud, "15550003333", "anyone?", "wamid.RETRY0", int(time.time())).status_code == 200
        run_default_queue(rt)
        assert len(notices_to(graph_api, "15550003333")) == 1          # tried, refused with 503
        # Another message in the window schedules no second notice; the failed one is retried.
        assert post_cloud(cloud, "15550003333", "hello??", "wamid.RETRY1", int(time.time())).status_code == 200
        assert rt.notices.waiting() == 1

        def retried():
            from jobs import fail_open

            fail_open.tick()
            run_default_queue(rt)
            return len(notices_to(graph_api, "15550003333")) == 2    # the refused try and the accepted one
        wait_until(retried, timeout=10, interval=0.2, what="the notice to be sent again")
        assert rt.notices.waiting() == 0
    accepted = [r for r in graph_api.requests if r[3] and NOTICE in str(r[3].get("text"))]
    assert len(accepted) == 2                 # one refused with 503, one accepted: the customer got one


def test_the_notice_is_sent_again_only_after_its_window(app_factory, database_url, proxy, graph_api, outage):
    app = make_app(app_factory, database_url, proxy, WHATSAPP_PROVIDER="cloud_api",
                   WHATSAPP_ACCESS_TOKEN=graph_api.access_token, WHATSAPP_API_BASE=graph_api.api_base,
                   MAINTENANCE_NOTICE_WINDOW="1")
    rt = app.extensions["baton"]
    with outage.during():
        post_cloud(app, "15550004444", "one", "wamid.WIN0", int(time.time()))
        post_cloud(app, "15550004444", "two", "wamid.WIN1", int(time.time()))
        run_default_queue(rt)
        assert len(notices_to(graph_api, "15550004444")) == 1
        # The window (1 s) ends: its key expires; expired now instead of sleeping past it.
        [noticed] = rt.redis.keys(f"{rt.settings.REDIS_PREFIX}:maintenance:noticed:*")
        assert 0 < rt.redis.ttl(noticed) <= 1
        rt.redis.delete(noticed)
        post_cloud(app, "15550004444", "three", "wamid.WIN2", int(time.time()))
        run_default_queue(rt)
        assert len(notices_to(graph_api, "15550004444")) == 2


def test_statuses_go_through_the_spool_and_only_move_forward(cloud, graph_api, outage):
    rt = cloud.extensions["baton"]
    assert post_cloud(cloud, "15550005555", "hi", "wamid.ST0", int(time.time())).status_code == 200
    run_jobs(rt)
    reply = Message.get((Message.direction == "out") & (Message.sender == "bot"))
    assert reply.status == "sent" and reply.provider_message_id
    with outage.during():
        for status in ("read", "delivered"):          # out of order, as webhooks may come
            raw, headers = cloud_status(reply.provider_message_id, "15550005555", status)
            answer = cloud.test_client().post("/webhooks/whatsapp", data=raw, headers=headers)
            assert answer.status_code == 200
            assert answer.get_json() == {"messages": 0, "statuses": 1, "duplicates": 0, "ignored": 0,
                                         "spooled": True}
        run_default_queue(rt)
    assert notices_to(graph_api, "15550005555") == []        # a status is nobody writing
    assert replay_now(rt)["replayed"] == 2
    assert Message.get_by_id(reply.id).status == "read"


def test_replaying_the_same_webhooks_twice_stores_and_routes_them_once(cloud, outage):
    """A replay cut off after its commit (before the entry was deleted) runs again: the
    entries are recorded again through the ingest path, which stores nothing twice."""
    rt = cloud.extensions["baton"]
    with outage.during():
        for n in range(3):
            assert post_cloud(cloud, "15550006666", f"m{n}", f"wamid.TWICE{n}", int(time.time()) + n).status_code == 200
    spooled = rt.redis.xrange(rt.spool.key)
    assert replay_now(rt)["replayed"] == 3
    for _, fields in spooled:                                  # the same entries, once more
        rt.redis.xadd(rt.spool.key, fields)
    assert replay_now(rt)["replayed"] == 3
    run_jobs(rt)
    assert_routed_once("15550006666", ["wamid.TWICE0", "wamid.TWICE1", "wamid.TWICE2"])
    assert rt.spool.length() == 0


def test_while_the_spool_holds_entries_new_webhooks_queue_behind_them(cloud, outage):
    rt = cloud.extensions["baton"]
    base = int(time.time()) - 30
    with outage.during():
        assert post_cloud(cloud, "15550007777", "first", "wamid.ORD0", base).status_code == 200
    # The database is back, the replay has not run yet: the next webhook joins the spool.
    later = post_cloud(cloud, "15550007777", "second", "wamid.ORD1", base + 1)
    assert later.status_code == 200 and later.get_json()["spooled"] is True
    replay_now(rt)
    run_jobs(rt)
    assert_routed_once("15550007777", ["wamid.ORD0", "wamid.ORD1"])
    after = post_cloud(cloud, "15550007777", "third", "wamid.ORD2", base + 2)
    assert after.status_code == 200 and "spooled" not in after.get_json()     # back to the database


def test_database_and_redis_both_down_is_503_with_retry_after(cloud, outage, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    rt = cloud.extensions["baton"]

    def unreachable(*args, **kwargs):
        raise RedisConnectionError("Error 111 connecting to 127.0.0.1. Connection refused.")
    with outage.during():
        monkeypatch.setattr(rt.spool, "_append", unreachable)
        answer = post_cloud(cloud, "15550008888", "anyone?", "wamid.BOTH0", int(time.time()))
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "5"
        assert answer.get_json()["error"] == "database_unavailable"
        monkeypatch.undo()        # (also lifts a SQLite outage: the database is checked below)
    assert Message.select().count() == 0


def test_a_full_spool_answers_503(app_factory, database_url, proxy, graph_api, outage):
    app = make_app(app_factory, database_url, proxy, SPOOL_MAX_ENTRIES="2")
    with outage.during():
        codes = [post_cloud(app, "15550009999", f"m{n}", f"wamid.FULL{n}", int(time.time())).status_code
                 for n in range(3)]
    assert codes == [200, 200, 503]


class SteppedClock:
    """The breaker's clock, moved on by the test instead of by sleeping."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def skip(self, seconds: float) -> None:
        self.now += seconds


def test_the_breaker_opens_probes_and_closes_and_readyz_and_metrics_show_it(cloud, outage):
    rt = cloud.extensions["baton"]
    rt.breaker.clock = clock = SteppedClock()
    client = cloud.test_client()
    assert client.get("/readyz").get_json()["breaker"] == "closed"
    assert 'baton_database_breaker{state="closed"} 1.0' in client.get("/metrics").text
    with outage.during():
        for n in range(3):                    # DATABASE_BREAKER_FAILURES (3) webhooks find it down: it opens
            post_cloud(cloud, "15550001212", f"m{n}", f"wamid.BRK{n}", int(time.time()))
        assert rt.breaker.state == "open"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json()["breaker"] == "open" and ready.get_json()["spool"] == 3
        metrics = client.get("/metrics").text
        assert 'baton_database_breaker{state="open"} 1.0' in metrics
        assert 'baton_database_breaker{state="closed"} 0.0' in metrics
        assert "baton_spool_entries 3.0" in metrics
        clock.skip(0.25)                      # DATABASE_BREAKER_OPEN_SECONDS: the next webhook probes, and fails
        assert rt.breaker.state == "half_open"
        assert post_cloud(cloud, "15550001212", "m3", "wamid.BRK3", int(time.time())).status_code == 200
        assert rt.breaker.state == "open"
    clock.skip(0.25)
    # The probe finds the database back: the breaker closes, the replay is queued.
    answer = post_cloud(cloud, "15550001212", "m4", "wamid.BRK4", int(time.time()))
    assert answer.status_code == 200 and answer.get_json()["spooled"] is True     # behind the spool's entries
    assert rt.breaker.state == "closed"
    run_default_queue(rt)                     # the replay the probe queued
    assert rt.spool.length() == 0
    run_jobs(rt)
    assert_routed_once("15550001212", [f"wamid.BRK{n}" for n in range(5)])
    ready = client.get("/readyz").get_json()
    assert (ready["breaker"], ready["spool"]) == ("closed", 0)


def test_the_cron_tick_leaves_the_spool_alone_while_the_database_is_down(cloud, outage):
    from jobs import fail_open

    rt = cloud.extensions["baton"]
    with outage.during():
        post_cloud(cloud, "15550001313", "hello", "wamid.TICK0", int(time.time()))
        assert fail_open.tick()["replayed"] == 0
        assert rt.spool.length() == 1
    assert fail_open.tick()["replayed"] == 1
    assert rt.spool.length() == 0


def test_one_replayer_at_a_time_across_processes(cloud, app_factory, outage):
    """Two processes (two runtimes on one Redis) replaying at once: the lock lets one
    in, and every entry is stored once, in order."""
    import threading

    from routing.spool import replay

    rt = cloud.extensions["baton"]
    base = int(time.time()) - 100
    with outage.during():
        for n in range(30):
            post_cloud(cloud, "15550001414", f"m{n}", f"wamid.LOCK{n:02d}", base + n)
    held = rt.spool.lock()                         # another process is replaying
    assert replay(rt)["locked"] is True and rt.spool.length() == 30
    rt.spool.unlock(held)
    other = app_factory(DATABASE_URL=rt.settings.DATABASE_URL, REDIS_PREFIX=rt.settings.REDIS_PREFIX,
                        WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN="t",
                        WHATSAPP_API_BASE=rt.settings.WHATSAPP_API_BASE).extensions["baton"]
    outcomes = []

    def replayer(runtime):
        from models import db as database

        try:
            for _ in range(100):
                outcomes.append(replay(runtime))
                if runtime.spool.length() == 0:
                    return
        finally:
            database.close()
    threads = [threading.Thread(target=replayer, args=(r,)) for r in (rt, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sum(o["replayed"] for o in outcomes) == 30
    run_jobs(rt)
    assert_routed_once("15550001414", [f"wamid.LOCK{n:02d}" for n in range(30)])


def test_an_entry_that_cannot_be_recorded_is_set_aside_and_does_not_block_the_rest(cloud, outage):
    from routing.spool import replay

    rt = cloud.extensions["baton"]
    with outage.during():
        post_cloud(cloud, "15550001515", "before", "wamid.POISON0", int(time.time()))
        rt.redis.xadd(rt.spool.key, {"provider": "cloud_api", "body": b"not json", "at": "0"})
        post_cloud(cloud, "15550001515", "after", "wamid.POISON1", int(time.time()) + 1)
    counts = replay(rt)
    assert (counts["replayed"], counts["buried"]) == (2, 1)
    assert rt.spool.length() == 0 and rt.spool.dead_length() == 1
    [(_, dead)] = rt.redis.xrange(rt.spool.dead_key)
    assert dead[b"body"] == b"not json" and dead[b"error"].startswith(b"WebhookRejected")
    run_jobs(rt)
    assert_routed_once("15550001515", ["wamid.POISON0", "wamid.POISON1"])
    assert "baton_spool_dead_entries 1.0" in cloud.test_client().get("/metrics").text


def test_the_breaker_counts_failures_in_a_row_and_probes_once():
    from routing.breaker import PASS, PROBE, REJECT, CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker(failures=2, open_seconds=5, clock=lambda: now[0])
    assert (breaker.failed(), breaker.state) == (False, "closed")
    breaker.succeeded()                            # a success in between: the count starts over
    assert breaker.failed() is False and breaker.failed() is True
    assert (breaker.state, breaker.attempt()) == ("open", REJECT)
    now[0] = 5.0
    assert breaker.state == "half_open"
    assert breaker.attempt() == PROBE
    assert breaker.attempt() == REJECT             # one probe at a time
    breaker.failed()                               # the probe failed: open for another 5 s
    assert (breaker.state, breaker.attempt()) == ("open", REJECT)
    now[0] = 10.0
    assert breaker.attempt() == PROBE
    assert breaker.succeeded() is True
    assert (breaker.state, breaker.attempt()) == ("closed", PASS)


def test_wasender_statuses_go_through_the_spool(wasender, wasender_api, outage):
    """The bot's reply holds WASender's msgId; its first status (spooled) gives it the
    key id, the next one moves it forward, both once the database is back."""
    rt = wasender.extensions["baton"]
    assert post_wasender(wasender, "5551234567", "hello", "3EB0HELLO", int(time.time())).status_code == 200
    run_jobs(rt)
    reply = Message.get((Message.direction == "out") & (Message.sender == "bot"))
    assert reply.status == "sent" and reply.provider_message_id.isdigit()
    key = {"id": "3EB0REPLY", "fromMe": True, "remoteJid": "5551234567@s.whatsapp.net"}
    with outage.during():
        for status in (2, 4):                      # server ack, then read
            body = orjson.dumps({"event": "messages.update", "timestamp": int(time.time() * 1000),
                                 "data": {"update": {"status": status}, "key": key}})
            answer = wasender.test_client().post("/webhooks/wasender", data=body, headers={
                "Content-Type": "application/json", "X-Webhook-Signature": WASENDER_SECRET})
            assert answer.status_code == 200 and answer.get_json()["spooled"] is True
            assert answer.get_json()["statuses"] == 1
        run_default_queue(rt)
    assert notices_to(wasender_api, "5551234567") == []
    assert replay_now(rt)["replayed"] == 2
    row = Message.get_by_id(reply.id)
    assert (row.provider_message_id, row.status) == ("3EB0REPLY", "read")


def test_an_entry_leaves_the_spool_only_once_committed(cloud, outage, monkeypatch):
    """The database goes away in the middle of a replay: what was committed leaves the
    spool, what was not stays, and the next replay records the rest, in order."""
    import peewee

    import routing.ingest
    from routing.spool import replay

    rt = cloud.extensions["baton"]
    base = int(time.time()) - 30
    with outage.during():
        for n in range(3):
            post_cloud(cloud, "15550001616", f"m{n}", f"wamid.MID{n}", base + n)
    real = routing.ingest.record_webhook
    calls = []

    def fails_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise peewee.OperationalError("server closed the connection unexpectedly")
        return real(*args, **kwargs)
    monkeypatch.setattr(routing.ingest, "record_webhook", fails_second)
    with pytest.raises(peewee.OperationalError):
        replay(rt)
    assert rt.spool.length() == 2
    assert [m.provider_message_id for m in inbound_of("15550001616")] == ["wamid.MID0"]
    monkeypatch.undo()
    assert replay(rt)["replayed"] == 2
    run_jobs(rt)
    assert_routed_once("15550001616", ["wamid.MID0", "wamid.MID1", "wamid.MID2"])


def test_while_entries_wait_a_webhook_the_spool_cannot_take_goes_to_the_database(cloud, outage, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    rt = cloud.extensions["baton"]
    with outage.during():
        post_cloud(cloud, "15550001717", "first", "wamid.FALL0", int(time.time()) - 5)
    assert rt.spool.pending()

    def unreachable(*args, **kwargs):
        raise RedisConnectionError("Connection refused.")
    monkeypatch.setattr(rt.spool, "_append", unreachable)
    answer = post_cloud(cloud, "15550001717", "second", "wamid.FALL1", int(time.time()))
    assert answer.status_code == 200 and "spooled" not in answer.get_json()
    assert [m.provider_message_id for m in inbound_of("15550001717")] == ["wamid.FALL1"]
    monkeypatch.undo()
    replay_now(rt)
    assert {m.provider_message_id for m in inbound_of("15550001717")} == {"wamid.FALL0", "wamid.FALL1"}
