"""The 24-hour customer-service window: it runs from the customer's last message (an echo of
the business phone's own message does not extend it), free text outside it is refused before
anything is queued, and Baton's own notices go out as the template their setting names (or,
with none named, are not queued at all and the audit trail says so)."""
from __future__ import annotations

import json
import time

import orjson
import pytest

from config import ConfigError, load_settings
from integrations.signing import signature
from jobs import timers
from models import Conversation, Event, Message
from tests.support import (ASK_FOR_A_HUMAN, CUSTOMER, PHONE_NUMBER_ID, TEST_APP_SECRET, Team, backdate, bearer, conversation_of,
                           customer_says, settle, settle_until, waiting_customer)
from tests.test_takeover_and_recovery import SECRET as WASENDER_SECRET
from tests.test_takeover_and_recovery import wasender_message

NOTICE_CATALOG = [
    {"name": "team_will_reply", "language": "en_US", "category": "UTILITY",
     "text": "Thanks for your message. A member of our team will reply here."},
    {"name": "team_will_reply", "language": "es", "category": "UTILITY",
     "text": "Gracias por tu mensaje. Alguien de nuestro equipo te responderá aquí."},
    {"name": "still_in_queue", "language": "en_US", "category": "UTILITY", "text": "You are still in the queue."},
    {"name": "follow_up", "language": "en_US", "category": "UTILITY", "body_parameters": 2,
     "text": "Hi {{1}}, this is {{2}} following up."},
    {"name": "with_picture", "language": "en_US", "category": "MARKETING", "header": {"format": "image"}},
]


@pytest.fixture
def catalog_path(tmp_path) -> str:
    path = tmp_path / "templates.json"
    path.write_text(json.dumps({"templates": NOTICE_CATALOG}))
    return str(path)


@pytest.fixture
def cloud(make_desk, graph_api, catalog_path):
    """Factory: the human side speaking to the fake Graph API, with NOTICE_CATALOG as TEMPLATES_FILE."""
    def make(**settings):
        return make_desk(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                         WHATSAPP_API_BASE=graph_api.api_base, WHATSAPP_VERIFY_TOKEN="v",
                         TEMPLATES_FILE=catalog_path, **settings)
    return make


def sent_to_graph(graph_api) -> list[dict]:
    """What reached the Graph API's /messages, as (type, text body or template), oldest first."""
    return [(body["type"], body["text"]["body"] if body["type"] == "text" else body["template"])
            for _, path, _, body in graph_api.requests if path.endswith("/messages")]


def window_of(app, conversation_id: str, token: str) -> str | None:
    conv = app.test_client().get(f"/api/v1/conversations/{conversation_id}", headers=bearer(token))
    return conv.json["window_expires_at"]


def the_customer_last_wrote(conversation_id: str, hours_ago: float) -> None:
    backdate(conversation_id, last_inbound_at=int(hours_ago * 3600))


# -- the window is the customer's, not the business phone's ---------------------------------------

def cloud_api_echo(text: str, wa_id: str = CUSTOMER) -> tuple[bytes, dict]:
    """An `smb_message_echoes` webhook: someone typed `text` to the customer in the WhatsApp Business
    app on the business phone (signed like Meta signs)."""
    body = {"object": "whatsapp_business_account", "entry": [{"id": "sandbox-waba", "changes": [{
        "field": "smb_message_echoes", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID},
            "message_echoes": [{"from": "15550000000", "to": wa_id, "id": f"wamid.ECHO{time.time_ns()}",
                                "timestamp": str(int(time.time())), "type": "text", "text": {"body": text}}]}}]}]}
    raw = orjson.dumps(body)
    return raw, {"Content-Type": "application/json", "X-Hub-Signature-256": signature(TEST_APP_SECRET, raw)}


def test_a_cloud_api_echo_from_the_business_phone_does_not_extend_the_window(desk, admin_token):
    customer_says(desk, "hello")
    settle(desk)
    conv = conversation_of()
    the_customer_last_wrote(conv.id, 23)
    before = window_of(desk, conv.id, admin_token)
    raw, headers = cloud_api_echo("Hi, Tom from the shop here")
    assert desk.test_client().post("/webhooks/whatsapp", data=raw, headers=headers).json["messages"] == 1
    settle(desk)
    echo = Message.get(Message.text == "Hi, Tom from the shop here")
    assert (echo.direction, echo.routed_to) == ("out", "none")
    assert Conversation.get_by_id(conv.id).state == "AGENT_CONTROLLED"          # the echo was routed
    assert window_of(desk, conv.id, admin_token) == before                     # one hour left, as before


