"""Requests per second and p50/p99 latency under real servers: waitress (WSGI) and uvicorn (ASGI).

The workload is the README's: a client sets ``foo`` (``GET /set/foo/<n>``) and
fetches it (``GET /get/foo``), over and over, with its session cookie; the app is
plain WSGI (or ASGI) routing those two paths, so no framework is measured.  Each
server serves, in a process of its own on a free loopback port:

- ``bare``: the same two routes keeping ``foo`` in a module-level dict, no session;
- ``floor``: the same routes behind the hand-written floor of ``bench/overhead.py``
  (one regex per cookie, one HMAC, a dict of sessions, the same four headers a
  session's response carries): what the least a signed-cookie session can do
  costs under the same server, the bound of the target below;
- one app per store: ``MemoryStore``, ``SQLiteStore`` (a file in a temp dir) and
  ``RedisStore`` (a redis-server this benchmark starts); under uvicorn the blocking
  stores are wrapped in ``ThreadedStore`` (``AsyncRedisStore`` is used instead when
  the module has it).

The load comes from another process: ``CONNECTIONS`` keep-alive connections, one
thread each, each one browser with its own session (its first response's cookies
sent back on every request), pre-built requests on raw sockets so that the client
stays cheap.  Every response is checked (status 200, and ``/get`` returns the value
the connection last set: a lost session shows).  Every server gets a load of
``SECONDS`` per round; the rounds visit the servers in a rotating order, and each
figure is the median over the rounds.  The fraction of throughput the session
costs is ``1 - rps(store) / rps(bare)`` on the same server; target: under 15% with
``MemoryStore``.

Both processes share the machine's two cores with each other (and with whatever
else runs): the absolute figures are this machine's, the ratios are the point.

Usage::

    python bench/servers.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import start_redis, target  # noqa: E402
from tests.helpers import LOOPBACK  # noqa: E402

KEYS = ["bench signing key"]
CONNECTIONS = 4
STORES = ("bare", "floor", "MemoryStore", "SQLiteStore", "RedisStore")
SERVERS = ("waitress", "uvicorn")
ROUTE = re.compile(r"^/(?:set/([^/]+)/([^/]+)|get/([^/]+))$")


# ---------------------------------------------------------------------------
# The apps (run in the server process)


def make_store(kind: str, directory: Path, redis_port: int, asgi: bool) -> Any:
    import generic_session as gs

    if kind == "MemoryStore":
        return gs.MemoryStore()
    if kind == "SQLiteStore":
        store: Any = gs.SQLiteStore(directory / "servers.db")
        return gs.ThreadedStore(store) if asgi else store
    import redis

    if asgi and hasattr(gs, "AsyncRedisStore"):
        import redis.asyncio

        return gs.AsyncRedisStore(redis.asyncio.Redis(host=LOOPBACK, port=redis_port,
                                                      socket_timeout=5))
    store = gs.RedisStore(redis.Redis(host=LOOPBACK, port=redis_port, socket_timeout=5))
    return gs.ThreadedStore(store) if asgi else store


def wsgi_app(kind: str, directory: Path, redis_port: int) -> Callable[..., Iterable[bytes]]:
    import generic_session as gs

    # The bare app keeps each connection's value apart (by its client port), as the
    # session keeps each browser's: so the load can check every answer.
    bare: dict[tuple[Any, str], str] = {}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        match = ROUTE.match(environ["PATH_INFO"])
        if match is None:
            start_response("404 Not Found", [("Content-Length", "0")])
            return [b""]
        session = environ.get(gs.ENVIRON_KEY)
        floor = environ.get("floor.session")  # the floor's: JSON text in a dict
        set_key, value, get_key = match.groups()
        if set_key is not None:
            if session is not None:
                session.set(set_key, value)
            elif floor is not None:
                floor[set_key] = json.dumps(value)
            else:
                bare[environ.get("REMOTE_PORT"), set_key] = value
            answer: Any = value
        elif session is not None:
            answer = session.get(get_key)
        elif floor is not None:
            answer = json.loads(floor[get_key]) if get_key in floor else None
        else:
            answer = bare.get((environ.get("REMOTE_PORT"), get_key))
        body = json.dumps(answer).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    if kind == "bare":
        return app
    if kind == "floor":
        from bench.overhead import floor_middleware

        return floor_middleware(app)
    return gs.middleware(make_store(kind, directory, redis_port, False), keys=KEYS)(app)


def asgi_app(kind: str, directory: Path, redis_port: int) -> Any:
    import generic_session as gs

    bare: dict[tuple[Any, str], str] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        match = ROUTE.match(scope["path"])
        if match is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        session = scope.get("session")
        floor = scope.get("floor.session")
        set_key, value, get_key = match.groups()
        if set_key is not None:
            if session is not None:
                await session.set(set_key, value)
            elif floor is not None:
                floor[set_key] = json.dumps(value)
            else:
                bare[scope["client"][1], set_key] = value
            answer: Any = value
        elif session is not None:
            answer = await session.get(get_key)
        elif floor is not None:
            answer = json.loads(floor[get_key]) if get_key in floor else None
        else:
            answer = bare.get((scope["client"][1], get_key))
        body = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    if kind == "bare":
        return app
    if kind == "floor":
        from bench.overhead import asgi_floor_middleware

        return asgi_floor_middleware(app)
    return gs.ASGIMiddleware(app, store=make_store(kind, directory, redis_port, True), keys=KEYS)


def serve(server: str, kind: str, directory: Path, redis_port: int) -> None:
    """Serve on a free loopback port; print ``port N`` once listening; run until killed."""
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on an accepted socket only when
    # its proto says TCP, and without it uvicorn's second write of a response (the body)
    # waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    if server == "waitress":
        import logging

        import waitress  # type: ignore[import-untyped]

        # "Task queue depth is 2": a busy server's note, not an error; it would fill the output.
        logging.getLogger("waitress.queue").setLevel(logging.ERROR)
        app = wsgi_app(kind, directory, redis_port)
        print(f"port {port}", flush=True)
        waitress.serve(app, sockets=[sock], threads=CONNECTIONS, _quiet=True)
    else:
        import uvicorn

        config = uvicorn.Config(asgi_app(kind, directory, redis_port), log_level="warning",
                                access_log=False, lifespan="off", loop="asyncio", http="h11")
        print(f"port {port}", flush=True)
        uvicorn.Server(config).run(sockets=[sock])


# ---------------------------------------------------------------------------
# The load (run in the load process)


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """Read one response from a keep-alive connection: (head, body)."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buffer[:end])
            match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            length = int(match.group(1)) if match else 0
            total = end + 4 + length
            while len(buffer) < total:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buffer += chunk
            body = bytes(buffer[end + 4:total])
            del buffer[:total]
            return head, body
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk


