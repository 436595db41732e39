"""The light side of ``qcd-bridge serve``: where the server's socket is, what must match between
a client and the server, the wire format, and :func:`forward`, which hands one command to a
running server.  Nothing here imports torch (``tests/test_serve.py`` checks it): the point of
the server is that a client pays for neither ``import torch`` nor its teardown.

Opt-in (``QCD_BRIDGE_SERVER``):

* unset, empty, ``0``/``off``/``no``/``false``: every command runs in its own process;
* ``1``/``on``/``yes``/``true``/``default``: the default socket (:func:`default_socket`);
* anything else: the path of a socket.

Wire format, on a unix stream socket: each message is a 4-byte big-endian length and a JSON
object.  A run is ``{"op": "run", ...}`` (with the client's stdin, stdout and stderr attached
as ``SCM_RIGHTS``) -> ``{"ok": true}`` or ``{"ok": false, "reason": ...}`` -> ``{"op": "go"}`` ->
``{"pid": N}`` -> ``{"exit": status}`` or ``{"signal": n}``; while it runs, the client may send
``{"signal": n}`` (its SIGINT/SIGTERM/SIGHUP, passed on to the command).  The server forks
only after ``go``, so a client that gave up waiting (and runs the command itself) never has it
run twice.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from .common import SERVED

__all__ = ["ENV", "SERVED", "START_ENV", "default_socket", "server_socket", "source_tag",
           "send_msg", "recv_msg", "forward", "request"]

ENV = "QCD_BRIDGE_SERVER"

START_ENV = ("ATEN_CPU_CAPABILITY", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONHASHSEED",
             "QCD_BRIDGE_TEST_SEED_SHIFT")
"""Environment variables read when the interpreter or torch starts, not when a command runs:
a server started under other values than a client's would not do what a fresh process does,
so such a client runs the command itself."""

CONNECT_TIMEOUT = 2.0
"""Seconds a client waits to connect and for each answer before the command starts."""

_ON = ("1", "on", "yes", "true", "default")
_OFF = ("", "0", "off", "no", "false")
_MAX_MSG = 1 << 24


def default_socket() -> Path:
    """``$XDG_RUNTIME_DIR/qcd-bridge/server.sock`` when that directory is the user's, else
    ``/tmp/qcd-bridge-<uid>/server.sock`` (the server creates the folder with mode 0700)."""
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run:
        try:
            st = os.stat(run)
            if st.st_uid == os.getuid() and not st.st_mode & 0o077:
                return Path(run) / "qcd-bridge" / "server.sock"
        except OSError:
            pass
    return Path("/tmp") / f"qcd-bridge-{os.getuid()}" / "server.sock"


def server_socket(environ: dict[str, str] | None = None) -> Path | None:
    """The socket named by ``QCD_BRIDGE_SERVER`` (module docstring); None when not opted in."""
    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    if raw.lower() in _OFF:
        return None
    if raw.lower() in _ON:
        return default_socket()
    return Path(raw).expanduser()


def _torch_origin() -> str:
    try:
        spec = importlib.util.find_spec("torch")  # finds the package without importing it
    except (ImportError, ValueError):
        return ""
    return str(Path(spec.origin).resolve().parent) if spec and spec.origin else ""


def source_tag() -> dict[str, Any]:
    """What a server must share with a client to run its command as the client would: the
    package's version and location, the interpreter, torch's location and the
    :data:`START_ENV` variables.  (The server itself checks that the modules it has loaded are
    unchanged on disk; the others its commands import fresh.)"""
    from .. import __version__

    return {
        "version": __version__, "package": str(Path(__file__).resolve().parents[1]),
        "python": f"{sys.executable} {sys.version.split()[0]}",
        "torch": _torch_origin(),
        "env": {k: os.environ.get(k) for k in START_ENV},
    }


def tag_difference(ours: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    """A short description of the first difference between two :func:`source_tag`; None if
    they match."""
    labels = {"version": "package version", "package": "package location",
              "python": "interpreter", "torch": "torch install"}
    for key, label in labels.items():
        if ours.get(key) != theirs.get(key):
            return f"{label}: server {theirs.get(key)}, client {ours.get(key)}"
    env_a, env_b = ours.get("env") or {}, theirs.get("env") or {}
    for k in START_ENV:
        if env_a.get(k) != env_b.get(k):
            return f"environment {k}: server {env_b.get(k)!r}, client {env_a.get(k)!r}"
    return None


def send_msg(sock: socket.socket, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    """One message (module docstring), with ``fds`` attached to its first byte."""
    data = json.dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [data], fds)
        data = data[sent:]
    if data:
        sock.sendall(data)


def recv_msg(sock: socket.socket, maxfds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and the descriptors that came with it; ``(None, [])`` at the end of
    the stream.  ``ValueError`` for a malformed message."""
    fds: list[int] = []
    buf = b""
    while len(buf) < 4:
        if maxfds and not fds:
            chunk, got, _, _ = socket.recv_fds(sock, 4 - len(buf), maxfds)
            fds.extend(got)
        else:
            chunk = sock.recv(4 - len(buf))
        if not chunk:
            for fd in fds:
                os.close(fd)
            return None, []
        buf += chunk
    (size,) = struct.unpack(">I", buf)
    if size > _MAX_MSG:
        raise ValueError(f"message of {size} bytes (at most {_MAX_MSG})")
    body = b""
    while len(body) < size:
        chunk = sock.recv(min(size - len(body), 1 << 20))
        if not chunk:
            raise ValueError(f"message ends after {len(body)} of {size} bytes")
        body += chunk
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj, fds


