"""``cachesaver cache``: see a cache, ship it, prune it, compare two, explain a miss.

Every command takes the cache with ``--cache SPEC`` (before or after the command's name;
default ``$CACHESAVER_CACHE_DIR``): a cache directory, or a store URL that
:func:`~cachesaver.store.open_store` opens; ``diff`` takes two. Output is a human table, or
one JSON document with ``--json``.

* ``stats``: namespaces, keys, samples, records, bytes, oldest and newest sample.
* ``ls [--namespace NS]... [--grep TEXT]``: one line per key: its prompt, samples stored, when
  the newest was stored, replay records (uses) per namespace. ``--grep`` keeps the keys whose
  canonical request's JSON contains TEXT (ignoring case), or that start with it.
* ``show KEY``: a key (or its first 4+ characters): the request, every sample and record.
* ``export OUT [--namespace NS]... [--allow-pickle]`` and ``import IN [--allow-pickle]``:
  bundles (:mod:`cachesaver.artifacts.bundle`).
* ``prune [--namespace NS]... [--older-than DAYS] [--dry-run]``: forget those namespaces'
  replay records; with ``--older-than``, only in keys whose newest sample is older, and
  without ``--namespace`` forget those keys entirely. Run it on a cache no pipeline is using.
* ``diff A B``: keys only in one cache, and keys whose samples or records differ.
* ``explain REQUEST [--model-id ID]``: why REQUEST (JSON: ``{"prompt": ..., "n": ...,
  "request_id": ..., "namespace": ..., <keyed fields>}``, or a canonical request as ``show
  --json`` prints it; ``-`` reads it from stdin, ``@FILE`` from a file) is not served.

Exit status: 0 on success (for ``diff``: the caches hold the same entries; for ``explain``:
the request would be served); 1 when ``diff`` finds differences or ``explain`` a miss; 2 for
an error (a bad command line, a cache that cannot be opened, a bad bundle: one line on
stderr, no traceback); 141 when standard output was closed early.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, NoReturn, Sequence

from ..errors import CacheSaverError, ConfigurationError
from ..keys import KEY_SCHEMA, NON_KEY_FIELDS, canonical_value, key_of_canonical_request
from ..store import open_store, store_url_scheme
from ..store.protocol import SampleStore, namespace_digest
from ..artifacts.bundle import export_bundle, fingerprint, import_bundle, is_plain_json
from ..artifacts.catalog import Entry, entries, find_key, inspectable, prompt_text, read_samples, shorten
from ..artifacts.explain import explain

__all__ = ["EXIT_DIFFERENT", "EXIT_ERROR", "OneLineParser", "add_parser", "run"]

EXIT_DIFFERENT = 1
"""``diff`` found differences, or ``explain`` a miss."""
EXIT_ERROR = 2
CACHE_ENV = "CACHESAVER_CACHE_DIR"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2 (the console
    script's parser and all its commands')."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)  # argparse's own line, without the usage
        raise SystemExit(EXIT_ERROR)


def add_parser(commands: Any) -> None:
    """Add ``cache`` and its commands to the top-level parser's ``commands``."""
    spec = OneLineParser(add_help=False)
    spec.add_argument(
        "--cache", metavar="SPEC", default=argparse.SUPPRESS,
        help=f"the cache: a directory or a store URL (default ${CACHE_ENV})",
    )
    spec.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document")
    cache = commands.add_parser(  # its class is the top-level parser's: OneLineParser
        "cache", parents=[spec], help="inspect, export, import, prune, diff a cache; explain a miss",
        description="See a cache, ship it, prune it, compare two, explain a miss.",
    )
    sub = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    sub.add_parser("stats", parents=[spec], help="namespaces, keys, samples, records, bytes, oldest and newest")
    ls = sub.add_parser("ls", parents=[spec], help="one line per key")
    ls.add_argument("--namespace", action="append", metavar="NS", help="only keys with records in NS (repeatable)")
    ls.add_argument("--grep", metavar="TEXT", help="only keys whose request contains TEXT (any case), or that start with it")
    show = sub.add_parser("show", parents=[spec], help="a key's request, samples and records")
    show.add_argument("key", metavar="KEY", help="the key, or its first 4 or more characters")
    export = sub.add_parser("export", parents=[spec], help="write a bundle of the cache (or some namespaces)")
    export.add_argument("out", metavar="OUT", help="the bundle file to write")
    export.add_argument("--namespace", action="append", metavar="NS", help="only this namespace (repeatable)")
    export.add_argument("--allow-pickle", action="store_true", help="keep samples that are not JSON, pickled")
    imported = sub.add_parser("import", parents=[spec], help="import a bundle (idempotent)")
    imported.add_argument("bundle", metavar="IN", help="the bundle file to read")
    imported.add_argument("--allow-pickle", action="store_true", help="accept pickled samples (trusted files only)")
    prune = sub.add_parser("prune", parents=[spec], help="forget namespaces' replay records, or old keys")
    prune.add_argument("--namespace", action="append", metavar="NS", help="forget this namespace's records (repeatable)")
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="only keys whose newest sample is older")
    prune.add_argument("--dry-run", action="store_true", help="say what would be forgotten, forget nothing")
    diff = sub.add_parser("diff", parents=[spec], help="what differs between two caches")
    diff.add_argument("a", metavar="A", help="a cache directory or store URL")
    diff.add_argument("b", metavar="B", help="another one")
    why = sub.add_parser("explain", parents=[spec], help="why a request is not served from the cache")
    why.add_argument("request", metavar="REQUEST", help="the request as JSON, - for stdin, or @FILE")
    why.add_argument("--model-id", metavar="ID", help="the model identity in the pipeline's keys (default: none)")


