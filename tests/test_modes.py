"""Cache modes (cachesaver.modes): the four names, the environment default, the errors."""

from __future__ import annotations

import pytest

from cachesaver.errors import ConfigurationError
from cachesaver.models import ScriptedModel
from cachesaver.modes import MODE_ENV, MODES, resolve_mode
from cachesaver.pipelines import LocalAPI, OnlineAPI
from cachesaver.stages.caching import AsyncCacher
from cachesaver.store.memory import MemoryStore


def test_the_four_modes_and_the_default() -> None:
    assert MODES == ("record", "replay", "refresh", "bypass")
    assert [resolve_mode(m) for m in MODES] == list(MODES)
    assert resolve_mode() == "record"
    assert resolve_mode(None) == "record"


def test_the_environment_sets_the_default_and_mode_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODE_ENV, "replay")
    assert resolve_mode() == "replay"
    assert resolve_mode("record") == "record"
    assert OnlineAPI(ScriptedModel(), MemoryStore(), batch_size=1).mode == "replay"
    assert OnlineAPI(ScriptedModel(), MemoryStore(), batch_size=1, mode="bypass").mode == "bypass"
    monkeypatch.setenv(MODE_ENV, "")
    assert resolve_mode() == "record"  # set but empty: the default


@pytest.mark.parametrize("bad", ["Replay", "play", "", 3, "record "])
def test_a_bad_mode_is_a_configuration_error_naming_the_modes(bad: object) -> None:
    for build in (
        lambda: OnlineAPI(ScriptedModel(), MemoryStore(), batch_size=1, mode=bad),  # type: ignore[arg-type]
        lambda: LocalAPI(ScriptedModel(), MemoryStore(), batch_size=1, mode=bad),  # type: ignore[arg-type]
        lambda: AsyncCacher(ScriptedModel(), MemoryStore(), mode=bad),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigurationError, match="mode must be one of 'record', 'replay', 'refresh', 'bypass'"):
            build()


def test_a_bad_mode_in_the_environment_says_where_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODE_ENV, "strict")
    with pytest.raises(ConfigurationError, match=f"got 'strict' \\(from the environment variable {MODE_ENV}\\)"):
        OnlineAPI(ScriptedModel(), MemoryStore(), batch_size=1)
