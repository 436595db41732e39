"""Hadron two-point functions in Chroma's conventions: the 16 mesons and the 17 baryons at zero
momentum from point-to-all propagators (:func:`bridge.observables.pion.point_propagator`, Chroma
normalisation).

Sources of the definitions (Chroma 3.44 / QDP++ 1.46; docs/observables.md, docs/formats.md 4.2):

* mesons: ``lib/meas/hadron/mesons2_w.cc``: ``C_Gamma(t) = sum_x Tr[(g5 S_2 g5)^dag Gamma S_1
  Gamma]`` with ``Gamma = Gamma(n)``, ``n = 0..15`` (:func:`bridge.fermions.gamma.chroma_gamma`),
  ``t`` counted from the source, no boundary sign;
* baryons: ``lib/meas/hadron/barhqlq_w.cc`` (17 baryons, ``Baryon2PtContractions``), spin
  matrices ``barspinmat_w.cc``, QDP++ ``quarkContract13`` (``primspinmat.h``,
  ``primcolormat.h: quarkContractXX``) and Chroma's sign flip for antiperiodic time when the
  sink time wraps past the lattice end.
"""

from __future__ import annotations

import torch

from ..fermions.gamma import NS, chroma_gamma
from .pion import slice_sum

__all__ = ["meson_correlators", "baryon_correlators"]


def _as_chroma_prop(s: torch.Tensor) -> torch.Tensor:
    """``S[b, t, z, y, x, s, c, s', c']`` (:func:`bridge.observables.point_propagator`) ->
    Chroma's ``LatticePropagator`` layout ``P[b, t, z, y, x, s, s', c, c']`` (spin matrix of
    colour matrices, ``elem(s_sink, s_src).elem(c_sink, c_src)``)."""
    return s.permute(0, 1, 2, 3, 4, 5, 7, 6, 8)


def meson_correlators(s1: torch.Tensor, s2: torch.Tensor, t0: int) -> torch.Tensor:
    """Chroma's ``mesons2`` (``mesons2_w.cc``) at zero momentum for all 16 ``Gamma(n)``:
    ``C_n(t) = sum_x Tr[(g5 S_2 g5)^dag Gamma(n) S_1 Gamma(n)](x, t0 + t)``, shape
    ``[b, 16, Lt]`` (complex), ``t`` counted from the source time slice ``t0``.

    ``s1``, ``s2``: propagators ``S[b, t, z, y, x, s, c, s', c']`` (sink spin-colour first) in
    Chroma's normalisation.  ``n = 15`` (``gamma_5``) is the pion, ``Tr[S^dag S]``.
    """
    b = s1.shape[0]
    lat_shape = s1.shape[1:5]
    nc = s1.shape[-1]
    m1 = s1.reshape(b, *lat_shape, NS * nc, NS * nc)
    m2 = s2.reshape(b, *lat_shape, NS * nc, NS * nc)
    eye = torch.eye(nc, dtype=s1.dtype, device=s1.device)
    g5 = torch.kron(chroma_gamma(15, s1.dtype, s1.device), eye)
    anti = g5 @ m2 @ g5
    out = []
    for n in range(NS * NS):
        g = torch.kron(chroma_gamma(n, s1.dtype, s1.device), eye)
        # Tr[A^dag G S G] = sum_{ij} conj(A)_{ji} (G S G)_{ji}
        corr = (anti.conj() * (g @ m1 @ g)).sum((-1, -2))
        out.append(slice_sum(corr))
    c = torch.stack(out, dim=1)
    return torch.roll(c, shifts=-int(t0), dims=2)


_EPS = {(0, 1, 2): 1, (1, 2, 0): 1, (2, 0, 1): 1, (1, 0, 2): -1, (0, 2, 1): -1, (2, 1, 0): -1}


