"""Engine discovery: Chroma's executables or the built-in fallback behind one interface.

An :class:`Engine` runs one Chroma ``hmc`` input XML "through files": it reads ``in.xml`` and
writes the output XML, ``<SavePrefix>_cfg_<N>.lime`` and ``<SavePrefix>_restart_<N>.xml``
exactly as Chroma's ``hmc`` does (docs/formats.md section 4.1).  Two implementations:

* :class:`ChromaEngine`: runs ``[launcher...] hmc -i in.xml -o out.xml -l log.xml`` as a
  subprocess in a run directory, stdout and stderr captured to files next to the input.  A
  non-zero exit status is an :class:`EngineFailed` naming the status, the kept input XML and the
  stderr file.
* :class:`BuiltinEngine`: :func:`bridge.chroma.hmc_program.run_hmc` (the Chroma-compatible
  fallback), in process by default or as a subprocess
  ``python -m bridge.cli hmc -i in.xml -o out.xml``.

:func:`discover_engine` picks one, in this order (the first that applies wins):

1. explicit configuration (:class:`EngineConfig`: ``kind``, ``hmc``, ``chroma``, ``launcher``);
2. environment: ``QCD_BRIDGE_CHROMA_HMC`` (Chroma's ``hmc``), ``QCD_BRIDGE_CHROMA`` (Chroma's
   measurement program ``chroma``), ``QCD_BRIDGE_MPI_LAUNCHER`` (a prefix, split like a shell
   does, e.g. ``"mpirun -n 4"``);
3. ``hmc`` / ``chroma`` on ``PATH``;
4. the built-in engine.

The choice and the reason are kept in :attr:`Engine.reason` and in :meth:`Engine.provenance`.
A configured executable that does not exist is a :class:`~bridge.errors.ConfigError` naming
the setting or variable to fix.  Nothing here runs on import.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError, EngineFailed, FormatError

__all__ = [
    "ENV_HMC", "ENV_CHROMA", "ENV_LAUNCHER", "ENGINE_KINDS",
    "EngineConfig", "EngineFailed", "EngineRun", "Engine", "ChromaEngine", "BuiltinEngine",
    "discover_engine", "resolve_executable", "read_hmc_output", "HMCUpdateRecord",
]

ENV_HMC = "QCD_BRIDGE_CHROMA_HMC"
ENV_CHROMA = "QCD_BRIDGE_CHROMA"
ENV_LAUNCHER = "QCD_BRIDGE_MPI_LAUNCHER"
ENGINE_KINDS = ("auto", "chroma", "builtin")

Which = Callable[[str], "str | None"]


@dataclass
class EngineConfig:
    """Explicit engine settings (e.g. a workflow file's ``engine`` entry).

    ``kind``: ``"auto"`` (discover), ``"chroma"`` (Chroma required) or ``"builtin"``.
    ``hmc`` / ``chroma``: paths or command names of Chroma's executables.  ``launcher``: an MPI
    launcher prefix (string, split like a shell does, or list).  ``in_process``: run the built-in
    engine in this process (default) or as a ``python -m bridge.cli hmc`` subprocess.
    ``where``: how to name these settings in messages (e.g. ``"workflow run.json: engine"``)."""

    kind: str = "auto"
    hmc: str | None = None
    chroma: str | None = None
    launcher: str | Sequence[str] | None = None
    in_process: bool = True
    where: str = "engine"

    @classmethod
    def from_value(cls, value: Any, where: str = "engine") -> EngineConfig:
        """From ``None``, a kind string or a mapping with the field names as keys."""
        if value is None:
            return cls(where=where)
        if isinstance(value, str):
            cfg = cls(kind=value, where=where)
        elif isinstance(value, Mapping):
            known = {"kind", "hmc", "chroma", "launcher", "in_process"}
            bad = set(value) - known
            if bad:
                raise ConfigError(f"{where}: unknown keys {sorted(bad)}; expected some of "
                                  f"{sorted(known)}")
            cfg = cls(**dict(value), where=where)
        else:
            raise ConfigError(f"{where}: expected one of {list(ENGINE_KINDS)} or an object with "
                              f"keys kind/hmc/chroma/launcher/in_process, got {value!r}")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check types and the kind (messages name :attr:`where`)."""
        if self.kind not in ENGINE_KINDS:
            raise ConfigError(f"{self.where}: kind {self.kind!r} is not one of "
                              f"{list(ENGINE_KINDS)}")
        for key in ("hmc", "chroma"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, str) or not v):
                raise ConfigError(f"{self.where}: {key}: expected a path or command name, got "
                                  f"{v!r}")
        if self.launcher is not None and not isinstance(self.launcher, (str, list, tuple)):
            raise ConfigError(f"{self.where}: launcher: expected a string like 'mpirun -n 4' or "
                              f"a list of words, got {self.launcher!r}")
        if not isinstance(self.in_process, bool):
            raise ConfigError(f"{self.where}: in_process: expected true or false, got "
                              f"{self.in_process!r}")
        if self.kind == "builtin" and self.hmc is not None:
            raise ConfigError(f"{self.where}: kind 'builtin' with hmc = {self.hmc!r}: the "
                              f"built-in engine runs no executable; use kind 'chroma' or 'auto'")


