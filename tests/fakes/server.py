"""A tiny real HTTP server for provider fakes: a Flask app on 127.0.0.1, a free port,
a background thread, every request recorded, and scriptable failures."""
from __future__ import annotations

import json
import threading
from collections import deque
from typing import Any

from flask import Flask, Response, request
from werkzeug.serving import make_server


class FakeServer:
    """Base for network-edge fakes. Subclasses add routes to `self.app` in `__init__`."""

    def __init__(self, name: str):
        self.app = Flask(name)
        self.app.before_request(self._record_and_maybe_fail)
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str, dict, Any]] = []
        self._failures: deque[tuple[int, Any, dict]] = deque()
        self._server = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> "FakeServer":
        """Bind a free port on 127.0.0.1 and serve in a daemon thread; sets `.url`."""
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        # A short poll interval keeps stop() (and so every test teardown) fast.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"{self.app.name}-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

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
