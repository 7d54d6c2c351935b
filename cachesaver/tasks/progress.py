"""The run's progress bar: samples done, running and failed, and the cache hit rate.

The counters are kept whether or not the bar is shown (``enabled=False`` in tests and
scripts that want quiet output); the bar goes to stderr by default.
"""

from __future__ import annotations

from typing import IO, Callable, Optional

from tqdm import tqdm

__all__ = ["SampleProgress"]


class SampleProgress:
    """Counts samples as they start and end, and shows them on a tqdm bar when enabled.

    ``total`` counts the samples this run will attempt; ``hit_rate`` returns the fraction of
    agent samples served from the cache so far (or None when unknown).
    """

    def __init__(
        self,
        description: str,
        total: int,
        *,
        enabled: bool = True,
        hit_rate: Optional[Callable[[], Optional[float]]] = None,
        file: Optional[IO[str]] = None,
    ) -> None:
        self.total = total
        self.running = 0
        self.done = 0
        self.failed = 0
        self._hit_rate = hit_rate
        self._bar = tqdm(
            total=total,
            desc=description,
            unit="sample",
            disable=not enabled,
            file=file,
            dynamic_ncols=True,
            leave=True,
        )

    def _refresh(self) -> None:
        if self._bar.disable:
            return
        postfix: dict[str, int | str] = {"running": self.running, "failed": self.failed}
        rate = self._hit_rate() if self._hit_rate is not None else None
        if rate is not None:
            postfix["cache hits"] = f"{rate:.0%}"
        self._bar.set_postfix(postfix, refresh=False)  # redrawn by update(), at tqdm's pace

    def started(self) -> None:
        self.running += 1
        self._refresh()

    def finished(self, *, failed: bool) -> None:
        self.running -= 1
        self.done += 1
        if failed:
            self.failed += 1
        self._refresh()
        self._bar.update(1)

    def close(self) -> None:
        self._refresh()
        self._bar.close()
