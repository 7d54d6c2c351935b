"""Canonical cache keys (semantic 8): what changes a key, what does not, and what is refused."""

from __future__ import annotations

import enum
import logging
import json
import sys
from dataclasses import dataclass
from typing import Any, Optional

import pytest
from _early import early

from cachesaver import keys
from cachesaver.errors import ConfigurationError, InvalidRequestError, UnserializableParameterError
from cachesaver.keys import request_key
from cachesaver.typedefs import Request


@dataclass(frozen=True)
class Decoding(Request):
    temperature: float = 1
    max_completion_tokens: Optional[int] = None
    stop: Any = None
    extra: Any = None


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


# Pinned so that an accidental change of the canonical encoding (which would orphan every
# stored sample) fails loudly; change it only together with KEY_SCHEMA.
GOLDEN_KEY = "2612573fe9b3065e9024461e3ee7feb6092ebc43df2f6c23ed517a03fa250959"


def test_key_is_64_hex_characters() -> None:
    key = request_key(Request("hi"))
    assert len(key) == 64
    int(key, 16)


def test_key_is_pinned_across_releases() -> None:
    assert request_key(Request("What is the meaning of life?")) == GOLDEN_KEY


def test_key_ignores_n_request_id_and_namespace() -> None:
    base = request_key(Request("hi"))
    assert request_key(Request("hi", n=7)) == base
    assert request_key(Request("hi", request_id="x")) == base
    assert request_key(Request("hi", request_id=3)) == base
    assert request_key(Request("hi", namespace="other")) == base


def test_prompt_changes_the_key() -> None:
    assert request_key(Request("hi")) != request_key(Request("hi "))
    assert request_key(Request("hi")) != request_key(Request([user("hi")]))


def test_message_order_matters() -> None:
    one = Request([user("a"), assistant("b")])
    other = Request([assistant("b"), user("a")])
    assert request_key(one) != request_key(other)


def test_message_repetition_matters() -> None:
    once = Request([user("a")])
    twice = Request([user("a"), user("a")])
    assert request_key(once) != request_key(twice)


def test_list_order_inside_a_parameter_matters() -> None:
    assert request_key(Decoding("hi", stop=["a", "b"])) != request_key(Decoding("hi", stop=["b", "a"]))
    assert request_key(Decoding("hi", stop=["a"])) != request_key(Decoding("hi", stop=["a", "a"]))


def test_dict_key_order_does_not_matter() -> None:
    one = Request([{"role": "user", "content": "hi"}])
    other = Request([{"content": "hi", "role": "user"}])
    assert request_key(one) == request_key(other)
    nested_one = Decoding("hi", extra={"a": {"x": 1, "y": 2}, "b": 3})
    nested_other = Decoding("hi", extra={"b": 3, "a": {"y": 2, "x": 1}})
    assert request_key(nested_one) == request_key(nested_other)


def test_one_and_one_point_zero_key_the_same() -> None:
    assert request_key(Decoding("hi", temperature=1)) == request_key(Decoding("hi", temperature=1.0))
    assert request_key(Decoding("hi", extra=[2, {"k": 3}])) == request_key(Decoding("hi", extra=[2.0, {"k": 3.0}]))


def test_distinct_floats_key_differently() -> None:
    assert request_key(Decoding("hi", temperature=0.5)) != request_key(Decoding("hi", temperature=0.50001))
    assert request_key(Decoding("hi", temperature=0.1 + 0.2)) != request_key(Decoding("hi", temperature=0.3))


def test_true_and_one_key_differently() -> None:
    assert request_key(Decoding("hi", extra=True)) != request_key(Decoding("hi", extra=1))
    assert request_key(Decoding("hi", extra="1")) != request_key(Decoding("hi", extra=1))


def test_subclass_default_keys_like_the_explicit_value() -> None:
    assert request_key(Decoding("hi")) == request_key(Decoding("hi", temperature=1))
    assert request_key(Decoding("hi")) != request_key(Decoding("hi", temperature=0.7))


def test_none_field_keys_like_an_absent_field() -> None:
    assert request_key(Decoding("hi", temperature=None)) == request_key(Request("hi"))  # type: ignore[arg-type]
    assert request_key(Decoding("hi", max_completion_tokens=None)) == request_key(Decoding("hi"))


def test_two_subclasses_with_the_same_values_key_the_same() -> None:
    @dataclass(frozen=True)
    class Other(Request):
        temperature: float = 1

    assert request_key(Other("hi")) == request_key(Decoding("hi"))