def _epsilon(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    e = torch.zeros(3, 3, 3, dtype=dtype, device=device)
    for idx, sign in _EPS.items():
        e[idx] = sign
    return e


class _BaryonAlgebra:
    """QDP++ operations on ``P[..., s, s', c, c']`` needed by ``barhqlq_w.cc``."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.eps = _epsilon(dtype, device)
        self._memo: dict[tuple[int, int, int], torch.Tensor] | None = None
        # eps^{a c q} eps^{b d r} as [(r, q), (a, b, c, d)]: 4 nonzero entries per row
        ee = torch.einsum("acq,bdr->rqabcd", self.eps, self.eps).reshape(9, 81)
        nz = ee.nonzero()
        self.eps_signs = ee[nz[:, 0], nz[:, 1]].reshape(9, 4)
        # flat index of C[i, (a b), j, (c d)] for output (i, j, (r q)) and its 4 terms
        ab, cd = (nz[:, 1] // 9).view(9, 4), (nz[:, 1] % 9).view(9, 4)
        i, j = torch.arange(4).view(4, 1, 1, 1), torch.arange(4).view(1, 4, 1, 1)
        self.eps_index = ((((i * 9 + ab) * 4 + j) * 9 + cd).reshape(-1)).to(device)
        g = {n: chroma_gamma(n, dtype, device) for n in range(16)}
        one = g[0]
        nr = 0.5 * (one + g[8])
        nr_neg = 0.5 * (one - g[8])
        gm = 0.5 * (g[2] + 1j * g[1])
        # barspinmat_w.cc
        self.t_mixed = 0.5 * (one + g[8] - 1j * (g[3] + g[11]))
        self.t_mixed_neg = 0.5 * (one - g[8] - 1j * (g[3] - g[11]))
        self.t_unpol = nr
        self.cg5 = g[5]
        self.cg5g4 = -g[13]
        self.cg5nr = g[5] @ nr
        self.cg5nr_neg = g[5] @ nr_neg
        self.cgm = g[10] @ gm
        self.cg4m = g[10] @ (g[8] @ gm)
        self.cgm_nr = self.cgm @ nr
        self.g7 = g[7]

    def qc13(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """QDP++ ``quarkContract13``: ``D[i, j][k2, k1] = sum_k eps^{i1 j1 k1} eps^{i2 j2 k2}
        A[k, i][i1, i2] B[k, j][j1, j2]``: the spin sum ``C = A^T B`` as one batched product
        over all colour pairs, then the 4 nonzero ``eps eps`` terms of each output entry."""
        shape = a.shape[:-4]
        c = torch.bmm(a.reshape(-1, 4, 36).transpose(1, 2), b.reshape(-1, 4, 36))  # [n, iab, jcd]
        d = (c.view(-1, 1296).index_select(1, self.eps_index).view(-1, 16, 9, 4)
             * self.eps_signs).sum(-1)
        return d.view(*shape, 4, 4, 3, 3)

    @staticmethod
    def rspin(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...stab,tu->...suab", a, m)

    @staticmethod
    def lspin(m: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.einsum("st,...tuab->...suab", m, a)

    @staticmethod
    def tr_t_colour(t: torch.Tensor, q: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``trace(T * traceColor(q * m))`` with ``m`` a colour matrix (spin identity)."""
        return torch.einsum("st,...tsac,...ca->...", t, q, m)

    @staticmethod
    def tr_t_full(t: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """``trace(T * traceColor(q * d))`` with ``d`` a propagator."""
        return torch.einsum("st,...tuac,...usca->...", t, q, d)

    @staticmethod
    def tr_spin(d: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...sscd->...cd", d)

    def diquark(self, q1: torch.Tensor, q2: torch.Tensor, sp: torch.Tensor) -> torch.Tensor:
        """``quarkContract13(q1 sp, sp q2)``; within :meth:`all17` each distinct one is
        computed once (the 17 baryons share them)."""
        key = (id(q1), id(q2), id(sp))
        memo = self._memo
        if memo is not None and key in memo:
            return memo[key]
        d = self.qc13(self.rspin(q1, sp), self.lspin(sp, q2))
        if memo is not None:
            memo[key] = d
        return d

    # Baryon2PtContractions
    def sigma(self, q1, q2, t, sp):
        d = self.diquark(q1, q2, sp)
        return self.tr_t_colour(t, q2, self.tr_spin(d)) + self.tr_t_full(t, q2, d)

    def xi(self, q1, q2, t, sp):
        d = self.diquark(q1, q2, sp)
        return self.tr_t_colour(t, q1, self.tr_spin(d)) + self.tr_t_full(t, q1, d)

    def lambda_(self, q1, q2, t, sp):
        d = self.diquark(q2, q2, sp)
        b = self.tr_t_colour(t, q1, self.tr_spin(d)) + self.tr_t_full(t, q1, d)
        return b + self.tr_t_full(t, q2, self.diquark(q2, q1, sp))

    def lambda_naive(self, q1, q2, t, sp):
        return self.tr_t_colour(t, q1, self.tr_spin(self.diquark(q2, q2, sp)))

    def sigma_star(self, q1, q2, t, sp):
        d = self.diquark(q1, q2, sp)
        b = self.tr_t_colour(t, q2, self.tr_spin(d)) + self.tr_t_full(t, q2, d)
        b = b + self.tr_t_full(t, q2, self.diquark(q2, q1, sp))
        d = self.diquark(q2, q2, sp)
        b = 2.0 * (b + self.tr_t_full(t, q1, d))
        return b + self.tr_t_colour(t, q1, self.tr_spin(d))

    def all17(self, q1: torch.Tensor, q2: torch.Tensor) -> list[torch.Tensor]:
        """``barhqlq(q1 = "s", q2 = "u")`` baryons 0..16, each ``[b, t, z, y, x]``."""
        self._memo = {}
        try:
            return self._all17(q1, q2)
        finally:
            self._memo = None

    def _all17(self, q1: torch.Tensor, q2: torch.Tensor) -> list[torch.Tensor]:
        tm, tu = self.t_mixed, self.t_unpol
        return [
            self.sigma(q1, q2, tm, self.cg5),
            self.lambda_(q1, q2, tm, self.cg5),
            self.sigma_star(q1, q2, tm, self.cgm),
            self.sigma(q1, q2, tm, self.cg5g4),
            self.lambda_(q1, q2, tm, self.cg5g4),
            self.sigma_star(q1, q2, tm, self.cg4m),
            self.sigma(q1, q2, tm, self.cg5nr),
            self.lambda_(q1, q2, tm, self.cg5nr),
            4.0 * self.sigma_star(q1, q2, tm, self.cgm_nr),  # Chroma's "goofy factor of 4"
            self.sigma(q1, q2, tu, self.cg5),
            self.sigma(q1, q2, tu, self.cg5g4),
            self.sigma(q1, q2, tu, self.cg5nr),
            self.lambda_naive(q1, q2, tu, self.cg5),
            self.xi(q1, q2, tu, self.cg5),
            self.lambda_naive(q1, q2, tu, self.cg5),
            self.xi(q1, q2, tm, self.cg5),
            self.sigma(q1, q2, self.t_mixed_neg, self.cg5nr_neg),
        ]


def baryon_correlators(
    s_strange: torch.Tensor,
    s_up: torch.Tensor,
    t0: int,
    bc_spec: int,
    time_rev: bool = False,
) -> torch.Tensor:
    """Chroma's ``barhqlq`` (``barhqlq_w.cc``) at zero momentum: the 17 baryon correlators,
    shape ``[b, 17, Lt]`` (complex), ``t`` counted from ``t0``.

    ``s_strange`` / ``s_up`` are Chroma's ``propagator_1`` / ``propagator_2`` (``HADRON_SPECTRUM``
    passes ``sink_prop_2, sink_prop_1``), layout ``S[b, t, z, y, x, s, c, s', c']``.  With
    ``bc_spec < 0`` (antiperiodic time) a value whose sink time wrapped past the lattice end
    changes sign; ``time_rev`` (only for ``bc_spec = +-1``, as Chroma) averages with the
    time-charge reversed propagators ``-Gamma(7) S Gamma(7)``.
    """
    alg = _BaryonAlgebra(s_up.dtype, s_up.device)
    q1 = _as_chroma_prop(s_strange)
    q2 = _as_chroma_prop(s_up)
    lt = s_up.shape[1]
    fwd = torch.stack([slice_sum(b) for b in alg.all17(q1, q2)], dim=1)  # [b, 17, Lt]
    t = torch.arange(lt)
    t_eff = (t - t0) % lt
    out = torch.empty_like(fwd)
    sign = torch.where((t_eff + t0 >= lt) & torch.tensor(bc_spec < 0), -1.0, 1.0)
    out[..., t_eff] = fwd * sign.to(fwd.dtype).to(fwd.device)
    if time_rev and bc_spec * bc_spec == 1:
        g7 = alg.g7
        r1 = -torch.einsum("st,...tuab,uv->...svab", g7, q1, g7)
        r2 = -torch.einsum("st,...tuab,uv->...svab", g7, q2, g7)
        bwd = torch.stack([slice_sum(b) for b in alg.all17(r1, r2)], dim=1)
        for tt in range(lt):
            te = (lt - tt + t0) % lt
            if bc_spec < 0 and te - t0 > 0:
                out[..., te] = 0.5 * (out[..., te] - bwd[..., tt])
            else:
                out[..., te] = 0.5 * (out[..., te] + bwd[..., tt])
    return out
