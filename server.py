"""Example server: a tiny Bottle app whose state lives in a generic-session.

Usage::

    python server.py [--host 127.0.0.1] [--port 8080]
                     [--store memory|sqlite:PATH|redis://HOST:PORT] [--verbose]

Routes:

* ``GET /set/<key>/<value>`` stores the string *value* under *key* in the
  caller's session and answers it as JSON (``"bar"``).
* ``GET /get/<key>`` answers the value stored under *key* as JSON, ``null``
  when absent.
* Both routes also answer ``HEAD``, as standard HTTP wants of every GET route:
  the same status and headers (session cookie included), without the body.
  The route runs as for ``GET``, so ``HEAD /set/<key>/<value>`` stores too.
* Anything else (other paths, other methods) answers ``ERROR`` with status 404.

The cookie-signing keys come from the ``SESSION_KEYS`` environment variable
(comma separated, the first one signs, all of them verify). Without it a random
key is made at start, so cookies do not survive a restart.

It is served by the standard library's ``wsgiref`` with one thread per request:
good enough for a demo and the tests, and no extra dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socketserver
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bottle

import generic_session as gs

#: A WSGI application, as far as this module cares.
WSGIApp = Callable[..., Any]

DEFAULT_REDIS_PORT = 6379


def _session() -> gs.GenericSession:
    """Return the session that the generic-session filter attached to this request."""
    # bottle.request has no type information; the filter guarantees the type.
    return cast(gs.GenericSession, bottle.request.session)


def _json(value: Any) -> str:
    """Serialise *value* as the JSON body of the current response."""
    bottle.response.content_type = "application/json"
    return json.dumps(value)


def make_app(store: gs.Store, keys: Sequence[str]) -> WSGIApp:
    """Build the example app and wrap it in the generic-session filter.

    *store* is any generic-session store, *keys* the cookie-signing keys (the
    first one signs). The returned callable is a plain WSGI application.
    """
    # catchall off: let exceptions (notably gs.StoreError when the store is
    # down) escape Bottle so the session filter can turn them into a 503.
    # Set through the config: Bottle 0.13 deprecates Bottle(catchall=False).
    app = bottle.Bottle()
    app.config["catchall"] = False

    def set_value(key: str, value: str) -> str:
        _session().set(key, value)
        return _json(value)

    def get_value(key: str) -> str:
        return _json(_session().get(key))

    def not_found(path: str = "") -> None:
        bottle.abort(404)

    def error_page(error: bottle.HTTPError) -> str:
        bottle.response.status = 404
        bottle.response.content_type = "text/plain; charset=utf-8"
        return "ERROR"

    # Registered with calls rather than decorators: Bottle is untyped, and its
    # decorators would make mypy --strict see these functions as untyped.
    app.route("/set/<key>/<value>", method="GET", callback=set_value)
    app.route("/get/<key>", method="GET", callback=get_value)
    # "Any other method or path": without these Bottle would answer a wrong
    # method on a known path with 405, and the spec wants 404 ERROR for
    # everything but the two routes above (and HEAD on them, which Bottle
    # answers from the GET route, as HTTP wants). Method-specific routes win
    # over ANY in Bottle's router, so these only catch the leftovers.
    app.route("/", method="ANY", callback=not_found)
    app.route("/<path:path>", method="ANY", callback=not_found)
    # 405 too, as belt and braces: never expose Bottle's HTML error page.
    app.error_handler[404] = error_page
    app.error_handler[405] = error_page

    wrap = gs.middleware(store, keys=list(keys))
    return wrap(app)


def _bad_store(spec: str, why: str) -> SystemExit:
    """Build the exit raised for an unusable --store value."""
    return SystemExit(
        f"server.py: error: bad --store value {spec!r}: {why} "
        "(expected memory, sqlite:PATH or redis://HOST:PORT)"
    )


def make_store(spec: str) -> gs.Store:
    """Build the store described by a ``--store`` value.

    ``memory``, ``sqlite:PATH`` or ``redis://HOST:PORT`` (port defaults to
    6379). Raises ``SystemExit`` with a one-line message for anything else.
    """
    if spec == "memory":
        return gs.MemoryStore()

    if spec.startswith("sqlite:"):
        path = spec[len("sqlite:") :]
        if not path:
            raise _bad_store(spec, "the sqlite store needs a file path")
        return gs.SQLiteStore(path)

    if spec.startswith("redis://"):
        parts = urllib.parse.urlsplit(spec)
        try:
            port = parts.port or DEFAULT_REDIS_PORT
        except ValueError as exc:  # e.g. redis://host:notaport
            raise _bad_store(spec, str(exc)) from None
        if not parts.hostname:
            raise _bad_store(spec, "missing host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise _bad_store(spec, "only redis://HOST:PORT is supported")
        try:
            # Imported here so the memory and sqlite stores work without the
            # redis package installed.
            import redis
        except ImportError:
            raise _bad_store(
                spec, "the redis package is not installed (pip install redis)"
            ) from None
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # Short timeouts and one immediate retry: a dead Redis must give a quick
        # 503, not a hung request (redis-py's default retries back off for
        # seconds), while the retry reconnects a pooled connection that went
        # stale when Redis restarted.
        client = redis.Redis(
            host=parts.hostname,
            port=port,
            socket_timeout=2,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 1),
        )
        return gs.RedisStore(client, prefix="")

    raise _bad_store(spec, "unknown store")


def load_keys(environ: Mapping[str, str]) -> list[str]:
    """Return the signing keys from ``SESSION_KEYS`` (empty list when unset/blank)."""
    raw = environ.get("SESSION_KEYS", "")
    return [key.strip() for key in raw.split(",") if key.strip()]


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """``wsgiref``'s server with one thread per request.

    Daemon threads so that a slow or stuck request never blocks shutdown.
    """

    daemon_threads = True


class QuietRequestHandler(WSGIRequestHandler):
    """Request handler that does not log every request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        """Drop the per-request access log line."""


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into the same clean shutdown path as Ctrl-C."""
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="server.py", description="Example generic-session server (Bottle + wsgiref)."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="port to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--store",
        default="memory",
        help="memory, sqlite:PATH or redis://HOST:PORT (default: %(default)s)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until Ctrl-C or SIGTERM; return the exit status."""
    args = build_parser().parse_args(argv)
    store = make_store(args.store)

    keys = load_keys(os.environ)
    if not keys:
        keys = [secrets.token_urlsafe(32)]
        print(
            "server.py: SESSION_KEYS is not set; using a random signing key, "
            "so session cookies will not survive a restart",
            file=sys.stderr,
        )

    handler = WSGIRequestHandler if args.verbose else QuietRequestHandler
    httpd = make_server(
        args.host,
        args.port,
        make_app(store, keys),
        server_class=ThreadingWSGIServer,
        handler_class=handler,
    )
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # server_port: the real port, useful with --port 0.
    print(
        f"Serving on http://{args.host}:{httpd.server_port} (store: {args.store})",
        file=sys.stderr,
        flush=True,
    )
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        print("server.py: shutting down", file=sys.stderr)
    finally:
        httpd.server_close()
        close = getattr(store, "close", None)
        if callable(close):
            close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
