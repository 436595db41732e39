"""Carries a seed sweep (QCD_BRIDGE_TEST_SEED_SHIFT) into the Python subprocesses that tests
start (CLI runs, torchrun ranks): tests/conftest.py puts this folder on PYTHONPATH."""

import os

if int(os.environ.get("QCD_BRIDGE_TEST_SEED_SHIFT", "0")):
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from seed_shift import install

    install()
