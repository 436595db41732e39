"""``qcd-bridge serve``: a resident process that has imported torch and the commands' modules
and loaded the native kernels once, and runs ``hmc``, ``chroma``, ``measure`` and ``run`` for
light clients in a forked child each (docs/server.md).

A campaign that starts one process per configuration or HMC segment pays ``import torch``
(~1 s) and the interpreter's teardown each time; through the server a command costs the
client's start-up (no torch) and a fork.  The server

* listens on a unix socket in a private folder (:func:`prepare_socket_dir`), serves only the
  user it runs as (``SO_PEERCRED``), and answers only clients whose package, sources,
  interpreter and start-up environment equal its own
  (:func:`~bridge.cli.serve_client.source_tag`); any other client runs its command itself;
* never computes with torch in its own process, so the children start with no OpenMP or
  other worker threads to lose in the fork (``qcd-bridge serve --status`` shows the count);
* runs each command in a new session with the client's stdin, stdout and stderr (passed as
  descriptors), working directory, environment and ``OMP_NUM_THREADS``, relays the client's
  SIGINT/SIGTERM/SIGHUP to the command's process group, and reports its exit status or signal;
* stops after ``--idle-timeout`` seconds without commands, on ``qcd-bridge serve --stop``
  (after the running commands end), or on SIGTERM/SIGINT (passing SIGTERM to them).
"""

from __future__ import annotations

import argparse
import importlib
import os
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .serve_client import (
    CONNECT_TIMEOUT,
    SERVED,
    default_socket,
    recv_msg,
    request,
    send_msg,
    server_socket,
    source_tag,
    tag_difference,
)

__all__ = ["add_serve_parser", "Server", "PRELOAD", "check_peer", "prepare_socket_dir",
           "thread_count"]

PRELOAD = ("torch", "numpy", "h5py", "lxml.etree", "bridge.chroma.hmc_input",
           "bridge.chroma.hmc_program", "bridge.chroma.chroma_program", "bridge.jobs.measure",
           "bridge.io.hdf5", "bridge.jobs.dropin")
"""Modules the server imports before it listens: the served commands and what they import
when they run."""

NATIVE = ("bridge._native_gauge", "bridge.fermions._native")
"""Native kernel modules whose cached library the server loads (``available()``)."""

RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
DEFAULT_IDLE = 1800.0
_SUN_PATH_MAX = 107


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge serve``."""
    p = sub.add_parser(
        "serve", help="keep torch loaded in a resident server for hmc/chroma/measure/run",
        description="Start a resident server that has imported torch and loaded the native "
                    "kernels once, and runs the commands hmc, chroma, measure and run of "
                    "clients that set QCD_BRIDGE_SERVER (1: the default socket, or a socket "
                    "path), each in a forked child with the client's files, working "
                    "directory and environment.  Clients fall back to running the command "
                    "themselves, with a one-line notice, when no server answers or the "
                    "server differs from them.  See docs/server.md.",
        epilog="example:\n  qcd-bridge serve --detach && export QCD_BRIDGE_SERVER=1\n"
               "  for f in cfg_*.lime; do qcd-bridge chroma -i ${f%.lime}.ini.xml -o "
               "${f%.lime}.out.xml; done\n  qcd-bridge serve --stop",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", default=None,
                   help="socket path (default: QCD_BRIDGE_SERVER if it names a path, else "
                        f"{default_socket()})")
    p.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE, metavar="S",
                   help=f"stop after S seconds without commands; 0: never [{DEFAULT_IDLE:g}]")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--detach", action="store_true",
                     help="start the server in the background (log next to the socket) and "
                          "return once it answers")
    act.add_argument("--stop", action="store_true",
                     help="stop the server (it finishes its running commands first)")
    act.add_argument("--status", action="store_true",
                     help="print the server's pid, threads and running commands; exit status "
                          "1 when none answers")
    p.set_defaults(func=_run_serve)


def _socket_path(given: str | None) -> Path:
    if given:
        return Path(given).expanduser()
    return server_socket() or default_socket()


def _run_serve(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    if args.idle_timeout < 0:
        raise ConfigError(f"--idle-timeout: expected seconds >= 0 (0: never), got "
                          f"{args.idle_timeout}")
    path = _socket_path(args.socket)
    if args.stop:
        return _stop(path)
    if args.status:
        return _status(path)
    if args.detach:
        return _detach(path, args.idle_timeout)
    return Server(path, idle_timeout=args.idle_timeout).serve()


def _ping(path: Path, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any] | None:
    try:
        answer = request(path, {"op": "ping"}, timeout)
    except (OSError, ValueError):
        return None
    return answer if answer.get("ok") else None


def _status(path: Path) -> int:
    info = _ping(path)
    if info is None:
        print(f"no server answers on {path}")
        return 1
    tag = info.get("tag", {})
    print(f"server pid {info['pid']} on {path}: {info['running']} command(s) running, "
          f"{info['threads']} thread(s); qcd-bridge {tag.get('version')} from "
          f"{tag.get('package')}, {tag.get('python')}")
    return 0


def _stop(path: Path, wait: float = 60.0) -> int:
    try:
        answer = request(path, {"op": "stop"})
    except (OSError, ValueError):
        print(f"no server answers on {path}")
        return 0
    pid, running = int(answer["pid"]), int(answer.get("running", 0))
    if running:
        print(f"the server (pid {pid}) stops once its {running} running command(s) end")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print(f"stopped the server (pid {pid}) on {path}")
            return 0
        except PermissionError:
            break
        time.sleep(0.05)
    print(f"the server (pid {pid}) was asked to stop; it is still running")
    return 0


def _detach(path: Path, idle: float, wait: float = 180.0) -> int:
    """Start ``qcd-bridge serve`` in a new session, its output in ``<socket>.log``, and return
    once it answers (the first start may compile the native kernels)."""
    from ..errors import ConfigError

    info = _ping(path)
    if info is not None:
        diff = tag_difference(source_tag(), info.get("tag", {}))
        if diff:
            raise ConfigError(f"{path}: a server (pid {info['pid']}) already listens here "
                              f"but differs from this qcd-bridge ({diff}); stop it with "
                              f"`qcd-bridge serve --stop --socket {path}`")
        print(f"a server (pid {info['pid']}) already listens on {path}")
        return 0
    prepare_socket_dir(path)
    log = path.with_name(path.name + ".log")
    cmd = [sys.executable, "-m", "bridge.cli", "serve", "--socket", str(path),
           "--idle-timeout", repr(idle)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise ConfigError(f"{path}: the server exited with status {proc.returncode} "
                              f"before it listened; {log}: " + " | ".join(tail))
        info = _ping(path, timeout=0.5)
        if info is not None and info.get("pid") == proc.pid:
            print(f"server pid {proc.pid} listens on {path} (log {log}); clients use it with "
                  f"QCD_BRIDGE_SERVER={path}")
            return 0
        time.sleep(0.05)
    proc.terminate()
    raise ConfigError(f"{path}: the server did not answer within {wait:g} s (log {log})")


def prepare_socket_dir(path: Path) -> None:
    """Create the socket's folder (mode 0700) if it is missing; the default folder must belong
    to this user and be closed to others.  ``ConfigError`` naming the path otherwise, and for a
    path longer than a unix socket takes."""
    from ..errors import ConfigError

    if len(os.fsencode(str(path))) > _SUN_PATH_MAX:
        raise ConfigError(f"{path}: socket path of {len(os.fsencode(str(path)))} bytes; unix "
                          f"sockets take at most {_SUN_PATH_MAX}")
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(folder)
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot create the server's folder ({exc})") from exc
    if path == default_socket() and (st.st_uid != os.getuid() or st.st_mode & 0o077):
        raise ConfigError(f"{folder}: the server's default folder belongs to uid {st.st_uid} "
                          f"with mode {stat.S_IMODE(st.st_mode):o}; expected uid "
                          f"{os.getuid()} and mode 700 (remove it, or give --socket)")


def check_peer(conn: socket.socket, uid: int) -> str | None:
    """Why the client on ``conn`` is refused (``SO_PEERCRED``: another user than ``uid``);
    None when it is served."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, peer_uid, _gid = struct.unpack("3i", creds)
    if peer_uid != uid:
        return (f"refused: the client (pid {pid}) runs as uid {peer_uid}; this server serves "
                f"uid {uid} only")
    return None


def thread_count() -> int:
    """Threads of this process (``/proc/self/task``); 0 where that cannot be read."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def _preload() -> None:
    """Import :data:`PRELOAD` and load the :data:`NATIVE` libraries (building them once if the
    cache lacks them); nothing is computed."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # the command that needs it fails as it would in process
            print(f"qcd-bridge serve: not preloaded: {name} ({exc})", file=sys.stderr)
    for name in NATIVE:
        importlib.import_module(name).available()
    from . import build_parser

    build_parser()  # the command modules


def _loaded_sources() -> dict[str, tuple[int, int]]:
    """``{file: (size, mtime)}`` of the package's modules imported so far."""
    root = str(Path(__file__).resolve().parents[1]) + os.sep
    out = {}
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if path and path.endswith(".py") and os.path.realpath(path).startswith(root):
            st = os.stat(path)
            out[path] = (st.st_size, st.st_mtime_ns)
    return out


def _changed_source(loaded: dict[str, tuple[int, int]]) -> str | None:
    """The first of the ``loaded`` files (:func:`_loaded_sources`) that changed since."""
    for path, (size, mtime) in loaded.items():
        try:
            st = os.stat(path)
        except OSError:
            return path
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            return path
    return None


