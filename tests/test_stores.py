"""The three stores against the Store API: check_store, then what is special to each.

Real backends only: SQLite files in ``tmp_path``, a real ``redis-server`` (the
``redis_server`` fixture) and a real one-node Redis Cluster (``redis_cluster``),
real threads and real processes.  Expiry is tested
with an injected clock wherever a store takes one, so nothing sleeps but
``check_store`` itself (about ``expire * 1.5`` seconds per call).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from generic_session import (
    _SESSION_OVERHEAD,
    TWO_WEEKS,
    MemoryStore,
    RedisStore,
    SQLiteStore,
    Store,
    StoreError,
    UnknownSession,
    _key_size,
    check_store,
    encode_json,
)
from tests.helpers import PROJECT_ROOT, FakeClock, RedisClusterNode, RedisServer, SilentServer

# ---------------------------------------------------------------------------
# Helpers


def run_threads(count: int, work: Callable[[int], None], timeout: float = 30.0) -> None:
    """Run ``work(n)`` for n in range(count) in threads started together; re-raise any error."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def runner(n: int) -> None:
        try:
            start.wait(timeout)
            work(n)
        except BaseException as error:  # reported in the calling thread
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch often, so a missing lock shows
    try:
        threads = [threading.Thread(target=runner, args=(n,)) for n in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads), "a worker thread hung"
    if errors:
        raise errors[0]


def memory_size(sessions: dict[str, dict[str, Any]]) -> int:
    """The bytes a MemoryStore counts for these sessions (id -> data), as its repr shows."""
    return sum(
        _SESSION_OVERHEAD + sys.getsizeof(id)
        + sum(_key_size(key, encode_json(key, value)) for key, value in data.items())
        for id, data in sessions.items()
    )


def repr_sessions(store: Any) -> int:
    """The ``sessions=N`` count a store's repr shows."""
    match = re.search(r"sessions=(\d+)", repr(store))
    assert match, repr(store)
    return int(match.group(1))


class _TableParser(HTMLParser):
    """Reads a ``_repr_html_`` table: its caption, its rows, and every tag inside a cell."""

    def __init__(self) -> None:
        super().__init__()  # convert_charrefs: the text comes back unescaped
        self.caption = ""
        self.rows: dict[str, str] = {}
        self.tags_in_cells: list[str] = []
        self._in = ""  # "caption", "th" or "td": where the text goes
        self._name = ""  # the row's name, from its <th>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._in == "td":
            self.tags_in_cells.append(tag)
        elif tag in ("caption", "th", "td"):
            self._in = tag
            if tag == "th":
                self._name = ""
            elif tag == "td":
                self.rows[self._name] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = ""

    def handle_data(self, data: str) -> None:
        if self._in == "caption":
            self.caption += data
        elif self._in == "th":
            self._name += data
        elif self._in == "td":
            self.rows[self._name] += data


def html_table(markup: str) -> tuple[str, dict[str, str]]:
    """``(caption, {row name: cell text})`` of a ``_repr_html_`` table; cells hold no markup."""
    assert markup.startswith("<table>") and markup.endswith("</table>"), markup
    parser = _TableParser()
    parser.feed(markup)
    parser.close()
    assert parser.tags_in_cells == ["code"] * len(parser.rows), markup  # nothing else got in
    return parser.caption, parser.rows


# ---------------------------------------------------------------------------
# Tiny dict stores: one correct, then one broken thing each, to show that
# check_store catches each kind of mistake.


class _Entry:
    __slots__ = ("data", "expires_at")

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}  # key -> stored form (JSON text here)
        self.expires_at = 0.0


