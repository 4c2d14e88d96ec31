"""A memory (and task-count) cgroup per submission, where the machine lets the grader make one.

RLIMIT_DATA and the watchdog's RSS samples miss pages a process holds without mapping them
privately: files in a tmpfs (its scratch folder), the page cache it fills, and a burst between two
samples. A memory cgroup charges every page the submission's processes allocate, and the kernel
stops them at the limit, so where one is available it is the hard limit and the rlimits stay as a
second one. The ``pids`` controller caps threads the same way.

Two layouts exist: the unified hierarchy (cgroup v2, ``/sys/fs/cgroup`` with ``memory`` among its
controllers) and the older per-controller one (v1, ``/sys/fs/cgroup/memory``,
``/sys/fs/cgroup/pids``). Creating a cgroup needs write access there, which a grader running as
root in a container usually has and an ordinary user usually does not; ``create`` returns None
then, and grading goes on with the rlimits alone (INSTRUCTORS.md says so).

The submission's process joins the cgroup itself, before it unshares anything and long before any
student code runs, by writing its pid into the ``cgroup.procs`` files named in its config.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional

ROOT = Path("/sys/fs/cgroup")


class SubmissionCgroup:
    """The cgroup directories of one submission (one per controller in v1, one in v2)."""

    def __init__(self, version: int, memory_dir: Path, pids_dir: Optional[Path]):
        self.version, self.memory_dir, self.pids_dir = version, memory_dir, pids_dir

    @property
    def procs_files(self) -> list[str]:
        dirs = [self.memory_dir] + ([self.pids_dir] if self.pids_dir and self.pids_dir != self.memory_dir else [])
        return [str(d / "cgroup.procs") for d in dirs]

    def set_memory_limit(self, limit_bytes: int) -> bool:
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        return _write(self.memory_dir / name, str(int(limit_bytes)))

    def oom_kills(self) -> int:
        """How many times the kernel killed a process of this cgroup for going over its limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (self.memory_dir / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass  # gone, or a kernel without the counter: no kill it can tell of
        return 0

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.memory_dir / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def remove(self) -> None:
        """Remove the directories (they must be empty of processes: call after the run has ended)."""
        for d in {self.memory_dir, self.pids_dir} - {None}:
            try:
                os.rmdir(d)
            except OSError:
                pass  # already gone; or a process is still in it (EBUSY), and the empty folder stays behind


def _write(path: Path, text: str) -> bool:
    try:
        path.write_text(text)
        return True
    except OSError:
        return False


def _make(parent: Path, name: str) -> Optional[Path]:
    d = parent / name
    try:
        d.mkdir()
        return d
    except OSError:
        return None


def create(limit_bytes: int, max_tasks: int, root: Path = ROOT) -> Optional[SubmissionCgroup]:
    """A fresh cgroup limited to ``limit_bytes`` of memory and ``max_tasks`` threads, or None where
    the machine does not let the grader create one."""
    name = f"demystify-grading-{uuid.uuid4().hex[:12]}"
    try:
        controllers = (root / "cgroup.controllers").read_text().split()
    except OSError:
        controllers = []
    if "memory" in controllers:  # v2: one directory, every controller the parent delegates
        d = _make(root, name)
        if d is None:
            return None
        group = SubmissionCgroup(2, d, d if "pids" in controllers else None)
        ok = group.set_memory_limit(limit_bytes)
        _write(d / "memory.swap.max", "0")  # where swap is accounted: no way around the limit through it
    elif (root / "memory" / "memory.limit_in_bytes").exists():  # v1
        d = _make(root / "memory", name)
        if d is None:
            return None
        pids = _make(root / "pids", name) if (root / "pids" / "cgroup.procs").exists() else None
        group = SubmissionCgroup(1, d, pids)
        ok = group.set_memory_limit(limit_bytes)
    else:
        return None
    if group.pids_dir is not None:
        _write(group.pids_dir / "pids.max", str(int(max_tasks)))
    if not ok:
        group.remove()
        return None
    return group
