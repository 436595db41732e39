"""Optional native (C++) CPU kernel for the Wilson hopping term.

Built with :func:`torch.utils.cpp_extension.load_inline` the first time it is needed (never at
import), cached under torch's default extensions directory (``TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``), so later processes only load the shared library.  Used by
:mod:`bridge.fermions.hopping` for CPU complex128/complex64 fields with ``Nc <= 3``; CUDA tensors
always take the torch path.  If the build fails (no compiler, no ninja, ...) a warning is issued
once and the torch path is used; ``QCD_BRIDGE_NATIVE=0`` disables the kernel.

The kernel is the gather form of the torch path done site by site: for every target site ``x``
and each of the 8 terms ``k`` (see ``hopping._TERMS``) the source site ``n_k(x)`` comes from the
operator's neighbour table, the 4-spinor there is projected to a half spinor
``h_j = psi_j + cP_kj psi_{2 + lo_kj}`` (``B = [1, +/-K_mu]``, ``1 -/+ gamma_mu = B^dag B``),
multiplied by the stacked colour matrix of the term (``U_mu(x)^T`` forward, ``conj(U_mu(x-mu))``
backward, boundary phases folded in) and reconstructed: upper spins ``+= w_j``, lower spins
``+= cL_kj w_{wi_kj}``.  The spin tables (``cP``, ``lo``, ``cL``, ``wi``) are passed in from
Python, so the generic kernel knows nothing about the gamma basis.  ``out = scale * H psi + alpha *
add``.  When the tables passed in are the project's (every coefficient +-1 or +-i), a copy of
the kernel with the tables compiled in as integers runs instead (the projection and
reconstruction become adds and sign flips, ~25 % faster); the tables are written into the
source when it is built.

On top of the hop: ``schur_normal`` (the four hops of ``K^dag K``), ``cg_schur_normal`` (the
whole conjugate gradient of :class:`bridge.solvers.CG` on ``K^dag K``, no Python between
iterations), ``eo_bilinear`` (the Schur force bilinear of ``forces.schur_force_bilinear``) and
``eo_links`` (the even-odd hop links of ``hopping.kernel_links`` in one pass).
"""

from __future__ import annotations

import torch

from .._native_build import ENV, enabled, new_state, ready
from ._native_cpp import HOP_CPP
from ._native_cpp_solve import SOLVE_CPP

__all__ = ["available", "enabled", "usable", "hop", "schur_normal", "cg_schur_normal",
           "eo_bilinear", "eo_links", "build_seconds", "ENV"]

_NAME = "qcd_bridge_wilson_hop_v4"

_CPP = HOP_CPP + SOLVE_CPP

_state: dict[str, object] = new_state()
_SOURCE: list[str] = []


def _spin_table_cpp() -> str:
    """The C++ definitions of ``SPIN_TAB[2][8][2][6]`` (int) and ``SPIN_FIXED`` from
    :func:`hopping._native_spin_table`: fixed only when every coefficient is +-1 or +-i (true
    for the project's gamma basis; otherwise the generic kernel runs)."""
    from .hopping import _native_spin_table

    rows, fixed = [], True
    for dagger in (False, True):
        t = _native_spin_table(dagger).reshape(16, 6).tolist()
        for r in t:
            ints = [int(round(e)) for e in r]
            for pair in (ints[1:3], ints[4:6]):
                fixed = fixed and sorted(abs(e) for e in pair) == [0, 1]
            fixed = fixed and all(abs(e - i) < 1e-15 for e, i in zip(r, ints, strict=True))
            rows.append("{" + ", ".join(map(str, ints)) + "}")
    # nest as [2][8][2][6]: rows come in (dagger, k, j) order
    pairs = ["{" + rows[i] + ", " + rows[i + 1] + "}" for i in range(0, 32, 2)]
    terms = ["{" + ", ".join(pairs[d * 8:(d + 1) * 8]) + "}" for d in range(2)]
    body = ", ".join(terms)
    return (f"constexpr int SPIN_TAB[2][8][2][6] = {{{body}}};\n"
            f"constexpr bool SPIN_FIXED = {'true' if fixed else 'false'};")


def _source() -> str:
    """The kernel's C++ source with the spin tables written in (built once per process)."""
    if not _SOURCE:
        _SOURCE.append(_CPP.replace("// @SPIN_TABLE@", _spin_table_cpp()))
    return _SOURCE[0]


def available() -> bool:
    """Whether the native kernel is enabled and built (builds it on the first call)."""
    if not enabled():
        return False
    return ready(_state, _NAME, _source(), list(_FUNCTIONS), "Wilson hopping kernel")


_FUNCTIONS = ("hop", "schur_normal", "cg_schur_normal", "eo_bilinear", "eo_links")


def build_seconds() -> float | None:
    """Seconds the first :func:`available` call in this process spent building/loading."""
    return _state["seconds"]  # type: ignore[return-value]


def usable(psi: torch.Tensor) -> bool:
    """The native kernel applies to ``psi`` (CPU, complex128/complex64, Nc <= 3) and is built."""
    return (
        psi.device.type == "cpu"
        and psi.dtype in (torch.complex128, torch.complex64)
        and psi.shape[-1] <= 3
        and available()
    )


