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
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from lxml import etree

from .. import __version__
from ..errors import ConfigError
from ..gauge import mesplq, polyakov_loop, random_gauge, unit_gauge
from ..groups import expm_algebra, random_algebra, reunitarize
from ..lattice import Lattice
from ..mcmc.hmc import HMCInfo, HMCState, hmc_kernel
from ..mcmc.integrators import Integrator, Level, scheme
from ..mcmc.monomials import GaugeMonomial, Monomial
from ..rng import generator, rng_key
from .hmc_input import HMCInput, IntegratorSpec, MonomialSpec, restart_xml, write_xml

__all__ = ["run_hmc", "build_monomial", "build_integrator", "HMCRunResult"]


WEAK_FIELD_AMPLITUDE = 0.02 * 2.0 * math.pi
"""Amplitude of the ``WEAK_FIELD`` start (Chroma's ``weakField``: ``0.02 * twopi``)."""


def _fmt(x: float) -> str:
    return format(float(x), ".15g")


def build_monomial(spec: MonomialSpec) -> Monomial:
    """A monomial object from its parsed Chroma specification."""
    if spec.kind == "GAUGE_MONOMIAL":
        return GaugeMonomial(spec.params["beta"], name=spec.monomial_id)
    from ..fermions.pseudofermion import monomial_from_chroma  # lazy: heavier import

    return monomial_from_chroma(spec.kind, spec.params, name=spec.monomial_id)


def build_integrator(spec: IntegratorSpec, monomials: dict[str, Monomial]) -> Integrator:
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


