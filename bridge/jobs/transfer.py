"""Using a flow on another lattice than the one it was trained on ("models that travel").

The flows of this project are local: periodic convolutions of plaquette/staple variables with
translation-equivariant masks (:mod:`bridge.flows.masks`, :mod:`bridge.flows.residual`), the
pseudofermion flow of a joint Nf = 2 model likewise, and the constrained plaquette flow
(:class:`bridge.flows.plaquette.PlaquetteFlow`) is a per-plaquette density normalised on the
torus constraint of whatever 2D lattice it is asked for.  So a trained model is a model, with an
exact ``log q``, of every lattice its masks tile.  :func:`check_transfer` decides that with
:func:`bridge.mcmc.flow_mh.check_flow` on a unit probe field of the new lattice (odd extents
for a mask with a period of 2, another dimension, ...) and adds the even extents the even-odd
operator of a joint model needs; a model marked ``transferable = False`` is refused with its
``transfer_reason``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError

__all__ = ["check_transfer", "transfer_notice"]


def _fmt(nrow: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in nrow)


def check_transfer(model: Any, nrow: Sequence[int], where: str) -> None:
    """Refuse (ConfigError prefixed by ``where``) a model that cannot act on the lattice
    ``nrow``; the group must already match (the probe field has the model's group)."""
    import torch

    from ..gauge import unit_gauge
    from ..lattice import Lattice
    from ..mcmc.flow_mh import check_flow

    nrow = [int(n) for n in nrow]
    if getattr(model, "transferable", True) is False:
        raise ConfigError(f"{where}: the model cannot act on another lattice than its training "
                          f"lattice ({getattr(model, 'transfer_reason', 'not a local model')}); "
                          f"use it on its own lattice or train a model for {_fmt(nrow)}")
    nd = getattr(model, "nd", None)
    if nd is not None and int(nd) != len(nrow):
        raise ConfigError(f"{where}: the model is {nd}-dimensional ({model.group.name}), the "
                          f"lattice {_fmt(nrow)} is {len(nrow)}-dimensional")
    probe = unit_gauge(Lattice(nrow), model.group, 1, dtype=torch.complex128)
    try:
        check_flow(model, probe)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if getattr(model, "kappa", None) is not None and any(n % 2 for n in nrow):
        raise ConfigError(f"{where}: the joint Nf = 2 model's pseudofermion flow works on the "
                          f"even-odd preconditioned operator, which needs even extents; got "
                          f"{_fmt(nrow)}")


def transfer_notice(model_path: Any, trained: Sequence[int], nrow: Sequence[int]) -> str:
    """The one line saying that a model is used on another lattice than its training lattice."""
    return (f"note: the model {model_path} was trained on {_fmt(trained)}; using it on "
            f"{_fmt(nrow)} (a local flow: log q stays exact there, the acceptance may differ)")
