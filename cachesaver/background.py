"""Moved to :mod:`cachesaver._runtime.jobs`; kept so old imports work (``store/allocation.py`` still
uses it)."""

from ._runtime.jobs import BackgroundTasks, Outcome

__all__ = ["BackgroundTasks", "Outcome"]
