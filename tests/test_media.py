"""Customers' media (issue 9): from the webhook to a stored copy to `GET /api/v1/media/{id}`.

Real webhooks into the app, the fake Graph API and the fake WASender over real
HTTP, the media job run by an RQ worker in this process, a test Storage in a
temporary directory (tests/media_support.py).
"""
from __future__ import annotations

from datetime import timedelta

import pytest

from models import Media, Message, utcnow
from tests.fakes.server import FakeServer
from tests.media_support import TestStorage, cloud_media_webhook, sha256_b64, wasender_media_event
from tests.support import ASK_FOR_A_HUMAN, Team, bearer, conversation_of, customer_says, settle, settle_until

PIA = "15550002222"
KB = 1024
MB = 1024 * KB


@pytest.fixture
def storage(tmp_path):
    return TestStorage(tmp_path / "media")


@pytest.fixture
def short_backoff(monkeypatch):
    """A media retry is due a moment later (not after seconds of backoff)."""
    monkeypatch.setattr("jobs.media.backoff_seconds", lambda attempt, retry_after=None, **_: 0.05)


@pytest.fixture
def cloud(app_factory, graph_api, storage, n8n):
    """Baton on the Cloud API (the fake Graph API), its media kept in `storage`,
    bot turns to the fake n8n."""
    from jobs.context import set_runtime

    app = app_factory(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                      WHATSAPP_API_BASE=graph_api.api_base, N8N_BOT_URL=n8n.url_for("bot"),
                      N8N_NOTIFY_URL=n8n.url_for("notify"), SENTIMENT_LANGUAGES="")
    app.extensions["baton"].storage = storage
    set_runtime(app.extensions["baton"])
    return app


@pytest.fixture
def wasender(app_factory, wasender_api, storage, n8n):
    """Baton on WASender; the bot is n8n (that does not answer) and shows no typing, so the
    only calls to WASender are about media."""
    from jobs.context import set_runtime

    app = app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET="hook-secret",
                      WASENDER_API_KEY=wasender_api.api_key, WASENDER_API_BASE=wasender_api.url,
                      N8N_BOT_URL=n8n.url_for("bot"), BOT_TYPING_INDICATOR="false")
    app.extensions["baton"].storage = storage
    set_runtime(app.extensions["baton"])
    return app


@pytest.fixture
def foreign_host():
    """Somebody else's server, named in a payload: Baton must never call it with a key."""
    with FakeServer("foreign_host") as fake:
        fake.app.add_url_rule("/<path:anything>", view_func=lambda anything: "gotcha", methods=["GET", "POST"])
        yield fake


def customer_sends(app, kind: str, media_id: str, content: bytes, *, mime: str, wa_id: str = PIA, **extra) -> Media:
    raw, headers = cloud_media_webhook(wa_id, kind, media_id, content, mime=mime, **extra)
    answer = app.test_client().post("/webhooks/whatsapp", data=raw, headers=headers)
    assert answer.status_code == 200 and answer.json["messages"] == 1, answer.json
    return Media.get(Media.provider_media_id == media_id)


def media_of(record: Media) -> Media:
    return Media.get_by_id(record.id)


def download(app, media_id: str, token: str):
    return app.test_client().get(f"/api/v1/media/{media_id}", headers=bearer(token))


# -- every kind, end to end --------------------------------------------------------------------------

KINDS = [
    # (webhook type, extra fields, mime, size, what the API calls it)
    ("image", {"caption": "my receipt"}, "image/jpeg", 300 * KB),
    ("audio", {}, "audio/mpeg", 2 * MB),
    ("audio", {"voice": True}, "audio/ogg; codecs=opus", 40 * KB),                 # a voice note
    ("video", {"caption": "the noise it makes"}, "video/mp4", 6 * MB),
    ("document", {"filename": "../../etc/Invoice 42.pdf"}, "application/pdf", 12 * MB),
    ("sticker", {"animated": False}, "image/webp", 90 * KB),
    ("sticker", {"animated": True}, "image/webp", 450 * KB),
]


@pytest.mark.parametrize("kind, extra, mime, size", KINDS,
                         ids=["image", "audio", "voice", "video", "document", "sticker", "animated-sticker"])
