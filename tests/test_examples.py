"""The quick-start example and the notebooks (core, artifacts) run, and show what they promise."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
from _early import early

ROOT = Path(__file__).resolve().parent.parent

# Each notebook runs in a kernel of its own, driven by nbclient in a process started as soon as the
# session knows its test is selected (tests/_early.py); the test reads the executed notebook.
EXECUTE = """
import sys
import nbformat
from nbclient import NotebookClient
source, executed, work = sys.argv[1:]
notebook = nbformat.read(source, as_version=4)
NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": work}}).execute()
nbformat.write(notebook, executed)
"""


def _execution(name: str, test: str):
    def command(directory: Path) -> list[str]:
        (directory / "work").mkdir()  # the kernel's working directory, for what the notebook writes
        return [sys.executable, "-c", EXECUTE, str(ROOT / "notebooks" / name), str(directory / "executed.ipynb"),
                str(directory / "work")]
    return early(__file__, [test], command)


CORE = _execution("cachesaver_core.ipynb", "test_core_notebook_executes")
ARTIFACTS = _execution("cachesaver_artifacts.ipynb", "test_artifacts_notebook_executes")


def _executed(name: str, execution) -> nbformat.NotebookNode:
    """The notebook ``name`` as its execution left it (checking first that it is stored without
    outputs)."""
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), "notebooks are stored without outputs"
    done = execution.wait(timeout_s=18)
    assert done.returncode == 0, done.stderr
    return nbformat.read(execution.directory / "executed.ipynb", as_version=4)


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_quickstart_first_run_calls_the_model_second_run_replays(tmp_path, capsys):
    quickstart = _load_example("quickstart")
    first = await quickstart.main(tmp_path / "cache", fresh=True)
    second = await quickstart.main(tmp_path / "cache")
    assert first["model_calls"] > 0
    assert second["model_calls"] == 0
    assert second["single"].data == first["single"].data
    assert [r.data for r in second["batch"]] == [r.data for r in first["batch"]]
    assert all(all(r.cached) for r in [second["single"], *second["batch"]])
    # within one run the same request asked twice got fresh samples
    assert set(first["single"].data).isdisjoint(first["batch"][0].data)
    assert "cached=[True, True]" in capsys.readouterr().out


def test_core_notebook_executes():
    notebook = _executed("cachesaver_core.ipynb", CORE)
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "model calls during replay: 0" in text
    assert "cached=[True, True]" in text


def test_artifacts_notebook_executes():
    notebook = _executed("cachesaver_artifacts.ipynb", ARTIFACTS)
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "keys        3" in text and "k3:1 k5:1" in text  # stats and ls
    assert '"format": "cachesaver-bundle/1"' in text  # the export's manifest
    assert "second import: ImportReport(keys=3, keys_changed=0, samples_added=0" in text
    assert "same samples per request_id: True" in text
    assert "model calls during replay: 0" in text
    assert "CacheMissError: replay mode" in text and "temperature 0.2 vs 0.7" in text
    assert "exit status: 1" in text
