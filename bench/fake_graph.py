#!/usr/bin/env python3
"""The fake Graph API of bench/media.py, in its own process (not a test module).

It is tests/fakes/graph_api.FakeGraphApi (the one the test suite uses: media
lookup by id → a short-lived lookaside URL that needs the token too, sends to
/<version>/<phone>/messages) with two changes for a benchmark:

* media are not added one by one: any id is resolvable and its bytes are
  derived from the id (`image_bytes`), so the benchmark can sign a webhook with
  the right sha256 without telling this process anything. Ids starting with
  SAME_PREFIX all have the same bytes (to show dedupe); any other id has its
  own random bytes (dedupe skips nothing);
* requests are not recorded (a benchmark would fill memory with them); every
  accepted send is kept (the test fake's `accepted` list: arrival time, recipient, text,
  biz_opaque_callback_data = Baton's message id, wamid). GET /_bench/sent answers
  {wamid: arrival time} (the moment "Meta" had the reply, the Cloud API
  equivalent of the sandbox's outbox_entry.created_at); GET /_bench/sends?since=N
  answers the accepted sends from the N-th on, in the order accepted, as
  [arrival time, to, biz_opaque_callback_data, wamid] lists.

`--latency-ms` makes every send wait that long before it is answered (its
arrival is stamped first). Text sends take a fast path (`FastSends`: plain WSGI,
no Flask) into the same `accepted` list. The server is gevent's WSGI server with the process
monkey-patched: a waiting send is a parked greenlet, so 1,000+ sends a second
with 200 ms each (200+ in flight) cost no threads (`--server werkzeug` is the
threaded server it used before).

    .venv/bin/python bench/fake_graph.py --port 8123 --token T
"""
from __future__ import annotations

import argparse
import hashlib
import random
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE_SIZE = 1024 * 1024
SAME_PREFIX = "8"
JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


def image_bytes(media_id: str, size: int = IMAGE_SIZE) -> bytes:
    """A 'JPEG' of `size` bytes: random after the header, seeded by the id (or shared by SAME_PREFIX ids)."""
    seed = "same" if media_id.startswith(SAME_PREFIX) else media_id
    body = random.Random(seed).randbytes(size - len(JPEG_HEADER))
    return JPEG_HEADER + body


def image_sha256(media_id: str, size: int = IMAGE_SIZE) -> bytes:
    return hashlib.sha256(image_bytes(media_id, size)).digest()


class DerivedMedia:
    """MediaStore's interface over image_bytes(), with a small cache (lookup then download)."""

    def __init__(self, size: int, keep: int = 32):
        self.size, self.keep = size, keep
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, bytes] = OrderedDict()

    def get(self, media_id: str):
        with self._lock:
            content = self._cache.get(media_id)
            if content is not None:
                self._cache.move_to_end(media_id)
        if content is None:
            content = image_bytes(media_id, self.size)
            with self._lock:
                self._cache[media_id] = content
                while len(self._cache) > self.keep:
                    self._cache.popitem(last=False)
        return content, "image/jpeg"

    def put(self, media_id, content, mime):
        raise NotImplementedError("the benchmark's media are derived from their ids")

    def download(self, media_id: str):
        from flask import Response

        content, mime = self.get(media_id)
        return Response(content, 200, mimetype=mime)


def build(token: str, size: int, latency: float = 0.0):
    """The fake; `latency` seconds before each send is answered."""
    sys.path.insert(0, str(ROOT))
    import orjson
    from flask import Response, request

    from tests.fakes.graph_api import FakeGraphApi, Realism

    class BenchGraphApi(FakeGraphApi):
        def __init__(self):
            super().__init__(access_token=token, realism=Realism(latency=(latency, latency)))
            self._media = DerivedMedia(size)
            self.app.add_url_rule("/_bench/sent", view_func=self._bench_sent, methods=["GET"])
            self.app.add_url_rule("/_bench/sends", view_func=self._bench_sends, methods=["GET"])

        def _record_and_maybe_fail(self):
            return None            # no request log, no scripted failures

        def _bench_sent(self):
            with self._lock:
                sent = {a.wamid: a.at for a in self._accepted}
            return Response(orjson.dumps(sent), mimetype="application/json")

        def _bench_sends(self):
            since = request.args.get("since", default=0, type=int)
            with self._lock:
                rows = [(a.at, a.to, a.reference, a.wamid) for a in self._accepted[since:]]
            return Response(orjson.dumps(rows), mimetype="application/json")

    return BenchGraphApi()


