"""One Redis pub/sub subscription per process, shared by every live stream.

`GET /api/v1/events` registers a `Subscription` with the process's `LiveHub`
(`hub_for(runtime)`); one background thread reads the live channel and copies
each event into every subscriber's queue. Filtering by audience is the
stream's job, so the hub holds no notion of who may hear what.

The reader starts with the first subscriber and ends soon after the last one
leaves. When its connection drops, the streams it fed are ended rather than
left silently missing events: their clients reconnect (SSE `retry`) and
re-read state over REST, as routing.live promises.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Callable

import orjson
from redis import Redis
from redis.exceptions import RedisError

from models.base import new_id

from .live import channel

log = logging.getLogger(__name__)

# Events a subscriber may have waiting; a client that falls this far behind
# loses its stream (and reconnects) instead of growing the process's memory.
SUBSCRIBER_BACKLOG = 1000
# How often the reader wakes without traffic to notice it has no subscribers
# left or that the process is shutting down.
POLL_SECONDS = 0.5
# At most 2 s between attempts: streams ended by a Redis restart come back soon after it.
RECONNECT_DELAYS = (0.5, 1.0, 2.0)

_fork_lock = threading.Lock()
_shutting_down: Callable[[], bool] = lambda: False


def end_streams_when(probe: Callable[[], bool]) -> None:
    """Register `probe` (e.g. "gunicorn asked this worker to stop"): once it
    answers True, every hub ends its streams and accepts no new ones, so a
    graceful shutdown is not held open by clients that never hang up."""
    global _shutting_down
    _shutting_down = probe


def shutting_down() -> bool:
    """Has this process been asked to stop (see `end_streams_when`)?"""
    return _shutting_down()


class Subscription:
    """One stream's view of the live channel: `(event_id, event)` pairs in publish order."""

    def __init__(self, hub: "LiveHub"):
        self.hub = hub
        self._queue: queue.Queue = queue.Queue(SUBSCRIBER_BACKLOG)
        self.ended = False

    def get(self, timeout: float) -> tuple[str, dict] | None:
        """The next event, or None when the stream must end (lost events or shutdown);
        raises queue.Empty after `timeout` seconds without one."""
        if self.ended and self._queue.empty():
            return None
        return self._queue.get(timeout=timeout)

    def wait_connected(self, timeout: float) -> bool:
        """True once the hub is subscribed, so everything published from now on arrives."""
        return self.hub.wait_subscribed(timeout) and not self.ended

    def _deliver(self, item: tuple[str, dict]) -> None:
        if self.ended:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            log.warning("a live stream fell %d events behind; ending it", SUBSCRIBER_BACKLOG)
            self._end()

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            self._queue.put_nowait(None)
        except queue.Full:            # its consumer sees `ended` once it drains
            pass

    def close(self) -> None:
        self.hub.unsubscribe(self)


class LiveHub:
    """Fans the live channel out to this process's streams."""

    def __init__(self, redis: Redis, channel_name: str):
        self.redis = redis
        self.channel = channel_name
        self._pid = None

    def _check_process(self) -> None:
        # A forked child shares none of its parent's streams or reader thread.
        pid = os.getpid()
        if self._pid == pid:
            return
        with _fork_lock:
            if self._pid != pid:
                self._lock = threading.Lock()
                self._subscribers: set[Subscription] = set()
                self._subscribed = threading.Event()
                self._reader: threading.Thread | None = None
                self._pid = pid

    @property
    def subscriber_count(self) -> int:
        self._check_process()
        with self._lock:
            return len(self._subscribers)

    def subscribe(self) -> Subscription:
        """Register a stream (start the reader if none runs). Close it with `unsubscribe`."""
        self._check_process()
        subscription = Subscription(self)
        with self._lock:
            if _shutting_down():
                subscription._end()
                return subscription
            self._subscribers.add(subscription)
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="live-hub", daemon=True)
                self._reader.start()
        return subscription

    def wait_subscribed(self, timeout: float) -> bool:
        self._check_process()
        return self._subscribed.wait(timeout)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a stream (idempotent); the reader stops when none is left."""
        self._check_process()
        with self._lock:
            self._subscribers.discard(subscription)
        subscription.ended = True

    def _end_all(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription._end()

    def _keep_reading(self) -> bool:
        """False when the reader should stop (and then it is marked stopped, under the lock)."""
        with self._lock:
            if self._subscribers:
                return True
            self._reader = None
            self._subscribed.clear()
            return False

    def _read(self) -> None:
        attempt = 0
        while self._keep_reading():
            pubsub = self.redis.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while True:
                    message = pubsub.get_message(timeout=POLL_SECONDS)
                    kind = message["type"] if message else None
                    if kind == "subscribe":
                        self._subscribed.set()
                        attempt = 0
                    elif kind == "message":
                        self._fan_out(message["data"])
                    if _shutting_down():
                        self._end_all()
                    if not self._keep_reading():
                        return
            except Exception as exc:      # a RedisError, mostly; nothing may end the reader silently
                was_subscribed = self._subscribed.is_set()
                self._subscribed.clear()
                if was_subscribed:
                    # Whatever is published until we are back would be lost to these streams.
                    log.warning("live channel lost (%s); ending %d stream(s)", exc, self.subscriber_count,
                                exc_info=not isinstance(exc, RedisError))
                    self._end_all()
                else:
                    log.warning("cannot subscribe to the live channel: %s", exc,
                                exc_info=not isinstance(exc, RedisError))
            finally:
                pubsub.close()
            time.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1

    def _fan_out(self, raw: bytes) -> None:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("ignoring a live event that is not JSON: %r", raw[:200])
            return
        if not isinstance(event, dict):
            return
        item = (new_id("ev"), event)
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription._deliver(item)


def hub_for(runtime) -> LiveHub:
    """The process's hub for this runtime's Redis and prefix (created on first use)."""
    hub = runtime.caches.get("live_hub")
    if hub is None:
        hub = runtime.caches.setdefault(
            "live_hub", LiveHub(runtime.redis, channel(runtime.settings.REDIS_PREFIX)))
    return hub
