"""INSTRUCTORS.md, end to end: every command of its nbgrader workflow, exactly as written there, on
a temporary course with a correct, a partly wrong and a broken chapter-00 submission; then the same
nbgrader steps on chapters 01 and 07 (free-text answers graded by hand among the autograded ones).

The commands are read from the guide's ```bash blocks (so the guide and this test cannot drift
apart): the nbgrader workflow, then our sandboxed grader on the same submissions. The only thing
the test adds is putting the submissions where the guide says to put them.
"""
from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys

import grading_submissions as subs
import pytest

from utils.paths import REPO

SLUG = "00_orientation"
pytestmark = [pytest.mark.slow,  # scripts/test.sh --quick leaves these out
              pytest.mark.skipif(subprocess.run(["which", "nbgrader"], capture_output=True).returncode != 0,
                                 reason="nbgrader is not installed")]


# A check call given the answer key (the hidden line of a multiple-choice cell), e.g. check.q(answer, key="d").
KEYED_CHECK = re.compile(r"check\.\w+\([^()]*key\s*=")

def guide_commands() -> list[str]:
    """Every command of INSTRUCTORS.md's bash blocks, in order, comments stripped."""
    text = (REPO / "INSTRUCTORS.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


def test_guide_lists_the_workflow():
    commands = [c.split()[:2] for c in guide_commands()]
    assert commands[0][0] == "export" and ["nbgrader", "generate_assignment"] in commands
    for step in ("autograde", "generate_feedback", "export"):
        assert ["nbgrader", step] in commands
    assert ["python", "-m"] in commands  # our grader


def test_instructor_workflow_end_to_end(tmp_path):
    course = tmp_path / "course"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               DEMYSTIFY_PROGRESS=str(tmp_path / "progress.json"), HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()

    def submit():
        """The guide: put each returned notebook at $DEMYSTIFY_COURSE_DIR/submitted/<student>/<id>/<nb>."""
        root = course / "submitted"
        subs.write(root, SLUG, "alice", subs.correct(SLUG))  # everything right: 7 points
        nb = subs.trim(subs.correct(SLUG))
        subs.set_cell(nb, subs.HOOK_ANSWER, f'answer_hook = "{subs.wrong_answer("00", "hook_question")}"\n')
        subs.write(root, SLUG, "bob", nb)  # the question wrong: 6 points
        nb = subs.trim(subs.chapter(SLUG))  # a syntax error, and the test cell deleted: 0 points
        subs.set_cell(nb, subs.PER_TOKEN_LOSS, "def per_token_loss(logits, tokens)\n    return logits\n")
        nb.cells = [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                    != "per_token_loss_check"]
        subs.write(root, SLUG, "carol", nb)

    ran = []
    for command in guide_commands():
        argv = shlex.split(command)
        if argv[0] == "export":  # export DEMYSTIFY_COURSE_DIR=...: point it at the temporary course
            name, _ = argv[1].split("=", 1)
            env[name] = str(course)
            course.mkdir()
            continue
        if argv[:2] == ["nbgrader", "autograde"] and not (course / "submitted").exists():
            submit()
        argv = [a.replace("$DEMYSTIFY_COURSE_DIR", str(course)) for a in argv]
        if argv[0] == "python":
            argv[0] = sys.executable
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        ran.append(argv[1] if argv[0] == "nbgrader" else argv[2])
    assert ran == ["generate_assignment", "autograde", "generate_feedback", "export", "utils.grading"]

    # nbgrader's release carries no answer key: no question bank, no hidden keyed line
    released = list((course / "release").rglob("*"))
    assert any(p.suffix == ".ipynb" for p in released) and not any(p.name == "questions.json" for p in released)
    assert not any(KEYED_CHECK.search(p.read_text()) for p in released if p.suffix == ".ipynb")

    # scores, as exported
    with open(course / "grades.csv", newline="") as f:
        scores = {r["student_id"]: (float(r["score"]), float(r["max_score"])) for r in csv.DictReader(f)}
    assert scores == {"alice": (7.0, 7.0), "bob": (6.0, 7.0), "carol": (0.0, 7.0)}

    # the sandboxed grader agrees on honest work
    with open(course / "sandboxed.csv", newline="") as f:
        sandboxed = {r["student"]: (float(r["total"]), float(r["max_total"])) for r in csv.DictReader(f)}
    assert sandboxed == scores
    assert (course / "sandboxed-feedback" / "bob.md").is_file()

    # feedback: scores and diagnoses, never the hidden tests (carol's restored test cell fails on
    # its visible line, whose traceback would quote the hidden lines below it)
    trusted = (REPO / "solutions" / SLUG / f"{SLUG}.ipynb").read_text()
    hidden = re.findall(r"check\.\w+\(\w+, cases=\[[0-9, ]+\]\)", trusted)
    assert hidden
    for student in scores:
        page = (course / "feedback" / student / SLUG / f"{SLUG}.html").read_text()
        text = re.sub(r"<[^>]+>", "", page).replace("&quot;", '"').replace("&#39;", "'")
        assert "HIDDEN TESTS" not in text and "cases=[" not in text.replace(" ", "") and not KEYED_CHECK.search(text)
        assert not any(h in text for h in hidden)
    carol = re.sub(r"<[^>]+>", "", (course / "feedback" / "carol" / SLUG / f"{SLUG}.html").read_text())
    assert "NameError" in carol  # the student still sees why the check failed
    assert not list(REPO.glob("*.csv")), "nbgrader wrote into the repository"


@pytest.mark.parametrize("slug", ["01_tensorized_attention", "07_attribution_graphs"])
def test_autograde_of_a_later_chapter(slug, tmp_path):
    """The same nbgrader steps on a later chapter (one with a free-text answer graded by hand): a
    correct submission gets every autograded point, the unmodified chapter none."""
    import json

    course = tmp_path / "course"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
               DEMYSTIFY_PROGRESS=str(tmp_path / "progress.json"), HOME=str(tmp_path / "home"),
               DEMYSTIFY_COURSE_DIR=str(course))
    (tmp_path / "home").mkdir()
    course.mkdir()

    def nbgrader(*args):
        done = subprocess.run(["nbgrader", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{args}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"

    nbgrader("generate_assignment", slug)
    subs.write(course / "submitted", slug, "dora", subs.trim(subs.correct(slug)))
    subs.write(course / "submitted", slug, "eve", subs.trim(subs.chapter(slug)))
    nbgrader("autograde", slug)
    nbgrader("export", "--to", str(course / "grades.csv"))
    with open(course / "grades.csv", newline="") as f:
        scores = {r["student_id"]: (float(r["score"]), float(r["max_score"])) for r in csv.DictReader(f)}
    nb = json.loads((REPO / "solutions" / slug / f"{slug}.ipynb").read_text())
    graded = [c["metadata"]["nbgrader"] for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade")]
    total = sum(m["points"] for m in graded)
    by_hand = sum(m["points"] for m in graded if m.get("solution"))  # free text, not scored until a person does
    assert by_hand == 4 and scores == {"dora": (total - by_hand, total), "eve": (0.0, total)}
