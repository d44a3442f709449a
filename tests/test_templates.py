"""Templates: the TEMPLATES_FILE catalog (loaded and checked at start-up), GET /api/v1/templates,
and an agent's template message outside the 24-hour window: a listed template with fitting
parameters goes to the Graph API in its wire format; anything else is 422 and changes nothing."""
from __future__ import annotations

import json

import pytest

from config import ROOT, ConfigError, load_settings
from integrations.templates import load, validate
from models import Conversation, Message
from tests.support import CUSTOMER, Team, backdate, bearer, settle_until, waiting_customer

EXAMPLE = ROOT / "templates.example.json"
FOLLOW_UP = {"name": "follow_up", "language": "en_US", "components": [
    {"type": "body", "parameters": [{"type": "text", "text": "Rita"}, {"type": "text", "text": "Ana"}]}]}


def catalog_file(tmp_path, templates) -> str:
    path = tmp_path / "templates.json"
    path.write_text(json.dumps({"templates": templates}) if not isinstance(templates, str) else templates)
    return str(path)


# -- the catalog -------------------------------------------------------------------------------------

def test_the_shipped_example_catalog_loads():
    catalog = load(EXAMPLE)
    assert [(t.name, t.language) for t in catalog.templates][:2] == [("follow_up", "en_US"), ("follow_up", "es")]
    order = catalog.find("order_update", "en_US")
    assert (order.body_parameters, order.header.format, [b.type for b in order.buttons]) == (
        1, "text", ["url", "quick_reply"])


def test_a_good_catalog_file_is_accepted_at_start_up(tmp_path):
    path = catalog_file(tmp_path, [{"name": "hello", "language": "en", "category": "utility"}])
    settings = load_settings(environ={"WHATSAPP_APP_SECRET": "s", "TEMPLATES_FILE": path})
    assert settings.TEMPLATES_FILE == path


@pytest.mark.parametrize("content, says", [
    ("{not json", "not valid JSON"),
    ([{"name": "hello", "language": "en"}], "category must be one of"),
    ([{"name": "hello", "language": "en", "category": "UTILITY", "body_parameters": -1}], "body_parameters"),
    ([{"name": "hello", "language": "en", "category": "UTILITY", "header": {"format": "gif"}}], "header format"),
    ([{"name": "hello", "language": "en", "category": "UTILITY", "buttons": [{"type": "phone_number",
                                                                               "parameters": 1}]}], "parameters"),
    ([{"name": "hello", "language": "en", "category": "UTILITY"}] * 2, "listed twice"),
    ([{"name": "hello", "language": "en", "category": "UTILITY", "body": 2}], "unknown key(s) body"),
    ('{"templates": {}}', '"templates" list'),
])
def test_a_bad_catalog_file_stops_start_up_naming_the_setting(tmp_path, content, says):
    path = catalog_file(tmp_path, content)
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"WHATSAPP_APP_SECRET": "s", "TEMPLATES_FILE": path})
    assert str(error.value).startswith("TEMPLATES_FILE: ") and says in str(error.value)


def test_a_missing_catalog_file_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="^TEMPLATES_FILE: cannot read"):
        load_settings(environ={"WHATSAPP_APP_SECRET": "s", "TEMPLATES_FILE": str(tmp_path / "nope.json")})


def test_components_are_checked_against_the_declared_parameters():
    catalog = load(EXAMPLE)
    order = {"name": "order_update", "language": "en_US", "components": [
        {"type": "header", "parameters": [{"type": "text", "text": "Order 42"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "42"}]},
        {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "42"}]},
        {"type": "button", "sub_type": "quick_reply", "index": 1, "parameters": [{"type": "payload", "payload": "x"}]}]}
    assert validate(catalog, order) == []
    assert validate(catalog, FOLLOW_UP) == []
    assert validate(catalog, {**FOLLOW_UP, "components": None}) == ["the body takes 2 parameter(s), got 0"]
    assert validate(catalog, {**FOLLOW_UP, "language": "fr"}) == [
        "unknown template 'follow_up' in 'fr' (listed in: en_US, es)"]
    picture = {"name": "callback_reminder", "language": "en_US", "components": [
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://example.com/a.png"}}]}]}
    assert validate(catalog, picture) == []
    assert validate(catalog, {**picture, "components": [
        {"type": "header", "parameters": [{"type": "text", "text": "a picture?"}]},
        {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "x"}]},
        {"type": "button", "sub_type": "quick_reply", "index": "7"}]}) == [
        "components[2]: callback_reminder has no button 7 (it has 2 button(s))",
        "header parameter 1 has type 'text'; expected image",
        "button 0 is a quick_reply button, not 'url'"]
    assert validate(catalog, {**order, "components": order["components"][1:2]}) == [
        "the text header takes 1 parameter(s), got 0", "button 0 (url) takes 1 parameter(s), got 0",
        "button 1 (quick_reply) takes 1 parameter(s), got 0"]


# -- the API ------------------------------------------------------------------------------------------

@pytest.fixture
def cloud_desk(make_desk, graph_api):
    """The human side speaking to the fake Graph API, with the example catalog."""
    return make_desk(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                     WHATSAPP_API_BASE=graph_api.api_base, WHATSAPP_VERIFY_TOKEN="v", TEMPLATES_FILE=str(EXAMPLE))


