"""A fake Meta Graph API speaking the WhatsApp Cloud API wire protocol over real HTTP.

Routes: POST /<version>/<phone_number_id>/messages, POST /<version>/<phone_number_id>/media
(a multipart upload; `.uploads` keeps what came), GET /<version>/<media_id>,
the media download URL that lookup returns (which needs the token too), and
GET /<version>/<waba_id>/message_templates (paged by `after`, with `paging.next`).

By default every valid send is accepted at once. `Realism` makes it behave
like Meta under load (tests/test_send_discipline.py, bench/outbound.py):

- each send takes `latency` seconds (uniform in [lo, hi]);
- `mps`: a sliding one-second window over the arrival times of the sends to
  each phone_number_id; a send beyond it is refused with Meta's throughput
  error (HTTP 400, code 130429) and counted in `violations`;
- `pair_limit(to, n)`: the next n sends to that customer are refused with
  131056 (HTTP 400, the pair rate limit);
- faults drawn from a seeded RNG: `p_5xx` (a Graph server error: code 1 as
  HTTP 500 or code 2 as HTTP 503), `p_drop` (the connection is closed without
  a response, before the message is accepted), `p_timeout_after_accept` (the
  message IS accepted and recorded, then the answer is held past the client's
  read timeout; a `sent` status webhook naming it, `biz_opaque_callback_data`
  included, is posted 0.2-1 s later to the URL given to `post_statuses_to`, and
  posted again until it is answered 200, as Meta retries its webhooks).

Every accepted send is recorded in `accepted` (time, number, recipient, text or
template, biz_opaque_callback_data, wamid), in the order they were accepted.
`GET /_fake/accepted` and `GET /_fake/stats` serve the same as JSON, for a fake
running in a process of its own (`python -m tests.fakes.graph_api --help`).
"""
from __future__ import annotations

import base64
import hashlib
import random
import secrets
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import asdict, dataclass

import orjson
import requests
from flask import Response, jsonify, request

from integrations.signing import signature

from .server import FakeServer, MediaStore

# Meta's wording (developers.facebook.com .../whatsapp/support/error-codes): the
# `message` is "(#code) title", `error_data.details` the explanation.
THROUGHPUT = (400, 130429, "(#130429) Rate limit hit",
              "Message failed to send because there were too many messages sent from this phone number in a "
              "short period of time")
PAIR_LIMIT = (400, 131056, "(#131056) (Business Account, Consumer Account) pair rate limit hit",
              "Message failed to send because there were too many messages sent from this phone number to the "
              "same phone number in a short period of time")
SERVER_ERRORS = ((500, 1, "An unknown error has occurred.", "Invalid request or possible server error."),
                 (503, 2, "An unexpected error has occurred. Please retry your request later.",
                  "Service temporarily unavailable"))


def graph_error(status: int, code: int, message: str, error_type: str = "OAuthException",
                details: str | None = None):
    """A response shaped like Graph's `{"error": {...}}` body."""
    body = {"error": {"message": message, "type": error_type, "code": code,
                      "error_data": {"messaging_product": "whatsapp", "details": details or message},
                      "fbtrace_id": secrets.token_urlsafe(12)}}
    return jsonify(body), status


@dataclass(frozen=True)
class Realism:
    """How much like Meta under load the fake behaves (all off by default)."""
    latency: tuple[float, float] = (0.0, 0.0)   # seconds per send, uniform in [lo, hi]
    mps: int = 0                                 # per phone_number_id, sliding 1 s window; 0: unlimited
    p_5xx: float = 0.0
    p_timeout_after_accept: float = 0.0
    p_drop: float = 0.0
    hold_seconds: float = 11.0                   # a timed-out answer is held this long (CloudApiAdapter: 10 s)
    status_delay: tuple[float, float] = (0.2, 1.0)
    seed: int = 0


@dataclass(frozen=True)
class Accepted:
    """One send the fake accepted."""
    at: float                    # time.time() when the request arrived
    phone_number_id: str
    to: str
    text: str | None
    template: str | None         # the template's name
    reference: str | None        # biz_opaque_callback_data
    wamid: str


