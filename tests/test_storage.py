"""Media storage (integrations/storage): both backends through one table of behaviours, the S3 one
against moto's standalone server over real HTTP, and the filesystem store's own signed links
served by the app (expiry, tampering, traversal, ranges, headers)."""
from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import uuid
from types import SimpleNamespace
from urllib.parse import quote, unquote, urlsplit

import pytest
import requests
from itsdangerous import URLSafeSerializer

from config import ConfigError, load_settings
from integrations.storage import (ObjectMissing, StorageError, StorageUnavailable, content_disposition, content_key,
                                  links, parse_storage_url, storage_for)
from integrations.storage.filesystem import FilesystemStorage
from integrations.storage.s3 import S3Storage
from tests.support import free_port, wait_until

SECRET = "storage-test-secret"


def blob(data: bytes) -> tuple[str, bytes]:
    return content_key(hashlib.sha256(data).hexdigest()), data


# -- the stores -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_server():
    """moto's S3, a real HTTP server on 127.0.0.1, and boto3's usual credential variables pointing at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _answers(url), timeout=15, what="moto's server to answer")
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        yield url
    server.stop()


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
        return True
    except requests.RequestException:
        return False


def s3_bucket(endpoint: str) -> str:
    import boto3

    name = f"baton-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def s3_url(endpoint: str, bucket: str, prefix: str = "baton/media") -> str:
    return f"s3://{bucket}/{prefix}?endpoint_url={quote(endpoint, safe='')}&region=us-east-1"


@pytest.fixture(params=["filesystem", "s3"])
def store(request, tmp_path):
    """Each backend, built from its MEDIA_STORAGE_URL exactly as Baton builds it."""
    if request.param == "filesystem":
        url = f"file://{tmp_path / 'media'}"
    else:
        endpoint = request.getfixturevalue("moto_server")
        url = s3_url(endpoint, s3_bucket(endpoint))
    return storage_for(SimpleNamespace(MEDIA_STORAGE_URL=url, SECRET_KEY=SECRET))


class Trickle(io.RawIOBase):
    """A stream handing out its bytes a little at a time, calling `during()` between reads."""

    def __init__(self, data: bytes, during=lambda: None):
        self.data, self.at, self.during = data, 0, during

    def readable(self):
        return True

    def read(self, n=-1):
        self.during()
        n = 4096 if n is None or n < 0 else min(n, 4096)
        chunk = self.data[self.at:self.at + n]
        self.at += len(chunk)
        return chunk


BAD_KEYS = [
    "../../etc/passwd", "/etc/passwd", "sha256/../../etc/passwd", "sha256/ab/cd/../../../../etc/passwd",
    "sha256%2F..%2F..%2Fetc%2Fpasswd", "..%252f..%252fetc%252fpasswd", "sha256\\..\\..\\etc\\passwd", "",
    "invoice.pdf", "sha256/ab/cd/" + "ab" * 32,                       # directories that do not match the digest
    "sha256/AB/CD/" + "AB" * 32, "sha256/ab/ab/" + "ab" * 32 + "/", "/sha256/ab/ab/" + "ab" * 32,
    "sha256/ab/ab/" + "ab" * 31 + "a", "sha1/ab/ab/" + "ab" * 32, "sha256/ab/ab/" + "ab" * 32 + "\x00",
    "sha256/ab/ab/" + "ab" * 32 + "\n",
]


# -- the table both backends pass ------------------------------------------------------------------------

def test_content_keys_come_from_the_digest_only():
    digest = hashlib.sha256(b"x").hexdigest()
    assert content_key(digest) == f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    assert content_key(digest.upper()) == content_key(digest)
    for bad in ("", "../../etc/passwd", digest[:-1], digest + "0", "g" * 64, "invoice.pdf"):
        with pytest.raises(StorageError):
            content_key(bad)


def test_put_exists_open_size_delete(store):
    key, data = blob(os.urandom(3 * 1024 * 1024 + 17))      # more than one chunk
    assert not store.exists(key)
    store.put(key, data, "video/mp4")
    assert store.exists(key) and store.size(key) == len(data)
    with store.open(key) as stream:
        assert stream.read() == data
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(ObjectMissing):
        store.open(key)
    with pytest.raises(ObjectMissing):
        store.size(key)
    store.delete(key)                                      # gone already: fine


def test_put_takes_a_stream(store):
    key, data = blob(b"voice note " * 5000)
    store.put(key, Trickle(data), "audio/ogg")
    with store.open(key) as stream:
        assert stream.read() == data


def test_put_is_idempotent_by_key(store):
    key, data = blob(b"the same receipt")
    store.put(key, data, "image/jpeg")
    store.put(key, io.BytesIO(data), "image/jpeg")
    errors = []

    def again():
        try:
            store.put(key, data, "image/jpeg")
        except Exception as exc:       # noqa: BLE001 - collected and asserted below
            errors.append(exc)
    threads = [threading.Thread(target=again) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with store.open(key) as stream:
        assert stream.read() == data
    assert store.size(key) == len(data)


def test_bytes_that_do_not_hash_to_their_key_are_refused(store):
    key, _ = blob(b"what the customer sent")
    with pytest.raises(StorageError, match="hash"):
        store.put(key, b"something else", "image/jpeg")
    assert not store.exists(key)


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_keys_not_of_the_content_key_form_are_refused(store, bad):
    for call in (lambda: store.put(bad, b"x", "text/plain"), lambda: store.exists(bad), lambda: store.open(bad),
                 lambda: store.size(bad), lambda: store.delete(bad),
                 lambda: store.signed_url(bad, ttl=60, content_type="text/plain", filename=None)):
        with pytest.raises(StorageError) as refused:
            call()
        assert not isinstance(refused.value, (ObjectMissing, StorageUnavailable))


def test_ping_answers_when_the_store_is_there(store):
    store.ping()


# -- the filesystem store ----------------------------------------------------------------------------------

def test_a_filesystem_write_appears_whole_or_not_at_all(tmp_path):
    store = FilesystemStorage(tmp_path / "media", SECRET)
    key, data = blob(os.urandom(200_000))
    final = store.path(key)
    seen = []
    store.put(key, Trickle(data, during=lambda: seen.append(final.exists())), "image/png")
    assert seen and not any(seen), "the object was visible before it was complete"
    assert final.read_bytes() == data
    assert [p.name for p in final.parent.iterdir()] == [final.name], "a temporary file was left behind"
    bad_key, _ = blob(b"other")
    with pytest.raises(StorageError):
        store.put(bad_key, data, "image/png")
    assert not store.path(bad_key).exists()
    assert list(store.path(bad_key).parent.iterdir()) == [], "a refused write left its temporary file"


def test_the_filesystem_store_lays_objects_out_by_key(tmp_path):
    store = FilesystemStorage(tmp_path / "media", SECRET)
    key, data = blob(b"abc")
    store.put(key, data, "text/plain")
    assert (tmp_path / "media" / key).read_bytes() == data


def test_filesystem_ping_fails_when_the_directory_cannot_be_used(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(StorageUnavailable):
        FilesystemStorage(tmp_path / "a-file", SECRET).ping()
    with pytest.raises(StorageUnavailable):
        FilesystemStorage(tmp_path / "a-file" / "media", SECRET).ping()


def test_the_filesystem_store_needs_an_absolute_root_and_a_secret(tmp_path):
    with pytest.raises(StorageError):
        FilesystemStorage("relative/media", SECRET)
    with pytest.raises(StorageError, match="SECRET_KEY"):
        FilesystemStorage(tmp_path, "")


# -- the S3 store --------------------------------------------------------------------------------------------

def test_s3_objects_live_under_the_prefix_with_their_content_type(moto_server):
    import boto3

    bucket = s3_bucket(moto_server)
    store = storage_for(SimpleNamespace(MEDIA_STORAGE_URL=s3_url(moto_server, bucket, "tenant/media"),
                                        SECRET_KEY=""))
    assert isinstance(store, S3Storage)
    key, data = blob(b"\x89PNG picture")
    store.put(key, data, "image/png")
    head = boto3.client("s3", endpoint_url=moto_server).head_object(Bucket=bucket, Key=f"tenant/media/{key}")
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(data)


def test_a_presigned_s3_link_serves_the_object_with_the_chosen_headers(moto_server):
    store = storage_for(SimpleNamespace(MEDIA_STORAGE_URL=s3_url(moto_server, s3_bucket(moto_server)),
                                        SECRET_KEY=""))
    key, data = blob(b"OggS a voice note")
    store.put(key, data, "application/octet-stream")
    url = store.signed_url(key, ttl=60, content_type="audio/ogg", filename="nota de voz ñ.ogg",
                           public_base="http://ignored.test")
    assert url.startswith(moto_server) and "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200 and answer.content == data
    assert answer.headers["Content-Type"] == "audio/ogg"
    assert answer.headers["Content-Disposition"] == content_disposition("audio/ogg", "nota de voz ñ.ogg")
    assert "filename*=UTF-8''nota%20de%20voz%20%C3%B1.ogg" in answer.headers["Content-Disposition"]
    # (moto does not check presigned signatures or expiry by default; S3 does, and so does Baton's own link)


def test_s3_ping_fails_for_a_missing_bucket_or_an_unreachable_endpoint(moto_server):
    missing = storage_for(SimpleNamespace(MEDIA_STORAGE_URL=s3_url(moto_server, "no-such-bucket"), SECRET_KEY=""))
    with pytest.raises(StorageUnavailable):
        missing.ping()
    nowhere = storage_for(SimpleNamespace(MEDIA_STORAGE_URL=s3_url(f"http://127.0.0.1:{free_port()}", "b"),
                                          SECRET_KEY=""))
    with pytest.raises(StorageUnavailable):
        nowhere.ping()
    key, data = blob(b"x")
    with pytest.raises(StorageUnavailable):
        nowhere.put(key, data, "text/plain")


# -- MEDIA_STORAGE_URL and SECRET_KEY ---------------------------------------------------------------------

def test_storage_urls_are_checked_at_start_up():
    assert parse_storage_url("file:///srv/media").path == "/srv/media"
    where = parse_storage_url("s3://bucket/a/b?endpoint_url=http%3A%2F%2Fminio%3A9000&region=eu-west-1")
    assert (where.bucket, where.prefix, dict(where.options)) == (
        "bucket", "a/b", {"endpoint_url": "http://minio:9000", "region": "eu-west-1"})
    for bad in ("file://relative/media", "media", "s3:///prefix", "s3://b?colour=red", "ftp://host/x",
                "s3://b?addressing_style=sideways"):
        with pytest.raises(ConfigError, match="MEDIA_STORAGE_URL"):
            load_settings(environ={"WHATSAPP_APP_SECRET": "s", "MEDIA_STORAGE_URL": bad})


def test_the_web_app_refuses_to_start_with_file_storage_and_no_secret_key(app_factory, moto_server):
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        app_factory(SECRET_KEY="")
    s3_app = app_factory(SECRET_KEY="", MEDIA_STORAGE_URL=s3_url(moto_server, s3_bucket(moto_server)))
    assert isinstance(s3_app.extensions["baton"].storage, S3Storage)


def test_the_runtime_builds_its_store_once(rt, tmp_path):
    assert isinstance(rt.storage, FilesystemStorage) and rt.storage is rt.storage
    assert rt.storage.root == tmp_path / "media"


# -- /readyz ---------------------------------------------------------------------------------------------

def test_readyz_reports_the_store(client):
    assert client.get("/readyz").json["storage"] == "ok"


def test_readyz_is_503_when_the_store_is_down(app_factory, tmp_path, moto_server):
    (tmp_path / "not-a-directory").write_text("x")
    for url in (f"file://{tmp_path / 'not-a-directory'}", s3_url(moto_server, "no-such-bucket")):
        response = app_factory(MEDIA_STORAGE_URL=url).test_client().get("/readyz")
        assert response.status_code == 503 and response.headers["Retry-After"]
        assert response.json == {"database": "ok", "redis": "ok", "storage": "down: StorageUnavailable",
                                 "breaker": "closed", "spool": 0}
    up = app_factory(MEDIA_STORAGE_URL=s3_url(moto_server, s3_bucket(moto_server))).test_client().get("/readyz")
    assert up.status_code == 200 and up.json["storage"] == "ok"


# -- the filesystem store's own links, served by the app ------------------------------------------------------

@pytest.fixture
def served(rt):
    """A stored PDF and a signed link to it."""
    key, data = blob(b"%PDF-1.7 " + bytes(range(256)) * 40)
    rt.storage.put(key, data, "application/pdf")
    url = rt.storage.signed_url(key, ttl=60, content_type="application/pdf", filename="Factura nº 7.pdf")
    return SimpleNamespace(key=key, data=data, url=url, token=unquote(url.split("?t=", 1)[1]))


def refused(response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.get_data()[:300]
    assert response.mimetype == "application/json"
    if code:
        assert response.json["error"] == code


def test_a_signed_link_serves_the_file_with_its_headers(client, served):
    assert served.url.startswith(f"/media/files/{served.key}?t=")
    response = client.get(served.url)
    assert response.status_code == 200 and response.get_data() == served.data
    assert response.headers["Content-Type"] == "application/pdf"
    assert response.headers["Content-Length"] == str(len(served.data))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.headers["Content-Disposition"] == (
        "attachment; filename=\"Factura n_ 7.pdf\"; filename*=UTF-8''Factura%20n%C2%BA%207.pdf")
    assert response.headers["Cache-Control"].startswith("private, max-age=")
    head = client.head(served.url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(served.data))


def test_a_link_is_absolute_with_a_public_base(rt, client, served):
    url = rt.storage.signed_url(served.key, ttl=60, content_type="image/jpeg", filename=None,
                                public_base="https://baton.example.com/")
    assert url.startswith(f"https://baton.example.com/media/files/{served.key}?t=")
    response = client.get(url.removeprefix("https://baton.example.com"))
    assert response.headers["Content-Type"] == "image/jpeg" and response.headers["Content-Disposition"] == "inline"


def test_range_requests_let_audio_and_video_seek(client, served):
    size = len(served.data)
    part = client.get(served.url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.get_data() == served.data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{size}"
    assert part.headers["X-Content-Type-Options"] == "nosniff"
    tail = client.get(served.url, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.get_data() == served.data[-10:]
    rest = client.get(served.url, headers={"Range": f"bytes={size - 5}-"})
    assert rest.status_code == 206 and rest.get_data() == served.data[-5:]
    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}"):
        answer = client.get(served.url, headers={"Range": unsatisfiable})
        refused(answer, 416, "range_not_satisfiable")
        assert answer.headers["Content-Range"] == f"bytes */{size}"


def test_an_expired_link_is_refused(client, served, monkeypatch):
    assert client.get(served.url).status_code == 200
    real = links.now
    monkeypatch.setattr(links, "now", lambda: real() + 61)
    refused(client.get(served.url), 403, "media_link_expired")


def test_tampered_links_are_refused(rt, client, served):
    other_key, other = blob(b"another customer's file")
    rt.storage.put(other_key, other, "image/png")
    token = served.token
    payload, signature = token.rsplit(".", 1)
    # Change the signature's first character: its last one may only carry base64 padding bits,
    # so swapping it can leave the decoded signature as it was (a test that passed by luck).
    flipped = f"{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    refused(client.get(f"/media/files/{served.key}?t={flipped}"), 403, "media_link_invalid")
    refused(client.get(f"/media/files/{other_key}?t={quote(token)}"), 403, "media_link_invalid")
    refused(client.get(f"/media/files/{served.key}"), 403, "media_link_invalid")
    refused(client.get(f"/media/files/{served.key}?t="), 403, "media_link_invalid")
    forged = URLSafeSerializer("a guessed key", salt=links.SALT).dumps(
        {"k": served.key, "e": int(time.time()) + 60, "t": "text/html", "f": None})
    refused(client.get(f"/media/files/{served.key}?t={forged}"), 403, "media_link_invalid")
    html = URLSafeSerializer("x").dump_payload({"k": served.key, "e": int(time.time()) + 60, "t": "text/html",
                                                "f": None}).decode()
    refused(client.get(f"/media/files/{served.key}?t={html}.{signature}"), 403, "media_link_invalid")


def fetch(client, url: str):
    """GET `url`, following werkzeug's merge-slashes redirect (308), which must stay under /media/files/."""
    answer = client.get(url)
    if answer.status_code == 308:
        moved = urlsplit(answer.headers["Location"])
        assert moved.path.startswith("/media/files/"), answer.headers["Location"]
        answer = client.get(f"{moved.path}?{moved.query}")
    return answer


