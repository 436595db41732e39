"""Carries a seed sweep (QCD_BRIDGE_TEST_SEED_SHIFT) into the Python subprocesses that tests
start (CLI runs, torchrun ranks): tests/conftest.py puts this folder on PYTHONPATH.  Nothing is
imported here: torch and numpy are patched when (and if) the subprocess imports them."""

import os

if int(os.environ.get("QCD_BRIDGE_TEST_SEED_SHIFT", "0")):
    import importlib.abc
    import sys

    class _AfterImport(importlib.abc.MetaPathFinder):
        """Patches the seeds once torch and numpy have both been imported."""

        def find_spec(self, name, path=None, target=None):
            if name not in ("torch", "numpy") or "seed_shift" in sys.modules:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            loader = spec.loader
            exec_module = loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                if "torch" in sys.modules and name == "torch":
                    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
                    from seed_shift import install

                    install()

            loader.exec_module = exec_and_patch
            return spec

    import importlib.util

    sys.meta_path.insert(0, _AfterImport())
