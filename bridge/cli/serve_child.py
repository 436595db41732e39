"""The child side of ``qcd-bridge serve`` (:mod:`bridge.cli.serve`): a forked copy of the
server becomes the client's command (its stdio, threads) and leaves as a fresh process would,
with ``os._exit`` so that nothing of the server's state is torn down."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

__all__ = ["become", "run_argv", "take_stdio", "apply_threads", "flush_leftovers", "leave",
           "leave_by_signal"]


def become(conn: Any, msg: dict[str, Any], fds: list[int], sel: Any, wake_w: int) -> None:
    """In the forked child: drop the server's sockets (``sel``'s, but the client's ``conn``;
    the wake-up pipe ``wake_w``), take the client's session role, stdio, working directory,
    environment and threads, run the command and leave with its status (never returns)."""
    from .common import open_for_writing

    status, before = 1, None
    try:
        os.setsid()
        for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.set_wakeup_fd(-1)
        for key in list(sel.get_map().values()):
            if key.fileobj is not conn:
                try:
                    if isinstance(key.fileobj, int):
                        os.close(key.fileobj)
                    else:
                        key.fileobj.close()
                except OSError:
                    pass
        sel.close()
        os.close(wake_w)
        take_stdio(fds, msg["stdio"], msg.get("encoding") or ["utf-8", "strict"])
        os.chdir(msg["cwd"])
        os.umask(int(msg.get("umask", 0o022)))  # files are created as the client would
        try:  # the client's scheduling priority (only ever lowered without privileges)
            os.setpriority(os.PRIO_PROCESS, 0, int(msg.get("nice", 0)))
        except OSError:
            pass
        os.environ.clear()
        os.environ.update(msg["env"])
        apply_threads(msg["env"])
        before = open_for_writing()
        status = run_argv(msg["argv"])
    except BaseException:  # noqa: BLE001 - the set-up failed: report it like a command
        import traceback

        traceback.print_exc()
    leave(status, before)


def run_argv(argv: list[str]) -> int:
    """``qcd-bridge ARGV`` in this process, as the interpreter would end it: the status of
    ``SystemExit``, a traceback and 1 for an uncaught exception, death by SIGINT after
    ``KeyboardInterrupt``."""
    import traceback

    from . import build_parser, run_command

    sys.argv = ["qcd-bridge", *argv]
    try:
        return run_command(build_parser().parse_args(argv))
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        leave_by_signal(signal.SIGINT)
    except BaseException:  # noqa: BLE001 - what the interpreter prints for an uncaught error
        traceback.print_exc()
    return 1


def take_stdio(fds: list[int], present: list[bool], encoding: list[str]) -> None:
    """The client's descriptors become 0, 1, 2 (``/dev/null`` for one it lacked), with new
    Python streams on them (line-buffered stdout on a terminal, as Python does)."""
    it = iter(fds)
    for target, has in zip((0, 1, 2), present, strict=True):
        if has:
            fd = next(it)
            os.dup2(fd, target)
            os.close(fd)
        else:
            fd = os.open(os.devnull, os.O_RDWR)
            os.dup2(fd, target)
            os.close(fd)
    enc, errors = encoding[0], encoding[1]
    sys.stdin = sys.__stdin__ = open(0, encoding=enc, errors=errors, closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding=enc, errors=errors, closefd=False,
                                       buffering=1 if os.isatty(1) else -1)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding=enc, errors="backslashreplace",
                                       closefd=False, buffering=1)


def apply_threads(env: dict[str, str]) -> None:
    """torch's intra-op threads from the client's ``OMP_NUM_THREADS`` (or
    ``MKL_NUM_THREADS``); without either, torch picks its default when first used, as in a
    fresh process."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        raw = env.get(name, "").strip()
        if raw.isdigit() and int(raw) > 0:
            import torch

            torch.set_num_threads(int(raw))
            return


def flush_leftovers() -> None:
    """Flush what an ordinary exit would: files still open (found by the garbage collector,
    after it has finalised unreachable ones) and HDF5 files."""
    import gc
    import io
    import warnings

    gc.collect()
    with warnings.catch_warnings():  # isinstance may touch deprecated module attributes
        warnings.simplefilter("ignore")
        files = [obj for obj in gc.get_objects() if isinstance(obj, io.IOBase)]
    for obj in files:
        try:
            if not obj.closed and obj.writable():
                obj.flush()
        except (OSError, ValueError):
            pass
    h5py = sys.modules.get("h5py")
    if h5py is not None:
        for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
            try:
                h5py.h5f.flush(fid)
            except Exception:  # noqa: BLE001 - a file closing under us: nothing to flush
                pass


def leave(status: int, before: dict[int, str] | None) -> None:
    """End the child as the interpreter would end a process (non-daemon threads joined, atexit
    handlers, files the command left open flushed), then ``os._exit``."""
    import atexit

    from .common import flush_stdio, opened_since

    try:
        threading = sys.modules.get("threading")
        if threading is not None and hasattr(threading, "_shutdown"):
            threading._shutdown()  # as the interpreter's exit: end and join non-daemon threads
        atexit._run_exitfuncs()
        if opened_since(before) != {}:
            flush_leftovers()
        flush_stdio()
    finally:
        os._exit(status & 0xFF if status >= 0 else 1)


def leave_by_signal(signum: int) -> None:
    from .common import flush_stdio

    flush_stdio()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # not reached: the signal ends the process
