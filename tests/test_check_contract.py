"""The contract every check keeps, written once and run over the course registry (utils/course.py)
and each chapter's exercises: every exercise is listed, checked and covered; correct implementations
written other ways pass quietly (default cases and hidden seeds); each catalogued mistake, submitted,
fails with its own explanation; each differs from the reference on the first case, and the variants
are told apart; a check's inputs are deterministic; stubs, crashes and non-functions fail clearly;
every wrong multiple-choice option is explained; and progress is recorded.

The data comes from the chapter's ``tests/test_chNN_*checks.py`` files (``Chapter.check_tests``; chapter 03
has three), in one style; each of them keeps only its chapter-specific tests beside it:

``CORRECT``
    {exercise name: [correct implementations]}; every function exercise of the chapter is in exactly
    one of its files, and the first implementation is the one the progress test passes.
``HIDDEN_CASES``
    the hidden seeds each correct implementation must also pass on, beside the default cases.
``AS_SUBMITTED`` (optional)
    {exercise name: {misconception name: function}}: how a student submits a catalogued mistake where
    the catalogue's implementation is not itself a submission (a generator's statistics, a calling
    convention the check adapts); the entry covers every misconception of that exercise.
``TOLD_APART_ON_THE_FIRST_CASE_ONLY`` (optional)
    exercises whose variants may coincide on a later default case (the first case names them all).
``SLOW_EXERCISES`` (optional)
    exercises whose check trains something (a student's training loop): their contract cases are
    marked slow, so the quick tier leaves them out and the full suite runs them.
"""
import importlib

import check_harness as harness
import pytest

from utils import course, progress

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHECKS = {ch.number: importlib.import_module(ch.checks) for ch in course.CHAPTERS}
DATA = {ch.number: [importlib.import_module(path.stem) for path in ch.check_tests] for ch in course.CHAPTERS}
DATA_OF = {(number, name): data for number, modules in DATA.items() for data in modules for name in data.CORRECT}
EXERCISES = sorted(DATA_OF)  # (chapter, exercise name) of every function exercise
QUESTIONS = [(number, name) for number in CHECKS for name in harness.bank(number)]


def _check(number, name):
    return getattr(CHECKS[number], name)


def _exercise(number, name):
    return harness.exercise(CHECKS[number], name)


def _submitted(number, name, wrong):
    return getattr(DATA_OF[number, name], "AS_SUBMITTED", {}).get(name, {}).get(wrong.name, wrong.implementation)


def _id(value):
    return value if isinstance(value, str) else getattr(value, "name", None) or getattr(value, "__name__", "fn")


SLOW = {(number, name) for number, name in EXERCISES if name in getattr(DATA_OF[number, name], "SLOW_EXERCISES", ())}
SLOW_CHAPTERS = {number for number, _ in SLOW}


def _case(number, name, *rest):
    """One parameter set, marked slow when the exercise's check trains."""
    return pytest.param(number, name, *rest, marks=[pytest.mark.slow] if (number, name) in SLOW else [])


CORRECT_CASES = [_case(number, name, fn) for number, name in EXERCISES for fn in DATA_OF[number, name].CORRECT[name]]
MISTAKES = [_case(number, name, wrong)
            for number, name in EXERCISES for wrong in _exercise(number, name).misconceptions]
FUNCTION_EXERCISES = [_case(number, name) for number, name in EXERCISES]
CHAPTERS_ALL_CHECKS = [pytest.param(number, marks=[pytest.mark.slow] if number in SLOW_CHAPTERS else [])
                          for number in CHECKS]


# --------------------------------------------------------------------------- every exercise listed and covered


@pytest.mark.parametrize("number", list(CHECKS))
def test_every_exercise_is_listed_checked_and_covered(number):
    """The checks module lists every function exercise (one check function of its name, one Exercise
    of this chapter) and every question of the chapter's bank; progress reads that list; the chapter's
    test files give correct implementations of every function exercise, each in exactly one file."""
    checks = CHECKS[number]
    assert DATA[number], f"no tests/test_ch{number}_*checks.py"
    covered = [name for data in DATA[number] for name in data.CORRECT]
    assert len(covered) == len(set(covered)), "an exercise in two files"
    questions = set(harness.bank(number))
    assert set(checks.EXERCISES) == set(covered) | questions and not set(covered) & questions
    assert list(progress.exercises_by_chapter()[number]) == list(checks.EXERCISES)
    harness.assert_every_function_exercise_covered(
        checks, {_check(number, n): _exercise(number, n) for n in covered},
        [(_check(number, n), DATA_OF[number, n].CORRECT[n], n) for n in covered])
    for name in checks.EXERCISES:
        assert callable(getattr(checks, name)) and getattr(checks, name).__name__ == name
    for name in covered:
        ex = _exercise(number, name)
        assert ex.name == name and ex.chapter == number == checks.CHAPTER and DATA_OF[number, name].CORRECT[name]
    for data in DATA[number]:
        assert set(getattr(data, "AS_SUBMITTED", {})) <= set(data.CORRECT), data.__name__
        for name, submitted in getattr(data, "AS_SUBMITTED", {}).items():  # a realistic example of each mistake
            assert set(submitted) == {m.name for m in _exercise(number, name).misconceptions}, name
        assert set(getattr(data, "TOLD_APART_ON_THE_FIRST_CASE_ONLY", ())) <= set(data.CORRECT), data.__name__
        assert data.HIDDEN_CASES and not set(data.HIDDEN_CASES) & {
            c for name in data.CORRECT for c in _exercise(number, name).default_cases}, data.__name__


