"""Marshmallow schemas: the same classes validate requests, document the API and
serialise every answer (`blueprints.api.reply` dumps through the schema a view
documents with `@responds`)."""
from collections.abc import Mapping

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, post_dump, pre_dump, pre_load, validate, \
    validates_schema

from models import STATES

ROUTED_TO = ("bot", "agent", "held", "queued_for_agent", "none", "dead_letter")
ESCALATION_REASONS = ("explicit_request", "bot", "sentiment", "bot_failures", "bot_unavailable",
                      "agent_takeover", "timeout_reroute")
TIME = "an ISO 8601 UTC time with milliseconds and `Z`"


CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"
CURSOR_ABOUT = ("`next_cursor` of the previous page, as it was handed out (opaque base64url; one this API "
                "did not hand out is 400 `bad_cursor`)")


def about(text: str) -> dict:
    """Field metadata: what the field means (shown in /openapi.json and docs/api.md)."""
    return {"description": text}


class StrictSchema(Schema):
    """What a caller sends (a body or query arguments): unknown keys and NUL bytes
    are refused (PostgreSQL text cannot hold NUL; SQLite would keep a truncated
    string), as 422 `validation_failed` naming the field."""
    class Meta:
        unknown = RAISE

    @pre_load
    def _no_nul(self, data, **kwargs):
        if isinstance(data, Mapping):
            declared = {field.data_key or name for name, field in self.load_fields.items()}
            bad = {key: ["must not contain a NUL byte"] for key, value in data.items()
                   if key in declared and _has_nul(value)}
            if bad:
                raise ValidationError(bad)
        return data


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    return False


class ResponseDrift(RuntimeError):
    """An answer was about to differ from its documented schema (a bug in Baton, never the caller's)."""


class ResponseSchema(Schema):
    """An answer Baton sends. Dumping is strict both ways: a key the schema does not
    declare, or a required one that is missing, raises `ResponseDrift` instead of
    being silently dropped or sent undocumented."""

    @pre_dump
    def _declared_only(self, data, **kwargs):
        if isinstance(data, Mapping):
            undeclared = set(data) - self.dump_fields.keys()
            if undeclared:
                raise ResponseDrift(f"{type(self).__name__} does not declare {', '.join(sorted(undeclared))}")
        return data

    @post_dump
    def _required_present(self, data, **kwargs):
        missing = [name for name, field in self.dump_fields.items() if field.required and name not in data]
        if missing:
            raise ResponseDrift(f"{type(self).__name__} is missing required {', '.join(missing)}")
        return data


# -- requests ---------------------------------------------------------------------

class EscalateSchema(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=64),
                           metadata=about("why a human is needed, e.g. `explicit_request` or `bot`"))
    urgency = fields.Float(validate=validate.Range(min=0, max=1), allow_none=True,
                           metadata=about("0 (can wait) to 1 (urgent)"))
    group = fields.String(validate=validate.Length(min=1, max=64), allow_none=True,
                          metadata=about("the agent group to offer it to; DEFAULT_GROUP when absent"))
    note = fields.String(validate=validate.Length(max=2000), allow_none=True,
                         metadata=about("a note for the agent who takes it"))


class BotReplySchema(StrictSchema):
    """Extra fields from a workflow are ignored, not refused: n8n nodes often pass whole items."""
    # `text`, `escalate: true`, or both (what `_says_something` enforces).
    OPENAPI_RULE = {"anyOf": [{"required": ["text"], "properties": {"text": {"type": "string", "minLength": 1}}},
                              {"required": ["escalate"], "properties": {"escalate": {"enum": [True]}}}]}

    class Meta:
        unknown = EXCLUDE

    conversation_id = fields.String(required=True, validate=validate.Length(min=1, max=40),
                                    metadata=about("the conversation of the turn"))
    turn_id = fields.String(required=True, validate=validate.Length(min=1, max=40),
                            metadata=about("the `turn_id` of the `bot.turn` event being answered"))
    text = fields.String(validate=validate.Length(min=1, max=4096), allow_none=True,
                         metadata=about("what to send the customer"))
    escalate = fields.Boolean(load_default=False, metadata=about("true hands the conversation to the humans"))
    reason = fields.String(validate=validate.Length(min=1, max=64), allow_none=True,
                           metadata=about("why the bot escalates"))
    intent = fields.String(validate=validate.Length(max=64), allow_none=True,
                           metadata=about("the bot's reading of the message; `fallback` counts as a bot failure "
                                          "towards BOT_FAILURE_LIMIT"))
    urgency = fields.Float(validate=validate.Range(min=0, max=1), allow_none=True,
                           metadata=about("0 (can wait) to 1 (urgent), with `escalate`"))
    language = fields.String(validate=validate.Length(max=16), allow_none=True,
                             metadata=about("the customer's language as the bot detected it"))
    group = fields.String(validate=validate.Length(min=1, max=64), allow_none=True,
                          metadata=about("the agent group to escalate to"))
    metadata = fields.Dict(keys=fields.String(), allow_none=True,
                           metadata=about("free-form data merged into the conversation's metadata"))

    @validates_schema
    def _says_something(self, data, **kwargs):
        if not data.get("text") and not data.get("escalate"):
            raise ValidationError("a reply needs `text`, `escalate: true`, or both", "text")


