"""``qcd-bridge train --arch snf --beta0 B0 --beta B --blocks N``: training of a stochastic
normalizing flow (:mod:`bridge.flows.snf`: one residual staple layer per block of the
non-equilibrium protocol ``beta0 -> beta``) by the mean work, and its evaluation.

Prior samples come from a :class:`~bridge.flows.snf.PriorPool` of ``batch`` independent chains
at ``beta0`` (``therm`` thermalisation updates, ``pool_sweeps`` updates between steps).  The run
writes ``OUT/checkpoint.pt`` (the trainer's, atomically), ``OUT/prior-pool.pt`` (a snapshot of
the pool after the last finished run, which a ``--resume`` replays from instead of from the
start), ``OUT/config.json`` and ``OUT/summary.json``: on ``eval_samples`` fresh protocol runs
(a second pool of ``eval_batch`` chains, read every ``pool_sweeps`` updates) with the trained
layers ``ess``, ``mean_work``, ``log_z_ratio`` and ``log_z_ratio_err`` (Jarzynski), and the same
numbers of the layer-free protocol on the same prior configurations (``ess_no_layers``,
``mean_work_no_layers``, ...), ``seconds_per_run`` of each (CPU seconds of the process, so that
the comparison does not depend on other jobs), ``steps``, ``seconds``.  Non-finite
numbers (an error bar with ESS 0) are written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["check_snf_settings", "snf_defaults", "run_train_snf", "evaluate_snf", "SNF_KEYS",
           "SNFSampler", "scan_init_scale", "SCAN_SCALES"]

# settings keys of the SNF run (None: not given); the defaults of snf_defaults
SNF_KEYS: dict[str, Any] = {"beta0": None, "blocks": 4, "update": None, "therm": 50,
                            "pool_sweeps": 1, "n_hb": 1, "n_or": 1, "n_traj": 1,
                            "md_steps": 10, "tau": 1.0, "defect": None, "c0": 0.0,
                            "init_scale": 1.0}
# factors of Luescher's coefficients tried by --init-scale auto
SCAN_SCALES = (0.25, 0.5, 0.75, 1.0, 1.5)
# settings whose general default differs for an SNF run (applied when not given)
_SNF_OVERRIDES = {"eval_samples": 1024, "eval_batch": 128, "batch": 32}
# Adam moves a raw coefficient by ~lr per step whatever the gradient's size, and the stout
# coefficients scale like the coupling step (beta - beta0) / blocks: lr = _LR_PER_BLOCK / blocks
_LR_PER_BLOCK = 4e-3
_SNF_MODEL_KEYS = {"arch", "kappa", "layer", "init", "radius"}


def snf_defaults(s: dict[str, Any], given: set[str]) -> None:
    """Fill the SNF settings of ``s`` in place: its own keys, and the general ones whose SNF
    default differs, where not in ``given``."""
    if s["model"].get("arch") != "snf":
        return
    for key, v in SNF_KEYS.items():
        if s.get(key) is None and key not in ("beta0", "defect"):
            s[key] = v
    if s.get("update") is None:
        s["update"] = "heatbath" if s["group"] in ("su2", "su3") else "hmc"
    for key, v in _SNF_OVERRIDES.items():
        if key not in given:
            s[key] = v
    if "lr" not in given and isinstance(s["blocks"], int) and s["blocks"] > 0:
        s["lr"] = _LR_PER_BLOCK / s["blocks"]


def check_snf_settings(s: dict[str, Any]) -> None:
    """Refuse SNF settings that cannot work, naming the option and the value."""
    snf = s["model"].get("arch") == "snf"
    if not snf:
        only = sorted({"layer", "init", "radius"} & set(s["model"]))
        if only:
            raise ConfigError(f"model: {only} apply to --arch snf only (the layer type and "
                              f"initialisation of a stochastic normalizing flow)")
        given = [k for k in SNF_KEYS if s.get(k) is not None]
        if given:
            opt = given[0].replace("_", "-")
            raise ConfigError(f"--{opt} {s[given[0]]}: protocol settings need --arch snf "
                              f"(a stochastic normalizing flow)")
        return
    if s.get("kappa") is not None:
        raise ConfigError(f"--kappa {s['kappa']}: --arch snf is pure gauge (no fermions)")
    if s.get("beta0") is None:
        raise ConfigError("--arch snf: needs --beta0 (the coupling of the prior samples)")
    for key in ("beta0", "beta", "tau"):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ConfigError(f"--{key.replace('_', '-')} {v!r}: expected a finite number")
    if s["update"] not in ("heatbath", "hmc"):
        raise ConfigError(f"--update {s['update']}: expected 'heatbath' or 'hmc'")
    if s["update"] == "heatbath" and s["group"] not in ("su2", "su3"):
        raise ConfigError(f"--update heatbath: the heatbath needs --group su2 or su3, got "
                          f"--group {s['group']}; use --update hmc")
    if s["update"] == "heatbath" and min(s["beta0"], s["beta"]) < 0:
        raise ConfigError(f"--beta0 {s['beta0']} --beta {s['beta']}: the heatbath needs "
                          f"couplings >= 0")
    if s["update"] == "heatbath" and any(n % 2 for n in s["nrow"]):
        raise ConfigError(f"--nrow {' '.join(map(str, s['nrow']))}: the heatbath and the staple "
                          f"layers need even extents")
    for key, lo in (("blocks", 1), ("therm", 0), ("pool_sweeps", 1), ("n_hb", 0), ("n_or", 0),
                    ("n_traj", 0), ("md_steps", 1)):
        v = s[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"--{key.replace('_', '-')} {v!r}: expected an integer >= {lo}")
    if s.get("defect") is not None:
        from ..gauge.defect import check_defect
        from ..lattice import Lattice

        opt = f"--defect {' '.join(map(str, s['defect']))}"
        if s["update"] != "heatbath":
            raise ConfigError(f"{opt}: the defect protocol runs the heatbath (--update "
                              f"heatbath, --group su2 or su3)")
        try:
            check_defect(Lattice(s["nrow"]), s["defect"])
        except ConfigError as exc:
            raise ConfigError(f"{opt}: {exc}") from None
    c0 = s.get("c0", 0.0)
    if isinstance(c0, bool) or not isinstance(c0, int | float) or not (math.isfinite(c0)
                                                                       and c0 >= 0):
        raise ConfigError(f"--c0 {c0!r}: expected a defect coefficient >= 0")
    scale = s.get("init_scale", 1.0)
    if scale != "auto" and (isinstance(scale, bool) or not isinstance(scale, int | float)
                            or not (math.isfinite(scale) and scale >= 0)):
        raise ConfigError(f"--init-scale {scale!r}: expected a factor >= 0 of Luescher's "
                          f"coefficients or 'auto' (a scan of the mean work)")
    if scale != 1.0 and s["model"].get("init", "luscher") != "luscher":
        raise ConfigError(f"--init-scale {scale}: scales the Luescher initialisation; the "
                          f"model's init is {s['model']['init']!r}")
    bad = set(s["model"]) - _SNF_MODEL_KEYS
    if bad:
        raise ConfigError(f"model: {sorted(bad)} do not apply to --arch snf (settable: "
                          f"{sorted(_SNF_MODEL_KEYS - {'arch'})})")
    if s["train"].get("estimator", "reparam") != "reparam":
        raise ConfigError(f"--estimator {s['train']['estimator']}: --arch snf trains by the "
                          f"work gradient ('reparam') only")


def _build(s: dict[str, Any]) -> Any:
    from ..flows.checkpoints import GROUPS
    from ..flows.snf import SNFModel

    return SNFModel(GROUPS[s["group"]], len(s["nrow"]), beta0=float(s["beta0"]),
                    beta=float(s["beta"]), n_blocks=int(s["blocks"]), update=s["update"],
                    n_hb=int(s["n_hb"]), n_or=int(s["n_or"]), tau=float(s["tau"]),
                    md_steps=int(s["md_steps"]), n_traj=int(s["n_traj"]),
                    defect=s.get("defect"), c0=float(s.get("c0", 0.0)),
                    init_scale=1.0 if s.get("init_scale") == "auto" else
                    float(s.get("init_scale", 1.0)),
                    **{k: v for k, v in s["model"].items() if k != "arch"})


def scan_init_scale(model: Any, nrow: list[int], n: int, chunk: int, *, seed: int,
                    therm: int, sweeps: int, scales: tuple[float, ...] = SCAN_SCALES
                    ) -> list[dict[str, float]]:
    """Mean work and ESS of ``n`` protocol runs of ``model`` for each factor in ``scales`` of
    Luescher's coefficients, from the same prior configurations with the same MC random
    numbers (common random numbers: the differences between factors are much more precise
    than each mean); leaves the model at the factor of the lowest mean work (the SNF loss)."""
    import torch

    from ..flows.snf import PriorPool
    from ..mcmc.nonequilibrium import jarzynski, run_protocol
    from ..rng import rng_key

    pool = PriorPool(model, nrow, chunk, seed=rng_key(seed, 0xE7A4), therm=therm, sweeps=sweeps)
    x0s = [pool.draw(i)[: min(chunk, n - start)] for i, start in enumerate(range(0, n, chunk))]
    rows = []
    with torch.no_grad():
        for sc in scales:
            model.set_init_scale(sc)
            w = torch.cat([run_protocol(x0, model.protocol(), seed=rng_key(seed, 0xE7A5),
                                        index=i)[1] for i, x0 in enumerate(x0s)])
            rows.append({"scale": float(sc), "mean_work": float(w.mean()),
                         "ess": float(jarzynski(w).ess)})
    model.set_init_scale(min(rows, key=lambda r: r["mean_work"])["scale"])
    return rows


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def evaluate_snf(model: Any, nrow: list[int], n: int, chunk: int, *, seed: int, therm: int,
                 sweeps: int, layers: bool = True, no_layers: bool = True) -> dict[str, Any]:
    """Jarzynski statistics of ``n`` protocol runs of ``model`` with (``layers``) and without
    (``no_layers``) its layers, from the same prior configurations: a pool of ``chunk`` chains
    at ``beta0`` (``therm`` thermalisation updates), read every ``sweeps`` updates."""
    import torch

    from ..flows.snf import PriorPool
    from ..mcmc.nonequilibrium import jarzynski, run_protocol
    from ..rng import rng_key

    pool = PriorPool(model, nrow, chunk, seed=rng_key(seed, 0xE7A1), therm=therm, sweeps=sweeps)
    kinds = [k for k, on in (("", layers), ("_no_layers", no_layers)) if on]
    works: dict[str, list] = {k: [] for k in kinds}
    secs = dict.fromkeys(kinds, 0.0)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, start in enumerate(range(0, n, chunk)):
            x0 = pool.draw(i)[: min(chunk, n - start)]
            for k in kinds:
                t = time.process_time()  # CPU seconds: the cost, whatever else runs
                _, w, _ = run_protocol(x0, model.protocol(layers=(k == "")),
                                       seed=rng_key(seed, 0xE7A2), index=i)
                secs[k] += time.process_time() - t
                works[k].append(w)
    out: dict[str, Any] = {"eval_samples": int(n), "eval_seconds": time.perf_counter() - t0}
    for k in kinds:
        w = torch.cat(works[k])
        jz = jarzynski(w)
        out.update({f"ess{k}": jz.ess, f"ess_err{k}": _finite(_ess_error(w, seed)),
                    f"mean_work{k}": float(w.mean()),
                    f"work_std{k}": float(w.std()) if w.numel() > 1 else 0.0,
                    f"log_z_ratio{k}": _finite(jz.log_ratio),
                    f"log_z_ratio_err{k}": _finite(jz.log_ratio_err),
                    f"seconds_per_run{k}": secs[k] / n})
    return out


def _ess_error(work: Any, seed: int, n_boot: int = 200) -> float:
    """Bootstrap standard deviation of the Jarzynski ESS of the works ``work`` (``n_boot``
    resamples from a stream of ``seed``): the ESS of a few hundred runs fluctuates by tens of
    per cent, which a comparison must show."""
    import torch

    from ..mcmc.nonequilibrium import jarzynski
    from ..rng import generator, rng_key

    n = work.numel()
    if n < 2:
        return math.nan
    gen = generator(rng_key(seed, 0xE7A3))
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    return float(torch.tensor([jarzynski(work[i]).ess for i in idx]).std())


def _pool_snapshot(path: Path, pool: Any) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(pool.state_dict(), tmp)
    os.replace(tmp, path)


def run_train_snf(s: dict[str, Any], *, resume: bool = False,
                  source: tuple[Any, dict[str, Any]] | None = None) -> int:
    """Train and evaluate the SNF of settings ``s`` (module docstring); the exit status.
    ``source``: ``(model, record)`` of :func:`~bridge.jobs.transfer.fine_tune_source`, the
    trained SNF to fine-tune (on another lattice), whose protocol ``s`` already holds."""
    import torch

    from ..flows.snf import PriorPool, SNFLoss
    from ..flows.training import TrainConfig, Trainer
    from .train import check_resume, step_logger

    check_snf_settings(s)
    if s["device"] != "cpu":
        raise ConfigError(f"--device {s['device']}: --arch snf runs on the CPU only")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--arch snf: data-parallel training (torchrun) is not supported")
    out = Path(s["out"])
    ck, pool_file = out / "checkpoint.pt", out / "prior-pool.pt"
    out.mkdir(parents=True, exist_ok=True)
    check_resume(ck, resume)
    torch.manual_seed(int(s["seed"]))
    model = _build(s) if source is None else source[0].train()
    nrow, batch, steps = s["nrow"], int(s["batch"]), int(s["steps"])
    scan = None
    if s.get("init_scale") == "auto" and source is None and not resume:
        t_scan = time.perf_counter()
        scan = scan_init_scale(model, nrow, 4 * batch, batch, seed=int(s["seed"]),
                               therm=int(s["therm"]), sweeps=int(s["pool_sweeps"]))
        print("init scale scan (mean work of " + str(4 * batch) + " runs): " + ", ".join(
            f"{r['scale']:g} -> {r['mean_work']:.4f}" for r in scan) + f"; starting at "
            f"{model.config['init_scale']:g} x Luescher ({time.perf_counter() - t_scan:.1f} s)",
            flush=True)
    extra = dict(s["train"])
    extra.setdefault("total_steps", steps)
    cfg = TrainConfig(nrow=nrow, beta=float(s["beta"]), batch=batch, lr=float(s["lr"]),
                      seed=int(s["seed"]), **extra)
    if source is not None:
        from .transfer import fine_tune_notice

        cfg.extra = {**cfg.extra, "init_from": source[1]}
        if not resume:
            print(fine_tune_notice(source[1], s), flush=True)
    pool = PriorPool(model, nrow, batch, seed=int(s["seed"]), therm=int(s["therm"]),
                     sweeps=int(s["pool_sweeps"]))
    loss = SNFLoss(model, pool, batch, nrow)
    trainer = Trainer(model, cfg, loss=loss)
    if resume:
        trainer.load(ck)
        loss.calls = trainer.step_count
        if pool_file.exists():
            pool.load_state_dict(torch.load(pool_file, map_location="cpu", weights_only=False))
    (out / "config.json").write_text(json.dumps(s, indent=2) + "\n")
    remaining = max(steps - trainer.step_count, 0)
    log_every = int(s["log_every"])

    progress = step_logger(steps, log_every,
                           fields=(("mean work", "loss", "+.4f"), ("var", "loss_var", ".3g"),
                                   ("ess", "ess", ".3f")))

    t0 = time.perf_counter()
    hist = trainer.train(remaining, time_budget=s["time_budget"], checkpoint=ck,
                         checkpoint_every=int(s["checkpoint_every"]), callback=progress)
    seconds = time.perf_counter() - t0
    if trainer.step_count:
        pool.draw(trainer.step_count - 1)  # no-op after training; a replay after a bare resume
        _pool_snapshot(pool_file, pool)
    ev = evaluate_snf(model, nrow, int(s["eval_samples"]), int(s["eval_batch"]),
                      seed=int(s["seed"]), therm=int(s["therm"]), sweeps=int(s["pool_sweeps"]))
    last = trainer.history[-1] if trainer.history else {}
    summary = {**ev, "steps": trainer.step_count, "steps_this_run": len(hist),
               "seconds": seconds, "live_mean_work": last.get("loss"),
               "live_ess": last.get("ess"), "group": s["group"], "nrow": nrow,
               "beta0": float(s["beta0"]), "beta": float(s["beta"]),
               "blocks": int(s["blocks"]), "update": s["update"], "batch": batch,
               "pool_replayed": pool.replayed, "checkpoint": str(ck),
               "stopped_by_time_budget": len(hist) < remaining,
               "init_scale": model.config.get("init_scale")}
    if scan is not None:
        summary["init_scan"] = scan
    if source is not None:
        from .transfer import history_of

        summary["init_from"], summary["history"] = source[1], history_of(source[1])
    path = out / "summary.json"
    tmp = path.with_name(".summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    print(f"trained {summary['steps']} steps ({len(hist)} this run) in {seconds:.1f} s; on "
          f"{ev['eval_samples']} protocol runs: ESS {ev['ess']:.4f} (no layers "
          f"{ev['ess_no_layers']:.4f}), mean work {ev['mean_work']:.4f} (no layers "
          f"{ev['mean_work_no_layers']:.4f}); wrote {path}")
    return 0


class SNFSampler:
    """Weighted samples of an SNF for ``qcd-bridge sample``: chunk ``i`` of ``m`` runs the
    model's protocol from draw ``i`` of a :class:`~bridge.flows.snf.PriorPool` of ``batch``
    chains at ``beta0`` on ``nrow`` and returns ``(U, log w = -W, log q = NaN, S_beta(U))``
    (Jarzynski: ``<O>_p = <O e^{-W}> / <e^{-W}>``).  The pool's ``therm`` and ``sweeps`` come
    from the training run's ``config.json`` when it is there (else 50 and 1); consecutive
    chunks come from the same chains ``sweeps`` updates apart."""

    LOG_W = "-W (work of the protocol beta0 -> beta from equilibrium samples at beta0; log q " \
            "undefined)"

    def __init__(self, model: Any, model_path: str, nrow: list[int], batch: int,
                 seed: int) -> None:
        from ..flows.snf import PriorPool
        from ..rng import rng_key

        if any(int(n) % 2 for n in nrow):
            raise ConfigError(f"--nrow {' '.join(map(str, nrow))}: --model {model_path} is a "
                              f"stochastic normalizing flow; its heatbath and stout masks need "
                              f"even extents")
        cfg = Path(model_path) / "config.json"
        run = json.loads(cfg.read_text()) if cfg.is_file() else {}
        self.model, self.seed = model, int(seed)
        self.pool = PriorPool(model, nrow, batch, seed=rng_key(seed, 0x5A0),
                              therm=int(run.get("therm") or 50),
                              sweeps=int(run.get("pool_sweeps") or 1))

    def chunk(self, i: int, m: int) -> tuple[Any, Any, Any, Any]:
        import torch

        from ..gauge.defect import weighted_wilson_action
        from ..lattice import Lattice
        from ..mcmc.nonequilibrium import run_protocol
        from ..rng import rng_key

        pr = self.model.protocol()
        u, w, _ = run_protocol(self.pool.draw(i)[:m], pr, seed=rng_key(self.seed, 0x5A1),
                               index=i)
        act = weighted_wilson_action(u, pr.beta, pr.weights(Lattice.of(u), pr.n_blocks))
        return u, -w, torch.full_like(w, math.nan), act
