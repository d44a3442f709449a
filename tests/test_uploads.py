"""Agents send files (issue 9, part 5): `POST /api/v1/media` checks and stores an
upload, `media_id` in `POST /conversations/{id}/messages` sends it.

The Cloud API gets the file uploaded (`POST /{phone_number_id}/media`, once per
record while Meta keeps it) and the message by that id; WASender gets a signed
link it fetches from Baton. Real HTTP to the fakes, the outbound lane run in process.
"""
from __future__ import annotations

import time
from datetime import timedelta
from urllib.parse import urlsplit

import orjson
import pytest

from models import Media, Message
from tests.media_support import TestStorage
from tests.support import ASK_FOR_A_HUMAN, Team, bearer, conversation_of, customer_says, settle, settle_until
from tests.upload_files import jpeg, mp4, ogg, padded, pdf, png, webp

KB, MB = 1024, 1024 * 1024
PIA = "15550003333"


@pytest.fixture
def storage(tmp_path):
    return TestStorage(tmp_path / "media")


@pytest.fixture
def cloud(app_factory, graph_api, storage):
    from jobs.context import set_runtime

    app = app_factory(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                      WHATSAPP_API_BASE=graph_api.api_base, SENTIMENT_LANGUAGES="")
    app.extensions["baton"].storage = storage
    set_runtime(app.extensions["baton"])
    return app


@pytest.fixture
def wasender(app_factory, wasender_api, storage):
    from jobs.context import set_runtime

    app = app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET="hook-secret",
                      WASENDER_API_KEY=wasender_api.api_key, WASENDER_API_BASE=wasender_api.url,
                      BOT_TYPING_INDICATOR="false", SENTIMENT_LANGUAGES="")
    app.extensions["baton"].storage = storage
    set_runtime(app.extensions["baton"])
    return app


def upload(app, token: str, content: bytes, filename: str, mime: str, **form):
    from io import BytesIO

    return app.test_client().post("/api/v1/media", headers=bearer(token), content_type="multipart/form-data",
                                  data={"file": (BytesIO(content), filename, mime), **form})


def ana_holds_pia(app) -> tuple[Team, str]:
    """Pia asks for a human on `app`'s provider; Ana claims her conversation."""
    team = Team(app)
    team.add("ana")
    customer_says(app, ASK_FOR_A_HUMAN, PIA)
    settle(app)
    conversation = conversation_of(PIA)
    assert team.act("ana", "claim", conversation.id).status_code == 200
    return team, conversation.id


# -- the upload -----------------------------------------------------------------------------------

def test_an_upload_is_stored_by_its_content_and_answers_a_media_id(cloud, storage):
    team = Team(cloud)
    team.add("ana")
    photo = png()
    answer = upload(cloud, team.token["ana"], photo, "../../shot.png", "image/png")
    assert answer.status_code == 201, answer.json
    media = answer.json
    assert media == {"id": media["id"], "type": "image", "mime_type": "image/png", "size": len(photo),
                     "filename": "shot.png", "status": "stored",
                     "url": f"http://baton.test/api/v1/media/{media['id']}"}
    record = Media.get_by_id(media["id"])
    assert (record.direction, record.message_id) == ("out", None)
    assert storage.content(record.storage_key) == photo

    again = upload(cloud, team.token["ana"], photo, "same.png", "application/octet-stream")
    assert again.status_code == 201 and again.json["id"] != media["id"]
    assert Media.get_by_id(again.json["id"]).storage_key == record.storage_key
    assert storage.puts == [record.storage_key]                 # stored once

    # Before it is sent, only its uploader may fetch it.
    team.add("bo")
    assert team.call("ana", "GET", f"/api/v1/media/{media['id']}").status_code == 302
    assert team.call("bo", "GET", f"/api/v1/media/{media['id']}").status_code == 404
    link = team.call("ana", "GET", f"/api/v1/media/{media['id']}/link").json
    assert link["url"].startswith("/media/files/sha256/") and link["expires_at"].endswith("Z")
    assert cloud.test_client().get(link["url"]).get_data() == photo


