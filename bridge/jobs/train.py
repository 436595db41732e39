"""The jobs of ``qcd-bridge train`` and ``qcd-bridge sample``: self-training of a
gauge-equivariant flow (:mod:`bridge.flows.training`, arXiv:2003.06413, arXiv:2101.08176) and
drawing configurations with their log-weights ``log w = -S(U) - log q(U)`` into HDF5 or ILDG.

Training settings come from a JSON file (keys as the long options with ``_`` for ``-``, plus
``"model": {...}`` for :func:`~bridge.flows.make_flow` arguments and ``"train": {...}`` for
further :class:`~bridge.flows.training.TrainConfig` fields), overridden by the options given.
``steps`` is the total number of optimisation steps of the run, counting those done before a
resume.  The run writes ``OUT/checkpoint.pt`` (atomically, every ``checkpoint_every`` steps and
at the end), ``OUT/config.json`` (the resolved settings) and ``OUT/summary.json`` with ``ess``
and ``acceptance`` measured after training on a fresh batch of ``eval_samples`` (default 4096)
samples drawn in chunks of ``eval_batch``, plus ``steps``, ``seconds`` and the last live
statistics.  Under ``torchrun`` (``WORLD_SIZE > 1``) the run is data parallel
(:func:`bridge.flows.distributed.init_distributed`); rank 0 prints, evaluates and writes.

Fine-tuning (``init_from``: a checkpoint or run directory of a gauge flow): the model and its
parameters come from that run, used on this run's lattice and coupling (the checks of
:func:`bridge.jobs.transfer.check_transfer`; a model of another group, dimension or one that
is not local is refused before any work); the optimiser starts afresh, with the source's
gradient estimator and Adam epsilon unless given.  The source (its path,
lattice, coupling, steps and its own source) is recorded in the checkpoint's training metadata
and as ``init_from`` and ``history`` in ``summary.json``.

Sampling: the model is a checkpoint or a run directory.  ``FILE.h5``: a 4D SU(3) model goes into
an :class:`~bridge.io.hdf5.EnsembleStore` (``weight`` = ``exp(log w - c)`` with ``c`` recorded,
the exact ``log_w``, ``log_q`` and ``action`` in each configuration's ``params``); other
groups/dimensions into a plain HDF5 file (``links`` as real pairs, ``log_w``, ``log_q``,
``action``, attributes ``format = "qcd-bridge-flow-samples"``, ``group``, ``nrow``, ``beta``).
Any other FILE is an ILDG prefix: ``FILE.00000.lime`` ... (4D SU(3) only) plus
``FILE.weights.json``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..flows.checkpoints import GROUPS as _GROUPS

__all__ = ["train_settings", "run_train", "SampleSettings", "sample_flow", "step_logger",
           "check_resume"]

_DEFAULTS: dict[str, Any] = {
    "group": "u1", "nrow": [8, 8], "beta": 2.0, "steps": 1000, "batch": 64, "lr": 1e-3,
    "seed": 0, "out": "flow-run", "time_budget": None, "eval_samples": 4096,
    "eval_batch": 256, "checkpoint_every": 100, "log_every": 10, "device": "cpu", "model": {},
    "train": {}, "kappa": None, "c_sw": 0.0, "pf_draws": 16, "stage": "both", "pf_steps": None,
    "pf_lr": None, "mu0": 1e-5, "init": None, "exact_det_samples": 512, "pool_refresh": 4,
    "conditional": {}, "init_from": None,
    # --arch snf (bridge.jobs.train_snf; None: not given, its defaults then apply)
    "beta0": None, "blocks": None, "update": None, "therm": None, "pool_sweeps": None,
    "n_hb": None, "n_or": None, "n_traj": None, "md_steps": None, "tau": None,
    "defect": None, "c0": None, "init_scale": None,
}
_DICTS = ("model", "train", "conditional")
_MODEL_KEYS = {"arch", "n_layers", "k", "hidden", "kernel_size", "period", "separable",
               "init_gain", "kappa", "degree", "harmonics", "symmetric", "eps", "grid",
               "layer", "init", "radius"}


# -- settings ---------------------------------------------------------------------------------
def train_settings(config: str | os.PathLike[str] | None = None, *, arch: str | None = None,
                   layers: int | None = None, estimator: str | None = None,
                   **options: Any) -> dict[str, Any]:
    """Defaults, then the JSON file ``config``, then ``options`` (keys of the file; None values
    are ignored) and ``arch``/``layers``/``estimator`` (into ``model`` and ``train``)."""
    s = json.loads(json.dumps(_DEFAULTS))
    given_keys: set[str] = set()
    if config:
        try:
            data = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config {config}: cannot read it as JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config {config}: expected a JSON object, got "
                              f"{type(data).__name__}")
        unknown = set(data) - set(_DEFAULTS)
        if unknown:
            raise ConfigError(f"config {config}: unknown keys {sorted(unknown)}; expected "
                              f"some of {sorted(_DEFAULTS)}")
        s.update(data)
        given_keys |= set(data)
        for key in _DICTS:
            if not isinstance(s[key], dict):
                raise ConfigError(f"config {config}: {key!r} must be a JSON object of "
                                  f"settings, got {json.dumps(s[key])}")
    for key, v in options.items():
        if key not in _DEFAULTS or key in _DICTS:
            raise ConfigError(f"settings: unknown key {key!r}; expected some of "
                              f"{sorted(set(_DEFAULTS) - set(_DICTS))}")
        if v is not None:
            s[key] = v
            given_keys.add(key)
    if arch is not None:
        s["model"]["arch"] = arch
    if layers is not None:
        s["model"]["n_layers"] = layers
    if estimator is not None:
        s["train"]["estimator"] = estimator
    group = str(s["group"]).lower()
    if group not in _GROUPS:
        raise ConfigError(f"group: expected one of {sorted(_GROUPS)}, got {s['group']!r}")
    s["group"] = group
    s["nrow"] = [int(n) for n in s["nrow"]]
    if len(s["nrow"]) not in (2, 4):
        raise ConfigError(f"nrow: expected 2 or 4 extents, got {s['nrow']}")
    from .train_snf import check_snf_settings, snf_defaults

    if s.get("init_from"):
        from .transfer import snf_source_settings

        snf_source_settings(s, given_keys | ({"arch"} if arch is not None else set()))
    snf_defaults(s, given_keys)
    check_snf_settings(s)
    bad = set(s["model"]) - _MODEL_KEYS
    if bad:
        raise ConfigError(f"model: unknown keys {sorted(bad)}; expected some of "
                          f"{sorted(_MODEL_KEYS)}")
    for key in ("steps", "eval_samples", "eval_batch"):
        if int(s[key]) < (0 if key == "steps" else 1):
            raise ConfigError(f"{key}: expected a positive integer, got {s[key]}")
    from .train_nf2 import check_nf2_settings

    check_nf2_settings(s)
    return s


# -- train ------------------------------------------------------------------------------------
def check_resume(ck: Path, resume: bool) -> None:
    """``--resume`` needs the checkpoint ``ck``; without it an existing one is not overwritten."""
    if resume and not ck.exists():
        raise ConfigError(f"--resume: no checkpoint {ck} to resume from")
    if not resume and ck.exists():
        raise ConfigError(f"out: {ck} exists; pass --resume to continue it or choose another "
                          f"--out")


def step_logger(total: int, log_every: int, *, rank: int = 0, prefix: str = "",
                fields: tuple[tuple[str, str, str], ...] = ()) -> Any:
    """The progress line of every training job: on rank 0, every ``log_every`` steps and at
    step ``total``, ``[prefix]step n/total  label value ...  s/step``; ``fields`` are
    ``(label, key of the step's info, format)``."""
    def log(info: dict[str, float]) -> None:
        n = int(info["step"]) + 1
        if rank == 0 and log_every and (n % log_every == 0 or n == total):
            vals = "  ".join(f"{label} {info[key]:{fmt}}" for label, key, fmt in fields)
            print(f"{prefix}step {n:6d}/{total}  {vals}  {info['seconds']:.3f} s/step",
                  flush=True)

    return log


def _evaluate(model: Any, nrow: list[int], beta: float, n: int, chunk: int,
              seed: int, step: int) -> dict[str, float]:
    """ESS and independence-Metropolis acceptance on ``n`` fresh samples drawn in chunks."""
    import torch

    from ..gauge import wilson_action
    from ..mcmc.reweighting import ess, imh_acceptance
    from ..rng import generator, rng_key

    logws = []
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    with torch.no_grad():
        for i, start in enumerate(range(0, n, chunk)):
            m = min(chunk, n - start)
            u, logq = model.sample(m, nrow, generator=generator(rng_key(seed, step, 3, i), dev),
                                   device=dev)
            logws.append(-wilson_action(u, beta) - logq)
    logw = torch.cat(logws)
    return {"ess": ess(logw), "acceptance": imh_acceptance(logw, generator(
        rng_key(seed, step, 4))), "eval_samples": int(n), "eval_loss": float(-logw.mean())}


def run_train(s: dict[str, Any], *, resume: bool = False) -> int:
    """Train the flow of settings ``s`` (:func:`train_settings`), or continue the run in
    ``s["out"]`` (``resume``); rank 0 evaluates, writes ``summary.json`` and prints one line.
    Returns the exit status."""
    source = None
    if s.get("init_from"):
        from .transfer import fine_tune_source

        source = fine_tune_source(s)
    if s.get("kappa") is not None:
        from .train_nf2 import run_train_nf2

        return run_train_nf2(s, resume=resume)
    if s["model"].get("arch") == "snf":
        from .train_snf import run_train_snf

        return run_train_snf(s, resume=resume, source=source)
    import torch

    from ..flows import make_flow
    from ..flows.distributed import init_distributed, rank_device
    from ..flows.training import TrainConfig, Trainer

    cuda = rank_device(s["device"]).type == "cuda"  # validates the device first
    rank, world = init_distributed("nccl" if cuda else "gloo")
    dev = rank_device(s["device"], world)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    out = Path(s["out"])
    ck = out / "checkpoint.pt"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    check_resume(ck, resume)
    torch.manual_seed(int(s["seed"]))
    if source is None:
        model = make_flow(_GROUPS[s["group"]], len(s["nrow"]), **s["model"]).to(dev)
    else:
        model = source[0].to(dev).train()
    extra = dict(s["train"])
    extra.setdefault("total_steps", int(s["steps"]))
    for key in ("estimator", "adam_eps") if source is not None else ():
        if key not in extra and source[1].get(key) is not None:  # the source's, by default
            extra[key] = source[1][key]
    cfg = TrainConfig(nrow=s["nrow"], beta=float(s["beta"]), batch=int(s["batch"]),
                      lr=float(s["lr"]), seed=int(s["seed"]), **extra)
    if source is not None:
        cfg.extra = {**cfg.extra, "init_from": source[1]}
        if rank == 0 and not resume:
            from .transfer import fine_tune_notice

            print(fine_tune_notice(source[1], s), flush=True)
    trainer = Trainer(model, cfg)
    if resume:
        trainer.load(ck)
    if rank == 0:
        (out / "config.json").write_text(json.dumps(s, indent=2) + "\n")
    remaining = max(int(s["steps"]) - trainer.step_count, 0)
    log_every = int(s["log_every"])

    progress = step_logger(int(s["steps"]), log_every, rank=rank,
                           fields=(("loss", "loss", "+.4f"), ("ess", "ess", ".3f"),
                                   ("acc", "acceptance", ".3f")))

    t0 = time.perf_counter()
    hist = trainer.train(remaining, time_budget=s["time_budget"], checkpoint=ck,
                         checkpoint_every=int(s["checkpoint_every"]), callback=progress)
    train_seconds = time.perf_counter() - t0
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if rank != 0:
        return 0
    t1 = time.perf_counter()
    ev = _evaluate(model, s["nrow"], float(s["beta"]), int(s["eval_samples"]),
                   int(s["eval_batch"]), int(s["seed"]), trainer.step_count)
    prev = 0.0
    summary_path = out / "summary.json"
    if resume and summary_path.exists():
        prev = float(json.loads(summary_path.read_text()).get("train_seconds_total", 0.0))
    last = trainer.history[-1] if trainer.history else {}
    summary = {
        **ev, "steps": trainer.step_count, "steps_this_run": len(hist),
        "seconds": train_seconds, "train_seconds_total": prev + train_seconds,
        "eval_seconds": time.perf_counter() - t1,
        "live_ess": last.get("ess"), "live_acceptance": last.get("acceptance"),
        "loss": last.get("loss"), "group": s["group"], "nrow": s["nrow"],
        "beta": float(s["beta"]), "batch": int(s["batch"]), "world_size": world,
        "checkpoint": str(ck), "stopped_by_time_budget": len(hist) < remaining,
    }
    if source is not None:
        from .transfer import history_of

        summary["init_from"], summary["history"] = source[1], history_of(source[1])
    tmp = summary_path.with_name(".summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, summary_path)
    print(f"trained {summary['steps']} steps ({len(hist)} this run) in {train_seconds:.1f} s; "
          f"on {ev['eval_samples']} fresh samples: ESS {ev['ess']:.4f}, IMH acceptance "
          f"{ev['acceptance']:.4f}; wrote {summary_path}")
    return 0


# -- sample -----------------------------------------------------------------------------------
@dataclass
class SampleSettings:
    """What ``qcd-bridge sample`` draws: ``n`` configurations of the flow in ``model`` (a
    checkpoint or run directory) into ``out`` (``FILE.h5`` or an ILDG prefix)."""

    model: str
    n: int
    out: str
    nrow: list[int] | None = None
    beta: float | None = None
    batch: int = 64
    seed: int = 1
    precision: int = 64
    overwrite: bool = False
    pf_draws: int | None = None


def sample_flow(args: SampleSettings) -> int:
    """Draw the samples of ``args`` with their log-weights ``log w = -S - log q``; returns the
    exit status."""
    import torch

    from ..flows.checkpoints import load_model
    from ..gauge import wilson_action
    from ..rng import generator, rng_key

    model, meta = load_model(args.model)
    nrow = [int(n) for n in (args.nrow or meta["train"]["nrow"])]
    beta = float(meta["train"]["beta"] if args.beta is None else args.beta)
    snf = None
    if getattr(model, "config", {}).get("arch") == "snf":  # Jarzynski-weighted protocol runs
        from .train_snf import SNFSampler

        if args.beta is not None and args.beta != model.beta:
            raise ConfigError(f"--beta {args.beta:g}: the stochastic normalizing flow "
                              f"{args.model} ends at beta = {model.beta:g}")
        snf = SNFSampler(model, str(args.model), nrow, args.batch, args.seed)
    elif nrow != [int(n) for n in meta["train"]["nrow"]]:  # a local model travels
        from .transfer import check_transfer

        check_transfer(model, nrow, f"--nrow {' '.join(map(str, nrow))}: --model {args.model}")
    if args.n < 1 or args.batch < 1:
        raise ConfigError(f"--n and --batch: expected positive integers, got {args.n}, "
                          f"{args.batch}")
    out = str(args.out)
    hdf5 = out.endswith((".h5", ".hdf5"))
    ildg_like = model.nd == 4 and model.group.name == "SU(3)"
    if not hdf5 and not ildg_like:
        raise ConfigError(f"--out {out}: ILDG files hold 4D SU(3) fields only, this model is "
                          f"{model.nd}D {model.group.name}; write HDF5 instead (--out FILE.h5)")
    est = None
    if getattr(model, "kappa", None) is not None:  # joint Nf = 2: the multi-draw weight
        trained = meta["train"].get("extra", {}).get("pf_draws", 16)
        draws = int(trained if args.pf_draws is None else args.pf_draws)
        if draws < 1:
            raise ConfigError(f"--pf-draws {args.pf_draws}: expected at least 1 pseudofermion "
                              f"draw per field")
        est = model.estimator(draws)
    elif args.pf_draws is not None:  # (an SNF has none either)
        raise ConfigError(f"--pf-draws {args.pf_draws}: the model {args.model} has no "
                          f"pseudofermion flow (train one with qcd-bridge train --kappa)")
    t0 = time.perf_counter()
    writer = _Writer(out, hdf5, ildg_like, nrow, model, beta, args)
    try:
        done = 0
        with torch.no_grad():
            for i, start in enumerate(range(0, args.n, args.batch)):
                m = min(args.batch, args.n - start)
                if snf is not None:
                    writer.write(*snf.chunk(i, m))
                    done += m
                    continue
                gen = generator(rng_key(args.seed, i))
                u, logq = model.sample(m, nrow, generator=gen)
                act = wilson_action(u, beta)
                logw = -act - logq if est is None else -act - logq + est(u, gen)
                writer.write(u, logw, logq, act)
                done += m
    finally:
        writer.close()
    failed = "" if est is None else (f"; {est.failed} with unconverged solves got weight 0"
                                     f" ({est.n_draws} pseudofermion draws each)")
    print(f"wrote {done} configurations to {out} in {time.perf_counter() - t0:.1f} s{failed}",
          file=sys.stderr)
    return 0


class _Writer:
    """Sink of ``(U, log w, log q, S)`` chunks: EnsembleStore, plain HDF5 or ILDG files."""

    def __init__(self, out: str, hdf5: bool, su3_4d: bool, nrow: list[int], model: Any,
                 beta: float, args: SampleSettings) -> None:
        self.out, self.kind, self.n = out, ("store" if su3_4d else "plain") if hdf5 else "ildg", 0
        self.beta, self.args, self.model = beta, args, model
        self.logw_def = ("-S_g - log q + log W_hat (multi-draw pseudofermion estimate of "
                         "det(K^dag K))" if getattr(model, "kappa", None) is not None
                         else "-S - log q")
        if getattr(model, "config", {}).get("arch") == "snf":
            from .train_snf import SNFSampler

            self.logw_def = SNFSampler.LOG_W
        self.offset: float | None = None
        self.records: list[dict[str, float]] = []
        from ..io.lime import check_output_path

        if self.kind == "store":
            from ..io.hdf5 import EnsembleStore

            check_output_path(out, args.overwrite)
            self.store = EnsembleStore(out, "w", nrow=nrow, precision=args.precision,
                                       ensemble="flow", overwrite=True)
        elif self.kind == "plain":
            import h5py

            check_output_path(out, args.overwrite)
            self.h5 = h5py.File(out, "w")
            self.h5.attrs.update({"format": "qcd-bridge-flow-samples", "group":
                                  model.group.name, "nrow": nrow, "beta": beta,
                                  "model": str(args.model)})
        else:
            check_output_path(self.weights_path, args.overwrite)

    @property
    def weights_path(self) -> str:
        return f"{self.out}.weights.json"

    def write(self, u: Any, logw: Any, logq: Any, act: Any) -> None:
        import numpy as np
        import torch

        if self.offset is None:
            self.offset = float(logw.max())
        if self.kind == "plain":
            real = np.float32 if self.args.precision == 32 else np.float64
            arr = torch.view_as_real(u.detach()).cpu().numpy().astype(real)
            cols = {"links": arr, "log_w": logw.cpu().numpy(), "log_q": logq.cpu().numpy(),
                    "action": act.cpu().numpy()}
            for name, a in cols.items():
                if name not in self.h5:
                    self.h5.create_dataset(name, data=a, maxshape=(None, *a.shape[1:]),
                                           chunks=(1, *a.shape[1:]))
                else:
                    ds = self.h5[name]
                    ds.resize(ds.shape[0] + a.shape[0], axis=0)
                    ds[-a.shape[0]:] = a
            self.n += u.shape[0]
            return
        for j in range(u.shape[0]):
            rec = {"index": self.n, "log_w": float(logw[j]), "log_q": float(logq[j]),
                   "action": float(act[j])}
            if self.kind == "store":
                self.store.append(u[j:j + 1], traj=self.n,
                                  weight=math.exp(rec["log_w"] - self.offset),
                                  params={**rec, "log_w_offset": self.offset,
                                          "beta": self.beta, "model": str(self.args.model)},
                                  seed=[self.args.seed])
            else:
                from ..io.ildg import write_ildg

                path = f"{self.out}.{self.n:05d}.lime"
                write_ildg(path, u[j:j + 1], precision=self.args.precision,
                           overwrite=self.args.overwrite)
                rec["file"] = path
            self.records.append(rec)
            self.n += 1

    def close(self) -> None:
        if self.kind == "store":
            self.store.close()
        elif self.kind == "plain":
            self.h5.attrs["n_configs"] = self.n
            self.h5.attrs["log_w"] = self.logw_def
            self.h5.close()
        else:
            Path(self.weights_path).write_text(json.dumps(
                {"beta": self.beta, "model": str(self.args.model), "log_w": self.logw_def,
                 "configs": self.records}, indent=1) + "\n")
