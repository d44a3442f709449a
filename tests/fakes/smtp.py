"""A local SMTP server (aiosmtpd) on 127.0.0.1 that keeps every message it
receives, parsed, so a test can read what an email said."""
from __future__ import annotations

import socket
import threading
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from aiosmtpd.controller import Controller


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeSmtpServer:
    """start() listens on a free port (`.host`, `.port`); `.messages` are
    EmailMessage objects with `.envelope_from` / `.envelope_to` set."""

    def __init__(self):
        self.host = "127.0.0.1"
        self.port = 0
        self._lock = threading.Lock()
        self._messages: list[EmailMessage] = []
        self._controller: Controller | None = None

    async def handle_DATA(self, server, session, envelope):       # aiosmtpd handler hook
        message = BytesParser(policy=policy.default).parsebytes(envelope.original_content or envelope.content)
        message.envelope_from = envelope.mail_from
        message.envelope_to = list(envelope.rcpt_tos)
        with self._lock:
            self._messages.append(message)
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def start(self) -> "FakeSmtpServer":
        self.port = _free_port()
        self._controller = Controller(self, hostname=self.host, port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> "FakeSmtpServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def body_text(message: EmailMessage) -> str:
    """The plain-text part of a message (or its HTML part when it has no text)."""
    part = message.get_body(preferencelist=("plain", "html"))
    return part.get_content() if part is not None else ""


def html_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    return part.get_content() if part is not None else ""