def _elem(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    e = etree.SubElement(parent, tag)
    if text is not None:
        e.text = text
    return e


def _plaquette_xml(parent, u: torch.Tensor, update_no: int) -> None:
    m = mesplq(u)
    p = _elem(parent, "Plaquette")
    _elem(p, "update_no", str(update_no))
    for tag, val in (("w_plaq", m.w_plaq), ("s_plaq", m.s_plaq), ("t_plaq", m.t_plaq)):
        _elem(p, tag, _fmt(val[0]))
    for (a, b), val in m.planes.items():
        _elem(p, f"plane_{a}{b}_plaq", _fmt(val[0]))
    _elem(p, "link", _fmt(m.link[0]))


def _polyakov_xml(parent, u: torch.Tensor, update_no: int) -> None:
    p = _elem(parent, "PolyakovLoop")
    _elem(p, "update_no", str(update_no))
    loops = _elem(p, "poly_loop")
    for mu in range(u.shape[1]):
        z = complex(polyakov_loop(u, mu)[0])
        e = _elem(loops, "elem")
        _elem(e, "re", _fmt(z.real))
        _elem(e, "im", _fmt(z.imag))


@dataclass
class HMCRunResult:
    updates: list[dict]
    saved: list[str]
    output: str


class _Progress:
    """One status line on stderr: update, acceptance, plaquette, seconds per trajectory."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.t0 = time.perf_counter()
        self.n = self.acc = 0
        # a terminal gets one updating line; a log file a line every ~10% of the run
        self.tty = sys.stderr.isatty()
        self.every = max(1, total // 10)

    def update(self, update_no: int, info: HMCInfo) -> None:
        self.n += 1
        self.acc += int(info.accepted[0])
        if not self.enabled:
            return
        rate = (time.perf_counter() - self.t0) / self.n
        eta = rate * (self.total - self.n)
        if not self.tty and self.n % self.every and self.n != self.total:
            return
        start, end = ("\r", "\n" if self.n == self.total else "") if self.tty else ("", "\n")
        sys.stderr.write(
            f"{start}hmc {self.n}/{self.total} update {update_no}  acc {self.acc / self.n:.3f}  "
            f"w_plaq {float(info.w_plaq[0]):.6f}  dH {float(info.delta_h[0]):+.4f}  "
            f"{rate:.3f} s/traj  eta {eta:.0f} s   {end}"
        )
        sys.stderr.flush()


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
    from ..io.ildg import write_ildg

    lat = Lattice(inp.nrow)
    if lat.nd != 4:
        raise ConfigError(f"{inp.source}: /Params/HMCTrj/nrow: Chroma's hmc is 4D, got "
                          f"{lat.nrow}")
    seed = rng_key(*inp.seed)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    monomials = {mid: build_monomial(spec) for mid, spec in inp.monomials.items()}
    integ = build_integrator(inp.integrator, monomials)
    kernel = hmc_kernel(integ, inp.tau0, warmup=inp.n_warmup,
                        reverse_check_every=inp.reverse_frequency if inp.reverse_check else 0)
    u0 = _start(inp, lat, seed, dev)
    state = kernel.init(u0, seed=seed, trajectory=inp.start_update)

    out_path = Path(output)
    root = etree.Element("hmc")
    _elem(root, "Input").append(copy_root(inp))
    prog = _elem(root, "ProgramInfo")
    cv = _elem(prog, "code_version")
    _elem(cv, "qcd_bridge", __version__)
    _elem(cv, "torch", torch.__version__)
    _elem(cv, "basePrecision", "64")
    _elem(prog, "run_date", time.strftime("%d %b %y %H:%M:%S UTC", time.gmtime()))
    geom = _elem(prog, "Setgeom")
    _elem(geom, "latt_size", " ".join(map(str, lat.nrow)))
    _elem(geom, "total_volume", str(lat.volume))
    _elem(geom, "device", str(dev))
    cinfo = _elem(root, "Config_info")
    _elem(cinfo, inp.cfg.cfg_type.lower()).text = inp.cfg.cfg_file
    updates_xml = _elem(_elem(root, "doHMC"), "MCUpdates")

    nc, nd = 3, lat.nd
    ke_offset = (nc * nc - 1) / 2 * lat.volume * nd
    pe_offset = sum(m.beta * lat.volume * nd * (nd - 1) / 2
                    for m in monomials.values() if isinstance(m, GaugeMonomial))
    records: list[dict] = []
    saved: list[str] = []
    bar = _Progress(inp.n_updates, progress)
    recent: list[float] = []

    def save(update_no: int) -> None:
        cfg_name = f"{inp.save_prefix}_cfg_{update_no}.lime"
        file_xml = (f"<?xml version=\"1.0\"?>\n<HMC><ProgramInfo><code>qcd-bridge {__version__}"
                    f"</code></ProgramInfo></HMC>")
        rxml = restart_xml(inp, update_no, cfg_name).decode()
        write_ildg(cfg_name, state.U, precision=64, file_xml=file_xml, record_xml=rxml,
                   overwrite=True)
        write_xml(f"{inp.save_prefix}_restart_{update_no}.xml", rxml.encode())
        saved.append(cfg_name)
        write_xml(out_path, root)

    for k in range(inp.n_updates):
        update_no = inp.start_update + k + 1
        state, info = kernel.step(state)
        warm = bool(info.warmup)
        el = _elem(_elem(updates_xml, "elem"), "Update")
        _elem(el, "update_no", str(update_no))
        _elem(el, "WarmUpP", "true" if warm else "false")
        trj = _elem(el, "HMCTrajectory")
        _elem(trj, "WarmUpP", "true" if warm else "false")
        ke0 = float(info.kinetic_old[0]) - ke_offset
        ke1 = float(info.kinetic_new[0]) - ke_offset
        pe0 = float(info.potential_old[0]) - pe_offset
        pe1 = float(info.potential_new[0]) - pe_offset
        h_old = _elem(trj, "H_old")
        _elem(h_old, "KE_old", _fmt(ke0))
        _elem(h_old, "PE_old", _fmt(pe0))
        h_new = _elem(trj, "H_new")
        _elem(h_new, "KE_new", _fmt(ke1))
        _elem(h_new, "PE_new", _fmt(pe1))
        _elem(trj, "deltaKE", _fmt(ke1 - ke0))
        _elem(trj, "deltaPE", _fmt(pe1 - pe0))
        _elem(trj, "deltaH", _fmt(info.delta_h[0]))
        _elem(trj, "AccProb", _fmt(info.acc_prob[0]))
        _elem(trj, "AcceptP", "true" if bool(info.accepted[0]) else "false")
        if info.reverse_delta_h is not None:
            rev = _elem(trj, "ReversibilityMetrics")
            _elem(rev, "DeltaDeltaH", _fmt(info.reverse_delta_h[0]))
            _elem(rev, "DeltaDeltaU", _fmt(info.reverse_delta_u[0]))
        _elem(el, "seconds_for_trajectory", _fmt(info.seconds))
        _elem(el, "cg_iterations", str(info.solver_iterations))
        t_meas = time.perf_counter()
        obs = _elem(el, "InlineObservables")
        _plaquette_xml(_elem(obs, "elem"), state.U, update_no)
        poly = None
        for m in inp.measurements:  # the user's inline measurements, in input order
            if update_no % m["frequency"]:
                continue
            if m["name"] == "POLYAKOV_LOOP":
                _polyakov_xml(_elem(obs, "elem"), state.U, update_no)
                poly = complex(polyakov_loop(state.U)[0])
            elif m["name"] == "PLAQUETTE":  # in addition to the default one, as in Chroma
                _plaquette_xml(_elem(obs, "elem"), state.U, update_no)
        _elem(el, "seconds_for_measurements", _fmt(time.perf_counter() - t_meas))
        records.append({
            "update_no": update_no, "warmup": warm, "accepted": bool(info.accepted[0]),
            "deltaH": float(info.delta_h[0]), "AccProb": float(info.acc_prob[0]),
            "w_plaq": float(info.w_plaq[0]), "poly_t": poly, "seconds": info.seconds,
            "cg_iterations": info.solver_iterations,
        })
        bar.update(update_no, info)
        if on_update is not None:
            on_update(update_no, state, info)
        if not warm:
            recent = (recent + [float(info.acc_prob[0])])[-10:]
            if len(recent) == 10 and max(recent) < 1e-3:
                warnings.warn(
                    f"{inp.source}: acceptance probability below 1e-3 for 10 trajectories up "
                    f"to update {update_no}: the step size tau0/n_steps = "
                    f"{inp.tau0}/{inp.integrator.n_steps} is too large",
                    RuntimeWarning, stacklevel=2,
                )
                recent = []
        if update_no % inp.save_interval == 0 or k == inp.n_updates - 1:
            save(update_no)
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
