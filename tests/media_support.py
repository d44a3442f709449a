"""A Storage for media tests: objects in a temporary directory, an outage at
will, and signed URLs the tests can check (the `storage` branch's backends
have their own tests)."""
from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from urllib.parse import parse_qs, urlsplit

from integrations.storage import ObjectMissing, StorageUnavailable
from integrations.storage.base import check_key

SIGNING_KEY = b"test-media-signing-key"


class TestStorage:
    """The media contract's Storage over a directory; `down = True` makes every call fail."""

    __test__ = False

    def __init__(self, root):
        self.root = str(root)
        self.down = False
        self.puts: list[str] = []
        self.deleted: list[str] = []
        self._lock = threading.Lock()

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def _up(self) -> None:
        if self.down:
            raise StorageUnavailable("test storage is down")

    def put(self, key, data, content_type) -> None:
        self._up()
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        content = data if isinstance(data, (bytes, bytearray)) else data.read()
        with open(path, "wb") as out:
            out.write(content)
        with self._lock:
            self.puts.append(key)

    def exists(self, key) -> bool:
        self._up()
        return os.path.isfile(self._path(key))

    def open(self, key):
        self._up()
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def size(self, key) -> int:
        self._up()
        try:
            return os.path.getsize(self._path(key))
        except FileNotFoundError:
            raise ObjectMissing(key) from None

    def signed_url(self, key, *, ttl, content_type, filename=None, public_base="") -> str:
        self._up()
        check_key(key)
        expires = int(time.time()) + ttl
        signature = hmac.new(SIGNING_KEY, f"{key}|{expires}|{content_type}|{filename}".encode(),
                             hashlib.sha256).hexdigest()
        return f"{public_base}/media/files/{key}?expires={expires}&type={content_type}&sig={signature}"

    def delete(self, key) -> None:
        self._up()
        try:
            os.remove(self._path(key))
        except FileNotFoundError:
            pass
        with self._lock:
            self.deleted.append(key)

    def ping(self) -> None:
        self._up()

    # -- for the tests -------------------------------------------------------------------

    def content(self, key) -> bytes:
        with open(self._path(key), "rb") as f:
            return f.read()

    def read_signed(self, url: str) -> tuple[bytes, dict]:
        """The object a signed URL names, after checking its signature and expiry; (bytes, query)."""
        parts = urlsplit(url)
        key = parts.path.split("/media/files/", 1)[1]
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert int(query["expires"]) >= time.time(), "the signed URL has expired"
        return self.content(key), query


# -- webhooks carrying media ------------------------------------------------------------------------

def sha256_b64(content: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.sha256(content).digest()).decode()


def cloud_media_webhook(wa_id: str, kind: str, media_id: str, content: bytes | None, *, mime: str,
                        sha256: str | None = None, message_id: str | None = None, **extra) -> tuple[bytes, dict]:
    """A Cloud API media message signed like Meta signs; `sha256` defaults to the content's (base64)."""
    import orjson

    from tests.support import PHONE_NUMBER_ID, TEST_APP_SECRET

    body = {"id": media_id, "mime_type": mime, **extra}
    if sha256 is not None or content is not None:
        body["sha256"] = sha256 if sha256 is not None else sha256_b64(content)
    payload = {"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": "Pia"}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": message_id or f"wamid.MEDIA{time.time_ns()}",
                          "timestamp": str(int(time.time())), "type": kind, kind: body}]}}]}]}
    raw = orjson.dumps(payload)
    signature = hmac.new(TEST_APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return raw, {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={signature}"}


def wasender_media_event(wa_id: str, kind: str, message_id: str, url: str, *, mime: str,
                         content: bytes | None = None, media_key: str | None = "bWVkaWFrZXk=", **extra) -> bytes:
    """A WASender messages.upsert with a `<kind>Message` (WhatsApp-Web's encrypted media)."""
    import orjson

    body = {"url": url, "mimetype": mime, **extra}
    if media_key:
        body["mediaKey"] = media_key
    if content is not None:
        body["fileSha256"] = sha256_b64(content)
    key = {"id": message_id, "fromMe": False, "remoteJid": f"{wa_id}@s.whatsapp.net", "cleanedSenderPn": wa_id}
    return orjson.dumps({"event": "messages.upsert", "timestamp": int(time.time()),
                         "data": {"messages": [{"key": key, "message": {f"{kind}Message": body},
                                                "pushName": "Rita"}]}})
