"""What every chapter's check tests assert, written once: a check passes correct implementations
quietly, names each catalogued mistake, tells the variants apart, uses seeded inputs, explains
each wrong multiple-choice option, and records progress. tests/test_check_contract.py runs these
over every chapter of the course registry, on the data each tests/test_chNN_*checks.py supplies;
the chapter files use them for their own chapter-specific tests too."""
import pytest
import torch
from transformer_lens import FactoredMatrix

from utils import progress
from utils.build import SOLUTIONS
from utils.checks import CheckFailure
from utils.checks.core import Exercise, not_implemented_message, outputs_match, seed_for
from utils.checks.questions import LETTERS, read_bank


def bank(chapter: str) -> dict:
    """The chapter's trusted question bank (solutions/NN_slug/questions.json), by question name."""
    (path,) = SOLUTIONS.glob(f"{chapter}_*/questions.json")
    return read_bank(path)


def right(chapter: str, name: str) -> str:
    return bank(chapter)[name].answer


def questions(check_module, chapter: str) -> list:
    """(ask, explanations, right answer) for every question of the chapter's bank."""
    return [(getattr(check_module, name), q.explanations, q.answer) for name, q in bank(chapter).items()]


def exercise(check_module, name: str) -> Exercise:
    """The Exercise called ``name`` among the checks module's attributes (a face module such as
    ch03 re-exports every part's Exercises)."""
    found = {id(v): v for v in vars(check_module).values() if isinstance(v, Exercise) and v.name == name}
    assert len(found) == 1, f"{check_module.__name__} holds {len(found)} Exercises called {name!r}"
    return next(iter(found.values()))


def same_inputs(a, b) -> bool:
    """Inputs equal all the way down: tensors, FactoredMatrix (by its factors), dicts, lists, tuples."""
    if isinstance(a, FactoredMatrix) or isinstance(b, FactoredMatrix):
        return (isinstance(a, FactoredMatrix) and isinstance(b, FactoredMatrix)
                and torch.equal(a.A, b.A) and torch.equal(a.B, b.B))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_inputs(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same_inputs(x, y) for x, y in zip(a, b)))
    return a == b


def assert_every_function_exercise_covered(check_module, exercise_of: dict, correct) -> None:
    """``exercise_of`` maps each check function to its exercise; ``correct`` lists
    (check, implementations, name). Together they cover every exercise that is not a question."""
    names = {ex.name for ex in exercise_of.values()}
    assert names == {n for n in check_module.EXERCISES if not n.endswith("_question")}
    assert {name for _, _, name in correct} == names


def assert_passes(check_fn, fn, chapter: str, name: str, n_default: int, capsys, extra_cases=(7, 8)) -> None:
    """The check passes ``fn`` on its default cases and on extra seeds, printing one PASS line each."""
    check_fn(fn)
    check_fn(fn, cases=list(extra_cases))
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.strip().splitlines() == [f"PASS {chapter}/{name}: {n_default} cases",
                                            f"PASS {chapter}/{name}: {len(extra_cases)} cases"]


def assert_named(check_fn, wrong, capsys, submitted=None) -> None:
    """A catalogued wrong implementation (or ``submitted``, the same mistake as a student submits it)
    fails with its own explanation, and nothing on stderr."""
    with pytest.raises(CheckFailure) as info:
        check_fn(wrong.implementation if submitted is None else submitted)
    assert wrong.explanation in str(info.value), str(info.value)
    assert capsys.readouterr().err == ""


def assert_fails_clearly(check_fn, capsys) -> None:
    """A stub (NotImplementedError: exactly the not-implemented message), a crashing function and a
    non-function each fail with a message that says which; nothing passes and nothing reaches stderr."""
    def stub(*args, **kwargs):
        raise NotImplementedError()

    def crashes(*args, **kwargs):
        return torch.zeros(2, 3) @ torch.zeros(4, 5)

    with pytest.raises(CheckFailure, match="not implemented yet") as info:
        check_fn(stub)
    # Exactly the not-implemented message (a hard exercise's check adds its pointer to the hints).
    assert str(info.value).split("\nThis is a hard exercise.")[0] == not_implemented_message(check_fn.__name__)
    with pytest.raises(CheckFailure, match="raised RuntimeError"):
        check_fn(crashes)
    with pytest.raises(CheckFailure, match="pass your function"):
        check_fn(None)
    out = capsys.readouterr()
    assert out.err == "" and "PASS" not in out.out


def explanation(ex, name: str) -> str:
    """The explanation of the misconception called ``name`` in exercise ``ex``'s catalogue."""
    return {m.name: m.explanation for m in ex.misconceptions}[name]


