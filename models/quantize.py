"""4-bit AWQ (W4A16) quantization of our models, and the round trip that checks it.

llm-compressor and vLLM pin different compressed-tensors versions, so quantization runs in its own
environment (``.venv-quant``, made by ``scripts/setup_quant.sh``): :func:`quantize_awq` writes a job
file and runs ``models/quantize_awq_job.py`` with that environment's Python. The result is a
compressed-tensors ``pack-quantized`` folder (int4 weights, asymmetric, group 128, ``lm_head`` kept
dense), the format of the public RT-Qwen "AWQ" checkpoints, which vLLM detects by itself.

Calibration uses our own training data: SimpleTool training rows (prompt + head + target, exactly as
``models.training.rows.branch_texts`` builds them) from the scripted teachers of the model's envs, or
from a JSONL file of training records / ``{"text": ...}`` lines.

:func:`round_trip` quantizes and :func:`check` loads the W4A16 folder with the transformers backend
(``models.quantize_load``: dequantized to dense weights, correct, not faster) and optionally vLLM
(int4 kernels), and compares the calls with the unquantized model on held-out turns (teacher states
from other seeds than the calibration ones). Units: seconds, fractions (0..1).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tickcall.models.loading import read_model_meta

REPO = Path(__file__).resolve().parent.parent
JOB_SCRIPT = Path(__file__).resolve().parent / "quantize_awq_job.py"
DEFAULT_ENV = "CartPole-v1"


class QuantizeError(RuntimeError):
    """Quantization could not run (no quantization environment, a failed job, a bad model folder)."""


def quant_python() -> Path:
    """The quantization environment's Python: ``$TICKCALL_QUANT_PYTHON`` or ``<repo>/.venv-quant``."""
    env = os.environ.get("TICKCALL_QUANT_PYTHON")
    path = Path(env) if env else REPO / ".venv-quant" / "bin" / "python"
    if not path.exists():
        raise QuantizeError(
            f"no quantization environment at {path}: run `bash scripts/setup_quant.sh` (it installs "
            "llm-compressor into .venv-quant, apart from vLLM: they pin different compressed-tensors) "
            "or point TICKCALL_QUANT_PYTHON at a Python that has llmcompressor")
    return path


# --------------------------------------------------------------------------- data


def teacher_records(env_id: str, episodes: int, seed: int, max_decisions: int = 200, *, sources=None):
    """Teacher-labelled states of ``env_id`` (the training pipeline's collector), one episode per seed.

    ``sources``: the envs' ``SourceFactory`` (``tickcall.envs.teaching.get_source``; this room does not
    import the envs, the caller hands it in)."""
    from tickcall.models.training.collect import TEACHER, rollout

    source = _source(sources, env_id)
    records, _ = rollout(source, TEACHER, list(range(seed, seed + episodes)), n_envs=min(8, episodes),
                         max_decisions=max_decisions, rng_seed=seed)
    return source.tools, records


def _texts_from_records(records, tools, template, system) -> list[str]:
    from tickcall.models.training.rows import branch_texts

    return [inp + tgt for r in records for inp, tgt, _ in branch_texts(r, tools, template, system, "used")]


def _source(sources, env_id: str):
    if sources is None:
        raise QuantizeError(f"teacher data of {env_id} needs sources= (tickcall.envs.teaching.get_source)")
    return sources(env_id, False, False)