class ConversationQueryArgsSchema(StrictSchema):
    state = fields.String(validate=validate.OneOf(STATES), metadata=about("only conversations in this state"))
    assigned = fields.String(validate=validate.Length(min=1, max=40),
                             metadata=about("an agent id, `me` (the caller) or `none` (unassigned)"))
    group = fields.String(validate=validate.Length(min=1, max=64), metadata=about("only this agent group"))
    contact = fields.String(validate=validate.Length(min=1, max=256),
                            metadata=about("only the customer with this phone number or business-scoped user id"))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200),
                           metadata=about("page size"))
    cursor = fields.String(validate=[validate.Length(max=200), validate.Regexp(CURSOR_PATTERN)],
                           metadata=about(CURSOR_ABOUT))


class MessageQueryArgsSchema(StrictSchema):
    after = fields.String(validate=validate.Length(min=1, max=64),
                          metadata=about("only messages after this message id or `seq` (in `seq` order), or "
                                         "written at or after this ISO 8601 time"))
    before = fields.String(validate=validate.Length(min=1, max=64),
                           metadata=about("only messages before this message id or `seq` (in `seq` order), or "
                                          "written at or before this ISO 8601 time"))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200), metadata=about("page size"))


class DeliveryQueryArgsSchema(StrictSchema):
    status = fields.String(validate=validate.OneOf(("pending", "delivered", "failed")),
                           metadata=about("only deliveries with this status"))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200), metadata=about("page size"))


class TokenQueryArgsSchema(StrictSchema):
    role = fields.String(validate=validate.OneOf(("bot", "agent", "supervisor", "admin")),
                         metadata=about("only tokens of this role"))
    revoked = fields.Boolean(load_default=False, metadata=about("include revoked tokens too"))
    limit = fields.Integer(load_default=200, validate=validate.Range(min=1, max=1000),
                           metadata=about("how many, oldest first"))


class DeadLetterQueryArgsSchema(StrictSchema):
    status = fields.String(load_default="waiting", validate=validate.OneOf(("waiting", "retried", "all")),
                           metadata=about("`waiting` (set aside, not retried yet; the default), `retried`, or "
                                          "`all`"))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200), metadata=about("page size"))


class OutboxQueryArgsSchema(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200),
                           metadata=about("how many of the newest entries"))


# -- responses ----------------------------------------------------------------------

class ErrorSchema(Schema):
    """Every error answer (rendered by blueprints/errors.py)."""
    error = fields.String(required=True, metadata=about("a stable machine-readable code"))
    message = fields.String(required=True, metadata=about("what went wrong, for a person"))
    details = fields.Dict(required=True, metadata=about("more about it (offending fields, ids); may be empty"))


class HealthSchema(ResponseSchema):
    status = fields.String(required=True, validate=validate.OneOf(("ok",)), metadata=about("always `ok`"))


class ChannelSchema(ResponseSchema):
    id = fields.String(required=True, metadata=about("channel id"))
    provider = fields.String(required=True, validate=validate.OneOf(("cloud_api", "wasender", "sandbox")),
                             metadata=about("the WhatsApp provider the channel speaks"))
    phone_number_id = fields.String(required=True, metadata=about("the business number's id at the provider"))


