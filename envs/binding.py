"""``EnvBinding``: one env with its tools, its observation text and call -> action conversion.

    from tickcall.envs.binding import make_binding
    b = make_binding("CartPole-v1")            # or an env instance, or "tickcall/Arena-v0"
    b.tools                                     # OpenAI-style tool dicts for Engine.register
    obs, info = b.env.reset(seed=0)
    b.obs_text(obs)                             # 'x=+0.012 v=-0.340 a=+0.021 w=+0.551'
    r = b.call_to_action(Call("push", {"direction": "left"}))
    r.status, r.action                          # 'ok', 0   ('clipped' / 'rejected' with r.reason)
    b.counts                                    # {'calls': 1, 'ok': 1, 'clipped': 0, 'rejected': 0}

Two kinds of env:

* **semantic** envs (the built-in Arena) declare their own tools through ``tickcall_tools()``,
  ``action_from_call(call) -> (action, clipped)``, ``call_from_action(action)``, ``noop_action()`` and
  ``obs_text(obs)`` on the unwrapped env; the binding validates each call against the tool schema
  (``models.tools.validate_arguments``) before handing it to the env;
* any other gymnasium env gets one tool derived from its action space (``envs.spaces.SpaceAdapter``),
  named through ``envs.catalog`` when the env is well known.

Invariants: ``call_to_action`` never raises for bad input and never returns an action outside the
action space: a call it cannot use is *rejected* with a reason and replaced by ``default_action()``;
a number out of range is *clipped* (``on_invalid="clip"``, the default) or rejected
(``on_invalid="reject"``). Every call is counted in exactly one of ``ok``/``clipped``/``rejected``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tickcall.envs.catalog import EnvEntry, entry_for
from tickcall.envs.obs_text import ObsFormatter
from tickcall.envs.spaces import ActionError, SpaceAdapter
from tickcall.models.calls import Call
from tickcall.models.format import MAX_HEADS_LIMIT
from tickcall.models.tools import ToolSpec, normalize_tools, validate_arguments

STATUSES = ("ok", "clipped", "rejected")


@dataclass
class ActionResult:
    """What a call became. ``action`` is always valid for the env (the fallback when rejected)."""

    action: Any
    status: str  # "ok" | "clipped" | "rejected"
    reason: str = ""
    call: Call | None = None

    @property
    def ok(self) -> bool:
        """True when the call was used (possibly clipped); False when it was rejected."""
        return self.status != "rejected"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "call": self.call.to_dict() if self.call else None,
        }


@dataclass
class EnvBinding:
    """An env bundled with its tools and converters (build it with ``make_binding``).

    Attributes:
        env: the gymnasium env (as made; ``env.unwrapped`` is the raw env).
        env_id: the registered id, or None for an env given as an instance.
        tools: OpenAI-style tool dicts, in prompt order.
        specs: the same tools normalised (``models.tools.ToolSpec``).
        on_invalid: ``"clip"`` (numbers out of range are clipped) or ``"reject"``.
        counts: ``calls``, ``ok``, ``clipped``, ``rejected`` (thread-safe).
        reasons: why calls were rejected or clipped (reason text -> count).
    """

    env: Any
    env_id: str | None
    tools: list[dict[str, Any]]
    specs: list[ToolSpec]
    obs_formatter: Callable[[Any], str]
    on_invalid: str = "clip"
    adapter: SpaceAdapter | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"calls": 0, **dict.fromkeys(STATUSES, 0)})
    reasons: Counter = field(default_factory=Counter)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    _noop: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ---- text ------------------------------------------------------------------------------------
    def obs_text(self, obs: Any) -> str:
        """Compact ``key=value`` text of an observation (fixed precision)."""
        return self.obs_formatter(obs)

    @property
    def semantic(self) -> bool:
        return self.adapter is None

    @property
    def action_space(self) -> Any:
        return self.env.action_space

    @property
    def physics_hz(self) -> float:
        """Physics steps per second of the env (``1/dt``, else ``render_fps``, else 50)."""
        from tickcall.envs.realtime import _env_rate

        return _env_rate(self.env)

    def hold_for(self, rate_hz: float) -> int:
        """Physics steps one decision lasts at ``rate_hz`` decisions per second (at least 1)."""
        return max(1, round(self.physics_hz / rate_hz))

    @property
    def hold(self) -> int:
        """Physics steps per decision at 16 Hz (the real-time loop's default rate)."""
        return self.hold_for(16.0)

    def make_env(self) -> Any:
        """A fresh env like ``self.env`` (same id and keyword arguments), e.g. for parallel rollouts."""
        if self.env_id is None:
            return copy.deepcopy(self.env)
        import gymnasium as gym

        return gym.make(self.env_id, **self.env_kwargs)

    def to_action(self, call: Call | Mapping[str, Any] | None) -> Any:
        """Just the action of ``call_to_action`` (the fallback when rejected); counted the same way."""
        return self.call_to_action(call).action

    def random_call(self, rng: Any = None) -> Call:
        """A uniformly random legal call (a random action written as its call). ``rng``: a numpy
        Generator, an int seed or None."""
        space = copy.deepcopy(self.env.action_space)
        if rng is None or isinstance(rng, int):
            space.seed(rng)
        else:
            space.seed(int(rng.integers(0, 2**31 - 1)))
        return self.action_to_call(space.sample())

    @property
    def spec_map(self) -> dict[str, ToolSpec]:
        return {s.name: s for s in self.specs}

    # ---- calls <-> actions ----------------------------------------------------------------------
    def call_to_action(self, call: Call | Mapping[str, Any] | None) -> ActionResult:
        """The action for a call, or the fallback with the reason; counted either way."""
        result = self._convert(call)
        with self._lock:
            self.counts["calls"] += 1
            self.counts[result.status] += 1
            if result.reason:
                self.reasons[result.reason[:120]] += 1
        return result

    def _convert(self, call: Any) -> ActionResult:
        if call is None:
            return self._reject(None, "no call (the policy produced nothing usable)")
        if isinstance(call, Mapping):
            try:
                call = Call.from_dict(call)
            except (KeyError, TypeError, ValueError) as exc:
                return self._reject(None, f"malformed call {call!r}: {exc}")
        if not isinstance(call, Call):
            return self._reject(None, f"not a call: {type(call).__name__}")
        clip = self.on_invalid == "clip"
        try:
            if self.adapter is not None:
                dec = self.adapter.from_call(call, clip=clip)
                action, clipped, reason = dec.action, dec.clipped, dec.reason
            else:
                action, clipped, reason = self._semantic_action(call, clip)
        except (ActionError, ValueError, TypeError, KeyError) as exc:
            return self._reject(call, str(exc))
        return ActionResult(action, "clipped" if clipped else "ok", reason, call)

    def _semantic_action(self, call: Call, clip: bool) -> tuple[Any, bool, str]:
        spec = self.spec_map.get(call.name)
        if spec is None:
            raise ActionError(f"unknown tool {call.name!r}; tools are {[s.name for s in self.specs]}")
        args = dict(call.arguments)
        clipped_names = []
        if clip:
            args, clipped_names = clip_arguments(spec, args)
        err = validate_arguments(spec, args)
        if err:
            raise ActionError(err)
        action, env_clipped = self.env.unwrapped.action_from_call(Call(call.name, args))
        clipped = bool(clipped_names) or bool(env_clipped)
        reason = (
            f"clipped {', '.join(clipped_names)} into range"
            if clipped_names
            else ("clipped into range" if env_clipped else "")
        )
        return action, clipped, reason

    def _reject(self, call: Call | None, reason: str) -> ActionResult:
        return ActionResult(self.default_action(), "rejected", reason, call)

    def action_to_call(self, action: Any) -> Call:
        """The call that means ``action`` (what a model would emit to get it)."""
        if self.adapter is not None:
            return self.adapter.to_call(action)
        return self.env.unwrapped.call_from_action(action)

    def default_action(self) -> Any:
        """The fallback / no-op action (a fresh copy each time)."""
        return copy.deepcopy(self._noop)

    def default_call(self) -> Call:
        return self.action_to_call(self.default_action())

    def reset_counts(self) -> None:
        with self._lock:
            for k in self.counts:
                self.counts[k] = 0
            self.reasons.clear()

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (id, tool names, counts)."""
        return {
            "env_id": self.env_id,
            "tools": [s.name for s in self.specs],
            "semantic": self.semantic,
            "on_invalid": self.on_invalid,
            "counts": dict(self.counts),
        }


def clip_arguments(spec: ToolSpec, args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Clip numeric arguments with ``minimum``/``maximum`` into range. Returns (args, clipped names).

    Anything that is not a finite number is left alone (validation rejects it)."""
    out, clipped = dict(args), []
    for name, value in args.items():
        schema = spec.properties.get(name) or {}
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            continue
        lo, hi = schema.get("minimum"), schema.get("maximum")
        v = value
        if lo is not None and v < lo:
            v = lo
        if hi is not None and v > hi:
            v = hi
        if v != value:
            out[name] = v
            clipped.append(name)
    return out, clipped


def default_for_space(space: Any) -> Any:
    """A valid 'do nothing' action for a space: the lowest Discrete, zeros clipped into a Box, ..."""
    from gymnasium import spaces as S

    if isinstance(space, S.Discrete):
        return int(space.start)
    if isinstance(space, S.Box):
        return np.clip(np.zeros(space.shape), space.low, space.high).astype(space.dtype)
    if isinstance(space, S.MultiDiscrete):
        return np.asarray(space.start, dtype=space.dtype).copy() * np.ones(space.shape, dtype=space.dtype)
    if isinstance(space, S.MultiBinary):
        return np.zeros(space.shape, dtype=space.dtype)
    if isinstance(space, S.Dict):
        return {k: default_for_space(s) for k, s in space.spaces.items()}
    if isinstance(space, S.Tuple):
        return tuple(default_for_space(s) for s in space.spaces)
    raise ValueError(f"no default action for {type(space).__name__}")


def _noop_from_entry(space: Any, noop: Any) -> Any:
    from gymnasium import spaces as S

    if noop is None:
        return default_for_space(space)
    if isinstance(space, S.Box):
        return np.full(space.shape, noop, dtype=space.dtype)
    return noop


def _raw_action(env: Any, action: Any) -> Any:
    """``action`` as the raw env receives it: through each ``ActionWrapper``'s ``action`` on the way in."""
    import gymnasium as gym

    while env is not env.unwrapped:
        if isinstance(env, gym.ActionWrapper):
            action = env.action(action)
        env = env.env
    return action


def _noop_through_wrappers(env: Any, raw_noop: Any) -> Any:
    """The action as wrapped that reaches the raw env as (or nearest to) ``raw_noop``, or None.

    A Box whose wrappers map each entry affinely (``RescaleAction``, ``ClipAction``): solved from the
    raw actions of the wrapped bounds (checked at the midpoint). A small Discrete or MultiDiscrete
    over a Box (``DiscretizeAction``): the level whose raw action is nearest. So the fallback of a rescaled
    LunarLanderContinuous is still "engines off", not the low corner of the new range."""
    from gymnasium import spaces as S

    outer, raw = env.action_space, env.unwrapped.action_space
    if not isinstance(raw, S.Box):
        return None
    target = np.asarray(raw_noop, dtype=np.float64)
    try:
        if isinstance(outer, S.Box) and outer.shape == raw.shape:
            lo, hi = outer.low.astype(np.float64), outer.high.astype(np.float64)
            if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi > lo)):
                return None
            r_lo, r_hi = (np.asarray(_raw_action(env, x), dtype=np.float64) for x in (lo, hi))
            r_mid = np.asarray(_raw_action(env, (lo + hi) / 2), dtype=np.float64)
            if not np.allclose(r_mid, (r_lo + r_hi) / 2, atol=1e-6) or np.any(r_hi == r_lo):
                return None  # not affine (or flat): no way to say which action means the no-op
            action = lo + (target - r_lo) * (hi - lo) / (r_hi - r_lo)
            return np.clip(action, lo, hi).astype(outer.dtype)
        if isinstance(outer, S.Discrete) and outer.n <= 1024:
            levels: list[Any] = [int(outer.start) + k for k in range(int(outer.n))]
        elif isinstance(outer, S.MultiDiscrete) and outer.nvec.ndim == 1 and int(np.prod(outer.nvec)) <= 1024:
            ranges = [range(int(st), int(st) + int(n)) for st, n in zip(outer.start, outer.nvec, strict=True)]
            levels = [np.array(c, dtype=outer.dtype) for c in itertools.product(*ranges)]
        else:
            return None
        dist = [
            float(np.abs(np.asarray(_raw_action(env, a), dtype=np.float64) - target).sum()) for a in levels
        ]
        return levels[int(np.argmin(dist))]
    except (TypeError, ValueError, AssertionError, IndexError):
        return None  # a wrapper that cannot map these test actions: keep the plain default


