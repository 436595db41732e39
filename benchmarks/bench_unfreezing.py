"""Topological unfreezing benchmark: plain HMC against the hybrid sampler at equal wall time, and
the flow-step throughput.

(a) default: 2D U(1) Wilson theory on ``L x L`` tori (``--L``, default 16) over ``--betas``
    (default 2..7).  Per (L, beta):

    * **HMC**: Omelyan 2MN integrator, trajectory length 1, the number of MD steps tuned
      automatically (smallest of 2, 3, 4, 5, 6, 8, 10, 12, 16, ... with acceptance
      >= ``--target-acc``, default 0.8, on short runs that also thermalise); tuning time is
      recorded, not counted.
    * **hybrid**: :func:`bridge.mcmc.compose.compose` of ``--hmc-per-cycle`` of the same tuned HMC
      trajectories and ``--flow-per-cycle`` independence-Metropolis flow steps
      (:func:`bridge.mcmc.flow_mh.flow_metropolis_kernel`), started from the thermalised HMC
      state.  The flow is trained per beta with :class:`bridge.flows.training.Trainer` for
      ``--train-seconds`` on ``--train-L`` (default: the chain's L; a model trained on a smaller
      L is applied to the larger lattice, the layers being translation equivariant), or loaded
      from ``--models DIR``
      (``DIR/u1_L{L}_b{beta}/checkpoint.pt``; freshly trained models are saved there).
      With ``--proposal analytic`` the proposal is instead
      :class:`bridge.flows.U1PlaquetteProposal` (the exact change of variables to plaquette
      angles of 2D U(1); nothing is trained, ``train_seconds`` = 0), results by default in
      ``benchmarks/results/unfreezing_analytic.json``.  With ``--u1-arch plaquette`` the
      trained flow is :class:`bridge.flows.PlaquetteFlow` (a learned plaquette density with the
      torus constraint built in; path-gradient estimator, lr 0.03, Adam eps 1e-8), results by
      default in ``benchmarks/results/unfreezing_plaquette.json``.

    Both samplers run ``--chains`` independent chains (one batch) for ``--seconds`` of wall time
    each.  The topological charge ``Q`` (geometric definition, rounded to the integer) is measured
    after every step (HMC: a trajectory; hybrid: a cycle); ``tau_int(Q)`` comes from the Gamma
    method (:func:`bridge.analysis.stats.gamma`, pyerrors, S = 2, chains as replicas) in units of
    steps.  It is **resolved** when every chain is at least ``--resolve-factor`` (default 50)
    tau_int long and every chain changed Q at least ``--min-tunnel`` times; otherwise the Gamma
    value is reported as a lower bound (a short chain underestimates tau_int).  As a
    cross-check independent of the window, ``tau_tunnel = 2 V chi_t / r`` with ``r`` the
    observed rate of changes of Q per step (an Ornstein-Uhlenbeck model of Q with unit jumps)
    is given; without any change of Q, ``r < 3 / (N chains)`` (95%) gives the bound
    ``tau_tunnel > 2 V chi_t N chains / 3``.
    ``chi_t = <Q^2> / V`` (Gamma-method error) is compared with the exact finite-volume value
    (:func:`bridge.exact.u1_2d_topological_susceptibility`) and the infinite-volume value
    ``<phi^2> / (4 pi^2)``, ``phi ~ exp(beta cos phi)``; ``<cos P>`` with
    :func:`bridge.exact.u1_2d_plaquette`.
    Cost per independent sample of Q: ``(wall seconds per step) * 2 tau_int`` per chain (the
    wall time of the batch divided by the number of chains); "amortised" adds the training
    time spread over the independent samples of this run.

(b) ``--su3``: the same for 4D SU(3) on ``--su3-L``^4 (default 4) at ``--su3-beta`` (default
    6.0), Q = clover charge after Wilson flow to ``--su3-flow-time`` (default 0.5, RK3 step
    0.05; 0: none; measured outside the clock);
    no exact value (chi_t from each sampler only).

(c) ``--throughput``: flow proposals per second (``sample`` + action, no gradient) against the
    batch size for the 2D U(1) model on 16x16 and a 4D SU(3) model on 4^4, on the CPU and, when
    CUDA is present, on the GPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_unfreezing.py --L 8 16 --betas 2 4 6 \\
        --seconds 120 --train-seconds 180 --train-L 8 --models /tmp/unfreezing_models
    OMP_NUM_THREADS=1 python benchmarks/bench_unfreezing.py --su3 --seconds 120
    OMP_NUM_THREADS=1 python benchmarks/bench_unfreezing.py --throughput

Results: ``benchmarks/results/unfreezing.json`` (+ ``unfreezing.png``, tau_int against beta),
``unfreezing_su3.json``, ``unfreezing_throughput.json``; with ``--proposal analytic``
``unfreezing_analytic.json`` (+ ``.png``), with ``--u1-arch plaquette``
``unfreezing_plaquette.json`` (+ ``.png``) (through ``benchmarks/_results.py``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's bridge
from _results import write_results  # noqa: E402

from bridge.analysis.stats import gamma
from bridge.exact import u1_2d_plaquette, u1_2d_topological_susceptibility
from bridge.flows import U1PlaquetteProposal, make_flow
from bridge.flows.training import TrainConfig, Trainer
from bridge.gauge import plaquette_traces, unit_gauge, wilson_action
from bridge.jobs.scaling import analyse_charge as analyse_q
from bridge.jobs.scaling import make_hmc, tune_hmc
from bridge.lattice import Lattice
from bridge.mcmc.compose import compose, run_chain
from bridge.mcmc.flow_mh import flow_metropolis_kernel
from bridge.mcmc.monomials import GaugeMonomial
from bridge.mcmc.reweighting import ess, imh_acceptance
from bridge.observables import flowed_topological_charge
from bridge.observables.field_strength import geometric_charge_u1
from bridge.rng import generator, rng_key

RESULTS = Path(__file__).resolve().parent / "results"
U1_ARCH = {"n_layers": 16, "k": 8, "hidden": (8, 8)}
# --u1-arch plaquette: the constrained plaquette flow, trained with the path-gradient estimator
U1_PLAQUETTE = {"arch": "plaquette"}
U1_PLAQUETTE_TRAIN = {"estimator": "path", "adam_eps": 1e-8}
SU3_ARCH = {"n_layers": 16, "k": 4, "hidden": (8,), "period": 2}
# --su3-arch residual: one cycle of residual staple layers (lr 0.02, batch 16, Adam eps 1e-8)
SU3_RESIDUAL = {"arch": "residual"}


# -- exact values -----------------------------------------------------------------------------
def chi_t_infinite(beta: float) -> float:
    """Infinite-volume 2D U(1) ``chi_t = <phi^2> / (4 pi^2)``, ``phi ~ exp(beta cos phi)`` on
    ``(-pi, pi]`` (Gauss-Legendre, exponentially convergent)."""
    x, w = np.polynomial.legendre.leggauss(400)
    phi, w = math.pi * x, math.pi * w
    p = np.exp(beta * (np.cos(phi) - 1.0))
    return float((w * p * phi**2).sum() / (w * p).sum() / (4 * math.pi**2))


# -- samplers ---------------------------------------------------------------------------------
class Rec(NamedTuple):
    """What the benchmark keeps of a step's :class:`~bridge.mcmc.base.StepInfo` (keeping the
    records themselves, with their HMC details, costs gigabytes over long runs)."""

    kernel: str
    acc: float  # fraction of the chains that accepted
    nonfinite: int


def _slim(infos) -> list[Rec]:
    return [Rec(i.kernel, float(i.accepted.double().mean()), int(i.nonfinite)) for i in infos]


def _acc(recs: list[Rec], kernel: str) -> float | None:
    a = [r.acc for r in recs if r.kernel == kernel]
    return float(np.mean(a)) if a else None


def run_timed(kernel, state, seconds: float, measure, min_steps: int = 20,
              max_steps: int | None = None, exclude_measure: bool = False):
    """Step ``kernel`` (through :func:`run_chain`, one step at a time) until ``seconds`` of wall
    time have passed (at least ``min_steps`` steps); ``(state, records (:class:`Rec`), obs
    [n, chains, k], wall seconds, cpu seconds, wall seconds spent in measure)``: the wall time
    includes the measurements; with ``exclude_measure`` the clock that stops the run does not
    count them."""
    infos, obs = [], []
    spent = [0.0]

    def timed_measure(u):
        t = time.perf_counter()
        out = measure(u)
        spent[0] += time.perf_counter() - t
        return out

    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    while (n < min_steps or time.perf_counter() - t0 - exclude_measure * spent[0] < seconds) and (
            max_steps is None or n < max_steps):
        state, inf, o = run_chain(kernel, state, 1, timed_measure)
        infos.extend(_slim(inf))
        obs.append(o)
        n += 1
    return (state, infos, torch.cat(obs), time.perf_counter() - t0,
            time.process_time() - c0, spent[0])


# -- analysis ---------------------------------------------------------------------------------
def _gamma_mean(x: np.ndarray) -> tuple[float, float | None]:
    try:
        g = gamma([x[:, c].astype(float) for c in range(x.shape[1])])
        return g.value, g.error
    except Exception:  # noqa: BLE001
        return float(x.mean()), None


# -- flows ------------------------------------------------------------------------------------
def _eval_flow(model, nrow, beta: float, n: int, seed: int, chunk: int = 128) -> dict:
    lws = []
    with torch.no_grad():
        for i, s in enumerate(range(0, n, chunk)):
            u, lq = model.sample(min(chunk, n - s), nrow, generator=generator(rng_key(seed, i)))
            lws.append(-wilson_action(u, beta) - lq)
    lw = torch.cat(lws)
    return {"ess": ess(lw), "imh_acceptance": imh_acceptance(lw, generator(seed)), "n": n}


def train_flow(group: str, nd: int, nrow, beta: float, seconds: float, *, arch: dict,
               batch: int = 64, lr: float = 3e-3, seed: int = 1,
               models: str | None = None, tag: str = "",
               init_from: str | None = None,
               train_kw: dict | None = None) -> tuple[Any, dict]:
    """A flow for ``beta`` on ``nrow``: loaded from ``models/tag/checkpoint.pt`` when present,
    else trained by reverse KL for ``seconds`` (cosine schedule over the steps a probe
    predicts) and saved there; ``init_from``: a checkpoint (same architecture, e.g. trained at a
    smaller beta: a curriculum) whose weights start the training, its training seconds added
    to ``train_seconds``; ``train_kw``: further :class:`TrainConfig` fields (estimator, Adam
    eps).  Returns ``(model, info)`` with the training seconds."""
    train_kw = dict(train_kw or {})
    from bridge.flows.checkpoints import load_model

    prior_s, prior = 0.0, None
    if init_from and not (models and (Path(models) / tag / "checkpoint.pt").exists()):
        p = Path(init_from)
        p = p / "checkpoint.pt" if p.is_dir() else p
        prior = load_model(p)[0]
        st = torch.load(p, map_location="cpu", weights_only=False)
        prior_s = st.get("bench_train_seconds")
        if prior_s is None:
            prior_s = float(sum(h.get("seconds", 0.0) for h in st.get("history", [])))

    ck = Path(models) / tag / "checkpoint.pt" if models else None
    if ck is not None and ck.exists():
        model, meta = load_model(ck)
        state = torch.load(ck, map_location="cpu", weights_only=False)
        hist = state.get("history", [])
        total = state.get("bench_train_seconds")
        if total is None:  # a checkpoint of another run: the optimisation steps' time
            total = float(sum(h.get("seconds", 0.0) for h in hist))
        return model, {"loaded": str(ck), "steps": int(state.get("step", 0)),
                       "train_seconds": float(total),
                       "prior_train_seconds": float(state.get("prior_train_seconds", 0.0)),
                       "train_nrow": list(meta["train"]["nrow"]), "model": meta["model"]}
    torch.manual_seed(seed)
    model = make_flow(group, nd, **arch)
    if prior is not None:
        model.load_state_dict(prior.state_dict())
    t0 = time.perf_counter()
    probe = Trainer(make_flow(group, nd, **arch), TrainConfig(nrow=nrow, beta=beta, batch=batch,
                                                              **train_kw))
    probe.train(1)
    t1 = time.perf_counter()
    probe.train(2)
    per_step = (time.perf_counter() - t1) / 2
    probe_s = time.perf_counter() - t0
    total = max(int(max(seconds - probe_s, 0.0) / per_step), 5)
    cfg = TrainConfig(nrow=nrow, beta=beta, batch=batch, lr=lr, schedule="cosine",
                      total_steps=total, lr_min=lr / 10, seed=seed, **train_kw)
    tr = Trainer(model, cfg)
    tr.train(total, time_budget=max(seconds - probe_s, 1.0))
    train_s = time.perf_counter() - t0
    if ck is not None:
        tr.save(ck)
        # the wall time of this training (probe included) and of the curriculum before it
        st = torch.load(ck, map_location="cpu", weights_only=False)
        st["bench_train_seconds"], st["prior_train_seconds"] = train_s + prior_s, prior_s
        torch.save(st, ck)
    hist = tr.history[-20:]
    return model, {"loaded": None, "steps": tr.step_count, "planned_steps": total,
                   "train_seconds": train_s + prior_s, "prior_train_seconds": prior_s,
                   "init_from": init_from, "train_nrow": list(nrow), "model": model.config,
                   "batch": batch, "lr": lr, "schedule": "cosine", **train_kw,
                   "final_batch_ess_mean": float(np.mean([h["ess"] for h in hist]))}


# -- one (L, beta) point of 2D U(1) -----------------------------------------------------------
def u1_point(L: int, beta: float, model, train_info: dict, args, seed: int = 0) -> list[dict]:
    lat = Lattice((L, L))
    vol = lat.volume
    chi_fv = u1_2d_topological_susceptibility(beta, L)
    chi_inf = chi_t_infinite(beta)
    plaq_exact = u1_2d_plaquette(beta, L)
    act = GaugeMonomial(beta).action

    def measure(u):
        q = torch.round(geometric_charge_u1(u))
        p = plaquette_traces(u).real.flatten(1).mean(1)
        return torch.stack([q, p], 1)

    u0 = unit_gauge(lat, "U1", args.chains, dtype=torch.float64)
    tune = tune_hmc(u0, beta, target=args.target_acc, trajs=args.tune_trajs, seed=seed)
    n_md = tune["n_steps"]
    common = {"group": "U(1)", "L": L, "volume": vol, "beta": beta, "chains": args.chains,
              "md_steps": n_md, "tau": 1.0, "integrator": "LCM_STS_MIN_NORM_2",
              "tune_acceptance": tune["acceptance"], "tune_seconds": tune["seconds"],
              "chi_t_exact_fv": chi_fv, "chi_t_exact_inf": chi_inf, "plaq_exact": plaq_exact}
    rows = []
    samplers = [("hmc", None)]
    if model is not None:
        fk = flow_metropolis_kernel(model, act, batch_size=args.flow_batch)
        samplers.append(("hybrid", compose([(make_hmc(beta, n_md), args.hmc_per_cycle),
                                            (fk, args.flow_per_cycle)])))
    for name, kernel in samplers:
        if kernel is None:
            kernel = make_hmc(beta, n_md)
        state = kernel.init(tune["U"], seed=rng_key(seed, 11, len(rows)))
        la = os.getloadavg()[0]
        state, infos, obs, wall, cpu, meas = run_timed(kernel, state, args.seconds, measure,
                                                       max_steps=args.max_steps)
        q = obs[..., 0].numpy()
        n = q.shape[0]
        a = analyse_q(q, vol, chi_fv, resolve_factor=args.resolve_factor,
                      min_tunnel=args.min_tunnel)
        plaq, plaq_err = _gamma_mean(obs[..., 1].numpy())
        sec_step = wall / n / args.chains
        cost = sec_step * 2 * a["tau_used"]
        indep = n * args.chains / (2 * a["tau_used"])  # independent samples, all chains
        train_s = train_info.get("train_seconds", 0.0) if name == "hybrid" else 0.0
        row = {**common, "sampler": name, "steps": n,
               "proposal": (train_info.get("proposal", "flow") if name == "hybrid" else None),
               "wall_seconds": wall,
               "cpu_seconds": cpu, "measure_seconds": meas,
               "seconds_per_step_per_chain": sec_step,
               "loadavg_start": la, "loadavg_end": os.getloadavg()[0],
               "acc_hmc": _acc(infos, "hmc"), "acc_flow": _acc(infos, "flow"),
               "flow_nonfinite": int(sum(i.nonfinite for i in infos)),
               "plaq": plaq, "plaq_error": plaq_err, **a,
               "cost_per_indep": cost, "cost_is_lower_bound": a["tau_used_kind"] != "gamma",
               "cost_per_indep_amortised": (wall + train_s) / indep,
               "train_seconds": train_s}
        if name == "hybrid":
            row.update({"hmc_per_cycle": args.hmc_per_cycle,
                        "flow_per_cycle": args.flow_per_cycle, "flow_batch": args.flow_batch,
                        "train": {k: v for k, v in train_info.items() if k != "model"},
                        "flow_model": train_info.get("model")})
        rows.append(row)
        _print_row(row)
    return rows


def _fmt(x, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


HEADER = (f"{'L':>3} {'beta':>4} {'sampler':>7} {'md':>3} {'steps':>6} {'ms/st':>7} "
          f"{'accH':>5} {'accF':>6} {'dQ':>5} {'tau_int(Q)':>14} {'tau_tun':>9} "
          f"{'chi_t':>16} {'exact fv':>8} {'cost s':>10} {'amort s':>9}")


def _print_row(r: dict) -> None:
    tau = r["tau_used"]
    mark = {"gamma": "", "gamma_lower": ">", "tunnel_lower": ">>"}[r["tau_used_kind"]]
    tau_s = f"{mark}{tau:.3g}" + (f"({r['tau_int_error']:.2g})" if r["tau_used_kind"] == "gamma"
                                  else "")
    tt = ("> " if r["tau_tunnel_is_bound"] else "") + f"{r['tau_tunnel']:.3g}"
    chi = f"{r['chi_t']:.4f}" + (f"({r['chi_t_error']:.4f})" if r["chi_t_error"] else "")
    cost = ("> " if r["cost_is_lower_bound"] else "") + f"{r['cost_per_indep']:.3g}"
    print(f"{r['L']:3d} {r['beta']:4g} {r['sampler']:>7} {r['md_steps']:3d} {r['steps']:6d} "
          f"{1e3 * r['seconds_per_step_per_chain']:7.2f} {_fmt(r['acc_hmc'], '.2f'):>5} "
          f"{_fmt(r['acc_flow'], '.3f'):>6} {r['q_changes']:5d} {tau_s:>14} {tt:>9} "
          f"{chi:>16} {_fmt(r.get('chi_t_exact_fv'), '.4f'):>8} {cost:>10} "
          f"{r['cost_per_indep_amortised']:9.3g}", flush=True)


def cost_ratio(h: dict, y: dict) -> str:
    """HMC / hybrid cost per independent sample, excluding and including training, with what
    the lower bounds allow one to say."""
    if y["cost_is_lower_bound"]:
        return "undetermined (the hybrid's tau_int is only a lower bound)"
    sign = ">= " if h["cost_is_lower_bound"] else ""
    return (f"{sign}{h['cost_per_indep'] / y['cost_per_indep']:.3g} (excl. training), "
            f"{sign}{h['cost_per_indep_amortised'] / y['cost_per_indep_amortised']:.3g} "
            f"(amortised)")


def plot(rows: list[dict], path: Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for L in sorted({r["L"] for r in rows}):
        for s, mk in (("hmc", "o"), ("hybrid", "s")):
            rr = sorted([r for r in rows if r["L"] == L and r["sampler"] == s],
                        key=lambda r: r["beta"])
            if not rr:
                continue
            b = [r["beta"] for r in rr]
            t = [r["tau_used"] for r in rr]
            line, = ax.plot(b, t, marker=mk, label=f"{s}, L = {L}",
                            ls="-" if s == "hmc" else "--")
            for r in rr:
                if r["tau_used_kind"] != "gamma":  # lower bound: arrow up
                    ax.annotate("", xy=(r["beta"], r["tau_used"] * 2.5),
                                xytext=(r["beta"], r["tau_used"]),
                                arrowprops={"arrowstyle": "->", "color": line.get_color()})
    ax.set_yscale("log")
    top = max((r["tau_used"] for r in rows), default=1.0)
    ax.set_ylim(top=3.5 * top)  # room for the lower-bound arrows
    ax.set_xlabel("beta")
    ax.set_ylabel("tau_int(Q) [steps; hybrid: cycles]  (arrow: lower bound)")
    ax.set_title(title or "2D U(1): HMC vs hybrid (flow + HMC), equal wall time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def run_u1(args) -> list[dict]:
    print(HEADER)
    rows: list[dict] = []
    models: dict[tuple[int, float], tuple[Any, dict]] = {}
    for beta in args.betas:
        for L in args.L:
            model, info = None, {}
            if not args.no_flow and args.proposal == "analytic":
                model = U1PlaquetteProposal(beta)
                info = {"proposal": "analytic", "loaded": None, "steps": 0,
                        "train_seconds": 0.0, "model": model.config,
                        "eval_chain_L": _eval_flow(model, (L, L), beta, args.eval_n, 124)}
                print(f"# analytic plaquette proposal beta {beta:g} on {L}x{L}: ESS "
                      f"{info['eval_chain_L']['ess']:.3f}, IMH acceptance "
                      f"{info['eval_chain_L']['imh_acceptance']:.3f}", flush=True)
            elif not args.no_flow:
                tl = args.train_L or L
                key = (tl, beta)
                if key not in models:
                    t0 = time.perf_counter()
                    plaq = args.u1_arch == "plaquette"
                    models[key] = train_flow(
                        "U1", 2, (tl, tl), beta, args.train_seconds,
                        arch=U1_PLAQUETTE if plaq else U1_ARCH,
                        batch=args.train_batch, lr=args.lr or (0.03 if plaq else 3e-3),
                        models=args.models,
                        tag=f"u1{'_plaquette' if plaq else ''}_L{tl}_b{beta:g}",
                        init_from=args.init_from,
                        train_kw=U1_PLAQUETTE_TRAIN if plaq else None)
                    m, inf = models[key]
                    inf["eval_train_L"] = _eval_flow(m, (tl, tl), beta, args.eval_n, 123)
                    print(f"# flow beta {beta:g} on {tl}x{tl}: {inf['steps']} steps, "
                          f"{inf['train_seconds']:.0f} s training"
                          f"{' (loaded)' if inf['loaded'] else ''}; ESS "
                          f"{inf['eval_train_L']['ess']:.3f} ({time.perf_counter() - t0:.0f} s)",
                          flush=True)
                model, info = models[key]
                info = dict(info)
                if tl != L:
                    info["eval_chain_L"] = _eval_flow(model, (L, L), beta, args.eval_n, 124)
                else:
                    info["eval_chain_L"] = info["eval_train_L"]
            rows.extend(u1_point(L, beta, model, info, args))
    return rows


# -- 4D SU(3) ---------------------------------------------------------------------------------
def run_su3(args) -> list[dict]:
    L, beta = args.su3_L, args.su3_beta
    lat = Lattice((L,) * 4)
    act = GaugeMonomial(beta).action

    def measure(u):
        q = flowed_topological_charge(u, flow_time=args.su3_flow_time, eps=0.05)
        p = plaquette_traces(u).real.flatten(1).mean(1)  # Re Tr P / 3
        return torch.stack([q, p], 1)

    model, info = None, {}
    if not args.no_flow:
        res = args.su3_arch == "residual"
        model, info = train_flow("SU3", 4, (L,) * 4, beta, args.train_seconds,
                                 arch=SU3_RESIDUAL if res else SU3_ARCH, batch=16,
                                 lr=args.lr or (0.02 if res else 3e-3), models=args.models,
                                 tag=f"su3{'_residual' if res else ''}_L{L}_b{beta:g}",
                                 train_kw={"adam_eps": 1e-8} if res else None)
        info["eval_chain_L"] = _eval_flow(model, (L,) * 4, beta, min(args.eval_n, 128), 5, 16)
        print(f"# SU(3) flow: {info['steps']} steps, {info['train_seconds']:.0f} s, ESS "
              f"{info['eval_chain_L']['ess']:.4f}", flush=True)
    u0 = unit_gauge(lat, "SU3", args.chains, dtype=torch.float64)
    tune = tune_hmc(u0, beta, target=args.target_acc, trajs=args.tune_trajs)
    n_md = tune["n_steps"]
    rows = []
    samplers = [("hmc", make_hmc(beta, n_md))]
    if model is not None:
        fk = flow_metropolis_kernel(model, act, batch_size=args.flow_batch)
        samplers.append(("hybrid", compose([(make_hmc(beta, n_md), args.hmc_per_cycle),
                                            (fk, args.flow_per_cycle)])))
    print(f"# SU(3) {L}^4 beta {beta:g}: {n_md} MD steps (acc {tune['acceptance']:.2f})")
    for name, kernel in samplers:
        state = kernel.init(tune["U"], seed=rng_key(3, len(rows)))
        # the flowed charge costs more than a trajectory here: measure it outside the clock
        state, infos, obs, wall, cpu, meas = run_timed(kernel, state, args.seconds, measure,
                                                       min_steps=10, max_steps=args.max_steps,
                                                       exclude_measure=True)
        qf = obs[..., 0].numpy()
        n = qf.shape[0]
        wall = wall - meas
        reps = [qf[:, c] for c in range(args.chains)]
        row: dict[str, Any] = {"group": "SU(3)", "L": L, "beta": beta, "sampler": name,
                               "chains": args.chains, "md_steps": n_md, "steps": n,
                               "flow_time": args.su3_flow_time, "wall_seconds": wall,
                               "measure_seconds_excluded": meas,
                               "cpu_seconds": cpu, "acc_hmc": _acc(infos, "hmc"),
                               "acc_flow": _acc(infos, "flow"),
                               "seconds_per_step_per_chain": wall / n / args.chains,
                               "q_mean": float(qf.mean()), "q2_mean": float((qf ** 2).mean())}
        try:
            g = gamma(reps)
            row.update({"tau_int": g.tau_int, "tau_int_error": g.tau_int_error,
                        "resolved": bool(n >= args.resolve_factor * g.tau_int)})
            row["cost_per_indep"] = row["seconds_per_step_per_chain"] * 2 * g.tau_int
        except Exception as exc:  # noqa: BLE001
            row.update({"tau_int": None, "resolved": False, "gamma_error": str(exc),
                        "cost_per_indep": None})
        row["plaq"], row["plaq_error"] = _gamma_mean(obs[..., 1].numpy())
        if name == "hybrid":
            row["train"] = {k: v for k, v in info.items() if k != "model"}
            row["train_seconds"] = info.get("train_seconds")
        rows.append(row)
        print(f"  {name:>7}: {n} steps, {1e3 * row['seconds_per_step_per_chain']:.1f} ms/step, "
              f"acc hmc {_fmt(row['acc_hmc'], '.2f')} flow {_fmt(row['acc_flow'], '.3f')}, "
              f"<Q^2> {row['q2_mean']:.3f}, tau_int(Q) {_fmt(row['tau_int'])}"
              f"{'' if row['resolved'] else ' (unresolved: lower bound)'}", flush=True)
    return rows


# -- flow-step throughput ---------------------------------------------------------------------
def throughput(batches=(1, 4, 16, 64, 256), reps: int = 3, seconds_cap: float = 20.0) -> list:
    """Proposals per second (``sample`` + Wilson action, no gradient) against the batch size."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cases = [("U(1) 2D 16x16", "U1", 2, (16, 16), U1_ARCH, 4.0),
             ("U(1) 2D 16x16 plaquette", "U1", 2, (16, 16), U1_PLAQUETTE, 6.0),
             ("SU(3) 4D 4^4", "SU3", 4, (4, 4, 4, 4), SU3_ARCH, 6.0),
             ("SU(3) 4D 4^4 residual", "SU3", 4, (4, 4, 4, 4), SU3_RESIDUAL, 6.0)]
    rows = []
    for label, group, nd, nrow, arch, beta in cases:
        for dev in devices:
            torch.manual_seed(0)
            model = make_flow(group, nd, **arch).to(dev)
            if arch.get("arch") == "plaquette":
                model.set_wilson(beta)  # the Newton inversions of a peaked trained density
            elif arch.get("arch") == "residual":
                with torch.no_grad():  # c_k = -0.044: the size of a trained model's
                    for p in model.parameters():
                        p.fill_(-0.3)
            for b in batches:
                if group == "SU3" and dev == "cpu" and b > 64:
                    continue
                gen = torch.Generator(device=dev).manual_seed(b)
                with torch.no_grad():
                    model.sample(1, nrow, generator=gen, device=dev)
                    best, t_all = float("inf"), time.perf_counter()
                    for _ in range(reps):
                        if dev == "cuda":
                            torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        u, lq = model.sample(b, nrow, generator=gen, device=dev)
                        wilson_action(u, beta)
                        if dev == "cuda":
                            torch.cuda.synchronize()
                        best = min(best, time.perf_counter() - t0)
                        if time.perf_counter() - t_all > seconds_cap:
                            break
                r = {"case": label, "device": dev, "batch": b, "seconds_per_call": best,
                     "proposals_per_second": b / best, "model": model.config}
                rows.append(r)
                print(f"  {label:14} {dev:4} batch {b:4d}: {b / best:9.1f} proposals/s "
                      f"({1e3 * best:.1f} ms per call)", flush=True)
    return rows


