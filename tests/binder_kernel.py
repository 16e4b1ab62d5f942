"""Run by tests/test_binder.py with the Binder environment's Python: execute a notebook in that
environment's kernel, as JupyterLab would, and keep the kernel alive until stdin closes.

usage: python binder_kernel.py NOTEBOOK RESULT.json
Writes RESULT.json once every cell ran: the kernel's pid, its torch threads and OMP_NUM_THREADS, the
seconds taken, and the error if a cell failed. Not a test module (no test_ prefix): it needs nbclient
and the environment's own ipykernel.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

PROBE = "import os, torch\nprint(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))"


def main(notebook: str, result: str) -> None:
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))  # first: the tour may set its own threads later
    # the kernel starts in the notebook's folder, as in JupyterLab
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(Path(notebook).parent)}})
    out = {"error": None}
    with client.setup_kernel():  # the kernel lives until this block ends
        out["kernel_pid"] = client.km.provisioner.process.pid
        start = time.monotonic()
        try:
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            out["seconds"] = round(time.monotonic() - start, 1)
            threads, omp = nb.cells[0].outputs[0]["text"].split()
            out.update(torch_threads=int(threads), omp_num_threads=omp)
        except Exception as e:  # reported to the test, which fails naming it
            out["error"] = f"{type(e).__name__}: {e}"[-4000:]
        Path(result).write_text(json.dumps(out))
        sys.stdin.read()  # until the test is done measuring


if __name__ == "__main__":
    main(*sys.argv[1:3])