def _entry_of(env: Any, env_id: str | None) -> EnvEntry:
    """The catalog's entry for ``env_id``; else the env's own ``metadata["tickcall"]`` (a catalog
    entry as a dict, see ``envs.catalog``), so an env can name its tools and observation itself;
    else the generic default (``act``, ``o0``..)."""
    from tickcall.envs.catalog import CATALOG, entry_from_dict

    known = entry_for(env_id)  # loads TICKCALL_ENV_CATALOG first
    own = (getattr(env.unwrapped, "metadata", None) or {}).get("tickcall")
    if (env_id or "") in CATALOG or not own:
        return known
    return entry_from_dict(env_id or type(env.unwrapped).__name__, dict(own))


def tool_description(entry: EnvEntry, env: Any) -> str:
    """The entry's description with ``{low}``/``{high}`` filled from the action space *as bound*
    (after ``RescaleAction`` and the like; a wrapper that unbounds the space, ``ClipAction``, gets the
    bounds it clips to), plus the observation legend; numbers signed and short (``-2``, ``+0.5``).

    The entry describes the raw env's action; when a wrapper changed the action space in a way the
    placeholders cannot say (numbers written into the text, a ``DiscretizeAction`` level instead of
    the value), one sentence says how the action as bound differs (``wrapped_action_note``)."""
    text = entry.description
    placeholders = "{low}" in text or "{high}" in text
    if placeholders:
        lo, hi = _bounds(env.action_space)
        if lo is None:
            lo, hi = _bounds(env.unwrapped.action_space)
        text = text.replace("{low}", _signed(lo)).replace("{high}", _signed(hi))
    note = wrapped_action_note(env, placeholders)
    text = f"{text} {note}".strip() if note else text
    legend = entry.obs_legend()
    return f"{text} {legend}".strip() if legend else text


