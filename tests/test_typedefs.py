"""Request, Response, Batch and the two model Protocols, as the seed notebook uses them."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, List

import anyio
import pytest
from _early import early

import cachesaver
from cachesaver.errors import CacheSaverError, InvalidRequestError
from cachesaver.models import ScriptedModel
from cachesaver.typedefs import Batch, BatchRequestModel, Request, Response, SingleRequestModel


# -- Request ------------------------------------------------------------------------------


def test_request_defaults_and_keywords() -> None:
    request = Request(prompt="What is the meaning of life?", n=2, request_id="sth1", namespace="sth")
    assert (request.prompt, request.n, request.request_id, request.namespace) == (
        "What is the meaning of life?",
        2,
        "sth1",
        "sth",
    )
    plain = Request("hi")
    assert (plain.n, plain.request_id, plain.namespace) == (1, None, "default")


def test_request_is_frozen() -> None:
    request = Request("hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.n = 3  # type: ignore[misc]


def test_subclass_with_defaults_as_in_the_seed() -> None:
    @dataclass(frozen=True)
    class Request2(Request):
        temperature: float = 1
        max_completion_tokens: int = None  # type: ignore[assignment]

    request = Request2(
        prompt="What is the meaning of life?",
        n=1,
        request_id="sth1",
        namespace="sth",
        max_completion_tokens=30,
        temperature=0.5,
    )
    assert (request.temperature, request.max_completion_tokens, request.n) == (0.5, 30, 1)
    assert Request2("x").temperature == 1
    assert Request2("x").max_completion_tokens is None


_SEED_CELLS = """
from dataclasses import dataclass
from cachesaver.typedefs import Request

@dataclass(frozen=True)
class Request(Request):
    temperature: float=1
    max_completion_tokens: int=None

@dataclass(frozen=True)
class Request(Request):
    temperature: float=1
    max_completion_tokens: int=None