def test_a_wasender_from_me_echo_does_not_extend_the_window(app_factory, wasender_api, admin_token):
    app = app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET=WASENDER_SECRET,
                      WASENDER_API_KEY=wasender_api.api_key, WASENDER_API_BASE=wasender_api.url)
    client = app.test_client()
    headers = {"Content-Type": "application/json", "X-Webhook-Signature": WASENDER_SECRET}
    client.post("/webhooks/wasender", data=wasender_message("hello", wa_id=CUSTOMER), headers=headers)
    settle(app)
    conv = conversation_of()
    the_customer_last_wrote(conv.id, 25)
    before = window_of(app, conv.id, admin_token)
    answer = client.post("/webhooks/wasender", data=wasender_message("Tom here, on it!", from_me=True,
                                                                     wa_id=CUSTOMER), headers=headers)
    assert answer.json["messages"] == 1
    settle(app)
    assert Message.get(Message.text == "Tom here, on it!").direction == "out"
    assert Conversation.get_by_id(conv.id).state == "AGENT_CONTROLLED"
    assert window_of(app, conv.id, admin_token) == before                      # still closed


def test_the_customers_next_message_reopens_the_window(desk, admin_token):
    customer_says(desk, "hello")
    settle(desk)
    conv = conversation_of()
    the_customer_last_wrote(conv.id, 30)
    closed = window_of(desk, conv.id, admin_token)
    customer_says(desk, "are you there?")
    settle(desk)
    assert window_of(desk, conv.id, admin_token) > closed


# -- free text outside the window --------------------------------------------------------------------

def test_outside_the_window_free_text_is_422_nothing_is_queued_and_a_template_goes_out(cloud, graph_api):
    app = cloud()
    team = Team(app)
    team.add("ana")
    conv = waiting_customer(app)
    assert team.act("ana", "claim", conv.id).status_code == 200
    the_customer_last_wrote(conv.id, 25)
    settle(app)
    sends_before, messages_before = len(sent_to_graph(graph_api)), Message.select().count()
    refused = team.act("ana", "messages", conv.id, {"text": "Still there?"})
    assert (refused.status_code, refused.json["error"]) == (422, "outside_customer_service_window")
    assert refused.json["details"]["window_expires_at"] == Conversation.get_by_id(conv.id).to_dict()[
        "window_expires_at"]
    settle(app)
    assert (Message.select().count(), len(sent_to_graph(graph_api))) == (messages_before, sends_before)
    follow_up = {"name": "follow_up", "language": "en_US", "components": [
        {"type": "body", "parameters": [{"type": "text", "text": "Rita"}, {"type": "text", "text": "Ana"}]}]}
    sent = team.act("ana", "messages", conv.id, {"template": follow_up})
    assert sent.status_code == 202
    settle_until(app, lambda: Message.get_by_id(sent.json["message"]["id"]).status == "sent",
                 what="the template to be sent")
    assert sent_to_graph(graph_api)[sends_before:] == [("template", {
        "name": "follow_up", "language": {"code": "en_US"}, "components": follow_up["components"]})]


# -- Baton's own notices outside the window -------------------------------------------------------------

def notices_not_sent(conversation_id: str) -> list[dict]:
    return [e.details for e in Event.select().where((Event.conversation == conversation_id)
                                                    & (Event.reason == "notice_not_sent"))]


def test_inside_the_window_the_notice_is_its_text(cloud, graph_api):
    app = cloud(HANDOFF_NOTICE_TEMPLATE="team_will_reply:en_US")
    waiting_customer(app)
    assert sent_to_graph(graph_api) == [("text", app.extensions["baton"].settings.HANDOFF_NOTICE)]