class ContactSchema(ResponseSchema):
    wa_id = fields.String(required=True, allow_none=True,
                          metadata=about("the customer's phone number; null when WhatsApp does not share it"))
    user_id = fields.String(required=True, allow_none=True,
                            metadata=about("the customer's business-scoped user id (BSUID, e.g. `US.1349…`), "
                                           "when known; replies go to it when there is no phone number"))
    username = fields.String(required=True, allow_none=True,
                             metadata=about("the customer's WhatsApp username (e.g. `@maria.rios`), when they have one"))
    name = fields.String(required=True, allow_none=True, metadata=about("the customer's profile name"))


class EscalationInfoSchema(ResponseSchema):
    reason = fields.String(required=True, metadata=about("why a human was asked for"))
    urgency = fields.Float(required=True, allow_none=True, metadata=about("0 to 1, when known"))
    requested_at = fields.String(required=True, allow_none=True, metadata=about(f"when: {TIME}"))


class ConversationSchema(ResponseSchema):
    id = fields.String(required=True, metadata=about("conversation id (`c_…`)"))
    state = fields.String(required=True, validate=validate.OneOf(STATES), metadata=about("who holds it"))
    version = fields.Integer(required=True, metadata=about("bumped by every change"))
    channel = fields.Nested(ChannelSchema, required=True, metadata=about("the business number"))
    contact = fields.Nested(ContactSchema, required=True, metadata=about("the customer"))
    assigned_agent_id = fields.String(required=True, allow_none=True,
                                      metadata=about("the agent holding it (AGENT_CONTROLLED)"))
    offered_agent_id = fields.String(required=True, allow_none=True,
                                     metadata=about("the agent it is offered to (PENDING_AGENT)"))
    group = fields.String(required=True, allow_none=True, metadata=about("the agent group it belongs to"))
    escalation = fields.Nested(EscalationInfoSchema, required=True, allow_none=True,
                               metadata=about("why it went to the humans, once it did"))
    cooldown_remaining = fields.Integer(required=True,
                                        metadata=about("customer messages left before escalation triggers "
                                                       "fire again after a release"))
    pending_since = fields.String(required=True, allow_none=True,
                                  metadata=about(f"when it started waiting for a human: {TIME}"))
    last_inbound_at = fields.String(required=True, allow_none=True,
                                    metadata=about(f"the customer's last message: {TIME}"))
    window_expires_at = fields.String(required=True, allow_none=True,
                                      metadata=about(f"end of WhatsApp's 24-hour service window: {TIME} (the "
                                                     "Cloud API's rule; WASender channels have none)"))
    metadata = fields.Dict(required=True, metadata=about("free-form data (bot mode, language, …)"))
    updated_at = fields.String(required=True, metadata=about(f"last change: {TIME}"))


class MediaLinkSchema(ResponseSchema):
    url = fields.String(required=True, metadata=about("the signed URL: with Baton's own store a path on this API's "
                                                      "origin (`/media/files/…`), with S3 a presigned URL"))
    expires_at = fields.String(required=True, metadata=about(f"when the URL stops working: {TIME}"))


class EscalatedConversationSchema(ConversationSchema):
    changed = fields.Boolean(required=True, metadata=about("false when a human already had it"))


class MediaSchema(ResponseSchema):
    """A media message's file, as Baton keeps it (issue 9)."""
    id = fields.String(required=True, allow_none=True,
                       metadata=about("media record id (`md_…`); null only for media recorded before Baton kept "
                                      "media"))
    type = fields.String(required=True, allow_none=True,
                         validate=validate.OneOf(("image", "audio", "video", "document", "sticker")),
                         metadata=about("image, audio (voice notes too), video, document or sticker"))
    mime_type = fields.String(required=True, allow_none=True, metadata=about("MIME type"))
    size = fields.Integer(required=True, allow_none=True, metadata=about("bytes; null until stored"))
    filename = fields.String(required=True, allow_none=True,
                             metadata=about("the file name the customer sent (documents), without any path"))
    status = fields.String(required=True, validate=validate.OneOf(("pending", "stored", "failed", "expired")),
                           metadata=about("`pending` (being fetched), `stored`, `failed` (too large, checksum "
                                          "mismatch, the provider refused) or `expired` (MEDIA_RETENTION_DAYS)"))
    url = fields.String(required=True, allow_none=True,
                        metadata=about("`GET` it with a bearer token: 302 to the file (`/api/v1/media/{id}`, "
                                       "absolute with PUBLIC_BASE_URL); null until stored. In n8n events it is "
                                       "given while pending too (409 `media_not_ready` until stored)"))


