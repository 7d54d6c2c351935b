"""The run summary table and its ledger section."""

import re

from cachesaver.ledger import Ledger
from cachesaver.tasks import RunSummary
from cachesaver.tasks.summary import ledger_text
from cachesaver.typedefs import Request, Response


def summary(**changes):
    values = dict(
        task="t", directory="out/t", total=10, skipped=4, attempted=6, finished=9, failed=1,
        statuses={"completed": 9, "task error": 1}, wall_time_s=1.5, agent_turns=12,
    )
    values.update(changes)
    return RunSummary(**values)


def test_render_lists_the_run_and_its_statuses():
    text = summary(samples_served=8, samples_cached=6).render()
    assert "10 (4 already done, 6 run now)" in text
    assert re.search(r"^  task error\s+1$", text, re.MULTILINE)
    assert "6/8 samples (75.0%)" in text
    assert "ledger" not in text


def test_cache_hit_rate_is_unknown_without_samples():
    assert summary().cache_hit_rate is None
    assert summary(samples_served=0, samples_cached=0).cache_hit_rate is None
    assert summary(samples_served=4, samples_cached=1).cache_hit_rate == 0.25


def test_notes_and_the_ledger_table_are_appended():
    ledger = Ledger()
    ledger.record_upstream(Request("q"), Response(["a"]))
    text = summary(ledger_table=ledger_text(ledger)).with_notes(("modeled time", "3.00 s")).render()
    assert re.search(r"^modeled time\s+3\.00 s$", text, re.MULTILINE)
    assert text.index("modeled time") < text.index("ledger")
    assert "calls" in text.split("ledger", 1)[1]


def test_ledger_text_falls_back_to_a_snapshot():
    class Minimal:
        def snapshot(self):
            return {"upstream_calls": {"ns": 0}}

    assert ledger_text(Minimal()) == "upstream_calls: {'ns': 0}"
    assert ledger_text(None) is None
    assert ledger_text(object()) is None