@dataclass
class EngineRun:
    """What one engine invocation did: the command (for subprocesses), its files and status."""

    command: list[str]
    input_xml: Path
    output_xml: Path
    log_xml: Path | None
    stdout: Path | None
    stderr: Path | None
    returncode: int
    seconds: float


@dataclass
class HMCUpdateRecord:
    """One ``/hmc/doHMC/MCUpdates/elem/Update`` of an hmc output XML (NaN where absent)."""

    update_no: int
    warmup: bool
    delta_h: float = math.nan
    acc_prob: float = math.nan
    accepted: bool | None = None
    w_plaq: float = math.nan
    seconds: float = math.nan


def read_hmc_output(path: str | os.PathLike[str]) -> tuple[list[HMCUpdateRecord], dict[str, str]]:
    """The updates of Chroma's (or the built-in engine's) ``hmc`` output XML and its
    ``ProgramInfo/code_version`` entries (e.g. ``{"chroma": "3.44.1", "qdp": "1.46.1"}``),
    through :func:`bridge.chroma.output.read_output` (element paths of docs/formats.md 4.1;
    a missing, malformed or foreign file is an error naming it)."""
    from .output import read_output

    parsed = read_output(path)
    if parsed.get("program") != "hmc":
        raise FormatError(f"{os.fspath(path)}: expected Chroma's hmc output (root <hmc>), got "
                          f"the output of {parsed.get('program')!r}")
    out = []
    for u in parsed["updates"]:
        plaq = u.get("plaquette") or {}
        secs = u.get("seconds_for_trajectory")
        out.append(HMCUpdateRecord(
            update_no=int(u["update_no"]), warmup=bool(u["warmup"]),
            delta_h=float(u["deltaH"]), acc_prob=float(u["AccProb"]),
            accepted=bool(u["AcceptP"]), w_plaq=float(plaq.get("w_plaq", math.nan)),
            seconds=math.nan if secs is None else float(secs)))
    return out, dict(parsed.get("code_version") or {})


def resolve_executable(value: str, *, setting: str, which: Which = shutil.which) -> str:
    """The absolute path of an executable given as a path or a command name; a missing or
    non-executable one is a :class:`ConfigError` naming ``setting`` (what to set)."""
    if os.sep in value or (os.altsep and os.altsep in value):
        p = Path(value).expanduser()
        if not p.is_file():
            raise ConfigError(f"{setting} = {value!r}: no such file; set {setting} to the path "
                              f"of the executable (or unset it to use the next choice)")
        if not os.access(p, os.X_OK):
            raise ConfigError(f"{setting} = {value!r}: the file is not executable; set "
                              f"{setting} to the path of the executable")
        return str(p.resolve())
    found = which(value)
    if not found:
        raise ConfigError(f"{setting} = {value!r}: not found on PATH; set {setting} to the "
                          f"full path of the executable")
    return str(Path(found).resolve())


