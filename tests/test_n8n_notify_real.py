"""The notification branch (n8n_workflows/baton_notify_branch.json) in real n8n.

n8n starts once for this module (tests/n8n_support.py) with both workflows imported
through its CLI and published, and the credentials a team would create: the AI
branch's (its model is the session's fake OpenAI server), `Baton event secret`,
`Email (SMTP)` at a local SMTP server (aiosmtpd), `Slack` and `Telegram`.
Slack and Telegram are fakes speaking the real Web API / Bot API over HTTP
(tests/fakes/chat_apis.py): Telegram's credential has a Base URL, and Slack goes
through *Notify settings*' Slack API base, the one edit made to the file on import.
A second copy of the workflow (`baton-notify-email-only`) is a team with email
only: its Telegram node refers to a credential that does not exist, and its Slack
node is deactivated.

The stories with Baton run it as real processes (gunicorn, RQ workers, cron) with
`N8N_NOTIFY_URL` at n8n; the others post events signed exactly as Baton signs them
(integrations/signing.py), including ones Baton never sends (an unknown type, a
forged signature).

Needs n8n installed (./test.sh runs ensure_n8n); skipped with the reason otherwise,
failed in CI (CI=true).
"""
from __future__ import annotations

import json
import re
import time
import uuid

import pytest
import requests

from integrations.signing import signature
from tests.fakes.chat_apis import FakeSlackApi, FakeTelegramBotApi
from tests.fakes.smtp import FakeSmtpServer, body_text, html_text
from tests.harness import SHORT_LEASES, BatonProcesses, post_all, state_summary
from tests.n8n_support import (BOT_TOKEN, EVENT_SECRET, NOTIFY_BRANCH, RealN8n, ai_branch_with, baton_credentials,
                               n8n_binary)
from tests.support import conversation_of, text_webhook, wait_until

pytestmark = pytest.mark.processes

NOTIFY_WORKFLOW = RealN8n.workflow_id(NOTIFY_BRANCH)
EMAIL_ONLY_WORKFLOW = "BatonNotifyEmail"
EMAIL_ONLY_PATH = "baton-notify-email-only"
EMAIL_TO = "support-team@example.test"
TELEGRAM_CHAT = "-1009876543210"