# -- main -------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--L", type=int, nargs="+", default=[16], help="2D lattice sizes")
    ap.add_argument("--betas", type=float, nargs="+", default=[2, 3, 4, 5, 6, 7])
    ap.add_argument("--seconds", type=float, default=300.0, help="wall seconds per sampler")
    ap.add_argument("--max-steps", type=int, default=None, help="cap on steps per sampler")
    ap.add_argument("--chains", type=int, default=4, help="independent chains per sampler")
    ap.add_argument("--target-acc", type=float, default=0.8, help="HMC acceptance to tune to")
    ap.add_argument("--tune-trajs", type=int, default=20, help="trajectories per tuning try")
    ap.add_argument("--hmc-per-cycle", type=int, default=1, help="hybrid: HMC per cycle")
    ap.add_argument("--flow-per-cycle", type=int, default=1, help="hybrid: flow steps/cycle")
    ap.add_argument("--flow-batch", type=int, default=16, help="proposals per chain per block")
    ap.add_argument("--train-seconds", type=float, default=300.0, help="training per flow")
    ap.add_argument("--train-L", type=int, default=None, help="train on this L (default: L)")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None,
                    help="Adam learning rate (default 3e-3; 0.03 with --u1-arch plaquette)")
    ap.add_argument("--u1-arch", choices=("coupling", "plaquette"), default="coupling",
                    help="2D U(1) flow: 16 coupling layers, or the constrained plaquette flow "
                         "(bridge.flows.PlaquetteFlow; path-gradient training, lr 0.03)")
    ap.add_argument("--eval-n", type=int, default=1024, help="samples of the ESS evaluation")
    ap.add_argument("--models", default=None, help="directory to load/save flows (not in git)")
    ap.add_argument("--init-from", default=None,
                    help="checkpoint whose weights start the training (curriculum in beta)")
    ap.add_argument("--no-flow", action="store_true", help="HMC only")
    ap.add_argument("--proposal", choices=("flow", "analytic"), default="flow",
                    help="hybrid proposal: a trained flow, or the exact plaquette-variable "
                         "proposal of 2D U(1) (no training)")
    ap.add_argument("--resolve-factor", type=float, default=50.0)
    ap.add_argument("--min-tunnel", type=int, default=2)
    ap.add_argument("--su3", action="store_true", help="run the 4D SU(3) part instead")
    ap.add_argument("--su3-L", type=int, default=4)
    ap.add_argument("--su3-beta", type=float, default=6.0)
    ap.add_argument("--su3-flow-time", type=float, default=0.5)
    ap.add_argument("--su3-arch", choices=("coupling", "residual"), default="coupling",
                    help="4D SU(3) flow: 16 coupling layers or one cycle of residual staple "
                         "layers (lr 0.02, Adam eps 1e-8)")
    ap.add_argument("--throughput", action="store_true", help="run the throughput part instead")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/...)")
    ap.add_argument("--plot", default=None, help="PNG path (default next to the JSON)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cmd = "python benchmarks/bench_unfreezing.py " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv)
    la0 = os.getloadavg()
    if args.throughput:
        rows = throughput()
        write_results(args.out or RESULTS / "unfreezing_throughput.json", rows, command=cmd,
                      loadavg_start=la0, loadavg_end=os.getloadavg())
        return 0
    if args.su3:
        rows = run_su3(args)
        write_results(args.out or RESULTS / "unfreezing_su3.json", rows, command=cmd,
                      loadavg_start=la0, loadavg_end=os.getloadavg())
        return 0
    rows = run_u1(args)
    default = ("unfreezing_analytic.json" if args.proposal == "analytic" else
               "unfreezing_plaquette.json" if args.u1_arch == "plaquette" else "unfreezing.json")
    out = Path(args.out or RESULTS / default)
    write_results(out, rows, command=cmd, loadavg_start=la0, loadavg_end=os.getloadavg())
    plot(rows, Path(args.plot) if args.plot else out.with_suffix(".png"),
         title=("2D U(1): HMC vs hybrid (analytic plaquette proposal + HMC)"
                if args.proposal == "analytic" else
                "2D U(1): HMC vs hybrid (trained plaquette flow + HMC)"
                if args.u1_arch == "plaquette" else None))
    print("\n" + HEADER)
    for r in rows:
        _print_row(r)
    for L in args.L:
        for beta in args.betas:
            h = [r for r in rows if (r["L"], r["beta"], r["sampler"]) == (L, beta, "hmc")]
            y = [r for r in rows if (r["L"], r["beta"], r["sampler"]) == (L, beta, "hybrid")]
            if h and y:
                print(f"L {L} beta {beta:g}: cost ratio HMC / hybrid {cost_ratio(h[0], y[0])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
