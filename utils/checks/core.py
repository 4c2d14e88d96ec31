"""The self-check machinery every chapter's checks are built from.

A check runs the student's function on fresh, seeded inputs, compares with the reference, and on
a mismatch names the misconception by trying known-wrong variants on the same inputs. It prints
exactly one line on success, never writes to stderr (nbgrader scores any stderr as a failure),
and raises ``CheckFailure`` (an AssertionError) with the diagnosis otherwise.

Hidden tests call the same check with other seeds: ``check.per_token_loss(fn, cases=[11, 12])``.

Grading contract (what ``python -m utils.grading`` relies on; nothing to register)
-------------------------------------------------------------------------------
The sandboxed grader never runs a check in the student's process. It reads each graded cell of
the trusted solution notebook (``check.NAME(symbol, cases=[...])`` calls only), then drives the
very same check function in its own process with a stand-in for the student's function, in two
passes (see ``grading_session``): "plan" records the arguments each case hands the student's
function, the student's process computes the outputs for exactly those arguments, and "grade"
feeds them back and records a pass or a diagnosis per case. A chapter's check therefore works
with the grader for free when it follows the pattern every check here follows:

* a check function ``NAME(fn, cases: Cases = None)`` calls ``run_check(EXERCISE, fn_or_wrapper(fn),
  cases)`` (several run_check calls are fine; mixing them with check_choice in one check is not);
  a wrapper may adapt the calling convention or post-process the output (``nan_as_inf`` in checks/toolkit.py,
  the statistics in ch04) and may seed ``torch`` before the call (the torch RNG state is sent
  along; numpy's and ``random``'s are not), and must call the student's function exactly once per
  case, only from inside run_check's cases, with arguments computed from the case's inputs; what
  it does with the output (shape checks, statistics) runs in the trusted process;
* ``make_inputs(seed)`` and ``extra_inputs`` are deterministic (the grader computes them twice);
* a multiple-choice question ``NAME(answer, key=None)`` calls ``check_choice(CHAPTER, NAME, answer,
  key)``; its graded cell holds the self-check ``check.NAME(symbol)`` and, between the HIDDEN TESTS
  markers, ``check.NAME(symbol, key="b")``: only the keyed call is scored, and the key is read
  from the trusted notebook, never from this package (utils/checks/questions.py);
* the inputs ``make_inputs``/``extra_inputs`` produce are tensors, numbers, strings, None and
  tuples/lists/dicts of them (they are sent to the student's process as JSON + safetensors);
* a graded test cell holds only such calls (``check.NAME(symbol, literal args...)``), the hidden
  ones between the nbgrader HIDDEN TESTS markers.

``tests/test_grading.py::test_every_graded_cell_is_gradable`` plans every graded cell of every
solution notebook, so a check that breaks the contract fails there with the reason.

Longer than 400 lines because it is the one contract every check and the grader rely on (running
a check, naming a misconception, describing a difference, the grading session); a split would
scatter that contract over modules that all import each other.
"""
from __future__ import annotations

import hashlib
import math
import re
import sys
import traceback
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import torch

from utils import exercise_index, progress
from utils.checks import questions

Cases = Union[int, Iterable[int], None]


class CheckFailure(AssertionError):
    """A check did not pass; the message says why in the student's terms. ``case_index`` is the
    0-based index of the failing case in the check's list of cases (None: not tied to one case).
    A failure of a hard exercise's check also points to the hints under the exercise: the message
    starts with the check's name (the convention every check follows) and the chapter is that of the
    checks module raising it."""

    def __init__(self, message: str = "", case_index: Optional[int] = None):
        super().__init__(message + _hint_pointer(message))
        self.case_index = case_index


_CHECKS_MODULE = re.compile(r"^utils\.checks\.ch(\d\d)(?:_\w+)?$")


def _hint_pointer(message: str) -> str:
    name = re.match(r"\w+", message)
    if name is None:
        return ""
    frame = sys._getframe(2)
    while frame is not None:
        module = _CHECKS_MODULE.match(frame.f_globals.get("__name__", ""))
        if module is not None:
            return exercise_index.hint_pointer(module.group(1), name.group(0))
        frame = frame.f_back
    return ""


@dataclass(frozen=True)
class Misconception:
    """A realistic wrong implementation and the sentence that explains it."""

    name: str
    explanation: str
    implementation: Callable[..., Any]


