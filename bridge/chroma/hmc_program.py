"""The built-in engine: runs Chroma's ``hmc`` input XML with the project's HMC, writing the files
Chroma writes (``<SavePrefix>_cfg_<N>.lime``, ``<SavePrefix>_restart_<N>.xml``) and an output XML
with Chroma's element paths (``/hmc/doHMC/MCUpdates/elem/Update/...``).

The same input file runs unchanged in Chroma and here.  Differences that remain by design:
the random streams (ours are counter-based, :mod:`bridge.rng`, so the restart file's seed plus
``StartUpdateNum`` fixes the continuation bit for bit) and the constants in ``KE``/``PE``, which
follow Chroma's offsets (``PE`` without the Wilson constant ``beta V Nd(Nd-1)/2``, ``KE`` minus its
mean ``(Nc^2-1)/2 V Nd``, as Chroma's output for a unit start shows: ``PE_old = -beta V 6``,
``KE_old`` fluctuating about 0); ``deltaH``, ``AccProb`` and ``AcceptP`` are unaffected.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from lxml import etree

from .. import __version__
from ..errors import ConfigError
from ..gauge import random_gauge, unit_gauge
from ..groups import expm_algebra, random_algebra, reunitarize
from ..lattice import Lattice
from ..mcmc.hmc import HMCInfo, HMCState, hmc_kernel
from ..mcmc.integrators import Integrator, Level, scheme
from ..mcmc.monomials import GaugeMonomial, Monomial
from ..progress import Progress
from ..rng import generator, rng_key
from .hmc_input import HMCInput, IntegratorSpec, restart_xml
from .monomials import actions_from_monomials
from .xml_out import (
    RunEnv,
    bool_text,
    fmt,
    plaquette_group,
    polyakov_group,
    program_info,
    run_date,
    sub,
    write_xml,
)

__all__ = ["run_hmc", "build_integrator", "HMCRunResult", "summarize"]


WEAK_FIELD_AMPLITUDE = 0.02 * 2.0 * math.pi
"""Amplitude of the ``WEAK_FIELD`` start (Chroma's ``weakField``: ``0.02 * twopi``)."""


def build_integrator(spec: IntegratorSpec, monomials: dict[str, Monomial]) -> Integrator:
    """The nested integrator of an ``MDIntegrator`` specification (outermost level first)."""
    levels = []
    level: IntegratorSpec | None = spec
    while level is not None:
        params = {"lam": level.lam} if level.lam is not None else {}
        levels.append(Level(scheme(level.name, **params), level.n_steps,
                            [monomials[m] for m in level.monomial_ids]))
        level = level.sub
    return Integrator(levels)


def _start(inp: HMCInput, lat: Lattice, seed: int, device) -> torch.Tensor:
    kind = inp.cfg.cfg_type
    if kind == "UNIT":
        return unit_gauge(lat, "SU3", 1, device=device)
    if kind == "DISORDERED":
        return random_gauge(lat, "SU3", 1, generator=generator(rng_key(seed, 0xD150), device),
                            device=device)
    if kind == "WEAK_FIELD":
        # Chroma's weakField (lib/util/gauge/weak_field.cc): small fluctuations about the unit
        # field, angles of amplitude 0.02 * 2 pi; here exp(0.02 * 2 pi * P) with P drawn as the
        # momenta (the random stream differs from Chroma's, as for every random start)
        p = random_algebra("SU3", (1, lat.nd, *lat.shape),
                           generator=generator(rng_key(seed, 0x3EAF), device), device=device)
        return expm_algebra(WEAK_FIELD_AMPLITUDE * p).contiguous()
    from ..io.ildg import read_ildg

    u, info = read_ildg(inp.cfg.cfg_file, nrow=lat.nrow, device=device)
    if inp.cfg.reunit:  # hmc re-unitarises the configuration it reads
        u = reunitarize(u, "SU3")
    return u.contiguous()  # the reader returns a view in file order; MD runs faster on a copy


@dataclass
class HMCRunResult:
    updates: list[dict]
    saved: list[str]
    output: str


def _output_root(inp: HMCInput, env: RunEnv) -> tuple[etree._Element, etree._Element]:
    """``/hmc`` with ``Input``, ``ProgramInfo`` and ``Config_info``; returns it and the
    ``doHMC/MCUpdates`` element the updates go into."""
    root = etree.Element("hmc")
    sub(root, "Input").append(copy_root(inp))
    program_info(root, env)
    cinfo = sub(root, "Config_info")
    sub(cinfo, inp.cfg.cfg_type.lower()).text = inp.cfg.cfg_file
    return root, sub(sub(root, "doHMC"), "MCUpdates")


def _trajectory_xml(el: etree._Element, info: HMCInfo, ke_offset: float, pe_offset: float
                    ) -> None:
    """``HMCTrajectory``: energies with Chroma's offsets (module docstring), acceptance and the
    reversibility metrics when checked."""
    trj = sub(el, "HMCTrajectory")
    sub(trj, "WarmUpP", bool_text(bool(info.warmup)))
    ke0 = float(info.kinetic_old[0]) - ke_offset
    ke1 = float(info.kinetic_new[0]) - ke_offset
    pe0 = float(info.potential_old[0]) - pe_offset
    pe1 = float(info.potential_new[0]) - pe_offset
    h_old = sub(trj, "H_old")
    sub(h_old, "KE_old", fmt(ke0))
    sub(h_old, "PE_old", fmt(pe0))
    h_new = sub(trj, "H_new")
    sub(h_new, "KE_new", fmt(ke1))
    sub(h_new, "PE_new", fmt(pe1))
    sub(trj, "deltaKE", fmt(ke1 - ke0))
    sub(trj, "deltaPE", fmt(pe1 - pe0))
    sub(trj, "deltaH", fmt(info.delta_h[0]))
    sub(trj, "AccProb", fmt(info.acc_prob[0]))
    sub(trj, "AcceptP", bool_text(bool(info.accepted[0])))
    if info.reverse_delta_h is not None:
        rev = sub(trj, "ReversibilityMetrics")
        sub(rev, "DeltaDeltaH", fmt(info.reverse_delta_h[0]))
        sub(rev, "DeltaDeltaU", fmt(info.reverse_delta_u[0]))


def _measurements_xml(el: etree._Element, inp: HMCInput, u: torch.Tensor, update_no: int
                      ) -> complex | None:
    """The default plaquette and the user's inline measurements, in input order; returns the
    time-direction Polyakov loop when measured."""
    t_meas = time.perf_counter()
    obs = sub(el, "InlineObservables")
    plaquette_group(sub(obs, "elem"), u, update_no)
    poly = None
    for m in inp.measurements:
        if update_no % m["frequency"]:
            continue
        if m["name"] == "POLYAKOV_LOOP":
            poly = polyakov_group(sub(obs, "elem"), u, update_no)[-1]  # time direction
        elif m["name"] == "PLAQUETTE":  # in addition to the default one, as in Chroma
            plaquette_group(sub(obs, "elem"), u, update_no)
    sub(el, "seconds_for_measurements", fmt(time.perf_counter() - t_meas))
    return poly


class _StepSizeWatch:
    """Warns when the acceptance probability stays below 1e-3 for 10 production trajectories:
    the step size is too large."""

    def __init__(self, inp: HMCInput) -> None:
        self.inp, self.recent = inp, []

    def update(self, update_no: int, info: HMCInfo) -> None:
        if info.warmup:
            return
        self.recent = (self.recent + [float(info.acc_prob[0])])[-10:]
        if len(self.recent) == 10 and max(self.recent) < 1e-3:
            inp = self.inp
            warnings.warn(
                f"{inp.source}: acceptance probability below 1e-3 for 10 trajectories up "
                f"to update {update_no}: the step size tau0/n_steps = "
                f"{inp.tau0}/{inp.integrator.n_steps} is too large",
                RuntimeWarning, stacklevel=3,
            )
            self.recent = []


def _save(inp: HMCInput, u: torch.Tensor, update_no: int) -> str:
    """``<SavePrefix>_cfg_<N>.lime`` and ``<SavePrefix>_restart_<N>.xml``; returns the former."""
    from ..io.ildg import write_ildg

    cfg_name = f"{inp.save_prefix}_cfg_{update_no}.lime"
    file_xml = (f"<?xml version=\"1.0\"?>\n<HMC><ProgramInfo><code>qcd-bridge {__version__}"
                f"</code></ProgramInfo></HMC>")
    rxml = restart_xml(inp, update_no, cfg_name).decode()
    write_ildg(cfg_name, u, precision=64, file_xml=file_xml, record_xml=rxml, overwrite=True)
    write_xml(f"{inp.save_prefix}_restart_{update_no}.xml", rxml.encode())
    return cfg_name


def run_hmc(
    inp: HMCInput,
    output: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    on_update: Callable[[int, HMCState, HMCInfo], None] | None = None,
) -> HMCRunResult:
    """Run the updates an ``hmc`` input asks for; write configurations, restart files and the
    output XML (rewritten atomically after every saved configuration and at the end)."""
    if not inp.strict or inp.integrator is None:
        raise ConfigError(f"{inp.source}: the built-in hmc runs a strictly read input "
                          f"(read_hmc_input(path, strict=True))")
    lat = Lattice(inp.nrow)
    seed = rng_key(*inp.seed)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    monomials = actions_from_monomials(inp)
    integ = build_integrator(inp.integrator, monomials)
    kernel = hmc_kernel(integ, inp.tau0, warmup=inp.n_warmup,
                        reverse_check_every=inp.reverse_frequency if inp.reverse_check else 0)
    state = kernel.init(_start(inp, lat, seed, dev), seed=seed, trajectory=inp.start_update)

    out_path = Path(output)
    env = RunEnv(nrow=tuple(lat.nrow), device=dev, seed=tuple(inp.seed), run_date=run_date())
    root, updates_xml = _output_root(inp, env)
    nc, nd = 3, lat.nd
    ke_offset = (nc * nc - 1) / 2 * lat.volume * nd
    pe_offset = sum(m.beta * lat.volume * nd * (nd - 1) / 2
                    for m in monomials.values() if isinstance(m, GaugeMonomial))
    records: list[dict] = []
    saved: list[str] = []
    bar = Progress(inp.n_updates, label="hmc", unit="traj", enabled=progress)
    n_acc = 0
    watch = _StepSizeWatch(inp)
    for k in range(inp.n_updates):
        update_no = inp.start_update + k + 1
        state, info = kernel.step(state)
        el = sub(sub(updates_xml, "elem"), "Update")
        sub(el, "update_no", str(update_no))
        sub(el, "WarmUpP", bool_text(bool(info.warmup)))
        _trajectory_xml(el, info, ke_offset, pe_offset)
        sub(el, "seconds_for_trajectory", fmt(info.seconds))
        sub(el, "cg_iterations", str(info.solver_iterations))
        poly = _measurements_xml(el, inp, state.U, update_no)
        records.append({
            "update_no": update_no, "warmup": bool(info.warmup),
            "accepted": bool(info.accepted[0]), "deltaH": float(info.delta_h[0]),
            "AccProb": float(info.acc_prob[0]), "w_plaq": float(info.w_plaq[0]), "poly_t": poly,
            "seconds": info.seconds, "cg_iterations": info.solver_iterations,
        })
        n_acc += int(info.accepted[0])
        bar.update(k + 1, f"update {update_no}  acc {n_acc / (k + 1):.3f}  w_plaq "
                          f"{float(info.w_plaq[0]):.6f}  dH {float(info.delta_h[0]):+.4f}")
        if on_update is not None:
            on_update(update_no, state, info)
        watch.update(update_no, info)
        if update_no % inp.save_interval == 0 or k == inp.n_updates - 1:
            saved.append(_save(inp, state.U, update_no))
            write_xml(out_path, root)
    bar.close()
    if inp.n_updates == 0:
        write_xml(out_path, root)
    return HMCRunResult(records, saved, str(out_path))


def copy_root(inp: HMCInput) -> etree._Element:
    return copy.deepcopy(inp.tree.getroot())


def summarize(records: list[dict]) -> dict[str, float]:
    """Acceptance, mean plaquette and <exp(-dH)> over the non-warm-up updates."""
    prod = [r for r in records if not r["warmup"]]
    if not prod:
        return {"n": 0}
    n = len(prod)
    return {
        "n": n,
        "acceptance": sum(r["accepted"] for r in prod) / n,
        "w_plaq": sum(r["w_plaq"] for r in prod) / n,
        "exp_minus_dH": sum(math.exp(-r["deltaH"]) for r in prod) / n,
        "seconds_per_trajectory": sum(r["seconds"] for r in prod) / n,
    }
