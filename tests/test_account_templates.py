"""Templates from the WhatsApp Business Account itself (Cloud API `GET /{waba_id}/message_templates`):
only APPROVED ones, every page, kept TEMPLATES_CACHE_SECONDS, merged after TEMPLATES_FILE's (the file
wins on the same name and language), and accepted in an agent's template message like the file's."""
from __future__ import annotations

import pytest

from config import ROOT
from integrations.templates import Button, Header, Unsupported, account_catalog, from_graph
from integrations.whatsapp.base import SendError
from integrations.whatsapp.cloud_api import CloudApiAdapter
from models import Message
from tests.support import CUSTOMER, Team, backdate, settle_until, waiting_customer

WABA = "102290129340398"


def graph_template(name, status="APPROVED", language="en_US", category="UTILITY", body="Hello", **extra):
    components = [{"type": "BODY", "text": body}, *extra.pop("components", [])]
    return {"id": f"{abs(hash((name, language)))}", "name": name, "language": language, "status": status,
            "category": category, "parameter_format": "POSITIONAL", "components": components, **extra}


ACCOUNT = [
    graph_template("shipping_update", body="Hi {{1}}, order {{2}} ships {{2}} today.", components=[
        {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
        {"type": "FOOTER", "text": "Reply STOP to opt out"},
        {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Track", "url": "https://shop.example/t/{{1}}"},
                                        {"type": "QUICK_REPLY", "text": "Thanks"}]}]),
    graph_template("new_offer", status="PENDING", category="MARKETING"),
    graph_template("follow_up", body="A different follow-up text {{1}}"),      # the file lists it too
    graph_template("old_offer", status="REJECTED", category="MARKETING"),
    graph_template("store_map", components=[{"type": "HEADER", "format": "LOCATION"}]),
    graph_template("login_code", category="AUTHENTICATION", body="{{1}} is your code.", components=[
        {"type": "BUTTONS", "buttons": [{"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}]}]),
    graph_template("welcome_video", language="es", body="Bienvenido", components=[
        {"type": "HEADER", "format": "VIDEO", "example": {"header_handle": ["https://x.example/v.mp4"]}}]),
]


# -- reading Graph's entries ------------------------------------------------------------------------

def test_graphs_components_become_the_parameters_a_message_fills():
    shipping = from_graph(ACCOUNT[0])
    assert (shipping.name, shipping.language, shipping.category, shipping.source) == (
        "shipping_update", "en_US", "UTILITY", "whatsapp_business_account")
    assert (shipping.body_parameters, shipping.header, shipping.buttons) == (
        2, Header("text", 1), (Button("url", 1), Button("quick_reply", 0)))
    assert shipping.text == "Hi {{1}}, order {{2}} ships {{2}} today."
    login = from_graph(ACCOUNT[5])
    assert (login.body_parameters, login.buttons) == (1, (Button("url", 1),))   # an OTP button is sent as `url`
    assert from_graph(ACCOUNT[6]).header == Header("video", 1)
    named = from_graph(graph_template("booking", body="{{guests}} guests on {{day}}, {{guests}} seats",
                                      parameter_format="NAMED"))
    assert (named.body_parameters, named.body_names, named.to_dict()["parameter_names"]) == (
        2, ("guests", "day"), {"header": [], "body": ["guests", "day"]})


def test_only_approved_templates_baton_can_check_are_kept():
    assert from_graph(ACCOUNT[1]) is None and from_graph(ACCOUNT[3]) is None
    with pytest.raises(Unsupported, match="a location header"):
        from_graph(ACCOUNT[4])
    with pytest.raises(Unsupported, match="a FLOW button"):
        from_graph(graph_template("survey", components=[{"type": "BUTTONS", "buttons": [{"type": "FLOW"}]}]))
    assert [(t.name, t.language) for t in account_catalog(ACCOUNT).templates] == [
        ("shipping_update", "en_US"), ("follow_up", "en_US"), ("login_code", "en_US"), ("welcome_video", "es")]


def test_a_named_template_takes_each_parameter_with_its_name():
    from integrations.templates import Catalog, validate

    catalog = Catalog((from_graph(graph_template("booking", body="{{guests}} guests on {{day}}",
                                                 parameter_format="NAMED")),))
    message = {"name": "booking", "language": "en_US", "components": [{"type": "body", "parameters": [
        {"type": "text", "parameter_name": "day", "text": "Sunday"},
        {"type": "text", "parameter_name": "guests", "text": "4"}]}]}
    assert validate(catalog, message) == []
    message["components"][0]["parameters"][0].pop("parameter_name")
    assert validate(catalog, message) == [
        "the body's parameters need `parameter_name` guests, day (each once), got None, guests"]


# -- the adapter --------------------------------------------------------------------------------------

def test_the_adapter_reads_every_page(graph_api):
    graph_api.set_templates(WABA, ACCOUNT, page_size=3)
    adapter = CloudApiAdapter(app_secret="s", access_token=graph_api.access_token, api_base=graph_api.api_base)
    entries = adapter.fetch_templates(WABA)
    assert [e["name"] for e in entries] == [t["name"] for t in ACCOUNT]
    assert entries[0]["components"] == ACCOUNT[0]["components"] and entries[1]["status"] == "PENDING"
    listing = [(m, p, h["Authorization"]) for m, p, h, _ in graph_api.requests]
    assert listing == [("GET", f"/v23.0/{WABA}/message_templates", f"Bearer {graph_api.access_token}")] * 3


def test_a_refused_listing_is_a_send_error_saying_why(graph_api):
    adapter = CloudApiAdapter(app_secret="s", access_token="stale", api_base=graph_api.api_base)
    with pytest.raises(SendError) as error:
        adapter.fetch_templates(WABA)
    assert (error.value.code, error.value.retryable) == (190, False)
    assert "access token" in error.value.title


# -- the API --------------------------------------------------------------------------------------------

@pytest.fixture
def account_desk(make_desk, graph_api):
    """The human side on the Cloud API with the example TEMPLATES_FILE and the account's list (3 to a page)."""
    graph_api.set_templates(WABA, ACCOUNT, page_size=3)

    def make(**settings):
        return make_desk(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                         WHATSAPP_API_BASE=graph_api.api_base, WHATSAPP_VERIFY_TOKEN="v", WHATSAPP_WABA_ID=WABA,
                         **{"TEMPLATES_FILE": str(ROOT / "templates.example.json"), **settings})
    return make


def listings(graph_api) -> int:
    return sum(1 for _, path, _, _ in graph_api.requests if path.endswith("/message_templates"))


def test_the_list_merges_the_file_and_the_accounts_approved_templates(account_desk, graph_api):
    app = account_desk()
    team = Team(app)
    team.add("ana", online=False)
    listed = team.call("ana", "GET", "/api/v1/templates").json
    assert (listed["configured"], listed["sources"], listed["account_templates"], listed["note"]) == (
        True, ["file", "whatsapp_business_account"], "listed", None)
    assert [(t["name"], t["language"], t["source"]) for t in listed["items"]] == [
        ("follow_up", "en_US", "file"), ("follow_up", "es", "file"), ("order_update", "en_US", "file"),
        ("callback_reminder", "en_US", "file"), ("team_will_reply", "en_US", "file"),
        ("shipping_update", "en_US", "whatsapp_business_account"),
        ("login_code", "en_US", "whatsapp_business_account"),
        ("welcome_video", "es", "whatsapp_business_account")]
    assert listed["items"][0]["text"].startswith("Hi {{1}}, this is {{2}}")        # the file's follow_up wins
    assert listed["items"][5]["buttons"] == [{"index": 0, "type": "url", "parameters": 1},
                                             {"index": 1, "type": "quick_reply", "parameters": 0}]
    assert listings(graph_api) == 3                                                 # three pages


def test_the_accounts_list_is_read_once_per_cache_period(account_desk, graph_api):
    app = account_desk()
    team = Team(app)
    team.add("ana", online=False)
    for _ in range(3):
        assert team.call("ana", "GET", "/api/v1/templates").status_code == 200
    assert listings(graph_api) == 3                                                 # one read of three pages
    graph_api.set_templates(WABA, ACCOUNT[:1], page_size=3)
    app.extensions["baton"].caches["account_templates"]._fetched_at -= 301         # TEMPLATES_CACHE_SECONDS pass
    names = [t["name"] for t in team.call("ana", "GET", "/api/v1/templates").json["items"]]
    assert listings(graph_api) == 4 and names[-1] == "shipping_update" and "login_code" not in names


def test_without_the_file_the_accounts_list_alone_is_the_catalog(account_desk, graph_api):
    app = account_desk(TEMPLATES_FILE="")
    team = Team(app)
    team.add("ana", online=False)
    listed = team.call("ana", "GET", "/api/v1/templates").json
    assert (listed["configured"], listed["sources"]) == (True, ["whatsapp_business_account"])
    assert [t["name"] for t in listed["items"]] == ["shipping_update", "follow_up", "login_code", "welcome_video"]


def test_when_the_account_cannot_be_read_the_file_still_counts_and_the_list_says_why(account_desk, graph_api):
    graph_api.fail_next(1, 500, {"error": {"code": 2, "message": "Service temporarily unavailable"}})
    app = account_desk()
    team = Team(app)
    team.add("ana", online=False)
    listed = team.call("ana", "GET", "/api/v1/templates").json
    assert (listed["account_templates"], listed["sources"], len(listed["items"])) == ("unavailable", ["file"], 5)
    assert listed["note"] == ("The WhatsApp Business Account's templates could not be read: "
                              "2: Service temporarily unavailable")


def test_wasender_says_it_has_no_templates(app_factory, wasender_api):
    app = app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET="w", WASENDER_API_KEY="k",
                      WASENDER_API_BASE=wasender_api.url, WHATSAPP_WABA_ID=WABA)
    team = Team(app)
    team.add("ana", online=False)
    assert team.call("ana", "GET", "/api/v1/templates").json == {
        "configured": False, "sources": [], "account_templates": "unsupported", "items": [],
        "note": "WASender has no WhatsApp message templates: there is no list to read, and it cannot send one."}


def test_an_agent_sends_an_account_template_checked_against_its_components(account_desk, graph_api):
    app = account_desk()
    team = Team(app)
    team.add("ana")
    conv = waiting_customer(app)
    assert team.act("ana", "claim", conv.id).status_code == 200
    backdate(conv.id, last_inbound_at=25 * 3600)
    pending = team.act("ana", "messages", conv.id, {"template": {"name": "new_offer", "language": "en_US"}})
    assert (pending.status_code, pending.json["error"]) == (422, "unknown_template")
    short = team.act("ana", "messages", conv.id, {"template": {"name": "shipping_update", "language": "en_US"}})
    assert (short.status_code, short.json["error"]) == (422, "bad_template_components")
    assert short.json["details"]["problems"] == ["the body takes 2 parameter(s), got 0",
                                                 "the text header takes 1 parameter(s), got 0",
                                                 "button 0 (url) takes 1 parameter(s), got 0"]
    components = [
        {"type": "header", "parameters": [{"type": "text", "text": "42"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Rita"}, {"type": "text", "text": "42"}]},
        {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "42"}]}]
    sent = team.act("ana", "messages", conv.id, {"template": {"name": "shipping_update", "language": "en_US",
                                                              "components": components}})
    assert sent.status_code == 202, sent.json
    settle_until(app, lambda: Message.get_by_id(sent.json["message"]["id"]).status == "sent",
                 what="the template to be sent")
    [body] = [b for _, p, _, b in graph_api.requests if p.endswith("/messages") and b["type"] == "template"]
    assert body == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": CUSTOMER,
                    "type": "template", "template": {"name": "shipping_update", "language": {"code": "en_US"},
                                                     "components": components},
                    "biz_opaque_callback_data": sent.json["message"]["id"]}
