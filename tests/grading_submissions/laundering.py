"""Laundering attacks on the tripwire, generated from the course package, run in-process.

    python tests/grading_submissions/laundering.py NN    (prints one JSON report)

Run in a fresh process per chapter (``install`` rewires the whole process, as in a submission's
sandbox). It installs the tripwire of chapter NN exactly as the runner does, then plays student
code against it, each piece compiled from source as a notebook cell would be (not in the course
package) and called under the runner's mark (``Tripwire.graded``) on the exercise's own inputs:

* SITES: every call site in ``utils/`` (outside the checks and the grader) whose callee is named
  like a reference of the chapter, found with ``ast``. The attack is a student function that reaches
  the reference through the course code that holds that call: the callee expression of the site,
  evaluated in the namespace of the helper that contains it (``ref.toy_forward`` in
  ``utils.superposition.model``, ``ex.logit_weights`` in ``utils.features.dashboard``, ...), that
  is, the very object the helper calls at run time. A site whose callee does not resolve to a
  tripwire is reported (``unwired``).
* CHEATS: for every graded exercise, the cheats of issue 9 and 31: ``from M import f``, a module
  alias, ``importlib`` + ``getattr``, the check's ``.reference``, a closure over the reference, a
  copy of the function object (``types.FunctionType`` from its code, globals and closure).
* HONEST: the same objects called outside any graded call (a plot, a demo) leave no note.

The report: {"sites": [...], "cheats": [...], "honest_notes": [...]}, each attack with the
exercise names its graded call noted (``used``); the test asserts every one is tainted.
"""
from __future__ import annotations

import ast
import importlib
import json
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _student(source: str, name: str, env: dict):
    """A function defined by student code (compiled as a notebook cell, outside the package)."""
    namespace = dict(env)
    exec(compile(source, "<ipython-input-1>", "exec"), namespace)
    return namespace[name]


def _inputs(records) -> dict:
    try:
        return dict(records[0].make_inputs(0))
    except Exception:  # a check whose inputs need a model we do not load here: calling is enough
        return {}


def _call_graded(wire, fn, kwargs: dict) -> list:
    """Call ``fn`` as the runner calls a student's function: under the mark; errors are the
    student's (the reference noted its use before running)."""
    import torch

    with wire.graded() as used:
        try:
            with torch.no_grad():
                fn(**kwargs)
        except BaseException:  # noqa: BLE001 - whatever the attack raised, the note is what counts
            pass
        return sorted(used)


