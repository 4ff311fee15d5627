"""Where the filter's instructions go: each part of a request beside the floor's, by callgrind.

Why: ``bench/instructions.py`` counts whole requests, and says by how much ours adds
more than the hand-written floor of ``bench/overhead.py``; this script says where.
Each part of one request (the per-request objects, reading the cookie, ``get`` and
``set`` of ``n``, re-sending the cookie and the header pass) is run on its own, for
ours and for the floor's code that does the same job, with the same cookie and a
live session, so the table of ``bench/README.md`` (section 1) can be made again.
It also counts what a single per-request object, at once the held response, the
cookie jar and the session, would still cost: a class of 20 slots and its lock.

How: each part is a call of one closure.  A child process under callgrind makes
all of them, runs each ``SMALL`` times to warm it up, then one part ``COUNT``
times; the difference between its total and that of a child that runs none,
over ``COUNT``, is one run's cost, and a part that does nothing, counted the
same way, is taken off (the loop and the call).  The parts overlap the
whole request a little (each is measured alone): the rows do not add up to
``bench/instructions.py``'s totals exactly, and the README says by how much.
Without valgrind it says so and exits 0.

Usage::

    python bench/parts.py [--quick] [--count N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import callgrind  # noqa: E402

SMALL = 200
Step = Callable[[], object]


class _Merged:
    """What one object per request, at once held response, cookie jar and session,
    would have to hold: about the three objects' slots, less their overlap."""

    __slots__ = tuple(f"slot{index}" for index in range(20))

    def __init__(self, start_response: Any, environ: Any, header: str, store: Any,
                 options: Any, lock: Any) -> None:
        cookies: dict[str, Any] = {}
        headers: list[Any] = []
        self.slot0, self.slot1, self.slot2, self.slot3 = start_response, environ, None, cookies
        self.slot4, self.slot5, self.slot6, self.slot7 = lock, headers, None, header
        self.slot8, self.slot9, self.slot10, self.slot11 = None, store, options, True
        self.slot12, self.slot13, self.slot14, self.slot15 = "not started", None, "", None
        self.slot16, self.slot17, self.slot18, self.slot19 = False, None, None, None


def _steps() -> dict[str, Step]:
    """Each part as a function of no arguments, made with its own live session."""
    import generic_session as gs
    from bench import overhead

    keygrip = gs.Keygrip(overhead.KEYS)
    options = gs.SessionOptions(keys=keygrip)
    store = gs.MemoryStore()
    token = gs._new_token()
    sid = options.id_prefix + token
    store.create(sid, options.expire)
    store.set(sid, "n", 1, options.expire, live=True)
    signature = keygrip.sign("s=" + token)
    header = f"s={token}; s.sig={signature}"
    environ: dict[str, Any] = {"HTTP_COOKIE": header, "wsgi.url_scheme": "http"}
    scope: dict[str, Any] = {"type": "http", "headers": [(b"cookie", header.encode())]}
    app_headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "4")]
    floor_store = {token: {"n": "1"}}
    expire = options.expire

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        return None

    async def send(message: Any) -> None:
        return None

    def sink(name: str, value: str) -> None:
        return None

    # A live session held by a response, for the parts that follow the first operation.
    response = gs._DeferredStart(start_response, environ)
    session = gs.GenericSession.lazy(
        store, options, gs.Cookies.from_header(header, response.add_cookie, keygrip),
        https=response.is_https)
    session.get("n")

    def objects() -> None:
        held = gs._DeferredStart(start_response, environ)
        cookies = gs.Cookies.from_header(header, held.add_cookie, keygrip)
        held.session = environ["generic_session.session"] = gs.GenericSession.lazy(
            store, options, cookies, https=held.is_https)

    def asgi_objects() -> None:
        held = gs._ASGIResponse(send, scope)
        cookies = gs.Cookies.from_header(header, held.add_cookie, keygrip)
        held.session = scope["session"] = gs.AsyncGenericSession.lazy(
            store, options, cookies, https=held.is_https)

    def floor_objects() -> None:
        def start(status: str, headers: Any, exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("Set-Cookie", token + signature)])
        environ["floor.session"] = start

    def get_set() -> None:
        session.set("n", session.get("n") + 1)

    def store_get_set() -> None:
        store.set(sid, "n", store.get(sid, "n", expire, live=True) + 1, expire, live=True)

    def floor_get_set() -> None:  # overhead.floor_handler's work on its session dict
        data = floor_store[token]
        text = data.get("n")
        data["n"] = json.dumps((json.loads(text) if text is not None else 0) + 1)

    def send_and_headers() -> None:
        session._send_cookie(token, signature)
        gs._with_cookies(list(app_headers), response.cookies.values(), gs._WSGI_SPELLING)

    def floor_send_and_headers() -> None:  # the lines of overhead.floor_middleware's start
        attributes = overhead._floor_cookie_attributes()
        headers = list(app_headers)
        headers.append(("Set-Cookie", f"s={token}{attributes}"))
        headers.append(("Set-Cookie", f"s.sig={signature}{attributes}"))
        headers.append(("Vary", "Cookie"))
        headers.append(("Cache-Control", "private"))

    lock = gs._RLock
    return {
        "nothing": lambda: None,
        "objects": objects,
        "asgi objects": asgi_objects,
        "floor objects": floor_objects,
        "merged object": lambda: _Merged(start_response, environ, header, store, options,
                                         lock()),
        "cookies made": lambda: gs.Cookies.from_header(header, sink, keygrip),
        "cookies made and read": lambda: gs.Cookies.from_header(
            header, sink, keygrip).read_signed("s", gs._TOKEN),
        "floor read": lambda: overhead._floor_session(header, floor_store),
        "get and set": get_set,
        "store get and set": store_get_set,
        "floor get and set": floor_get_set,
        "send and headers": send_and_headers,
        "floor send and headers": floor_send_and_headers,
    }


