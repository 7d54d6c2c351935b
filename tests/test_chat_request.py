"""Tests for the chat-completions request and its mapping (cachesaver/models/chat_request.py):
ChatRequest, n splitting, samples and usage."""

from __future__ import annotations

import pytest

from cachesaver.errors import InvalidRequestError
from cachesaver.keys import request_key
from cachesaver.models.chat_request import (
    ChatRequest,
    decoding_parameters,
    prompt_messages,
    samples_from_completion,
    split_evenly,
    split_n,
)
from cachesaver.typedefs import Request


def chat(prompt: object = "q", **fields: object) -> ChatRequest:
    fields.setdefault("model", "m")
    fields.setdefault("backend", "openai")
    fields.setdefault("base_url", "http://h/v1")
    return ChatRequest(prompt, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "limit", "calls"),
    [(1, 128, [1]), (128, 128, [128]), (129, 128, [128, 1]), (5, 2, [2, 2, 1]), (3, 1, [1, 1, 1])],
)
def test_split_n(n: int, limit: int, calls: list[int]) -> None:
    assert split_n(n, limit) == calls


@pytest.mark.parametrize(("total", "parts"), [(0, 3), (7, 3), (9, 3), (1, 4), (100, 7)])
def test_split_evenly_adds_up_and_differs_by_at_most_one(total: int, parts: int) -> None:
    shares = split_evenly(total, parts)
    assert len(shares) == parts
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1


def test_samples_follow_choice_index_and_usage_adds_up() -> None:
    completion = {
        "choices": [
            {"index": 1, "message": {"role": "assistant", "content": "b"}, "finish_reason": "length"},
            {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"},
            {"index": 2, "text": "c"},
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
    }
    data, usage = samples_from_completion(completion, "text")
    assert data == ["a", "b", "c"]
    assert usage == [
        {"prompt_tokens": 4, "completion_tokens": 3},
        {"prompt_tokens": 3, "completion_tokens": 2},
        {"prompt_tokens": 3, "completion_tokens": 2},
    ]
    choices, _ = samples_from_completion(completion, "choice")
    assert [c["finish_reason"] for c in choices[:2]] == ["stop", "length"]


def test_a_completion_without_usage_has_no_sample_usage() -> None:
    data, usage = samples_from_completion({"choices": [{"index": 0, "message": {"content": "x"}}]}, "text")
    assert (data, usage) == (["x"], None)


def test_prompt_messages() -> None:
    assert prompt_messages("hi") == [{"role": "user", "content": "hi"}]
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert prompt_messages(messages) == messages


def test_chat_request_keys_identity_and_decoding_but_not_n_id_or_namespace() -> None:
    key = request_key(chat(temperature=0.5))
    assert request_key(chat(temperature=0.5, n=9, request_id="r", namespace="x")) == key
    for changed in ({"model": "m2"}, {"backend": "together"}, {"base_url": "http://other/v1"},
                    {"temperature": 0.6}, {"sample_format": "choice"}, {"parameters": {"user": "u"}}):
        assert request_key(chat(**{"temperature": 0.5, **changed})) != key
    assert request_key(chat(parameters={"a": 1, "b": 2})) == request_key(chat(parameters={"b": 2, "a": 1}))


def test_base_url_is_normalised_without_trailing_slashes() -> None:
    slashed = chat(base_url="http://h/v1/")
    assert slashed.base_url == "http://h/v1"
    assert request_key(slashed) == request_key(chat(base_url="http://h/v1"))
    assert request_key(chat(base_url="http://h/v1//")) == request_key(chat())


def test_transport_options_are_not_keyed_compared_or_shown() -> None:
    plain = chat(temperature=0.5)
    options = {"timeout": 0.5, "extra_headers": {"X-Trace": "t"}, "extra_query": {"a": "1"}}
    with_options = chat(temperature=0.5, transport_options=options)
    assert request_key(with_options) == request_key(plain)
    assert with_options == plain and "transport_options" not in repr(with_options)
    assert with_options.transport_options == options
    assert chat(transport_options={}).transport_options is None


@pytest.mark.parametrize(
    "fields",
    [
        {"model": ""},
        {"base_url": "/"},
        {"transport_options": {"temperature": 0.5}},
        {"transport_options": ["timeout"]},
        {"backend": None},
        {"sample_format": "json"},
        {"parameters": ["not", "a", "dict"]},
        {"parameters": {"messages": []}},
        {"parameters": {"timeout": 3}},
        {"n": 0},
    ],
)
def test_bad_chat_requests_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        chat(**fields)


def test_decoding_parameters_read_any_request_class() -> None:
    assert decoding_parameters(Request("q")) == {}
    assert decoding_parameters(chat(temperature=0.0, seed=3)) == {"temperature": 0.0, "seed": 3}
