"""The load: browsers with several tabs each, in several client processes, against the app.

Each client process runs ``users`` browsers of ``tabs`` tabs, one thread and one
keep-alive connection per tab, all tabs of a browser sharing its cookie jar (so its
session).  Until the deadline each tab picks ``set``, ``get``, ``delete``, ``incr``,
``all``, ``regenerate`` or ``destroy``, and the browser keeps a model of what its
session must hold: what was acknowledged (a 200) is certain, what failed (a 503, a
transport error) is uncertain.  The tabs of a browser run their requests
concurrently; a request that changes the session's id (``destroy``,
``regenerate``, and the first one, which makes the session) runs alone among its
browser's tabs, so that the model knows which session every acknowledged write
went to.  (What a write racing a ``destroy`` does, the tests check: it gets 400.)

Invariants, checked as the load runs and at the end on every browser:

- every acknowledged write reads back (its tab's later ``get`` and the final
  ``all``) unless that browser later deleted it or ended its session;
- no browser ever sees a value of another (each value starts with its browser's id);
- the shared counter equals the acknowledged increments, and no two increments
  of one session returned the same count;
- every response is a 200, except what the caller's fault windows allow (a 503).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stress.common import Browser, Invariants, Tab

OPERATIONS = ["set", "get", "delete", "incr", "all", "regenerate", "destroy"]
WEIGHTS = [34, 30, 10, 15, 5, 3, 3]
KEYS_PER_TAB = 4
COUNTER = "hits"


class _SharedOrAlone:
    """A readers-writer lock: many tabs at once, or one tab alone.  A tab waiting to be
    alone goes first (new shared requests wait behind it), or the other tabs of a busy
    browser would starve it for seconds."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0  # tabs waiting to be alone

    def acquire(self, alone: bool) -> None:
        with self._condition:
            if alone:
                self._waiting += 1
                while self._writer or self._readers:
                    self._condition.wait()
                self._waiting -= 1
                self._writer = True
            else:
                while self._writer or self._waiting:
                    self._condition.wait()
                self._readers += 1

    def release(self, alone: bool) -> None:
        with self._condition:
            if alone:
                self._writer = False
            else:
                self._readers -= 1
            self._condition.notify_all()


@dataclass
class _Model:
    """What one browser's session must hold."""

    uid: str
    data: dict[str, str | None] = field(default_factory=dict)  # None: certainly absent
    uncertain: set[str] = field(default_factory=set)
    counter: int = 0
    counter_unacked: int = 0
    counts: set[int] = field(default_factory=set)
    unknown: bool = False  # a destroy or regenerate failed: what does the session hold?
    #: The token the acknowledged writes went to (None: no session yet).
    token: str | None = None
    #: A destroy or regenerate failed, so it may or may not have happened (Redis can
    #: die after doing it, before answering): the next request, run alone, tells
    #: whether the session is still the same.
    suspect: bool = False

    def reset(self, token: str | None = None) -> None:
        self.data.clear()
        self.uncertain.clear()
        self.counter = self.counter_unacked = 0
        self.counts.clear()
        self.unknown = self.suspect = False
        self.token = token


@dataclass
class ClientResult:
    """What one client process sends back."""

    latencies: list[float] = field(default_factory=list)
    operations: Counter[str] = field(default_factory=Counter)
    #: (wall-clock time, kind, latency) of every response that was not a 200, and of
    #: every transport error.
    errors: list[tuple[float, str, float]] = field(default_factory=list)
    broken: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    values: set[str] = field(default_factory=set)


class _User:
    def __init__(self, uid: str, host: str, port: int, tabs: int) -> None:
        self.browser = Browser()
        self.model = _Model(uid)
        self.lock = _SharedOrAlone()
        self.model_lock = threading.Lock()
        self.tabs = [Tab(self.browser, host, port) for _ in range(tabs)]
        self.seq = 0


