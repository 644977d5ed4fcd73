"""``ModelPolicy``: a decoding engine as a policy over an ``EnvBinding``.

    from tickcall.envs.binding import make_binding
    from tickcall.envs.policies import ModelPolicy
    b = make_binding("tickcall/Arena-v0")
    policy = ModelPolicy.from_path("models/shipped/arena", b)      # or ModelPolicy(engine, b)
    call = policy.act(obs)          # a legal Call, or None when the model's call was illegal
    policy.stats                    # decisions, legal, illegal, reasons; latencies in policy.latency_ms

Per step the engine sees ``Turn(query=binding.obs_text(obs), history=[...])``; the history holds the
last ``history_len`` calls this policy emitted since ``reset``, oldest first, as ``models.prompt_text``
history lines (``push(direction="left")@f3 done``: in lock-step every call has run before the next
decision) — the format the control loop's futures layer writes and training rows use (``turn_for``).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tickcall.envs.binding import EnvBinding
from tickcall.models.calls import Call, render_call
from tickcall.models.format import Turn
from tickcall.models.prompt_text import done_statuses, history_lines, make_turn


def render_calls(binding: EnvBinding, calls: Sequence[Call]) -> list[str]:
    """Calls as text, ``move(direction="N", speed="run")``: parameters in schema order."""
    specs = binding.spec_map
    return [render_call(c, specs[c.name].param_names if c.name in specs else None) for c in calls]


def render_history(binding: EnvBinding, calls: Sequence[Call], first_id: int = 1) -> list[str]:
    """History items for calls that each ran before the next decision: ``move(...)@f3 done``, ids from
    ``f{first_id}``."""
    order = {name: spec.param_names for name, spec in binding.spec_map.items()}
    return history_lines(done_statuses(calls, order, first_id))


def turn_for(binding: EnvBinding, obs: Any, history: Sequence[Call] = (), history_len: int = 0,
             first_id: int | None = None) -> Turn:
    """The per-tick turn for an observation (the one text format shared by runtime and training).

    ``history``: the calls since the episode began (oldest first); the last ``history_len`` are shown.
    ``first_id``: the id number of ``history[0]`` (default 1: ``history`` is the whole episode)."""
    calls = list(history)
    recent = calls[-history_len:] if history_len > 0 else []
    first = (1 if first_id is None else first_id) + len(calls) - len(recent)
    return make_turn(binding.obs_text(obs), render_history(binding, recent, first))


class ModelPolicy:
    """Registers the binding's tools with ``engine`` once, then decides one call per ``act``.

    Args:
        engine: a ``models.engine.Engine`` (transformers, vLLM, or ``NoOpEngine`` for plumbing).
        binding: the env binding (tools and observation text).
        system: system prompt (None: the template's default).
        template: prompt template name (None: the engine's default; a model folder's
            ``tickcall.json`` may name it, see ``from_path``).
        history_len: how many of this policy's recent calls go in ``history`` (0: none).

    Illegal decisions return None (the caller applies its fallback, e.g. ``binding.call_to_action``
    turns None into the default action and counts it as rejected) and are counted with their reason.
    """

    name = "model"

    def __init__(self, engine: Any, binding: EnvBinding, *, system: str | None = None,
                 template: str | None = None, history_len: int = 0) -> None:
        self.engine, self.binding, self.history_len = engine, binding, int(history_len)
        self.registration = engine.register(binding.tools, system, template)
        self.handle = self.registration.handle
        self._history: deque[Call] = deque(maxlen=max(1, self.history_len))
        self._emitted = 0  # legal calls since reset: the next call's id is f{_emitted + 1}
        self.stats: dict[str, int] = {"decisions": 0, "legal": 0, "illegal": 0}
        self.reasons: Counter = Counter()
        self.latency_ms: list[float] = []
        self.last_decision: Any = None

    @classmethod
    def from_path(cls, model_path: str | Path, binding: EnvBinding, *, backend: str = "transformers",
                  engine_options: dict[str, Any] | None = None, **kwargs: Any) -> ModelPolicy:
        """Load a model folder with ``models.loading.load_engine`` (``engine_options``: its options, e.g.
        ``{"precision": "int8", "threads": 2}``); its ``tickcall.json`` (if any) may set ``template``,
        ``system`` and ``history_len`` (explicit keyword arguments win)."""
        from tickcall.models.loading import load_engine, read_model_meta

        path = Path(model_path)
        meta = read_model_meta(path)
        opts = {k: meta[k] for k in ("template", "system", "history_len") if meta.get(k) is not None}
        opts.update(kwargs)
        engine = load_engine(path, backend=backend, **(engine_options or {}))
        return cls(engine, binding, **opts)

    def turn(self, obs: Any) -> Turn:
        return turn_for(self.binding, obs, list(self._history), self.history_len,
                        first_id=self._emitted - len(self._history) + 1)

    def decide(self, obs: Any) -> Any:
        """The engine's ``Decision`` for this observation (recorded in stats and history)."""
        decision = self.engine.decide(self.handle, self.turn(obs))
        self.last_decision = decision
        self.stats["decisions"] += 1
        self.latency_ms.append(float(decision.timings_ms.get("total", 0.0)))
        if decision.legal and decision.call is not None:
            self.stats["legal"] += 1
            self._history.append(decision.call)
            self._emitted += 1
        else:
            self.stats["illegal"] += 1
            self.reasons[(decision.reason or "illegal")[:120]] += 1
        return decision

    def act(self, obs: Any) -> Call | None:
        d = self.decide(obs)
        return d.call if d.legal else None

    def reset(self) -> None:
        """Forget the history (call at each episode start)."""
        self._history.clear()
        self._emitted = 0

    @property
    def legal_rate(self) -> float:
        return self.stats["legal"] / self.stats["decisions"] if self.stats["decisions"] else 0.0

    def close(self) -> None:
        self.engine.unregister(self.handle)
