"""``qcd-bridge run WORKFLOW``: the drop-in hybrid update step (docs/dropin.md).

A run alternates, for ``cycles`` cycles:

1. an **HMC segment** of ``trajectories`` trajectories in the engine (Chroma's ``hmc`` or the
   built-in fallback, :mod:`bridge.chroma.engines`), run through files from the user's own ``hmc``
   input XML with the start configuration, RNG seed, update counters and save prefix rewritten
   for the segment (the engine's restart XML supplies the seed of the next segment);
2. the configuration the engine wrote is read back and checked (expected file name, lattice,
   SciDAC checksum, plaquette against the engine's output XML, restart XML);
3. ``flow_steps`` **flow-Metropolis steps** (:func:`bridge.mcmc.flow_mh.flow_metropolis_kernel`)
   in Python with the action of the same XML (:func:`bridge.chroma.monomials.hamiltonian_action`
   on the lenient reading of :func:`bridge.chroma.hmc_input.read_hmc_input`: same beta and
   boundary conditions; Nf = 2 fermion monomials through the exact determinant on small
   lattices, refused beyond ``fermion_max_sites``, or, for a joint model with a pseudofermion
   flow, through its multi-draw estimate with ``pf_draws`` draws on any lattice: a
   pseudo-marginal step, whose estimate for the segment's configuration is drawn from its exact
   conditional, :mod:`bridge.flows.joint`); the result is written as ILDG and starts the next
   segment.

Exactness: the flow step is independence Metropolis targeting ``p(U) ~ exp(-S(U))`` (with the
fermion determinant where the XML has fermions), the HMC segment leaves the same ``p``
invariant, so their composition does (:mod:`bridge.mcmc.compose`).

Everything is recorded in an HDF5 :class:`~bridge.io.hdf5.EnsembleStore` in the run directory
(per update: ``w_plaq``, ``kernel`` 0 = HMC / 1 = flow, ``accepted``, ``delta`` = deltaH or
``log w' - log w``, ``acc_prob``, ``warmup``; the configuration after each segment and each
flow block; provenance under ``/provenance``).  A state file ``state.json`` is written
atomically after each segment and each flow block; rerunning the same command resumes, and the
result is the same as that of an uninterrupted run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..chroma.hmc_input import HMCInput

__all__ = ["Workflow", "load_workflow", "workflow_from_dict", "segment_xml", "run_workflow",
           "RunSummary", "STATE_FORMAT"]

STATE_FORMAT = "qcd-bridge-run-state"
_KEYS = {
    "hmc_input": None, "model": None, "trajectories": None, "flow_steps": 0, "cycles": None,
    "engine": "auto", "run_dir": "run", "seed": 0, "flow_batch": None, "store": "ensemble.h5",
    "store_configs": True, "hmc_seed": None, "device": "cpu", "fermion_max_sites": 256,
    "pf_draws": 16,
}
_REQUIRED = ("hmc_input", "trajectories", "cycles")


# -- the workflow file -------------------------------------------------------------------------
@dataclass
class Workflow:
    """A resolved workflow (paths absolute).  Keys of the file: see docs/dropin.md."""

    source: str
    hmc_input: Path
    trajectories: int
    cycles: int
    flow_steps: int = 0
    model: Path | None = None
    engine: Any = "auto"
    run_dir: Path = Path("run")
    seed: int = 0
    flow_batch: int = 16
    store: Path = Path("ensemble.h5")
    store_configs: bool = True
    hmc_seed: tuple[int, ...] | None = None
    device: str = "cpu"
    fermion_max_sites: int = 256
    pf_draws: int = 16
    raw: dict[str, Any] = field(default_factory=dict)


def _int(data: Mapping[str, Any], key: str, source: str, minimum: int) -> int:
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"workflow {source}: {key} = {v!r}: expected an integer >= "
                          f"{minimum}")
    return int(v)


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read a JSON (``.json``) or TOML (``.toml``) workflow file and validate every entry;
    relative paths are taken relative to the file's directory."""
    p = Path(path)
    source = str(p)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"workflow {source}: cannot read it ({exc})") from exc
    if p.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise ConfigError(f"workflow {source}: TOML needs Python >= 3.11 (tomllib); "
                              f"write the workflow as JSON") from None
        try:
            data = tomllib.loads(text.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"workflow {source}: not valid TOML ({exc})") from exc
    else:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"workflow {source}: not valid JSON ({exc}); expected a JSON "
                              f"object (or a .toml file)") from exc
    return workflow_from_dict(data, p.resolve().parent, source)