class TinyStore:
    """A correct minimal store: a dict of sessions of JSON text, one lock, an expiry each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, _Entry] = {}

    # The hooks the broken stores override.
    def _dump(self, key: str, value: Any) -> Any:
        return encode_json(key, value)

    def _load(self, stored: Any) -> Any:
        return json.loads(stored)

    def _renew(self, entry: _Entry, expire: float) -> None:
        entry.expires_at = time.monotonic() + expire

    def _live(self, id: str) -> _Entry | None:
        entry = self._sessions.get(id)
        if entry is not None and entry.expires_at <= time.monotonic():
            del self._sessions[id]
            return None
        return entry

    # The Store API.
    def get(self, id: str, key: str, expire: float) -> Any:
        with self._lock:
            entry = self._live(id)
            if entry is None:
                return None
            self._renew(entry, expire)
            stored = entry.data.get(key)
        return None if stored is None else self._load(stored)

    def get_all(self, id: str, expire: float) -> dict[str, Any]:
        with self._lock:
            entry = self._live(id)
            if entry is None:
                return {}
            self._renew(entry, expire)
            items = list(entry.data.items())
        return {key: self._load(stored) for key, stored in items}

    def set(self, id: str, key: str, value: Any, expire: float) -> None:
        stored = self._dump(key, value)
        with self._lock:
            entry = self._live(id) or _Entry()
            entry.data[key] = stored
            self._renew(entry, expire)
            self._sessions[id] = entry

    def delete(self, id: str, key: str, expire: float) -> None:
        with self._lock:
            entry = self._live(id)
            if entry is not None:
                self._renew(entry, expire)
                entry.data.pop(key, None)

    def delete_all(self, id: str) -> None:
        with self._lock:
            self._sessions.pop(id, None)

    def extend(self, id: str, expire: float) -> None:
        with self._lock:
            entry = self._live(id)
            if entry is not None:
                self._renew(entry, expire)


class LiveObjectStore(TinyStore):
    """Keeps decoded objects and hands out the stored object itself, not a copy."""

    def _dump(self, key: str, value: Any) -> Any:
        return json.loads(encode_json(key, value))  # a private copy at least...

    def _load(self, stored: Any) -> Any:
        return stored  # ... but every get returns that same object


class ExpiryIgnoringStore(TinyStore):
    """Keeps every session two weeks, whatever ``expire`` says."""

    def _renew(self, entry: _Entry, expire: float) -> None:
        entry.expires_at = time.monotonic() + TWO_WEEKS


class CreatingOnReadStore(TinyStore):
    """Reading an unknown session creates it, stamped with its creation time."""

    def _live(self, id: str) -> _Entry | None:
        entry = super()._live(id)
        if entry is None:
            entry = self._sessions[id] = _Entry()
            entry.data["created_at"] = json.dumps(time.time())
            self._renew(entry, TWO_WEEKS)
        return entry


class LaxJsonStore(TinyStore):
    """Stores anything: what JSON cannot hold is turned into its str()."""

    def _dump(self, key: str, value: Any) -> Any:
        return json.dumps(value, default=str)


class WholeBlobStore(TinyStore):
    """Reads the whole session, changes one key, writes the whole session back."""

    def set(self, id: str, key: str, value: Any, expire: float) -> None:
        stored = self._dump(key, value)
        with self._lock:
            entry = self._live(id)
            blob = dict(entry.data) if entry is not None else {}
        # Another request of the session may run here...
        blob[key] = stored
        with self._lock:
            entry = self._live(id) or _Entry()
            entry.data = blob  # ... and its write is lost
            self._renew(entry, expire)
            self._sessions[id] = entry


class CallersObjectStore(TinyStore):
    """Keeps the very object the caller passed to set, and hands out copies of it."""

    def _dump(self, key: str, value: Any) -> Any:
        encode_json(key, value)  # refuses what is not JSON...
        return value  # ... but keeps the caller's object, which the caller may change

    def _load(self, stored: Any) -> Any:
        return json.loads(json.dumps(stored))


class LazyGetAllStore(TinyStore):
    """get_all does not renew the expiry: a session only ever listed expires in use."""

    def get_all(self, id: str, expire: float) -> dict[str, Any]:
        with self._lock:
            entry = self._live(id)
            items = [] if entry is None else list(entry.data.items())
        return {key: self._load(stored) for key, stored in items}


class LazyDeleteStore(TinyStore):
    """delete does not renew the expiry."""

    def delete(self, id: str, key: str, expire: float) -> None:
        with self._lock:
            entry = self._live(id)
            if entry is not None:
                entry.data.pop(key, None)


class ResurrectingStore(TinyStore):
    """Expired sessions are kept, and extend brings them back to life."""

    def _live(self, id: str) -> _Entry | None:
        entry = self._sessions.get(id)
        return None if entry is None or entry.expires_at <= time.monotonic() else entry

    def extend(self, id: str, expire: float) -> None:
        with self._lock:
            entry = self._sessions.get(id)
            if entry is not None:
                self._renew(entry, expire)


class GreedyDeleteAllStore(TinyStore):
    """delete_all empties the whole store, every session."""

    def delete_all(self, id: str) -> None:
        with self._lock:
            self._sessions.clear()


def test_check_store_passes_on_the_correct_tiny_store() -> None:
    check_store(TinyStore())


@pytest.mark.parametrize(
    ("store_class", "message"),
    [
        pytest.param(
            LiveObjectStore,
            r"^LiveObjectStore\.get after mutating an earlier result: "
            r"expected the stored value unchanged \(a copy\)",
            id="get returns the live object",
        ),
        pytest.param(
            ExpiryIgnoringStore,
            r"^ExpiryIgnoringStore\.get_all \d\.\d\ds after set\(\.\.\., expire=0\.5\) and a "
            r"late extend: expected \{\} \(expired\), got \{'k': 1\}",
            id="ignores expire",
        ),
        pytest.param(
            CreatingOnReadStore,
            r"^CreatingOnReadStore\.get_all\(unknown session\): expected \{\}, "
            r"got \{'created_at': ",
            id="creates a session when reading an unknown one",
        ),
        pytest.param(
            LaxJsonStore,
            r"^LaxJsonStore\.set\(key, <object object at 0x[0-9a-f]+>\): expected TypeError "
            r"for a value that is not JSON, nothing raised",
            id="accepts values that are not JSON",
        ),
        pytest.param(
            WholeBlobStore,
            r"^WholeBlobStore\.get_all after 4 concurrent writers set 1000 keys each: "
            r"expected all 4000 keys, got \"\d+ lost, e\.g\. \['",
            id="whole-session blob loses concurrent writes",
        ),
        pytest.param(
            CallersObjectStore,
            r"^CallersObjectStore\.get\('mine'\) after set: expected \{'roles': \['user'\]\}, "
            r"got \{'roles': \['user', 'admin'\]\}",
            id="keeps the caller's object",
        ),
        pytest.param(
            LazyGetAllStore,
            r"^LazyGetAllStore\.get after get_all\(\.\.\., expire=0\.5\) renewed the expiry: "
            r"expected None \(expired\), got 1",
            id="get_all does not renew the expiry",
        ),
        pytest.param(
            LazyDeleteStore,
            r"^LazyDeleteStore\.get after delete\(\.\.\., expire=0\.5\) renewed the expiry: "
            r"expected None \(expired\), got 1",
            id="delete does not renew the expiry",
        ),
        pytest.param(
            ResurrectingStore,
            r"^ResurrectingStore\.get_all \d\.\d\ds after set\(\.\.\., expire=0\.5\) and a "
            r"late extend: expected \{\} \(expired\), got \{'k': 1\}",
            id="extend brings an expired session back",
        ),
        pytest.param(
            GreedyDeleteAllStore,
            r"^GreedyDeleteAllStore\.get in another session after delete_all: "
            r"expected 'other session', got None",
            id="delete_all deletes other sessions",
        ),
    ],
)
def test_check_store_catches_a_broken_store(store_class: type[TinyStore], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_store(store_class())


class ChangingStore(TinyStore):
    """get answers something new on every call: 1, 2, 3..."""

    calls = 0

    def get(self, id: str, key: str, expire: float) -> Any:
        self.calls += 1
        return self.calls


def test_check_store_reports_the_very_value_that_failed_fetched_once() -> None:
    store = ChangingStore()

    with pytest.raises(AssertionError, match=r"^ChangingStore\.get\(unknown session, 'k'\): "
                       r"expected None, got 1$"):
        check_store(store)
    assert store.calls == 1


def test_check_store_puts_the_switch_interval_back_even_when_a_check_fails() -> None:
    interval = sys.getswitchinterval()

    with pytest.raises(AssertionError, match=r"concurrent writers"):
        check_store(WholeBlobStore())

    assert sys.getswitchinterval() == interval


# ---------------------------------------------------------------------------
# check_store on the real stores


@pytest.fixture
def redis_url_store(redis_client: Any, redis_server: RedisServer) -> Iterator[Callable[..., Any]]:
    """Factory: a RedisStore on the test server with its own client options; clients closed."""
    import redis

    clients: list[Any] = []

    def make(prefix: str = "", **options: Any) -> RedisStore:
        client = redis.Redis(host=redis_server.host, port=redis_server.port, **options)
        clients.append(client)
        return RedisStore(client, prefix=prefix)

    yield make
    for client in clients:
        client.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each shipped store in turn: in memory, in a SQLite file, on the test redis-server."""
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "sqlite":
        sqlite_store = SQLiteStore(tmp_path / "sessions.db")
        yield sqlite_store
        sqlite_store.close()
    else:
        yield RedisStore(request.getfixturevalue("redis_client"))  # bytes replies, no prefix


