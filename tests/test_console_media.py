"""Files in the agents' console (issue 9, part 7), in a real browser: a customer's
photo inline (and enlarged), a file still being fetched or that could not be,
players and document links, and an agent attaching a photo to a reply.

The app runs over real HTTP on a thread with the Cloud API pointed at the fake
Graph API; media jobs run in this process when the story settles.
"""
from __future__ import annotations

import re

import pytest

from models import Media, Message, utcnow
from tests.media_support import cloud_media_webhook
from tests.support import Team, settle, settle_until, waiting_customer
from tests.test_console import browser, serve_desk, tabs  # noqa: F401  (fixtures)
from tests.upload_files import pdf, png

EVE = "15557770042"
IMAGE_LOADED = """(selector) => {
    const image = document.querySelector(selector);
    return Boolean(image && image.complete && image.naturalWidth > 0);
}"""


@pytest.fixture
def cloud_desk(serve_desk, graph_api):  # noqa: F811
    return serve_desk(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                      WHATSAPP_API_BASE=graph_api.api_base, WHATSAPP_VERIFY_TOKEN="v")


def customer_sends(desk, kind: str, media_id: str, content: bytes | None, mime: str, **extra) -> None:
    raw, headers = cloud_media_webhook(EVE, kind, media_id, content, mime=mime, **extra)
    answer = desk.test_client().post("/webhooks/whatsapp", data=raw, headers=headers)
    assert answer.status_code == 200 and answer.json["messages"] == 1, answer.json


@pytest.mark.browser
def test_a_customers_files_show_inline_as_players_and_links_or_as_not_fetched_yet(cloud_desk, graph_api, tabs):  # noqa: F811
    desk, url = cloud_desk
    team = Team(desk)
    team.add("bo")
    eve = waiting_customer(desk, wa_id=EVE, name="Eve")
    photo = png(40, 30, (20, 120, 220))
    graph_api.add_media("91001", photo, "image/png")
    customer_sends(desk, "image", "91001", photo, "image/png", caption="the dent")
    graph_api.add_media("91002", pdf(4096), "application/pdf")
    customer_sends(desk, "document", "91002", pdf(4096), "application/pdf", filename="Invoice 7.pdf")
    customer_sends(desk, "video", "91003-gone", None, "video/mp4")         # Meta no longer has it
    settle(desk)
    assert Media.get(Media.provider_media_id == "91003-gone").status == "failed"

    tab = tabs(url)
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve.id}")
    page, expect = tab.page, tab.expect
    image = '#history .media-image[data-status="stored"] img'
    page.wait_for_function(IMAGE_LOADED, arg=image)
    assert page.locator(image).evaluate("i => i.naturalWidth") == 40
    expect(page.locator("#history li", has=page.locator(".media-image")).locator(".msg-text")).to_have_text("the dent")
    page.click(f"{image}")                                             # click to enlarge
    expect(page.locator("#lightbox")).to_be_visible()
    page.wait_for_function(IMAGE_LOADED, arg="#lightbox-image")
    page.click("#lightbox")
    expect(page.locator("#lightbox")).to_be_hidden()

    expect(page.locator("#history .media-document .media-doc")).to_have_text("Invoice 7.pdf 4 KB")
    with page.expect_download() as downloading:
        page.click("#history .media-document .media-doc")
    assert downloading.value.suggested_filename == "Invoice 7.pdf"
    expect(page.locator('#history .media-video[data-status="failed"]')).to_have_text(
        re.compile(r"^Video: could not be fetched: \S.+"))

    # A voice note arrives while Meta is briefly down: shown as being fetched, then as a player once stored.
    voice = b"OggS" + b"\x00" * 2000
    graph_api.add_media("91004", voice, "audio/ogg")
    graph_api.fail_next(1, 503, {"error": {"code": 2, "message": "Service temporarily unavailable"}})
    customer_sends(desk, "audio", "91004", voice, "audio/ogg", voice=True)
    settle(desk)
    record = Media.get(Media.provider_media_id == "91004")
    assert record.status == "pending" and record.attempts == 1
    expect(page.locator('#history .media-audio[data-status="pending"]')).to_have_text("Audio: fetching…")
    Media.update(next_attempt_at=utcnow()).where(Media.id == record.id).execute()       # its retry is due
    settle_until(desk, lambda: Media.get_by_id(record.id).status == "stored", what="the voice note")
    player = page.locator('#history .media-audio[data-status="stored"] audio[controls]')
    expect(player).to_have_attribute("src", re.compile(r"^/media/files/sha256/"))
    expect(page.locator("#history .media-audio[data-status=pending]")).to_have_count(0)
    assert tab.dialogs == [] and tab.errors == []


