"""What a pipeline spent and what it saved, per namespace and in total, in calls, samples,
tokens and money.

A pipeline feeds its :class:`Ledger` through two hooks (the :class:`LedgerHooks` protocol):

* ``record_upstream(request, outcome)`` once for every request that reaches the model
  (``request.n`` samples asked), with the model's Response or the exception it raised (a short
  answer's partial Response counts). Its samples are *generated*, their token usage *spent*.
* ``record_served(request, response)`` once for every request answered to the caller. Samples
  flagged ``cached`` came from storage with no upstream call: their stored token usage is
  *saved*. Samples flagged ``duplicated`` rode on an identical request's upstream call: they are
  counted as *merged*, but they were generated (and their tokens spent) by that call, so they
  save calls, not tokens. A sample flagged both came from storage right after another worker's
  identical call stored it (single-flight across the workers of a store, see
  :mod:`cachesaver.stages.single_flight`): it is merged and cached, its tokens saved once (that
  call was paid by the other worker's ledger).

Because a cached sample carries the usage recorded when it was generated, "saved" is exactly
what those samples cost the first time, and no token is ever counted as both spent and saved.
Money comes from a price table in USD per million input (prompt) and output (completion)
tokens, keyed by ``request.model``; tokens of a model missing from the table are counted but
not priced, and :meth:`Ledger.unpriced_models` names them.

>>> from dataclasses import dataclass
>>> from cachesaver.typedefs import Request, Response
>>> ledger = Ledger(prices={"m": Price(input_usd_per_million=1.0, output_usd_per_million=2.0)})
>>> @dataclass(frozen=True)
... class R(Request):
...     model: str = "m"
>>> usage = [{"prompt_tokens": 10, "completion_tokens": 5}] * 2
>>> ledger.record_upstream(R("q", n=2), Response(["a", "b"], usage=usage))
>>> ledger.record_served(R("q", n=2), Response(["a", "b"], cached=[False, False], usage=usage))
>>> ledger.record_served(R("q", n=2), Response(["a", "b"], cached=[True, True], usage=usage))
>>> total = ledger.total()
>>> (total.upstream_calls, total.samples_generated, total.samples_cached, total.tokens_spent)
(1, 2, 2, 30)
>>> (total.tokens_saved, total.cost_usd, total.saved_usd)
(30, 4e-05, 4e-05)
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, Union

from .errors import ConfigurationError
from .typedefs import Request, Response

__all__ = ["Ledger", "LedgerEntry", "LedgerHooks", "Price", "PriceTable"]

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True)
class Price:
    """What a model costs, in USD per million prompt (input) and completion (output) tokens."""

    input_usd_per_million: float
    output_usd_per_million: float

    def __post_init__(self) -> None:
        for name in ("input_usd_per_million", "output_usd_per_million"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"Price.{name} must be a number >= 0, got {value!r}")

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The exact decimal cost of the tokens, as the nearest float."""
        return float(self._cost(prompt_tokens, completion_tokens))

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        inp = Decimal(str(self.input_usd_per_million))
        out = Decimal(str(self.output_usd_per_million))
        return (prompt_tokens * inp + completion_tokens * out) / _MILLION


PriceTable = Mapping[str, Union[Price, "tuple[float, float]"]]
"""Model name -> :class:`Price` (or an ``(input, output)`` USD-per-million pair)."""


@dataclass(frozen=True)
class LedgerEntry:
    """The ledger's numbers for one namespace, or for all of them.

    * ``upstream_calls``: requests that reached the model (``failed_calls`` of them failed).
    * ``samples_generated``: samples the model produced for them.
    * ``requests_served`` / ``samples_served``: answered to callers; of those samples,
      ``samples_cached`` came from storage and ``samples_duplicated`` were merged onto an
      identical request's call (those another worker's call stored while this request waited
      for it count in both).
    * ``prompt_tokens`` / ``completion_tokens``: tokens spent upstream.
    * ``prompt_tokens_saved`` / ``completion_tokens_saved``: the stored usage of the cached
      samples served.
    * ``cost_usd`` / ``saved_usd``: the same in money, for priced models.
    """

    upstream_calls: int = 0
    failed_calls: int = 0
    samples_generated: int = 0
    requests_served: int = 0
    samples_served: int = 0
    samples_cached: int = 0
    samples_duplicated: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_saved: int = 0
    completion_tokens_saved: int = 0
    cost_usd: float = 0.0
    saved_usd: float = 0.0

    @property
    def tokens_spent(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def tokens_saved(self) -> int:
        return self.prompt_tokens_saved + self.completion_tokens_saved


_COUNTERS = tuple(f.name for f in dataclasses.fields(LedgerEntry) if f.name not in ("cost_usd", "saved_usd"))


def _normalise_prices(prices: PriceTable | None) -> dict[str, Price]:
    table: dict[str, Price] = {}
    for model, price in (prices or {}).items():
        if isinstance(price, Price):
            table[model] = price
        elif isinstance(price, (tuple, list)) and len(price) == 2:
            table[model] = Price(*price)
        else:
            raise ConfigurationError(
                f"the price of {model!r} must be a Price or an (input, output) pair in USD per "
                f"million tokens, got {price!r}"
            )
    return table


def _tokens(usage: Any) -> tuple[int, int]:
    if usage is None:
        return 0, 0
    if isinstance(usage, Mapping):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    else:
        prompt, completion = getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)
    return int(prompt or 0), int(completion or 0)


