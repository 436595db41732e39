"""C++ source of the native Wilson hopping kernel (bridge/fermions/_native.py): the generic hop
with run-time spin tables, its copy with the tables compiled in, and ``K^dag K``.  Plain text
(no import of anything); the build joins it with :mod:`._native_cpp_solve`."""

HOP_CPP = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cstdint>
#include <utility>
#include <vector>

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

namespace {

// The spin tables of H (D = 0) and gamma_5 H gamma_5 (D = 1) as compile-time integers
// (written in by Python from hopping._native_spin_table when every coefficient is +-1 or +-i):
// the projection and reconstruction become adds and sign flips.
// @SPIN_TABLE@

// o = a + c q for c in {+-1, +-i} given as (RE, IM)
template <int RE, int IM, typename T>
inline void cadd(T& orr, T& oi, T ar, T ai, T qr, T qi) {
  if constexpr (IM == 0) {
    if constexpr (RE > 0) { orr = ar + qr; oi = ai + qi; } else { orr = ar - qr; oi = ai - qi; }
  } else if constexpr (IM > 0) {
    orr = ar - qi; oi = ai + qr;
  } else {
    orr = ar + qi; oi = ai - qr;
  }
}

template <typename T, int NC, int D, int K>
inline void fixed_term(T (&ar)[4][NC], T (&ai)[4][NC], const T* __restrict p,
                       const T* __restrict L) {
  constexpr int LO0 = SPIN_TAB[D][K][0][0], PR0 = SPIN_TAB[D][K][0][1], PI0 = SPIN_TAB[D][K][0][2];
  constexpr int WI0 = SPIN_TAB[D][K][0][3], LR0 = SPIN_TAB[D][K][0][4], LI0 = SPIN_TAB[D][K][0][5];
  constexpr int LO1 = SPIN_TAB[D][K][1][0], PR1 = SPIN_TAB[D][K][1][1], PI1 = SPIN_TAB[D][K][1][2];
  constexpr int WI1 = SPIN_TAB[D][K][1][3], LR1 = SPIN_TAB[D][K][1][4], LI1 = SPIN_TAB[D][K][1][5];
  T hr[2][NC], hi[2][NC];
  const T* q0 = p + (2 + LO0) * NC * 2;
  const T* q1 = p + (2 + LO1) * NC * 2;
  for (int c = 0; c < NC; ++c) {
    cadd<PR0, PI0>(hr[0][c], hi[0][c], p[c * 2], p[c * 2 + 1], q0[2 * c], q0[2 * c + 1]);
    cadd<PR1, PI1>(hr[1][c], hi[1][c], p[(NC + c) * 2], p[(NC + c) * 2 + 1], q1[2 * c],
                   q1[2 * c + 1]);
  }
  T wr[2][NC], wi[2][NC];
  for (int a = 0; a < NC; ++a) {
    T s0r = 0, s0i = 0, s1r = 0, s1i = 0;
    for (int c = 0; c < NC; ++c) {  // one load of U for both half-spinor rows
      const T ur = L[(c * NC + a) * 2], ui = L[(c * NC + a) * 2 + 1];
      s0r += hr[0][c] * ur - hi[0][c] * ui;
      s0i += hr[0][c] * ui + hi[0][c] * ur;
      s1r += hr[1][c] * ur - hi[1][c] * ui;
      s1i += hr[1][c] * ui + hi[1][c] * ur;
    }
    wr[0][a] = s0r; wi[0][a] = s0i; wr[1][a] = s1r; wi[1][a] = s1i;
  }
  for (int a = 0; a < NC; ++a) {
    ar[0][a] += wr[0][a]; ai[0][a] += wi[0][a];
    ar[1][a] += wr[1][a]; ai[1][a] += wi[1][a];
    cadd<LR0, LI0>(ar[2][a], ai[2][a], ar[2][a], ai[2][a], wr[WI0][a], wi[WI0][a]);
    cadd<LR1, LI1>(ar[3][a], ai[3][a], ar[3][a], ai[3][a], wr[WI1][a], wi[WI1][a]);
  }
}

template <typename T, int NC, int D, int... K>
inline void fixed_site(std::integer_sequence<int, K...>, T (&ar)[4][NC], T (&ai)[4][NC],
                       const T* ps, const T* lb, const int64_t* nx) {
  constexpr int SP = 4 * NC * 2, LK = NC * NC * 2;
  (fixed_term<T, NC, D, K>(ar, ai, ps + nx[K] * SP, lb + K * LK), ...);
}

// out = s H psi + alpha add (real s, alpha; add may be null), H with the fixed table D
template <typename T, int NC, int D>
void hop_fixed_impl(T* __restrict out, const T* __restrict psi, const T* __restrict lnk,
                    const int64_t* __restrict nbr, const T* __restrict add, int64_t nb,
                    int64_t nr, int64_t v, T s, T alpha) {
  constexpr int SP = 4 * NC * 2;
  constexpr int LK = NC * NC * 2;
  at::parallel_for(0, nb * nr * v, 256, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t x = idx % v;
      const int64_t br = idx / v;
      const int64_t b = br / nr;
      T ar[4][NC], ai[4][NC];
      for (int sp = 0; sp < 4; ++sp)
        for (int c = 0; c < NC; ++c) { ar[sp][c] = 0; ai[sp][c] = 0; }
      fixed_site<T, NC, D>(std::make_integer_sequence<int, 8>{}, ar, ai, psi + br * v * SP,
                           lnk + (b * v + x) * 8 * LK, nbr + x * 8);
      T* o = out + idx * SP;
      if (add) {
        const T* d = add + idx * SP;
        for (int sp = 0; sp < 4; ++sp)
          for (int c = 0; c < NC; ++c) {
            const int e = (sp * NC + c) * 2;
            o[e] = s * ar[sp][c] + alpha * d[e];
            o[e + 1] = s * ai[sp][c] + alpha * d[e + 1];
          }
      } else {
        for (int sp = 0; sp < 4; ++sp)
          for (int c = 0; c < NC; ++c) {
            const int e = (sp * NC + c) * 2;
            o[e] = s * ar[sp][c];
            o[e + 1] = s * ai[sp][c];
          }
      }
    }
  });
}

