"""GenericSession used directly, as in Node: one session per request, its cookie sent at once.

Each test builds a WSGI environ (``webob.Request.blank``, with ``HTTP_COOKIE``) and
collects ``Set-Cookie`` in a plain list of header tuples.  Clocks are injected, so
expiry is tested without sleeping; the failing store is a real ``RedisStore`` whose
client points at a loopback port where nothing listens.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from webob import Request

from generic_session import (
    TWO_WEEKS,
    Cookies,
    GenericSession,
    Keygrip,
    MemoryStore,
    RedisStore,
    SQLiteStore,
    Store,
    StoreError,
)
from tests.helpers import FakeClock, parse_set_cookie

T0 = 1_700_000_000  # a fixed "now", in epoch seconds
EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"
URL_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]{40}")
NODE_VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "keygrip-node.json").read_text(encoding="utf-8")
)


# -- helpers -------------------------------------------------------------------------------------


def environ(cookie: str | None = None, url: str = "http://example.com/") -> dict[str, Any]:
    env: dict[str, Any] = Request.blank(url).environ
    if cookie is not None:
        env["HTTP_COOKIE"] = cookie
    return env


def set_cookies(headers: list[tuple[str, str]], name: str) -> list[tuple[str, dict[str, str]]]:
    """The (value, attributes) of every ``Set-Cookie`` for cookie ``name``, in order."""
    found = []
    for header_name, header in headers:
        assert header_name == "Set-Cookie"
        cookie, value, attributes = parse_set_cookie(header)
        if cookie == name:
            found.append((value, attributes))
    return found


def last_cookie(headers: list[tuple[str, str]], name: str) -> tuple[str, dict[str, str]]:
    found = set_cookies(headers, name)
    assert found, f"no Set-Cookie for {name!r} in {headers!r}"
    return found[-1]


def expires_at(attributes: dict[str, str]) -> float:
    return parsedate_to_datetime(attributes["expires"]).timestamp()


def signed_cookie(token: str, key: str = "secret", name: str = "s") -> str:
    return f"{name}={token}; {name}.sig={Keygrip([key]).sign(f'{name}={token}')}"


def new_token() -> str:
    """A well-formed token nobody issued."""
    return GenericSession(environ(), [], MemoryStore()).token


def issued_token(store: MemoryStore, **options: Any) -> str:
    """The token of a session issued by ``store``'s own earlier request."""
    return GenericSession(environ(), [], store, **options).token


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each real store in turn: MemoryStore, SQLiteStore in a file, RedisStore on redis-server."""
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "sqlite":
        sqlite = SQLiteStore(tmp_path / "sessions.db")
        yield sqlite
        sqlite.close()
    else:
        yield RedisStore(request.getfixturevalue("redis_client"))


# -- the API table -------------------------------------------------------------------------------


def test_set_then_get_returns_the_value(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)

    session.set("cart", {"apples": 3})

    assert session.get("cart") == {"apples": 3}


def test_get_of_a_missing_key_is_none(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)
    session.set("present", 1)

    assert session.get("absent") is None


def test_get_without_a_key_returns_everything_like_get_all(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)
    session.set("a", 1)
    session.set("b", [2])

    assert session.get() == {"a": 1, "b": [2]}
    assert session.get_all() == {"a": 1, "b": [2]}


def test_get_all_of_a_new_session_is_an_empty_dict(store: MemoryStore) -> None:
    assert GenericSession(environ(), [], store).get_all() == {}


def test_get_all_returns_a_new_dict_each_time(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)
    session.set("a", 1)

    first = session.get_all()
    first["injected"] = True

    assert session.get_all() == {"a": 1}


def test_set_without_a_value_stores_none(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)

    session.set("user")

    assert session.get_all() == {"user": None}


def test_set_overwrites_the_previous_value(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)
    session.set("k", "first")

    session.set("k", "second")

    assert session.get("k") == "second"


def test_delete_removes_only_that_key(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)
    session.set("a", 1)
    session.set("b", 2)

    session.delete("a")

    assert session.get_all() == {"b": 2}


def test_delete_of_a_missing_key_is_no_error(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)
    session.set("a", 1)

    session.delete("never-set")

    assert session.get_all() == {"a": 1}


def test_delete_without_a_key_removes_every_key_beware(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)
    session.set("a", 1)
    session.set("b", 2)

    session.delete()

    assert session.get_all() == {}


def test_delete_all_removes_the_data_and_the_next_use_starts_a_fresh_session(
    store: MemoryStore,
) -> None:
    headers: list[tuple[str, str]] = []
    session = GenericSession(environ(), headers, store)
    session.set("a", 1)
    old = session.id

    session.delete_all()

    assert store.get_all(old, 60) == {}
    assert set_cookies(headers, "s")[-1][0] == old.removeprefix("session:")  # the cookie stays
    assert session.get_all() == {}
    assert session.id != old  # used again: a fresh session, and its cookie
    assert [value for value, _ in set_cookies(headers, "s")][-1] == session.token


def test_without_strict_delete_all_keeps_the_id_as_in_node(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []
    session = GenericSession(environ(), headers, store, strict=False)
    session.set("a", 1)

    session.delete_all()

    assert session.get_all() == {}
    assert [value for value, _ in set_cookies(headers, "s")] == [session.token]


def test_delete_all_leaves_other_sessions_alone(store: MemoryStore) -> None:
    mine = GenericSession(environ(), [], store)
    other = GenericSession(environ(), [], store)
    mine.set("k", "mine")
    other.set("k", "other")

    mine.delete_all()

    assert other.get("k") == "other"


def test_destroy_removes_the_data(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)
    session.set("a", 1)

    session.destroy()

    assert store.get_all(session.id, 60) == {}
    # The same cookie in a later request finds nothing either.
    later = GenericSession(environ(f"s={session.token}"), [], store)
    assert later.get_all() == {}


def test_destroy_clears_the_cookie_with_an_epoch_expiry(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []
    session = GenericSession(environ(), headers, store)

    session.destroy()

    value, attributes = last_cookie(headers, "s")
    assert value == ""
    assert attributes["expires"] == EPOCH
    assert expires_at(attributes) == 0
    assert attributes["path"] == "/"
    assert set_cookies(headers, "s.sig") == []  # unsigned: no signature to clear


def test_destroy_of_a_signed_session_clears_the_signature_too(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []
    session = GenericSession(environ(), headers, store, keys=["secret"])

    session.destroy()

    for name in ("s", "s.sig"):
        value, attributes = last_cookie(headers, name)
        assert value == "", name
        assert attributes["expires"] == EPOCH, name


def test_destroy_clears_the_cookie_with_the_same_domain_and_path(store: MemoryStore) -> None:
    # A browser only clears a cookie whose path and domain match the one it has.
    headers: list[tuple[str, str]] = []
    session = GenericSession(environ(), headers, store, domain="example.com", samesite="Strict")

    session.destroy()

    (sent, sent_attributes), (cleared, cleared_attributes) = set_cookies(headers, "s")
    assert (sent, cleared) == (session.token, "")
    for attribute in ("path", "domain", "samesite", "httponly"):
        assert cleared_attributes[attribute] == sent_attributes[attribute], attribute


def test_touch_keeps_a_session_alive_past_its_original_expiry() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    touched = GenericSession(environ(), [], store, expire=100)
    untouched = GenericSession(environ(), [], store, expire=100)
    touched.set("k", "touched")
    untouched.set("k", "untouched")

    clock.now += 90
    touched.touch()
    clock.now += 60  # 150 s after the writes: past the original expiry of both

    assert touched.get("k") == "touched"
    assert untouched.get("k") is None


def test_touch_renews_the_expiry_without_changing_the_data() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    session = GenericSession(environ(), [], store, expire=100)
    session.set("k", {"nested": [1]})

    session.touch()

    assert session.get_all() == {"k": {"nested": [1]}}


def test_touch_of_a_session_nobody_wrote_stores_no_data() -> None:
    store = MemoryStore()
    session = GenericSession(environ(), [], store)  # strict: issued, so the store knows it

    session.touch()

    assert store.get_all(session.id, 60) == {}
    assert "sessions=1" in repr(store)


def test_touch_without_strict_creates_nothing_as_in_node() -> None:
    store = MemoryStore()
    session = GenericSession(environ(), [], store, strict=False)

    session.touch()

    assert store.get_all(session.id, 60) == {}
    assert "sessions=0" in repr(store)


# -- attributes ----------------------------------------------------------------------------------


def test_id_is_the_default_prefix_and_the_token(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)

    assert session.id == "session:" + session.token


def test_id_is_the_key_the_store_keeps_the_data_under(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store, id_prefix="app:")
    session.set("k", "v")

    assert session.id == "app:" + session.token
    assert store.get(session.id, "k", 60) == "v"


def test_an_empty_id_prefix_gives_the_bare_token(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store, id_prefix="")

    assert session.id == session.token


def test_a_token_is_40_url_safe_characters_from_30_random_bytes(store: MemoryStore) -> None:
    token = GenericSession(environ(), [], store).token

    assert URL_SAFE_TOKEN.fullmatch(token)
    assert len(base64.urlsafe_b64decode(token)) == 30


def test_two_sessions_get_different_tokens(store: MemoryStore) -> None:
    tokens = {GenericSession(environ(), [], store).token for _ in range(20)}

    assert len(tokens) == 20


def test_expire_defaults_to_two_weeks(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)

    assert session.expire == TWO_WEEKS == 1_209_600


def test_expire_is_the_option_given(store: MemoryStore) -> None:
    assert GenericSession(environ(), [], store, expire=30.5).expire == 30.5


def test_store_is_the_store_given(store: MemoryStore) -> None:
    assert GenericSession(environ(), [], store).store is store


def test_cookies_reads_the_request_cookies(store: MemoryStore) -> None:
    session = GenericSession(environ("theme=dark"), [], store)

    assert isinstance(session.cookies, Cookies)
    assert session.cookies.get("theme") == "dark"


def test_a_cookies_object_given_as_an_option_is_used(store: MemoryStore) -> None:
    env = environ(f"s={new_token()}")
    mine: list[tuple[str, str]] = []
    cookies = Cookies(env, mine)

    session = GenericSession(env, [], store, cookies=cookies)

    assert session.cookies is cookies
    assert last_cookie(mine, "s")[0] == session.token  # the cookie went where it writes


# -- the token: sent at once, reused, or fresh ---------------------------------------------------


def test_a_session_made_directly_sends_its_cookie_at_once(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []

    session = GenericSession(environ(), headers, store)

    assert session.started
    assert [value for value, _ in set_cookies(headers, "s")] == [session.token]


def test_the_token_in_the_request_cookie_is_reused(store: MemoryStore) -> None:
    first = GenericSession(environ(), [], store)
    first.set("k", "kept")
    headers: list[tuple[str, str]] = []

    second = GenericSession(environ(f"other=1; s={first.token}"), headers, store)

    assert second.token == first.token
    assert second.get("k") == "kept"
    assert last_cookie(headers, "s")[0] == first.token  # re-sent, to slide its expiry


def test_a_token_issued_by_node_with_plus_and_slash_is_accepted(store: MemoryStore) -> None:
    # strict=False: a session Node issued in a shared store is not one we issued.
    node_token = base64.b64encode(b"\xfb\xff\xbf" * 10).decode("ascii")
    assert len(node_token) == 40 and "+" in node_token and "/" in node_token
    headers: list[tuple[str, str]] = []

    session = GenericSession(environ(f"s={node_token}"), headers, store, strict=False)

    assert session.token == node_token
    assert last_cookie(headers, "s")[0] == node_token


def test_a_signed_cookie_made_by_node_keeps_its_session(store: MemoryStore) -> None:
    # Set-Cookie headers written by Node's cookies@0.5.1 with keys ['k1'].
    vector = NODE_VECTORS["cookies"][0]
    pairs = [header.partition(";")[0] for header in vector["set_cookie"]]
    node_token = pairs[0].partition("=")[2]
    assert "/" in node_token

    session = GenericSession(environ("; ".join(pairs)), [], store, keys=vector["keys"],
                             strict=False)

    assert session.token == node_token


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param("s=" + "A" * 39, id="39-chars"),
        pytest.param("s=" + "A" * 41, id="41-chars"),
        pytest.param("s=" + "A" * 39 + "!", id="bad-char-bang"),
        pytest.param("s=" + "A" * 39 + ".", id="bad-char-dot"),
        pytest.param("s=" + "A" * 38 + "==", id="padded"),
        pytest.param("s=" + "\xe9" * 40, id="latin-1"),
        pytest.param('s="quoted garbage"', id="quoted-garbage"),
        pytest.param('s="' + "A" * 40, id="unbalanced-quote"),
        pytest.param("s=", id="empty"),
        pytest.param("s", id="no-equals"),
        pytest.param("", id="empty-header"),
    ],
)
def test_a_malformed_token_gives_a_fresh_one(store: MemoryStore, cookie: str) -> None:
    headers: list[tuple[str, str]] = []

    session = GenericSession(environ(cookie), headers, store)

    assert URL_SAFE_TOKEN.fullmatch(session.token)
    assert session.token not in cookie
    assert last_cookie(headers, "s")[0] == session.token


# -- signed cookies ------------------------------------------------------------------------------


def test_with_keys_the_signature_is_sent_too(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []

    session = GenericSession(environ(), headers, store, keys=["secret"])

    token, token_attributes = last_cookie(headers, "s")
    signature, sig_attributes = last_cookie(headers, "s.sig")
    assert token == session.token
    assert Keygrip(["secret"]).verify(f"s={token}", signature)
    assert sig_attributes == token_attributes  # same path, expiry, flags


def test_without_keys_no_signature_is_sent(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(), headers, store)

    assert set_cookies(headers, "s.sig") == []


def test_a_validly_signed_cookie_keeps_its_token(store: MemoryStore) -> None:
    token = issued_token(store, keys=["secret"])
    headers: list[tuple[str, str]] = []

    session = GenericSession(environ(signed_cookie(token)), headers, store, keys=["secret"])

    assert session.token == token
    assert Keygrip(["secret"]).verify(f"s={token}", last_cookie(headers, "s.sig")[0])


def test_a_tampered_signature_starts_a_fresh_session(store: MemoryStore) -> None:
    victim = GenericSession(environ(), [], store, keys=["secret"])
    victim.set("k", "private")
    signature = Keygrip(["secret"]).sign(f"s={victim.token}")
    tampered = ("A" if signature[0] != "A" else "B") + signature[1:]
    headers: list[tuple[str, str]] = []

    session = GenericSession(
        environ(f"s={victim.token}; s.sig={tampered}"), headers, store, keys=["secret"]
    )

    assert session.token != victim.token
    assert session.get("k") is None
    # The stale signature is replaced: the last s.sig sent signs the new token.
    signatures = [value for value, _ in set_cookies(headers, "s.sig")]
    assert tampered not in signatures
    assert Keygrip(["secret"]).verify(f"s={session.token}", signatures[-1])


def test_a_missing_signature_starts_a_fresh_session(store: MemoryStore) -> None:
    token = new_token()

    session = GenericSession(environ(f"s={token}"), [], store, keys=["secret"])

    assert session.token != token


def test_a_signature_made_with_an_unknown_key_starts_a_fresh_session(store: MemoryStore) -> None:
    token = new_token()

    session = GenericSession(
        environ(signed_cookie(token, key="attacker")), [], store, keys=["secret"]
    )

    assert session.token != token


def test_a_cookie_signed_with_an_old_key_is_kept_and_re_signed_with_the_new(
    store: MemoryStore,
) -> None:
    token = issued_token(store, keys=["old"])
    headers: list[tuple[str, str]] = []

    session = GenericSession(
        environ(signed_cookie(token, key="old")), headers, store, keys=["new", "old"]
    )

    assert session.token == token
    signature = last_cookie(headers, "s.sig")[0]
    assert Keygrip(["new"]).verify(f"s={token}", signature)
    assert not Keygrip(["old"]).verify(f"s={token}", signature)


def test_a_keygrip_can_be_given_instead_of_a_list_of_keys(store: MemoryStore) -> None:
    keygrip = Keygrip(["secret"], "sha256")
    headers: list[tuple[str, str]] = []

    session = GenericSession(environ(), headers, store, keys=keygrip)

    assert keygrip.verify(f"s={session.token}", last_cookie(headers, "s.sig")[0])
    assert not Keygrip(["secret"]).verify(f"s={session.token}", last_cookie(headers, "s.sig")[0])


# -- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -7, 2**53, 1.5, "", "ünïcødé ✓ \"q\"\n", [], {},
     [1, "2", None, True], {"a": [1, {"b": None}], "c": "d"}],
    ids=repr,
)
def test_a_json_value_round_trips_with_its_type(store: MemoryStore, value: Any) -> None:
    session = GenericSession(environ(), [], store)

    session.set("k", value)
    got = session.get("k")

    assert got == value
    assert type(got) is type(value)  # 1, 1.0 and True stay apart


def test_tuples_come_back_as_lists(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)

    session.set("k", (1, 2))

    assert session.get("k") == [1, 2]


def test_get_returns_a_copy(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)
    session.set("k", {"list": [1]})

    value = session.get("k")
    value["list"].append(2)
    value["new"] = True

    assert session.get("k") == {"list": [1]}


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(object(), "object"), ({1, 2}, "set"), (b"bytes", "bytes"), (float("nan"), "float"),
     (float("inf"), "float"), ({"nested": {1, 2}}, "dict")],
    ids=["object", "set", "bytes", "nan", "inf", "nested-set"],
)
def test_a_non_json_value_raises_type_error_naming_the_key_and_type_and_stores_nothing(
    store: MemoryStore, value: Any, type_name: str
) -> None:
    session = GenericSession(environ(), [], store)
    session.set("kept", "before")

    with pytest.raises(TypeError, match=rf"key 'kept'.*\({type_name}:"):
        session.set("kept", value)

    assert session.get_all() == {"kept": "before"}


def test_a_lone_surrogate_in_a_value_raises_type_error_naming_the_key_in_every_store(
    any_store: Store,
) -> None:
    session = GenericSession(environ(), [], any_store)
    session.set("k", "before")

    with pytest.raises(TypeError, match=r"^session value for key 'k' is not JSON-serialisable "
                       r"\(str: .*surrogates not allowed\)"):
        session.set("k", "x\ud800")

    assert session.get_all() == {"k": "before"}


@pytest.mark.parametrize("method", ["get", "set", "delete"])
def test_a_key_with_a_lone_surrogate_raises_type_error_as_not_unicode_text(
    any_store: Store, method: str
) -> None:
    session = GenericSession(environ(), [], any_store)
    session.set("k", "kept")

    with pytest.raises(TypeError, match=r"^session key 'k\\ud800' is not valid Unicode text "
                       r"\(it holds a lone surrogate\)$"):
        getattr(session, method)("k\ud800")

    assert session.get_all() == {"k": "kept"}


@pytest.mark.parametrize("method", ["get", "set", "delete"])
@pytest.mark.parametrize("key", [1, b"k", ("k",)], ids=["int", "bytes", "tuple"])
def test_a_key_that_is_not_a_str_raises_type_error(
    store: MemoryStore, method: str, key: Any
) -> None:
    session = GenericSession(environ(), [], store)

    with pytest.raises(TypeError, match=rf"session key must be a str, got {type(key).__name__}"):
        getattr(session, method)(key)

    assert session.get_all() == {}


# -- callbacks -----------------------------------------------------------------------------------


class Recorder:
    """A Node-style ``callback(error, result)`` that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[BaseException | None, Any]] = []

    def __call__(self, error: BaseException | None, result: Any) -> None:
        self.calls.append((error, result))


