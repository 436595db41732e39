"""Self-training of flow models by the reverse Kullback-Leibler divergence
(arXiv:2003.06413, sec. IV; arXiv:2101.08176, sec. 3.3).

The loss is ``E_q[log q(U) + S(U)] = KL(q || p) - log Z`` on samples ``U ~ q`` (no training
data), with the gradient estimators ``reparam`` (through the flow), ``path`` (without the score
term, arXiv:1703.09194; zero variance where ``q = p``) and ``reinforce`` (score function with the
batch-mean baseline).  The batch of step ``n`` comes from ``rng_key(seed, n)``, so model,
optimiser state and step number are the complete state: checkpoints are written atomically and a
resumed run continues bit for bit.  Under ``torch.distributed`` each rank draws its own batch and
the gradients are averaged (:mod:`bridge.flows.distributed`).  Details: docs/flows.md,
"Training" and "Data-parallel training".
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, PhysicsError
from ..gauge import wilson_action
from ..lattice import Lattice
from ..mcmc.reweighting import ess, imh_acceptance
from ..rng import generator, rng_key
from . import distributed as ddp
from .models import GaugeFlow

__all__ = ["TrainConfig", "Trainer", "reverse_kl_loss", "CHECKPOINT_FORMAT", "checkpoint_meta",
           "write_checkpoint", "read_checkpoint"]

CHECKPOINT_FORMAT = "qcd-bridge-flow-checkpoint"


@dataclass
class TrainConfig:
    """Settings of a self-training run (see the module docstring)."""

    nrow: Sequence[int]
    beta: float
    batch: int = 64
    lr: float = 1e-3
    adam_eps: float = 1e-2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    clip_norm: float | None = 10.0
    clip_value: float | None = None
    schedule: str = "constant"
    total_steps: int = 1000
    warmup: int = 0
    lr_min: float = 0.0
    estimator: str = "reparam"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nrow = tuple(int(n) for n in self.nrow)
        if self.batch < 2:
            raise ConfigError(f"batch: expected at least 2 samples per step, got {self.batch}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr: expected a positive learning rate, got {self.lr}")
        if not self.adam_eps > 0:
            raise ConfigError(f"adam_eps: expected > 0, got {self.adam_eps}")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule: expected 'constant' or 'cosine', got {self.schedule!r}")
        if self.estimator not in ("reparam", "path", "reinforce"):
            raise ConfigError(f"estimator: expected 'reparam', 'path' or 'reinforce', got "
                              f"{self.estimator!r}")
        for name in ("clip_norm", "clip_value"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name}: expected a positive number or None, got {v}")

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based)."""
        f = 1.0
        if self.schedule == "cosine":
            t = min(step / max(self.total_steps, 1), 1.0)
            f = (self.lr_min / self.lr) + (1 - self.lr_min / self.lr) * 0.5 * (1 + math.cos(
                math.pi * t))
        if self.warmup and step < self.warmup:
            f *= (step + 1) / self.warmup
        return self.lr * f


def _check_score_estimator(model: GaugeFlow) -> None:
    if not getattr(model, "differentiable_log_prob", True):
        raise ConfigError("estimator: 'reinforce' differentiates log q(U) at fixed U through the "
                          "inverse, but this model inverts its residual layers by fixed-point "
                          "iteration (not differentiable); use 'reparam'")


def _check_path_estimator(model: GaugeFlow) -> None:
    if not getattr(model, "supports_path_gradient", False):
        raise ConfigError(f"estimator: 'path' needs a model whose sample() can hold its "
                          f"parameters fixed in log q (path_gradient=True); "
                          f"{type(model).__name__} cannot; use 'reparam' or 'reinforce'")