@pytest.mark.parametrize("content, filename, mime, form, kind", [
    (jpeg(), "a.jpg", "image/jpeg", {}, "image"),
    (webp(90 * KB), "s.webp", "image/webp", {}, "sticker"),
    (webp(400 * KB, animated=True), "a.webp", "image/webp", {}, "sticker"),
    (ogg(), "voice.ogg", "audio/ogg", {}, "audio"),
    (mp4(), "clip.mp4", "video/mp4", {}, "video"),
    (mp4(), "song.m4a", "audio/mp4", {}, "audio"),
    (pdf(), "Invoice.pdf", "application/pdf", {}, "document"),
    (b"plain words\n", "notes.txt", "text/plain", {}, "document"),
    (png(), "scan.png", "image/png", {"type": "document"}, "document"),
], ids=["jpeg", "sticker", "animated-sticker", "ogg", "mp4", "m4a", "pdf", "txt", "png-as-document"])
def test_every_kind_whatsapp_sends_is_accepted(cloud, bot_token, content, filename, mime, form, kind):
    answer = upload(cloud, bot_token, content, filename, mime, **form)
    assert answer.status_code == 201, answer.json
    assert (answer.json["type"], answer.json["mime_type"], answer.json["size"]) == (kind, mime, len(content))


@pytest.mark.parametrize("content, filename, mime, form", [
    (png(), "lie.jpg", "image/jpeg", {}),                            # a PNG declared a JPEG
    (b"<html><script>alert(1)</script>", "x.png", "image/png", {}),  # HTML declared a picture
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg", "image/svg+xml", {}),
    (b"MZ\x90\x00\x03" + b"\x00" * 100, "setup.exe", "application/octet-stream", {}),
    (webp(), "s.webp", "image/webp", {"type": "image"}),             # WhatsApp sends webp only as a sticker
    (pdf(), "doc.pdf", "application/pdf", {"type": "video"}),
], ids=["png-as-jpeg", "html-as-png", "svg", "exe", "webp-as-image", "pdf-as-video"])
def test_a_file_that_is_not_what_it_claims_or_not_sendable_is_415_and_nothing_is_stored(
        cloud, storage, bot_token, content, filename, mime, form):
    answer = upload(cloud, bot_token, content, filename, mime, **form)
    assert (answer.status_code, answer.json["error"]) == (415, "unsupported_media_type"), answer.json
    assert storage.puts == [] and Media.select().count() == 0


@pytest.mark.parametrize("content, filename, mime", [
    (webp(101 * KB), "big.webp", "image/webp"),                     # static sticker: 100 KB
    (webp(501 * KB, animated=True), "big.webp", "image/webp"),      # animated: 500 KB
    (padded(b"\xff\xd8\xff\xe0", 5 * MB + 1), "big.jpg", "image/jpeg"),
], ids=["sticker", "animated-sticker", "image"])
def test_a_file_over_its_kinds_limit_is_413_and_nothing_is_stored(cloud, storage, bot_token, content, filename, mime):
    answer = upload(cloud, bot_token, content, filename, mime)
    assert (answer.status_code, answer.json["error"]) == (413, "payload_too_large"), answer.json
    assert answer.json["details"]["size"] > answer.json["details"]["limit"]
    assert storage.puts == [] and Media.select().count() == 0


def test_a_request_over_the_upload_limit_is_413_before_it_is_read(app_factory, graph_api, storage, bot_token,
                                                                   monkeypatch):
    app = app_factory(MEDIA_UPLOAD_MAX_BYTES=str(64 * KB))
    app.extensions["baton"].storage = storage
    read = []
    from blueprints import media as media_blueprint

    monkeypatch.setattr(media_blueprint, "classify", lambda *a: read.append(a))
    answer = upload(app, bot_token, pdf(65 * KB), "big.pdf", "application/pdf")
    assert (answer.status_code, answer.json["error"]) == (413, "payload_too_large")
    assert read == [] and storage.puts == [] and Media.select().count() == 0


def test_a_body_without_content_length_is_cut_off_at_the_upload_limit(app_factory, storage, bot_token):
    """Chunked: no length to check up front, so reading stops at MEDIA_UPLOAD_MAX_BYTES."""
    from io import BytesIO

    app = app_factory(MEDIA_UPLOAD_MAX_BYTES=str(64 * KB))
    app.extensions["baton"].storage = storage
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.pdf\"\r\n"
            f"Content-Type: application/pdf\r\n\r\n").encode() + pdf(200 * KB) + f"\r\n--{boundary}--\r\n".encode()
    answer = app.test_client().post("/api/v1/media", headers={**bearer(bot_token), "Transfer-Encoding": "chunked"},
                                    content_type=f"multipart/form-data; boundary={boundary}",
                                    input_stream=BytesIO(body), environ_overrides={"wsgi.input_terminated": True})
    assert (answer.status_code, answer.json["error"]) == (413, "payload_too_large"), answer.json
    assert storage.puts == [] and Media.select().count() == 0


