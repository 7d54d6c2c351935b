"""The top-level package re-exports every public name, in a sorted __all__."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pytest
from _early import early

import cachesaver


def test_all_is_sorted_and_unique():
    assert cachesaver.__all__ == sorted(set(cachesaver.__all__))


# The decision stated in cachesaver/__init__.py's docstring, as data.
PUBLIC_MODULES = (
    "errors",
    "keys",
    "ledger",
    "models",
    "pipelines",
    "stages.base",
    "stages.batching",
    "stages.caching",
    "stages.deduplication",
    "stages.ledger_tap",
    "stages.reordering",
    "typedefs",
)
CHOSEN_FROM_PLUMBING = {
    "ratelimit": ("RateLimiter", "RateLimits"),
    "retry": ("RetryPolicy",),
    "store": ("CacheSpec", "open_store"),
    "store.protocol": ("InspectableStore", "SampleStore"),
    "modes": ("MODES", "Mode"),
    "store.diskcache": ("DiskcacheStore",),
    "store.memory": ("MemoryStore",),
    "store.shared_runs": ("SharedRun",),
}
PLUMBING_MODULES = {"cli.cache", "cli.merge", "cli.run", "dropin.clients", "dropin.completions", "stages.single_flight"}
# Old module paths, each a re-export of where its names moved (so old imports work).
SHIM_MODULES = {
    "batching": ("stages.batching",),
    "caching": ("stages.caching",),
    "clients": ("dropin.clients", "dropin.completions"),
    "deduplication": ("stages.deduplication",),
    "metering": ("stages.ledger_tap",),
    "models.chat_completions": ("models.chat_request",),
    "models.chat_model": ("models.chat_backend",),
    "reordering": ("stages.reordering",),
    "stage": ("stages.base",),
    "storage": ("store.diskcache",),
}
OWN_NAMESPACE_SUBPACKAGES = {"artifacts", "kvcache", "tasks"}
# Subpackages whose modules are classified one by one (each stage module is public).
CLASSIFIED_SUBPACKAGES = {"cli", "dropin", "stages"}


def test_every_name_of_a_public_module_is_re_exported_as_the_same_object():
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(f"cachesaver.{module_name}")
        missing = sorted(set(module.__all__) - set(cachesaver.__all__))
        assert not missing, f"cachesaver does not re-export {missing} of cachesaver.{module_name}"
        for name in module.__all__:
            assert getattr(cachesaver, name) is getattr(module, name), f"{module_name}.{name}"


def test_the_top_level_exports_exactly_the_public_names():
    expected = {name for m in PUBLIC_MODULES for name in importlib.import_module(f"cachesaver.{m}").__all__}
    for module_name, names in CHOSEN_FROM_PLUMBING.items():
        module = importlib.import_module(f"cachesaver.{module_name}")
        for name in names:
            assert getattr(cachesaver, name) is getattr(module, name), f"{module_name}.{name}"
        expected.update(names)
    assert set(cachesaver.__all__) == expected


def _submodules() -> set[str]:
    """Every module not named private, with the modules of CLASSIFIED_SUBPACKAGES one by one."""
    found = set()
    for module in pkgutil.iter_modules(cachesaver.__path__):
        if module.name.startswith("_"):
            continue
        if module.name in CLASSIFIED_SUBPACKAGES:
            package = importlib.import_module(f"cachesaver.{module.name}")
            found |= {f"{module.name}.{m.name}" for m in pkgutil.iter_modules(package.__path__)}
        else:
            found.add(module.name)
    return found


def test_every_submodule_is_declared_public_or_plumbing():
    """A new module must be classified above (and in the __init__ docstring) before it ships."""
    found = _submodules()
    chosen = {name.split(".")[0] for name in CHOSEN_FROM_PLUMBING}
    shims = {name for name in SHIM_MODULES if "." not in name}
    declared = set(PUBLIC_MODULES) | chosen | PLUMBING_MODULES | OWN_NAMESPACE_SUBPACKAGES | shims
    assert found == declared


@pytest.mark.parametrize("shim", sorted(SHIM_MODULES))
def test_every_old_module_path_re_exports_its_names_from_where_they_moved(shim: str) -> None:
    module = importlib.import_module(f"cachesaver.{shim}")
    assert "kept so old imports work" in module.__doc__
    targets = [importlib.import_module(f"cachesaver.{name}") for name in SHIM_MODULES[shim]]
    moved = {name: getattr(t, name) for t in targets for name in t.__all__}
    assert set(module.__all__) <= set(moved) and module.__all__
    for name in module.__all__:
        assert getattr(module, name) is moved[name], f"{shim}.{name}"


def test_every_exported_name_resolves_and_is_listed_by_dir():
    listed = dir(cachesaver)
    for name in cachesaver.__all__:
        getattr(cachesaver, name)  # lazy names import their module here; AttributeError fails
        assert name in listed, name


def test_every_error_derives_from_the_root():
    errors = importlib.import_module("cachesaver.errors")
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), cachesaver.CacheSaverError), name


def test_py_typed_marker_ships():
    from importlib.resources import files

    assert files("cachesaver").joinpath("py.typed").is_file()


def test_unknown_attribute_raises():
    try:
        cachesaver.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


BACKEND_MODULES = ["cachesaver.models", "cachesaver.models.together", "cachesaver.models.openai"]


def _import_check(module: str) -> str:
    return (
        "import sys\n"
        f"import {module}\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('cachesaver.pipelines', 'cachesaver.dropin',"
        " 'cachesaver.stages.caching')))\n"
        "assert not loaded, loaded\n"
        "from cachesaver.models.openai import AsyncOpenAI, OpenAI\n"
        "from cachesaver.models.together import AsyncTogether, Together\n"
        "assert 'cachesaver.pipelines' in sys.modules and 'cachesaver.dropin' in sys.modules\n"
    )


# One fresh interpreter per backend module (each imports both SDKs, about 2 s), started as soon
# as the session knows the test is selected (tests/_early.py).
IMPORT_CHECKS = {
    module: early(__file__, ["test_importing_a_backend_imports_neither_the_pipeline_nor_the_dropin_clients"],
                  [sys.executable, "-c", _import_check(module)])
    for module in BACKEND_MODULES
}


@pytest.mark.parametrize("module", BACKEND_MODULES)
def test_importing_a_backend_imports_neither_the_pipeline_nor_the_dropin_clients(module: str) -> None:
    """models/ never imports the pipeline: a backend (and the package) stays light until a
    pipeline or a drop-in client is asked for; then the drop-in name resolves."""
    result = IMPORT_CHECKS[module].wait(timeout_s=60)
    assert result.returncode == 0, result.stderr
