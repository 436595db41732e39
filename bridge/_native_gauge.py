"""Optional native (C++) CPU kernels of the gauge field: the Wilson gauge force with the
plaquette traces it produces on the way (cached by :mod:`bridge.gauge` for the action), and the
SU(3) molecular-dynamics link update ``exp(eps P) U`` (Cayley-Hamilton, as
:func:`bridge.groups._expm_su3`), and the clover energy density of the Wilson flow's
measurements (Chroma's ``wflow_gact4i``/``wflow_gactij``: the four leaves of every plane, 11
colour products, summed site by site).

Built, cached and switched exactly like the Wilson hopping kernel (bridge/fermions/_native.py,
shared helpers in :mod:`bridge._native_build`): ``load_inline`` on first use (never at import),
cache name with the CPU tag, ``QCD_BRIDGE_NATIVE=0`` disables, a failed build warns once and the
torch path is used.  CPU complex128/complex64 fields with ``Nc <= 3``, any ``Nd``, batch axis,
periodic boundaries; CUDA tensors always take the torch path.

Force kernel: for every site ``x`` (sites flattened in the tensor order of the lattice axes,
neighbours from Python-built tables, so the kernel knows nothing of the axis order) and each
direction ``mu`` the staple sum ``A_mu(x)`` (upper ``U_nu(x+mu) [U_nu(x) U_mu(x+nu)]^dag``,
lower ``[U_mu(x-nu) U_nu(x-nu+mu)]^dag U_nu(x-nu)``), then
``F_mu(x) = coeff_b TA[U_mu(x) A_mu(x)]``; the plane ``(mu, nu)``, ``mu < nu``, has
``Re Tr P_{mu nu}(x) = Re Tr[U_mu(x) upper_nu(x)]``, written to the trace output.  One pass,
no temporaries, every output element written by exactly one site (parallel over sites).
"""

from __future__ import annotations

import torch

from ._native_build import ENV, enabled, new_state, ready

__all__ = ["available", "enabled", "usable", "force", "traces", "expm_su3_mul", "clover_energy",
           "flow_step", "build_seconds", "ENV"]

_NAME = "qcd_bridge_gauge_v2"

