"""Where the package keeps its files, and where a student's progress is recorded."""
import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ASSETS = PACKAGE / "assets"
REPO = PACKAGE.parent
# Each chapter's multiple-choice bank, beside its solution (and, in the normal build, its chapter).
QUESTION_BANK = "questions.json"


def progress_file() -> Path:
    """Student progress lives outside the repo so a fresh clone starts empty."""
    override = os.environ.get("DEMYSTIFY_PROGRESS")
    if override:
        return Path(override)
    return Path.home() / ".demystify" / "progress.json"