def workflow_from_dict(data: Any, base: str | os.PathLike[str], source: str = "<workflow>"
                       ) -> Workflow:
    """Validate a workflow mapping; relative paths are resolved against ``base``."""
    if not isinstance(data, dict):
        raise ConfigError(f"workflow {source}: expected an object with keys "
                          f"{sorted(_KEYS)}, got {type(data).__name__}")
    unknown = set(data) - set(_KEYS)
    if unknown:
        raise ConfigError(f"workflow {source}: unknown keys {sorted(unknown)}; expected some "
                          f"of {sorted(_KEYS)}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"workflow {source}: missing required keys {missing}")
    d = {**_KEYS, **data}
    base = Path(base)

    def path(key: str) -> Path:
        v = d[key]
        if not isinstance(v, str) or not v:
            raise ConfigError(f"workflow {source}: {key} = {v!r}: expected a path")
        q = Path(v).expanduser()
        return q if q.is_absolute() else (base / q)

    hmc_input = path("hmc_input")
    if not hmc_input.is_file():
        raise FileNotFoundError(f"workflow {source}: hmc_input = {d['hmc_input']!r}: no such "
                                f"file ({hmc_input})")
    model = None
    if d["model"] is not None:
        model = path("model")
        if not model.exists():
            raise FileNotFoundError(f"workflow {source}: model = {d['model']!r}: no such file or "
                                    f"directory ({model}); expected a `qcd-bridge train` output "
                                    f"directory or checkpoint")
    n = _int(d, "trajectories", source, 1)
    cycles = _int(d, "cycles", source, 1)
    m = _int(d, "flow_steps", source, 0)
    seed = _int(d, "seed", source, 0)
    if m > 0 and model is None:
        raise ConfigError(f"workflow {source}: flow_steps = {m} needs a flow: give model (a "
                          f"`qcd-bridge train` output directory), or set flow_steps = 0 for "
                          f"plain HMC")
    if d["flow_batch"] is None:
        d["flow_batch"] = max(1, min(m, 16))
    fb = _int(d, "flow_batch", source, 1)
    fms = _int(d, "fermion_max_sites", source, 1)
    if not isinstance(d["store_configs"], bool):
        raise ConfigError(f"workflow {source}: store_configs = {d['store_configs']!r}: "
                          f"expected true or false")
    hs = d["hmc_seed"]
    if hs is not None and (not isinstance(hs, list) or len(hs) != 4 or any(
            isinstance(x, bool) or not isinstance(x, int) for x in hs)):
        raise ConfigError(f"workflow {source}: hmc_seed = {hs!r}: expected a list of 4 "
                          f"integers (Chroma's RNG/Seed elems)")
    if not isinstance(d["device"], str):
        raise ConfigError(f"workflow {source}: device = {d['device']!r}: expected a torch "
                          f"device name like 'cpu' or 'cuda'")
    from ..chroma.engines import EngineConfig

    EngineConfig.from_value(d["engine"], where=f"workflow {source}: engine")
    run_dir = path("run_dir")
    store = Path(d["store"]) if isinstance(d["store"], str) and d["store"] else None
    if store is None:
        raise ConfigError(f"workflow {source}: store = {d['store']!r}: expected a file name")
    return Workflow(source=source, hmc_input=hmc_input.resolve(), trajectories=n, cycles=cycles,
                    flow_steps=m, model=model.resolve() if model else None, engine=d["engine"],
                    run_dir=run_dir.resolve(), seed=seed, flow_batch=fb,
                    store=store if store.is_absolute() else run_dir.resolve() / store,
                    store_configs=d["store_configs"],
                    hmc_seed=tuple(hs) if hs is not None else None, device=d["device"],
                    fermion_max_sites=fms, pf_draws=_int(d, "pf_draws", source, 1),
                    raw=dict(data))


# -- segment input XML --------------------------------------------------------------------------
def _set(parent: Any, tag: str, text: str) -> None:
    from lxml import etree

    el = parent.find(tag)
    if el is None:
        el = etree.SubElement(parent, tag)
    el.text = text


def segment_xml(facts: HMCInput, *, start_cfg: str | None, start_update: int, n: int,
                save_prefix: str, seed: tuple[int, ...]) -> bytes:
    """The user's input rewritten for one segment: ``Cfg`` -> ``SZINQIO`` at ``start_cfg``
    (unchanged when None: the first segment starts as the user's input does, a relative
    ``cfg_file`` made absolute), ``StartUpdateNum``, ``NProductionUpdates = start + n``,
    ``NUpdatesThisRun = SaveInterval = n``, ``SavePrefix`` and the RNG seed."""
    from lxml import etree

    from ..chroma.hmc_input import set_szinqio_start

    tree = copy.deepcopy(facts.tree)
    root = tree.getroot()
    mc = root.find("MCControl")
    cfg = mc.find("Cfg")
    if start_cfg is not None:
        set_szinqio_start(root, start_cfg, facts.source)
    elif facts.cfg.cfg_type not in ("UNIT", "DISORDERED", "WEAK_FIELD") and facts.cfg.cfg_file:
        f = Path(facts.cfg.cfg_file)
        if not f.is_absolute():
            cfg.find("cfg_file").text = str(Path(facts.source).resolve().parent / f)
    _set(mc, "StartUpdateNum", str(start_update))
    _set(mc, "NProductionUpdates", str(start_update + n))
    _set(mc, "NUpdatesThisRun", str(n))
    _set(mc, "SaveInterval", str(n))
    _set(mc, "SavePrefix", save_prefix)
    for el, v in zip(mc.findall("RNG/Seed/elem"), seed, strict=True):
        el.text = str(int(v))
    etree.indent(tree, space="  ")
    return etree.tostring(tree, xml_declaration=True, encoding="UTF-8", pretty_print=True)


# -- helpers --------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    from ..io.lime import atomic_path

    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _rel(p: Path, base: Path) -> str:
    try:
        return str(p.relative_to(base))
    except ValueError:
        return str(p)


def _check_model(model: Any, meta: Mapping[str, Any], wf: Workflow, facts: HMCInput
                 ) -> None:
    """A flow for another lattice, group or coupling than the XML's: ConfigError naming both."""
    from ..chroma.monomials import gauge_beta

    where = f"workflow {wf.source}: model {wf.model} vs hmc_input {facts.source}"
    group = str(meta.get("group", getattr(getattr(model, "group", None), "name", "?")))
    if group != "SU(3)" or int(meta.get("nd", 0)) != 4:
        raise ConfigError(f"{where}: the flow is for {meta.get('nd')}D {group}, Chroma's hmc "
                          f"input is 4D SU(3)")
    train = meta.get("train", {})
    mrow = tuple(int(x) for x in train.get("nrow", ()))
    if mrow != facts.nrow:  # a local model travels (bridge.jobs.transfer)
        from .transfer import check_transfer

        check_transfer(model, facts.nrow, where)
    beta = gauge_beta(facts)
    mbeta = float(train.get("beta", math.nan))
    if not abs(mbeta - beta) <= 1e-12 * max(1.0, abs(beta)):
        raise ConfigError(f"{where}: the flow was trained at beta = {mbeta}, the XML's gauge "
                          f"action has beta = {beta}")


@dataclass
class RunSummary:
    """What a call of :func:`run_workflow` did."""

    run_dir: Path
    store: Path
    cycles_done: int
    cycles_total: int
    updates: int
    engine: str
    reason: str
    finished: bool


class _Run:
    """One invocation of the drop-in loop (state in ``run_dir/state.json``)."""

    def __init__(self, wf: Workflow, log: Callable[[str], None],
                 hook: Callable[[str, int], None] | None, engine: Any) -> None:
        from ..chroma.engines import EngineConfig, discover_engine
        from ..chroma.hmc_input import read_hmc_input

        self.wf, self.log, self.hook = wf, log, hook
        self.facts = read_hmc_input(wf.hmc_input, strict=False)
        self.engine = engine or discover_engine(
            EngineConfig.from_value(wf.engine, where=f"workflow {wf.source}: engine"),
            device=wf.device)
        if self.engine.name == "builtin":  # the built-in engine must understand every element
            read_hmc_input(wf.hmc_input)
        self.model = self.meta = self.action = self.estimator = None
        self.ne = False
        self.action_desc, self.transfer = "none (plain HMC)", None
        if wf.flow_steps > 0:
            from ..chroma.monomials import hamiltonian_action
            from ..flows.checkpoints import load_model
            from ..mcmc.flow_mh import check_flow

            self.model, self.meta = load_model(wf.model)
            if wf.device != "cpu":  # load_model builds the flow on the CPU
                self.model.to(wf.device)
            self.ne = self.model.config.get("arch") == "snf"  # NE-MCMC (.dropin_ne)
            if not self.ne:
                _check_model(self.model, self.meta, wf, self.facts)
            mrow = [int(n) for n in self.meta.get("train", {}).get("nrow", ())]
            if mrow != list(self.facts.nrow):
                from .transfer import transfer_notice

                self.transfer = transfer_notice(wf.model, mrow, self.facts.nrow)
                log(self.transfer)
            if self.ne:
                from .dropin_ne import check_snf_workflow

                self.action_desc = check_snf_workflow(self.model, wf, self.facts)
            elif getattr(self.model, "kappa", None) is not None:  # joint Nf=2 model
                from ..chroma.monomials import gauge_action_for_joint_model

                c = self.model.conditional
                self.action, self.action_desc = gauge_action_for_joint_model(
                    self.facts, c.kappa, c.c_sw, c.boundary)
                self.estimator = self.model.estimator(wf.pf_draws)
            else:
                self.action, self.action_desc = hamiltonian_action(
                    self.facts, max_sites=wf.fermion_max_sites)
            import torch

            from ..gauge import unit_gauge
            from ..lattice import Lattice

            check_flow(self.model, unit_gauge(Lattice(self.facts.nrow), "SU3", 1,
                                              dtype=torch.complex128))
        self.seg_dir = wf.run_dir / "segments"
        self.stem = Path(self.facts.save_prefix).name
        self.state_path = wf.run_dir / "state.json"
        self.fingerprint = {
            "hmc_input_sha256": _sha256(wf.hmc_input),
            "model_sha256": (_sha256(wf.model / "checkpoint.pt" if wf.model.is_dir()
                                     else wf.model) if wf.model and wf.flow_steps else None),
            "trajectories": wf.trajectories, "flow_steps": wf.flow_steps, "seed": wf.seed,
            "flow_batch": wf.flow_batch,
            "pf_draws": wf.pf_draws if self.estimator is not None else None,
            "hmc_seed": list(wf.hmc_seed) if wf.hmc_seed else None,
        }
        self._line, self._plaq = "", math.nan  # the progress line of the current cycle

    # -- state ----------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any]:
        """The saved state (checked against this workflow), or the state of a new run."""
        if not self.state_path.exists():
            return {"format": STATE_FORMAT, "version": 1, "fingerprint": self.fingerprint,
                    "cycle": 0, "phase": "start", "update": 0,
                    "hmc_update": self.facts.start_update, "current_cfg": None,
                    "hmc_seed": list(self.wf.hmc_seed or self.facts.seed), "versions": {},
                    "invocations": 0}
        try:
            st = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{self.state_path}: cannot read the run state ({exc}); expected "
                              f"the JSON written by qcd-bridge run") from exc
        if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
            raise ConfigError(f"{self.state_path}: not a qcd-bridge run state (format "
                              f"{st.get('format') if isinstance(st, dict) else None!r}, expected "
                              f"{STATE_FORMAT!r})")
        for key, want in self.fingerprint.items():
            have = st["fingerprint"].get(key)
            if have != want:
                raise ConfigError(
                    f"{self.state_path}: this run directory was started with {key} = {have!r}, "
                    f"the workflow {self.wf.source} now gives {want!r}; resume with the original "
                    f"settings or choose a new run_dir")
        return st

    def save_state(self, st: dict[str, Any]) -> None:
        st["updated"] = _utc()
        _write_json(self.state_path, st)

    # -- provenance -------------------------------------------------------------------------
    def provenance(self, st: dict[str, Any]) -> dict[str, Any]:
        import torch

        prov = {
            "started": self.started, "host": platform.node(), "python": sys.version.split()[0],
            "torch": torch.__version__, "engine": self.engine.provenance(),
            "workflow_file": self.wf.source, "workflow": self.wf.raw,
            "hmc_input": str(self.wf.hmc_input),
            "hmc_input_xml": self.wf.hmc_input.read_text(errors="replace"),
            "fingerprint": self.fingerprint, "flow_action": self.action_desc,
            "model_transfer": self.transfer,
            "seeds": {"workflow_seed": self.wf.seed, "hmc_seed_first_segment":
                      list(self.wf.hmc_seed or self.facts.seed),
                      "flow_chain_seed": "rng_key(seed, cycle)"},
            "engine_versions": st.get("versions", {}),
            "cycles_at_start": self.cycle_at_start, "cycles_now": st["cycle"],
        }
        if self.meta is not None:
            prov["model"] = {"path": str(self.wf.model), "meta": self.meta}
        first = self.seg_dir / "cycle_00000.ini.xml"
        if first.exists():
            prov["first_segment_xml"] = first.read_text(errors="replace")
        return prov

    def write_provenance(self, st: dict[str, Any], index: int) -> None:
        import h5py

        prov = self.provenance(st)
        path = self.wf.run_dir / "provenance.json"
        entries = json.loads(path.read_text()) if path.exists() else []
        entries = entries[:index] + [prov]
        _write_json(path, entries)
        with h5py.File(self.wf.store, "a") as h5:
            grp = h5.require_group("provenance")
            name = f"run_{index:03d}"
            if name in grp:
                del grp[name]
            grp.create_dataset(name, data=json.dumps(prov, sort_keys=True, default=str),
                               dtype=h5py.string_dtype("utf-8"))