def _check_value(inv: Invariants, model: _Model, value: Any, where: str) -> None:
    if isinstance(value, str):
        inv.check(value.startswith(model.uid + ":"), "another client's data seen",
                  f"{where}: a value of another browser")


def _run_tab(user: _User, index: int, deadline: float, seed: int, inv: Invariants,
             result: ClientResult, lock: threading.Lock) -> None:
    rng = random.Random(seed)
    tab = user.tabs[index]
    model = user.model
    latencies: list[float] = []
    errors: list[tuple[float, str, float]] = []
    operations: Counter[str] = Counter()
    values: set[str] = set()
    while time.time() < deadline:
        op = rng.choices(OPERATIONS, WEIGHTS)[0]
        key = f"t{index}k{rng.randrange(KEYS_PER_TAB)}"
        alone = op in ("destroy", "regenerate") or model.suspect
        while True:  # with no cookie yet this request makes the session: alone
            user.lock.acquire(alone)
            if alone or user.browser.jar:
                break
            user.lock.release(alone)
            alone = True
        try:
            if op == "set":
                with user.model_lock:
                    user.seq += 1
                    value = f"{model.uid}:{user.seq}"
                values.add(value)
                path = f"/set?k={key}&v={value}"
            elif op in ("get", "delete"):
                path = f"/{op}?k={key}"
            elif op == "incr":
                path = f"/incr?k={COUNTER}"
            else:
                path = f"/{op}"
            before = dict(user.browser.jar)
            started = time.perf_counter()
            try:
                status, payload, _ = tab.request(path)
            except Exception as error:  # refused, reset, timed out: not acknowledged
                status, payload = 0, None
                kind = type(error).__name__
            else:
                kind = str(status)
            latency = time.perf_counter() - started
            latencies.append(latency)
            operations[op] += 1
            with user.model_lock:
                if status != 200:
                    errors.append((time.time(), kind, latency))
                    if op == "set" or op == "delete":
                        model.uncertain.add(key)
                    elif op == "incr":
                        model.counter_unacked += 1
                    elif op in ("destroy", "regenerate"):
                        model.unknown = model.suspect = True
                    continue
                token = user.browser.jar.get("s")
                if op not in ("destroy", "regenerate"):
                    if model.token is None:
                        model.token = token  # the session this browser's writes go to now
                    elif token != model.token:
                        # Only an ended session is replaced by a fresh one: after a failed
                        # destroy or regenerate that may have happened; otherwise the
                        # store lost a live session.
                        inv.check(model.suspect, "a live session was replaced by a fresh one",
                                  f"{op}: a new token with no logout")
                        model.reset(token)
                    model.suspect = False
                if op == "set":
                    model.data[key] = value
                    model.uncertain.discard(key)
                elif op == "delete":
                    model.data[key] = None
                    model.uncertain.discard(key)
                elif op == "get":
                    got = payload["v"]
                    _check_value(inv, model, got, "get")
                    if not model.unknown and key not in model.uncertain:
                        inv.check(got == model.data.get(key), "acknowledged write not read back",
                                  f"get {key}: got {got!r}, acknowledged {model.data.get(key)!r}")
                elif op == "incr":
                    n = payload["n"]
                    inv.check(n not in model.counts, "two increments returned one count",
                              f"count {n} twice")
                    model.counts.add(n)
                    model.counter += 1
                elif op == "all":
                    for got in payload["all"].values():
                        _check_value(inv, model, got, "all")
                elif op == "destroy":
                    inv.check(not user.browser.jar.get("s"), "destroy left a cookie",
                              "the session cookie was not expired")
                    model.reset()
                elif op == "regenerate":
                    inv.check(token != before.get("s"), "regenerate kept the token",
                              "same token after regenerate")
                    model.token, model.suspect = token, False
        finally:
            user.lock.release(alone)
    with lock:
        result.latencies.extend(latencies)
        result.errors.extend(errors)
        result.operations.update(operations)
        result.values.update(values)


