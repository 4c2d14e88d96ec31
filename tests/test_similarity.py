"""The similarity report (utils/grading/similarity.py) on a generated chapter-01 class
(tests/grading_submissions/similar_class.py): a renamed-variables copy and a reordered copy of one
student's solutions are paired with it and with each other; independent honest solutions, and
students who handed in the untouched chapter (the code everyone was given), are paired with no
one."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import grading_submissions as subs
import pytest
from grading_submissions import similar_class

from utils import build
from utils.grading import similarity
from utils.grading.grade import read_notebook

SLUG = similar_class.SLUG
COPIES = {("reference", "renamed"), ("reference", "reordered"), ("renamed", "reordered")}


@pytest.fixture(scope="module")
def klass(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("similar") / "submitted"
    similar_class.build(root, subs.write)
    for name in ("stub_a", "stub_b"):
        subs.write(root, SLUG, name, subs.chapter(SLUG))
    return root


def _codes(root: Path) -> list[similarity.Code]:
    trusted = build.read_source(build.SOLUTIONS / SLUG / f"{SLUG}.ipynb")
    ids = {c.metadata["nbgrader"]["grade_id"] for c in trusted.cells if c.metadata.get("nbgrader", {}).get("solution")}
    return [similarity.Code(p.parent.parent.name, similarity.solution_cells(read_notebook(p.read_bytes()), ids))
            for p in sorted(root.glob(f"*/{SLUG}/{SLUG}.ipynb"))]


def _given() -> tuple[set, frozenset]:
    released = build.read_source(build.CHAPTERS / SLUG / f"{SLUG}.ipynb")
    template = set()
    for cell in released.cells:
        if cell.cell_type == "code":
            template |= similarity.all_hashes(cell.source)
    return template, frozenset(similarity.given_lines(released))


def test_copies_are_paired_and_honest_solutions_are_not(klass):
    template, given = _given()
    codes = _codes(klass)
    pairs = similarity.similar_pairs(codes, template, given)
    assert {(p.a, p.b) for p in pairs} == COPIES
    assert min(p.score for p in pairs) > 0.8
    # Every other pair is far below the threshold, and the code everyone was given leaves no print.
    everything = similarity.similar_pairs(codes, template, given, threshold=0.0, min_shared=0)
    others = [p.score for p in everything if (p.a, p.b) not in COPIES]
    assert others and max(others) < similarity.THRESHOLD / 2
    assert [len(c.prints) for c in codes if c.student.startswith("stub")] == [0, 0]
    # Side by side: the reordered copy's attention_pattern sits in another cell, same lines.
    moved = next(p for p in pairs if (p.a, p.b) == ("reference", "reordered"))
    passage = next(x for x in moved.passages if "masked_fill(future" in x[2])
    assert passage[0] == "attention_pattern_solution" and passage[3] != passage[0] and passage[2] == passage[5]
    renamed = next(p for p in pairs if p.b == "renamed")
    assert any("masked_fill(future" in x[2] and "masked_fill(v" in x[5] for x in renamed.passages)


def test_normalised_tokens_ignore_names_layout_and_given_lines():
    a = "def f(x, y):\n    # add them\n    total = x + y  \n    return total\n"
    b = "def g(p,q):\n    s=p+q\n\n    return s"
    assert [t for t, _ in similarity.tokens(a)] == [t for t, _ in similarity.tokens(b)]
    assert [t for t, _ in similarity.tokens("y = x.softmax(-1)")] == ["N", "=", "N", ".", "softmax", "(", "-", "1", ")"]
    assert [t for t, _ in similarity.tokens(a, frozenset({"def f(x, y):"}))][:3] == ["N", "=", "N"]
    marked = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    assert [t for t, _ in similarity.tokens(marked)] == ["return", "N"]
    assert [t for t, _ in similarity.tokens("y = f(\n")] == ["N", "=", "N", "("]  # unfinished: what came first


@pytest.mark.slow
def test_the_class_report_shows_the_pairs_side_by_side(klass, tmp_path, capsys):
    """Through ``python -m utils.grading report`` on a gradebook naming the class's notebooks
    (written here: grading them is tested elsewhere); a notebook changed since it was graded is
    left out and said so."""
    from utils.grading.batch import columns
    from utils.grading.plan import build_plan
    from utils.grading.report import main

    cols = columns(build_plan(SLUG))
    gradebook = tmp_path / "grades.csv"
    with open(gradebook, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, restval="")
        writer.writeheader()
        for path in sorted(klass.glob(f"*/{SLUG}/{SLUG}.ipynb")):
            student = path.parent.parent.name
            sha = hashlib.sha256(path.read_bytes()).hexdigest() if student != "stub_b" else "0" * 64
            writer.writerow({"student": student, "status": "graded", "total": "0", "max_total": "1",
                             "chapter": SLUG, "sha256": sha, "submission": str(path)})
    out = tmp_path / "report.html"
    assert main([str(gradebook), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(line.split(": ", 1)[1].split(" (")[0] for line in printed.splitlines()
                  if line.startswith("similar solution code")) == sorted(f"{a} and {b}" for a, b in COPIES)
    assert "stub_b: left out, the notebook changed since it was graded" in printed
    text = out.read_text()
    assert text.count("<table class='pair'>") == 3 and "masked_fill(future" in text and "masked_fill(v" in text