def reverse_kl_loss(
    model: GaugeFlow,
    action: Callable[[torch.Tensor], torch.Tensor],
    batch: int,
    nrow: Sequence[int],
    *,
    gen: torch.Generator | None = None,
    estimator: str = "reparam",
    baseline: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(surrogate, logw)``: a scalar whose gradient is the chosen estimate of the gradient of
    ``KL(q || p)``, and the per-sample log-weights ``log w = -S(U) - log q(U)`` (detached).
    ``baseline(f)`` (REINFORCE only) returns the baseline for ``f = log q + S``; default the
    batch mean (the data-parallel trainer passes the mean over all ranks).  ``device``: where
    the samples are drawn (the generator must live there too); default the model's own
    default."""
    if estimator == "reparam":
        u, logq = model.sample(batch, nrow, generator=gen, device=device)
        f = logq + action(u)
        return f.mean(), -f.detach()
    if estimator == "path":
        _check_path_estimator(model)
        u, logq = model.sample(batch, nrow, generator=gen, device=device, path_gradient=True)
        f = logq + action(u)
        return f.mean(), -f.detach()
    if estimator == "reinforce":
        _check_score_estimator(model)
        with torch.no_grad():
            u, logq0 = model.sample(batch, nrow, generator=gen, device=device)
            f = (logq0 + action(u)).detach()
        logq = model.log_prob(u)
        b = f.mean() if baseline is None else baseline(f)
        return ((f - b) * logq).mean() + f.mean(), -f
    raise ConfigError(f"estimator: expected 'reparam', 'path' or 'reinforce', got "
                      f"{estimator!r}")


def checkpoint_meta(model: GaugeFlow, config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint records to rebuild the model and to refuse a mismatched resume."""
    cfg = asdict(config)
    cfg["nrow"] = list(config.nrow)
    cfg["adam_betas"] = list(config.adam_betas)
    return {"format": CHECKPOINT_FORMAT, "version": 1, "model": model.config,
            "group": model.group.name, "nd": model.nd, "train": cfg}


def write_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save(state)`` atomically: a temporary file beside ``path``, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike, expected: dict[str, Any]) -> dict[str, Any]:
    """The state of a checkpoint written for the same model architecture, group and lattice as
    the metadata ``expected`` (:func:`checkpoint_meta`); :class:`ConfigError` naming the file
    and the mismatch otherwise."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a config error
        raise ConfigError(f"checkpoint {path}: cannot read it ({exc})") from exc
    meta = state.get("meta", {}) if isinstance(state, dict) else {}
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint {path}: not a qcd-bridge flow checkpoint")
    for key in ("group", "nd", "model"):
        if meta.get(key) != expected[key]:
            raise ConfigError(f"checkpoint {path}: {key} is {meta.get(key)!r}, but this run "
                              f"has {expected[key]!r}")
    if list(meta["train"]["nrow"]) != list(expected["train"]["nrow"]):
        raise ConfigError(f"checkpoint {path}: lattice {tuple(meta['train']['nrow'])} "
                          f"differs from this run's {tuple(expected['train']['nrow'])}")
    return state


class Trainer:
    """Reverse-KL self-training of a :class:`GaugeFlow` (module docstring).

    ``action`` defaults to the Wilson gauge action at ``config.beta``; ``loss(generator,
    device) -> (surrogate, log w)`` replaces the reverse KL of ``action`` (the Nf = 2 stages of
    :mod:`.joint_training`), and ``parameters`` restricts what is optimised (a frozen
    marginal).  ``step()`` runs one
    optimisation step and returns its metrics; ``train(...)`` loops with an optional time budget
    and periodic atomic checkpoints; :meth:`save` / :meth:`load` write and resume.  Under an
    initialised process group the parameters are broadcast from rank 0 at construction.
    """

    def __init__(self, model: GaugeFlow, config: TrainConfig,
                 action: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                 loss: Callable[[torch.Generator, torch.device], tuple[torch.Tensor,
                                                                       torch.Tensor]] | None = None,
                 parameters: Sequence[torch.nn.Parameter] | None = None) -> None:
        Lattice(config.nrow)
        if len(config.nrow) != model.nd:
            raise ConfigError(f"nrow: the model is {model.nd}-dimensional, got {config.nrow}")
        if config.estimator == "reinforce":
            _check_score_estimator(model)
        if config.estimator == "path":
            _check_path_estimator(model)
        self.model, self.config = model, config
        self.action = action or (lambda u: wilson_action(u, config.beta))
        self.loss = loss
        params = list(model.parameters() if parameters is None else parameters)
        self.opt = torch.optim.Adam(params, lr=config.lr, eps=config.adam_eps,
                                    betas=config.adam_betas)
        self.step_count = 0
        self.history: list[dict[str, float]] = []
        self.rank, self.world_size = ddp.rank_and_world()
        ddp.broadcast_parameters(self.model.parameters(), self.world_size)

    def batch_generator(self, step: int, rank: int | None = None) -> torch.Generator:
        """The generator of this rank's batch at ``step``, on the model's device:
        ``rng_key(seed, step)`` in a single process, ``rng_key(seed, step, 2, rank)`` on rank
        ``rank`` of a process group."""
        dev = self._device()
        if self.world_size == 1 and rank is None:
            return generator(rng_key(self.config.seed, step), dev)
        return generator(rng_key(self.config.seed, step, 2, self.rank if rank is None else rank),
                         dev)

    def _device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def _global_mean(self, f: torch.Tensor) -> torch.Tensor:
        return ddp.gather(f, self.world_size, self._device()).mean().to(f.device)

    def step(self) -> dict[str, float]:
        """One optimisation step; its metrics (loss, its variance, ESS, acceptance, ...)."""
        cfg, n, t0 = self.config, self.step_count, time.perf_counter()
        lr = cfg.lr_at(n)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        if self.loss is not None:
            surrogate, logw = self.loss(self.batch_generator(n), self._device())
        else:
            surrogate, logw = reverse_kl_loss(
                self.model, self.action, cfg.batch, cfg.nrow, gen=self.batch_generator(n),
                estimator=cfg.estimator, device=self._device(),
                baseline=self._global_mean if self.world_size > 1 else None)
        logw = ddp.gather(logw, self.world_size, self._device())
        loss = float(-logw.mean())
        if not (math.isfinite(loss) and bool(torch.isfinite(logw).all())):
            raise PhysicsError(f"step {n}: the loss is not finite ({loss}); training stopped, "
                               f"the last checkpoint is kept unchanged")
        surrogate.backward()
        ddp.allreduce_mean_grads(list(self.model.parameters()), self.world_size)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm or float("inf")))
        if not math.isfinite(gnorm):
            raise PhysicsError(f"step {n}: the gradient is not finite; training stopped, the "
                               f"last checkpoint is kept unchanged")
        self.opt.step()
        acc = imh_acceptance(logw, generator(rng_key(cfg.seed, n, 1)))
        info = {"step": n, "loss": loss, "loss_var": float(logw.var()), "ess": ess(logw),
                "acceptance": acc, "lr": lr, "grad_norm": gnorm,
                "seconds": time.perf_counter() - t0, "world_size": self.world_size}
        self.history.append(info)
        self.step_count += 1
        return info

    def train(self, steps: int, *, time_budget: float | None = None,
              checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 0,
              callback: Callable[[dict[str, float]], None] | None = None) -> list[dict]:
        """Run up to ``steps`` steps (fewer if ``time_budget`` seconds run out); write
        ``checkpoint`` every ``checkpoint_every`` steps and at the end.  With several ranks the
        time budget is checked on every rank and all stop when one runs out."""
        t0 = time.perf_counter()
        out = []
        for _ in range(int(steps)):
            if time_budget is not None and ddp.any_rank(time.perf_counter() - t0 > time_budget,
                                                        self.world_size, self._device()):
                break
            info = self.step()
            out.append(info)
            if callback is not None:
                callback(info)
            if checkpoint and checkpoint_every and self.step_count % checkpoint_every == 0:
                self.save(checkpoint)
        if checkpoint:
            self.save(checkpoint)
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write model, optimiser, step and history atomically (:func:`write_checkpoint`); with
        several ranks only rank 0 writes, and every rank waits for it (barrier)."""
        if self.rank == 0:
            write_checkpoint(path, {
                "meta": checkpoint_meta(self.model, self.config), "step": self.step_count,
                "world_size": self.world_size, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "history": self.history})
        ddp.barrier(self.world_size)
        return Path(path)

    def load(self, path: str | os.PathLike) -> Trainer:
        """Resume from a checkpoint written by :meth:`save` for the same model architecture,
        group and lattice; raises :class:`ConfigError` otherwise."""
        state = read_checkpoint(path, checkpoint_meta(self.model, self.config))
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        self.history = list(state["history"])
        return self
