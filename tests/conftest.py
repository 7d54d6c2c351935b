"""Fixtures shared by the backend tests: the fake chat-completions server and a recording sleep."""

from __future__ import annotations

import pytest
from _support import Sleeps
from fake_chat_server import FakeChatServer


@pytest.fixture
def server():
    """A FakeChatServer on 127.0.0.1 (a free port), stopped after the test."""
    with FakeChatServer() as running:
        yield running


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()
