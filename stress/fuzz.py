"""Part 5, fuzzing at scale: hostile ``Cookie`` headers through the WSGI filter on every
store and its error paths, and hostile digests through the signature check.

The filter (``generic_session.middleware``) wraps a small app that reads the
session's ``owner`` and, for one request in ten, writes to the session.  Stores:
memory, SQLite, a real Redis, a Redis nobody listens on (refused), and an SQLite
file another connection holds locked (busy).  Each working store holds a few live
sessions, made through the filter, whose cookies the inputs are built from:
random latin-1 text, pairs of names and values (real tokens and signatures,
mismatched ones, mutated, quoted, truncated, foreign), a real cookie with one
character flipped, two sessions' cookies mixed, and the real cookie itself (the
check that adoption works at all).  Hypothesis generates from the same pieces;
beside it a plain ``random`` loop makes the bulk, since Hypothesis spends about a
millisecond per example.  Invariants for every input:

- no exception escapes, no 500: a 200, or a 503 from a failing store;
- no forged session adopted: the app sees an owner only when that session's own
  token and signature are both in the header, and a real cookie is adopted;
- no two sessions' data mixed: the owner seen is the owner of that token;
- every response header is latin-1, without control characters;
- ``Keygrip.index`` never raises, and finds a digest only for its own data.

    python stress/fuzz.py [--quick]
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import random
import sqlite3
import string
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import generic_session as gs
from stress.app import KEYS
from stress.common import CONTROL, Invariants, arguments, redis_server, workdir
from tests.helpers import dead_redis_store

B64 = string.ascii_letters + string.digits + "-_"
LATIN1 = "".join(map(chr, range(256)))
NAMES = ["s", "s.sig", "S", "s.sig ", " s", "s.SIG", "s.sig.sig", "t", "", "s\x00"]


def fuzz_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Reads the owner; ``/login?NAME`` makes the session NAME's, ``/w`` writes."""
    session: gs.GenericSession = environ[gs.ENVIRON_KEY]
    path = environ["PATH_INFO"]
    if path == "/login":
        session.set("owner", environ["QUERY_STRING"])
    owner = session.get("owner")
    if path == "/w":
        session.set("seen", True)
    body = json.dumps({"owner": owner}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def call(app: gs.WSGIApp, header: str, path: str = "/", query: str = "") -> tuple[str, list[Any],
                                                                                bytes]:
    """One request straight into the WSGI app: (status, headers, body)."""
    got: list[Any] = []

    def start_response(status: str, headers: list[Any], exc_info: Any = None) -> None:
        got[:] = [status, headers]

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
               "HTTP_COOKIE": header, "wsgi.url_scheme": "http", "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "80", "wsgi.errors": _NullErrors()}
    body = b"".join(app(environ, start_response))
    return got[0], got[1], body


class _NullErrors:
    """``wsgi.errors`` that keeps the count of lines, not the lines (a million 503s)."""

    lines = 0

    def write(self, text: str) -> None:
        _NullErrors.lines += text.count("\n")

    def flush(self) -> None:
        pass


class Target:
    """One store behind the filter, with its live sessions: [(token, signature, owner)]."""

    def __init__(self, name: str, store: Any, failing: bool, *,
                 keys: list[str] | None = KEYS, strict: bool = True) -> None:
        self.name = name
        self.failing = failing
        self.app = gs.middleware(store, keys=keys, strict=strict)(fuzz_app)
        self.sessions: list[tuple[str, str, str]] = []
        self.inputs = 0
        self.statuses: Counter[str] = Counter()

    def login(self, owner: str) -> None:
        _, headers, _ = call(self.app, "", "/login", owner)
        cookies = dict(value.split(";")[0].split("=", 1) for name, value in headers
                       if name == "Set-Cookie")
        self.sessions.append((cookies["s"], cookies["s.sig"], owner))


class Fuzzer:
    def __init__(self, targets: list[Target], inv: Invariants, seed: int) -> None:
        self.targets = targets
        self.inv = inv
        self.rng = random.Random(seed)
        self.sessions = [s for t in targets for s in t.sessions]
        self.owners = {token: owner for token, _, owner in self.sessions}
        self.adopted = 0

    # -- inputs -------------------------------------------------------------------------

    def value(self) -> str:
        rng = self.rng
        token, sig, _ = rng.choice(self.sessions)
        kind = rng.randrange(9)
        if kind == 0:
            return token
        if kind == 1:
            return sig
        if kind == 2:
            return self.mutate(token)
        if kind == 3:
            return "".join(rng.choices(B64, k=rng.choice([40, 27, 39, 41, 0, 80])))
        if kind == 4:
            return '"' + token + '"'
        if kind == 5:
            return "".join(rng.choices(LATIN1, k=rng.randrange(30)))
        if kind == 6:
            return token[: rng.randrange(40)]
        if kind == 7:
            return gs.Keygrip(["another key"]).sign(f"s={token}")
        return sig + "=" * rng.randrange(3)

    def mutate(self, text: str) -> str:
        rng = self.rng
        if not text:
            return rng.choice(LATIN1)
        i = rng.randrange(len(text))
        how = rng.randrange(3)
        if how == 0:
            return text[:i] + rng.choice(LATIN1) + text[i + 1:]
        if how == 1:
            return text[:i] + rng.choice(LATIN1) + text[i:]
        return text[:i] + text[i + 1:]

    def header(self) -> str:
        rng = self.rng
        kind = rng.randrange(20)
        if kind == 0:  # the real cookie: must be adopted
            token, sig, _ = rng.choice(self.sessions)
            return f"s={token}; s.sig={sig}"
        if kind < 4:
            return "".join(rng.choices(LATIN1, k=rng.randrange(200)))
        if kind < 8:
            token, sig, _ = rng.choice(self.sessions)
            return self.mutate(f"s={token}; s.sig={sig}")
        if kind < 11:  # two sessions' cookies, mixed
            (t1, s1, _), (t2, s2, _) = rng.choice(self.sessions), rng.choice(self.sessions)
            parts = [f"s={t1}", f"s.sig={s1}", f"s={t2}", f"s.sig={s2}"]
            rng.shuffle(parts)
            return "; ".join(parts[: rng.randrange(1, 5)])
        pairs = [(rng.choice(NAMES), self.value()) for _ in range(rng.randrange(1, 5))]
        separator = rng.choice(["; ", ";", ", ", " ;", ";;"])
        return separator.join(f"{n}={v}" if rng.random() < 0.9 else n for n, v in pairs)

    # -- the check ------------------------------------------------------------------------

    def check(self, target: Target, header: str, write: bool) -> None:
        inv = self.inv
        target.inputs += 1
        try:
            status, headers, body = call(target.app, header, "/w" if write else "/")
        except Exception as error:
            inv.check(False, "an exception escaped the filter",
                      f"{target.name}: {type(error).__name__}")
            return
        code = status.split()[0]
        target.statuses[code] += 1
        allowed = {"200", "503"} if target.failing else {"200"}
        inv.check(code in allowed, f"status {code}", f"{target.name}: {header[:60]!r}")
        for name, value in headers:
            try:
                (name + value).encode("latin-1")
            except UnicodeEncodeError:
                inv.check(False, "a header is not latin-1", f"{target.name}: {name}")
            inv.check(not CONTROL.search(name + value), "a control character in a header",
                      f"{target.name}: {name}")
        if code != "200":
            return
        owner = json.loads(body)["owner"]
        if owner is None:
            for token, sig, _ in target.sessions:
                if header == f"s={token}; s.sig={sig}":
                    inv.check(False, "a real cookie was not adopted", target.name)
            return
        self.adopted += 1
        genuine = [token for token, sig, _ in target.sessions
                   if token in header and sig in header]
        if inv.check(bool(genuine), "a forged session adopted",
                     f"{target.name}: {header[:80]!r}"):
            inv.check(any(self.owners[token] == owner for token in genuine),
                      "two sessions' data mixed", target.name)

    def keygrip(self, keygrip: gs.Keygrip) -> None:
        data = "".join(self.rng.choices(LATIN1, k=self.rng.randrange(60)))
        digest = self.value() if self.rng.random() < 0.5 else keygrip.sign(data)
        try:
            found = keygrip.index(data, digest)
        except Exception as error:
            self.inv.check(False, "Keygrip.index raised", type(error).__name__)
            return
        self.inv.check((found == 0) == (digest == keygrip.sign(data)),
                       "Keygrip.index wrong", repr(data[:20]))


def hypothesis_run(fuzzer: Fuzzer, examples: int) -> int:
    """Hypothesis over the same pieces; returns how many examples it ran."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    pieces = st.sampled_from([p for t, s, _ in fuzzer.sessions for p in (t, s)])
    values = st.one_of(pieces, st.text(alphabet=st.characters(max_codepoint=255)),
                       pieces.map(fuzzer.mutate))
    pair = st.tuples(st.sampled_from(NAMES) | st.text(max_size=8), values)
    headers = st.one_of(
        st.lists(pair, max_size=5).flatmap(lambda pairs: st.sampled_from(["; ", ";", ","]).map(
            lambda sep: sep.join(f"{n}={v}" for n, v in pairs))),
        st.text(alphabet=st.characters(max_codepoint=255), max_size=300))
    count = [0]

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(header=headers, target=st.sampled_from(fuzzer.targets), write=st.booleans())
    def run(header: str, target: Target, write: bool) -> None:
        count[0] += 1
        fuzzer.check(target, header, write)

    run()
    return count[0]


@dataclass
class WorkerResult:
    """What one fuzzing process counted."""

    hypothesis: int = 0
    hypothesis_seconds: float = 0.0
    loop: int = 0
    keygrip: int = 0
    adopted: int = 0
    inputs: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    broken: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)


def worker(index: int, root: Path, redis_port: int, quota: int, examples: int,
           budget: float) -> WorkerResult:
    """One fuzzing process: its own stores (a shared Redis), ``examples`` Hypothesis
    examples, then the random loop up to ``quota`` inputs or ``budget`` seconds."""
    import redis as redis_py

    inv = Invariants(f"fuzz {index}")
    result = WorkerResult()
    locked_path = root / f"locked{index}.db"
    # Opened, then held locked by another connection: every operation is "busy".
    locked = gs.SQLiteStore(locked_path, timeout=0.001)
    locker = sqlite3.connect(locked_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    client = redis_py.Redis(host="127.0.0.1", port=redis_port, socket_timeout=2)
    targets = [Target("memory", gs.MemoryStore(), False),
               Target("sqlite", gs.SQLiteStore(root / f"s{index}.db"), False),
               Target("redis", gs.RedisStore(client), False),
               Target("dead redis", dead_redis_store(), True),
               Target("locked sqlite", locked, True)]
    try:
        for target in targets[:3]:
            for i in range(4):
                target.login(f"{target.name}-owner-{index}-{i}")
        fuzzer = Fuzzer(targets, inv, seed=13 + index)
        started = time.perf_counter()
        if examples:
            result.hypothesis = hypothesis_run(fuzzer, examples)
        result.hypothesis_seconds = time.perf_counter() - started
        keygrip = gs.Keygrip(KEYS)
        rng = fuzzer.rng
        # The bulk on the fast store; every store, its error paths too, gets its share.
        weights = [90, 4, 2.5, 3, 0.5]
        deadline = started + budget
        while result.loop + result.hypothesis < quota and time.perf_counter() < deadline:
            for _ in range(1000):
                target = rng.choices(targets, weights)[0]
                fuzzer.check(target, fuzzer.header(), rng.random() < 0.1)
                if result.loop % 10 == 0:
                    fuzzer.keygrip(keygrip)
                    result.keygrip += 1
                result.loop += 1
    finally:
        locker.close()
        client.close()
    result.adopted = fuzzer.adopted
    result.inputs = {t.name: t.inputs for t in targets}
    result.statuses = {t.name: t.statuses for t in targets}
    result.broken, result.examples = inv.broken, inv.examples
    return result


def main() -> None:
    args = arguments(__doc__.split("\n")[0])
    total = 30_000 if args.quick else 1_050_000
    examples = 500 if args.quick else 10_000
    budget = 30.0 if args.quick else 150.0  # seconds: the loop stops there, whatever it counted
    processes = 2  # the machine's cores
    inv = Invariants("fuzz")
    with workdir("fuzz") as tmp:
        root = Path(tmp)
        redis = redis_server(root)
        try:
            started = time.perf_counter()
            context = multiprocessing.get_context("fork")
            with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
                futures = [pool.submit(worker, i, root, redis.port, total // processes,
                                       examples if i == 0 else 0, budget)
                           for i in range(processes)]
                results = [future.result() for future in futures]
            seconds = time.perf_counter() - started
        finally:
            redis.stop()
    inputs: Counter[str] = Counter()
    statuses: dict[str, Counter[str]] = {}
    for result in results:
        inv.merge(result.broken, result.examples)
        inputs.update(result.inputs)
        for name, counts in result.statuses.items():
            statuses.setdefault(name, Counter()).update(counts)
    hypothesis = sum(r.hypothesis for r in results)
    loop = sum(r.loop for r in results)
    adopted = sum(r.adopted for r in results)
    count = hypothesis + loop
    if not args.quick:
        inv.check(count >= 1_000_000, "fewer than a million inputs in the time bound",
                  f"{count} in {seconds:.0f} s")
    inv.check(adopted > 0, "no real cookie ever adopted", "the check could not fail")
    print(f"fuzz: {count:,} cookie headers in {seconds:.0f} s over {processes} processes "
          f"({hypothesis:,} from Hypothesis in {results[0].hypothesis_seconds:.0f} s, "
          f"{loop:,} from the random loop), {sum(r.keygrip for r in results):,} digests "
          f"through Keygrip.index; {adopted:,} real sessions adopted")
    for name, n in inputs.items():
        figures = ", ".join(f"{code} x{k:,}" for code, k in sorted(statuses[name].items()))
        print(f"  {name:13} {n:9,} inputs: {figures}")
    inv.exit()


if __name__ == "__main__":
    main()
