"""RedisStore (and AsyncRedisStore, when the module has it) against the round-trip floor.

Every store operation is one server-side script (one ``EVALSHA``), so its floor is
one round trip: a ``PING`` on the same connection.  Measured, on a ``redis-server``
this benchmark starts on a free loopback port (persistence off):

1. ``get`` and ``set`` of one key (a 55-character JSON value, over 1,000
   sessions) and ``PING``, in interleaved rounds, medians; the ratios get/PING
   and set/PING against their target (at most 1.15).  Beside them, where the time
   goes: an ``EVALSHA`` of an empty script and of the store's script (get's
   arguments), through redis-py's ``Script`` and through ``execute_command``.
   Twice: with redis-py's default parser, which is hiredis' when ``hiredis`` is
   installed, and with
   ``parser_class=redis.connection._RESP2Parser`` (redis-py's pure-Python RESP2
   parser, what a client without hiredis uses); and a third time in a child
   process where ``hiredis`` cannot be imported at all (parser and command packer
   both pure Python: exactly what a user who did not install it gets).
2. What redis-server itself spends per command (``INFO commandstats``): ``PING``,
   ``HGET`` and the scripts, the share of a store operation no client change removes.
3. ``get``/``set`` with 1,000 and with 1,000,000 sessions stored (filled by a Lua
   script in chunks, a few seconds), interleaved: the cost must stay flat.

Usage::

    python bench/redis_ops.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if "--no-hiredis" in sys.argv:  # before redis is imported: as if hiredis were not installed
    sys.modules["hiredis"] = None  # type: ignore[assignment]

sys.dont_write_bytecode = True
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import generic_session as gs  # noqa: E402
from bench.common import (  # noqa: E402
    EXPIRE,
    LIFETIME,
    SESSION_IDS,
    SESSIONS,
    VALUE,
    create,
    interleaved,
    medians,
    start_redis,
    target,
)
from bench.common import store_ops as common_store_ops  # noqa: E402

LIMIT = 1.15
# Live sessions with a deadline, as the store's create and set make them: the store's
# own field ('\255gs', the deadline in ms since the epoch) and the value.
FILL = """
local value, ms, first, last = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local deadline = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                          + tonumber(ARGV[5]))
for i = first, last do
  local key = 'fill:' .. i
  redis.call('HSET', key, '\\255gs', deadline, 'data', value)
  redis.call('PEXPIRE', key, ms)
