"""Keygrip: byte-for-byte agreement with Node's keygrip@1.0.1, rotation, tampering, config errors.

The vectors in ``tests/vectors/keygrip-node.json`` were produced by the real Node
packages, so a pass here means a cookie signed by a Node server verifies in
Python and the other way round.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import json
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generic_session import Keygrip

VECTORS_PATH = Path(__file__).parent / "vectors" / "keygrip-node.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
KEYGRIP_VECTORS: list[dict[str, Any]] = VECTORS["keygrip"]

B64URL_ALPHABET = string.ascii_letters + string.digits + "-_"
B64URL_UNPADDED = re.compile(r"[A-Za-z0-9_-]+")
ALGORITHMS = ("sha1", "sha256", "sha384", "sha512")


def _vector_id(vector: dict[str, Any]) -> str:
    keys = ",".join(vector["keys"])
    rotated = f"-signed-by-keys[{vector['index']}]" if "index" in vector else ""
    return f"{vector['algorithm']}-[{keys}]-{vector['data'] or '(empty)'}{rotated}"


DIRECT_VECTORS = [v for v in KEYGRIP_VECTORS if "index" not in v]
ROTATED_VECTORS = [v for v in KEYGRIP_VECTORS if "index" in v]


def test_the_vector_file_covers_both_algorithms_rotation_and_non_ascii_keys() -> None:
    # Guards the tests below against silently running on a truncated vector file.
    assert {v["algorithm"] for v in KEYGRIP_VECTORS} == {"sha1", "sha256"}
    assert ROTATED_VECTORS, "no vector signed by an older key"
    assert any(not key.isascii() for v in KEYGRIP_VECTORS for key in v["keys"])
    assert any(v["data"] == "" for v in KEYGRIP_VECTORS)


# -- Node's vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", DIRECT_VECTORS, ids=_vector_id)
def test_sign_matches_node_keygrip_byte_for_byte(vector: dict[str, Any]) -> None:
    keygrip = Keygrip(vector["keys"], vector["algorithm"])

    assert keygrip.sign(vector["data"]) == vector["signature"]


@pytest.mark.parametrize("vector", DIRECT_VECTORS, ids=_vector_id)
def test_a_node_signature_verifies_at_index_zero(vector: dict[str, Any]) -> None:
    keygrip = Keygrip(vector["keys"], vector["algorithm"])

    assert keygrip.verify(vector["data"], vector["signature"]) is True
    assert keygrip.index(vector["data"], vector["signature"]) == 0


@pytest.mark.parametrize("vector", ROTATED_VECTORS, ids=_vector_id)
def test_a_node_signature_by_an_older_key_verifies_at_that_keys_index(
    vector: dict[str, Any],
) -> None:
    keygrip = Keygrip(vector["keys"], vector["algorithm"])

    assert keygrip.index(vector["data"], vector["signature"]) == vector["index"]
    assert keygrip.verify(vector["data"], vector["signature"]) is True
    # sign() always uses keys[0], so it does not reproduce the older key's signature ...
    assert keygrip.sign(vector["data"]) != vector["signature"]
    # ... which is exactly the signature a keygrip holding only that older key makes.
    older = Keygrip([vector["keys"][vector["index"]]], vector["algorithm"])
    assert older.sign(vector["data"]) == vector["signature"]


@pytest.mark.parametrize("vector", KEYGRIP_VECTORS, ids=_vector_id)
def test_sign_accepts_bytes_data_equal_to_the_utf8_of_the_text(vector: dict[str, Any]) -> None:
    keygrip = Keygrip(vector["keys"], vector["algorithm"])

    assert keygrip.sign(vector["data"].encode("utf-8")) == keygrip.sign(vector["data"])


# -- Tampering -----------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", KEYGRIP_VECTORS, ids=_vector_id)
def test_every_single_character_change_of_a_signature_is_rejected(vector: dict[str, Any]) -> None:
    keygrip = Keygrip(vector["keys"], vector["algorithm"])
    data, signature = vector["data"], vector["signature"]
    forgeries = {
        signature[:position] + replacement + signature[position + 1 :]
        for position in range(len(signature))
        for replacement in B64URL_ALPHABET + "+/=. ü"
    }
    forgeries.discard(signature)

    accepted = [forgery for forgery in forgeries if keygrip.index(data, forgery) != -1]

    assert accepted == []
    assert len(forgeries) > 60 * len(signature)  # every position got many changes


@pytest.mark.parametrize("vector", KEYGRIP_VECTORS, ids=_vector_id)
def test_truncated_extended_and_cut_signatures_are_rejected(vector: dict[str, Any]) -> None:
    keygrip = Keygrip(vector["keys"], vector["algorithm"])
    data, signature = vector["data"], vector["signature"]
    forgeries = [
        *(signature[:length] for length in range(len(signature))),  # every prefix, "" included
        *(signature[:p] + signature[p + 1 :] for p in range(len(signature))),  # one char removed
        signature + "A",
        signature + "=",  # padding, which keygrip strips
        signature.upper(),
        signature.swapcase(),
        " " + signature,
        signature + "\x00",
    ]

    results = {forgery: (keygrip.index(data, forgery), keygrip.verify(data, forgery))
               for forgery in forgeries}

    assert set(results.values()) == {(-1, False)}


@pytest.mark.parametrize(
    "signature",
    ["", "ü", "\udcff", "\x00", "🔑" * 27, "\udcff" * 43, "Ngtam5T4FH6INGLsAwNYO1SJBR\udcff",
     "Ngtam5T4FH6INGLsAwNYO1SJBRü", "x" * 100_000],
    ids=["empty", "u-umlaut", "lone-surrogate", "nul", "emoji", "surrogates", "surrogate-at-end",
         "umlaut-at-end", "100k"],
)
def test_non_ascii_or_absurd_signatures_give_minus_one_without_raising(signature: str) -> None:
    keygrip = Keygrip(["k1"])
    data = "s=c4Tvcqotl0NUMFh4dC49V3/tS21mmApkFiWq0lKQ"

    assert keygrip.index(data, signature) == -1
    assert keygrip.verify(data, signature) is False


def test_a_signature_for_other_data_is_rejected() -> None:
    keygrip = Keygrip(["k1", "k2"])
    signature = keygrip.sign("s=token-a")

    assert keygrip.index("s=token-b", signature) == -1
    assert keygrip.index("t=token-a", signature) == -1  # the cookie name is signed too
    assert keygrip.index("s=token-a", signature) == 0


def test_a_signature_made_with_another_algorithm_is_rejected() -> None:
    data = "s=token"
    sha256_signature = Keygrip(["k"], "sha256").sign(data)

    assert Keygrip(["k"], "sha1").index(data, sha256_signature) == -1
    assert Keygrip(["k"], "sha512").index(data, sha256_signature) == -1


@settings(max_examples=200, deadline=None)
@given(data=st.text(max_size=200), forged=st.text(max_size=100))
def test_arbitrary_text_as_a_signature_never_raises(data: str, forged: str) -> None:
    keygrip = Keygrip(["k1", "k2"])
    genuine = keygrip.sign(data)

    index = keygrip.index(data, forged)

    assert index == (0 if forged == genuine else -1)
    assert keygrip.verify(data, forged) is (index == 0)


# -- Rotation ------------------------------------------------------------------------------------


def test_a_signature_by_an_old_key_still_verifies_after_new_keys_are_added_in_front() -> None:
    data = "s=AFSeQuZKz4U+6MIy+hZj9BdrsHvdM0IBDHoMZIw1"
    signature = Keygrip(["old"]).sign(data)

    assert Keygrip(["new", "old"]).index(data, signature) == 1
    assert Keygrip(["newer", "new", "old"]).index(data, signature) == 2
    assert Keygrip(["newer", "new", "old"]).verify(data, signature) is True


def test_a_signature_by_a_retired_key_no_longer_verifies() -> None:
    data = "s=token"
    signature = Keygrip(["old"]).sign(data)

    assert Keygrip(["new"]).index(data, signature) == -1
    assert Keygrip(["new"]).verify(data, signature) is False


def test_new_signatures_after_rotation_are_made_with_the_new_key() -> None:
    data = "s=token"

    rotated = Keygrip(["new", "old"])

    assert rotated.sign(data) == Keygrip(["new"]).sign(data)
    assert rotated.sign(data) != Keygrip(["old"]).sign(data)


def test_index_reports_the_first_key_when_a_key_is_listed_twice() -> None:
    data = "s=token"
    signature = Keygrip(["dup"]).sign(data)

    assert Keygrip(["other", "dup", "dup"]).index(data, signature) == 1


# -- Keys ----------------------------------------------------------------------------------------


def test_str_keys_are_utf8_encoded_as_in_node() -> None:
    vector = next(v for v in DIRECT_VECTORS if v["keys"][0] == "ключ")
    utf8_keys = [key.encode("utf-8") for key in vector["keys"]]
    other_encoding = [vector["keys"][0].encode("utf-16-le")]

    assert Keygrip(utf8_keys, vector["algorithm"]).sign(vector["data"]) == vector["signature"]
    assert Keygrip(other_encoding, vector["algorithm"]).sign(vector["data"]) != vector["signature"]


def test_bytes_and_str_keys_can_be_mixed() -> None:
    data = "session=abc"
    signature = Keygrip(["old-text-key"]).sign(data)

    assert Keygrip([b"new-bytes-key", "old-text-key"]).index(data, signature) == 1


@pytest.mark.parametrize("keys", [("k1", "k2"), ["k1", "k2"]], ids=["tuple", "list"])
def test_any_sequence_of_keys_is_accepted(keys: Any) -> None:
    assert Keygrip(keys).sign("x") == Keygrip(["k1"]).sign("x")


# -- Configuration errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (([],), ValueError, r"at least one secret key, got an empty list"),
        ((None,), TypeError, r"keys must be a list of secret strings, newest first, got NoneType"),
        (("single string",), TypeError,
         r"keys must be a list of secret strings, newest first, got str"),
        ((b"single bytes",), TypeError,
         r"keys must be a list of secret strings, newest first, got bytes"),
        (({"k": 1},), TypeError, r"keys must be a list of secret strings, newest first, got dict"),
        (([b""],), ValueError, r"keys\[0\] is empty: a signing key must be a secret"),
        ((["ok", ""],), ValueError, r"keys\[1\] is empty"),
        (([1],), TypeError, r"keys\[0\] must be str or bytes, got int"),
        ((["ok", None],), TypeError, r"keys\[1\] must be str or bytes, got NoneType"),
        ((["k"], "md5"), ValueError,
         r"algorithm must be one of sha1, sha256, sha384, sha512, got 'md5'"),
        ((["k"], "SHA1"), ValueError, r"algorithm must be one of .*got 'SHA1'"),
    ],
    ids=["empty-list", "none", "single-string", "single-bytes", "dict", "empty-bytes-key",
         "empty-second-key", "int-key", "none-key", "md5", "uppercase-algorithm"],
)
def test_bad_configuration_raises_type_or_value_error_naming_the_problem(
    args: tuple[Any, ...], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Keygrip(*args)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_supported_algorithm_is_accepted(algorithm: str) -> None:
    assert Keygrip(["k"], algorithm).algorithm == algorithm


def test_repr_shows_the_key_count_and_algorithm_but_never_a_key() -> None:
    secrets = ["super-secret-one", "ключ-секрет"]
    keygrip = Keygrip([*secrets, b"bytes-secret"], "sha256")

    text = repr(keygrip)

    assert text == "Keygrip(<3 keys>, algorithm='sha256')"
    for secret in [*secrets, "bytes-secret", "super", "secret"]:
        assert secret not in text


# -- Signature format ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=300), key=st.binary(min_size=1, max_size=300))
def test_signature_is_the_hmac_in_base64url_without_padding(
    algorithm: str, data: bytes, key: bytes
) -> None:
    signature = Keygrip([key], algorithm).sign(data)

    assert B64URL_UNPADDED.fullmatch(signature), signature
    assert not set(signature) & set("+/=")
    digest_size = hashlib.new(algorithm).digest_size
    assert len(signature) == -(-digest_size * 4 // 3)  # ceil(bytes * 8 / 6)
    padded = signature + "=" * (-len(signature) % 4)
    assert base64.urlsafe_b64decode(padded) == hmac.new(key, data, algorithm).digest()


def test_sha1_is_the_default_algorithm_as_in_node() -> None:
    vector = next(v for v in DIRECT_VECTORS if v["algorithm"] == "sha1")

    assert Keygrip(vector["keys"]).algorithm == "sha1"
    assert Keygrip(vector["keys"]).sign(vector["data"]) == vector["signature"]


def test_index_compares_signatures_in_constant_time() -> None:
    # A code property, not a timing measurement: a refactor back to `==` would leak how
    # much of a forged signature was right.
    source = inspect.getsource(Keygrip.index)

    assert "compare_digest" in source


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("length", [1, 63, 64, 65, 127, 128, 129, 1000])
def test_keys_around_the_hash_block_size_sign_as_hmac_does(algorithm: str, length: int) -> None:
    key = bytes(range(256)) * 4
    key = key[:length]

    signature = Keygrip([key], algorithm).sign(b"s=token")

    expected = base64.urlsafe_b64encode(hmac.new(key, b"s=token", algorithm).digest())
    assert signature == expected.rstrip(b"=").decode()
