"""Distillation wired to the envs: the pipeline (``models.training``) with sources, teachers and
real-time figures from ``tickcall.envs`` (``models`` imports nothing of ours, so the composition root
joins them).

    from tickcall.training import make_pipeline
    scores = make_pipeline(TrainConfig.load("configs/train-cartpole.yaml")).run()
    cfg.teacher.kind = "ppo"; cfg.envs = ["Acrobot-v1"]        # any teacher (envs.teachers)
    cfg.data_files = ["acrobot.jsonl", "runs/r1/ticks.jsonl"]   # datasets and logged runs as data
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
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
    budget = TeacherBudget(
        steps=t.steps, n_envs=t.n_envs, seed=cfg.seed, eval_episodes=t.eval_episodes, kwargs=dict(t.kwargs)
    )

    def make(env_id: str, prefer_builtin: bool, text_labels: bool) -> EnvSource:
        if not t.labels:
            return get_source(env_id, False, text_labels, teacher=None)
        return get_source(
            env_id, prefer_builtin, text_labels, teacher=t.kind, budget=budget, work_dir=cfg.work_dir, log=log
        )

    return make


def load_data(paths: list[str], labels: str = "call") -> Dataset:
    """Datasets (``tickcall record``) and ``tickcall run`` reports (``ticks.jsonl`` or its folder) as
    one dataset (``models.training.dataset``). ``labels`` (reports only): ``call``, the applied call,
    ``big``, the big model's call on each tick's turn in a cascade run, or ``played``, an advising
    engine AI's call on each tick's observation (``envs.recorded``)."""
    from tickcall.envs.recorded import ticks_dataset

    parts = []
    for p in paths:
        path = Path(p)
        if path.is_dir() or path.name == "ticks.jsonl" or not is_dataset(path):
            parts.append(ticks_dataset(path, labels=labels))
        else:
            parts.append(read_dataset(path))
    _distinct_episodes(parts)
    return merge(parts)


def _distinct_episodes(parts: list[Dataset]) -> None:
    """Renumber the episodes of the second and later files past the earlier files' (two runs both
    count from 0; merged, their episode 0s would read as one episode to the held-out split)."""
    base = 0
    for d in parts:
        eps = [r.episode for r in d.records if r.episode is not None]
        if not eps:
            continue
        low = min(eps)
        if base:
            for r in d.records:
                if r.episode is not None:
                    r.episode = r.episode - low + base
        base = max(r.episode for r in d.records if r.episode is not None) + 1


def make_pipeline(
    cfg: TrainConfig, log: Any = print, progress: bool = True, labels: str = "call"
) -> Pipeline:
    """A ``Pipeline`` whose sources come from ``envs.teaching.get_source`` with ``cfg.teacher``, whose
    data may come from ``cfg.data_files`` and whose real-time figures are ``envs.realtime_eval.compare``.
    ``labels``: which call of a run report in ``data_files`` is its label (``call``, or ``big``: a
    cascade run's big model, ``load_data``)."""
    from tickcall.envs.realtime_eval import compare

    dataset = load_data(cfg.data_files, labels=labels) if cfg.data_files else None
    return Pipeline(
        cfg, log=log, progress=progress, sources=source_factory(cfg, log), realtime=compare, dataset=dataset
    )


def train_smollm2(cfg: TrainConfig, log: Any = print, progress: bool = True) -> dict[str, Any]:
    """``models.training.smollm2.train_smollm2`` with the envs' sources."""
    from tickcall.envs.teaching import get_source
    from tickcall.models.training.smollm2 import train_smollm2 as train

    return train(cfg, log=log, progress=progress, sources=get_source)


# --------------------------------------------------------------------------- online distillation


def finetune(
    init_from: str | Path,
    data: Dataset,
    out: str | Path,
    *,
    steps: int = 200,
    lr: float = 5e-4,
    batch_size: int = 32,
    seed: int = 0,
    threads: int = 1,
    name: str | None = None,
) -> dict[str, Any]:
    """A short fine-tune of the model folder ``init_from`` on ``data`` (e.g. a cascade run's big
    decisions, ``load_data([RUN], labels="big")``): ``steps`` optimiser steps from its current weights
    with its own template, system prompt and heads (its ``tickcall.json``), ``threads`` torch threads.
    Writes a complete model folder to ``out`` atomically (a temporary folder renamed at the end: a hot
    swap never sees half a folder). Returns ``{"out", "rows", "steps", "loss", "branch_acc", "train_s"}``."""
    import json
    import shutil
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tickcall.models.format import get_template, max_heads_of
    from tickcall.models.training.rows import RowCodec
    from tickcall.models.training.trainer import TrainSettings, train

    t0 = time.perf_counter()
    init, out = Path(init_from), Path(out)
    meta = json.loads((init / "tickcall.json").read_text())
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(init)
    model = AutoModelForCausalLM.from_pretrained(init, torch_dtype=torch.float32)
    codec = RowCodec(
        tok,
        get_template(meta.get("template") or "compact"),
        meta.get("system"),
        "all",
        max_heads=max_heads_of(meta),
    )
    examples, prefixes = [], {}
    for env_id, recs in data.by_env().items():
        tools = data.tools(env_id)
        prefixes[env_id] = codec.prefix_ids(tools)
        examples.extend(codec.encode(r, tools) for r in recs)
    if not examples:
        raise ValueError("nothing to fine-tune on: the dataset has no rows")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    settings = TrainSettings(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=min(20, steps // 5),
        checkpoint_every=10**9,
        threads=threads,
        seed=seed,
    )
    model.train()
    res = train(model, examples, prefixes, pad, settings, progress=False)
    model.eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    meta = {**meta, "name": name or out.name}
    (tmp / "tickcall.json").write_text(json.dumps(meta, indent=2) + "\n")
    summary = {
        "out": str(out),
        "from": str(init),
        "rows": len(examples),
        "steps": int(res.get("steps", steps)),
        "loss": float(res.get("loss", float("nan"))),
        "branch_acc": float(res.get("branch_acc", float("nan"))),
        "train_s": round(time.perf_counter() - t0, 3),
    }
    (tmp / "distill.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return summary


def finetune_main(argv: list[str] | None = None) -> int:
    """``python -m tickcall.training --init DIR --data FILE --out DIR [--steps N] ...``: ``finetune`` in a
    process of its own (the distiller's background trainer); prints the summary as one JSON line, or
    one line on stderr and exit 2."""
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(
        prog="python -m tickcall.training", description=finetune.__doc__.splitlines()[0]
    )
    p.add_argument("--init", required=True, help="the model folder to start from")
    p.add_argument("--data", required=True, action="append", help="a dataset file or a run's ticks.jsonl")
    p.add_argument("--labels", default="call", choices=("call", "big", "played"))
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    try:
        summary = finetune(
            a.init,
            load_data(a.data, labels=a.labels),
            a.out,
            steps=a.steps,
            lr=a.lr,
            batch_size=a.batch_size,
            seed=a.seed,
            threads=a.threads,
        )
    except (ValueError, OSError) as exc:
        print(f"fine-tune: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(json.dumps(summary), flush=True)
    return 0


@dataclass(frozen=True)
class DistillSettings:
    """Online distillation in a cascade run (docs/cascade.md): every ``every_s`` seconds, fine-tune the
    small model on the newest ``max_rows`` big-model decisions (``steps`` steps, ``threads`` torch
    threads, in a process of its own) and hot-swap the result into the small service. ``min_rows``:
    a round waits until that many big decisions were logged. ``work_dir``: where the rounds' data and
    model folders go (default: the run's report folder, ``distill/``)."""

    every_s: float = 60.0
    steps: int = 200
    lr: float = 5e-4
    batch_size: int = 32
    max_rows: int = 4000
    min_rows: int = 32
    threads: int = 1
    work_dir: str | None = None

    def __post_init__(self) -> None:
        if not (self.every_s > 0):
            raise ValueError(f"distill every_s must be > 0 s, got {self.every_s!r}")
        for name in ("steps", "batch_size", "max_rows", "min_rows", "threads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"distill {name} must be >= 1, got {getattr(self, name)!r}")


class Distiller:
    """The background trainer of a cascade run: a thread of the driver that, every ``every_s`` s, takes
    the newest big decisions from the loop (``snapshot(since) -> (record dicts, next since)``: the loop
    actor's), writes them as a run folder (``ticks.jsonl`` + ``report.json``), fine-tunes the current
    small weights on them in a child process (``python -m tickcall.training``, ``threads`` torch
    threads: the loop keeps the other cores) and calls ``swap(model folder) -> SwapResult dict`` (the
    small service actor's ``swap``). ``rounds``: one dict per round (``ok``, ``model``, ``warm_ms``,
    ``rows``, ``train_s``, ``loss``, ``error``: one line when the fine-tune or the swap failed, the old
    weights then keep serving)."""

    def __init__(
        self,
        settings: DistillSettings,
        *,
        env_id: str,
        init_model: str,
        work_dir: str | Path,
        snapshot: Any,
        swap: Any,
        log: Any = None,
    ) -> None:
        self.s = settings
        self.env_id = env_id
        self.model = str(init_model)
        self.work = Path(work_dir)
        self._snapshot, self._swap, self._log = snapshot, swap, log
        self._since = 0
        self._rows: list[dict[str, Any]] = []
        self.rounds: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def start(self) -> Distiller:
        self.work.mkdir(parents=True, exist_ok=True)
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="distiller", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Stop after the round in progress (a running fine-tune is ended); returns ``rounds``."""
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return list(self.rounds)

    def _main(self) -> None:
        n = 0
        while not self._stop.wait(self.s.every_s):
            n += 1
            try:
                self.round(n)
            except Exception as exc:  # a round that fails is reported, the next one tries again
                self.rounds.append({"round": n, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]})

    def collect(self) -> int:
        """Take the ticks settled since the last call; keep those with a turn and a big call (the newest
        ``max_rows``). Returns how many rows are kept."""
        recs, self._since = self._snapshot(self._since)
        for r in recs:
            if r.get("big_call") and r.get("turn"):
                self._rows.append({"tick": r["tick"], "turn": r["turn"], "big_call": r["big_call"]})
        self._rows = self._rows[-self.s.max_rows :]
        return len(self._rows)

    def round(self, n: int) -> dict[str, Any]:
        """One round: collect, fine-tune (child process), swap. Returns (and keeps) its dict."""
        rows = self.collect()
        at_s = round(time.monotonic() - self._t0, 3)
        if rows < self.s.min_rows:
            entry = {
                "round": n,
                "ok": False,
                "at_s": at_s,
                "rows": rows,
                "error": f"only {rows} big decisions logged so far (min_rows {self.s.min_rows}): skipped",
            }
            self.rounds.append(entry)
            return entry
        data = self.work / f"round-{n}"
        data.mkdir(parents=True, exist_ok=True)
        with (data / "ticks.jsonl").open("w") as fh:
            for r in self._rows:
                fh.write(json.dumps(r) + "\n")
        (data / "report.json").write_text(json.dumps({"env": self.env_id}))
        out = self.work / f"distill-{n}"
        cmd = [
            sys.executable,
            "-m",
            "tickcall.training",
            "--init",
            self.model,
            "--data",
            str(data),
            "--labels",
            "big",
            "--out",
            str(out),
            "--steps",
            str(self.s.steps),
            "--lr",
            str(self.s.lr),
            "--batch-size",
            str(self.s.batch_size),
            "--seed",
            str(n),
            "--threads",
            str(self.s.threads),
        ]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.s.threads),
            "MKL_NUM_THREADS": str(self.s.threads),
            "TOKENIZERS_PARALLELISM": "false",
        }
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        stdout, stderr = self._proc.communicate()
        code, self._proc = self._proc.returncode, None
        entry: dict[str, Any] = {"round": n, "at_s": at_s, "rows": rows, "model": out.name}
        if code != 0 and self._stop.is_set():
            entry.update(ok=False, error="stopped: the run ended during this round's fine-tune")
            self.rounds.append(entry)
            return entry
        if code != 0:
            tail = [line for line in stderr.splitlines() if line.strip()][-1:] or [f"exit {code}"]
            entry.update(ok=False, error=f"fine-tune failed: {tail[0][:300]}")
            self.rounds.append(entry)
            return entry
        summary = json.loads(stdout.strip().splitlines()[-1])
        entry.update(train_s=summary["train_s"], loss=summary["loss"], steps=summary["steps"])
        result = self._swap(str(out))
        entry.update(ok=bool(result.get("ok")), weights=result.get("weights"), warm_ms=result.get("warm_ms"))
        if result.get("ok"):
            self.model = str(out)
        else:
            entry["error"] = f"swap failed: {result.get('error')}"
        if self._log is not None:
            self._log(_round_line(entry))
        self.rounds.append(entry)
        return entry


def _round_line(e: dict[str, Any]) -> str:
    if e.get("ok"):
        return (
            f"distill round {e['round']}: {e['rows']} big decisions, {e.get('steps')} steps in "
            f"{e.get('train_s', 0):.0f} s (loss {e.get('loss', float('nan')):.3f}); swapped in {e['model']} "
            f"(warm {e.get('warm_ms') or 0:.0f} ms)"
        )
    return f"distill round {e['round']}: {e.get('error')}"


if __name__ == "__main__":
    raise SystemExit(finetune_main())
