"""Outages of PostgreSQL and Redis under load, against Baton as real processes.

Baton's processes (gunicorn, two RQ workers, RQ cron) reach the dependency through a
switchable TCP proxy (tests/tcp_proxy.py); the test itself talks to it directly. While
customers keep writing and the built-in bot answers, the proxy cuts every connection
and refuses new ones for OUTAGE_SECONDS, as a restart does, then lets them through
again. Webhooks answered 503 are sent again, as Meta would; only those answered 200
count as acknowledged. During a database outage webhooks are answered 200 all the same:
they are kept in the spool (Redis) and replayed once the database is back (invariant 9,
fail open). Afterwards, with no process restarted:
  - every acknowledged message is routed exactly once (one bot turn, one answer), in
    the order each customer wrote;
  - a timer due during the outage (an offer lapsing) fires once the dependency is back;
  - liveness said "alive" and readiness named the dependency that was down throughout.
The recovery times (proxy open -> first message routed -> backlog drained) are printed.

Run: BATON_TEST_DATABASE=postgres .venv/bin/python -m pytest -s tests/test_outages.py
"""
from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from urllib.parse import urlparse, urlunparse

import pytest
import requests

from tests.support import ASK_FOR_A_HUMAN, audit_events, bearer, outbox_texts, text_webhook, using_postgres
from tests.tcp_proxy import SwitchableProxy

pytestmark = pytest.mark.processes

OUTAGE_SECONDS = 10
CUSTOMERS = 6
OFFER_TIMEOUT = 4


@pytest.fixture
def settings_overrides(settings_overrides):
    """Hundreds of messages the bot does not understand: its hand-over-after-failures
    rule and sentiment are kept out of the way (these stories are about the outage)."""
    return {**settings_overrides, "BOT_FAILURE_LIMIT": "100000", "SENTIMENT_LANGUAGES": "",
            "OFFER_TIMEOUT": str(OFFER_TIMEOUT), "PENDING_TIMEOUT": "600"}


def through(url: str, proxy: SwitchableProxy) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlparse(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunparse(parts._replace(netloc=f"{userinfo}127.0.0.1:{proxy.port}"))


# -- the people ------------------------------------------------------------------------------

class Customers:
    """CUSTOMERS customers writing one message after another from threads of their own.
    A webhook that is not answered 200 is sent again, unchanged, after a short pause
    (Meta's retry); `acked[wa_id]` lists the message ids acknowledged, in writing order."""

    def __init__(self, url: str, count: int = CUSTOMERS, pause: float = 0.25):
        self.url = url
        self.pause = pause
        self.wa_ids = [f"1555300{i:04d}" for i in range(count)]
        self.acked: dict[str, list[str]] = {wa: [] for wa in self.wa_ids}
        self.refused = Counter()
        self.spooled = 0
        self.last_refusal = 0.0
        self.first_ack_after: dict[float, float] = {}
        self._stop = threading.Event()
        self._base = int(time.time()) - 3600
        self._threads = [threading.Thread(target=self._write, args=(wa,), daemon=True) for wa in self.wa_ids]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def __exit__(self, *exc_info):
        self.stop()

    def _write(self, wa_id: str) -> None:
        session = requests.Session()
        n = 0
        while not self._stop.is_set():
            message_id = f"wamid.OUTAGE{wa_id}{n:05d}"
            raw, headers = text_webhook(wa_id, f"question {n} about my parcel", message_id=message_id,
                                        timestamp=self._base + n)
            while True:                              # the same webhook until it is acknowledged
                try:
                    answer = session.post(f"{self.url}/webhooks/whatsapp", data=raw, headers=headers, timeout=30)
                    status = answer.status_code
                except requests.RequestException as exc:
                    status, answer = type(exc).__name__, None
                if status == 200:
                    self.spooled += bool(answer.json().get("spooled"))
                    self.acked[wa_id].append(message_id)
                    break
                self.refused[status] += 1
                self.last_refusal = time.monotonic()
                time.sleep(0.5)
            n += 1
            self._stop.wait(self.pause)

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self.acked.values())


