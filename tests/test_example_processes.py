"""End-to-end checks of the example: server.py and client.py as real processes."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import server
from tests.helpers import ServerProcess, closed_port, http_session, run_client

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
