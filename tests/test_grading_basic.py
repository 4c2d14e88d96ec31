"""The basic sandbox (no namespaces) against issue 31's attack: a submission graded before a
classmate overwrites the classmate's notebook from native code (no audit event sees it).

As root (this suite's machines), each submission runs as an unprivileged user of its own: the
kernel refuses the write, and the honest process still imports the standard library lazily from
a Python installed under /root. As an ordinary user the write goes through; the batch grades
every notebook from the copy taken before any student code ran, puts the changed file back
after the batch, and flags it, so the next run keeps the right row.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grading_submissions as subs
import nbformat
import pytest

from utils.grading import privileges
from utils.paths import REPO

SLUG = "01_tensorized_attention"  # (any chapter; this one is short to grade)
LIMITS = ["--timeout-cell", "30", "--timeout-total", "90", "--memory-mb", "1024", "--sandbox", "basic",
          "--jobs", "1"]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")


def _class(root: Path) -> tuple[Path, bytes]:
    """a_attacker (graded first) overwrites b_victim's complete notebook with the blank chapter."""
    victim = subs.write(root, SLUG, "b_victim", subs.trim(subs.correct(SLUG)))
    attacker = subs.trim(subs.chapter(SLUG))
    subs.insert_after(attacker, None, subs.native_overwrite(str(victim),
                                                            nbformat.writes(subs.trim(subs.chapter(SLUG))).encode()))
    subs.write(root, SLUG, "a_attacker", attacker)
    return victim, victim.read_bytes()


@pytest.fixture
def open_tmp():
    """A folder every user can enter (pytest's own lies in a 0700 folder under /tmp), so that only
    the files' own permissions keep the unprivileged submission out."""
    path = Path(tempfile.mkdtemp(prefix="grading-basic-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["student"]: r for r in csv.DictReader(f)}


def _grade(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "utils.grading", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the root grader's path")
def test_as_root_each_submission_runs_unprivileged_and_the_overwrite_is_refused(open_tmp):
    root, out, fb = open_tmp / "submitted", open_tmp / "grades.csv", open_tmp / "feedback"
    victim, original = _class(root)
    probe = subs.trim(subs.correct(SLUG))
    subs.insert_after(probe, None, subs.uid_probe("attention_pattern"))
    subs.write(root, SLUG, "c_uid_probe", probe)
    for run in (1, 2):
        done = _grade(str(root), "--chapter", "01", "--out", str(out), "--feedback", str(fb), *LIMITS)
        assert done.returncode == 0, done.stdout + done.stderr
        rows = _rows(out)
        assert rows["b_victim"]["total"] == rows["b_victim"]["max_total"] and rows["b_victim"]["flags"] == "", \
            rows["b_victim"]
        assert victim.read_bytes() == original, "the kernel let a submission write a classmate's notebook"
        assert "while the batch ran" not in done.stderr
    assert "unchanged, kept from the gradebook: 3" in done.stdout  # the second run kept every row
    assert "Permission denied" in (fb / "a_attacker.md").read_text()
    # Not root, no supplementary groups, and the standard library (under /root here) still imports.
    assert rows["c_uid_probe"]["total"] == rows["c_uid_probe"]["max_total"], rows["c_uid_probe"]


@pytest.mark.slow
def test_as_an_ordinary_user_a_changed_notebook_is_graded_from_its_copy_and_put_back(tmp_path, monkeypatch, capsys):
    """The grader as a non-root user (as root here, the uid switch is turned off: the attacker's
    write then goes through, as it would between two processes of one ordinary user)."""
    from utils.grading.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    root, out, fb = tmp_path / "submitted", tmp_path / "grades.csv", tmp_path / "feedback"
    victim, original = _class(root)
    late = subs.trim(subs.chapter(SLUG))  # graded after b_victim: rewrites the victim's feedback
    subs.insert_after(late, None, subs.native_overwrite(str(fb / "b_victim.md"), b"# Feedback: 0 points"))
    subs.write(root, SLUG, "z_late", late)
    assert main([str(root), "--chapter", "01", "--out", str(out), "--feedback", str(fb), *LIMITS]) == 0
    captured = capsys.readouterr()
    rows = _rows(out)
    assert rows["b_victim"]["total"] == rows["b_victim"]["max_total"]  # graded from the copy taken first
    assert "notebook changed (now sha256" in rows["b_victim"]["flags"] and "restored" in rows["b_victim"]["flags"]
    assert "b_victim: notebook changed" in captured.err
    assert victim.read_bytes() == original  # put back ...
    (aside,) = victim.parent.glob(f"{victim.name}.changed-*")  # ... and the changed file kept beside it
    assert b'"cells"' in aside.read_bytes() and aside.read_bytes() != original
    assert "0 points" not in (fb / "b_victim.md").read_text()  # written again after the last submission
    assert main([str(root), "--chapter", "01", "--out", str(out), *LIMITS]) == 0
    assert "unchanged, kept from the gradebook: 3" in capsys.readouterr().out
    assert _rows(out)["b_victim"]["total"] == rows["b_victim"]["max_total"]


def test_the_uids_come_from_what_the_user_namespace_maps():
    host = "         0          0 4294967295\n"
    assert privileges.choose_ids(host, 32768) == (privileges.UID_BASE, None)
    container = "         0     100000      65536\n"  # a user-namespaced container: 65536 uids
    assert privileges.choose_ids(container, 32768) == (None, privileges.NOBODY)
    assert privileges.choose_ids("0 100000 1000\n", 32768) == (None, None)


def test_reachability_and_world_writable_files(open_tmp):
    private = open_tmp / "private"
    (private / "lib").mkdir(parents=True)
    (private / "lib" / "m.py").write_text("")
    os.chmod(private, 0o700)
    assert privileges.unreachable(str(private / "lib" / "m.py")) == str(private)
    os.chmod(private, 0o711)  # searchable, not listable
    assert privileges.unreachable(str(private / "lib" / "m.py")) is None
    assert privileges.unreachable(str(open_tmp / "missing")) == str(open_tmp / "missing")
    assert privileges.unreachable(str(private)) == str(private)
    assert privileges.unreachable(str(private), listed=False) is None
    (private / "lib" / "open.ipynb").write_text("{}")
    os.chmod(private / "lib" / "open.ipynb", 0o666)
    assert privileges.world_writable([str(private)]) == [str(private / "lib" / "open.ipynb")]


def test_a_root_grader_refuses_when_the_course_files_are_out_of_the_submissions_reach(open_tmp, monkeypatch):
    """Imports reach a private Python through descriptors; data files read by path (the bundled
    models) would not: the grader says so before grading instead of failing honest notebooks."""
    import utils

    package = os.path.dirname(os.path.abspath(utils.__file__))
    monkeypatch.setattr(privileges, "unreachable", lambda path, listed=True: "/root" if path == package else None)
    with pytest.raises(privileges.PrivilegeError, match="could not read the data files"):
        privileges.prepare(str(open_tmp))
    monkeypatch.setattr(privileges, "unreachable", lambda path, listed=True: None)
    assert privileges.prepare(str(open_tmp)) == privileges.choose_ids()
    assert os.stat(open_tmp).st_mode & 0o777 == 0o711