def test_a_callback_gets_none_and_the_value_once_and_the_value_is_returned(
    store: MemoryStore,
) -> None:
    session = GenericSession(environ(), [], store)
    session.set("k", {"v": 1})
    callback = Recorder()

    returned = session.get("k", callback=callback)

    assert returned == {"v": 1}
    assert callback.calls == [(None, {"v": 1})]


def test_get_without_a_key_passes_all_the_data_to_the_callback(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)
    session.set("a", 1)
    callback = Recorder()

    session.get(callback=callback)

    assert callback.calls == [(None, {"a": 1})]


@pytest.mark.parametrize(
    "call",
    [
        lambda s, cb: s.set("k", "v", callback=cb),
        lambda s, cb: s.delete("k", callback=cb),
        lambda s, cb: s.delete_all(callback=cb),
        lambda s, cb: s.destroy(callback=cb),
        lambda s, cb: s.touch(callback=cb),
    ],
    ids=["set", "delete", "delete_all", "destroy", "touch"],
)
def test_a_callback_of_a_write_is_called_once_with_no_error_and_no_result(
    store: MemoryStore, call: Any
) -> None:
    session = GenericSession(environ(), [], store)
    callback = Recorder()

    call(session, callback)

    assert callback.calls == [(None, None)]


def test_a_callback_gets_the_json_error_of_set_instead_of_it_being_raised(
    store: MemoryStore,
) -> None:
    session = GenericSession(environ(), [], store)
    callback = Recorder()

    session.set("k", {1, 2}, callback=callback)

    [(error, result)] = callback.calls
    assert isinstance(error, TypeError)
    assert "'k'" in str(error)
    assert result is None
    assert session.get_all() == {}