def run(args: argparse.Namespace) -> int:
    """Run the ``cache`` command of ``args``; its exit status (see the module docstring)."""
    command: Callable[[argparse.Namespace], int] = _COMMANDS[args.cache_command]
    try:
        return command(args)
    except BrokenPipeError:
        raise  # standard output closed early: main() ends quietly with 141
    except (CacheSaverError, OSError) as exc:
        text = " ".join(str(exc).split())
        print(f"cachesaver: error: {text}", file=sys.stderr)
        return EXIT_ERROR


# -- opening caches ---------------------------------------------------------------------------


def _spec(args: argparse.Namespace) -> str:
    spec = getattr(args, "cache", None) or os.environ.get(CACHE_ENV)
    if not spec:
        raise ConfigurationError(f"say which cache: pass --cache DIR (or a store URL), or set {CACHE_ENV}")
    return str(spec)


def _open(spec: str, *, create: bool = False) -> tuple[SampleStore, bool]:
    """The store at ``spec``; a directory must hold a cache unless ``create``."""
    if store_url_scheme(spec) is None and not create:
        if not os.path.isdir(spec):
            raise ConfigurationError(f"there is no cache at {spec!r}: no such directory")
        if not os.path.isfile(os.path.join(spec, "cache.db")):
            raise ConfigurationError(f"{spec!r} holds no cache (no cache.db); pass the directory of a cache")
    store, owned = open_store(spec)
    try:
        inspectable(store)
    except ConfigurationError:
        if owned:
            store.close()
        raise
    return store, owned


class _Opened:
    def __init__(self, spec: str, *, create: bool = False) -> None:
        self.store, self.owned = _open(spec, create=create)

    def __enter__(self) -> SampleStore:
        return self.store

    def __exit__(self, *exc_info: Any) -> None:
        if self.owned:
            self.store.close()


# -- output -----------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, document: Any, human: Callable[[], Iterable[str]]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(document, indent=2, ensure_ascii=False, default=repr))
    else:
        for line in human():
            print(line)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> list[str]:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(row) for row in cells)]


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp))


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def _uses(entry: Entry) -> str:
    return " ".join(f"{name}:{count}" for name, count in entry.uses().items()) or "-"


# -- the commands -----------------------------------------------------------------------------


