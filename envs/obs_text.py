"""Observation -> compact text for the per-tick turn: ``key=value`` pairs, fixed precision.

The text is prefilled every tick, so it stays short: one pair per observation entry, separated by
single spaces, numbers with a fixed number of decimals and an explicit sign (``x=+0.012``), so the
same quantity always has the same shape and a small model can read it digit by digit. The format
itself (numbers, booleans, pairs) is ``models.prompt_text``'s, shared with training, the engine
bridge and the policy service; this module only flattens a gymnasium observation into named values.

Invariant: the same observation always renders to the same string (no locale, no time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tickcall.models.prompt_text import fmt_number, fmt_value, render_pairs

__all__ = ["ObsFormatter", "fmt_number"]


@dataclass
class ObsFormatter:
    """Formats a gymnasium observation as ``key=value`` text.

    Args:
        names: names of the flattened observation entries (default ``o0``, ``o1``, ...; the keys
            of a Dict observation, each flattened as ``key`` or ``key0``.. when it has several).
        precision: decimals for floats (integer-typed entries print without decimals, booleans
            ``true``/``false``).
        signed: write an explicit ``+`` on non-negative numbers.
        units: optional unit suffix per name (``{"angle": "rad"}`` -> ``angle=+0.100rad``).
        max_values: refuse observations with more values than this (images are not text).
    """

    names: Sequence[str] | None = None
    precision: int = 3
    signed: bool = True
    units: Mapping[str, str] = field(default_factory=dict)
    max_values: int = 64

    def pairs(self, obs: Any) -> list[tuple[str, str]]:
        """The (name, formatted value) pairs of an observation."""
        flat: list[tuple[str, Any, bool]] = []
        _flatten("", obs, flat)
        if len(flat) > self.max_values:
            raise ValueError(f"the observation has {len(flat)} values; the per-tick text needs a small "
                             f"vector (at most {self.max_values}): give make_binding an obs_formatter "
                             "(or wrap the env to extract features), or raise max_values")
        if self.names is not None:
            if len(self.names) != len(flat):
                raise ValueError(f"{len(self.names)} observation names for {len(flat)} values")
            flat = [(n, v, i) for n, (_, v, i) in zip(self.names, flat, strict=True)]
        out = []
        for i, (name, value, is_int) in enumerate(flat):
            key = name or f"o{i}"
            text = fmt_value(value, None if is_int else self.precision, self.signed)
            out.append((key, text + self.units.get(key, "")))
        return out

    def __call__(self, obs: Any) -> str:
        return render_pairs(self.pairs(obs))


def _flatten(prefix: str, obs: Any, out: list[tuple[str, Any, bool]]) -> None:
    if isinstance(obs, Mapping):
        for k, v in obs.items():
            _flatten(f"{prefix}{k}", v, out)
        return
    if isinstance(obs, tuple):
        for i, v in enumerate(obs):
            _flatten(f"{prefix}{i}" if prefix else "", v, out)
        return
    arr = np.asarray(obs)
    is_int = np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_
    flat = arr.reshape(-1)
    if flat.size == 1:
        out.append((prefix, flat[0], is_int))
    else:
        for i, v in enumerate(flat):
            out.append((f"{prefix}{i}" if prefix else "", v, is_int))