def test_a_store_error_goes_to_the_callback_instead_of_being_raised(
    dead_store: RedisStore,
) -> None:
    session = GenericSession(environ(), [], dead_store, strict=False)
    callback = Recorder()

    returned = session.get("k", callback=callback)

    assert returned is None
    [(error, result)] = callback.calls
    assert isinstance(error, StoreError)
    assert dead_store.address in str(error)
    assert result is None


def test_without_a_callback_a_store_error_is_raised_naming_the_address(
    dead_store: RedisStore,
) -> None:
    session = GenericSession(environ(), [], dead_store, strict=False)
    port = dead_store.client.connection_pool.connection_kwargs["port"]

    with pytest.raises(StoreError, match=rf"RedisStore at 127\.0\.0\.1:{port}: set failed"):
        session.set("k", "v")


def test_a_node_style_session_can_be_made_while_the_store_is_down(
    dead_store: RedisStore,
) -> None:
    headers: list[tuple[str, str]] = []

    session = GenericSession(environ(), headers, dead_store, strict=False)

    assert last_cookie(headers, "s")[0] == session.token


def test_a_strict_session_made_while_the_store_is_down_raises_store_error(
    dead_store: RedisStore,
) -> None:
    # Issuing a strict session writes it to the store: the error names the store.
    with pytest.raises(StoreError, match=rf"RedisStore at {dead_store.address}: "):
        GenericSession(environ(), [], dead_store)


