"""Regression tests for store defects: secrets in errors, descriptors, corrupt data, sizes.

Each test failed on the code before its fix.  Real backends only: a redis-server
(and a replica of it) of this module's own, SQLite files in ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import traceback
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import redis

import generic_session
from generic_session import MemoryStore, RedisStore, SQLiteStore, StoreError
from tests.helpers import RedisServer

#: A session id as GenericSession makes it: the prefix and a 40-character token.
TOKEN = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycA"
SESSION_ID = f"session:{TOKEN}"
#: A stored value that must not reach a log either.
SECRET_VALUE = {"card": "4111-1111-1111-1111", "note": "of pipeline caused error: ha"}
SECRET_TEXT = "4111-1111-1111-1111"


def logged_text(error: BaseException) -> str:
    """What a logger prints for ``error``: its message and its whole chained traceback."""
    return str(error) + "\n" + "".join(traceback.format_exception(error))


def assert_no_secret(error: BaseException) -> None:
    text = logged_text(error)
    assert TOKEN not in text, text
    assert SECRET_TEXT not in text, text
    assert error.__context__ is None or error.__suppress_context__, text


# ---------------------------------------------------------------------------
# 1. StoreError messages name the store and the failure, never a token or a value


def client_of(server: RedisServer) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(host=server.host, port=server.port, socket_timeout=5,
                       retry=Retry(NoBackoff(), 0))


def test_redis_store_out_of_memory_error_names_the_failure_but_not_the_token_or_value(
    own_redis: RedisServer,
) -> None:
    import redis

    client = client_of(own_redis)
    try:
        client.flushdb()
        client.config_set("maxmemory-policy", "noeviction")
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used + 512 * 1024)
        filler = "x" * 64 * 1024
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for n in range(1000):  # fill it: 512 KiB of room goes in fewer than 1000 writes
                client.set(f"filler:{n}", filler)
        store = RedisStore(client)

        with pytest.raises(StoreError, match=(
            rf"^RedisStore at 127\.0\.0\.1:{own_redis.port}: set failed: OutOfMemoryError: "
            r"command not allowed when used memory > 'maxmemory'\.$"
        )) as raised:
            store.set(SESSION_ID, "cart", SECRET_VALUE, 60)

        assert_no_secret(raised.value)
        assert isinstance(raised.value.__cause__, redis.exceptions.OutOfMemoryError)
        # The cause is kept, cleaned: the traceback still says what Redis said.
        assert "command not allowed when used memory" in logged_text(raised.value)
    finally:
        client.config_set("maxmemory", 0)
        client.flushdb()
        client.close()


def test_redis_store_read_only_replica_error_names_the_failure_but_not_the_token_or_value(
    replica: RedisServer,
) -> None:
    import redis

    client = client_of(replica)
    store = RedisStore(client, prefix="app:")
    try:
        with pytest.raises(StoreError, match=(
            rf"^RedisStore at 127\.0\.0\.1:{replica.port}: set failed: ReadOnlyError: "
            r"You can't write against a read only replica\.$"
        )) as raised:
            store.set(SESSION_ID, "cart", SECRET_VALUE, 60)
        assert_no_secret(raised.value)
        assert isinstance(raised.value.__cause__, redis.exceptions.ReadOnlyError)

        with pytest.raises(StoreError, match=r": delete_all failed: ReadOnlyError: ") as deleted:
            store.delete_all(SESSION_ID)
        assert_no_secret(deleted.value)
    finally:
        client.close()


def test_redis_store_error_that_quotes_the_arguments_is_cut_before_them(
    own_redis: RedisServer,
) -> None:
    client = client_of(own_redis)
    client.flushdb()
    store = RedisStore(client)
    try:
        # Redis quotes the first arguments of a command it does not know.
        with pytest.raises(StoreError, match=(
            rf"^RedisStore at 127\.0\.0\.1:{own_redis.port}: set failed: ResponseError: "
            r"unknown command 'NOSUCHCOMMAND'$"
        )) as raised:
            try:
                client.execute_command("NOSUCHCOMMAND", SESSION_ID, SECRET_TEXT)
            except redis.exceptions.ResponseError as error:
                call = generic_session._RedisCall("set", "op", [SESSION_ID], [SECRET_TEXT],
                                                  (SESSION_ID, SECRET_TEXT), True)
                raise store._failure(call, error) from None
        assert_no_secret(raised.value)
    finally:
        client.close()


def test_sqlite_store_error_names_store_path_and_operation_but_not_the_id_or_value(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.db"
    store = SQLiteStore(path, timeout=0.1)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the timeout
    try:
        with pytest.raises(StoreError, match=rf"^SQLiteStore at {re.escape(repr(str(path)))}: "
                           r"set failed: database is locked$") as raised:
            store.set(SESSION_ID, "cart", SECRET_VALUE, 60)
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()
    assert_no_secret(raised.value)


def test_redis_store_loads_its_scripts_again_when_the_server_has_lost_them(
    own_redis: RedisServer,
) -> None:
    client = client_of(own_redis)
    client.flushdb()
    store = RedisStore(client, prefix="app:")
    try:
        store.set(SESSION_ID, "cart", 1, 60)
        for op in ("get", "set", "create", "rename"):  # each first after a SCRIPT FLUSH
            client.script_flush()
            if op == "get":
                assert store.get(SESSION_ID, "cart", 60) == 1
            elif op == "set":
                store.set(SESSION_ID, "cart", 2, 60)
            elif op == "create":
                store.create("session:other", 60)
            else:  # the one-server RENAME script
                assert store.rename("session:other", "session:renamed", 60) is None
        assert store.get(SESSION_ID, "cart", 60) == 2
        assert client.exists("app:session:renamed") == 1
    finally:
        client.close()


def test_async_redis_store_loads_its_scripts_again_when_the_server_has_lost_them(
    own_redis: RedisServer,
) -> None:
    import asyncio

    import redis.asyncio

    async def main() -> None:
        client = redis.asyncio.Redis(host=own_redis.host, port=own_redis.port, socket_timeout=5)
        try:
            await client.flushdb()
            store = generic_session.AsyncRedisStore(client, prefix="app:")
            await client.script_flush()
            await store.set(SESSION_ID, "cart", 1, 60)
            await client.script_flush()
            assert await store.get(SESSION_ID, "cart", 60) == 1
            await client.script_flush()
            assert await store.incr(SESSION_ID, "n", 2, 60) == 2
        finally:
            await client.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------------------
# 3. A stored value that is not JSON is a StoreError naming the key, never the value

#: (stored bytes, why) for values something else wrote: not JSON, not UTF-8, JSON and junk.
GARBAGE = [
    pytest.param(b"4111-1111-1111-1111 secret {", r"Extra data at character 4", id="not-json"),
    pytest.param(b"\xff4111-1111-1111-1111", r"not UTF-8 at byte 0", id="not-utf8"),
    pytest.param(b"", r"Expecting value at character 0", id="empty"),
]


def not_json_message(where: str, op: str, why: str) -> str:
    return (rf"^{re.escape(where)}: {op} found a value under key 'cart' that is not JSON text "
            rf"\({why}\); something other than this store wrote it: delete that key or the "
            r"session$")


@pytest.mark.parametrize(("garbage", "why"), GARBAGE)
@pytest.mark.parametrize("as_text", [False, True], ids=["blob", "text"])
def test_sqlite_store_reading_a_value_that_is_not_json_raises_store_error_naming_the_key(
    tmp_path: Path, garbage: bytes, why: str, as_text: bool
) -> None:
    path = tmp_path / "sessions.db"
    store = SQLiteStore(path)
    store.set(SESSION_ID, "ok", 1, 60)
    other = sqlite3.connect(path)
    with other:  # another program writes bytes, as a BLOB or as (not UTF-8) TEXT
        other.execute(
            "INSERT INTO session_data (id, key, value) VALUES (?, 'cart', "
            + ("CAST(? AS TEXT))" if as_text else "?)"), (SESSION_ID, garbage))
    other.close()
    where = f"SQLiteStore at {str(path)!r}"

    with pytest.raises(StoreError, match=not_json_message(where, "get", why)) as got:
        store.get(SESSION_ID, "cart", 60)
    with pytest.raises(StoreError, match=not_json_message(where, "get_all", why)) as got_all:
        store.get_all(SESSION_ID, 60)

    for raised in (got, got_all):
        assert_no_secret(raised.value)
        assert raised.value.__cause__ is None and raised.value.__context__ is None
    assert store.get(SESSION_ID, "ok", 60) == 1  # the other keys still read
    store.delete(SESSION_ID, "cart", 60)  # and the way out the message gives works
    assert store.get_all(SESSION_ID, 60) == {"ok": 1}
    store.close()


@pytest.mark.parametrize(("garbage", "why"), GARBAGE)
def test_redis_store_reading_a_value_that_is_not_json_raises_store_error_naming_the_key(
    own_redis: RedisServer, garbage: bytes, why: str
) -> None:
    client = client_of(own_redis)
    client.flushdb()
    store = RedisStore(client, prefix="app:")
    try:
        store.set(SESSION_ID, "ok", 1, 60)
        client.hset(f"app:{SESSION_ID}", "cart", garbage)  # another program's write
        where = f"RedisStore at 127.0.0.1:{own_redis.port}"

        with pytest.raises(StoreError, match=not_json_message(where, "get", why)) as got:
            store.get(SESSION_ID, "cart", 60)
        with pytest.raises(StoreError, match=not_json_message(where, "get_all", why)) as got_all:
            store.get_all(SESSION_ID, 60)

        for raised in (got, got_all):
            assert_no_secret(raised.value)
            assert raised.value.__cause__ is None and raised.value.__context__ is None
        store.delete(SESSION_ID, "cart", 60)
        assert store.get_all(SESSION_ID, 60) == {"ok": 1}
    finally:
        client.flushdb()
        client.close()


def test_redis_store_get_all_names_a_field_that_is_not_utf8_by_its_bytes(
    own_redis: RedisServer,
) -> None:
    client = client_of(own_redis)
    client.flushdb()
    store = RedisStore(client)
    try:
        client.hset(SESSION_ID, b"\xffcart", b"1")
        with pytest.raises(StoreError, match=(
            r": get_all found a value under key b'\\xffcart' that is not JSON text "
            r"\(its key is not UTF-8\)")) as raised:
            store.get_all(SESSION_ID, 60)
        assert_no_secret(raised.value)
    finally:
        client.flushdb()
        client.close()


# ---------------------------------------------------------------------------
# 2. SQLiteStore keeps a bounded pool of connections, whatever the threads


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def burst(count: int, work: Any) -> None:
    """Run ``work(n)`` in ``count`` threads started together, one thread per request."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def request(n: int) -> None:
        try:
            start.wait(30)
            work(n)
        except BaseException as error:  # reported in the calling thread
            errors.append(error)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a request thread hung"
    if errors:
        raise errors[0]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_sqlite_store_under_bursts_of_threads_keeps_a_bounded_number_of_descriptors(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "sessions.db")  # max_connections=8
    store.set("session:warm", "k", 0, 3600)
    before = open_descriptors()

    def request(n: int) -> None:
        store.set(f"session:{n}", "k", n, 3600)
        assert store.get(f"session:{n}", "k", 3600) == n
        store.get_all("session:warm", 3600)
        store.delete(f"session:{n}", "k", 3600)

    burst(300, request)
    after_first = open_descriptors()
    burst(300, request)
    after_second = open_descriptors()

    # 8 connections at most: a descriptor for the file and one for its WAL each (the
    # shared memory file is one per process), where per-thread connections left ~600.
    assert after_first <= before + 2 * 8, (before, after_first)
    assert after_second <= after_first, (after_first, after_second)
    store.set("session:after", "k", "still serving", 3600)
    assert store.get_all("session:after", 3600) == {"k": "still serving"}
    store.close()
    assert open_descriptors() <= before - 2  # close() closed the pooled connections


