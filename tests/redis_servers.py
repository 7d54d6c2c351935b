"""Real ``redis-server`` processes for the tests (a plain module, imported by tests and conftest).

The test suite never uses the system redis service: every server here is a ``redis-server``
process this module starts itself, with a config file it writes into a directory the caller
owns (``tmp_path`` or a ``tmp_path_factory`` directory), and stops again.

- :class:`RedisServer` is one server, on a free TCP port of 127.0.0.1 (``bind 127.0.0.1``,
  ``protected-mode yes``) or on a unix socket in its directory (``port 0``). Options of the
  config file are keyword arguments (``appendonly=True``, ``maxmemory="2mb"``,
  ``maxmemory_policy="noeviction"``, ``requirepass="secret"``). ``start()`` returns once the
  server answers PING; ``stop()`` shuts it down (SIGTERM, so an append-only file is complete);
  ``kill()`` sends SIGKILL; ``restart()`` starts it again on the same port, socket and data
  directory, which is how a fault test restarts a server mid-run; ``pause()`` / ``resume()``
  send SIGSTOP / SIGCONT (a server that hangs).
- :class:`RedisCluster` is a Redis Cluster of three masters (no replicas), each a
  :class:`RedisServer` with ``cluster-enabled yes`` in its own directory, joined with
  ``redis-cli --cluster create``; ``start()`` returns once ``CLUSTER INFO`` says
  ``cluster_state:ok`` on every node.

What is guaranteed about clean-up: ``stop()`` / leaving the ``with`` block stops every process
the object started; :func:`stop_all` stops every process this module started and is still
running (the test session calls it at its end); an ``atexit`` hook does the same if the
interpreter exits without that; and on Linux each server started from the main thread gets
SIGKILL from the kernel if the process that started it dies (even by SIGKILL), so no server
outlives pytest.

Waits are bounded (``startup_timeout_s``); a server that does not come up raises
:class:`RedisServerError` with the tail of its log. A free port is found by binding a socket to
port 0; if another process takes it before the server binds, the server is started again on
another port (a few times) before giving up.

Nothing here needs redis-py except :attr:`RedisCluster.startup_nodes`, which builds redis-py's
``ClusterNode`` objects.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cachesaver.errors import CacheSaverError

__all__ = [
    "INSTALL_HINT",
    "RedisCluster",
    "RedisNotInstalledError",
    "RedisServer",
    "RedisServerError",
    "find_executable",
    "free_port",
    "live_pids",
    "stop_all",
]

INSTALL_HINT = (
    "the Redis tests start their own redis-server processes; install Debian's package with "
    "`apt-get install -y redis-server` (as root; `.ci/run` does this when it is missing), "
    "or put redis-server and redis-cli on PATH"
)

# Options the helper writes itself; passing them as keyword arguments is refused.
_MANAGED = frozenset(
    {"port", "bind", "unixsocket", "unixsocketperm", "dir", "logfile", "daemonize", "pidfile",
     "include", "cluster-port", "supervised"}
)
# A unix socket path must fit in sockaddr_un.sun_path (108 bytes on Linux, with the NUL).
_MAX_SOCKET_PATH = 100
_PORT_ATTEMPTS = 5
_LOG_TAIL_LINES = 20


class RedisServerError(CacheSaverError):
    """Raised when a test's redis-server (or cluster) cannot be configured, started or joined."""


class RedisNotInstalledError(RedisServerError):
    """Raised when ``redis-server`` or ``redis-cli`` is not on PATH."""


def find_executable(name: str) -> str:
    """The path of ``name`` (``redis-server`` or ``redis-cli``) on PATH, or RedisNotInstalledError."""
    path = shutil.which(name)
    if path is None:
        raise RedisNotInstalledError(f"{name} is not on PATH: {INSTALL_HINT}")
    return path


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 <= 65535 and _port_is_free(port + 10000):
            return port
    raise RedisServerError("found no free port P with P + 10000 free on 127.0.0.1 for a cluster node")