def _client(port: int, index: int, deadline: float, warmup_until: float, with_session: bool,
            latencies: list[float], errors: list[str]) -> None:
    sock = socket.create_connection((LOOPBACK, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    # The bare app's clients send a cookie of the same size too (ignored), as a browser
    # with a session would: the server then parses the same request headers.
    cookie = b"" if with_session else b"Cookie: s=" + b"t" * 40 + b"; s.sig=" + b"g" * 27 + b"\r\n"
    n = 0
    try:
        while True:
            n += 1
            value = f"v{index}x{n}"
            for path, expected in ((f"/set/foo/{value}", value), ("/get/foo", value)):
                request = (f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n".encode()
                           + cookie + b"\r\n")
                started = time.perf_counter()
                sock.sendall(request)
                head, body = _read_response(sock, buffer)
                now = time.perf_counter()
                if not head.startswith(b"HTTP/1.1 200") or json.loads(body) != expected:
                    errors.append(f"{path}: {head.split(b' ', 2)[1]!r} {body[:80]!r}")
                    return
                if with_session and not cookie:
                    found = re.findall(rb"(?i)\r\nset-cookie: *([^;\r]+)", head)
                    if found:
                        cookie = b"Cookie: " + b"; ".join(found) + b"\r\n"
                if now > warmup_until:
                    latencies.append(now - started)
                if now > deadline:
                    return
    finally:
        sock.close()


def load(port: int, seconds: float, warmup: float, with_session: bool) -> dict[str, float]:
    """``CONNECTIONS`` clients for ``warmup + seconds``; the figures of the last ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(CONNECTIONS)]
    errors: list[str] = []
    start = time.perf_counter()
    warmup_until, deadline = start + warmup, start + warmup + seconds
    threads = [threading.Thread(target=_client, args=(port, i, deadline, warmup_until,
                                                      with_session, latencies[i], errors))
               for i in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"load on port {port}: {errors[0]}")
    every = sorted(value for values in latencies for value in values)
    elapsed = time.perf_counter() - warmup_until
    return {"requests": len(every), "rps": len(every) / elapsed,
            "p50": every[len(every) // 2] * 1e6, "p99": every[int(len(every) * 0.99)] * 1e6}


# ---------------------------------------------------------------------------
# The orchestration (the main process)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux: /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(server: str, kind: str, directory: Path, redis_port: int) -> tuple[
        subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", server, kind, str(directory), str(redis_port)],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        raise SystemExit(f"{server} {kind} did not start: {line!r}")
    return proc, int(line.split()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per server per round, 2 rounds")
    parser.add_argument("--serve", nargs=4, metavar=("SERVER", "STORE", "DIR", "REDIS_PORT"),
                        help="(internal) serve one app")
    parser.add_argument("--load", nargs=4, metavar=("PORT", "SECONDS", "WARMUP", "SESSION"),
                        help="(internal) generate the load, print the figures as JSON")
    args = parser.parse_args(argv)
    if args.serve:
        server, kind, directory, redis_port = args.serve
        serve(server, kind, Path(directory), int(redis_port))
        return 0
    if args.load:
        port, seconds, warmup, session = args.load
        print(json.dumps(load(int(port), float(seconds), float(warmup), session == "1")))
        return 0

    seconds, warmup, rounds = (1.0, 0.3, 2) if args.quick else (2.0, 0.5, 5)
    directory = Path(tempfile.mkdtemp(prefix="generic-session-bench-servers-"))
    redis_server, note = start_redis(directory)
    kinds = [kind for kind in STORES if kind != "RedisStore" or redis_server is not None]
    redis_port = redis_server.port if redis_server is not None else 0
    procs: dict[tuple[str, str], tuple[subprocess.Popen[str], int]] = {}
    try:
        for server in SERVERS:
            for kind in kinds:
                procs[server, kind] = start_server(server, kind, directory, redis_port)
        print(f"# Under real servers{' (--quick)' if args.quick else ''}\n")
        print(f"- {note}; {CONNECTIONS} keep-alive connections from a separate load process, "
              f"{seconds} s per server per round after {warmup} s of warm-up, {rounds} rounds "
              f"in rotating order, medians; load average {os.getloadavg()[0]:.2f} on "
              f"{os.cpu_count()} CPUs")
        print(f"- waitress with threads={CONNECTIONS}; uvicorn with the asyncio loop and h11\n")
        cases = list(procs)
        samples: dict[tuple[str, str], list[dict[str, float]]] = {case: [] for case in cases}
        for round_ in range(rounds):
            shift = round_ % len(cases)
            for case in cases[shift:] + cases[:shift]:
                proc, port = procs[case]
                cpu_before = cpu_seconds(proc.pid)
                result = subprocess.run(
                    [sys.executable, __file__, "--load", str(port), str(seconds), str(warmup),
                     "0" if case[1] == "bare" else "1"], capture_output=True, text=True,
                    check=False)
                cpu = cpu_seconds(proc.pid) - cpu_before
                if result.returncode != 0:
                    raise SystemExit(f"{case[0]} {case[1]}: the load failed: "
                                     f"{result.stderr.strip()[-500:]}")
                sample = json.loads(result.stdout)
                # The server's CPU over the whole run (warm-up included) per request served.
                sample["cpu"] = cpu / (sample["rps"] * (seconds + warmup)) * 1e6
                samples[case].append(sample)
        figures = {case: {name: statistics.median(sample[name] for sample in values)
                          for name in ("rps", "p50", "p99", "cpu")}
                   for case, values in samples.items()}
        print("| server | app | requests/s | p50 µs | p99 µs | server CPU µs/request | "
              "throughput lost to the session | server CPU added |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for server in SERVERS:
            bare = figures[server, "bare"]
            for kind in kinds:
                row = figures[server, kind]
                lost = added = ""
                if kind != "bare":
                    lost = f"{100 * (1 - row['rps'] / bare['rps']):.0f}%"
                    added = f"+{100 * (row['cpu'] / bare['cpu'] - 1):.0f}%"
                print(f"| {server} | {kind} | {row['rps']:,.0f} | {row['p50']:,.0f} | "
                      f"{row['p99']:,.0f} | {row['cpu']:,.0f} | {lost} | {added} |")
        print()
        for server in SERVERS:
            memory, bare = figures[server, "MemoryStore"], figures[server, "bare"]
            target(f"{server}: throughput the session costs with MemoryStore",
                   100 * (1 - memory["rps"] / bare["rps"]), 15, "%")
            print(f"       ({server}: the server's CPU per request, MemoryStore / bare: "
                  f"{memory['cpu'] / bare['cpu']:.2f}x, i.e. "
                  f"{100 * (1 - bare['cpu'] / memory['cpu']):.0f}% of a CPU-bound server's "
                  "throughput)")
            floor = figures[server, "floor"]
            print(f"       ({server}: the hand-written floor, in the same rounds, costs "
                  f"{100 * (1 - floor['rps'] / bare['rps']):.0f}% of the throughput and "
                  f"+{floor['cpu'] - bare['cpu']:.0f} µs of server CPU a request; the session "
                  f"+{memory['cpu'] - bare['cpu']:.0f} µs)")
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if redis_server is not None:
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