def assert_student_mistake_named(check_fn, fn, explanation_text: str, capsys) -> None:
    """A mistake written as a student would write it (not the catalogued implementation itself)
    fails with the catalogue's explanation, and nothing on stderr."""
    with pytest.raises(CheckFailure) as info:
        check_fn(fn)
    assert explanation_text in str(info.value), str(info.value)
    assert capsys.readouterr().err == ""


def assert_differs_on_first_case(ex, wrong) -> None:
    """A catalogued mistake differs from the truth on the first default case, so it fails, and is
    named, at once."""
    inputs = ex.make_inputs(seed_for(ex.name, ex.default_cases[0]))
    assert not outputs_match(wrong.implementation(**inputs), ex.reference(**inputs), ex.rtol, ex.atol)


def assert_explanations_distinct(exercises) -> None:
    """No two misconceptions of one exercise share a name or an explanation."""
    for ex in exercises:
        texts = [m.explanation for m in ex.misconceptions]
        names = [m.name for m in ex.misconceptions]
        assert len(set(texts)) == len(texts) and len(set(names)) == len(names), ex.name


def assert_told_apart(ex, every_case: bool = True) -> None:
    """On the first default case every variant runs, and differs from the truth and from every other
    variant (so each mistake is named there, unambiguously). With ``every_case``, on the later default
    cases too, every variant that runs there (a transposition may need square sizes) differs from the
    truth and from every other one that runs."""
    assert_distinct(ex, ex.default_cases[:1])
    later = [ex.make_inputs(seed_for(ex.name, c)) for c in ex.default_cases[1:]] if every_case else []
    for i, inputs in enumerate(later):
        outputs = [("reference", ex.reference(**inputs))]
        for wrong in ex.misconceptions:
            try:
                outputs.append((wrong.name, wrong.implementation(**inputs)))
            except Exception:  # e.g. a transposition that needs square sizes
                pass
        for a in range(len(outputs)):
            for b in range(a + 1, len(outputs)):
                assert not outputs_match(outputs[a][1], outputs[b][1], ex.rtol, ex.atol), \
                    (ex.default_cases[i + 1], outputs[a][0], outputs[b][0])


def assert_distinct(ex, cases) -> None:
    """On each case, every variant differs from the truth and from every other variant."""
    for case in cases:
        inputs = ex.make_inputs(seed_for(ex.name, case))
        outputs = [ex.reference(**inputs)] + [m.implementation(**inputs) for m in ex.misconceptions]
        for a in range(len(outputs)):
            for b in range(a + 1, len(outputs)):
                assert not outputs_match(outputs[a], outputs[b], ex.rtol, ex.atol), (case, a, b)


def assert_deterministic(exercises) -> None:
    """The same seed gives the same inputs: the default cases' seeds and two hidden ones; the
    real-model cases are the same every time; two default cases never share their inputs."""
    for ex in exercises:
        for seed in [seed_for(ex.name, c) for c in ex.default_cases] + [123, 124]:
            a, b = ex.make_inputs(seed), ex.make_inputs(seed)
            assert a.keys() == b.keys() and same_inputs(a, b), (ex.name, seed)
        for make in ex.extra_inputs:
            assert same_inputs(make(), make()), ex.name
        cases = [ex.make_inputs(seed_for(ex.name, c)) for c in ex.default_cases]
        for i in range(len(cases)):
            for j in range(i + 1, len(cases)):
                assert not same_inputs(cases[i], cases[j]), (ex.name, i, j)


def assert_multiple_choice(questions, options=LETTERS) -> None:
    """``questions``: (ask, explanations, right). Each wrong option gets its explanation; no answer
    and an unknown letter are told apart; the right one passes."""
    for ask, explanations, right in questions:
        for bad, why in explanations.items():
            with pytest.raises(CheckFailure) as info:
                ask(bad)
            assert why in str(info.value)
        assert set(explanations) | {right} == set(options)
        with pytest.raises(CheckFailure, match="set your answer"):
            ask(None)
        with pytest.raises(CheckFailure, match="not one of"):
            ask("e")
        ask(right)


def complete_everything(correct, questions) -> None:
    """Pass every check once: the first correct implementation of each function exercise
    (``correct``: (check, implementations, name)) and the right answer to each question
    (``questions``: (ask, explanations, right))."""
    for check_fn, fns, _ in correct:
        check_fn(fns[0])
    for ask, _, right in questions:
        ask(right)


def assert_progress_recorded(chapter: str, n_exercises: int, complete_everything, capsys) -> None:
    """Progress shows 0/N before and N/N ("all done") after ``complete_everything()``."""
    progress.show_progress(chapter)
    assert f"0/{n_exercises}" in capsys.readouterr().out
    complete_everything()
    progress.show_progress(chapter)
    out = capsys.readouterr().out
    assert f"{n_exercises}/{n_exercises}" in out and "all done" in out