template <typename T, int D>
void fixed_dispatch(int64_t nc, T* out, const T* psi, const T* lnk, const int64_t* nbr,
                    const T* add, int64_t nb, int64_t nr, int64_t v, T s, T alpha) {
  switch (nc) {
    case 1: hop_fixed_impl<T, 1, D>(out, psi, lnk, nbr, add, nb, nr, v, s, alpha); break;
    case 2: hop_fixed_impl<T, 2, D>(out, psi, lnk, nbr, add, nb, nr, v, s, alpha); break;
    case 3: hop_fixed_impl<T, 3, D>(out, psi, lnk, nbr, add, nb, nr, v, s, alpha); break;
    default: TORCH_CHECK(false, "native hop: Nc must be 1, 2 or 3, got ", nc);
  }
}

// which compiled-in table (0: H, 1: gamma_5 H gamma_5) `spin` is; -1: none of them
int fixed_which(const torch::Tensor& spin) {
  if (!SPIN_FIXED || spin.scalar_type() != at::kDouble || spin.numel() != 96 ||
      !spin.is_contiguous())
    return -1;
  const double* t = spin.data_ptr<double>();
  for (int d = 0; d < 2; ++d) {
    bool same = true;
    for (int k = 0; k < 8 && same; ++k)
      for (int j = 0; j < 2 && same; ++j)
        for (int e = 0; e < 6 && same; ++e)
          same = t[(k * 2 + j) * 6 + e] == (double)SPIN_TAB[d][k][j][e];
    if (same) return d;
  }
  return -1;
}

// whether spin / spind are the compiled-in tables (else the generic kernel is used)
bool fixed_tables(const torch::Tensor& spin, const torch::Tensor& spind) {
  if (!SPIN_FIXED || spin.scalar_type() != at::kDouble || spind.scalar_type() != at::kDouble ||
      spin.numel() != 96 || spind.numel() != 96 || !spin.is_contiguous() ||
      !spind.is_contiguous())
    return false;
  const double* t[2] = {spin.data_ptr<double>(), spind.data_ptr<double>()};
  for (int d = 0; d < 2; ++d)
    for (int k = 0; k < 8; ++k)
      for (int j = 0; j < 2; ++j)
        for (int e = 0; e < 6; ++e)
          if (t[d][(k * 2 + j) * 6 + e] != (double)SPIN_TAB[d][k][j][e]) return false;
  return true;
}

}  // namespace

