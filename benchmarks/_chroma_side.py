"""Shared by the benchmark scripts: Chroma's Release timings, and running Chroma's programs side
by side with ours on the same input XML when its executables are given.

Chroma's numbers are those of ``../shared/reference/chroma/README.md`` (Chroma devel d2f9a723 on
QDP++ devel 7a4bd2c2, CMake Release build -O3 -DNDEBUG, scalar, double, one core, measured on a
2-core machine of the project's CI kind, 2026-12-07).  Where ``QCD_BRIDGE_CHROMA_HMC`` (Chroma's
``hmc``) or ``QCD_BRIDGE_CHROMA`` (Chroma's ``chroma``) names an executable (the variables of
:mod:`bridge.chroma.engines`), :func:`side_by_side` runs both programs alternately on the same
input in a scratch folder and reports the median of each.  Nothing here builds Chroma.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "chroma"

CHROMA_RELEASE = {
    "hmc pure gauge 4^4": 0.0083,
    "hmc pure gauge 8^4": 0.262,
    "hmc nf2 4^4": 0.026,
    "hmc nf2 8^4": 3.4,  # 3.35-3.48
    "chroma measurement 4^4 (process)": 1.01,
}
"""Chroma Release seconds: per trajectory for ``hmc``, per process for the measurement input."""

ENV_HMC = "QCD_BRIDGE_CHROMA_HMC"
ENV_CHROMA = "QCD_BRIDGE_CHROMA"


def ratio(ours: float, chroma: float) -> str:
    """``ours / chroma`` as printed next to each number."""
    return f"{ours / chroma:.2f}x"


def hmc_input(kind: str, ntraj: int, workdir: Path) -> Path:
    """The reference ``hmc`` input of ``kind`` (``"nf2"`` or ``"pure_gauge"``) rewritten to start
    from the reference configuration 1500 and run ``ntraj`` production updates without saving
    or reverse checks; the configuration is copied next to it."""
    folder = DATA / ("nf2_b1.0_k0.1_4x4" if kind == "nf2" else "pure_gauge_b5.5_4x4")
    cfg = next(folder.glob("*_cfg_1500.lime"))
    shutil.copy(cfg, workdir / cfg.name)
    text = (folder / "hmc.ini.xml").read_text()
    subs = [
        (r"<cfg_type>[^<]*</cfg_type>", "<cfg_type>SZINQIO</cfg_type>"),
        (r"<cfg_file>[^<]*</cfg_file>", f"<cfg_file>{cfg.name}</cfg_file>"),
        (r"<NWarmUpUpdates>\d+</NWarmUpUpdates>", "<NWarmUpUpdates>0</NWarmUpUpdates>"),
        (r"<NProductionUpdates>\d+</NProductionUpdates>",
         f"<NProductionUpdates>{ntraj}</NProductionUpdates>"),
        (r"<NUpdatesThisRun>\d+</NUpdatesThisRun>", f"<NUpdatesThisRun>{ntraj}</NUpdatesThisRun>"),
        (r"<SaveInterval>\d+</SaveInterval>", f"<SaveInterval>{ntraj + 1000}</SaveInterval>"),
        (r"<ReverseCheckP>true</ReverseCheckP>", "<ReverseCheckP>false</ReverseCheckP>"),
    ]
    for pat, rep in subs:
        text = re.sub(pat, rep, text)
    path = workdir / f"{kind}.ini.xml"
    path.write_text(text)
    return path


def measure_input(workdir: Path) -> Path:
    """Chroma's measurement input of ``nf2_b1.0_k0.1_4x4`` with its configuration, copied."""
    folder = DATA / "nf2_b1.0_k0.1_4x4"
    shutil.copy(folder / "nf2_b1.0_k0.1_4x4_cfg_1500.lime", workdir)
    path = workdir / "chroma_measure.ini.xml"
    shutil.copy(folder / "chroma_measure.ini.xml", path)
    return path


def _run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd`` (stdout/stderr discarded): ``(wall, CPU seconds of the child)``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _per_traj(out_xml: Path) -> float:
    from bridge.chroma.engines import read_hmc_output

    recs, _ = read_hmc_output(out_xml)
    return statistics.median(r.seconds for r in recs)


def ours_cmd(program: str, inp: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "bridge.cli", program, "-i", str(inp), "-o", str(out),
            "--quiet"]


def side_by_side(program: str, kind: str | None, reps: int, ntraj: int = 20) -> dict | None:
    """Chroma's ``program`` (``"hmc"`` with ``kind``, or ``"chroma"``) and ours alternately,
    ``reps`` times each, on the same input; None when its executable is not configured.
    ``hmc``: median ``seconds_for_trajectory`` of each program's own output; ``chroma``: whole
    process wall and CPU seconds."""
    exe = os.environ.get(ENV_HMC if program == "hmc" else ENV_CHROMA)
    if not exe:
        return None
    rows: dict[str, list[float]] = {"chroma": [], "ours": [], "chroma_cpu": [], "ours_cpu": []}
    with tempfile.TemporaryDirectory(prefix="qcdb_side_") as tmp:
        work = Path(tmp)
        inp = hmc_input(kind or "nf2", ntraj, work) if program == "hmc" else measure_input(work)
        for _ in range(reps):
            for who in ("chroma", "ours"):
                out = work / f"{who}.out.xml"
                cmd = ([exe, "-i", str(inp), "-o", str(out)] if who == "chroma"
                       else ours_cmd(program, inp, out))
                if who == "chroma" and program == "hmc":
                    cmd += ["-l", str(work / "chroma.log.xml")]
                wall, cpu = _run(cmd, work)
                rows[who].append(_per_traj(out) if program == "hmc" else wall)
                rows[f"{who}_cpu"].append(cpu)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {"program": program, "kind": kind, "reps": reps, "executable": exe,
            "chroma_seconds": med["chroma"], "ours_seconds": med["ours"],
            "chroma_process_cpu": med["chroma_cpu"], "ours_process_cpu": med["ours_cpu"],
            "ratio": med["ours"] / med["chroma"], "all": rows}
