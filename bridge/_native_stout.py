"""Optional native (C++) CPU kernel of one residual staple / stout layer
(:class:`bridge.flows.residual.ResidualStapleLayer`) without an autograd graph: for every active
link of one mask (all configurations of the batch, in parallel) the weighted staple sum
``B = sum_k c_k S_k``, ``M = U B``, ``Y = TA(M)``, ``U' = exp(Y) U`` and the log-Jacobian
``log det(1 + psi(ad_Y) L)`` in one pass, without temporaries.

The algebra is that of the torch path line by line: the staples of ``active_staples``
(forward ``U_nu(x+mu) [U_nu(x) U_mu(x+nu)]^dag``, backward ``[U_mu(x-nu) U_nu(x-nu+mu)]^dag
U_nu(x-nu)``), the projection of :func:`bridge.groups.project_algebra`, the exponential by
Cayley-Hamilton for SU(3) (Morningstar & Peardon, hep-lat/0311018; the ``expm3_mul`` of
:data:`bridge._native_gauge.CPP_MATRIX`, which the HMC's link update uses too) and in closed
form for SU(2)
(``exp X = cos|a| + sin|a|/|a| X``); the real ``dim G x dim G`` matrices ``L`` and ``ad_Y`` from
the caller's coordinate maps (``residual._coordinate_maps``, so the basis is the same), the
series of ``psi`` by Horner's rule to the caller's number of terms, and ``log|det|`` by LU with
partial pivoting.  The log-det is accumulated in float64 for complex64 links too.

Every active link's staples consist of inactive links only (the mask's checkerboard), so the
links are updated in place in any order and by any number of threads with the same result.

Built, cached and switched like the other native kernels (:mod:`bridge._native_build`):
``QCD_BRIDGE_NATIVE=0`` disables it; CPU complex128/complex64 SU(2)/SU(3) fields without an
autograd graph being recorded (training differentiates through the torch path; U(1) and CUDA
always take it).
"""

from __future__ import annotations

import math

import torch

from ._native_build import new_state, ready
from ._native_gauge import CPP_MATRIX

__all__ = ["available", "usable", "layer"]

_NAME = "qcd_bridge_stout_v4"

