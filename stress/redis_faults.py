"""Part 3, Redis faults under load: the app (waitress) on a RedisStore whose client has
``socket_timeout=0.5`` and one retry (the README's advice).

1. Redis killed (SIGKILL) and restarted on the same port while 204 clients run
   the load: requests fail fast with 503 while it is down and succeed again by
   themselves once it is back, the app never restarted.  Redis runs with
   ``appendfsync always``, so the load's invariants (every acknowledged write
   read back, counters...) hold across the restart.
2. A Redis that accepts connections and never answers: every request is a 503
   within the client's timeout (two attempts of 0.5 s), not redis-py's default
   of waiting for ever.
3. Redis at ``maxmemory`` (``noeviction``): writes are 503, reads go on, writes
   work again once memory is freed; and no token or stored value is in any log
   line of the server (the middleware's, waitress', redis-py's: all of its
   output), while the refusals are (a check that the log is captured at all).

    python stress/redis_faults.py [--quick]
"""

from __future__ import annotations

import concurrent.futures
import secrets
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stress.common import (
    AppServer,
    Browser,
    Invariants,
    Tab,
    arguments,
    errors_figure,
    latency_figures,
    redis_server,
    workdir,
)
from stress.loadgen import LoadResult, check_errors, run_load
from tests.helpers import SilentServer

TIMEOUT, RETRIES = 0.5, 1
#: The longest a request may take against a store that never answers: each attempt
#: waits socket_timeout, plus a second of slack for a loaded 2-core machine.
HUNG_BOUND = TIMEOUT * (RETRIES + 1) + 1.0


def check_log(inv: Invariants, log: str, tokens: set[str], values: set[str], what: str) -> int:
    """Check that no token and no value is in ``log``; return how many lines it has."""
    for token in tokens:
        inv.check(token not in log, "a token in a log line", what)
    for value in values:
        inv.check(value not in log, "a stored value in a log line", what)
    return len(log.splitlines())


def kill_restart(root: Path, inv: Invariants, quick: bool) -> None:
    (root / "aof").mkdir()
    redis = redis_server(root / "aof",
                         "--appendonly", "yes", "--appendfsync", "always")
    url = f"{redis.url}?timeout={TIMEOUT}&retries={RETRIES}"
    processes, users, tabs = (2, 34, 3) if quick else (4, 17, 3)
    seconds, before, down = (3.0, 0.8, 0.8) if quick else (10.0, 3.0, 3.0)
    try:
        with AppServer(url, "waitress", root / "kill.log") as app:
            result: list[LoadResult] = []
            loader = threading.Thread(target=lambda: result.append(run_load(
                app.host, app.port, processes=processes, users=users, tabs=tabs,
                seconds=seconds, inv=inv)))
            loader.start()
            time.sleep(1.0 + before)  # the load's start, then some load before the fault
            killed = time.time()
            assert redis.proc is not None
            redis.proc.kill()
            redis.proc.wait()
            redis.proc = None
            time.sleep(down)
            redis.start()  # same port; returns once it answers PING (the AOF loaded)
            back = time.time()
            loader.join()
            load = result[0]
        # Requests in flight at the kill and the first ones after the restart (a pooled
        # connection that died) may still be refused: one timeout of grace each side.
        window = (killed - TIMEOUT, back + TIMEOUT * (RETRIES + 1))
        errors = check_errors(load, inv, [window])
        refused = [latency for when, kind, latency in load.errors if kind == "503"]
        after = sum(1 for when, _, _ in load.errors if when > window[1])
        inv.check(bool(refused), "no 503 while Redis was down", "the fault was not seen")
        inv.check(max(refused, default=0) <= HUNG_BOUND, "a 503 was slow",
                  f"{max(refused, default=0):.2f} s")
        check_log(inv, app.log(), load.tokens, load.values, "kill/restart")
        print(f"  Redis SIGKILLed for {back - killed:.1f} s under {load.clients} clients: "
              f"{load.requests} requests, {load.requests / seconds:.0f} req/s, "
              f"{errors_figure(errors)}; 503s took {latency_figures(refused)}; "
              f"{after} errors after it was back")
    finally:
        redis.stop()


