"""Generate the student chapters from the instructor solutions.

Why generated: every exercise exists twice, as the full solution (with hidden tests, for
instructors and for our own tests) and as the student version (stubs, visible tests only). Writing
both by hand drifts; so `solutions/NN_slug/NN_slug.ipynb` is the only source and
`chapters/NN_slug/NN_slug.ipynb` is derived from it with nbgrader's own preprocessors, exactly as
`nbgrader generate_assignment` would release it. The chapters are committed (students clone and
run them, Colab opens them) and `--check` proves they are still what the solutions produce.

    python -m utils.build                 # rebuild every chapter
    python -m utils.build 03 05_sparse_autoencoders
    python -m utils.build --check         # exit 1 if a committed chapter is stale
    python -m utils.build --exam --out DIR  # an instructor's release for a graded class (below)

The exam build is for a class whose grades count. It writes the chapters to DIR (never to
chapters/) without the question bank (questions.json), so a multiple-choice check only records the
answer, and without each exercise's last, full-code hint (see drop_code_hints); the earlier hints
stay. Grades then come only from the solutions' hidden keys.

The output is byte-for-byte deterministic: outputs, execution counts and editor state are dropped,
kernel metadata is normalised, JSON is written with sorted keys and a trailing newline. The
preprocessors are built without any traitlets config, so an instructor's own nbgrader_config.py can
never change what a chapter looks like. Other files in a solutions folder (small data, images) are
copied next to the chapter unchanged; other notebooks in it are ignored.

Longer than 400 lines because building and checking are one idea seen twice (``--check`` renders
exactly what a build writes, then diffs it cell by cell); splitting them would let them drift.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import hashlib
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Optional

import nbformat
from nbformat import NotebookNode
from nbgrader.nbgraderformat import MetadataValidator
from nbgrader.preprocessors import (
    CheckCellMetadata,
    ClearHiddenTests,
    ClearMarkScheme,
    ClearOutput,
    ClearSolutions,
    ComputeChecksums,
    LockCells,
)

from utils import exercise_index
from utils.paths import QUESTION_BANK as BANK_NAME
from utils.paths import REPO

SOLUTIONS = REPO / "solutions"
CHAPTERS = REPO / "chapters"

# Per-cell state that editors and kernels write but that carries no content.
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "collapsed", "scrolled", "heading_collapsed")
# Per-notebook editor/extension state; `widgets` can hold megabytes of widget models.
VOLATILE_NB_METADATA = ("widgets", "celltoolbar", "toc", "varInspector", "vscode")
# The kernelspec every Python chapter opens with (locally, on Colab, under nbgrader).
PYTHON_KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# Files never copied from a solutions folder.
SKIP_NAMES = {".ipynb_checkpoints", "__pycache__", ".DS_Store"}
DIFF_LINES = 40


class BuildError(Exception):
    """A solutions notebook that cannot be turned into a chapter; the message says where and why."""


# --------------------------------------------------------------------------- the transformation


def _pipeline() -> list:
    """nbgrader's generate_assignment steps, in its order, minus the database ones.

    nbgrader computes checksums twice (before and after clearing hidden tests) because it saves
    the first ones to its gradebook; only the second set ends up in the released notebook.
    """
    return [
        LockCells(),
        ClearSolutions(),  # default stub: "# YOUR CODE HERE\nraise NotImplementedError()"
        ClearOutput(),
        ClearHiddenTests(),
        ClearMarkScheme(),
        ComputeChecksums(),
        CheckCellMetadata(),
    ]


def _markers() -> list[tuple[str, str, str, str]]:
    """(begin, end, nbgrader flag the cell needs, human name) for each region type, taken from the
    preprocessors themselves so validation and transformation agree on the delimiters."""
    sol, hid, ms = ClearSolutions(), ClearHiddenTests(), ClearMarkScheme()
    return [
        (sol.begin_solution_delimeter, sol.end_solution_delimeter, "solution", "solution"),
        (hid.begin_test_delimeter, hid.end_test_delimeter, "grade", "grade (autograder tests)"),
        (ms.begin_mark_scheme_delimeter, ms.end_mark_scheme_delimeter, "task", "task"),
    ]


def validate(nb: NotebookNode) -> list[str]:
    """Every problem nbgrader would trip over (or silently mis-handle), one line each, naming the
    cell index. Empty when the notebook is a valid source."""
    problems: list[str] = []
    try:
        with warnings.catch_warnings():  # its id warnings are reported below, with cell indices
            warnings.simplefilter("ignore")
            nbformat.validate(copy.deepcopy(nb))  # on a copy: nbformat "repairs" ids in place, randomly
    except nbformat.ValidationError as e:
        problems.append(f"notebook: invalid nbformat: {str(e).splitlines()[0]}")
    ids = [cell.get("id") for cell in nb.cells]
    for i, cell_id in enumerate(ids):
        if cell_id and cell_id in ids[:i]:
            problems.append(f"cell {i}: duplicate cell id {cell_id!r} (first used in cell {ids.index(cell_id)})")

    markers = _markers()
    validator = MetadataValidator()
    first_use: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        grade_id = meta.get("grade_id")
        where = f"cell {i}" + (f" (grade_id {grade_id!r})" if grade_id else "")
        found = len(problems)

        if meta.get("grade") or meta.get("solution") or meta.get("locked") or meta.get("task"):
            if not grade_id:
                problems.append(f"{where}: nbgrader cell has no grade_id")
            elif grade_id in first_use:
                problems.append(f"{where}: duplicate grade_id (first used in cell {first_use[grade_id]})")
            else:
                first_use[grade_id] = i
        if meta.get("grade") and "points" not in meta:
            problems.append(f"{where}: graded cell has no points")

        for begin, end, flag, kind in markers:
            open_line, marker_line = None, None
            for n, line in enumerate(cell.get("source", "").split("\n"), start=1):
                if begin in line:  # the same substring test nbgrader uses
                    if open_line is not None:
                        problems.append(f"{where}: nested '{begin}' on line {n} (already open since line {open_line})")
                    open_line = n
                elif end in line:
                    if open_line is None:
                        problems.append(f"{where}: '{end}' on line {n} without a '{begin}'")
                    open_line = None
                else:
                    continue
                marker_line = marker_line or n
            if open_line is not None:
                problems.append(f"{where}: '{begin}' on line {open_line} has no matching '{end}'")
            if marker_line and not meta.get(flag):
                problems.append(f"{where}: '{begin}' region (line {marker_line}) in a cell that is not marked "
                                f"as an nbgrader {kind} cell")

        # nbgrader's own schema checks, for whatever the checks above do not cover.
        if meta and len(problems) == found:
            try:
                validator.validate_cell(cell)
            except Exception as e:  # ValidationError, SchemaTooOld/New, jsonschema errors
                problems.append(f"{where}: invalid nbgrader metadata: {str(e).splitlines()[0]}")
    problems += [f"notebook: {problem}" for problem in exercise_index.validate(nb)]
    return problems


def _ensure_cell_ids(nb: NotebookNode) -> None:
    """nbformat 4.5 requires cell ids and invents random ones when missing; derive stable ones.
    (Every committed solution has ids, so JupyterLab, which only invents ids for cells lacking
    one, never changes them: tests/test_build.py checks both.)"""
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):
        return
    for i, cell in enumerate(nb.cells):
        if not cell.get("id"):
            cell["id"] = hashlib.sha1(f"{i}:{cell.get('source', '')}".encode()).hexdigest()[:8]


def _normalise(nb: NotebookNode) -> None:
    """Drop run- and editor-state so the bytes depend on content only."""
    for key in VOLATILE_NB_METADATA:
        nb.metadata.pop(key, None)
    kernelspec = nb.metadata.get("kernelspec", {})
    if kernelspec.get("language", "python") == "python":
        nb.metadata["kernelspec"] = dict(PYTHON_KERNELSPEC)
    if nb.metadata.get("language_info", {}).get("name", "python") == "python":
        # A kernel fills in codemirror_mode, mimetype, version, ... when the notebook is saved.
        nb.metadata["language_info"] = {"name": "python"}
    for cell in nb.cells:
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None


EXAM_METADATA = {"build": "exam"}
_DETAILS = re.compile(r"\n*<details>.*?</details>", re.S)


def drop_code_hints(text: str) -> str:
    """A markdown cell without its last ``<details>`` hint when that is the full-code one: the
    course's hints escalate, so with two or more the last gives the code away, and a lone hint
    does when it holds a fenced code block. Every other hint is kept."""
    blocks = list(_DETAILS.finditer(text))
    if not blocks or (len(blocks) == 1 and "```" not in blocks[-1].group(0)):
        return text
    last = blocks[-1]
    return text[:last.start()] + text[last.end():]


def build_notebook(nb: NotebookNode, exam: bool = False) -> NotebookNode:
    """The student version of a solutions notebook (the input is not modified); ``exam``: the
    instructor's graded release (see the module docstring)."""
    nb = copy.deepcopy(nb)
    _ensure_cell_ids(nb)
    problems = validate(nb)
    if problems:
        raise BuildError("\n".join(problems))
    resources: dict = {}  # ClearSolutions records the kernel language here; nothing else is needed
    for preprocessor in _pipeline():
        nb, resources = preprocessor.preprocess(nb, resources)
    _normalise(nb)
    if exam:
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source = drop_code_hints(cell.source)
        nb.metadata["demystify"] = dict(EXAM_METADATA)
    return nb


