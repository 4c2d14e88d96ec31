"""Exercise difficulty and time, written once in the headings: parsing, validation, the shipped
index the build keeps in sync, the README's chapter times, and the hard exercises' hint pointer."""
import nbformat
import pytest

from utils import build, course, exercise_index
from utils.exercise_index import exercises_in, validate


def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    for kind, source, grade in cells:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        if grade:
            cell.metadata["nbgrader"] = {"grade": True, "grade_id": source[:8], "points": 1, "locked": True,
                                         "solution": False, "schema_version": 3}
        nb.cells.append(cell)
    return nb


NB = _notebook(
    ("md", "## 1 · A section\n\n### Exercise 1a · First  *(easy, ~5 min)*\n\ntext", False),
    ("code", "check.first(first)\n### BEGIN HIDDEN TESTS\ncheck.hidden_only(first)\n### END HIDDEN TESTS", True),
    ("md", "<details><summary>Hint</summary>x</details>", False),
    ("md", "### Exercise 1b · Second  *(hard, ~25 min)*", False),
    ("md", "<details>a</details>\n<details>b</details>", False),
    ("code", "check.second(second)\ncheck.second_question(answer)", True),
    ("md", "## 2 · Next section\n\n<details>not the exercise's</details>", False),
    ("code", "check.outside(x)", True),
    ("md", "## Exercise 3 · Rated by hand  *(ratings: open, ~15 min; the function: easy, ~10 min)*", False),
)


def test_headings_give_difficulty_time_checks_and_hints():
    first, second, third = exercises_in(NB)
    assert (first.id, first.title, first.difficulty, first.minutes) == ("1a", "First", "easy", 5)
    assert first.checks == ("first",) and first.hints == 1  # hidden tests are not the exercise's checks
    assert (second.difficulty, second.minutes, second.hints) == ("hard", 25, 2)
    assert second.checks == ("second", "second_question")
    # The first difficulty the note names; every "~N min" summed.
    assert (third.difficulty, third.minutes, third.checks) == ("open", 25, ())


def test_validation_names_missing_notes_and_short_hint_ladders():
    problems = validate(NB)
    assert len(problems) == 1 and "Exercise 1b" in problems[0] and "3 hints" in problems[0]
    bare = _notebook(("md", "### Exercise 2 · No note", False))
    assert "needs a difficulty" in validate(bare)[0]
    assert build.validate(bare) and any("needs a difficulty" in p for p in build.validate(bare))


def test_every_chapter_is_indexed_and_in_sync():
    index = exercise_index.read_index()
    assert set(index) == {ch.number for ch in course.CHAPTERS}
    for ch in course.CHAPTERS:
        assert index[ch.number] == exercise_index.index_entry(build.read_source(ch.solution)), ch.slug
        assert all(e["difficulty"] in exercise_index.DIFFICULTIES and e["minutes"] > 0 for e in index[ch.number])


def test_a_stale_index_is_reported_by_the_build_check(tmp_path, monkeypatch):
    stale = tmp_path / "exercises.json"
    stale.write_text(exercise_index.dumps_index({"00": []}))
    monkeypatch.setattr(exercise_index, "INDEX", stale)
    problems = build.check(["00"])
    assert any("OUT OF SYNC" in p and "exercises.json" in p for p in problems)


def test_the_course_map_shows_each_chapter_s_time():
    assert course.duration(45) == "~45 min" and course.duration(155) == "~2 h 35 min"
    table = course.course_map()
    for ch in course.CHAPTERS:
        assert course.duration(exercise_index.chapter_minutes(ch.number)) in table


HARD = [(number, name) for number, entries in exercise_index.read_index().items()
        for entry in entries if entry["difficulty"] == "hard" for name in entry["checks"]]


def _stub(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("number,name", HARD)
def test_a_failing_hard_exercise_points_to_its_hints(number, name):
    import importlib

    face = importlib.import_module(course.chapter(number).checks)
    with pytest.raises(AssertionError) as failure:
        getattr(face, name)(_stub)
    assert "hard exercise" in str(failure.value) and "next hint" in str(failure.value)


def test_an_easy_exercise_gets_no_pointer():
    from utils.checks import ch01

    with pytest.raises(AssertionError) as failure:
        ch01.attention_pattern(_stub)
    assert "hint" not in str(failure.value)
