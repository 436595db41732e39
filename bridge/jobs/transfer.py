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

Fine-tuning (``qcd-bridge train --init-from MODEL``) starts from such a model on another lattice
or coupling: :func:`fine_tune_source` loads and checks it before any work and describes it for
the run's history.  A stochastic normalizing flow (stout layers and heatbath, local too) is
fine-tuned on any lattice with even extents; its protocol, group and layers come from the model
(:func:`snf_source_settings`), so ``--init-from SNF --nrow 8 8 8 8`` is the whole command.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["check_transfer", "transfer_notice", "fine_tune_source", "fine_tune_notice",
           "history_of", "snf_source_settings"]


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


def fine_tune_source(s: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The model of ``s["init_from"]`` (training settings of :mod:`bridge.jobs.train`) and its
    record ``{model, group, nrow, beta, steps, arch, estimator, adam_eps, init_from}`` (the
    last training settings are the fine-tuning's defaults), after the checks: a gauge-only
    flow (not a joint Nf = 2 model, no ``kappa`` in this run) or a stochastic normalizing flow
    (with ``--arch snf``, which :func:`snf_source_settings` sets), the run's group, no
    architecture settings that differ from the model's, and :func:`check_transfer` (an SNF:
    even extents) on the run's lattice.  Raises :class:`ConfigError`."""
    import torch

    from ..flows.checkpoints import GROUPS, load_model
    from ..groups import get_group

    path = str(s["init_from"])
    where = f"--init-from {path}"
    if s.get("kappa") is not None:
        raise ConfigError(f"{where}: fine-tuning takes gauge-only flows; with --kappa (a joint "
                          f"Nf = 2 model) start from a checkpoint with --init instead")
    model, meta = load_model(path)
    arch = meta.get("model", {}).get("arch")
    snf_run = s.get("model", {}).get("arch") == "snf"
    if arch == "joint":
        raise ConfigError(f"{where}: the model is a joint Nf = 2 model; fine-tuning takes "
                          f"gauge-only flows (coupling, residual, plaquette) and stochastic "
                          f"normalizing flows")
    if snf_run != (arch == "snf"):
        raise ConfigError(f"{where}: the model is a gauge flow ({arch or 'coupling'}), not a "
                          f"stochastic normalizing flow; drop --arch snf to fine-tune it"
                          if snf_run else f"{where}: the model is a stochastic normalizing "
                          f"flow; fine-tune it with --arch snf")
    want = get_group(GROUPS[s["group"]]).name
    if model.group.name != want:
        raise ConfigError(f"{where}: the model is for {model.group.name}, this run for {want} "
                          f"(--group {s['group']}); give the model's group")
    for key, value in s.get("model", {}).items():
        if meta["model"].get(key, value) != value and not (
                isinstance(value, list) and list(meta["model"].get(key)) == value):
            raise ConfigError(f"{where}: the architecture comes from the model, whose {key} is "
                              f"{meta['model'].get(key)!r}, not {value!r}; drop that setting")
    if arch == "snf":
        if any(int(n) % 2 for n in s["nrow"]):
            raise ConfigError(f"{where}: the stochastic normalizing flow's heatbath and stout "
                              f"masks need even extents; got {_fmt(s['nrow'])}")
    else:
        check_transfer(model, s["nrow"], where)
    p = Path(path)
    state = torch.load(p / "checkpoint.pt" if p.is_dir() else p, map_location="cpu",
                       weights_only=False)
    train = meta.get("train", {})
    record = {"model": path, "group": model.group.name, "nrow": list(train.get("nrow", [])),
              "beta": train.get("beta"), "steps": int(state.get("step", 0)),
              "arch": meta["model"].get("arch", "coupling"),
              "estimator": train.get("estimator"), "adam_eps": train.get("adam_eps"),
              "init_from": train.get("extra", {}).get("init_from")}
    return model, record


# the settings of an SNF run that make its protocol, and the model config's names of them
_SNF_PROTOCOL = {"beta0": "beta0", "beta": "beta", "blocks": "n_blocks", "update": "update",
                 "n_hb": "n_hb", "n_or": "n_or", "tau": "tau", "md_steps": "md_steps",
                 "n_traj": "n_traj", "defect": "defect", "c0": "c0"}


def snf_source_settings(s: dict[str, Any], given: set[str]) -> None:
    """When ``s["init_from"]`` is a stochastic normalizing flow, make ``s`` its fine-tuning (in
    place, before the SNF defaults): ``--arch snf``, the model's layer type and protocol
    (``beta0``, ``beta``, blocks, updates, defect).  A protocol option given with another value
    than the model's is refused (the layers belong to that protocol).  Any other source (or an
    unreadable one, which :func:`fine_tune_source` reports) leaves ``s`` as it is."""
    import torch

    p = Path(str(s["init_from"]))
    try:
        state = torch.load(p / "checkpoint.pt" if p.is_dir() else p, map_location="cpu",
                           weights_only=False)
        mc = state["meta"]["model"]
    except Exception:  # noqa: BLE001 - reported with the file's name by fine_tune_source
        return
    if not isinstance(mc, dict) or mc.get("arch") != "snf":
        return
    where = f"--init-from {p}"
    if s["model"].get("arch", "snf") != "snf":
        raise ConfigError(f"{where}: the model is a stochastic normalizing flow; drop --arch "
                          f"{s['model']['arch']}")
    if "init_scale" in given:
        raise ConfigError(f"{where}: the layers start from the model's; drop --init-scale")
    s["model"].update(arch="snf", layer=mc.get("layer", "staple"),
                      init=mc.get("init", "identity"))
    if "radius" in mc:
        s["model"]["radius"] = mc["radius"]
    if "group" not in given:
        from ..flows.checkpoints import GROUPS
        from ..groups import get_group

        names = {get_group(v).name: k for k, v in GROUPS.items()}
        s["group"] = names.get(str(mc.get("group")), s["group"])
    if "nrow" not in given and state["meta"].get("train", {}).get("nrow"):
        s["nrow"] = [int(n) for n in state["meta"]["train"]["nrow"]]
    for key, name in _SNF_PROTOCOL.items():
        value = mc.get(name, 0.0 if key == "c0" else None)
        if key in given and s.get(key) is not None and s[key] != value and not (
                isinstance(value, list) and list(s[key]) == value):
            opt = f"--{key.replace('_', '-')}"
            raise ConfigError(f"{where}: the protocol comes from the model, whose {name} is "
                              f"{value!r}, not {s[key]!r}; drop {opt}")
        s[key] = value


def history_of(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The chain of sources of a fine-tuned model, nearest first (each without its own
    ``init_from``)."""
    out = []
    while record:
        out.append({k: v for k, v in record.items() if k != "init_from"})
        record = record.get("init_from")
    return out


def fine_tune_notice(record: dict[str, Any], s: dict[str, Any]) -> str:
    """The line saying what a fine-tuning run starts from."""
    return (f"fine-tuning {record['model']} (trained on {_fmt(record['nrow'])} at beta "
            f"{record['beta']:g} for {record['steps']} steps) on {_fmt(s['nrow'])} at beta "
            f"{float(s['beta']):g}")
