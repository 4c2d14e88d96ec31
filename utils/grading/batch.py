"""A batch: find the submissions, grade them in parallel, keep the gradebook and the feedback.

Gradebook (CSV). One row per graded submission is appended, flushed and fsync'ed the moment it is
graded, so a crash mid-batch loses nothing already graded. When the batch ends every notebook is
checked against the copy it was graded from (``verify_snapshots``), and the file is compacted
atomically (temporary file + rename) to one row per student, the latest one winning,
sorted by student. Running the same command again SKIPS every student whose notebook is unchanged
(same SHA-256) and whose row is final (status graded or invalid), and REPLACES the rows of
students whose notebook changed, or whose last attempt hit a grader-side error; ``--regrade``
replaces every row. Rows of students absent from SUBMISSIONS are kept.

Longer than 400 lines because it is the whole batch command in the order an instructor meets it
(finding submissions, the crash-safe gradebook, shards, feedback files, the run loop); each part is
short and used only here.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from utils.grading.grade import MAX_NOTEBOOK_BYTES, Options, Runtime, Submission, SubmissionGrade, grade_submission
from utils.grading.plan import ChapterPlan

FINAL = ("graded", "invalid")
SKIPPED_NAMES = {".ipynb_checkpoints", "__pycache__", ".DS_Store"}  # what editors and Python leave behind
NOTABLE = re.compile(r"^(utils|.*\.py|.*\.so|.*\.pyd|sitecustomize.*|usercustomize.*|.*\.pth)$")


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection): such
# cells are written with a leading apostrophe, which spreadsheets hide, and read back without it.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def from_csv_cell(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_START) else text


def csv_row(values: dict) -> dict:
    return {k: csv_cell(v) for k, v in values.items()}


class BatchError(Exception):
    """Bad input for the whole batch (no submissions, wrong paths, a foreign gradebook)."""


# --------------------------------------------------------------------------- finding submissions


def discover(root: Path, slug: str) -> list[Submission]:
    """Every student's notebook under ``root``, read into memory now (before any of them runs).

    Layouts: nbgrader's ``root/<student>/<assignment>/<notebook>.ipynb``, ``root/<student>/*.ipynb``,
    ``root/<student>.ipynb``, or ``root`` itself a single notebook. A student folder with several
    notebooks uses the one named ``<slug>.ipynb``.
    """
    root = Path(root)
    if not root.exists():
        raise BatchError(f"{root}: no such file or directory")
    if root.is_file():
        if root.suffix != ".ipynb":
            raise BatchError(f"{root}: not a notebook (expected a folder of submissions or an .ipynb file)")
        return [_snapshot(root.stem, root, root.parent)]
    found: dict[str, list[Path]] = {}
    refused: dict[str, str] = {}  # student -> why their entry is not graded
    for entry in sorted(root.iterdir()):
        if entry.name in SKIPPED_NAMES or not (entry.suffix == ".ipynb" or entry.is_dir()):
            continue  # editor leftovers, and files that are not submissions (.gitignore, notes.txt)
        student = entry.stem if entry.suffix == ".ipynb" else entry.name
        if entry.name.startswith("."):
            refused[student] = "a hidden name (it starts with '.'): rename it to have it graded"
        elif entry.is_symlink():
            refused[student] = f"a symbolic link (to {os.readlink(entry)}): submissions must be real files"
    for path in sorted(root.rglob("*.ipynb")):
        rel = path.relative_to(root)
        if rel.parts[0] in refused or Path(rel.parts[0]).stem in refused or rel.parts[0] in SKIPPED_NAMES:
            continue
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue  # .ipynb_checkpoints and hidden folders inside a student's folder
        student = rel.parts[0] if len(rel.parts) > 1 else path.stem
        if any((root / Path(*rel.parts[:i + 1])).is_symlink() for i in range(len(rel.parts))):
            refused[student] = f"{rel} is a symbolic link (to {os.path.realpath(path)}): submissions must be real files"
            continue
        if not path.is_file():
            continue
        found.setdefault(student, []).append(path)
    if not found and not refused:
        raise BatchError(f"{root}: no notebooks found (expected {root}/<student>/.../<notebook>.ipynb or "
                         f"{root}/<student>.ipynb)")
    subs = [Submission(student, str(root / student), b"", problem=why) for student, why in refused.items()]
    for student, paths in sorted(found.items()):
        if student in refused:
            continue
        named = [p for p in paths if p.name == f"{slug}.ipynb"]
        chosen = named if named else paths
        if len(chosen) > 1:
            subs.append(Submission(student, str(chosen[0]), b"", problem="several notebooks: " + ", ".join(
                str(p.relative_to(root)) for p in chosen)))
            continue
        subs.append(_snapshot(student, chosen[0], root))
    _note_identical(subs)
    return sorted(subs, key=lambda s: s.student)


def _note_identical(subs: list[Submission]) -> None:
    """Tell each submission which other students handed in the very same bytes."""
    by_content: dict[bytes, list[Submission]] = {}
    for sub in subs:
        if sub.data and not sub.problem:
            by_content.setdefault(hashlib.sha256(sub.data).digest(), []).append(sub)
    for group in by_content.values():
        for sub in group:
            sub.same_as = sorted(other.student for other in group if other is not sub)


def _snapshot(student: str, path: Path, root: Path) -> Submission:
    try:
        size = path.stat().st_size
        data = path.read_bytes() if size <= MAX_NOTEBOOK_BYTES else b""
    except OSError as e:
        return Submission(student, str(path), b"", problem=f"cannot read: {e}")
    if size > MAX_NOTEBOOK_BYTES:
        return Submission(student, str(path), b"", problem=f"larger than {MAX_NOTEBOOK_BYTES // 2**20} MB")
    extras = []
    if path.parent != root:  # a student's own folder: anything next to the notebook is theirs
        for other in sorted(path.parent.iterdir()):
            if other != path and NOTABLE.match(other.name):
                extras.append(other.name + ("/" if other.is_dir() else ""))
    return Submission(student, str(path), data, extras=extras)


# --------------------------------------------------------------------------- the gradebook


def columns(plan: ChapterPlan) -> list[str]:
    cols = ["student", "status", "total", "max_total"]
    for cell in plan.cells:
        g = cell.grade_id
        cols += [g, f"{g} cases", f"{g} message", f"{g} flags"]
    return cols + ["flags", "error", "chapter", "sandbox", "seconds", "sha256", "submission", "graded_at"]


def _one_line(value) -> str:
    text = str(value)
    return re.sub(r"\s*[\r\n]+\s*", " | ", text).strip()


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def row(grade: SubmissionGrade, plan: ChapterPlan) -> dict:
    out = {"student": grade.student, "status": grade.status, "total": _fmt(grade.total),
           "max_total": _fmt(grade.max_total)}
    by_id = {e.grade_id: e for e in grade.exercises}
    for cell in plan.cells:
        e = by_id.get(cell.grade_id)
        g = cell.grade_id
        out[g] = _fmt(e.points) if e else "0"
        out[f"{g} cases"] = f"{e.passed}/{e.total}" if e else ""
        out[f"{g} message"] = e.message if e else ""
        out[f"{g} flags"] = "; ".join(e.flags) if e else ""
    out.update(flags="; ".join(grade.flags), error=grade.error, chapter=plan.slug, sandbox=grade.sandbox,
               seconds=f"{grade.seconds:.1f}", sha256=grade.sha256, submission=grade.path,
               graded_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return {k: _one_line(v) for k, v in out.items()}


class Gradebook:
    """The CSV file: previous rows on open, one fsync'ed append per grade, compaction at the end."""

    def __init__(self, path: Path, cols: list[str]):
        self.path, self.cols = Path(path), cols
        self.previous: dict[str, dict] = {}
        if self.path.is_dir():
            raise BatchError(f"--out {self.path}: is a folder")
        if self.path.exists() and self.path.stat().st_size:
            self._repair_tail()
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header != cols:
                    raise BatchError(f"--out {self.path}: this gradebook was written for another chapter or grader "
                                     f"version (its columns differ); choose another --out or move it away")
                for values in reader:
                    if len(values) == len(cols):
                        r = dict(zip(cols, map(from_csv_cell, values)))
                        self.previous[r["student"]] = r
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.file, fieldnames=cols, lineterminator="\n")
        if new:
            self.writer.writeheader()
            self._sync()

    def _repair_tail(self) -> None:
        """Drop a half-written last line (a crash inside a write): every complete row ends in \\n."""
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def _sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def is_final(self, sub: Submission) -> bool:
        import hashlib

        prev = self.previous.get(sub.student)
        return bool(prev and prev.get("status") in FINAL and prev.get("sha256") == hashlib.sha256(sub.data).hexdigest())

    def append(self, values: dict) -> None:
        self.writer.writerow(csv_row(values))
        self._sync()
        self.previous[values["student"]] = values

    def compact(self) -> None:
        """One row per student (the latest), sorted; atomic."""
        self.file.close()
        rows = sorted(self.previous.values(), key=lambda r: r["student"])
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=self.cols, lineterminator="\n")
                writer.writeheader()
                writer.writerows(csv_row(r) for r in rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --------------------------------------------------------------------------- shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (1 <= I <= N) -> (I, N)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise BatchError(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. 2/4")
    return int(m.group(1)), int(m.group(2))


def in_shard(student: str, index: int, count: int) -> bool:
    """Whether ``student`` belongs to shard ``index`` of ``count``: by a hash of the id, so the
    slices do not depend on which other students are present or on the order of discovery."""
    import hashlib

    return int.from_bytes(hashlib.sha256(student.encode("utf-8")).digest()[:8], "big") % count == index - 1


# Columns that record when and how long, not what was graded (they differ between any two runs).
RUN_COLUMNS = ("seconds", "graded_at")


def merge_gradebooks(paths: list[Path], out: Path) -> int:
    """Combine shard gradebooks (same chapter and columns) into one, one row per student, sorted,
    written atomically; returns the number of rows. A student in two shards must have identical
    rows there (apart from timing), otherwise the merge is refused."""
    header, rows = None, {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise BatchError(f"{path}: no such gradebook")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            cols = next(reader, None)
            if cols is None or "student" not in cols:
                raise BatchError(f"{path}: not a gradebook (no header with a student column)")
            if header is None:
                header = cols
            elif cols != header:
                raise BatchError(f"{path}: its columns differ from {paths[0]}'s (another chapter or grader version)")
            for values in reader:
                if len(values) != len(cols):
                    continue  # a half-written last line
                r = dict(zip(cols, map(from_csv_cell, values)))
                prev = rows.get(r["student"])
                if prev is not None and {k: v for k, v in prev.items() if k not in RUN_COLUMNS} != \
                        {k: v for k, v in r.items() if k not in RUN_COLUMNS}:
                    raise BatchError(f"student {r['student']!r} has different rows in two shards")
                rows[r["student"]] = r
    if header is None:
        raise BatchError("merge needs at least one gradebook")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(out).name}.", dir=Path(out).parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=header, lineterminator="\n")
            writer.writeheader()
            writer.writerows(csv_row(r) for r in sorted(rows.values(), key=lambda r: r["student"]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(rows)


# --------------------------------------------------------------------------- feedback


def safe_name(student: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", student).strip(".") or "student"
    return name[:100]


def feedback_markdown(grade: SubmissionGrade, plan: ChapterPlan) -> str:
    """What the student reads: scores, the checks' diagnoses, notes. Never any test source."""
    lines = [f"# Feedback: {plan.slug}, {grade.student}", ""]
    if grade.status == "invalid":
        lines += [f"**Your submission could not be graded:** {grade.error}", "",
                  f"Score: 0 / {_fmt(grade.max_total)}", ""]
        return "\n".join(lines)
    if grade.status == "error":
        lines += ["**Grading did not finish because of a problem on the grader's side** (not your notebook); "
                  "your instructor will re-run it.", ""]
        return "\n".join(lines)
    lines += [f"**Score: {_fmt(grade.total)} / {_fmt(grade.max_total)}**", "",
              "| Exercise | Points | Checks passed | Hidden checks passed |", "|---|---|---|---|"]
    for e in grade.exercises:
        hidden = f"{e.hidden[0]}/{e.hidden[1]}" if e.hidden[1] else "-"
        lines.append(f"| {e.grade_id} | {_fmt(e.points)} / {_fmt(e.max_points)} | {e.visible[0]}/{e.visible[1]} "
                     f"| {hidden} |")
    lines.append("")
    for e in grade.exercises:
        if e.message:
            lines += [f"## {e.grade_id}", "", e.message.replace("\n", " "), ""]
    student_flags = [f for f in grade.flags if f.startswith(("test cell", "locked cell", "nbgrader metadata"))]
    notes = grade.notes + [f"Note: {f}; the original test was used for grading." for f in student_flags
                           if f.startswith(("test cell", "locked cell"))]
    if "nbgrader metadata stripped" in grade.flags:
        notes.append("Note: your notebook has lost its nbgrader cell metadata; it was graded by the names it defines.")
    if notes:
        lines += ["## Notes on your notebook", ""] + [f"- {n}" for n in notes] + [""]
    if plan.manual:
        lines += [f"Graded by hand, not included above: {', '.join(plan.manual)}.", ""]
    return "\n".join(lines)


def write_feedback(folder: Path, grade: SubmissionGrade, plan: ChapterPlan, taken: dict) -> Path:
    name = safe_name(grade.student)
    if taken.setdefault(name, grade.student) != grade.student:  # two ids that sanitise alike
        name = f"{name}-{abs(hash(grade.student)) % 10**6}"
    path = Path(folder) / f"{name}.md"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(feedback_markdown(grade, plan), encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- running the batch

@dataclass
class BatchReport:
    graded: list = field(default_factory=list)  # SubmissionGrade, in completion order
    skipped: list = field(default_factory=list)  # students whose row was kept
    changed: list = field(default_factory=list)  # what verify_snapshots found and did, one line each
    seconds: float = 0.0


def verify_snapshots(subs: list[Submission], gradebook: Gradebook) -> list[str]:
    """After the batch: each notebook on disk must still hold the bytes it was graded from (the
    copy ``discover`` took before any submission ran). One that changed while submissions ran (a
    classmate's native code can write where the audit hook does not look, in the basic sandbox
    run by an ordinary user) is put back as it was graded, the changed file kept beside it as
    ``<name>.changed-<sha256 prefix>`` (no longer a notebook to discovery), and the student's row
    flagged. So the next run finds the graded bytes and keeps the row, and nothing is lost when
    the change was the student's own late resubmission. Returns one line per change."""
    lines = []
    for sub in subs:
        if sub.problem or not sub.data:
            continue
        path = Path(sub.path)
        try:
            now = path.read_bytes()
        except FileNotFoundError:
            now = None
        except OSError as e:
            now = f"unreadable ({e})".encode()
        if now == sub.data:
            continue
        what = "deleted" if now is None else f"changed (now sha256 {hashlib.sha256(now).hexdigest()[:12]})"
        try:
            if now is not None:
                aside = path.with_name(f"{path.name}.changed-{hashlib.sha256(now).hexdigest()[:12]}")
                aside.write_bytes(now)
                what += f", kept as {aside.name}"
            tmp = path.with_name(f".{path.name}.restoring")
            tmp.write_bytes(sub.data)
            os.replace(tmp, path)
            what += "; restored to the graded copy"
        except OSError as e:
            what += f"; NOT restored ({e}): the next run would grade the changed file"
        note = f"notebook {what} while the batch ran"
        row = gradebook.previous.get(sub.student)
        if row is not None:
            row["flags"] = "; ".join(f for f in (row.get("flags", ""), note) if f)
        lines.append(f"{sub.student}: {note}")
    return lines


def run_batch(subs: list[Submission], plan: ChapterPlan, options: Options, gradebook: Gradebook,
              feedback: Optional[Path] = None, jobs: int = 1, regrade: bool = False,
              on_grade: Optional[Callable[[SubmissionGrade], None]] = None,
              runtime: Optional[Runtime] = None) -> BatchReport:
    """Grade ``subs``: up to ``jobs`` submissions run at once, each in its own sandboxed process
    (forked by one zygote); grader threads feed, watch and score them, and the gradebook and the
    feedback are written from this thread only."""
    report = BatchReport()
    start = time.monotonic()
    todo = []
    for sub in subs:
        if not regrade and gradebook.is_final(sub):
            report.skipped.append(sub.student)
        else:
            todo.append(sub)
    taken: dict = {}
    if feedback is not None:
        Path(feedback).mkdir(parents=True, exist_ok=True)

    def record(grade: SubmissionGrade) -> None:
        gradebook.append(row(grade, plan))
        if feedback is not None:
            write_feedback(feedback, grade, plan, taken)
        report.graded.append(grade)
        if on_grade:
            on_grade(grade)

    own_runtime = runtime is None
    runtime = runtime or Runtime(options).start()
    runtime.set_plan(plan)
    try:
        if todo:
            runtime.get_zygote()  # a clear error now rather than one per submission
        pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="grade")
        futures = {pool.submit(grade_submission, sub, plan, options, runtime): sub for sub in todo}
        try:
            for fut in as_completed(futures):
                try:
                    grade = fut.result()
                except Exception as e:  # grade_submission never raises; belt and braces
                    grade = _failed(futures[fut], plan, options, f"{type(e).__name__}: {e}")
                record(grade)
        except BaseException:
            runtime.close()  # kills every running submission, so the threads end at once
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    finally:
        if own_runtime:
            runtime.close()
        # No submission runs any more: what the batch wrote is written again from memory (the
        # gradebook by compact), so no native write of a submission into them survives it.
        report.changed = verify_snapshots(subs, gradebook)
        gradebook.compact()
        if feedback is not None:
            for grade in report.graded:
                write_feedback(feedback, grade, plan, taken)
        report.seconds = time.monotonic() - start
    return report


def _failed(sub: Submission, plan: ChapterPlan, options: Options, why: str) -> SubmissionGrade:
    import hashlib

    from utils.grading.grade import ExerciseGrade

    return SubmissionGrade(sub.student, sub.path, hashlib.sha256(sub.data).hexdigest(), plan.slug, status="error",
                           error=why, exercises=[ExerciseGrade(c.grade_id, 0.0, c.points) for c in plan.cells],
                           max_total=plan.max_points, sandbox=options.sandbox)


def summary(report: BatchReport, plan: ChapterPlan) -> str:
    out = io.StringIO()
    for g in sorted(report.graded, key=lambda g: g.student):
        flag = f"  [{'; '.join(g.flags)[:150]}]" if g.flags else ""
        status = "" if g.status == "graded" else f"  {g.status.upper()}: {g.error[:150]}"
        print(f"{g.student:<24} {_fmt(g.total):>6} / {_fmt(plan.max_points)}{status}{flag}", file=out)
    if report.skipped:
        print(f"unchanged, kept from the gradebook: {len(report.skipped)} ({', '.join(report.skipped[:10])}"
              f"{', ...' if len(report.skipped) > 10 else ''})", file=out)
    print(f"graded {len(report.graded)} submission(s) in {report.seconds:.1f} s", file=out)
    return out.getvalue()


def cleanup(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def essential_paths() -> list[str]:
    """Folders a submission's process must see (Python, its packages, the course package)."""
    import sysconfig

    import utils

    paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)),
             os.path.dirname(os.path.realpath(utils.__file__))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            paths.add(p)
    import site

    paths.update(p for p in site.getsitepackages() if os.path.isdir(p))
    return sorted(os.path.realpath(p) for p in paths)
