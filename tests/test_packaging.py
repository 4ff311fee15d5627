"""The module as others get it: its licence line, its Python check, the wheel ``pip`` installs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
import types
import venv
from pathlib import Path

import pytest

import generic_session
from tests.helpers import PROJECT_ROOT

MODULE = PROJECT_ROOT / "generic_session.py"
SOURCE = MODULE.read_text("utf-8")


def version_check(body: list[ast.stmt] | None = None) -> ast.If:
    """The module's top-level ``if sys.version_info < ...:`` statement (in *body*, if given)."""
    for node in ast.parse(SOURCE).body if body is None else body:
        if isinstance(node, ast.If) and "sys.version_info" in ast.unparse(node.test):
            return node
    raise AssertionError("generic_session.py has no top-level sys.version_info check")


def run_version_check(version_info: tuple[int, int, int, str, int]) -> None:
    """Execute the module's own check, as written in the file, with *version_info* faked."""
    fake_sys = types.SimpleNamespace(version_info=version_info, executable="/usr/bin/python3.10")
    code = compile(ast.Module(body=[version_check()], type_ignores=[]), str(MODULE), "exec")
    exec(code, {"sys": fake_sys})


def test_the_module_carries_its_licence_in_its_first_lines() -> None:
    first_lines = SOURCE.splitlines()[:2]
    assert first_lines[0] == "# SPDX-License-Identifier: MIT"
    assert first_lines[1].startswith("# Copyright (c) generic-session for Python contributors")
    assert (PROJECT_ROOT / "LICENSE").read_text("utf-8").startswith("MIT License\n")


def test_python_3_10_gets_one_line_naming_the_version_needed_and_the_one_found() -> None:
    with pytest.raises(ImportError) as raised:
        run_version_check((3, 10, 12, "final", 0))

    assert str(raised.value) == (
        "generic_session needs Python >= 3.11, found 3.10 (/usr/bin/python3.10)"
    )


@pytest.mark.parametrize("version_info", [(3, 11, 0, "final", 0), (3, 14, 1, "final", 0)])
def test_python_3_11_and_later_pass_the_check(
    version_info: tuple[int, int, int, str, int],
) -> None:
    run_version_check(version_info)  # raises nothing


def test_the_check_comes_right_after_the_future_import_and_before_every_other_import() -> None:
    body = ast.parse(SOURCE).body
    check = body.index(version_check(body))
    assert isinstance(body[0], ast.Expr)  # the docstring stays the module's first statement
    assert [ast.unparse(node) for node in body[1:check]] == [
        "from __future__ import annotations", "import sys"
    ]
    later_imports = [node for node in body[check:] if isinstance(node, ast.Import | ast.ImportFrom)]
    assert any(node.module == "datetime" for node in later_imports
               if isinstance(node, ast.ImportFrom))  # `from datetime import UTC`: 3.11 only


@pytest.mark.parametrize("minor", [8, 9, 10])
def test_the_whole_module_parses_with_an_older_grammar_so_the_check_can_run(minor: int) -> None:
    # Python compiles the whole file before running its first line: one piece of
    # 3.11-only syntax anywhere (except*, PEP 695 `type X = ...`) and an old Python
    # stops with a SyntaxError instead of the one-line message.
    ast.parse(SOURCE, feature_version=(3, minor))


def test_the_distribution_takes_its_version_from_the_module() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    assert project["dynamic"] == ["version"]
    assert project["requires-python"] == ">=3.11"
    assert re.search(r'^__version__ = "[^"]+"$', SOURCE, re.MULTILINE)


@pytest.mark.packaging
def test_the_wheel_installs_the_module_into_a_fresh_venv(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps",
         "-q", "-w", str(wheels), str(PROJECT_ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("generic_session-*.whl")
    assert wheel.name == f"generic_session-{generic_session.__version__}-py3-none-any.whl"

    target = tmp_path / "venv"
    venv.create(target, with_pip=False)  # the test's pip installs into it (--python)
    python = target / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install",
         "--disable-pip-version-check", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert install.returncode == 0, install.stderr

    # From another directory, so the project root's copy cannot be the one imported.
    probe = subprocess.run(
        [str(python), "-c",
         "import generic_session as gs, sysconfig; "
         "print(gs.__file__); print(gs.__version__); print(sysconfig.get_paths()['purelib'])"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert probe.returncode == 0, probe.stderr
    module_file, version, site_packages = probe.stdout.splitlines()
    assert Path(module_file).parent == Path(site_packages)
    assert Path(site_packages).is_relative_to(target)
    assert version == generic_session.__version__
