"""The outbound lane: every message Baton sends goes out here, under one discipline.

- **In order per conversation.** A conversation has at most one provider call
  in flight, under its outbound lock; the next message goes only once the
  provider has answered for the one before.
- **Concurrent across conversations.** One pump keeps up to
  `send_concurrency(settings)` calls in flight on a thread pool, so the rate is
  reached even when each call takes hundreds of milliseconds. The threads only
  make the HTTP call: every database read and write stays on the pump's thread.
- **At the number's rate.** Each call first takes a place in the number's
  moving one-second window in Redis (routing.send_rate), shared by every
  process; a conversation that finds none waits in line for the next place.
- **What a failure means** is decided by routing.send_policy: retry (only that
  conversation waits), reconcile (outcome unknown: wait for a status webhook
  naming the message before sending again), or fail with the provider's reason.

A message's status here: `queued` until the provider accepts it (`sent`, then
the status webhooks move it on), `unknown` while an ambiguous outcome waits to
be reconciled, `failed` for good.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Callable
from datetime import timedelta

from config import send_concurrency
from integrations.whatsapp.base import OutboundMessage, SendError, SendResult
from models import Message, db, utcnow, write_transaction
from models.base import is_pooled
from models.message import is_unsent
from models.prepared import PreparedSelect
from routing.bot_turns import outbound_allowed
from routing.change import load_conversation
from routing.dispatch import typing_key
from routing.ingest import announce_message_ids
from routing.lanes import PumpClaim
from routing.locks import ConversationLock, LockLost
from routing.redis_wait import unreachable, wait_for_redis
from routing.notices import window_open
from routing.uploads import outbound_media, remember_provider_upload
from routing.send_policy import WINDOW_CLOSED, WINDOW_CLOSED_TITLE, Fail, Reconcile, after_send_error

from .context import job_logger, runtime, stopping

log = job_logger(__name__)
LANE = "outbound"
CANCELLED = (None, "cancelled: control of the conversation changed before the bot reply was sent")
EXPIRED_TITLE = "not sent: older than SEND_MAX_AGE"
UPKEEP_SECONDS = 0.25
LOCK_CHECK_SECONDS = 1.0    # a conversation lock lost (Redis restarted) is noticed within this long
IDLE_WAIT = 0.02            # how long a busy pump waits for an answer before looking for new work
TAKE_BATCH = 32             # conversations taken from the lane between two steps (their places and
                            # write-aheads then go in one round trip each)
KEEP_GOING_SECONDS = 60.0   # a pump nobody waits for hands over after this long all the same (job timeout: 600 s)

_pool_lock = threading.Lock()
_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(size: int) -> ThreadPoolExecutor:
    """One pool of sending threads per worker thread (pump jobs come and go; two
    outbound pumps in one process, PUMP_CONCURRENCY > 1, each get `size` calls)."""
    key = (threading.get_ident(), size)
    with _pool_lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(size, thread_name_prefix="baton-send")
        return _pools[key]


_HEAD = PreparedSelect(lambda conversation_id: (
    Message.select()
    .where((Message.conversation == conversation_id) & (Message.direction == "out")
           & is_unsent())
    .order_by(Message.id)
    .limit(1)))


def next_to_send(conversation_id: str) -> Message | None:
    """The conversation's oldest outbound message not yet accepted by the provider."""
    return _HEAD.first(conversation_id)


@dataclass
class Slot:
    """A conversation this pump is sending for: its lock and the message in hand."""
    conversation_id: str
    lock: ConversationLock
    renewed: float
    message: Message | None = None     # None while the call in hand is a typing indicator
    call: Callable[[], object] | None = None
    number: str = ""
    future: Future | None = None
    lost: bool = False          # its lock lapsed (Redis lost it): another pump may send for it now