def test_a_handoff_outside_the_window_sends_the_handoff_template(cloud, graph_api, bot_token):
    app = cloud(HANDOFF_NOTICE_TEMPLATE="team_will_reply:es")
    customer_says(app, "hello")
    settle(app)
    conv = conversation_of()
    the_customer_last_wrote(conv.id, 26)
    before = len(sent_to_graph(graph_api))
    escalated = app.test_client().post(f"/api/v1/conversations/{conv.id}/escalate", headers=bearer(bot_token),
                                       json={"reason": "bot"})
    assert escalated.status_code == 200 and escalated.json["state"] == "PENDING_AGENT"
    settle(app)
    assert sent_to_graph(graph_api)[before:] == [("template", {"name": "team_will_reply", "language": {"code": "es"}})]
    notice = Message.select().where(Message.sender == "system").get()
    assert (notice.type, notice.status, notice.text) == ("template", "sent", None)
    assert notices_not_sent(conv.id) == []


def test_a_pending_notice_for_a_message_that_arrived_a_day_late_is_the_pending_template(cloud, graph_api):
    app = cloud(PENDING_NOTICE_TEMPLATE="still_in_queue")
    conv = waiting_customer(app)                              # nobody online: they wait
    backdate(conv.id, last_inbound_at=27 * 3600, last_pending_notice_at=3600)
    before = len(sent_to_graph(graph_api))
    customer_says(app, "hello??", timestamp=int(time.time()) - 25 * 3600)   # written 25 h ago, delivered now
    settle(app)
    assert sent_to_graph(graph_api)[before:] == [("template", {"name": "still_in_queue",
                                                               "language": {"code": "en_US"}})]


def test_without_a_template_a_notice_outside_the_window_is_not_queued_and_the_trail_says_so(cloud, graph_api):
    app = cloud(PENDING_TIMEOUT_POLICY="close", HANDOFF_NOTICE_TEMPLATE="team_will_reply:en_US")
    conv = waiting_customer(app)
    the_customer_last_wrote(conv.id, 25)
    before, messages_before = len(sent_to_graph(graph_api)), Message.select().count()
    backdate(conv.id, pending_since=301)
    assert timers.handoff_timers()["pending_timeouts"] == 1
    settle(app)
    assert Conversation.get_by_id(conv.id).state == "CLOSED"
    assert (Message.select().count(), len(sent_to_graph(graph_api))) == (messages_before, before)
    [skipped] = notices_not_sent(conv.id)
    assert skipped == {"notice": "TIMEOUT_CLOSE_NOTICE", "why": "outside_customer_service_window",
                       "window_expires_at": Conversation.get_by_id(conv.id).to_dict()["window_expires_at"],
                       "template_setting": "TIMEOUT_CLOSE_NOTICE_TEMPLATE"}


@pytest.mark.parametrize("policy, setting, template", [
    ("close", "TIMEOUT_CLOSE_NOTICE_TEMPLATE", "still_in_queue"),
    ("collect_callback", "CALLBACK_NOTICE_TEMPLATE", "team_will_reply:en_US"),
])
def test_a_pending_timeout_outside_the_window_sends_its_template(cloud, graph_api, policy, setting, template):
    app = cloud(PENDING_TIMEOUT_POLICY=policy, **{setting: template})
    conv = waiting_customer(app)
    the_customer_last_wrote(conv.id, 25)
    before = len(sent_to_graph(graph_api))
    backdate(conv.id, pending_since=301)
    assert timers.handoff_timers()["pending_timeouts"] == 1
    settle(app)
    assert sent_to_graph(graph_api)[before:] == [("template", {"name": template.split(":")[0],
                                                               "language": {"code": "en_US"}})]
    assert notices_not_sent(conv.id) == []


# -- the settings are checked at start-up -------------------------------------------------------------

@pytest.mark.parametrize("setting, value, says", [
    ("HANDOFF_NOTICE_TEMPLATE", "nope", "TEMPLATES_FILE lists no template 'nope'"),
    ("PENDING_NOTICE_TEMPLATE", "team_will_reply", "'team_will_reply' is listed in en_US, es: name one, "
                                                   "e.g. team_will_reply:en_US"),
    ("CALLBACK_NOTICE_TEMPLATE", "team_will_reply:fr", "TEMPLATES_FILE lists 'team_will_reply' in en_US, es, "
                                                       "not in 'fr'"),
    ("TIMEOUT_CLOSE_NOTICE_TEMPLATE", "follow_up", "'follow_up' in en_US takes 2 parameter(s); a notice is sent "
                                                   "as it is, so its template must take none"),
    ("HANDOFF_NOTICE_TEMPLATE", "with_picture", "'with_picture' in en_US takes 1 parameter(s)"),
])
def test_a_notice_template_setting_must_name_a_parameterless_catalog_template(catalog_path, setting, value, says):
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"WHATSAPP_APP_SECRET": "s", "TEMPLATES_FILE": catalog_path, setting: value})
    assert str(error.value).startswith(f"{setting}: ") and says in str(error.value)