_CPP = CPP_MATRIX + r"""
#include <limits>
#include <vector>

namespace {

// out = exp(X) R for traceless anti-Hermitian 2x2 X = i a.sigma: cos|a| + sin|a|/|a| X,
// |a|^2 = Tr(X^dag X) / 2
template <typename T>
inline void expm2_mul(T* __restrict out, const T* __restrict x, const T* __restrict r) {
  double a2 = 0;
  for (int k = 0; k < 8; ++k) a2 += (double)x[k] * x[k];
  const double a = std::sqrt(a2 / 2.0);
  const T c = (T)std::cos(a), s = (T)(a == 0.0 ? 1.0 : std::sin(a) / a);
  T e[8];
  for (int k = 0; k < 8; ++k) e[k] = s * x[k];
  e[0] += c;
  e[6] += c;
  mul_nn<T, 2>(out, e, r);
}

// The non-zero entries of a real [2 NC^2, D^2] coordinate map (about one in twelve for SU(3)) by
// column (rows ascending: the sums in the order of the dense product)
struct Sparse {
  std::vector<int> start, r;
  std::vector<double> v;
  explicit Sparse(const double* k, int64_t rows, int64_t cols) {
    for (int64_t j = 0; j < cols; ++j) {
      start.push_back((int)r.size());
      for (int64_t i = 0; i < rows; ++i)
        if (k[i * cols + j] != 0.0) {
          r.push_back((int)i);
          v.push_back(k[i * cols + j]);
        }
    }
    start.push_back((int)r.size());
  }
  // out[j] = sum_i x[i] k[i, j]
  inline void apply(double* __restrict out, const double* __restrict x, int d2) const {
    const int* st = start.data();
    const int* rr = r.data();
    const double* vv = v.data();
    for (int j = 0; j < d2; ++j) {
      double s = 0.0;
      for (int q = st[j]; q < st[j + 1]; ++q) s += x[rr[q]] * vv[q];
      out[j] = s;
    }
  }
};

// log det(1 + psi(ad_Y) L) with L = m . kl, ad_Y = y . ka (coordinate maps), the psi series by
// Horner's rule to `terms` powers (ifact[j] = 1 / j!), log|det| by LU with partial pivoting
template <int NC>
inline double link_logdet(const double* __restrict m, const double* __restrict y,
                          const Sparse& kl, const Sparse& ka,
                          const double* __restrict ifact, int terms) {
  constexpr int D = NC * NC - 1, D2 = D * D;
  double l[D2], ad[D2], p[D2], q[D2];
  kl.apply(l, m, D2);
  ka.apply(ad, y, D2);
  for (int e = 0; e < D2; ++e) p[e] = l[e] * ifact[terms + 1];
  for (int j = terms - 1; j >= 0; --j) {  // p <- l / (j + 1)! - ad p
    const double f = ifact[j + 1];
    for (int a = 0; a < D; ++a)
      for (int b = 0; b < D; ++b) {
        double s = 0.0;
        for (int c = 0; c < D; ++c) s += ad[a * D + c] * p[c * D + b];
        q[a * D + b] = f * l[a * D + b] - s;
      }
    for (int e = 0; e < D2; ++e) p[e] = q[e];
  }
  for (int a = 0; a < D; ++a) p[a * D + a] += 1.0;
  double det = 1.0;  // |det| < 2^D (module docstring of bridge.flows.residual): one log
  for (int k = 0; k < D; ++k) {
    int piv = k;
    for (int i = k + 1; i < D; ++i)
      if (std::fabs(p[i * D + k]) > std::fabs(p[piv * D + k])) piv = i;
    if (piv != k)
      for (int j = 0; j < D; ++j) std::swap(p[k * D + j], p[piv * D + j]);
    const double pk = p[k * D + k];
    det *= pk;
    if (pk == 0.0) break;
    for (int i = k + 1; i < D; ++i) {
      const double f = p[i * D + k] / pk;
      for (int j = k + 1; j < D; ++j) p[i * D + j] -= f * p[k * D + j];
    }
  }
  return std::log(std::fabs(det));
}

template <typename T, int NC>
void stout_impl(T* __restrict flat, int64_t nb, int64_t nall, int64_t n, int64_t nt,
                const int64_t* __restrict link, const int64_t* __restrict tab,
                const double* __restrict coef, bool tied, bool per_site, const Sparse& kl,
                const Sparse& ka, const double* __restrict ifact, int terms,
                bool update, double* __restrict ld) {
  constexpr int M = NC * NC * 2;
  auto row = [&](int which, int64_t q) { return tab + (which * nt + q) * n; };
  at::parallel_for(0, nb * n, 16, [&](int64_t begin, int64_t end) {
    T b[M], s[M], t[M], m[M], y[M], un[M];
    double md[M], yd[M];
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t bt = idx / n, h = idx % n;
      T* fb = flat + bt * nall * M;
      const double* cf = coef + (per_site ? h * 2 * nt : 0);
      auto at_ = [&](int which, int64_t q) { return fb + row(which, q)[h] * M; };
      for (int e = 0; e < M; ++e) b[e] = 0;
      for (int64_t q = 0; q < nt; ++q) {
        mul_nn<T, NC>(t, at_(2, q), at_(1, q));  // U_nu(x) U_mu(x+nu)
        if (tied) {
          mul_nd<T, NC, true>(b, at_(0, q), t);
        } else {
          mul_nd<T, NC, false>(s, at_(0, q), t);
          const T c = (T)cf[2 * q];
          for (int e = 0; e < M; ++e) b[e] += c * s[e];
        }
        mul_nn<T, NC>(t, at_(3, q), at_(4, q));  // U_mu(x-nu) U_nu(x-nu+mu)
        if (tied) {
          mul_dn_acc<T, NC>(b, t, at_(5, q));
        } else {
          for (int e = 0; e < M; ++e) s[e] = 0;
          mul_dn_acc<T, NC>(s, t, at_(5, q));
          const T c = (T)cf[2 * q + 1];
          for (int e = 0; e < M; ++e) b[e] += c * s[e];
        }
      }
      if (tied) {
        const T c = (T)coef[0];
        for (int e = 0; e < M; ++e) b[e] *= c;
      }
      T* u = fb + link[h] * M;
      mul_nn<T, NC>(m, u, b);
      // Y = TA(M) = (M - M^dag) / 2 - i Im Tr(M) / NC
      T trim = 0;
      for (int i = 0; i < NC; ++i) trim += m[(i * NC + i) * 2 + 1];
      trim /= (T)NC;
      for (int i = 0; i < NC; ++i)
        for (int j = 0; j < NC; ++j) {
          const int ij = (i * NC + j) * 2, ji = (j * NC + i) * 2;
          y[ij] = (T)0.5 * (m[ij] - m[ji]);
          y[ij + 1] = (T)0.5 * (m[ij + 1] + m[ji + 1]) - (i == j ? trim : (T)0);
        }
      for (int e = 0; e < M; ++e) { md[e] = (double)m[e]; yd[e] = (double)y[e]; }
      ld[idx] = link_logdet<NC>(md, yd, kl, ka, ifact, terms);
      if (update) {
        if (NC == 3) expm3_mul<T>(un, y, u, 1.0);
        else expm2_mul<T>(un, y, u);
        for (int e = 0; e < M; ++e) u[e] = un[e];
      }
    }
  });
}

}  // namespace

// One layer on flat [B, nall, NC, NC] (contiguous; the active links `link` [n] updated in place
// when `update`), staple tables tab [6, nt, n] (residual._staple_tables), coefficients coef
// [2 nt] (nu, forward/backward; `tied`: all equal to coef[0]) or [n, 2 nt] (one row per active
// link, not tied), coordinate maps kl, ka
// [2 NC^2, D^2] float64, ifact [terms + 2] = 1 / j!.  Returns the log-dets [B, n] float64.
torch::Tensor stout_layer(torch::Tensor flat, torch::Tensor link, torch::Tensor tab,
                          torch::Tensor coef, bool tied, torch::Tensor kl, torch::Tensor ka,
                          torch::Tensor ifact, int64_t terms, bool update) {
  TORCH_CHECK(flat.is_contiguous() && flat.dim() == 4 && flat.size(2) == flat.size(3),
              "native stout: flat [B, nall, N, N] contiguous");
  const int64_t nb = flat.size(0), nall = flat.size(1), nc = flat.size(3), n = link.numel();
  TORCH_CHECK(tab.is_contiguous() && tab.dim() == 3 && tab.size(0) == 6 && tab.size(2) == n &&
              tab.scalar_type() == at::kLong && link.is_contiguous() &&
              link.scalar_type() == at::kLong, "native stout: int64 tables [6, nt, n], [n]");
  const int64_t nt = tab.size(1);
  const int64_t d2 = (nc * nc - 1) * (nc * nc - 1);
  const bool per_site = !tied && coef.numel() == 2 * nt * n;
  TORCH_CHECK(coef.is_contiguous() && coef.scalar_type() == at::kDouble &&
              (coef.numel() == 2 * nt || per_site),
              "native stout: float64 coefficients [2 nt] or [n, 2 nt]");
  TORCH_CHECK(kl.is_contiguous() && ka.is_contiguous() && kl.scalar_type() == at::kDouble &&
              ka.scalar_type() == at::kDouble && kl.numel() == 2 * nc * nc * d2 &&
              ka.numel() == kl.numel(), "native stout: float64 maps [2 N^2, D^2]");
  TORCH_CHECK(ifact.is_contiguous() && ifact.scalar_type() == at::kDouble &&
              ifact.numel() >= terms + 2 && terms >= 0, "native stout: ifact [terms + 2]");
  auto ld = torch::empty({nb, n}, torch::kDouble);
  const int64_t* pl = link.data_ptr<int64_t>();
  const int64_t* pt = tab.data_ptr<int64_t>();
  const double *pc = coef.data_ptr<double>(), *pf = ifact.data_ptr<double>();
  const Sparse pk(kl.data_ptr<double>(), 2 * nc * nc, d2);
  const Sparse pa(ka.data_ptr<double>(), 2 * nc * nc, d2);
  double* po = ld.data_ptr<double>();
  const int tm = (int)terms;
#define QB_ST(T)                                                                              \
  switch (nc) {                                                                               \
    case 2: stout_impl<T, 2>(reinterpret_cast<T*>(flat.data_ptr()), nb, nall, n, nt, pl, pt,  \
                             pc, tied, per_site, pk, pa, pf, tm, update, po); break;          \
    case 3: stout_impl<T, 3>(reinterpret_cast<T*>(flat.data_ptr()), nb, nall, n, nt, pl, pt,  \
                             pc, tied, per_site, pk, pa, pf, tm, update, po); break;          \
    default: TORCH_CHECK(false, "native stout: SU(2) or SU(3)");                              \
  }
  if (flat.scalar_type() == at::kComplexDouble) {
    QB_ST(double)
  } else {
    TORCH_CHECK(flat.scalar_type() == at::kComplexFloat, "native stout: complex links");
    QB_ST(float)
  }
#undef QB_ST
  return ld;
}
"""

