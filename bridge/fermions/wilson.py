"""The Wilson(-clover) Dirac operator ``D = s (A - kappa H)`` and its views for the solvers.

``H`` is the hopping term (:mod:`.hopping`), ``A = 1 + kappa c_sw C`` the site-diagonal part with
the Sheikholeslami-Wohlert term ``C`` (:mod:`.clover`, hep-lat/9605038), ``m = 1/(2 kappa) - 4``;
``s = 1`` in kappa normalisation, ``s = 1/(2 kappa)`` for Chroma's ``M = D / (2 kappa)``.
Fields are ``psi[batch * R, t, z, y, x, spin(4), colour(Nc)]`` with ``R`` right-hand sides per
configuration, config-major.  Fermion boundary phases are folded into the hopping links on the last
slice (Chroma's ``SIMPLE_FERMBC``).  Even-odd preconditioning: :mod:`.evenodd`; force kernels:
:mod:`.forces`.  Conventions and derivations: docs/fermions.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import PhysicsError
from ..lattice import Lattice
from . import _native
from .clover import clover_apply, clover_diagonal
from .evenodd import (
    EvenOdd,
    clover_logdet,
    schur5,
    schur_normal5,
    schur_normal_cg,
    schur_reconstruct5,
    schur_rhs5,
)
from .forces import clover_logdet_force, force_bilinear, schur_force_bilinear
from .gamma import NS
from .hopping import HopLinks, hop, hop_native, kernel_links, shared_geometry

__all__ = ["WilsonDirac", "OperatorView", "exact_logdet"]

_NORMALISATIONS = ("kappa", "chroma")


def _check_kappa(kappa: float) -> float:
    try:
        k = float(kappa)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"kappa: expected a positive number, got {kappa!r}") from exc
    if not math.isfinite(k) or k <= 0:
        raise PhysicsError(
            "kappa: expected a positive finite hopping parameter (m = 1/(2 kappa) - 4), "
            f"got {kappa!r}"
        )
    return k


def _check_boundary(boundary: Sequence[complex]) -> tuple[complex, ...]:
    try:
        b = tuple(complex(p) for p in boundary)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"boundary: expected 4 phases (x, y, z, t), e.g. (1, 1, 1, -1), got {boundary!r}"
        ) from exc
    if len(b) != 4:
        raise ValueError(f"boundary: expected 4 phases (x, y, z, t), got {len(b)}: {boundary!r}")
    for mu, p in enumerate(b):
        if not math.isfinite(p.real) or not math.isfinite(p.imag) or abs(abs(p) - 1.0) > 1e-12:
            raise ValueError(
                f"boundary: phase for direction {mu} must have modulus 1, got {p!r}"
            )
    return b


def _check_links(u: torch.Tensor) -> tuple[Lattice, int, int]:
    """The lattice, batch and Nc of a 4D complex128/complex64 gauge field."""
    lat = Lattice.of(u)
    batch, nc = lat.check_gauge(u)
    if lat.nd != 4:
        raise ValueError(f"U: Wilson fermions need Nd = 4, got Nd = {lat.nd} (nrow {lat.nrow})")
    if u.dtype not in (torch.complex128, torch.complex64):
        raise ValueError(f"U: expected complex128 or complex64, got {u.dtype}")
    return lat, batch, nc


def _check_c_sw(c_sw: float) -> float:
    try:
        c = float(c_sw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"c_sw: expected a real number, got {c_sw!r}") from exc
    if not math.isfinite(c):
        raise ValueError(f"c_sw: expected a finite clover coefficient, got {c_sw!r}")
    return c


def _check_normal(normalisation: str) -> str:
    if normalisation not in _NORMALISATIONS:
        raise ValueError(
            f"normalisation: expected one of {_NORMALISATIONS}, got {normalisation!r}"
        )
    return normalisation


def _fold_boundary(u: torch.Tensor, lat: Lattice, boundary: tuple[complex, ...]) -> torch.Tensor:
    """Links with the boundary phases folded in: ``U_mu(x) -> phase_mu U_mu(x)`` on the last
    slice ``x_mu = L_mu - 1`` (Chroma's ``SIMPLE_FERMBC``); ``u`` itself when all are 1."""
    if all(p == 1 for p in boundary):
        return u
    uph = u.clone()
    for mu, p in enumerate(boundary):
        if p != 1:
            uph[:, mu].narrow(1 + lat.axis(mu), lat.nrow[mu] - 1, 1).mul_(p)
    return uph


def _full_links(op: WilsonDirac) -> HopLinks:
    """``WilsonDirac._links``: the full-lattice hop links, built on first use (the even-odd
    native kernels do not need them, so the HMC's per-force operators never build them)."""
    if op._full_links is None:
        op._full_links = kernel_links(op._uph, op._uph, op._geo)
    return op._full_links


def _converted(op: WilsonDirac, dtype: torch.dtype) -> WilsonDirac:
    """:meth:`WilsonDirac.to` (one cached copy per dtype)."""
    if dtype == op.dtype:
        return op
    if dtype not in op._to_cache:
        op._to_cache[dtype] = WilsonDirac(op.U.to(dtype), op.kappa, c_sw=op.c_sw,
                                          boundary=op.boundary, normalisation=op.normalisation)
    return op._to_cache[dtype]


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.float32, torch.complex64):
        return torch.complex64
    if dtype in (torch.float64, torch.complex128):
        return torch.complex128
    raise ValueError(f"dtype: expected complex64 or complex128, got {dtype}")


