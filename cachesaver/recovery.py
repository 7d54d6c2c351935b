"""Recovery files: samples a closing pipeline could not store, kept for the next one.

When a store refuses writes until a pipeline closes (a full disk, a read-only directory, a
write lock held by another process), the samples the model returned and their replay records
are saved to one file, and the next pipeline opened on that cache stores them before its first
write.

Where: ``<cache directory>/cachesaver-recovery/`` when that can be written, else
``$TMPDIR/cachesaver-recovery/<digest of the cache directory's real path>/``. Both places are
read when a pipeline opens the cache; a file is deleted once its contents are committed.

Format: a pickle (the samples are whatever the model returned) of a dict with ``format``
(``"cachesaver-recovery/1"``), ``directory``, ``writes`` (a list of ``(key, [(data, usage),
...])``) and ``records`` (``(namespace, key, request_id, n, use, segments)``, where each
segment is ``("indices", (i, ...))`` for samples already stored or ``("write", position,
own)`` for the first ``own`` samples of ``writes[position]``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import time
from typing import TYPE_CHECKING, Any, Sequence

from .errors import CorruptStoreError
from .storage import RecordEntry

if TYPE_CHECKING:
    from .sample_broker import Write, _Record
    from .storage import SampleStore

__all__ = ["load_into", "locations", "save"]

FORMAT = "cachesaver-recovery/1"
_SUFFIX = ".recovery"


def locations(directory: str) -> list[str]:
    """The folders where recovery files of the cache in ``directory`` live, in order of preference."""
    real = os.path.realpath(directory)
    digest = hashlib.sha256(real.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return [
        os.path.join(real, "cachesaver-recovery"),
        os.path.join(tempfile.gettempdir(), "cachesaver-recovery", digest),
    ]


def save(store: "SampleStore", writes: Sequence["Write"], records: Sequence["_Record"]) -> str:
    """Write ``writes`` and ``records`` to a new recovery file; its path.

    Raises OSError if no location can be written."""
    position = {id(w): i for i, w in enumerate(writes)}
    saved_records = []
    for record in records:
        segments: list[tuple[Any, ...]] = [("indices", tuple(record.prior))]
        for write, own in record.parts:
            if write.indices is not None:
                segments.append(("indices", tuple(write.indices[:own])))
            else:
                segments.append(("write", position[id(write)], own))
        saved_records.append((record.namespace, record.key, record.request_id, record.n, record.use, segments))
    payload = pickle.dumps(
        {
            "format": FORMAT,
            "directory": store.directory,
            "writes": [(w.key, list(w.samples)) for w in writes],
            "records": saved_records,
        },
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(4).hex()}{_SUFFIX}"
    errors = []
    for folder in locations(store.directory):
        try:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, name)
            partial = path + ".partial"
            with open(partial, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
            return path
        except OSError as exc:
            errors.append(f"{folder}: {exc}")
    raise OSError("; ".join(errors))


def load_into(store: "SampleStore") -> tuple[int, int] | None:
    """Store the contents of every recovery file of ``store`` and delete the files.

    Returns (samples, records) stored, or None when there was no file. A file whose contents
    cannot be committed stays where it is; the error propagates."""
    samples = records = 0
    found = False
    for folder in locations(store.directory):
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(_SUFFIX))
        except OSError:
            continue
        for name in names:
            found = True
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                try:
                    content = pickle.load(handle)
                except Exception as exc:  # noqa: BLE001 - a damaged file is reported, kept
                    raise CorruptStoreError(f"recovery file {path} cannot be read: {exc}") from exc
            if not isinstance(content, dict) or content.get("format") != FORMAT:
                raise CorruptStoreError(f"{path} is not a cachesaver recovery file")
            marker = f"cachesaver/1/recovered/{name}"
            if store.cache.get(marker) is not None:  # committed before, but the file stayed
                _remove(path)
                continue
            with store.transaction():
                store.cache.set(marker, True)
                starts = [store.write(key, stored) for key, stored in content["writes"]]
                by_key: dict[str, list[RecordEntry]] = {}
                for namespace, key, request_id, n, use, segments in content["records"]:
                    indices: list[int] = []
                    for segment in segments:
                        if segment[0] == "indices":
                            indices.extend(segment[1])
                        else:
                            _, pos, own = segment
                            indices.extend(range(starts[pos], starts[pos] + own))
                    by_key.setdefault(key, []).append(RecordEntry(namespace, request_id, n, use, tuple(indices)))
                for key, entries in by_key.items():
                    store.write(key, records=entries)
            _remove(path)
            samples += sum(len(stored) for _, stored in content["writes"])
            records += len(content["records"])
    return (samples, records) if found else None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:  # a read-only folder: the marker in the store keeps it from loading twice
        pass
