"""Media jobs: fetch a customer's file into storage; retention.

fetch_media(media_id) — one RQ job per media record, on the `media` queue,
    enqueued by the webhook after its commit. It downloads the file from the
    provider (adapter.open_media: the provider's own media endpoints only),
    streamed and capped at the type's limit, checks the declared sha256, and
    stores it under its content key (identical files are stored once). A
    retryable failure (the provider, the network, an expired URL, storage
    down) sets `next_attempt_at` with backoff; the cron tick (due_fetches)
    enqueues it again then, as it does a fetch whose hand-off was lost. A file
    too large or not matching its checksum fails the record with the reason;
    the message itself was routed long before, whatever happens here.
expire_media() — MEDIA_RETENTION_DAYS: deletes stored objects past it that
    no younger record holds, and marks their records `expired`.
"""
from __future__ import annotations

import hashlib
import hmac
import tempfile
from datetime import timedelta

import requests
from redis.exceptions import RedisError

from integrations.storage import StorageError, content_key
from integrations.whatsapp.base import SendError
from models import Conversation, Media, Message, utcnow, write_transaction
from models.media import EXPIRED, FAILED, PENDING, STORED, message_media
from routing.backoff import backoff_seconds
from routing.live import live_event, publish
from routing.media import limit_for, sha256_hex
from routing.visibility import snapshot

from .context import job_logger, runtime

log = job_logger(__name__)

# How long a fetch holds its record before the tick may hand it to another
# worker (a worker killed mid-download); longer than the job's timeout.
FETCH_LEASE = 960
DUE_LIMIT = 200
RETENTION_BATCH = 500
STORAGE_RETRY_CAP = 300.0
CHUNK = 64 * 1024
SPOOL_IN_MEMORY = 1024 * 1024


class Refused(Exception):
    """The provider's file is not one Baton keeps (too large, checksum mismatch)."""


def fetch_media(media_id: str) -> str:
    rt = runtime()
    try:
        return fetch(rt, media_id)
    except Exception:
        log.exception("fetching media %s failed", media_id)
        raise


def fetch(rt, media_id: str) -> str:
    """One attempt; returns the record's status afterwards (`pending`: a retry is due later)."""
    now = utcnow()
    claimed = (Media.update(attempts=Media.attempts + 1, next_attempt_at=now + timedelta(seconds=FETCH_LEASE))
               .where((Media.id == media_id) & (Media.status == PENDING)).execute())
    if not claimed:
        return "not_pending"
    record = Media.get_by_id(media_id)
    ask = {"provider_media_id": record.provider_media_id, "mime_type": record.mime_type, **(record.source or {})}
    try:
        download = rt.adapter.open_media(ask)
    except SendError as error:
        return _provider_failed(rt, record, error)
    if download.resolved_url and download.resolved_url != (record.source or {}).get("resolved_url"):
        Media.update(source={**(record.source or {}), "resolved_url": download.resolved_url}) \
            .where(Media.id == media_id).execute()
    limit = limit_for(record.kind, record.animated)
    try:
        with download_into_spool(download, limit) as (spool, digest, size):
            declared = [d for d in (record.declared_sha256, sha256_hex(download.declared_sha256)) if d]
            if any(not hmac.compare_digest(d, digest) for d in declared):
                raise Refused(f"sha256_mismatch: the file's sha256 {digest} is not the declared {declared[0]}")
            return _store(rt, record, spool, digest, size, download.mime_type)
    except Refused as refused:
        return _fail(rt, record, str(refused))
    except (requests.RequestException, OSError) as exc:
        return _provider_failed(rt, record, SendError("network", f"{type(exc).__name__}: {exc}", retryable=True))


class download_into_spool:
    """Read a MediaDownload into a temporary file, hashing as it goes, never
    past `limit` bytes: yields (file at offset 0, sha256 hex, size)."""

    def __init__(self, download, limit: int):
        self.download, self.limit = download, limit
        self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)

    def __enter__(self):
        try:
            if self.download.declared_size is not None and self.download.declared_size > self.limit:
                raise Refused(f"too_large: {self.download.declared_size} bytes, over the limit of {self.limit}")
            digest, size = hashlib.sha256(), 0
            for chunk in self.download.chunks(CHUNK):
                size += len(chunk)
                if size > self.limit:
                    raise Refused(f"too_large: over the limit of {self.limit} bytes")
                digest.update(chunk)
                self.spool.write(chunk)
        except BaseException:
            self.__exit__()
            raise
        finally:
            self.download.close()
        self.spool.seek(0)
        return self.spool, digest.hexdigest(), size

    def __exit__(self, *exc_info):
        self.spool.close()


def _store(rt, record: Media, spool, digest: str, size: int, mime_type: str) -> str:
    key = content_key(digest)
    # One lock per content key, shared with retention: an object is never
    # deleted between "it is there already" and "this record holds it".
    lock = rt.redis.lock(f"{rt.settings.REDIS_PREFIX}:media:key:{digest}", timeout=FETCH_LEASE,
                         blocking_timeout=30)
    try:
        if not lock.acquire():
            raise StorageError("the content key is busy")
        try:
            if not rt.storage.exists(key):
                rt.storage.put(key, spool, mime_type)
            return _finish(rt, record, {Media.status: STORED, Media.sha256: digest, Media.size: size,
                                        Media.storage_key: key, Media.mime_type: mime_type[:255],
                                        Media.stored_at: utcnow(), Media.error: None})
        finally:
            try:
                lock.release()
            except Exception:
                pass
    except (StorageError, OSError, RedisError) as exc:   # storage (or Redis) down: tried again until it works
        delay = backoff_seconds(record.attempts, cap=STORAGE_RETRY_CAP)
        log.warning("media %s: could not store it (%s); again in %.0f s", record.id, exc, delay)
        _retry_at(record, delay, f"storage: {exc}")
        return PENDING


