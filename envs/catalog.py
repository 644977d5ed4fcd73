"""Names that make generic action/observation spaces readable, for well-known gymnasium envs.

An entry only names things (tool, parameters, action labels, observation keys) and sets the text
precision; everything else comes from the space itself. An env that is not listed still works: it
gets the tool ``act`` and observation keys ``o0``, ``o1``, ...

Any env can be named once, in a small YAML file that every stage reads (``tickcall run``, ``eval``,
``record``, ``train``: they all bind envs through ``envs.binding.make_binding``)::

    MyCar-v0:
      tool: steer
      description: "Steer and throttle, each {low} to {high}."   # {low}/{high}: the bound action space's
      params:                                                     # one per action entry (<= 6)
        - {name: angle, description: "steering angle, rad (negative: left)"}
        - {name: throttle}
      labels: null                 # Discrete spaces: one name per action, e.g. [left, none, right]
      obs:                         # one per observation entry, in order
        - {name: x, unit: m, description: position}
        - {name: v, unit: m/s}
      precision: 3
      noop: 0.0                    # the fallback action (rejected calls)

An env may also carry its own entry, the same dict, as ``metadata["tickcall"]`` (used when the
catalog has none for its id). ``load_catalog(path)`` adds its entries (``TICKCALL_ENV_CATALOG=a.yaml:b.yaml`` loads files in every
process, the real-time comparison's teacher process included). Units and descriptions of the
observation go into the tool description (``Observation: x position (m), v (m/s).``): the tool prefix
is prefilled once per registration, so the legend costs nothing per tick, and the per-tick text stays
``x=+0.012 v=-0.340``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EnvEntry:
    """How a gymnasium env is offered to a model.

    ``noop`` is the fallback action when a call is rejected (None: the space's lowest/zero action).
    """

    tool: str = "act"
    description: str = ""  # may hold {low} and {high}: the bounds of the action space as bound
    param_names: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    obs_names: tuple[str, ...] | None = None
    precision: int = 3
    noop: Any = None
    param_descriptions: tuple[str, ...] | None = None  # one per parameter ("" for none)
    obs_units: tuple[str, ...] | None = None  # one per observation entry ("" for none)
    obs_descriptions: tuple[str, ...] | None = None

    def obs_legend(self) -> str:
        """``Observation: x position (m), v (m/s).`` ("" when no unit or description is given)."""
        if not self.obs_names or not (self.obs_units or self.obs_descriptions):
            return ""
        units = self.obs_units or ("",) * len(self.obs_names)
        descs = self.obs_descriptions or ("",) * len(self.obs_names)
        items = [" ".join(p for p in (n, d, f"({u})" if u else "") if p)
                 for n, u, d in zip(self.obs_names, units, descs, strict=True)]
        return "Observation: " + ", ".join(items) + "."


CATALOG: dict[str, EnvEntry] = {
    "CartPole-v1": EnvEntry(
        tool="push", description="Push the cart to the left or to the right.",
        param_names=("direction",), labels=("left", "right"),
        obs_names=("x", "v", "a", "w"), precision=3),
    "MountainCar-v0": EnvEntry(
        tool="push", description="Accelerate the car left, not at all, or right.",
        param_names=("direction",), labels=("left", "none", "right"),
        obs_names=("x", "v"), precision=3, noop=1),
    "MountainCarContinuous-v0": EnvEntry(
        tool="thrust", description="Engine force, {low} (full left) to {high} (full right).",
        param_names=("force",), obs_names=("x", "v"), precision=3, noop=0.0),
    "Pendulum-v1": EnvEntry(
        tool="torque", description="Torque on the pendulum joint, {low} to {high}.",
        param_names=("value",), obs_names=("cos", "sin", "w"), precision=3, noop=0.0),
    "Acrobot-v1": EnvEntry(
        tool="torque", description="Torque on the middle joint: negative, none or positive.",
        param_names=("direction",), labels=("neg", "none", "pos"),
        obs_names=("c1", "s1", "c2", "s2", "w1", "w2"), precision=3, noop=1),
    "LunarLander-v3": EnvEntry(
        tool="engine", description="Fire one engine for this step (or none).",
        param_names=("fire",), labels=("none", "left", "main", "right"),
        obs_names=("x", "y", "vx", "vy", "a", "w", "l", "r"), precision=2, noop=0),
    "LunarLanderContinuous-v3": EnvEntry(
        tool="engines", description="Main engine (-1..1, on above 0) and side engines (-1 left .. 1 right).",
        param_names=("main", "lateral"), obs_names=("x", "y", "vx", "vy", "a", "w", "l", "r"),
        precision=2, noop=0.0),
    "BipedalWalker-v3": EnvEntry(
        tool="motors", description="Torques of the four joints, {low} to {high}.",
        param_names=("hip1", "knee1", "hip2", "knee2"), precision=2, noop=0.0),
}


CATALOG_ENV_VAR = "TICKCALL_ENV_CATALOG"
_loaded_from_env: str | None = None


def entry_for(env_id: str | None) -> EnvEntry:
    """The catalog entry of an env id (versions must match), or the generic default."""
    _load_from_env()
    return CATALOG.get(env_id or "", EnvEntry())


def load_catalog(path: str | Path) -> dict[str, EnvEntry]:
    """Read a catalog YAML (see the module docstring) and add its entries to ``CATALOG`` (an entry
    for an env already there replaces it); returns them. ValueError naming the env and key on a
    mistake (unknown key, names and units of different lengths, more than 6 parameters)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a catalog is a mapping env id -> entry")
    entries = {str(env_id): entry_from_dict(str(env_id), spec or {}) for env_id, spec in data.items()}
    CATALOG.update(entries)
    return entries


_KEYS = {"tool", "description", "params", "labels", "obs", "precision", "noop"}


def entry_from_dict(env_id: str, d: dict[str, Any]) -> EnvEntry:
    """One YAML entry -> ``EnvEntry`` (checked)."""
    bad = set(d) - _KEYS
    if bad:
        raise ValueError(f"{env_id}: unknown catalog keys {', '.join(sorted(bad))} (known: {', '.join(sorted(_KEYS))})")
    params = [_named(env_id, "params", p) for p in d.get("params") or []]
    obs = [_named(env_id, "obs", o) for o in d.get("obs") or []]
    if len(params) > 6:
        raise ValueError(f"{env_id}: {len(params)} params; a tool carries at most 6 (name fewer: the space "
                         "then travels as one parameter)")
    labels = d.get("labels")
    return EnvEntry(
        tool=str(d.get("tool", "act")), description=str(d.get("description", "")),
        param_names=tuple(p["name"] for p in params) or None, labels=tuple(map(str, labels)) if labels else None,
        obs_names=tuple(o["name"] for o in obs) or None, precision=int(d.get("precision", 3)),
        noop=d.get("noop"),
        param_descriptions=tuple(p.get("description", "") for p in params) if any(
            "description" in p for p in params) else None,
        obs_units=tuple(o.get("unit", "") for o in obs) if any("unit" in o for o in obs) else None,
        obs_descriptions=tuple(o.get("description", "") for o in obs) if any(
            "description" in o for o in obs) else None)


def _named(env_id: str, key: str, item: Any) -> dict[str, str]:
    if isinstance(item, str):
        return {"name": item}
    if not isinstance(item, dict) or "name" not in item or set(item) - {"name", "unit", "description"}:
        raise ValueError(f"{env_id}: each of {key} is a name or {{name, unit, description}}, not {item!r}")
    return {k: str(v) for k, v in item.items()}


def _load_from_env() -> None:
    """Load the files of ``TICKCALL_ENV_CATALOG`` (``:``-separated) once per value of the variable."""
    global _loaded_from_env
    paths = os.environ.get(CATALOG_ENV_VAR, "")
    if paths == (_loaded_from_env or "") or not paths:
        return
    _loaded_from_env = paths
    for p in paths.split(os.pathsep):
        if p:
            load_catalog(p)