# -- store ----------------------------------------------------------------------------
def _store_updates(store: Any, rows: list[dict[str, Any]]) -> None:
    """Append per-update series; rows already committed (a phase redone after an
    interruption between the store and the state file) are skipped."""
    import numpy as np

    for name in ("w_plaq", "kernel", "accepted", "delta", "acc_prob", "warmup"):
        last = -1
        if name in store.measurement_names:
            _, trajs = store.measurement(name)
            last = int(trajs[-1]) if len(trajs) else -1
        keep = [r for r in rows if r["update"] > last]
        if keep:
            store.append_measurement(name, np.array([r["update"] for r in keep]),
                                     np.array([float(r[name]) for r in keep]))

def _store_config(run: _Run, store: Any, u: Any, update: int, accepted: bool,
                  params: dict[str, Any], seed: Any) -> None:
    """Append a configuration to the ensemble (unless already there, or not wanted)."""
    if not run.wf.store_configs or (run.ne and params["kernel"] == "hmc"):  # NE: beta only
        return
    last = store.last_traj
    if last is not None and update <= last:
        return
    store.append(u, traj=update, accepted=accepted, params=params, seed=seed)


def _hmc_segment(run: _Run, st: dict[str, Any], store: Any) -> dict[str, Any]:
    """One HMC segment in the engine, its configuration read back and checked, its updates
    and configuration stored; returns the new state."""
    from ..chroma.engines import EngineFailed, read_hmc_output
    from ..chroma.hmc_input import read_hmc_input
    from ..chroma.monomials import gauge_beta
    from ..chroma.xml_out import write_xml
    from ..errors import ChecksumError, FormatError
    from ..gauge import mesplq
    from ..io.ildg import read_ildg

    c, h, n = st["cycle"], st["hmc_update"], run.wf.trajectories
    run.seg_dir.mkdir(parents=True, exist_ok=True)
    prefix = run.seg_dir / run.stem
    start = None if st["current_cfg"] is None else str(run.wf.run_dir / st["current_cfg"])
    xml = segment_xml(run.facts, start_cfg=start, start_update=h, n=n,
                      save_prefix=str(prefix), seed=tuple(st["hmc_seed"]))
    tag = f"cycle_{c:05d}"
    inp, out = run.seg_dir / f"{tag}.ini.xml", run.seg_dir / f"{tag}.out.xml"
    log = run.seg_dir / f"{tag}.log.xml"
    cfg = Path(f"{prefix}_cfg_{h + n}.lime")
    restart = Path(f"{prefix}_restart_{h + n}.xml")
    for stale in (cfg, restart, out, log):  # left by an interrupted attempt
        if stale.exists():
            stale.unlink()
    write_xml(inp, xml)
    t0 = time.time()
    run.engine.run_hmc(inp, out, log_xml=log, workdir=run.seg_dir)
    seconds = time.time() - t0
    what = (f"{run.engine.name} engine, segment {tag} (input {inp}, SavePrefix {prefix}, "
            f"updates {h + 1}..{h + n})")
    if not cfg.exists():
        others = sorted(p.name for p in run.seg_dir.glob(f"{run.stem}_cfg_*.lime"))
        raise EngineFailed(f"{what}: finished without writing the expected configuration "
                           f"{cfg}; configurations present: {others or 'none'}")
    if cfg.stat().st_mtime < t0 - 2.0:
        raise EngineFailed(f"{what}: {cfg} predates this engine run: the engine did not "
                           f"write it")
    u, info = read_ildg(cfg)
    if tuple(info.nrow) != run.facts.nrow:
        raise FormatError(f"{what}: {cfg} holds a {' '.join(map(str, info.nrow))} lattice, "
                          f"the input's nrow is {' '.join(map(str, run.facts.nrow))}: not "
                          f"the configuration this engine run was supposed to write")
    if info.checksum == "mismatch":
        raise ChecksumError(f"{what}: {cfg}: SciDAC checksum mismatch")
    u = u.contiguous()
    plaq = float(mesplq(u).w_plaq[0])
    # the restart XML: names this configuration and the next update number
    seed = list(st["hmc_seed"])
    if not restart.exists():
        raise EngineFailed(f"{what}: finished without writing the restart XML {restart}")
    rfacts = read_hmc_input(restart, strict=False)
    if Path(rfacts.cfg.cfg_file).name != cfg.name or rfacts.start_update != h + n:
        raise EngineFailed(f"{what}: the restart XML {restart} points at "
                           f"{rfacts.cfg.cfg_file!r} with StartUpdateNum {rfacts.start_update}, "
                           f"expected {cfg.name} and {h + n}")
    seed = list(rfacts.seed)
    records = []
    if out.exists():
        records, versions = read_hmc_output(out)
        st["versions"].update(versions)
        run.engine.versions.update(versions)
        nums = [r.update_no for r in records]
        if nums != list(range(h + 1, h + n + 1)):
            raise FormatError(f"{what}: the output XML {out} lists updates {nums}, expected "
                              f"{h + 1}..{h + n}")
        reported = records[-1].w_plaq
        tol = 1e-10 if info.precision == 64 else 2e-6
        if math.isfinite(reported) and abs(reported - plaq) > tol:
            raise ChecksumError(
                f"{what}: {cfg} has w_plaq {plaq:.15g}, but the engine's output XML {out} "
                f"reports {reported:.15g} for update {h + n} (tolerance {tol:g}): the file "
                f"is not the configuration this engine run wrote")
    else:
        run.log(f"warning: {what}: no output XML {out}; per-trajectory deltaH and "
                 f"plaquettes are not recorded (NaN)")
    u0 = st["update"]
    rows = []
    for k in range(n):
        r = records[k] if records else None
        rows.append({
            "update": u0 + k + 1, "kernel": 0,
            "w_plaq": (r.w_plaq if r else (plaq if k == n - 1 else math.nan)),
            "accepted": (math.nan if r is None or r.accepted is None else float(r.accepted)),
            "delta": r.delta_h if r else math.nan, "acc_prob": r.acc_prob if r else math.nan,
            "warmup": float(r.warmup) if r else math.nan})
    _store_updates(store, rows)
    _store_config(run, store, u, u0 + n, bool(records[-1].accepted) if records else True,
                      {"kernel": "hmc", "cycle": c, "file": _rel(cfg, run.wf.run_dir),
                       "engine": run.engine.name, "hmc_update_no": h + n,
                       "beta": gauge_beta(run.facts), "w_plaq": plaq},
                      list(st["hmc_seed"]))
    st.update(phase="hmc_done", update=u0 + n, hmc_update=h + n, hmc_seed=seed,
              current_cfg=_rel(cfg, run.wf.run_dir))
    acc = [r.accepted for r in records if r.accepted is not None and not r.warmup]
    dh = [r.delta_h for r in records if not r.warmup]
    run._line = (f"hmc {n} traj ({h + 1}..{h + n}) "
                  + (f"acc {sum(acc) / len(acc):.2f} " if acc else "")
                  + (f"<dH> {sum(dh) / len(dh):+.3f} " if dh else "")
                  + f"{seconds:.1f} s")
    run._plaq = plaq
    return st


