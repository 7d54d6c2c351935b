"""Tests for cachesaver.ledger: exact calls, samples, tokens and money on a scripted workload."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from cachesaver.errors import BackendError, ConfigurationError, IncompleteResponseError
from cachesaver.ledger import Ledger, LedgerEntry, Price
from cachesaver.models.scripted import ScriptedModel
from cachesaver.pipelines import OnlineAPI
from cachesaver.typedefs import Batch, Request, Response

PRICES = {"small": Price(input_usd_per_million=1.0, output_usd_per_million=2.0)}


@dataclass(frozen=True)
class PricedRequest(Request):
    model: str = "small"


X = "one two three"  # ScriptedModel: 3 prompt tokens and 2 completion tokens per sample
Y = "four five"  # 2 prompt tokens per sample


async def run_workload(cache_dir: str) -> Ledger:
    ledger = Ledger(prices=PRICES)
    model = ScriptedModel(with_usage=True, fail={"bad"})
    async with OnlineAPI(model, cache_dir, batch_size=8, ledger=ledger) as pipeline:
        await pipeline.request(PricedRequest(X, n=3, namespace="a"))  # upstream: 3 samples
        await pipeline.request(PricedRequest(X, n=2, namespace="a"))  # fresh in "a": 2 more
        with pytest.raises(BackendError):
            await pipeline.request(PricedRequest("bad", namespace="a"))  # a failed call
        await pipeline.request(PricedRequest(X, n=4, namespace="b"))  # 4 from the store
        # Two identical requests in one batch: one upstream call of n=2, the second merged.
        await pipeline.batch_request(Batch([PricedRequest(Y, namespace="c"), PricedRequest(Y, namespace="c")]))
    assert model.calls == 4
    return ledger


async def test_exact_numbers_per_namespace_on_a_scripted_workload(tmp_path) -> None:
    ledger = await run_workload(str(tmp_path))
    entries = ledger.namespaces()
    assert list(entries) == ["a", "b", "c"]
    assert entries["a"] == LedgerEntry(
        upstream_calls=3, failed_calls=1, samples_generated=5, requests_served=2, samples_served=5,
        prompt_tokens=15, completion_tokens=10, cost_usd=(15 * 1.0 + 10 * 2.0) / 1e6,
    )
    assert entries["b"] == LedgerEntry(
        requests_served=1, samples_served=4, samples_cached=4,
        prompt_tokens_saved=12, completion_tokens_saved=8, saved_usd=(12 * 1.0 + 8 * 2.0) / 1e6,
    )
    assert entries["c"] == LedgerEntry(
        upstream_calls=1, samples_generated=2, requests_served=2, samples_served=2, samples_duplicated=1,
        prompt_tokens=4, completion_tokens=4, cost_usd=(4 * 1.0 + 4 * 2.0) / 1e6,
    )
    total = ledger.total()
    assert (total.upstream_calls, total.failed_calls, total.samples_generated) == (4, 1, 7)
    assert (total.samples_served, total.samples_cached, total.samples_duplicated) == (11, 4, 1)
    assert (total.tokens_spent, total.tokens_saved) == (33, 20)
    assert total.cost_usd == 0.000047
    assert total.saved_usd == 0.000028
    assert ledger.unpriced_models() == []
    assert ledger.models() == ["small"]


async def test_a_replayed_run_spends_nothing_and_saves_what_the_first_spent(tmp_path) -> None:
    first = await run_workload(str(tmp_path))
    ledger = Ledger(prices=PRICES)
    model = ScriptedModel(with_usage=True)
    async with OnlineAPI(model, str(tmp_path), batch_size=8, ledger=ledger) as pipeline:
        await pipeline.request(PricedRequest(X, n=3, namespace="a"))
        await pipeline.request(PricedRequest(X, n=2, namespace="a"))
    assert model.calls == 0
    entry = ledger.entry("a")
    assert (entry.upstream_calls, entry.samples_cached, entry.tokens_spent) == (0, 5, 0)
    spent_first = first.entry("a")
    assert entry.prompt_tokens_saved == spent_first.prompt_tokens
    assert entry.completion_tokens_saved == spent_first.completion_tokens
    assert entry.saved_usd == spent_first.cost_usd


def test_snapshot_is_plain_data_per_counter_and_namespace() -> None:
    ledger = Ledger()
    request = PricedRequest("q", n=2, namespace="ns")
    ledger.record_upstream(request, Response(["a", "b"]))
    ledger.record_served(request, Response(["a", "b"], cached=[False, True], duplicated=[False, False]))
    snapshot = ledger.snapshot()
    assert snapshot["upstream_calls"] == {"ns": 1}
    assert snapshot["samples_generated"] == {"ns": 2}
    assert snapshot["samples_cached"] == {"ns": 1}
    assert snapshot["samples_duplicated"] == {"ns": 0}
    assert ledger.upstream_calls == {"ns": 1}
    data = ledger.to_dict()
    assert data["total"]["samples_served"] == 2
    assert data["namespaces"]["ns"]["upstream_calls"] == 1


def test_a_short_answer_counts_what_it_returned() -> None:
    ledger = Ledger()
    error = IncompleteResponseError("1 of 3")
    error.response = Response(["a"], usage=[{"prompt_tokens": 4, "completion_tokens": 1}])  # type: ignore[attr-defined]
    ledger.record_upstream(PricedRequest("q", n=3), error)
    entry = ledger.total()
    assert (entry.upstream_calls, entry.failed_calls, entry.samples_generated, entry.tokens_spent) == (1, 0, 1, 5)


def test_a_sample_both_cached_and_merged_counts_as_both_and_is_saved_once() -> None:
    # What single-flight across workers serves: stored by another worker's identical call.
    ledger = Ledger(prices=PRICES)
    usage = [{"prompt_tokens": 10, "completion_tokens": 10}]
    ledger.record_served(PricedRequest("q"), Response(["a"], cached=[True], duplicated=[True], usage=usage))
    ledger.record_served(PricedRequest("q"), Response(["b"], cached=[True], duplicated=[True]))
    entry = ledger.total()
    assert (entry.samples_cached, entry.samples_duplicated, entry.tokens_saved) == (2, 2, 20)


def test_models_without_a_price_are_counted_but_not_priced() -> None:
    ledger = Ledger(prices=PRICES)
    usage = [{"prompt_tokens": 100, "completion_tokens": 50}]
    ledger.record_upstream(PricedRequest("q", model="big"), Response(["a"], usage=usage))
    ledger.record_upstream(Request("q"), Response(["a"], usage=usage))
    total = ledger.total()
    assert total.tokens_spent == 300
    assert total.cost_usd == 0.0
    assert ledger.unpriced_models() == ["<unknown>", "big"]
    assert "no price for: <unknown>, big" in ledger.render()


def test_prices_may_be_pairs_and_bad_prices_are_refused() -> None:
    ledger = Ledger(prices={"m": (0.5, 1.5)})
    assert ledger.prices["m"] == Price(0.5, 1.5)
    assert Price(0.5, 1.5).cost_usd(2_000_000, 1_000_000) == 2.5
    with pytest.raises(ConfigurationError):
        Ledger(prices={"m": 3.0})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError):
        Price(-1.0, 1.0)


async def test_render_shows_one_row_per_namespace_and_the_total(tmp_path) -> None:
    ledger = await run_workload(str(tmp_path))
    text = ledger.render()
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["namespace", "calls", "failed"]
    rows = {line.split()[0]: line.split() for line in lines if line and line.split()[0] in {"a", "b", "c", "total"}}
    assert rows["a"][1:4] == ["3", "1", "5"]
    assert rows["b"][5] == "4"  # cached
    assert rows["c"][6] == "1"  # merged
    assert rows["total"][-2:] == ["0.000047", "0.000028"]
    assert str(ledger) == text
    markdown = ledger.render(markdown=True).splitlines()
    assert markdown[0].startswith("| namespace | calls |")
    assert markdown[-1].startswith("| total | 4 | 1 | 7 |")


def test_hooks_may_be_called_from_several_threads() -> None:
    ledger = Ledger()
    usage = [{"prompt_tokens": 1, "completion_tokens": 1}]

    def work() -> None:
        for _ in range(500):
            ledger.record_upstream(PricedRequest("q"), Response(["a"], usage=usage))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.total().upstream_calls == 2000
    assert ledger.total().tokens_spent == 4000