def test_parameter_values_change_the_key() -> None:
    base = request_key(Decoding("hi"))
    assert request_key(Decoding("hi", max_completion_tokens=10)) != base
    assert request_key(Decoding("hi", max_completion_tokens=10)) != request_key(Decoding("hi", max_completion_tokens=11))


def test_tuples_key_like_lists_and_enums_like_their_value() -> None:
    class Color(enum.Enum):
        RED = "red"

    assert request_key(Decoding("hi", stop=("a", "b"))) == request_key(Decoding("hi", stop=["a", "b"]))
    assert request_key(Decoding("hi", extra=Color.RED)) == request_key(Decoding("hi", extra="red"))


@pytest.mark.parametrize(
    "value",
    [
        {"a", "b"},
        frozenset({1}),
        float("nan"),
        float("inf"),
        -float("inf"),
        object(),
        {1: "int key"},
        {"ok": {2: "nested int key"}},
        [1, {"a"}],
        b"bytes",
    ],
    ids=["set", "frozenset", "nan", "inf", "-inf", "object", "int-key", "nested-int-key", "nested-set", "bytes"],
)
def test_unserialisable_parameter_is_refused(value: Any) -> None:
    request = Decoding("hi", extra=value)
    with pytest.raises(UnserializableParameterError) as info:
        request_key(request)
    assert isinstance(info.value, InvalidRequestError)
    assert "extra" in str(info.value)


def test_unserialisable_message_content_is_refused() -> None:
    request = Request([{"role": "user", "content": {"a", "b"}}])
    with pytest.raises(UnserializableParameterError, match="prompt"):
        request_key(request)


def nested(depth: int) -> list:
    """A list nested ``depth`` levels deep: [[[...]]] with the innermost list empty."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("request_", "where"),
    [
        (Request("bad \ud800 text"), "Request.prompt "),
        (Request([user("fine"), user("bad \udfff")]), "Request.prompt[1]['content']"),
        (Decoding("hi", extra={"a": ["ok", "\ud800"]}), "Request.extra['a'][1]"),
        (Decoding("hi", extra={"\ud800": 1}), "Request.extra (a key)"),
        (Decoding("hi", stop="\ud83d"), "Request.stop"),
    ],
    ids=["prompt", "message-content", "parameter-value", "parameter-key", "stop"],
)
def test_a_lone_surrogate_is_refused_naming_where_it_is(request_: Request, where: str) -> None:
    with pytest.raises(UnserializableParameterError, match="lone surrogate") as info:
        request_key(request_)
    assert where in str(info.value)
    assert len(request_key(Request("\U0001f600 \u00e9"))) == 64  # real non-ASCII text keys fine


def test_a_list_or_dict_that_contains_itself_is_refused() -> None:
    loop: list = [1]
    loop.append(loop)
    cycle: dict = {"a": {}}
    cycle["a"]["back"] = cycle
    for value in (loop, cycle):
        with pytest.raises(UnserializableParameterError, match="contains itself") as info:
            request_key(Decoding("hi", extra=value))
        assert "Request.extra" in str(info.value)
    shared = [1, 2]  # the same list twice is no cycle
    assert request_key(Decoding("hi", extra=[shared, shared])) == request_key(Decoding("hi", extra=[[1, 2], [1, 2]]))


def test_nesting_is_bounded_at_max_depth() -> None:
    request_key(Decoding("hi", extra=nested(keys.MAX_DEPTH)))  # as deep as allowed
    for depth in (keys.MAX_DEPTH + 1, 10_000):
        with pytest.raises(UnserializableParameterError, match=f"more than {keys.MAX_DEPTH} levels"):
            request_key(Decoding("hi", extra=nested(depth)))


def test_deep_message_content_is_refused() -> None:
    with pytest.raises(UnserializableParameterError, match="Request.prompt"):
        request_key(Request([{"role": "user", "content": nested(10_000)}]))


def test_key_is_remembered_on_the_request() -> None:
    request = Decoding("hi", extra=[1, 2])
    assert request_key(request) is request_key(request)


def test_key_carries_the_schema_version(monkeypatch: pytest.MonkeyPatch) -> None:
    assert keys.KEY_SCHEMA.endswith("/1")
    before = request_key(Request("hi"))
    monkeypatch.setattr(keys, "KEY_SCHEMA", "cachesaver-key/2")
    assert request_key(Request("hi")) != before


_SUBPROCESS = """
import json, sys
from dataclasses import dataclass
from typing import Any
from cachesaver.keys import request_key
from cachesaver.typedefs import Request

@dataclass(frozen=True)
class Decoding(Request):
    temperature: float = 1
    max_completion_tokens: Any = None
    stop: Any = None
    extra: Any = None

