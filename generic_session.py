# SPDX-License-Identifier: MIT
# Copyright (c) generic-session for Python contributors (https://spdx.org/licenses/MIT.html)
"""Framework-agnostic web sessions with signed cookies and pluggable per-key stores.

A Python port of Node's ``generic-session``, in one file with no dependency beyond
the standard library (``RedisStore`` takes the redis-py client you give it).  A
session is a random token in a cookie; its data lives in a store, one key at a
time, so concurrent requests of one session never overwrite each other's writes.

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

How to read this file: sections 1-6 follow one request and teach how a session
works; 7 is the same for ASGI; 8 and 9 are reference, for when you pick or write
a store.

1. Types, errors and option checks    6. WSGI and Bottle integration
2. Signing (Keygrip)                  7. ASGI and async
3. Cookies                            8. Shipped stores: Memory, SQLite, Redis (sync, async)
4. The Store API                      9. Appendix: check_store, the contract
5. Sessions (the core: no WSGI in it)

One request, as the middleware sees it::

    Cookie: s=<token>; s.sig=<hmac>            Set-Cookie: s=<token>; s.sig=<hmac>
            |                                                ^
            v                                                |
    Cookies: parse the header -> Keygrip: verify      Cookies: sign, send_prepared
            |                                                ^
            v                                                |
    GenericSession: token verified, or a new one minted ------+
            |            (only once the app first uses the session)
            v
    Store: get / set / delete of one key, one atomic operation each
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

import _thread
import base64
import binascii
import calendar
import copy
import email.utils
import functools
import hashlib
import hmac
import html
import inspect
import json
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, AnyStr, Generic, Protocol, TypeAlias, cast, runtime_checkable

__all__ = [
    "ENVIRON_KEY",
    "TWO_WEEKS",
    "ASGIMiddleware",
    "AsyncGenericSession",
    "AsyncRedisStore",
    "AsyncStore",
    "Callback",
    "CookieSink",
    "Cookies",
    "Environ",
    "GenericSession",
    "Keygrip",
    "LifecycleStore",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "SessionEnded",
    "SessionError",
    "SessionId",
    "SessionOptions",
    "Store",
    "StoreError",
    "ThreadedStore",
    "UnknownSession",
    "WSGIApp",
    "check_async_store",
    "check_store",
    "decode_json",
    "encode_json",
    "middleware",
]

__version__ = "0.1.0"


# ============================================================================
# 1. Types, errors and option checks
# ============================================================================
#
# The names the signatures use, the errors the module raises at run time, and
# one check per option, used by every class that takes that option, so that a
# bad option fails the same way wherever it is given: a wrong *type* is a
# ``TypeError``, a wrong *value* a ``ValueError``, and the message names the
# option, shows what was given and says what is allowed.

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
#: Where a session sends its cookies: ``send(cookie_name, set_cookie_header_value)``.
CookieSink: TypeAlias = Callable[[str, str], None]


class SessionError(Exception):
    """Base class of the errors this module raises at run time."""


class StoreError(SessionError):
    """Raised when a store cannot do an operation: its server is down, its file is locked.

    The message names the store, its address and the operation, never a token,
    a session id or a stored value.  Nothing was half-written: the operation
    either happened whole or not at all.
    """


class UnknownSession(SessionError):
    """Raised by a store's *live* operation when the session is not a live one: it was
    never made by ``create``, or it expired, passed its deadline or was deleted.  The
    store changed nothing.  The session turns it into a fresh session or
    :class:`SessionEnded`; an app never sees it."""


class SessionEnded(SessionError):
    """Raised when a request writes to a session that ended while the request ran: another
    request destroyed or regenerated it, or it expired.  The data is not written anywhere:
    writing it to a fresh session would log the user back in.  Escaping the middleware,
    it becomes a short 400 response that sets no cookie."""


#: The longest expiry: 400 days, where browsers cap a cookie's lifetime (RFC 6265bis).
_MAX_EXPIRE = 400 * 24 * 60 * 60


def _check_seconds(seconds: float, name: str, limit: float, why: str) -> float:
    """Return ``seconds`` if it is a number in (0, limit].

    :raises TypeError: for anything but an int or a float (a bool too).
    :raises ValueError: for a number out of range, nan and inf included.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{name} must be a number of seconds > 0, got "
                        f"{type(seconds).__name__} {seconds!r}")
    # Comparisons, not math.isfinite: they refuse nan and inf and never overflow on huge ints.
    if not 0 < seconds <= limit:
        raise ValueError(f"{name} must be a number of seconds > 0 and at most {limit} "
                         f"({why}), got {seconds!r}")
    return seconds


def _check_count(value: int, name: str, unit: str, least: int = 1) -> int:
    """Return ``value`` if it is an int >= ``least``: TypeError for another type (a bool
    too), ValueError for a smaller int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number of {unit} >= {least}, got "
                        f"{type(value).__name__} {value!r}")
    if value < least:
        raise ValueError(f"{name} must be a whole number of {unit} >= {least}, got {value!r}")
    return value


def _check_expire(expire: float, name: str = "expire") -> float:
    """Check a session lifetime: at most 400 days, the longest browsers keep a cookie."""
    return _check_seconds(expire, name, _MAX_EXPIRE, "400 days, the longest browsers keep a "
                          "cookie")


# RFC 6265 cookie-name is an RFC 7230 token.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A path or domain with these would add attributes or split the header.
_UNSAFE_ATTRIBUTE = re.compile(r"[\x00-\x1f\x7f;]")
_UNSAFE_DOMAIN = re.compile(r"[\x00-\x20\x7f;=,\"\\]")
_SAMESITE = {"lax": "lax", "strict": "strict", "none": "none"}


def _check_str(value: object, name: str, allowed: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str ({allowed}), got {type(value).__name__} {value!r}")
    return value


def _check_cookie_name(name: object, option: str = "cookie_name") -> str:
    """Return ``name`` if it is an RFC 6265 cookie name (a token)."""
    text = _check_str(name, option, "a cookie name such as 's'")
    if not _COOKIE_NAME.fullmatch(text):
        raise ValueError(
            f"{option} {text!r} is not an RFC 6265 token: use letters, digits and "
            "!#$%&'*+-.^_`|~ (no spaces, ';', '=', ',', quotes or control characters)")
    return text


def _check_samesite(samesite: object) -> str | None:
    """Return the SameSite attribute as written (``lax``, ``strict``, ``none``) or None."""
    if samesite is None:
        return None
    text = _check_str(samesite, "samesite", "'Lax', 'Strict', 'None', or None to omit it")
    written = _SAMESITE.get(text.lower())
    if written is None:
        raise ValueError(f"samesite must be 'Lax', 'Strict', 'None' or None, got {samesite!r}")
    return written


def _not_ascii(value: str, name: str, how: str) -> ValueError:
    return ValueError(f"{name} {value!r} is not ASCII, and a Set-Cookie header must be: {how}")


def _check_domain(domain: object) -> str | None:
    """Return the cookie's Domain (an ASCII host name) or None."""
    if domain is None:
        return None
    text = _check_str(domain, "domain", "a host name such as 'example.com', or None")
    if not text.isascii():
        try:
            hint = f"give its IDNA (punycode) form, {text.encode('idna').decode('ascii')!r}"
        except UnicodeError:
            hint = "give its IDNA (punycode) form"
        raise _not_ascii(text, "domain", hint)
    if not text or _UNSAFE_DOMAIN.search(text):
        raise ValueError(f"domain must be a host name such as 'example.com', got {domain!r}")
    return text


def _check_path(path: object) -> str:
    """Return the cookie's Path: ASCII, with no ';' or control characters."""
    text = _check_str(path, "path", "a URL path such as '/'")
    if not text.isascii():
        raise _not_ascii(text, "path", "percent-encode it (urllib.parse.quote)")
    if _UNSAFE_ATTRIBUTE.search(text):
        raise ValueError(f"path may not hold ';' or control characters, got {path!r}")
    return text


def _check_flag(value: object, name: str, allowed: str = "True or False") -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")


