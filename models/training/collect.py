"""Roll a policy through seeded episodes and record the teacher's decision at every visited state.

The acting policy and the labelling teacher are separate: the teacher (with random actions mixed in
and state perturbations) gives the first data set; later rounds act with the *student* and still label
with the teacher (DAgger), so the student learns to recover from its own mistakes.

Episodes run in lock-step batches (``n_envs`` at once) so a student can decide for all of them in one
batched forward. Each decision holds its action for ``source.hold`` physics steps, as the 16 Hz
real-time loop does. Every record keeps the history items the runtime would show (last ``history_len``
executed calls, oldest first, with their AsyncFC status: ``show_history``, rendered by
``models.prompt_text`` like the futures layer's history lines).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tickcall.models.calls import Call, render_call
from tickcall.models.prompt_text import CallStatus, history_lines
from tickcall.models.training.sources import EnvSource


@dataclass
class Record:
    """One labelled state: the turn the model sees and the teacher's call for it.

    ``logits`` (optional): the teacher's scores behind the call, ``{parameter: {value: logit}}``, for
    teachers that have them (CartPole's linear expert: its margin). Training with ``data.soft_tau``
    turns them into soft targets; the call stays the hard label (its value has the highest logit).

    ``episode`` (optional): which episode of its source the turn belongs to (a rollout: the episode's
    seed; a run: its episode number). Rows of one episode are near-identical neighbours, so a held-out
    split of the data keeps each episode on one side (``models.training.split``); None: unknown (the
    split then cuts contiguous blocks of file order)."""

    env_id: str
    query: str
    history: list[str]
    call: Call
    logits: dict[str, dict[str, float]] | None = None  # the teacher's scores, parameter -> value -> logit
    episode: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "env_id": self.env_id,
            "query": self.query,
            "history": list(self.history),
            "call": self.call.to_dict(),
        }
        if self.logits is not None:
            d["logits"] = self.logits
        if self.episode is not None:
            d["episode"] = self.episode
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        return cls(
            d["env_id"],
            d["query"],
            list(d.get("history") or []),
            Call.from_dict(d["call"]),
            d.get("logits"),
            d.get("episode"),
        )


@dataclass
class RolloutStats:
    """Returns per episode and how many decisions were recorded."""

    returns: list[float] = field(default_factory=list)
    decisions: int = 0
    illegal: int = 0

    @property
    def mean_return(self) -> float:
        return sum(self.returns) / max(1, len(self.returns))


BatchPolicy = Callable[[Sequence[str], Sequence[list[str]]], list[Call | None]]
TEACHER = "teacher"  # act with each instance's teacher
RANDOM = "random"  # act with uniformly random legal calls


def rollout(
    source: EnvSource,
    policy: BatchPolicy | str,
    seeds: Sequence[int],
    *,
    n_envs: int = 16,
    epsilon: float = 0.0,
    perturb_prob: float = 0.0,
    perturb_scale: float = 1.0,
    history_len: int = 0,
    max_decisions: int = 1000,
    rng_seed: int = 0,
    record: bool = True,
    hold: float | None = None,
    delay_prob: float = 0.0,
    history_style: str = "futures",
) -> tuple[list[Record], RolloutStats]:
    """Run one episode per seed (``n_envs`` at a time); label each visited state with the teacher.

    ``policy(obs_texts, histories) -> calls`` (or ``TEACHER`` / ``RANDOM``) acts (None = an illegal
    call: the previous action persists, as in the real-time env, and ``stats.illegal`` counts it);
    with probability ``epsilon`` a random call is executed instead; with probability ``perturb_prob`` per decision the env state is nudged.
    Each decision holds its action ``hold`` physics steps (default ``source.hold``; a fraction is
    rounded stochastically); with probability ``delay_prob`` the previous action runs one more step
    first (a decision that missed the next physics step, as happens on the wall clock).
    """
    hold = float(source.hold if hold is None else hold)
    if history_style not in HISTORY_STYLES:
        raise ValueError(f"history_style must be one of {', '.join(HISTORY_STYLES)}, not {history_style!r}")
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    records: list[Record] = []
    stats = RolloutStats()
    order = {t.name: t.param_names for t in source.tools}
    pending = list(seeds)
    while pending:
        chunk, pending = pending[:n_envs], pending[n_envs:]
        insts = [source.instance() for _ in chunk]
        envs = [inst.env for inst in insts]
        obs = [env.reset(seed=int(s))[0] for env, s in zip(envs, chunk, strict=True)]
        hist: list[list[str]] = [[] for _ in chunk]
        ret = [0.0] * len(chunk)
        alive = [True] * len(chunk)
        n_dec = [0] * len(chunk)
        prev: list[Any] = [None] * len(chunk)
        timing = [np.random.default_rng(int(s) + 7) for s in chunk]  # hold/delay draws, per episode
        while any(alive):
            idx = [i for i, a in enumerate(alive) if a]
            shown = {i: show_history(hist[i], history_len, history_style, rng) for i in idx}
            if policy == TEACHER:
                acts: list[Call | None] = [insts[i].teacher(obs[i]) for i in idx]
            elif policy == RANDOM:
                acts = [insts[i].random_call(rng) for i in idx]
            else:
                acts = policy([insts[i].obs_text(obs[i]) for i in idx], [shown[i] for i in idx])
            for j, i in enumerate(idx):
                if record:  # a source without a teacher can still be rolled out unrecorded
                    label = insts[i].teacher(obs[i])
                    records.append(
                        Record(
                            source.env_id,
                            insts[i].obs_text(obs[i]),
                            shown[i],
                            label,
                            insts[i].logits_of(obs[i]),
                            int(chunk[i]),
                        )
                    )
                call = acts[j]
                if epsilon and rng.random() < epsilon:
                    call = insts[i].random_call(rng)
                if call is None:  # illegal: the previous action persists (the env's default at first)
                    stats.illegal += 1
                    action = prev[i] if prev[i] is not None else insts[i].default_action()
                else:
                    action = insts[i].to_action(call)
                steps = int(hold) + int(timing[i].random() < hold - int(hold))
                if delay_prob and prev[i] is not None and timing[i].random() < delay_prob:
                    o, r, term, trunc, _ = envs[i].step(prev[i])  # the decision arrives one step late
                    obs[i] = o
                    ret[i] += float(r)
                    if term or trunc:
                        alive[i] = False
                        steps = 0
                prev[i] = action
                for _ in range(steps):
                    o, r, term, trunc, _ = envs[i].step(action)
                    obs[i] = o
                    ret[i] += float(r)
                    if term or trunc:
                        alive[i] = False
                        break
                if call is not None:
                    hist[i].append(render_call(call, order.get(call.name)))
                n_dec[i] += 1
                stats.decisions += 1
                if n_dec[i] >= max_decisions:
                    alive[i] = False
                if alive[i] and perturb_prob and rng.random() < perturb_prob:
                    source.perturb(envs[i], rng, perturb_scale)
        stats.returns.extend(ret)
        for env in envs:
            env.close()
    return records, stats


HISTORY_STYLES = ("futures", "lockstep")


def show_history(calls: list[str], history_len: int, style: str, rng: Any) -> list[str]:
    """The history items a turn shows for the executed ``calls`` (rendered calls, oldest first), in the
    one run-time format (``models.prompt_text.status_line``, as ``control_loop.futures`` writes them).

    ``lockstep``: the last ``history_len`` calls, each ``done`` (``ModelPolicy``, lock-step evaluation).
    ``futures``: as in the real-time loop, where the newest call may still be in flight: the newest is
    ``running 0..69ms`` half the time, an older one ``superseded by`` the next one time in ten, the rest
    ``done``; one time in five fewer items are shown, so the student is used to any number from 0 to
    ``history_len``. Ids (``@fN``) count calls from the start of the episode."""
    return history_lines(history_statuses(calls, history_len, style, rng))


def history_statuses(calls: list[str], history_len: int, style: str, rng: Any) -> list[CallStatus]:
    """The ``CallStatus`` of each history item ``show_history`` shows (draws from ``rng`` for
    ``futures`` only)."""
    if style not in HISTORY_STYLES:
        raise ValueError(f"history_style must be one of {', '.join(HISTORY_STYLES)}, not {style!r}")
    if history_len <= 0 or not calls:
        return []
    k = min(history_len, len(calls))
    if style == "lockstep":
        return [CallStatus(calls[j], f"f{j + 1}", "done") for j in range(len(calls) - k, len(calls))]
    if rng.random() < 0.2:
        k = int(rng.integers(0, k + 1))
    out = []
    for j in range(len(calls) - k, len(calls)):
        u = rng.random()
        if j == len(calls) - 1 and u < 0.5:
            out.append(CallStatus(calls[j], f"f{j + 1}", "running", age_ms=int(rng.integers(0, 70))))
        elif u < 0.1 and j < len(calls) - 1:
            out.append(CallStatus(calls[j], f"f{j + 1}", "superseded", superseded_by=f"f{j + 2}"))
        else:
            out.append(CallStatus(calls[j], f"f{j + 1}", "done"))
    return out
