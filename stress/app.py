"""The example app the stress scripts load: one route per session operation, WSGI and ASGI.

``GET /set?k=KEY&v=VALUE``, ``/get?k=KEY``, ``/delete?k=KEY``, ``/incr?k=KEY``,
``/all``, ``/destroy`` and ``/regenerate`` each do that one operation on the
request's session and answer JSON (``{"v": ...}``, ``{"n": ...}``, ``{"all": ...}``
or ``{"ok": true}``).  The WSGI app is wrapped in :func:`generic_session.middleware`,
the ASGI one in :class:`generic_session.ASGIMiddleware` (a blocking store through
:class:`generic_session.ThreadedStore`).  A store that fails becomes the
middleware's 503; nothing here catches it.

Run as a script it serves the app on a free loopback port and prints
``Serving on http://127.0.0.1:PORT`` once it listens::

    python stress/app.py --server waitress --store sqlite:/tmp/s.db
    python stress/app.py --server uvicorn --store 'redis://127.0.0.1:6379?timeout=0.5'

Every log line (the middleware's, waitress', uvicorn's, redis-py's) goes to
stderr, so that a caller can check that none holds a token or a value.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import generic_session as gs

#: The signing key of the stress runs: not a secret, the servers live for one run.
KEYS = ["stress-signing-key-not-a-secret"]

LOOPBACK = "127.0.0.1"


def make_store(spec: str) -> Any:
    """A store from ``memory``, ``sqlite:PATH``,
    ``redis://HOST:PORT?timeout=S&retries=N&prefill=N``
    or ``cluster://HOST:PORT?timeout=S&wait=N&wait_timeout=S`` (N replicas for WAIT)."""
    if spec == "memory":
        return gs.MemoryStore()
    if spec == "lossy":
        return LossyStore()
    if spec.startswith("sqlite:"):
        return gs.SQLiteStore(spec[len("sqlite:"):], timeout=10.0)
    url = urlsplit(spec)
    query = dict(parse_qsl(url.query))
    timeout = float(query.get("timeout", "2"))
    retries = int(query.get("retries", "1"))
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if url.scheme == "redis":
        client: Any = redis.Redis(host=url.hostname or LOOPBACK, port=url.port or 6379,
                                  socket_timeout=timeout, socket_connect_timeout=timeout,
                                  retry=Retry(NoBackoff(), retries), max_connections=64)
        # prefill=N: N connections made now, so the pool never grows past them later
        # (stress/resources.py counts the server's descriptors).
        pool = client.connection_pool
        connections = [pool.get_connection() for _ in range(int(query.get("prefill", "0")))]
        for connection in connections:
            connection.connect()
            pool.release(connection)
        return gs.RedisStore(client)
    if url.scheme == "cluster":
        from redis.cluster import RedisCluster

        client = RedisCluster(host=url.hostname or LOOPBACK, port=url.port or 7000,
                              socket_timeout=timeout, socket_connect_timeout=timeout)
        return cluster_store(client, int(query.get("wait", "0")),
                             float(query.get("wait_timeout", "1.0")))
    raise ValueError(f"unknown store {spec!r}")


class LossyStore(gs.MemoryStore):
    """A broken store, for the stress checks' own test: it acknowledges every seventh
    ``set`` without storing it (tests/test_stress.py: the load must catch that)."""

    def __init__(self) -> None:
        super().__init__()
        self._sets = 0

    def set(self, id: gs.SessionId, key: str, value: Any, expire: float, *,
            live: bool = False) -> None:
        self._sets += 1
        if self._sets % 7:
            super().set(id, key, value, expire, live=live)


def has_wait_replicas() -> bool:
    """Whether this generic_session's RedisStore takes ``wait_replicas`` (Redis WAIT)."""
    return "wait_replicas" in inspect.signature(gs.RedisStore).parameters


