"""The chaos suite's bounded load, all over real HTTP with real signatures and tokens.

- `Customers`: each customer writes from a thread of its own (payload timestamps one
  second apart, in writing order). Now and then a message is posted twice (once after
  its 200, or twice at once), three are posted in reverse order, six go at once (a
  burst), or the customer asks for a human. A webhook not answered 200 is posted again,
  unchanged, as Meta does; `acked` holds every message id answered 200.
- `Statuses`: the provider's status webhooks (`delivered`, some `read`) for every send
  the fake Graph API accepted, shuffled, some twice, each posted until answered 200.
- `Agents`: agents online with a heartbeat; each claims most of the conversations
  offered to it (an offer left alone lapses: a timer; one customer is never taken, so
  their wait times out), replies, then releases or closes. Every write carries an Idempotency-Key and is retried with it on a 5xx or a
  cut connection. Claims answered 200 are kept in `claims`.
"""
from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import orjson
import requests

from tests.fakes.graph_api import status_webhook
from tests.support import ASK_FOR_A_HUMAN, TEST_APP_SECRET, bearer, text_webhook
from tests.fixtures.samples import cloud_headers

RETRY_FOR = 90.0          # seconds a refused webhook or API call is tried again (Meta: 7 days)


class Ledger:
    """What the load saw, shared by its threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked: dict[str, tuple[str, int]] = {}         # message id -> (wa_id, payload timestamp)
        self.answers: Counter = Counter()                   # HTTP status (or exception name) -> count
        self.kinds: Counter = Counter()                     # what the customers did
        self.unacked: list[str] = []                        # given up on (never answered 200)
        self.slowest = 0.0                                  # seconds, the slowest webhook answer

    def answer(self, status, seconds: float) -> None:
        with self.lock:
            self.answers[status] += 1
            self.slowest = max(self.slowest, seconds)


def _post_until_200(session: requests.Session, url: str, raw: bytes, headers: dict, ledger: Ledger,
                    give_up: float) -> bool:
    while True:
        began = time.monotonic()
        try:
            status = session.post(url, data=raw, headers=headers, timeout=30).status_code
        except requests.RequestException as exc:
            status = type(exc).__name__
        ledger.answer(status, time.monotonic() - began)
        if status == 200:
            return True
        if time.monotonic() > give_up:
            return False
        time.sleep(0.5)


class Customers:
    def __init__(self, url: str, count: int, ledger: Ledger, seed: int = 11):
        self.url = f"{url}/webhooks/whatsapp"
        self.ledger = ledger
        self.wa_ids = [self.wa_id(i) for i in range(count)]
        self._stop = threading.Event()
        self._base = int(time.time()) - 3600
        self._seed = seed
        self._threads = [threading.Thread(target=self._write, args=(wa, i), daemon=True, name=f"customer-{wa}")
                         for i, wa in enumerate(self.wa_ids)]

    @staticmethod
    def wa_id(i: int) -> str:
        return f"1555400{i:04d}"

    def start(self) -> "Customers":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=RETRY_FOR + 30)

    def _write(self, wa_id: str, index: int) -> None:
        rng = random.Random(self._seed * 1000 + index)
        session = requests.Session()
        burst_pool = ThreadPoolExecutor(6, thread_name_prefix=f"burst-{wa_id}")
        n = 0

        def webhook(k: int, text: str | None = None):
            message_id = f"wamid.CHAOS{wa_id}{k:05d}"
            raw, headers = text_webhook(wa_id, text or f"question {k} about my parcel", message_id=message_id,
                                        timestamp=self._base + k)
            return message_id, raw, headers

        def post(item) -> bool:
            message_id, raw, headers = item
            s = getattr(local, "session", None) or requests.Session()
            local.session = s
            ok = _post_until_200(s, self.url, raw, headers, self.ledger, time.monotonic() + RETRY_FOR)
            with self.ledger.lock:
                if ok:
                    self.ledger.acked[message_id] = (wa_id, self._base + int(message_id[-5:]))
                else:
                    self.ledger.unacked.append(message_id)
            return ok

        local = threading.local()
        local.session = session
        try:
            while not self._stop.is_set():
                draw = rng.random() if (index, n) != (0, 0) else 0.0     # the first customer asks at once
                if draw < 0.08:
                    kind, items = "ask_for_human", [webhook(n, ASK_FOR_A_HUMAN)]
                    n += 1
                    for item in items:
                        post(item)
                elif draw < 0.20:
                    kind, items = "reversed", [webhook(n + k) for k in range(3)]
                    n += 3
                    for item in reversed(items):
                        post(item)
                elif draw < 0.30:
                    kind, items = "burst", [webhook(n + k) for k in range(6)]
                    n += 6
                    list(burst_pool.map(post, items))
                elif draw < 0.40:
                    kind, item = "duplicate_at_once", webhook(n)
                    n += 1
                    list(burst_pool.map(post, [item, item]))
                elif draw < 0.50:
                    kind, item = "duplicate_after_ack", webhook(n)
                    n += 1
                    post(item)
                    post(item)
                else:
                    kind, item = "text", webhook(n)
                    n += 1
                    post(item)
                with self.ledger.lock:
                    self.ledger.kinds[kind] += 1
                self._stop.wait(rng.uniform(0.3, 0.9))
        finally:
            burst_pool.shutdown(wait=True)


class Statuses:
    """Status webhooks for what the fake accepted (it stamps `accepted`): delivered, and
    for every other one read, in shuffled order, a tenth posted twice."""

    def __init__(self, url: str, fake, ledger: Ledger, seed: int = 5):
        self.url = f"{url}/webhooks/whatsapp"
        self.fake = fake
        self.ledger = ledger
        self.posted = 0
        self._rng = random.Random(seed)
        self._seen = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(3, thread_name_prefix="statuses")
        self._thread = threading.Thread(target=self._run, daemon=True, name="statuses")

    def start(self) -> "Statuses":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            accepted = self.fake.accepted
            fresh, self._seen = accepted[self._seen:], len(accepted)
            bodies = []
            for i, sent in enumerate(fresh):
                bodies.append(orjson.dumps(status_webhook(sent, "delivered")))
                if i % 2:
                    bodies.append(orjson.dumps(status_webhook(sent, "read")))
            bodies += [b for b in bodies if self._rng.random() < 0.1]
            self._rng.shuffle(bodies)
            for raw in bodies:
                self._pool.submit(self._post, raw)

    def _post(self, raw: bytes) -> None:
        session = requests.Session()
        _post_until_200(session, self.url, raw, cloud_headers(raw, TEST_APP_SECRET), self.ledger,
                        time.monotonic() + RETRY_FOR)
        self.posted += 1


class Agents:
    """Agents working the queue through the API with their own tokens."""

    def __init__(self, url: str, admin_token: str, names: list[str], seed: int = 3, claim_share: float = 0.7,
                 never_claim: str = ""):
        self.url = url
        self.names = names
        self.admin = admin_token
        self.token: dict[str, str] = {}
        self.id: dict[str, str] = {}
        self.claims: list[tuple[str, str, float]] = []      # (conversation, agent, time.time() of the 200)
        self.actions: Counter = Counter()                    # (action, status) -> count
        self.errors: list[str] = []
        self._rng = random.Random(seed)
        self._claim_share = claim_share
        self._never_claim = never_claim          # a customer nobody takes: their wait always times out
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        for name in names:
            made = self._call("POST", "/agents", self.admin, {"name": name, "role": "agent", "groups": ["support"],
                                                                "max_concurrent": 3})
            assert made.status_code == 201, made.text
            self.token[name], self.id[name] = made.json()["token"], made.json()["id"]
            online = self._call("PATCH", "/agents/me", self.token[name], {"status": "online"})
            assert online.status_code == 200, online.text

    def _call(self, method: str, path: str, token: str, json=None, key: str | None = None,
              session=None) -> requests.Response:
        headers = bearer(token)
        if key:
            headers["Idempotency-Key"] = key
        return (session or requests).request(method, f"{self.url}/api/v1{path}", json=json, headers=headers,
                                             timeout=30)

    def _write(self, session, name: str, action: str, conversation_id: str, json=None) -> int | str:
        """POST an action with one Idempotency-Key, again on a 5xx or a cut connection."""
        key = uuid.uuid4().hex
        give_up = time.monotonic() + 30
        while True:
            try:
                status = self._call("POST", f"/conversations/{conversation_id}/{action}", self.token[name], json,
                                    key, session).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            if status == 429 or not (isinstance(status, str) or status >= 500) or time.monotonic() > give_up:
                with self._lock:
                    self.actions[(action, status)] += 1
                return status
            time.sleep(0.5)

    def start(self) -> "Agents":
        for name in self.names:
            thread = threading.Thread(target=self._work, args=(name,), daemon=True, name=f"agent-{name}")
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def heartbeat(self, name: str, session) -> None:
        try:
            self._call("POST", "/agents/me/heartbeat", self.token[name], session=session)
        except requests.RequestException:
            pass

    def _work(self, name: str) -> None:
        from models import PENDING_AGENT, Contact, Conversation, db

        session = requests.Session()
        agent_id = self.id[name]
        rng = random.Random(self._rng.random())
        mine: list[tuple[str, float]] = []        # (conversation, when to let it go)
        passed: set[str] = set()                  # offers left to lapse
        last_beat = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() - last_beat >= 1.0:
                    self.heartbeat(name, session)
                    last_beat = time.monotonic()
                try:
                    offered = [row.id for row in Conversation.select(Conversation.id).join(Contact).where(
                        (Conversation.state == PENDING_AGENT) & (Conversation.offered_agent_id == agent_id)
                        & (Contact.wa_id != self._never_claim))]
                except Exception as exc:           # the test's own database read: keep working
                    self.errors.append(repr(exc))
                    offered = []
                for conversation_id in offered:
                    if conversation_id in passed or any(c == conversation_id for c, _ in mine):
                        continue
                    if rng.random() > self._claim_share:
                        passed.add(conversation_id)
                        continue
                    if self._write(session, name, "claim", conversation_id) == 200:
                        with self._lock:
                            self.claims.append((conversation_id, name, time.time()))
                        self._write(session, name, "messages", conversation_id,
                                    {"text": f"Hi, {name} here. Let me look at that."})
                        mine.append((conversation_id, time.monotonic() + rng.uniform(1.0, 4.0)))
                now = time.monotonic()
                for conversation_id, until in list(mine):
                    if until <= now:
                        mine.remove((conversation_id, until))
                        action = "release" if rng.random() < 0.6 else "close"
                        self._write(session, name, action, conversation_id, {})
                passed &= set(offered)
                self._stop.wait(0.3)
        finally:
            if not db.is_closed():
                db.close()