def wrapped_action_note(env: Any, placeholders: bool = False) -> str:
    """One sentence on how ``env.action_space`` (as wrapped) differs from the raw env's, or "".

    Nothing when they are equal (``TimeLimit`` and ``gymnasium.make``'s own wrappers), when a
    ``ClipAction`` only unbounded the space, or when a Box was rescaled and the text's
    ``placeholders`` already carry the new bounds."""
    from gymnasium import spaces as S

    outer, raw = env.action_space, env.unwrapped.action_space
    if outer == raw:
        return ""
    if isinstance(outer, S.Box) and isinstance(raw, S.Box):
        lo, hi = _bounds(outer)
        if lo is None or placeholders:  # ClipAction, or the text says the new bounds itself
            return ""
        rlo, rhi = _bounds(raw)
        own = f" (the env's own range: {_signed(rlo)} to {_signed(rhi)})" if rlo is not None else ""
        return f"As wrapped, each value runs {_signed(lo)} to {_signed(hi)}{own}."
    if isinstance(raw, S.Box) and isinstance(outer, S.Discrete | S.MultiDiscrete):
        bins = _discretizer(env)
        rlo, rhi = _bounds(raw)
        if isinstance(outer, S.Discrete) and bins is not None and bins == outer.n and rlo is not None:
            return (
                f"As wrapped, the action is a level {int(outer.start)} to {int(outer.start) + bins - 1}, not "
                f"the value: {bins} equal bins from {_signed(rlo)} to {_signed(rhi)}, each level the "
                "middle of its bin."
            )
        return f"As wrapped, the action is an index of {outer}, not the value itself."
    return f"As wrapped, the action is {outer} (the env's own action space is {raw})."