@dataclass
class Sender:
    rt: object
    capacity: int
    slots: dict[str, Slot] = field(default_factory=dict)
    # per business number: conversations whose message waits for a place in the
    # rate window, in arrival order, and when the next place frees
    waiting_for_rate: dict[str, deque] = field(default_factory=dict)
    rate_free_at: dict[str, float] = field(default_factory=dict)
    pending_calls: list[Slot] = field(default_factory=list)     # to be written ahead, then called
    # slots whose call has answered, in the order they answered: the pump waits on this
    # one queue, not on every future in flight (at 1,000 msg/s, hundreds of them)
    answers: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    sent: int = 0
    # past its budget the pump only finishes its calls in flight: a conversation
    # with more to send goes back to the lane, for the pump already started
    # after this one (going on with it here would hold it for seconds)
    draining: bool = False

    @property
    def busy(self) -> bool:
        return bool(self.slots)

    def has_room(self) -> bool:
        return len(self.slots) < self.capacity

    # -- taking a conversation ----------------------------------------------------------------
    def take(self, conversation_id: str) -> None:
        if conversation_id in self.slots:
            return
        settings = self.rt.settings
        lock = ConversationLock(self.rt.redis, f"{settings.REDIS_PREFIX}:outlock:{conversation_id}",
                                settings.LOCK_TTL)
        if not lock.acquire():
            return      # another pump sends for it, and looks for more before it lets go
        slot = Slot(conversation_id, lock, time.monotonic())
        self.slots[conversation_id] = slot
        if not self._show_typing(slot):
            self._advance(slot)

    def _show_typing(self, slot: Slot) -> bool:
        """A bot turn asked to show the customer that an answer is coming: do it
        first, unless the answer is already here. True when the call is made."""
        shown_for = self.rt.redis.getdel(typing_key(self.rt.settings.REDIS_PREFIX, slot.conversation_id))
        if not shown_for or next_to_send(slot.conversation_id) is not None:
            return False
        conv = load_conversation(slot.conversation_id)
        if conv is None:            # merged into another customer's conversation meanwhile
            return False
        slot.number = conv.channel.phone_number_id
        slot.call = partial(self.rt.adapter.show_typing, slot.number, conv.contact.address,
                            shown_for.decode() if isinstance(shown_for, bytes) else shown_for)
        self._call_when_rate_allows(slot)
        return True

    def _drop(self, slot: Slot) -> None:
        """Let go of a conversation whose lock lapsed before its message was called."""
        for line in self.waiting_for_rate.values():
            if slot in line:
                line.remove(slot)
        if slot in self.pending_calls:
            self.pending_calls.remove(slot)
        slot.message = slot.call = None
        self._let_go(slot)

    def _let_go(self, slot: Slot) -> None:
        del self.slots[slot.conversation_id]
        slot.lock.release()
        head = next_to_send(slot.conversation_id)
        if head is not None and not _waits(head):
            self.rt.schedule(LANE, slot.conversation_id)   # queued while we were letting go

    # -- the next message of a conversation ------------------------------------------------------
    def _advance(self, slot: Slot) -> None:
        """Send the conversation's next message, or let the conversation go."""
        settings = self.rt.settings
        while True:
            message = next_to_send(slot.conversation_id)
            if message is None:
                return self._let_go(slot)
            now = utcnow()
            if _waits(message, now):
                delay = (message.next_attempt_at - now).total_seconds()
                self.rt.lanes.schedule_at(LANE, slot.conversation_id, time.time() + max(delay, 0.05))
                return self._let_go(slot)
            conv = load_conversation(slot.conversation_id)
            if not outbound_allowed(message, conv):
                self._finish(message, {"status": "failed", "error_code": CANCELLED[0], "error_title": CANCELLED[1]})
                continue
            if not message.template and not window_open(conv, now):
                self._finish(message, {"status": "failed", "error_code": WINDOW_CLOSED,
                                       "error_title": WINDOW_CLOSED_TITLE})
                continue
            if message.status == "unknown":
                # No status webhook named it in SEND_RECONCILE_SECONDS: the provider never took it.
                if not self._write(message, {"status": "queued"}, expect="unknown"):
                    continue
                message.status = "queued"
            if message.attempts and (now - message.sent_at).total_seconds() > settings.SEND_MAX_AGE:
                self._finish(message, {"status": "failed", "error_title": message.error_title or EXPIRED_TITLE})
                continue
            slot.message = message
            slot.number = conv.channel.phone_number_id
            slot.call = partial(self.rt.adapter.send, OutboundMessage(
                to=conv.contact.address, phone_number_id=slot.number, text=message.text,
                template=message.template, media=outbound_media(message, slot.number), reference=message.id))
            return self._call_when_rate_allows(slot)

    def _call_when_rate_allows(self, slot: Slot) -> None:
        """In line for a place in the number's rate window: the places for everyone
        in line are asked for in one round trip (`_release_rate_waiters`)."""
        self.waiting_for_rate.setdefault(slot.number, deque()).append(slot)

    def _call(self, slot: Slot) -> None:
        if slot.message is not None:        # written ahead first (see _flush_calls)
            self.pending_calls.append(slot)
            return
        self._submit(slot)

    def _flush_calls(self) -> None:
        """Write every message about to be called ahead, in one transaction, then call.

        Should a call's outcome never be written (the database gone, the worker killed,
        after the provider took it), its message stays `queued` but due only after
        SEND_RECONCILE_SECONDS: it waits, as an unknown outcome does, for a status naming
        it before it is ever sent again. Every recorded outcome sets next_attempt_at anew."""
        while self.pending_calls:
            slots, self.pending_calls = [s for s in self.pending_calls if not s.lost], []
            reconcile_at = utcnow() + timedelta(seconds=self.rt.settings.SEND_RECONCILE_SECONDS)
            with write_transaction():
                if is_pooled():
                    # No wait for the WAL flush: the write-ahead guards against a worker's
                    # death and a cut connection, which keep it; only a PostgreSQL crash in
                    # the next few hundred ms could lose it (and the send then goes again
                    # at once, as it did before). Waiting for the flush cost 5 % of the rate.
                    db.execute_sql("SET LOCAL synchronous_commit TO OFF")
                # A claim, not only a mark: the message must still be due. Another pump that
                # holds the conversation too (this one stalled past LOCK_TTL before it noticed
                # its lock had lapsed) has written it ahead to reconcile_at, and sends it.
                now = utcnow()
                written = [self._write(slot.message, {"next_attempt_at": reconcile_at}, due_by=now)
                           for slot in slots]
            for slot, ok in zip(slots, written):
                if ok:
                    self._submit(slot)
                else:                       # no longer queued: a status webhook named it meanwhile
                    slot.message = slot.call = None
                    self._advance(slot)

    def _submit(self, slot: Slot) -> None:
        if getattr(self.rt.adapter, "inline", False):
            slot.future = Future()
            try:
                slot.future.set_result(slot.call())
            except Exception as exc:
                slot.future.set_exception(exc)
        else:
            slot.future = _pool(self.capacity).submit(slot.call)
        slot.future.add_done_callback(lambda _future, slot=slot: self.answers.put(slot))

    def _release_rate_waiters(self) -> None:
        """Give free places in each number's window to the conversations waiting longest.

        Each place is taken just before its own call, one round trip each. Places
        taken for the whole line at one instant (`acquire_many`) sent a slice's
        calls as one burst of simultaneous requests, whose arrival times spread
        the most: CI's fake Graph API, which counts arrivals in a strict sliding
        second, then saw sends over the rate (tests/test_send_discipline.py)."""
        now = time.monotonic()
        for number, line in self.waiting_for_rate.items():
            while line and now >= self.rate_free_at.get(number, 0.0):
                taken, wait_for = self.rt.send_rate.acquire_many(number, 1)
                if not taken:
                    self.rate_free_at[number] = now + wait_for
                    break
                self._call(line.popleft())

    def rate_limited(self) -> bool:
        """Someone waits for a place in a number's window that is not free yet."""
        now = time.monotonic()
        return any(line and self.rate_free_at.get(number, 0.0) > now
                   for number, line in self.waiting_for_rate.items())

    def _next_rate_place(self) -> float | None:
        """Seconds until a waiting conversation may ask for a place again (None: nobody waits)."""
        due = [self.rate_free_at.get(n, 0.0) for n, line in self.waiting_for_rate.items() if line]
        return max(min(due) - time.monotonic(), 0.0) if due else None

    # -- answers ---------------------------------------------------------------------------------
    def step(self, timeout: float) -> None:
        """Wait up to `timeout` for answers (or a place in the rate window), record them."""
        self._release_rate_waiters()
        self._flush_calls()
        place = self._next_rate_place()
        if place is not None:
            timeout = min(timeout, place)
        answered = []
        try:
            answered.append(self.answers.get(timeout=timeout) if timeout else self.answers.get_nowait())
            while True:
                answered.append(self.answers.get_nowait())
        except queue.Empty:
            pass
        if answered:
            self._record(answered)
            for slot in answered:
                slot.future = slot.message = slot.call = None
                if self.draining or slot.lost:
                    self._let_go(slot)
                else:
                    self._advance(slot)
        self._release_rate_waiters()
        self._flush_calls()

    def _record(self, answered: list[Slot]) -> None:
        """Write every answer in one transaction; then reschedule and announce."""
        settings, now = self.rt.settings, utcnow()
        announce: list[str] = []        # failed, or unknown: the console shows it at once
        if all(slot.message is None for slot in answered):      # typing indicators: nothing to write
            for slot in answered:
                _typing_shown(slot)
            return
        with write_transaction():
            for slot in answered:
                if slot.message is None:
                    _typing_shown(slot)
                    continue
                message, attempt = slot.message, slot.message.attempts + 1
                try:
                    result: SendResult = slot.future.result()
                except SendError as exc:
                    outcome = after_send_error(
                        exc, attempt, (now - message.sent_at).total_seconds(),
                        max_attempts=settings.SEND_MAX_ATTEMPTS, max_age=settings.SEND_MAX_AGE,
                        reconcile_seconds=settings.SEND_RECONCILE_SECONDS)
                    self._record_failure(slot, exc, attempt, outcome, now, announce)
                    continue
                except Exception as exc:       # a bug in an adapter: keep the message, look again later
                    log.exception("send %s: the adapter raised", message.id)
                    self._write(message, {"attempts": attempt, "error_title": f"{type(exc).__name__}"[:400],
                                          "next_attempt_at": now + timedelta(seconds=5)})
                    continue
                if result.uploaded_media_id and message.media:
                    remember_provider_upload(message.media.get("id"), slot.number, result.uploaded_media_id)
                self._write(message, {"status": "sent", "provider_message_id": result.provider_message_id,
                                      "attempts": attempt, "next_attempt_at": None, "error_code": None,
                                      "error_title": None, "error_details": None})
                self.sent += 1
        if announce:
            announce_message_ids(self.rt.redis, settings.REDIS_PREFIX, announce)

    def _record_failure(self, slot: Slot, exc: SendError, attempt: int, outcome, now, announce: list) -> None:
        """Retries and reconciliations leave the message due later (`_advance`
        then schedules the conversation for that moment)."""
        message = slot.message
        error = {"error_code": _int_or_none(exc.code), "error_title": exc.title[:400]}
        if isinstance(outcome, Fail):
            log.warning("send %s failed for good: %s", message.id, exc)
            self._write(message, {"status": "failed", "attempts": attempt, "next_attempt_at": None,
                                  "error_code": _int_or_none(outcome.code), "error_title": outcome.title[:400]})
            announce.append(message.id)
            return
        if isinstance(outcome, Reconcile):
            log.info("send %s: outcome unknown (%s); waiting %.0f s for a status naming it",
                     message.id, exc, outcome.delay)
            changes = {"status": "unknown", **error}
            announce.append(message.id)
        else:
            log.info("send %s attempt %d refused (%s); retry in %.1f s", message.id, attempt, exc, outcome.delay)
            changes = dict(error)
        self._write(message, {**changes, "attempts": attempt,
                              "next_attempt_at": now + timedelta(seconds=outcome.delay)})

    # -- writes ---------------------------------------------------------------------------------
    def _write(self, message: Message, changes: dict, expect: str = "queued", due_by=None) -> bool:
        """Change the message only while it is still `expect` (a status webhook
        may have reconciled it meanwhile) and, given `due_by`, due by then; True
        when it changed."""
        still = (Message.id == message.id) & (Message.status == expect)
        if due_by is not None:
            still &= Message.next_attempt_at.is_null() | (Message.next_attempt_at <= due_by)
        updated = Message.update({getattr(Message, k): v for k, v in changes.items()}).where(still).execute()
        if updated:
            for name, value in changes.items():
                setattr(message, name, value)
        return bool(updated)

    def _finish(self, message: Message, changes: dict) -> None:
        with write_transaction():
            changed = self._write(message, {"next_attempt_at": None, **changes}, expect=message.status)
        if changed:
            log.warning("send %s: %s", message.id, changes.get("error_title"))
            announce_message_ids(self.rt.redis, self.rt.settings.REDIS_PREFIX, [message.id])

    # -- upkeep ---------------------------------------------------------------------------------
    def renew_locks(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots.values()):
            if now - slot.renewed > min(self.rt.settings.LOCK_TTL / 3, LOCK_CHECK_SECONDS):
                try:
                    slot.lock.extend()
                except LockLost:
                    # Another pump may hold the conversation now: the call in flight is
                    # recorded, nothing more is sent for it here (two pumps reading the same
                    # head would both send it).
                    log.warning("outbound lock of %s lapsed while sending; letting it go", slot.conversation_id)
                    slot.lost = True
                    if slot.future is None:
                        self._drop(slot)
                slot.renewed = now

    def stop(self) -> None:
        """Wait for the calls in flight, record them, and let every conversation go,
        even when recording fails (the database is down): every message called is
        written ahead (see `_advance`), so holding its lock for LOCK_TTL protects nothing."""
        try:
            while any(slot.future is not None for slot in self.slots.values()):
                answered = [s for s in self.slots.values() if s.future is not None]
                wait([s.future for s in answered])
                self._record(answered)
                for slot in answered:
                    slot.future = slot.message = slot.call = None
            while not self.answers.empty():       # recorded above
                self.answers.get_nowait()
            # Messages still waiting for a place in the rate window (or to be written ahead)
            # were never called: due again at once (a write-ahead would hold them
            # SEND_RECONCILE_SECONDS).
            never_called = [s.message for s in self.slots.values() if s.message is not None and s.future is None]
            if never_called:
                with write_transaction():
                    for message in never_called:
                        self._write(message, {"next_attempt_at": None})
        finally:
            self.waiting_for_rate.clear()
            self.pending_calls.clear()
            for slot in list(self.slots.values()):
                try:
                    self._let_go(slot)
                except Exception:
                    self.slots.pop(slot.conversation_id, None)
                    try:
                        slot.lock.release()
                    except Exception:
                        log.warning("outbound lock of %s not released; it lapses in LOCK_TTL",
                                    slot.conversation_id)


