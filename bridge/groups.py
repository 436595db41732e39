"""Group maths for U(1) and SU(N) (SU(2), SU(3) with closed forms), batched over leading axes.

Every group element is a complex ``N x N`` matrix on the last two axes (U(1) uses ``1 x 1``
matrices), so the same gauge-field code serves all groups.  Algebra elements are anti-Hermitian
(and traceless for SU(N)).

Normalisation of the algebra (Chroma's, see docs/conventions.md): generators
``T_a = i lambda_a / 2`` with ``Tr(T_a^dagger T_b) = delta_ab / 2``; a momentum
``P = sum_a p_a T_a`` has ``Tr(P^dagger P) = sum_a p_a^2 / 2``, the kinetic energy of Chroma's
``mesKE``.  Momenta are drawn with density ``exp(-Tr P^dagger P)`` (for U(1): ``P = i p``,
``p ~ N(0, 1/2)``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from . import _native_gauge
from .lattice import as_device

__all__ = [
    "Group",
    "U1",
    "SU2",
    "SU3",
    "get_group",
    "complex_dtype",
    "dagger",
    "mm",
    "algebra_basis",
    "trace",
    "haar",
    "random_algebra",
    "project_algebra",
    "expm_algebra",
    "expm_algebra_mul",
    "reunitarize",
    "project_to_group",
    "eigenphases",
    "unitarity_violation",
]


@dataclass(frozen=True)
class Group:
    """A compact gauge group: ``U(1)`` or ``SU(N)`` with ``N >= 2``."""

    name: str
    nc: int
    special: bool

    @property
    def dim(self) -> int:
        """Dimension of the Lie algebra (number of generators)."""
        return self.nc * self.nc - 1 if self.special else 1

    def __repr__(self) -> str:
        return self.name


U1 = Group("U(1)", 1, False)
SU2 = Group("SU(2)", 2, True)
SU3 = Group("SU(3)", 3, True)

_GROUP_RE = re.compile(r"^\s*(S?U)\s*\(?\s*(\d+)\s*\)?\s*$", re.IGNORECASE)


def get_group(group: Group | str | int) -> Group:
    """Parse ``"U1"``, ``"U(1)"``, ``"SU3"``, ``"su(2)"``, a :class:`Group`, or an int N (SU(N))."""
    if isinstance(group, Group):
        return group
    if isinstance(group, int) and not isinstance(group, bool):
        if group < 2:
            raise ValueError(f"group: SU(N) needs N >= 2, got N = {group}")
        return Group(f"SU({group})", group, True)
    m = _GROUP_RE.match(str(group))
    if not m:
        raise ValueError(f"group: expected 'U1', 'SU2', 'SU3' or 'SU<N>', got {group!r}")
    kind, n = m.group(1).upper(), int(m.group(2))
    if kind == "U":
        if n != 1:
            raise ValueError(f"group: only U(1) is supported among unitary groups, got U({n})")
        return U1
    if n < 2:
        raise ValueError(f"group: SU(N) needs N >= 2, got SU({n})")
    return {2: SU2, 3: SU3}.get(n, Group(f"SU({n})", n, True))


def complex_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The complex dtype for a requested precision (float64/complex128 by default)."""
    if dtype is None or dtype in (torch.float64, torch.complex128):
        return torch.complex128
    if dtype in (torch.float32, torch.complex64):
        return torch.complex64
    raise ValueError(
        f"dtype: expected float64, float32, complex128 or complex64, got {dtype}"
    )