class _Requests:
    """What the server does with one connection: answer, fork a command, relay signals to it,
    report how it ended.  :class:`Server` holds the state and the loop."""

    uid: int
    stopping: bool
    sel: selectors.BaseSelector
    children: dict[int, socket.socket | None]
    tag: dict[str, Any]
    loaded: dict[str, tuple[int, int]]
    wake: tuple[int, int]
    listener: socket.socket | None

    def _begin_stop(self, kill: bool) -> None:
        raise NotImplementedError

    def _accept(self) -> None:
        if self.listener is None:
            return
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        conn.settimeout(CONNECT_TIMEOUT)
        fds: list[int] = []
        keep = False
        try:
            msg, fds = recv_msg(conn, maxfds=3)  # read first: the client sees the answer
            refused = check_peer(conn, self.uid)
            if refused:
                send_msg(conn, {"ok": False, "reason": refused})
                return
            op = msg.get("op") if msg else None
            if op == "ping":
                import resource

                ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # the ended commands' CPU
                send_msg(conn, {"ok": True, "pid": os.getpid(), "tag": self.tag,
                                "threads": thread_count(), "running": len(self.children),
                                "children_cpu_s": ru.ru_utime + ru.ru_stime})
            elif op == "stop":
                send_msg(conn, {"ok": True, "pid": os.getpid(), "running": len(self.children)})
                self._begin_stop(kill=False)
            elif op == "run":
                keep = self._start(conn, msg, fds)
            elif msg is not None:
                send_msg(conn, {"ok": False, "reason": f"unknown request {op!r}"})
        except (OSError, ValueError):
            pass
        finally:
            for fd in fds:
                os.close(fd)
            if not keep:
                conn.close()

    def _problem(self, msg: dict[str, Any], fds: list[int]) -> str | None:
        argv, stdio = msg.get("argv"), msg.get("stdio")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            return "malformed request: argv must be a non-empty list of strings"
        if argv[0] not in SERVED:
            return f"command {argv[0]!r} is not served (served: {', '.join(sorted(SERVED))})"
        if not (isinstance(stdio, list) and len(stdio) == 3 and sum(map(bool, stdio)) == len(fds)):
            return f"malformed request: {len(fds)} descriptor(s) for stdio {stdio!r}"
        if not isinstance(msg.get("env"), dict) or not isinstance(msg.get("cwd"), str):
            return "malformed request: env and cwd missing"
        diff = tag_difference(msg.get("tag") or {}, self.tag)
        if diff:
            return (f"it differs from this client in its {diff} (restart it: "
                    f"`qcd-bridge serve --stop`, then `qcd-bridge serve --detach`)")
        changed = _changed_source(self.loaded)
        if changed:
            self._begin_stop(kill=False)  # it can never serve again: make room for a new one
            return (f"{changed} changed since the server loaded it; the server stops (start "
                    f"a new one with `qcd-bridge serve --detach`)")
        return None

    def _start(self, conn: socket.socket, msg: dict[str, Any], fds: list[int]) -> bool:
        """Answer a run request, wait for ``go`` and fork; True when ``conn`` now belongs to a
        running command."""
        problem = "the server is stopping" if self.stopping else self._problem(msg, fds)
        if problem:
            send_msg(conn, {"ok": False, "reason": problem})
            return False
        send_msg(conn, {"ok": True})
        go, _ = recv_msg(conn)
        if not go or go.get("op") != "go":
            return False  # the client gave up: it runs the command itself
        sys.stdout.flush()
        sys.stderr.flush()
        import gc

        gc.freeze()
        pid = os.fork()
        if pid == 0:
            from .serve_child import become

            become(conn, msg, fds, self.sel, self.wake[1])  # never returns
        self.children[pid] = conn
        conn.settimeout(CONNECT_TIMEOUT)
        self.sel.register(conn, selectors.EVENT_READ, pid)
        try:
            send_msg(conn, {"pid": pid})
        except OSError:
            pass
        return True

    def _from_client(self, conn: Any, pid: int) -> None:
        """A relayed signal, or the client gone (its command then gets SIGTERM)."""
        try:
            msg, _ = recv_msg(conn)
        except (OSError, ValueError):
            msg = None
        if msg is None:
            self.sel.unregister(conn)
            conn.close()
            self.children[pid] = None
            _killpg(pid, signal.SIGTERM)
            return
        signum = msg.get("signal")
        if signum in [int(s) for s in RELAYED]:
            _killpg(pid, int(signum))

    def _reap(self) -> bool:
        """Collect ended commands and report each one's status; whether any ended."""
        ended = False
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ended = True
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            msg = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status)
                   else {"exit": os.waitstatus_to_exitcode(status)})
            try:
                send_msg(conn, msg)
            except OSError:
                pass
            self.sel.unregister(conn)
            conn.close()
        return ended


