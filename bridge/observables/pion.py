"""Point-to-all Wilson propagators and the pion two-point function.

Definitions (arXiv:2208.03832, sec. 3.2; docs/conventions.md)
--------------------------------------------------------------
With the Wilson(-clover) operator of :class:`bridge.fermions.WilsonDirac` and a point source at
``y`` (default the origin), the propagator ``S(x; y) = D^{-1}(x, y)`` is a ``4 Nc x 4 Nc`` matrix
per sink site (spin-colour sink index, spin-colour source index).  The pion correlator is::

    C_pi(t) = sum_{x_spatial} Tr[S(x, y_t + t; y) S(x, y_t + t; y)^dag]
            = sum_{x_spatial} sum_{s, c, s', c'} |S(x, y_t + t; y)_{(s c), (s' c')}|^2,

i.e. the ``Gamma = gamma_5`` meson ``sum_x Tr[(g5 S g5)^dag g5 S g5]`` after gamma_5-hermiticity
``S^dag = g5 S g5`` (basis independent).  Time is counted from the source time slice, as in
Chroma's ``mesons_w.cc`` (``t_eff = (t - t0 + Lt) % Lt``).  It is positive, and symmetric under
``t -> Lt - t`` on average over configurations (exactly so under time reflection of the
configuration: ``C_pi[U^T](t) = C_pi[U](Lt - t)``, tested).

Normalisations: ``normalisation="kappa"`` uses ``D_kappa = 1 - kappa H`` (``S_kappa = D^{-1}``);
``"chroma"`` uses Chroma's ``M = D_kappa / (2 kappa)``, so Chroma's propagator is
``2 kappa S_kappa`` and ``C_pi^chroma = (2 kappa)^2 C_pi^kappa``.  Chroma's ``HADRON_SPECTRUM``
meson ``mesprop`` with ``gamma_value = 15`` (point source, point sink) is ``C_pi^chroma``
(its imaginary part vanishes for this channel); the seed paper's correlator is the same
quantity in the kappa normalisation (``D^{-1}``), sec. 3.2 of arXiv:2208.03832.

The 12 spin-colour sources are solved together: :class:`~bridge.fermions.WilsonDirac` folds
``R = 12`` right-hand sides per configuration into its batch axis (config-major), so one
(batched) solver call does all ``12 * batch`` solves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..fermions import WilsonDirac
from ..fermions.gamma import NS
from ..lattice import Lattice
from ..solvers import CG, Solver, SolveStats

__all__ = [
    "point_source",
    "point_source_propagator",
    "point_propagator",
    "slice_sum",
    "timeslice_norm2",
    "pion_correlator",
]

_NORMALISATIONS = ("kappa", "chroma")


def _check_source(lat: Lattice, source: Sequence[int]) -> tuple[int, ...]:
    try:
        y = tuple(int(c) for c in source)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"source: expected integer coordinates (x, y, z, t), got {source!r}"
        ) from exc
    if len(y) != lat.nd or any(not 0 <= c < n for c, n in zip(y, lat.nrow, strict=True)):
        raise ValueError(
            f"source: expected {lat.nd} coordinates (x, y, z, t) inside the lattice {lat.nrow}, "
            f"got {tuple(source)}"
        )
    return y


def point_source(
    op: WilsonDirac, source: Sequence[int] = (0, 0, 0, 0)
) -> torch.Tensor:
    """The ``4 Nc`` unit point sources at ``source = (x, y, z, t)`` for every configuration of
    ``op``: ``b[batch * 4 Nc, t, z, y, x, 4, Nc]`` (config-major, source index ``s * Nc + c``)."""
    y = _check_source(op.lattice, source)
    nc = op.nc
    r = NS * nc
    b = torch.zeros(op.field_shape(r), dtype=op.dtype, device=op.device)
    b5 = b.view(op.batch, r, *op.lattice.shape, NS, nc)
    site = tuple(reversed(y))  # lattice axes are (t, z, y, x)
    idx = torch.arange(r, device=op.device)
    b5[(slice(None), idx, *site, idx // nc, idx % nc)] = 1.0
    return b


def point_source_propagator(
    nrow: Sequence[int],
    source: Sequence[int] = (0, 0, 0, 0),
    nc: int = 3,
    *,
    dtype: torch.dtype = torch.complex128,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The point source itself in the propagator layout ``S[1, t, z, y, x, s, c, s', c']``: the
    unit spin-colour matrix at ``source = (x, y, z, t)``, zero elsewhere (Chroma's
    ``POINT_SOURCE`` as a ``LatticePropagator``)."""
    lat = Lattice(tuple(nrow))
    y = _check_source(lat, source)
    r = NS * nc
    s = torch.zeros(1, *lat.shape, NS, nc, NS, nc, dtype=dtype, device=device)
    s[(0, *reversed(y))] = torch.eye(r, dtype=dtype, device=device).reshape(NS, nc, NS, nc)
    return s


