"""SQLiteStore reads that do not write: a plain SELECT unless the session's renewal is due.

A renewal is due when the stored expiry is more than the slack (``min(60 s, 1% of
expire)``) off ``now + expire``, capped at the session's deadline.  The lock tests
hold a real ``BEGIN IMMEDIATE`` on a second connection in a thread, and show a read
finishing while the holder is still waiting on its event (no timing is asserted);
the expiry tests move an injected clock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from generic_session import SQLiteStore, StoreError, UnknownSession, _renew_slack
from tests.helpers import FakeClock

ID = "session:reader"
HOLD = 2.0  # seconds the other connection holds its write lock, at most


def stored_expiry(path: Path, id: str = ID) -> float:
    """The session's expires_at, read on a connection of its own."""
    db = sqlite3.connect(path)
    try:
        [(expires_at,)] = db.execute("SELECT expires_at FROM session_expiry WHERE id = ?",
                                     (id,)).fetchall()
        return float(expires_at)
    finally:
        db.close()


@contextmanager
def write_lock_held(path: Path) -> Iterator[threading.Event]:
    """Hold BEGIN IMMEDIATE on another connection, in a thread, for up to ``HOLD`` seconds.

    Yields the event the holder waits on; the block's reads happen while the lock is
    held as long as that event is still unset and the holder still waiting.  On leaving,
    the event is set; the holder must have been released by it, not by its time running out.
    """
    locked, release = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def hold() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE session_expiry SET expires_at = expires_at WHERE id = ?", (ID,))
            locked.set()
            outcome["released"] = release.wait(HOLD)
            db.execute("COMMIT")
        except BaseException as error:  # reported in the test's thread
            outcome["error"] = error
            locked.set()
        finally:
            db.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(30)
        assert "error" not in outcome, outcome
        yield release
        assert holder.is_alive(), "the holder gave up its lock before the reads finished"
    finally:
        release.set()
        holder.join()
    assert outcome == {"released": True}, outcome


def test_slack_is_the_smaller_of_a_minute_and_one_percent_of_expire() -> None:
    assert _renew_slack(0.5) == 0.005
    assert _renew_slack(600) == 6
    assert _renew_slack(6000) == 60
    assert _renew_slack(14 * 24 * 3600) == 60