end
return last - first + 1
"""


def store_ops(label: str, store: Any, client: Any) -> dict[str, Any]:
    ops: dict[str, Any] = common_store_ops(label, store)
    ids = SESSION_IDS

    # Where a get's time goes beyond the round trip: an EVALSHA of a script that does
    # nothing, and of the store's own script with the arguments get sends (so: the Lua
    # work), each through redis-py's Script object (how the store used to send it) and
    # straight through execute_command (how it sends it now), against RedisStore.get
    # (so: the store's Python on top).
    empty = client.register_script("return 1")
    script = client.register_script(gs._REDIS_OP)
    ms, slack = gs.RedisStore._ms(EXPIRE), int(gs._renew_slack(EXPIRE) * 1000)
    execute = client.execute_command

    def script_get(i: int) -> object:
        return script(keys=[ids[i % SESSIONS]], args=["get", 1, ms, slack, "data"])

    def execute_get(i: int) -> object:
        return execute("EVALSHA", script.sha, 1, ids[i % SESSIONS], "get", 1, ms, slack, "data")

    return {**ops, f"{label} PING": lambda _: client.ping(),
            f"{label} Script return 1": lambda _: empty(),
            f"{label} execute_command EVALSHA return 1":
                lambda _: execute("EVALSHA", empty.sha, 0),
            f"{label} Script store get": script_get,
            f"{label} execute_command EVALSHA store get": execute_get}


#: The columns of the RedisStore table after the client's name: the ops of store_ops.
COLUMNS = ["PING", "Script return 1", "execute_command EVALSHA return 1", "Script store get",
           "execute_command EVALSHA store get", "get", "set"]


def report(label: str, us: dict[str, float]) -> None:
    ping = us[f"{label} PING"]
    get, set_ = us[f"{label} get"], us[f"{label} set"]
    cells = " | ".join(f"{us[f'{label} {column}']:.1f}" for column in COLUMNS)
    print(f"| {label} | {cells} | {get / ping:.2f}x | {set_ / ping:.2f}x |")


def header() -> None:
    print("| RedisStore client | " + " | ".join(f"{column} µs" for column in COLUMNS)
          + " | get / PING | set / PING |")
    print("|---|" + "---:|" * (len(COLUMNS) + 2))


def sync_clients(server: Any, hiredis_importable: bool) -> dict[str, Any]:
    import redis
    from redis._parsers import _RESP2Parser
    from redis.utils import HIREDIS_AVAILABLE

    clients = {}
    default = "hiredis parser (default)" if HIREDIS_AVAILABLE else \
        "no hiredis installed (pure Python)"
    clients[default] = redis.Redis(host=server.host, port=server.port, socket_timeout=5)
    if hiredis_importable and HIREDIS_AVAILABLE:
        # redis.Redis() takes no parser_class: its connection pool passes it on.
        pool = redis.ConnectionPool(host=server.host, port=server.port, socket_timeout=5,
                                    parser_class=_RESP2Parser)
        clients["parser_class=_RESP2Parser"] = redis.Redis(connection_pool=pool)
    return clients


def run_sync(server: Any, quick: bool, hiredis_importable: bool) -> dict[str, float]:
    """Per-op figures and ratios for RedisStore; the ratios by label."""
    clients = sync_clients(server, hiredis_importable)
    ops: dict[str, Any] = {}
    for label, client in clients.items():
        ops.update(store_ops(label, gs.RedisStore(client), client))
    batch, repeats = (500, 5) if quick else (2000, 9)
    us = medians(interleaved(ops, batch, repeats))
    header()
    for label in clients:
        report(label, us)
    ratios = {}
    for label in clients:
        ratios[f"RedisStore get / PING, {label}"] = us[f"{label} get"] / us[f"{label} PING"]
        ratios[f"RedisStore set / PING, {label}"] = us[f"{label} set"] / us[f"{label} PING"]
    for client in clients.values():
        client.close()
    return ratios


def run_async(server: Any, quick: bool) -> dict[str, float]:
    """The same for AsyncRedisStore on redis.asyncio, when the module has it."""
    if not hasattr(gs, "AsyncRedisStore"):
        print("\nAsyncRedisStore: not in this generic_session (skipped)")
        return {}
    import redis.asyncio

    batch, repeats = (500, 5) if quick else (2000, 9)

    async def main() -> dict[str, list[float]]:
        client = redis.asyncio.Redis(host=server.host, port=server.port, socket_timeout=5)
        module: Any = gs  # AsyncRedisStore is being added on main: looked up at run time
        store = module.AsyncRedisStore(client)
        ids = [f"session:async-{n:06d}" for n in range(SESSIONS)]
        for id in ids:
            await store.create(id, EXPIRE, LIFETIME)
            await store.set(id, "data", VALUE, EXPIRE, live=True)
        assert await store.get(ids[0], "data", EXPIRE, live=True) == VALUE
        ops: dict[str, Callable[[int], Awaitable[object]]] = {
            "get": lambda i: store.get(ids[i % SESSIONS], "data", EXPIRE, live=True),
            "set": lambda i: store.set(ids[i % SESSIONS], "data", VALUE, EXPIRE, live=True),
            "PING": lambda _: client.ping(),
        }
        samples: dict[str, list[float]] = {name: [] for name in ops}
        for op in ops.values():  # warm up
            for i in range(200):
                await op(i)
        names = list(ops)
        for round_ in range(repeats):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                op = ops[name]
                start = time.perf_counter_ns()
                for i in range(batch):
                    await op(i)
                samples[name].append((time.perf_counter_ns() - start) / batch / 1000)
        await client.aclose()
        return samples

    us = medians(asyncio.run(main()))
    print("\n| AsyncRedisStore (redis.asyncio) | PING µs | get µs | set µs | get / PING | "
          "set / PING |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| default parser | {us['PING']:.1f} | {us['get']:.1f} | {us['set']:.1f} | "
          f"{us['get'] / us['PING']:.2f}x | {us['set'] / us['PING']:.2f}x |")
    return {"AsyncRedisStore get / PING": us["get"] / us["PING"],
            "AsyncRedisStore set / PING": us["set"] / us["PING"]}


def inside_redis(server: Any, quick: bool) -> None:
    """What the server itself spends per command (INFO commandstats), client noise apart.

    The part of a store operation no client-side change can remove: the script's run
    in redis-server, against PING's.  Each command is run alone between two CONFIG
    RESETSTATs (commandstats add up per command name, not per script), in rounds.
    """
    import redis

    client: Any = redis.Redis(host=server.host, port=server.port, socket_timeout=5)
    store = gs.RedisStore(client)
    ids = SESSION_IDS
    create(store, ids)
    empty = client.script_load("return 1")
    sha = gs._REDIS_SHA["op"]
    ms, slack = gs.RedisStore._ms(EXPIRE), int(gs._renew_slack(EXPIRE) * 1000)
    text = gs.encode_json("data", VALUE)
    execute = client.execute_command
    commands: dict[str, tuple[str, Callable[[str], object]]] = {
        "PING": ("ping", lambda id: execute("PING")),
        "HGET": ("hget", lambda id: execute("HGET", id, "data")),
        "EVALSHA `return 1` (get's arguments)": (
            "evalsha", lambda id: execute("EVALSHA", empty, 1, id, "get", 1, ms, slack, "data")),
        "EVALSHA store script, get": (
            "evalsha", lambda id: execute("EVALSHA", sha, 1, id, "get", 1, ms, slack, "data")),
        "EVALSHA store script, set": (
            "evalsha", lambda id: execute("EVALSHA", sha, 1, id, "set", 1, ms, slack, "data",
                                          text)),
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(5 if quick else 9):
        for name, (stat, command) in commands.items():
            client.config_resetstat()
            for i in range(500 if quick else 2000):
                command(ids[i % SESSIONS])
            samples[name].append(client.info("commandstats")[f"cmdstat_{stat}"]["usec_per_call"])
    client.close()
    us = medians(samples)
    print("\n| inside redis-server (INFO commandstats, medians) | µs per call |")
    print("|---|---:|")
    for name in commands:
        print(f"| {name} | {us[name]:.2f} |")


def scaling(server: Any, quick: bool) -> None:
    """get/set at 1,000 and 1,000,000 stored sessions (other keys' count), interleaved."""
    import redis

    client = redis.Redis(host=server.host, port=server.port, socket_timeout=30)
    store = gs.RedisStore(client)
    text = gs.encode_json("data", VALUE)
    fill = client.register_script(FILL)
    sizes = [1_000, 100_000] if quick else [1_000, 1_000_000]
    ops: dict[str, Any] = {}
    filled = 0
    started = time.perf_counter()
    for size in sizes:
        while filled < size:  # chunks of 100,000: no script runs for long
            last = min(size, filled + 100_000)
            fill(args=[text, 3_600_000, filled + 1, last, int(LIFETIME * 1000)])
            filled = last
        picks = [f"fill:{n}" for n in range(1, size + 1, max(1, size // 1000))][:1000]
        assert store.get(picks[0], "data", EXPIRE, live=True) == VALUE

        def get(i: int, picks: list[str] = picks) -> object:
            return store.get(picks[i % len(picks)], "data", EXPIRE, live=True)

        def set_(i: int, picks: list[str] = picks) -> None:
            store.set(picks[i % len(picks)], "data", VALUE, EXPIRE, live=True)

        # The keys of one size are picked while only that many exist; both are timed
        # once all are filled, so the larger size shows what a big keyspace costs.
        ops[f"{size} get"], ops[f"{size} set"] = get, set_
    fill_seconds = time.perf_counter() - started
    us = medians(interleaved(ops, 500 if quick else 1000, 5 if quick else 9))
    keys = client.dbsize()
    print(f"\n| Redis keys in the database ({keys:,} after filling in {fill_seconds:.1f} s) "
          "| get µs | set µs |")
    print("|---:|---:|---:|")
    for size in sizes:
        print(f"| sessions picked among the first {size:,} | {us[f'{size} get']:.1f} | "
              f"{us[f'{size} set']:.1f} |")
    big, small = sizes[-1], sizes[0]
    target(f"RedisStore get at {big:,} / at {small:,} stored sessions",
           us[f"{big} get"] / us[f"{small} get"], 1.15)
    target(f"RedisStore set at {big:,} / at {small:,} stored sessions",
           us[f"{big} set"] / us[f"{small} set"], 1.15)
    client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, 100,000 sessions")
    parser.add_argument("--no-hiredis", action="store_true",
                        help="(internal) run as if hiredis were not installed")
    parser.add_argument("--port", type=int, help="(internal) the redis-server to use")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="generic-session-bench-redis-"))
    if args.no_hiredis:  # the child: the parent's server
        from tests.helpers import LOOPBACK

        class Server:
            host, port = LOOPBACK, args.port
        ratios = run_sync(Server(), args.quick, hiredis_importable=False)
        for label, ratio in ratios.items():
            target(label, ratio, LIMIT)
        return 0
    server, note = start_redis(directory)
    if server is None:
        print(f"Redis benchmark skipped: {note}")
        return 0
    try:
        import redis

        print(f"# RedisStore against PING{' (--quick)' if args.quick else ''}\n")
        print(f"- {note}; redis-py {redis.__version__}")
        try:
            import hiredis
            print(f"- hiredis {hiredis.__version__} installed\n")
        except ImportError:
            print("- hiredis not installed\n")
        ratios = run_sync(server, args.quick, hiredis_importable=True)
        print("\nThe same in a child process where hiredis cannot be imported:\n")
        sys.stdout.flush()
        child = [sys.executable, __file__, "--no-hiredis", "--port", str(server.port)]
        if args.quick:
            child.append("--quick")
        subprocess.run(child, check=True)
        ratios.update(run_async(server, args.quick))
        inside_redis(server, args.quick)
        for label, ratio in ratios.items():
            target(label, ratio, LIMIT)
        scaling(server, args.quick)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