def test_agents_and_bots_list_the_catalog(cloud_desk):
    from models import ApiToken

    team = Team(cloud_desk)
    team.add("ana", online=False)
    listed = team.call("ana", "GET", "/api/v1/templates")
    assert listed.status_code == 200 and listed.json["configured"] is True
    assert [(t["name"], t["language"]) for t in listed.json["items"]] == [
        ("follow_up", "en_US"), ("follow_up", "es"), ("order_update", "en_US"), ("callback_reminder", "en_US"),
        ("team_will_reply", "en_US")]
    assert listed.json["items"][2] == {
        "name": "order_update", "language": "en_US", "category": "UTILITY", "text": "Your order {{1}} has shipped.",
        "body_parameters": 1, "header": {"format": "text", "parameters": 1},
        "buttons": [{"index": 0, "type": "url", "parameters": 1}, {"index": 1, "type": "quick_reply",
                                                                     "parameters": 1}], "source": "file",
        "parameter_names": None}
    assert (listed.json["sources"], listed.json["account_templates"]) == (["file"], "not_configured")
    client = cloud_desk.test_client()
    bot = ApiToken.issue("n8n", "bot")[1]
    assert client.get("/api/v1/templates", headers=bearer(bot)).status_code == 200
    assert client.get("/api/v1/templates").status_code == 401


def test_without_a_catalog_the_list_is_empty(desk):
    team = Team(desk)
    team.add("ana", online=False)
    assert team.call("ana", "GET", "/api/v1/templates").json == {
        "configured": False, "sources": [], "account_templates": "unsupported", "items": [],
        "note": "The sandbox provider has no WhatsApp Business Account: only TEMPLATES_FILE lists templates."}


def template_bodies(graph_api) -> list[dict]:
    return [body for _, path, _, body in graph_api.requests
            if path.endswith("/messages") and body.get("type") == "template"]


def held_by_ana_after_the_window(app) -> tuple[Team, Conversation]:
    """Ana holds the customer's conversation, and the customer last wrote over 24 hours ago."""
    team = Team(app)
    team.add("ana")
    conv = waiting_customer(app)
    assert team.act("ana", "claim", conv.id).status_code == 200
    backdate(conv.id, last_inbound_at=25 * 3600)
    return team, Conversation.get_by_id(conv.id)


def unchanged(conv: Conversation) -> tuple:
    now = Conversation.get_by_id(conv.id)
    return now.state, now.version, now.assigned_agent_id, Message.select().where(
        Message.conversation == conv.id).count()


def test_after_the_window_free_text_is_refused_but_a_catalog_template_is_sent(cloud_desk, graph_api):
    team, conv = held_by_ana_after_the_window(cloud_desk)
    before = unchanged(conv)
    text = team.act("ana", "messages", conv.id, {"text": "Still there?"})
    assert (text.status_code, text.json["error"]) == (422, "outside_customer_service_window")
    assert unchanged(conv) == before

    sent = team.act("ana", "messages", conv.id, {"template": FOLLOW_UP})
    assert sent.status_code == 202, sent.json
    assert sent.json["message"]["type"] == "template" and sent.json["message"]["status"] == "queued"
    settle_until(cloud_desk, lambda: Message.get_by_id(sent.json["message"]["id"]).status == "sent",
                 what="the template to be sent")
    assert template_bodies(graph_api) == [{
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": CUSTOMER, "type": "template",
        "template": {"name": "follow_up", "language": {"code": "en_US"}, "components": FOLLOW_UP["components"]},
        "biz_opaque_callback_data": sent.json["message"]["id"]}]


@pytest.mark.parametrize("template, code, details", [
    ({"name": "no_such_thing", "language": "en_US"}, "unknown_template",
     {"name": "no_such_thing", "language": "en_US", "known_languages": []}),
    ({"name": "follow_up", "language": "fr"}, "unknown_template",
     {"name": "follow_up", "language": "fr", "known_languages": ["en_US", "es"]}),
    ({**FOLLOW_UP, "components": [{"type": "body", "parameters": [{"type": "text", "text": "Rita"}]}]},
     "bad_template_components",
     {"name": "follow_up", "language": "en_US", "problems": ["the body takes 2 parameter(s), got 1"]}),
    ({**FOLLOW_UP, "components": [*FOLLOW_UP["components"], {"type": "header", "parameters": []}]},
     "bad_template_components", {"name": "follow_up", "language": "en_US", "problems": ["follow_up has no header"]}),
])
def test_a_template_the_catalog_refuses_is_422_and_changes_nothing(cloud_desk, graph_api, template, code, details):
    team, conv = held_by_ana_after_the_window(cloud_desk)
    before, requests_before = unchanged(conv), len(graph_api.requests)
    refused = team.act("ana", "messages", conv.id, {"template": template})
    assert (refused.status_code, refused.json["error"], refused.json["details"]) == (422, code, details)
    settle_until(cloud_desk, lambda: True)
    assert unchanged(conv) == before
    assert len(graph_api.requests) == requests_before and template_bodies(graph_api) == []


def test_a_template_that_would_claim_is_refused_before_it_claims(cloud_desk):
    """Replying claims a waiting conversation, but not with a template the catalog refuses."""
    team = Team(cloud_desk)
    team.add("ana")
    conv = waiting_customer(cloud_desk)
    before = unchanged(conv)
    refused = team.act("ana", "messages", conv.id, {"template": {"name": "nope", "language": "en_US"}})
    assert refused.status_code == 422 and unchanged(conv) == before and before[0] == "PENDING_AGENT"


def test_without_a_catalog_any_template_goes_to_the_provider_as_given(make_desk, graph_api):
    app = make_desk(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                    WHATSAPP_API_BASE=graph_api.api_base, WHATSAPP_VERIFY_TOKEN="v")
    team, conv = held_by_ana_after_the_window(app)
    sent = team.act("ana", "messages", conv.id, {"template": {"name": "anything", "language": "de"}})
    assert sent.status_code == 202
    settle_until(app, lambda: Message.get_by_id(sent.json["message"]["id"]).status == "sent",
                 what="the template to be sent")
    assert template_bodies(graph_api)[0]["template"] == {"name": "anything", "language": {"code": "de"}}
