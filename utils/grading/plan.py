"""What there is to grade in a chapter, read from its TRUSTED solution notebook.

Each autograded test cell (nbgrader ``grade`` without ``solution``) may only hold calls of the form
``check.NAME(symbol, <literals>, cases=<literal>)``; they are parsed with ``ast`` (never executed).
Each call is then "planned": the trusted check function is run in this process under
``grading_session("plan")`` with a stand-in for the student's function, which records, case by
case, the exact arguments (and torch RNG state) the student's function would receive. Those
recordings are the requests sent to a submission's process; the expected values are never
computed here and never leave the grader.
"""
from __future__ import annotations

import ast
import copy
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from nbgrader.preprocessors import ClearHiddenTests
from nbgrader.utils import compute_checksum

from utils import build
from utils.checks import core
from utils.checks.questions import trusted_bank
from utils.grading import codec


class PlanError(Exception):
    """The trusted notebook or its checks cannot be graded; the message says where and why."""


@dataclass
class Request:
    """One thing a submission's process must produce: the output of ``symbol(*args, **kwargs)``
    (kind "call", with torch's RNG set to ``rng`` first), or the value of ``symbol`` ("value")."""

    symbol: str
    kind: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    rng: Optional[torch.Tensor] = None


@dataclass
class CheckCall:
    """One ``check.NAME(symbol, ...)`` line of a graded cell."""

    check: str
    symbol: str
    args: tuple
    kwargs: dict
    hidden: bool
    line: int
    kind: str = ""  # "function" or "choice"
    module: str = ""  # the checks module, e.g. utils.checks.ch00
    requests: list = field(default_factory=list)  # request indices, one per case, in order
    n_cases: int = 0


@dataclass
class GradedCell:
    grade_id: str
    points: float
    index: int
    calls: list


@dataclass
class ChapterPlan:
    slug: str
    number: str
    trusted_path: Path
    module: str  # e.g. utils.checks.ch00
    cells: list  # GradedCell, in notebook order
    requests: list  # Request
    released: dict  # grade_id -> released cell (nbformat node) for every nbgrader cell
    test_ids: set  # grade_ids of the autograded test cells
    manual: list  # grade_ids of graded cells this grader cannot score (free text, markdown)
    max_points: float
    imports: list = field(default_factory=list)  # modules the chapter imports: loaded before student code
    questions: dict = field(default_factory=dict)  # the trusted question bank beside the solution notebook

    @property
    def grade_ids(self) -> set:
        return set(self.released)

    def symbols(self) -> list[str]:
        return sorted({r.symbol for r in self.requests})


# --------------------------------------------------------------------------- parsing


def _is_test_cell(cell) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return cell.get("cell_type") == "code" and bool(meta.get("grade")) and not meta.get("solution")


