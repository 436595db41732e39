"""Shared helpers of the optional native (C++) CPU kernels (bridge/fermions/_native.py,
bridge/_native_gauge.py): the environment switch, the CPU tag of the build cache and the
build-on-first-use with one warning and a torch fallback when the build fails.

Each kernel module keeps its own state dict ``{"module", "tried", "seconds", "error"}`` and
calls :func:`build` on it the first time the kernel is needed (never at import).
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
import warnings

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


def build(state: dict, name: str, source: str, functions: list[str], what: str,
          stacklevel: int = 4) -> object | None:
    """Build (or load from torch's extension cache) ``source`` as ``{name}_{cpu_tag}`` with
    :func:`torch.utils.cpp_extension.load_inline`; record the module, the seconds spent or the
    error in ``state``.  A failure warns once (``RuntimeWarning`` naming ``what``) and returns
    None: the caller uses its torch path."""
    state["tried"] = True
    t0 = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load_inline

        mod = load_inline(
            name=f"{name}_{cpu_tag()}",
            cpp_sources=[source],
            functions=functions,
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
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