TRAVERSALS = [
    "../../canary", "..%2F..%2Fcanary", "%2e%2e/%2e%2e/canary", "%2e%2e%2f%2e%2e%2fcanary",
    "%252e%252e%252f%252e%252e%252fcanary", "..%252f..%252fcanary", "sha256/../../canary",
    "sha256/ab/cd/../../../../canary", "..\\..\\canary", "..%5c..%5ccanary", "%2fetc%2fpasswd",
    "/etc/passwd", "//etc/passwd", "....//....//canary", "sha256/%2e%2e/%2e%2e/canary",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_never_reads_outside_the_store(client, rt, tmp_path, served, path):
    (tmp_path / "canary").write_text("CANARY: outside the store")
    opened = []
    real_open = open

    def watching_open(file, *args, **kwargs):
        opened.append(os.path.realpath(file) if isinstance(file, (str, os.PathLike)) else file)
        return real_open(file, *args, **kwargs)
    import builtins

    for token in (served.token, ""):
        builtins.open = watching_open
        try:
            answer = fetch(client, f"/media/files/{path}?t={quote(token)}")
        finally:
            builtins.open = real_open
        assert answer.status_code in (403, 404), (path, answer.status_code)
        assert answer.mimetype == "application/json" and b"CANARY" not in answer.get_data()
        root = os.path.realpath(rt.storage.root)
        assert all(not isinstance(p, str) or p.startswith(root + os.sep) for p in opened), opened


@pytest.mark.parametrize("key", ["../canary", "sha256/../../canary", "/etc/passwd",
                                 "sha256/ab/cd/" + "ab" * 32])
def test_even_a_validly_signed_bad_key_reads_nothing(client, rt, tmp_path, key):
    """Were the secret ever used to sign a key that is not a content key, the store still refuses it."""
    (tmp_path / "canary").write_text("CANARY")
    with pytest.raises(StorageError):
        rt.storage.signed_url(key, ttl=60, content_type="text/plain", filename=None)
    token = URLSafeSerializer(rt.settings.SECRET_KEY, salt=links.SALT).dumps(
        {"k": key, "e": int(time.time()) + 60, "t": "text/plain", "f": None})
    rt.storage.ping()                   # the store's directory exists, so `<root>/../canary` would resolve
    for path in (key, quote(key, safe=""), quote(quote(key, safe=""), safe="")):
        answer = fetch(client, f"/media/files/{path}?t={token}")
        assert answer.status_code in (403, 404) and b"CANARY" not in answer.get_data(), path


def test_a_missing_object_is_404(rt, client):
    key, _ = blob(b"never stored")
    refused(client.get(rt.storage.signed_url(key, ttl=60, content_type="image/png", filename=None)), 404,
            "not_found")


def test_with_s3_the_app_serves_no_files(app_factory, moto_server, served):
    s3_app = app_factory(MEDIA_STORAGE_URL=s3_url(moto_server, s3_bucket(moto_server)))
    refused(s3_app.test_client().get(served.url), 404, "not_found")


def test_customer_file_names_are_made_safe_for_headers():
    assert content_disposition("audio/ogg", None) == "inline"
    assert content_disposition("text/html", "page.html").startswith("attachment; ")
    assert content_disposition("image/svg+xml", "x.svg").startswith("attachment; ")
    header = content_disposition("image/jpeg", "../../etc/évil\"name\r\n;x.jpg")
    assert "\r" not in header and "\n" not in header and "/" not in header.split("filename*=")[0]
    assert header == ("inline; filename=\"_vil_name_x.jpg\"; "
                      "filename*=UTF-8''%C3%A9vil%22name%3Bx.jpg")
    assert content_disposition("image/png", "...") == "inline"


def test_a_file_deleted_while_its_link_is_answered_is_404(client, served, monkeypatch):
    import blueprints.media_files as media_files

    real = media_files.send_file

    def deleted_first(path, *args, **kwargs):
        os.unlink(path)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(media_files, "send_file", deleted_first)
    refused(client.get(served.url), 404, "not_found")
