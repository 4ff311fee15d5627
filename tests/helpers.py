"""Helpers shared by the tests: ports, waiting for servers, child processes, HTTP clients.

Plain functions and classes (no pytest magic) so they can also be used from a
notebook or a benchmark; the fixtures in ``conftest.py`` are thin wrappers.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from generic_session import RedisStore

#: The repository root: where server.py, client.py and generic_session.py live.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

LOOPBACK = "127.0.0.1"

#: Interval between two polls; short so waiting costs little, long enough
#: not to spin.
POLL_INTERVAL = 0.05


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on *host* right now.

    The OS picks it (bind to port 0). Another process could take it before the
    caller binds it, a small race the callers accept (or retry on).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """Tell whether *port* can be bound on *host* right now (same race as ``free_port``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


@contextmanager
def closed_port(host: str = LOOPBACK) -> Iterator[int]:
    """Yield a port where connections are refused, and stay refused until the block ends.

    The port is bound but not listening: connecting to it is refused at once,
    and no other process can take it meanwhile (unlike a port that is merely
    free, which a parallel test or server may start listening on).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        yield port


class SilentServer:
    """A loopback TCP server that accepts connections and never answers: a hung backend.

    Use it as a context manager; it yields itself, with ``.host``, ``.port`` and
    ``.accepted`` (how many connections it took).  Its thread polls a stop flag,
    so it ends within ``POLL_INTERVAL`` of the block's end; every socket is closed.
    """

    host = LOOPBACK

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((self.host, 0))
        self._listener.listen()
        self._listener.settimeout(POLL_INTERVAL)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-server", daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._connections.append(connection)  # kept open, never read, never answered
            self.accepted += 1

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for connection in self._connections:
            connection.close()


def http_session() -> requests.Session:
    """A ``requests.Session`` for our loopback servers that ignores the environment.

    ``trust_env = False``: an ``HTTP_PROXY`` (or ``.netrc``) of the machine running
    the tests must not reroute or alter requests to 127.0.0.1.
    """
    http = requests.Session()
    http.trust_env = False
    return http


def port_is_open(host: str, port: int) -> bool:
    """Tell whether something accepts TCP connections on *host*:*port*."""
    try:
        with socket.create_connection((host, port), timeout=POLL_INTERVAL * 4):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 10.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll until *host*:*port* accepts a connection.

    Raises ``TimeoutError`` after *timeout* seconds, or ``RuntimeError`` at
    once when the optional *proc* (the process expected to listen) has exited,
    so a crashing server fails fast instead of after the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_is_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before listening")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing answered on {host}:{port} within {timeout} s")
        time.sleep(POLL_INTERVAL)


def log_tail(path: Path, lines: int = 30) -> str:
    """Return the last *lines* lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Stop *proc* with SIGTERM (SIGKILL if it lingers) and return its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# --------------------------------------------------------------------------
# an ASGI app under a real uvicorn


class UvicornServer:
    """An ASGI app served by a real uvicorn, in a thread of this process, on a free loopback port.

    The listening socket is bound here, on port 0, and handed to uvicorn: no port is
    picked in advance, so none can be taken by another process before it is bound.
    In this process (not a child) so that a test shares stores, counters and
    ``threading.Event`` s with the app it serves.  Use it as a context manager, or
    ``start()`` / ``stop()``; it has ``.host``, ``.port`` and ``.url``.

    ``start()`` returns once uvicorn has run the app's lifespan startup and listens:
    its ``startup`` sets an event (waited on in slices, checking that the thread is
    alive), so nothing sleeps.  ``stop()`` asks uvicorn to exit, which runs the
    lifespan shutdown, and joins its thread.  *config* goes to ``uvicorn.Config``.
    """

    host = LOOPBACK

    def __init__(self, app: Any, *, start_timeout: float = 10.0, **config: Any) -> None:
        import uvicorn

        self.start_timeout = start_timeout
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((self.host, 0))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        ready = self._ready = threading.Event()

        class Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets)
                ready.set()

        settings: dict[str, Any] = {
            "log_config": None,  # leave logging alone: pytest captures uvicorn's loggers
            "log_level": "warning",
            "access_log": False,
            "loop": "asyncio",
            "http": "h11",
            "ws": "websockets-sansio",
            "timeout_graceful_shutdown": 5,
            **config,
        }
        self.server = Server(uvicorn.Config(app, **settings))
        #: What ended uvicorn's thread abnormally (SystemExit for a failed lifespan startup).
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}",
                                        daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._socket])
        except BaseException as error:
            self.errors.append(error)

    def start(self) -> UvicornServer:
        """Start serving; return once the app's lifespan has started and uvicorn listens."""
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._ready.wait(POLL_INTERVAL):
            if not self._thread.is_alive():
                self._socket.close()
                raise RuntimeError(f"uvicorn stopped before serving: {self.errors!r}")
            if time.monotonic() >= deadline:
                self.stop()
                raise TimeoutError(f"uvicorn did not start within {self.start_timeout} s")
        return self

    def stop(self) -> None:
        """Stop serving (the lifespan shutdown runs) and wait for uvicorn's thread to end."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()
        if self._thread.is_alive():
            raise RuntimeError(f"uvicorn on port {self.port} did not stop within 10 s")

    def __enter__(self) -> UvicornServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# redis-server


def redis_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """Tell whether a Redis server on *host*:*port* answers ``PING`` with ``PONG``.

    Speaks the protocol directly so it does not depend on the redis package.
    (While loading, Redis answers ``-LOADING``, which counts as not ready.)
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throw-away ``redis-server`` on a loopback port, with persistence off.

    ``start()`` and ``stop()`` can be called repeatedly: after the first start
    the port is kept, so a test can stop Redis (to see how a store copes with
    an outage) and start it again at the same address. Data does not survive
    a stop, since nothing is saved to disk.

    *extra_args* are appended to the command line (after the defaults, so they
    can override them), e.g. ``["--cluster-enabled", "yes"]``.
    """

    host = LOOPBACK

    def __init__(
        self,
        executable: str,
        workdir: Path,
        start_timeout: float = 10.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.executable = executable
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)
        self.port = 0  # chosen by the first start()
        self.log_path = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's address as ``redis://127.0.0.1:PORT``."""
        return f"redis://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the redis-server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, port: int) -> bool:
        """Start redis-server on *port*; True once it answers PING, False if it died."""
        command = [
            self.executable,
            "--port", str(port),
            "--bind", self.host,
            "--save", "",  # no RDB snapshots
            "--appendonly", "no",  # no AOF
            "--daemonize", "no",  # stay our child so we can stop it
            "--dir", str(self.workdir),
            "--loglevel", "warning",
            *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.start_timeout
        while not redis_ping(self.host, port):
            if self.proc.poll() is not None:
                return False  # most likely the port was taken meanwhile
            if time.monotonic() >= deadline:
                stop_process(self.proc)
                raise TimeoutError(
                    f"redis-server did not answer PING on {self.host}:{port} within "
                    f"{self.start_timeout} s; log:\n{log_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL)
        self.port = port
        return True

    def _pick_port(self) -> int:
        """A port for the first start (overridden when the server needs more than one)."""
        return free_port(self.host)

    def start(self) -> None:
        """Start the server (no-op when already running) and wait until it answers."""
        if self.running:
            return
        if self.port:  # a restart: same address, so clients can reconnect
            if self._spawn(self.port):
                return
        else:
            # First start: free_port() can race with another process, so try
            # a few ports before giving up.
            for _ in range(3):
                if self._spawn(self._pick_port()):
                    return
        raise RuntimeError(f"redis-server failed to start; log:\n{log_tail(self.log_path)}")

    def stop(self) -> None:
        """Stop the server (no-op when not running) and wait until it has exited."""
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


#: Redis' cluster bus listens on the client port plus this (its default ``cluster-port``).
CLUSTER_BUS_OFFSET = 10_000

#: Redis Cluster has this many hash slots; a node serving all of them is a whole cluster.
CLUSTER_SLOTS = 16_384


class RedisClusterNode(RedisServer):
    """A one-node Redis Cluster: a ``RedisServer`` in cluster mode serving all 16384 slots.

    ``start()`` returns once ``CLUSTER INFO`` says ``cluster_state:ok``, so a
    ``redis.cluster.RedisCluster`` can connect at once (a fresh node needs
    about 2 s for that: Redis waits ``CLUSTER_WRITABLE_DELAY`` before it turns
    a master writable).  One node is enough to test a client against the
    cluster protocol: keys are hashed to slots, and the client routes and
    checks them (a transaction over two slots fails) as with many nodes.

    The cluster config (``nodes.conf``) is kept in *workdir*, so a restart
    keeps the slots; the data does not survive, as with ``RedisServer``.
    """

    def __init__(self, executable: str, workdir: Path, start_timeout: float = 10.0) -> None:
        super().__init__(
            executable,
            workdir,
            start_timeout,
            extra_args=[
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(workdir / "nodes.conf"),
            ],
        )  # fmt: skip

    def _pick_port(self) -> int:
        """A free port whose cluster bus port (port + 10000) exists and is free too.

        Not ``--cluster-port`` (Redis 7.0+ only): this works with older servers.
        """
        for _ in range(100):
            port = free_port(self.host)
            bus = port + CLUSTER_BUS_OFFSET
            if bus <= 65_535 and port_is_free(self.host, bus):
                return port
        raise RuntimeError("found no free port pair (port, port + 10000) for a cluster node")

    def start(self) -> None:
        """Start the node (no-op when running), give it all slots, wait for ``cluster_state:ok``."""
        if self.running:
            return
        super().start()
        try:
            self._assign_all_slots()
            self._wait_for_cluster_ok()
        except BaseException:
            self.stop()
            raise

    def cluster_info(self) -> dict[str, str]:
        """``CLUSTER INFO`` as a dict of strings (``{'cluster_state': 'ok', ...}``)."""
        import redis

        with redis.Redis(host=self.host, port=self.port, socket_timeout=2) as client:
            text = client.execute_command("CLUSTER", "INFO")
        info = {}
        for line in _text(text).splitlines():
            key, _, value = line.partition(":")
            info[key] = value
        return info

    def _assign_all_slots(self) -> None:
        """Give the node slots 0-16383 unless it has them (a restart keeps its nodes.conf)."""
        import redis

        if self.cluster_info().get("cluster_slots_assigned") == str(CLUSTER_SLOTS):
            return
        with redis.Redis(host=self.host, port=self.port, socket_timeout=2) as client:
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, CLUSTER_SLOTS - 1)
            except redis.ResponseError as error:
                if "unknown subcommand" not in str(error).lower():
                    raise
                # Redis < 7.0 has no ADDSLOTSRANGE: list the slots, in chunks.
                for first in range(0, CLUSTER_SLOTS, 1024):
                    client.execute_command("CLUSTER", "ADDSLOTS", *range(first, first + 1024))

    def _wait_for_cluster_ok(self) -> None:
        """Poll ``CLUSTER INFO`` until ``cluster_state:ok``; TimeoutError after start_timeout."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            info = self.cluster_info()
            if info.get("cluster_state") == "ok":
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"redis cluster node {self.host}:{self.port} not ok within "
                    f"{self.start_timeout} s: {info}; log:\n{log_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL)


def _text(data: str | bytes) -> str:
    return data.decode() if isinstance(data, bytes) else data


# --------------------------------------------------------------------------
# the example server (server.py)


#: The line server.py prints on stderr once it listens (with ``--port 0``: the real port).
SERVING_LINE = re.compile(
    r"^Serving on http://(?P<host>[^\s:]+):(?P<port>\d+) \(store: .*\)$", re.MULTILINE
)


class ServerProcess:
    """``server.py`` running as a child process on a loopback port the OS picks.

    It is started with ``--port 0``, and the port is read from the line it
    prints once it listens (``Serving on http://HOST:PORT (store: ...)``): no
    port is picked in advance, so none can be taken by another process before
    the server binds it.
    """

    def __init__(
        self,
        *,
        store: str | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path,
        dev_key_file: Path | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.host = LOOPBACK
        self.log_path = log_path
        # The development key (used without SESSION_KEYS) beside the log by default,
        # never in the project directory: tests leave nothing behind.
        self.dev_key_file = dev_key_file or log_path.with_name("dev-key")
        command = [sys.executable, "server.py", "--host", self.host, "--port", "0",
                   "--dev-key-file", str(self.dev_key_file)]
        if store is not None:
            command += ["--store", store]
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # Only what this server writes counts: the log file may already hold another run.
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            self.port = self._wait_for_serving_line(offset, start_timeout)
        except (TimeoutError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(
                f"server.py did not start ({exc}); log:\n{log_tail(log_path)}"
            ) from None
        self.url = f"http://{self.host}:{self.port}"

    def _wait_for_serving_line(self, offset: int, timeout: float) -> int:
        """Poll the log until server.py says where it serves; return the port.

        The line is printed after the socket is bound and listening, so the
        server accepts connections from then on.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                match = SERVING_LINE.search(log.read().decode(errors="replace"))
            if match is not None:
                return int(match.group("port"))
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited with status {self.proc.returncode} "
                                   "before serving")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no 'Serving on' line within {timeout} s")
            time.sleep(POLL_INTERVAL)

    def stop(self) -> int:
        """Stop the server with SIGTERM and return its exit status."""
        return stop_process(self.proc)

    def log(self) -> str:
        """The server's output so far (stdout and stderr together)."""
        return self.log_path.read_text(errors="replace")


def run_client(
    port: int, host: str = LOOPBACK, timeout: float = 60.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``client.py`` against *host*:*port* and return its captured result.

    *env* replaces the environment of the child (default: this process's).
    """
    return subprocess.run(
        [sys.executable, "client.py", "--host", host, "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class FakeClock:
    """Epoch seconds that move only when a test moves them: expiry without sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def parse_set_cookie(header: str) -> tuple[str, str, dict[str, str]]:
    """``'s=v; path=/; httponly'`` -> ``('s', 'v', {'path': '/', 'httponly': ''})``."""
    first, *rest = header.split("; ")
    name, _, value = first.partition("=")
    attributes = {}
    for item in rest:
        key, _, val = item.partition("=")
        attributes[key.lower()] = val
    return name, value, attributes


def dead_redis_store() -> RedisStore:
    """A real RedisStore whose client points at a loopback port nothing listens on."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        host=LOOPBACK,
        port=free_port(),
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),  # fail at once instead of retrying with backoff
    )
    return RedisStore(client)
