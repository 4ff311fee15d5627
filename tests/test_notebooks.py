"""The notebooks in ``notebooks/`` run, and are committed as they ran.

Every ``notebooks/*.ipynb`` (a glob: a notebook added later is tested too) is
executed on a fresh kernel, with ``notebooks/`` as the working directory, and
fails the test if any cell raises or if the whole run takes 30 seconds or
more (``NOTEBOOK_TIME_LIMIT``). A cheaper check reads the committed file:
it must have been saved from a clean run, top to bottom (execution counts
1..n, outputs present, no error output).

The kernel is always run by ``sys.executable``, the Python running pytest: the
``python3`` kernelspec found on the Jupyter path may belong to another
environment (a user-wide one in ``~/.local/share/jupyter/kernels``, say) whose
packages differ. ``test_kernel_is_this_python`` checks it.

To re-execute notebooks and save them with their outputs (what the committed
check wants), from the project root::

    .venv/bin/python -m tests.test_notebooks [notebooks/NAME.ipynb ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

#: Seconds one cell may run before the notebook fails.
CELL_TIMEOUT = 60

#: Each notebook must execute in less than this many seconds, wall time, on a fresh
#: kernel (its start included): a teaching notebook that runs slowly is not re-run.
NOTEBOOK_TIME_LIMIT = 30


class ThisPythonKernelManager(AsyncKernelManager):
    """Starts a ``python3`` kernel with ``sys.executable``, whatever kernelspecs are installed."""

    @property
    def kernel_spec(self) -> KernelSpec:
        if self._kernel_spec is None:
            self._kernel_spec = KernelSpec(
                name="python3",
                display_name="Python 3 (ipykernel)",
                language="python",
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                resource_dir="",
            )
        return self._kernel_spec


def execute(nb: nbformat.NotebookNode) -> float:
    """Run every cell of ``nb`` in place on a fresh kernel; return the wall time in seconds.

    :raises CellExecutionError: when a cell raises.
    """
    client = NotebookClient(
        nb,
        kernel_name="python3",
        kernel_manager_class=ThisPythonKernelManager,
        timeout=CELL_TIMEOUT,
        record_timing=False,  # no per-cell timestamps: they would change every run
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    client.execute()
    return time.perf_counter() - start


def too_slow(name: str, seconds: float) -> str | None:
    """Why ``seconds`` is too long a run for notebook ``name``, or None when it is short enough."""
    if seconds < NOTEBOOK_TIME_LIMIT:
        return None
    return (
        f"{name} took {seconds:.1f} s to execute; each notebook must run in under "
        f"{NOTEBOOK_TIME_LIMIT} s: make its slowest cells faster (fewer iterations, a fake "
        "clock instead of sleeping)"
    )


def test_kernel_is_this_python() -> None:
    nb = nbformat.v4.new_notebook()
    source = "import os, sys\nprint(sys.executable, os.getcwd(), sep='\\n')"
    nb.cells.append(nbformat.v4.new_code_cell(source))
    execute(nb)
    printed = "".join(out.text for out in nb.cells[0].outputs if out.output_type == "stream")
    executable, cwd = printed.splitlines()
    assert executable == sys.executable
    assert Path(cwd).resolve() == NOTEBOOK_DIR


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    seconds = execute(nb)  # a cell that raises fails the test with its traceback
    slow = too_slow(path.name, seconds)
    assert slow is None, slow


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_committed_executed(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    rerun = "re-run it on a fresh kernel and save it: python -m tests.test_notebooks " + path.name
    assert counts == list(range(1, len(code) + 1)), f"execution counts {counts}: {rerun}"
    assert any(cell.outputs for cell in code), f"no outputs: {rerun}"
    errors = [any(output.output_type == "error" for output in cell.outputs) for cell in code]
    failed = [n for n, error in enumerate(errors, 1) if error]
    assert not failed, f"code cells {failed} were saved with an error: {rerun}"


def main(argv: list[str]) -> int:
    """Re-execute the notebooks named (all of them by default) and save them with outputs."""
    paths = [Path(arg) for arg in argv] or NOTEBOOKS
    status = 0
    for path in paths:
        if not path.exists():  # a bare name: look in notebooks/
            path = NOTEBOOK_DIR / path.name
        nb = nbformat.read(path, as_version=4)
        seconds = execute(nb)
        nbformat.write(nb, path)
        print(f"{path.name}: executed in {seconds:.1f} s and saved")
        slow = too_slow(path.name, seconds)
        if slow is not None:  # saved all the same, but test_notebook_runs will fail
            print(slow, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