def cluster_store(client: Any, wait_replicas: int, wait_timeout: float) -> gs.RedisStore:
    """A RedisStore on ``client``; with ``wait_replicas`` > 0 it acknowledges a write only
    once that many replicas have it (needs a RedisStore with ``wait_replicas``)."""
    if wait_replicas:
        return gs.RedisStore(client, wait_replicas=wait_replicas,
                             wait_timeout=wait_timeout)
    return gs.RedisStore(client)


def _json(payload: object) -> bytes:
    return json.dumps(payload).encode()


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The operations on ``environ[ENVIRON_KEY]``, the session of the WSGI middleware."""
    session: gs.GenericSession = environ[gs.ENVIRON_KEY]
    route = environ.get("PATH_INFO", "")
    query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    key = query.get("k", "k")
    if route == "/set":
        session.set(key, query.get("v"))
        body = _json({"ok": True})
    elif route == "/get":
        body = _json({"v": session.get(key)})
    elif route == "/delete":
        session.delete(key)
        body = _json({"ok": True})
    elif route == "/incr":
        body = _json({"n": session.incr(key)})
    elif route == "/all":
        body = _json({"all": session.get_all()})
    elif route == "/destroy":
        session.destroy()
        body = _json({"ok": True})
    elif route == "/regenerate":
        session.regenerate()
        body = _json({"ok": True})
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


_Send = Callable[[dict[str, Any]], Awaitable[None]]
_Receive = Callable[[], Awaitable[dict[str, Any]]]


async def asgi_app(scope: dict[str, Any], receive: _Receive, send: _Send) -> None:
    """The same operations on ``scope["session"]``, the session of ASGIMiddleware."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    session: gs.AsyncGenericSession = scope["session"]
    route = scope["path"]
    query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
    key = query.get("k", "k")
    status = 200
    if route == "/set":
        await session.set(key, query.get("v"))
        body = _json({"ok": True})
    elif route == "/get":
        body = _json({"v": await session.get(key)})
    elif route == "/delete":
        await session.delete(key)
        body = _json({"ok": True})
    elif route == "/incr":
        body = _json({"n": await session.incr(key)})
    elif route == "/all":
        body = _json({"all": await session.get_all()})
    elif route == "/destroy":
        await session.destroy()
        body = _json({"ok": True})
    elif route == "/regenerate":
        await session.regenerate()
        body = _json({"ok": True})
    else:
        status, body = 404, b"not found"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def wsgi(store: Any) -> gs.WSGIApp:
    """The WSGI example app with its session middleware on ``store``."""
    return gs.middleware(store, keys=KEYS)(wsgi_app)


def asgi(store: Any) -> gs.ASGIMiddleware:
    """The ASGI example app with ASGIMiddleware; a blocking store goes through ThreadedStore."""
    wrapped = store if isinstance(store, gs.MemoryStore) else gs.ThreadedStore(store)
    return gs.ASGIMiddleware(asgi_app, store=wrapped, keys=KEYS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", choices=["waitress", "uvicorn"], default="waitress")
    parser.add_argument("--store", default="memory")
    parser.add_argument("--threads", type=int, default=16, help="waitress' worker threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    store = make_store(args.store)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, 0))
    listener.listen(2048)
    port = listener.getsockname()[1]
    if args.server == "waitress":
        import waitress.server  # type: ignore[import-untyped]

        # connection_limit: waitress stops accepting past 100 connections by default,
        # and the load keeps 200+ open.
        server: Any = waitress.server.create_server(
            wsgi(store), sockets=[listener], threads=args.threads, connection_limit=1000,
            backlog=2048, ident="stress")
        print(f"Serving on http://{LOOPBACK}:{port}", file=sys.stderr, flush=True)
        server.run()
    else:
        import uvicorn

        config = uvicorn.Config(asgi(store), log_level="warning", access_log=False,
                                loop="asyncio", http="h11", backlog=2048,
                                timeout_graceful_shutdown=2)
        print(f"Serving on http://{LOOPBACK}:{port}", file=sys.stderr, flush=True)
        uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
