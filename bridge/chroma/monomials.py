"""Chroma's monomials as actions: the one mapping from a parsed ``hmc`` input
(:class:`~bridge.chroma.hmc_input.HMCInput`) to the actions of its Hamiltonian.

``exact=False`` (the built-in ``hmc``): the molecular-dynamics monomials -- ``GAUGE_MONOMIAL``
with ``WILSON_GAUGEACT`` (:class:`~bridge.mcmc.monomials.GaugeMonomial`) and the Nf=2
pseudofermion monomials (:func:`bridge.fermions.pseudofermion.monomial_from_chroma`).

``exact=True`` (flow steps of the drop-in loop, which need ``S(U)`` itself): the Wilson gauge
monomial and, for each Nf=2 Wilson/clover monomial, ``-log det(D^dag D)`` computed exactly
(:func:`bridge.fermions.exact_logdet`, dense, so limited to small lattices).  Chroma's
``WILSON``/``CLOVER`` are even-odd preconditioned, ``UNPRECONDITIONED_*`` not: the same
``det(D^dag D)`` up to a constant.  What would make the flow's action differ from the one Chroma
samples is refused with a :class:`~bridge.errors.ConfigError` that says why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..mcmc.monomials import GaugeMonomial, Monomial
from .hmc_input import HMCInput, MonomialSpec
from .names import TWO_FLAVOR_MONOMIALS

__all__ = [
    "ExactTwoFlavorAction",
    "actions_from_monomials",
    "build_monomial",
    "hamiltonian_action",
    "gauge_action_for_joint_model",
    "gauge_beta",
]

_FERMION_KINDS = TWO_FLAVOR_MONOMIALS[:3]  # the Nf=2 Wilson-type monomials with exact det


class ExactTwoFlavorAction:
    """``S(U) = -log det(D^dag D)`` of Nf=2 Wilson(-clover) fermions, exactly (dense; dimension
    ``12 V`` up to ``12 max_sites``).  An action for flow steps and reweighting; no force."""

    def __init__(self, kappa: float, c_sw: float, boundary: tuple[int, ...], *,
                 max_sites: int, name: str) -> None:
        self.kappa, self.c_sw, self.boundary = kappa, c_sw, tuple(boundary)
        self.max_sites, self.name = max_sites, name

    def action(self, u: Any) -> Any:
        from ..fermions import exact_logdet

        return -exact_logdet(u, self.kappa, c_sw=self.c_sw, boundary=self.boundary,
                             max_dim=12 * self.max_sites).to(u.real.dtype)

    def __repr__(self) -> str:
        return (f"ExactTwoFlavorAction(kappa={self.kappa}, c_sw={self.c_sw}, "
                f"boundary={self.boundary})")


def build_monomial(spec: MonomialSpec) -> Monomial:
    """The molecular-dynamics monomial of one strictly parsed Chroma monomial."""
    if spec.kind == "GAUGE_MONOMIAL":
        return GaugeMonomial(spec.params["beta"], name=spec.monomial_id)
    from ..fermions.pseudofermion import monomial_from_chroma  # lazy: heavier import

    return monomial_from_chroma(spec.kind, spec.params, name=spec.monomial_id)


def _exact_gauge(spec: MonomialSpec, where: str) -> GaugeMonomial:
    p = spec.params
    if p["gauge_action"] != "WILSON_GAUGEACT" or p["aniso"]:
        raise ConfigError(
            f"{where}: flow steps support the isotropic WILSON_GAUGEACT, got "
            f"{p['gauge_action']!r}{' with AnisoParam' if p['aniso'] else ''}; run plain HMC "
            f"(no model, flow_steps 0) or change the gauge action")
    if p["gauge_bc"] != "PERIODIC_GAUGEBC":
        raise ConfigError(
            f"{where}: flow steps support PERIODIC_GAUGEBC, got {p['gauge_bc']!r}; the flow's "
            f"action must have the engine's boundary conditions")
    return GaugeMonomial(p["beta"], name=spec.monomial_id)


def _exact_fermion(spec: MonomialSpec, where: str, nrow: tuple[int, ...], max_sites: int
                   ) -> ExactTwoFlavorAction:
    p = spec.params
    act, name = p["fermact"], p["fermact_name"]
    if act not in ("WILSON", "CLOVER") or p["aniso"]:
        raise ConfigError(f"{where}: flow steps support isotropic WILSON and CLOVER fermions (or "
                          f"their UNPRECONDITIONED_ forms), got FermAct "
                          f"{name!r}{' with AnisoParam' if p['aniso'] else ''}")
    if spec.kind == "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL" and act == "CLOVER":
        raise ConfigError(
            f"{where}: TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL with FermAct CLOVER: Chroma's "
            f"monomial leaves out det(A_ee) of the clover term, so the engine does not sample "
            f"det(D^dag D) and the flow steps would target another distribution; use "
            f"TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL, or run plain HMC (no model, flow_steps 0)")
    if p["fermstate"]:
        raise ConfigError(
            f"{where}/FermionAction/FermState: flow steps support unsmeared fermions (no "
            f"FermState), got {p['fermstate']!r}; the flow's action must be the engine's")
    if p["fermbc"] != "SIMPLE_FERMBC":
        raise ConfigError(f"{where}/FermionAction/FermionBC/FermBC: flow steps support "
                          f"SIMPLE_FERMBC, got {p['fermbc'] or 'no FermionBC'!r}")
    csw = p["clover_coeffs"]
    if act == "CLOVER" and (not csw or len(set(csw)) != 1):
        raise ConfigError(
            f"{where}/FermionAction: flow steps support isotropic clover (clovCoeff, or equal "
            f"clovCoeffR and clovCoeffT), got clover coefficients {csw}")
    vol = 1
    for n in nrow:
        vol *= n
    if vol > max_sites:
        raise ConfigError(
            f"{where}: {spec.kind}: flow steps with fermions use the exact determinant (dense, "
            f"dimension 12 V), limited to fermion_max_sites = {max_sites} lattice sites; the "
            f"lattice {' '.join(map(str, nrow))} has {vol}. Run plain HMC (no model, flow_steps "
            f"0), a smaller lattice, or raise fermion_max_sites in the workflow")
    return ExactTwoFlavorAction(p["kappa"], csw[0] if act == "CLOVER" else 0.0, p["boundary"],
                                max_sites=max_sites, name=spec.monomial_id)


def actions_from_monomials(inp: HMCInput, *, exact: bool = False, max_sites: int = 256
                           ) -> dict[str, Monomial | ExactTwoFlavorAction]:
    """Monomial id -> its action (module docstring).  ``exact=False``: every monomial of a
    strictly parsed input, as the integrator needs them; ``exact=True``: the Hamiltonian's
    monomials of a strict or lenient reading, fermions through the exact determinant (refused
    beyond ``max_sites`` lattice sites), each refusal naming file, element and reason."""
    if not exact:
        return {mid: build_monomial(spec) for mid, spec in inp.monomials.items()}
    out: dict[str, Monomial | ExactTwoFlavorAction] = {}
    for mid in inp.hamiltonian:
        spec = inp.monomials[mid]
        where = f"{inp.source}: {spec.path}"
        if spec.kind == "GAUGE_MONOMIAL":
            out[mid] = _exact_gauge(spec, where)
        elif spec.kind in _FERMION_KINDS:
            out[mid] = _exact_fermion(spec, where, inp.nrow, max_sites)
        else:
            raise ConfigError(
                f"{where}: flow steps support GAUGE_MONOMIAL and {list(_FERMION_KINDS)}, got "
                f"{spec.kind!r}; run plain HMC (no model, flow_steps 0) for this input")
    return out


def _describe(inp: HMCInput, mid: str, act: Monomial | ExactTwoFlavorAction) -> str:
    if isinstance(act, GaugeMonomial):
        return f"{mid}: Wilson gauge, beta = {act.beta}"
    p = inp.monomials[mid].params
    return (f"{mid}: Nf=2 {p['fermact_name']} kappa = {act.kappa}, c_sw = {act.c_sw}, boundary "
            f"{' '.join(map(str, act.boundary))} (exact determinant)")


def hamiltonian_action(inp: HMCInput, *, max_sites: int = 256
                       ) -> tuple[Callable[[Any], Any], str]:
    """The action ``S(U)`` of the input's Hamiltonian (the sum of
    :func:`actions_from_monomials` ``(exact=True)``) and its one-line description."""
    actions = actions_from_monomials(inp, exact=True, max_sites=max_sites)
    return _summed(list(actions.values())), "; ".join(_describe(inp, mid, a)
                                                      for mid, a in actions.items())


def _summed(actions: list[Any]) -> Callable[[Any], Any]:
    """``U -> sum_a a.action(U)``."""
    def action(u: Any) -> Any:
        total = None
        for a in actions:
            s = a.action(u)
            total = s if total is None else total + s
        return total

    return action


def gauge_beta(inp: HMCInput) -> float:
    """Total Wilson coupling of the Hamiltonian's gauge monomials."""
    return sum(inp.monomials[mid].params["beta"] for mid in inp.hamiltonian
               if inp.monomials[mid].kind == "GAUGE_MONOMIAL")


