"""Chroma's vocabulary: the names its input readers register (collected from Chroma's source
in docs/formats.md section 4), and the subsets the built-in ``hmc`` and ``chroma`` programs run.

Pure data (no imports), shared by the structural check (:mod:`bridge.chroma.schema`), the strict
input readers (:mod:`bridge.chroma.hmc_input`, :mod:`bridge.chroma.measure_input`) and the
command line, which lists them in its help without importing lxml or torch.
"""

from __future__ import annotations

CFG_TYPES = ("UNIT", "DISORDERED", "WEAK_FIELD", "SZINQIO", "SCIDAC", "NERSC", "MILC", "SZIN",
             "KYU", "CPPACS", "CERN", "CLASSICAL_SF", "WUPP")
"""``Cfg/cfg_type`` values registered in ``gauge_init_aggregate.cc`` (there is no ``ILDG``)."""
VOLFMTS = ("SINGLEFILE", "MULTIFILE", "PARTFILE")
TWO_FLAVOR_MONOMIALS = ("TWO_FLAVOR_UNPREC_FERM_MONOMIAL",
                        "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL",
                        "TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL",
                        "TWO_FLAVOR_SEOPREC_CONSTDET_FERM_MONOMIAL")
MONOMIALS = ("GAUGE_MONOMIAL", *TWO_FLAVOR_MONOMIALS,
             "ONE_FLAVOR_UNPREC_FERM_RAT_MONOMIAL", "ONE_FLAVOR_EOPREC_CONSTDET_FERM_RAT_MONOMIAL",
             "ONE_FLAVOR_EOPREC_LOGDET_FERM_RAT_MONOMIAL",
             "N_FLAVOR_LOGDET_EVEN_EVEN_FERM_MONOMIAL", "N_FLAVOR_LOGDET_DIAG_FERM_MONOMIAL")
INTEGRATORS = ("LCM_STS_LEAPFROG", "LCM_TST_LEAPFROG", "LCM_STS_MIN_NORM_2", "LCM_TST_MIN_NORM_2",
               "LCM_STS_FORCE_GRAD", "LCM_4MN4FP", "LCM_4MN5FP", "LCM_4MN5FV",
               "LCM_CREUTZ_GOCKSCH_4", "LCM_EXP_S", "LCM_EXP_T", "LCM_EXP_S_DTAU",
               "LCM_EXP_T_DTAU")
EO_FERMACTS = ("WILSON", "CLOVER")
"""Even-odd preconditioned Wilson-type actions (Chroma's ``WILSON`` *is* the eo-prec one)."""
UNPREC_FERMACTS = ("UNPRECONDITIONED_WILSON", "UNPRECONDITIONED_CLOVER")
FERMACTS = (*EO_FERMACTS, *UNPREC_FERMACTS, "SEOPREC_CLOVER", "PARWILSON",
            "UNPRECONDITIONED_PARWILSON")
GAUGE_ACTIONS = ("WILSON_GAUGEACT", "ANISO_SYM_SPATIAL_GAUGEACT", "ANISO_SYM_TEMPORAL_GAUGEACT",
                 "LW_TREE_GAUGEACT", "LW_TADPOLE_GAUGEACT", "RG_GAUGEACT")
INVERTERS = ("CG_INVERTER", "BICGSTAB_INVERTER", "QUDA_WILSON_INVERTER", "QUDA_CLOVER_INVERTER",
             "QUDA_MULTIGRID_WILSON_INVERTER", "QUDA_MULTIGRID_CLOVER_INVERTER")
QUDA_INVERTERS = {"quda-wilson": "QUDA_WILSON_INVERTER", "quda-clover": "QUDA_CLOVER_INVERTER",
                  "quda-multigrid-wilson": "QUDA_MULTIGRID_WILSON_INVERTER",
                  "quda-multigrid-clover": "QUDA_MULTIGRID_CLOVER_INVERTER"}
"""``--inverter`` choices -> the ``invType`` Chroma registers (``lib/actions/ferm/invert/
quda_solvers/syssolver_linop_*_quda*_w.cc``)."""
QUDA_MDAGM_INVERTERS = ("QUDA_WILSON_INVERTER", "QUDA_CLOVER_INVERTER",
                        "QUDA_MULTIGRID_CLOVER_INVERTER")
