"""The backend factory: defaults, lazy SDK backends, missing keys."""

import pytest

from cachesaver.errors import ConfigurationError
from cachesaver.models.simulated import SimulatedLLM
from cachesaver.tasks.backends import BACKENDS, default_backend, default_model, make_model


def test_default_backend_follows_the_together_key():
    assert default_backend({}) == "simulated"
    assert default_backend({"TOGETHER_API_KEY": ""}) == "simulated"
    assert default_backend({"TOGETHER_API_KEY": "k"}) == "together"


def test_every_backend_has_a_default_model_and_unknown_ones_are_refused():
    # The model name is part of every cache key: changing a default silently stops earlier
    # runs from replaying, so the defaults are pinned here.
    assert {b: default_model(b) for b in BACKENDS} == {
        "simulated": "simulated",
        "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "openai": "gpt-4o-mini",
    }
    with pytest.raises(ConfigurationError, match="choose one of"):
        default_model("mystery")


def test_simulated_backend_takes_seed_and_compose():
    compose = lambda prompt, rank, rng: f"rank {rank}"  # noqa: E731
    model = make_model("simulated", seed=7, compose=compose)
    assert isinstance(model, SimulatedLLM)
    assert (model.seed, model.compose) == (7, compose)


@pytest.mark.parametrize("backend, variable", [("together", "TOGETHER_API_KEY"), ("openai", "OPENAI_API_KEY")])
def test_sdk_backends_without_a_key_say_which_variable_to_set(monkeypatch, backend, variable):
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ConfigurationError, match=variable):
        make_model(backend)