def _parse(source: str, where: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError:
        pass
    try:  # IPython magics in a trusted cell
        from IPython.core.inputtransformer2 import TransformerManager

        return ast.parse(TransformerManager().transform_cell(source))
    except Exception as e:
        raise PlanError(f"{where}: cannot parse: {e}") from None


def _check_aliases(nb) -> dict[str, str]:
    """Names the notebook binds to a checks module: {"check": "utils.checks.ch00"}."""
    aliases = {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        try:
            tree = _parse(cell.source, f"cell {i}")
        except PlanError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "utils.checks":
                for a in node.names:
                    aliases[a.asname or a.name] = f"utils.checks.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("utils.checks.") and a.asname:
                        aliases[a.asname] = a.name
    return aliases


def _imports(nb) -> list[str]:
    """Every module the trusted notebook imports (and ``from X import y`` submodules candidates)."""
    names: list[str] = []
    for cell in nb.cells:
        if cell.cell_type != "code" or _is_test_cell(cell):
            continue
        try:
            tree = _parse(cell.source, "")
        except PlanError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.append(node.module)
                names += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
    return list(dict.fromkeys(names))


def _hidden_lines(source: str) -> set[int]:
    hidden = ClearHiddenTests()
    lines, inside = set(), False
    for n, line in enumerate(source.split("\n"), start=1):
        if hidden.begin_test_delimeter in line:
            inside = True
        elif hidden.end_test_delimeter in line:
            inside = False
        elif inside:
            lines.add(n)
    return lines


def _literal(node: ast.AST, where: str) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise PlanError(f"{where}: argument {ast.unparse(node)!r} is not a literal; a graded test cell may "
                        "only pass the student's symbol and literal values to a check") from None


def _face_module(slug: str, aliases: dict[str, str]) -> str:
    """The chapter's checks module (its face, ``utils.checks.chNN``: the tripwire reads its EXERCISES),
    from the course registry; a notebook outside the registry must bind exactly one checks module.
    A notebook may bind others too (a part such as ``utils.checks.ch05_training`` for its constants):
    its test cells still name the module of each call."""
    from utils.course import chapter

    try:
        return chapter(slug).checks
    except ValueError:
        modules = sorted(set(aliases.values()))
        if len(modules) != 1:
            raise PlanError(f"{slug}: not a chapter of the course, and its notebook binds {len(modules)} checks "
                            f"modules ({', '.join(modules) or 'none'}); bind exactly one") from None
        return modules[0]


def parse_test_cell(source: str, aliases: dict[str, str], where: str) -> list[tuple[str, CheckCall]]:
    """[(module, CheckCall)] for every statement of a graded test cell."""
    hidden = _hidden_lines(source)
    calls = []
    for stmt in _parse(source, where).body:
        at = f"{where}, line {stmt.lineno}"
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and isinstance(call.func.value, ast.Name) and call.func.value.id in aliases):
            raise PlanError(f"{at}: {ast.unparse(stmt)[:80]!r} is not a check call; utils.grading grades "
                            f"cells made of `check.NAME(symbol, ...)` calls only")
        if not call.args or not isinstance(call.args[0], ast.Name):
            raise PlanError(f"{at}: the first argument of {call.func.attr} must be the student's symbol")
        if any(k.arg is None for k in call.keywords):
            raise PlanError(f"{at}: **kwargs in a check call")
        calls.append((aliases[call.func.value.id], CheckCall(
            check=call.func.attr, symbol=call.args[0].id,
            args=tuple(_literal(a, at) for a in call.args[1:]),
            kwargs={k.arg: _literal(k.value, at) for k in call.keywords},
            hidden=stmt.lineno in hidden, line=stmt.lineno)))
    if not calls:
        raise PlanError(f"{where}: a graded test cell without any check call")
    return calls


# --------------------------------------------------------------------------- planning a check call


class _PlanProbe:
    """Stands in for the student's function in plan mode: records each case's call and stops."""

    def __init__(self, check: str):
        self.check = check
        self.calls: dict[tuple, tuple] = {}

    def __call__(self, *args, **kwargs):
        session = core._SESSION.get()
        if session is None or session.current is None:
            raise PlanError(f"{self.check}: the check calls the student's function outside run_check's cases")
        key = (len(session.exercises) - 1, session.current[1])
        if key in self.calls:
            raise PlanError(f"{self.check}: the check calls the student's function more than once in one case")
        self.calls[key] = (args, kwargs, torch.get_rng_state())
        raise core.StopCheck


def plan_call(module, call: CheckCall, requests: list, value_requests: dict, where: str,
              value_owners: Optional[dict] = None, cell_id: str = "") -> None:
    """Fill ``call.kind``, ``call.requests`` and ``call.n_cases`` by running the check in plan mode."""
    value_owners = {} if value_owners is None else value_owners
    fn = getattr(module, call.check, None)
    if not callable(fn):
        raise PlanError(f"{where}: {module.__name__} has no check {call.check!r}")
    probe = _PlanProbe(call.check)
    with core.grading_session("plan") as session:
        try:
            fn(probe, *call.args, **call.kwargs)
        except core.StopCheck:
            raise PlanError(f"{where}: {call.check} called the student's function outside a case") from None
        except PlanError:
            raise
        except Exception as e:
            raise PlanError(f"{where}: planning {call.check} failed: {type(e).__name__}: {e}") from None
    if session.kind is None:
        raise PlanError(f"{where}: {module.__name__}.{call.check} calls neither run_check nor check_choice, "
                        "so it cannot be graded outside the student's process (see utils/checks/core.py)")
    call.kind = session.kind
    if call.kind == "choice":
        if not session.keyed:  # the student's own self-check line: the keyed hidden call scores
            call.n_cases, call.requests = 0, []
            return
        if not call.hidden:
            raise PlanError(f"{where}: {call.check} carries its key outside the HIDDEN TESTS markers, so "
                            "the released chapter would show the answer")
        call.n_cases = 1
        owner = value_owners.setdefault(call.symbol, cell_id)
        if owner != cell_id:  # the grader reads a value once, after the whole notebook has run
            raise PlanError(f"{where}: cells {owner} and {cell_id} both grade the variable {call.symbol!r}; the "
                            "grader reads it once, at the end, so give each question a variable of its own")
        if call.symbol not in value_requests:
            value_requests[call.symbol] = len(requests)
            requests.append(Request(call.symbol, "value"))
        call.requests = [value_requests[call.symbol]]
        return
    for e, (ex, n) in enumerate(session.exercises):
        for i in range(n):
            if (e, i) not in probe.calls:
                raise PlanError(f"{where}: {call.check} never called the student's function in case {i + 1} of "
                                f"{ex.name}")
            args, kwargs, rng = probe.calls[(e, i)]
            tensors: dict = {}
            tree = codec.encode((args, kwargs), tensors)
            if codec.is_opaque(codec.decode(tree, tensors)):
                raise PlanError(f"{where}: {ex.name} case {i + 1} passes the student's function a value that "
                                "cannot be sent as data (tensors, numbers, strings, tuples/lists/dicts only)")
            call.requests.append(len(requests))
            requests.append(Request(call.symbol, "call", tuple(args), dict(kwargs), rng))
            call.n_cases += 1


# --------------------------------------------------------------------------- the chapter


def trusted_notebook(slug: str, solutions_dir: Path) -> Path:
    return Path(solutions_dir) / slug / f"{slug}.ipynb"


def grade_ids_of(nb) -> set[str]:
    return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.get("cells", [])} - {None}


