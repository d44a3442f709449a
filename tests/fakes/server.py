"""A tiny real HTTP server for provider fakes: a Flask app on 127.0.0.1, a free port,
a background thread, every request recorded, and scriptable failures."""
from __future__ import annotations

import json
import threading
from collections import deque
from typing import Any

from flask import Flask, Response, request

from tests.support import ServedApp


class MediaStore:
    """Media a provider holds, by id: (content, mime type); safe across request threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict[str, tuple[bytes, str]] = {}

    def put(self, media_id: str, content: bytes, mime: str) -> None:
        with self._lock:
            self._items[media_id] = (content, mime)

    def get(self, media_id: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self._items.get(media_id)

    def download(self, media_id: str) -> Response:
        """The media's bytes as served by the provider's media host, or an empty 404."""
        media = self.get(media_id)
        return Response(b"", 404) if media is None else Response(media[0], 200, mimetype=media[1])


class FakeServer(ServedApp):
    """Base for network-edge fakes (start() binds a free port on 127.0.0.1 and sets
    `.url`; stop() frees it). Subclasses add routes to `self.app` in `__init__`."""

    def __init__(self, name: str):
        self.app = Flask(name)
        super().__init__(self.app, name)
        self.app.before_request(self._record_and_maybe_fail)
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str, dict, Any]] = []
        self._failures: deque[tuple[int, Any, dict]] = deque()

    @property
    def requests(self) -> list[tuple[str, str, dict, Any]]:
        """(method, path, headers, json-or-None) of every request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def fail_next(self, n: int, status: int, body: Any, headers: dict | None = None) -> None:
        """Answer the next `n` requests, whatever their route, with `status` and `body`
        (a dict/list is sent as JSON) instead of the normal response."""
        with self._lock:
            self._failures.extend([(status, body, dict(headers or {}))] * n)

    def _record_and_maybe_fail(self) -> Response | None:
        payload = request.get_json(silent=True)
        with self._lock:
            self._requests.append((request.method, request.path, dict(request.headers), payload))
            failure = self._failures.popleft() if self._failures else None
        if failure is None:
            return None
        status, body, headers = failure
        if isinstance(body, (dict, list)):
            return Response(json.dumps(body), status, headers, mimetype="application/json")
        return Response(body, status, headers)

    def bearer_token(self) -> str | None:
        """The token of the current request's `Authorization: Bearer` header, if any."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None
