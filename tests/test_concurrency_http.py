"""Concurrency and outages over real HTTP on loopback.

Many client threads share one session cookie and each writes its own keys: a
store that rewrote the whole session per request would lose some of them.
Done against an in-process threaded WSGI server for every store, and against
several ``server.py`` processes sharing one SQLite file.  Then the example
server with Redis going down and coming back, and ``client.py`` unchanged
against the persistent stores.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import requests

import generic_session as gs
from tests.helpers import RedisServer, http_session, run_client

SIGNING_KEYS = ["concurrency test key, newest", "an older key"]
THREADS = 8
REQUESTS_PER_THREAD = 25
TIMEOUT = 30  # seconds, per HTTP request: never hang the suite


# ---------------------------------------------------------------------------
# An in-process threaded server with the same two routes as server.py


def session_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``GET /set/<key>/<value>`` stores the string, ``GET /get/<key>`` reads it, as JSON."""
    session: gs.GenericSession = environ["generic_session.session"]
    parts = environ["PATH_INFO"].split("/")[1:]
    if len(parts) == 3 and parts[0] == "set":
        session.set(parts[1], parts[2])
        body = json.dumps(parts[2])
    elif len(parts) == 2 and parts[0] == "get":
        body = json.dumps(session.get(parts[1]))
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"ERROR"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 64  # all the client threads may connect at once


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""


@contextmanager
def serving(store: gs.Store) -> Iterator[str]:
    """Serve the filtered app on a free loopback port (the OS picks it); yield its URL."""
    app = gs.filter(store, keys=SIGNING_KEYS)(session_app)
    httpd = make_server("127.0.0.1", 0, app, server_class=ThreadingServer,
                        handler_class=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


# ---------------------------------------------------------------------------
# Client side


def start_session(url: str) -> requests.cookies.RequestsCookieJar:
    """Make one request that mints a session; return the cookie jar holding it."""
    with http_session() as http:
        response = http.get(f"{url}/set/started/yes", timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        assert http.cookies.get("s") is not None and http.cookies.get("s.sig") is not None
        return http.cookies


def write_concurrently(urls: list[str], cookies: requests.cookies.RequestsCookieJar) -> set[str]:
    """THREADS threads, each with a copy of one cookie, write their own keys round-robin.

    Returns the keys written.  Fails if any request fails or a thread ends up
    with another session than the one it started with.
    """
    token = cookies.get("s")
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def client(t: int) -> None:
        try:
            with http_session() as http:
                http.cookies.update(cookies)
                start.wait(TIMEOUT)
                for i in range(REQUESTS_PER_THREAD):
                    url = urls[(t + i) % len(urls)]
                    response = http.get(f"{url}/set/t{t}-{i}/{i}", timeout=TIMEOUT)
                    assert (response.status_code, response.text) == (200, f'"{i}"'), response.text
                assert http.cookies.get("s") == token, "the session changed under a client"
        except BaseException as error:  # reported in the calling thread
            errors.append(error)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * REQUESTS_PER_THREAD)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    if errors:
        raise errors[0]
    return {f"t{t}-{i}" for t in range(THREADS) for i in range(REQUESTS_PER_THREAD)}


def read_over_http(url: str, cookies: requests.cookies.RequestsCookieJar, key: str) -> Any:
    with http_session() as http:
        response = http.get(f"{url}/get/{key}", cookies=cookies, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


# ---------------------------------------------------------------------------
# One threaded server, each store


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[gs.Store]:
    if request.param == "memory":
        yield gs.MemoryStore()
    elif request.param == "sqlite":
        yield gs.SQLiteStore(tmp_path / "sessions.db")
    else:
        yield gs.RedisStore(request.getfixturevalue("redis_client"), prefix="http-test:")


def test_client_threads_sharing_one_session_cookie_keep_every_write(store: gs.Store) -> None:
    with serving(store) as url:
        cookies = start_session(url)

        written = write_concurrently([url], cookies)

        token = cookies.get("s")
        stored = store.get_all(f"session:{token}", 3600)
        assert stored == {"started": "yes", **{key: key.partition("-")[2] for key in written}}
        assert read_over_http(url, cookies, "t7-24") == "24"


# ---------------------------------------------------------------------------
# Several server.py processes, one SQLite file


def test_server_processes_sharing_one_sqlite_file_keep_every_write_of_one_session(
    run_server: Callable[..., str], tmp_path: Path
) -> None:
    path = tmp_path / "shared.db"
    env = {"SESSION_KEYS": ",".join(SIGNING_KEYS)}  # the cookie verifies on every server
    urls = [run_server(store=f"sqlite:{path}", env=env) for _ in range(3)]
    cookies = start_session(urls[0])

    written = write_concurrently(urls, cookies)

    token = cookies.get("s")
    stored = gs.SQLiteStore(path).get_all(f"session:{token}", 3600)
    assert stored == {"started": "yes", **{key: key.partition("-")[2] for key in written}}
    # Each server reads what the others wrote.
    assert [read_over_http(url, cookies, f"t{n}-0") for n, url in enumerate(urls)] == ["0"] * 3


# ---------------------------------------------------------------------------
# The example server and client


def test_example_server_answers_503_while_redis_is_down_and_recovers_after(
    run_server: Callable[..., str], redis_server: RedisServer, redis_client: Any,
    tmp_path: Path,
) -> None:
    url = run_server(store=redis_server.url)
    try:
        with http_session() as http:
            assert http.get(f"{url}/set/foo/bar", timeout=TIMEOUT).text == '"bar"'

            redis_server.stop()
            down = http.get(f"{url}/set/foo/baz", timeout=TIMEOUT)

            assert down.status_code == 503
            assert down.text == "503 Service Unavailable: the session store is unavailable\n"
            assert "Traceback" not in down.text

            redis_server.start()  # same port, empty (no persistence)
            again = http.get(f"{url}/set/foo/again", timeout=TIMEOUT)
            fetched = http.get(f"{url}/get/foo", timeout=TIMEOUT)

            assert (again.status_code, again.text) == (200, '"again"')
            assert (fetched.status_code, fetched.text) == (200, '"again"')
    finally:
        redis_server.start()  # no-op when running: later tests need it

    log = (tmp_path / "server-0.log").read_text()
    assert f"generic_session: RedisStore at 127.0.0.1:{redis_server.port}: set failed" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
def test_client_py_works_unchanged_against_server_py(
    run_server: Callable[..., str], request: pytest.FixtureRequest, tmp_path: Path,
    store_kind: str,
) -> None:
    if store_kind == "sqlite":
        spec = f"sqlite:{tmp_path / 'sessions.db'}"
    else:
        request.getfixturevalue("redis_client")  # a running, empty Redis
        spec = request.getfixturevalue("redis_server").url
    url = run_server(store=spec)

    result = run_client(port_of(url))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "Set foo = bar\nFetched foo = bar\n"
