"""Tripwires on the reference implementations, inside a submission's process.

A student can answer an exercise with the course's own reference: import it, alias it, reach it
with ``importlib`` or ``getattr``, take the check's ``.reference``, copy the function object, close
over it, or launder it through a course class or helper that calls it (chapter 04's ``ToyModel``
calls ``toy_forward``, chapter 05's ``ce_loss_recovered_from`` calls ``ce_loss_recovered``, ...).
The rule does not depend on who calls the reference:

    a graded case is tainted when a reference of the graded chapter runs anywhere beneath the
    student's graded call (while the call runs, or while its output is encoded).

Before any student code runs, ``install`` replaces every reference of the chapter, wherever the
course package holds it (module globals, the checks' Exercise records, closures), by a wrapper
that notes its use while the runner's MARK is set. The runner sets the mark around each call of a
student's function (``Tripwire.graded``) and sends the note back with the result; the grader then
scores that case 0 and flags the row ``used reference: <name>``. Outside the graded calls (a
notebook's demo cells, plots, experiments) the course's helpers and references run freely.

What is a reference (``references``): each graded exercise the checks module DECLARES in its
``EXERCISES`` (questions aside) resolves to its Exercise record(s), found in the module that
defines the exercise's check function (so no re-export in the chapter's face is load-bearing); a
declared exercise without a record is an error, never a silent gap. Its references are the
record's ``reference``; where that is a thin adapter written in ``utils.checks`` (chapter 00's
``_reference`` calls ``utils.models.transformer.lm_cross_entropy``), the course functions outside
``utils.checks`` that the adapter names (a global, an attribute of a course module it imports, a
closure cell); and every module-level function of the course package with the exercise's name.

``inspect.getsource`` on a reference gives the wrapper's source, and reading the package's ``.py``
files from student code is refused by ``block_source_reads`` (imports still read them).

Not covered (a determined attacker with time to read this file): digging the original, the mark
or the note out of the wrapper's closure or the garbage collector; calling a reference at cell
time, before any graded call, on inputs guessed in advance, and returning the memoised answer.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import os
import sys
import types
from typing import Callable, Iterator

import utils

PACKAGE_DIR = os.path.dirname(os.path.realpath(utils.__file__))


def _in_package(filename: str) -> bool:
    return os.path.realpath(filename).startswith(PACKAGE_DIR + os.sep) if filename.startswith("/") else False


def _course_function(value) -> bool:
    """A plain function of the course package outside its checks and its grader."""
    module = getattr(value, "__module__", None) or ""
    return isinstance(value, types.FunctionType) and module.startswith("utils.") \
        and not module.startswith(("utils.checks", "utils.grading"))


def is_question(check) -> bool:
    """Whether a checks module's ``check.NAME`` is a multiple-choice question (``core.question``)."""
    from utils.checks import core

    code = getattr(check, "__code__", None)
    return getattr(check, "__module__", None) == core.__name__ and code is not None and code.co_name == "ask"


def graded_exercises(checks_module: str) -> tuple[str, ...]:
    """The function exercises the checks module declares (its ``EXERCISES``, questions aside)."""
    module = importlib.import_module(checks_module)
    declared = getattr(module, "EXERCISES", None)
    if not isinstance(declared, (tuple, list)) or not all(isinstance(n, str) for n in declared):
        raise LookupError(f"{checks_module} declares no EXERCISES (a tuple of exercise names)")
    return tuple(n for n in declared if not is_question(getattr(module, n, None)))


def exercise_records(checks_module: str) -> dict[str, list]:
    """{declared exercise: [its Exercise records]}, each found in the module that defines the
    exercise's check function. LookupError for a declared exercise without a check or a record."""
    from utils.checks.core import Exercise

    module = importlib.import_module(checks_module)
    found: dict[str, list] = {}
    for name in graded_exercises(checks_module):
        check = getattr(module, name, None)
        home = sys.modules.get(getattr(check, "__module__", None) or "")
        if not callable(check) or home is None:
            raise LookupError(f"{checks_module} declares the exercise {name!r} but has no check function of that name")
        records = [v for v in vars(home).values() if isinstance(v, Exercise) and v.name == name]
        if not records:
            raise LookupError(f"{checks_module}: no Exercise record named {name!r} in {home.__name__}, where its "
                              "check is defined; the tripwire cannot cover it")
        found[name] = records
    return found


def _named_by(adapter: types.FunctionType) -> list:
    """The course functions (outside utils.checks) a thin reference adapter names: globals,
    attributes of course modules it holds, closure cells (one level: its own code and the code
    nested in it)."""
    def names(code: types.CodeType) -> set:
        out = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                out |= names(const)
        return out

    g, used = adapter.__globals__, names(adapter.__code__)
    out = []
    modules = [v for v in g.values() if isinstance(v, types.ModuleType) and v.__name__.startswith("utils.")]
    for name in sorted(used):
        candidates = [g.get(name)] + [getattr(m, name, None) for m in modules]
        out.extend(c for c in candidates if _course_function(c))
    for cell in adapter.__closure__ or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _course_function(value):
            out.append(value)
    return out