_state: dict[str, object] = new_state()


def available() -> bool:
    """Whether the native stout layer is enabled and built (builds it on the first call)."""
    return ready(_state, _NAME, _CPP, ["stout_layer"], "stout layer kernel")


def usable(u: torch.Tensor, *params: torch.Tensor) -> bool:
    """The native layer applies to ``u`` (CPU, complex128/complex64, SU(2) or SU(3), no autograd
    graph being recorded through ``u`` or ``params``) and is built."""
    grad = torch.is_grad_enabled() and (u.requires_grad or any(p.requires_grad for p in params))
    return (u.device.type == "cpu" and u.dtype in (torch.complex128, torch.complex64)
            and int(u.shape[-1]) in (2, 3) and not grad and available())


def layer(u: torch.Tensor, mu: int, idx: torch.Tensor, tab: torch.Tensor, coef: torch.Tensor,
          tied: bool, maps: tuple[torch.Tensor, torch.Tensor], terms: int, *,
          update: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U', logdet[batch])`` of one layer on ``u[B, Nd, *lattice, N, N]``: the active links
    ``U_mu(x)``, ``x`` in ``idx`` (flat site indices), with the staple tables ``tab[6, Nd - 1,
    n]``, coefficients ``coef[2(Nd - 1)]`` (one with ``tied``) or ``[n, 2(Nd - 1)]`` (one row
    per active link, not tied), the coordinate maps ``maps``
    and ``terms`` powers of the psi series (module docstring).  ``update=False``: ``U`` itself
    and the log-det of the map at ``U``.  ``logdet`` has the real dtype of ``u``.  Call only
    when :func:`usable` is true."""
    nb, nd, nc = int(u.shape[0]), int(u.shape[1]), int(u.shape[-1])
    vol = math.prod(int(s) for s in u.shape[2:-2])
    out = u.detach().contiguous()
    if update:
        out = out.clone()
    flat = out.view(nb, nd * vol, nc, nc)
    link = (idx + int(mu) * vol).contiguous()
    c = coef.detach().to(torch.float64).reshape(-1)
    if tied:
        c = c[:1].expand(tab.shape[1] * 2)
    ifact = torch.tensor([1.0 / math.factorial(j) for j in range(int(terms) + 2)],
                         dtype=torch.float64)
    kl, ka = (k.to(torch.float64).contiguous() for k in maps)
    ld = _state["module"].stout_layer(  # type: ignore[union-attr]
        flat, link, tab.contiguous(), c.contiguous(), bool(tied), kl, ka, ifact, int(terms),
        bool(update))
    return out, ld.sum(-1).to(u.real.dtype)
