"""``qcd-bridge train --kappa K``: self-training of a joint Nf = 2 model ``q(U) q(phi | U)``
(:mod:`bridge.flows.joint_training`, arXiv:2208.03832 sec. 3) in stages, and its evaluation.

Stages (``stage``): ``marginal`` (``steps`` steps), ``conditional`` (``pf_steps`` steps, the
marginal frozen), ``joint`` (``steps`` steps of both losses at once) or ``both`` (the default:
marginal, then conditional).  Each stage keeps its own resumable checkpoint
``OUT/stage-<name>.pt``; after each stage the model is also written to ``OUT/checkpoint.pt``, the
file ``sample``, ``chain`` and ``run`` read.  ``init``: a checkpoint or run directory whose
weights start the run (a joint model, or a gauge flow for the marginal), e.g. to train the
conditional of a marginal trained elsewhere.

``OUT/summary.json``: on ``eval_samples`` fresh gauge fields, ``ess`` and ``acceptance`` of the
multi-draw weights with ``pf_draws`` pseudofermions; on the first ``exact_det_samples`` of them
(when the lattice allows the dense determinant, ``V <= 256``) ``ess_exact_det`` (the
``N_pf -> infinity`` limit) next to ``ess_same_samples`` (the multi-draw ESS of the same fields);
``failed`` (fields whose solves did not converge: weight 0); ``pf_draws``, ``steps`` per stage,
``seconds``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["run_train_nf2", "evaluate_joint", "check_nf2_settings", "EXACT_DET_MAX_SITES"]

EXACT_DET_MAX_SITES = 256
STAGE_CHOICES = ("both", "marginal", "conditional", "joint")


def check_nf2_settings(s: dict[str, Any]) -> None:
    """Refuse fermion settings that cannot work, naming the setting and what was expected."""
    if s.get("kappa") is None:
        given = [k for k in ("pf_steps", "init") if s.get(k) is not None]
        if s.get("stage", "both") != "both":
            given.append("stage")
        if given:
            raise ConfigError(f"{', '.join(given)}: pseudofermion training settings need "
                              f"--kappa (Nf = 2 Wilson fermions)")
        return
    if s["group"] != "su3" or len(s["nrow"]) != 4:
        raise ConfigError(f"--kappa {s['kappa']}: Nf = 2 Wilson fermions need a 4D SU(3) "
                          f"lattice (--group su3 --nrow L L L T), got --group {s['group']} "
                          f"--nrow {' '.join(map(str, s['nrow']))}")
    if any(n % 2 for n in s["nrow"]):
        raise ConfigError(f"--nrow {' '.join(map(str, s['nrow']))}: the even-odd pseudofermion "
                          f"field needs even extents")
    arch = s["model"].get("arch", "residual")
    if arch == "plaquette":
        raise ConfigError("--arch plaquette: the marginal of an Nf = 2 model must be a 4D SU(3) "
                          "flow ('residual' or 'coupling')")
    if s["stage"] not in STAGE_CHOICES:
        raise ConfigError(f"stage: expected one of {STAGE_CHOICES}, got {s['stage']!r}")
    if int(s["pf_draws"]) < 1:
        raise ConfigError(f"pf_draws: expected at least 1 pseudofermion draw, got "
                          f"{s['pf_draws']}")
    if not float(s["mu0"]) >= 0:
        raise ConfigError(f"mu0: expected a regulator >= 0, got {s['mu0']}")


def _build(s: dict[str, Any]) -> Any:
    import torch

    from ..flows.checkpoints import load_model
    from ..flows.joint import JointFlow
    from ..flows.joint_training import make_joint_flow

    model = make_joint_flow(float(s["kappa"]), c_sw=float(s["c_sw"]),
                            marginal=dict(s["model"]), conditional=dict(s["conditional"]))
    if s.get("init"):
        init, _ = load_model(s["init"])
        if isinstance(init, JointFlow):
            if init.config != model.config:
                raise ConfigError(f"init {s['init']}: its model {init.config} differs from "
                                  f"this run's {model.config}")
            model.load_state_dict(init.state_dict())
        else:
            try:
                model.marginal.load_state_dict(init.state_dict())
            except RuntimeError as exc:
                raise ConfigError(f"init {s['init']}: its gauge flow does not match this run's "
                                  f"marginal {model.marginal.config}: {exc}") from exc
    torch.manual_seed(int(s["seed"]))
    return model


def run_train_nf2(s: dict[str, Any], *, resume: bool = False) -> int:
    """Train the joint model of settings ``s`` (module docstring); returns the exit status."""
    import torch

    from ..flows.distributed import init_distributed, rank_device
    from ..flows.joint_training import ConditionalLoss, MarginalLoss, stage_parameters
    from ..flows.training import TrainConfig, Trainer
    from .train import step_logger

    check_nf2_settings(s)
    cuda = rank_device(s["device"]).type == "cuda"
    rank, world = init_distributed("nccl" if cuda else "gloo")
    dev = rank_device(s["device"], world)
    out = Path(s["out"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    stages = ["marginal", "conditional"] if s["stage"] == "both" else [s["stage"]]
    files = [out / f"stage-{st}.pt" for st in stages]
    if resume and not any(f.exists() for f in files):
        raise ConfigError(f"--resume: no stage checkpoint ({', '.join(f.name for f in files)}) "
                          f"in {out} to resume from")
    if not resume and any(f.exists() for f in files):
        raise ConfigError(f"out: {next(f for f in files if f.exists())} exists; pass --resume "
                          f"to continue it or choose another --out")
    torch.manual_seed(int(s["seed"]))
    model = _build(s).to(dev)
    if rank == 0:
        (out / "config.json").write_text(json.dumps(s, indent=2) + "\n")
    beta, batch, nrow = float(s["beta"]), int(s["batch"]), s["nrow"]
    log_every = int(s["log_every"])
    done: dict[str, int] = {}
    t0 = time.perf_counter()
    for st, ck in zip(stages, files, strict=True):
        target = int(s["pf_steps"] if st == "conditional" and s["pf_steps"] is not None
                     else s["steps"])
        if st == "marginal":
            loss: Any = MarginalLoss(model, beta, batch, nrow, mu0=float(s["mu0"]))
        else:
            loss = ConditionalLoss(model, beta, batch, nrow, mu0=float(s["mu0"]), stage=st,
                                   refresh=int(s["pool_refresh"]), seed=int(s["seed"]))
        extra = dict(s["train"])
        extra.setdefault("total_steps", target)
        extra.setdefault("clip_value", 0.1)
        extra.setdefault("extra", {}).update(kappa=float(s["kappa"]), pf_draws=int(s["pf_draws"]),
                                             stage=st)
        cfg = TrainConfig(nrow=nrow, beta=beta, batch=batch, lr=float(
            s["lr"] if st != "conditional" or s["pf_lr"] is None else s["pf_lr"]),
            seed=int(s["seed"]) + 1000 * stages.index(st), **extra)
        trainer = Trainer(model, cfg, loss=loss, parameters=stage_parameters(model, st))
        if resume and ck.exists():
            trainer.load(ck)
            if isinstance(loss, ConditionalLoss):
                loss.calls = trainer.step_count

        progress = step_logger(target, log_every, rank=rank, prefix=f"[{st}] ",
                               fields=(("loss", "loss", "+.4f"), ("var", "loss_var", ".3g"),
                                       ("ess", "ess", ".3f")))

        trainer.train(max(target - trainer.step_count, 0), time_budget=s["time_budget"],
                      checkpoint=ck, checkpoint_every=int(s["checkpoint_every"]),
                      callback=progress)
        trainer.save(out / "checkpoint.pt")
        done[st] = trainer.step_count
    seconds = time.perf_counter() - t0
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if rank != 0:
        return 0
    stage_parameters(model, "joint")
    t1 = time.perf_counter()
    ev = evaluate_joint(model, nrow, beta, int(s["eval_samples"]), int(s["eval_batch"]),
                        int(s["pf_draws"]), int(s["seed"]), int(s["exact_det_samples"]))
    summary = {**ev, "steps": done, "seconds": seconds,
               "eval_seconds": time.perf_counter() - t1, "kappa": float(s["kappa"]),
               "c_sw": float(s["c_sw"]), "group": s["group"], "nrow": nrow, "beta": beta,
               "batch": batch, "world_size": world, "checkpoint": str(out / "checkpoint.pt")}
    path = out / "summary.json"
    tmp = path.with_name(".summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)
    exact = ("" if ev["ess_exact_det"] is None else
             f", exact determinant {ev['ess_exact_det']:.4f} on {ev['exact_det_samples']}")
    print(f"trained {done} in {seconds:.1f} s; on {ev['eval_samples']} fresh fields with "
          f"{ev['pf_draws']} pseudofermion draws: ESS {ev['ess']:.4f}, IMH acceptance "
          f"{ev['acceptance']:.4f}{exact}; {ev['failed']} failed; wrote {path}")
    return 0


def evaluate_joint(model: Any, nrow: list[int], beta: float, n: int, chunk: int, pf_draws: int,
                   seed: int, exact_det_samples: int = 512) -> dict[str, Any]:
    """ESS and acceptance of the multi-draw weights on ``n`` fresh fields, and of the exact
    determinant on the first ``exact_det_samples`` (module docstring)."""
    import torch

    from ..fermions import exact_logdet
    from ..gauge import wilson_action
    from ..mcmc.reweighting import ess, imh_acceptance
    from ..rng import generator, rng_key

    est = model.estimator(pf_draws)
    p = next(model.parameters())
    dev = p.device
    vol = math.prod(nrow)
    n_exact = min(int(exact_det_samples), n) if vol <= EXACT_DET_MAX_SITES else 0
    lws, lwx = [], []
    with torch.no_grad():
        for i, start in enumerate(range(0, n, chunk)):
            m = min(chunk, n - start)
            gen = generator(rng_key(seed, 7, 3, i), dev)
            u, logq = model.sample(m, nrow, generator=gen, device=dev)
            base = -wilson_action(u, beta) - logq
            lws.append(base + est(u, gen))
            k = min(m, n_exact - start)
            if k > 0:
                c = model.conditional
                ld = exact_logdet(u[:k], c.kappa, c_sw=c.c_sw, boundary=c.boundary,
                                  normalisation="chroma", kind="schur")
                if c.c_sw:
                    ld = ld + 2.0 * c.operator(u[:k]).clover_logdet(0)
                lwx.append(base[:k] + ld)
    logw = torch.cat(lws)
    out: dict[str, Any] = {
        "ess": ess(logw), "acceptance": imh_acceptance(logw, generator(rng_key(seed, 7, 4))),
        "eval_samples": n, "pf_draws": pf_draws, "failed": est.failed,
        "cg_iterations": est.iterations, "ess_exact_det": None, "exact_det_samples": n_exact,
        "ess_same_samples": None}
    if lwx:
        x = torch.cat(lwx)
        out["ess_exact_det"] = ess(x)
        out["ess_same_samples"] = ess(logw[:n_exact])
    return out
