"""The native residual staple / stout layer (bridge/_native_stout.py) against the torch path of
:class:`ResidualStapleLayer`: the map and the log-Jacobian equal to rounding for SU(2) and SU(3),
tied and untied coefficients, small and large coefficients (few and many terms of the psi
series), several masks and lattices; the exact inverse undoes it; complex64; the torch path kept
under autograd; a whole SNF protocol gives the same work with and without it.  Skipped, with the
reason, where the extension cannot be built."""

from __future__ import annotations

import pytest
import torch

from bridge import _native_stout
from bridge import gauge as Gg
from bridge.flows.residual import ResidualStapleLayer, StapleMask
from bridge.flows.snf import SNFModel
from bridge.lattice import Lattice
from bridge.mcmc.nonequilibrium import run_protocol


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setenv("QCD_BRIDGE_NATIVE", "1")
    if not _native_stout.available():
        pytest.skip(f"native stout layer not available: {_native_stout._state['error']}")
    calls = []
    layer = _native_stout.layer

    def counted(*args, **kwargs):
        calls.append(1)
        return layer(*args, **kwargs)

    monkeypatch.setattr(_native_stout, "layer", counted)
    return calls


def _hot(nrow, group, batch=3, seed=0):
    return Gg.random_gauge(Lattice(nrow), group, batch,
                           generator=torch.Generator().manual_seed(seed))


def _layer(group, mask, tied, scale):
    lay = ResidualStapleLayer(group, 4, mask, tied=tied)
    if tied:
        lay.set_coefficients(scale * 0.9 / 6)
    else:
        with torch.no_grad():
            lay.raw.copy_(torch.tensor([1.5, -1.0, 0.3, -2.0, 0.7, -0.1]) * scale)
    return lay


def _torch_path(monkeypatch, lay, u):
    with monkeypatch.context() as m:
        m.setattr(_native_stout, "usable", lambda *a: False)
        return lay(u)


@pytest.mark.parametrize("group", ["SU3", "SU2"])
@pytest.mark.parametrize("nrow", [(4, 2, 2, 4), (4, 4, 4, 4)])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("scale", [0.02, 0.95])
def test_matches_torch(native, monkeypatch, group, nrow, tied, scale):
    u = _hot(nrow, group)
    for mask in (StapleMask(0, 0), StapleMask(1, 1), StapleMask(3, 1)):
        lay = _layer(group, mask, tied, scale)
        with torch.no_grad():
            u_ref, ld_ref = _torch_path(monkeypatch, lay, u)
            n0 = len(native)
            u_nat, ld_nat = lay(u)
        assert len(native) == n0 + 1  # the native kernel ran
        assert u_nat.shape == u.shape and ld_nat.shape == (u.shape[0],)
        assert torch.allclose(u_nat, u_ref, rtol=0, atol=1e-12)
        assert torch.allclose(ld_nat, ld_ref, rtol=0, atol=1e-12)
        assert float(ld_ref.abs().max()) > 1e-3  # a non-trivial log-det
        # inactive links untouched, active links moved
        moved = (u_nat - u).abs().amax((-1, -2)) > 0
        assert torch.equal(moved[0], mask.active_links(Lattice(nrow)))


def test_terms_cover_short_and_long_series():
    """The two coefficient scales of test_matches_torch cut the psi series early and late."""
    short = _layer("SU3", StapleMask(0, 0), True, 0.02)._psi_terms()
    long = _layer("SU3", StapleMask(0, 0), True, 0.95)._psi_terms()
    assert short <= 10 and long >= 20


def test_input_not_modified_and_inverse(native):
    u = _hot((4, 4, 2, 2), "SU3", seed=3)
    before = u.clone()
    lay = _layer("SU3", StapleMask(2, 0), False, 0.8)
    with torch.no_grad():
        v, ld = lay(u)
        assert torch.equal(u, before)
        back, ld_rev = lay.reverse(v)
    assert torch.allclose(back, u, rtol=0, atol=1e-12)
    assert torch.allclose(ld_rev, -ld, rtol=0, atol=1e-11)


def test_complex64(native, monkeypatch):
    u = _hot((4, 4, 4, 4), "SU3", seed=5)
    lay = _layer("SU3", StapleMask(1, 0), True, 0.9)
    with torch.no_grad():
        u_ref, ld_ref = _torch_path(monkeypatch, lay, u)
        u32, ld32 = lay(u.to(torch.complex64))
    assert u32.dtype == torch.complex64 and ld32.dtype == torch.float32
    assert torch.allclose(u32.to(u.dtype), u_ref, rtol=0, atol=5e-6)
    assert torch.allclose(ld32.double(), ld_ref, rtol=1e-5, atol=1e-4)


def test_autograd_keeps_torch_path(native):
    u = _hot((4, 2, 2, 4), "SU2", seed=7)
    lay = _layer("SU2", StapleMask(0, 1), False, 0.5)
    _, ld = lay(u)
    assert len(native) == 0 and ld.requires_grad
    with torch.no_grad():
        _, ld_nat = lay(u)
    assert len(native) == 1
    assert torch.allclose(ld.detach(), ld_nat, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer", ["stout", "staple"])
def test_snf_protocol_work(native, monkeypatch, layer):
    """The native heatbath stays as it is in both runs; only the layer kernel is switched.  The
    heatbath amplifies the rounding differences of the layers (1e-16 in, ~1e-10 out: a draw is
    a steep function of the staple), hence the links' looser tolerance."""
    model = SNFModel("SU3", 4, beta0=5.0, beta=5.6, n_blocks=3, update="heatbath", layer=layer,
                     init_scale=3.0)
    u0 = _hot((4, 4, 2, 2), "SU3", batch=2, seed=11)
    with torch.no_grad():
        u_nat, w_nat, info_nat = run_protocol(u0, model.protocol(), seed=4)
        assert len(native) == (24 if layer == "stout" else 3)
        with monkeypatch.context() as m:
            m.setattr(_native_stout, "usable", lambda *a: False)
            u_ref, w_ref, info_ref = run_protocol(u0, model.protocol(), seed=4)
    assert float(info_ref.logdet.abs().max()) > 1e-2
    assert torch.allclose(w_nat, w_ref, rtol=0, atol=1e-10)
    assert torch.allclose(info_nat.logdet, info_ref.logdet, rtol=0, atol=1e-10)
    assert torch.allclose(u_nat, u_ref, rtol=0, atol=1e-8)


def test_switched_off(monkeypatch):
    """QCD_BRIDGE_NATIVE=0: the layer never calls the kernel."""
    monkeypatch.setenv("QCD_BRIDGE_NATIVE", "0")

    def refuse(*args, **kwargs):
        raise AssertionError("the native stout layer ran with QCD_BRIDGE_NATIVE=0")

    monkeypatch.setattr(_native_stout, "layer", refuse)
    u = _hot((4, 2, 2, 4), "SU3")
    assert not _native_stout.usable(u)
    with torch.no_grad():
        v, ld = _layer("SU3", StapleMask(0, 0), True, 0.5)(u)
    assert float(ld.abs().max()) > 1e-3 and float((v - u).abs().max()) > 1e-3