def dagger(u: torch.Tensor) -> torch.Tensor:
    """Hermitian conjugate on the last two axes."""
    return u.conj().transpose(-1, -2)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched colour-matrix product (one place to swap in a faster kernel; ``matmul`` is as
    fast as ``einsum`` for 3x3 blocks on the CPU, docs/performance.md, and handles conjugate views
    natively)."""
    return torch.matmul(a, b)


def trace(u: torch.Tensor) -> torch.Tensor:
    """Trace over the last two axes."""
    return torch.diagonal(u, dim1=-2, dim2=-1).sum(-1)


def _check_matrix(u: torch.Tensor, name: str, nc: int | None = None) -> int:
    if u.dim() < 2 or u.shape[-1] != u.shape[-2]:
        raise ValueError(f"{name}: expected square matrices on the last two axes, got shape "
                         f"{tuple(u.shape)}")
    if nc is not None and u.shape[-1] != nc:
        raise ValueError(f"{name}: expected {nc}x{nc} matrices, got shape {tuple(u.shape)}")
    return int(u.shape[-1])


# -- random sampling ------------------------------------------------------------------------------
def _normal(shape, generator, dtype, device) -> torch.Tensor:
    real = torch.empty(0, dtype=dtype).real.dtype
    return torch.randn(*shape, generator=generator, dtype=real, device=device)


def haar(
    group: Group | str,
    shape: tuple[int, ...] = (),
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Exact Haar-distributed group elements of shape ``(*shape, N, N)``.

    SU(N): QR of a complex Ginibre matrix with the phases of R's diagonal removed gives Haar
    U(N) (Mezzadri, math-ph/0609050, sec. 5); writing ``U = V diag(e^{i theta}, 1, ..., 1)`` with
    ``V`` in SU(N), left invariance of U's law makes V Haar on SU(N), so we multiply the first
    column by ``conj(det U)``.  U(1): ``exp(i theta)`` with theta uniform.
    """
    g = get_group(group)
    ct = complex_dtype(dtype)
    dev = as_device(device)
    if not g.special:
        theta = (2 * torch.rand(*shape, 1, 1, generator=generator, device=dev,
                                dtype=torch.empty(0, dtype=ct).real.dtype) - 1) * math.pi
        return torch.polar(torch.ones_like(theta), theta).to(ct)
    n = g.nc
    z = _normal((*shape, n, n, 2), generator, ct, dev)
    z = torch.complex(z[..., 0], z[..., 1])
    q, r = torch.linalg.qr(z)
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    q = q * (d / d.abs()).unsqueeze(-2)
    det = torch.linalg.det(q)
    q[..., :, 0] = q[..., :, 0] * det.conj().unsqueeze(-1)
    return q


