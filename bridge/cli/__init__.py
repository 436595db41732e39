"""The ``qcd-bridge`` command line: the only module that reads argv.

Each sub-command registers itself through a small ``add_*_parser(subparsers)`` function that
sets ``func`` to a handler returning the exit status; handlers import their modules lazily so
that ``qcd-bridge --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def _nrow(values: Sequence[str]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


# -- field: a random or unit configuration and its basic observables -----------------------------
def add_field_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge field`` (the former ``demo``; ``demo`` is now the end-to-end hybrid
    sampler demo of :mod:`bridge.jobs.demo`)."""
    p = sub.add_parser(
        "field",
        help="generate a gauge configuration and print its action, plaquettes and Polyakov loops",
        description=(
            "Generate a (hot, Haar-random or cold, unit) gauge configuration, print its Wilson "
            "action, Chroma's MesPlq plaquettes (w/s/t, per plane, link) and the Polyakov loops "
            "in Chroma's normalisation; with --json print one JSON object instead."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--nrow", nargs="+", default=["4", "4", "4", "8"], metavar="L",
                   help="lattice extents in Chroma's order x y (z) t")
    p.add_argument("--group", default="SU3", help="gauge group: U1, SU2, SU3 or SU<N>")
    p.add_argument("--beta", type=float, default=5.5, help="Wilson gauge coupling")
    p.add_argument("--start", choices=["hot", "cold"], default="hot",
                   help="hot: Haar-random links; cold: unit links")
    p.add_argument("--batch", type=int, default=1, help="number of configurations")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--precision", choices=["64", "32"], default="64",
                   help="floating-point precision in bits")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run_field)


def _run_field(args: argparse.Namespace) -> int:
    import torch

    from .. import gauge
    from ..lattice import Lattice

    lat = Lattice(_nrow(args.nrow))
    dtype = torch.complex128 if args.precision == "64" else torch.complex64
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.start == "hot":
        u = gauge.random_gauge(lat, args.group, args.batch, generator=gen, dtype=dtype,
                               device=args.device)
    else:
        u = gauge.unit_gauge(lat, args.group, args.batch, dtype=dtype, device=args.device)
    action = gauge.wilson_action(u, args.beta)
    force = gauge.wilson_force(u, args.beta)
    m = gauge.mesplq(u)
    poly = [gauge.polyakov_loop(u, mu) for mu in range(lat.nd)]
    seconds = time.perf_counter() - t0
    rows = []
    for i in range(args.batch):
        rows.append({
            "config": i,
            "action": float(action[i]),
            "force_norm": float(force[i].abs().square().sum().sqrt()),
            "w_plaq": float(m.w_plaq[i]),
            "s_plaq": None if m.s_plaq is None else float(m.s_plaq[i]),
            "t_plaq": float(m.t_plaq[i]),
            "planes": {f"plane_{a}{b}_plaq": float(v[i]) for (a, b), v in m.planes.items()},
            "link": float(m.link[i]),
            "poly_loop": [[float(p[i].real), float(p[i].imag)] for p in poly],
        })
    if args.json:
        print(json.dumps({"nrow": list(lat.nrow), "group": args.group, "beta": args.beta,
                          "start": args.start, "seed": args.seed, "configs": rows}))
        return 0
    print(f"qcd-bridge field: {args.group} on {lat} ({lat.volume} sites), beta = {args.beta}, "
          f"{args.start} start, seed {args.seed}, {args.precision}-bit on {args.device}")
    for r in rows:
        print(f"config {r['config']}: S_W = {r['action']:.10f}  |F| = {r['force_norm']:.6f}")
        s = "n/a (2D)" if r["s_plaq"] is None else f"{r['s_plaq']:.12f}"
        print(f"  w_plaq = {r['w_plaq']:.12f}  s_plaq = {s}  t_plaq = {r['t_plaq']:.12f}"
              f"  link = {r['link']:.12f}")
        print("  " + "  ".join(f"{k} = {v:.8f}" for k, v in r["planes"].items()))
        for mu, (re, im) in enumerate(r["poly_loop"]):
            print(f"  poly_loop[{mu}] = {re:+.10f} {im:+.10f}i")
    print(f"({seconds:.3f} s)")
    return 0


# -- hmc: the built-in fallback for Chroma's hmc program ------------------------------------------
def add_hmc_parser(sub: argparse._SubParsersAction) -> None:
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


# -- registry -------------------------------------------------------------------------------------
# Sub-commands defined next to the code they drive: "module:function" entries, each function
# registering one argparse sub-command.  Add a line here to add a command.
_SUBCOMMANDS = [
    "bridge.io.inspect:add_inspect_parser",
    "bridge.io.inspect:add_convert_parser",
    "bridge.jobs.measure:add_chroma_parser",
    "bridge.jobs.measure:add_measure_parser",
    "bridge.cli.validate:add_validate_parser",
    "bridge.cli.flows:add_train_parser",
    "bridge.cli.flows:add_sample_parser",
    "bridge.jobs.dropin:add_run_parser",
    "bridge.jobs.chain:add_chain_parser",
    "bridge.cli.chroma:add_chroma_xml_parser",
    "bridge.jobs.demo:add_demo_parser",
]


def _registrars():
    import importlib

    regs = [add_field_parser, add_hmc_parser]
    for entry in _SUBCOMMANDS:
        module, func = entry.split(":")
        regs.append(getattr(importlib.import_module(module), func))
    return regs


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="qcd-bridge",
        description=(
            "Flow-based proposals for lattice gauge theory, exact by accept/reject or "
            "reweighting, exchanging gauge fields with Chroma/QUDA (ILDG/SciDAC LIME)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"qcd-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for reg in _registrars():
        reg(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qcd-bridge`` console script; returns the exit status."""
    from ..errors import BridgeError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stderr.close()
        return 0
    except (BridgeError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"qcd-bridge {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
