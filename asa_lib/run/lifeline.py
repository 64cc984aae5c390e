"""Child processes that end with their parent, and process identities that survive pid reuse.

``asa run`` starts one papermill kernel per stage; with ``--processes N`` the
kernel starts torchrun, and torchrun starts the workers. A ``kill -KILL`` of
the runner runs no cleanup code, so on Linux each of these processes asks the
kernel to be killed the moment its parent ends (``prctl(PR_SET_PDEATHSIG,
SIGKILL)``): the papermill kernel when the runner ends, torchrun when the
kernel ends, a worker when torchrun ends. The signal is set in the child
itself, never in a ``preexec_fn`` (unsafe in a process with threads):

- :func:`wrap` prefixes a command with this file: it sets the signal, checks
  that the parent it was started by is still its parent (the parent may have
  died before the signal was set) and ``exec``s the command; the signal
  survives ``exec``. The runner wraps the kernel, a kernel wraps torchrun.
- :func:`die_with_parent` does the same inside a process: the workers call it
  first thing (torchrun starts them, not this code).

Elsewhere than Linux there is no such signal: :func:`wrap` returns the command
unchanged and :func:`die_with_parent` does nothing.

A process's *identity* is ``"<pid>:<start time>"`` (the start time in clock
ticks since boot, ``/proc/<pid>/stat`` field 22): a pid that is reused later
belongs to another identity. The run lock records its holder's identity and
the runner hands it to every process it starts (:data:`HOLDER_ENV`), so that
a later run can tell a live holder, or processes it left behind, from a stale
record (:mod:`asa_lib.run.runner`).

This file imports only the standard library: it runs as a script (``python
-I -S lifeline.py PARENT_PID CMD ...``) before the command it starts.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
HOLDER_ENV = "ASA_RUN_HOLDER"  # the identity of the `asa run` that started a process
LAUNCHER_ENV = "ASA_LAUNCHER_PID"  # the pid of the process that started torchrun (for workers)
PROC = Path("/proc")


def supported() -> bool:
    return sys.platform.startswith("linux")


def _end_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(parent: int | None = None) -> None:
    """Be killed (SIGKILL) when the parent process ends; end at once if ``parent`` is already gone.

    ``parent``: the pid this process was started by; None takes the current
    parent (for a caller that cannot know it, see :func:`die_with_grandparent`).
    """
    if not supported():
        return
    import ctypes

    parent = os.getppid() if parent is None else parent
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not allowed here (a seccomp filter): carry on without it
    if os.getppid() != parent:  # it ended before the signal was set
        _end_now()


def die_with_grandparent(grandparent: int) -> None:
    """:func:`die_with_parent`, for a process whose parent was started by ``grandparent``.

    A torchrun worker calls it: should torchrun have ended before this call,
    the worker's parent is now some reaper, not a child of ``grandparent``.
    """
    parent = os.getppid()
    die_with_parent(parent)
    if supported() and parent_of(parent) != grandparent:
        _end_now()


def wrap(cmd: list[str]) -> list[str]:
    """``cmd`` started through this file: it dies with the process that runs it (this one)."""
    if not supported():
        return list(cmd)
    return [sys.executable, "-I", "-S", str(Path(__file__).resolve()), str(os.getpid()), *cmd]


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 onwards), or None."""
    try:
        text = (PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def identity(pid: int | None = None) -> str | None:
    """``"<pid>:<start time>"`` of a running process (this one by default), None if there is none."""
    pid = os.getpid() if pid is None else pid
    fields = _stat(pid)
    if fields is None:
        return None if supported() or not _exists(pid) else f"{pid}:?"  # no /proc: no start time
    if fields[0] == "Z":  # a zombie has ended; it only waits for its parent to read its status
        return None
    return f"{pid}:{fields[19]}"


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's
        return True
    return True


def pid_of(ident: str) -> str:
    return ident.split(":")[0]


def alive(ident: str) -> bool:
    """Whether the process of ``ident`` still runs (False for a reused pid: another start time)."""
    pid = pid_of(ident)
    return pid.isdigit() and identity(int(pid)) == ident


def started_by(holder: str) -> list[int]:
    """The pids of running processes started by the run of identity ``holder`` (:data:`HOLDER_ENV`).

    Read from each process's initial environment (``/proc/<pid>/environ``, readable
    for one's own processes); [] where there is no ``/proc``.
    """
    want = f"{HOLDER_ENV}={holder}".encode()
    found = []
    try:
        entries = list(PROC.iterdir())
    except OSError:
        return []
    for p in entries:
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            env = (p / "environ").read_bytes()
        except OSError:  # another user's process, or it just ended
            continue
        if want in env.split(b"\0") and identity(int(p.name)) is not None:
            found.append(int(p.name))
    return sorted(found)


def main(argv: list[str]) -> int:
    """``lifeline.py PARENT_PID CMD ...``: die with PARENT_PID, then become CMD."""
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: lifeline.py PARENT_PID COMMAND [ARG ...]", file=sys.stderr)
        return 2
    die_with_parent(int(argv[0]))
    os.execvp(argv[1], argv[1:])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
