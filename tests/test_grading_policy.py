"""The grader's confinement policy (utils/grading/policy.py): what a submission must never see, from
the grader's paths alone. Pure inputs -> outputs on made-up paths, no filesystem."""
from __future__ import annotations

import dataclasses
import os

import pytest

from utils.grading.policy import Confinement, confinement_policy

REPO = "/srv/demystify"
ESSENTIALS = ["/usr/lib/python3.12", "/srv/venv/lib/python3.12/site-packages", f"{REPO}/utils"]
BANKS = [f"{REPO}/chapters/00_orientation/questions.json", f"{REPO}/chapters/01_tensorized_attention/questions.json"]


def policy(dirs=(), links=None, **paths) -> Confinement:
    """The policy on a made-up filesystem: ``dirs`` exist as folders, ``links`` maps a path to its target."""
    links = links or {}
    args = dict(submissions="/course/submitted", scratch_base="/tmp/demystify-grading-x", gradebook="/grades/g.csv",
                feedback="/grades/feedback", solutions=f"{REPO}/solutions", repo=REPO, banks=BANKS,
                essentials=ESSENTIALS)
    args.update(paths)
    return confinement_policy(**args, resolve=lambda p: os.path.normpath(links.get(p, p)),
                              is_dir=set(dirs).__contains__)


def test_an_nbgrader_course_hides_its_neighbours_and_its_database():
    got = policy(dirs={"/course/submitted", "/course/autograded", "/course/feedback", "/grades", f"{REPO}/.git",
                       f"{REPO}/tests"})
    assert got.hide_dirs == ("/course/submitted", "/tmp/demystify-grading-x", "/grades/feedback", f"{REPO}/solutions",
                             "/grades", f"{REPO}/.git", f"{REPO}/tests", "/course/autograded", "/course/feedback")
    assert got.hide_files == ("/grades/g.csv", *BANKS, "/course/gradebook.db")
    assert got.protected == got.hide_dirs + got.hide_files and got.warnings == ()


def test_a_single_notebook_is_hidden_as_a_file():
    got = policy(submissions="/home/t/alice.ipynb", dirs={"/grades"})
    assert "/home/t/alice.ipynb" not in got.hide_dirs
    assert got.hide_files == ("/grades/g.csv", "/home/t/alice.ipynb", *BANKS)


def test_nearby_folders_are_hidden_only_where_they_exist_and_not_twice():
    got = policy(submissions="/subs", dirs={"/subs"}, gradebook="/subs/g.csv")  # no .git, tests or course dir
    assert got.hide_dirs == ("/subs", "/tmp/demystify-grading-x", "/grades/feedback", f"{REPO}/solutions")
    assert got.hide_files == ("/subs/g.csv", *BANKS)  # no gradebook.db outside a course layout
    inner = policy(submissions="/subs", dirs={"/subs", "/subs/inner"}, gradebook="/subs/inner/g.csv")
    assert "/subs/inner" not in inner.hide_dirs  # already hidden under /subs


def test_a_folder_holding_what_python_needs_is_never_hidden():
    """Solutions at the file system's root, a feedback folder around the virtual environment: the
    submission could not start, so they stay visible, with a warning, and so do such neighbours."""
    got = policy(solutions="/", feedback="/srv/venv", gradebook="/srv/g.csv", dirs={"/course/submitted", "/srv"})
    assert "/" not in got.hide_dirs and "/srv/venv" not in got.hide_dirs and "/srv" not in got.hide_dirs
    assert got.warnings == (
        "cannot hide /srv/venv from submissions: it contains /srv/venv/lib/python3.12/site-packages",
        "cannot hide / from submissions: it contains /usr/lib/python3.12")
    assert "/srv/g.csv" in got.hide_files  # the gradebook itself still is


def test_paths_are_resolved_before_they_are_compared():
    """A link to the submissions folder is hidden where it points, and the course layout is read
    from the target's name."""
    got = policy(submissions="/home/t/subs", links={"/home/t/subs": "/course/submitted"},
                 dirs={"/home/t/subs", "/course/submitted", "/course/autograded"})
    assert got.hide_dirs[0] == "/course/submitted" and "/course/autograded" in got.hide_dirs
    assert got.hide_files[-1] == "/course/gradebook.db"


def test_the_policy_is_a_frozen_value():
    got = policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.hide_dirs = ()
    assert got == policy()
