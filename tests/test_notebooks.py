"""Every notebook in notebooks/ runs from a clean kernel of this Python, and is committed
without outputs."""

from __future__ import annotations

import glob
import json
import os
import sys

import nbformat
import pytest
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

# Slow (a Jupyter kernel per notebook): `pytest -m "not slow"` leaves this file out.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_there_are_notebooks():
    assert [os.path.basename(p) for p in NOTEBOOKS][:1] == ["quickstart.ipynb"]


def _kernel(tmp_path) -> KernelManager:
    """A kernel of exactly this interpreter (not whatever 'python3' resolves to), Agg plots."""
    spec_dir = tmp_path / "kernels" / "jaxckpt-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jaxckpt test", "language": "python",
        "env": {"MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"},
    }))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="jaxckpt-test", kernel_spec_manager=specs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_from_a_clean_kernel(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{os.path.basename(path)} cell {i} has outputs; commit notebooks cleared")
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = NotebookClient(nb, km=_kernel(tmp_path), timeout=300, allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    # cleanup_kc: shut the kernel down and close its sockets even though we made the
    # manager (nbclient only cleans up kernels it made itself).
    client.execute(cleanup_kc=True)  # raises CellExecutionError naming the failing cell
    assert nb.cells[-1].outputs[0]["text"].strip() == sys.executable
    html = [out["data"]["text/html"] for cell in nb.cells if cell.cell_type == "code"
            for out in cell.outputs if "text/html" in out.get("data", {})]
    assert any("CheckpointManager" in h for h in html)  # the reprs render as HTML tables
    assert all("Traceback" not in json.dumps(cell.outputs) for cell in nb.cells
               if cell.cell_type == "code")