def test_check_store_passes_on_every_shipped_store(store: Store) -> None:
    check_store(store)


@pytest.mark.parametrize(
    ("prefix", "decode_responses"),
    [
        pytest.param("", True, id="decoded replies"),
        pytest.param("myapp:sessions:", False, id="with a prefix"),
    ],
)
def test_check_store_passes_on_redis_store(
    redis_url_store: Callable[..., RedisStore], redis_client: Any, prefix: str,
    decode_responses: bool,
) -> None:
    store = redis_url_store(prefix, decode_responses=decode_responses, socket_timeout=5)
    check_store(store)
    assert redis_client.dbsize() == 0  # check_store cleans up after itself


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterNode) -> Iterator[Any]:
    """A ``redis.cluster.RedisCluster`` on the one-node test cluster, with no keys in it."""
    from redis.cluster import RedisCluster

    client = RedisCluster(host=redis_cluster.host, port=redis_cluster.port, socket_timeout=2)
    client.flushall()  # on every primary: here, the one node
    try:
        yield client
    finally:
        client.close()


@pytest.mark.parametrize(
    ("prefix", "writes"),
    [
        pytest.param("", 1000, id="no prefix"),
        # The concurrent writers are covered above; fewer here keeps the run short.
        pytest.param("myapp:sessions:", 250, id="with a prefix"),
    ],
)
def test_check_store_passes_on_redis_store_on_a_redis_cluster(
    cluster_client: Any, prefix: str, writes: int
) -> None:
    check_store(RedisStore(cluster_client, prefix=prefix), writes=writes)
    assert cluster_client.dbsize() == 0  # check_store cleans up after itself


# ---------------------------------------------------------------------------
# encode_json: what every store refuses


@pytest.mark.parametrize(
    "value",
    ["x\ud800", ["ok", "\udfff"], {"nested": {"deep": "a\ud83d"}}, {"\ud800": "as a dict key"}],
    ids=["str", "in-a-list", "nested", "dict-key"],
)
def test_encode_json_refuses_a_lone_surrogate_with_a_type_error_naming_the_key(
    value: Any,
) -> None:
    with pytest.raises(TypeError, match=r"^session value for key 'k' is not JSON-serialisable "
                       rf"\({type(value).__name__}: .*surrogates not allowed\); allowed: "):
        encode_json("k", value)


def test_encode_json_keeps_characters_beyond_the_basic_plane() -> None:
    # Python holds them as one code point (UTF-16 needs a surrogate pair): nothing is lone.
    assert encode_json("k", "smile \U0001f600") == '"smile \U0001f600"'


# ---------------------------------------------------------------------------
# MemoryStore


def test_memory_store_is_thread_safe_and_keeps_its_size_exact() -> None:
    store = MemoryStore()
    shared = "session:shared"

    def work(n: int) -> None:
        for i in range(100):
            store.set(shared, f"t{n}-{i}", i, 3600)
            store.set(f"session:own-{n}", f"k{i}", [n, i], 3600)
            store.get(shared, f"t{n}-{i}", 3600)
            if i % 10 == 0:
                store.delete(f"session:own-{n}", f"k{i}", 3600)

    run_threads(8, work)

    data = store.get_all(shared, 3600)
    assert data == {f"t{n}-{i}": i for n in range(8) for i in range(100)}
    own = {n: store.get_all(f"session:own-{n}", 3600) for n in range(8)}
    assert own == {n: {f"k{i}": [n, i] for i in range(100) if i % 10} for n in range(8)}
    expected_size = memory_size({shared: data, **{f"session:own-{n}": d for n, d in own.items()}})
    assert f"sessions=9, size={expected_size}," in repr(store)


def test_memory_store_reading_or_extending_an_unknown_session_creates_nothing() -> None:
    store = MemoryStore()

    assert store.get("session:nobody", "k", 60) is None
    assert store.get_all("session:nobody", 60) == {}
    store.extend("session:nobody", 60)
    store.delete("session:nobody", "k", 60)

    assert repr_sessions(store) == 0
    assert "size=0," in repr(store)