class MessageErrorSchema(ResponseSchema):
    code = fields.Integer(required=True, allow_none=True, metadata=about("the provider's error code"))
    title = fields.String(required=True, allow_none=True, metadata=about("the provider's error text"))
    details = fields.String(required=True, allow_none=True,
                            metadata=about("the provider's longer explanation (Cloud API: "
                                           "`errors[].error_data.details`), at most 1,000 characters"))


class MessageSchema(ResponseSchema):
    id = fields.String(required=True, metadata=about("message id (`m_…`)"))
    conversation_id = fields.String(required=True, metadata=about("its conversation"))
    seq = fields.Integer(required=True,
                         metadata=about("its place in the conversation: strictly increasing in the order Baton "
                                        "stored the messages (not dense); histories are in this order"))
    direction = fields.String(required=True, validate=validate.OneOf(("in", "out")),
                              metadata=about("`in` from the customer, `out` to them"))
    sender = fields.String(required=True, validate=validate.OneOf(("user", "bot", "agent", "system")),
                           metadata=about("who wrote it"))
    agent_id = fields.String(required=True, allow_none=True, metadata=about("the agent who sent it"))
    type = fields.String(required=True, metadata=about("`text`, `image`, `template`, … or `unsupported`"))
    text = fields.String(required=True, allow_none=True, metadata=about("the text or caption"))
    media = fields.Nested(MediaSchema, required=True, allow_none=True, metadata=about("media details"))
    provider_message_id = fields.String(required=True, allow_none=True,
                                        metadata=about("the provider's id (wamid); null until sent"))
    sent_at = fields.String(required=True, metadata=about(f"when it was written: {TIME}"))
    received_at = fields.String(required=True, metadata=about(f"when Baton recorded it: {TIME}"))
    routed_to = fields.String(required=True, allow_none=True, validate=validate.OneOf(ROUTED_TO),
                              metadata=about("where routing sent an inbound message; null until routed"))
    status = fields.String(required=True, allow_none=True,
                           metadata=about("outbound delivery status: queued, unknown (sent, the answer lost: "
                                          "waiting for a status webhook before sending again), sent, "
                                          "delivered, read, played, failed; webhooks only move it forward"))
    error = fields.Nested(MessageErrorSchema, required=True, allow_none=True,
                          metadata=about("why sending failed"))


class LastMessageSchema(ResponseSchema):
    id = fields.String(required=True, metadata=about("message id (`m_…`)"))
    seq = fields.Integer(required=True, metadata=about("its `seq`: the highest in the conversation"))
    direction = fields.String(required=True, validate=validate.OneOf(("in", "out")),
                              metadata=about("`in` from the customer, `out` to them"))
    sender = fields.String(required=True, validate=validate.OneOf(("user", "bot", "agent", "system")),
                           metadata=about("who wrote it"))
    agent_id = fields.String(required=True, allow_none=True, metadata=about("the agent who sent it"))
    type = fields.String(required=True, metadata=about("`text`, `image`, `template`, … (a preview without "
                                                        "text shows `[type]`)"))
    text = fields.String(required=True, allow_none=True,
                         metadata=about("the text or caption, cut to 200 characters (ending in `…`)"))
    sent_at = fields.String(required=True, metadata=about(f"when it was written: {TIME}"))


class ConversationListItemSchema(ConversationSchema):
    last_message = fields.Nested(LastMessageSchema, required=True, allow_none=True,
                                 metadata=about("a preview of its last message (by `seq`); null before the first"))


class ConversationListSchema(ResponseSchema):
    items = fields.List(fields.Nested(ConversationListItemSchema), required=True, metadata=about("one page"))
    next_cursor = fields.String(required=True, allow_none=True,
                                metadata=about("pass as `cursor` for the next page; null on the last"))


class MessageListSchema(ResponseSchema):
    items = fields.List(fields.Nested(MessageSchema), required=True, metadata=about("one page, in `seq` order"))
    next_cursor = fields.String(required=True, allow_none=True,
                                metadata=about("pass as `after` for the next page; null on the last"))


class BotReplyResultSchema(ResponseSchema):
    status = fields.String(required=True, validate=validate.OneOf(("queued", "escalated")),
                           metadata=about("`queued` to send, or `escalated` to the humans"))
    message = fields.Nested(MessageSchema, required=True, allow_none=True,
                            metadata=about("the queued reply; null when no text was sent"))


