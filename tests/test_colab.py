"""Colab's runtime, stood in for: a fresh virtual environment holding Colab's own versions of
every package the course's install touches (from the runtime's published pip freeze, committed as
tests/data/colab/pip-freeze.gpu.txt), `google.colab` faked, and the setup cell's Colab branch run
against a local clone. Then chapters 00, 02 and 04 execute there and their widgets' state is
checked against the ipywidgets that is installed (Colab's 7.7.1).

Differences from Colab that remain: Python 3.11 here (Colab: 3.13), the CPU torch 2.13 wheel in
place of Colab's CUDA builds (torch, torchvision, ... are left out of the stand-in), Jupyter's
kernel protocol through nbclient instead of Colab's front end, and a local clone instead of GitHub.
"""
from __future__ import annotations

import json
import re
import time
import venv
from pathlib import Path

import pytest
from venv_kernel import canonical_pin, execute, fake_colab_cell, installed_versions, run, stdout

from utils.paths import REPO

pytestmark = pytest.mark.slow  # scripts/test.sh --quick leaves these out

FREEZE = REPO / "tests" / "data" / "colab" / "pip-freeze.gpu.txt"
CUDA_BUILDS = re.compile(r"^(torch|torchvision|torchaudio|torchcodec|torchao|triton|nvidia-.*|cupy-.*|jax-cuda.*)$")
# Build tooling: the stand-in torch 2.13 needs a newer setuptools than Colab's (its torch 2.11 does not).
TOOLING = {"pip", "setuptools", "wheel"}
# Colab's kernel side, which our own install does not name but the notebooks run on.
KERNEL_SIDE = ("ipykernel", "ipython", "ipywidgets", "widgetsnbextension", "jupyterlab-widgets")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def colab_pins() -> dict[str, str]:
    """{name: version} of the runtime's pip freeze (lines installed from a URL are left out)."""
    lines = [line for line in FREEZE.read_text().splitlines() if "==" in line and not line.startswith("#")]
    return dict(canonical_pin(line) for line in lines)


def dependency_closure(roots: list[str]) -> set[str]:
    """Canonical names of ``roots`` and everything they require (no extras), read from the metadata
    of the environment running the tests, which has the course installed."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen, todo = set(), list(roots)
    while todo:
        name = canonical_pin(f"{todo.pop()}==0")[0]
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


@pytest.fixture(scope="module")
def colab_venv(tmp_path_factory):
    """A fresh venv with the CPU torch and Colab's versions of the packages the install touches."""
    root = tmp_path_factory.mktemp("colab-runtime")
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    pins = colab_pins()
    touched = (dependency_closure(["demystify", *KERNEL_SIDE]) & set(pins)) - {"demystify"}
    stand_in = sorted(name for name in touched - TOOLING if not CUDA_BUILDS.match(name))
    constraints = root / "colab-constraints.txt"
    constraints.write_text("torch==2.13.0\n" + "".join(f"{n}=={v}\n" for n, v in pins.items()
                                                       if not CUDA_BUILDS.match(n) and n not in TOOLING))
    run(python, "-m", "pip", "install", "-q", "torch==2.13.0", timeout=900)
    run(python, "-m", "pip", "install", "-q", "-c", constraints, *(f"{n}=={pins[n]}" for n in stand_in), timeout=1800)
    return root, python, stand_in


def widget_views(nb) -> list[str]:
    return [o["data"][WIDGET_VIEW]["model_id"] for c in nb.cells for o in c.get("outputs", [])
            if o.get("output_type") == "display_data" and WIDGET_VIEW in o.get("data", {})]


def test_setup_cell_keeps_colabs_packages_and_chapters_00_02_04_run(colab_venv, tmp_path):
    root, python, stand_in = colab_venv
    pins = colab_pins()
    before = installed_versions(python)
    assert all(before[n] == pins[n] for n in stand_in), "the stand-in does not hold Colab's versions"
    clone = tmp_path / "clone"
    run("git", "clone", "-q", REPO, clone)
    course = tmp_path / "content" / "demystify"
    cell = fake_colab_cell(clone, course)

    started = time.time()
    nb00 = execute(REPO / "solutions" / "00_orientation" / "00_orientation.ipynb", python, root, [cell])
    setup_out = stdout(nb00.cells[1])
    after = installed_versions(python)
    changed = {n: f"{v} -> {after.get(n)}" for n, v in before.items() if after.get(n) != v}
    added = {n: after[n] for n in sorted(set(after) - set(before))}
    report = {"stand_in_packages": len(stand_in), "changed": changed, "added": added,
              "setup_cell_output": setup_out.strip().splitlines(),
              "chapter_00_seconds": round(time.time() - started)}
    assert not changed, f"the setup cell replaced packages Colab preinstalls: {changed}"
    assert "demystify" in added and re.search(r"course installed in \d+ s", setup_out), setup_out
    assert any("PASS" in stdout(c) for c in nb00.cells), "chapter 00's checks printed no PASS"

    import_path = run(python, "-c", "import utils, ipywidgets; print(utils.__file__); "
                      "print(ipywidgets._version.__jupyter_widgets_controls_version__)", cwd=root).stdout.split()
    assert Path(import_path[0]).is_relative_to(root / "venv"), "utils was not imported from the install"
    controls_version = import_path[1]
    for slug in ("02_qk_ov_circuits", "04_superposition"):
        nb = execute(REPO / "solutions" / slug / f"{slug}.ipynb", python, root, [cell], store_widget_state=True)
        views = widget_views(nb)
        state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
        assert views and set(views) <= set(state), f"{slug}: widget views without a stored model state"
        versions = {m["model_module_version"] for m in state.values()
                    if m["model_module"] == "@jupyter-widgets/controls"}
        assert versions == {controls_version}, f"{slug}: widget models of {versions}, ipywidgets has {controls_version}"
        report[f"{slug}_widget_models"] = len(state)
    report["ipywidgets"] = after["ipywidgets"]
    print(json.dumps(report, indent=1))