CPP_MATRIX = r"""
#include <torch/extension.h>
#include <limits>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>

namespace {

// colour matrices as interleaved (re, im), row major: m[(i * NC + j) * 2 + {0, 1}]
template <typename T, int NC>
inline void mul_nn(T* __restrict c, const T* __restrict a, const T* __restrict b) {
  for (int i = 0; i < NC; ++i)
    for (int k = 0; k < NC; ++k) {
      T sr = 0, si = 0;
      for (int j = 0; j < NC; ++j) {
        const T ar = a[(i * NC + j) * 2], ai = a[(i * NC + j) * 2 + 1];
        const T br = b[(j * NC + k) * 2], bi = b[(j * NC + k) * 2 + 1];
        sr += ar * br - ai * bi;
        si += ar * bi + ai * br;
      }
      c[(i * NC + k) * 2] = sr;
      c[(i * NC + k) * 2 + 1] = si;
    }
}

// c (+)= a b^dag
template <typename T, int NC, bool ACC>
inline void mul_nd(T* __restrict c, const T* __restrict a, const T* __restrict b) {
  for (int i = 0; i < NC; ++i)
    for (int k = 0; k < NC; ++k) {
      T sr = 0, si = 0;
      for (int j = 0; j < NC; ++j) {
        const T ar = a[(i * NC + j) * 2], ai = a[(i * NC + j) * 2 + 1];
        const T br = b[(k * NC + j) * 2], bi = -b[(k * NC + j) * 2 + 1];
        sr += ar * br - ai * bi;
        si += ar * bi + ai * br;
      }
      if (ACC) { c[(i * NC + k) * 2] += sr; c[(i * NC + k) * 2 + 1] += si; }
      else { c[(i * NC + k) * 2] = sr; c[(i * NC + k) * 2 + 1] = si; }
    }
}

// c += a^dag b
template <typename T, int NC>
inline void mul_dn_acc(T* __restrict c, const T* __restrict a, const T* __restrict b) {
  for (int i = 0; i < NC; ++i)
    for (int k = 0; k < NC; ++k) {
      T sr = 0, si = 0;
      for (int j = 0; j < NC; ++j) {
        const T ar = a[(j * NC + i) * 2], ai = -a[(j * NC + i) * 2 + 1];
        const T br = b[(j * NC + k) * 2], bi = b[(j * NC + k) * 2 + 1];
        sr += ar * br - ai * bi;
        si += ar * bi + ai * br;
      }
      c[(i * NC + k) * 2] += sr;
      c[(i * NC + k) * 2 + 1] += si;
    }
}

// Re Tr(a b)
template <typename T, int NC>
inline T re_tr_mul(const T* __restrict a, const T* __restrict b) {
  T s = 0;
  for (int i = 0; i < NC; ++i)
    for (int j = 0; j < NC; ++j)
      s += a[(i * NC + j) * 2] * b[(j * NC + i) * 2] -
           a[(i * NC + j) * 2 + 1] * b[(j * NC + i) * 2 + 1];
  return s;
}

// out = exp(s X) R for traceless anti-Hermitian 3x3 X (Morningstar & Peardon, hep-lat/0311018;
// as groups._expm_su3): exp(iQ) = f0 + f1 Q + f2 Q^2 for Q = -i s X, by Cayley-Hamilton
template <typename T>
inline void expm3_mul(T* __restrict out, const T* __restrict x, const T* __restrict r,
                      double scale) {
  constexpr int M = 18;
  const double tiny = std::sqrt((double)std::numeric_limits<T>::min());
  T x2[M];
  mul_nn<T, 3>(x2, x, x);
  // c1 = -s^2 Re Tr X^2 / 2, c0 = -s^3 Im Tr(X^2 X) / 3
  double trx2 = 0, trx3 = 0;
  for (int i = 0; i < 3; ++i) trx2 += x2[(i * 3 + i) * 2];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      trx3 += (double)x2[(i * 3 + j) * 2] * x[(j * 3 + i) * 2 + 1] +
              (double)x2[(i * 3 + j) * 2 + 1] * x[(j * 3 + i) * 2];
  const double c1 = -0.5 * scale * scale * trx2;
  const double c0 = -(scale * scale * scale) / 3.0 * trx3;
  double f0r, f0i, f1r, f1i, f2r, f2i;
  if (c1 <= tiny) {
    f0r = 1; f0i = 0; f1r = 0; f1i = 1; f2r = -0.5; f2i = 0;
  } else {
    const bool neg = c0 < 0;
    const double sq = std::sqrt(c1 / 3.0);
    const double c0max = 2.0 * sq * sq * sq;
    double ratio = std::fabs(c0) / c0max;
    ratio = ratio > 1.0 ? 1.0 : ratio;
    const double theta3 = std::acos(ratio) / 3.0;
    const double uu = sq * std::cos(theta3), w = std::sqrt(c1) * std::sin(theta3);
    const double u2 = uu * uu, w2 = w * w;
    const double cw = std::cos(w), xi = w == 0.0 ? 1.0 : std::sin(w) / w;
    const double c2 = std::cos(2.0 * uu), s2 = std::sin(2.0 * uu);
    const double cu = std::cos(uu), su = std::sin(uu);
    const double inv = 1.0 / (9.0 * u2 - w2);
    const double a0 = 8.0 * u2 * cw, b0 = 2.0 * uu * (3.0 * u2 + w2) * xi;
    const double h0r = (u2 - w2) * c2 + cu * a0 + su * b0;
    const double h0i = (u2 - w2) * s2 + cu * b0 - su * a0;
    const double a1 = 2.0 * uu * cw, b1 = -(3.0 * u2 - w2) * xi;
    const double h1r = 2.0 * uu * c2 - (cu * a1 + su * b1);
    const double h1i = 2.0 * uu * s2 - (cu * b1 - su * a1);
    const double a2 = cw, b2 = 3.0 * uu * xi;
    const double h2r = c2 - (cu * a2 + su * b2);
    const double h2i = s2 - (cu * b2 - su * a2);
    const double sgn = neg ? -inv : inv;
    f0r = h0r * inv; f0i = h0i * sgn;
    f1r = h1r * sgn; f1i = h1i * inv;
    f2r = h2r * inv; f2i = h2i * sgn;
  }
  // e = f0 + (-i s f1) X + (-s^2 f2) X^2
  const T g1r = (T)(scale * f1i), g1i = (T)(-scale * f1r);
  const T g2r = (T)(-scale * scale * f2r), g2i = (T)(-scale * scale * f2i);
  T e[M];
  for (int k = 0; k < 9; ++k) {
    const T xr = x[2 * k], xi_ = x[2 * k + 1], yr = x2[2 * k], yi = x2[2 * k + 1];
    e[2 * k] = g1r * xr - g1i * xi_ + g2r * yr - g2i * yi;
    e[2 * k + 1] = g1r * xi_ + g1i * xr + g2r * yi + g2i * yr;
  }
  for (int i = 0; i < 3; ++i) {
    e[(i * 3 + i) * 2] += (T)f0r;
    e[(i * 3 + i) * 2 + 1] += (T)f0i;
  }
  mul_nn<T, 3>(out, e, r);
}

}  // namespace
"""
"""The colour-matrix helpers (``mul_nn``, ``mul_nd``, ``mul_dn_acc``, ``re_tr_mul``, the SU(3)
exponential ``expm3_mul``), shared by the native heatbath and stout layer
(:mod:`bridge._native_heatbath`, :mod:`bridge._native_stout`)."""

