"""The top-level package re-exports every public name, in a sorted __all__."""

from __future__ import annotations

import importlib

import cachesaver


def test_all_is_sorted_and_unique():
    assert cachesaver.__all__ == sorted(set(cachesaver.__all__))


def test_every_exported_name_resolves():
    for name in cachesaver.__all__:
        assert getattr(cachesaver, name) is not None, name


def test_stage_and_seed_modules_export_the_same_objects():
    pipelines = importlib.import_module("cachesaver.pipelines")
    typedefs = importlib.import_module("cachesaver.typedefs")
    assert cachesaver.OnlineAPI is pipelines.OnlineAPI and cachesaver.LocalAPI is pipelines.LocalAPI
    for name in ("Request", "Batch", "Response", "SingleRequestModel", "BatchRequestModel"):
        assert getattr(cachesaver, name) is getattr(typedefs, name)


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