def hop(
    psi: torch.Tensor,
    links: torch.Tensor,
    nbr: torch.Tensor,
    spin: torch.Tensor,
    scale: complex = 1.0,
    add: torch.Tensor | None = None,
    alpha: complex = 0.0,
) -> torch.Tensor:
    """``scale * H psi + alpha * add`` for ``psi[B, R, V, 4, Nc]`` (contiguous), stacked links
    ``[B, V * 8, Nc, Nc]``, neighbour table ``nbr[V * 8]`` (int64 source sites) and spin table
    ``spin[8, 2, 6]`` (float64).  Call only when :func:`available` is true."""
    mod = _state["module"]
    s, a = complex(scale), complex(alpha)
    empty = _EMPTY.get(psi.dtype)
    if empty is None:
        empty = _EMPTY[psi.dtype] = torch.empty(0, dtype=psi.dtype)
    return mod.hop(  # type: ignore[union-attr]
        psi, links, nbr, spin, s.real, s.imag, empty if add is None else add, a.real, a.imag
    )


_EMPTY: dict[torch.dtype, torch.Tensor] = {}


def schur_normal(
    x: torch.Tensor,
    links0: torch.Tensor,
    nbr0: torch.Tensor,
    links1: torch.Tensor,
    nbr1: torch.Tensor,
    spin: torch.Tensor,
    spin_dagger: torch.Tensor,
    a: float,
    s: float,
) -> torch.Tensor:
    """Wilson ``K^dag K x`` with ``K x = s x + a H_oe H_eo x`` (``H_eo``: ``links0``/``nbr0``,
    ``H_oe``: ``links1``/``nbr1``; ``K^dag`` uses ``spin_dagger``, the tables of
    ``gamma_5 H gamma_5``): the four hops of one CG iteration in one call."""
    mod = _state["module"]
    return mod.schur_normal(  # type: ignore[union-attr]
        x, links0, nbr0, links1, nbr1, spin, spin_dagger, float(a), float(s)
    )


def cg_schur_normal(
    b: torch.Tensor,
    x0: torch.Tensor | None,
    links0: torch.Tensor,
    nbr0: torch.Tensor,
    links1: torch.Tensor,
    nbr1: torch.Tensor,
    spin: torch.Tensor,
    spin_dagger: torch.Tensor,
    a: float,
    s: float,
    tol: float,
    max_iter: int,
    max_restarts: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The conjugate gradient of :class:`bridge.solvers.CG` on ``K^dag K`` (arguments as
    :func:`schur_normal`; ``b``, ``x0`` complex128 ``[B, R, V, 4, Nc]``) in one call: no Python
    between iterations.  Returns ``(x, info)``, ``info`` (float64) = ``[status, pap, napp,
    restarts, total, iterations[B*R], |r|^2[B*R], |b|^2[B*R]]`` (one system per configuration
    and right-hand side, as the solver sees the flat field); ``status >= 0`` names the system
    whose ``<p, A p>`` was not positive (``pap``)."""
    mod = _state["module"]
    x, info = mod.cg_schur_normal(  # type: ignore[union-attr]
        b, _EMPTY_C128 if x0 is None else x0, links0, nbr0, links1, nbr1, spin, spin_dagger,
        float(a), float(s), float(tol), int(max_iter), int(max_restarts),
    )
    return x, info


_EMPTY_C128 = torch.empty(0, dtype=torch.complex128)


def eo_bilinear(
    xe: torch.Tensor,
    xo: torch.Tensor,
    ye: torch.Tensor,
    yo: torch.Tensor,
    links0: torch.Tensor,
    nbr0: torch.Tensor,
    links1: torch.Tensor,
    nbr1: torch.Tensor,
    spin: torch.Tensor,
    spin_dagger: torch.Tensor,
    fwd: torch.Tensor,
    dims: tuple[int, int, int, int],
    coeff: float,
) -> torch.Tensor:
    """``coeff * G`` of the full-lattice hopping bilinear (``forces.hop_bilinear``) from compact
    parity fields ``[B, R, V/2, 4, Nc]`` ``X = (xe, xo)``, ``Y = (ye, yo)``, with the even-odd
    hop links and neighbour tables to parity 0 and 1, ``fwd`` the kernel terms ``(mu, +1)`` and
    ``dims`` the lattice shape ``(T, Z, Y, X)``; returns ``[B, 4, T, Z, Y, X, Nc, Nc]``."""
    mod = _state["module"]
    return mod.eo_bilinear(  # type: ignore[union-attr]
        xe, xo, ye, yo, links0, nbr0, links1, nbr1, spin, spin_dagger, fwd, list(dims),
        float(coeff),
    )


def eo_links(
    u: torch.Tensor, nbr0: torch.Tensor, nbr1: torch.Tensor, terms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The stacked even-odd hop links ``[B, 1, V/2 * 8, Nc, Nc]`` of target parity 0 and 1 from
    the boundary-phased links ``u[B, 4, T, Z, Y, X, Nc, Nc]`` (contiguous), the neighbour tables
    of the two hops and ``terms[8, 2]`` = ``(mu, step)`` of the kernel terms: what
    ``hopping.kernel_links`` builds term by term, in one pass."""
    mod = _state["module"]
    l0, l1 = mod.eo_links(u, nbr0, nbr1, terms)  # type: ignore[union-attr]
    return l0, l1
