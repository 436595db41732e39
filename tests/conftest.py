"""Shared fixtures: devices, dtypes, seeded generators and the test-data folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import seed_shift
import torch

REPO = Path(__file__).resolve().parents[1]
# Reference files kept in the repository (provenance: tests/data/PROVENANCE.md).
DATA = Path(__file__).resolve().parent / "data"
# Files that may not be redistributed (no licence): tests marked `external` read them from here.
EXTERNAL_ENV = "QCD_BRIDGE_EXTERNAL_DATA"

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


# Seed sweep (tests/seed_shift.py): with QCD_BRIDGE_TEST_SEED_SHIFT=k every seed moves to another
# stream, here and in the subprocesses the tests start (through tests/seedshift/sitecustomize.py).
if seed_shift.shift():
    seed_shift.install()
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent / "seedshift"), os.environ.get("PYTHONPATH", "")])

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
def data_dir() -> Path:
    """``tests/data``: Chroma-written configurations, inputs, outputs and measured values."""
    return DATA


def external_file(name: str) -> Path:
    """A file of the folder named by ``$QCD_BRIDGE_EXTERNAL_DATA``; skip naming what is missing."""
    folder = os.environ.get(EXTERNAL_ENV)
    if not folder:
        pytest.skip(f"{name} is not redistributed with qcd-bridge: set {EXTERNAL_ENV} to a folder "
                    "holding it (see tests/data/PROVENANCE.md)")
    path = Path(folder) / name
    if not path.is_file():
        pytest.skip(f"{name} not found in {EXTERNAL_ENV}={folder}")
    return path
