"""Grade ONE submission: read and inspect it, run it in the sandbox, score what came back.

Scoring happens here, in the trusted process: each check call of each graded cell is run again
under ``grading_session("grade")`` with a stand-in that returns the student's recorded outputs, so
the reference, the tolerances, the misconception catalogue and any wrapper of the check are
exactly the notebook's. A cell's points are shared equally among its cases (partial credit).

Longer than 400 lines because inspecting, running and scoring one submission is one sequence whose
steps pass the same trusted state along; it reads top to bottom in that order.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import nbformat
import torch

from utils.checks import core
from utils.course import SKIP_WHEN_GRADING
from utils.grading import codec
from utils.grading.plan import ChapterPlan, cell_checksum, encode_requests, grade_ids_of, released_checksum
from utils.grading.sandbox import Limits, RunResult, Zygote, child_env, run

MAX_NOTEBOOK_BYTES = 64 * 2**20


class GraderError(RuntimeError):
    """Something went wrong on the grader's side (never the submission's fault)."""


@dataclass
class Options:
    limits: Limits
    sandbox: str  # "namespace" or "basic"
    scratch_base: str  # a private folder for this batch's scratch directories
    hide_dirs: list = field(default_factory=list)  # never visible to a submission (namespace sandbox)
    hide_files: list = field(default_factory=list)
    protected: list = field(default_factory=list)  # refused by the audit hook (both sandboxes)
    other_chapters: dict = field(default_factory=dict)  # slug -> grade_ids, to name a wrong chapter
    seccomp: bool = True  # load the seccomp filter in each submission's process (see grading.seccomp)
    unprivileged: Optional[tuple] = None  # (uid_base, shared_uid): a root grader's basic sandbox (privileges)


@dataclass
class Submission:
    student: str
    path: str
    data: bytes  # read once, before any submission runs
    extras: list = field(default_factory=list)  # notable files next to the notebook (ignored)
    problem: str = ""  # why it cannot be graded (set during discovery)
    same_as: list = field(default_factory=list)  # other students whose notebook is byte-identical


@dataclass
class ExerciseGrade:
    grade_id: str
    points: float
    max_points: float
    visible: tuple = (0, 0)  # (passed, total)
    hidden: tuple = (0, 0)
    message: str = ""  # the first problem, as the check words it; "" when every case passed
    flags: list = field(default_factory=list)

    @property
    def passed(self) -> int:
        return self.visible[0] + self.hidden[0]

    @property
    def total(self) -> int:
        return self.visible[1] + self.hidden[1]


@dataclass
class SubmissionGrade:
    student: str
    path: str
    sha256: str
    chapter: str
    status: str = "graded"  # graded | invalid (bad input) | error (grader-side problem)
    error: str = ""
    exercises: list = field(default_factory=list)
    flags: list = field(default_factory=list)  # for the instructor: anything suspicious
    notes: list = field(default_factory=list)  # for the student: cells that raised, and the like
    max_total: float = 0.0
    sandbox: str = ""
    seconds: float = 0.0
    own_seconds: float = 0.0  # the submission's own cells and calls
    setup_seconds: float = 0.0  # process start, imports, sandbox

    @property
    def total(self) -> float:
        return round(sum(e.points for e in self.exercises), 4)


class Runtime:
    """What grading needs: the chapter's encoded requests and the zygote that forks submissions'
    processes. The zygote starts importing at once (``start``), while the grader plans the chapter;
    if it ever dies it is started again."""

    def __init__(self, options: "Options"):
        self.options = options
        self.work: Optional[bytes] = None
        self.zygote: Optional[Zygote] = None
        self.lock = threading.Lock()

    def start(self) -> "Runtime":
        if self.zygote is None:
            self.zygote = Zygote(self.options.scratch_base, self.options.limits.threads)
        return self

    def set_plan(self, plan: ChapterPlan) -> None:
        self.work = encode_requests(plan)

    def get_zygote(self) -> Zygote:
        with self.lock:
            if self.zygote is not None and not self.zygote.alive():
                self.zygote.close()
                self.zygote = None
            self.start()
            if not self.zygote.ready:
                self.zygote.load(self.work)
            return self.zygote

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None


# --------------------------------------------------------------------------- reading and inspecting


def read_notebook(data: bytes) -> nbformat.NotebookNode:
    """The notebook in ``data``; ValueError with a clear reason when it is not one."""
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise ValueError(f"the file is larger than {MAX_NOTEBOOK_BYTES // 2**20} MB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not a notebook: the file is not UTF-8 text") from None
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not a notebook: malformed JSON ({e})") from None
    v3 = isinstance(raw, dict) and raw.get("nbformat") == 3 and isinstance(raw.get("worksheets"), list)
    if not isinstance(raw, dict) or not (isinstance(raw.get("cells"), list) or v3) or "nbformat" not in raw:
        raise ValueError("not a notebook: JSON without the 'cells' and 'nbformat' fields of a Jupyter notebook")
    if not isinstance(raw.get("metadata", {}), dict):
        raw["metadata"] = {}  # what a kernel needs from it is checked below
    raw.setdefault("metadata", {})
    raw.setdefault("nbformat_minor", 0)
    try:
        nb = nbformat.convert(nbformat.from_dict(raw), 4)  # nbformat 3 (worksheets) converts here
    except Exception as e:
        raise ValueError(f"not a notebook: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(nb.metadata.get("kernelspec", {}), dict):
        nb.metadata["kernelspec"] = nbformat.NotebookNode()  # a string or a list: treated as unset
    for i, cell in enumerate(nb.cells):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise ValueError(f"not a notebook: cell {i} is malformed")
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(str(s) for s in source)
        if not isinstance(source, str):
            raise ValueError(f"not a notebook: cell {i} has no text source")
        cell["source"] = source
        if not isinstance(cell.get("metadata", {}), dict):
            cell["metadata"] = nbformat.NotebookNode()
        cell.setdefault("metadata", nbformat.NotebookNode())
        meta = cell["metadata"]
        if "tags" in meta and not (isinstance(meta["tags"], list) and all(isinstance(t, str) for t in meta["tags"])):
            meta["tags"] = []  # a number or a string: no tags
        if not isinstance(meta.get("nbgrader", {}), dict):
            meta["nbgrader"] = nbformat.NotebookNode()  # read as a plain cell
        elif "grade_id" in meta.get("nbgrader", {}) and not isinstance(meta["nbgrader"]["grade_id"], str):
            meta["nbgrader"]["grade_id"] = ""  # a list or a number names no cell
    return nb


def _meta(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def _check_names(nb) -> set[str]:
    """Names the notebook binds to a checks module (``check`` in every chapter)."""
    names = {"check"}
    for cell in nb.cells:
        if cell.cell_type == "code":
            for node in ast.walk(_parse_quietly(cell.source) or ast.Module(body=[], type_ignores=[])):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("utils.checks"):
                    names.update(a.asname or a.name for a in node.names)
                elif isinstance(node, ast.Import):
                    names.update(a.asname for a in node.names if a.name.startswith("utils.checks") and a.asname)
    return names


# CPython 3.11's ast module is not safe to use from several threads at once ("AST constructor
# recursion depth mismatch", gh-106905): grading threads parse one at a time.
_AST_LOCK = threading.Lock()


def _parse_quietly(source: str) -> Optional[ast.Module]:
    with _AST_LOCK:
        try:
            return ast.parse(source)
        except SyntaxError:
            try:
                from IPython.core.inputtransformer2 import TransformerManager

                return ast.parse(TransformerManager().transform_cell(source))
            except Exception:  # a student's cell that IPython cannot read either, whatever it raises
                return None
        except (ValueError, RecursionError, MemoryError):  # null bytes, absurd nesting
            return None


def _rebinds(tree: ast.Module, names: set[str]) -> list[str]:
    """``check.x = ...``, ``setattr(check, ...)``, ``utils.checks.core.run_check = ...``: attempts to
    replace a check (harmless here, since no check runs in the student's process, but worth a flag)."""
    found = []

    def root(node):
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and (root(t) in names or root(t) == "utils"):
                found.append(ast.unparse(t))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr") \
                and node.args and (root(node.args[0]) in names or root(node.args[0]) == "utils"):
            found.append(f"{node.func.id}({ast.unparse(node.args[0])}, ...)")
    return found


SKIP_TAG = SKIP_WHEN_GRADING  # cells a grader does not run (the course-wide tag, see utils/course.py)


def inspect(nb, plan: ChapterPlan, grade: SubmissionGrade) -> list[dict]:
    """Flag tampering; return the cells to run ({"index", "source"}): every code cell except the
    graded test cells, which are never run in the student's process."""
    released = plan.released
    released_test_sources = {released[g].source.strip() for g in plan.test_ids if g in released}
    seen: dict[str, int] = {}
    any_meta = False
    for i, cell in enumerate(nb.cells):
        grade_id = _meta(cell).get("grade_id")
        if _meta(cell):
            any_meta = True
        if grade_id:
            if grade_id in seen:
                grade.flags.append(f"duplicate cell {grade_id}")
            seen[grade_id] = i
    if not any_meta:
        grade.flags.append("nbgrader metadata stripped")
    for grade_id, rel in released.items():
        rel_meta = _meta(rel)
        locked = rel_meta.get("locked") or (rel_meta.get("grade") and not rel_meta.get("solution"))
        if grade_id not in seen:
            if grade_id in plan.test_ids:
                same = any(c.source.strip() == rel.source.strip() for c in nb.cells)
                grade.flags.append(f"test cell {grade_id} " + ("lost its nbgrader metadata" if same else "deleted"))
            elif any_meta:
                grade.flags.append(f"cell {grade_id} deleted or its nbgrader metadata removed")
            continue
        if not locked:
            continue
        cell = nb.cells[seen[grade_id]]
        if cell_checksum(cell) != released_checksum(rel):
            what = "source" if cell.source.strip() != rel.source.strip() else "metadata (points or flags)"
            kind = "test cell" if grade_id in plan.test_ids else "locked cell"
            grade.flags.append(f"{kind} {grade_id} edited ({what})")

    names = _check_names(nb)
    to_run = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        meta = _meta(cell)
        if meta.get("grade_id") in plan.test_ids or (meta.get("grade") and not meta.get("solution")):
            continue  # a graded test cell: the checks run in the grader, never here
        if cell.source.strip() in released_test_sources:
            continue  # a test cell whose metadata was stripped
        if SKIP_TAG in cell.get("metadata", {}).get("tags", ()):
            continue  # a long demo cell (training) that no check depends on
        tree = _parse_quietly(cell.source)
        if tree is not None:
            with _AST_LOCK:
                found = _rebinds(tree, names)
            for what in found:
                grade.flags.append(f"rebinds a check ({what}) in cell {i}")
        to_run.append({"index": i, "source": cell.source})
    return to_run


def wrong_chapter(nb, plan: ChapterPlan, options: Options) -> Optional[str]:
    ids = grade_ids_of(nb)
    if not ids or ids & plan.grade_ids:
        return None
    for slug, other in sorted(options.other_chapters.items()):
        if ids & other:
            return f"wrong chapter: this is the notebook of {slug}, not {plan.slug}"
    return f"wrong chapter: none of its nbgrader cells belong to {plan.slug}"


# --------------------------------------------------------------------------- scoring


def _same(a: Any, b: Any) -> bool:
    """The arguments a check hands over now equal the ones planned (sent to the student)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-7,
                                                               equal_nan=True)))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if type(a).__name__ == type(b).__name__ == "FactoredMatrix":
        return _same(a.A, b.A) and _same(a.B, b.B)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # nan
    return type(a) is type(b) and a == b


def _lost(run: RunResult, limits: Limits) -> str:
    reasons = {"timeout": "it ran out of time", "memory": "it ran out of memory",
               "threads": "it started too many threads", "crashed": "it crashed",
               "output": "it sent back too much data", "protocol": "it broke the grader's result stream",
               "fatal": "the sandbox could not start"}
    return f"no result: your notebook stopped before this case ran ({reasons.get(run.ended, run.ended)}: {run.detail})"


# Text a submission writes itself (exception messages) reaches its feedback; cap it, so feedback is
# never a channel for carrying much out of the sandbox (what a cell read, say).
QUOTED_CHARS = 200
MAX_NOTES = 10


def quoted(text: str) -> str:
    text = str(text)
    if len(text) <= QUOTED_CHARS:
        return text
    return text[:QUOTED_CHARS] + f"... ({len(text) - QUOTED_CHARS} more characters)"


def _cap_notes(notes: list) -> list:
    if len(notes) <= MAX_NOTES:
        return notes
    return notes[:MAX_NOTES] + [f"({len(notes) - MAX_NOTES} more notes not shown)"]


def _error_message(exercise: str, symbol: str, error: dict, limits: Limits) -> str:
    kind = error.get("kind")
    if kind == "missing":
        return (f"{exercise}: `{symbol}` is not defined in your notebook (did the cell that defines it raise an "
                "error, or was it deleted?)")
    if kind == "not_callable":
        return core.not_callable_message(exercise, codec.opaque(error.get("type", "object")))
    if kind == "not_implemented":
        return core.not_implemented_message(exercise)
    if kind == "timeout":
        return f"{exercise}: your function did not return within {limits.timeout_cell:g} s."
    if kind == "memory":
        return f"{exercise}: your function ran out of memory (limit {limits.memory_mb} MB)."
    if kind == "raised":
        message = str(error.get("message", ""))
        prefix = "{exercise}: "
        return f"{exercise}: {quoted(message[len(prefix):] if message.startswith(prefix) else message)}"
    return f"{exercise}: your function's output could not be sent back to the grader ({error.get('type', '?')})."


class _ReplayProbe:
    """Stands in for the student's function in grade mode: returns what it returned in its process."""

    def __init__(self, plan: ChapterPlan, request_ids: list, run_result: RunResult, symbol: str, limits: Limits,
                 flags: list):
        self.plan, self.ids, self.run, self.symbol, self.limits = plan, list(request_ids), run_result, symbol, limits
        self.flags = flags
        self.next = 0

    def __call__(self, *args, **kwargs):
        session = core._SESSION.get()
        exercise = session.current[0] if session is not None and session.current else self.symbol
        if self.next >= len(self.ids):
            raise GraderError(f"{exercise}: more calls than planned")
        k = self.ids[self.next]
        self.next += 1
        req = self.plan.requests[k]
        if not _same((args, kwargs), (req.args, req.kwargs)):
            raise GraderError(f"{exercise}: the check's inputs differ from the planned ones (non-deterministic "
                              "make_inputs?)")
        if k not in self.run.results:
            raise core.CheckFailure(f"{exercise}: {_lost(self.run, self.limits)}")
        header, tensors = self.run.results[k]
        used = header.get("used_reference")
        if used:  # the output came from the course's own reference: this case scores 0
            names = ", ".join(str(n) for n in used) if isinstance(used, list) else "?"
            self.flags.append(f"used reference: {names}")
            raise core.CheckFailure(f"{exercise}: your function called the course's reference implementation "
                                    f"({names}); write it yourself.")
        if header.get("error"):
            if header["error"].get("kind") == "timeout":
                self.flags.append("timeout")
            raise core.CheckFailure(_error_message(exercise, self.symbol, header["error"], self.limits))
        try:
            value = codec.decode(header.get("value"), tensors)
        except codec.CodecError as e:
            self.flags.append("malformed output")
            raise core.CheckFailure(f"{exercise}: your function's output could not be read ({e})") from None
        if codec.is_opaque(value):  # numbers, tuples and FactoredMatrix travel fine; this did not
            self.flags.append("non-tensor output")
        return value


_NAMED = re.compile(r"^[A-Za-z_][\w.]*(?: \(case \d+ of \d+\))?: ")


def _unnamed(message: str) -> str:
    """A hidden call's diagnosis without the check's name and the case's label: feedback never
    names a hidden test (which check it runs, which of its cases failed)."""
    return _NAMED.sub("", message, count=1)


def score_cell(cell, plan: ChapterPlan, run_result: RunResult, limits: Limits) -> ExerciseGrade:
    import importlib

    visible, hidden = [0, 0], [0, 0]
    messages: list[tuple[bool, str]] = []
    flags: list[str] = []
    for call in cell.calls:
        module = importlib.import_module(call.module)
        fn = getattr(module, call.check)
        outcomes: list = []
        final = ""
        if call.kind == "choice" and not call.n_cases:
            continue  # the self-check line; its hidden, keyed twin is scored
        if call.kind == "choice":
            k = call.requests[0]
            header, tensors = run_result.results.get(k, (None, {}))
            if header is None:
                outcomes = [core.CaseOutcome(call.check, "answer", False, f"{call.check}: {_lost(run_result, limits)}")]
            elif header.get("error"):
                outcomes = [core.CaseOutcome(call.check, "answer", False,
                                             _error_message(call.check, call.symbol, header["error"], limits))]
            else:
                try:
                    value = codec.decode(header.get("value"), tensors)
                except codec.CodecError as e:
                    value = codec.opaque(f"malformed ({e})")
                if codec.is_opaque(value):
                    flags.append("answer is not plain data")
                with core.grading_session("grade", plan.questions) as session, \
                        contextlib.redirect_stdout(io.StringIO()):
                    try:
                        fn(value, *call.args, **call.kwargs)
                    except core.CheckFailure as e:
                        final = str(e)
                outcomes = session.outcomes
        else:
            probe = _ReplayProbe(plan, call.requests, run_result, call.symbol, limits, flags)
            with core.grading_session("grade") as session, contextlib.redirect_stdout(io.StringIO()):
                session.withhold_values = call.hidden
                try:
                    fn(probe, *call.args, **call.kwargs)
                except core.CheckFailure as e:
                    final = str(e)
            outcomes = session.outcomes
        if len(outcomes) != call.n_cases:
            raise GraderError(f"{cell.grade_id}: {call.check} produced {len(outcomes)} outcomes, "
                              f"planned {call.n_cases}")
        passed = sum(o.passed for o in outcomes)
        tally = hidden if call.hidden else visible
        tally[0] += passed
        tally[1] += len(outcomes)
        if passed < len(outcomes):
            first = next(o.message for o in outcomes if not o.passed)
            text = final or first
            if call.hidden:
                text = f"{len(outcomes) - passed} of {len(outcomes)} failed. {_unnamed(text)}"
            messages.append((call.hidden, text))
    total = visible[1] + hidden[1]
    points = cell.points * (visible[0] + hidden[0]) / total if total else 0.0
    message = ""
    if messages:
        hidden_first, text = sorted(messages, key=lambda m: m[0])[0]
        message = ("hidden tests: " if hidden_first else "") + text
    return ExerciseGrade(cell.grade_id, round(points, 4), cell.points, tuple(visible), tuple(hidden), message,
                         sorted(set(flags)))


# --------------------------------------------------------------------------- one submission


def grade_submission(sub: Submission, plan: ChapterPlan, options: Options, runtime: Runtime) -> SubmissionGrade:
    """Never raises: a problem with the submission is a flag or an ``invalid`` status, a problem on
    the grader's side an ``error`` status (retried when the batch is run again)."""
    start = time.monotonic()
    grade = SubmissionGrade(sub.student, sub.path, hashlib.sha256(sub.data).hexdigest(), plan.slug,
                            max_total=plan.max_points, sandbox=options.sandbox)
    empty = [ExerciseGrade(c.grade_id, 0.0, c.points) for c in plan.cells]
    try:
        if sub.problem:
            grade.status, grade.error, grade.exercises = "invalid", sub.problem, empty
            return grade
        try:
            nb = read_notebook(sub.data)
        except ValueError as e:
            grade.status, grade.error, grade.exercises = "invalid", str(e), empty
            return grade
        problem = wrong_chapter(nb, plan, options)
        if problem:
            grade.status, grade.error, grade.exercises = "invalid", problem, empty
            return grade
        if nb.metadata.get("kernelspec", {}).get("language", "python") != "python":
            grade.flags.append(f"kernel language {nb.metadata['kernelspec'].get('language')!r}")
        for extra in sub.extras:
            grade.flags.append(f"ignored file next to the notebook: {extra}")
        if sub.same_as:
            grade.flags.append("identical to the notebook of " + ", ".join(sub.same_as))
        cells = inspect(nb, plan, grade)
        run_result = _run(sub, cells, options, runtime)
        _note_run(run_result, grade, options.limits)
        for cell in plan.cells:
            grade.exercises.append(score_cell(cell, plan, run_result, options.limits))
        for ex in grade.exercises:
            grade.flags.extend(f"{ex.grade_id}: {f}" for f in ex.flags if f != "timeout")
        grade.notes = _cap_notes(grade.notes)
        grade.own_seconds = (run_result.cells_s + run_result.calls_s) or sum(
            c.get("seconds", 0.0) for c in run_result.cells.values())
        grade.setup_seconds = run_result.setup_s
    except Exception as e:  # a grader bug or a broken environment: never stop the batch for it
        grade.status, grade.error = "error", f"{type(e).__name__}: {e}"
        grade.exercises = empty
    finally:
        grade.seconds = time.monotonic() - start
    return grade


def _run(sub: Submission, cells: list, options: Options, runtime: Runtime) -> RunResult:
    scratch = Path(tempfile.mkdtemp(prefix="s-", dir=options.scratch_base))
    name = Path(sub.path).name if sub.path.endswith(".ipynb") else "submission.ipynb"
    header = {
        "config": {
            "scratch": str(scratch), "sandbox": options.sandbox, "seccomp": options.seccomp,
            "hide_dirs": options.hide_dirs,
            "hide_files": options.hide_files, "protected": options.protected,
            "scratch_mb": options.limits.scratch_mb, "memory_mb": options.limits.memory_mb,
            "fsize_mb": options.limits.fsize_mb, "threads": options.limits.threads,
            "cpu_seconds": int(options.limits.timeout_total) + 30, "notebook_name": name,
            "unprivileged": options.unprivileged,
            "env": child_env(str(scratch), options.limits.threads),
        },
        "notebook": sub.data.decode("utf-8"),
        "cells": cells,
    }
    try:
        result = run(zygote=runtime.get_zygote(), submission=header, limits=options.limits)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if result.ended == "fatal":
        raise GraderError(f"the sandbox failed: {result.detail} {result.output_tail[-500:]}")
    return result


def _note_run(run_result: RunResult, grade: SubmissionGrade, limits: Limits) -> None:
    for i in run_result.timed_out_cells:
        grade.flags.append(f"timeout in cell {i}")
        grade.notes.append(f"Cell {i} ran longer than {limits.timeout_cell:g} s and was interrupted.")
    if run_result.timed_out_calls:
        grade.flags.append(f"timeout in {len(run_result.timed_out_calls)} call(s) of the student's functions")
    if run_result.ended != "done":
        grade.flags.append(f"{run_result.ended}: {run_result.detail}")
        grade.notes.append(f"Your notebook did not finish: {run_result.detail}. Cases that had not run by then "
                           "score 0.")
    counts: dict = {}
    for what in run_result.violations:
        counts[what] = counts.get(what, 0) + 1
    for what, n in counts.items():
        grade.flags.append(f"sandbox refused: {what}" + (f" (x{n})" if n > 1 else ""))
    if run_result.violations:
        grade.notes.append("Your notebook tried something the grader does not allow (for example reading or "
                           "writing files outside its own folder); it was refused and recorded.")
    for i, info in sorted(run_result.cells.items()):
        error = info.get("error")
        if error and i not in run_result.timed_out_cells:
            grade.notes.append(f"Cell {i} raised {quoted(error)}")
            if error.startswith("MemoryError") or "allocate memory" in error:
                grade.flags.append(f"memory limit hit in cell {i}")