def request(path: Path, obj: dict[str, Any], timeout: float = CONNECT_TIMEOUT
            ) -> dict[str, Any]:
    """One request/answer exchange without descriptors (``ping``, ``stop``); ``OSError`` when
    no server answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        send_msg(sock, obj)
        answer, _ = recv_msg(sock)
    if answer is None:
        raise ConnectionError(f"{path}: the server closed the connection without an answer")
    return answer


def _notice(text: str) -> None:
    print(f"qcd-bridge: {text}; running the command in this process", file=sys.stderr,
          flush=True)


def _stdio() -> tuple[list[int], list[bool]]:
    fds, present = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            present.append(False)
            continue
        fds.append(fd)
        present.append(True)
    return fds, present


def _connect(path: Path, argv: list[str]) -> socket.socket | None:
    """Connect, send the run request with our stdio and wait for the server's yes; None (after
    a one-line notice) when the command must run here instead."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.connect(str(path))
    except FileNotFoundError:
        sock.close()
        _notice(f"no server at {path} (start one with `qcd-bridge serve --detach`)")
        return None
    except ConnectionRefusedError:
        sock.close()
        _notice(f"stale server socket {path} (no server listens on it)")
        return None
    except OSError as exc:
        sock.close()
        _notice(f"cannot reach the server at {path} ({exc})")
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    server_uid = struct.unpack("3i", creds)[1]
    if server_uid != os.getuid():  # never hand our files to another user's process
        sock.close()
        _notice(f"the server at {path} runs as uid {server_uid}, not as this user "
                f"({os.getuid()})")
        return None
    fds, present = _stdio()
    out = sys.stdout
    umask = os.umask(0o022)
    os.umask(umask)
    req = {"op": "run", "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
           "tag": source_tag(), "stdio": present, "umask": umask,
           "nice": os.getpriority(os.PRIO_PROCESS, 0),
           "encoding": [getattr(out, "encoding", None) or "utf-8",
                        getattr(out, "errors", None) or "strict"]}
    try:
        send_msg(sock, req, fds)
        answer, _ = recv_msg(sock)
    except (OSError, ValueError) as exc:
        sock.close()
        _notice(f"the server at {path} did not answer ({exc or type(exc).__name__})")
        return None
    if not answer or not answer.get("ok"):
        sock.close()
        reason = answer.get("reason") if answer else "it closed the connection"
        _notice(f"the server at {path} cannot run this command: {reason}")
        return None
    return sock


def forward(argv: list[str], path: Path) -> int | None:
    """Run ``qcd-bridge ARGV`` in the server at ``path`` with this process's working directory,
    environment and stdio; the command's exit status, or None (after a one-line notice on
    stderr) when the caller must run it in process: no server, a stale socket, no answer in
    :data:`CONNECT_TIMEOUT` s, or a server that differs from this client (:func:`source_tag`).
    A command killed by a signal kills this process with the same signal."""
    sock = _connect(path, argv)
    if sock is None:
        return None
    with sock:
        sock.settimeout(None)  # from here the command runs: as long as it takes
        forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

        def relay(signum: int, _frame: object) -> None:
            try:
                send_msg(sock, {"signal": signum})
            except OSError:
                pass

        old = {s: signal.signal(s, relay) for s in forwarded}
        try:
            send_msg(sock, {"op": "go"})
            end: dict[str, Any] | None = None
            while end is None:
                msg, _ = recv_msg(sock)
                if msg is None:
                    break
                if "exit" in msg or "signal" in msg:
                    end = msg
        except (OSError, ValueError) as exc:
            print(f"qcd-bridge: lost the server at {path} while the command ran ({exc}); its "
                  f"exit status is unknown", file=sys.stderr)
            return 1
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
    if end is None:
        print(f"qcd-bridge: the server at {path} stopped before reporting the command's exit "
              f"status", file=sys.stderr)
        return 1
    if "signal" in end:
        signum = int(end["signal"])
        sys.stdout.flush()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum
    return int(end["exit"])
