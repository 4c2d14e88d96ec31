"""The tripwire on the course's references (utils/grading/tripwire.py), on every chapter 00-07.

Rule under test: a graded case is tainted when a reference of the graded chapter runs anywhere
beneath the student's graded call, whoever calls it. The attacks are generated from the course
package (tests/grading_submissions/laundering.py): one per call site in ``utils/`` that reaches a
reference of the chapter, plus the import, alias, getattr, ``.reference``, closure and copy cheats
for every graded exercise; each runs in a fresh process per chapter, with the tripwire installed
as in a submission's sandbox and the student's function called under the runner's mark. The same
references called outside a graded call (a demo cell) leave no note. Coverage: every graded
exercise of every chapter (each Exercise record, each ``check.NAME(...)`` in the solutions' graded
cells) is declared in its checks module's EXERCISES and wired.

The sandboxed end-to-end runs (an attack through the course's own classes, scored 0 and flagged;
an honest notebook using the same helpers outside graded calls at full marks) are marked slow.
"""
from __future__ import annotations

import ast
import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import grading_submissions as subs
import nbformat
import pytest

from utils.course import CHAPTERS
from utils.paths import REPO

CHAPTER_NUMBERS = [ch.number for ch in CHAPTERS]
LAUNDERING = REPO / "tests" / "grading_submissions" / "laundering.py"
# At least these call sites must be found (the examples); the scan finds every other one.
KNOWN_SITES = {
    "00": {("utils.models.transformer", "HookedTinyTransformer.forward")},
    "02": {("utils.circuits.widgets", "_head_circuits"), ("utils.circuits.experiments", "neutral_tokens")},
    "04": {("utils.superposition.model", "ToyModel.forward"), ("utils.superposition.model", "ToyModel.generate_batch"),
           ("utils.superposition.training", "train.data")},
    "05": {("utils.sae.metrics", "ce_loss_recovered_from")},
    "06": {("utils.features.dashboard", "feature_logit_weights")},
    "07": {("utils.attribution.influence", "influence_matrix")},
}


@pytest.fixture(scope="module")
def reports() -> dict:
    """The laundering report of every chapter, each from a fresh process (two at a time)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    out = {}
    pending = list(CHAPTER_NUMBERS)
    while pending:
        batch, pending = pending[:2], pending[2:]
        procs = {n: subprocess.Popen([sys.executable, str(LAUNDERING), n], cwd=REPO, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in batch}
        for n, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=600)
            assert proc.returncode == 0, stderr[-3000:]
            out[n] = json.loads(stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("chapter", CHAPTER_NUMBERS)
def test_every_call_site_that_reaches_a_reference_is_tainted(reports, chapter):
    sites = reports[chapter]["sites"]
    found = {(s["module"], s["function"]) for s in sites}
    assert KNOWN_SITES.get(chapter, set()) <= found, (KNOWN_SITES[chapter] - found)
    for site in sites:
        assert site.get("wired") and site["exercise"] in site["used"], site


@pytest.mark.parametrize("chapter", CHAPTER_NUMBERS)
def test_every_classic_cheat_is_tainted_on_every_exercise(reports, chapter):
    cheats = reports[chapter]["cheats"]
    kinds = {c["attack"].split()[0] for c in cheats}
    assert {"import", "alias", "getattr", "closure", "copy", "check"} <= kinds or chapter == "04", kinds
    for cheat in cheats:
        assert cheat["exercise"] in cheat["used"], cheat
    assert all(reports[chapter]["wired"].values()), reports[chapter]["wired"]


@pytest.mark.parametrize("chapter", CHAPTER_NUMBERS)
def test_references_outside_graded_calls_leave_no_note(reports, chapter):
    assert reports[chapter]["honest_notes"] == []


def test_the_attack_catalogue_covers_every_chapter(reports):
    """The numbers the report quotes: call sites per chapter (about forty in the package)."""
    sites = {n: len(r["sites"]) for n, r in reports.items()}
    assert sum(sites.values()) >= 20 and all(sites[n] for n in ("00", "02", "03", "04", "05", "06")), sites


def _graded_check_calls(chapter) -> set[str]:
    """``check.NAME(...)`` in the solution notebook's graded test cells."""
    (path,) = (REPO / "solutions").glob(f"{chapter.number}_*/*.ipynb")
    names = set()
    for cell in nbformat.read(path, as_version=4).cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade") or meta.get("solution"):
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name) and node.func.value.id == "check":
                names.add(node.func.attr)
    return names