def _reshaped(env: Any) -> bool:
    """True when a wrapper changed the action space's type or shape (not just its bounds)."""
    outer, raw = env.action_space, env.unwrapped.action_space
    return type(outer) is not type(raw) or getattr(outer, "shape", None) != getattr(raw, "shape", None)


def _discretizer(env: Any) -> int | None:
    """The bin count of a one-dimensional ``DiscretizeAction`` in ``env``'s wrapper chain, else None."""
    from gymnasium.wrappers import DiscretizeAction

    while env is not env.unwrapped:
        if isinstance(env, DiscretizeAction):
            return int(env.bins[0]) if env.n_dims == 1 else None
        env = env.env
    return None


def _bounds(space: Any) -> tuple[float | None, float | None]:
    """One (low, high) for a Box whose entries share finite bounds, else (None, None)."""
    from gymnasium import spaces as S

    if not isinstance(space, S.Box):
        return None, None
    lo, hi = np.unique(space.low), np.unique(space.high)
    if lo.size != 1 or hi.size != 1 or not (np.isfinite(lo[0]) and np.isfinite(hi[0])):
        return None, None
    return float(lo[0]), float(hi[0])


def _signed(x: float | None) -> str:
    if x is None:
        return "?"
    text = f"{x:+.6g}"
    return "0" if x == 0 else text


