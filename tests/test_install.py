"""The Colab route: the course package installed the way Colab installs it, away from the repository.

A wheel is built from this tree and installed into a fresh virtual environment; chapter 00's
solution notebook then runs from an empty folder in that environment, and every bundled model and
SAE loads from the installed package. The venv sees the test environment's site-packages for the
dependencies (torch, transformer-lens, ...) through a .pth file, so nothing is downloaded (not
``system_site_packages``: inside a virtual environment that means the BASE interpreter's packages);
the course package itself comes only from the wheel, which the notebook proves by printing where
`utils` was imported from.

What this does not check about Colab itself: its preinstalled package versions (other numpy,
transformers), its GPU runtime, and GitHub as the install source (a local git URL stands in).
"""
import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from utils.paths import REPO

pytestmark = pytest.mark.slow  # scripts/test.sh --quick leaves these out

CHAPTER_00 = REPO / "solutions" / "00_orientation" / "00_orientation.ipynb"


def _run(*cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("colab")
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    # The running interpreter's site-packages (a venv's, conda's or the base's): paths only, so
    # their .pth files (this repository's editable install among them) are not processed.
    (Path(purelib) / "test_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return root, python


def _kernel_for(python: Path, root: Path) -> dict:
    """A kernelspec that starts `python`, and the environment that makes Jupyter find it."""
    spec_dir = root / "jupyter" / "kernels" / "course-venv"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "course venv", "language": "python"}))
    return {"JUPYTER_PATH": str(root / "jupyter")}


def _execute_in(python: Path, root: Path, cells_before: list[str], cells_after: list[str]) -> nbformat.NotebookNode:
    """Run chapter 00's solution, with extra cells around it, from an empty folder."""
    nb = nbformat.read(CHAPTER_00, as_version=4)
    nb.cells = ([nbformat.v4.new_code_cell(c) for c in cells_before] + nb.cells
                + [nbformat.v4.new_code_cell(c) for c in cells_after])
    workdir = root / "empty"
    workdir.mkdir(exist_ok=True)
    env_backup = dict(os.environ)
    os.environ.update(_kernel_for(python, root))
    os.environ.update({"HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
                       "DEMYSTIFY_PROGRESS": str(root / "progress.json")})
    os.environ.pop("PYTHONPATH", None)
    try:
        NotebookClient(nb, timeout=600, kernel_name="course-venv",
                       resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    return nb


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


LOAD_EVERYTHING = """
import json, torch, utils
from utils.models import load_model
from utils.models.loading import BUNDLED
from utils.sae import SAE_DIR, load_sae
saes = sorted(p.stem for p in SAE_DIR.glob("*.safetensors"))
for name in BUNDLED:
    load_model(name, device="cpu")
for name in saes:
    load_sae(name)
print(json.dumps({"utils": utils.__file__, "torch": torch.__file__, "torch_version": torch.__version__,
                  "models": list(BUNDLED), "saes": saes}))
"""


def _hook_output(nb) -> str:
    return next(_stdout(c) for c in nb.cells if c.source.startswith("check.hook_question("))


def _installed_report(nb) -> dict:
    return json.loads(_stdout(nb.cells[-1]).strip().splitlines()[-1])


def _assert_ran_from_the_install(nb, venv_dir: Path):
    checks = [_stdout(c) for c in nb.cells if "check." in c.source and "PASS" in _stdout(c)]
    assert checks, "chapter 00's checks printed no PASS"
    report = _installed_report(nb)
    assert Path(report["utils"]).is_relative_to(venv_dir), f"utils came from {report['utils']}, not the install"
    assert not Path(report["utils"]).is_relative_to(REPO)
    assert len(report["models"]) == 3 and len(report["saes"]) >= 4
    return report


def test_wheel_in_a_fresh_venv_runs_chapter_00_and_loads_every_asset(fresh_venv, tmp_path):
    root, python = fresh_venv
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, REPO)
    wheel = next(tmp_path.glob("demystify-*.whl"))
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel)
    nb = _execute_in(python, root, [], [LOAD_EVERYTHING])
    _assert_ran_from_the_install(nb, root / "venv")
    # the wheel carries no question bank: the self-check records, the hidden key grades
    assert "RECORDED 00/hook_question" in _hook_output(nb) and "PASS 00/hook_question" in _hook_output(nb)


def test_colab_setup_cell_installs_from_the_repo_url_and_keeps_torch(fresh_venv, tmp_path):
    """The setup cell's Colab branch, with DEMYSTIFY_REPO_URL pointing at a local clone of this
    repository's HEAD: it installs the package, and the torch that was there stays."""
    import torch

    root, python = fresh_venv
    clone = tmp_path / "clone"
    _run("git", "clone", "-q", REPO, clone)
    _run(python, "-m", "pip", "uninstall", "-y", "-q", "demystify", cwd=tmp_path)
    fake_colab = ("import os, sys, types\n"
                  "sys.modules['google.colab'] = types.ModuleType('google.colab')  # what Colab has loaded\n"
                  f"os.environ['DEMYSTIFY_REPO_URL'] = {('file://localhost' + str(clone))!r}\n"
                  f"os.environ['DEMYSTIFY_COURSE'] = {str(tmp_path / 'content' / 'demystify')!r}  # /content on Colab")
    nb = _execute_in(python, root, [fake_colab], [LOAD_EVERYTHING])
    report = _assert_ran_from_the_install(nb, root / "venv")
    assert (tmp_path / "content" / "demystify" / "chapters").is_dir()
    # the clone's question bank makes the self-check answer at once, as it does locally
    assert "RECORDED" not in _hook_output(nb) and _hook_output(nb).count("PASS 00/hook_question") == 2
    assert report["torch_version"] == torch.__version__ and report["torch"] == torch.__file__, \
        "the setup cell replaced the preinstalled torch"
    assert (Path("/tmp/demystify-torch.txt").read_text().strip() == f"torch=={torch.__version__}")
