"""The sending discipline (jobs/send.py) proved along the production path:
Baton runs as real processes (gunicorn, two RQ workers, cron) with the Cloud
API adapter pointed at a fake Graph API that behaves like Meta under load
(tests/fakes/graph_api.py `Realism`: 100-300 ms per send, the per-number rate
enforced over a sliding one-second window of arrivals, the pair limit, server
errors, dropped connections, answers lost after the message was accepted).

Every story goes the same way. Customers ask for a human (signed webhooks);
Baton tells each one a human is coming (the handoff notice, sent through the
fake) and offers them all to one agent with room for everyone. Then the RQ
workers are frozen (SIGSTOP), the agent queues K numbered texts to each customer over
`POST /api/v1/conversations/{id}/messages` (one thread per conversation, so
the order they are queued in is known; many conversations at once), and the
workers go on (SIGCONT): the sending starts from a full queue, so what the fake
sees is the discipline's pace and not how fast the test can queue.

Run: .venv/bin/python -m pytest -m processes tests/test_send_discipline.py
     BATON_TEST_DATABASE=postgres .venv/bin/python -m pytest -m processes tests/test_send_discipline.py
"""
from __future__ import annotations

import re
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from routing.send_rate import JITTER_MARGIN
from tests.fakes.graph_api import FakeGraphApiProcess, Realism
from tests.harness import BatonProcesses, customers_say, state_summary
from tests.support import ASK_FOR_A_HUMAN, TEST_APP_SECRET, bearer

pytestmark = pytest.mark.processes

MPS = 80
NUMBERED = re.compile(r"^#(\d+) for (\d+)$")


def numbered(k: int, wa_id: str) -> str:
    return f"#{k} for {wa_id}"


@dataclass
class Story:
    procs: BatonProcesses
    fake: FakeGraphApiProcess
    token: str
    agent_id: str
    conversations: dict[str, str]          # wa_id -> conversation id
    notices: int = 0

    def call(self, method: str, path: str, json=None, session=None) -> requests.Response:
        return (session or requests).request(method, f"{self.procs.url}/api/v1{path}", json=json,
                                             headers=bearer(self.token), timeout=30)


def baton_against(start_baton, fake: FakeGraphApiProcess, **settings) -> BatonProcesses:
    """Baton's processes sending through `fake`, with production's leases and sweeps (nothing
    is killed here: the harness's short ones would only add work)."""
    procs = start_baton(PUMP_LEASE=30, LOCK_TTL=30, REQUEUE_AFTER=10, WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=fake.access_token,
                        WHATSAPP_API_BASE=fake.api_base, WHATSAPP_VERIFY_TOKEN="verify-me",
                        WHATSAPP_MPS=MPS, SENTIMENT_LANGUAGES="", OFFER_TIMEOUT=900, PENDING_TIMEOUT=1800,
                        AGENT_HEARTBEAT_TTL=900, AGENT_RESPONSE_TIMEOUT=1800, **settings)
    fake.post_statuses_to(f"{procs.url}/webhooks/whatsapp", TEST_APP_SECRET)
    return procs


def customers_waiting(procs: BatonProcesses, fake: FakeGraphApiProcess, rt, n: int) -> Story:
    """`n` customers ask for a human; each is told so (through the fake) and offered to one agent."""
    from models import ApiToken, Contact, Conversation

    admin = ApiToken.issue("desk-admin", "admin")[1]
    made = requests.post(f"{procs.url}/api/v1/agents", headers=bearer(admin), timeout=30,
                         json={"name": "ana", "role": "agent", "groups": ["support"], "max_concurrent": 1000})
    assert made.status_code == 201, made.text
    token, agent_id = made.json()["token"], made.json()["id"]
    online = requests.patch(f"{procs.url}/api/v1/agents/me", json={"status": "online"}, headers=bearer(token),
                            timeout=30)
    assert online.status_code == 200, online.text

    customers = [f"1555300{i:04d}" for i in range(n)]
    customers_say(procs.url, customers, ASK_FOR_A_HUMAN)

    def offered() -> int:
        return Conversation.select().where(Conversation.offered_agent_id == agent_id).count()

    procs.wait_until(lambda: offered() == n and len(fake.accepted) >= n, timeout=60, interval=0.2,
                     what=f"{n} customers to be told and offered to the agent",
                     describe=lambda: f"offered {offered()}, sent {len(fake.accepted)}, {fake.stats()}, "
                                      f"state {state_summary(rt)}")
    conversations = {c.contact.wa_id: c.id for c in Conversation.select(Conversation, Contact).join(Contact)}
    assert sorted(conversations) == customers
    return Story(procs, fake, token, agent_id, conversations, notices=len(fake.accepted))