# --------------------------------------------------------------------------- both halves


@pytest.mark.parametrize("number,name,fn", CORRECT_CASES, ids=_id)
def test_correct_implementations_pass(number, name, fn, capsys):
    """On the default cases (the real-model ones included) and on the hidden seeds: one PASS line
    each, nothing on stderr."""
    ex = _exercise(number, name)
    harness.assert_passes(_check(number, name), fn, number, name, len(ex.default_cases) + len(ex.extra_inputs),
                          capsys, DATA_OF[number, name].HIDDEN_CASES)


@pytest.mark.parametrize("number,name,wrong", MISTAKES, ids=_id)
def test_each_misconception_is_named(number, name, wrong, capsys):
    """Submitted, a catalogued mistake fails with its own explanation, and nothing on stderr."""
    harness.assert_named(_check(number, name), wrong, capsys, _submitted(number, name, wrong))


@pytest.mark.parametrize("number,name,wrong", MISTAKES, ids=_id)
def test_each_misconception_differs_from_the_reference_on_the_first_case(number, name, wrong):
    """So every catalogued mistake fails on the very first case, and is named there."""
    harness.assert_differs_on_first_case(_exercise(number, name), wrong)


@pytest.mark.parametrize("number,name", FUNCTION_EXERCISES, ids=_id)
def test_variants_are_told_apart(number, name):
    """On the first default case every variant runs and differs from the truth and from every other
    one; on the later default cases, every variant that runs does too (unless the chapter says its
    variants may coincide there)."""
    alike_later = name in getattr(DATA_OF[number, name], "TOLD_APART_ON_THE_FIRST_CASE_ONLY", ())
    harness.assert_told_apart(_exercise(number, name), every_case=not alike_later)


@pytest.mark.parametrize("number,name", FUNCTION_EXERCISES, ids=_id)
def test_misconception_names_and_explanations_are_distinct(number, name):
    harness.assert_explanations_distinct([_exercise(number, name)])


@pytest.mark.parametrize("number,name", FUNCTION_EXERCISES, ids=_id)
def test_inputs_are_deterministic(number, name):
    harness.assert_deterministic([_exercise(number, name)])


@pytest.mark.parametrize("number,name", FUNCTION_EXERCISES, ids=_id)
def test_stub_crash_and_non_function_fail_clearly(number, name, capsys):
    harness.assert_fails_clearly(_check(number, name), capsys)


# --------------------------------------------------------------------------- questions and progress


@pytest.mark.parametrize("number,name", QUESTIONS, ids=_id)
def test_multiple_choice(number, name, capsys):
    """Each wrong option gets its explanation, no answer and an unknown letter are told apart, the
    right one passes with one PASS line."""
    q = harness.bank(number)[name]
    harness.assert_multiple_choice([(_check(number, name), q.explanations, q.answer)])
    assert capsys.readouterr().out.strip().endswith(f"PASS {number}/{name}")


@pytest.mark.parametrize("number", list(CHECKS))
def test_progress_is_recorded_as_checks_pass(number, capsys):
    """One exercise and one question passed: exactly those two are recorded, and the table shows
    2/N with the others still to do (or all done, in a chapter of two)."""
    checks = CHECKS[number]
    first = next(name for name in checks.EXERCISES if (number, name) in DATA_OF)
    question = next(iter(harness.bank(number)))
    _check(number, first)(DATA_OF[number, first].CORRECT[first][0])
    _check(number, question)(harness.right(number, question))
    assert set(progress._load()[number]) == {first, question}
    progress.show_progress(number)
    out = capsys.readouterr().out
    left = [name for name in checks.EXERCISES if name not in (first, question)]
    assert f"2/{len(checks.EXERCISES)}" in out
    assert (left[0] in out and "all done" not in out) if left else "all done" in out


@pytest.mark.parametrize("number", CHAPTERS_ALL_CHECKS)  # it runs every check, training ones too
def test_progress_shows_all_done_once_every_check_passes(number, capsys):
    correct = [(_check(number, name), DATA_OF[number, name].CORRECT[name], name)
               for name in CHECKS[number].EXERCISES if (number, name) in DATA_OF]
    harness.assert_progress_recorded(
        number, len(CHECKS[number].EXERCISES),
        lambda: harness.complete_everything(correct, harness.questions(CHECKS[number], number)), capsys)
