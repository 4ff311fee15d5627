"""Per-request overhead of generic_session's ASGI middleware, against Starlette's and starsessions'.

What is measured: microseconds per request for four ASGI apps doing the same work,
each called in-process (``await app(scope, receive, send)``: no server, no socket),
in one run, on one event loop:

(a) ``bare``: an ASGI app that reads a counter ``n`` from a module-level dict and
    writes ``n + 1``, with no session at all;
(b) ``generic_session``: the same handler, with ``n`` in the session, behind
    ``ASGIMiddleware(app, store=MemoryStore(), keys=[...])``: signed cookies (``s``
    and ``s.sig``), strict ids, the cookie re-sent with a sliding expiry every time;
(c) ``starlette``: the handler behind Starlette's ``SessionMiddleware`` (the whole
    session in a signed cookie, no store at all), two-week expiry;
(b') ``generic_session (unsigned)``, for context: (b) without ``keys``, since
    starsessions' cookie is an unsigned id;
(d) ``starsessions``: the handler behind starsessions' ``SessionMiddleware`` with its
    ``InMemoryStore`` and ``SessionAutoloadMiddleware`` (how its docs load the
    session), rolling two-week expiry, ``cookie_https_only=False`` (the scope is
    plain HTTP, as ours sends ``secure`` only over HTTPS).

Every request of every app pays the same harness costs: a fresh scope (a ``dict.copy``
of a template whose headers carry the cookie a browser would send), a ``receive`` that
returns the empty request body, and a ``send`` that keeps the response start.  So
``app - bare`` is what the session middleware itself costs.

The cookie round trip: (b) and (d) keep ``n`` on the server, so the client sends the
same cookie every time and ``n`` grows.  (c) keeps ``n`` in the cookie itself: its
client sends the same cookie (holding ``n = 1``) every time, and each response must
carry a new cookie holding ``n = 2``; the work per request (verify, decode, read,
write, encode, sign) is the same as if the client sent the new cookie back.

How: each app is checked first (``n`` increments, or for (c) the response's cookie
holds ``n + 1``; the session cookie comes back on every response; no new session),
then warmed up, then timed in interleaved rounds (the order rotates every round),
so the noise of this shared machine hits all alike; each figure is the median over
the rounds (the minimum too).  The garbage collector stays on.  The ratios come last.

Usage::

    python bench/asgi.py [--quick] [--requests N] [--repeats R]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import starsessions
from starlette.middleware.sessions import SessionMiddleware as StarletteSessionMiddleware

import generic_session
from bench.common import (
    ASGI_BARE_STATE,
    Message,
    Receive,
    Scope,
    Send,
    asgi_bare_app,
    asgi_ours_handler,
    asgi_respond,
    target,
)
from generic_session import ASGIMiddleware, MemoryStore

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KEYS = ["bench key 1", "bench key 2"]
TWO_WEEKS = 14 * 24 * 3600
TARGET_VS_STARSESSIONS = 1.0  # ours must add less than starsessions
TARGET_VS_STARLETTE = 1.5  # and at most 1.5x Starlette's cookie-only middleware

# A plausible request, as uvicorn builds its scope; the cookie header is added per app.
BASE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"host", b"127.0.0.1:8080"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"accept-language", b"en-GB,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate, br"),
    (b"connection", b"keep-alive"),
]
BASE_SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "server": ("127.0.0.1", 8080),
    "client": ("127.0.0.1", 54321),
    "scheme": "http",
    "method": "GET",
    "root_path": "",
    "path": "/counter",
    "raw_path": b"/counter",
    "query_string": b"",
    "headers": BASE_HEADERS,
    "state": {},
}
REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


class BenchError(AssertionError):
    """A check failed: the numbers would not mean what they claim."""


# ----------------------------------------------------------------------------
# The four apps
# ----------------------------------------------------------------------------

async def dict_session_handler(scope: Scope, receive: Receive, send: Send) -> None:
    """(c) and (d)'s inner app: n from the dict-like session both middlewares put in
    ``scope["session"]``."""
    session = scope["session"]
    n = session.get("n", 0)
    session["n"] = n + 1
    await asgi_respond(send, n + 1)


def make_apps() -> dict[str, ASGIApp]:
    # Starlette types an ASGI app over MutableMapping where ours say dict: the same calls.
    handler: Any = dict_session_handler
    apps: dict[str, Any] = {
        "bare": asgi_bare_app,
        "generic_session": ASGIMiddleware(asgi_ours_handler, store=MemoryStore(), keys=KEYS),
        # For context: starsessions' cookie is an unsigned id; this is ours unsigned too.
        "generic_session (unsigned)": ASGIMiddleware(asgi_ours_handler, store=MemoryStore()),
        "starlette": StarletteSessionMiddleware(handler, secret_key=KEYS[0],
                                                max_age=TWO_WEEKS),
        "starsessions": starsessions.SessionMiddleware(
            starsessions.SessionAutoloadMiddleware(handler),
            store=starsessions.InMemoryStore(), lifetime=TWO_WEEKS, rolling=True,
            cookie_https_only=False),
    }
    return apps


#: The cookies each app's response must carry every time.
COOKIES = {"bare": (), "generic_session": ("s", "s.sig"), "generic_session (unsigned)": ("s",),
           "starlette": ("session",), "starsessions": ("session",)}


# ----------------------------------------------------------------------------
# Harness
# ----------------------------------------------------------------------------


async def receive() -> Message:
    return REQUEST


class Recorder:
    """The server side of one response: keeps the start's status and headers and the body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = message["headers"]
        else:
            self.body = message.get("body", b"")

    def set_cookies(self) -> dict[str, str]:
        """{name: value} of each Set-Cookie of the last response."""
        found = {}
        for name, value in self.headers:
            if name.lower() == b"set-cookie":
                cookie, _, _ = value.decode("latin-1").partition(";")
                cookie_name, _, cookie_value = cookie.partition("=")
                found[cookie_name.strip()] = cookie_value.strip()
        return found