def _stats(args: argparse.Namespace) -> int:
    spec = _spec(args)
    with _Opened(spec) as store:
        keys = samples = records = unknown = damaged = 0
        oldest: float | None = None
        newest: float | None = None
        per_namespace: dict[str, list[int]] = {}
        for entry in entries(store):
            if entry.error is not None:
                damaged += 1
                continue
            keys += 1
            samples += entry.count
            records += len(entry.records)
            unknown += entry.request is None
            if entry.oldest is not None:
                oldest = entry.oldest if oldest is None else min(oldest, entry.oldest)
            if entry.newest is not None:
                newest = entry.newest if newest is None else max(newest, entry.newest)
            for name, count in entry.uses().items():
                slot = per_namespace.setdefault(name, [0, 0])
                slot[0] += 1
                slot[1] += count
        size = inspectable(store).size_bytes()
        location = store.location
    document = {
        "cache": location, "keys": keys, "requests_unknown": unknown, "damaged_keys": damaged, "samples": samples,
        "records": records, "bytes": size, "oldest": _iso(oldest), "newest": _iso(newest),
        "namespaces": [{"namespace": n, "keys": k, "records": r} for n, (k, r) in sorted(per_namespace.items())],
    }

    def human() -> Iterable[str]:
        yield f"cache       {location}"
        yield f"namespaces  {len(per_namespace)}"
        yield f"keys        {keys:,}" + (f" ({unknown:,} with request unknown)" if unknown else "") + (
            f" ({damaged} damaged)" if damaged else "")
        yield f"samples     {samples:,}"
        yield f"records     {records:,}"
        yield f"bytes       {size:,}"
        yield f"oldest      {_when(oldest)} UTC" if oldest is not None else "oldest      -"
        yield f"newest      {_when(newest)} UTC" if newest is not None else "newest      -"
        if per_namespace:
            yield ""
            yield from _table(
                ["namespace", "keys", "records"],
                [(n, f"{k:,}", f"{r:,}") for n, (k, r) in sorted(per_namespace.items())], right=(1, 2),
            )

    _emit(args, document, human)
    return 0


def _ls(args: argparse.Namespace) -> int:
    wanted = {namespace_digest(ns) for ns in args.namespace} if args.namespace else None
    grep = args.grep.lower() if args.grep else None
    rows = []
    with _Opened(_spec(args)) as store:
        for entry in entries(store):
            if wanted is not None and not any(r.digest in wanted for r in entry.records):
                continue
            if grep is not None:
                text = json.dumps(entry.request, ensure_ascii=False).lower() if entry.request else ""
                if grep not in text and not entry.key.startswith(grep):
                    continue
            rows.append(entry)
    document = [
        {"key": e.key, "samples": e.count, "oldest": _iso(e.oldest), "newest": _iso(e.newest), "uses": e.uses(),
         "prompt": e.preview(200) if e.error is None else None, "request": e.request, "error": e.error}
        for e in rows
    ]

    def human() -> Iterable[str]:
        yield from _table(
            ["key", "samples", "newest (UTC)", "uses", "prompt"],
            [(e.key[:12], e.count, _when(e.newest), _uses(e), e.preview() if e.error is None else f"damaged: {e.error}")
             for e in rows],
            right=(1,),
        )
        yield f"{len(rows)} key(s)"

    _emit(args, document, human)
    return 0


def _show_sample(sample: Any) -> dict[str, Any]:
    data, usage = sample
    if is_plain_json(data) and is_plain_json(usage):
        return {"data": data, "usage": usage}
    return {"data_repr": repr(data), "usage_repr": repr(usage)}


def _show(args: argparse.Namespace) -> int:
    with _Opened(_spec(args)) as store:
        key = find_key(store, args.key)
        [entry] = list(entries(store, [key]))
        if entry.error is not None:
            raise ConfigurationError(f"key {key} cannot be read: {entry.error}")
        samples = read_samples(store, key, entry.count)
    stamps = list(entry.stored_at) + [None] * (len(samples) - len(entry.stored_at))
    document = {
        "key": key,
        "request": entry.request,
        "samples": [{"index": i, "stored_at": _iso(t), **_show_sample(s)} for i, (s, t) in enumerate(zip(samples, stamps))],
        "records": [
            {"namespace": r.label, "request_id": r.request_id, "n": r.n, "use": r.use, "indices": list(r.indices)}
            for r in entry.records
        ],
    }

    def human() -> Iterable[str]:
        yield f"key       {key}"
        if entry.request is None:
            yield "request   unknown (stored before requests were kept)"
        else:
            yield f"model     {entry.request.get('model_identity') or 'none (the request names it, or no identity)'}"
            fields = entry.request.get("fields", {})
            yield f"prompt    {shorten(prompt_text(fields.get('prompt')), 200)}"
            for name in sorted(set(fields) - {"prompt"}):
                yield f"{name:<9} {shorten(json.dumps(fields[name], ensure_ascii=False), 200)}"
        yield f"samples   {len(samples)}"
        yield ""
        yield from _table(
            ["index", "stored (UTC)", "usage", "sample"],
            [(i, _when(t), shorten(json.dumps(u, sort_keys=True) if is_plain_json(u) else repr(u), 40),
              shorten(" ".join((d if isinstance(d, str) else repr(d)).split()), 80))
             for i, ((d, u), t) in enumerate(zip(samples, stamps))],
            right=(0,),
        )
        if entry.records:
            yield ""
            yield from _table(
                ["namespace", "request_id", "n", "use", "indices"],
                [(r.label, json.dumps(r.request_id), r.n, r.use, ",".join(map(str, r.indices))) for r in entry.records],
                right=(2, 3),
            )

    _emit(args, document, human)
    return 0


