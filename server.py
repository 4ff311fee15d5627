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
(comma separated, the first one signs, all of them verify). Without it the
server signs with a development key, made on the first run in
``.generic-session-dev-key`` beside this file (``--dev-key-file`` picks another
path), readable by the user only (mode 0600) and reused on every later run: so
with a store that keeps its data (``sqlite:PATH``, Redis) sessions survive a
restart. It says so on stderr, in one line that never shows the key.

It binds its port first, then checks that its store works (one read of a
session nobody has), then prints ``Serving on http://HOST:PORT (store: ...)``:
the line a caller waits for. A busy port, an unusable store or an unreadable key
file ends it with one line on stderr and exit status 1, before that line.

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
import stat
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bottle

import generic_session as gs

#: A WSGI application, as far as this module cares.
WSGIApp = Callable[..., Any]

DEFAULT_REDIS_PORT = 6379

#: Where the development signing key is kept when SESSION_KEYS is not set (git ignores it).
DEFAULT_DEV_KEY_FILE = Path(__file__).resolve().parent / ".generic-session-dev-key"

#: The session id of the start-up check: a read of a session nobody writes.
STARTUP_CHECK_ID = "server.py:startup-check"


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


def dev_key(path: Path) -> tuple[str, bool]:
    """Return the development key kept in *path*, making it first if needed.

    Returns ``(key, created)``. The file is made with mode 0600 under a temporary
    name and linked into place, so two servers started at once agree on one key
    and nobody ever reads a half-written file. Raises ``SystemExit`` with a
    one-line message when the file is unusable, or readable by others.
    """
    try:
        return _read_dev_key(path), False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SystemExit(f"server.py: error: cannot read the key file {str(path)!r}: "
                         f"{exc.strerror}") from None
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            os.fchmod(file.fileno(), 0o600)  # whatever the umask
            file.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(temporary, path)
            created = True
        except FileExistsError:  # another server made it first: use theirs
            created = False
        return _read_dev_key(path), created
    except OSError as exc:
        raise SystemExit(f"server.py: error: cannot make the key file {str(path)!r}: "
                         f"{exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)


def _read_dev_key(path: Path) -> str:
    """Read the key in *path*; SystemExit if others may read it or it holds no key."""
    with path.open(encoding="ascii") as file:
        mode = os.fstat(file.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SystemExit(
                f"server.py: error: the key file {str(path)!r} is readable by others "
                f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it or delete it for a new key"
            )
        key = file.read().strip()
    if not key:
        raise SystemExit(f"server.py: error: the key file {str(path)!r} is empty; "
                         "delete it for a new key")
    return key


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """``wsgiref``'s server with one thread per request.

    Daemon threads so that a slow or stuck request never blocks shutdown.
    """

    daemon_threads = True
    # The listen backlog, as waitress and gunicorn have it (socketserver's is 5:
    # with 100 clients at once the queue overflowed, SYNs were retransmitted and
    # p99 latency was 1.9 s). Linux caps it at net.core.somaxconn.
    request_queue_size = 1024


class QuietRequestHandler(WSGIRequestHandler):
    """Request handler that does not log every request to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        """Drop the per-request access log line."""


def _unset_app(environ: Any, start_response: Any) -> Any:
    """Placeholder app between binding and ``set_app``; never called (no request is served)."""
    raise RuntimeError("server.py: the app is not set yet")


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
    parser.add_argument(
        "--dev-key-file",
        type=Path,
        default=DEFAULT_DEV_KEY_FILE,
        help="where the development signing key is kept when SESSION_KEYS is not set "
        "(default: .generic-session-dev-key beside server.py)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser


def open_store(spec: str) -> gs.Store:
    """Make the store of *spec* and read one session nobody has, to see that it works.

    Raises ``SystemExit`` with one line when it cannot: a store file in a missing
    directory, a Redis nobody runs. Better at start than as a 503 on every request.
    """
    try:
        store = make_store(spec)
        store.get(STARTUP_CHECK_ID, "check", 1)
    except gs.StoreError as exc:
        raise SystemExit(f"server.py: error: cannot use --store {spec!r}: {exc}") from None
    return store


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until Ctrl-C or SIGTERM; return the exit status."""
    args = build_parser().parse_args(argv)
    handler = WSGIRequestHandler if args.verbose else QuietRequestHandler
    # Bind first: a busy port is the likeliest failure, and then nothing else
    # (a store file, a key file) has been touched. The app is set just below.
    try:
        httpd = make_server(
            args.host, args.port, _unset_app, server_class=ThreadingWSGIServer,
            handler_class=handler,
        )
    except OSError as exc:
        raise SystemExit(
            f"server.py: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    try:
        store = open_store(args.store)
        keys = load_keys(os.environ)
        if not keys:
            key, created = dev_key(args.dev_key_file)
            keys = [key]
            print(
                f"server.py: SESSION_KEYS is not set; signing with the development key "
                f"{'made now in' if created else 'kept in'} {str(args.dev_key_file)!r} "
                "(set SESSION_KEYS in production)",
                file=sys.stderr,
            )
    except BaseException:
        httpd.server_close()
        raise
    httpd.set_app(make_app(store, keys))
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
