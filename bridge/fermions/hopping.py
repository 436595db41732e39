"""The Wilson hopping term ``H psi(x) = sum_mu [(1 - gamma_mu) U_mu(x) psi(x+mu)
+ (1 + gamma_mu) U_mu(x-mu)^dag psi(x-mu)]`` on the full lattice or one parity.

Spin projection (``1 -/+ gamma_mu = B^dag B`` with ``B`` a 2x4 matrix): per term the colour
matrix multiplies a 2-component half spinor, the standard 1320 flop per site for SU(3).  Three
production kernels give the same result to rounding: the native C++ kernel (:mod:`._native`, CPU,
``QCD_BRIDGE_NATIVE=0`` disables it), the gather kernel (small fields: a handful of whole-field
ops) and the fused-projection kernel (large fields and CUDA); docs/fermions.md describes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _native
from .gamma import apply_gamma5, gamma_matrices

__all__ = [
    "DSLASH_FLOPS_PER_SITE",
    "Geometry",
    "HopLinks",
    "shared_geometry",
    "kernel_links",
    "coefficients",
    "hop",
    "hop_native",
    "hop_fused",
    "hop_gather",
    "gather_colour",
    "uses_gather",
]

DSLASH_FLOPS_PER_SITE = 1320
"""The conventional flop count of one Wilson hopping term ``H psi`` per site for SU(3)."""


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
_FUSED_MIN_SITES = 4096
"""Fields with at least this many sites (counting batch and right-hand sides) use the fused
projection kernel, smaller ones the gather kernel (measured crossover: docs/fermions.md)."""


def uses_gather(psi: torch.Tensor) -> bool:
    """Whether the torch path takes the gather kernel for ``psi[..., 4, Nc]`` (small fields)."""
    return psi.numel() // (4 * psi.shape[-1]) < _FUSED_MIN_SITES


class Geometry:
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


_GEOMETRIES: dict[tuple, Geometry] = {}


def shared_geometry(
    shape: tuple[int, ...], parity: int | None, device: torch.device, xmask: torch.Tensor | None
) -> Geometry:
    """One :class:`Geometry` per (layout, parity, device), shared by all operators so that its
    neighbour table is built once (the HMC builds a new operator for every force evaluation)."""
    key = (tuple(shape), parity, device)
    if key not in _GEOMETRIES:
        _GEOMETRIES[key] = Geometry(tuple(shape), xmask)
    return _GEOMETRIES[key]


class HopLinks:
    """The 8 colour matrices of the kernel, ``[B, 1, *L, Nc, Nc]`` each, in the order of
    :data:`_TERMS`, and their stacked copy ``[B, 1, 8 V, Nc, Nc]`` for the gather and native
    kernels (built on first use)."""

    def __init__(self, terms: Sequence[torch.Tensor]) -> None:
        self.terms = list(terms)
        self._stacked: torch.Tensor | None = None

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.terms[k]

    def stacked(self) -> torch.Tensor:
        if self._stacked is None:
            first = self.terms[0]
            v = first.shape[2] * first.shape[3] * first.shape[4] * first.shape[5]
            nc = first.shape[-1]
            self._stacked = torch.stack(self.terms, dim=6).view(first.shape[0], 1, v * 8, nc, nc)
        return self._stacked


def kernel_links(u_target: torch.Tensor, u_source: torch.Tensor, geo: Geometry) -> HopLinks:
    """The kernel's links: ``U_mu(x)^T`` (forward, at the target site) and
    ``conj(U_mu(x - mu)) = (U_mu(x - mu)^dag)^T`` (backward, shifted once here so that the kernel
    never shifts a product).  With spin as rows, ``U psi = psi @ U^T``."""
    out = []
    for mu, step in _TERMS:
        if step > 0:
            out.append(u_target[:, mu].transpose(-1, -2).contiguous().unsqueeze(1))
        else:
            ub = u_source[:, mu].conj().unsqueeze(1)
            out.append(geo.shift(ub, mu, -1).contiguous())
    return HopLinks(out)


def coefficients(dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Spin coefficient tensors of the kernels (cached per dtype and device, shared by all
    operators: a new operator is built for every force evaluation of the HMC)."""
    key = (dtype, device)
    if key in _COEF_CACHE:
        return _COEF_CACHE[key]

    def tensor(values, *shape):
        return torch.tensor(values, dtype=dtype, device=device).reshape(*shape)

    kt = [tensor([step * k for _, k in _ROWS[mu][0]], 2, 1) for mu, step in _TERMS]
    # lower reconstruction: +K^dag (forward), -K^dag (backward); swapped terms carry the
    # coefficient of the row they land in after the final flip
    low = []
    for mu, step in _TERMS:
        kd = [k for _, k in _ROWS[mu][1]]
        if _SPIN[mu][0]:
            kd = kd[::-1]
        low.append([step * k for k in kd])
    lw = tensor(low, 8, 2, 1)
    # gather path: h_kj = up_j + gP_kj lo_{lo_idx_kj};  lower_j = sum_k gL_kj w_{k, perm j}
    coef = {
        "k": kt, "low_sw": lw[:4], "low_ns": lw[4:], "gP": torch.stack(kt),
        "gL": tensor([[step * k for _, k in _ROWS[mu][1]] for mu, step in _TERMS], 8, 2, 1),
        "lo_idx": torch.tensor([pj for mu, _ in _TERMS for pj, _ in _ROWS[mu][0]], device=device),
        "w_idx": torch.tensor([2 * k + pj for k, (mu, _) in enumerate(_TERMS)
                               for pj, _ in _ROWS[mu][1]], device=device),
        "fwd_terms": torch.tensor([_TERMS.index((mu, 1)) for mu in range(4)], device=device),
    }
    for dag in (False, True):
        pm, rm = _spin_matrices(dag)
        coef[f"P{int(dag)}"] = pm.to(dtype=dtype, device=device)
        coef[f"R{int(dag)}"] = rm.to(dtype=dtype, device=device)
        coef[f"PR{int(dag)}"] = (pm @ rm).to(dtype=dtype, device=device)
    _COEF_CACHE[key] = coef
    return coef


