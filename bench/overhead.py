"""Per-request overhead of generic_session's WSGI filter and ASGI middleware, against a
hand-written floor and Beaker.

What is measured: microseconds per request for WSGI apps doing the same work, all
called in-process, in one run (the floor comes after (c)):

(a) ``bare``: a WSGI app that reads a counter ``n`` from a module-level dict and writes
    ``n + 1``, with no session at all;
(b) ``generic_session``: the same handler, with ``n`` kept in the session, behind
    ``generic_session.middleware(MemoryStore(), keys=[...])`` (signed cookies ``s`` and
    ``s.sig``, re-sent with a sliding expiry on every request);
(c) ``beaker``: the same handler behind ``beaker.middleware.SessionMiddleware`` with its
    memory backend (``session.type = 'memory'``, ``session.auto = True``, default cookie
    settings).  Beaker 1.14 re-sends its cookie only for a *new* session: for an existing
    one it never builds the ``Set-Cookie`` header, whatever the config (``auto``,
    ``save()`` and ``cookie_expires`` do not change that; see bbangert/beaker#200 and
    #233).  The handler therefore calls ``session._update_cookie_out()``, the private
    method Beaker's own users call for this, so that (b) and (c) do the same work: read
    the cookie, load ``n``, store ``n + 1``, send the cookie again.

(f) ``floor``: the least a signed-cookie session with a server-side store can do for
    this workload, written by hand for it alone: one regex per cookie, one HMAC
    (verified on the way in, reused on the way out), the cookie attributes and their
    Expires date formatted once a second, JSON in and out, a dict of sessions; like
    ours it refuses a token it never issued and sends ``Vary: Cookie`` and
    ``Cache-Control: private``.  Target: ours adds at most 1.2x what the floor adds.

The ASGI part times, in one event loop, a bare ASGI app, the same floor written as
ASGI middleware, and ``generic_session.ASGIMiddleware`` (``MemoryStore``, signed,
strict ids), with the same workload and checks; target: at most 1.2x the floor.

Every request of every app pays the same harness costs: a fresh environ (a ``dict.copy``
of a template holding the session cookie a browser would send), a ``start_response``
that records the headers, and iterating (and closing) the body.  The difference
``app - bare`` is therefore what the session middleware itself costs.

Why in-process: a server and a socket would add tens of microseconds of noise per
request, far more than the middleware's own cost, and would measure the server.
Calling the WSGI callable directly isolates the middleware.

How: the three apps are first checked (``n`` increments, the cookie comes back on every
request, the session is not re-minted), then warmed up, then timed in interleaved
rounds (the order rotates every round), so that the noise of this shared machine
hits all three alike; each app's figure is the median over the rounds (the minimum
is shown too: noise only adds time, so when the two give different ratios the run
was disturbed, and the output says so).  The garbage collector stays on: both
middlewares create a reference cycle per request (environ -> session -> environ), and
collecting it is part of their real cost.  After timing, ``n`` is checked again
against the number of requests served.

A micro-profile then times the pieces of generic_session's hot path in isolation
(HMAC, cookie parsing, MemoryStore, date formatting, ...), and ``--profile`` prints
cProfile's top functions over 20,000 requests of app (b).  The last lines printed are
the ``TARGET`` lines: ours/floor (WSGI and ASGI) and ours/Beaker.

Usage::

    python bench/overhead.py [--quick] [--profile] [--requests N] [--repeats R]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import email.utils
import gc
import hmac
import io
import json
import os
import platform
import pstats
import re
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datetime

import beaker
from beaker.middleware import SessionMiddleware

import generic_session
from bench.common import (
    Message,
    Receive,
    Scope,
    Send,
    asgi_bare_app,
    asgi_ours_handler,
    asgi_respond,
    target,
)
from generic_session import Cookies, GenericSession, Keygrip, MemoryStore

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

KEYS = ["bench key 1", "bench key 2"]
BEAKER_CONFIG: dict[str, Any] = {"session.type": "memory", "session.auto": True}
# Beaker with the cookie features ours has by default: signed, two-week expiry, HttpOnly.
# For context only: the target is measured against the cheaper default above.
BEAKER_SAME_FEATURES: dict[str, Any] = {
    **BEAKER_CONFIG,
    "session.secret": "bench key 1",
    "session.cookie_expires": datetime.timedelta(weeks=2),
    "session.httponly": True,
}
TARGET_RATIO = 0.33

# A plausible request, as a WSGI server would build it; the cookie is added per app.
BASE_ENVIRON: Environ = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/counter",
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8080",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "HTTP_HOST": "127.0.0.1:8080",
    "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "HTTP_ACCEPT": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "HTTP_ACCEPT_LANGUAGE": "en-GB,en;q=0.5",
    "HTTP_ACCEPT_ENCODING": "gzip, deflate, br",
    "HTTP_CONNECTION": "keep-alive",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.input": io.BytesIO(b""),
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": True,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}


class BenchError(AssertionError):
    """A check failed: the numbers would not mean what they claim."""


# ----------------------------------------------------------------------------
# The three apps
# ----------------------------------------------------------------------------

_BARE_STATE: dict[str, int] = {}


def _respond(start_response: StartResponse, n: int) -> list[bytes]:
    body = b"n=%d\n" % n
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]


def bare_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """(a): the handler's work without a session: n from a module-level dict."""
    n = _BARE_STATE.get("n") or 0
    _BARE_STATE["n"] = n + 1
    return _respond(start_response, n + 1)


