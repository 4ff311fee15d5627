"""RedisStore(wait_replicas=N): each write acknowledged only once N replicas have it
(Redis WAIT, pipelined with the write), against a real primary and replica; and reads
whose renewal is not due write nothing (so they neither replicate nor wait).

The Cluster failover this is for is run by ``make stress`` (stress/): here a primary
and one replica, a replica frozen with SIGSTOP, and more replicas asked for than exist.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.cluster

import generic_session as gs
from tests.helpers import RedisClusterNode, RedisServer

PREFIX = "wait:"


def client_of(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, socket_timeout=5)


def frozen(server: RedisServer) -> Any:
    """A context in which ``server``'s process is stopped (SIGSTOP): alive, but acking nothing."""
    class Frozen:
        def __enter__(self) -> None:
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGSTOP)

        def __exit__(self, *exc_info: object) -> None:
            assert server.proc is not None
            os.kill(server.proc.pid, signal.SIGCONT)

    return Frozen()


def test_every_write_is_on_the_replica_when_it_is_acknowledged(
        own_redis: RedisServer, replica: RedisServer) -> None:
    store = gs.RedisStore(client_of(own_redis), prefix=PREFIX, wait_replicas=1, wait_timeout=5)
    on_replica = client_of(replica)

    store.create("a", 60, lifetime=600)
    store.set("a", "cart", ["apple"], 60, live=True)
    assert on_replica.hget(PREFIX + "a", "cart") == b'["apple"]'
    assert store.incr("a", "n", 5, 60, live=True) == 5
    assert on_replica.hget(PREFIX + "a", "n") == b"5"
    store.delete("a", "cart", 60, live=True)
    assert on_replica.hget(PREFIX + "a", "cart") is None
    store.rename("a", "b", 60)
    assert not on_replica.exists(PREFIX + "a")
    assert on_replica.hget(PREFIX + "b", "n") == b"5"
    store.delete_all("b")
    assert not on_replica.exists(PREFIX + "b")


def test_more_replicas_than_answer_fails_the_write_saying_so(
        own_redis: RedisServer, replica: RedisServer) -> None:
    store = gs.RedisStore(client_of(own_redis), prefix=PREFIX, wait_replicas=2, wait_timeout=0.2)

    with pytest.raises(gs.StoreError, match=(
            rf"^RedisStore at 127\.0\.0\.1:{own_redis.port}: set was written on the primary, "
            r"but only 1 of the 2 replicas asked for \(wait_replicas\) had it within "
            r"wait_timeout=0\.2s: it may be lost if the primary fails$")):
        store.set("c", "cart", "secret-value", 60)


def test_a_frozen_replica_fails_writes_but_not_reads_that_renew_nothing(
        own_redis: RedisServer, replica: RedisServer) -> None:
    store = gs.RedisStore(client_of(own_redis), prefix=PREFIX, wait_replicas=1, wait_timeout=0.3)
    store.set("d", "cart", "apple", 60)

    with frozen(replica):
        assert store.get("d", "cart", 60) == "apple"  # not due for renewal: no write, no WAIT
        assert store.get_all("d", 60) == {"cart": "apple"}
        with pytest.raises(gs.StoreError, match=r": set was written on the primary, but only "
                           r"0 of the 1 replicas"):
            store.set("d", "cart", "pear", 60)
    store.set("d", "cart", "plum", 60)  # the replica is back: acknowledged again
    assert client_of(replica).hget(PREFIX + "d", "cart") == b'"plum"'


def test_a_flushed_script_is_loaded_again_under_wait(own_redis: RedisServer,
                                                      replica: RedisServer) -> None:
    client = client_of(own_redis)
    store = gs.RedisStore(client, prefix=PREFIX, wait_replicas=1, wait_timeout=5)
    store.set("e", "k", 1, 60)
    client.script_flush()

    store.set("e", "k", 2, 60)

    assert store.get("e", "k", 60) == 2
    assert client_of(replica).hget(PREFIX + "e", "k") == b"2"


