"""Helpers the benchmarks share: target lines, interleaved timing, a redis-server of their own.

Every figure with a target is printed by :func:`target` as one line starting with
``TARGET``, so that ``make bench | grep TARGET`` lists them all with their verdicts.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import RedisServer  # noqa: E402  (plain helpers, no pytest)

Op = Callable[[int], object]

#: The per-operation figures' workload: one 55-character JSON value under one key of
#: SESSIONS sessions, visited in turn, with an hour's expiry.  The sessions are used as
#: the middleware uses them by default (strict ids, with ``max_lifetime``): each made by
#: ``create`` with a deadline, every operation ``live=True``.
EXPIRE = 3600.0
LIFETIME = 86400.0
VALUE = {"user_id": 42, "name": "Zoë", "roles": ["reader", "editor"]}
SESSIONS = 1000
SESSION_IDS = [f"session:bench-{n:06d}" for n in range(SESSIONS)]


def create(store: Any, ids: list[str]) -> None:
    """Make each of ``ids`` a live session with a deadline, holding VALUE under ``data``."""
    for id in ids:
        store.create(id, EXPIRE, LIFETIME)
        store.set(id, "data", VALUE, EXPIRE, live=True)
    assert store.get(ids[0], "data", EXPIRE, live=True) == VALUE


def store_ops(name: str, store: Any) -> dict[str, Op]:
    """``get`` and ``set`` of one key on the SESSION_IDS, visited in turn (created first)."""
    ids = SESSION_IDS
    create(store, ids)

    def get(i: int) -> object:
        return store.get(ids[i % SESSIONS], "data", EXPIRE, live=True)

    def set_(i: int) -> object:
        return store.set(ids[i % SESSIONS], "data", VALUE, EXPIRE, live=True)

    return {f"{name} get": get, f"{name} set": set_}


_COLLECTED = re.compile(r"Collected : (\d+)")


def callgrind(script: str, *args: str) -> int:
    """The instructions ``python script *args`` makes, as valgrind's callgrind counts them.

    With one hash seed: dicts then grow alike in every run, and a count repeats to
    within ~20 instructions (a random seed moves it by ~1,000).
    """
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, script, *args],
        capture_output=True, text=True, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "0"})
    match = _COLLECTED.search(result.stderr)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind run of {Path(script).name} {' '.join(args)} failed:\n"
                           f"{result.stderr[-2000:]}")
    return int(match.group(1))


def target(label: str, value: float, limit: float, unit: str = "x", *,
           at_most: bool = True) -> bool:
    """Print one ``TARGET`` line: the figure, its target and whether it holds; return that."""
    holds = value <= limit if at_most else value >= limit
    sign = "<=" if at_most else ">="
    print(f"TARGET {'ok    ' if holds else 'MISSED'} {label}: {value:.2f}{unit} "
          f"(target {sign} {limit:g}{unit})")
    return holds


def interleaved(ops: dict[str, Op], batch: int, repeats: int,
                warmup: int = 200) -> dict[str, list[float]]:
    """Microseconds per ``op(i)`` for every op, one sample per round.

    Each round times one batch of every op, in an order that rotates from round to
    round, so that the noise of a shared machine falls on all of them alike; take the
    median of the samples.
    """
    names = list(ops)
    for name in names:
        for i in range(min(batch, warmup)):
            ops[name](i)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            op = ops[name]
            start = time.perf_counter_ns()
            for i in range(batch):
                op(i)
            samples[name].append((time.perf_counter_ns() - start) / batch / 1000)
    return samples


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def start_redis(directory: Path) -> tuple[RedisServer | None, str]:
    """A redis-server of our own on a free loopback port (persistence off), or None and why."""
    executable = shutil.which("redis-server")
    if executable is None:
        return None, "redis-server not found on PATH: Redis rows skipped"
    try:
        import redis  # noqa: F401  (only checking it is there)
    except ImportError:
        return None, "the redis package is not installed: Redis rows skipped"
    server = RedisServer(executable, directory)
    server.start()
    version = subprocess.run([executable, "--version"], capture_output=True, text=True,
                             check=False).stdout.split()
    tag = next((word for word in version if word.startswith("v=")), "v=?")
    return server, f"redis-server {tag[2:]} on {server.host}:{server.port}, persistence off"


# The ASGI workload bench/asgi.py and bench/overhead.py share: read n, write n + 1,
# answer "n=<n>".

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The bare ASGI app's n (a module-level dict: the handler's work without a session).
ASGI_BARE_STATE: dict[str, int] = {}


async def asgi_respond(send: Send, n: int) -> None:
    body = b"n=%d\n" % n
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def asgi_bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The handler's work without a session: n from a module-level dict."""
    n = ASGI_BARE_STATE.get("n") or 0
    ASGI_BARE_STATE["n"] = n + 1
    await asgi_respond(send, n + 1)


async def asgi_ours_handler(scope: Scope, receive: Receive, send: Send) -> None:
    """n from the AsyncGenericSession that ASGIMiddleware puts in ``scope["session"]``."""
    session = scope["session"]
    n = await session.get("n") or 0
    await session.set("n", n + 1)
    await asgi_respond(send, n + 1)