def _short(token: str) -> str:
    """The first six characters of a token and an ellipsis: enough to tell sessions apart
    in a repr, too little to use."""
    return token[:6] + "…"


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
# 2. Signing (Keygrip)
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
    :raises TypeError: for keys that are not a list, or a key that is not str or bytes.
    :raises ValueError: for an empty list, an empty key, or an unknown algorithm.
    """

    __slots__ = ("_keyed", "algorithm")

    def __init__(self, keys: Sequence[str | bytes], algorithm: str = "sha1") -> None:
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
            raise TypeError(
                f"keys must be a list of secret strings, newest first, got {type(keys).__name__}"
            )
        if not keys:
            raise ValueError("keys must hold at least one secret key, got an empty list")
        for index, key in enumerate(keys):
            if not isinstance(key, str | bytes):
                raise TypeError(f"keys[{index}] must be str or bytes, got {type(key).__name__}")
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


def _keygrip_of(keys: Keygrip | Sequence[str | bytes] | None) -> Keygrip | None:
    """``keys`` as a :class:`Keygrip` (made and checked now when a list), or None."""
    return keys if keys is None or isinstance(keys, Keygrip) else Keygrip(keys)


# ============================================================================
# 3. Cookies
# ============================================================================
#
# Reading the ``Cookie`` request header and writing ``Set-Cookie`` response
# headers, optionally signed.  Attributes are written in Node's order and case
# (``path``, ``expires``, ``domain``, ``samesite``, ``secure``, ``httponly``) so a
# header can be compared with the one Node's ``cookies`` package writes.
# ``Cookies`` knows nothing of WSGI beyond its convenience constructor: the
# request is a header string, the response a function that takes each header.

_EPOCH_DATE = "Thu, 01 Jan 1970 00:00:00 GMT"
_YEAR_10000 = 253_402_300_800  # epoch seconds: an HTTP date has four digits of year
# A value may not hold controls, space, '"', ',', ';' or '\' (RFC 6265).  Node's
# ``cookies`` package is laxer about values; a session token never needs it.
_COOKIE_VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\')
_COOKIE_VALUE = re.compile(f"[{re.escape(_COOKIE_VALUE_CHARS)}]*")


def _http_date(when: float) -> str:
    """Format epoch seconds as an RFC 1123 date, ``Tue, 01 Jan 2030 00:00:00 GMT``.

    The standard library's: a hand-written one saved 0.13 us a request (bench/overhead.py),
    since the session formats one only once a second (``SessionOptions.attributes``).
    """
    return email.utils.formatdate(int(when), usegmt=True)


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
            if value[-1:] == '"' and value[:1] == '"' and len(value) > 1:
                value = value[1:-1]
            jar[name] = value
    return jar


def _attribute_suffix(path: str, date: str | None, domain: str | None, samesite: str | None,
                      secure: bool, httponly: bool) -> str:
    """``; path=/; expires=...; domain=...; samesite=lax; secure; httponly`` from checked
    attributes (``samesite`` as :func:`_check_samesite` returns it)."""
    suffix = f"; path={path}"
    if date is not None:
        suffix += f"; expires={date}"
    if domain is not None:
        suffix += f"; domain={domain}"
    if samesite is not None:
        suffix += f"; samesite={samesite}"
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


def _header_sink(response: Any) -> CookieSink:
    """Return ``send(cookie_name, header)``, adding one ``Set-Cookie`` header to ``response``."""
    if isinstance(response, list):
        append = response.append
        return lambda _, value: append(("Set-Cookie", value))
    add_header = getattr(response, "add_header", None)  # Bottle
    if callable(add_header):
        return lambda _, value: add_header("Set-Cookie", value)
    add = getattr(getattr(response, "headers", None), "add", None)  # WebOb, Werkzeug
    if callable(add):
        return lambda _, value: add("Set-Cookie", value)
    if callable(response):  # last: a WebOb Response is callable too (a WSGI app)
        sink: CookieSink = response
        return sink
    raise TypeError(
        "response must be a list of WSGI header tuples, an object with add_header(name, value) "
        "(Bottle), one with .headers.add(name, value) (WebOb, Werkzeug), or a function "
        f"send(cookie_name, header), got {type(response).__name__}"
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
        object with ``add_header(name, value)``, one whose ``.headers`` has ``add``,
        or a function ``send(cookie_name, header)``.
    :param keys: a list of secret keys or a :class:`Keygrip`; with keys, ``get`` and
        ``set`` sign by default, as in Node.
    :raises TypeError: for a request or response of none of those kinds.

    Outside WSGI, make one with :meth:`from_header`.
    """

    __slots__ = ("_emit", "_header", "_https", "_jar", "_keys", "_request")

    def __init__(
        self, request: Any, response: Any, keys: Keygrip | Sequence[str | bytes] | None = None
    ) -> None:
        # The environ is read when first needed: middleware may still change it.
        self._request: Mapping[str, Any] | None = _environ_of(request)  # None: from_header
        self._header: str | None = None
        self._https = False
        self._emit = _header_sink(response)
        self._keys = _keygrip_of(keys)
        self._jar: dict[str, str] | None = None

    @classmethod
    def from_header(cls, header: str, send: CookieSink,
                    keys: Keygrip | Sequence[str | bytes] | None = None, *,
                    https: bool = False) -> Cookies:
        """Cookies for any kind of server: the request's ``Cookie`` header as text, and
        ``send(cookie_name, header)`` called with each ``Set-Cookie`` value to add."""
        # The attributes set here, keys included, not by a method __init__ shares nor by
        # _keygrip_of: ~750 and ~350 instructions a request (bench/instructions.py).
        cookies = cls.__new__(cls)
        cookies._request, cookies._header, cookies._https = None, header, https
        cookies._emit, cookies._jar = send, None
        cookies._keys = keys if keys is None or isinstance(keys, Keygrip) else Keygrip(keys)
        return cookies

    @property
    def keys(self) -> Keygrip | None:
        """The :class:`Keygrip` that signs and verifies, or None (read-only)."""
        return self._keys

    @property
    def is_https(self) -> bool:
        """True when the request came over HTTPS (``wsgi.url_scheme``, or ``https=``)."""
        request = self._request
        return self._https if request is None else request.get("wsgi.url_scheme") == "https"

    def __repr__(self) -> str:
        names = sorted(self._cookies())
        return f"Cookies(names={names!r}, signed={self._keys is not None})"

    def _cookies(self) -> dict[str, str]:
        if self._jar is None:
            header = self._header
            if header is None:
                header = self._request.get("HTTP_COOKIE", "")  # type: ignore[union-attr]
            self._jar = _parse_cookie_header(header)
        return self._jar

    def _keygrip(self, name: str) -> Keygrip:
        if self._keys is None:
            raise ValueError(
                f"cookie {name!r} cannot be signed or verified: Cookies was made without keys")
        return self._keys

    def get(self, name: str, signed: bool | None = None) -> str | None:
        """Return the value of cookie ``name``, or None when absent or badly signed.

        With ``signed`` (the default when keys were given) the value counts only
        if ``name.sig`` holds its signature by one of the keys.  A bad signature
        clears the ``.sig`` cookie; one made with an older key is re-signed with
        the newest, as Node's ``cookies`` does.
        """
        value = self._cookies().get(name)
        if signed is None:
            signed = self._keys is not None
        if value is None or not signed:
            return value
        _, _, index = self.read_signed(name)
        if index > 0:
            self.set(name + ".sig", self._keygrip(name).sign(f"{name}={value}"), signed=False)
        elif index < 0:
            if name + ".sig" in self._cookies():
                self.set(name + ".sig", None, signed=False)
            return None
        return value

    def read_signed(self, name: str, shape: re.Pattern[str] | None = None
                    ) -> tuple[str | None, str | None, int]:
        """Return cookie ``name``'s value, its signature and the index of the key that made
        the signature (0: the newest; -1: no key did, or a cookie is missing).

        Unlike :meth:`get` it sends nothing: a caller that re-sends the cookie anyway
        (the session) needs no repair, and can hand a signature made by ``keys[0]``
        back to :meth:`send_prepared` so as not to compute it twice.  With ``shape``, a
        value that does not match it whole gives -1 before any HMAC is computed: a
        forged 250 kB cookie must not cost an HMAC per key.
        """
        # _keygrip and _cookies called only when needed (no keys: it raises; the jar not
        # parsed yet, or empty): ~400 instructions a request (bench/instructions.py).
        keys = self._keys or self._keygrip(name)
        jar = self._jar or self._cookies()
        value, signature = jar.get(name), jar.get(name + ".sig")
        if value is None or signature is None or (shape is not None
                                                  and not shape.fullmatch(value)):
            return value, signature, -1
        return value, signature, keys.index(f"{name}={value}", signature)

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
        :raises TypeError: for an attribute of the wrong type (``samesite=1``).
        :raises ValueError: for a name, value or attribute not allowed in a cookie.
        """
        _check_cookie_name(name, "cookie name")
        if value is not None and not _COOKIE_VALUE.fullmatch(value):
            bad = sorted(set(value) - set(_COOKIE_VALUE_CHARS))
            raise ValueError(f"value of cookie {name!r} has characters not allowed in a cookie: "
                             f"{''.join(bad)!r}; allowed: printable ASCII but space, '\"', ',', "
                             "';' and '\\'")
        if value is None:
            date: str | None = _EPOCH_DATE
        else:
            date = None if expires is None else _http_date(_expires_seconds(expires))
        _check_flag(secure, "secure")
        _check_flag(httponly, "httponly")
        suffix = _attribute_suffix(_check_path(path), date, _check_domain(domain),
                                   _check_samesite(samesite), secure, httponly)
        self.send_prepared(name, value, suffix,
                           signed=self._keys is not None if signed is None else signed)

    def send_prepared(self, name: str, value: str | None, attributes: str, *,
                      signed: bool, signature: str | None = None) -> None:
        """Send ``name=value`` with ``attributes`` as given, and ``name.sig`` when signed.

        For a caller that has checked the name, the value and the attributes once
        (``'; path=/; ...'``, as :meth:`set` writes them) and sends them on every
        request: the session does.  Nothing is checked here.  ``signature``, when
        given, is the signature of ``name=value`` by ``keys[0]``; otherwise it is
        computed.  ``value=None`` clears the cookie and its signature.
        """
        self._emit(name, f"{name}={value or ''}{attributes}")
        if not signed:
            return
        if value is None:
            signature = ""  # clearing the cookie clears its signature too
        elif signature is None:
            signature = self._keygrip(name).sign(f"{name}={value}")
        self._emit(name + ".sig", f"{name}.sig={signature}{attributes}")


# ============================================================================
# 4. The Store API
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


#: The Store API's methods, which a store must have.
_STORE_METHODS = ("get", "get_all", "set", "delete", "delete_all", "extend")


@runtime_checkable
class LifecycleStore(Store, Protocol):
    """The optional operations that let a store keep the session lifecycle itself.

    A *live* session is one made by :meth:`create` that has not expired (idle for
    ``expire`` seconds, or past its deadline) nor been deleted; data written by the
    plain Node operations alone does not make a session live.  With ``live=True``
    an operation acts only on a live session, renewing its idle expiry (never past
    its deadline), and otherwise raises :class:`UnknownSession` and changes nothing;
    with ``live=False`` (the default) it is the plain Node operation.  Each is one
    atomic operation, in the same round trips as the plain one.  The lifecycle's
    own data (liveness, deadline) is invisible to ``get`` and ``get_all``.  Every
    shipped store has these; a store with the six operations only still works,
    with the fallbacks the README describes.
    """

    def create(self, id: SessionId, expire: float, lifetime: float | None = None) -> None:
        """Make ``id`` a live session with no data: it expires after ``expire`` idle
        seconds, and (unless ``lifetime`` is None) ``lifetime`` seconds from now at the
        latest, however active it is.  Whatever ``id`` held before is gone."""

    def get(self, id: SessionId, key: str, expire: float, *, live: bool = False) -> Any:
        """:meth:`Store.get`; with ``live``, only on a live session."""

    def get_all(self, id: SessionId, expire: float, *, live: bool = False) -> dict[str, Any]:
        """:meth:`Store.get_all`; with ``live``, only on a live session."""

    def set(self, id: SessionId, key: str, value: Any, expire: float, *,
            live: bool = False) -> None:
        """:meth:`Store.set`; with ``live``, only on a live session."""

    def delete(self, id: SessionId, key: str, expire: float, *, live: bool = False) -> None:
        """:meth:`Store.delete`; with ``live``, only on a live session."""

    def extend(self, id: SessionId, expire: float, *, live: bool = False) -> None:
        """:meth:`Store.extend`; with ``live``, only on a live session."""

    def incr(self, id: SessionId, key: str, amount: int, expire: float, *,
             live: bool = False) -> int:
        """Add ``amount`` to the integer under ``key`` (a missing key counts as 0) in one
        atomic operation and return the sum.

        :raises TypeError: when ``key`` holds a value that is not an integer, naming
            the key (and never the value); nothing changes.
        :raises ValueError: when the sum leaves the signed 64-bit range (Redis'), naming
            the key; nothing changes.
        """

    def rename(self, id: SessionId, new_id: SessionId, expire: float) -> float | None:
        """Move the live session ``id``, its data and its deadline, to ``new_id`` (live
        from now on, its idle expiry renewed), and end ``id``; return the seconds left
        before the deadline, or None when it has none.  No other operation sees the
        session half-moved.

        :raises UnknownSession: when ``id`` is not live; nothing changes.
        """


#: The lifecycle operations beyond the Store API's six.
_LIFECYCLE_METHODS = ("create", "incr", "rename")

#: The most a read lets a session's stored expiry lag behind ``now + expire``: a minute.
_RENEW_SLACK_MAX = 60.0


def _renew_slack(expire: float) -> float:
    """How far a session's stored expiry may be off ``now + expire`` before a read renews it.

    The smaller of a minute and 1% of ``expire``: a read whose renewal is not due
    writes nothing, so most reads of a busy session are plain reads, and the idle
    timeout still holds to within this slack (a session idle for ``expire`` seconds
    has ended; one idle for ``expire - slack`` seconds has not).  ``SQLiteStore``
    applies it to its writes too, where a renewal is two more rows written.  A store
    that renews on every operation has no slack at all, which the contract allows too.
    """
    return min(_RENEW_SLACK_MAX, expire / 100)

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
# 5. Sessions
# ============================================================================
#
# A session is a token in a cookie and the data a store keeps under
# ``id_prefix + token``.  This is the core both front doors share, and it knows
# nothing of WSGI or ASGI: it reads a ``Cookie`` header (through a
# :class:`Cookies`), asks "is this request HTTPS?" when it starts, makes store
# operations through the store it is given, and hands its ``Set-Cookie``
# values to the sink of its ``Cookies``.  Options are checked once, as a
# :class:`SessionOptions`; a middleware shares one among all its requests.

# 30 random bytes in base64: ours are URL-safe, Node's use '+' and '/'; both pass.
_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{40}")
_TOKEN_BYTES = 30


def _new_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(_TOKEN_BYTES)).decode("ascii")


@dataclass(frozen=True, kw_only=True, eq=False)
class SessionOptions:
    """The options of a session, checked once: a middleware makes one and shares it.

    :param keys: secret keys (newest first) or a :class:`Keygrip`: sign the cookie.
    :param expire: seconds of inactivity before the session ends (two weeks; at
        most 400 days, the longest a browser keeps a cookie).
    :param max_lifetime: seconds after it was issued at which the session ends
        however active it is, enforced by the store; None (the default): no limit.
    :param strict: adopt only tokens the store holds as live sessions (the
        default); ``False`` adopts any well-formed token, as Node does.
    :param persistent: send the cookie with an ``Expires`` (the default); ``False``
        sends a browser-session cookie (the server's limits still apply).
    :param cookie_name: the cookie's name (``s``; the signature goes in ``s.sig``).
    :param id_prefix: put before the token to make the store's id (``session:``).
    :param path: the cookie's Path (``'/'``).
    :param secure: ``None`` sets Secure when the request came over HTTPS.
    :param samesite: ``'Lax'`` (default), ``'Strict'``, ``'None'``, or None to omit it.
    :param domain: the cookie's Domain (ASCII: the IDNA form of a name), or None
        for the host that set it.
    :param clock: epoch seconds, for the cookie's Expires (inject one in tests).
    :raises TypeError: for an option of the wrong type, naming it.
    :raises ValueError: for an option of the right type and a wrong value, naming it.
    """

    keys: Keygrip | Sequence[str | bytes] | None = field(default=None, repr=False)  # secret
    expire: float = TWO_WEEKS
    max_lifetime: float | None = None
    strict: bool = True
    persistent: bool = True
    cookie_name: str = "s"
    id_prefix: str = "session:"
    path: str = "/"
    secure: bool | None = None
    samesite: str | None = "Lax"
    domain: str | None = None
    clock: Callable[[], float] = time.time
    #: The :class:`Keygrip` made from ``keys`` (None: unsigned cookies).
    keygrip: Keygrip | None = field(init=False)  # its repr shows no key
    #: Whether every request that uses the session re-sends its cookie, with an
    #: ``Expires`` moved ``expire`` ahead: a persistent cookie with no deadline.
    sliding: bool = field(init=False, repr=False)
    # (expires, secure, attributes): the cookie's attributes, made once a second.
    _attributes: list[tuple[int | None, bool, str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        keygrip = _keygrip_of(self.keys)
        _check_expire(self.expire)
        _check_flag(self.strict, "strict")
        _check_flag(self.persistent, "persistent")
        if self.max_lifetime is not None:
            _check_expire(self.max_lifetime, "max_lifetime")
            if not self.strict:
                raise ValueError("max_lifetime needs strict=True: the store enforces it on "
                                 "the sessions it issued, and strict=False adopts any token")
        name = _check_cookie_name(self.cookie_name)
        _check_str(self.id_prefix, "id_prefix", "'' for the bare token")
        path = _check_path(self.path)
        samesite = _check_samesite(self.samesite)
        if self.secure is not None:
            _check_flag(self.secure, "secure", "True, False or None (automatic)")
        domain = _check_domain(self.domain)
        # Browsers match these prefixes case-insensitively (RFC 6265bis).
        prefixed = name.lower().startswith(("__host-", "__secure-"))
        if self.secure is False and (prefixed or samesite == "none"):
            why = "a __Host-/__Secure- cookie_name" if prefixed else "samesite='None'"
            raise ValueError(f"secure=False is not allowed with {why}: browsers drop such cookies")
        if name.lower().startswith("__host-") and (domain is not None or path != "/"):
            raise ValueError(f"domain must be None and path '/' for cookie_name {name!r}: "
                             "__Host- cookies are bound to the host that set them")
        if not callable(self.clock):
            raise TypeError(f"clock must be a function returning epoch seconds, got "
                            f"{type(self.clock).__name__} {self.clock!r}")
        setattr_ = object.__setattr__  # frozen: the derived fields are set once, here
        setattr_(self, "keygrip", keygrip)
        setattr_(self, "sliding", self.persistent and self.max_lifetime is None)
        # Prefixed and SameSite=None cookies are always Secure.
        setattr_(self, "secure", True if prefixed or samesite == "none" else self.secure)
        setattr_(self, "_attributes", [(-1, False, "")])

    def attributes(self, secure: bool, deadline: float | None = None) -> str:
        """The session cookie's attributes, ``'; path=/; expires=...; ...; httponly'``.

        ``expires`` is ``expire`` from now, or ``deadline`` (epoch seconds, the
        session's absolute end) when there is one; none for a cookie that is not
        ``persistent``.
        """
        if not self.persistent:
            expires: int | None = None
        elif deadline is not None:
            expires = int(deadline)
        else:
            expires = int(self.clock() + self.expire)
        cache = self._attributes
        made = cache[0]
        if made[0] == expires and made[1] is secure:
            return made[2]
        text = _attribute_suffix(self.path, None if expires is None else _http_date(expires),
                                 self.domain, _check_samesite(self.samesite), secure, True)
        # Made once a second rather than per request: saves ~1.9 us a request
        # (bench/overhead.py).  One tuple, swapped whole: safe across threads.
        cache[0] = (expires, secure, text)
        return text

    def check_store(self, store: object) -> None:
        """Refuse a store that cannot keep these sessions.

        :raises TypeError: for an object without the Store API's six methods.
        :raises ValueError: for a :class:`MemoryStore` whose ``max_age`` is shorter
            than ``expire``: it would end sessions before their time.
        """
        for method in _STORE_METHODS:
            if not callable(getattr(store, method, None)):
                raise TypeError(f"store {store!r} has no {method}() method: see the Store API")
        if isinstance(store, MemoryStore) and store.max_age < self.expire:
            raise ValueError(f"expire={self.expire} is longer than the MemoryStore's "
                             f"max_age={store.max_age}: sessions would end after max_age; "
                             "raise max_age or lower expire")


# The reserved key under which a session keeps, in a store with the six Node
# operations only, the mark that it issued the session (and its deadline).  The
# lifecycle stores keep that apart from the data; users cannot set this key.
_ISSUED_KEY = "\x00generic_session"


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"session key must be a str, got {type(key).__name__}: {key!r}")
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise TypeError(f"session key {key!r} is not valid Unicode text "
                            "(it holds a lone surrogate)") from None
    elif key == _ISSUED_KEY:
        raise ValueError(f"session key {key!r} is reserved for the session's own use")
    return key


def _call_back(callback: Callback, operation: Callable[..., Any], *args: Any) -> Any:
    """Run ``operation(*args)`` for a Node-style caller: hand ``callback(error, result)``
    the outcome instead of raising, and return the result (None after an error)."""
    try:
        result = operation(*args)
    except Exception as error:
        callback(error, None)
        return None
    callback(None, result)
    return result


_LIFECYCLE_TYPES: dict[type, bool] = {}


def _has_lifecycle(store: object) -> bool:
    """Whether ``store`` has the optional lifecycle operations (cached by its type)."""
    known = _LIFECYCLE_TYPES.get(type(store))
    if known is not None:
        return known
    if isinstance(store, ThreadedStore | _Blocking):  # wrappers: it depends on the store inside
        return store.lifecycle
    known = all(callable(getattr(store, name, None)) for name in _LIFECYCLE_METHODS)
    _LIFECYCLE_TYPES[type(store)] = known
    return known


# The states of a session within one request.  A *candidate* is the token of the
# request's cookie, well formed and signed, that the store has not confirmed yet:
# the first store operation does (in the same round trip, with a lifecycle store).
# *Cleared*: its data and id were deleted by this request, which goes on with a new
# session if it uses it again.
_UNSTARTED, _CANDIDATE, _LIVE, _ENDED = "not started", "candidate", "live", "ended"
_CLEARED = "cleared"

#: One store call a plan asks its driver for: ``(method name, args, keyword args)``.
_Call: TypeAlias = tuple[str, tuple[Any, ...], dict[str, Any]]
#: A plan: the decisions of one session operation, yielding the store calls it needs
#: and receiving their results (or their exceptions, thrown in), returning its own.
_Plan: TypeAlias = Generator[_Call, Any, Any]
_LIVE_ONLY: dict[str, Any] = {"live": True}
_PLAIN: dict[str, Any] = {}


class _SessionCore:
    """What the sync and the async session share: one request's session and every
    decision of its lifecycle, with no I/O.

    Each operation is a *plan*, a generator that yields the store calls it needs
    (sans-IO, as h11 is for HTTP): :class:`GenericSession` makes them with plain
    calls, :class:`AsyncGenericSession` with ``await``.  Only the commonest case,
    one operation on a session already live, skips the plan, in each class, for
    speed.
    """

    __slots__ = ("_cookies", "_deadline", "_https", "_id", "_lifecycle", "_resend",
                 "_signature", "_state", "_token", "options", "store")

    def _bind(self, store: Any, options: SessionOptions, cookies: Cookies,
              https: Callable[[], bool]) -> None:
        self.store = store
        self.options = options
        self._cookies = cookies
        self._https = https
        # _has_lifecycle's cache read here: ~600 instructions a request (bench/instructions.py).
        # Wrapped stores (ThreadedStore) are not in the cache: they take the call.
        known = _LIFECYCLE_TYPES.get(type(store))
        self._lifecycle = options.strict and (_has_lifecycle(store) if known is None else known)
        self._state = _UNSTARTED
        self._token: str | None = None
        self._id = ""
        self._signature: str | None = None
        self._resend = False
        self._deadline: float | None = None

    # -- attributes ---------------------------------------------------------------------------

    @property
    def cookies(self) -> Cookies:
        """The :class:`Cookies` this session reads and writes its cookie with."""
        return self._cookies

    @property
    def expire(self) -> float:
        """Seconds of inactivity before the session ends."""
        return self.options.expire

    @property
    def started(self) -> bool:
        """True once the app has used the session: it has read its token or issued one."""
        return self._state is not _UNSTARTED

    @property
    def ended(self) -> bool:
        """True once the session was destroyed, or found ended by another request."""
        return self._state is _ENDED

    def _describe(self) -> str:
        name = type(self).__name__
        if self._token is None:
            return f"{name}(<{self._state}>, expire={self.expire}, store={self.store!r})"
        short = self.options.id_prefix + _short(self._token)
        return f"{name}(id={short!r}, {self._state}, expire={self.expire}, store={self.store!r})"

    def _table(self, data: Any) -> str:
        """The HTML table of the session for Jupyter, with ``data`` as read."""
        options = self.options
        name = type(self).__name__
        if self._token is None:
            return _html_table(f"{name} ({self._state})", [("store", repr(self.store))])
        attributes = options.attributes(self._secure(), self._deadline).split("; ")[1:]
        attributes = [item for item in attributes if not item.startswith("expires=")]
        lifetime = "none" if options.max_lifetime is None else f"{options.max_lifetime} s"
        return _html_table(name, [
            ("id", options.id_prefix + _short(self._token)),
            ("state", self._state),
            ("cookie", f"{options.cookie_name}=…; {'; '.join(attributes)}"),
            ("signed", f"yes: {options.cookie_name}.sig" if options.keygrip else "no"),
            ("expire", f"{options.expire} s (idle)"),
            ("max_lifetime", lifetime),
            ("store", repr(self.store)),
            ("data", json.dumps(data, ensure_ascii=False) if isinstance(data, dict) else data),
        ])

    # -- the cookie -----------------------------------------------------------------------------

    def _read_token(self) -> tuple[str | None, str | None]:
        """The cookie's token and, when ``keys[0]`` made it, its signature; None when the
        cookie is missing, malformed or badly signed."""
        options = self.options
        if options.keygrip is None:
            token = self._cookies.get(options.cookie_name, signed=False)
            return (token, None) if token is not None and _TOKEN.fullmatch(token) else (None, None)
        # The shape is checked first: a forged 250 kB cookie costs no HMAC.
        token, signature, index = self._cookies.read_signed(options.cookie_name, _TOKEN)
        if index < 0:
            return None, None
        # Re-sending the cookie needs its signature by keys[0]: reuse the one just
        # verified rather than compute the same HMAC again (bench: ~1.2 us a request).
        return token, signature if index == 0 else None

    def _secure(self) -> bool:
        """Whether the cookie is Secure: as configured, or when the request came over HTTPS."""
        secure = self.options.secure
        return self._https() if secure is None else secure

    def _send_cookie(self, token: str, signature: str | None = None) -> None:
        options = self.options
        self._cookies.send_prepared(
            options.cookie_name, token, options.attributes(self._secure(), self._deadline),
            signed=options.keygrip is not None, signature=signature)

    def _clear_cookie(self) -> None:
        options = self.options
        self._cookies.set(options.cookie_name, None, path=options.path, domain=options.domain,
                          samesite=options.samesite, secure=self._secure(), httponly=True,
                          signed=options.keygrip is not None)

    def _live_now(self) -> None:
        """The candidate is live: (re)send its cookie where needed.

        Re-sending only slides the cookie's expiry or re-signs it with the newest key;
        the browser's cookie still works without it.  So when the response has
        already started, it is skipped rather than failing an operation the store
        has already carried out (the app would be told a stored write failed).
        """
        self._state = _LIVE
        if self._resend:
            self._resend = False
            # Not contextlib.suppress: its object and calls cost ~4,000 instructions a
            # request more (bench/instructions.py).
            try:  # noqa: SIM105
                self._send_cookie(self._token, self._signature)  # type: ignore[arg-type]
            except SessionError:  # the headers are out: see above
                pass

    def _ended(self, name: str, write: bool) -> Any:
        """What an operation on an ended session gives: nothing read, no write."""
        if write:
            raise SessionEnded(
                f"session.{name} refused: the session ended while this request ran (another "
                "request destroyed or regenerated it, or it expired); nothing was written")
        return {} if name == "get_all" else None

    def _new_deadline(self) -> float | None:
        lifetime = self.options.max_lifetime
        return None if lifetime is None else self.options.clock() + lifetime

    # -- the plans ------------------------------------------------------------------------------

    def _start(self) -> _Plan:
        """Read the cookie's token as a candidate (strict), adopt it (Node's way), or
        issue a new session when the cookie holds none (or was cleared)."""
        if self._state is _CLEARED:
            yield from self._issue()
            return
        if self._state is _UNSTARTED and not self._adopt():
            yield from self._issue()

    def _adopt(self) -> bool:
        """An unstarted session takes its cookie's token: as a candidate (strict) or live
        (Node's way); False, changing nothing, when the cookie holds none."""
        token, signature = self._read_token()
        if token is None:
            return False
        options = self.options
        self._token, self._id = token, options.id_prefix + token
        self._signature = signature
        # A cookie signed by an older key is re-signed; a sliding one re-sent.
        self._resend = options.sliding or (options.keygrip is not None and signature is None)
        if options.strict:
            self._state = _CANDIDATE
        else:
            self._live_now()
        return True

    def _issue(self) -> _Plan:
        """Start a new session: a new token, its cookie sent, the store told (strict)."""
        options = self.options
        token = _new_token()
        id = options.id_prefix + token
        self._deadline = self._new_deadline()
        # The cookie first: a session whose cookie cannot be sent stores nothing.
        self._send_cookie(token)
        if self._lifecycle:
            yield "create", (id, options.expire, options.max_lifetime), _PLAIN
        elif options.strict:  # six operations only: a mark that we issued it
            yield "set", (id, _ISSUED_KEY, {"deadline": self._deadline}, options.expire), _PLAIN
        self._token, self._id, self._signature = token, id, None
        self._resend = False
        self._state = _LIVE

    def _confirm(self) -> _Plan:
        """Make sure the session is live: ask the store about a candidate (one call)."""
        yield from self._start()
        if self._state is not _CANDIDATE:
            return
        if self._lifecycle:
            try:
                yield "extend", (self._id, self.options.expire), _LIVE_ONLY
            except UnknownSession:
                yield from self._issue()
                return
        elif not (yield from self._issued_here()):
            yield from self._issue()
            return
        self._live_now()

    def _issued_here(self) -> Generator[_Call, Any, bool]:
        """For a store with the six operations only: whether the candidate carries our
        issue mark and has not passed its deadline (the fallback's one extra read)."""
        mark = yield "get", (self._id, _ISSUED_KEY, self.options.expire), _PLAIN
        if not isinstance(mark, dict):
            return False
        deadline = mark.get("deadline")
        if isinstance(deadline, int | float):
            if self.options.clock() >= deadline:
                yield "delete_all", (self._id,), _PLAIN
                return False
            self._deadline = float(deadline)
        return True

    def _operate(self, name: str, args: tuple[Any, ...], write: bool) -> _Plan:
        """``store.<name>(id, *args, expire)`` under the lifecycle rules.

        On a candidate the operation also confirms it (a lifecycle store answers
        :class:`UnknownSession` for a token it does not hold live: then a new
        session is issued, empty).  On a session that ended while the request ran
        a write raises :class:`SessionEnded`, a read finds nothing.
        """
        yield from self._start()
        expire = self.options.expire
        if not self._lifecycle:
            if self._state is _CANDIDATE:
                yield from self._confirm()
            elif self._state is _ENDED:
                return self._ended(name, write)
            result = yield name, (self._id, *args, expire), _PLAIN
            if name == "get_all" and self.options.strict:
                result.pop(_ISSUED_KEY, None)
            return result
        if self._state is _ENDED:
            return self._ended(name, write)
        try:
            result = yield name, (self._id, *args, expire), _LIVE_ONLY
        except UnknownSession:
            if self._state is _LIVE:
                self._state = _ENDED  # destroyed, regenerated or expired meanwhile
                return self._ended(name, write)
            return (yield from self._replace_candidate(name, args, write))
        if self._state is _CANDIDATE:
            self._live_now()
        return result

    def _replace_candidate(self, name: str, args: tuple[Any, ...], write: bool) -> _Plan:
        """The store does not hold the candidate live: issue a new session, empty, and
        make the operation there (a read finds nothing)."""
        yield from self._issue()
        if not write:
            return {} if name == "get_all" else None
        return (yield name, (self._id, *args, self.options.expire), _LIVE_ONLY)

    def _delete_all(self) -> _Plan:
        if not self.options.strict:  # Node's: the id stays, now empty
            yield from self._start()
            yield "delete_all", (self._id,), _PLAIN
            return
        if self._state is _UNSTARTED:
            token, _ = self._read_token()  # no need to ask the store: it goes either way
            if token is not None:
                self._token, self._id = token, self.options.id_prefix + token
                self._state = _CANDIDATE
        if self._state is not _CANDIDATE and self._state is not _LIVE:
            return
        yield "delete_all", (self._id,), _PLAIN
        # The id is no longer live: other requests of the session find it ended, while
        # this one, which asked for it, goes on with a fresh session at its next
        # operation (as the next request would).
        self._state = _CLEARED

    def _destroy(self) -> _Plan:
        if self._state is _UNSTARTED:
            token, _ = self._read_token()
            if token is not None:
                self._token, self._id = token, self.options.id_prefix + token
        if self._token is not None and self._state is not _ENDED:
            yield "delete_all", (self._id,), _PLAIN
        self._clear_cookie()
        self._state = _ENDED

    def _regenerate(self, keep_data: bool) -> _Plan:
        _check_flag(keep_data, "keep_data")
        yield from self._start()
        if self._state is _CANDIDATE and not self._lifecycle:
            yield from self._confirm()
        if self._state is _ENDED or self._token is None:
            yield from self._issue()  # nothing to keep: a fresh session
            return
        options = self.options
        old = (self._token, self._id, self._signature, self._deadline, self._state)
        token = _new_token()
        id = options.id_prefix + token
        if not keep_data:
            self._deadline = self._new_deadline()
        self._send_cookie(token)  # raises SessionError, changing nothing, if headers are out
        try:
            self._deadline = yield from self._move(old[1], id, keep_data)
        except UnknownSession:  # the old id was not live after all: nothing to keep
            yield from self._issue()
            return
        except BaseException:
            # The old session is whole: send its cookie again (the last one sent wins).
            self._token, self._id, self._signature, self._deadline, self._state = old
            self._send_cookie(old[0], old[2])
            raise
        self._token, self._id, self._signature, self._state = token, id, None, _LIVE
        if keep_data and self._deadline is not None and options.persistent:
            self._send_cookie(token)  # now that the deadline is known: Expires = deadline

    def _move(self, old: SessionId, new: SessionId,
              keep_data: bool) -> Generator[_Call, Any, float | None]:
        """Move (or not) the data of ``old`` to ``new``, end ``old``; return the deadline."""
        options = self.options
        expire = options.expire
        if self._lifecycle and keep_data:
            left = yield "rename", (old, new, expire), _PLAIN
            return None if left is None else options.clock() + left
        deadline = self._deadline
        if self._lifecycle:
            yield "create", (new, expire, options.max_lifetime), _PLAIN
        else:
            data = (yield "get_all", (old, expire), _PLAIN) if keep_data else {}
            if options.strict:
                data[_ISSUED_KEY] = {"deadline": deadline}
            for key, value in data.items():  # not atomic: the six operations cannot be
                yield "set", (new, key, value, expire), _PLAIN
        yield "delete_all", (old,), _PLAIN
        return deadline

    def _one_call(self, name: str) -> bool:
        """Whether ``name``, on a live session of a store without the lifecycle operations,
        is the one store call (a lifecycle store's always is): a strict ``get_all``
        also drops the issue mark."""
        return not (name == "get_all" and self.options.strict)

    @staticmethod
    def _check_incr(store: object, amount: int) -> None:
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"amount must be an int, got {type(amount).__name__} {amount!r}")
        if not callable(getattr(store, "incr", None)):
            raise TypeError(f"session.incr needs a store with an incr() operation, and "
                            f"{type(store).__name__} has none (see LifecycleStore)")


#: The C lock itself: ``threading.RLock()`` is a Python function around it, ~1,600
#: instructions more per request (bench/instructions.py).
_RLock = _thread.RLock


class GenericSession(_SessionCore):
    """The session of one request: a token in a cookie, its data in a store.

    :param request: a WSGI environ, or an object with ``.environ``.
    :param response: where ``Set-Cookie`` goes (see :class:`Cookies`).
    :param store: any object with the Store API (:class:`Store`).
    :param cookies: a :class:`Cookies` to use instead of making one; its keys (if any)
        sign the session, so ``keys`` must not be given too.
    :param keys, expire, max_lifetime, strict, persistent, cookie_name, id_prefix, path,
        secure, samesite, domain, clock: the options, as :class:`SessionOptions`
        describes them.
    :raises TypeError: for an option of the wrong type, naming it.
    :raises ValueError: for a bad option value, naming it.

    Made directly, the session reads its token (checking with the store that it
    is live) or issues one, and sends the cookie at once, as Node's does (it adds
    no ``Vary: Cookie``: add it to your response, as the middleware does).  A
    middleware makes each request's session with :meth:`lazy` instead.  Every
    method renews the expiry in the store, and also takes a keyword-only
    ``callback(error, result)`` for code ported from Node; with it, errors go to
    the callback instead of being raised.

    A session is also a mapping, each operation the one store operation it
    names: ``session["k"]`` (``KeyError`` when absent), ``session["k"] = v``,
    ``del session["k"]``, ``"k" in session``; ``len()`` and iteration read the
    whole session (``get_all``).
    """

    __slots__ = ("_lock",)
    _lock: _thread.RLock  # set by __init__ and by lazy(), before any operation

    def __init__(
        self,
        request: Any,
        response: Any,
        store: Store,
        *,
        cookies: Cookies | None = None,
        keys: Keygrip | Sequence[str | bytes] | None = None,
        expire: float = TWO_WEEKS,
        max_lifetime: float | None = None,
        strict: bool = True,
        persistent: bool = True,
        cookie_name: str = "s",
        id_prefix: str = "session:",
        path: str = "/",
        secure: bool | None = None,
        samesite: str | None = "Lax",
        domain: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cookies is not None:
            if keys is not None:
                raise ValueError("keys and cookies are given together: the cookies' own keys "
                                 "sign and verify, so make it Cookies(request, response, keys)")
            keys = cookies.keys  # the session is signed exactly when its cookies are
        options = SessionOptions(keys=keys, expire=expire, max_lifetime=max_lifetime,
                                 strict=strict, persistent=persistent, cookie_name=cookie_name,
                                 id_prefix=id_prefix, path=path, secure=secure,
                                 samesite=samesite, domain=domain, clock=clock)
        options.check_store(store)
        if cookies is None:
            cookies = Cookies(request, response, options.keygrip)
        https = _environ_of(request).get("wsgi.url_scheme") == "https"
        self._bind(store, options, cookies, lambda: https)
        self._lock = _RLock()
        self._drive(self._confirm())

    @classmethod
    def lazy(cls, store: Store, options: SessionOptions, cookies: Cookies, *,
             https: Callable[[], bool]) -> GenericSession:
        """A session that reads its cookie and sends one only when first used.

        What a middleware makes for each request: a request that never touches its
        session costs no store access and gets no cookie.  ``cookies`` reads the
        request's header and sends to the response; ``https()`` is asked when the
        session starts, so that a proxy fix applied after the middleware counts.
        ``options`` must be signed by the same keys as ``cookies``; the store was
        checked with :meth:`SessionOptions.check_store`.
        """
        session = cls.__new__(cls)
        session._bind(store, options, cookies, https)
        # Two threads of one request may touch a new session at once: one token only.
        # Set here and in __init__, not by a _bind of this class's own: a frame less,
        # ~200 instructions a request (~480 for the ASGI session; bench/instructions.py).
        session._lock = _RLock()
        return session

    def _drive(self, plan: _Plan) -> Any:
        """Run ``plan``, making each store call it asks for; one plan at a time."""
        store = self.store
        with self._lock:
            try:
                name, args, kwargs = next(plan)
                while True:
                    try:
                        result = getattr(store, name)(*args, **kwargs)
                    except BaseException as error:  # the plan decides: it may undo, or not
                        name, args, kwargs = plan.throw(error)
                    else:
                        name, args, kwargs = plan.send(result)
            except StopIteration as done:
                return done.value

    def _operation(self, name: str, args: tuple[Any, ...], write: bool) -> Any:
        # Live already: one store call, no plan (~0.9 us a request, bench/overhead.py).
        if self._state is _LIVE and (self._lifecycle or self._one_call(name)):
            try:
                return getattr(self.store, name)(self._id, *args, self.options.expire,
                                                 **(_LIVE_ONLY if self._lifecycle else _PLAIN))
            except UnknownSession:
                self._state = _ENDED  # destroyed, regenerated or expired meanwhile
                return self._ended(name, write)
        if self._state is _UNSTARTED and self._lifecycle:
            # The first operation inline, its live call confirming the cookie's token, not
            # by the plan generator: saves ~0.6 us a request (bench/overhead.py).
            with self._lock:
                if self._state is _UNSTARTED and self._adopt():
                    try:
                        result = getattr(self.store, name)(self._id, *args,
                                                           self.options.expire, live=True)
                    except UnknownSession:
                        return self._drive(self._replace_candidate(name, args, write))
                    self._live_now()
                    return result
        return self._drive(self._operate(name, args, write))

    @property
    def token(self) -> str:
        """The random token in the cookie (40 characters); reading it starts the session."""
        if self._state is not _LIVE:
            self._drive(self._confirm())
        return self._token  # type: ignore[return-value]  # _confirm set it

    @property
    def id(self) -> SessionId:
        """The id the store knows the session by: ``id_prefix + token``."""
        if self._state is not _LIVE:
            self._drive(self._confirm())
        return self._id

    def __repr__(self) -> str:
        return self._describe()

    def _repr_html_(self) -> str:
        if self._token is None:
            return self._table(None)
        try:  # a read, which renews the expiry as every read does
            data: Any = self.store.get_all(self._id, self.options.expire)
            data.pop(_ISSUED_KEY, None)
        except Exception as error:  # a notebook should show the failure, not raise it
            data = f"<{type(error).__name__}: {error}>"
        return self._table(data)

    def get(self, key: str | None = None, *, callback: Callback | None = None) -> Any:
        """Return the value stored under ``key`` (a copy), or None; no key: :meth:`get_all`."""
        if callback is not None:
            return _call_back(callback, self.get, key)
        if key is None:
            return self._operation("get_all", (), False)
        return self._operation("get", (_check_key(key),), False)

    def get_all(self, *, callback: Callback | None = None) -> dict[str, Any]:
        """Return all the session's data as a new dict."""
        if callback is not None:
            return _call_back(callback, self.get_all)  # type: ignore[no-any-return]
        return self._operation("get_all", (), False)  # type: ignore[no-any-return]

    def set(self, key: str, value: Any = None, *, callback: Callback | None = None) -> None:
        """Store ``value`` (JSON-serialisable; None by default) under ``key``.

        :raises TypeError: for a value that is not JSON, naming the key; nothing is stored.
        :raises SessionEnded: when the session ended while this request ran.
        """
        if callback is not None:
            return _call_back(callback, self.set, key, value)  # type: ignore[no-any-return]
        self._operation("set", (_check_key(key), value), True)

    def incr(self, key: str, amount: int = 1, *, callback: Callback | None = None) -> int:
        """Add ``amount`` to the integer under ``key`` (a missing key counts as 0) in one
        atomic store operation, and return the sum: concurrent requests lose no count.

        :raises TypeError: when ``key`` holds something else than an integer, or the
            store has no ``incr`` operation (the six-operation Store API).
        :raises SessionEnded: when the session ended while this request ran.
        """
        if callback is not None:
            return _call_back(callback, self.incr, key, amount)  # type: ignore[no-any-return]
        self._check_incr(self.store, amount)
        return self._operation("incr", (_check_key(key), amount), True)  # type: ignore[no-any-return]

    def delete(self, key: str | None = None, *, callback: Callback | None = None) -> None:
        """Remove ``key``.  Beware: with no key this is :meth:`delete_all`, as in Node."""
        if callback is not None:
            return _call_back(callback, self.delete, key)  # type: ignore[no-any-return]
        if key is None:
            self.delete_all()
        else:
            self._operation("delete", (_check_key(key),), True)

    def delete_all(self, *, callback: Callback | None = None) -> None:
        """Remove all the session's data.  In strict mode the old id ends, for the other
        requests of the session too; this one goes on with a fresh session (a new
        token) if it uses the session again."""
        if callback is not None:
            return _call_back(callback, self.delete_all)  # type: ignore[no-any-return]
        self._drive(self._delete_all())

    def destroy(self, *, callback: Callback | None = None) -> None:
        """End the session: its data removed from the store and its cookie (and signature)
        expired on the client.  Logout: the old token is dead for good, also for the
        requests of the same session still in flight (their writes raise
        :class:`SessionEnded`).  To go on with a fresh session in the same request,
        call :meth:`regenerate` ``(keep_data=False)`` instead.
        """
        if callback is not None:
            return _call_back(callback, self.destroy)  # type: ignore[no-any-return]
        self._drive(self._destroy())

    def regenerate(self, *, keep_data: bool = True, callback: Callback | None = None) -> None:
        """Give the session a new token: call it at login, against session fixation.

        A token planted by an attacker before the login is worth nothing after it.
        With ``keep_data`` (the default) the data moves to the new token (no request
        sees it half-moved, with a lifecycle store) and keeps its original deadline:
        a login does not lengthen a stolen session's life.  ``keep_data=False``
        starts empty.  Either way the old id is gone.  If it fails (the store is
        down, the headers are already out) the old session is left whole and usable.

        :raises StoreError: when the store fails; :raises SessionError: when the
            cookie can no longer be sent.
        """
        if callback is not None:
            return _call_back(callback, self.regenerate, keep_data)  # type: ignore[no-any-return]
        self._drive(self._regenerate(keep_data))

    def touch(self, *, callback: Callback | None = None) -> None:
        """Renew the expiry only (what Node's ``get()`` without a callback does)."""
        if callback is not None:
            return _call_back(callback, self.touch)  # type: ignore[no-any-return]
        self._operation("extend", (), False)

    # -- the mapping view: each one store operation ------------------------------------

    def __getitem__(self, key: str) -> Any:
        value = self._operation("get", (_check_key(key),), False)
        if value is None:  # the Store API returns None for a missing key (and for null)
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._operation("set", (_check_key(key), value), True)

    def __delitem__(self, key: str) -> None:
        # No KeyError for a missing key: finding out would be a second store operation,
        # and another request could delete it in between anyway.
        self._operation("delete", (_check_key(key),), True)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._operation(
            "get", (_check_key(key),), False) is not None

    def __len__(self) -> int:
        return len(self._operation("get_all", (), False))

    def __iter__(self) -> Iterator[str]:
        return iter(self._operation("get_all", (), False))


# ============================================================================
# 6. WSGI and Bottle integration
# ============================================================================
#
# ``middleware(store, **options)(app)`` wraps a WSGI app: a thin adapter that
# only translates between the environ and the session core.  Each request gets
# a lazy session: nothing is read, sent or stored until the app uses it, so
# health checks and crawlers mint no sessions.  Once used, its Set-Cookie
# headers are added when the app's response starts.

#: The environ key of the request's session (PEP 3333: an extension's key has a dot).
ENVIRON_KEY = "generic_session.session"

_UNAVAILABLE = b"503 Service Unavailable: the session store is unavailable\n"
_ENDED_BODY = b"400 Bad Request: the session ended while this request ran\n"


class _DeferredStart:
    """Holds the app's ``start_response`` until the body is ready, then adds the cookies.

    PEP 3333 lets headers change until the first body byte, and apps do use the
    session after calling ``start_response``; so the server's ``start_response``
    is called when the app returns (or yields its first chunk, or calls ``write``).
    """

    __slots__ = ("_environ", "_start_response", "_write", "cookies", "exc_info", "headers",
                 "session", "status")

    def __init__(self, start_response: Callable[..., Any], environ: Environ) -> None:
        self._start_response = start_response
        # Kept only until the headers go: the session holds this object, and the
        # environ holds the session (a cycle the garbage collector would have to find).
        self._environ: Environ | None = environ
        # The request's session, set by the middleware; dropped with the environ.
        self.session: GenericSession | None = None
        self._write: Callable[[bytes], object] | None = None
        # The session's Set-Cookie headers by cookie name: a cookie sent twice (a
        # destroy after a start, say) goes out once, as it was last set.
        self.cookies: dict[str, tuple[str, str]] = {}
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.exc_info: Any = None

    @property
    def sent(self) -> bool:
        """True once the server's ``start_response`` has been called."""
        return self._write is not None

    def is_https(self) -> bool:
        """Whether the request came over HTTPS, read when the session starts: a proxy
        fix placed inside the middleware has set ``wsgi.url_scheme`` by then."""
        environ = self._environ
        return environ is not None and environ.get("wsgi.url_scheme") == "https"

    def add_cookie(self, name: str, header: str) -> None:
        """The session's way to send a cookie: the last one of each name goes out."""
        if self._write is not None:
            raise SessionError(
                f"cookie {name!r} cannot be sent: the response headers are already out; "
                "use the session before the app returns its body (or yields its first chunk)")
        self.cookies[name] = ("Set-Cookie", header)

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
        session = self.session
        cookies = self.cookies
        if cookies:
            headers = _with_cookies(headers, cookies.values(), _WSGI_SPELLING)
        elif session is not None and session.started:
            # A response that used the session depends on the cookie.
            headers = _vary_on_cookie(headers, _WSGI_SPELLING)
        self._write = self._start_response(self.status, headers, self.exc_info)
        self.exc_info = None  # its traceback would keep the whole request alive
        self._environ = self.session = None

    def write(self, data: bytes) -> None:
        """The legacy ``write`` callable: the headers go first."""
        self.send()
        self._write(data)  # type: ignore[misc]  # send() set it


@dataclass(frozen=True, slots=True)
class _Spelling(Generic[AnyStr]):
    """How a front door spells the headers the session adds: WSGI's are str, ASGI's
    bytes with lower-case names, so that one function adds them for both."""

    vary: AnyStr  # a header name, lower-cased, to compare with
    cache_control: AnyStr
    vary_cookie: tuple[AnyStr, AnyStr]  # the header to add
    private: tuple[AnyStr, AnyStr]
    comma: AnyStr
    cookie: AnyStr
    and_cookie: AnyStr  # added to a Vary that does not cover Cookie
    covered: frozenset[AnyStr]  # a Vary holding one of these already covers Cookie


_WSGI_SPELLING = _Spelling("vary", "cache-control", ("Vary", "Cookie"),
                           ("Cache-Control", "private"), ",", "Cookie", ", Cookie",
                           frozenset({"cookie", "*"}))


def _vary_on_cookie(headers: list[tuple[AnyStr, AnyStr]],
                    spelling: _Spelling[AnyStr]) -> list[tuple[AnyStr, AnyStr]]:
    """A copy of ``headers`` that varies on ``Cookie``: a response that sets a session
    cookie depends on the cookie, and a shared cache must not serve it to anyone else.

    On the headers as the server has them (bytes for ASGI): decoding every header
    to work on str cost ~1.0 us a request (bench/asgi.py).
    """
    for index, (name, value) in enumerate(headers):
        if name.lower() == spelling.vary:
            varies = {item.strip().lower() for item in value.split(spelling.comma)}
            headers = list(headers)
            if not varies & spelling.covered:
                headers[index] = (name, value + spelling.and_cookie if value.strip()
                                  else spelling.cookie)
            return headers
    headers = list(headers)
    headers.append(spelling.vary_cookie)
    return headers


def _with_cookies(headers: list[tuple[AnyStr, AnyStr]],
                  cookies: Iterable[tuple[AnyStr, AnyStr]],
                  spelling: _Spelling[AnyStr]) -> list[tuple[AnyStr, AnyStr]]:
    """A copy of ``headers`` with the ``Set-Cookie`` headers ``cookies``, varying on
    ``Cookie`` (see :func:`_vary_on_cookie`) and, unless the app chose its own
    ``Cache-Control``, private: ``Vary`` does not protect a first visit (every new
    visitor sends the same, no cookie), so a shared cache must not store a Set-Cookie.

    One pass over the app's headers for both (two passes cost ~1,400 instructions,
    ~0.15 us, more: bench/instructions.py).
    """
    vary = cache_control = False
    for name, _ in headers:
        lowered = name.lower()
        if lowered == spelling.vary:
            vary = True
        elif lowered == spelling.cache_control:
            cache_control = True
    if vary:
        headers = _vary_on_cookie(headers, spelling)
    else:
        headers = list(headers)
        headers.append(spelling.vary_cookie)
    if not cache_control:
        headers.append(spelling.private)
    headers.extend(cookies)
    return headers


def _close(body: Iterable[bytes]) -> None:
    close = getattr(body, "close", None)
    if close is not None:
        close()


class _DeferredBody:
    """The response of a generator app: run to its first chunk before the headers go.

    An iterable with ``close()``, as PEP 3333 wants: the server closes it even when
    it never iterated it, and the app's body is closed then, exactly once.
    """

    __slots__ = ("_body", "_chunks")

    def __init__(self, body: Iterable[bytes], response: _DeferredStart,
                 environ: Environ, start_response: Callable[..., Any]) -> None:
        self._body = body
        self._chunks = self._headers_then_chunks(body, response, environ, start_response)

    @staticmethod
    def _headers_then_chunks(body: Iterable[bytes], response: _DeferredStart, environ: Environ,
                             start_response: Callable[..., Any]) -> Generator[bytes, None, None]:
        iterator = iter(body)
        try:
            first = next(iterator, b"")
            response.send()
        except (StoreError, SessionEnded) as error:
            yield from _refuse(error, environ, start_response, response.sent)
            return
        yield first
        # A loop, not ``yield from``: closing this generator would close the app's
        # iterator too, and close() below closes the app's body: PEP 3333 says once.
        for chunk in iterator:  # noqa: UP028
            yield chunk

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        try:
            self._chunks.close()
        finally:
            _close(self._body)


def _refuse(error: StoreError | SessionEnded, environ: Environ,
            start_response: Callable[..., Any], started: bool) -> list[bytes]:
    """A plain 503 for a store that is down, or 400 for a session that ended while the
    request ran; no cookie either way.  The error goes to the server's log.

    ``exc_info`` goes to ``start_response`` only when the headers were already
    started (PEP 3333): before that there is nothing to replace, and a server
    such as werkzeug's test client re-raises any ``exc_info`` it is given.
    """
    print(f"generic_session: {error}", file=environ.get("wsgi.errors", sys.stderr))
    if isinstance(error, StoreError):
        status, body = "503 Service Unavailable", _UNAVAILABLE
    else:
        status, body = "400 Bad Request", _ENDED_BODY
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))],
                   sys.exc_info() if started else None)
    return [body]