def test_get_returns_while_another_connection_holds_begin_immediate(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    store = SQLiteStore(path, timeout=10)
    store.set(ID, "k", {"v": 1}, 3600)
    store.set(ID, "other", 2, 3600)
    writer = SQLiteStore(path, timeout=0.05)

    with write_lock_held(path) as release:
        got = store.get(ID, "k", 3600)
        got_all = store.get_all(ID, 3600)
        missing = store.get(ID, "missing", 3600), store.get("session:unknown", "k", 3600)
        # Still inside: the holder has not been released and still holds the lock, so a
        # write, which takes the lock, cannot get it.
        assert not release.is_set()
        with pytest.raises(StoreError, match=r"^SQLiteStore at .*: set failed: database is "
                           r"locked$"):
            writer.set(ID, "k", 3, 3600)

    assert got == {"v": 1}
    assert got_all == {"k": {"v": 1}, "other": 2}
    assert missing == (None, None)
    assert store.get(ID, "k", 3600) == {"v": 1}  # the refused write changed nothing


def test_live_get_within_the_deadline_cap_is_a_plain_read(tmp_path: Path) -> None:
    """A session renewed up to its deadline has nothing left to renew: reads stay reads."""
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    store = SQLiteStore(path, timeout=0.05, clock=clock)
    store.create(ID, 3600, lifetime=600)  # expires at its deadline, 600 s from now
    store.set(ID, "k", 1, 3600, live=True)
    clock.advance(300)  # far past the slack, but the expiry is already at the deadline

    with write_lock_held(path):
        assert store.get(ID, "k", 3600, live=True) == 1
        assert store.get_all(ID, 3600, live=True) == {"k": 1}

    assert stored_expiry(path) == clock.now - 300 + 600


def test_a_read_whose_renewal_is_due_renews_and_so_takes_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    expire = 1000.0  # slack: 10 s
    store = SQLiteStore(path, timeout=0.05, clock=clock)
    store.set(ID, "k", 1, expire)
    clock.advance(_renew_slack(expire) + 1)

    # A due renewal is a write: under the other connection's lock it waits, then fails.
    with write_lock_held(path), pytest.raises(
            StoreError, match=r"^SQLiteStore at .*: get failed: database is locked$"):
        store.get(ID, "k", expire)

    assert store.get(ID, "k", expire) == 1
    assert stored_expiry(path) == clock.now + expire  # renewed from this read
    clock.advance(expire - 1)  # idle for less than expire since that read: alive
    assert store.get_all(ID, expire) == {"k": 1}
    assert stored_expiry(path) == clock.now + expire
    clock.advance(expire)  # idle for expire: ended
    assert store.get(ID, "k", expire) is None
    assert store.get_all(ID, expire) == {}


def test_idle_timeout_holds_within_the_slack_when_reads_do_not_renew(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    expire = 1000.0
    slack = _renew_slack(expire)
    store = SQLiteStore(path, clock=clock)
    store.set(ID, "k", 1, expire)
    written = clock.now
    clock.advance(slack / 2)  # renewal not due: a plain read, the expiry stays
    assert store.get(ID, "k", expire) == 1
    assert store.get_all(ID, expire) == {"k": 1}
    assert stored_expiry(path) == written + expire

    # Idle since the last read for expire minus the slack: still alive ...
    clock.advance(expire - slack - 0.001)
    assert store.get_all(ID, expire) == {"k": 1}
    # ... which renewed it (due by now); idle for expire from there: ended.
    assert stored_expiry(path) == clock.now + expire
    clock.advance(expire)
    assert store.get(ID, "k", expire) is None


def test_a_read_at_the_end_of_the_slack_ends_within_it(tmp_path: Path) -> None:
    """Unrenewed reads never stretch the session: it ends ``expire`` after the last write
    that renewed it, which is at most the slack before ``expire`` after the last read."""
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    expire = 1000.0
    slack = _renew_slack(expire)
    store = SQLiteStore(path, clock=clock)
    store.set(ID, "k", 1, expire)
    clock.advance(slack * 0.99)  # the end of the slack: not yet due
    assert store.get(ID, "k", expire) == 1
    assert stored_expiry(path) == clock.now - slack * 0.99 + expire
    clock.advance(expire - slack * 0.99)  # idle for less than expire since that read

    assert store.get(ID, "k", expire) is None


def test_a_shorter_expire_is_due_at_once(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    store = SQLiteStore(path, clock=clock)
    store.set(ID, "k", 1, 3600)

    assert store.get(ID, "k", 10) == 1

    assert stored_expiry(path) == clock.now + 10
    clock.advance(10)
    assert store.get(ID, "k", 3600) is None


# -- writes renew under the same rule -------------------------------------------------


def test_a_live_write_whose_renewal_is_not_due_writes_no_expiry(tmp_path: Path) -> None:
    """set, delete, incr and extend of a live session leave its expiry row alone while the
    renewal is not due (the value's row is written all the same)."""
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    expire = 1000.0  # slack: 10 s
    store = SQLiteStore(path, clock=clock)
    store.create(ID, expire)
    created = clock.now
    clock.advance(_renew_slack(expire) / 2)

    store.set(ID, "k", 1, expire, live=True)
    store.set(ID, "gone", 2, expire, live=True)
    store.delete(ID, "gone", expire, live=True)
    assert store.incr(ID, "n", 5, expire, live=True) == 5
    store.extend(ID, expire, live=True)

    assert stored_expiry(path) == created + expire
    assert store.get_all(ID, expire, live=True) == {"k": 1, "n": 5}


def test_a_live_write_whose_renewal_is_due_renews(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    expire = 1000.0
    store = SQLiteStore(path, clock=clock)
    store.create(ID, expire)

    for write in (lambda: store.set(ID, "k", 1, expire, live=True),
                  lambda: store.delete(ID, "k", expire, live=True),
                  lambda: store.incr(ID, "n", 1, expire, live=True),
                  lambda: store.extend(ID, expire, live=True)):
        clock.advance(_renew_slack(expire) + 1)
        write()
        assert stored_expiry(path) == clock.now + expire

    store.set(ID, "k", 2, 10, live=True)  # a shorter expire is due at once
    assert stored_expiry(path) == clock.now + 10
    clock.advance(10)
    assert store.get(ID, "k", expire) is None


def test_unrenewed_writes_never_stretch_the_session(tmp_path: Path) -> None:
    """A session written at the end of the slack still ends ``expire`` after the write that
    renewed it: within the slack of ``expire`` after its last write."""
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    expire = 1000.0
    slack = _renew_slack(expire)
    store = SQLiteStore(path, clock=clock)
    store.create(ID, expire)
    clock.advance(slack * 0.99)
    store.set(ID, "k", 1, expire, live=True)  # not due: no renewal
    clock.advance(expire - slack * 0.99)  # idle for less than expire since that write

    assert store.get(ID, "k", expire) is None
    with pytest.raises(UnknownSession, match=r"^SQLiteStore at .*: set\(live=True\) found no "
                       r"live session; nothing was changed$"):
        store.set(ID, "k", 2, expire, live=True)


def test_a_live_write_on_a_session_that_is_not_live_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    store = SQLiteStore(path, clock=clock)
    store.set(ID, "plain", 1, 3600)  # a plain session (Node's set): never created live

    for write in (lambda: store.set(ID, "k", 1, 3600, live=True),
                  lambda: store.delete(ID, "plain", 3600, live=True),
                  lambda: store.incr(ID, "n", 1, 3600, live=True),
                  lambda: store.extend(ID, 3600, live=True)):
        with pytest.raises(UnknownSession):
            write()

    assert store.get_all(ID, 3600) == {"plain": 1}


def test_a_plain_write_renews_only_when_due_and_never_revives(tmp_path: Path) -> None:
    """Node's set (no live flag) under the same rule; an expired session, not swept yet,
    still comes back empty rather than with its old data."""
    path = tmp_path / "sessions.db"
    clock = FakeClock()
    expire = 1000.0
    store = SQLiteStore(path, clock=clock)
    store.set(ID, "k", 1, expire)
    written = clock.now
    clock.advance(_renew_slack(expire) / 2)
    store.set(ID, "k", 2, expire)
    assert stored_expiry(path) == written + expire  # not due: the value's row only

    clock.advance(_renew_slack(expire))
    store.set(ID, "k", 3, expire)
    assert stored_expiry(path) == clock.now + expire  # due: renewed

    clock.advance(expire)  # expired, not swept
    store.set(ID, "fresh", 4, expire)
    assert store.get_all(ID, expire) == {"fresh": 4}
    assert stored_expiry(path) == clock.now + expire
