# SPDX-License-Identifier: MIT
# Copyright (c) generic-session for Python contributors (https://spdx.org/licenses/MIT.html)
"""Framework-agnostic web sessions with signed cookies and pluggable per-key stores.

A Python port of Node's ``generic-session``, in one file with no dependency beyond
the standard library (``MemoryStore`` needs ``cachetools``, imported when it is
created).  A session is a random token in a cookie; its data lives in a store,
one key at a time, so concurrent requests of one session never overwrite each
other's writes.

Used directly, as in Node, a session is made for one request and sends its
cookie at once:

>>> store = MemoryStore()
>>> headers = []                                  # where Set-Cookie goes
>>> session = GenericSession({}, headers, store, keys=['a secret key'])
>>> session.set('foo', 'bar')
>>> session.get('foo')
'bar'
>>> [name for name, _ in headers]
['Set-Cookie', 'Set-Cookie']
>>> headers[0][1].startswith('s=') and headers[1][1].startswith('s.sig=')
True

In a WSGI app, ``middleware(store, keys=...)(app)`` gives every request a session
in ``environ[ENVIRON_KEY]`` (and ``bottle.request.session`` under Bottle).
"""

from __future__ import annotations

import sys

# Before any import or name that Python 3.10 lacks (datetime.UTC): a copied module
# run by an older Python says what it needs in one line. Plain syntax only, so
# that the old Python gets this far.
if sys.version_info < (3, 11):  # noqa: UP036 (the check is for interpreters older than target)
    raise ImportError(
        "generic_session needs Python >= 3.11, found %d.%d (%s)"  # noqa: UP031
        % (sys.version_info[0], sys.version_info[1], sys.executable)
    )

import base64
import binascii
import calendar
import copy
import hashlib
import hmac
import html
import json
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeAlias, runtime_checkable

__all__ = [
    "ENVIRON_KEY",
    "TWO_WEEKS",
    "Callback",
    "Cookies",
    "Environ",
    "GenericSession",
    "Keygrip",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "SessionError",
    "SessionId",
    "Store",
    "StoreError",
    "WSGIApp",
    "check_store",
    "decode_json",
    "encode_json",
    "middleware",
]

__version__ = "0.1.0"


# ============================================================================
# Types, errors and option checks
# ============================================================================
#
# The names the signatures use, the two errors the module raises at run time,
# and the checks every option of every section goes through, so that a bad
# option fails the same way wherever it is given.

#: Two weeks in seconds: the default cookie and store expiry, as in Node.
TWO_WEEKS = 14 * 24 * 60 * 60

#: A session id as the store sees it: ``id_prefix + token``.
SessionId: TypeAlias = str
#: A WSGI environ.
Environ: TypeAlias = dict[str, Any]
#: ``callback(error, result)``, for code ported from Node.
Callback: TypeAlias = Callable[[BaseException | None, Any], object]
#: A WSGI application.
WSGIApp: TypeAlias = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]


class SessionError(Exception):
    """Base class of the errors this module raises at run time."""


class StoreError(SessionError):
    """Raised when a store cannot do an operation: its server is down, its file is locked.

    The message names the store and its address; the cause is chained.  Nothing
    was half-written: the operation either happened whole or not at all.
    """


#: The longest expiry: 400 days, where browsers cap a cookie's lifetime (RFC 6265bis).
_MAX_EXPIRE = 400 * 24 * 60 * 60


def _check_seconds(seconds: float, name: str, limit: float, why: str) -> float:
    """Return ``seconds`` if it is a number in (0, limit], else raise ValueError naming it."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"{name} must be a number of seconds > 0, got "
                         f"{type(seconds).__name__} {seconds!r}")
    # Comparisons, not math.isfinite: they refuse nan and inf and never overflow on huge ints.
    if not 0 < seconds <= limit:
        raise ValueError(f"{name} must be a number of seconds > 0 and at most {limit} "
                         f"({why}), got {seconds!r}")
    return seconds


def _check_expire(expire: float, name: str = "expire") -> float:
    """Check a session lifetime: at most 400 days, the longest browsers keep a cookie."""
    return _check_seconds(expire, name, _MAX_EXPIRE, "400 days, the longest browsers keep a "
                          "cookie")


def _html_table(title: str, rows: Iterable[tuple[str, Any]]) -> str:
    """A small HTML table for Jupyter's rich display, every cell escaped."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(name)}</th>"
        f"<td style='text-align:left'><code>{html.escape(str(value))}</code></td></tr>"
        for name, value in rows
    )
    caption = f"<caption style='text-align:left'><b>{html.escape(title)}</b></caption>"
    return f"<table>{caption}{body}</table>"


# ============================================================================
# Signing (Keygrip)
# ============================================================================
#
# A signed cookie is a pair: ``s=<token>`` and ``s.sig=<signature>``, where the
# signature is an HMAC of the string ``s=<token>``, base64url without padding.
# This is exactly what Node's ``keygrip`` and ``cookies`` packages do, so a
# cookie signed by a Node server verifies here and the other way round.

_HASHES = ("sha1", "sha256", "sha384", "sha512")
_URLSAFE = bytes.maketrans(b"+/", b"-_")  # base64 to base64url


