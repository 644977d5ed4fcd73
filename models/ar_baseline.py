"""The autoregressive JSON function-calling baseline, on the same weights as the SimpleTool engine.

Used only for comparisons (``tickcall bench decode``). The model writes one ordinary JSON object,
``{"name": ..., "arguments": {...}}``, token by token until ``<|im_end|>`` (stopped by id). The tool
prefix is cached exactly like the SimpleTool engine's, so the measured difference is the decoding
itself: one sequence of all tokens versus parallel heads.
"""

from __future__ import annotations

import json
import time

import torch
from tickcall.models.assembly import Assembled, parse_json_strict
from tickcall.models.calls import Call
from tickcall.models.engine import Engine, RawHeads, Registration
from tickcall.models.format import IM_END, IM_START, Turn, render_tools_json
from tickcall.models.hf_engine import HFEngine
from tickcall.models.tools import validate_arguments

AR_SYSTEM = ("You are a function calling assistant. Reply with exactly one JSON object "
             '{"name": <tool name>, "arguments": {<parameter>: <value>, ...}} and nothing else.')


def call_json(call: Call) -> str:
    """The text an autoregressive model writes for ``call``."""
    return json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)


class ARBaseline(Engine):
    """Autoregressive JSON decoding with the weights and lean loop of an :class:`HFEngine`."""

    backend = "autoregressive"

    def __init__(self, hf: HFEngine, max_new_tokens: int = 128) -> None:
        super().__init__(max_new_tokens=max_new_tokens)
        self.hf = hf
        self.forced_length: int | None = None  # benchmarks only: decode exactly N tokens

    def _build_prefix(self, reg: Registration) -> None:
        reg.prefix_text = (f"{IM_START}system\n{reg.system or AR_SYSTEM}\n\n# Tools\n\n"
                           f"{render_tools_json(reg.tools)}{IM_END}\n")
        ids = self.hf.encode(reg.prefix_text)
        reg.state = self.hf.lm.prefill_prefix(ids)
        reg.prefix_tokens = len(ids)

    @staticmethod
    def suffix(turn: Turn) -> str:
        return (f"{IM_START}user\nhistory: [{', '.join(turn.history)}]\n\n{turn.query}{IM_END}\n"
                f"{IM_START}assistant\n")

    def _decode(self, items: list[tuple[Registration, Turn]]) -> list[RawHeads]:
        out = []
        lm = self.hf.lm
        stop = self.hf.token_ids[IM_END]
        for reg, turn in items:
            t0 = time.perf_counter()
            ids = self.hf.encode(self.suffix(turn))
            group = lm.prefill_group([ids[:-1]], reg.state, ids[-1:])  # the last id acts as the tag
            t1 = time.perf_counter()
            limit = self.forced_length or self.max_new_tokens
            generated = [int(group.logits[0, 0].argmax(-1))]
            rb = lm.rows([group], limit)
            while len(generated) < limit and (self.forced_length or generated[-1] != stop):
                nxt = lm.step(rb, torch.tensor(generated[-1:], device=lm.device))
                generated.append(int(nxt.argmax(-1)))
            t2 = time.perf_counter()
            done = bool(self.forced_length) or generated[-1] == stop
            body = generated[:-1] if (done and not self.forced_length) else generated
            out.append(RawHeads(texts={"json": self.hf.decode_ids(body)},
                                token_ids={"json": generated}, unfinished=set() if done else {"json"},
                                prompt_tokens=len(ids), cached_tokens=reg.prefix_tokens,
                                prefill_ms=(t1 - t0) * 1e3, decode_ms=(t2 - t1) * 1e3))
        return out

    def _assemble(self, reg: Registration, raw: RawHeads) -> Assembled:
        text = raw.texts["json"]
        if raw.unfinished:
            return Assembled(None, False, "the JSON call did not end within the token budget", raw.texts)
        try:
            obj = parse_json_strict(text)
            call = Call(str(obj["name"]), dict(obj.get("arguments") or {}))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return Assembled(None, False, f"not a JSON call: {exc}", raw.texts)
        tool = reg.tool_map.get(call.name)
        if tool is None:
            return Assembled(call, False, f"unknown function {call.name!r}", raw.texts)
        err = validate_arguments(tool, call.arguments)
        return Assembled(call, err is None, err or "ok", raw.texts)
