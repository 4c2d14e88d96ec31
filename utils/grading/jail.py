"""The walls around a submission's process (this module runs INSIDE it, before any student code).

Three layers, strongest first:

1. ``enter_namespace`` (sandbox "namespace", used when user namespaces are available): the
   process (forked by the zygote, see ``runner``) has entered new user, mount, pid and network
   namespaces, so it sees no other process and has no network. Here, before any student code, it
   hides the submissions, the gradebook, the feedback folder, the trusted solutions and every
   other scratch directory under empty read-only mounts, puts a size-limited tmpfs at its own
   scratch path, and then moves into a new, ALLOW-LIST root (``allowed_paths``: Python's standard
   library and site-packages, the course package, the system's shared libraries, a few /dev
   nodes, its own /proc and its scratch folder; nothing else of the host's file system exists
   there: no repository, no .git, no course directory, no gradebook folder, no /proc of other
   processes). It remounts everything read-only but the scratch folder, and finally enters a
   second user+mount namespace, which locks those mounts: the student's code cannot unmount or
   remount them. The hiding mounts stay as a second wall inside the allowed paths.
2. ``set_limits``: memory (RLIMIT_DATA), file size, CPU time, no core dumps; the process is made
   non-dumpable, so no other process of the same user can read its memory or open its pipes.
3. ``install_guard``: a Python audit hook that refuses (PermissionError) writes outside the
   scratch directory, reads of the protected paths, starting processes, signalling other
   processes, sockets, ctypes and gc/frame introspection, and reports each refusal to the grader,
   which flags the submission. Audit hooks are not a security boundary on their own (PEP 578);
   here they turn casual tampering into a visible flag, and are the only file-level wall where
   namespaces are unavailable (sandbox "basic").
"""
from __future__ import annotations

import ctypes
import errno
import os
import resource
import shutil
import sys
import tempfile
from typing import Callable, Iterable

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x00020000, 0x20000000, 0x40000000
CLONE_NEWIPC = 0x08000000  # System V IPC objects die with the submission
SUBMISSION_NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, -1)
PR_SET_DUMPABLE = 4
_KEEP_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}


class JailError(RuntimeError):
    """The sandbox could not be set up (a grader-side problem, never the student's fault)."""


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, source, target: str, fstype, flags: int, data=None) -> None:
    enc = (lambda s: s.encode() if isinstance(s, str) else s)
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def enter_user_namespace(libc, flags: int) -> None:
    """unshare(flags), CLONE_NEWUSER among them, and become root of the new user namespace, mapped to
    the user we were."""
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def fork_into_namespaces(libc) -> int:
    """The runner's first step of the namespace sandbox: new user, mount, pid, network and IPC
    namespaces, then a fork, since only a child enters the new pid namespace (as its pid 1). Returns
    like ``os.fork``: 0 in that child, the child's pid in the caller. ``enter_namespace`` comes next,
    in the child."""
    enter_user_namespace(libc, SUBMISSION_NAMESPACES)
    return os.fork()


def _mountinfo() -> list[tuple[str, list[str]]]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            point = parts[4].encode().decode("unicode_escape")
            out.append((point, parts[5].split(",")))
    return out


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


# What a submission's root holds besides Python's own paths and the course package (directories
# bound with everything mounted below them, files bound alone; symlinks such as Debian's /lib ->
# usr/lib are recreated as symlinks). The shared libraries are needed by extension modules that a
# notebook imports after the sandbox is up (matplotlib's, for instance).
SYSTEM_PATHS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib",
                "/etc/ld.so.cache", "/etc/localtime", "/dev/null", "/dev/zero", "/dev/full", "/dev/random",
                "/dev/urandom")