# -- cookie attributes ---------------------------------------------------------------------------


def test_the_default_cookie_is_path_root_httponly_samesite_lax_and_not_secure_over_http(
    store: MemoryStore,
) -> None:
    headers: list[tuple[str, str]] = []

    session = GenericSession(environ(), headers, store)

    value, attributes = last_cookie(headers, "s")
    assert value == session.token
    assert attributes.keys() == {"path", "expires", "samesite", "httponly"}
    assert (attributes["path"], attributes["samesite"]) == ("/", "lax")


def test_the_attributes_are_written_in_nodes_order(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(url="https://example.com/"), headers, store, domain="example.com")

    _, attributes = last_cookie(headers, "s")
    assert list(attributes) == ["path", "expires", "domain", "samesite", "secure", "httponly"]


@pytest.mark.parametrize(
    ("samesite", "expected"), [("Strict", "strict"), ("strict", "strict"), ("Lax", "lax")]
)
def test_samesite_is_written_in_lower_case(
    store: MemoryStore, samesite: str, expected: str
) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(), headers, store, samesite=samesite)

    assert last_cookie(headers, "s")[1]["samesite"] == expected


def test_samesite_none_omits_the_attribute(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(), headers, store, samesite=None)

    assert "samesite" not in last_cookie(headers, "s")[1]


