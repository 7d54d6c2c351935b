"""Fair turns at a diskcache directory's write lock, for the threads and processes of one host.

SQLite's write lock is not handed over: a writer that finds it taken sleeps in SQLite's busy
handler, in steps that grow to 100 ms, and tries again. A process that commits often (a
shared run's worker: every lookup round, lease step and commit is a write) releases the lock
and takes it again within microseconds, so a waiter that sleeps through the free moments can
wait for seconds (measured: 1.4 s, while 44 other transactions were served, with 4 processes
in one shared run). :class:`WriteTurns` puts a queue in front of that lock, made of two
``flock`` locks on empty files next to the database (one open file of each per thread, so
the threads of one process queue too):

* the **turn** (:data:`TURN_FILE`): held for the whole transaction, before SQLite's lock;
* the **gate** (:data:`GATE_FILE`): held by the one writer *next in line*, from when it
  starts waiting until it has the turn. A writer takes the gate, then the turn, then lets
  the gate go.

So when the turn is given back while someone waits, the writer at the gate gets it, even if
the one who gave it back wants it again at once (that one must pass the gate first). Writers
block in the kernel, which wakes them the moment a lock is let go, instead of polling. Those
waiting at the gate are woken together and one of them goes next: no order among them is
promised, but none is favoured (not the last holder, not the holder's process). SQLite's
lock still decides who writes; turns only set the order. A writer that takes no turn (an
older cachesaver, another program on the same ``diskcache.Cache``) stays safe and queues as
before, in SQLite's busy handler.

Guarantees:

* **Bounded.** :meth:`WriteTurns.take` returns by its deadline: True with the turn held, False
  once the deadline has passed (the caller raises
  :class:`~cachesaver.errors.StoreLockedError`, as for SQLite's lock). A deadline already
  passed (``wait_s=0``) costs non-blocking attempts only; a free turn costs three system
  calls; a wait shorter than 50 ms polls every 0.5 ms. A longer wait blocks in a helper
  thread: when the caller gives up, the helper stays in line, gives the turn back at once
  when it gets it, and the next take of that thread waits on the same helper (at most one
  helper per thread; that take waits at least about a millisecond, so a helper that has the
  turn in hand can pass it over).
* **Crash-safe.** The kernel drops a process's ``flock`` locks when it dies (kill -9
  included), so a killed writer's turn, or its place at the gate, passes on.
* **Nested takes** of one thread count: only the outermost takes and gives back the turn.
* **No turns, as before,** where ``fcntl`` does not exist (Windows) or the files cannot be
  opened or locked (a read-only directory): ``take`` returns True without a turn, and
  writers queue in SQLite's busy handler as they always did. A process started by ``fork``
  opens files of its own (it shares none of its parent's turns).

The files are empty and never deleted; diskcache's ``Cache.check`` leaves them alone (it
skips names containing ``cache.db``, as it does SQLite's ``-wal`` and ``-shm`` files).

>>> import tempfile, time
>>> turns = WriteTurns(tempfile.mkdtemp())
>>> turns.take(time.monotonic() + 1), turns.held
(True, True)
>>> turns.give(); turns.held
False
>>> turns.close_thread()
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no turns, writers queue as before
    fcntl = None  # type: ignore[assignment]

__all__ = ["GATE_FILE", "TURN_FILE", "WriteTurns", "turns_for"]

TURN_FILE = "cache.db-cachesaver-turn"
"""The turn's file in a cache directory (held for a transaction)."""
GATE_FILE = "cache.db-cachesaver-gate"
"""The gate's file in a cache directory (held by the writer next in line)."""

_POLL_S = 0.05  # a wait shorter than this polls (every 0.5 ms) instead of starting a helper

_WAITING, _GRANTED, _ABANDONED, _DONE = range(4)