def ours_handler(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """(b)'s inner app: n from the generic_session session."""
    session = environ["generic_session.session"]
    n = session.get("n") or 0
    session.set("n", n + 1)
    return _respond(start_response, n + 1)


def beaker_handler(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """(c)'s inner app: n from the Beaker session, whose cookie is re-sent explicitly."""
    session = environ["beaker.session"]
    n = session.get("n", 0)
    session["n"] = n + 1
    # Beaker 1.14 builds Set-Cookie only for a new session (or on invalidate/delete, or a
    # domain/path change); auto-save does not.  This private call makes it re-send.
    session._update_cookie_out()
    return _respond(start_response, n + 1)


# The hand-written floor: the least a signed-cookie session with a server-side store can
# do for this workload, written for it alone.  One regex per cookie, one HMAC (verified on
# the way in, reused on the way out: the token does not change), the cookie attributes and
# their Expires date formatted once a second, JSON in and out, a dict of sessions.  Like
# ours it refuses a token the store never issued (strict ids) and sends Vary: Cookie.
_FLOOR_STORE: dict[str, dict[str, str]] = {}
_FLOOR_KEY = KEYS[0].encode()
_FLOOR_TOKEN = re.compile(r"(?:^|;)\s*s=([^;]*)")
_FLOOR_SIG = re.compile(r"(?:^|;)\s*s\.sig=([^;]*)")
_floor_attributes: list[Any] = [0, ""]  # [the second it was made for, the attributes]


def _floor_sign(token: str) -> str:
    digest = hmac.digest(_FLOOR_KEY, b"s=" + token.encode(), "sha1")
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _floor_cookie_attributes() -> str:
    second = int(time.time())
    if second != _floor_attributes[0]:
        expires = email.utils.formatdate(second + generic_session.TWO_WEEKS, usegmt=True)
        _floor_attributes[:] = [second, f"; path=/; expires={expires}; samesite=lax; httponly"]
    text: str = _floor_attributes[1]
    return text


def _floor_session(header: str, store: dict[str, dict[str, str]]
                   ) -> tuple[str, str, dict[str, str]]:
    """The floor's session of a ``Cookie`` header: its token if signed and known (one
    regex per cookie, one HMAC), else a new one; with the token's signature."""
    match = _FLOOR_TOKEN.search(header)
    token = match.group(1) if match else None
    if token is not None:
        signature = _floor_sign(token)
        sent = _FLOOR_SIG.search(header)
        if (sent is None or not hmac.compare_digest(sent.group(1), signature)
                or token not in store):
            token = None
    if token is None:
        token = secrets.token_urlsafe(30)  # 40 characters, as ours
        signature = _floor_sign(token)
        store[token] = {}
    return token, signature, store[token]


def floor_middleware(app: WSGIApp) -> WSGIApp:
    """The floor as WSGI middleware: the session dict in ``environ['floor.session']``."""
    def wrapped(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        token, signature, environ["floor.session"] = _floor_session(
            environ.get("HTTP_COOKIE", ""), _FLOOR_STORE)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            attributes = _floor_cookie_attributes()
            headers.append(("Set-Cookie", f"s={token}{attributes}"))
            headers.append(("Set-Cookie", f"s.sig={signature}{attributes}"))
            headers.append(("Vary", "Cookie"))
            headers.append(("Cache-Control", "private"))
            return start_response(status, headers, exc_info)

        return app(environ, start)
    return wrapped


def floor_handler(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The floor's inner app: n as JSON text in the session dict."""
    session = environ["floor.session"]
    text = session.get("n")
    n = json.loads(text) if text is not None else 0
    session["n"] = json.dumps(n + 1)
    return _respond(start_response, n + 1)


def unused_session_handler(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Behind the filter but never touching the session: the wrapper's own cost."""
    return _respond(start_response, 0)


# ----------------------------------------------------------------------------
# Harness
# ----------------------------------------------------------------------------


class Recorder:
    """A start_response that records the status and headers of the last response."""

    __slots__ = ("headers", "status")

    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]],
                 exc_info: Any = None) -> Callable[[bytes], None]:
        self.status = status
        self.headers = headers
        return self._write

    def _write(self, data: bytes) -> None:
        raise BenchError("the apps must not use the write() callable")

    def set_cookies(self) -> list[tuple[str, str]]:
        """``(name, value)`` of each Set-Cookie of the last response, in order."""
        pairs = []
        for name, value in self.headers:
            if name.lower() == "set-cookie":
                cookie_name, _, cookie_value = value.strip().split(";", 1)[0].partition("=")
                pairs.append((cookie_name.strip(), cookie_value.strip()))
        return pairs


def call(app: WSGIApp, environ: Environ, recorder: Recorder) -> bytes:
    """One request: call the app, consume and close the body, as a server would."""
    body = app(environ, recorder)
    try:
        return b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


@dataclass
class Subject:
    """One app under test, with the environ template its client sends."""

    label: str
    app: WSGIApp
    cookie_names: tuple[str, ...]  # cookies its response must (re-)send every time
    template: Environ
    served: int = 0  # requests since the last check
    last_n: int = 0
    # Entered around each of its batches and checks: a variant with one speed trick off.
    patch: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext


def establish(app: WSGIApp, cookie_names: tuple[str, ...]) -> str:
    """Make a first request without cookies; return the Cookie header a browser would send."""
    recorder = Recorder()
    call(app, dict(BASE_ENVIRON), recorder)
    pairs = recorder.set_cookies()
    names = [name for name, _ in pairs]
    if sorted(names) != sorted(cookie_names):
        raise BenchError(f"first response set cookies {names}, expected {list(cookie_names)}")
    return "; ".join(f"{name}={value}" for name, value in pairs)


def check(subject: Subject, rounds: int = 3) -> None:
    """Make ``rounds`` requests: n must continue from the last check plus what was served,
    and every response must re-send the same session cookie(s); raise BenchError if not."""
    with subject.patch():
        _check(subject, rounds)


def _check(subject: Subject, rounds: int) -> None:
    sent = dict(pair.strip().partition("=")[::2]
                for pair in subject.template.get("HTTP_COOKIE", "").split(";"))
    for index in range(rounds):
        recorder = Recorder()
        body = call(subject.app, subject.template.copy(), recorder)
        if recorder.status != "200 OK":
            raise BenchError(f"{subject.label}: status {recorder.status!r}, body {body!r}")
        n = int(body.split(b"=", 1)[1])
        expected = subject.last_n + subject.served + 1
        if n != expected:
            raise BenchError(f"{subject.label}: n={n} after {subject.served} requests, "
                             f"expected {expected}: the session lost a write or was re-minted")
        subject.last_n, subject.served = n, 0
        got = dict(recorder.set_cookies())
        for name in subject.cookie_names:
            if name not in got:
                raise BenchError(f"{subject.label}: response {index + 1} did not re-send cookie "
                                 f"{name!r} (Set-Cookie: {recorder.set_cookies()})")
            if got[name] != sent.get(name):
                raise BenchError(f"{subject.label}: cookie {name!r} came back as {got[name]!r}, "
                                 f"the client sent {sent.get(name)!r}: a new session?")


def batch(subject: Subject, count: int) -> float:
    """Time ``count`` requests of one app; return microseconds per request."""
    with subject.patch():
        return _batch(subject, count)


def _batch(subject: Subject, count: int) -> float:
    app = subject.app
    copy = subject.template.copy
    recorder = Recorder()
    gc.collect()  # every batch starts with the same (empty) GC backlog
    start = time.perf_counter_ns()
    for _ in range(count):
        body = app(copy(), recorder)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    elapsed = time.perf_counter_ns() - start
    subject.served += count
    return elapsed / count / 1000


Patch = Callable[[], contextlib.AbstractContextManager[object]]


def _swap(owner: Any, name: str, value: object) -> Patch:
    """A patch: ``owner.name = value`` for the duration of a ``with`` block."""
    @contextlib.contextmanager
    def patch() -> Iterator[object]:
        # A class attribute is read from __dict__, so a staticmethod comes back as one.
        old = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, value)
        try:
            yield None
        finally:
            setattr(owner, name, old)
    return patch


def trick_variants(keygrip: Keygrip) -> list[tuple[str, Callable[[], Any]]]:
    """Each speed trick of the hot path, and a patch that does the plain thing instead.

    Timed like the other apps, in the same interleaved rounds, so that "what removing
    the trick costs" is the variant's time minus ours, under the same noise.  The
    patches reach into private names: they only ever run inside this benchmark.
    """
    gs: Any = generic_session
    raw = {id(pads): key.encode() for pads, key in zip(keygrip._keyed, KEYS, strict=True)}

    def plain_hmac(pads: Any, data: bytes) -> bytes:
        digest = hmac.digest(raw[id(pads)], data, "sha1")
        return base64.urlsafe_b64encode(digest).rstrip(b"=")

    def attributes_every_time(self: Any, secure: bool, deadline: float | None = None) -> str:
        expires = self.clock() + self.expire if deadline is None else deadline
        text: str = gs._attribute_suffix("/", gs._http_date(expires),
                                         self.domain, gs._check_samesite(self.samesite), secure,
                                         True)
        return text

    read_token = gs._SessionCore.__dict__["_read_token"]

    def sign_again(self: Any) -> tuple[str, None]:
        return read_token(self)[0], None

    def json_loads(text: str | bytes) -> Any:
        return json.loads(text)

    encoder = gs._ENCODER

    def encode_without_int_shortcut(key: str, value: Any) -> str:
        text: str = encoder.encode(value)
        return text

    operation = GenericSession.__dict__["_operation"]

    def operation_by_plan(self: Any, name: str, args: tuple[Any, ...], write: bool) -> Any:
        if self._state is gs._LIVE:
            return operation(self, name, args, write)
        return self._drive(self._operate(name, args, write))

    def later_operations_by_plan(self: Any, name: str, args: tuple[Any, ...],
                                 write: bool) -> Any:
        if self._state is gs._LIVE:
            return self._drive(self._operate(name, args, write))
        return operation(self, name, args, write)

    return [
        ("first operation inline, not by plan",
         _swap(GenericSession, "_operation", operation_by_plan)),
        ("later operations one store call, not by plan",
         _swap(GenericSession, "_operation", later_operations_by_plan)),
        ("HMAC from prepared pads (Keygrip._keyed)",
         _swap(Keygrip, "_sign_with", staticmethod(plain_hmac))),
        ("cookie attributes made once a second",
         _swap(gs.SessionOptions, "attributes", attributes_every_time)),
        ("verified signature reused when re-sending",
         _swap(gs._SessionCore, "_read_token", sign_again)),
        ("decode_json by raw_decode", _swap(gs, "decode_json", json_loads)),
        ("encode_json's int shortcut", _swap(gs, "encode_json", encode_without_int_shortcut)),
    ]


def make_subjects(tricks: bool) -> list[Subject]:
    keygrip = Keygrip(KEYS)
    ours_app = generic_session.middleware(MemoryStore(), keys=keygrip)(ours_handler)
    # Node's permissive ids, for what strict ids cost (the lifecycle issue's target: 10%).
    lax_app = generic_session.middleware(MemoryStore(), keys=keygrip, strict=False)(
        ours_handler)
    lax_cookie = establish(lax_app, ("s", "s.sig"))
    beaker_app = SessionMiddleware(beaker_handler, BEAKER_CONFIG)
    ours_cookie = establish(ours_app, ("s", "s.sig"))
    beaker_cookie = establish(beaker_app, ("beaker.session.id",))
    same_app = SessionMiddleware(beaker_handler, BEAKER_SAME_FEATURES)
    same_cookie = establish(same_app, ("beaker.session.id",))
    _BARE_STATE["n"] = 1  # as if its first request had been served too
    variants = []
    for label, patch in trick_variants(keygrip) if tricks else []:
        app = generic_session.middleware(MemoryStore(), keys=keygrip)(ours_handler)
        with patch():
            cookie = establish(app, ("s", "s.sig"))
        variants.append(Subject(f"- {label}", app, ("s", "s.sig"),
                                {**BASE_ENVIRON, "HTTP_COOKIE": cookie}, last_n=1, patch=patch))
    floor_app = floor_middleware(floor_handler)
    floor_cookie = establish(floor_app, ("s", "s.sig"))
    return [
        # The bare app's client sends a cookie as well, so its environ is the same size.
        Subject("bare", bare_app, (), {**BASE_ENVIRON, "HTTP_COOKIE": ours_cookie}, last_n=1),
        Subject("floor", floor_app, ("s", "s.sig"),
                {**BASE_ENVIRON, "HTTP_COOKIE": floor_cookie}, last_n=1),
        Subject("generic_session", ours_app, ("s", "s.sig"),
                {**BASE_ENVIRON, "HTTP_COOKIE": ours_cookie}, last_n=1),
        Subject("beaker", beaker_app, ("beaker.session.id",),
                {**BASE_ENVIRON, "HTTP_COOKIE": beaker_cookie}, last_n=1),
        Subject("generic_session (strict=False)", lax_app, ("s", "s.sig"),
                {**BASE_ENVIRON, "HTTP_COOKIE": lax_cookie}, last_n=1),
        Subject("beaker (same)", same_app, ("beaker.session.id",),
                {**BASE_ENVIRON, "HTTP_COOKIE": same_cookie}, last_n=1),
        *variants,
    ]


# ----------------------------------------------------------------------------
# ASGI: the bare app, the floor written as ASGI, and generic_session.ASGIMiddleware
# ----------------------------------------------------------------------------

ASGIApp = Callable[[Scope, Receive, Send], Any]
_ASGI_FLOOR_STORE: dict[str, dict[str, str]] = {}


async def asgi_floor_handler(scope: Scope, receive: Receive, send: Send) -> None:
    session = scope["floor.session"]
    text = session.get("n")
    n = json.loads(text) if text is not None else 0
    session["n"] = json.dumps(n + 1)
    await asgi_respond(send, n + 1)


def asgi_floor_middleware(app: ASGIApp) -> ASGIApp:
    """The hand-written floor of the WSGI benchmark, written as ASGI middleware."""
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        header = ""
        for name, value in scope["headers"]:
            if name == b"cookie":
                header = value.decode("latin-1")
                break
        token, signature, scope["floor.session"] = _floor_session(header, _ASGI_FLOOR_STORE)

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                attributes = _floor_cookie_attributes().encode()
                message["headers"] = [
                    *message["headers"],
                    (b"set-cookie", b"s=" + token.encode() + attributes),
                    (b"set-cookie", b"s.sig=" + signature.encode() + attributes),
                    (b"vary", b"Cookie"), (b"cache-control", b"private")]
            await send(message)

        await app(scope, receive, send_with_cookie)
    return wrapped


_ASGI_SCOPE: Scope = {
    "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
    "method": "GET", "scheme": "http", "path": "/counter", "raw_path": b"/counter",
    "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8080),
    "headers": [(b"host", b"127.0.0.1:8080"),
                (b"user-agent", BASE_ENVIRON["HTTP_USER_AGENT"].encode()),
                (b"accept", BASE_ENVIRON["HTTP_ACCEPT"].encode()),
                (b"accept-language", b"en-GB,en;q=0.5"),
                (b"accept-encoding", b"gzip, deflate, br"), (b"connection", b"keep-alive")],
}


async def asgi_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class ASGIClient:
    """Calls one ASGI app in-process as one browser would: its cookies, a fresh scope each time."""

    def __init__(self, label: str, app: ASGIApp, cookie_names: tuple[str, ...]) -> None:
        self.label, self.app, self.cookie_names = label, app, cookie_names
        self.messages: list[Message] = []
        self.scope: Scope = {**_ASGI_SCOPE, "headers": list(_ASGI_SCOPE["headers"])}
        self.served = 0

    async def collect(self, message: Message) -> None:
        """The app's ``send``: keeps the messages of the current request."""
        self.messages.append(message)

    async def request(self) -> int:
        """One checked request: the n it answered; the session cookie(s) must come back."""
        self.messages = []
        scope = self.scope.copy()
        await self.app(scope, asgi_receive, self.collect)
        start, body = self.messages
        if start["status"] != 200:
            raise BenchError(f"ASGI {self.label}: status {start['status']}")
        cookies = [value.decode().split(";", 1)[0] for name, value in start["headers"]
                   if name.lower() == b"set-cookie"]
        names = sorted(cookie.partition("=")[0] for cookie in cookies)
        if names != sorted(self.cookie_names):
            raise BenchError(f"ASGI {self.label}: set cookies {names}")
        if cookies and not any(name == b"cookie" for name, _ in self.scope["headers"]):
            self.scope["headers"].append((b"cookie", "; ".join(cookies).encode()))
        return int(body["body"].split(b"=", 1)[1])

    async def batch(self, count: int) -> float:
        app, scope, send = self.app, self.scope, self.collect
        messages = self.messages
        gc.collect()
        start = time.perf_counter_ns()
        for _ in range(count):
            messages.clear()
            await app(scope.copy(), asgi_receive, send)
        elapsed = time.perf_counter_ns() - start
        self.served += count
        return elapsed / count / 1000


def asgi_clients() -> dict[str, ASGIClient]:
    """The three ASGI apps, each with the client that calls it, by label."""
    clients = [
        ASGIClient("bare", asgi_bare_app, ()),
        ASGIClient("floor", asgi_floor_middleware(asgi_floor_handler), ("s", "s.sig")),
        ASGIClient("generic_session", generic_session.ASGIMiddleware(
            asgi_ours_handler, store=MemoryStore(), keys=Keygrip(KEYS)), ("s", "s.sig")),
    ]
    return {client.label: client for client in clients}


async def _asgi_rounds(requests: int, repeats: int) -> dict[str, list[float]]:
    clients = list(asgi_clients().values())
    first = {client.label: await client.request() for client in clients}  # mints the sessions
    for client in clients:
        await client.batch(max(requests // 2, 500))
    times: dict[str, list[float]] = {client.label: [] for client in clients}
    for round_index in range(repeats):
        shift = round_index % len(clients)
        for client in clients[shift:] + clients[:shift]:
            times[client.label].append(await client.batch(requests))
    for client in clients:
        n = await client.request()
        if client.label != "bare" and n != first[client.label] + client.served + 1:
            raise BenchError(f"ASGI {client.label}: n={n} after {client.served} requests: "
                             "a lost write or a re-minted session")
    return times


def asgi_overhead(requests: int, repeats: int) -> float:
    """Time the three ASGI apps in interleaved rounds; print them; return ours/floor added."""
    times = asyncio.run(_asgi_rounds(requests, repeats))
    median = {label: statistics.median(values) for label, values in times.items()}
    bare = median["bare"]
    print(f"ASGI, in-process (one event loop, {requests:,} requests x {repeats} interleaved "
          "rounds; the cookie's checks as above)")
    print(f"{'app':<16} {'us/request':>11} {'min':>7} {'added vs bare':>14}")
    for label, values in times.items():
        added = "" if label == "bare" else f"{median[label] - bare:+.2f}"
        print(f"{label:<16} {median[label]:11.2f} {min(values):7.2f} {added:>14}")
    paired = [(o - b) / (f - b) for b, f, o in
              zip(times["bare"], times["floor"], times["generic_session"], strict=True)]
    print("per-round ratios ours/floor: " + " ".join(f"{value:.2f}" for value in paired))
    print()
    return (median["generic_session"] - bare) / (median["floor"] - bare)


# ----------------------------------------------------------------------------
# Micro-profile of generic_session's hot path
# ----------------------------------------------------------------------------


def per_call_ns(function: Callable[[], object], loops: int, repeats: int = 5) -> float:
    """Median nanoseconds per call of ``function`` over ``repeats`` runs of ``loops`` calls."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(loops):
            function()
        samples.append((time.perf_counter_ns() - start) / loops)
    return statistics.median(samples)


def micro_profile(loops: int, ours_added_us: float, ours_template: Environ) -> None:
    """Time the pieces of the hot path in isolation and print them.

    Some rows reach into generic_session's private helpers; a row whose helper has
    been renamed or changed prints ``n/a`` instead of stopping the benchmark.
    """
    gs: Any = generic_session  # private helpers: looked up when each row runs
    keygrip = Keygrip(KEYS)
    cookie_header = ours_template["HTTP_COOKIE"]
    jar = dict(pair.strip().partition("=")[::2] for pair in cookie_header.split(";"))
    token, signature = jar["s"], jar["s.sig"]
    data = f"s={token}"
    key = KEYS[0].encode()
    store_id = "session:" + token
    expire = generic_session.TWO_WEEKS
    now = time.time()
    expires = now + expire
    options = generic_session.SessionOptions(keys=KEYS)

    def store_get_set() -> Callable[[], object]:
        store = MemoryStore()
        store.set(store_id, "n", 1, expire)

        def run() -> None:
            n = store.get(store_id, "n", expire)
            store.set(store_id, "n", n + 1, expire)
        return run

    def cookies_set_signed() -> Callable[[], object]:
        return lambda: Cookies(ours_template, [], keygrip).set(
            "s", token, expires=expires, samesite="Lax", secure=False, httponly=True)

    def session_cookie_work() -> Callable[[], object]:
        options = generic_session.SessionOptions(keys=keygrip)
        lazy = GenericSession.lazy
        store = MemoryStore()
        return lambda: lazy(store, options, Cookies(ours_template.copy(), [], keygrip),
                            https=lambda: False).id

    def request_unused() -> Callable[[], object]:
        app = generic_session.middleware(MemoryStore(), keys=KEYS)(unused_session_handler)
        recorder = Recorder()
        return lambda: call(app, ours_template.copy(), recorder)

    rows: list[tuple[str, Callable[[], Callable[[], object]]]] = [
        ("HMAC-SHA1 sign: Keygrip.sign('s=<token>')", lambda: lambda: keygrip.sign(data)),
        ("HMAC-SHA1 verify: Keygrip.index (match on key 0)",
         lambda: lambda: keygrip.index(data, signature)),
        ("  raw hmac.digest(key, data, 'sha1') for comparison",
         lambda: lambda: hmac.digest(key, data.encode(), "sha1")),
        ("cookie header parse: _parse_cookie_header (s + s.sig)",
         lambda: lambda: gs._parse_cookie_header(cookie_header)),
        ("MemoryStore get + set of one key (existing session)", store_get_set),
        ("  encode_json('n', 12345)", lambda: lambda: gs.encode_json("n", 12345)),
        ("  decode_json('12345')", lambda: lambda: gs.decode_json("12345")),
        ("  repr(12345) + int('12345'): an int without JSON",
         lambda: lambda: (repr(12345), int("12345"))),
        ("email.utils.formatdate(t, usegmt=True)",
         lambda: lambda: email.utils.formatdate(now, usegmt=True)),
        ("attributes + Expires, made once a second (SessionOptions.attributes)",
         lambda: lambda: options.attributes(False)),
        ("Cookies(...).set signed: s + s.sig Set-Cookie headers", cookies_set_signed),
        ("lazy session .id: parse + verify + 2 Set-Cookie (no store)", session_cookie_work),
        ("full request through filter, session unused", request_unused),
    ]
    baseline = per_call_ns(lambda: None, loops)
    print(f"Micro-profile of generic_session's hot path ({loops:,} calls each, median of 5; "
          f"a {baseline:.0f} ns call overhead subtracted)")
    print(f"  {'operation':<62} {'ns/call':>8} {'% of ours added':>16}")
    for label, make in rows:
        gc.collect()
        try:
            function = make()
            function()
        except (AttributeError, TypeError, ValueError) as error:
            print(f"  {label:<62} {'n/a':>8}  ({type(error).__name__}: {error})")
            continue
        ns = max(per_call_ns(function, loops) - baseline, 0.0)
        share = 100 * ns / (ours_added_us * 1000) if ours_added_us > 0 else float("nan")
        print(f"  {label:<62} {ns:8.0f} {share:15.0f}%")
    print("  (the rows overlap: indented rows are parts of the row above; the last two rows\n"
          "   contain the HMAC, parse and Set-Cookie rows; 'ours added' is app (b) - app (a))")


def print_tricks(times: dict[str, list[float]]) -> None:
    """What switching each speed trick off costs per request: the variant minus ours, per
    round (same round, same noise), median over the rounds."""
    labels = [label for label in times if label.startswith("- ")]
    if not labels:
        return
    print("Speed tricks: what the request costs more without each (kept if >= ~0.5 us): the "
          "median of the per-round differences, and the fastest round's against ours' fastest "
          "(the least disturbed: trust it when the machine is busy)")
    for label in labels:
        deltas = [v - o for v, o in zip(times[label], times["generic_session"], strict=True)]
        fastest = min(times[label]) - min(times["generic_session"])
        print(f"  {label[2:]:<52} {statistics.median(deltas):+6.2f} us/request, fastest "
              f"{fastest:+6.2f} (rounds: {' '.join(f'{d:+.2f}' for d in deltas)})")
    print()


def print_profile(subject: Subject, count: int) -> None:
    """cProfile ``count`` requests of ``subject`` and print the top 15 functions twice."""
    profiler = cProfile.Profile()
    app = subject.app
    copy = subject.template.copy
    recorder = Recorder()
    profiler.enable()
    for _ in range(count):
        for _chunk in app(copy(), recorder):
            pass
    profiler.disable()
    subject.served += count
    for order in ("tottime", "cumulative"):
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream).strip_dirs().sort_stats(order)
        stats.print_stats(15)
        text = stream.getvalue()
        # Keep the table (from the column header on), not pstats' preamble.
        text = text[text.find("   ncalls"):].rstrip()
        print(f"cProfile of {count:,} requests of app (b), top 15 by {order}:")
        print(text)
        print()


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer requests (1,000 x 5) for a fast smoke run")
    parser.add_argument("--requests", type=int, help="requests per app per round (5,000)")
    parser.add_argument("--repeats", type=int, help="timed rounds (7)")
    parser.add_argument("--no-tricks", action="store_true",
                        help="skip the variants that each switch one speed trick off")
    parser.add_argument("--profile", action="store_true",
                        help="also print cProfile's top 15 functions of app (b)")
    parser.add_argument("--profile-requests", type=int, default=20_000,
                        help="requests of app (b) under cProfile (20,000)")
    args = parser.parse_args(argv)
    requests = args.requests or (1_000 if args.quick else 5_000)
    repeats = args.repeats or (5 if args.quick else 7)
    micro_loops = 20_000 if args.quick else 100_000

    print(f"Python {platform.python_version()} ({platform.python_implementation()}), "
          f"generic_session {generic_session.__version__}, Beaker {beaker.__version__}")
    print(f"{requests:,} requests x {repeats} interleaved rounds per app; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"Beaker config: {BEAKER_CONFIG} + session._update_cookie_out() in the handler")
    print("beaker (same): the same, signed, with a two-week expiry and HttpOnly, as ours is")

    subjects = make_subjects(tricks=not args.no_tricks)
    for subject in subjects:
        check(subject)
    print("checks passed: n increments, each response re-sends the same session cookie(s)")

    for subject in subjects:  # warm up: caches, branch predictors, CPU frequency
        batch(subject, max(requests // 2, 500))
    times: dict[str, list[float]] = {subject.label: [] for subject in subjects}
    for round_index in range(repeats):
        shift = round_index % len(subjects)
        for subject in subjects[shift:] + subjects[:shift]:
            times[subject.label].append(batch(subject, requests))
    for subject in subjects:
        check(subject, rounds=1)
    print(f"checks passed after timing: n advanced by exactly the {requests * repeats:,} "
          "timed requests (plus warm-up)")
    print()

    median = {label: statistics.median(values) for label, values in times.items()}
    bare = median["bare"]
    width = max(len(label) for label in times)
    print(f"{'app':<{width}} {'us/request':>11} {'min':>7} {'max':>7} {'added vs bare':>14} "
          f"{'x bare':>7}")
    for label, values in times.items():
        added = "" if label == "bare" else f"{median[label] - bare:+.2f}"
        print(f"{label:<{width}} {median[label]:11.2f} {min(values):7.2f} {max(values):7.2f} "
              f"{added:>14} {median[label] / bare:7.2f}")
    ours_added = median["generic_session"] - bare
    beaker_added = median["beaker"] - bare
    paired = [
        (o - b) / (k - b)
        for b, o, k in zip(times["bare"], times["generic_session"], times["beaker"], strict=True)
        if k - b > 0
    ]
    print("per-round ratios (same round, so the same machine noise): "
          + " ".join(f"{value:.2f}" for value in paired))
    print()
    print_tricks(times)

    ours = next(subject for subject in subjects if subject.label == "generic_session")
    micro_profile(micro_loops, ours_added, ours.template)
    print()
    if args.profile:
        print_profile(ours, args.profile_requests)
        check(ours, rounds=1)

    if beaker_added <= 0:
        raise BenchError(f"Beaker's added cost is {beaker_added:.2f} us: too noisy to compare")
    ratio = ours_added / beaker_added
    # Noise only ever adds time, so the fastest round is the least disturbed one: when the
    # ratio of the minima disagrees with the ratio of the medians, the run was noisy.
    best = {label: min(values) for label, values in times.items()}
    min_ratio = (best["generic_session"] - best["bare"]) / (best["beaker"] - best["bare"])
    noisy = abs(ratio - min_ratio) > 0.15 * min_ratio
    print(f"generic_session added {ours_added:.2f} us/request, Beaker added "
          f"{beaker_added:.2f} us/request (medians); ratio of the per-app minima: "
          f"{min_ratio:.2f}")
    if noisy:
        print("WARNING: the median and minimum ratios disagree by more than 15%: the machine "
              "was busy during this run; re-run it (or trust the minima) before comparing")
    lax_added = median["generic_session (strict=False)"] - bare
    print(f"strict ids cost {ours_added - lax_added:+.2f} us/request")
    target("WSGI filter added, strict ids / strict=False", ours_added / lax_added, 1.10)
    same_ratio = ours_added / (median["beaker (same)"] - bare)
    print(f"ratio against Beaker with the same cookie features (for context): {same_ratio:.2f}")
    print(f"ratio (generic_session added / Beaker added): {ratio:.2f} "
          f"(target <= {TARGET_RATIO:.2f})" + (" [NOISY RUN]" if noisy else ""))
    print()
    asgi_ratio = asgi_overhead(requests, repeats)
    floor_added = median["floor"] - bare
    floor_paired = [(o - b) / (f - b) for b, f, o in
                    zip(times["bare"], times["floor"], times["generic_session"], strict=True)]
    print(f"WSGI: generic_session added {ours_added:.2f} us/request, the hand-written floor "
          f"{floor_added:.2f} us/request; per round ours/floor: "
          + " ".join(f"{value:.2f}" for value in floor_paired))
    target("WSGI filter added / hand-written floor added (MemoryStore, signed, strict ids)",
           ours_added / floor_added, 1.2)
    target("ASGIMiddleware added / the same floor written as ASGI", asgi_ratio, 1.2)
    target("WSGI filter added / Beaker added", ratio, TARGET_RATIO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
