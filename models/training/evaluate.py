"""Scores of a student against its teacher.

* :func:`head_accuracy`: per head (function, arg1..argN), the share of held-out states where the
  student's head text equals the teacher's; per argument (``tool.param``) the share where the student's
  value equals the label's; plus exact-call accuracy and the legal rate.
* :func:`closed_loop`: mean return of a batch policy over seeded episodes, lock-step, each decision
  held ``source.hold`` physics steps (the 16 Hz timing without the wall clock). The wall-clock
  figures (real-time loop, deadline misses, decide P50) come from ``tickcall.envs.realtime_eval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tickcall.models.calls import Call
from tickcall.models.format import encode_call_heads
from tickcall.models.prompt_text import make_turn
from tickcall.models.tools import ToolSpec
from tickcall.models.training.collect import BatchPolicy, Record, rollout
from tickcall.models.training.sources import EnvSource
from tickcall.models.training.student import BatchStudent


def head_accuracy(student: BatchStudent, records: Sequence[Record]) -> dict[str, Any]:
    """The student's agreement with the labels of ``records`` (held-out turns).

    ``per_head``: per decoding head (``function``, ``arg1``..``argN``), the share of turns where the
    head's text equals the label's; ``per_arg``: per argument ``tool.param``, over the turns labelled
    with that tool, the share where the student's legal call names the same tool with the same value
    (a head is a slot shared by every tool's i-th parameter; an argument is what the slot means);
    ``exact_call``: the whole call equal; ``legal_rate``: the student's call is legal;
    ``per_tool_n``: turns labelled with each tool (the denominators of ``per_arg``)."""
    decisions = student.decide([make_turn(r.query, r.history) for r in records])
    heads = student.heads
    right = dict.fromkeys(heads, 0)
    arg_right: dict[str, int] = {}
    arg_tool: dict[str, str] = {}  # "tool.param" -> tool (a tool name may hold a dot itself)
    tool_n: dict[str, int] = {}
    exact = legal = 0
    for rec, dec in zip(records, decisions, strict=True):
        tool = student.tool_map[rec.call.name]
        want = encode_call_heads(rec.call, tool, heads)
        for h in heads:
            right[h] += int(dec.heads.get(h, "").strip() == want[h])
        got = dec.assembled.call if dec.assembled.legal else None
        want_args = rec.call.arguments
        tool_n[tool.name] = tool_n.get(tool.name, 0) + 1
        for name in tool.param_names:
            key = f"{tool.name}.{name}"
            arg_tool[key] = tool.name
            same = (
                got is not None and got.name == tool.name and got.arguments.get(name) == want_args.get(name)
            )
            arg_right[key] = arg_right.get(key, 0) + int(same)
        legal += int(dec.assembled.legal)
        exact += int(dec.assembled.legal and dec.assembled.call == rec.call)
    n = max(1, len(records))
    return {
        "n": len(records),
        "per_head": {h: right[h] / n for h in heads},
        "per_arg": {k: v / tool_n[arg_tool[k]] for k, v in arg_right.items()},
        "per_tool_n": tool_n,
        "exact_call": exact / n,
        "legal_rate": legal / n,
    }


def served_agreement(
    folder: str | Path,
    tools: Sequence[ToolSpec],
    records: Sequence[Record],
    threads: int = 1,
    batch: int = 64,
) -> dict[str, Any]:
    """The agreement of the model folder ``folder`` with the labels of ``records`` as ``tickcall run``
    serves it: the transformers engine (``models.loading.load_engine``, CPU, its default constrained
    heads: the function head picks a tool, each argument head is decoded under the chosen tool's
    grammar), the folder's own template and system prompt (``tickcall.json``). ``head_accuracy`` reads
    the raw heads of an unconstrained decode, where an argument head may still write a value for a
    tool that takes none; here that cannot happen, so this is the figure of the model in the loop.
    Returns ``n``, ``exact_call``, ``legal_rate``, ``function`` (the tool named right) and
    ``per_arg`` (as ``head_accuracy``'s)."""
    from tickcall.models.loading import load_engine, read_model_meta

    meta = read_model_meta(folder)
    engine = load_engine(folder, device="cpu", threads=threads)
    try:
        reg = engine.register(list(tools), meta.get("system"), meta.get("template"))
        decisions = []
        for i in range(0, len(records), batch):
            chunk = records[i : i + batch]
            decisions.extend(
                engine.decide_batch([(reg.handle, make_turn(r.query, r.history)) for r in chunk])
            )
    finally:
        engine.close()
    tool_map = {t.name: t for t in tools}
    exact = legal = function = 0
    arg_right: dict[str, int] = {}
    arg_tool: dict[str, str] = {}
    tool_n: dict[str, int] = {}
    for rec, dec in zip(records, decisions, strict=True):
        got = dec.call if dec.legal else None
        tool = tool_map[rec.call.name]
        tool_n[tool.name] = tool_n.get(tool.name, 0) + 1
        for name in tool.param_names:
            key = f"{tool.name}.{name}"
            arg_tool[key] = tool.name
            same = (
                got is not None
                and got.name == tool.name
                and got.arguments.get(name) == rec.call.arguments.get(name)
            )
            arg_right[key] = arg_right.get(key, 0) + int(same)
        legal += int(dec.legal)
        function += int(got is not None and got.name == rec.call.name)
        exact += int(got is not None and got == rec.call)
    n = max(1, len(records))
    return {
        "n": len(records),
        "exact_call": exact / n,
        "legal_rate": legal / n,
        "function": function / n,
        "per_arg": {k: v / tool_n[arg_tool[k]] for k, v in arg_right.items()},
        "decoding": "transformers engine, constrained heads (as tickcall run serves it)",
    }


def make_student_policy(student: BatchStudent, tally: dict[str, int] | None = None) -> BatchPolicy:
    """Batch policy: observation text + history -> student call (None when illegal)."""

    def act(texts: Sequence[str], histories: Sequence[list[str]]) -> list[Call | None]:
        turns = [make_turn(t, h) for t, h in zip(texts, histories, strict=True)]
        out: list[Call | None] = []
        for d in student.decide(turns):
            ok = d.assembled.legal and d.assembled.call is not None
            if tally is not None:
                tally["calls"] = tally.get("calls", 0) + 1
                tally["legal"] = tally.get("legal", 0) + int(ok)
            out.append(d.assembled.call if ok else None)
        return out

    return act


def closed_loop(
    source: EnvSource,
    policy: BatchPolicy | str,
    seeds: Sequence[int],
    history_len: int = 0,
    history_style: str = "futures",
    max_decisions: int = 100_000,
) -> dict[str, Any]:
    """Mean return (lock-step, action held ``source.hold`` steps) over one episode per seed."""
    _, stats = rollout(
        source,
        policy,
        seeds,
        n_envs=len(seeds),
        history_len=history_len,
        max_decisions=max_decisions,
        record=False,
        rng_seed=seeds[0] if seeds else 0,
        history_style=history_style,
    )
    rets = stats.returns
    mean = sum(rets) / max(1, len(rets))
    return {
        "episodes": len(rets),
        "mean_return": mean,
        "min_return": min(rets, default=0.0),
        "max_return": max(rets, default=0.0),
        "decisions": stats.decisions,
        "illegal": stats.illegal,
    }
