"""Writes that commit are answered as committed.

A change is dispatched (lanes scheduled in Redis, live events, offers) only
after it commits. Redis going away at that moment once made the API answer 503
for a change that had happened, and a client retrying that 503 made it twice.
Now dispatch is best effort and the cron sweep picks the work up; and every
write route takes an `Idempotency-Key` whose replay returns the first answer."""
from __future__ import annotations

from io import BytesIO
from urllib.parse import urlparse

import pytest

from jobs import timers
from jobs.context import set_runtime
from models import Agent, Delivery, Event, Media, Message, OutboxEntry
from routing.effects import Effects
from tests.support import ASK_FOR_A_HUMAN, Team, bearer, outbox_texts, settle, waiting_customer
from tests.tcp_proxy import SwitchableProxy
from tests.upload_files import png

WRITE_METHODS = {"POST", "PATCH", "PUT", "DELETE"}


@pytest.fixture
def redis_proxy(settings_overrides):
    port = urlparse(settings_overrides["REDIS_URL"]).port
    with SwitchableProxy(port) as proxy:
        yield proxy


@pytest.fixture
def proxied_app(app_factory, redis_proxy, settings_overrides, n8n):
    """An app reaching Redis through a proxy the test can cut; the sweep re-dispatches at once."""
    url = urlparse(settings_overrides["REDIS_URL"])
    app = app_factory(REDIS_URL=url._replace(netloc=f"127.0.0.1:{redis_proxy.port}").geturl(),
                      REQUEUE_AFTER=0, N8N_NOTIFY_URL=n8n.url_for("baton-notify"))
    set_runtime(app.extensions["baton"])
    return app


@pytest.fixture
def redis_goes_after_the_commit(monkeypatch, redis_proxy):
    """Arm it, and the next write transaction's commit is followed at once by Redis
    going away (every connection reset, new ones refused), before anything is dispatched."""
    state = {"armed": False}
    real = Effects.commit

    def commit(self):
        real(self)
        if state["armed"] and self.writes:
            state["armed"] = False
            redis_proxy.down()
    monkeypatch.setattr(Effects, "commit", commit)
    return state


def recover(app, proxy: SwitchableProxy) -> None:
    """Redis is back: the cron sweep runs, then the jobs it started."""
    proxy.up()
    set_runtime(app.extensions["baton"])
    timers.sweep()
    settle(app)


def test_an_agent_reply_committed_just_before_redis_went_away_is_answered_202_and_sent_once(
        proxied_app, redis_proxy, redis_goes_after_the_commit):
    team = Team(proxied_app)
    team.add("ana")
    conv = waiting_customer(proxied_app, ASK_FOR_A_HUMAN, wa_id="15550002222")
    assert team.act("ana", "claim", conv.id).status_code == 200
    settle(proxied_app)
    redis_goes_after_the_commit["armed"] = True
    answer = team.call("ana", "POST", f"/api/v1/conversations/{conv.id}/messages", {"text": "Ana here, hi!"})
    assert answer.status_code == 202, answer.get_data(as_text=True)      # was 503: retried, sent twice
    assert not redis_goes_after_the_commit["armed"]                     # Redis did go away after the commit
    [stored] = Message.select().where(Message.text == "Ana here, hi!")
    assert stored.status == "queued" and answer.json["message"]["id"] == stored.id
    recover(proxied_app, redis_proxy)
    assert outbox_texts("15550002222").count("Ana here, hi!") == 1
    assert Message.get_by_id(stored.id).status == "sent"


def test_a_close_committed_just_before_redis_went_away_is_answered_200_and_its_event_still_goes(
        proxied_app, redis_proxy, redis_goes_after_the_commit, n8n, monkeypatch):
    monkeypatch.setattr("routing.assignment.STALE_RESERVATION_SECONDS", 0)   # the repair's grace, passed
    team = Team(proxied_app)
    team.add("ana")
    conv = waiting_customer(proxied_app, ASK_FOR_A_HUMAN, wa_id="15550003333")
    assert team.act("ana", "claim", conv.id).status_code == 200
    settle(proxied_app)
    redis_goes_after_the_commit["armed"] = True
    answer = team.act("ana", "close", conv.id)
    assert answer.status_code == 200 and answer.json["state"] == "CLOSED"
    recover(proxied_app, redis_proxy)
    assert Delivery.get(Delivery.event_type == "conversation.closed").status == "delivered"
    assert len(n8n.received("conversation.closed")) == 1
    # The agent's seat was freed by the sweep's repair, though the release after the commit failed.
    assert proxied_app.extensions["baton"].presence.loads([team.id("ana")])[team.id("ana")] == 0


