"""The ASGI front door: the same sessions for Starlette and any ASGI app.

In-process through httpx's ASGI transport, and over real HTTP under uvicorn.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

import generic_session as gs
from tests.helpers import dead_redis_store

KEYS = ["asgi test key"]


async def set_value(request: Request) -> JSONResponse:
    await request.session.set(request.path_params["k"], request.path_params["v"])
    return JSONResponse(request.path_params["v"])


async def get_value(request: Request) -> JSONResponse:
    return JSONResponse(await request.session.get(request.path_params["k"]))


async def logout(request: Request) -> JSONResponse:
    await request.session.destroy()
    return JSONResponse("bye")


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app(store: Any) -> Starlette:
    app = Starlette(routes=[Route("/set/{k}/{v}", set_value), Route("/get/{k}", get_value),
                            Route("/logout", logout), Route("/health", health)])
    app.add_middleware(gs.ASGIMiddleware, store=store, keys=KEYS)
    return app


def in_process(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def test_set_then_get_keeps_the_session_and_a_health_check_gets_no_cookie() -> None:
    store = gs.MemoryStore()

    async def run() -> None:
        async with in_process(starlette_app(store)) as client:
            health_check = await client.get("/health")
            assert "set-cookie" not in health_check.headers
            assert "sessions=0" in repr(store)
            first = await client.get("/set/foo/bar")
            assert [c.split("=")[0] for c in first.headers.get_list("set-cookie")] == ["s",
                                                                                        "s.sig"]
            assert first.headers["vary"] == "Cookie"
            assert first.headers["cache-control"] == "private"
            assert (await client.get("/get/foo")).json() == "bar"

    asyncio.run(run())


def test_a_made_up_cookie_is_not_adopted_and_logout_sticks() -> None:
    store = gs.MemoryStore()

    async def run() -> None:
        async with in_process(starlette_app(store)) as client:
            await client.get("/set/user/alice")
            old = client.cookies.get("s")
            await client.get("/logout")
        async with in_process(starlette_app(store)) as replay:
            cookie = f"s={old}; s.sig={gs.Keygrip(KEYS).sign(f's={old}')}"
            response = await replay.get("/get/user", headers={"Cookie": cookie})
            assert response.json() is None
            assert f"s={old};" not in " ".join(response.headers.get_list("set-cookie"))

    asyncio.run(run())


def test_a_store_that_is_down_answers_503() -> None:
    app = starlette_app(gs.ThreadedStore(dead_redis_store()))

    async def run() -> None:
        async with in_process(app) as client:
            response = await client.get("/get/k")
            assert response.status_code == 503
            assert "set-cookie" not in response.headers

    asyncio.run(run())


def test_a_blocking_store_without_the_adapter_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"SQLiteStore blocks on I/O .* ThreadedStore\("):
        gs.ASGIMiddleware(health, gs.SQLiteStore(tmp_path / "s.db"))  # type: ignore[arg-type]


def test_over_real_http_under_uvicorn_with_sqlite_behind_the_thread_adapter(
    serve_asgi: Any, tmp_path: Path,
) -> None:
    server = serve_asgi(starlette_app(gs.ThreadedStore(gs.SQLiteStore(tmp_path / "s.db"))))

    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
        assert client.get("/set/foo/bar").json() == "bar"
        assert client.get("/get/foo").json() == "bar"
        assert client.get("/health").headers.get("set-cookie") is None


def test_a_task_cancelled_while_it_waits_for_the_session_does_not_stall_the_next() -> None:
    # One plan at a time per session: B waits behind A, B is cancelled, C must still
    # get its turn when A is done (a cancelled waiter must not swallow the wake-up).
    class Gate:
        """An async store over a MemoryStore whose ``create`` waits for ``opened``."""

        def __init__(self, opened: asyncio.Event) -> None:
            self.memory, self.opened = gs.MemoryStore(), opened

        def __getattr__(self, name: str) -> Any:
            method = getattr(self.memory, name)

            async def call(*args: Any, **kwargs: Any) -> Any:
                if name == "create":
                    await self.opened.wait()
                return method(*args, **kwargs)

            return call

        async def get(self, *args: Any, **kwargs: Any) -> Any:  # what makes it async
            return self.memory.get(*args, **kwargs)

    async def scenario() -> tuple[bool, list[str]]:
        opened = asyncio.Event()
        store = Gate(opened)
        options = gs.SessionOptions(keys=KEYS)
        sent: list[str] = []
        cookies = gs.Cookies.from_header("", lambda name, header: sent.append(name),
                                         options.keygrip)
        session = gs.AsyncGenericSession.lazy(store, options, cookies, https=lambda: False)
        a = asyncio.ensure_future(session.touch())
        await asyncio.sleep(0)  # a yields to the loop: it is inside create, holding its turn
        b = asyncio.ensure_future(session.touch())
        c = asyncio.ensure_future(session.touch())
        await asyncio.sleep(0)  # b and c are queued behind a
        b.cancel()
        opened.set()
        await asyncio.wait_for(asyncio.gather(a, c), timeout=5)
        return b.cancelled(), sent

    cancelled, sent = asyncio.run(scenario())

    assert cancelled
    assert sent == ["s", "s.sig"]  # one session, one cookie: a and c shared it


def test_a_file_sent_by_path_goes_after_the_start_with_the_cookie() -> None:
    # Once failed: the start was released only by a body message, so an app sending
    # "http.response.pathsend" (Starlette's FileResponse, where the server offers it)
    # had its file go out before the response start.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await scope["session"].set("k", "v")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": "/etc/hostname"})

    async def scenario() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/", "headers": [],
                 "scheme": "http", "extensions": {"http.response.pathsend": {}}}
        await gs.ASGIMiddleware(app, gs.MemoryStore(), keys=KEYS)(scope, receive, send)
        return sent

    sent = asyncio.run(scenario())

    assert [message["type"] for message in sent] == ["http.response.start",
                                                      "http.response.pathsend"]
    names = [name for name, _ in sent[0]["headers"]]
    assert names.count(b"set-cookie") == 2


def test_a_cookie_header_that_is_not_latin_1_fails_where_it_is_sent_not_at_the_start() -> None:
    """ASGI headers are bytes: a Set-Cookie that latin-1 cannot encode (only
    ``Cookies.send_prepared``, which checks nothing, can make one) raises at that call,
    where the app can see it, and the response still goes out with the session's cookie."""
    errors: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        session = scope["session"]
        await session.set("k", 1)
        try:
            session.cookies.send_prepared("x", "v", "; path=/\u20ac", signed=False)
        except UnicodeEncodeError as error:
            errors.append(error.encoding)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run() -> httpx.Response:
        wrapped = gs.ASGIMiddleware(app, gs.MemoryStore(), keys=KEYS)
        transport = httpx.ASGITransport(app=wrapped)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/")

    response = asyncio.run(run())

    assert errors == ["latin-1"]
    assert response.status_code == 200
    assert [c.split("=")[0] for c in response.headers.get_list("set-cookie")] == ["s", "s.sig"]