def middleware(
    store: Store,
    *,
    keys: Keygrip | Sequence[str | bytes] | None = None,
    expire: float = TWO_WEEKS,
    max_lifetime: float | None = None,
    strict: bool = True,
    persistent: bool = True,
    cookie_name: str = "s",
    id_prefix: str = "session:",
    path: str = "/",
    secure: bool | None = None,
    samesite: str | None = "Lax",
    domain: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Callable[[WSGIApp], WSGIApp]:
    """Return ``wrap(app)``: WSGI middleware giving each request a :class:`GenericSession`.

    The session is ``environ[ENVIRON_KEY]`` (``'generic_session.session'``) and,
    under Bottle, ``bottle.request.session``.  The options are those of
    :class:`SessionOptions`, checked now.  A :class:`StoreError` that escapes the
    app becomes a plain 503 response, a :class:`SessionEnded` a plain 400, neither
    with a cookie (Bottle apps: make them with ``app.config["catchall"] = False``
    so they escape).  A response that used the session varies on ``Cookie``; one
    that sets it is also ``Cache-Control: private`` unless the app set that header.

    :raises TypeError: for an option of the wrong type, or a store without the Store API.
    :raises ValueError: for a bad option value, naming it.
    """
    options = SessionOptions(keys=keys, expire=expire, max_lifetime=max_lifetime, strict=strict,
                             persistent=persistent, cookie_name=cookie_name,
                             id_prefix=id_prefix, path=path, secure=secure, samesite=samesite,
                             domain=domain, clock=clock)
    options.check_store(store)
    keygrip = options.keygrip
    lazy = GenericSession.lazy

    def wrap(app: WSGIApp) -> WSGIApp:
        def session_app(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
            response = _DeferredStart(start_response, environ)
            cookies = Cookies.from_header(environ.get("HTTP_COOKIE", ""), response.add_cookie,
                                          keygrip)
            session = lazy(store, options, cookies, https=response.is_https)
            response.session = session
            environ[ENVIRON_KEY] = session
            environ["bottle.request.ext.session"] = session  # bottle.request.session
            try:
                body = app(environ, response.start_response)
            except (StoreError, SessionEnded) as error:
                return _refuse(error, environ, start_response, response.sent)
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


#: Node's other name for :func:`middleware` (not in ``__all__``: it would shadow the
#: builtin ``filter`` under ``from generic_session import *``).
filter = middleware


# ============================================================================
# 7. ASGI and async
# ============================================================================
#
# The same sessions for Starlette, FastAPI and any ASGI app.  ``ASGIMiddleware``
# is the second thin front door over the session core: it reads the cookie from
# the scope's headers, holds ``http.response.start`` until the first body chunk
# so that the cookie can still be added, and puts an ``AsyncGenericSession`` in
# ``scope["session"]`` (Starlette's ``request.session``).  That session runs the
# very plans ``GenericSession`` runs, awaiting the store instead of calling it.
# Stores: an ``AsyncStore`` (``AsyncRedisStore``), ``MemoryStore`` (it never
# waits on I/O, so it is called directly), or any blocking store behind
# ``ThreadedStore``, which runs its operations in worker threads.

# An ASGI scope, message, receive and send (private: for the signatures here).
_Scope: TypeAlias = dict[str, Any]
_Message: TypeAlias = dict[str, Any]
_Receive: TypeAlias = Callable[[], Awaitable[_Message]]
_Send: TypeAlias = Callable[[_Message], Awaitable[None]]
_ASGIApp: TypeAlias = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


@runtime_checkable
class AsyncStore(Protocol):
    """The Store API with ``async def`` methods; the lifecycle operations too, optionally,
    with the same names and meanings as :class:`LifecycleStore`'s."""

    async def get(self, id: SessionId, key: str, expire: float) -> Any:
        """:meth:`Store.get`, awaited."""

    async def get_all(self, id: SessionId, expire: float) -> dict[str, Any]:
        """:meth:`Store.get_all`, awaited."""

    async def set(self, id: SessionId, key: str, value: Any, expire: float) -> None:
        """:meth:`Store.set`, awaited."""

    async def delete(self, id: SessionId, key: str, expire: float) -> None:
        """:meth:`Store.delete`, awaited."""

    async def delete_all(self, id: SessionId) -> None:
        """:meth:`Store.delete_all`, awaited."""

    async def extend(self, id: SessionId, expire: float) -> None:
        """:meth:`Store.extend`, awaited."""


class ThreadedStore:
    """A blocking store made awaitable: each operation runs in a worker thread, so that
    the event loop goes on serving other requests while the store waits.

    :param store: any store with the Store API (``SQLiteStore``, ``RedisStore``,
        yours); its lifecycle operations, when it has them, are offered too.
    :raises TypeError: for a store whose methods are already coroutines.
    """

    __slots__ = ("lifecycle", "store")

    def __init__(self, store: Store) -> None:
        for method in _STORE_METHODS:
            if not callable(getattr(store, method, None)):
                raise TypeError(f"store {store!r} has no {method}() method: see the Store API")
        if inspect.iscoroutinefunction(store.get):
            raise TypeError(f"{type(store).__name__} is already async: use it without "
                            "ThreadedStore")
        self.store = store
        #: Whether the wrapped store has the lifecycle operations.
        self.lifecycle = _has_lifecycle(store)

    def __repr__(self) -> str:
        return f"ThreadedStore({self.store!r})"

    async def _run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        import asyncio  # here, not at the top: 35 ms that a WSGI app never needs

        return await asyncio.to_thread(getattr(self.store, name), *args, **kwargs)

    async def get(self, id: SessionId, key: str, expire: float, **live: bool) -> Any:
        """The wrapped store's ``get``, in a worker thread."""
        return await self._run("get", id, key, expire, **live)

    async def get_all(self, id: SessionId, expire: float, **live: bool) -> dict[str, Any]:
        """The wrapped store's ``get_all``, in a worker thread."""
        return await self._run("get_all", id, expire, **live)  # type: ignore[no-any-return]

    async def set(self, id: SessionId, key: str, value: Any, expire: float,
                  **live: bool) -> None:
        """The wrapped store's ``set``, in a worker thread."""
        await self._run("set", id, key, value, expire, **live)

    async def delete(self, id: SessionId, key: str, expire: float, **live: bool) -> None:
        """The wrapped store's ``delete``, in a worker thread."""
        await self._run("delete", id, key, expire, **live)

    async def delete_all(self, id: SessionId) -> None:
        """The wrapped store's ``delete_all``, in a worker thread."""
        await self._run("delete_all", id)

    async def extend(self, id: SessionId, expire: float, **live: bool) -> None:
        """The wrapped store's ``extend``, in a worker thread."""
        await self._run("extend", id, expire, **live)

    async def create(self, id: SessionId, expire: float, lifetime: float | None = None) -> None:
        """The wrapped store's ``create``, in a worker thread."""
        await self._run("create", id, expire, lifetime)

    async def incr(self, id: SessionId, key: str, amount: int, expire: float,
                   **live: bool) -> int:
        """The wrapped store's ``incr``, in a worker thread."""
        return await self._run("incr", id, key, amount, expire, **live)  # type: ignore[no-any-return]

    async def rename(self, id: SessionId, new_id: SessionId, expire: float) -> float | None:
        """The wrapped store's ``rename``, in a worker thread."""
        return await self._run("rename", id, new_id, expire)  # type: ignore[no-any-return]


_AWAITS: dict[type, bool] = {}


def _check_async_store(store: object) -> bool:
    """Whether the ASGI session must await ``store`` (False: call it, a MemoryStore);
    remembered by the store's type.

    :raises TypeError: for a store that would block the event loop, naming the
        adapter that runs it in worker threads.
    """
    for method in _STORE_METHODS:
        if not callable(getattr(store, method, None)):
            raise TypeError(f"store {store!r} has no {method}() method: see the Store API")
    if isinstance(store, MemoryStore):
        _AWAITS[type(store)] = False  # it never waits on I/O: calling it beats a thread
        return False
    if not inspect.iscoroutinefunction(store.get):  # type: ignore[attr-defined]
        raise TypeError(
            f"{type(store).__name__} blocks on I/O and would stall the event loop: pass "
            f"ThreadedStore({type(store).__name__}(...)) to run it in worker threads"
            + (", or use AsyncRedisStore with a redis.asyncio client"
               if isinstance(store, RedisStore) else ""))
    _AWAITS[type(store)] = True
    return True


class AsyncGenericSession(_SessionCore):
    """The session of one ASGI request: :class:`GenericSession`'s methods, awaited.

    ``await session.get(key)``, ``get_all``, ``set``, ``incr``, ``delete``,
    ``delete_all``, ``destroy``, ``regenerate(keep_data=True)`` and ``touch`` do
    what the sync ones do, with the same lifecycle rules (the same plans run).
    ``id`` and ``token`` are there once the session has been used (``await
    session.touch()`` uses it without doing anything else); before that reading
    them raises :class:`SessionError`, since finding out needs the store.  No
    mapping view: ``session["k"]`` could not be awaited.
    """

    __slots__ = ("_awaits", "_running", "_waiting")
    _awaits: bool  # whether the store's operations are awaited
    _running: bool  # whether a task of the request is running a plan
    _waiting: list[Any]  # the futures of the tasks waiting for their turn

    @classmethod
    def lazy(cls, store: AsyncStore | MemoryStore, options: SessionOptions, cookies: Cookies,
             *, https: Callable[[], bool]) -> AsyncGenericSession:
        """A session that starts when first used, as :meth:`GenericSession.lazy`'s."""
        session = cls.__new__(cls)
        session._bind(store, options, cookies, https)
        awaits = _AWAITS.get(type(store))
        session._awaits = _check_async_store(store) if awaits is None else awaits
        # Two tasks of one request may touch a new session at once: one plan at a time,
        # so one token only.  A flag and, only when a second task comes, a queue of
        # futures: an asyncio.Lock made for every request cost ~0.95 us (bench/asgi.py).
        session._running = False
        session._waiting = []
        return session

    async def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        result = getattr(self.store, name)(*args, **kwargs)
        return (await result) if self._awaits else result

    async def _drive(self, plan: _Plan) -> Any:
        """Run ``plan``, awaiting each store call it asks for; one plan at a time."""
        while self._running:  # another task's plan runs: wait until it is done
            import asyncio

            turn = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            await turn
        self._running = True
        try:
            return await self._run(plan)
        finally:
            self._release()

    def _release(self) -> None:
        """End this task's turn: the next one in line goes on (and checks the flag again)."""
        self._running = False
        while self._waiting:
            turn = self._waiting.pop(0)
            if not turn.done():  # done: that task was cancelled while it waited
                turn.set_result(None)
                break

    async def _run(self, plan: _Plan) -> Any:
        """The loop of :meth:`_drive`, for a task that has its turn."""
        try:
            name, args, kwargs = next(plan)
            while True:
                try:
                    result = await self._call(name, args, kwargs)
                except BaseException as error:  # the plan decides: it may undo, or not
                    name, args, kwargs = plan.throw(error)
                else:
                    name, args, kwargs = plan.send(result)
        except StopIteration as done:
            return done.value

    async def _operation(self, name: str, args: tuple[Any, ...], write: bool) -> Any:
        # Live already: one store call, no plan (~0.9 us a request, bench/overhead.py).
        if self._state is _LIVE and (self._lifecycle or self._one_call(name)):
            try:
                # The store called here, not by _call: a coroutine less, ~700
                # instructions a call (bench/instructions.py).
                result = getattr(self.store, name)(self._id, *args, self.options.expire,
                                                   **(_LIVE_ONLY if self._lifecycle else _PLAIN))
                return (await result) if self._awaits else result
            except UnknownSession:
                self._state = _ENDED  # destroyed, regenerated or expired meanwhile
                return self._ended(name, write)
        if self._state is _UNSTARTED and self._lifecycle and not self._running:
            # The first operation inline, its live call confirming the cookie's token, as
            # GenericSession's: saves ~0.6 us a request (bench/asgi.py).  The turn is
            # taken with no await before it, so no other task of the request is between.
            self._running = True
            try:
                if not self._adopt():  # no token in the cookie: a new session, by plan
                    return await self._run(self._operate(name, args, write))
                try:
                    result = getattr(self.store, name)(self._id, *args, self.options.expire,
                                                       live=True)
                    if self._awaits:
                        result = await result
                except UnknownSession:
                    return await self._run(self._replace_candidate(name, args, write))
                self._live_now()
                return result
            finally:
                self._release()
        return await self._drive(self._operate(name, args, write))

    def _known(self, what: str) -> str:
        if self._state is not _LIVE and self._state is not _ENDED:
            raise SessionError(f"session.{what} is not known yet: the store has not been "
                               "asked; await any session operation first (touch() will do)")
        return self._token if what == "token" else self._id  # type: ignore[return-value]

    @property
    def token(self) -> str:
        """The random token in the cookie, once the session has been used."""
        return self._known("token")

    @property
    def id(self) -> SessionId:
        """``id_prefix + token``, once the session has been used."""
        return self._known("id")

    def __repr__(self) -> str:
        return self._describe()

    def _repr_html_(self) -> str:
        return self._table("(not read: await session.get_all())")

    async def get(self, key: str | None = None) -> Any:
        """The value stored under ``key`` (a copy), or None; no key: :meth:`get_all`."""
        if key is None:
            return await self._operation("get_all", (), False)
        return await self._operation("get", (_check_key(key),), False)

    async def get_all(self) -> dict[str, Any]:
        """All the session's data as a new dict."""
        return await self._operation("get_all", (), False)  # type: ignore[no-any-return]

    async def set(self, key: str, value: Any = None) -> None:
        """Store ``value`` under ``key`` (see :meth:`GenericSession.set`)."""
        await self._operation("set", (_check_key(key), value), True)

    async def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to the integer under ``key`` atomically (see
        :meth:`GenericSession.incr`)."""
        self._check_incr(self.store, amount)
        return await self._operation("incr", (_check_key(key), amount), True)  # type: ignore[no-any-return]

    async def delete(self, key: str | None = None) -> None:
        """Remove ``key``; with no key, :meth:`delete_all`, as in Node."""
        if key is None:
            await self.delete_all()
        else:
            await self._operation("delete", (_check_key(key),), True)

    async def delete_all(self) -> None:
        """Remove all the session's data (see :meth:`GenericSession.delete_all`)."""
        await self._drive(self._delete_all())

    async def destroy(self) -> None:
        """Logout: end the session for good (see :meth:`GenericSession.destroy`)."""
        await self._drive(self._destroy())

    async def regenerate(self, *, keep_data: bool = True) -> None:
        """Login: a new token (see :meth:`GenericSession.regenerate`)."""
        await self._drive(self._regenerate(keep_data))

    async def touch(self) -> None:
        """Renew the expiry only; the session is then started and its ``id`` known."""
        await self._operation("extend", (), False)


def _cookie_header(scope: _Scope) -> str:
    """The request's ``Cookie`` header(s) as text (HTTP/2 may split it in several)."""
    header = ""
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            text = value.decode("latin-1")
            header = f"{header}; {text}" if header else text
    return header


class _ASGIResponse:
    """Holds the app's ``http.response.start`` until its first body chunk, so that a
    session used after the start still sends its cookie; then adds the cookies."""

    __slots__ = ("_scope", "_send", "cookies", "session", "start", "started")

    def __init__(self, send: _Send, scope: _Scope) -> None:
        self._send = send
        # Kept until the response starts, as the WSGI side keeps the environ.
        self._scope: _Scope | None = scope
        self.session: AsyncGenericSession | None = None
        self.cookies: dict[str, tuple[bytes, bytes]] = {}
        self.start: _Message | None = None
        self.started = False

    def is_https(self) -> bool:
        """Whether the request came over HTTPS, read when the session starts."""
        scope = self._scope
        return scope is not None and scope.get("scheme") in ("https", "wss")

    def add_cookie(self, name: str, header: str) -> None:
        """The session's way to send a cookie: the last one of each name goes out."""
        if self.started:
            raise SessionError(
                f"cookie {name!r} cannot be sent: the response has started; use the session "
                "before the app sends its first body chunk")
        # The header as the server takes it, made here: encoding the values when the
        # response starts cost ~1,900 instructions a request more (bench/instructions.py).
        self.cookies[name] = (b"set-cookie", header.encode("latin-1"))

    async def send(self, message: _Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.start = message
            return
        # The held start goes out before the first body message: a body chunk, or a
        # file by path (the "http.response.pathsend" extension, Starlette's FileResponse).
        if not self.started and self.start is not None and kind in _BODY_MESSAGES:
            await self._send(self._with_cookies(self.start))
        await self._send(message)

    async def finish(self) -> None:
        """Send the start the app sent with no body message after it (a bare 204, say)."""
        if self.start is not None and not self.started:
            await self._send(self._with_cookies(self.start))

    def _with_cookies(self, start: _Message) -> _Message:
        self.started = True
        session = self.session
        headers = start.get("headers", ())
        cookies = self.cookies
        if cookies:
            headers = _with_cookies(headers, cookies.values(), _ASGI_SPELLING)
        elif session is not None and session.started:
            headers = _vary_on_cookie(headers, _ASGI_SPELLING)
        else:
            headers = list(headers)
        self._scope = self.session = None
        return {**start, "headers": headers}


_BODY_MESSAGES = frozenset({"http.response.body", "http.response.pathsend"})


_ASGI_SPELLING = _Spelling(b"vary", b"cache-control", (b"vary", b"Cookie"),
                           (b"cache-control", b"private"), b",", b"Cookie", b", Cookie",
                           frozenset({b"cookie", b"*"}))


def _websocket_sink(token: str | None, cookie_name: str) -> CookieSink:
    """Where a websocket's session "sends" its cookie: there is no response to put it in.

    Re-sending the cookie it came with (or clearing it, after ``destroy``) can be
    skipped; a new token cannot, so issuing one raises :class:`SessionError`.
    """
    def send(name: str, header: str) -> None:
        value = header.partition(";")[0].partition("=")[2]
        if name == cookie_name and value and value != token:
            raise SessionError("a websocket cannot set a cookie: this operation needs a new "
                               "session token; start the session over HTTP first")

    return send


async def _refuse_asgi(error: StoreError | SessionEnded, send: _Send) -> None:
    print(f"generic_session: {error}", file=sys.stderr)
    if isinstance(error, StoreError):
        status, body = 503, _UNAVAILABLE
    else:
        status, body = 400, _ENDED_BODY
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode("ascii"))]})
    await send({"type": "http.response.body", "body": body})


