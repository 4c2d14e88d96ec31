"""The sandboxed grader (python -m utils.grading): honest submissions get exactly their points, and
every adversarial submission of issue 9 is graded correctly (no false pass), without touching the
honest ones' grades or files, and the batch completes.

Most submissions are chapter 00 (fast), built at test time from the committed chapter
(tests/grading_submissions). The big batch runs once per module through the real command line
with tight limits; the other tests read its gradebook and feedback. Every test that grades real
submissions (sandboxed processes, seconds to a minute each) is marked slow.
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import grading_submissions as subs
import nbformat
import pytest
import torch

from utils.checks import core
from utils.grading import codec
from utils.grading.batch import Gradebook, columns, discover
from utils.grading.cli import main as cli_main
from utils.grading.plan import PlanError, build_plan, parse_test_cell
from utils.grading.sandbox import namespaces_available
from utils.paths import REPO

SLUG = "00_orientation"
# DEMYSTIFY_TEST_SANDBOX=basic runs everything as on a machine without user namespaces.
LIMITS = ["--timeout-cell", "15", "--timeout-total", "90", "--memory-mb", "1024",
          "--sandbox", os.environ.get("DEMYSTIFY_TEST_SANDBOX") or ("namespace" if namespaces_available() else "basic")]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")


trim = subs.trim


def _grade(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "utils.grading", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["student"]: r for r in csv.DictReader(f)}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """All chapter-00 submissions graded in one batch, 2 at a time."""
    tmp = tmp_path_factory.mktemp("grading")
    root, out, feedback = tmp / "submitted", tmp / "grades.csv", tmp / "feedback"
    paths = subs.build_ch00(root, out, feedback, slim=trim)
    wrong = subs.correct("01_tensorized_attention")
    paths["wrong_chapter"] = subs.write(root, SLUG, "wrong_chapter", wrong)
    before = _digest(root)
    done = _grade(str(root), "--chapter", "00", "--out", str(out), "--feedback", str(feedback), "--jobs", "2",
                  *LIMITS)
    return dict(root=root, out=out, feedback=feedback, paths=paths, before=before, done=done, rows=_rows(out))


def _row(batch, name):
    assert batch["done"].returncode == 0, batch["done"].stdout + batch["done"].stderr
    return batch["rows"][name]


def _flags(row) -> str:
    return row["flags"]


# --------------------------------------------------------------------------- honest submissions


@pytest.mark.slow
def test_batch_completes_with_one_row_each(batch):
    assert batch["done"].returncode == 0, batch["done"].stdout + batch["done"].stderr
    assert set(batch["rows"]) == set(batch["paths"])
    assert all(r["status"] in ("graded", "invalid") for r in batch["rows"].values())
    assert "sandbox" in batch["done"].stdout


@pytest.mark.slow
def test_correct_submission_gets_full_marks(batch):
    row = _row(batch, "honest_correct")
    assert (row["status"], row["total"], row["max_total"]) == ("graded", "7", "7")
    assert (row["per_token_loss_check"], row["per_token_loss_check cases"]) == ("2", "9/9")
    assert (row["hook_question_check"], row["flags"]) == ("1", "")


@pytest.mark.slow
def test_partly_wrong_points_are_exact(batch):
    """2 points shared by the 9 cases, lost on batches of exactly 2; the hook answer is wrong."""
    plan = build_plan("00")
    cell = next(c for c in plan.cells if c.grade_id == "per_token_loss_check")
    batches = [plan.requests[k].kwargs["logits"].shape[0] for call in cell.calls for k in call.requests]
    ok = sum(b != 2 for b in batches)
    assert 0 < ok < len(batches) == 9  # the seeds do exercise both branches
    row = _row(batch, "honest_partly_wrong")
    assert row["per_token_loss_check cases"] == f"{ok}/9"
    assert float(row["per_token_loss_check"]) == pytest.approx(round(2 * ok / 9, 2))
    # and the wrong hook answer: 0; the two hook exercises (2 + 2 points) are right
    assert float(row["total"]) == pytest.approx(round(2 * ok / 9, 2) + 4)
    assert "hook_attn_scores holds the scaled" in row["hook_question_check message"]
    assert "differs from the expected one" in row["per_token_loss_check message"]


@pytest.mark.slow
def test_stub_submission_gets_zero(batch):
    row = _row(batch, "honest_stub")
    assert row["total"] == "0" and "not implemented yet" in row["per_token_loss_check message"]
    assert row["flags"] == ""


# --------------------------------------------------------------------------- the adversarial set


@pytest.mark.slow
def test_infinite_loop_is_stopped(batch):
    row = _row(batch, "infinite_loop")
    assert row["total"] == "0" and "timeout" in _flags(row)


@pytest.mark.slow
def test_memory_bomb_is_stopped(batch):
    row = _row(batch, "memory_bomb")
    assert row["total"] == "0" and "memory" in _flags(row)


@pytest.mark.slow
def test_os_exit_is_a_crash(batch):
    row = _row(batch, "os_exit")
    assert row["total"] == "0" and "crashed" in _flags(row)


@pytest.mark.slow
def test_raising_in_every_cell(batch):
    row = _row(batch, "raises_everywhere")
    assert (row["status"], row["total"]) == ("graded", "0")
    assert "not defined in your notebook" in row["per_token_loss_check message"]
    text = (batch["feedback"] / "raises_everywhere.md").read_text()
    assert "raised RuntimeError: every cell fails" in text


@pytest.mark.slow
def test_bad_files_are_invalid_with_a_reason(batch):
    assert _row(batch, "malformed_json")["status"] == "invalid"
    assert "malformed JSON" in _row(batch, "malformed_json")["error"]
    assert "not a notebook" in _row(batch, "not_a_notebook")["error"]
    row = _row(batch, "wrong_chapter")
    assert row["status"] == "invalid" and "01_tensorized_attention" in row["error"] and row["total"] == "0"


@pytest.mark.slow
def test_edited_locked_test_cells(batch):
    row = _row(batch, "edited_tests")
    assert (row["total"], row["max_total"]) == ("0", "7")  # trusted tests and points, not the student's
    assert "test cell per_token_loss_check edited" in _flags(row)
    assert "test cell hook_question_check edited" in _flags(row)


@pytest.mark.slow
def test_deleted_test_cells(batch):
    row = _row(batch, "deleted_tests")
    assert row["total"] == "0" and "test cell per_token_loss_check deleted" in _flags(row)


@pytest.mark.slow
def test_stripped_metadata_is_flagged_and_graded_by_name(batch):
    row = _row(batch, "stripped_metadata")
    assert row["total"] == "7" and "nbgrader metadata stripped" in _flags(row)


@pytest.mark.slow
def test_rebinding_a_check_has_no_effect(batch):
    row = _row(batch, "rebound_check")
    assert row["total"] == "0" and "rebinds a check (check.per_token_loss)" in _flags(row)
    assert "core.run_check" in _flags(row)


@pytest.mark.slow
def test_spoofed_utils_next_to_the_notebook_is_ignored(batch):
    row = _row(batch, "spoofed_utils")
    assert row["total"] == "0" and "not implemented yet" in row["per_token_loss_check message"]
    assert "ignored file next to the notebook: utils/" in _flags(row)


@pytest.mark.slow
def test_writing_into_other_submissions_fails(batch):
    row = _row(batch, "tamper_others")
    assert row["total"] == "0" and "sandbox refused" in _flags(row)
    after = _digest(batch["root"])
    if row["sandbox"] == "basic":  # no namespaces: run by an ordinary user, a native extension's write
        after = {k: v for k, v in after.items() if k in batch["before"]}  # gets through; notebooks are put back
    assert after == batch["before"], "a submission changed files under SUBMISSIONS"
    assert not (batch["root"] / "intruder").exists()
    assert _row(batch, "honest_correct")["total"] == "7"
    assert "7 / 7" in (batch["feedback"] / "honest_correct.md").read_text()
    assert batch["out"].read_text().count("\nhonest_correct,") == 1


@pytest.mark.slow
def test_reading_the_expected_outputs_gets_nothing(batch):
    row = _row(batch, "reads_expected")
    assert row["total"] == "0" and "sandbox refused" in _flags(row)
    assert "gc.get_objects" in _flags(row)


@pytest.mark.slow
def test_non_tensor_output_is_flagged(batch):
    row = _row(batch, "non_tensor_output")
    assert (row["total"], row["per_token_loss_check flags"]) == ("5", "non-tensor output")
    assert "should be a torch.Tensor, but it is a ndarray" in row["per_token_loss_check message"]


@pytest.mark.slow
def test_a_function_that_never_returns_times_out(batch):
    row = _row(batch, "slow_function")
    assert (row["total"], row["hook_question_check"]) == ("5", "1")  # the rest of the notebook still counts
    assert "did not return within 15 s" in row["per_token_loss_check message"]
    assert "timeout" in _flags(row)


@pytest.mark.slow
def test_feedback_never_shows_hidden_test_source(batch):
    files = sorted(batch["feedback"].glob("*.md"))
    assert len(files) == len(batch["paths"])
    trusted = nbformat.read(REPO / "solutions" / SLUG / f"{SLUG}.ipynb", as_version=4)
    hidden_lines = [line for c in trusted.cells for line in c.source.splitlines() if "cases=[" in line]
    assert hidden_lines
    for path in files:
        text = path.read_text()
        assert "HIDDEN TESTS" not in text and "cases=" not in text and "check." not in text
        assert not any(line.strip() in text for line in hidden_lines)


# --------------------------------------------------------------------------- the gradebook


@pytest.mark.slow
def test_rerun_skips_unchanged_and_replaces_changed(batch, tmp_path):
    """Same gradebook, two of the batch's students: both unchanged (skipped, rows kept), then one
    resubmits a fixed notebook (regraded, its row replaced); other students' rows stay."""
    root = tmp_path / "submitted"
    for name in ("honest_correct", "malformed_json"):
        subs.write(root, SLUG, name, raw=batch["paths"][name].read_bytes())
    out = tmp_path / "grades.csv"
    out.write_bytes(batch["out"].read_bytes())
    rows = _rows(out)
    again = _grade(str(root), "--chapter", "00", "--out", str(out), "--jobs", "1", *LIMITS)
    assert again.returncode == 0, again.stderr
    assert "unchanged, kept from the gradebook: 2" in again.stdout and _rows(out) == rows
    nb = trim(subs.correct(SLUG))
    subs.set_cell(nb, subs.HOOK_ANSWER, f'answer_hook = "{subs.wrong_answer("00", "hook_question")}"\n')
    subs.write(root, SLUG, "malformed_json", nb)  # a fixed resubmission
    third = _grade(str(root), "--chapter", "00", "--out", str(out), "--jobs", "1", *LIMITS)
    assert third.returncode == 0 and "kept from the gradebook: 1" in third.stdout
    new = _rows(out)
    assert set(new) == set(rows) and new["honest_correct"] == rows["honest_correct"]
    assert (new["malformed_json"]["status"], new["malformed_json"]["total"]) == ("graded", "6")
    assert out.read_text().count("\n") == len(rows) + 1  # compacted: header + one row per student


