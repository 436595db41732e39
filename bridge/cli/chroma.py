"""``qcd-bridge chroma`` (the built-in ``chroma`` measurement program) and ``qcd-bridge
chroma-xml``: write Chroma inputs from templates, check inputs, parse outputs.

``qcd-bridge chroma -i IN.xml -o OUT.xml``
    the inline measurements of a Chroma ``chroma`` input with the built-in program
    (:func:`bridge.chroma.chroma_program.run_chroma_measurements`);

``qcd-bridge chroma-xml hmc ... -o hmc.ini.xml``
    an input of Chroma's ``hmc`` (pure gauge, or Nf=2 Wilson/clover), from options or
    ``--config FILE.json`` (keys: the option names with ``_``; options given on the command line
    override the file);
``qcd-bridge chroma-xml measure ... -o measure.ini.xml``
    an input of Chroma's ``chroma`` (plaquette, Polyakov loop, pion, Wilson flow, QTOP_NAIVE);
``qcd-bridge chroma-xml check FILE...``
    the structural check of any ``hmc``/``chroma`` input (e.g. a hand-written one);
``qcd-bridge chroma-xml parse OUT.xml... [--into STORE.h5] [--json FILE]``
    Chroma's (or the fallback's) output XML into measurement series of an HDF5 ensemble store.

Every written input has passed :func:`bridge.chroma.schema.check_structure` and is written
atomically; it runs unchanged in Chroma and in the built-in fallback (``qcd-bridge hmc`` /
``qcd-bridge chroma``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["add_chroma_parser", "add_chroma_xml_parser"]

_HMC_EXAMPLE = """examples:
  qcd-bridge chroma-xml hmc --nrow 4 4 4 4 --beta 5.5 --tau 1 --md-steps 10 \\
      --n-updates 100 --save-interval 10 --prefix pg --start unit --seed 12345 -o hmc.ini.xml
  qcd-bridge chroma-xml hmc --nrow 8 8 8 16 --beta 5.6 --kappa 0.156 --fermion wilson \\
      --integrator LCM_STS_MIN_NORM_2 --tau 1 --md-steps 10 --gauge-steps 4 \\
      --start szin:cfg_100.lime --start-update 100 -o hmc.ini.xml
  qcd-bridge chroma-xml hmc --nrow 8 8 8 16 --beta 5.6 --kappa 0.137 --fermion clover \\
      --csw 1.2 --inverter quda-clover --quda-sloppy-precision HALF -o hmc_quda.ini.xml
  qcd-bridge chroma-xml hmc --config hmc.json -o hmc.ini.xml
  (hmc.json: {"nrow": [4, 4, 4, 4], "beta": 5.5, "kappa": 0.1, "n_updates": 20})
"""

_MEASURE_EXAMPLE = """examples:
  qcd-bridge chroma-xml measure --nrow 4 4 4 4 --cfg cfg_100.lime --plaquette --polyakov \\
      --pion --kappa 0.1 --wilson-flow 4.0 --flow-steps 400 --qtop 0 0.05 -o measure.ini.xml
  qcd-bridge chroma-xml measure --nrow 8 8 8 16 --cfg cfg_100.lime --pion --kappa 0.137 \\
      --fermion clover --csw 1.2 --inverter quda-multigrid-clover --mg-blocking 4 4 4 4 \\
      -o measure_quda.ini.xml
  qcd-bridge chroma-xml measure --config measure.json -o measure.ini.xml