def _export(args: argparse.Namespace) -> int:
    with _Opened(_spec(args)) as store:
        report = export_bundle(store, args.out, namespaces=args.namespace, allow_pickle=args.allow_pickle)
    manifest = report.manifest
    document = {"path": report.path, "manifest": manifest.to_dict(), "unnamed_records": report.unnamed_records}

    def human() -> Iterable[str]:
        counts = manifest.counts
        names = ", ".join(manifest.namespaces) or "none"
        yield (f"exported {counts['keys']:,} keys, {counts['samples']:,} samples and {counts['records']:,} records "
               f"(namespaces: {names}) to {report.path}")
        yield f"sha256 {manifest.content_sha256}"
        if counts["pickled_samples"]:
            yield f"{counts['pickled_samples']:,} sample(s) are pickled: importing needs --allow-pickle"
        if report.unnamed_records:
            yield (f"left out {report.unnamed_records:,} record(s) of namespaces whose names the cache does not "
                   "know (written by an older cachesaver): export them with --namespace NAME")

    _emit(args, document, human)
    return 0


def _import(args: argparse.Namespace) -> int:
    with _Opened(_spec(args), create=True) as store:
        report = import_bundle(store, args.bundle, allow_pickle=args.allow_pickle)
        location = store.location
    document = {"cache": location, **{k: getattr(report, k) for k in (
        "keys", "keys_changed", "samples_added", "records_added", "records_kept", "already_applied")},
        "namespaces": list(report.namespaces)}

    def human() -> Iterable[str]:
        yield (f"imported {args.bundle} into {location}: {report.keys:,} keys ({report.keys_changed:,} changed), "
               f"{report.samples_added:,} samples and {report.records_added:,} records added")
        if report.records_kept:
            yield f"{report.records_kept:,} replay record(s) were already stored with other samples and were kept"

    _emit(args, document, human)
    return 0


def _prune(args: argparse.Namespace) -> int:
    if not args.namespace and args.older_than is None:
        raise ConfigurationError("say what to prune: --namespace NS (its replay records) and/or --older-than DAYS")
    if args.older_than is not None and not args.older_than >= 0:
        raise ConfigurationError(f"--older-than takes a number of days >= 0, got {args.older_than}")
    cutoff = None if args.older_than is None else time.time() - args.older_than * 86400
    wanted = {namespace_digest(ns) for ns in args.namespace} if args.namespace else None
    keys = samples = records = unknown_age = 0
    with _Opened(_spec(args)) as store:
        browsable = inspectable(store)
        for entry in entries(store):
            if entry.error is not None:
                continue
            if cutoff is not None:
                if entry.newest is None:
                    unknown_age += 1
                    continue
                if entry.newest >= cutoff:
                    continue
            if wanted is not None:
                mine = [r for r in entry.records if r.digest in wanted]
                if not mine:
                    continue
                if not args.dry_run:
                    browsable.forget(entry.key, args.namespace)
                keys += 1
                records += len(mine)
            else:
                if not args.dry_run:
                    browsable.forget(entry.key)
                keys += 1
                samples += entry.count
                records += len(entry.records)
    verb = "would forget" if args.dry_run else "forgot"
    document = {"dry_run": args.dry_run, "keys": keys, "records": records, "samples": samples,
                "namespaces": args.namespace or [], "older_than_days": args.older_than, "age_unknown": unknown_age}

    def human() -> Iterable[str]:
        age = f" whose newest sample is over {args.older_than:g} day(s) old" if cutoff is not None else ""
        if wanted is not None:
            yield f"{verb} {records:,} replay record(s) of namespace(s) {', '.join(args.namespace)} in {keys:,} key(s){age}"
        else:
            yield f"{verb} {keys:,} key(s){age}: {samples:,} samples and {records:,} records"
        if unknown_age:
            yield f"{unknown_age:,} key(s) with no known storage time were left alone"

    _emit(args, document, human)
    return 0