def call_sites(reference_names: dict) -> list[dict]:
    """Calls in utils/ (not checks, not grading) of a function named like a reference:
    [{"module", "function", "callee", "line", "exercise"}]."""
    sites = []
    for path in sorted((REPO / "utils").rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[1] in ("checks", "grading"):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        stack: list[str] = []

        class Visitor(ast.NodeVisitor):
            def visit_FunctionDef(self, node):
                stack.append(node.name)
                self.generic_visit(node)
                stack.pop()

            visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

            def visit_Call(self, node):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
                if name in reference_names and stack:
                    sites.append({"module": module, "function": ".".join(stack), "callee": ast.unparse(func),
                                  "line": node.lineno, "exercise": reference_names[name]})
                self.generic_visit(node)

        Visitor().visit(ast.parse(path.read_text()))
    return sites


def _resolve(site: dict, module: types.ModuleType):
    """The object a call site's callee expression names at run time: evaluated in its module, or,
    for a name the helper imports inside its body (``from utils.sae.exercises import
    ce_loss_recovered``: a module-level import would be circular), read where that import reads it."""
    try:
        return eval(site["callee"], vars(module))
    except NameError:
        tree = ast.parse(Path(module.__file__).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == site["callee"]:
                        source = importlib.import_module("." * node.level + (node.module or ""),
                                                         package=module.__package__)
                        return getattr(source, alias.name)
        raise


# Real calls of a few helpers whose arguments are plain data: the helper itself runs under the mark.
REAL_HELPER_CALLS = {
    "05": [("utils.sae.metrics", "ce_loss_recovered_from", "ce_loss_recovered",
            "def ce_loss_recovered(ce_clean, ce_sae, ce_zero_ablation):\n"
            "    return ce_loss_recovered_from({'ce_clean': ce_clean, 'ce_sae': ce_sae, "
            "'ce_zero_ablation': ce_zero_ablation})\n")],
}


def main(chapter: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from utils.grading import tripwire

    checks = f"utils.checks.ch{chapter}"
    face = importlib.import_module(checks)
    records = tripwire.exercise_records(checks)
    refs = tripwire.references(checks)
    # Names the course's helpers call references by: course functions' own names (not the checks'
    # adapters, which no helper calls).
    by_name: dict = {}
    for exercise, functions in refs.items():
        for fn in functions:
            if not fn.__module__.startswith("utils.checks"):
                by_name.setdefault(fn.__name__, exercise)
    wire = tripwire.install(checks)
    report: dict = {"sites": [], "cheats": [], "honest_notes": [], "wired": {}}
    for exercise, recs in records.items():
        report["wired"][exercise] = all(tripwire.is_tripwire(r.reference) for r in recs)

    # ------------------------------------------------------------------ call sites in the course package
    for site in call_sites(by_name):
        entry = dict(site)
        module = importlib.import_module(site["module"])
        try:
            callee = _resolve(site, module)  # what the helper calls at run time
        except Exception as e:  # a name bound some other way: reported, the test fails
            entry["used"], entry["error"] = [], f"unresolved: {type(e).__name__}: {e}"
            report["sites"].append(entry)
            continue
        entry["wired"] = tripwire.is_tripwire(callee)
        attack = _student("def laundered(**kw):\n    return helper_call(**kw)\n", "laundered",
                          {"helper_call": callee})
        entry["used"] = _call_graded(wire, attack, _inputs(records[site["exercise"]]))
        report["sites"].append(entry)
        report["honest_notes"] += _honest(wire, callee, _inputs(records[site["exercise"]]))

    for module_name, helper, exercise, source in REAL_HELPER_CALLS.get(chapter, []):
        fn = _student(source, exercise, {helper: getattr(importlib.import_module(module_name), helper)})
        report["sites"].append({"module": module_name, "function": helper, "callee": "(real call)", "line": 0,
                                "exercise": exercise, "wired": True,
                                "used": _call_graded(wire, fn, _inputs(records[exercise]))})

    # ------------------------------------------------------------------ the classic cheats, every exercise
    for exercise, recs in records.items():
        course = [f for f in refs[exercise] if not f.__module__.startswith("utils.checks")]
        kwargs = _inputs(recs)
        attacks = {}
        home = getattr(face, exercise).__module__  # where the check and its record live
        attacks["check .reference"] = _student(
            f"import {home} as _m\n"
            f"_rec = next(v for v in vars(_m).values() if getattr(v, 'name', None) == {exercise!r} "
            f"and hasattr(v, 'reference'))\n"
            f"def {exercise}(**kw):\n    return _rec.reference(**kw)\n", exercise, {})
        for fn in course:
            mod, name = fn.__module__, fn.__name__
            attacks[f"import {mod}.{name}"] = _student(f"from {mod} import {name}\n", name, {})
            attacks[f"alias {mod}.{name}"] = _student(f"import {mod} as _m\nf = _m.{name}\n", "f", {})
            attacks[f"getattr {mod}.{name}"] = _student(
                f"import importlib\nf = getattr(importlib.import_module({mod!r}), {name[:2]!r} + {name[2:]!r})\n",
                "f", {})
            attacks[f"closure {mod}.{name}"] = _student(
                f"from {mod} import {name} as _r\ndef f(*a, **k):\n    return _r(*a, **k)\n", "f", {})
            attacks[f"copy {mod}.{name}"] = _student(
                f"import types, {mod} as _m\n_f = _m.{name}\n"
                "f = types.FunctionType(_f.__code__, _f.__globals__, 'mine', _f.__defaults__, _f.__closure__)\n",
                "f", {})
        for what, fn in attacks.items():
            report["cheats"].append({"exercise": exercise, "attack": what,
                                     "used": _call_graded(wire, fn, kwargs)})
        for fn in course:
            report["honest_notes"] += _honest(wire, getattr(importlib.import_module(fn.__module__), fn.__name__),
                                              kwargs)
    return report


def _honest(wire, fn, kwargs: dict) -> list:
    """Call a reference outside any graded call (a demo cell): the note must stay empty."""
    wire.used.clear()
    try:
        fn(**kwargs)
    except Exception:
        pass
    return sorted(wire.used)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(json.dumps(main(sys.argv[1])))
