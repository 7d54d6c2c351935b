"""The provider table (cachesaver/models/registry.py) is what the CLI, the experiment runner, the
lazy backend names and the drop-in clients read: a provider added there (plus its backend
module) is everywhere at once."""

from __future__ import annotations

import sys
import types

import anyio
import openai
import pytest

import cachesaver
import cachesaver.models
from cachesaver import dropin
from cachesaver.cli import build_parser
from cachesaver.errors import ConfigurationError
from cachesaver.models.openai import OpenAIModel
from cachesaver.models.registry import PROVIDERS, Provider, dropin_getattr, provider
from cachesaver.tasks.backends import backend_names, default_model, make_model


class AcmeModel(OpenAIModel):
    """A new provider speaking the OpenAI API: its backend class is all its module holds."""

    kind = "acme"


@pytest.fixture
def acme(monkeypatch: pytest.MonkeyPatch) -> Provider:
    """Register ``acme`` the way a new provider is added: one table entry and its own module."""
    module = types.ModuleType("acme_backend")
    module.AcmeModel = AcmeModel  # type: ignore[attr-defined]
    module.__getattr__ = dropin_getattr("acme_backend")  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "acme_backend", module)
    entry = Provider(
        name="acme", backend="acme_backend:AcmeModel", sdk_module="openai",
        async_client="AsyncOpenAI", sync_client="OpenAI", api_key_env="ACME_API_KEY",
        default_model="acme-large",
    )
    monkeypatch.setitem(PROVIDERS, "acme", entry)
    return entry


def test_the_cli_backend_choices_come_from_the_registry(acme: Provider, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["run", "pkg.mod:Task", "--out", "o", "--namespace", "n", "--backend", "acme"])
    assert args.backend == "acme"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "pkg.mod:Task", "--out", "o", "--namespace", "n", "--backend", "nope"])
    listed = capsys.readouterr().err.split("choose from ")[1]
    assert [name.strip(" '\n)") for name in listed.split(",")] == list(backend_names())
    assert backend_names() == ("simulated", "together", "openai", "acme")


def test_the_runner_builds_a_registered_backend_with_its_key_and_default_model(
    acme: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACME_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="ACME_API_KEY"):
        make_model("acme")
    assert default_model("acme") == "acme-large"
    monkeypatch.setenv("ACME_API_KEY", "k")
    model = make_model("acme")
    try:
        assert type(model) is AcmeModel and model.model == "acme-large"
    finally:
        anyio.run(model.aclose)


def test_the_dropin_lookup_comes_from_the_registry(acme: Provider) -> None:
    from acme_backend import AsyncOpenAI, OpenAI  # type: ignore[import-not-found]

    assert AsyncOpenAI is dropin.client_class("acme", "AsyncOpenAI")
    assert OpenAI is dropin.client_class("acme", "OpenAI")
    assert AsyncOpenAI.model_class is AcmeModel and OpenAI.async_client_class is AsyncOpenAI
    assert AsyncOpenAI.completion_type is openai.types.chat.ChatCompletion
    assert OpenAI.sdk_class is openai.OpenAI
    assert issubclass(AsyncOpenAI, dropin.CachedAsyncClient) and issubclass(OpenAI, dropin.CachedSyncClient)
    # Not the openai provider's clients: each entry has its own.
    assert AsyncOpenAI is not cachesaver.models.openai.AsyncOpenAI  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="AsyncTogether"):
        sys.modules["acme_backend"].AsyncTogether  # noqa: B018


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_every_provider_is_wired_from_its_entry(name: str) -> None:
    entry = provider(name)
    backend = entry.backend_class()
    assert backend.kind == name  # the registry name is the backend field of its requests
    module = sys.modules[entry.backend_module]
    for client in entry.dropin_clients:
        assert getattr(module, client) is dropin.client_class(name, client)
        assert getattr(module, client).__module__ == entry.backend_module
    assert getattr(cachesaver, entry.backend_class_name) is backend
    assert getattr(cachesaver.models, entry.backend_class_name) is backend
    assert entry.backend_class_name in cachesaver.__all__ and entry.backend_class_name in cachesaver.models.__all__


def test_unknown_providers_and_clients_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown provider 'nope'; choose one of together, openai"):
        provider("nope")
    with pytest.raises(ConfigurationError, match="has no drop-in client 'Client'; its clients are AsyncTogether and Together"):
        dropin.client_class("together", "Client")