_CPP = CPP_MATRIX + r"""
namespace {

// The upper staple U_nu(x+mu) [U_nu(x) U_mu(x+nu)]^dag of plane (mu, nu) into `up` and
// Re Tr[U_mu(x) up] / NC.  Out of line, so that the force and the traces-only pass run the same
// machine code and their traces agree bit for bit (the cached action must equal a fresh one).
template <typename T, int NC>
__attribute__((noinline)) T upper_plane(T* __restrict up, T* __restrict t, const T* ub,
                                        const int64_t* fwd, int64_t v, int64_t x, int64_t mu,
                                        int64_t nu, int64_t xpmu) {
  constexpr int M = NC * NC * 2;
  mul_nn<T, NC>(t, ub + (nu * v + x) * M, ub + (mu * v + fwd[nu * v + x]) * M);
  mul_nd<T, NC, false>(up, ub + (nu * v + xpmu) * M, t);
  return re_tr_mul<T, NC>(ub + (mu * v + x) * M, up) / (T)NC;
}

// u [B, nd, V, NC, NC]; fwd/bwd [nd, V]; plane [nd * nd] (index of plane (mu, nu), mu < nu);
// coeff [B]; force [B, nd, V, NC, NC] or null; tr [B, nplanes, V] (Re Tr P / NC)
template <typename T, int NC>
void gauge_impl(const T* __restrict u, const int64_t* __restrict fwd,
                const int64_t* __restrict bwd, const int64_t* __restrict plane,
                const double* __restrict coeff, T* __restrict force, T* __restrict tr,
                int64_t nb, int64_t nd, int64_t v, int64_t nplanes, bool special) {
  constexpr int M = NC * NC * 2;
  at::parallel_for(0, nb * v, 64, [&](int64_t begin, int64_t end) {
    T t[M], stap[M], m[M];
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / v, x = idx % v;
      const T* ub = u + b * nd * v * M;
      for (int64_t mu = 0; mu < nd; ++mu) {
        const T* umu_x = ub + (mu * v + x) * M;
        const int64_t xpmu = fwd[mu * v + x];
        if (!force) {  // traces only: the upper staples of the planes (mu, nu > mu)
          for (int64_t nu = mu + 1; nu < nd; ++nu)
            tr[(b * nplanes + plane[mu * nd + nu]) * v + x] =
                upper_plane<T, NC>(stap, t, ub, fwd, v, x, mu, nu, xpmu);
          continue;
        }
        for (int e = 0; e < M; ++e) stap[e] = 0;
        for (int64_t nu = 0; nu < nd; ++nu) {
          if (nu == mu) continue;
          const T* unu_xpmu = ub + (nu * v + xpmu) * M;
          // upper: U_nu(x+mu) [U_nu(x) U_mu(x+nu)]^dag
          if (nu > mu) {
            T up[M];
            tr[(b * nplanes + plane[mu * nd + nu]) * v + x] =
                upper_plane<T, NC>(up, t, ub, fwd, v, x, mu, nu, xpmu);
            for (int e = 0; e < M; ++e) stap[e] += up[e];
          } else {
            mul_nn<T, NC>(t, ub + (nu * v + x) * M, ub + (mu * v + fwd[nu * v + x]) * M);
            mul_nd<T, NC, true>(stap, unu_xpmu, t);
          }
          // lower: [U_mu(y) U_nu(y+mu)]^dag U_nu(y), y = x - nu
          const int64_t y = bwd[nu * v + x];
          mul_nn<T, NC>(t, ub + (mu * v + y) * M, ub + (nu * v + fwd[mu * v + y]) * M);
          mul_dn_acc<T, NC>(stap, t, ub + (nu * v + y) * M);
        }
        mul_nn<T, NC>(m, umu_x, stap);
        // F = c TA(m) = c [(m - m^dag)/2 - (special ? i Im Tr m / NC : 0)]
        const T c = (T)coeff[b];
        T* f = force + ((b * nd + mu) * v + x) * M;
        T trim = 0;
        if (special) {
          for (int i = 0; i < NC; ++i) trim += m[(i * NC + i) * 2 + 1];
          trim /= (T)NC;
        }
        for (int i = 0; i < NC; ++i)
          for (int j = 0; j < NC; ++j) {
            const int ij = (i * NC + j) * 2, ji = (j * NC + i) * 2;
            f[ij] = (T)0.5 * c * (m[ij] - m[ji]);
            f[ij + 1] = (T)0.5 * c * (m[ij + 1] + m[ji + 1]) - (i == j ? c * trim : (T)0);
          }
      }
    }
  });
}

template <typename T>
void gauge_dispatch(int64_t nc, const T* u, const int64_t* fwd, const int64_t* bwd,
                    const int64_t* plane, const double* coeff, T* force, T* tr, int64_t nb,
                    int64_t nd, int64_t v, int64_t np, bool special) {
  switch (nc) {
    case 1: gauge_impl<T, 1>(u, fwd, bwd, plane, coeff, force, tr, nb, nd, v, np, special); break;
    case 2: gauge_impl<T, 2>(u, fwd, bwd, plane, coeff, force, tr, nb, nd, v, np, special); break;
    case 3: gauge_impl<T, 3>(u, fwd, bwd, plane, coeff, force, tr, nb, nd, v, np, special); break;
    default: TORCH_CHECK(false, "native gauge: Nc must be 1, 2 or 3, got ", nc);
  }
}

// exp(s X) R for traceless anti-Hermitian 3x3 X, n matrices (expm3_mul)
template <typename T>
void expm_impl(const T* __restrict xs, const T* __restrict rs, T* __restrict out, int64_t n,
               double scale) {
  constexpr int M = 18;
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx)
      expm3_mul<T>(out + idx * M, xs + idx * M, rs + idx * M, scale);
  });
}

}  // namespace

// u [B, nd, V, Nc, Nc] complex contiguous; fwd, bwd [nd, V] int64; plane [nd * nd] int64;
// coeff [B] float64 (beta / (2 Nc)); with_force: also the force.  Returns (force or empty, tr).
std::vector<torch::Tensor> gauge(torch::Tensor u, torch::Tensor fwd, torch::Tensor bwd,
                                 torch::Tensor plane, torch::Tensor coeff, bool with_force,
                                 bool special) {
  TORCH_CHECK(u.is_contiguous() && fwd.is_contiguous() && bwd.is_contiguous() &&
              plane.is_contiguous() && coeff.is_contiguous(), "native gauge: contiguous inputs");
  TORCH_CHECK(u.dim() == 5 && u.size(3) == u.size(4), "native gauge: u [B, nd, V, Nc, Nc]");
  TORCH_CHECK(fwd.scalar_type() == at::kLong && bwd.scalar_type() == at::kLong &&
              plane.scalar_type() == at::kLong, "native gauge: int64 tables expected");
  TORCH_CHECK(coeff.scalar_type() == at::kDouble, "native gauge: float64 coefficients");
  const int64_t nb = u.size(0), nd = u.size(1), v = u.size(2), nc = u.size(3);
  TORCH_CHECK(fwd.numel() == nd * v && bwd.numel() == nd * v && plane.numel() == nd * nd &&
              coeff.numel() == nb, "native gauge: table shapes");
  const int64_t np = nd * (nd - 1) / 2;
  const bool dbl = u.scalar_type() == at::kComplexDouble;
  TORCH_CHECK(dbl || u.scalar_type() == at::kComplexFloat,
              "native gauge: complex128 or complex64 expected");
  auto tr = torch::empty({nb, np, v}, u.options().dtype(dbl ? at::kDouble : at::kFloat));
  torch::Tensor f = with_force ? torch::empty_like(u) : torch::empty({0}, u.options());
  const int64_t *pf = fwd.data_ptr<int64_t>(), *pb = bwd.data_ptr<int64_t>(),
                *pp = plane.data_ptr<int64_t>();
  const double* pc = coeff.data_ptr<double>();
  if (dbl) {
    using T = double;
    gauge_dispatch<T>(nc, reinterpret_cast<const T*>(u.data_ptr()), pf, pb, pp, pc,
                      with_force ? reinterpret_cast<T*>(f.data_ptr()) : nullptr,
                      tr.data_ptr<T>(), nb, nd, v, np, special);
  } else {
    using T = float;
    gauge_dispatch<T>(nc, reinterpret_cast<const T*>(u.data_ptr()), pf, pb, pp, pc,
                      with_force ? reinterpret_cast<T*>(f.data_ptr()) : nullptr,
                      tr.data_ptr<T>(), nb, nd, v, np, special);
  }
  return {f, tr};
}

namespace {

// Clover energy density: per site the sum over the planes (mu < nu) of -Re Tr F_{mu nu}(x)^2,
// F = (Q - Q^dag) / 8, Q the four leaves (gauge.loops.clover_field_strength), split into
// the planes holding direction tdir (e[0]) and the others (e[1]); out [B, V, 2].
template <typename T, int NC>
void clover_energy_impl(const T* __restrict u, const int64_t* __restrict fwd,
                        const int64_t* __restrict bwd, double* __restrict out, int64_t nb,
                        int64_t nd, int64_t v, int64_t tdir) {
  constexpr int M = NC * NC * 2;
  at::parallel_for(0, nb * v, 16, [&](int64_t begin, int64_t end) {
    T t1[M], t2[M], q[M], l[M];
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / v, x = idx % v;
      const T* ub = u + b * nd * v * M;
      double e[2] = {0.0, 0.0};
      for (int64_t mu = 0; mu < nd; ++mu)
        for (int64_t nu = mu + 1; nu < nd; ++nu) {
          auto U = [&](int64_t d, int64_t y) { return ub + (d * v + y) * M; };
          const int64_t xpm = fwd[mu * v + x], xpn = fwd[nu * v + x];
          const int64_t xmm = bwd[mu * v + x], xmn = bwd[nu * v + x];
          const int64_t xmm_pn = fwd[nu * v + xmm], xmm_mn = bwd[nu * v + xmm];
          const int64_t xmn_pm = fwd[mu * v + xmn];
          // L1 = [U_mu(x) U_nu(x+mu)] [U_nu(x) U_mu(x+nu)]^dag
          mul_nn<T, NC>(t1, U(mu, x), U(nu, xpm));
          mul_nn<T, NC>(t2, U(nu, x), U(mu, xpn));
          mul_nd<T, NC, false>(q, t1, t2);
          // L2 = U_nu(x) [U_nu(x-mu) U_mu(x-mu+nu)]^dag U_mu(x-mu)
          mul_nn<T, NC>(t1, U(nu, xmm), U(mu, xmm_pn));
          mul_nd<T, NC, false>(t2, U(nu, x), t1);
          mul_nn<T, NC>(l, t2, U(mu, xmm));
          for (int k = 0; k < M; ++k) q[k] += l[k];
          // L3 = [U_nu(x-mu-nu) U_mu(x-mu)]^dag [U_mu(x-mu-nu) U_nu(x-nu)]
          mul_nn<T, NC>(t1, U(nu, xmm_mn), U(mu, xmm));
          mul_nn<T, NC>(t2, U(mu, xmm_mn), U(nu, xmn));
          mul_dn_acc<T, NC>(q, t1, t2);
          // L4 = U_nu(x-nu)^dag [U_mu(x-nu) U_nu(x-nu+mu)] U_mu(x)^dag
          mul_nn<T, NC>(t1, U(mu, xmn), U(nu, xmn_pm));
          mul_nd<T, NC, false>(t2, t1, U(mu, x));
          mul_dn_acc<T, NC>(q, U(nu, xmn), t2);
          // F = (Q - Q^dag) / 8; -Re Tr F^2
          T fr[NC][NC], fi[NC][NC];
          for (int i = 0; i < NC; ++i)
            for (int j = 0; j < NC; ++j) {
              fr[i][j] = (T)0.125 * (q[(i * NC + j) * 2] - q[(j * NC + i) * 2]);
              fi[i][j] = (T)0.125 * (q[(i * NC + j) * 2 + 1] + q[(j * NC + i) * 2 + 1]);
            }
          T s = 0;
          for (int i = 0; i < NC; ++i)
            for (int j = 0; j < NC; ++j) s += fr[i][j] * fr[j][i] - fi[i][j] * fi[j][i];
          e[(mu == tdir || nu == tdir) ? 0 : 1] -= (double)s;
        }
      out[idx * 2] = e[0];
      out[idx * 2 + 1] = e[1];
    }
  });
}

}  // namespace

// Clover energy density split (see clover_energy_impl): u [B, nd, V, NC, NC] contiguous,
// fwd/bwd [nd, V]; returns [B, 2] = (1/V) sum_x (planes with tdir, the others), float64.
torch::Tensor clover_energy(torch::Tensor u, torch::Tensor fwd, torch::Tensor bwd,
                            int64_t tdir) {
  TORCH_CHECK(u.is_contiguous() && u.dim() == 5, "native clover energy: u [B, nd, V, Nc, Nc]");
  const int64_t nb = u.size(0), nd = u.size(1), v = u.size(2), nc = u.size(3);
  TORCH_CHECK(fwd.numel() == nd * v && bwd.numel() == nd * v && fwd.is_contiguous() &&
              bwd.is_contiguous() && fwd.scalar_type() == at::kLong &&
              bwd.scalar_type() == at::kLong, "native clover energy: tables [nd, V] int64");
  TORCH_CHECK(tdir >= 0 && tdir < nd, "native clover energy: tdir out of range");
  auto site = torch::empty({nb, v, 2}, torch::kDouble);
  double* o = site.data_ptr<double>();
  const int64_t* fw = fwd.data_ptr<int64_t>();
  const int64_t* bw = bwd.data_ptr<int64_t>();
#define QB_CE(T)                                                                          \
  switch (nc) {                                                                           \
    case 1: clover_energy_impl<T, 1>(reinterpret_cast<const T*>(u.data_ptr()), fw, bw, o, \
                                     nb, nd, v, tdir); break;                             \
    case 2: clover_energy_impl<T, 2>(reinterpret_cast<const T*>(u.data_ptr()), fw, bw, o, \
                                     nb, nd, v, tdir); break;                             \
    case 3: clover_energy_impl<T, 3>(reinterpret_cast<const T*>(u.data_ptr()), fw, bw, o, \
                                     nb, nd, v, tdir); break;                             \
    default: TORCH_CHECK(false, "native clover energy: Nc must be 1, 2 or 3");            \
  }
  if (u.scalar_type() == at::kComplexDouble) {
    QB_CE(double)
  } else {
    TORCH_CHECK(u.scalar_type() == at::kComplexFloat, "native clover energy: complex U");
    QB_CE(float)
  }
#undef QB_CE
  auto out = torch::empty({nb, 2}, torch::kDouble);
  double* r = out.data_ptr<double>();
  for (int64_t b = 0; b < nb; ++b) {
    double s0 = 0, s1 = 0;
    for (int64_t x = 0; x < v; ++x) { s0 += o[(b * v + x) * 2]; s1 += o[(b * v + x) * 2 + 1]; }
    r[b * 2] = s0 / (double)v;
    r[b * 2 + 1] = s1 / (double)v;
  }
  return out;
}

// exp(scale X) R for x, r [..., 3, 3] complex contiguous, same shape and dtype
torch::Tensor expm_su3_mul(torch::Tensor x, torch::Tensor r, double scale) {
  TORCH_CHECK(x.is_contiguous() && r.is_contiguous() && x.sizes() == r.sizes() &&
              x.scalar_type() == r.scalar_type() && x.dim() >= 2 && x.size(-1) == 3 &&
              x.size(-2) == 3, "native expm: x, r [..., 3, 3] contiguous, same dtype");
  auto out = torch::empty_like(r);
  const int64_t n = x.numel() / 9;
  if (x.scalar_type() == at::kComplexDouble) {
    using T = double;
    expm_impl<T>(reinterpret_cast<const T*>(x.data_ptr()),
                 reinterpret_cast<const T*>(r.data_ptr()), reinterpret_cast<T*>(out.data_ptr()),
                 n, scale);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kComplexFloat,
                "native expm: complex128 or complex64 expected");
    using T = float;
    expm_impl<T>(reinterpret_cast<const T*>(x.data_ptr()),
                 reinterpret_cast<const T*>(r.data_ptr()), reinterpret_cast<T*>(out.data_ptr()),
                 n, scale);
  }
  return out;
}

// One step of Luescher's RK3 Wilson flow (arXiv:1006.4518, eq. (C.1)) for SU(3), as
// observables.wilson_flow.rk3_step: Z(V) = -eps TA[V A] (the Wilson force at beta = 2 Nc),
// W1 = exp(Z0 / 4) V, W2 = exp(8/9 Z1 - 17/36 Z0) W1, V' = exp(3/4 Z2 - 8/9 Z1 + 17/36 Z0) W2.
// With `embedded` also the second-order W2' = exp(2 Z1 - Z0) V (arXiv:1301.4388), else empty.
std::vector<torch::Tensor> flow_step(torch::Tensor u, torch::Tensor fwd, torch::Tensor bwd,
                                     torch::Tensor plane, double eps, bool embedded) {
  TORCH_CHECK(u.dim() == 5 && u.size(3) == 3 && u.size(4) == 3, "native flow: SU(3) links");
  auto coeff = torch::full({u.size(0)}, -eps, torch::kDouble);
  auto z0 = gauge(u, fwd, bwd, plane, coeff, true, true)[0];
  auto w1 = expm_su3_mul(z0, u, 0.25);
  auto z1 = gauge(w1, fwd, bwd, plane, coeff, true, true)[0];
  auto low = embedded ? expm_su3_mul(z1.mul(2.0).sub_(z0), u, 1.0) : torch::empty({0}, u.options());
  auto a = z1.mul(8.0 / 9.0).sub_(z0, 17.0 / 36.0);
  auto w2 = expm_su3_mul(a, w1, 1.0);
  auto z2 = gauge(w2, fwd, bwd, plane, coeff, true, true)[0];
  return {expm_su3_mul(z2.mul(0.75).sub_(a), w2, 1.0), low};
}
"""