# ---- every process this module started, for stop_all() and the atexit hook ----

_live_lock = threading.Lock()
_live: dict[int, subprocess.Popen[bytes]] = {}
# The process that started them: a forked child (which inherits this registry) must not stop them.
_owner_pid = os.getpid()


def live_pids() -> list[int]:
    """Process ids of the redis-server processes this module started that are still running."""
    with _live_lock:
        return [pid for pid, process in _live.items() if process.poll() is None]


def _register(process: subprocess.Popen[bytes]) -> None:
    global _owner_pid
    with _live_lock:
        if os.getpid() != _owner_pid:  # a forked child starting servers of its own
            _live.clear()
            _owner_pid = os.getpid()
        _live[process.pid] = process


def _forget(process: subprocess.Popen[bytes]) -> None:
    with _live_lock:
        _live.pop(process.pid, None)


def _terminate(process: subprocess.Popen[bytes], *, graceful: bool, timeout_s: float = 10.0) -> None:
    """Stop ``process`` (SIGTERM then, after ``timeout_s``, SIGKILL; or SIGKILL at once) and reap it."""
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        except ProcessLookupError:
            pass
    _forget(process)


def stop_all() -> None:
    """Kill every redis-server this process started that is still running (a last resort)."""
    with _live_lock:
        processes = list(_live.values()) if os.getpid() == _owner_pid else []
    for process in processes:
        _terminate(process, graceful=False)


atexit.register(stop_all)


def _die_with_parent() -> Any:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when the starting thread's process dies.

    Only used from the main thread: the kernel sends the signal when the *thread* that forked
    exits, and a worker thread may exit long before the test session does.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    PR_SET_PDEATHSIG = 1

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


# ---- a minimal RESP client, so waiting for a server needs no redis-py ----


