"""Gauge-equivariant normalizing flows (arXiv:2003.06413, 2008.05456, 2101.08176).

Sub-modules: :mod:`.masks` (which links and loops a coupling layer touches), :mod:`.splines`
(circular and interval rational-quadratic splines), :mod:`.spectral` (conjugation-equivariant
maps acting on eigenphases), :mod:`.layers` (coupling layers, context networks),
:mod:`.residual` (residual staple layers: masked trivialising-flow steps with exact
log-Jacobians), :mod:`.models` (Haar prior + layers), :mod:`.analytic` (the exact
plaquette-variable proposal of 2D U(1)) and :mod:`.plaquette` (a trained plaquette density
with the torus constraint of 2D U(1) built in).  See docs/flows.md.
"""

from __future__ import annotations

from .analytic import U1PlaquetteProposal
from .layers import ContextNet, GaugeCouplingLayer, PeriodicConv
from .masks import LinkMask, MaskError, check_mask_rules, mask_cycle
from .models import ARCHITECTURES, GaugeFlow, haar_log_prob, make_flow
from .plaquette import PlaquetteFlow
from .residual import ResidualStapleLayer, StapleMask, link_staples, staple_mask_cycle
from .spectral import spectral_map
from .splines import circular_rqs, interval_rqs

__all__ = ["LinkMask", "MaskError", "check_mask_rules", "mask_cycle", "circular_rqs",
           "interval_rqs", "spectral_map", "PeriodicConv", "ContextNet", "GaugeCouplingLayer",
           "GaugeFlow", "make_flow", "haar_log_prob", "U1PlaquetteProposal", "ARCHITECTURES",
           "ResidualStapleLayer", "StapleMask", "link_staples", "staple_mask_cycle",
           "PlaquetteFlow"]
