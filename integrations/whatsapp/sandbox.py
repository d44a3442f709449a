"""The sandbox provider: Cloud API webhooks in (signed like Meta signs), and
outbound recorded to the outbox table instead of calling Meta."""
from __future__ import annotations

import os

from models import OutboxEntry, execute_write, new_id, utcnow
from models.prepared import insert_statement

from .base import OutboundMessage, SendError, SendResult
from .cloud_api import CloudApiAdapter


class SandboxAdapter(CloudApiAdapter):
    name = "sandbox"
    inline = True      # a send is a database insert: made on the sender's own thread, not the pool
    def send(self, message: OutboundMessage) -> SendResult:
        provider_message_id = "wamid.SANDBOX" + os.urandom(12).hex().upper()
        payload = self._send_body(message)
        entry = OutboxEntry(id=new_id("ob"), phone_number_id=message.phone_number_id, to=message.to,
                            provider_message_id=provider_message_id, payload=payload, created_at=utcnow())
        execute_write(*insert_statement(entry))
        return SendResult(provider_message_id)

    def show_typing(self, phone_number_id: str, to: str, provider_message_id: str) -> None:
        """Nobody is on the other end of the sandbox to see it."""

    def open_media(self, media: dict):
        raise SendError("sandbox", "the sandbox holds no media", retryable=False)
