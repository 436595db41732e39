"""Optional native (C++) CPU kernel of one half sweep of the Cabibbo-Marinari heatbath or the
overrelaxation (:mod:`bridge.mcmc.heatbath`): for every updated link (one direction and site
parity, all configurations of the batch, in parallel) the staple sum, ``W = U A`` and the SU(2)
subgroup updates, in one pass without temporaries.

The algebra is that of the torch path line by line (quaternion projection, Kennedy-Pendleton
for ``alpha >= 2`` and Creutz's inversion below, the sphere for the vector part, ``x = y V^dag``
or ``x = (V^dag)^2``); only the random numbers differ: each link draws from its own splitmix64
stream (Steele, Lea & Flood, OOPSLA 2014) seeded by a hash of one 62-bit key per half sweep
(taken from the caller's ``torch.Generator``), the configuration and the link, so the result
depends on the generator only, never on the number of threads.  The overrelaxation is
deterministic and agrees with the torch path to rounding.

Built, cached and switched like the other native kernels (:mod:`bridge._native_build`):
``QCD_BRIDGE_NATIVE=0`` disables it; CPU complex128/complex64 SU(2)/SU(3) fields without an
autograd graph being recorded (the SNF training differentiates through the torch path).
"""

from __future__ import annotations

import torch

from ._native_build import new_state, ready
from ._native_gauge import CPP_MATRIX

__all__ = ["available", "usable", "half_sweep"]

_NAME = "qcd_bridge_heatbath_v1"

