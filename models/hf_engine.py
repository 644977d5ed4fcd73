"""The transformers backend: loads a local checkpoint folder and decodes SimpleTool heads with the
lean loop of ``models.lean`` (CPU or CUDA).

Per registration the static prefix is tokenised and prefilled once; its KV cache is kept.
Per decide: the suffix (user turn) is tokenised and prefilled on top of the cached prefix together
with one opening tag per head (tree mask), then all heads of all requests decode greedily as one
batch; a head leaves the batch at its stop token (closing tag, ``<|null|>``, ``<|im_end|>``: by id).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tickcall.models.engine import Engine, EngineError, RawHeads, Registration
from tickcall.models.format import CHAT_TOKENS, IM_END, NULL, SPECIAL_TOKENS, Turn, close_tag, open_tag
from tickcall.models.lean import LeanLM
from tickcall.models.loading import read_model_meta

# Below this many parameters the CPU backend runs torch on one thread by default. Measured with the
# shipped 0.7M model on the 2-core VM while other work ran: decide P50 6.9 ms on 1 thread, 320 ms on 2.
SMALL_MODEL_PARAMS = 50_000_000


class TokenizerFormatError(EngineError):
    """The tokenizer does not hold the SimpleTool tokens as single ids."""


def check_special_tokens(tokenizer) -> dict[str, int]:
    """Each of the 17 SimpleTool tokens and the chat tokens must be exactly one id. Returns the ids."""
    ids: dict[str, int] = {}
    bad = []
    for tok in (*SPECIAL_TOKENS, *CHAT_TOKENS):
        enc = tokenizer.encode(tok, add_special_tokens=False)
        if len(enc) != 1:
            bad.append(f"{tok} -> {len(enc)} tokens")
        else:
            ids[tok] = enc[0]
    if bad:
        raise TokenizerFormatError(
            "this tokenizer does not hold the SimpleTool tokens as single tokens ("
            + "; ".join(bad) + "). Use a SimpleTool checkpoint (RT-Qwen) or a model trained by tickcall.")
    return ids


def pick_device(device: str | None) -> str:
    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class HFEngine(Engine):
    """SimpleTool decoding with transformers weights and the lean loop.

    ``model_path``: a local folder (config.json, safetensors, tokenizer). ``device``: "cpu", "cuda"
    or "auto". ``dtype``: defaults to float32 on CPU and bfloat16 on CUDA. ``threads``: torch CPU
    threads (None: 1 for models under 50M parameters on CPU, else torch's default; process-wide). ``max_new_tokens``: per head budget. ``allow_future_refs``:
    accept ``@fN`` argument values (see models.assembly).
    """

    backend = "transformers"

    def __init__(self, model_path: str | Path, *, device: str | None = "auto", dtype: str | None = None,
                 threads: int | None = None, max_new_tokens: int = 32, template: str | None = None,
                 allow_future_refs: bool = False) -> None:
        super().__init__(max_new_tokens=max_new_tokens, allow_future_refs=allow_future_refs)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").exists():
            raise EngineError(f"{self.model_path} is not a model folder (no config.json)")
        self.device = pick_device(device)
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device == "cuda"
                                                           else torch.float32)
        self.meta = read_model_meta(self.model_path)
        self.default_template = template or self.meta.get("template", "v2")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.token_ids = check_special_tokens(self.tokenizer)
        from tickcall.models.quantize_load import (
            transformers_load_kwargs,  # W4A16 (compressed-tensors): dequantized
        )

        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch_dtype,
                                                          **transformers_load_kwargs(self.model_path)).to(self.device)
        self.model.eval()
        self.lm = LeanLM(self.model)
        self._fast = getattr(self.tokenizer, "_tokenizer", None)  # the Rust tokenizer: no Python wrapping
        self.forced_lengths: dict[str, int] | None = None  # benchmarks only: decode exactly N tokens
        self.n_params = sum(p.numel() for p in self.model.parameters())
        if threads is None and self.device == "cpu" and self.n_params < SMALL_MODEL_PARAMS:
            threads = 1  # tiny matmuls: a second thread only adds synchronisation (and stalls under load)
        if threads:
            torch.set_num_threads(threads)

    # ---------------------------------------------------------------- helpers
    def encode(self, text: str) -> list[int]:
        if self._fast is not None:
            return self._fast.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode_ids(self, ids: list[int]) -> str:
        if self._fast is not None:
            return self._fast.decode(ids, skip_special_tokens=False)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def stop_ids(self, head: str) -> tuple[int, int, int]:
        t = self.token_ids
        return (t[close_tag(head)], t[NULL], t[IM_END])

    def info(self) -> dict[str, Any]:
        cfg = self.model.config
        return {"backend": self.backend, "model": str(self.model_path), "model_type": cfg.model_type,
                "params": self.n_params, "device": self.device, "dtype": str(self.lm.dtype).replace("torch.", ""),
                "default_template": self.default_template}

    def close(self) -> None:
        self._registrations.clear()
        del self.lm, self.model
        if self.device == "cuda":
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------- engine hooks
    def _build_prefix(self, reg: Registration) -> None:
        ids = self.encode(reg.prefix_text)
        reg.state = self.lm.prefill_prefix(ids)
        reg.prefix_tokens = len(ids)

    def _decode(self, items: list[tuple[Registration, Turn]]) -> list[RawHeads]:
        t0 = time.perf_counter()
        suffixes = [self.encode(reg.template.suffix(turn)) for reg, turn in items]
        by_reg: dict[str, list[int]] = {}  # requests sharing a registration prefill together
        for i, (reg, _) in enumerate(items):
            by_reg.setdefault(reg.handle, []).append(i)
        groups, row_item, row_head = [], [], []
        for idxs in by_reg.values():
            reg = items[idxs[0]][0]
            tags = [self.token_ids[open_tag(h)] for h in reg.heads]
            groups.append(self.lm.prefill_group([suffixes[i] for i in idxs], reg.state, tags))
            for i in idxs:
                row_item.extend([i] * len(reg.heads))
                row_head.extend(reg.heads)
        first_logits = torch.cat([g.logits.reshape(-1, g.logits.shape[-1]) for g in groups])
        suffix_lens = [len(x) for x in suffixes]
        if self.device == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()

        # rows: every head of every request, ordered by group, request, head
        generated: list[list[int]] = [[] for _ in row_head]
        finished = [False] * len(row_head)
        budget = self.max_new_tokens
        forced = self.forced_lengths
        if forced:
            budget = max(forced.get(h, 1) for h in row_head)
        stops = [self.stop_ids(h) for h in row_head]
        limits = [forced.get(h, 1) if forced else budget for h in row_head]

        next_tok = first_logits.argmax(-1).tolist()
        live = list(range(len(row_head)))  # row index of each batch slot
        rb = None
        while True:
            still = []
            for slot, r in enumerate(live):
                tok = next_tok[slot]
                generated[r].append(tok)
                # forced (benchmarks): exactly limits[r] tokens; otherwise a stop id or the budget
                finished[r] = len(generated[r]) >= limits[r] if forced else tok in stops[r]
                if not finished[r] and len(generated[r]) < limits[r]:
                    still.append(slot)
            if not still:
                break
            if rb is None:
                rb = self.lm.rows(groups, budget)
            if len(still) < len(live):
                rb.keep(still)
            live = [live[s] for s in still]
            tokens = torch.tensor([generated[r][-1] for r in live], device=self.lm.device)
            next_tok = self.lm.step(rb, tokens).argmax(-1).tolist()
        t2 = time.perf_counter()

        out: list[RawHeads] = []
        for i, (reg, _) in enumerate(items):
            texts, ids_map, unfinished = {}, {}, set()
            for r, (it, head) in enumerate(zip(row_item, row_head, strict=True)):
                if it != i:
                    continue
                ids = generated[r]
                ids_map[head] = ids
                if not finished[r]:
                    unfinished.add(head)
                body = ids[:-1] if (finished[r] and not forced) else ids
                if finished[r] and not forced and ids[-1] == self.token_ids[NULL]:
                    texts[head] = NULL
                else:
                    texts[head] = self.decode_ids(body)
            out.append(RawHeads(texts=texts, token_ids=ids_map, unfinished=unfinished,
                                prompt_tokens=suffix_lens[i], cached_tokens=reg.prefix_tokens,
                                prefill_ms=(t1 - t0) * 1e3, decode_ms=(t2 - t1) * 1e3))
        return out