class Probes:
    """Liveness, readiness, metrics and the OpenAPI document, asked every 0.5 s."""

    def __init__(self, url: str):
        self.url = url
        self.samples: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = {}
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                try:
                    answer = requests.get(f"{self.url}{path}", timeout=10)
                    body = answer.json() if path == "/readyz" else (answer.text if path == "/metrics" else None)
                    sample[path] = (answer.status_code, body)
                except requests.RequestException as exc:
                    sample[path] = (type(exc).__name__, None)
            self.samples.append((time.monotonic(), sample))
            self._stop.wait(0.5)

    def between(self, start: float, end: float) -> list[dict]:
        return [s for t, s in self.samples if start <= t <= end]


# -- what came out ---------------------------------------------------------------------------

def routed_count() -> int:
    from models import Message

    return Message.select().where((Message.direction == "in") & Message.routed_to.is_null(False)).count()


def unrouted(acked: dict[str, list[str]]) -> int:
    from models import Message

    ids = [mid for ids in acked.values() for mid in ids]
    routed = {m.provider_message_id for m in Message.select(Message.provider_message_id)
              .where((Message.direction == "in") & Message.routed_to.is_null(False))}
    return sum(1 for mid in ids if mid not in routed)


def backlog_routed(acked: dict[str, list[str]], backlog: dict[str, int]) -> bool:
    """Are each customer's first `backlog[wa_id]` messages acknowledged and routed?"""
    wanted = []
    for wa_id, count in backlog.items():
        if len(acked[wa_id]) < count:
            return False
        wanted += acked[wa_id][:count]
    return unrouted({"": wanted}) == 0


def assert_routed_once_in_order(acked: dict[str, list[str]]) -> None:
    """Each acknowledged message: stored once, one bot turn, one bot answer; and per
    customer the answers (numbered by the conversation's seq) follow the writing order."""
    from models import BotTurn, Contact, Conversation, Message

    inbound = {m.provider_message_id: m for m in Message.select().where(Message.direction == "in")}
    turns = defaultdict(list)
    for turn in BotTurn.select():
        turns[turn.message_id].append(turn)
    answers = Counter(m.turn_id for m in Message.select(Message.turn_id)
                      .where((Message.direction == "out") & (Message.sender == "bot")))
    for wa_id, ids in acked.items():
        assert ids, f"{wa_id} had nothing acknowledged"
        missing = [mid for mid in ids if mid not in inbound]
        assert not missing, f"acknowledged but not stored: {missing[:5]}"
        stored = Message.select().join(Conversation).join(Contact).where(
            (Contact.wa_id == wa_id) & (Message.direction == "in"))
        extra = {m.provider_message_id for m in stored} - set(ids)
        # A message whose 200 was lost with the connection may be stored without being
        # counted as acknowledged: it is the next one the customer would have sent.
        assert len(extra) <= 1, f"{wa_id}: stored but never acknowledged: {sorted(extra)}"
        for mid in ids:
            message = inbound[mid]
            assert message.routed_to is not None, f"{mid} was never routed"
            assert len(turns[message.id]) == 1, f"{mid} routed {len(turns[message.id])} times"
            assert answers[turns[message.id][0].id] == 1, f"{mid} answered {answers[turns[message.id][0].id]} times"
        replies = (Message.select(Message.seq, BotTurn.message_id).join(BotTurn, on=(Message.turn_id == BotTurn.id))
                   .switch(Message).join(Conversation).join(Contact)
                   .where((Contact.wa_id == wa_id) & (Message.direction == "out") & (Message.sender == "bot"))
                   .order_by(Message.seq).tuples())
        by_id = {m.id: m.provider_message_id for m in inbound.values()}
        answered_order = [by_id[message_id] for _, message_id in replies]
        assert [mid for mid in answered_order if mid in set(ids)] == ids, f"{wa_id}: routed out of order"


class Team:
    """One agent, online, keeping a heartbeat from a thread (failures during the outage are fine)."""

    def __init__(self, url: str):
        from models import ApiToken

        self.url = url
        self.admin = admin = ApiToken.issue("outage-admin", "admin")[1]
        answer = requests.post(f"{url}/api/v1/agents", headers=bearer(admin), timeout=30,
                               json={"name": "ana", "role": "agent", "groups": ["support"], "max_concurrent": 5})
        assert answer.status_code == 201, answer.text
        self.token, self.id = answer.json()["token"], answer.json()["id"]
        answer = requests.patch(f"{url}/api/v1/agents/me", headers=bearer(self.token), json={"status": "online"},
                                timeout=30)
        assert answer.status_code == 200 and answer.json()["online"] is True, answer.text
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while not self._stop.wait(1.0):
            try:
                requests.post(f"{self.url}/api/v1/agents/me/heartbeat", headers=bearer(self.token), timeout=10)
            except requests.RequestException:
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(timeout=15)


