"""`flask --app app baton …`: schema, tokens, the sandbox simulator, outbox, deliveries."""
from __future__ import annotations

import logging
import os
import time

import click
import orjson
import requests
from flask import Flask, current_app
from flask.cli import AppGroup

from integrations.signing import signature
from models import (
    ApiToken,
    Channel,
    Contact,
    Conversation,
    DeadLetter,
    Delivery,
    Message,
    OutboxEntry,
    db,
)
from models.token import ROLES

baton = AppGroup("baton", help="Baton administration.")


def init_app(app: Flask) -> None:
    app.cli.add_command(baton)


def _rt():
    db.connect(reuse_if_open=True)
    return current_app.extensions["baton"]


@baton.command("init-db")
def init_db():
    """Create the schema or apply pending migrations (safe to re-run)."""
    from models.schema import init_schema, missing_from_schema

    _rt()
    changes = init_schema()
    for line in changes:
        click.echo(line)
    click.echo("schema is up to date" if not changes else f"{len(changes)} change(s) applied")
    missing = missing_from_schema()
    if missing:
        raise click.ClickException("the models need what no migration created: " + ", ".join(missing)
                                   + " (add a migration to models/migrations/)")


@baton.command("migrations")
def migrations():
    """List schema migrations: applied (with when) and pending."""
    from models.schema import migration_status

    _rt()
    for row in migration_status():
        when = "pending" if row.applied is None else f"applied {row.applied:%Y-%m-%d %H:%M:%S}"
        newer = "  (no file here: applied by a newer Baton)" if row.path is None else ""
        click.echo(f"{row.name:<40} {when}{newer}")


@baton.group("token")
def token():
    """API tokens."""


@token.command("add")
@click.option("--role", type=click.Choice([r for r in ROLES if r in ("bot", "admin", "supervisor")]),
              required=True)
@click.option("--name", required=True)
def token_add(role, name):
    """Create a token; the secret is printed once, alone on the last line."""
    _rt()
    row, secret = ApiToken.issue(name=name, role=role)
    click.echo(f"created {role} token {row.id} ({name}); store it now, it is not shown again:")
    click.echo(secret)


def _tokens(role: str | None, revoked: bool):
    rows = ApiToken.select()
    if role:
        rows = rows.where(ApiToken.role == role)
    if not revoked:
        rows = rows.where(ApiToken.revoked_at.is_null())
    return rows.order_by(ApiToken.created_at, ApiToken.id)


@token.command("list")
@click.option("--role", type=click.Choice(ROLES), help="only tokens of this role")
@click.option("--all", "show_all", is_flag=True, help="revoked tokens too")
def token_list(role, show_all):
    """Tokens (never their secrets): id, role, name, agent, created, revoked."""
    _rt()
    for row in _tokens(role, show_all):
        revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M:%S}" if row.revoked_at else "active"
        click.echo(f"{row.id}  {row.role:<10} {row.name:<24} agent={row.agent_id or '-':<14} "
                   f"created {row.created_at:%Y-%m-%d %H:%M:%S}  {revoked}")


@token.command("count")
@click.option("--role", type=click.Choice(ROLES), help="only tokens of this role")
def token_count(role):
    """How many tokens work (not revoked); run.sh asks it whether an admin token exists yet."""
    _rt()
    click.echo(_tokens(role, False).count())


@token.command("revoke")
@click.argument("token_id")
def token_revoke(token_id):
    """Revoke a token: every call made with it from now on is a 401, and its live streams end."""
    from routing.live import end_streams_of

    rt = _rt()
    row = ApiToken.revoke(token_id)
    if row is None:
        raise click.ClickException(f"no token {token_id} (see `flask baton token list --all`)")
    end_streams_of(rt.redis, rt.settings.REDIS_PREFIX, [row.id])
    click.echo(f"revoked {row.role} token {row.id} ({row.name}) at {row.revoked_at:%Y-%m-%d %H:%M:%S}")


@baton.group("agent")
def agent():
    """Agents."""