@pytest.mark.parametrize("chapter", CHAPTERS, ids=CHAPTER_NUMBERS)
def test_every_graded_exercise_is_declared_and_covered(chapter):
    """Each graded exercise of the chapter (its Exercise records anywhere in utils.checks, the
    solutions' graded check calls) is declared in EXERCISES (a tuple), resolves to its records and
    has references the tripwire wraps."""
    from utils.checks.core import Exercise
    from utils.grading import tripwire

    face = importlib.import_module(chapter.checks)
    assert isinstance(face.EXERCISES, tuple), f"{chapter.checks}.EXERCISES must be one tuple"
    graded = set(tripwire.graded_exercises(chapter.checks))
    questions = {n for n in face.EXERCISES if tripwire.is_question(getattr(face, n, None))}
    records = {v.name for name, mod in list(sys.modules.items()) if name.startswith("utils.checks.")
               for v in vars(mod).values() if isinstance(v, Exercise) and v.chapter == chapter.number}
    assert records <= graded, f"Exercise records not declared in {chapter.checks}.EXERCISES: {records - graded}"
    calls = _graded_check_calls(chapter)
    assert calls <= graded | questions, f"graded check calls not declared: {calls - graded - questions}"
    refs = tripwire.references(chapter.checks)
    assert set(refs) == graded and all(refs.values()), {n: len(f) for n, f in refs.items()}


def test_an_undeclared_or_unresolvable_exercise_is_an_error_not_a_gap(monkeypatch):
    from utils.checks import ch04
    from utils.grading import tripwire

    monkeypatch.setattr(ch04, "EXERCISES", ch04.EXERCISES + ("no_such_exercise",))
    with pytest.raises(LookupError, match="no_such_exercise"):
        tripwire.references("utils.checks.ch04")
    monkeypatch.setattr(ch04, "EXERCISES", list(ch04.EXERCISES[:-1]) + ["no_such"])
    monkeypatch.setattr(ch04, "no_such", ch04.toy_forward, raising=False)
    with pytest.raises(LookupError, match="no Exercise record named 'no_such'"):
        tripwire.references("utils.checks.ch04")
    # Deleting a re-export of a record from the face does not switch detection off: records are
    # found where the check is defined.
    monkeypatch.delattr(ch04, "TOY_FORWARD")
    monkeypatch.setattr(ch04, "EXERCISES", ("toy_forward",))
    assert tripwire.references("utils.checks.ch04")["toy_forward"]


def test_the_mark_is_not_a_module_global():
    """A submission importing the tripwire module finds no switch to turn it off."""
    from utils.grading import tripwire

    assert not any(isinstance(v, (bool, set)) for k, v in vars(tripwire).items() if not k.startswith("__"))


def test_a_hidden_failure_names_no_hidden_test():
    from utils.grading.grade import _unnamed

    assert _unnamed("head_output (case 3 of 5): You forgot the bias.") == "You forgot the bias."
    assert _unnamed("head_output: your function raised SystemExit: 3") == "your function raised SystemExit: 3"


# --------------------------------------------------------------------------- sandboxed, end to end

LIMITS = ["--timeout-cell", "30", "--timeout-total", "180", "--memory-mb", "1024"]


def _grade(root: Path, chapter: str, out: Path, *extra: str) -> dict:
    from utils.grading.sandbox import namespaces_available

    sandbox = os.environ.get("DEMYSTIFY_TEST_SANDBOX") or ("namespace" if namespaces_available() else "basic")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "utils.grading", str(root), "--chapter", chapter, "--out", str(out),
                           "--jobs", "2", *LIMITS, "--sandbox", sandbox, *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(out, newline="") as f:
        return {r["student"]: r for r in csv.DictReader(f)}


CH04_LAUNDERED = {  # the attacks: thin calls into the chapter's own model class
    "toy_forward_solution": "import torch\nfrom utils.superposition.model import ToyConfig, ToyModel\n"
                            "def toy_forward(W, b, x):\n"
                            "    m = ToyModel(ToyConfig(n_features=W.shape[2], d_hidden=W.shape[1], "
                            "n_instances=W.shape[0]))\n"
                            "    m.W.data, m.b.data = W, b\n"
                            "    return m(x)\n",
}
CH00_LAUNDERED = "from utils.models.transformer import lm_cross_entropy as _l\n" \
                 "def per_token_loss(logits, tokens):\n    return _l(logits, tokens, per_token=True)\n"


