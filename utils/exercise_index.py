"""Every exercise's difficulty and time estimate, written once: in its heading in the solution notebook.

    ### Exercise 3b · The composition score  *(medium, ~15 min)*

The heading is the one place a course author writes them. ``python -m utils.build`` reads the
headings of each chapter it builds into ``utils/assets/exercises.json`` (``--check`` proves the file
is current), so that an installed package, which has no notebooks, still knows them: the README's
course map sums each chapter's minutes, and a failing check of a hard exercise points the student to
the hints under it (``hint_pointer``). ``validate`` is part of the build's notebook validation: an
exercise heading without a difficulty and a time, or a hard exercise without its three hints (a
nudge, the formula, most of the code), stops the build.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from utils.paths import ASSETS

INDEX = ASSETS / "exercises.json"
DIFFICULTIES = ("easy", "medium", "hard", "open")
HARD_HINTS = 3  # a hard exercise's hint ladder: a nudge, the formula, most of the code

_HEADING = re.compile(r"^(?P<level>#{2,4}) Exercise (?P<id>\w+) · (?P<title>.+?)\s*(?:\*\((?P<note>[^)]*)\)\*)?\s*$")
_ANY_HEADING = re.compile(r"^(#{1,6}) ")
_MINUTES = re.compile(r"~\s*(\d+)\s*min")
_CHECK_CALL = re.compile(r"\bcheck\.(\w+)\(")


@dataclass(frozen=True)
class ExerciseInfo:
    id: str  # "3b"
    title: str
    difficulty: str  # one of DIFFICULTIES: the first one the heading's note names
    minutes: int  # every "~N min" in the note, summed
    checks: tuple[str, ...]  # the checks its graded cells call (check.NAME(...)), in order
    hints: int  # <details> blocks in its section


def _source(cell) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _parse_note(note: Optional[str]) -> tuple[Optional[str], int]:
    if not note:
        return None, 0
    words = re.findall(r"[a-z]+", note.lower())
    difficulty = next((w for w in words if w in DIFFICULTIES), None)
    return difficulty, sum(int(m) for m in _MINUTES.findall(note))


def _sections(nb) -> list[tuple[re.Match, list]]:
    """(heading match, cells of its section) for each exercise heading: a section runs until the
    next heading of the same or a higher level."""
    sections: list[tuple[re.Match, list]] = []
    current: Optional[tuple[re.Match, list]] = None
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in _source(cell).splitlines():
                heading = _ANY_HEADING.match(line)
                if heading is None:
                    continue
                if current is not None and len(heading.group(1)) <= len(current[0].group("level")):
                    current = None
                exercise = _HEADING.match(line)
                if exercise is not None:
                    current = (exercise, [])
                    sections.append(current)
        if current is not None:
            current[1].append(cell)
    return sections


def exercises_in(nb) -> list[ExerciseInfo]:
    """The exercises of a notebook (a dict or NotebookNode), in order."""
    found = []
    for heading, cells in _sections(nb):
        difficulty, minutes = _parse_note(heading.group("note"))
        checks = [name for cell in cells if cell.get("metadata", {}).get("nbgrader", {}).get("grade")
                  for name in _CHECK_CALL.findall(_source(cell).split("### BEGIN HIDDEN TESTS")[0])]
        hints = sum(_source(cell).count("<details") for cell in cells if cell["cell_type"] == "markdown")
        found.append(ExerciseInfo(heading.group("id"), heading.group("title").strip(), difficulty or "",
                                  minutes, tuple(dict.fromkeys(checks)), hints))
    return found


def validate(nb) -> list[str]:
    """Problems with a notebook's exercise headings (empty when every exercise is well marked)."""
    problems = []
    for ex in exercises_in(nb):
        if not ex.difficulty or not ex.minutes:
            problems.append(f"Exercise {ex.id} ({ex.title}): its heading needs a difficulty "
                            f"({'/'.join(DIFFICULTIES)}) and a time, e.g. '*(medium, ~15 min)*'")
        if ex.difficulty == "hard" and ex.hints < HARD_HINTS:
            problems.append(f"Exercise {ex.id} ({ex.title}) is hard: it needs {HARD_HINTS} hints in <details> "
                            f"blocks (a nudge, the formula, most of the code); it has {ex.hints}")
    return problems


# --------------------------------------------------------------------------- the shipped index


def read_index(path: Optional[Path] = None) -> dict[str, list[dict]]:
    """{chapter number: [exercise records]}; empty when the file does not exist yet."""
    path = INDEX if path is None else path
    return json.loads(path.read_text()) if path.is_file() else {}


def index_entry(nb) -> list[dict]:
    return [asdict(ex) | {"checks": list(ex.checks)} for ex in exercises_in(nb)]


def dumps_index(index: dict) -> str:
    return json.dumps(dict(sorted(index.items())), indent=1, sort_keys=True) + "\n"


def chapter_minutes(number: str, index: Optional[dict] = None) -> int:
    """Total estimated minutes of a chapter's exercises."""
    entries = (read_index() if index is None else index).get(number, [])
    return sum(entry["minutes"] for entry in entries)


@lru_cache(maxsize=1)
def _hard_checks() -> frozenset[tuple[str, str]]:
    return frozenset((number, name) for number, entries in read_index().items() for entry in entries
                     if entry["difficulty"] == "hard" for name in entry["checks"])


def hint_pointer(chapter: str, check: str) -> str:
    """What a failing check of a hard exercise adds to its message ("" for any other check)."""
    if (chapter, check) not in _hard_checks():
        return ""
    return ("\nThis is a hard exercise. Stuck? Open the next hint under it: the first is a nudge, the second "
            "gives the formula, the third most of the code.")