@agent.command("add")
@click.option("--name", required=True)
@click.option("--groups", default="support", show_default=True, help="comma-separated")
@click.option("--max-concurrent", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--role", type=click.Choice(["agent", "supervisor", "admin"]), default="agent", show_default=True)
def agent_add(name, groups, max_concurrent, role):
    """Create an agent; its token is printed once, alone on the last line."""
    from marshmallow import ValidationError

    from blueprints.schemas import AgentCreateSchema
    from routing.agents import create_agent

    _rt()
    try:
        data = AgentCreateSchema().load({"name": name, "role": role, "max_concurrent": max_concurrent,
                                         "groups": [g.strip() for g in groups.split(",") if g.strip()]})
    except ValidationError as exc:
        raise click.UsageError(f"invalid agent: {exc.messages}") from None
    row, secret = create_agent(data["name"], data["role"], data["groups"], data["max_concurrent"])
    click.echo(f"created {role} {row.id} ({name}; groups {', '.join(row.groups)}; max {row.max_concurrent}); "
               "store the token now, it is not shown again:")
    click.echo(secret)


@agent.command("deactivate")
@click.argument("agent_id")
def agent_deactivate(agent_id):
    """Deactivate an agent: tokens revoked, offers moved on, conversations back to the queue."""
    from routing.deactivation import deactivate_agent
    from routing.errors import NotFound

    rt = _rt()
    try:
        done = deactivate_agent(rt.changes, rt.presence, agent_id)
    except NotFound:
        raise click.ClickException(f"no agent {agent_id}") from None
    click.echo(f"deactivated {done.agent.id} ({done.agent.name}): {done.tokens_revoked} token(s) revoked, "
               f"{done.offers_moved} offer(s) moved on, {done.conversations_requeued} conversation(s) back in "
               "the queue")


def signed_text_webhook(settings, wa_id: str, text: str, name: str, message_id: str | None = None,
                        timestamp: int | None = None) -> tuple[bytes, dict]:
    """A Cloud API text webhook body and headers, signed exactly like Meta signs."""
    body = {"object": "whatsapp_business_account", "entry": [{"id": "sandbox-waba", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000",
                         "phone_number_id": settings.SANDBOX_PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [{"from": wa_id, "id": message_id or "wamid.SIM" + os.urandom(12).hex().upper(),
                          "timestamp": str(timestamp or int(time.time())), "type": "text",
                          "text": {"body": text}}]}}]}]}
    raw = orjson.dumps(body)
    return raw, {"Content-Type": "application/json",
                 "X-Hub-Signature-256": signature(settings.WHATSAPP_APP_SECRET, raw)}


@baton.command("simulate")
@click.option("--from", "wa_id", required=True, help="the customer's WhatsApp id (digits)")
@click.option("--text", required=True)
@click.option("--name", default="Sandbox Customer")
@click.option("--url", default=None, help="webhook URL (default: PUBLIC_BASE_URL/webhooks/whatsapp)")
@click.option("--wait", default=5.0, show_default=True, help="seconds to watch for the outcome (0: don't)")
def simulate(wa_id, text, name, url, wait):
    """Send a correctly signed Cloud API webhook to the running app."""
    rt = _rt()
    settings = rt.settings
    url = url or f"{settings.PUBLIC_BASE_URL.rstrip('/')}/webhooks/whatsapp"
    raw, headers = signed_text_webhook(settings, wa_id, text, name)
    started = time.time()
    try:
        response = requests.post(url, data=raw, headers=headers, timeout=10)
    except requests.RequestException as exc:
        raise click.ClickException(f"could not reach {url}: {exc}") from None
    click.echo(f"POST {url} → {response.status_code} {response.text.strip()}")
    if response.status_code != 200 or wait <= 0:
        return
    _watch(settings, wa_id, started, wait)


def _watch(settings, wa_id: str, started: float, wait: float) -> None:
    from datetime import datetime, timezone

    since = datetime.fromtimestamp(started - 1, timezone.utc).replace(tzinfo=None)
    seen: set[str] = set()
    deadline = time.time() + wait
    conv = None
    while time.time() < deadline:
        conv = (Conversation.select().join(Contact).join(Channel, on=(Contact.channel == Channel.id))
                .where((Contact.wa_id == wa_id) & (Channel.provider == settings.WHATSAPP_PROVIDER)).first())
        if conv is not None:
            rows = (Message.select().where((Message.conversation == conv.id) & (Message.received_at >= since))
                    .order_by(Message.received_at, Message.id))
            for m in rows:
                key = f"{m.id}:{m.routed_to}:{m.status}"
                if key in seen or (m.direction == "in" and m.routed_to is None) or \
                        (m.direction == "out" and m.status == "queued"):
                    continue
                seen.add(key)
                if m.direction == "in":
                    click.echo(f"  routed to {m.routed_to}: {m.text!r}")
                else:
                    click.echo(f"  {m.sender} → customer [{m.status}]: {m.text!r}")
        time.sleep(0.2)
    if conv is not None:
        conv = Conversation.get_by_id(conv.id)
        click.echo(f"conversation {conv.id} is {conv.state}")