def _diff(args: argparse.Namespace) -> int:
    differences: list[dict[str, Any]] = []
    with _Opened(args.a) as a, _Opened(args.b) as b:
        left = {e.key: e for e in entries(a)}
        right = {e.key: e for e in entries(b)}
        for key in sorted(set(left) | set(right)):
            x, y = left.get(key), right.get(key)
            if x is None or y is None:
                only = "A" if y is None else "B"
                held = x if x is not None else y
                differences.append({"key": key, "only_in": only, "samples": held.count if held else 0})
                continue
            found: dict[str, Any] = {"key": key}
            ours = [fingerprint(s) for s in read_samples(a, key, x.count)]
            theirs = [fingerprint(s) for s in read_samples(b, key, y.count)]
            if ours != theirs:
                first = next((i for i, (p, q) in enumerate(zip(ours, theirs)) if p != q), min(len(ours), len(theirs)))
                found["samples"] = {"a": len(ours), "b": len(theirs), "first_difference": first}
            ra = {r.tag: r.indices for r in x.records}
            rb = {r.tag: r.indices for r in y.records}
            if ra != rb:
                found["records"] = {
                    "only_in_a": sum(1 for t in ra if t not in rb),
                    "only_in_b": sum(1 for t in rb if t not in ra),
                    "different": sum(1 for t in ra if t in rb and ra[t] != rb[t]),
                }
            if len(found) > 1:
                differences.append(found)
        total = len(set(left) | set(right))

    def describe(item: dict[str, Any]) -> str:
        if "only_in" in item:
            return f"only in {item['only_in']} ({item['samples']} samples)"
        parts = []
        if "samples" in item:
            s = item["samples"]
            parts.append(f"samples: A has {s['a']}, B has {s['b']}, from index {s['first_difference']} on they differ"
                         if s["first_difference"] < min(s["a"], s["b"]) else
                         f"samples: A has {s['a']}, B has {s['b']} (the same up to there)")
        if "records" in item:
            r = item["records"]
            parts.append(f"records: {r['only_in_a']} only in A, {r['only_in_b']} only in B, {r['different']} with other samples")
        return "; ".join(parts)

    document = {"a": args.a, "b": args.b, "same": not differences, "keys": total, "differences": differences}

    def human() -> Iterable[str]:
        if differences:
            yield from _table(["key", "difference"], [(d["key"][:12], describe(d)) for d in differences])
            yield f"A and B differ in {len(differences)} of {total} key(s)"
        else:
            yield f"A and B hold the same entries ({total} key(s))"

    _emit(args, document, human)
    return EXIT_DIFFERENT if differences else 0


def _read_request(text: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        with open(text[1:], encoding="utf-8") as handle:
            text = handle.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"the request is not JSON: {exc}") from exc


def _explain(args: argparse.Namespace) -> int:
    value = _read_request(args.request)
    if not isinstance(value, dict):
        raise ConfigurationError("the request must be a JSON object with at least a 'prompt'")
    namespace = value.get("namespace", "default")
    request_id = value.get("request_id")
    n = value.get("n", 1)
    if "fields" in value and "key_schema" in value:
        doc = {"key_schema": value["key_schema"], "model_identity": value.get("model_identity"), "fields": value["fields"]}
        if args.model_id is not None:
            doc["model_identity"] = args.model_id
    else:
        if "prompt" not in value:
            raise ConfigurationError("the request needs a 'prompt' (text or a list of messages)")
        fields = {k: canonical_value(v, k) for k, v in value.items() if k not in NON_KEY_FIELDS and v is not None}
        doc = {"key_schema": KEY_SCHEMA, "model_identity": args.model_id, "fields": fields}
    if type(n) is not int or n < 1 or not isinstance(namespace, str):
        raise ConfigurationError("'n' must be an int >= 1 and 'namespace' a string")
    key = key_of_canonical_request(doc)
    with _Opened(_spec(args)) as store:
        why = explain(store, doc, namespace=namespace, request_id=request_id, n=n, key=key)
    _emit(args, why.to_dict(), lambda: [f"key {key}", str(why)])
    return 0 if why.hit else EXIT_DIFFERENT


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "stats": _stats,
    "ls": _ls,
    "show": _show,
    "export": _export,
    "import": _import,
    "prune": _prune,
    "diff": _diff,
    "explain": _explain,
}
