"""End-to-end checks of the example: server.py and client.py as real processes."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tests.helpers import ServerProcess, free_port, run_client


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def test_client_sets_then_fetches_through_the_session(run_server: Callable[..., str]) -> None:
    url = run_server()  # memory store

    result = run_client(_port(url))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "Set foo = bar\nFetched foo = bar\n"


def test_client_reports_an_unreachable_server() -> None:
    port = free_port()  # nothing listens there

    result = run_client(port)

    assert result.returncode == 1
    assert result.stdout == ""
    prefix = f"client.py: cannot reach the server at http://127.0.0.1:{port}: "
    assert result.stderr.startswith(prefix), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr  # one line, no traceback


def test_routes_answer_json(run_server: Callable[..., str]) -> None:
    url = run_server()
    with requests.Session() as http:
        stored = http.get(f"{url}/set/foo/bar", timeout=10)
        fetched = http.get(f"{url}/get/foo", timeout=10)
        missing = http.get(f"{url}/get/nothing", timeout=10)

    assert (stored.status_code, stored.text) == (200, '"bar"')
    assert stored.headers["Content-Type"].startswith("application/json")
    assert (fetched.status_code, fetched.text) == (200, '"bar"')
    assert (missing.status_code, missing.text) == (200, "null")


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
    for method, path in cases:
        response = requests.request(method, url + path, timeout=10)
        assert (response.status_code, response.text) == (404, "ERROR"), (method, path)


def test_server_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    server = ServerProcess(log_path=tmp_path / "server.log")
    server.proc.send_signal(signal.SIGTERM)

    assert server.stop() == 0
    assert "Traceback" not in server.log()