def test_samesite_string_none_is_written_and_forces_secure(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(), headers, store, samesite="None")

    _, attributes = last_cookie(headers, "s")
    assert attributes["samesite"] == "none"
    assert "secure" in attributes


def test_secure_is_automatic_over_https(store: MemoryStore) -> None:
    over_https: list[tuple[str, str]] = []
    over_http: list[tuple[str, str]] = []

    GenericSession(environ(url="https://example.com/"), over_https, store)
    GenericSession(environ(url="http://example.com/"), over_http, store)

    assert "secure" in last_cookie(over_https, "s")[1]
    assert "secure" not in last_cookie(over_http, "s")[1]


def test_secure_true_forces_it_over_http(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(), headers, store, secure=True, keys=["secret"])

    assert "secure" in last_cookie(headers, "s")[1]
    assert "secure" in last_cookie(headers, "s.sig")[1]


def test_secure_false_leaves_it_out_even_over_https(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(url="https://example.com/"), headers, store, secure=False)

    assert "secure" not in last_cookie(headers, "s")[1]


def test_a_domain_is_written(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(), headers, store, domain="example.com")

    assert last_cookie(headers, "s")[1]["domain"] == "example.com"


def test_expires_is_now_plus_expire_as_an_rfc_1123_date(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(), headers, store, clock=FakeClock(T0), expire=3600)

    date = last_cookie(headers, "s")[1]["expires"]
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", date)
    assert parsedate_to_datetime(date).timestamp() == T0 + 3600


