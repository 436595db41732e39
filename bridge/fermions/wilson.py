"""Wilson (and Wilson-clover) Dirac operator, its even-odd (Schur) form and its force kernels.

Conventions (docs/conventions.md, docs/fermions.md)
----------------------------------------------------
Fields: ``psi[batch, t, z, y, x, spin(4), colour(Nc)]``; the batch axis may hold ``R`` right-hand
sides per gauge configuration, config-major (``psi[b * R + r]`` belongs to configuration ``b``).
Even-odd fields keep one parity only, compactly: ``psi_p[batch, t, z, y, x // 2, 4, Nc]`` holds
the sites with ``(x + y + z + t) % 2 == p`` (``p = 0`` even, ``1`` odd: Chroma's ``rb[0]``,
``rb[1]``).

Kappa normalisation (hopping parameter ``kappa``, ``m = 1/(2 kappa) - 4``)::

    D psi(x) = A psi(x) - kappa H psi(x),
    H psi(x) = sum_mu [(1 - gamma_mu) U_mu(x) psi(x+mu) + (1 + gamma_mu) U_mu(x-mu)^dag psi(x-mu)],
    A = 1 + kappa c_sw C,     C = i sum_{mu<nu} sigma_{mu nu} Fhat_{mu nu},

with ``sigma_{mu nu} = (i/2)[gamma_mu, gamma_nu]`` and the anti-Hermitian clover-leaf field
strength ``Fhat_{mu nu} = (Q_{mu nu} - Q_{mu nu}^dag) / 8`` (``Q``: the four plaquette leaves at
``x`` in the ``mu nu`` plane, all oriented mu-then-nu; no trace subtraction), exactly Chroma's
``mesField``.  ``C`` is Hermitian (``i`` times a product of a Hermitian spin matrix and an
anti-Hermitian colour matrix that commute) and commutes with ``gamma_5``.

Chroma's fermion matrix (``normalisation="chroma"``) is ``M = D / (2 kappa)``::

    M = (4 + m) - (1/2) H + (c_sw / 2) i sum_{mu<nu} sigma_{mu nu} Fhat_{mu nu}
      = (4 + m) - (1/2) H + (i c_sw / 4) sum_{mu,nu} sigma_{mu nu} Fhat_{mu nu},

the Sheikholeslami-Wohlert term of Luescher, Sint, Sommer, Weisz (hep-lat/9605038, eq. 2.?) and
of Chroma's ``QDPCloverTermT::makeClov`` (``clovCoeff`` times 1/2, times the ``mesField`` F, in the
chiral 6x6 block layout); the test suite rebuilds Chroma's 6x6 blocks element by element from its
source and compares.  Chroma's propagator ``M^{-1}`` is ``2 kappa D^{-1}``.

Boundary conditions: ``boundary = (phase_x, phase_y, phase_z, phase_t)``, default
``(1, 1, 1, -1)``, i.e. ``psi(x + L_mu mu) = phase_mu psi(x)``.  As Chroma's ``SIMPLE_FERMBC`` the
phases are folded into the hopping links: ``U_mu(x) -> phase_mu U_mu(x)`` on the last slice
``x_mu = L_mu - 1`` (a hop forward across the boundary picks up ``phase``, backward
``conj(phase)``).
The clover term uses the plain links (each leaf crossing the boundary contains the boundary link
and its inverse, so the sign would cancel anyway).

Even-odd preconditioning (Chroma's ``EvenOddPrecWilsonLinOp`` / ``EvenOddPrecCloverLinOp``):
with ``D = [[A_ee, -kappa H_eo], [-kappa H_oe, A_oo]]`` the Schur complement on the odd sites is::

    K = A_oo - kappa^2 H_oe A_ee^{-1} H_eo           (times 1/(2 kappa) for "chroma")

``D x = b`` is solved by ``K x_o = b_o + kappa H_oe A_ee^{-1} b_e`` (the same for both
normalisations), then ``x_e = A_ee^{-1} (b_e / s + kappa H_eo x_o)`` with ``s`` the normalisation
factor (1 or ``1/(2 kappa)``).  ``det D = det A_ee det K``; for Wilson ``A_ee = 1``.

Implementation: the hopping term uses spin projection (``1 -/+ gamma_mu = B^dag B`` with ``B`` a
2x4 matrix, see :func:`bridge.fermions.gamma.spin_projectors`): per direction the colour matrix
multiplies a 2-component half spinor, so a full ``H`` costs 1320 flop per site for SU(3)
(8 x (2 x 66 su3 x half-spinor) + projections + accumulation; the standard count).  Everything is
vectorised over the whole lattice and the batch; no Python loops over sites.

On the CPU the hopping term (every form: full lattice, one parity, dagger, and the Wilson ``D``,
``K``, ``K^dag K``) runs in the optional native C++ kernel of :mod:`._native` when it builds
(first use, cached; ``QCD_BRIDGE_NATIVE=0`` disables it), with the same neighbour tables,
stacked links and spin coefficients as the torch gather kernel; otherwise, and on CUDA, in torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import PhysicsError
from ..gauge import clover_field_strength
from ..groups import dagger, mm, project_algebra
from ..lattice import Lattice
from . import _native
from .gamma import NS, gamma_matrices, sigma_matrices

__all__ = [
    "WilsonDirac",
    "OperatorView",
    "clover_field_strength",
    "clover_matrix",
    "apply_gamma5",
    "exact_logdet",
    "DSLASH_FLOPS_PER_SITE",
]

DSLASH_FLOPS_PER_SITE = 1320
"""The conventional flop count of one Wilson hopping term ``H psi`` per site for SU(3)."""

_NORMALISATIONS = ("kappa", "chroma")
_PLANES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))  # Chroma's mesField order


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def apply_gamma5(psi: torch.Tensor) -> torch.Tensor:
    """``gamma_5 psi`` for ``psi[..., 4, Nc]`` in the DeGrand-Rossi basis (``diag(1,1,-1,-1)``)."""
    return torch.cat([psi[..., :2, :], -psi[..., 2:, :]], dim=-2)


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


def _spin_tables() -> list[tuple[bool, list[complex], list[complex]]]:
    """For each mu: ``(swap, k, kd)`` describing ``K_mu = -gamma_mu[:2, 2:]`` and ``K_mu^dag``.

    ``(K v)[i] = k[i] v[perm(i)]`` with ``perm`` the identity or the swap; the same for ``K^dag``
    with ``kd``.  (``B^{-} = [1, K]`` projects with ``1 - gamma_mu``, ``B^{+} = [1, -K]``.)
    """
    g = gamma_matrices()
    out = []
    for mu in range(4):
        k = -g[mu][:2, 2:]
        swap = bool(k[0, 0] == 0)
        perm = [1, 0] if swap else [0, 1]
        kv = [complex(k[i, perm[i]]) for i in range(2)]
        kdm = k.conj().T
        kdv = [complex(kdm[i, perm[i]]) for i in range(2)]
        out.append((swap, kv, kdv))
    return out


_SPIN = _spin_tables()


def _row_tables() -> list[tuple[tuple[tuple[int, complex], ...], ...]]:
    """Per mu: ``((perm(j), k_j) for j = 0, 1)`` of ``K_mu`` and of ``K_mu^dag``."""
    out = []
    for swap, k, kd in _SPIN:
        perm = (1, 0) if swap else (0, 1)
        out.append((tuple(zip(perm, k, strict=True)), tuple(zip(perm, kd, strict=True))))
    return out


_ROWS = _row_tables()


def _spin_matrices(dagger: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, R)`` of the gather kernel in complex128: ``P[2k + j, s]`` projects a 4-spinor onto
    row ``j`` of the half spinor of term ``k`` of :data:`_TERMS` (``B = [1, +/-K_mu]``,
    ``B^dag B = 1 -/+ gamma_mu`` for a forward/backward hop), ``R = [B_0^dag ... B_7^dag]``
    (``[4, 16]``) reconstructs and sums the 8 terms.  ``dagger``: the same for
    ``H^dag = gamma_5 H gamma_5`` (every ``K`` with the opposite sign)."""
    g = gamma_matrices(torch.complex128)
    eye = torch.eye(2, dtype=torch.complex128)
    ps, rs = [], []
    for mu, step in _TERMS:
        sign = -float(step) if dagger else float(step)
        b = torch.cat([eye, -sign * g[mu][:2, 2:]], dim=1)  # [1, s K_mu], K_mu = -g[:2, 2:]
        ps.append(b)
        rs.append(b.conj().T)
    return torch.cat(ps, dim=0), torch.cat(rs, dim=1)

