"""Writers take turns at a diskcache directory's write lock (cachesaver/store/write_turns.py).

The order tests use real processes and threads: one keeps writing, another waits, and the
store's own sample list says who wrote when. "Waiting" is seen through the gate file (the
writer next in line holds it), never guessed with a sleep.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import diskcache
import pytest
from _support import open_files_under

from cachesaver.errors import StoreLockedError
from cachesaver.store import write_turns
from cachesaver.store.diskcache import DiskcacheStore
from cachesaver.store.protocol import Append
from cachesaver.store.threads import StoreThread
from cachesaver.store.write_turns import GATE_FILE, TURN_FILE, WriteTurns, turns_for

# Holds one transaction of the store in argv[1] until a "next" line (or until killed), appends
# "<tag>0" in it, then appends "<tag>1" ... "<tag><later>" one transaction each, at once.
HOLDER = """
import sys
from cachesaver.store.diskcache import DiskcacheStore
store = DiskcacheStore(sys.argv[1])
tag, later = sys.argv[2], int(sys.argv[3])
with store.transaction():
    print("holding", flush=True)
    if sys.stdin.readline().strip() != "next":
        raise SystemExit("expected a next line")
    store.append("k", [tag + "0"])
for i in range(1, later + 1):
    store.append("k", [f"{tag}{i}"])
