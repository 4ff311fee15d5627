"""What the stress scripts share: the app server child process, an HTTP client with a
cookie jar, latency figures, and the invariant book-keeping that sets the exit status.

Each script runs its part on free loopback ports, prints its figures and exits 1 when
an invariant broke (``Invariants.exit``).  ``--quick`` (or ``STRESS_QUICK=1``) runs
a few-second version of it: what ``tests/test_stress.py`` runs in ``make test``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import (  # noqa: E402 (after the path set-up)
    LOOPBACK,
    POLL_INTERVAL,
    RedisServer,
    free_port,
    port_is_free,
    redis_ping,
)

__all__ = ["LOOPBACK", "POLL_INTERVAL", "RedisServer", "free_port", "port_is_free",
           "redis_ping"]

APP = Path(__file__).resolve().parent / "app.py"
SERVING = re.compile(r"Serving on http://127\.0\.0\.1:(\d+)")
#: Seconds after which a tab opens a new connection rather than reuse its idle one:
#: below uvicorn's keep-alive timeout (5 s), which closes idle connections.
IDLE_CONNECTION = 4.0
#: Control characters a response header must never hold (a tab is allowed).
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def arguments(description: str) -> argparse.Namespace:
    """``--quick`` (also ``STRESS_QUICK=1``) and ``--seconds`` for a part's bounded time."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        default=os.environ.get("STRESS_QUICK") == "1",
                        help="a few seconds instead of the full run (what make test runs)")
    return parser.parse_args()


def workdir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory for the part's files (SQLite, Redis, logs), removed at the end."""
    return tempfile.TemporaryDirectory(prefix=f"generic-session-stress-{prefix}-")


class AppServer:
    """``stress/app.py`` in a child process on a loopback port it binds itself (port 0).

    Its stdout and stderr (every log line of the server) go to ``log_path``; ``url``,
    ``host`` and ``port`` are known once it printed its ``Serving on`` line.
    """

    def __init__(self, store: str, server: str, log_path: Path, *, threads: int = 16,
                 start_timeout: float = 30.0) -> None:
        self.host = LOOPBACK
        self.log_path = log_path
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(APP), "--server", server, "--store", store,
                 "--threads", str(threads)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + start_timeout
        while True:
            with log_path.open("rb") as log:
                log.seek(offset)
                match = SERVING.search(log.read().decode(errors="replace"))
            if match:
                self.port = int(match.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"stress/app.py did not start: {self.log()[-2000:]}")
            time.sleep(POLL_INTERVAL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a crash or the OOM killer."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> AppServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Browser:
    """One user agent's cookie jar, shared by its "tabs" (each with its own connection).

    ``request`` sends the jar's cookies and stores the ``Set-Cookie`` it gets back
    (an expired one removes the cookie), as a browser does.
    """

    def __init__(self) -> None:
        self.jar: dict[str, str] = {}
        self.lock = threading.Lock()
        #: Every token this browser was ever given: what must never reach a log line.
        self.tokens: set[str] = set()

    def cookie_header(self) -> str:
        with self.lock:
            return "; ".join(f"{name}={value}" for name, value in self.jar.items())

    def take(self, headers: Sequence[tuple[str, str]]) -> None:
        with self.lock:
            for name, value in headers:
                if name.lower() != "set-cookie":
                    continue
                pair, _, attributes = value.partition(";")
                cookie, _, content = pair.partition("=")
                if "expires=thu, 01 jan 1970" in attributes.lower() or not content:
                    self.jar.pop(cookie, None)
                else:
                    self.jar[cookie] = content
                    if cookie == "s":
                        self.tokens.add(content)


class Tab:
    """One keep-alive connection of a :class:`Browser` to the app server."""

    def __init__(self, browser: Browser, host: str, port: int, timeout: float = 30.0) -> None:
        self.browser = browser
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connection: http.client.HTTPConnection | None = None
        self.last_used = 0.0

    def request(self, path: str) -> tuple[int, Any, list[tuple[str, str]]]:
        """GET ``path``; return (status, JSON body or None, headers).  A transport error
        (refused, reset, timed out) raises OSError or http.client.HTTPException."""
        now = time.monotonic()
        if now - self.last_used > IDLE_CONNECTION:
            self.close()  # as a browser does, rather than race the server's keep-alive timeout
        self.last_used = now
        if self.connection is None:
            self.connection = self._new_connection()
        headers = {"Cookie": self.browser.cookie_header()}
        try:
            self.connection.request("GET", path, headers=headers)
            response = self.connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        pairs = response.getheaders()
        self.browser.take(pairs)
        payload = None
        if response.getheader("Content-Type", "").startswith("application/json"):
            payload = json.loads(body)
        return response.status, payload, pairs

    def connect(self) -> None:
        """Open the tab's connection now, ahead of its first request (a refusal leaves it
        to that request, which then raises)."""
        self.close()
        self.connection = self._new_connection()
        try:
            self.connection.connect()
        except OSError:
            self.close()
        self.last_used = time.monotonic()

    def _new_connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``sorted_values`` lie (nearest rank)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def latency_figures(latencies: Sequence[float]) -> str:
    """``p50 1.2 ms, p99 8.0 ms, max 40 ms`` of latencies in seconds."""
    ordered = sorted(latencies)
    if not ordered:
        return "no requests"
    return (f"p50 {percentile(ordered, 0.5) * 1e3:.1f} ms, "
            f"p99 {percentile(ordered, 0.99) * 1e3:.1f} ms, max {ordered[-1] * 1e3:.0f} ms")


def errors_figure(errors: Counter[str]) -> str:
    """``errors: none`` or ``errors: 503 x12, refused x3`` (by kind)."""
    if not sum(errors.values()):
        return "errors: none"
    return "errors: " + ", ".join(f"{kind} x{count}" for kind, count in errors.most_common())


class Invariants:
    """The broken invariants of a part, each counted once with its first example."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.broken: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.lock = threading.Lock()

    def check(self, ok: bool, name: str, example: str = "") -> bool:
        if not ok:
            with self.lock:
                self.broken[name] += 1
                self.examples.setdefault(name, example)
        return ok

    def merge(self, broken: Counter[str], examples: dict[str, str]) -> None:
        with self.lock:
            self.broken.update(broken)
            for name, example in examples.items():
                self.examples.setdefault(name, example)

    def exit(self) -> None:
        """Print the verdict and exit: 0 when every invariant held, 1 otherwise."""
        if not self.broken:
            print(f"{self.part}: every invariant held")
            sys.exit(0)
        for name, count in self.broken.items():
            print(f"{self.part}: BROKEN {name} x{count}: {self.examples[name]}")
        sys.exit(1)


def redis_server(workdir: Path, *extra: str) -> RedisServer:
    """A started redis-server of our own (tests.helpers.RedisServer) with ``extra`` args."""
    executable = "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() \
        else "redis-server"
    server = RedisServer(executable, workdir, extra_args=list(extra))
    server.start()
    return server