def test_expires_defaults_to_two_weeks_from_now(store: MemoryStore) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(), headers, store, clock=FakeClock(T0))

    assert expires_at(last_cookie(headers, "s")[1]) == T0 + 1_209_600


def test_the_expiry_slides_with_each_request(store: MemoryStore) -> None:
    clock = FakeClock(T0)
    first: list[tuple[str, str]] = []
    session = GenericSession(environ(), first, store, clock=clock, keys=["secret"])
    cookie = signed_cookie(session.token)

    clock.now = T0 + 1000
    second: list[tuple[str, str]] = []
    again = GenericSession(environ(cookie), second, store, clock=clock, keys=["secret"])

    assert again.token == session.token
    assert expires_at(last_cookie(first, "s")[1]) == T0 + TWO_WEEKS
    assert expires_at(last_cookie(second, "s")[1]) == T0 + 1000 + TWO_WEEKS
    assert expires_at(last_cookie(second, "s.sig")[1]) == T0 + 1000 + TWO_WEEKS


def test_a_custom_cookie_name_carries_the_token_and_its_signature(store: MemoryStore) -> None:
    token = issued_token(store, cookie_name="sid", keys=["secret"])
    headers: list[tuple[str, str]] = []

    session = GenericSession(
        environ(f"s=ignored; {signed_cookie(token, name='sid')}"), headers, store,
        cookie_name="sid", keys=["secret"],
    )

    assert session.token == token
    assert last_cookie(headers, "sid")[0] == token
    assert set_cookies(headers, "s") == []