@dataclass
class Subject:
    """One app under test, with the scope template its client sends."""

    label: str
    app: ASGIApp
    template: Scope
    served: int = 0  # requests since the last check
    last_n: int = 0


def scope_with_cookie(cookie: str) -> Scope:
    return {**BASE_SCOPE, "headers": [*BASE_HEADERS, (b"cookie", cookie.encode("latin-1"))]}


async def establish(label: str, app: ASGIApp) -> str:
    """A first request with no cookie; return the Cookie header a browser would then send."""
    recorder = Recorder()
    await app(dict(BASE_SCOPE), receive, recorder.send)
    cookies = recorder.set_cookies()
    if sorted(cookies) != sorted(COOKIES[label]):
        raise BenchError(f"{label}: first response set cookies {sorted(cookies)}, expected "
                         f"{sorted(COOKIES[label])}")
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


def starlette_n(cookie_value: str) -> int:
    """The n inside a Starlette session cookie (base64 JSON, then itsdangerous' signature)."""
    payload = cookie_value.split(".")[0]
    data: dict[str, int] = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
    return data["n"]


async def check(subject: Subject, rounds: int = 3) -> None:
    """``rounds`` requests: n continues from the last check plus what was served (for
    Starlette: the response's cookie holds n + 1), and the session cookie comes back."""
    sent = dict(pair.strip().partition("=")[::2]
                for header, value in subject.template["headers"] if header == b"cookie"
                for pair in value.decode().split(";"))
    for index in range(rounds):
        recorder = Recorder()
        await subject.app(subject.template.copy(), receive, recorder.send)
        if recorder.status != 200:
            raise BenchError(f"{subject.label}: status {recorder.status}, {recorder.body!r}")
        n = int(recorder.body.split(b"=", 1)[1])
        got = recorder.set_cookies()
        if subject.label == "starlette":
            # n lives in the cookie, and the client always sends the one holding n = 1.
            if n != 2 or starlette_n(got["session"]) != 2:
                raise BenchError(f"starlette: n={n}, the cookie holds "
                                 f"{starlette_n(got['session'])}, expected 2 and 2")
            continue
        expected = subject.last_n + subject.served + 1
        if n != expected:
            raise BenchError(f"{subject.label}: n={n} after {subject.served} requests, "
                             f"expected {expected}: a write was lost or the session re-minted")
        subject.last_n, subject.served = n, 0
        for name in COOKIES[subject.label]:
            if got.get(name) != sent.get(name):
                raise BenchError(f"{subject.label}: response {index + 1} sent cookie {name!r} "
                                 f"as {got.get(name)!r}, the client holds {sent.get(name)!r}")


