"""A property-based webhook fuzzer (hypothesis): correctly signed Cloud API and
WASender bodies, built by mutating Baton's own fixtures (a value swapped for
any JSON value — wrong types, huge numbers, 5,000-character strings, NUL bytes,
deep nesting — a key dropped, a key added), posted through the real endpoint.

For every body: never a 5xx; a refusal (4xx) writes nothing; an answer 200
stores exactly what it counts (messages, unsupported updates); and routing
then takes every stored message (nothing half-written, no poison message).

Runs derandomized (the same cases on every run, so CI is reproducible);
BATON_FUZZ_EXAMPLES raises the number of cases per provider (default 120);
BATON_FUZZ_RANDOM=1 explores new cases on each run."""
from __future__ import annotations

import json
import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import Contact, Conversation, Message, UnsupportedUpdate
from tests.fixtures.samples import cloud_headers, samples, wasender_headers
from tests.support import TEST_APP_SECRET, settle

EXAMPLES = int(os.environ.get("BATON_FUZZ_EXAMPLES", "120"))
WASENDER_SECRET = "fuzz-wasender-secret"
TALLY = {"cases": 0, "5xx": 0, "by_status": {}}

BODIES = {provider: [orjson.loads(s.raw) for s in samples(provider)
                     if isinstance(orjson.loads(s.raw), (dict, list))]
          for provider in ("cloud_api", "wasender")}

_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12).map(lambda s: s + "\x00" + s),
    st.integers(min_value=300, max_value=5000).map(lambda n: "9" * n),          # 5,000-digit numbers
    st.integers(min_value=201, max_value=5000).map(lambda n: "x" * n),          # longer than any column
    st.sampled_from(["", " ", "0", "-1", "1e309", "null", "true", "2026-13-45T25:61:61Z", "@s.whatsapp.net",
                     "15550001111@g.us", "status@broadcast", "BR.", "../../etc/passwd", "\u202e\ufeff"]),
)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
                    st.floats(allow_nan=False, allow_infinity=False), _text)
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(_text, inner, max_size=4)), max_leaves=12)


def paths(value, prefix=()):
    """Every place in a JSON document: (path, value)."""
    yield prefix, value
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, prefix + (index,))


def mutate(document, path, how: str, new):
    if not path:
        return new if how == "replace" else document
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if how == "replace":
        parent[last] = new
    elif how == "drop":
        del parent[last]
    elif how == "add" and isinstance(parent[last], dict):
        parent[last]["fuzz_" + str(len(parent[last]))] = new
    elif how == "add" and isinstance(parent[last], list):
        parent[last].append(new)
    else:
        parent[last] = new
    return document


@st.composite
def signed_bodies(draw, provider: str):
    document = orjson.loads(orjson.dumps(draw(st.sampled_from(BODIES[provider]))))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        places = list(paths(document))
        path, _ = draw(st.sampled_from(places))
        document = mutate(document, path, draw(st.sampled_from(["replace", "replace", "drop", "add"])), draw(_json))
    return json.dumps(document).encode()          # the stdlib writes integers of any size


def counts() -> dict:
    return {"messages": Message.select().count(), "unsupported": UnsupportedUpdate.select().count(),
            "contacts": Contact.select().count(), "conversations": Conversation.select().count()}


def post_and_check(app, path: str, raw: bytes, headers: dict) -> None:
    before = counts()
    response = app.test_client().post(path, data=raw, headers=headers)
    TALLY["cases"] += 1
    TALLY["by_status"][response.status_code] = TALLY["by_status"].get(response.status_code, 0) + 1
    if response.status_code >= 500:
        TALLY["5xx"] += 1
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:500], raw[:2000])
    assert response.is_json, response.get_data(as_text=True)[:200]
    after = counts()
    if response.status_code >= 400:
        assert after == before, "a refused webhook wrote something"
        return
    answer = response.json
    # A message of a type Baton cannot route is stored (as `unsupported`) but counted
    # as ignored, like the updates kept apart; together they are what was stored.
    stored = after["messages"] - before["messages"] + after["unsupported"] - before["unsupported"]
    assert stored == answer["messages"] + answer["ignored"], answer
    settle(app)
    stuck = Message.select().where((Message.direction == "in") & Message.routed_to.is_null()).count()
    assert stuck == 0, f"{stuck} stored messages were never routed"


FUZZ = settings(max_examples=EXAMPLES, derandomize=not os.environ.get("BATON_FUZZ_RANDOM"), deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@pytest.fixture
def wasender_app(app_factory):
    return app_factory(WHATSAPP_PROVIDER="wasender", WASENDER_WEBHOOK_SECRET=WASENDER_SECRET,
                       WASENDER_API_KEY="fuzz-wasender-key")


@FUZZ
@given(raw=signed_bodies("cloud_api"))
def test_signed_cloud_api_bodies_never_earn_a_5xx_nor_half_write(app, raw):
    post_and_check(app, "/webhooks/whatsapp", raw, cloud_headers(raw, TEST_APP_SECRET))


@FUZZ
@given(raw=signed_bodies("wasender"))
def test_signed_wasender_bodies_never_earn_a_5xx_nor_half_write(wasender_app, raw):
    post_and_check(wasender_app, "/webhooks/wasender", raw, wasender_headers(WASENDER_SECRET))


def test_zz_report_the_fuzz_tally(capsys):
    """Prints the number of cases and of 5xx (read by the closing note)."""
    with capsys.disabled():
        print(f"\nwebhook fuzz: {TALLY['cases']} signed bodies, {TALLY['5xx']} answered 5xx, "
              f"by status {dict(sorted(TALLY['by_status'].items()))}")
    assert TALLY["5xx"] == 0
