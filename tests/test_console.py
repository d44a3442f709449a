"""The agents' web console (`/console`): the page and its files, then stories told
in a real browser (Debian's Chromium driven by Playwright).

The main story runs Baton as real processes (gunicorn, RQ workers, RQ cron), so
the live stream and the jobs behind it are the production ones. Smaller stories
serve the test app over real HTTP on a thread and run jobs in-process.

Run: .venv/bin/python -m pytest tests/test_console.py
"""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from models import ApiToken, Conversation, utcnow
from tests.support import ASK_FOR_A_HUMAN, Team, customer_says, settle, waiting_customer
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


@pytest.mark.browser
def test_a_reply_outside_the_customer_service_window_says_only_templates_can_be_sent(
        app, live_server, tabs, eve_waits):
    team = Team(app)
    team.add("bo")
    (Conversation.update(last_inbound_at=utcnow() - timedelta(hours=25))
     .where(Conversation.id == eve_waits.id)
     .execute())
    tab = tabs(live_server)
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve_waits.id}")
    tab.page.fill("#composer-text", "Hello?")
    tab.page.click("#composer-send")
    tab.expect(tab.page.locator("#composer-error")).to_have_text(
        "The customer last wrote over 24 h ago; only templates can be sent.")
    assert Conversation.get_by_id(eve_waits.id).state == "PENDING_AGENT"


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
