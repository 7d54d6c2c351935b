"""Argument checks shared by the public constructors (private: the checks, not an API).

A duration in seconds must be a real, finite number: NaN compares false with everything, so it
slips past ``value < 0``, and an infinite (or astronomically large) wait turns a time-out into
a hang. :func:`check_seconds` refuses both with a
:class:`~cachesaver.errors.ConfigurationError` that names the argument and the fix.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigurationError

MAX_WAIT_S = 3600.0
"""The longest batch window (``timeout``) a pipeline accepts: one hour."""


def check_seconds(
    name: str,
    value: Any,
    *,
    optional: bool = False,
    positive: bool = False,
    maximum: float | None = None,
) -> None:
    """Raise ConfigurationError unless ``value`` is a finite number of seconds >= 0 (> 0 with
    ``positive``, <= ``maximum`` when given; None too with ``optional``)."""
    if value is None and optional:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > 0 if positive else value >= 0) and (maximum is None or value <= maximum)
    if ok:
        return
    bound = "> 0" if positive else ">= 0"
    if maximum is not None:
        bound += f" and at most {maximum:g}"
    none = " (or None for no limit)" if optional else ""
    raise ConfigurationError(f"{name} must be a finite number of seconds {bound}{none}, got {value!r}")
