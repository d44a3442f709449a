"""The agents' web console (`/console`): the page and its files, then stories told
in a real browser (Debian's Chromium driven by Playwright).

The main story runs Baton as real processes (gunicorn, RQ workers, RQ cron), so
the live stream and the jobs behind it are the production ones. Smaller stories
serve the test app over real HTTP on a thread and run jobs in-process.

Run: .venv/bin/python -m pytest tests/test_console.py
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from models import ApiToken, Conversation
from tests.support import ASK_FOR_A_HUMAN, Team, backdate, conversation_of, customer_says, settle, waiting_customer
from tests.harness import agent_add_with_cli, customers_say
from tests.support import bearer

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<img src=x onerror=alert(1)>"
PAGES = ("/console", "/console/", "/console/conversations/c_x")


# -- the page and its files -----------------------------------------------------------------

@pytest.mark.parametrize("path", PAGES)
def test_the_console_page_is_served_as_html(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert 'id="signin-form"' in response.get_data(as_text=True)


def test_the_page_loads_its_script_and_stylesheet_from_this_origin(client):
    html = client.get("/console").get_data(as_text=True)
    sources = re.findall(r'<script[^>]*\bsrc="([^"]+)"', html) + re.findall(r'<link[^>]*\bhref="([^"]+)"', html)
    assert sorted(s.split("?")[0] for s in sources) == ["/static/console.css", "/static/console.js"]
    for source in sources:
        response = client.get(source)
        assert response.status_code == 200, source
    assert client.get("/static/console.js").mimetype == "text/javascript"
    assert client.get("/static/console.css").mimetype == "text/css"


def test_the_page_holds_no_secret_and_no_inline_script(client, app, admin_token):
    html = client.get("/console/conversations/c_x").get_data(as_text=True)
    settings = app.extensions["baton"].settings
    assert admin_token not in html and "bt_" not in html
    for secret in (settings.WHATSAPP_APP_SECRET, settings.BATON_EVENT_SECRET, settings.WHATSAPP_VERIFY_TOKEN):
        assert secret not in html
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []      # every script is a file
    assert not re.search(r"<[^>]+\son[a-z]+=", html)                    # no inline event handlers


def test_the_page_forbids_inline_and_foreign_scripts(client):
    policy = client.get("/console").headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy


def test_an_unknown_static_file_is_404(client):
    response = client.get("/static/no-such-file.js")
    assert response.status_code == 404 and response.json["error"] == "not_found"


def test_the_console_is_not_part_of_the_api_document(client):
    assert not [path for path in client.get("/openapi.json").json["paths"] if path.startswith("/console")]


# -- a real browser --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium, shared by this module's stories (each gets a fresh context)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium "
                    "(./test.sh installs it: apt-get install chromium chromium-driver)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=10_000)     # the console polls every 5 s while its stream is down
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


class Tab:
    """One browser tab on the console, recording dialogs (an XSS would alert), page
    errors and the typing calls it makes."""

    def __init__(self, browser, base_url: str):
        from playwright.sync_api import expect

        self.expect = expect
        self.context = browser.new_context(base_url=base_url)
        self.context.set_default_timeout(10_000)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def sign_in(self, token: str, path: str = "/console") -> None:
        self.page.goto(path)
        self.page.fill("#token", token)
        self.page.click("#signin-submit")
        self.expect(self.page.locator("#session")).to_be_visible()

    def item(self, text: str, state: str | None = None):
        selector = "#conversation-list li" + (f'[data-state="{state}"]' if state else "")
        return self.page.locator(selector).filter(has_text=text)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tabs(browser):
    opened: list[Tab] = []

    def open_tab(base_url: str) -> Tab:
        opened.append(Tab(browser, base_url))
        return opened[-1]
    yield open_tab
    for tab in opened:
        tab.close()


def read_conversation(base_url: str, token: str, conversation_id: str) -> dict:
    response = requests.get(f"{base_url}/api/v1/conversations/{conversation_id}", headers=bearer(token), timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.browser
@pytest.mark.processes
def test_an_agent_takes_a_customer_from_the_queue_replies_and_hands_back_to_the_bot(start_baton, tabs):
    # gunicorn (2 workers) + 2 RQ workers + RQ cron; no sentiment model (the customer asks for a human)
    baton = start_baton(SENTIMENT_LANGUAGES="")
    token = agent_add_with_cli(baton, "Ana", max_concurrent=3)
    admin = ApiToken.issue("console-test", "admin")[1]
    tab = tabs(baton.url)
    page, expect = tab.page, tab.expect

    tab.sign_in(token)
    expect(page.locator("#me-name")).to_have_text("Ana")
    page.select_option("#presence", "online")
    expect(page.locator("#presence-note")).to_have_text("receiving offers")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")

    # The customer asks for a human; the conversation shows up under Waiting without a reload.
    customers_say(baton.url, ["15557770001"], ASK_FOR_A_HUMAN, name=f"Dana {HOSTILE}")
    waiting = tab.item("Dana", state="PENDING_AGENT")
    expect(waiting).to_be_visible(timeout=15_000)
    expect(waiting.locator(".offered")).to_have_text("Offered to you")
    expect(waiting.locator(".contact-name")).to_have_text(f"Dana {HOSTILE}")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")    # the stream, not the poll
    conversation_id = waiting.get_attribute("data-id")

    waiting.click()
    expect(page).to_have_url(f"{baton.url}/console/conversations/{conversation_id}")
    expect(page.locator('#history li[data-sender="user"] .msg-text')).to_have_text([ASK_FOR_A_HUMAN])

    # Typing is announced while the agent types, and withdrawn once the reply is sent.
    with page.expect_request(lambda r: r.url.endswith("/typing") and r.post_data_json == {"typing": True}):
        page.locator("#composer-text").press_sequentially("Hi Dana, Ana here.", delay=5)
    with page.expect_request(lambda r: r.url.endswith("/typing") and r.post_data_json == {"typing": False}):
        page.click("#composer-send")
    expect(page.locator('#history li[data-sender="agent"] .msg-text')).to_have_text(["Hi Dana, Ana here."])
    expect(page.locator("#composer-text")).to_have_value("")
    expect(page.locator("#detail-state")).to_have_attribute("data-state", "AGENT_CONTROLLED")
    me = requests.get(f"{baton.url}/api/v1/agents/me", headers=bearer(token), timeout=10)
    conversation = read_conversation(baton.url, admin, conversation_id)
    assert (conversation["state"], conversation["assigned_agent_id"]) == ("AGENT_CONTROLLED", me.json()["id"])
    page.click('[data-tab="mine"]')
    expect(tab.item("Dana", state="AGENT_CONTROLLED")).to_be_visible()

    # Hostile customer text arrives live and is shown as text, never as HTML.
    customers_say(baton.url, ["15557770001"], f"{HOSTILE} are you there?", name=f"Dana {HOSTILE}")
    expect(page.locator('#history li[data-sender="user"] .msg-text').last).to_have_text(f"{HOSTILE} are you there?")
    assert page.locator("img").count() == 0
    assert tab.dialogs == [] and tab.errors == []

    page.click("#action-release")
    expect(page.locator("#detail-state")).to_have_attribute("data-state", "BOT_CONTROLLED")
    expect(tab.item("Dana")).to_have_count(0)                # no longer in Mine
    assert read_conversation(baton.url, admin, conversation_id)["state"] == "BOT_CONTROLLED"
    expect(page.locator("#composer-send")).to_be_disabled()
    assert tab.dialogs == [] and tab.errors == []


# -- smaller stories: the app on a thread, jobs run in-process ----------------------------------


@pytest.fixture
def eve_waits(app):
    """A customer (Eve) who asked for a human and waits in `support`."""
    conv = waiting_customer(app, wa_id="15557770002", name="Eve")
    assert conv.state == "PENDING_AGENT"
    return conv


@pytest.mark.browser
def test_a_link_from_a_notification_opens_that_conversation_after_sign_in(app, live_server, tabs, eve_waits):
    team = Team(app)
    team.add("bo")
    tab = tabs(live_server)
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve_waits.id}")
    expect = tab.expect
    expect(tab.page.locator("#detail-contact .contact-name")).to_have_text("Eve")
    expect(tab.page.locator('#history li[data-sender="user"] .msg-text')).to_have_text([ASK_FOR_A_HUMAN])
    expect(tab.page.locator("#action-claim")).to_be_visible()


@pytest.fixture
def serve_desk(make_desk, monkeypatch):
    """Factory: serve_desk(**settings) is a desk app over real HTTP on a thread (jobs run in-process):
    (app, url)."""
    from blueprints import events
    from tests.support import ServedApp

    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0.2)
    served: list[ServedApp] = []

    def serve(**settings):
        desk = make_desk(**settings)
        served.append(ServedApp(desk, "baton").start())
        return desk, served[-1].url
    yield serve
    for server in served:
        server.stop()


@pytest.fixture
def catalog_server(serve_desk):
    """A desk app with the example TEMPLATES_FILE, over real HTTP."""
    from config import ROOT

    return serve_desk(TEMPLATES_FILE=str(ROOT / "templates.example.json"))


@pytest.mark.browser
def test_outside_the_window_free_text_is_disabled_and_says_why(app, live_server, tabs, eve_waits):
    team = Team(app)
    team.add("bo")
    backdate(eve_waits.id, last_inbound_at=25 * 3600)
    tab = tabs(live_server)
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve_waits.id}")
    page, expect = tab.page, tab.expect
    expect(page.locator("#detail-window")).to_have_text("Window closed: send a template")
    expect(page.locator("#composer-text")).to_be_disabled()
    expect(page.locator("#composer-send")).to_be_disabled()
    expect(page.locator("#composer-note")).to_have_text(re.compile(
        r"^Free text is off: the customer last wrote over 24 hours ago, and WhatsApp delivers only approved "
        r"templates until they write again\."))
    expect(page.locator("#template-picker")).to_have_attribute("open", "")
    expect(page.locator("#template-note")).to_contain_text("No approved templates are listed here")
    assert Conversation.get_by_id(eve_waits.id).state == "PENDING_AGENT"
    assert tab.dialogs == [] and tab.errors == []


@pytest.mark.browser
def test_inside_the_window_the_console_says_how_long_it_stays_open(app, live_server, tabs, eve_waits):
    team = Team(app)
    team.add("bo")
    backdate(eve_waits.id, last_inbound_at=20 * 3600 + 45 * 60)          # 3 h 15 min left
    tab = tabs(live_server)
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve_waits.id}")
    tab.expect(tab.page.locator("#detail-window")).to_have_text(re.compile(r"^Window open for 3 h 1[45] min$"))
    tab.expect(tab.page.locator("#composer-text")).to_be_enabled()
    assert tab.page.locator("#template-picker").get_attribute("open") is None


@pytest.mark.browser
def test_an_agent_picks_a_template_fills_its_parameters_and_sends_it(catalog_server, tabs):
    from models import Message

    desk, url = catalog_server
    team = Team(desk)
    team.add("bo")
    eve = waiting_customer(desk, wa_id="15557770002", name="Eve")
    backdate(eve.id, last_inbound_at=25 * 3600)
    tab = tabs(url)
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve.id}")
    page, expect = tab.page, tab.expect
    expect(page.locator("#composer-text")).to_be_disabled()
    expect(page.locator("#template-select option")).to_have_text([
        "follow_up · en_US (utility)", "follow_up · es (utility)", "order_update · en_US (utility)",
        "callback_reminder · en_US (utility)", "team_will_reply · en_US (utility)"])
    expect(page.locator("#template-text")).to_contain_text("Hi {{1}}, this is {{2}} from the support team")
    expect(page.locator("#template-params label")).to_have_text(["Body {{1}}", "Body {{2}}"])

    page.click("#template-send")                                       # nothing filled in yet
    expect(page.locator("#template-error")).to_have_text("Fill in every parameter of the template.")
    page.select_option("#template-select", label="order_update · en_US (utility)")
    expect(page.locator("#template-params label")).to_have_text([
        "Header {{1}}", "Body {{1}}", "Button 1 (url)", "Button 2 (quick reply)"])
    page.select_option("#template-select", label="follow_up · es (utility)")
    page.fill("#template-param-0", "Eve")
    page.fill("#template-param-1", "Bo")
    page.click("#template-send")
    expect(page.locator('#history li[data-sender="agent"] .msg-text')).to_have_text(["[template]"])
    expect(page.locator("#detail-state")).to_have_attribute("data-state", "AGENT_CONTROLLED")   # it claimed
    sent = Message.get((Message.conversation == eve.id) & (Message.sender == "agent"))
    assert sent.template == {"name": "follow_up", "language": "es", "components": [
        {"type": "body", "parameters": [{"type": "text", "text": "Eve"}, {"type": "text", "text": "Bo"}]}]}
    expect(page.locator("#template-error")).to_have_text("")
    assert tab.dialogs == [] and tab.errors == []


@pytest.mark.browser
def test_a_template_of_the_business_account_with_named_parameters_is_sent_with_their_names(
        serve_desk, graph_api, tabs):
    from models import Message
    from tests.support import settle_until

    graph_api.set_templates("WABA-7", [{
        "id": "9", "name": "booking", "language": "en_US", "status": "APPROVED", "category": "UTILITY",
        "parameter_format": "NAMED", "components": [{"type": "BODY", "text": "Table for {{guests}} on {{day}}."}]}])
    desk, url = serve_desk(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                           WHATSAPP_API_BASE=graph_api.api_base, WHATSAPP_VERIFY_TOKEN="v", WHATSAPP_WABA_ID="WABA-7")
    team = Team(desk)
    team.add("bo")
    eve = waiting_customer(desk, wa_id="15557770002", name="Eve")
    backdate(eve.id, last_inbound_at=25 * 3600)
    tab = tabs(url)
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve.id}")
    page, expect = tab.page, tab.expect
    expect(page.locator("#template-select option")).to_have_text(["booking · en_US (utility)"])
    expect(page.locator("#template-params label")).to_have_text(["Body {{guests}}", "Body {{day}}"])
    page.fill("#template-param-0", "4")
    page.fill("#template-param-1", "Sunday")
    page.click("#template-send")
    expect(page.locator('#history li[data-sender="agent"] .msg-text')).to_have_text(["[template]"])
    sent = Message.get((Message.conversation == eve.id) & (Message.sender == "agent"))
    settle_until(desk, lambda: Message.get_by_id(sent.id).status == "sent", what="the template to be sent")
    [body] = [b for _, p, _, b in graph_api.requests if p.endswith("/messages") and b.get("type") == "template"]
    assert body["template"] == {"name": "booking", "language": {"code": "en_US"}, "components": [
        {"type": "body", "parameters": [{"type": "text", "parameter_name": "guests", "text": "4"},
                                        {"type": "text", "parameter_name": "day", "text": "Sunday"}]}]}
    assert tab.dialogs == [] and tab.errors == []


@pytest.mark.browser
def test_an_api_error_message_is_shown_to_the_agent(app, live_server, tabs, eve_waits):
    team = Team(app)
    team.add("bo")
    team.add("cy")
    assert team.act("cy", "claim", eve_waits.id).status_code == 200
    tab = tabs(live_server)
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve_waits.id}")
    tab.expect(tab.page.locator("#detail-error")).to_have_text("This conversation belongs to another agent.")


@pytest.mark.browser
def test_an_admin_token_without_an_agent_reads_in_read_only_mode(app, live_server, tabs, eve_waits,
                                                                 admin_token):
    tab = tabs(live_server)
    tab.sign_in(admin_token)
    page, expect = tab.page, tab.expect
    expect(page.locator("#readonly-note")).to_contain_text("Read-only mode")
    expect(page.locator("#presence-field")).to_be_hidden()
    expect(page.locator('[data-tab="all"]')).to_be_visible()
    tab.item("Eve").click()
    expect(page.locator('#history li[data-sender="user"] .msg-text')).to_have_text([ASK_FOR_A_HUMAN])
    expect(page.locator("#composer")).to_be_hidden()
    expect(page.locator("#actions")).to_be_hidden()


@pytest.mark.browser
def test_a_refused_token_is_told_at_sign_in(live_server, tabs):
    tab = tabs(live_server)
    tab.page.goto("/console")
    tab.page.fill("#token", "bt_not-a-real-token")
    tab.page.click("#signin-submit")
    tab.expect(tab.page.locator("#signin-error")).to_have_text("The token is unknown or revoked.")
    tab.expect(tab.page.locator("#console")).to_be_hidden()


@pytest.mark.browser
def test_while_the_live_stream_is_cut_the_queue_still_fills_and_the_stream_comes_back(app, live_server, tabs, work):
    team = Team(app)
    team.add("bo")
    tab = tabs(live_server)
    page, expect = tab.page, tab.expect
    cut = lambda route: route.abort()    # noqa: E731 - the network refuses the stream
    page.route("**/api/v1/events*", cut)
    tab.sign_in(team.token["bo"])
    expect(page.locator("#live")).to_have_attribute("data-state", "reconnecting")

    customer_says(app, ASK_FOR_A_HUMAN, wa_id="15557770003", name="Flo")
    work()
    expect(tab.item("Flo", state="PENDING_AGENT")).to_be_visible()      # read by polling

    page.unroute("**/api/v1/events*", cut)
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=20_000)
    customer_says(app, ASK_FOR_A_HUMAN, wa_id="15557770004", name="Gus")
    work()
    expect(tab.item("Gus", state="PENDING_AGENT")).to_be_visible()
    assert tab.errors == []


@pytest.mark.browser
def test_a_supervisor_sees_the_bot_typing_until_its_answer_arrives(serve_desk, n8n, tabs):
    from models import ApiToken, BotTurn

    desk, url = serve_desk(N8N_BOT_URL=n8n.url_for("baton-bot"))
    team = Team(desk)
    team.add("sue", role="supervisor")
    bot = ApiToken.issue("bot", "bot")[1]

    def the_bot_answers(text: str) -> None:
        turn = BotTurn.select().order_by(BotTurn.created_at.desc()).first()
        answer = desk.test_client().post("/api/v1/bot/replies", headers=bearer(bot), json={
            "conversation_id": turn.conversation_id, "turn_id": turn.id, "text": text})
        assert answer.status_code in (200, 202), answer.json
        settle(desk)

    customer_says(desk, "hello", wa_id="15557770003")
    settle(desk)
    the_bot_answers("Hi! What can I do for you?")
    conv = conversation_of("15557770003")
    tab = tabs(url)
    tab.sign_in(team.token["sue"], path=f"/console/conversations/{conv.id}")
    page, expect = tab.page, tab.expect
    expect(page.locator('#history li[data-sender="bot"] .msg-text')).to_have_text(["Hi! What can I do for you?"])
    expect(page.locator("#typing-note")).to_be_hidden()

    customer_says(desk, "when do you open?", wa_id="15557770003")
    settle(desk)
    expect(page.locator("#typing-note")).to_have_text("The bot is typing…")
    the_bot_answers("At nine.")
    expect(page.locator('#history li[data-sender="bot"] .msg-text')).to_have_text(
        ["Hi! What can I do for you?", "At nine."])
    expect(page.locator("#typing-note")).to_be_hidden()
    assert tab.errors == []


# -- order, previews, closing and transferring ----------------------------------------------------

def early_in_a_second() -> None:
    """Wait until the clock is 100-600 ms into a second: a reply sent now has a
    later `sent_at` than any WhatsApp timestamp (whole seconds) of this second."""
    import time
    from datetime import datetime

    while not 0.1 <= datetime.now().microsecond / 1e6 <= 0.6:
        time.sleep(0.01)


@pytest.mark.browser
def test_a_customer_message_in_the_same_second_as_the_reply_shows_below_it_live_and_after_a_reload(
        app, live_server, tabs, eve_waits):
    from models import Message
    from models.base import epoch_seconds
    from tests.support import settle

    team = Team(app)
    team.add("bo")
    assert team.act("bo", "claim", eve_waits.id).status_code == 200
    tab = tabs(live_server)
    page, expect = tab.page, tab.expect
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve_waits.id}")
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    page.click('[data-tab="mine"]')
    history = page.locator("#history li .msg-text")

    page.fill("#composer-text", "Hi Eve, Bo here.")
    early_in_a_second()
    page.click("#composer-send")
    expect(history.last).to_have_text("Hi Eve, Bo here.")
    reply = Message.get(Message.text == "Hi Eve, Bo here.")
    customer_says(app, "Thanks!", wa_id="15557770002", name="Eve", timestamp=int(epoch_seconds(reply.sent_at)),
                  message_id="wamid.same-second")
    settle(app)
    customer = Message.get(Message.text == "Thanks!")
    assert customer.sent_at < reply.sent_at and customer.seq > reply.seq     # earlier by the clock, handled later

    expect(history.last).to_have_text("Thanks!")                              # live, below the reply
    texts = history.all_text_contents()
    assert texts.index("Hi Eve, Bo here.") == len(texts) - 2
    preview = tab.item("Eve").locator(".preview")
    expect(preview.locator(".preview-text")).to_have_text("Thanks!")
    expect(preview).to_have_attribute("data-direction", "in")

    page.reload()
    expect(page.locator("#session")).to_be_visible()
    expect(history.last).to_have_text("Thanks!")
    texts = history.all_text_contents()
    assert texts.index("Hi Eve, Bo here.") == len(texts) - 2
    page.click('[data-tab="mine"]')
    expect(tab.item("Eve").locator(".preview-text")).to_have_text("Thanks!")
    assert tab.errors == [] and tab.dialogs == []


@pytest.mark.browser
def test_close_stands_apart_and_asks_first_and_transfer_picks_from_online_agents_and_groups(
        app, live_server, tabs, eve_waits):
    from tests.support import waiting_customer as customer_waits

    team = Team(app)
    team.add("bo", max_concurrent=5)
    team.add("cy", groups=("billing",))
    team.add("dee", groups=("vip",), online=False)
    assert team.act("bo", "claim", eve_waits.id).status_code == 200
    tab = tabs(live_server)
    page, expect = tab.page, tab.expect
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve_waits.id}")
    expect(page.locator("#detail-state")).to_have_attribute("data-state", "AGENT_CONTROLLED")

    # Close looks like what it is, apart from the hand-over actions.
    close = page.locator("#action-close")
    expect(close).to_have_class(re.compile(r"\bdanger\b"))
    expect(page.locator("#action-release")).not_to_have_class(re.compile(r"\bdanger\b"))
    expect(page.locator("#action-transfer")).not_to_have_class(re.compile(r"\bdanger\b"))
    assert page.locator("#close-area #action-close").count() == 1
    assert page.locator("#close-area #action-release, #close-area #transfer-form").count() == 0

    # The picker is labelled and offers every group and the agents online now (not Dee, not Bo himself).
    picker = page.get_by_label("Transfer to")
    expect(picker.locator('optgroup[label="Online agents"] option')).to_have_text([re.compile(r"^cy · billing")])
    expect(picker.locator('optgroup[label="Groups"] option')).to_have_text(
        ["billing", "support (this conversation's group)", "vip"])

    # Close asks first: cancelling changes nothing.
    close.click()
    expect(page.locator("#close-confirm")).to_be_visible()
    expect(page.locator("#close-question")).to_have_text("End this conversation?")
    page.click("#action-close-cancel")
    expect(page.locator("#close-confirm")).to_be_hidden()
    assert Conversation.get_by_id(eve_waits.id).state == "AGENT_CONTROLLED"
    close.click()
    page.click("#action-close-confirm")
    expect(page.locator("#detail-state")).to_have_attribute("data-state", "CLOSED")
    assert Conversation.get_by_id(eve_waits.id).state == "CLOSED"

    # Transferring another customer to Cy through the picker.
    flo = customer_waits(app, wa_id="15557770005", name="Flo")
    assert team.act("bo", "claim", flo.id).status_code == 200
    page.goto(f"/console/conversations/{flo.id}")
    expect(page.locator("#detail-state")).to_have_attribute("data-state", "AGENT_CONTROLLED")
    picker.select_option(f"agent:{team.id('cy')}")
    page.click("#action-transfer")
    expect(page.locator("#detail-state")).to_have_attribute("data-state", "PENDING_AGENT")
    flo_now = Conversation.get_by_id(flo.id)
    assert (flo_now.state, flo_now.offered_agent_id) == ("PENDING_AGENT", team.id("cy"))
    assert tab.errors == [] and tab.dialogs == []


@pytest.mark.browser
def test_a_customer_without_a_phone_number_shows_the_username(app, live_server, tabs):
    from tests.test_identity import message_from, post

    team = Team(app)
    team.add("bo")
    post(app, message_from(ASK_FOR_A_HUMAN, user_id="US.4417722900311550021", username="@rosa.l", name="Rosa"))
    post(app, message_from(ASK_FOR_A_HUMAN, phone="15557770005", user_id="US.4417722900311550022",
                           username="kai.n", name="Kai"))
    settle(app)
    tab = tabs(live_server)
    tab.sign_in(team.token["bo"])
    expect = tab.expect
    expect(tab.item("Rosa").locator(".contact-number")).to_have_text("@rosa.l")
    expect(tab.item("Kai").locator(".contact-number")).to_have_text("+15557770005 · @kai.n")
    tab.item("Rosa").click()
    expect(tab.page.locator("#detail-contact .contact-number")).to_have_text("@rosa.l")
    assert tab.dialogs == [] and tab.errors == []