request = Request(prompt="Cats or dogs?", n=1, request_id="sth2", namespace="sth", max_completion_tokens=10)
"""


def test_subclass_rebinding_the_name_request_twice_as_in_the_seed() -> None:
    # The seed notebook rebinds the name at top level: `class Request(Request)`, in two cells.
    scope: dict[str, Any] = {}
    exec(compile(_SEED_CELLS, "<seed cells>", "exec"), scope)
    request = scope["request"]
    assert isinstance(request, Request)
    assert (request.max_completion_tokens, request.temperature, request.namespace) == (10, 1, "sth")


def test_subclass_without_default_after_inherited_defaults() -> None:
    @dataclass(frozen=True)
    class ModelRequest(Request):
        model: str

    request = ModelRequest("hi", model="m", n=3)
    assert (request.model, request.n, request.namespace) == ("m", 3, "default")
    with pytest.raises(TypeError):
        ModelRequest("hi")  # type: ignore[call-arg]


def test_subclass_of_subclass_mixing_defaults_and_required_fields() -> None:
    @dataclass(frozen=True)
    class Decoding(Request):
        temperature: float = 1
        max_completion_tokens: int = None  # type: ignore[assignment]

    @dataclass(frozen=True)
    class ModelRequest(Decoding):
        model: str

    request = ModelRequest(prompt="hi", model="m", temperature=0.2)
    assert (request.model, request.temperature, request.max_completion_tokens) == ("m", 0.2, None)


def test_undefined_public_attribute_reads_as_none() -> None:
    request = Request("hi")
    assert request.top_p is None
    assert request.stop is None
    assert request.seed is None
    assert (request.top_p or 1) == 1  # how the seed's backend reads it


def test_undefined_private_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError):
        Request("hi")._not_there  # noqa: B018


@pytest.mark.parametrize("n", [0, -1, 1.5, "2", True, None])
def test_bad_n_is_an_invalid_request_error(n: Any) -> None:
    with pytest.raises(InvalidRequestError):
        Request("hi", n=n)


@pytest.mark.parametrize(
    "prompt",
    [
        42,
        None,
        b"bytes",
        {"role": "user", "content": "a dict, not a list"},
        [],
        ["just a string"],
        [{"content": "no role"}],
        [{"role": "", "content": "empty role"}],
        [{"role": 3, "content": "role not a string"}],
        [{"role": "user"}],
        [{"role": "user", "content": "ok"}, "not a message"],
    ],
)
def test_malformed_prompt_is_an_invalid_request_error(prompt: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        Request(prompt)
    assert isinstance(info.value, CacheSaverError)
    assert "prompt" in str(info.value)


def test_message_list_prompt_is_accepted() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert Request(messages).prompt == messages


@pytest.mark.parametrize("request_id", [1.5, True, ["a"], ("a",)])
def test_bad_request_id_is_an_invalid_request_error(request_id: Any) -> None:
    with pytest.raises(InvalidRequestError):
        Request("hi", request_id=request_id)


def test_str_and_int_request_ids_are_accepted() -> None:
    assert Request("hi", request_id=7).request_id == 7
    assert Request("hi", request_id="7").request_id == "7"


@pytest.mark.parametrize("namespace", [None, 3, b"ns"])
def test_bad_namespace_is_an_invalid_request_error(namespace: Any) -> None:
    with pytest.raises(InvalidRequestError):
        Request("hi", namespace=namespace)


# -- Response -----------------------------------------------------------------------------


def test_response_repr_is_the_seeds() -> None:
    response = Response(
        data=["The meaning of life is a question that has puzzled", "The question of the meaning"],
        cached=[True, True],
        duplicated=[False, True],
    )
    assert repr(response) == (
        "Response(data=['The meaning of life is a question that has puzzled', 'The question of the meaning'], "
        "cached=[True, True], duplicated=[False, True])"
    )
    assert repr(Response(data=["x"])) == "Response(data=['x'], cached=None, duplicated=None)"


def test_response_usage_is_hidden_from_repr_and_equality() -> None:
    usage = [{"prompt_tokens": 3, "completion_tokens": 2}]
    with_usage = Response(data=["x"], cached=[False], duplicated=[False], usage=usage)
    assert "usage" not in repr(with_usage)
    assert "prompt_tokens" not in repr(with_usage)
    assert with_usage.usage == usage
    assert with_usage == Response(data=["x"], cached=[False], duplicated=[False])


def test_response_flags_default_to_none() -> None:
    response = Response(data=["a", "b"])
    assert (response.cached, response.duplicated, response.usage) == (None, None, None)


@pytest.mark.parametrize("field", ["cached", "duplicated", "usage"])
def test_response_flag_list_of_wrong_length_is_refused(field: str) -> None:
    with pytest.raises(InvalidRequestError):
        Response(data=["a", "b"], **{field: [True]})


def test_response_data_must_be_a_list_of_samples() -> None:
    with pytest.raises(InvalidRequestError):
        Response(data="one string")  # type: ignore[arg-type]
    assert Response(data=("a", "b")).data == ["a", "b"]  # type: ignore[arg-type]


# -- Batch and the Protocols ----------------------------------------------------------------


def test_batch_holds_requests_in_order() -> None:
    requests = [Request("a"), Request("b")]
    assert Batch(requests=requests).requests == requests


@pytest.mark.parametrize("field", ["namespace", "request_id"])
def test_a_lone_surrogate_in_namespace_or_request_id_is_an_invalid_request_error(field: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"Request.{field} .*lone surrogate"):
        Request("hi", **{field: "run-\ud800"})
    assert Request("hi", **{field: "run-\u00e9\U0001f600"})  # non-ASCII text is fine


@pytest.mark.parametrize("requests", [123, "abc", None, {"prompt": "hi"}], ids=["int", "str", "None", "dict"])
def test_batch_requests_must_be_a_list(requests: Any) -> None:
    with pytest.raises(InvalidRequestError, match="Batch.requests must be a list"):
        Batch(requests=requests)


def test_a_batch_of_a_tuple_holds_a_list() -> None:
    first = Request("a")
    assert Batch((first,)).requests == [first]


def test_protocols_are_runtime_checkable() -> None:
    model = ScriptedModel()
    assert isinstance(model, SingleRequestModel)
    assert isinstance(model, BatchRequestModel)
    assert not isinstance(object(), SingleRequestModel)
    assert not isinstance(object(), BatchRequestModel)


def test_protocols_can_be_subclassed_like_the_seeds_online_llm() -> None:
    class OnlineLLM(SingleRequestModel, BatchRequestModel):
        def __init__(self, client: Any, model: str) -> None:
            self.client = client
            self.model = model

        async def request(self, request: Request) -> Response:
            return Response(data=[f"{self.model}:{request.prompt}"] * request.n)

        async def batch_request(self, batch: Batch) -> List[Response]:
            return [await self.request(r) for r in batch.requests]

    llm = OnlineLLM(client=None, model="m")
    assert llm.model == "m"
    assert isinstance(llm, SingleRequestModel) and isinstance(llm, BatchRequestModel)
    response = anyio.run(llm.request, Request("hi", n=2))
    assert response == Response(data=["m:hi", "m:hi"])
    assert response.cached is None and response.duplicated is None


def test_the_top_level_package_re_exports_every_typedefs_name_as_the_same_object() -> None:
    from cachesaver import typedefs

    assert {"Batch", "BatchRequestModel", "Request", "Response", "SingleRequestModel"} <= set(typedefs.__all__)
    for name in typedefs.__all__:
        assert name in cachesaver.__all__, f"cachesaver does not re-export typedefs.{name}"
        assert getattr(cachesaver, name) is getattr(typedefs, name), name


_OPTIMISED = """
import sys, tempfile
from cachesaver.errors import ConfigurationError, InvalidRequestError
from cachesaver.models import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.typedefs import Request
checks = 0
for bad in (lambda: Request("hi", n=0), lambda: Request([{"content": "x"}])):
    try:
        bad()
    except InvalidRequestError:
        checks += 1
try:
    OnlineAPI(ScriptedModel(), tempfile.mkdtemp(), batch_size=0)
except ConfigurationError:
    checks += 1
print(checks)
"""


OPTIMISED_RUN = early(__file__, ["test_argument_checks_survive_python_dash_o"], [sys.executable, "-O", "-c", _OPTIMISED])
"""``python -O`` on the checks above, run beside the session (tests/_early.py)."""


def test_argument_checks_survive_python_dash_o() -> None:
    """Checks are real raises, not asserts that ``python -O`` strips."""
    completed = OPTIMISED_RUN.wait(timeout_s=18)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "3"
