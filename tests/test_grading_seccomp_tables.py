"""Our seccomp filter (utils/grading/seccomp.py) is assembled by hand from syscall tables. Where
libseccomp is installed (Debian: libseccomp2, which apt itself depends on), its resolver, the
one audited tool that every container runtime uses, checks each number and architecture value
of those tables. (Issue 31 weighed adopting libseccomp outright: see INSTRUCTORS.md.)"""
from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from utils.grading import seccomp


def _libseccomp():
    name = ctypes.util.find_library("seccomp")
    if not name:
        pytest.skip("libseccomp is not installed here (Debian: apt-get install libseccomp2)")
    lib = ctypes.CDLL(name)
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    return lib


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHES))
def test_our_syscall_tables_agree_with_libseccomp(machine):
    lib = _libseccomp()
    audit_arch, numbers = seccomp.ARCHES[machine]
    token = lib.seccomp_arch_resolve_name(machine.encode())
    assert token == audit_arch  # libseccomp's architecture tokens are the kernel's AUDIT_ARCH values
    theirs = {name: lib.seccomp_syscall_resolve_name_arch(token, name.encode()) for name in numbers}
    assert theirs == numbers