class FakeGraphApi(FakeServer):
    """Graph API fake. Use `.api_base` as the adapter's api_base and `.access_token` as its token."""

    def __init__(self, access_token: str = "graph-test-token", version: str = "v23.0",
                 realism: Realism | None = None):
        super().__init__("fake_graph_api")
        self.access_token = access_token
        self.version = version
        self.realism = realism or Realism()
        self._rng = random.Random(self.realism.seed)
        self._media = MediaStore()
        self.media_url_ttl = 300.0       # seconds a lookup's download URL works (Meta: five minutes)
        self.clock_ahead = 0.0           # seconds its URL expiry check runs ahead: tests move time, never sleep
        self._templates: dict[str, tuple[list[dict], int]] = {}
        self._accepted: list[Accepted] = []
        self._windows: dict[str, deque] = defaultdict(deque)
        self._pair_limits: Counter = Counter()
        self.refused: Counter = Counter()        # code (or "drop") -> how many sends were answered so
        self.refusals: list[tuple[float, str, int | str]] = []   # (arrival time, to, code or "drop")
        self.violations = 0                      # sends beyond `mps` (answered 130429)
        self.timeouts = 0                        # accepted, answer held past the client's timeout
        self._status_url: str | None = None
        self._status_secret = ""
        self.statuses_posted: list[tuple[str, int]] = []     # (wamid, HTTP status of Baton's last answer)
        self.status_retry_seconds = 60.0         # a status refused (or cut off) is posted again meanwhile
        self.app.add_url_rule("/<version>/<phone_number_id>/messages", view_func=self._messages,
                              methods=["POST"])
        self.app.add_url_rule("/<version>/<phone_number_id>/media", view_func=self._media_upload,
                              methods=["POST"])
        self.uploads: dict[str, dict] = {}   # media id -> {phone_number_id, type, filename, mime, content}
        self.app.add_url_rule("/<version>/<media_id>", view_func=self._media_lookup, methods=["GET"])
        self.app.add_url_rule("/lookaside/<media_id>/content", view_func=self._media_download,
                              methods=["GET"])
        self.app.add_url_rule("/<version>/<waba_id>/message_templates", view_func=self._message_templates,
                              methods=["GET"])
        self.app.add_url_rule("/_fake/accepted", view_func=self._accepted_json, methods=["GET"])
        self.app.add_url_rule("/_fake/stats", view_func=self._stats_json, methods=["GET"])
        self.app.add_url_rule("/_fake/pair_limit", view_func=self._pair_limit_json, methods=["POST"])
        self.app.add_url_rule("/_fake/statuses_to", view_func=self._statuses_to_json, methods=["POST"])

    @property
    def api_base(self) -> str:
        return f"{self.url}/{self.version}"

    # -- what a test arranges ------------------------------------------------------------------
    def add_media(self, media_id: str, content: bytes, mime: str) -> None:
        """Make `media_id` resolvable and downloadable."""
        self._media.put(media_id, content, mime)

    def set_templates(self, waba_id: str, templates: list[dict], page_size: int = 25) -> None:
        """The WhatsApp Business Account `waba_id` has these templates (Graph's entries), listed
        `page_size` to a page."""
        self._templates[waba_id] = (list(templates), page_size)

    def set_realism(self, realism: Realism) -> None:
        """Behave as `realism` from now on, its faults drawn afresh from its seed."""
        with self._lock:
            self.realism = realism
            self._rng = random.Random(realism.seed)

    def pair_limit(self, to: str, n: int) -> None:
        """Answer the next `n` sends to customer `to` with 131056 (pair rate limit hit)."""
        with self._lock:
            self._pair_limits[str(to).lstrip("+")] += n

    def post_statuses_to(self, url: str, app_secret: str) -> None:
        """Where (and signed with which app secret) the status webhooks of timed-out sends go."""
        self._status_url, self._status_secret = url, app_secret

    # -- what a test reads ------------------------------------------------------------------------
    @property
    def accepted(self) -> list[Accepted]:
        """Every accepted send, in the order accepted."""
        with self._lock:
            return list(self._accepted)

    def stats(self) -> dict:
        with self._lock:
            return {"accepted": len(self._accepted), "violations": self.violations, "timeouts": self.timeouts,
                    "refused": {str(k): v for k, v in self.refused.items()},
                    "statuses_posted": len(self.statuses_posted)}

    # -- the API ------------------------------------------------------------------------------------
    def _unauthorized(self):
        if self.bearer_token() == self.access_token:
            return None
        return graph_error(401, 190, "Invalid OAuth access token - Cannot parse access token")

    def _messages(self, version: str, phone_number_id: str):
        arrived = time.time()
        if (denied := self._unauthorized()) is not None:
            return denied
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            return graph_error(400, 100, "(#100) The parameter messaging_product is required.")
        if body.get("status") == "read" and body.get("message_id"):
            return jsonify({"success": True})  # mark-as-read / typing indicator
        # A phone number in `to`, or a business-scoped user id in `recipient` (2026); `to` wins.
        if not (body.get("to") or body.get("recipient")) or not body.get("type"):
            return graph_error(400, 100, "(#100) Invalid parameter")
        to = str(body["to"]).lstrip("+") if body.get("to") else str(body["recipient"])
        realism = self.realism
        with self._lock:
            refusal, fault, hold = self._decide(phone_number_id, to, arrived)
            latency = self._rng.uniform(*realism.latency) if realism.latency[1] else 0.0
            if refusal is None and fault is None:
                accepted = self._accept(arrived, phone_number_id, to, body)
        if latency:
            time.sleep(latency)
        if fault == "drop":
            return self._drop()
        if refusal is not None:
            status, code, message, details = refusal
            return graph_error(status, code, message, details=details)
        contact = ({"input": body["to"], "wa_id": to} if body.get("to")
                   else {"input": body["recipient"], "user_id": body["recipient"]})
        answer = jsonify({"messaging_product": "whatsapp", "contacts": [contact],
                          "messages": [{"id": accepted.wamid}]})
        if hold:
            self._post_status_later(accepted)
            time.sleep(realism.hold_seconds)        # the client has given up by now
        return answer

    def _media_upload(self, version: str, phone_number_id: str):
        """Meta's media upload: multipart `messaging_product=whatsapp`, `type` (the MIME type), `file`."""
        if (denied := self._unauthorized()) is not None:
            return denied
        file = request.files.get("file")
        if request.form.get("messaging_product") != "whatsapp" or not request.form.get("type") or file is None:
            return graph_error(400, 100, "(#100) The parameter messaging_product, type and file are required.")
        media_id = str(secrets.randbelow(10**15) + 10**15)
        content = file.read()
        self.uploads[media_id] = {"phone_number_id": phone_number_id, "type": request.form["type"],
                                  "filename": file.filename, "mime": file.mimetype, "content": content}
        self._media.put(media_id, content, request.form["type"])
        return jsonify({"id": media_id})

    def _decide(self, number: str, to: str, arrived: float):
        """(refusal, fault, hold) for a send arriving now; called under the lock."""
        realism = self.realism
        if realism.mps:
            window = self._windows[number]
            while window and window[0] <= arrived - 1.0:
                window.popleft()
            if len(window) >= realism.mps:
                self.violations += 1
                self._refuse(arrived, to, THROUGHPUT[1])
                return THROUGHPUT, None, False
            window.append(arrived)
        if self._pair_limits[to] > 0:
            self._pair_limits[to] -= 1
            self._refuse(arrived, to, PAIR_LIMIT[1])
            return PAIR_LIMIT, None, False
        draw = self._rng.random()
        if draw < realism.p_drop:
            self._refuse(arrived, to, "drop")
            return None, "drop", False
        if draw < realism.p_drop + realism.p_5xx:
            error = SERVER_ERRORS[self._rng.randrange(len(SERVER_ERRORS))]
            self._refuse(arrived, to, error[1])
            return error, None, False
        hold = self._rng.random() < realism.p_timeout_after_accept
        if hold:
            self.timeouts += 1
        return None, None, hold

    def _refuse(self, arrived: float, to: str, code: int | str) -> None:
        self.refused[code] += 1
        self.refusals.append((arrived, to, code))

    def _accept(self, arrived: float, number: str, to: str, body: dict) -> Accepted:
        template = body.get("template")
        accepted = Accepted(at=arrived, phone_number_id=number, to=to,
                            text=(body.get("text") or {}).get("body"),
                            template=template.get("name") if isinstance(template, dict) else None,
                            reference=body.get("biz_opaque_callback_data"),
                            wamid=f"wamid.{secrets.token_urlsafe(24)}")
        self._accepted.append(accepted)
        return accepted

    @staticmethod
    def _drop() -> Response:
        """Close the connection without a word (the client sees it dropped)."""
        sock = request.environ.get("werkzeug.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        return Response(b"", 500)       # never reaches the client

    # -- status webhooks ---------------------------------------------------------------------------
    def _post_status_later(self, accepted: Accepted) -> None:
        if not self._status_url:
            return
        with self._lock:
            delay = self._rng.uniform(*self.realism.status_delay)
        timer = threading.Timer(delay, self._post_status, args=(accepted,))
        timer.daemon = True
        timer.start()

    def _post_status(self, accepted: Accepted) -> None:
        """Post the `sent` status; like Meta, post it again (every 0.5 s, for up to
        `status_retry_seconds`) until it is answered 200. Records the last answer."""
        raw = orjson.dumps(status_webhook(accepted, "sent"))
        deadline = time.monotonic() + self.status_retry_seconds
        while True:
            try:
                answer = requests.post(self._status_url, data=raw, timeout=10, headers={
                    "Content-Type": "application/json",
                    "X-Hub-Signature-256": signature(self._status_secret, raw)})
                code = answer.status_code
            except requests.RequestException:
                code = 0
            if code == 200 or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        with self._lock:
            self.statuses_posted.append((accepted.wamid, code))

    # -- inspection over HTTP (a fake in a process of its own) -----------------------------------
    def _accepted_json(self):
        return Response(orjson.dumps([asdict(a) for a in self.accepted]), mimetype="application/json")

    def _stats_json(self):
        with self._lock:
            details = {"refusals": list(self.refusals), "statuses_posted": list(self.statuses_posted)}
        return Response(orjson.dumps({**self.stats(), "details": details}), mimetype="application/json")

    def _pair_limit_json(self):
        body = request.get_json()
        self.pair_limit(body["to"], int(body["n"]))
        return jsonify({})

    def _statuses_to_json(self):
        body = request.get_json()
        self.post_statuses_to(body["url"], body["app_secret"])
        return jsonify({})

    # -- media -------------------------------------------------------------------------------------
    def _media_lookup(self, version: str, media_id: str):
        if (denied := self._unauthorized()) is not None:
            return denied
        media = self._media.get(media_id)
        if media is None:
            return graph_error(400, 100, f"Unsupported get request. Object with ID '{media_id}' "
                                         "does not exist", "GraphMethodException")
        content, mime = media
        return jsonify({"messaging_product": "whatsapp",
                        "url": f"{self.url}/lookaside/{media_id}/content"
                               f"?exp={time.time() + self.clock_ahead + self.media_url_ttl}",
                        "mime_type": mime,
                        "sha256": base64.b64encode(hashlib.sha256(content).digest()).decode(),
                        "file_size": len(content), "id": media_id})

    def _media_download(self, media_id: str):
        if self.bearer_token() != self.access_token:
            return Response(b"", 401)  # the real lookaside host also refuses without the token
        if float(request.args.get("exp") or 0) < time.time() + self.clock_ahead:
            return Response(b"", 404)  # an expired URL: look the media id up again
        return self._media.download(media_id)

    def _message_templates(self, version: str, waba_id: str):
        if (denied := self._unauthorized()) is not None:
            return denied
        if waba_id not in self._templates:
            return graph_error(400, 100, f"Unsupported get request. Object with ID '{waba_id}' does not exist",
                               "GraphMethodException")
        templates, page_size = self._templates[waba_id]
        start = int(request.args.get("after") or 0)
        size = min(int(request.args.get("limit") or page_size), page_size)
        wanted = [f for f in request.args.get("fields", "").split(",") if f] or ["name", "language", "status", "id"]
        data = [{k: t[k] for k in ("id", *wanted) if k in t} for t in templates[start:start + size]]
        paging = {"cursors": {"before": str(start), "after": str(start + size)}}
        if start + size < len(templates):
            paging["next"] = (f"{self.url}/{version}/{waba_id}/message_templates?fields={','.join(wanted)}"
                              f"&limit={size}&after={start + size}")
        return jsonify({"data": data, "paging": paging})


def status_webhook(accepted: Accepted, status: str) -> dict:
    """A Cloud API status webhook for one accepted send (shape: tests/fixtures/cloud_api/status_sent.json)."""
    item = {"id": accepted.wamid, "status": status, "timestamp": str(int(time.time())),
            "recipient_id": accepted.to}
    if accepted.reference:
        item["biz_opaque_callback_data"] = accepted.reference
    return {"object": "whatsapp_business_account", "entry": [{"id": "fake-waba", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": accepted.phone_number_id},
            "statuses": [item]}}]}]}


