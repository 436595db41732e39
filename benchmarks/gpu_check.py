"""The GPU check: one script, under 5 minutes on one GPU, that measures what the GPU path does.

Sections (float64 = complex128 fields and float32 = complex64 each; a failing section is
recorded with its error and the others still run):

1. ``bandwidth``: device-to-device copy of 1 GiB (read + write bytes / time), the attainable
   memory bandwidth; with the nominal one from the device properties when torch exposes them.
2. ``dslash``: the Wilson hopping term ``H psi`` and the even-odd ``K^dag K`` at 8^4, 16^4 and
   24^4 (``bench_dslash.bench_dslash``).  Roofline: the dslash does 1320 flop per site and moves
   at least 8 links x 18 + 8 neighbour spinors x 24 + 1 output spinor x 24 = 360 reals per site
   (2880 B in float64, 1440 B in float32; no cache reuse, no link compression), an arithmetic
   intensity of 0.46 (float64) / 0.92 (float32) flop/B, far below the flop/B balance of any GPU:
   the operator is memory bound, and its roofline is ``bandwidth x 1320 / bytes per site``.
   ``K^dag K`` counts twice the dslash (two Schur operators, each two half-lattice hops).
   Reported: GFLOP/s, GB/s, and the fraction of the measured copy bandwidth
   (goal: >= 0.5 in float64 at 16^4 and above).
3. ``cg``: seconds per CG iteration on ``K^dag K`` (kappa 0.12, Haar-random 16^4 links).
4. ``flows``: training steps per second and proposals (``sample`` + Wilson action) per second
   for SU(3) 4^4 and 8^4 (the coupling model of ``bench_unfreezing.SU3_ARCH``, batch 16) and
   U(1) 16x16 (``U1_ARCH``, batch 64), on the GPU and - for the ratio, except at 8^4 - on
   the CPU (3 steps).
5. ``hybrid``: steps per second of the hybrid chain (2MN HMC + flow independence Metropolis,
   ``compose``) for U(1) 16x16, 64 chains.

Without a CUDA device it prints that there is no GPU and exits 0 (tests/test_gpu_check.py);
``--device cpu --smoke`` runs every section on tiny sizes to check the script itself.  Not yet
run on a GPU (docs/performance.md).

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's bridge

DTYPES = {"float64": torch.complex128, "float32": torch.complex64}
FLOPS_PER_SITE = 1320
REALS_PER_SITE = 8 * 18 + 8 * 24 + 24  # links + neighbour spinors + output spinor
REAL_BYTES = {"float64": 8, "float32": 4}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn: Callable[[], object], device: torch.device, reps: int = 3) -> float:
    """Best of ``reps`` timed calls after one warm-up call (seconds)."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bandwidth(device: torch.device, mib: int) -> list[dict]:
    n = mib * 2**20 // 8
    src = torch.ones(n, dtype=torch.float64, device=device)
    dst = torch.empty_like(src)
    t = _best(lambda: dst.copy_(src), device, reps=5)
    row = {"section": "bandwidth", "bytes": 2 * src.numel() * 8,
           "measured_gb_per_s": 2 * src.numel() * 8 / t / 1e9}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        clock, bus = getattr(p, "memory_clock_rate", None), getattr(p, "memory_bus_width", None)
        if clock and bus:  # kHz, bits; double data rate
            row["nominal_gb_per_s"] = 2 * clock * 1e3 * bus / 8 / 1e9
    print(f"bandwidth: copy {row['measured_gb_per_s']:.1f} GB/s"
          + (f" (nominal {row['nominal_gb_per_s']:.0f} GB/s)" if "nominal_gb_per_s" in row
             else ""), flush=True)
    return [row]


def dslash(device: torch.device, sizes: list[int], copy_gbs: float) -> list[dict]:
    from bench_dslash import bench_dslash

    rows = []
    for r in bench_dslash(sizes, tuple(DTYPES.values()), device):
        prec = "float64" if r["dtype"] == "complex128" else "float32"
        bytes_site = REALS_PER_SITE * REAL_BYTES[prec]
        roof = copy_gbs * FLOPS_PER_SITE / bytes_site
        kk = 2 * FLOPS_PER_SITE * r["sites"] / r["schur_normal_s"] / 1e9
        row = {"section": "dslash", "precision": prec, "L": r["L"], "sites": r["sites"],
               "dslash_seconds": r["dslash_s"], "dslash_gflops": r["gflops"],
               "dslash_gb_per_s": r["gbytes_per_s"],
               "dslash_fraction_of_roofline": r["gflops"] / roof,
               "kdagk_seconds": r["schur_normal_s"], "kdagk_gflops": kk,
               "kdagk_gb_per_s": kk * bytes_site / FLOPS_PER_SITE,
               "kdagk_fraction_of_roofline": kk / roof, "roofline_gflops": roof,
               "bytes_per_site": bytes_site}
        rows.append(row)
        print(f"  {r['L']:>2}^4 {prec}: dslash {row['dslash_gflops']:8.1f} GFLOP/s "
              f"({row['dslash_fraction_of_roofline']:.2f} of roofline {roof:.0f}), K^dag K "
              f"{kk:8.1f} GFLOP/s", flush=True)
    return rows


