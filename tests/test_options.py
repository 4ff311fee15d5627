"""The options of a session, checked the same way wherever they are given.

One table of bad options, run against the three places that take them:
``GenericSession`` (direct, per request), ``middleware`` (once, for every
request) and, for the options that are cookie attributes, ``Cookies.set``.  A
wrong type is a ``TypeError``, a wrong value a ``ValueError``; the message names
the option and shows what was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import generic_session
from generic_session import Cookies, GenericSession, MemoryStore, SessionOptions


def make_session(options: dict[str, Any]) -> object:
    return GenericSession({}, [], MemoryStore(), **options)


def make_middleware(options: dict[str, Any]) -> object:
    return generic_session.middleware(MemoryStore(), **options)


def set_cookie(options: dict[str, Any]) -> object:
    options = dict(options)
    name = options.pop("cookie_name", "s")
    Cookies({}, []).set(name, "v", **options)
    return None


SESSION_MAKERS: dict[str, Callable[[dict[str, Any]], object]] = {
    "GenericSession": make_session,
    "middleware": make_middleware,
    "SessionOptions": lambda options: SessionOptions(**options),
}

# (options, error, message, also checked by Cookies.set)
BAD_OPTIONS: list[tuple[dict[str, Any], type[Exception], str, bool]] = [
    ({"keys": []}, ValueError, r"keys must hold at least one secret key", False),
    ({"keys": [1]}, TypeError, r"keys\[0\] must be str or bytes, got int", False),
    ({"keys": ["ok", ""]}, ValueError, r"keys\[1\] is empty", False),
    ({"keys": "secret"}, TypeError, r"keys must be a list of secret strings", False),
    ({"expire": 0}, ValueError, r"expire must be .* at most 34560000 .*, got 0", False),
    ({"expire": -1}, ValueError, r"expire must be .* at most 34560000 .*, got -1", False),
    ({"expire": True}, TypeError, r"expire must be a number of seconds > 0, got bool", False),
    ({"expire": float("inf")}, ValueError, r"expire must be .* at most 34560000 .*, got inf",
     False),
    ({"expire": float("nan")}, ValueError, r"expire must be .* at most 34560000 .*, got nan",
     False),
    ({"expire": "60"}, TypeError, r"expire must be a number of seconds > 0, got str", False),
    ({"expire": 10**400}, ValueError, r"expire must be .* at most 34560000", False),
    ({"cookie_name": "a;b"}, ValueError, r"cookie.name 'a;b' is not an RFC 6265 token", True),
    ({"cookie_name": "a=b"}, ValueError, r"cookie.name 'a=b' is not an RFC 6265 token", True),
    ({"cookie_name": "a b"}, ValueError, r"cookie.name 'a b' is not an RFC 6265 token", True),
    ({"cookie_name": "a\x01"}, ValueError, r"cookie.name 'a\\x01' is not an RFC 6265 token",
     True),
    ({"cookie_name": ""}, ValueError, r"cookie.name '' is not an RFC 6265 token", True),
    ({"cookie_name": None}, TypeError, r"cookie.name must be a str .*, got NoneType None", True),
    ({"id_prefix": None}, TypeError, r"id_prefix must be a str", False),
    ({"samesite": "sideways"}, ValueError,
     r"samesite must be 'Lax', 'Strict', 'None' or None, got 'sideways'", True),
    ({"samesite": 1}, TypeError, r"samesite must be a str .*, got int 1", True),
    ({"secure": "yes"}, TypeError, r"secure must be True.*False.*, got str 'yes'", True),
    ({"domain": "a;b"}, ValueError, r"domain must be a host name", True),
    ({"domain": ""}, ValueError, r"domain must be a host name", True),
    ({"domain": 7}, TypeError, r"domain must be a str .*, got int 7", True),
    ({"domain": "例え.jp"}, ValueError,
     r"domain '例え.jp' is not ASCII.*IDNA \(punycode\) form, 'xn--r8jz45g.jp'", True),
    ({"clock": 5}, TypeError, r"clock must be a function", False),
    ({"cookie_name": "__Host-s", "domain": "example.com"}, ValueError, r"domain must be None",
     False),
    ({"cookie_name": "__host-s", "domain": "example.com"}, ValueError, r"domain must be None",
     False),
    ({"cookie_name": "__Host-s", "secure": False}, ValueError, r"secure=False is not allowed",
     False),
    ({"cookie_name": "__HOST-s", "secure": False}, ValueError, r"secure=False is not allowed",
     False),
    ({"samesite": "None", "secure": False}, ValueError, r"secure=False is not allowed", False),
]


@pytest.mark.parametrize("maker", SESSION_MAKERS)
@pytest.mark.parametrize(
    ("options", "error", "message"),
    [pytest.param(options, error, message, id=repr(options))
     for options, error, message, _ in BAD_OPTIONS],
)
def test_a_bad_option_raises_type_or_value_error_naming_it(
    maker: str, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        SESSION_MAKERS[maker](options)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [pytest.param(options, error, message, id=repr(options))
     for options, error, message, cookies in BAD_OPTIONS if cookies],
)
def test_a_bad_cookie_attribute_is_refused_by_cookies_set_the_same_way(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        set_cookie(options)


@pytest.mark.parametrize("maker", SESSION_MAKERS)
def test_an_unknown_option_is_pythons_own_type_error(maker: str) -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'expires'"):
        SESSION_MAKERS[maker]({"expires": 60})


@pytest.mark.parametrize("path", ["/caf\u00e9", "/\u4f8b"])
def test_a_non_ascii_cookie_path_is_refused_with_the_way_to_encode_it(path: str) -> None:
    with pytest.raises(ValueError, match=r"path .* is not ASCII.*percent-encode it"):
        Cookies({}, []).set("s", "v", path=path)


@pytest.mark.parametrize("maker", ["GenericSession", "middleware"])
def test_an_expire_longer_than_the_memory_stores_max_age_is_refused_naming_both(
    maker: str,
) -> None:
    store = MemoryStore(max_age=15 * 24 * 3600)
    make: Callable[[], object] = (
        (lambda: GenericSession({}, [], store, expire=30 * 24 * 3600)) if maker == "GenericSession"
        else (lambda: generic_session.middleware(store, expire=30 * 24 * 3600)))

    with pytest.raises(ValueError, match=r"expire=2592000 is longer than the MemoryStore's "
                                         r"max_age=1296000"):
        make()


def test_an_expire_within_the_memory_stores_max_age_is_accepted() -> None:
    store = MemoryStore(max_age=3600)

    generic_session.middleware(store, expire=3600)
    session = GenericSession({}, [], store, expire=60)

    assert session.expire == 60


def test_options_are_visible_to_a_type_checker_and_in_the_signatures() -> None:
    # The signature is the documentation: every option is a named keyword parameter.
    import inspect

    names = ["keys", "expire", "cookie_name", "id_prefix", "secure", "samesite", "domain",
             "clock"]
    for function in (generic_session.middleware, GenericSession.__init__, SessionOptions):
        parameters = inspect.signature(function).parameters
        for name in names:
            assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, (function, name)


def test_session_options_are_frozen_and_show_no_key() -> None:
    options = SessionOptions(keys=["a very secret key"])

    with pytest.raises(AttributeError):
        options.expire = 5  # type: ignore[misc]
    assert "a very secret key" not in repr(options)
    assert options.keygrip is not None and options.keygrip.verify("x", options.keygrip.sign("x"))