def _command(address: str | tuple[str, int], *args: str, password: str | None = None, timeout_s: float = 1.0) -> Any:
    """Send one command (after AUTH when ``password`` is set); return the reply, raising OSError
    when the server cannot be reached and RedisServerError carrying an error reply."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        conn.connect(address)
        commands = ([("AUTH", password)] if password is not None else []) + [args]
        payload = b"".join(_encode(command) for command in commands)
        conn.sendall(payload)
        with conn.makefile("rb") as reader:
            replies = [_read_reply(reader) for _ in commands]
    for reply in replies:
        if isinstance(reply, RedisServerError):
            raise reply
    return replies[-1]


def _encode(args: tuple[str, ...]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(reader: Any) -> Any:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("the server closed the connection")
    kind, body = line[:1], line[1:-2].decode()
    if kind == b"+":
        return body
    if kind == b"-":
        return RedisServerError(body)
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else reader.read(size + 2)[:-2].decode()
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_read_reply(reader) for _ in range(size)]
    raise ConnectionError(f"unexpected reply {line!r}")


def _config_value(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "no"
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class RedisServer:
    """One redis-server process of the test suite's own, with its config and data in ``directory``.

    ``unix_socket=True`` listens only on ``<directory>/redis.sock`` (``port 0``; if that path is
    too long for a unix socket, a short private directory under the system temp directory holds
    the socket instead, removed at ``stop()``); otherwise the server listens on a free TCP port
    of 127.0.0.1 (``port=`` picks one; then a port already taken is an error, not a retry).
    Every other keyword argument is a config directive, underscores for dashes:
    ``appendonly=True``, ``maxmemory="2mb"``, ``maxmemory_policy="noeviction"``,
    ``requirepass="secret"``. RDB snapshots are off (``save ""``) unless ``save=`` says otherwise,
    and the server ticks 100 times a second (``hz 100``, not 10), so it shuts down within about
    10 ms of SIGTERM instead of 100.

    Use it as a context manager (``with RedisServer(tmp_path, unix_socket=True) as server:``,
    then ``redis.Redis.from_url(server.url)``) or call ``start()`` and ``close()``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        unix_socket: bool = False,
        port: int | None = None,
        startup_timeout_s: float = 10.0,
        executable: str | None = None,
        **options: Any,
    ) -> None:
        self.directory = Path(directory)
        self.unix_socket = unix_socket
        self.startup_timeout_s = startup_timeout_s
        self._executable = executable
        self.options: dict[str, Any] = {"save": "", "hz": 100}
        for name, value in options.items():
            directive = name.replace("_", "-")
            if directive in _MANAGED:
                raise RedisServerError(
                    f"{directive} is set by RedisServer itself; use unix_socket= or port= instead"
                    if directive in ("port", "unixsocket")
                    else f"{directive} is set by RedisServer itself and cannot be passed as an option"
                )
            self.options[directive] = value
        password = self.options.get("requirepass")
        self.password: str | None = None if password is None else str(password)
        self.port: int | None = None if unix_socket else port
        self.socket_path: Path | None = None
        self._socket_dir: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- where it listens --

    @property
    def config_path(self) -> Path:
        return self.directory / "redis.conf"

    @property
    def log_path(self) -> Path:
        """The server's log (its stdout and stderr), kept across restarts."""
        return self.directory / "redis.log"

    @property
    def address(self) -> str | tuple[str, int]:
        """The unix socket path, or ``("127.0.0.1", port)``."""
        if self.unix_socket:
            if self.socket_path is None:
                raise RedisServerError("the server was never started, so it has no socket yet; call start()")
            return str(self.socket_path)
        if self.port is None:
            raise RedisServerError("the server was never started, so it has no port yet; call start()")
        return ("127.0.0.1", self.port)

    def url_with(self, *, password: str | None, db: int = 0) -> str:
        """The server's URL as redis-py's ``from_url`` reads it, with ``password`` in it (or none)."""
        auth = "" if password is None else f":{quote(password, safe='')}@"
        if self.unix_socket:
            query = "" if db == 0 else f"?db={db}"
            return f"unix://{auth}{self.address}{query}"
        host, port = self.address  # type: ignore[misc]
        return f"redis://{auth}{host}:{port}/{db}"

    @property
    def url(self) -> str:
        """``unix:///.../redis.sock`` or ``redis://127.0.0.1:PORT/0``, with the password if one is required."""
        return self.url_with(password=self.password)

    @property
    def pid(self) -> int | None:
        """The running process's id, or None when it is not running."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- life cycle --

    def start(self) -> RedisServer:
        """Start the server and return once it answers PING; starting a running server is a no-op.

        A first start picks the port (or socket path); later starts reuse it, and the data in
        ``directory`` (an append-only file with ``appendonly=True``) is loaded again.
        """
        if self.running:
            return self
        executable = self._executable or find_executable("redis-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.unix_socket:
            self._start_on_socket(executable)
        elif self.port is not None:
            self._start_once(executable)
        else:
            self._start_on_free_port(executable)
        return self

    def _start_on_socket(self, executable: str) -> None:
        if self.socket_path is None:
            path = self.directory.resolve() / "redis.sock"
            if len(str(path)) > _MAX_SOCKET_PATH:
                self._socket_dir = tempfile.mkdtemp(prefix="redis-")
                path = Path(self._socket_dir) / "redis.sock"
            self.socket_path = path
        self._start_once(executable)

    def _start_on_free_port(self, executable: str) -> None:
        for attempt in range(_PORT_ATTEMPTS):
            self.port = self._pick_port()
            try:
                self._start_once(executable, port_may_be_taken=True)
                return
            except _PortTaken:
                if attempt == _PORT_ATTEMPTS - 1:
                    raise RedisServerError(
                        f"redis-server found its port taken {_PORT_ATTEMPTS} times in a row; "
                        f"last log lines:\n{self.log_tail()}"
                    ) from None

    def _pick_port(self) -> int:
        return free_port()

    def _config_lines(self) -> list[str]:
        lines = [
            "daemonize no",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"dir {_config_value(self.directory.resolve())}",
            'logfile ""',
        ]
        if self.unix_socket:
            lines += ["port 0", f"unixsocket {_config_value(self.socket_path)}", "unixsocketperm 700"]
        else:
            lines.append(f"port {self.port}")
        lines += [f"{name} {_config_value(value)}" for name, value in self.options.items()]
        return lines

    def _start_once(self, executable: str, *, port_may_be_taken: bool = False) -> None:
        self.config_path.write_text("\n".join(self._config_lines()) + "\n")
        if self.socket_path is not None and self.socket_path.exists():
            self.socket_path.unlink()  # a socket file left by a killed server
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(
                [executable, str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        _register(process)
        self._process = process
        try:
            self._wait_until_ready(process, port_may_be_taken=port_may_be_taken)
        except BaseException:
            _terminate(process, graceful=False)
            self._process = None
            raise

    def _wait_until_ready(self, process: subprocess.Popen[bytes], *, port_may_be_taken: bool) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last_error = "no answer yet"
        while True:
            if process.poll() is not None:
                tail = self.log_tail()
                if port_may_be_taken and "Address already in use" in tail:
                    raise _PortTaken
                raise RedisServerError(
                    f"redis-server exited with status {process.returncode} while starting "
                    f"(config {self.config_path}); last log lines:\n{tail}"
                )
            try:
                if _command(self.address, "PING", password=self.password, timeout_s=0.2) == "PONG":
                    # The answer must come from this process, not from another server that
                    # holds the port this one failed to bind.
                    info = _command(self.address, "INFO", "server", password=self.password)
                    if f"process_id:{process.pid}\r" in info:
                        return
                    last_error = "another server answers on this address"
            except (OSError, ConnectionError) as exc:
                last_error = repr(exc)
            except RedisServerError as exc:  # LOADING while an append-only file is read, ...
                last_error = str(exc)
            if time.monotonic() > deadline:
                raise RedisServerError(
                    f"redis-server did not answer PING within {self.startup_timeout_s} s "
                    f"(last: {last_error}); last log lines:\n{self.log_tail()}"
                )
            time.sleep(0.01)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log ("" when there is none)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Shut the server down (SIGTERM: an append-only file is flushed) and wait for it to exit."""
        self._end(graceful=True)

    def kill(self) -> None:
        """SIGKILL the server and wait for it to die: a crash, for fault tests."""
        self._end(graceful=False)

    def _end(self, *, graceful: bool) -> None:
        if self._process is not None:
            if graceful and self._process.poll() is None:
                self._process.send_signal(signal.SIGCONT)  # a paused server must run to shut down
            _terminate(self._process, graceful=graceful)
            self._process = None

    def pause(self) -> None:
        """SIGSTOP the server: it keeps its connections but answers nothing (a hung server)."""
        if self._process is None:
            raise RedisServerError("the server is not running, so it cannot be paused")
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused server: it answers again."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self, *, hard: bool = False) -> RedisServer:
        """Stop (``hard=True``: SIGKILL) and start again on the same port or socket, with the same data."""
        self._end(graceful=not hard)
        return self.start()

    def close(self) -> None:
        """Stop the server and remove the private socket directory, if one was made."""
        self.stop()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
            self.socket_path = None

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.socket_path if self.unix_socket else self.port
        return f"<RedisServer {where} {'running' if self.running else 'stopped'}>"