def cg(device: torch.device, L: int, max_iter: int) -> list[dict]:
    from bridge.fermions import WilsonDirac
    from bridge.gauge import random_gauge
    from bridge.lattice import Lattice
    from bridge.solvers import CG

    rows = []
    lat = Lattice((L, L, L, L))
    u = random_gauge(lat, "SU3", 1, generator=torch.Generator(device=device).manual_seed(4),
                     device=device)
    for prec, dt in DTYPES.items():
        op = WilsonDirac(u.to(dt), 0.12)
        b = torch.randn(op.field_shape(), dtype=dt, device=device,
                        generator=torch.Generator(device=device).manual_seed(5))
        solver = CG(tol=1e-5 if prec == "float32" else 1e-10, max_iter=max_iter)
        op.solve(b, solver=solver)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        _, st = op.solve(b, solver=solver)
        _sync(device)
        t = time.perf_counter() - t0
        rows.append({"section": "cg", "precision": prec, "L": L, "iterations": st.iterations,
                     "seconds": t, "seconds_per_iteration": t / max(st.iterations, 1),
                     "residual": st.residual})
        print(f"  CG {L}^4 {prec}: {st.iterations} iterations, "
              f"{1e3 * t / max(st.iterations, 1):.3f} ms/iteration", flush=True)
    return rows


def _flow_loss(model, nrow, beta: float, batch: int, dtype: torch.dtype):
    from bridge.gauge import wilson_action

    def loss(gen: torch.Generator, device: torch.device):
        u, logq = model.sample(batch, nrow, generator=gen, device=device, dtype=dtype)
        logw = -wilson_action(u, beta) - logq
        return -logw.mean(), logw.detach()

    return loss


def flows(device: torch.device, cases: list[tuple], steps: int, cpu_steps: int) -> list[dict]:
    from bench_unfreezing import SU3_ARCH, U1_ARCH

    from bridge.flows import make_flow
    from bridge.flows.training import TrainConfig, Trainer
    from bridge.gauge import wilson_action

    archs = {"SU3": SU3_ARCH, "U1": U1_ARCH}
    rows = []
    for label, group, nrow, beta, batch, with_cpu in cases:
        for prec, dt in DTYPES.items():
            real = torch.float64 if prec == "float64" else torch.float32
            per_dev = {}
            runs = [(device, steps)]
            if device.type != "cpu" and with_cpu:  # the same model on the CPU: the ratio
                runs.append((torch.device("cpu"), cpu_steps))
            for dev, n_steps in runs:
                torch.manual_seed(0)
                model = make_flow(group, len(nrow), **archs[group]).to(dev, real)
                tr = Trainer(model, TrainConfig(nrow=nrow, beta=beta, batch=batch, lr=1e-3),
                             loss=_flow_loss(model, nrow, beta, batch, dt))
                tr.step()  # warm-up
                _sync(dev)
                t0 = time.perf_counter()
                for _ in range(n_steps):
                    tr.step()
                _sync(dev)
                train = n_steps / (time.perf_counter() - t0)
                gen = torch.Generator(device=dev).manual_seed(1)

                def propose(model=model, dev=dev, gen=gen, batch=batch, nrow=nrow, dt=dt,
                            beta=beta):
                    with torch.no_grad():
                        u, _ = model.sample(batch, nrow, generator=gen, device=dev, dtype=dt)
                        wilson_action(u, beta)

                prop = batch / _best(propose, dev)
                per_dev[dev.type] = (train, prop)
            train, prop = per_dev[device.type]
            row = {"section": "flows", "case": label, "precision": prec, "batch": batch,
                   "device": device.type, "train_steps_per_second": train,
                   "proposals_per_second": prop}
            if "cpu" in per_dev and device.type != "cpu":
                row["cpu_train_steps_per_second"], row["cpu_proposals_per_second"] = \
                    per_dev["cpu"]
                row["train_speedup_over_cpu"] = train / per_dev["cpu"][0]
                row["proposal_speedup_over_cpu"] = prop / per_dev["cpu"][1]
            rows.append(row)
            print(f"  {label:12} {prec}: {train:8.2f} train steps/s, {prop:10.1f} proposals/s"
                  + (f" (x{row['train_speedup_over_cpu']:.1f} / "
                     f"x{row['proposal_speedup_over_cpu']:.1f} over CPU)"
                     if "train_speedup_over_cpu" in row else ""), flush=True)
    return rows