def dumps(nb: NotebookNode) -> str:
    """Canonical text of a notebook: nbformat's sorted-key JSON plus a trailing newline."""
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


# --------------------------------------------------------------------------- chapters on disk


def read_source(path: Path) -> NotebookNode:
    """Read without nbformat.read's validation, which would invent random ids for cells lacking
    one; build_notebook validates instead."""
    try:
        return nbformat.convert(nbformat.reader.reads(Path(path).read_text(encoding="utf-8")), 4)
    except Exception as e:  # malformed JSON, not a notebook, unreadable file
        raise BuildError(f"{path}: cannot read notebook: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def _source_notebook(slug: str, solutions_dir: Path) -> Path:
    return Path(solutions_dir) / slug / f"{slug}.ipynb"


def _extra_files(slug: str, solutions_dir: Path) -> list[Path]:
    """Non-notebook files of a solutions folder, relative to it, sorted."""
    root = Path(solutions_dir) / slug
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_NAMES for part in rel.parts) or path.suffix == ".ipynb" or path.suffix == ".pyc":
            continue
        if path.is_file():
            files.append(rel)
    return files


def render(slug: str, solutions_dir: Path = SOLUTIONS, exam: bool = False) -> str:
    """The chapter notebook's text, built in memory."""
    source = _source_notebook(slug, solutions_dir)
    if not source.is_file():
        raise BuildError(f"{source}: no such notebook")
    try:
        return dumps(build_notebook(read_source(source), exam=exam))
    except BuildError as e:
        if str(e).startswith(str(source)):
            raise
        raise BuildError("\n".join(f"{source}: {line}" for line in str(e).splitlines())) from None


