"""C++ source of the native Wilson kernels built on the hop (bridge/fermions/_native.py): the
fused conjugate gradient on ``K^dag K``, the even-odd hop links and the Schur force bilinear.
Plain text, appended to :data:`._native_cpp.HOP_CPP`."""

SOLVE_CPP = r"""namespace {

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
  TORCH_CHECK(spin.scalar_type() == at::kDouble && spin.numel() == 96 &&
              spind.scalar_type() == at::kDouble && spind.numel() == 96,
              "native CG: spin tables [8, 2, 6] float64 expected");
  const bool fixed = fixed_tables(spin, spind);
  auto apply = [&](const torch::Tensor& in, torch::Tensor& out) {
    normal_apply(out, in, tmp, y, links0, nbr0, links1, nbr1, spin, spind, a, s, fixed);
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