print(json.dumps([request_key(Decoding(**spec)) for spec in json.loads(sys.argv[1])]))
"""

_SPECS = [
    {"prompt": "What is the meaning of life?"},
    {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "temperature": 0.5},
    {"prompt": "x", "stop": ["a", "b"], "extra": {"z": 1, "a": [1.5, None, True]}, "max_completion_tokens": 30},
    {"prompt": "unicode \u00e9\u6f22\u5b57 \U0001f600"},
]


# One interpreter per hash seed, run beside the session (tests/_early.py).
KEY_RUNS = {
    seed: early(__file__, ["test_keys_are_stable_across_processes"],
                [sys.executable, "-c", _SUBPROCESS, json.dumps(_SPECS)], env={"PYTHONHASHSEED": seed})
    for seed in ("1", "12345")
}


@pytest.mark.parametrize("hash_seed", ["1", "12345"])
def test_keys_are_stable_across_processes(hash_seed: str) -> None:
    expected = [request_key(Decoding(**spec)) for spec in _SPECS]
    completed = KEY_RUNS[hash_seed].wait(timeout_s=18)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == expected


def test_a_class_may_leave_declared_fields_out_of_the_key() -> None:
    @dataclass(frozen=True)
    class Timed(Request):
        unkeyed_fields = ("timeout_s", "trace")
        temperature: float = 1
        timeout_s: Optional[float] = None
        trace: Any = None

    assert request_key(Timed("hi", timeout_s=3.0, trace=object())) == request_key(Timed("hi"))
    assert request_key(Timed("hi")) == request_key(Decoding("hi"))  # keyed fields key as before
    assert request_key(Timed("hi", temperature=0.5)) != request_key(Timed("hi"))


def test_a_malformed_unkeyed_fields_declaration_is_refused() -> None:
    @dataclass(frozen=True)
    class Bad(Request):
        unkeyed_fields = "timeout_s"
        timeout_s: Optional[float] = None

    with pytest.raises(ConfigurationError, match="unkeyed_fields"):
        request_key(Bad("hi"))


# -- the model is part of a sample's identity ------------------------------------------------

# Pinned like GOLDEN_KEY: the key a user's model named like the seed notebook's stores under.
GOLDEN_STORE_KEY = "cfc24052dc6906640adffca2a3854c5e71407822aeb6fd44ef33ff3e35041dc3"
SEED_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo-Free"


class OwnModel:
    """A user's model: only ``request``, plus whatever attributes a test gives it."""

    def __init__(self, **attributes: Any) -> None:
        self.__dict__.update(attributes)

    async def request(self, request: Request) -> Any:
        raise AssertionError("never called")


def test_a_store_key_without_identity_is_the_request_key() -> None:
    request = Request("What is the meaning of life?")
    assert keys.store_key(request, None) == GOLDEN_KEY == request_key(request)


def test_a_store_key_with_identity_is_pinned_and_leaves_the_request_key_alone() -> None:
    request = Request("What is the meaning of life?")
    assert keys.store_key(request, SEED_MODEL) == GOLDEN_STORE_KEY
    assert request_key(request) == GOLDEN_KEY  # the memoised request key is unchanged
    assert keys.store_key(request, "other-model") not in (GOLDEN_KEY, GOLDEN_STORE_KEY)


def test_the_identity_is_cache_identity_else_model_else_model_name() -> None:
    identity = keys.model_identity
    assert identity(OwnModel(cache_identity="c", model="m", model_name="n")) == "c"
    assert identity(OwnModel(model="m", model_name="n")) == "m"
    assert identity(OwnModel(model_name="n")) == "n"
    assert identity(OwnModel(cache_identity=None, model="m")) is None  # "my keys cover the model"
    assert identity(OwnModel(model=OwnModel(model="inner"), model_name=7)) is None  # not strings
    assert identity(OwnModel()) is None


def test_model_id_overrides_what_the_model_says() -> None:
    model = OwnModel(cache_identity="c", model="m")
    assert keys.model_identity(model, "x") == "x"
    assert keys.model_identity(model, None) is None


async def test_the_identity_is_the_innermost_models_through_every_stage(tmp_path: Any) -> None:
    from cachesaver.pipelines import LocalAPI, OnlineAPI

    class BatchModel(OwnModel):
        async def batch_request(self, batch: Any) -> Any:
            raise AssertionError("never called")

    async with OnlineAPI(OwnModel(model="m"), tmp_path / "a", batch_size=2) as pipeline:
        assert keys.model_identity(pipeline) == "m"
    async with LocalAPI(BatchModel(model_name="n"), tmp_path / "b", batch_size=2) as inner:
        async with OnlineAPI(inner, tmp_path / "c", batch_size=2) as outer:
            assert keys.model_identity(outer) == "n"