def hop(
    psi: torch.Tensor, links: HopLinks, geo: Geometry, dagger: bool = False, scale: float = 1.0
) -> torch.Tensor:
    """``scale * sum_mu [(1 - g_mu) U_mu(x) psi(x+mu) + (1 + g_mu) U_mu(x-mu)^dag psi(x-mu)]``
    (``dagger``: ``gamma_5 H gamma_5``, i.e. ``1 +/- g_mu``) for ``psi[B, R, *L, 4, Nc]`` (full
    lattice or one parity, see :class:`Geometry`): the native kernel where usable, else
    :func:`hop_gather` for small fields (:func:`uses_gather`) and :func:`hop_fused` above."""
    if _native.usable(psi):
        return hop_native(psi, links, geo, dagger, scale)
    if uses_gather(psi):
        return hop_gather(psi, links, geo, dagger, scale)
    if dagger:
        return apply_gamma5(hop(apply_gamma5(psi), links, geo, False, scale))
    out = hop_fused(psi, links, geo)
    return out.mul_(scale) if scale != 1.0 else out


def hop_native(
    psi: torch.Tensor,
    links: HopLinks,
    geo: Geometry,
    dagger: bool = False,
    scale: complex = 1.0,
    add: torch.Tensor | None = None,
    alpha: complex = 0.0,
) -> torch.Tensor:
    """``scale H psi + alpha add`` by the native C++ kernel (:mod:`._native`; CPU only, the
    caller checks :func:`._native.usable`): one pass over the target sites with the same
    neighbour table, stacked links and spin coefficients as :func:`hop_gather`."""
    b, r = psi.shape[:2]
    v = psi.shape[2] * psi.shape[3] * psi.shape[4] * psi.shape[5]
    nc = psi.shape[-1]
    out = _native.hop(
        psi.reshape(b, r, v, 4, nc).contiguous(),
        links.stacked(),
        geo.native_index(),
        _native_spin_table(dagger),
        scale,
        None if add is None else add.reshape(b, r, v, 4, nc).contiguous(),
        alpha,
    )
    return out.view(psi.shape)


def hop_fused(psi: torch.Tensor, links: HopLinks, geo: Geometry) -> torch.Tensor:
    """``H psi`` for large fields: per term the projection and the shift fused into
    complex-``alpha`` adds written straight into the shifted slab (one memory pass, no flip or
    roll), one batched ``2 x Nc`` by ``Nc x Nc`` colour product into ``w[k]``; reconstruction
    ``B^dag w = [w ; +/-K^dag w]``: upper spins ``sum_k w_k``, lower spins a coefficient-weighted
    sum (the swapping directions x, y first, flipped once)."""
    up = psi[..., :2, :]
    lo = psi[..., 2:, :]
    nc = psi.shape[-1]
    coef = coefficients(psi.dtype, psi.device)
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


def hop_gather(
    psi: torch.Tensor, links: HopLinks, geo: Geometry, dagger: bool = False, scale: float = 1.0
) -> torch.Tensor:
    """``H psi`` in four whole-field ops (for small fields, where every op costs ~5-20 us
    whatever its size): the 8 half spinors of every source site as one contraction with the
    constant ``[16, 4]`` spin matrix ``P``, one ``index_select`` gathering each target's 8
    neighbours, one ``matmul`` against the 8 stacked links, and reconstruction plus sum over the
    terms as one contraction with the ``[4, 16]`` matrix ``R`` (``scale`` folded into it).
    ``dagger`` swaps in the matrices of ``gamma_5 H gamma_5``."""
    b, r = psi.shape[:2]
    v = psi.shape[2] * psi.shape[3] * psi.shape[4] * psi.shape[5]
    nc = psi.shape[-1]
    c = coefficients(psi.dtype, psi.device)
    rm = c[f"R{int(dagger)}"]
    if scale != 1.0:
        rm = rm * scale
    h = torch.einsum("ks,brvsc->brvkc", c[f"P{int(dagger)}"], psi.reshape(b, r, v, 4, nc))
    w = gather_colour(h, links.stacked(), geo)
    return torch.einsum("sk,brvkc->brvsc", rm, w).reshape(psi.shape)


def gather_colour(h: torch.Tensor, lst: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Half spinors ``h[B, R, V, 16, Nc]`` of the 8 terms at every source site -> the colour
    products ``w[B, R, V, 16, Nc]`` at the target sites (one gather, one ``matmul``)."""
    b, r, v, _, nc = h.shape
    h = h.reshape(b, r, v * 8, 2, nc).index_select(2, geo.gather_index(h.device))
    return torch.matmul(h, lst).view(b, r, v, 16, nc)
