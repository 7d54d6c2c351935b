"""Makes sure a reference worker imported ``cachesaver==0.0.6`` from PyPI, not this checkout.

Imported first by every worker that runs inside the reference venv, before anything else from
``cachesaver``: a wrong ``cachesaver`` must never be measured as the reference.
"""

from __future__ import annotations

import importlib.metadata
import os

EXPECTED_VERSION = "0.0.6"


def check_reference(worker: str, driver: str) -> str:
    """The location of the imported reference package; exits with a clear message otherwise.

    ``worker`` and ``driver`` name the calling script and the benchmark that starts it.
    """
    import cachesaver

    try:
        version = importlib.metadata.version("cachesaver")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    location = os.path.dirname(os.path.abspath(cachesaver.__file__))
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if version != EXPECTED_VERSION or location.startswith(repository + os.sep + "cachesaver"):
        raise SystemExit(
            f"{worker} needs cachesaver=={EXPECTED_VERSION} from PyPI, but imported version "
            f"{version} from {location}; run it with the reference venv's python ({driver} "
            "does) from a directory outside the repository"
        )
    return location
