"""Evaluate a policy on an env, in lock-step (deterministic) or in real time at a decision rate.

    from tickcall.envs.evaluate import evaluate
    report = evaluate("tickcall/Arena-v0", "expert", episodes=10, seed=0)                 # lock-step
    report = evaluate("tickcall/Arena-v0", "expert", episodes=3, seed=0, realtime=True, rate=16)
    report.mean_return, report.std_return, report.legal_rate

Lock-step: every decision lasts ``hold`` physics steps (1 unless given; ``rate`` sets
``hold = round(physics_hz / rate)``), so results are reproducible under a seed. Real time: the env
runs in a ``RealTimeEnv`` at its physics rate and the policy decides at ``rate`` Hz on absolute
deadlines (skipping ahead when a decision overruns, counted); ``delay_ms`` adds a fixed latency
between reading the observation and applying the call, to show what latency costs.

Every decision is counted: ``decisions``, ``legal`` (the call was used, possibly clipped),
``rejected`` (fallback applied); in real time also ``late_ticks`` and ``skipped_ticks``. Envs whose
episodes end with ``info["goal_success"]`` (the GoalArena) also get ``goal_success``: the fraction of
finished episodes that met their goal (None, and absent from the JSON, for other envs).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tickcall.envs.binding import EnvBinding, make_binding
from tickcall.envs.realtime import RealTimeEnv

from tickcall.timing import RateKeeper, summary


@dataclass
class EvalReport:
    """Everything one evaluation measured (JSON-friendly via ``to_dict``). Times in ms or s."""

    env: str
    policy: str
    mode: str
    seed: int | None
    episodes: int
    returns: list[float]
    lengths: list[int]
    mean_return: float
    std_return: float
    decisions: int
    legal: int
    rejected: int
    clipped: int
    legal_rate: float
    physics_hz: float
    rate_hz: float | None = None
    hold: int | None = None
    delay_ms: float = 0.0
    decision_ms: dict[str, float] = field(default_factory=dict)
    ticks: dict[str, int] = field(default_factory=dict)
    episode_info: dict[str, float] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    illegal_reasons: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    complete: bool = True
    goal_success: float | None = None  # fraction of episodes with info["goal_success"]; None: not reported

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["goal_success"] is None:  # other envs' JSON stays as it was
            del d["goal_success"]
        return d


def make_policy(kind: str, env_id: str, binding: EnvBinding, *, seed: int | None = 0,
                model: str | None = None, backend: str = "transformers", history_len: int | None = None,
                engine: Any = None, engine_options: dict[str, Any] | None = None) -> Any:
    """``expert``, ``random`` or ``model`` (``model`` needs a model folder or an ``engine``, except with
    a backend that has no model, ``noop`` or ``random``: the random backend's calls are seeded with
    ``seed``). ``engine_options`` go to the model's engine (``models.loading.load_engine``)."""
    if kind == "model":
        from tickcall.envs.policies import ModelPolicy
        from tickcall.models.loading import MODEL_FREE, load_engine

        kw = {} if history_len is None else {"history_len": history_len}
        if engine is None and not model and backend in MODEL_FREE:
            engine = load_engine({"backend": backend, "seed": seed or 0})
        if engine is not None:
            return ModelPolicy(engine, binding, **kw)
        if not model:
            raise ValueError("--policy model needs --model PATH (a local model folder)")
        return ModelPolicy.from_path(model, binding, backend=backend, engine_options=engine_options, **kw)
    from tickcall.envs.experts import get_policy

    return get_policy(kind, env_id, binding, seed=seed)


def evaluate(env: str | EnvBinding, policy: Any = "expert", *, episodes: int = 5, seed: int | None = 0,
             realtime: bool = False, rate: float | None = None, hold: int | None = None,
             delay_ms: float = 0.0, max_seconds: float | None = None, env_kwargs: dict | None = None,
             **policy_kw: Any) -> EvalReport:
    """Run ``episodes`` episodes and report returns, legality and timing (see module docstring).

    ``policy`` is ``"expert"``, ``"random"``, ``"model"`` (with ``model=PATH`` or ``engine=...``) or
    any object with ``act(obs) -> Call | None`` and ``reset()``.
    """
    binding = env if isinstance(env, EnvBinding) else make_binding(env, **(env_kwargs or {}))
    env_id = binding.env_id or "env"
    kind = policy if isinstance(policy, str) else getattr(policy, "name", type(policy).__name__)
    pol = make_policy(policy, env_id, binding, seed=seed, **policy_kw) if isinstance(policy, str) else policy
    binding.reset_counts()
    t_start = time.perf_counter()
    if realtime:
        if not rate:
            raise ValueError("real-time evaluation needs a decision rate (rate=16)")
        rt, dec_ms, ticks = _run_realtime(binding, pol, episodes, seed, rate, delay_ms, max_seconds)
        hold_used = None
    else:
        hold_used = hold or (binding.hold_for(rate) if rate else 1)
        rt, dec_ms = _run_lockstep(binding, pol, episodes, seed, hold_used)
        ticks = {}
    wall = time.perf_counter() - t_start
    eps = rt.episodes[:episodes]
    rets = [e.episode_return for e in eps]
    counts = dict(binding.counts)
    if hasattr(pol, "stats") and "legal" in getattr(pol, "stats", {}):
        legal, decisions = pol.stats["legal"], pol.stats["decisions"]
    else:
        legal, decisions = counts["ok"] + counts["clipped"], counts["calls"]
    info_keys = sorted({k for e in eps for k, v in e.info.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)})
    return EvalReport(
        env=env_id, policy=kind, mode="realtime" if realtime else "lockstep", seed=seed,
        episodes=len(eps), returns=rets, lengths=[e.length for e in eps],
        mean_return=float(np.mean(rets)) if rets else math.nan,
        std_return=float(np.std(rets)) if rets else math.nan,
        decisions=decisions, legal=legal, rejected=counts["rejected"], clipped=counts["clipped"],
        legal_rate=legal / decisions if decisions else 0.0, physics_hz=rt.physics_hz,
        rate_hz=rate, hold=hold_used, delay_ms=delay_ms, decision_ms=summary(dec_ms) if dec_ms else {},
        ticks=ticks, episode_info={k: float(np.mean([e.info.get(k, 0) for e in eps])) for k in info_keys},
        reject_reasons=dict(binding.reasons.most_common(5)),
        illegal_reasons=dict(pol.reasons.most_common(5)) if hasattr(pol, "reasons") else {}, wall_s=wall,
        complete=len(eps) >= episodes, goal_success=goal_success_rate([e.info for e in eps]))


