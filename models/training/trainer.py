"""The training loop: weighted SimpleTool branch loss on the prefix/suffix/branch tree.

Batches are drawn from one group (env) at a time, so the static prefix runs once per batch.
Reproducible (``seed`` drives data order and init), resumable (``checkpoint`` holds model, optimizer,
step and RNG state; a run restarted with the same arguments continues where it stopped), with a tqdm
progress bar showing loss and teacher-forced exact-branch accuracy.

``dtype: bf16`` runs the forward and backward passes under CPU/CUDA autocast to bfloat16 (the weights
and the optimizer stay float32): on a CPU with AVX-512-BF16 or AMX the matmuls run in bf16. When
``params`` restricts training (LoRA), a checkpoint holds only the trained tensors (the adapter, a few
MB), not the frozen base.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tickcall.models.training.rows import Example


@dataclass
class TrainSettings:
    """Optimisation settings. ``lr`` peak learning rate; cosine decay to ``lr * min_lr_ratio`` after
    ``warmup`` steps; ``threads`` torch intra-op threads (2 on this CPU)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 50
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    threads: int = 2
    seed: int = 0
    group_balance: str = "uniform"  # batches per env: "uniform" (each env alike) or "size" (by rows)
    dtype: str = "fp32"  # "fp32", or "bf16": forward/backward under autocast to bfloat16 (weights stay fp32)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"train.dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")


DTYPES = ("fp32", "bf16")


def lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / max(1, s.warmup)
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train(model, examples: Sequence[Example], prefixes: dict[str, list[int]], pad: int,
          settings: TrainSettings, checkpoint: Path | None = None, desc: str = "train",
          params: Sequence[Any] | None = None, progress: bool = True,
          on_step: Callable[[int, float], None] | None = None, log: Callable[[str], None] | None = None,
          log_every: int = 100) -> dict[str, float]:
    """Train ``model`` in place on ``examples``; returns the final moving-average loss and accuracy.

    ``prefixes[group]`` is the token ids of that group's static prefix. ``params`` restricts the
    trained parameters (LoRA); default all that require grad."""
    import torch
    from tqdm import tqdm

    torch.set_num_threads(settings.threads)
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.group, []).append(ex)
    names = sorted(groups)
    sizes = [len(groups[g]) for g in names]
    restricted = params is not None
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    device = next(model.parameters()).device.type
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.98))
    step = 0
    rng = random.Random(settings.seed)
    if checkpoint is not None and checkpoint.exists():
        # weights_only: a checkpoint is data, never code to run; it holds only tensors and plain types
        # (the RNG state is a tuple of ints), which the safe unpickler accepts
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optim"])
        step = int(state["step"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
    model.train()
    ema_loss, ema_acc = float("nan"), float("nan")
    bar = tqdm(total=settings.steps, initial=step, desc=desc, disable=not progress, leave=False)
    while step < settings.steps:
        g = rng.choices(names, weights=sizes if settings.group_balance == "size" else None)[0]
        pool = groups[g]
        batch = [pool[rng.randrange(len(pool))] for _ in range(min(settings.batch_size, len(pool)))]
        # all examples of a group have the same heads; the tree needs equal head counts
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, settings)
        from tickcall.models.training.tree import tree_loss

        with torch.autocast(device, dtype=torch.bfloat16, enabled=settings.dtype == "bf16"):
            loss, exact = tree_loss(model, prefixes[g], [ex.suffix_ids for ex in batch],
                                    [ex.branches for ex in batch], [ex.weights for ex in batch], pad,
                                    [ex.soft for ex in batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        step += 1
        lv, acc = float(loss.detach()), float(exact.float().mean())
        ema_loss = lv if math.isnan(ema_loss) else 0.95 * ema_loss + 0.05 * lv
        ema_acc = acc if math.isnan(ema_acc) else 0.95 * ema_acc + 0.05 * acc
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.4f}", acc=f"{ema_acc:.3f}")
        if on_step is not None:
            on_step(step, lv)
        if log is not None and not progress and step % log_every == 0:
            log(f"{desc}: step {step}/{settings.steps} loss {ema_loss:.4f} branch acc {ema_acc:.3f}")
        if checkpoint is not None and (step % settings.checkpoint_every == 0 or step == settings.steps):
            _save(checkpoint, model, opt, step, rng, trained_only=restricted)
    bar.close()
    model.eval()
    return {"loss": ema_loss, "branch_acc": ema_acc, "steps": step}


def _save(path: Path, model, opt, step: int, rng: random.Random, trained_only: bool = False) -> None:
    """Write the checkpoint atomically. ``trained_only``: only the parameters that require grad (the
    resume loads with ``strict=False``, so the frozen base comes from the model as built)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    if trained_only:
        trainable = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    else:
        trainable = {k: v for k, v in model.state_dict().items()}
    # tensors and plain types only: train() and the pipeline load it with torch.load(weights_only=True)
    torch.save({"model": trainable, "optim": opt.state_dict(), "step": step, "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(path)
