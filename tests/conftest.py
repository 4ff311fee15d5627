"""Shared pytest fixtures: a real redis-server (and a one-node Redis Cluster), a Redis client,
server.py runner, an ASGI app under a real uvicorn, failing stores.

Helper functions (``free_port``, ``wait_for_port``, ...) live in
``tests/helpers.py`` and are re-exported here for convenience; import them in
test modules with ``from tests.helpers import free_port``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from generic_session import RedisStore
from tests.helpers import (
    PROJECT_ROOT,
    RedisClusterNode,
    RedisServer,
    ServerProcess,
    SilentServer,
    UvicornServer,
    dead_redis_store,
    free_port,
    wait_for_port,
)

if TYPE_CHECKING:
    import redis

__all__ = ["PROJECT_ROOT", "free_port", "wait_for_port"]

REDIS_MISSING = "redis-server not installed: apt-get install redis-server"


def redis_server_executable() -> str:
    """The path of redis-server; skip the test when it is missing, fail on CI (``CI=true``)."""
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail(REDIS_MISSING)
        pytest.skip(REDIS_MISSING)
    return executable


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of our own on a free loopback port, for the whole session.

    Persistence is off and its working dir is a temp dir, so nothing leaks. It
    has ``.host``, ``.port``, ``.url`` and ``.stop()`` / ``.start()`` (restart
    on the same port) for outage tests. Skipped when redis-server is not
    installed, except on CI (``CI=true``), where that is an error: CI must run
    the Redis tests.
    """
    with started_redis(tmp_path_factory, "redis") as server:
        yield server


@contextlib.contextmanager
def started_redis(tmp_path_factory: pytest.TempPathFactory, name: str,
                  extra_args: Sequence[str] = ()) -> Iterator[RedisServer]:
    """A redis-server of the caller's, started in a fresh temp dir and stopped after."""
    server = RedisServer(redis_server_executable(), tmp_path_factory.mktemp(name),
                         extra_args=extra_args)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNode]:
    """A one-node Redis Cluster of our own (all 16384 slots), for the whole session.

    A redis-server in cluster mode on a free loopback port, persistence off,
    its ``nodes.conf`` in a temp dir; ready (``cluster_state:ok``) when yielded,
    which takes about 2 s.  Connect with ``redis.cluster.RedisCluster(host=...,
    port=...)``.  It has ``.host``, ``.port`` and ``.cluster_info()``.  Skipped or
    failed exactly like ``redis_server`` when redis-server is not installed.
    """
    node = RedisClusterNode(redis_server_executable(), tmp_path_factory.mktemp("redis-cluster"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test module only (each module gets its own), so that a
    CONFIG SET (maxmemory, keyspace events) or a SCRIPT FLUSH touches no other test."""
    with started_redis(tmp_path_factory, "redis-own") as server:
        yield server


@pytest.fixture(scope="module")
def replica(own_redis: RedisServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A read-only replica of ``own_redis`` (it refuses writes with READONLY), yielded
    once its first sync is done, so that a WAIT on the primary counts it."""
    import redis

    with started_redis(tmp_path_factory, "redis-replica",
                       ["--replicaof", own_redis.host, str(own_redis.port)]) as server:
        client = redis.Redis(host=own_redis.host, port=own_redis.port)
        deadline = time.monotonic() + 10
        # Polls a state, not a race: the replica's first sync must end before WAIT counts it.
        while client.info("replication").get("connected_slaves", 0) < 1 or \
                client.execute_command("WAIT", 1, 100) < 1:
            assert time.monotonic() < deadline, "the replica never caught up"
            time.sleep(0.05)
        client.close()
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A ``redis.Redis`` on the test server, with an empty database.

    Restarts the server first if an earlier test stopped it and did not start it
    again, so one failed outage test does not fail every later Redis test.
    """
    import redis  # only the Redis tests need the package

    redis_server.start()  # no-op when running
    client = redis.Redis(
        host=redis_server.host,
        port=redis_server.port,
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def run_server(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Factory starting ``server.py`` as a real process; returns its base URL.

    ``run_server(store=None, env=None)``: *store* is a ``--store`` value
    (default: the server's default, memory), *env* extra environment variables
    (e.g. ``{"SESSION_KEYS": "k1,k2"}``). The server picks its own port
    (``--port 0``); this waits until it says where it listens. Every server
    started is stopped after the test. Output goes to ``tmp_path/server-N.log``.
    """
    started: list[ServerProcess] = []

    def start(store: str | None = None, env: Mapping[str, str] | None = None) -> str:
        log_path = tmp_path / f"server-{len(started)}.log"
        server = ServerProcess(store=store, env=env, log_path=log_path)
        started.append(server)
        return server.url

    yield start

    for server in started:
        server.stop()


@pytest.fixture
def serve_asgi() -> Iterator[Callable[..., UvicornServer]]:
    """Factory serving an ASGI app under a real uvicorn on a free loopback port.

    ``serve_asgi(app, **uvicorn_config)`` returns the started :class:`UvicornServer`
    (``.url``), in a thread of the test's process, so that the app and the test share
    objects; every server started is stopped after the test, its lifespan shut down.
    """
    started: list[UvicornServer] = []

    def start(app: object, **config: object) -> UvicornServer:
        server = UvicornServer(app, **config)
        started.append(server)
        return server.start()

    yield start

    for server in reversed(started):
        server.stop()


@pytest.fixture
def dead_store() -> Iterator[RedisStore]:
    """A real RedisStore whose client points at a loopback port nothing listens on."""
    store = dead_redis_store()
    try:
        yield store
    finally:
        store.client.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    """A loopback server that accepts connections and never answers (``.port``, ``.accepted``)."""
    with SilentServer() as server:
        yield server


@pytest.fixture
def hung_store(silent_server: SilentServer) -> Iterator[RedisStore]:
    """A real RedisStore whose Redis accepts the connection and then never answers.

    Short timeouts and no retry, as a production client should have: each
    operation fails after about 0.3 s with redis-py's TimeoutError.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        host=silent_server.host,
        port=silent_server.port,
        socket_timeout=0.3,
        socket_connect_timeout=0.3,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        yield RedisStore(client)
    finally:
        client.close()
