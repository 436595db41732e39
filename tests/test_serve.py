"""``qcd-bridge serve``: a command run by the resident server writes the same files, prints the
same lines and ends with the same status as the same command in its own process; a client that
cannot use the server (no server, a stale socket, a different start-up environment) runs the
command itself after a one-line notice; other users are refused; signals reach the command;
the client never imports torch; and the console entry's fast exit keeps outputs and statuses.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bridge.cli.serve import check_peer
from bridge.cli.serve_client import recv_msg, request, send_msg

PG = "chroma/pure_gauge_b5.5_4x4"
NF2 = "chroma/nf2_b1.0_k0.1_4x4"
# what legitimately differs between two runs of one input: dates and timings
_VOLATILE = [rb"<date>[^<]*</date>", rb"<run_date>[^<]*</run_date>",
             rb"<seconds_for_\w+>[^<]*</seconds_for_\w+>", rb"<seconds>[^<]*</seconds>",
             rb"<(\w*[Tt]ime\w*)>[^<]*</\1>"]
_SECONDS = re.compile(r"\d+\.\d+ s(/trajectory)?\b")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "QCD_BRIDGE_SERVER"}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _cli(args: list[str], cwd: Path, server: Path | None = None,
         **kw) -> subprocess.CompletedProcess:
    env = _env(QCD_BRIDGE_SERVER=str(server)) if server else _env()
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


def _masked(path: Path) -> bytes:
    data = path.read_bytes()
    for pat in _VOLATILE:
        data = re.sub(pat, b"<masked/>", data)
    return data


def _same_files(a: Path, b: Path) -> list[str]:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert _masked(a / name) == _masked(b / name), name
    return names


@pytest.fixture(scope="module")
def server():
    """A server on a socket in a world-traversable folder (the uid test connects as another
    user), with 2 OpenMP threads in its own environment: it must never start them."""
    folder = Path(tempfile.mkdtemp(prefix="qcdb_srv_", dir="/tmp"))
    folder.chmod(0o755)
    path = folder / "s.sock"
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--socket", str(path),
                             "--idle-timeout", "300"], env=_env(OMP_NUM_THREADS="2"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if request(path, {"op": "ping"}, 0.5).get("ok"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield path
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _hmc_dirs(tmp_path: Path, data_dir: Path) -> tuple[Path, Path]:
    """Two folders with the same short pure-gauge HMC input (4 updates from Chroma's
    configuration 1500, a configuration and restart file every 2)."""
    text = (data_dir / PG / "hmc.ini.xml").read_text()
    for pat, rep in [(r"<cfg_type>[^<]*<", "<cfg_type>SZINQIO<"),
                     (r"<cfg_file>[^<]*<", "<cfg_file>pg_b5.5_4x4_cfg_1500.lime<"),
                     (r"<NWarmUpUpdates>\d+<", "<NWarmUpUpdates>0<"),
                     (r"<NProductionUpdates>\d+<", "<NProductionUpdates>4<"),
                     (r"<NUpdatesThisRun>\d+<", "<NUpdatesThisRun>4<"),
                     (r"<SaveInterval>\d+<", "<SaveInterval>2<")]:
        text = re.sub(pat, rep, text)
    out = []
    for name in ("served", "own"):
        d = tmp_path / name
        d.mkdir()
        (d / "in.xml").write_text(text)
        shutil.copy(data_dir / PG / "pg_b5.5_4x4_cfg_1500.lime", d)
        out.append(d)
    return out[0], out[1]


def test_hmc_through_the_server_equals_its_own_process(server, tmp_path, data_dir):
    served, own = _hmc_dirs(tmp_path, data_dir)
    args = ["hmc", "-i", "in.xml", "-o", "out.xml", "--quiet"]
    a, b = _cli(args, served, server, umask=0o027), _cli(args, own, umask=0o027)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stderr == b.stderr == ""  # no fallback notice: the server ran it
    assert _SECONDS.sub("", a.stdout) == _SECONDS.sub("", b.stdout)
    assert "4 production updates" in a.stdout
    names = _same_files(served, own)
    for name in names:  # created under the client's umask
        assert (served / name).stat().st_mode == (own / name).stat().st_mode, name
    assert (served / "out.xml").stat().st_mode & 0o777 == 0o640
    assert {"pg_b5.5_4x4_cfg_2.lime", "pg_b5.5_4x4_cfg_4.lime",
            "pg_b5.5_4x4_restart_4.xml", "out.xml"} <= set(names)


def test_chroma_through_the_server_equals_its_own_process(server, tmp_path, data_dir):
    dirs = []
    for name in ("served", "own"):
        d = tmp_path / name
        d.mkdir()
        for f in ("chroma_measure.ini.xml", "nf2_b1.0_k0.1_4x4_cfg_1500.lime"):
            shutil.copy(data_dir / NF2 / f, d)
        dirs.append(d)
    args = ["chroma", "-i", "chroma_measure.ini.xml", "-o", "out.xml", "--quiet"]
    a, b = _cli(args, dirs[0], server), _cli(args, dirs[1])
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stderr == b.stderr == ""
    assert _SECONDS.sub("", a.stdout) == _SECONDS.sub("", b.stdout)
    assert "wrote out.xml and prop_pt_k0.1_cfg_1500.lime, wflow_t4_cfg_1500.lime" in a.stdout
    assert {"out.xml", "prop_pt_k0.1_cfg_1500.lime", "wflow_t4_cfg_1500.lime"} <= set(
        _same_files(dirs[0], dirs[1]))


def test_errors_and_statuses_are_relayed(server, tmp_path):
    (tmp_path / "bad.xml").write_text("<chroma><bad/></chroma>\n")
    for args in (["chroma", "-i", "bad.xml", "-o", "o.xml"],
                 ["hmc", "-i", "missing.xml", "-o", "o.xml"]):
        a, b = _cli(args, tmp_path, server), _cli(args, tmp_path)
        assert a.returncode == b.returncode == 1
        assert a.stderr == b.stderr
        assert a.stderr.startswith(f"qcd-bridge {args[0]}: error: ")
    # the server parses the command line: a usage error is its argparse message and status 2
    a, b = _cli(["hmc", "-i", "in.xml"], tmp_path, server), _cli(["hmc", "-i", "in.xml"], tmp_path)
    assert a.returncode == b.returncode == 2
    assert a.stderr == b.stderr
    assert a.stderr.endswith("qcd-bridge hmc: error: the following arguments are required: "
                             "-o/--output\n")
    a = _cli(["chroma", "-i", "bad.xml", "-o", "o.xml"], tmp_path, server)
    assert a.stderr == "qcd-bridge chroma: error: bad.xml: missing required element " \
                       "/chroma/Param\n"


def _stale_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens


@pytest.mark.parametrize("case", ["stale", "missing", "environment"])
def test_a_client_that_cannot_use_the_server_runs_the_command_itself(case, server, tmp_path,
                                                                     data_dir):
    served, _ = _hmc_dirs(tmp_path, data_dir)
    target = server
    extra = {}
    if case == "stale":
        target = tmp_path / "stale.sock"
        _stale_socket(target)
        expect = f"qcd-bridge: stale server socket {target} (no server listens on it)"
    elif case == "missing":
        target = tmp_path / "none.sock"
        expect = f"qcd-bridge: no server at {target} (start one with `qcd-bridge serve --detach`)"
    else:  # a torch start-up setting the server was not started with
        extra = {"ATEN_CPU_CAPABILITY": "default"}
        expect = (f"qcd-bridge: the server at {server} cannot run this command: it differs "
                  f"from this client in its environment ATEN_CPU_CAPABILITY: server None, "
                  f"client 'default'")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "bridge.cli", "hmc", "-i", "in.xml", "-o",
                          "out.xml", "--quiet"], cwd=served, capture_output=True, text=True,
                         env=_env(QCD_BRIDGE_SERVER=str(target), **extra), timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expect), res.stderr
    assert lines[0].endswith("; running the command in this process")
    assert (served / "pg_b5.5_4x4_cfg_4.lime").is_file()
    assert time.monotonic() - t0 < 120


def test_client_never_imports_torch(server, tmp_path, data_dir):
    served, _ = _hmc_dirs(tmp_path, data_dir)
    code = ("import atexit, sys\n"
            "def probe():\n"
            "    heavy = [m for m in ('torch', 'numpy', 'h5py', 'lxml') if m in sys.modules]\n"
            "    print('HEAVY', heavy, file=sys.stderr)\n"
            "atexit.register(probe)\n"
            "from bridge.cli import main\n"
            "sys.argv = ['qcd-bridge', 'hmc', '-i', 'in.xml', '-o', 'out.xml', '--quiet']\n"
            "sys.exit(main())\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=served, capture_output=True,
                         text=True, env=_env(QCD_BRIDGE_SERVER=str(server)), timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "HEAVY []\n"
    assert (served / "pg_b5.5_4x4_cfg_4.lime").is_file()  # the server ran it


def test_signals_reach_the_command_and_the_server_forks_without_threads(server, tmp_path,
                                                                         data_dir):
    served, _ = _hmc_dirs(tmp_path, data_dir)
    text = (served / "in.xml").read_text()
    for tag in ("NProductionUpdates", "NUpdatesThisRun"):
        text = re.sub(rf"<{tag}>\d+<", f"<{tag}>100000<", text)
    (served / "in.xml").write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "hmc", "-i", "in.xml", "-o",
                             "out.xml"], cwd=served, env=_env(QCD_BRIDGE_SERVER=str(server)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while request(server, {"op": "ping"})["running"] == 0:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGINT  # as an interpreter killed by Ctrl-C
    assert err.rstrip().endswith("KeyboardInterrupt")
    info = request(server, {"op": "ping"})
    assert info["running"] == 0
    assert info["threads"] == 1  # no OpenMP pool in the parent, though its env allows 2


def test_other_users_are_refused(server):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert check_peer(a, os.getuid()) is None
        reason = check_peer(a, os.getuid() + 1)
    assert reason == (f"refused: the client (pid {os.getpid()}) runs as uid {os.getuid()}; "
                      f"this server serves uid {os.getuid() + 1} only")
    if os.getuid() != 0:
        pytest.skip("connecting as another user needs root")
    server.chmod(0o666)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: a client of uid 65534
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(server))
                send_msg(s, {"op": "ping"})
                msg, _ = recv_msg(s)
            os.write(w, repr(msg).encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(w, f"child failed: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        answer = fh.read()
    os.waitpid(pid, 0)
    server.chmod(0o600)
    assert answer.startswith("{'ok': False, 'reason': 'refused: the client (pid ")
    assert f"runs as uid 65534; this server serves uid {os.getuid()} only" in answer


@pytest.fixture
def detached(tmp_path):
    """The socket of a server the test detaches; stopped (and killed) afterwards if alive."""
    path = tmp_path / "d.sock"
    yield path
    try:
        pid = request(path, {"op": "ping"})["pid"]
    except (OSError, ValueError, KeyError):
        return
    os.kill(pid, signal.SIGKILL)


def test_detach_status_stop_and_idle_timeout(detached, tmp_path):
    path = detached
    base = [sys.executable, "-m", "bridge.cli", "serve", "--socket", str(path)]
    run = dict(capture_output=True, text=True, env=_env(), timeout=300)
    res = subprocess.run([*base, "--detach", "--idle-timeout", "600"], **run)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("server pid ") and f"listens on {path}" in res.stdout
    pid = request(path, {"op": "ping"})["pid"]
    again = subprocess.run([*base, "--detach"], **run)
    assert again.stdout == f"a server (pid {pid}) already listens on {path}\n"
    status = subprocess.run([*base, "--status"], **run)
    assert status.returncode == 0 and status.stdout.startswith(f"server pid {pid} on {path}: 0 ")
    stop = subprocess.run([*base, "--stop"], **run)
    assert stop.stdout == f"stopped the server (pid {pid}) on {path}\n"
    assert not path.exists()
    status = subprocess.run([*base, "--status"], **run)
    assert status.returncode == 1 and status.stdout == f"no server answers on {path}\n"
    # an idle server stops by itself
    res = subprocess.run([*base, "--detach", "--idle-timeout", "0.5"], **run)
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 30
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not path.exists()
    assert "idle for 0.5 s" in (tmp_path / "d.sock.log").read_text()


def test_bad_options_and_paths_are_reported(tmp_path):
    from bridge.cli import main
    from bridge.cli.serve import prepare_socket_dir
    from bridge.errors import ConfigError

    long = tmp_path / ("x" * 120) / "s.sock"
    with pytest.raises(ConfigError, match=r"s\.sock: socket path of \d+ bytes; unix sockets "
                                          r"take at most 107"):
        prepare_socket_dir(long)
    (tmp_path / "file").write_text("")
    res = subprocess.run([sys.executable, "-m", "bridge.cli", "serve", "--socket",
                          str(tmp_path / "file")], capture_output=True, text=True, env=_env(),
                         timeout=300)
    assert res.returncode == 1
    assert res.stderr.endswith(f"qcd-bridge serve: error: {tmp_path / 'file'}: exists and is "
                               f"not a socket; give another --socket\n")
    assert main(["serve", "--idle-timeout", "-1"]) == 1


def test_fast_exit_keeps_outputs_statuses_and_atexit(tmp_path):
    """The console entry's ``os._exit``: taken when the command closed its files (atexit
    handlers and buffered stdout still written), not taken when a file is left open."""
    code = ("import atexit, sys\n"
            "from bridge.cli.common import fast_exit, open_for_writing\n"
            "before = open_for_writing()\n"
            "atexit.register(lambda: open('atexit.txt', 'w').write('ran'))\n"
            "sys.stdout.write('buffered')\n"
            "left = open('left.txt', 'w') if sys.argv[1] == 'open' else None\n"
            "if left: left.write('data')\n"
            "status = fast_exit(int(sys.argv[2]), before)\n"
            "sys.stderr.write('ordinary exit')\n"
            "sys.exit(status)\n")
    fast = subprocess.run([sys.executable, "-c", code, "closed", "5"], cwd=tmp_path,
                          capture_output=True, text=True, env=_env())
    assert (fast.returncode, fast.stdout, fast.stderr) == (5, "buffered", "")
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    slow = subprocess.run([sys.executable, "-c", code, "open", "3"], cwd=tmp_path,
                          capture_output=True, text=True, env=_env())
    assert (slow.returncode, slow.stdout, slow.stderr) == (3, "buffered", "ordinary exit")
    assert (tmp_path / "left.txt").read_text() == "data"


def test_leftover_files_are_flushed_before_a_child_leaves(tmp_path):
    from bridge.cli.common import open_for_writing, opened_since
    from bridge.cli.serve_child import flush_leftovers

    before = open_for_writing()
    fh = open(tmp_path / "f.txt", "w")  # noqa: SIM115 - left open on purpose
    fh.write("kept")
    assert list(opened_since(before).values()) == [str(tmp_path / "f.txt")]
    flush_leftovers()
    assert (tmp_path / "f.txt").read_text() == "kept"
    fh.close()
    assert opened_since(before) == {}


def test_a_server_of_another_user_is_not_used(tmp_path, data_dir):
    """A client hands its files only to a server of its own user (``SO_PEERCRED`` on its
    side): a socket another user listens on is not used."""
    if os.getuid() != 0:
        pytest.skip("listening as another user needs root")
    served, _ = _hmc_dirs(tmp_path, data_dir)
    path = tmp_path / "other.sock"
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: a listener of uid 65534
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(path))
            os.setgid(65534)
            os.setuid(65534)
            s.listen(1)  # the credentials a client sees are those of listen()
            os.write(ready_w, b"x")
            s.settimeout(60)
            conn, _ = s.accept()
            conn.recv(1)  # until the client hangs up
        finally:
            os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    try:
        res = subprocess.run([sys.executable, "-m", "bridge.cli", "hmc", "-i", "in.xml", "-o",
                              "out.xml", "--quiet"], cwd=served, capture_output=True,
                             text=True, env=_env(QCD_BRIDGE_SERVER=str(path)), timeout=300)
    finally:
        os.waitpid(pid, 0)
    assert res.returncode == 0
    assert res.stderr == (f"qcd-bridge: the server at {path} runs as uid 65534, not as this "
                          f"user (0); running the command in this process\n")
    assert (served / "pg_b5.5_4x4_cfg_4.lime").is_file()


def test_measure_and_run_through_the_server_equal_their_own_process(server, tmp_path, data_dir):
    """The HDF5 writers: ``measure`` (a store of series) and ``run`` (the drop-in loop with the
    built-in engine and flow updates) leave the same stores through the server."""
    import h5py
    import numpy as np
    from test_run import store_series, write_model, write_workflow, write_xml

    dirs = []
    for name in ("served", "own"):
        d = tmp_path / name
        d.mkdir()
        for n in (1500, 4300):
            shutil.copy(data_dir / NF2 / f"nf2_b1.0_k0.1_4x4_cfg_{n}.lime", d)
        write_xml(d)
        write_model(d)
        write_workflow(d, cycles=2)
        dirs.append(d)
    for args in (["measure", "-O", "plaquette", "-O", "pion", "--kappa", "0.1", "-o", "m.h5",
                  "*.lime", "--quiet"], ["run", "wf.json", "--quiet"]):
        a, b = _cli(args, dirs[0], server), _cli(args, dirs[1])
        assert a.returncode == b.returncode == 0, a.stderr + b.stderr
        assert a.stderr == ""
        assert a.stdout.replace(str(dirs[0]), "D") == b.stdout.replace(str(dirs[1]), "D")
    series = []
    for d in dirs:
        with h5py.File(d / "m.h5", "r") as f:
            found: dict[str, object] = {}
            f.visititems(lambda n, o, found=found: found.__setitem__(
                n, o[()] if isinstance(o, h5py.Dataset) else dict(o.attrs)))
        series.append((found, store_series(d / "run" / "ensemble.h5")))
    (ma, ra), (mb, rb) = series
    assert sorted(ma) == sorted(mb) and len(ma) > 2
    for k in ma:
        assert (np.array_equal(ma[k], mb[k]) if isinstance(ma[k], np.ndarray)
                else ma[k] == mb[k]), k
    for k in ("w_plaq", "accepted", "delta"):
        assert np.array_equal(ra[k], rb[k]), k
    assert all(np.array_equal(x, y) for x, y in zip(ra["configs"], rb["configs"], strict=True))


def test_opt_in_values_and_what_must_match():
    from bridge.cli.serve_client import default_socket, server_socket, source_tag, tag_difference

    for off in ("", "0", "off", "No", "false"):
        assert server_socket({"QCD_BRIDGE_SERVER": off}) is None
    assert server_socket({}) is None
    for on in ("1", "on", "YES", "true", "default"):
        assert server_socket({"QCD_BRIDGE_SERVER": on}) == default_socket()
    assert server_socket({"QCD_BRIDGE_SERVER": "/x/s.sock"}) == Path("/x/s.sock")
    assert default_socket().name == "server.sock"
    tag = source_tag()
    assert tag_difference(tag, dict(tag)) is None
    older = {**tag, "version": "0.0.9"}
    assert tag_difference(tag, older) == (f"package version: server 0.0.9, client "
                                          f"{tag['version']}")
    other = {**tag, "env": {**tag["env"], "PYTHONHASHSEED": "3"}}
    assert tag_difference(other, tag) == (f"environment PYTHONHASHSEED: server "
                                          f"{tag['env']['PYTHONHASHSEED']!r}, client '3'")


def test_threads_are_waited_for_as_by_the_ordinary_exit(tmp_path):
    """A thread the exit would wait for: the console entry takes the ordinary exit, and a
    served command's child ends its thread pool and joins it before ``os._exit``."""
    console = ("import sys, threading, time\n"
               "from bridge.cli.common import fast_exit, open_for_writing\n"
               "before = open_for_writing()\n"
               "t = threading.Thread(target=lambda: (time.sleep(0.3), open('t.txt', 'w')"
               ".write('done')))\n"
               "t.start()\n"
               "status = fast_exit(4, before)\n"
               "sys.stderr.write('ordinary exit')\n"
               "sys.exit(status)\n")
    res = subprocess.run([sys.executable, "-c", console], cwd=tmp_path, capture_output=True,
                         text=True, env=_env(), timeout=60)
    assert (res.returncode, res.stderr) == (4, "ordinary exit")
    assert (tmp_path / "t.txt").read_text() == "done"
    child = ("import time\n"
             "from concurrent.futures import ThreadPoolExecutor\n"
             "from bridge.cli.common import open_for_writing\n"
             "from bridge.cli.serve_child import leave\n"
             "before = open_for_writing()\n"
             "pool = ThreadPoolExecutor(1)\n"  # never shut down by the command
             "pool.submit(lambda: (time.sleep(0.3), open('p.txt', 'w').write('done')))\n"
             "leave(6, before)\n")
    res = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True,
                         text=True, env=_env(), timeout=60)
    assert (res.returncode, res.stderr) == (6, "")
    assert (tmp_path / "p.txt").read_text() == "done"
