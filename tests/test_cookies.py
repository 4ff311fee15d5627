"""Cookies: Node's Set-Cookie format, Cookie header parsing, signing, request and response kinds.

The exact Set-Cookie lines come from ``tests/vectors/keygrip-node.json``, written by
Node's cookies@0.5.1, so a pass here means Python and Node send the same bytes.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import bottle
import pytest
import webob
from hypothesis import given, settings
from hypothesis import strategies as st

from generic_session import Cookies, Keygrip

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "keygrip-node.json").read_text(encoding="utf-8")
)
NODE_COOKIES: dict[str, Any] = VECTORS["cookies"][0]
# The vector's token: the signed data of the first keygrip vector, minus the "s=".
NODE_TOKEN = "c4Tvcqotl0NUMFh4dC49V3/tS21mmApkFiWq0lKQ"

EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"
# RFC 6265 cookie-octet, spelled out independently of the module's regex.
COOKIE_OCTETS = "".join(
    chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\'
)
# RFC 7230 token characters (a cookie name).
TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"

Headers = list[tuple[str, str]]


def set_cookies(headers: Headers) -> list[str]:
    """The values of the Set-Cookie headers, in order (and nothing but Set-Cookie)."""
    assert all(name == "Set-Cookie" for name, _ in headers), headers
    return [value for _, value in headers]


def cookie_header_from(set_cookie_lines: list[str]) -> str:
    """The Cookie header a browser sends back after these Set-Cookie lines."""
    return "; ".join(line.split(";", 1)[0] for line in set_cookie_lines)


def attributes(set_cookie_line: str) -> dict[str, str | None]:
    """``{'path': '/', 'expires': '...', 'secure': None, ...}`` of one Set-Cookie line."""
    result: dict[str, str | None] = {}
    for part in set_cookie_line.split("; ")[1:]:
        name, sep, value = part.partition("=")
        result[name] = value if sep else None
    return result


def signed_environ(value: str, keys: list[str], name: str = "s") -> dict[str, Any]:
    signature = Keygrip(keys).sign(f"{name}={value}")
    return {"HTTP_COOKIE": f"{name}={value}; {name}.sig={signature}"}


# -- Node's bytes ------------------------------------------------------------------------------


def test_set_writes_exactly_the_lines_node_cookies_writes() -> None:
    headers: Headers = []

    Cookies({}, headers, NODE_COOKIES["keys"]).set(
        "s", NODE_TOKEN, expires=datetime(2030, 1, 1)
    )

    assert headers == [("Set-Cookie", line) for line in NODE_COOKIES["set_cookie"]]


def test_the_cookie_node_wrote_reads_back_as_its_token_without_resending_anything() -> None:
    environ = {"HTTP_COOKIE": cookie_header_from(NODE_COOKIES["set_cookie"])}
    headers: Headers = []

    value = Cookies(environ, headers, NODE_COOKIES["keys"]).get("s")

    assert value == NODE_TOKEN
    assert headers == []


def test_a_rotated_node_signature_is_accepted_and_resigned_with_the_newest_key() -> None:
    vector = next(v for v in VECTORS["keygrip"] if "index" in v)
    name, _, value = vector["data"].partition("=")
    environ = {"HTTP_COOKIE": f"{vector['data']}; {name}.sig={vector['signature']}"}
    headers: Headers = []

    got = Cookies(environ, headers, vector["keys"]).get(name)

    assert got == value
    newest = Keygrip(vector["keys"][:1]).sign(vector["data"])
    assert set_cookies(headers) == [f"{name}.sig={newest}; path=/; httponly"]


# -- Parsing the Cookie header -----------------------------------------------------------------


def read(header: str | None, name: str) -> str | None:
    environ = {} if header is None else {"HTTP_COOKIE": header}
    return Cookies(environ, []).get(name)


def test_several_cookies_are_read_from_one_header() -> None:
    header = "a=1; b=two; session_id=abc-DEF_123"

    assert [read(header, n) for n in ("a", "b", "session_id")] == ["1", "two", "abc-DEF_123"]


def test_spaces_around_names_values_and_separators_are_ignored() -> None:
    header = "  a = 1 ;b=2;   c=3  ;d =4"

    assert [read(header, n) for n in "abcd"] == ["1", "2", "3", "4"]


def test_a_double_quoted_value_is_unquoted() -> None:
    assert read('a="hello"; b=""; c=plain', "a") == "hello"
    assert read('a="hello"; b=""; c=plain', "b") == ""


def test_a_lone_or_unbalanced_quote_is_kept() -> None:
    assert read('a="; b="x; c=y"', "a") == '"'
    assert read('a="; b="x; c=y"', "b") == '"x'
    assert read('a="; b="x; c=y"', "c") == 'y"'


def test_the_first_of_a_repeated_cookie_wins_as_in_node() -> None:
    # Browsers send the most specific path first.
    assert read("s=first; other=1; s=second", "s") == "first"


def test_a_value_may_hold_equals_signs() -> None:
    assert read("s=a=b==; t=1", "s") == "a=b=="


def test_malformed_pairs_are_skipped_without_error() -> None:
    header = "junk; =novalue; ;; a=1;=;  ; b"

    assert read(header, "a") == "1"
    assert read(header, "junk") is None
    assert read(header, "b") is None
    assert read(header, "") is None


def test_an_empty_value_is_an_empty_string_not_absent() -> None:
    assert read("a=; b=1", "a") == ""


@pytest.mark.parametrize("header", [None, "", " ", ";", ";;;"], ids=repr)
def test_an_empty_or_missing_header_has_no_cookies(header: str | None) -> None:
    assert read(header, "s") is None


def test_names_are_case_sensitive() -> None:
    assert read("S=upper", "s") is None
    assert read("S=upper", "S") == "upper"


def test_the_header_is_parsed_lazily_and_only_once() -> None:
    environ = {"HTTP_COOKIE": "a=1"}
    cookies = Cookies(environ, [])
    environ["HTTP_COOKIE"] = "a=2"  # before the first get: seen

    assert cookies.get("a") == "2"
    environ["HTTP_COOKIE"] = "a=3"  # after: the parsed jar is kept
    assert cookies.get("a") == "2"


# -- Signed cookies ----------------------------------------------------------------------------


def test_a_good_signature_returns_the_value_and_sends_nothing() -> None:
    headers: Headers = []

    value = Cookies(signed_environ("token", ["k1"]), headers, ["k1"]).get("s", signed=True)

    assert value == "token"
    assert headers == []


def test_with_keys_get_checks_the_signature_by_default() -> None:
    unsigned = {"HTTP_COOKIE": "s=token"}

    assert Cookies(unsigned, [], ["k1"]).get("s") is None
    assert Cookies(signed_environ("token", ["k1"]), [], ["k1"]).get("s") == "token"


def test_a_missing_signature_returns_none_and_sends_nothing() -> None:
    headers: Headers = []

    value = Cookies({"HTTP_COOKIE": "s=token"}, headers, ["k1"]).get("s", signed=True)

    assert value is None
    assert headers == []


@pytest.mark.parametrize(
    "signature",
    ["", "bogus", Keygrip(["k1"]).sign("s=other"), Keygrip(["k2"]).sign("s=token"), "ü"],
    ids=["empty", "garbage", "for-other-data", "by-unknown-key", "non-ascii"],
)
def test_a_bad_signature_returns_none_and_clears_the_sig_cookie(signature: str) -> None:
    environ = {"HTTP_COOKIE": f"s=token; s.sig={signature}"}
    headers: Headers = []

    value = Cookies(environ, headers, ["k1"]).get("s", signed=True)

    assert value is None
    assert set_cookies(headers) == [f"s.sig=; path=/; expires={EPOCH}; httponly"]
    cleared = attributes(set_cookies(headers)[0])
    assert parsedate_to_datetime(str(cleared["expires"])) == datetime(1970, 1, 1, tzinfo=UTC)


def test_a_cookie_signed_with_an_older_key_is_accepted_and_resigned_with_the_newest() -> None:
    environ = signed_environ("token", ["old"])
    headers: Headers = []

    value = Cookies(environ, headers, ["new", "old"]).get("s")

    assert value == "token"
    newest = Keygrip(["new"]).sign("s=token")
    assert set_cookies(headers) == [f"s.sig={newest}; path=/; httponly"]


def test_signed_false_returns_the_raw_value_even_when_unsigned() -> None:
    headers: Headers = []

    value = Cookies({"HTTP_COOKIE": "s=raw"}, headers, ["k1"]).get("s", signed=False)

    assert value == "raw"
    assert headers == []


def test_reading_signed_without_keys_is_an_error() -> None:
    cookies = Cookies({"HTTP_COOKIE": "s=raw"}, [])

    assert cookies.get("s") == "raw"  # without keys, unsigned is the default
    with pytest.raises(ValueError, match=r"cookie 's' cannot be .* without keys"):
        cookies.get("s", signed=True)


def test_writing_signed_without_keys_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"cookie 's' cannot be .* without keys"):
        Cookies({}, []).set("s", "v", signed=True)


def test_set_signs_by_default_with_keys_and_the_signature_verifies() -> None:
    headers: Headers = []

    Cookies({}, headers, ["k1", "k2"]).set("s", "value")

    lines = set_cookies(headers)
    assert lines[0] == "s=value; path=/; httponly"
    assert lines[1] == f"s.sig={Keygrip(['k1']).sign('s=value')}; path=/; httponly"


def test_set_with_signed_false_sends_no_signature() -> None:
    headers: Headers = []

    Cookies({}, headers, ["k1"]).set("s", "value", signed=False)

    assert set_cookies(headers) == ["s=value; path=/; httponly"]


def test_resending_a_verified_cookie_sends_the_same_signature() -> None:
    headers: Headers = []
    cookies = Cookies(signed_environ("token", ["k1"]), headers, ["k1"])

    assert cookies.get("s") == "token"
    cookies.set("s", "token")
    cookies.set("s", "another")

    assert set_cookies(headers) == [
        "s=token; path=/; httponly",
        f"s.sig={Keygrip(['k1']).sign('s=token')}; path=/; httponly",
        "s=another; path=/; httponly",
        f"s.sig={Keygrip(['k1']).sign('s=another')}; path=/; httponly",
    ]


def test_keys_cannot_be_replaced_after_a_get_cached_its_signature() -> None:
    headers: Headers = []
    cookies = Cookies(signed_environ("token", ["k1"]), headers, ["k1"])
    assert cookies.get("s") == "token"

    with pytest.raises(AttributeError):
        cookies.keys = Keygrip(["k2"])  # type: ignore[misc]
    cookies.set("s", "token")

    assert set_cookies(headers)[1] == f"s.sig={Keygrip(['k1']).sign('s=token')}; path=/; httponly"


# -- Clearing ----------------------------------------------------------------------------------


def test_setting_none_clears_the_cookie_with_an_empty_value_and_the_epoch_date() -> None:
    headers: Headers = []

    Cookies({}, headers).set("s", None)

    assert set_cookies(headers) == [f"s=; path=/; expires={EPOCH}; httponly"]


def test_clearing_a_signed_cookie_clears_its_signature_too() -> None:
    headers: Headers = []

    Cookies({}, headers, ["k1"]).set("s", None, expires=datetime(2030, 1, 1), domain="a.example")

    assert set_cookies(headers) == [
        f"s=; path=/; expires={EPOCH}; domain=a.example; httponly",
        f"s.sig=; path=/; expires={EPOCH}; domain=a.example; httponly",
    ]


# -- Attributes --------------------------------------------------------------------------------


def test_all_attributes_are_written_in_nodes_order_and_case() -> None:
    headers: Headers = []

    Cookies({}, headers).set(
        "s", "v", expires=datetime(2030, 1, 1), path="/app", domain="example.com",
        samesite="Strict", secure=True, httponly=True,
    )

    assert set_cookies(headers) == [
        "s=v; path=/app; expires=Tue, 01 Jan 2030 00:00:00 GMT; domain=example.com; "
        "samesite=strict; secure; httponly"
    ]


def test_without_options_a_cookie_has_path_root_and_httponly_and_no_expiry() -> None:
    headers: Headers = []

    Cookies({}, headers).set("s", "v")

    assert set_cookies(headers) == ["s=v; path=/; httponly"]


def test_httponly_false_omits_the_flag() -> None:
    headers: Headers = []

    Cookies({}, headers).set("s", "v", httponly=False)

    assert set_cookies(headers) == ["s=v; path=/"]


def test_secure_adds_the_flag_before_httponly() -> None:
    headers: Headers = []

    Cookies({}, headers).set("s", "v", secure=True)

    assert set_cookies(headers) == ["s=v; path=/; secure; httponly"]


@pytest.mark.parametrize(
    ("given", "written"),
    [("Lax", "lax"), ("lax", "lax"), ("STRICT", "strict"), ("None", "none"), ("nOnE", "none")],
)
def test_samesite_is_written_lowercase(given: str, written: str) -> None:
    headers: Headers = []

    Cookies({}, headers).set("s", "v", samesite=given)

    assert set_cookies(headers) == [f"s=v; path=/; samesite={written}; httponly"]


@pytest.mark.parametrize("samesite", ["", "sometimes", "lax "])
def test_an_unknown_samesite_is_refused(samesite: str) -> None:
    headers: Headers = []

    with pytest.raises(ValueError, match=r"samesite must be 'Lax', 'Strict', 'None' or None"):
        Cookies({}, headers).set("s", "v", samesite=samesite)


EXPECTED_INSTANT = datetime(2031, 7, 4, 13, 5, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    "expires",
    [
        EXPECTED_INSTANT,
        EXPECTED_INSTANT.replace(tzinfo=None),  # naive means UTC
        EXPECTED_INSTANT.astimezone(timezone(timedelta(hours=-7, minutes=-30))),
        EXPECTED_INSTANT.astimezone(timezone(timedelta(hours=9))),
        EXPECTED_INSTANT.timestamp(),
        int(EXPECTED_INSTANT.timestamp()),
        EXPECTED_INSTANT.timestamp() + 0.999,  # fractions of a second are dropped
    ],
    ids=["aware-utc", "naive", "utc-minus-7h30", "utc-plus-9", "float", "int", "float-fraction"],
)
def test_expires_is_an_rfc1123_date_in_gmt_for_the_same_instant(expires: float | datetime) -> None:
    headers: Headers = []

    Cookies({}, headers).set("s", "v", expires=expires)

    written = str(attributes(set_cookies(headers)[0])["expires"])
    assert written == "Fri, 04 Jul 2031 13:05:09 GMT"
    assert parsedate_to_datetime(written) == EXPECTED_INSTANT


@pytest.mark.parametrize(
    "expires",
    [float("inf"), float("nan"), -1, 1e20, 253_402_300_800, True, "tomorrow", "1700000000"],
    ids=repr,
)
def test_an_expiry_that_is_no_date_raises_value_error_naming_expires_and_sends_nothing(
    expires: Any,
) -> None:
    headers: Headers = []

    with pytest.raises(ValueError, match=rf"^expires must be a datetime or epoch seconds from "
                       rf"1970 to the year 9999, got {re.escape(repr(expires))}$"):
        Cookies({}, headers).set("s", "v", expires=expires)
    assert headers == []


def test_the_last_second_before_the_year_10000_is_a_valid_expiry() -> None:
    headers: Headers = []

    Cookies({}, headers).set("s", "v", expires=253_402_300_799)

    assert attributes(set_cookies(headers)[0])["expires"] == "Fri, 31 Dec 9999 23:59:59 GMT"


def test_an_aware_datetime_past_the_year_9999_in_utc_raises_value_error_naming_expires() -> None:
    late = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))  # 10000-01-01 UTC

    with pytest.raises(ValueError, match=r"^expires must be a datetime or epoch seconds"):
        Cookies({}, []).set("s", "v", expires=late)


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31)))
def test_every_expiry_date_parses_back_to_the_same_second(when: datetime) -> None:
    headers: Headers = []

    Cookies({}, headers).set("s", "v", expires=when)

    written = str(attributes(set_cookies(headers)[0])["expires"])
    assert written.endswith(" GMT")
    expected = when.replace(microsecond=0, tzinfo=UTC)
    assert parsedate_to_datetime(written) == expected
    # RFC 1123's fixed-width form: "Tue, 01 Jan 2030 00:00:00 GMT".
    assert len(written) == 29
    assert written[:3] == expected.strftime("%a")


def test_the_signature_cookie_carries_the_same_attributes() -> None:
    headers: Headers = []

    Cookies({}, headers, ["k1"]).set(
        "s", "v", expires=datetime(2030, 1, 1), path="/p", domain="d.example", samesite="Lax",
        secure=True, httponly=False,
    )

    value_line, sig_line = set_cookies(headers)
    assert sig_line.startswith("s.sig=")
    assert attributes(sig_line) == attributes(value_line)


# -- Names and values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["my cookie", "", "a=b", "a;b", "a,b", 'a"b', "a\tb", "a\nb", "ключ", "a(b)", "a/b", "a@b"],
    ids=repr,
)
def test_an_invalid_cookie_name_is_refused_and_nothing_is_sent(name: str) -> None:
    headers: Headers = []

    with pytest.raises(ValueError, match=r"cookie name .* is not an RFC 6265 token"):
        Cookies({}, headers).set(name, "v")
    assert headers == []


@pytest.mark.parametrize(
    "value",
    ["a;b", "a b", "a,b", 'a"b', "a\\b", "a\r\nSet-Cookie: x=1", "\x00", "\x7f", "ü", " lead"],
    ids=repr,
)
def test_an_invalid_cookie_value_is_refused_and_nothing_is_sent(value: str) -> None:
    headers: Headers = []

    with pytest.raises(ValueError, match=r"value of cookie 's' has characters not allowed"):
        Cookies({}, headers, ["k1"]).set("s", value)
    assert headers == []


@pytest.mark.parametrize(
    ("value", "shown"),
    [("a b;c", "' ;'"), ('x,"y"\\', """'",\\\\'"""), ("zoë\x00", "'\\x00ë'")],
    ids=["space-semicolon", "comma-quote-backslash", "nul-and-non-ascii"],
)
def test_an_invalid_cookie_value_error_shows_the_bad_characters_and_what_is_allowed(
    value: str, shown: str
) -> None:
    expected = (f"value of cookie 's' has characters not allowed in a cookie: {shown}; allowed: "
                """printable ASCII but space, '"', ',', ';' and '\\'""")

    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        Cookies({}, []).set("s", value)


@pytest.mark.parametrize(
    "option",
    [{"path": "/\r\nSet-Cookie: admin=1"}, {"path": "/; domain=evil.example"},
     {"domain": "example.com; secure"}, {"domain": "example.com\r\nX-Injected: 1"}],
    ids=["path-crlf", "path-semicolon", "domain-semicolon", "domain-crlf"],
)
def test_a_path_or_domain_that_would_inject_attributes_or_headers_is_refused(
    option: dict[str, str],
) -> None:
    headers: Headers = []

    with pytest.raises(ValueError, match=r"path|domain"):
        Cookies({}, headers).set("s", "v", **option)
    assert headers == []


# -- Response kinds ----------------------------------------------------------------------------


def _list_response() -> tuple[Any, Callable[[], list[str]]]:
    headers: Headers = []
    return headers, lambda: [v for n, v in headers if n == "Set-Cookie"]


def _bottle_response() -> tuple[Any, Callable[[], list[str]]]:
    response = bottle.BaseResponse()
    return response, lambda: [v for n, v in response.headerlist if n == "Set-Cookie"]


def _webob_response() -> tuple[Any, Callable[[], list[str]]]:
    response = webob.Response()
    return response, lambda: list(response.headers.getall("Set-Cookie"))


@pytest.mark.parametrize(
    "make_response",
    [_list_response, _bottle_response, _webob_response],
    ids=["header-list", "bottle", "webob"],
)
def test_set_cookie_lands_in_each_kind_of_response(
    make_response: Callable[[], tuple[Any, Callable[[], list[str]]]],
) -> None:
    response, sent = make_response()

    Cookies({}, response, NODE_COOKIES["keys"]).set(
        "s", NODE_TOKEN, expires=datetime(2030, 1, 1)
    )

    assert sent() == NODE_COOKIES["set_cookie"]


def test_a_bad_signature_clears_the_sig_cookie_on_a_webob_response() -> None:
    response = webob.Response()
    environ = {"HTTP_COOKIE": "s=token; s.sig=bad"}

    assert Cookies(webob.Request(environ), response, ["k1"]).get("s") is None
    assert response.headers.getall("Set-Cookie") == [f"s.sig=; path=/; expires={EPOCH}; httponly"]


@pytest.mark.parametrize(
    "response",
    [{}, None, (), "Set-Cookie", object(), bottle.BaseRequest({})],
    ids=["dict", "None", "tuple", "str", "object", "a-request"],
)
def test_an_unusable_response_is_a_type_error_naming_what_is_accepted(response: Any) -> None:
    kind = type(response).__name__

    with pytest.raises(TypeError, match=rf"response must be a list of WSGI header tuples, .* "
                                        rf"got {kind}$"):
        Cookies({}, response)


# -- Request kinds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [lambda e: e, bottle.BaseRequest, webob.Request],
    ids=["environ-dict", "bottle", "webob"],
)
def test_a_request_is_an_environ_or_an_object_with_one(wrap: Callable[[Any], Any]) -> None:
    signature = Keygrip(["k1"]).sign("s=token")
    environ = {"HTTP_COOKIE": f"s=token; s.sig={signature}; a=1", "wsgi.url_scheme": "https"}

    cookies = Cookies(wrap(environ), [], ["k1"])

    assert cookies.get("s") == "token"
    assert cookies.get("a", signed=False) == "1"
    assert cookies.is_https is True


@pytest.mark.parametrize("keys", [["k1"], Keygrip(["k1"])], ids=["list", "keygrip"])
@pytest.mark.parametrize("https", [True, False])
def test_from_header_reads_a_header_and_sends_to_a_function(keys: Any, https: bool) -> None:
    signature = Keygrip(["k1"]).sign("s=token")
    sent: list[tuple[str, str]] = []

    cookies = Cookies.from_header(f"s=token; s.sig={signature}; a=1",
                                  lambda name, header: sent.append((name, header)), keys,
                                  https=https)

    assert isinstance(cookies.keys, Keygrip)
    assert cookies.is_https is https
    assert cookies.get("s") == "token"
    assert cookies.read_signed("s") == ("token", signature, 0)
    assert cookies.get("a", signed=False) == "1"
    assert sent == []
    cookies.set("b", "2")
    assert [name for name, _ in sent] == ["b", "b.sig"]
    assert sent[1][1].startswith(f"b.sig={Keygrip(['k1']).sign('b=2')};")


@pytest.mark.parametrize(
    ("header", "expected"),
    [("", (None, None, -1)), ("s=token", ("token", None, -1)),
     ("s=token; s.sig=forged", ("token", "forged", -1))],
    ids=["empty", "unsigned", "forged"])
def test_read_signed_as_the_first_read_parses_the_header(
        header: str, expected: tuple[str | None, str | None, int]) -> None:
    assert Cookies.from_header(header, lambda name, header: None, ["k1"]).read_signed("s") \
        == expected
    good = Keygrip(["k1"]).sign("s=token")
    assert Cookies.from_header(f"s=token; s.sig={good}", lambda name, header: None,
                               ["k0", "k1"]).read_signed("s") == ("token", good, 1)


def test_from_header_without_keys_reads_unsigned_and_refuses_signed_reads() -> None:
    cookies = Cookies.from_header("s=token", lambda name, header: None)

    assert cookies.keys is None
    assert cookies.get("s") == "token"
    with pytest.raises(ValueError, match=r"cookie 's' cannot be signed or verified: Cookies "
                                         r"was made without keys"):
        cookies.read_signed("s")


@pytest.mark.parametrize(
    "request_",
    [None, "s=1", [("Cookie", "s=1")], object(), type("NotEnviron", (), {"environ": "s=1"})()],
    ids=["None", "str", "list", "object", "environ-not-a-dict"],
)
def test_an_unusable_request_is_a_type_error_naming_what_is_accepted(request_: Any) -> None:
    kind = type(request_).__name__

    with pytest.raises(TypeError, match=rf"request must be a WSGI environ dict or an object "
                                        rf"with an \.environ dict .* got {kind}$"):
        Cookies(request_, [])


@pytest.mark.parametrize(
    ("environ", "https"),
    [({"wsgi.url_scheme": "https"}, True), ({"wsgi.url_scheme": "http"}, False), ({}, False),
     ({"wsgi.url_scheme": "HTTPS"}, False), ({"HTTPS": "on"}, False)],
    ids=["https", "http", "missing", "uppercase", "cgi-https-var-ignored"],
)
def test_is_https_follows_wsgi_url_scheme(environ: dict[str, Any], https: bool) -> None:
    assert Cookies(environ, []).is_https is https


def test_keys_may_be_a_keygrip() -> None:
    keygrip = Keygrip(["k1"], "sha256")
    headers: Headers = []

    Cookies({}, headers, keygrip).set("s", "v")

    assert set_cookies(headers)[1] == f"s.sig={keygrip.sign('s=v')}; path=/; httponly"


def test_bad_keys_are_refused_when_cookies_is_made() -> None:
    with pytest.raises(ValueError, match=r"at least one secret key"):
        Cookies({}, [], [])


def test_repr_names_the_cookies_but_shows_no_value() -> None:
    cookies = Cookies({"HTTP_COOKIE": "b=secret-token; a=other-secret"}, [], ["k1"])

    text = repr(cookies)

    assert text == "Cookies(names=['a', 'b'], signed=True)"
    assert "secret" not in text


# -- Properties --------------------------------------------------------------------------------

_TRICKY = st.sampled_from(
    ["s", "s.sig", "=", ";", '"', " ", "\t", "\x00", "\r\n", "ü", "\xff", ",", "\\", "s=", "s.sig="]
)
_latin1_text = st.binary(max_size=2000).map(lambda raw: raw.decode("latin-1"))
_huge_text = st.tuples(st.text(max_size=50), st.integers(1, 2000)).map(lambda t: t[0] * t[1])
_pairs = st.lists(
    st.tuples(st.one_of(_TRICKY, st.text(max_size=8)), st.one_of(_TRICKY, st.text(max_size=50))),
    max_size=20,
).map(lambda pairs: "; ".join(f"{name}={value}" for name, value in pairs))
_mixed = st.lists(st.one_of(_TRICKY, st.text(max_size=10)), max_size=40).map("".join)
COOKIE_HEADERS = st.one_of(st.text(), _latin1_text, _huge_text, _pairs, _mixed)


@settings(max_examples=200, deadline=None)
@given(header=COOKIE_HEADERS)
def test_any_cookie_header_reads_as_none_or_a_str_without_raising(header: str) -> None:
    environ = {"HTTP_COOKIE": header}
    headers: Headers = []

    unsigned = Cookies(environ, headers, ["k1", "k2"]).get("s", signed=False)
    signed = Cookies(environ, headers, ["k1", "k2"]).get("s", signed=True)
    plain = Cookies(environ, headers).get("s")

    assert unsigned is None or isinstance(unsigned, str)
    assert signed is None or signed == unsigned
    assert plain == unsigned
    # The only header a read may send is a cleared or re-signed s.sig.
    assert all(line.startswith("s.sig=") for line in set_cookies(headers))


def test_a_lone_surrogate_in_a_signed_cookie_reads_as_none() -> None:
    # PEP 3333 servers decode headers as latin-1, so this needs a hand-made environ.
    environ = {"HTTP_COOKIE": "s=\udcff; s.sig=abc"}

    assert Cookies(environ, [], ["k1"]).get("s") is None


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=20),
    value=st.text(alphabet=COOKIE_OCTETS, max_size=200),
)
def test_any_allowed_name_and_value_round_trip_through_set_cookie_and_verify(
    name: str, value: str
) -> None:
    written: Headers = []
    Cookies({}, written, ["k1", "k2"]).set(name, value, expires=datetime(2030, 1, 1))
    environ = {"HTTP_COOKIE": cookie_header_from(set_cookies(written))}
    sent_back: Headers = []

    cookies = Cookies(environ, sent_back, ["k1", "k2"])

    assert cookies.get(name) == value
    assert cookies.get(name, signed=False) == value
    assert sent_back == []  # verified with keys[0]: nothing to re-sign
    # After rotating in a new key the cookie is still good, and is re-signed.
    rotated: Headers = []
    assert Cookies(environ, rotated, ["k0", "k1"]).get(name) == value
    assert set_cookies(rotated) == [
        f"{name}.sig={Keygrip(['k0']).sign(f'{name}={value}')}; path=/; httponly"
    ]


@settings(max_examples=200, deadline=None)
@given(
    value=st.tuples(
        st.text(alphabet=COOKIE_OCTETS, max_size=20),
        st.characters().filter(lambda c: c not in COOKIE_OCTETS),
        st.text(max_size=20),
    ).map("".join)
)
def test_any_value_with_a_character_outside_the_cookie_charset_is_refused(value: str) -> None:
    headers: Headers = []

    with pytest.raises(ValueError, match=r"has characters not allowed in a cookie"):
        Cookies({}, headers).set("s", value)
    assert headers == []
