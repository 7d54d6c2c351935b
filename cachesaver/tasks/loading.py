"""Find a task class from a ``module:Class`` or ``path.py:Class`` reference (the CLI's TASK).

A ``module:Class`` reference is imported with the current working directory on ``sys.path``
(added once, at the front, when it is not there yet), as ``python -m`` does, so the
``cachesaver`` console script and ``python -m cachesaver`` find the same modules. Like
``python -m``, nothing is added under ``python -P`` / ``PYTHONSAFEPATH``.

>>> load_task_class("cachesaver.tasks.task:Task").__name__
'Task'
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable

from ..errors import CacheSaverError, ConfigurationError
from .task import Task

__all__ = ["load_task", "load_task_class", "parse_task_options"]


def _split(reference: str) -> tuple[str, str]:
    where, sep, attribute = reference.rpartition(":")
    if not sep or not where or not attribute:
        raise ConfigurationError(
            f"task reference {reference!r} is not 'module:Class' or 'path/to/file.py:Class'"
        )
    return where, attribute


def _load_file(path: Path) -> Any:
    resolved = path.resolve()
    if not resolved.is_file():
        raise ConfigurationError(f"task file {str(path)!r} does not exist")
    digest = hashlib.sha256(str(resolved).encode("utf-8")).hexdigest()[:12]
    name = f"cachesaver_task_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"cannot import {str(path)!r} as a Python module; is it a .py file?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _put_cwd_on_path() -> None:
    """Put the current working directory first on ``sys.path`` unless it is already there
    (``""`` also stands for it), as ``python -m`` does; the entry stays for later imports."""
    if getattr(sys.flags, "safe_path", False):
        return
    cwd = os.getcwd()
    for entry in sys.path:
        if entry == "" or (isinstance(entry, str) and os.path.abspath(entry) == cwd):
            return
    sys.path.insert(0, cwd)


def load_task_class(reference: str) -> type:
    """The class named by ``reference``: ``package.module:Class`` or ``dir/file.py:Class``.

    A module is looked up with the current working directory on ``sys.path`` (see the
    module docstring). Raises ConfigurationError when the module, file or class cannot be
    found, or the class does not look like a Task (no ``get_indices`` / ``start_sample``).
    Errors raised by the module's own code while importing propagate unchanged.
    """
    where, attribute = _split(reference)
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _load_file(Path(where))
    else:
        _put_cwd_on_path()
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name and where.startswith(exc.name):
                raise ConfigurationError(
                    f"no module named {where!r}; give an importable module or a path ending in .py"
                ) from exc
            raise
    found = getattr(module, attribute, None)
    if found is None:
        raise ConfigurationError(f"{where!r} defines no {attribute!r}")
    if not isinstance(found, type) or not all(
        callable(getattr(found, method, None)) for method in ("get_indices", "start_sample")
    ):
        raise ConfigurationError(
            f"{reference!r} is not a task class; subclass cachesaver.tasks.Task and implement "
            "get_indices() and start_sample()"
        )
    return found


def parse_task_options(pairs: Iterable[str]) -> Dict[str, Any]:
    """``["k=v", ...]`` as keyword arguments; a value is read as JSON when it parses, else kept
    as a string (``limit=5`` gives 5, ``split=test`` gives ``"test"``)."""
    options: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigurationError(f"task option {pair!r} is not KEY=VALUE with KEY a Python name")
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = text
    return options


def load_task(reference: str, **options: Any) -> Task:
    """An instance of the task class ``reference`` names, built with ``options``.

    Raises ConfigurationError, chained to the original, when the class refuses ``options``:
    its constructor raises TypeError (an unknown or missing option) or ValueError (a value it
    rejects).
    """
    cls = load_task_class(reference)
    try:
        task = cls(**options)
    except CacheSaverError:
        raise
    except (TypeError, ValueError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no options"
        raise ConfigurationError(
            f"{cls.__name__}({given}) failed: {exc}; pass --task-option KEY=VALUE for the "
            f"arguments {cls.__name__}.__init__ accepts"
        ) from exc
    return task
