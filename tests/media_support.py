"""The media store for media tests: Baton's filesystem backend in a temporary
directory, with an outage at will; and webhook builders for media messages."""
from __future__ import annotations

import hashlib
import hmac
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from integrations.storage import StorageUnavailable
from integrations.storage.filesystem import FilesystemStorage
from tests.support import TEST_SECRET_KEY


class TestStorage(FilesystemStorage):
    """Baton's own filesystem store (the production backend), with an outage at
    will (`down = True` makes every call fail) and a record of puts and deletes."""

    __test__ = False

    def __init__(self, root):
        super().__init__(Path(root).resolve(), TEST_SECRET_KEY)      # conftest's SECRET_KEY
        self.down = False
        self.puts: list[str] = []
        self.deleted: list[str] = []
        self._lock = threading.Lock()

    def _up(self) -> None:
        if self.down:
            raise StorageUnavailable("test storage is down")

    def put(self, key, data, content_type) -> None:
        self._up()
        super().put(key, data, content_type)
        with self._lock:
            self.puts.append(key)

    def exists(self, key) -> bool:
        self._up()
        return super().exists(key)

    def open(self, key):
        self._up()
        return super().open(key)

    def size(self, key) -> int:
        self._up()
        return super().size(key)

    def signed_url(self, key, **kwargs) -> str:
        self._up()
        return super().signed_url(key, **kwargs)

    def delete(self, key) -> None:
        self._up()
        super().delete(key)
        with self._lock:
            self.deleted.append(key)

    def ping(self) -> None:
        self._up()
        super().ping()

    # -- for the tests -------------------------------------------------------------------

    def content(self, key) -> bytes:
        return self.path(key).read_bytes()

    def read_signed(self, app, url: str) -> tuple[bytes, dict]:
        """Follow a signed link through Baton's own /media/files route: (body, headers)."""
        parts = urlsplit(url)
        answer = app.test_client().get(f"{parts.path}?{parts.query}")
        assert answer.status_code == 200, (answer.status_code, answer.get_data()[:200])
        return answer.get_data(), dict(answer.headers)


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
