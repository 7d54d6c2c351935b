"""The quick-start example and the notebooks (core, artifacts) run, and show what they promise."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


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


def test_core_notebook_executes(tmp_path):
    notebook = nbformat.read(ROOT / "notebooks" / "cachesaver_core.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), "notebooks are stored without outputs"
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "model calls during replay: 0" in text
    assert "cached=[True, True]" in text


def test_artifacts_notebook_executes(tmp_path):
    notebook = nbformat.read(ROOT / "notebooks" / "cachesaver_artifacts.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), "notebooks are stored without outputs"
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
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