class WebhookAckSchema(ResponseSchema):
    messages = fields.Integer(required=True, metadata=about("new customer messages recorded"))
    statuses = fields.Integer(required=True, metadata=about("delivery status updates applied"))
    duplicates = fields.Integer(required=True, metadata=about("messages or statuses seen before"))
    ignored = fields.Integer(required=True, metadata=about("entries Baton has no use for"))
    spooled = fields.Boolean(metadata=about(
        "present (true) when the database was down and the webhook was kept in the spool instead, to be "
        "recorded once it is back; the counts are then the webhook's own (duplicates are found on replay)"))


class DeliverySchema(ResponseSchema):
    id = fields.String(required=True, metadata=about("delivery id"))
    event = fields.String(required=True, metadata=about("event type, e.g. `bot.turn` or `handoff.offered`"))
    url = fields.String(required=True, metadata=about("where it is posted"))
    status = fields.String(required=True, metadata=about("`pending`, `delivered` or `failed`"))
    attempts = fields.Integer(required=True, metadata=about("tries so far"))
    last_error = fields.String(required=True, allow_none=True, metadata=about("why the last try failed"))
    conversation_id = fields.String(required=True, allow_none=True, metadata=about("the conversation it is about"))
    next_attempt_at = fields.String(required=True, allow_none=True, metadata=about(f"next try: {TIME}"))
    created_at = fields.String(required=True, metadata=about(TIME))
    delivered_at = fields.String(required=True, allow_none=True, metadata=about(TIME))


class DeliveryListSchema(ResponseSchema):
    items = fields.List(fields.Nested(DeliverySchema), required=True, metadata=about("newest first"))
    next_cursor = fields.String(required=True, allow_none=True, metadata=about("always null (no paging yet)"))


class TokenSchema(ResponseSchema):
    id = fields.String(required=True, metadata=about("token id (`tk_…`); the secret itself is never shown again"))
    name = fields.String(required=True, metadata=about("what it is for"))
    role = fields.String(required=True, metadata=about("`bot`, `agent`, `supervisor` or `admin`"))
    agent_id = fields.String(required=True, allow_none=True, metadata=about("the agent it belongs to, if any"))
    created_at = fields.String(required=True, metadata=about(TIME))
    revoked_at = fields.String(required=True, allow_none=True, metadata=about(f"{TIME}; null while it works"))


class TokenListSchema(ResponseSchema):
    items = fields.List(fields.Nested(TokenSchema), required=True, metadata=about("oldest first"))
    next_cursor = fields.String(required=True, allow_none=True, metadata=about("always null (no paging yet)"))


class DeadLetterSchema(ResponseSchema):
    id = fields.String(required=True, metadata=about("dead letter id (`dlq_…`)"))
    message_id = fields.String(required=True, metadata=about("the inbound message set aside"))
    conversation_id = fields.String(required=True, metadata=about("its conversation"))
    attempts = fields.Integer(required=True, metadata=about("routing attempts that failed before it was set aside"))
    error = fields.String(required=True, metadata=about("the last attempt's error: its type and text, then the "
                                                        "end of its traceback"))
    created_at = fields.String(required=True, metadata=about(f"when it was set aside: {TIME}"))
    retried_at = fields.String(required=True, allow_none=True,
                               metadata=about(f"when an admin sent it back to routing (null: not yet): {TIME}"))
    message = fields.Nested(MessageSchema, required=True, allow_none=True, metadata=about("the message"))


class DeadLetterListSchema(ResponseSchema):
    items = fields.List(fields.Nested(DeadLetterSchema), required=True, metadata=about("newest first"))
    next_cursor = fields.String(required=True, allow_none=True, metadata=about("always null (no paging yet)"))


class OutboxEntrySchema(ResponseSchema):
    id = fields.String(required=True, metadata=about("entry id"))
    phone_number_id = fields.String(required=True, metadata=about("the sandbox business number"))
    to = fields.String(required=True, metadata=about("the customer's WhatsApp id"))
    provider_message_id = fields.String(required=True, metadata=about("the wamid the sandbox answered with"))
    payload = fields.Dict(required=True, metadata=about("the Cloud API request body as it would have been sent"))
    created_at = fields.String(required=True, metadata=about(TIME))


class OutboxListSchema(ResponseSchema):
    items = fields.List(fields.Nested(OutboxEntrySchema), required=True, metadata=about("oldest first"))
    next_cursor = fields.String(required=True, allow_none=True, metadata=about("always null (no paging yet)"))