def test_every_write_route_of_the_api_takes_an_idempotency_key(app):
    from blueprints.api import view_meta

    writes = {(rule.rule, method): app.view_functions[rule.endpoint] for rule in app.url_map.iter_rules()
              for method in rule.methods & WRITE_METHODS if rule.rule.startswith("/api/v1/")}
    assert len(writes) > 10, "the write routes were not found"
    assert sorted(route for route, view in writes.items() if not view_meta(view).get("idempotent")) == []
    spec = app.test_client().get("/openapi.json").json
    for rule, method in writes:
        path = rule.replace("<", "{").replace(">", "}")
        names = {p.get("name") for p in spec["paths"][path][method.lower()].get("parameters", [])}
        assert "Idempotency-Key" in names, (rule, method)


def _replayed(client, method: str, path: str, token: str, key: str, upload: bytes | None = None, **request):
    """The same call twice with one Idempotency-Key: (first answer, the replay).
    `upload`: a PNG sent as multipart `file` (a fresh stream for each call)."""
    def call():
        if upload is not None:
            request.update(content_type="multipart/form-data",
                           data={"file": (BytesIO(upload), "dot.png", "image/png")})
        return client.open(path, method=method, headers={**bearer(token), "Idempotency-Key": key}, **request)
    return call(), call()


def test_replays_return_the_first_answer_and_change_nothing_again(app, admin_token):
    team = Team(app)
    team.add("ana")
    conv = waiting_customer(app, ASK_FOR_A_HUMAN, wa_id="15550004444")
    client = app.test_client()
    ana = team.token["ana"]

    first, again = _replayed(client, "POST", f"/api/v1/conversations/{conv.id}/claim", ana, "claim-1")
    assert first.status_code == again.status_code == 200 and first.json == again.json

    first, again = _replayed(client, "POST", f"/api/v1/conversations/{conv.id}/messages", ana, "msg-1",
                             json={"text": "only once"})
    assert first.status_code == again.status_code == 202 and first.json == again.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert Message.select().where(Message.text == "only once").count() == 1

    first, again = _replayed(client, "POST", "/api/v1/media", ana, "upload-1", upload=png())
    assert first.status_code == again.status_code == 201 and first.json["id"] == again.json["id"]
    assert Media.select().where(Media.direction == "out").count() == 1

    first, again = _replayed(client, "PATCH", "/api/v1/agents/me", ana, "away-1", json={"status": "away"})
    assert first.status_code == again.status_code == 200 and first.json == again.json

    first, again = _replayed(client, "POST", "/api/v1/agents", admin_token, "agent-1",
                             json={"name": "Bo", "role": "agent", "groups": ["support"], "max_concurrent": 2})
    assert first.status_code == again.status_code == 201 and first.json["token"] == again.json["token"]
    assert Agent.select().where(Agent.name == "Bo").count() == 1

    first, again = _replayed(client, "POST", f"/api/v1/conversations/{conv.id}/close", ana, "close-1")
    assert first.status_code == again.status_code == 200 and first.json == again.json   # not a 409
    # Run again, the close would be refused (it is closed, and no longer Ana's): the replay did not run it.
    assert client.post(f"/api/v1/conversations/{conv.id}/close", headers=bearer(ana)).status_code == 403
    assert Event.select().where((Event.conversation == conv.id) & (Event.to_state == "CLOSED")).count() == 1
    settle(app)
    assert OutboxEntry.select().count() >= 1


def test_a_refusal_is_not_kept_so_the_call_can_succeed_once_allowed(app):
    team = Team(app)
    team.add("ana")
    conv = waiting_customer(app, ASK_FOR_A_HUMAN, wa_id="15550005555")
    client = app.test_client()
    headers = {**bearer(team.token["ana"]), "Idempotency-Key": "close-early"}
    team.add("bo")
    assert team.act("bo", "claim", conv.id).status_code == 200
    assert client.post(f"/api/v1/conversations/{conv.id}/close", headers=headers).status_code == 403
    assert team.act("bo", "transfer", conv.id, {"agent_id": team.id("ana")}).status_code == 200
    assert team.act("ana", "claim", conv.id).status_code == 200
    assert client.post(f"/api/v1/conversations/{conv.id}/close", headers=headers).status_code == 200
