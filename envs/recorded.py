"""Logged decisions as a dataset: a ``tickcall run`` report's ``ticks.jsonl`` -> ``models.training.dataset``.

Each tick of a run records the call the model made (``call``) and, when the loop records it, the
turn it was sent (``turn``: ``{"query": observation text, "history": [lines]}``). Together they are
one labelled row, so a big model's decisions train a small one (``tickcall train --data RUN/``). The
env comes from the report (``report.json`` ``env``, next to ``ticks.jsonl``) or ``env_id``; its tools
are the binding's (``envs.binding.make_binding``): the same tools the run registered.

``labels="big"`` (a cascade run, docs/cascade.md): the label is the big model's call on that tick's
turn (``big_call``), not the call that was applied: the big model's decisions, logged while the loop
ran, as a dataset to distil the small model on. Ticks the big model was not asked are skipped.

``labels="played"`` (a run against an engine whose own AI advises, ``--ai NAME --ai-advise``,
docs/engine-bridge.md): the label is the engine's AI's call on the observation the tick took
(``played``): the engine's AI labels the states the model reached (DAgger over the bridge). The env
is the game the engine declared (``report.json`` ``world.game``, its ``hello.game``) when the run's
env is an ``engine:`` address. Ticks whose observation carried no ``played`` are skipped.

Kept: ticks with a call (of the chosen labels) and a turn (any outcome: a late decision is still the model's decision for
that turn). Invariant: every row's call names one of the env's tools (``read``-time check of the
dataset format); a tick whose call does not is dropped and counted.
"""

from __future__ import annotations

import json
from pathlib import Path

from tickcall.envs.binding import make_binding
from tickcall.models.calls import Call
from tickcall.models.training.collect import Record
from tickcall.models.training.dataset import Dataset, EnvInfo, make_header

# which call of a tick is its label: the applied one, the big model's, or the engine's AI's
KEYS = {"call": "call", "big": "big_call", "played": "played"}  # label -> the tick's field holding it
LABELS = tuple(KEYS)


def ticks_dataset(path: str | Path, env_id: str | None = None, labels: str = "call") -> Dataset:
    """The dataset of a run report (its folder or its ``ticks.jsonl``). ``labels``: ``call`` (the
    applied call), ``big`` (the big model's, ``big_call``) or ``played`` (an advising engine AI's).
    ValueError when no tick carries a turn (the run did not record turns), the env is unknown, or
    ``labels`` is not one of ``LABELS``."""
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {', '.join(LABELS)}, not {labels!r}")
    key = KEYS[labels]
    path = Path(path)
    ticks = path / "ticks.jsonl" if path.is_dir() else path
    report_path = ticks.parent / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    env_id = env_id or report.get("env")
    if not env_id:
        raise ValueError(f"{ticks}: no env id (no report.json with 'env' beside it)")
    if env_id.startswith("engine:"):  # the rows are of the game the engine declared it plays
        game = (report.get("world") or {}).get("game")
        if not game:
            raise ValueError(
                f"{ticks}: the run played {env_id}, whose engine declared no game (hello.game, protocol "
                "1.2): its rows have no env to train and score on"
            )
        env_id = game
    binding = make_binding(env_id)
    tools = binding.tools
    names = {s.name for s in binding.specs}
    rate = binding.physics_hz
    binding.env.close()
    records, no_turn, foreign = [], 0, 0
    for line in ticks.read_text().splitlines():
        if not line.strip():
            continue
        tick = json.loads(line)
        call, turn = tick.get(key), tick.get("turn")
        if not call:
            continue
        if not turn:
            no_turn += 1
            continue
        c = Call.from_dict(call)
        if c.name not in names:
            foreign += 1
            continue
        # a crowd run counts episodes per agent: its rows carry none (the split then cuts time blocks)
        episode = tick.get("episode") if tick.get("agent") is None else None
        records.append(
            Record(env_id, str(turn["query"]), list(turn.get("history") or []), c,
                   episode=episode if isinstance(episode, int) else None)
        )
    if not records and labels == "played":
        raise ValueError(
            f"{ticks}: no tick carries a played call and its turn: --labels played needs a run against "
            "an engine whose AI advises (tickcall-reference-engine --ai NAME --ai-advise)"
        )
    if not records and labels == "big":
        raise ValueError(
            f"{ticks}: no tick carries a big_call and its turn: --labels big needs a cascade run "
            "(tickcall run --cascade-model BIG) that recorded turns"
        )
    if not records:
        raise ValueError(
            f"{ticks}: no tick carries both a call and its turn ({no_turn} calls without a "
            "turn): the run must record each tick's turn (TickRecord.turn)"
        )
    meta = {
        "source": str(ticks),
        "labels": labels,
        "model": report.get("model"),
        "backend": report.get("backend"),
        "ticks_without_turn": no_turn,
        "calls_not_a_tool": foreign,
    }
    header = make_header({env_id: EnvInfo(tools, rate)}, f"ticks:{ticks.parent}", meta)
    return Dataset(header, records)
