"""Shared fixtures: devices, dtypes, seeded generators and the reference-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("QCD_BRIDGE_REFERENCE", REPO.parent / "shared" / "reference"))

# One intra-op thread: the suite's tensors are small, and spinning OpenMP threads on a loaded
# machine made 3x3 products up to 200x slower (QCD_BRIDGE_TEST_THREADS overrides).
torch.set_num_threads(int(os.environ.get("QCD_BRIDGE_TEST_THREADS", "1")))

# Property-based tests draw the same examples on every run unless asked otherwise, so CI is
# reproducible; `HYPOTHESIS_PROFILE=explore python -m pytest tests/test_io_fuzz.py` draws fresh
# random examples (and keeps failures in .hypothesis/) to look for new bugs.
try:
    from hypothesis import settings as _hsettings

    _hsettings.register_profile("ci", derandomize=True, database=None)
    _hsettings.register_profile("explore", derandomize=False)
    _hsettings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis comes with the test extras
    pass

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every kernel test runs on the CPU and, when present, on the GPU."""
    return torch.device(request.param)


@pytest.fixture(params=[torch.complex128, torch.complex64], ids=["f64", "f32"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture
def generator(device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(1234)


@pytest.fixture
def cpu_generator() -> torch.Generator:
    return torch.Generator().manual_seed(4321)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` (or ``$QCD_BRIDGE_REFERENCE``); skip visibly where it is absent."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data folder {REFERENCE} not found (set QCD_BRIDGE_REFERENCE)")
    return REFERENCE