def references(checks_module: str) -> dict[str, list]:
    """{graded exercise: [function objects that are its reference]} (see the module's docstring)."""
    found: dict[str, list] = {}

    def add(name: str, fn) -> None:
        if isinstance(fn, types.FunctionType) and all(fn is not f for f in found.setdefault(name, [])):
            found[name].append(fn)

    for name, records in exercise_records(checks_module).items():
        for record in records:
            add(name, record.reference)
            if isinstance(record.reference, types.FunctionType) and \
                    (record.reference.__module__ or "").startswith("utils.checks"):
                for fn in _named_by(record.reference):
                    add(name, fn)
    for mod_name, mod in list(sys.modules.items()):
        in_course = mod_name == "utils" or mod_name.startswith("utils.")
        if not in_course or mod_name.startswith(("utils.grading", "utils.checks")) or \
                not isinstance(mod, types.ModuleType):
            continue
        for name in found:
            fn = getattr(mod, name, None)
            if _course_function(fn):
                add(name, fn)
    return found


class Tripwire:
    """The mark and the note of one submission's process (never a module global, so a submission
    cannot switch it off by importing this module)."""

    def __init__(self):
        self.inside = False  # set while a student's graded call (and its output's encoding) runs
        self.used: set = set()  # the exercises whose reference ran under the mark

    @contextlib.contextmanager
    def graded(self) -> Iterator[set]:
        """Around one graded call: clears the note, sets the mark; yields the note."""
        self.used.clear()
        self.inside = True
        try:
            yield self.used
        finally:
            self.inside = False


def _wrapper(name: str, original: Callable, wire: Tripwire) -> Callable:
    def reference_tripwire(*args, **kwargs):
        if wire.inside:
            wire.used.add(name)
        return original(*args, **kwargs)

    reference_tripwire.__name__ = original.__name__
    reference_tripwire.__qualname__ = original.__qualname__
    reference_tripwire.__doc__ = original.__doc__
    reference_tripwire.__module__ = original.__module__
    reference_tripwire.__is_tripwire__ = True
    return reference_tripwire  # no __wrapped__: inspect.unwrap must not lead back to the original


def is_tripwire(fn) -> bool:
    return getattr(fn, "__is_tripwire__", False) is True


def _replace_everywhere(wrappers: dict) -> None:
    """Point every dict, object attribute and closure cell that holds an original (``wrappers``:
    id(original) -> (original, wrapper)) at its wrapper, but the wrappers' own cells, which must keep
    the originals. One scan of the heap for all of them (``gc.get_referrers`` walks every object)."""
    own = {id(cell) for _, wrapper in wrappers.values() for cell in wrapper.__closure__ or ()}

    def swap(value):
        found = wrappers.get(id(value))
        return found[1] if found is not None and found[0] is value else None

    originals = [original for original, _ in wrappers.values()]
    for holder in gc.get_referrers(*originals):
        if id(holder) in own or holder is originals:
            continue
        if isinstance(holder, dict):
            for key, value in list(holder.items()):
                if (wrapper := swap(value)) is not None:
                    holder[key] = wrapper
        elif isinstance(getattr(holder, "__dict__", None), dict) and not isinstance(holder, (type, types.ModuleType)):
            # An object whose attributes live inline (CPython 3.11+ has no separate dict to find),
            # such as a check's Exercise record.
            for key, value in list(vars(holder).items()):
                if (wrapper := swap(value)) is not None:
                    object.__setattr__(holder, key, wrapper)
        elif type(holder).__name__ == "cell":
            try:
                if (wrapper := swap(holder.cell_contents)) is not None:
                    holder.cell_contents = wrapper
            except ValueError:  # an empty cell
                pass


def install(checks_module: str) -> Tripwire:
    """Wrap the chapter's references; returns the Tripwire whose ``graded()`` marks a graded call."""
    wire = Tripwire()
    wrappers = {id(original): (original, _wrapper(name, original, wire))
                for name, functions in references(checks_module).items() for original in functions}
    if wrappers:
        _replace_everywhere(wrappers)
    return wire


def block_source_reads(report: Callable[[str], None]) -> None:
    """Refuse opening the course package's Python source from code outside the package (imports
    and the package's own reads are allowed)."""

    def hook(event: str, args: tuple) -> None:
        if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.fsdecode(args[0])
        if not (path.endswith(".py") and _in_package(path)):
            return
        # Whose read is it? The nearest frame that is neither the standard library nor a
        # third-party package: the course package's own (a warning or traceback printing a line of
        # it) is allowed, student code is not; an import anywhere on the way is allowed.
        frame = sys._getframe(1)
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename.startswith("<frozen importlib") or ("importlib" in filename and "_bootstrap" in filename):
                return
            library = filename.startswith("<frozen") or (filename.startswith("/") and not _in_package(filename) and (
                filename.startswith(sys.base_prefix) or filename.startswith(sys.prefix)))
            if not library:
                if _in_package(filename):
                    return
                report(f"read the course's source {os.path.relpath(path, os.path.dirname(PACKAGE_DIR))}")
                raise PermissionError(f"reading the course's source is not allowed while grading: {path}")
            frame = frame.f_back

    sys.addaudithook(hook)