def _native_spin_table(dagger: bool) -> torch.Tensor:
    """Spin table ``[8, 2, 6]`` (float64) of the native kernel, per term ``k`` and half-spinor
    row ``j``: ``(lo, Re cP, Im cP, wi, Re cL, Im cL)`` with ``h_j = psi_j + cP psi_{2 + lo}`` and
    lower spin ``2 + j += cL w_wi`` (the gather kernel's ``gP``/``lo_idx``/``gL``/``w_idx``;
    ``dagger``: every ``K_mu`` with the opposite sign, ``gamma_5 H gamma_5``)."""
    key = bool(dagger)
    if key not in _NATIVE_SPIN:
        sign = -1.0 if dagger else 1.0
        rows = []
        for mu, step in _TERMS:
            for j in range(2):
                lo, kp = _ROWS[mu][0][j]
                wi, kl = _ROWS[mu][1][j]
                cp, cl = sign * step * kp, sign * step * kl
                rows.append([lo, cp.real, cp.imag, wi, cl.real, cl.imag])
        _NATIVE_SPIN[key] = torch.tensor(rows, dtype=torch.float64).reshape(8, 2, 6)
    return _NATIVE_SPIN[key]


_NATIVE_SPIN: dict[bool, torch.Tensor] = {}

# kernel term order: the swapping directions (x, y) first, forward (+1) and backward (-1)
_TERMS: tuple[tuple[int, int], ...] = ((0, 1), (1, 1), (0, -1), (1, -1), (2, 1), (3, 1), (2, -1),
                                       (3, -1))
_COEF_CACHE: dict[tuple[torch.dtype, torch.device], dict[str, torch.Tensor]] = {}
_BILINEAR_GATHER_MAX_SITES = 1024
_FUSED_MIN_SITES = 4096
"""Fields with at least this many sites (counting batch and right-hand sides) use the fused
projection kernel, smaller ones the gather kernel (crossover measured on the CPU for SU(3),
float64, one thread: gather 0.33 vs fused 0.67 ms on a 4^2 x 8^2 one-parity field, 1.45 vs
1.62 ms on 8^4 one-parity, about equal (3.0 vs 2.9 ms) on the full 8^4 lattice;
docs/performance.md)."""


def _project(
    up: torch.Tensor, lo: torch.Tensor, rows: tuple[tuple[int, complex], ...], sign: float
) -> torch.Tensor:
    """Unshifted half spinor ``h_j = up_j + sign k_j lo_{perm j}``."""
    parts = [
        torch.add(up[..., j, :], lo[..., pj, :], alpha=sign * kj)
        for j, (pj, kj) in enumerate(rows)
    ]
    return torch.stack(parts, dim=-2)