def test_gradebook_survives_a_crash_mid_write(tmp_path):
    plan = build_plan("00")
    cols = columns(plan)
    path = tmp_path / "grades.csv"
    book = Gradebook(path, cols)
    book.append(dict.fromkeys(cols, "") | {"student": "a", "status": "graded", "sha256": "x"})
    book.file.close()
    with open(path, "a") as f:
        f.write("b,graded,1,3,")  # the process died inside this write
    reopened = Gradebook(path, cols)
    assert set(reopened.previous) == {"a"}
    reopened.append(dict.fromkeys(cols, "") | {"student": "c", "status": "graded"})
    reopened.compact()
    assert list(_rows(path)) == ["a", "c"]
    with pytest.raises(Exception, match="another chapter"):
        Gradebook(path, cols[:-1])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["missing", "empty", "text_file", "chapter"])
def test_bad_input_gets_a_clear_error(case, tmp_path, capsys):
    target = tmp_path / "subs"
    chapter = "00"
    expect = {"missing": "no such file", "empty": "no notebooks found", "text_file": "not a notebook",
              "chapter": "unknown chapter"}[case]
    if case == "empty":
        target.mkdir()
    elif case == "text_file":
        target = tmp_path / "grades.txt"
        target.write_text("hello")
    elif case == "chapter":
        target.mkdir()
        chapter = "99"
    code = cli_main([str(target), "--chapter", chapter, "--out", str(tmp_path / "g.csv")])
    assert code == 2 and expect in capsys.readouterr().err


def test_discover_layouts(tmp_path):
    subs.write(tmp_path / "a", SLUG, "alice", raw=b"{}")  # nbgrader: <student>/<assignment>/<nb>
    (tmp_path / "a" / "bob.ipynb").write_bytes(b"{}")  # flat
    (tmp_path / "a" / "carol").mkdir()
    (tmp_path / "a" / "carol" / "x.ipynb").write_bytes(b"{}")
    (tmp_path / "a" / "carol" / "y.ipynb").write_bytes(b"{}")
    found = {s.student: s for s in discover(tmp_path / "a", SLUG)}
    assert set(found) == {"alice", "bob", "carol"}
    assert found["alice"].data == b"{}" and not found["alice"].problem
    assert "several notebooks" in found["carol"].problem


# --------------------------------------------------------------------------- the pieces


SLOW_TO_PLAN = {"05_sparse_autoencoders"}  # its feature-recovery cases come from a toy model trained while planning