def test_async_redis_store_waits_for_its_replicas_too(own_redis: RedisServer,
                                                      replica: RedisServer) -> None:
    async def writes() -> None:
        client = redis.asyncio.Redis(host=own_redis.host, port=own_redis.port, socket_timeout=5)
        try:
            store = gs.AsyncRedisStore(client, prefix=PREFIX, wait_replicas=1, wait_timeout=5)
            await client.script_flush()  # the reload path, awaited
            await store.set("f", "cart", ["apple"], 60)
            assert client_of(replica).hget(PREFIX + "f", "cart") == b'["apple"]'
            greedy = gs.AsyncRedisStore(client, prefix=PREFIX, wait_replicas=3,
                                        wait_timeout=0.2)
            with pytest.raises(gs.StoreError, match=(
                    r"^AsyncRedisStore at .*: delete_all was written on the primary, but only "
                    r"1 of the 3 replicas")):
                await greedy.delete_all("f")
        finally:
            await client.aclose()

    asyncio.run(writes())


def test_on_a_cluster_the_wait_goes_to_the_node_that_has_the_key(
        redis_cluster: RedisClusterNode) -> None:
    client = redis.cluster.RedisCluster(host=redis_cluster.host, port=redis_cluster.port)
    try:
        gs.RedisStore(client, prefix=PREFIX, wait_replicas=0).set("g", "k", 1, 60)
        store = gs.RedisStore(client, prefix=PREFIX, wait_replicas=1, wait_timeout=0.1)
        # The one-node test cluster has no replica: the write is made, and refused.
        with pytest.raises(gs.StoreError, match=r": set was written on the primary, but only "
                           r"0 of the 1 replicas"):
            store.set("g", "k", 2, 60)
        assert store.get("g", "k", 60) == 2
    finally:
        client.close()


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"wait_replicas": -1}, ValueError, r"^wait_replicas must be a whole number of replicas "
     r">= 0, got -1$"),
    ({"wait_replicas": "1"}, TypeError, r"^wait_replicas must be a whole number of replicas "
     r">= 0, got str '1'$"),
    ({"wait_replicas": True}, TypeError, r"^wait_replicas must be a whole number"),
    ({"wait_timeout": 0}, ValueError, r"^wait_timeout must be a number of seconds > 0 and at "
     r"most 3600\.0 \(an hour: a request would hang that long\), got 0$"),
    ({"wait_timeout": None}, TypeError, r"^wait_timeout must be a number of seconds > 0, got "
     r"NoneType None$"),
])
@pytest.mark.parametrize("cls", [gs.RedisStore, gs.AsyncRedisStore])
def test_bad_wait_options_are_refused_naming_them(cls: type, options: dict[str, Any],
                                                  error: type, message: str) -> None:
    client = (redis.asyncio.Redis if cls is gs.AsyncRedisStore else redis.Redis)(port=1)
    with pytest.raises(error, match=message):
        cls(client, **options)


def test_async_cluster_with_wait_replicas_is_refused_naming_what_works() -> None:
    import redis.asyncio.cluster

    client = redis.asyncio.cluster.RedisCluster.__new__(redis.asyncio.cluster.RedisCluster)
    with pytest.raises(ValueError, match=r"^AsyncRedisStore: wait_replicas is supported on one "
                       r"Redis server, not with a redis\.asyncio\.RedisCluster client"):
        gs.AsyncRedisStore(client, wait_replicas=1)


def test_a_read_whose_renewal_is_not_due_writes_nothing(own_redis: RedisServer) -> None:
    client = client_of(own_redis)
    client.config_set("notify-keyspace-events", "Eg")
    events = client.pubsub()
    events.subscribe("__keyevent@0__:expire")
    assert events.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    store = gs.RedisStore(client, prefix=PREFIX)

    def next_expired_key() -> bytes:
        message = events.get_message(timeout=5)
        assert message is not None, "no keyspace event"
        return message["data"]  # type: ignore[no-any-return]

    try:
        store.set("h", "k", 1, 60)
        assert next_expired_key() == b"wait:h"  # a write renews
        store.get("h", "k", 60)
        store.get_all("h", 60)  # both within the slack (600 ms of 60 s): no PEXPIRE
        client.set("marker", 1)
        client.pexpire("marker", 1000)
        assert next_expired_key() == b"marker"  # events arrive in order: none came for h
        store.get("h", "k", 120)  # 60 s away from where a renewal puts it: due
        assert next_expired_key() == b"wait:h"
    finally:
        events.close()
        client.config_set("notify-keyspace-events", "")