def _try(fd: int) -> bool | None:
    """One non-blocking ``flock``: True taken, False taken by another, None refused."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _unlock(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass


def _close(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)  # lets go of its locks too
            except OSError:
                pass


class _Helper:
    """A thread blocked in ``flock`` (gate, then turn) on its own two files for the thread
    that started it."""

    __slots__ = ("gate", "turn", "at_gate", "state", "signal")

    def __init__(self, gate: int, turn: int, at_gate: bool) -> None:
        self.gate, self.turn, self.at_gate = gate, turn, at_gate
        self.state = _WAITING
        self.signal = threading.Lock()
        self.signal.acquire()  # released when the turn is granted (or the wait failed)


class _Seat:
    """One thread's place in the queue: its two open files, nesting depth and helper."""

    __slots__ = ("gate", "turn", "pid", "depth", "held", "helper")

    def __init__(self) -> None:
        self.gate: int | None = None
        self.turn: int | None = None
        self.pid = os.getpid()
        self.depth = 0
        self.held = False
        self.helper: _Helper | None = None

    def __del__(self) -> None:  # the thread ended without close_thread: do not leak the files
        if self.pid == os.getpid():
            _close(self.gate, self.turn)


class WriteTurns:
    """Turns at the write lock of the cache directory ``directory``; see the module
    docstring. One object may serve many threads (each has its own seat)."""

    available = fcntl is not None
    """False where ``fcntl`` does not exist (Windows): every take returns True at once."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._paths = (os.path.join(directory, GATE_FILE), os.path.join(directory, TURN_FILE))
        self._local = threading.local()
        self._mutex = threading.Lock()  # guards the helpers' states
        self.helpers_started = 0
        """Helper threads started so far (a wait that blocked), for tests."""

    def _seat(self) -> _Seat:
        seat: _Seat | None = getattr(self._local, "seat", None)
        if seat is None or seat.pid != os.getpid():  # new thread, or a child after fork
            seat = self._local.seat = _Seat()
        return seat

    def _open(self, seat: _Seat) -> tuple[int, int] | None:
        """The seat's two files (gate, turn), opened if need be; None when they cannot be."""
        if seat.gate is None or seat.turn is None:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            try:
                gate = os.open(self._paths[0], flags, 0o666)
            except OSError:
                return None
            try:
                turn = os.open(self._paths[1], flags, 0o666)
            except OSError:
                _close(gate)
                return None
            _close(seat.gate, seat.turn)
            seat.gate, seat.turn = gate, turn
        return seat.gate, seat.turn

    @property
    def held(self) -> bool:
        """Whether the calling thread holds its turn."""
        seat: _Seat | None = getattr(self._local, "seat", None)
        return seat is not None and seat.held and seat.pid == os.getpid()

    def take(self, deadline: float) -> bool:
        """Take the calling thread's turn by ``deadline`` (``time.monotonic()``); False when it
        passed first. True without a turn where turns cannot be had (see the module doc)."""
        seat = self._seat()
        if seat.depth:
            seat.depth += 1
            return True
        if fcntl is None:
            seat.depth = 1
            return True
        if seat.helper is not None:
            rejoined = self._rejoin(seat, deadline)
            if rejoined is not None:
                return rejoined
        files = self._open(seat)
        if files is None:
            return self._without(seat)  # no files: writers queue as before
        gate, turn = files
        at_gate = _try(gate)
        if at_gate:
            got = _try(turn)
            if got is None:
                _unlock(gate)
                return self._without(seat)
            if got:
                _unlock(gate)
                return self._granted(seat)
        elif at_gate is None:
            return self._without(seat)
        # Someone holds the turn (and we are next, at_gate), or another is next.
        left = deadline - time.monotonic()
        if left < _POLL_S:
            return self._poll(seat, gate, turn, bool(at_gate), deadline)
        helper = _Helper(gate, turn, bool(at_gate))
        seat.gate = seat.turn = None  # the helper owns the files until it hands the turn over
        seat.helper = helper
        self.helpers_started += 1
        threading.Thread(target=self._block, args=(helper,), name="cachesaver-write-turn", daemon=True).start()
        return self._await(seat, helper, deadline)

    @staticmethod
    def _granted(seat: _Seat) -> bool:
        seat.depth, seat.held = 1, True
        return True

    @staticmethod
    def _without(seat: _Seat) -> bool:
        """No turn to be had (the files cannot be opened or refuse locks): go ahead without
        one, as before."""
        seat.depth = 1
        return True

    def _poll(self, seat: _Seat, gate: int, turn: int, at_gate: bool, deadline: float) -> bool:
        """Wait for the turn until the (near) ``deadline`` with non-blocking attempts."""
        while True:
            if not at_gate:
                tried = _try(gate)
                if tried is None:
                    return self._without(seat)
                at_gate = tried
            if at_gate:
                got = _try(turn)
                if got is None or got:
                    _unlock(gate)
                    return self._granted(seat) if got else self._without(seat)
            left = deadline - time.monotonic()
            if left <= 0:
                if at_gate:
                    _unlock(gate)
                return False
            time.sleep(min(0.0005, left))

    def _block(self, helper: _Helper) -> None:
        """The helper thread: wait at the gate, then for the turn; hand the turn over, or give
        it back if nobody wants it any more."""
        granted = False
        try:
            if not helper.at_gate:
                fcntl.flock(helper.gate, fcntl.LOCK_EX)
            fcntl.flock(helper.turn, fcntl.LOCK_EX)
            granted = True
        except OSError:
            pass
        _unlock(helper.gate)
        with self._mutex:
            if helper.state == _WAITING:
                helper.state = _GRANTED if granted else _DONE
                helper.signal.release()
                if granted:
                    return  # the waiting thread owns the files (and the turn) now
            else:
                helper.state = _DONE
        _close(helper.gate, helper.turn)  # gives the turn back, if it was granted

    def _await(self, seat: _Seat, helper: _Helper, deadline: float) -> bool:
        # At least about a millisecond: a helper holding the turn needs a moment to pass it on.
        helper.signal.acquire(timeout=max(deadline - time.monotonic(), 0.001))
        with self._mutex:
            if helper.state == _GRANTED:
                _close(seat.gate, seat.turn)
                seat.gate, seat.turn, seat.helper = helper.gate, helper.turn, None
                return self._granted(seat)
            if helper.state == _DONE:  # the wait failed: the files refuse locks
                seat.helper = None
                return self._without(seat)
            helper.state = _ABANDONED
            return False

    def _rejoin(self, seat: _Seat, deadline: float) -> bool | None:
        """Wait again on the helper an earlier take gave up on; None once it has ended."""
        helper = seat.helper
        if helper is None:
            return None
        with self._mutex:
            if helper.state == _DONE:
                seat.helper = None
                return None
            helper.state = _WAITING
        return self._await(seat, helper, deadline)

    def give(self) -> None:
        """Give back the calling thread's turn (the outermost of nested takes gives it)."""
        seat = self._seat()
        if seat.depth == 0:
            return
        seat.depth -= 1
        if seat.depth or not seat.held:
            return
        seat.held = False
        turn = seat.turn
        if turn is None:
            return
        try:
            fcntl.flock(turn, fcntl.LOCK_UN)
        except OSError:  # closing the file gives the turn back for sure
            seat.turn = None
            _close(turn)

    def close_thread(self) -> None:
        """Close the calling thread's files (they reopen on its next take); a turn held, or
        a helper still waiting, keep theirs."""
        seat: _Seat | None = getattr(self._local, "seat", None)
        if seat is None or seat.pid != os.getpid() or seat.depth:
            return
        gate, turn = seat.gate, seat.turn
        seat.gate = seat.turn = None
        _close(gate, turn)


def turns_for(cache: Any) -> WriteTurns | None:
    """The turns of a diskcache ``cache``'s directory, or None where there are none to take
    (no ``fcntl``, or a cache without a directory)."""
    directory = getattr(cache, "directory", None)
    if fcntl is None or not isinstance(directory, str):
        return None
    return WriteTurns(directory)