def _typing_shown(slot: Slot) -> None:
    """A typing indicator is only a courtesy: a failure is logged, never retried."""
    try:
        slot.future.result()
    except Exception as exc:
        log.info("typing indicator for %s not shown: %s", slot.conversation_id, exc)


def _waits(message: Message, now=None) -> bool:
    """A retry (or a reconciliation) not yet due."""
    return message.next_attempt_at is not None and message.next_attempt_at > (now or utcnow())


def _int_or_none(code):
    try:
        return int(code)
    except (TypeError, ValueError):
        return None


def pump_outbound(claim: PumpClaim) -> int:
    """Send for as many conversations at once as the pool allows until the lane
    is empty, or the budget is spent while other jobs wait for a worker. Then
    the next pump job is queued at once and this one only finishes its calls
    in flight (the lane's slot is the new job's), so a free worker goes on
    sending without waiting for them."""
    rt = runtime()
    settings = rt.settings
    sender = Sender(rt, send_concurrency(settings) if not getattr(rt.adapter, "inline", False) else 1)
    started = time.monotonic()
    deadline = started + settings.PUMP_BUDGET_SECONDS
    upkeep_due = 0.0
    handed_over = False
    try:
        while True:
            now = time.monotonic()
            if now >= upkeep_due:
                rt.lanes.promote_due(LANE)
                if not handed_over:
                    rt.lanes.renew(claim)
                sender.renew_locks()
                upkeep_due = now + UPKEEP_SECONDS
            if (now >= deadline or stopping()) and not handed_over:
                if (now - started < KEEP_GOING_SECONDS and not stopping()
                        and not any(q.count for q in rt.queues.values())):
                    deadline = now + settings.PUMP_BUDGET_SECONDS    # no other job waits for a worker
                else:
                    handed_over = sender.draining = True
                    if rt.lanes.finish(claim):
                        rt.start_pump(claim)
            took = 0
            while not handed_over and took < TAKE_BATCH and sender.has_room() and not sender.rate_limited():
                key = rt.lanes.pop(LANE, wait=0 if sender.busy else settings.PUMP_LINGER, give_up=stopping)
                if key is None:
                    break
                sender.take(key)
                took += 1
            if sender.busy:
                sender.step(0 if took == TAKE_BATCH else IDLE_WAIT)    # more may be waiting in the lane
                continue
            if handed_over or not rt.lanes.finish(claim):
                return sender.sent
    except BaseException as exc:
        if unreachable(exc):
            # Redis went away mid-pump: wait for it, so the calls in flight are recorded
            # and the conversations' locks and the pump slot are given back, rather than
            # left to block the lane until their leases run out.
            wait_for_redis(rt.redis, max(settings.PUMP_LEASE, settings.LOCK_TTL))
        try:
            sender.stop()
        finally:
            if not handed_over and rt.lanes.finish(claim):
                rt.start_pump(claim)
        raise

