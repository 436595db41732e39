"""The project's exception types.  Every message names the file/record/argument, the value found
and what was expected; tests check the messages."""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "FormatError",
    "ChecksumError",
    "ConvergenceError",
    "ConfigError",
    "PhysicsError",
    "EngineFailed",
]


class BridgeError(Exception):
    """Base class of all qcd-bridge errors."""


class FormatError(BridgeError, ValueError):
    """A file does not follow its format (truncated, wrong magic, bad record, ...)."""


class ChecksumError(FormatError):
    """A stored checksum, plaquette or link trace disagrees with the data."""


class ConvergenceError(BridgeError, RuntimeError):
    """An iterative solver did not reach its target residual."""


class ConfigError(BridgeError, ValueError):
    """An input file (e.g. Chroma XML) asks for something unsupported or malformed."""


class PhysicsError(BridgeError, FloatingPointError):
    """A field or force became NaN/Inf, or a parameter makes the physics ill-defined."""


class EngineFailed(BridgeError, RuntimeError):
    """An engine (Chroma or the built-in one) did not do what was asked: a non-zero exit status,
    or an expected output file (configuration, restart XML, output XML) that it did not write."""
