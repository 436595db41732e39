"""``qcd-bridge measure``: observables of the registry over an ensemble into an HDF5 store.

Tiny generated configurations (2^3 x 4, written with ``write_ildg`` as Chroma-style
``run_cfg_<N>.lime`` files, or appended to an ``EnsembleStore``) are measured; the stored series
carry the trajectory numbers and equal direct calls of the observables; re-running skips what is
measured; errors name the problem.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bridge.cli import main
from bridge.gauge import random_gauge
from bridge.groups import expm_algebra, random_algebra
from bridge.io.hdf5 import EnsembleStore
from bridge.io.ildg import read_ildg, write_ildg
from bridge.jobs.measure import measure_ensemble, measurement_name, trajectory_from_name
from bridge.lattice import Lattice
from bridge.observables import OBSERVABLES, get_observable

NROW = (2, 2, 2, 4)


def _config(seed: int, smooth: bool = False) -> torch.Tensor:
    lat = Lattice(NROW)
    gen = torch.Generator().manual_seed(seed)
    if smooth:
        return expm_algebra(0.4 * random_algebra(3, (1, 4, *lat.shape), generator=gen))
    return random_gauge(lat, "SU3", 1, generator=gen)


def _write(folder, trajs, prefix: str = "run") -> list:
    paths = []
    for n in trajs:
        p = folder / f"{prefix}_cfg_{n}.lime"
        write_ildg(p, _config(n))
        paths.append(p)
    return paths


def _direct(path, name: str, **params) -> np.ndarray:
    u = read_ildg(path)[0]
    v = get_observable(name)(u, **params)[0]
    if v.is_complex():
        v = torch.view_as_real(v)
    return v.to(torch.float64).numpy()


def test_measure_files_fill_store_equal_direct_calls_and_resume(tmp_path, capsys):
    paths = _write(tmp_path, (10, 20, 30))
    store = tmp_path / "meas.h5"
    glob_arg = str(tmp_path / "run_cfg_*.lime")
    args = ["measure", "-O", "plaquette", "-O", "polyakov", "-O", "topological_charge",
            "--flow-time", "0.2", "--eps", "0.05", "-o", str(store), glob_arg]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "plaquette: measured 3, skipped 0" in cap.out
    assert "topological_charge[eps=0.05;flow_time=0.2]: measured 3, skipped 0" in cap.out
    assert "measure [" in cap.err and "3/3" in cap.err  # the progress bar
    with EnsembleStore(store, "r") as st:
        assert st.measurement_names == ["plaquette", "polyakov",
                                        "topological_charge[eps=0.05;flow_time=0.2]"]
        for name, obs, params in (("plaquette", "plaquette", {}),
                                  ("polyakov", "polyakov", {}),
                                  ("topological_charge[eps=0.05;flow_time=0.2]",
                                   "topological_charge", {"flow_time": 0.2, "eps": 0.05})):
            values, trajs = st.measurement(name)
            assert trajs.tolist() == [10, 20, 30]
            for v, p in zip(values, paths, strict=True):
                assert np.array_equal(v, _direct(p, obs, **params)), (name, p)
        assert st.measurement("polyakov")[0].shape == (3, 2)  # complex: (re, im)
        assert len(st) == 0  # measurements only; no configurations copied
    # re-running skips everything already measured
    assert main(args + ["--quiet"]) == 0
    cap = capsys.readouterr()
    assert "plaquette: measured 0, skipped 3 (already in the store)" in cap.out
    assert cap.err == ""
    # a new, later configuration is measured alone; an earlier one cannot be appended
    _write(tmp_path, (40,))
    assert main(args + ["--quiet"]) == 0
    assert "polyakov: measured 1, skipped 3" in capsys.readouterr().out
    with EnsembleStore(store, "r") as st:
        assert st.measurement("polyakov")[1].tolist() == [10, 20, 30, 40]
    _write(tmp_path, (5,))
    assert main(args + ["--quiet"]) == 1
    err = capsys.readouterr().err
    assert "run_cfg_5.lime: trajectory 5 is not measured for 'plaquette' but precedes its last " \
           "stored trajectory 40" in err
    # a further observable is added without touching the others
    stats = measure_ensemble([str(p) for p in paths], ["energy_density"], store=store)
    assert stats == {"energy_density": {"measured": 3, "skipped": 0}}


def test_measure_hdf5_store_input(tmp_path):
    """An EnsembleStore as input: its trajectory numbers; the series go into the store itself
    by default; pion with --kappa and --source through the CLI."""
    path = tmp_path / "ens.h5"
    with EnsembleStore(path, "w", nrow=NROW) as st:
        for traj in (100, 105, 110):
            st.append(_config(traj, smooth=True), traj=traj)
    assert main(["measure", "-O", "energy_density", "-O", "pion", "--kappa", "0.1",
                 "--source", "0", "1", "0", "2", "--quiet", str(path)]) == 0
    with EnsembleStore(path, "r") as st:
        assert st.measurement_names == ["energy_density", "pion[kappa=0.1;source=0,1,0,2]"]
        e, trajs = st.measurement("energy_density")
        c, ctrajs = st.measurement("pion[kappa=0.1;source=0,1,0,2]")
        assert trajs.tolist() == ctrajs.tolist() == [100, 105, 110]
        assert c.shape == (3, 4)
        for i in range(3):
            u = st.read(i)[0]
            assert e[i] == float(get_observable("energy_density")(u)[0])
            direct = get_observable("pion")(u, kappa=0.1, source=(0, 1, 0, 2))[0].numpy()
            assert np.allclose(c[i], direct, rtol=1e-13)
            assert len(st) == 3  # configurations untouched
    # into another store, resumably
    other = tmp_path / "other.h5"
    s1 = measure_ensemble([str(path)], ["plaquette"], store=other)
    s2 = measure_ensemble([str(path)], ["plaquette"], store=other)
    assert s1 == {"plaquette": {"measured": 3, "skipped": 0}}
    assert s2 == {"plaquette": {"measured": 0, "skipped": 3}}


def test_measure_errors(tmp_path, capsys):
    _write(tmp_path, (1,))
    cfg = str(tmp_path / "run_cfg_1.lime")
    out = str(tmp_path / "m.h5")
    assert main(["measure", "-O", "plaquet", "-o", out, cfg]) == 1
    err = capsys.readouterr().err
    assert ("qcd-bridge measure: error: observable: unknown name 'plaquet'; known observables: "
            f"{sorted(OBSERVABLES)}") in err
    assert main(["measure", "-O", "pion", "-o", out, cfg]) == 1
    assert "observable 'pion': missing required parameter(s) --kappa" in capsys.readouterr().err
    assert main(["measure", "-O", "plaquette", "--kappa", "0.1", "-o", out, cfg]) == 1
    assert ("parameter(s) kappa (--kappa) not accepted by any chosen observable (plaquette)"
            in capsys.readouterr().err)
    assert main(["measure", "-O", "plaquette", cfg]) == 1
    assert "give the output HDF5 store (-o/--store)" in capsys.readouterr().err
    assert main(["measure", "-O", "plaquette", "-o", out, str(tmp_path / "x_cfg_*.lime")]) == 1
    assert "no file matches" in capsys.readouterr().err
    write_ildg(tmp_path / "plain.lime", _config(3))
    assert main(["measure", "-O", "plaquette", "-o", out, str(tmp_path / "plain.lime")]) == 1
    assert "cannot read a trajectory number from the name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    text = capsys.readouterr().out
    for name in OBSERVABLES:
        assert name in text
    assert "--flow-time" in text and "--kappa" in text


def test_names_and_trajectories():
    assert measurement_name("plaquette", {}) == "plaquette"
    assert measurement_name("topological_charge", {"flow_time": 4.0, "eps": 0.01}) == \
        "topological_charge[eps=0.01;flow_time=4]"
    assert measurement_name("pion", {"kappa": 0.1, "boundary": (1.0, 1.0, 1.0, -1.0)}) == \
        "pion[boundary=1,1,1,-1;kappa=0.1]"
    assert trajectory_from_name("cfgs/R2_b1.0_k0.1_4x4_cfg_1500.lime") == 1500
    assert trajectory_from_name("x_cfg_7.ildg") == 7
    with pytest.raises(ValueError, match="cfg_.lime: cannot read a trajectory number"):
        trajectory_from_name("cfg_.lime")


def test_the_light_name_list_is_the_registry():
    """The command line lists the observables without importing torch; the list is the
    registry's."""
    from bridge.jobs.measure_params import OBSERVABLE_NAMES

    assert sorted(OBSERVABLE_NAMES) == sorted(OBSERVABLES)