def _batched(
    op: WilsonDirac, psi: torch.Tensor, eo: bool = False, name: str = "psi"
) -> torch.Tensor:
    """Validate ``psi[B*R, ...]`` against the operator and reshape it to ``[B, R, ...]``."""
    if not isinstance(psi, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(psi).__name__}")
    lshape = op.eo_shape(1)[1:] if eo else op.field_shape(1)[1:]
    kind = "one-parity [batch*R, t, z, y, x/2, 4, Nc]" if eo else "[batch*R, t, z, y, x, 4, Nc]"
    if psi.dim() != 7 or tuple(psi.shape[1:]) != lshape or psi.shape[0] % op.batch:
        raise ValueError(
            f"{name}: expected a {kind} field with trailing shape {lshape} and a batch that "
            f"is a multiple of the gauge batch {op.batch}, got shape {tuple(psi.shape)}"
        )
    if psi.dtype != op.dtype:
        raise ValueError(
            f"{name}: dtype {psi.dtype} does not match the operator's {op.dtype} "
            "(use op.to(dtype) for another precision)"
        )
    if psi.device != op.device:
        raise ValueError(f"{name}: device {psi.device} does not match the operator's {op.device}")
    return psi.reshape(op.batch, psi.shape[0] // op.batch, *psi.shape[1:]).contiguous()


def _flat(p5: torch.Tensor) -> torch.Tensor:
    """``[B, R, ...] -> [B*R, ...]`` (inverse of :meth:`WilsonDirac._in`)."""
    return p5.reshape(p5.shape[0] * p5.shape[1], *p5.shape[2:])


def _apply5(op: WilsonDirac, p5: torch.Tensor, dagger: bool = False) -> torch.Tensor:
    """``s (A - kappa H) p5`` (``dagger``: ``gamma_5 D gamma_5``), the factors folded into the
    hop and one in-place add (in the native kernel for Wilson on the CPU)."""
    if op._a is None and _native.usable(p5):
        return hop_native(p5, op._links, op._geo, dagger, -op.kappa * op.scale, p5, op.scale)
    out = hop(p5, op._links, op._geo, dagger, -op.kappa * op.scale)
    return out.add_(p5 if op._a is None else clover_apply(op._a, p5), alpha=op.scale)


def _solve(op: WilsonDirac, b: torch.Tensor, solver, x0, method: str):
    """:meth:`WilsonDirac.solve`.  ``method="eo"``: CG on
    ``K^dag K x_o = K^dag (b_o + kappa H_oe A_ee^{-1} b_e)`` then reconstruction; ``"normal"``: CG
    on ``D^dag D x = D^dag b``; ``"direct"``: the solver on ``D`` itself (use BiCGStab).
    ``solver`` defaults to ``CG(tol=1e-10)``; the tolerance refers to the system the solver sees.
    """
    from ..solvers import CG

    s = solver if solver is not None else CG(tol=1e-10)
    if method == "eo":
        rhs = op.schur_dagger(op.schur_rhs(b))
        x0o = None if x0 is None else op.split(x0)[1]
        xo, stats = s.solve(op.linear_operator("schur_normal"), rhs, x0o)
        return op.schur_reconstruct(xo, b), stats
    if method == "normal":
        return s.solve(op.linear_operator("DdagD"), op.apply_dagger(b), x0)
    if method == "direct":
        return s.solve(op.linear_operator("D"), b, x0)
    raise ValueError(f"method: expected 'eo', 'normal' or 'direct', got {method!r}")


def _dense(op: WilsonDirac, kind: str, max_dim: int) -> torch.Tensor:
    """:meth:`WilsonDirac.dense`, in the basis of the flattened field (site-major, then spin,
    then colour)."""
    view = op.linear_operator(kind)
    shape = op.eo_shape(1) if kind.startswith("schur") else op.field_shape(1)
    n = int(math.prod(shape[1:]))
    if n > max_dim:
        raise ValueError(
            f"kind: the dense {kind} matrix would have dimension {n} > max_dim={max_dim}"
        )
    eye = torch.eye(n, dtype=op.dtype, device=op.device)
    basis = eye.unsqueeze(0).expand(op.batch, n, n).reshape(op.batch * n, *shape[1:])
    cols = view(basis).reshape(op.batch, n, n)  # [b, column j, row i]
    return cols.transpose(-1, -2)


class WilsonDirac:
    """Wilson(-clover) operator on ``U[batch, 4, t, z, y, x, Nc, Nc]`` (complex128/complex64; dtype
    and device come from it): ``kappa`` the hopping parameter, ``c_sw`` the clover coefficient,
    ``boundary`` the fermion phases ``(x, y, z, t)``, ``normalisation`` ``"kappa"`` (``D``) or
    ``"chroma"`` (``M = D / (2 kappa)``).  ``apply*`` take ``psi[batch * R, t, z, y, x, 4, Nc]``,
    ``*_eo``/``schur*`` compact parity fields ``[batch * R, t, z, y, x // 2, 4, Nc]``."""

    def __init__(self, U: torch.Tensor, kappa: float, *, c_sw: float = 0.0,
                 boundary: Sequence[complex] = (1, 1, 1, -1), normalisation: str = "kappa") -> None:
        self.lattice, self.batch, self.nc = _check_links(U)
        self.U, self.dtype, self.device = U, U.dtype, U.device
        self.kappa, self.c_sw = _check_kappa(kappa), _check_c_sw(c_sw)
        self.boundary, self.normalisation = _check_boundary(boundary), _check_normal(normalisation)
        self.scale = 1.0 if normalisation == "kappa" else 1.0 / (2.0 * self.kappa)
        self._uph = _fold_boundary(U, self.lattice, self.boundary)
        self._geo = shared_geometry(self.lattice.shape, None, self.device, None)
        self._full_links: HopLinks | None = None  # built on first use (:attr:`_links`)
        self._clover, self._a = clover_diagonal(U, self.kappa, self.c_sw)
        self._eo: EvenOdd | None = None
        self._to_cache: dict[torch.dtype, WilsonDirac] = {}

    _links = property(_full_links)
    @property
    def mass(self) -> float:
        """Bare mass ``m = 1/(2 kappa) - 4``."""
        return 1.0 / (2.0 * self.kappa) - 4.0

    @property
    def has_clover(self) -> bool:
        return self._clover is not None

    def __repr__(self) -> str:
        return (f"WilsonDirac({self.lattice!r}, batch={self.batch}, Nc={self.nc}, "
                f"kappa={self.kappa}, c_sw={self.c_sw}, boundary={self.boundary}, "
                f"normalisation={self.normalisation!r}, dtype={self.dtype})")

    def to(self, dtype: torch.dtype) -> WilsonDirac:
        """The same operator with links in ``dtype`` (complex64/complex128; cached)."""
        return _converted(self, _complex_dtype(dtype))

    def field_shape(self, nrhs: int = 1) -> tuple[int, ...]:
        """Shape of a full fermion field with ``nrhs`` right-hand sides per configuration."""
        return (self.batch * nrhs, *self.lattice.shape, NS, self.nc)

    def eo_shape(self, nrhs: int = 1) -> tuple[int, ...]:
        """Shape of a one-parity (compact) fermion field."""
        t, z, y, x = self.lattice.shape
        return (self.batch * nrhs, t, z, y, x // 2, NS, self.nc)

    _in = _batched  # psi[B*R, ...] -> [B, R, ...], validated
    _out = staticmethod(_flat)

    def _eo_setup(self) -> EvenOdd:
        if self._eo is None:
            self._eo = EvenOdd(self.lattice, self._uph, self._a, self.device)
        return self._eo

    def hopping(self, psi: torch.Tensor) -> torch.Tensor:
        """``H psi`` (no normalisation factor)."""
        return _flat(hop(self._in(psi), self._links, self._geo))

    def clover(self, psi: torch.Tensor) -> torch.Tensor:
        """``C psi = i sum_{mu<nu} sigma_{mu nu} Fhat_{mu nu} psi`` (zero without clover)."""
        p5 = self._in(psi)
        if self._clover is None:
            return torch.zeros_like(psi)
        return _flat(clover_apply(self._clover, p5))

    def apply(self, psi: torch.Tensor) -> torch.Tensor:
        """``D psi`` (or Chroma's ``M psi`` with ``normalisation="chroma"``)."""
        return _flat(_apply5(self, self._in(psi)))

    __call__ = apply

    def apply_dagger(self, psi: torch.Tensor) -> torch.Tensor:
        """``D^dag psi = gamma_5 D gamma_5 psi`` (gamma_5-hermiticity)."""
        return _flat(_apply5(self, self._in(psi), dagger=True))

    def apply_normal(self, psi: torch.Tensor) -> torch.Tensor:
        """``D^dag D psi`` (Hermitian, positive)."""
        return self.apply_dagger(self.apply(psi))

    def split(self, psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full field -> ``(psi_even, psi_odd)`` compact parity fields."""
        e, o = self._eo_setup().split(self._in(psi))
        return _flat(e), _flat(o)

    def merge(self, psi_e: torch.Tensor, psi_o: torch.Tensor) -> torch.Tensor:
        """``(psi_even, psi_odd)`` -> full field (inverse of :meth:`split`)."""
        e, o = self._in(psi_e, True, "psi_e"), self._in(psi_o, True, "psi_o")
        return _flat(self._eo_setup().merge(e, o))

    def hopping_eo(self, psi_o: torch.Tensor) -> torch.Tensor:
        """``H_eo psi_o`` (odd -> even sites)."""
        return _flat(self._eo_setup().hop(self._in(psi_o, True, "psi_o"), 0))

    def hopping_oe(self, psi_e: torch.Tensor) -> torch.Tensor:
        """``H_oe psi_e`` (even -> odd sites)."""
        return _flat(self._eo_setup().hop(self._in(psi_e, True, "psi_e"), 1))

    def schur(self, psi_o: torch.Tensor) -> torch.Tensor:
        """``K psi_o = s (A_oo - kappa^2 H_oe A_ee^{-1} H_eo) psi_o``."""
        return _flat(schur5(self, self._in(psi_o, True, "psi_o")))

    def schur_dagger(self, psi_o: torch.Tensor) -> torch.Tensor:
        """``K^dag = gamma_5 K gamma_5`` (``A`` commutes with gamma_5, ``H^dag = g5 H g5``)."""
        return _flat(schur5(self, self._in(psi_o, True, "psi_o"), dagger=True))

    def schur_normal(self, psi_o: torch.Tensor) -> torch.Tensor:
        """``K^dag K psi_o`` (Hermitian positive, on odd sites)."""
        return _flat(schur_normal5(self, self._in(psi_o, True, "psi_o")))

    def schur_rhs(self, b: torch.Tensor) -> torch.Tensor:
        """Odd-site source of the Schur system: ``b_o + kappa H_oe A_ee^{-1} b_e`` (compact)."""
        return _flat(schur_rhs5(self, self._in(b, name="b")))

    def schur_reconstruct(self, x_o: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Full solution from the odd part: ``x_e = A_ee^{-1}(b_e / s + kappa H_eo x_o)``."""
        return _flat(schur_reconstruct5(self, self._in(x_o, True, "x_o"), self._in(b, name="b")))

    def clover_logdet(self, parity: int = 0) -> torch.Tensor:
        """``sum_{x in parity} log |det A(x)|`` per configuration (see :func:`clover_logdet`)."""
        return clover_logdet(self, parity)

    def linear_operator(self, kind: str) -> OperatorView:
        """A solver view with ``to(dtype)``; ``kind`` in :attr:`OperatorView._KINDS`."""
        return OperatorView(self, kind)

    def solve(self, b: torch.Tensor, *, solver: object | None = None,
              x0: torch.Tensor | None = None, method: str = "eo") -> tuple[torch.Tensor, object]:
        """Solve ``D x = b`` (``M x = b`` for ``"chroma"``) with ``method`` ``"eo"``, ``"normal"``
        or ``"direct"`` (see :func:`_solve`); returns ``(x, SolveStats)``."""
        return _solve(self, b, solver, x0, method)

    def force_bilinear(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``G`` with ``d Re<Y, D X> = sum Re Tr[Z G]`` (:func:`.forces.force_bilinear`)."""
        return force_bilinear(self, self._in(x, name="x"), self._in(y, name="y"))

    def schur_force_bilinear(self, x_o: torch.Tensor, y_o: torch.Tensor) -> torch.Tensor:
        """The same for the Schur operator ``K`` (:func:`.forces.schur_force_bilinear`)."""
        return schur_force_bilinear(self, self._in(x_o, True, "x_o"), self._in(y_o, True, "y_o"))

    def clover_logdet_force(self, parity: int = 0) -> torch.Tensor:
        """``G`` with ``d sum_{x in parity} log det A(x) = sum Re Tr[Z G]``."""
        return clover_logdet_force(self, parity)

    def dense(self, kind: str = "D", max_dim: int = 8192) -> torch.Tensor:
        """Dense matrix ``[batch, n, n]`` of ``kind`` (:meth:`linear_operator`; tiny lattices)."""
        return _dense(self, kind, max_dim)


class OperatorView:
    """A :class:`WilsonDirac` operator as a solver-friendly callable with ``to(dtype)``."""

    _KINDS = ("D", "Ddag", "DdagD", "schur", "schur_dagger", "schur_normal")

    def __init__(self, op: WilsonDirac, kind: str) -> None:
        if kind not in self._KINDS:
            raise ValueError(f"kind: expected one of {self._KINDS}, got {kind!r}")
        self.op = op
        self.kind = kind
        self._fn = {
            "D": op.apply,
            "Ddag": op.apply_dagger,
            "DdagD": op.apply_normal,
            "schur": op.schur,
            "schur_dagger": op.schur_dagger,
            "schur_normal": op.schur_normal,
        }[kind]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def fused_cg(self, b: torch.Tensor, x0: torch.Tensor | None, tol: float, max_iter: int,
                 max_restarts: int) -> object | None:
        """The whole CG in one native call for ``schur_normal`` where it applies
        (:func:`.evenodd.schur_normal_cg`); None otherwise (the solver iterates itself)."""
        if self.kind != "schur_normal":
            return None
        return schur_normal_cg(self.op, b, x0, tol, max_iter, max_restarts)

    def to(self, dtype: torch.dtype) -> OperatorView:
        return OperatorView(self.op.to(dtype), self.kind)

    def __repr__(self) -> str:
        return f"OperatorView({self.kind}, {self.op!r})"


def exact_logdet(
    U: torch.Tensor,
    kappa: float,
    *,
    c_sw: float = 0.0,
    boundary: Sequence[complex] = (1, 1, 1, -1),
    normalisation: str = "kappa",
    kind: str = "D",
    max_dim: int = 8192,
) -> torch.Tensor:
    """``log det(K^dag K) = 2 log |det K|`` per configuration by dense linear algebra, with ``K``
    the operator ``kind`` (``"D"``: the full Wilson(-clover) operator; ``"schur"``: the even-odd
    Schur complement).  For cross-checks on tiny lattices (dimension ``4 Nc V <= max_dim``).

    The exact Nf=2 effective action is ``S_eff = -log det(D^dag D)``; for Wilson
    ``det D = det K`` (``A_ee = 1``), for clover ``det D = det A_ee det K``.
    """
    if kind not in ("D", "schur"):
        raise ValueError(f"kind: expected 'D' or 'schur', got {kind!r}")
    op = WilsonDirac(U, kappa, c_sw=c_sw, boundary=boundary, normalisation=normalisation)
    m = op.dense(kind, max_dim=max_dim)
    # one configuration at a time: the batched complex LU of torch's CPU wheel (oneMKL) returns
    # wrong determinants for matrices of ~200 rows and more when it runs on several threads
    logabs = torch.stack([torch.linalg.slogdet(mi)[1] for mi in m])
    return 2.0 * logabs.to(torch.float64)
