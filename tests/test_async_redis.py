"""AsyncRedisStore against a real redis-server (and a one-node Cluster): the Store
contract through check_store and check_async_store, one layout shared with RedisStore,
the clients each refuses, and errors that name the store but no secret.

Each test runs its coroutine with ``asyncio.run``: a redis.asyncio client belongs to
the loop it first connects on, so every test makes its own.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

import generic_session as gs
from tests.helpers import RedisClusterNode, RedisServer, closed_port

SECRET = "s3cr3t-value-never-shown"


def run(make: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(make())  # type: ignore[arg-type]


def async_client(server: RedisServer, **options: Any) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(host=server.host, port=server.port, socket_timeout=2,
                               socket_connect_timeout=2, **options)


@pytest.mark.parametrize("decode", [False, True], ids=["bytes", "decoded"])
def test_check_store_passes_on_async_redis_store(redis_client: Any, redis_server: RedisServer,
                                                 decode: bool) -> None:
    gs.check_store(gs.AsyncRedisStore(async_client(redis_server, decode_responses=decode),
                                      prefix="check:"), writes=200)


def test_check_async_store_passes_on_the_running_loop(redis_client: Any,
                                                      redis_server: RedisServer) -> None:
    async def check() -> None:
        client = async_client(redis_server)
        try:
            await gs.check_async_store(gs.AsyncRedisStore(client), writes=200)
        finally:
            await client.aclose()

    run(check)


def test_check_async_store_passes_on_memory_and_threaded_sqlite(tmp_path: Any) -> None:
    async def check() -> None:
        await gs.check_async_store(gs.MemoryStore(), writes=200)
        await gs.check_async_store(gs.ThreadedStore(gs.SQLiteStore(tmp_path / "s.db")),
                                   writes=200)

    run(check)


def test_check_store_passes_on_async_redis_cluster(redis_cluster: RedisClusterNode) -> None:
    async def check() -> None:
        client = redis.asyncio.cluster.RedisCluster(host=redis_cluster.host,
                                                    port=redis_cluster.port)
        try:
            await gs.check_async_store(gs.AsyncRedisStore(client, prefix="async-cluster:"),
                                       writes=100)
        finally:
            await client.aclose()

    run(check)


class LosesConcurrentWrites:
    """An async store that saves the whole session (load, change, save back), with an
    await between the load and the save: the lost update the per-key rule forbids.
    Everything else is a MemoryStore's, so that is the one rule it breaks."""

    def __init__(self) -> None:
        self.memory = gs.MemoryStore()

    async def get(self, id: str, key: str, expire: float) -> Any:
        return self.memory.get(id, key, expire)

    async def get_all(self, id: str, expire: float) -> dict[str, Any]:
        return self.memory.get_all(id, expire)

    async def set(self, id: str, key: str, value: Any, expire: float) -> None:
        session = self.memory.get_all(id, expire)
        await asyncio.sleep(0)  # another request runs here, as with a real store's I/O
        session[key] = value
        self.memory.delete_all(id)
        for name, item in session.items():
            self.memory.set(id, name, item, expire)

    async def delete(self, id: str, key: str, expire: float) -> None:
        self.memory.delete(id, key, expire)

    async def delete_all(self, id: str) -> None:
        self.memory.delete_all(id)

    async def extend(self, id: str, expire: float) -> None:
        self.memory.extend(id, expire)


def test_check_store_finds_the_lost_update_of_an_async_whole_session_store() -> None:
    with pytest.raises(AssertionError, match=(
            r"^LosesConcurrentWrites\.get_all after 4 concurrent writers set 50 keys each: "
            r'expected all 200 keys, got "\d+ lost')):
        gs.check_store(LosesConcurrentWrites(), writes=50)


