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
* requests are not recorded (a benchmark would fill memory with them); instead
  every accepted send's wamid is kept with the time it arrived, and
  GET /_bench/sent answers {wamid: unix time}: the moment "Meta" had the reply,
  the Cloud API equivalent of the sandbox's outbox_entry.created_at.

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


def build(token: str, size: int):
    sys.path.insert(0, str(ROOT))
    from flask import jsonify

    from tests.fakes.graph_api import FakeGraphApi

    class BenchGraphApi(FakeGraphApi):
        def __init__(self):
            super().__init__(access_token=token)
            self._media = DerivedMedia(size)
            self.sent: dict[str, float] = {}
            self.sent_lock = threading.Lock()
            self.app.add_url_rule("/_bench/sent", view_func=self._bench_sent, methods=["GET"])

        def _record_and_maybe_fail(self):
            return None            # no request log, no scripted failures

        def _messages(self, version, phone_number_id):
            answer = super()._messages(version, phone_number_id)
            at = time.time()
            response = answer[0] if isinstance(answer, tuple) else answer
            body = response.get_json(silent=True) or {}
            for message in body.get("messages") or []:
                with self.sent_lock:
                    self.sent[message["id"]] = at
            return answer

        def _bench_sent(self):
            with self.sent_lock:
                return jsonify(dict(self.sent))

    return BenchGraphApi()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--size", type=int, default=IMAGE_SIZE)
    args = ap.parse_args()
    from werkzeug.serving import make_server

    fake = build(args.token, args.size)
    server = make_server("127.0.0.1", args.port, fake.app, threaded=True)
    fake.url = f"http://127.0.0.1:{args.port}"       # the lookup's lookaside URLs point here
    print(f"fake Graph API on {fake.url}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
