"""Helpers for tests: real services on free ports, webhooks signed like Meta's,
Baton's jobs run in this process, waiting on a condition instead of the clock;
then the people in a story (customers writing in, the bot answering its turns,
a team of agents) and the outcome read back from the database."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator, TypeVar

from rq import SimpleWorker

from models import Contact, Conversation, Event, OutboxEntry, utcnow
from routing.agents import create_agent, set_status

TEST_APP_SECRET = "test-app-secret"          # WHATSAPP_APP_SECRET: signs the webhooks
TEST_EVENT_SECRET = "event-secret-for-tests-0123456789abcdef"   # BATON_EVENT_SECRET (≥ 32 characters, as config requires)
TEST_SECRET_KEY = "secret-key-for-tests-0123456789abcdef"       # SECRET_KEY (≥ 32 characters): signs media links
PHONE_NUMBER_ID = "sandbox-1"
PG_ADMIN_DSN = os.environ.get("BATON_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
T = TypeVar("T")


def using_postgres() -> bool:
    """BATON_TEST_DATABASE=postgres runs the suite on PostgreSQL; SQLite otherwise."""
    return os.environ.get("BATON_TEST_DATABASE", "sqlite") == "postgres"


@contextmanager
def throwaway_postgres_database(name: str) -> Iterator[str]:
    """CREATE DATABASE `name` on the test PostgreSQL (BATON_TEST_PG), yield its URL,
    and drop it afterwards, whoever is still connected."""
    import psycopg2

    admin = psycopg2.connect(PG_ADMIN_DSN)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def wait_until(condition: Callable[[], T], timeout: float = 5.0, what: str = "the condition",
               interval: float = 0.01, describe: Callable[[], str] | None = None) -> T:
    """Poll `condition` every `interval` seconds until it returns something truthy,
    and return that; after `timeout` seconds fail, naming `what` was awaited (and
    `describe()`, when given, for the state of things)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            state = f"; {describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{state}")
        time.sleep(interval)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# -- services on free ports ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class RedisServer:
    """A private redis-server on a free port (nothing persisted)."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="baton-redis-")
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _answers(self.port), timeout=10, what="redis-server to start", interval=0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class ServedApp:
    """A WSGI app over real HTTP on 127.0.0.1: a free port, a thread per request,
    and a stop() that returns at once (the accept loop polls every 20 ms)."""

    def __init__(self, wsgi_app, name: str = "served-app"):
        self.wsgi_app = wsgi_app
        self.name = name
        self.url = ""
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> "ServedApp":
        from werkzeug.serving import make_server

        self._server = make_server("127.0.0.1", 0, self.wsgi_app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"{self.name}-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self) -> "ServedApp":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def env_for(settings_overrides: dict) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in settings_overrides.items()})
    return env


# -- webhooks and jobs --------------------------------------------------------------------------

def text_webhook(wa_id: str, text: str, *, message_id: str | None = None, timestamp: int | None = None,
                 name: str = "Test Customer", secret: str = TEST_APP_SECRET) -> tuple[bytes, dict]:
    from types import SimpleNamespace

    from cli import signed_text_webhook

    settings = SimpleNamespace(SANDBOX_PHONE_NUMBER_ID=PHONE_NUMBER_ID, WHATSAPP_APP_SECRET=secret)
    return signed_text_webhook(settings, wa_id, text, name, message_id=message_id, timestamp=timestamp)


class InProcessWorker(SimpleWorker):
    """SimpleWorker without the pub/sub command channel (whose teardown waits
    a second per burst): the same job execution, fast enough for every test."""

    def subscribe(self):
        pass

    def unsubscribe(self):
        pass


def run_jobs(rt, rounds: int = 50) -> None:
    """Run every queued job in this process (SimpleWorker, burst) until the
    lanes are quiet: the production job code, minus the separate process."""
    from jobs import fail_open, timers
    from jobs.context import set_runtime

    set_runtime(rt)
    rt.feeder.flush()
    queues = [rt.queues[name] for name in ("inbound", "outbound", "events", "media", "default")]
    for _ in range(rounds):
        fail_open.tick()           # the spool's replay and due maintenance notices, as the cron runs them
        rt.feeder.flush()
        timers.tick()
        InProcessWorker(queues, connection=rt.redis).work(burst=True, logging_level="WARNING")
        busy = any(rt.lanes.depth(lane) for lane in ("inbound", "outbound", "events")) or \
            any(q.count for q in queues) or rt.spool.length()
        delayed_due = any(rt.redis.zrangebyscore(f"{rt.settings.REDIS_PREFIX}:lane:{lane}:delayed",
                                                 "-inf", time.time())
                          for lane in ("inbound", "outbound", "events"))
        if not busy and not delayed_due:
            return
    raise AssertionError("jobs did not settle")


def settle(app) -> None:
    """Run the app's queued jobs in this process until its lanes are quiet."""
    run_jobs(app.extensions["baton"])


def settle_until(app, done: Callable[[], T], timeout: float = 10.0, what: str = "the work to finish") -> T:
    """Run the app's jobs until `done()` holds: for work that waits out a short
    retry backoff (a job scheduled a moment ahead is not run before it is due)."""
    def settled():
        settle(app)
        return done()
    return wait_until(settled, timeout, what, interval=0.02)


# == the people in a story ========================================================================

ASK_FOR_A_HUMAN = "I want to talk to a human"
CUSTOMER = "15550001111"