def test_memory_store_deleting_the_last_key_removes_the_session() -> None:
    store = MemoryStore()
    store.set("session:a", "k", 1, 60)

    store.delete("session:a", "k", 60)

    assert repr_sessions(store) == 0


def test_memory_store_evicts_the_least_recently_used_session_past_max_size() -> None:
    # Each session is the same size (ids of one length, one key, one digit): five fit.
    store = MemoryStore(max_size=5 * memory_size({"session:0": {"k": 0}}))
    for n in range(5):
        store.set(f"session:{n}", "k", n, 3600)
    assert repr_sessions(store) == 5

    assert store.get("session:0", "k", 3600) == 0  # touched: now the most recently used
    store.set("session:5", "k", 5, 3600)

    assert store.get("session:1", "k", 3600) is None  # the least recently used went
    assert store.get("session:0", "k", 3600) == 0
    assert store.get("session:5", "k", 3600) == 5
    assert repr_sessions(store) == 5

    store.set("session:6", "k", 6, 3600)  # next in line: session:2

    assert store.get_all("session:2", 3600) == {}
    assert [store.get(f"session:{n}", "k", 3600) for n in (0, 3, 4, 5, 6)] == [0, 3, 4, 5, 6]


def test_memory_store_growing_a_session_evicts_only_what_it_must() -> None:
    grown = memory_size({"session:0": {"k": 0}, "session:1": {"k": 1, "kk": 22}})
    store = MemoryStore(max_size=grown)
    store.set("session:0", "k", 0, 3600)
    store.set("session:1", "k", 1, 3600)

    store.set("session:1", "kk", 22, 3600)  # exactly max_size: everything still fits

    assert store.get("session:0", "k", 3600) == 0
    assert store.get_all("session:1", 3600) == {"k": 1, "kk": 22}


def test_memory_store_refuses_a_session_bigger_than_max_size_and_stores_nothing() -> None:
    small = memory_size({"session:big": {"small": 1}})
    store = MemoryStore(max_size=small + 50)

    with pytest.raises(ValueError, match=rf"^MemoryStore: session data would be \d+ bytes with "
                       rf"key 'k', over max_size={small + 50}; nothing was stored$"):
        store.set("session:big", "k", "x" * 100, 60)
    assert repr_sessions(store) == 0

    store.set("session:big", "small", 1, 60)
    with pytest.raises(ValueError, match=rf"with key 'huge', over max_size={small + 50}"):
        store.set("session:big", "huge", "x" * 100, 60)
    assert store.get_all("session:big", 60) == {"small": 1}
    assert f"size={small}," in repr(store)  # the small session only


def test_memory_store_sessions_expire_on_the_injected_clock() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    store.set("session:a", "k", 1, 10)

    clock.advance(9.9)
    assert store.get("session:a", "k", 10) == 1  # and renewed for 10 more seconds
    clock.advance(9.9)
    store.extend("session:a", 10)
    clock.advance(9.9)
    assert store.get_all("session:a", 10) == {"k": 1}

    clock.advance(10)
    assert store.get("session:a", "k", 10) is None
    assert repr_sessions(store) == 0  # the expired session was dropped when read

    store.set("session:a", "new", 2, 10)
    assert store.get_all("session:a", 10) == {"new": 2}  # nothing old came back


def test_memory_store_caps_expiry_at_max_age() -> None:
    clock = FakeClock()
    store = MemoryStore(max_age=60, clock=clock)
    store.set("session:a", "k", 1, 3600)

    clock.advance(59.9)
    assert store.get("session:a", "k", 3600) == 1
    clock.advance(60)

    assert store.get("session:a", "k", 3600) is None


def test_memory_store_shows_its_sessions_size_and_limits_as_an_html_table() -> None:
    store = MemoryStore(max_size=10_000, max_age=60)
    store.set("session:a", "k", "v", 60)
    store.set("session:b", "kk", [1], 60)

    size = memory_size({"session:a": {"k": "v"}, "session:b": {"kk": [1]}})
    assert html_table(store._repr_html_()) == (
        "MemoryStore", {"sessions": "2", "size": str(size), "max_size": "10000", "max_age": "60"})


BAD_MEMORY_OPTIONS = [
    ("max_size", 0, ValueError, r"^max_size must be a whole number of bytes >= 1, got 0$"),
    ("max_size", -5, ValueError, r"^max_size must be .* got -5$"),
    ("max_size", 1.5, TypeError, r"^max_size must be .* got float 1\.5$"),
    ("max_size", True, TypeError, r"^max_size must be .* got bool True$"),
    ("max_size", "100", TypeError, r"^max_size must be .* got str '100'$"),
    ("max_age", 0, ValueError, r"^max_age must be a number of seconds > 0\b.*, got 0$"),
    ("max_age", -1, ValueError, r"^max_age must be .* got -1$"),
    ("max_age", float("inf"), ValueError, r"^max_age must be .* got inf$"),
    ("max_age", float("nan"), ValueError, r"^max_age must be .* got nan$"),
    ("max_age", "60", TypeError, r"^max_age must be a number of seconds > 0\b.*, got str '60'$"),
]


@pytest.mark.parametrize(
    ("option", "value", "error", "message"),
    [pytest.param(*case, id=f"{case[0]}={case[1]!r}") for case in BAD_MEMORY_OPTIONS],
)
def test_memory_store_bad_options_raise_type_or_value_error_naming_the_option(
    option: str, value: Any, error: type[Exception], message: str
) -> None:
    options: dict[str, Any] = {option: value}
    with pytest.raises(error, match=message):
        MemoryStore(**options)


# ---------------------------------------------------------------------------
# SQLiteStore


