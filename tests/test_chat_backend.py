"""Tests for the chat-completions backend base (cachesaver/models/chat_backend.py): Retry-After
parsing and the HTTP-status classification."""

from __future__ import annotations

import email.utils

import pytest

from cachesaver.errors import ContextLengthError, PermanentBackendError, TransientBackendError
from cachesaver.models.chat_backend import backend_error, parse_retry_after


def test_parse_retry_after() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"Retry-After": "-1"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=1_000_000.0) == 30.0


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (None, "connection reset", TransientBackendError),
        (408, "timeout", TransientBackendError),
        (429, "slow down", TransientBackendError),
        (500, "oops", TransientBackendError),
        (503, "overloaded", TransientBackendError),
        (400, "bad temperature", PermanentBackendError),
        (400, "maximum context length exceeded", ContextLengthError),
        (401, "bad key", PermanentBackendError),
        (404, "no such model", PermanentBackendError),
        (422, "Input is too long for this model", ContextLengthError),
    ],
)
def test_status_classification(status: int | None, message: str, kind: type) -> None:
    error = backend_error("openai", status, message, request_id="r", retry_after_s=2.0)
    assert type(error) is kind
    assert (error.status, error.request_id, error.provider_request_id) == (status, "r", None)
    if kind is TransientBackendError and status is not None:
        assert error.retry_after_s == 2.0
    assert message in str(error)


def test_the_provider_request_id_is_carried_and_named() -> None:
    for status in (None, 401, 503):
        error = backend_error("openai", status, "failed", request_id="r", provider_request_id="req-9")
        assert (error.request_id, error.provider_request_id) == ("r", "req-9")
        assert "req-9" in str(error)