def _keyed(key: bytes, algorithm: str) -> tuple[Any, Any]:
    """The inner and outer hashes of HMAC (RFC 2104) with ``key`` already fed in.

    This is what ``hmac`` does inside; keeping them and copying them per signature
    costs half of ``hmac.digest``, which keys both hashes again on every call.
    The tests check the result against ``hmac`` and against Node's vectors.
    """
    block = hashlib.new(algorithm).block_size
    if len(key) > block:
        key = hashlib.new(algorithm, key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.new(algorithm, bytes(byte ^ 0x36 for byte in key))
    outer = hashlib.new(algorithm, bytes(byte ^ 0x5C for byte in key))
    return inner, outer


def _as_bytes(text: str | bytes) -> bytes:
    # surrogatepass: a cookie is untrusted text, and a lone surrogate must not raise.
    return text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text


class Keygrip:
    """Sign with the newest key, verify against all of them: key rotation for cookies.

    :param keys: secret keys, newest first (``str`` is UTF-8 encoded, as in Node).
    :param algorithm: one of ``sha1`` (Node's default), ``sha256``, ``sha384``, ``sha512``.
    :raises ValueError: for an empty list, an empty key, a key that is not str or
        bytes, or an unknown algorithm.
    """

    __slots__ = ("_keyed", "algorithm")

    def __init__(self, keys: Sequence[str | bytes], algorithm: str = "sha1") -> None:
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
            raise ValueError(
                f"keys must be a list of secret strings, newest first, got {type(keys).__name__}"
            )
        if not keys:
            raise ValueError("keys must hold at least one secret key, got an empty list")
        for index, key in enumerate(keys):
            if not isinstance(key, str | bytes):
                raise ValueError(f"keys[{index}] must be str or bytes, got {type(key).__name__}")
            if not key:
                raise ValueError(f"keys[{index}] is empty: a signing key must be a secret")
        if algorithm not in _HASHES:
            raise ValueError(f"algorithm must be one of {', '.join(_HASHES)}, got {algorithm!r}")
        self._keyed = tuple(_keyed(_as_bytes(key), algorithm) for key in keys)
        self.algorithm = algorithm

    def __repr__(self) -> str:
        # Never show the keys themselves.
        return f"Keygrip(<{len(self._keyed)} keys>, algorithm={self.algorithm!r})"

    @staticmethod
    def _sign_with(keyed: tuple[Any, Any], data: bytes) -> bytes:
        """HMAC(key, data) from the key's prepared hashes, in base64url without padding
        (keygrip turns ``+/=`` into ``-_`` and nothing)."""
        inner, outer = keyed[0].copy(), keyed[1].copy()
        inner.update(data)
        outer.update(inner.digest())
        return binascii.b2a_base64(outer.digest(), newline=False).rstrip(b"=").translate(_URLSAFE)

    def sign(self, data: str | bytes) -> str:
        """Return the signature of ``data`` made with the newest key, ``keys[0]``."""
        return self._sign_with(self._keyed[0], _as_bytes(data)).decode("ascii")

    def index(self, data: str | bytes, digest: str) -> int:
        """Return the index of the key that signed ``data`` as ``digest``, or -1.

        Every comparison is constant-time (``hmac.compare_digest``), so the time
        taken says nothing about how much of a forged signature was right.
        """
        payload = _as_bytes(data)
        given = digest.encode("utf-8", "replace")  # any text: a cookie is untrusted
        for position, keyed in enumerate(self._keyed):
            if hmac.compare_digest(self._sign_with(keyed, payload), given):
                return position
        return -1

    def verify(self, data: str | bytes, digest: str) -> bool:
        """Return True when ``digest`` is the signature of ``data`` by any of the keys."""
        return self.index(data, digest) >= 0


# ============================================================================
# Cookies
# ============================================================================
#
# Reading the ``Cookie`` request header and writing ``Set-Cookie`` response
# headers, optionally signed.  Attributes are written in Node's order and case
# (``path``, ``expires``, ``domain``, ``samesite``, ``secure``, ``httponly``) so a
# header can be compared with the one Node's ``cookies`` package writes.

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_EPOCH_DATE = "Thu, 01 Jan 1970 00:00:00 GMT"
_YEAR_10000 = 253_402_300_800  # epoch seconds: an HTTP date has four digits of year
# RFC 6265 cookie-name is an RFC 7230 token; a value may not hold controls, space, '"', ',', ';'
# or '\'.  Node's ``cookies`` package is laxer about values; a session token never needs it.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_COOKIE_VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\')
_COOKIE_VALUE = re.compile(f"[{re.escape(_COOKIE_VALUE_CHARS)}]*")
# A path or domain with these would add attributes or split the header.
_UNSAFE_ATTRIBUTE = re.compile(r"[\x00-\x1f\x7f;]")
_SAMESITE = {"lax": "lax", "strict": "strict", "none": "none"}


def _http_date(when: float) -> str:
    """Format epoch seconds as an RFC 1123 date, ``Tue, 01 Jan 2030 00:00:00 GMT``.

    Locale-free, as ``email.utils.formatdate(usegmt=True)`` is, and cheaper.  The
    session's hot path formats one only once a second (``_Config.suffix``).
    """
    t = time.gmtime(int(when))
    return (
        f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def _parse_cookie_header(header: str) -> dict[str, str]:
    """Parse a ``Cookie`` header into ``{name: value}``; the first of a repeated name wins.

    Browsers send the most specific cookie first, and Node's ``cookies`` takes the
    first match, so we do too.  Malformed pairs are skipped, never an error.
    """
    jar: dict[str, str] = {}
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        if not sep:
            continue
        name = name.strip()
        if name and name not in jar:
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            jar[name] = value
    return jar


def _attribute_suffix(name: str, path: str, date: str | None, domain: str | None,
                      samesite: str | None, secure: bool, httponly: bool) -> str:
    """``; path=/; expires=...; domain=...; samesite=lax; secure; httponly``, checked.

    :raises ValueError: for a path or domain that would add attributes or split
        the header, or an unknown samesite.
    """
    if _UNSAFE_ATTRIBUTE.search(path) or (domain is not None and _UNSAFE_ATTRIBUTE.search(domain)):
        raise ValueError(f"path and domain of cookie {name!r} may not hold ';' or control "
                         f"characters, got path={path!r}, domain={domain!r}")
    suffix = f"; path={path}"
    if date is not None:
        suffix += f"; expires={date}"
    if domain is not None:
        suffix += f"; domain={domain}"
    if samesite is not None:
        if samesite.lower() not in _SAMESITE:
            raise ValueError(f"samesite must be 'Lax', 'Strict', 'None' or None, got {samesite!r}")
        suffix += f"; samesite={_SAMESITE[samesite.lower()]}"
    if secure:
        suffix += "; secure"
    if httponly:
        suffix += "; httponly"
    return suffix


def _environ_of(request: Any) -> Environ:
    """Return the WSGI environ of ``request``: the dict itself or its ``.environ``."""
    if isinstance(request, dict):
        return request
    environ = getattr(request, "environ", None)
    if isinstance(environ, dict):
        return environ
    raise TypeError(
        "request must be a WSGI environ dict or an object with an .environ dict "
        f"(Bottle, WebOb, Werkzeug), got {type(request).__name__}"
    )


def _header_sink(response: Any) -> Callable[[str, str], None]:
    """Return ``emit(cookie_name, header)``, adding one ``Set-Cookie`` header to ``response``."""
    if isinstance(response, _DeferredStart):  # the filter's: keeps the last header per cookie
        return response.add_cookie
    if isinstance(response, list):
        append = response.append
        return lambda _, value: append(("Set-Cookie", value))
    add_header = getattr(response, "add_header", None)  # Bottle
    if callable(add_header):
        return lambda _, value: add_header("Set-Cookie", value)
    add = getattr(getattr(response, "headers", None), "add", None)  # WebOb, Werkzeug
    if callable(add):
        return lambda _, value: add("Set-Cookie", value)
    raise TypeError(
        "response must be a list of WSGI header tuples, an object with add_header(name, value) "
        "(Bottle) or with .headers.add(name, value) (WebOb, Werkzeug), "
        f"got {type(response).__name__}"
    )


def _expires_seconds(expires: float | datetime) -> float:
    """Epoch seconds of ``expires``, from 1970 to the year 9999 (what an HTTP date holds)."""
    seconds: float | None = None
    if isinstance(expires, datetime):
        if expires.tzinfo is None:  # naive datetimes are taken as UTC, as HTTP dates are
            expires = expires.replace(tzinfo=UTC)
        try:  # whole seconds, exactly: a float timestamp rounds .999999 up in far years
            seconds = calendar.timegm(expires.utctimetuple())
        except OverflowError:  # past the year 9999 once in UTC
            seconds = None
    elif not isinstance(expires, bool) and isinstance(expires, int | float):
        seconds = expires
    if seconds is None or not 0 <= seconds < _YEAR_10000:
        raise ValueError("expires must be a datetime or epoch seconds from 1970 to the year "
                         f"9999, got {expires!r}")
    return float(seconds)


class Cookies:
    """Read the request's cookies and write ``Set-Cookie`` headers, signed when keys are given.

    :param request: a WSGI environ, or an object with ``.environ`` (Bottle, WebOb, Werkzeug).
    :param response: where ``Set-Cookie`` headers go: a list of header tuples, an
        object with ``add_header(name, value)``, or one whose ``.headers`` has ``add``.
    :param keys: a list of secret keys or a :class:`Keygrip`; with keys, ``get`` and
        ``set`` sign by default, as in Node.
    """

    __slots__ = ("_emit", "_environ", "_jar", "_keys", "_verified")

    def __init__(
        self, request: Any, response: Any, keys: Keygrip | Sequence[str | bytes] | None = None
    ) -> None:
        self._environ = _environ_of(request)
        self._emit = _header_sink(response)
        self._keys = keys if keys is None or isinstance(keys, Keygrip) else Keygrip(keys)
        self._jar: dict[str, str] | None = None
        # The last ``name=value`` verified with keys[0], and its signature: re-sending
        # that cookie needs no second HMAC.
        self._verified: tuple[str, str] = ("", "")

    @property
    def keys(self) -> Keygrip | None:
        """The :class:`Keygrip` that signs and verifies, or None (read-only: a signature
        verified by ``get`` is reused by ``set``)."""
        return self._keys

    def __repr__(self) -> str:
        names = sorted(self._cookies())
        return f"Cookies(names={names!r}, signed={self.keys is not None})"

    def _cookies(self) -> dict[str, str]:
        if self._jar is None:
            self._jar = _parse_cookie_header(self._environ.get("HTTP_COOKIE", ""))
        return self._jar

    @property
    def is_https(self) -> bool:
        """True when the request came over HTTPS (``wsgi.url_scheme``)."""
        return self._environ.get("wsgi.url_scheme") == "https"

    def get(self, name: str, signed: bool | None = None) -> str | None:
        """Return the value of cookie ``name``, or None when absent or badly signed.

        With ``signed`` (the default when keys were given) the value counts only
        if ``name.sig`` holds its signature by one of the keys.  A bad signature
        clears the ``.sig`` cookie; one made with an older key is re-signed with
        the newest, as Node's ``cookies`` does.
        """
        value = self._cookies().get(name)
        if signed is None:
            signed = self.keys is not None
        if value is None or not signed:
            return value
        value, index = self._signed(name)
        if index > 0:
            self.set(name + ".sig", self._keygrip(name).sign(f"{name}={value}"), signed=False)
        elif index < 0:
            if name + ".sig" in self._cookies():
                self.set(name + ".sig", None, signed=False)
            return None
        return value

    def _keygrip(self, name: str) -> Keygrip:
        if self._keys is None:
            raise ValueError(
                f"cookie {name!r} cannot be signed or verified: Cookies was made without keys")
        return self._keys

    def _signed(self, name: str) -> tuple[str | None, int]:
        """The cookie's value and the index of the key that signed it (-1: none did).

        No header is sent: ``get`` repairs the ``.sig`` cookie, while a session
        re-sends both cookies anyway.
        """
        keys = self._keygrip(name)
        jar = self._cookies()
        value, signature = jar.get(name), jar.get(name + ".sig")
        if value is None or signature is None:
            return value, -1
        data = f"{name}={value}"
        index = keys.index(data, signature)
        if index == 0:
            self._verified = (data, signature)
        return value, index

    def set(
        self,
        name: str,
        value: str | None,
        *,
        expires: float | datetime | None = None,
        path: str = "/",
        domain: str | None = None,
        samesite: str | None = None,
        secure: bool = False,
        httponly: bool = True,
        signed: bool | None = None,
    ) -> None:
        """Send cookie ``name`` (and ``name.sig`` when signed); ``value=None`` clears it.

        :param expires: epoch seconds or a datetime (naive means UTC); None for a
            cookie that lasts as long as the browser session.
        :raises ValueError: for a name or value that is not allowed in a cookie.
        """
        if not _COOKIE_NAME.fullmatch(name):
            raise ValueError(f"cookie name {name!r} is not an RFC 6265 token")
        if value is not None and not _COOKIE_VALUE.fullmatch(value):
            bad = sorted(set(value) - set(_COOKIE_VALUE_CHARS))
            raise ValueError(f"value of cookie {name!r} has characters not allowed in a cookie: "
                             f"{''.join(bad)!r}; allowed: printable ASCII but space, '\"', ',', "
                             "';' and '\\'")
        if value is None:
            date: str | None = _EPOCH_DATE
        else:
            date = None if expires is None else _http_date(_expires_seconds(expires))
        suffix = _attribute_suffix(name, path, date, domain, samesite, secure, httponly)
        self._send(name, value, suffix, self._keys is not None if signed is None else signed)

    def _send(self, name: str, value: str | None, suffix: str, signed: bool) -> None:
        """Emit checked ``name=value`` with its attributes, and ``name.sig`` when signed.

        The session's hot path comes here directly, with a suffix made once a second.
        """
        self._emit(name, f"{name}={value or ''}{suffix}")
        if not signed:
            return
        keys = self._keygrip(name)
        data = f"{name}={value}"
        if value is None:
            signature = ""  # clearing the cookie clears its signature too
        elif self._verified[0] == data:
            signature = self._verified[1]  # verified with keys[0] just now: same HMAC
        else:
            signature = keys.sign(data)
        self._emit(name + ".sig", f"{name}.sig={signature}{suffix}")


# ============================================================================
# The Store API
# ============================================================================
#
# A store keeps each session's data as a map of key -> JSON value.  Every
# operation touches one key of one session and is atomic on its own, so two
# requests of one session writing different keys never lose each other's write.
# ``expire`` is in seconds; every operation but ``delete_all`` sets the session
# to expire ``expire`` seconds from now.  A session nobody has written is not
# created by reading it.


@runtime_checkable
class Store(Protocol):
    """The Store API: six methods that return values and raise :class:`StoreError`."""

    def get(self, id: SessionId, key: str, expire: float) -> Any:
        """Return the value of ``key`` (a fresh copy), or None; renew the expiry."""

    def get_all(self, id: SessionId, expire: float) -> dict[str, Any]:
        """Return all of the session's data as a new dict ({} if none); renew the expiry."""

    def set(self, id: SessionId, key: str, value: Any, expire: float) -> None:
        """Store ``value`` under ``key``; raise TypeError (via :func:`encode_json`) for non-JSON."""

    def delete(self, id: SessionId, key: str, expire: float) -> None:
        """Remove ``key`` (no error if absent); renew the expiry."""

    def delete_all(self, id: SessionId) -> None:
        """Remove the whole session."""

    def extend(self, id: SessionId, expire: float) -> None:
        """Renew the expiry of an existing session; create nothing."""


# Made once: ``json.dumps`` with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_json(key: str, value: Any) -> str:
    """Return ``value`` as compact JSON text, or raise TypeError naming ``key``.

    Stores call this in ``set`` so that every store refuses the same values:
    anything but dict, list, str, int, finite float, bool and None.  (Tuples
    become lists and non-str dict keys become strings, as ``json`` does.)
    """
    try:
        if type(value) is int:  # the commonest value (a counter, an id): its repr is its JSON
            return int.__repr__(value)
        text: str = _ENCODER.encode(value)
        if not text.isascii():
            text.encode("utf-8")  # a lone surrogate ('\ud800') is text no store can keep
        return text
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"session value for key {key!r} is not JSON-serialisable ({type(value).__name__}: "
            f"{error}); allowed: dict, list, str, int, finite float, bool, None"
        ) from None


_DECODER = json.JSONDecoder()


def decode_json(text: str | bytes) -> Any:
    """Return the value stored as JSON ``text`` (a fresh object on every call)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    # raw_decode skips json.loads' whitespace handling, a third of its cost; text
    # that is not exactly one compact JSON value goes the long way (and its errors).
    try:
        value, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError:
        end = -1
    return value if end == len(text) else json.loads(text)


# ============================================================================
# Sessions
# ============================================================================
#
# A session is a token in a cookie and the data a store keeps under
# ``id_prefix + token``.  Options are checked once (``_Config``); a filter
# shares one ``_Config`` among all its requests.

# 30 random bytes in base64: ours are URL-safe, Node's use '+' and '/'; both pass.
_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{40}")
_TOKEN_BYTES = 30
_CONTROL_OR_SEPARATOR = re.compile(r"[\x00-\x20\x7f;=,\"\\]")


class _Config:
    """The options of a session, checked once; shared by every request of a filter."""

    __slots__ = ("_suffix", "clock", "cookie_name", "domain", "expire", "id_prefix", "keygrip",
                 "samesite", "secure")

    def __init__(
        self,
        *,
        keys: Keygrip | Sequence[str | bytes] | None = None,
        expire: float = TWO_WEEKS,
        cookie_name: str = "s",
        id_prefix: str = "session:",
        secure: bool | None = None,
        samesite: str | None = "Lax",
        domain: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keygrip = keys if keys is None or isinstance(keys, Keygrip) else Keygrip(keys)
        self.expire = _check_expire(expire)
        if not isinstance(cookie_name, str) or not cookie_name:
            raise ValueError(f"cookie_name must be a non-empty str, got {cookie_name!r}")
        if not _COOKIE_NAME.fullmatch(cookie_name):
            raise ValueError(
                f"cookie_name {cookie_name!r} is not allowed: use letters, digits and "
                "!#$%&'*+-.^_`|~ (no spaces, ';', '=', ',', quotes or control characters)"
            )
        if not isinstance(id_prefix, str):
            raise ValueError(f"id_prefix must be a str ('' for the bare token), got {id_prefix!r}")
        if samesite is not None and (not isinstance(samesite, str)
                                     or samesite.lower() not in _SAMESITE):
            raise ValueError(f"samesite must be 'Lax', 'Strict', 'None' or None, got {samesite!r}")
        if secure is not None and not isinstance(secure, bool):
            raise ValueError(f"secure must be True, False or None (automatic), got {secure!r}")
        if domain is not None and (not isinstance(domain, str) or not domain
                                   or _CONTROL_OR_SEPARATOR.search(domain)):
            raise ValueError(f"domain must be a host name such as 'example.com', got {domain!r}")
        # Browsers match these prefixes case-insensitively (RFC 6265bis).
        prefixed = cookie_name.lower().startswith(("__host-", "__secure-"))
        if secure is False and (prefixed or (samesite or "").lower() == "none"):
            why = "a __Host-/__Secure- cookie_name" if prefixed else "samesite='None'"
            raise ValueError(f"secure=False is not allowed with {why}: browsers drop such cookies")
        if cookie_name.lower().startswith("__host-") and domain is not None:
            raise ValueError(f"domain must be None for cookie_name {cookie_name!r}: __Host- "
                             "cookies are bound to the host that set them")
        if not callable(clock):
            raise ValueError(f"clock must be a function returning epoch seconds, got {clock!r}")
        self.cookie_name = cookie_name
        self.id_prefix = id_prefix
        # None means: Secure when the request came over HTTPS.  Prefixed and
        # SameSite=None cookies are always Secure.
        self.secure = True if prefixed or (samesite or "").lower() == "none" else secure
        self.samesite = samesite
        self.domain = domain
        self.clock = clock
        self._suffix: tuple[int, bool, str] = (-1, False, "")

    def suffix(self, secure: bool) -> str:
        """The cookie's attributes with an expiry ``expire`` from now; made once a second."""
        expires = int(self.clock() + self.expire)
        cached = self._suffix
        if cached[0] == expires and cached[1] is secure:
            return cached[2]
        text = _attribute_suffix(self.cookie_name, "/", _http_date(expires), self.domain,
                                 self.samesite, secure, True)
        self._suffix = (expires, secure, text)  # one tuple, swapped whole: safe across threads
        return text


_OPTIONS = ("keys", "expire", "cookie_name", "id_prefix", "secure", "samesite", "domain", "clock")


def _config(options: dict[str, Any]) -> _Config:
    """Check the options once; an unknown one is named, with the ones that exist."""
    for name in options:
        if name not in _OPTIONS:
            raise TypeError(f"unknown session option {name!r}; the options are "
                            f"{', '.join(_OPTIONS)} (and cookies, for GenericSession)")
    return _Config(**options)


def _new_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(_TOKEN_BYTES)).decode("ascii")


