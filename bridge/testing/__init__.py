"""The public exactness kit: physics checks that users can run on their own actions, forces and
flow layers (:mod:`.checks`, :mod:`.flow_checks`), and the straightforward reference
implementations the fast kernels are tested against (:mod:`.reference`).

Each ``assert_*`` function raises :class:`AssertionError` with a message that says what was
compared, the worst deviation and the tolerance; it returns the measured deviation otherwise.
The project's own test suite uses these functions.
"""

from __future__ import annotations

from ..groups import algebra_basis
from .checks import (
    assert_force_matches_action,
    assert_gauge_covariant,
    assert_gauge_invariant,
    assert_in_group,
    assert_reversible,
    directional_derivative,
)
from .flow_checks import (
    assert_conditional_flow,
    assert_conditional_flow_covariant,
    assert_flow_density,
    assert_gauge_equivariant,
    assert_invertible,
    assert_logdet_matches_autograd,
    autograd_logdet,
    field_autograd_logdet,
)

__all__ = [
    "assert_in_group",
    "assert_gauge_invariant",
    "assert_gauge_covariant",
    "assert_force_matches_action",
    "directional_derivative",
    "assert_reversible",
    "assert_invertible",
    "assert_logdet_matches_autograd",
    "assert_gauge_equivariant",
    "assert_flow_density",
    "autograd_logdet",
    "field_autograd_logdet",
    "assert_conditional_flow",
    "assert_conditional_flow_covariant",
    "algebra_basis",
]
