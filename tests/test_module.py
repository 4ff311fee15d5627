"""Hygiene of the single module: public names, docstrings, reprs, types, lint, imports."""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import generic_session
from tests.helpers import PROJECT_ROOT

#: The type aliases the public signatures use (``id: SessionId``), exported for users' hints.
TYPE_ALIASES = {"SessionId", "Environ", "Callback", "CookieSink", "WSGIApp"}
PUBLIC = [(name, getattr(generic_session, name, None)) for name in generic_session.__all__]
PUBLIC_CLASSES = [obj for name, obj in PUBLIC if isinstance(obj, type) and name not in TYPE_ALIASES]
THIRD_PARTY = ("cachetools", "redis", "bottle", "webob", "requests")


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter from the project root (so it imports this module)."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )


def run_tool(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed in this interpreter ({sys.executable})")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=120, check=False,
    )


# -- Public names ------------------------------------------------------------------------------


def test_the_type_aliases_are_exported_and_used_in_public_signatures() -> None:
    assert set(generic_session.__all__) >= TYPE_ALIASES
    source = inspect.getsource(generic_session)
    for alias in TYPE_ALIASES:
        assert re.search(rf"^{alias}: TypeAlias = ", source, re.MULTILINE), alias
        assert re.search(rf"^(def|    def) \w+\(.*\b{alias}\b", source, re.MULTILINE), alias


def test_all_has_no_duplicates_and_no_private_names() -> None:
    names = generic_session.__all__

    assert len(names) == len(set(names))
    assert [name for name in names if name.startswith("_")] == []


@pytest.mark.parametrize(("name", "obj"), PUBLIC, ids=[name for name, _ in PUBLIC])
def test_every_public_name_exists_and_is_documented(name: str, obj: Any) -> None:
    assert hasattr(generic_session, name), f"__all__ lists {name!r}, which the module lacks"
    if isinstance(obj, int) or name in TYPE_ALIASES:
        return  # a constant or a type alias: documented by a #: comment, which Python drops
    doc = obj.__doc__  # the object's own docstring, not one inherited through inspect.getdoc
    assert doc is not None and doc.strip(), f"{name} has no docstring"


def _public_members(cls: type) -> list[tuple[str, Any]]:
    return [
        (name, member) for name, member in vars(cls).items()
        if not name.startswith("_") and (inspect.isfunction(member)
                                         or isinstance(member, property | classmethod))
    ]


PUBLIC_MEMBERS = [
    (f"{cls.__name__}.{name}", member)
    for cls in PUBLIC_CLASSES for name, member in _public_members(cls)
]


@pytest.mark.parametrize(("qualname", "member"), PUBLIC_MEMBERS,
                         ids=[qualname for qualname, _ in PUBLIC_MEMBERS])
def test_every_public_method_and_property_of_a_public_class_is_documented(
    qualname: str, member: Any
) -> None:
    doc = member.__func__.__doc__ if isinstance(member, classmethod) else member.__doc__

    assert doc is not None and doc.strip(), f"{qualname} has no docstring"


REPR_CLASSES = [
    cls for cls in PUBLIC_CLASSES
    # Protocols are never instantiated.
    if cls not in (generic_session.Store, generic_session.LifecycleStore,
                   generic_session.AsyncStore)
    and not issubclass(cls, BaseException)  # BaseException's repr already shows the message
]


def test_the_classes_needing_a_repr_are_the_expected_ones() -> None:
    # Guards the next test: a new public class is picked up automatically.
    assert {cls.__name__ for cls in REPR_CLASSES} >= {
        "AsyncRedisStore", "Cookies", "GenericSession", "Keygrip", "MemoryStore", "RedisStore",
        "SQLiteStore",
    }


