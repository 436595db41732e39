"""Nf = 2 Wilson(-clover) pseudofermion monomials (Chroma's two-flavour fermion monomials).

Interface (the :class:`bridge.mcmc.monomials.Monomial` protocol): ``refresh(U, generator)``,
``action(U) -> [batch]``, ``force(U) -> like U`` in the project's force convention
(``d/de S(exp(e Z) U) = -2 sum Re Tr[Z F]``, :mod:`bridge.gauge`), ``stochastic = True``, plus
``iterations`` (CG iterations since the last reset; the HMC resets it every trajectory),
``n_solves`` and ``last_stats`` (the :class:`~bridge.solvers.SolveStats` of the last solve).

Unpreconditioned (Chroma ``TWO_FLAVOR_UNPREC_FERM_MONOMIAL``): heat bath ``phi = D^dag eta``,
``S = phi^dag (D^dag D)^{-1} phi``, force from :meth:`WilsonDirac.force_bilinear`.  Even-odd
(Chroma ``TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL``): the same with the Schur operator ``K`` on
odd sites; with clover the link-dependent ``det A_ee`` adds ``S_det = -2 sum_{x even} log det A(x)``
(Chroma's ``TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL``), and asking for the constant-determinant
form with clover raises :class:`~bridge.errors.ConfigError`.  Force solves may start from the
last solution (Chroma's ``LAST_SOLUTION_4D_PREDICTOR``).  Derivations: docs/fermions.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError, PhysicsError
from ..solvers import CG
from ..solvers.base import Solver, SolveStats
from .wilson import WilsonDirac, _check_boundary, _check_kappa

__all__ = [
    "TwoFlavorWilsonMonomial",
    "TwoFlavorEOPrecWilsonMonomial",
    "gaussian_noise",
    "monomial_from_chroma",
]

_PREDICTORS = {
    "zero": "zero",
    "last_solution": "last_solution",
    "ZERO_GUESS_4D_PREDICTOR": "zero",
    "LAST_SOLUTION_4D_PREDICTOR": "last_solution",
}


def gaussian_noise(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None,
    dtype: torch.dtype = torch.complex128,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Complex Gaussian noise with density ``exp(-eta^dag eta)``: real and imaginary parts are
    independent ``N(0, 1/2)`` (Chroma's ``gaussian`` for fermions, then the monomial's
    ``sqrt(0.5)`` scaling)."""
    real = torch.empty(0, dtype=dtype).real.dtype
    z = torch.randn(*shape, 2, generator=generator, dtype=real, device=device)
    return torch.complex(z[..., 0], z[..., 1]) * (0.5**0.5)


