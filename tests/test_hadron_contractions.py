"""The fast ``quarkContract13`` of the baryon contractions against its literal definition."""

from __future__ import annotations

import torch

from bridge.observables.hadrons import _BaryonAlgebra


def test_qc13_equals_literal_definition(cpu_generator):
    """``D[i, j][r, q] = sum_k eps^{a c q} eps^{b d r} A[k, i][a, b] B[k, j][c, d]`` on random
    complex spin-colour fields (two batch axes), to 1e-12."""
    alg = _BaryonAlgebra(torch.complex128, torch.device("cpu"))
    shape = (2, 3, 4, 4, 3, 3)
    a = torch.randn(shape, dtype=torch.complex128, generator=cpu_generator)
    b = torch.randn(shape, dtype=torch.complex128, generator=cpu_generator)
    want = torch.einsum("...kiab,...kjcd,acq,bdr->...ijrq", a, b, alg.eps, alg.eps)
    got = alg.qc13(a, b)
    assert got.shape == want.shape
    assert float((got - want).abs().max() / want.abs().max()) < 1e-12
    # a non-contiguous input (a permuted view) gives the same
    at = a.transpose(0, 1).contiguous().transpose(0, 1)
    assert torch.allclose(alg.qc13(at, b), want, rtol=0, atol=1e-12 * float(want.abs().max()))