@dataclass
class Exercise:
    """What a check needs to know about one exercise."""

    chapter: str
    name: str
    reference: Callable[..., Any]
    make_inputs: Callable[[int], dict]  # seed -> keyword arguments for the function
    misconceptions: Sequence[Misconception] = ()
    rtol: float = 1e-4
    atol: float = 1e-5
    default_cases: Sequence[int] = (0, 1, 2)
    description: str = ""
    extra_inputs: Sequence[Callable[[], dict]] = field(default_factory=tuple)  # fixed real-model cases


def seed_for(exercise: str, case: int) -> int:
    """Stable per-exercise seeds: two exercises never share inputs by accident."""
    digest = hashlib.sha256(f"{exercise}:{case}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def default_case(exercise: str, seed: int, n: int = 8) -> Optional[int]:
    """Which default case (0, 1, 2, ...) ``seed`` is for ``exercise``; None for a hidden case's seed."""
    for i in range(n):
        if seed == seed_for(exercise, i):
            return i
    return None


def square_case(exercise: str, seed: int) -> bool:
    """Whether a case should use square sizes: the first default case (so that transposed or
    reordered products still run and can be named; the other default cases are rectangular, so a
    computation that only works when sizes agree fails before the real model) and about a third of
    the hidden cases."""
    case = default_case(exercise, seed)
    return case == 0 if case is not None else seed % 3 == 0


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    raise CheckFailure(f"{what} should be a torch.Tensor, but it is a {type(value).__name__}.")


def outputs_match(got: Any, expected: Any, rtol: float, atol: float) -> bool:
    """Tensors (or tuples of tensors / numbers) equal in shape and value within tolerance."""
    if isinstance(expected, (tuple, list)):
        return (isinstance(got, (tuple, list)) and len(got) == len(expected)
                and all(outputs_match(g, e, rtol, atol) for g, e in zip(got, expected)))
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            return False
        return bool(torch.allclose(got.detach().to(torch.float64).cpu(), expected.detach().to(torch.float64).cpu(),
                                   rtol=rtol, atol=atol, equal_nan=False))
    if isinstance(expected, (int, float)):
        try:
            return abs(float(got) - float(expected)) <= atol + rtol * abs(float(expected))
        except (TypeError, ValueError):
            return False
    return got == expected


def _input_sizes(inputs: Optional[dict]) -> list[int]:
    """The sizes the inputs carry (tensor dimensions and integer arguments), for naming a factor."""
    sizes = set()
    for v in (inputs or {}).values():
        if isinstance(v, torch.Tensor):
            sizes.update(int(n) for n in v.shape if n > 1)
        elif isinstance(v, int) and not isinstance(v, bool) and v > 1:
            sizes.add(v)
    return sorted(sizes)


def name_factor(ratio: float, sizes: Sequence[int]) -> str:
    """``ratio`` spelled as a size of the inputs when it is one (sqrt(32), 1/128, ...), else ''."""
    for n in sizes:
        for value, text in ((n, f"{n}"), (1 / n, f"1/{n}"), (n ** 0.5, f"sqrt({n})"), (n ** -0.5, f"1/sqrt({n})")):
            if abs(ratio - value) <= 1e-3 * abs(value):
                return text
    return ""


def constant_ratio(got: torch.Tensor, expected: torch.Tensor) -> Optional[float]:
    """c when ``got`` equals c * ``expected`` everywhere (c != 1), else None."""
    if got.is_complex() or expected.is_complex():
        return None
    g, e = got.detach().double().cpu().flatten(), expected.detach().double().cpu().flatten()
    big = e.abs() > 1e-6 * max(e.abs().max().item(), 1e-30)
    if big.sum() < 2:
        return None
    c = (g[big] / e[big]).median().item()
    if not math.isfinite(c) or abs(c - 1) < 1e-3 or abs(c) < 1e-12:
        return None
    return c if torch.allclose(g, c * e, rtol=1e-4, atol=1e-6 * abs(c) * e.abs().max().item()) else None


def _number(x: complex | float) -> str:
    return f"{x:.8g}" if not isinstance(x, complex) else f"{x.real:.8g}{x.imag:+.8g}j"


def describe_difference(got: Any, expected: Any, inputs: Optional[dict] = None,
                         withhold: Optional[bool] = None, rtol: float = 1e-4, atol: float = 1e-5) -> str:
    """Where ``got`` differs from ``expected``, in the student's terms. ``withhold`` (default: the
    grading session's ``withhold_values``): a hidden case, so no expected value is quoted (shapes,
    scale factors and transposes still are)."""
    if withhold is None:
        withhold = withholding_values()
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            size = f" of {len(got)}" if isinstance(got, (tuple, list)) else ""
            return (f"Your result should be a {type(expected).__name__} of {len(expected)} values; it is a "
                    f"{type(got).__name__}{size}.")
        for i, (g, e) in enumerate(zip(got, expected)):
            if not outputs_match(g, e, rtol, atol):
                return f"Value {i + 1} of {len(expected)} of your result: " + describe_difference(
                    g, e, inputs, withhold, rtol, atol)
    if withhold and not isinstance(expected, torch.Tensor):
        return "Your result differs from the expected one."
    if isinstance(expected, torch.Tensor):
        got = _as_tensor(got, "Your result")
        swapped = tuple(expected.shape[:-2]) + tuple(expected.shape[-2:][::-1]) if expected.ndim >= 2 else None
        if got.shape != expected.shape:
            hint = " (the last two axes swapped: a transpose?)" if tuple(got.shape) == swapped else ""
            return (f"Your result has shape {tuple(got.shape)}, but the expected shape is "
                    f"{tuple(expected.shape)}{hint}.")
        if not torch.isfinite(got).all():
            return "Your result contains NaN or inf values."
        wide = torch.complex128 if got.is_complex() or expected.is_complex() else torch.float64
        g, e = got.detach().cpu().to(wide), expected.detach().cpu().to(wide)
        if g.ndim >= 2 and g.shape[-1] == g.shape[-2] and not torch.allclose(g, e, rtol=1e-4, atol=1e-6) \
                and torch.allclose(g.transpose(-1, -2), e, rtol=1e-4, atol=1e-6):
            return "Your result is the transpose of the expected one (rows and columns swapped)."
        c = constant_ratio(g, e)
        if c is not None:
            factor = name_factor(c, _input_sizes(inputs))
            named = f" (= {factor}, a size of the inputs)" if factor else ""
            what = "a wrong sign or scale factor" if c < 0 else "a wrong scale factor"
            return f"Your result is the expected one times {c:.6g} everywhere{named}: {what}."
        diff = (g - e).abs()
        if withhold:
            return f"Your result differs from the expected one: max abs error {diff.max().item():.2g}."
        where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        rel = diff[where].item() / max(abs(e[where].item()), 1e-12)
        return (f"Your result differs from the expected one: max abs error {diff.max().item():.3g} "
                f"at index {where} (got {_number(g[where].item())}, expected {_number(e[where].item())}, "
                f"relative error {rel:.2g}).")
    if isinstance(expected, (int, float)) and not isinstance(expected, bool) and isinstance(got, (int, float)):
        rel = abs(float(got) - float(expected)) / max(abs(float(expected)), 1e-12)
        return f"Got {float(got):.8g}, expected {float(expected):.8g} (relative error {rel:.2g})."
    return f"Got {got!r}, expected {expected!r}."


def withholding_values() -> bool:
    """True while a grader scores a hidden call: messages must not quote expected values."""
    session = _SESSION.get()
    return session is not None and session.withhold_values


def _clone_value(value: Any) -> Any:
    """A copy of ``value`` with every tensor cloned, also inside dicts, lists and tuples (a cache
    passed as a dict of tensors)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_clone_value(v) for v in value)
    return value


def clone_inputs(inputs: dict) -> dict:
    """Give each call its own copy, so an in-place edit by the student cannot corrupt the reference
    (nor the inputs the misconception variants, or a later check, see)."""
    return {k: _clone_value(v) for k, v in inputs.items()}


def not_implemented_message(exercise: str) -> str:
    return f"{exercise}: not implemented yet (the function raised NotImplementedError)."


def raised_message(exercise: str, exc: BaseException, skip_frames: int = 1) -> str:
    """What a check says when the student's function raised ``exc`` (the innermost line is quoted)."""
    frames = traceback.extract_tb(exc.__traceback__)[skip_frames:]
    where = f" (line {frames[-1].lineno}: {frames[-1].line})" if frames else ""
    return f"{exercise}: your function raised {type(exc).__name__}: {exc}{where}"


def _call_student(fn: Callable, inputs: dict, exercise: str) -> Any:
    try:
        with torch.no_grad():
            return fn(**clone_inputs(inputs))
    except NotImplementedError:
        raise CheckFailure(not_implemented_message(exercise)) from None
    except CheckFailure:
        raise
    except Exception as exc:  # the student's bug, reported as a failure of this check
        raise CheckFailure(raised_message(exercise, exc)) from None


def _resolve_cases(cases: Cases, default: Sequence[int]) -> list[int]:
    if cases is None:
        return list(default)
    if isinstance(cases, int):
        if cases < 1:
            raise ValueError("cases must be a positive count or a list of seeds")
        return list(range(1000, 1000 + cases))
    return list(cases)


def diagnose(got: Any, inputs: dict, ex: Exercise, expected: Any) -> Optional[Misconception]:
    """The first catalogued wrong variant whose output the student's output matches."""
    for wrong in ex.misconceptions:
        try:
            with torch.no_grad():
                wrong_out = wrong.implementation(**clone_inputs(inputs))
        except Exception:  # a variant that cannot run on these inputs cannot explain them
            continue
        if outputs_match(wrong_out, expected, ex.rtol, ex.atol):
            continue  # this input does not tell the variant apart from the truth
        if outputs_match(got, wrong_out, ex.rtol, ex.atol):
            return wrong
    return None


def not_callable_message(exercise: str, fn: Any) -> str:
    return f"{exercise}: pass your function itself (got a {type(fn).__name__})."


def check_case(ex: Exercise, fn: Callable, inputs: dict, label: str) -> None:
    """One case: the student's output on ``inputs`` against the reference; CheckFailure names the
    misconception it matches, or where it differs."""
    expected = ex.reference(**clone_inputs(inputs))
    got = _call_student(fn, inputs, ex.name)
    if outputs_match(got, expected, ex.rtol, ex.atol):
        return
    wrong = diagnose(got, inputs, ex, expected)
    if wrong is not None:
        raise CheckFailure(f"{ex.name} ({label}): {wrong.explanation}")
    raise CheckFailure(f"{ex.name} ({label}): "
                       f"{describe_difference(got, expected, inputs, rtol=ex.rtol, atol=ex.atol)}")


def run_check(ex: Exercise, fn: Callable, cases: Cases = None, quiet: bool = False) -> int:
    """Check ``fn`` against ``ex`` on every case; returns the number of cases passed (all)."""
    if not callable(fn):
        raise CheckFailure(not_callable_message(ex.name, fn))
    seeds = _resolve_cases(cases, ex.default_cases)
    inputs_list = [ex.make_inputs(seed_for(ex.name, s)) for s in seeds]
    if cases is None:
        inputs_list += [make() for make in ex.extra_inputs]
    session = _SESSION.get()
    if session is not None:
        return session._run_exercise(ex, fn, inputs_list)
    for i, inputs in enumerate(inputs_list):
        try:
            check_case(ex, fn, inputs, f"case {i + 1} of {len(inputs_list)}")
        except CheckFailure as failure:
            failure.case_index = i
            raise
    if not quiet:
        print(f"PASS {ex.chapter}/{ex.name}: {len(inputs_list)} cases")
    progress.record(ex.chapter, ex.name)
    return len(inputs_list)


def check_choice(chapter: str, name: str, answer: Any, key: Optional[str] = None) -> None:
    """A multiple-choice question stored as a variable (the answer is a letter).

    With ``key`` (a hidden test in the solution notebook) the answer is compared with it. Without,
    the chapter's question bank is looked up (see utils/checks/questions.py): found (the normal
    build), the check says at once whether the answer is right and why not; absent (an exam
    build), it only records the answer."""
    session = _SESSION.get()
    if session is not None:
        return session._run_choice(chapter, name, answer, key)
    question = questions.find_question(chapter, name)
    if key is None and question is None:  # an exam build: record the answer, do not judge it
        failure = questions.form_failure(name, answer)
        if failure is not None:
            raise CheckFailure(failure)
        print(f"RECORDED {chapter}/{name}: {answer!r} (this build has no answer key; your instructor grades it)")
        progress.record(chapter, name)
        return None
    if key is None:
        failure = question.failure(answer)
    else:
        failure = questions.choice_failure(name, answer, key, questions.LETTERS,
                                           question.explanations if question and question.answer == key else None)
    if failure is not None:
        raise CheckFailure(failure)
    print(f"PASS {chapter}/{name}")
    progress.record(chapter, name)


def question(chapter: str, name: str) -> Callable[..., None]:
    """The check of one multiple-choice question: ``NAME(answer, key=None)`` calls check_choice.
    The question itself (prompt, options, key, explanations) is data, in the chapter's bank
    (solutions/NN_slug/questions.json, see utils/checks/questions.py); its prompt becomes the
    docstring where the bank is present (an exam build ships none)."""
    def ask(answer: Any, key: Optional[str] = None) -> None:
        check_choice(chapter, name, answer, key)

    ask.__name__ = ask.__qualname__ = name
    found = questions.find_question(chapter, name)
    ask.__doc__ = found.prompt if found is not None else f"Multiple-choice question {chapter}/{name}: see the notebook."
    return ask


# --------------------------------------------------------------------------- trusted grading


class StopCheck(BaseException):
    """Ends a check early while a grader plans it (a BaseException, so no ``except Exception`` in a
    check or wrapper can swallow it)."""


@dataclass
class CaseOutcome:
    """One case of one check, as the grader saw it."""

    exercise: str
    label: str
    passed: bool
    message: str = ""


@dataclass
class GradingSession:
    """What run_check and check_choice do while ``grading_session`` is active.

    mode "plan": nothing is compared. run_check calls the (wrapped) stand-in once per case with
    ``current`` set to (exercise, case index), so the stand-in can record the arguments the
    student's function would get, and raise StopCheck; check_choice only notes that the check is
    a value question.
    mode "grade": every case is checked (no early stop), each outcome recorded in ``outcomes``;
    afterwards the first failure is raised as usual, so a check that rewrites messages still can.
    Nothing is printed and no progress is recorded.
    """

    mode: str
    kind: Optional[str] = None  # "function" or "choice", set by the first run_check / check_choice
    exercises: list = field(default_factory=list)  # (Exercise, number of cases) per run_check call
    outcomes: list = field(default_factory=list)
    current: Optional[tuple] = None  # (exercise name, case index) while a case runs
    questions: dict = field(default_factory=dict)  # the trusted question bank, for explanations
    keyed: bool = False  # whether the last check_choice call carried its key
    withhold_values: bool = False  # grading a hidden call: failure messages quote no expected value

    def _note(self, kind: str) -> None:
        if self.kind not in (None, kind):
            raise RuntimeError("a check that mixes run_check and check_choice cannot be graded")
        self.kind = kind

    def _run_exercise(self, ex: Exercise, fn: Callable, inputs_list: list) -> int:
        self._note("function")
        self.exercises.append((ex, len(inputs_list)))
        first: Optional[CheckFailure] = None
        for i, inputs in enumerate(inputs_list):
            label = f"case {i + 1} of {len(inputs_list)}"
            self.current = (ex.name, i)
            try:
                if self.mode == "plan":
                    with torch.no_grad():
                        fn(**clone_inputs(inputs))
                    continue
                check_case(ex, fn, inputs, label)
                self.outcomes.append(CaseOutcome(ex.name, label, True))
            except StopCheck:
                continue  # the stand-in recorded this case's call
            except CheckFailure as failure:
                if self.mode == "plan":
                    continue  # a wrapper refused before calling the student: the grader will notice
                failure.case_index = i
                self.outcomes.append(CaseOutcome(ex.name, label, False, str(failure)))
                first = first or failure
            finally:
                self.current = None
        if first is not None:
            raise first
        return len(inputs_list)

    def _run_choice(self, chapter: str, name: str, answer: Any, key: Optional[str]) -> None:
        self._note("choice")
        self.keyed = key is not None
        if self.mode == "plan" or key is None:  # a keyless call is the student's self-check: not scored
            return None
        question = self.questions.get(name)
        explanations = question.explanations if question is not None and question.answer == key else None
        failure = questions.choice_failure(name, answer, key, questions.LETTERS, explanations)
        self.outcomes.append(CaseOutcome(name, "answer", failure is None, failure or ""))
        if failure is not None:
            raise CheckFailure(failure)
        return None


_SESSION: ContextVar[Optional[GradingSession]] = ContextVar("demystify_grading_session", default=None)


@contextmanager
def grading_session(mode: str, bank: Optional[dict] = None) -> Iterator[GradingSession]:
    """Run check functions for a trusted grader (``utils.grading``); see GradingSession. ``bank``:
    the chapter's trusted questions (their explanations become the feedback on a wrong answer)."""
    if mode not in ("plan", "grade"):
        raise ValueError(f"mode must be 'plan' or 'grade', not {mode!r}")
    session = GradingSession(mode, questions=dict(bank or {}))
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)
