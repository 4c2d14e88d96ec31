"""A root grader's submissions run as unprivileged users (sandbox "basic"; this module's ``drop``
runs INSIDE the submission's process, before any student code).

Without namespaces the file system is the host's, and what a native extension writes directly
(Rust, C++, ``torch.UntypedStorage.from_file``) passes no audit hook. As root it could rewrite a
classmate's notebook or the gradebook. So when the grader is root each submission's process
gives up root first: it becomes a user and group of its own, ``UID_BASE + its pid`` (unique among
the processes running at once, so two submissions cannot signal or write each other either), with
no supplementary groups. The kernel then refuses every write to files that user does not own and
that are not world-writable: the submissions, the gradebook, the feedback.

Python may be installed where other users cannot look (pyenv under ``/root``, a private home): the
process keeps a descriptor on each such folder of its import path, opened while it was root, and
imports through ``/proc/self/fd/N`` from then on (a process may always follow its own descriptors).
Files read by path are not covered that way, so the course package and site-packages (models,
fonts) must be readable by other users: ``prepare`` refuses to start otherwise, and says so.
"""
from __future__ import annotations

import os
import stat
import sys
from typing import Optional

UID_BASE = 1_900_000_000  # far above ordinary users, system users and the usual subordinate ranges
NOBODY = 65534


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4_194_304  # the kernel's largest


def _mapped(first: int, count: int, uid_map: str) -> bool:
    """Whether uids first .. first+count-1 exist in this user namespace (``/proc/self/uid_map``)."""
    for line in uid_map.splitlines():
        inside, _, length = (int(x) for x in line.split())
        if inside <= first and first + count <= inside + length:
            return True
    return False


def choose_ids(uid_map: Optional[str] = None, pid_max: Optional[int] = None) -> tuple[Optional[int], Optional[int]]:
    """``(uid_base, shared_uid)``: one uid per process at ``uid_base + pid`` where this namespace
    maps that range; else every submission as ``nobody`` (a container mapping only 65536 uids);
    ``(None, None)`` where neither exists."""
    if uid_map is None:
        with open("/proc/self/uid_map") as f:
            uid_map = f.read()
    pid_max = _pid_max() if pid_max is None else pid_max
    if _mapped(UID_BASE, pid_max + 1, uid_map):
        return UID_BASE, None
    if _mapped(NOBODY, 1, uid_map):
        return None, NOBODY
    return None, None


class PrivilegeError(RuntimeError):
    """A root grader cannot run submissions unprivileged here (the message says why and what to do)."""


def prepare(scratch_base: str) -> tuple[Optional[int], Optional[int]]:
    """The grader's side, as root: choose the uids (``choose_ids``, warning on stderr when every
    submission must share ``nobody``) and let them into the scratch folder (made 0711: each
    submission's own folder inside stays 0700). Returns ``Options.unprivileged``."""
    uid_base, shared = choose_ids()
    if uid_base is None and shared is None:
        raise PrivilegeError(f"--sandbox basic as root: this user namespace maps neither the uids {UID_BASE}+ nor "
                             f"nobody ({NOBODY}), so submissions cannot run unprivileged; run the grader as an "
                             "ordinary user")
    if shared is not None:
        print(f"warning: every submission runs as nobody ({shared}): uids {UID_BASE}+ are not mapped here, so "
              "submissions graded at the same time share a user (use --jobs 1 to keep them apart)", file=sys.stderr)
    for folder in _data_folders():  # imports get through (below), files read by path would not
        blocked = unreachable(folder)
        if blocked:
            raise PrivilegeError(f"--sandbox basic as root: {folder} lies under {blocked}, which other users cannot "
                                 "enter, so the submissions (each run as an unprivileged user) could not read the "
                                 "data files there (the bundled models, matplotlib's fonts); install the course and "
                                 "its environment where other users can read them (a virtual environment outside "
                                 "/root, say), or run the grader as an ordinary user")
    os.chmod(scratch_base, 0o711)
    blocked = unreachable(scratch_base, listed=False)
    if blocked:
        raise PrivilegeError(f"--sandbox basic as root: the scratch folder {scratch_base} lies under {blocked}, which "
                             "other users cannot enter; set TMPDIR to a folder they can (such as /tmp)")
    return uid_base, shared


