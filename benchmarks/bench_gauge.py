"""Wilson gauge action and force throughput (sites per second) for SU(3).

Lattices 4^4, 8^4, 16^4; batch 1 and 16; float64 and float32; on the CPU and, when one is
present (or asked for with --device), on the GPU.  Prints a table and writes JSON.

On the CPU the native C++ gauge kernel (bridge/_native_gauge.py) is used when it builds (its
build time is printed); ``--native off`` sets ``QCD_BRIDGE_NATIVE=0`` (torch path), ``--native
compare`` times every configuration with both, alternating ``--reps`` times (interleaved, so both
saw the same machine state; best of each kept).

    python benchmarks/bench_gauge.py [--sizes 4 8 16] [--batches 1 16] [--device cuda]
                                     [--native auto|off|compare] [--reps 3]
                                     [--out benchmarks/results/gauge.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from _results import write_results

from bridge import _native_gauge
from bridge.gauge import loops, random_gauge, wilson_action, wilson_force
from bridge.lattice import Lattice


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, min_time: float = 0.3, max_reps: int = 50, rounds: int = 3) -> float:
    """Best over ``rounds`` of the mean time per call (robust against a loaded machine): process
    CPU time on the CPU (one thread: what the core spent, not the waits for other jobs on a
    shared machine), wall time on a GPU."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()  # warm-up
    _sync(device)
    best = float("inf")
    for _ in range(rounds):
        reps, t0 = 0, clock()
        while True:
            fn()
            reps += 1
            _sync(device)
            elapsed = clock() - t0
            if elapsed > min_time or reps >= max_reps:
                break
        best = min(best, elapsed / reps)
    return best


def _fresh_action(u: torch.Tensor) -> torch.Tensor:
    """The Wilson action computed from the links, not read from the plaquette-trace cache."""
    loops._TRACE_CACHE.clear()
    return wilson_action(u, 5.5)


def run(sizes, batches, devices, dtypes, max_elements: float, modes=(None,),
        reps: int = 1) -> list[dict]:
    rows = []
    for device in devices:
        for dtype in dtypes:
            for L in sizes:
                for batch in batches:
                    lat = Lattice((L, L, L, L))
                    if lat.volume * batch > max_elements:
                        print(f"skip {L}^4 x {batch}: above --max-sites {max_elements:g}")
                        continue
                    gen = torch.Generator(device=device).manual_seed(1)
                    u = random_gauge(lat, "SU3", batch, generator=gen, dtype=dtype, device=device)
                    sites = lat.volume * batch
                    # from scratch: the force leaves the plaquette traces in a cache that a
                    # repeated action on the same tensor would otherwise just read back
                    best = {m: [float("inf"), float("inf")] for m in modes}
                    for _ in range(reps):
                        for mode in modes:  # interleaved: native, torch, native, ...
                            if mode is not None:
                                os.environ[_native_gauge.ENV] = mode
                            t = best[mode]
                            t[0] = min(t[0], _time(lambda u=u: _fresh_action(u), device))
                            t[1] = min(t[1], _time(lambda u=u: wilson_force(u, 5.5), device))
                    for mode in modes:
                        t_action, t_force = best[mode]
                        if mode is not None:
                            os.environ[_native_gauge.ENV] = mode
                        row = {
                            "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                            "L": L, "batch": batch, "sites": sites,
                            "native": _native_gauge.usable(u),
                            "action_s": t_action, "force_s": t_force,
                            "action_sites_per_s": sites / t_action,
                            "force_sites_per_s": sites / t_force,
                        }
                        rows.append(row)
                        print(f"{row['device']:>6} {row['dtype']:>10} {L:>3}^4 x{batch:<3} "
                              f"native {str(row['native']):>5} "
                              f"action {row['action_sites_per_s']:10.3e} sites/s   "
                              f"force {row['force_sites_per_s']:10.3e} sites/s "
                              f"({t_force * 1e3:.3f} ms)")
                    del u
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--device", nargs="+", default=None,
                    help="devices (default: cpu, and cuda when available)")
    ap.add_argument("--dtypes", nargs="+", default=["complex128", "complex64"])
    ap.add_argument("--max-sites", type=float, default=2**20,
                    help="skip lattice x batch above this many sites (memory)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default="benchmarks/results/gauge.json")
    ap.add_argument("--native", default="auto", choices=["auto", "off", "compare"],
                    help="native C++ gauge kernel: as available (auto), torch path (off), or "
                         "both interleaved (compare)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions for --native compare")
    args = ap.parse_args()
    if args.native == "off":
        os.environ[_native_gauge.ENV] = "0"
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device(d) for d in (args.device or (
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])))]
    dtypes = [getattr(torch, d) for d in args.dtypes]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    if any(d.type == "cpu" for d in devices) and _native_gauge.available():
        print(f"native gauge kernel: built/loaded in {_native_gauge.build_seconds():.1f} s")
    modes = ("1", "0") if args.native == "compare" else (None,)
    reps = args.reps if args.native == "compare" else 1
    rows = run(args.sizes, args.batches, devices, dtypes, args.max_sites, modes, reps)
    write_results(args.out, rows, native_build_seconds=_native_gauge.build_seconds())


if __name__ == "__main__":
    main()
