"""`bash scripts/course.sh` as written in the README, for root and for a normal user.

JupyterLab itself is replaced by a stand-in `python` on PATH that records its arguments (the
browser tests start the real one); `id` is replaced to play root or a normal user.
"""
import os
import stat
import subprocess
from pathlib import Path

import pytest

from utils.paths import REPO


def _fake_bin(tmp_path: Path, uid: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "id": f'#!/bin/sh\n[ "$1" = "-u" ] && echo {uid} || /usr/bin/id "$@"\n',
        "python": f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


@pytest.mark.parametrize("uid", [0, 1000], ids=["root", "user"])
def test_course_command_opens_the_whole_course(tmp_path, uid):
    env = {**os.environ, "PATH": f"{_fake_bin(tmp_path, uid)}:{os.environ['PATH']}", "DEMYSTIFY_SKIP_SETUP": "1"}
    subprocess.run(["bash", "scripts/course.sh", "--no-browser", "--port", "8890"], cwd=REPO, env=env, check=True)
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:2] == ["-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={REPO}" in argv  # the file browser shows every chapter
    assert argv[-1] == "chapters/00_orientation/00_orientation.ipynb"  # chapter 00 opens
    assert ("--allow-root" in argv) == (uid == 0)  # only root needs it; Jupyter refuses root without
    assert argv[argv.index("--port") + 1] == "8890" and "--no-browser" in argv  # options pass through


def test_setup_refuses_an_unknown_extra():
    out = subprocess.run(["bash", "scripts/setup.sh", "nonsense"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr


def test_student_extra_has_no_instructor_tools():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    student = " ".join(extras["course"])
    assert "jupyterlab" in student and "nbgrader" not in student and "pytest" not in student
    assert "demystify[course]" in extras["dev"] and any(d.startswith("nbgrader") for d in extras["dev"])


def test_the_repository_url_lives_in_one_place():
    """The README's Colab badges point at the repository utils.notebook_setup names."""
    import re

    from utils.notebook_setup import REPO_URL, SETUP_CELL

    owner_repo = REPO_URL.removeprefix("https://github.com/")
    badges = re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/", (REPO / "README.md").read_text())
    assert len(badges) == 7 and set(badges) == {owner_repo}
    assert 'os.environ.get("DEMYSTIFY_REPO_URL"' in SETUP_CELL and REPO_URL in SETUP_CELL
