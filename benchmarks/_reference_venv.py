"""The reference venv the benchmarks share: ``cachesaver==0.0.6`` from PyPI, apart from this checkout.

``bench_pipeline.py`` and ``bench_simulated.py`` both run a worker script with this venv's
interpreter, from a working directory outside the repository, so that ``import cachesaver``
finds the PyPI release. This module only knows where the venv lives, how to create it and how
to install into it; each benchmark decides what its worker needs and probes for it.

It imports nothing from ``cachesaver`` and nothing outside the standard library.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Sequence

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_REF_VENV = BENCH_DIR / ".venv-ref"
REFERENCE_REQUIREMENT = "cachesaver==0.0.6"


class ReferenceSetupError(Exception):
    """Raised when the reference venv cannot be created or a package cannot be installed into it.

    The message names the command that failed and ends with the tail of its error output.
    """


def venv_python(venv: Path) -> Path:
    """The interpreter of ``venv``."""
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def reference_env() -> Dict[str, str]:
    """The environment for the reference interpreter: no PYTHONPATH, no user site, no active venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(command: Sequence[str], cwd: Path) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, env=reference_env(), capture_output=True, text=True)
    except OSError as exc:
        raise ReferenceSetupError(f"`{' '.join(command)}` could not start: {exc}") from exc
    if done.returncode != 0:
        raise ReferenceSetupError(
            f"`{' '.join(command)}` failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )


def create_venv(venv: Path, cwd: Path) -> Path:
    """Create (or empty) ``venv`` with the current interpreter; its python."""
    _run([sys.executable, "-m", "venv", "--clear", str(venv)], cwd)
    return venv_python(venv)


def pip_install(python: Path, requirements: Sequence[str], cwd: Path) -> None:
    """``python -m pip install`` the requirements (a no-op, offline too, when all are satisfied)."""
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements], cwd)


def add_reference_arguments(parser: Any, extra_packages: str = "") -> None:
    """Add ``--ref-venv`` and ``--ref-python``, the same in every benchmark."""
    parser.add_argument("--ref-venv", type=Path, default=DEFAULT_REF_VENV,
                        help=f"venv holding {REFERENCE_REQUIREMENT}; created if missing "
                             "(default benchmarks/.venv-ref)")
    parser.add_argument("--ref-python", type=Path,
                        help=f"an existing interpreter with {REFERENCE_REQUIREMENT}{extra_packages} "
                             "(skips the venv)")
