"""Tripwires on the reference implementations, inside a submission's process.

A student can answer an exercise by calling the course's own reference (``from utils.attention
import attention_pattern``, an alias, ``importlib``, ``getattr(module, "path_" + "logits")``, the
check object's ``.reference``, a copy of the function object, a call from inside their own
function). Before any student code runs, ``install`` replaces every reference of the chapter being
graded, wherever the course package holds it (module globals, the checks' Exercise objects,
closures), by a wrapper that notes its use when it is called from outside the course package. The
runner clears the note before each graded call and sends it back with the result; the grader then
scores that case 0 and flags the row ``used reference: <name>``.

Course helpers that call a reference internally (plots, experiments) are not flagged: only a call
whose immediate caller is code outside the package counts. ``inspect.getsource`` on a reference
gives the wrapper's source, and reading the package's ``.py`` files from student code is refused
by ``block_source_reads`` (imports still read them).

Not covered (a determined attacker with time to read this file): digging the original out of the
wrapper's closure, or out of the garbage collector.
"""
from __future__ import annotations

import gc
import importlib
import os
import sys
import types
from typing import Callable

import utils

PACKAGE_DIR = os.path.dirname(os.path.realpath(utils.__file__))


def _in_package(filename: str) -> bool:
    return os.path.realpath(filename).startswith(PACKAGE_DIR + os.sep) if filename.startswith("/") else False


def _course_code(filename: str) -> bool:
    """Code of the course package that may call a reference: not the grader's own runner, which
    calls the student's function (when that function IS the reference, the runner is its caller)."""
    grading = os.path.join(PACKAGE_DIR, "grading") + os.sep
    return _in_package(filename) and not os.path.realpath(filename).startswith(grading)


def references(checks_module: str) -> dict[str, list]:
    """{exercise name: [function objects]}: each Exercise's reference in the checks module, and
    every module-level function of the course package with the exercise's name."""
    from utils.checks.core import Exercise

    module = importlib.import_module(checks_module)
    found: dict[str, list] = {}
    for value in vars(module).values():
        if isinstance(value, Exercise) and isinstance(value.reference, types.FunctionType):
            found.setdefault(value.name, []).append(value.reference)
    for mod_name, mod in list(sys.modules.items()):
        in_course = mod_name == "utils" or mod_name.startswith("utils.")
        if not in_course or mod_name.startswith(("utils.grading", "utils.checks")):
            continue
        for name in found:
            fn = getattr(mod, name, None) if isinstance(mod, types.ModuleType) else None
            if isinstance(fn, types.FunctionType) and (fn.__module__ or "").startswith("utils.") \
                    and all(fn is not f for f in found[name]):
                found[name].append(fn)
    return found


def _wrapper(name: str, original: Callable, used: set) -> Callable:
    def reference_tripwire(*args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if not _course_code(caller):
            used.add(name)
        return original(*args, **kwargs)

    reference_tripwire.__name__ = original.__name__
    reference_tripwire.__qualname__ = original.__qualname__
    reference_tripwire.__doc__ = original.__doc__
    reference_tripwire.__module__ = original.__module__
    return reference_tripwire  # no __wrapped__: inspect.unwrap must not lead back to the original


def _replace_everywhere(original: Callable, wrapper: Callable) -> None:
    """Point every dict and closure cell that holds ``original`` at ``wrapper`` (but the
    wrapper's own cell, which must keep the original)."""
    own = {id(cell) for cell in wrapper.__closure__ or ()}
    for holder in gc.get_referrers(original):
        if id(holder) in own:
            continue
        if isinstance(holder, dict):
            for key, value in list(holder.items()):
                if value is original:
                    holder[key] = wrapper
        elif isinstance(getattr(holder, "__dict__", None), dict) and not isinstance(holder, (type, types.ModuleType)):
            # An object whose attributes live inline (CPython 3.11+ has no separate dict to find),
            # such as a check's Exercise record.
            for key, value in list(vars(holder).items()):
                if value is original:
                    object.__setattr__(holder, key, wrapper)
        elif type(holder).__name__ == "cell":
            try:
                if holder.cell_contents is original:
                    holder.cell_contents = wrapper
            except ValueError:  # an empty cell
                pass


def install(checks_module: str) -> set:
    """Wrap the chapter's references; returns the set the wrappers add exercise names to."""
    used: set = set()
    for name, functions in references(checks_module).items():
        for original in functions:
            wrapper = _wrapper(name, original, used)
            _replace_everywhere(original, wrapper)
    return used


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