def make_binding(
    env: Any,
    *,
    on_invalid: str = "clip",
    precision: int | None = None,
    obs_names: tuple[str, ...] | None = None,
    entry: EnvEntry | None = None,
    obs_formatter: Callable[[Any], str] | None = None,
    render_mode: str | None = None,
    **env_kwargs: Any,
) -> EnvBinding:
    """Bind an env id (``"CartPole-v1"``, ``"tickcall/Arena-v0"``) or an env instance.

    Args:
        env: a registered id or a ``gymnasium.Env``.
        on_invalid: ``"clip"`` or ``"reject"`` numbers out of range.
        precision: decimals in the observation text (default from the catalog, else 3).
        obs_names: names for the observation entries (default from the catalog).
        entry: override the catalog entry (tool name, parameter names, labels, ...).
        obs_formatter: ``obs -> str`` replacing the default text (e.g. features of an image).
        render_mode, env_kwargs: passed to ``gymnasium.make`` when ``env`` is an id.
    """
    import gymnasium as gym
    import tickcall.envs  # noqa: F401  (registers the built-in envs)

    if on_invalid not in ("clip", "reject"):
        raise ValueError(f"on_invalid must be 'clip' or 'reject', not {on_invalid!r}")
    if isinstance(env, gym.vector.VectorEnv) or isinstance(
        getattr(env, "unwrapped", None), gym.vector.VectorEnv
    ):
        raise ValueError(
            f"{type(env).__name__} is a vector env: tickcall binds one env per loop (one decide "
            "per tick); pass a single env (gymnasium.make) and run one loop per copy"
        )
    if isinstance(env, str):
        env_id = env
        if render_mode is not None:
            env_kwargs["render_mode"] = render_mode
        env = gym.make(env_id, **env_kwargs)
    else:
        env_id = env.spec.id if getattr(env, "spec", None) is not None else None
    raw = env.unwrapped
    if hasattr(raw, "tickcall_tools"):
        tools = raw.tickcall_tools()
        specs = normalize_tools(
            tools, max_arity=MAX_HEADS_LIMIT
        )  # the serving model's limit applies at register
        fmt = obs_formatter or (
            raw.obs_text
            if precision is None and obs_names is None
            else ObsFormatter(names=obs_names, precision=3 if precision is None else precision)
        )
        return EnvBinding(
            env=env,
            env_id=env_id,
            tools=tools,
            specs=specs,
            obs_formatter=fmt,
            on_invalid=on_invalid,
            adapter=None,
            env_kwargs=env_kwargs,
            _noop=raw.noop_action(),
        )
    e = entry or _entry_of(env, env_id)
    noop = _noop_from_entry(env.action_space, None if entry is None and _reshaped(env) else e.noop)
    if entry is None and env.action_space != env.unwrapped.action_space:
        # the catalog's no-op is the raw env's: find the action as wrapped that reaches it
        found = _noop_through_wrappers(env, _noop_from_entry(env.unwrapped.action_space, e.noop))
        noop = noop if found is None else found
    if entry is None and _reshaped(env):
        # a wrapper changed the action's kind or shape (DiscretizeAction, FlattenAction, ...): the
        # catalog's names and labels were written for the raw action; keep them only where they fit
        try:
            SpaceAdapter(env.action_space, param_names=e.param_names, labels=e.labels)
        except ValueError:
            e = dataclasses.replace(e, param_names=None, labels=None, param_descriptions=None)
    descs = (
        dict(zip(e.param_names, e.param_descriptions, strict=True))
        if (e.param_names and e.param_descriptions)
        else None
    )
    adapter = SpaceAdapter(
        env.action_space,
        name=e.tool,
        description=tool_description(e, env),
        param_names=e.param_names,
        labels=e.labels,
        param_descriptions={k: v for k, v in (descs or {}).items() if v} or None,
    )
    fmt = obs_formatter or ObsFormatter(
        names=obs_names or e.obs_names, precision=e.precision if precision is None else precision
    )
    return EnvBinding(
        env=env,
        env_id=env_id,
        tools=[adapter.tool],
        specs=[adapter.spec],
        obs_formatter=fmt,
        on_invalid=on_invalid,
        adapter=adapter,
        env_kwargs=env_kwargs,
        _noop=noop,
    )
