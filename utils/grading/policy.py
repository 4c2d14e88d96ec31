"""What a submission must never see or touch: the grader's confinement policy, as a pure function.

``confinement_policy`` turns the grader's paths (the submissions, its scratch folders, the
gradebook, the feedback, the trusted solutions, the repository) into the folders and files that
the namespace sandbox hides under empty mounts and that the audit hook refuses in both sandboxes
(``jail``). It reads the filesystem only through the ``resolve`` and ``is_dir`` it is given, so the
policy can be tested on made-up paths; ``cli`` passes the real ones.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional


@dataclass(frozen=True)
class Confinement:
    hide_dirs: tuple[str, ...]  # under empty mounts in the namespace sandbox
    hide_files: tuple[str, ...]  # under /dev/null in the namespace sandbox
    warnings: tuple[str, ...] = ()  # folders that could not be hidden, and why

    @property
    def protected(self) -> tuple[str, ...]:
        """What the audit hook refuses to read or write (both sandboxes)."""
        return self.hide_dirs + self.hide_files


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def confinement_policy(*, submissions: str, scratch_base: str, gradebook: str, feedback: Optional[str],
                       solutions: str, repo: str, banks: Iterable[str], essentials: Iterable[str],
                       resolve: Callable[[str], str] = os.path.realpath,
                       is_dir: Callable[[str], bool] = os.path.isdir) -> Confinement:
    """The folders and files hidden from every submission.

    ``submissions`` is a folder of submissions or one notebook; ``banks`` are the released answer
    banks; ``essentials`` are the folders a submission's process needs (Python and the course
    package), which are never hidden, nor is any folder holding one of them."""
    essentials = list(essentials)
    warnings = []
    root = submissions if is_dir(submissions) else None

    def hideable(path: str) -> bool:
        real = resolve(path)
        holds = [e for e in essentials if _inside(e, real)]
        if holds:
            warnings.append(f"cannot hide {path} from submissions: it contains {holds[0]}")
        return not holds

    # The other submissions, the grader's scratch folders, the feedback, the trusted solutions.
    hide_dirs = [resolve(p) for p in (root, scratch_base, feedback, solutions) if p is not None and hideable(p)]
    # Also out of sight where they exist: the folder of the gradebook (other gradebooks, nbgrader's
    # files beside it), a course directory's autograded copies, and the repository's history and
    # tests (git show HEAD:solutions/... would give the hidden cases).
    nearby = [os.path.dirname(resolve(gradebook)), os.path.join(repo, ".git"), os.path.join(repo, "tests")]
    course_dir = None
    if root is not None and os.path.basename(resolve(root)) == "submitted":  # nbgrader's course layout
        course_dir = os.path.dirname(resolve(root))
        nearby += [os.path.join(course_dir, "autograded"), os.path.join(course_dir, "feedback")]
    for path in nearby:
        real = resolve(path)
        if (is_dir(real) and real not in hide_dirs and not any(_inside(e, real) for e in essentials)
                and not any(real.startswith(h.rstrip("/") + "/") for h in hide_dirs)):
            hide_dirs.append(real)
    # The gradebook, a single submitted notebook, the released question banks (the self-learner's
    # oracle: answer keys to a submission) and nbgrader's database.
    files = [gradebook] + ([submissions] if root is None else []) + list(banks)
    if course_dir is not None:
        files.append(os.path.join(course_dir, "gradebook.db"))
    return Confinement(hide_dirs=tuple(hide_dirs), hide_files=tuple(resolve(p) for p in files),
                       warnings=tuple(warnings))