_state: dict[str, object] = new_state()


def available() -> bool:
    """Whether the native gauge kernels are enabled and built (builds them on the first call)."""
    return ready(_state, _NAME, _CPP, ["gauge", "expm_su3_mul", "clover_energy", "flow_step"],
                 "gauge kernel")


def build_seconds() -> float | None:
    """Seconds the first :func:`available` call in this process spent building/loading."""
    return _state["seconds"]  # type: ignore[return-value]


def usable(u: torch.Tensor) -> bool:
    """The native kernels apply to ``u`` (CPU, complex128/complex64, Nc <= 3, no autograd
    graph being recorded) and are built."""
    return (
        u.device.type == "cpu"
        and u.dtype in (torch.complex128, torch.complex64)
        and u.shape[-1] <= 3
        and not (u.requires_grad and torch.is_grad_enabled())
        and available()
    )


def force(u: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor, plane: torch.Tensor,
          coeff: torch.Tensor, special: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F, traces)`` for ``u[B, nd, V, Nc, Nc]`` (contiguous): the Wilson force with
    per-configuration ``coeff[B]`` (float64, ``beta / (2 Nc)``) and ``Re Tr P / Nc`` per plane,
    ``[B, n_planes, V]``.  Call only when :func:`available` is true."""
    f, tr = _state["module"].gauge(u, fwd, bwd, plane, coeff, True, special)  # type: ignore
    return f, tr


def traces(u: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor,
           plane: torch.Tensor) -> torch.Tensor:
    """``Re Tr P / Nc`` per plane, ``[B, n_planes, V]``, without the force."""
    coeff = torch.zeros(int(u.shape[0]), dtype=torch.float64)
    return _state["module"].gauge(u, fwd, bwd, plane, coeff, False, False)[1]  # type: ignore


def expm_su3_mul(x: torch.Tensor, r: torch.Tensor, scale: float) -> torch.Tensor:
    """``exp(scale X) R`` for traceless anti-Hermitian 3x3 ``X`` (contiguous, like ``R``)."""
    return _state["module"].expm_su3_mul(x, r, float(scale))  # type: ignore[union-attr]


def clover_energy(u: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor,
                  t_dir: int) -> torch.Tensor:
    """``[B, 2]`` float64: ``-(1/V) sum_x sum Re Tr F_{mu nu}(x)^2`` (clover ``F``, not made
    traceless, as ``gauge.loops.clover_field_strength``) over the planes holding ``t_dir`` and
    over the others, for ``u[B, nd, V, Nc, Nc]`` (contiguous) and the neighbour tables of
    ``gauge.loops._native_tables``: Chroma's ``wflow_gact4i``, ``wflow_gactij`` in one pass."""
    return _state["module"].clover_energy(u, fwd, bwd, int(t_dir))  # type: ignore[union-attr]


def flow_step(u: torch.Tensor, fwd: torch.Tensor, bwd: torch.Tensor, plane: torch.Tensor,
              eps: float, embedded: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One RK3 Wilson-flow step of SU(3) links ``u[B, nd, V, 3, 3]`` (contiguous) with the
    tables of ``gauge.loops._native_tables``: the three forces and exponentials of
    ``observables.wilson_flow.rk3_step`` in one call.  Returns ``(V(t + eps), W2')`` with the
    embedded second-order step ``W2' = exp(2 Z1 - Z0) V`` when ``embedded`` (else empty)."""
    out, low = _state["module"].flow_step(  # type: ignore[union-attr]
        u, fwd, bwd, plane, float(eps), bool(embedded))
    return out, low
