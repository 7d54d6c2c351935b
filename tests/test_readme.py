"""The README's two set-up commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("## Quick start")[0]
    return re.findall(r"```bash\n(.+?)\n```", head)


def test_readme_opens_with_two_commands():
    commands = _commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert "examples/" in main_job and "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _commands()[1] in ci.splitlines()


def test_main_job_script_exists():
    script = re.search(r"python (examples/\S+\.py)", _commands()[0]).group(1)
    assert (ROOT / script).is_file()
