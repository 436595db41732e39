"""The wheel built from the repository ships the Chroma XML templates (top-level xml_templates/,
installed as bridge.xml_templates): installed into a fresh virtual environment, it loads and
renders every template without the source tree."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RENDER = r"""
import bridge, bridge.chroma.templates as T
from bridge.chroma.params import hmc_params_from_dict, measure_params_from_dict
from bridge.chroma.schema import structure_problems
assert "site-packages" in bridge.__file__, bridge.__file__
names = [n for n in T.TEMPLATE_FILES if T.load_template(n) is not None]
hmc = T.render_hmc(hmc_params_from_dict({"nrow": [4, 4, 4, 8], "beta": 5.5, "kappa": 0.12,
                                          "fermion": "clover", "csw": 1.1}))
assert not structure_problems(hmc)
meas = T.render_measure(measure_params_from_dict({"nrow": [4, 4, 4, 8], "cfg": "c.lime",
                                                  "kappa": 0.12, "wilson_flow": 1.0}))
assert not structure_problems(meas)
print(len(names), len(T.TEMPLATE_FILES), hmc.tag, meas.tag)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX virtual-environment layout")
def test_wheel_installs_and_renders_every_template(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)], capture_output=True, text=True)
    if build.returncode != 0 and "No module named pip" in build.stderr:
        pytest.skip("pip is not available to build the wheel")
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("qcd_bridge-*.whl")
    env_dir = tmp_path / "venv"
    # the installed dependencies (lxml, torch, ...) come from the running interpreter's site
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert sum(n.startswith("bridge/xml_templates/") and n.endswith(".xml")
                   for n in names) == len(list((REPO / "xml_templates").glob("*.xml")))
        zf.extractall(site)  # a wheel is a zip laid out for site-packages
    out = subprocess.run([str(py), "-I", "-c", RENDER], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    n_ok, n_all, hmc, meas = out.stdout.split()
    assert n_ok == n_all and int(n_all) >= 10 and (hmc, meas) == ("Params", "chroma")