class LiveListener:
    """A console's live stream (GET /api/v1/events as an admin): read on a thread of its
    own, and opened again whenever it ends or cannot be opened, as the console does."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.token = token
        self.events: list[float] = []           # when each `data:` frame arrived (monotonic)
        self.opened: list[float] = []
        self._stop = threading.Event()
        self._response = None
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with requests.get(f"{self.url}/api/v1/events", headers=bearer(self.token), stream=True,
                                  timeout=(5, 30)) as response:
                    self._response = response
                    if response.status_code == 200:
                        self.opened.append(time.monotonic())
                        for line in response.iter_lines():
                            if self._stop.is_set():
                                return
                            if line.startswith(b"data:"):
                                self.events.append(time.monotonic())
            except (requests.RequestException, AttributeError):
                pass
            self._stop.wait(0.5)

    def after(self, moment: float) -> int:
        return sum(1 for t in self.events if t > moment)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        response = self._response
        if response is not None:
            response.close()
        self._thread.join(timeout=35)


def waiting_conversation(procs, url: str) -> str:
    """A customer asks for a human; returns the conversation once it is offered to the agent."""
    from models import Contact, Conversation

    wa_id = "15553999999"
    raw, headers = text_webhook(wa_id, ASK_FOR_A_HUMAN)
    assert requests.post(f"{url}/webhooks/whatsapp", data=raw, headers=headers, timeout=30).status_code == 200

    def offered():
        row = (Conversation.select().join(Contact).where(Contact.wa_id == wa_id).first())
        return row.id if row is not None and row.offered_agent_id else None
    return procs.wait_until(offered, timeout=20, what="the waiting customer's offer")


# -- the story, once per dependency -----------------------------------------------------------

def outage_story(procs, rt, proxy: SwitchableProxy, dependency: str) -> dict:
    from models import PENDING_AGENT, Conversation
    from models.base import epoch_seconds

    with Team(procs.url) as team, Probes(procs.url) as probes, LiveListener(procs.url, team.admin) as live:
        conv_id = waiting_conversation(procs, procs.url)
        offer_due = epoch_seconds(Conversation.get_by_id(conv_id).offer_expires_at)
        with Customers(procs.url) as customers:
            time.sleep(2)
            before = customers.total
            assert before > 0, "nothing acknowledged before the outage"
            down_at = proxy.down()
            wall_down = time.time()
            time.sleep(OUTAGE_SECONDS)
            up_at = proxy.up()
            wall_up = time.time()
            routed_at_up = routed_count()
            # The backlog: what each customer had written by the time the line was back
            # (acknowledged, or being sent again after a 503).
            backlog = {wa: len(ids) + 1 for wa, ids in customers.acked.items()}
            first_routed = procs.wait_until(lambda: routed_count() > routed_at_up and time.monotonic(),
                                            timeout=60, interval=0.02, what="a first message routed after the outage")
            drained = procs.wait_until(lambda: backlog_routed(customers.acked, backlog) and time.monotonic(),
                                       timeout=90, interval=0.05, what="the outage's backlog to be routed")
            # The consoles' live stream (ended when the hub lost Redis, opened again by the
            # client) carries events again while the customers keep writing.
            procs.wait_until(lambda: live.after(up_at) > 0, timeout=30, interval=0.05,
                             what="a live event after the outage",
                             describe=lambda: f"streams opened at {live.opened}, up at {up_at}")
            live_back = min(t for t in live.events if t > up_at)
            time.sleep(2)
        acked = customers.acked
        procs.wait_until(lambda: unrouted(acked) == 0, timeout=90, interval=0.05,
                         what="every acknowledged message to be routed",
                         describe=lambda: f"{unrouted(acked)} unrouted")
        procs.settle_quiet(rt, timeout=60, hold=1.0)
        settled = time.monotonic()

        # The offer was due during the outage; it lapsed once the dependency was back.
        lapsed = procs.wait_until(lambda: [e for e in audit_events(conv_id) if e.reason == "offer_expired"],
                                  timeout=30, what="the offer due during the outage to lapse")
        conv = Conversation.get_by_id(conv_id)
        assert conv.state == PENDING_AGENT
        during = probes.between(down_at + 1.5, up_at - 0.5)

    # The offer was due while the dependency was down, and lapsed only once it was back.
    assert wall_down < offer_due < wall_up, (wall_down, offer_due, wall_up)
    assert epoch_seconds(lapsed[0].created_at) >= wall_up - 0.5, (lapsed[0].created_at, wall_up)

    # Liveness and readiness while the dependency was down.
    assert len(during) >= 5, f"only {len(during)} probes during the outage"
    for sample in during:
        assert sample["/healthz"][0] == 200, sample["/healthz"]
        status, body = sample["/readyz"]
        assert status == 503, sample["/readyz"]
        assert body[dependency].startswith("down"), body
        assert all(body[k] == "ok" for k in ("database", "redis", "storage") if k != dependency), body
        assert sample["/metrics"][0] == 200, sample["/metrics"]
        assert f'baton_dependency_up{{dependency="{dependency}"}} 0.0' in sample["/metrics"][1]
        assert sample["/openapi.json"][0] == 200, sample["/openapi.json"]

    assert_routed_once_in_order(acked)
    # Recovery is bounded by reconnect back-offs (at most 2 s), not by the 30 s leases a
    # pump or drain cut off mid-work would otherwise leave behind (about 20 s measured).
    assert first_routed - up_at < 10, f"first message routed {first_routed - up_at:.1f} s after the outage"
    procs.check_alive()                      # no process died: none needs a restart
    return {"acknowledged": customers.total, "before_outage": before, "refused": dict(customers.refused),
            "spooled": customers.spooled,
            "backlog": sum(backlog.values()),
            "first_routed_after_s": round(first_routed - up_at, 2), "backlog_routed_after_s": round(drained - up_at, 2),
            "all_work_settled_after_s": round(settled - up_at, 2), "live_events_back_after_s": round(live_back - up_at, 2)}


@pytest.mark.skipif(not using_postgres(), reason="a database server to cut off is PostgreSQL's")
def test_postgresql_down_for_ten_seconds_under_load(start_baton, rt, database_url):
    target = urlparse(database_url)
    with SwitchableProxy(target.port or 5432, target.hostname or "127.0.0.1") as proxy:
        procs = start_baton(DATABASE_URL=through(database_url, proxy))
        outcome = outage_story(procs, rt, proxy, "database")
        # Every customer who wrote during the outage was told, once: the sandbox "provider"
        # writes to the database, so its notices went out (retried) once it was back.
        notice = rt.settings.MAINTENANCE_NOTICE
        wa_ids = [f"1555300{i:04d}" for i in range(CUSTOMERS)]
        procs.wait_until(lambda: all(outbox_texts(wa).count(notice) for wa in wa_ids), timeout=60,
                         what="a maintenance notice to each customer")
        time.sleep(2)
        outcome["notices"] = {wa: outbox_texts(wa).count(notice) for wa in wa_ids}
    print(f"\nPostgreSQL outage of {OUTAGE_SECONDS} s: {outcome}")
    # Fail open: the webhooks were kept in the spool and answered 200, none was refused.
    assert outcome["spooled"] > 0, f"no webhook was spooled during the outage: {outcome}"
    assert outcome["refused"].get(503, 0) == 0, f"webhooks were refused during the outage: {outcome}"
    assert set(outcome["notices"].values()) == {1}, outcome["notices"]


@pytest.mark.parametrize("leases", ["short", "default"])
def test_redis_down_for_ten_seconds_under_load(start_baton, rt, redis_server, leases):
    """`short`: the 2 s pump leases and conversation locks of the other process tests;
    `default`: the production 30 s, which a pump or drain cut off mid-work leaves behind."""
    lease_settings = {} if leases == "short" else {"PUMP_LEASE": "30", "LOCK_TTL": "30"}
    with SwitchableProxy(urlparse(redis_server.url).port) as proxy:
        procs = start_baton(REDIS_URL=through(redis_server.url, proxy), **lease_settings)
        outcome = outage_story(procs, rt, proxy, "redis")
    print(f"\nRedis outage of {OUTAGE_SECONDS} s ({leases} leases): {outcome}")