def _verify(user: _User, inv: Invariants) -> None:
    """The final read of a browser's whole session against its model."""
    model = user.model
    try:
        status, payload, _ = user.tabs[0].request("/all")
    except Exception as error:
        inv.check(False, "final read failed", type(error).__name__)
        return
    if not inv.check(status == 200, "final read failed", f"status {status}"):
        return
    data: dict[str, Any] = payload["all"]
    for got in data.values():
        _check_value(inv, model, got, "final all")
    if model.unknown:
        return
    for key, value in model.data.items():
        if key not in model.uncertain:
            inv.check(data.get(key) == value, "acknowledged write lost",
                      f"{key}: final {data.get(key)!r}, acknowledged {value!r}")
    for key in data:
        if key != COUNTER:
            inv.check(key in model.data or key in model.uncertain, "unknown key in session",
                      key)
    count = data.get(COUNTER, 0)
    inv.check(model.counter <= count <= model.counter + model.counter_unacked,
              "counter differs from acknowledged increments",
              f"counter {count}, acknowledged {model.counter} (+{model.counter_unacked} failed)")


def run_client(process: int, host: str, port: int, users: int, tabs: int, start: float,
               seconds: float) -> ClientResult:
    """One client process: ``users`` browsers x ``tabs`` tabs from ``start`` for ``seconds``."""
    inv = Invariants(f"client {process}")
    result = ClientResult()
    lock = threading.Lock()
    people = [_User(f"p{process}u{u}", host, port, tabs) for u in range(users)]
    threads = [
        threading.Thread(target=_run_tab,
                         args=(user, t, start + seconds, hash((process, u, t)), inv, result,
                               lock))
        for u, user in enumerate(people) for t in range(tabs)
    ]
    # Every tab connects now, while the server is idle, as an open browser already is:
    # not all at once at the start, when waitress (one accept per turn of its main loop,
    # 30-100 ms a turn under this load) takes seconds to accept the last of 200, and
    # those first requests would be timed with that wait.
    for user in people:
        for tab in user.tabs:
            tab.connect()
    time.sleep(max(0.0, start - time.time()))  # every process starts its load together
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for user in people:
        _verify(user, inv)
        for tab in user.tabs:
            tab.close()
        result.tokens.update(user.browser.tokens)
    result.broken, result.examples = inv.broken, inv.examples
    return result


@dataclass
class LoadResult:
    """The merged figures of every client process."""

    seconds: float
    clients: int
    latencies: list[float]
    operations: Counter[str]
    errors: list[tuple[float, str, float]]
    tokens: set[str]
    values: set[str]

    @property
    def requests(self) -> int:
        return len(self.latencies)


def run_load(host: str, port: int, *, processes: int, users: int, tabs: int, seconds: float,
             inv: Invariants) -> LoadResult:
    """Run the load from ``processes`` client processes; merge their results into ``inv``."""
    start = time.time() + 1.0  # time for every process to fork and make its threads
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [pool.submit(run_client, p, host, port, users, tabs, start, seconds)
                   for p in range(processes)]
        results = [future.result() for future in futures]
    merged = LoadResult(seconds, processes * users * tabs, [], Counter(), [], set(), set())
    for result in results:
        merged.latencies.extend(result.latencies)
        merged.operations.update(result.operations)
        merged.errors.extend(result.errors)
        merged.tokens.update(result.tokens)
        merged.values.update(result.values)
        inv.merge(result.broken, result.examples)
    return merged


def check_errors(load: LoadResult, inv: Invariants,
                 fault_windows: Sequence[tuple[float, float]] = ()) -> Counter[str]:
    """Count the errors by kind; any that is not a 503 within a fault window breaks."""
    kinds: Counter[str] = Counter()
    for when, kind, _ in load.errors:
        kinds[kind] += 1
        allowed = kind == "503" and any(a <= when <= b for a, b in fault_windows)
        inv.check(allowed, f"unexpected error {kind}",
                  "outside any injected fault" if kind == "503" else "status or transport")
    return kinds