class _TwoFlavorBase:
    """Common machinery of the two monomials (operator cache, solves, counters)."""

    stochastic = True
    _chroma_name = ""
    _normal = ""  # name of the normal operator for WilsonDirac.linear_operator

    def __init__(
        self,
        kappa: float,
        *,
        c_sw: float = 0.0,
        boundary: Sequence[complex] = (1, 1, 1, -1),
        normalisation: str = "chroma",
        solver: Solver | None = None,
        action_solver: Solver | None = None,
        predictor: str = "last_solution",
        name: str = "wilson_two_flav",
    ) -> None:
        if predictor not in _PREDICTORS:
            raise ValueError(
                f"predictor: expected one of {sorted(_PREDICTORS)}, got {predictor!r}"
            )
        self.kappa = float(kappa)
        self.c_sw = float(c_sw)
        self.boundary = tuple(boundary)
        self.normalisation = normalisation
        self.solver: Solver = solver if solver is not None else CG(tol=1e-10, max_iter=10000)
        self.action_solver: Solver = action_solver if action_solver is not None else self.solver
        self.predictor = _PREDICTORS[predictor]
        self.name = name
        self.phi: torch.Tensor | None = None
        self.iterations = 0
        self.n_solves = 0
        self.last_stats: SolveStats | None = None
        self._guess: torch.Tensor | None = None
        self._op_key: tuple[int, int, tuple[int, ...], torch.dtype] | None = None
        self._op: WilsonDirac | None = None
        # validate the parameters once (raises for a bad kappa, boundary, normalisation)
        self._validate()

    def _validate(self) -> None:
        _check_kappa(self.kappa)
        self.boundary = _check_boundary(self.boundary)
        if self.normalisation not in ("kappa", "chroma"):
            raise ValueError(
                f"normalisation: expected 'kappa' or 'chroma', got {self.normalisation!r}"
            )

    # -- operator and counters ------------------------------------------------------------------
    def operator(self, U: torch.Tensor) -> WilsonDirac:
        """The Dirac operator on ``U`` (cached while ``U`` is the same tensor, unmodified)."""
        key = (id(U), U._version, tuple(U.shape), U.dtype)
        if self._op is None or self._op_key != key or self._op.U is not U:
            self._op = WilsonDirac(
                U, self.kappa, c_sw=self.c_sw, boundary=self.boundary,
                normalisation=self.normalisation,
            )
            self._op_key = key
        return self._op

    def reset_counters(self) -> None:
        """Zero ``iterations`` and ``n_solves``."""
        self.iterations = 0
        self.n_solves = 0

    def reset_predictor(self) -> None:
        """Forget the chronological guess (done by every :meth:`refresh`)."""
        self._guess = None

    def _record(self, stats: SolveStats) -> None:
        self.last_stats = stats
        self.iterations += int(stats.iterations)
        self.n_solves += 1

    def _solve(self, U: torch.Tensor, guess: bool) -> tuple[WilsonDirac, torch.Tensor]:
        """``X = (M^dag M)^{-1} phi`` for the monomial's normal operator ``_normal``; force
        solves (``guess``) use the solver and the chronological guess, action solves the
        action solver from zero."""
        phi = self._require_phi(U)
        op = self.operator(U)
        x0 = self._guess if (guess and self.predictor == "last_solution") else None
        solver = self.solver if guess else self.action_solver
        x, stats = solver.solve(op.linear_operator(self._normal), phi, x0)
        self._record(stats)
        if guess and self.predictor == "last_solution":
            self._guess = x
        return op, x

    def _bilinear_action(self, U: torch.Tensor) -> tuple[WilsonDirac, torch.Tensor]:
        """``phi^dag (M^dag M)^{-1} phi`` per configuration, and the operator."""
        phi = self._require_phi(U)
        op, x = self._solve(U, guess=False)
        return op, (phi.conj() * x).real.reshape(phi.shape[0], -1).sum(1)

    def _require_phi(self, U: torch.Tensor) -> torch.Tensor:
        if self.phi is None:
            raise RuntimeError(
                f"{self.name}: no pseudofermion field; call refresh(U, generator) first"
            )
        if self.phi.shape[0] != U.shape[0] or self.phi.dtype != U.dtype:
            raise ValueError(
                f"{self.name}: the pseudofermion field (batch {self.phi.shape[0]}, "
                f"{self.phi.dtype}) does not match U (batch {U.shape[0]}, {U.dtype}); "
                "call refresh(U, generator) again"
            )
        return self.phi

    def _check_finite(self, what: str, t: torch.Tensor) -> torch.Tensor:
        # the sum of the entries is finite exactly when all are (short of an overflow, itself
        # a broken force): one scalar test instead of a boolean field
        v = torch.view_as_real(t) if t.is_complex() else t
        if not bool(torch.isfinite(v.sum())):
            raise PhysicsError(f"{self.name}: the {what} is not finite")
        return t

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kappa={self.kappa}, c_sw={self.c_sw}, "
            f"boundary={self.boundary}, normalisation={self.normalisation!r}, "
            f"solver={self.solver!r}, predictor={self.predictor!r}, name={self.name!r})"
        )


class TwoFlavorWilsonMonomial(_TwoFlavorBase):
    """Chroma's ``TWO_FLAVOR_UNPREC_FERM_MONOMIAL``: ``S = phi^dag (D^dag D)^{-1} phi``.

    Parameters: ``kappa``, ``c_sw`` (0 = Wilson), ``boundary`` (default ``(1, 1, 1, -1)``),
    ``normalisation`` (``"chroma"``: ``M = D_kappa / (2 kappa)``, the default, so that ``phi``
    is exchangeable with Chroma; ``"kappa"``: ``D_kappa``), ``solver`` (default
    ``CG(tol=1e-10)``, Chroma's ``RsdCG``), ``action_solver`` (default: ``solver``),
    ``predictor`` (``"last_solution"`` or ``"zero"``, Chroma names accepted), ``name``.
    """

    _chroma_name = "TWO_FLAVOR_UNPREC_FERM_MONOMIAL"
    _normal = "DdagD"

    def refresh(self, U: torch.Tensor, generator: torch.Generator | None) -> None:
        """Heat bath: ``phi = D^dag eta``, ``eta ~ exp(-eta^dag eta)``."""
        op = self.operator(U)
        eta = gaussian_noise(op.field_shape(), generator=generator, dtype=U.dtype, device=U.device)
        self.phi = op.apply_dagger(eta)
        self.reset_predictor()

    def action(self, U: torch.Tensor) -> torch.Tensor:
        """``S = phi^dag (D^dag D)^{-1} phi`` per configuration (real, float64)."""
        _, s = self._bilinear_action(U)
        return self._check_finite("action", s)

    def force(self, U: torch.Tensor) -> torch.Tensor:
        """``F = G(X, Y)`` with ``X = (D^dag D)^{-1} phi``, ``Y = D X`` (see module docstring)."""
        op, x = self._solve(U, guess=True)
        return self._check_finite("force", op.force_bilinear(x, op.apply(x)))


