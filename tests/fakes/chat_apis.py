"""Fake Slack Web API (`chat.postMessage`) and Telegram Bot API (`sendMessage`)
over real HTTP, recording every message they accept.

Both answer as the real services do: Slack with HTTP 200 and `{"ok": false,
"error": …}` for a bad token or a missing channel, Telegram with
`{"ok": false, "error_code", "description"}` and a 4xx status, including
Telegram's "can't parse entities" when `parse_mode` text is malformed."""
from __future__ import annotations

import itertools
import re
import threading
import time
from html.parser import HTMLParser

from flask import jsonify, request

from .server import FakeServer


def _fields() -> dict:
    """The call's arguments, sent as JSON or as a form (both APIs take either)."""
    return request.get_json(silent=True) or request.form.to_dict()


class _Recorder(FakeServer):
    def __init__(self, name: str):
        super().__init__(name)
        self._messages: list[dict] = []
        self._messages_lock = threading.Lock()

    def _record(self, message: dict) -> None:
        with self._messages_lock:
            self._messages.append(message)

    @property
    def messages(self) -> list[dict]:
        """Every message accepted so far, oldest first."""
        with self._messages_lock:
            return list(self._messages)

    def clear(self) -> None:
        """Forget the messages and requests so far, and any scripted failures."""
        with self._messages_lock:
            self._messages.clear()
        with self._lock:
            self._requests.clear()
            self._failures.clear()


class FakeSlackApi(_Recorder):
    """`POST /api/chat.postMessage` with `Authorization: Bearer <token>`; use
    `f"{fake.url}/api"` where Slack's `https://slack.com/api` would go."""

    def __init__(self, token: str = "xoxb-test-token", channels: tuple[str, ...] = ("#support",)):
        super().__init__("fake-slack-api")
        self.token = token
        self.channels = set(channels)
        self._ts = itertools.count(1)
        self.app.add_url_rule("/api/chat.postMessage", "post_message", self._post_message, methods=["POST"])

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def _post_message(self):
        if self.bearer_token() != self.token:
            return jsonify({"ok": False, "error": "invalid_auth"})
        fields = _fields()
        if fields.get("channel") not in self.channels:
            return jsonify({"ok": False, "error": "channel_not_found"})
        if not (fields.get("text") or fields.get("blocks")):
            return jsonify({"ok": False, "error": "no_text"})
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        self._record({**fields, "ts": ts})
        return jsonify({"ok": True, "channel": "C0SUPPORT", "ts": ts,
                        "message": {"type": "message", "text": fields.get("text", ""), "ts": ts}})


TELEGRAM_HTML_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "a", "code", "pre",
                      "tg-spoiler", "span", "blockquote"}


class _TelegramHtml(HTMLParser):
    """Telegram's HTML mode: only its tags, every tag closed, `&` only in entities."""

    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.open: list[str] = []
        self.problem: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag not in TELEGRAM_HTML_TAGS:
            self.problem = self.problem or f"Unsupported start tag \"{tag}\""
        self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.problem = self.problem or f"Unexpected end tag \"{tag}\""


def entity_problem(text: str, parse_mode: str | None) -> str | None:
    """Why Telegram would refuse `text` in `parse_mode`, or None."""
    if parse_mode == "HTML":
        if re.search(r"&(?!(amp|lt|gt|quot|#\d+|#x[0-9a-fA-F]+);)", text):
            return "Can't parse entities: unsupported entity"
        parser = _TelegramHtml()
        parser.feed(text)
        parser.close()
        if parser.problem or parser.open:
            return f"Can't parse entities: {parser.problem or 'unclosed tag'}"
    elif parse_mode == "Markdown":
        # Legacy Markdown: *bold*, _italic_, `code` and [text](url) must each be closed.
        for mark in ("*", "_", "`"):
            if text.count(mark) % 2:
                return f"Can't parse entities: can't find end of the entity starting with {mark}"
    return None


class FakeTelegramBotApi(_Recorder):
    """`POST /bot<token>/sendMessage`; use `.url` as the credential's Base URL."""

    def __init__(self, token: str = "123456:telegram-test-token"):
        super().__init__("fake-telegram-bot-api")
        self.token = token
        self._ids = itertools.count(1)
        self.app.add_url_rule("/bot<token>/sendMessage", "send_message", self._send_message, methods=["POST"])

    def _send_message(self, token):
        if token != self.token:
            return jsonify({"ok": False, "error_code": 401, "description": "Unauthorized"}), 401
        fields = _fields()
        if not fields.get("chat_id"):
            return jsonify({"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}), 400
        if not fields.get("text"):
            return jsonify({"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}), 400
        problem = entity_problem(fields["text"], fields.get("parse_mode"))
        if problem:
            return jsonify({"ok": False, "error_code": 400, "description": f"Bad Request: {problem}"}), 400
        self._record(fields)
        return jsonify({"ok": True, "result": {
            "message_id": next(self._ids), "date": int(time.time()), "text": fields["text"],
            "chat": {"id": fields["chat_id"], "type": "group"},
            "from": {"id": 1, "is_bot": True, "first_name": "Baton", "username": "baton_bot"}}})
