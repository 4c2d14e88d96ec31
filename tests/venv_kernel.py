"""Run a notebook on a kernel of ANOTHER Python environment (a fresh virtual environment standing in
for a user's install or for Colab's runtime), from an empty folder, offline."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


def installed_versions(python: Path) -> dict[str, str]:
    """{canonical distribution name: version} of what ``python``'s environment holds."""
    freeze = run(python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check").stdout
    return dict(canonical_pin(line) for line in freeze.splitlines() if "==" in line)


def canonical_pin(line: str) -> tuple[str, str]:
    """'Jupyter_Core==5.9.1' -> ('jupyter-core', '5.9.1')."""
    import re

    name, version = line.strip().split("==", 1)
    return re.sub(r"[-_.]+", "-", name).lower(), version


def _kernel_env(python: Path, root: Path) -> dict:
    """A kernelspec that starts ``python``, and the environment that makes Jupyter find it."""
    spec_dir = root / "jupyter" / "kernels" / "course-venv"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "course venv", "language": "python"}))
    return {"JUPYTER_PATH": str(root / "jupyter")}


def execute(notebook: Path, python: Path, root: Path, cells_before: list[str] = (), cells_after: list[str] = (),
            timeout: int = 600, store_widget_state: bool = False) -> nbformat.NotebookNode:
    """Run ``notebook`` with extra cells around it on ``python``'s kernel, from ``root/empty``."""
    nb = nbformat.read(notebook, as_version=4)
    nb.cells = ([nbformat.v4.new_code_cell(c) for c in cells_before] + nb.cells
                + [nbformat.v4.new_code_cell(c) for c in cells_after])
    workdir = root / "empty"
    workdir.mkdir(exist_ok=True)
    env_backup = dict(os.environ)
    os.environ.update(_kernel_env(python, root))
    os.environ.update({"HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
                       "DEMYSTIFY_PROGRESS": str(root / "progress.json")})
    os.environ.pop("PYTHONPATH", None)
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="course-venv", store_widget_state=store_widget_state,
                       resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    return nb


def stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def fake_colab_cell(clone: Path, course: Path) -> str:
    """A first cell that makes the kernel look like Colab's to the setup cell: ``google.colab``
    imported (with a module spec, as a real import leaves it: libraries probe it with find_spec),
    its ``output.enable_custom_widget_manager`` recording the call, the repository URL pointing
    at a local clone and the course folder standing in for /content/demystify."""
    return ("import importlib.machinery, os, sys, types\n"
            "colab = types.ModuleType('google.colab')\n"
            "colab.__spec__ = importlib.machinery.ModuleSpec('google.colab', None)\n"
            "colab.output = types.SimpleNamespace(\n"
            "    enable_custom_widget_manager=lambda: print('custom widget manager enabled'))\n"
            "sys.modules['google.colab'] = colab\n"
            f"os.environ['DEMYSTIFY_REPO_URL'] = {('file://localhost' + str(clone))!r}\n"
            f"os.environ['DEMYSTIFY_COURSE'] = {str(course)!r}")