def test_an_upload_must_be_multipart_with_a_file(cloud, bot_token):
    client = cloud.test_client()
    assert client.post("/api/v1/media", headers=bearer(bot_token), json={"file": "x"}).status_code == 415
    answer = client.post("/api/v1/media", headers=bearer(bot_token), content_type="multipart/form-data",
                         data={"caption": "no file"})
    assert (answer.status_code, answer.json["error"]) == (422, "validation_failed")
    assert client.post("/api/v1/media", content_type="multipart/form-data", data={}).status_code == 401


# -- sending it ------------------------------------------------------------------------------------

def test_an_agent_uploads_a_photo_and_sends_it_with_a_caption_through_the_cloud_api(cloud, graph_api, storage):
    team, conversation_id = ana_holds_pia(cloud)
    photo = png(4, 4)
    media_id = upload(cloud, team.token["ana"], photo, "shot.png", "image/png").json["id"]

    sent = team.act("ana", "messages", conversation_id, {"media_id": media_id, "caption": "here it is"})
    assert sent.status_code == 202, sent.json
    message = sent.json["message"]
    assert (message["type"], message["text"], message["media"]["id"]) == ("image", "here it is", media_id)
    settle(cloud)

    [(meta_id, uploaded)] = graph_api.uploads.items()
    assert uploaded["content"] == photo and uploaded["type"] == "image/png"
    [body] = [b for m, p, _, b in graph_api.requests if p.endswith("/messages") and b.get("type") == "image"]
    assert body["image"] == {"id": meta_id, "caption": "here it is"}
    assert Message.get_by_id(message["id"]).status == "sent"
    record = Media.get_by_id(media_id)
    assert (record.message_id, record.provider_media_id) == (message["id"], meta_id)

    # Sent again: the same Meta id, no second upload; the new message has its own record.
    again = team.act("ana", "messages", conversation_id, {"media_id": media_id}).json["message"]
    settle(cloud)
    assert len(graph_api.uploads) == 1
    bodies = [b for m, p, _, b in graph_api.requests if p.endswith("/messages") and b.get("type") == "image"]
    assert bodies[-1]["image"] == {"id": meta_id}
    copy = Media.get_by_id(again["media"]["id"])
    assert copy.id != media_id and copy.message_id == again["id"] and copy.storage_key == record.storage_key

    # The customer's viewers get the file through the API, like a customer's media.
    assert team.call("ana", "GET", f"/api/v1/media/{media_id}").status_code == 302


def test_a_document_goes_with_its_file_name(cloud, graph_api):
    team, conversation_id = ana_holds_pia(cloud)
    media_id = upload(cloud, team.token["ana"], pdf(), "Invoice 42.pdf", "application/pdf").json["id"]
    assert team.act("ana", "messages", conversation_id, {"media_id": media_id}).status_code == 202
    settle(cloud)
    [body] = [b for m, p, _, b in graph_api.requests if p.endswith("/messages") and b.get("type") == "document"]
    assert body["document"] == {"id": next(iter(graph_api.uploads)), "filename": "Invoice 42.pdf"}


def test_a_meta_media_id_older_than_its_lifetime_is_uploaded_again(cloud, graph_api):
    team, conversation_id = ana_holds_pia(cloud)
    media_id = upload(cloud, team.token["ana"], jpeg(), "a.jpg", "image/jpeg").json["id"]
    team.act("ana", "messages", conversation_id, {"media_id": media_id})
    settle(cloud)
    record = Media.get_by_id(media_id)
    [(number, upload_info)] = record.source["provider_uploads"].items()
    old = (record.created_at - timedelta(days=29, minutes=1)).isoformat() + "Z"
    Media.update(source={**record.source, "provider_uploads": {number: {**upload_info, "at": old}}}) \
        .where(Media.id == media_id).execute()

    team.act("ana", "messages", conversation_id, {"media_id": media_id})
    settle(cloud)
    assert len(graph_api.uploads) == 2