def run_child(name: str, count: int) -> None:
    """In the child: make the parts, warm each one up, then run part ``name`` ``count`` times.

    Every child makes and warms up every part, so the run with no counted runs is the
    same for all of them: one baseline serves the whole table.
    """
    steps = _steps()
    for step in steps.values():
        for _ in range(SMALL):
            step()
    step = steps[name]
    for _ in range(count):
        step()


def counted(name: str, count: int) -> int:
    """The instructions of a child that runs part ``name`` ``count`` times."""
    return callgrind(__file__, "--child", name, str(count))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (1,000)")
    parser.add_argument("--count", type=int, default=0, help="runs counted per part (2,000)")
    parser.add_argument("--child", nargs=2, metavar=("PART", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("bench/parts.py: valgrind is not installed (apt-get install valgrind); no counts")
        return 0
    count = args.count or (1_000 if args.quick else 2_000)
    names = list(_steps())
    with ThreadPoolExecutor(max_workers=2) as pool:  # two cores: two valgrinds at a time
        base = pool.submit(counted, "nothing", 0)
        totals = dict(zip(names, pool.map(lambda name: counted(name, count), names),
                          strict=True))
    per_run = {name: (total - base.result()) / count for name, total in totals.items()}
    loop = per_run.pop("nothing")
    part = {name: value - loop for name, value in per_run.items()}
    part["read"] = part["cookies made and read"] - part["cookies made"]
    rows = [
        ("per-request objects (the floor: one closure)", "objects", "floor objects"),
        ("reading the cookie", "read", "floor read"),
        ("get and set of n through the session", "get and set", "floor get and set"),
        ("  of which the store itself", "store get and set", "floor get and set"),
        ("re-sending the cookie and the header pass", "send and headers",
         "floor send and headers"),
    ]
    print(f"{count:,} runs of each part, counted by callgrind; the loop's own "
          f"{loop:,.0f} instructions taken off")
    print(f"\n{'WSGI part of a request':<46} {'ours':>8} {'floor':>8} {'ours - floor':>13}")
    for label, ours, floor in rows:
        print(f"{label:<46} {part[ours]:>8,.0f} {part[floor]:>8,.0f} "
              f"{part[ours] - part[floor]:>+13,.0f}")
    print(f"\nASGI per-request objects: {part['asgi objects']:,.0f} "
          f"({part['asgi objects'] - part['floor objects']:+,.0f} against the floor's closure)")
    print(f"one merged object of 20 slots and its lock: {part['merged object']:,.0f} "
          f"(would save {part['objects'] - part['merged object']:,.0f} of the WSGI objects, "
          f"{part['asgi objects'] - part['merged object']:,.0f} of the ASGI ones)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
