"""The HDF5 ensemble store: configurations with metadata, measurement series usable by pyerrors
without glue, appending, resuming after an interrupted append, integrity checks."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pyerrors as pe
import pytest
import torch

from bridge.errors import ChecksumError, FormatError
from bridge.gauge import random_gauge
from bridge.io import EnsembleStore, read_gauge
from bridge.lattice import Lattice

NROW = (4, 2, 2, 4)


def _field(seed: int) -> torch.Tensor:
    return random_gauge(Lattice(NROW), "SU3", generator=torch.Generator().manual_seed(seed))


def test_configs_with_metadata_and_reopen(tmp_path):
    path = tmp_path / "ens.h5"
    gen = torch.Generator().manual_seed(99)
    state = gen.get_state()
    fields = [_field(s) for s in range(3)]
    with EnsembleStore(path, "a", nrow=NROW, ensemble="b5.5", replica="r1") as store:
        for k, u in enumerate(fields):
            store.append(u, traj=100 + 10 * k, accepted=k != 1, weight=0.5 * (k + 1),
                         params={"beta": 5.5, "tau0": 1.0, "n_steps": 10},
                         seed=[11, 11, 11, k], rng_state=state)
        assert len(store) == 3 and store.last_traj == 120
    with EnsembleStore(path, "r") as store:
        assert store.ensemble == "b5.5" and store.replica == "r1" and store.nrow == NROW
        assert store.trajectories.tolist() == [100, 110, 120]
        u, meta = store.read(1)
        assert torch.equal(u, fields[1])
        assert meta["traj"] == 110 and meta["accepted"] is False and meta["weight"] == 1.0
        assert meta["params"] == {"beta": 5.5, "n_steps": 10, "tau0": 1.0}
        assert meta["seed"] == [11, 11, 11, 1]
        restored = torch.Generator()
        restored.set_state(torch.tensor(list(meta["rng_state"]), dtype=torch.uint8))
        assert torch.equal(torch.rand(3, generator=restored), torch.rand(3, generator=gen))
        u, meta = store.read(traj=120)
        assert torch.equal(u, fields[2])
        with pytest.raises(KeyError, match="no configuration with trajectory 105"):
            store.read(traj=105)
        with pytest.raises(ValueError, match="read-only"):
            store.append(fields[0], traj=200)


def test_measurements_work_with_pyerrors_directly(tmp_path):
    path = tmp_path / "ens.h5"
    rng = np.random.default_rng(1)
    trajs = np.arange(10, 610, 10)
    plaq = 0.5 + 0.01 * rng.standard_normal(trajs.size)
    with EnsembleStore(path, "a", nrow=NROW) as store:
        store.append_measurement("w_plaq", trajs[:30], plaq[:30])
        for t, v in zip(trajs[30:], plaq[30:], strict=True):  # one at a time, appended
            store.append_measurement("w_plaq", int(t), float(v))
        store.append_measurement("poly", trajs[:5], rng.standard_normal((5, 4, 2)))
    with EnsembleStore(path, "r") as store:
        values, idl = store.measurement("w_plaq")
        assert np.array_equal(idl, trajs) and np.array_equal(values, plaq)
        # exactly the call the documentation promises, no glue:
        obs = pe.Obs([values], ["ens|r0"], idl=[idl])
        obs.gamma_method()
        assert obs.value == pytest.approx(plaq.mean(), abs=1e-15)
        assert obs.idl["ens|r0"] == range(10, 610, 10)
        o2 = store.obs("w_plaq")
        assert o2.value == obs.value and o2.names == ["ens|r0"]
        o3 = store.obs("poly", (1, 0))
        assert o3.value == pytest.approx(store.measurement("poly")[0][:, 1, 0].mean())
        assert store.measurement_names == ["poly", "w_plaq"]
        with pytest.raises(ValueError, match="give the component index"):
            store.obs("poly")


def test_append_rules(tmp_path):
    path = tmp_path / "ens.h5"
    with EnsembleStore(path, "a") as store:  # nrow taken from the first configuration
        store.append(_field(0), traj=5)
        with pytest.raises(ValueError, match="traj: 5 is not after the last stored trajectory 5"):
            store.append(_field(1), traj=5)
        with pytest.raises(ValueError, match="lattice 4 4 4 4 differs from the store's 4 2 2 4"):
            store.append(random_gauge(Lattice((4, 4, 4, 4)), "SU3"), traj=6)
        store.append_measurement("m", 1, 0.0)
        with pytest.raises(ValueError, match="1 is not after the last trajectory 1"):
            store.append_measurement("m", 1, 0.0)
        with pytest.raises(ValueError, match=r"shape \(2,\) per trajectory"):
            store.append_measurement("m", 2, [0.0, 1.0])
    with pytest.raises(FormatError, match="disagrees with the requested nrow 4 4 4 4"):
        EnsembleStore(path, "a", nrow=(4, 4, 4, 4))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        EnsembleStore(path, "w")


def test_resume_after_interrupted_append(tmp_path, monkeypatch):
    path = tmp_path / "ens.h5"
    with EnsembleStore(path, "a", nrow=NROW) as store:
        store.append(_field(0), traj=1)
        store.append(_field(1), traj=2)
    # crash in the middle of the third append: links resized and partly written, no commit
    import bridge.io.hdf5 as h5mod

    original = h5mod._rng_bytes

    def crash(state):
        raise KeyboardInterrupt("killed")

    with EnsembleStore(path, "a") as store:
        monkeypatch.setattr(h5mod, "_rng_bytes", crash)
        g = store._h5["configs"]
        g["links"].resize(3, axis=0)
        g["links"][2, 0, 0] = 7.0
        g["traj"].resize(3, axis=0)
        g["traj"][2] = 3
        with pytest.raises(KeyboardInterrupt):
            store.append(_field(2), traj=3)
        monkeypatch.setattr(h5mod, "_rng_bytes", original)
    with h5py.File(path, "r") as f:  # the residue is on disk ...
        assert f["configs/links"].shape[0] == 3 and f.attrs["n_configs"] == 2
    with EnsembleStore(path, "r") as store:  # ... but ignored
        assert len(store) == 2 and store.last_traj == 2
    with EnsembleStore(path, "a") as store:  # and truncated when resuming
        assert store._h5["configs/links"].shape[0] == 2
        store.append(_field(2), traj=store.last_traj + 1)
    with EnsembleStore(path, "r") as store:
        assert store.trajectories.tolist() == [1, 2, 3]
        assert torch.equal(store.read(2)[0], _field(2))


def test_corruption_is_detected(tmp_path):
    path = tmp_path / "ens.h5"
    with EnsembleStore(path, "a", nrow=NROW) as store:
        store.append(_field(0), traj=1)
    with h5py.File(path, "r") as f:
        info = f["configs/links"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[info.byte_offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"ens\.h5', dataset '/configs/links', configuration "
                                            r"0, mu 0, t 0: .*Fletcher-32"):
        read_gauge(path)


def test_not_a_store(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(FormatError, match=r"other\.h5', attribute '/format': None, expected "
                                          r"'qcd-bridge-ensemble'"):
        read_gauge(path)
    empty = tmp_path / "empty.h5"
    EnsembleStore(empty, "a").close()
    with pytest.raises(FormatError, match="no configurations stored"):
        read_gauge(empty)


def test_weight_default_is_nan(tmp_path):
    with EnsembleStore(tmp_path / "e.h5", "a") as store:
        store.append(_field(0), traj=0)
        assert math.isnan(store.metadata(0)["weight"])
        assert store.metadata(0)["seed"] is None and store.metadata(0)["rng_state"] == b""
        store.append(_field(1), traj=1, weight=0.25)
        w = store.weights
        assert w.shape == (2,) and math.isnan(w[0]) and w[1] == 0.25
    with EnsembleStore(tmp_path / "n.h5", "a") as store:  # no configurations yet
        assert store.weights.shape == (0,) and store.trajectories.shape == (0,)


def test_is_hdf5_and_chain_files(tmp_path):
    from bridge.io.chains import is_chain_file, read_chain, read_chain_observables
    from bridge.io.hdf5 import is_hdf5

    with EnsembleStore(tmp_path / "s.h5", "a") as store:
        store.append(_field(0), traj=0)
    (tmp_path / "t.txt").write_text("not hdf5")
    assert is_hdf5(tmp_path / "s.h5") and not is_hdf5(tmp_path / "t.txt")
    assert not is_hdf5(tmp_path / "missing.h5")
    assert not is_chain_file(tmp_path / "s.h5") and not is_chain_file(tmp_path / "t.txt")
    with pytest.raises(FormatError, match=r"s\.h5', attribute '/format': 'qcd-bridge-ensemble', "
                                          r"expected 'qcd-bridge-chain'"):
        read_chain(tmp_path / "s.h5")
    # a minimal chain file: 3 committed cycles of 2 chains (a fourth uncommitted), therm 1
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.attrs.update({"format": "qcd-bridge-chain", "version": 1, "n_cycles": 3, "therm": 1,
                        "n_records": 0, "n_fields": 0, "n_chains": 2, "chain_offset": 4,
                        "nrow": [4, 4], "group": "U1", "kernels": '["hmc"]'})
        f["observables/cycle"] = np.arange(1, 5)
        f["observables/plaquette"] = np.arange(8.0).reshape(4, 2)
        f["records/kernel"] = np.zeros(0, dtype=np.int8)
        f["fields/cycle"] = np.zeros(0, dtype=np.int64)
    assert is_chain_file(tmp_path / "c.h5")
    data = read_chain(tmp_path / "c.h5")
    assert data["observables"]["plaquette"].shape == (3, 2) and data["records"]["kernel"] == []
    cols, meta = read_chain_observables(tmp_path / "c.h5")
    assert cols["cycle"].tolist() == [2, 3]
    assert cols["plaquette"].tolist() == [[2.0, 3.0], [4.0, 5.0]]
    assert meta == {"nrow": [4, 4], "group": "U1", "ensemble": "chain", "replica": "c4-c5",
                    "therm": 1, "chain_offset": 4}
