"""Demystify: reference implementations, models, checks and grading for the course notebooks."""
from utils.progress import show_progress

__version__ = "0.1.0"
__all__ = ["show_progress", "__version__"]