async def batch(subject: Subject, count: int) -> float:
    """Time ``count`` requests of one app; return microseconds per request."""
    app = subject.app
    copy = subject.template.copy
    send = Recorder().send
    gc.collect()  # every batch starts with the same (empty) GC backlog
    start = time.perf_counter_ns()
    for _ in range(count):
        await app(copy(), receive, send)
    elapsed = time.perf_counter_ns() - start
    subject.served += count
    return elapsed / count / 1000


async def make_subjects() -> list[Subject]:
    subjects = []
    for label, app in make_apps().items():
        if label == "bare":
            continue
        cookie = await establish(label, app)
        subjects.append(Subject(label, app, scope_with_cookie(cookie), last_n=1))
    ASGI_BARE_STATE["n"] = 1  # as if its first request had been served too
    # The bare app's client sends a cookie as well, so its scope is the same size.
    bare = Subject("bare", asgi_bare_app, subjects[0].template, last_n=1)
    return [bare, *subjects]


async def run(requests: int, repeats: int) -> dict[str, list[float]]:
    subjects = await make_subjects()
    for subject in subjects:
        await check(subject)
    print("checks passed: n increments (Starlette: the new cookie holds n + 1), every "
          "response re-sends the session cookie(s)")
    for subject in subjects:  # warm up
        await batch(subject, max(requests // 2, 500))
    times: dict[str, list[float]] = {subject.label: [] for subject in subjects}
    for round_index in range(repeats):
        shift = round_index % len(subjects)
        for subject in subjects[shift:] + subjects[:shift]:
            times[subject.label].append(await batch(subject, requests))
    for subject in subjects:
        await check(subject, rounds=1)
    print(f"checks passed after timing: n advanced by exactly the {requests * repeats:,} "
          "timed requests (plus warm-up)")
    print()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer requests (1,000 x 5) for a fast smoke run")
    parser.add_argument("--requests", type=int, help="requests per app per round (5,000)")
    parser.add_argument("--repeats", type=int, help="timed rounds (7)")
    args = parser.parse_args(argv)
    requests = args.requests or (1_000 if args.quick else 5_000)
    repeats = args.repeats or (5 if args.quick else 7)

    print(f"Python {platform.python_version()} ({platform.python_implementation()}), "
          f"generic_session {generic_session.__version__}, starlette {version('starlette')}, "
          f"starsessions {version('starsessions')}, asyncio event loop")
    print(f"{requests:,} requests x {repeats} interleaved rounds per app; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    times = asyncio.run(run(requests, repeats))

    median = {label: statistics.median(values) for label, values in times.items()}
    best = {label: min(values) for label, values in times.items()}
    bare = median["bare"]
    width = max(len(label) for label in times)
    print(f"{'app':<{width}} {'us/request':>11} {'min':>7} {'max':>7} {'added vs bare':>14}")
    for label, values in times.items():
        more = "" if label == "bare" else f"{median[label] - bare:+.2f}"
        print(f"{label:<{width}} {median[label]:11.2f} {min(values):7.2f} {max(values):7.2f} "
              f"{more:>14}")
    print()
    added = {label: median[label] - bare for label in times if label != "bare"}
    best_added = {label: best[label] - best["bare"] for label in times if label != "bare"}
    for other in ("starlette", "starsessions"):
        if added[other] <= 0:
            raise BenchError(f"{other}'s added cost is {added[other]:.2f} us: too noisy")
    vs_starsessions = added["generic_session"] / added["starsessions"]
    vs_starlette = added["generic_session"] / added["starlette"]
    min_vs_starsessions = best_added["generic_session"] / best_added["starsessions"]
    min_vs_starlette = best_added["generic_session"] / best_added["starlette"]
    unsigned = added["generic_session (unsigned)"] / added["starsessions"]
    print(f"for context: generic_session unsigned (as starsessions' cookie is) added "
          f"{added['generic_session (unsigned)']:.2f} us, {unsigned:.2f} of starsessions'")
    print(f"ratios of the per-app minima (noise only adds time): vs starsessions "
          f"{min_vs_starsessions:.2f}, vs Starlette {min_vs_starlette:.2f}")
    # "Less than" starsessions, printed as "<= 1": a ratio of exactly 1.00 would be a tie.
    target("ASGIMiddleware added / starsessions added", vs_starsessions,
           TARGET_VS_STARSESSIONS)
    target("ASGIMiddleware added / Starlette SessionMiddleware added", vs_starlette,
           TARGET_VS_STARLETTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