def test_check_store_on_a_running_loop_says_to_await_the_async_twin() -> None:
    async def check() -> None:
        gs.check_store(gs.ThreadedStore(gs.MemoryStore()))

    with pytest.raises(RuntimeError, match=r"^check_store\(ThreadedStore\) was called on a "
                       r"running event loop, which it would block: await check_async_store"):
        run(check)


def test_redis_store_and_async_redis_store_share_one_session(
        redis_client: Any, redis_server: RedisServer) -> None:
    sync = gs.RedisStore(redis_client, prefix="shared:")

    async def both() -> None:
        client = async_client(redis_server)
        store = gs.AsyncRedisStore(client, prefix="shared:")
        try:
            sync.create("one", 60, lifetime=600)
            sync.set("one", "cart", ["apple"], 60, live=True)
            assert await store.get("one", "cart", 60, live=True) == ["apple"]
            await store.set("one", "user", {"name": "ada"}, 60, live=True)
            assert await store.incr("one", "visits", 2, 60, live=True) == 2
            assert sync.get_all("one", 60, live=True) == {
                "cart": ["apple"], "user": {"name": "ada"}, "visits": 2}
            left = await store.rename("one", "two", 60)
            assert left is not None and 590 < left <= 600
            with pytest.raises(gs.UnknownSession):
                sync.get("one", "cart", 60, live=True)
            assert sync.get("two", "user", 60, live=True) == {"name": "ada"}
            sync.delete_all("two")
            with pytest.raises(gs.UnknownSession):
                await store.get("two", "user", 60, live=True)
        finally:
            await client.aclose()

    run(both)


def test_redis_store_refuses_an_asyncio_client_naming_async_redis_store() -> None:
    # Before: accepted, and every set "worked" while storing nothing (a coroutine
    # never awaited).
    with pytest.raises(TypeError, match=(
            r"^RedisStore needs a redis\.Redis or redis\.cluster\.RedisCluster client, got "
            r"redis\.asyncio\.client\.Redis: use AsyncRedisStore for that one$")):
        gs.RedisStore(redis.asyncio.Redis(host="127.0.0.1", port=1))


def test_async_redis_store_refuses_a_blocking_client_naming_redis_store() -> None:
    with pytest.raises(TypeError, match=(
            r"^AsyncRedisStore needs a redis\.asyncio\.Redis or redis\.asyncio\.RedisCluster "
            r"client, got redis\.client\.Redis: use RedisStore for that one$")):
        gs.AsyncRedisStore(redis.Redis(host="127.0.0.1", port=1))


@pytest.mark.parametrize("cls", [gs.RedisStore, gs.AsyncRedisStore])
def test_a_redis_store_refuses_what_is_no_redis_client(cls: type) -> None:
    with pytest.raises(TypeError, match=rf"^{cls.__name__} needs a redis-py client \(with a "
                       r"register_script\(\) method\), got dict$"):
        cls({"host": "localhost"})


def test_async_redis_store_down_raises_store_error_naming_it_and_no_secret() -> None:
    async def down(port: int) -> None:
        client = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1,
                                     retry=None)
        store = gs.AsyncRedisStore(client)
        try:
            with pytest.raises(gs.StoreError, match=(
                    rf"^AsyncRedisStore at 127\.0\.0\.1:{port}: set failed: ConnectionError: ")
            ) as raised:
                await store.set(f"id-{SECRET}", "cart", SECRET, 60)
            text = str(raised.value) + repr(raised.value.__cause__)
            assert SECRET not in text
            assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError)
        finally:
            await client.aclose()

    with closed_port() as port:
        asyncio.run(down(port))


def test_asgi_refuses_redis_store_naming_async_redis_store(redis_client: Any) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(TypeError, match=re.escape(
            "RedisStore blocks on I/O and would stall the event loop: pass "
            "ThreadedStore(RedisStore(...)) to run it in worker threads, or use "
            "AsyncRedisStore with a redis.asyncio client")):
        gs.ASGIMiddleware(app, gs.RedisStore(redis_client), keys=["k"])
