"""Seed sweeps: ``QCD_BRIDGE_TEST_SEED_SHIFT=k`` moves every integer seed that the tests and the
package draw (torch generators, ``torch.manual_seed``, numpy's ``default_rng``) to another
stream, so that a statistical threshold can be shown to hold beyond the seed it was written
with (``tests/sweep.py`` runs the suite for many k).  k = 0 changes nothing."""

from __future__ import annotations

import os

STRIDE = 1_000_003


def shift() -> int:
    return int(os.environ.get("QCD_BRIDGE_TEST_SEED_SHIFT", "0"))


def shifted(seed):
    if isinstance(seed, int) and not isinstance(seed, bool):
        return (seed + shift() * STRIDE) % (1 << 63)
    return seed


def install() -> None:
    """Patch torch and numpy once per process (idempotent)."""
    import numpy as np
    import torch

    if getattr(torch.Generator, "_qcd_bridge_shifted", False):
        return

    class ShiftedGenerator(torch.Generator):
        _qcd_bridge_shifted = True

        def manual_seed(self, seed):
            return super().manual_seed(shifted(seed))

    torch_manual_seed, numpy_default_rng = torch.manual_seed, np.random.default_rng
    torch.Generator = ShiftedGenerator
    torch.manual_seed = lambda seed: torch_manual_seed(shifted(seed))
    np.random.default_rng = lambda seed=None: numpy_default_rng(shifted(seed))
    torch.manual_seed(0)
