"""Every Baton setting: read from the environment, typed, validated at start-up.

`load_settings(overrides)` is the only way settings come to exist; a bad value
raises `ConfigError` naming the variable, so a typo stops the process at start
instead of surfacing as a confusing failure later.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parent
INSTANCE_DIR = ROOT / "instance"

PROVIDERS = ("sandbox", "cloud_api", "wasender")
PENDING_TIMEOUT_POLICIES = ("reroute", "collect_callback", "close")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    DATABASE_URL: str = f"sqlite:///{INSTANCE_DIR / 'baton.db'}"
    # PostgreSQL connections each web or worker process may hold at once;
    # a request waits up to 10 s for one, then gets 503 database_unavailable.
    DATABASE_POOL_SIZE: int = 20
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    # Prefix of every Redis key and RQ queue name Baton owns, so two installs
    # (or a test run) can share one Redis without touching each other's data.
    REDIS_PREFIX: str = "baton"

    WHATSAPP_PROVIDER: str = "sandbox"
    WHATSAPP_APP_SECRET: str = ""
    WHATSAPP_VERIFY_TOKEN: str = ""
    WHATSAPP_ACCESS_TOKEN: str = ""
    WHATSAPP_API_BASE: str = "https://graph.facebook.com/v23.0"
    WHATSAPP_MPS: int = 80
    WASENDER_API_KEY: str = ""
    WASENDER_WEBHOOK_SECRET: str = ""
    WASENDER_API_BASE: str = "https://www.wasenderapi.com"
    SANDBOX_PHONE_NUMBER_ID: str = "sandbox-1"

    N8N_BOT_URL: str = ""
    N8N_NOTIFY_URL: str = ""
    BATON_EVENT_SECRET: str = ""
    EVENT_MAX_ATTEMPTS: int = 8
    EVENT_TIMEOUT: float = 10.0

    PUBLIC_BASE_URL: str = "http://127.0.0.1:8000"
    MEDIA_STORAGE_URL: str = f"file://{INSTANCE_DIR / 'media'}"
    MEDIA_URL_TTL: int = 300

    PENDING_TIMEOUT: int = 300
    PENDING_TIMEOUT_POLICY: str = "reroute"
    PENDING_TIMEOUT_GROUP: str = ""
    OFFER_TIMEOUT: int = 60
    AGENT_RESPONSE_TIMEOUT: int = 300
    AGENT_HEARTBEAT_TTL: int = 60
    AGENT_TYPING_TTL: int = 15
    COOLDOWN_INTERACTIONS: int = 3
    IDLE_CLOSE_AFTER: int = 86400
    PENDING_NOTICE_INTERVAL: int = 600
    BOT_HISTORY: int = 10
    ESCALATION_PHRASES_FILE: str = ""
    DEFAULT_GROUP: str = "support"
    # Offer a returning customer to the agent who served them last, when that
    # agent is online with free capacity.
    STICKY_ASSIGNMENT: bool = True
    # The bot reporting `intent: "fallback"` this many turns in a row escalates.
    BOT_FAILURE_LIMIT: int = 3
    # VADER compound score (-1 … 0, exclusive) at or below which a customer's
    # text escalates; languages the analyser reads (comma-separated: only
    # English today; empty turns the trigger off).
    SENTIMENT_THRESHOLD: float = -0.6
    SENTIMENT_LANGUAGES: str = "en"

    SECRET_KEY: str = ""
    METRICS_TOKEN: str = ""
    MAX_WEBHOOK_BYTES: int = 3 * 1024 * 1024
    SEND_MAX_ATTEMPTS: int = 6
    # Seconds a conversation lock lives without renewal; a crashed worker's
    # lock frees itself after this long.
    LOCK_TTL: float = 30.0
    # Messages recorded but not routed this many seconds later are re-queued
    # by the cron sweep (Redis lost the inbox, or a worker died mid-drain).
    REQUEUE_AFTER: int = 10
    # How long one pump job keeps draining before handing over to a fresh job.
    PUMP_BUDGET_SECONDS: float = 2.0
    # Pump jobs running at once per lane. With the Procfile's two workers, one
    # per lane keeps inbound and outbound flowing side by side; raise it when
    # you run more workers than lanes.
    PUMP_CONCURRENCY: int = 1
    # An idle pump waits this long for more work before its job ends, so under
    # steady traffic one job serves many messages.
    PUMP_LINGER: float = 0.1
    # A pump that stops renewing its slot (worker killed) frees it after this long.
    PUMP_LEASE: float = 30.0

    HANDOFF_NOTICE: str = "Thanks! I'm connecting you with a member of our team. They'll reply here shortly."
    PENDING_NOTICE: str = "You're in the queue — a member of our team will be with you soon."
    CALLBACK_NOTICE: str = ("Sorry, our team is busy right now. Leave your name, a phone number and a good "
                            "time to call, and we'll get back to you.")
    TIMEOUT_CLOSE_NOTICE: str = ("Sorry, nobody from our team is available right now. Please write to us "
                                 "again later — we'll be glad to help.")
    LOG_LEVEL: str = "INFO"
    TESTING: bool = False

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
    if not s.DATABASE_URL.startswith(("sqlite:///", "postgres://", "postgresql://")):
        raise ConfigError("DATABASE_URL must start with sqlite:///, postgres:// or postgresql://")
    if not s.REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")
    for name in ("WHATSAPP_MPS", "PENDING_TIMEOUT", "OFFER_TIMEOUT", "AGENT_HEARTBEAT_TTL", "AGENT_TYPING_TTL",
                 "BOT_HISTORY", "MEDIA_URL_TTL", "MAX_WEBHOOK_BYTES", "EVENT_MAX_ATTEMPTS", "SEND_MAX_ATTEMPTS",
                 "PUMP_CONCURRENCY", "PUMP_LEASE", "LOCK_TTL", "AGENT_RESPONSE_TIMEOUT", "DATABASE_POOL_SIZE",
                 "BOT_FAILURE_LIMIT"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(s, name)}")
    for name in ("COOLDOWN_INTERACTIONS", "PENDING_NOTICE_INTERVAL", "IDLE_CLOSE_AFTER", "REQUEUE_AFTER",
                 "PUMP_LINGER"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(s, name)}")
    if not -1 <= s.SENTIMENT_THRESHOLD < 0:
        raise ConfigError(f"SENTIMENT_THRESHOLD must be at least -1 and below 0, got {s.SENTIMENT_THRESHOLD}")
    unreadable = {x.strip().split("-")[0].lower() for x in s.SENTIMENT_LANGUAGES.split(",") if x.strip()} - {"en"}
    if unreadable:
        raise ConfigError(f"SENTIMENT_LANGUAGES: the analyser reads English only, not {', '.join(sorted(unreadable))}")
    if s.ESCALATION_PHRASES_FILE and not Path(s.ESCALATION_PHRASES_FILE).is_file():
        raise ConfigError(f"ESCALATION_PHRASES_FILE {s.ESCALATION_PHRASES_FILE!r} is not a readable file")


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