def notify_branch_copy(folder, *, slack_api_url: str, email_only: bool = False):
    """The notify branch as a team imports it, with *Notify settings* filled in; or, with
    `email_only`, a second workflow whose Telegram node names a credential that does
    not exist and whose Slack node is deactivated."""
    workflow = json.loads(NOTIFY_BRANCH.read_text(encoding="utf-8"))
    settings = next(n for n in workflow["nodes"] if n["name"] == "Notify settings")
    values = {"slack_api_url": slack_api_url, "email_to": EMAIL_TO, "telegram_chat_id": TELEGRAM_CHAT,
              "email_from": "Baton <baton@example.test>"}
    for field in settings["parameters"]["assignments"]["assignments"]:
        field["value"] = values.get(field["name"], field["value"])
    name = NOTIFY_BRANCH.name
    if email_only:
        workflow.update(id=EMAIL_ONLY_WORKFLOW, name="Baton – notify branch (email only)")
        for node in workflow["nodes"]:
            node["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, "email-only/" + node["id"]))
            if node["type"] == "n8n-nodes-base.webhook":
                node["parameters"]["path"] = EMAIL_ONLY_PATH
                node["webhookId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, "email-only/" + node["webhookId"]))
            if "telegramApi" in node.get("credentials", {}):
                node["credentials"]["telegramApi"] = {"id": "NO_SUCH_TELEGRAM_CRED", "name": "Telegram (none)"}
            if node["name"] == "Post to Slack":
                node["disabled"] = True
        name = "baton_notify_branch_email_only.json"
    path = folder / name
    path.write_text(json.dumps(workflow), encoding="utf-8")
    return path


# -- n8n and the channels, once per module -------------------------------------------------------------------

@pytest.fixture(scope="module")
def channels():
    with FakeSmtpServer() as smtp, FakeSlackApi() as slack, FakeTelegramBotApi() as telegram:
        yield {"email": smtp, "slack": slack, "telegram": telegram}


def notify_credentials(channels) -> list[dict]:
    """`Email (SMTP)` and `Telegram` as a team creates them, at the fakes."""
    smtp, telegram = channels["email"], channels["telegram"]
    return [
        {"id": "SMTP_CRED", "name": "Email (SMTP)", "type": "smtp",
         "data": {"host": smtp.host, "port": smtp.port, "secure": False, "disableStartTls": True,
                  "user": "", "password": ""}},
        {"id": "TELEGRAM_CRED", "name": "Telegram", "type": "telegramApi",
         "data": {"accessToken": telegram.token, "baseUrl": telegram.url}},
    ]


@pytest.fixture(scope="module")
def notify_n8n(channels, fake_model, tmp_path_factory):
    from tests.fakes.openai_api import MODEL

    binary = n8n_binary()
    folder = tmp_path_factory.mktemp("notify-n8n")
    slack = channels["slack"]
    credentials = [*baton_credentials(fake_model.base_url, fake_model.api_key, slack_token=slack.token),
                   *notify_credentials(channels)]
    workflows = [ai_branch_with(folder, model=MODEL),
                 notify_branch_copy(folder, slack_api_url=slack.api_url),
                 notify_branch_copy(folder, slack_api_url=slack.api_url, email_only=True)]
    with RealN8n(binary, folder, credentials=credentials, workflows=workflows) as n8n:
        yield n8n


@pytest.fixture
def n8n(notify_n8n, channels):
    """The module's n8n, with the executions before this test remembered and the
    channels emptied."""
    for channel in channels.values():
        channel.clear()
    notify_n8n.seen_before = {e["id"] for e in notify_n8n.executions()}
    return notify_n8n


def ended_executions(n8n: RealN8n, workflow_id: str, count: int, timeout: float = 30.0) -> list[dict]:
    def ended():
        done = [e for e in n8n.finished_executions(workflow_id) if e["id"] not in n8n.seen_before]
        return done if len(done) >= count else None
    return wait_until(ended, timeout, f"{count} execution(s) of {workflow_id} to end", interval=0.1,
                      describe=lambda: f"executions: {n8n.executions(workflow_id)}\n{n8n.log_tail()}")


def signed_event(event_type: str, conversation: dict, **fields) -> tuple[bytes, dict]:
    """A body and headers as Baton's events lane sends them (routing/effects.py, integrations/n8n.py)."""
    delivery_id = f"d_{uuid.uuid4().hex[:16]}"
    body = json.dumps({"event": event_type, "delivery_id": delivery_id,
                       "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                       "conversation": conversation, **fields}).encode()
    return body, {"Content-Type": "application/json; charset=utf-8", "X-Baton-Event": event_type,
                  "X-Baton-Delivery": delivery_id, "X-Baton-Signature": signature(EVENT_SECRET, body),
                  "User-Agent": "Baton/1.0"}


def a_conversation(*, name: str = "Maria Lopez", wa_id: str = "15550001111", urgency: float | None = None,
                   minutes_waiting: int = 12) -> dict:
    since = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - minutes_waiting * 60))
    return {"id": "c_notify1", "state": "PENDING_AGENT", "version": 3,
            "channel": {"id": "ch_1", "provider": "sandbox"},
            "contact": {"wa_id": wa_id, "user_id": None, "username": None, "name": name},
            "assigned_agent_id": None, "offered_agent_id": None, "group": "support",
            "escalation": {"reason": "sentiment", "urgency": urgency, "requested_at": since},
            "cooldown_remaining": 0, "pending_since": since, "metadata": {}}


CONSOLE = "http://baton.example.test/console/conversations/c_notify1"


def post(n8n: RealN8n, body: bytes, headers: dict, path: str = "baton-notify") -> requests.Response:
    return requests.post(n8n.webhook_url(path), data=body, headers=headers, timeout=30)


def wait_for(channel, count: int, timeout: float = 30.0) -> list:
    return wait_until(lambda: (lambda got: got if len(got) >= count else None)(channel.messages), timeout,
                      f"{count} message(s) at {type(channel).__name__}",
                      describe=lambda: f"got: {channel.messages}")


# -- Baton as real processes -----------------------------------------------------------------------------------

@pytest.fixture
def start_baton_with_n8n(app, settings_overrides, n8n, tmp_path, request):
    """start(**settings): gunicorn + 2 RQ workers + cron with N8N_NOTIFY_URL at real n8n,
    PUBLIC_BASE_URL at themselves (the console links), and the bot token the AI branch's
    credential holds (start(N8N_BOT_URL=...) to let the model answer)."""
    from models import ApiToken
    from models.token import hash_token

    ApiToken.create(name="n8n", role="bot", token_hash=hash_token(BOT_TOKEN))
    started: list[BatonProcesses] = []
    failed_before = request.session.testsfailed

    def start(**settings) -> BatonProcesses:
        procs = BatonProcesses({**settings_overrides, **SHORT_LEASES, "N8N_NOTIFY_URL": n8n.webhook_url("baton-notify"),
                                "BATON_EVENT_SECRET": EVENT_SECRET, "SENTIMENT_LANGUAGES": "",
                                **settings}, log_dir=tmp_path / f"processes{len(started)}", start=False)
        procs.env["PUBLIC_BASE_URL"] = procs.url
        started.append(procs)
        procs.start()
        return procs
    yield start
    for procs in started:
        procs.stop()
    if request.session.testsfailed > failed_before:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            for procs in started:
                print(f"\n===== Baton process logs =====\n{procs.logs()}")
            print(f"\n===== n8n log =====\n{n8n.log_tail()}")


def customer_asks_for_a_person(procs: BatonProcesses, wa_id: str, name: str) -> None:
    (answer,) = post_all(procs.url, [text_webhook(wa_id, "I want to talk to a human", name=name,
                                                  timestamp=int(time.time()))])
    assert answer.status_code == 200, answer.text


def test_a_customer_who_asks_for_a_person_is_announced_by_email_slack_and_telegram(
        start_baton_with_n8n, n8n, channels, rt):
    from models import PENDING_AGENT

    baton = start_baton_with_n8n()
    wa_id = "15557100001"
    customer_asks_for_a_person(baton, wa_id, "Maria Lopez")
    baton.wait_until(lambda: conversation_of(wa_id).state == PENDING_AGENT, 30, what="PENDING_AGENT",
                     describe=lambda: f"state: {state_summary(rt)}")
    console = f"{baton.url}/console/conversations/{conversation_of(wa_id).id}"

    (email,) = wait_for(channels["email"], 1)
    text = body_text(email)
    assert email["Subject"] == f"[Baton] Maria Lopez (+{wa_id}) is waiting for a person"
    assert email.envelope_to == [EMAIL_TO] and "baton@example.test" in email["From"]
    assert f"Who: Maria Lopez (+{wa_id})" in text
    assert "Why: asked for a person (explicit_request)" in text
    assert "Urgency: normal" in text
    assert re.search(r"Waiting since: \d{4}-\d\d-\d\dT[\d:.]+Z \(\d+ min\)", text)
    assert f"Open in Baton: {console}" in text
    assert f'<a href="{console}">' in html_text(email)
    assert "sent automatically with" not in text + html_text(email)      # no n8n attribution

    (slack,) = wait_for(channels["slack"], 1)
    assert slack["channel"] == "#support" and f"<{console}|Open in Baton>" in slack["text"]
    assert "Why: asked for a person (explicit_request)" in slack["text"]
    (telegram,) = wait_for(channels["telegram"], 1)
    assert (telegram["chat_id"], telegram["parse_mode"]) == (TELEGRAM_CHAT, "HTML")
    assert f'<a href="{console}">Open in Baton</a>' in telegram["text"]
    assert "sent automatically with" not in telegram["text"]
    (execution,) = ended_executions(n8n, NOTIFY_WORKFLOW, 1)
    assert execution["status"] == "success", n8n.node_outcome(execution["id"])


def test_the_model_says_escalate_and_the_email_with_the_console_link_arrives(
        start_baton_with_n8n, n8n, channels, fake_model, rt):
    """The issue's story: the AI branch's model hands over, Baton queues the customer for
    a person, and the notification branch tells the team, by email too."""
    from models import PENDING_AGENT

    fake_model.reset()
    fake_model.answer({"text": "I'm passing you to a colleague.", "escalate": True, "intent": "human_requested",
                       "language": "en"})
    baton = start_baton_with_n8n(N8N_BOT_URL=n8n.webhook_url("baton-bot"))
    wa_id = "15557100003"
    (answer,) = post_all(baton.url, [text_webhook(wa_id, "my parcel is lost, I need someone", name="Ines Costa",
                                                  timestamp=int(time.time()))])
    assert answer.status_code == 200, answer.text
    baton.wait_until(lambda: conversation_of(wa_id).state == PENDING_AGENT, 60, what="PENDING_AGENT",
                     describe=lambda: f"state: {state_summary(rt)}; n8n: {n8n.executions()}")
    assert conversation_of(wa_id).escalation_reason == "bot"
    console = f"{baton.url}/console/conversations/{conversation_of(wa_id).id}"
    (email,) = wait_for(channels["email"], 1, timeout=60)
    text = body_text(email)
    assert email["Subject"] == f"[Baton] Ines Costa (+{wa_id}) is waiting for a person"
    assert "Why: the bot handed over (bot)" in text and f"Open in Baton: {console}" in text
    assert f'<a href="{console}">' in html_text(email)
    (execution,) = ended_executions(n8n, NOTIFY_WORKFLOW, 1)
    assert execution["status"] == "success", n8n.node_outcome(execution["id"])
    fake_model.reset()


def test_nobody_takes_the_customer_in_time_the_timeout_and_the_callback_request_are_sent(
        start_baton_with_n8n, n8n, channels, rt):
    from models import BOT_CONTROLLED, CallbackRequest

    baton = start_baton_with_n8n(PENDING_TIMEOUT="2", PENDING_TIMEOUT_POLICY="collect_callback")
    wa_id = "15557100002"
    customer_asks_for_a_person(baton, wa_id, "Tom Weber")
    baton.wait_until(lambda: conversation_of(wa_id).state == BOT_CONTROLLED
                     and CallbackRequest.select().count() == 1, 30, what="the callback to be collected",
                     describe=lambda: f"state: {state_summary(rt)}")
    conversation_id = conversation_of(wa_id).id
    (request,) = CallbackRequest.select()
    console = f"{baton.url}/console/conversations/{conversation_id}"

    emails = {m["Subject"]: body_text(m) for m in wait_for(channels["email"], 3)}
    assert set(emails) == {f"[Baton] Tom Weber (+{wa_id}) is waiting for a person",
                           f"[Baton] Handoff timed out: Tom Weber (+{wa_id}) is still waiting",
                           f"[Baton] Call Tom Weber (+{wa_id}) back: nobody was free in time"}
    timed_out = emails[f"[Baton] Handoff timed out: Tom Weber (+{wa_id}) is still waiting"]
    callback = emails[f"[Baton] Call Tom Weber (+{wa_id}) back: nobody was free in time"]
    assert "Why: nobody took the conversation in time (pending_timeout)" in timed_out
    assert "Urgency: high" in timed_out and f"Open in Baton: {console}" in timed_out
    assert f"Callback request: {request.id} (open)" in callback
    assert "Why: asked for a person (explicit_request)" in callback       # why they were waiting
    assert re.search(r"Waiting since: \S+Z \(\d+ min\)", callback) and f"Open in Baton: {console}" in callback
    assert len(wait_for(channels["slack"], 3)) == 3 and len(wait_for(channels["telegram"], 3)) == 3
    assert any("back: nobody was free in time" in m["text"] for m in channels["telegram"].messages)
    assert [e["status"] for e in ended_executions(n8n, NOTIFY_WORKFLOW, 3)] == ["success"] * 3


# -- events signed by the test, as Baton signs them ---------------------------------------------------------

def test_a_message_for_the_agent_names_the_agent_and_the_message(n8n, channels):
    body, headers = signed_event("message.for_agent", a_conversation(urgency=0.82),
                                 message={"id": "m_1", "type": "text", "text": "where is my refund?"},
                                 agent={"id": "a_1", "name": "Ana"}, console_url=CONSOLE)
    assert post(n8n, body, headers).status_code == 200
    (email,) = wait_for(channels["email"], 1)
    text = body_text(email)
    assert email["Subject"] == "[URGENT] [Baton] New message from Maria Lopez (+15550001111) for Ana"
    assert "Message: where is my refund?" in text and "Agent: Ana" in text
    assert "Urgency: urgent (0.82)" in text and "(12 min)" in text and f"Open in Baton: {CONSOLE}" in text
    assert "where is my refund?" in wait_for(channels["slack"], 1)[0]["text"]
    assert "where is my refund?" in wait_for(channels["telegram"], 1)[0]["text"]


def test_a_dead_lettered_message_alerts_the_team_with_the_error_and_how_to_retry(n8n, channels):
    body, headers = signed_event(
        "message.dead_lettered", a_conversation(),
        message={"id": "m_7", "type": "text", "text": "my parcel?", "routed_to": "dead_letter"},
        dead_letter={"id": "dlq_1", "attempts": 5, "error": "ValueError: cannot read this message",
                     "retry_url": "/api/v1/admin/dead-letters/dlq_1/retry"}, console_url=CONSOLE)
    assert post(n8n, body, headers).status_code == 200
    (email,) = wait_for(channels["email"], 1)
    text = body_text(email)
    assert email["Subject"] == ("[Baton] A message from Maria Lopez (+15550001111) could not be routed: "
                                "set aside for an admin")
    assert "Why: routing this message kept failing (dead_lettered)" in text and "Urgency: high" in text
    assert "Error: ValueError: cannot read this message (after 5 attempts)" in text
    assert "Retry: POST /api/v1/admin/dead-letters/dlq_1/retry (admin)" in text and "Message: my parcel?" in text
    assert f"Open in Baton: {CONSOLE}" in text
    assert "could not be routed" in wait_for(channels["slack"], 1)[0]["text"]
    assert "could not be routed" in wait_for(channels["telegram"], 1)[0]["text"]


def test_what_the_customer_wrote_cannot_break_a_channels_markup(n8n, channels):
    body, headers = signed_event("handoff.requested", a_conversation(name="<b>Bob</b> & Co_"), agent=None,
                                 reason="explicit_request", console_url=CONSOLE)
    assert post(n8n, body, headers).status_code == 200
    (telegram,) = wait_for(channels["telegram"], 1)           # the fake refuses malformed HTML, as Telegram does
    assert "&lt;b&gt;Bob&lt;/b&gt; &amp; Co_" in telegram["text"]
    assert "&lt;b&gt;Bob&lt;/b&gt; &amp; Co_" in wait_for(channels["slack"], 1)[0]["text"]
    assert "<b>Bob</b> & Co_" in body_text(wait_for(channels["email"], 1)[0])
    (execution,) = ended_executions(n8n, NOTIFY_WORKFLOW, 1)
    assert execution["status"] == "success"


@pytest.mark.parametrize("event_type", ["handoff.accepted", "conversation.closed", "something.new"])
def test_events_that_need_nobody_are_acknowledged_and_nobody_is_told(n8n, channels, event_type):
    body, headers = signed_event(event_type, a_conversation(), by={"type": "system"})
    answer = post(n8n, body, headers)
    assert answer.status_code == 200
    (execution,) = ended_executions(n8n, NOTIFY_WORKFLOW, 1)
    outcome = n8n.node_outcome(execution["id"])
    assert execution["status"] == "success" and outcome["last_node"] == "No action needed", outcome
    assert not (channels["email"].messages or channels["slack"].messages or channels["telegram"].messages)


@pytest.mark.parametrize("forgery", ["wrong secret", "body changed", "no signature"])
def test_a_forged_signature_is_rejected_and_nobody_is_told(n8n, channels, forgery):
    body, headers = signed_event("handoff.requested", a_conversation(), agent=None, reason="explicit_request",
                                 console_url=CONSOLE)
    if forgery == "wrong secret":
        headers["X-Baton-Signature"] = signature("not-the-secret", body)
    elif forgery == "body changed":
        body = body.replace(b"Maria Lopez", b"Mallory")
    else:
        del headers["X-Baton-Signature"]
    answer = post(n8n, body, headers)
    assert (answer.status_code, answer.json()["error"]) == (401, "bad_signature")
    (execution,) = ended_executions(n8n, NOTIFY_WORKFLOW, 1)
    assert "Compose message" not in n8n.node_outcome(execution["id"])["nodes"]
    assert not (channels["email"].messages or channels["slack"].messages or channels["telegram"].messages)


def test_channels_without_a_credential_or_deactivated_stay_quiet_and_email_is_sent(n8n, channels):
    body, headers = signed_event("handoff.offered", a_conversation(), agent={"id": "a_1", "name": "Ana"},
                                 reason="explicit_request", console_url=CONSOLE)
    assert post(n8n, body, headers, path=EMAIL_ONLY_PATH).status_code == 200
    (execution,) = ended_executions(n8n, EMAIL_ONLY_WORKFLOW, 1)
    outcome = n8n.node_outcome(execution["id"])
    assert execution["status"] == "success" and outcome["last_node"] == "Check channels", outcome
    assert wait_for(channels["email"], 1)[0]["Subject"] == "[Baton] Maria Lopez (+15550001111) was offered to Ana"
    assert channels["slack"].requests == [] and channels["telegram"].requests == []


def test_a_channel_that_fails_fails_the_execution_after_the_others_were_told(n8n, channels):
    # Slack answers a refusal with HTTP 200 and ok: false.
    channels["slack"].fail_next(1, 200, {"ok": False, "error": "channel_not_found"})
    body, headers = signed_event("handoff.timeout", a_conversation(), agent=None, reason="pending_timeout",
                                 console_url=CONSOLE)
    assert post(n8n, body, headers).status_code == 200         # Baton got its answer before the channels ran
    (execution,) = ended_executions(n8n, NOTIFY_WORKFLOW, 1)
    outcome = n8n.node_outcome(execution["id"])
    assert execution["status"] == "error" and outcome["last_node"] == "Check channels", outcome
    assert "Notification not delivered by Slack (channel_not_found)" in outcome["error"], outcome
    assert len(wait_for(channels["email"], 1)) == 1 and len(wait_for(channels["telegram"], 1)) == 1
    assert channels["slack"].messages == []
