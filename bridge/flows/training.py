"""Self-training of flow models by the reverse Kullback-Leibler divergence
(arXiv:2003.06413, sec. IV; arXiv:2101.08176, sec. 3.3).

With ``p(U) = exp(-S(U)) / Z`` and samples ``U ~ q`` (no training data)::

    KL(q || p) - log Z = E_q[log q(U) + S(U)]                       (the loss, "free energy")

Gradient estimators:

* ``reparam`` (default): ``U = f_theta(U_0)``, ``U_0 ~ Haar``; differentiate
  ``mean(log q(U) + S(U))`` through the flow (needs a differentiable action).
* ``path`` (path derivative, "sticking the landing", arXiv:1703.09194): ``reparam`` without the
  score term ``grad_theta log q_theta(U)|_U`` (mean zero): ``log q`` is evaluated with the
  parameters held fixed and only the sample differentiated; zero variance where ``q = p``.
  Needs a model with ``supports_path_gradient`` (``sample(..., path_gradient=True)``), so far
  :class:`~bridge.flows.PlaquetteFlow`; others are refused.
* ``reinforce`` (score function): ``grad KL = E_q[(log q - log p - b) grad log q(U)]`` with
  ``U`` detached and the baseline ``b`` the batch mean (arXiv:2101.08176, sec. 3.3), through
  :meth:`GaugeFlow.log_prob`; the action is evaluated without gradient.

Optimiser: Adam with ``eps = 1e-2`` by default (the value of arXiv:2003.06413's code),
gradient clipping by value then by norm, learning rate ``lr * schedule(step)`` (``constant``,
``cosine`` to ``lr_min``, optional linear warm-up).  Live metrics per step: loss, its variance,
the effective sample size ``ESS = (sum w)^2 / (N sum w^2)`` of ``w = p / q`` and the
independence-Metropolis acceptance estimated on the batch.

Randomness and checkpoints: the batch of step ``n`` is drawn from the counter-based stream
``rng_key(seed, n)`` (:mod:`bridge.rng`), so model, optimiser state and step number are the
complete state; checkpoints are written atomically (temporary file, fsync, rename) and a resumed
run continues bit for bit.

Data parallelism (``torch.distributed``, e.g. under ``torchrun``; gloo on CPU, nccl on GPU; see
:func:`init_distributed`): when a process group is initialised before the :class:`Trainer` is
built, every rank draws its own batch of ``config.batch`` samples from the stream
``rng_key(seed, n, 2, rank)``, the gradients are averaged over ranks with one ``all_reduce``
(so a step equals a single-process step on the concatenated batch: the loss is a mean),
the parameters are broadcast from rank 0 at construction, the log-weights are gathered
(``all_gather``) so that loss, its variance, ESS and acceptance are those of the global batch,
and only rank 0 writes checkpoints.  Importing this module initialises nothing.
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
from .models import GaugeFlow

__all__ = ["TrainConfig", "Trainer", "ess", "imh_acceptance", "init_distributed",
           "reverse_kl_loss", "reweighted_mean"]


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


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise the default ``torch.distributed`` process group from the ``torchrun``
    environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) if it is not
    initialised yet; ``backend`` defaults to nccl when CUDA is available, else gloo.  Returns
    ``(rank, world_size)``; ``(0, 1)`` without a distributed environment (nothing is done)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl", "mpi"):
        raise ConfigError(f"backend: expected 'gloo', 'nccl' or 'mpi', got {backend!r}")
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def rank_device(device: str | torch.device, world: int = 1) -> torch.device:
    """The torch device of this process: ``device`` itself, except that a bare ``cuda`` under a
    process group of ``world > 1`` ranks becomes ``cuda:LOCAL_RANK`` (one GPU per rank, as
    ``torchrun`` numbers them; ``RANK`` when ``LOCAL_RANK`` is unset).  Raises
    :class:`ConfigError` for an unknown device or CUDA where there is none."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device: expected a torch device such as 'cpu' or 'cuda', got "
                          f"{device!r} ({exc})") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {device!r} requested, but this machine (or this torch "
                              f"build) has no CUDA device; use --device cpu")
        if dev.index is None and world > 1:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK",
                                                          os.environ.get("RANK", "0"))))
    return dev


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


