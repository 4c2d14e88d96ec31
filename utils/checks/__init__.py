"""Self-checks, one module per chapter: ``from utils.checks import ch00 as check``."""
from utils.checks.core import CheckFailure, Exercise, Misconception, check_choice, run_check

__all__ = ["CheckFailure", "Exercise", "Misconception", "check_choice", "run_check"]
