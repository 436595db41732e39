"""``qcd-bridge run`` (the drop-in hybrid loop of :mod:`bridge.jobs.dropin`) and ``qcd-bridge
hmc`` (the built-in engine for Chroma's ``hmc`` input, :mod:`bridge.chroma.hmc_program`)."""

from __future__ import annotations

import argparse

__all__ = ["add_run_parser", "add_hmc_parser"]


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge run``."""
    p = sub.add_parser(
        "run", help="alternate HMC segments (Chroma or built-in) with flow-Metropolis steps",
        description="Run the drop-in hybrid loop of a workflow file (JSON or TOML): HMC segments "
                    "of N trajectories in Chroma's hmc (or the built-in engine) from your own "
                    "hmc input XML, each followed by M flow-Metropolis steps; resumes when "
                    "rerun.  See docs/dropin.md.")
    p.add_argument("workflow", help="workflow file (.json or .toml)")
    p.add_argument("--max-cycles", type=int, default=None,
                   help="run at most this many cycles in this call (the run resumes later)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_run_cmd)


def _run_cmd(args: argparse.Namespace) -> int:
    from ..jobs.dropin import run_workflow

    quiet = {"log": None} if args.quiet else {}  # the default log writes lines to stderr
    s = run_workflow(args.workflow, max_cycles=args.max_cycles, **quiet)
    state = "finished" if s.finished else "stopped (rerun the command to continue)"
    print(f"{state}: {s.cycles_done}/{s.cycles_total} cycles, {s.updates} updates; engine "
          f"{s.engine}; ensemble {s.store}")
    return 0


def add_hmc_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge hmc`` (the built-in fallback for Chroma's ``hmc`` program)."""
    p = sub.add_parser(
        "hmc",
        help="run Chroma's hmc input XML with the built-in engine",
        description=(
            "Run the HMC updates of a Chroma `hmc` input file (root <Params>) with the built-in "
            "engine: writes <SavePrefix>_cfg_<N>.lime (ILDG/SciDAC, readable by Chroma) and "
            "<SavePrefix>_restart_<N>.xml every SaveInterval updates and at the end, and the "
            "output XML with Chroma's element paths. Elements the engine does not support are "
            "errors that name them."
        ),
    )
    p.add_argument("-i", "--input", required=True, help="Chroma hmc input XML")
    p.add_argument("-o", "--output", required=True, help="output XML (Chroma's layout)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=_run_hmc)


def _run_hmc(args: argparse.Namespace) -> int:
    from ..chroma.hmc_input import read_hmc_input
    from ..chroma.hmc_program import run_hmc, summarize

    inp = read_hmc_input(args.input)
    res = run_hmc(inp, args.output, device=args.device, progress=not args.quiet)
    s = summarize(res.updates)
    if s.get("n"):
        print(f"{s['n']} production updates: acceptance {s['acceptance']:.3f}, "
              f"<w_plaq> {s['w_plaq']:.6f}, <exp(-dH)> {s['exp_minus_dH']:.4f}, "
              f"{s['seconds_per_trajectory']:.4f} s/trajectory")
    print(f"wrote {res.output}" + (f" and {len(res.saved)} configuration(s), last "
                                   f"{res.saved[-1]}" if res.saved else ""))
    return 0
