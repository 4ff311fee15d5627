"""The README's code cannot rot: its ``python`` blocks run here, in order, in one namespace.

A ``python`` block followed directly by a ``text`` block must print that text (HTTP
dates, which change every run, are compared by shape).  ``py`` blocks are
illustrations that need things the tests do not have (a Redis host): they must at
least compile.

A block right after a ``<!-- recipe: NAME -->`` line is a recipe: a file a reader
starts from (a Flask app, a Django ``wsgi.py``, a gunicorn command). It is not part
of the in-order run; ``tests/test_readme_recipes.py`` runs each one's text, as the
README has it, against the real framework.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
HTTP_DATE = re.compile(r"\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT")


RECIPE = re.compile(r"^<!-- recipe: ([\w-]+) -->\n```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def recipes() -> dict[str, tuple[str, str]]:
    """{name: (language, code)} of every recipe block of the README."""
    found: dict[str, tuple[str, str]] = {}
    for match in RECIPE.finditer(README.read_text("utf-8")):
        assert match[1] not in found, f"two recipes named {match[1]!r}"
        found[match[1]] = (match[2], match[3])
    return found


def blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block of the README but the recipes, in order."""
    text = README.read_text("utf-8")
    recipe_spans = {match.span(3) for match in RECIPE.finditer(text)}
    return [(match[1], match[2]) for match in FENCE.finditer(text)
            if match.span(2) not in recipe_spans]


def normalised(text: str) -> str:
    return HTTP_DATE.sub("<http date>", text).strip()


def test_readme_python_blocks_run_and_print_what_the_readme_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    fenced = blocks()
    namespace: dict[str, object] = {"__name__": "readme"}
    checked = 0
    for index, (language, code) in enumerate(fenced):
        if language != "python":
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md block {index}", "exec"), namespace)
        following = fenced[index + 1] if index + 1 < len(fenced) else ("", "")
        if following[0] == "text":
            assert normalised(out.getvalue()) == normalised(following[1]), f"block {index}"
            checked += 1
    assert checked >= 2, "the example and the direct-use block both show their output"


def test_readme_example_prints_the_two_lines_of_client_py() -> None:
    text_blocks = [code for language, code in blocks() if language == "text"]
    assert text_blocks.count("Set foo = bar\nFetched foo = bar\n") >= 2


def test_readme_illustrations_compile() -> None:
    illustrations = [code for language, code in blocks() if language == "py"]
    assert illustrations
    for code in illustrations:
        compile(code, "README.md", "exec")


def test_readme_starts_with_the_two_set_up_commands() -> None:
    first_sh = next(code for language, code in blocks() if language == "sh")
    assert [line.split()[:2] for line in first_sh.splitlines()] == [
        ["make", "demo"], ["make", "test"]
    ]