def hung(root: Path, inv: Invariants, quick: bool) -> None:
    with SilentServer() as silent, \
            AppServer(f"redis://127.0.0.1:{silent.port}?timeout={TIMEOUT}&retries={RETRIES}",
                      "waitress", root / "hung.log") as app:
        def one(i: int) -> tuple[int, float]:
            tab = Tab(Browser(), app.host, app.port)
            started = time.perf_counter()
            status, _, _ = tab.request(f"/set?k=k&v=v{i}")
            tab.close()
            return status, time.perf_counter() - started

        count = 8 if quick else 32
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(count)))
    statuses = {status for status, _ in results}
    slowest = max(latency for _, latency in results)
    inv.check(statuses == {503}, "hung Redis: not a 503", repr(statuses))
    inv.check(slowest <= HUNG_BOUND, "hung Redis: 503 later than the client's timeout",
              f"{slowest:.2f} s > {HUNG_BOUND} s")
    print(f"  Redis that never answers: {count} requests, all {sorted(statuses)}, "
          f"{latency_figures([latency for _, latency in results])} "
          f"(socket_timeout {TIMEOUT} s x {RETRIES + 1} attempts)")


def maxmemory(root: Path, inv: Invariants, quick: bool) -> None:
    import redis as redis_py

    redis = redis_server(root, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    values: set[str] = set()
    browsers = [Browser() for _ in range(8)]
    try:
        with AppServer(f"{redis.url}?timeout={TIMEOUT}&retries={RETRIES}", "waitress",
                       root / "maxmemory.log") as app:
            tabs = [Tab(browser, app.host, app.port) for browser in browsers]
            statuses: dict[int, int] = {}
            full = False
            for i in range(3000):
                value = "secret" + secrets.token_hex(1500)  # 3 kB, unique
                values.add(value)
                status, _, _ = tabs[i % len(tabs)].request(f"/set?k=k{i}&v={value}")
                statuses[status] = statuses.get(status, 0) + 1
                inv.check(status in (200, 503), "maxmemory: neither 200 nor 503", str(status))
                if status == 503 and statuses[503] >= (20 if quick else 100):
                    full = True
                    break
            inv.check(full, "maxmemory: no 503", "Redis never refused a write")
            status, payload, _ = tabs[0].request("/get?k=k0")
            inv.check(status == 200 and payload["v"] in values, "maxmemory: reads failed",
                      str(status))
            with redis_py.Redis(host=redis.host, port=redis.port) as admin:
                admin.config_set("maxmemory", "0")
            status, _, _ = tabs[1].request("/set?k=after&v=x")
            inv.check(status == 200, "maxmemory: no recovery once memory was freed",
                      str(status))
            for tab in tabs:
                tab.close()
            app.stop()
            log = app.log()
        tokens = set().union(*(browser.tokens for browser in browsers))
        lines = check_log(inv, log, tokens, values, "maxmemory")
        refusals = log.count("generic_session: RedisStore")
        inv.check(refusals > 0, "maxmemory: the refusals are not in the log",
                  "log not captured")
        print(f"  Redis at maxmemory: {statuses.get(200, 0)} writes stored, "
              f"{statuses.get(503, 0)} refused with 503, reads and (memory freed) writes "
              f"fine; {lines} log lines ({refusals} refusals logged), none with any of "
              f"{len(tokens)} tokens or {len(values)} values")
    finally:
        redis.stop()


def main() -> None:
    args = arguments(__doc__.split("\n")[0])
    inv = Invariants("redis faults")
    print("redis faults:")
    with workdir("redis-faults") as tmp:
        root = Path(tmp)
        kill_restart(root, inv, args.quick)
        hung(root, inv, args.quick)
        maxmemory(root, inv, args.quick)
    inv.exit()


if __name__ == "__main__":
    main()