def slice_sum(density: torch.Tensor) -> torch.Tensor:
    """Sum over the spatial sites per time slice: ``[b, t, z, y, x] -> [b, t]``."""
    return density.flatten(2).sum(2)


def timeslice_norm2(s: torch.Tensor) -> torch.Tensor:
    """``sum_x |S(x, t)|^2`` over sites and spin-colour indices per time slice, ``[b, Lt]``
    (absolute time; Chroma's ``sumMulti(localNorm2(prop), timeslice)``)."""
    return slice_sum((s.abs() ** 2).flatten(5).sum(5))


def point_propagator(
    U: torch.Tensor,
    kappa: float,
    *,
    source: Sequence[int] = (0, 0, 0, 0),
    c_sw: float = 0.0,
    boundary: Sequence[complex] = (1, 1, 1, -1),
    normalisation: str = "kappa",
    solver: Solver | None = None,
    method: str = "eo",
) -> tuple[torch.Tensor, SolveStats]:
    """Point-to-all propagator ``S[batch, t, z, y, x, s, c, s', c']`` (sink spin-colour ``s, c``,
    source ``s', c'``) and the solver statistics.

    ``normalisation="kappa"``: ``S = D_kappa^{-1}``; ``"chroma"``: ``S = M^{-1} = 2 kappa
    D_kappa^{-1}``.  ``solver`` defaults to ``CG(tol=1e-12)`` (Chroma's ``RsdCG`` of the
    reference run); ``method`` is passed to :meth:`WilsonDirac.solve` (``"eo"``: CG on the
    even-odd Schur normal equations).
    """
    if normalisation not in _NORMALISATIONS:
        raise ValueError(
            f"normalisation: expected one of {_NORMALISATIONS}, got {normalisation!r}"
        )
    op = WilsonDirac(U, kappa, c_sw=c_sw, boundary=boundary, normalisation="kappa")
    b = point_source(op, source)
    x, stats = op.solve(b, solver=solver if solver is not None else CG(tol=1e-12), method=method)
    if normalisation == "chroma":
        x = x * (2.0 * op.kappa)
    nc = op.nc
    x = x.reshape(op.batch, NS, nc, *op.lattice.shape, NS, nc)  # [B, s', c', *L, s, c]
    nd = op.lattice.nd
    perm = (0, *range(3, 3 + nd), 3 + nd, 4 + nd, 1, 2)
    return x.permute(perm).contiguous(), stats


def pion_correlator(
    U: torch.Tensor,
    kappa: float,
    *,
    source: Sequence[int] = (0, 0, 0, 0),
    c_sw: float = 0.0,
    boundary: Sequence[complex] = (1, 1, 1, -1),
    normalisation: str = "kappa",
    solver: Solver | None = None,
    method: str = "eo",
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SolveStats]:
    """Pion correlator ``C_pi(t) = sum_x Tr[S S^dag]``, shape ``[batch, Lt]`` (float), ``t``
    counted from the source time slice.  Arguments as :func:`point_propagator`;
    ``normalisation="chroma"`` reproduces Chroma's ``mesprop`` for ``gamma_value = 15``.
    With ``return_stats`` also the solver statistics."""
    lat = Lattice.of(U)
    y = _check_source(lat, source)
    s, stats = point_propagator(
        U, kappa, source=y, c_sw=c_sw, boundary=boundary, normalisation=normalisation,
        solver=solver, method=method,
    )
    corr = torch.roll(timeslice_norm2(s), shifts=-y[-1], dims=1)
    return (corr, stats) if return_stats else corr
