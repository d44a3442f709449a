"""Every refusal routing can raise, each carrying the HTTP status and error
code it answers with, so one handler (blueprints/errors.py) renders them all
in the contract's one error shape: {"error", "message", "details"}.

A refusal is raised before anything is written: the caller changed nothing.
"""
from __future__ import annotations


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: dict | None = None, *, code: str | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class NotFound(DomainError):
    """An id the caller named does not exist (or is not the caller's to see)."""
    status, code = 404, "not_found"

    def __init__(self, resource: str, message: str | None = None):
        super().__init__(message or f"No such {resource}.", {"resource": resource})
        self.resource = resource


class Forbidden(DomainError):
    status, code = 403, "forbidden"


class Conflict(DomainError):
    """The conversation's state does not allow this now."""
    status, code = 409, "conflict"


class Unprocessable(DomainError):
    status, code = 422, "unprocessable"


class StaleTurn(Conflict):
    """Control changed after the bot turn was issued, or the turn failed (no reply
    within BOT_REPLY_TIMEOUT, its delivery failed for good; `closed` says which):
    the reply is refused."""
    code = "stale_turn"

    def __init__(self, turn_id: str, closed: str | None = None):
        if closed is None:
            super().__init__("Control of the conversation changed after this turn was issued; the reply was "
                             "not sent.", {"turn_id": turn_id})
            return
        super().__init__(f"This turn was closed ({closed}: the customer was told the bot could not answer); "
                         "the reply was not sent.", {"turn_id": turn_id, "closed": closed})


class CooldownActive(Conflict):
    """The bot asked to escalate right after an agent released the conversation."""
    code = "cooldown_active"

    def __init__(self, remaining: int):
        super().__init__("An agent just released this conversation; escalation triggers are paused for a "
                         "few customer messages. Nothing was sent.", {"cooldown_remaining": remaining})
        self.remaining = remaining


class VersionConflict(Exception):
    """Someone else changed the conversation since we read it (internal: the
    change is planned again from a fresh read)."""


class ContendedConversation(DomainError):
    """The compare-and-set kept losing to other writers; nothing was changed.
    Safe to retry."""
    status, code = 503, "conversation_busy"

    def __init__(self, conversation_id: str, attempts: int):
        super().__init__(f"The conversation kept changing under {attempts} attempts; nothing was changed. "
                         "Retry shortly.", {"conversation_id": conversation_id})
