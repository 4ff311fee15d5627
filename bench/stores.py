"""What each store costs: per operation, per request, and as SQLite grows.

Measured in one run, printed as markdown tables to paste into the README:

1. Per-operation cost, in microseconds, of ``get`` and ``set`` on
   ``MemoryStore``, ``SQLiteStore`` (a file in a temp dir, WAL mode) and
   ``RedisStore`` (a ``redis-server`` of our own on a free loopback port,
   persistence off).  Each figure is the median over several rounds of a
   batch's time (``time.perf_counter_ns``) divided by its size; the loop and
   call overhead of the harness (well under a microsecond) is included.  The
   rounds interleave everything compared in one table, in a rotating order,
   so the noise of a shared machine falls on all rows alike.  The sessions
   are used as the middleware uses them by default (strict ids): made by
   ``create`` with a deadline, every operation ``live=True``.  For
   Redis, the round-trip floor ``client.ping()`` over the same connection is
   measured too, with the ratios get/PING and set/PING: every RedisStore
   operation is one server-side script (one EVALSHA round trip), so a ratio
   near 1 means the store adds little beyond the network (bench/redis_ops.py
   has the full comparison, with and without hiredis).  SQLiteStore's ``get``
   is a plain read unless the session's renewal is due (its stored expiry more
   than min(60 s, 1% of expire) off), so it is held against ``set``: target
   get <= 0.4x a set that renews (the write a read would be if reads renewed:
   a ``set`` with an ``expire`` alternating 10 minutes apart).  A plain ``set``
   rewrites the expiry under the same rule as a read, so the ``set`` column is a
   write of the value's row only, as most writes are; that ratio is printed too.
2. Requests per second of a filtered WSGI app, per store: the handler reads
   ``n`` from the session and writes ``n + 1`` (one store ``get`` and one
   ``set`` per request), called in-process with a prebuilt environ carrying
   the session cookie.  No server, no socket: it measures the session and
   store path only.
3. ``get`` of one key in a session holding 1 key and in one holding 1,000
   keys, per store, and ``get_all`` of each for contrast: ``get`` must cost the
   same (target: at most 1.15x), only ``get_all`` grows with the keys.
4. SQLiteStore ``get`` and ``set`` at 1,000 / 10,000 / 100,000 / 1,000,000
   stored sessions (one key each), on random sessions, to show the cost stays
   flat.  One file per size, filled with ``executemany`` straight into the
   store's tables (``session_expiry``, ``session_data``) in one transaction,
   after the store has created them.  SQLite costs include the WAL
   checkpoints (with an fsync) that the writes trigger, amortised.  Target:
   flat, the cost at 1,000,000 at most 1.25x the cost at 1,000 (a B-tree one
   level deeper costs a little; a scan would cost 1,000x).

Without ``redis-server`` on PATH (or the ``redis`` package) the Redis rows are
skipped with a note.  Nothing is written to the repository: files go to a
temp dir that is removed at the end.

Usage::

    python bench/stores.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True  # write nothing to the repository, not even __pycache__
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import generic_session as gs  # noqa: E402  (needs ROOT on sys.path)
from bench.common import (  # noqa: E402
    EXPIRE,
    LIFETIME,
    SESSIONS,
    VALUE,
    Op,
    create,
    interleaved,
    medians,
    start_redis,
    store_ops,
    target,
)

KEYS = ["bench signing key"]


class Settings:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.repeats = 5 if quick else 9
        self.batch = 500 if quick else 2000
        self.app_requests = 500 if quick else 2000
        self.sizes = [1_000, 10_000, 100_000] if quick else [1_000, 10_000, 100_000, 1_000_000]
        self.size_batch = 300 if quick else 1000


# ---------------------------------------------------------------------------
# Timing


def session_width_ops(stores: dict[str, Any]) -> dict[str, Op]:
    """``get`` of one key and ``get_all``, in a session of 1 key and in one of 1,000."""
    ops: dict[str, Op] = {}
    for name, store in stores.items():
        for width in (1, 1000):
            id = f"session:wide-{width}"
            store.create(id, EXPIRE, LIFETIME)
            for n in range(width):
                store.set(id, f"key{n:04d}", VALUE, EXPIRE, live=True)
            assert len(store.get_all(id, EXPIRE, live=True)) == width

            def get(i: int, store: Any = store, id: str = id) -> object:
                return store.get(id, "key0000", EXPIRE, live=True)

            def get_all(i: int, store: Any = store, id: str = id) -> object:
                return store.get_all(id, EXPIRE, live=True)

            ops[f"{name} get {width}"] = get
            ops[f"{name} get_all {width}"] = get_all
    return ops


RENEWING = "SQLiteStore set, renewal due"


def renewing_set(store: Any) -> Op:
    """``set`` on sessions of its own, each with an ``expire`` that alternates, from one
    visit to the next, between EXPIRE and EXPIRE + 10 minutes (more than the slack
    apart): every one renews the expiry."""
    ids = [f"session:renewing-{n:06d}" for n in range(SESSIONS)]
    create(store, ids)
    longer = [False] * SESSIONS

    def set_(i: int) -> object:
        n = i % SESSIONS
        longer[n] = not longer[n]
        return store.set(ids[n], "data", VALUE, EXPIRE + 600 if longer[n] else EXPIRE,
                         live=True)

    return set_


# ---------------------------------------------------------------------------
# The filtered app, in-process


def counter_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session: gs.GenericSession = environ["generic_session.session"]
    n = session.get("n") or 0
    session.set("n", n + 1)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(n + 1).encode()]


class AppClient:
    """Calls ``counter_app`` behind ``filter(store)`` in-process, as one browser would."""

    def __init__(self, store: Any) -> None:
        self.app = gs.middleware(store, keys=KEYS)(counter_app)
        self.headers: list[tuple[str, str]] = []
        self.base: dict[str, Any] = {
            "REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "",
            "SERVER_NAME": "bench", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        }
        self.served = 0
        self.request(0)  # the first request mints the session
        cookies = [v.partition(";")[0] for k, v in self.headers if k == "Set-Cookie"]
        self.base["HTTP_COOKIE"] = "; ".join(cookies)  # sent back: s=...; s.sig=...

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> None:
        self.headers = headers

    def request(self, _: int) -> bytes:
        self.served += 1
        return b"".join(self.app(self.base.copy(), self.start_response))

    def check(self) -> None:
        """Every request found the session and kept its write: n counts them all."""
        served = self.served + 1
        body = self.request(0)
        assert body == str(served).encode(), (body, served)


# ---------------------------------------------------------------------------
# SQLite as it grows


def _sqlite_id(n: int) -> str:
    """A session id as long as a real one (``session:`` and a 40-character token)."""
    return f"session:{n:040d}"


class _MappedSQLiteStore(gs.SQLiteStore):
    """``SQLiteStore`` with its file mapped (``PRAGMA mmap_size``, 256 MiB), tried and
    dropped: the row that shows what it costs (bench-only: reaches into ``_open``)."""

    def _open(self) -> Any:
        db = super()._open()
        db.execute("PRAGMA mmap_size = 268435456")
        return db


def fill(path: Path, count: int) -> float:
    """Add ``count`` live sessions of one key, with a deadline, straight into the store's
    tables (the rows ``create`` and ``set`` make); return seconds."""
    started = time.perf_counter()
    now = time.time()
    expires_at, deadline = now + EXPIRE, now + LIFETIME
    text = gs.encode_json("data", VALUE)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO session_expiry (id, expires_at, live, deadline) "
                       "VALUES (?, ?, 1, ?)",
                       ((_sqlite_id(n), expires_at, deadline) for n in range(count)))
        db.executemany("INSERT INTO session_data (id, key, value) VALUES (?, 'data', ?)",
                       ((_sqlite_id(n), text) for n in range(count)))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return time.perf_counter() - started


def sqlite_scaling(directory: Path, settings: Settings) -> list[tuple[str, float, float, float,
                                                                      float]]:
    """(sessions, get µs, set µs, fill seconds, file MB) at each size, one file per size;
    the largest once more, by a store that maps the file."""
    rng = random.Random(1)
    stores: list[gs.SQLiteStore] = []
    fills: dict[int, float] = {}
    ops: dict[str, Op] = {}
    sizes: dict[str, int] = {}  # each row's label, and the file it reads
    for size in settings.sizes:
        path = directory / f"scaling-{size}.db"
        store = gs.SQLiteStore(path)  # creates the schema
        stores.append(store)
        fills[size] = fill(path, size)
        picks = [_sqlite_id(rng.randrange(size)) for _ in range(settings.size_batch)]
        variants = [(f"{size:,}", store)]
        if size == settings.sizes[-1]:
            mapped = _MappedSQLiteStore(path)
            stores.append(mapped)
            variants.append((f"{size:,}, file mapped (mmap_size)", mapped))
        for label, variant in variants:
            sizes[label] = size
            assert variant.get(picks[0], "data", EXPIRE, live=True) == VALUE

            def get(i: int, store: Any = variant, picks: list[str] = picks) -> object:
                return store.get(picks[i], "data", EXPIRE, live=True)

            def set_(i: int, store: Any = variant, picks: list[str] = picks) -> object:
                return store.set(picks[i], "data", VALUE, EXPIRE, live=True)

            ops[f"{label} get"], ops[f"{label} set"] = get, set_
    us = medians(interleaved(ops, settings.size_batch, settings.repeats))
    rows = []
    for label, size in sizes.items():
        files = directory.glob(f"scaling-{size}.db*")
        megabytes = sum(path.stat().st_size for path in files) / 1e6
        rows.append((label, us[f"{label} get"], us[f"{label} set"], fills[size], megabytes))
    for store in stores:
        store.close()
    return rows


# ---------------------------------------------------------------------------
# Redis


# ---------------------------------------------------------------------------


def fmt(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats, smaller batches, SQLite up to 100,000 sessions")
    settings = Settings(parser.parse_args(argv).quick)
    began = time.perf_counter()
    directory = Path(tempfile.mkdtemp(prefix="generic-session-bench-"))
    redis_server, redis_note = start_redis(directory)
    client = None
    try:
        stores: dict[str, Any] = {
            "MemoryStore": gs.MemoryStore(),
            "SQLiteStore (file, WAL)": gs.SQLiteStore(directory / "stores.db"),
        }
        if redis_server is not None:
            import redis

            client = redis.Redis(host=redis_server.host, port=redis_server.port,
                                 socket_timeout=5)
            stores["RedisStore (loopback)"] = gs.RedisStore(client)

        print(f"# generic_session store benchmark{' (--quick)' if settings.quick else ''}\n")
        print(f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
              f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs")
        print(f"- {redis_note}")
        print(f"- median of {settings.repeats} batches; value stored: "
              f"{gs.encode_json('data', VALUE)} ({len(gs.encode_json('data', VALUE))} chars)\n")

        print(f"## Per-operation cost (µs per operation, batches of {settings.batch}, "
              f"{SESSIONS} sessions)\n")
        ops: dict[str, Op] = {}
        for name, store in stores.items():
            ops.update(store_ops(name, store))
        sqlite = "SQLiteStore (file, WAL)"
        ops[RENEWING] = renewing_set(stores[sqlite])
        if client is not None:
            ops["PING"] = lambda _: client.ping()
        us = medians(interleaved(ops, settings.batch, settings.repeats))
        print("| store | get | set | get / PING | set / PING |")
        print("|---|---:|---:|---:|---:|")
        for name in stores:
            get_us, set_us = us[f"{name} get"], us[f"{name} set"]
            ratios = "- | -"
            if "PING" in us and name.startswith("Redis"):
                ratios = f"{get_us / us['PING']:.2f}x | {set_us / us['PING']:.2f}x"
            print(f"| {name} | {fmt(get_us)} | {fmt(set_us)} | {ratios} |")
        if "PING" in us:
            print(f"| Redis `PING` (round-trip floor, same connection) | {fmt(us['PING'])} | - "
                  "| 1x | - |")
        else:
            print("| RedisStore | skipped | skipped | - | - |")
        print(f"| SQLiteStore, a `set` whose renewal is due | - | {fmt(us[RENEWING])} | - | - |")
        print()
        # The write a read would be if reads renewed: a set that renews.  (The plain set
        # renews only when due too, so it is no longer what a renewing read would cost.)
        target("SQLiteStore get / a set that renews (a read whose renewal is not due "
               "writes nothing)", us[f"{sqlite} get"] / us[RENEWING], 0.4)
        print(f"       (SQLiteStore get / set whose renewal is not due, for context: "
              f"{us[f'{sqlite} get'] / us[f'{sqlite} set']:.2f}x)")

        print("\n## get of one key as the session grows (µs per operation)\n")
        print("| store | get, 1 key in the session | get, 1,000 keys | get_all, 1 key | "
              "get_all, 1,000 keys |")
        print("|---|---:|---:|---:|---:|")
        wide = session_width_ops(stores)
        us = medians(interleaved(wide, settings.batch // 4, settings.repeats))
        for name in stores:
            print(f"| {name} | {fmt(us[f'{name} get 1'])} | {fmt(us[f'{name} get 1000'])} | "
                  f"{fmt(us[f'{name} get_all 1'])} | {fmt(us[f'{name} get_all 1000'])} |")
        print()
        for name in stores:
            target(f"{name} get with 1,000 keys in the session / with 1",
                   us[f"{name} get 1000"] / us[f"{name} get 1"], 1.15)

        print("\n## Requests per second of the filtered app (in-process WSGI, no network)\n")
        print("Handler reads `n` from the session and writes `n + 1` (one store get, one set);")
        print("each request is a direct call of the WSGI app with a copy of a prebuilt environ")
        print("carrying the session cookie: the session + store path only, no server, no socket.\n")
        clients = {name: AppClient(store) for name, store in stores.items()}
        us = medians(interleaved({name: c.request for name, c in clients.items()},
                                 settings.app_requests, settings.repeats))
        for app_client in clients.values():
            app_client.check()
        print("| store | requests/s | µs/request |")
        print("|---|---:|---:|")
        for name in stores:
            print(f"| {name} | {1e6 / us[name]:,.0f} | {fmt(us[name])} |")
        if client is None:
            print("| RedisStore | skipped | skipped |")

        print("\n## SQLiteStore as it grows (µs per operation on random sessions)\n")
        print("One file per size, filled with executemany; the sizes are timed in interleaved")
        print("rounds. Costs include the WAL checkpoints (with fsync) that writes trigger.\n")
        print("| stored sessions | get | set | fill time (s) | file size (MB) |")
        print("|---:|---:|---:|---:|---:|")
        rows = sqlite_scaling(directory, settings)
        for label, get_us, set_us, fill_seconds, megabytes in rows:
            print(f"| {label} | {fmt(get_us)} | {fmt(set_us)} | {fill_seconds:.1f} "
                  f"| {megabytes:,.0f} |")
        print()
        (small, small_get, small_set, *_), (big, big_get, big_set, *_) = rows[0], rows[-2]
        mapped_get = rows[-1][1]
        print(f"Mapping the file (PRAGMA mmap_size, not done): get at {big} sessions "
              f"{mapped_get:.1f} µs mapped against {big_get:.1f} µs as the store reads it "
              f"({mapped_get / small_get:.2f}x the {small}-session get).\n")
        target(f"SQLiteStore get at {big} / at {small} stored sessions",
               big_get / small_get, 1.25)
        target(f"SQLiteStore set at {big} / at {small} stored sessions",
               big_set / small_set, 1.25)
        print(f"\nTotal run time: {time.perf_counter() - began:.0f} s")
    finally:
        if client is not None:
            client.close()
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