def goal_success_rate(infos: list[dict[str, Any]]) -> float | None:
    """Fraction of episodes whose final info has a true ``goal_success``; None when none reports it."""
    flags = [bool(i["goal_success"]) for i in infos if "goal_success" in i]
    return sum(flags) / len(flags) if flags else None


def _run_lockstep(binding: EnvBinding, pol: Any, episodes: int, seed: int | None,
                  hold: int) -> tuple[RealTimeEnv, list[float]]:
    rt = RealTimeEnv(binding, mode="lockstep", seed=seed, max_episodes=episodes, hold_steps=hold)
    dec_ms: list[float] = []
    episode = -1
    while not rt.done:
        snap = rt.latest()
        if snap.episode != episode:
            episode = snap.episode
            pol.reset()
        t0 = time.perf_counter()
        call = pol.act(snap.obs)
        dec_ms.append((time.perf_counter() - t0) * 1e3)
        rt.apply(call)
    return rt, dec_ms


def _run_realtime(binding: EnvBinding, pol: Any, episodes: int, seed: int | None, rate: float,
                  delay_ms: float, max_seconds: float | None) -> tuple[RealTimeEnv, list[float], dict]:
    rt = RealTimeEnv(binding, mode="realtime", seed=seed, max_episodes=episodes)
    dec_ms: list[float] = []
    ticks = {"ticks": 0, "late_ticks": 0, "skipped_ticks": 0}
    episode = -1
    keeper = RateKeeper(rate)
    with rt:
        t0 = keeper.start()
        while not rt.done:
            if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                break
            slot = keeper.wait()  # absolute deadlines; periods already missed are skipped, counted
            if slot.lateness_ms > keeper.period * 1e3 / 2:
                ticks["late_ticks"] += 1
            snap = rt.latest()
            if snap.episode != episode:
                episode = snap.episode
                pol.reset()
            ts = time.perf_counter()
            call = pol.act(snap.obs)
            dec_ms.append((time.perf_counter() - ts) * 1e3)
            if delay_ms > 0:
                time.sleep(delay_ms / 1e3)
            if rt.done:
                break
            rt.apply(call)
            ticks["ticks"] += 1
        ticks["skipped_ticks"] = keeper.skipped_total
    ticks.update({k2: rt.stats[k2] for k2 in ("physics_steps", "late_steps", "skipped_steps",
                                               "superseded")})
    ticks["max_physics_lateness_ms"] = round(rt.stats["max_lateness_ms"], 3)  # type: ignore[assignment]
    return rt, dec_ms, ticks


def format_table(reports: list[EvalReport]) -> str:
    """Side-by-side summary, one row per report (a ``goal`` column when a report has ``goal_success``)."""
    goal = any(r.goal_success is not None for r in reports)
    w = max([26, *(len(r.env) for r in reports)])  # the column fits the longest env id
    head = (f"{'env':<{w}} {'policy':<12} {'mode':<9} {'rate':>5} {'eps':>4} {'mean':>9} {'std':>8} "
            f"{'min':>9} {'max':>9} {'legal':>6} {'dec p50 ms':>10} {'wall s':>7}"
            + (f" {'goal':>6}" if goal else ""))
    lines = [head, "-" * len(head)]
    for r in reports:
        rate = f"{r.rate_hz:g}" if r.rate_hz else "-"
        mn = min(r.returns) if r.returns else math.nan
        mx = max(r.returns) if r.returns else math.nan
        lines.append(f"{r.env:<{w}} {r.policy:<12} {r.mode:<9} {rate:>5} {r.episodes:>4} "
                     f"{r.mean_return:>9.2f} {r.std_return:>8.2f} {mn:>9.2f} {mx:>9.2f} "
                     f"{r.legal_rate:>6.3f} {r.decision_ms.get('p50', math.nan):>10.3f} {r.wall_s:>7.1f}"
                     + (f" {_rate(r.goal_success):>6}" if goal else ""))
    return "\n".join(lines)


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