# Browsers match the __Host- and __Secure- prefixes in any case (RFC 6265bis).
HOST_PREFIXED = ["__Host-s", "__host-s", "__HOST-s"]
SECURE_PREFIXED = ["__Secure-x", "__secure-x", "__SECURE-x"]


@pytest.mark.parametrize("name", HOST_PREFIXED)
def test_a_host_prefixed_name_in_any_case_is_secure_even_over_http(
    store: MemoryStore, name: str
) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(url="http://example.com/"), headers, store, cookie_name=name)

    _, attributes = last_cookie(headers, name)
    assert "secure" in attributes
    assert attributes["path"] == "/"
    assert "domain" not in attributes


@pytest.mark.parametrize("name", SECURE_PREFIXED)
def test_a_secure_prefixed_name_in_any_case_is_secure_even_over_http(
    store: MemoryStore, name: str
) -> None:
    headers: list[tuple[str, str]] = []

    GenericSession(environ(url="http://example.com/"), headers, store, cookie_name=name,
                   keys=["secret"])

    assert "secure" in last_cookie(headers, name)[1]
    assert "secure" in last_cookie(headers, name + ".sig")[1]


@pytest.mark.parametrize("name", HOST_PREFIXED)
def test_a_host_prefixed_name_with_a_domain_is_refused(store: MemoryStore, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^domain must be None and path '/' for cookie_name "
                       rf"'{name}': "
                       r"__Host- cookies are bound to the host that set them$"):
        GenericSession(environ(), [], store, cookie_name=name, domain="example.com")


@pytest.mark.parametrize("name", [*HOST_PREFIXED, *SECURE_PREFIXED])
def test_a_prefixed_name_with_secure_false_is_refused(store: MemoryStore, name: str) -> None:
    with pytest.raises(ValueError, match=r"secure=False is not allowed with a __Host-/__Secure-"):
        GenericSession(environ(), [], store, cookie_name=name, secure=False)


def test_samesite_none_with_secure_false_is_refused(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match=r"secure=False is not allowed with samesite='None'"):
        GenericSession(environ(), [], store, samesite="None", secure=False)


# -- bad options ---------------------------------------------------------------------------------


def test_an_expire_too_large_for_a_float_raises_value_error(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match=r"expire"):
        GenericSession(environ(), [], store, expire=10**400)


def test_an_expire_too_far_for_a_cookie_date_raises_value_error(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match=r"expire"):
        GenericSession(environ(), [], store, expire=1e20)


def test_a_request_that_is_neither_an_environ_nor_has_one_is_refused(store: MemoryStore) -> None:
    with pytest.raises(TypeError, match=r"request must be a WSGI environ dict.*got str"):
        GenericSession("GET /", [], store)