def test_every_media_kind_goes_from_the_webhook_to_storage_to_a_signed_download(
        cloud, graph_api, storage, bot_token, kind, extra, mime, size):
    content = (kind.encode() * (size // len(kind) + 1))[:size]
    graph_api.add_media("880001", content, mime)

    record = customer_sends(cloud, kind, "880001", content, mime=mime, **extra)
    assert record.status == "pending" and record.kind == kind
    settle(cloud)

    record = media_of(record)
    assert (record.status, record.size, record.error) == ("stored", size, None)
    assert storage.content(record.storage_key) == content
    assert record.storage_key.endswith(record.sha256) and record.sha256 == record.declared_sha256
    message = Message.get_by_id(record.message_id)
    assert message.routed_to is not None                       # routed like any message
    shown = cloud.test_client().get(f"/api/v1/conversations/{message.conversation_id}/messages",
                                    headers=bearer(bot_token)).json["items"]
    media = next(m["media"] for m in shown if m["id"] == message.id)
    assert media == {"id": record.id, "type": kind, "mime_type": mime, "size": size, "status": "stored",
                     "filename": "Invoice 42.pdf" if kind == "document" else None,
                     "url": f"http://baton.test/api/v1/media/{record.id}"}

    answer = download(cloud, record.id, bot_token)
    assert answer.status_code == 302 and answer.headers["Cache-Control"] == "no-store"
    served, headers = storage.read_signed(cloud, answer.headers["Location"])
    assert served == content and headers["Content-Type"].startswith(mime)
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Location"].startswith("http://baton.test/media/files/sha256/")


def test_the_bot_turn_carries_the_media_with_a_url_n8n_can_fetch(cloud, graph_api, n8n, bot_token):
    photo = b"\xff\xd8 a broken screen"
    graph_api.add_media("880002", photo, "image/jpeg")
    record = customer_sends(cloud, "image", "880002", photo, mime="image/jpeg", caption="it broke")
    settle(cloud)

    turn = n8n.received("bot.turn")[-1]["json"]
    media = turn["message"]["media"]
    assert (media["id"], media["type"], media["url"]) == (
        record.id, "image", f"http://baton.test/api/v1/media/{record.id}")
    assert any((m["media"] or {}).get("url") == media["url"] for m in turn["history"])
    # n8n fetches it with its bot token and follows the redirect to the file.
    assert download(cloud, record.id, bot_token).status_code == 302


def test_routing_does_not_wait_for_the_file(cloud, graph_api, n8n, bot_token):
    """The bot turn goes out while the fetch is still pending; the API says so until it is stored."""
    photo = b"\x89PNG slow"
    graph_api.add_media("880003", photo, "image/png")
    record = customer_sends(cloud, "image", "880003", photo, mime="image/png")
    cloud.extensions["baton"].redis.delete(cloud.extensions["baton"].queues["media"].key)    # the hand-off is lost
    later = utcnow() + timedelta(hours=1)
    Media.update(next_attempt_at=later).where(Media.id == record.id).execute()
    settle(cloud)

    assert n8n.received("bot.turn")[-1]["json"]["message"]["media"]["status"] == "pending"
    waiting = download(cloud, record.id, bot_token)
    assert (waiting.status_code, waiting.json["error"], waiting.json["details"]["status"]) == (
        409, "media_not_ready", "pending")
    assert waiting.headers["Retry-After"]
    # The cron tick takes over the lost hand-off once its time (REQUEUE_AFTER after the webhook) has come.
    Media.update(next_attempt_at=utcnow()).where(Media.id == record.id).execute()
    settle_until(cloud, lambda: media_of(record).status == "stored", what="the tick to fetch it")
    assert download(cloud, record.id, bot_token).status_code == 302


# -- what is refused ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, extra, mime, size", [
    ("image", {}, "image/jpeg", 5 * MB + 1),
    ("audio", {}, "audio/ogg", 16 * MB + 1),
    ("sticker", {"animated": False}, "image/webp", 100 * KB + 1),
    ("sticker", {"animated": True}, "image/webp", 500 * KB + 1),
], ids=["image", "audio", "static-sticker", "animated-sticker"])
def test_a_file_over_its_kinds_limit_is_refused_and_the_message_is_still_routed(
        cloud, graph_api, storage, n8n, bot_token, kind, extra, mime, size):
    graph_api.add_media("880004", b"x" * size, mime)
    record = customer_sends(cloud, kind, "880004", b"x" * size, mime=mime, **extra)
    settle(cloud)

    record = media_of(record)
    assert record.status == "failed" and record.error.startswith("too_large"), record.error
    assert record.storage_key is None and storage.puts == []
    assert Message.get_by_id(record.message_id).routed_to == "bot"
    assert n8n.received("bot.turn")[-1]["json"]["message"]["media"]["id"] == record.id
    refused = download(cloud, record.id, bot_token)
    assert (refused.status_code, refused.json["details"]["status"]) == (409, "failed")
    assert refused.json["details"]["reason"].startswith("too_large")
    assert Message.get_by_id(record.message_id).to_dict()["media"] == {
        "id": record.id, "type": kind, "mime_type": mime, "size": None, "filename": None, "status": "failed",
        "url": None}