def _provider_failed(rt, record: Media, error: SendError) -> str:
    reason = f"{error.code}: {error.title}"
    if error.retryable and record.attempts < rt.settings.MEDIA_FETCH_ATTEMPTS:
        delay = backoff_seconds(record.attempts, error.retry_after)
        log.info("media %s: %s; again in %.0f s", record.id, reason, delay)
        _retry_at(record, delay, reason)
        return PENDING
    return _fail(rt, record, reason)


def _retry_at(record: Media, delay: float, reason: str) -> None:
    (Media.update(next_attempt_at=utcnow() + timedelta(seconds=delay), error=reason[:2000])
     .where((Media.id == record.id) & (Media.status == PENDING)).execute())


def _fail(rt, record: Media, reason: str) -> str:
    log.warning("media %s failed: %s", record.id, reason)
    return _finish(rt, record, {Media.status: FAILED, Media.error: reason[:2000]})


def _finish(rt, record: Media, changes: dict) -> str:
    """Write the outcome on the record and on its message, then tell the consoles."""
    with write_transaction():
        done = (Media.update({**changes, Media.next_attempt_at: None})
                .where((Media.id == record.id) & (Media.status == PENDING)).execute())
        if done:
            _copy_to_messages([record.id])
    if done:
        announce(rt, [record.message_id])
    return changes[Media.status] if done else "not_pending"


def _copy_to_messages(media_ids: list[str]) -> list[str]:
    """Message.media follows its record (status, size, type); returns the messages changed."""
    changed = []
    for record in Media.select().where(Media.id.in_(media_ids) & Media.message.is_null(False)):
        message = Message.select(Message.id, Message.media).where(Message.id == record.message_id).first()
        if message is not None:
            Message.update(media={**(message.media or {}), **message_media(record)}) \
                .where(Message.id == message.id).execute()
            changed.append(message.id)
    return changed


def announce(rt, message_ids: list) -> None:
    """`message.updated` on the live stream for these messages; best effort."""
    message_ids = [m for m in message_ids if m]
    if not message_ids:
        return
    try:
        rows = (Message.select(Message, Conversation.id, Conversation.state, Conversation.group,
                               Conversation.assigned_agent_id, Conversation.offered_agent_id)
                .join(Conversation, on=(Message.conversation == Conversation.id), attr="conv")
                .where(Message.id.in_(message_ids)))
        publish(rt.redis, rt.settings.REDIS_PREFIX,
                [live_event("message.updated", m.conversation_id, m.to_dict(), snapshot(m.conv)) for m in rows])
    except Exception:
        log.warning("could not announce %d media change(s)", len(message_ids), exc_info=True)


# -- the cron side ---------------------------------------------------------------------------------

def due_fetches(rt) -> int:
    """Enqueue the fetches that are due: retries whose backoff has passed and
    hand-offs that were lost. Each is claimed (its `next_attempt_at` moved a
    lease ahead) before it is enqueued, so two ticks never enqueue it twice."""
    now = utcnow()
    due = [row.id for row in Media.select(Media.id)
           .where((Media.status == PENDING) & (Media.next_attempt_at <= now))
           .order_by(Media.next_attempt_at).limit(DUE_LIMIT)]
    started = []
    for media_id in due:
        claimed = (Media.update(next_attempt_at=now + timedelta(seconds=FETCH_LEASE))
                   .where((Media.id == media_id) & (Media.status == PENDING) & (Media.next_attempt_at <= now))
                   .execute())
        if claimed:
            started.append(media_id)
    rt.fetch_media(started)
    return len(started)


def expire_media() -> int:
    """MEDIA_RETENTION_DAYS: delete stored files older than it that no younger
    record holds (dedupe: the same file may be held by a recent message too),
    and mark their records `expired`. Returns how many files were deleted."""
    rt = runtime()
    try:
        return expire(rt)
    except Exception:
        log.exception("media retention failed")
        raise


def expire(rt) -> int:
    days = rt.settings.MEDIA_RETENTION_DAYS
    if days <= 0:
        return 0
    cutoff = utcnow() - timedelta(days=days)
    keys = [row.storage_key for row in Media.select(Media.storage_key).distinct()
            .where((Media.status == STORED) & (Media.stored_at < cutoff) & Media.storage_key.is_null(False))
            .limit(RETENTION_BATCH)]
    deleted = 0
    for key in keys:
        digest = key.rsplit("/", 1)[-1]
        lock = rt.redis.lock(f"{rt.settings.REDIS_PREFIX}:media:key:{digest}", timeout=60, blocking_timeout=5)
        if not lock.acquire():
            continue
        try:
            held = (Media.select(Media.id)
                    .where((Media.storage_key == key) & (Media.status == STORED) & (Media.stored_at >= cutoff))
                    .exists())
            old = Media.select(Media.id).where((Media.storage_key == key) & (Media.status == STORED)
                                               & (Media.stored_at < cutoff))
            if held:
                continue                # a younger message holds the same file: it stays
            try:
                rt.storage.delete(key)
            except StorageError as exc:
                log.warning("retention could not delete %s (%s); next run will", key, exc)
                continue
            deleted += 1
            with write_transaction():
                expired = [row.id for row in old]
                Media.update(status=EXPIRED).where(Media.id.in_(expired)).execute()
                changed = _copy_to_messages(expired)
        finally:
            try:
                lock.release()
            except Exception:
                pass
        announce(rt, changed)
    if deleted:
        log.info("media retention deleted %d file(s) older than %d days", deleted, days)
    return deleted
