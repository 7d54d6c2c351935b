"""Which stored samples a run has already handed out, and which ones a request gets next.

A *run* is one pipeline object. Inside a run and a namespace, a stored sample is handed out at
most once (samples are i.i.d. draws, and reusing one would correlate answers). A request takes,
in this order:

1. the indices recorded for it by an earlier run (same namespace, key, request_id and k-th use
   of that request_id), those that nobody in this run has claimed yet;
2. then the lowest indices not yet claimed in this run;
3. then new samples, appended past the end of the stored list.

Because step 1 looks requests up by identity rather than by arrival, a re-run that issues the
same requests with the same ids gets exactly the same samples whatever the order in which its
requests arrive or finish. Requests without an id skip step 1 and still replay cheaply.

Memory: one small entry per (namespace, key) and per (namespace, key, request_id) the run has
touched; a key whose samples were claimed in order costs two integers, whatever its length.
There are no per-key locks: all decisions are made by one worker at a time.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

__all__ = ["KeyClaims", "RunClaims"]


class KeyClaims:
    """The claimed indices of one (namespace, key): everything below ``floor`` plus ``above``."""

    __slots__ = ("floor", "above")

    def __init__(self) -> None:
        self.floor = 0
        self.above: set[int] | None = None  # created on the first out-of-order claim

    def is_claimed(self, index: int) -> bool:
        return index < self.floor or (self.above is not None and index in self.above)

    def claim(self, index: int) -> None:
        if index == self.floor:
            self.floor += 1
            above = self.above
            if above:
                while self.floor in above:
                    above.remove(self.floor)
                    self.floor += 1
        elif index > self.floor:
            if self.above is None:
                self.above = set()
            self.above.add(index)

    def lowest_unclaimed(self, limit: int, want: int, exclude: Sequence[int] = ()) -> list[int]:
        """Up to ``want`` unclaimed indices below ``limit``, lowest first, skipping ``exclude``."""
        out: list[int] = []
        index = self.floor
        above = self.above or ()
        while len(out) < want and index < limit:
            if index not in above and index not in exclude:
                out.append(index)
            index += 1
        return out


class RunClaims:
    """Per-run state: claims per (namespace, key) and use counts per (namespace, key, request_id)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], KeyClaims] = {}
        self._uses: dict[tuple[str, str, Any], int] = {}

    def claims(self, namespace: str, key: str) -> KeyClaims:
        entry = self._keys.get((namespace, key))
        if entry is None:
            entry = self._keys[(namespace, key)] = KeyClaims()
        return entry

    def next_use(self, namespace: str, key: str, request_id: Any) -> int:
        """0 the first time this run sees (namespace, key, request_id), then 1, 2, ..."""
        ident = (namespace, key, type(request_id).__name__, request_id)
        use = self._uses.get(ident, 0)  # type: ignore[call-overload]
        self._uses[ident] = use + 1  # type: ignore[index]
        return use

    def choose(
        self,
        namespace: str,
        key: str,
        n: int,
        stored: int,
        recorded: Sequence[int] | None = None,
        reserved: Iterable[int] = (),
    ) -> list[int]:
        """Pick and claim up to ``n`` stored indices (of ``stored``) for a request, in order.

        ``reserved`` are indices recorded for other requests of this namespace: they are taken
        only when no other stored sample is left, so an unidentified request does not take the
        sample an identified one will ask for back.
        """
        entry = self.claims(namespace, key)
        chosen: list[int] = []
        if recorded:
            for index in recorded:
                if len(chosen) == n:
                    break
                if index < stored and not entry.is_claimed(index) and index not in chosen:
                    chosen.append(index)
        if len(chosen) < n and reserved:
            avoid = set(reserved)
            avoid.update(chosen)
            chosen.extend(entry.lowest_unclaimed(stored, n - len(chosen), avoid))
        if len(chosen) < n:
            chosen.extend(entry.lowest_unclaimed(stored, n - len(chosen), chosen))
        for index in chosen:
            entry.claim(index)
        return chosen

    def claim(self, namespace: str, key: str, indices: Iterable[int]) -> None:
        entry = self.claims(namespace, key)
        for index in indices:
            entry.claim(index)
