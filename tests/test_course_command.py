"""`bash scripts/course.sh` as written in the README, for root and for a normal user.

JupyterLab itself is replaced by a stand-in `python` on PATH that records its arguments (the
browser tests start the real one); `id` is replaced to play root or a normal user.
"""
import os
import stat
import subprocess
from pathlib import Path

import pytest

from utils import course
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
    env = {**os.environ, "PATH": f"{_fake_bin(tmp_path, uid)}:{os.environ['PATH']}", "DEMYSTIFY_SKIP_SETUP": "1",
           "VIRTUAL_ENV": str(tmp_path)}  # an active environment: its `python` (the stand-in) is used
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
    assert len(badges) == len(course.CHAPTERS) and set(badges) == {owner_repo}
    assert 'os.environ.get("DEMYSTIFY_REPO_URL"' in SETUP_CELL and REPO_URL in SETUP_CELL


# ---------------------------------------------------------------- which Python the commands use
def _fake_python_dir(tmp_path: Path, name: str) -> Path:
    """A folder holding bin/python, a stand-in that records its arguments (like a venv's bin/)."""
    bin_dir = tmp_path / name / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\necho "{name}" > "{tmp_path}/which"\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return tmp_path / name


def _course_env(**extra) -> dict:
    # A shell that is not inside scripts/test.sh: no environment chosen, nothing announced yet.
    leave_out = ("VIRTUAL_ENV", "CONDA_PREFIX", "DEMYSTIFY_PYTHON", "DEMYSTIFY_PYTHON_SHOWN")
    env = {k: v for k, v in os.environ.items() if k not in leave_out}
    return {**env, "DEMYSTIFY_SKIP_SETUP": "1", **extra}


def test_an_active_virtual_environment_is_used_as_it_is(tmp_path):
    active = _fake_python_dir(tmp_path, "active")
    env = _course_env(VIRTUAL_ENV=str(active), PATH=f"{active / 'bin'}:{os.environ['PATH']}",
                      DEMYSTIFY_VENV=str(tmp_path / "never"))
    out = subprocess.run(["bash", "scripts/course.sh"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert (tmp_path / "which").read_text().strip() == "active"
    assert "using the active environment" in out.stdout and not (tmp_path / "never").exists()


def test_without_an_active_environment_the_project_venv_is_reused(tmp_path):
    project = _fake_python_dir(tmp_path, "project-venv")
    env = _course_env(DEMYSTIFY_VENV=str(project))
    out = subprocess.run(["bash", "scripts/course.sh"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert (tmp_path / "which").read_text().strip() == "project-venv"
    assert f"using the virtual environment at {project}" in out.stdout


def test_a_python_that_cannot_make_a_venv_gets_a_clear_error(tmp_path):
    base = tmp_path / "python3"
    base.write_text('#!/bin/sh\ncase "$*" in *venv*) echo "ensurepip is not available" >&2; exit 1;; esac\n'
                    'exec python3 "$@"\n')
    base.chmod(base.stat().st_mode | stat.S_IEXEC)
    env = _course_env(DEMYSTIFY_VENV=str(tmp_path / "venv"), DEMYSTIFY_BASE_PYTHON=str(base))
    out = subprocess.run(["bash", "scripts/course.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "apt-get install python3-venv" in out.stderr
    assert not (tmp_path / "venv").exists(), "a half-made venv was left behind"


# ---------------------------------------------------------------- both commands on a PEP 668 Python
DEBIAN_PYTHON = Path("/usr/bin/python3")


def _externally_managed(python: Path) -> bool:
    if not python.exists():
        return False
    stdlib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                            capture_output=True, text=True).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_jupyterlab(proc: subprocess.Popen, port: int, seconds: float) -> bool:
    import time
    import urllib.request

    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            time.sleep(2)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not _externally_managed(DEBIAN_PYTHON), reason="needs a system python3 marked EXTERNALLY-MANAGED")
def test_both_readme_commands_from_a_fresh_clone_on_a_pep_668_system_python(tmp_path):
    """Debian's own python3 refuses `pip install` (PEP 668); the README's commands, run as written
    from a fresh clone with only that Python on PATH, make the project's .venv, install into it,
    open JupyterLab, and on the next command reuse the venv and run tests."""
    refused = subprocess.run([DEBIAN_PYTHON, "-m", "pip", "install", "--dry-run", "six"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr + refused.stdout
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", REPO, clone], check=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "DEMYSTIFY_VENV", "PYENV_VERSION",
                        "DEMYSTIFY_PYTHON", "DEMYSTIFY_PYTHON_SHOWN")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # no pyenv, no venv
    port = _free_port()
    log = tmp_path / "course.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "scripts/course.sh", "--no-browser", f"--port={port}"], cwd=clone, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            served = _wait_for_jupyterlab(proc, port, seconds=900)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(60)
    text = log.read_text()
    assert served, f"JupyterLab never answered on port {port}:\n{text[-3000:]}"
    venv = clone / ".venv"
    assert f"creating a virtual environment at {venv}" in text
    home = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    assert Path(home["home"]) == DEBIAN_PYTHON.parent, home  # made from the system Python, not another one

    tests = subprocess.run(["bash", "scripts/test.sh", "tests/test_tensors.py", "-p", "no:cacheprovider"],
                           cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
    assert f"using the virtual environment at {venv}" in tests.stdout
    assert " passed" in tests.stdout and "full run finished in" in tests.stdout


# ---------------------------------------------------------------- supported Python versions
SUPPORTED = ("3.10", "3.11", "3.12", "3.13")  # the README's list; Colab runs 3.13


def _interpreter(version: str) -> str | None:
    """A working python<version>: pyenv's build if there is one, else one on PATH."""
    import glob
    import shutil

    pyenv = sorted(glob.glob(f"/root/.pyenv/versions/{version}.*/bin/python"))
    for python in [*pyenv, shutil.which(f"python{version}")]:
        if python and subprocess.run([python, "-c", "pass"], capture_output=True).returncode == 0:
            return python
    return None


def test_requires_python_and_the_readme_name_the_supported_versions():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == f">={SUPPORTED[0]}"
    assert f"Python {SUPPORTED[0]} to {SUPPORTED[-1]}" in (REPO / "README.md").read_text()


@pytest.mark.parametrize("version", SUPPORTED)
def test_the_package_compiles_on_each_supported_python(version):
    """Syntax and compile errors on another interpreter (torch for it is not installed here, so
    this is not a run: it catches syntax newer than the oldest supported version)."""
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no python{version} on this machine")
    compile_all = ("import pathlib, sys\n"
                   "for f in sorted(pathlib.Path(sys.argv[1]).rglob('*.py')):\n"
                   "    compile(f.read_text(), str(f), 'exec')\n")
    out = subprocess.run([python, "-c", compile_all, REPO / "utils"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