def test_a_download_without_a_declared_size_is_cut_off_at_the_limit():
    """No Content-Length, no size from the provider: reading stops just past the limit."""
    from integrations.whatsapp.base import MediaDownload
    from jobs.media import Refused, download_into_spool

    read = []

    class Endless:
        def iter_content(self, size):
            while True:
                read.append(size)
                yield b"y" * size

        def close(self):
            read.append("closed")

    with pytest.raises(Refused, match="too_large"):
        with download_into_spool(MediaDownload(response=Endless(), mime_type="image/png"), 100 * KB):
            pass
    assert read[-1] == "closed" and sum(n for n in read if n != "closed") <= 100 * KB + 64 * KB


def test_a_file_whose_sha256_is_not_the_declared_one_is_refused(cloud, graph_api, storage, n8n):
    graph_api.add_media("880005", b"what the customer sent", "image/jpeg")
    record = customer_sends(cloud, "image", "880005", None, mime="image/jpeg",
                            sha256=sha256_b64(b"something else entirely"))
    settle(cloud)

    record = media_of(record)
    assert record.status == "failed" and record.error.startswith("sha256_mismatch"), record.error
    assert storage.puts == [] and Message.get_by_id(record.message_id).routed_to == "bot"
    assert n8n.received("bot.turn")                                 # the bot heard from the customer anyway
    metrics = cloud.test_client().get("/metrics").get_data(as_text=True)
    assert 'baton_media{status="failed"} 1.0' in metrics and 'baton_media{status="stored"} 0.0' in metrics


def test_a_declared_sha256_in_hex_is_compared_too(cloud, graph_api):
    import hashlib

    content = b"hex declared"
    graph_api.add_media("880006", content, "image/jpeg")
    record = customer_sends(cloud, "image", "880006", None, mime="image/jpeg",
                            sha256=hashlib.sha256(content).hexdigest().upper())
    settle(cloud)
    assert media_of(record).status == "stored"


# -- once per file -------------------------------------------------------------------------------------

def test_the_same_file_from_two_customers_is_stored_once(cloud, graph_api, storage):
    meme = b"GIF89a the same meme"
    graph_api.add_media("880007", meme, "image/gif")
    graph_api.add_media("880008", meme, "image/gif")
    first = customer_sends(cloud, "image", "880007", meme, mime="image/gif", wa_id="15550003333")
    second = customer_sends(cloud, "image", "880008", meme, mime="image/gif", wa_id="15550004444")
    settle(cloud)

    first, second = media_of(first), media_of(second)
    assert first.status == second.status == "stored"
    assert first.storage_key == second.storage_key and first.id != second.id
    assert storage.puts == [first.storage_key]


# -- the provider's URL and our storage fail -----------------------------------------------------------

def test_an_expired_download_url_is_looked_up_again(cloud, graph_api, storage):
    """The first try downloads but cannot store; by the retry the URL it had has
    expired (404), so the media id is looked up again for a fresh one."""
    photo = b"\xff\xd8 expiring"
    graph_api.add_media("880009", photo, "image/jpeg")
    record = customer_sends(cloud, "image", "880009", photo, mime="image/jpeg")
    storage.down = True
    settle(cloud)
    assert media_of(record).status == "pending" and media_of(record).source["resolved_url"]
    graph_api.clock_ahead = graph_api.media_url_ttl + 1          # the download URL has expired meanwhile
    storage.down = False
    settle_until(cloud, lambda: media_of(record).status == "stored", what="the retry")

    assert [path for _, path, _, _ in graph_api.requests if "880009" in path] == [
        "/v23.0/880009", "/lookaside/880009/content",             # first try: stored nowhere (storage down)
        "/lookaside/880009/content",                              # the retry: that URL has expired (404)
        "/v23.0/880009", "/lookaside/880009/content"]             # looked up again, downloaded
    assert storage.content(media_of(record).storage_key) == photo


