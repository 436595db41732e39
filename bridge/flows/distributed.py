"""Data parallelism for flow training with ``torch.distributed`` (gloo on CPU, nccl on GPU).

:func:`init_distributed` starts the process group from the ``torchrun`` environment and
:func:`rank_device` picks this rank's device; the collectives below are what
:class:`~bridge.flows.training.Trainer` uses: averaged gradients (one flat ``all_reduce``),
gathered log-weights, a shared stop decision, parameters broadcast from rank 0.  Every function
is the identity (or a no-op) in a single process; importing this module initialises nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch

from ..errors import ConfigError

__all__ = ["init_distributed", "rank_device", "rank_and_world", "broadcast_parameters",
           "gather", "allreduce_mean_grads", "any_rank", "barrier"]


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


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_parameters(params: Iterable[torch.Tensor], world: int) -> None:
    """Overwrite the parameters with rank 0's (an identical start on every rank)."""
    if world > 1:
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)


def gather(x: torch.Tensor, world: int, device: torch.device) -> torch.Tensor:
    """Concatenation over ranks (rank order) of the equally long 1D tensors ``x``."""
    if world == 1:
        return x
    import torch.distributed as dist

    x = x.detach().contiguous().to(device)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat(parts)


def allreduce_mean_grads(params: list[torch.Tensor], world: int) -> None:
    """Average the gradients over ranks with one flat ``all_reduce`` (a missing gradient counts
    as zero)."""
    if world == 1:
        return
    import torch.distributed as dist

    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    i = 0
    for p in params:
        n = p.numel()
        p.grad = flat[i:i + n].view_as(p).clone()
        i += n


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(world: int) -> None:
    """Wait for every rank (nothing in a single process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