# -- customers and the bot ------------------------------------------------------------------------

def customer_says(app, text: str, wa_id: str = CUSTOMER, **webhook) -> dict:
    """The customer `wa_id` writes `text` (a Cloud API webhook signed like Meta's;
    `webhook` takes text_webhook's options); returns Baton's 200 answer."""
    raw, headers = text_webhook(wa_id, text, **webhook)
    response = app.test_client().post("/webhooks/whatsapp", data=raw, headers=headers)
    assert response.status_code == 200, response.json
    return response.json


def waiting_customer(app, text: str = ASK_FOR_A_HUMAN, wa_id: str = CUSTOMER, **webhook) -> Conversation:
    """A customer asks for a human and routing runs: their conversation."""
    customer_says(app, text, wa_id, **webhook)
    settle(app)
    return conversation_of(wa_id)


def bot_replies(app, token: str, turn: dict, **body):
    """The bot (n8n's AI branch) answers `turn`, a bot.turn event body, through
    POST /api/v1/bot/replies."""
    return app.test_client().post("/api/v1/bot/replies", headers=bearer(token), json={
        "conversation_id": turn["conversation"]["id"], "turn_id": turn["turn_id"], **body})


# -- agents ------------------------------------------------------------------------------------

class Team:
    """Agents of one test app, by name: `team.add("ana")`, `team.token["ana"]`."""

    def __init__(self, app):
        self.app = app
        self.rt = app.extensions["baton"]
        self.client = app.test_client()
        self.agents: dict = {}
        self.token: dict = {}

    def add(self, name: str, *, groups=("support",), max_concurrent: int = 5, role: str = "agent",
            online: bool = True):
        agent, token = create_agent(name, role, list(groups), max_concurrent)
        self.agents[name], self.token[name] = agent, token
        if online:
            self.online(name)
        return agent

    def online(self, name: str) -> None:
        set_status(self.rt.presence, self.agents[name], "online")

    def offline(self, name: str) -> None:
        set_status(self.rt.presence, self.agents[name], "offline")

    def heartbeat_lapses(self, name: str) -> None:
        """The laptop closed AGENT_HEARTBEAT_TTL ago: the heartbeat key has expired
        (Redis drops it; nobody edits a row)."""
        self.rt.redis.delete(self.rt.presence.heartbeat_key(self.id(name)))

    def id(self, name: str) -> str:
        return self.agents[name].id

    def call(self, name: str, method: str, path: str, json=None):
        return self.client.open(path, method=method, json=json, headers=bearer(self.token[name]))

    def act(self, name: str, action: str, conversation_id: str, json=None):
        return self.call(name, "POST", f"/api/v1/conversations/{conversation_id}/{action}", json)


# -- the clock ------------------------------------------------------------------------------------

def backdate(conversation_id: str, **seconds_ago) -> None:
    """Move the clock for one conversation's timers: set each named time column
    (a deadline or a 'since') to that many seconds before now."""
    now = utcnow()
    Conversation.update(**{field: now - timedelta(seconds=s) for field, s in seconds_ago.items()}) \
        .where(Conversation.id == conversation_id).execute()


def outbound_time_passes(app, seconds: float) -> None:
    """Move the clock of the outbound lane on by `seconds` without sleeping: every
    message's times (received, next attempt) and every delayed lane key fall due
    that much earlier, as if the time had passed."""
    from models import Message

    rt = app.extensions["baton"]
    step = timedelta(seconds=seconds)
    for message in Message.select(Message.id, Message.received_at, Message.next_attempt_at):
        Message.update(received_at=message.received_at - step,
                       next_attempt_at=message.next_attempt_at and message.next_attempt_at - step) \
            .where(Message.id == message.id).execute()
    for lane in ("inbound", "outbound", "events"):
        delayed = f"{rt.settings.REDIS_PREFIX}:lane:{lane}:delayed"
        for key, due in rt.redis.zrange(delayed, 0, -1, withscores=True):
            rt.redis.zadd(delayed, {key: due - seconds})


# -- the outcome ------------------------------------------------------------------------------------

def conversation_of(wa_id: str = CUSTOMER) -> Conversation:
    return Conversation.select().join(Contact).where(Contact.wa_id == wa_id).get()


def outbox_texts(wa_id: str | None = None) -> list[str | None]:
    """The text of every message the sandbox provider sent (to `wa_id`), oldest first."""
    rows = OutboxEntry.select().order_by(OutboxEntry.created_at, OutboxEntry.id)
    if wa_id is not None:
        rows = rows.where(OutboxEntry.to == wa_id)
    return [((row.payload or {}).get("text") or {}).get("body") for row in rows]


def audit_events(conversation_id: str) -> list[Event]:
    """The conversation's audit trail, oldest first."""
    return list(Event.select().where(Event.conversation == conversation_id).order_by(Event.created_at, Event.id))


def trail(conversation_id: str) -> list[tuple]:
    """The audit trail as (from, to, reason) tuples, oldest first."""
    return [(e.from_state, e.to_state, e.reason) for e in audit_events(conversation_id)]


def state_and_trail(conversation_id: str) -> tuple:
    conv = Conversation.get_by_id(conversation_id)
    return (conv.state, conv.version, conv.assigned_agent_id, conv.offered_agent_id, conv.control_epoch,
            tuple(trail(conversation_id)))