def test_storage_down_is_retried_until_it_is_back_and_never_given_up(app_factory, graph_api, storage, short_backoff):
    from jobs.context import set_runtime

    app = app_factory(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                      WHATSAPP_API_BASE=graph_api.api_base, MEDIA_FETCH_ATTEMPTS=2)
    app.extensions["baton"].storage = storage
    set_runtime(app.extensions["baton"])
    clip = b"\x00\x00\x00 ftypmp4"
    graph_api.add_media("880010", clip, "video/mp4")
    record = customer_sends(app, "video", "880010", clip, mime="video/mp4")
    storage.down = True
    settle_until(app, lambda: media_of(record).attempts >= 4, what="several tries against the dead storage")

    record = media_of(record)
    assert record.status == "pending" and "storage" in record.error      # more tries than MEDIA_FETCH_ATTEMPTS
    storage.down = False
    settle_until(app, lambda: media_of(record).status == "stored", what="the storage to come back")
    assert media_of(record).error is None and storage.content(media_of(record).storage_key) == clip


def test_a_provider_that_keeps_failing_fails_the_record_after_the_attempts(
        app_factory, graph_api, storage, short_backoff):
    from jobs.context import set_runtime

    app = app_factory(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                      WHATSAPP_API_BASE=graph_api.api_base, MEDIA_FETCH_ATTEMPTS=3)
    app.extensions["baton"].storage = storage
    set_runtime(app.extensions["baton"])
    graph_api.add_media("880011", b"never", "image/png")
    record = customer_sends(app, "image", "880011", b"never", mime="image/png")
    graph_api.fail_next(100, 503, {"error": {"message": "Service temporarily unavailable", "code": 2}})
    settle_until(app, lambda: media_of(record).status != "pending", what="the attempts to run out")

    record = media_of(record)
    assert (record.status, record.attempts) == ("failed", 3) and "temporarily" in record.error


# -- who may download -------------------------------------------------------------------------------

def test_only_those_who_may_see_the_conversation_get_its_media(cloud, graph_api):
    team = Team(cloud)
    team.add("ana", groups=("support",))
    team.add("bo", groups=("billing",))
    customer_says(cloud, ASK_FOR_A_HUMAN, wa_id=PIA)
    settle(cloud)
    assert conversation_of(PIA).state == "PENDING_AGENT"
    photo = b"\x89PNG proof"
    graph_api.add_media("880012", photo, "image/png")
    record = customer_sends(cloud, "image", "880012", photo, mime="image/png")
    settle(cloud)

    assert team.call("ana", "GET", f"/api/v1/media/{record.id}").status_code == 302
    hidden = team.call("bo", "GET", f"/api/v1/media/{record.id}")
    assert (hidden.status_code, hidden.json["error"]) == (404, "not_found")
    assert team.call("bo", "GET", "/api/v1/media/md_nope").json == hidden.json    # same as no such media
    assert cloud.test_client().get(f"/api/v1/media/{record.id}").status_code == 401


# -- retention -------------------------------------------------------------------------------------

def test_retention_deletes_old_files_no_younger_record_holds(app_factory, graph_api, storage, bot_token):
    from jobs.context import set_runtime
    from jobs.media import expire

    app = app_factory(WHATSAPP_PROVIDER="cloud_api", WHATSAPP_ACCESS_TOKEN=graph_api.access_token,
                      WHATSAPP_API_BASE=graph_api.api_base, MEDIA_RETENTION_DAYS=30)
    rt = app.extensions["baton"]
    rt.storage = storage
    set_runtime(rt)
    shared, lonely = b"shared meme", b"an old invoice"
    for media_id, content, wa_id in (("880013", shared, "15550005555"), ("880014", shared, "15550006666"),
                                     ("880015", lonely, "15550005555")):
        graph_api.add_media(media_id, content, "image/png")
        customer_sends(app, "image", media_id, content, mime="image/png", wa_id=wa_id)
    settle(app)
    old_shared, young_shared, old_lonely = (Media.get(Media.provider_media_id == i)
                                            for i in ("880013", "880014", "880015"))
    long_ago = utcnow() - timedelta(days=40)
    Media.update(stored_at=long_ago).where(Media.id.in_([old_shared.id, old_lonely.id])).execute()

    assert expire(rt) == 1
    assert storage.deleted == [old_lonely.storage_key]
    assert media_of(old_lonely).status == "expired"
    assert Message.get_by_id(old_lonely.message_id).media["status"] == "expired"
    assert media_of(old_shared).status == "stored"              # a younger message holds the same file
    assert download(app, old_shared.id, bot_token).status_code == 302
    gone = download(app, old_lonely.id, bot_token)
    assert (gone.status_code, gone.json["details"]["status"]) == (409, "expired")

    Media.update(stored_at=long_ago).where(Media.id == young_shared.id).execute()
    assert expire(rt) == 1
    assert storage.deleted[-1] == old_shared.storage_key
    assert {media_of(old_shared).status, media_of(young_shared).status} == {"expired"}