def build_plan(chapter: str, solutions_dir: Path = build.SOLUTIONS) -> ChapterPlan:
    """Everything the grader needs to know about a chapter (PlanError / ValueError when it cannot)."""
    slug = build.resolve([chapter], solutions_dir)[0]
    path = trusted_notebook(slug, solutions_dir)
    try:
        nb = build.read_source(path)
        released_nb = build.build_notebook(nb)
    except build.BuildError as e:
        raise PlanError(str(e)) from None
    released = {}
    for cell in released_nb.cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id:
            released[grade_id] = cell
    aliases = _check_aliases(nb)
    cells, requests, value_requests, manual, test_ids = [], [], {}, [], set()
    value_owners: dict = {}  # value symbol -> the graded cell that reads it
    for i, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if not meta.get("grade"):
            continue
        grade_id = meta["grade_id"]
        if not _is_test_cell(cell):
            manual.append(grade_id)  # free-text answers: graded by hand in nbgrader's formgrader
            continue
        test_ids.add(grade_id)
        where = f"{path.name} cell {i} ({grade_id})"
        graded = GradedCell(grade_id, float(meta.get("points", 0)), i, [])
        for module_name, call in parse_test_cell(cell.source, aliases, where):
            try:
                module = importlib.import_module(module_name)
            except ImportError as e:
                raise PlanError(f"{where}: cannot import {module_name}: {e}") from None
            call.module = module_name
            plan_call(module, call, requests, value_requests, f"{where}, line {call.line}", value_owners, grade_id)
            graded.calls.append(call)
        if not any(c.n_cases for c in graded.calls):
            raise PlanError(f"{where}: nothing in this cell is scored (a multiple-choice cell needs a hidden "
                            "`check.NAME(symbol, key=\"...\")` line)")
        cells.append(graded)
    return ChapterPlan(
        slug=slug, number=slug.split("_", 1)[0], trusted_path=path, module=_face_module(slug, aliases), cells=cells,
        requests=requests, released=released, test_ids=test_ids, manual=manual,
        max_points=sum(c.points for c in cells), imports=_imports(nb), questions=trusted_bank(path))


# --------------------------------------------------------------------------- comparing a submission


def released_checksum(cell) -> Optional[str]:
    return cell.get("metadata", {}).get("nbgrader", {}).get("checksum")


def cell_checksum(cell) -> Optional[str]:
    """nbgrader's checksum of a submitted cell, None when its metadata is too broken to compute it."""
    try:
        cell = copy.deepcopy(cell)
        return compute_checksum(cell)
    except Exception:
        return None


def encode_requests(plan: ChapterPlan) -> bytes:
    """The second frame every submission's process reads: the calls to make (same for all)."""
    tensors: dict = {}
    out = []
    for req in plan.requests:
        item = {"symbol": req.symbol, "kind": req.kind}
        if req.kind == "call":
            item["call"] = codec.encode((req.args, req.kwargs), tensors)
            if req.rng is not None:
                key = f"rng{len(out)}"
                tensors[key] = req.rng
                item["rng"] = key
        out.append(item)
    return codec.pack_frame({"requests": out, "imports": plan.imports, "checks_module": plan.module},
                            codec.tensors_to_bytes(tensors))
