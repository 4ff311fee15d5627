"""The session lifecycle: strict ids, logout and login that stick, absolute lifetime, counters.

Every proof runs against each shipped store (in memory, a SQLite file, the test
redis-server), through the WSGI middleware: fixation, replay of an old cookie,
the request in flight that must not undo a logout or a login, ``max_lifetime``
(on an injected clock for Memory and SQLite, a short real one for Redis), and
``incr`` under concurrency over real HTTP.  Interleavings are forced with events.
"""

from __future__ import annotations

import http.cookiejar
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import webtest

import generic_session as gs
from tests.helpers import FakeClock, http_session, parse_set_cookie
from tests.test_concurrency_http import QuietHandler, ThreadingServer

KEYS = ["lifecycle test key"]
HOUR = 3600.0


# -- the app: a route per session operation ------------------------------------------------------


def routes(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session: gs.GenericSession = environ[gs.ENVIRON_KEY]
    parts = environ["PATH_INFO"].split("/")[1:]
    action, args = parts[0], parts[1:]
    if action == "set":
        session.set(args[0], args[1])
        body: Any = args[1]
    elif action == "get":
        body = session.get(args[0])
    elif action == "all":
        body = session.get_all()
    elif action == "incr":
        body = session.incr(args[0])
    elif action == "destroy":
        session.destroy()
        body = "bye"
    elif action == "login":  # the usual login: a new id, the cart kept
        session.regenerate()
        session.set("user", args[0])
        body = args[0]
    elif action == "id":
        body = session.id
    else:
        start_response("404 Not Found", [])
        return [b""]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    # Starting now: WebTest's cookie jar drops a cookie whose Expires is past.
    return FakeClock(float(int(time.time())))


@pytest.fixture
def store(kind: str, clock: FakeClock, tmp_path: Path,
          request: pytest.FixtureRequest) -> Iterator[gs.Store]:
    """Each shipped store; Memory and SQLite on the test's clock, Redis on the server's."""
    if kind == "memory":
        yield gs.MemoryStore(clock=clock)
    elif kind == "sqlite":
        sqlite_store = gs.SQLiteStore(tmp_path / "sessions.db", clock=clock)
        yield sqlite_store
        sqlite_store.close()
    else:
        yield gs.RedisStore(request.getfixturevalue("redis_client"))


def browser(store: gs.Store, clock: Callable[[], float] = time.time,
            **options: Any) -> webtest.TestApp:
    """A client with its own cookie jar, in front of the middleware."""
    return webtest.TestApp(gs.middleware(store, keys=KEYS, clock=clock, **options)(routes))


def cookie_of(response: webtest.TestResponse, name: str = "s") -> tuple[str, dict[str, str]]:
    found = [(value, attributes) for cookie, value, attributes
             in map(parse_set_cookie, response.headers.getall("Set-Cookie")) if cookie == name]
    assert len(found) == 1, response.headers.getall("Set-Cookie")
    return found[0]


def token_of(app: webtest.TestApp) -> str:
    return str(app.cookies["s"])


def plant(app: webtest.TestApp, token: str) -> None:
    """Put another browser's (or an attacker's) signed cookie into ``app``'s jar, where
    the server's own cookies go (WebTest's ``set_cookie`` would file it apart)."""
    for name, value in (("s", token), ("s.sig", gs.Keygrip(KEYS).sign(f"s={token}"))):
        app.cookiejar.set_cookie(http.cookiejar.Cookie(
            0, name, value, None, False, "localhost.local", False, False, "/", True, False,
            None, False, None, None, {}))


# -- strict ids ----------------------------------------------------------------------------------


def test_a_made_up_token_is_never_adopted(store: gs.Store) -> None:
    app = webtest.TestApp(gs.middleware(store)(routes))  # unsigned: anyone can write one
    made_up = "A" * 40
    plant(app, made_up)

    response = app.get("/set/k/v")

    assert cookie_of(response)[0] != made_up
    assert store.get_all("session:" + made_up, HOUR) == {}


def test_fixation_a_visit_then_a_login_leaves_the_attackers_cookie_worthless(
    store: gs.Store,
) -> None:
    attacker = browser(store)
    attacker.get("/set/theme/dark")  # a real, validly signed session of the attacker's
    planted = token_of(attacker)
    victim = browser(store)
    plant(victim, planted)

    assert victim.get("/get/theme").json == "dark"  # the planted session is used...
    victim.get("/login/alice")  # ...until the login gives it a new id

    assert token_of(victim) != planted
    assert victim.get("/get/user").json == "alice"
    assert victim.get("/get/theme").json == "dark"  # the data came along
    assert attacker.get("/get/user").json is None  # the attacker is not logged in
    assert token_of(attacker) != planted  # and got a fresh session
    assert store.get_all("session:" + planted, HOUR) == {}


def test_reading_the_id_only_establishes_the_session_as_in_node(store: gs.Store) -> None:
    app = browser(store)

    first = app.get("/id").json
    second = app.get("/id").json

    assert first == second == "session:" + token_of(app)


def test_without_strict_a_made_up_token_is_adopted_as_node_does(store: gs.Store) -> None:
    app = webtest.TestApp(gs.middleware(store, strict=False)(routes))
    plant(app, "A" * 40)

    assert app.get("/id").json == "session:" + "A" * 40


def test_strict_is_not_allowed_off_with_a_max_lifetime() -> None:
    with pytest.raises(ValueError, match=r"max_lifetime needs strict=True"):
        gs.middleware(gs.MemoryStore(), strict=False, max_lifetime=60)


# -- replay of an old cookie ---------------------------------------------------------------------


def replay(store: gs.Store, token: str) -> webtest.TestApp:
    app = browser(store)
    plant(app, token)
    return app


def test_the_cookie_of_a_destroyed_session_opens_nothing(store: gs.Store) -> None:
    app = browser(store)
    app.get("/set/user/alice")
    old = token_of(app)

    response = app.get("/destroy")

    assert cookie_of(response)[1]["expires"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    again = replay(store, old)
    assert again.get("/get/user").json is None
    assert token_of(again) != old
    assert store.get_all("session:" + old, HOUR) == {}


def test_the_cookie_of_a_regenerated_session_opens_nothing(store: gs.Store) -> None:
    app = browser(store)
    app.get("/set/user/guest")
    old = token_of(app)

    app.get("/login/alice")

    again = replay(store, old)
    assert again.get("/get/user").json is None
    assert again.get("/all").json == {}


def test_the_cookie_of_an_expired_session_opens_nothing(
    store: gs.Store, kind: str, clock: FakeClock,
) -> None:
    expire = 1.5 if kind == "redis" else HOUR  # whole seconds: Expires has no fraction
    app = browser(store, time.time if kind == "redis" else clock, expire=expire)
    app.get("/set/user/alice")
    old = token_of(app)

    if kind == "redis":
        time.sleep(expire + 0.3)  # Redis expires by its own clock
    else:
        clock.advance(expire + 1)

    again = replay(store, old)
    assert again.get("/get/user").json is None
    assert token_of(again) != old


# -- the request in flight -----------------------------------------------------------------------


def in_flight(store: gs.Store, ending: str) -> tuple[webtest.TestResponse, str, str]:
    """Request B reads the session, then request A ends it (``destroy`` or ``login``),
    then B writes and answers.  Returns B's response, the old token and A's new one."""
    b_has_read = threading.Event()
    a_is_done = threading.Event()
    outcome: list[webtest.TestResponse] = []

    def slow_request(environ: dict[str, Any], start_response: Callable[..., Any]
                     ) -> Iterable[bytes]:
        session: gs.GenericSession = environ[gs.ENVIRON_KEY]
        session.get("user")  # the app refreshes who the user is, as many do...
        b_has_read.set()
        assert a_is_done.wait(10)
        session.set("user", "alice")  # ...and writes it back: this must not log in again
        start_response("200 OK", [])
        return [b"written"]

    a = browser(store)
    a.get("/set/user/alice")
    old = token_of(a)
    b = webtest.TestApp(gs.middleware(store, keys=KEYS)(slow_request))
    plant(b, old)

    thread = threading.Thread(target=lambda: outcome.append(b.get("/", expect_errors=True)))
    thread.start()
    assert b_has_read.wait(10)
    a.get("/destroy" if ending == "destroy" else "/login/alice")
    a_is_done.set()
    thread.join(10)
    return outcome[0], old, token_of(a) if ending != "destroy" else ""


@pytest.mark.parametrize("ending", ["destroy", "login"])
def test_a_request_in_flight_cannot_undo_a_logout_or_a_login(store: gs.Store, ending: str) -> None:
    response, old, new = in_flight(store, ending)

    assert response.status_int == 400
    assert response.headers.getall("Set-Cookie") == []
    assert store.get_all("session:" + old, HOUR) == {}
    again = replay(store, old)
    assert again.get("/all").json == {}
    if ending == "login":
        assert store.get_all("session:" + new, HOUR) == {"user": "alice"}


def test_session_ended_is_a_session_error_with_no_secret_in_it(store: gs.Store) -> None:
    session = gs.GenericSession({}, [], store)
    session.set("k", "v")
    gs.GenericSession({"HTTP_COOKIE": f"s={session.token}"}, [], store).destroy()

    with pytest.raises(gs.SessionEnded, match=r"session\.set refused: the session ended") as info:
        session.set("k", "again")
    assert session.token not in str(info.value)
    assert session.get("k") is None  # a read finds nothing
    assert store.get_all(session.id, HOUR) == {}


# -- regenerate ----------------------------------------------------------------------------------


def test_regenerate_keeps_the_data_under_a_new_id(store: gs.Store) -> None:
    headers: list[tuple[str, str]] = []
    session = gs.GenericSession({}, headers, store)
    session.set("cart", ["apple"])
    old = session.id

    session.regenerate()

    assert session.id != old
    assert session.get_all() == {"cart": ["apple"]}
    assert store.get_all(old, HOUR) == {}
    assert parse_set_cookie(headers[-1][1])[1] == session.token


def test_regenerate_that_fails_leaves_the_old_session_whole(tmp_path: Path) -> None:
    store = gs.SQLiteStore(tmp_path / "sessions.db", timeout=0.2)
    headers: list[tuple[str, str]] = []
    session = gs.GenericSession({}, headers, store)
    session.set("cart", ["apple"])
    old_token = session.token
    lock = sqlite3.connect(tmp_path / "sessions.db", timeout=0)
    lock.execute("BEGIN IMMEDIATE")  # another process writes: the store cannot, for now

    try:
        with pytest.raises(gs.StoreError, match=r"SQLiteStore at .*: rename failed"):
            session.regenerate()
    finally:
        lock.rollback()
        lock.close()

    assert session.token == old_token
    assert session.get_all() == {"cart": ["apple"]}
    sent = [parse_set_cookie(value)[1] for _, value in headers]
    assert sent[-2] != old_token  # the new cookie went first...
    assert sent[-1] == old_token  # ...and the old one was sent again after the failure
    store.close()


def test_regenerate_after_the_headers_are_out_changes_nothing(store: gs.Store) -> None:
    tokens: list[str] = []

    def streaming(environ: dict[str, Any], start_response: Callable[..., Any]
                  ) -> Iterator[bytes]:
        session = environ[gs.ENVIRON_KEY]
        session.set("cart", "apple")
        tokens.append(session.token)
        start_response("200 OK", [])
        yield b"first chunk"
        with pytest.raises(gs.SessionError, match=r"headers are already out"):
            session.regenerate()
        assert session.token == tokens[0]
        assert session.get("cart") == "apple"
        yield b"second chunk"

    response = webtest.TestApp(gs.middleware(store, keys=KEYS)(streaming)).get("/")

    assert response.body == b"first chunksecond chunk"
    assert store.get("session:" + tokens[0], "cart", HOUR) == "apple"


def test_an_existing_session_first_used_after_the_headers_are_out_keeps_its_write(
    store: gs.Store,
) -> None:
    # Once failed: the write was stored, then re-sending the sliding cookie raised
    # SessionError, so the app was told a stored write had failed.
    outcome: list[str] = []

    def streaming(environ: dict[str, Any], start_response: Callable[..., Any]
                  ) -> Iterator[bytes]:
        session = environ[gs.ENVIRON_KEY]
        start_response("200 OK", [])
        yield b"first chunk"
        if environ["PATH_INFO"] == "/late":
            try:
                session.set("late", "yes")
                outcome.append("stored")
            except gs.SessionError as error:
                outcome.append(f"refused: {error}")

    def login(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        environ[gs.ENVIRON_KEY].set("user", "alice")
        start_response("200 OK", [])
        return [b"in"]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return (login if environ["PATH_INFO"] == "/login" else streaming)(environ,
                                                                          start_response)

    client = webtest.TestApp(gs.middleware(store, keys=KEYS)(app))
    client.get("/login")
    token = client.cookies["s"]
    response = client.get("/late")

    assert outcome == ["stored"]
    assert "Set-Cookie" not in response.headers
    assert store.get("session:" + token, "late", HOUR) == "yes"


# -- the absolute lifetime -----------------------------------------------------------------------


def test_max_lifetime_ends_an_active_session_on_time(
    store: gs.Store, kind: str, clock: FakeClock,
) -> None:
    lifetime = 1.5 if kind == "redis" else HOUR
    app = browser(store, time.time if kind == "redis" else clock, max_lifetime=lifetime)
    response = app.get("/set/user/alice")
    first = token_of(app)
    issued = clock()
    expires = cookie_of(response)[1]["expires"]

    # Active all along (each request renews the idle expiry), and yet it ends on time.
    for _ in range(3):
        if kind == "redis":
            time.sleep(lifetime * 0.4)  # Redis ends it by its own clock
        else:
            clock.advance(lifetime * 0.4)
        replay(store, first).get("/get/user")

    # The store refuses the old cookie, whatever the browser kept.
    again = replay(store, first)
    assert again.get("/get/user").json is None
    assert token_of(again) != first
    if kind != "redis":  # the cookie never outlives the deadline
        assert parsedate_to_datetime(expires).timestamp() == int(issued + lifetime)


def test_a_login_keeps_the_original_deadline(store: gs.Store, kind: str, clock: FakeClock) -> None:
    if kind == "redis":
        pytest.skip("the deadline is Redis' clock's: checked by the Redis lifetime test")
    app = browser(store, clock, max_lifetime=HOUR)
    first = app.get("/set/cart/apple")
    clock.advance(HOUR / 2)

    login = app.get("/login/alice")

    assert cookie_of(login)[1]["expires"] == cookie_of(first)[1]["expires"]
    clock.advance(HOUR / 2 + 1)
    assert app.get("/get/user").json is None  # a login does not lengthen its life


def test_a_cookie_that_is_not_persistent_has_no_expires_and_still_expires_on_the_server(
    store: gs.Store, kind: str, clock: FakeClock,
) -> None:
    if kind == "redis":
        pytest.skip("idle expiry on Redis is proven by the expired-cookie test")
    app = browser(store, clock, persistent=False, expire=60)
    response = app.get("/set/user/alice")

    assert "expires" not in cookie_of(response)[1]
    clock.advance(61)
    assert app.get("/get/user").json is None


def test_the_cookie_path_is_the_option_given(store: gs.Store) -> None:
    response = browser(store, path="/app").get("/set/k/v")

    assert cookie_of(response)[1]["path"] == "/app"
    assert cookie_of(response, "s.sig")[1]["path"] == "/app"


# -- counters ------------------------------------------------------------------------------------


def test_incr_counts_from_zero_and_refuses_what_is_not_an_integer(store: gs.Store) -> None:
    session = gs.GenericSession({}, [], store)

    assert session.incr("visits") == 1
    assert session.incr("visits", 41) == 42
    assert session.get("visits") == 42
    session.set("name", "alice")
    with pytest.raises(TypeError, match=r"'name'"):
        session.incr("name")
    with pytest.raises(TypeError, match=r"amount must be an int, got float"):
        session.incr("visits", 1.5)  # type: ignore[arg-type]
    assert session.get("name") == "alice"


def test_incr_from_8_threads_over_http_loses_no_count(store: gs.Store) -> None:
    from wsgiref.simple_server import make_server

    httpd = make_server("127.0.0.1", 0, gs.middleware(store, keys=KEYS)(routes),
                        server_class=ThreadingServer, handler_class=QuietHandler)
    server = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    server.start()
    url = f"http://127.0.0.1:{httpd.server_port}"
    try:
        with http_session() as http:
            assert http.get(f"{url}/incr/n", timeout=30).json() == 1
            cookies = http.cookies
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def client() -> None:
            try:
                with http_session() as http:
                    http.cookies.update(cookies)
                    start.wait(30)
                    for _ in range(50):
                        assert http.get(f"{url}/incr/n", timeout=30).status_code == 200
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors[0]
        with http_session() as http:
            http.cookies.update(cookies)
            assert http.get(f"{url}/get/n", timeout=30).json() == 401  # 1 + 8 x 50
    finally:
        httpd.shutdown()
        httpd.server_close()
        server.join(10)


# -- caches --------------------------------------------------------------------------------------


def test_a_response_that_sets_the_cookie_is_private_to_shared_caches(store: gs.Store) -> None:
    app = browser(store)

    first = app.get("/set/k/v")

    assert first.headers["Cache-Control"] == "private"
    assert first.headers["Vary"] == "Cookie"


def test_an_apps_own_cache_control_is_kept() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        environ[gs.ENVIRON_KEY].set("k", "v")
        start_response("200 OK", [("Cache-Control", "no-store")])
        return [b""]

    response = webtest.TestApp(gs.middleware(gs.MemoryStore())(app)).get("/")

    assert response.headers.getall("Cache-Control") == ["no-store"]


# -- a store with the six Node operations only ---------------------------------------------------


class SixOperationStore:
    """The Store API a user writes from the README: no lifecycle operations."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    def __repr__(self) -> str:
        return f"SixOperationStore(sessions={len(self.data)})"

    def get(self, id: str, key: str, expire: float) -> Any:
        self.calls.append("get")
        return json.loads(json.dumps(self.data.get(id, {}).get(key)))

    def get_all(self, id: str, expire: float) -> dict[str, Any]:
        self.calls.append("get_all")
        return dict(json.loads(json.dumps(self.data.get(id, {}))))

    def set(self, id: str, key: str, value: Any, expire: float) -> None:
        self.calls.append("set")
        self.data.setdefault(id, {})[key] = json.loads(gs.encode_json(key, value))

    def delete(self, id: str, key: str, expire: float) -> None:
        self.calls.append("delete")
        self.data.get(id, {}).pop(key, None)

    def delete_all(self, id: str) -> None:
        self.calls.append("delete_all")
        self.data.pop(id, None)

    def extend(self, id: str, expire: float) -> None:
        self.calls.append("extend")


def test_a_six_operation_store_gets_strict_ids_for_one_extra_read() -> None:
    store = SixOperationStore()
    app = browser(store)
    app.get("/set/user/alice")
    store.calls.clear()

    assert app.get("/get/user").json == "alice"
    assert store.calls == ["get", "get"]  # the issue mark, then the value
    assert app.get("/all").json == {"user": "alice"}  # the mark is not shown
    intruder = webtest.TestApp(gs.middleware(store)(routes))
    plant(intruder, "A" * 40)
    assert intruder.get("/get/user").json is None
    assert token_of(intruder) != "A" * 40


def test_a_six_operation_store_says_incr_needs_the_operation() -> None:
    session = gs.GenericSession({}, [], SixOperationStore())

    with pytest.raises(TypeError, match=r"session\.incr needs a store with an incr\(\) "
                                        r"operation, and SixOperationStore has none"):
        session.incr("n")


def test_the_reserved_key_cannot_be_set_by_an_app() -> None:
    session = gs.GenericSession({}, [], SixOperationStore())

    with pytest.raises(ValueError, match=r"is reserved for the session's own use"):
        session.set("\x00generic_session", "forged")