async def test_every_shipped_model_adds_no_identity() -> None:
    from cachesaver.models import ReplayOnlyModel, ScriptedModel
    from cachesaver.models.openai import OpenAIModel
    from cachesaver.models.simulated import SimulatedLLM
    from cachesaver.models.together import TogetherModel

    together = TogetherModel(model="m", api_key="k")
    openai = OpenAIModel(model="m", api_key="k", base_url="http://127.0.0.1:9/v1")
    try:
        shipped = [ScriptedModel(), SimulatedLLM(seed=1), ReplayOnlyModel(), together, openai]
        assert [keys.model_identity(m) for m in shipped] == [None] * len(shipped)
    finally:
        await together.aclose()
        await openai.aclose()


@pytest.mark.parametrize(
    ("model", "model_id", "match"),
    [
        (OwnModel(cache_identity=3), None, "OwnModel.cache_identity must be a non-empty string"),
        (OwnModel(cache_identity=""), None, "OwnModel.cache_identity must be a non-empty string"),
        (OwnModel(model="m"), "", "model_id must be a non-empty string"),
        (OwnModel(model="m"), 7, "model_id must be a non-empty string"),
        (OwnModel(model="m"), "bad\ud800", "lone surrogate"),
        (OwnModel(model="bad\udfff"), None, "OwnModel.model .* lone surrogate"),
    ],
)
def test_a_bad_identity_is_a_configuration_error(model: Any, model_id: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        if model_id is None:  # derived from the model
            keys.model_identity(model)
        else:
            keys.model_identity(model, model_id)


def test_a_model_with_no_identity_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    class Anonymous:
        async def request(self, request: Any) -> Any:  # pragma: no cover - never called
            raise AssertionError

    with caplog.at_level(logging.WARNING, logger="cachesaver"):
        assert keys.model_identity(Anonymous()) is None
        assert keys.model_identity(Anonymous()) is None
    warned = [r for r in caplog.records if "cannot tell which model Anonymous" in r.getMessage()]
    assert len(warned) == 1 and "model_id=" in warned[0].getMessage()


def test_the_canonical_request_is_what_the_key_is_made_from() -> None:
    request = Decoding([user("hi"), assistant("yo")], n=4, request_id="q", namespace="ns", temperature=0.5, stop=("a",))
    for identity in (None, "model-a"):
        doc = keys.canonical_request(request, identity)
        assert doc == {
            "key_schema": keys.KEY_SCHEMA,
            "model_identity": identity,
            "fields": {"prompt": [user("hi"), assistant("yo")], "temperature": 0.5, "stop": ["a"]},
        }
        text = keys.canonical_request_text(request, identity)
        assert json.loads(text) == doc and " " not in text.replace("hi", "")
        assert keys.key_of_canonical_request(json.loads(text)) == keys.store_key(request, identity)
    # Integral floats are keyed as ints, so the JSON round trip keys the same.
    assert keys.key_of_canonical_request(keys.canonical_request(Decoding("x", temperature=1.0), None)) == request_key(Decoding("x", temperature=1))


@pytest.mark.parametrize(
    "doc",
    [
        {"key_schema": "cachesaver-key/0", "model_identity": None, "fields": {"prompt": "x"}},
        {"model_identity": None, "fields": {"prompt": "x"}},
        {"key_schema": keys.KEY_SCHEMA, "model_identity": 3, "fields": {"prompt": "x"}},
        {"key_schema": keys.KEY_SCHEMA, "model_identity": None, "fields": ["x"]},
        {"key_schema": keys.KEY_SCHEMA, "model_identity": None, "fields": {"prompt": float("nan")}},
        ["not", "a", "doc"],
    ],
)
def test_a_document_that_is_not_a_canonical_request_is_refused(doc: Any) -> None:
    with pytest.raises(ConfigurationError):
        keys.key_of_canonical_request(doc)


def test_keys_are_the_same_with_and_without_the_c_json_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    def fresh() -> list[Request]:  # new objects: a request remembers its key
        return [
            Request("p"),
            Request("\u00e9\u2028\U0001f600\"\\\n\x00"),
            Request([{"role": "user", "content": "hi", "weight": 0.5, "n": [1, -2, 1e300, None, True]}]),
        ]

    fast = [request_key(r) for r in fresh()]
    assert keys._c_encode is not None  # this interpreter has the accelerator: the fast path ran
    monkeypatch.setattr(keys, "_c_encode", None)
    assert [request_key(r) for r in fresh()] == fast