class ReadinessSchema(ResponseSchema):
    database = fields.String(required=True, metadata=about("`ok`, or `down: <error>`"))
    redis = fields.String(required=True, metadata=about("`ok`, or `down: <error>`"))
    storage = fields.String(required=True, metadata=about("The media store (MEDIA_STORAGE_URL): `ok`, or "
                                                           "`down: <what failed>`"))
    breaker = fields.String(required=True, metadata=about(
        "This process's circuit breaker around the database on the webhook path: `closed` (webhooks go to "
        "the database), `open` (they go to the spool) or `half_open` (the next webhook probes the database)"))
    spool = fields.Integer(required=True, allow_none=True, metadata=about(
        "Webhooks waiting in the spool to be recorded (null while Redis cannot be read)"))


# -- agents and handoff -------------------------------------------------------------

AGENT_ROLES = ("agent", "supervisor", "admin")


def group_field(**kwargs):
    return fields.String(validate=validate.Regexp(r"^[A-Za-z0-9_.-]{1,64}$",
                                                  error="a group is 1-64 letters, digits, _ . or -"), **kwargs)


class AgentCreateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=120), metadata=about("display name"))
    role = fields.String(load_default="agent", validate=validate.OneOf(AGENT_ROLES),
                         metadata=about("`agent`, `supervisor` (sees and takes over all) or `admin`"))
    groups = fields.List(group_field(), load_default=lambda: ["support"], validate=validate.Length(max=50),
                         metadata=about("the groups whose waiting customers they are offered"))
    max_concurrent = fields.Integer(load_default=5, validate=validate.Range(min=1, max=1000),
                                    metadata=about("conversations they may hold at once"))


class AgentStatusSchema(StrictSchema):
    status = fields.String(required=True, validate=validate.OneOf(("online", "away", "offline")),
                           metadata=about("`online` joins the rotation; `away`/`offline` hand live offers on"))


class AgentSchema(ResponseSchema):
    id = fields.String(required=True, metadata=about("agent id (`a_…`)"))
    name = fields.String(required=True, metadata=about("display name"))
    role = fields.String(required=True, validate=validate.OneOf(AGENT_ROLES), metadata=about("role"))
    groups = fields.List(fields.String(), required=True, metadata=about("groups they serve"))
    max_concurrent = fields.Integer(required=True, metadata=about("conversations they may hold at once"))
    status = fields.String(required=True, metadata=about("`online`, `away` or `offline` as they set it"))
    last_assigned_at = fields.String(required=True, allow_none=True, metadata=about(f"last offer: {TIME}"))
    created_at = fields.String(required=True, metadata=about(TIME))
    online = fields.Boolean(required=True,
                            metadata=about("status online AND a heartbeat within AGENT_HEARTBEAT_TTL"))
    active_conversations = fields.Integer(required=True, metadata=about("conversations offered to or held by them"))
    deactivated_at = fields.String(required=True, allow_none=True,
                                   metadata=about(f"when an admin deactivated them ({TIME}); null while active"))


class AgentCreatedSchema(AgentSchema):
    token = fields.String(required=True, metadata=about("the agent's API token; shown this once"))


class DeactivationSchema(ResponseSchema):
    agent = fields.Nested(AgentSchema, required=True, metadata=about("the agent, deactivated"))
    tokens_revoked = fields.Integer(required=True, metadata=about("their tokens revoked by this call"))
    offers_moved = fields.Integer(required=True, metadata=about("offers to them moved on to the next agent"))
    conversations_requeued = fields.Integer(required=True,
                                            metadata=about("conversations they held, back in their group's queue "
                                                           "and offered to the next agent"))


class AgentListSchema(ResponseSchema):
    items = fields.List(fields.Nested(AgentSchema), required=True, metadata=about("one page, by id"))
    next_cursor = fields.String(required=True, allow_none=True,
                                metadata=about("pass as `cursor` for the next page; null on the last"))


class OnlineAgentSchema(ResponseSchema):
    id = fields.String(required=True, metadata=about("agent id (`a_…`)"))
    name = fields.String(required=True, metadata=about("display name"))
    groups = fields.List(fields.String(), required=True, metadata=about("groups they serve"))
    max_concurrent = fields.Integer(required=True, metadata=about("conversations they may hold at once"))
    active_conversations = fields.Integer(required=True, metadata=about("conversations offered to or held by them"))