@pytest.mark.slow
def test_laundered_references_score_zero_and_honest_helpers_keep_full_marks(tmp_path):
    """Chapter 00 (its reference lives in utils.models) and chapter 04 (through ToyModel)."""
    root, out = tmp_path / "submitted", tmp_path / "grades.csv"
    subs.write(root, "00_orientation", "honest", subs.trim(subs.correct("00_orientation")))
    cheat = subs.trim(subs.correct("00_orientation"))
    subs.set_cell(cheat, subs.PER_TOKEN_LOSS, CH00_LAUNDERED)
    subs.write(root, "00_orientation", "laundered", cheat)
    helper = subs.trim(subs.correct("00_orientation"))
    subs.insert_after(helper, subs.PER_TOKEN_LOSS, "from utils.models.transformer import lm_cross_entropy\n"
                      "import torch\n_ = lm_cross_entropy(torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5)))\n")
    subs.write(root, "00_orientation", "helper_outside", helper)
    rows = _grade(root, "00", out)
    assert rows["honest"]["total"] == rows["helper_outside"]["total"] == "7", rows
    assert rows["honest"]["flags"] == rows["helper_outside"]["flags"] == ""
    assert rows["laundered"]["per_token_loss_check"] == "0"
    assert "used reference: per_token_loss" in rows["laundered"]["flags"]

    slug = "04_superposition"
    root4, out4 = tmp_path / "submitted4", tmp_path / "grades4.csv"
    subs.write(root4, slug, "honest", subs.trim(subs.correct(slug)))
    cheat = subs.trim(subs.correct(slug))
    for grade_id, source in CH04_LAUNDERED.items():
        subs.set_cell(cheat, grade_id, source)
    subs.write(root4, slug, "laundered", cheat)
    rows = _grade(root4, "04", out4)
    assert rows["honest"]["total"] == rows["honest"]["max_total"] and rows["honest"]["flags"] == "", rows["honest"]
    assert "used reference: toy_forward" in rows["laundered"]["flags"], rows["laundered"]["flags"]


@pytest.mark.slow
def test_base_exceptions_and_long_errors_cost_only_their_own_function(tmp_path):
    """SystemExit, a BaseException subclass, a KeyboardInterrupt raised by the student's own
    function, exceptions whose message cannot be read, and many long errors: each costs only the
    function (or cell) that raised it. No hidden test is named in the feedback."""
    slug = "01_tensorized_attention"
    root, out, fb = tmp_path / "submitted", tmp_path / "grades.csv", tmp_path / "feedback"

    def source(nb, gid):
        return next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == gid)

    nb = subs.trim(subs.correct(slug))
    subs.set_cell(nb, "head_output_solution", source(nb, "head_output_solution")
                  + "\ndef head_output(*a, **k):\n    raise SystemExit(3)\n")
    subs.set_cell(nb, "path_logits_solution", source(nb, "path_logits_solution")
                  + "\nclass Boom(BaseException):\n    def __str__(self):\n        raise SystemExit('no')\n"
                  "def path_logits(*a, **k):\n    raise Boom()\n")
    subs.set_cell(nb, "virtual_weight_solution", source(nb, "virtual_weight_solution")
                  + "\ndef virtual_weight(*a, **k):\n    raise KeyboardInterrupt\n")
    subs.insert_after(nb, "attention_pattern_solution", "def _f():\n    raise SystemExit('bye')\n_f()\n")
    subs.insert_after(nb, "attention_pattern_solution",
                      "class B2(BaseException):\n    def __str__(self):\n        raise SystemExit\nraise B2()\n")
    subs.write(root, slug, "base_exceptions", nb)
    nb = subs.trim(subs.correct(slug))
    for _ in range(40):
        subs.insert_after(nb, None, f"raise ValueError('{'long error ' * 5000}')\n")
    subs.insert_after(nb, "attention_pattern_solution", "raise ValueError('x' * 1_000_000)\n")
    subs.write(root, slug, "long_errors", nb)
    rows = _grade(root, "01", out, "--feedback", str(fb))
    assert rows["long_errors"]["total"] == "20", rows["long_errors"]
    row = rows["base_exceptions"]
    lost = {k: v for k, v in row.items() if k.endswith("_check") and v == "0"}
    assert set(lost) == {"head_output_check", "path_logits_check", "virtual_weight_check"}, row
    assert row["total"] == "14" and "timeout" not in row["flags"], row
    assert "raised KeyboardInterrupt" in row["virtual_weight_check message"]
    for path in fb.glob("*.md"):
        text = path.read_text()
        assert "hidden tests: head_output" not in text and "hidden tests: path_logits" not in text, text