class GenericSession:
    """The session of one request: a token in a cookie, its data in a store.

    :param request: a WSGI environ, or an object with ``.environ``.
    :param response: where ``Set-Cookie`` goes (see :class:`Cookies`).
    :param store: any object with the Store API (:class:`Store`).
    :param keys: secret keys (newest first) or a :class:`Keygrip`: sign the cookie.
    :param cookies: a :class:`Cookies` to use instead of making one; its keys (if any)
        sign the session, so ``keys`` must not be given too.
    :param expire: seconds of inactivity before the session ends (two weeks).
    :param cookie_name: the cookie's name (``s``; the signature goes in ``s.sig``).
    :param id_prefix: put before the token to make the store's id (``session:``).
    :param secure: ``None`` sets Secure when the request came over HTTPS.
    :param samesite: ``'Lax'`` (default), ``'Strict'``, ``'None'``, or None to omit it.
    :param domain: the cookie's Domain, or None for the host that set it.
    :param clock: epoch seconds, for the cookie's Expires (inject one in tests).
    :raises ValueError: for a bad option, naming it.

    Made directly, the session reads or mints its token and sends the cookie at
    once, as Node's does.  Every method renews the expiry in the store.  Each
    method also takes a keyword-only ``callback(error, result)`` for code ported
    from Node; with it, errors go to the callback instead of being raised.
    """

    __slots__ = ("_config", "_cookies", "_environ", "_id", "_response", "_token", "store")

    def __init__(
        self, request: Any, response: Any, store: Store, *,
        cookies: Cookies | None = None, **options: Any,
    ) -> None:
        if cookies is not None:
            if "keys" in options:
                raise ValueError("keys and cookies are given together: the cookies' own keys "
                                 "sign and verify, so make it Cookies(request, response, keys)")
            options["keys"] = cookies.keys  # the session is signed exactly when its cookies are
        self._setup(_environ_of(request), response, store, _config(options), cookies)
        self._start()

    def _setup(self, environ: Environ, response: Any, store: Store, config: _Config,
               cookies: Cookies | None = None) -> None:
        self._environ = environ
        self._response = response
        self.store = store
        self._config = config
        self._cookies = cookies
        self._token: str | None = None
        self._id = ""

    @classmethod
    def _lazy(cls, environ: Environ, response: Any, store: Store,
              config: _Config) -> GenericSession:
        """A session that reads its cookie and sends one only when first used (the filter's)."""
        session = cls.__new__(cls)
        # Only what the cookies need, not the environ itself: the environ holds the
        # session, and that cycle would leave every request to the garbage collector.
        needed = {"HTTP_COOKIE": environ.get("HTTP_COOKIE", ""),
                  "wsgi.url_scheme": environ.get("wsgi.url_scheme")}
        session._setup(needed, response, store, config)
        return session

    def _start(self) -> None:
        """Read the token (or mint one) and (re)send the cookie with the sliding expiry."""
        config = self._config
        cookies = self.cookies
        name = config.cookie_name
        if config.keygrip is None:
            token = cookies.get(name, signed=False)
        else:  # both cookies are re-sent below: no need for get()'s repairs
            token, index = cookies._signed(name)
            if index < 0:
                token = None
        if token is None or not _TOKEN.fullmatch(token):
            token = _new_token()
        self._issue(token)

    def _issue(self, token: str) -> None:
        """Take ``token`` as the session's and send its cookie with the sliding expiry."""
        config = self._config
        # Name, token and attributes were all checked already: no Cookies.set needed.
        self.cookies._send(config.cookie_name, token, config.suffix(self._secure()),
                           config.keygrip is not None)
        # Only now: a session whose cookie could not be sent must not store anything.
        self._token = token
        self._id = config.id_prefix + token

    def _attributes(self) -> dict[str, Any]:
        """The cookie's attributes, the same whether it is sent or cleared."""
        config = self._config
        return {"domain": config.domain, "samesite": config.samesite, "secure": self._secure(),
                "httponly": True, "signed": config.keygrip is not None}

    def _secure(self) -> bool:
        """Whether the cookie is Secure: as configured, or when the request came over HTTPS."""
        secure = self._config.secure
        return self.cookies.is_https if secure is None else secure

    @property
    def cookies(self) -> Cookies:
        """The :class:`Cookies` this session reads and writes its cookie with."""
        if self._cookies is None:
            self._cookies = Cookies(self._environ, self._response, self._config.keygrip)
        return self._cookies

    @property
    def token(self) -> str:
        """The random token in the cookie (40 characters)."""
        if self._token is None:
            self._start()
        return self._token  # type: ignore[return-value]  # _start set it

    @property
    def id(self) -> SessionId:
        """The id the store knows the session by: ``id_prefix + token``."""
        if self._token is None:
            self._start()
        return self._id

    @property
    def expire(self) -> float:
        """Seconds of inactivity before the session ends."""
        return self._config.expire

    @property
    def started(self) -> bool:
        """True once the session has read its token and sent its cookie."""
        return self._token is not None

    def __repr__(self) -> str:
        if self._token is None:
            return f"GenericSession(<not started>, expire={self.expire}, store={self.store!r})"
        short = self._config.id_prefix + self._token[:6] + "…"
        return f"GenericSession(id={short!r}, expire={self.expire}, store={self.store!r})"

    def _repr_html_(self) -> str:
        config = self._config
        if self._token is None:
            return _html_table("GenericSession (not started)", [("store", repr(self.store))])
        flags = self._attributes()
        signed = flags.pop("signed")
        attributes = "; ".join(["path=/"] + [
            f"{name}={value.lower() if name == 'samesite' else value}"
            if isinstance(value, str) else name
            for name, value in flags.items() if value])
        try:  # a read, which renews the expiry as every read does
            data: Any = self.store.get_all(self._id, config.expire)
        except Exception as error:  # a notebook should show the failure, not raise it
            data = f"<{type(error).__name__}: {error}>"
        return _html_table("GenericSession", [
            ("id", config.id_prefix + self._token[:6] + "…"),
            ("cookie", f"{config.cookie_name}=…; {attributes}"),
            ("signed", f"yes: {config.cookie_name}.sig" if signed else "no"),
            ("expire", f"{config.expire} s (sliding)"),
            ("store", repr(self.store)),
            ("data", json.dumps(data, ensure_ascii=False) if isinstance(data, dict) else data),
        ])

    @staticmethod
    def _run(callback: Callback | None, operation: Callable[[], Any]) -> Any:
        """Run ``operation``; with a callback, hand it ``(error, result)`` instead of raising."""
        if callback is None:
            return operation()
        try:
            result = operation()
        except Exception as error:
            callback(error, None)
            return None
        callback(None, result)
        return result

    def get(self, key: str | None = None, *, callback: Callback | None = None) -> Any:
        """Return the value stored under ``key`` (a copy), or None; no key: :meth:`get_all`."""
        if key is None:
            return self.get_all(callback=callback)
        if callback is not None:
            return self._run(callback, lambda: self.get(key))
        return self.store.get(self.id, _check_key(key), self.expire)

    def get_all(self, *, callback: Callback | None = None) -> dict[str, Any]:
        """Return all the session's data as a new dict."""
        if callback is not None:
            return self._run(callback, self.get_all)  # type: ignore[no-any-return]
        return self.store.get_all(self.id, self.expire)

    def set(self, key: str, value: Any = None, *, callback: Callback | None = None) -> None:
        """Store ``value`` (JSON-serialisable; None by default) under ``key``.

        :raises TypeError: for a value that is not JSON, naming the key; nothing is stored.
        """
        if callback is not None:
            self._run(callback, lambda: self.set(key, value))
        else:
            self.store.set(self.id, _check_key(key), value, self.expire)

    def delete(self, key: str | None = None, *, callback: Callback | None = None) -> None:
        """Remove ``key``.  Beware: with no key this is :meth:`delete_all`, as in Node."""
        if key is None:
            self.delete_all(callback=callback)
        else:
            self._run(callback,
                      lambda: self.store.delete(self.id, _check_key(key), self.expire))

    def delete_all(self, *, callback: Callback | None = None) -> None:
        """Remove all the session's data; the cookie stays."""
        self._run(callback, lambda: self.store.delete_all(self.id))

    def destroy(self, *, callback: Callback | None = None) -> None:
        """Remove all the data and expire the cookie (and its signature) on the client.

        The session keeps its id: a write after this, in the same request, goes
        to a session whose cookie was cleared (use :meth:`regenerate` to go on).
        """
        def destroy() -> None:
            self.store.delete_all(self.id)
            self.cookies.set(self._config.cookie_name, None, **self._attributes())

        self._run(callback, destroy)

    def regenerate(self, *, callback: Callback | None = None) -> None:
        """Start over with a new token and no data: call it at login, against session fixation.

        A token planted by an attacker before the login is worth nothing after it.
        Keep what you need with :meth:`get_all` first and :meth:`set` it again.
        """
        def regenerate() -> None:
            self.store.delete_all(self.id)
            self._issue(_new_token())

        self._run(callback, regenerate)

    def touch(self, *, callback: Callback | None = None) -> None:
        """Renew the expiry only (what Node's ``get()`` without a callback does)."""
        self._run(callback, lambda: self.store.extend(self.id, self.expire))


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"session key must be a str, got {type(key).__name__}: {key!r}")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise TypeError(f"session key {key!r} is not valid Unicode text "
                            "(it holds a lone surrogate)") from None
    return key


