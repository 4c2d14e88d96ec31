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
import site
import sys
import venv
from pathlib import Path

import pytest
from venv_kernel import execute, fake_colab_cell, run, stdout

from utils.models.loading import BUNDLED
from utils.paths import REPO

pytestmark = pytest.mark.slow  # scripts/test.sh --quick leaves these out

CHAPTER_00 = REPO / "solutions" / "00_orientation" / "00_orientation.ipynb"


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("colab")
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    # The running interpreter's site-packages (a venv's, conda's or the base's): paths only, so
    # their .pth files (this repository's editable install among them) are not processed.
    (Path(purelib) / "test_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return root, python


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
    return next(stdout(c) for c in nb.cells if c.source.startswith("check.hook_question("))


def _installed_report(nb) -> dict:
    return json.loads(stdout(nb.cells[-1]).strip().splitlines()[-1])


def _assert_ran_from_the_install(nb, venv_dir: Path):
    checks = [stdout(c) for c in nb.cells if "check." in c.source and "PASS" in stdout(c)]
    assert checks, "chapter 00's checks printed no PASS"
    report = _installed_report(nb)
    assert Path(report["utils"]).is_relative_to(venv_dir), f"utils came from {report['utils']}, not the install"
    assert not Path(report["utils"]).is_relative_to(REPO)
    assert report["models"] == list(BUNDLED) and len(report["saes"]) >= 4
    return report


def test_wheel_in_a_fresh_venv_runs_chapter_00_and_loads_every_asset(fresh_venv, tmp_path):
    root, python = fresh_venv
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, REPO)
    wheel = next(tmp_path.glob("demystify-*.whl"))
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheel)
    nb = execute(CHAPTER_00, python, root, [], [LOAD_EVERYTHING])
    _assert_ran_from_the_install(nb, root / "venv")
    # the wheel carries no question bank: the self-check records, the hidden key grades
    assert "RECORDED 00/hook_question" in _hook_output(nb) and "PASS 00/hook_question" in _hook_output(nb)


def test_colab_setup_cell_installs_from_the_repo_url_and_keeps_torch(fresh_venv, tmp_path):
    """The setup cell's Colab branch, with DEMYSTIFY_REPO_URL pointing at a local clone of this
    repository's HEAD: it installs the package, and the torch that was there stays (tests/test_colab.py
    runs it in an environment with Colab's own versions)."""
    import torch

    root, python = fresh_venv
    clone = tmp_path / "clone"
    run("git", "clone", "-q", REPO, clone)
    run(python, "-m", "pip", "uninstall", "-y", "-q", "demystify", cwd=tmp_path)
    fake_colab = fake_colab_cell(clone, tmp_path / "content" / "demystify")
    nb = execute(CHAPTER_00, python, root, [fake_colab], [LOAD_EVERYTHING])
    report = _assert_ran_from_the_install(nb, root / "venv")
    assert (tmp_path / "content" / "demystify" / "chapters").is_dir()
    # the clone's question bank makes the self-check answer at once, as it does locally
    assert "RECORDED" not in _hook_output(nb) and _hook_output(nb).count("PASS 00/hook_question") == 2
    assert report["torch_version"] == torch.__version__ and report["torch"] == torch.__file__, \
        "the setup cell replaced the preinstalled torch"
    assert f"torch=={torch.__version__}" in Path("/tmp/demystify-runtime.txt").read_text().splitlines()
    # ipywidgets 8 (this environment's): the cell turns on Colab's custom widget manager, which shows it
    assert "custom widget manager enabled" in stdout(nb.cells[1])