def build_chapter(slug: str, solutions_dir: Path = SOLUTIONS, chapters_dir: Path = CHAPTERS,
                  exam: bool = False) -> Path:
    """Write chapters/<slug>/<slug>.ipynb (and copy the folder's other files; in an exam build,
    all but the question bank); return its path. Files are only rewritten when their content
    changes."""
    text = render(slug, solutions_dir, exam=exam)
    if not exam:
        _update_exercise_index(slug, solutions_dir)
    out_dir = Path(chapters_dir) / slug
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{slug}.ipynb"
    data = text.encode("utf-8")
    if not target.is_file() or target.read_bytes() != data:
        target.write_bytes(data)
    for rel in _extra_files(slug, solutions_dir):
        if exam and rel.name == BANK_NAME:
            continue
        src, dst = Path(solutions_dir) / slug / rel, out_dir / rel
        if not dst.is_file() or dst.read_bytes() != src.read_bytes():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    return target


def _index_problem(slug: str, solutions_dir: Path) -> Optional[str]:
    """Why utils/assets/exercises.json does not match this chapter's headings (None: it does, or
    the solutions are not the repository's own, whose index is not ours to write)."""
    if Path(solutions_dir).resolve() != SOLUTIONS.resolve():
        return None
    entry = exercise_index.index_entry(read_source(_source_notebook(slug, solutions_dir)))
    if exercise_index.read_index().get(slug[:2]) != entry:
        return f"{slug}: OUT OF SYNC {exercise_index.INDEX} (run: python -m utils.build {slug})"
    return None


def _update_exercise_index(slug: str, solutions_dir: Path) -> None:
    """Record the chapter's exercise headings in the shipped index (the repository's solutions only)."""
    if _index_problem(slug, solutions_dir) is None:
        return
    index = exercise_index.read_index()
    index[slug[:2]] = exercise_index.index_entry(read_source(_source_notebook(slug, solutions_dir)))
    exercise_index.INDEX.write_text(exercise_index.dumps_index(index))


def discover(solutions_dir: Path = SOLUTIONS) -> list[str]:
    """Slugs of all chapter folders, in course order: the course registry's chapters for the
    repository's own solutions (tests/test_course.py proves each has its folder), the folders found
    for any other solutions directory (a course author's scratch copy, the tests' fixtures)."""
    from utils import course

    if Path(solutions_dir).resolve() == SOLUTIONS.resolve():
        return [ch.slug for ch in course.CHAPTERS]
    root = Path(solutions_dir)
    return sorted(p.name for p in root.glob("[0-9][0-9]_*") if p.is_dir()) if root.is_dir() else []


def resolve(names: list[str] | None, solutions_dir: Path = SOLUTIONS) -> list[str]:
    """Map slugs or bare numbers ("03") to slugs; ValueError names the ones that match nothing."""
    known = discover(solutions_dir)
    if not names:
        return known
    slugs, unknown = [], []
    for name in names:
        name = Path(name.rstrip("/")).name  # tolerate "solutions/03_x/"
        matches = [s for s in known if s == name or s.split("_", 1)[0] == name]
        if len(matches) == 1:
            slugs.append(matches[0])
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unknown chapter(s): {', '.join(unknown)} (known: {', '.join(known) or 'none'})")
    return list(dict.fromkeys(slugs))


