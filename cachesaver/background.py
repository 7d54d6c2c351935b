"""Moved to :mod:`cachesaver._runtime.jobs`; kept so old imports work (``sample_broker`` among them)."""

from ._runtime.jobs import BackgroundTasks, Outcome

__all__ = ["BackgroundTasks", "Outcome"]