_CPP = CPP_MATRIX + r"""
#include <atomic>

namespace {

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

struct Rng {  // splitmix64 on a per-link seed
  uint64_t s;
  inline double uniform() {  // [0, 1), 53 bits
    s += 0x9E3779B97F4A7C15ULL;
    return (double)(mix64(s) >> 11) * 0x1.0p-53;
  }
};

// y0 with density sqrt(1 - y0^2) exp(alpha y0) on [-1, 1]; NaN when no draw is accepted
inline double draw_y0(double alpha, Rng& g) {
  for (int t = 0; t < 10000; ++t) {
    const double r0 = g.uniform(), r1 = g.uniform(), r2 = g.uniform(), r3 = g.uniform();
    if (alpha >= 2.0) {  // Kennedy-Pendleton
      const double c = std::cos(2.0 * M_PI * r1);
      const double lam2 = -(std::log1p(-r0) + c * c * std::log1p(-r2)) / (2.0 * alpha);
      if (r3 * r3 <= 1.0 - lam2) return 1.0 - 2.0 * lam2;
    } else {  // Creutz: inversion of exp(alpha y0), accepted with probability sqrt(1 - y0^2)
      const double s = 1.0 - r0;
      double y0 = alpha < 1e-12 ? 1.0 - 2.0 * s
                                : 1.0 + std::log1p(s * std::expm1(-2.0 * alpha)) / alpha;
      y0 = std::min(1.0, std::max(-1.0, y0));
      if (r3 <= std::sqrt(1.0 - y0 * y0)) return y0;
    }
  }
  return NAN;
}

// 2x2 complex matrix [[a, b], [c, d]] of the quaternion q: [[q0 + i q3, q2 + i q1],
// [-q2 + i q1, q0 - i q3]]
inline void quat_matrix(double* m, const double* q) {
  m[0] = q[0]; m[1] = q[3]; m[2] = q[2]; m[3] = q[1];
  m[4] = -q[2]; m[5] = q[1]; m[6] = q[0]; m[7] = -q[3];
}

inline void mul22(double* c, const double* a, const double* b) {
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 2; ++k) {
      double sr = 0, si = 0;
      for (int j = 0; j < 2; ++j) {
        const double ar = a[(i * 2 + j) * 2], ai = a[(i * 2 + j) * 2 + 1];
        const double br = b[(j * 2 + k) * 2], bi = b[(j * 2 + k) * 2 + 1];
        sr += ar * br - ai * bi;
        si += ar * bi + ai * br;
      }
      c[(i * 2 + k) * 2] = sr;
      c[(i * 2 + k) * 2 + 1] = si;
    }
}

// rows (i, j) of the NC x NC matrix m <- x [rows i, j]
template <typename T, int NC>
inline void rotate_rows(T* m, const double* x, int i, int j) {
  for (int c = 0; c < NC; ++c) {
    const double ir = m[(i * NC + c) * 2], ii = m[(i * NC + c) * 2 + 1];
    const double jr = m[(j * NC + c) * 2], ji = m[(j * NC + c) * 2 + 1];
    m[(i * NC + c) * 2] = (T)(x[0] * ir - x[1] * ii + x[2] * jr - x[3] * ji);
    m[(i * NC + c) * 2 + 1] = (T)(x[0] * ii + x[1] * ir + x[2] * ji + x[3] * jr);
    m[(j * NC + c) * 2] = (T)(x[4] * ir - x[5] * ii + x[6] * jr - x[7] * ji);
    m[(j * NC + c) * 2 + 1] = (T)(x[4] * ii + x[5] * ir + x[6] * ji + x[7] * jr);
  }
}

// One SU(2) subgroup step of link u with w = u A (both updated); false when the draw failed
template <typename T, int NC>
inline bool subgroup_step(T* u, T* w, int i, int j, double coeff, bool hb, Rng& g) {
  auto re = [&](int a, int b) { return (double)w[(a * NC + b) * 2]; };
  auto im = [&](int a, int b) { return (double)w[(a * NC + b) * 2 + 1]; };
  double q[4] = {0.5 * (re(i, i) + re(j, j)), 0.5 * (im(i, j) + im(j, i)),
                 0.5 * (re(i, j) - re(j, i)), 0.5 * (im(i, i) - im(j, j))};
  const double k = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  if (k > 0) { for (int e = 0; e < 4; ++e) q[e] /= k; }
  else { q[0] = 1; q[1] = q[2] = q[3] = 0; }
  double v[8], vd[8], x[8];
  quat_matrix(v, q);
  // V^dag: [[conj a, conj c], [conj b, conj d]]
  vd[0] = v[0]; vd[1] = -v[1]; vd[2] = v[4]; vd[3] = -v[5];
  vd[4] = v[2]; vd[5] = -v[3]; vd[6] = v[6]; vd[7] = -v[7];
  if (hb) {
    const double alpha = 2.0 * coeff * k;
    if (!(alpha >= 0.0) || !std::isfinite(alpha)) return false;
    const double y0 = draw_y0(alpha, g);
    if (std::isnan(y0)) return false;
    const double cos_t = 1.0 - 2.0 * g.uniform(), phi = 2.0 * M_PI * g.uniform();
    const double sin_t = std::sqrt(std::max(0.0, 1.0 - cos_t * cos_t));
    const double rad = std::sqrt(std::max(0.0, 1.0 - y0 * y0));
    const double y[4] = {y0, rad * sin_t * std::cos(phi), rad * sin_t * std::sin(phi),
                         rad * cos_t};
    double ym[8];
    quat_matrix(ym, y);
    mul22(x, ym, vd);
  } else {
    mul22(x, vd, vd);
  }
  rotate_rows<T, NC>(u, x, i, j);
  rotate_rows<T, NC>(w, x, i, j);
  return true;
}

template <typename T, int NC>
int64_t half_sweep_impl(T* __restrict flat, int64_t nb, int64_t nall, int64_t nlinks,
                        const int64_t* link, const int64_t* const* tab, const int64_t* w_up,
                        const int64_t* w_lo, const double* wflat, int64_t n, double coeff,
                        bool hb, uint64_t key, bool reverse) {
  constexpr int M = NC * NC * 2;
  constexpr int NSUB = NC == 3 ? 3 : 1;
  static const int SUB[3][2] = {{0, 1}, {0, 2}, {1, 2}};
  std::atomic<int64_t> failed(0);
  at::parallel_for(0, nb * nlinks, 16, [&](int64_t begin, int64_t end) {
    T a[M], t[M], s[M], w[M];
    int64_t bad = 0;
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t b = idx / nlinks, h = idx % nlinks;
      T* fb = flat + b * nall * M;
      auto at_ = [&](int which, int64_t e) { return fb + tab[which][e] * M; };
      for (int e = 0; e < M; ++e) a[e] = 0;
      for (int64_t nu = 0; nu < n; ++nu) {
        const int64_t e = nu * nlinks + h;
        mul_nn<T, NC>(t, at_(2, e), at_(1, e));  // U_nu(x) U_mu(x+nu)
        if (wflat) {
          mul_nd<T, NC, false>(s, at_(0, e), t);
          const T c = (T)wflat[w_up[e]];
          for (int q = 0; q < M; ++q) a[q] += c * s[q];
        } else {
          mul_nd<T, NC, true>(a, at_(0, e), t);
        }
        mul_nn<T, NC>(t, at_(4, e), at_(3, e));  // U_mu(x-nu) U_nu(x+mu-nu)
        if (wflat) {
          for (int q = 0; q < M; ++q) s[q] = 0;
          mul_dn_acc<T, NC>(s, t, at_(5, e));
          const T c = (T)wflat[w_lo[e]];
          for (int q = 0; q < M; ++q) a[q] += c * s[q];
        } else {
          mul_dn_acc<T, NC>(a, t, at_(5, e));
        }
      }
      T* u = fb + link[h] * M;
      mul_nn<T, NC>(w, u, a);
      Rng g{mix64(key ^ mix64((uint64_t)idx + 0x632BE59BD9B4E019ULL))};
      for (int r = 0; r < NSUB; ++r) {
        const int sg = reverse ? NSUB - 1 - r : r;
        if (!subgroup_step<T, NC>(u, w, SUB[sg][0], SUB[sg][1], coeff, hb, g)) ++bad;
      }
    }
    if (bad) failed += bad;
  });
  return failed.load();
}

}  // namespace

// One half sweep in place on flat [B, nall, NC, NC] (contiguous): the links `link` [H] with the
// staple links tab = (up_a, up_b, up_c, lo_a, lo_b, lo_c), each [n * H] (bridge.mcmc.heatbath
// tables), optional plaquette coefficients wflat [n_planes * V] indexed by w_up/w_lo.
// Heatbath with coeff = beta / NC when hb, else overrelaxation.  Returns the number of failed
// SU(2) draws (0 unless alpha was not finite).
int64_t half_sweep(torch::Tensor flat, torch::Tensor link, std::vector<torch::Tensor> tab,
                   torch::Tensor w_up, torch::Tensor w_lo, torch::Tensor wflat, double coeff,
                   bool hb, int64_t key, bool reverse) {
  TORCH_CHECK(flat.is_contiguous() && flat.dim() == 4 && flat.size(2) == flat.size(3),
              "native heatbath: flat [B, nall, N, N] contiguous");
  TORCH_CHECK(tab.size() == 6, "native heatbath: six staple tables");
  const int64_t nb = flat.size(0), nall = flat.size(1), h = link.numel();
  const int64_t n = tab[0].numel() / std::max<int64_t>(h, 1);
  const int64_t* t6[6];
  for (int i = 0; i < 6; ++i) {
    TORCH_CHECK(tab[i].is_contiguous() && tab[i].scalar_type() == at::kLong &&
                tab[i].numel() == n * h, "native heatbath: int64 tables [n * H]");
    t6[i] = tab[i].data_ptr<int64_t>();
  }
  const bool weighted = wflat.numel() > 0;
  const double* wp = weighted ? wflat.data_ptr<double>() : nullptr;
  const int64_t* wu = weighted ? w_up.data_ptr<int64_t>() : nullptr;
  const int64_t* wl = weighted ? w_lo.data_ptr<int64_t>() : nullptr;
  const int nc = (int)flat.size(3);
  const uint64_t k = (uint64_t)key;
#define QB_HB(T)                                                                              \
  switch (nc) {                                                                               \
    case 2: return half_sweep_impl<T, 2>(reinterpret_cast<T*>(flat.data_ptr()), nb, nall, h,  \
                                         link.data_ptr<int64_t>(), t6, wu, wl, wp, n, coeff,   \
                                         hb, k, reverse);                                      \
    case 3: return half_sweep_impl<T, 3>(reinterpret_cast<T*>(flat.data_ptr()), nb, nall, h,  \
                                         link.data_ptr<int64_t>(), t6, wu, wl, wp, n, coeff,   \
                                         hb, k, reverse);                                      \
    default: TORCH_CHECK(false, "native heatbath: SU(2) or SU(3)");                           \
  }
  if (flat.scalar_type() == at::kComplexDouble) {
    QB_HB(double)
  } else {
    TORCH_CHECK(flat.scalar_type() == at::kComplexFloat, "native heatbath: complex links");
    QB_HB(float)
  }
#undef QB_HB
  return 0;
}
"""