class ASGIMiddleware:
    """ASGI middleware giving each request an :class:`AsyncGenericSession` in
    ``scope["session"]`` (Starlette's and FastAPI's ``request.session``).

    ``app.add_middleware(ASGIMiddleware, store=store, keys=KEYS)`` in Starlette or
    FastAPI, or ``ASGIMiddleware(app, store=store, keys=KEYS)`` around any ASGI app.
    The options are :class:`SessionOptions`', with the same defaults as the WSGI
    :func:`middleware`, and so is the behaviour: lazy sessions, ``Vary: Cookie``,
    ``Cache-Control: private``, a plain 503 for a :class:`StoreError` and 400 for a
    :class:`SessionEnded` that escape the app before its response started, the
    last ``Set-Cookie`` per name.  ``lifespan`` passes through untouched; a
    ``websocket`` gets the session of its cookie, and an operation that would
    need a new cookie raises :class:`SessionError`.

    :param store: an :class:`AsyncStore`, a :class:`MemoryStore`, or a blocking
        store wrapped in :class:`ThreadedStore`.
    :raises TypeError: for a bad option type, or a blocking store not wrapped.
    :raises ValueError: for a bad option value, naming it.
    """

    def __init__(
        self,
        app: _ASGIApp,
        store: AsyncStore | MemoryStore | ThreadedStore,
        *,
        keys: Keygrip | Sequence[str | bytes] | None = None,
        expire: float = TWO_WEEKS,
        max_lifetime: float | None = None,
        strict: bool = True,
        persistent: bool = True,
        cookie_name: str = "s",
        id_prefix: str = "session:",
        path: str = "/",
        secure: bool | None = None,
        samesite: str | None = "Lax",
        domain: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.store = store
        self.options = SessionOptions(
            keys=keys, expire=expire, max_lifetime=max_lifetime, strict=strict,
            persistent=persistent, cookie_name=cookie_name, id_prefix=id_prefix, path=path,
            secure=secure, samesite=samesite, domain=domain, clock=clock)
        self.options.check_store(store)
        _check_async_store(store)

    def __repr__(self) -> str:
        return f"ASGIMiddleware({self.app!r}, store={self.store!r})"

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        options = self.options
        header = _cookie_header(scope)
        if kind == "websocket":
            sink = _websocket_sink(_parse_cookie_header(header).get(options.cookie_name),
                                   options.cookie_name)
            cookies = Cookies.from_header(header, sink, options.keygrip)
            scope["session"] = AsyncGenericSession.lazy(
                self.store, options, cookies, https=lambda: scope.get("scheme") == "wss")
            await self.app(scope, receive, send)
            return
        response = _ASGIResponse(send, scope)
        cookies = Cookies.from_header(header, response.add_cookie, options.keygrip)
        session = AsyncGenericSession.lazy(self.store, options, cookies,
                                           https=response.is_https)
        response.session = session
        scope["session"] = session
        try:
            await self.app(scope, receive, response.send)
        except (StoreError, SessionEnded) as error:
            if response.started:
                raise
            await _refuse_asgi(error, send)
            return
        await response.finish()


# ============================================================================
# 8. Shipped stores (MemoryStore, SQLiteStore, RedisStore)
# ============================================================================
#
# Three implementations of the Store API: in the process (``MemoryStore``), in a
# file shared by the processes of one machine (``SQLiteStore``), and on a Redis
# server shared by many machines (``RedisStore``).  Each passes ``check_store``.
#
# Their StoreError messages go to logs (the WSGI filter prints one on every 503),
# so they name the store, its address, the operation and the error, and never a
# session id (it holds the token) or a stored value.

# redis-py prefixes a pipeline's error with the whole failing command, arguments
# and all: "Command # 1 (HSET session:<token> k <value>) of pipeline caused error: ".
_PIPELINE_PREFIX = re.compile(r"\ACommand # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)
# Redis itself quotes arguments in a few replies ("ERR unknown command 'X', with args
# beginning with: 'session:<token>' "): what follows this is cut.
_QUOTED_ARGS = ", with args beginning with:"
# What Redis adds to an error raised inside a script: which script, which line.
_SCRIPT_SUFFIX = re.compile(r"\s*script: [0-9a-f]+, on @user_script:\d+\.?\s*\Z")
# A shorter secret is left in: cutting "1" out of "Error 111 connecting" helps nobody.
_MIN_REDACTED = 8


def _redacted_message(error: BaseException, secret: Iterable[str]) -> str:
    """``error``'s own message without the arguments redis-py or Redis quote in it.

    First the command redis-py puts before a pipeline's error goes (greedy, so a
    value that itself holds "of pipeline caused error: " goes whole too), then
    whatever Redis quotes after ``_QUOTED_ARGS``; last, as a safety net for a
    message we did not foresee, every occurrence of each ``secret`` string
    (at least ``_MIN_REDACTED`` characters) becomes ``<redacted>``.
    """
    message = _PIPELINE_PREFIX.sub("", str(error), count=1)
    message = message.split(_QUOTED_ARGS, 1)[0]
    message = _SCRIPT_SUFFIX.sub("", message)
    for text in secret:
        if len(text) >= _MIN_REDACTED:
            message = message.replace(text, "<redacted>")
    return message


def _why_not_json(stored: str | bytes) -> str | None:
    """Why ``stored`` does not decode (without quoting it), or None if it does."""
    try:
        decode_json(stored)
    except UnicodeDecodeError as error:
        return f"not UTF-8 at byte {error.start}"
    except json.JSONDecodeError as error:
        return f"{error.msg} at character {error.pos}"
    except ValueError as error:
        return type(error).__name__
    return None


def _not_json(where: str, op: str, items: Iterable[tuple[Any, Any]]) -> StoreError:
    """The StoreError for the first of ``items`` (key, stored value) that does not decode.

    Called only once decoding failed, so the happy path pays nothing: it names the
    store, the operation and the key, and says why, but never shows the value
    (the error's ``doc`` / ``object`` hold it, which is why it is not chained).
    """
    for key, stored in items:
        why = _why_not_json(stored)
        if isinstance(key, bytes):
            try:
                key = key.decode("utf-8")
            except UnicodeDecodeError:  # a Redis field: shown as bytes, a key is no secret
                why = why or "its key is not UTF-8"
        if why is not None:
            return StoreError(
                f"{where}: {op} found a value under key {key!r} that is not JSON text ({why}); "
                "something other than this store wrote it: delete that key or the session"
            )
    return StoreError(f"{where}: {op} found a value that is not JSON text")


def _sanitised_copy(error: BaseException, message: str) -> BaseException | None:
    """A new exception of ``error``'s class holding only ``message``, to chain as the cause.

    We keep a sanitised cause rather than ``from None``: handlers (and our tests)
    can still ask ``isinstance(error.__cause__, redis.ConnectionError)``, and the
    logged traceback shows the class and the cleaned message, while the original,
    whose args quote the command, is dropped with its frames inside redis-py.  A
    class that cannot be built from one message gives no cause at all.
    """
    try:
        return type(error)(message)
    except Exception:  # an exception class with a constructor of its own
        return None


#: ``incr`` keeps to Redis' range (HINCRBY's): a signed 64-bit integer.
_INT64 = range(-(2**63), 2**63)
_JSON_KINDS = {str: "string", float: "number with a fraction or exponent", bool: "boolean",
               list: "array", dict: "object", type(None): "null"}


def _check_amount(where: str, key: str, amount: object) -> int:
    """``amount`` if it is an int (a bool is no amount), else TypeError naming the key."""
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise TypeError(f"{where}: incr of key {key!r} needs an int amount, "
                        f"got {type(amount).__name__}")
    return amount


def _incremented(where: str, key: str, stored: str | bytes | None, amount: int) -> int:
    """The sum ``incr`` stores: the integer ``stored`` as JSON text (None: 0) plus ``amount``.

    Raises before the caller changes anything: TypeError when the stored value is
    not a JSON integer, ValueError when the sum leaves ``_INT64``, StoreError when it
    is not JSON at all.  The messages name the key, never the value.
    """
    current: Any = 0
    if stored is not None:
        failure = None
        try:
            current = decode_json(stored)
        except ValueError:
            failure = _not_json(where, "incr", [(key, stored)])
        if failure is not None:  # out of the except block: the decode error holds the value
            raise failure
        if type(current) is not int:
            raise TypeError(
                f"{where}: incr found a JSON {_JSON_KINDS.get(type(current), 'value')} under "
                f"key {key!r}, not an integer; nothing was changed"
            )
    total: int = current + amount
    if total not in _INT64:
        raise ValueError(f"{where}: incr of key {key!r} would leave the signed 64-bit range; "
                         "nothing was changed")
    return total


def _unknown(where: str, op: str) -> UnknownSession:
    """The UnknownSession of a live ``op``: names the store and the operation, not the id."""
    return UnknownSession(f"{where}: {op}(live=True) found no live session; nothing was changed")



# What a MemoryStore counts, in bytes, measured with tracemalloc on CPython 3.11 (x86-64)
# for 20,000 sessions (tests/test_store_defects.py checks it still holds within 1.5x):
# per session, its _MemoryEntry, dict, expiry float, size int and its slot in the
# store's OrderedDict come to ~350 bytes beside the id's own str (sys.getsizeof);
# per key, a slot in the session's dict (~16 bytes, amortised) beside the JSON text's
# str (sys.getsizeof).  Counting characters of JSON instead, 200,000 small sessions
# took 127 MB while the store counted 10.9 MB.
_SESSION_OVERHEAD = 352
_KEY_OVERHEAD = 16


def _key_size(key: str, text: str) -> int:
    """The bytes one key of a session costs a MemoryStore (see _KEY_OVERHEAD).

    The key counts by its length only: keys are mostly literals of the app's code,
    one str shared by every session.
    """
    return _KEY_OVERHEAD + len(key) + sys.getsizeof(text)


class _MemoryEntry:
    """One session in a MemoryStore: JSON text per key, its expiry, size and deadline.

    ``deadline`` is the lifecycle's own data, an attribute beside ``data`` so no
    user key can reach it: None for a session the plain operations made (not
    live), the epoch of ``create`` plus its lifetime for a live one (``math.inf``
    when it has none).
    """

    __slots__ = ("data", "deadline", "expires_at", "size")

    def __init__(self, size: int, deadline: float | None = None) -> None:
        self.data: dict[str, str] = {}
        self.expires_at = 0.0
        self.size = size
        self.deadline = deadline


class MemoryStore:
    """An in-process LRU store: thread-safe, size-bounded, lost when the process exits.

    Each session's values are kept as JSON text, so ``get`` returns a fresh copy.
    ``max_size`` bounds the memory the sessions take, approximately, in bytes: each
    session counts its id and a measured overhead (~350 bytes), each key its JSON
    text as a Python str and a slot (``size`` in the repr is this count).  Past
    ``max_size`` the least recently used sessions are evicted.
    Unlike Node's, this store honours ``expire`` (capped at ``max_age``), so it
    passes :func:`check_store` like every other store.  It has the lifecycle
    operations (:class:`LifecycleStore`): a live session's deadline is kept beside
    its data, never among its keys, and every renewal stops at it.

    :param max_size: about how many bytes of memory all the sessions may take (64 MiB).
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
        self.max_size = _check_count(max_size, "max_size", "bytes")
        self.max_age = _check_expire(max_age, "max_age")
        self._clock = clock
        # The LRU order is the dict's: the least recently used session first.  An
        # OrderedDict's move_to_end is C; cachetools' LRUCache, used before, ran two
        # Python calls per lookup: 2,100 instructions (~0.2 us) a filtered request
        # (bench/instructions.py).
        self._sessions: OrderedDict[SessionId, _MemoryEntry] = OrderedDict()
        self._size = 0  # the sum of the entries' sizes
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"MemoryStore(sessions={len(self._sessions)}, size={self._size}, "
            f"max_size={self.max_size}, max_age={self.max_age})"
        )

    def _repr_html_(self) -> str:
        return _html_table("MemoryStore", [
            ("sessions", len(self._sessions)), ("size", self._size),
            ("max_size", self.max_size), ("max_age", self.max_age),
        ])

    def _touch(self, id: SessionId, now: float, live: bool, op: str,
               expire: float | None) -> _MemoryEntry | None:
        """The session's entry, marked recently used and, given ``expire``, renewed; None
        when it does not exist or has expired (call with the lock held).

        :raises UnknownSession: with ``live``, unless ``create`` made the session.
        """
        entry = self._sessions.get(id)
        if entry is not None and entry.expires_at <= now:
            self._remove(id)
            entry = None
        if entry is None or entry.deadline is None:
            if live:
                raise _unknown("MemoryStore", op)
            if entry is None:
                return None
        self._sessions.move_to_end(id)
        if expire is not None:  # _renew's lines, inline: ~1,700 instructions a request
            max_age = self.max_age
            expires_at = now + (expire if expire < max_age else max_age)
            deadline = entry.deadline
            entry.expires_at = (expires_at if deadline is None or expires_at < deadline
                                else deadline)
        return entry

    def _remove(self, id: SessionId) -> None:
        """Forget session ``id``, if held (lock held)."""
        entry = self._sessions.pop(id, None)
        if entry is not None:
            self._size -= entry.size

    def _resize(self, id: SessionId, entry: _MemoryEntry, size: int) -> None:
        """Hold ``entry`` under ``id`` (most recently used) at ``size`` bytes, evicting the
        least recently used other sessions while the store is over ``max_size``
        (lock held; ``size`` is at most ``max_size``: the callers refuse more)."""
        sessions = self._sessions
        if sessions.get(id) is entry:
            self._size += size - entry.size
        else:
            self._remove(id)
            sessions[id] = entry
            self._size += size
        entry.size = size
        while self._size > self.max_size:
            _, evicted = sessions.popitem(last=False)  # never ``entry``: it is the newest
            self._size -= evicted.size

    def _renew(self, entry: _MemoryEntry, now: float, expire: float) -> None:
        # Renewal is one float store under the lock already held: the renewal slack
        # the SQLite store uses would buy nothing here.  Never past the deadline: the
        # expiry alone then ends the session there, and _touch needs no second test.
        max_age = self.max_age
        expires_at = now + (expire if expire < max_age else max_age)
        deadline = entry.deadline
        entry.expires_at = expires_at if deadline is None or expires_at < deadline else deadline

    def get(self, id: SessionId, key: str, expire: float, *, live: bool = False) -> Any:
        """Return a copy of the value of ``key``, or None."""
        now = self._clock()
        with self._lock:
            entry = self._touch(id, now, live, "get", expire)
            if entry is None:
                return None
            text = entry.data.get(key)
        return None if text is None else decode_json(text)

    def get_all(self, id: SessionId, expire: float, *, live: bool = False) -> dict[str, Any]:
        """Return a copy of all the session's data."""
        now = self._clock()
        with self._lock:
            entry = self._touch(id, now, live, "get_all", expire)
            if entry is None:
                return {}
            items = list(entry.data.items())
        return {key: decode_json(text) for key, text in items}

    def set(self, id: SessionId, key: str, value: Any, expire: float, *,
            live: bool = False) -> None:
        """Store ``value`` under ``key``; evict least recently used sessions if full."""
        text = encode_json(key, value)
        now = self._clock()
        with self._lock:
            self._put(id, self._touch(id, now, live, "set", expire), key, text, now, expire)

    def _put(self, id: SessionId, entry: _MemoryEntry | None, key: str, text: str, now: float,
             expire: float) -> None:
        """Store JSON ``text`` under ``key`` of ``entry`` (renewed by ``_touch``; None: a new
        plain session, renewed here); lock held."""
        if entry is None:
            entry = _MemoryEntry(0)
            self._renew(entry, now, expire)
            size = _SESSION_OVERHEAD + sys.getsizeof(id) + _key_size(key, text)
        else:
            old = entry.data.get(key)
            # A new value for a key: the key's own share of the size is unchanged.
            size = entry.size + (_key_size(key, text) if old is None
                                 else sys.getsizeof(text) - sys.getsizeof(old))
        if size > self.max_size:  # the value is at fault, not the store: no StoreError
            raise ValueError(
                f"MemoryStore: session data would be {size} bytes with key {key!r}, "
                f"over max_size={self.max_size}; nothing was stored"
            )
        entry.data[key] = text
        if size != entry.size:
            self._resize(id, entry, size)

    def delete(self, id: SessionId, key: str, expire: float, *, live: bool = False) -> None:
        """Remove ``key`` from the session."""
        now = self._clock()
        with self._lock:
            entry = self._touch(id, now, live, "delete", expire)
            if entry is None:
                return
            old = entry.data.pop(key, None)
            if old is None:
                return
            # An empty plain session is no session, as in Redis; a live one stays live.
            if not entry.data and entry.deadline is None:
                self._remove(id)
                return
            self._resize(id, entry, entry.size - _key_size(key, old))

    def delete_all(self, id: SessionId) -> None:
        """Remove the whole session."""
        with self._lock:
            self._remove(id)

    def extend(self, id: SessionId, expire: float, *, live: bool = False) -> None:
        """Renew the session's expiry, if it exists."""
        now = self._clock()
        with self._lock:
            self._touch(id, now, live, "extend", expire)

    def create(self, id: SessionId, expire: float, lifetime: float | None = None) -> None:
        """Make ``id`` a live session with no data, ending at ``lifetime`` seconds from now."""
        now = self._clock()
        entry = _MemoryEntry(0, math.inf if lifetime is None else now + lifetime)
        with self._lock:
            self._remove(id)  # whatever it held is gone
            self._renew(entry, now, expire)
            self._resize(id, entry, _SESSION_OVERHEAD + sys.getsizeof(id))

    def incr(self, id: SessionId, key: str, amount: int, expire: float, *,
             live: bool = False) -> int:
        """Add ``amount`` to the integer under ``key`` (missing: 0); return the sum."""
        _check_amount("MemoryStore", key, amount)
        now = self._clock()
        with self._lock:  # one lock for the read and the write: no other incr between
            entry = self._touch(id, now, live, "incr", None)  # renewed once the sum is good
            stored = None if entry is None else entry.data.get(key)
            total = _incremented("MemoryStore", key, stored, amount)
            if entry is not None:
                self._renew(entry, now, expire)
            self._put(id, entry, key, int.__repr__(total), now, expire)
        return total

    def rename(self, id: SessionId, new_id: SessionId, expire: float) -> float | None:
        """Move the live session ``id`` (data and deadline) to ``new_id``; end ``id``."""
        now = self._clock()
        with self._lock:
            entry = self._touch(id, now, True, "rename", expire)
            assert entry is not None  # _touch raised otherwise
            size = entry.size
            if new_id != id:
                self._remove(id)
                self._remove(new_id)  # whatever it held is gone
                entry.size = 0  # held by no id now: _resize counts it anew
                self._resize(new_id, entry,
                             size + sys.getsizeof(new_id) - sys.getsizeof(id))
            deadline = entry.deadline
        return None if deadline is None or deadline == math.inf else deadline - now


# The lifecycle's own data are columns of session_expiry, beside the user's keys
# (rows of session_data), so no key can collide with them: ``live`` is 1 for a
# session made by ``create``, ``deadline`` the epoch it ends at however active it
# is (NULL: none).  A file made before these columns gets them on opening
# (_SQLITE_COLUMNS); code that does not know them still reads and writes the file.
_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS session_expiry (
    id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    live INTEGER NOT NULL DEFAULT 0,
    deadline REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS session_expiry_expires_at ON session_expiry (expires_at);
CREATE TABLE IF NOT EXISTS session_data (
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (id, key)
) WITHOUT ROWID;
"""
#: The columns added since the first schema, added by ALTER TABLE to an older file.
_SQLITE_COLUMNS = (("live", "INTEGER NOT NULL DEFAULT 0"), ("deadline", "REAL"))
# Renew a session that is still alive, never past its deadline; the row count says
# whether it was alive.  Parameters: (now + expire, now + expire, id, now).
_SQL_RENEW = ("UPDATE session_expiry SET expires_at = min(?, coalesce(deadline, ?)) "
              "WHERE id = ? AND expires_at > ?")
_SQL_RENEW_LIVE = _SQL_RENEW + " AND live = 1"
_SQL_EXPIRY_ROW = "SELECT expires_at, live, deadline FROM session_expiry WHERE id = ?"
# Values are read as bytes (decode_json decodes them): a TEXT column that is not UTF-8
# would otherwise fail inside sqlite3 with an error quoting the stored value.
_SQL_VALUE = "SELECT CAST(value AS BLOB) FROM session_data WHERE id = ? AND key = ?"
_SQL_ITEMS = "SELECT key, CAST(value AS BLOB) FROM session_data WHERE id = ?"
_SQL_UPSERT_VALUE = ("INSERT INTO session_data (id, key, value) VALUES (?, ?, ?) "
                     "ON CONFLICT (id, key) DO UPDATE SET value = excluded.value")
# The same few expired sessions, picked by the expiry index, for both deletes of one sweep.
_SQL_EXPIRED = "SELECT id FROM session_expiry WHERE expires_at <= ? ORDER BY expires_at LIMIT ?"


class SQLiteStore:
    """A persistent store in one SQLite file, shared by threads and processes on one machine.

    One row per (session, key), so ``set`` and ``delete`` of one key are single
    statements that never rewrite another key.  The file runs in WAL mode with a
    busy timeout; every operation is one short transaction.  Expired sessions
    read as empty and are swept, a few at a time, as the store is written.

    Reads do not write: ``get`` and ``get_all`` are one plain ``SELECT`` (no write
    lock, so they never wait behind another connection's write transaction) unless
    the session's renewal is due, i.e. its stored expiry is more than the slack off
    ``now + expire`` (capped at its deadline); the slack is ``min(60 s, 1% of
    expire)`` (``_renew_slack``), so the idle timeout holds to within it.  A due
    renewal is a ``BEGIN IMMEDIATE`` write, as before.  Writes (``set``, ``delete``,
    ``incr``, ``extend``) rewrite the expiry under the same rule: a ``set`` whose
    renewal is not due writes its value's row only.

    Each operation borrows a connection from a small pool and gives it back, so a
    server that starts a thread per request opens at most ``max_connections``
    (two descriptors each), not one per thread it ever ran: SQLite cannot close a
    connection at once while another of the process holds locks on the file, so
    per-thread connections left their descriptors behind (53 after 50 threads).

    :param path: the database file; created when missing.  ``':memory:'`` is
        refused: each thread's connection would see its own empty database.
    :param timeout: seconds to wait for another writer's lock before failing.
    :param max_connections: the most connections open at once; an operation that
        finds them all busy waits for one, up to ``timeout``, then fails.
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
        max_connections: int = 8,
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
        _check_count(max_connections, "max_connections", "connections")
        _check_count(sweep_every, "sweep_every", "writes")
        _check_count(sweep_batch, "sweep_batch", "sessions")
        self.sweep_every = sweep_every
        self.sweep_batch = sweep_batch
        self._clock = clock
        self._where = f"SQLiteStore at {self.path!r}"
        self.max_connections = max_connections
        self._pool = threading.Condition()
        self._idle: list[sqlite3.Connection] = []  # a stack: the warmest connection first
        self._opened = 0  # this process's connections, idle or lent
        self._generation = 0  # close() moves it on: what was lent before is closed on return
        self._pid = os.getpid()
        # A forked child never touches its parent's connections, and never lets them
        # be garbage-collected either: that would close them, and a close can undo the
        # parent's locks or checkpoint the parent's WAL under it.
        self._inherited: list[sqlite3.Connection] = []
        self._writes = 0
        with self._transaction("open") as db:
            for statement in _SQLITE_SCHEMA.split(";")[:-1]:  # not executescript: it commits
                db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(session_expiry)")}
            for name, kind in _SQLITE_COLUMNS:  # a file made before the lifecycle columns
                if name not in columns:
                    db.execute(f"ALTER TABLE session_expiry ADD COLUMN {name} {kind}")

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

    def _after_fork(self) -> None:
        """In a forked child, start an empty pool of its own (its parent's is left alone)."""
        if self._pid != os.getpid():
            self._inherited.extend(self._idle)
            self._idle, self._opened, self._pid = [], 0, os.getpid()
            self._pool = threading.Condition()  # the parent's lock may have been held at fork

    def _checkout(self, op: str) -> tuple[sqlite3.Connection, int, int]:
        """Lend a connection: ``(connection, pid, generation)`` to give back to ``_checkin``.

        An idle one if any, else a new one while fewer than ``max_connections`` are
        open, else wait for one to come back, up to ``timeout``: then StoreError.
        """
        self._after_fork()
        with self._pool:
            if not self._pool.wait_for(
                lambda: self._idle or self._opened < self.max_connections, self.timeout
            ):
                raise StoreError(
                    f"{self._where}: {op} failed: all {self.max_connections} connections "
                    f"(max_connections) stayed busy for {self.timeout} s"
                )
            lease = (self._pid, self._generation)
            if self._idle:
                return self._idle.pop(), *lease
            self._opened += 1
        try:  # outside the lock: opening can wait up to ``timeout`` for the WAL switch
            return self._open(), *lease
        except BaseException:
            with self._pool:
                self._opened -= 1
                self._pool.notify()
            raise

    def _checkin(self, db: sqlite3.Connection, pid: int, generation: int) -> None:
        """Take back a lent connection: idle again, or closed if close() ran or it is broken."""
        if pid != os.getpid():  # lent before a fork: the parent's to close, not ours
            self._inherited.append(db)
            return
        with self._pool:
            if generation == self._generation and not db.in_transaction:
                self._idle.append(db)
            else:
                self._opened -= 1
                db.close()
            self._pool.notify()

    def _open(self) -> sqlite3.Connection:
        """A new connection in WAL mode; lent to one thread at a time, so any thread may use it."""
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                             check_same_thread=False)
        try:
            self._use_wal(db)
            db.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe in WAL
        except BaseException:
            db.close()
            raise
        return db

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

    def _renew(self, db: sqlite3.Connection, id: SessionId, now: float, expire: float,
               live: bool, op: str) -> bool:
        """Renew a session still alive (never past its deadline); whether it was.  With
        ``live``: UnknownSession, changing nothing, unless ``create`` made it."""
        renewed = db.execute(_SQL_RENEW_LIVE if live else _SQL_RENEW,
                             (now + expire, now + expire, id, now)).rowcount
        if live and not renewed:
            raise _unknown(self._where, op)
        return bool(renewed)

    def _renew_when_due(self, db: sqlite3.Connection, id: SessionId, now: float,
                        expire: float, live: bool, op: str) -> None:
        """A write's renewal: as a read's, only when due (one ``SELECT`` of the session's
        row, the ``UPDATE`` only then); with ``live``, UnknownSession unless it is live.

        A renewal rewrites the expiry row and moves its entry in the ``expires_at``
        index: skipping it when it is not due halves a ``set`` (49.5 -> 24.0 us side by
        side, bench/README.md section 4), and the idle timeout holds to within the
        same slack.
        """
        row = db.execute(_SQL_EXPIRY_ROW, (id,)).fetchone()
        if not self._fresh(row, now, expire, live, op):
            self._renew(db, id, now, expire, live, op)

    def _open_plain(self, db: sqlite3.Connection, id: SessionId, now: float,
                    expire: float) -> None:
        """Make sure a plain write has a session row to write under, as Node's ``set`` does,
        renewed when due (as :meth:`_renew_when_due`)."""
        row = db.execute(_SQL_EXPIRY_ROW, (id,)).fetchone()
        if row is not None and row[0] > now and self._fresh(row, now, expire, False, "set"):
            return  # alive, and its renewal not due: nothing to write
        # An expired session that was not swept yet must not come back to life, its
        # data nor its liveness.
        db.execute("DELETE FROM session_data WHERE id = ? AND EXISTS (SELECT 1 FROM "
                   "session_expiry WHERE id = ? AND expires_at <= ?)", (id, id, now))
        db.execute("DELETE FROM session_expiry WHERE id = ? AND expires_at <= ?", (id, now))
        db.execute(
            "INSERT INTO session_expiry (id, expires_at) VALUES (?, ?) ON CONFLICT (id) DO "
            "UPDATE SET expires_at = min(excluded.expires_at, coalesce(deadline, "
            "excluded.expires_at))", (id, now + expire))

    # One statement reads the session's expiry row and the key's value (or all its
    # items): a single SELECT in autocommit is a consistent snapshot in WAL mode.
    _SQL_READ_VALUE = (
        "SELECT e.expires_at, e.live, e.deadline, CAST(d.value AS BLOB) FROM session_expiry e "
        "LEFT JOIN session_data d ON d.id = e.id AND d.key = ? WHERE e.id = ?")
    _SQL_READ_ITEMS = (
        "SELECT e.expires_at, e.live, e.deadline, d.key, CAST(d.value AS BLOB) "
        "FROM session_expiry e LEFT JOIN session_data d ON d.id = e.id WHERE e.id = ?")

    def _read(self, op: str, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        """Run one SELECT outside any transaction (no lock beyond a WAL snapshot); its rows."""
        try:
            db, *lease = self._checkout(op)
        except sqlite3.Error as error:
            raise StoreError(f"{self._where}: {op} failed: {error}") from error
        try:
            return db.execute(sql, parameters).fetchall()
        except sqlite3.Error as error:
            raise StoreError(f"{self._where}: {op} failed: {error}") from error
        finally:
            self._checkin(db, *lease)

    def _fresh(self, row: Any, now: float, expire: float, live: bool, op: str) -> bool:
        """From a session row ``(expires_at, live, deadline, ...)`` or None: True when it
        needs no renewal (no session, or one alive whose renewal is not due), so a read
        may stand as it is; False when the renewal is due; UnknownSession when ``live``
        and the session is not a live one."""
        if row is None or row[0] <= now:
            if live:
                raise _unknown(self._where, op)
            return True  # unknown or expired: reads as empty, and nothing to renew
        if live and not row[1]:
            raise _unknown(self._where, op)
        target = now + expire if row[2] is None else min(now + expire, row[2])
        # Due either way: time has passed, or a shorter ``expire`` shortens the session.
        return bool(abs(target - row[0]) <= _renew_slack(expire))

    def get(self, id: SessionId, key: str, expire: float, *, live: bool = False) -> Any:
        """Return a copy of the value of ``key``, or None: a plain read unless the
        session's renewal is due."""
        now = self._clock()
        rows = self._read("get", self._SQL_READ_VALUE, (key, id))
        row = rows[0] if rows else None
        if self._fresh(row, now, expire, live, "get"):
            stored = None if row is None or row[0] <= now else row[3]
        else:
            with self._transaction("get") as db:
                if not self._renew(db, id, now, expire, live, "get"):
                    return None
                value = db.execute(_SQL_VALUE, (id, key)).fetchone()
            stored = None if value is None else value[0]
        if stored is None:
            return None
        try:
            return decode_json(stored)
        except ValueError:
            failure = _not_json(self._where, "get", [(key, stored)])
        raise failure  # out of the except block: the decode error (holding the value) is dropped

    def get_all(self, id: SessionId, expire: float, *, live: bool = False) -> dict[str, Any]:
        """Return a copy of all the session's data: a plain read unless the session's
        renewal is due."""
        now = self._clock()
        read = self._read("get_all", self._SQL_READ_ITEMS, (id,))
        first = read[0] if read else None
        if self._fresh(first, now, expire, live, "get_all"):
            if first is None or first[0] <= now:
                return {}
            rows = [(row[3], row[4]) for row in read if row[3] is not None]
        else:
            with self._transaction("get_all") as db:
                if not self._renew(db, id, now, expire, live, "get_all"):
                    return {}
                rows = db.execute(_SQL_ITEMS, (id,)).fetchall()
        try:
            return {key: decode_json(value) for key, value in rows}
        except ValueError:
            failure = _not_json(self._where, "get_all", rows)
        raise failure

    def set(self, id: SessionId, key: str, value: Any, expire: float, *,
            live: bool = False) -> None:
        """Store ``value`` under ``key``: one upsert of one row, and the expiry."""
        text = encode_json(key, value)
        now = self._clock()
        with self._transaction("set") as db:
            if live:
                self._renew_when_due(db, id, now, expire, True, "set")
            else:
                self._open_plain(db, id, now, expire)
            db.execute(_SQL_UPSERT_VALUE, (id, key, text))
            self._sweep(db, now)

    def delete(self, id: SessionId, key: str, expire: float, *, live: bool = False) -> None:
        """Remove ``key`` from the session."""
        now = self._clock()
        with self._transaction("delete") as db:
            self._renew_when_due(db, id, now, expire, live, "delete")
            db.execute("DELETE FROM session_data WHERE id = ? AND key = ?", (id, key))
            self._sweep(db, now)

    def delete_all(self, id: SessionId) -> None:
        """Remove the whole session."""
        with self._transaction("delete_all") as db:
            db.execute("DELETE FROM session_data WHERE id = ?", (id,))
            db.execute("DELETE FROM session_expiry WHERE id = ?", (id,))

    def extend(self, id: SessionId, expire: float, *, live: bool = False) -> None:
        """Renew the session's expiry, if it exists."""
        now = self._clock()
        with self._transaction("extend") as db:
            self._renew_when_due(db, id, now, expire, live, "extend")

    def create(self, id: SessionId, expire: float, lifetime: float | None = None) -> None:
        """Make ``id`` a live session with no data, ending ``lifetime`` seconds from now."""
        now = self._clock()
        deadline = None if lifetime is None else now + lifetime
        with self._transaction("create") as db:
            db.execute("DELETE FROM session_data WHERE id = ?", (id,))
            db.execute("DELETE FROM session_expiry WHERE id = ?", (id,))
            db.execute("INSERT INTO session_expiry (id, expires_at, live, deadline) "
                       "VALUES (?, min(?, coalesce(?, ?)), 1, ?)",
                       (id, now + expire, deadline, now + expire, deadline))
            self._sweep(db, now)

    def incr(self, id: SessionId, key: str, amount: int, expire: float, *,
             live: bool = False) -> int:
        """Add ``amount`` to the integer under ``key`` (missing: 0); return the sum.

        One ``BEGIN IMMEDIATE`` transaction reads and writes: no other writer between.
        """
        _check_amount(self._where, key, amount)
        now = self._clock()
        with self._transaction("incr") as db:
            if live:
                self._renew_when_due(db, id, now, expire, True, "incr")
            else:
                self._open_plain(db, id, now, expire)
            row = db.execute(_SQL_VALUE, (id, key)).fetchone()
            total = _incremented(self._where, key, None if row is None else row[0], amount)
            db.execute(_SQL_UPSERT_VALUE, (id, key, int.__repr__(total)))
        return total

    def rename(self, id: SessionId, new_id: SessionId, expire: float) -> float | None:
        """Move the live session ``id`` (data and deadline) to ``new_id``; end ``id``.

        One transaction: no other connection sees the session half-moved.
        """
        now = self._clock()
        with self._transaction("rename") as db:
            row = db.execute("SELECT deadline FROM session_expiry WHERE id = ? AND "
                             "expires_at > ? AND live = 1", (id, now)).fetchone()
            if row is None:
                raise _unknown(self._where, "rename")
            if new_id != id:
                db.execute("DELETE FROM session_data WHERE id = ?", (new_id,))
                db.execute("DELETE FROM session_expiry WHERE id = ?", (new_id,))
                db.execute("UPDATE session_data SET id = ? WHERE id = ?", (new_id, id))
                db.execute("UPDATE session_expiry SET id = ? WHERE id = ?", (new_id, id))
            self._renew(db, new_id, now, expire, True, "rename")
        deadline = row[0]
        return None if deadline is None else deadline - now

    def close(self) -> None:
        """Close the pooled connections; those lent out close when they come back.

        The store stays usable: the next operation opens a connection again.
        """
        self._after_fork()
        with self._pool:
            idle, self._idle = self._idle, []
            self._opened -= len(idle)
            self._generation += 1
            for db in idle:
                db.close()


class _SQLiteTransaction:
    """``with`` block: one short transaction on a pooled connection, rolled back whole on error.

    sqlite3 errors become StoreError; the connection goes back to the pool either way.
    """

    __slots__ = ("_db", "_lease", "_op", "_store", "_write")

    def __init__(self, store: SQLiteStore, op: str, write: bool) -> None:
        self._store, self._op, self._write = store, op, write

    def __enter__(self) -> sqlite3.Connection:
        try:
            self._db, *self._lease = self._store._checkout(self._op)
        except sqlite3.Error as error:
            raise self._error(error) from error
        try:
            # IMMEDIATE takes the write lock up front, so a transaction never has to
            # be retried half-way because another process wrote first.
            self._db.execute("BEGIN IMMEDIATE" if self._write else "BEGIN")
        except BaseException as error:
            self._store._checkin(self._db, *self._lease)
            if isinstance(error, sqlite3.Error):
                raise self._error(error) from error
            raise
        return self._db

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: object) -> None:
        try:
            self._finish(error)
        finally:
            self._store._checkin(self._db, *self._lease)

    def _finish(self, error: BaseException | None) -> None:
        """COMMIT, or ROLLBACK after an error; a failure of either becomes StoreError."""
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
        return StoreError(f"{self._store._where}: {self._op} failed: {error}")


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


class _RedisCall:
    """One command a Redis store's plan asks its driver to send, and how to send it.

    ``script`` is ``"op"`` (the one-key operation script), ``"rename"`` (one server's
    RENAME script) or ``"del"`` (a plain DEL).  ``secret`` are the strings of this call
    that must never reach a message (the Redis keys, which hold the session token,
    and stored JSON text).  ``write`` says whether ``wait_replicas`` applies.
    """

    __slots__ = ("args", "keys", "op", "script", "secret", "write")

    def __init__(self, op: str, script: str, keys: list[str], args: list[str | int],
                 secret: tuple[str, ...], write: bool) -> None:
        self.op, self.script, self.keys, self.args = op, script, keys, args
        self.secret, self.write = secret, write


#: What a plan is: it yields the calls to send, is sent their replies (or has the
#: StoreError of a failed one thrown into it) and returns the operation's result.
_RedisPlan: TypeAlias = Generator[_RedisCall, Any, Any]

#: What ``_RedisBase._waited`` returns for a script the server does not have yet.
_NOSCRIPT = object()

#: The operations that change the session (the others only read, and renew the
#: expiry only when the renewal is due).
_REDIS_WRITES = frozenset({"set", "delete", "incr", "create", "put", "take", "extend"})


class _RedisBase:
    """What :class:`RedisStore` and :class:`AsyncRedisStore` share: every operation
    written once, as a *plan* that yields the commands it needs and gets their replies
    back; each store's driver sends them, blocking or awaited.  So the two keep
    sessions in exactly one layout, and a WSGI app and an ASGI app share them.
    """

    _kind = "RedisStore"

    def __init__(self, client: Any, prefix: str, wait_replicas: int, wait_timeout: float,
                 asynchronous: bool) -> None:
        if not callable(getattr(client, "register_script", None)):
            raise TypeError(f"{self._kind} needs a redis-py client (with a register_script() "
                            f"method), got {type(client).__name__}")
        if inspect.iscoroutinefunction(client.execute_command) != asynchronous:
            want, use = (("a redis.asyncio.Redis or redis.asyncio.RedisCluster", "RedisStore")
                         if asynchronous else
                         ("a redis.Redis or redis.cluster.RedisCluster", "AsyncRedisStore"))
            raise TypeError(f"{self._kind} needs {want} client, got "
                            f"{type(client).__module__}.{type(client).__name__}: "
                            f"use {use} for that one")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__} {prefix!r}")
        self.client = client
        self.prefix = prefix
        #: Replicas that must have each write before it is acknowledged (0: do not wait).
        self.wait_replicas = _check_count(wait_replicas, "wait_replicas", "replicas", least=0)
        #: Seconds to wait for them before the write fails with StoreError.
        self.wait_timeout = _check_seconds(wait_timeout, "wait_timeout", 3600.0,
                                           "an hour: a request would hang that long")
        self.address = _redis_address(client)
        self._where = f"{self._kind} at {self.address}"
        self._cluster = callable(getattr(client, "get_node_from_key", None))

    def __repr__(self) -> str:
        waits = f", wait_replicas={self.wait_replicas}" if self.wait_replicas else ""
        return f"{self._kind}(address={self.address!r}, prefix={self.prefix!r}{waits})"

    def _repr_html_(self) -> str:
        return _html_table(self._kind, [("address", self.address), ("prefix", self.prefix),
                                        ("wait_replicas", self.wait_replicas)])

    @staticmethod
    def _ms(expire: float) -> int:
        return max(1, math.ceil(expire * 1000))

    # -- the operation script's arguments and replies -----------------------

    def _args(self, op: str, live: bool, expire: float, *args: str | int) -> list[str | int]:
        """The operation script's ARGV: op, live, expire and a read's renewal slack (in
        ms), then the op's own arguments."""
        return [op, 1 if live else 0, self._ms(expire),
                math.floor(_renew_slack(expire) * 1000), *args]

    def _checked(self, op: str, reply: list[Any]) -> list[Any]:
        """The operation script's ``reply``.

        :raises UnknownSession: for a live operation on a session that is not live.
        """
        if reply[0] == 0:
            raise _unknown(self._where, op)
        return reply

    def _value(self, reply: list[Any], key: str) -> Any:
        """What ``get`` returns for the script's checked ``reply``: the decoded value, or None."""
        value = reply[1] if len(reply) > 1 else None
        if value is None:
            return None
        try:
            return decode_json(value)
        except ValueError:
            failure = _not_json(self._where, "get", [(key, value)])
        raise failure  # out of the except block: the decode error (holding the value) is dropped

    # -- plans: the operations, written once --------------------------------

    def _op(self, op: str, name: str, live: bool, expire: float, *args: str | int,
            secret: tuple[str, ...] = ()) -> Generator[_RedisCall, Any, list[Any]]:
        """One run of the operation script on the hash ``name``.

        :raises UnknownSession: for a live operation on a session that is not live.
        """
        reply: list[Any] = yield _RedisCall(op, "op", [name], self._args(op, live, expire, *args),
                                            (name, *secret), op in _REDIS_WRITES)
        return self._checked(op, reply)

    def _get_all(self, id: SessionId, expire: float, live: bool) -> _RedisPlan:
        flat = (yield from self._op("get_all", self.prefix + id, live, expire))[1]
        fields = list(zip(flat[::2], flat[1::2], strict=True))
        try:
            return {_text(field): decode_json(value) for field, value in fields}
        except ValueError:
            failure = _not_json(self._where, "get_all", fields)
        raise failure

    def _set(self, id: SessionId, key: str, value: Any, expire: float, live: bool) -> _RedisPlan:
        text = encode_json(key, value)
        yield from self._op("set", self.prefix + id, live, expire, key, text, secret=(text,))

    def _delete(self, id: SessionId, key: str, expire: float, live: bool) -> _RedisPlan:
        yield from self._op("delete", self.prefix + id, live, expire, key)

    def _delete_all(self, id: SessionId) -> _RedisPlan:
        name = self.prefix + id
        yield _RedisCall("delete_all", "del", [name], [], (name,), True)

    def _extend(self, id: SessionId, expire: float, live: bool) -> _RedisPlan:
        yield from self._op("extend", self.prefix + id, live, expire)

    def _create(self, id: SessionId, expire: float, lifetime: float | None) -> _RedisPlan:
        yield from self._op("create", self.prefix + id, False, expire,
                            0 if lifetime is None else self._ms(lifetime))

    def _incr(self, id: SessionId, key: str, amount: int, expire: float,
              live: bool) -> _RedisPlan:
        _check_amount(self._where, key, amount)
        reply = yield from self._op("incr", self.prefix + id, live, expire, key, amount)
        if int(reply[0]) == 2:
            raise TypeError(f"{self._where}: incr found a value under key {key!r} that is "
                            "not a JSON integer; nothing was changed")
        if int(reply[0]) == 3:
            raise ValueError(f"{self._where}: incr of key {key!r} would leave the signed "
                             "64-bit range; nothing was changed")
        return int(reply[1])

    def _rename(self, id: SessionId, new_id: SessionId, expire: float) -> _RedisPlan:
        old, new = self.prefix + id, self.prefix + new_id
        if not self._cluster:
            reply = yield _RedisCall("rename", "rename", [old, new], [self._ms(expire)],
                                     (old, new), True)
            if int(reply[0]) == 0:
                raise _unknown(self._where, "rename")
        else:
            fields = (yield from self._op("take", old, True, expire))[1]
            try:
                reply = yield from self._op("put", new, False, expire, *fields)
            except BaseException:  # best effort: put it back
                yield from self._op("put", old, False, expire, *fields)
                raise
        left = int(reply[1])
        return None if left < 0 else left / 1000

    # -- what the drivers share ---------------------------------------------

    def _failure(self, call: _RedisCall, error: BaseException) -> StoreError:
        """The StoreError for ``call`` failing with redis-py's ``error``, naming no secret.

        The Redis key (which holds the session token) and the stored JSON text are cut
        out of the message along with the command redis-py quotes; the cause is a
        sanitised copy, so the original (whose args quote the command) is dropped.
        """
        message = _redacted_message(error, call.secret)
        failure = StoreError(f"{self._where}: {call.op} failed: {type(error).__name__}: {message}")
        failure.__cause__ = _sanitised_copy(error, message)
        return failure

    def _waits(self, call: _RedisCall) -> bool:
        return self.wait_replicas > 0 and call.write

    def _pipelined(self, call: _RedisCall, pipe: Any) -> None:
        """Queue ``call`` and a WAIT on ``pipe``: one round trip, on one connection,
        which is what WAIT counts (it waits for that connection's writes)."""
        if call.script == "del":
            pipe.delete(*call.keys)
        else:
            pipe.evalsha(_REDIS_SHA[call.script], len(call.keys), *call.keys, *call.args)
        pipe.execute_command("WAIT", self.wait_replicas, self._ms(self.wait_timeout))

    def _waited(self, call: _RedisCall, replies: list[Any], loaded: bool) -> Any:
        """The reply of a pipelined ``call`` + WAIT, or raise what went wrong.

        :returns: ``_NOSCRIPT`` when the server lacks the script (flushed, or a new
            server) and it has not just been ``loaded``: it did not run, so the
            caller loads it and sends the call again.
        """
        reply, acked = replies
        if isinstance(reply, Exception):
            if type(reply).__name__ == "NoScriptError" and not loaded:
                return _NOSCRIPT
            raise reply
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < self.wait_replicas:
            raise StoreError(
                f"{self._where}: {call.op} was written on the primary, but only {int(acked)} "
                f"of the {self.wait_replicas} replicas asked for (wait_replicas) had it within "
                f"wait_timeout={self.wait_timeout}s: it may be lost if the primary fails")
        return reply

    def _node(self, key: str) -> Any:
        """The client to pipeline a write + WAIT on: the server holding ``key``."""
        if not self._cluster:
            return self.client
        if not callable(getattr(self.client, "get_redis_connection", None)):
            raise TypeError(f"{self._where}: wait_replicas needs a cluster client with "
                            "get_redis_connection() (redis.cluster.RedisCluster)")
        return self.client.get_redis_connection(self.client.get_node_from_key(key))


class RedisStore(_RedisBase):
    """A store on Redis, for sessions shared by many servers; Redis' expiry cleans up.

    Each session is one Redis hash (one key, so it works on a cluster), a field
    per session key holding JSON text.  Every operation is one server-side script
    (one EVALSHA: one round trip, atomic), the expiry renewal and the lifecycle's
    checks included; the lifecycle's own field cannot collide with any key.  A read
    (``get``, ``get_all``) renews the expiry only when it has fallen more than
    ``min(60 s, 1% of expire)`` behind, so most reads write nothing.

    :param client: a ``redis.Redis`` or ``redis.cluster.RedisCluster`` the app
        already has (set its ``socket_timeout``: a store that hangs hangs requests).
        ``decode_responses`` may be on or off.  For a ``redis.asyncio`` client use
        :class:`AsyncRedisStore`.
    :param prefix: put before every session id to make the Redis key.
    :param wait_replicas: acknowledge a write only once this many replicas have it
        (Redis ``WAIT``, pipelined with the write: still one round trip, plus the
        replicas' delay), so that a failover loses no acknowledged write.  0, the
        default, does not wait: Redis replicates asynchronously.
    :param wait_timeout: seconds to wait for those replicas; when fewer have the
        write by then, it raises :class:`StoreError` (a 503) saying so.
    :raises TypeError: for a client that is not a blocking redis-py client.
    """

    def __init__(self, client: Any, prefix: str = "", *, wait_replicas: int = 0,
                 wait_timeout: float = 1.0) -> None:
        super().__init__(client, prefix, wait_replicas, wait_timeout, asynchronous=False)

    # The shared repr, named here so that each public class shows its own state.
    __repr__ = _RedisBase.__repr__

    def _run(self, plan: _RedisPlan) -> Any:
        """Carry out ``plan``: send each call it yields, blocking, and return its result."""
        try:
            call = next(plan)
            while True:
                try:
                    reply = self._send(call)
                except StoreError as error:
                    call = plan.throw(error)
                else:
                    call = plan.send(reply)
        except StopIteration as done:
            return done.value

    def _send(self, call: _RedisCall) -> Any:
        try:
            if self._waits(call):
                return self._send_and_wait(call)
            if call.script == "del":
                return self.client.delete(*call.keys)
            return self._evalsha(call.script, call.keys, call.args)
        except (TypeError, ValueError, StoreError):  # a bad argument of the caller's: Redis is fine
            raise
        except Exception as error:  # redis-py raises its own ConnectionError, TimeoutError...
            failure = error
        # Raised here, out of the except block, so that the original error (whose args
        # quote the command with the token and the value) is not even the __context__.
        raise self._failure(call, failure)

    def _send_and_wait(self, call: _RedisCall) -> Any:
        """``call`` and a WAIT in one pipeline, on the server holding the key; sent a
        second time only after loading a script the server did not have."""
        node = self._node(call.keys[0])
        for loaded in (False, True):
            with node.pipeline(transaction=False) as pipe:
                self._pipelined(call, pipe)
                reply = self._waited(call, pipe.execute(raise_on_error=False), loaded)
            if reply is not _NOSCRIPT:
                break
            node.script_load(_REDIS_SCRIPTS[call.script])
        return reply

    def _evalsha(self, which: str, keys: list[str], args: list[str | int]) -> Any:
        """Run the script ``which``; loaded and sent again if the server lacks it (flushed,
        restarted, a new node), as redis-py's ``Script`` does.

        Straight through ``execute_command`` (a cluster client routes EVALSHA by its
        keys): redis-py's ``Script.__call__`` and ``evalsha`` on the way cost ~2.5 µs.
        """
        try:
            return self.client.execute_command("EVALSHA", _REDIS_SHA[which], len(keys),
                                               *keys, *args)
        except Exception as error:
            if type(error).__name__ != "NoScriptError":
                raise
        self.client.script_load(_REDIS_SCRIPTS[which])
        return self.client.execute_command("EVALSHA", _REDIS_SHA[which], len(keys), *keys, *args)

    def _direct(self, op: str, name: str, args: list[str | int], *secret: str) -> list[Any]:
        """One run of the operation script on ``name`` for an op that does not WAIT,
        without a plan or a ``_RedisCall`` (built only for an error's message).

        What ``get`` and ``set`` take: the plan's generator and call object cost ~1 µs.
        """
        try:
            reply: list[Any] = self._evalsha("op", [name], args)
        except (TypeError, ValueError):  # a bad argument of the caller's: Redis is fine
            raise
        except Exception as error:
            failure = error
        else:
            return self._checked(op, reply)
        raise self._failure(_RedisCall(op, "op", [name], args, (name, *secret), False), failure)

    def get(self, id: SessionId, key: str, expire: float, *, live: bool = False) -> Any:
        """Return a copy of the value of ``key``, or None (one script: HGET, and PEXPIRE
        when the renewal is due)."""
        return self._value(self._direct("get", self.prefix + id,
                                        self._args("get", live, expire, key)), key)

    def get_all(self, id: SessionId, expire: float, *, live: bool = False) -> dict[str, Any]:
        """Return a copy of all the session's data (one script: HGETALL, PEXPIRE if due)."""
        return self._run(self._get_all(id, expire, live))  # type: ignore[no-any-return]

    def set(self, id: SessionId, key: str, value: Any, expire: float, *,
            live: bool = False) -> None:
        """Store ``value`` under ``key`` (one script: HSET, PEXPIRE)."""
        if self.wait_replicas:
            self._run(self._set(id, key, value, expire, live))
        else:
            text = encode_json(key, value)
            self._direct("set", self.prefix + id, self._args("set", live, expire, key, text), text)

    def delete(self, id: SessionId, key: str, expire: float, *, live: bool = False) -> None:
        """Remove ``key`` from the session (one script: HDEL, PEXPIRE)."""
        self._run(self._delete(id, key, expire, live))

    def delete_all(self, id: SessionId) -> None:
        """Remove the whole session (DEL)."""
        self._run(self._delete_all(id))

    def extend(self, id: SessionId, expire: float, *, live: bool = False) -> None:
        """Renew the session's expiry (a no-op for a session that does not exist)."""
        self._run(self._extend(id, expire, live))

    def create(self, id: SessionId, expire: float, lifetime: float | None = None) -> None:
        """Make ``id`` a live session with no data (one script: DEL, HSET of the lifecycle
        field, PEXPIRE); its deadline is measured by the Redis server's clock."""
        self._run(self._create(id, expire, lifetime))

    def incr(self, id: SessionId, key: str, amount: int, expire: float, *,
             live: bool = False) -> int:
        """Add ``amount`` to the integer under ``key`` (one script: HINCRBY, PEXPIRE)."""
        return self._run(self._incr(id, key, amount, expire, live))  # type: ignore[no-any-return]

    def rename(self, id: SessionId, new_id: SessionId, expire: float) -> float | None:
        """Move the live session ``id`` to ``new_id`` (data and deadline); end ``id``.

        On one Redis server this is one script (RENAME): atomic.  On a Cluster the two
        ids live in different hash slots, which no one command may span: the old id is
        ended and its data taken in one script, then written under the new id in
        another.  Between the two no request can use either id (its requests see the
        session ended); if the second fails, the data is put back under the old id.
        """
        return self._run(self._rename(id, new_id, expire))  # type: ignore[no-any-return]


class AsyncRedisStore(_RedisBase):
    """:class:`RedisStore` for asyncio: the same operations, scripts and layout, awaited.

    A WSGI app with a ``RedisStore`` and an ASGI app with an ``AsyncRedisStore`` on the
    same Redis (and ``prefix``) share their sessions.

    :param client: a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` (set
        its ``socket_timeout``).
    :param prefix: put before every session id to make the Redis key.
    :param wait_replicas: as for :class:`RedisStore`; on one server only (a
        ``redis.asyncio.RedisCluster`` offers no client per node to pipeline on).
    :param wait_timeout: as for :class:`RedisStore`.
    :raises TypeError: for a client that is not a redis-py asyncio client.
    """

    _kind = "AsyncRedisStore"
    # The shared repr, named here so that each public class shows its own state.
    __repr__ = _RedisBase.__repr__

    def __init__(self, client: Any, prefix: str = "", *, wait_replicas: int = 0,
                 wait_timeout: float = 1.0) -> None:
        super().__init__(client, prefix, wait_replicas, wait_timeout, asynchronous=True)
        if self.wait_replicas and self._cluster:
            raise ValueError("AsyncRedisStore: wait_replicas is supported on one Redis "
                             "server, not with a redis.asyncio.RedisCluster client; use "
                             "RedisStore (through ThreadedStore) with redis.cluster.RedisCluster")

    async def _run(self, plan: _RedisPlan) -> Any:
        """Carry out ``plan``: send each call it yields, awaited, and return its result."""
        try:
            call = next(plan)
            while True:
                try:
                    reply = await self._send(call)
                except StoreError as error:
                    call = plan.throw(error)
                else:
                    call = plan.send(reply)
        except StopIteration as done:
            return done.value

    async def _send(self, call: _RedisCall) -> Any:
        try:
            if self._waits(call):
                return await self._send_and_wait(call)
            if call.script == "del":
                return await self.client.delete(*call.keys)
            return await self._evalsha(call.script, call.keys, call.args)
        except (TypeError, ValueError, StoreError):
            raise
        except Exception as error:
            failure = error
        raise self._failure(call, failure)

    async def _send_and_wait(self, call: _RedisCall) -> Any:
        """:meth:`RedisStore._send_and_wait`, awaited (one server: no node to pick)."""
        for loaded in (False, True):
            async with self.client.pipeline(transaction=False) as pipe:
                self._pipelined(call, pipe)
                reply = self._waited(call, await pipe.execute(raise_on_error=False), loaded)
            if reply is not _NOSCRIPT:
                break
            await self.client.script_load(_REDIS_SCRIPTS[call.script])
        return reply

    async def _evalsha(self, which: str, keys: list[str], args: list[str | int]) -> Any:
        """:meth:`RedisStore._evalsha`, awaited."""
        try:
            return await self.client.execute_command("EVALSHA", _REDIS_SHA[which], len(keys),
                                                     *keys, *args)
        except Exception as error:
            if type(error).__name__ != "NoScriptError":
                raise
        await self.client.script_load(_REDIS_SCRIPTS[which])
        return await self.client.execute_command("EVALSHA", _REDIS_SHA[which], len(keys),
                                                 *keys, *args)

    async def _direct(self, op: str, name: str, args: list[str | int],
                      *secret: str) -> list[Any]:
        """:meth:`RedisStore._direct`, awaited."""
        try:
            reply: list[Any] = await self._evalsha("op", [name], args)
        except (TypeError, ValueError):
            raise
        except Exception as error:
            failure = error
        else:
            return self._checked(op, reply)
        raise self._failure(_RedisCall(op, "op", [name], args, (name, *secret), False), failure)

    async def get(self, id: SessionId, key: str, expire: float, *, live: bool = False) -> Any:
        """:meth:`RedisStore.get`, awaited."""
        return self._value(await self._direct("get", self.prefix + id,
                                              self._args("get", live, expire, key)), key)

    async def get_all(self, id: SessionId, expire: float, *,
                      live: bool = False) -> dict[str, Any]:
        """:meth:`RedisStore.get_all`, awaited."""
        return await self._run(self._get_all(id, expire, live))  # type: ignore[no-any-return]

    async def set(self, id: SessionId, key: str, value: Any, expire: float, *,
                  live: bool = False) -> None:
        """:meth:`RedisStore.set`, awaited."""
        if self.wait_replicas:
            await self._run(self._set(id, key, value, expire, live))
        else:
            text = encode_json(key, value)
            await self._direct("set", self.prefix + id,
                               self._args("set", live, expire, key, text), text)

    async def delete(self, id: SessionId, key: str, expire: float, *,
                     live: bool = False) -> None:
        """:meth:`RedisStore.delete`, awaited."""
        await self._run(self._delete(id, key, expire, live))

    async def delete_all(self, id: SessionId) -> None:
        """:meth:`RedisStore.delete_all`, awaited."""
        await self._run(self._delete_all(id))

    async def extend(self, id: SessionId, expire: float, *, live: bool = False) -> None:
        """:meth:`RedisStore.extend`, awaited."""
        await self._run(self._extend(id, expire, live))

    async def create(self, id: SessionId, expire: float, lifetime: float | None = None) -> None:
        """:meth:`RedisStore.create`, awaited."""
        await self._run(self._create(id, expire, lifetime))

    async def incr(self, id: SessionId, key: str, amount: int, expire: float, *,
                   live: bool = False) -> int:
        """:meth:`RedisStore.incr`, awaited."""
        return await self._run(self._incr(id, key, amount, expire, live))  # type: ignore[no-any-return]

    async def rename(self, id: SessionId, new_id: SessionId, expire: float) -> float | None:
        """:meth:`RedisStore.rename`, awaited (on a Cluster: take, then put, as there)."""
        return await self._run(self._rename(id, new_id, expire))  # type: ignore[no-any-return]


# One script for every operation of RedisStore, on one key (KEYS[1], the session's
# hash): ARGV = op, live (0/1), expire in ms, a read's renewal slack in ms, then the
# op's own arguments.  The
# lifecycle's field is named '\255gs': a byte no UTF-8 key holds, so no session key
# can collide with it, and no reply ever carries it.  Its value is the deadline in
# ms of the server's clock (0: none).  Replies: {0} not live (nothing changed), {1,
# result}, {2} incr of a value that is not an integer, {3} incr overflow.
_REDIS_OP = r"""
local key, op, live, expire = KEYS[1], ARGV[1], ARGV[2] == '1', tonumber(ARGV[3])
local slack = tonumber(ARGV[4])
local META = '\255gs'
local meta = redis.call('HGET', key, META)
if live and not meta then return {0} end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A read renews only when the expiry is more than the slack (_renew_slack, in ms) away
-- from where a renewal puts it: most reads write nothing, and replicate nothing.
local function renew(read)
  local ms = expire
  if meta and tonumber(meta) > 0 then
    local left = tonumber(meta) - now_ms()
    if left < ms then ms = left end
    if ms < 1 then ms = 1 end
  end
  if read and math.abs(redis.call('PTTL', key) - ms) <= slack then return end
  redis.call('PEXPIRE', key, ms)
end
if op == 'get' then
  local value = redis.call('HGET', key, ARGV[5])
  renew(true)
  return {1, value}
elseif op == 'get_all' or op == 'take' then
  local all = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #all, 2 do
    if all[i] ~= META or op == 'take' then
      out[#out + 1] = all[i]
      out[#out + 1] = all[i + 1]
    end
  end
  if op == 'take' then redis.call('DEL', key) else renew(true) end
  return {1, out}
elseif op == 'set' then
  redis.call('HSET', key, ARGV[5], ARGV[6])
  renew()
  return {1}
elseif op == 'delete' then
  redis.call('HDEL', key, ARGV[5])
  renew()
  return {1}
elseif op == 'extend' then
  renew()
  return {1}
elseif op == 'incr' then
  local value = redis.call('HGET', key, ARGV[5])
  if value and not string.match(value, '^%-?%d+$') then return {2} end
  local sum = redis.pcall('HINCRBY', key, ARGV[5], ARGV[6])
  if type(sum) == 'table' and sum.err then return {3} end
  renew()
  return {1, sum}
elseif op == 'create' then
  redis.call('DEL', key)
  local deadline = 0
  if tonumber(ARGV[5]) > 0 then deadline = now_ms() + tonumber(ARGV[5]) end
  meta = tostring(deadline)
  redis.call('HSET', key, META, meta)
  renew()
  return {1}
elseif op == 'put' then
  redis.call('DEL', key)
  for i = 5, #ARGV, 2 do
    redis.call('HSET', key, ARGV[i], ARGV[i + 1])
    if ARGV[i] == META then meta = ARGV[i + 1] end
  end
  renew()
  local left = -1
  if meta and tonumber(meta) > 0 then left = tonumber(meta) - now_ms() end
  return {1, left}
end
return redis.error_reply('generic_session: unknown operation')
"""

# rename on one Redis server: KEYS = old, new; ARGV = expire in ms.  Replies {0} when
# the old session is not live, else {1, ms left before the deadline, or -1}.
_REDIS_RENAME = r"""
local META = '\255gs'
local meta = redis.call('HGET', KEYS[1], META)
if not meta then return {0} end
redis.call('RENAME', KEYS[1], KEYS[2])
local ms, left = tonumber(ARGV[1]), -1
if tonumber(meta) > 0 then
  local t = redis.call('TIME')
  left = tonumber(meta) - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  if left < ms then ms = left end
  if ms < 1 then ms = 1 end
end
redis.call('PEXPIRE', KEYS[2], ms)
return {1, left}
"""

#: The scripts by the name a ``_RedisCall`` gives them, and their SHA-1 (what EVALSHA
#: sends): computed here, so that no call has to register or load them first.
_REDIS_SCRIPTS = {"op": _REDIS_OP, "rename": _REDIS_RENAME}
_REDIS_SHA = {name: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
              for name, source in _REDIS_SCRIPTS.items()}


# ============================================================================
# 9. Appendix: check_store, the contract every store passes
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


def _expect(ok: bool, got: Any, name: str, operation: str, expected: str) -> None:
    """Raise AssertionError unless ``ok``; ``got`` is the value ``ok`` was computed from.

    The caller fetches once and passes that value: fetching again for the message
    could report a different value than the one that failed.
    """
    if not ok:
        raise AssertionError(f"{name}.{operation}: expected {expected}, got {got!r}")


#: The expiry the checks use when expiry is not what they test: an hour.
_LONG = 3600.0


def check_store(store: Store | AsyncStore, *, expire: float = 0.5, writes: int = 1000) -> None:
    """Check that ``store`` keeps the Store API's contract; raise AssertionError if not.

    Covers missing keys and unknown sessions, JSON round trips of every JSON
    type, copies in and out, non-JSON values refused, ``delete``,
    ``delete_all``, ``extend``, expiry after ``expire`` seconds renewed by every
    operation (it sleeps about that long once), isolation between sessions, and
    concurrent writers on different keys of one session all surviving.  For a store
    with the lifecycle operations (:class:`LifecycleStore`) it checks them too:
    live sessions only from ``create``, live operations refusing every other session
    (never made, plain, expired, past its deadline, deleted, renamed away) and
    changing nothing, renewal capped at the deadline, the lifecycle's data invisible,
    ``incr`` (atomic under four threads, refusing what is not an integer) and
    ``rename``.  It uses fresh random session ids and deletes them at the end.

    An async store (:class:`AsyncStore`: ``AsyncRedisStore``, ``ThreadedStore(...)``,
    yours) is checked the same way, on an event loop of its own; from code already
    running on a loop (a notebook cell, an async test), ``await check_async_store(store)``.

    :param expire: the short expiry to test with, in seconds; raise it for a store
        whose expiry is coarser.
    :param writes: how many keys each of the four concurrent writers sets.
    """
    if _is_async(store):
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop running here: the usual case
            asyncio.run(check_async_store(store, expire=expire, writes=writes))
            return
        raise RuntimeError(f"check_store({type(store).__name__}) was called on a running "
                           "event loop, which it would block: await check_async_store(store)")
    _check_all(cast(Store, store), type(store).__name__, expire, writes)


async def check_async_store(store: AsyncStore | Store, *, expire: float = 0.5,
                            writes: int = 1000) -> None:
    """:func:`check_store` for an async store, awaited on the running event loop.

    The same checks run in a worker thread, each store call handed to this loop and
    awaited there, so the four concurrent writers are four coroutines interleaved on
    the loop, as concurrent requests are.
    """
    import asyncio

    blocking = _Blocking(store, asyncio.get_running_loop())
    await asyncio.to_thread(_check_all, cast(Store, blocking), type(store).__name__,
                            expire, writes)


def _is_async(store: object) -> bool:
    return inspect.iscoroutinefunction(getattr(store, "get", None))


class _Blocking:
    """An async store seen from a worker thread as a blocking one: each call is run on
    ``loop`` (the one the store belongs to) and waited for."""

    def __init__(self, store: object, loop: Any) -> None:
        self._store = store
        self._loop = loop
        #: Whether the store has the lifecycle operations (read by :func:`_has_lifecycle`).
        self.lifecycle = _has_lifecycle(store)

    def __getattr__(self, name: str) -> Any:
        import asyncio

        method = getattr(self._store, name)

        async def awaited(result: Any) -> Any:
            return await result

        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if not inspect.isawaitable(result):  # a sync method (MemoryStore's)
                return result
            return asyncio.run_coroutine_threadsafe(awaited(result), self._loop).result()

        return call


def _check_all(store: Store, name: str, expire: float, writes: int) -> None:
    """Every check of :func:`check_store`, in order, on a blocking store."""
    run = secrets.token_hex(6)
    ids = [f"check_store:{run}:{n}" for n in range(8)]
    a, b, short, renewed, renewed_all, renewed_delete, extended, concurrent = ids
    try:
        _check_unknown_sessions(store, name, a)
        _check_json_round_trips(store, name, a)
        _check_odd_keys_and_normalisation(store, name, a)
        _check_copies_out(store, name, a)
        _check_overwrite_and_non_json_refused(store, name, a)
        _check_isolation(store, name, a, b)
        _check_delete_and_delete_all(store, name, a, b)
        _check_expiry_and_renewal(store, name, expire, short,
                                  (renewed, renewed_all, renewed_delete), extended)
        _check_concurrent_writers(store, name, concurrent, writes, _LONG)
        if _has_lifecycle(store):
            _check_lifecycle(store, name, run, expire, writes)  # type: ignore[arg-type]
    finally:
        for id in ids:
            store.delete_all(id)


def _check_unknown_sessions(store: Store, name: str, id: SessionId) -> None:
    """Unknown sessions read as empty, and reading, extending or deleting creates nothing."""
    got = store.get(id, "k", _LONG)
    _expect(got is None, got, name, "get(unknown session, 'k')", "None")
    got_all = store.get_all(id, _LONG)
    _expect(got_all == {}, got_all, name, "get_all(unknown session)", "{}")
    store.extend(id, _LONG)
    store.delete(id, "k", _LONG)
    got_all = store.get_all(id, _LONG)
    _expect(got_all == {}, got_all, name, "get_all after extend/delete of an unknown session",
            "{} (nothing created)")


def _samples() -> dict[str, Any]:
    """The data ``_check_json_round_trips`` leaves in the session: key ``v<n>`` per sample."""
    return {f"v{index}": sample for index, sample in enumerate(_JSON_SAMPLES)}


def _check_json_round_trips(store: Store, name: str, id: SessionId) -> None:
    """Every JSON type round-trips exactly, through get and then get_all."""
    for index, sample in enumerate(_JSON_SAMPLES):
        # A copy goes in: a store that keeps the caller's object must not pass (or
        # change our samples) when its results are mutated later.
        store.set(id, f"v{index}", copy.deepcopy(sample), _LONG)
        got = store.get(id, f"v{index}", _LONG)
        _expect(_same_json(got, sample), got, name, f"get after set(key, {sample!r})",
                f"{sample!r} ({type(sample).__name__})")


def _check_odd_keys_and_normalisation(store: Store, name: str, id: SessionId) -> None:
    """Keys are any text; values come back as JSON has them; the caller's object is copied in.

    Tuples come back as lists and int dict keys as strings, and what the caller
    does to its object after ``set`` changes nothing stored.  Then get_all sees
    exactly the samples, and a missing key reads as None.
    """
    odd_keys = {"": "empty key", "a:b/c d": "key with separators"}
    for key, sample in odd_keys.items():
        store.set(id, key, sample, _LONG)
    store.set(id, "tuple", (1, 2), _LONG)
    store.set(id, "int keys", {1: "one"}, _LONG)
    mine = {"roles": ["user"]}
    store.set(id, "mine", mine, _LONG)
    mine["roles"].append("admin")
    for key, expected in [("tuple", [1, 2]), ("int keys", {"1": "one"}),
                          ("mine", {"roles": ["user"]}), *odd_keys.items()]:
        got = store.get(id, key, _LONG)
        _expect(_same_json(got, expected), got, name, f"get({key!r}) after set", repr(expected))
    for key in ("tuple", "int keys", "mine", *odd_keys):
        store.delete(id, key, _LONG)
    everything = _samples()
    got_all = store.get_all(id, _LONG)
    _expect(_same_json(got_all, everything), got_all, name, "get_all", repr(everything))
    got = store.get(id, "missing", _LONG)
    _expect(got is None, got, name, "get(missing key)", "None")


def _check_copies_out(store: Store, name: str, id: SessionId) -> None:
    """get and get_all return copies: changing them changes nothing stored."""
    value = store.get(id, "v14", _LONG)
    value["a"].append("mutated")
    value["new"] = 1
    got_all = store.get_all(id, _LONG)
    got_all["v13"].append("mutated")
    got_all["v0"] = "mutated"
    got = store.get(id, "v14", _LONG)
    _expect(_same_json(got, _JSON_SAMPLES[14]), got, name,
            "get after mutating an earlier result", "the stored value unchanged (a copy)")
    got_all = store.get_all(id, _LONG)
    _expect(_same_json(got_all, _samples()), got_all, name,
            "get_all after mutating an earlier result", "the stored data unchanged")


def _check_overwrite_and_non_json_refused(store: Store, name: str, id: SessionId) -> None:
    """set overwrites; a value that is not JSON raises TypeError and stores nothing."""
    store.set(id, "v9", "overwritten", _LONG)
    got = store.get(id, "v9", _LONG)
    _expect(got == "overwritten", got, name, "get after overwriting set", "'overwritten'")
    for bad in (object(), {1, 2}, float("nan"), b"bytes", "lone surrogate \ud800"):
        try:
            store.set(id, "bad", bad, _LONG)
        except TypeError:
            pass
        else:
            raise AssertionError(f"{name}.set(key, {bad!r}): expected TypeError for a "
                                 "value that is not JSON, nothing raised")
        got = store.get(id, "bad", _LONG)
        _expect(got is None, got, name, f"get after a refused set of {type(bad).__name__}",
                "None (nothing stored)")


def _check_isolation(store: Store, name: str, id: SessionId, other: SessionId) -> None:
    """A set in another session leaves this session's same key alone."""
    store.set(other, "v9", "other session", _LONG)
    got = store.get(id, "v9", _LONG)
    _expect(got == "overwritten", got, name, "get in one session after a set of the same key "
            "in another", "'overwritten'")


def _check_delete_and_delete_all(store: Store, name: str, id: SessionId,
                                 other: SessionId) -> None:
    """delete removes one key; delete_all the whole session and nothing else."""
    store.delete(id, "v9", _LONG)
    store.delete(id, "never-set", _LONG)
    got = store.get(id, "v9", _LONG)
    _expect(got is None, got, name, "get after delete", "None")
    got = store.get(id, "v10", _LONG)
    _expect(got == _JSON_SAMPLES[10], got, name, "get of another key after delete",
            repr(_JSON_SAMPLES[10]))
    store.delete_all(id)
    got_all = store.get_all(id, _LONG)
    _expect(got_all == {}, got_all, name, "get_all after delete_all", "{}")
    got = store.get(other, "v9", _LONG)
    _expect(got == "other session", got, name, "get in another session after delete_all",
            "'other session'")


def _check_expiry_and_renewal(store: Store, name: str, expire: float, short: SessionId,
                              renewed: tuple[SessionId, SessionId, SessionId],
                              extended: SessionId) -> None:
    """set with a short expire ends the session; get, get_all, delete and extend renew it.

    Renewing to a short expiry ends a session too; a late extend must not bring an
    expired session back, nor a set its old data.  Sleeps ``expire * 1.5 + 0.05`` s.
    """
    store.set(short, "k", 1, expire)
    for id in renewed:
        store.set(id, "k", 1, _LONG)
    by_get, by_get_all, by_delete = renewed
    store.get(by_get, "k", expire)
    store.get_all(by_get_all, expire)
    store.delete(by_delete, "other", expire)
    store.set(extended, "k", 1, expire)
    store.extend(extended, _LONG)  # renewing to a long expiry: it lives on
    waited = expire * 1.5 + 0.05
    time.sleep(waited)
    store.extend(short, _LONG)  # too late: an expired session must not come back
    got_all = store.get_all(short, _LONG)
    _expect(got_all == {}, got_all, name, f"get_all {waited:.2f}s after set(..., "
            f"expire={expire}) and a late extend", "{} (expired)")
    for id, operation in zip(renewed, ("get", "get_all", "delete"), strict=True):
        got = store.get(id, "k", _LONG)
        _expect(got is None, got, name, f"get after {operation}(..., expire={expire}) renewed "
                "the expiry", "None (expired)")
    got = store.get(extended, "k", _LONG)
    _expect(got == 1, got, name, f"get after extend(..., long) renewed a set(..., "
            f"expire={expire})", "1 (still alive)")
    store.set(short, "fresh", 2, _LONG)
    got_all = store.get_all(short, _LONG)
    _expect(got_all == {"fresh": 2}, got_all, name, "get_all after set on an expired session",
            "{'fresh': 2} (no old data back)")


_WRITERS = "wxyz"


def _check_concurrent_writers(store: Store, name: str, id: SessionId, writes: int,
                              expire: float) -> None:
    """Four threads set their own keys of one session at once; every key must be there.

    The switch interval is process-wide: it is put back in a ``finally``.
    """
    def writer(label: str) -> None:
        for n in range(writes):
            store.set(id, f"{label}{n}", n, expire)

    _in_threads(writer, name, "set")
    data = store.get_all(id, expire)
    lost = [f"{label}{n}" for label in _WRITERS for n in range(writes)
            if f"{label}{n}" not in data]
    _expect(not lost, f"{len(lost)} lost, e.g. {lost[:3]}", name, f"get_all after "
            f"{len(_WRITERS)} concurrent writers set {writes} keys each",
            f"all {len(_WRITERS) * writes} keys")


def _in_threads(work: Callable[[str], object], name: str, operation: str) -> None:
    """Run ``work(label)`` in one thread per label of ``_WRITERS``, started together, with
    threads switched often so that a read-modify-write race shows; the switch interval
    is process-wide, so it is put back in a ``finally``.  A thread's error is raised here.
    """
    start = threading.Barrier(len(_WRITERS))
    errors: list[BaseException] = []

    def run(label: str) -> None:
        try:
            start.wait()
            work(label)
        except BaseException as error:  # reported below, in the calling thread
            errors.append(error)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=run, args=(label,)) for label in _WRITERS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    if errors:
        raise AssertionError(f"{name}.{operation} from {len(_WRITERS)} threads raised "
                             f"{errors[0]!r}") from errors[0]


def _refused(store: Any, name: str, what: str, call: Callable[[], object]) -> None:
    """``call`` (a live operation) must raise UnknownSession."""
    try:
        call()
    except UnknownSession:
        return
    raise AssertionError(f"{name}.{what}: expected UnknownSession (not a live session), "
                         "nothing raised")


def _check_lifecycle(store: LifecycleStore, name: str, run: str, expire: float,
                     writes: int) -> None:
    """The lifecycle operations: live sessions, deadlines, incr and rename."""
    ids = [f"check_store:{run}:live:{n}" for n in range(9)]
    live, plain, never, ended, expired, short, old, new, counter = ids
    try:
        _check_live_sessions(store, name, live, plain, never, ended)
        _check_lifecycle_expiry(store, name, expire, expired, short)
        _check_rename(store, name, old, new)
        _check_incr(store, name, counter, writes)
    finally:
        for id in ids:
            store.delete_all(id)


def _check_live_sessions(store: LifecycleStore, name: str, live: SessionId, plain: SessionId,
                         never: SessionId, ended: SessionId) -> None:
    """Only ``create`` makes a live session; live operations refuse every other one and
    change nothing (a live set after delete_all must not bring the session back)."""
    store.create(live, _LONG)
    got = store.get(live, "k", _LONG, live=True)
    _expect(got is None, got, name, "get(live=True) of a new live session", "None")
    store.set(live, "k", "v", _LONG, live=True)
    got_all = store.get_all(live, _LONG, live=True)
    _expect(got_all == {"k": "v"}, got_all, name, "get_all(live=True) after a live set",
            "{'k': 'v'} (and no lifecycle data)")
    got_all = store.get_all(live, _LONG)
    _expect(got_all == {"k": "v"}, got_all, name, "get_all() of a live session",
            "{'k': 'v'} (the lifecycle's data is not shown)")
    store.delete(live, "k", _LONG, live=True)
    store.extend(live, _LONG, live=True)  # still live with no data
    store.set(plain, "k", "v", _LONG)  # plain data: not live
    store.create(ended, _LONG)
    store.set(ended, "k", "v", _LONG, live=True)
    store.delete_all(ended)  # a logout: a request in flight must not undo it
    for id, why in [(never, "a session never made"), (plain, "a session of plain writes"),
                    (ended, "a session deleted by delete_all")]:
        _refused(store, name, f"set(live=True) on {why}",
                 functools.partial(store.set, id, "x", 1, _LONG, live=True))
        _refused(store, name, f"get(live=True) on {why}",
                 functools.partial(store.get, id, "k", _LONG, live=True))
        _refused(store, name, f"extend(live=True) on {why}",
                 functools.partial(store.extend, id, _LONG, live=True))
    for id, expected in [(never, {}), (plain, {"k": "v"}), (ended, {})]:
        got_all = store.get_all(id, _LONG)
        _expect(got_all == expected, got_all, name, "get_all after refused live writes",
                f"{expected!r} (nothing changed)")


def _check_lifecycle_expiry(store: LifecycleStore, name: str, expire: float,
                            expired: SessionId, short: SessionId) -> None:
    """An idle live session ends after ``expire``; an active one at its deadline, however
    often it is renewed (renewal never passes the deadline)."""
    store.create(expired, expire)
    store.create(short, _LONG, expire * 2)
    start = time.monotonic()
    time.sleep(expire * 1.2)
    store.set(short, "k", 1, _LONG, live=True)  # active, renewed to an hour...
    _refused(store, name, f"get(live=True) {expire * 1.2:.2f} s after create(expire="
             f"{expire})", lambda: store.get(expired, "k", _LONG, live=True))
    time.sleep(max(0.0, expire * 2.4 - (time.monotonic() - start)))
    _refused(store, name, f"get(live=True) after the deadline of create(lifetime="
             f"{expire * 2}), renewed meanwhile", lambda: store.get(short, "k", _LONG, live=True))
    got_all = store.get_all(short, _LONG)
    _expect(got_all == {}, got_all, name, "get_all after the deadline", "{} (ended)")


def _check_rename(store: LifecycleStore, name: str, old: SessionId, new: SessionId) -> None:
    """``rename`` moves data and deadline and ends the old id; it refuses a session that
    is not live."""
    store.create(old, _LONG, _LONG)
    store.set(old, "cart", ["apple"], _LONG, live=True)
    left = store.rename(old, new, _LONG)
    _expect(left is not None and 0 < left <= _LONG, left, name, "rename of a session with a "
            f"lifetime of {_LONG}", f"the seconds left, in (0, {_LONG}]")
    got_all = store.get_all(new, _LONG, live=True)
    _expect(got_all == {"cart": ["apple"]}, got_all, name, "get_all(live=True) of the new id "
            "after rename", "{'cart': ['apple']}")
    got_all = store.get_all(old, _LONG)
    _expect(got_all == {}, got_all, name, "get_all of the old id after rename", "{} (ended)")
    _refused(store, name, "set(live=True) on a renamed-away id",
             lambda: store.set(old, "k", 1, _LONG, live=True))
    _refused(store, name, "rename of a session that is not live",
             lambda: store.rename(old, new + ":again", _LONG))


def _check_incr(store: LifecycleStore, name: str, id: SessionId, writes: int) -> None:
    """``incr`` counts from 0, refuses what is not an integer (changing nothing), and loses
    no count under four threads."""
    store.create(id, _LONG)
    total = store.incr(id, "n", 5, _LONG, live=True)
    _expect(total == 5, total, name, "incr of a missing key by 5", "5")
    total = store.incr(id, "n", -7, _LONG, live=True)
    _expect(total == -2, total, name, "incr by -7", "-2")
    got = store.get(id, "n", _LONG)
    _expect(_same_json(got, -2), got, name, "get after incr", "-2 (an int)")
    for bad in ("3", 1.5, True, [1]):
        store.set(id, "bad", bad, _LONG)
        try:
            store.incr(id, "bad", 1, _LONG, live=True)
        except TypeError:
            pass
        else:
            raise AssertionError(f"{name}.incr of a key holding {type(bad).__name__}: "
                                 "expected TypeError, nothing raised")
        got = store.get(id, "bad", _LONG)
        _expect(_same_json(got, bad), got, name, f"get after a refused incr of a "
                f"{type(bad).__name__}", "the value unchanged")
    store.set(id, "big", 2**63 - 1, _LONG)
    try:
        store.incr(id, "big", 1, _LONG, live=True)
    except ValueError:
        pass
    else:
        raise AssertionError(f"{name}.incr past 2**63 - 1: expected ValueError, nothing raised")
    count = max(1, writes // 10)

    def counter(label: str) -> None:
        for _ in range(count):
            store.incr(id, "shared", 1, _LONG, live=True)

    _in_threads(counter, name, "incr")
    got = store.get(id, "shared", _LONG)
    _expect(got == len(_WRITERS) * count, got, name, f"get after {len(_WRITERS)} threads each "
            f"incr'd {count} times", f"{len(_WRITERS) * count} (no count lost)")
