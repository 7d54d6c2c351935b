"""Recovery files: samples a closing pipeline could not store, kept for the next one.

When a store refuses writes until a pipeline closes (a full disk, a read-only directory, a
write lock held by another process), the samples the model returned and their replay records
are saved to one file, and the next pipeline opened on that store commits them before its
first lookup.

Where: ``<cache directory>/cachesaver-recovery/`` when the store is a directory that can be
written, else ``$TMPDIR/cachesaver-recovery/<digest of the store's location>/``. Both places
are read when a pipeline opens the store; a folder that is not this user's own, or that others
may write to, is neither written nor read (its files are pickles, and unpickling a stranger's
file runs their code). Folders are created with mode 0700. A file is committed with its name as the commit's
token, so it is stored once even if it cannot be deleted afterwards; it is deleted once
committed.

Format: a pickle (the samples are whatever the model returned) of a dict with ``format``
(``"cachesaver-recovery/2"``), ``location``, ``appends`` (a list of ``(key, ((data, usage),
...))``), ``requests`` (key -> canonical request text, for keys whose request is known; files
without it load too) and ``records`` (a list of ``(key, (namespace, request_id, n, use), parts)``, where
``parts`` are those of :class:`~cachesaver.store.protocol.RecordWrite`: stored indices, and
``(position, count)`` pairs naming the first samples of an append of the same file).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
import time
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import CorruptStoreError
from .protocol import Append, RecordId, RecordWrite, SampleStore, request_text

if TYPE_CHECKING:
    from .allocation import Write, _Record

__all__ = ["load_into", "locations", "save"]

logger = logging.getLogger(__name__)

FORMAT = "cachesaver-recovery/2"
_SUFFIX = ".recovery"


def locations(location: str) -> list[str]:
    """The folders where recovery files of the store at ``location`` live, by preference."""
    real = os.path.realpath(location) if os.path.isdir(location) else location
    digest = hashlib.sha256(real.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    fallback = os.path.join(tempfile.gettempdir(), "cachesaver-recovery", digest)
    if os.path.isdir(location):
        return [os.path.join(real, "cachesaver-recovery"), fallback]
    return [fallback]


def save(location: str, writes: Sequence["Write"], records: Sequence["_Record"]) -> str:
    """Write ``writes`` and ``records`` to a new recovery file; its path.

    Raises OSError if no location can be written."""
    positions = {id(w): i for i, w in enumerate(writes)}
    saved_records = []
    for record in records:
        write = record.to_write(positions)
        rid = write.record
        saved_records.append((write.key, (rid.namespace, rid.request_id, rid.n, rid.use), write.parts))
    payload = pickle.dumps(
        {
            "format": FORMAT,
            "location": location,
            "appends": [(w.key, tuple(w.samples)) for w in writes],
            "requests": {w.key: text for w in writes if (text := request_text(w.request)) is not None},
            "records": saved_records,
        },
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{os.urandom(4).hex()}{_SUFFIX}"
    errors = []
    for folder in locations(location):
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            if not _trusted(folder):
                raise OSError(f"{folder} belongs to another user or others may write to it")
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


def load_into(store: SampleStore) -> tuple[int, int] | None:
    """Commit the contents of every recovery file of ``store`` and delete the files.

    Returns (samples, records) committed, or None when there was no file. A file whose contents
    cannot be committed stays where it is, and the error propagates; a read-only store leaves
    them for a writable one."""
    if not store.writable:
        return None
    samples = records = 0
    found = False
    for folder in locations(store.location):
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(_SUFFIX))
        except OSError:
            continue
        if names and not _trusted(folder):  # a file planted by someone else is never unpickled
            logger.warning("cachesaver ignores the recovery folder %s: it is not owned by this user "
                           "or others may write to it", folder)
            continue
        for name in names:
            found = True
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                try:
                    content: Any = pickle.load(handle)
                except Exception as exc:  # noqa: BLE001 - a damaged file is reported, kept
                    raise CorruptStoreError(f"recovery file {path} cannot be read: {exc}") from exc
            if not isinstance(content, dict) or content.get("format") != FORMAT:
                raise CorruptStoreError(f"{path} is not a cachesaver recovery file of this version")
            requests = content.get("requests") or {}
            appends = [Append(key, tuple(stored), requests.get(key)) for key, stored in content["appends"]]
            writes = [RecordWrite(key, RecordId(*rid), tuple(parts)) for key, rid, parts in content["records"]]
            if store.commit(appends, writes, token=f"recovery/{name}") is not None:
                samples += sum(len(a.samples) for a in appends)
                records += len(writes)
            _remove(path)
    return (samples, records) if found else None


def _trusted(folder: str) -> bool:
    """Whether ``folder`` belongs to this user and no one else may write to it."""
    try:
        info = os.stat(folder)
    except OSError:
        return False
    getuid = getattr(os, "getuid", None)
    if getuid is not None and info.st_uid != getuid():
        return False
    return not info.st_mode & 0o022


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:  # a read-only folder: the token in the store keeps it from loading twice
        pass
