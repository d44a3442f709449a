"""Baton's own notices to the customer (HANDOFF_NOTICE, PENDING_NOTICE, CALLBACK_NOTICE,
TIMEOUT_CLOSE_NOTICE, BOT_FALLBACK_NOTICE), within WhatsApp's 24-hour customer-service window or not.

Inside the window a notice is its text. Outside it WhatsApp takes only an approved template, so
the notice is sent as the template its `*_NOTICE_TEMPLATE` setting names (checked at start-up:
listed in TEMPLATES_FILE, no parameters); with none set it is not queued at all, and the
conversation's audit trail says so (`notice_not_sent`) instead of a send failing later with 131047.
"""
from __future__ import annotations

import logging
from datetime import datetime

from integrations.templates import NOTICE_SETTINGS, catalog_for, notice_template
from models import Conversation, Message, isoformat, utcnow

from .change import Change

log = logging.getLogger(__name__)


# WhatsApp's 24-hour customer service window is the Cloud API's rule (and the
# sandbox's, which speaks it). WASender drives a WhatsApp Web session: it has
# no window and no templates.
NO_SERVICE_WINDOW = frozenset({"wasender"})


def window_open(conv: Conversation, now: datetime | None = None) -> bool:
    """Whether free text may reach the customer now: they wrote within the last
    24 hours, or the channel's provider has no such window."""
    if conv.channel.provider in NO_SERVICE_WINDOW:
        return True
    expires = conv.window_expires_at
    return expires is not None and expires > (now or utcnow())


def say_notice(change: Change, notice: str, *, text: str | None = None, sender: str = "system",
               control_epoch: int | None = None) -> Message | None:
    """Queue the notice `notice` (a setting name, e.g. "HANDOFF_NOTICE"; `text` overrides its words,
    as a bot's own handoff message does). With `control_epoch` it is sent only while the bot still
    holds that control (routing.bot_turns.outbound_allowed), as a bot reply is. Returns the message,
    or None when it cannot be sent."""
    settings, conv = change.settings, change.conv
    if window_open(conv):
        return change.say(sender=sender, text=text or getattr(settings, notice), control_epoch=control_epoch)
    template_setting = NOTICE_SETTINGS[notice]
    named = getattr(settings, template_setting)
    if named:
        template = notice_template(catalog_for(settings.TEMPLATES_FILE), named)
        return change.say(sender="system", template=template.message(), control_epoch=control_epoch)
    change.audit("system", conv.state, conv.state, "notice_not_sent", {
        "notice": notice, "why": "outside_customer_service_window",
        "window_expires_at": isoformat(conv.window_expires_at), "template_setting": template_setting})
    log.info("%s not sent to conversation %s: the customer last wrote over 24 hours ago and %s is empty",
             notice, conv.id, template_setting)
    return None
