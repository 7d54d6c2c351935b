"""How a lookup round's views are asked of the Redis view script and read from its reply.

:func:`view_command` builds the call of :data:`~cachesaver.store.redis_script.VIEW_SCRIPT` for
at most :data:`VIEW_KEYS_PER_SCRIPT` cache keys (:func:`view_chunks`), each given as one
argument (:func:`view_arg`); :func:`decode_views` turns its flat reply into one
:class:`~cachesaver.store.protocol.KeyView` per key, or a
:class:`~cachesaver.errors.CorruptStoreError` for a key whose entry cachesaver did not write,
never failing its neighbours. Used by :class:`~cachesaver.store.redis.RedisStore` for one
server and for the nodes of a cluster, from its threads and from the event loop alike.
"""

from __future__ import annotations

import hashlib
import pickle
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

from ..errors import StoreError
from .protocol import CONSULTED_RECORDS, EMPTY_VIEW, KeyView, StoredSample, key_view
from .redis_script import VIEW_SHA

__all__ = [
    "READ_ALONG_SAMPLES",
    "RECORDED_SAMPLES",
    "VIEW_KEYS_PER_SCRIPT",
    "asked_tags",
    "decode_views",
    "read_along",
    "record_indices",
    "slot_tag",
    "view_arg",
    "view_chunks",
    "view_command",
]

READ_ALONG_SAMPLES = 8
"""How many of a key's first samples a view reads along when it has no record for every asked
tag (a lookup needing only those costs one round trip)."""
RECORDED_SAMPLES = 64
"""How many samples of the asked records a view reads along in place of the first ones (a
replay of at most that many samples costs one round trip)."""
VIEW_KEYS_PER_SCRIPT = 64
"""The most cache keys one view script reads (a longer view sends several, in the same
pipelined round trip), so a view holds the server, which runs one script at a time, for well
under a millisecond. Several short scripts also finish sooner than one long one (256 keys: 1.5
ms in four scripts against 2.4 in one, on a 2-core machine), and a view from the event loop
decodes each script's reply while the server runs the next."""


