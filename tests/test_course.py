"""The course registry (utils/course.py) is the one place chapter facts live: every chapter it
names has all its parts, nothing outside it looks like a chapter, and the README shows its map."""
import importlib
import re

import pytest

from utils import build, course, progress
from utils.paths import REPO


@pytest.mark.parametrize("ch", course.CHAPTERS, ids=lambda ch: ch.slug)
def test_every_chapter_has_all_its_parts(ch):
    assert ch.slug.startswith(ch.number + "_")
    assert ch.solution.is_file(), f"no solution notebook {ch.solution}"
    assert ch.notebook.is_file(), f"no student notebook {ch.notebook}"
    main = REPO / "tests" / f"test_ch{ch.number}_checks.py"  # its data for tests/test_check_contract.py
    assert ch.check_tests and ch.check_tests[0] == main, f"no tests of the checks {main}"
    package = importlib.import_module(ch.package)
    assert package.__doc__, f"{ch.package} has no docstring saying what it holds"
    checks = importlib.import_module(ch.checks)
    assert checks.CHAPTER == ch.number and checks.EXERCISES, ch.checks
    assert ch.budget_seconds > 0 and ch.kernel_threads >= 1


def test_no_chapter_folder_is_missing_from_the_registry():
    numbers = [ch.number for ch in course.CHAPTERS]
    assert numbers == sorted(set(numbers))
    for folder in ("solutions", "chapters"):
        found = sorted(p.name for p in (REPO / folder).glob("[0-9][0-9]_*") if p.is_dir())
        assert found == [ch.slug for ch in course.CHAPTERS], folder
    checks = sorted(p.stem[2:] for p in (REPO / "utils" / "checks").glob("ch[0-9][0-9].py"))
    assert checks == numbers


def test_the_readme_course_map_is_the_registry_s():
    readme = (REPO / "README.md").read_text()
    assert course.course_map() in readme, "README's course map differs: paste `python -m utils.course`"
    assert len(re.findall(r"^\| \d\d \|", readme, re.M)) == len(course.CHAPTERS)


def test_progress_and_build_read_the_registry():
    assert list(progress.CHAPTERS) == [ch.number for ch in course.CHAPTERS]
    assert [ch.title for ch in course.CHAPTERS] == list(progress.CHAPTERS.values())
    assert build.discover() == [ch.slug for ch in course.CHAPTERS]
    assert build.resolve(["03"]) == ["03_copying_and_composition"]


def test_chapter_lookup_by_number_or_slug_and_a_clear_error():
    assert course.chapter("05").slug == course.chapter("05_sparse_autoencoders").slug == "05_sparse_autoencoders"
    with pytest.raises(ValueError, match="unknown chapter '99'.*known: 00, 01"):
        course.chapter("99")


def test_the_course_command_prints_the_map(capsys):
    course.main([])
    assert capsys.readouterr().out.strip() == course.course_map()
