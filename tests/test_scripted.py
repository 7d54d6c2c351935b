"""ScriptedModel: the fake records what it was asked, or with keep_log=False only counts it."""

from cachesaver.models.scripted import ScriptedModel
from cachesaver.typedefs import Batch, Request


async def test_keep_log_false_counts_calls_but_records_nothing():
    model = ScriptedModel(keep_log=False)
    await model.request(Request("a", n=2))
    await model.batch_request(Batch([Request("b"), Request("a", n=3)]))
    assert (model.calls, model.requests_seen, model.samples_generated) == (2, 3, 6)
    assert model.log == [] and model.batch_sizes == [] and model.n_requested == []
    assert model.peak_in_flight == 1 and model.in_flight == 0


async def test_keep_log_false_numbers_samples_over_all_prompts_so_no_prompt_is_remembered():
    model = ScriptedModel(keep_log=False)
    first = await model.request(Request("a", n=2))
    second = await model.batch_request(Batch([Request("b"), Request("a")]))
    assert first.data == ["a#0", "a#1"]
    assert [r.data for r in second] == [["b#2"], ["a#3"]]  # k is model-wide: still all distinct
    assert model._counters == {}  # nothing grows with the number of distinct prompts

