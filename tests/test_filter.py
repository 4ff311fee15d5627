"""The WSGI filter, in process with WebTest: Node's functional test, laziness, Bottle, errors.

A small WSGI app (``routes`` below) exposes the session API over URLs, as the app
of Node's ``tests/functional-test.js`` does; ``webtest.TestApp`` keeps a cookie jar
between requests, as ``request.jar()`` does there.  Stores are real: a MemoryStore
(instrumented to count calls where laziness is the point) and, for outages, a
RedisStore whose client points at a loopback port nothing listens on.
"""

from __future__ import annotations

import json
import re
import string
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any
from wsgiref.validate import validator

import bottle
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from webob import Request
from webtest import TestApp, TestResponse

import generic_session
from generic_session import (
    TWO_WEEKS,
    GenericSession,
    Keygrip,
    MemoryStore,
    RedisStore,
    SessionError,
)
from tests.helpers import FakeClock, parse_set_cookie

T0 = 4_000_000_000  # a fixed "now" (in 2096: the cookie jar drops cookies expired in real time)
EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"
KEYS = ["a long random secret", "an older one"]
URL_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]{40}")
STR = "val"
OBJ = {"key": "val", "obj": {"foo": "bar"}}


# -- the app under test and its helpers ----------------------------------------------------------

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


