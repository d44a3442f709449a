"""The sandbox provider: Cloud API webhooks in (signed like Meta signs), and
outbound recorded to the outbox table instead of calling Meta."""
from __future__ import annotations

import os

from models import OutboxEntry, write_transaction

from .base import OutboundMessage, SendError, SendResult
from .cloud_api import CloudApiAdapter


class SandboxAdapter(CloudApiAdapter):
    name = "sandbox"

    def send(self, message: OutboundMessage) -> SendResult:
        provider_message_id = "wamid.SANDBOX" + os.urandom(12).hex().upper()
        payload = self._send_body(message)
        with write_transaction():
            OutboxEntry.create(phone_number_id=message.phone_number_id, to=message.to,
                               provider_message_id=provider_message_id, payload=payload)
        return SendResult(provider_message_id)

    def fetch_media(self, media: dict) -> tuple[bytes, str]:
        raise SendError("sandbox", "the sandbox holds no media", retryable=False)