class Server(_Requests):
    """The resident server (module docstring): :meth:`serve` runs it until it stops."""

    def __init__(self, path: Path, idle_timeout: float = DEFAULT_IDLE) -> None:
        self.path, self.idle_timeout = Path(path), idle_timeout
        self.uid = os.getuid()
        self.children: dict[int, socket.socket | None] = {}
        self.signals: list[int] = []
        self.stopping = False
        self.listener: socket.socket | None = None
        self.sel = selectors.DefaultSelector()
        self.tag: dict[str, Any] = {}
        self.loaded: dict[str, tuple[int, int]] = {}
        self.ino = 0
        self.wake = (-1, -1)

    # -- start and stop ---------------------------------------------------------------------

    def _bind(self) -> None:
        from ..errors import ConfigError

        prepare_socket_dir(self.path)
        if os.path.lexists(self.path):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise ConfigError(f"{self.path}: exists and is not a socket; give another "
                                  f"--socket")
            info = _ping(self.path)
            if info is not None:
                raise ConfigError(f"{self.path}: a server (pid {info['pid']}) already listens "
                                  f"here; stop it with `qcd-bridge serve --stop`")
            os.unlink(self.path)  # stale: its server is gone
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        sock.listen(64)
        self.listener, self.ino = sock, os.stat(self.path).st_ino

    def _close_listener(self) -> None:
        if self.listener is None:
            return
        self.sel.unregister(self.listener)
        self.listener.close()
        self.listener = None
        try:
            if os.stat(self.path).st_ino == self.ino:
                os.unlink(self.path)
        except OSError:
            pass

    def _begin_stop(self, kill: bool) -> None:
        self.stopping = True
        self._close_listener()
        if kill:
            for pid in self.children:
                _killpg(pid, signal.SIGTERM)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)

    def serve(self) -> int:
        """Check the socket, preload, listen, and run until stopped; the exit status."""
        from ..errors import ConfigError

        for fd in (0, 1, 2):  # a received descriptor must never land on 0-2
            try:
                os.fstat(fd)
            except OSError:
                os.open(os.devnull, os.O_RDWR)
        info = _ping(self.path) if os.path.lexists(self.path) else None
        if info is not None:
            raise ConfigError(f"{self.path}: a server (pid {info['pid']}) already listens "
                              f"here; stop it with `qcd-bridge serve --stop`")
        self.tag = source_tag()
        t0 = time.perf_counter()
        _preload()
        self.loaded = _loaded_sources()
        import gc

        gc.collect()
        gc.freeze()  # the children's collections skip (and so never copy) the preloaded objects
        self._bind()
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.wake = (r, w)
        old_wake = signal.set_wakeup_fd(w)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGCHLD, *RELAYED)}
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(r, selectors.EVENT_READ, "wake")
        print(f"qcd-bridge serve: pid {os.getpid()} listens on {self.path} (preloaded in "
              f"{time.perf_counter() - t0:.2f} s, {thread_count()} thread(s), idle timeout "
              f"{self.idle_timeout:g} s)", file=sys.stderr, flush=True)
        try:
            self._loop()
        finally:
            self._close_listener()
            signal.set_wakeup_fd(old_wake)
            for s, handler in old.items():
                signal.signal(s, handler)
            self.sel.close()
            os.close(r)
            os.close(w)
        print(f"qcd-bridge serve: pid {os.getpid()} stopped", file=sys.stderr, flush=True)
        return 0

    def _loop(self) -> None:
        last = time.monotonic()
        while not (self.stopping and not self.children):
            timeout = 5.0
            if self.idle_timeout and not self.children and not self.stopping:
                timeout = max(0.0, min(timeout, last + self.idle_timeout - time.monotonic()))
            for key, _ in self.sel.select(timeout):
                if key.data == "accept":
                    self._accept()
                    last = time.monotonic()
                elif key.data == "wake":
                    _drain(self.wake[0])
                else:
                    self._from_client(key.fileobj, key.data)
            if self._reap():
                last = time.monotonic()
            while self.signals:
                if self.signals.pop() in RELAYED:
                    self._begin_stop(kill=True)
            if self.stopping:
                continue
            if (self.idle_timeout and not self.children
                    and time.monotonic() - last >= self.idle_timeout):
                print(f"qcd-bridge serve: idle for {self.idle_timeout:g} s", file=sys.stderr)
                self._begin_stop(kill=False)
            elif not self._still_ours():
                print(f"qcd-bridge serve: {self.path} was removed or replaced", file=sys.stderr)
                self._begin_stop(kill=False)

    def _still_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.ino
        except OSError:
            return False


def _killpg(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # the command is a session leader: its group has its id
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, OSError):
        pass