def gauge_action_for_joint_model(inp: HMCInput, kappa: float, c_sw: float,
                                 boundary: tuple[complex, ...]) -> tuple[Callable[[Any], Any], str]:
    """The gauge part ``S_g(U)`` of the input's Hamiltonian, for flow steps whose fermion
    determinant comes from a joint model's pseudofermion estimate; the Hamiltonian must hold
    exactly one Nf=2 monomial, with the model's ``kappa``, ``c_sw`` and ``boundary`` (a
    :class:`~bridge.errors.ConfigError` naming file, element and both values otherwise).  No
    lattice-size limit: nothing dense is computed."""
    actions = actions_from_monomials(inp, exact=True, max_sites=2**62)
    gauge = {mid: a for mid, a in actions.items() if isinstance(a, GaugeMonomial)}
    ferm = {mid: a for mid, a in actions.items() if isinstance(a, ExactTwoFlavorAction)}
    if len(ferm) != 1:
        raise ConfigError(
            f"{inp.source}: the model has a pseudofermion flow for one Nf=2 monomial, the "
            f"Hamiltonian has {len(ferm)} ({sorted(ferm) or 'none'}); use a gauge flow for pure "
            f"gauge inputs, one two-flavour monomial otherwise")
    (mid, f), = ferm.items()
    where = f"{inp.source}: {inp.monomials[mid].path}"
    mine = {"kappa": float(kappa), "c_sw": float(c_sw)}
    theirs = {"kappa": float(f.kappa), "c_sw": float(f.c_sw)}
    for key in mine:
        if abs(mine[key] - theirs[key]) > 1e-12:
            raise ConfigError(f"{where}: {key} = {theirs[key]:g}, but the model's pseudofermion "
                              f"flow was trained for {key} = {mine[key]:g}")
    fb = tuple(complex(b) for b in f.boundary)
    if any(abs(a - b) > 1e-12 for a, b in zip(fb, boundary, strict=True)):
        raise ConfigError(f"{where}: fermion boundary phases {fb}, but the model's pseudofermion "
                          f"flow was trained with {tuple(boundary)}")

    desc = "; ".join(_describe(inp, m, a) for m, a in gauge.items())
    return _summed(list(gauge.values())), (f"{desc}; {mid}: Nf=2 kappa = {f.kappa}, c_sw = "
                                           f"{f.c_sw} (pseudo-marginal estimate of the joint "
                                           f"model)")