def sqlite_rows(path: Path, sql: str, *args: Any) -> Any:
    """Run one query on a separate connection, as another program reading the file would."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def run_python(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet in a new interpreter that can import generic_session."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_sqlite_store_keeps_sessions_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    before = SQLiteStore(path)
    before.set("session:a", "user", {"name": "Zoë", "roles": ["admin"], "age": 42.5}, 3600)
    before.set("session:a", "flag", True, 3600)
    before.close()

    after = SQLiteStore(path)

    assert after.get_all("session:a", 3600) == {
        "user": {"name": "Zoë", "roles": ["admin"], "age": 42.5},
        "flag": True,
    }
    assert repr(after) == f"SQLiteStore({str(path)!r}, timeout=5.0)"  # no query in a repr
    assert "<th style='text-align:left'>sessions</th><td style='text-align:left'><code>1<" in (
        after._repr_html_())


def test_sqlite_store_shares_sessions_between_processes(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    script = (
        "import os, sys\n"
        "from generic_session import SQLiteStore\n"
        "SQLiteStore(sys.argv[1]).set('session:a', 'written_by', os.getpid(), 3600)\n"
        "print(os.getpid())\n"
    )

    child = run_python(script, str(path))

    assert child.returncode == 0, child.stderr
    assert SQLiteStore(path).get("session:a", "written_by", 3600) == int(child.stdout)


def test_sqlite_store_runs_the_file_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    SQLiteStore(path).set("session:a", "k", 1, 60)

    assert sqlite_rows(path, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize("path", [":memory:", "", "file:sessions?mode=memory&cache=shared"])
def test_sqlite_store_refuses_an_in_memory_database_and_suggests_memory_store(path: str) -> None:
    with pytest.raises(
        ValueError,
        match=r"^SQLiteStore needs a file path, got .*: an in-memory database is private to one "
        r"connection, and this store opens one per thread; use MemoryStore for sessions in "
        r"memory$",
    ):
        SQLiteStore(path)


def test_sqlite_store_shows_its_path_and_live_sessions_as_an_escaped_html_table(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    path = tmp_path / "<odd & name>.db"
    store = SQLiteStore(path, clock=clock)
    store.set("session:short", "k", 1, 10)
    store.set("session:long", "k", 1, 100)
    clock.advance(50)  # session:short has expired (and is not swept yet)

    markup = store._repr_html_()

    assert html_table(markup) == ("SQLiteStore", {"path": str(path), "sessions": "1"})
    assert "&lt;odd &amp; name&gt;.db</code>" in markup


def test_sqlite_store_repr_runs_no_query_so_it_works_with_the_file_gone(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    path = directory / "sessions.db"
    store = SQLiteStore(path, timeout=2.5)
    store.set("session:a", "k", 1, 60)
    store.close()
    shutil.rmtree(directory)

    assert repr(store) == f"SQLiteStore({str(path)!r}, timeout=2.5)"
    # The rich display does count, and shows what it could not count instead of raising.
    assert html_table(store._repr_html_())[1] == {"path": str(path), "sessions": "?"}


def test_sqlite_store_given_a_key_with_a_lone_surrogate_raises_unicode_error_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.db"
    store = SQLiteStore(path)

    # A bad argument, not a failing store: UnicodeEncodeError (a ValueError), no StoreError.
    with pytest.raises(UnicodeEncodeError, match=r"surrogates not allowed"):
        store.set("session:new", "k\ud800", 1, 60)

    # Rolled back whole: not even the new session's expiry row was kept.
    assert sqlite_rows(path, "SELECT count(*) FROM session_expiry") == [(0,)]
    store.set("session:new", "k", 1, 60)  # and the store works on
    assert store.get_all("session:new", 60) == {"k": 1}


def test_sqlite_store_expired_sessions_read_as_empty_and_set_does_not_resurrect_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    store = SQLiteStore(path, clock=clock)
    store.set("session:a", "old", 1, 10)
    store.set("session:a", "older", 2, 10)

    clock.advance(9.9)
    assert store.get("session:a", "old", 10) == 1  # renewed for 10 more seconds
    clock.advance(9.9)
    assert store.get_all("session:a", 10) == {"old": 1, "older": 2}
    clock.advance(10)

    assert store.get("session:a", "old", 10) is None
    assert store.get_all("session:a", 10) == {}
    store.extend("session:a", 10)  # too late: extend renews live sessions only
    assert store.get_all("session:a", 10) == {}
    assert ">sessions</th><td style='text-align:left'><code>0<" in store._repr_html_()

    store.set("session:a", "new", 3, 10)

    assert store.get_all("session:a", 10) == {"new": 3}
    assert sqlite_rows(path, "SELECT key FROM session_data WHERE id = 'session:a'") == [("new",)]


def test_sqlite_store_sweeps_at_most_sweep_batch_expired_sessions_per_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    store = SQLiteStore(path, sweep_every=1, sweep_batch=10, clock=clock)
    for n in range(50):
        store.set(f"old:{n:02d}", "a", n, 60)
        store.set(f"old:{n:02d}", "b", n, 60)
    clock.advance(61)

    def old_rows() -> tuple[int, int]:
        [(sessions,)] = sqlite_rows(path, "SELECT count(*) FROM session_expiry WHERE id >= 'old:'"
                                    " AND id < 'old;'")
        [(data,)] = sqlite_rows(path, "SELECT count(*) FROM session_data WHERE id >= 'old:'"
                                " AND id < 'old;'")
        return sessions, data

    counts = [old_rows()]
    for n in range(7):
        store.set(f"new:{n}", "k", n, 60)
        counts.append(old_rows())

    assert counts == [(50, 100), (40, 80), (30, 60), (20, 40), (10, 20), (0, 0), (0, 0), (0, 0)]
    orphans = sqlite_rows(
        path, "SELECT count(*) FROM session_data WHERE id NOT IN (SELECT id FROM session_expiry)"
    )
    assert orphans == [(0,)]
    assert store.get_all("new:6", 60) == {"k": 6}  # the live sessions were left alone


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [("sweep_every", 0, ValueError), ("sweep_every", -1, ValueError),
     ("sweep_batch", 0, ValueError), ("sweep_batch", -1, ValueError),
     ("max_connections", 0, ValueError), ("sweep_every", 1.5, TypeError),
     ("sweep_batch", True, TypeError), ("max_connections", "8", TypeError)],
)
def test_sqlite_store_bad_count_options_raise_type_or_value_error_naming_the_option(
    tmp_path: Path, option: str, value: Any, error: type[Exception]
) -> None:
    options: dict[str, Any] = {option: value}
    with pytest.raises(error, match=rf"^{option} must be a whole number of \w+ >= 1, got "):
        SQLiteStore(tmp_path / "sessions.db", **options)


def test_sqlite_store_without_a_usable_file_raises_store_error_naming_store_and_path(
    tmp_path: Path,
) -> None:
    missing_dir = tmp_path / "no-such-dir" / "sessions.db"

    with pytest.raises(StoreError, match=r"^SQLiteStore at '.*/no-such-dir/sessions\.db': open "
                       r"failed: unable to open database file$") as raised:
        SQLiteStore(missing_dir)

    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    assert not missing_dir.parent.exists()


def test_sqlite_store_on_a_directory_raises_store_error_and_writes_nothing(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()

    with pytest.raises(StoreError, match=rf"^SQLiteStore at {re.escape(repr(str(directory)))}: "
                       r"open failed: unable to open database file$"):
        SQLiteStore(directory)

    assert list(directory.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-directory"]


def test_sqlite_store_opening_a_new_file_waits_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    # Another process in the middle of its first write to the new file (rollback journal).
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    finish = threading.Timer(0.2, other.execute, ("COMMIT",))
    finish.start()
    try:
        store = SQLiteStore(path, timeout=10)  # should wait for the lock, as writes do

        store.set("session:a", "k", 1, 60)
        assert store.get("session:a", "k", 60) == 1
    finally:
        finish.join()
        other.close()


def test_sqlite_store_shared_by_threads_keeps_every_write(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "sessions.db")

    def work(n: int) -> None:
        for i in range(40):
            store.set("session:shared", f"t{n}-{i}", i, 3600)
            store.set(f"session:own-{n}", f"k{i}", i, 3600)
        store.close()  # this thread's connection

    run_threads(6, work)

    assert store.get_all("session:shared", 3600) == {
        f"t{n}-{i}": i for n in range(6) for i in range(40)
    }
    assert all(len(store.get_all(f"session:own-{n}", 3600)) == 40 for n in range(6))


WRITER_SCRIPT = """
import sys
from generic_session import SQLiteStore

