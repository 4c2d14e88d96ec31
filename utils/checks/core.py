"""The self-check machinery every chapter's checks are built from.

A check runs the student's function on fresh, seeded inputs, compares with the reference, and on
a mismatch names the misconception by trying known-wrong variants on the same inputs. It prints
exactly one line on success, never writes to stderr (nbgrader scores any stderr as a failure),
and raises ``CheckFailure`` (an AssertionError) with the diagnosis otherwise.

Hidden tests call the same check with other seeds: ``check.per_token_loss(fn, cases=[11, 12])``.
"""
from __future__ import annotations

import hashlib
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch

from utils import progress

Cases = Union[int, Iterable[int], None]


class CheckFailure(AssertionError):
    """A check did not pass; the message says why in the student's terms."""


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


def _describe_difference(got: Any, expected: Any) -> str:
    if isinstance(expected, torch.Tensor):
        got = _as_tensor(got, "Your result")
        if got.shape != expected.shape:
            return f"Your result has shape {tuple(got.shape)}, but the expected shape is {tuple(expected.shape)}."
        if not torch.isfinite(got).all():
            return "Your result contains NaN or inf values."
        diff = (got.detach().double().cpu() - expected.detach().double().cpu()).abs()
        where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        return (f"Your result differs from the expected one: max abs error {diff.max().item():.3g} "
                f"at index {where} (got {got[where].item():.5g}, expected {expected[where].item():.5g}).")
    return f"Got {got!r}, expected {expected!r}."


def _clone_inputs(inputs: dict) -> dict:
    """Give each call its own copy, so an in-place edit by the student cannot corrupt the reference."""
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def _call_student(fn: Callable, inputs: dict, exercise: str) -> Any:
    try:
        with torch.no_grad():
            return fn(**_clone_inputs(inputs))
    except NotImplementedError:
        raise CheckFailure(f"{exercise}: not implemented yet (the function raised NotImplementedError).") from None
    except CheckFailure:
        raise
    except Exception as exc:  # the student's bug, reported as a failure of this check
        frames = traceback.extract_tb(exc.__traceback__)[1:]
        where = f" (line {frames[-1].lineno}: {frames[-1].line})" if frames else ""
        raise CheckFailure(f"{exercise}: your function raised {type(exc).__name__}: {exc}{where}") from None


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
                wrong_out = wrong.implementation(**_clone_inputs(inputs))
        except Exception:  # a variant that cannot run on these inputs cannot explain them
            continue
        if outputs_match(wrong_out, expected, ex.rtol, ex.atol):
            continue  # this input does not tell the variant apart from the truth
        if outputs_match(got, wrong_out, ex.rtol, ex.atol):
            return wrong
    return None


def run_check(ex: Exercise, fn: Callable, cases: Cases = None, quiet: bool = False) -> int:
    """Check ``fn`` against ``ex`` on every case; returns the number of cases passed (all)."""
    if not callable(fn):
        raise CheckFailure(f"{ex.name}: pass your function itself (got a {type(fn).__name__}).")
    seeds = _resolve_cases(cases, ex.default_cases)
    inputs_list = [ex.make_inputs(seed_for(ex.name, s)) for s in seeds]
    if cases is None:
        inputs_list += [make() for make in ex.extra_inputs]
    for i, inputs in enumerate(inputs_list):
        expected = ex.reference(**_clone_inputs(inputs))
        got = _call_student(fn, inputs, ex.name)
        if outputs_match(got, expected, ex.rtol, ex.atol):
            continue
        label = f"case {i + 1} of {len(inputs_list)}"
        wrong = diagnose(got, inputs, ex, expected)
        if wrong is not None:
            raise CheckFailure(f"{ex.name} ({label}): {wrong.explanation}")
        raise CheckFailure(f"{ex.name} ({label}): {_describe_difference(got, expected)}")
    if not quiet:
        print(f"PASS {ex.chapter}/{ex.name}: {len(inputs_list)} cases")
    progress.record(ex.chapter, ex.name)
    return len(inputs_list)


def check_choice(chapter: str, name: str, answer: Any, correct: Any, options: Sequence[Any],
                 explanations: Optional[dict] = None) -> None:
    """A multiple-choice question stored as a variable (the answer is a letter or option)."""
    if answer is None or answer is ...:
        raise CheckFailure(f"{name}: set your answer first (one of {list(options)}).")
    if answer not in options:
        raise CheckFailure(f"{name}: {answer!r} is not one of the options {list(options)}.")
    if answer != correct:
        why = (explanations or {}).get(answer, "Not quite: reread the explanation above and try again.")
        raise CheckFailure(f"{name}: {why}")
    print(f"PASS {chapter}/{name}")
    progress.record(chapter, name)