class FastSends:
    """WSGI in front of the fake's Flask app: a text send (POST /<version>/<phone>/messages with
    the right token, `to` and `type`) is accepted, stamped on arrival and recorded in the fake's
    `accepted` list without Flask's request machinery (measured with wrk: 0.27 CPU-ms a send
    instead of 0.47; at 1,000 sends/s on a 2-core machine that CPU is taken from Baton); anything
    else (media, read
    receipts, refusals, /_bench/*) goes to the Flask app as before."""

    def __init__(self, fake, latency: float):
        import orjson

        from tests.fakes.graph_api import Accepted

        self.fake, self.latency, self.orjson, self.Accepted = fake, latency, orjson, Accepted
        self.authorization = f"Bearer {fake.access_token}"

    def __call__(self, environ, start_response):
        import io
        import secrets

        path = environ.get("PATH_INFO", "")
        parts = path.strip("/").split("/")
        if environ["REQUEST_METHOD"] != "POST" or len(parts) != 3 or parts[2] != "messages" \
                or environ.get("HTTP_AUTHORIZATION") != self.authorization:
            return self.fake.app(environ, start_response)
        arrived = time.time()
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        try:
            body = self.orjson.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp" or not body.get("to") \
                or not body.get("type") or body.get("status"):
            environ["wsgi.input"] = io.BytesIO(raw)           # the Flask app answers it (or refuses it)
            return self.fake.app(environ, start_response)
        to = str(body["to"]).lstrip("+")
        text = body.get("text")
        template = body.get("template")
        accepted = self.Accepted(at=arrived, phone_number_id=parts[1], to=to,
                                 text=text.get("body") if isinstance(text, dict) else None,
                                 template=template.get("name") if isinstance(template, dict) else None,
                                 reference=body.get("biz_opaque_callback_data"),
                                 wamid=f"wamid.{secrets.token_urlsafe(24)}")
        with self.fake._lock:
            self.fake._accepted.append(accepted)
        if self.latency:
            time.sleep(self.latency)                          # gevent's sleep: a parked greenlet
        answer = self.orjson.dumps({"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": to}],
                                    "messages": [{"id": accepted.wamid}]})
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
        return [answer]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--size", type=int, default=IMAGE_SIZE)
    ap.add_argument("--latency-ms", type=float, default=0.0, help="each send is answered this late (default: 0)")
    ap.add_argument("--server", choices=("gevent", "werkzeug"), default="gevent")
    args = ap.parse_args()
    if args.server == "gevent":
        from gevent import monkey

        monkey.patch_all()           # before Flask/werkzeug/requests are imported: sleeps and locks yield
    fake = build(args.token, args.size, args.latency_ms / 1000)
    fake.url = f"http://127.0.0.1:{args.port}"       # the lookup's lookaside URLs point here
    print(f"fake Graph API on {fake.url} ({args.server}, {args.latency_ms:g} ms a send)", flush=True)
    if args.server == "gevent":
        from gevent.pywsgi import WSGIServer

        WSGIServer(("127.0.0.1", args.port), FastSends(fake, args.latency_ms / 1000), log=None, error_log=sys.stderr,
                   backlog=2048).serve_forever()
    else:
        from werkzeug.serving import make_server

        server = make_server("127.0.0.1", args.port, fake.app, threaded=True)
        server.socket.listen(1024)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
