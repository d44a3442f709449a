"""Chaos: Baton as real processes (gunicorn with two workers, two RQ workers, RQ cron),
sending over real HTTP to a fake Graph API (WHATSAPP_PROVIDER=cloud_api), under a
bounded load (tests/chaos/load.py: customers writing signed webhooks with duplicates,
reversed order and bursts; status webhooks for what was sent; agents claiming,
replying, releasing and closing through the API with their tokens), while the faults
of tests/chaos/faults.py strike one after another:

    t= 3 s   kill -9 an RQ worker (another starts)
    t= 6 s   kill -9 gunicorn's workers (the master forks new ones)
    t= 9 s   the Graph API fails for 10 s (5xx, dropped connections, answers held past the timeout)
    t=12 s   kill -9 another RQ worker
    t=21 s   Redis killed and started again (every key lost)
    t=26 s   the database gone for 10 s (PostgreSQL: the TCP proxy cut; SQLite: its write lock held)
    t=38 s   kill -9 gunicorn (master and workers) and an RQ worker; both started again
    t=42 s   the load stops

Once everything has settled (every acknowledged message routed, nothing left to send
or deliver, every waiting customer's timers run out) it prints the counts of
tests/chaos/checks.py, and every one must be 0.

Run: .venv/bin/python -m pytest -s tests/chaos                (SQLite)
     BATON_TEST_DATABASE=postgres .venv/bin/python -m pytest -s tests/chaos
"""
from __future__ import annotations

import time
from urllib.parse import urlparse

import pytest

from tests.chaos import checks
from tests.chaos.faults import (DatabaseOutage, graph_api_failing, kill_and_replace_worker, kill_gunicorn_workers,
                                outage, restart_web)
from tests.chaos.load import Agents, Customers, Ledger, Statuses
from tests.harness import quiet, state_summary
from tests.support import TEST_APP_SECRET, using_postgres
from tests.tcp_proxy import SwitchableProxy
from tests.test_outages import through

pytestmark = pytest.mark.processes

CUSTOMERS = 10
AGENTS = ["ana", "bo", "cy"]
OUTAGE_SECONDS = 10
TIMERS = {"OFFER_TIMEOUT": 3, "PENDING_TIMEOUT": 10, "AGENT_RESPONSE_TIMEOUT": 6}


@pytest.fixture
def settings_overrides(settings_overrides):
    """The built-in bot answers everything (its hand-over-after-failures rule and
    sentiment out of the way: customers ask for a person in words); short timers."""
    return {**settings_overrides, "BOT_FAILURE_LIMIT": "100000", "SENTIMENT_LANGUAGES": "",
            **{k: str(v) for k, v in TIMERS.items()}}


def baton_sending_to(start_baton, fake, **settings):
    procs = start_baton(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=fake.access_token,
                        WHATSAPP_API_BASE=fake.api_base, WHATSAPP_VERIFY_TOKEN="verify-me", **settings)
    fake.post_statuses_to(f"{procs.url}/webhooks/whatsapp", TEST_APP_SECRET)
    return procs


def unsent() -> int:
    from models import Message

    return Message.select().where((Message.direction == "out") & Message.status.in_(("queued", "unknown"))).count()


def unrouted(acked) -> int:
    from models import Message

    routed = {m.provider_message_id for m in Message.select(Message.provider_message_id)
              .where((Message.direction == "in") & Message.routed_to.is_null(False))}
    return sum(1 for mid in acked if mid not in routed)


def timers_running() -> int:
    """Conversations with a handoff timer still to run: waiting for a person, or held
    by one with the customer waiting for an answer."""
    from models import AGENT_CONTROLLED, PENDING_AGENT, Conversation

    return Conversation.select().where((Conversation.state == PENDING_AGENT) | (
        (Conversation.state == AGENT_CONTROLLED) & Conversation.awaiting_agent_since.is_null(False))).count()


def strike(procs, fake, database, chaos_redis, started: float, log: list) -> None:
    """The faults, at their times from `started` (monotonic)."""
    def at(t: float, what: str) -> None:
        time.sleep(max(0.0, started + t - time.monotonic()))
        log.append((round(time.monotonic() - started, 1), what))

    at(3, "kill -9 RQ worker")
    kill_and_replace_worker(procs, procs.live_workers[0])
    at(6, "kill -9 gunicorn workers")
    log.append((None, f"{kill_gunicorn_workers(procs)} gunicorn workers killed"))
    at(9, "Graph API failing for 10 s")
    with graph_api_failing(fake):
        at(12, "kill -9 RQ worker")
        kill_and_replace_worker(procs, procs.live_workers[-1])
        at(19, "Graph API back")
    at(21, "Redis killed and restarted")
    chaos_redis.restart(down_for=1.0)
    at(26, f"database down for {OUTAGE_SECONDS} s: {database.kind}")
    outage(database, OUTAGE_SECONDS)
    at(38, "kill -9 gunicorn (master and workers) and an RQ worker, both restarted")
    restart_web(procs)
    kill_and_replace_worker(procs, procs.live_workers[0])
    procs.wait_ready()


