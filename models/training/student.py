"""A student model decoding many turns at once (for DAgger rollouts and held-out accuracy).

Same token layout and stop rules as the engines (prefix and suffix tokenised apart, each head stops at
its closing tag, ``<|null|>`` or ``<|im_end|>`` by id; a head stopped by ``<|null|>`` reads
``<|null|>``), but batched over B turns x H heads in one tree of forwards. The real-time figures use
the engine (``models.hf_engine``); this class only makes training-time evaluation fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tickcall.models.assembly import Assembled, assemble
from tickcall.models.format import IM_END, NULL, Template, Turn, close_tag, heads_for, open_tag
from tickcall.models.tools import MAX_ARITY, ToolSpec
from tickcall.models.training.rows import RowCodec


@dataclass
class BatchDecision:
    """Decoded head texts and the assembled call for one turn."""

    heads: dict[str, str]
    assembled: Assembled


class BatchStudent:
    """Greedy SimpleTool decoding of a batch of turns for one tool set. ``max_heads``: the model's
    argument heads (its tickcall.json ``max_heads``, 6 by default); the tools may not need more."""

    def __init__(self, model, tokenizer, tools: Sequence[ToolSpec], template: Template,
                 system: str | None = None, max_new_tokens: int = 12, chunk: int = 256,
                 max_heads: int = MAX_ARITY) -> None:
        self.model = model
        self.tools = list(tools)
        self.tool_map = {t.name: t for t in self.tools}
        self.heads = heads_for(self.tools, max_heads=max_heads)
        self.codec = RowCodec(tokenizer, template, system, max_heads=max_heads)
        self.tok = tokenizer
        self.prefix = self.codec.prefix_ids(self.tools)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_new_tokens = max_new_tokens
        self.chunk = chunk

    def decide(self, turns: Sequence[Turn]) -> list[BatchDecision]:
        out: list[BatchDecision] = []
        for i in range(0, len(turns), self.chunk):
            out.extend(self._decide(turns[i: i + self.chunk]))
        return out

    def _decide(self, turns: Sequence[Turn]) -> list[BatchDecision]:
        import torch
        from tickcall.models.training.tree import _cache_from, decoder_and_head, prompt_cache

        if not turns:
            return []
        c = self.codec
        body, lm_head = decoder_and_head(self.model)
        h = len(self.heads)
        with torch.no_grad():
            kv, p, s_mask, s_len = prompt_cache(self.model, self.prefix, [c.suffix_ids(t) for t in turns],
                                                self.pad)
            kv = [(k.repeat_interleave(h, 0), v.repeat_interleave(h, 0)) for k, v in kv]
            n = len(turns) * h
            attn = torch.cat([torch.ones((n, p), dtype=torch.long), s_mask.repeat_interleave(h, 0)], dim=1)
            pos = p + s_len.repeat_interleave(h, 0)
            cur = torch.tensor([c.token_id(open_tag(hd)) for hd in self.heads] * len(turns)).unsqueeze(1)
            stops = torch.tensor([[c.token_id(close_tag(hd)), c.token_id(NULL), c.token_id(IM_END)]
                                  for hd in self.heads] * len(turns))
            done = torch.zeros(n, dtype=torch.bool)
            generated: list[list[int]] = [[] for _ in range(n)]
            stopped_by: list[int | None] = [None] * n
            cache = _cache_from(kv)
            for _ in range(self.max_new_tokens):
                attn = torch.cat([attn, torch.ones((n, 1), dtype=torch.long)], dim=1)
                out = body(input_ids=cur, attention_mask=attn, position_ids=pos.unsqueeze(1),
                           past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                nxt = lm_head(out.last_hidden_state[:, -1]).argmax(-1)
                is_stop = (stops == nxt.unsqueeze(1)).any(1)
                for r in torch.nonzero(~done).flatten().tolist():
                    tid = int(nxt[r])
                    if is_stop[r]:
                        stopped_by[r] = tid
                    else:
                        generated[r].append(tid)
                done |= is_stop
                if bool(done.all()):
                    break
                cur = nxt.unsqueeze(1)
                pos = pos + 1
        null_id = c.token_id(NULL)
        results = []
        for b in range(len(turns)):
            texts: dict[str, str] = {}
            unfinished: set[str] = set()
            for j, hd in enumerate(self.heads):
                r = b * h + j
                if stopped_by[r] == null_id and not generated[r]:
                    texts[hd] = NULL
                else:
                    texts[hd] = self.tok.decode(generated[r], skip_special_tokens=False)
                if stopped_by[r] is None:
                    unfinished.add(hd)
            results.append(BatchDecision(texts, assemble(texts, self.tool_map, unfinished)))
        return results
