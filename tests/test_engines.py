"""Engine discovery (configuration > environment > PATH > built-in), the reported reason, the
messages for missing executables, and the Chroma engine run through a fake ``hmc`` executable
(a small Python script that mimics Chroma's files, or exits non-zero)."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from bridge.chroma.engines import (
    ENV_CHROMA,
    ENV_HMC,
    ENV_LAUNCHER,
    BuiltinEngine,
    ChromaEngine,
    EngineConfig,
    EngineFailed,
    discover_engine,
    read_hmc_output,
)
from bridge.errors import ConfigError, FormatError

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "data"

# A fake Chroma `hmc`: pure Python (no torch, starts fast).  It reads -i/-o/-l like Chroma,
# copies a template configuration (written by the test with bridge's ILDG writer) to
# <SavePrefix>_cfg_<N>.lime, writes <SavePrefix>_restart_<N>.xml (Cfg -> SZINQIO, StartUpdateNum,
# the seed advanced as Chroma's RNG does) and an output XML with Chroma's element paths.
# spec["mode"]: ok | fail (exit 3) | nowrite (no configuration) | wrongplaq (output XML reports
# another plaquette than the file has).
FAKE_HMC = r'''#!{python}
import json, shutil, sys
import xml.etree.ElementTree as ET
spec = json.load(open({spec!r}))
opts = dict(zip(sys.argv[1::2], sys.argv[2::2]))
with open({calls!r}, "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\n")
if spec["mode"] == "fail":
    sys.stderr.write("QDP:FAIL: fake hmc cannot allocate the lattice\n")
    sys.exit(3)
tree = ET.parse(opts["-i"])
mc = tree.getroot().find("MCControl")
s, n = int(mc.findtext("StartUpdateNum")), int(mc.findtext("NUpdatesThisRun"))
prefix, end = mc.findtext("SavePrefix"), s + n
cfg = "%s_cfg_%d.lime" % (prefix, end)
if spec["mode"] != "nowrite":
    shutil.copyfile(spec["template"], cfg)
el = mc.find("Cfg")
for c in list(el):
    el.remove(c)
ET.SubElement(el, "cfg_type").text = "SZINQIO"
ET.SubElement(el, "cfg_file").text = cfg
mc.find("StartUpdateNum").text = str(end)
seed = mc.find("RNG/Seed/elem")
seed.text = str(int(seed.text) + 1000 * n)
tree.write("%s_restart_%d.xml" % (prefix, end))
plaq = spec["w_plaq"] + (0.01 if spec["mode"] == "wrongplaq" else 0.0)
ups = "".join(
    "<elem><Update><update_no>%d</update_no><WarmUpP>false</WarmUpP><HMCTrajectory>"
    "<WarmUpP>false</WarmUpP><deltaH>0.125</deltaH><AccProb>0.88</AccProb>"
    "<AcceptP>true</AcceptP></HMCTrajectory><seconds_for_trajectory>0.01"
    "</seconds_for_trajectory><InlineObservables><elem><Plaquette><update_no>%d</update_no>"
    "<w_plaq>%r</w_plaq></Plaquette></elem></InlineObservables></Update></elem>"
    % (u, u, plaq) for u in range(s + 1, end + 1))
open(opts["-o"], "w").write(
    "<?xml version='1.0'?><hmc><ProgramInfo><code_version><chroma>3.44.1-fake</chroma>"
    "<qdp>1.46.1</qdp></code_version></ProgramInfo><doHMC><MCUpdates>%s</MCUpdates></doHMC>"
    "</hmc>" % ups)
open(opts["-l"], "w").write("<?xml version='1.0'?><hmc/>")
print("fake hmc: %d updates" % n)
'''


def make_executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def write_fake_chroma(tmp: Path, *, mode: str = "ok", template: Path | None = None,
                      w_plaq: float = 1.0, name: str = "hmc") -> Path:
    """Write ``tmp/bin/<name>`` (a fake Chroma hmc) and its spec ``tmp/fake.json``."""
    spec = tmp / "fake.json"
    set_fake_mode(tmp, mode, template=template, w_plaq=w_plaq)
    (tmp / "bin").mkdir(exist_ok=True)
    return make_executable(tmp / "bin" / name, FAKE_HMC.replace("{python}", sys.executable)
                           .replace("{spec!r}", repr(str(spec)))
                           .replace("{calls!r}", repr(str(tmp / "calls.log"))))


def set_fake_mode(tmp: Path, mode: str, *, template: Path | None = None,
                  w_plaq: float | None = None) -> None:
    spec = tmp / "fake.json"
    old = json.loads(spec.read_text()) if spec.exists() else {}
    old.update({"mode": mode})
    if template is not None:
        old["template"] = str(template)
    if w_plaq is not None:
        old["w_plaq"] = w_plaq
    spec.write_text(json.dumps(old))


def no_path(name: str) -> None:
    return None


# -- discovery order ------------------------------------------------------------------------------
def test_builtin_fallback_when_nothing_is_configured():
    eng = discover_engine(None, env={}, which=no_path)
    assert isinstance(eng, BuiltinEngine)
    assert ENV_HMC in eng.reason and "PATH" in eng.reason
    prov = eng.provenance()
    assert prov["engine"] == "builtin" and prov["reason"] == eng.reason and prov["in_process"]


def test_path_then_env_then_config(tmp_path):
    on_path = make_executable(tmp_path / "hmc", "#!/bin/sh\n")
    in_env = make_executable(tmp_path / "hmc-env", "#!/bin/sh\n")
    in_cfg = make_executable(tmp_path / "hmc-cfg", "#!/bin/sh\n")

    def which(name):
        return str(on_path) if name == "hmc" else None

    eng = discover_engine(None, env={}, which=which)
    assert isinstance(eng, ChromaEngine) and eng.hmc == str(on_path.resolve())
    assert "found on PATH" in eng.reason
    eng = discover_engine("auto", env={ENV_HMC: str(in_env)}, which=which)
    assert eng.hmc == str(in_env.resolve()) and f"{ENV_HMC} = {in_env}" in eng.reason
    eng = discover_engine({"hmc": str(in_cfg)}, env={ENV_HMC: str(in_env)}, which=which)
    assert eng.hmc == str(in_cfg.resolve()) and "configured (engine: hmc" in eng.reason
    # kind builtin wins over everything
    eng = discover_engine("builtin", env={ENV_HMC: str(in_env)}, which=which)
    assert isinstance(eng, BuiltinEngine) and "kind = builtin" in eng.reason


def test_real_environment_and_path(tmp_path, monkeypatch):
    hmc = write_fake_chroma(tmp_path)
    chroma = make_executable(tmp_path / "bin" / "chroma", "#!/bin/sh\n")
    monkeypatch.delenv(ENV_HMC, raising=False)
    monkeypatch.delenv(ENV_CHROMA, raising=False)
    monkeypatch.delenv(ENV_LAUNCHER, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    eng = discover_engine()
    assert isinstance(eng, ChromaEngine) and eng.hmc == str(hmc.resolve())
    assert eng.chroma == str(chroma.resolve())
    assert eng.provenance()["chroma"]["path"] == str(chroma.resolve())
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert isinstance(discover_engine(), BuiltinEngine)


def test_missing_executables_name_the_variable(tmp_path):
    with pytest.raises(ConfigError, match=f"{ENV_HMC} = '/no/such/hmc': no such file; set "
                                          f"{ENV_HMC} to the path"):
        discover_engine(None, env={ENV_HMC: "/no/such/hmc"}, which=no_path)
    with pytest.raises(ConfigError, match=f"{ENV_CHROMA} = 'nochroma': not found on PATH; set "
                                          f"{ENV_CHROMA}"):
        discover_engine("builtin", env={ENV_CHROMA: "nochroma"}, which=no_path)
    with pytest.raises(ConfigError, match=r"engine: hmc = '/x/hmc': no such file; set engine: "
                                          r"hmc"):
        discover_engine({"hmc": "/x/hmc"}, env={}, which=no_path)
    with pytest.raises(ConfigError, match=f"kind = chroma, but Chroma's hmc executable was not "
                                          f"found: set {ENV_HMC}"):
        discover_engine("chroma", env={}, which=no_path)
    plain = tmp_path / "hmc"
    plain.write_text("not executable")
    plain.chmod(0o644)
    with pytest.raises(ConfigError, match=f"{ENV_HMC} = '{plain}': the file is not executable"):
        discover_engine(None, env={ENV_HMC: str(plain)}, which=no_path)


def test_launcher_prefix(tmp_path):
    hmc = make_executable(tmp_path / "hmc", "#!/bin/sh\n")
    mpirun = make_executable(tmp_path / "mpirun", "#!/bin/sh\n")

    def which(name):
        return str(mpirun) if name == "mpirun" else None

    eng = discover_engine(None, env={ENV_HMC: str(hmc), ENV_LAUNCHER: "mpirun -n 4 --bind-to core"},
                          which=which)
    cmd = eng.command(Path("in.xml"), Path("out.xml"), Path("log.xml"))
    assert cmd == [str(mpirun.resolve()), "-n", "4", "--bind-to", "core", str(hmc.resolve()),
                   "-i", "in.xml", "-o", "out.xml", "-l", "log.xml"]
    assert "launcher" in eng.reason and ENV_LAUNCHER in eng.reason
    assert eng.provenance()["launcher"][1:] == ["-n", "4", "--bind-to", "core"]
    with pytest.raises(ConfigError, match=f"{ENV_LAUNCHER} = 'srun': not found on PATH"):
        discover_engine(None, env={ENV_HMC: str(hmc), ENV_LAUNCHER: "srun -n 2"}, which=no_path)
    eng = discover_engine({"launcher": ["mpirun", "-n", "2"]},
                          env={ENV_HMC: str(hmc), ENV_LAUNCHER: "srun"}, which=which)
    assert eng.launcher[1:] == ["-n", "2"]


def test_engine_config_messages():
    with pytest.raises(ConfigError, match=r"wf.json: engine: kind 'quda' is not one of \['auto'"):
        EngineConfig.from_value("quda", where="wf.json: engine")
    with pytest.raises(ConfigError, match=r"engine: unknown keys \['exe'\]"):
        EngineConfig.from_value({"exe": "hmc"})
    with pytest.raises(ConfigError, match="kind 'builtin' with hmc = 'hmc'"):
        EngineConfig.from_value({"kind": "builtin", "hmc": "hmc"})
    with pytest.raises(ConfigError, match="expected one of"):
        EngineConfig.from_value(3)


# -- running the fake Chroma ----------------------------------------------------------------------
def _input(tmp: Path) -> Path:
    from lxml import etree

    tree = etree.parse(str(REFERENCE / "chroma" / "pure_gauge_b5.5_4x4" / "hmc.ini.xml"))
    mc = tree.getroot().find("MCControl")
    mc.find("NUpdatesThisRun").text = "3"
    mc.find("SavePrefix").text = str(tmp / "run" / "pg")
    (tmp / "run").mkdir()
    path = tmp / "run" / "seg.ini.xml"
    tree.write(str(path))
    return path


def test_fake_chroma_runs_through_files(tmp_path):
    import torch

    from bridge.gauge import mesplq, unit_gauge
    from bridge.io.ildg import write_ildg
    from bridge.lattice import Lattice

    u = unit_gauge(Lattice((4, 4, 4, 4)), "SU3", 1, dtype=torch.complex128)
    write_ildg(tmp_path / "template.lime", u)
    hmc = write_fake_chroma(tmp_path, template=tmp_path / "template.lime",
                            w_plaq=float(mesplq(u).w_plaq[0]))
    eng = discover_engine(None, env={ENV_HMC: str(hmc)}, which=no_path)
    inp = _input(tmp_path)
    run = eng.run_hmc(inp, tmp_path / "run" / "seg.out.xml", log_xml=tmp_path / "run" / "seg.log")
    assert run.returncode == 0 and run.command[1:3] == ["-i", str(inp)]
    assert (tmp_path / "run" / "pg_cfg_3.lime").exists()
    assert (tmp_path / "run" / "pg_restart_3.xml").exists()
    assert run.stdout.read_text() == "fake hmc: 3 updates\n"
    records, versions = read_hmc_output(run.output_xml)
    assert [r.update_no for r in records] == [1, 2, 3]
    assert records[0].delta_h == 0.125 and records[0].accepted and records[2].w_plaq == 1.0
    assert versions["chroma"] == "3.44.1-fake"


def test_fake_chroma_nonzero_exit_keeps_input_and_stderr(tmp_path):
    hmc = write_fake_chroma(tmp_path, mode="fail", template=tmp_path / "none.lime")
    eng = discover_engine({"kind": "chroma", "hmc": str(hmc)}, env={}, which=no_path)
    inp = _input(tmp_path)
    with pytest.raises(EngineFailed) as exc:
        eng.run_hmc(inp, tmp_path / "run" / "seg.out.xml")
    msg = str(exc.value)
    assert "exited with status 3" in msg
    assert f"the input XML is kept at {inp}" in msg
    assert f"stderr at {tmp_path / 'run' / 'seg.stderr'}" in msg
    assert "QDP:FAIL: fake hmc cannot allocate the lattice" in msg
    assert inp.exists()
    assert "cannot allocate" in (tmp_path / "run" / "seg.stderr").read_text()


def test_engine_that_cannot_start_or_fails_is_named(tmp_path):
    """One runner for both subprocess engines: a command that cannot be started, and a
    non-zero exit, name the command, the status and the kept input, stdout and stderr."""
    import sys

    from bridge.chroma.engines import ChromaEngine, _run_files

    bad = tmp_path / "hmc"
    bad.write_text("#!/nonexistent/interpreter\n")
    bad.chmod(0o755)
    inp = _input(tmp_path)
    with pytest.raises(EngineFailed, match=rf"chroma: cannot start {bad} -i .*; the input XML "
                                           rf"is kept at {inp}"):
        ChromaEngine(str(bad)).run_hmc(inp, tmp_path / "run" / "seg.out.xml")
    cmd = [sys.executable, "-c", "import sys; print('out'); sys.exit('boom')"]
    with pytest.raises(EngineFailed) as exc:
        _run_files("builtin", cmd, inp, tmp_path)
    msg = str(exc.value)
    assert "exited with status 1" in msg and f"the input XML is kept at {inp}" in msg
    assert f"stdout at {tmp_path / 'run' / 'seg.stdout'}" in msg
    assert msg.endswith("stderr ends with: boom")
    assert (tmp_path / "run" / "seg.stdout").read_text() == "out\n"


def test_read_hmc_output_of_real_chroma():
    out = REFERENCE / "chroma" / "pure_gauge_b5.5_4x4" / "hmc.out.trimmed.xml"
    records, versions = read_hmc_output(out)
    assert versions["chroma"] == "3.44.1"
    assert records[0].update_no == 1 and records[0].warmup
    assert records[0].delta_h == pytest.approx(26.9127421218759)
    assert records[0].w_plaq == pytest.approx(0.805469643555811)


def test_read_hmc_output_errors(tmp_path):
    bad = tmp_path / "out.xml"
    bad.write_text("<hmc><doHMC>")
    with pytest.raises(FormatError, match=f"{bad}: not well-formed XML"):
        read_hmc_output(bad)
    bad.write_text("<?xml version='1.0'?><Params/>")
    with pytest.raises(FormatError, match=f"{bad}: /Params: expected root <hmc>"):
        read_hmc_output(bad)


def test_launcher_prefix_runs_the_fake(tmp_path):
    """The launcher prefix is really used: a fake `mpirun -n 2` that records and execs."""
    import torch

    from bridge.gauge import unit_gauge
    from bridge.io.ildg import write_ildg
    from bridge.lattice import Lattice

    write_ildg(tmp_path / "template.lime",
               unit_gauge(Lattice((4, 4, 4, 4)), "SU3", 1, dtype=torch.complex128))
    hmc = write_fake_chroma(tmp_path, template=tmp_path / "template.lime")
    script = f'#!/bin/sh\nprintf "%s" "$*" > {tmp_path}/launch\nshift 2\nexec "$@"\n'
    launcher = make_executable(tmp_path / "mpirun", script)
    eng = discover_engine(None, env={ENV_HMC: str(hmc), ENV_LAUNCHER: f"{launcher} -n 2"},
                          which=no_path)
    eng.run_hmc(_input(tmp_path), tmp_path / "run" / "seg.out.xml")
    assert (tmp_path / "launch").read_text().startswith(f"-n 2 {hmc.resolve()} -i ")
    assert (tmp_path / "run" / "pg_cfg_3.lime").exists()


@pytest.mark.slow  # a fresh interpreter importing torch: ~3-6 s on a loaded machine
def test_builtin_engine_as_subprocess(tmp_path):
    from lxml import etree

    inp = _input(tmp_path)
    tree = etree.parse(str(inp))
    mc = tree.getroot().find("MCControl")
    mc.find("NUpdatesThisRun").text = "1"
    mc.find("NWarmUpUpdates").text = "0"
    tree.getroot().find("HMCTrj/MDIntegrator/Integrator/n_steps").text = "2"
    tree.write(str(inp))
    eng = discover_engine({"kind": "builtin", "in_process": False}, env={}, which=no_path)
    run = eng.run_hmc(inp, tmp_path / "run" / "seg.out.xml")
    assert run.command[1:4] == ["-m", "bridge.cli", "hmc"]
    assert (tmp_path / "run" / "pg_cfg_1.lime").exists()
    records, versions = read_hmc_output(run.output_xml)
    assert [r.update_no for r in records] == [1] and versions["qcd_bridge"]