def allowed_paths(exclude: Iterable[str] = ()) -> list[str]:
    """The host paths a submission's root exposes: SYSTEM_PATHS, the standard library and every
    site-packages directory, each entry of sys.path that is a directory, and the course package
    (its own folder only: an editable install puts the repository root on sys.path, which is
    replaced by the package folder; a virtual environment kept in the repository, such as the
    project's .venv, is Python's own and goes in). Anything inside ``exclude`` is left out."""
    import sysconfig

    import utils

    package = os.path.dirname(os.path.abspath(utils.__file__))
    repo = os.path.dirname(package)
    python = [os.path.normpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    candidates = list(SYSTEM_PATHS) + [package] + python
    candidates += [p for p in sys.path if p and os.path.isabs(p)]
    out: list[str] = []
    for path in candidates:
        path = os.path.normpath(path)
        if not os.path.lexists(path) or path in out:
            continue
        if path != package and (_inside(repo, path) or (_inside(path, repo) and path not in python)):
            continue  # the repository (or a folder holding it): only the package and Python's own folders go in
        if any(_inside(path, e) for e in exclude):
            continue
        out.append(path)
    return out


def _enter_allow_list_root(libc, scratch: str, paths: Iterable[str]) -> None:
    """Build a root holding only ``paths`` (bound read-only later, with everything else), the
    scratch folder and a fresh /proc, and pivot into it; the old root is detached."""
    root = scratch.rstrip("/") + ".root"
    os.makedirs(root, exist_ok=True)
    _mount(libc, "tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path in paths:
        target = root + path
        if os.path.islink(path):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.lexists(target):
                os.symlink(os.readlink(path), target)
            continue
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "a").close()
        _mount(libc, path, target, None, MS_BIND | MS_REC)
    os.makedirs(root + scratch, exist_ok=True)
    _mount(libc, scratch, root + scratch, None, MS_BIND)
    os.makedirs(root + "/proc", exist_ok=True)
    _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # this pid namespace only
    os.makedirs(root + "/tmp", exist_ok=True)  # empty and read-only: TMPDIR is inside the scratch folder
    os.chdir(root)
    if libc.syscall(SYS_PIVOT_ROOT, b".", b".") != 0:  # the old root ends up stacked on the new one
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root: {os.strerror(err)}")
    if libc.umount2(b".", MNT_DETACH) != 0:  # ... and is detached: nothing outside the allow-list is left
        err = ctypes.get_errno()
        raise OSError(err, f"umount2: {os.strerror(err)}")
    os.chdir("/")


def enter_namespace(scratch: str, hide_dirs: Iterable[str], hide_files: Iterable[str], scratch_mb: int,
                    mount_proc: bool = True, allow_list_root: bool = True) -> None:
    """Set up the mounts described in the module docstring (we are root in fresh user, mount and
    pid namespaces, and pid 1 of the latter) and lock them."""
    hide_dirs, hide_files = list(hide_dirs), list(hide_files)
    libc = _libc()
    try:
        _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
        if mount_proc and not allow_list_root:  # a /proc that shows this namespace's processes only
            _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        for d in hide_dirs:
            if os.path.isdir(d):
                _mount(libc, "tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
        for f in hide_files:
            if os.path.isfile(f):
                _mount(libc, "/dev/null", f, None, MS_BIND)
        os.makedirs(scratch, exist_ok=True)  # inside a hiding tmpfs when the grader's folder is hidden
        _mount(libc, "tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(scratch_mb)}m,mode=0700")
        if allow_list_root:
            _enter_allow_list_root(libc, scratch, allowed_paths(exclude=list(hide_dirs) + [scratch]))
        for point, opts in _mountinfo():
            if _inside(point, scratch) or _inside(point, "/proc"):
                continue
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY
            for o in opts:
                flags |= _KEEP_FLAGS.get(o, 0)
            try:
                _mount(libc, None, point, None, flags)
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENOENT):
                    raise
                # a mount we may not touch (already locked by the host) stays as the host made it
        # A second user namespace owned by this one: the mounts above become locked for it.
        enter_user_namespace(libc, CLONE_NEWUSER | CLONE_NEWNS)
        os.chdir(scratch)
    except OSError as e:
        raise JailError(f"namespace sandbox setup failed: {e}") from None


def probe() -> int:
    """Whether the kernel allows the namespace sandbox: the very steps a submission's process takes
    (``fork_into_namespaces``, then ``enter_namespace`` with nothing to hide), in a throwaway scratch
    folder. Returns an exit status, 0 where every step worked. It forks, so ``sandbox`` runs it in a
    process of its own: ``python -I -c "from utils.grading import jail; raise SystemExit(jail.probe())"``."""
    base = tempfile.mkdtemp(prefix="demystify-probe-")
    try:
        pid = os.fork()
        if pid == 0:
            code = 1  # whatever goes wrong: no namespace sandbox here
            try:
                child = fork_into_namespaces(_libc())
                if child == 0:  # pid 1 of the new pid namespace
                    enter_namespace(os.path.join(base, "scratch"), (), (), scratch_mb=1)
                    code = 0
                else:
                    code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
            except (OSError, JailError) as e:  # the kernel or the container refused a step
                print(f"namespace probe: {e}", file=sys.stderr)
            finally:
                os._exit(code)  # a forked copy never returns into the caller's code
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the empty folders the probe made; its mounts died with it


def set_limits(memory_bytes: int, fsize_bytes: int, cpu_seconds: int) -> None:
    """Resource limits (hard = soft, so the student cannot raise them) and a non-dumpable process."""
    if memory_bytes:
        with open("/proc/self/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        data_now = int(status.get("VmData", "0 kB").split()[0]) * 1024
        # RLIMIT_DATA counts private writable memory, including torch's thread arenas that were
        # reserved at import but never touched: the budget is on top of what is mapped now.
        limit = data_now + memory_bytes
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    for which, value in ((resource.RLIMIT_FSIZE, fsize_bytes), (resource.RLIMIT_CPU, cpu_seconds),
                         (resource.RLIMIT_CORE, 0)):
        if value is not None:
            soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
    try:
        _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # a C library without prctl (not Linux): there is no PR_SET_DUMPABLE to set


# --------------------------------------------------------------------------- the audit hook

_DENY = {
    "subprocess.Popen": "start a process", "os.system": "start a process", "os.exec": "start a process",
    "os.posix_spawn": "start a process", "os.spawn": "start a process", "os.fork": "fork",
    "os.forkpty": "fork", "os.startfile": "start a process", "pty.spawn": "start a process",
    "ctypes.dlopen": "use ctypes", "ctypes.dlsym": "use ctypes", "ctypes.dlsym/handle": "use ctypes",
    "ctypes.cdata": "use ctypes", "ctypes.cdata/buffer": "use ctypes", "ctypes.call_function": "use ctypes",
    "ctypes.string_at": "use ctypes", "ctypes.wstring_at": "use ctypes", "ctypes.PyObj_FromPtr": "use ctypes",
    "socket.__new__": "open a socket", "socket.connect": "open a socket", "socket.bind": "open a socket",
    "socket.getaddrinfo": "open a socket", "socket.gethostbyname": "open a socket",
    "resource.setrlimit": "change resource limits", "resource.prlimit": "change resource limits",
    "gc.get_objects": "inspect the grader's objects", "gc.get_referrers": "inspect the grader's objects",
    "gc.get_referents": "inspect the grader's objects", "sys._current_frames": "inspect the grader's frames",
    "sys.setprofile": None, "sys.settrace": None,  # allowed (debuggers, tqdm): listed for clarity
    "object.__setattr__": None,
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_WRITES = {"os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,), "os.symlink": (1,),
                "os.link": (1,), "os.chmod": (0,), "os.chown": (0,), "os.truncate": (0,), "os.utime": (0,),
                "os.setxattr": (0,), "os.removexattr": (0,), "shutil.rmtree": (0,), "shutil.move": (1,),
                "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.copymode": (1,),
                "shutil.copystat": (1,), "os.mkfifo": (0,), "os.mknod": (0,), "os.chflags": (0,)}
_PATH_READS = {"os.listdir": 0, "os.scandir": 0, "glob.glob": 0, "os.link": 0, "shutil.copyfile": 0,
               "shutil.copytree": 0, "os.chdir": 0}


def install_guard(scratch: str, protected: Iterable[str], report: Callable[[str], None]) -> None:
    """Install the audit hook (permanent for the life of the process)."""
    scratch = os.path.realpath(scratch)
    protected = tuple(os.path.realpath(p) for p in protected if p)
    writable_devices = ("/dev/null",)
    own_pid = os.getpid()
    realpath, readlink, getcwd, isabs, join = (os.path.realpath, os.readlink, os.getcwd, os.path.isabs,
                                               os.path.join)
    busy = [False]
    reported = [0]

    def resolve(path, dir_fd=None):
        if isinstance(path, int):
            return realpath(readlink(f"/proc/self/fd/{path}"))
        if isinstance(path, bytes):
            path = path.decode(errors="surrogateescape")
        path = os.fspath(path)
        if not isabs(path):
            base = readlink(f"/proc/self/fd/{dir_fd}") if isinstance(dir_fd, int) and dir_fd >= 0 else getcwd()
            path = join(base, path)
        return realpath(path)

    def refuse(what: str):
        if reported[0] < 20:
            reported[0] += 1
            try:
                report(what)
            except OSError:  # the result pipe is gone (a submission can close it): the refusal stands
                reported[0] = 20
        raise PermissionError(errno.EACCES, f"not allowed while grading: {what}")

    def trusted_frame(filename: str) -> bool:
        if filename.startswith("<frozen "):
            return True
        return isabs(filename) and not _inside(filename, scratch)

    def during_trusted_import() -> bool:
        """An installed module doing something at import time (trio calls ldconfig, for one), with
        no student code between that import and this event."""
        f = sys._getframe(2)
        above = []
        while f is not None:
            code = f.f_code
            if code.co_name == "_find_and_load" and code.co_filename.startswith("<frozen importlib"):
                return bool(above) and all(trusted_frame(name) for name in above)
            above.append(code.co_filename)
            f = f.f_back
        return False

    def writable(p: str) -> bool:
        return _inside(p, scratch) or p in writable_devices

    def readable(p: str) -> bool:
        return _inside(p, scratch) or not any(_inside(p, root) for root in protected)

    def hook(event: str, args: tuple) -> None:
        if busy[0]:
            return
        busy[0] = True
        try:
            if event == "open":
                path, mode, flags = args
                if path is None:
                    return
                write = bool(flags & _WRITE_FLAGS) if isinstance(flags, int) else True
                if write and mode is None and isinstance(path, (str, bytes)) and not isabs(os.fsdecode(path)):
                    refuse(f"os.open of a relative path for writing ({os.fsdecode(path)!r})")
                p = resolve(path)
                if write and not writable(p):
                    refuse(f"write {p}")
                if not readable(p):
                    refuse(f"read {p}")
            elif event in _DENY:
                if _DENY[event] is not None and not during_trusted_import():
                    refuse(f"{_DENY[event]} ({event})")
            elif event in ("os.kill", "os.killpg", "signal.pthread_kill"):
                if event != "signal.pthread_kill" and args[0] not in (own_pid, 0):
                    refuse(f"signal process {args[0]}")
            elif event == "sqlite3.connect":
                db = args[0]
                if isinstance(db, (str, bytes)) and os.fsdecode(db) not in (":memory:", ""):
                    p = resolve(db)
                    if not writable(p):
                        refuse(f"open database {p}")
            else:
                if event in _PATH_WRITES:
                    dir_fd = args[-1] if args and isinstance(args[-1], int) else None
                    for i in _PATH_WRITES[event]:
                        if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike)):
                            p = resolve(args[i], dir_fd)
                            if not writable(p):
                                refuse(f"{event} {p}")
                if event in _PATH_READS:
                    i = _PATH_READS[event]
                    if i < len(args) and isinstance(args[i], (str, bytes, os.PathLike, int)):
                        p = resolve(args[i])
                        if not readable(p):
                            refuse(f"{event} {p}")
        except PermissionError:
            raise  # a refusal
        except (OSError, ValueError):
            pass  # an unresolvable path (a closed fd, a deleted cwd, a null byte): nothing to protect there
        finally:
            busy[0] = False

    sys.addaudithook(hook)
