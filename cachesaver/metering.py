"""Moved to :mod:`cachesaver.stages.ledger_tap`; kept so old imports work."""

from .stages.ledger_tap import *  # noqa: F401,F403
from .stages.ledger_tap import __all__  # noqa: F401