def test_retention_zero_keeps_everything(cloud, graph_api, storage):
    from jobs.media import expire

    graph_api.add_media("880016", b"keep me", "image/png")
    record = customer_sends(cloud, "image", "880016", b"keep me", mime="image/png")
    settle(cloud)
    Media.update(stored_at=utcnow() - timedelta(days=4000)).where(Media.id == record.id).execute()
    assert expire(cloud.extensions["baton"]) == 0 and media_of(record).status == "stored"


# -- WASender -------------------------------------------------------------------------------------

def wasender_post(app, body: bytes):
    answer = app.test_client().post("/webhooks/wasender", data=body, headers={
        "Content-Type": "application/json", "X-Webhook-Signature": "hook-secret"})
    assert answer.status_code == 200, answer.json
    return answer


def test_wasender_media_is_decrypted_by_wasender_and_downloaded_without_the_api_key(
        wasender, wasender_api, storage, bot_token):
    voice = b"OggS a voice note"
    url = wasender_api.add_media("3EB0VOICE1", voice, "audio/ogg")
    wasender_post(wasender, wasender_media_event("15550007777", "audio", "3EB0VOICE1", url, mime="audio/ogg",
                                                 content=voice, ptt=True))
    settle(wasender)

    record = Media.get()
    assert (record.status, storage.content(record.storage_key)) == ("stored", voice)
    calls = [(path, headers.get("Authorization")) for _, path, headers, _ in wasender_api.requests]
    assert calls == [("/api/decrypt-media", f"Bearer {wasender_api.api_key}"),
                     ("/api/decrypted-media/3EB0VOICE1", None)]
    assert download(wasender, record.id, bot_token).status_code == 302


def test_wasender_never_sends_its_key_to_a_host_named_in_a_payload(wasender, wasender_api, foreign_host, storage):
    # No media key: nothing to decrypt, and the payload's URL is not fetched.
    wasender_post(wasender, wasender_media_event("15550008888", "image", "3EB0FOREIGN1",
                                                 f"{foreign_host.url}/steal.enc", mime="image/jpeg",
                                                 media_key=None))
    # WASender answers with a public URL on another host: downloaded, without the key.
    wasender_api.add_media("3EB0FOREIGN2", b"x", "image/jpeg")
    wasender_post(wasender, wasender_media_event("15550008888", "image", "3EB0FOREIGN2",
                                                 f"{foreign_host.url}/also.enc", mime="image/jpeg"))
    decrypts = [r for r in wasender_api.requests if r[1] == "/api/decrypt-media"]
    wasender_api.fail_next(1, 200, {"publicUrl": f"{foreign_host.url}/decrypted/abc"})
    settle(wasender)

    no_key = Media.get(Media.provider_media_id == "3EB0FOREIGN1")
    assert no_key.status == "failed" and no_key.error.startswith("no_media_key")
    assert len([r for r in wasender_api.requests if r[1] == "/api/decrypt-media"]) == len(decrypts) + 1
    assert [path for _, path, _, _ in foreign_host.requests] == ["/decrypted/abc"]
    assert all("Authorization" not in headers for _, _, headers, _ in foreign_host.requests)
    assert all(wasender_api.api_key not in str(headers) for _, _, headers, _ in foreign_host.requests)


def test_a_webhook_sent_again_makes_no_second_record(cloud, graph_api, storage):
    photo = b"\xff\xd8 twice"
    graph_api.add_media("880017", photo, "image/jpeg")
    raw, headers = cloud_media_webhook(PIA, "image", "880017", photo, mime="image/jpeg", message_id="wamid.TWICE")
    for _ in range(2):
        assert cloud.test_client().post("/webhooks/whatsapp", data=raw, headers=headers).status_code == 200
    settle(cloud)
    assert [(m.status, m.attempts) for m in Media.select()] == [("stored", 1)]
    assert storage.puts == [Media.get().storage_key]
