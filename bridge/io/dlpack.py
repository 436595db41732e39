"""torch <-> cupy through DLPack: the same device memory seen from the other library, no copy.

The flows and kernels are torch code; a cupy array (from PyQUDA's ``backend="cupy"``, or any
CUDA code that speaks cupy) enters them as ``as_torch(a)`` and a result leaves as
``to_cupy(t)``, both views of one buffer (DLPack, the array-interchange protocol both libraries
implement).  Writes through one are seen by the other.  numpy arrays and CPU tensors pass through
``as_torch`` as views too (``torch.from_numpy``).  cupy is imported only when a conversion to it
is asked for; without it the error names ``pip install qcd-bridge[gpu]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["GPU_INSTALL_HINT", "require_cupy", "as_torch", "to_cupy"]

GPU_INSTALL_HINT = "pip install qcd-bridge[gpu] (cupy for CUDA 12; docs/quda.md)"


def require_cupy() -> Any:
    """The ``cupy`` module, or a :class:`ConfigError` naming the extra to install."""
    try:
        import cupy
    except ImportError as exc:  # also a cupy wheel that finds no CUDA runtime
        raise ConfigError(f"cupy interop needs cupy, which cannot be imported ({exc}); "
                          f"install it with {GPU_INSTALL_HINT}") from None
    return cupy


def as_torch(a: Any) -> torch.Tensor:
    """A torch view of ``a`` (torch tensor: itself; numpy: ``torch.from_numpy``; anything with
    ``__dlpack__``, e.g. a cupy array: ``torch.from_dlpack``), same device, no copy."""
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    if hasattr(a, "__dlpack__"):
        return torch.from_dlpack(a)
    raise ConfigError(f"as_torch: expected a torch tensor, a numpy array or a DLPack array "
                      f"(cupy), got {type(a).__name__}")


def to_cupy(t: torch.Tensor) -> Any:
    """A cupy view of the CUDA tensor ``t`` (``cupy.from_dlpack``), no copy.  A CPU tensor is
    refused (cupy arrays live on the GPU: move it with ``t.cuda()`` first)."""
    if not isinstance(t, torch.Tensor):
        raise ConfigError(f"to_cupy: expected a torch tensor, got {type(t).__name__}")
    cupy = require_cupy()
    if t.device.type != "cuda":
        raise ConfigError(f"to_cupy: expected a CUDA tensor (cupy arrays live on the GPU), got "
                          f"one on {t.device}; move it with .cuda() first")
    return cupy.from_dlpack(t.detach())