# ============================================================================
# WSGI and Bottle integration
# ============================================================================
#
# ``filter(store, **options)(app)`` wraps a WSGI app.  Each request gets a lazy
# session: nothing is read, sent or stored until the app uses it, so health
# checks and crawlers mint no sessions.  Once used, its Set-Cookie headers are
# added when the app calls ``start_response``.

#: The environ key of the request's session (PEP 3333: an extension's key has a dot).
ENVIRON_KEY = "generic_session.session"

_UNAVAILABLE = b"503 Service Unavailable: the session store is unavailable\n"


class _DeferredStart:
    """Holds the app's ``start_response`` until the body is ready, then adds the cookies.

    PEP 3333 lets headers change until the first body byte, and apps do use the
    session after calling ``start_response``; so the server's ``start_response``
    is called when the app returns (or yields its first chunk, or calls ``write``).
    """

    __slots__ = ("_start_response", "_write", "cookies", "exc_info", "headers", "status")

    def __init__(self, start_response: Callable[..., Any]) -> None:
        self._start_response = start_response
        self._write: Callable[[bytes], object] | None = None
        # The session's Set-Cookie headers by cookie name: a cookie sent twice (a
        # destroy after a start, say) goes out once, as it was last set.
        self.cookies: dict[str, str] = {}
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.exc_info: Any = None

    def add_cookie(self, name: str, header: str) -> None:
        """The session's way to send a cookie: the last one of each name goes out."""
        if self._write is not None:
            raise SessionError(
                f"cookie {name!r} cannot be sent: the response headers are already out; "
                "use the session before the app returns its body (or yields its first chunk)")
        self.cookies[name] = header

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], object]:
        if self._write is not None:  # already sent: the server decides (it re-raises exc_info)
            return self._start_response(status, headers, exc_info)  # type: ignore[no-any-return]
        if self.status is not None and exc_info is None:
            raise AssertionError("start_response called a second time without exc_info "
                                 "(PEP 3333 allows that only to report an error)")
        self.status, self.headers, self.exc_info = status, headers, exc_info
        return self.write

    def send(self) -> None:
        """Call the server's ``start_response`` with the app's headers and the cookies."""
        if self._write is not None:
            return
        if self.status is None:
            raise RuntimeError("the WSGI app returned without calling start_response")
        headers = self.headers
        if self.cookies:
            headers = _vary_on_cookie(headers)
            headers += [("Set-Cookie", value) for value in self.cookies.values()]
        self._write = self._start_response(self.status, headers, self.exc_info)
        self.exc_info = None  # its traceback would keep the whole request alive

    def write(self, data: bytes) -> None:
        """The legacy ``write`` callable: the headers go first."""
        self.send()
        self._write(data)  # type: ignore[misc]  # send() set it


