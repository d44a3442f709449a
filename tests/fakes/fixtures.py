"""Pytest fixtures for the fakes at the network edge (the providers and n8n).

Loaded by tests/conftest.py as a plugin: `pytest_plugins = ["tests.fakes.fixtures"]`.
"""
from __future__ import annotations

import pytest

from tests.support import TEST_EVENT_SECRET

from .graph_api import FakeGraphApi
from .n8n import FakeN8n
from .wasender_api import FakeWasenderApi


@pytest.fixture
def graph_api():
    """A running fake Graph API (`.api_base`, `.access_token`), stopped after the test."""
    with FakeGraphApi() as fake:
        yield fake


@pytest.fixture
def wasender_api():
    """A running fake WasenderAPI (`.url`, `.api_key`), stopped after the test."""
    with FakeWasenderApi() as fake:
        yield fake


@pytest.fixture
def n8n():
    """A running fake n8n (`.url_for(path)`, `.received(event_type)`) that checks Baton's
    signatures with the test apps' BATON_EVENT_SECRET; stopped after the test."""
    with FakeN8n(TEST_EVENT_SECRET) as fake:
        yield fake
