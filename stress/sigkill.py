"""Part 2, SIGKILL durability: the app on one SQLite file, killed with SIGKILL in the middle
of a write load, restarted on the same file, several times.

Writer threads (one browser each) write a fresh key per request and increment a
counter; each round lets them collect acknowledgements, then kills the server
with SIGKILL (no clean-up, as a crash or the OOM killer) while their requests are
in flight, and restarts it on the same file.  Afterwards every write acknowledged
before any kill must read back, each browser must still have its session (the
same token: strict mode adopts it only if the store kept it live), its counter
must lie between the acknowledged and the attempted increments, and
``PRAGMA integrity_check`` must say ``ok``.

    python stress/sigkill.py [--quick]
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stress.common import AppServer, Browser, Invariants, Tab, arguments, workdir

WRITERS = 8


class Writer:
    """One browser writing a new key per request (and incrementing ``n``) until stopped."""

    def __init__(self, index: int, target: dict[str, int], stop: threading.Event,
                 acked: threading.Semaphore, inv: Invariants) -> None:
        self.uid = f"w{index}"
        self.browser = Browser()
        self.tab = Tab(self.browser, "127.0.0.1", 0, timeout=10)
        self.target, self.stop, self.acked, self.inv = target, stop, acked, inv
        self.writes: dict[str, str] = {}  # acknowledged
        self.incr_acked = self.incr_tried = 0
        self.token: str | None = None
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            incr = n % 4 == 0
            key, value = f"k{n}", f"{self.uid}:{n}"
            if self.tab.port != self.target["port"]:
                self.tab.close()
                self.tab.port = self.target["port"]
            self.incr_tried += incr
            try:
                status, _, _ = self.tab.request("/incr?k=n" if incr else f"/set?k={key}&v={value}")
            except Exception:  # the server was killed: not acknowledged; wait for the next one
                self.target["changed"].wait(0.05)  # type: ignore[attr-defined]
                continue
            if not self.inv.check(status == 200, "non-200 from a live server", str(status)):
                continue
            token = self.browser.jar.get("s")
            if self.token is None:
                self.token = token
            self.inv.check(token == self.token, "session lost after a kill",
                           "the store no longer knew the session: a fresh token was issued")
            if incr:
                self.incr_acked += 1
            else:
                self.writes[key] = value
            self.acked.release()


def main() -> None:
    args = arguments(__doc__.split("\n")[0])
    rounds = 2 if args.quick else 10
    per_round = 150 if args.quick else 400  # acknowledgements to collect before each kill
    inv = Invariants("sigkill")
    with workdir("sigkill") as tmp:
        root = Path(tmp)
        db = root / "sessions.db"
        spec = f"sqlite:{db}"
        log = root / "server.log"
        target: dict[str, object] = {"port": 0, "changed": threading.Event()}
        stop = threading.Event()
        acked = threading.Semaphore(0)
        writers = [Writer(i, target, stop, acked, inv) for i in range(WRITERS)]  # type: ignore[arg-type]
        killed_in_flight = 0
        app = AppServer(spec, "waitress", log)
        target["port"] = app.port
        for writer in writers:
            writer.thread.start()
        started = time.perf_counter()
        try:
            for _ in range(rounds):
                for _ in range(per_round):  # let the load run: wait for acknowledgements
                    if not acked.acquire(timeout=30):
                        inv.check(False, "load stalled", "no acknowledgement within 30 s")
                        break
                app.kill()
                killed_in_flight += 1
                app = AppServer(spec, "waitress", log)
                target["port"] = app.port
            stop.set()
            for writer in writers:
                writer.thread.join()
            reader = Tab(Browser(), app.host, app.port)
            lost = 0
            acked_writes = 0
            for writer in writers:
                reader.browser.jar = dict(writer.browser.jar)
                status, payload, _ = reader.request("/all")
                if not inv.check(status == 200, "final read failed", str(status)):
                    continue
                data = payload["all"]
                acked_writes += len(writer.writes)
                for key, value in writer.writes.items():
                    if not inv.check(data.get(key) == value, "acknowledged write lost", key):
                        lost += 1
                count = data.get("n", 0)
                inv.check(writer.incr_acked <= count <= writer.incr_tried,
                          "counter outside [acknowledged, attempted]",
                          f"{count} not in [{writer.incr_acked}, {writer.incr_tried}]")
            reader.close()
        finally:
            stop.set()
            app.stop()
        elapsed = time.perf_counter() - started
        with sqlite3.connect(db) as connection:
            integrity = connection.execute("PRAGMA integrity_check").fetchall()
        inv.check(integrity == [("ok",)], "integrity_check not ok", repr(integrity[:3]))
        print(f"sigkill: {killed_in_flight} SIGKILLs mid-load in {elapsed:.1f} s, {WRITERS} "
              f"writers; {acked_writes} acknowledged writes, {lost} lost; "
              f"PRAGMA integrity_check: {integrity[0][0]}")
    inv.exit()


if __name__ == "__main__":
    main()