def _flow_block(run: _Run, st: dict[str, Any], store: Any) -> dict[str, Any]:
    """``flow_steps`` flow-Metropolis steps from the segment's configuration, written as ILDG
    (the start of the next segment) and stored; returns the new state."""
    import torch

    from ..chroma.monomials import gauge_beta
    from ..gauge import mesplq
    from ..io.ildg import read_ildg, write_ildg
    from ..mcmc.flow_mh import flow_metropolis_kernel
    from ..rng import rng_key

    c, m = st["cycle"], run.wf.flow_steps
    t0 = time.perf_counter()
    u, _ = read_ildg(run.wf.run_dir / st["current_cfg"], nrow=run.facts.nrow)
    u = u.contiguous().to(run.wf.device)
    kernel = flow_metropolis_kernel(run.model, run.action, batch_size=run.wf.flow_batch,
                                    log_weight_estimator=run.estimator, name="flow")
    chain_seed = rng_key(run.wf.seed, c)
    state = kernel.init(u, seed=chain_seed, step=0)
    rows = []
    u0 = st["update"]
    n_acc = 0
    for j in range(m):
        state, info = kernel.step(state)
        acc = bool(info.accepted[0])
        n_acc += acc
        with torch.no_grad():
            plaq = float(mesplq(state.U).w_plaq[0])
        rows.append({"update": u0 + j + 1, "kernel": 1, "w_plaq": plaq,
                     "accepted": float(acc), "delta": float(info.delta[0]),
                     "acc_prob": float(info.acc_prob[0]), "warmup": 0.0})
    out = run.seg_dir / f"{run.stem}_cfg_{st['hmc_update']}_flow.lime"
    rxml = (f"<?xml version=\"1.0\"?>\n<qcd_bridge_flow><cycle>{c}</cycle><flow_steps>{m}"
            f"</flow_steps><accepted>{n_acc}</accepted><chain_seed>{chain_seed}</chain_seed>"
            f"<hmc_update>{st['hmc_update']}</hmc_update></qcd_bridge_flow>")
    write_ildg(out, state.U.cpu(), precision=64, record_xml=rxml, overwrite=True)
    _store_updates(store, rows)
    _store_config(run, store, state.U.cpu(), u0 + m, n_acc > 0,
                      {"kernel": "flow", "cycle": c, "file": _rel(out, run.wf.run_dir),
                       "flow_steps": m, "flow_accepted": n_acc,
                       "beta": gauge_beta(run.facts), "w_plaq": rows[-1]["w_plaq"]},
                      [run.wf.seed, c])
    st.update(phase="start", cycle=c + 1, update=u0 + m,
              current_cfg=_rel(out, run.wf.run_dir))
    run._line += (f" | flow {m} steps acc {n_acc / m:.2f} "
                   f"{time.perf_counter() - t0:.1f} s")
    run._plaq = rows[-1]["w_plaq"]
    return st


