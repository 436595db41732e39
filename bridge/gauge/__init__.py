"""Gauge fields and pure-gauge quantities: starts and gauge transformations (:mod:`.fields`),
plaquettes, staples, the clover field strength, ``MesPlq`` and the Polyakov loop
(:mod:`.loops`), the Wilson gauge action and its force (:mod:`.wilson`)."""

from __future__ import annotations

from .fields import gauge_transform, random_gauge, random_gauge_transformation, unit_gauge
from .loops import (
    MesPlq,
    clover_field_strength,
    clover_planes,
    link_trace,
    mesplq,
    plaquette_field,
    plaquette_loops,
    plaquette_traces,
    polyakov_loop,
    seed_plaquette,
    staple,
)
from .wilson import wilson_action, wilson_force, wilson_force_reference

__all__ = [
    "unit_gauge",
    "random_gauge",
    "random_gauge_transformation",
    "gauge_transform",
    "plaquette_field",
    "plaquette_traces",
    "staple",
    "wilson_action",
    "wilson_force",
    "wilson_force_reference",
    "plaquette_loops",
    "clover_planes",
    "clover_field_strength",
    "MesPlq",
    "mesplq",
    "seed_plaquette",
    "polyakov_loop",
    "link_trace",
]