class _PortTaken(Exception):
    """Internal: the server exited because another process holds its port."""


class _ClusterNode(RedisServer):
    def _pick_port(self) -> int:
        return _free_cluster_port()


class RedisCluster:
    """A Redis Cluster of ``masters`` masters (no replicas) on 127.0.0.1, one directory each.

    Node i lives in ``<directory>/node-i`` on a free port (its cluster bus on port + 10000).
    After ``start()``, all 16384 slots are assigned and every node reports ``cluster_state:ok``.

    How clients reach it: redis-py's ``redis.cluster.RedisCluster(startup_nodes=cluster.startup_nodes)``
    or ``redis.cluster.RedisCluster.from_url(cluster.url)`` (``url`` is the first node,
    ``redis://127.0.0.1:P1``; the client discovers the rest). :attr:`cluster_url` is the same
    address as ``redis+cluster://127.0.0.1:P1``, the form proposed for cachesaver's Redis engine
    to tell a cluster from a single server by URL.

    Tests sharing one cluster (the session-scoped fixture) must keep to their own keys: a
    prefix unique to the test, never FLUSHALL.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        masters: int = 3,
        startup_timeout_s: float = 30.0,
        **options: Any,
    ) -> None:
        if masters < 3:
            raise RedisServerError(f"redis-cli --cluster create needs at least 3 masters, not {masters}")
        self.directory = Path(directory)
        self.startup_timeout_s = startup_timeout_s
        self.options = options
        self.password: str | None = None if options.get("requirepass") is None else str(options["requirepass"])
        self.nodes = [
            _ClusterNode(
                self.directory / f"node-{i}",
                startup_timeout_s=startup_timeout_s,
                cluster_enabled=True,
                cluster_config_file="nodes.conf",
                cluster_node_timeout=5000,
                **({"masterauth": self.password} if self.password is not None else {}),
                **options,
            )
            for i in range(masters)
        ]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``("127.0.0.1", port)`` of every node."""
        return [node.address for node in self.nodes]  # type: ignore[misc]

    @property
    def startup_nodes(self) -> list[Any]:
        """redis-py ``ClusterNode`` objects for every node (needs redis-py)."""
        from redis.cluster import ClusterNode

        return [ClusterNode(host, port) for host, port in self.addresses]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:P1``: the first node, as redis-py's ``RedisCluster.from_url`` reads it."""
        return self.nodes[0].url_with(password=self.password).rsplit("/", 1)[0]

    @property
    def cluster_url(self) -> str:
        """``redis+cluster://127.0.0.1:P1``: the proposed cachesaver form of :attr:`url` for a cluster."""
        return "redis+cluster://" + self.url.removeprefix("redis://")

    def start(self) -> RedisCluster:
        """Start every node, join them into one cluster and wait for ``cluster_state:ok`` everywhere."""
        cli = find_executable("redis-cli")
        for node in self.nodes:
            node.start()
        if not self._created():
            self._create(cli)
        self._wait_until_ok()
        return self

    def _created(self) -> bool:
        info = _command(self.addresses[0], "CLUSTER", "INFO", password=self.password)
        return "cluster_slots_assigned:16384" in info

    def _create(self, cli: str) -> None:
        command = [cli, "--cluster", "create", *(f"{h}:{p}" for h, p in self.addresses),
                   "--cluster-replicas", "0", "--cluster-yes"]
        if self.password is not None:
            command[1:1] = ["-a", self.password, "--no-auth-warning"]
        try:
            done = subprocess.run(
                command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=self.startup_timeout_s,
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisServerError(
                f"redis-cli --cluster create did not finish within {self.startup_timeout_s} s; "
                f"output:\n{exc.stdout or ''}{exc.stderr or ''}"
            ) from None
        if done.returncode != 0:
            raise RedisServerError(
                f"redis-cli --cluster create failed with status {done.returncode}; "
                f"output:\n{done.stdout}{done.stderr}"
            )

    def _wait_until_ok(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        waiting = list(self.nodes)
        while waiting:
            node = waiting[0]
            try:
                info = _command(node.address, "CLUSTER", "INFO", password=self.password)
            except (OSError, ConnectionError, RedisServerError) as exc:
                info = repr(exc)
            if "cluster_state:ok" in info:
                waiting.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RedisServerError(
                    f"the cluster node on port {node.port} did not reach cluster_state:ok within "
                    f"{self.startup_timeout_s} s; CLUSTER INFO said:\n{info}\nlast log lines:\n{node.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop every node (each is stopped even if stopping another fails)."""
        errors: list[BaseException] = []
        for node in self.nodes:
            try:
                node.close()
            except BaseException as exc:  # keep stopping the others, report afterwards
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> RedisCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RedisCluster ports={[node.port for node in self.nodes]}>"
