"""The autoregressive JSON baseline on a ``VLLMEngine``'s weights, for ``tickcall bench decode --backend
vllm``: the same prompt and parsing as ``models.ar_baseline`` (the transformers version), one request
per decide stopped at ``<|im_end|>`` by id, so the measured difference to the parallel heads is the
decoding itself. Benchmarks only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tickcall.models.ar_baseline import AR_SYSTEM, ARBaseline
from tickcall.models.engine import Engine, RawHeads, Registration
from tickcall.models.format import IM_END, IM_START, Turn, render_tools_json
from tickcall.models.vllm_engine import PrefixState, VLLMEngine


class VLLMAutoregressive(Engine):
    """The autoregressive JSON baseline (models.ar_baseline's prompt and parsing) on a VLLMEngine's
    weights: one request per decide, stopped at ``<|im_end|>`` by id. Benchmarks only."""

    backend = "vllm-autoregressive"

    def __init__(self, engine: VLLMEngine, max_new_tokens: int = 128) -> None:
        super().__init__(max_new_tokens=max_new_tokens)
        self.engine = engine
        self.forced_length: int | None = None

    def _build_prefix(self, reg: Registration) -> None:
        reg.prefix_text = (f"{IM_START}system\n{reg.system or AR_SYSTEM}\n\n# Tools\n\n"
                           f"{render_tools_json(reg.tools)}{IM_END}\n")
        ids = self.engine.encode(reg.prefix_text)
        pad = (-len(ids)) % self.engine.block_size if self.engine.prefix_align == "pad" else 0
        reg.state = PrefixState(ids=[self.engine.pad_id] * pad + ids, pad=pad)
        reg.prefix_tokens = len(reg.state.ids)
        self.engine.run_requests([(reg.state.ids + [self.engine.token_ids[IM_END]],
                                   self.engine.sampling("function", forced=1))] * 2)

    def _decode(self, items: list[tuple[Registration, Turn]]) -> list[RawHeads]:
        eng = self.engine
        stop = eng.token_ids[IM_END]
        requests = []
        for reg, turn in items:
            suffix = eng.encode(ARBaseline.suffix(turn))
            if self.forced_length:
                params = eng.sampling("function", forced=self.forced_length)
            else:
                params = eng._SamplingParams(
                    temperature=0.0, n=1, detokenize=False,
                    skip_special_tokens=False, output_kind=eng._final_only, max_tokens=self.max_new_tokens,
                    stop_token_ids=[stop], ignore_eos=True)
            requests.append((reg.state.ids + suffix, params))
        outs, stats = eng.run_requests(requests)
        out = []
        for o, (prompt, _) in zip(outs, requests, strict=True):
            ids = list(o.outputs[0].token_ids)
            done = bool(self.forced_length) or (bool(ids) and ids[-1] == stop)
            body = ids[:-1] if (done and not self.forced_length) else ids
            out.append(RawHeads(texts={"json": eng.tokenizer.decode(body, skip_special_tokens=False)},
                                token_ids={"json": ids}, unfinished=set() if done else {"json"},
                                prompt_tokens=len(prompt) - int(o.num_cached_tokens or 0),  # computed
                                cached_tokens=int(o.num_cached_tokens or 0),
                                prefill_ms=stats["first_step_ms"],
                                decode_ms=stats["total_ms"] - stats["first_step_ms"]))
        return out

    def _assemble(self, reg: Registration, raw: RawHeads):
        return ARBaseline._assemble(self, reg, raw)  # type: ignore[arg-type]


def bench_pair(path: str | Path, **options: Any) -> tuple[VLLMEngine, VLLMAutoregressive]:
    """(parallel-heads engine, autoregressive baseline) sharing one vLLM instance, for
    ``tickcall bench decode --backend vllm``. ``options`` go to :class:`VLLMEngine`."""
    engine = VLLMEngine(path, **options)
    return engine, VLLMAutoregressive(engine)
