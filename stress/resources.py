"""Part 6, resources: 100,000 requests through the filter with each store, memory per
request flat (tracemalloc); file descriptors and threads back to their starting
counts after bursts of concurrent clients against the app under waitress.

Memory: the example WSGI app is called in this process (tracemalloc sees only
its own process) by 500 browsers in turn, mixing get, set, incr and delete, and
one request in fifty makes a new session that the next destroys.  Python's traced
memory is sampled every 10,000 requests once the first 10,000 have warmed the
caches (the store's pool, the regex and JSON caches) and the next 10,000 have
replaced what was made before tracing began: over the other 80,000 it must not
grow by more than 4 bytes a request (a leak of one small object per request would
be 28 bytes or more).

Descriptors and threads: waitress (16 threads) serves the app in a child process
whose ``/proc/PID/fd`` and thread count are read; each burst is 64 client threads
with a connection each, 20 requests apiece, then closed.  After a first burst
(which fills the store's connection pool: SQLite's ``max_connections``; redis-py's
pool is filled when the store is made), every later burst must leave them where
that first one did (or lower).

    python stress/resources.py [--quick]
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import generic_session as gs
from stress.app import wsgi
from stress.common import (
    POLL_INTERVAL,
    AppServer,
    Browser,
    Invariants,
    Tab,
    arguments,
    redis_server,
    workdir,
)
from stress.fuzz import call

BROWSERS = 500
#: Traced memory may grow by this much per measured request, and at least by
#: GROWTH_FLOOR in all: a dict of the store doubling its table is a one-off 40 KiB,
#: while leaking even one small object per request (an int is 28 bytes, a str 50 and
#: more) would cross the line.
GROWTH_PER_REQUEST = 4
GROWTH_FLOOR = 96 * 1024


def request(app: gs.WSGIApp, browser: Browser, path: str, query: str = "") -> str:
    status, headers, _ = call(app, browser.cookie_header(), path, query)
    browser.take(headers)
    browser.tokens.clear()  # the harness keeps nothing per request either
    return str(status)


def memory(name: str, store: Any, requests: int, inv: Invariants) -> str:
    app = wsgi(store)
    browsers = [Browser() for _ in range(BROWSERS)]
    for browser in browsers:
        request(app, browser, "/set", "k=a&v=p")
    spare = Browser()
    samples: list[int] = []
    # At least 2,000 requests of warm-up: redis-py (with hiredis) fills a bounded
    # per-client cache of ~200 KiB over its first ~2,000 commands, a one-off.
    warm = max(requests // 10, 2_000)
    started = time.perf_counter()
    for n in range(requests):
        if n == warm:
            tracemalloc.start()
        # Sampled from the second tenth on: in the first, every long-lived object made
        # before tracing began (a session's value, a pool's connection) is replaced by
        # one traced, which looks like growth and is not.
        if n >= 2 * warm and n % warm == 0:
            samples.append(tracemalloc.get_traced_memory()[0])
        browser = browsers[n % BROWSERS]
        kind = n % 50
        if kind == 0:
            status = request(app, spare, "/set", "k=a&v=new")
        elif kind == 1:
            status = request(app, spare, "/destroy")
        elif kind % 4 == 0:
            status = request(app, browser, "/set", f"k=b&v=v{n % 1000:03}")
        elif kind % 4 == 1:
            status = request(app, browser, "/incr", "k=n")
        elif kind % 4 == 2:
            status = request(app, browser, "/delete", "k=b")
        else:
            status = request(app, browser, "/get", "k=a")
        if status != "200 OK":
            inv.check(False, "a request failed", f"{name}: {status}")
    samples.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    seconds = time.perf_counter() - started
    growth = samples[-1] - samples[0]
    measured = requests - 2 * warm
    inv.check(growth <= max(GROWTH_FLOOR, GROWTH_PER_REQUEST * measured),
              "memory grows with requests",
              f"{name}: +{growth} bytes over {requests - 2 * warm} requests")
    return (f"{requests:,} requests in {seconds:.0f} s, traced memory "
            f"{samples[0] / 1024:.0f} KiB after warm-up, {growth / 1024:+.1f} KiB after "
            f"{measured:,} more ({growth / measured:+.2f} B/request)")


def memory_in_process(name: str, root: Path, redis_port: int,
                      requests: int) -> tuple[str, Counter[str], dict[str, str]]:
    """:func:`memory` for one store, in a process of its own."""
    import redis as redis_py

    if name == "memory":
        store: Any = gs.MemoryStore()
    elif name == "sqlite":
        store = gs.SQLiteStore(root / "memory.db")
    else:
        store = gs.RedisStore(redis_py.Redis(host="127.0.0.1", port=redis_port,
                                             socket_timeout=2))
    inv = Invariants(name)
    figures = memory(name, store, requests, inv)
    return figures, inv.broken, inv.examples


def settle(expected: int, count: Any) -> int:
    """Poll ``count()`` until it is back to ``expected`` (waitress closes a channel on its
    own loop, a moment after the client); give up after 5 s and return what it is."""
    deadline = time.monotonic() + 5
    while (now := count()) > expected and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
    return int(now)


def proc_counts(pid: int) -> tuple[int, int]:
    """(open descriptors, threads) of process ``pid``, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(next(line.split()[1] for line in status.splitlines()
                       if line.startswith("Threads:")))
    return len(os.listdir(f"/proc/{pid}/fd")), threads


