"""Multiple-choice questions as data, kept out of the installed package.

Each chapter's questions (options, right answer, an explanation per wrong option) live in
``questions.json`` beside its solution notebook, the instructor's side of the course. The normal
build copies that file next to the student chapter, so a self-learner's check answers instantly
(it is an oracle, on purpose). The exam build (``python -m utils.build --exam``) leaves it out:
there a question's check only records the answer, and the grade comes from the key in the
solution notebook's hidden test (``check.NAME(answer, key="b")``), which only the instructor
has. Nothing in ``utils`` knows any answer.

The file::

    {"chapter": "01", "questions": {"factor_question": {
        "prompt": "...", "options": {"a": "...", "b": "...", "c": "...", "d": "..."},
        "answer": "a", "explanations": {"b": "why b is wrong", "c": "...", "d": "..."}}}}
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from utils.paths import QUESTION_BANK as BANK_NAME
from utils.paths import REPO

LETTERS = ("a", "b", "c", "d")


@dataclass(frozen=True)
class Question:
    chapter: str
    name: str
    prompt: str
    options: dict  # letter -> option text (markdown, as the notebook shows it)
    answer: str
    explanations: dict  # wrong letter -> why it is wrong

    def failure(self, answer: Any) -> Optional[str]:
        """Why ``answer`` is not right, or None when it is."""
        return choice_failure(self.name, answer, self.answer, tuple(self.options), self.explanations)


def form_failure(name: str, answer: Any, options: tuple = LETTERS) -> Optional[str]:
    """Why ``answer`` is not an answer at all (unset, or not one of the letters), or None."""
    if answer is None or answer is ...:
        return f"{name}: set your answer first (one of {list(options)})."
    if not isinstance(answer, str) or answer not in options:
        return f"{name}: {answer!r} is not one of the options {list(options)}."
    return None


def choice_failure(name: str, answer: Any, key: Any, options: tuple = LETTERS,
                   explanations: Optional[dict] = None) -> Optional[str]:
    """Why ``answer`` is not ``key``, or None when it is."""
    problem = form_failure(name, answer, options)
    if problem:
        return problem
    if answer != key:
        why = (explanations or {}).get(answer, "Not quite: reread the explanation above and try again.")
        return f"{name}: {why}"
    return None


class BankError(ValueError):
    """A questions.json that does not say what a question needs; the message says where."""


def read_bank(path: Path) -> dict[str, Question]:
    """The questions in ``path`` by name, validated (every option lettered a-d, the answer one of
    them, an explanation for every wrong option and none for the right one)."""
    data = json.loads(Path(path).read_text())
    chapter = data.get("chapter")
    questions = {}
    for name, q in data.get("questions", {}).items():
        where = f"{path}: {name}"
        options, answer, explanations = q.get("options", {}), q.get("answer"), q.get("explanations", {})
        if tuple(options) != LETTERS:
            raise BankError(f"{where}: options must be lettered {LETTERS}, got {tuple(options)}")
        if answer not in options:
            raise BankError(f"{where}: answer {answer!r} is not an option")
        if set(explanations) != set(options) - {answer}:
            raise BankError(f"{where}: explanations must cover exactly the wrong options, got {sorted(explanations)}")
        questions[name] = Question(chapter, name, q.get("prompt", ""), dict(options), answer, dict(explanations))
    return questions


def bank_paths(chapter: str) -> list[Path]:
    """Where a self-check looks for the chapter's bank, in order: the course named by
    DEMYSTIFY_COURSE (Colab's setup cell sets it to its clone), the working directory (Jupyter
    runs a notebook in its own folder), then the repository the package was installed from."""
    places = []
    course = os.environ.get("DEMYSTIFY_COURSE")
    if course:
        places += sorted(Path(course, "chapters").glob(f"{chapter}_*/{BANK_NAME}"))
    places.append(Path.cwd() / BANK_NAME)
    places += sorted((REPO / "chapters").glob(f"{chapter}_*/{BANK_NAME}"))
    return places


def find_question(chapter: str, name: str) -> Optional[Question]:
    """The question from the first bank that holds this chapter's ``name``; None in an exam build."""
    for path in bank_paths(chapter):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("chapter") == chapter and name in data.get("questions", {}):
            return read_bank(path)[name]
    return None


def trusted_bank(solution_notebook: Path) -> dict[str, Question]:
    """The bank beside a solution notebook (empty when the chapter has no questions)."""
    path = Path(solution_notebook).parent / BANK_NAME
    return read_bank(path) if path.is_file() else {}
