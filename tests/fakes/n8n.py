"""A fake n8n: webhook endpoints that record Baton's signed events over real HTTP."""
from __future__ import annotations

import hashlib
import hmac
import threading

from flask import jsonify, request

from .server import FakeServer


class FakeN8n(FakeServer):
    """`POST /webhook/<path>` answers 200 and records (headers, raw body, json); a path
    set to `fail(path)` answers 503 (as n8n does with its workflow off) and records
    the attempt in `refused` instead."""

    def __init__(self, secret: str):
        super().__init__("fake-n8n")
        self.secret = secret
        self.events: list[dict] = []
        self.refused: list[dict] = []
        self.failing: dict[str, int] = {}
        self._events_lock = threading.Lock()
        self.app.add_url_rule("/webhook/<path:path>", "hook", self._hook, methods=["POST"])

    def fail(self, path: str, status: int = 503) -> None:
        self.failing[path] = status

    def recover(self, path: str) -> None:
        self.failing.pop(path, None)

    def _hook(self, path):
        if path in self.failing:
            with self._events_lock:
                self.refused.append({"path": path, "event": request.headers.get("X-Baton-Event"),
                                     "delivery": request.headers.get("X-Baton-Delivery")})
            return jsonify({"code": self.failing[path], "message": "Workflow could not be started"}), \
                self.failing[path]
        raw = request.get_data()
        expected = "sha256=" + hmac.new(self.secret.encode(), raw, hashlib.sha256).hexdigest()
        record = {"path": path, "raw": raw, "json": request.get_json(silent=True),
                  "event": request.headers.get("X-Baton-Event"),
                  "delivery": request.headers.get("X-Baton-Delivery"),
                  "signature_ok": hmac.compare_digest(expected, request.headers.get("X-Baton-Signature", ""))}
        with self._events_lock:
            self.events.append(record)
        return jsonify({"ok": True})

    def received(self, event_type: str | None = None) -> list[dict]:
        with self._events_lock:
            return [e for e in self.events if event_type is None or e["event"] == event_type]

    def url_for(self, path: str) -> str:
        return f"{self.url}/webhook/{path}"
