"""End-to-end checks of the example: server.py and client.py as real processes."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import server
from tests.helpers import (
    LOOPBACK,
    PROJECT_ROOT,
    ServerProcess,
    closed_port,
    http_session,
    run_client,
)

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def test_client_sets_then_fetches_through_the_session(run_server: Callable[..., str]) -> None:
    url = run_server()  # memory store

    result = run_client(_port(url))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "Set foo = bar\nFetched foo = bar\n"


def test_client_ignores_a_proxy_variable_and_talks_to_the_server_directly(
    run_server: Callable[..., str],
) -> None:
    url = run_server()
    # No NO_PROXY to exempt 127.0.0.1, and no REQUEST_METHOD (with it, as in a CGI script,
    # Python ignores HTTP_PROXY): the proxy applies unless the client opts out.
    env = {name: value for name, value in os.environ.items()
           if name.lower() not in PROXY_VARIABLES and name != "REQUEST_METHOD"}
    with closed_port() as proxy_port:  # a proxy that refuses every connection
        env["HTTP_PROXY"] = f"http://127.0.0.1:{proxy_port}"

        result = run_client(_port(url), env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "Set foo = bar\nFetched foo = bar\n"


def test_client_reports_an_unreachable_server() -> None:
    with closed_port() as port:  # bound, not listening: refused, and nobody can take it
        result = run_client(port)

    assert result.returncode == 1
    assert result.stdout == ""
    prefix = f"client.py: cannot reach the server at http://127.0.0.1:{port}: "
    assert result.stderr.startswith(prefix), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr  # one line, no traceback


def test_routes_answer_json(run_server: Callable[..., str]) -> None:
    url = run_server()
    with http_session() as http:
        stored = http.get(f"{url}/set/foo/bar", timeout=10)
        fetched = http.get(f"{url}/get/foo", timeout=10)
        missing = http.get(f"{url}/get/nothing", timeout=10)

    assert (stored.status_code, stored.text) == (200, '"bar"')
    assert stored.headers["Content-Type"].startswith("application/json")
    assert (fetched.status_code, fetched.text) == (200, '"bar"')
    assert (missing.status_code, missing.text) == (200, "null")


def test_get_routes_also_answer_head_with_the_headers_and_no_body(
    run_server: Callable[..., str],
) -> None:
    url = run_server()
    with http_session() as http:
        stored = http.head(f"{url}/set/foo/bar", timeout=10)
        read = http.head(f"{url}/get/foo", timeout=10)
        fetched = http.get(f"{url}/get/foo", timeout=10)

    for response in (stored, read):
        assert (response.status_code, response.content) == (200, b"")
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["Content-Length"] == "5"  # len('"bar"'): what GET would send
        assert "s=" in response.headers["Set-Cookie"]
    # The route ran as for GET: the HEAD on /set stored the value in the session.
    assert (fetched.status_code, fetched.text) == (200, '"bar"')


def test_anything_else_is_404_error(run_server: Callable[..., str]) -> None:
    url = run_server()
    cases = [
        ("GET", "/"),
        ("GET", "/nope"),
        ("GET", "/set/foo"),
        ("GET", "/get/foo/extra"),
        ("POST", "/set/foo/bar"),  # a known path with a wrong method: 404, not 405
        ("DELETE", "/get/foo"),
    ]
    with http_session() as http:
        for method, path in cases:
            response = http.request(method, url + path, timeout=10)
            assert (response.status_code, response.text) == (404, "ERROR"), (method, path)
        head = http.head(f"{url}/nope", timeout=10)

    assert (head.status_code, head.content) == (404, b"")
    assert head.headers["Content-Length"] == "5"  # len("ERROR")


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("bogus", "unknown store"),
        ("sqlite:", "the sqlite store needs a file path"),
        ("redis://host:notaport", "Port could not be cast to integer value as 'notaport'"),
        ("redis://host/0?x=1", "only redis://HOST:PORT is supported"),
    ],
)
def test_a_bad_store_value_exits_with_a_one_line_message_naming_it(spec: str, why: str) -> None:
    expected = (rf"^server\.py: error: bad --store value {re.escape(repr(spec))}: "
                rf"{re.escape(why)} \(expected memory, sqlite:PATH or redis://HOST:PORT\)$")

    with pytest.raises(SystemExit, match=expected) as raised:
        server.make_store(spec)

    assert isinstance(raised.value.code, str)  # printed on stderr, exit status 1
    assert "\n" not in raised.value.code


def test_server_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    server_process = ServerProcess(log_path=tmp_path / "server.log")
    server_process.proc.send_signal(signal.SIGTERM)

    assert server_process.stop() == 0
    assert "Traceback" not in server_process.log()


# ---------------------------------------------------------------------------
# Keys across restarts, failures in one line, the listen backlog


def run_server_py(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``server.py`` with *args* to its end (it is expected to exit at once)."""
    return subprocess.run(
        [sys.executable, "server.py", *args], cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )


@contextlib.contextmanager
def busy_port() -> Iterator[int]:
    """Yield a loopback port that another socket is listening on."""
    with socket.socket() as other:
        other.bind((LOOPBACK, 0))
        other.listen()
        yield other.getsockname()[1]