class FakeGraphApiProcess:
    """A FakeGraphApi in a process of its own (its clock stamps arrivals without sharing a GIL
    with the test), with the same reading and arranging interface, over HTTP."""

    def __init__(self, realism: Realism | None = None, access_token: str = "graph-test-token",
                 version: str = "v23.0"):
        self.realism = realism or Realism()
        self.access_token = access_token
        self.version = version
        self.url = ""
        self._proc = None

    @property
    def api_base(self) -> str:
        return f"{self.url}/{self.version}"

    def start(self) -> "FakeGraphApiProcess":
        import subprocess
        import sys
        from pathlib import Path

        from tests.support import free_port, wait_until

        port = free_port()
        r = self.realism
        argv = [sys.executable, "-m", "tests.fakes.graph_api", "--port", str(port), "--token", self.access_token,
                "--latency", str(r.latency[0]), str(r.latency[1]), "--mps", str(r.mps), "--p-5xx", str(r.p_5xx),
                "--p-timeout", str(r.p_timeout_after_accept), "--p-drop", str(r.p_drop),
                "--hold", str(r.hold_seconds), "--seed", str(r.seed)]
        self._proc = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[2], stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return requests.get(f"{self.url}/_fake/stats", timeout=1).status_code == 200
            except requests.RequestException:
                assert self._proc.poll() is None, "the fake Graph API exited"
                return False
        wait_until(up, timeout=20, what="the fake Graph API process to answer", interval=0.05)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except Exception:
                proc.kill()
                proc.wait(timeout=5)

    def __enter__(self) -> "FakeGraphApiProcess":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _get(self, what: str):
        return requests.get(f"{self.url}/_fake/{what}", timeout=30).json()

    def _post(self, what: str, body: dict) -> None:
        requests.post(f"{self.url}/_fake/{what}", json=body, timeout=30).raise_for_status()

    def pair_limit(self, to: str, n: int) -> None:
        self._post("pair_limit", {"to": to, "n": n})

    def post_statuses_to(self, url: str, app_secret: str) -> None:
        self._post("statuses_to", {"url": url, "app_secret": app_secret})

    @property
    def accepted(self) -> list[Accepted]:
        return [Accepted(**item) for item in self._get("accepted")]

    def stats(self) -> dict:
        stats = self._get("stats")
        stats.pop("details")
        return stats

    def _details(self) -> dict:
        return self._get("stats")["details"]

    @property
    def violations(self) -> int:
        return self.stats()["violations"]

    @property
    def timeouts(self) -> int:
        return self.stats()["timeouts"]

    @property
    def refused(self) -> Counter:
        return Counter({int(k) if k.isdigit() else k: v for k, v in self.stats()["refused"].items()})

    @property
    def refusals(self) -> list[tuple]:
        return [tuple(r) for r in self._details()["refusals"]]

    @property
    def statuses_posted(self) -> list[tuple]:
        return [tuple(p) for p in self._details()["statuses_posted"]]


def main(argv=None) -> None:
    """Serve a FakeGraphApi in this process until SIGTERM (FakeGraphApiProcess, bench/outbound.py)."""
    import argparse
    import logging
    import signal

    ap = argparse.ArgumentParser(description="A fake Graph API in a process of its own.")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", default="graph-test-token")
    ap.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0), metavar=("LO", "HI"))
    ap.add_argument("--mps", type=int, default=0)
    ap.add_argument("--p-5xx", type=float, default=0.0)
    ap.add_argument("--p-timeout", type=float, default=0.0)
    ap.add_argument("--p-drop", type=float, default=0.0)
    ap.add_argument("--hold", type=float, default=11.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    realism = Realism(latency=tuple(args.latency), mps=args.mps, p_5xx=args.p_5xx,
                      p_timeout_after_accept=args.p_timeout, p_drop=args.p_drop, hold_seconds=args.hold,
                      seed=args.seed)
    fake = FakeGraphApi(args.token, realism=realism)
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", args.port, fake.app, threaded=True)
    server.socket.listen(1024)          # hundreds of connections may open at once
    fake.url = f"http://127.0.0.1:{args.port}"
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