_state: dict[str, object] = new_state()
_TABLE_NAMES = ("up_a", "up_b", "up_c", "lo_a", "lo_b", "lo_c")


def available() -> bool:
    """Whether the native heatbath is enabled and built (builds it on the first call)."""
    return ready(_state, _NAME, _CPP, ["half_sweep"], "heatbath kernel")


def usable(u: torch.Tensor) -> bool:
    """The native half sweep applies to ``u`` (CPU, complex128/complex64, SU(2) or SU(3), no
    autograd graph being recorded) and is built."""
    return (u.device.type == "cpu" and u.dtype in (torch.complex128, torch.complex64)
            and int(u.shape[-1]) in (2, 3)
            and not (u.requires_grad and torch.is_grad_enabled()) and available())


def half_sweep(flat: torch.Tensor, t: dict, coeff: float | None, gen: torch.Generator | None,
               wflat: torch.Tensor | None, reverse: bool) -> int:
    """Update the links of the table entry ``t`` of ``flat[B, Nd * V, N, N]`` in place
    (heatbath with ``coeff = beta / N`` and a key from ``gen``, or overrelaxation for ``coeff``
    None); the number of failed SU(2) draws.  Call only when :func:`usable` is true."""
    hb = coeff is not None
    key = int(torch.randint(0, 2**62, (1,), generator=gen)) if hb else 0
    empty = torch.empty(0, dtype=torch.int64)
    if wflat is None:
        w = (empty, empty, torch.empty(0, dtype=torch.float64))
    else:
        w = (t["w_up"], t["w_lo"], wflat.to(torch.float64).contiguous())
    return int(_state["module"].half_sweep(  # type: ignore[union-attr]
        flat, t["link"], [t[k] for k in _TABLE_NAMES], *w, float(coeff or 0.0), hb, key,
        bool(reverse)))
