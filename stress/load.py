"""Part 1, load: the example app with each store, under waitress (WSGI, 16 threads) and
uvicorn (ASGI), driven by 204 concurrent browser tabs in 4 client processes.

For each (server, store): requests/s, p50/p99/max latency and errors by kind; the
invariants are those of :mod:`stress.loadgen` (every acknowledged write read back, no
client seeing another's data, counters equal to the acknowledged increments, no
error at all: nothing injects a fault here).

    python stress/load.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stress.common import (
    AppServer,
    Invariants,
    arguments,
    errors_figure,
    latency_figures,
    redis_server,
    workdir,
)
from stress.loadgen import check_errors, run_load


def main() -> None:
    args = arguments(__doc__.split("\n")[0])
    # 4 processes x 17 browsers x 3 tabs = 204 connections open at once.
    processes, users, tabs = (2, 34, 3) if args.quick else (4, 17, 3)
    seconds = 1.5 if args.quick else 6.0
    servers = ["waitress", "uvicorn"]
    stores = ["memory", "sqlite", "redis"]
    # Quick: one run per server, each with a store in another process or thread.
    quick = {"waitress": ["redis"], "uvicorn": ["sqlite"]}
    inv = Invariants("load")
    with workdir("load") as tmp:
        root = Path(tmp)
        redis = redis_server(root)
        try:
            print(f"load: {processes * users * tabs} concurrent clients ({processes} processes x "
                  f"{users} browsers x {tabs} tabs), {seconds:g} s per run")
            for server in servers:
                for store in quick[server] if args.quick else stores:
                    spec = {"memory": "memory", "sqlite": f"sqlite:{root / (server + '.db')}",
                            "redis": f"{redis.url}?timeout=2&retries=1"}[store]
                    with AppServer(spec, server, root / f"{server}-{store}.log") as app:
                        load = run_load(app.host, app.port, processes=processes, users=users,
                                        tabs=tabs, seconds=seconds, inv=inv)
                        app.stop()
                        inv.check(app.proc.returncode in (0, -15), "server crashed",
                                  f"exit status {app.proc.returncode}")
                    errors = check_errors(load, inv)
                    print(f"  {server:8} {store:6} {load.requests / seconds:7.0f} req/s  "
                          f"{latency_figures(load.latencies)}  {load.requests} requests  "
                          f"{errors_figure(errors)}", flush=True)
        finally:
            redis.stop()
    inv.exit()


if __name__ == "__main__":
    main()