@baton.command("outbox")
@click.option("--limit", default=20, show_default=True)
def outbox(limit):
    """What the sandbox provider "sent", newest last."""
    _rt()
    rows = list(OutboxEntry.select().order_by(OutboxEntry.created_at.desc(), OutboxEntry.id.desc()).limit(limit))
    for row in reversed(rows):
        payload = row.payload or {}
        text = (payload.get("text") or {}).get("body") or payload.get("type")
        click.echo(f"{row.created_at:%Y-%m-%d %H:%M:%S}  to {row.to}: {text}")
    if not rows:
        click.echo("the outbox is empty")


@baton.command("deliveries")
@click.option("--failed", is_flag=True, help="only deliveries that failed for good")
@click.option("--replay", "replay_id", default=None, help="queue this delivery again")
@click.option("--limit", default=20, show_default=True)
def deliveries(failed, replay_id, limit):
    """n8n event deliveries and their retries."""
    rt = _rt()
    if replay_id:
        from jobs.deliver import replay_delivery

        if Delivery.get_or_none(Delivery.id == replay_id) is None:
            raise click.ClickException(f"no delivery {replay_id}")
        row = replay_delivery(replay_id, rt)
        click.echo(f"{row.id} queued again ({row.event_type} → {row.url})")
        return
    rows = Delivery.select()
    if failed:
        rows = rows.where(Delivery.status == "failed")
    for row in rows.order_by(Delivery.created_at.desc()).limit(limit):
        click.echo(f"{row.id}  {row.status:9}  {row.event_type:20} attempts={row.attempts} "
                   f"{row.last_error or ''}".rstrip())


@baton.group("dead-letters")
def dead_letters_group():
    """Inbound messages set aside after ROUTE_MAX_ATTEMPTS failed routing attempts."""


@dead_letters_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="retried ones too")
@click.option("--limit", default=20, show_default=True)
def dead_letters_list(show_all, limit):
    """The dead letters waiting to be retried, newest first."""
    _rt()
    rows = DeadLetter.select()
    if not show_all:
        rows = rows.where(DeadLetter.retried_at.is_null())
    rows = list(rows.order_by(DeadLetter.created_at.desc(), DeadLetter.id.desc()).limit(limit))
    for row in rows:
        retried = f"  retried {row.retried_at:%Y-%m-%d %H:%M:%S}" if row.retried_at else ""
        click.echo(f"{row.id}  {row.created_at:%Y-%m-%d %H:%M:%S}  message {row.message_id} of "
                   f"{row.conversation_id}  attempts={row.attempts}{retried}  {row.error.splitlines()[0]}")
    if not rows:
        click.echo("no dead letters")


@dead_letters_group.command("retry")
@click.argument("dead_letter_id")
def dead_letters_retry(dead_letter_id):
    """Send a dead letter's message back to routing."""
    from routing import dead_letters
    from routing.errors import DomainError

    rt = _rt()
    try:
        row = dead_letters.retry(rt.changes, dead_letter_id)
    except DomainError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{row.id}: message {row.message_id} goes back to routing")


WORKER_QUEUES = ("inbound", "outbound", "events", "media", "default")


@baton.command("worker")
@click.option("--burst", is_flag=True, help="exit when the queues are empty")
@click.option("--queue", "queue_names", multiple=True, type=click.Choice(WORKER_QUEUES),
              help="listen on this queue only (repeatable; default: all of them). E.g. a worker for "
                   "`--queue media` alone, and the others on the rest, keeps media downloads off the lanes' workers")
def worker(burst, queue_names):
    """Run WORKER_THREADS RQ workers on Baton's queues, as threads of this process
    (no fork per job: SimpleWorker)."""
    from config import ConfigError, validate_for_worker, worker_threads
    from jobs.context import set_runtime
    from jobs.worker import run_worker

    rt = _rt()
    try:
        validate_for_worker(rt.settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    set_runtime(rt)
    run_worker(rt, threads=worker_threads(rt.settings), burst=burst, logging_level=_rq_log_level(rt.settings),
               queue_names=queue_names)


def _rq_log_level(settings) -> str:
    """RQ logs every job at INFO; with timers due every second that buries
    Baton's own log lines, so RQ speaks up only from WARNING (or at DEBUG)."""
    return "DEBUG" if settings.LOG_LEVEL == "DEBUG" else (
        settings.LOG_LEVEL if logging.getLevelName(settings.LOG_LEVEL) > logging.WARNING else "WARNING")


@baton.command("cron")
def cron():
    """Run RQ's cron scheduler with Baton's timers (tick every 1 s, sweep every 5 s)."""
    from jobs.cron import CronScheduler, register_timers

    rt = _rt()
    logging.getLogger("rq.cron").setLevel(_rq_log_level(rt.settings))
    scheduler = CronScheduler(connection=rt.redis, logging_level=_rq_log_level(rt.settings))
    register_timers(scheduler, rt.settings)
    scheduler.start()