path, label, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = SQLiteStore(path)
print("ready", flush=True)
sys.stdin.readline()  # wait for "go", so all the writers write at once
for n in range(count):
    store.set("session:shared", f"{label}{n}", n, 3600)
print("done", flush=True)
"""


def test_sqlite_store_keeps_every_write_of_several_processes_writing_one_session(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.db"  # new: the writers create it together
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(path), f"p{n}-", "50"],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    try:
        for writer in writers:
            assert writer.stdout is not None
            if writer.stdout.readline() != "ready\n":
                pytest.fail(f"a writer did not start: {writer.communicate(timeout=30)[1]}")
        for writer in writers:
            assert writer.stdin is not None
            writer.stdin.write("go\n")
            writer.stdin.flush()
        results = [writer.communicate(timeout=60) for writer in writers]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()

    for writer, (out, err) in zip(writers, results, strict=True):
        assert (writer.returncode, out) == (0, "done\n"), err
    assert SQLiteStore(path).get_all("session:shared", 3600) == {
        f"p{n}-{i}": i for n in range(4) for i in range(50)
    }


# ---------------------------------------------------------------------------
# RedisStore


def test_redis_store_keeps_each_session_as_one_hash_of_json_text_with_a_ttl(
    redis_client: Any,
) -> None:
    store = RedisStore(redis_client, prefix="app:")
    value = {"name": "Zoë", "tags": ["a", 1, None], "ok": True}

    store.set("session:a", "user", value, 30)
    store.set("session:a", "count", 3, 30)

    assert redis_client.keys("*") == [b"app:session:a"]
    assert redis_client.type("app:session:a") == b"hash"
    assert 0 < redis_client.pttl("app:session:a") <= 30_000
    assert redis_client.hgetall("app:session:a") == {
        b"user": '{"name":"Zoë","tags":["a",1,null],"ok":true}'.encode(),
        b"count": b"3",
    }
    assert store.get("session:a", "user", 30) == value


def test_redis_store_every_operation_renews_the_ttl(redis_client: Any) -> None:
    store = RedisStore(redis_client)
    store.set("session:a", "k", 1, 1)
    assert 0 < redis_client.pttl("session:a") <= 1000

    store.get("session:a", "k", 60)
    assert 1000 < redis_client.pttl("session:a") <= 60_000

    store.get_all("session:a", 1)
    assert 0 < redis_client.pttl("session:a") <= 1000

    store.extend("session:a", 120)
    assert 60_000 < redis_client.pttl("session:a") <= 120_000


def test_redis_store_reading_an_unknown_session_creates_no_key(redis_client: Any) -> None:
    store = RedisStore(redis_client, prefix="app:")

    assert store.get("session:nobody", "k", 60) is None
    assert store.get_all("session:nobody", 60) == {}
    store.extend("session:nobody", 60)
    store.delete("session:nobody", "k", 60)

    assert redis_client.dbsize() == 0


def test_redis_store_deleting_the_last_key_or_all_removes_the_hash(redis_client: Any) -> None:
    store = RedisStore(redis_client)
    store.set("session:a", "k", 1, 60)
    store.set("session:b", "k", 1, 60)

    store.delete("session:a", "k", 60)
    store.delete_all("session:b")

    assert redis_client.dbsize() == 0


def test_redis_store_raises_store_error_while_redis_is_down_and_recovers_after(
    redis_server: RedisServer, redis_client: Any
) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        host=redis_server.host,
        port=redis_server.port,
        socket_timeout=1,
        socket_connect_timeout=1,
        retry=Retry(NoBackoff(), 0),  # fail at once: no retries
    )
    store = RedisStore(client)
    address = re.escape(f"RedisStore at 127.0.0.1:{redis_server.port}: ")
    try:
        store.set("session:a", "k", "before", 60)
        assert store.get("session:a", "k", 60) == "before"

        redis_server.stop()

        with pytest.raises(StoreError, match=rf"^{address}set failed: ConnectionError: ") as set_:
            store.set("session:a", "k", "during", 60)
        assert isinstance(set_.value.__cause__, redis.exceptions.ConnectionError)
        with pytest.raises(StoreError, match=rf"^{address}get failed: ConnectionError: ") as get:
            store.get("session:a", "k", 60)
        assert isinstance(get.value.__cause__, redis.exceptions.ConnectionError)
        with pytest.raises(StoreError, match=rf"^{address}delete_all failed: "):
            store.delete_all("session:a")

        redis_server.start()  # same port; its data is gone (no persistence)

        store.set("session:a", "k", "after", 60)
        assert store.get_all("session:a", 60) == {"k": "after"}
    finally:
        redis_server.start()  # no-op when running: later tests need it
        client.close()


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("get", ("session:a", "k\ud800", 60)),
        ("set", ("session:a", "k\ud800", 1, 60)),
        ("delete", ("session:a", "k\ud800", 60)),
        ("get_all", ("session:\ud800", 60)),
        ("delete_all", ("session:\ud800",)),
    ],
    ids=["get-key", "set-key", "delete-key", "get_all-id", "delete_all-id"],
)
def test_redis_store_given_a_lone_surrogate_raises_unicode_error_not_store_error(
    redis_client: Any, method: str, args: tuple[Any, ...]
) -> None:
    store = RedisStore(redis_client)
    store.set("session:a", "k", "kept", 60)

    # The argument is bad, Redis is fine: UnicodeEncodeError (a ValueError), no StoreError.
    with pytest.raises(UnicodeEncodeError, match=r"surrogates not allowed"):
        getattr(store, method)(*args)

    # Nothing was sent: the connection still works, and the session is unchanged.
    assert store.get_all("session:a", 60) == {"k": "kept"}
    assert redis_client.keys("*") == [b"session:a"]


def test_redis_store_on_a_server_that_never_answers_raises_store_error_after_its_timeout(
    silent_server: SilentServer, hung_store: RedisStore
) -> None:
    import redis

    started = time.monotonic()
    with pytest.raises(StoreError, match=rf"^RedisStore at 127\.0\.0\.1:{silent_server.port}: "
                       r"set failed: TimeoutError: ") as raised:
        hung_store.set("session:a", "k", 1, 60)
    elapsed = time.monotonic() - started

    assert isinstance(raised.value.__cause__, redis.exceptions.TimeoutError)
    assert silent_server.accepted >= 1  # it connected: a timeout, not a refusal
    assert 0.25 <= elapsed < 2  # its 0.3 s socket timeout, once: no retries with backoff


def test_redis_store_shows_its_address_and_prefix_as_an_escaped_html_table(
    redis_client: Any, redis_server: RedisServer
) -> None:
    store = RedisStore(redis_client, prefix="<b>sessions & co:")

    markup = store._repr_html_()

    assert html_table(markup) == (
        "RedisStore", {"address": f"127.0.0.1:{redis_server.port}", "prefix": "<b>sessions & co:",
                       "wait_replicas": "0"})
    assert "<code>&lt;b&gt;sessions &amp; co:</code>" in markup


# ---------------------------------------------------------------------------
# RedisStore on a Redis Cluster


def script_calls(node: Any) -> tuple[int, int]:
    """How many EVALSHA and MULTI a Redis node has run since it started."""
    stats = node.info("commandstats")
    return (stats.get("cmdstat_evalsha", {}).get("calls", 0),
            stats.get("cmdstat_multi", {}).get("calls", 0))


def test_redis_store_on_a_cluster_keeps_each_session_as_one_hash_written_in_one_script(
    redis_cluster: RedisClusterNode, cluster_client: Any
) -> None:
    import redis
    from redis.exceptions import CrossSlotTransactionError

    store = RedisStore(cluster_client, prefix="app:")
    with redis.Redis(host=redis_cluster.host, port=redis_cluster.port, socket_timeout=2) as node:
        scripts_before, multi_before = script_calls(node)

        store.set("session:a", "user", {"name": "Zoë"}, 30)
        store.set("session:a", "count", 3, 30)
        assert store.get("session:a", "user", 30) == {"name": "Zoë"}
        store.delete("session:a", "count", 30)
        assert store.get_all("session:a", 30) == {"user": {"name": "Zoë"}}
        store.extend("session:a", 60)

        # Each of the 6 operations went to the node as one command: one EVALSHA.
        scripts_after, multi_after = script_calls(node)
        assert (scripts_after - scripts_before, multi_after - multi_before) == (6, 0)

        # The session is one hash: one key, so one slot, with its TTL.
        assert node.keys("*") == [b"app:session:a"]
        assert cluster_client.type("app:session:a") == b"hash"
        assert 30_000 < cluster_client.pttl("app:session:a") <= 60_000

        store.delete_all("session:a")
        assert node.dbsize() == 0

    # One node is a real test of the cluster protocol: redis-py refuses a
    # transaction over two slots, so a store using two keys per session would fail here.
    assert cluster_client.keyslot("app:session:a") != cluster_client.keyslot("app:session:b")
    pipe = cluster_client.pipeline(transaction=True)
    with pytest.raises(CrossSlotTransactionError):
        pipe.hset("app:session:a", "k", "1").hset("app:session:b", "k", "1")
        pipe.execute()
    pipe.reset()


def test_redis_store_on_a_cluster_loads_its_script_again_on_the_node_that_lost_it(
    cluster_client: Any
) -> None:
    store = RedisStore(cluster_client, prefix="app:")
    cluster_client.script_flush()  # on every primary: here, the one node
    store.set("session:a", "n", 1, 30)
    cluster_client.script_flush()
    assert store.get("session:a", "n", 30) == 1
    assert store.incr("session:a", "n", 2, 30) == 3


def test_redis_store_on_a_cluster_names_the_cluster_address_in_its_errors(
    redis_cluster: RedisClusterNode, cluster_client: Any
) -> None:
    import redis

    store = RedisStore(cluster_client, prefix="app:")
    address = f"127.0.0.1:{redis_cluster.port}"
    assert store.address == address
    assert repr(store) == f"RedisStore(address='{address}', prefix='app:')"

    cluster_client.set("app:session:a", "a string, not a hash")  # so HSET fails in the EXEC
    with pytest.raises(StoreError, match=rf"^RedisStore at {re.escape(address)}: set failed: "
                       r"ResponseError: .*WRONGTYPE") as raised:
        store.set("session:a", "k", 1, 60)
    assert isinstance(raised.value.__cause__, redis.exceptions.ResponseError)


# ---------------------------------------------------------------------------
# check_store catches stores that break a lifecycle rule (each one rule, on MemoryStore)


class RevivingStore(MemoryStore):
    """A live set on a session that is not live makes it live: a logout undone."""

    def set(self, id: str, key: str, value: Any, expire: float, *, live: bool = False) -> None:
        if live:
            try:
                super().get(id, key, expire, live=True)
            except UnknownSession:
                self.create(id, expire)
        super().set(id, key, value, expire, live=live)


class RacyIncrStore(MemoryStore):
    """incr as a get and a set: another thread's increment in between is lost."""

    def incr(self, id: str, key: str, amount: int, expire: float, *, live: bool = False) -> int:
        current = self.get(id, key, expire, live=live) or 0
        if type(current) is not int:
            raise TypeError(f"incr of key {key!r}: not an integer")
        total = current + amount
        if total >= 2**63:
            raise ValueError(f"incr of key {key!r}: out of range")
        time.sleep(0)  # let another thread run between the read and the write
        self.set(id, key, total, expire, live=live)
        return int(total)


