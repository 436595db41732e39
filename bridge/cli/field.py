"""``qcd-bridge field``: a random (Haar) or unit gauge configuration with its Wilson action,
Chroma's MesPlq plaquettes and the Polyakov loops, as text or one JSON object."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["add_field_parser"]


def _nrow(values: Sequence[str]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def add_field_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge field``."""
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
    import json
    import time

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
