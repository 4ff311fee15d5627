"""Instructions per request of the filter, the ASGI middleware and the hand-written floor,
counted by valgrind's callgrind: the same figure in every run, however busy the machine.

Why: this machine is shared, and the timings of ``bench/overhead.py`` move by 10 to
30% from one run to the next, more than most changes to the hot path are worth.
The number of instructions the CPU runs for a request does not move: callgrind
counts them, whatever else runs (a run under it is ~50x slower, so the counts come
from a few thousand requests).  It is a proxy for time, not time: a cache miss
costs more than an add.  The targets stay the timed ratios of ``overhead.py``;
this script shows, exactly, what a change to the hot path bought, and the same
ratios by instructions.

How: each app of ``bench/overhead.py`` (WSGI: bare, floor, ours; ASGI: bare,
floor, ours) runs in a child process under callgrind twice, for ``SMALL`` and for
``SMALL + COUNT`` requests after the same checks and warm-up; the difference of
the two totals, divided by ``COUNT``, is what one request costs (start-up,
imports and the checks cancel out), with one hash seed so that a count repeats
to within a few dozen instructions.  Without valgrind it says so and exits 0.

Usage::

    python bench/instructions.py [--quick] [--count N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import callgrind, target  # noqa: E402

SMALL = 200
WSGI_APPS = ("bare", "floor", "generic_session")
ASGI_APPS = ("bare", "floor", "generic_session")
TARGET_RATIO = 1.2


def run_requests(kind: str, label: str, count: int) -> None:
    """In the child: check the app, warm it up, serve ``count`` more requests, check again.

    The requests are served by a plain loop (no ``gc.collect()`` as ``overhead.batch``
    makes, whose cost over the whole heap would not cancel out between the two runs).
    """
    from bench import overhead

    if kind == "wsgi":
        subjects = {subject.label: subject for subject in overhead.make_subjects(tricks=False)}
        subject = subjects[label]
        overhead.check(subject)
        app, template, recorder = subject.app, subject.template, overhead.Recorder()
        for _ in range(SMALL + count):
            overhead.call(app, template.copy(), recorder)
        subject.served += SMALL + count
        overhead.check(subject)  # still counting: no lost write, no new session
        return

    async def serve() -> None:
        client = overhead.asgi_clients()[label]
        first = await client.request()
        app, scope, send, messages = client.app, client.scope, client.collect, client.messages
        for _ in range(SMALL + count):
            messages.clear()  # as overhead's timed batches do
            await app(scope.copy(), overhead.asgi_receive, send)
        last = await client.request()
        if label != "bare" and last != first + SMALL + count + 1:
            raise overhead.BenchError(f"ASGI {label}: n={last} after {first}: a lost write")
    asyncio.run(serve())


def instructions(kind: str, label: str, count: int) -> int:
    """The instructions one run of the child makes, as callgrind counts them."""
    return callgrind(__file__, "--child", kind, label, str(count))


def per_request(kind: str, label: str, count: int) -> float:
    """Instructions per request: the run with ``count`` more requests minus the run without."""
    return (instructions(kind, label, count) - instructions(kind, label, 0)) / count


def report(kind: str, figures: dict[str, float]) -> float:
    """Print one table; return ours' added instructions over the floor's."""
    bare = figures["bare"]
    print(f"\n{kind.upper()}: instructions per request (callgrind)")
    print(f"{'app':<20} {'instructions':>13} {'added to bare':>14}")
    for label, value in figures.items():
        added = "" if label == "bare" else f"+{value - bare:,.0f}"
        print(f"{label:<20} {value:>13,.0f} {added:>14}")
    ratio = (figures["generic_session"] - bare) / (figures["floor"] - bare)
    print(f"ours added / floor added: {ratio:.2f}x")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (1,000)")
    parser.add_argument("--count", type=int, default=0, help="requests counted per app")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "LABEL", "COUNT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, label, count = args.child
        run_requests(kind, label, int(count))
        return 0
    if shutil.which("valgrind") is None:
        print("bench/instructions.py: valgrind is not installed (apt-get install valgrind); "
              "no instruction counts")
        return 0
    count = args.count or (1_000 if args.quick else 3_000)
    print(f"{count:,} requests per app, counted by callgrind (the difference of two runs)")
    jobs = [("wsgi", label) for label in WSGI_APPS] + [("asgi", label) for label in ASGI_APPS]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two cores: two valgrinds at a time
        counted = list(pool.map(lambda job: per_request(job[0], job[1], count), jobs))
    results = dict(zip(jobs, counted, strict=True))
    wsgi = report("wsgi", {label: results["wsgi", label] for label in WSGI_APPS})
    asgi = report("asgi", {label: results["asgi", label] for label in ASGI_APPS})
    print()
    target("WSGI filter added / hand-written floor added, by instructions", wsgi, TARGET_RATIO)
    target("ASGIMiddleware added / ASGI floor added, by instructions", asgi, TARGET_RATIO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