def test_sqlite_store_with_every_connection_busy_waits_its_timeout_then_raises_store_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sessions.db"
    store = SQLiteStore(path, timeout=0.2, max_connections=1)
    holding, release = threading.Event(), threading.Event()

    def hold_the_only_connection() -> None:
        with store._transaction("hold", write=False):
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_only_connection)
    holder.start()
    try:
        assert holding.wait(30)
        with pytest.raises(StoreError, match=rf"^SQLiteStore at {re.escape(repr(str(path)))}: "
                           r"get failed: all 1 connections \(max_connections\) stayed busy "
                           r"for 0\.2 s$"):
            store.get("session:a", "k", 60)
    finally:
        release.set()
        holder.join(30)
    store.set("session:a", "k", 1, 60)  # given back: the next operation gets it
    assert store.get("session:a", "k", 60) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sqlite_store_in_a_forked_child_opens_its_own_connections(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "sessions.db")
    store.set("session:a", "parent", 1, 60)
    parents = list(store._idle)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running pytest's cleanup
        try:
            store.set("session:a", "child", 2, 60)
            ok = (store.get_all("session:a", 60) == {"parent": 1, "child": 2}
                  and not any(db in parents for db in store._idle)
                  and all(db in store._inherited for db in parents))
            os.write(write, b"ok" if ok else b"shared a connection")
        except BaseException as error:
            os.write(write, repr(error).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)

    assert report == b"ok"
    assert store.get_all("session:a", 60) == {"parent": 1, "child": 2}
    assert store._idle == parents  # the parent's pool is as it was
    store.close()


# ---------------------------------------------------------------------------
# 4. MemoryStore's max_size means about what it says: bytes of memory


def counted_and_measured(sessions: int, keys: int) -> tuple[int, int]:
    """Fill a MemoryStore as requests would; ``(its own count, tracemalloc's growth)``."""
    store = MemoryStore()
    names = [f"key{k}" for k in range(keys)]  # literals of the app: shared by every session
    tokens = [f"{n:040d}" for n in range(sessions)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for token in tokens:
            id = "session:" + token  # a new str per request, as GenericSession makes it
            for name in names:
                store.set(id, name, {"user": "zoë", "n": 12, "roles": ["a"]}, 3600)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    match = re.search(r"size=(\d+),", repr(store))
    assert match, repr(store)
    return int(match.group(1)), grown


@pytest.mark.parametrize("keys", [1, 5])
def test_memory_store_counts_about_the_memory_its_sessions_take(keys: int) -> None:
    counted, measured = counted_and_measured(20_000, keys)

    assert measured / 1.5 <= counted <= measured * 1.5, (counted, measured)
