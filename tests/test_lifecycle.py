"""Tokens and agents have a life cycle (issue 11, part 1): tokens are listed and
revoked (CLI and API) and stop working at once; an agent is deactivated and
nobody is left waiting on them; guessing tokens is slowed down (429 with
Retry-After, counted per address in Redis across processes); weak secrets stop
the process at start; run.sh writes `.env` for its owner only and prints an
admin token only on the first run or when asked."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from config import ConfigError, load_settings
from models import Agent, ApiToken, Conversation, Message
from tests.support import (ASK_FOR_A_HUMAN, bearer, conversation_of, customer_says, settle, trail,
                           waiting_customer)

ROOT = Path(__file__).resolve().parent.parent
STRONG = "x" * 32


# -- tokens ------------------------------------------------------------------------------------------

def test_flask_baton_token_list_shows_tokens_without_secrets_and_revoke_stops_one_at_once(app, runner, client):
    bot, bot_secret = ApiToken.issue("n8n", "bot")
    admin, _ = ApiToken.issue("root", "admin")
    assert client.get("/api/v1/conversations", headers=bearer(bot_secret)).status_code == 200
    listed = runner.invoke(args=["baton", "token", "list"])
    assert listed.exit_code == 0 and bot.id in listed.output and admin.id in listed.output
    assert bot_secret not in listed.output and bot.token_hash not in listed.output
    assert runner.invoke(args=["baton", "token", "count", "--role", "admin"]).output.strip() == "1"

    revoked = runner.invoke(args=["baton", "token", "revoke", bot.id])
    assert revoked.exit_code == 0, revoked.output
    answer = client.get("/api/v1/conversations", headers=bearer(bot_secret))
    assert (answer.status_code, answer.json["error"]) == (401, "unauthorized")
    assert bot.id not in runner.invoke(args=["baton", "token", "list"]).output
    assert "revoked" in runner.invoke(args=["baton", "token", "list", "--all"]).output
    assert runner.invoke(args=["baton", "token", "count", "--role", "bot"]).output.strip() == "0"
    unknown = runner.invoke(args=["baton", "token", "revoke", "tk_nope"])
    assert unknown.exit_code != 0 and "no token tk_nope" in unknown.output


def test_admins_list_and_revoke_tokens_through_the_api(app, client, admin_token):
    bot, bot_secret = ApiToken.issue("n8n", "bot")
    listed = client.get("/api/v1/tokens?role=bot", headers=bearer(admin_token)).json["items"]
    assert [t["id"] for t in listed] == [bot.id] and "token_hash" not in listed[0]
    assert client.delete(f"/api/v1/tokens/{bot.id}", headers=bearer(bot_secret)).status_code == 403
    first = client.delete(f"/api/v1/tokens/{bot.id}", headers=bearer(admin_token))
    assert first.status_code == 200 and first.json["revoked_at"]
    again = client.delete(f"/api/v1/tokens/{bot.id}", headers=bearer(admin_token))
    assert again.json["revoked_at"] == first.json["revoked_at"]           # revoking twice changes nothing
    assert client.get("/api/v1/conversations", headers=bearer(bot_secret)).status_code == 401
    assert client.get("/api/v1/tokens?role=bot", headers=bearer(admin_token)).json["items"] == []
    assert len(client.get("/api/v1/tokens?role=bot&revoked=true", headers=bearer(admin_token)).json["items"]) == 1
    assert client.delete("/api/v1/tokens/tk_nope", headers=bearer(admin_token)).status_code == 404


def test_an_admin_cannot_revoke_their_own_token_or_deactivate_themselves(desk, team):
    boss = team.add("boss", role="admin")
    client = desk.test_client()
    [own] = ApiToken.select().where(ApiToken.agent_id == boss.id)
    refused = team.call("boss", "DELETE", f"/api/v1/tokens/{own.id}")
    assert (refused.status_code, refused.json["error"]) == (409, "own_token")
    refused = team.call("boss", "POST", f"/api/v1/agents/{boss.id}/deactivate")
    assert (refused.status_code, refused.json["error"]) == (409, "own_agent")
    assert ApiToken.get_by_id(own.id).revoked_at is None and Agent.get_by_id(boss.id).deactivated_at is None
    assert client.get("/api/v1/agents/me", headers=bearer(team.token["boss"])).status_code == 200


# -- deactivating an agent ------------------------------------------------------------------------------

def test_a_deactivated_agents_offer_moves_on_and_their_token_stops_at_once(desk, team, admin_token):
    team.add("ana")
    conv = waiting_customer(desk)
    assert conv.offered_agent_id == team.id("ana")
    team.add("bo")
    answer = desk.test_client().post(f"/api/v1/agents/{team.id('ana')}/deactivate", headers=bearer(admin_token))
    assert answer.status_code == 200, answer.json
    assert (answer.json["offers_moved"], answer.json["tokens_revoked"]) == (1, 1)
    assert answer.json["agent"]["deactivated_at"] and answer.json["agent"]["online"] is False
    assert conversation_of().offered_agent_id == team.id("bo")
    assert ("PENDING_AGENT", "PENDING_AGENT", "offer_withdrawn") in trail(conv.id)
    me = team.call("ana", "GET", "/api/v1/agents/me")
    assert (me.status_code, me.json["error"]) == (401, "unauthorized")
    assert team.act("ana", "claim", conv.id).status_code == 401


def test_a_deactivated_agents_conversation_goes_back_to_the_queue_to_the_next_agent(desk, team, admin_token, n8n):
    team.add("ana")
    conv = waiting_customer(desk)
    assert team.act("ana", "claim", conv.id).status_code == 200
    epoch = conversation_of().control_epoch
    team.add("bo")
    result = desk.test_cli_runner().invoke(args=["baton", "agent", "deactivate", team.id("ana")])
    assert result.exit_code == 0 and "1 conversation(s) back in the queue" in result.output, result.output
    now = conversation_of()
    assert (now.state, now.assigned_agent_id, now.offered_agent_id) == ("PENDING_AGENT", None, team.id("bo"))
    assert now.control_epoch == epoch + 1
    assert ("AGENT_CONTROLLED", "PENDING_AGENT", "agent_deactivated") in trail(conv.id)
    assert team.act("bo", "claim", conv.id).status_code == 200
    customer_says(desk, "are you still there?")
    settle(desk)
    assert Message.select().where(Message.text == "are you still there?").get().routed_to == "agent"
    assert conversation_of().assigned_agent_id == team.id("bo")
    # ana is never offered anything again, even online with a fresh heartbeat in Redis
    desk.extensions["baton"].presence.heartbeat(team.id("ana"), "online")
    team.offline("bo")
    customer_says(desk, ASK_FOR_A_HUMAN, wa_id="15557770001")
    settle(desk)
    assert conversation_of("15557770001").offered_agent_id is None
    online = team.call("bo", "GET", "/api/v1/agents/online")
    assert online.status_code == 200
    assert team.id("ana") not in [a["id"] for a in online.json["items"]]


def test_deactivating_an_unknown_agent_is_404_and_twice_changes_nothing(desk, team, admin_token):
    client = desk.test_client()
    assert client.post("/api/v1/agents/a_nope/deactivate", headers=bearer(admin_token)).status_code == 404
    team.add("ana")
    first = client.post(f"/api/v1/agents/{team.id('ana')}/deactivate", headers=bearer(admin_token)).json
    second = client.post(f"/api/v1/agents/{team.id('ana')}/deactivate", headers=bearer(admin_token)).json
    assert second["agent"]["deactivated_at"] == first["agent"]["deactivated_at"]
    assert (second["tokens_revoked"], second["offers_moved"], second["conversations_requeued"]) == (0, 0, 0)
    cli = desk.test_cli_runner().invoke(args=["baton", "agent", "deactivate", "a_nope"])
    assert cli.exit_code != 0 and "no agent a_nope" in cli.output


def test_messages_held_for_a_deactivated_typing_supervisor_go_to_the_bot_in_order(desk, team, admin_token):
    team.add("sue", role="supervisor")
    customer_says(desk, "hello")
    settle(desk)
    conv = conversation_of()
    assert team.call("sue", "POST", f"/api/v1/conversations/{conv.id}/typing", {"typing": True}).status_code == 204
    customer_says(desk, "first")
    customer_says(desk, "second")
    settle(desk)
    assert [m.routed_to for m in Message.select().where(Message.text.in_(["first", "second"]))] == ["held", "held"]
    desk.test_client().post(f"/api/v1/agents/{team.id('sue')}/deactivate", headers=bearer(admin_token))
    settle(desk)
    held = Message.select().where(Message.text.in_(["first", "second"])).order_by(Message.seq)
    assert [m.routed_to for m in held] == ["bot", "bot"]
    assert Conversation.get_by_id(conv.id).held_since is None


# -- brute force ----------------------------------------------------------------------------------------

def test_repeated_bad_tokens_from_one_address_answer_429_with_retry_after(app_factory, admin_token):
    app = app_factory(AUTH_FAILURE_LIMIT=3, AUTH_FAILURE_WINDOW=120)
    client = app.test_client()
    for _ in range(3):
        assert client.get("/api/v1/conversations", headers=bearer("bt_guess")).status_code == 401
    locked = client.get("/api/v1/conversations", headers=bearer("bt_guess"))
    assert (locked.status_code, locked.json["error"]) == (429, "too_many_auth_failures")
    assert 0 < int(locked.headers["Retry-After"]) <= 120
    # the right token from that address waits too (a guess that hits must not be told so)
    assert client.get("/api/v1/conversations", headers=bearer(admin_token)).status_code == 429
    # another address is not affected; the count is shared by every process (Redis)
    other = app_factory(AUTH_FAILURE_LIMIT=3, AUTH_FAILURE_WINDOW=120).test_client()
    assert other.get("/api/v1/conversations", headers=bearer(admin_token),
                     environ_base={"REMOTE_ADDR": "10.0.0.7"}).status_code == 200
    assert other.get("/api/v1/conversations", headers=bearer(admin_token)).status_code == 429
    # no credential at all is not a guess: a plain 401, not counted
    assert client.get("/api/v1/conversations", environ_base={"REMOTE_ADDR": "10.0.0.8"}).status_code == 401
    # when the window ends the address may try again
    rt = app.extensions["baton"]
    rt.redis.delete(f"{rt.settings.REDIS_PREFIX}:authfail:127.0.0.1")
    assert client.get("/api/v1/conversations", headers=bearer(admin_token)).status_code == 200


def test_a_lockout_ends_by_itself_when_the_window_ends(app_factory, admin_token):
    app = app_factory(AUTH_FAILURE_LIMIT=1, AUTH_FAILURE_WINDOW=1)
    client = app.test_client()
    assert client.get("/api/v1/conversations", headers=bearer("bt_guess")).status_code == 401
    assert client.get("/api/v1/conversations", headers=bearer(admin_token)).status_code == 429
    rt = app.extensions["baton"]
    from tests.support import wait_until

    wait_until(lambda: not rt.redis.exists(f"{rt.settings.REDIS_PREFIX}:authfail:127.0.0.1"), timeout=5,
               what="the failure window to end")
    assert client.get("/api/v1/conversations", headers=bearer(admin_token)).status_code == 200


def test_metrics_token_guesses_are_counted_too(app_factory):
    metrics_token = "m" * 40
    app = app_factory(METRICS_TOKEN=metrics_token, AUTH_FAILURE_LIMIT=2)
    client = app.test_client()
    assert client.get("/metrics").status_code == 401                      # no credential: not counted
    for _ in range(2):
        assert client.get("/metrics", headers=bearer("wrong")).status_code == 401
    locked = client.get("/metrics", headers=bearer(metrics_token))
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert client.get("/metrics", headers=bearer(metrics_token),
                      environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 200


def test_the_lockout_fails_open_while_redis_is_down(app, admin_token, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    def down(*args, **kwargs):
        raise RedisConnectionError("down")

    client = app.test_client()
    client.get("/api/v1/conversations", headers=bearer(admin_token))      # the counter exists
    counter = app.extensions["baton_auth_failures"]
    monkeypatch.setattr(counter, "_record", down)
    monkeypatch.setattr(counter.redis, "pipeline", down)
    assert client.get("/api/v1/conversations", headers=bearer("bt_guess")).status_code == 401
    assert client.get("/api/v1/conversations", headers=bearer(admin_token)).status_code == 200


# -- weak configurations --------------------------------------------------------------------------------

BASE = {"WHATSAPP_APP_SECRET": "s"}


@pytest.mark.parametrize("url", ["N8N_BOT_URL", "N8N_NOTIFY_URL"])
def test_n8n_urls_without_an_event_secret_are_refused(url):
    with pytest.raises(ConfigError, match=f"BATON_EVENT_SECRET is required when {url} is set"):
        load_settings(environ={**BASE, url: "https://n8n.example.com/webhook/x"})
    load_settings(environ={**BASE, url: "https://n8n.example.com/webhook/x", "BATON_EVENT_SECRET": STRONG})


@pytest.mark.parametrize("name", ["BATON_EVENT_SECRET", "SECRET_KEY"])
def test_a_secret_shorter_than_32_characters_is_refused(name):
    with pytest.raises(ConfigError, match=f"{name} must be at least 32 characters, got 31"):
        load_settings(environ={**BASE, name: "x" * 31})
    assert getattr(load_settings(environ={**BASE, name: STRONG}), name) == STRONG


def test_no_event_secret_and_no_n8n_is_allowed():
    assert load_settings(environ=BASE).BATON_EVENT_SECRET == ""


@pytest.mark.parametrize("name", ["AUTH_FAILURE_LIMIT", "AUTH_FAILURE_WINDOW"])
def test_the_lockout_settings_must_be_positive(name):
    with pytest.raises(ConfigError, match=f"{name} must be positive"):
        load_settings(environ={**BASE, name: "0"})


# -- run.sh ---------------------------------------------------------------------------------------------

@pytest.fixture
def run_sh_copy(tmp_path, redis_server):
    """run.sh in a copy of the repository, whose Procfile only says it started
    (honcho runs it and ends); the environment points it at the test Redis and
    a fresh SQLite file."""
    copy = tmp_path / "baton"
    # Not `git ls-files`: the suite also runs in a copy of the repository without .git.
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".env", "instance", "__pycache__", "results", ".pytest_cache", "node_modules"))
    (copy / ".venv").symlink_to((ROOT / ".venv").resolve())
    (copy / "Procfile").write_text("web: echo web-started\n")
    # What ensure_python_env leaves once the pinned requirements are installed (they are: the tests run).
    digest = subprocess.run("cat requirements*.txt | sha256sum | cut -c1-16", shell=True, cwd=copy,
                            capture_output=True, text=True, check=True).stdout.strip()
    (copy / ".venv" / f".installed-{digest}-requirements.txt").touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATON_", "WHATSAPP_", "N8N_"))}
    env.update(REDIS_URL=redis_server.url, REDIS_PREFIX="runsh", DATABASE_URL=f"sqlite:///{tmp_path / 'run.db'}",
               BATON_BIND="127.0.0.1:1", MEDIA_STORAGE_URL=f"file://{tmp_path / 'media'}")

    def run(*args: str) -> str:
        done = subprocess.run(["bash", "run.sh", *args], cwd=copy, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout
    run.dir = copy
    return run


def _admin_tokens(run_dir: Path) -> int:
    out = subprocess.run([str(run_dir / ".venv" / "bin" / "flask"), "--app", "app", "baton", "token", "count",
                          "--role", "admin"], cwd=run_dir, capture_output=True, text=True, check=True,
                         env={**os.environ, "DATABASE_URL": f"sqlite:///{run_dir.parent / 'run.db'}"})
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.processes        # runs ./run.sh: real gunicorn, workers and cron
@pytest.mark.timeout(300)
def test_run_sh_writes_env_for_its_owner_and_an_admin_token_only_on_the_first_run_or_when_asked(run_sh_copy):
    first = run_sh_copy()
    env_file = run_sh_copy.dir / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    secrets = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert all(len(secrets[name]) >= 32 for name in ("BATON_EVENT_SECRET", "SECRET_KEY", "WHATSAPP_APP_SECRET"))
    assert "Admin token    bt_" in first and "web-started" in first
    assert _admin_tokens(run_sh_copy.dir) == 1

    env_file.chmod(0o644)                      # written by an older run.sh
    second = run_sh_copy()
    assert "bt_" not in second and "./run.sh --new-admin-token" in second and "token list" in second
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert _admin_tokens(run_sh_copy.dir) == 1

    third = run_sh_copy("--new-admin-token")
    assert "Admin token    bt_" in third
    assert _admin_tokens(run_sh_copy.dir) == 2


def test_nobody_can_transfer_a_conversation_to_a_deactivated_agent(desk, team, admin_token):
    team.add("ana")
    team.add("bo")
    conv = waiting_customer(desk)
    holder = "ana" if conv.offered_agent_id == team.id("ana") else "bo"
    other = "bo" if holder == "ana" else "ana"
    assert team.act(holder, "claim", conv.id).status_code == 200
    desk.test_client().post(f"/api/v1/agents/{team.id(other)}/deactivate", headers=bearer(admin_token))
    desk.extensions["baton"].presence.heartbeat(team.id(other), "online")     # a stale mirror in Redis
    before = conversation_of()
    refused = team.act(holder, "transfer", conv.id, {"agent_id": team.id(other)})
    assert (refused.status_code, refused.json["error"]) == (409, "agent_unavailable")
    assert conversation_of().version == before.version