def _exe_info(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return {"path": path}
    return {"path": path, "size": st.st_size,
            "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))}


def _run_files(name: str, cmd: list[str], inp: Path, cwd: Path,
               env: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """Run ``cmd`` in ``cwd`` with stdout and stderr in ``<input stem>.stdout`` / ``.stderr``
    next to the input XML; returns those paths.  A command that cannot start or exits non-zero
    is an :class:`EngineFailed` naming the status, the kept input XML, both files and the end
    of stderr."""
    stem = inp.name.removesuffix(".xml").removesuffix(".ini")
    stdout, stderr = inp.with_name(f"{stem}.stdout"), inp.with_name(f"{stem}.stderr")
    with open(stdout, "wb") as fo, open(stderr, "wb") as fe:
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                  env=None if env is None else dict(env), check=False)
        except OSError as exc:
            raise EngineFailed(f"{name}: cannot start {shlex.join(cmd)} ({exc}); the input XML "
                               f"is kept at {inp}") from exc
    if proc.returncode != 0:
        tail = stderr.read_bytes()[-2000:].decode(errors="replace").strip()
        raise EngineFailed(
            f"{name}: {shlex.join(cmd)} exited with status {proc.returncode}; the input XML is "
            f"kept at {inp}, stderr at {stderr}, stdout at {stdout}"
            + (f"; stderr ends with: {tail}" if tail else ""))
    return stdout, stderr


class Engine(ABC):
    """Runs a Chroma ``hmc`` input XML through files (module docstring)."""

    name: str = "engine"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.versions: dict[str, str] = {}

    @abstractmethod
    def run_hmc(self, input_xml: str | os.PathLike[str], output_xml: str | os.PathLike[str],
                *, log_xml: str | os.PathLike[str] | None = None,
                workdir: str | os.PathLike[str] | None = None) -> EngineRun:
        """Run the input; raise :class:`EngineFailed` when the engine reports failure."""

    def provenance(self) -> dict[str, Any]:
        """What ran and why: engine name, reason, executables, versions (where known)."""
        return {"engine": self.name, "reason": self.reason, "versions": dict(self.versions),
                "qcd_bridge": __version__, "python": sys.version.split()[0]}

    def describe(self) -> str:
        """One line for progress output."""
        return f"engine: {self.name} ({self.reason})"


class ChromaEngine(Engine):
    """Chroma's ``hmc`` (and ``chroma``) executables, optionally behind an MPI launcher."""

    name = "chroma"

    def __init__(self, hmc: str, *, chroma: str | None = None,
                 launcher: Sequence[str] = (), reason: str = "") -> None:
        super().__init__(reason)
        self.hmc, self.chroma, self.launcher = hmc, chroma, list(launcher)

    def command(self, input_xml: Path, output_xml: Path, log_xml: Path) -> list[str]:
        """``[launcher...] hmc -i in.xml -o out.xml -l log.xml``."""
        return [*self.launcher, self.hmc, "-i", str(input_xml), "-o", str(output_xml),
                "-l", str(log_xml)]

    def run_hmc(self, input_xml: str | os.PathLike[str], output_xml: str | os.PathLike[str],
                *, log_xml: str | os.PathLike[str] | None = None,
                workdir: str | os.PathLike[str] | None = None) -> EngineRun:
        inp, out = Path(input_xml), Path(output_xml)
        log = Path(log_xml) if log_xml is not None else out.with_name(
            out.name.replace(".out.xml", "") + ".log.xml")
        cwd = Path(workdir) if workdir is not None else inp.parent
        cmd = self.command(inp, out, log)
        t0 = time.perf_counter()
        stdout, stderr = _run_files(self.name, cmd, inp, cwd)
        return EngineRun(cmd, inp, out, log, stdout, stderr, 0, time.perf_counter() - t0)

    def provenance(self) -> dict[str, Any]:
        p = super().provenance()
        p.update({"hmc": _exe_info(self.hmc), "chroma": _exe_info(self.chroma),
                  "launcher": list(self.launcher)})
        return p


class BuiltinEngine(Engine):
    """The built-in, Chroma-compatible ``hmc`` (:func:`bridge.chroma.hmc_program.run_hmc`)."""

    name = "builtin"

    def __init__(self, *, in_process: bool = True, chroma: str | None = None,
                 device: str | None = None, reason: str = "") -> None:
        super().__init__(reason)
        self.in_process, self.chroma, self.device = in_process, chroma, device
        import torch

        self.versions = {"qcd_bridge": __version__, "torch": torch.__version__}

    def command(self, input_xml: Path, output_xml: Path) -> list[str]:
        """The equivalent command line (what the subprocess mode runs)."""
        cmd = [sys.executable, "-m", "bridge.cli", "hmc", "-i", str(input_xml), "-o",
               str(output_xml), "--quiet"]
        return cmd + (["--device", self.device] if self.device else [])

    def run_hmc(self, input_xml: str | os.PathLike[str], output_xml: str | os.PathLike[str],
                *, log_xml: str | os.PathLike[str] | None = None,
                workdir: str | os.PathLike[str] | None = None) -> EngineRun:
        inp, out = Path(input_xml), Path(output_xml)
        cmd = self.command(inp, out)
        t0 = time.perf_counter()
        if self.in_process:
            from .hmc_input import read_hmc_input
            from .hmc_program import run_hmc

            run_hmc(read_hmc_input(inp), out, device=self.device, progress=False)
            return EngineRun(cmd, inp, out, None, None, None, 0, time.perf_counter() - t0)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        cwd = Path(workdir) if workdir is not None else inp.parent
        stdout, stderr = _run_files(self.name, cmd, inp, cwd, env)
        return EngineRun(cmd, inp, out, None, stdout, stderr, 0, time.perf_counter() - t0)

    def provenance(self) -> dict[str, Any]:
        p = super().provenance()
        p.update({"in_process": self.in_process, "device": self.device,
                  "chroma": _exe_info(self.chroma),
                  "command": ("bridge.chroma.hmc_program.run_hmc" if self.in_process
                              else "python -m bridge.cli hmc")})
        return p


@dataclass
class _Pick:
    value: str | None = None
    setting: str = ""
    how: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _pick(cfg_value: str | None, cfg_setting: str, env_name: str, path_name: str,
          env: Mapping[str, str], which: Which) -> _Pick:
    """Configuration > environment > PATH for one executable (resolved to a path)."""
    if cfg_value is not None:
        return _Pick(resolve_executable(cfg_value, setting=cfg_setting, which=which),
                     cfg_setting, f"configured ({cfg_setting} = {cfg_value})")
    raw = env.get(env_name)
    if raw:
        return _Pick(resolve_executable(raw, setting=env_name, which=which), env_name,
                     f"from the environment ({env_name} = {raw})")
    found = which(path_name)
    if found:
        return _Pick(str(Path(found).resolve()), "PATH", f"'{path_name}' found on PATH at "
                     f"{found}")
    return _Pick()


def _launcher(cfg: EngineConfig, env: Mapping[str, str], which: Which) -> tuple[list[str], str]:
    if cfg.launcher is not None:
        words = shlex.split(cfg.launcher) if isinstance(cfg.launcher, str) else \
            [str(w) for w in cfg.launcher]
        setting = f"{cfg.where}: launcher"
    elif env.get(ENV_LAUNCHER):
        words, setting = shlex.split(env[ENV_LAUNCHER]), ENV_LAUNCHER
    else:
        return [], ""
    if not words:
        return [], ""
    words[0] = resolve_executable(words[0], setting=setting, which=which)
    return words, f"launcher {shlex.join(words)} ({setting})"


def discover_engine(
    config: EngineConfig | Mapping[str, Any] | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    which: Which = shutil.which,
    device: str | None = None,
) -> Engine:
    """Choose the engine (order in the module docstring); ``env`` defaults to ``os.environ``,
    ``which`` to :func:`shutil.which` (both injectable for tests).  The returned engine's
    :attr:`~Engine.reason` says what was chosen and why."""
    cfg = config if isinstance(config, EngineConfig) else EngineConfig.from_value(config)
    cfg.validate()
    env = os.environ if env is None else env
    chroma = _pick(cfg.chroma, f"{cfg.where}: chroma", ENV_CHROMA, "chroma", env, which)
    if cfg.kind == "builtin":
        return BuiltinEngine(in_process=cfg.in_process, chroma=chroma.value, device=device,
                             reason=f"configured ({cfg.where}: kind = builtin)")
    hmc = _pick(cfg.hmc, f"{cfg.where}: hmc", ENV_HMC, "hmc", env, which)
    if hmc.value is None:
        if cfg.kind == "chroma":
            raise ConfigError(
                f"{cfg.where}: kind = chroma, but Chroma's hmc executable was not found: set "
                f"{ENV_HMC} (or '{cfg.where}: hmc') to its path, or put 'hmc' on PATH")
        return BuiltinEngine(
            in_process=cfg.in_process, chroma=chroma.value, device=device,
            reason=f"built-in fallback: {ENV_HMC} is not set and no 'hmc' on PATH")
    launcher, lreason = _launcher(cfg, env, which)
    reason = hmc.how + (f"; {lreason}" if lreason else "")
    return ChromaEngine(hmc.value, chroma=chroma.value, launcher=launcher, reason=reason)