def queue_while_workers_pause(story: Story, k: int, before_resume=None) -> None:
    """Freeze the RQ workers (SIGSTOP: warm, as they were), queue `k` numbered texts per
    conversation (each conversation's in order from one thread, 24 conversations at once),
    then let the workers go on."""
    procs = story.procs
    workers = list(procs.live_workers)
    for i in workers:
        procs.pause_worker(i)
    local = threading.local()

    def queue(item):
        wa_id, conversation_id = item
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        answers = [story.call("POST", f"/conversations/{conversation_id}/messages",
                              {"text": numbered(j, wa_id)}, session) for j in range(1, k + 1)]
        return [(a.status_code, a.text) for a in answers if a.status_code != 202]

    try:
        with ThreadPoolExecutor(24) as pool:
            refused = [r for rs in pool.map(queue, story.conversations.items()) for r in rs]
        if before_resume:
            before_resume()
    finally:
        for i in workers:
            procs.resume_worker(i)
    assert not refused, refused[:5]


def all_sent(story: Story, rt, expected_texts: int, timeout: float):
    """Until every outbound message is `sent` (nothing queued, unknown or failed left) and the
    fake has accepted every numbered text; returns the outbound messages."""
    from models import Message

    def outbound():
        return list(Message.select().where(Message.direction == "out").order_by(Message.id))

    out = Message.select().where(Message.direction == "out")

    def done():
        return (story.fake.stats()["accepted"] >= expected_texts + story.notices
                and out.count() == expected_texts + story.notices
                and out.where(Message.status == "sent").count() == expected_texts + story.notices)

    def describe():
        return (f"statuses {Counter(m.status for m in outbound())}, fake {story.fake.stats()}, "
                f"state {state_summary(rt)}")
    story.procs.wait_until(done, timeout=timeout, interval=0.5, what="every message to be sent",
                           describe=describe)
    story.procs.settle(done, timeout=30, hold=1.0, what="the sending to stay finished", describe=describe)
    return outbound()


def check_exactly_once_in_order(story: Story, messages, k: int) -> dict[str, list]:
    """Each Baton message accepted once, named by its id; each customer's texts in order."""
    accepted = story.fake.accepted
    references = Counter(a.reference for a in accepted)
    twice = {ref: n for ref, n in references.items() if n != 1}
    assert not twice, f"accepted more than once: {list(twice.items())[:10]}"
    assert set(references) == {m.id for m in messages}, "the fake accepted what Baton did not send, or missed some"
    by_id = {m.id: m for m in messages}
    for a in accepted:
        assert by_id[a.reference].provider_message_id == a.wamid, (a, by_id[a.reference].provider_message_id)
    texts: dict[str, list] = defaultdict(list)
    for a in accepted:
        match = NUMBERED.match(a.text or "")
        if match:
            assert match.group(2) == a.to, a
            texts[a.to].append(a)
    out_of_order = {wa: [int(NUMBERED.match(a.text).group(1)) for a in got] for wa, got in texts.items()
                    if [int(NUMBERED.match(a.text).group(1)) for a in got] != list(range(1, k + 1))}
    assert not out_of_order, f"order broken for {len(out_of_order)} customers: {list(out_of_order.items())[:5]}"
    assert sorted(texts) == sorted(story.conversations)
    return texts


def steady_rate(texts: dict[str, list]) -> tuple[float, float]:
    """(sends per second, seconds) over the steady part of a run, from one second after
    the first accepted text to the first text of the last customer to start.

    Why those ends: the number's moving window lets a whole window's worth go at once when
    sending starts with a full queue, so the first second says nothing about the pace; and
    once the last customer has started, only conversations already under way are left,
    each with one send in flight at a time (their order), so the tail is paced by the
    provider's latency, not by Baton. In between the queue holds more conversations than
    Baton sends for at once: the pace there is the discipline's, and at most WHATSAPP_MPS."""
    times = sorted(a.at for got in texts.values() for a in got)
    start = times[0] + 1.0
    end = max(got[0].at for got in texts.values())
    steady = [t for t in times if start < t <= end]
    return len(steady) / (end - start), end - start


# -- a. at the rate, never over it ---------------------------------------------------------------------

