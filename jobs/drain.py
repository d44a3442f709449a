"""drain(conversation_ids): route the waiting inbound messages of several conversations."""
from __future__ import annotations

from routing.drain import drain_conversations

from .context import job_logger, runtime

log = job_logger(__name__)


def drain(conversation_ids: list[str]) -> dict[str, Exception]:
    """Route what waits in these conversations (their first messages together,
    then their second, ...); returns, by conversation, what stopped one."""
    rt = runtime()
    routed, failures = drain_conversations(rt.settings, rt.changes, rt.policy, rt.lanes, conversation_ids)
    log.debug("drained %d message(s) of %d conversation(s)", routed, len(conversation_ids))
    return failures
