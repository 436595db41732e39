"""Small pieces shared by the command modules; nothing heavy is imported here."""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["GROUP_CHOICES", "SERVED", "given", "open_for_writing", "opened_since", "flush_stdio",
           "fast_exit", "other_threads"]

SERVED = frozenset({"hmc", "chroma", "measure", "run"})
"""The commands that import torch and that scripts start once per configuration or HMC
segment: the console entry ends them with :func:`fast_exit`, and a ``qcd-bridge serve`` server
runs them (bridge.cli.serve)."""

# the settings keys of the gauge groups (bridge.flows.checkpoints.GROUPS; a test keeps them
# equal) spelled out so that building the parser imports no torch
GROUP_CHOICES = ("su2", "su3", "u1")


def given(args: Any, keys: list[str]) -> dict[str, Any]:
    """The options of ``args`` among ``keys`` that were given: not None and not False."""
    out = {}
    for key in keys:
        v = getattr(args, key, None)
        if v is not None and v is not False:
            out[key] = v
    return out


def open_for_writing() -> dict[int, str] | None:
    """The files and pipes this process holds open for writing, besides stdin, stdout and
    stderr, as ``{descriptor: target}`` (``/proc/self/fd``); None where that cannot be listed.
    One opened by the command may hold data in a buffer that only the interpreter's shutdown
    would write (those inherited from the parent process are compared away by the callers)."""
    import fcntl
    import stat

    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return None
    held = {}
    for fd in fds:
        if fd <= 2:
            continue
        try:
            st = os.fstat(fd)
            mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        except OSError:  # the descriptor of the listing itself, already closed
            continue
        if (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)) and mode != os.O_RDONLY:
            try:
                held[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                held[fd] = f"fd {fd}"
    return held


def opened_since(before: dict[int, str] | None) -> dict[int, str] | None:
    """What :func:`open_for_writing` lists now and did not list in ``before``; None when either
    listing is unavailable."""
    now = open_for_writing()
    if now is None or before is None:
        return None
    return {fd: target for fd, target in now.items() if before.get(fd) != target}


def flush_stdio() -> bool:
    """Flush Python's stdout and stderr; False if that failed (a closed pipe)."""
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except (OSError, ValueError):
            ok = False
    return ok


def fast_exit(status: int, before: dict[int, str] | None) -> int:
    """End the process with ``status`` without the interpreter's teardown (with torch loaded,
    0.3-0.5 s of freeing modules), where that is safe: the ``atexit`` handlers run first, and
    the fast way is taken only when no thread is left that the exit would wait for, stdout and
    stderr flushed, and the command left no file or pipe open for writing beyond those open in
    ``before`` (its start; every command closes what it wrote before it returns).  Otherwise
    returns ``status`` for the ordinary exit.  Used by the console entry of the commands that
    import torch, never by :func:`bridge.cli.main` called as a function."""
    import atexit

    if other_threads():  # the ordinary exit waits for them
        return status
    atexit._run_exitfuncs()
    atexit._clear()
    held = opened_since(before)
    if held is None or held or not flush_stdio():
        return status
    os._exit(status)


def other_threads() -> list[str]:
    """Names of the threads besides the main one that the interpreter's exit would wait for
    (alive, not daemons)."""
    threading = sys.modules.get("threading")
    if threading is None:
        return []
    main = threading.main_thread()
    return [t.name for t in threading.enumerate()
            if t is not main and t.is_alive() and not t.daemon]