"""The QUDA ``invType`` Chroma also registers as ``MdagM`` solvers (``syssolver_mdagm_*``), the
kind the two-flavour monomials of ``hmc`` use; ``QUDA_MULTIGRID_WILSON_INVERTER`` is a
propagator (linear operator) solver only."""
QUDA_SOLVER_TYPES = ("CG", "BICGSTAB", "GCR", "CA_GCR", "MR")
"""``SolverType`` and the multigrid solver lists (``enum_quda_io.cc``: ``QudaSolverType``)."""
QUDA_PRECISIONS = ("DEFAULT", "QUARTER", "HALF", "SINGLE", "DOUBLE")
QUDA_RECONSTRUCTS = ("RECONS_NONE", "RECONS_8", "RECONS_12")
QUDA_SCHWARZ = ("ADDITIVE_SCHWARZ", "MULTIPLICATIVE_SCHWARZ")
QUDA_MG_CYCLES = ("MG_VCYCLE", "MG_RECURSIVE")
"""``MULTIGRIDParams/CycleType`` (``quda_mg_utils.h``)."""
PREDICTORS = ("NULL_4D_PREDICTOR", "ZERO_GUESS_4D_PREDICTOR", "LAST_SOLUTION_4D_PREDICTOR",
              "MRE_INITCG_4D_PREDICTOR", "QUDA_4D_PREDICTOR")
MEASUREMENTS = ("PLAQUETTE", "POLYAKOV_LOOP", "QACTDEN", "QTOP_NAIVE", "MAKE_SOURCE",
                "PROPAGATOR", "SINK_SMEAR", "HADRON_SPECTRUM", "MESON_SPECTRUM", "WILSON_FLOW",
                "LINK_SMEAR", "QIO_WRITE_NAMED_OBJECT", "QIO_READ_NAMED_OBJECT",
                "NERSC_WRITE_NAMED_OBJECT", "NERSC_READ_NAMED_OBJECT", "ERASE_NAMED_OBJECT")
OBJECT_TYPES = ("Multi1dLatticeColorMatrix", "Multi1dLatticeColorMatrixF",
                "Multi1dLatticeColorMatrixD", "LatticePropagator", "LatticePropagatorF",
                "LatticePropagatorD")
MIN_NORM_2_LAMBDA = 0.1931833275037836
"""Chroma's default ``lambda`` of the 2MN (Omelyan) integrator."""

# -- what the built-in programs run (a subset of the above) ------------------------------------
BUILTIN_CFG_TYPES = ("UNIT", "DISORDERED", "WEAK_FIELD", "SZINQIO", "SCIDAC")
"""``Cfg/cfg_type`` values the built-in ``hmc`` starts from."""
BUILTIN_FERMION_MONOMIALS = ("TWO_FLAVOR_UNPREC_FERM_MONOMIAL",
                             "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL",
                             "TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL")
"""Fermion monomials of the built-in ``hmc`` (Nf=2 Wilson/clover, CG)."""
BUILTIN_PREDICTORS = ("LAST_SOLUTION_4D_PREDICTOR", "ZERO_GUESS_4D_PREDICTOR")
BUILTIN_INTEGRATORS = ("LCM_STS_LEAPFROG", "LCM_TST_LEAPFROG", "LCM_STS_MIN_NORM_2",
                       "LCM_TST_MIN_NORM_2")
BUILTIN_HMC_MEASUREMENTS = ("POLYAKOV_LOOP", "PLAQUETTE")
"""Inline measurements the built-in ``hmc`` runs between trajectories."""
BUILTIN_MEASUREMENTS = ("PLAQUETTE", "POLYAKOV_LOOP", "QACTDEN", "QTOP_NAIVE", "MAKE_SOURCE",
                        "PROPAGATOR", "SINK_SMEAR", "HADRON_SPECTRUM", "WILSON_FLOW",
                        "QIO_WRITE_NAMED_OBJECT", "ERASE_NAMED_OBJECT")
"""Inline measurements the built-in ``chroma`` program runs, in the order of its reader."""