store.close()
print("done", flush=True)
"""


@contextmanager
def holder(directory: Path, tag: str, later: int) -> Iterator[subprocess.Popen]:
    """Another process inside a transaction of the store in ``directory`` (see HOLDER)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), tag, str(later)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "holding", process.stderr
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def someone_at_the_gate(directory: Path) -> bool:
    """Whether a writer holds the gate (it waits for the turn), seen through a file of our own."""
    fd = os.open(directory / GATE_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # lets go of the gate if we took it
    return False


def wait_for(predicate: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (a deadlock guard bounds the wait)."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, "the condition never came"
        time.sleep(0.001)


@contextmanager
def turn_held(directory: Path) -> Iterator[None]:
    """This test holds the turn of ``directory`` on a file of its own, as a writer would."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / TURN_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def stored(store: DiskcacheStore) -> list[Any]:
    return store.read_data("k", range(store.count("k")))


def in_thread(func: Callable[[], Any], store: DiskcacheStore | None = None) -> tuple[threading.Thread, list[Any]]:
    """Run ``func`` in a new thread; its value (or exception) lands in the list. With ``store``,
    the thread closes its connection to it when done (Python 3.13 warns of one left open)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(func())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)
        finally:
            if store is not None:
                store.release_thread()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


# == order ========================================================================================


def test_a_writer_waiting_when_another_process_lets_go_writes_before_that_process_writes_again(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    store = DiskcacheStore(directory)
    later = 20
    with holder(directory, "H", later) as process:
        thread, out = in_thread(lambda: store.append("k", ["W"]), store)
        wait_for(lambda: someone_at_the_gate(directory))  # our append waits for its turn
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("next\n")
        process.stdin.flush()
        thread.join()
        assert process.stdout.readline().strip() == "done"
    assert out == [1]
    # Let go after H0, wanted again at once twenty times: the waiting writer went first.
    assert stored(store) == ["H0", "W"] + [f"H{i}" for i in range(1, later + 1)]
    store.close()


def test_threads_of_one_process_take_turns_too(tmp_path: Path) -> None:
    store = DiskcacheStore(tmp_path / "c")
    inside, go = threading.Event(), threading.Event()

    def busy() -> None:
        with store.transaction():
            inside.set()
            go.wait()
            store.append("k", ["T0"])
        for i in range(1, 6):
            store.append("k", [f"T{i}"])
        store.release_thread()

    def other() -> int:
        try:
            return store.append("k", ["U"])
        finally:
            store.release_thread()

    first = threading.Thread(target=busy)
    first.start()
    try:
        wait_for(inside.is_set)
        second, out = in_thread(other)
        wait_for(lambda: someone_at_the_gate(tmp_path / "c"))
    finally:
        go.set()
        first.join()
    second.join()
    assert out == [1]
    assert stored(store) == ["T0", "U", "T1", "T2", "T3", "T4", "T5"]
    store.close()


# == bounds ========================================================================================


@pytest.mark.timeout(20)  # an unbounded wait fails here
def test_a_wait_for_the_turn_is_bounded_and_a_wait_s_of_zero_never_blocks(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    store = DiskcacheStore(directory, store_timeout_s=0.1)
    store.append("k", ["a"])
    turns = WriteTurns(str(directory))
    with turn_held(directory):
        for write in (
            lambda: store.commit([Append("k", (("x", None),))], wait_s=0),  # the commit's own path
            lambda: store.transaction(wait_s=0).__enter__(),
        ):
            with pytest.raises(StoreLockedError, match="stayed locked for writing"):
                write()
        assert turns.take(time.monotonic()) is False and turns.helpers_started == 0  # no wait at all
        assert turns.take(time.monotonic() + 0.01) is False and turns.helpers_started == 0  # polled
        with pytest.raises(StoreLockedError, match=r"for 0\.1 s"):
            store.append("k", ["y"])  # store_timeout_s
        assert turns.take(time.monotonic() + 0.1) is False and turns.helpers_started == 1
        assert turns.take(time.monotonic() + 0.1) is False and turns.helpers_started == 1  # the same helper
        assert store.count("k") == 1  # nothing was written meanwhile
    # Let go: the helper that stayed in line gets the turn and hands it to its thread.
    assert turns.take(time.monotonic() + 10) is True and turns.held and turns.helpers_started == 1
    turns.give()
    assert not turns.held
    assert store.append("k", ["z"]) == 1  # the store's own helpers, given up on, let go too
    assert stored(store) == ["a", "z"]
    turns.close_thread()
    store.close()


def test_nested_takes_give_the_turn_back_once(tmp_path: Path) -> None:
    turns = WriteTurns(str(tmp_path))
    assert turns.take(time.monotonic() + 1) and turns.take(time.monotonic() + 1)
    turns.give()
    assert turns.held and someone_holds_the_turn(tmp_path)
    turns.give()
    assert not turns.held and not someone_holds_the_turn(tmp_path)
    turns.give()  # one too many: nothing to give back
    turns.close_thread()


def someone_holds_the_turn(directory: Path) -> bool:
    fd = os.open(directory / TURN_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# == a killed writer ================================================================================


@pytest.mark.timeout(20)
def test_the_turn_of_a_writer_killed_with_sigkill_passes_to_the_one_waiting(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    store = DiskcacheStore(directory, store_timeout_s=15)
    with holder(directory, "H", 0) as process:
        thread, out = in_thread(lambda: store.append("k", ["W"]), store)
        wait_for(lambda: someone_at_the_gate(directory))
        process.send_signal(signal.SIGKILL)
        thread.join()
    assert out == [0] and stored(store) == ["W"]  # its open transaction wrote nothing
    store.close()


# == no turns: writers queue as before ================================================================


def test_without_fcntl_there_are_no_turns_and_writes_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(write_turns, "fcntl", None)  # as on Windows
    turns = WriteTurns(str(tmp_path / "t"))
    assert turns.take(time.monotonic()) is True and not turns.held
    turns.give()
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    assert turns_for(cache) is None
    store = DiskcacheStore(cache)
    assert store.append("k", ["a"]) == 0 and store.commit([Append("k", (("b", None),))]) == [1]
    assert not (tmp_path / "c" / TURN_FILE).exists() and not (tmp_path / "c" / GATE_FILE).exists()
    store.close()
    cache.close()


def test_turn_files_that_cannot_be_opened_mean_no_turns(tmp_path: Path) -> None:
    turns = WriteTurns(str(tmp_path / "missing"))  # no such directory
    assert turns.take(time.monotonic()) is True and not turns.held
    turns.give()
    assert turns.take(time.monotonic()) is True  # tried again, still none: no error
    turns.give()


# == files ============================================================================================


def test_diskcache_check_accepts_the_turn_files(tmp_path: Path) -> None:
    cache = diskcache.Cache(str(tmp_path / "c"), eviction_policy="none")
    store = DiskcacheStore(cache)
    store.append("k", ["a"])
    assert (tmp_path / "c" / TURN_FILE).exists() and (tmp_path / "c" / GATE_FILE).exists()
    assert cache.check() == [] and cache.check(fix=True) == []  # no unknown file, none deleted
    assert (tmp_path / "c" / TURN_FILE).exists()
    store.close()
    cache.close()


def test_release_thread_closes_the_threads_turn_files(tmp_path: Path) -> None:
    store = DiskcacheStore(tmp_path / "c")
    writes = StoreThread("writes", finish=store.release_thread)
    try:
        import anyio

        anyio.run(writes.run, store.append, "k", ["a"])
    finally:
        writes.close()
    store.append("k", ["b"])  # this thread's own files
    assert open_files_under(tmp_path / "c", "-turn") == [str(tmp_path / "c" / TURN_FILE)]
    store.close()
    assert open_files_under(tmp_path / "c", "-turn") == [] and open_files_under(tmp_path / "c", "-gate") == []
