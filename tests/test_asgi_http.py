"""The ASGI middleware under a real uvicorn, over real HTTP on loopback.

Starlette and FastAPI apps, served by ``serve_asgi`` (a uvicorn in a thread of this
process, so the test shares stores and events with the app), driven by httpx and by
requests: the README example, laziness, the lifecycle rules (strict ids, a logout
and a login that a request in flight cannot undo, ``max_lifetime``, ``incr``),
streaming responses, a store that is down, lifespan, websockets, 200 concurrent
writers per store, a WSGI app and an ASGI app sharing one Redis, and an event loop
that goes on serving while a blocking store waits in ``ThreadedStore``.

Interleavings are forced with events: a request parks in a worker thread
(``asyncio.to_thread(event.wait)``), so that the event loop serves the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import requests
from fastapi import Depends, FastAPI
from fastapi import Request as FastAPIRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import connect as websocket_connect

import generic_session as gs
from tests.helpers import FakeClock, RedisServer, UvicornServer, http_session, parse_set_cookie

KEYS = ["asgi http test key", "an older one"]
TIMEOUT = 10  # seconds: for a request, or a wait on an event; never reached when all is well
HOUR = 3600.0
NEEDS_ASYNC_REDIS = pytest.mark.skipif(not hasattr(gs, "AsyncRedisStore"),
                                       reason="AsyncRedisStore not yet on this branch")
Serve = Callable[..., UvicornServer]


# --------------------------------------------------------------------------
# stores the tests look into


class CountingStore:
    """An AsyncStore over a real store (through ThreadedStore) that records each call's name."""

    def __init__(self, store: gs.Store) -> None:
        self.inner = gs.ThreadedStore(store)
        self.calls: list[str] = []

    async def _do(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(name)
        return await getattr(self.inner, name)(*args, **kwargs)

    async def get(self, id: str, key: str, expire: float, **live: bool) -> Any:
        return await self._do("get", id, key, expire, **live)

    async def get_all(self, id: str, expire: float, **live: bool) -> dict[str, Any]:
        result: dict[str, Any] = await self._do("get_all", id, expire, **live)
        return result

    async def set(self, id: str, key: str, value: Any, expire: float, **live: bool) -> None:
        await self._do("set", id, key, value, expire, **live)

    async def delete(self, id: str, key: str, expire: float, **live: bool) -> None:
        await self._do("delete", id, key, expire, **live)

    async def delete_all(self, id: str) -> None:
        await self._do("delete_all", id)

    async def extend(self, id: str, expire: float, **live: bool) -> None:
        await self._do("extend", id, expire, **live)

    async def create(self, id: str, expire: float, lifetime: float | None = None) -> None:
        await self._do("create", id, expire, lifetime)

    async def incr(self, id: str, key: str, amount: int, expire: float, **live: bool) -> int:
        result: int = await self._do("incr", id, key, amount, expire, **live)
        return result

    async def rename(self, id: str, new_id: str, expire: float) -> float | None:
        result: float | None = await self._do("rename", id, new_id, expire)
        return result


class Gate:
    """Where a request waits for the test: ``arrived`` once it is there, then it waits
    for ``opened``, in a worker thread, so the event loop goes on serving others."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.opened = threading.Event()

    def wait_here(self) -> None:
        """Block the calling thread (never the event loop's) until the test opens the gate."""
        self.arrived.set()
        assert self.opened.wait(TIMEOUT), "the test never opened the gate"

    async def park(self) -> None:
        await asyncio.to_thread(self.wait_here)


class SlowSQLiteStore(gs.SQLiteStore):
    """A real SQLiteStore whose ``get`` of the key ``"slow"`` waits at a gate first: a
    blocking store operation that takes as long as the test wants."""

    gate: Gate

    def get(self, id: str, key: str, expire: float, *, live: bool = False) -> Any:
        if key == "slow":
            self.gate.wait_here()
        return super().get(id, key, expire, live=live)


# --------------------------------------------------------------------------
# the apps


def _session(request: Request | WebSocket) -> gs.AsyncGenericSession:
    session: gs.AsyncGenericSession = request.scope["session"]
    return session


async def set_value(request: Request) -> JSONResponse:
    await _session(request).set(request.path_params["k"], request.path_params["v"])
    return JSONResponse(request.path_params["v"])


async def get_value(request: Request) -> JSONResponse:
    return JSONResponse(await _session(request).get(request.path_params["k"]))


async def get_all(request: Request) -> JSONResponse:
    return JSONResponse(await _session(request).get_all())


async def incr(request: Request) -> JSONResponse:
    return JSONResponse(await _session(request).incr(request.path_params["k"]))


async def logout(request: Request) -> JSONResponse:
    await _session(request).destroy()
    return JSONResponse("bye")


async def login(request: Request) -> JSONResponse:
    await _session(request).regenerate(keep_data=True)
    return JSONResponse(await _session(request).get_all())


async def set_five_at_once(request: Request) -> JSONResponse:
    session = _session(request)
    await asyncio.gather(*[session.set(f"k{i}", i) for i in range(5)])  # five tasks, one session
    return JSONResponse(await session.get_all())


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def stream_using_the_session_first(request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        await _session(request).set("streamed", "yes")  # before the first chunk
        yield b"one "
        yield b"two"

    return StreamingResponse(body(), media_type="text/plain")


async def stream_using_the_session_late(request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"first\n"
        try:
            await _session(request).set("late", "yes")  # the headers are gone
            yield b"stored"
        except gs.SessionError as error:
            yield f"{type(error).__name__}: {error}".encode()

    return StreamingResponse(body(), media_type="text/plain")


async def websocket_session(websocket: WebSocket) -> None:
    await websocket.accept()
    session = _session(websocket)
    try:
        seen = await session.get("user")
        await session.set("over", "websocket")
        await websocket.send_json({"user": seen, "id_known": session.id.startswith("session:")})
    except gs.SessionError as error:
        await websocket.send_json({"error": f"{type(error).__name__}: {error}"})
    await websocket.close()


def starlette_app(store: Any, *, gate: Gate | None = None,
                  on_shutdown: Sequence[Callable[[], Awaitable[object]]] = (),
                  **options: Any) -> Starlette:
    """A Starlette app with every route the tests use, behind ASGIMiddleware; it awaits
    each of *on_shutdown* at the end of its lifespan, in the loop that served it."""
    routes = [
        Route("/set/{k}/{v}", set_value), Route("/get/{k}", get_value), Route("/all", get_all),
        Route("/incr/{k}", incr), Route("/logout", logout), Route("/login", login),
        Route("/five", set_five_at_once),
        Route("/health", health), Route("/stream/first", stream_using_the_session_first),
        Route("/stream/late", stream_using_the_session_late),
        WebSocketRoute("/ws", websocket_session),
    ]
    if gate is not None:
        async def set_after_the_gate(request: Request) -> JSONResponse:
            session = _session(request)
            await session.get("user")  # the session is live for this request ...
            await gate.park()  # ... which waits here while another one logs out or in
            await session.set(request.path_params["k"], request.path_params["v"])
            return JSONResponse("written")

        routes.append(Route("/gated-set/{k}/{v}", set_after_the_gate))
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for shutdown in on_shutdown:
            await shutdown()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(gs.ASGIMiddleware, store=store, keys=KEYS, **options)
    return app


async def fastapi_session(request: FastAPIRequest) -> gs.AsyncGenericSession:
    """The FastAPI dependency that hands a handler its session."""
    session: gs.AsyncGenericSession = request.session  # type: ignore[assignment]
    return session


Session = Annotated[gs.AsyncGenericSession, Depends(fastapi_session)]


def fastapi_app(store: Any, **options: Any) -> FastAPI:
    """The same routes (set, get, all, health) in FastAPI, the session by dependency."""
    app = FastAPI()

    @app.get("/set/{k}/{v}")
    async def set_it(k: str, v: str, session: Session) -> str:
        await session.set(k, v)
        return v

    @app.get("/get/{k}")
    async def get_it(k: str, session: Session) -> Any:
        return await session.get(k)

    @app.get("/all")
    async def get_everything(session: Session) -> dict[str, Any]:
        return await session.get_all()

    @app.get("/health")
    async def healthy() -> Response:
        return PlainTextResponse("ok")

    app.add_middleware(gs.ASGIMiddleware, store=store, keys=KEYS, **options)
    return app


FRAMEWORKS = {"starlette": starlette_app, "fastapi": fastapi_app}


@pytest.fixture(params=sorted(FRAMEWORKS))
def make_app(request: pytest.FixtureRequest) -> Callable[..., Any]:
    return FRAMEWORKS[request.param]


# --------------------------------------------------------------------------
# clients


def fetch(url: str, cookies: Any = None) -> requests.Response:
    """One GET with its own requests session (safe from any thread), sending *cookies*."""
    with http_session() as http:
        if cookies is not None:
            http.cookies.update(cookies)
        return http.get(url, timeout=TIMEOUT)


def set_cookies(response: requests.Response | httpx.Response) -> dict[str, str]:
    """{name: value} of the response's Set-Cookie headers."""
    if isinstance(response, httpx.Response):
        headers = response.headers.get_list("set-cookie")
    else:
        headers = [v for k, v in response.raw.headers.items() if k.lower() == "set-cookie"]
    return {name: value for name, value, _ in map(parse_set_cookie, headers)}


def signed_cookie(token: str) -> str:
    """The Cookie header of a browser holding *token*, signed with our key."""
    return f"s={token}; s.sig={gs.Keygrip(KEYS).sign(f's={token}')}"


# --------------------------------------------------------------------------
# the README example, laziness, a store that is down


def test_set_then_get_over_real_http_with_httpx_and_requests(
    serve_asgi: Serve, make_app: Callable[..., Any],
) -> None:
    server = serve_asgi(make_app(gs.MemoryStore()))

    with httpx.Client(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client:
        stored = client.get("/set/foo/bar")
        fetched = client.get("/get/foo")
    with http_session() as http:
        other_stored = http.get(f"{server.url}/set/foo/baz", timeout=TIMEOUT)
        other_fetched = http.get(f"{server.url}/get/foo", timeout=TIMEOUT)

    assert (stored.status_code, stored.json(), fetched.json()) == (200, "bar", "bar")
    assert sorted(set_cookies(stored)) == ["s", "s.sig"]
    assert (other_stored.json(), other_fetched.json()) == ("baz", "baz")  # its own session
    assert set_cookies(other_stored)["s"] != set_cookies(stored)["s"]


def test_a_health_check_gets_no_cookie_and_costs_no_store_access(
    serve_asgi: Serve, make_app: Callable[..., Any],
) -> None:
    store = CountingStore(gs.MemoryStore())
    server = serve_asgi(make_app(store))

    with http_session() as http:
        anonymous = http.get(f"{server.url}/health", timeout=TIMEOUT)
        calls_before_a_session = list(store.calls)
        http.get(f"{server.url}/set/k/v", timeout=TIMEOUT)
        store.calls.clear()
        with_cookie = http.get(f"{server.url}/health", timeout=TIMEOUT)

    for response in (anonymous, with_cookie):
        assert response.status_code == 200 and response.text == "ok"
        assert "set-cookie" not in response.headers
        assert "vary" not in response.headers
    assert calls_before_a_session == []
    assert store.calls == []  # a cookie alone does not make the store be asked


def test_a_store_that_is_down_answers_503_without_a_cookie(
    serve_asgi: Serve, make_app: Callable[..., Any], dead_store: gs.RedisStore,
) -> None:
    server = serve_asgi(make_app(gs.ThreadedStore(dead_store)))

    with http_session() as http:
        down = http.get(f"{server.url}/get/k", timeout=TIMEOUT)
        health_check = http.get(f"{server.url}/health", timeout=TIMEOUT)

    assert down.status_code == 503
    assert down.text == "503 Service Unavailable: the session store is unavailable\n"
    assert "set-cookie" not in down.headers
    assert health_check.status_code == 200  # what needs no session still works


# --------------------------------------------------------------------------
# the lifecycle rules


def test_a_made_up_token_is_not_adopted(serve_asgi: Serve) -> None:
    store = gs.MemoryStore()
    server = serve_asgi(starlette_app(store))
    made_up = "A" * 40  # well formed, validly signed, never issued

    response = httpx.get(f"{server.url}/set/k/v", headers={"Cookie": signed_cookie(made_up)},
                         trust_env=False, timeout=TIMEOUT)

    issued = set_cookies(response)["s"]
    assert response.status_code == 200 and issued != made_up
    assert store.get_all(f"session:{made_up}", HOUR) == {}
    assert store.get_all(f"session:{issued}", HOUR) == {"k": "v"}


def while_a_write_waits(url: str, gate: Gate, cookies: Any, path: str
                        ) -> tuple[requests.Response, requests.Response]:
    """Fetch ``path`` while a request of the same session, having read it, waits at
    ``gate`` before its write; then let it write.  Returns both responses."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(fetch, f"{url}/gated-set/cart/apples", cookies)
        assert gate.arrived.wait(TIMEOUT)  # it has read the session
        response = fetch(f"{url}{path}", cookies)
        gate.opened.set()
        return response, in_flight.result(timeout=TIMEOUT)


def test_a_logout_sticks_and_a_request_in_flight_cannot_undo_it(serve_asgi: Serve) -> None:
    store, gate = gs.MemoryStore(), Gate()
    server = serve_asgi(starlette_app(store, gate=gate))
    with http_session() as http:
        http.get(f"{server.url}/set/user/alice", timeout=TIMEOUT)
        cookies = http.cookies.copy()
    token = cookies["s"]

    logged_out, late_write = while_a_write_waits(server.url, gate, cookies, "/logout")
    replayed = fetch(f"{server.url}/get/user", cookies)

    assert logged_out.status_code == 200
    assert set_cookies(logged_out)["s"] == ""  # cleared on the client
    assert late_write.status_code == 400  # SessionEnded: nothing written
    assert "set-cookie" not in late_write.headers
    assert store.get_all(f"session:{token}", HOUR) == {}  # not brought back by the late write
    assert replayed.json() is None
    assert set_cookies(replayed)["s"] not in ("", token)  # a fresh session


def test_a_login_sticks_keeps_the_data_and_a_request_in_flight_cannot_undo_it(
    serve_asgi: Serve,
) -> None:
    store, gate = gs.MemoryStore(), Gate()
    server = serve_asgi(starlette_app(store, gate=gate))
    with http_session() as http:
        http.get(f"{server.url}/set/user/alice", timeout=TIMEOUT)
        cookies = http.cookies.copy()
    old = cookies["s"]

    logged_in, late_write = while_a_write_waits(server.url, gate, cookies, "/login")
    new = set_cookies(logged_in)["s"]
    after = fetch(f"{server.url}/all", {"s": new, "s.sig": set_cookies(logged_in)["s.sig"]})
    replayed = fetch(f"{server.url}/all", cookies)

    assert logged_in.json() == {"user": "alice"} and new != old
    assert late_write.status_code == 400
    assert after.json() == {"user": "alice"}  # the data moved, the late write did not land
    assert store.get_all(f"session:{old}", HOUR) == {}
    assert replayed.json() == {} and set_cookies(replayed)["s"] not in (old, new)


def test_max_lifetime_ends_an_active_session_on_the_injected_clock(serve_asgi: Serve) -> None:
    clock = FakeClock(float(int(time.time())))  # now: a cookie that expired is dropped
    store = gs.MemoryStore(clock=clock)
    server = serve_asgi(starlette_app(store, max_lifetime=HOUR, clock=clock))
    issued_at = clock()

    with httpx.Client(base_url=server.url, trust_env=False, timeout=TIMEOUT) as client:
        first = client.get("/set/k/v")
        clock.advance(HOUR / 2)
        halfway = client.get("/get/k")
        clock.advance(HOUR / 2)
        at_the_deadline = client.get("/get/k")

    _, token, attributes = parse_set_cookie(first.headers.get_list("set-cookie")[0])
    assert attributes["expires"] == email.utils.formatdate(issued_at + HOUR, usegmt=True)
    assert halfway.json() == "v"
    assert "set-cookie" not in halfway.headers  # the deadline does not slide
    assert at_the_deadline.json() is None
    assert set_cookies(at_the_deadline)["s"] != token  # a fresh session


def test_incr_counts_atomically_over_concurrent_requests(serve_asgi: Serve) -> None:
    store = gs.MemoryStore()
    server = serve_asgi(starlette_app(store))

    async def run() -> tuple[list[int], list[int]]:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=TIMEOUT,
                                     limits=httpx.Limits(max_connections=50)) as client:
            first = [(await client.get("/incr/n")).json() for _ in range(3)]
            cookie = signed_cookie(client.cookies["s"])
            answers = await asyncio.gather(*[client.get("/incr/n", headers={"Cookie": cookie})
                                             for _ in range(50)])
            return first, [answer.json() for answer in answers]

    first, concurrent = asyncio.run(run())

    assert first == [1, 2, 3]
    assert sorted(concurrent) == list(range(4, 54))  # every sum once: none lost, none twice


def test_tasks_of_one_request_starting_its_session_at_once_share_one_token(
    serve_asgi: Serve,
) -> None:
    store = gs.MemoryStore()
    server = serve_asgi(starlette_app(store))

    response = fetch(f"{server.url}/five")

    assert response.json() == {f"k{i}": i for i in range(5)}
    assert [name for name, _, _ in map(parse_set_cookie, response.raw.headers.getlist(
        "Set-Cookie"))] == ["s", "s.sig"]  # one cookie: one session was issued
    assert "sessions=1" in repr(store)


# --------------------------------------------------------------------------
# streaming, lifespan, websockets


def test_a_stream_that_uses_the_session_before_its_first_chunk_sends_the_cookie(
    serve_asgi: Serve,
) -> None:
    store = gs.MemoryStore()
    server = serve_asgi(starlette_app(store))

    response = fetch(f"{server.url}/stream/first")

    assert response.text == "one two"
    token = set_cookies(response)["s"]
    assert response.headers["vary"] == "Cookie"
    assert store.get_all(f"session:{token}", HOUR) == {"streamed": "yes"}


def test_a_stream_that_uses_the_session_after_its_first_chunk_gets_session_error(
    serve_asgi: Serve,
) -> None:
    store = CountingStore(gs.MemoryStore())
    server = serve_asgi(starlette_app(store))

    response = fetch(f"{server.url}/stream/late")

    assert response.status_code == 200
    assert response.text == ("first\nSessionError: cookie 's' cannot be sent: the response has "
                             "started; use the session before the app sends its first body "
                             "chunk")
    assert "set-cookie" not in response.headers
    assert store.calls == []  # nothing stored under a token nobody would send


def test_lifespan_passes_through_to_the_app_untouched() -> None:
    events: list[str] = []
    lifespan_scopes: list[dict[str, Any]] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    async def record_scope(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            lifespan_scopes.append(dict(scope))
        await app.router(scope, receive, send)

    app = Starlette(routes=[Route("/health", health)], lifespan=lifespan)
    wrapped = gs.ASGIMiddleware(record_scope, store=gs.MemoryStore(), keys=KEYS)

    with UvicornServer(wrapped) as server:
        assert events == ["startup"]
        assert fetch(f"{server.url}/health").text == "ok"
    assert events == ["startup", "shutdown"]
    assert len(lifespan_scopes) == 1 and "session" not in lifespan_scopes[0]


def test_a_websocket_reads_and_writes_the_session_of_its_cookie(serve_asgi: Serve) -> None:
    store = gs.MemoryStore()
    server = serve_asgi(starlette_app(store))
    with http_session() as http:
        http.get(f"{server.url}/set/user/alice", timeout=TIMEOUT)
        cookie = signed_cookie(http.cookies["s"])
        ws_url = server.url.replace("http://", "ws://") + "/ws"
        with websocket_connect(ws_url, additional_headers={"Cookie": cookie}, proxy=None,
                               open_timeout=TIMEOUT) as websocket:
            answer = websocket.recv(timeout=TIMEOUT)
        written = http.get(f"{server.url}/get/over", timeout=TIMEOUT).json()

    assert answer == '{"user":"alice","id_known":true}'
    assert written == "websocket"


def test_a_websocket_without_a_session_cannot_start_one(serve_asgi: Serve) -> None:
    store = CountingStore(gs.MemoryStore())
    server = serve_asgi(starlette_app(store))
    ws_url = server.url.replace("http://", "ws://") + "/ws"

    made_up = "B" * 40  # a cookie the store never issued: it would need a new one
    answers = []
    for headers in ({}, {"Cookie": signed_cookie(made_up)}):
        with websocket_connect(ws_url, additional_headers=headers, proxy=None,
                               open_timeout=TIMEOUT) as websocket:
            answers.append(websocket.recv(timeout=TIMEOUT))

    for answer in answers:
        assert isinstance(answer, str)  # a text frame
        assert answer.startswith('{"error":"SessionError: a websocket cannot set a cookie')
        assert made_up not in answer
    assert "create" not in store.calls and "set" not in store.calls


# --------------------------------------------------------------------------
# 200 concurrent writers, per store


@pytest.fixture(params=["memory", "sqlite", "async-redis"])
def async_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreCase]:
    """Each store the ASGI side takes: MemoryStore directly, SQLiteStore through
    ThreadedStore, AsyncRedisStore on a real redis-server."""
    if request.param == "memory":
        yield gs.MemoryStore(), ()
    elif request.param == "sqlite":
        sqlite_store = gs.SQLiteStore(tmp_path / "sessions.db")
        yield gs.ThreadedStore(sqlite_store), ()
        sqlite_store.close()
    else:
        if not hasattr(gs, "AsyncRedisStore"):
            pytest.skip("AsyncRedisStore not yet on this branch")
        request.getfixturevalue("redis_client")  # the server running, its database empty
        yield async_redis_store(request.getfixturevalue("redis_server"))


#: A store for the ASGI app, and what the app's lifespan shutdown must await.
StoreCase = tuple[Any, Sequence[Callable[[], Awaitable[object]]]]


def async_redis_store(server: RedisServer) -> StoreCase:
    """An AsyncRedisStore on *server*; its client is closed by the serving loop, at shutdown
    (its connections belong to that loop)."""
    import redis.asyncio

    client = redis.asyncio.Redis(host=server.host, port=server.port, socket_timeout=5)
    # Looked up by name: type-checks the same before and after AsyncRedisStore lands.
    async_redis_store_class: Any = vars(gs)["AsyncRedisStore"]
    return async_redis_store_class(client), [client.aclose]


def test_200_concurrent_requests_of_one_session_keep_all_their_writes(
    serve_asgi: Serve, async_store: StoreCase,
) -> None:
    store, on_shutdown = async_store
    server = serve_asgi(starlette_app(store, on_shutdown=on_shutdown))

    async def run() -> tuple[list[int], dict[str, Any]]:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30,
                                     limits=httpx.Limits(max_connections=200)) as client:
            await client.get("/set/first/0")
            cookie = signed_cookie(client.cookies["s"])
            answers = await asyncio.gather(*[
                client.get(f"/set/k{i}/{i}", headers={"Cookie": cookie}) for i in range(200)])
            everything = (await client.get("/all", headers={"Cookie": cookie})).json()
            return [answer.status_code for answer in answers], everything

    statuses, everything = asyncio.run(run())

    assert statuses == [200] * 200
    assert everything == {"first": "0", **{f"k{i}": str(i) for i in range(200)}}


# --------------------------------------------------------------------------
# a WSGI app and an ASGI app on one Redis


@NEEDS_ASYNC_REDIS
def test_a_wsgi_app_and_an_asgi_app_share_one_redis_and_one_session(
    serve_asgi: Serve, run_server: Callable[..., str], redis_server: RedisServer,
    redis_client: Any,
) -> None:
    wsgi_url = run_server(store=redis_server.url, env={"SESSION_KEYS": ",".join(KEYS)})
    store, on_shutdown = async_redis_store(redis_server)
    asgi_url = serve_asgi(starlette_app(store, on_shutdown=on_shutdown)).url

    with http_session() as browser:  # one cookie jar: loopback cookies ignore the port
        browser.get(f"{wsgi_url}/set/user/alice", timeout=TIMEOUT)
        seen_by_asgi = browser.get(f"{asgi_url}/get/user", timeout=TIMEOUT).json()
        browser.get(f"{asgi_url}/set/cart/apples", timeout=TIMEOUT)
        seen_by_wsgi = browser.get(f"{wsgi_url}/get/cart", timeout=TIMEOUT).json()
        token = browser.cookies["s"]
    with http_session() as other:  # the other way round: issued by the ASGI app
        other.get(f"{asgi_url}/set/user/bob", timeout=TIMEOUT)
        adopted_by_wsgi = other.get(f"{wsgi_url}/get/user", timeout=TIMEOUT)
        other_token = other.cookies["s"]

    assert (seen_by_asgi, seen_by_wsgi) == ("alice", "apples")
    assert adopted_by_wsgi.json() == "bob"  # strict: the WSGI side sees it live
    assert "s" not in adopted_by_wsgi.cookies or adopted_by_wsgi.cookies["s"] == other_token
    assert sorted(redis_client.keys()) == sorted(  # one hash per session, nothing else
        f"session:{t}".encode() for t in (token, other_token))


# --------------------------------------------------------------------------
# the event loop keeps serving while a blocking store waits


def test_the_event_loop_serves_other_requests_while_a_threaded_store_waits(
    serve_asgi: Serve, tmp_path: Path,
) -> None:
    slow = SlowSQLiteStore(tmp_path / "sessions.db")
    slow.gate = Gate()
    server = serve_asgi(starlette_app(gs.ThreadedStore(slow)))
    other = fetch(f"{server.url}/set/k/v").cookies  # another session of the same store

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(fetch, f"{server.url}/get/slow")
            assert slow.gate.arrived.wait(TIMEOUT)  # the store operation is blocked now
            health_check = fetch(f"{server.url}/health")
            other_session = fetch(f"{server.url}/get/k", other)
            still_waiting = not waiting.done()
            slow.gate.opened.set()
            released = waiting.result(timeout=TIMEOUT)
    finally:
        slow.gate.opened.set()
        slow.close()

    assert health_check.text == "ok"
    assert other_session.json() == "v"
    assert still_waiting  # both were served while the slow operation still waited
    assert released.status_code == 200 and released.json() is None


def test_an_existing_session_first_used_after_the_body_started_keeps_its_write(
    serve_asgi: Serve,
) -> None:
    # Once failed: the write was stored, then re-sending the (sliding) cookie raised
    # SessionError, so the app was told a stored write had failed.  Now the re-send,
    # which only slides the expiry, is skipped once the body has started.
    store = gs.MemoryStore()
    server = serve_asgi(starlette_app(store))
    with http_session() as http:
        http.get(f"{server.url}/set/user/alice", timeout=TIMEOUT)
        token = http.cookies["s"]
        response = http.get(f"{server.url}/stream/late", timeout=TIMEOUT)

    assert response.text.startswith("first\n")
    assert "SessionError" not in response.text
    assert store.get_all(f"session:{token}", HOUR).get("late") is not None


def test_behind_a_proxy_uvicorn_says_https_and_the_cookie_is_secure(serve_asgi: Serve) -> None:
    server = serve_asgi(starlette_app(gs.MemoryStore()), proxy_headers=True,
                        forwarded_allow_ips="127.0.0.1")

    proxied = fetch_with_headers(f"{server.url}/set/k/v", {"X-Forwarded-Proto": "https"})
    direct = fetch_with_headers(f"{server.url}/set/k/v", {})

    assert all("; secure" in value for value in proxied.headers.get_list("set-cookie"))
    assert not any("; secure" in value for value in direct.headers.get_list("set-cookie"))


def fetch_with_headers(url: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(url, headers=headers, trust_env=False, timeout=TIMEOUT)
