#!/usr/bin/env python3
"""A lean fake Graph API for bench/outbound.py: the send route of tests/fakes/graph_api.py, on asyncio.

The test-suite fake (Flask on werkzeug, a thread per connection) costs about as
much CPU per send as Baton's whole send path, so at 1,000 msg/s on a small
machine a benchmark against it measures the fake. This one speaks the same wire
protocol for what the benchmark sends, on one event loop:

* POST /<version>/<phone_number_id>/messages with `Authorization: Bearer <token>`
  (else Graph's 401, code 190); a text or template send is answered, after
  --latency seconds, with Meta's `{"messaging_product", "contacts", "messages":
  [{"id": wamid}]}`; a mark-as-read / typing indicator with `{"success": true}`;
* --mps: a sliding one-second window over the arrivals per phone_number_id; a
  send beyond it is answered 400 with Meta's 130429 body and counted in
  `violations` (so is any other refusal, by code, in `refused`);
* GET /_fake/accepted (every accepted send: at, phone_number_id, to, text,
  template, reference, wamid) and GET /_fake/stats, as the test-suite fake serves them.

HTTP/1.1 with keep-alive, one request at a time per connection (no pipelining).

    .venv/bin/python bench/lean_graph.py --port 8123 --token T --latency 0.2 --mps 1000
"""
from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import signal
import sys
import time
from collections import Counter, defaultdict, deque
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fakes.graph_api import THROUGHPUT  # noqa: E402  (Meta's wording, shared with the test fake)

REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found"}


def graph_error(code: int, message: str, details: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "OAuthException", "code": code,
                                   "error_data": {"messaging_product": "whatsapp", "details": details or message},
                                   "fbtrace_id": secrets.token_urlsafe(12)}})


class Fake:
    def __init__(self, token: str, latency: tuple[float, float], mps: int):
        self.auth = f"Bearer {token}".encode()
        self.latency = latency
        self.mps = mps
        self.accepted: list[dict] = []
        self.windows: dict[str, deque] = defaultdict(deque)
        self.refused: Counter = Counter()
        self.refusals: list = []
        self.violations = 0
        self._wamid = 0
        self._prefix = secrets.token_hex(6)

    def handle(self, method: bytes, path: bytes, headers: dict, body: bytes) -> tuple[int, bytes, float]:
        """(status, JSON body, seconds to hold the answer) for one request."""
        arrived = time.time()
        if method == b"GET" and path == b"/_fake/accepted":
            return 200, orjson.dumps(self.accepted), 0.0
        if method == b"GET" and path == b"/_fake/stats":
            return 200, orjson.dumps({**self.stats(), "details": {"refusals": self.refusals,
                                                                 "statuses_posted": []}}), 0.0
        parts = path.split(b"?", 1)[0].strip(b"/").split(b"/")
        if method != b"POST" or len(parts) != 3 or parts[2] != b"messages":
            return 404, graph_error(100, "Unsupported request"), 0.0
        if headers.get(b"authorization") != self.auth:
            return 401, graph_error(190, "Invalid OAuth access token - Cannot parse access token"), 0.0
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict) or payload.get("messaging_product") != "whatsapp":
            return 400, graph_error(100, "(#100) The parameter messaging_product is required."), 0.0
        latency = random.uniform(*self.latency) if self.latency[1] else 0.0
        if payload.get("status") == "read" and payload.get("message_id"):
            return 200, b'{"success":true}', latency
        if not (payload.get("to") or payload.get("recipient")) or not payload.get("type"):
            return 400, graph_error(100, "(#100) Invalid parameter"), latency
        number = parts[1].decode()
        to = str(payload["to"]).lstrip("+") if payload.get("to") else str(payload["recipient"])
        if self.mps:
            window = self.windows[number]
            while window and window[0] <= arrived - 1.0:
                window.popleft()
            if len(window) >= self.mps:
                self.violations += 1
                self.refused[THROUGHPUT[1]] += 1
                self.refusals.append((arrived, to, THROUGHPUT[1]))
                return THROUGHPUT[0], graph_error(THROUGHPUT[1], THROUGHPUT[2], THROUGHPUT[3]), latency
            window.append(arrived)
        self._wamid += 1
        wamid = f"wamid.{self._prefix}{self._wamid:09d}"
        template = payload.get("template")
        self.accepted.append({"at": arrived, "phone_number_id": number, "to": to,
                              "text": (payload.get("text") or {}).get("body"),
                              "template": template.get("name") if isinstance(template, dict) else None,
                              "reference": payload.get("biz_opaque_callback_data"), "wamid": wamid})
        contact = ({"input": payload["to"], "wa_id": to} if payload.get("to")
                   else {"input": payload["recipient"], "user_id": payload["recipient"]})
        return 200, orjson.dumps({"messaging_product": "whatsapp", "contacts": [contact],
                                  "messages": [{"id": wamid}]}), latency

    def stats(self) -> dict:
        return {"accepted": len(self.accepted), "violations": self.violations, "timeouts": 0,
                "refused": {str(k): v for k, v in self.refused.items()}, "statuses_posted": 0}


class Connection(asyncio.Protocol):
    def __init__(self, fake: Fake):
        self.fake = fake
        self.buffer = b""
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].split(b"\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            method, path, _ = head[0].split(b" ", 2)
            status, answer, hold = self.fake.handle(method, path, headers, body)
            response = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                status, REASONS.get(status, b"Error"), len(answer), answer)
            if hold:
                asyncio.get_running_loop().call_later(hold, self._write, response)
            else:
                self._write(response)

    def _write(self, response: bytes):
        if not self.transport.is_closing():
            self.transport.write(response)


async def serve(args) -> None:
    fake = Fake(args.token, tuple(args.latency), args.mps)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(fake), "127.0.0.1", args.port, backlog=2048)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    async with server:
        await stop


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", default="graph-test-token")
    ap.add_argument("--latency", type=float, nargs=2, default=(0.0, 0.0), metavar=("LO", "HI"))
    ap.add_argument("--mps", type=int, default=0)
    asyncio.run(serve(ap.parse_args(argv)))


if __name__ == "__main__":
    main()