@lru_cache(maxsize=65536)
def slot_tag(key: str) -> bytes:
    """The hash tag of ``key``'s entries: a digest, so any key (braces included) is safe."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest().encode()


@lru_cache(maxsize=65536)
def view_arg(key: str) -> bytes:
    """How a view script is given ``key``: its hash tag (16 characters) then the key itself."""
    return slot_tag(key) + key.encode("utf-8", "surrogatepass")


def asked_tags(tags: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """The asked record tags of each key, each once, in the order given."""
    asked: dict[str, list[str]] = {}
    for key, tag in tags:
        wanted = asked.get(key)
        if wanted is None:
            asked[key] = [tag]
        elif tag not in wanted:
            wanted.append(tag)
    return asked


def view_chunks(keys: list[str]) -> list[list[str]]:
    """``keys`` in runs of at most :data:`VIEW_KEYS_PER_SCRIPT`, one per view script (new lists)."""
    if len(keys) <= VIEW_KEYS_PER_SCRIPT:  # a lone caller's view, or a short round
        return [keys[:]] if keys else []
    return [keys[at : at + VIEW_KEYS_PER_SCRIPT] for at in range(0, len(keys), VIEW_KEYS_PER_SCRIPT)]


def view_command(
    base: bytes, declared: Sequence[bytes], keys: Sequence[str], asked: Mapping[str, list[str]]
) -> tuple[Any, ...]:
    """The EVALSHA of one view script reading ``keys``, each given as one argument (its hash
    tag and key; the script builds the names under ``base``, the store's key base
    ``<prefix>:1:``). ``declared`` are its ``KEYS``, the names a client, proxy or cluster node
    is told it reads (see :meth:`~cachesaver.store.redis.RedisStore._view_command`); none: the
    script may read any key of the cluster node it is sent to."""
    given: list[bytes] = []
    tail: list[Any] = []
    for key in keys:
        given.append(view_arg(key))
        wanted = asked.get(key)
        if not wanted:
            tail.append(0)
            continue
        tail.append(len(wanted))
        for tag in wanted:  # a loop, not a comprehension: most keys have one tag
            tail.append(tag if tag.isascii() else tag.encode("utf-8", "surrogatepass"))  # ASCII: sent as is
    head = (READ_ALONG_SAMPLES, RECORDED_SAMPLES, CONSULTED_RECORDS, len(keys), base)
    return ("EVALSHA", VIEW_SHA, len(declared), *declared, *head, *given, *tail)


def decode_views(
    keys: Sequence[str],
    reply: Any,
    asked: Mapping[str, list[str]],
    out: dict[str, KeyView | StoreError],
    corrupt: Callable[[str, str], StoreError],
    moved: list[str] | None = None,
) -> None:
    """Put the view of each of ``keys`` in ``out``, from the reply of their view script (see
    :data:`~cachesaver.store.redis_script.VIEW_SCRIPT`): a CorruptStoreError for a key that
    holds what cachesaver did not write, or for every key when the reply is an error or
    cannot be decoded (each made by ``corrupt(key, why)``); a key the script's node could not
    read goes to ``moved``."""
    if type(reply) is not list:  # an error reply for the whole script
        for key in keys:
            out[key] = corrupt(key, f"the view script failed ({reply})")
        return
    at = 0
    no_tags: list[str] = []
    loads = pickle.loads
    parsed: dict[bytes, tuple[int, ...]] = {}  # indices texts of this reply: most repeat (b"0")
    try:
        for key in keys:
            count = reply[at]
            if count < 0:
                if count == -4:  # the usual replay: its one record is the one tag asked
                    end = at + 4 + 2 * reply[at + 3]
                    if reply[at + 1].__class__ is not int:
                        raise TypeError(f"a sample count of {reply[at + 1]!r}")
                    text = reply[at + 2]
                    try:
                        indices = parsed.get(text)
                        if indices is None:
                            indices = parsed[text] = record_indices(text)
                    except (ValueError, TypeError, AttributeError) as exc:
                        out[key] = corrupt(key, f"a replay record cannot be decoded ({exc})")
                        at = end
                        continue
                    recorded = {asked[key][0]: indices}  # its records and its found tags alike
                    out[key] = key_view(reply[at + 1], recorded, recorded, read_along(reply, at + 4, end, loads))
                    at = end
                    continue
                if count == -1:
                    out[key] = EMPTY_VIEW
                    at += 1
                elif count == -3:
                    if moved is None:
                        raise TypeError("a script with named keys reported a key of another node")
                    moved.append(key)
                    at += 1
                else:
                    out[key] = corrupt(key, bytes(reply[at + 1]).decode("utf-8", "replace"))
                    at += 2
                continue
            wanted = asked.get(key, no_tags)
            found_at = at + 2 + 2 * reply[at + 1]
            samples_at = found_at + len(wanted) + 1
            end = samples_at + 2 * reply[samples_at - 1]
            records: dict[str, tuple[int, ...]] = {}
            found: dict[str, tuple[int, ...]] = {}
            try:
                for q in range(at + 2, found_at, 2):
                    text = reply[q + 1]
                    indices = parsed.get(text)
                    if indices is None:
                        indices = parsed[text] = record_indices(text)
                    tag = reply[q]  # an asked tag comes as its number among them (from 1)
                    records[wanted[tag - 1] if tag.__class__ is int else tag.decode("utf-8", "surrogatepass")] = indices
                for tag, text in zip(wanted, reply[found_at : samples_at - 1]):
                    if text is not None:
                        indices = parsed.get(text)
                        if indices is None:
                            indices = parsed[text] = record_indices(text)
                        found[tag] = indices
            except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
                out[key] = corrupt(key, f"a replay record cannot be decoded ({exc})")
                at = end
                continue
            out[key] = key_view(count, records, found, read_along(reply, samples_at, end, loads))
            at = end
    except (IndexError, KeyError, TypeError) as exc:  # a reply of another shape: not this engine's script
        for key in keys:
            if key not in out:
                out[key] = corrupt(key, f"the view script's reply cannot be decoded ({exc})")


def read_along(reply: list[Any], start: int, end: int, loads: Callable[[Any], Any]) -> dict[int, StoredSample]:
    """The samples a view script read along, from its reply's ``index, sample`` pairs between
    ``start`` and ``end``; one that cannot be decoded is left out (read again, and reported,
    only if a request needs it)."""
    samples: dict[int, StoredSample] = {}
    for q in range(start, end, 2):
        try:
            sample = loads(reply[q + 1])
        except Exception:  # noqa: BLE001 - see above
            continue
        if sample.__class__ is tuple and len(sample) == 2:
            samples[reply[q]] = sample
    return samples


def record_indices(text: bytes) -> tuple[int, ...]:
    """A record's indices from ``b"1,5,6"`` (``b""``: none); ValueError when malformed."""
    if not text:
        return ()
    values = tuple(map(int, text.split(b",")))
    if min(values) < 0:
        raise ValueError(f"negative index in {text!r}")
    return values
