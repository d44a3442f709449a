"""Marshmallow schemas: the same classes validate requests and document the API."""
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

from models import STATES

ROUTED_TO = ("bot", "agent", "held", "queued_for_agent", "none")
ESCALATION_REASONS = ("explicit_request", "bot", "sentiment", "bot_failures", "agent_takeover",
                      "timeout_reroute")


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


# -- requests ---------------------------------------------------------------------

class EscalateSchema(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=64))
    urgency = fields.Float(validate=validate.Range(min=0, max=1), allow_none=True)
    group = fields.String(validate=validate.Length(min=1, max=64), allow_none=True)
    note = fields.String(validate=validate.Length(max=2000), allow_none=True)


class BotReplySchema(Schema):
    """Extra fields from a workflow are ignored, not refused: n8n nodes often pass whole items."""

    class Meta:
        unknown = EXCLUDE

    conversation_id = fields.String(required=True, validate=validate.Length(min=1, max=40))
    turn_id = fields.String(required=True, validate=validate.Length(min=1, max=40))
    text = fields.String(validate=validate.Length(min=1, max=4096), allow_none=True)
    escalate = fields.Boolean(load_default=False)
    reason = fields.String(validate=validate.Length(min=1, max=64), allow_none=True)
    intent = fields.String(validate=validate.Length(max=64), allow_none=True)
    urgency = fields.Float(validate=validate.Range(min=0, max=1), allow_none=True)
    language = fields.String(validate=validate.Length(max=16), allow_none=True)
    group = fields.String(validate=validate.Length(min=1, max=64), allow_none=True)
    metadata = fields.Dict(keys=fields.String(), allow_none=True)

    @validates_schema
    def _says_something(self, data, **kwargs):
        if not data.get("text") and not data.get("escalate"):
            raise ValidationError("a reply needs `text`, `escalate: true`, or both", "text")


class ConversationQueryArgsSchema(StrictSchema):
    state = fields.String(validate=validate.OneOf(STATES))
    assigned = fields.String(validate=validate.Length(min=1, max=40))
    group = fields.String(validate=validate.Length(min=1, max=64))
    contact = fields.String(validate=validate.Length(min=1, max=128))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.String(validate=validate.Length(max=200))


class MessageQueryArgsSchema(StrictSchema):
    after = fields.String(validate=validate.Length(min=1, max=64),
                          metadata={"description": "a message id or an ISO 8601 time"})
    before = fields.String(validate=validate.Length(min=1, max=64),
                           metadata={"description": "a message id or an ISO 8601 time"})
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class DeliveryQueryArgsSchema(StrictSchema):
    status = fields.String(validate=validate.OneOf(("pending", "delivered", "failed")))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class OutboxQueryArgsSchema(StrictSchema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


# -- responses (documentation) -------------------------------------------------------

class ErrorSchema(Schema):
    error = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict()


class ChannelSchema(Schema):
    id = fields.String()
    provider = fields.String(validate=validate.OneOf(("cloud_api", "wasender", "sandbox")))
    phone_number_id = fields.String()


class ContactSchema(Schema):
    wa_id = fields.String()
    name = fields.String(allow_none=True)


class EscalationInfoSchema(Schema):
    reason = fields.String()
    urgency = fields.Float(allow_none=True)
    requested_at = fields.String(allow_none=True)


class ConversationSchema(Schema):
    id = fields.String()
    state = fields.String(validate=validate.OneOf(STATES))
    version = fields.Integer()
    channel = fields.Nested(ChannelSchema)
    contact = fields.Nested(ContactSchema)
    assigned_agent_id = fields.String(allow_none=True)
    offered_agent_id = fields.String(allow_none=True)
    group = fields.String(allow_none=True)
    escalation = fields.Nested(EscalationInfoSchema, allow_none=True)
    cooldown_remaining = fields.Integer()
    pending_since = fields.String(allow_none=True)
    last_inbound_at = fields.String(allow_none=True)
    window_expires_at = fields.String(allow_none=True)
    metadata = fields.Dict()
    updated_at = fields.String()


class EscalatedConversationSchema(ConversationSchema):
    changed = fields.Boolean()


class MediaSchema(Schema):
    id = fields.String()
    mime_type = fields.String()
    size = fields.Integer()
    sha256 = fields.String()
    filename = fields.String()
    url = fields.String()
    status = fields.String(validate=validate.OneOf(("pending", "stored", "failed")))


class MessageErrorSchema(Schema):
    code = fields.Integer(allow_none=True)
    title = fields.String(allow_none=True)


class MessageSchema(Schema):
    id = fields.String()
    conversation_id = fields.String()
    direction = fields.String(validate=validate.OneOf(("in", "out")))
    sender = fields.String(validate=validate.OneOf(("user", "bot", "agent", "system")))
    agent_id = fields.String(allow_none=True)
    type = fields.String()
    text = fields.String(allow_none=True)
    media = fields.Nested(MediaSchema, allow_none=True)
    provider_message_id = fields.String(allow_none=True)
    sent_at = fields.String()
    received_at = fields.String()
    routed_to = fields.String(allow_none=True, validate=validate.OneOf(ROUTED_TO))
    status = fields.String(allow_none=True)
    error = fields.Nested(MessageErrorSchema, allow_none=True)


class ConversationListSchema(Schema):
    items = fields.List(fields.Nested(ConversationSchema))
    next_cursor = fields.String(allow_none=True)


class MessageListSchema(Schema):
    items = fields.List(fields.Nested(MessageSchema))
    next_cursor = fields.String(allow_none=True)


class BotReplyResultSchema(Schema):
    status = fields.String(validate=validate.OneOf(("queued", "escalated")))
    message = fields.Nested(MessageSchema, allow_none=True)


class WebhookAckSchema(Schema):
    messages = fields.Integer()
    statuses = fields.Integer()
    duplicates = fields.Integer()
    ignored = fields.Integer()


class DeliverySchema(Schema):
    id = fields.String()
    event = fields.String()
    url = fields.String()
    status = fields.String()
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)
    conversation_id = fields.String(allow_none=True)
    next_attempt_at = fields.String(allow_none=True)
    created_at = fields.String()
    delivered_at = fields.String(allow_none=True)