// out = s H psi + alpha add with the compiled-in table (dagger: gamma_5 H gamma_5), real s, alpha
static void run_fixed(torch::Tensor& out, const torch::Tensor& psi, const torch::Tensor& links,
                      const torch::Tensor& nbr, bool dagger, double s, const torch::Tensor& add,
                      double alpha) {
  const int64_t nb = psi.size(0), nr = psi.size(1), v = psi.size(2), nc = psi.size(4);
  const bool has_add = add.defined() && add.numel() > 0;
  const int64_t* nx = nbr.data_ptr<int64_t>();
#define QB_FIXED(T)                                                                          \
  {                                                                                          \
    T* o = reinterpret_cast<T*>(out.data_ptr());                                             \
    const T* p = reinterpret_cast<const T*>(psi.data_ptr());                                 \
    const T* l = reinterpret_cast<const T*>(links.data_ptr());                               \
    const T* a = has_add ? reinterpret_cast<const T*>(add.data_ptr()) : nullptr;             \
    if (dagger)                                                                              \
      fixed_dispatch<T, 1>(nc, o, p, l, nx, a, nb, nr, v, (T)s, (T)alpha);                   \
    else                                                                                     \
      fixed_dispatch<T, 0>(nc, o, p, l, nx, a, nb, nr, v, (T)s, (T)alpha);                   \
  }
  if (psi.scalar_type() == at::kComplexDouble) {
    QB_FIXED(double)
  } else {
    TORCH_CHECK(psi.scalar_type() == at::kComplexFloat, "native hop: complex dtype expected");
    QB_FIXED(float)
  }
#undef QB_FIXED
}

// K^dag K x (see schur_normal) into out, with temporaries tmp and y
static void normal_apply(torch::Tensor& out, const torch::Tensor& x, torch::Tensor& tmp,
                         torch::Tensor& y, const torch::Tensor& links0,
                         const torch::Tensor& nbr0, const torch::Tensor& links1,
                         const torch::Tensor& nbr1, const torch::Tensor& spin,
                         const torch::Tensor& spind, double a, double s, bool fixed) {
  torch::Tensor none;
  if (fixed) {
    run_fixed(tmp, x, links0, nbr0, false, 1.0, none, 0.0);
    run_fixed(y, tmp, links1, nbr1, false, a, x, s);
    run_fixed(tmp, y, links0, nbr0, true, 1.0, none, 0.0);
    run_fixed(out, tmp, links1, nbr1, true, a, y, s);
    return;
  }
  run(tmp, x, links0, nbr0, spin, 1.0, 0.0, none, 0.0, 0.0);
  run(y, tmp, links1, nbr1, spin, a, 0.0, x, s, 0.0);
  run(tmp, y, links0, nbr0, spind, 1.0, 0.0, none, 0.0, 0.0);
  run(out, tmp, links1, nbr1, spind, a, 0.0, y, s, 0.0);
}

// psi [B, R, V, 4, Nc] complex contiguous; links [B, V * 8, Nc, Nc] (stacked terms);
// nbr [V * 8] int64 source sites; spin [8, 2, 6] float64; add: psi-shaped or empty.
torch::Tensor hop(torch::Tensor psi, torch::Tensor links, torch::Tensor nbr, torch::Tensor spin,
                  double sre, double sim, torch::Tensor add, double are, double aim) {
  check(psi, links, nbr);
  auto out = torch::empty_like(psi);
  const int d = fixed_which(spin);
  if (d >= 0 && sim == 0.0 && aim == 0.0) {
    if (add.defined() && add.numel() > 0)
      TORCH_CHECK(add.is_contiguous() && add.numel() == psi.numel() &&
                  add.scalar_type() == psi.scalar_type(), "native hop: add tensor");
    run_fixed(out, psi, links, nbr, d == 1, sre, add, are);
  } else {
    run(out, psi, links, nbr, spin, sre, sim, add, are, aim);
  }
  return out;
}

// Wilson K^dag K x with K = s x + a H_oe H_eo x (one-parity fields; spin / spind: the tables
// of H and of gamma_5 H gamma_5): four hops in one call.
torch::Tensor schur_normal(torch::Tensor x, torch::Tensor links0, torch::Tensor nbr0,
                           torch::Tensor links1, torch::Tensor nbr1, torch::Tensor spin,
                           torch::Tensor spind, double a, double s) {
  check(x, links0, nbr0);
  check(x, links1, nbr1);
  TORCH_CHECK(spin.scalar_type() == at::kDouble && spin.numel() == 96 &&
              spind.scalar_type() == at::kDouble && spind.numel() == 96,
              "native hop: spin tables [8, 2, 6] float64 expected");
  auto tmp = torch::empty_like(x);
  auto y = torch::empty_like(x);
  auto out = torch::empty_like(x);
  normal_apply(out, x, tmp, y, links0, nbr0, links1, nbr1, spin, spind, a, s,
               fixed_tables(spin, spind));
  return out;
}

"""
