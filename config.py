"""Every Baton setting: read from the environment, typed, validated at start-up.

`load_settings(overrides)` is the only way settings come to exist; a bad value
raises `ConfigError` naming the variable, so a typo stops the process at start
instead of surfacing as a confusing failure later.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parent
INSTANCE_DIR = ROOT / "instance"

PROVIDERS = ("sandbox", "cloud_api", "wasender")
PENDING_TIMEOUT_POLICIES = ("reroute", "collect_callback", "close")
BOT_FALLBACKS = ("builtin", "agents")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def setting(default: Any, meaning: str) -> Any:
    """A Settings field: its default and what it means (`Settings.help(name)`)."""
    return field(default=default, metadata={"help": meaning})


@dataclass(frozen=True)
class Settings:
    """Every setting, with its type, default and meaning (`help`, listed in docs/settings.md)."""

    DATABASE_URL: str = setting(f"sqlite:///{INSTANCE_DIR / 'baton.db'}",
                                "Where Baton keeps conversations, messages and tokens: `sqlite:///<path>` or "
                                "`postgresql://user:pass@host/db`.")
    DATABASE_POOL_SIZE: int = setting(20, "PostgreSQL connections each web or worker process may hold at once; a "
                                          "request waits up to 10 s for one, then gets 503 `database_unavailable`.")
    REDIS_URL: str = setting("redis://127.0.0.1:6379/0",
                             "The Redis that holds queues, inboxes, locks, presence and live events.")
    REDIS_PREFIX: str = setting("baton", "Prefix of every Redis key and RQ queue Baton owns, so two installs (or a "
                                         "test run) can share one Redis without touching each other's data.")

    WHATSAPP_PROVIDER: str = setting("sandbox", "Which WhatsApp connection to speak: `sandbox` (records sends in "
                                                "the outbox), `cloud_api` (Meta) or `wasender`.")
    WHATSAPP_APP_SECRET: str = setting("", "Meta app secret that signs webhooks (X-Hub-Signature-256); the sandbox "
                                           "signs its simulated webhooks with it too.")
    WHATSAPP_VERIFY_TOKEN: str = setting("", "The token Meta echoes in the `GET /webhooks/whatsapp` subscription "
                                             "handshake.")
    WHATSAPP_ACCESS_TOKEN: str = setting("", "Bearer token for sending and for fetching media through the Graph "
                                             "API.")
    WHATSAPP_API_BASE: str = setting("https://graph.facebook.com/v23.0",
                                     "Base URL of the Graph API, version included.")
    WHATSAPP_MPS: int = setting(80, "Messages per second Baton sends from one business number, counted in Redis "
                                    "across every process: 80 is Meta's default, 20 for a number that coexists "
                                    "with the WhatsApp Business app, up to 1000 once Meta raises the tier.")
    WASENDER_API_KEY: str = setting("", "WASender API key used to send messages and decrypt media.")
    WASENDER_WEBHOOK_SECRET: str = setting("", "Shared secret WASender sends in X-Webhook-Signature with each "
                                               "webhook.")
    WASENDER_API_BASE: str = setting("https://www.wasenderapi.com", "Base URL of the WASender API.")
    SANDBOX_PHONE_NUMBER_ID: str = setting("sandbox-1", "The business number id the sandbox provider pretends to "
                                                        "send from (and `simulate` writes to).")

    N8N_BOT_URL: str = setting("", "n8n webhook that receives `bot.turn` events (the AI branch); empty uses the "
                                   "built-in rule bot.")
    N8N_NOTIFY_URL: str = setting("", "n8n webhook that receives notifications for people (`handoff.offered`, "
                                      "`message.for_agent`, …); empty sends none.")
    BATON_EVENT_SECRET: str = setting("", "Key of the HMAC-SHA256 `X-Baton-Signature` on every event posted to "
                                          "n8n: at least 32 characters, and required once N8N_BOT_URL or "
                                          "N8N_NOTIFY_URL is set (`./run.sh` writes a random one into `.env`).")
    EVENT_MAX_ATTEMPTS: int = setting(8, "Tries of one n8n delivery before it lands on the failed list.")
    EVENT_TIMEOUT: float = setting(10.0, "Seconds to wait for n8n to answer one delivery.")

    PUBLIC_BASE_URL: str = setting("http://127.0.0.1:8000", "Baton's address as others reach it; builds "
                                                            "`reply_url` and `console_url` in events.")
    MEDIA_STORAGE_URL: str = setting(f"file://{INSTANCE_DIR / 'media'}",
                                     "Where copies of customers' media are kept, by content hash: `file:///abs/path` "
                                     "(Baton serves them itself through links signed with SECRET_KEY, which must "
                                     "then be set) or `s3://bucket/prefix?endpoint_url=…&region=…` (boto3; "
                                     "credentials from boto3's usual sources: AWS_ACCESS_KEY_ID/"
                                     "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role).")
    MEDIA_URL_TTL: int = setting(300, "Seconds a signed media link stays valid: Baton's own `/media/files/…` "
                                      "link, or the presigned S3 GET that `GET /api/v1/media/{id}` redirects to.")
    MEDIA_FETCH_ATTEMPTS: int = setting(8, "Tries of one media download from the provider before its record is "
                                           "`failed` (a storage outage is retried until it ends).")
    MEDIA_UPLOAD_MAX_BYTES: int = setting(100 * 1024 * 1024, "Largest request `POST /api/v1/media` reads (an agent's "
                                                             "or a bot's upload); a longer one answers 413 before it is "
                                                             "read. Each kind has WhatsApp's own limit within it.")
    MEDIA_RETENTION_DAYS: int = setting(0, "Days a stored media file is kept; 0 keeps them forever. Older files "
                                           "are deleted (unless a younger record holds the same file) and their "
                                           "records become `expired`.")
    RETENTION_DAYS_MESSAGES: int = setting(0, "Days a message is kept (counted from when Baton received or queued it); 0 keeps them "
                                              "forever. Only routed inbound and finished outbound messages are "
                                              "deleted: nothing waiting to be routed or sent.")
    RETENTION_DAYS_EVENTS: int = setting(0, "Days an audit event is kept; 0 keeps them forever.")
    RETENTION_DAYS_DELIVERIES: int = setting(30, "Days an event delivered to n8n (or failed for good) is kept, body "
                                                 "included (bodies carry the conversation's history); 0 keeps them "
                                                 "forever. Pending deliveries are never deleted.")
    RETENTION_DAYS_BOT_TURNS: int = setting(90, "Days a bot turn record is kept; 0 keeps them forever.")
    RETENTION_DAYS_OUTBOX: int = setting(30, "Days a sandbox outbox row is kept; 0 keeps them forever.")
    RETENTION_DAYS_UNSUPPORTED: int = setting(30, "Days an unsupported provider update (kept raw, secrets stripped) "
                                                  "is kept; 0 keeps them forever.")

    PENDING_TIMEOUT: int = setting(300, "Seconds a customer may wait for a human before PENDING_TIMEOUT_POLICY "
                                        "applies.")
    PENDING_TIMEOUT_POLICY: str = setting("reroute", "What happens when nobody takes a waiting customer in time: "
                                                     "`reroute` (to PENDING_TIMEOUT_GROUP), `collect_callback` or "
                                                     "`close`.")
    PENDING_TIMEOUT_GROUP: str = setting("", "The group `reroute` offers to; empty (or a second timeout there) "
                                             "collects a callback instead.")
    OFFER_TIMEOUT: int = setting(60, "Seconds an agent has to accept an offer before it moves to the next agent.")
    AGENT_RESPONSE_TIMEOUT: int = setting(300, "Seconds the assigned agent may leave the customer unanswered "
                                               "before the conversation is offered to someone else.")
    AGENT_HEARTBEAT_TTL: int = setting(60, "Seconds a heartbeat keeps an online agent in the rotation.")
    AGENT_TYPING_TTL: int = setting(15, "Seconds a typing notice lasts (and holds the bot) unless renewed.")
    COOLDOWN_INTERACTIONS: int = setting(3, "Customer messages after a release during which no automatic "
                                            "escalation trigger fires.")
    IDLE_CLOSE_AFTER: int = setting(86400, "Seconds without activity after which a conversation is closed.")
    PENDING_NOTICE_INTERVAL: int = setting(600, "Least seconds between two PENDING_NOTICE messages to a customer "
                                                "who keeps writing while waiting.")
    BOT_HISTORY: int = setting(10, "How many earlier messages a `bot.turn` event carries in `history`.")
    BOT_TYPING_INDICATOR: bool = setting(True, "When the AI branch gets a turn, mark the customer's message read and "
                                               "show WhatsApp's typing indicator (once per turn; WhatsApp drops it "
                                               "after 25 s or at the reply).")
    ESCALATION_PHRASES_FILE: str = setting("", "A file of extra phrases that mean \"I want a human\", one a line "
                                               "(`=` for a whole message); empty uses the built-in list only.")
    TEMPLATES_FILE: str = setting("", "A JSON file listing the approved WhatsApp templates agents may send "
                                      "(`GET /api/v1/templates`; format in templates.example.json); when set, a "
                                      "template message must name one of them with fitting parameters. Empty: no "
                                      "catalog, any template goes to the provider as given.")
    DEFAULT_GROUP: str = setting("support", "The agent group an escalation goes to when none is named.")
    STICKY_ASSIGNMENT: bool = setting(True, "Offer a returning customer to the agent who served them last, when "
                                            "that agent is online with free capacity.")
    BOT_FAILURE_LIMIT: int = setting(3, "Bot failures in a row after which the conversation escalates to a human "
                                        "(reason `bot_failures`): a reply with `intent: \"fallback\"`, a turn "
                                        "with no reply within BOT_REPLY_TIMEOUT, a `bot.turn` delivery that failed "
                                        "for good; any other reply starts the count again.")
    BOT_REPLY_TIMEOUT: int = setting(30, "Seconds the AI branch (N8N_BOT_URL) has to answer a `bot.turn`; after "
                                         "that the turn is closed (a later reply is 409 `stale_turn`), the "
                                         "customer gets BOT_FALLBACK_NOTICE and it counts as a bot failure.")
    BOT_FALLBACK: str = setting("builtin", "Where new turns go while the circuit breaker on N8N_BOT_URL is open: "
                                           "`builtin` (the built-in rule bot answers) or `agents` (straight to "
                                           "the humans' queue, reason `bot_unavailable`).")
    BOT_BREAKER_FAILURES: int = setting(5, "Failed deliveries to N8N_BOT_URL in a row (across every process) "
                                           "that open the circuit breaker: new turns then go to BOT_FALLBACK.")
    BOT_BREAKER_COOLDOWN: int = setting(30, "Seconds the circuit breaker stays open before the next turn is "
                                            "sent to N8N_BOT_URL as a probe (half-open); the probe delivered "
                                            "closes it, failed opens it again. A probe not heard of for this "
                                            "long lets another turn probe.")
    SENTIMENT_THRESHOLD: float = setting(-0.6, "VADER compound score (at least -1, below 0) at or below which a "
                                               "customer's text escalates as angry.")
    SENTIMENT_LANGUAGES: str = setting("en", "Comma-separated languages the sentiment trigger reads (only English "
                                             "today); empty turns the trigger off.")

    SECRET_KEY: str = setting("", "Flask's secret key (signed cookies) and the key that signs the filesystem "
                                  "store's media links: at least 32 characters when set; required when "
                                  "MEDIA_STORAGE_URL is a `file://` URL (`./run.sh` writes a random one into "
                                  "`.env`).")
    METRICS_TOKEN: str = setting("", "When set, `GET /metrics` needs `Authorization: Bearer <METRICS_TOKEN>`.")
    AUTH_FAILURE_LIMIT: int = setting(20, "Failed authentications (an unknown or revoked API token, a wrong "
                                          "METRICS_TOKEN) one client address may make within "
                                          "AUTH_FAILURE_WINDOW; past it, every token-authenticated call from "
                                          "that address answers 429 `too_many_auth_failures` with Retry-After "
                                          "until the window ends. Counted in Redis across processes.")
    AUTH_FAILURE_WINDOW: int = setting(300, "Seconds over which AUTH_FAILURE_LIMIT counts failed "
                                            "authentications (the window starts at an address's first failure).")
    MAX_WEBHOOK_BYTES: int = setting(3 * 1024 * 1024, "Largest request body accepted, in bytes; bigger gets 413.")
    SEND_MAX_ATTEMPTS: int = setting(6, "Tries of one outbound message on retryable provider errors (429, 5xx, "
                                        "130429, pair limit 131056, network) before it fails with its last error.")
    SEND_MAX_AGE: int = setting(3600, "Seconds after it was queued that an outbound message still waiting for a "
                                      "retry fails with its last error instead.")
    SEND_CONCURRENCY: int = setting(0, "Provider calls one outbound pump keeps in flight (each conversation has one "
                                       "at a time, so its messages stay in order); 0 means WHATSAPP_MPS / 2, enough "
                                       "to reach the rate when a call takes up to 500 ms.")
    SEND_RECONCILE_SECONDS: float = setting(30.0, "When a send's outcome is unknown (the request went out, no "
                                                  "answer came back), how long Baton waits for a status webhook "
                                                  "naming it before sending it again.")
    LOCK_TTL: float = setting(30.0, "Seconds a conversation lock lives without renewal; a crashed worker's lock "
                                    "frees itself after this long.")
    REQUEUE_AFTER: int = setting(10, "Seconds after which the cron sweep re-queues a message recorded but not "
                                     "routed (Redis lost the inbox, or a worker died mid-drain).")
    ROUTE_MAX_ATTEMPTS: int = setting(5, "Times Baton tries to route an inbound message whose routing raises "
                                         "(about 5 s apart) before it sets the message aside as a dead letter "
                                         "(GET /api/v1/admin/dead-letters) and its conversation moves on to the "
                                         "next message.")
    PUMP_BUDGET_SECONDS: float = setting(2.0, "How long one pump job keeps draining before handing over to a fresh "
                                              "job.")
    PUMP_CONCURRENCY: int = setting(1, "Pump jobs running at once per lane, across every worker process; each "
                                       "takes one worker thread while it runs.")
    PUMP_LINGER: float = setting(0.1, "Seconds an idle pump waits for more work before its job ends, so steady "
                                      "traffic is served by few jobs.")
    WORKER_THREADS: int = setting(0, "RQ workers one `flask baton worker` process runs, as threads, so that a "
                                     "busy or lingering pump of one lane never holds up another lane's, a timer "
                                     "or a media download; 0 means one per pump of each lane (3 x "
                                     "PUMP_CONCURRENCY) plus two for timers and media. On PostgreSQL each thread "
                                     "holds a connection of DATABASE_POOL_SIZE.")
    PUMP_LEASE: float = setting(30.0, "Seconds after which the slot of a pump that stopped renewing it (worker "
                                      "killed) is free again.")

    HANDOFF_NOTICE: str = setting("Thanks! I'm connecting you with a member of our team. They'll reply here "
                                  "shortly.", "What the customer is told when their conversation goes to the "
                                              "humans.")
    PENDING_NOTICE: str = setting("You're in the queue — a member of our team will be with you soon.",
                                  "What a customer who writes while waiting is told (at most every "
                                  "PENDING_NOTICE_INTERVAL).")
    CALLBACK_NOTICE: str = setting("Sorry, our team is busy right now. Leave your name, a phone number and a good "
                                   "time to call, and we'll get back to you.",
                                   "What the customer is told when the `collect_callback` policy applies.")
    BOT_FALLBACK_NOTICE: str = setting("Sorry, I can't answer right now. Please try again in a moment, or ask "
                                       "for a person and a member of our team will help you.",
                                       "What the customer is told when the bot does not answer a turn in "
                                       "BOT_REPLY_TIMEOUT or its `bot.turn` could not be delivered (once per "
                                       "turn).")
    TIMEOUT_CLOSE_NOTICE: str = setting("Sorry, nobody from our team is available right now. Please write to us "
                                        "again later — we'll be glad to help.",
                                        "What the customer is told when the `close` policy ends a wait.")
    MAINTENANCE_NOTICE: str = setting("Sorry, we're doing some maintenance. We have your message and will "
                                      "reply as soon as we're back.",
                                      "What a customer who writes while the database is down is told (at most "
                                      "once per MAINTENANCE_NOTICE_WINDOW); their message is kept in the spool "
                                      "and answered once the database is back. Empty sends none.")
    MAINTENANCE_NOTICE_WINDOW: int = setting(3600, "Least seconds between two MAINTENANCE_NOTICE messages to one "
                                                   "customer; a notice the provider could not take is tried again "
                                                   "until this window ends.")
    DATABASE_BREAKER_FAILURES: int = setting(3, "Webhooks in a row that find the database unreachable before "
                                                "the circuit breaker opens: from then on webhooks go straight "
                                                "to the spool.")
    DATABASE_BREAKER_OPEN_SECONDS: float = setting(5.0, "Seconds an open circuit breaker waits before one webhook "
                                                        "probes the database (`SELECT 1`); an answer closes it and "
                                                        "starts the spool's replay.")
    SPOOL_MAX_ENTRIES: int = setting(100000, "Most webhooks the spool (a Redis stream used while the database is "
                                             "down) holds; beyond it a webhook answers 503 with Retry-After, as "
                                             "when Redis is down too.")
    HANDOFF_NOTICE_TEMPLATE: str = setting("", "The template HANDOFF_NOTICE is sent as when the customer last "
                                               "wrote over 24 hours ago: `name` (or `name:language`) of a "
                                               "TEMPLATES_FILE entry that takes no parameters. Empty: outside "
                                               "the window the notice is not sent (and the audit trail says so).")
    PENDING_NOTICE_TEMPLATE: str = setting("", "The template PENDING_NOTICE is sent as outside the 24-hour "
                                               "window (as HANDOFF_NOTICE_TEMPLATE).")
    CALLBACK_NOTICE_TEMPLATE: str = setting("", "The template CALLBACK_NOTICE is sent as outside the 24-hour "
                                                "window (as HANDOFF_NOTICE_TEMPLATE).")
    TIMEOUT_CLOSE_NOTICE_TEMPLATE: str = setting("", "The template TIMEOUT_CLOSE_NOTICE is sent as outside the "
                                                     "24-hour window (as HANDOFF_NOTICE_TEMPLATE).")
    BOT_FALLBACK_NOTICE_TEMPLATE: str = setting("", "The template BOT_FALLBACK_NOTICE is sent as outside the "
                                                    "24-hour window (as HANDOFF_NOTICE_TEMPLATE).")
    WHATSAPP_WABA_ID: str = setting("", "The WhatsApp Business Account id (Cloud API only): its APPROVED "
                                        "templates are listed and accepted beside TEMPLATES_FILE's (the file "
                                        "wins on the same name and language). Empty: the file alone.")
    TEMPLATES_CACHE_SECONDS: int = setting(300, "Seconds each process keeps the WhatsApp Business Account's "
                                                "template list before asking the Graph API again.")
    LOG_LEVEL: str = setting("INFO", "Python log level of every process (`DEBUG` also shows RQ's per-job lines).")
    TESTING: bool = setting(False, "Flask's testing mode; the test suite sets it.")

    @staticmethod
    def help(name: str) -> str:
        return next(f.metadata.get("help", "") for f in fields(Settings) if f.name == name)

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite")


def _parse(name: str, kind: type, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw.strip())
        if kind is float:
            return float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    return raw


def _validate(s: Settings) -> None:
    if s.WHATSAPP_PROVIDER not in PROVIDERS:
        raise ConfigError(f"WHATSAPP_PROVIDER must be one of {', '.join(PROVIDERS)}, got {s.WHATSAPP_PROVIDER!r}")
    if s.PENDING_TIMEOUT_POLICY not in PENDING_TIMEOUT_POLICIES:
        raise ConfigError(
            f"PENDING_TIMEOUT_POLICY must be one of {', '.join(PENDING_TIMEOUT_POLICIES)}, got {s.PENDING_TIMEOUT_POLICY!r}")
    if s.BOT_FALLBACK not in BOT_FALLBACKS:
        raise ConfigError(f"BOT_FALLBACK must be one of {', '.join(BOT_FALLBACKS)}, got {s.BOT_FALLBACK!r}")
    if s.WHATSAPP_PROVIDER == "sandbox" and not s.WHATSAPP_APP_SECRET:
        raise ConfigError("WHATSAPP_APP_SECRET is required: the sandbox signs webhooks like Meta does")
    if s.WHATSAPP_PROVIDER == "cloud_api":
        for name in ("WHATSAPP_APP_SECRET", "WHATSAPP_ACCESS_TOKEN", "WHATSAPP_VERIFY_TOKEN"):
            if not getattr(s, name):
                raise ConfigError(f"{name} is required when WHATSAPP_PROVIDER=cloud_api")
    if s.WHATSAPP_PROVIDER == "wasender":
        for name in ("WASENDER_WEBHOOK_SECRET", "WASENDER_API_KEY"):
            if not getattr(s, name):
                raise ConfigError(f"{name} is required when WHATSAPP_PROVIDER=wasender")
    _validate_secrets(s)
    if not s.DATABASE_URL.startswith(("sqlite:///", "postgres://", "postgresql://")):
        raise ConfigError("DATABASE_URL must start with sqlite:///, postgres:// or postgresql://")
    if not s.REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")
    for name in ("WHATSAPP_MPS", "PENDING_TIMEOUT", "OFFER_TIMEOUT", "AGENT_HEARTBEAT_TTL", "AGENT_TYPING_TTL",
                 "BOT_HISTORY", "MEDIA_URL_TTL", "MEDIA_FETCH_ATTEMPTS", "MEDIA_UPLOAD_MAX_BYTES", "MAX_WEBHOOK_BYTES", "EVENT_MAX_ATTEMPTS",
                 "SEND_MAX_ATTEMPTS",
                 "PUMP_CONCURRENCY", "PUMP_LEASE", "LOCK_TTL", "AGENT_RESPONSE_TIMEOUT", "DATABASE_POOL_SIZE",
                 "BOT_FAILURE_LIMIT", "BOT_REPLY_TIMEOUT", "BOT_BREAKER_FAILURES", "BOT_BREAKER_COOLDOWN",
                 "AUTH_FAILURE_LIMIT", "AUTH_FAILURE_WINDOW", "MAINTENANCE_NOTICE_WINDOW", "DATABASE_BREAKER_FAILURES",
                 "DATABASE_BREAKER_OPEN_SECONDS", "SPOOL_MAX_ENTRIES", "ROUTE_MAX_ATTEMPTS"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(s, name)}")
    for name in ("COOLDOWN_INTERACTIONS", "PENDING_NOTICE_INTERVAL", "IDLE_CLOSE_AFTER", "REQUEUE_AFTER",
                 "PUMP_LINGER", "SEND_CONCURRENCY", "WORKER_THREADS", "SEND_RECONCILE_SECONDS", "SEND_MAX_AGE",
                 "MEDIA_RETENTION_DAYS", "RETENTION_DAYS_MESSAGES", "RETENTION_DAYS_EVENTS",
                 "RETENTION_DAYS_DELIVERIES", "RETENTION_DAYS_BOT_TURNS", "RETENTION_DAYS_OUTBOX",
                 "RETENTION_DAYS_UNSUPPORTED"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(s, name)}")
    if not -1 <= s.SENTIMENT_THRESHOLD < 0:
        raise ConfigError(f"SENTIMENT_THRESHOLD must be at least -1 and below 0, got {s.SENTIMENT_THRESHOLD}")
    unreadable = {x.strip().split("-")[0].lower() for x in s.SENTIMENT_LANGUAGES.split(",") if x.strip()} - {"en"}
    if unreadable:
        raise ConfigError(f"SENTIMENT_LANGUAGES: the analyser reads English only, not {', '.join(sorted(unreadable))}")
    if s.ESCALATION_PHRASES_FILE and not Path(s.ESCALATION_PHRASES_FILE).is_file():
        raise ConfigError(f"ESCALATION_PHRASES_FILE {s.ESCALATION_PHRASES_FILE!r} is not a readable file")
    from integrations.templates import NOTICE_SETTINGS, CatalogError, catalog_for, notice_template

    try:
        catalog = catalog_for(s.TEMPLATES_FILE)
    except CatalogError as exc:
        raise ConfigError(f"TEMPLATES_FILE: {exc}") from None
    for name in NOTICE_SETTINGS.values():
        if getattr(s, name) and s.WHATSAPP_PROVIDER == "wasender":
            raise ConfigError(f"{name}: WASender has no message templates, so it cannot send one; leave it empty")
        if getattr(s, name):
            try:
                notice_template(catalog, getattr(s, name))
            except CatalogError as exc:
                raise ConfigError(f"{name}: {exc}") from None
    if s.TEMPLATES_CACHE_SECONDS < 0:
        raise ConfigError(f"TEMPLATES_CACHE_SECONDS must not be negative, got {s.TEMPLATES_CACHE_SECONDS}")
    from integrations.storage import parse_storage_url

    try:
        parse_storage_url(s.MEDIA_STORAGE_URL)
    except ValueError as exc:
        raise ConfigError(f"MEDIA_STORAGE_URL {exc}") from None


MIN_SECRET_LENGTH = 32
# Secrets Baton itself chooses (run.sh writes random ones): too short is a weak setup.
_OWN_SECRETS = ("BATON_EVENT_SECRET", "SECRET_KEY")


def _validate_secrets(s: Settings) -> None:
    """Refuse weak setups: events to n8n unsigned, or signed (like media links) with a guessable key."""
    if not s.BATON_EVENT_SECRET:
        for name in ("N8N_BOT_URL", "N8N_NOTIFY_URL"):
            if getattr(s, name):
                raise ConfigError(f"BATON_EVENT_SECRET is required when {name} is set: it signs every event "
                                  f"posted to n8n (X-Baton-Signature); use at least {MIN_SECRET_LENGTH} random "
                                  "characters")
    for name in _OWN_SECRETS:
        value = getattr(s, name)
        if value and len(value) < MIN_SECRET_LENGTH:
            raise ConfigError(f"{name} must be at least {MIN_SECRET_LENGTH} characters, got {len(value)} "
                              "(generate one: python3 -c 'import secrets; print(secrets.token_hex(24))')")


def validate_for_web(s: Settings) -> None:
    """What the web app needs beyond `_validate`: a key for the media links it signs and serves.
    (Checked here, not in `load_settings`, because workers and scripts sign no links.)"""
    if s.MEDIA_STORAGE_URL.startswith("file:") and not s.SECRET_KEY:
        raise ConfigError("SECRET_KEY is required when MEDIA_STORAGE_URL is a file:// URL: it signs the "
                          "/media/files links Baton serves (./run.sh writes a random one into .env)")


def validate_for_worker(s: Settings) -> None:
    """What `flask baton worker` needs beyond `_validate`: a PostgreSQL connection for each worker thread
    (each keeps one from job to job)."""
    if not s.DATABASE_URL.startswith("sqlite:") and worker_threads(s) > s.DATABASE_POOL_SIZE:
        raise ConfigError(f"WORKER_THREADS: {worker_threads(s)} worker threads need as many PostgreSQL "
                          f"connections, more than DATABASE_POOL_SIZE ({s.DATABASE_POOL_SIZE}) allows")


def send_concurrency(s: Settings) -> int:
    """Provider calls in flight per outbound pump (SEND_CONCURRENCY, or from WHATSAPP_MPS)."""
    return s.SEND_CONCURRENCY or min(max(s.WHATSAPP_MPS // 2, 4), 512)


def worker_threads(s: Settings) -> int:
    """RQ worker threads per worker process (WORKER_THREADS, or one per lane's pump plus timers and media)."""
    return s.WORKER_THREADS or 3 * s.PUMP_CONCURRENCY + 2


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the environment (and `.env` when present), then `overrides`."""
    if environ is None:
        _load_dotenv()
        environ = os.environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name in environ:
            values[f.name] = _parse(f.name, _TYPES[f.type], environ[f.name])
    known = {f.name: f for f in fields(Settings)}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown setting {key}")
        values[key] = _parse(key, _TYPES[known[key].type], value)
    settings = Settings(**values)
    _validate(settings)
    return settings


def _load_dotenv() -> None:
    env_file = ROOT / ".env"
    if env_file.is_file():
        from dotenv import load_dotenv

        load_dotenv(env_file, override=False)
