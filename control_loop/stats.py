"""Statistics over tick records: rate, jitter, drift, misses (all times in ms).

Percentiles come from ``tickcall.timing`` (``summary``: linear interpolation, the one definition
every report, bench and evaluation uses). Definitions (the report and the bench use exactly these):

* ``latency_ms``: observation taken -> call dispatched, over ``ok`` ticks.
* ``lateness_ms``: start lateness of the ticks that ran (scheduled start -> actual start).
* ``jitter_ms``: standard deviation of the start lateness of the ticks that ran.
* ``drift_ms``: (last start - first start) - (last index - first index) * period: how far the
  loop's own clock slipped over the run; absolute deadlines keep it near the last lateness.
* ``achieved_hz``: ticks that ran (not skipped by the rate keeper) per second, between the first
  and the last tick start; ``decision_hz``: the rate times the fraction of ticks that were ``ok``.
* ``deadline_misses``: ticks with outcome late, fallback or skipped, and ticks with no observation
  (``no_observation``: outcome error, reason "observation failed ...": the world, e.g. an engine
  that is absent or silent, gave nothing to decide on, so no decision met the deadline);
  ``longest_miss_streak``: the longest run of consecutive such ticks. ``observation_warning`` says
  how many ticks had no observation, when any did.
* ``calls``: what the policy answered in time (``call_counts``): ``legal`` (ok ticks), ``illegal``
  (an illegal call, never applied) and ``no_call`` (an error without a call: no function chosen, a
  service error, a failed send; not a tick without an observation, where the policy was never asked).
  An answer that is not a call is not a deadline miss, so a run whose every call is illegal has no
  misses: ``call_warning`` says so when that is most of the ticks.

Crowd runs (records carry ``agent``; ``control_loop.crowd``: one record per agent per tick). The counts,
outcomes and percentiles are over all agent-ticks (``ticks`` = agents x loop ticks, so the outcomes still
sum to ``ticks``); the loop-clock figures (``lateness_ms``, ``jitter_ms``, ``drift_ms``, ``achieved_hz``)
are over the loop's own ticks, one start per tick shared by its agents; ``longest_miss_streak`` is the
longest run of one agent's consecutive missed ticks. Added keys (absent from a single-agent report):

* ``agent_count``, ``loop_ticks`` (distinct tick ids), ``decisions_per_s``: ok agent-ticks per second of
  loop clock (``rate_hz * ok / loop_ticks``; ``decision_hz`` stays per agent: ``rate_hz * ok / ticks``);
* ``agents``: per agent (``agent_stats``): ``ticks``, ``outcomes``, ``deadline_misses``,
  ``longest_miss_streak``, ``decide_ms`` and ``latency_ms`` ({``n``, ``p50``, ``p90``, ``max``}; decide =
  the round trip of the agent's decide requests, every reply; latency = ok ticks), ``calls_per_tool``
  (the tools of its ok ticks' calls, most used first);
* ``agent_spread`` (``agent_spread``): the worst agent's latency and decide P90 (and which agent), the
  best agent's, and deadline misses per agent min/max.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from tickcall.control_loop.records import ILLEGAL_PREFIX, MISS_OUTCOMES, TickRecord, count_outcomes

from tickcall.timing import summary


def longest_streak(flags: Iterable[bool]) -> int:
    best = cur = 0
    for f in flags:
        cur = cur + 1 if f else 0
        best = max(best, cur)
    return best


def drift_ms(records: Sequence[TickRecord], period_ms: float) -> float | None:
    """Start-time slip between the first and the last tick that ran (see module docstring)."""
    ran = [r for r in records if r.lateness_ms is not None]
    if len(ran) < 2:
        return None
    first, last = ran[0], ran[-1]
    actual = (last.scheduled_ms + last.lateness_ms) - (first.scheduled_ms + first.lateness_ms)
    return round(actual - (last.tick - first.tick) * period_ms, 4)


NO_OBSERVATION = "observation failed"  # the reason's start on a tick whose world.observe() raised (loop.py)


def no_observation(record: TickRecord) -> bool:
    """True for a tick that had nothing to decide on (the world's observe() failed: no engine...)."""
    return record.outcome == "error" and record.reason.startswith(NO_OBSERVATION)


def observation_warning(missing: int, ticks: int) -> str | None:
    """One line when any tick had no observation (see module docstring), else None."""
    if missing <= 0 or ticks <= 0:
        return None
    return (
        f"{missing} of {ticks} ticks ({100 * missing / ticks:.0f}%) had no observation (the world, e.g. a "
        "game engine, was absent or silent): no decision was made on them, the fallback acted, and they "
        "count as deadline misses"
    )


BAD_CALLS_SHARE = 0.5  # more than this share of ticks without a legal call deserves a warning


def call_counts(records: Sequence[TickRecord]) -> dict[str, int]:
    """``legal``, ``illegal`` and ``no_call`` tick counts (see module docstring)."""
    errors = [r for r in records if r.outcome == "error" and not no_observation(r)]
    illegal = sum(1 for r in errors if r.call is not None and r.reason.startswith(ILLEGAL_PREFIX))
    return {
        "legal": sum(1 for r in records if r.outcome == "ok"),
        "illegal": illegal,
        "no_call": len(errors) - illegal,
    }


def call_warning(calls: dict[str, int], ticks: int) -> str | None:
    """One line when more than ``BAD_CALLS_SHARE`` of the ticks had an illegal call or none, else None."""
    bad = calls["illegal"] + calls["no_call"]
    if ticks <= 0 or bad <= BAD_CALLS_SHARE * ticks:
        return None
    return (
        f"{bad} of {ticks} ticks ({100 * bad / ticks:.0f}%) had no legal call ({calls['illegal']} illegal, "
        f"{calls['no_call']} without a call) and the fallback acted on them; they are not deadline misses, "
        "and tick latency covers ok ticks only (the round trip covers every reply). Check that the model "
        "was made for this env's tools (--backend random gives a legal baseline)"
    )


def stage_summaries(records: Sequence[TickRecord]) -> dict[str, dict[str, Any]]:
    """Percentiles of every server stage and of the loop's own stages, over ticks that had them."""
    stages: dict[str, list[float]] = {}
    for r in records:
        for name, v in (r.stages_ms or {}).items():
            if isinstance(v, int | float):
                stages.setdefault(f"service_{name}", []).append(float(v))
        for name, v in (("rtt", r.rtt_ms), ("dispatch", r.dispatch_ms), ("obs_age", r.obs_age_ms)):
            if v is not None:
                stages.setdefault(name, []).append(v)
    return {name: summary(vals) for name, vals in sorted(stages.items())}


def is_miss(record: TickRecord) -> bool:
    """True for a tick that got no decision in time (``deadline_misses``, see the module docstring)."""
    return record.outcome in MISS_OUTCOMES or no_observation(record)


def loop_clock(records: Sequence[TickRecord]) -> list[TickRecord]:
    """One record per tick id (in tick order) for the loop-clock figures of a crowd run: the first of
    the tick's records that has a start (``lateness_ms``), else its first record."""
    by_tick: dict[int, TickRecord] = {}
    for r in records:
        have = by_tick.get(r.tick)
        if have is None or (have.lateness_ms is None and r.lateness_ms is not None):
            by_tick[r.tick] = r
    return [by_tick[t] for t in sorted(by_tick)]


def summarize(records: Sequence[TickRecord], rate_hz: float, elapsed_s: float) -> dict[str, Any]:
    """The statistics block of ``report.json``. Raises if a record has no final outcome.

    Records that carry ``agent`` (a crowd run) add the per-agent blocks (module docstring)."""
    records = sorted(records, key=lambda r: r.tick)
    crowd = any(r.agent is not None for r in records)
    clock = loop_clock(records) if crowd else records
    period_ms = 1e3 / rate_hz
    outcomes = count_outcomes(list(records))
    lateness = [r.lateness_ms for r in clock if r.lateness_ms is not None]
    ran = len(lateness)
    jitter = None
    if ran >= 2:
        mean = sum(lateness) / ran
        jitter = round(math.sqrt(sum((x - mean) ** 2 for x in lateness) / (ran - 1)), 4)
    misses = [is_miss(r) for r in records]
    groups = by_agent(records) if crowd else {}
    if crowd:
        streak = max(longest_streak(is_miss(r) for r in recs) for recs in groups.values())
    else:
        streak = longest_streak(misses)
    missing = sum(1 for r in records if no_observation(r))
    calls = call_counts(records)
    elapsed_s = max(elapsed_s, 1e-9)
    starts = [r.scheduled_ms + r.lateness_ms for r in clock if r.lateness_ms is not None]
    span_s = (starts[-1] - starts[0]) / 1e3 if len(starts) >= 2 else 0.0
    achieved = (ran - 1) / span_s if span_s > 0 else 0.0
    out: dict[str, Any] = {
        "ticks": len(records),
        "rate_hz": rate_hz,
        "achieved_hz": round(achieved, 4),
        "decision_hz": round(rate_hz * outcomes["ok"] / len(records), 4) if records else 0.0,
        "elapsed_s": round(elapsed_s, 4),
        "latency_ms": summary(r.latency_ms for r in records if r.outcome == "ok"),
        "lateness_ms": summary(lateness),
        "jitter_ms": jitter,
        "drift_ms": drift_ms(clock, period_ms),
        "stages_ms": stage_summaries(records),
        "outcomes": outcomes,
        "deadline_misses": sum(misses),
        "longest_miss_streak": streak,
        "missed_periods": sum(1 for r in records if r.reason == "missed_period"),
        "skipped_in_flight": sum(1 for r in records if r.reason == "in_flight"),
        "fallback_actions": sum(1 for r in records if r.fallback is not None),
        "no_observation": missing,
        "observation_warning": observation_warning(missing, len(records)),
        "calls": calls,
        "call_warning": call_warning(calls, len(records)),
    }
    if crowd:
        agents = {name: agent_stats(recs) for name, recs in groups.items()}
        out.update(
            {
                "agent_count": len(agents),
                "loop_ticks": len(clock),
                "decisions_per_s": round(rate_hz * outcomes["ok"] / len(clock), 4) if clock else 0.0,
                "agents": agents,
                "agent_spread": agent_spread(agents),
            }
        )
    return out


# --------------------------------------------------------------------------- crowd runs (per agent)

NO_AGENT = "(no agent)"  # the key of records without an agent in a crowd run (none expected)


def natural_key(name: str) -> list[Any]:
    """Sort key that puts ``npc_2`` before ``npc_10`` (digit runs compare as numbers)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def by_agent(records: Iterable[TickRecord]) -> dict[str, list[TickRecord]]:
    """Records per agent (agents in natural order, each agent's records in tick order)."""
    groups: dict[str, list[TickRecord]] = {}
    for r in records:
        groups.setdefault(r.agent if r.agent is not None else NO_AGENT, []).append(r)
    return {name: sorted(groups[name], key=lambda r: r.tick) for name in sorted(groups, key=natural_key)}


def _short(values: Iterable[float | None]) -> dict[str, Any]:
    """``{n, p50, p90, max}`` (ms) of the non-None values: the per-agent percentiles."""
    full = summary(values)
    return {key: full[key] for key in ("n", "p50", "p90", "max")}


def agent_stats(records: Sequence[TickRecord]) -> dict[str, Any]:
    """One agent's block of ``agents`` (module docstring); ``records`` are that agent's, in tick order."""
    tools: dict[str, int] = {}
    for r in records:
        if r.outcome == "ok" and isinstance(r.call, dict) and r.call.get("name") is not None:
            name = str(r.call["name"])
            tools[name] = tools.get(name, 0) + 1
    misses = [is_miss(r) for r in records]
    return {
        "ticks": len(records),
        "outcomes": count_outcomes(list(records)),
        "deadline_misses": sum(misses),
        "longest_miss_streak": longest_streak(misses),
        "decide_ms": _short(r.rtt_ms for r in records),
        "latency_ms": _short(r.latency_ms for r in records if r.outcome == "ok"),
        "calls_per_tool": dict(sorted(tools.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _extremes(agents: dict[str, dict[str, Any]], pick: Any) -> dict[str, Any]:
    """Worst (largest) and best (smallest) of ``pick(agent_block)`` over agents that have a value."""
    values = [(pick(block), name) for name, block in agents.items() if pick(block) is not None]
    if not values:
        return {"worst": None, "worst_agent": None, "best": None, "best_agent": None}
    worst = max(values, key=lambda v: v[0])  # first agent (natural order) wins a tie
    best = min(values, key=lambda v: v[0])
    return {"worst": worst[0], "worst_agent": worst[1], "best": best[0], "best_agent": best[1]}


def agent_spread(agents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How far apart the agents are: the worst and best agent's latency P90 and decide P90 (ms), and
    deadline misses per agent (``min``, ``max``, ``max_agent``: the first agent with the most; None
    when no agent missed)."""
    misses = [(block["deadline_misses"], name) for name, block in agents.items()]
    top = max(misses, key=lambda v: v[0]) if misses else (None, None)
    return {
        "latency_p90_ms": _extremes(agents, lambda b: b["latency_ms"]["p90"]),
        "decide_p90_ms": _extremes(agents, lambda b: b["decide_ms"]["p90"]),
        "deadline_misses": {
            "min": min(v for v, _ in misses) if misses else None,
            "max": top[0],
            "max_agent": top[1] if top[0] else None,  # no agent stands out when none missed
        },
    }


# --------------------------------------------------------------------------- the cascade (control_loop.cascade)


def _field(record: Any, name: str) -> Any:
    """A field of a ``TickRecord`` or of its dict (a ``ticks.jsonl`` line)."""
    return record.get(name) if isinstance(record, dict) else getattr(record, name, None)


def cascade_summary(
    records: Sequence[Any], big: dict[str, Any] | None = None, bins: int = 10, target: float = 0.95
) -> dict[str, Any]:
    """The ``cascade`` block of ``report.json``.

    ``small_share``/``big_share``/``none_share``: the fraction of *all* ticks whose answer came from the
    small model, the big model, or neither (not sent, no reply, expired): they sum to 1. ``reasons``:
    ticks per ``route_reason`` (every tick has one; they sum to ``ticks``). ``big``: the big model's own
    figures (``CascadePolicy.big_stats``). ``reliability``: ``reliability_curve`` of this run's pairs,
    with the threshold it suggests for ``target`` agreement (``choose_threshold``)."""
    n = len(records)
    by = {"small": 0, "big": 0, "none": 0}
    reasons: dict[str, int] = {}
    for r in records:
        who = _field(r, "decided_by") or "none"
        by[who] = by.get(who, 0) + 1
        why = _field(r, "route_reason") or "not_routed"
        reasons[why] = reasons.get(why, 0) + 1
    curve = reliability_curve(records, bins=bins)
    return {
        "ticks": n,
        "small_share": round(by["small"] / n, 4) if n else 0.0,
        "big_share": round(by["big"] / n, 4) if n else 0.0,
        "none_share": round(by["none"] / n, 4) if n else 0.0,
        "decided_by": by,
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "big": dict(big or {}),
        "reliability": {**curve, "target": target, "suggested_threshold": choose_threshold(curve, target)},
    }


def reliability_curve(records: Sequence[Any], bins: int = 10) -> dict[str, Any]:
    """Confidence bins -> how often the small model's call equals the big model's call on the same turn.

    Pairs: ticks with a small ``confidence``, a ``small_call`` and a ``big_call`` (the big model was sent
    that tick's turn and answered; with ``intent: turn`` the small turn also held the intent line).
    Calls agree when their name and arguments are equal (exact: the arena's arguments are enums and
    integers; a continuous argument would need a tolerance). Bins split [0, 1] in ``bins`` equal parts;
    a confidence of exactly 1 falls in the last. Each bin: ``lo``, ``hi``, ``n`` pairs, ``agree``, and
    ``agreement`` (agree / n; None when empty)."""
    counts = [[0, 0] for _ in range(bins)]
    pairs = 0
    for r in records:
        conf, small, big = _field(r, "confidence"), _field(r, "small_call"), _field(r, "big_call")
        if conf is None or small is None or big is None:
            continue
        i = min(bins - 1, max(0, int(float(conf) * bins)))
        counts[i][0] += 1
        counts[i][1] += int(small == big)
        pairs += 1
    out = [
        {
            "lo": round(i / bins, 6),
            "hi": round((i + 1) / bins, 6),
            "n": n,
            "agree": a,
            "agreement": round(a / n, 4) if n else None,
        }
        for i, (n, a) in enumerate(counts)
    ]
    agree = sum(a for _, a in counts)
    return {"pairs": pairs, "agreement": round(agree / pairs, 4) if pairs else None, "bins": out}


def choose_threshold(curve: dict[str, Any], target: float = 0.95) -> float | None:
    """The lowest confidence ``t`` (a bin's lower edge) such that every non-empty bin at or above ``t``
    agrees with the big model at least ``target`` of the time: the small model is trusted from ``t`` up,
    below it the big model is asked. ``0.0`` when every bin meets the target; above 1 (``1.01``: always ask
    the big model) when even the top non-empty bin misses it; None without any pair."""
    bins = [b for b in curve.get("bins", []) if b["n"]]
    if not bins:
        return None
    threshold = 1.01
    for b in sorted(bins, key=lambda b: -b["lo"]):
        if b["agreement"] < target:
            break
        threshold = b["lo"]
    if threshold <= min(b["lo"] for b in bins):  # every bin with pairs meets the target
        return 0.0
    return threshold


def swap_marks(records: Sequence[Any]) -> list[dict[str, Any]]:
    """The ticks where the answering weights changed (a hot swap): ``[{tick, model}]``, ``model`` the
    new weights' name (``TickRecord.weights``). Ticks without weights (no small reply) are skipped."""
    marks: list[dict[str, Any]] = []
    prev = None
    for r in sorted(records, key=lambda r: _field(r, "tick")):
        w = _field(r, "weights")
        if w is None:
            continue
        if prev is not None and w != prev:
            marks.append({"tick": int(_field(r, "tick")), "model": w})
        prev = w
    return marks


def episode_curve(records: Sequence[Any], returns: Sequence[float | None]) -> list[dict[str, Any]]:
    """Per episode (``TickRecord.episode``, in order): its first tick, its return (``returns[i]``; None
    for the one still running), the share of its ticks the small model decided, and the weights that
    answered last in it: how a run that distils and swaps improves (small share and return over time)."""
    eps: dict[int, list[Any]] = {}
    for r in records:
        eps.setdefault(int(_field(r, "episode") or 0), []).append(r)
    out = []
    for i in sorted(eps):
        recs = eps[i]
        small = sum(1 for r in recs if _field(r, "decided_by") == "small")
        weights = [w for w in (_field(r, "weights") for r in recs) if w is not None]
        out.append(
            {
                "episode": i,
                "first_tick": min(int(_field(r, "tick")) for r in recs),
                "ticks": len(recs),
                "return": returns[i] if i < len(returns) else None,
                "small_share": round(small / len(recs), 4),
                "weights": weights[-1] if weights else None,
            }
        )
    return out
