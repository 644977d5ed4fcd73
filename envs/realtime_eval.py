"""The shipped-model figures in the real-time loop: the env runs on the wall clock (its own physics
rate, ``envs.realtime.RealTimeEnv``), a policy decides at ``hz`` (16) on absolute deadlines, and an
action persists until the next decision lands, so a slow decide costs score.

Per tick: take the newest observation, render the turn (``models.prompt_text``: observation text + the
last ``history`` calls of the episode, each ``done``: ``apply`` is synchronous here), decide with the
engine (``models.hf_engine.HFEngine``), apply the call. A decide that ends after its tick's deadline (1/hz) is a deadline miss; ticks the
clock had to skip are counted too. The teacher runs the same loop (its decide takes microseconds).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tickcall.envs.binding import make_binding
from tickcall.envs.evaluate import goal_success_rate
from tickcall.envs.experts import RandomPolicy, get_expert
from tickcall.envs.realtime import RealTimeEnv
from tickcall.envs.teachers import load_teacher
from tickcall.models.calls import Call
from tickcall.models.prompt_text import done_statuses, history_lines, make_turn

from tickcall.timing import RateKeeper
from tickcall.timing import summary as timing_summary


@dataclass
class RealTimeResult:
    """One policy on one env. Times in ms; ``returns`` per finished episode."""

    policy: str
    env_id: str
    hz: float
    episodes: int
    returns: list[float] = field(default_factory=list)
    ticks: int = 0
    decisions: int = 0
    legal: int = 0
    deadline_misses: int = 0
    skipped_ticks: int = 0
    decide_ms: list[float] = field(default_factory=list, repr=False)
    goal_success: float | None = None  # goal envs (GoalArena): fraction of episodes that met the goal

    @property
    def mean_return(self) -> float:
        return sum(self.returns) / max(1, len(self.returns))

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "decide_ms"}
        if d["goal_success"] is None:  # other envs' summaries stay as they were
            del d["goal_success"]
        ms = timing_summary(self.decide_ms)
        d.update(mean_return=self.mean_return, legal_rate=self.legal / max(1, self.decisions),
                 **{f"decide_{k}_ms": ms[k] or 0.0 for k in ("p50", "p90", "p99", "mean")})
        return d


def run_realtime(env_id: str, policy: str = "model", model_path: str | Path | None = None,
                 episodes: int = 20, hz: float = 16.0, seed: int = 10_000, history: int | None = None,
                 threads: int | None = 1, warmup: int = 5, log=None, teacher: str = "expert") -> RealTimeResult:
    """Run ``episodes`` seeded episodes (episode i resets with ``seed + i``) in the real-time loop.

    ``policy``: ``model`` (the folder ``model_path`` through HFEngine), ``teacher`` (``teacher``: a kind
    of ``envs.teachers.load_teacher``, the env's scripted expert by default) or ``random``."""
    binding = make_binding(env_id)
    engine = handle = None
    if policy == "model":
        from tickcall.models.hf_engine import HFEngine

        if model_path is None:
            from tickcall.models.shipped import default_model_path

            model_path = default_model_path(env_id)
        engine = HFEngine(model_path, device="cpu", threads=threads)
        handle = engine.register(binding.tools, engine.meta.get("system")).handle
        if history is None:  # as the model was trained (tickcall.json history_len)
            history = int(engine.meta.get("history_len") or 0)
        probe = make_turn(binding.obs_text(binding.env.observation_space.sample()))
        for _ in range(warmup):
            engine.decide(handle, probe)
    elif policy == "teacher":
        expert = get_expert(env_id, binding) if teacher == "expert" else load_teacher(teacher, env_id).bind(binding)
    elif policy == "random":
        expert = RandomPolicy(binding, seed)
    else:
        raise ValueError(f"policy must be model, teacher or random, not {policy!r}")
    history = int(history or 0)
    order = {s.name: s.param_names for s in binding.specs}
    res = RealTimeResult(policy, env_id, hz, episodes)
    rt = RealTimeEnv(binding, mode="realtime", seed=seed, max_episodes=episodes)
    calls: list[Call] = []
    episode = 0
    keeper = RateKeeper(hz)  # absolute deadlines; ticks it had to skip are counted, never burst
    with rt:
        keeper.start()
        while not rt.done:
            slot = keeper.wait()
            deadline = slot.scheduled + keeper.period  # the decision must land before the next tick
            snap = rt.latest()
            if snap.episode != episode:
                episode, calls = snap.episode, []
            res.ticks += 1
            ts = time.perf_counter()
            if engine is not None:
                turn = make_turn(binding.obs_text(snap.obs), _history(calls, history, order))
                dec = engine.decide(handle, turn)
                call = dec.call if dec.legal else None
            else:
                call = expert.act(snap.obs)
            res.decide_ms.append((time.perf_counter() - ts) * 1e3)
            res.decisions += 1
            if call is not None:
                res.legal += 1
                rt.apply(call)
                calls.append(call)
            else:
                rt.apply(None)  # counted as rejected by the env; the previous action persists
            if time.monotonic() > deadline:
                res.deadline_misses += 1
        res.skipped_ticks = keeper.skipped_total
    res.returns = [e.episode_return for e in rt.episodes][:episodes]
    res.goal_success = goal_success_rate([e.info for e in rt.episodes][:episodes])
    rt.close()
    if engine is not None:
        engine.close()
    if log:
        s = res.summary()
        goal = f", goal success {res.goal_success:.2f}" if res.goal_success is not None else ""
        log(f"realtime {env_id} {policy}: mean return {s['mean_return']:.1f} over {len(res.returns)} episodes, "
            f"legal {s['legal_rate']:.4f}, misses {res.deadline_misses}, decide P50 {s['decide_p50_ms']:.2f} ms"
            f"{goal}")
    return res


def _history(calls: list[Call], n: int, order: dict[str, tuple[str, ...]]) -> list[str]:
    """The last ``n`` calls of the episode as history lines, each ``done`` (ids count from its start)."""
    recent = calls[-n:] if n > 0 else []
    return history_lines(done_statuses(recent, order, first_id=len(calls) - len(recent) + 1))


def _teacher_summary(env_id: str, episodes: int, hz: float, seed: int, history: int | None,
                     teacher: str = "expert") -> dict[str, Any]:
    return run_realtime(env_id, "teacher", None, episodes, hz, seed, history, None, teacher=teacher).summary()


def compare(env_id: str, model_path: str | Path, episodes: int = 20, hz: float = 16.0, seed: int = 10_000,
            history: int | None = None, threads: int | None = 1, log=None, parallel: bool = True,
            teacher: str | None = "expert") -> dict[str, Any]:
    """Student vs teacher under the same timing: the figures of the model card.

    ``teacher``: a kind of ``envs.teachers.load_teacher`` (``expert``, ``sb3:FILE.zip``, ``module:fn``)
    or None (no teacher to compare with: its figures are None and the ratio NaN).

    ``parallel``: the teacher's loop (microsecond decisions, little CPU) runs at the same time in a
    separate process, halving the wall time; the student keeps this process to itself."""
    pool = fut = None
    if parallel and teacher is not None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        fut = pool.submit(_teacher_summary, env_id, episodes, hz, seed, history, teacher)
    st = run_realtime(env_id, "model", model_path, episodes, hz, seed, history, threads, log=log).summary()
    if fut is not None:
        te = fut.result()
        pool.shutdown()
    elif teacher is not None:
        te = _teacher_summary(env_id, episodes, hz, seed, history, teacher)
    else:
        te = None
    if log and te is not None:
        log(f"realtime {env_id} teacher: mean return {te['mean_return']:.1f} over {len(te['returns'])} episodes")
    ratio = _ratio(st["mean_return"], te["mean_return"]) if te is not None else float("nan")
    return {"hz": hz, "episodes": episodes, "seed": seed, "student": st, "teacher": te,
            "student_return": st["mean_return"], "teacher_return": te["mean_return"] if te else float("nan"),
            "ratio": ratio,
            "legal_rate": st["legal_rate"], "deadline_misses": st["deadline_misses"],
            "decide_p50_ms": st["decide_p50_ms"], "decide_p90_ms": st["decide_p90_ms"],
            # goal envs: the student's rate at top level like legal_rate (the teacher's is in "teacher")
            **({"goal_success": st["goal_success"]} if "goal_success" in st else {})}


def _ratio(student: float, teacher: float) -> float:
    """Student over teacher for positive returns; for negative ones (Acrobot, Pendulum: cost to go)
    the teacher's over the student's, so 1.0 still means as good and less means worse."""
    if teacher > 0:
        return student / teacher
    if teacher < 0 and student < 0:
        return teacher / student
    return float("nan")
