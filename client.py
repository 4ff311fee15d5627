"""Example client for server.py: proves the session survives between requests.

Usage::

    python client.py [--host 127.0.0.1] [--port 8080]

It sets ``foo = bar`` in its session, then reads it back with a second request.
Both requests go through one ``requests.Session``, whose cookie jar carries the
session cookie from the first answer to the second request. Prints::

    Set foo = bar
    Fetched foo = bar

and exits 0; exits 1 with a one-line message on stderr when the server cannot
be reached, answers an error, or gives back something else than was set.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import requests

KEY = "foo"
VALUE = "bar"

#: (connect, read) timeouts in seconds: never hang on a stuck server.
TIMEOUT = (5.0, 10.0)


class ClientError(Exception):
    """A failure to report on stderr as a one-line message (exit status 1)."""


def _root_cause(exc: BaseException) -> BaseException:
    """Follow the exception chain to its origin.

    requests wraps urllib3 which wraps the socket error; the innermost one
    (e.g. ``[Errno 111] Connection refused``) is the readable part.
    """
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def fetch_json(http: requests.Session, base_url: str, path: str) -> Any:
    """GET *path* and return the decoded JSON answer, or raise ClientError."""
    try:
        response = http.get(base_url + path, timeout=TIMEOUT)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise ClientError(f"cannot reach the server at {base_url}: {_root_cause(exc)}") from exc
    if response.status_code != 200:
        body = response.text.strip().splitlines()
        detail = f": {body[0][:200]}" if body else ""
        raise ClientError(f"GET {path} answered HTTP {response.status_code}{detail}")
    try:
        return response.json()
    except ValueError as exc:  # requests' JSONDecodeError is a ValueError
        raise ClientError(f"GET {path} did not answer JSON: {response.text[:200]!r}") from exc


def run(host: str, port: int) -> None:
    """Set then fetch the value, printing both steps; raise ClientError on failure."""
    base_url = f"http://{host}:{port}"
    with requests.Session() as http:
        # Talk to the server directly, whatever the environment says: the server is
        # usually on loopback, and an HTTP_PROXY variable (or .netrc) set for the
        # outside world must not reroute these requests to a proxy.
        http.trust_env = False
        stored = fetch_json(http, base_url, f"/set/{KEY}/{VALUE}")
        print(f"Set {KEY} = {stored}", flush=True)
        fetched = fetch_json(http, base_url, f"/get/{KEY}")
        if fetched != VALUE:
            raise ClientError(
                f"the session did not keep the value: fetched {KEY} = {fetched!r}, "
                f"expected {VALUE!r}"
            )
        print(f"Fetched {KEY} = {fetched}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="client.py", description="Example client for the generic-session server."
    )
    parser.add_argument("--host", default="127.0.0.1", help="server host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="server port (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client; return the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        run(args.host, args.port)
    except ClientError as exc:
        print(f"client.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
