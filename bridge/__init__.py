"""qcd-bridge: gauge-equivariant normalizing flows for lattice QCD, coupled exactly to
Chroma/QUDA workflows.

Importing the package has no side effects (no MPI/QUDA start-up, no argv parsing).  Packages, in
the direction of data flow (docs/architecture.md): base modules (lattice, groups, ...), gauge,
solvers, fermions, mcmc, flows, observables, analysis, io, chroma, jobs, cli; testing is the
public exactness kit.
"""

from __future__ import annotations

__version__ = "0.1.0"

# the public core, imported on first use (PEP 562) so that `import bridge` stays light: the
# command line builds its parser without torch
_LAZY = {
    "mesplq": "gauge", "polyakov_loop": "gauge", "random_gauge": "gauge", "unit_gauge": "gauge",
    "wilson_action": "gauge", "wilson_force": "gauge",
    "SU2": "groups", "SU3": "groups", "U1": "groups", "Group": "groups", "get_group": "groups",
    "Lattice": "lattice",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "__version__",
    "Lattice",
    "Group",
    "U1",
    "SU2",
    "SU3",
    "get_group",
    "unit_gauge",
    "random_gauge",
    "wilson_action",
    "wilson_force",
    "mesplq",
    "polyakov_loop",
]
