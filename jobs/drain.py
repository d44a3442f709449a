"""drain(conversation_id): route a conversation's waiting inbound messages."""
from __future__ import annotations

from routing.drain import drain_conversation

from .context import job_logger, runtime

log = job_logger(__name__)


def drain(conversation_id: str) -> int:
    rt = runtime()
    routed = drain_conversation(rt.settings, rt.changes, rt.policy, rt.lanes, conversation_id)
    log.debug("drained %d message(s) of %s", routed, conversation_id)
    return routed
