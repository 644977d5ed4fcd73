"""Record a teacher's decisions as a dataset (``models.training.dataset``): ``tickcall record``.

    from tickcall.envs.recording import record_dataset
    info = record_dataset("Acrobot-v1", "ppo", episodes=20, out="acrobot.jsonl", work_dir="runs/t")

The episodes are the pipeline's teacher rollouts (``models.training.collect.rollout``): the teacher
acts (with random calls at rate ``epsilon``), each decision held ``physics_hz / 16`` physics steps as
in the 16 Hz real-time loop, and every visited state is labelled with the teacher's call (and its
scores where it has them). The file then trains a student with ``tickcall train --data FILE`` exactly
as the teacher itself would have (same rows, same text, same tools).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tickcall.envs.teachers import TeacherBudget
from tickcall.envs.teaching import get_source
from tickcall.models.tools import ToolSpec
from tickcall.models.training.collect import TEACHER, rollout
from tickcall.models.training.dataset import EnvInfo, make_header, write_dataset


def record_dataset(
    env_id: str,
    teacher: str,
    episodes: int,
    out: str | Path,
    *,
    seed: int = 0,
    epsilon: float = 0.0,
    history_len: int = 0,
    history_style: str = "futures",
    max_decisions: int = 1000,
    text_labels: bool = False,
    budget: TeacherBudget | None = None,
    work_dir: str | Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Roll ``episodes`` seeded episodes (seeds ``seed``..``seed+episodes-1``) of ``teacher`` on
    ``env_id`` and write them to ``out``; returns what was recorded (rows, mean return, seconds)."""
    t0 = time.perf_counter()
    src = get_source(
        env_id,
        text_labels=text_labels,
        teacher=teacher,
        budget=budget,
        work_dir=work_dir or Path(out).parent,
        log=log,
    )
    t1 = time.perf_counter()
    recs, stats = rollout(
        src,
        TEACHER,
        [seed + i for i in range(episodes)],
        n_envs=min(32, episodes),
        epsilon=epsilon,
        history_len=history_len,
        history_style=history_style,
        max_decisions=max_decisions,
        rng_seed=seed,
    )
    meta = {
        "episodes": episodes,
        "seed": seed,
        "epsilon": epsilon,
        "history_len": history_len,
        "history_style": history_style,
        "text_labels": text_labels,
        "mean_return": stats.mean_return,
        "teacher_info": src.teacher_info,
    }
    header = make_header(
        {env_id: EnvInfo(_dicts(src.tools), src.physics_hz)}, src.teacher_spec or teacher, meta
    )
    n = write_dataset(out, header, recs)
    info = {
        "rows": n,
        "mean_return": stats.mean_return,
        "teacher_s": t1 - t0,
        "record_s": time.perf_counter() - t1,
        "out": str(out),
    }
    if log:
        log(
            f"recorded {n} rows of {env_id} from {episodes} episodes of {src.teacher_spec} "
            f"(mean return {stats.mean_return:.1f}) into {out}"
        )
    return info


def _dicts(tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """The tool dicts as the prompt renders them (``normalize_tools`` reads them back equal)."""
    return [t.rendered for t in tools]