@pytest.mark.parametrize("cls", REPR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_public_class_defines_its_own_repr(cls: type) -> None:
    assert "__repr__" in vars(cls), f"{cls.__name__} inherits object's repr"


SECRET = "hunter2"  # in every key and cookie value below; no repr may show it


def _make(cls: type, tmp_path: Path) -> Any:
    gs = generic_session
    if cls is gs.Keygrip:
        return gs.Keygrip([f"{SECRET}-key"])
    if cls is gs.Cookies:
        return gs.Cookies({"HTTP_COOKIE": f"a={SECRET}-value"}, [], [f"{SECRET}-key"])
    if cls is gs.GenericSession:
        return gs.GenericSession({}, [], gs.MemoryStore(), keys=[f"{SECRET}-key"])
    if cls is gs.SQLiteStore:
        return gs.SQLiteStore(tmp_path / "sessions.sqlite3")
    if cls is gs.RedisStore:
        import redis  # RedisStore takes any client; making one does not connect

        return gs.RedisStore(redis.Redis(host="127.0.0.1", port=1))
    if cls is gs.AsyncRedisStore:
        import redis.asyncio

        return gs.AsyncRedisStore(redis.asyncio.Redis(host="127.0.0.1", port=1))
    if cls is gs.ThreadedStore:
        return gs.ThreadedStore(gs.SQLiteStore(tmp_path / "threaded.sqlite3"))
    if cls is gs.ASGIMiddleware:
        return gs.ASGIMiddleware(_asgi_app, gs.MemoryStore(), keys=[f"{SECRET}-key"])
    if cls is gs.AsyncGenericSession:
        options = gs.SessionOptions(keys=[f"{SECRET}-key"])
        cookies = gs.Cookies.from_header(f"s={SECRET}-value", lambda name, header: None,
                                         options.keygrip)
        return gs.AsyncGenericSession.lazy(gs.MemoryStore(), options, cookies,
                                           https=lambda: False)
    return cls()


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that does nothing, to wrap."""


@pytest.mark.parametrize("cls", REPR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_repr_names_its_class_and_shows_no_secret(cls: type, tmp_path: Path) -> None:
    instance = _make(cls, tmp_path)

    text = repr(instance)

    assert text.startswith(f"{cls.__name__}("), text
    assert text.endswith(")"), text
    assert SECRET not in text
    if isinstance(instance, generic_session.SQLiteStore):
        instance.close()


def test_the_version_is_a_str() -> None:
    assert isinstance(generic_session.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+", generic_session.__version__)


def test_middleware_is_nodes_other_name_for_filter() -> None:
    assert generic_session.middleware is generic_session.filter


def test_two_weeks_is_two_weeks_of_seconds() -> None:
    assert generic_session.TWO_WEEKS == 14 * 24 * 3600


# -- The docstring example ---------------------------------------------------------------------


def test_the_module_docstring_example_runs() -> None:
    assert ">>>" in (generic_session.__doc__ or "")

    results = doctest.testmod(generic_session, verbose=False)

    assert results.failed == 0
    assert results.attempted > 0


# -- Imports -----------------------------------------------------------------------------------


def test_importing_the_module_imports_no_third_party_package() -> None:
    result = run_python(
        "import sys, generic_session; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {set(THIRD_PARTY)!r}))"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_memory_store_runs_on_the_standard_library_alone() -> None:
    # cachetools blocked: MemoryStore's LRU order is an OrderedDict's (it was a
    # cachetools LRUCache, whose Python calls cost ~1 us a request).
    result = run_python(
        "import sys; sys.modules['cachetools'] = None; import generic_session; "
        "store = generic_session.MemoryStore(); store.set('session:x', 'k', 1, 60); "
        "print(store.get('session:x', 'k', 60))"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1"]


def test_the_module_imports_only_the_standard_library_at_top_level() -> None:
    source = Path(generic_session.__file__).read_text(encoding="utf-8")
    top_level = re.findall(r"^(?:from|import) ([\w.]+)", source, flags=re.MULTILINE)

    non_stdlib = [
        name for name in top_level
        if name.split(".")[0] not in sys.stdlib_module_names and name != "__future__"
    ]

    assert top_level, "found no imports at all: the pattern is wrong"
    assert non_stdlib == []


# -- Types and lint ----------------------------------------------------------------------------


def test_mypy_strict_passes_on_the_module() -> None:
    result = run_tool("mypy", "--strict", "generic_session.py")

    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_passes_on_the_project() -> None:
    result = run_tool("ruff", "check", ".")

    assert result.returncode == 0, result.stdout + result.stderr
