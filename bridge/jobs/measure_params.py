"""The options of ``qcd-bridge measure`` as data: the observable names and the keywords the
observables take, with their command-line flags.  No imports beyond the standard library, so
that the command line builds its parser without torch (tests/test_measure_cli.py checks the names
against :data:`bridge.observables.OBSERVABLES`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["OBSERVABLE_NAMES", "ParamFlag", "PARAM_FLAGS"]

OBSERVABLE_NAMES = ("plaquette", "polyakov", "topological_charge", "energy_density", "pion")
"""The names of :data:`bridge.observables.OBSERVABLES`."""


@dataclass(frozen=True)
class ParamFlag:
    """A keyword of the registry's observables as a command-line option: ``flag``, the value
    ``kind`` (``float``, ``int``, ``str``, ``"switch"`` (no value), ``"int4"``/``"float4"``
    (four values x y z t)) and the help text."""

    flag: str
    kind: Any
    help: str


PARAM_FLAGS: dict[str, ParamFlag] = {
    "flow_time": ParamFlag("--flow-time", float,
                           "Wilson-flow time t/a^2 before measuring (0: no flow)"),
    "eps": ParamFlag("--eps", float, "Wilson-flow RK3 step size"),
    "definition": ParamFlag("--definition", str,
                            "discretisation: clover/plaquette (E), clover/geometric (Q)"),
    "traceless": ParamFlag("--traceless", "switch", "remove the trace of the clover F"),
    "normalisation": ParamFlag("--normalisation", str, "chroma or seed (plaquette, Polyakov "
                               "loop); kappa or chroma (pion)"),
    "mu": ParamFlag("--mu", int, "Polyakov-loop direction (default: time)"),
    "kappa": ParamFlag("--kappa", float, "Wilson hopping parameter (pion)"),
    "c_sw": ParamFlag("--c-sw", float, "clover coefficient (pion)"),
    "source": ParamFlag("--source", "int4", "pion point source x y z t"),
    "boundary": ParamFlag("--boundary", "float4",
                          "fermion boundary phases x y z t, e.g. 1 1 1 -1"),
}
"""Observable keyword -> its command-line option (``qcd-bridge measure``)."""
