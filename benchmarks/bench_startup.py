"""Start-up time of the command line: ``qcd-bridge --help``, ``qcd-bridge chroma-xml --help`` and
``qcd-bridge hmc --help`` (median wall time of ``--repeat`` fresh processes each), next to a bare
``python -c pass`` for the interpreter's own start-up, and whether torch was imported.

    python benchmarks/bench_startup.py [--repeat 9] [--out benchmarks/results/startup.json]

The parser is built from the modules of ``bridge/cli`` only, which import nothing heavy; a
command's job (and torch) is imported when the command runs.  The target is < 0.5 s per help
on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
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
    from _results import write_results

    write_results(opts.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
