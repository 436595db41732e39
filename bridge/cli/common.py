"""Small pieces shared by the command modules; nothing heavy is imported here."""

from __future__ import annotations

from typing import Any

__all__ = ["GROUP_CHOICES", "given"]

# the settings keys of the gauge groups (bridge.flows.checkpoints.GROUPS; a test keeps them
# equal) spelled out so that building the parser imports no torch
GROUP_CHOICES = ("su2", "su3", "u1")


def given(args: Any, keys: list[str]) -> dict[str, Any]:
    """The options of ``args`` among ``keys`` that were given: not None and not False."""
    out = {}
    for key in keys:
        v = getattr(args, key, None)
        if v is not None and v is not False:
            out[key] = v
    return out