class OnlineAgentsSchema(ResponseSchema):
    items = fields.List(fields.Nested(OnlineAgentSchema), required=True,
                        metadata=about("the agents online now (status online and a live heartbeat), by name"))
    groups = fields.List(fields.String(), required=True,
                         metadata=about("every group some agent serves, sorted (a conversation transferred to a "
                                        "group waits there until one of its agents is free)"))


class AgentQueryArgsSchema(StrictSchema):
    group = group_field(metadata=about("only agents of this group"))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200), metadata=about("page size"))
    cursor = fields.String(validate=[validate.Length(max=200), validate.Regexp(CURSOR_PATTERN)],
                           metadata=about(CURSOR_ABOUT))


class TemplateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=512),
                         metadata=about("an approved WhatsApp template"))
    language = fields.String(required=True, validate=validate.Length(min=2, max=16),
                             metadata=about("its language code, e.g. `en_US`"))
    components = fields.List(fields.Dict(), allow_none=True, validate=validate.Length(max=20),
                             metadata=about("its `header`, `body` and `button` components with their parameters, "
                                            "as the Cloud API takes them, e.g. `[{\"type\": \"body\", "
                                            "\"parameters\": [{\"type\": \"text\", \"text\": \"Ana\"}]}]`; "
                                            "with TEMPLATES_FILE set they must fit the catalog's declared "
                                            "parameters"))


class AgentMessageSchema(StrictSchema):
    # Exactly one kind; `caption` only beside `media_id` (what `_one_kind` enforces).
    OPENAPI_RULE = {"oneOf": [
        {"required": ["text"], "not": {"anyOf": [{"required": [k]} for k in ("media_id", "template", "caption")]}},
        {"required": ["media_id"], "not": {"anyOf": [{"required": [k]} for k in ("text", "template")]}},
        {"required": ["template"], "not": {"anyOf": [{"required": [k]} for k in ("text", "media_id", "caption")]}}]}
    text = fields.String(validate=validate.Length(min=1, max=4096), metadata=about("a text message"))
    media_id = fields.String(validate=validate.Length(min=1, max=64), metadata=about("a stored media id"))
    caption = fields.String(validate=validate.Length(max=1024), metadata=about("with `media_id`"))
    template = fields.Nested(TemplateSchema,
                             metadata=about("a template message (the only kind allowed outside the 24-hour window)"))

    @validates_schema
    def _one_kind(self, data, **kwargs):
        kinds = [k for k in ("text", "media_id", "template") if k in data]
        if len(kinds) != 1:
            raise ValidationError("send exactly one of `text`, `media_id` (with an optional `caption`) "
                                  "or `template`", "_schema")
        if "caption" in data and "media_id" not in data:
            raise ValidationError("`caption` goes with `media_id`", "caption")


class CatalogHeaderSchema(ResponseSchema):
    format = fields.String(required=True, validate=validate.OneOf(("text", "image", "video", "document")),
                           metadata=about("`text`, or the media kind the header shows"))
    parameters = fields.Integer(required=True, metadata=about("parameters the header takes (a media header: 1)"))


class CatalogButtonSchema(ResponseSchema):
    index = fields.Integer(required=True, metadata=about("the button's `index` in a `button` component"))
    type = fields.String(required=True,
                         validate=validate.OneOf(("quick_reply", "url", "copy_code", "phone_number")),
                         metadata=about("the button's `sub_type`"))
    parameters = fields.Integer(required=True, metadata=about("parameters it takes (0 or 1)"))


class CatalogParameterNamesSchema(ResponseSchema):
    header = fields.List(fields.String(), required=True, metadata=about("the text header's parameter name"))
    body = fields.List(fields.String(), required=True, metadata=about("the body's parameter names, in order"))


class CatalogTemplateSchema(ResponseSchema):
    name = fields.String(required=True, metadata=about("the approved template's name"))
    language = fields.String(required=True, metadata=about("its language code, e.g. `en_US`"))
    category = fields.String(required=True, validate=validate.OneOf(("MARKETING", "UTILITY", "AUTHENTICATION")),
                             metadata=about("Meta's template category"))
    text = fields.String(required=True, allow_none=True, metadata=about("its body text, for showing to agents"))
    body_parameters = fields.Integer(required=True, metadata=about("parameters the body takes"))
    header = fields.Nested(CatalogHeaderSchema, required=True, allow_none=True,
                           metadata=about("its header; null when it has none"))
    buttons = fields.List(fields.Nested(CatalogButtonSchema), required=True, metadata=about("its buttons, in order"))
    source = fields.String(required=True, validate=validate.OneOf(("file", "whatsapp_business_account")),
                           metadata=about("`file` (TEMPLATES_FILE) or `whatsapp_business_account` (its APPROVED "
                                          "templates, read from the Cloud API)"))
    parameter_names = fields.Nested(CatalogParameterNamesSchema, required=True, allow_none=True,
                                    metadata=about("for an account template written with named placeholders "
                                                   "(`{{first_name}}`): the `parameter_name` each header and "
                                                   "body parameter must carry; null for positional ones"))