def _vary_on_cookie(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A copy of ``headers`` that varies on ``Cookie``: a response that sets a session
    cookie depends on the cookie, and a shared cache must not serve it to anyone else."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == "vary":
            varies = {item.strip().lower() for item in value.split(",")}
            headers = list(headers)
            if not varies & {"cookie", "*"}:
                headers[index] = (name, f"{value}, Cookie" if value.strip() else "Cookie")
            return headers
    return [*headers, ("Vary", "Cookie")]


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


class _DeferredBody:
    """The response of a generator app: run to its first chunk before the headers go.

    An iterable with ``close()``, as PEP 3333 wants: the server closes it even when
    it never iterated it, and the app's body is closed then too.
    """

    __slots__ = ("_body", "_chunks")

    def __init__(self, body: Iterable[bytes], response: _DeferredStart,
                 environ: Environ, start_response: Callable[..., Any]) -> None:
        self._body = body
        self._chunks = self._run(body, response, environ, start_response)

    @staticmethod
    def _run(body: Iterable[bytes], response: _DeferredStart, environ: Environ,
             start_response: Callable[..., Any]) -> Generator[bytes, None, None]:
        iterator = iter(body)
        try:
            first = next(iterator, b"")
            response.send()
        except StoreError as error:
            yield from _unavailable(error, environ, start_response)
            return
        yield first
        yield from iterator

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        try:
            self._chunks.close()
        finally:
            _close(self._body)


def _unavailable(error: StoreError, environ: Environ,
                 start_response: Callable[..., Any]) -> list[bytes]:
    """A plain 503 for a store that is down; the error goes to the server's log."""
    print(f"generic_session: {error}", file=environ.get("wsgi.errors", sys.stderr))
    start_response("503 Service Unavailable",
                   [("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(_UNAVAILABLE)))], sys.exc_info())
    return [_UNAVAILABLE]


def filter(store: Store, **options: Any) -> Callable[[WSGIApp], WSGIApp]:
    """Return ``wrap(app)``: WSGI middleware giving each request a :class:`GenericSession`.

    The session is ``environ[ENVIRON_KEY]`` (``'generic_session.session'``) and, under Bottle,
    ``bottle.request.session``.  Options are those of :class:`GenericSession`
    (but ``cookies``, which is per request), checked now.  A :class:`StoreError`
    that escapes the app becomes a plain 503 response (Bottle apps: make them
    with ``app.config["catchall"] = False`` so it escapes).

    :raises ValueError: for a bad option, naming it.
    """
    if "cookies" in options:
        raise ValueError("cookies is per request: the filter makes a Cookies for each request")
    config = _config(options)
    for method in ("get", "get_all", "set", "delete", "delete_all", "extend"):
        if not callable(getattr(store, method, None)):
            raise ValueError(f"store {store!r} has no {method}() method: see the Store API")
    lazy = GenericSession._lazy

    def wrap(app: WSGIApp) -> WSGIApp:
        def session_app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
            response = _DeferredStart(start_response)
            session = lazy(environ, response, store, config)
            environ[ENVIRON_KEY] = session
            environ["bottle.request.ext.session"] = session  # bottle.request.session
            try:
                body = app(environ, response.start_response)
            except StoreError as error:
                return _unavailable(error, environ, start_response)
            if response.status is None:  # a generator app: it starts when iterated
                return _DeferredBody(body, response, environ, start_response)
            try:
                response.send()
            except BaseException:
                _close(body)
                raise
            return body

        session_app.__wrapped__ = app  # type: ignore[attr-defined]
        return session_app

    return wrap


#: Node's other name for :func:`filter`.
middleware = filter


# ============================================================================
# Shipped stores (MemoryStore, SQLiteStore, RedisStore)
# ============================================================================
#
# Three implementations of the Store API: in the process (``MemoryStore``), in a
# file shared by the processes of one machine (``SQLiteStore``), and on a Redis
# server shared by many machines (``RedisStore``).  Each passes ``check_store``.


class _MemoryEntry:
    """One session in a MemoryStore: JSON text per key, its expiry and its size."""

    __slots__ = ("data", "expires_at", "size")

    def __init__(self, size: int) -> None:
        self.data: dict[str, str] = {}
        self.expires_at = 0.0
        self.size = size

    @staticmethod
    def size_of(entry: _MemoryEntry) -> int:
        return entry.size


class MemoryStore:
    """An in-process LRU store: thread-safe, size-bounded, lost when the process exits.

    Each session's values are kept as JSON text, so ``get`` returns a fresh copy
    and ``max_size`` counts characters of stored JSON (keys and session ids
    included).  Past ``max_size`` the least recently used sessions are evicted.
    Unlike Node's, this store honours ``expire`` (capped at ``max_age``), so it
    passes :func:`check_store` like every other store.

    :param max_size: characters of stored JSON across all sessions (64 MiB).
    :param max_age: the longest a session lives unused, in seconds (two weeks).
    :param clock: seconds as a float; inject a fake one to test expiry without sleeping.
    """

    def __init__(
        self,
        max_size: int = 64 * 1024 * 1024,
        max_age: float = TWO_WEEKS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size <= 0:
            raise ValueError(f"max_size must be a number of characters > 0, got {max_size!r}")
        self.max_size = max_size
        self.max_age = _check_expire(max_age, "max_age")
        self._clock = clock
        from cachetools import LRUCache  # the one third-party import, only for this store

        self._cache: Any = LRUCache(maxsize=max_size, getsizeof=_MemoryEntry.size_of)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"MemoryStore(sessions={len(self._cache)}, size={self._cache.currsize}, "
            f"max_size={self.max_size}, max_age={self.max_age})"
        )

    def _repr_html_(self) -> str:
        return _html_table("MemoryStore", [
            ("sessions", len(self._cache)), ("size", self._cache.currsize),
            ("max_size", self.max_size), ("max_age", self.max_age),
        ])

    def _live(self, id: SessionId, now: float) -> _MemoryEntry | None:
        """The session's entry if it exists and has not expired (call with the lock held)."""
        try:  # not .get(): cachetools' get looks the id up twice
            entry: _MemoryEntry = self._cache[id]  # marks it recently used
        except KeyError:
            return None
        if entry.expires_at <= now:
            del self._cache[id]
            return None
        return entry

    def _renew(self, entry: _MemoryEntry, now: float, expire: float) -> None:
        entry.expires_at = now + min(expire, self.max_age)

    def get(self, id: SessionId, key: str, expire: float) -> Any:
        """Return a copy of the value of ``key``, or None."""
        now = self._clock()
        with self._lock:
            entry = self._live(id, now)
            if entry is None:
                return None
            self._renew(entry, now, expire)
            text = entry.data.get(key)
        return None if text is None else decode_json(text)

    def get_all(self, id: SessionId, expire: float) -> dict[str, Any]:
        """Return a copy of all the session's data."""
        now = self._clock()
        with self._lock:
            entry = self._live(id, now)
            if entry is None:
                return {}
            self._renew(entry, now, expire)
            items = list(entry.data.items())
        return {key: decode_json(text) for key, text in items}

    def set(self, id: SessionId, key: str, value: Any, expire: float) -> None:
        """Store ``value`` under ``key``; evict least recently used sessions if full."""
        text = encode_json(key, value)
        now = self._clock()
        with self._lock:
            entry = self._live(id, now)
            if entry is None:
                entry = _MemoryEntry(len(id))
            old = entry.data.get(key)
            size = entry.size + len(key) + len(text)
            if old is not None:
                size -= len(key) + len(old)
            if size > self.max_size:  # the value is at fault, not the store: no StoreError
                raise ValueError(
                    f"MemoryStore: session data would be {size} characters with key {key!r}, "
                    f"over max_size={self.max_size}; nothing was stored"
                )
            entry.data[key] = text
            self._renew(entry, now, expire)
            if size != entry.size or old is None:
                entry.size = size
                # Setting it (again) records the size, and evicts other sessions if needed.
                self._cache[id] = entry

    def delete(self, id: SessionId, key: str, expire: float) -> None:
        """Remove ``key`` from the session."""
        now = self._clock()
        with self._lock:
            entry = self._live(id, now)
            if entry is None:
                return
            self._renew(entry, now, expire)
            old = entry.data.pop(key, None)
            if old is None:
                return
            if not entry.data:  # an empty session is no session, as in Redis
                del self._cache[id]
                return
            entry.size -= len(key) + len(old)
            self._cache[id] = entry

    def delete_all(self, id: SessionId) -> None:
        """Remove the whole session."""
        with self._lock:
            self._cache.pop(id, None)

    def extend(self, id: SessionId, expire: float) -> None:
        """Renew the session's expiry, if it exists."""
        now = self._clock()
        with self._lock:
            entry = self._live(id, now)
            if entry is not None:
                self._renew(entry, now, expire)


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS session_expiry (
    id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS session_expiry_expires_at ON session_expiry (expires_at);
CREATE TABLE IF NOT EXISTS session_data (
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (id, key)
) WITHOUT ROWID;
"""
# Renew a session that is still alive; the row count says whether it was.
_SQL_RENEW = "UPDATE session_expiry SET expires_at = ? WHERE id = ? AND expires_at > ?"
# The same few expired sessions, picked by the expiry index, for both deletes of one sweep.
_SQL_EXPIRED = "SELECT id FROM session_expiry WHERE expires_at <= ? ORDER BY expires_at LIMIT ?"


class SQLiteStore:
    """A persistent store in one SQLite file, shared by threads and processes on one machine.

    One row per (session, key), so ``set`` and ``delete`` of one key are single
    statements that never rewrite another key.  The file runs in WAL mode with a
    busy timeout; every operation is one short transaction.  Expired sessions
    read as empty and are swept, a few at a time, as the store is written.

    :param path: the database file; created when missing.  ``':memory:'`` is
        refused: each thread's connection would see its own empty database.
    :param timeout: seconds to wait for another writer's lock before failing.
    :param sweep_every: sweep once every this many writes ...
    :param sweep_batch: ... deleting at most this many expired sessions.
    :param clock: epoch seconds as a float (shared by processes on one file).
    :raises StoreError: when the file cannot be opened or written.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        sweep_every: int = 100,
        sweep_batch: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = os.fspath(path)
        if self.path in ("", ":memory:") or "mode=memory" in self.path:
            raise ValueError(
                f"SQLiteStore needs a file path, got {self.path!r}: an in-memory database is "
                "private to one connection, and this store opens one per thread; "
                "use MemoryStore for sessions in memory"
            )
        self.timeout = _check_seconds(timeout, "timeout", 3600, "an hour, as long as a "
                                      "request should ever wait")
        for name, value in (("sweep_every", sweep_every), ("sweep_batch", sweep_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.sweep_every = sweep_every
        self.sweep_batch = sweep_batch
        self._clock = clock
        self._local = threading.local()
        self._writes = 0
        with self._transaction("open") as db:
            for statement in _SQLITE_SCHEMA.split(";")[:-1]:  # not executescript: it commits
                db.execute(statement)

    def __repr__(self) -> str:
        # No query here: error reporters call repr() on every local variable.
        return f"SQLiteStore({self.path!r}, timeout={self.timeout})"

    def _repr_html_(self) -> str:
        return _html_table("SQLiteStore", [("path", self.path), ("sessions", self._count())])

    def _count(self) -> int | str:
        try:
            with self._transaction("count", write=False) as db:
                row = db.execute(
                    "SELECT count(*) FROM session_expiry WHERE expires_at > ?", (self._clock(),)
                ).fetchone()
            return int(row[0])
        except StoreError:
            return "?"

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork: connections must not cross it)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                self._use_wal(db)
                db.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe in WAL
            except BaseException:
                db.close()
                raise
            local.db, local.pid = db, os.getpid()
        connection: sqlite3.Connection = local.db
        return connection

    def _use_wal(self, db: sqlite3.Connection) -> None:
        """Put the file in WAL mode (readers never block the writer), waiting up to ``timeout``.

        Switching needs the file to itself, and SQLite answers "database is locked"
        at once, ignoring the busy timeout, while another process writes to a new
        file: so retry.  Once in WAL mode (it is stored in the file) nothing waits.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _transaction(self, op: str, write: bool = True) -> _SQLiteTransaction:
        return _SQLiteTransaction(self, op, write)

    def _sweep(self, db: sqlite3.Connection, now: float) -> None:
        """Every ``sweep_every`` writes, delete up to ``sweep_batch`` expired sessions."""
        self._writes += 1  # a lost increment under threads only delays a sweep
        if self._writes % self.sweep_every:
            return
        batch = (now, self.sweep_batch)
        db.execute(f"DELETE FROM session_data WHERE id IN ({_SQL_EXPIRED})", batch)
        db.execute(f"DELETE FROM session_expiry WHERE id IN ({_SQL_EXPIRED})", batch)

    def get(self, id: SessionId, key: str, expire: float) -> Any:
        """Return a copy of the value of ``key``, or None."""
        now = self._clock()
        with self._transaction("get") as db:
            if not db.execute(_SQL_RENEW, (now + expire, id, now)).rowcount:
                return None
            row = db.execute(
                "SELECT value FROM session_data WHERE id = ? AND key = ?", (id, key)
            ).fetchone()
        return None if row is None else decode_json(row[0])

    def get_all(self, id: SessionId, expire: float) -> dict[str, Any]:
        """Return a copy of all the session's data."""
        now = self._clock()
        with self._transaction("get_all") as db:
            if not db.execute(_SQL_RENEW, (now + expire, id, now)).rowcount:
                return {}
            rows = db.execute("SELECT key, value FROM session_data WHERE id = ?", (id,)).fetchall()
        return {key: decode_json(value) for key, value in rows}

    def set(self, id: SessionId, key: str, value: Any, expire: float) -> None:
        """Store ``value`` under ``key``: one upsert of one row, and the expiry."""
        text = encode_json(key, value)
        now = self._clock()
        with self._transaction("set") as db:
            # An expired session that was not swept yet must not come back to life.
            db.execute(
                "DELETE FROM session_data WHERE id = ? AND EXISTS (SELECT 1 FROM session_expiry "
                "WHERE id = ? AND expires_at <= ?)", (id, id, now),
            )
            db.execute(
                "INSERT INTO session_expiry (id, expires_at) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at",
                (id, now + expire),
            )
            db.execute(
                "INSERT INTO session_data (id, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (id, key) DO UPDATE SET value = excluded.value",
                (id, key, text),
            )
            self._sweep(db, now)

    def delete(self, id: SessionId, key: str, expire: float) -> None:
        """Remove ``key`` from the session."""
        now = self._clock()
        with self._transaction("delete") as db:
            db.execute(_SQL_RENEW, (now + expire, id, now))
            db.execute("DELETE FROM session_data WHERE id = ? AND key = ?", (id, key))
            self._sweep(db, now)

    def delete_all(self, id: SessionId) -> None:
        """Remove the whole session."""
        with self._transaction("delete_all") as db:
            db.execute("DELETE FROM session_data WHERE id = ?", (id,))
            db.execute("DELETE FROM session_expiry WHERE id = ?", (id,))

    def extend(self, id: SessionId, expire: float) -> None:
        """Renew the session's expiry, if it exists."""
        now = self._clock()
        with self._transaction("extend") as db:
            db.execute(_SQL_RENEW, (now + expire, id, now))

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            del self._local.db, self._local.pid


class _SQLiteTransaction:
    """``with`` block: one short transaction, rolled back whole on error, as StoreError."""

    __slots__ = ("_db", "_op", "_store", "_write")

    def __init__(self, store: SQLiteStore, op: str, write: bool) -> None:
        self._store, self._op, self._write = store, op, write

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._db = self._store._connection()
            # IMMEDIATE takes the write lock up front, so a transaction never has to
            # be retried half-way because another process wrote first.
            self._db.execute("BEGIN IMMEDIATE" if self._write else "BEGIN")
        except sqlite3.Error as error:
            raise self._error(error) from error
        return self._db

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: object) -> None:
        db = self._db
        if error is None:
            try:
                db.execute("COMMIT")
                return
            except sqlite3.Error as commit_error:
                error = commit_error
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error as rollback_error:  # the disk went away, say
            raise self._error(rollback_error) from error
        if isinstance(error, sqlite3.Error):
            raise self._error(error) from error

    def _error(self, error: sqlite3.Error) -> StoreError:
        return StoreError(f"SQLiteStore at {self._store.path!r}: {self._op} failed: {error}")


def _redis_address(client: Any) -> str:
    """Where a redis-py client connects, for error messages: ``host:port`` or a socket path."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if isinstance(kwargs, dict):
        if "path" in kwargs:
            return f"unix:{kwargs['path']}"
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    nodes = getattr(client, "startup_nodes", None)  # RedisCluster
    if nodes:
        return ",".join(f"{node.host}:{node.port}" for node in nodes)
    return type(client).__name__


def _text(data: str | bytes) -> str:
    return data.decode("utf-8") if isinstance(data, bytes) else data


class RedisStore:
    """A store on Redis, for sessions shared by many servers; Redis' expiry cleans up.

    Each session is one Redis hash (one key, so it works on a cluster), a field
    per session key holding JSON text.  Every write and its expiry renewal go in
    one MULTI/EXEC transaction, so they happen together or not at all.

    :param client: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` the app
        already has (set its ``socket_timeout``: a store that hangs hangs requests).
        ``decode_responses`` may be on or off.
    :param prefix: put before every session id to make the Redis key.
    """

    def __init__(self, client: Any, prefix: str = "") -> None:
        if not callable(getattr(client, "pipeline", None)):
            raise ValueError("client must be a redis.Redis or RedisCluster client (with a "
                             f"pipeline() method), got {type(client).__name__} {client!r}")
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a str, got {type(prefix).__name__} {prefix!r}")
        self.client = client
        self.prefix = prefix
        self.address = _redis_address(client)

    def __repr__(self) -> str:
        return f"RedisStore(address={self.address!r}, prefix={self.prefix!r})"

    def _repr_html_(self) -> str:
        return _html_table("RedisStore", [("address", self.address), ("prefix", self.prefix)])

    def _run(self, op: str, build: Callable[[Any], object]) -> list[Any]:
        """Send the commands ``build`` queues as one transaction; failures become StoreError."""
        try:
            pipe = self.client.pipeline(transaction=True)
            build(pipe)
            results: list[Any] = pipe.execute()
        except (TypeError, ValueError):  # a bad argument of the caller's: Redis is fine
            raise
        except Exception as error:  # redis-py raises its own ConnectionError, TimeoutError...
            raise StoreError(
                f"RedisStore at {self.address}: {op} failed: {type(error).__name__}: {error}"
            ) from error
        return results

    @staticmethod
    def _ms(expire: float) -> int:
        return max(1, math.ceil(expire * 1000))

    def get(self, id: SessionId, key: str, expire: float) -> Any:
        """Return a copy of the value of ``key``, or None (HGET + PEXPIRE)."""
        name = self.prefix + id
        value = self._run("get", lambda p: p.hget(name, key).pexpire(name, self._ms(expire)))[0]
        return None if value is None else decode_json(value)

    def get_all(self, id: SessionId, expire: float) -> dict[str, Any]:
        """Return a copy of all the session's data (HGETALL + PEXPIRE)."""
        name = self.prefix + id
        fields = self._run(
            "get_all", lambda p: p.hgetall(name).pexpire(name, self._ms(expire))
        )[0]
        return {_text(field): decode_json(value) for field, value in fields.items()}

    def set(self, id: SessionId, key: str, value: Any, expire: float) -> None:
        """Store ``value`` under ``key`` (HSET + PEXPIRE)."""
        text = encode_json(key, value)
        name = self.prefix + id
        self._run("set", lambda p: p.hset(name, key, text).pexpire(name, self._ms(expire)))

    def delete(self, id: SessionId, key: str, expire: float) -> None:
        """Remove ``key`` from the session (HDEL + PEXPIRE)."""
        name = self.prefix + id
        self._run("delete", lambda p: p.hdel(name, key).pexpire(name, self._ms(expire)))

    def delete_all(self, id: SessionId) -> None:
        """Remove the whole session (DEL)."""
        name = self.prefix + id
        self._run("delete_all", lambda p: p.delete(name))

    def extend(self, id: SessionId, expire: float) -> None:
        """Renew the session's expiry (PEXPIRE: a no-op for a session that does not exist)."""
        name = self.prefix + id
        self._run("extend", lambda p: p.pexpire(name, self._ms(expire)))



# ============================================================================
# Appendix: check_store, the contract every store passes
# ============================================================================
#
# ``check_store(store)`` runs the Store API's rules against a live store and
# raises AssertionError naming the first one broken.  Every shipped store passes
# it in the tests; run it on a store you write.

_JSON_SAMPLES: tuple[Any, ...] = (
    None, True, False, 0, -7, 2**53, 1.5, -0.25, "", "text", "ünïcødé ✓ \"quoted\"\n",
    [], {}, [1, "2", 3.5, None, True], {"a": [1, {"b": None}], "c": "d"},
)


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 and True and 1.0 are three different values."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same_json, a, b))
    return bool(a == b)


def _expect(ok: bool, name: str, operation: str, expected: str, got: Any) -> None:
    if not ok:
        raise AssertionError(f"{name}.{operation}: expected {expected}, got {got!r}")


def check_store(store: Any, *, expire: float = 0.5, writes: int = 1000) -> None:
    """Check that ``store`` keeps the Store API's contract; raise AssertionError if not.

    Covers missing keys and unknown sessions, JSON round trips of every JSON
    type, copies in and out, non-JSON values refused, ``delete``,
    ``delete_all``, ``extend``, expiry after ``expire`` seconds renewed by every
    operation (it sleeps about that long once), isolation between sessions, and
    concurrent writers on different keys of one session all surviving.  It uses
    fresh random session ids and deletes them at the end.

    :param expire: the short expiry to test with, in seconds; raise it for a store
        whose expiry is coarser.
    :param writes: how many keys each of the four concurrent writers sets.
    """
    name = type(store).__name__
    run = secrets.token_hex(6)
    ids = [f"check_store:{run}:{n}" for n in range(8)]
    a, b, short, renewed, renewed_all, renewed_delete, extended, concurrent = ids
    long = 3600.0
    try:
        # Unknown sessions read as empty, and reading or extending creates nothing.
        _expect(store.get(a, "k", long) is None, name, "get(unknown session, 'k')", "None",
                store.get(a, "k", long))
        _expect(store.get_all(a, long) == {}, name, "get_all(unknown session)", "{}",
                store.get_all(a, long))
        store.extend(a, long)
        store.delete(a, "k", long)
        _expect(store.get_all(a, long) == {}, name, "get_all after extend/delete of an unknown "
                "session", "{} (nothing created)", store.get_all(a, long))

        # Every JSON type round-trips exactly.
        for index, sample in enumerate(_JSON_SAMPLES):
            # A copy goes in: a store that keeps the caller's object must not pass (or
            # change our samples) when its results are mutated below.
            store.set(a, f"v{index}", copy.deepcopy(sample), long)
            got = store.get(a, f"v{index}", long)
            _expect(_same_json(got, sample), name, f"get after set(key, {sample!r})",
                    f"{sample!r} ({type(sample).__name__})", got)
        # Keys are any text; values are JSON, so tuples and int dict keys come back as
        # JSON has them; and what the caller does to its object after set changes nothing.
        odd_keys = {"": "empty key", "a:b/c d": "key with separators"}
        for key, sample in odd_keys.items():
            store.set(a, key, sample, long)
        store.set(a, "tuple", (1, 2), long)
        store.set(a, "int keys", {1: "one"}, long)
        mine = {"roles": ["user"]}
        store.set(a, "mine", mine, long)
        mine["roles"].append("admin")
        for key, expected in [("tuple", [1, 2]), ("int keys", {"1": "one"}),
                              ("mine", {"roles": ["user"]}), *odd_keys.items()]:
            got = store.get(a, key, long)
            _expect(_same_json(got, expected), name, f"get({key!r}) after set", repr(expected),
                    got)
        for key in ("tuple", "int keys", "mine", *odd_keys):
            store.delete(a, key, long)
        everything = {f"v{index}": sample for index, sample in enumerate(_JSON_SAMPLES)}
        got_all = store.get_all(a, long)
        _expect(_same_json(got_all, everything), name, "get_all", repr(everything), got_all)
        _expect(store.get(a, "missing", long) is None, name, "get(missing key)", "None",
                store.get(a, "missing", long))

        # get and get_all return copies: changing them changes nothing stored.
        value = store.get(a, "v14", long)
        value["a"].append("mutated")
        value["new"] = 1
        got_all = store.get_all(a, long)
        got_all["v13"].append("mutated")
        got_all["v0"] = "mutated"
        _expect(_same_json(store.get(a, "v14", long), _JSON_SAMPLES[14]), name,
                "get after mutating an earlier result", "the stored value unchanged (a copy)",
                store.get(a, "v14", long))
        _expect(_same_json(store.get_all(a, long), everything), name,
                "get_all after mutating an earlier result", "the stored data unchanged",
                store.get_all(a, long))

        # Overwrite, and refusal of values that are not JSON (nothing stored).
        store.set(a, "v9", "overwritten", long)
        _expect(store.get(a, "v9", long) == "overwritten", name, "get after overwriting set",
                "'overwritten'", store.get(a, "v9", long))
        for bad in (object(), {1, 2}, float("nan"), b"bytes", "lone surrogate \ud800"):
            try:
                store.set(a, "bad", bad, long)
            except TypeError:
                pass
            else:
                raise AssertionError(f"{name}.set(key, {bad!r}): expected TypeError for a "
                                     "value that is not JSON, nothing raised")
            _expect(store.get(a, "bad", long) is None, name, f"get after a refused set of "
                    f"{type(bad).__name__}", "None (nothing stored)", store.get(a, "bad", long))

        # Isolation between sessions.
        store.set(b, "v9", "other session", long)
        _expect(store.get(a, "v9", long) == "overwritten", name, "get in one session after a set "
                "of the same key in another", "'overwritten'", store.get(a, "v9", long))

        # delete removes one key; delete_all the whole session and nothing else.
        store.delete(a, "v9", long)
        store.delete(a, "never-set", long)
        _expect(store.get(a, "v9", long) is None, name, "get after delete", "None",
                store.get(a, "v9", long))
        _expect(store.get(a, "v10", long) == _JSON_SAMPLES[10], name, "get of another key "
                "after delete", repr(_JSON_SAMPLES[10]), store.get(a, "v10", long))
        store.delete_all(a)
        _expect(store.get_all(a, long) == {}, name, "get_all after delete_all", "{}",
                store.get_all(a, long))
        _expect(store.get(b, "v9", long) == "other session", name, "get in another session "
                "after delete_all", "'other session'", store.get(b, "v9", long))

        # Expiry: set with a short expire ends the session; every operation renews it.
        store.set(short, "k", 1, expire)
        for id in (renewed, renewed_all, renewed_delete):
            store.set(id, "k", 1, long)
        # Renewing to a short expiry: each of these ends too.
        store.get(renewed, "k", expire)
        store.get_all(renewed_all, expire)
        store.delete(renewed_delete, "other", expire)
        store.set(extended, "k", 1, expire)
        store.extend(extended, long)  # renewing to a long expiry: it lives on
        time.sleep(expire * 1.5 + 0.05)
        store.extend(short, long)  # too late: an expired session must not come back
        _expect(store.get_all(short, long) == {}, name, f"get_all {expire * 1.5 + 0.05:.2f}s "
                f"after set(..., expire={expire}) and a late extend", "{} (expired)",
                store.get_all(short, long))
        for id, operation in [(renewed, "get"), (renewed_all, "get_all"),
                              (renewed_delete, "delete")]:
            _expect(store.get(id, "k", long) is None, name, f"get after {operation}(..., "
                    f"expire={expire}) renewed the expiry", "None (expired)",
                    store.get(id, "k", long))
        _expect(store.get(extended, "k", long) == 1, name, "get after extend(..., long) renewed "
                f"a set(..., expire={expire})", "1 (still alive)", store.get(extended, "k", long))
        store.set(short, "fresh", 2, long)
        _expect(store.get_all(short, long) == {"fresh": 2}, name, "get_all after set on an "
                "expired session", "{'fresh': 2} (no old data back)", store.get_all(short, long))

        # Concurrent writers on different keys of one session all survive.
        _check_concurrent_writers(store, name, concurrent, writes, long)
    finally:
        for id in ids:
            store.delete_all(id)


_WRITERS = "wxyz"


def _check_concurrent_writers(store: Any, name: str, id: SessionId, writes: int,
                              expire: float) -> None:
    """Four threads set their own keys of one session at once; every key must be there."""
    start = threading.Barrier(len(_WRITERS))
    errors: list[BaseException] = []

    def writer(label: str) -> None:
        try:
            start.wait()
            for n in range(writes):
                store.set(id, f"{label}{n}", n, expire)
        except BaseException as error:  # reported below, in the calling thread
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a read-modify-write race shows
    try:
        threads = [threading.Thread(target=writer, args=(label,)) for label in _WRITERS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    if errors:
        raise AssertionError(f"{name}.set from {len(_WRITERS)} threads raised "
                             f"{errors[0]!r}") from errors[0]
    data = store.get_all(id, expire)
    lost = [f"{label}{n}" for label in _WRITERS for n in range(writes)
            if f"{label}{n}" not in data]
    _expect(not lost, name, f"get_all after {len(_WRITERS)} concurrent writers set {writes} "
            "keys each", f"all {len(_WRITERS) * writes} keys", f"{len(lost)} lost, e.g. {lost[:3]}")