# --------------------------------------------------------------------------- --check


def _cell_lines(text: str) -> list[str]:
    """Cell sources with a header per cell; falls back to the raw text if it is not a notebook."""
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception:
        return text.splitlines()
    lines = []
    for i, cell in enumerate(nb.cells):
        lines.append(f"# ---- cell {i} [{cell.cell_type}]")
        lines.extend(cell.source.splitlines())
    return lines


def _diff(committed: str, built: str, name: str) -> list[str]:
    """Short unified diff of cell sources; of the raw JSON when only metadata differs."""
    a, b = _cell_lines(committed), _cell_lines(built)
    if a == b:
        a, b = committed.splitlines(), built.splitlines()
    diff = list(difflib.unified_diff(a, b, f"committed/{name}", f"built/{name}", n=2, lineterm=""))
    if len(diff) > DIFF_LINES:
        diff = diff[:DIFF_LINES] + [f"... ({len(diff) - DIFF_LINES} more diff lines)"]
    return diff


def _check_chapter(slug: str, solutions_dir: Path, chapters_dir: Path) -> tuple[str, list[str], list[str]]:
    """(status, problems, diff lines) for one chapter; reads only."""
    try:
        text = render(slug, solutions_dir)
    except BuildError as e:
        return "ERROR", [f"{slug}: cannot build: {e}"], []
    out_dir = Path(chapters_dir) / slug
    target = out_dir / f"{slug}.ipynb"
    if not target.is_file():
        return "MISSING", [f"{slug}: MISSING {target}"], []
    problems, diff = [], []
    index_problem = _index_problem(slug, solutions_dir)
    if index_problem:
        problems.append(index_problem)
    committed = target.read_bytes()
    if committed != text.encode("utf-8"):
        problems.append(f"{slug}: OUT OF SYNC {target} (run: python -m utils.build {slug})")
        diff = _diff(committed.decode("utf-8", errors="replace"), text, target.name)
    for rel in _extra_files(slug, solutions_dir):
        dst = out_dir / rel
        if not dst.is_file():
            problems.append(f"{slug}: MISSING {dst}")
        elif dst.read_bytes() != (Path(solutions_dir) / slug / rel).read_bytes():
            problems.append(f"{slug}: OUT OF SYNC {dst}")
    if not problems:
        return "ok", [], []
    status = "OUT OF SYNC" if any("OUT OF SYNC" in p for p in problems) else "MISSING"
    return status, problems, diff


def check(slugs: list[str] | None = None, solutions_dir: Path = SOLUTIONS,
          chapters_dir: Path = CHAPTERS) -> list[str]:
    """Problems that make the committed chapters differ from a fresh build; empty when in sync."""
    problems = []
    for slug in resolve(slugs, solutions_dir):
        problems += _check_chapter(slug, solutions_dir, chapters_dir)[1]
    return problems


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", metavar="SLUG_OR_NN",
                        help="e.g. 03 or 03_copying_and_composition; default: all")
    parser.add_argument("--check", action="store_true", help="compare with the committed chapters, write nothing")
    parser.add_argument("--exam", action="store_true",
                        help="an instructor's graded release: no answer keys, no full-code hints (needs --out)")
    parser.add_argument("--out", type=Path, help="where --exam writes its chapters (a folder outside chapters/)")
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--chapters-dir", type=Path, default=CHAPTERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.exam and (args.out is None or args.check):
        parser.error("--exam writes a release: give --out DIR (and no --check)")
    if args.out is not None and not args.exam:
        parser.error("--out is for --exam; the normal build writes chapters/")
    if args.exam and args.out.resolve() in (CHAPTERS.resolve(), args.chapters_dir.resolve()):
        parser.error(f"--exam must not overwrite the committed chapters; choose another --out than {args.out}")

    try:
        slugs = resolve(args.chapters, args.solutions)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not slugs:
        print(f"no chapters found in {args.solutions}")
        return 0

    failed = False
    for slug in slugs:
        if args.check:
            status, problems, diff = _check_chapter(slug, args.solutions, args.chapters_dir)
            print(f"{slug}: {status}")
            for line in (problems if status != "ok" else []) + diff:
                print(f"    {line}")
            failed |= status != "ok"
        else:
            try:
                path = build_chapter(slug, args.solutions, args.out if args.exam else args.chapters_dir,
                                     exam=args.exam)
            except BuildError as e:
                print(f"{slug}: error\n{e}", file=sys.stderr)
                failed = True
                continue
            print(f"{slug}: built {_display(path)}")
    return 1 if failed else 0


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