def calibration_texts(model: str | Path, calib: str | Path | None = None, samples: int = 128,
                      seed: int = 0, *, sources=None) -> list[str]:
    """``samples`` calibration texts: training rows of the model's envs (``tickcall.json`` ``envs``;
    default CartPole-v1), or lines of ``calib`` (JSONL: training records or ``{"text": ...}``)."""
    from tickcall.models.format import get_template

    model = Path(model)
    meta = read_model_meta(model)
    template = get_template(meta.get("template", "v2"))
    system = meta.get("system")
    rng = random.Random(seed)
    texts: list[str] = []
    if calib:
        from tickcall.models.training.collect import Record

        tools_by_env: dict[str, Any] = {}
        for n, line in enumerate(Path(calib).read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "text" in row:
                texts.append(str(row["text"]))
            elif "call" in row and "query" in row:
                rec = Record.from_dict(row)
                if rec.env_id not in tools_by_env:
                    tools_by_env[rec.env_id] = _source(sources, rec.env_id).tools
                texts += _texts_from_records([rec], tools_by_env[rec.env_id], template, system)
            else:
                raise QuantizeError(f"{calib}:{n}: expected a training record or {{\"text\": ...}}")
    else:
        envs = meta.get("envs") or [DEFAULT_ENV]
        for i, env_id in enumerate(envs):
            tools, records = teacher_records(env_id, episodes=4, seed=seed + 1000 * i, sources=sources)
            texts += _texts_from_records(records, tools, template, system)
    if not texts:
        raise QuantizeError("no calibration text")
    rng.shuffle(texts)
    return texts[:samples]


# --------------------------------------------------------------------------- quantize


@dataclass
class QuantizeResult:
    out: str
    seconds: float
    samples: int
    quantization: dict[str, Any] | None = None


def quantize_awq(model: str | Path, out: str | Path, *, calib: str | Path | None = None, samples: int = 128,
                 max_seq_length: int = 512, group_size: int = 128, n_grid: int = 20, symmetric: bool = False,
                 python: str | Path | None = None, timeout_s: float | None = None,
                 log=None, sources=None) -> QuantizeResult:
    """AWQ + W4A16 (int4 weights, group ``group_size``) of the dense folder ``model`` into ``out``.

    Runs llm-compressor in the quantization environment (see module doc); raises :class:`QuantizeError`
    with the job's last output lines when it fails. ``out`` must not exist or be empty.
    """
    from tickcall.models.quantize_load import quantization_summary, read_config

    model, out = Path(model), Path(out)
    cfg = read_config(model)
    if quantization_summary(cfg):
        raise QuantizeError(f"{model} is already quantized ({quantization_summary(cfg)})")
    for key in ("hidden_size", "intermediate_size"):
        if cfg.get(key, 0) % group_size:
            raise QuantizeError(f"{key} {cfg.get(key)} is not a multiple of the group size {group_size}: "
                                "W4A16 groups must divide every quantized layer's input width")
    if out.exists() and any(out.iterdir()):
        raise QuantizeError(f"{out} exists and is not empty")
    py = Path(python) if python else quant_python()
    texts = calibration_texts(model, calib, samples, sources=sources)
    with tempfile.TemporaryDirectory(prefix="tickcall-quant-") as tmp:
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({
            "model": str(model.resolve()), "out": str(out.resolve()), "texts": texts,
            "max_seq_length": max_seq_length, "group_size": group_size, "n_grid": n_grid,
            "scheme": "W4A16" if symmetric else "W4A16_ASYM", "ignore": ["lm_head"]}))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        proc = subprocess.run([str(py), str(JOB_SCRIPT), str(job)], capture_output=True, text=True,
                              env=env, timeout=timeout_s, check=False)
    if log:
        log(proc.stderr[-4000:])
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise QuantizeError(f"quantization job failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for extra in ("tickcall.json", "README.md"):
        if (model / extra).exists() and extra == "tickcall.json":
            shutil.copy(model / extra, out / extra)
    return QuantizeResult(out=str(out), seconds=float(result["seconds"]), samples=int(result["samples"]),
                          quantization=quantization_summary(read_config(out)))


# --------------------------------------------------------------------------- compare


@dataclass
class Agreement:
    """Calls of two engines on the same turns: ``calls`` = same call (name + arguments) and same
    legality, ``heads`` = head token ids identical, ``first_tokens`` = heads whose first token is the
    same, ``legal_a``/``legal_b`` = fraction of legal calls."""

    turns: int
    calls: float
    heads: float
    first_tokens: float
    legal_a: float
    legal_b: float
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    per_head: dict[str, float] = field(default_factory=dict)  # head -> fraction of turns with identical ids

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_engines(a, b, tools: Sequence[Any], turns: Sequence[Any], keep: int = 5) -> Agreement:
    """Decide every turn with both engines (one registration each) and count agreement."""
    ra, rb = a.register(tools), b.register(tools)
    same_calls = same_heads = same_first = n_heads = legal_a = legal_b = 0
    diffs: list[dict[str, Any]] = []
    per_head = dict.fromkeys(ra.heads, 0)
    for turn in turns:
        da, db = a.decide(ra.handle, turn), b.decide(rb.handle, turn)
        ca = da.call.to_dict() if da.call else None
        cb = db.call.to_dict() if db.call else None
        same_calls += ca == cb and da.legal == db.legal
        for h in ra.heads:
            n_heads += 1
            ia, ib = da.head_token_ids.get(h) or [], db.head_token_ids.get(h) or []
            same_heads += ia == ib
            per_head[h] += ia == ib
            same_first += ia[:1] == ib[:1]
        legal_a += da.legal
        legal_b += db.legal
        if ca != cb and len(diffs) < keep:
            diffs.append({"query": turn.query, "a": da.heads, "b": db.heads})
    a.unregister(ra.handle)
    b.unregister(rb.handle)
    n = max(1, len(turns))
    return Agreement(turns=len(turns), calls=same_calls / n, heads=same_heads / max(1, n_heads),
                     first_tokens=same_first / max(1, n_heads),
                     legal_a=legal_a / n, legal_b=legal_b / n, disagreements=diffs,
                     per_head={h: c / n for h, c in per_head.items()})


def heldout_turns(model: str | Path, n: int = 200, seed: int = 50_000, *, sources=None):
    """(tools, turns) of held-out teacher states of the model's first env (seeds far from calibration)."""
    from tickcall.models.training.rows import record_turn

    meta = read_model_meta(Path(model))
    env_id = (meta.get("envs") or [DEFAULT_ENV])[0]
    tools, records = teacher_records(env_id, episodes=4, seed=seed, sources=sources)
    rng = random.Random(seed)
    rng.shuffle(records)
    return tools, [record_turn(r) for r in records[:n]]


def round_trip(model: str | Path, workdir: str | Path, *, samples: int = 128, turns: int = 200,
               n_grid: int = 20, calib: str | Path | None = None, python: str | Path | None = None,
               vllm: bool = False, sources=None) -> dict[str, Any]:
    """Quantize ``model`` into ``workdir/w4a16`` and :func:`check` it (see there)."""
    w4 = Path(workdir) / "w4a16"
    q = quantize_awq(model, w4, calib=calib, samples=samples, n_grid=n_grid, python=python, sources=sources)
    return {"quantize": asdict(q), **check(model, w4, turns=turns, vllm=vllm, sources=sources)}


def check(model: str | Path, w4a16: str | Path, *, turns: int = 200, vllm: bool = False,
          max_new_tokens: int = 16, sources=None) -> dict[str, Any]:
    """Calls of the W4A16 folder (loaded by the transformers backend: dequantized) against the dense
    ``model`` on held-out turns. With ``vllm=True`` also the W4A16 folder on vLLM (int4 kernels: a GPU
    or an AVX-512 CPU, bf16) against the dense model and against transformers' W4A16."""
    from tickcall.models.hf_engine import HFEngine

    tools, held = heldout_turns(model, turns, sources=sources)
    ref = HFEngine(model, device="cpu", max_new_tokens=max_new_tokens)
    quant = HFEngine(w4a16, device="cpu", max_new_tokens=max_new_tokens)
    out: dict[str, Any] = {"model": str(model), "w4a16": str(w4a16), "turns": len(held),
                           "transformers_w4a16_vs_dense": compare_engines(ref, quant, tools, held).to_dict(),
                           "size_bytes": {"dense": _size(Path(model)), "w4a16": _size(Path(w4a16))}}
    if vllm:
        from tickcall.models.vllm_engine import VLLMEngine

        with VLLMEngine(w4a16, device="cpu", max_new_tokens=max_new_tokens) as v:
            out["vllm_w4a16_vs_dense"] = compare_engines(v, ref, tools, held).to_dict()
            out["vllm_w4a16_vs_transformers_w4a16"] = compare_engines(v, quant, tools, held).to_dict()
    return out


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


if __name__ == "__main__":  # pragma: no cover - python -m models.quantize MODEL WORKDIR
    print(json.dumps(round_trip(sys.argv[1], sys.argv[2]), indent=2))
