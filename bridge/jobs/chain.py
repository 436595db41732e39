"""``qcd-bridge chain``: hybrid Markov chains (flow-proposal Metropolis steps interleaved with
HMC trajectories) run in batches, across ranks, with per-step records, observables, fields,
checkpoint/resume bit for bit and a progress bar (issue 7, items 4 and 5).

The kernels are those of :mod:`bridge.mcmc.sampler` (independence Metropolis with flow proposals,
Tierney, Ann. Stat. 22 (1994) 1701, arXiv:2101.08176 sec. 3.4; HMC, Duane et al., Phys. Lett.
B195 (1987) 216), composed in a fixed order (``--schedule "hmc:1,flow:4"``: one HMC trajectory,
then four flow steps, per *cycle*) or mixed with fixed probabilities (``--mixture
"hmc:0.3,flow:0.7"``: one randomly chosen kernel step per cycle).  Each kernel leaves
``exp(-S)/Z`` invariant, so the chain is exact whatever the quality of the flow.

The command is called ``chain``: ``qcd-bridge sample`` draws independent flow samples
(reweighting mode) and ``run`` is the Chroma drop-in workflow (issue 8).

Settings: defaults, then an optional JSON file (keys as the long options with ``_``), then the
options given.  With ``--model`` (a ``qcd-bridge train`` run directory or checkpoint) the group,
lattice and coupling default to the model's; giving other values is an error naming both.

Output (``OUT``; with ``WORLD_SIZE > 1`` under torchrun each rank ``r`` writes
``chain.rank<r>.h5`` and ``checkpoint.rank<r>.pt``)::

    OUT/config.json      the resolved settings
    OUT/chain.h5         attrs format="qcd-bridge-chain", version, group, nrow, beta, n_chains,
                         chain_offset (global index of the first chain), kernels (JSON list),
                         schedule, therm, n_cycles / n_records / n_fields (commit counters)
      /observables/cycle      int64 [n]       cycle number (1, 2, ...) after which it was measured
      /observables/<name>     float64 [n, C]  action, plaquette, topological_charge, polyakov_loop
      /records/step           int64 [m]       elementary step number (ChainState.step)
      /records/cycle          int64 [m]
      /records/kernel         int8 [m]        index into attrs kernels
      /records/accepted       bool [m, C]
      /records/delta          float64 [m, C]  deltaH (HMC) or log w(U') - log w(U) (flow)
      /records/acc_prob       float64 [m, C]
      /records/nonfinite, refreshed  int64 [m];  /records/seconds float64 [m]
      /fields/cycle           int64 [k];  /fields/links float [k, C, mu, lattice..., Nc, Nc, 2]
    OUT/cfg/chain<g>_cfg_<cycle>.lime   ILDG files of 4D SU(3) fields (Chroma's naming)
    OUT/checkpoint.pt    the ChainState (torch.save, atomic rename), the cycle and record counts
    OUT/summary.json     acceptance per kernel, plaquette, topological charge, tau_int (rank 0)

``qcd-bridge validate`` reads ``chain.h5`` directly, one replica per chain, skipping the first
``therm`` cycles (:func:`bridge.analysis.validate.load_series`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..flows.checkpoints import GROUPS as _GROUPS

__all__ = [
    "CHAIN_FORMAT", "CHAIN_VERSION", "KERNELS", "add_chain_parser", "chain_settings",
    "parse_schedule", "build_kernel", "model_fingerprint", "measure", "ChainFile", "Progress",
    "read_chain", "run_chains", "summarize",
]

CHAIN_FORMAT = "qcd-bridge-chain"
CHAIN_VERSION = 1
CHECKPOINT_FORMAT = "qcd-bridge-chain-checkpoint"
KERNELS = ("hmc", "flow")
_DEFAULTS: dict[str, Any] = {
    "model": None, "group": "u1", "nrow": [8, 8], "beta": 2.0, "schedule": None,
    "mixture": None, "tau": 1.0, "md_steps": 10, "integrator": "LCM_STS_LEAPFROG",
    "flow_batch": 16, "chains": 4, "steps": 100, "therm": 0, "start": "hot", "seed": 0,
    "out": "chain-run", "checkpoint_every": 50, "save_every": 0, "polyakov": False,
    "device": "cpu", "precision": 64,
}
# settings that may change on --resume (everything else defines the chain)
_MUTABLE = {"steps", "checkpoint_every", "save_every", "device", "out", "therm"}


def _config_error(msg: str) -> Exception:
    from ..errors import ConfigError

    return ConfigError(msg)


# -- settings ---------------------------------------------------------------------------------
def parse_schedule(text: str, *, what: str = "--schedule",
                   counts: bool = True) -> list[tuple[str, float]]:
    """``"hmc:1,flow:4"`` -> ``[("hmc", 1), ("flow", 4)]``.  ``counts``: entries are
    non-negative integers with a positive sum (a composition); otherwise non-negative
    probabilities with a positive sum (a mixture)."""
    out: list[tuple[str, float]] = []
    kind = "COUNT" if counts else "PROBABILITY"
    for part in str(text).split(","):
        name, sep, num = part.strip().partition(":")
        name = name.strip().lower()
        try:
            val = float(num) if sep else math.nan
        except ValueError:
            val = math.nan
        ok = name in KERNELS and math.isfinite(val) and val >= 0
        if counts and ok:
            ok = val == int(val)
        if not ok:
            raise _config_error(
                f"{what} {text!r}: expected comma-separated KERNEL:{kind} entries with KERNEL "
                f"one of {', '.join(KERNELS)} and a non-negative "
                f"{'integer' if counts else 'number'}, got {part.strip()!r}")
        out.append((name, int(val) if counts else val))
    if sum(v for _, v in out) <= 0:
        raise _config_error(f"{what} {text!r}: the {kind.lower()}s must have a positive sum")
    return out


def _read_json(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise _config_error(f"config {path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _config_error(f"config {path}: expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - set(_DEFAULTS)
    if unknown:
        raise _config_error(f"config {path}: unknown keys {sorted(unknown)}; expected some of "
                            f"{sorted(_DEFAULTS)}")
    return data


def chain_settings(args: argparse.Namespace | None = None, *,
                   saved: dict[str, Any] | None = None,
                   **overrides: Any) -> tuple[dict[str, Any], set[str]]:
    """Resolve the settings: defaults (or ``saved``, the settings of the run being resumed),
    then the JSON file ``args.config``, then the options given, then ``overrides``.  Returns
    ``(settings, explicit)`` with ``explicit`` the keys set by the file, options or overrides
    (the model's group/lattice/coupling fill in the others)."""
    s = json.loads(json.dumps(saved if saved is not None else _DEFAULTS))
    explicit: set[str] = set()
    cfg = getattr(args, "config", None) if args is not None else None
    if cfg:
        data = _read_json(cfg)
        s.update(data)
        explicit |= set(data)
    for key in _DEFAULTS:
        v = getattr(args, key, None) if args is not None else None
        if v is not None and v is not False:
            s[key] = v
            explicit.add(key)
    for key, v in overrides.items():
        if key not in _DEFAULTS:
            raise _config_error(f"settings: unknown key {key!r}; expected some of "
                                f"{sorted(_DEFAULTS)}")
        if v is not None:
            s[key] = v
            explicit.add(key)
    _check_settings(s)
    return s, explicit


def _check_settings(s: dict[str, Any]) -> None:
    group = str(s["group"]).lower().replace("(", "").replace(")", "")
    if group not in _GROUPS:
        raise _config_error(f"group: expected one of {sorted(_GROUPS)}, got {s['group']!r}")
    s["group"] = group
    try:
        s["nrow"] = [int(n) for n in s["nrow"]]
    except (TypeError, ValueError):
        raise _config_error(f"nrow: expected 2 or 4 integer extents, got {s['nrow']!r}") from None
    if len(s["nrow"]) not in (2, 4) or min(s["nrow"]) < 1:
        raise _config_error(f"nrow: expected 2 or 4 positive extents, got {s['nrow']}")
    for key, low in (("chains", 1), ("steps", 0), ("md_steps", 1), ("flow_batch", 1),
                     ("checkpoint_every", 0), ("save_every", 0), ("therm", 0)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise _config_error(f"{key.replace('_', '-')}: expected an integer >= {low}, "
                                f"got {v!r}")
    for key in ("beta", "tau"):
        v = float(s[key])
        if not math.isfinite(v) or (key == "tau" and v <= 0):
            raise _config_error(f"{key}: expected a finite{' positive' if key == 'tau' else ''} "
                                f"number, got {s[key]!r}")
        s[key] = v
    if int(s["precision"]) not in (32, 64):
        raise _config_error(f"precision: expected 32 or 64 bits, got {s['precision']!r}")
    s["precision"] = int(s["precision"])
    if s["schedule"] is not None and s["mixture"] is not None:
        raise _config_error(f"--schedule {s['schedule']!r} and --mixture {s['mixture']!r}: "
                            f"give one of them (a fixed order or random choice)")
    from ..mcmc.integrators import SCHEMES

    if s["integrator"] not in SCHEMES:
        raise _config_error(f"integrator: expected one of Chroma's names {sorted(SCHEMES)}, "
                            f"got {s['integrator']!r}")


def _plan_text(s: dict[str, Any]) -> str:
    """The schedule or mixture as given, or the default (``hmc:1,flow:4`` with a model,
    ``hmc:1`` without)."""
    if s["mixture"] is not None:
        return str(s["mixture"])
    return str(s["schedule"] or ("hmc:1,flow:4" if s["model"] else "hmc:1"))


def _kernel_plan(s: dict[str, Any]) -> tuple[list[tuple[str, float]], bool]:
    """The parsed schedule or mixture (:func:`_plan_text`) and whether it is a mixture."""
    if s["mixture"] is not None:
        return parse_schedule(s["mixture"], what="--mixture", counts=False), True
    return parse_schedule(_plan_text(s), what="--schedule"), False


ANALYTIC = "analytic"
"""``--model analytic``: the exact 2D U(1) plaquette-variable proposal (no training)."""


def model_fingerprint(model: Any) -> str:
    """SHA-256 of the model's parameters and buffers (names, dtypes, shapes, values): a chain
    resumes only with the flow it started with, since its state caches ``log q`` of that flow
    (and proposals drawn from it)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    if not hasattr(model, "state_dict"):  # an analytic proposal: its configuration is all of it
        h.update(json.dumps(getattr(model, "config", repr(model)), sort_keys=True).encode())
        return h.hexdigest()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- kernels and observables ------------------------------------------------------------------
def _group_key(model: Any) -> str:
    nc = int(model.group.nc)
    return "u1" if nc == 1 else f"su{nc}"


def resolve_model(s: dict[str, Any], explicit: set[str]) -> Any:
    """Load ``s["model"]`` (or return None) and reconcile the group, lattice and coupling with
    it: values not given explicitly are taken from the model; a mismatch is a
    :class:`~bridge.errors.ConfigError` naming both."""
    plan, _ = _kernel_plan(s)
    uses_flow = any(n == "flow" and v > 0 for n, v in plan)
    if not s["model"]:
        if uses_flow:
            raise _config_error(
                f"the flow kernel needs --model (a `qcd-bridge train` run directory or "
                f"checkpoint); without one only hmc is allowed (got "
                f"{s['mixture'] or s['schedule']!r})")
        return None
    if s["model"] == ANALYTIC:
        return _analytic_proposal(s, explicit)
    from ..flows.checkpoints import load_model

    model, meta = load_model(s["model"])
    train = meta.get("train", {})
    mine = {"group": _group_key(model), "nrow": [int(n) for n in train.get("nrow", [])],
            "beta": float(train.get("beta", math.nan))}
    for key in ("group", "nrow", "beta"):
        if key not in explicit:
            s[key] = mine[key]
    if s["group"] != mine["group"] or len(s["nrow"]) != model.nd:
        from ..lattice import Lattice
        from ..mcmc.sampler import check_flow

        u = _probe_field(s)
        try:
            check_flow(model, u)
        except Exception as exc:  # noqa: BLE001 - re-raised with the model's path
            raise _config_error(f"--model {s['model']}: {exc}") from exc
        raise _config_error(f"--model {s['model']}: the model is for {model.group.name} in "
                            f"{model.nd}D, the chain for {_GROUPS[s['group']]} on "
                            f"{Lattice(s['nrow'])}")
    if s["nrow"] != mine["nrow"]:
        raise _config_error(
            f"--nrow {' '.join(map(str, s['nrow']))}: the model {s['model']} was trained on the "
            f"lattice {' '.join(map(str, mine['nrow']))}; run the chain on the model's lattice "
            f"(drop --nrow) or train a model for this one")
    if not math.isclose(s["beta"], mine["beta"], rel_tol=0, abs_tol=1e-12):
        raise _config_error(
            f"--beta {s['beta']:g}: the model {s['model']} was trained for beta = "
            f"{mine['beta']:g}; the flow kernel would stay exact but propose from the wrong "
            f"action; drop --beta or train a model for this coupling")
    return model


def _analytic_proposal(s: dict[str, Any], explicit: set[str]) -> Any:
    """``--model analytic``: the exact plaquette-variable proposal of 2D U(1)
    (:class:`bridge.flows.analytic.U1PlaquetteProposal`, nothing trained) at the chain's beta."""
    if s["group"] != "u1" or len(s["nrow"]) != 2:
        raise _config_error(f"--model {ANALYTIC}: the analytic plaquette proposal exists only "
                            f"for 2D U(1) (--group u1, two extents), the chain is --group "
                            f"{s['group']} on {' x '.join(map(str, s['nrow']))}")
    from ..flows.analytic import U1PlaquetteProposal

    return U1PlaquetteProposal(float(s["beta"]))


def _probe_field(s: dict[str, Any]) -> Any:
    import torch

    from ..gauge import unit_gauge
    from ..lattice import Lattice

    return unit_gauge(Lattice(s["nrow"]), _GROUPS[s["group"]], 1, dtype=torch.complex128)


def build_kernel(s: dict[str, Any], model: Any) -> tuple[Any, list[str]]:
    """The chain's kernel (:func:`bridge.mcmc.sampler.compose` or :func:`~bridge.mcmc.sampler.mixture` of
    the named kernels) and the list of kernel names used (the record labels)."""
    from ..gauge import wilson_action
    from ..mcmc.integrators import Integrator, Level, scheme
    from ..mcmc.monomials import GaugeMonomial
    from ..mcmc.sampler import compose, flow_metropolis_kernel, hmc, mixture

    plan, is_mix = _kernel_plan(s)
    plan = [(n, v) for n, v in plan if v > 0]  # a kernel with count/probability 0 never runs
    beta = float(s["beta"])
    names = [n for n in KERNELS if any(m == n for m, _ in plan)]
    kernels: dict[str, Any] = {}
    if "hmc" in names:
        integ = Integrator([Level(scheme(s["integrator"]), int(s["md_steps"]),
                                  [GaugeMonomial(beta)])])
        kernels["hmc"] = hmc(integ, float(s["tau"]), name="hmc")
    if "flow" in names:
        if model is None:
            raise _config_error("the flow kernel needs --model")

        def action(u: Any) -> Any:
            return wilson_action(u, beta)

        kernels["flow"] = flow_metropolis_kernel(model, action, batch_size=int(s["flow_batch"]),
                                                 name="flow")
    if is_mix:
        return mixture([(kernels[n], p) for n, p in plan]), names
    return compose([(kernels[n], int(c)) for n, c in plan]), names


def observable_names(s: dict[str, Any]) -> list[str]:
    """Names of the per-cycle observables of a chain with these settings."""
    names = ["action", "plaquette"]
    nd, group = len(s["nrow"]), s["group"]
    if nd == 4 or (nd == 2 and group == "u1"):
        names.append("topological_charge")
    if s.get("polyakov"):
        names.append("polyakov_loop")
    return names


def measure(u: Any, action: Any, names: Sequence[str]) -> dict[str, Any]:
    """Observables per chain (numpy ``[C]``): the action (cached by the chain), the plaquette
    (Chroma's ``w_plaq``), the topological charge (geometric for 2D U(1), rounded to the integer
    it is up to floating-point noise; clover without smoothing in 4D:
    :func:`bridge.observables.field_strength.topological_charge`) and the real part of the
    Polyakov loop in the time direction (Chroma's normalisation)."""
    import torch

    from ..gauge import mesplq, polyakov_loop
    from ..lattice import Lattice
    from ..observables.field_strength import topological_charge

    out: dict[str, Any] = {}
    with torch.no_grad():
        for name in names:
            if name == "action":
                v = action
            elif name == "plaquette":
                v = mesplq(u).w_plaq
            elif name == "topological_charge":
                v = topological_charge(u)
                if Lattice.of(u).nd == 2:  # geometric charge: an integer up to rounding
                    v = torch.round(v)
            else:
                v = polyakov_loop(u).real
            out[name] = v.detach().to(torch.float64).cpu().numpy()
    return out


# -- the chain file ---------------------------------------------------------------------------
class ChainFile:
    """``chain.h5`` (layout in the module docstring): resizable datasets appended cycle by cycle;
    the commit counters (``n_cycles``, ``n_records``, ``n_fields``) are written by
    :meth:`flush`, at every checkpoint; :meth:`truncate` cuts the datasets back to a
    checkpoint's counts on resume."""

    def __init__(self, path: str | os.PathLike[str], mode: str, *, attrs: dict[str, Any],
                 n_chains: int, observables: Sequence[str]) -> None:
        import h5py

        self.path = os.fspath(path)
        self.n_chains = int(n_chains)
        try:
            self.h5 = h5py.File(self.path, mode)
        except OSError as exc:
            raise _config_error(f"file {self.path}: cannot open it as HDF5 ({exc})") from exc
        if mode == "w":
            a = self.h5.attrs
            a["format"] = CHAIN_FORMAT
            a["version"] = CHAIN_VERSION
            for k, v in attrs.items():
                a[k] = json.dumps(v) if isinstance(v, (dict, list)) and k != "nrow" else v
            for k in ("n_cycles", "n_records", "n_fields"):
                a[k] = 0
            c = self.n_chains
            self._make("observables/cycle", (), "int64")
            for name in observables:
                self._make(f"observables/{name}", (c,), "float64")
            for name, shape, dt in (("step", (), "int64"), ("cycle", (), "int64"),
                                    ("kernel", (), "int8"), ("accepted", (c,), "bool"),
                                    ("delta", (c,), "float64"), ("acc_prob", (c,), "float64"),
                                    ("nonfinite", (), "int64"), ("refreshed", (), "int64"),
                                    ("seconds", (), "float64")):
                self._make(f"records/{name}", shape, dt)
            self._make("fields/cycle", (), "int64")
            self.h5.flush()
        elif self.h5.attrs.get("format") != CHAIN_FORMAT:
            self.h5.close()
            raise _config_error(f"file {self.path}: not a qcd-bridge chain file (attribute "
                                f"format is not {CHAIN_FORMAT!r})")
        self.kernels = json.loads(self.h5.attrs["kernels"])
        self.observables = [k for k in self.h5["observables"] if k != "cycle"]

    def _make(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        rows = max(1, 4096 // max(1, int(math.prod(shape)) if shape else 1))
        self.h5.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                               chunks=(rows, *shape))

    @staticmethod
    def _append(ds: Any, rows: Any) -> None:
        n = ds.shape[0]
        ds.resize(n + len(rows), axis=0)
        ds[n:] = rows

    def counts(self) -> tuple[int, int, int]:
        """Rows written so far: ``(cycles, records, fields)``."""
        return (self.h5["observables/cycle"].shape[0], self.h5["records/step"].shape[0],
                self.h5["fields/cycle"].shape[0])

    def append_cycle(self, cycle: int, obs: dict[str, Any], infos: Sequence[Any]) -> None:
        """One cycle's observables and the records of its elementary steps."""
        import numpy as np

        self._append(self.h5["observables/cycle"], np.array([cycle], dtype=np.int64))
        for name in self.observables:
            self._append(self.h5[f"observables/{name}"], np.asarray(obs[name])[None, :])
        if not infos:
            return
        g = self.h5["records"]
        cols: dict[str, Any] = {
            "step": [i.step for i in infos], "cycle": [cycle] * len(infos),
            "kernel": [self.kernels.index(i.kernel) for i in infos],
            "accepted": [i.accepted.detach().cpu().numpy() for i in infos],
            "delta": [i.delta.detach().to("cpu").double().numpy() for i in infos],
            "acc_prob": [i.acc_prob.detach().to("cpu").double().numpy() for i in infos],
            "nonfinite": [i.nonfinite for i in infos],
            "refreshed": [i.refreshed for i in infos],
            "seconds": [i.seconds for i in infos]}
        for name, rows in cols.items():
            self._append(g[name], np.asarray(rows, dtype=g[name].dtype))

    def append_fields(self, cycle: int, u: Any, precision: int) -> None:
        """The fields of all chains after ``cycle`` (links as (re, im) pairs)."""
        import numpy as np
        import torch

        arr = torch.view_as_real(u.detach().cpu()).numpy()
        arr = arr.astype(np.float32 if precision == 32 else np.float64)
        if "fields/links" not in self.h5:
            self.h5.create_dataset("fields/links", shape=(0, *arr.shape),
                                   maxshape=(None, *arr.shape), dtype=arr.dtype,
                                   chunks=(1, 1, *arr.shape[1:]))
        self._append(self.h5["fields/links"], arr[None])
        self._append(self.h5["fields/cycle"], np.array([cycle], dtype=np.int64))

    def truncate(self, n_cycles: int, n_records: int, n_fields: int) -> None:
        """Drop everything written after a checkpoint with these counts."""
        for grp, n in (("observables", n_cycles), ("records", n_records), ("fields", n_fields)):
            for ds in self.h5[grp].values():
                if ds.shape[0] < n:
                    raise _config_error(
                        f"file {self.path}: dataset {ds.name} has {ds.shape[0]} rows, the "
                        f"checkpoint expects at least {n}; the chain file does not belong to "
                        f"this checkpoint")
                ds.resize(n, axis=0)
        self.flush()

    def flush(self) -> None:
        """Write the commit counters and flush the file."""
        c, r, f = self.counts()
        a = self.h5.attrs
        a["n_cycles"], a["n_records"], a["n_fields"] = c, r, f
        self.h5.flush()

    def column(self, name: str) -> Any:
        """``observables/<name>`` or ``records/<name>`` as written so far."""
        return self.h5[name][:]

    def close(self) -> None:
        if self.h5.id.valid:
            self.h5.close()


def read_chain(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The committed content of a chain file: ``attrs``, ``observables`` (name -> ``[n, C]``,
    plus ``cycle``), ``records`` (name -> array, ``kernel`` as names) and ``fields``."""
    import h5py

    with h5py.File(os.fspath(path), "r") as h5:
        if h5.attrs.get("format") != CHAIN_FORMAT:
            raise _config_error(f"file {path}: not a qcd-bridge chain file")
        attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in h5.attrs.items()}
        nc, nr, nf = int(attrs["n_cycles"]), int(attrs["n_records"]), int(attrs["n_fields"])
        kernels = json.loads(attrs["kernels"])
        obs = {k: ds[:nc] for k, ds in h5["observables"].items()}
        rec = {k: ds[:nr] for k, ds in h5["records"].items()}
        rec["kernel"] = [kernels[int(i)] for i in rec["kernel"]]
        fields = {k: ds[:nf] for k, ds in h5["fields"].items()}
    return {"attrs": attrs, "observables": obs, "records": rec, "fields": fields}


# -- progress ---------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on ``stream`` redrawn with a carriage return: cycle i/N,
    acceptance per kernel so far, the current mean topological charge and plaquette, seconds per
    cycle and the ETA.  Drawn only when ``enabled`` (default: ``stream`` is a terminal), at most
    every ``every`` seconds and at the last cycle."""

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool | None = None,
                 every: float = 0.2) -> None:
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled, self.total, self.every = enabled, int(total), float(every)
        self._last = -math.inf
        self._width = 0

    @staticmethod
    def _clock(seconds: float) -> str:
        if not math.isfinite(seconds):
            return "?"
        s = int(round(seconds))
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else \
            f"{s // 60}:{s % 60:02d}"

    def line(self, cycle: int, acceptance: dict[str, float], q: float | None, plaq: float,
             sec_per_cycle: float) -> str:
        """The text of the bar (no carriage return)."""
        acc = " ".join(f"{k} {v:.2f}" for k, v in acceptance.items())
        qs = "" if q is None else f"  <Q> {q:+.2f}"
        eta = self._clock((self.total - cycle) * sec_per_cycle)
        return (f"cycle {cycle}/{self.total}  acc {acc}{qs}  plaq {plaq:.5f}  "
                f"{sec_per_cycle:.3g} s/cycle  ETA {eta}")

    def update(self, cycle: int, acceptance: dict[str, float], q: float | None, plaq: float,
               sec_per_cycle: float) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.every and cycle < self.total:
            return
        self._last = now
        text = self.line(cycle, acceptance, q, plaq, sec_per_cycle)
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()


# -- summary ----------------------------------------------------------------------------------
def summarize(obs: dict[str, Any], acceptance: dict[str, list[float]], s: dict[str, Any],
              ) -> dict[str, Any]:
    """Statistics of all chains after the first ``therm`` cycles: acceptance per kernel,
    plaquette mean with the naive error (no autocorrelations) and the Gamma-method error
    (pyerrors, chains as replicas; Wolff, hep-lat/0306017), the topological charge's mean,
    ``<Q^2>/V`` and ``tau_int`` (when there are enough cycles), and the exact 2D U(1) values
    (character expansion, :mod:`bridge.exact`)."""
    import numpy as np

    from ..analysis.stats import MIN_CONFIGS, gamma

    therm = int(s["therm"])
    cyc = np.asarray(obs["cycle"])
    keep = cyc > therm
    out: dict[str, Any] = {
        "chains": int(np.asarray(obs["plaquette"]).shape[1]) if len(cyc) else 0,
        "cycles": int(cyc.size), "therm": therm, "measured_cycles": int(keep.sum()),
        "acceptance": {k: (a / n if n else None) for k, (a, n) in acceptance.items()},
    }
    vol = math.prod(s["nrow"])
    geometric = len(s["nrow"]) == 2 and s["group"] == "u1"
    for name in [k for k in obs if k != "cycle"]:
        x = np.asarray(obs[name])[keep]
        st: dict[str, Any] = {"mean": None, "naive_error": None, "error": None,
                              "tau_int": None, "tau_int_error": None}
        if x.size:
            st["mean"] = float(x.mean())
            st["naive_error"] = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else None
        if x.shape[0] >= MIN_CONFIGS and float(x.std()) > 0:
            try:
                g = gamma([x[:, c] for c in range(x.shape[1])],
                          [cyc[keep] for _ in range(x.shape[1])],
                          replicas=[f"c{c}" for c in range(x.shape[1])], what=name)
                st.update(error=g.error, tau_int=g.tau_int, tau_int_error=g.tau_int_error)
            except Exception:  # noqa: BLE001 - statistics are optional in a summary
                pass
        if name == "topological_charge":
            st["definition"] = "geometric" if geometric else "clover, no smoothing"
        if name == "topological_charge" and x.size:
            q = np.round(x) if geometric else x
            st["chi_t"] = float(np.mean(q**2) / vol)
            st["chi_t_naive_error"] = (float(np.std(q**2, ddof=1) / math.sqrt(q.size) / vol)
                                       if q.size > 1 else None)
            st["chi_t_error"] = None  # Gamma method on Q^2, chains as replicas
            if q.shape[0] >= MIN_CONFIGS and float((q**2).std()) > 0:
                try:
                    g = gamma([q[:, c] ** 2 / vol for c in range(q.shape[1])],
                              [cyc[keep] for _ in range(q.shape[1])],
                              replicas=[f"c{c}" for c in range(q.shape[1])], what="Q^2/V")
                    st["chi_t_error"] = g.error
                except Exception:  # noqa: BLE001 - statistics are optional in a summary
                    pass
        out[name] = st
    if geometric:
        from ..exact import u1_2d_plaquette, u1_2d_topological_susceptibility

        nrow = (s["nrow"][0], s["nrow"][1])
        out["exact"] = {"plaquette": u1_2d_plaquette(s["beta"], nrow),
                        "chi_t": u1_2d_topological_susceptibility(s["beta"], nrow)}
    return out


def _pm(value: float | None, error: float | None) -> str:
    if value is None:
        return "n/a"
    if error is None or not math.isfinite(error) or error <= 0:
        return f"{value:.6g}"
    digits = max(0, 1 - int(math.floor(math.log10(error))))
    return f"{value:.{digits}f} +- {error:.{digits}f}"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The human-readable summary printed at the end of a run."""
    acc = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                    for k, v in summary["acceptance"].items())
    lines = [f"{summary['chains']} chains x {summary['cycles']} cycles "
             f"({summary['measured_cycles']} measured after {summary['therm']} thermalisation); "
             f"acceptance: {acc}"]
    p = summary.get("plaquette", {})
    if p.get("mean") is not None:
        text = f"plaquette {_pm(p['mean'], p['naive_error'])} (naive)"
        if p.get("error") is not None:
            text += f", {_pm(p['mean'], p['error'])} (Gamma method, tau_int {p['tau_int']:.2f})"
        if "exact" in summary:
            text += f"; exact {summary['exact']['plaquette']:.6f}"
        lines.append(text)
    q = summary.get("topological_charge")
    if q and q.get("mean") is not None:
        tau = "n/a (too few cycles or frozen)" if q.get("tau_int") is None else \
            f"{q['tau_int']:.2f} +- {q['tau_int_error']:.2f} cycles"
        what = "" if q.get("definition", "geometric") == "geometric" else \
            f" ({q['definition']})"
        gamma_err = q.get("chi_t_error")
        err, how = ((gamma_err, "Gamma method") if gamma_err is not None else
                    (q["chi_t_naive_error"], "naive"))
        if "exact" in summary:
            how += f"; exact {summary['exact']['chi_t']:.6f}"
        lines.append(f"topological charge{what} <Q> {q['mean']:+.3f}, <Q^2>/V "
                     f"{_pm(q['chi_t'], err)} ({how}), tau_int(Q) {tau}")
    return lines


# -- the run ----------------------------------------------------------------------------------
def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _start_field(s: dict[str, Any], seed: int, dtype: Any, device: Any) -> Any:
    from ..gauge import random_gauge, unit_gauge
    from ..lattice import Lattice
    from ..rng import generator, rng_key

    lat, group, c = Lattice(s["nrow"]), _GROUPS[s["group"]], int(s["chains"])
    start = str(s["start"])
    if start == "hot":
        return random_gauge(lat, group, c, generator=generator(rng_key(seed, 0x5747), device),
                            dtype=dtype, device=device)
    if start == "cold":
        return unit_gauge(lat, group, c, dtype=dtype, device=device)
    if not os.path.exists(start):
        raise FileNotFoundError(f"--start {start}: expected hot, cold or an existing gauge "
                                f"file")
    from ..io import read_gauge

    u, _ = read_gauge(start, dtype=dtype, device=device)
    got = Lattice.of(u)
    nc = int(u.shape[-1])
    want_nc = {"u1": 1, "su2": 2, "su3": 3}[s["group"]]
    if list(got.nrow) != s["nrow"] or nc != want_nc:
        raise _config_error(f"--start {start}: the file holds a {nc}x{nc} field on {got}, the "
                            f"chain needs {_GROUPS[s['group']]} on {Lattice(s['nrow'])}")
    if u.shape[0] == 1:
        return u.expand(c, *u.shape[1:]).clone()
    if u.shape[0] != c:
        raise _config_error(f"--start {start}: {u.shape[0]} configurations, expected 1 or "
                            f"--chains {c}")
    return u


def _paths(out: Path, rank: int, world: int) -> tuple[Path, Path]:
    suffix = "" if world == 1 else f".rank{rank}"
    return out / f"chain{suffix}.h5", out / f"checkpoint{suffix}.pt"


def run_chains(
    s: dict[str, Any],
    *,
    model: Any = None,
    resume: bool = False,
    progress: bool | None = None,
    stream: TextIO | None = None,
    rank: int | None = None,
    world: int | None = None,
    callback: Callable[[int, Any], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) the chains of settings ``s`` (from :func:`chain_settings`; ``model``
    from :func:`resolve_model`) and return the summary (every rank gets the global one).

    ``rank``/``world`` default to the torch.distributed environment
    (:func:`bridge.flows.training.init_distributed`); rank ``r`` runs ``chains`` chains with the seed
    stream ``rng_key(seed, r)`` and the global chain indices ``r * chains ...``.  ``callback
    (cycle, state)`` is called after every cycle (tests use it to interrupt a run)."""
    import numpy as np
    import torch

    from ..mcmc.sampler import flat_infos
    from ..rng import rng_key

    if rank is None or world is None:
        from ..flows.training import init_distributed

        rank, world = init_distributed("gloo" if str(s["device"]) == "cpu" else None)
    out = Path(s["out"])
    h5path, ck = _paths(out, rank, world)
    out.mkdir(parents=True, exist_ok=True)
    if resume and not ck.exists():
        raise _config_error(f"--resume: no checkpoint {ck} to resume from")
    if not resume and (ck.exists() or h5path.exists()):
        raise _config_error(f"out: {ck if ck.exists() else h5path} exists; pass --resume to "
                            f"continue it or choose another --out")
    from ..flows.training import rank_device

    device = rank_device(s["device"], world)
    dtype = torch.complex128 if s["precision"] == 64 else torch.complex64
    if model is not None and hasattr(model, "to"):
        model.to(device)
    kernel, knames = build_kernel(s, model)
    fingerprint = model_fingerprint(model) if model is not None else None
    names = observable_names(s)
    c = int(s["chains"])
    seed = rng_key(int(s["seed"]), rank)
    attrs = {"group": _GROUPS[s["group"]], "nrow": list(s["nrow"]), "beta": float(s["beta"]),
             "n_chains": c, "chain_offset": rank * c, "rank": rank, "world_size": world,
             "kernels": knames, "schedule": _plan_text(s),
             "mixture": s["mixture"] is not None, "therm": int(s["therm"]),
             "seed": int(s["seed"]), "model": str(s["model"] or "")}
    if resume:
        try:
            cp = torch.load(ck, map_location=device, weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a config error
            raise _config_error(f"checkpoint {ck}: cannot read it ({exc})") from exc
        if not isinstance(cp, dict) or cp.get("format") != CHECKPOINT_FORMAT:
            raise _config_error(f"checkpoint {ck}: not a qcd-bridge chain checkpoint")
        for key, v in cp["settings"].items():
            if key not in _MUTABLE and s.get(key) != v:
                raise _config_error(f"--resume: {key} is {s.get(key)!r}, but the run in {ck} "
                                    f"has {v!r}; only {sorted(_MUTABLE)} may change")
        if "model_sha256" in cp and cp["model_sha256"] != fingerprint:
            raise _config_error(
                f"--resume: the flow in {s['model']} is not the one checkpoint {ck} was run "
                f"with (its parameters changed, e.g. by further training); the chain's state "
                f"holds log q and proposals of the old flow, so it can only continue with that "
                f"one: restore it or start a new chain")
        if (cp["rank"], cp["world_size"]) != (rank, world):
            raise _config_error(f"--resume: checkpoint {ck} is rank {cp['rank']} of "
                                f"{cp['world_size']}, this process is rank {rank} of {world}")
        state, cycle = cp["state"], int(cp["cycle"])
        if not h5path.exists():
            raise _config_error(f"--resume: the chain file {h5path} of checkpoint {ck} is "
                                f"missing")
        f = ChainFile(h5path, "a", attrs=attrs, n_chains=c, observables=names)
        f.truncate(int(cp["n_cycles"]), int(cp["n_records"]), int(cp["n_fields"]))
        f.h5.attrs["therm"] = int(s["therm"])
        elapsed0 = float(cp.get("seconds", 0.0))
    else:
        u0 = _start_field(s, seed, dtype, device)
        state = kernel.init(u0, seed=seed)
        cycle, elapsed0 = 0, 0.0
        f = ChainFile(h5path, "w", attrs=attrs, n_chains=c, observables=names)
    if rank == 0:  # read back by --resume (with the new --steps after a resume)
        (out / "config.json").write_text(json.dumps(s, indent=2) + "\n")
    steps = int(s["steps"])
    save_every, ck_every = int(s["save_every"]), int(s["checkpoint_every"])
    ildg = len(s["nrow"]) == 4 and s["group"] == "su3"
    show = Progress(steps, stream=stream, enabled=(False if rank != 0 else progress))

    def checkpoint(cyc: int, seconds: float) -> None:
        f.flush()
        nc_, nr_, nf_ = f.counts()
        _atomic_save({"format": CHECKPOINT_FORMAT, "version": 1, "state": state, "cycle": cyc,
                      "n_cycles": nc_, "n_records": nr_, "n_fields": nf_, "settings": s,
                      "rank": rank, "world_size": world, "seconds": seconds,
                      "model_sha256": fingerprint}, ck)

    t0 = time.perf_counter()
    try:
        if not resume:
            checkpoint(0, 0.0)
        # acceptance so far (whole run, also before a resume) for the progress bar
        kcol = f.column("records/kernel")
        acol = f.column("records/accepted")
        acc = {k: [float(acol[kcol == i].sum()), float((kcol == i).sum() * c)]
               for i, k in enumerate(knames)}
        first = cycle
        while cycle < steps:
            state, info = kernel.step(state)
            cycle += 1
            infos = flat_infos(info)
            obs = measure(state.U, state.action, names)
            f.append_cycle(cycle, obs, infos)
            for i in infos:
                acc[i.kernel][0] += float(i.accepted.sum())
                acc[i.kernel][1] += float(i.accepted.numel())
            if save_every and cycle % save_every == 0:
                f.append_fields(cycle, state.U, s["precision"])
                if ildg:
                    _write_ildg(out, state.U, cycle, rank * c, s["precision"])
            if callback is not None:
                callback(cycle, state)
            if (ck_every and cycle % ck_every == 0) or cycle == steps:
                checkpoint(cycle, elapsed0 + time.perf_counter() - t0)
            spc = (time.perf_counter() - t0) / max(cycle - first, 1)
            show.update(cycle, {k: (a / n if n else 0.0) for k, (a, n) in acc.items()},
                        float(obs["topological_charge"].mean()) if "topological_charge" in obs
                        else None, float(obs["plaquette"].mean()), spc)
        show.close()
        local = {"obs": {k: f.column(f"observables/{k}") for k in ["cycle", *names]},
                 "acc": acc}
    finally:
        f.close()
    if world > 1:
        import torch.distributed as dist

        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, local)
    else:
        parts = [local]
    obs_all = {"cycle": parts[0]["obs"]["cycle"]}
    for k in names:
        obs_all[k] = np.concatenate([p["obs"][k] for p in parts], axis=1)
    acc_all = {k: [sum(p["acc"][k][0] for p in parts), sum(p["acc"][k][1] for p in parts)]
               for k in knames}
    summary = summarize(obs_all, acc_all, s)
    summary.update(world_size=world, chains_per_rank=c, kernels=knames,
                   seconds=elapsed0 + time.perf_counter() - t0,
                   files=[str(_paths(out, r, world)[0]) for r in range(world)])
    if rank == 0:
        tmp = out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
        os.replace(tmp, out / "summary.json")
    return summary


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _write_ildg(out: Path, u: Any, cycle: int, offset: int, precision: int) -> None:
    """ILDG files of a 4D SU(3) batch, named as Chroma's hmc names them:
    ``OUT/cfg/chain<g>_cfg_<cycle>.lime`` (``g`` the global chain index)."""
    from ..io.ildg import write_ildg

    d = out / "cfg"
    d.mkdir(exist_ok=True)
    for i in range(u.shape[0]):
        write_ildg(d / f"chain{offset + i}_cfg_{cycle}.lime", u[i:i + 1], precision=precision,
                   overwrite=True)


# -- command line -----------------------------------------------------------------------------
def add_chain_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge chain``."""
    p = sub.add_parser(
        "chain",
        help="run hybrid Markov chains (flow Metropolis + HMC) with records, checkpoints and "
             "a progress bar",
        description=(
            "Run batched hybrid Markov chains: flow-proposal Metropolis steps (independence "
            "Metropolis with a trained flow) interleaved with HMC trajectories, exact for "
            "exp(-S)/Z. (`sample` draws independent flow samples for reweighting; `run` is "
            "reserved for the Chroma workflow; hence `chain`.) Writes OUT/chain.h5 (per-step "
            "records, observables per cycle, fields every --save-every cycles; readable by "
            "`qcd-bridge validate`), OUT/checkpoint.pt and OUT/summary.json. Under torchrun "
            "each rank runs its own chains into OUT/chain.rank<r>.h5. See docs/sampler.md."),
    )
    p.add_argument("config", nargs="?", help="JSON file with the settings (options override)")
    p.add_argument("--model", help="`qcd-bridge train` run directory or checkpoint (needed for "
                   "flow steps; group, lattice and beta default to the model's), or 'analytic': "
                   "the exact plaquette-variable proposal of 2D U(1) (bridge.flows.analytic)")
    p.add_argument("--group", choices=sorted(_GROUPS), help="gauge group (default u1)")
    p.add_argument("--nrow", nargs="+", type=int, metavar="L",
                   help="lattice extents, 2 or 4 of them (default 8 8)")
    p.add_argument("--beta", type=float, help="Wilson gauge coupling (default 2.0)")
    p.add_argument("--schedule", help="kernels of one cycle in order, KERNEL:COUNT,... "
                   "(default hmc:1,flow:4 with --model, hmc:1 without)")
    p.add_argument("--mixture", help="one random kernel per cycle with these probabilities, "
                   "e.g. hmc:0.3,flow:0.7")
    p.add_argument("--tau", type=float, help="HMC trajectory length (default 1.0)")
    p.add_argument("--md-steps", type=int, help="HMC integration steps per trajectory "
                   "(default 10)")
    p.add_argument("--integrator", help="Chroma integrator name (default LCM_STS_LEAPFROG)")
    p.add_argument("--flow-batch", type=int, help="flow proposals per chain drawn at a time "
                   "(default 16)")
    p.add_argument("--chains", type=int, help="independent chains (per rank; default 4)")
    p.add_argument("--steps", type=int, help="total cycles, counting those before --resume "
                   "(default 100)")
    p.add_argument("--therm", type=int, help="first cycles left out of the summary and of "
                   "`qcd-bridge validate` (default 0)")
    p.add_argument("--start", help="hot, cold or a gauge file (default hot)")
    p.add_argument("--seed", type=int, help="seed of all random streams (default 0)")
    p.add_argument("--out", help="output directory (default chain-run)")
    p.add_argument("--checkpoint-every", type=int, help="cycles between checkpoints "
                   "(default 50; 0: only at the end)")
    p.add_argument("--save-every", type=int, help="cycles between saved fields (default 0: "
                   "none); 4D SU(3) also as ILDG files")
    p.add_argument("--polyakov", action="store_true", help="also record the Polyakov loop")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument("--precision", type=int, choices=[32, 64], help="bits per real number "
                   "(default 64)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--progress", action="store_true", dest="force_progress",
                   help="draw the progress bar even when stderr is not a terminal")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_chain)


def _run_chain(args: argparse.Namespace) -> int:
    s, explicit = chain_settings(args)
    if args.resume:
        cfg = Path(s["out"]) / "config.json"
        if not cfg.exists():
            raise _config_error(f"--resume: no settings {cfg} of a run to resume")
        saved = json.loads(cfg.read_text())
        s, explicit = chain_settings(args, saved=saved)
        explicit |= {"group", "nrow", "beta"}
    model = resolve_model(s, explicit)
    progress = False if args.no_progress else (True if args.force_progress else None)
    summary = run_chains(s, model=model, resume=args.resume, progress=progress)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if rank == 0:
        for line in summary_lines(summary):
            print(line)
        print(f"wrote {', '.join(summary['files'])} and {Path(s['out']) / 'summary.json'}")
    return 0