class _Geometry:
    """Neighbour access on one field layout, for tensors ``f[B, R, t, z, y, x', ...]`` (lattice
    at dims 2..5, two trailing internal dims).

    Full lattice (``xmask=None``): ``x' = x`` and a shift is a periodic roll.  One parity
    (compact ``x' = x // 2``, target parity ``p``): y, z, t neighbours keep ``x'``; the x
    neighbour is ``x' + 1`` (forward) where the target site has ``x`` odd-offset (``xmask``
    true: ``(p + y + z + t) % 2 == 1``), else ``x'``; backward ``x' - 1`` where ``xmask`` is false.
    """

    def __init__(self, lat_shape: tuple[int, int, int, int], xmask: torch.Tensor | None) -> None:
        self.shape = lat_shape
        self.xmask = xmask
        self._gather: torch.Tensor | None = None
        self._native: torch.Tensor | None = None

    def gather_index(self, device: torch.device) -> torch.Tensor:
        """``idx[x * 8 + k] = n_k(x) * 8 + k`` with ``n_k(x)`` the flat source site of term ``k``
        of :data:`_TERMS` (``x + step mu``): one ``index_select`` gathers all 8 neighbours."""
        if self._gather is None or self._gather.device != device:
            v = self.shape[0] * self.shape[1] * self.shape[2] * self.shape[3]
            src = torch.arange(v, device=device).view(1, 1, *self.shape, 1, 1)
            nb = torch.stack(
                [self.shift(src, mu, step).reshape(v) for mu, step in _TERMS], dim=1
            )  # [v, 8]
            self._gather = (nb * 8 + torch.arange(8, device=device)).reshape(v * 8)
        return self._gather

    def native_index(self) -> torch.Tensor:
        """``nbr[x * 8 + k] = n_k(x)`` (int64, CPU, contiguous) for the native kernel."""
        if self._native is None:
            self._native = (self.gather_index(torch.device("cpu")) // 8).contiguous()
        return self._native

    def shift(self, f: torch.Tensor, mu: int, step: int) -> torch.Tensor:
        """``g(x) = f(x + step mu)``, ``step = +1/-1``."""
        dim = 5 - mu
        if mu == 0 and self.xmask is not None:
            if step > 0:
                return torch.where(self.xmask, torch.roll(f, -1, dim), f)
            return torch.where(self.xmask, f, torch.roll(f, 1, dim))
        return torch.roll(f, -step, dim)

    def project_shift(
        self,
        up: torch.Tensor,
        lo: torch.Tensor,
        rows: tuple[tuple[int, complex], ...],
        sign: float,
        mu: int,
        step: int,
        out: torch.Tensor,
    ) -> torch.Tensor:
        """``out(x) = h(x + step mu)`` with the half spinor ``h_j = up_j + sign k_j lo_{perm j}``
        (``rows = ((perm 0, k_0), (perm 1, k_1))``), fused: each spin row is one ``add`` with a
        complex ``alpha`` written straight into the shifted slab of ``out`` (no flip, no roll)."""
        dim = 5 - mu
        n = up.shape[dim]
        if (mu == 0 and self.xmask is not None) or n == 1:
            tmp = torch.empty_like(out)
            for j, (pj, kj) in enumerate(rows):
                torch.add(up[..., j, :], lo[..., pj, :], alpha=sign * kj, out=tmp[..., j, :])
            if n == 1:
                out.copy_(tmp)
            else:
                torch.where(
                    self.xmask,
                    torch.roll(tmp, -1, dim) if step > 0 else tmp,
                    tmp if step > 0 else torch.roll(tmp, 1, dim),
                    out=out,
                )
            return out
        # value at x + step: forward dst[0:n-1] = src[1:n], dst[n-1] = src[0];
        #                    backward dst[1:n] = src[0:n-1], dst[0] = src[n-1]
        if step > 0:
            pairs = (((0, n - 1), (1, n)), ((n - 1, n), (0, 1)))
        else:
            pairs = (((1, n), (0, n - 1)), ((0, 1), (n - 1, n)))
        for (d0, d1), (s0, s1) in pairs:
            dst = out.narrow(dim, d0, d1 - d0)
            u_s = up.narrow(dim, s0, s1 - s0)
            l_s = lo.narrow(dim, s0, s1 - s0)
            for j, (pj, kj) in enumerate(rows):
                torch.add(u_s[..., j, :], l_s[..., pj, :], alpha=sign * kj, out=dst[..., j, :])
        return out

_GEOMETRIES: dict[tuple, _Geometry] = {}


def _shared_geometry(
    shape: tuple[int, ...], parity: int | None, device: torch.device, xmask: torch.Tensor | None
) -> _Geometry:
    """One :class:`_Geometry` per (layout, parity, device), shared by all operators so that its
    neighbour table is built once (the HMC builds a new operator for every force evaluation)."""
    key = (tuple(shape), parity, device)
    if key not in _GEOMETRIES:
        _GEOMETRIES[key] = _Geometry(tuple(shape), xmask)
    return _GEOMETRIES[key]


# ------------------------------------------------------------------------------------------------
# clover term (the field strength is bridge.gauge.clover_field_strength, Chroma's mesField)
# ------------------------------------------------------------------------------------------------
def _i_sigma(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``i sigma_{mu nu}`` for the six planes, ``[6, 4, 4]``."""
    return 1j * sigma_matrices(dtype, device)


def clover_matrix(u: torch.Tensor) -> torch.Tensor:
    """``C = i sum_{mu<nu} sigma_{mu nu} Fhat_{mu nu}`` per site in its two chiral 6x6 blocks.

    Shape ``[batch, t, z, y, x, 2, 2 Nc, 2 Nc]``; block 0 acts on spins (0, 1), block 1 on
    spins (2, 3), and within a block the index is ``spin_local * Nc + colour`` (Chroma's
    ``PrimitiveClovTriang`` layout).  ``sigma_{mu nu}`` commutes with ``gamma_5`` (diagonal in
    this basis), so the off-diagonal chiral blocks vanish.  Hermitian.
    """
    f = clover_field_strength(u)
    nc = int(u.shape[-1])
    isig = _i_sigma(u.dtype, u.device)
    full = torch.einsum("pst,bp...ac->b...satc", isig, f)
    full = full.reshape(*full.shape[:-4], NS * nc, NS * nc)
    h = 2 * nc
    return torch.stack([full[..., :h, :h], full[..., h:, h:]], dim=-3)


def _clover_apply(blocks: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """Apply per-site chiral blocks ``[B, 1, *L, 2, 2Nc, 2Nc]`` to ``psi[B, R, *L, 4, Nc]``."""
    nc = psi.shape[-1]
    v = psi.reshape(*psi.shape[:-2], 2, 2 * nc, 1)
    return torch.matmul(blocks, v).reshape(psi.shape)


def _blocks_to_full(blocks: torch.Tensor) -> torch.Tensor:
    """Chiral blocks ``[..., 2, n, n]`` -> block-diagonal ``[..., 2n, 2n]``."""
    n = blocks.shape[-1]
    z = torch.zeros_like(blocks[..., 0, :, :])
    top = torch.cat([blocks[..., 0, :, :], z], dim=-1)
    bot = torch.cat([z, blocks[..., 1, :, :]], dim=-1)
    out = torch.cat([top, bot], dim=-2)
    return out.reshape(*blocks.shape[:-3], 2 * n, 2 * n)


# ------------------------------------------------------------------------------------------------
# the operator
# ------------------------------------------------------------------------------------------------
class WilsonDirac:
    """Wilson(-clover) Dirac operator on a batched gauge field ``U[batch, 4, t, z, y, x, Nc, Nc]``.

    Parameters
    ----------
    U:
        Gauge field (complex128 or complex64; the operator inherits dtype and device from it).
    kappa:
        Hopping parameter, ``m = 1/(2 kappa) - 4``.
    c_sw:
        Clover coefficient (0: plain Wilson).
    boundary:
        Fermion boundary phases ``(x, y, z, t)``; default antiperiodic in time ``(1, 1, 1, -1)``.
    normalisation:
        ``"kappa"``: ``D = A - kappa H`` (default); ``"chroma"``: ``M = D / (2 kappa)``.

    All ``apply*`` methods take ``psi[batch * R, t, z, y, x, 4, Nc]`` (``R`` right-hand sides per
    configuration) and the ``*_eo``/``schur*`` ones compact parity fields
    ``[batch * R, t, z, y, x // 2, 4, Nc]``.
    """

    def __init__(
        self,
        U: torch.Tensor,
        kappa: float,
        *,
        c_sw: float = 0.0,
        boundary: Sequence[complex] = (1, 1, 1, -1),
        normalisation: str = "kappa",
    ) -> None:
        lat = Lattice.of(U)
        self.batch, self.nc = lat.check_gauge(U)
        if lat.nd != 4:
            raise ValueError(f"U: Wilson fermions need Nd = 4, got Nd = {lat.nd} (nrow {lat.nrow})")
        if U.dtype not in (torch.complex128, torch.complex64):
            raise ValueError(f"U: expected complex128 or complex64, got {U.dtype}")
        self.lattice = lat
        self.U = U
        self.kappa = _check_kappa(kappa)
        try:
            self.c_sw = float(c_sw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"c_sw: expected a real number, got {c_sw!r}") from exc
        if not math.isfinite(self.c_sw):
            raise ValueError(f"c_sw: expected a finite clover coefficient, got {c_sw!r}")
        self.boundary = _check_boundary(boundary)
        if normalisation not in _NORMALISATIONS:
            raise ValueError(
                f"normalisation: expected one of {_NORMALISATIONS}, got {normalisation!r}"
            )
        self.normalisation = normalisation
        self.scale = 1.0 if normalisation == "kappa" else 1.0 / (2.0 * self.kappa)
        self.dtype = U.dtype
        self.device = U.device

        # links with the boundary phases folded in (Chroma's SIMPLE_FERMBC)
        uph = U
        if any(p != 1 for p in self.boundary):
            uph = U.clone()
            for mu, p in enumerate(self.boundary):
                if p != 1:
                    ax = 2 + lat.axis(mu)
                    idx = lat.nrow[mu] - 1
                    sl = uph[:, mu].narrow(ax - 1, idx, 1)
                    sl.mul_(p)
        self._uph = uph
        self._geo = _shared_geometry(lat.shape, None, self.device, None)
        self._coef: dict[torch.dtype, dict[str, torch.Tensor]] = {}
        self._stacked: dict[int, tuple[Sequence[torch.Tensor], torch.Tensor]] = {}
        self._links = self._kernel_links(uph, uph, self._geo)

        self._clover: torch.Tensor | None = None
        self._a: torch.Tensor | None = None
        if self.c_sw != 0.0:
            self._clover = clover_matrix(U).unsqueeze(1)  # [B, 1, *L, 2, 2Nc, 2Nc]
            eye = torch.eye(2 * self.nc, dtype=self.dtype, device=self.device)
            self._a = eye + (self.kappa * self.c_sw) * self._clover
        self._eo: dict[str, object] | None = None
        self._to_cache: dict[torch.dtype, WilsonDirac] = {}

    # -- basic properties -------------------------------------------------------------------
    @property
    def mass(self) -> float:
        """Bare mass ``m = 1/(2 kappa) - 4``."""
        return 1.0 / (2.0 * self.kappa) - 4.0

    @property
    def has_clover(self) -> bool:
        return self._clover is not None

    def __repr__(self) -> str:
        return (
            f"WilsonDirac({self.lattice!r}, batch={self.batch}, Nc={self.nc}, kappa={self.kappa}, "
            f"c_sw={self.c_sw}, boundary={self.boundary}, normalisation={self.normalisation!r}, "
            f"dtype={self.dtype})"
        )

    def to(self, dtype: torch.dtype) -> WilsonDirac:
        """The same operator with links in ``dtype`` (complex64/complex128; cached)."""
        if dtype in (torch.float32, torch.complex64):
            dtype = torch.complex64
        elif dtype in (torch.float64, torch.complex128):
            dtype = torch.complex128
        else:
            raise ValueError(f"dtype: expected complex64 or complex128, got {dtype}")
        if dtype == self.dtype:
            return self
        if dtype not in self._to_cache:
            self._to_cache[dtype] = WilsonDirac(
                self.U.to(dtype),
                self.kappa,
                c_sw=self.c_sw,
                boundary=self.boundary,
                normalisation=self.normalisation,
            )
        return self._to_cache[dtype]

    # -- shapes -------------------------------------------------------------------------------
    def field_shape(self, nrhs: int = 1) -> tuple[int, ...]:
        """Shape of a full fermion field with ``nrhs`` right-hand sides per configuration."""
        return (self.batch * nrhs, *self.lattice.shape, NS, self.nc)

    def eo_shape(self, nrhs: int = 1) -> tuple[int, ...]:
        """Shape of a one-parity (compact) fermion field."""
        t, z, y, x = self.lattice.shape
        return (self.batch * nrhs, t, z, y, x // 2, NS, self.nc)

    def _in(self, psi: torch.Tensor, eo: bool = False, name: str = "psi") -> torch.Tensor:
        """Validate and reshape ``psi[B*R, ...]`` to ``[B, R, ...]``."""
        if not isinstance(psi, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(psi).__name__}")
        lshape = self.eo_shape(1)[1:] if eo else self.field_shape(1)[1:]
        kind = "one-parity [batch*R, t, z, y, x/2, 4, Nc]" if eo else "[batch*R, t, z, y, x, 4, Nc]"
        if psi.dim() != 7 or tuple(psi.shape[1:]) != lshape or psi.shape[0] % self.batch:
            raise ValueError(
                f"{name}: expected a {kind} field with trailing shape {lshape} and a batch that "
                f"is a multiple of the gauge batch {self.batch}, got shape {tuple(psi.shape)}"
            )
        if psi.dtype != self.dtype:
            raise ValueError(
                f"{name}: dtype {psi.dtype} does not match the operator's {self.dtype} "
                "(use op.to(dtype) for another precision)"
            )
        if psi.device != self.device:
            raise ValueError(
                f"{name}: device {psi.device} does not match the operator's {self.device}"
            )
        return psi.reshape(self.batch, psi.shape[0] // self.batch, *psi.shape[1:]).contiguous()

    @staticmethod
    def _out(p5: torch.Tensor) -> torch.Tensor:
        return p5.reshape(p5.shape[0] * p5.shape[1], *p5.shape[2:])

    # -- the hopping kernel ------------------------------------------------------------------
    @staticmethod
    def _kernel_links(
        u_target: torch.Tensor, u_source: torch.Tensor, geo: _Geometry
    ) -> list[torch.Tensor]:
        """The 8 colour matrices of the kernel, ``[B, 1, *L, Nc, Nc]`` each, in the order of
        :data:`_TERMS`: ``U_mu(x)^T`` (forward, at the target site) and
        ``conj(U_mu(x - mu)) = (U_mu(x - mu)^dag)^T`` (backward, shifted once here so that the
        kernel never shifts a product).  With spin as rows, ``U psi = psi @ U^T``."""
        out = []
        for mu, step in _TERMS:
            if step > 0:
                out.append(u_target[:, mu].transpose(-1, -2).contiguous().unsqueeze(1))
            else:
                ub = u_source[:, mu].conj().unsqueeze(1)
                out.append(geo.shift(ub, mu, -1).contiguous())
        return out

    def _coefficients(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Spin coefficient tensors of the kernel (cached per dtype and device, shared by all
        operators: a new operator is built for every force evaluation of the HMC)."""
        if dtype not in self._coef:
            shared = _COEF_CACHE.get((dtype, self.device))
            if shared is not None:
                self._coef[dtype] = shared
                return shared
            kt = [
                torch.tensor([step * k for _, k in _ROWS[mu][0]], dtype=dtype,
                             device=self.device).reshape(2, 1)
                for mu, step in _TERMS
            ]
            # lower reconstruction: +K^dag (forward), -K^dag (backward); swapped terms carry the
            # coefficient of the row they land in after the final flip
            low = []
            for mu, step in _TERMS:
                kd = [k for _, k in _ROWS[mu][1]]
                if _SPIN[mu][0]:
                    kd = kd[::-1]
                low.append([step * k for k in kd])
            lw = torch.tensor(low, dtype=dtype, device=self.device).reshape(8, 2, 1)
            # gather path: h_kj = up_j + gP_kj lo_{lo_idx_kj};  lower_j = sum_k gL_kj w_{k, perm j}
            g_p = torch.stack(kt)  # [8, 2, 1]
            g_l = torch.tensor(
                [[step * k for _, k in _ROWS[mu][1]] for mu, step in _TERMS],
                dtype=dtype, device=self.device,
            ).reshape(8, 2, 1)
            lo_idx = torch.tensor([pj for mu, _ in _TERMS for pj, _ in _ROWS[mu][0]],
                                  device=self.device)
            w_idx = torch.tensor([2 * k + pj for k, (mu, _) in enumerate(_TERMS)
                                  for pj, _ in _ROWS[mu][1]], device=self.device)
            self._coef[dtype] = {"k": kt, "low_sw": lw[:4], "low_ns": lw[4:], "gP": g_p,
                                 "gL": g_l, "lo_idx": lo_idx, "w_idx": w_idx}
            for dag in (False, True):
                pm, rm = _spin_matrices(dag)
                self._coef[dtype][f"P{int(dag)}"] = pm.to(dtype=dtype, device=self.device)
                self._coef[dtype][f"R{int(dag)}"] = rm.to(dtype=dtype, device=self.device)
                self._coef[dtype][f"PR{int(dag)}"] = (pm @ rm).to(dtype=dtype, device=self.device)
            self._coef[dtype]["fwd_terms"] = torch.tensor(
                [_TERMS.index((mu, 1)) for mu in range(4)], device=self.device)
            _COEF_CACHE[(dtype, self.device)] = self._coef[dtype]
        return self._coef[dtype]

    def _hop_kernel(
        self,
        psi: torch.Tensor,
        links: Sequence[torch.Tensor],
        geo: _Geometry,
        dagger: bool = False,
        scale: float = 1.0,
    ) -> torch.Tensor:
        """``scale * sum_mu [(1 - g_mu) U_mu(x) psi(x+mu) + (1 + g_mu) U_mu(x-mu)^dag psi(x-mu)]``
        (``dagger``: ``gamma_5 H gamma_5``, i.e. ``1 +/- g_mu``).

        ``psi[B, R, *L, 4, Nc]`` (full lattice or one parity, see :class:`_Geometry`).  With the
        half-spinor projections ``B^{-/+} = [1, +/-K_mu]`` (``1 -/+ g_mu = B^dag B``) each of the
        8 terms is a shifted projection, then one batched ``2 x Nc`` by ``Nc x Nc`` colour product
        (``torch.matmul``: faster than ``einsum`` or broadcast sums on the CPU, see
        docs/performance.md) written into ``w[k]``.  Reconstruction ``B^dag w = [w ; +/-K^dag w]``:
        upper spins ``sum_k w_k`` (one reduction); lower spins a coefficient-weighted sum (the
        swapping directions x, y first, flipped once).

        Large fields (>= :data:`_FUSED_MIN_SITES` sites incl. batch) fuse the projection and the
        shift into complex-``alpha`` adds written straight into the shifted slab (one memory
        pass, no flip/roll).  Smaller fields, where per-op overhead dominates, take
        :meth:`_hop_gather` (four whole-field ops); both agree to rounding.
        """
        if _native.usable(psi):
            return self._hop_native(psi, links, geo, dagger, scale)
        if psi.numel() // (4 * psi.shape[-1]) < _FUSED_MIN_SITES:
            return self._hop_gather(psi, links, geo, dagger, scale)
        if dagger:
            return apply_gamma5(self._hop_kernel(apply_gamma5(psi), links, geo, False, scale))
        out = self._hop_fused(psi, links, geo)
        return out.mul_(scale) if scale != 1.0 else out

    def _hop_native(
        self,
        psi: torch.Tensor,
        links: Sequence[torch.Tensor],
        geo: _Geometry,
        dagger: bool = False,
        scale: complex = 1.0,
        add: torch.Tensor | None = None,
        alpha: complex = 0.0,
    ) -> torch.Tensor:
        """``scale H psi + alpha add`` by the native C++ kernel (:mod:`._native`; CPU only, the
        caller checks :func:`._native.usable`): one pass over the target sites with the same
        neighbour table, stacked links and spin coefficients as :meth:`_hop_gather`."""
        b, r = psi.shape[:2]
        v = psi.shape[2] * psi.shape[3] * psi.shape[4] * psi.shape[5]
        nc = psi.shape[-1]
        out = _native.hop(
            psi.reshape(b, r, v, 4, nc).contiguous(),
            self._stacked_links(links, v),
            geo.native_index(),
            _native_spin_table(dagger),
            scale,
            None if add is None else add.reshape(b, r, v, 4, nc).contiguous(),
            alpha,
        )
        return out.view(psi.shape)

    def _hop_fused(
        self, psi: torch.Tensor, links: Sequence[torch.Tensor], geo: _Geometry
    ) -> torch.Tensor:
        """The fused-projection kernel of :meth:`_hop_kernel` (large fields)."""
        up = psi[..., :2, :]
        lo = psi[..., 2:, :]
        nc = psi.shape[-1]
        coef = self._coefficients(psi.dtype)
        w = torch.empty((8, *psi.shape[:-2], 2, nc), dtype=psi.dtype, device=psi.device)
        h = torch.empty((*psi.shape[:-2], 2, nc), dtype=psi.dtype, device=psi.device)
        for k, (mu, step) in enumerate(_TERMS):
            geo.project_shift(up, lo, _ROWS[mu][0], float(step), mu, step, h)
            torch.matmul(h, links[k], out=w[k])
        out = torch.empty_like(psi)
        out[..., :2, :] = w.sum(0)
        # coefficients expanded over colour: a contiguous inner axis keeps the multiply vectorised
        w2 = w.view(8, -1, 2 * nc)
        c_sw = coef["low_sw"].expand(4, 2, nc).reshape(4, 1, 2 * nc)
        c_ns = coef["low_ns"].expand(4, 2, nc).reshape(4, 1, 2 * nc)
        sw = (w2[:4] * c_sw).sum(0).view(-1, 2, nc)
        ns = (w2[4:] * c_ns).sum(0).view(-1, 2, nc)
        out[..., 2:, :] = (sw.flip(-2) + ns).view(h.shape)
        return out

    def _stacked_links(self, links: Sequence[torch.Tensor], v: int) -> torch.Tensor:
        key = id(links)
        if key not in self._stacked:
            nc = links[0].shape[-1]
            self._stacked[key] = (links, torch.stack(list(links), dim=6).view(
                links[0].shape[0], 1, v * 8, nc, nc))
        return self._stacked[key][1]

    def _hop_gather(
        self,
        psi: torch.Tensor,
        links: Sequence[torch.Tensor],
        geo: _Geometry,
        dagger: bool = False,
        scale: float = 1.0,
    ) -> torch.Tensor:
        """The hopping term in four whole-field ops (for small fields, where every op costs
        ~5-20 us whatever its size): the 8 half spinors of every source site as one contraction
        with the constant ``[16, 4]`` spin matrix ``P`` (a single GEMM inside ``einsum``), one
        ``index_select`` gathering each target's 8 neighbours, one ``matmul`` against the 8
        stacked links, and reconstruction plus sum over the terms as one contraction with the
        ``[4, 16]`` matrix ``R`` (``scale`` folded into it).  ``dagger`` swaps in the matrices
        of ``gamma_5 H gamma_5``.  :meth:`_hop_gather_reference` is the previous form."""
        b, r = psi.shape[:2]
        v = psi.shape[2] * psi.shape[3] * psi.shape[4] * psi.shape[5]
        nc = psi.shape[-1]
        c = self._coefficients(psi.dtype)
        lst = self._stacked_links(links, v)
        rm = c[f"R{int(dagger)}"]
        if scale != 1.0:
            rm = rm * scale
        h = torch.einsum("ks,brvsc->brvkc", c[f"P{int(dagger)}"], psi.reshape(b, r, v, 4, nc))
        w = self._gather_colour(h, lst, geo)
        return torch.einsum("sk,brvkc->brvsc", rm, w).reshape(psi.shape)

    @staticmethod
    def _gather_colour(h: torch.Tensor, lst: torch.Tensor, geo: _Geometry) -> torch.Tensor:
        """Half spinors ``h[B, R, V, 16, Nc]`` of the 8 terms at every source site -> the colour
        products ``w[B, R, V, 16, Nc]`` at the target sites (one gather, one ``matmul``)."""
        b, r, v, _, nc = h.shape
        h = h.reshape(b, r, v * 8, 2, nc).index_select(2, geo.gather_index(h.device))
        return torch.matmul(h, lst).view(b, r, v, 16, nc)

    def _schur5_gather(self, x5: torch.Tensor, dagger: bool) -> torch.Tensor:
        """``K x`` (or ``K^dag x``) for Wilson fermions on small fields: the reconstruction of
        the first hop and the projection of the second are one ``[16, 16]`` spin matrix
        ``P R`` (with ``-kappa^2 s``), so ``K`` costs three spin contractions instead of four."""
        eo = self._eo_setup()
        b, r = x5.shape[:2]
        v = x5.shape[2] * x5.shape[3] * x5.shape[4] * x5.shape[5]
        nc = x5.shape[-1]
        c = self._coefficients(x5.dtype)
        d = int(dagger)
        a = -(self.kappa**2) * self.scale
        pr = c[f"PR{d}"] * a
        h = torch.einsum("ks,brvsc->brvkc", c[f"P{d}"], x5.reshape(b, r, v, 4, nc))
        w = self._gather_colour(h, self._stacked_links(eo["links0"], v), eo["geo0"])
        h = torch.einsum("kj,brvjc->brvkc", pr, w)
        w = self._gather_colour(h, self._stacked_links(eo["links1"], v), eo["geo1"])
        out = torch.einsum("sk,brvkc->brvsc", c[f"R{d}"], w).reshape(x5.shape)
        return out.add_(x5, alpha=self.scale)

    def _hop_gather_reference(
        self, psi: torch.Tensor, links: Sequence[torch.Tensor], geo: _Geometry
    ) -> torch.Tensor:
        """The hopping term in a handful of whole-field ops (for small fields): all 8 half
        spinors at every source site (one ``addcmul`` on spin-permuted rows), one
        ``index_select`` gathering each target's 8 neighbours, one ``matmul`` against the 8
        stacked link matrices, and the reconstruction as two reductions."""
        b, r = psi.shape[:2]
        lat = psi.shape[2:6]
        v = lat[0] * lat[1] * lat[2] * lat[3]
        nc = psi.shape[-1]
        c = self._coefficients(psi.dtype)
        lst = self._stacked_links(links, v)
        up = psi[..., :2, :].unsqueeze(-3)
        lo = psi[..., 2:, :].index_select(-2, c["lo_idx"]).view(*psi.shape[:-2], 8, 2, nc)
        h = torch.addcmul(up, lo, c["gP"]).reshape(b, r, v * 8, 2, nc)
        h = h.index_select(2, geo.gather_index(psi.device))
        w = torch.matmul(h, lst).reshape(*psi.shape[:-2], 16, nc)
        out_up = w.view(*psi.shape[:-2], 8, 2, nc).sum(-3)
        out_lo = w.index_select(-2, c["w_idx"]).view(*psi.shape[:-2], 8, 2, nc) * c["gL"]
        return torch.cat([out_up, out_lo.sum(-3)], dim=-2)

    def _hop(self, p5: torch.Tensor) -> torch.Tensor:
        return self._hop_kernel(p5, self._links, self._geo)

    # -- full operator -----------------------------------------------------------------------
    def hopping(self, psi: torch.Tensor) -> torch.Tensor:
        """``H psi`` (no normalisation factor)."""
        return self._out(self._hop(self._in(psi)))

    def clover(self, psi: torch.Tensor) -> torch.Tensor:
        """``C psi = i sum_{mu<nu} sigma_{mu nu} Fhat_{mu nu} psi`` (zero without clover)."""
        p5 = self._in(psi)
        if self._clover is None:
            return torch.zeros_like(psi)
        return self._out(_clover_apply(self._clover, p5))

    def _diag(self, p5: torch.Tensor) -> torch.Tensor:
        return p5 if self._a is None else _clover_apply(self._a, p5)

    def _apply5(self, p5: torch.Tensor, dagger: bool = False) -> torch.Tensor:
        """``s (A - kappa H) p5`` (``dagger``: ``gamma_5 D gamma_5``), the factors folded into the
        hop and one in-place add."""
        if self._a is None and _native.usable(p5):
            return self._hop_native(p5, self._links, self._geo, dagger,
                                    -self.kappa * self.scale, p5, self.scale)
        out = self._hop_kernel(p5, self._links, self._geo, dagger, -self.kappa * self.scale)
        return out.add_(self._diag(p5), alpha=self.scale)

    def apply(self, psi: torch.Tensor) -> torch.Tensor:
        """``D psi`` (or Chroma's ``M psi`` with ``normalisation="chroma"``)."""
        return self._out(self._apply5(self._in(psi)))

    __call__ = apply

    def apply_dagger(self, psi: torch.Tensor) -> torch.Tensor:
        """``D^dag psi = gamma_5 D gamma_5 psi`` (gamma_5-hermiticity)."""
        return self._out(self._apply5(self._in(psi), dagger=True))

    def apply_normal(self, psi: torch.Tensor) -> torch.Tensor:
        """``D^dag D psi`` (Hermitian, positive)."""
        return self.apply_dagger(self.apply(psi))

    # -- even-odd ----------------------------------------------------------------------------
    def _eo_setup(self) -> dict[str, object]:
        if self._eo is not None:
            return self._eo
        lat = self.lattice
        odd = [e for e in lat.nrow if e % 2]
        if odd:
            raise ValueError(
                f"U: even-odd preconditioning needs even extents, got nrow {lat.nrow}"
            )
        o0 = self._o0()
        eo: dict[str, object] = {"o0": o0}
        uph = self._split_lattice(self._uph)
        for p in (0, 1):
            m = o0 if p == 0 else ~o0  # x-offset o_p = 1 at these (t, z, y)
            t, z, y, x = self.lattice.shape
            geo = _shared_geometry((t, z, y, x // 2), p, self.device,
                                   m.view(1, 1, *m.shape, 1, 1))
            eo[f"geo{p}"] = geo
            eo[f"links{p}"] = self._kernel_links(uph[p], uph[1 - p], geo)
        if self._a is not None:
            a_e, a_o = self._split_lattice(self._a)
            eo["a0"], eo["a1"] = a_e, a_o
            eo["ainv0"] = torch.linalg.inv(a_e)
            eo["ainv1"] = torch.linalg.inv(a_o)
        self._eo = eo
        return eo

    def _o0(self) -> torch.Tensor:
        """``(t + z + y) % 2 == 1`` as ``[t, z, y, 1]``: there the even sites have odd ``x``."""
        t, z, y, _ = self.lattice.shape
        dev = self.device
        c = (
            torch.arange(t, device=dev).view(t, 1, 1)
            + torch.arange(z, device=dev).view(1, z, 1)
            + torch.arange(y, device=dev).view(1, 1, y)
        )
        return (c % 2 == 1).view(t, z, y, 1)

    def _split_lattice(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split ``f[d0, d1, t, z, y, x, ...]`` (lattice at dims 2..5) into compact parities."""
        t, z, y, x = self.lattice.shape
        o0 = self._o0() if self._eo is None else self._eo["o0"]
        rest = f.dim() - 6
        fv = f.reshape(*f.shape[:5], x // 2, 2, *f.shape[6:])
        a, b = fv.select(6, 0), fv.select(6, 1)
        m = o0.view(1, 1, t, z, y, 1, *([1] * rest))
        return torch.where(m, b, a), torch.where(m, a, b)

    def _merge_lattice(self, fe: torch.Tensor, fo: torch.Tensor) -> torch.Tensor:
        eo = self._eo_setup()
        t, z, y, xh = fe.shape[2:6]
        rest = fe.dim() - 6
        m = eo["o0"].view(1, 1, t, z, y, 1, *([1] * rest))
        st = torch.stack([torch.where(m, fo, fe), torch.where(m, fe, fo)], dim=6)
        return st.reshape(*fe.shape[:5], 2 * xh, *fe.shape[6:])

    def split(self, psi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full field -> ``(psi_even, psi_odd)`` compact parity fields."""
        self._eo_setup()
        e, o = self._split_lattice(self._in(psi))
        return self._out(e), self._out(o)

    def merge(self, psi_e: torch.Tensor, psi_o: torch.Tensor) -> torch.Tensor:
        """``(psi_even, psi_odd)`` -> full field (inverse of :meth:`split`)."""
        return self._out(
            self._merge_lattice(self._in(psi_e, True, "psi_e"), self._in(psi_o, True, "psi_o"))
        )

    def _hop_eo5(
        self, src: torch.Tensor, target: int, dagger: bool = False, scale: float = 1.0
    ) -> torch.Tensor:
        """``scale H_{target, 1-target} src`` on compact fields ``[B, R, t, z, y, x/2, 4, Nc]``
        (``dagger``: ``gamma_5 H gamma_5``)."""
        eo = self._eo_setup()
        return self._hop_kernel(src, eo[f"links{target}"], eo[f"geo{target}"], dagger, scale)

    def hopping_eo(self, psi_o: torch.Tensor) -> torch.Tensor:
        """``H_eo psi_o`` (odd -> even sites)."""
        return self._out(self._hop_eo5(self._in(psi_o, True, "psi_o"), 0))

    def hopping_oe(self, psi_e: torch.Tensor) -> torch.Tensor:
        """``H_oe psi_e`` (even -> odd sites)."""
        return self._out(self._hop_eo5(self._in(psi_e, True, "psi_e"), 1))

    def _adiag(self, p5: torch.Tensor, parity: int, inverse: bool = False) -> torch.Tensor:
        if self._a is None:
            return p5
        eo = self._eo_setup()
        return _clover_apply(eo[("ainv" if inverse else "a") + str(parity)], p5)

    def _schur5(self, x5: torch.Tensor, dagger: bool = False) -> torch.Tensor:
        """``K x`` (``dagger``: ``K^dag x = gamma_5 K gamma_5 x``, as ``A`` commutes with
        gamma_5 and ``H^dag = gamma_5 H gamma_5``); the factors ``-kappa^2 s`` and ``s`` are
        folded into the second hop and one in-place add."""
        if self._a is None and _native.usable(x5):
            eo = self._eo_setup()
            tmp = self._hop_native(x5, eo["links0"], eo["geo0"], dagger)
            return self._hop_native(tmp, eo["links1"], eo["geo1"], dagger,
                                    -(self.kappa**2) * self.scale, x5, self.scale)
        if self._a is None and x5.numel() // (4 * x5.shape[-1]) < _FUSED_MIN_SITES:
            return self._schur5_gather(x5, dagger)
        tmp = self._adiag(self._hop_eo5(x5, 0, dagger), 0, inverse=True)
        out = self._hop_eo5(tmp, 1, dagger, -(self.kappa**2) * self.scale)
        return out.add_(self._adiag(x5, 1), alpha=self.scale)

    def _schur5_reference(self, x5: torch.Tensor) -> torch.Tensor:
        """The literal ``s (A_oo - kappa^2 H_oe A_ee^{-1} H_eo)`` (kept for the tests)."""
        eo = self._eo_setup()

        def hop(f: torch.Tensor, target: int) -> torch.Tensor:
            links, geo = eo[f"links{target}"], eo[f"geo{target}"]
            if f.numel() // (4 * f.shape[-1]) < _FUSED_MIN_SITES:
                return self._hop_gather_reference(f, links, geo)
            return self._hop_fused(f, links, geo)

        tmp = self._adiag(hop(x5, 0), 0, inverse=True)
        out = self._adiag(x5, 1) - (self.kappa**2) * hop(tmp, 1)
        return out * self.scale if self.scale != 1.0 else out

    def schur(self, psi_o: torch.Tensor) -> torch.Tensor:
        """``K psi_o = (A_oo - kappa^2 H_oe A_ee^{-1} H_eo) psi_o`` (times ``1/(2 kappa)`` for
        ``"chroma"``)."""
        return self._out(self._schur5(self._in(psi_o, True, "psi_o")))

    def schur_dagger(self, psi_o: torch.Tensor) -> torch.Tensor:
        """``K^dag = gamma_5 K gamma_5`` (``A`` commutes with gamma_5, ``H^dag = g5 H g5``)."""
        return self._out(self._schur5(self._in(psi_o, True, "psi_o"), dagger=True))

    def schur_normal(self, psi_o: torch.Tensor) -> torch.Tensor:
        """``K^dag K psi_o`` (Hermitian positive, on odd sites)."""
        x5 = self._in(psi_o, True, "psi_o")
        if self._a is None and _native.usable(x5):
            eo = self._eo_setup()
            b, r = x5.shape[:2]
            v = x5.shape[2] * x5.shape[3] * x5.shape[4] * x5.shape[5]
            out = _native.schur_normal(
                x5.view(b, r, v, 4, self.nc),
                self._stacked_links(eo["links0"], v), eo["geo0"].native_index(),
                self._stacked_links(eo["links1"], v), eo["geo1"].native_index(),
                _native_spin_table(False), _native_spin_table(True),
                -(self.kappa**2) * self.scale, self.scale,
            )
            return out.view(psi_o.shape)
        return self._out(self._schur5(self._schur5(x5), dagger=True))

    def schur_rhs(self, b: torch.Tensor) -> torch.Tensor:
        """Odd-site source of the Schur system: ``b_o + kappa H_oe A_ee^{-1} b_e`` (compact)."""
        self._eo_setup()
        be, bo = self._split_lattice(self._in(b, name="b"))
        return self._out(bo + self.kappa * self._hop_eo5(self._adiag(be, 0, inverse=True), 1))

    def schur_reconstruct(self, x_o: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Full solution from the odd part: ``x_e = A_ee^{-1}(b_e / s + kappa H_eo x_o)``."""
        self._eo_setup()
        xo = self._in(x_o, True, "x_o")
        be, _ = self._split_lattice(self._in(b, name="b"))
        rhs = (be / self.scale if self.scale != 1.0 else be) + self.kappa * self._hop_eo5(xo, 0)
        return self._out(self._merge_lattice(self._adiag(rhs, 0, inverse=True), xo))

    def clover_logdet(self, parity: int = 0) -> torch.Tensor:
        """``sum_{x in parity} log |det A(x)|`` per configuration (``A`` in the operator's
        normalisation, i.e. including ``1/(2 kappa)`` per component for ``"chroma"``); zero
        without clover and in kappa normalisation (``A = 1``)."""
        if parity not in (0, 1):
            raise ValueError(f"parity: expected 0 (even) or 1 (odd), got {parity!r}")
        nsite = self.lattice.volume // 2
        const = -NS * self.nc * nsite * math.log(2 * self.kappa) if self.scale != 1.0 else 0.0
        if self._a is None:
            return torch.full((self.batch,), const, dtype=torch.float64, device=self.device)
        eo = self._eo_setup()
        _, logabs = torch.linalg.slogdet(eo[f"a{parity}"])
        return logabs.reshape(self.batch, -1).sum(1).to(torch.float64) + const

    # -- linear-operator views ------------------------------------------------------------------
    def linear_operator(self, kind: str) -> OperatorView:
        """A callable view (with ``to(dtype)``) for solvers: ``kind`` in ``"D"``, ``"Ddag"``,
        ``"DdagD"``, ``"schur"``, ``"schur_dagger"``, ``"schur_normal"``."""
        return OperatorView(self, kind)

    def solve(
        self,
        b: torch.Tensor,
        *,
        solver: object | None = None,
        x0: torch.Tensor | None = None,
        method: str = "eo",
    ) -> tuple[torch.Tensor, object]:
        """Solve ``D x = b`` (``M x = b`` for chroma normalisation).

        ``method="eo"``: CG on ``K^dag K x_o = K^dag (b_o + kappa H_oe A_ee^{-1} b_e)`` then
        reconstruction; ``"normal"``: CG on ``D^dag D x = D^dag b``; ``"direct"``: the solver on
        ``D`` itself (use BiCGStab).  ``solver`` defaults to ``CG(tol=1e-10)``; the tolerance
        refers to the system the solver sees.  Returns ``(x, SolveStats)``.
        """
        from ..solvers import CG

        s = solver if solver is not None else CG(tol=1e-10)
        if method == "eo":
            rhs = self.schur_dagger(self.schur_rhs(b))
            x0o = None if x0 is None else self.split(x0)[1]
            xo, stats = s.solve(self.linear_operator("schur_normal"), rhs, x0o)
            return self.schur_reconstruct(xo, b), stats
        if method == "normal":
            return s.solve(self.linear_operator("DdagD"), self.apply_dagger(b), x0)
        if method == "direct":
            return s.solve(self.linear_operator("D"), b, x0)
        raise ValueError(f"method: expected 'eo', 'normal' or 'direct', got {method!r}")

    # -- force kernels --------------------------------------------------------------------------
    def _project(self, m: torch.Tensor) -> torch.Tensor:
        return project_algebra(m, "U1" if self.nc == 1 else None)

    def _hop_bilinear(self, x5: torch.Tensor, y5: torch.Tensor) -> torch.Tensor:
        """``G`` with ``d Re<Y, H X> = sum_{x,mu} Re Tr[Z_mu(x) G_mu(x)]`` (see
        :meth:`_hop_bilinear_reference` for the derivation), all four directions at once: the
        half spinors ``B^-/+ X`` and ``B^-/+ Y`` of every site as one spin contraction each, one
        gather for the shifted ones, two batched colour products with the forward links and two
        batched outer products; the projection is one GEMM.  Fields with at least
        :data:`_BILINEAR_GATHER_MAX_SITES` sites (incl. batch and right-hand sides) take the
        direction-by-direction :meth:`_hop_bilinear_reference` (faster there: 2.5 vs 2.6 ms at
        4^2 x 8^2, 9.4 vs 11.4 ms at 8^4; 1.0 vs 0.6 ms at 4^4)."""
        from ..gauge.wilson import _project_algebra_gemm

        b, r = x5.shape[:2]
        lat = x5.shape[2:6]
        v = lat[0] * lat[1] * lat[2] * lat[3]
        if b * r * v >= _BILINEAR_GATHER_MAX_SITES:
            return self._hop_bilinear_reference(x5, y5)
        nc = x5.shape[-1]
        c = self._coefficients(x5.dtype)
        fwd = c["fwd_terms"]
        pm = torch.cat([c["P0"], c["P1"]], dim=0)  # [32, 4]: B_k (rows of 1 -/+ g), then B_k^+
        hx = torch.einsum("ks,brvsc->brvkc", pm, x5.reshape(b, r, v, 4, nc))
        hy = torch.einsum("ks,brvsc->brvkc", pm, y5.reshape(b, r, v, 4, nc))
        gidx = self._geo.gather_index(x5.device)
        # forward terms: (B^- X)(x + mu) from hx[:, :, :, :16], (B^+ Y)(x + mu) from hy[..., 16:]
        sx = hx[:, :, :, :16].reshape(b, r, v * 8, 2, nc).index_select(2, gidx)
        sy = hy[:, :, :, 16:].reshape(b, r, v * 8, 2, nc).index_select(2, gidx)
        lst = self._stacked_links(self._links, v).view(b, 1, v, 8, nc, nc).index_select(3, fwd)
        vx = torch.matmul(sx.view(b, r, v, 8, 2, nc).index_select(3, fwd), lst)
        wy = torch.matmul(sy.view(b, r, v, 8, 2, nc).index_select(3, fwd), lst)
        py = hy[:, :, :, :16].reshape(b, r, v, 8, 2, nc).index_select(3, fwd)  # B^- Y(x)
        px = hx[:, :, :, 16:].reshape(b, r, v, 8, 2, nc).index_select(3, fwd)  # B^+ X(x)
        m = torch.matmul(vx.transpose(-1, -2), py.conj()) - torch.matmul(
            px.transpose(-1, -2), wy.conj())
        g = m.sum(1).permute(0, 2, 1, 3, 4).reshape(b, 4, *lat, nc, nc)
        return _project_algebra_gemm(g, self.nc > 1, 1.0)

    def _hop_bilinear_reference(self, x5: torch.Tensor, y5: torch.Tensor) -> torch.Tensor:
        """``G`` with ``d Re<Y, H X> = sum_{x,mu} Re Tr[Z_mu(x) G_mu(x)]`` for ``dU = Z U``.

        ``H`` contains ``(1-g_mu) U_mu(x) X(x+mu)`` and ``(1+g_mu) U_mu(x)^dag X(x)`` at
        ``x+mu``; with ``dU = Z U``, ``dU^dag = -U^dag Z`` and ``1 -/+ g = B^dag B``::

            d<Y, H X> = sum_x,mu Tr[Z (M1 - M2)],
            M1 = (U B^- X(x+mu))^T conj(B^- Y(x)),   M2 = (B^+ X(x))^T conj(U B^+ Y(x+mu))

        (matrices indexed [colour b, colour a], summed over the 2 half-spinor rows and the
        right-hand sides).  ``Re Tr[Z M] = Tr[Z TA(M)]`` for anti-Hermitian traceless Z.
        """
        xu, xl = x5[..., :2, :], x5[..., 2:, :]
        yu, yl = y5[..., :2, :], y5[..., 2:, :]
        geo = self._geo
        out = []
        h = torch.empty((*x5.shape[:-2], 2, x5.shape[-1]), dtype=x5.dtype, device=x5.device)
        for mu in range(4):
            rows = _ROWS[mu][0]
            ut = self._links[_TERMS.index((mu, 1))]
            v = torch.matmul(geo.project_shift(xu, xl, rows, 1.0, mu, 1, h), ut)
            m1 = torch.matmul(v.transpose(-1, -2), _project(yu, yl, rows, 1.0).conj())
            w = torch.matmul(geo.project_shift(yu, yl, rows, -1.0, mu, 1, h), ut)
            m2 = torch.matmul(_project(xu, xl, rows, -1.0).transpose(-1, -2), w.conj())
            out.append((m1 - m2).sum(1))
        return self._project(torch.stack(out, dim=1))

    def _field_strength_grad(self, n: torch.Tensor) -> torch.Tensor:
        """``G`` with ``d Re sum Tr[Fhat_p N_p] = sum Re Tr[Z G]`` (``N[B, 6, *L, Nc, Nc]`` fixed).

        By autograd: torch returns ``g = ds/dRe U + i ds/dIm U``, so ``ds = Re sum conj(g) dU
        = Re Tr[Z U g^dag]`` for ``dU = Z U``; hence ``G = TA(U g^dag)``.
        """
        with torch.enable_grad():
            u = self.U.detach().requires_grad_(True)
            f = clover_field_strength(u)
            s = (f * n.transpose(-1, -2)).real.sum()
            (g,) = torch.autograd.grad(s, u)
        return self._project(mm(self.U, dagger(g)))

    def _clover_bilinear(self, x5: torch.Tensor, y5: torch.Tensor) -> torch.Tensor:
        """``G`` with ``d Re<Y, C X> = sum Re Tr[Z G]``: ``Re<Y, C X> = Re sum_p Tr[Fhat_p N_p]``,
        ``N_p = ((i sigma_p) X)^T conj(Y)`` (summed over spins and right-hand sides)."""
        isig = _i_sigma(self.dtype, self.device)
        sx = torch.einsum("pst,brvtc->brpvsc", isig, x5.flatten(2, 5)).reshape(
            *x5.shape[:2], 6, *x5.shape[2:]
        )
        n = torch.matmul(sx.transpose(-1, -2), y5.unsqueeze(2).conj()).sum(1)
        return self._field_strength_grad(n)

    def force_bilinear(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``G`` (shape of U, algebra-valued) with ``d Re<Y, D X> = sum Re Tr[Z G]`` for
        ``U -> exp(e Z) U`` (full fields; right-hand sides are summed).

        ``D = s (A - kappa H)``, so ``G = s (-kappa G_H + kappa c_sw G_C)``.  The Nf=2 force of
        ``S = phi^dag (D^dag D)^{-1} phi`` is exactly this ``G`` with ``X = (D^dag D)^{-1} phi`` and
        ``Y = D X`` (``dS = -2 Re<Y, dD X>``; see docs/fermions.md).
        """
        x5, y5 = self._in(x, name="x"), self._in(y, name="y")
        g = -self.kappa * self._hop_bilinear(x5, y5)
        if self._clover is not None:
            g = g + (self.kappa * self.c_sw) * self._clover_bilinear(x5, y5)
        return g * self.scale if self.scale != 1.0 else g

    def schur_force_bilinear(self, x_o: torch.Tensor, y_o: torch.Tensor) -> torch.Tensor:
        """``G`` with ``d Re<Y_o, K X_o> = sum Re Tr[Z G]`` for the Schur operator ``K``.

        ``K = s (A_oo - kappa^2 H_oe A_ee^{-1} H_eo)``; with ``Z_e = A_ee^{-1} H_eo X``,
        ``W_e = A_ee^{-1} H_oe^dag Y = A_ee^{-1} g5 H_eo g5 Y``::

            d<Y, K X> / s = <Y, dA_oo X> - kappa^2 (<Y, dH_oe Z_e> + <W_e, dH_eo X>)
                            + kappa^2 <W_e, dA_ee Z_e>,

        i.e. a full-lattice hopping bilinear with ``X_h = (Z_e, X)``, ``Y_h = (W_e, Y)`` times
        ``-kappa^2`` plus a clover bilinear with ``(kappa Z_e, X)``, ``(kappa W_e, Y)``.
        """
        xo, yo = self._in(x_o, True, "x_o"), self._in(y_o, True, "y_o")
        ze = self._adiag(self._hop_eo5(xo, 0), 0, inverse=True)
        we = self._adiag(self._hop_eo5(yo, 0, dagger=True), 0, inverse=True)
        xh, yh = self._merge_lattice(ze, xo), self._merge_lattice(we, yo)
        g = -(self.kappa**2) * self._hop_bilinear(xh, yh)
        if self._clover is not None:
            xc = self._merge_lattice(self.kappa * ze, xo)
            yc = self._merge_lattice(self.kappa * we, yo)
            g = g + (self.kappa * self.c_sw) * self._clover_bilinear(xc, yc)
        return g * self.scale if self.scale != 1.0 else g

    def clover_logdet_force(self, parity: int = 0) -> torch.Tensor:
        """``G`` with ``d sum_{x in parity} log det A(x) = sum Re Tr[Z G]``.

        ``d log det A = Tr[A^{-1} dA] = kappa c_sw sum_p Tr_c[dFhat_p N_p]`` with
        ``N_p[a, b] = sum_{s,t} A^{-1}[(s,a),(t,b)] (i sigma_p)[t, s]`` on the sites of ``parity``.
        """
        if self._a is None:
            return torch.zeros_like(self.U)
        eo = self._eo_setup()
        nc = self.nc
        ainv = _blocks_to_full(eo[f"ainv{parity}"]).reshape(
            *eo[f"ainv{parity}"].shape[:-3], NS, nc, NS, nc
        )
        isig = _i_sigma(self.dtype, self.device)
        n = torch.einsum("b...satc,pts->bp...ac", ainv[:, 0], isig)  # [B, 6, t, z, y, x/2, Nc, Nc]
        zero = torch.zeros_like(n)
        full = self._merge_lattice(n, zero) if parity == 0 else self._merge_lattice(zero, n)
        return (self.kappa * self.c_sw) * self._field_strength_grad(full)

    # -- dense matrices (tiny lattices) ---------------------------------------------------------
    def dense(self, kind: str = "D", max_dim: int = 8192) -> torch.Tensor:
        """Dense matrix ``[batch, n, n]`` of ``kind`` (see :meth:`linear_operator`) in the basis of
        the flattened field (site-major, then spin, then colour).  For tiny lattices only."""
        view = self.linear_operator(kind)
        eo = kind.startswith("schur")
        shape = self.eo_shape(1) if eo else self.field_shape(1)
        n = int(math.prod(shape[1:]))
        if n > max_dim:
            raise ValueError(
                f"kind: the dense {kind} matrix would have dimension {n} > max_dim={max_dim}"
            )
        eye = torch.eye(n, dtype=self.dtype, device=self.device)
        basis = eye.unsqueeze(0).expand(self.batch, n, n).reshape(self.batch * n, *shape[1:])
        cols = view(basis).reshape(self.batch, n, n)  # [b, column j, row i]
        return cols.transpose(-1, -2)


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
    _, logabs = torch.linalg.slogdet(m)
    return 2.0 * logabs.to(torch.float64)
