"""The sandbox's seccomp filter: a classic BPF program, handed to bwrap with ``--seccomp FD``.

:func:`seccomp_filter` builds it for this CPU (x86_64, aarch64; None elsewhere): syscalls of
another ABI kill the process; ``fork``/``vfork`` are refused and ``clone`` only allowed with
``CLONE_THREAD`` (unless processes are allowed), ``clone3`` gets ``ENOSYS``; the kernel attack
surface in ``_DENY`` gets ``EPERM``. :mod:`labelers.verify.sandbox` (which re-exports it) and the
sympy workers of :mod:`labelers.verify.pool` use it.
"""

from __future__ import annotations

import platform
import struct
from typing import Any

# ---------------------------------------------------------------------------------------------
# The seccomp filter (classic BPF, handed to bwrap with --seccomp FD)

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# Syscalls refused with EPERM on every run (kernel attack surface a snippet never needs).
_DENY = {
    "x86_64": {"ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "keyctl": 250, "add_key": 248,
               "request_key": 249, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "io_uring_setup": 425,
               "io_uring_enter": 426, "io_uring_register": 427, "unshare": 272, "setns": 308, "mount": 165,
               "pivot_root": 155, "chroot": 161, "kexec_load": 246, "init_module": 175, "finit_module": 313,
               "personality": 135},
    "aarch64": {"ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "keyctl": 219, "add_key": 217,
                "request_key": 218, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425,
                "io_uring_enter": 426, "io_uring_register": 427, "unshare": 97, "setns": 268, "mount": 40,
                "pivot_root": 41, "chroot": 51, "kexec_load": 104, "init_module": 105, "finit_module": 273,
                "personality": 92},
}
# Process creation: fork/vfork refused, clone only with CLONE_THREAD, clone3 -> ENOSYS (libc then
# uses clone, whose flags the filter can read).
_FORK = {"x86_64": {"fork": 57, "vfork": 58}, "aarch64": {}}
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435
_CLONE_THREAD = 0x00010000
_RET_ALLOW, _RET_KILL = 0x7FFF0000, 0x80000000
_RET_EPERM, _RET_ENOSYS = 0x00050000 | 1, 0x00050000 | 38


def seccomp_filter(machine: str | None = None, allow_processes: bool = False) -> bytes | None:
    """The filter program (``struct sock_filter`` array) for this CPU, or None for other CPUs.

    Syscalls of another ABI (``int 0x80``, x32) kill the process, so numbers cannot be dodged.
    """
    machine = machine or platform.machine()
    if machine not in _AUDIT_ARCH:
        return None
    program: list[tuple[int, Any, Any, int]] = [
        (0x20, 0, 0, 4),  # load arch
        (0x15, 1, 0, _AUDIT_ARCH[machine]),
        (0x06, 0, 0, _RET_KILL),
        (0x20, 0, 0, 0),  # load syscall number
    ]
    if machine == "x86_64":
        program.append((0x35, "kill", 0, 0x40000000))  # x32 ABI
    denied = list(_DENY[machine].values())
    if not allow_processes:
        denied += list(_FORK[machine].values())
        program.append((0x15, "clone", 0, _CLONE[machine]))
        program.append((0x15, "enosys", 0, _CLONE3))
    program += [(0x15, "eperm", 0, nr) for nr in denied]
    program.append((0x06, 0, 0, _RET_ALLOW))
    labels = {"kill": len(program)}
    program.append((0x06, 0, 0, _RET_KILL))
    labels["eperm"] = len(program)
    program.append((0x06, 0, 0, _RET_EPERM))
    labels["enosys"] = len(program)
    program.append((0x06, 0, 0, _RET_ENOSYS))
    labels["clone"] = len(program)
    program += [
        (0x20, 0, 0, 16),  # clone flags (low 32 bits of args[0])
        (0x45, 0, 1, _CLONE_THREAD),
        (0x06, 0, 0, _RET_ALLOW),
        (0x06, 0, 0, _RET_EPERM),
    ]
    out = bytearray()
    for index, (code, jt, jf, k) in enumerate(program):
        jt = labels[jt] - index - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - index - 1 if isinstance(jf, str) else jf
        out += struct.pack("=HBBI", code, jt, jf, k)
    return bytes(out)