def test_a_failed_upload_to_meta_is_retried_and_the_message_is_sent_once(cloud, graph_api):
    """The upload failing means the message was not sent (not an unknown outcome): it is retried."""
    team, conversation_id = ana_holds_pia(cloud)
    media_id = upload(cloud, team.token["ana"], jpeg(), "a.jpg", "image/jpeg").json["id"]
    graph_api.fail_next(1, 500, {"error": {"code": 2, "message": "Service temporarily unavailable"}})
    message_id = team.act("ana", "messages", conversation_id, {"media_id": media_id}).json["message"]["id"]
    settle_until(cloud, lambda: Message.get_by_id(message_id).status == "sent", what="the retried send")
    assert Message.get_by_id(message_id).attempts == 2
    calls = [p.rsplit("/", 1)[-1] for m, p, _, b in graph_api.requests if m == "POST" and b is None or
             (b or {}).get("type") == "image"]
    assert calls == ["media", "media", "messages"]


def test_only_a_stored_upload_of_the_agents_own_can_be_sent(cloud, graph_api, storage):
    team, conversation_id = ana_holds_pia(cloud)
    team.add("bo")
    bos = upload(cloud, team.token["bo"], jpeg(), "b.jpg", "image/jpeg").json["id"]
    for media_id in (bos, "md_nope"):
        answer = team.act("ana", "messages", conversation_id, {"media_id": media_id})
        assert (answer.status_code, answer.json["error"]) == (422, "unknown_media"), answer.json
    # A customer's file is no upload either.
    inbound = Media.create(direction="in", kind="image", status="stored", storage_key=Media.get_by_id(bos).storage_key)
    answer = team.act("ana", "messages", conversation_id, {"media_id": inbound.id})
    assert answer.json["error"] == "unknown_media"
    assert Message.select().where(Message.direction == "out", Message.type == "image").count() == 0


def wasender_says(app, wa_id: str, text: str) -> None:
    key = {"id": f"3EB0{time.time_ns()}", "fromMe": False, "remoteJid": f"{wa_id}@s.whatsapp.net",
           "cleanedSenderPn": wa_id}
    body = orjson.dumps({"event": "messages.upsert", "timestamp": int(time.time()), "data": {"messages": [
        {"key": key, "messageBody": text, "message": {"conversation": text}, "pushName": "Pia"}]}})
    answer = app.test_client().post("/webhooks/wasender", data=body, headers={
        "Content-Type": "application/json", "X-Webhook-Signature": "hook-secret"})
    assert answer.status_code == 200, answer.json


def test_wasender_gets_a_signed_link_to_the_file_it_can_fetch_from_baton(wasender, wasender_api, storage):
    team = Team(wasender)
    team.add("ana")
    wasender_says(wasender, PIA, ASK_FOR_A_HUMAN)
    settle(wasender)
    conversation_id = conversation_of(PIA).id
    assert team.act("ana", "claim", conversation_id).status_code == 200
    clip = mp4(8 * KB)
    media_id = upload(wasender, team.token["ana"], clip, "clip.mp4", "video/mp4").json["id"]
    assert team.act("ana", "messages", conversation_id,
                    {"media_id": media_id, "caption": "see"}).status_code == 202
    settle(wasender)

    [body] = [b for m, p, _, b in wasender_api.requests if p == "/api/send-message" and b.get("videoUrl")]
    assert body["text"] == "see"
    link = urlsplit(body["videoUrl"])
    assert f"{link.scheme}://{link.netloc}" == "http://baton.test"       # PUBLIC_BASE_URL: WASender must reach it
    served, headers = storage.read_signed(wasender, body["videoUrl"])
    assert served == clip and headers["Content-Type"] == "video/mp4"
    assert Message.get(Message.type == "video").status == "sent"


def test_a_caption_goes_only_with_pictures_videos_and_documents(cloud):
    team, conversation_id = ana_holds_pia(cloud)
    voice = upload(cloud, team.token["ana"], ogg(), "v.ogg", "audio/ogg").json["id"]
    answer = team.act("ana", "messages", conversation_id, {"media_id": voice, "caption": "listen"})
    assert (answer.status_code, answer.json["error"]) == (422, "caption_not_supported"), answer.json
    assert team.act("ana", "messages", conversation_id, {"media_id": voice}).status_code == 202
