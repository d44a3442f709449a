"""The connections and collaborators every Baton process needs.

`Runtime.build(settings)` binds the database and creates the Redis client,
queues, lanes and provider adapter once per process: the Flask app hangs it on
`app.extensions["baton"]`; workers get it from `jobs.context`.
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from redis import Redis
from rq import Queue

import models
from config import Settings
from bot.rules import reply as builtin_bot
from routing.bot_breaker import BotBreaker
from routing.change import Changes
from routing.decide import Policy
from routing.dispatch import dispatch
from routing.escalation import load_phrases
from routing.assignment import Reservations
from routing.lanes import LANES, Lanes, PumpClaim
from routing.send_rate import SendRate
from routing.breaker import CircuitBreaker
from routing.maintenance import MaintenanceNotices
from routing.spool import Spool
from routing.presence import Presence
from models.media import set_public_base

PUMP_JOB_TIMEOUT = 600
# Media fetches run one RQ job per file on their own queue (`media`): they are
# rare, and a 100 MB document must not hold up a lane's pump. The worker of
# `flask baton worker` listens on it.
MEDIA_QUEUE = "media"
MEDIA_JOB_TIMEOUT = 900
log = logging.getLogger(__name__)


class InboxFeeder:
    """Hands recorded messages to the inbound lane from a background thread.

    The webhook answers once the database holds the message; putting it in
    its conversation's inbox (a Redis round trip, plus an RQ enqueue when no
    pump runs) happens here, batched under load. If this process dies before
    the hand-off, the cron sweep routes the message (it is durable already)."""

    def __init__(self, runtime: "Runtime"):
        self.runtime = runtime
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._cond = threading.Condition()
        self._pid = None

    def submit(self, items: list[tuple[str, str, float]]) -> None:
        if not items:
            return
        with self._cond:
            if self._pid != os.getpid():     # first use in this (possibly forked) process
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="inbox-feeder", daemon=True).start()
                # A worker stopping gracefully hands over what it holds first.
                atexit.register(self.flush, 2.0)
            self._pending += len(items)
        for item in items:
            self._queue.put(item)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted has been handed to Redis (tests, shutdown)."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending == 0, timeout=timeout)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < 200:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.runtime.start_pump(self.runtime.lanes.schedule_inbound_many(batch))
            except Exception:                # Redis down: the sweep routes these later
                log.warning("could not queue %d recorded message(s); the sweep will route them",
                            len(batch), exc_info=True)
            finally:
                with self._cond:
                    self._pending -= len(batch)
                    self._cond.notify_all()


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    lanes: Lanes
    queues: dict[str, Queue]
    adapter: object
    policy: Policy
    caches: dict = field(default_factory=dict)
    feeder: InboxFeeder | None = None
    presence: Presence | None = None
    reservations: Reservations | None = None
    changes: Changes | None = None
    send_rate: SendRate | None = None
    breaker: CircuitBreaker | None = None
    spool: Spool | None = None
    notices: MaintenanceNotices | None = None
    _storage: object = None
    _storage_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.feeder = InboxFeeder(self)
        self.presence = Presence(self.redis, self.settings.REDIS_PREFIX, self.settings.AGENT_HEARTBEAT_TTL)
        self.reservations = Reservations(self.presence)
        self.changes = Changes(self.settings, dispatch=self.dispatch)
        self.send_rate = SendRate(self.redis, self.settings.REDIS_PREFIX, self.settings.WHATSAPP_MPS)
        self.breaker = CircuitBreaker(self.settings.DATABASE_BREAKER_FAILURES,
                                      self.settings.DATABASE_BREAKER_OPEN_SECONDS)
        self.spool = Spool(self.redis, self.settings.REDIS_PREFIX, self.settings.SPOOL_MAX_ENTRIES)
        self.notices = MaintenanceNotices(self.redis, self.settings.REDIS_PREFIX,
                                          self.settings.MAINTENANCE_NOTICE_WINDOW)
        set_public_base(self.settings.PUBLIC_BASE_URL)
        if hasattr(self.adapter, "media_files"):      # agents' uploads, sent by the adapter
            from integrations.storage.outbound import ProviderFiles

            self.adapter.media_files = ProviderFiles(lambda: self.storage, self.settings.PUBLIC_BASE_URL)

    @classmethod
    def build(cls, settings: Settings) -> "Runtime":
        from integrations.whatsapp import make_adapter

        models.bind(settings.DATABASE_URL, settings.DATABASE_POOL_SIZE)
        redis = Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2,
                               health_check_interval=30)
        queues = {name: Queue(queue_name(settings, name), connection=redis)
                  for name in (*LANES, MEDIA_QUEUE, "default")}
        languages = tuple(x.strip() for x in settings.SENTIMENT_LANGUAGES.split(",") if x.strip())
        sentiment = None
        if languages:
            from routing.sentiment import SentimentAnalyser

            sentiment = SentimentAnalyser(settings.SENTIMENT_THRESHOLD, languages)
        breaker = BotBreaker(redis, settings.REDIS_PREFIX, settings.BOT_BREAKER_FAILURES,
                             settings.BOT_BREAKER_COOLDOWN)
        policy = Policy(phrases=load_phrases(settings.ESCALATION_PHRASES_FILE or None), sentiment=sentiment,
                        pending_notice_interval=timedelta(seconds=settings.PENDING_NOTICE_INTERVAL),
                        default_group=settings.DEFAULT_GROUP, bot=builtin_bot, breaker=breaker)
        return cls(settings=settings, redis=redis,
                   lanes=Lanes(redis, settings.REDIS_PREFIX, settings.PUMP_CONCURRENCY, settings.PUMP_LEASE),
                   queues=queues, adapter=make_adapter(settings), policy=policy)

    @property
    def storage(self):
        """The media store MEDIA_STORAGE_URL names (integrations.storage), built on first use."""
        if self._storage is None:
            with self._storage_lock:
                if self._storage is None:
                    from integrations.storage import storage_for

                    self._storage = storage_for(self.settings)
        return self._storage

    @storage.setter
    def storage(self, store) -> None:
        self._storage = store

    def start_pump(self, claim: PumpClaim | None, moves: int = 0) -> None:
        """Enqueue the pump job a `Lanes.schedule*` call asked for (None: a pump already runs);
        `moves`: how often the job has already moved on to find a less busy process."""
        if claim is None:
            return
        self.queues[claim.lane].enqueue("jobs.pump.pump", claim.lane, claim.token, moves,
                                        job_timeout=PUMP_JOB_TIMEOUT, result_ttl=0, failure_ttl=7 * 86400)

    def fetch_media(self, media_ids: list[str]) -> None:
        """Start fetching these media records (after the commit that wrote them).
        Best effort: a hand-off lost here is taken over by the cron tick once
        the record's `next_attempt_at` has passed."""
        for media_id in media_ids:
            try:
                self.queues[MEDIA_QUEUE].enqueue("jobs.media.fetch_media", media_id, job_timeout=MEDIA_JOB_TIMEOUT,
                                                 result_ttl=0, failure_ttl=7 * 86400)
            except Exception:
                log.warning("could not queue the fetch of media %s; the cron tick will", media_id, exc_info=True)

    def after_ingest(self, result) -> None:
        """What follows a committed `routing.ingest.record_webhook` (a webhook's, or the
        spool's replay): announce changed statuses, let reconciled sends go on, hand the new
        messages to the inbound lane (in the background; the cron sweep covers a lost
        hand-off) and start media fetches."""
        from routing.ingest import announce_updates

        # Recorded already: a Redis failure here must not turn the 200 into an error (the
        # sweep schedules the lanes; a status update is shown on the next read).
        try:
            announce_updates(self.redis, self.settings.REDIS_PREFIX, result.updated)
        except Exception:
            log.warning("could not announce %d status update(s)", len(result.updated), exc_info=True)
        for conversation_id in result.reconciled:
            try:
                self.schedule("outbound", conversation_id)      # its next message no longer waits
            except Exception:
                log.warning("could not schedule the outbound lane of %s; the sweep will", conversation_id,
                            exc_info=True)
        self.feeder.submit(result.to_route)
        self.fetch_media(result.media)           # routing never waits for media

    def enqueue_notice(self, phone_number_id: str, address: str) -> None:
        """Send MAINTENANCE_NOTICE to one customer (jobs.fail_open.send_notice)."""
        self.queues["default"].enqueue("jobs.fail_open.send_notice", phone_number_id, address,
                                       job_timeout=60, result_ttl=0, failure_ttl=86400)

    def replay_spool_soon(self) -> None:
        """Replay the spool now, on a worker (jobs.fail_open.replay_spool)."""
        self.queues["default"].enqueue("jobs.fail_open.replay_spool", job_timeout=120, result_ttl=0)

    def schedule(self, lane: str, key: str) -> None:
        self.start_pump(self.lanes.schedule(lane, key))

    def dispatch(self, effects) -> None:
        """What a committed change sets in motion (see routing.dispatch)."""
        dispatch(self, effects)


def queue_name(settings: Settings, lane: str) -> str:
    return f"{settings.REDIS_PREFIX}-{lane}"