def _loop(run: _Run, max_cycles: int | None) -> RunSummary:
    """The cycles of one invocation: state, provenance, then HMC segment and flow block per
    cycle, the state saved after each phase."""
    from ..io.hdf5 import EnsembleStore

    run.wf.run_dir.mkdir(parents=True, exist_ok=True)
    st = run.load_state()
    run.started = _utc()
    run.cycle_at_start = st["cycle"]
    index = int(st.get("invocations", 0))
    st["invocations"] = index + 1
    run.log(f"qcd-bridge run: {run.engine.describe()}")
    run.log(f"  run directory {run.wf.run_dir}; cycle {st['cycle']}/{run.wf.cycles}"
             f"{' (resuming)' if index else ''}; flow action: {run.action_desc}")
    EnsembleStore(run.wf.store, "a", nrow=run.facts.nrow, ensemble=run.stem.replace(
        "|", "_") or "ens").close()
    run.write_provenance(st, index)
    run.save_state(st)
    done = 0
    store = EnsembleStore(run.wf.store, "a")
    try:
        while st["cycle"] < run.wf.cycles and (max_cycles is None or done < max_cycles):
            c = st["cycle"]
            t0 = time.perf_counter()
            run._line, run._plaq = "", math.nan
            if st["phase"] == "start":
                st = _hmc_segment(run, st, store)
                run.save_state(st)
                if run.hook:
                    run.hook("hmc", c)
            if run.wf.flow_steps > 0:
                from .dropin_ne import ne_block

                st = (ne_block if run.ne else _flow_block)(run, st, store)
            else:
                st.update(phase="start", cycle=c + 1)
            run.save_state(st)
            if run.hook:
                run.hook("flow", c)
            done += 1
            run.log(f"cycle {c + 1}/{run.wf.cycles}: {run._line.strip(' |')}; w_plaq "
                     f"{run._plaq:.6f}; {time.perf_counter() - t0:.1f} s")
    finally:
        store.close()
        run.write_provenance(st, index)
    return RunSummary(run.wf.run_dir, run.wf.store, st["cycle"], run.wf.cycles,
                      st["update"], run.engine.name, run.engine.reason,
                      st["cycle"] >= run.wf.cycles)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_workflow(
    workflow: Workflow | str | os.PathLike[str],
    *,
    max_cycles: int | None = None,
    log: Callable[[str], None] | None = _stderr,
    hook: Callable[[str, int], None] | None = None,
    engine: Any = None,
) -> RunSummary:
    """Run (or resume) a workflow; ``max_cycles`` limits the cycles of this call; ``hook(phase,
    cycle)`` is called after each phase ("hmc", "flow") once its state is saved; ``engine``
    overrides discovery (an :class:`~bridge.chroma.engines.Engine`).  Every input is validated (XML,
    model, lattice/action match, engine) before anything runs."""
    wf = workflow if isinstance(workflow, Workflow) else load_workflow(workflow)
    if max_cycles is not None and max_cycles < 0:
        raise ConfigError(f"max_cycles: expected a non-negative integer, got {max_cycles}")
    return _loop(_Run(wf, log or (lambda s: None), hook, engine), max_cycles)