"""


_QUDA_OPTIONS = ("inverter", "quda_solver", "quda_delta", "quda_precision",
                 "quda_sloppy_precision", "quda_reconstruct", "quda_sloppy_reconstruct",
                 "mg_blocking", "mg_null_vectors", "mg_pre_smooth", "mg_post_smooth", "mg_cycle",
                 "mg_subspace_id")


def _add_inverter_options(p: argparse.ArgumentParser) -> None:
    """``--inverter`` (Chroma's CG or one of its QUDA solvers) and the QUDA settings; the
    defaults are Chroma's (docs/quda.md)."""
    from ..chroma.names import (  # pure data: the parser imports nothing heavy
        QUDA_INVERTERS,
        QUDA_MG_CYCLES,
        QUDA_PRECISIONS,
        QUDA_RECONSTRUCTS,
        QUDA_SOLVER_TYPES,
    )

    g = p.add_argument_group("inverter (Chroma's CG, or QUDA on a GPU; see docs/quda.md)")
    g.add_argument("--inverter", choices=("cg", *QUDA_INVERTERS),
                   help="cg: CG_INVERTER; quda-*: QUDA_WILSON/CLOVER_INVERTER and their "
                   "MULTIGRID forms (the built-in engine solves these with its CG) [cg]")
    g.add_argument("--quda-solver", choices=QUDA_SOLVER_TYPES,
                   help="QUDA SolverType [CG; GCR for multigrid]")
    g.add_argument("--quda-delta", type=float, help="QUDA reliable-update Delta [0.1]")
    g.add_argument("--quda-precision", choices=QUDA_PRECISIONS, help="CudaPrecision [DEFAULT]")
    g.add_argument("--quda-sloppy-precision", choices=QUDA_PRECISIONS,
                   help="CudaSloppyPrecision [DEFAULT]")
    g.add_argument("--quda-reconstruct", choices=QUDA_RECONSTRUCTS,
                   help="CudaReconstruct [RECONS_12]")
    g.add_argument("--quda-sloppy-reconstruct", choices=QUDA_RECONSTRUCTS,
                   help="CudaSloppyReconstruct [RECONS_12]")
    g.add_argument("--mg-blocking", nargs="+", type=int, metavar="B",
                   help="multigrid blocks, 4 integers (x y z t) per coarse level [4 4 4 4]")
    g.add_argument("--mg-null-vectors", nargs="+", type=int, metavar="N",
                   help="null vectors, one or one per level [16]")
    g.add_argument("--mg-pre-smooth", nargs="+", type=int, metavar="N",
                   help="pre-smoother applications per level [2]")
    g.add_argument("--mg-post-smooth", nargs="+", type=int, metavar="N",
                   help="post-smoother applications per level [2]")
    g.add_argument("--mg-cycle", choices=QUDA_MG_CYCLES, help="CycleType [MG_VCYCLE]")
    g.add_argument("--mg-subspace-id", help="SubspaceID of the clover multigrid null space "
                   "[qcd_bridge_mg_subspace]")


def _seed(values: list[int]) -> int | list[int]:
    return values[0] if len(values) == 1 else values


def add_chroma_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``qcd-bridge chroma`` (the fallback for Chroma's ``chroma`` program)."""
    from ..chroma.names import BUILTIN_MEASUREMENTS

    p = subparsers.add_parser(
        "chroma",
        help="run Chroma's chroma (measurement) input XML with the built-in engine",
        description=(
            "Run the inline measurements of a Chroma `chroma` input file (root <chroma>) on the "
            "configuration named by /chroma/Cfg (SZINQIO/SCIDAC or UNIT) and write the output "
            "XML with Chroma's element paths (/chroma/InlineObservables/elem/<group>/...), so "
            "scripts written for Chroma's output read it unchanged. Supported measurements: "
            + ", ".join(BUILTIN_MEASUREMENTS) + ". Anything else in the input is an error "
            "that names its element path. Relative file names are taken from the working "
            "directory, as Chroma does."
        ),
        epilog="example: qcd-bridge chroma -i chroma_measure.ini.xml -o measure.out.xml",
    )
    p.add_argument("-i", "--input", required=True, help="Chroma chroma input XML")
    p.add_argument("-o", "--output", required=True, help="output XML (Chroma's layout)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_run_chroma_cli)
    return p


def _run_chroma_cli(args: argparse.Namespace) -> int:
    from ..chroma.chroma_program import run_chroma_measurements

    res = run_chroma_measurements(args.input, args.output, device=args.device,
                                  progress=not args.quiet)
    for m in res.measurements:
        keys = [k for k in ("w_plaq", "qtop", "t2E") if k in m]
        detail = "  ".join(f"{k} = {m[k]:.12g}" for k in keys)
        if "pion" in m:
            detail = "pion mesprop = " + " ".join(f"{v:.6g}" for v in m["pion"])
        print(f"{m['name']:<24} {m['seconds']:8.2f} s  {detail}".rstrip())
    print(f"wrote {res.output}" + (f" and {', '.join(res.files)}" if res.files else ""))
    return 0


def add_chroma_xml_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge chroma-xml`` with its actions hmc, measure, check and parse."""
    p = sub.add_parser(
        "chroma-xml",
        help="write Chroma hmc/chroma inputs from templates; check inputs; parse outputs",
        description=(
            "Chroma XML from the templates in xml_templates/: `hmc` writes an input of "
            "Chroma's hmc program, `measure` one of its chroma measurement program, both "
            "checked against the element structure Chroma requires before they are written. "
            "`check` runs that check on any input; `parse` reads hmc/chroma output XML into an "
            "HDF5 ensemble store. See docs/chroma.md."
        ),
    )
    acts = p.add_subparsers(dest="chroma_xml_action", metavar="ACTION", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    h = acts.add_parser("hmc", help="input of Chroma's hmc program", epilog=_HMC_EXAMPLE,
                        formatter_class=fmt,
                        description="Write an input of Chroma's `hmc`: pure gauge (no --kappa) "
                        "or Nf=2 Wilson/clover fermions (--kappa). Defaults in brackets apply "
                        "when neither the option nor --config sets the value.")
    h.add_argument("--config", help="JSON file with the parameters (keys: option names with _)")
    h.add_argument("--nrow", nargs=4, type=int, metavar="L", help="lattice x y z t")
    h.add_argument("--beta", type=float, help="Wilson gauge coupling")
    h.add_argument("--kappa", type=float, help="hopping parameter: adds two flavours")
    h.add_argument("--fermion", choices=["wilson", "clover"], help="fermion action [wilson]")
    h.add_argument("--csw", type=float, help="clover coefficient (with --fermion clover)")
    h.add_argument("--precond", choices=["eo", "none"],
                   help="eo: TWO_FLAVOR_EOPREC_CONSTDET (wilson) / _LOGDET (clover); none: "
                   "TWO_FLAVOR_UNPREC with UNPRECONDITIONED_* actions [eo]")
    h.add_argument("--boundary", nargs=4, type=int, metavar="B",
                   help="fermion boundary phases x y z t [1 1 1 -1]")
    h.add_argument("--rsd-cg", type=float, help="CG relative residual [1e-10]")
    h.add_argument("--max-cg", type=int, help="CG iteration limit [2000]")
    h.add_argument("--integrator", choices=["LCM_STS_LEAPFROG", "LCM_STS_MIN_NORM_2"],
                   help="MD integrator [LCM_STS_LEAPFROG]")
    h.add_argument("--lambda", type=float, dest="lambda_", metavar="LAMBDA",
                   help="2MN lambda (LCM_STS_MIN_NORM_2) [Chroma's 0.1931833275037836]")
    h.add_argument("--tau", type=float, help="trajectory length tau0 [1.0]")
    h.add_argument("--md-steps", type=int, help="outer integrator steps [10]")
    h.add_argument("--gauge-steps", type=int,
                   help="nested gauge SubIntegrator steps per outer step (with --kappa)")
    h.add_argument("--n-updates", type=int, help="updates of this run [10]")
    h.add_argument("--n-warmup", type=int, help="warm-up updates without accept/reject [0]")
    h.add_argument("--start-update", type=int, help="StartUpdateNum (continuing a run) [0]")
    h.add_argument("--save-interval", type=int, help="save a configuration every N [10]")
    h.add_argument("--prefix", help="SavePrefix of <prefix>_cfg_<N>.lime [cfg]")
    h.add_argument("--start", help="unit | weak | hot | szin:FILE (a lime file) [unit]")
    h.add_argument("--seed", nargs="+", type=int, metavar="S",
                   help="RNG seed: one integer or Chroma's four [11 0 0 0]")
    h.add_argument("--reverse-check-every", type=int,
                   help="reversibility check every N trajectories [10]")
    h.add_argument("--no-polyakov", action="store_true",
                   help="no POLYAKOV_LOOP inline measurement")
    _add_inverter_options(h)
    h.add_argument("-o", "--output", required=True, help="the input XML to write")
    h.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    h.set_defaults(func=_run_hmc)

    m = acts.add_parser("measure", help="input of Chroma's chroma program",
                        epilog=_MEASURE_EXAMPLE, formatter_class=fmt,
                        description="Write an input of Chroma's `chroma` measurement program.")
    m.add_argument("--config", help="JSON file with the parameters (keys: option names with _)")
    m.add_argument("--nrow", nargs=4, type=int, metavar="L", help="lattice x y z t")
    m.add_argument("--cfg", help="configuration file (SZINQIO), or 'unit'")
    m.add_argument("--plaquette", action="store_true", default=None, help="PLAQUETTE")
    m.add_argument("--polyakov", action="store_true", default=None, help="POLYAKOV_LOOP")
    m.add_argument("--pion", action="store_true", default=None,
                   help="point-source pion: MAKE_SOURCE + PROPAGATOR + SINK_SMEAR + "
                   "HADRON_SPECTRUM (needs --kappa)")
    m.add_argument("--kappa", type=float, help="hopping parameter of the pion")
    m.add_argument("--fermion", choices=["wilson", "clover"], help="fermion action [wilson]")
    m.add_argument("--csw", type=float, help="clover coefficient")
    m.add_argument("--boundary", nargs=4, type=int, metavar="B",
                   help="fermion boundary phases [1 1 1 -1]")
    m.add_argument("--t-srce", nargs=4, type=int, metavar="X", help="source x y z t [0 0 0 0]")
    m.add_argument("--rsd-cg", type=float, help="CG relative residual [1e-12]")
    m.add_argument("--max-cg", type=int, help="CG iteration limit [2000]")
    m.add_argument("--save-prop", help="QIO_WRITE_NAMED_OBJECT of the propagator to this file")
    m.add_argument("--wilson-flow", type=float, metavar="T", help="WILSON_FLOW to flow time T")
    m.add_argument("--flow-steps", type=int, help="RK3 steps of the flow [400]")
    m.add_argument("--save-flowed", help="QIO_WRITE_NAMED_OBJECT of the flowed field")
    m.add_argument("--qtop", nargs="+", type=float, metavar="K5",
                   help="QTOP_NAIVE with these k5 (on the flowed field if --wilson-flow)")
    m.add_argument("--seed", nargs="+", type=int, metavar="S", help="RNG seed [11 11 11 0]")
    _add_inverter_options(m)
    m.add_argument("-o", "--output", required=True, help="the input XML to write")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    m.set_defaults(func=_run_measure)

    c = acts.add_parser("check", help="structural check of Chroma hmc/chroma inputs",
                        description="Check inputs against the element structure Chroma "
                        "requires (required elements, Chroma's names of monomials, "
                        "integrators, cfg_type, FermAct, measurements, ...).")
    c.add_argument("inputs", nargs="+", help="hmc (<Params>) or chroma (<chroma>) input XML")
    c.add_argument("--lenient", action="store_true",
                   help="accept elements Chroma does not read (Chroma ignores them)")
    c.set_defaults(func=_run_check)

    r = acts.add_parser("parse", help="Chroma output XML into an HDF5 ensemble store",
                        description="Parse hmc output (per-update deltaH, AccProb, AcceptP, "
                        "plaquettes, Polyakov loop, seconds) or chroma output (Observables, "
                        "Plaquette, PolyakovLoop, hadspec mesons and pion, WilsonFlow, QTop).",
                        epilog="example: qcd-bridge chroma-xml parse hmc.out.xml --into ens.h5",
                        formatter_class=fmt)
    r.add_argument("outputs", nargs="+", help="output XML files of hmc or chroma")
    r.add_argument("--into", metavar="STORE", help="HDF5 ensemble store to append series to")
    r.add_argument("--traj", type=int, help="trajectory of a chroma output's configuration "
                   "(default: found in the output)")
    r.add_argument("--json", metavar="FILE", help="write the parsed outputs as JSON ('-': stdout)")
    r.set_defaults(func=_run_parse)


def _merged(args: argparse.Namespace, keys: dict[str, str]) -> tuple[dict[str, Any], str]:
    """The JSON config (if any) overridden by the options given on the command line."""
    d: dict[str, Any] = {}
    source = "command line"
    if args.config:
        source = args.config
        try:
            with open(args.config, encoding="utf-8") as fh:
                d = json.load(fh)
        except OSError as exc:
            raise FileNotFoundError(f"{args.config}: cannot read config ({exc})") from exc
        except json.JSONDecodeError as exc:
            from ..errors import ConfigError

            raise ConfigError(f"{args.config}: not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            from ..errors import ConfigError

            raise ConfigError(f"{args.config}: expected a JSON object of parameters, got "
                              f"{type(d).__name__}")
    for attr, key in keys.items():
        value = getattr(args, attr, None)
        if value is not None:
            d[key] = value
    return d, source


def _write(args: argparse.Namespace, root: Any) -> None:
    from ..chroma.schema import write_checked
    from ..io.lime import check_output_path

    check_output_path(args.output, args.overwrite)
    write_checked(args.output, root)
    print(f"wrote {args.output}")


def _run_hmc(args: argparse.Namespace) -> int:
    from ..chroma.params import hmc_params_from_dict
    from ..chroma.templates import render_hmc

    keys = {k: k for k in ("nrow", "beta", "kappa", "fermion", "csw", "precond", "boundary",
                           "rsd_cg", "max_cg", "integrator", "tau", "md_steps", "gauge_steps",
                           "n_updates", "n_warmup", "start_update", "save_interval", "prefix",
                           "start", "reverse_check_every", *_QUDA_OPTIONS)}
    keys["lambda_"] = "lambda"
    d, source = _merged(args, keys)
    if args.seed is not None:
        d["seed"] = _seed(args.seed)
    if args.no_polyakov:
        d["polyakov"] = False
    params = hmc_params_from_dict(d, source)
    _write(args, render_hmc(params, source))
    return 0


def _run_measure(args: argparse.Namespace) -> int:
    from ..chroma.params import measure_params_from_dict
    from ..chroma.templates import render_measure

    keys = {k: k for k in ("nrow", "cfg", "plaquette", "polyakov", "pion", "kappa", "fermion",
                           "csw", "boundary", "t_srce", "rsd_cg", "max_cg", "save_prop",
                           "wilson_flow", "flow_steps", "save_flowed", "qtop",
                           *_QUDA_OPTIONS)}
    d, source = _merged(args, keys)
    if args.seed is not None:
        s = _seed(args.seed)
        d["seed"] = s
    if not args.config and args.plaquette is None:
        d["plaquette"] = False  # on the command line, measurements are opt-in
    params = measure_params_from_dict(d, source)
    _write(args, render_measure(params, source))
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from ..chroma.schema import structure_problems
    from ..chroma.xml_in import parse_xml_file
    from ..errors import ConfigError

    bad = 0
    for path in args.inputs:
        try:
            tree = parse_xml_file(path, "the input")
        except ConfigError as exc:  # not well-formed: reported, the other files still checked
            print(exc)
            bad += 1
            continue
        problems = structure_problems(tree, strict=not args.lenient)
        if problems:
            bad += 1
            print(f"{path}: {len(problems)} problem(s)")
            for prob in problems:
                print(f"  {prob}")
        else:
            kind = "hmc" if tree.getroot().tag == "Params" else "chroma"
            print(f"{path}: ok ({kind} input)")
    return 1 if bad else 0


def _run_parse(args: argparse.Namespace) -> int:
    from ..chroma.output import read_output, store_output

    parsed = [read_output(p) for p in args.outputs]
    out = sys.stderr if args.json == "-" else sys.stdout  # keep stdout for the JSON
    for res in parsed:
        if res["program"] == "hmc":
            ups = res["updates"]
            prod = [u for u in ups if not u["warmup"]]
            acc = sum(u["AcceptP"] for u in prod) / len(prod) if prod else float("nan")
            span = f"{ups[0]['update_no']}..{ups[-1]['update_no']}" if ups else "-"
            print(f"{res['source']}: hmc, {len(ups)} updates ({span}), acceptance {acc:.3f} "
                  f"over {len(prod)} non-warm-up", file=out)
        else:
            labels = ", ".join(m["label"] for m in res["measurements"])
            print(f"{res['source']}: chroma, trajectory {res['trajectory']}, {labels}", file=out)
        if args.into:
            names = store_output(res, args.into, args.traj)
            print(f"  -> {args.into}: {len(names)} series appended", file=out)
    if args.json:
        text = json.dumps(parsed if len(parsed) > 1 else parsed[0], indent=1)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            from ..io.lime import atomic_path

            with atomic_path(args.json, overwrite=True) as tmp:
                tmp.write_text(text + "\n")
    return 0
