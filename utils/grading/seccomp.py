"""A seccomp filter for the submission's process: the kernel refuses what the audit hook can only
ask Python to refuse (this module runs INSIDE that process, after the imports, before student code).

Refused with EPERM, whatever calls them (Python, a C extension, ctypes, ``_posixsubprocess``):

- new processes: ``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD`` (threads still work), and
  ``execve``/``execveat``; ``clone3`` answers ENOSYS, so the C library falls back to ``clone``,
  whose flags the filter can read. This is the process-count limit: the notebook's process is
  the only one, so the watchdog that measures its memory and kills it on time sees everything;
- memory no limit counts: ``memfd_create`` and ``memfd_secret`` (file-backed anonymous memory
  that neither RSS nor RLIMIT_DATA sees), and System V shared memory, semaphores and message
  queues, which outlive the process;
- reaching into another process: ``ptrace``, ``process_vm_readv``/``writev``;
- undoing the mounts or entering other namespaces (``mount``, ``umount2``, ``pivot_root``,
  ``chroot``, ``unshare``, ``setns``), and kernel interfaces no notebook needs and exploits like
  (``bpf``, ``perf_event_open``, ``userfaultfd``, the key ring, ``io_uring``). So the audit
  hook's exemption for code running inside an installed module's import (whose file name a
  submission can forge with ``compile``) can no longer reach any of this through ctypes.

The filter is permanent (``PR_SET_NO_NEW_PRIVS`` first, as an unprivileged filter needs) and is
inherited by every thread. Supported on x86_64 and aarch64 Linux; elsewhere ``install`` raises
``SeccompUnavailable`` and the grader says so (see ``available``).
"""
from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import struct
import subprocess
import sys

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
CLONE_THREAD = 0x00010000
# BPF opcodes: ld word absolute, jump if equal, jump if any bit set, return constant.
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JSET_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x45, 0x35, 0x06
# Offsets in struct seccomp_data: nr, arch, instruction_pointer, args[6] (u64 each, little-endian).
NR_OFFSET, ARCH_OFFSET, ARG0_LOW_OFFSET = 0, 4, 16

# arch -> (AUDIT_ARCH value, {syscall name: number}); numbers from the kernel's syscall tables.
ARCHES = {
    "x86_64": (0xC000003E, {
        "fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "execve": 59, "execveat": 322,
        "memfd_create": 319, "memfd_secret": 447, "shmget": 29, "shmat": 30, "shmctl": 31,
        "semget": 64, "semop": 65, "semctl": 66, "semtimedop": 220, "msgget": 68, "msgsnd": 69,
        "msgrcv": 70, "msgctl": 71, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308,
        "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "add_key": 248, "request_key": 249,
        "keyctl": 250, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}),
    "aarch64": (0xC00000B7, {
        "clone": 220, "clone3": 435, "execve": 221, "execveat": 281, "memfd_create": 279,
        "memfd_secret": 447, "shmget": 194, "shmctl": 195, "shmat": 196, "semget": 190, "semctl": 191,
        "semtimedop": 192, "semop": 193, "msgget": 186, "msgctl": 187, "msgrcv": 188, "msgsnd": 189,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
        "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268,
        "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "add_key": 217, "request_key": 218,
        "keyctl": 219, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}),
}
X32_SYSCALL_BIT = 0x40000000  # x86_64's x32 ABI: another numbering of the same calls, refused whole


class SeccompUnavailable(RuntimeError):
    """This machine's kernel or architecture cannot take the filter."""


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes:
    """The filter as BPF instructions (struct sock_filter[]) for ``machine`` (default: this one)."""
    machine = machine or platform.machine()
    if machine not in ARCHES:
        raise SeccompUnavailable(f"no seccomp syscall table for {machine!r} (x86_64 and aarch64 only)")
    audit_arch, nr = ARCHES[machine]
    eperm = SECCOMP_RET_ERRNO | errno.EPERM
    denied = [nr[name] for name in ("fork", "vfork", "execve", "execveat", "memfd_create", "memfd_secret",
                                    "shmget", "shmat", "shmctl", "semget", "semop", "semctl", "semtimedop",
                                    "msgget", "msgsnd", "msgrcv", "msgctl", "ptrace", "process_vm_readv",
                                    "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "unshare",
                                    "setns", "bpf", "perf_event_open", "userfaultfd", "add_key", "request_key",
                                    "keyctl", "io_uring_setup", "io_uring_enter", "io_uring_register") if name in nr]
    # Layout (BPF jumps only forward): arch check, load nr, x32 check, clone3 -> ENOSYS, clone -> the
    # flags test, each denied nr -> EPERM, allow; then the flags test (CLONE_THREAD set -> allow),
    # EPERM, ALLOW, ENOSYS.
    out = [_insn(BPF_LD_W_ABS, ARCH_OFFSET)]
    body: list[tuple] = []  # (code, k, target_true, target_false) with symbolic targets
    body.append((BPF_JEQ_K, audit_arch, None, "eperm"))  # another ABI: refuse everything
    body.append((BPF_LD_W_ABS, NR_OFFSET, None, None))
    if machine == "x86_64":
        body.append((BPF_JGE_K, X32_SYSCALL_BIT, "eperm", None))
    body.append((BPF_JEQ_K, nr["clone3"], "enosys", None))
    body.append((BPF_JEQ_K, nr["clone"], "clone", None))
    for n in denied:
        body.append((BPF_JEQ_K, n, "eperm", None))
    body.append((BPF_RET_K, SECCOMP_RET_ALLOW, None, None))
    labels = {}
    labels["clone"] = len(body)
    body.append((BPF_LD_W_ABS, ARG0_LOW_OFFSET, None, None))  # clone's flags (x86_64 and aarch64 alike)
    body.append((BPF_JSET_K, CLONE_THREAD, "allow", "eperm"))
    labels["eperm"] = len(body)
    body.append((BPF_RET_K, eperm, None, None))
    labels["allow"] = len(body)
    body.append((BPF_RET_K, SECCOMP_RET_ALLOW, None, None))
    labels["enosys"] = len(body)
    body.append((BPF_RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS, None, None))
    for i, (code, k, t, f) in enumerate(body):
        def rel(target):  # BPF jumps are relative to the next instruction
            return 0 if target is None else labels[target] - i - 1
        if code == BPF_RET_K or code == BPF_LD_W_ABS:
            out.append(_insn(code, k))
        else:
            out.append(_insn(code, k, rel(t), rel(f)))
    return b"".join(out)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Load the filter into this process (permanent; inherited by its threads)."""
    if not sys.platform.startswith("linux"):
        raise SeccompUnavailable("seccomp is Linux-only")
    code = program()
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompUnavailable(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompUnavailable(f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")


_PROBE = ("import os, threading\n"
          "from utils.grading import seccomp\n"
          "seccomp.install()\n"
          "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
          "try:\n"
          "    os.fork()\n"
          "except PermissionError:\n"
          "    raise SystemExit(0)\n"
          "os._exit(5)\n")


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether the filter loads here and does what it says (checked once, in a throwaway process)."""
    try:
        import utils

        # run beside the package, so that ``utils`` imports in an installed copy as in a checkout
        above = os.path.dirname(os.path.dirname(os.path.realpath(utils.__file__)))
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, timeout=60, cwd=above)
        return done.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
