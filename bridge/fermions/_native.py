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

__all__ = ["available", "enabled", "usable", "hop", "schur_normal", "build_seconds", "ENV"]

_NAME = "qcd_bridge_wilson_hop_v2"

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
"""

_state: dict[str, object] = new_state()


def available() -> bool:
    """Whether the native kernel is enabled and built (builds it on the first call)."""
    return ready(_state, _NAME, _CPP, ["hop", "schur_normal"], "Wilson hopping kernel")


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
