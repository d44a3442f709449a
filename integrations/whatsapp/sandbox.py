"""The sandbox provider: Cloud API webhooks in (signed like Meta signs), and
outbound recorded to the outbox table instead of calling Meta."""
from __future__ import annotations

import os

from models import Message, OutboxEntry, db, new_id, utcnow, write_transaction
from models.message import is_unsent
from models.prepared import insert_statement

from .base import OutboundMessage, SendError, SendResult
from .cloud_api import CloudApiAdapter


class SandboxAdapter(CloudApiAdapter):
    name = "sandbox"
    inline = True      # a send is a database insert: made on the sender's own thread, not the pool

    def send(self, message: OutboundMessage) -> SendResult:
        """Record the send in the outbox and, in the same transaction, tell Baton the
        message was taken, as Meta's status webhook naming `biz_opaque_callback_data`
        would: a worker killed before it records the answer leaves the message
        reconciled, not due to be sent again (jobs/send.py, "exactly once")."""
        provider_message_id = "wamid.SANDBOX" + os.urandom(12).hex().upper()
        payload = self._send_body(message)
        entry = OutboxEntry(id=new_id("ob"), phone_number_id=message.phone_number_id, to=message.to,
                            provider_message_id=provider_message_id, payload=payload, created_at=utcnow())
        with write_transaction():
            db.execute_sql(*insert_statement(entry))
            if message.reference:
                (Message.update({Message.status: "sent", Message.provider_message_id: provider_message_id,
                                 Message.attempts: Message.attempts + 1, Message.next_attempt_at: None,
                                 Message.error_code: None, Message.error_title: None,
                                 Message.error_details: None})
                 .where((Message.id == message.reference) & (Message.direction == "out")
                        & Message.provider_message_id.is_null() & is_unsent())
                 .execute())
        return SendResult(provider_message_id)

    def show_typing(self, phone_number_id: str, to: str, provider_message_id: str) -> None:
        """Nobody is on the other end of the sandbox to see it."""

    def open_media(self, media: dict):
        raise SendError("sandbox", "the sandbox holds no media", retryable=False)