def test_chaos(start_baton, rt, graph_api, chaos_redis, database_url, settings_overrides):
    from models import ApiToken

    begun = time.monotonic()
    proxy = None
    if using_postgres():
        target = urlparse(database_url)
        proxy = SwitchableProxy(target.port or 5432, target.hostname or "127.0.0.1")
        procs = baton_sending_to(start_baton, graph_api, DATABASE_URL=through(database_url, proxy))
        database = DatabaseOutage(proxy=proxy)
    else:
        procs = baton_sending_to(start_baton, graph_api)
        database = DatabaseOutage(sqlite_path=urlparse(database_url).path)
    try:
        ledger = Ledger()
        admin = ApiToken.issue("chaos-admin", "admin")[1]
        agents = Agents(procs.url, admin, AGENTS, never_claim=Customers.wa_id(0)).start()
        statuses = Statuses(procs.url, graph_api, ledger).start()
        customers = Customers(procs.url, CUSTOMERS, ledger).start()
        faults: list = []
        started = time.monotonic()
        try:
            strike(procs, graph_api, database, chaos_redis, started, faults)
            time.sleep(max(0.0, started + 42 - time.monotonic()))
        finally:
            customers.stop()
            agents.stop()
        load_seconds = time.monotonic() - started

        # Settle: every acknowledged message routed, nothing left to send or deliver;
        # then every waiting customer's timers run out (and their notices are sent).
        acked = dict(ledger.acked)

        def settled() -> bool:
            return unrouted(acked) == 0 and unsent() == 0 and quiet(rt)

        def describe() -> str:
            return f"unrouted {unrouted(acked)}, unsent {unsent()}, state {state_summary(rt)}"
        procs.settle(settled, timeout=90, hold=2.0, what="the load's work to be done", describe=describe)
        try:
            procs.wait_until(lambda: timers_running() == 0, timeout=45, interval=0.5,
                             what="every waiting customer's timers to run out")
        except AssertionError:
            pass                    # counted below as timers_not_fired
        procs.settle(settled, timeout=60, hold=2.0, what="the timers' notices to be sent", describe=describe)
        statuses.stop()
        settled_seconds = time.monotonic() - started - load_seconds

        accepted = graph_api.accepted
        lost, duplicated = checks.lost_and_duplicated(acked)
        wrong_order = checks.misordered()
        over, in_flight = checks.bot_over_human(accepted)
        twice = checks.sent_twice(accepted, maintenance_notice=rt.settings.MAINTENANCE_NOTICE)
        overdue = checks.overdue_timers({k: v for k, v in TIMERS.items()})
        counts = {"lost": sum(map(len, lost.values())), "duplicated": sum(map(len, duplicated.values())),
                  "misordered": len(wrong_order), "bot_over_human": len(over), "sent_twice": len(twice),
                  "timers_not_fired": sum(map(len, overdue.values()))}
        outcomes = checks.timer_outcomes()
        outbound = checks.outbound_outcomes()
        print(f"\n===== chaos on {'PostgreSQL' if proxy else 'SQLite'} =====")
        for when, what in faults:
            print(f"  {'' if when is None else f't={when:>5} s '}{what}")
        print(f"  load: {load_seconds:.0f} s, settled {settled_seconds:.0f} s later; customers did "
              f"{dict(ledger.kinds)}; {len(acked)} messages acknowledged, {len(ledger.unacked)} never; "
              f"webhook answers {dict(ledger.answers)}, the slowest in {ledger.slowest:.1f} s")
        print(f"  agents: {len(agents.claims)} claims; actions {dict(agents.actions)}")
        print(f"  provider: {len(accepted)} sends accepted, refused {dict(graph_api.refused)}, "
              f"{graph_api.timeouts} answers held; {statuses.posted} status webhooks posted by the load")
        print(f"  Baton's outbound messages (sender, status): {outbound}")
        print(f"  timers fired: {dict(outcomes)}; bot replies on the wire when a person took over: {in_flight}")
        print(f"  COUNTS: {counts}")
        print(f"  suite took {time.monotonic() - begun:.0f} s")
        details = {"lost": lost, "duplicated": duplicated, "misordered": wrong_order[:10],
                   "bot_over_human": over[:10], "sent_twice": twice[:10], "timers_not_fired": overdue}

        # The faults did strike, and the load exercised what is counted.
        assert sum(graph_api.refused.values()) > 0 and graph_api.timeouts > 0, graph_api.stats()
        assert chaos_redis.restarts == 1
        assert len(acked) > 100 and len(agents.claims) > 3, (len(acked), agents.claims)
        assert outcomes["offer_expired"] > 0 and outcomes["pending_timeout"] > 0, outcomes
        assert counts == dict.fromkeys(counts, 0), f"{counts}\n{details}"
        assert not ledger.unacked, ledger.unacked[:10]
    finally:
        if proxy is not None:
            procs.stop()
            proxy.close()