def _data_folders() -> list[str]:
    """The course package and the site-packages folders: where code reads data files by path."""
    import site
    import sysconfig

    import utils

    folders = {os.path.dirname(os.path.abspath(utils.__file__))}
    folders.update(p for p in [sysconfig.get_paths().get(k) for k in ("purelib", "platlib")] + site.getsitepackages()
                   if p and os.path.isdir(p))
    return sorted(folders)


def unreachable(path: str, listed: bool = True) -> Optional[str]:
    """The first folder on the way to ``path`` that a user other than its owner and group cannot
    search (or ``path`` itself: a file such a user cannot read, or with ``listed`` a folder it
    cannot list); None when there is none."""
    parts = [p for p in os.path.abspath(path).split("/") if p]
    chain = ["/"] + ["/" + "/".join(parts[:i + 1]) for i in range(len(parts))]
    for i, current in enumerate(chain):
        try:
            mode = os.stat(current).st_mode
        except OSError:
            return current
        if not stat.S_ISDIR(mode):
            need = stat.S_IROTH
        else:
            need = stat.S_IXOTH | (stat.S_IROTH if listed and i == len(chain) - 1 else 0)
        if mode & need != need:
            return current
    return None


def world_writable(roots: list[str], limit: int = 5) -> list[str]:
    """Up to ``limit`` files or folders under ``roots`` that any user may write (the unprivileged
    submission too); symbolic links are not followed."""
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in [""] + dirs + files:
                path = os.path.join(folder, name) if name else folder
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not stat.S_ISLNK(st.st_mode) and st.st_mode & stat.S_IWOTH:
                    found.append(path)
                    if len(found) >= limit:
                        return found
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
    return found


def _reach_through_descriptors() -> None:
    """Rewrite the import path so that folders the unprivileged user could not reach are read
    through descriptors opened now (as root): sys.path and every imported package's __path__."""
    import utils

    candidates = {p for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p)}
    candidates.add(os.path.dirname(os.path.dirname(os.path.abspath(utils.__file__))))
    roots = {}
    for path in sorted(candidates, key=len):
        if unreachable(path) and not any(path.startswith(r + "/") for r in roots):
            roots[path] = f"/proc/self/fd/{os.open(path, os.O_PATH | os.O_DIRECTORY)}"
    if not roots:
        return

    def through(p: str) -> str:
        for root, alias in roots.items():
            if p == root or p.startswith(root + "/"):
                return alias + p[len(root):]
        return p

    sys.path[:] = [through(p) if isinstance(p, str) else p for p in sys.path]
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [through(p) if isinstance(p, str) else p for p in search]
    sys.path_importer_cache.clear()


def drop(scratch: str, uid_base: Optional[int], shared_uid: Optional[int]) -> int:
    """Become the submission's own unprivileged user (irreversibly: real, effective and saved ids),
    owning its scratch folder; returns the uid. Called as root, before any student code."""
    import ctypes
    import signal

    uid = uid_base + os.getpid() if uid_base is not None else shared_uid
    if uid is None:
        raise RuntimeError("no unprivileged uid to run the submission as")
    for folder, dirs, files in os.walk(scratch):  # it was made by root
        for name in [folder] + [os.path.join(folder, n) for n in dirs + files]:
            os.lchown(name, uid, uid)
    _reach_through_descriptors()
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != uid or os.getgroups():
        raise RuntimeError(f"could not become uid {uid}")
    # A change of credentials clears the parent-death signal: set it again (it dies with the zygote).
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    return uid
