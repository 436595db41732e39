"""Wilson(-clover) fermions: gamma matrices, the Dirac operator (:mod:`.wilson`) with its hopping
kernels (:mod:`.hopping`), clover term (:mod:`.clover`), even-odd preconditioning
(:mod:`.evenodd`) and force kernels (:mod:`.forces`), and the Nf=2 pseudofermion monomials.  See
docs/fermions.md for conventions and derivations."""

from __future__ import annotations

from .clover import clover_field_strength, clover_matrix
from .gamma import (
    apply_gamma5,
    chroma_gamma,
    gamma,
    gamma5,
    gamma_matrices,
    sigma,
    sigma_matrices,
)
from .hopping import DSLASH_FLOPS_PER_SITE
from .pseudofermion import (
    TwoFlavorEOPrecWilsonMonomial,
    TwoFlavorWilsonMonomial,
    gaussian_noise,
    monomial_from_chroma,
)
from .wilson import OperatorView, WilsonDirac, exact_logdet

__all__ = [
    "gamma",
    "gamma_matrices",
    "gamma5",
    "chroma_gamma",
    "sigma",
    "sigma_matrices",
    "WilsonDirac",
    "OperatorView",
    "apply_gamma5",
    "clover_field_strength",
    "clover_matrix",
    "exact_logdet",
    "DSLASH_FLOPS_PER_SITE",
    "TwoFlavorWilsonMonomial",
    "TwoFlavorEOPrecWilsonMonomial",
    "gaussian_noise",
    "monomial_from_chroma",
]