def test_wasender_cannot_send_a_notice_template(catalog_path):
    with pytest.raises(ConfigError, match="^HANDOFF_NOTICE_TEMPLATE: WASender has no message templates"):
        load_settings(environ={"WHATSAPP_PROVIDER": "wasender", "WASENDER_WEBHOOK_SECRET": "w",
                               "WASENDER_API_KEY": "k", "TEMPLATES_FILE": catalog_path,
                               "HANDOFF_NOTICE_TEMPLATE": "still_in_queue"})


def test_a_notice_template_needs_the_templates_file():
    with pytest.raises(ConfigError, match="^PENDING_NOTICE_TEMPLATE: names the template 'x', but TEMPLATES_FILE "
                                          "is empty"):
        load_settings(environ={"WHATSAPP_APP_SECRET": "s", "PENDING_NOTICE_TEMPLATE": "x"})


def test_good_notice_template_settings_are_accepted(catalog_path):
    settings = load_settings(environ={"WHATSAPP_APP_SECRET": "s", "TEMPLATES_FILE": catalog_path,
                                      "HANDOFF_NOTICE_TEMPLATE": "team_will_reply:es",
                                      "PENDING_NOTICE_TEMPLATE": "still_in_queue"})
    assert (settings.HANDOFF_NOTICE_TEMPLATE, settings.PENDING_NOTICE_TEMPLATE) == ("team_will_reply:es",
                                                                                    "still_in_queue")


def test_the_shipped_example_has_a_template_for_every_notice():
    from config import ROOT

    example = {"WHATSAPP_APP_SECRET": "s", "TEMPLATES_FILE": str(ROOT / "templates.example.json")}
    settings = load_settings(environ={**example, **{f"{n}_TEMPLATE": "team_will_reply" for n in (
        "HANDOFF_NOTICE", "PENDING_NOTICE", "CALLBACK_NOTICE", "TIMEOUT_CLOSE_NOTICE")}})
    assert settings.CALLBACK_NOTICE_TEMPLATE == "team_will_reply"


# -- WASender: a WhatsApp Web session has no 24-hour window and no templates ----------------------

def test_on_wasender_an_agent_writes_a_day_later_and_a_template_is_refused_up_front(app_factory, wasender_api):
    app = app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET=WASENDER_SECRET,
                      WASENDER_API_KEY=wasender_api.api_key, WASENDER_API_BASE=wasender_api.url)
    headers = {"Content-Type": "application/json", "X-Webhook-Signature": WASENDER_SECRET}
    team = Team(app)
    team.add("ana")
    app.test_client().post("/webhooks/wasender", data=wasender_message(ASK_FOR_A_HUMAN, wa_id=CUSTOMER),
                           headers=headers)
    settle(app)
    conv = conversation_of()
    assert team.act("ana", "claim", conv.id).status_code == 200
    the_customer_last_wrote(conv.id, 30)
    before = Message.select().where(Message.conversation == conv.id).count()

    template = team.act("ana", "messages", conv.id, {"template": {"name": "follow_up", "language": "en_US"}})
    assert (template.status_code, template.json["error"]) == (422, "templates_unsupported")
    assert Message.select().where(Message.conversation == conv.id).count() == before

    text = team.act("ana", "messages", conv.id, {"text": "Sorry for the wait, Rita"})
    assert text.status_code == 202, text.json
    settle(app)
    sent = Message.get_by_id(text.json["message"]["id"])
    assert sent.status == "sent" and sent.error_code is None
    assert any(body and body.get("text") == "Sorry for the wait, Rita"
               for _, path, _, body in wasender_api.requests if path.endswith("/send-message"))