@pytest.mark.parametrize("notebook", [
    pytest.param(p, marks=pytest.mark.slow) if p.parent.name in SLOW_TO_PLAN else p
    for p in sorted((REPO / "solutions").glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb"))], ids=lambda p: p.parent.name)
def test_every_graded_cell_is_gradable(notebook):
    """The contract in utils/checks/core.py: every chapter's graded cells can be planned."""
    plan = build_plan(notebook.parent.name)
    assert plan.cells and plan.max_points > 0
    for cell in plan.cells:
        for call in cell.calls:
            assert call.kind in ("function", "choice") and call.n_cases == len(call.requests)


def test_plan_refuses_cells_it_cannot_grade():
    aliases = {"check": "utils.checks.ch00"}
    with pytest.raises(PlanError, match="not a check call"):
        parse_test_cell("assert per_token_loss(1) == 2", aliases, "cell")
    with pytest.raises(PlanError, match="not a literal"):
        parse_test_cell("check.per_token_loss(per_token_loss, cases=seeds)", aliases, "cell")
    calls = parse_test_cell("check.a(f)\n### BEGIN HIDDEN TESTS\ncheck.a(f, cases=[1, 2])\n### END HIDDEN TESTS",
                            aliases, "cell")
    assert [(c.hidden, c.kwargs) for _, c in calls] == [(False, {}), (True, {"cases": [1, 2]})]


def test_plan_refuses_question_cells_that_would_leak_or_share_their_answer(tmp_path):
    """A key outside the hidden markers would be released; a key-less question cell scores nothing;
    two questions graded from one variable would both read its last value."""
    import shutil

    from utils.grading.plan import build_plan

    def plan_with(edit):
        solutions = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        shutil.copytree(REPO / "solutions" / SLUG, solutions / SLUG)
        path = solutions / SLUG / f"{SLUG}.ipynb"
        nb = nbformat.read(path, 4)
        cell = next(c for c in nb.cells if c.source.startswith("check.hook_question("))
        edit(nb, cell)
        nbformat.write(nb, path)
        return build_plan("00", solutions)

    key = subs.bank_answer("00", "hook_question")
    with pytest.raises(PlanError, match="outside the HIDDEN TESTS markers"):
        plan_with(lambda nb, c: setattr(c, "source", f'check.hook_question(answer_hook, key="{key}")'))
    with pytest.raises(PlanError, match="nothing in this cell is scored"):
        plan_with(lambda nb, c: setattr(c, "source", "check.hook_question(answer_hook)"))

    def second_question_on_the_same_variable(nb, cell):
        twin = copy.deepcopy(cell)
        twin.id, twin.metadata["nbgrader"]["grade_id"] = "twin", "hook_question_twin"
        nb.cells.append(twin)

    with pytest.raises(PlanError, match="both grade the variable 'answer_hook'"):  # ch03 had it: 3 x `answer`
        plan_with(second_question_on_the_same_variable)


def test_the_plans_checks_module_is_the_chapters_face_whatever_else_the_notebook_binds(tmp_path):
    """A notebook may import a part of its checks under a second alias (chapter 05 reads its training
    constants from utils.checks.ch05_training); the plan's module, which the sandbox installs the
    tripwire from, stays the chapter's face module."""
    import shutil

    from utils.grading.plan import build_plan

    solutions = tmp_path / "s"
    shutil.copytree(REPO / "solutions" / SLUG, solutions / SLUG)
    path = solutions / SLUG / f"{SLUG}.ipynb"
    nb = nbformat.read(path, 4)
    first_code = next(c for c in nb.cells if c.cell_type == "code" and "import" in c.source)
    first_code.source += "\nfrom utils.checks import ch05_training as sae_training\nimport utils.checks.ch03 as other\n"
    nbformat.write(nb, path)
    plan = build_plan("00", solutions)
    assert plan.module == "utils.checks.ch00" == build_plan("00").module


def test_codec_sends_complex_tensors_exactly():
    for dtype in (torch.complex64, torch.complex128):
        value = {"eig": torch.randn(3, 5, dtype=dtype)}
        tensors = {}
        tree = codec.encode(value, tensors)
        back = codec.decode(tree, codec.tensors_from_bytes(codec.tensors_to_bytes(tensors)))
        assert back["eig"].dtype == dtype and torch.equal(back["eig"], value["eig"])
    with pytest.raises(codec.CodecError):
        codec.decode({"complex": [{"tensor": "a"}]}, {"a": torch.zeros(2)})


def test_codec_round_trip_and_refusals():
    from transformer_lens import FactoredMatrix

    value = (torch.arange(6.0).view(2, 3), [1, 2.5, float("nan"), "x", None, True],
             {"k": torch.ones(2, dtype=torch.int64)}, FactoredMatrix(torch.ones(3, 2), torch.ones(2, 4)))
    tensors: dict = {}
    tree = codec.encode(value, tensors)
    back = codec.decode(json.loads(json.dumps(tree)), codec.tensors_from_bytes(codec.tensors_to_bytes(tensors)))
    assert torch.equal(back[0], value[0]) and torch.equal(back[2]["k"], value[2]["k"])
    assert isinstance(back[3], FactoredMatrix) and torch.equal(back[3].AB, value[3].AB)
    assert back[1][:2] == [1, 2.5] and back[1][3:] == ["x", None, True]
    import numpy as np

    opaque = codec.decode(codec.encode(np.zeros(3), {}), {})
    assert codec.is_opaque(opaque) and type(opaque).__name__ == "ndarray"
    for bad in ({"tensor": "t9"}, {"pickle": "..."}, {"a": 1, "b": 2}, [1, 2]):
        with pytest.raises(codec.CodecError):
            codec.decode(bad, {})


def test_grading_session_scores_every_case_quietly(capsys, isolated_progress):
    from utils.checks import ch00

    def half_right(logits, tokens):
        right = ch00._reference(logits, tokens)
        return right if logits.shape[0] != 2 else right + 1

    with core.grading_session("grade") as session:
        with pytest.raises(core.CheckFailure):
            ch00.per_token_loss(half_right, cases=[1, 2, 3, 4, 5, 6])
    assert len(session.outcomes) == 6 and 0 < sum(o.passed for o in session.outcomes) < 6
    assert capsys.readouterr().out == "" and not isolated_progress.exists()
    ch00.per_token_loss(ch00._reference, cases=[1])  # outside a session: unchanged behaviour
    assert "PASS" in capsys.readouterr().out


def test_auto_refuses_to_fall_back_to_the_basic_sandbox(monkeypatch):
    from utils.grading import sandbox

    monkeypatch.setattr(sandbox, "namespaces_available", lambda: False)
    for choice in ("auto", "namespace"):
        with pytest.raises(RuntimeError, match="not available here .*pass --sandbox basic"):
            sandbox.resolve_sandbox(choice)
    assert sandbox.resolve_sandbox("basic") == "basic"
    monkeypatch.setattr(sandbox, "namespaces_available", lambda: True)
    assert sandbox.resolve_sandbox("auto") == "namespace"


def test_a_hidden_case_failure_quotes_no_expected_value():
    from utils.checks import ch00, ch05

    def off(logits, tokens):
        return ch00._reference(logits, tokens) + 0.5

    messages = {}
    for hidden in (False, True):
        with core.grading_session("grade") as session:
            session.withhold_values = hidden
            with pytest.raises(core.CheckFailure) as info:
                ch00.per_token_loss(off, cases=[3])
        messages[hidden] = str(info.value)
    assert "max abs error 0.5" in messages[True] and "expected" in messages[False]
    assert "got " not in messages[True] and "expected " not in messages[True].replace("expected one", "")
    def two_steps(points):  # Weiszfeld stopped early: better than the mean, not yet the median
        y = points.mean(0)
        for _ in range(2):
            w = 1 / (points - y).norm(dim=1).clamp_min(1e-12)
            y = (w[:, None] * points).sum(0) / w.sum()
        return y

    with core.grading_session("grade") as session:  # a chapter's own describer respects it too
        session.withhold_values = True
        with pytest.raises(core.CheckFailure) as info:
            ch05.geometric_median(two_steps, cases=[3])
    assert "(relative) above the median's" in str(info.value) and "at your point" not in str(info.value)


# --------------------------------------------------------------------------- other sandboxes, other chapters


@pytest.mark.slow
@pytest.mark.skipif(not namespaces_available(), reason="compares with the namespace sandbox")
def test_basic_sandbox_still_protects_grades(tmp_path):
    """Without namespaces (some CI machines), the audit hook and the snapshot still hold."""
    root, out, fb = tmp_path / "submitted", tmp_path / "grades.csv", tmp_path / "feedback"
    subs.write(root, SLUG, "honest_correct", trim(subs.correct(SLUG)))
    nb = trim(subs.chapter(SLUG))
    subs.insert_after(nb, None, subs.tamper_others(str(root), str(out), str(fb)))
    subs.write(root, SLUG, "tamper_others", nb)
    before = _digest(root / "honest_correct")
    done = _grade(str(root), "--chapter", "00", "--out", str(out), "--feedback", str(fb), "--jobs", "2",
                  *LIMITS, "--sandbox", "basic")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(out)
    assert rows["honest_correct"]["total"] == "7" and rows["tamper_others"]["total"] == "0"
    assert "sandbox refused" in rows["tamper_others"]["flags"] and rows["honest_correct"]["sandbox"] == "basic"
    # Python-level writes are refused; a native extension writing files directly is stopped by the
    # namespace sandbox, or here by the unprivileged user a root grader runs it as (as an ordinary
    # user, the notebook is put back after the batch: tests/test_grading_basic.py), so only the
    # notebook itself is compared here.
    assert _digest(root / "honest_correct")[f"{SLUG}/{SLUG}.ipynb"] == before[f"{SLUG}/{SLUG}.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("slug", [p.parent.name for p in sorted((REPO / "solutions").glob("[0-9][0-9]_*/*.ipynb"))
                                  if p.parent.name[:2] not in ("00", "01")])
def test_later_chapters_give_their_solutions_full_marks(slug, tmp_path):
    """Chapters written after the grader work with it unchanged (ch02's checks take FactoredMatrix
    outputs, ch04's run the student's generator under a seed): solutions full marks, stubs zero."""
    root, out = tmp_path / "submitted", tmp_path / "grades.csv"
    subs.write(root, slug, "correct", trim(subs.correct(slug)))
    subs.write(root, slug, "stub", trim(subs.chapter(slug)))
    # The grader's own limits (120 s a cell, 600 s a submission, 4 GB), not LIMITS' short ones: chapter 05's
    # check trains the student's SAE loop and chapter 03's ablates heads on held-out text.
    done = _grade(str(root), "--chapter", slug[:2], "--out", str(out), "--jobs", "2", "--sandbox", LIMITS[-1])
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(out)
    assert rows["correct"]["total"] == rows["correct"]["max_total"], rows["correct"]
    assert rows["correct"]["flags"] == "" and rows["stub"]["total"] == "0"


@pytest.mark.slow
def test_chapter_01_generalises(tmp_path):
    slug = "01_tensorized_attention"
    root, out = tmp_path / "submitted", tmp_path / "grades.csv"
    subs.write(root, slug, "correct", trim(subs.correct(slug)))
    nb = trim(subs.correct(slug))
    source = next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") ==
                  "attention_pattern_solution")
    subs.set_cell(nb, "attention_pattern_solution", source + "\n\n_right = attention_pattern\n"
                  "def attention_pattern(qk_input, W_Q, W_K, b_Q, b_K):\n"
                  "    q, k = qk_input @ W_Q + b_Q, qk_input @ W_K + b_K\n"
                  "    return (q @ k.transpose(-1, -2) / W_Q.shape[-1] ** 0.5).softmax(-1)\n")
    subs.set_cell(nb, "bias_question_answer", f'answer_bias = "{subs.wrong_answer("01", "bias_question")}"\n')
    subs.write(root, slug, "no_mask", nb)
    done = _grade(str(root), "--chapter", "01", "--out", str(out), "--jobs", "2", *LIMITS)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(out)
    assert rows["correct"]["total"] == rows["correct"]["max_total"] == "20"
    row = rows["no_mask"]
    assert row["total"] == "17" and row["attention_pattern_check"] == "0"
    assert "There is no causal mask" in row["attention_pattern_check message"]
    assert "b_V is not zero in general" in row["bias_question_check message"]


def test_cells_tagged_skip_when_grading_are_not_run():
    """A long demo cell (chapter 05's training) carries the tag; the grader leaves it out and
    runs every other cell, the same source untagged included."""
    from utils.grading.grade import SKIP_TAG, SubmissionGrade, inspect
    nb = trim(subs.correct("00_orientation"))
    slow = "import time\ntime.sleep(10_000)  # a long training run"
    nb.cells.append(nbformat.v4.new_code_cell(slow, metadata={"tags": [SKIP_TAG]}))
    nb.cells.append(nbformat.v4.new_code_cell(slow + "  # untagged"))
    grade = SubmissionGrade("s", "s.ipynb", "0", "00")
    sources = [c["source"] for c in inspect(nb, build_plan("00"), grade)]
    assert slow not in sources and slow + "  # untagged" in sources
    assert grade.flags == []


def test_long_chapter_cells_are_tagged_skip_when_grading():
    """Every chapter cell that trains a model is tagged, so graders never wait on it."""
    from utils.grading.grade import SKIP_TAG
    for path in sorted((REPO / "chapters").glob("[0-9][0-9]_*/*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and "train_sae(" in cell.source:
                assert SKIP_TAG in cell.metadata.get("tags", []), f"{path.name}: {cell.source[:80]}"


@pytest.mark.slow
def test_interrupts_work_when_the_grader_starts_with_sigint_ignored(tmp_path):
    """A grader launched with SIGINT ignored (as some CI runners and harnesses launch children)
    still interrupts a call that never returns, and scores the rest of the notebook."""
    import signal

    root, out = tmp_path / "submitted", tmp_path / "grades.csv"
    nb = trim(subs.correct(SLUG))
    subs.set_cell(nb, subs.PER_TOKEN_LOSS, "def per_token_loss(logits, tokens):\n    while True:\n        pass\n")
    subs.write(root, SLUG, "slow", nb)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "utils.grading", str(root), "--chapter", "00", "--out", str(out),
                           "--jobs", "1", *LIMITS], cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.returncode == 0, done.stdout + done.stderr
    row = _rows(out)["slow"]
    assert (row["total"], row["hook_question_check"]) == ("5", "1"), row
    assert "ignored the interrupt" not in row["flags"]


# --------------------------------------------------------------------------- the course's own references

REFERENCE_CHEATS = {  # grade_id -> a cell that answers with the course's reference, one way each
    "attention_pattern_solution": "from utils.attention import attention_pattern\n",
    "head_output_solution": "import utils.attention as ua\nhead_output = ua.head_output\n",
    "tensor_head_einsum_solution": "import importlib\ntensor_head_einsum = "
                                   "importlib.import_module('utils.attention').tensor_head_einsum\n",
    "tensor_head_kron_solution": "import utils.attention\n"
                                 "tensor_head_kron = getattr(utils.attention, 'tensor_head_' + 'kron')\n",
    "multihead_residual_solution": "import types, utils.attention as ua\n_f = ua.multihead_residual\n"
                                   "multihead_residual = types.FunctionType(_f.__code__, _f.__globals__, 'm', "
                                   "_f.__defaults__, _f.__closure__)\n",
    "path_logits_solution": "from utils.attention import path_logits as _pl\n"
                            "def path_logits(*args, **kwargs):\n    return _pl(*args, **kwargs)\n",
    "read_write_weights_solution": "from utils.checks import ch01 as _c\n"
                                   "read_write_weights = _c.READ_WRITE_WEIGHTS.reference\n",
    "virtual_weight_solution": "import utils.attention as ua\nvirtual_weight = ua.virtual_weight\n"
                               "import inspect\nexec(inspect.getsource(ua.virtual_weight))  # refused: course source\n",
    "compose_heads_solution": "import utils.attention as ua\nns = {}\nexec(open(ua.__file__).read(), ns)\n"
                              "compose_heads = ns['compose_heads']\n",
}
FLAGGED_AS_REFERENCE = ["attention_pattern", "head_output", "tensor_head_einsum", "tensor_head_kron",
                        "multihead_residual", "path_logits", "read_write_weights", "virtual_weight"]


@pytest.mark.slow
def test_answers_from_the_course_references_score_zero_and_are_flagged(tmp_path):
    slug = "01_tensorized_attention"
    root, out = tmp_path / "submitted", tmp_path / "grades.csv"
    subs.write(root, slug, "honest", trim(subs.correct(slug)))
    cheat = trim(subs.correct(slug))
    for grade_id, source in REFERENCE_CHEATS.items():
        subs.set_cell(cheat, grade_id, source)
    subs.write(root, slug, "cheat", cheat)
    # A course helper that calls a reference internally is fine: the honest notebook plus a plot-style call.
    helper = trim(subs.correct(slug))
    subs.insert_after(helper, "attention_pattern_solution",
                      "import utils.attention as ua, torch\n_x = torch.randn(1, 4, 8)\n"
                      "_ = ua.attention_pattern(_x, torch.randn(2, 8, 4), torch.randn(2, 8, 4), torch.zeros(2, 4), "
                      "torch.zeros(2, 4))  # at cell time, outside any graded call\n")
    subs.write(root, slug, "uses_reference_outside_graded_calls", helper)
    done = _grade(str(root), "--chapter", "01", "--out", str(out), "--jobs", "2", *LIMITS)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(out)
    assert rows["honest"]["total"] == rows["honest"]["max_total"] == "20" and rows["honest"]["flags"] == ""
    other = rows["uses_reference_outside_graded_calls"]
    assert other["total"] == "20" and other["flags"] == "", other
    row = rows["cheat"]
    scored = {k: v for k, v in row.items() if k.endswith("_check") and v != "0"}
    assert row["total"] == "3", (scored, row["flags"])  # only the multiple-choice answers
    for name in FLAGGED_AS_REFERENCE:
        assert f"used reference: {name}" in row["flags"], (name, row["flags"])
    assert "read the course's source utils/attention/__init__.py" in row["flags"], row["flags"]
    assert "called the course's reference implementation" in row["attention_pattern_check message"]


ORACLE_CHEAT = """import json, os, pathlib
import utils, utils.checks.ch00 as _c
from utils.checks.core import CheckFailure
found = set()
for _x in "abcd":  # the self-check as an oracle
    try:
        _c.hook_question(_x)
    except CheckFailure:
        continue
    found.add(_x)
_repo = pathlib.Path(utils.__file__).parent.parent
for _bank in list(_repo.glob("*/00_orientation/questions.json")) + [pathlib.Path("questions.json")]:
    try:  # the released bank, the trusted one, one beside the notebook
        found.add(json.loads(_bank.read_text())["questions"]["hook_question"]["answer"])
    except Exception:
        pass
answer_hook = found.pop() if len(found) == 1 else None
print("oracle found", answer_hook)
"""


@pytest.mark.slow
def test_multiple_choice_keys_are_out_of_reach_at_grading_time(tmp_path):
    """The cheat is real (outside the grader it finds the key); under the grader it finds nothing,
    and the score comes from the solution's hidden key."""
    found = {}
    exec(ORACLE_CHEAT, found)
    assert found["answer_hook"] == subs.bank_answer("00", "hook_question")
    root, out = tmp_path / "submitted", tmp_path / "grades.csv"
    nb = trim(subs.correct(SLUG))
    subs.set_cell(nb, subs.HOOK_ANSWER, ORACLE_CHEAT)
    subs.write(root, SLUG, "oracle", nb)
    subs.write(root, SLUG, "honest", trim(subs.correct(SLUG)))
    done = _grade(str(root), "--chapter", "00", "--out", str(out), "--jobs", "1", *LIMITS)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(out)
    assert rows["honest"]["total"] == rows["honest"]["max_total"] == "7"
    assert rows["oracle"]["hook_question_check"] == "0", rows["oracle"]
    assert "set your answer" in rows["oracle"]["hook_question_check message"]


def test_discovery_refuses_links_and_hidden_names_and_flags_copies(tmp_path):
    root = tmp_path / "submitted"
    subs.write(root, SLUG, "alice", trim(subs.correct(SLUG)))
    subs.write(root, SLUG, "bob", trim(subs.correct(SLUG)))  # byte-identical to alice's
    subs.write(root, SLUG, ".carol", trim(subs.correct(SLUG)))  # a hidden folder: listed, not skipped
    (root / "dave").symlink_to(root / "alice")  # a whole folder that is a link
    (root / "erin" / SLUG).mkdir(parents=True)  # a notebook that is a link to the solution
    (root / "erin" / SLUG / f"{SLUG}.ipynb").symlink_to(REPO / "solutions" / SLUG / f"{SLUG}.ipynb")
    (root / ".ipynb_checkpoints").mkdir()  # what Jupyter leaves: skipped quietly
    (root / ".gitignore").write_text("*\n")  # not a submission at all: skipped quietly too
    found = {s.student: s for s in discover(root, SLUG)}
    assert sorted(found) == [".carol", "alice", "bob", "dave", "erin"]
    assert found["alice"].same_as == ["bob"] and found["bob"].same_as == ["alice"] and not found["alice"].problem
    assert "hidden name" in found[".carol"].problem
    assert "symbolic link" in found["dave"].problem and "symbolic link" in found["erin"].problem
    assert found["dave"].data == found["erin"].data == b""  # never read through the link


@pytest.mark.slow
def test_odd_notebooks_and_formula_ids_give_rows_that_say_why(tmp_path):
    root, out = tmp_path / "submitted", tmp_path / "grades.csv"
    subs.write(root, SLUG, "=1+1", trim(subs.correct(SLUG)))  # a spreadsheet formula as a student id
    v3 = nbformat.convert(trim(subs.correct(SLUG)), 3)
    subs.write(root, SLUG, "v3", raw=nbformat.writes(v3, version=3).encode())
    odd = json.loads(nbformat.writes(trim(subs.correct(SLUG))))
    odd["metadata"]["kernelspec"] = "python3"
    odd["cells"][1]["metadata"]["tags"] = 7
    odd["cells"][2]["metadata"]["nbgrader"] = {"grade_id": ["x"], "grade": True}
    subs.write(root, SLUG, "odd_metadata", raw=json.dumps(odd).encode())
    subs.write(root, SLUG, "bare", raw=b'{"cells": [], "nbformat": 4}')
    done = _grade(str(root), "--chapter", "00", "--out", str(out), "--jobs", "1", *LIMITS)
    assert done.returncode == 0, done.stdout + done.stderr
    raw = out.read_text()
    assert "\n'=1+1," in raw  # written so that a spreadsheet shows it as text
    rows = _rows(out)
    assert all(r["status"] != "error" for r in rows.values()), rows
    formula = next(r for student, r in rows.items() if student.endswith("=1+1"))
    assert formula["total"] == formula["max_total"]
    assert rows["v3"]["status"] == "graded" and rows["v3"]["total"] == rows["v3"]["max_total"], rows["v3"]
    assert rows["odd_metadata"]["status"] == "graded", rows["odd_metadata"]
    assert rows["bare"]["status"] == "graded" and rows["bare"]["total"] == "0"
    again = _grade(str(root), "--chapter", "00", "--out", str(out), "--jobs", "1", *LIMITS)  # read back right
    assert "unchanged, kept from the gradebook: 4" in again.stdout, again.stdout


@pytest.mark.slow
def test_feedback_is_not_a_channel_out_of_the_sandbox(tmp_path):
    """A submission that raises long messages (what it read, say) from 30 cells and from its graded
    function gets short quotes and at most a few notes in its feedback."""
    root, out, fb = tmp_path / "submitted", tmp_path / "grades.csv", tmp_path / "feedback"
    nb = trim(subs.correct(SLUG))
    subs.set_cell(nb, subs.PER_TOKEN_LOSS, "def per_token_loss(logits, tokens):\n"
                                           "    raise ValueError('SECRET' * 1000)\n")
    for i in range(30):
        subs.insert_after(nb, None, f"raise RuntimeError('LEAK{i}' + 'x' * 5000)")
    subs.write(root, SLUG, "leaky", nb)
    done = _grade(str(root), "--chapter", "00", "--out", str(out), "--feedback", str(fb), "--jobs", "1", *LIMITS)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (fb / "leaky.md").read_text()
    assert text.count("LEAK") <= 10 and "more notes not shown" in text
    assert text.count("SECRET") <= 200 // 6 + 1 and "more characters" in text
    assert len(text) < 8000, len(text)


# --------------------------------------------------------------------------- shards


@pytest.mark.slow
def test_shards_merge_into_the_single_run_gradebook(tmp_path):
    from utils.grading.batch import RUN_COLUMNS, in_shard

    root = tmp_path / "submitted"
    students = {f"s{i}": (subs.correct(SLUG) if i % 3 else subs.chapter(SLUG)) for i in range(7)}
    for name, nb in students.items():
        subs.write(root, SLUG, name, trim(nb))
    single, one, two, merged = (tmp_path / f"{n}.csv" for n in ("single", "shard1", "shard2", "merged"))
    assert _grade(str(root), "--chapter", "00", "--out", str(single), "--jobs", "2", *LIMITS).returncode == 0
    for i, out in ((1, one), (2, two)):
        done = _grade(str(root), "--chapter", "00", "--out", str(out), "--shard", f"{i}/2", "--jobs", "1", *LIMITS)
        assert done.returncode == 0, done.stdout + done.stderr
    shard_rows = [_rows(one), _rows(two)]
    assert not set(shard_rows[0]) & set(shard_rows[1]) and set(shard_rows[0]) | set(shard_rows[1]) == set(students)
    assert all(in_shard(s, 1, 2) for s in shard_rows[0]) and shard_rows[0] and shard_rows[1]
    done = _grade("merge", "--out", str(merged), str(one), str(two))
    assert done.returncode == 0, done.stderr

    def content(path):
        return [{k: v for k, v in r.items() if k not in RUN_COLUMNS} for r in _rows(path).values()]

    assert content(merged) == content(single)
    assert list(_rows(merged)) == sorted(students)
    assert _rows(merged)["s1"]["total"] == _rows(merged)["s1"]["max_total"] and _rows(merged)["s0"]["total"] == "0"
    # A student graded differently in two shards, and gradebooks of different columns, are refused.
    forged = tmp_path / "forged.csv"
    forged.write_text(one.read_text().replace(f",{_rows(one)[next(iter(_rows(one)))]['total']},", ",99,", 1))
    assert _grade("merge", "--out", str(tmp_path / "x.csv"), str(one), str(forged)).returncode == 2
    other = tmp_path / "other.csv"
    other.write_text("student,total\nz,1\n")
    bad = _grade("merge", "--out", str(tmp_path / "y.csv"), str(one), str(other))
    assert bad.returncode == 2 and "columns differ" in bad.stderr
    bad = _grade(str(root), "--chapter", "00", "--out", str(tmp_path / "z.csv"), "--shard", "3/2")
    assert bad.returncode == 2 and "1 <= I <= N" in bad.stderr


# --------------------------------------------------------------------------- the class report


@pytest.mark.slow
def test_class_report_counts_named_misconceptions_and_renders_in_a_browser(tmp_path):
    slug = "01_tensorized_attention"
    root, out = tmp_path / "submitted", tmp_path / "grades.csv"
    for name in ("honest_a", "honest_b"):
        subs.write(root, slug, name, trim(subs.correct(slug)))
    no_mask = trim(subs.correct(slug))
    subs.set_cell(no_mask, "attention_pattern_solution",
                  "def attention_pattern(qk_input, W_Q, W_K, b_Q, b_K):\n"
                  "    q, k = qk_input @ W_Q + b_Q, qk_input @ W_K + b_K\n"
                  "    return (q @ k.transpose(-1, -2) / W_Q.shape[-1] ** 0.5).softmax(-1)\n")
    subs.set_cell(no_mask, "bias_question_answer", f'answer_bias = "{subs.wrong_answer("01", "bias_question")}"\n')
    subs.write(root, slug, "no_mask", no_mask)
    cheat = trim(subs.correct(slug))
    subs.set_cell(cheat, "attention_pattern_solution", REFERENCE_CHEATS["attention_pattern_solution"])
    subs.write(root, slug, "cheat", cheat)
    subs.write(root, slug, "stub", trim(subs.chapter(slug)))
    assert _grade(str(root), "--chapter", "01", "--out", str(out), "--jobs", "2", *LIMITS).returncode == 0
    report, counts = tmp_path / "report.html", tmp_path / "counts.csv"
    done = _grade("report", str(out), "--out", str(report), "--csv", str(counts))
    assert done.returncode == 0, done.stderr
    with open(counts, newline="") as f:
        table = [r for r in csv.DictReader(f) if r["exercise"] == "attention_pattern_check"]
    found = {r["what went wrong"]: int(r["how many"]) for r in table}
    assert sum(v for k, v in found.items() if k.startswith("There is no causal mask")) == 1, found
    assert found.get("used a reference") == 1 and found.get("not implemented") == 1, found
    assert float(table[0]["mean"]) == pytest.approx(2 * 2 / 5)  # two honest students of five get the 2 points
    text = report.read_text()
    assert "cheat" in text and "used reference: attention_pattern" in text and "b_V is not zero" in text
    assert "<script" not in text and "http" not in text.replace("http-equiv", "")  # offline, self-contained
    bad = _grade("report", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r.html"))
    assert bad.returncode == 2 and "no such gradebook" in bad.stderr

    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if not (chromium.exists() and sync_playwright):
        if os.environ.get("DEMYSTIFY_REQUIRE_BROWSER") == "1":
            raise AssertionError("DEMYSTIFY_REQUIRE_BROWSER=1 but chromium or playwright is missing")
        pytest.skip("the browser half needs Debian's chromium and playwright")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(report.as_uri())
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) == 2 and min(widths) > 100, widths  # both figures decoded
        assert "There is no causal mask" in page.inner_text("body")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size[1] > 600 and len(set(image.resize((64, 64)).getdata())) > 20  # rendered, not blank


# --------------------------------------------------------------------------- kernel walls and the result stream

RUNNER_ORDER = [{"t": "violation", "what": "read /x"},
                {"t": "cell", "i": 3, "phase": "start"},
                {"t": "cell", "i": 3, "phase": "end", "error": None, "seconds": 0.1},
                {"t": "cell", "i": 7, "phase": "start"},
                {"t": "cell", "i": 7, "phase": "end", "error": "E: x", "seconds": 2},
                {"t": "call", "k": 0, "phase": "start"}, {"t": "result", "k": 0, "value": 1, "seconds": 0.0},
                {"t": "call", "k": 1, "phase": "start"},
                {"t": "result", "k": 1, "error": {"kind": "raised", "message": "m"}, "used_reference": ["f"],
                 "seconds": 1.0},
                {"t": "done", "cells_s": 2.1, "calls_s": 1.0}]


def _order_breaks(frames) -> str:
    from utils.grading.sandbox import FrameOrder, ProtocolError

    order = FrameOrder([{"index": 3}, {"index": 7}])
    try:
        for frame in frames:
            order.check(frame)
    except ProtocolError as e:
        return str(e)
    return ""


def test_the_runners_own_frame_order_is_accepted():
    assert _order_breaks(RUNNER_ORDER) == ""


@pytest.mark.parametrize("index, forged, why", [
    (2, {"t": "cell", "i": 3, "phase": "end", "error": None, "seconds": 0.1}, "had not started"),  # an end twice
    (1, {"t": "cell", "i": 7, "phase": "start"}, "out of order"),                                  # skips cell 3
    (3, {"t": "cell", "i": 3, "phase": "start"}, "out of order"),                                  # cell 3 again
    (3, {"t": "call", "k": 0, "phase": "start"}, "out of order"),                                  # call before cell 7
    (6, {"t": "result", "k": 0, "value": 1, "seconds": 0.0}, "had not started"),                   # a second result
    (2, {"t": "cell", "i": 3, "phase": "end", "error": ["x"], "seconds": 0.1}, "not text"),
    (2, {"t": "cell", "i": 3, "phase": "end", "error": None, "seconds": "soon"}, "seconds"),
    (2, {"t": "cell", "i": True, "phase": "end", "error": None, "seconds": 0.1}, "had not started"),
    (6, {"t": "result", "k": 0, "error": "boom", "seconds": 0.0}, "error"),
    (6, {"t": "result", "k": 0, "error": {"kind": "made-up"}, "seconds": 0.0}, "error"),
    (6, {"t": "result", "k": 0, "used_reference": "f", "seconds": 0.0}, "used_reference"),
    (9, {"t": "done", "cells_s": "x", "calls_s": 1.0}, "cells_s"),
    (10, {"t": "violation", "what": "late"}, "after 'done'"),
    (0, {"t": "ready"}, "unknown type"),
    (0, {"t": ["cell"]}, "unknown type"),
])
def test_forged_or_malformed_frames_are_refused(index, forged, why):
    frames = copy.deepcopy(RUNNER_ORDER)
    if index < len(frames) and frames[index]["t"] == forged["t"] and forged["t"] in ("done",):
        frames[index] = forged
    else:
        frames.insert(index, forged)
    assert why in _order_breaks(frames)


GUARD_PROBE = r'''
import os, sys, tempfile
from utils.grading import jail
scratch, secret = tempfile.mkdtemp(), tempfile.mkdtemp()
open(os.path.join(secret, "key"), "w").write("42")
def report(what):  # as when the submission has closed its result pipe
    raise BrokenPipeError(32, "Broken pipe")
jail.install_guard(scratch, [secret], report)
for attempt in range(2):
    try:
        print("read", open(os.path.join(secret, "key")).read())
    except PermissionError:
        print("refused")
'''


def test_the_audit_hook_refuses_even_when_its_report_cannot_be_sent():
    """A submission that closes its result pipe first still meets the refusal (the guard's report
    used to fail inside the hook, which then let the read through)."""
    done = subprocess.run([sys.executable, "-c", GUARD_PROBE], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused", "refused"], done.stdout


def test_decode_refuses_dtypes_outside_the_allow_list():
    tensors = {"t": torch.zeros(2, dtype=torch.uint16)}
    with pytest.raises(codec.CodecError, match="dtype"):
        codec.decode({"tensor": "t"}, tensors)
    with pytest.raises(codec.CodecError):
        codec.decode({"tensor": ["t"]}, tensors)


SECCOMP_PROBE = r'''
import ctypes, os, threading, torch
from utils.grading import seccomp
seccomp.install()
out = []
t = threading.Thread(target=lambda: out.append("thread")); t.start(); t.join()
x = torch.randn(300, 300); out.append(str(tuple((x @ x).shape)))
import _posixsubprocess, subprocess
attempts = {
    "fork": os.fork,
    "memfd": lambda: os.memfd_create("hoard"),
    "popen": lambda: subprocess.run(["/bin/true"]),
    "posix_spawn": lambda: os.posix_spawn("/bin/true", ["true"], {}),
    "shmget": lambda: ctypes.CDLL(None, use_errno=True).shmget(0, 4096, 0o1000 | 0o600) == -1 and ctypes.get_errno(),
    "unshare": lambda: ctypes.CDLL(None, use_errno=True).unshare(0x00020000) == -1 and ctypes.get_errno(),
}
for name, attempt in attempts.items():
    try:
        got = attempt()
    except OSError as e:
        got = f"refused {e.errno}"
    out.append(f"{name}: {got}")
print("; ".join(out))
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp is Linux-only")
def test_the_seccomp_filter_refuses_processes_memfd_and_sysv_ipc_but_not_threads():
    from utils.grading import seccomp

    assert seccomp.available(), "the seccomp filter does not load on this Linux machine"
    done = subprocess.run([sys.executable, "-c", SECCOMP_PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("thread; (300, 300); fork: refused 1; memfd: refused 1; popen: refused 1; "
                                   "posix_spawn: refused 1; shmget: 1; unshare: 1"), done.stdout


def test_a_memory_cgroup_stops_a_process_at_its_limit_where_the_machine_allows_one():
    """The hard memory limit: a process that joined its cgroup is killed by the kernel at the limit,
    and the grader can tell (oom_kills); the directories go away afterwards."""
    from utils.grading import cgroup

    group = cgroup.create(64 * 2**20, max_tasks=16)
    if group is None:
        pytest.skip("this machine does not let the grader create a cgroup (the rlimits and the watchdog remain)")
    try:
        join = "".join(f"open({p!r}, 'w').write(str(os.getpid()))\n" for p in group.procs_files)
        hoard = "import os\n" + join + "hoard = bytearray(300 * 2**20)\nprint('kept')"
        done = subprocess.run([sys.executable, "-c", hoard], capture_output=True, text=True, timeout=60)
        assert done.returncode == -9 and "kept" not in done.stdout, (done.returncode, done.stdout, done.stderr)
        assert group.oom_kills() >= 1
    finally:
        group.remove()
    assert not group.memory_dir.exists()


def test_seccomp_program_is_built_for_both_architectures_and_refuses_others():
    from utils.grading import seccomp

    for machine in ("x86_64", "aarch64"):
        code = seccomp.program(machine)
        assert len(code) % 8 == 0 and 20 < len(code) // 8 < 80
    with pytest.raises(seccomp.SeccompUnavailable, match="riscv"):
        seccomp.program("riscv64")


FORGE = '''import json, os, struct
def forge(header):
    data = json.dumps(header).encode()
    os.write(3, struct.pack(">I", len(data)) + data)
'''
ATTACKS = {
    # a detached process that would outlive the grader, memory no limit counts, SysV memory
    "spawns": '''import os, _posixsubprocess
worked = []
for name, attempt in {
    "fork_exec": lambda: _posixsubprocess.fork_exec(["/bin/sh", "-c", "sleep 60"], [b"/bin/sh"], True, (), None,
                                                     None, -1, -1, -1, -1, -1, -1, -1, -1, False, True, None,
                                                     None, None, -1, None, False),
    "fork": os.fork,
    "memfd": lambda: os.memfd_create("hoard"),
}.items():
    try:
        attempt()
        worked.append(name)
    except Exception:
        pass
if worked:
    raise SystemExit("WORKED " + " ".join(worked))
''',
    # the end of this cell, forged, then a long sleep: the per-cell limit must still hold
    "forged_cell_end": FORGE + '''import time
forge({"t": "cell", "i": CELL_INDEX, "phase": "end", "error": None, "seconds": 0.0})
time.sleep(600)
''',
    # fields of the wrong type, which once turned the row into a grader error
    "forged_fields": FORGE + '''forge({"t": "done", "cells_s": "soon", "calls_s": []})
''',
    # a dtype added to the sender's allow-list: the grader's decoder refuses it, that case fails
    "odd_dtype": None,
    # the repository's history (hidden test cases) and the gradebook's folder (other gradebooks)
    "reads_around": '''import os
worked = []
for path in (REPO_GIT + "/HEAD", GRADES_DIR + "/other-gradebook.csv"):
    try:
        with open(path) as f:
            f.read()
        worked.append(path)
    except OSError:
        pass
if worked:
    raise SystemExit("WORKED " + " ".join(worked))
''',
    # a thread bomb: it cannot start processes, so its threads are all it can multiply
    "threads": '''import threading, time
for _ in range(200):
    threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
time.sleep(30)
''',
    # shared anonymous memory: RLIMIT_DATA does not count it; the cgroup (or the RSS watchdog) does
    "shared_memory": '''import mmap
hoard = mmap.mmap(-1, 3 * 2**30, flags=mmap.MAP_SHARED)
for offset in range(0, len(hoard), 4096):
    hoard[offset] = 1
''',
    # what no deny-list named: the repository's other files, the host's /etc, other processes
    "outside_the_allow_list": '''import os
worked = []
for path in (REPO_README, "/etc/passwd", "/etc/hostname", "/usr/bin/env"):
    if os.path.exists(path):
        worked.append(path)
pids = [p for p in os.listdir("/proc") if p.isdigit()]
if pids != ["1"]:
    worked.append("processes " + " ".join(pids))
if worked:
    raise SystemExit("WORKED " + " ".join(worked))
''',
}


@pytest.mark.slow
def test_kernel_walls_and_forged_frames_leave_graded_rows(tmp_path):
    """Each attack of issue 20 that the audit hook could not stop: the batch completes, every row is
    graded (none an ``error``), the honest one keeps full marks, and the per-cell limit holds."""
    root, out, fb = tmp_path / "submitted", tmp_path / "grades.csv", tmp_path / "feedback"
    subs.write(root, SLUG, "honest", trim(subs.correct(SLUG)))
    for name, source in ATTACKS.items():
        nb = trim(subs.correct(SLUG))
        if name == "odd_dtype":
            subs.set_cell(nb, subs.PER_TOKEN_LOSS, "import torch\nfrom utils.grading import codec\n"
                                                   "codec.DTYPES.add(torch.uint16)\n"
                                                   "def per_token_loss(logits, tokens):\n"
                                                   "    return torch.zeros(2, dtype=torch.uint16)\n")
        else:
            subs.insert_after(nb, subs.HOOK_ANSWER, source)
            at = next(i for i, c in enumerate(nb.cells) if c.source == source)
            nb.cells[at].source = (source.replace("CELL_INDEX", str(at))  # its index in the notebook
                                   .replace("REPO_GIT", repr(str(REPO / ".git")))
                                   .replace("GRADES_DIR", repr(str(tmp_path)))
                                   .replace("REPO_README", repr(str(REPO / "README.md"))))
        subs.write(root, SLUG, name, nb)
    (tmp_path / "other-gradebook.csv").write_text("student,total\nsomeone,3\n")
    limits = [a if a != "90" else "120" for a in LIMITS]
    # 20 s: the memory attack must meet its limit before the cell limit, also on a busy 2-core machine
    limits[limits.index("--timeout-cell") + 1] = "20"
    done = _grade(str(root), "--chapter", "00", "--out", str(out), "--feedback", str(fb), "--jobs", "2", *limits)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _rows(out)
    assert {r["status"] for r in rows.values()} == {"graded"}, {k: (r["status"], r["error"]) for k, r in rows.items()}
    full = float(rows["honest"]["total"])
    assert full == float(rows["honest"]["max_total"])
    for name in ("spawns", "reads_around", "outside_the_allow_list"):
        assert "WORKED" not in (fb / f"{name}.md").read_text() and float(rows[name]["total"]) == full, name
    assert "timeout" in rows["forged_cell_end"]["flags"] or "protocol" in rows["forged_cell_end"]["flags"]
    assert float(rows["forged_cell_end"]["seconds"]) < 60, rows["forged_cell_end"]
    assert "protocol" in rows["forged_fields"]["flags"], rows["forged_fields"]["flags"]
    assert "threads: ran more than 64 threads" in rows["threads"]["flags"], rows["threads"]["flags"]
    assert "memory: used more than the 1024 MB" in rows["shared_memory"]["flags"], rows["shared_memory"]["flags"]
    assert float(rows["threads"]["seconds"]) < 20 and float(rows["threads"]["total"]) < full
    assert "malformed output" in rows["odd_dtype"]["flags"] and float(rows["odd_dtype"]["total"]) < full
