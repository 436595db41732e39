"""Start-up time of the command line: ``qcd-bridge --help``, ``qcd-bridge chroma-xml --help`` and
``qcd-bridge hmc --help`` (median wall time of ``--repeat`` fresh processes each), next to a bare
``python -c pass`` for the interpreter's own start-up, and whether torch was imported.

    python benchmarks/bench_startup.py [--repeat 9] [--out benchmarks/results/startup.json]

The parser is built from the modules of ``bridge/cli`` only, which import nothing heavy; a
command's job (and torch) is imported when the command runs.  The target is < 0.5 s per help
on an idle machine.

Also ``qcd-bridge hmc`` from the process start to the beginning of its first trajectory (Nf=2
4^4 reference input, from the reference configuration; target < 0.8 s), next to ``import torch``
alone (the floor of every command that computes), each the median of ``--repeat`` processes,
with the ratio to its target.

``--server`` adds whole processes, wall and CPU seconds (median of ``--repeat``), for three
runs a campaign repeats: ``qcd-bridge hmc`` to its first trajectory, Chroma's measurement input
of ``nf2_b1.0_k0.1_4x4`` on one configuration, and 200 pure-gauge 4^4 trajectories; each as a
cold process with the ordinary interpreter exit (``main(argv)`` called as a function), a cold
process through the console entry (``os._exit`` once the files are closed), and through a warm
``qcd-bridge serve`` (the client's CPU plus that of the server's forked command), alternated,
with the ratio to Chroma's Release numbers and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = [
    ("python -c pass", ["-c", "pass"]),
    ("qcd-bridge --help", ["-m", "bridge.cli", "--help"]),
    ("qcd-bridge chroma-xml --help", ["-m", "bridge.cli", "chroma-xml", "--help"]),
    ("qcd-bridge hmc --help", ["-m", "bridge.cli", "hmc", "--help"]),
]
# the same help, and the list of modules it imported
_PROBE = ("import runpy, sys; sys.argv = ['qcd-bridge', *{argv!r}]\n"
          "try:\n    runpy.run_module('bridge.cli', run_name='__main__')\n"
          "except SystemExit:\n    pass\n"
          "sys.stderr.write(' '.join(m for m in ('torch', 'numpy', 'h5py', 'lxml') "
          "if m in sys.modules))")


# time from the spawn (argv[1], time.time() of the parent) to the first HMC trajectory
_FIRST_TRAJ = (
    "import os, sys, time\n"
    "t_spawn = float(sys.argv[1])\n"
    "import bridge.mcmc.hmc as H\n"
    "orig = H.hmc_kernel\n"
    "def kernel(*a, **k):\n"
    "    kern = orig(*a, **k)\n"
    "    def step(s):\n"
    "        sys.stdout.write(f'{time.time() - t_spawn:.6f}\\n'); sys.stdout.flush()\n"
    "        os._exit(0)\n"
    "    return H.Kernel(kern.init, step)\n"
    "H.hmc_kernel = kernel\n"
    "import runpy\n"
    "sys.argv = ['qcd-bridge', 'hmc', '-i', sys.argv[2], '-o', sys.argv[3], '--quiet']\n"
    "runpy.run_module('bridge.cli', run_name='__main__')\n"
)
HMC_START_TARGET = 0.8
HELP_TARGET = 0.5
CHROMA_MEASURE_PROCESS = 1.01
"""Chroma Release, whole ``chroma`` process on the measurement input (../shared/reference/chroma/
README.md)."""
CHROMA_PG200_PROCESS = 1.73
"""Chroma Release, whole ``hmc`` process for 200 pure-gauge 4^4 trajectories (tau 1, 10
leapfrog steps) from configuration 1500, measured side by side on the project's 2-core
machine kind when the Release timings were taken."""

# the first-trajectory probe for the server: the served command writes the seconds since the
# client's spawn (QCD_BRIDGE_BENCH_T0 in its environment) and ends at its first trajectory
_PATCH = (
    "import os, sys, time\n"
    "import bridge.mcmc.hmc as H\n"
    "orig = H.hmc_kernel\n"
    "def kernel(*a, **k):\n"
    "    kern = orig(*a, **k)\n"
    "    if 'QCD_BRIDGE_BENCH_T0' not in os.environ:\n"
    "        return kern\n"
    "    def step(s):\n"
    "        t0 = float(os.environ['QCD_BRIDGE_BENCH_T0'])\n"
    "        sys.stdout.write(f'{time.time() - t0:.6f}\\n'); sys.stdout.flush()\n"
    "        os._exit(0)\n"
    "    return H.Kernel(kern.init, step)\n"
    "H.hmc_kernel = kernel\n"
)
_PATCHED_SERVER = _PATCH + "from bridge.cli import main\nsys.exit(main(sys.argv[1:]))\n"
_PATCHED_CONSOLE = _PATCH + ("import runpy\nsys.argv = ['qcd-bridge', *sys.argv[1:]]\n"
                             "runpy.run_module('bridge.cli', run_name='__main__')\n")
_FUNCTION_EXIT = "import sys\nfrom bridge.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _first_trajectory(inp: Path, out: Path) -> tuple[float, float]:
    """``(wall, CPU)`` seconds from the spawn to the first trajectory."""
    t0, c0 = time.time(), _child_cpu()
    res = subprocess.run([sys.executable, "-c", _FIRST_TRAJ, repr(t0), str(inp), str(out)],
                         check=True, stdout=subprocess.PIPE, text=True, cwd=inp.parent,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(res.stdout.strip().splitlines()[-1]), _child_cpu() - c0


def _import_torch() -> tuple[float, float]:
    t0, c0 = time.perf_counter(), _child_cpu()
    # os._exit: no interpreter shutdown, as the first-trajectory probe
    subprocess.run([sys.executable, "-c", "import os, torch; os._exit(0)"], check=True)
    return time.perf_counter() - t0, _child_cpu() - c0


def _row(command: str, runs: list[tuple[float, float]], **extra: object) -> dict:
    walls = [w for w, _ in runs]
    return {"command": command, "median_s": statistics.median(walls), "min_s": min(walls),
            "max_s": max(walls), "median_cpu_s": statistics.median(c for _, c in runs),
            "repeat": len(runs), **extra}


def _startup_rows(repeat: int) -> list[dict]:
    """``import torch`` and ``qcd-bridge hmc`` to its first trajectory."""
    from _chroma_side import hmc_input

    _import_torch()
    torch_runs, hmc_runs = [], []
    with tempfile.TemporaryDirectory(prefix="qcdb_start_") as tmp:
        inp = hmc_input("nf2", 1, Path(tmp))
        out = Path(tmp) / "out.xml"
        _first_trajectory(inp, out)  # file cache, native kernels built or loaded
        for _ in range(repeat):  # alternating: both see the same machine state
            torch_runs.append(_import_torch())
            hmc_runs.append(_first_trajectory(inp, out))
    hmc = _row("qcd-bridge hmc, start to first trajectory (Nf=2 4^4)", hmc_runs,
               target_s=HMC_START_TARGET)
    hmc["ratio_to_target"] = hmc["median_s"] / HMC_START_TARGET
    return [_row("import torch (no shutdown)", torch_runs), hmc]


def _time(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _heavy(args: list[str]) -> str:
    if args[:2] != ["-m", "bridge.cli"]:
        return ""
    out = subprocess.run([sys.executable, "-c", _PROBE.format(argv=args[2:])], check=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return out.stderr.strip()


def _start_server(path: Path) -> subprocess.Popen:
    """``qcd-bridge serve`` with the first-trajectory probe preloaded (it acts only on commands
    whose environment has ``QCD_BRIDGE_BENCH_T0``); returns once it answers."""
    from bridge.cli.serve_client import request

    proc = subprocess.Popen([sys.executable, "-c", _PATCHED_SERVER, "serve", "--socket",
                             str(path), "--idle-timeout", "900"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"qcd-bridge serve exited with status {proc.returncode}")
        try:
            if request(path, {"op": "ping"}, 0.5).get("ok"):
                return proc
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("qcd-bridge serve did not answer within 300 s")


def _served_cpu(path: Path | None) -> float:
    if path is None:
        return 0.0
    from bridge.cli.serve_client import request

    return float(request(path, {"op": "ping"})["children_cpu_s"])


def _whole(cmd: list[str], cwd: Path, server: Path | None, probe: bool = False
           ) -> tuple[float, float]:
    """``(wall, CPU)`` of one process (with ``server``: through it, the CPU of its command
    included); with ``probe`` the wall time is what the first-trajectory probe printed."""
    env = {k: v for k, v in os.environ.items() if k != "QCD_BRIDGE_SERVER"}
    env["OMP_NUM_THREADS"] = "1"
    if server is not None:
        env["QCD_BRIDGE_SERVER"] = str(server)
    c0, s0 = _child_cpu(), _served_cpu(server)
    t0 = time.perf_counter()
    env["QCD_BRIDGE_BENCH_T0"] = repr(time.time()) if probe else ""
    if not probe:
        del env["QCD_BRIDGE_BENCH_T0"]
    res = subprocess.run(cmd, cwd=cwd, env=env, check=True, text=True,
                         stdout=subprocess.PIPE if probe else subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if probe:
        wall = float(res.stdout.strip().splitlines()[-1])
    return wall, _child_cpu() - c0 + _served_cpu(server) - s0


def _in_process(cmd: list[str], cwd: Path, server: Path | None, probe: bool = False
                ) -> tuple[float, float]:
    """``(wall, CPU)`` of the command called as a function in this process (``cmd[0]`` is
    the marker ``"in-process"``): the computation without any start-up or exit."""
    import contextlib
    import io

    from bridge.cli import main as cli_main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            t0, c0 = time.perf_counter(), time.process_time()
            status = cli_main(cmd[1:])
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        os.chdir(old)
    if status:
        raise RuntimeError(f"{cmd[1:]}: exit status {status}")
    return wall, cpu


def _server_rows(repeat: int) -> list[dict]:
    """The three campaign runs, each cold (ordinary exit; console entry) and through a warm
    server, alternated run by run (module docstring)."""
    from _chroma_side import hmc_input, measure_input

    rows = []
    with tempfile.TemporaryDirectory(prefix="qcdb_serve_") as tmp:
        work = Path(tmp)
        nf2 = hmc_input("nf2", 1, work)
        pg = hmc_input("pure_gauge", 200, work)
        meas = measure_input(work)
        path = work / "s.sock"
        proc = _start_server(path)
        try:
            def args(kind: str) -> list[str]:
                if kind == "first":
                    return ["hmc", "-i", nf2.name, "-o", "first.out.xml", "--quiet"]
                if kind == "measure":
                    return ["chroma", "-i", meas.name, "-o", "meas.out.xml", "--quiet"]
                return ["hmc", "-i", pg.name, "-o", "pg.out.xml", "--quiet"]

            variants = {
                "first": [("cold process", [sys.executable, "-c", _PATCHED_CONSOLE], None),
                          ("warm server", [sys.executable, "-m", "bridge.cli"], path)],
                "measure": [("cold, ordinary exit", [sys.executable, "-c", _FUNCTION_EXIT], None),
                            ("cold, os._exit", [sys.executable, "-m", "bridge.cli"], None),
                            ("warm server", [sys.executable, "-m", "bridge.cli"], path),
                            ("in process, computation only", ["in-process"], None)],
            }
            variants["pg200"] = variants["measure"]
            names = {"first": "hmc start to first trajectory (Nf=2 4^4)",
                     "measure": "chroma measurement input 4^4, whole process",
                     "pg200": "200 trajectories pure gauge 4^4, whole process"}
            chroma = {"first": None, "measure": CHROMA_MEASURE_PROCESS,
                      "pg200": CHROMA_PG200_PROCESS}
            for kind, vs in variants.items():
                def once(cmd: list[str], server: Path | None, kind: str = kind
                         ) -> tuple[float, float]:
                    run = _in_process if cmd == ["in-process"] else _whole
                    return run(cmd + args(kind), work, server, probe=kind == "first")

                for _, cmd, server in vs:  # warm the file cache and the server's first fork
                    once(cmd, server)
                runs: dict[str, list[tuple[float, float]]] = {v[0]: [] for v in vs}
                load0 = os.getloadavg()[0]
                for _ in range(repeat):
                    for label, cmd, server in vs:
                        runs[label].append(once(cmd, server))
                load1 = os.getloadavg()[0]
                for label, _, _ in vs:
                    row = _row(f"{names[kind]}: {label}", runs[label], load_before=load0,
                               load_after=load1)
                    ref = chroma[kind]
                    if ref is not None:
                        row.update(chroma_release_s=ref, ratio_wall=row["median_s"] / ref,
                                   ratio_cpu=row["median_cpu_s"] / ref)
                    elif kind == "first":
                        row.update(target_s=HMC_START_TARGET,
                                   ratio_to_target=row["median_s"] / HMC_START_TARGET)
                    rows.append(row)
        finally:
            proc.terminate()
            proc.wait(30)
    return rows


def _print_server_rows(rows: list[dict]) -> None:
    print(f"\n{'run':62s} {'wall':>7s} {'CPU':>7s}  {'Chroma':>6s}  ratio wall / CPU  load")
    for r in rows:
        if "chroma_release_s" in r:
            ref = f"{r['chroma_release_s']:6.2f}  {r['ratio_wall']:5.2f} / {r['ratio_cpu']:.2f}"
        elif "target_s" in r:
            ref = f"{r['target_s']:6.2f}  {r['ratio_to_target']:5.2f} (of the target)"
        else:
            ref = ""
        print(f"{r['command'][:62]:62s} {r['median_s']:7.3f} {r['median_cpu_s']:7.3f}  {ref}"
              f"  {r['load_before']:.1f}-{r['load_after']:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=9, help="processes per command")
    ap.add_argument("--out", default="benchmarks/results/startup.json", help="JSON result file")
    ap.add_argument("--server", action="store_true",
                    help="also whole processes cold and through `qcd-bridge serve`")
    ap.add_argument("--only-server", action="store_true",
                    help="only the --server rows")
    opts = ap.parse_args()
    if opts.only_server:
        rows = _server_rows(opts.repeat)
        _print_server_rows(rows)
        from _results import write_results

        write_results(opts.out, rows)
        return 0
    rows = []
    print(f"{'command':32s} {'median':>8s} {'min':>8s} {'max':>8s}  heavy imports")
    for name, args in CASES:
        _time(args)  # warm the file cache
        times = [_time(args) for _ in range(opts.repeat)]
        heavy = _heavy(args)
        rows.append({"command": name, "median_s": statistics.median(times), "min_s": min(times),
                     "max_s": max(times), "repeat": opts.repeat, "heavy_imports": heavy.split()})
        print(f"{name:32s} {statistics.median(times):8.3f} {min(times):8.3f} {max(times):8.3f}"
              f"  {heavy or '-'}")
    for row in _startup_rows(opts.repeat):
        rows.append(row)
        target = f"  (target {row['target_s']} s: {row['ratio_to_target']:.2f}x)" \
            if "target_s" in row else ""
        print(f"{row['command'][:32]:32s} {row['median_s']:8.3f} {row['min_s']:8.3f} "
              f"{row['max_s']:8.3f}  CPU {row['median_cpu_s']:.3f} s{target}")
    load = os.getloadavg()[0]
    print(f"load average {load:.2f}; help target {HELP_TARGET} s")
    if opts.server:
        server_rows = _server_rows(opts.repeat)
        _print_server_rows(server_rows)
        rows += server_rows
    from _results import write_results

    write_results(opts.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