def test_sessions_survive_a_restart_with_a_sqlite_store_and_no_session_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SESSION_KEYS", raising=False)
    store = f"sqlite:{tmp_path / 'sessions.db'}"
    first = ServerProcess(store=store, log_path=tmp_path / "first.log")
    with http_session() as http:  # one cookie jar: cookies are per host, not per port
        try:
            assert http.get(f"{first.url}/set/foo/bar", timeout=10).text == '"bar"'
        finally:
            assert first.stop() == 0

        second = ServerProcess(store=store, log_path=tmp_path / "second.log")
        try:
            fetched = http.get(f"{second.url}/get/foo", timeout=10)
        finally:
            second.stop()

    assert (fetched.status_code, fetched.text) == (200, '"bar"')
    key_file = tmp_path / "dev-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    made, kept = first.log(), second.log()
    assert f"development key made now in {str(key_file)!r}" in made
    assert f"development key kept in {str(key_file)!r}" in kept
    assert key not in made + kept  # said, never shown
    assert len([line for line in made.splitlines() if "SESSION_KEYS" in line]) == 1


def test_session_keys_override_the_development_key(
    run_server: Callable[..., str], tmp_path: Path,
) -> None:
    run_server(env={"SESSION_KEYS": "k1,k2"})

    assert not (tmp_path / "dev-key").exists()
    assert "SESSION_KEYS" not in (tmp_path / "server-0.log").read_text()


def test_a_development_key_file_others_can_read_is_refused_in_one_line(tmp_path: Path) -> None:
    key_file = tmp_path / "dev-key"
    key_file.write_text("a key\n")
    key_file.chmod(0o644)
    env_without_keys = {k: v for k, v in os.environ.items() if k != "SESSION_KEYS"}

    result = subprocess.run(
        [sys.executable, "server.py", "--port", "0", "--dev-key-file", str(key_file)],
        cwd=PROJECT_ROOT, env=env_without_keys, capture_output=True, text=True, timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert result.stderr == (
        f"server.py: error: the key file {str(key_file)!r} is readable by others (mode 0644); "
        "chmod 600 it or delete it for a new key\n"
    )


def test_a_busy_port_ends_the_server_with_one_line_and_status_1(tmp_path: Path) -> None:
    with busy_port() as port:
        result = run_server_py("--host", LOOPBACK, "--port", str(port),
                               "--dev-key-file", str(tmp_path / "dev-key"))

    assert result.returncode == 1
    assert result.stderr == (
        f"server.py: error: cannot listen on {LOOPBACK}:{port}: Address already in use\n"
    )
    assert not (tmp_path / "dev-key").exists()  # it bound first, before touching anything


def test_an_unusable_store_path_ends_the_server_with_one_line_and_status_1(
    tmp_path: Path,
) -> None:
    result = run_server_py("--port", "0", "--store", "sqlite:/nonexistent/x.db",
                           "--dev-key-file", str(tmp_path / "dev-key"))

    assert result.returncode == 1
    assert result.stderr == (
        "server.py: error: cannot use --store 'sqlite:/nonexistent/x.db': SQLiteStore at "
        "'/nonexistent/x.db': open failed: unable to open database file\n"
    )


def make_demo(*variables: str) -> subprocess.CompletedProcess[str]:
    """Run ``make demo`` in the project; skip when its venv is not installed and current."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    current = subprocess.run(["make", "-q", ".venv/.installed-demo"], cwd=PROJECT_ROOT,
                             capture_output=True, check=False)
    if current.returncode != 0:
        pytest.skip("the demo's venv is not installed or not current: run `make demo` once")
    # SESSION_KEYS set: the demo would otherwise keep its development key in the project.
    return subprocess.run(
        ["make", "--no-print-directory", "demo", *variables], cwd=PROJECT_ROOT,
        env={**os.environ, "SESSION_KEYS": "a test key"},
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )


def test_make_demo_runs_the_client_against_the_server() -> None:
    result = make_demo()

    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("Set foo = bar\nFetched foo = bar\n")


def test_make_demo_on_a_busy_port_shows_the_servers_line_and_fails() -> None:
    with busy_port() as port:
        result = make_demo(f"PORT={port}")

    assert result.returncode != 0
    assert "Set foo" not in result.stdout  # the client never talked to the other listener
    line = f"server.py: error: cannot listen on {LOOPBACK}:{port}: Address already in use"
    assert result.stderr.splitlines()[0] == line


def test_make_demo_with_an_unusable_store_shows_the_servers_line_and_fails() -> None:
    result = make_demo("DEMO_STORE=sqlite:/nonexistent/x.db")

    assert result.returncode != 0
    assert result.stderr.splitlines()[0].startswith(
        "server.py: error: cannot use --store 'sqlite:/nonexistent/x.db': "
    )


def test_the_listening_socket_has_a_backlog_of_1024(run_server: Callable[..., str]) -> None:
    if shutil.which("ss") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("ss not installed: apt-get install iproute2")
        pytest.skip("ss not installed: apt-get install iproute2")
    port = _port(run_server())
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())

    listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=30, check=True).stdout.split()

    # State, Recv-Q, Send-Q (for a listening socket: its backlog), local address, peer.
    assert listing[0] == "LISTEN" and listing[3] == f"{LOOPBACK}:{port}", listing
    assert int(listing[2]) == min(server.ThreadingWSGIServer.request_queue_size, somaxconn)
    assert server.ThreadingWSGIServer.request_queue_size == 1024