class DeliveryListSchema(Schema):
    items = fields.List(fields.Nested(DeliverySchema))
    next_cursor = fields.String(allow_none=True)


class OutboxEntrySchema(Schema):
    id = fields.String()
    phone_number_id = fields.String()
    to = fields.String()
    provider_message_id = fields.String()
    payload = fields.Dict()
    created_at = fields.String()


class OutboxListSchema(Schema):
    items = fields.List(fields.Nested(OutboxEntrySchema))
    next_cursor = fields.String(allow_none=True)


class ReadinessSchema(Schema):
    database = fields.String()
    redis = fields.String()


# -- agents and handoff -------------------------------------------------------------

AGENT_ROLES = ("agent", "supervisor", "admin")
GROUP = fields.String(validate=validate.Regexp(r"^[A-Za-z0-9_.-]{1,64}$",
                                               error="a group is 1-64 letters, digits, _ . or -"))


class AgentCreateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=120))
    role = fields.String(load_default="agent", validate=validate.OneOf(AGENT_ROLES))
    groups = fields.List(GROUP, load_default=lambda: ["support"], validate=validate.Length(max=50))
    max_concurrent = fields.Integer(load_default=5, validate=validate.Range(min=1, max=1000))


class AgentStatusSchema(StrictSchema):
    status = fields.String(required=True, validate=validate.OneOf(("online", "away", "offline")))


class AgentSchema(Schema):
    id = fields.String()
    name = fields.String()
    role = fields.String(validate=validate.OneOf(AGENT_ROLES))
    groups = fields.List(fields.String())
    max_concurrent = fields.Integer()
    status = fields.String()
    online = fields.Boolean(metadata={"description": "status online AND a heartbeat within AGENT_HEARTBEAT_TTL"})
    active_conversations = fields.Integer()
    last_assigned_at = fields.String(allow_none=True)
    created_at = fields.String()


class AgentCreatedSchema(AgentSchema):
    token = fields.String(metadata={"description": "shown once"})


class AgentListSchema(Schema):
    items = fields.List(fields.Nested(AgentSchema))
    next_cursor = fields.String(allow_none=True)


class AgentQueryArgsSchema(StrictSchema):
    group = GROUP
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    cursor = fields.String(validate=validate.Length(max=200))


class TemplateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=512))
    language = fields.String(required=True, validate=validate.Length(min=2, max=16))
    components = fields.List(fields.Dict(), load_default=None, allow_none=True)


class AgentMessageSchema(StrictSchema):
    text = fields.String(validate=validate.Length(min=1, max=4096))
    media_id = fields.String(validate=validate.Length(min=1, max=64))
    caption = fields.String(validate=validate.Length(max=1024))
    template = fields.Nested(TemplateSchema)

    @validates_schema
    def _one_kind(self, data, **kwargs):
        kinds = [k for k in ("text", "media_id", "template") if k in data]
        if len(kinds) != 1:
            raise ValidationError("send exactly one of `text`, `media_id` (with an optional `caption`) "
                                  "or `template`", "_schema")
        if "caption" in data and "media_id" not in data:
            raise ValidationError("`caption` goes with `media_id`", "caption")


class QueuedMessageSchema(Schema):
    message = fields.Nested(MessageSchema)


class TypingSchema(StrictSchema):
    typing = fields.Boolean(required=True)


class ReleaseSchema(StrictSchema):
    note = fields.String(validate=validate.Length(max=2000), allow_none=True)


class TransferSchema(StrictSchema):
    agent_id = fields.String(validate=validate.Length(min=1, max=40))
    group = GROUP

    @validates_schema
    def _one_target(self, data, **kwargs):
        if ("agent_id" in data) == ("group" in data):
            raise ValidationError("name exactly one of `agent_id` or `group`", "_schema")


class CloseSchema(StrictSchema):
    reason = fields.String(validate=validate.Length(min=1, max=64), allow_none=True)


class CallbackRequestSchema(Schema):
    id = fields.String()
    conversation_id = fields.String()
    group = fields.String(allow_none=True)
    reason = fields.String()
    status = fields.String(validate=validate.OneOf(("open", "done")))
    note = fields.String(allow_none=True)
    created_at = fields.String()
    done_at = fields.String(allow_none=True)
    done_by = fields.String(allow_none=True)


class CallbackListSchema(Schema):
    items = fields.List(fields.Nested(CallbackRequestSchema))
    next_cursor = fields.String(allow_none=True)


class CallbackDoneSchema(StrictSchema):
    note = fields.String(validate=validate.Length(max=2000), allow_none=True)


class CallbackQueryArgsSchema(StrictSchema):
    status = fields.String(load_default="open", validate=validate.OneOf(("open", "done")))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
