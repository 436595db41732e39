"""Flow checkpoints: rebuild a trained model from what :class:`~bridge.flows.training.Trainer`
wrote, and the group names the command line accepts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["GROUPS", "load_model", "flow_from_config"]

# the names `qcd-bridge train/chain --group` accept -> bridge.groups names
GROUPS = {"u1": "U1", "su2": "SU2", "su3": "SU3"}


def load_model(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """Rebuild the flow of a ``Trainer`` checkpoint (or run directory): ``(model, meta)``."""
    import torch

    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.exists():
        raise FileNotFoundError(f"model {path}: no such checkpoint")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a config error
        raise ConfigError(f"model {p}: cannot read it as a checkpoint ({exc})") from exc
    meta = state.get("meta", {}) if isinstance(state, dict) else {}
    if meta.get("format") != "qcd-bridge-flow-checkpoint":
        raise ConfigError(f"model {p}: not a qcd-bridge flow checkpoint")
    model = flow_from_config(meta["model"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, meta


def flow_from_config(config: dict[str, Any]) -> Any:
    """The (untrained) model a checkpoint's ``meta["model"]`` describes: a gauge flow of
    :func:`~.models.make_flow`, a joint Nf = 2 model (``arch = "joint"``) or a stochastic
    normalizing flow (``arch = "snf"``, :class:`~.snf.SNFModel`)."""
    import torch

    from .models import make_flow

    mc = dict(config)
    if mc.get("arch") == "snf":
        from .snf import SNFModel

        mc.pop("arch")
        mc.setdefault("layer", "staple")  # checkpoints written before the stout layers
        mc.setdefault("init", "identity")
        return SNFModel(**mc)
    if mc.get("arch") == "joint":
        from .joint import JointFlow
        from .pseudofermion import PseudofermionFlow

        cc = dict(mc["conditional"])
        cdt = getattr(torch, str(cc.pop("dtype", "torch.float64")).split(".")[-1])
        cc["boundary"] = [complex(re, im) for re, im in cc["boundary"]]
        return JointFlow(flow_from_config(mc["marginal"]), PseudofermionFlow(dtype=cdt, **cc))
    dtype = getattr(torch, str(mc.pop("dtype", "torch.float64")).split(".")[-1])
    group, nd = mc.pop("group"), mc.pop("nd")
    return make_flow(group, nd, dtype=dtype, **mc)