def random_algebra(
    group: Group | str,
    shape: tuple[int, ...] = (),
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Gaussian algebra elements ``P`` with density ``exp(-Tr P^dagger P)`` (Chroma's momenta).

    For SU(N) this is ``P = sum_a p_a i lambda_a / 2`` with ``p_a ~ N(0, 1)``.  We draw a
    Hermitian ``H`` with density ``exp(-Tr H^2)`` (diagonal entries of variance 1/2, real and
    imaginary parts of off-diagonal ones of variance 1/4) and project it orthogonally onto the
    traceless subspace; the Gaussian is isotropic in the metric ``Tr(A B)``, so the projection has
    density ``exp(-Tr H^2)`` on that subspace.  ``P = i H``.
    """
    g = get_group(group)
    ct = complex_dtype(dtype)
    dev = as_device(device)
    n = g.nc
    z = _normal((*shape, n, n, 2), generator, ct, dev)
    a = torch.complex(z[..., 0], z[..., 1])
    # (A + A^dagger)/2 has diagonal variance 1/2 and off-diagonal Re/Im variance 1/4 ... for
    # unit-variance real/imag parts of A: diag Re(A_ii) ~ N(0,1) -> scale by 1/sqrt(2).
    h = (a + dagger(a)) * (0.5 / math.sqrt(2.0))
    if g.special:
        h = h - (trace(h) / n)[..., None, None] * torch.eye(n, dtype=ct, device=dev)
    return 1j * h


def project_algebra(m: torch.Tensor, group: Group | str | None = None) -> torch.Tensor:
    """Projection onto the algebra: the (traceless, for SU(N)) anti-Hermitian part of ``m``.

    ``TA(M) = (M - M^dagger)/2 - Tr(M - M^dagger)/(2N)``; for U(1) no trace is removed.
    With ``group=None`` the group is SU(N) unless N == 1.
    """
    n = _check_matrix(m, "m")
    special = get_group(group).special if group is not None else n > 1
    a = 0.5 * (m - dagger(m))
    if special:
        a = a - (trace(a) / n)[..., None, None] * torch.eye(n, dtype=m.dtype, device=m.device)
    return a


def algebra_basis(n: int, *, dtype: torch.dtype = torch.complex128,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """A basis ``T[a, N, N]`` of the Lie algebra: ``i`` for U(1); for SU(N) the ``N^2 - 1``
    anti-Hermitian traceless matrices ``i(E_jk + E_kj)``, ``E_jk - E_kj`` (j < k) and
    ``i(E_jj - E_{j+1,j+1})`` (not orthonormal; the checks use its Gram matrix)."""
    if n == 1:
        return torch.full((1, 1, 1), 1j, dtype=dtype, device=device)
    out = []
    for j in range(n):
        for k in range(j + 1, n):
            e = torch.zeros(n, n, dtype=dtype, device=device)
            e[j, k] = e[k, j] = 1j
            out.append(e)
            e = torch.zeros(n, n, dtype=dtype, device=device)
            e[j, k], e[k, j] = 1, -1
            out.append(e)
    for j in range(n - 1):
        e = torch.zeros(n, n, dtype=dtype, device=device)
        e[j, j], e[j + 1, j + 1] = 1j, -1j
        out.append(e)
    return torch.stack(out)



# -- exponential ----------------------------------------------------------------------------------
def _xi0(w: torch.Tensor) -> torch.Tensor:
    """sin(w)/w, smooth at 0 (torch.sinc(x) = sin(pi x)/(pi x))."""
    return torch.sinc(w / math.pi)


def _su3_exp_coefficients(
    c0: torch.Tensor, c1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Morningstar-Peardon ``(f0, f1, f2)`` of ``exp(iQ) = f0 + f1 Q + f2 Q^2`` from
    ``c0 = det Q`` and ``c1 = Tr Q^2 / 2`` (real tensors of any shape); see :func:`_expm_su3`.

    Only per-matrix scalars are computed here (cheap next to the 3x3 work)."""
    rdt = c0.dtype
    neg = c0 < 0
    tiny = torch.finfo(rdt).tiny ** 0.5
    small = c1 <= tiny
    c1s = torch.where(small, torch.ones_like(c1), c1)
    sq = torch.sqrt(c1s * (1.0 / 3.0))
    c0max = 2.0 * sq * sq * sq
    theta3 = torch.arccos(torch.clamp(c0.abs() / c0max, -1.0, 1.0)) * (1.0 / 3.0)
    u = sq * torch.cos(theta3)
    w = torch.sqrt(c1s) * torch.sin(theta3)
    u2, w2 = u * u, w * w
    cw, xi = torch.cos(w), _xi0(w)
    # real arithmetic: e^{2iu} = (c2, s2), e^{-iu} = (cu, -su)
    c2, s2 = torch.cos(2.0 * u), torch.sin(2.0 * u)
    cu, su = torch.cos(u), torch.sin(u)
    inv = 1.0 / (9.0 * u2 - w2)
    # h0 = (u2 - w2) e^{2iu} + e^{-iu} (8 u2 cw + i 2u (3u2 + w2) xi)
    a0, b0 = 8.0 * u2 * cw, 2.0 * u * (3.0 * u2 + w2) * xi
    h0r = (u2 - w2) * c2 + cu * a0 + su * b0
    h0i = (u2 - w2) * s2 + cu * b0 - su * a0
    # h1 = 2u e^{2iu} - e^{-iu} (2u cw - i (3u2 - w2) xi)
    a1, b1 = 2.0 * u * cw, -(3.0 * u2 - w2) * xi
    h1r = 2.0 * u * c2 - (cu * a1 + su * b1)
    h1i = 2.0 * u * s2 - (cu * b1 - su * a1)
    # h2 = e^{2iu} - e^{-iu} (cw + i 3u xi)
    a2, b2 = cw, 3.0 * u * xi
    h2r = c2 - (cu * a2 + su * b2)
    h2i = s2 - (cu * b2 - su * a2)
    # c0 < 0: f_j -> (-1)^j conj(f_j), i.e. flip the sign of the imaginary part of f0, f2 and of
    # the real part of f1
    sgn = torch.where(neg, -inv, inv)
    f0 = torch.complex(h0r * inv, h0i * sgn)
    f1 = torch.complex(h1r * sgn, h1i * inv)
    f2 = torch.complex(h2r * inv, h2i * sgn)
    one = torch.ones_like(f0)
    f0 = torch.where(small, one, f0)
    f1 = torch.where(small, 1j * one, f1)
    f2 = torch.where(small, -0.5 * one, f2)
    return f0, f1, f2


def _expm_su3(
    x: torch.Tensor, scale: float = 1.0, right: torch.Tensor | None = None
) -> torch.Tensor:
    """``exp(scale X)`` (times ``right`` if given) for traceless anti-Hermitian 3x3 ``X``, by
    Cayley-Hamilton, exact in closed form.

    Morningstar & Peardon, hep-lat/0311018, eqs. (19)-(34): with ``Q = -i scale X`` (Hermitian,
    traceless), ``exp(iQ) = f0 + f1 Q + f2 Q^2``, ``c0 = det Q = Tr Q^3 / 3``,
    ``c1 = Tr Q^2 / 2``, ``theta = arccos(c0 / c0max)``, ``c0max = 2 (c1/3)^{3/2}``,
    ``u = sqrt(c1/3) cos(theta/3)``, ``w = sqrt(c1) sin(theta/3)``, and for ``c0 < 0`` the
    symmetry ``f_j(-c0, c1) = (-1)^j conj(f_j(c0, c1))`` (eq. 34).  The denominator
    ``9u^2 - w^2 >= 2 c1`` never vanishes except at Q = 0, where the exact limit
    ``f = (1, i, -1/2)`` is used.

    Work per matrix: one product ``X^2``, ``c0 = -scale^3 Im Tr(X^2 X) / 3``,
    ``c1 = -scale^2 Re Tr X^2 / 2`` and ``exp = f0 + (-i f1 scale) X + (-f2 scale^2) X^2``
    assembled in place (the scale is folded into the scalars, never applied to a 3x3 field);
    :func:`bridge.testing.reference.expm_su3_reference` is the straightforward form it
    is tested against.
    """
    x2 = mm(x, x)
    c1 = torch.diagonal(x2, dim1=-2, dim2=-1).real.sum(-1) * (-0.5 * scale * scale)
    c0 = (x2 * x.transpose(-1, -2)).sum((-1, -2)).imag * (-(scale**3) / 3.0)
    f0, f1, f2 = _su3_exp_coefficients(c0, c1)
    e = x * (f1 * (-1j * scale)).unsqueeze(-1).unsqueeze(-1)
    e.addcmul_(x2, (f2 * (-scale * scale)).unsqueeze(-1).unsqueeze(-1))
    torch.diagonal(e, dim1=-2, dim2=-1).add_(f0.unsqueeze(-1))
    return e if right is None else mm(e, right)


def _expm_su2(x: torch.Tensor) -> torch.Tensor:
    """exp of traceless anti-Hermitian 2x2: ``X = i a.sigma``, ``X^2 = -|a|^2``, so
    ``exp X = cos|a| + sin|a|/|a| X`` with ``|a|^2 = Tr(X^dagger X)/2``."""
    a = torch.sqrt((x.abs() ** 2).sum((-1, -2)) / 2.0)
    eye = torch.eye(2, dtype=x.dtype, device=x.device)
    return torch.cos(a)[..., None, None] * eye + _xi0(a)[..., None, None] * x


def _expm_eigh(x: torch.Tensor) -> torch.Tensor:
    """exp of anti-Hermitian X through the spectral decomposition of the Hermitian ``-iX``."""
    lam, v = torch.linalg.eigh(-1j * x)
    phase = torch.polar(torch.ones_like(lam), lam).to(x.dtype)
    return mm(v * phase.unsqueeze(-2), dagger(v))


def expm_algebra(x: torch.Tensor) -> torch.Tensor:
    """Exact exponential of anti-Hermitian matrices (traceless for N >= 2), batched.

    N = 1: elementwise ``exp``; N = 2: closed form; N = 3: Cayley-Hamilton (Morningstar-Peardon);
    N > 3: spectral decomposition.  The input is not checked for anti-Hermiticity (hot path);
    use :func:`project_algebra` on untrusted input.
    """
    n = _check_matrix(x, "x")
    if n == 1:
        return torch.exp(x)
    if n == 2:
        return _expm_su2(x)
    if n == 3:
        return _expm_su3(x)
    return _expm_eigh(x)


def expm_algebra_mul(x: torch.Tensor, u: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``exp(scale * X) @ U`` for anti-Hermitian ``X`` (traceless for N >= 2): the link update
    of the molecular dynamics.  For SU(3) the scale is folded into the Cayley-Hamilton scalars
    (no scaled copy of ``X``); otherwise ``mm(expm_algebra(scale * x), u)``."""
    n = _check_matrix(x, "x")
    if n == 3:
        if (_native_gauge.usable(u) and x.dtype == u.dtype and x.shape == u.shape
                and not (x.requires_grad and torch.is_grad_enabled())):
            # native C++ kernel (bridge/_native_gauge.py): the same formulas, one pass
            return _native_gauge.expm_su3_mul(x.contiguous(), u.contiguous(), float(scale))
        return _expm_su3(x, float(scale), u)
    return mm(expm_algebra(x * scale if scale != 1.0 else x), u)


# -- projections ----------------------------------------------------------------------------------
def reunitarize(u: torch.Tensor, group: Group | str | None = None) -> torch.Tensor:
    """Gram-Schmidt re-unitarisation of (nearly unitary) matrices, rows in order.

    As Chroma's ``reunit``: normalise row 0, orthogonalise and normalise row 1, ...; for SU(3)
    the last row is ``conj(row0 x row1)``, for SU(N) the last row's phase is fixed so that
    ``det = 1``.  U(1): ``u / |u|``.
    """
    n = _check_matrix(u, "u")
    special = get_group(group).special if group is not None else n > 1
    if n == 1:
        return u / u.abs()
    if n == 3 and special:
        r0 = u[..., 0, :]
        r0 = r0 / torch.linalg.vector_norm(r0, dim=-1, keepdim=True)
        r1 = u[..., 1, :]
        r1 = r1 - (r0.conj() * r1).sum(-1, keepdim=True) * r0
        r1 = r1 / torch.linalg.vector_norm(r1, dim=-1, keepdim=True)
        r2 = torch.linalg.cross(r0, r1, dim=-1).conj()
        return torch.stack([r0, r1, r2], dim=-2)
    # rows of u are the columns of u^T: QR of u^T with R's diagonal made real positive
    q, r = torch.linalg.qr(u.transpose(-1, -2))
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    q = (q * (d / d.abs()).unsqueeze(-2)).transpose(-1, -2)
    if special:
        det = torch.linalg.det(q)
        q = q.clone()
        q[..., -1, :] = q[..., -1, :] * det.conj().unsqueeze(-1)
    return q


def project_to_group(m: torch.Tensor, group: Group | str | None = None) -> torch.Tensor:
    """Nearest unitary matrix (polar decomposition ``M = W S V^dagger -> W V^dagger``), then for
    SU(N) the determinant's phase removed with its principal N-th root."""
    n = _check_matrix(m, "m")
    special = get_group(group).special if group is not None else n > 1
    w, _, vh = torch.linalg.svd(m)
    p = mm(w, vh)
    if special:
        det = torch.linalg.det(p)
        p = p * torch.polar(torch.ones_like(det.real), -det.angle() / n)[..., None, None]
    return p


def eigenphases(u: torch.Tensor) -> torch.Tensor:
    """Eigenphases ``theta_i`` in ``(-pi, pi]`` of unitary matrices, sorted ascending."""
    _check_matrix(u, "u")
    return torch.sort(torch.linalg.eigvals(u).angle(), dim=-1).values


def unitarity_violation(u: torch.Tensor, special: bool | None = None) -> torch.Tensor:
    """Largest ``|U U^dagger - 1|`` entry, plus ``|det U - 1|`` for special groups (a scalar)."""
    n = _check_matrix(u, "u")
    eye = torch.eye(n, dtype=u.dtype, device=u.device)
    dev = (mm(u, dagger(u)) - eye).abs().amax()
    if special if special is not None else n > 1:
        dev = torch.maximum(dev, (torch.linalg.det(u) - 1).abs().amax())
    return dev