class TemplateListSchema(ResponseSchema):
    configured = fields.Boolean(required=True,
                                metadata=about("false when no catalog is in effect (no TEMPLATES_FILE and no "
                                               "WhatsApp Business Account list): any template is passed to the "
                                               "provider as given"))
    sources = fields.List(fields.String(validate=validate.OneOf(("file", "whatsapp_business_account"))),
                          required=True, metadata=about("where the listed templates come from"))
    account_templates = fields.String(
        required=True, validate=validate.OneOf(("listed", "unavailable", "not_configured", "unsupported")),
        metadata=about("the WhatsApp Business Account's own list: `listed`; `unavailable` (the Graph API did "
                       "not answer; `note` says why); `not_configured` (no WHATSAPP_WABA_ID); `unsupported` "
                       "(the provider has none: WASender has no templates at all, the sandbox no account)"))
    note = fields.String(required=True, allow_none=True, metadata=about("what an agent or admin should know "
                                                                         "about the list, in words"))
    items = fields.List(fields.Nested(CatalogTemplateSchema), required=True,
                        metadata=about("the file's templates in its order, then the account's (the file wins "
                                       "on the same name and language)"))


class QueuedMessageSchema(ResponseSchema):
    message = fields.Nested(MessageSchema, required=True, metadata=about("the message, status `queued`"))


class TypingSchema(StrictSchema):
    typing = fields.Boolean(required=True, metadata=about("true while typing, false when stopped"))


class ReleaseSchema(StrictSchema):
    note = fields.String(validate=validate.Length(max=2000), allow_none=True,
                         metadata=about("why, for the record"))


class TransferSchema(StrictSchema):
    OPENAPI_RULE = {"oneOf": [{"required": ["agent_id"]}, {"required": ["group"]}]}     # exactly one target
    agent_id = fields.String(validate=validate.Length(min=1, max=40), metadata=about("offer it to this agent"))
    group = group_field(metadata=about("or offer it to this group"))

    @validates_schema
    def _one_target(self, data, **kwargs):
        if ("agent_id" in data) == ("group" in data):
            raise ValidationError("name exactly one of `agent_id` or `group`", "_schema")


class CloseSchema(StrictSchema):
    reason = fields.String(validate=validate.Length(min=1, max=64), allow_none=True,
                           metadata=about("why, for the record"))


class CallbackRequestSchema(ResponseSchema):
    id = fields.String(required=True, metadata=about("callback request id (`cb_…`)"))
    conversation_id = fields.String(required=True, metadata=about("the customer's conversation"))
    group = fields.String(required=True, allow_none=True, metadata=about("the group nobody from was free"))
    reason = fields.String(required=True, metadata=about("why it was recorded"))
    status = fields.String(required=True, validate=validate.OneOf(("open", "done")), metadata=about("open or done"))
    note = fields.String(required=True, allow_none=True, metadata=about("the agent's note"))
    created_at = fields.String(required=True, metadata=about(TIME))
    done_at = fields.String(required=True, allow_none=True, metadata=about(TIME))
    done_by = fields.String(required=True, allow_none=True, metadata=about("the agent (or token) who called back"))


class CallbackListSchema(ResponseSchema):
    items = fields.List(fields.Nested(CallbackRequestSchema), required=True, metadata=about("newest first"))
    next_cursor = fields.String(required=True, allow_none=True, metadata=about("always null (no paging yet)"))


class CallbackDoneSchema(StrictSchema):
    note = fields.String(validate=validate.Length(max=2000), allow_none=True,
                         metadata=about("what came of the call"))


class CallbackQueryArgsSchema(StrictSchema):
    status = fields.String(load_default="open", validate=validate.OneOf(("open", "done")),
                           metadata=about("`open` (default) or `done`"))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200), metadata=about("page size"))