@pytest.mark.browser
def test_an_agent_attaches_a_photo_and_sends_it_with_a_caption(cloud_desk, graph_api, tabs):  # noqa: F811
    desk, url = cloud_desk
    team = Team(desk)
    team.add("bo")
    eve = waiting_customer(desk, wa_id=EVE, name="Eve")
    tab = tabs(url)
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve.id}")
    page, expect = tab.page, tab.expect
    expect(page.locator("#detail-state")).to_have_attribute("data-state", "PENDING_AGENT")   # open and loaded
    expect(page.locator("#composer-attach")).to_be_enabled()
    photo = png(24, 16)
    page.set_input_files("#composer-file", files=[{"name": "shot.png", "mimeType": "image/png", "buffer": photo}])
    expect(page.locator("#composer-attachment")).to_contain_text("shot.png")
    page.fill("#composer-text", "Is this the part?")
    page.click("#composer-send")

    mine = '#history li[data-sender="agent"] .media-image[data-status="stored"] img'
    page.wait_for_function(IMAGE_LOADED, arg=mine)
    expect(page.locator('#history li[data-sender="agent"] .msg-text')).to_have_text(["Is this the part?"])
    expect(page.locator("#composer-attachment")).to_be_hidden()
    expect(page.locator("#detail-state")).to_have_attribute("data-state", "AGENT_CONTROLLED")   # replying claimed it

    sent = Message.get((Message.conversation == eve.id) & (Message.sender == "agent"))
    settle_until(desk, lambda: Message.get_by_id(sent.id).status == "sent", what="the photo to be sent")
    [(meta_id, uploaded)] = graph_api.uploads.items()
    assert uploaded["content"] == photo
    [body] = [b for _, p, _, b in graph_api.requests if p.endswith("/messages") and b.get("type") == "image"]
    assert body["image"] == {"id": meta_id, "caption": "Is this the part?"}
    assert tab.dialogs == [] and tab.errors == []


@pytest.mark.browser
def test_a_file_whatsapp_does_not_send_is_refused_in_the_composer(cloud_desk, tabs):  # noqa: F811
    desk, url = cloud_desk
    team = Team(desk)
    team.add("bo")
    eve = waiting_customer(desk, wa_id=EVE, name="Eve")
    tab = tabs(url)
    tab.sign_in(team.token["bo"], path=f"/console/conversations/{eve.id}")
    page, expect = tab.page, tab.expect
    expect(page.locator("#detail-state")).to_have_attribute("data-state", "PENDING_AGENT")
    expect(page.locator("#composer-attach")).to_be_enabled()
    page.set_input_files("#composer-file", files=[{"name": "page.png", "mimeType": "image/png",
                                                    "buffer": b"<html><script>alert(1)</script></html>"}])
    page.click("#composer-send")
    expect(page.locator("#composer-error")).to_contain_text("not the image/png it is declared as")
    assert Media.select().count() == 0 and not Message.select().where(Message.sender == "agent").exists()
    assert tab.dialogs == [] and tab.errors == []


@pytest.mark.parametrize("storage_url, sources", [
    (None, ""),                                                      # the filesystem store: this origin
    ("s3://media/baton?endpoint_url=https://minio.example.com:9000", " https://minio.example.com:9000"),
    ("s3://media/baton?endpoint_url=https://r2.example.com&addressing_style=virtual",
     " https://r2.example.com https://*.r2.example.com"),
    ("s3://media/baton?region=eu-west-1", " https://*.amazonaws.com"),
], ids=["filesystem", "minio", "virtual-hosted", "aws"])
def test_the_console_may_show_pictures_and_play_media_from_the_stores_links_only(app_factory, storage_url, sources):
    app = app_factory(**({"MEDIA_STORAGE_URL": storage_url} if storage_url else {}))
    policy = app.test_client().get("/console").headers["Content-Security-Policy"]
    assert f"img-src 'self' data:{sources};" in policy
    assert f"media-src 'self'{sources};" in policy
    assert "default-src 'self'" in policy and "script-src 'self';" in policy