def test_two_thousand_messages_go_at_the_numbers_rate_in_order_exactly_once(start_baton, rt):
    """400 customers, 5 texts each (+ 400 handoff notices), 100-300 ms a send, WHATSAPP_MPS=80
    and Meta's 130429 beyond 80 in any one-second window of arrivals: not provoked, every
    message accepted once, in order, and `sent`, at a steady pace (see steady_rate) of at
    least 95 % of what Baton allows itself: 80/s less the margin it keeps for the jitter
    between taking a place and the request arriving (routing/send_rate.JITTER_MARGIN, 50 ms).
    On this 2-core machine that is 95-96 % of 80/s; the issue's goal, >= 95 % of the limit,
    is what bench/outbound.py reports."""
    customers, k = 400, 5
    with FakeGraphApiProcess(realism=Realism(latency=(0.1, 0.3), mps=MPS, seed=8)) as fake:
        procs = baton_against(start_baton, fake)
        story = customers_waiting(procs, fake, rt, customers)
        assert story.notices == customers
        queue_while_workers_pause(story, k)
        messages = all_sent(story, rt, customers * k, timeout=90)

        # Baton counts a send when it takes its place, the fake when the request arrives; the
        # margin covers what lies between (50 ms), unless the machine stalls Baton's processes
        # for longer (this one is shared by other test runs): at most one send in a thousand.
        # Such a send is refused, retried and still goes once, in order (checked below).
        assert fake.violations <= len(fake.accepted) // 1000, f"{fake.violations} sends over the rate: {fake.stats()}"
        assert set(fake.refused) <= {130429}, fake.stats()
        texts = check_exactly_once_in_order(story, messages, k)
        rate, span = steady_rate(texts)
        print(f"\n{customers * k} texts: {rate:.1f}/s over {span:.1f} s of steady sending "
              f"(limit {MPS}/s, {rate / MPS:.1%}); {story.notices} notices")
        ceiling = MPS / (1 + JITTER_MARGIN)
        assert rate >= 0.95 * ceiling, f"only {rate:.1f}/s of {ceiling:.1f}/s over {span:.1f} s"
        assert rate <= MPS * 1.01, f"{rate:.1f}/s is over the limit of {MPS}/s"


# -- b. faults: still exactly once, in order, all sent --------------------------------------------------

def test_server_errors_dropped_connections_and_lost_answers_still_give_exactly_once_in_order(start_baton, rt):
    """150 customers, 4 texts each (+ notices) while 20 % of sends answer a Graph 5xx, 3 % have
    their connection dropped before being accepted, and 10 % are accepted and then answered
    too late (the client gives up at 10 s; the fake posts a `sent` status naming the message
    0.2-1 s after accepting it). SEND_RECONCILE_SECONDS=2: an outcome nobody reconciles is
    sent again after 2 s. Nothing is accepted twice, no customer's texts change order, all
    end `sent`."""
    customers, k = 150, 4
    realism = Realism(latency=(0.1, 0.3), mps=MPS, p_5xx=0.2, p_timeout_after_accept=0.1, p_drop=0.03,
                      hold_seconds=10.5, seed=7)
    with FakeGraphApiProcess(realism=realism) as fake:
        # 23 % of tries fail: with the default 6 tries one message in ~7,000 would fail for good.
        procs = baton_against(start_baton, fake, SEND_RECONCILE_SECONDS=2, SEND_MAX_ATTEMPTS=12)
        story = customers_waiting(procs, fake, rt, customers)
        queue_while_workers_pause(story, k)
        messages = all_sent(story, rt, customers * k, timeout=120)

        stats = fake.stats()
        print(f"\nfaults: {stats}")
        assert fake.violations == 0, stats
        assert fake.timeouts >= 20 and fake.refused["drop"] >= 5 and fake.refused[1] + fake.refused[2] >= 60, stats
        posted = Counter(code for _, code in fake.statuses_posted)
        assert posted == Counter({200: fake.timeouts}), posted
        check_exactly_once_in_order(story, messages, k)
        assert max(m.attempts for m in messages) >= 3, "no message needed a third try?"


# -- c. the pair limit holds back one customer only -------------------------------------------------------

def test_a_pair_limit_holds_back_that_customer_only(start_baton, rt):
    """Meta answers 131056 (too many messages to this customer) for one customer's first text:
    that customer's texts wait at least 6 s, still in order, while the other 39 customers'
    195 texts go at the number's full pace, done long before the held one is tried again."""
    customers, k = 40, 5
    with FakeGraphApiProcess(realism=Realism(latency=(0.1, 0.3), mps=MPS, seed=3)) as fake:
        procs = baton_against(start_baton, fake)
        story = customers_waiting(procs, fake, rt, customers)
        held = sorted(story.conversations)[7]
        queue_while_workers_pause(story, k, before_resume=lambda: fake.pair_limit(held, 1))
        messages = all_sent(story, rt, customers * k, timeout=60)

        texts = check_exactly_once_in_order(story, messages, k)
        [(refused_at, to, code)] = fake.refusals
        assert (to, code) == (held, 131056)
        waited = texts[held][0].at - refused_at
        assert waited >= 6.0, f"the held customer's text went again after {waited:.2f} s"
        others = sorted(a.at for wa, got in texts.items() if wa != held for a in got)
        took = others[-1] - others[0]
        # 195 texts at 80 a second: 2.4 s, and each customer's 5 one after the other.
        assert took < len(others) / MPS + 2.0, f"the others took {took:.2f} s for {len(others)} texts"
        assert others[-1] < refused_at + 6.0 - 1.0, "the others waited for the held customer"
        print(f"\nheld customer waited {waited:.2f} s; the other {len(others)} texts took {took:.2f} s")