class LedgerHooks(Protocol):
    """The two hooks a pipeline calls on its ledger; :class:`Ledger` implements them, and a
    :class:`~cachesaver.stages.ledger_tap.LedgerTap` accepts any object that does."""

    def record_upstream(self, request: Request, outcome: Response | BaseException) -> None:
        """Called once for every request that reached the model, with what it returned or raised."""
        ...

    def record_served(self, request: Request, response: Response) -> None:
        """Called once for every request answered to its caller."""
        ...


class Ledger:
    """Counts calls, samples, tokens and money per namespace; safe to read from any thread.

    Parameters:
        prices: model name -> :class:`Price` (or ``(input, output)`` USD per million tokens).
    """

    def __init__(self, prices: PriceTable | None = None) -> None:
        self.prices: dict[str, Price] = _normalise_prices(prices)
        self._lock = threading.Lock()
        # (namespace, model) -> counter name -> value; money is derived from tokens on read.
        self._counts: dict[tuple[str, str | None], dict[str, int]] = {}

    # -- hooks -----------------------------------------------------------------------------
    def _bucket(self, request: Request) -> dict[str, int]:
        if type(request) is Request:  # has no model field (its __getattr__ would answer None)
            model = None
        else:
            model = request.model
            if not isinstance(model, str):
                model = None
        key = (request.namespace, model)
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = dict.fromkeys(_COUNTERS, 0)
        return counts

    def record_upstream(self, request: Request, outcome: Response | BaseException) -> None:
        """Count one request that reached the model, with what it returned or raised."""
        with self._lock:
            counts = self._bucket(request)
            counts["upstream_calls"] += 1
            if not isinstance(outcome, Response):
                # A short answer arrives as IncompleteResponseError carrying what was returned.
                partial = getattr(outcome, "response", None)
                if not isinstance(partial, Response):
                    counts["failed_calls"] += 1
                    return
                outcome = partial
            counts["samples_generated"] += len(outcome.data)
            for usage in outcome.usage or ():
                prompt, completion = _tokens(usage)
                counts["prompt_tokens"] += prompt
                counts["completion_tokens"] += completion

    def record_served(self, request: Request, response: Response) -> None:
        """Count one request answered to its caller, and what its reused samples saved."""
        size = len(response.data)
        cached = response.cached or [False] * size
        duplicated = response.duplicated or [False] * size
        usage = response.usage
        with self._lock:
            counts = self._bucket(request)
            counts["requests_served"] += 1
            counts["samples_served"] += size
            if usage is None:  # no tokens to account: count flags only
                counts["samples_cached"] += cached.count(True)
                if True in duplicated:
                    counts["samples_duplicated"] += sum(1 for d in duplicated if d)
                return
            for was_cached, was_duplicated, sample_usage in zip(cached, duplicated, usage):
                if was_duplicated:
                    counts["samples_duplicated"] += 1
                if not was_cached:
                    continue
                counts["samples_cached"] += 1
                prompt, completion = _tokens(sample_usage)
                counts["prompt_tokens_saved"] += prompt
                counts["completion_tokens_saved"] += completion

    # -- reading ---------------------------------------------------------------------------
    def _entry(self, items: Iterable[tuple[tuple[str, str | None], dict[str, int]]]) -> LedgerEntry:
        totals = dict.fromkeys(_COUNTERS, 0)
        cost = saved = Decimal(0)
        for (_, model), counts in items:
            for name in _COUNTERS:
                totals[name] += counts[name]
            price = self.prices.get(model) if model is not None else None
            if price is not None:
                cost += price._cost(counts["prompt_tokens"], counts["completion_tokens"])
                saved += price._cost(counts["prompt_tokens_saved"], counts["completion_tokens_saved"])
        return LedgerEntry(**totals, cost_usd=float(cost), saved_usd=float(saved))

    def namespaces(self) -> dict[str, LedgerEntry]:
        """One entry per namespace seen, sorted by name."""
        with self._lock:
            names = sorted({ns for ns, _ in self._counts})
            return {ns: self._entry((k, c) for k, c in self._counts.items() if k[0] == ns) for ns in names}

    def entry(self, namespace: str) -> LedgerEntry:
        """The numbers of one namespace (all zero if it was never seen)."""
        with self._lock:
            return self._entry((k, c) for k, c in self._counts.items() if k[0] == namespace)

    def total(self) -> LedgerEntry:
        """The numbers of every namespace added up."""
        with self._lock:
            return self._entry(self._counts.items())

    def models(self) -> list[str]:
        """The model names seen (requests without a ``model`` field are not listed)."""
        with self._lock:
            return sorted({m for _, m in self._counts if m is not None})

    def unpriced_models(self) -> list[str]:
        """Models that spent or saved tokens but have no price; ``"<unknown>"`` for requests
        without a ``model`` field."""
        with self._lock:
            found = set()
            for (_, model), counts in self._counts.items():
                used = counts["prompt_tokens"] + counts["completion_tokens"] + counts["prompt_tokens_saved"] + counts[
                    "completion_tokens_saved"
                ]
                if used and (model is None or model not in self.prices):
                    found.add(model if model is not None else "<unknown>")
            return sorted(found)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every counter and amount as ``{name: {namespace: value}}`` (plain data, a copy)."""
        per_namespace = self.namespaces()
        names = [f.name for f in dataclasses.fields(LedgerEntry)]
        return {name: {ns: getattr(e, name) for ns, e in per_namespace.items()} for name in names}

    def to_dict(self) -> dict[str, Any]:
        """``{"namespaces": {ns: {...}}, "total": {...}, "unpriced_models": [...]}``."""
        return {
            "namespaces": {ns: dataclasses.asdict(e) for ns, e in self.namespaces().items()},
            "total": dataclasses.asdict(self.total()),
            "unpriced_models": self.unpriced_models(),
        }

    # Per-namespace views of single counters, as the pipeline's first ledger offered them.
    @property
    def upstream_calls(self) -> dict[str, int]:
        return self.snapshot()["upstream_calls"]

    @property
    def samples_generated(self) -> dict[str, int]:
        return self.snapshot()["samples_generated"]

    @property
    def samples_cached(self) -> dict[str, int]:
        return self.snapshot()["samples_cached"]

    @property
    def samples_duplicated(self) -> dict[str, int]:
        return self.snapshot()["samples_duplicated"]

    # -- rendering -------------------------------------------------------------------------
    def render(self, *, markdown: bool = False) -> str:
        """A table with one row per namespace and a total row (plain text or Markdown)."""
        return render_table(self.namespaces(), self.total(), self.unpriced_models(), markdown=markdown)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        total = self.total()
        return (
            f"Ledger(namespaces={len(self.namespaces())}, upstream_calls={total.upstream_calls}, "
            f"samples_cached={total.samples_cached}, cost_usd={total.cost_usd}, saved_usd={total.saved_usd})"
        )


_COLUMNS = (
    ("namespace", None),
    ("calls", "upstream_calls"),
    ("failed", "failed_calls"),
    ("generated", "samples_generated"),
    ("served", "samples_served"),
    ("cached", "samples_cached"),
    ("merged", "samples_duplicated"),
    ("tokens spent", "tokens_spent"),
    ("tokens saved", "tokens_saved"),
    ("USD spent", "cost_usd"),
    ("USD saved", "saved_usd"),
)


def _cell(entry: LedgerEntry, attribute: str) -> str:
    value = getattr(entry, attribute)
    if isinstance(value, float):
        return f"{value:.6f}"
    return f"{value:,}"


def render_table(
    namespaces: Mapping[str, LedgerEntry], total: LedgerEntry, unpriced: list[str], *, markdown: bool = False
) -> str:
    """Lay out ledger entries as a table: one row per namespace, then the total."""
    header = [title for title, _ in _COLUMNS]
    rows = [[ns] + [_cell(e, a) for _, a in _COLUMNS[1:] if a] for ns, e in namespaces.items()]
    rows.append(["total"] + [_cell(total, a) for _, a in _COLUMNS[1:] if a])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(row: list[str]) -> str:
            cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
            return "  ".join(cells).rstrip()

        lines = [line(header), "  ".join("-" * w for w in widths)]
        lines += [line(r) for r in rows[:-1]] + ["  ".join("-" * w for w in widths), line(rows[-1])]
    if unpriced:
        lines.append("")
        lines.append(f"no price for: {', '.join(unpriced)} (their tokens are not in the USD columns)")
    return "\n".join(lines)