def bursts(name: str, spec: str, log: Path, count: int, clients: int,
           inv: Invariants) -> str:
    """Bursts of ``clients`` connections against the app under waitress in a child
    process, whose descriptors and threads are read from /proc after each."""
    with AppServer(spec, "waitress", log) as app:
        pid = app.proc.pid

        def burst() -> None:
            def client() -> None:
                tab = Tab(Browser(), app.host, app.port)
                for i in range(20):  # 20 requests each, on one connection
                    tab.request(f"/set?k=k{i % 3}&v=v" if i % 2 else f"/get?k=k{i % 3}")
                tab.close()

            threads = [threading.Thread(target=client) for _ in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        start = proc_counts(pid)
        burst()  # fills the store's connection pool, waitress' threads
        base = settle(proc_counts(pid)[0], lambda: proc_counts(pid)[0]), proc_counts(pid)[1]
        after: list[tuple[int, int]] = []
        for _ in range(count):
            burst()
            after.append((settle(base[0], lambda: proc_counts(pid)[0]), proc_counts(pid)[1]))
    inv.check(all(f <= base[0] for f, _ in after), "file descriptors left after a burst",
              f"{name}: {base[0]} -> {[f for f, _ in after]}")
    inv.check(all(t <= base[1] for _, t in after), "threads left after a burst",
              f"{name}: {base[1]} -> {[t for _, t in after]}")
    return (f"{count} bursts of {clients} clients x 20 requests (server process): fds "
            f"{start[0]} at start, {base[0]} after the first burst, then "
            f"{sorted({f for f, _ in after})}; threads {start[1]}, {base[1]}, then "
            f"{sorted({t for _, t in after})}")


def main() -> None:
    args = arguments(__doc__.split("\n")[0])
    # waitress warns of every request queued for a free thread: a burst is meant to queue.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    requests = 8_000 if args.quick else 100_000
    count, clients = (2, 16) if args.quick else (5, 64)
    inv = Invariants("resources")
    print("resources:")
    with workdir("resources") as tmp:
        root = Path(tmp)
        redis = redis_server(root)
        try:

            # One process per store (tracemalloc counts its own process only): the
            # three run side by side.
            context = multiprocessing.get_context("fork")
            with concurrent.futures.ProcessPoolExecutor(3, mp_context=context) as pool:
                futures = {name: pool.submit(memory_in_process, name, root, redis.port,
                                             requests)
                           for name in ("memory", "sqlite", "redis")}
                for name, future in futures.items():
                    figures, broken, examples = future.result()
                    inv.merge(broken, examples)
                    print(f"  {name:6} memory: {figures}", flush=True)
            specs = {"memory": "memory", "sqlite": f"sqlite:{root / 'bursts.db'}",
                     # the pool filled to waitress' 16 threads from the start: a fixed count
                     "redis": f"{redis.url}?prefill=16"}
            for name, spec in specs.items():
                figures = bursts(name, spec, root / f"{name}.log", count, clients, inv)
                print(f"  {name:6} {figures}", flush=True)
        finally:
            redis.stop()
    inv.exit()


if __name__ == "__main__":
    main()
