"""Pytest fixtures for the provider fakes.

In tests/conftest.py: `from tests.fakes.fixtures import graph_api, wasender_api  # noqa: F401`
"""
from __future__ import annotations

import pytest

from .graph_api import FakeGraphApi
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
