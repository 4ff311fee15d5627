"""What every notebook shares, so that the lessons show sessions rather than plumbing.

``from lesson import ...`` in a notebook (its working directory is ``notebooks/``):

- ``FakeClock``: the tests' own fake clock (``tests/helpers.py``): ``clock = FakeClock(now)``,
  ``clock()`` for epoch seconds, ``clock.advance(seconds)``; expiry without sleeping.
- ``serve(app)``: a WSGI app on a free loopback port, in a background thread, for a ``with``.
- ``loopback_client()``: a ``requests.Session`` that ignores proxy settings.
- ``call(app, ...)``: one WSGI request in-process, safe to run from several threads at once.
- ``show(fig, alt)``: a matplotlib figure as an image with its alt text, and a caption.

Importing it puts the project root on ``sys.path``, so ``import generic_session`` and
``tests.helpers`` work from the notebook too.
"""

from __future__ import annotations

import base64
import io
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import setup_testing_defaults

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # generic_session.py and tests/ live one level up

import requests  # noqa: E402 (after the path is set, like the imports below)

from tests.helpers import FakeClock, RedisServer, UvicornServer, free_port  # noqa: E402

__all__ = ["LOOPBACK", "FakeClock", "RedisServer", "UvicornServer", "call", "free_port",
           "loopback_client", "serve", "show"]

LOOPBACK = "127.0.0.1"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # request threads never keep the kernel alive


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no access log in a lesson
        pass


@contextmanager
def serve(app: WSGIApp) -> Iterator[str]:
    """Serve ``app`` on a free loopback port, one thread per request; yield its base URL.

    Port 0 asks the OS for a free port; the server stops when the ``with`` block ends.
    """
    server = make_server(LOOPBACK, 0, app, server_class=_ThreadingServer,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def loopback_client() -> requests.Session:
    """A client with a cookie jar, like a browser without the window; loopback only."""
    http = requests.Session()
    http.trust_env = False  # ignore HTTP_PROXY and friends: loopback traffic stays here
    return http


def call(app: WSGIApp, method: str = "GET", path: str = "/", cookie: str = "", *,
         https: bool = False) -> tuple[str, list[tuple[str, str]], str]:
    """One request to a WSGI app, in-process: ``(status, headers, body text)``.

    ``cookie`` is the request's ``Cookie`` header.  Unlike a test client it keeps no
    cookie jar, so several threads can call one app at once.
    """
    path, _, query = path.partition("?")
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path,
                               "QUERY_STRING": query, "wsgi.errors": io.StringIO()}
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    if https:
        environ["wsgi.url_scheme"] = "https"
    setup_testing_defaults(environ)
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        answer.update(status=status, headers=headers)
        return lambda data: None

    body = app(environ, start_response)
    try:
        text = b"".join(body).decode()
    finally:
        getattr(body, "close", lambda: None)()
    return answer["status"], answer["headers"], text


def show(fig: Any, alt: str) -> None:
    """Display a matplotlib ``Figure`` as a PNG with ``alt`` as its alt text and caption.

    The image's text form is ``alt`` (what a reader without images gets), and a
    caption below it says the same, so the figure reads without being seen.
    """
    from IPython.display import Markdown, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    png = base64.b64encode(buffer.getvalue()).decode()
    display({"image/png": png, "text/plain": f"[figure] {alt}"}, raw=True,  # type: ignore[no-untyped-call]
            metadata={"image/png": {"alt": alt}})
    display(Markdown(f"*Figure: {alt}*"))  # type: ignore[no-untyped-call]
