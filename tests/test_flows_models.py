"""Flow models: sample/log_prob consistency, exact inverse, gauge invariance of q, Haar prior,
application to larger lattices."""

from __future__ import annotations

import pytest
import torch

from bridge.flows.masks import MaskError
from bridge.flows.models import haar_log_prob, make_flow
from bridge.groups import trace
from bridge.lattice import Lattice
from bridge.testing import (
    assert_flow_density,
    assert_gauge_equivariant,
    assert_invertible,
)


def _model(group, nd, period, seed=0, **kw):
    torch.manual_seed(seed)
    m = make_flow(group, nd, period=period, k=4, hidden=(4,), init_gain=1.0, **kw)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.3)
    return m


@pytest.mark.parametrize("group, nrow, period", [("U1", (8, 8), 4), ("SU2", (4, 4), 4),
                                                 ("SU3", (2, 2), 2), ("SU2", (2, 2, 2, 2), 2)])
def test_sample_log_prob_inverse_equivariance(group, nrow, period):
    model = _model(group, len(nrow), period, n_layers=len(nrow) * period)
    g = torch.Generator().manual_seed(3)
    u, logq = assert_flow_density(model, nrow, 3, generator=g, atol=1e-9)
    assert_invertible(model, u, atol=1e-10)
    assert_gauge_equivariant(model, u, generator=g, atol=1e-10)
    assert float(logq.abs().min()) > 1e-3  # the model is not the prior


def test_model_built_small_applies_to_larger_lattice():
    model = _model("U1", 2, 4)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        u8, lq8 = model.sample(2, (8, 8), generator=g)
        u12, lq12 = model.sample(2, (12, 12), generator=g)
        torch.testing.assert_close(model.log_prob(u12), lq12, atol=1e-9, rtol=0)
        torch.testing.assert_close(model.log_prob(u8), lq8, atol=1e-9, rtol=0)
    assert u12.shape == (2, 2, 12, 12, 1, 1)
    with pytest.raises(MaskError, match="cannot tile"):
        model.sample(1, (10, 12))
    with pytest.raises(ValueError, match="2-dimensional"):
        model.sample(1, (4, 4, 4, 4))


def test_haar_prior_and_fresh_model():
    # prior: log density 0; Haar moments <Tr U> = 0, <|Tr U|^2> = 1 (SU(N), N >= 2)
    model = make_flow("SU2", 2, period=4, k=4, hidden=(4,))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        u, logq = model.sample(200, (4, 4), generator=g)
    assert float(haar_log_prob(u).abs().max()) == 0.0
    # a fresh model (small init gain) is close to the prior
    assert float(logq.abs().max()) < 1.0
    tr = trace(u).flatten()
    assert abs(float(tr.real.mean())) < 0.05
    assert abs(float((tr.abs() ** 2).mean()) - 1.0) < 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_layers"):
        make_flow("U1", 2, n_layers=0)


@pytest.mark.parametrize("group", ["U1", "SU3"])
def test_whole_model_logdet_matches_autograd(group):
    from bridge.gauge import random_gauge
    from bridge.testing import assert_logdet_matches_autograd

    model = _model(group, 2, 2, n_layers=4)
    u = random_gauge(Lattice((2, 2)), group, 1, generator=torch.Generator().manual_seed(6))
    assert_logdet_matches_autograd(model, u, atol=1e-8)


def test_model_moves_with_nn_module_to():
    # a flow is an nn.Module: .to(device/dtype) must move every layer (a layer method that
    # shadowed nn.Module._apply once broke this)
    model = _model("U1", 2, 4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        u, lq = model.sample(2, (8, 8), generator=g)
        assert model.to("cpu") is model
        model.to(torch.float32)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        model.to(torch.float64)  # parameters now rounded to float32: log q moves by ~1e-5
        torch.testing.assert_close(model.log_prob(u), lq, atol=1e-4, rtol=0)
