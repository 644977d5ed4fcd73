"""Distillation wired to the envs: the pipeline (``models.training``) with sources and real-time figures
from ``tickcall.envs`` (``models`` imports nothing of ours, so the composition root joins them).

    from tickcall.training import make_pipeline
    scores = make_pipeline(TrainConfig.load("configs/train-cartpole.yaml")).run()
"""

from __future__ import annotations

from typing import Any

from tickcall.models.training.pipeline import Pipeline, TrainConfig


def make_pipeline(cfg: TrainConfig, log: Any = print, progress: bool = True) -> Pipeline:
    """A ``Pipeline`` whose sources are ``envs.teaching.get_source`` and whose real-time figures are
    ``envs.realtime_eval.compare``."""
    from tickcall.envs.realtime_eval import compare
    from tickcall.envs.teaching import get_source

    return Pipeline(cfg, log=log, progress=progress, sources=get_source, realtime=compare)


def train_smollm2(cfg: TrainConfig, log: Any = print, progress: bool = True) -> dict[str, Any]:
    """``models.training.smollm2.train_smollm2`` with the envs' sources."""
    from tickcall.envs.teaching import get_source
    from tickcall.models.training.smollm2 import train_smollm2 as train

    return train(cfg, log=log, progress=progress, sources=get_source)