class CopyingRenameStore(MemoryStore):
    """rename copies the data and leaves the old id live."""

    def rename(self, id: str, new_id: str, expire: float) -> float | None:
        data = self.get_all(id, expire, live=True)
        self.create(new_id, expire)
        for key, value in data.items():
            self.set(new_id, key, value, expire, live=True)
        return expire


class DeadlineBlindStore(MemoryStore):
    """create ignores the lifetime: an active session lives for ever."""

    def create(self, id: str, expire: float, lifetime: float | None = None) -> None:
        super().create(id, expire, None)


class ShowingLifecycleStore(MemoryStore):
    """get_all shows the lifecycle's own data among the session's keys."""

    def get_all(self, id: str, expire: float, *, live: bool = False) -> dict[str, Any]:
        data = super().get_all(id, expire, live=live)
        return {**data, "__live__": True} if live else data


@pytest.mark.parametrize(
    ("store_class", "message"),
    [
        pytest.param(RevivingStore, r"^RevivingStore\.set\(live=True\) on a session "
                     r"(never made|deleted by delete_all): expected UnknownSession",
                     id="a logout undone"),
        pytest.param(RacyIncrStore, r"^RacyIncrStore\.get after 4 threads each incr'd \d+ times: "
                     r"expected \d+ \(no count lost\)", id="incr is not atomic"),
        pytest.param(CopyingRenameStore, r"^CopyingRenameStore\.get_all of the old id after "
                     r"rename: expected \{\} \(ended\)", id="rename leaves the old id"),
        pytest.param(DeadlineBlindStore, r"^DeadlineBlindStore\.rename of a session with a "
                     r"lifetime|^DeadlineBlindStore\.get\(live=True\) after the deadline",
                     id="the deadline is ignored"),
        pytest.param(ShowingLifecycleStore, r"^ShowingLifecycleStore\.get_all\(live=True\) after a "
                     r"live set: expected \{'k': 'v'\}", id="the lifecycle's data is shown"),
    ],
)
def test_check_store_catches_a_store_that_breaks_a_lifecycle_rule(
    store_class: type[MemoryStore], message: str,
) -> None:
    with pytest.raises(AssertionError, match=message):
        check_store(store_class())


def test_memory_store_size_follows_create_rename_delete_and_delete_all() -> None:
    store = MemoryStore()
    store.create("session:a", 60)
    empty = memory_size({"session:a": {}})
    assert f"size={empty}," in repr(store)

    store.set("session:a", "k", 1, 60, live=True)
    store.rename("session:a", "session:bb", 60)  # a longer id: counted by its own length
    assert f"size={memory_size({'session:bb': {'k': 1}})}," in repr(store)
    assert store.get("session:bb", "k", 60, live=True) == 1
    assert store.get("session:a", "k", 60) is None

    store.delete("session:bb", "k", 60, live=True)  # a live session stays, empty
    assert f"size={memory_size({'session:bb': {}})}," in repr(store)

    store.delete_all("session:bb")
    assert repr_sessions(store) == 0
    assert "size=0," in repr(store)
