"""The WSGI middleware as a thin adapter over the session core: regressions found by probing it.

Each test here failed on the module before the reshape: a body closed twice, two tokens
minted by two threads of one request, ``Secure`` lost behind a proxy fix placed inside
the middleware, Flask's test client raising instead of answering 503, and an HMAC
computed for a forged cookie of any size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flask
import pytest
import webtest
from werkzeug.middleware.proxy_fix import ProxyFix

import generic_session
from generic_session import ENVIRON_KEY, GenericSession, Keygrip, MemoryStore
from tests.helpers import FakeClock, dead_redis_store, parse_set_cookie

KEYS = ["a long random secret"]


# -- PEP 3333: the app's body is closed exactly once ---------------------------------------------


class CountingBody:
    """An app's body that calls start_response when first iterated, and counts close()."""

    def __init__(self, start_response: Callable[..., Any]) -> None:
        self.start_response = start_response
        self.started = False
        self.closes = 0

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if not self.started:
            self.started = True
            self.start_response("200 OK", [("Content-Type", "text/plain")])
        return b"chunk"

    def close(self) -> None:
        self.closes += 1


def test_a_body_the_server_closes_mid_stream_is_closed_exactly_once() -> None:
    bodies: list[CountingBody] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ[ENVIRON_KEY].set("k", "v")
        bodies.append(CountingBody(start_response))
        return bodies[-1]

    wrapped = generic_session.middleware(MemoryStore(), keys=KEYS)(app)
    response = wrapped({"REQUEST_METHOD": "GET", "wsgi.url_scheme": "http"},
                       lambda status, headers, exc_info=None: lambda data: None)
    iterator = iter(response)
    assert next(iterator) == b"chunk"
    assert next(iterator) == b"chunk"
    response.close()  # type: ignore[attr-defined]  # the client hung up: the server closes

    assert bodies[0].closes == 1


# -- two threads of one request start the session once -------------------------------------------


def test_two_threads_touching_a_new_session_at_once_mint_one_token_and_keep_both_writes() -> None:
    # The clock is read while the session starts (for the cookie's Expires): the first
    # thread is held there, inside the start, while the second one touches the session.
    first_in_start = threading.Event()
    second_in_start = threading.Event()
    release = threading.Event()
    calls = 0
    lock = threading.Lock()
    clock = FakeClock()

    def holding_clock() -> float:
        nonlocal calls
        with lock:
            calls += 1
            call = calls
        if call == 1:
            first_in_start.set()
            assert release.wait(10)
        elif call == 2:
            second_in_start.set()
        return clock()

    store = MemoryStore()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        session = environ[ENVIRON_KEY]
        first = threading.Thread(target=session.set, args=("a", 1))
        second = threading.Thread(target=session.set, args=("b", 2))
        first.start()
        assert first_in_start.wait(10)
        second.start()
        # With the start under a lock the second thread waits for the first; a bounded
        # wait shows it does not get into the start on its own (and mint a second token).
        assert not second_in_start.wait(0.3)
        release.set()
        first.join(10)
        second.join(10)
        start_response("200 OK", [])
        return [b"ok"]

    response = webtest.TestApp(
        generic_session.middleware(store, keys=KEYS, clock=holding_clock)(app)).get("/")

    token = next(value for name, value, _ in map(parse_set_cookie,
                                                  response.headers.getall("Set-Cookie"))
                 if name == "s")
    assert store.get_all("session:" + token, 60) == {"a": 1, "b": 2}


# -- Secure behind a TLS proxy, whatever the order of the middlewares -----------------------------


def flask_app(order: str) -> flask.Flask:
    app = flask.Flask(__name__)

    @app.get("/")
    def index() -> str:
        flask.request.environ[ENVIRON_KEY].set("k", "v")
        return "ok"

    wrap = generic_session.middleware(MemoryStore(), keys=KEYS)
    if order == "proxy fix inside":  # ProxyFix first, then the README's Flask line
        app.wsgi_app = ProxyFix(app.wsgi_app, x_proto=1)  # type: ignore[method-assign]
        app.wsgi_app = wrap(app.wsgi_app)  # type: ignore[method-assign]
    else:
        app.wsgi_app = ProxyFix(wrap(app.wsgi_app), x_proto=1)  # type: ignore[method-assign]
    return app


@pytest.mark.parametrize("order", ["proxy fix inside", "proxy fix outside"])
def test_the_cookie_is_secure_behind_a_tls_proxy_in_either_middleware_order(order: str) -> None:
    client = flask_app(order).test_client()

    response = client.get("/", headers={"X-Forwarded-Proto": "https"})

    headers = response.headers.getlist("Set-Cookie")
    assert [parse_set_cookie(header)[0] for header in headers] == ["s", "s.sig"]
    assert all("secure" in parse_set_cookie(header)[2] for header in headers)


@pytest.mark.parametrize("order", ["proxy fix inside", "proxy fix outside"])
def test_the_cookie_is_not_secure_over_plain_http_in_either_order(order: str) -> None:
    response = flask_app(order).test_client().get("/")

    assert not any("secure" in parse_set_cookie(header)[2]
                   for header in response.headers.getlist("Set-Cookie"))


# -- a store that is down: 503, under Flask's test client too ------------------------------------


def test_flasks_test_client_gets_a_503_when_the_store_is_down() -> None:
    app = flask.Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = True  # let StoreError reach the middleware

    @app.get("/")
    def index() -> str:
        return str(flask.request.environ[ENVIRON_KEY].get("k"))

    app.wsgi_app = generic_session.middleware(  # type: ignore[method-assign]
        dead_redis_store(), keys=KEYS)(app.wsgi_app)

    response = app.test_client().get("/")

    assert response.status_code == 503
    assert response.text.startswith("503 Service Unavailable")
    assert response.headers.getlist("Set-Cookie") == []


# -- a forged cookie costs no HMAC until its shape is right --------------------------------------


class CountingKeygrip(Keygrip):
    """A real Keygrip that counts the signatures it checks."""

    __slots__ = ("checked",)

    def __init__(self, keys: list[str]) -> None:
        super().__init__(keys)
        self.checked = 0

    def index(self, data: str | bytes, digest: str) -> int:
        self.checked += 1
        return super().index(data, digest)


@pytest.mark.parametrize("forged", ["A" * 250_000, "A" * 39, "A" * 39 + ";", "é" * 40])
def test_a_cookie_of_the_wrong_shape_is_refused_before_any_hmac(forged: str) -> None:
    keygrip = CountingKeygrip(KEYS)
    environ = {"HTTP_COOKIE": f"s={forged}; s.sig={'B' * 27}"}

    session = GenericSession(environ, [], MemoryStore(), keys=keygrip)

    assert session.token != forged
    assert keygrip.checked == 0


def test_a_well_formed_cookie_is_checked_with_one_hmac() -> None:
    keygrip = CountingKeygrip(KEYS)
    token = "A" * 40
    environ = {"HTTP_COOKIE": f"s={token}; s.sig={keygrip.sign('s=' + token)}"}

    session = GenericSession(environ, [], MemoryStore(), keys=keygrip, strict=False)

    assert session.token == token
    assert keygrip.checked == 1

