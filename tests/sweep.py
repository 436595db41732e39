"""Run the test suite under many seeds, CPU kernel sets and thread counts; print a table.

A statistical threshold must hold for the statistics of its quantity, not for one lucky seed or
one CPU.  This script reruns a pytest selection with

- ``QCD_BRIDGE_TEST_SEED_SHIFT=k`` (every integer seed of the tests and the package moved to
  another stream, ``tests/conftest.py``) for ``--shifts``;
- ``ATEN_CPU_CAPABILITY`` (torch's vectorised kernel set: ``default``, ``avx2``, ``avx512``,
  which emulates other CPUs) and ``QCD_BRIDGE_TEST_THREADS`` for ``--capabilities``/``--threads``;

and reports, per run, the pytest summary and the failing test ids; JSON with ``--json``.
Exit status 1 when any run failed.  Examples::

    python tests/sweep.py --shifts 1-20 --jobs 2 --json sweep.json
    python tests/sweep.py --capabilities default avx2 avx512 --threads 1 2
    python tests/sweep.py --shifts 1-20 -- tests/test_hmc.py -k exp_minus
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^=+ (.*) in [\d.]+s.*=+$")


def _shifts(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _run(env_extra: dict[str, str], pytest_args: list[str]) -> dict:
    env = dict(os.environ, **env_extra)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    summary = next((m.group(1) for line in reversed(lines) if (m := SUMMARY.match(line))),
                   lines[-1] if lines else proc.stderr.strip()[-200:])
    failed = sorted({line.split()[1] for line in lines
                     if line.startswith(("FAILED ", "ERROR ")) and len(line.split()) > 1})
    return {"env": env_extra, "returncode": proc.returncode, "summary": summary,
            "failed": failed, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shifts", type=_shifts, default=[0],
                   help="seed shifts, e.g. 1-20 or 0,3,5 (default 0: the suite's own seeds)")
    p.add_argument("--capabilities", nargs="+", default=[None],
                   help="ATEN_CPU_CAPABILITY values (default: the machine's)")
    p.add_argument("--threads", nargs="+", default=["1"], help="QCD_BRIDGE_TEST_THREADS values")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (one core each)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("pytest_args", nargs="*", help="after --: arguments passed to pytest")
    args = p.parse_args(argv)

    runs = []
    for shift in args.shifts:
        for cap in args.capabilities:
            for threads in args.threads:
                env = {"QCD_BRIDGE_TEST_SEED_SHIFT": str(shift), "QCD_BRIDGE_TEST_THREADS": threads}
                if cap:
                    env["ATEN_CPU_CAPABILITY"] = cap
                runs.append(env)
    print(f"{len(runs)} runs of: pytest {' '.join(args.pytest_args)}", flush=True)
    results = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(_run, env, args.pytest_args) for env in runs]
        for fut in concurrent.futures.as_completed(futures):
            r = fut.result()
            results.append(r)
            env = r["env"]
            cap, threads = env.get("ATEN_CPU_CAPABILITY", "-"), env["QCD_BRIDGE_TEST_THREADS"]
            print(f"shift {env['QCD_BRIDGE_TEST_SEED_SHIFT']:>3}  cpu {cap:<8} threads {threads}"
                  f"  {r['seconds']:7.1f} s  {r['summary']}"
                  + "".join(f"\n      {t}" for t in r["failed"]), flush=True)
    bad = [r for r in results if r["returncode"] != 0]
    print(f"{len(results) - len(bad)} of {len(results)} runs passed")
    if args.json:
        args.json.write_text(json.dumps({"pytest_args": args.pytest_args, "runs": results},
                                        indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