def routes(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The session API over URLs: /set/<key>?value=<json>, /get/<key>, /getall, /del/<key>,
    /delall, /destroy, /id, /token, /touch, /count, /noop, /repr; anything else: 404 with the id.
    """
    session: GenericSession = environ["generic_session.session"]
    request = Request(environ)
    route, *args = request.path_info.strip("/").split("/")
    status = "200 OK"
    body: dict[str, Any]
    if route == "noop":
        body = {"started": session.started}
    elif route == "repr":
        body = {"repr": repr(session), "html": session._repr_html_(), "started": session.started}
    elif route == "id":
        body = {"id": session.id}
    elif route == "token":
        body = {"token": session.token}
    elif route == "set":
        value = json.loads(request.GET["value"]) if "value" in request.GET else None
        session.set(args[0], value)
        body = {"id": session.id, "ok": True}
    elif route == "get":
        body = {"id": session.id, "value": session.get(args[0])}
    elif route == "getall":
        body = {"id": session.id, "data": session.get_all()}
    elif route == "del":
        session.delete(args[0])
        body = {"id": session.id, "ok": True}
    elif route == "delall":
        session.delete_all()
        body = {"id": session.id, "ok": True}
    elif route == "destroy":
        session.destroy()
        body = {"ok": True, "destroyed": True}
    elif route == "touch":
        session.touch()
        body = {"ok": True}
    elif route == "count":  # reads, then writes
        count = (session.get("count") or 0) + 1
        session.set("count", count)
        body = {"count": count}
    else:
        status = "404 Not Found"
        body = {"error": "not found", "id": session.id}
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]


class CountingStore(MemoryStore):
    """The real MemoryStore, recording the name of every store call made on it."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.calls: list[str] = []

    def get(self, id: str, key: str, expire: float, **live: bool) -> Any:
        self.calls.append("get")
        return super().get(id, key, expire, **live)

    def get_all(self, id: str, expire: float, **live: bool) -> dict[str, Any]:
        self.calls.append("get_all")
        return super().get_all(id, expire, **live)

    def set(self, id: str, key: str, value: Any, expire: float, **live: bool) -> None:
        self.calls.append("set")
        super().set(id, key, value, expire, **live)

    def delete(self, id: str, key: str, expire: float, **live: bool) -> None:
        self.calls.append("delete")
        super().delete(id, key, expire, **live)

    def delete_all(self, id: str) -> None:
        self.calls.append("delete_all")
        super().delete_all(id)

    def extend(self, id: str, expire: float, **live: bool) -> None:
        self.calls.append("extend")
        super().extend(id, expire, **live)

    def create(self, id: str, expire: float, lifetime: float | None = None) -> None:
        self.calls.append("create")
        super().create(id, expire, lifetime)


def set_cookies(response: TestResponse) -> list[tuple[str, str, dict[str, str]]]:
    return [parse_set_cookie(header) for header in response.headers.getall("Set-Cookie")]


def cookie(response: TestResponse, name: str) -> tuple[str, dict[str, str]]:
    """The value and attributes of the one Set-Cookie for ``name`` (fails if not exactly one)."""
    found = [(value, attrs) for cookie_name, value, attrs in set_cookies(response)
             if cookie_name == name]
    assert len(found) == 1, f"{len(found)} Set-Cookie for {name!r}: {set_cookies(response)!r}"
    return found[0]


def expires_at(attributes: dict[str, str]) -> float:
    return parsedate_to_datetime(attributes["expires"]).timestamp()


@pytest.fixture(params=[None, KEYS], ids=["unsigned", "signed"])
def keys(request: pytest.FixtureRequest) -> list[str] | None:
    keys: list[str] | None = request.param
    return keys


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def client(store: CountingStore, keys: list[str] | None) -> TestApp:
    return TestApp(generic_session.filter(store, keys=keys)(routes))


def check_signature(response: TestResponse, keys: list[str] | None, token: str) -> None:
    """Signed: ``s.sig`` is there and signs ``s=<token>`` with keys[0]; unsigned: no ``s.sig``."""
    if keys is None:
        assert "s.sig" not in [name for name, _, _ in set_cookies(response)]
    else:
        signature, _ = cookie(response, "s.sig")
        assert Keygrip(keys[:1]).verify(f"s={token}", signature)


# -- Node's functional test ----------------------------------------------------------------------


def test_the_first_request_establishes_a_session_cookie(
    client: TestApp, keys: list[str] | None
) -> None:
    response = client.get("/404", status=404)

    assert response.json["error"] == "not found"
    token, attributes = cookie(response, "s")
    assert URL_SAFE_TOKEN.fullmatch(token)
    assert response.json["id"] == "session:" + token
    assert "httponly" in attributes
    assert expires_at(attributes) > time.time() + 60
    check_signature(response, keys, token)
    assert client.cookies["s"] == token


def test_the_id_stays_the_same_across_requests(client: TestApp) -> None:
    first = client.get("/id").json["id"]

    assert client.get("/id").json["id"] == first
    assert client.get("/404", status=404).json["id"] == first


def test_a_string_and_an_object_set_are_read_back_in_later_requests(client: TestApp) -> None:
    id = client.get("/id").json["id"]

    assert client.get("/set/str", {"value": json.dumps(STR)}).json == {"id": id, "ok": True}
    assert client.get("/set/obj", {"value": json.dumps(OBJ)}).json == {"id": id, "ok": True}

    assert client.get("/get/str").json == {"id": id, "value": STR}
    assert client.get("/get/obj").json == {"id": id, "value": OBJ}


def test_get_all_returns_every_key(client: TestApp) -> None:
    client.get("/set/str", {"value": json.dumps(STR)})
    client.get("/set/obj", {"value": json.dumps(OBJ)})

    response = client.get("/getall")

    assert response.json["data"] == {"str": STR, "obj": OBJ}


def test_deleting_each_key_leaves_the_others_until_none_is_left(client: TestApp) -> None:
    client.get("/set/str", {"value": json.dumps(STR)})
    client.get("/set/obj", {"value": json.dumps(OBJ)})

    client.get("/del/str")
    assert client.get("/get/str").json["value"] is None
    assert client.get("/getall").json["data"] == {"obj": OBJ}

    client.get("/del/obj")
    assert client.get("/get/obj").json["value"] is None
    assert client.get("/getall").json["data"] == {}


def test_delete_all_empties_the_session_and_a_later_use_goes_on_in_a_fresh_one(
    client: TestApp, keys: list[str] | None
) -> None:
    id = client.get("/set/str", {"value": json.dumps(STR)}).json["id"]
    client.get("/set/obj", {"value": json.dumps(OBJ)})

    response = client.get("/delall")  # the route reads session.id after delete_all

    new_id = response.json["id"]
    assert new_id != id  # the old id ended; reading the id used the session again
    token = new_id.removeprefix("session:")
    assert cookie(response, "s")[0] == token
    check_signature(response, keys, token)
    assert client.get("/getall").json == {"id": new_id, "data": {}}
    assert client.cookies["s"] == token


def test_destroy_removes_the_cookie_and_the_next_request_gets_a_new_id(
    client: TestApp, keys: list[str] | None
) -> None:
    old_id = client.get("/set/str", {"value": json.dumps(STR)}).json["id"]

    response = client.get("/destroy")

    assert response.json == {"ok": True, "destroyed": True}
    value, attributes = cookie(response, "s")
    assert (value, attributes["expires"]) == ("", EPOCH)
    if keys is not None:
        assert cookie(response, "s.sig")[0] == ""
    assert "s" not in client.cookies and "s.sig" not in client.cookies

    again = client.get("/getall")
    assert again.json["id"] != old_id
    assert again.json["data"] == {}


def test_a_new_client_gets_a_new_session(client: TestApp) -> None:
    id = client.get("/set/str", {"value": json.dumps(STR)}).json["id"]
    other = TestApp(client.app)  # a fresh cookie jar

    response = other.get("/getall")

    assert response.json["id"] != id
    assert response.json["data"] == {}


# -- laziness ------------------------------------------------------------------------------------


def test_a_request_that_never_touches_the_session_gets_no_cookie_and_no_store_access(
    client: TestApp, store: CountingStore
) -> None:
    response = client.get("/noop")

    assert response.json == {"started": False}
    assert "Set-Cookie" not in response.headers
    assert store.calls == []


def test_an_established_session_is_not_resent_by_a_request_that_never_touches_it(
    client: TestApp, store: CountingStore
) -> None:
    client.get("/set/k", {"value": "1"})
    store.calls.clear()

    response = client.get("/noop")

    assert "Set-Cookie" not in response.headers
    assert store.calls == []


def test_showing_an_untouched_session_does_not_start_it(
    client: TestApp, store: CountingStore
) -> None:
    response = client.get("/repr")

    assert response.json["started"] is False
    assert "not started" in response.json["repr"]
    assert "not started" in response.json["html"]
    assert "Set-Cookie" not in response.headers
    assert store.calls == []


@pytest.mark.parametrize("route", ["/id", "/token"])
def test_reading_the_id_or_token_issues_the_session_with_one_store_write(
    client: TestApp, store: CountingStore, route: str
) -> None:
    response = client.get(route)

    token, _ = cookie(response, "s")
    assert token in next(iter(response.json.values()))
    assert store.calls == ["create"]  # strict: the store learns what was issued


@pytest.mark.parametrize("route", ["/id", "/token"])
def test_reading_the_id_of_an_established_session_asks_the_store_once(
    client: TestApp, store: CountingStore, route: str
) -> None:
    client.get("/set/k", {"value": "1"})
    store.calls.clear()

    response = client.get(route)

    assert cookie(response, "s")[0] in next(iter(response.json.values()))
    assert store.calls == ["extend"]  # is it live? (and the idle expiry renewed)


@pytest.mark.parametrize(
    ("route", "calls"),
    # /get and /getall read session.id before the operation: confirming it is one call.
    [("/get/k", ["extend", "get"]), ("/getall", ["extend", "get_all"]),
     ("/set/k?value=1", ["set"]),
     ("/del/k", ["delete"]), ("/delall", ["delete_all", "create"]), ("/touch", ["extend"]),
     ("/destroy", ["delete_all"])],
)
def test_each_method_of_an_established_session_makes_exactly_one_store_call(
    client: TestApp, store: CountingStore, route: str, calls: list[str]
) -> None:
    client.get("/set/x", {"value": "1"})
    store.calls.clear()

    response = client.get(route)

    # Strict ids cost no call of their own: the operation itself says "live".
    # (/delall reads the id afterwards: that issues a fresh session.)
    assert store.calls == calls
    assert "s" in [name for name, _, _ in set_cookies(response)]


def test_a_new_visitors_first_operation_issues_the_session_then_makes_its_call(
    client: TestApp, store: CountingStore,
) -> None:
    client.get("/set/k", {"value": "1"})

    assert store.calls == ["create", "set"]


def test_a_touched_session_is_resent_with_a_sliding_expiry(keys: list[str] | None) -> None:
    clock = FakeClock(T0)
    client = TestApp(generic_session.filter(MemoryStore(), keys=keys, clock=clock)(routes))
    first = client.get("/set/k", {"value": "1"})

    clock.now = T0 + 1000
    second = client.get("/get/k")
    clock.now = T0 + 2000
    untouched = client.get("/noop")

    assert cookie(second, "s")[0] == cookie(first, "s")[0]
    assert expires_at(cookie(first, "s")[1]) == T0 + TWO_WEEKS
    assert expires_at(cookie(second, "s")[1]) == T0 + 1000 + TWO_WEEKS
    if keys is not None:
        assert expires_at(cookie(second, "s.sig")[1]) == T0 + 1000 + TWO_WEEKS
    assert "Set-Cookie" not in untouched.headers


def test_a_health_check_answers_while_the_store_is_down(dead_store: RedisStore) -> None:
    client = TestApp(generic_session.filter(dead_store)(routes))

    assert client.get("/noop").json == {"started": False}


# -- Bottle --------------------------------------------------------------------------------------


def make_bottle_app(*, catchall: bool = True) -> bottle.Bottle:
    app = bottle.Bottle()
    app.config["catchall"] = catchall

    @app.get("/same")
    def same() -> dict[str, Any]:
        session = bottle.request.session
        same = session is bottle.request.environ[generic_session.ENVIRON_KEY]
        return {"same": same, "id": session.id}

    @app.get("/set/<key>/<value>")
    def set_value(key: str, value: str) -> dict[str, Any]:
        bottle.request.session.set(key, value)
        return {"ok": True}

    @app.get("/get/<key>")
    def get_value(key: str) -> dict[str, Any]:
        return {"value": bottle.request.session.get(key)}

    return app


def test_bottle_request_session_is_the_environs_session() -> None:
    client = TestApp(generic_session.filter(MemoryStore(), keys=KEYS)(make_bottle_app()))

    response = client.get("/same")

    assert response.json["same"] is True
    assert response.json["id"] == "session:" + cookie(response, "s")[0]


def test_a_bottle_app_keeps_values_between_requests() -> None:
    client = TestApp(generic_session.filter(MemoryStore(), keys=KEYS)(make_bottle_app()))

    client.get("/set/foo/bar")

    assert client.get("/get/foo").json == {"value": "bar"}
    assert TestApp(client.app).get("/get/foo").json == {"value": None}  # another client


def test_a_bottle_app_on_a_dead_store_answers_503_in_plain_text(dead_store: RedisStore) -> None:
    client = TestApp(generic_session.filter(dead_store)(make_bottle_app(catchall=False)))

    response = client.get("/get/foo", status=503, expect_errors=True)

    assert response.content_type == "text/plain"
    assert response.text == "503 Service Unavailable: the session store is unavailable\n"
    assert "Traceback" not in response.text
    assert "Set-Cookie" not in response.headers  # no cookie for a session that failed
    # The cause goes to the server's error log, naming the store's address.
    assert re.search(rf"generic_session: RedisStore at {re.escape(dead_store.address)}: "
                     r"\w+ failed", response.errors)


def test_a_plain_wsgi_app_on_a_dead_store_answers_503(dead_store: RedisStore) -> None:
    client = TestApp(generic_session.filter(dead_store)(routes))

    response = client.get("/set/k", {"value": "1"}, status=503, expect_errors=True)

    assert response.text.startswith("503 Service Unavailable")


def test_a_store_that_hangs_answers_503_once_its_timeout_passes(hung_store: RedisStore) -> None:
    client = TestApp(generic_session.filter(hung_store)(routes))
    started = time.monotonic()

    response = client.get("/set/k", {"value": "1"}, status=503, expect_errors=True)

    assert time.monotonic() - started < 2  # its 0.3 s socket timeout, not a hung request
    assert response.text == "503 Service Unavailable: the session store is unavailable\n"
    assert "Set-Cookie" not in response.headers
    assert (f"generic_session: RedisStore at {hung_store.address}: create failed: TimeoutError: "
            in response.errors)


def headers_then_session(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(environ["generic_session.session"].get("k")).encode()]


def test_a_store_error_after_start_response_still_answers_503(dead_store: RedisStore) -> None:
    client = TestApp(generic_session.filter(dead_store)(headers_then_session))

    response = client.get("/", status=503, expect_errors=True)

    assert response.content_type == "text/plain"
    assert response.text.startswith("503 Service Unavailable")


def streamed(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """A generator app: its body, start_response included, runs as the server iterates."""
    session = environ["generic_session.session"]
    start_response("200 OK", [("Content-Type", "application/json")])
    yield json.dumps(session.get("k")).encode()


def test_a_generator_app_on_a_dead_store_answers_503(dead_store: RedisStore) -> None:
    client = TestApp(generic_session.filter(dead_store)(streamed))

    response = client.get("/", status=503, expect_errors=True)

    assert response.text.startswith("503 Service Unavailable")


# -- one Set-Cookie per cookie name --------------------------------------------------------------


@pytest.mark.parametrize("established", [False, True], ids=["fresh-client", "established"])
def test_destroy_sends_only_the_clearing_cookie_for_each_name(
    client: TestApp, keys: list[str] | None, established: bool
) -> None:
    if established:
        client.get("/set/k", {"value": "1"})

    response = client.get("/destroy")

    names = [name for name, _, _ in set_cookies(response)]
    assert names.count("s") == 1  # the start's Set-Cookie is dropped: the last one wins
    assert len(names) == len(set(names)) == (1 if keys is None else 2)
    for name in names:
        value, attributes = cookie(response, name)
        assert (value, attributes["expires"]) == ("", EPOCH)


def test_a_tampered_signature_gets_one_valid_signature_cookie() -> None:
    client = TestApp(generic_session.filter(MemoryStore(), keys=KEYS)(routes))
    token = client.get("/set/k", {"value": '"private"'}).json["id"].removeprefix("session:")
    attacker = TestApp(client.app)

    response = attacker.get("/get/k", headers={"Cookie": f"s={token}; s.sig=forged"})

    assert response.json["value"] is None
    new_token, _ = cookie(response, "s")
    assert new_token != token
    check_signature(response, KEYS, new_token)


def test_a_cookie_signed_with_the_older_key_is_resigned_once_with_the_newer() -> None:
    client = TestApp(generic_session.filter(MemoryStore(), keys=KEYS)(routes))
    token = client.get("/set/k", {"value": '"kept"'}).json["id"].removeprefix("session:")
    old_signature = Keygrip([KEYS[1]]).sign(f"s={token}")
    other = TestApp(client.app)

    response = other.get("/get/k", headers={"Cookie": f"s={token}; s.sig={old_signature}"})

    assert response.json["value"] == "kept"
    assert cookie(response, "s")[0] == token
    check_signature(response, KEYS, token)


# -- options checked at filter() time ------------------------------------------------------------


def test_cookies_is_refused_by_the_filter() -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'cookies'"):
        generic_session.middleware(MemoryStore(), cookies=None)  # type: ignore[call-arg]


STORE_METHODS = ("get", "get_all", "set", "delete", "delete_all", "extend")


@pytest.mark.parametrize("missing", STORE_METHODS)
def test_a_store_missing_a_method_is_refused_naming_the_method(missing: str) -> None:
    # Only checked, never run: each method it has is a stub.
    methods = {name: lambda self, *args: None for name in STORE_METHODS if name != missing}
    partial_store = type("PartialStore", (), methods)()

    with pytest.raises(TypeError, match=rf"has no {missing}\(\) method"):
        generic_session.filter(partial_store)


def test_middleware_is_another_name_for_filter() -> None:
    client = TestApp(generic_session.middleware(MemoryStore())(routes))

    assert URL_SAFE_TOKEN.fullmatch(cookie(client.get("/id"), "s")[0])
    assert generic_session.middleware is generic_session.filter


def test_an_expire_too_far_for_a_cookie_date_is_refused_at_filter_time() -> None:
    with pytest.raises(ValueError, match=r"expire"):
        generic_session.filter(MemoryStore(), expire=1e20)


# -- a session used after start_response ---------------------------------------------------------


def start_response_first(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """A common WSGI style: headers first, then the work, then the body as a list."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    environ["generic_session.session"].set("k", "v")
    return [b"stored"]


def test_a_session_first_used_after_start_response_but_before_the_body_sends_its_cookie() -> None:
    store = MemoryStore()
    client = TestApp(generic_session.filter(store)(start_response_first))

    response = client.get("/")

    token, _ = cookie(response, "s")
    assert store.get("session:" + token, "k", 60) == "v"


# -- Vary: Cookie --------------------------------------------------------------------------------


def app_sending(headers: list[tuple[str, str]], *, touch: bool) -> Callable[..., Iterable[bytes]]:
    """An app answering 200 with ``headers`` (after a Content-Type); ``touch``: it sets a value."""
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if touch:
            environ["generic_session.session"].set("k", "v")
        start_response("200 OK", [("Content-Type", "text/plain"), *headers])
        return [b"ok"]

    return app


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], ["Cookie"]),
        ([("Vary", "Accept-Encoding")], ["Accept-Encoding, Cookie"]),
        ([("Vary", "Cookie")], ["Cookie"]),
        ([("vary", "accept-encoding, cookie")], ["accept-encoding, cookie"]),
        ([("Vary", "Accept-Encoding,COOKIE")], ["Accept-Encoding,COOKIE"]),
        ([("Vary", "*")], ["*"]),
    ],
    ids=["none", "accept-encoding", "cookie", "lower-case-list", "upper-case-no-space", "star"],
)
def test_a_response_that_sends_the_session_cookie_varies_on_cookie_once(
    headers: list[tuple[str, str]], expected: list[str]
) -> None:
    client = TestApp(validator(generic_session.filter(MemoryStore())(app_sending(headers,
                                                                                 touch=True))))

    response = client.get("/")

    assert URL_SAFE_TOKEN.fullmatch(cookie(response, "s")[0])
    assert response.headers.getall("Vary") == expected


SHARED_HEADERS = [("Content-Type", "text/plain"), ("Vary", "Accept-Encoding")]


def shared_headers_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """An app answering every request with the same (module-level) header list."""
    environ["generic_session.session"].set("k", "v")
    start_response("200 OK", SHARED_HEADERS)
    return [b"ok"]


def test_the_apps_own_header_list_is_never_changed_by_the_cookie_or_vary() -> None:
    client = TestApp(validator(generic_session.filter(MemoryStore())(shared_headers_app)))

    first, second = client.get("/"), TestApp(client.app).get("/")

    assert SHARED_HEADERS == [("Content-Type", "text/plain"), ("Vary", "Accept-Encoding")]
    for response in (first, second):
        assert response.headers.getall("Vary") == ["Accept-Encoding, Cookie"]
        assert len(response.headers.getall("Set-Cookie")) == 1


@pytest.mark.parametrize("headers", [[], [("Vary", "Accept-Encoding")]], ids=["none", "own"])
def test_a_response_that_never_touches_the_session_gets_no_vary_cookie(
    headers: list[tuple[str, str]],
) -> None:
    client = TestApp(validator(generic_session.filter(MemoryStore())(app_sending(headers,
                                                                                 touch=False))))

    response = client.get("/")

    assert "Set-Cookie" not in response.headers
    assert response.headers.getall("Vary") == [value for _, value in headers]


# -- generator apps, bodies with close(), start_response (PEP 3333) ----------------------------
#
# The server's side of these calls is ``ServerSide``, under ``wsgiref.validate.validator``
# wrapped around the filter: the validator checks, as a strict server would, that what
# the filter hands on keeps PEP 3333 (statuses, headers, start_response before the first
# chunk, close() called).


class ServerSide:
    """The server's end of one WSGI call: records each start_response and each write()."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, list[tuple[str, str]]]] = []
        self.written: list[bytes] = []

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        self.responses.append((status, list(headers)))
        return self.write

    def write(self, data: bytes) -> None:
        assert self.responses, "write() before start_response()"  # as wsgiref checks
        self.written.append(data)


def call(app: Callable[..., Iterable[bytes]], server: ServerSide) -> Any:
    """Call ``app`` as a server does, through the validator, with a plain GET's environ.

    Returns the validator's wrapper of the response: iterate it, then close() it.
    """
    return validator(app)(Request.blank("/").environ, server.start_response)


class Body:
    """A response body that is an object with close(), as frameworks return; counts close().

    ``before`` runs when iteration starts: a body that starts the response lazily,
    as a generator app does.
    """

    def __init__(self, chunks: list[bytes], before: Callable[[], object] | None = None) -> None:
        self.chunks = chunks
        self.before = before
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        if self.before is not None:
            self.before()
        return iter(self.chunks)

    def close(self) -> None:
        self.closed += 1


def lazy_body_app(bodies: list[Body]) -> Callable[..., Iterable[bytes]]:
    """An app returning a Body that starts the response and uses the session when iterated."""
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        def start() -> None:
            start_response("200 OK", [("Content-Type", "text/plain")])
            environ["generic_session.session"].set("k", "v")

        bodies.append(Body([b"lazy ", b"body"], before=start))
        return bodies[-1]

    return app


def test_a_lazy_body_closed_by_the_server_without_being_iterated_is_closed_too() -> None:
    store, server, bodies = CountingStore(), ServerSide(), list[Body]()
    response = call(generic_session.filter(store)(lazy_body_app(bodies)), server)

    response.close()  # a client that went away, say: the server never iterates

    assert [body.closed for body in bodies] == [1]
    assert server.responses == []  # nothing was started...
    assert store.calls == []  # ...nor stored


def test_a_lazy_body_iterated_to_the_end_sends_the_cookie_and_is_closed_once() -> None:
    store, server, bodies = CountingStore(), ServerSide(), list[Body]()
    response = call(generic_session.filter(store)(lazy_body_app(bodies)), server)

    chunks = list(response)
    response.close()

    assert chunks == [b"lazy ", b"body"]
    assert [body.closed for body in bodies] == [1]
    [(status, headers)] = server.responses
    assert status == "200 OK"
    assert sorted(name for name, _ in headers) == ["Cache-Control", "Content-Type", "Set-Cookie",
                                                   "Vary"]
    assert store.calls == ["create", "set"]


def session_then_chunks(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    environ["generic_session.session"].set("k", "v")
    yield b"one, "
    yield b"two"


def test_a_generator_app_using_the_session_before_its_first_chunk_sends_the_cookie() -> None:
    store = MemoryStore()
    client = TestApp(validator(generic_session.filter(store)(session_then_chunks)))

    response = client.get("/")

    assert response.text == "one, two"
    token, _ = cookie(response, "s")
    assert store.get("session:" + token, "k", 60) == "v"
    assert response.headers["Vary"] == "Cookie"


def chunk_then_session(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first"
    environ["generic_session.session"].set("k", "v")
    yield b"never sent"


def test_a_generator_app_using_the_session_only_after_its_first_chunk_gets_session_error() -> None:
    store, server = CountingStore(), ServerSide()
    response = call(generic_session.filter(store)(chunk_then_session), server)
    chunks = iter(response)

    assert next(chunks) == b"first"
    # It surfaces where the server iterates the body, with the headers long gone.
    with pytest.raises(SessionError, match=r"^cookie 's' cannot be sent: the response headers "
                       r"are already out; use the session before the app returns its body "
                       r"\(or yields its first chunk\)$"):
        next(chunks)
    response.close()

    assert server.responses == [("200 OK", [("Content-Type", "text/plain")])]  # no cookie
    assert store.calls == []  # the value went nowhere, and said so


def test_a_session_refused_after_the_headers_went_out_refuses_every_later_use_too() -> None:
    store, outcomes = CountingStore(), []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        for _ in range(2):
            try:
                environ["generic_session.session"].set("k", "v")
                outcomes.append("stored")
            except SessionError:
                outcomes.append("refused")
        yield b"second"

    response = call(generic_session.filter(store)(app), ServerSide())
    try:
        assert list(response) == [b"first", b"second"]
    finally:
        response.close()

    assert outcomes == ["refused", "refused"]
    assert store.calls == []


def test_a_start_response_refused_by_the_server_closes_the_body_and_the_error_propagates() -> None:
    bodies: list[Body] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # A control character in a header: the (validating) server refuses it.
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Note", "bad\x01value")])
        environ["generic_session.session"].set("k", "v")
        bodies.append(Body([b"body"]))
        return bodies[-1]

    server = ServerSide()
    with pytest.raises(AssertionError, match=r"^Bad header value: 'bad\\x01value'"):
        call(generic_session.filter(MemoryStore())(app), server)

    assert [body.closed for body in bodies] == [1]
    assert server.responses == []


def test_a_second_start_response_without_exc_info_is_an_assertion_error() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"which one?"]

    server = ServerSide()
    with pytest.raises(AssertionError, match=r"^start_response called a second time without "
                       r"exc_info \(PEP 3333 allows that only to report an error\)$"):
        call(generic_session.filter(MemoryStore())(app), server)

    assert server.responses == []


def error_after_headers(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    environ["generic_session.session"].set("k", "v")
    try:
        raise RuntimeError("the page failed after its headers were set")
    except RuntimeError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                       sys.exc_info())
    return [b"error page"]


def test_start_response_again_with_exc_info_before_the_body_replaces_the_status() -> None:
    store, server = MemoryStore(), ServerSide()

    response = call(generic_session.filter(store)(error_after_headers), server)
    chunks = list(response)
    response.close()

    assert chunks == [b"error page"]
    [(status, headers)] = server.responses  # the server only ever saw the error
    assert status == "500 Internal Server Error"
    assert sorted(name for name, _ in headers) == ["Cache-Control", "Content-Type", "Set-Cookie",
                                                   "Vary"]
    assert ("Content-Type", "text/plain") in headers  # the error's headers, not the page's
    [token] = [parse_set_cookie(value)[1] for name, value in headers if name == "Set-Cookie"]
    assert store.get("session:" + token, "k", 60) == "v"


def legacy_writer(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """An app using the write() callable that start_response returns (PEP 3333's legacy API)."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    environ["generic_session.session"].set("k", "v")
    write(b"written, ")
    return [b"then returned"]


def test_the_legacy_write_callable_sends_the_headers_with_the_cookie_first() -> None:
    store, server = MemoryStore(), ServerSide()

    response = call(generic_session.filter(store)(legacy_writer), server)
    chunks = list(response)
    response.close()

    assert (server.written, chunks) == ([b"written, "], [b"then returned"])
    [(status, headers)] = server.responses  # once, before the write, with the cookie
    assert status == "200 OK"
    assert ("Vary", "Cookie") in headers
    [token] = [parse_set_cookie(value)[1] for name, value in headers if name == "Set-Cookie"]
    assert store.get("session:" + token, "k", 60) == "v"


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_requests_of_one_session_each_writing_its_own_keys_lose_none(
    keys: list[str] | None,
) -> None:
    store = MemoryStore()
    wsgi_app = generic_session.filter(store, keys=keys)(routes)
    owner = TestApp(wsgi_app)
    token = cookie(owner.get("/token"), "s")[0]
    threads, writes = 8, 25
    start = threading.Barrier(threads)
    errors: list[BaseException] = []
    tokens_sent: set[str] = set()

    def writer(label: int) -> None:
        try:
            client = TestApp(wsgi_app)
            for name, value in owner.cookies.items():
                client.set_cookie(name, value)
            start.wait()
            for n in range(writes):
                response = client.get(f"/set/t{label}-{n}", {"value": str(n)})
                tokens_sent.add(cookie(response, "s")[0])
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a lost update would show
    try:
        workers = [threading.Thread(target=writer, args=(label,)) for label in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)

    assert errors == []
    assert tokens_sent == {token}  # every request was in the same session
    data = owner.get("/getall").json["data"]
    assert data == {f"t{label}-{n}": n for label in range(threads) for n in range(writes)}


# -- property-based: any Cookie header, forged cookies -------------------------------------------

LATIN_1 = st.characters(min_codepoint=0, max_codepoint=255)
TOKEN_ALPHABET = string.ascii_letters + string.digits + "-_+/"
B64URL = string.ascii_letters + string.digits + "-_"
ANY_TOKEN_RUN = re.compile(r"[A-Za-z0-9+/_-]{40}")

cookie_values = st.one_of(
    st.text(LATIN_1, max_size=60),
    st.text(TOKEN_ALPHABET, min_size=38, max_size=42),
    st.text(TOKEN_ALPHABET + '"=;, ', max_size=50).map(lambda text: f'"{text}"'),
    st.sampled_from(["", '"', '""', "=", "\x00", "\x7f", "\xff", "\r\n"]),
)
cookie_pairs = st.builds(
    lambda name, value: f"{name}={value}",
    st.one_of(st.sampled_from(["s", "s.sig", " s ", "S", "s.sig.sig", "", "__Host-s"]),
              st.text(LATIN_1, max_size=10)),
    cookie_values,
)
cookie_headers = st.one_of(
    st.text(LATIN_1, max_size=200),
    st.builds(
        lambda separator, parts: separator.join(parts),
        st.sampled_from([";", "; ", ",", " ;", ";;"]),
        st.lists(st.one_of(cookie_pairs, st.text(LATIN_1, max_size=20)), max_size=8),
    ),
    # Huge headers: up to 64 KB of a repeated piece.
    st.builds(
        lambda piece, times: (piece * times)[:65536],
        st.one_of(cookie_pairs.map(lambda pair: pair + "; "),
                  st.text(LATIN_1, min_size=1, max_size=40)),
        st.integers(min_value=100, max_value=4096),
    ),
)


@pytest.mark.parametrize("keys", [None, KEYS], ids=["unsigned", "signed"])
@settings(max_examples=200, deadline=None)
@given(header=cookie_headers)
def test_any_cookie_header_gets_a_200_and_a_fresh_valid_token(
    keys: list[str] | None, header: str
) -> None:
    if keys is None:
        # Unsigned, a well-formed token anywhere in the header may rightly be reused.
        assume(not ANY_TOKEN_RUN.search(header))
    client = TestApp(generic_session.filter(MemoryStore(), keys=keys)(routes))

    response = client.get("/count", extra_environ={"HTTP_COOKIE": header})

    assert response.status_int == 200
    assert response.json == {"count": 1}
    token, attributes = cookie(response, "s")
    assert URL_SAFE_TOKEN.fullmatch(token)
    assert token not in header
    assert expires_at(attributes) > 0
    check_signature(response, keys, token)


@settings(max_examples=200, deadline=None)
@given(
    use_victims_token=st.booleans(),
    random_token=st.text(TOKEN_ALPHABET, min_size=40, max_size=40),
    signature=st.one_of(
        st.none(),
        st.text(B64URL, min_size=27, max_size=27),  # the shape of a real sha1 signature
        st.text(LATIN_1.filter(lambda c: c != ";"), max_size=60),
    ),
)
def test_a_forged_cookie_never_reaches_a_victims_data(
    use_victims_token: bool, random_token: str, signature: str | None
) -> None:
    victim = TestApp(generic_session.filter(MemoryStore(), keys=KEYS)(routes))
    victims_token = cookie(victim.get("/set/secret", {"value": '"victim data"'}), "s")[0]
    token = victims_token if use_victims_token else random_token
    forged = f"s={token}" if signature is None else f"s={token}; s.sig={signature}"

    response = TestApp(victim.app).get("/get/secret", extra_environ={"HTTP_COOKIE": forged})

    assert response.json["value"] is None
    new_token, _ = cookie(response, "s")
    assert new_token not in (victims_token, token)
    assert URL_SAFE_TOKEN.fullmatch(new_token)
    check_signature(response, KEYS, new_token)
    # The victim's session is untouched by the attempt.
    assert victim.get("/get/secret").json["value"] == "victim data"
