"""Hybrid Markov chains of ``qcd-bridge chain``: flow-proposal Metropolis steps interleaved with
HMC trajectories, run in batches and across ranks, with per-step records, observables, fields,
checkpoint/resume bit for bit and a progress bar.

The kernels are those of :mod:`bridge.mcmc` (independence Metropolis with flow proposals,
Tierney, Ann. Stat. 22 (1994) 1701, arXiv:2101.08176 sec. 3.4; HMC, Duane et al., Phys. Lett.
B195 (1987) 216), composed in a fixed order (``schedule "hmc:1,flow:4"``: one HMC trajectory,
then four flow steps, per *cycle*) or mixed with fixed probabilities (``mixture
"hmc:0.3,flow:0.7"``: one randomly chosen kernel step per cycle).  Each kernel leaves
``exp(-S)/Z`` invariant, so the chain is exact whatever the quality of the flow.

Settings (:class:`ChainSettings`): defaults, then an optional JSON file (keys as the field
names), then the options given.  With a model (a ``qcd-bridge train`` run directory or
checkpoint) the group, lattice and coupling default to the model's; giving other values is an
error naming both.

Output (``out``; with ``WORLD_SIZE > 1`` under torchrun each rank ``r`` writes
``chain.rank<r>.h5`` and ``checkpoint.rank<r>.pt``)::

    OUT/config.json      the resolved settings
    OUT/chain.h5         the chain file (layout: :mod:`bridge.io.chain_writer`)
    OUT/cfg/chain<g>_cfg_<cycle>.lime   ILDG files of 4D SU(3) fields (Chroma's naming)
    OUT/checkpoint.pt    the ChainState (torch.save, atomic rename), the cycle and record counts
    OUT/summary.json     acceptance per kernel, plaquette, topological charge, tau_int (rank 0)

``qcd-bridge validate`` reads ``chain.h5`` directly, one replica per chain, skipping the first
``therm`` cycles.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..errors import ConfigError
from ..flows.checkpoints import GROUPS
from ..io.chain_writer import ChainFile
from .chain_models import ANALYTIC, model_fingerprint, resolve_model
from .chain_stats import measure, observable_names, summarize

__all__ = [
    "KERNELS", "ANALYTIC", "ChainSettings", "chain_settings", "parse_schedule", "resolve_model",
    "build_kernel", "model_fingerprint", "run_chains",
]

CHECKPOINT_FORMAT = "qcd-bridge-chain-checkpoint"
KERNELS = ("hmc", "flow", "nemcmc")


@dataclass
class ChainSettings:
    """The settings of a chain run (the keys of its JSON file and ``config.json``)."""

    model: str | None = None
    group: str = "u1"
    nrow: list[int] = field(default_factory=lambda: [8, 8])
    beta: float = 2.0
    schedule: str | None = None
    mixture: str | None = None
    tau: float = 1.0
    md_steps: int = 10
    integrator: str = "LCM_STS_LEAPFROG"
    flow_batch: int = 16
    chains: int = 4
    steps: int = 100
    therm: int = 0
    start: str = "hot"
    seed: int = 0
    out: str = "chain-run"
    checkpoint_every: int = 50
    save_every: int = 0
    polyakov: bool = False
    device: str = "cpu"
    precision: int = 64
    kappa: float | None = None
    c_sw: float = 0.0
    pf_draws: int = 16
    prior_steps: int = 1  # NE-MCMC: updates of the prior chain between proposals
    model_nrow: list[int] | None = None  # the model's training lattice when it differs

    # settings that may change on resume (everything else defines the chain)
    MUTABLE = frozenset({"steps", "checkpoint_every", "save_every", "device", "out", "therm"})

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def plan_text(self) -> str:
        """The schedule or mixture as given, or the default (``hmc:1,flow:4`` with a model,
        ``hmc:1`` without)."""
        if self.mixture is not None:
            return str(self.mixture)
        return str(self.schedule or ("hmc:1,flow:4" if self.model else "hmc:1"))

    def kernel_plan(self) -> tuple[list[tuple[str, float]], bool]:
        """The parsed schedule or mixture and whether it is a mixture."""
        if self.mixture is not None:
            return parse_schedule(self.mixture, what="--mixture", counts=False), True
        return parse_schedule(self.plan_text(), what="--schedule"), False


# -- settings ---------------------------------------------------------------------------------
def parse_schedule(text: str, *, what: str = "--schedule",
                   counts: bool = True) -> list[tuple[str, float]]:
    """``"hmc:1,flow:4"`` -> ``[("hmc", 1), ("flow", 4)]``.  ``counts``: entries are
    non-negative integers with a positive sum (a composition); otherwise non-negative
    probabilities with a positive sum (a mixture)."""
    out: list[tuple[str, float]] = []
    kind = "COUNT" if counts else "PROBABILITY"
    for part in str(text).split(","):
        name, sep, num = part.strip().partition(":")
        name = name.strip().lower()
        try:
            val = float(num) if sep else math.nan
        except ValueError:
            val = math.nan
        ok = name in KERNELS and math.isfinite(val) and val >= 0
        if counts and ok:
            ok = val == int(val)
        if not ok:
            raise ConfigError(
                f"{what} {text!r}: expected comma-separated KERNEL:{kind} entries with KERNEL "
                f"one of {', '.join(KERNELS)} and a non-negative "
                f"{'integer' if counts else 'number'}, got {part.strip()!r}")
        out.append((name, int(val) if counts else val))
    if sum(v for _, v in out) <= 0:
        raise ConfigError(f"{what} {text!r}: the {kind.lower()}s must have a positive sum")
    return out


def _read_json(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config {path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - set(ChainSettings.keys())
    if unknown:
        raise ConfigError(f"config {path}: unknown keys {sorted(unknown)}; expected some of "
                          f"{sorted(ChainSettings.keys())}")
    return data


def chain_settings(config: str | os.PathLike[str] | None = None, *,
                   saved: dict[str, Any] | None = None,
                   **options: Any) -> tuple[ChainSettings, set[str]]:
    """Resolve the settings: defaults (or ``saved``, the settings of the run being resumed),
    then the JSON file ``config``, then ``options`` (None values are ignored).  Returns
    ``(settings, explicit)`` with ``explicit`` the keys set by the file or the options (the
    model's group/lattice/coupling fill in the others)."""
    keys = ChainSettings.keys()
    s = json.loads(json.dumps(saved if saved is not None else ChainSettings().to_dict()))
    explicit: set[str] = set()
    if config:
        data = _read_json(os.fspath(config))
        s.update(data)
        explicit |= set(data)
    for key, v in options.items():
        if key not in keys:
            raise ConfigError(f"settings: unknown key {key!r}; expected some of {sorted(keys)}")
        if v is not None:
            s[key] = v
            explicit.add(key)
    unknown = set(s) - set(keys)
    if unknown:
        raise ConfigError(f"settings: unknown keys {sorted(unknown)}; expected some of "
                          f"{sorted(keys)}")
    _check_settings(s)
    return ChainSettings(**s), explicit


def _check_settings(s: dict[str, Any]) -> None:
    """Validate and normalise the raw settings in place (errors name the key and the value)."""
    group = str(s["group"]).lower().replace("(", "").replace(")", "")
    if group not in GROUPS:
        raise ConfigError(f"group: expected one of {sorted(GROUPS)}, got {s['group']!r}")
    s["group"] = group
    try:
        s["nrow"] = [int(n) for n in s["nrow"]]
    except (TypeError, ValueError):
        raise ConfigError(f"nrow: expected 2 or 4 integer extents, got {s['nrow']!r}") from None
    if len(s["nrow"]) not in (2, 4) or min(s["nrow"]) < 1:
        raise ConfigError(f"nrow: expected 2 or 4 positive extents, got {s['nrow']}")
    for key, low in (("chains", 1), ("steps", 0), ("md_steps", 1), ("flow_batch", 1),
                     ("checkpoint_every", 0), ("save_every", 0), ("therm", 0),
                     ("prior_steps", 1)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{key.replace('_', '-')}: expected an integer >= {low}, "
                              f"got {v!r}")
    for key in ("beta", "tau"):
        v = float(s[key])
        if not math.isfinite(v) or (key == "tau" and v <= 0):
            raise ConfigError(f"{key}: expected a finite{' positive' if key == 'tau' else ''} "
                              f"number, got {s[key]!r}")
        s[key] = v
    if int(s["precision"]) not in (32, 64):
        raise ConfigError(f"precision: expected 32 or 64 bits, got {s['precision']!r}")
    s["precision"] = int(s["precision"])
    s["polyakov"] = bool(s["polyakov"])
    if s["kappa"] is not None:
        _check_fermions(s)
    if s["schedule"] is not None and s["mixture"] is not None:
        raise ConfigError(f"--schedule {s['schedule']!r} and --mixture {s['mixture']!r}: "
                          f"give one of them (a fixed order or random choice)")
    from ..mcmc.integrators import SCHEMES

    if s["integrator"] not in SCHEMES:
        raise ConfigError(f"integrator: expected one of Chroma's names {sorted(SCHEMES)}, "
                          f"got {s['integrator']!r}")


def _check_fermions(s: dict[str, Any]) -> None:
    """Nf = 2 Wilson(-clover) fermions: a valid kappa and pf_draws (the lattice is checked by
    :func:`.chain_models._check_fermion_lattice` once a model has filled it in)."""
    k = float(s["kappa"])
    if not (math.isfinite(k) and k > 0):
        raise ConfigError(f"--kappa: expected a positive hopping parameter, got {s['kappa']!r}")
    s["kappa"], s["c_sw"] = k, float(s["c_sw"])
    if isinstance(s["pf_draws"], bool) or int(s["pf_draws"]) < 1:
        raise ConfigError(f"pf-draws: expected an integer >= 1, got {s['pf_draws']!r}")


# -- kernels and observables ------------------------------------------------------------------
def build_kernel(s: ChainSettings, model: Any) -> tuple[Any, list[str]]:
    """The chain's kernel (:func:`bridge.mcmc.compose.compose` or
    :func:`~bridge.mcmc.compose.mixture` of the named kernels) and the list of kernel names
    used (the record labels)."""
    from ..gauge import wilson_action
    from ..mcmc.compose import compose, mixture
    from ..mcmc.flow_mh import flow_metropolis_kernel
    from ..mcmc.hmc import hmc
    from ..mcmc.integrators import Integrator, Level, scheme
    from ..mcmc.monomials import GaugeMonomial

    plan, is_mix = s.kernel_plan()
    plan = [(n, v) for n, v in plan if v > 0]  # a kernel with count/probability 0 never runs
    beta = float(s.beta)
    names = [n for n in KERNELS if any(m == n for m, _ in plan)]
    kernels: ChainSettings = {}
    if "hmc" in names:
        monomials: list[Any] = [GaugeMonomial(beta)]
        if s.kappa is not None:  # Chroma's even-odd Nf = 2 monomial, antiperiodic in time
            from ..fermions.pseudofermion import TwoFlavorEOPrecWilsonMonomial

            monomials.append(TwoFlavorEOPrecWilsonMonomial(float(s.kappa), c_sw=float(s.c_sw)))
        integ = Integrator([Level(scheme(s.integrator), int(s.md_steps), monomials)])
        kernels["hmc"] = hmc(integ, float(s.tau), name="hmc")
    if "flow" in names:
        if model is None:
            raise ConfigError("the flow kernel needs --model")

        def action(u: Any) -> Any:
            return wilson_action(u, beta)

        est = None
        if s.kappa is not None:  # pseudo-marginal: the multi-draw determinant estimate
            est = model.estimator(int(s.pf_draws))
        kernels["flow"] = flow_metropolis_kernel(model, action, batch_size=int(s.flow_batch),
                                                 log_weight_estimator=est, name="flow")
    if "nemcmc" in names:
        from .chain_ne import nemcmc_kernel

        kernels["nemcmc"] = nemcmc_kernel(s, model)
    if is_mix:
        return mixture([(kernels[n], p) for n, p in plan]), names
    return compose([(kernels[n], int(c)) for n, c in plan]), names


# -- files ------------------------------------------------------------------------------------
def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _start_field(s: ChainSettings, seed: int, dtype: Any, device: Any) -> Any:
    from ..gauge import random_gauge, unit_gauge
    from ..lattice import Lattice
    from ..rng import generator, rng_key

    lat, group, c = Lattice(s.nrow), GROUPS[s.group], int(s.chains)
    start = str(s.start)
    if start == "hot":
        return random_gauge(lat, group, c, generator=generator(rng_key(seed, 0x5747), device),
                            dtype=dtype, device=device)
    if start == "cold":
        return unit_gauge(lat, group, c, dtype=dtype, device=device)
    if not os.path.exists(start):
        raise FileNotFoundError(f"--start {start}: expected hot, cold or an existing gauge "
                                f"file")
    from ..io import read_gauge

    u, _ = read_gauge(start, dtype=dtype, device=device)
    got = Lattice.of(u)
    nc = int(u.shape[-1])
    want_nc = {"u1": 1, "su2": 2, "su3": 3}[s.group]
    if list(got.nrow) != s.nrow or nc != want_nc:
        raise ConfigError(f"--start {start}: the file holds a {nc}x{nc} field on {got}, the "
                          f"chain needs {GROUPS[s.group]} on {Lattice(s.nrow)}")
    if u.shape[0] == 1:
        return u.expand(c, *u.shape[1:]).clone()
    if u.shape[0] != c:
        raise ConfigError(f"--start {start}: {u.shape[0]} configurations, expected 1 or "
                          f"--chains {c}")
    return u


def _paths(out: Path, rank: int, world: int) -> tuple[Path, Path]:
    suffix = "" if world == 1 else f".rank{rank}"
    return out / f"chain{suffix}.h5", out / f"checkpoint{suffix}.pt"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _write_ildg(out: Path, u: Any, cycle: int, offset: int, precision: int) -> None:
    """ILDG files of a 4D SU(3) batch, named as Chroma's hmc names them:
    ``OUT/cfg/chain<g>_cfg_<cycle>.lime`` (``g`` the global chain index)."""
    from ..io.ildg import write_ildg

    d = out / "cfg"
    d.mkdir(exist_ok=True)
    for i in range(u.shape[0]):
        write_ildg(d / f"chain{offset + i}_cfg_{cycle}.lime", u[i:i + 1], precision=precision,
                   overwrite=True)


# -- the run ----------------------------------------------------------------------------------
@dataclass
class _Context:
    """What one rank's run needs besides the settings."""

    rank: int
    world: int
    device: Any
    dtype: Any
    kernel: Any
    knames: list[str]
    names: list[str]
    fingerprint: str | None
    seed: int
    h5path: Path
    ck: Path


def _check_checkpoint(cp: Any, s: ChainSettings, ctx: _Context) -> None:
    """A checkpoint of another chain, flow or rank layout is refused (errors name both)."""
    ck = ctx.ck
    if not isinstance(cp, dict) or cp.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint {ck}: not a qcd-bridge chain checkpoint")
    now = s.to_dict()
    for key, v in cp["settings"].items():
        if key not in ChainSettings.MUTABLE and now.get(key) != v:
            raise ConfigError(f"--resume: {key} is {now.get(key)!r}, but the run in {ck} "
                              f"has {v!r}; only {sorted(ChainSettings.MUTABLE)} may change")
    if "model_sha256" in cp and cp["model_sha256"] != ctx.fingerprint:
        raise ConfigError(
            f"--resume: the flow in {s.model} is not the one checkpoint {ck} was run "
            f"with (its parameters changed, e.g. by further training); the chain's state "
            f"holds log q and proposals of the old flow, so it can only continue with that "
            f"one: restore it or start a new chain")
    if (cp["rank"], cp["world_size"]) != (ctx.rank, ctx.world):
        raise ConfigError(f"--resume: checkpoint {ck} is rank {cp['rank']} of "
                          f"{cp['world_size']}, this process is rank {ctx.rank} of {ctx.world}")


def _open(s: ChainSettings, ctx: _Context, resume: bool) -> tuple[ChainFile, Any, int, float]:
    """The chain file, the state, the cycle and the seconds so far: fresh, or from the
    checkpoint with the chain file cut back to the checkpoint's counts."""
    import torch

    c = s.chains
    attrs = {"group": GROUPS[s.group], "nrow": list(s.nrow), "beta": float(s.beta),
             "n_chains": c, "chain_offset": ctx.rank * c, "rank": ctx.rank,
             "world_size": ctx.world, "kernels": ctx.knames, "schedule": s.plan_text(),
             "mixture": s.mixture is not None, "therm": s.therm, "seed": s.seed,
             "model": str(s.model or "")}
    if not resume:
        state = ctx.kernel.init(_start_field(s, ctx.seed, ctx.dtype, ctx.device), seed=ctx.seed)
        f = ChainFile(ctx.h5path, "w", attrs=attrs, n_chains=c, observables=ctx.names)
        return f, state, 0, 0.0
    try:
        cp = torch.load(ctx.ck, map_location=ctx.device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a config error
        raise ConfigError(f"checkpoint {ctx.ck}: cannot read it ({exc})") from exc
    _check_checkpoint(cp, s, ctx)
    if not ctx.h5path.exists():
        raise ConfigError(f"--resume: the chain file {ctx.h5path} of checkpoint {ctx.ck} is "
                          f"missing")
    f = ChainFile(ctx.h5path, "a", attrs=attrs, n_chains=c, observables=ctx.names)
    f.truncate(int(cp["n_cycles"]), int(cp["n_records"]), int(cp["n_fields"]))
    f.h5.attrs["therm"] = s.therm
    return f, cp["state"], int(cp["cycle"]), float(cp.get("seconds", 0.0))


def _acceptance_so_far(f: ChainFile, knames: Sequence[str], c: int) -> dict[str, list[float]]:
    """Accepted and proposed counts per kernel in the file (the whole run, also before a
    resume): ``{kernel: [accepted, proposed]}``."""
    kcol = f.column("records/kernel")
    acol = f.column("records/accepted")
    return {k: [float(acol[kcol == i].sum()), float((kcol == i).sum() * c)]
            for i, k in enumerate(knames)}


def _bar_text(acc: dict[str, list[float]], obs: dict[str, Any]) -> str:
    rates = " ".join(f"{k} {(a / n if n else 0.0):.2f}" for k, (a, n) in acc.items())
    q = obs.get("topological_charge")
    qs = "" if q is None else f"  <Q> {float(q.mean()):+.2f}"
    return f"acc {rates}{qs}  plaq {float(obs['plaquette'].mean()):.5f}"


def _gather(local: dict[str, Any], world: int) -> list[dict[str, Any]]:
    """Every rank's observables and acceptance counts (``all_gather_object``)."""
    if world == 1:
        return [local]
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local)
    return parts


def _global_summary(s: ChainSettings, ctx: _Context, parts: list[dict[str, Any]],
                    seconds: float) -> dict[str, Any]:
    import numpy as np

    obs_all = {"cycle": parts[0]["obs"]["cycle"]}
    for k in ctx.names:
        obs_all[k] = np.concatenate([p["obs"][k] for p in parts], axis=1)
    acc_all = {k: [sum(p["acc"][k][0] for p in parts), sum(p["acc"][k][1] for p in parts)]
               for k in ctx.knames}
    summary = summarize(obs_all, acc_all, s)
    summary.update(world_size=ctx.world, chains_per_rank=s.chains, kernels=ctx.knames,
                   seconds=seconds, model_nrow=s.model_nrow,
                   files=[str(_paths(Path(s.out), r, ctx.world)[0]) for r in range(ctx.world)])
    return summary


def _context(s: ChainSettings, model: Any, resume: bool, rank: int | None,
             world: int | None) -> _Context:
    """Rank, device, kernel and paths; refuses a missing checkpoint or an existing output."""
    import torch

    from ..flows.distributed import init_distributed, rank_device
    from ..rng import rng_key

    if rank is None or world is None:
        rank, world = init_distributed("gloo" if str(s.device) == "cpu" else None)
    out = Path(s.out)
    h5path, ck = _paths(out, rank, world)
    out.mkdir(parents=True, exist_ok=True)
    if resume and not ck.exists():
        raise ConfigError(f"--resume: no checkpoint {ck} to resume from")
    if not resume and (ck.exists() or h5path.exists()):
        raise ConfigError(f"out: {ck if ck.exists() else h5path} exists; pass --resume to "
                          f"continue it or choose another --out")
    device = rank_device(s.device, world)
    if model is not None and hasattr(model, "to"):
        model.to(device)
    kernel, knames = build_kernel(s, model)
    return _Context(rank=rank, world=world, device=device,
                    dtype=torch.complex128 if s.precision == 64 else torch.complex64,
                    kernel=kernel, knames=knames, names=observable_names(s),
                    fingerprint=model_fingerprint(model) if model is not None else None,
                    seed=rng_key(s.seed, rank), h5path=h5path, ck=ck)


def run_chains(
    s: ChainSettings,
    *,
    model: Any = None,
    resume: bool = False,
    progress: bool | None = None,
    stream: TextIO | None = None,
    rank: int | None = None,
    world: int | None = None,
    callback: Callable[[int, Any], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) the chains of settings ``s`` (from :func:`chain_settings`; ``model``
    from :func:`resolve_model`) and return the summary (every rank gets the global one).

    ``rank``/``world`` default to the torch.distributed environment
    (:func:`bridge.flows.distributed.init_distributed`); rank ``r`` runs ``chains`` chains with the
    seed stream ``rng_key(seed, r)`` and the global chain indices ``r * chains ...``.
    ``progress``: None draws the bar on a terminal only.  ``callback(cycle, state)`` is called
    after every cycle (tests use it to interrupt a run)."""
    from ..mcmc.base import flat_infos
    from ..progress import Progress

    ctx = _context(s, model, resume, rank, world)
    out, c, steps = Path(s.out), s.chains, s.steps
    f, state, cycle, elapsed0 = _open(s, ctx, resume)
    if ctx.rank == 0:  # read back by --resume (with the new --steps after a resume)
        (out / "config.json").write_text(json.dumps(s.to_dict(), indent=2) + "\n")
    ildg = len(s.nrow) == 4 and s.group == "su3"
    bar = Progress(steps, label="cycle", stream=stream, start=cycle,
                   enabled=False if ctx.rank != 0 else progress)

    def checkpoint(cyc: int, seconds: float) -> None:
        f.flush()
        nc_, nr_, nf_ = f.counts()
        _atomic_save({"format": CHECKPOINT_FORMAT, "version": 1, "state": state, "cycle": cyc,
                      "n_cycles": nc_, "n_records": nr_, "n_fields": nf_,
                      "settings": s.to_dict(), "rank": ctx.rank, "world_size": ctx.world,
                      "seconds": seconds, "model_sha256": ctx.fingerprint}, ctx.ck)

    t0 = time.perf_counter()
    try:
        if not resume:
            checkpoint(0, 0.0)
        acc = _acceptance_so_far(f, ctx.knames, c)
        while cycle < steps:
            state, info = ctx.kernel.step(state)
            cycle += 1
            infos = flat_infos(info)
            obs = measure(state.U, state.action, ctx.names)
            f.append_cycle(cycle, obs, infos)
            for i in infos:
                acc[i.kernel][0] += float(i.accepted.sum())
                acc[i.kernel][1] += float(i.accepted.numel())
            if s.save_every and cycle % s.save_every == 0:
                f.append_fields(cycle, state.U, s.precision)
                if ildg:
                    _write_ildg(out, state.U, cycle, ctx.rank * c, s.precision)
            if callback is not None:
                callback(cycle, state)
            if (s.checkpoint_every and cycle % s.checkpoint_every == 0) or cycle == steps:
                checkpoint(cycle, elapsed0 + time.perf_counter() - t0)
            bar.update(cycle, _bar_text(acc, obs))
        bar.close()
        local = {"obs": {k: f.column(f"observables/{k}") for k in ["cycle", *ctx.names]},
                 "acc": acc}
    finally:
        f.close()
    summary = _global_summary(s, ctx, _gather(local, ctx.world),
                              elapsed0 + time.perf_counter() - t0)
    if ctx.rank == 0:
        tmp = out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
        os.replace(tmp, out / "summary.json")
    return summary
