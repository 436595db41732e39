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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=9, help="processes per command")
    ap.add_argument("--out", default="benchmarks/results/startup.json", help="JSON result file")
    opts = ap.parse_args()
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
    from _results import write_results

    write_results(opts.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