def hybrid(device: torch.device, L: int, chains: int, steps: int) -> list[dict]:
    from bench_unfreezing import U1_ARCH

    from bridge.flows import make_flow
    from bridge.gauge import unit_gauge
    from bridge.jobs.scaling import make_hmc
    from bridge.lattice import Lattice
    from bridge.mcmc.compose import compose, run_chain
    from bridge.mcmc.flow_mh import flow_metropolis_kernel
    from bridge.mcmc.monomials import GaugeMonomial

    beta, rows = 4.0, []
    for prec, dt in DTYPES.items():
        real = torch.float64 if prec == "float64" else torch.float32
        torch.manual_seed(0)
        model = make_flow("U1", 2, **U1_ARCH).to(device, real)
        kernel = compose([(make_hmc(beta, 8), 1),
                          (flow_metropolis_kernel(model, GaugeMonomial(beta).action,
                                                  batch_size=chains), 1)])
        u0 = unit_gauge(Lattice((L, L)), "U1", chains, dtype=dt, device=device)
        state = kernel.init(u0, seed=1)
        state, _, _ = run_chain(kernel, state, 1)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        state, infos, _ = run_chain(kernel, state, steps)
        _sync(device)
        t = time.perf_counter() - t0
        rows.append({"section": "hybrid", "precision": prec, "L": L, "chains": chains,
                     "cycles": steps, "seconds": t, "cycles_per_second": steps / t,
                     "chain_steps_per_second": steps * chains / t})
        print(f"  hybrid U(1) {L}x{L} {prec}: {steps / t:8.2f} cycles/s x {chains} chains",
              flush=True)
    return rows


def _copy_bandwidth(rows: list[dict]) -> float:
    return next((r["measured_gb_per_s"] for r in rows if "measured_gb_per_s" in r),
                float("nan"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/results/gpu_check.json")
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu with --smoke")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes: checks that every section runs (any device)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU found (torch.cuda.is_available() is False): nothing "
              "measured, nothing written")
        return 0
    if device.type == "cpu" and not args.smoke:
        print("gpu_check: --device cpu is only for --smoke (the check measures a GPU)")
        return 2
    smoke = args.smoke
    # (label, group, nrow, beta, batch, also on the CPU for the ratio: not 8^4, minutes there)
    cases = [("SU3 4^4", "SU3", (4, 4, 4, 4), 6.0, 16, True),
             ("SU3 8^4", "SU3", (8, 8, 8, 8), 6.0, 16, False),
             ("U1 16x16", "U1", (16, 16), 4.0, 64, True)]
    if smoke:
        cases = [("SU3 2^4", "SU3", (2, 2, 2, 2), 6.0, 2, True),
                 ("U1 4x4", "U1", (4, 4), 4.0, 4, True)]
    sections = [
        ("bandwidth", lambda: bandwidth(device, 8 if smoke else 1024)),
        ("dslash", lambda: dslash(device, [4] if smoke else [8, 16, 24],
                                  _copy_bandwidth(rows))),
        ("cg", lambda: cg(device, 4 if smoke else 16, 50 if smoke else 5000)),
        ("flows", lambda: flows(device, cases, 2 if smoke else 20, 1 if smoke else 3)),
        ("hybrid", lambda: hybrid(device, 4 if smoke else 16, 4 if smoke else 64,
                                  2 if smoke else 20)),
    ]
    rows: list[dict] = []
    failed = []
    t_start = time.perf_counter()
    for name, run in sections:
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        try:
            rows.extend(run())
        except Exception as exc:  # recorded: the other sections still run
            traceback.print_exc()
            rows.append({"section": name, "error": f"{type(exc).__name__}: {exc}"})
            failed.append(name)
        print(f"[{name}] {time.perf_counter() - t0:.1f} s", flush=True)
    from _results import write_results

    write_results(args.out, rows, check="gpu_check", device=str(device), smoke=smoke,
                  seconds=time.perf_counter() - t_start, failed_sections=failed,
                  roofline={"flops_per_site": FLOPS_PER_SITE, "reals_per_site": REALS_PER_SITE,
                            "bytes_per_site": {k: REALS_PER_SITE * v
                                               for k, v in REAL_BYTES.items()}})
    print(f"gpu_check: {len(sections) - len(failed)}/{len(sections)} sections in "
          f"{time.perf_counter() - t_start:.0f} s" + (f"; failed: {', '.join(failed)}"
                                                      if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