class Trainer:
    """Reverse-KL self-training of a :class:`GaugeFlow` (module docstring).

    ``action`` defaults to the Wilson gauge action at ``config.beta``.  ``step()`` runs one
    optimisation step and returns its metrics; ``train(...)`` loops with an optional time budget
    and periodic atomic checkpoints; :meth:`save` / :meth:`load` write and resume.
    """

    def __init__(self, model: GaugeFlow, config: TrainConfig,
                 action: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        Lattice(config.nrow)
        if len(config.nrow) != model.nd:
            raise ConfigError(f"nrow: the model is {model.nd}-dimensional, got {config.nrow}")
        if config.estimator == "reinforce":
            _check_score_estimator(model)
        if config.estimator == "path":
            _check_path_estimator(model)
        self.model, self.config = model, config
        self.action = action or (lambda u: wilson_action(u, config.beta))
        self.opt = torch.optim.Adam(model.parameters(), lr=config.lr, eps=config.adam_eps,
                                    betas=config.adam_betas)
        self.step_count = 0
        self.history: list[dict[str, float]] = []
        self.rank, self.world_size = 0, 1
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if self.world_size > 1:
            with torch.no_grad():
                for p in self.model.parameters():
                    dist.broadcast(p.data, src=0)

    # -- data parallelism ---------------------------------------------------------------------
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

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenation over ranks (rank order) of the equally long 1D tensors ``x``."""
        if self.world_size == 1:
            return x
        import torch.distributed as dist

        x = x.detach().contiguous().to(self._device())
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x)
        return torch.cat(parts)

    def _global_mean(self, f: torch.Tensor) -> torch.Tensor:
        return self._gather(f).mean().to(f.device)

    def _allreduce_grads(self) -> None:
        """Average the gradients over ranks with one flat ``all_reduce``."""
        import torch.distributed as dist

        params = list(self.model.parameters())
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        i = 0
        for p in params:
            n = p.numel()
            p.grad = flat[i:i + n].view_as(p).clone()
            i += n

    def _any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def step(self) -> dict[str, float]:
        cfg = self.config
        t0 = time.perf_counter()
        lr = cfg.lr_at(self.step_count)
        for group in self.opt.param_groups:
            group["lr"] = lr
        gen = self.batch_generator(self.step_count)
        self.opt.zero_grad(set_to_none=True)
        surrogate, logw = reverse_kl_loss(
            self.model, self.action, cfg.batch, cfg.nrow, gen=gen, estimator=cfg.estimator,
            baseline=self._global_mean if self.world_size > 1 else None, device=self._device())
        logw = self._gather(logw)
        loss = float(-logw.mean())
        if not (math.isfinite(loss) and bool(torch.isfinite(logw).all())):
            raise PhysicsError(f"step {self.step_count}: the loss is not finite ({loss}); "
                               f"training stopped, the last checkpoint is kept unchanged")
        surrogate.backward()
        if self.world_size > 1:
            self._allreduce_grads()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, cfg.clip_value)
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm or float("inf")))
        if not math.isfinite(gnorm):
            raise PhysicsError(f"step {self.step_count}: the gradient is not finite; training "
                               f"stopped, the last checkpoint is kept unchanged")
        self.opt.step()
        acc = imh_acceptance(logw, generator(rng_key(cfg.seed, self.step_count, 1)))
        info = {"step": self.step_count, "loss": loss, "loss_var": float(logw.var()),
                "ess": ess(logw), "acceptance": acc, "lr": lr, "grad_norm": gnorm,
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
            if time_budget is not None and self._any(time.perf_counter() - t0 > time_budget):
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

    # -- checkpoints --------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["nrow"] = list(self.config.nrow)
        cfg["adam_betas"] = list(self.config.adam_betas)
        return {"format": "qcd-bridge-flow-checkpoint", "version": 1,
                "model": self.model.config, "group": self.model.group.name,
                "nd": self.model.nd, "train": cfg}

    def save(self, path: str | os.PathLike) -> Path:
        """Write model, optimiser, step and history atomically (temporary file + rename); with
        several ranks only rank 0 writes, and every rank waits for it (barrier)."""
        path = Path(path)
        if self.world_size > 1:
            import torch.distributed as dist

            if self.rank == 0:
                self._write(path)
            dist.barrier()
            return path
        return self._write(path)

    def _write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        state = {"meta": self._meta(), "step": self.step_count, "world_size": self.world_size,
                 "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "history": self.history}
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def load(self, path: str | os.PathLike) -> Trainer:
        """Resume from a checkpoint written by :meth:`save` for the same model architecture,
        group and lattice; raises :class:`ConfigError` otherwise."""
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a config error
            raise ConfigError(f"checkpoint {path}: cannot read it ({exc})") from exc
        meta = state.get("meta", {}) if isinstance(state, dict) else {}
        if meta.get("format") != "qcd-bridge-flow-checkpoint":
            raise ConfigError(f"checkpoint {path}: not a qcd-bridge flow checkpoint")
        mine = self._meta()
        for key in ("group", "nd", "model"):
            if meta.get(key) != mine[key]:
                raise ConfigError(f"checkpoint {path}: {key} is {meta.get(key)!r}, but this run "
                                  f"has {mine[key]!r}")
        if list(meta["train"]["nrow"]) != list(self.config.nrow):
            raise ConfigError(f"checkpoint {path}: lattice {tuple(meta['train']['nrow'])} "
                              f"differs from this run's {tuple(self.config.nrow)}")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        self.history = list(state["history"])
        return self
