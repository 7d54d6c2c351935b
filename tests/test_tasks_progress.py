"""The progress bar's counters, output and quiet mode."""

import io

from cachesaver.tasks.progress import SampleProgress


def test_counts_running_done_and_failed_and_shows_the_hit_rate():
    shown = io.StringIO()
    progress = SampleProgress("demo", 3, hit_rate=lambda: 0.5, file=shown)
    progress.started()
    progress.started()
    assert progress.running == 2
    progress.finished(failed=False)
    progress.finished(failed=True)
    progress.close()
    assert (progress.running, progress.done, progress.failed) == (0, 2, 1)
    text = shown.getvalue()
    assert "demo" in text and "2/3" in text and "cache hits=50%" in text and "failed=1" in text


def test_disabled_progress_writes_nothing_but_still_counts():
    shown = io.StringIO()
    progress = SampleProgress("demo", 1, enabled=False, hit_rate=lambda: None, file=shown)
    progress.started()
    progress.finished(failed=False)
    progress.close()
    assert shown.getvalue() == ""
    assert progress.done == 1
