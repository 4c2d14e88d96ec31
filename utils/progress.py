"""A student's progress: every passed check is recorded in a small JSON file.

``utils.show_progress()`` prints a per-chapter table. Recording is best effort: an unwritable home
directory never breaks a check (and nothing is ever written to stderr).
"""
from __future__ import annotations

import json
import time
from typing import Optional

from utils import course
from utils.paths import progress_file

# Chapter number -> title, from the course registry; exercise lists come from each checks module.
CHAPTERS = {ch.number: ch.title for ch in course.CHAPTERS}


def _load() -> dict:
    try:
        return json.loads(progress_file().read_text())
    except (OSError, ValueError):
        return {}


def record(chapter: str, exercise: str) -> None:
    data = _load()
    data.setdefault(chapter, {})[exercise] = time.strftime("%Y-%m-%d %H:%M")
    try:
        path = progress_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)  # atomic: a crash never leaves half a file
    except OSError:
        pass


def exercises_by_chapter() -> dict[str, list[str]]:
    """Every graded exercise the course defines, from the checks modules that exist."""
    import importlib

    return {ch.number: list(importlib.import_module(ch.checks).EXERCISES) for ch in course.CHAPTERS}


def progress_table() -> list[tuple[str, str, int, int, list[str]]]:
    done = _load()
    rows = []
    for number, exercises in exercises_by_chapter().items():
        passed = [e for e in exercises if e in done.get(number, {})]
        rows.append((number, CHAPTERS[number], len(passed), len(exercises),
                     [e for e in exercises if e not in passed]))
    return rows


def show_progress(chapter: Optional[str] = None) -> None:
    """Print exercises done per chapter, and which are left."""
    rows = [r for r in progress_table() if chapter is None or r[0] == chapter]
    print(f"{'chapter':<30} {'done':>9}  still to do")
    for number, title, passed, total, todo in rows:
        bar = "#" * passed + "." * (total - passed)
        left = ", ".join(todo) if todo else "all done"
        print(f"{number} {title:<27} {passed:>3}/{total:<3} {bar}  {left}")


def reset_progress() -> None:
    try:
        progress_file().unlink()
    except OSError:
        pass