# -- repr ----------------------------------------------------------------------------------------


def test_repr_shows_the_store_and_never_the_full_token(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)

    text = repr(session)

    assert repr(store) in text
    assert session.token[:6] in text
    assert session.token not in text


def test_repr_html_is_a_table_with_the_short_token_cookie_expiry_and_data(
    store: MemoryStore,
) -> None:
    session = GenericSession(environ(), [], store, keys=["secret"], expire=3600)
    session.set("note", "hello <b>world</b>")

    markup = session._repr_html_()

    assert markup.startswith("<table>") and markup.endswith("</table>")
    assert "session:" + session.token[:6] in markup
    assert session.token not in markup
    for attribute in ("path=/", "samesite=lax", "httponly"):
        assert attribute in markup
    assert "3600" in markup
    # The data is shown, escaped: no markup of a user's own goes through.
    assert "hello &lt;b&gt;world&lt;/b&gt;" in markup
    assert "<b>world" not in markup
    assert json.dumps({"note": "hello <b>world</b>"}) in html.unescape(markup)


def test_repr_html_shows_a_store_failure_instead_of_raising(dead_store: RedisStore) -> None:
    session = GenericSession(environ(), [], dead_store, strict=False)

    markup = session._repr_html_()

    assert "StoreError" in markup
    assert dead_store.address in markup
    assert session.token not in markup


def test_a_callback_gets_the_error_of_a_key_that_is_not_a_str(store: MemoryStore) -> None:
    session = GenericSession(environ(), [], store)
    callback = Recorder()

    session.set(5, "v", callback=callback)  # type: ignore[arg-type]

    [(error, _)] = callback.calls
    assert isinstance(error, TypeError)
    assert "session key must be a str, got int: 5" in str(error)
    assert session.get_all() == {}


# -- regenerate ----------------------------------------------------------------------------------


def test_regenerate_without_keep_data_gives_a_new_token_and_drops_the_old_data(
    store: MemoryStore,
) -> None:
    planted = GenericSession(environ(), [], store, keys=["secret"])
    planted.set("k", "planted by an attacker")
    headers: list[tuple[str, str]] = []
    session = GenericSession(environ(signed_cookie(planted.token)), headers, store,
                             keys=["secret"])
    assert session.token == planted.token

    session.regenerate(keep_data=False)
    session.set("user", "alice")

    assert session.token != planted.token
    assert session.id == "session:" + session.token
    assert session.get_all() == {"user": "alice"}
    assert store.get_all(planted.id, 60) == {}
    value, _ = last_cookie(headers, "s")
    signature, _ = last_cookie(headers, "s.sig")
    assert value == session.token
    assert Keygrip(["secret"]).verify(f"s={session.token}", signature)


def test_regenerate_in_the_filter_sends_only_the_new_cookie(store: MemoryStore) -> None:
    from webtest import TestApp

    from generic_session import filter as session_filter

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["generic_session.session"]
        old = session.token
        session.regenerate()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{old} {session.token}".encode()]

    response = TestApp(session_filter(store)(app)).get("/")
    old, new = response.text.split()
    cookies = [value for name, value in response.headerlist if name == "Set-Cookie"]
    assert old != new
    assert [cookie.split(";")[0] for cookie in cookies] == [f"s={new}"]


# -- cookies= and keys= --------------------------------------------------------------------------


def test_keys_and_cookies_together_is_a_value_error(store: MemoryStore) -> None:
    env = environ()
    with pytest.raises(ValueError, match=r"keys and cookies are given together: the cookies' own"):
        GenericSession(env, [], store, keys=["A"], cookies=Cookies(env, [], ["B"]))


def test_cookies_with_their_own_keys_sign_the_session_cookie(store: MemoryStore) -> None:
    env = environ()
    headers: list[tuple[str, str]] = []

    session = GenericSession(env, [], store, cookies=Cookies(env, headers, ["secret"]))

    signature, _ = last_cookie(headers, "s.sig")
    assert Keygrip(["secret"]).verify(f"s={session.token}", signature)


def test_cookies_without_keys_make_an_unsigned_session(store: MemoryStore) -> None:
    env = environ()
    headers: list[tuple[str, str]] = []

    GenericSession(env, [], store, cookies=Cookies(env, headers))

    assert [name for name, _, _ in map(parse_set_cookie, (h for _, h in headers))] == ["s"]
