"""Shared helpers of the optional native (C++) CPU kernels (bridge/fermions/_native.py,
bridge/_native_gauge.py): the environment switch, the cache directory of the builds and the
build-on-first-use with one warning and a torch fallback when the build fails.

Each kernel module keeps its own state dict ``{"module", "tried", "seconds", "error"}`` and
calls :func:`build` on it the first time the kernel is needed (never at import).

Cache: one directory per kernel source, CPU (the build uses ``-march=native``) and torch/Python
install (``{root}/{name}_{cpu}_{env}``, ``root`` = ``TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``), so that two installs sharing a home directory (a virtual
environment next to the system Python) never rebuild each other's library.  A directory whose
key file matches the source is loaded directly, without running the build tool; otherwise the
first build prints one line to stderr saying what is compiled and for about how long.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
import warnings

_FLAGS = ["-O3", "-march=native", "-fopenmp"]
_KEY_FILE = "qcd_bridge.key"
BUILD_SECONDS_HINT = "about 30 s"
"""What a first build costs on one core of the project's CI machines (measured: 23-27 s)."""

ENV = "QCD_BRIDGE_NATIVE"
"""Environment variable: ``0`` (or ``false``/``no``/``off``) disables the native kernels."""


def new_state() -> dict[str, object]:
    return {"module": None, "tried": False, "seconds": None, "error": None}


def enabled() -> bool:
    """False when ``QCD_BRIDGE_NATIVE`` is ``0``/``false``/``no``/``off``."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cpu_tag() -> str:
    """A short hash of the CPU model and flags: the build uses ``-march=native``, so a cache
    shared by different machines (a network home directory) must not load another CPU's build."""
    info = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    info += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return hashlib.sha1(info.encode()).hexdigest()[:10]


def env_tag() -> str:
    """A short hash of the torch and Python install and the compiler the build links against:
    a library built for one install must not be loaded (or rebuilt over) by another."""
    import sysconfig

    import torch

    info = "|".join([
        torch.__version__, os.path.dirname(os.path.realpath(torch.__file__)), sys.version,
        sysconfig.get_paths().get("include", ""), os.environ.get("CXX", "c++"),
    ])
    return hashlib.sha1(info.encode()).hexdigest()[:8]


def build_root() -> str:
    """``TORCH_EXTENSIONS_DIR`` or torch's default ``~/.cache/torch_extensions`` (Linux)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return root
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "torch_extensions")


def source_key(source: str, functions: list[str]) -> str:
    """What a cached library must have been built from (source, exported functions, flags)."""
    return hashlib.sha1("\0".join([source, *functions, *_FLAGS]).encode()).hexdigest()


def _load_cached(full: str, directory: str, key: str) -> object | None:
    """The library in ``directory`` when its key file says it was built from ``key``."""
    import importlib.util

    lib = os.path.join(directory, f"{full}.so")
    try:
        with open(os.path.join(directory, _KEY_FILE)) as fh:
            if fh.read().strip() != key or not os.path.isfile(lib):
                return None
    except OSError:
        return None
    import torch  # noqa: F401 - the library links against libtorch

    spec = importlib.util.spec_from_file_location(full, lib)
    if spec is None or spec.loader is None:
        return None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(state: dict, name: str, source: str, functions: list[str], what: str,
          stacklevel: int = 4) -> object | None:
    """Load ``source`` from the cache (see the module docstring) or build it as
    ``{name}_{cpu_tag}_{env_tag}`` with :func:`torch.utils.cpp_extension.load_inline` (saying
    so in one line on stderr); record the module, the seconds spent or the error in ``state``.
    A failure warns once (``RuntimeWarning`` naming ``what``) and returns None: the caller uses
    its torch path."""
    state["tried"] = True
    t0 = time.perf_counter()
    try:
        full = f"{name}_{cpu_tag()}_{env_tag()}"
        directory = os.path.join(build_root(), full)
        key = source_key(source, functions)
        mod = _load_cached(full, directory, key)
        if mod is None:
            from torch.utils.cpp_extension import load_inline

            os.makedirs(directory, exist_ok=True)
            print(f"qcd-bridge: compiling the native {what} (C++, once per machine and torch "
                  f"install, {BUILD_SECONDS_HINT}) into {directory}", file=sys.stderr, flush=True)
            mod = load_inline(
                name=full,
                cpp_sources=[source],
                functions=functions,
                extra_cflags=_FLAGS,
                extra_ldflags=["-fopenmp"],
                build_directory=directory,
                verbose=False,
            )
            with open(os.path.join(directory, _KEY_FILE), "w") as fh:
                fh.write(key + "\n")
    except Exception as exc:  # noqa: BLE001 - any build/load failure falls back to torch
        state["error"] = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            f"qcd-bridge: the native {what} could not be built; using the torch "
            f"path ({str(state['error'])[:300]}). Set {ENV}=0 to silence this.",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
        return None
    state["seconds"] = time.perf_counter() - t0
    state["module"] = mod
    return mod


def ready(state: dict, name: str, source: str, functions: list[str], what: str) -> bool:
    """Whether a kernel is enabled (:func:`enabled`) and built: builds it with :func:`build` on
    the first call (stack level of the warning: the caller of the kernel module's
    ``available``)."""
    if not enabled():
        return False
    if not state["tried"]:
        build(state, name, source, functions, what, stacklevel=5)
    return state["module"] is not None
