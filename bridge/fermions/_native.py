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
Python, so the kernel knows nothing about the gamma basis.  ``out = scale * H psi + alpha * add``.
"""

from __future__ import annotations

import torch

from .._native_build import ENV, enabled, new_state, ready

__all__ = ["available", "enabled", "usable", "hop", "schur_normal", "cg_schur_normal",
           "eo_bilinear", "eo_links", "build_seconds", "ENV"]

_NAME = "qcd_bridge_wilson_hop_v3"

_CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstdint>

namespace {

// spin table: per (term k, row j) 6 doubles: lo index, cP re, cP im, w index, cL re, cL im
template <typename T, int NC>
void hop_impl(T* __restrict out, const T* __restrict psi, const T* __restrict lnk,
              const int64_t* __restrict nbr, const double* __restrict spin,
              const T* __restrict add, int64_t nb, int64_t nr, int64_t v,
              double sre, double sim, double are, double aim) {
  constexpr int SP = 4 * NC * 2;   // reals per 4-spinor
  constexpr int LK = NC * NC * 2;  // reals per colour matrix
  int lo[8][2], wi[8][2];
  T pr[8][2], pi[8][2], lr[8][2], li[8][2];
  for (int k = 0; k < 8; ++k)
    for (int j = 0; j < 2; ++j) {
      const double* s = spin + (k * 2 + j) * 6;
      lo[k][j] = (int)s[0]; pr[k][j] = (T)s[1]; pi[k][j] = (T)s[2];
      wi[k][j] = (int)s[3]; lr[k][j] = (T)s[4]; li[k][j] = (T)s[5];
    }
  const T Sre = (T)sre, Sim = (T)sim, Are = (T)are, Aim = (T)aim;
  at::parallel_for(0, nb * nr * v, 256, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t x = idx % v;
      const int64_t br = idx / v;
      const int64_t b = br / nr;
      const T* ps = psi + br * v * SP;
      const T* lb = lnk + (b * v + x) * 8 * LK;
      const int64_t* nx = nbr + x * 8;
      T ar[4][NC], ai[4][NC];
      for (int s = 0; s < 4; ++s)
        for (int c = 0; c < NC; ++c) { ar[s][c] = 0; ai[s][c] = 0; }
      for (int k = 0; k < 8; ++k) {
        const T* p = ps + nx[k] * SP;
        const T* L = lb + k * LK;
        T hr[2][NC], hi[2][NC];
        for (int j = 0; j < 2; ++j) {
          const T* q = p + (2 + lo[k][j]) * NC * 2;
          for (int c = 0; c < NC; ++c) {
            const T qr = q[2 * c], qi = q[2 * c + 1];
            hr[j][c] = p[(j * NC + c) * 2] + pr[k][j] * qr - pi[k][j] * qi;
            hi[j][c] = p[(j * NC + c) * 2 + 1] + pr[k][j] * qi + pi[k][j] * qr;
          }
        }
        T wr[2][NC], wim[2][NC];
        for (int j = 0; j < 2; ++j)
          for (int a = 0; a < NC; ++a) {
            T sr = 0, si = 0;
            for (int c = 0; c < NC; ++c) {
              const T ur = L[(c * NC + a) * 2], ui = L[(c * NC + a) * 2 + 1];
              sr += hr[j][c] * ur - hi[j][c] * ui;
              si += hr[j][c] * ui + hi[j][c] * ur;
            }
            wr[j][a] = sr; wim[j][a] = si;
          }
        for (int j = 0; j < 2; ++j) {
          const int m = wi[k][j];
          for (int a = 0; a < NC; ++a) {
            ar[j][a] += wr[j][a];
            ai[j][a] += wim[j][a];
            ar[2 + j][a] += lr[k][j] * wr[m][a] - li[k][j] * wim[m][a];
            ai[2 + j][a] += lr[k][j] * wim[m][a] + li[k][j] * wr[m][a];
          }
        }
      }
      T* o = out + idx * SP;
      if (add) {
        const T* d = add + idx * SP;
        for (int s = 0; s < 4; ++s)
          for (int c = 0; c < NC; ++c) {
            const int e = (s * NC + c) * 2;
            o[e] = Sre * ar[s][c] - Sim * ai[s][c] + Are * d[e] - Aim * d[e + 1];
            o[e + 1] = Sre * ai[s][c] + Sim * ar[s][c] + Are * d[e + 1] + Aim * d[e];
          }
      } else {
        for (int s = 0; s < 4; ++s)
          for (int c = 0; c < NC; ++c) {
            const int e = (s * NC + c) * 2;
            o[e] = Sre * ar[s][c] - Sim * ai[s][c];
            o[e + 1] = Sre * ai[s][c] + Sim * ar[s][c];
          }
      }
    }
  });
}

template <typename T>
void dispatch(int64_t nc, T* out, const T* psi, const T* lnk, const int64_t* nbr,
              const double* spin, const T* add, int64_t nb, int64_t nr, int64_t v,
              double sre, double sim, double are, double aim) {
  switch (nc) {
    case 1: hop_impl<T, 1>(out, psi, lnk, nbr, spin, add, nb, nr, v, sre, sim, are, aim); break;
    case 2: hop_impl<T, 2>(out, psi, lnk, nbr, spin, add, nb, nr, v, sre, sim, are, aim); break;
    case 3: hop_impl<T, 3>(out, psi, lnk, nbr, spin, add, nb, nr, v, sre, sim, are, aim); break;
    default: TORCH_CHECK(false, "native hop: Nc must be 1, 2 or 3, got ", nc);
  }
}

}  // namespace

static void check(const torch::Tensor& psi, const torch::Tensor& links,
                  const torch::Tensor& nbr) {
  TORCH_CHECK(psi.is_contiguous() && links.is_contiguous() && nbr.is_contiguous(),
              "native hop: contiguous inputs expected");
  TORCH_CHECK(psi.dim() == 5 && psi.size(3) == 4, "native hop: psi [B, R, V, 4, Nc] expected");
  TORCH_CHECK(links.scalar_type() == psi.scalar_type(), "native hop: dtype mismatch");
  TORCH_CHECK(nbr.scalar_type() == at::kLong, "native hop: int64 neighbour table expected");
  const int64_t nb = psi.size(0), v = psi.size(2), nc = psi.size(4);
  TORCH_CHECK(links.numel() == nb * v * 8 * nc * nc, "native hop: links shape");
  TORCH_CHECK(nbr.numel() == v * 8, "native hop: neighbour table shape");
}

// out = scale * H psi + alpha * add (add may be undefined/empty)
static void run(torch::Tensor& out, const torch::Tensor& psi, const torch::Tensor& links,
                const torch::Tensor& nbr, const torch::Tensor& spin, double sre, double sim,
                const torch::Tensor& add, double are, double aim) {
  const int64_t nb = psi.size(0), nr = psi.size(1), v = psi.size(2), nc = psi.size(4);
  const bool has_add = add.defined() && add.numel() > 0;
  if (has_add)
    TORCH_CHECK(add.is_contiguous() && add.numel() == psi.numel() &&
                add.scalar_type() == psi.scalar_type(), "native hop: add tensor");
  TORCH_CHECK(spin.scalar_type() == at::kDouble && spin.numel() == 96 && spin.is_contiguous(),
              "native hop: spin table [8, 2, 6] float64 expected");
  const double* sp = spin.data_ptr<double>();
  const int64_t* nx = nbr.data_ptr<int64_t>();
  if (psi.scalar_type() == at::kComplexDouble) {
    using T = double;
    dispatch<T>(nc, reinterpret_cast<T*>(out.data_ptr()),
                reinterpret_cast<const T*>(psi.data_ptr()),
                reinterpret_cast<const T*>(links.data_ptr()), nx, sp,
                has_add ? reinterpret_cast<const T*>(add.data_ptr()) : nullptr,
                nb, nr, v, sre, sim, are, aim);
  } else if (psi.scalar_type() == at::kComplexFloat) {
    using T = float;
    dispatch<T>(nc, reinterpret_cast<T*>(out.data_ptr()),
                reinterpret_cast<const T*>(psi.data_ptr()),
                reinterpret_cast<const T*>(links.data_ptr()), nx, sp,
                has_add ? reinterpret_cast<const T*>(add.data_ptr()) : nullptr,
                nb, nr, v, sre, sim, are, aim);
  } else {
    TORCH_CHECK(false, "native hop: complex128 or complex64 expected");
  }
}

// psi [B, R, V, 4, Nc] complex contiguous; links [B, V * 8, Nc, Nc] (stacked terms);
// nbr [V * 8] int64 source sites; spin [8, 2, 6] float64; add: psi-shaped or empty.
torch::Tensor hop(torch::Tensor psi, torch::Tensor links, torch::Tensor nbr, torch::Tensor spin,
                  double sre, double sim, torch::Tensor add, double are, double aim) {
  check(psi, links, nbr);
  auto out = torch::empty_like(psi);
  run(out, psi, links, nbr, spin, sre, sim, add, are, aim);
  return out;
}

// Wilson K^dag K x with K = s x + a H_oe H_eo x (one-parity fields; spin / spind: the tables
// of H and of gamma_5 H gamma_5): four hops in one call.
torch::Tensor schur_normal(torch::Tensor x, torch::Tensor links0, torch::Tensor nbr0,
                           torch::Tensor links1, torch::Tensor nbr1, torch::Tensor spin,
                           torch::Tensor spind, double a, double s) {
  check(x, links0, nbr0);
  check(x, links1, nbr1);
  auto tmp = torch::empty_like(x);
  auto y = torch::empty_like(x);
  auto out = torch::empty_like(x);
  torch::Tensor none;
  run(tmp, x, links0, nbr0, spin, 1.0, 0.0, none, 0.0, 0.0);
  run(y, tmp, links1, nbr1, spin, a, 0.0, x, s, 0.0);
  run(tmp, y, links0, nbr0, spind, 1.0, 0.0, none, 0.0, 0.0);
  run(out, tmp, links1, nbr1, spind, a, 0.0, y, s, 0.0);
  return out;
}

namespace {

// Re <a, b> of one batch entry (n doubles), four partial sums
double dotre(const double* __restrict a, const double* __restrict b, int64_t n) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i]; s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2]; s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

}  // namespace

// The whole conjugate gradient on K^dag K (Wilson, complex128) in one call; the same algorithm
// and stopping rule as bridge.solvers.CG (systems = [B, R] entries in lockstep, a converged
// entry frozen, true-residual restarts).  Returns {x, info} with info (float64) =
// [status, pap, napp, restarts, total, iters[nb], rr[nb], bnorm2[nb]]; status -1: finished,
// k >= 0: <p, A p> <= 0 for batch entry k (breakdown; pap its value, rr before the update).
std::vector<torch::Tensor> cg_schur_normal(
    torch::Tensor b, torch::Tensor x0, torch::Tensor links0, torch::Tensor nbr0,
    torch::Tensor links1, torch::Tensor nbr1, torch::Tensor spin, torch::Tensor spind,
    double a, double s, double tol, int64_t max_iter, int64_t max_restarts) {
  check(b, links0, nbr0);
  check(b, links1, nbr1);
  TORCH_CHECK(b.scalar_type() == at::kComplexDouble, "native CG: complex128 expected");
  const int64_t nb = b.size(0) * b.size(1);  // one system per configuration and right-hand side
  const int64_t n = nb ? 2 * b.numel() / nb : 0;
  const bool has_x0 = x0.defined() && x0.numel() > 0;
  auto x = has_x0 ? x0.contiguous().clone() : torch::zeros_like(b);
  auto r = torch::empty_like(b), p = torch::empty_like(b), ap = torch::empty_like(b);
  auto tmp = torch::empty_like(b), y = torch::empty_like(b);
  torch::Tensor none;
  auto apply = [&](const torch::Tensor& in, torch::Tensor& out) {
    run(tmp, in, links0, nbr0, spin, 1.0, 0.0, none, 0.0, 0.0);
    run(y, tmp, links1, nbr1, spin, a, 0.0, in, s, 0.0);
    run(tmp, y, links0, nbr0, spind, 1.0, 0.0, none, 0.0, 0.0);
    run(out, tmp, links1, nbr1, spind, a, 0.0, y, s, 0.0);
  };
  const double* B = reinterpret_cast<const double*>(b.data_ptr());
  double* X = reinterpret_cast<double*>(x.data_ptr());
  double* R = reinterpret_cast<double*>(r.data_ptr());
  double* P = reinterpret_cast<double*>(p.data_ptr());
  double* AP = reinterpret_cast<double*>(ap.data_ptr());
  auto info = torch::zeros({5 + 3 * nb}, torch::kDouble);
  double* inf = info.data_ptr<double>();
  double* iters = inf + 5;
  double* rr = inf + 5 + nb;
  double* bn2 = inf + 5 + 2 * nb;
  std::vector<double> target2(nb), pap(nb);
  std::vector<char> active(nb);
  const double tol2 = tol * tol;
  for (int64_t i = 0; i < nb; ++i) {
    bn2[i] = dotre(B + i * n, B + i * n, n);
    target2[i] = tol2 * bn2[i];
  }
  int64_t napp = 0, total = 0, restarts = 0, status = -1;
  double bad_pap = 0;
  const int64_t len = n * nb;
  if (has_x0) {
    apply(x, ap);
    napp = 1;
    for (int64_t k = 0; k < len; ++k) R[k] = B[k] - AP[k];
  } else {
    for (int64_t k = 0; k < len; ++k) R[k] = B[k];
  }
  while (true) {
    bool any = false;
    for (int64_t i = 0; i < nb; ++i) {
      rr[i] = dotre(R + i * n, R + i * n, n);
      active[i] = rr[i] > target2[i];
      any = any || active[i];
    }
    for (int64_t k = 0; k < len; ++k) P[k] = R[k];
    while (any && total < max_iter) {
      apply(p, ap);
      ++napp;
      for (int64_t i = 0; i < nb; ++i) {
        pap[i] = dotre(P + i * n, AP + i * n, n);
        if (active[i] && !(pap[i] > 0) && status < 0) { status = i; bad_pap = pap[i]; }
      }
      if (status >= 0) break;
      any = false;
      for (int64_t i = 0; i < nb; ++i) {
        if (!active[i]) continue;
        const double alpha = rr[i] / pap[i];
        double* xi = X + i * n; double* ri = R + i * n;
        const double* pi = P + i * n; const double* api = AP + i * n;
        for (int64_t k = 0; k < n; ++k) {
          xi[k] += alpha * pi[k];
          ri[k] -= alpha * api[k];
        }
        const double rrn = dotre(ri, ri, n);
        iters[i] += 1;
        const double beta = rrn / rr[i];
        rr[i] = rrn;
        active[i] = rr[i] > target2[i];
        any = any || active[i];
        double* pw = P + i * n;
        for (int64_t k = 0; k < n; ++k) pw[k] = beta * pw[k] + ri[k];
      }
      ++total;
    }
    if (status >= 0) break;
    apply(x, ap);
    ++napp;
    bool ok = true;
    for (int64_t k = 0; k < len; ++k) R[k] = B[k] - AP[k];
    for (int64_t i = 0; i < nb; ++i) {
      rr[i] = dotre(R + i * n, R + i * n, n);
      ok = ok && rr[i] <= target2[i];
    }
    if (ok || total >= max_iter || restarts >= max_restarts) break;
    ++restarts;
  }
  inf[0] = (double)status; inf[1] = bad_pap; inf[2] = (double)napp;
  inf[3] = (double)restarts; inf[4] = (double)total;
  return {x, info};
}

namespace {

// G_mu(x) = coeff * TA[sum_{r, j} (U B^- X(x+mu))_j^T conj(B^- Y(x))_j
//                               - (B^+ X(x))_j^T conj(U B^+ Y(x+mu))_j]
// on both parities of compact fields xs[p], ys[p] [B, R, Vh, 4, NC]; out [B, 4, T, Z, Y, X, NC, NC]
template <typename T, int NC>
void eo_bilinear_impl(T* __restrict out, const T* xs0, const T* xs1, const T* ys0, const T* ys1,
                      const T* lk0, const T* lk1, const int64_t* nb0, const int64_t* nb1,
                      const double* spin, const double* spind, const int64_t* fwd,
                      int64_t nb, int64_t nr, int64_t lt, int64_t lz, int64_t ly, int64_t lx,
                      double coeff, bool special) {
  constexpr int SP = 4 * NC * 2;
  constexpr int LK = NC * NC * 2;
  const int64_t vh = lt * lz * ly * (lx / 2);
  const int64_t vol = 2 * vh;
  int lo[2][4][2];
  T cr[2][4][2], ci[2][4][2];
  for (int d = 0; d < 2; ++d)
    for (int mu = 0; mu < 4; ++mu)
      for (int j = 0; j < 2; ++j) {
        const double* sp = (d ? spind : spin) + (fwd[mu] * 2 + j) * 6;
        lo[d][mu][j] = (int)sp[0]; cr[d][mu][j] = (T)sp[1]; ci[d][mu][j] = (T)sp[2];
      }
  at::parallel_for(0, nb * 2 * vh, 64, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t v = idx % vh;
      const int64_t par = (idx / vh) % 2;
      const int64_t b = idx / (2 * vh);
      const T* xs = par ? xs1 : xs0; const T* xn = par ? xs0 : xs1;
      const T* ys = par ? ys1 : ys0; const T* yn = par ? ys0 : ys1;
      const T* lb = (par ? lk1 : lk0) + (b * vh + v) * 8 * LK;
      const int64_t* nx = (par ? nb1 : nb0) + v * 8;
      T mr[4][NC][NC], mi[4][NC][NC];
      for (int mu = 0; mu < 4; ++mu)
        for (int i = 0; i < NC; ++i)
          for (int k = 0; k < NC; ++k) { mr[mu][i][k] = 0; mi[mu][i][k] = 0; }
      auto proj = [&](const T* q, int d, int mu, T (&hr)[2][NC], T (&hi)[2][NC]) {
        for (int j = 0; j < 2; ++j) {
          const T* l = q + (2 + lo[d][mu][j]) * NC * 2;
          for (int c = 0; c < NC; ++c) {
            const T qr = l[2 * c], qi = l[2 * c + 1];
            hr[j][c] = q[(j * NC + c) * 2] + cr[d][mu][j] * qr - ci[d][mu][j] * qi;
            hi[j][c] = q[(j * NC + c) * 2 + 1] + cr[d][mu][j] * qi + ci[d][mu][j] * qr;
          }
        }
      };
      auto umul = [&](const T* L, const T (&hr)[2][NC], const T (&hi)[2][NC],
                      T (&wr)[2][NC], T (&wi)[2][NC]) {
        for (int j = 0; j < 2; ++j)
          for (int a = 0; a < NC; ++a) {
            T sr = 0, si = 0;
            for (int c = 0; c < NC; ++c) {
              const T ur = L[(c * NC + a) * 2], ui = L[(c * NC + a) * 2 + 1];
              sr += hr[j][c] * ur - hi[j][c] * ui;
              si += hr[j][c] * ui + hi[j][c] * ur;
            }
            wr[j][a] = sr; wi[j][a] = si;
          }
      };
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t base = (b * nr + r) * vh;
        const T* xsite = xs + (base + v) * SP;
        const T* ysite = ys + (base + v) * SP;
        for (int mu = 0; mu < 4; ++mu) {
          const int64_t n = nx[fwd[mu]];
          const T* L = lb + fwd[mu] * LK;
          T h1r[2][NC], h1i[2][NC], v1r[2][NC], v1i[2][NC];
          T pyr[2][NC], pyi[2][NC], pxr[2][NC], pxi[2][NC];
          T h2r[2][NC], h2i[2][NC], w2r[2][NC], w2i[2][NC];
          proj(xn + (base + n) * SP, 0, mu, h1r, h1i);
          umul(L, h1r, h1i, v1r, v1i);
          proj(ysite, 0, mu, pyr, pyi);
          proj(xsite, 1, mu, pxr, pxi);
          proj(yn + (base + n) * SP, 1, mu, h2r, h2i);
          umul(L, h2r, h2i, w2r, w2i);
          for (int j = 0; j < 2; ++j)
            for (int i = 0; i < NC; ++i)
              for (int k = 0; k < NC; ++k) {
                // v1[i] conj(py[k]) - px[i] conj(w2[k])
                mr[mu][i][k] += v1r[j][i] * pyr[j][k] + v1i[j][i] * pyi[j][k]
                              - pxr[j][i] * w2r[j][k] - pxi[j][i] * w2i[j][k];
                mi[mu][i][k] += v1i[j][i] * pyr[j][k] - v1r[j][i] * pyi[j][k]
                              - pxi[j][i] * w2r[j][k] + pxr[j][i] * w2i[j][k];
              }
        }
      }
      // full-lattice site of compact site v of parity par: x = 2 xh + (t + z + y + par) % 2
      const int64_t xh = v % (lx / 2);
      const int64_t rest = v / (lx / 2);
      const int64_t y = rest % ly, z = (rest / ly) % lz, t = rest / (ly * lz);
      const int64_t xf = 2 * xh + (t + z + y + par) % 2;
      const int64_t site = ((t * lz + z) * ly + y) * lx + xf;
      const T c = (T)coeff;
      for (int mu = 0; mu < 4; ++mu) {
        T* o = out + ((b * 4 + mu) * vol + site) * LK;
        // TA(M) = (M - M^dag)/2 - Tr(M - M^dag)/(2 NC)
        T tr = 0;
        if (special)
          for (int i = 0; i < NC; ++i) tr += mi[mu][i][i];
        tr /= (T)NC;
        for (int i = 0; i < NC; ++i)
          for (int k = 0; k < NC; ++k) {
            const T re = (T)0.5 * (mr[mu][i][k] - mr[mu][k][i]);
            T im = (T)0.5 * (mi[mu][i][k] + mi[mu][k][i]);
            if (i == k) im -= tr;
            o[(i * NC + k) * 2] = c * re;
            o[(i * NC + k) * 2 + 1] = c * im;
          }
      }
    }
  });
}

}  // namespace

// The even-odd hop links of both target parities from the (boundary-phased) links
// u [B, 4, T, Z, Y, X, NC, NC]: per compact target site v and kernel term k = (mu, step),
// U_mu(x)^T (forward) or conj(U_mu(x - mu)) (backward, x - mu = the term's source site);
// returns {links0, links1}, each [B, 1, Vh * 8, NC, NC] (hopping.kernel_links, stacked).
std::vector<torch::Tensor> eo_links(torch::Tensor u, torch::Tensor nbr0, torch::Tensor nbr1,
                                    torch::Tensor terms) {
  TORCH_CHECK(u.is_contiguous() && u.dim() == 8 && u.size(1) == 4, "native eo links: U shape");
  TORCH_CHECK(u.scalar_type() == at::kComplexDouble || u.scalar_type() == at::kComplexFloat,
              "native eo links: complex U expected");
  TORCH_CHECK(terms.scalar_type() == at::kLong && terms.numel() == 16, "native eo links: terms");
  const int64_t nb = u.size(0), lt = u.size(2), lz = u.size(3), ly = u.size(4), lx = u.size(5);
  const int64_t nc = u.size(6);
  TORCH_CHECK(lx % 2 == 0 && u.size(7) == nc, "native eo links: even x extent, square links");
  const int64_t vh = lt * lz * ly * (lx / 2), vol = 2 * vh;
  TORCH_CHECK(nbr0.numel() == vh * 8 && nbr1.numel() == vh * 8, "native eo links: nbr shape");
  const int64_t* tm = terms.data_ptr<int64_t>();
  const int64_t m = nc * nc;
  std::vector<torch::Tensor> out;
  const auto* ub = reinterpret_cast<const c10::complex<double>*>(u.data_ptr());
  const auto* uf = reinterpret_cast<const c10::complex<float>*>(u.data_ptr());
  const bool dbl = u.scalar_type() == at::kComplexDouble;
  for (int64_t par = 0; par < 2; ++par) {
    auto lk = torch::empty({nb, 1, vh * 8, nc, nc}, u.options());
    const int64_t* nx = (par ? nbr1 : nbr0).data_ptr<int64_t>();
    auto full = [&](int64_t v, int64_t p) {
      const int64_t xh = v % (lx / 2), rest = v / (lx / 2);
      const int64_t y = rest % ly, z = (rest / ly) % lz, t = rest / (ly * lz);
      return ((t * lz + z) * ly + y) * lx + 2 * xh + (t + z + y + p) % 2;
    };
    auto fill = [&](auto* dst, const auto* src) {
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t v = 0; v < vh; ++v)
          for (int64_t k = 0; k < 8; ++k) {
            const int64_t mu = tm[2 * k], step = tm[2 * k + 1];
            auto* o = dst + ((b * vh + v) * 8 + k) * m;
            if (step > 0) {
              const auto* s = src + ((b * 4 + mu) * vol + full(v, par)) * m;
              for (int64_t i = 0; i < nc; ++i)
                for (int64_t j = 0; j < nc; ++j) o[i * nc + j] = s[j * nc + i];
            } else {
              const auto* s = src + ((b * 4 + mu) * vol + full(nx[v * 8 + k], 1 - par)) * m;
              for (int64_t i = 0; i < m; ++i) o[i] = std::conj(s[i]);
            }
          }
    };
    if (dbl)
      fill(reinterpret_cast<c10::complex<double>*>(lk.data_ptr()), ub);
    else
      fill(reinterpret_cast<c10::complex<float>*>(lk.data_ptr()), uf);
    out.push_back(lk);
  }
  return out;
}

// The Schur-operator force bilinear: out = coeff * TA(...) (see eo_bilinear_impl) with
// X = (X_e, X_o), Y = (Y_e, Y_o) compact fields [B, R, Vh, 4, Nc]; links_p/nbr_p the hops to
// parity p; fwd[4] the kernel term of (mu, +1); dims = (T, Z, Y, X) of the full lattice.
torch::Tensor eo_bilinear(torch::Tensor xe, torch::Tensor xo, torch::Tensor ye, torch::Tensor yo,
                          torch::Tensor links0, torch::Tensor nbr0, torch::Tensor links1,
                          torch::Tensor nbr1, torch::Tensor spin, torch::Tensor spind,
                          torch::Tensor fwd, std::vector<int64_t> dims, double coeff) {
  for (const auto* f : {&xe, &xo, &ye, &yo}) {
    check(*f, links0, nbr0);
    TORCH_CHECK(f->sizes() == xe.sizes(), "native force: field shapes differ");
  }
  check(xe, links1, nbr1);
  TORCH_CHECK(dims.size() == 4 && dims[3] % 2 == 0 && dims[0] * dims[1] * dims[2] * dims[3] ==
              2 * xe.size(2), "native force: dims (T, Z, Y, X) do not match the fields");
  TORCH_CHECK(fwd.scalar_type() == at::kLong && fwd.numel() == 4, "native force: fwd");
  TORCH_CHECK(spin.scalar_type() == at::kDouble && spin.numel() == 96 &&
              spind.scalar_type() == at::kDouble && spind.numel() == 96,
              "native force: spin tables");
  const int64_t nb = xe.size(0), nr = xe.size(1), nc = xe.size(4);
  auto out = torch::empty({nb, 4, dims[0], dims[1], dims[2], dims[3], nc, nc}, xe.options());
  const int64_t* fw = fwd.data_ptr<int64_t>();
  const int64_t* n0 = nbr0.data_ptr<int64_t>();
  const int64_t* n1 = nbr1.data_ptr<int64_t>();
  const double* sp = spin.data_ptr<double>();
  const double* sd = spind.data_ptr<double>();
#define QB_EO_CALL(T, NCV)                                                                  \
  eo_bilinear_impl<T, NCV>(reinterpret_cast<T*>(out.data_ptr()),                            \
      reinterpret_cast<const T*>(xe.data_ptr()), reinterpret_cast<const T*>(xo.data_ptr()), \
      reinterpret_cast<const T*>(ye.data_ptr()), reinterpret_cast<const T*>(yo.data_ptr()), \
      reinterpret_cast<const T*>(links0.data_ptr()),                                        \
      reinterpret_cast<const T*>(links1.data_ptr()), n0, n1, sp, sd, fw, nb, nr, dims[0],   \
      dims[1], dims[2], dims[3], coeff, NCV > 1)
#define QB_EO_NC(T)                                  \
  switch (nc) {                                      \
    case 1: QB_EO_CALL(T, 1); break;                 \
    case 2: QB_EO_CALL(T, 2); break;                 \
    case 3: QB_EO_CALL(T, 3); break;                 \
    default: TORCH_CHECK(false, "native force: Nc must be 1, 2 or 3"); \
  }
  if (xe.scalar_type() == at::kComplexDouble) {
    QB_EO_NC(double)
  } else if (xe.scalar_type() == at::kComplexFloat) {
    QB_EO_NC(float)
  } else {
    TORCH_CHECK(false, "native force: complex128 or complex64 expected");
  }
#undef QB_EO_NC
#undef QB_EO_CALL
  return out;
}
"""

_state: dict[str, object] = new_state()


def available() -> bool:
    """Whether the native kernel is enabled and built (builds it on the first call)."""
    return ready(_state, _NAME, _CPP, list(_FUNCTIONS), "Wilson hopping kernel")


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
