"""Distillation wired to the envs: the pipeline (``models.training``) with sources, teachers and
real-time figures from ``tickcall.envs`` (``models`` imports nothing of ours, so the composition root
joins them).

    from tickcall.training import make_pipeline
    scores = make_pipeline(TrainConfig.load("configs/train-cartpole.yaml")).run()
    cfg.teacher.kind = "ppo"; cfg.envs = ["Acrobot-v1"]        # any teacher (envs.teachers)
    cfg.data_files = ["acrobot.jsonl", "runs/r1/ticks.jsonl"]   # datasets and logged runs as data
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tickcall.models.training.dataset import Dataset, is_dataset, merge, read_dataset
from tickcall.models.training.pipeline import Pipeline, TrainConfig
from tickcall.models.training.sources import EnvSource


def source_factory(cfg: TrainConfig, log: Any = print):
    """``(env_id, prefer_builtin, text_labels) -> EnvSource`` labelled by ``cfg.teacher`` (SB3 agents
    trained here land in ``cfg.work_dir``)."""
    from tickcall.envs.teachers import TeacherBudget
    from tickcall.envs.teaching import get_source

    t = cfg.teacher
    budget = TeacherBudget(steps=t.steps, n_envs=t.n_envs, seed=cfg.seed, eval_episodes=t.eval_episodes,
                           kwargs=dict(t.kwargs))

    def make(env_id: str, prefer_builtin: bool, text_labels: bool) -> EnvSource:
        if not t.labels:
            return get_source(env_id, False, text_labels, teacher=None)
        return get_source(env_id, prefer_builtin, text_labels, teacher=t.kind, budget=budget,
                          work_dir=cfg.work_dir, log=log)

    return make


def load_data(paths: list[str]) -> Dataset:
    """Datasets (``tickcall record``) and ``tickcall run`` reports (``ticks.jsonl`` or its folder) as
    one dataset (``models.training.dataset``)."""
    from tickcall.envs.recorded import ticks_dataset

    parts = []
    for p in paths:
        path = Path(p)
        if path.is_dir() or path.name == "ticks.jsonl" or not is_dataset(path):
            parts.append(ticks_dataset(path))
        else:
            parts.append(read_dataset(path))
    return merge(parts)


def make_pipeline(cfg: TrainConfig, log: Any = print, progress: bool = True) -> Pipeline:
    """A ``Pipeline`` whose sources come from ``envs.teaching.get_source`` with ``cfg.teacher``, whose
    data may come from ``cfg.data_files`` and whose real-time figures are ``envs.realtime_eval.compare``."""
    from tickcall.envs.realtime_eval import compare

    dataset = load_data(cfg.data_files) if cfg.data_files else None
    return Pipeline(cfg, log=log, progress=progress, sources=source_factory(cfg, log), realtime=compare,
                    dataset=dataset)


def train_smollm2(cfg: TrainConfig, log: Any = print, progress: bool = True) -> dict[str, Any]:
    """``models.training.smollm2.train_smollm2`` with the envs' sources."""
    from tickcall.envs.teaching import get_source
    from tickcall.models.training.smollm2 import train_smollm2 as train

    return train(cfg, log=log, progress=progress, sources=get_source)