class TwoFlavorEOPrecWilsonMonomial(_TwoFlavorBase):
    """Chroma's ``TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL`` (Wilson) and, with clover,
    ``TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL``: ``S = phi_o^dag (K^dag K)^{-1} phi_o``
    ``[- 2 sum_{even} log det A_ee]``, ``phi_o`` on the odd sites (compact layout).

    ``clover_logdet`` (default True) adds the even-site clover determinant; it must stay on with
    clover (a :class:`~bridge.errors.ConfigError` otherwise: without it the monomial would simulate
    a different theory).  Other parameters as :class:`TwoFlavorWilsonMonomial`.
    """

    _chroma_name = "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL"
    _normal = "schur_normal"

    def __init__(self, kappa: float, *, clover_logdet: bool = True, **kwargs: Any) -> None:
        super().__init__(kappa, **kwargs)
        if self.c_sw != 0.0 and not clover_logdet:
            raise ConfigError(
                f"{self.name}: c_sw = {self.c_sw}: the even-odd clover monomial needs the "
                "U-dependent -2 log det A_ee term (Chroma's "
                "TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL); "
                "the constant-determinant form (CONSTDET) is only exact for Wilson fermions "
                "(c_sw = 0). Use clover_logdet=True."
            )
        self.clover_logdet = bool(clover_logdet) and self.c_sw != 0.0

    def refresh(self, U: torch.Tensor, generator: torch.Generator | None) -> None:
        """Heat bath on the odd sites: ``phi_o = K^dag eta_o``."""
        op = self.operator(U)
        eta = gaussian_noise(op.eo_shape(), generator=generator, dtype=U.dtype, device=U.device)
        self.phi = op.schur_dagger(eta)
        self.reset_predictor()

    def action(self, U: torch.Tensor) -> torch.Tensor:
        """``S = phi_o^dag (K^dag K)^{-1} phi_o`` (``- 2 log det A_ee`` with clover)."""
        op, s = self._bilinear_action(U)
        if self.clover_logdet:
            s = s - 2.0 * op.clover_logdet(0)
        return self._check_finite("action", s)

    def force(self, U: torch.Tensor) -> torch.Tensor:
        """``F = G_K(X_o, K X_o)`` (+ ``G_logdet`` with clover)."""
        op, x = self._solve(U, guess=True)
        f = op.schur_force_bilinear(x, op.schur(x))
        if self.clover_logdet:
            f = f + op.clover_logdet_force(0)
        return self._check_finite("force", f)


def monomial_from_chroma(
    kind: str, params: Mapping[str, Any], name: str = "wilson_two_flav"
) -> TwoFlavorWilsonMonomial | TwoFlavorEOPrecWilsonMonomial:
    """Build a monomial from a parsed Chroma ``<elem>`` (see :mod:`bridge.chroma.hmc_input`).

    ``kind``: ``TWO_FLAVOR_UNPREC_FERM_MONOMIAL``, ``TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL``
    (Wilson only) or ``TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL``; ``params``: ``kappa``,
    ``fermact`` (``WILSON``/``CLOVER``), ``c_sw``, ``boundary``, ``rsd_cg``, ``max_cg``,
    ``predictor``.  Chroma's normalisation ``M = D_kappa / (2 kappa)`` is used.
    """
    try:
        kappa = float(params["kappa"])
    except KeyError as exc:
        raise ConfigError(
            f"{name}: fermion monomial parameters lack 'kappa': {dict(params)}"
        ) from exc
    fermact = params.get("fermact", "WILSON")
    if fermact not in ("WILSON", "CLOVER"):
        raise ConfigError(f"{name}: FermAct must be WILSON or CLOVER, got {fermact!r}")
    c_sw = float(params.get("c_sw", 0.0)) if fermact == "CLOVER" else 0.0
    solver = CG(tol=float(params.get("rsd_cg", 1e-10)), max_iter=int(params.get("max_cg", 10000)))
    common: dict[str, Any] = {
        "c_sw": c_sw,
        "boundary": tuple(params.get("boundary", (1, 1, 1, -1))),
        "normalisation": "chroma",
        "solver": solver,
        "predictor": params.get("predictor", "ZERO_GUESS_4D_PREDICTOR"),
        "name": name,
    }
    if kind == "TWO_FLAVOR_UNPREC_FERM_MONOMIAL":
        return TwoFlavorWilsonMonomial(kappa, **common)
    if kind == "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL":
        if c_sw != 0.0:
            raise ConfigError(
                f"{name}: TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL with FermAct CLOVER: the clover "
                "even-even determinant is not constant; use TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL "
                "(as Chroma requires)"
            )
        return TwoFlavorEOPrecWilsonMonomial(kappa, **common)
    if kind == "TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL":
        return TwoFlavorEOPrecWilsonMonomial(kappa, clover_logdet=True, **common)
    raise ConfigError(
        f"{name}: unsupported fermion monomial {kind!r}; expected TWO_FLAVOR_UNPREC_FERM_MONOMIAL, "
        "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL or TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL"
    )
